//! `store`: where memories are kept (`database_*`, `auto_migrate`, `index`,
//! `vector_cache_mb`), and how long a caller waits for it
//! (`database_timeout_ms`, `database_statement_timeout_ms`,
//! `database_ready_timeout_ms`).
//!
//! PostgreSQL's URLs and roles, one model (docs/managed-postgres.md):
//! `database_url` serves requests as the runtime role and may be a
//! transaction pooler; `database_direct_url` is a session as the same role,
//! for operator-wide work and, without an owner URL, setup; and
//! `database_owner_url` is a session as the schema's owner, for setup
//! (migrations, indexes, grants). Unset, the direct URL is `database_url`
//! and the owner URL is the direct URL. Invariant: a configuration whose
//! `database_url` is behind a transaction pooler has a direct URL.

use super::layers::{Choice, ConfigError, Layers, Range};
use crate::store::redact;

/// Where the store keeps it (the configuration reads it from there).
pub use crate::store::{DEFAULT_POOL_SIZE as DEFAULT_DATABASE_POOL_SIZE, IndexKind, Pooler};
/// Memory for all users' in-process copies: ten users of 1,000 memories at
/// 1536 dimensions with their floats (7.7 MB each), ~50 as codes alone, one
/// of ~150,000 memories at 384 dimensions on SQLite; the process stays near
/// 130 MiB with it full (`docs/benchmarks.md`, shape c).
pub const DEFAULT_VECTOR_CACHE_MB: usize = 96;
/// How long a request waits for a PostgreSQL connection ([`crate::store::DEFAULT_ACQUIRE_TIMEOUT`]).
pub const DEFAULT_DATABASE_TIMEOUT_MS: u64 =
    crate::store::DEFAULT_ACQUIRE_TIMEOUT.as_millis() as u64;
/// How long one PostgreSQL statement of a request may run
/// ([`crate::store::DEFAULT_STATEMENT_TIMEOUT`]).
pub const DEFAULT_DATABASE_STATEMENT_TIMEOUT_MS: u64 =
    crate::store::DEFAULT_STATEMENT_TIMEOUT.as_millis() as u64;
/// How long `/readyz` waits for the database before answering 503.
pub const DEFAULT_DATABASE_READY_TIMEOUT_MS: u64 = 1000;

pub(super) const DATABASE_POOL_SIZE: Range<u32> = Range::new(DEFAULT_DATABASE_POOL_SIZE, 1, 1000);
pub(super) const VECTOR_CACHE_MB: Range<usize> =
    Range::new(DEFAULT_VECTOR_CACHE_MB, 1, 1024 * 1024);
pub(super) const DATABASE_TIMEOUT_MS: Range<u64> =
    Range::new(DEFAULT_DATABASE_TIMEOUT_MS, 100, 600_000);
pub(super) const DATABASE_STATEMENT_TIMEOUT_MS: Range<u64> =
    Range::new(DEFAULT_DATABASE_STATEMENT_TIMEOUT_MS, 100, 3_600_000);
pub(super) const DATABASE_READY_TIMEOUT_MS: Range<u64> =
    Range::new(DEFAULT_DATABASE_READY_TIMEOUT_MS, 10, 60_000);

/// The file keys (and, upper-cased after `ENGRAM_`, the variables) read here.
pub(super) const KEYS: &[&str] = &[
    "database_url",
    "database_owner_url",
    "database_direct_url",
    "database_pooler",
    "database_pool_size",
    "database_timeout_ms",
    "database_statement_timeout_ms",
    "database_ready_timeout_ms",
    "auto_migrate",
    "index",
    "vector_cache_mb",
];

/// `database_pooler` as written: `auto` decides from the URLs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PoolerChoice {
    Auto,
    Is(Pooler),
}

impl Choice for PoolerChoice {
    const CHOICES: &'static [(&'static str, Self)] = &[
        ("auto", Self::Auto),
        ("none", Self::Is(Pooler::None)),
        ("transaction", Self::Is(Pooler::Transaction)),
    ];
}

impl Choice for IndexKind {
    const CHOICES: &'static [(&'static str, Self)] = &[
        ("auto", Self::Auto),
        ("hnsw", Self::Hnsw),
        ("diskann", Self::Diskann),
    ];
}

/// Where memories are kept. Invariant: `database_url` is `sqlite://PATH` or
/// `postgres(ql)://...`, and `index` is `Auto` for SQLite.
#[derive(Debug, Clone, PartialEq)]
pub struct StoreConfig {
    /// `sqlite://PATH` (default: `engram.db` under the XDG data dir) or `postgres://...`.
    pub database_url: String,
    /// PostgreSQL only: the URL of the role that owns the schema (the
    /// two-role setup). When set, engram migrates and builds indexes as it
    /// and serves requests as `database_url`'s role, which it grants what
    /// serving needs; row-level security then binds a role that can neither
    /// alter the schema nor lift the policies. A session connection (never
    /// a transaction pooler).
    pub owner_url: Option<String>,
    /// PostgreSQL only: a session connection (direct, or a session-mode
    /// pooler) as `database_url`'s role, for what a transaction pooler
    /// cannot carry: operator-wide work, and setup when `owner_url` is unset.
    pub direct_url: Option<String>,
    /// What is between engram and `database_url` (`database_pooler`,
    /// resolved: `auto` is `transaction` when a direct URL other than
    /// `database_url` is set, as Supabase documents the pair).
    pub pooler: Pooler,
    /// Connections the PostgreSQL store may hold open.
    pub pool_size: u32,
    /// How long a request waits for a PostgreSQL connection (a free one, or a
    /// new one connected) before failing 503 `unavailable`, in ms.
    pub timeout_ms: u64,
    /// How long one PostgreSQL statement of a request may run before the
    /// database cancels it, in ms. Every call to the store is bounded by
    /// `timeout_ms` + this, also when the database stops answering
    /// mid-statement; past it the request fails 503 `unavailable`.
    pub statement_timeout_ms: u64,
    /// How long `/readyz` waits for the database to answer before saying
    /// 503, in ms (both stores).
    pub ready_timeout_ms: u64,
    /// Apply pending migrations when `serve` starts (else `engram migrate` must).
    pub auto_migrate: bool,
    /// Vector index of a PostgreSQL store (SQLite scans in process: `auto` only).
    pub index: IndexKind,
    /// Memory for the in-process vector copies, all users together, in MiB.
    pub vector_cache_mb: usize,
}

