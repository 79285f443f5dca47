//! `engram bench`: fills a scratch store for one user through [`MemoryService`]
//! and prints remember throughput and recall latency percentiles at each size.
//!
//! Memories are spread over four agents of the one user. Besides end-to-end
//! recall over the whole user, it times recall narrowed to one agent, times
//! the two candidate searches on their own (vector and keyword, straight on
//! the store), and measures recall@10 of the quantised vector index against
//! an exact f32 scan of the same vectors.
//!
//! The text is synthetic but shaped like memories (a subject, an activity, a
//! place, a time) drawn from word lists by a seeded generator, so runs are
//! repeatable and keyword search has realistic selectivity.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::embed::{Embedder, HashEmbedder, dot};
use crate::extract::VerbatimExtractor;
use crate::model::{Event, MemoryId, MetadataFilter, Scope};
use crate::service::{MemoryService, RecallRequest, RememberRequest, Settings};
use crate::store::{SearchScope, SqliteStore, Store};

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
    /// Database file to fill (default: a fresh file in the temp dir, removed after).
    #[arg(long)]
    pub database: Option<PathBuf>,
}

pub async fn run(args: BenchArgs) -> Result<(), Box<dyn std::error::Error>> {
    let scratch = std::env::temp_dir().join(format!("engram-bench-{}", std::process::id()));
    let path = args
        .database
        .clone()
        .unwrap_or_else(|| scratch.join("bench.db"));
    let embedder = Arc::new(HashEmbedder::new(args.dims));
    let store = Arc::new(
        SqliteStore::open(&format!("sqlite://{}", path.display()), embedder.identity()).await?,
    );
    let service = MemoryService::new(
        store.clone(),
        embedder.clone(),
        Arc::new(VerbatimExtractor),
        Settings {
            dedup_threshold: crate::config::DEFAULT_DEDUP_THRESHOLD,
            max_text_bytes: crate::config::DEFAULT_MAX_TEXT_BYTES,
        },
    );
    let scope = Scope::user("bench-user");
    // Memories are spread over four agents; one column narrows recall to one.
    let agent_scope = |i: usize| Scope {
        agent_id: Some(format!("agent-{}", i % 4)),
        ..scope.clone()
    };
    let mut words = Generator::new(42);
    let mut stored = store.recent(&scope, 1).await?.1 as usize;
    // Every stored vector, for the exact-scan reference.
    let mut reference: Vec<(MemoryId, Vec<f32>)> = Vec::new();
    if stored > 0 {
        eprintln!("note: {stored} memories already stored; recall@10 covers only new ones");
    }
    println!(
        "engram bench: sqlite store at {}, hash embedder {} dims, one user, {} queries per size",
        path.display(),
        args.dims,
        args.queries
    );
    println!(
        "{:>9} {:>11} {:>5} | {:>9} {:>8} {:>8} | {:>9} | {:>10} {:>11} | {:>9}",
        "memories",
        "remember/s",
        "dups",
        "recall p50",
        "p95",
        "p99",
        "agent p50",
        "vector p50",
        "keyword p50",
        "recall@10"
    );
    for &size in &args.sizes {
        let mut dups = 0usize;
        let mut calls = 0usize;
        let started = Instant::now();
        while stored < size {
            let text = words.memory();
            let req = RememberRequest {
                scope: agent_scope(calls),
                text: Some(text.clone()),
                messages: None,
                metadata: None,
                infer: true,
            };
            let result = service.remember(req).await?;
            calls += 1;
            for r in &result.results {
                if r.event == Event::Add {
                    stored += 1;
                    reference.push((r.id, embedder.embed(&text)));
                } else {
                    dups += 1;
                }
            }
        }
        let per_sec = calls as f64 / started.elapsed().as_secs_f64();

        let queries: Vec<String> = (0..args.queries).map(|_| words.query()).collect();
        let mut recall = Vec::with_capacity(queries.len());
        let mut narrowed = Vec::with_capacity(queries.len());
        let mut vector = Vec::with_capacity(queries.len());
        let mut keyword = Vec::with_capacity(queries.len());
        let mut overlap = 0usize;
        let mut expected = 0usize;
        let none = MetadataFilter::default();
        let at = SearchScope {
            scope: &scope,
            filter: &none,
        };
        for query in &queries {
            for (scope, times) in [
                (scope.clone(), &mut recall),
                (agent_scope(1), &mut narrowed),
            ] {
                let req = RecallRequest {
                    scope,
                    query: query.clone(),
                    limit: Some(10),
                    filters: None,
                };
                let t = Instant::now();
                std::hint::black_box(service.recall(req).await?);
                times.push(t.elapsed());
            }

            let q = embedder.embed(query);
            let t = Instant::now();
            let hits = store.vector_search(at, &q, 10).await?;
            vector.push(t.elapsed());
            let t = Instant::now();
            std::hint::black_box(store.keyword_search(at, query, 40).await?);
            keyword.push(t.elapsed());

            let exact = exact_top(&reference, &q, 10);
            expected += exact.len();
            overlap += hits.iter().filter(|h| exact.contains(&h.id)).count();
        }
        for list in [&mut recall, &mut narrowed, &mut vector, &mut keyword] {
            list.sort();
        }
        println!(
            "{:>9} {:>11.0} {:>5} | {:>10} {:>8} {:>8} | {:>9} | {:>10} {:>11} | {:>9.3}",
            stored,
            per_sec,
            dups,
            ms(percentile(&recall, 0.50)),
            ms(percentile(&recall, 0.95)),
            ms(percentile(&recall, 0.99)),
            ms(percentile(&narrowed, 0.50)),
            ms(percentile(&vector, 0.50)),
            ms(percentile(&keyword, 0.50)),
            overlap as f64 / expected.max(1) as f64,
        );
    }
    if args.database.is_none() {
        let _ = std::fs::remove_dir_all(&scratch);
    }
    Ok(())
}

