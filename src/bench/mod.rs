//! `engram bench`: fills a store through [`MemoryService`] and prints
//! remember throughput and recall latency percentiles at each size.
//!
//! * One user (both stores): memories spread over four agents of one user.
//!   Besides end-to-end recall over the whole user it times recall narrowed
//!   to one agent, the two candidate searches on their own (vector and
//!   keyword, straight on the store), and recall@10 of the store's vector
//!   search against an exact f32 scan of the same vectors. On PostgreSQL it
//!   also times the raw SQL floor (the filtered nearest-neighbour query
//!   issued directly) and remember with several writers at once.
//! * Many users (PostgreSQL, `--crowd-rows`): see `crowd`.
//! * The in-process embedder alone (`--embed`): see `embed`.
//!
//! Text comes from `text::Generator`, seeded, so runs repeat.

mod cache;
mod crowd;
mod embed;
mod http;
mod pipeline;
mod text;

pub use http::Door;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::auth::Principal;
use crate::embed::{Embedder, HashEmbedder, dot};
use crate::extract::VerbatimExtractor;
use crate::model::{Event, MemoryId, Scope};
use crate::params::{RecallParams, RememberParams};
use crate::service::{MemoryService, Settings};
use crate::store::{
    Hit, IndexKind, PgOptions, PgStore, PlanSettings, Scored, SearchScope, SqliteStore, Store,
};
use sqlx::PgPool;
use text::Generator;

/// The schema's default `engram.ef_search` (migrations/postgres), for the floor.
const DEFAULT_EF_SEARCH: u32 = 250;

#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// Store sizes to measure at, ascending (memories for one user).
    #[arg(long, value_delimiter = ',', default_value = "10000,100000")]
    pub sizes: Vec<usize>,
    /// Recall queries per size.
    #[arg(long, default_value_t = 2000)]
    pub queries: usize,
    /// Embedding dimensions of the hash embedder.
    #[arg(long, default_value_t = 384)]
    pub dims: usize,
    /// SQLite database file to fill (default: a fresh file in the temp dir, removed after).
    #[arg(long, conflicts_with = "postgres")]
    pub database: Option<PathBuf>,
    /// Bench the PostgreSQL store in this database (postgres://...; use an
    /// empty, disposable one: the bench writes ~1.2 GB per million rows).
    #[arg(long)]
    pub postgres: Option<String>,
    /// PostgreSQL: HNSW search list size on the index path (default: the schema's, 250).
    #[arg(long)]
    pub ef_search: Option<u32>,
    /// PostgreSQL: the vector index to build and search (as ENGRAM_INDEX).
    #[arg(long, value_enum, default_value_t = IndexKind::Auto)]
    pub index: IndexKind,
    /// PostgreSQL: concurrent writers for the batched remember measurement.
    #[arg(long, default_value_t = 8)]
    pub writers: usize,
    /// PostgreSQL: after the one-user sizes, rows to load for many users (0: skip).
    #[arg(long, default_value_t = 0)]
    pub crowd_rows: usize,
    /// PostgreSQL: how many users share the crowd rows.
    #[arg(long, default_value_t = 1000)]
    pub crowd_users: usize,
    /// Also measure the cache (redis://...) at each size: recall and context
    /// with and without it, and embedding calls saved.
    #[arg(long)]
    pub cache: Option<String>,
    /// Instead of the above: this many remembers with inference against a
    /// stand-in model server that answers at once (engram's own overhead,
    /// model calls and tokens per remember). With --postgres, give an empty database.
    #[arg(long)]
    pub pipeline: Option<usize>,
    /// Instead of the above: the in-process embedder alone (the configured
    /// `local` model): load time, this many query embeddings, documents per
    /// second, resident memory.
    #[arg(long)]
    pub embed: Option<usize>,
    /// --embed: then remember this many memories into a scratch SQLite
    /// store and time recall over them (0: skip).
    #[arg(long, default_value_t = 0)]
    pub embed_memories: usize,
    /// Instead of the above: this many recalls over the REST API at each
    /// level of --clients (the real HTTP app on a loopback port).
    #[arg(long)]
    pub http: Option<usize>,
    /// --http: concurrent clients, one level after another.
    #[arg(long, value_delimiter = ',', default_value = "1,8,32")]
    pub clients: Vec<usize>,
    /// --http: memories per user (32 users).
    #[arg(long, default_value_t = 1000)]
    pub http_memories: usize,
    /// --http: what the clients speak: the REST API, MCP over Streamable
    /// HTTP (`/mcp`) or legacy SSE (`/sse`); MCP clients call `recall`.
    #[arg(long, value_enum, default_value_t = Door::Rest)]
    pub transport: Door,
    /// Record every remember and recall in the audit trail, as `serve`
    /// does by default (off: the flows alone, to compare).
    #[arg(long)]
    pub audit: bool,
}

