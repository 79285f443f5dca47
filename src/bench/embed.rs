//! `engram bench --embed N`: the in-process embedder on its own. Loads the
//! configured `local` model (`ENGRAM_EMBEDDING_MODEL_PATH`, or the cache's
//! copy of `ENGRAM_EMBEDDING_MODEL`), then prints the load time, query
//! latency (N distinct queries one after another, so the query cache never
//! answers; then the same queries again, all answered by it), document
//! throughput (batches of 32, as a conversation's remember sends them) and
//! the process's resident memory. With `memories`, then: that many memories
//! remembered one by one into a scratch SQLite store (4 at a time), and
//! recall end to end over them (the query's embedding included: each query
//! is asked once).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;

use super::text::Generator;
use super::{BENCH_USER, ms, percentile, remember_request, settings};
use crate::auth::Principal;
use crate::config::Config;
use crate::embed::{Embedder, LocalEmbedder};
use crate::extract::VerbatimExtractor;
use crate::params::RecallParams;
use crate::service::MemoryService;
use crate::store::SqliteStore;

pub async fn run(queries: usize, memories: usize) -> Result<(), Box<dyn std::error::Error>> {
    let config = Config::load(None)?;
    let settings = crate::startup::local_settings(&config, None);
    let threads = settings.threads;
    let started = Instant::now();
    let embedder = LocalEmbedder::open(settings).await?;
    let loaded = started.elapsed();
    println!(
        "engram bench: local embedder {}, {threads} threads; loaded in {}; RSS {}",
        embedder.identity(),
        ms(loaded),
        rss()
    );

    let mut generator = Generator::new(7);
    let texts: Vec<String> = (0..queries).map(|_| generator.query()).collect();
    // The first call pays for page faults in the weights: not a query's cost.
    embedder.embed_documents(&["warm up".to_owned()]).await?;

    let mut times = Vec::with_capacity(queries);
    for text in &texts {
        let t = Instant::now();
        embedder.embed_query(text).await?;
        times.push(t.elapsed());
    }
    report("query, computed", &mut times);
    times.clear();
    for text in &texts {
        let t = Instant::now();
        embedder.embed_query(text).await?;
        times.push(t.elapsed());
    }
    report("query, cached", &mut times);

    let documents: Vec<String> = (0..queries.max(64)).map(|_| generator.memory()).collect();
    let t = Instant::now();
    for batch in documents.chunks(32) {
        embedder.embed_documents(batch).await?;
    }
    let elapsed = t.elapsed().as_secs_f64();
    println!(
        "  documents: {} in {:.2}s, {:.0}/s (batches of 32); RSS {}",
        documents.len(),
        elapsed,
        documents.len() as f64 / elapsed,
        rss()
    );
    // The near-duplicate check's sketch pass on this model's vectors: 2,000
    // generated memories stored, 500 more as new texts (the generator
    // repeats its phrases, so many have near rows).
    let texts: Vec<String> = (0..2500).map(|_| generator.memory()).collect();
    let mut vectors = Vec::with_capacity(texts.len());
    for batch in texts.chunks(32) {
        vectors.extend(embedder.embed_documents(batch).await?);
    }
    let (rows, new) = vectors.split_at(2000);
    super::print_sketch_recall(rows, new);
    if memories > 0 {
        recall(Arc::new(embedder), memories, queries).await?;
    }
    Ok(())
}

/// Remember `memories` into a scratch SQLite store, then time `queries`
/// recalls of distinct queries.
async fn recall(
    embedder: Arc<LocalEmbedder>,
    memories: usize,
    queries: usize,
) -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::temp_dir().join(format!("engram-bench-embed-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let url = format!("sqlite://{}", dir.join("bench.db").display());
    let store = Arc::new(SqliteStore::open(&url, embedder.identity()).await?);
    let service = Arc::new(MemoryService::new(
        store,
        embedder,
        Arc::new(VerbatimExtractor),
        settings(),
    ));
    let mut words = Generator::new(42);
    let requests: Vec<_> = (0..memories)
        .map(|i| remember_request(&mut words, i).1)
        .collect();
    let started = Instant::now();
    let mut remembered = futures::stream::iter(requests)
        .map(|req| {
            let service = service.clone();
            async move { service.remember(&Principal::Operator, req).await }
        })
        .buffer_unordered(4);
    while let Some(result) = remembered.next().await {
        result?;
    }
    let elapsed = started.elapsed().as_secs_f64();
    println!(
        "  remember: {memories} in {elapsed:.1}s, {:.0}/s (4 at a time, sqlite)",
        memories as f64 / elapsed
    );
    let mut seen = HashSet::new();
    let mut times = Vec::with_capacity(queries);
    let mut tries = 0;
    while times.len() < queries && tries < queries * 20 {
        tries += 1;
        let query = words.query();
        if !seen.insert(query.clone()) {
            continue;
        }
        let req = RecallParams {
            query,
            user_id: Some(BENCH_USER.into()),
            limit: Some(10),
            ..RecallParams::default()
        };
        let t = Instant::now();
        std::hint::black_box(service.recall(&Principal::Operator, req).await?);
        times.push(t.elapsed());
    }
    report(&format!("recall over {memories}"), &mut times);
    println!("  RSS {}", rss());
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

fn report(what: &str, times: &mut [Duration]) {
    times.sort_unstable();
    println!(
        "  {what}: p50 {} p95 {} p99 {} ({} queries)",
        ms(percentile(times, 0.50)),
        ms(percentile(times, 0.95)),
        ms(percentile(times, 0.99)),
        times.len()
    );
}

/// Resident and peak resident memory, from /proc (Linux), for the report.
/// This process's resident memory now and at its peak.
pub(super) fn rss() -> String {
    let Ok(status) = std::fs::read_to_string("/proc/self/status") else {
        return "unknown".to_owned();
    };
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kb| kb.parse::<u64>().ok())
            .map_or("?".to_owned(), |kb| format!("{} MiB", kb / 1024))
    };
    format!("{} (peak {})", field("VmRSS:"), field("VmHWM:"))
}
