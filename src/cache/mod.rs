//! The cache: Dragonfly, Redis or Valkey (anything speaking the Redis
//! protocol), or [`NoCache`]. An optimisation, never a source of truth.
//!
//! What is cached, per user, in one hash `{prefix}u:{<user hash>}`:
//! recall results and user contexts, one field per request shape
//! ([`recall_field`], [`context_field`]), each an `entry` recording the
//! user's [`Versions::version`](crate::store::Versions::version) it was built at.
//! Query embeddings live under `{prefix}qv:<hash>` (embedder identity + text),
//! shared by all users: they hold a vector, not a memory.
//!
//! Invariants:
//! * **No stale read.** The version is read from the database, where every
//!   write moves it inside the write's own transaction; an entry is served
//!   only while the user is still at the version it records. The version is
//!   read before the data an entry is built from, so an entry can only be
//!   newer than its version, never older. Nothing depends on the cache
//!   having seen a write: a write made while the cache was unreachable, by
//!   another process, or by raw SQL invalidates just the same.
//! * **Forget leaves nothing.** `forget` deletes the user's hash; forgetting
//!   one memory, or a selection of them, also leaves a floor in it, so a recall that read the database
//!   before the delete cannot write its (never servable) entry back.
//!   Purges that fail while the cache is down are retried when it returns.
//! * **The cache is optional at every moment.** Every operation has a short
//!   timeout; a failure is counted, logged at most once per interval
//!   (`health`), and the request goes on without the cache, which is tried
//!   again after a pause.
//!
//! Besides, `{prefix}rl:<kind>:<key id>` holds the HTTP rate limit state of
//! one API key ([`Cache::allow`]), so processes behind one load balancer
//! share each key's allowance.
//!
//! Keys put the user hash in braces (a Redis Cluster hash tag), so one user's
//! keys share a slot and the scripts stay single-slot on Dragonfly and clusters.

pub(crate) mod entry;
mod health;
mod redis;
mod tls;

use async_trait::async_trait;
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::embed::EmbedderIdentity;
use crate::model::{MetadataFilter, Scope};

pub use redis::{CacheError, RedisCache, RedisSettings};
pub(crate) use tls::ca_certificates;

/// Counters since start; every field only grows.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct CacheStats {
    /// Recalls and contexts answered from the cache.
    pub hits: u64,
    /// Looked up and absent, expired, or built at an older version.
    pub misses: u64,
    /// Query embeddings found in the cache (embedding calls saved).
    pub vector_hits: u64,
    pub vector_misses: u64,
    /// Cache commands that failed or timed out.
    pub errors: u64,
    /// Operations not attempted because the cache was marked down.
    pub skipped: u64,
}

/// The cache seam. Implementations never fail a request: an unavailable
/// cache reads as a miss and drops writes (and counts them).
#[async_trait]
pub trait Cache: Send + Sync {
    /// False for [`NoCache`]: callers then skip the work only a cache needs.
    fn enabled(&self) -> bool;

    /// The raw entry stored for `user_id` under `field`, if any.
    async fn get_entry(&self, user_id: &str, field: &str) -> Option<Vec<u8>>;

    /// Stores an entry built at `version`, unless the user was purged with a
    /// floor above it since. Refreshes the user's key lifetime.
    async fn put_entry(&self, user_id: &str, field: &str, version: u64, entry: Vec<u8>);

    /// Deletes every entry of the user. With `floor`, entries built at a
    /// version below it are refused for a while afterwards.
    async fn purge_user(&self, user_id: &str, floor: Option<u64>);

    /// The stored vector of `query` by `embedder` (and its `variant`: see
    /// [`Embedder::query_variant`](crate::embed::Embedder::query_variant)), if any.
    async fn get_vector(&self, embedder: &VectorSource, query: &str) -> Option<Vec<u8>>;

    async fn put_vector(&self, embedder: &VectorSource, query: &str, vector: Vec<u8>);

    /// Errors and skips so far (hits and misses are counted by callers).
    fn failures(&self) -> (u64, u64);

    /// Asks the server for an answer now (health checks): `Err` says why
    /// not. [`NoCache`] answers `Ok`.
    async fn ping(&self) -> Result<(), String> {
        Ok(())
    }

    /// A rate-limit decision shared by every engram process on this cache:
    /// counts one request against `bucket`, which earns one request per
    /// `interval` and may run up to `tolerance` ahead (a burst). `Err` is
    /// how long to wait. `None` when the cache cannot decide (none
    /// configured, or down): the caller counts in-process instead.
    async fn allow(
        &self,
        _bucket: &str,
        _interval: std::time::Duration,
        _tolerance: std::time::Duration,
    ) -> Option<Result<(), std::time::Duration>> {
        None
    }
}