impl StoreConfig {
    pub(super) fn load(src: &Layers<'_>) -> Result<Self, ConfigError> {
        let database_url = match src.string("database_url")? {
            Some(url) => database_url(src, url)?,
            None => default_database_url()?,
        };
        let index = src.choice("index", IndexKind::Auto)?;
        if index != IndexKind::Auto && database_url.starts_with("sqlite://") {
            return Err(src.invalid(
                "index",
                "hnsw and diskann are PostgreSQL indexes; the SQLite store searches in \
                 process, so leave index unset (auto) or use a postgres:// database_url",
            ));
        }
        let owner_url = match src.string("database_owner_url")? {
            Some(owner) if !is_postgres(&database_url) => {
                return Err(src.invalid(
                    "database_owner_url",
                    format!(
                        "'{}' is for a postgres:// database_url (the two-role setup); \
                         the SQLite store has no roles",
                        redact(owner.trim())
                    ),
                ));
            }
            Some(owner) if !is_postgres(owner.trim()) => {
                return Err(src.invalid(
                    "database_owner_url",
                    "use postgres://OWNER@HOST:PORT/DATABASE, the same database as database_url",
                ));
            }
            Some(owner) => Some(owner.trim().to_owned()),
            None => None,
        };
        let direct_url = match src.string("database_direct_url")? {
            Some(direct) if !is_postgres(&database_url) => {
                return Err(src.invalid(
                    "database_direct_url",
                    format!(
                        "'{}' is for a postgres:// database_url (one behind a pooler); \
                         the SQLite store has no pooler",
                        redact(direct.trim())
                    ),
                ));
            }
            Some(direct) if !is_postgres(direct.trim()) => {
                return Err(src.invalid(
                    "database_direct_url",
                    "use postgres://USER@HOST:PORT/DATABASE: the same database as \
                     database_url, reached without a transaction pooler",
                ));
            }
            Some(direct) => Some(direct.trim().to_owned()),
            None => None,
        };
        let pooler = match src.choice("database_pooler", PoolerChoice::Auto)? {
            PoolerChoice::Is(pooler) => pooler,
            PoolerChoice::Auto => match &direct_url {
                Some(direct) if *direct != database_url => Pooler::Transaction,
                _ => Pooler::None,
            },
        };
        if pooler == Pooler::Transaction && !is_postgres(&database_url) {
            return Err(src.invalid(
                "database_pooler",
                "transaction is for a postgres:// database_url behind a pooler",
            ));
        }
        if pooler == Pooler::Transaction && direct_url.is_none() {
            return Err(src.invalid(
                "database_pooler",
                "database_url goes through a transaction pooler, where no session outlasts \
                 a transaction, and migrations and operator-wide work need one: set \
                 ENGRAM_DATABASE_DIRECT_URL to a direct connection (on Supabase: the direct \
                 connection, or the session pooler on port 5432)",
            ));
        }
        Ok(Self {
            database_url,
            owner_url,
            direct_url,
            pooler,
            pool_size: src.number("database_pool_size", &DATABASE_POOL_SIZE)?,
            timeout_ms: src.number("database_timeout_ms", &DATABASE_TIMEOUT_MS)?,
            statement_timeout_ms: src.number(
                "database_statement_timeout_ms",
                &DATABASE_STATEMENT_TIMEOUT_MS,
            )?,
            ready_timeout_ms: src
                .number("database_ready_timeout_ms", &DATABASE_READY_TIMEOUT_MS)?,
            auto_migrate: src.boolean("auto_migrate", true)?,
            index,
            vector_cache_mb: src.number("vector_cache_mb", &VECTOR_CACHE_MB)?,
        })
    }
}

impl StoreConfig {
    /// Where setup (migrations, index builds, re-embedding) runs: the
    /// owner's URL, else the direct URL, else `database_url`.
    pub fn setup_url(&self) -> &str {
        self.owner_url
            .as_deref()
            .or(self.direct_url.as_deref())
            .unwrap_or(&self.database_url)
    }
}

fn database_url(src: &Layers<'_>, url: String) -> Result<String, ConfigError> {
    let url = url.trim().to_owned();
    if let Some(path) = url.strip_prefix("sqlite://") {
        if path.is_empty() {
            return Err(src.invalid(
                "database_url",
                "sqlite:// needs a file path, e.g. sqlite:///var/lib/engram/engram.db",
            ));
        }
        return Ok(url);
    }
    if is_postgres(&url) {
        return Ok(url);
    }
    Err(src.invalid(
        "database_url",
        format!(
            "'{url}' is not supported; use sqlite://PATH or postgres://USER@HOST:PORT/DATABASE"
        ),
    ))
}

fn is_postgres(url: &str) -> bool {
    url.starts_with("postgres://") || url.starts_with("postgresql://")
}

fn default_database_url() -> Result<String, ConfigError> {
    let dir = dirs::data_dir().ok_or(ConfigError::NoDataDir)?;
    Ok(format!(
        "sqlite://{}",
        dir.join("engram").join("engram.db").display()
    ))
}
