//! `engram bench`: fills a scratch store for one user through [`MemoryService`]
//! and prints remember throughput and recall latency percentiles at each size.
//!
//! The text is synthetic but shaped like memories (a subject, an activity, a
//! place, a time) drawn from word lists by a seeded generator, so runs are
//! repeatable and keyword search has realistic selectivity.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::embed::HashEmbedder;
use crate::extract::VerbatimExtractor;
use crate::model::{Event, Scope};
use crate::service::{MemoryService, RecallRequest, RememberRequest, Settings};
use crate::store::SqliteStore;

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
    let store = SqliteStore::open(
        &format!("sqlite://{}", path.display()),
        crate::embed::Embedder::identity(embedder.as_ref()),
    )
    .await?;
    let service = MemoryService::new(
        Arc::new(store),
        embedder,
        Arc::new(VerbatimExtractor),
        Settings {
            dedup_threshold: crate::config::DEFAULT_DEDUP_THRESHOLD,
            max_text_bytes: crate::config::DEFAULT_MAX_TEXT_BYTES,
        },
    );
    let scope = Scope::user("bench-user");
    let mut words = Generator::new(42);
    let mut stored = 0usize;
    println!(
        "engram bench: sqlite store at {}, hash embedder {} dims, one user",
        path.display(),
        args.dims
    );
    println!(
        "{:>9} {:>14} {:>6} {:>10} {:>10} {:>10} {:>8}",
        "memories", "remember/s", "dups", "recall p50", "p95", "p99", "queries"
    );
    for &size in &args.sizes {
        let mut dups = 0usize;
        let started = Instant::now();
        let added_before = stored;
        while stored < size {
            let req = RememberRequest {
                scope: scope.clone(),
                text: Some(words.memory()),
                messages: None,
                metadata: None,
                infer: true,
            };
            let result = service.remember(req).await?;
            for r in &result.results {
                if r.event == Event::Add {
                    stored += 1;
                } else {
                    dups += 1;
                }
            }
        }
        let fill = started.elapsed();
        let per_sec = (stored - added_before + dups) as f64 / fill.as_secs_f64();

        let mut latencies = Vec::with_capacity(args.queries);
        for _ in 0..args.queries {
            let req = RecallRequest {
                scope: scope.clone(),
                query: words.query(),
                limit: Some(10),
                filters: None,
            };
            let t = Instant::now();
            let result = service.recall(req).await?;
            latencies.push(t.elapsed());
            std::hint::black_box(result);
        }
        latencies.sort();
        println!(
            "{:>9} {:>14.0} {:>6} {:>10} {:>10} {:>10} {:>8}",
            stored,
            per_sec,
            dups,
            ms(percentile(&latencies, 0.50)),
            ms(percentile(&latencies, 0.95)),
            ms(percentile(&latencies, 0.99)),
            args.queries
        );
    }
    if args.database.is_none() {
        let _ = std::fs::remove_dir_all(&scratch);
    }
    Ok(())
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