/// The ids of the `k` reference vectors most similar to `q`, by exact cosine.
fn exact_top(reference: &[(MemoryId, Vec<f32>)], q: &[f32], k: usize) -> Vec<MemoryId> {
    let mut scored: Vec<(MemoryId, f32)> =
        reference.iter().map(|(id, v)| (*id, dot(q, v))).collect();
    scored.sort_by(|a, b| b.1.total_cmp(&a.1));
    scored.into_iter().take(k).map(|(id, _)| id).collect()
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

/// Seeded xorshift text generator.
struct Generator(u64);

const SUBJECTS: &[&str] = &[
    "I",
    "My sister",
    "My brother",
    "My partner",
    "My manager",
    "My friend Ana",
    "My son",
    "My daughter",
    "Our team",
    "My neighbour",
    "My doctor",
    "My colleague Raj",
];
const VERBS: &[&str] = &[
    "likes",
    "prefers",
    "avoids",
    "booked",
    "visited",
    "is learning",
    "wants to try",
    "recommended",
    "hates",
    "plans to buy",
    "reads about",
    "collects",
    "cooks",
    "orders",
];
const OBJECTS: &[&str] = &[
    "espresso",
    "green tea",
    "sushi",
    "vegan ramen",
    "window seats",
    "aisle seats",
    "jazz",
    "hiking boots",
    "sci-fi novels",
    "board games",
    "sourdough",
    "tapas",
    "yoga",
    "chess",
    "oat milk",
    "red wine",
    "cycling",
    "photography",
    "pottery",
    "salsa dancing",
    "kayaking",
    "podcasts",
    "vinyl records",
    "dim sum",
    "croissants",
    "spicy curry",
    "gluten-free pasta",
    "electric cars",
    "mechanical keyboards",
    "houseplants",
    "running shoes",
    "Rust",
    "Python",
    "watercolours",
    "climbing",
    "surfing",
    "birdwatching",
    "opera",
    "karaoke",
];
const PLACES: &[&str] = &[
    "Lisbon",
    "Porto",
    "Tokyo",
    "Kyoto",
    "Berlin",
    "Paris",
    "Madrid",
    "Oslo",
    "Seattle",
    "Toronto",
    "Nairobi",
    "Lima",
    "Sydney",
    "Hanoi",
    "Istanbul",
    "Reykjavik",
    "Dublin",
    "Prague",
    "Vienna",
    "Cape Town",
    "Mexico City",
    "Buenos Aires",
    "Seoul",
    "Mumbai",
];
const TIMES: &[&str] = &[
    "on weekends",
    "every morning",
    "in winter",
    "in summer",
    "after work",
    "on Fridays",
    "during holidays",
    "at night",
    "before meetings",
    "on business trips",
    "most evenings",
];

impl Generator {
    fn new(seed: u64) -> Self {
        Self(seed.max(1))
    }

    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    fn pick<'a>(&mut self, list: &[&'a str]) -> &'a str {
        list[(self.next() % list.len() as u64) as usize]
    }

    fn memory(&mut self) -> String {
        let n = self.next() % 10_000;
        format!(
            "{} {} {} in {} {} (note {n})",
            self.pick(SUBJECTS),
            self.pick(VERBS),
            self.pick(OBJECTS),
            self.pick(PLACES),
            self.pick(TIMES),
        )
    }

    fn query(&mut self) -> String {
        match self.next() % 3 {
            0 => format!("what does the user think of {}", self.pick(OBJECTS)),
            1 => format!("{} in {}", self.pick(OBJECTS), self.pick(PLACES)),
            _ => format!(
                "{} {} {}",
                self.pick(VERBS),
                self.pick(OBJECTS),
                self.pick(TIMES)
            ),
        }
    }
}
