//! `engram bench --cache URL`: what the cache buys, on the store the
//! one-user bench just filled, at each size.
//!
//! For one set of distinct queries it times recall and `user_context`
//! without the cache, on the first (missing) pass with it, and on a second,
//! warm pass; then recall right after a write (the version moved, so a miss).
//! Embedding calls are counted through an embedder that presents the hash
//! embedder as a remote one (engram caches remote embedders' query vectors
//! only): each query asked at three limits and in a focused context.
//! Keys go under a per-run prefix and expire within minutes.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;

use super::{BENCH_USER, percentile};
use crate::auth::Principal;
use crate::cache::{Cache, RedisCache, RedisSettings, VectorSource};
use crate::embed::{EmbedError, Embedder, EmbedderIdentity, HashEmbedder};
use crate::extract::VerbatimExtractor;
use crate::params::{RecallParams, RememberParams, UserContextParams};
use crate::service::{MemoryService, Settings};
use crate::store::Store;

/// The hash embedder presented as remote, counting query embeddings.
struct Counted {
    inner: Arc<HashEmbedder>,
    queries: AtomicUsize,
}

#[async_trait]
impl Embedder for Counted {
    fn identity(&self) -> EmbedderIdentity {
        self.inner.identity()
    }
    async fn embed_documents(&self, texts: &[String]) -> Result<Vec<Vec<f32>>, EmbedError> {
        self.inner.embed_documents(texts).await
    }
    async fn embed_query(&self, text: &str) -> Result<Vec<f32>, EmbedError> {
        self.queries.fetch_add(1, Ordering::Relaxed);
        self.inner.embed_query(text).await
    }
}

/// One size's cache measurements.
pub struct CacheRow {
    memories: usize,
    recall: [Duration; 3],
    recall_p99_warm: Duration,
    /// Recall right after a write: without the cache, and with it (a miss).
    after_write: [Duration; 2],
    context: [Duration; 3],
    embeds: (usize, usize),
    local_embed: Duration,
    vector_get: Duration,
}

pub struct CacheBench {
    cache: Arc<RedisCache>,
    store: Arc<dyn Store>,
    embedder: Arc<HashEmbedder>,
    rows: Vec<CacheRow>,
}

/// Entries live long enough to outlast a measurement.
fn settings() -> Settings {
    Settings {
        cache_ttl: Duration::from_secs(600),
        ..super::settings()
    }
}

impl CacheBench {
    pub async fn connect(
        url: &str,
        store: Arc<dyn Store>,
        embedder: Arc<HashEmbedder>,
    ) -> Result<Self, Box<dyn std::error::Error>> {
        let cache = RedisCache::connect(RedisSettings {
            url: url.to_owned(),
            prefix: format!("engram-bench:{}:", std::process::id()),
            entry_ttl: Duration::from_secs(600),
            vector_ttl: Duration::from_secs(600),
            timeout: Duration::from_millis(crate::config::DEFAULT_CACHE_TIMEOUT_MS),
            pool_size: crate::config::DEFAULT_CACHE_POOL_SIZE,
            retry_every: Duration::from_millis(crate::config::DEFAULT_CACHE_RETRY_MS),
            ca_file: None,
        })
        .await?;
        if !cache.is_up() {
            return Err(format!("the cache at {url} does not answer").into());
        }
        Ok(Self {
            cache: Arc::new(cache),
            store,
            embedder,
            rows: Vec::new(),
        })
    }

    fn service(&self, embedder: Arc<dyn Embedder>, cached: bool) -> MemoryService {
        let service = MemoryService::new(
            self.store.clone(),
            embedder,
            Arc::new(VerbatimExtractor),
            settings(),
        );
        if cached {
            service.with_cache(self.cache.clone())
        } else {
            service
        }
    }

