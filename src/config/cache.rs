//! `cache`: the optional shared cache server (`cache_*`), over TCP
//! (`redis://`) or TLS (`rediss://`, trusting `cache_ca_file` or the
//! system's roots).

use std::path::PathBuf;

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
    "cache_ca_file",
];

/// The cache. Invariants: `url`, when set, is a `redis://`, `rediss://`,
/// `redis-cluster://` or `rediss-cluster://` URL the cache client accepts;
/// `prefix` has no spaces or braces; `ca_file`, when set, goes with a TLS
/// URL and holds at least one PEM certificate.
#[derive(Debug, Clone, PartialEq)]
pub struct CacheConfig {
    /// `redis://...` or, over TLS, `rediss://...` (Dragonfly, Redis,
    /// Valkey); `None` (unset or blank) runs without a cache.
    pub url: Option<String>,
    /// For a `rediss://` URL: the CA certificates (PEM) the server's
    /// certificate must chain to; unset, the system's roots.
    pub ca_file: Option<PathBuf>,
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
        let ca_file = match src
            .string("cache_ca_file")?
            .filter(|s| !s.trim().is_empty())
        {
            None => None,
            Some(path) => Some(ca_file(src, url.as_deref(), PathBuf::from(path.trim()))?),
        };
        Ok(Self {
            url,
            ca_file,
            prefix,
            ttl_secs: src.number("cache_ttl_secs", &TTL_SECS)?,
            embedding_ttl_secs: src.number("cache_embedding_ttl_secs", &EMBEDDING_TTL_SECS)?,
            timeout_ms: src.number("cache_timeout_ms", &TIMEOUT_MS)?,
            pool_size: src.number("cache_pool_size", &POOL_SIZE)?,
            retry_ms: src.number("cache_retry_ms", &RETRY_MS)?,
        })
    }
}

/// The URL schemes the cache accepts: plain, then over TLS.
const SCHEMES: [&str; 4] = [
    "redis://",
    "redis-cluster://",
    "rediss://",
    "rediss-cluster://",
];

fn is_tls(url: &str) -> bool {
    url.starts_with("rediss://") || url.starts_with("rediss-cluster://")
}

/// `path` as `cache_ca_file`: only beside a TLS `url`, and a readable PEM
/// file with at least one certificate.
fn ca_file(src: &Layers<'_>, url: Option<&str>, path: PathBuf) -> Result<PathBuf, ConfigError> {
    if !url.is_some_and(is_tls) {
        return Err(src.invalid(
            "cache_ca_file",
            "is for a TLS cache: set cache_url to rediss://HOST:PORT (or leave this unset)",
        ));
    }
    crate::cache::ca_certificates(&path)
        .map_err(|message| src.invalid("cache_ca_file", message))?;
    Ok(path)
}

/// `redis://`, `rediss://` or their `-cluster` forms, parseable by the
/// cache client. Errors show the URL with its password redacted.
fn check_url(src: &Layers<'_>, url: &str) -> Result<(), ConfigError> {
    let shown = crate::store::redact(url);
    if url.starts_with("redis-cluster+tls://") {
        return Err(src.invalid(
            "cache_url",
            format!("'{shown}': for TLS to a cluster write rediss-cluster://"),
        ));
    }
    if !SCHEMES.iter().any(|scheme| url.starts_with(scheme)) {
        return Err(src.invalid(
            "cache_url",
            format!(
                "'{shown}' is not a redis:// URL (or rediss:// for TLS, or \
                 redis-cluster:// / rediss-cluster://)"
            ),
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