pub async fn run(args: BenchArgs) -> Result<(), Box<dyn std::error::Error>> {
    if let Some(queries) = args.embed {
        return embed::run(queries, args.embed_memories).await;
    }
    let scratch = std::env::temp_dir().join(format!("engram-bench-{}", std::process::id()));
    if let Some(count) = args.pipeline {
        let db = args
            .database
            .clone()
            .unwrap_or_else(|| scratch.join("pipeline.db"));
        let postgres = args.postgres.clone();
        pipeline::run(count, args.dims, |identity| async move {
            let store: Arc<dyn Store> = match postgres {
                Some(url) => Arc::new(PgStore::open(&url, identity, PgOptions::default()).await?),
                None => Arc::new(
                    SqliteStore::open(&format!("sqlite://{}", db.display()), identity).await?,
                ),
            };
            Ok(store)
        })
        .await?;
        let _ = std::fs::remove_dir_all(&scratch);
        return Ok(());
    }
    if let Some(requests) = args.http {
        let identity = HashEmbedder::new(args.dims).identity();
        let store: Arc<dyn Store> = match &args.postgres {
            Some(url) => Arc::new(PgStore::open(url, identity, PgOptions::default()).await?),
            None => {
                let db = args
                    .database
                    .clone()
                    .unwrap_or_else(|| scratch.join("http.db"));
                std::fs::create_dir_all(db.parent().unwrap_or(&scratch))?;
                Arc::new(SqliteStore::open(&format!("sqlite://{}", db.display()), identity).await?)
            }
        };
        println!(
            "engram bench: {} store",
            if args.postgres.is_some() {
                "postgres"
            } else {
                "sqlite"
            }
        );
        http::run(
            store,
            args.dims,
            args.http_memories,
            requests,
            &args.clients,
            args.transport,
        )
        .await?;
        let _ = std::fs::remove_dir_all(&scratch);
        return Ok(());
    }
    let embedder = Arc::new(HashEmbedder::new(args.dims));
    let plan = PlanSettings {
        ef_search: args.ef_search,
        ..PlanSettings::default()
    };
    let (store, pg): (Arc<dyn Store>, Option<Postgres>) = match &args.postgres {
        Some(url) => {
            let options = PgOptions {
                plan,
                index: args.index,
                ..PgOptions::default()
            };
            let store = Arc::new(PgStore::open(url, embedder.identity(), options).await?);
            println!(
                "engram bench: postgres store at {}, {:?} index, hash embedder {} dims, {} queries per size",
                crate::store::redact(url),
                store.vector_index(),
                args.dims,
                args.queries
            );
            let pg = Postgres {
                url: url.clone(),
                pool: PgPool::connect(url).await?,
                store: store.clone(),
            };
            (store, Some(pg))
        }
        None => {
            let path = args
                .database
                .clone()
                .unwrap_or_else(|| scratch.join("bench.db"));
            println!(
                "engram bench: sqlite store at {}, hash embedder {} dims, {} queries per size",
                path.display(),
                args.dims,
                args.queries
            );
            let url = format!("sqlite://{}", path.display());
            (
                Arc::new(SqliteStore::open(&url, embedder.identity()).await?),
                None,
            )
        }
    };
    // As `serve` does: every store call a span when traces are exported.
    let system = if pg.is_some() { "postgresql" } else { "sqlite" };
    let store = crate::startup::traced(store, system);
    if crate::telemetry::spans::enabled() {
        println!("traces on: spans exported to OTEL_EXPORTER_OTLP_ENDPOINT");
    }
    let mut service = MemoryService::new(
        store.clone(),
        embedder.clone(),
        Arc::new(VerbatimExtractor),
        settings(),
    );
    if args.audit {
        let pseudonyms = crate::audit::Pseudonyms::new(vec![7; 32]);
        let sink = crate::audit::Sink::start(store.clone());
        let auditor = crate::audit::Auditor::new(pseudonyms, false, sink);
        service = service.with_audit(Arc::new(auditor));
        println!("audit on: every remember and recall leaves a row");
    }
    let service = Arc::new(service);
    let cache = match &args.cache {
        Some(url) => Some(cache::CacheBench::connect(url, store.clone(), embedder.clone()).await?),
        None => None,
    };
    let mut bench = OneUser {
        service: service.clone(),
        store: store.clone(),
        embedder: embedder.clone(),
        pg: pg.clone(),
        writers: args.writers.max(1),
        ef_search: args.ef_search.unwrap_or(DEFAULT_EF_SEARCH),
        cache,
    };
    bench.run(&args.sizes, args.queries).await?;
    if let Some(cache) = &bench.cache {
        cache.print();
    }
    if let Some(auditor) = service.auditor() {
        auditor.flush().await;
        println!("audit rows dropped: {}", auditor.dropped());
    }

    if let Some(pg) = pg
        && args.crowd_rows > 0
    {
        crowd::run(
            &pg,
            &service,
            embedder.as_ref(),
            plan,
            args.index,
            (args.crowd_rows, args.crowd_users),
            args.queries,
        )
        .await?;
    }
    if args.database.is_none() && args.postgres.is_none() {
        let _ = std::fs::remove_dir_all(&scratch);
    }
    Ok(())
}

