//! `engram bench --embed N`: the in-process embedder on its own. Loads the
//! configured `local` model (`ENGRAM_EMBEDDING_MODEL_PATH`, or the cache's
//! copy of `ENGRAM_EMBEDDING_MODEL`), then prints the load time, query
//! latency (N distinct queries one after another, so the query cache never
//! answers; then the same queries again, all answered by it), document
//! throughput (batches of 32, as a conversation's remember sends them) and
//! the process's resident memory.

use std::time::{Duration, Instant};

use super::text::Generator;
use super::{ms, percentile};
use crate::config::Config;
use crate::embed::{Embedder, LocalEmbedder};

pub async fn run(queries: usize) -> Result<(), Box<dyn std::error::Error>> {
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
fn rss() -> String {
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
