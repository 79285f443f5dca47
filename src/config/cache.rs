//! `cache`: the optional shared cache server (`cache_*`).

use super::layers::{ConfigError, Layers, Range};

pub const DEFAULT_CACHE_PREFIX: &str = "engram:";
pub const DEFAULT_CACHE_TTL_SECS: u64 = 300;
pub const DEFAULT_CACHE_EMBEDDING_TTL_SECS: u64 = 7 * 24 * 3600;
pub const DEFAULT_CACHE_TIMEOUT_MS: u64 = 100;
pub const DEFAULT_CACHE_POOL_SIZE: usize = 4;
pub const DEFAULT_CACHE_RETRY_MS: u64 = 1000;

pub(super) const TTL_SECS: Range<u64> = Range::new(DEFAULT_CACHE_TTL_SECS, 1, 86_400);
pub(super) const EMBEDDING_TTL_SECS: Range<u64> =
    Range::new(DEFAULT_CACHE_EMBEDDING_TTL_SECS, 1, 365 * 86_400);
pub(super) const TIMEOUT_MS: Range<u64> = Range::new(DEFAULT_CACHE_TIMEOUT_MS, 1, 60_000);
pub(super) const POOL_SIZE: Range<usize> = Range::new(DEFAULT_CACHE_POOL_SIZE, 1, 256);
pub(super) const RETRY_MS: Range<u64> = Range::new(DEFAULT_CACHE_RETRY_MS, 1, 600_000);

/// Longest accepted `cache_prefix`, in bytes.
const MAX_PREFIX_LEN: usize = 64;

/// The file keys (and, upper-cased after `ENGRAM_`, the variables) read here.
pub(super) const KEYS: &[&str] = &[
    "cache_url",
    "cache_prefix",
    "cache_ttl_secs",
    "cache_embedding_ttl_secs",
    "cache_timeout_ms",
    "cache_pool_size",
    "cache_retry_ms",
];

/// The cache. Invariant: `url`, when set, is a `redis://` or
/// `redis-cluster://` URL the cache client accepts; `prefix` has no spaces
/// or braces.
#[derive(Debug, Clone, PartialEq)]
pub struct CacheConfig {
    /// `redis://...` (Dragonfly, Redis, Valkey); `None` (unset or blank) runs
    /// without a cache.
    pub url: Option<String>,
    /// Prepended to every cache key, so several deployments can share one server.
    pub prefix: String,
    /// Lifetime of cached recall results and user contexts, in seconds.
    pub ttl_secs: u64,
    /// Lifetime of cached query embeddings, in seconds.
    pub embedding_ttl_secs: u64,
    /// How long one cache command may take before engram goes on without it.
    pub timeout_ms: u64,
    /// Connections to the cache server.
    pub pool_size: usize,
    /// After a cache failure, how long engram goes without it before trying again.
    pub retry_ms: u64,
}

impl CacheConfig {
    pub(super) fn load(src: &Layers<'_>) -> Result<Self, ConfigError> {
        let url = src.string("cache_url")?.filter(|s| !s.trim().is_empty());
        if let Some(url) = &url {
            check_url(src, url)?;
        }
        let prefix = src
            .string("cache_prefix")?
            .unwrap_or_else(|| DEFAULT_CACHE_PREFIX.to_owned());
        if prefix.len() > MAX_PREFIX_LEN
            || prefix
                .chars()
                .any(|c| c.is_whitespace() || c == '{' || c == '}')
        {
            return Err(src.invalid(
                "cache_prefix",
                format!(
                    "'{prefix}' is not accepted; use at most {MAX_PREFIX_LEN} characters \
                     without spaces or braces (default '{DEFAULT_CACHE_PREFIX}')"
                ),
            ));
        }
        Ok(Self {
            url,
            prefix,
            ttl_secs: src.number("cache_ttl_secs", &TTL_SECS)?,
            embedding_ttl_secs: src.number("cache_embedding_ttl_secs", &EMBEDDING_TTL_SECS)?,
            timeout_ms: src.number("cache_timeout_ms", &TIMEOUT_MS)?,
            pool_size: src.number("cache_pool_size", &POOL_SIZE)?,
            retry_ms: src.number("cache_retry_ms", &RETRY_MS)?,
        })
    }
}

/// `redis://` or `redis-cluster://`, parseable by the cache client. TLS
/// (`rediss://`) is refused by name: this build has no TLS for the cache.
/// Errors show the URL with its password redacted.
fn check_url(src: &Layers<'_>, url: &str) -> Result<(), ConfigError> {
    let shown = crate::store::redact(url);
    if url.starts_with("rediss://") || url.starts_with("redis-cluster+tls://") {
        return Err(src.invalid(
            "cache_url",
            format!(
                "'{shown}': TLS connections to the cache are not supported by this build; \
                 use redis:// on a private network (or a TLS-terminating proxy)"
            ),
        ));
    }
    if !(url.starts_with("redis://") || url.starts_with("redis-cluster://")) {
        return Err(src.invalid(
            "cache_url",
            format!("'{shown}' is not a redis:// (or redis-cluster://) URL"),
        ));
    }
    fred::types::config::Config::from_url(url)
        .map(|_| ())
        .map_err(|e| {
            src.invalid(
                "cache_url",
                format!("'{shown}' is not usable: {}", e.details()),
            )
        })
}