/// The PostgreSQL database under bench, as the bench itself reaches it for
/// what it does beside the store (bulk loads, the raw SQL floor): its own
/// pool, never the store's.
#[derive(Clone)]
struct Postgres {
    url: String,
    pool: PgPool,
    /// The store the service runs on.
    store: Arc<PgStore>,
}

/// Waits until the store's indexer has moved every row waiting outside
/// the vector index in (recall is measured on a settled store), and says
/// how long that took: the index insertions remembers left behind them.
async fn settle(pg: &Postgres) -> Result<(), Box<dyn std::error::Error>> {
    let started = Instant::now();
    loop {
        let waiting: i64 = sqlx::query_scalar(
            "SELECT coalesce(sum(waiting), 0)::bigint FROM memory_users WHERE index_backlog",
        )
        .fetch_one(&pg.pool)
        .await?;
        if waiting == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let took = started.elapsed();
    if took > Duration::from_millis(100) {
        eprintln!(
            "  (the indexer took {:.1} s more to move waiting rows into the vector index)",
            took.as_secs_f64()
        );
    }
    Ok(())
}

/// The one-user measurements.
struct OneUser {
    service: Arc<MemoryService>,
    store: Arc<dyn Store>,
    embedder: Arc<HashEmbedder>,
    pg: Option<Postgres>,
    writers: usize,
    ef_search: u32,
    cache: Option<cache::CacheBench>,
}

/// A remember of one generated memory for the bench user, under agent `i % 4`.
fn remember_request(words: &mut Generator, i: usize) -> (String, RememberParams) {
    let text = words.memory();
    let req = RememberParams {
        text: Some(text.clone()),
        user_id: Some(BENCH_USER.into()),
        agent_id: Some(agent(i)),
        ..RememberParams::default()
    };
    (text, req)
}

/// Prints how well the near-duplicate check's sketch pass kept up with a
/// full scan, over `rows` stored vectors and `queries` new ones (see
/// [`crate::store::sketch_recall`]).
fn print_sketch_recall(rows: &[Vec<f32>], queries: &[Vec<f32>]) {
    let min_score = crate::config::DEFAULT_DEDUP_THRESHOLD - crate::store::DEDUP_MARGIN;
    let r = crate::store::sketch_recall(rows, queries, min_score);
    println!(
        "  dedup sketch pass over {} rows: found {} of the {} rows at cosine >= {min_score:.2} \
         for {} new texts (missed {}); {:.0} rows scored per check ({:.2}% of the copy); \
         {:.0} µs per check, {:.0} µs for a full scan",
        r.rows,
        r.found,
        r.near,
        r.queries,
        r.near - r.found,
        r.scored as f64 / r.queries.max(1) as f64,
        100.0 * r.scored as f64 / (r.queries.max(1) * r.rows.max(1)) as f64,
        r.sketched_time.as_secs_f64() * 1e6 / r.queries.max(1) as f64,
        r.full_time.as_secs_f64() * 1e6 / r.queries.max(1) as f64,
    );
}

/// The one user of the single-user workloads.
const BENCH_USER: &str = "bench-user";

fn user_scope() -> Result<Scope, crate::model::Invalid> {
    Scope::new(BENCH_USER, None, None)
}

/// Memories are spread over four agents; one column narrows recall to one.
fn agent(i: usize) -> String {
    format!("agent-{}", i % 4)
}

impl OneUser {
    async fn run(
        &mut self,
        sizes: &[usize],
        queries: usize,
    ) -> Result<(), Box<dyn std::error::Error>> {
        let scope = user_scope()?;
        let mut words = Generator::new(42);
        let mut stored = self.store.recent(&scope, 1).await?.1 as usize;
        // Every stored vector, for the exact-scan reference.
        let mut reference: Vec<(MemoryId, Vec<f32>)> = Vec::new();
        if stored > 0 {
            eprintln!("note: {stored} memories already stored; recall@10 covers only new ones");
        }
        let pg = self.pg.is_some();
        print!(
            "{:>9} {:>11} {:>5} | {:>9} {:>8} {:>8} | {:>9} | {:>10} {:>11}",
            "memories",
            "remember/s",
            "dups",
            "recall p50",
            "p95",
            "p99",
            "agent p50",
            "vector p50",
            "keyword p50",
        );
        if pg {
            print!(" | {:>9} {:>6} | {:>10}", "floor p50", "x", "batched/s");
        }
        println!(" | {:>9}", "recall@10");
        let mut calls = 0usize;
        // `--sizes 0` skips the one-user part (e.g. to re-measure a crowd).
        for &size in sizes.iter().filter(|&&size| size > 0) {
            // Single writer: one remember after another. On PostgreSQL the
            // last tenth of the way to `size` goes through several writers.
            let single_until = if pg {
                stored + (size.saturating_sub(stored) * 9 / 10)
            } else {
                size
            };
            let mut dups = 0usize;
            let started = Instant::now();
            let first_call = calls;
            while stored < single_until {
                let (text, req) = remember_request(&mut words, calls);
                let result = self.service.remember(&Principal::Operator, req).await?;
                calls += 1;
                for r in &result.results {
                    if r.event == Event::Add {
                        stored += 1;
                        reference.push((r.id, self.embedder.embed(&text)));
                    } else {
                        dups += 1;
                    }
                }
            }
            let per_sec = (calls - first_call) as f64 / started.elapsed().as_secs_f64();
            let batched = if pg && stored < size {
                let (rate, added, d) = self
                    .remember_batched(&mut words, &mut calls, size - stored, &mut reference)
                    .await?;
                stored += added;
                dups += d;
                Some(rate)
            } else {
                None
            };

            if let Some(pg) = &self.pg {
                settle(pg).await?;
            }
            let queries: Vec<String> = (0..queries).map(|_| words.query()).collect();
            let m = self.measure_recall(&queries, &reference).await?;
            print!(
                "{:>9} {:>11.0} {:>5} | {:>10} {:>8} {:>8} | {:>9} | {:>10} {:>11}",
                stored,
                per_sec,
                dups,
                ms(percentile(&m.recall, 0.50)),
                ms(percentile(&m.recall, 0.95)),
                ms(percentile(&m.recall, 0.99)),
                ms(percentile(&m.narrowed, 0.50)),
                ms(percentile(&m.vector, 0.50)),
                ms(percentile(&m.keyword, 0.50)),
            );
            if pg {
                let floor = percentile(&m.floor, 0.50);
                print!(
                    " | {:>9} {:>5.2}x | {:>10.0}",
                    ms(floor),
                    percentile(&m.recall, 0.50).as_secs_f64() / floor.as_secs_f64().max(1e-9),
                    batched.unwrap_or(0.0)
                );
            }
            println!(" | {:>9.3}", m.recall_at_10);
            println!(
                "  a recall's store steps alone, p50: candidates {} (both searches, depth 40), rows {} (10)",
                ms(percentile(&m.candidates, 0.50)),
                ms(percentile(&m.rows, 0.50)),
            );
            if !pg {
                // The store's copy of the user (vectors, sketches, postings)
                // and the bench's reference vectors (f32: size x dims x 4
                // bytes), before the sketch check below builds its own.
                println!("  RSS {}", embed::rss());
                // New texts from a generator of their own, so the texts
                // remembered at each size stay those of earlier runs.
                let mut fresh = Generator::new(4242);
                let texts: Vec<Vec<f32>> = (0..1000)
                    .map(|_| self.embedder.embed(&fresh.memory()))
                    .collect();
                let rows: Vec<Vec<f32>> = reference.iter().map(|(_, v)| v.clone()).collect();
                print_sketch_recall(&rows, &texts);
            }
            if let Some(cache) = &mut self.cache {
                cache.measure(stored, &queries).await?;
            }
        }
        Ok(())
    }

    /// Remembers `count` memories through `self.writers` concurrent tasks;
    /// returns calls per second, memories added and duplicates.
    async fn remember_batched(
        &self,
        words: &mut Generator,
        calls: &mut usize,
        count: usize,
        reference: &mut Vec<(MemoryId, Vec<f32>)>,
    ) -> Result<(f64, usize, usize), Box<dyn std::error::Error>> {
        let requests: Vec<(String, RememberParams)> = (0..count)
            .map(|i| remember_request(words, *calls + i))
            .collect();
        *calls += count;
        let queue = Arc::new(std::sync::Mutex::new(requests));
        let started = Instant::now();
        let mut tasks = Vec::new();
        for _ in 0..self.writers {
            let (queue, service) = (queue.clone(), self.service.clone());
            tasks.push(tokio::spawn(async move {
                let mut done = Vec::new();
                loop {
                    let next = queue.lock().map(|mut q| q.pop()).unwrap_or(None);
                    let Some((text, req)) = next else { break };
                    let result = service.remember(&Principal::Operator, req).await?;
                    done.push((text, result));
                }
                Ok::<_, crate::error::Error>(done)
            }));
        }
        let (mut added, mut dups) = (0, 0);
        for task in tasks {
            for (text, result) in task.await?? {
                for r in &result.results {
                    if r.event == Event::Add {
                        added += 1;
                        reference.push((r.id, self.embedder.embed(&text)));
                    } else {
                        dups += 1;
                    }
                }
            }
        }
        Ok((count as f64 / started.elapsed().as_secs_f64(), added, dups))
    }

    async fn measure_recall(
        &self,
        queries: &[String],
        reference: &[(MemoryId, Vec<f32>)],
    ) -> Result<Measured, Box<dyn std::error::Error>> {
        let scope = user_scope()?;
        let mut m = Measured::default();
        let (mut overlap, mut expected) = (0usize, 0usize);
        let at = SearchScope::unfiltered(&scope);
        let mut floor = match &self.pg {
            Some(pg) => Some(crowd::Floor::new(&pg.pool, self.ef_search).await?),
            None => None,
        };
        for (i, query) in queries.iter().enumerate() {
            let q = self.embedder.embed(query);
            // The first search of a query is the slower one (its index
            // pages are not yet in the CPU's caches: at 100k memories the
            // floor query's median in psql was 7.6 ms first, 4.4 ms later;
            // docs/benchmarks.md). The recall and the floor take turns at
            // going first, before anything else searches for the query, so
            // neither is timed warm alone.
            let floor_first = i % 2 == 1;
            if floor_first && let Some(floor) = &mut floor {
                m.floor.push(floor.time(scope.user_id(), &q, 10).await?);
            }
            for (agent_id, times) in [(None, &mut m.recall), (Some(agent(1)), &mut m.narrowed)] {
                let narrowed = agent_id.is_some();
                let req = RecallParams {
                    query: query.clone(),
                    user_id: Some(BENCH_USER.into()),
                    agent_id,
                    limit: Some(10),
                    ..RecallParams::default()
                };
                let t = Instant::now();
                std::hint::black_box(self.service.recall(&Principal::Operator, req).await?);
                times.push(t.elapsed());
                if !narrowed
                    && !floor_first
                    && let Some(floor) = &mut floor
                {
                    m.floor.push(floor.time(scope.user_id(), &q, 10).await?);
                }
            }
            let t = Instant::now();
            let hits = self.store.vector_search(at, &q, 10).await?;
            m.vector.push(t.elapsed());
            let t = Instant::now();
            std::hint::black_box(self.store.keyword_search(at, query, 40).await?);
            m.keyword.push(t.elapsed());
            // A recall's two store steps alone: its candidates at its depth
            // (both searches, both relevances), then ten of their rows.
            let t = Instant::now();
            let none = |_: &[Scored]| Vec::new();
            let candidates = self
                .store
                .candidates(at, &q, query, 40, &none, None)
                .await?;
            m.candidates.push(t.elapsed());
            let ids: Vec<MemoryId> = candidates.scored.iter().take(10).map(|c| c.id).collect();
            let t = Instant::now();
            std::hint::black_box(self.store.get_many(scope.user_id(), &ids).await?);
            m.rows.push(t.elapsed());

            let exact = exact_top(reference, &q, 10);
            expected += exact.len();
            overlap += found_among(&hits, &exact);
        }
        m.recall_at_10 = overlap as f64 / expected.max(1) as f64;
        m.sort();
        Ok(m)
    }
}

/// Latencies of one size step, each list sorted.
#[derive(Default)]
struct Measured {
    recall: Vec<Duration>,
    narrowed: Vec<Duration>,
    vector: Vec<Duration>,
    keyword: Vec<Duration>,
    floor: Vec<Duration>,
    candidates: Vec<Duration>,
    rows: Vec<Duration>,
    recall_at_10: f64,
}

impl Measured {
    fn sort(&mut self) {
        for list in [
            &mut self.recall,
            &mut self.narrowed,
            &mut self.vector,
            &mut self.keyword,
            &mut self.floor,
            &mut self.candidates,
            &mut self.rows,
        ] {
            list.sort();
        }
    }
}

/// The `k` reference vectors most similar to `q`, by exact cosine, best first.
fn exact_top(reference: &[(MemoryId, Vec<f32>)], q: &[f32], k: usize) -> Vec<Hit> {
    let mut scored: Vec<Hit> = reference
        .iter()
        .map(|(id, v)| Hit {
            id: *id,
            score: dot(q, v),
        })
        .collect();
    scored.sort_by(|a, b| b.score.total_cmp(&a.score));
    scored.truncate(k);
    scored
}

/// How many of `hits` belong to the exact top list `exact`, ties included: a
/// hit as similar as the exact list's last one is as right as any of the tied
/// memories the exact list happened to keep (short synthetic texts tie often).
fn found_among(hits: &[Hit], exact: &[Hit]) -> usize {
    let Some(last) = exact.last() else {
        return 0;
    };
    hits.iter()
        .take(exact.len())
        .filter(|h| exact.iter().any(|e| e.id == h.id) || h.score >= last.score - 1e-5)
        .count()
}

/// The service settings every bench runs with: the configuration's
/// defaults, and a model failure fails the remember (a bench must not
/// measure the fallback by accident).
fn settings() -> Settings {
    Settings {
        on_llm_error: crate::config::OnLlmError::Fail,
        ..Settings::default()
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

fn ms(d: Duration) -> String {
    format!("{:.2}ms", d.as_secs_f64() * 1000.0)
}