    /// Measures at the store's current size with `queries` (distinct).
    pub async fn measure(
        &mut self,
        memories: usize,
        queries: &[String],
    ) -> Result<(), Box<dyn std::error::Error>> {
        let plain = self.service(self.embedder.clone(), false);
        let cached = self.service(self.embedder.clone(), true);
        let me = &Principal::Operator;
        let user = || Some(BENCH_USER.to_owned());
        let recall = |query: &str, limit: i64| RecallParams {
            query: query.to_owned(),
            user_id: user(),
            limit: Some(limit),
            ..RecallParams::default()
        };
        let context = |limit: i64, focus: Option<String>| UserContextParams {
            user_id: user(),
            limit: Some(limit),
            query: focus,
            ..UserContextParams::default()
        };

        // recall: no cache, first pass (misses, filling), second pass (hits)
        let mut recall_times: [Vec<Duration>; 3] = Default::default();
        for (pass, service) in [(0, &plain), (1, &cached), (2, &cached)] {
            for q in queries {
                let t = Instant::now();
                std::hint::black_box(service.recall(me, recall(q, 10)).await?);
                recall_times[pass].push(t.elapsed());
            }
        }
        let stats = cached.cache_stats();
        if stats.hits < queries.len() as u64 {
            return Err(format!("the warm pass missed the cache: {stats:?}").into());
        }

        // user_context, most recent N for N in 1..=100 (100 distinct
        // entries): no cache, first pass (misses), then five warm passes.
        let mut context_times: [Vec<Duration>; 3] = Default::default();
        for (pass, service, repeat) in [(0, &plain, 1), (1, &cached, 1), (2, &cached, 5)] {
            for _ in 0..repeat {
                for limit in 1..=100 {
                    let t = Instant::now();
                    std::hint::black_box(service.user_context(me, context(limit, None)).await?);
                    context_times[pass].push(t.elapsed());
                }
            }
        }

        // recall right after a write, which leaves every entry of the user
        // behind: without the cache, and with it (a miss and a fill).
        let mut after_write: [Vec<Duration>; 2] = Default::default();
        for (i, q) in queries.iter().take(400).enumerate() {
            let (slot, service) = if i % 2 == 0 {
                (0, &plain)
            } else {
                (1, &cached)
            };
            service
                .remember(
                    me,
                    RememberParams {
                        text: Some(format!("cache bench write {memories} number {i}")),
                        user_id: user(),
                        infer: Some(false),
                        ..RememberParams::default()
                    },
                )
                .await?;
            let t = Instant::now();
            std::hint::black_box(service.recall(me, recall(q, 10)).await?);
            after_write[slot].push(t.elapsed());
        }

        // embedding calls, with query vectors cached
        let counted = Arc::new(Counted {
            inner: self.embedder.clone(),
            queries: AtomicUsize::new(0),
        });
        let remote = self.service(counted.clone(), true);
        let asked = queries.len().min(500);
        let mut recalls = 0;
        for q in &queries[..asked] {
            for limit in [5, 10, 20] {
                remote.recall(me, recall(q, limit)).await?;
                recalls += 1;
            }
            remote
                .user_context(me, context(10, Some(q.clone())))
                .await?;
            recalls += 1;
        }
        let calls = counted.queries.load(Ordering::Relaxed);

        // what a vector costs: computed locally vs fetched
        let source = VectorSource {
            embedder: self.embedder.identity(),
            variant: String::new(),
        };
        let (mut local, mut fetched) = (Vec::new(), Vec::new());
        for q in &queries[..asked] {
            let t = Instant::now();
            std::hint::black_box(self.embedder.embed_query(q).await?);
            local.push(t.elapsed());
            let t = Instant::now();
            std::hint::black_box(self.cache.get_vector(&source, q).await);
            fetched.push(t.elapsed());
        }

        for list in recall_times
            .iter_mut()
            .chain(context_times.iter_mut())
            .chain(after_write.iter_mut())
            .chain([&mut local, &mut fetched])
        {
            list.sort();
        }
        let p50 = |l: &Vec<Duration>| percentile(l, 0.50);
        self.rows.push(CacheRow {
            memories,
            recall: [
                p50(&recall_times[0]),
                p50(&recall_times[1]),
                p50(&recall_times[2]),
            ],
            recall_p99_warm: percentile(&recall_times[2], 0.99),
            after_write: [p50(&after_write[0]), p50(&after_write[1])],
            context: [
                p50(&context_times[0]),
                p50(&context_times[1]),
                p50(&context_times[2]),
            ],
            embeds: (calls, recalls),
            local_embed: p50(&local),
            vector_get: p50(&fetched),
        });
        let failures = self.cache.failures();
        if failures != (0, 0) {
            eprintln!("note: the cache failed {failures:?} (errors, skipped) during the run");
        }
        Ok(())
    }

    pub fn print(&self) {
        if self.rows.is_empty() {
            return;
        }
        println!();
        println!("cache (p50; none = no cache, miss = first pass filling, warm = second pass):");
        println!(
            "{:>9} | {:>11} {:>10} {:>10} {:>9} | {:>22} | {:>12} {:>11} {:>12} | {:>15} | {:>11} {:>10}",
            "memories",
            "recall none",
            "miss",
            "warm",
            "warm p99",
            "after write: none/miss",
            "context none",
            "miss",
            "warm",
            "embed calls",
            "hash embed",
            "vector get",
        );
        for r in &self.rows {
            println!(
                "{:>9} | {:>11} {:>10} {:>10} {:>9} | {:>22} | {:>12} {:>11} {:>12} | {:>15} | {:>11} {:>10}",
                r.memories,
                super::ms(r.recall[0]),
                super::ms(r.recall[1]),
                super::ms(r.recall[2]),
                super::ms(r.recall_p99_warm),
                format!(
                    "{} / {}",
                    super::ms(r.after_write[0]),
                    super::ms(r.after_write[1])
                ),
                super::ms(r.context[0]),
                super::ms(r.context[1]),
                super::ms(r.context[2]),
                format!("{}/{}", r.embeds.0, r.embeds.1),
                us(r.local_embed),
                us(r.vector_get),
            );
        }
    }
}

fn us(d: Duration) -> String {
    format!("{:.1}us", d.as_secs_f64() * 1e6)
}