/// Everything that decides a query's vector besides its text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VectorSource {
    pub embedder: EmbedderIdentity,
    /// [`Embedder::query_variant`](crate::embed::Embedder::query_variant).
    pub variant: String,
}

/// No cache configured: every lookup misses, every store is dropped.
pub struct NoCache;

#[async_trait]
impl Cache for NoCache {
    fn enabled(&self) -> bool {
        false
    }
    async fn get_entry(&self, _: &str, _: &str) -> Option<Vec<u8>> {
        None
    }
    async fn put_entry(&self, _: &str, _: &str, _: u64, _: Vec<u8>) {}
    async fn purge_user(&self, _: &str, _: Option<u64>) {}
    async fn get_vector(&self, _: &VectorSource, _: &str) -> Option<Vec<u8>> {
        None
    }
    async fn put_vector(&self, _: &VectorSource, _: &str, _: Vec<u8>) {}
    fn failures(&self) -> (u64, u64) {
        (0, 0)
    }
}

/// 128 bits of SHA-256 over the parts, hex: key material that hides user
/// ids and query text and cannot collide by accident.
fn digest(parts: &[&[u8]]) -> String {
    let mut hasher = Sha256::new();
    for part in parts {
        // Length-prefixed, so ("ab", "c") and ("a", "bc") differ.
        hasher.update((part.len() as u64).to_be_bytes());
        hasher.update(part);
    }
    hasher.finalize()[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The key of the hash holding every cached entry of `user_id`.
pub fn user_key(prefix: &str, user_id: &str) -> String {
    format!("{prefix}u:{{{}}}", digest(&[user_id.as_bytes()]))
}

/// The key of a cached query embedding.
pub fn vector_key(prefix: &str, source: &VectorSource, query: &str) -> String {
    let dims = source.embedder.dims.to_string();
    format!(
        "{prefix}qv:{}",
        digest(&[
            source.embedder.name.as_bytes(),
            dims.as_bytes(),
            source.variant.as_bytes(),
            query.as_bytes()
        ])
    )
}

/// The field of one recall: everything that shapes its result except the
/// user (the key) and the data (the version).
pub fn recall_field(scope: &Scope, query: &str, limit: usize, filter: &MetadataFilter) -> String {
    let mut pairs = filter.pairs().to_vec();
    pairs.sort_by(|a, b| a.0.cmp(&b.0));
    let shape = serde_json::json!([scope.agent_id(), scope.run_id(), query, limit, pairs]);
    format!("r:{}", digest(&[shape.to_string().as_bytes()]))
}

/// The field of one user context.
pub fn context_field(scope: &Scope, limit: usize, focus: Option<&str>) -> String {
    let shape = serde_json::json!([scope.agent_id(), scope.run_id(), limit, focus]);
    format!("c:{}", digest(&[shape.to_string().as_bytes()]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_hide_ids_and_separate_every_shape() {
        let alice = Scope::new("alice@example.com", None, None).unwrap();
        let key = user_key("engram:", alice.user_id());
        assert!(key.starts_with("engram:u:{") && key.ends_with('}'), "{key}");
        assert!(!key.contains("alice"), "{key}");
        assert_ne!(key, user_key("engram:", "bob"));

        let none = MetadataFilter::default();
        let f = recall_field(&alice, "coffee", 10, &none);
        assert_eq!(f, recall_field(&alice, "coffee", 10, &none));
        assert_ne!(f, recall_field(&alice, "coffee", 5, &none));
        assert_ne!(f, recall_field(&alice, "tea", 10, &none));
        let agent = Scope::new("alice@example.com", Some("travel"), None).unwrap();
        assert_ne!(f, recall_field(&agent, "coffee", 10, &none));
        assert_ne!(
            context_field(&alice, 20, None),
            context_field(&alice, 20, Some("coffee"))
        );

        let source = |name: &str, variant: &str| VectorSource {
            embedder: EmbedderIdentity {
                name: name.into(),
                dims: 384,
            },
            variant: variant.into(),
        };
        let hash = source("hash-v1", "");
        let openai = source("openai:text-embedding-3-small", "http://a/v1\n");
        let prefixed = source("openai:text-embedding-3-small", "http://a/v1\nquery: ");
        let key = |s: &VectorSource| vector_key("engram:", s, "coffee");
        assert_ne!(key(&hash), key(&openai));
        assert_ne!(key(&openai), key(&prefixed));
    }
}
