//! The cache-through steps of the read flows (see [`crate::cache`]):
//! recalls and contexts are served from an entry built at the user's
//! current version, and remote embedders' query vectors are reused.
//!
//! Invariant: an entry is never served at a version other than the one it
//! was built at, because the version is read before the data it describes.

use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::MemoryService;
use super::types::RecallResult;
use crate::cache::{CacheStats, VectorSource, entry};
use crate::context::UserContext;
use crate::error::Error;

/// Cache lookups by outcome; the cache itself counts its failures.
#[derive(Default)]
pub(super) struct Tally {
    hits: AtomicU64,
    misses: AtomicU64,
    vector_hits: AtomicU64,
    vector_misses: AtomicU64,
}

fn count(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// Whether an answer may be served again from the cache: not one built
/// while a part of engram was down (it would outlive the outage).
pub(super) trait Cacheable {
    fn cacheable(&self) -> bool;

    /// Whether a memory in it has expired by `now`. Expiry moves no
    /// version, so an entry holding such a memory is not served: it is
    /// built again (without it).
    fn holds_expired(&self, now: chrono::DateTime<chrono::Utc>) -> bool;
}

impl Cacheable for RecallResult {
    fn cacheable(&self) -> bool {
        self.degraded.is_none()
    }

    fn holds_expired(&self, now: chrono::DateTime<chrono::Utc>) -> bool {
        self.results.iter().any(|r| r.memory.expired_at(now))
    }
}

impl Cacheable for UserContext {
    fn cacheable(&self) -> bool {
        self.degraded.is_none()
    }

    fn holds_expired(&self, now: chrono::DateTime<chrono::Utc>) -> bool {
        self.memories.iter().any(|m| m.expired_at(now))
    }
}

impl MemoryService {
    /// Cache counters since start (all zero without a cache).
    pub fn cache_stats(&self) -> CacheStats {
        let (errors, skipped) = self.cache.failures();
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        CacheStats {
            hits: get(&self.tally.hits),
            misses: get(&self.tally.misses),
            vector_hits: get(&self.tally.vector_hits),
            vector_misses: get(&self.tally.vector_misses),
            errors,
            skipped,
        }
    }

    /// `build()`'s value, from the cache when an entry of the user's current
    /// version is there, else built and stored. `field: None` skips the cache.
    pub(super) async fn through_cache<T, F, Fut>(
        &self,
        user_id: &str,
        field: Option<String>,
        build: F,
    ) -> Result<T, Error>
    where
        T: Serialize + DeserializeOwned + Cacheable,
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, Error>>,
    {
        let Some(field) = field else {
            return build().await;
        };
        // Both lookups at once. The version is read before build() reads any
        // data, so an entry stored under it is never older than it.
        let (version, stored) = tokio::join!(
            self.store.version(user_id),
            self.cache.get_entry(user_id, &field)
        );
        let Some(version) = version? else {
            // Nothing stored for the user: nothing worth caching, and no
            // version that a later write could be told apart from.
            return build().await;
        };
        if let Some(value) = stored
            .and_then(|bytes| entry::decode::<T>(&bytes, version))
            .filter(|value| !value.holds_expired(chrono::Utc::now()))
        {
            count(&self.tally.hits);
            return Ok(value);
        }
        count(&self.tally.misses);
        let value = build().await?;
        if !value.cacheable() {
            return Ok(value);
        }
        if let Some(bytes) = entry::encode(version, self.settings.cache_ttl, &value) {
            self.cache.put_entry(user_id, &field, version, bytes).await;
        }
        Ok(value)
    }

    /// The query's vector; remote embedders' vectors come from the cache when
    /// it has them (local ones are cheaper to compute than to fetch).
    pub(super) async fn embed_query(&self, query: &str) -> Result<Vec<f32>, Error> {
        if !self.cache.enabled() || self.embedder.is_local() {
            return Ok(self.embedder.embed_query(query).await?);
        }
        let source = VectorSource {
            embedder: self.embedder.identity(),
            variant: self.embedder.query_variant(),
        };
        if let Some(vector) = self
            .cache
            .get_vector(&source, query)
            .await
            .and_then(|bytes| entry::decode_vector(&bytes, source.embedder.dims))
        {
            count(&self.tally.vector_hits);
            return Ok(vector);
        }
        count(&self.tally.vector_misses);
        let vector = self.embedder.embed_query(query).await?;
        self.cache
            .put_vector(&source, query, entry::encode_vector(&vector))
            .await;
        Ok(vector)
    }
}
