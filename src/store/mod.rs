//! Durable memories, their history, and search. The seam is one trait per
//! concern ([`Writes`], [`Reads`], [`Search`], [`PendingQueue`], [`Keys`],
//! [`Reports`], [`Versions`], [`AuditLog`], [`TokenUsage`]) and [`Store`], which is all of them; `sqlite`
//! is the embedded default, `postgres` the shared production store.
//!
//! Invariants every implementation keeps:
//! * every read and write is bounded by a user id; there is no unscoped path;
//! * a memory and its history row commit together;
//! * [`Writes::insert`] deduplicates atomically: two concurrent inserts of
//!   near-identical text for one user leave one memory;
//! * the writes of one [`WriteBatch`] commit together or not at all, with
//!   the audit row that records them;
//! * the store remembers which embedder built its vectors and refuses another.
//!
//! Files: `traits` (the seam), `types` (what the traits take and give),
//! `deadline` (a bound on every call, for a database over the network),
//! `traced` (a span around every call, when traces are exported),
//! `report` (stats and export shapes), `vector_index` (SQLite's in-process
//! copy of a user's vectors, with `sketch` for its near-duplicate check and
//! `keyword_copy` for its keyword postings, and `scratch` for the buffers
//! their scans reuse), `shared` (what both backends
//! do alike, written once), and a folder per backend. This file: the error
//! and the prelude.

mod deadline;
mod postgres;
mod sqlite;
mod traced;
mod vector_index;

pub use deadline::Deadline;
pub use traced::Traced;
pub use vector_index::{DEDUP_MARGIN, SketchRecall, sketch_recall};

pub use postgres::{
    DEFAULT_ACQUIRE_TIMEOUT, DEFAULT_POOL_SIZE, DEFAULT_STATEMENT_TIMEOUT, IndexKind, PgOptions,
    PgStore, PlanSettings, Pooler, redact,
};
pub use sqlite::SqliteStore;

mod imported;
mod keyword_copy;
mod report;
mod scratch;
mod shared;
mod sketch;
mod traits;
mod types;

pub(crate) use shared::sha256_hex;

pub use imported::{ImportOutcome, ImportedMemory};

pub use report::{
    CategoryCount, ExportedMemory, ExportedPending, StoreTotals, UserExport, UserStats,
};
pub use shared::{AUDIT_GENESIS, audit_link};
pub use traits::{
    AuditLog, Keys, PendingQueue, Reads, Reports, Retention, SealReport, SealedColumn, SealedRow,
    SealedValues, Search, Store, TokenUsage, Versions, WriteBatch, Writes, candidates_in_steps,
};
pub use types::{
    AUDIT_MAX_IDS, Access, ApiKey, AuditQuery, AuditRecord, AuditRow, Candidates, HistoryEntry,
    Hit, InsertOutcome, KeyState, ListingKey, Nearest, NewMemory, NewPending, Pending, Pick,
    PurgeCounts, PurgePlan, PurgeReport, RoundPart, Scored, SearchScope, Selection,
    SupersedeOutcome,
};

/// What to do about a connection that failed for `source`, when engram
/// can say: a certificate refused (docs/managed-postgres.md, "TLS").
fn open_hint(source: &sqlx::Error) -> &'static str {
    // A certificate refused in the handshake comes as a TLS error, or after
    // it as an I/O error carrying rustls's.
    let refused = match source {
        sqlx::Error::Tls(_) => true,
        sqlx::Error::Io(e) => e
            .get_ref()
            .is_some_and(|inner| inner.downcast_ref::<rustls::Error>().is_some()),
        _ => false,
    };
    if refused {
        "; the server's certificate was not accepted: with sslmode=verify-full (or \
             verify-ca) set sslrootcert=PATH to the CA file that signed it (your provider's, \
             e.g. Supabase's prod-ca-2021.crt), and use the host name the certificate names; \
             sslmode=require encrypts without checking either"
    } else {
        ""
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open database {url}: {source}{}", open_hint(.source))]
    Open { url: String, source: sqlx::Error },

    #[error("cannot apply database migrations to {url}: {source}")]
    Migrate {
        url: String,
        source: sqlx::migrate::MigrateError,
    },

    #[error(
        "this database was built with embedder {stored}, but engram is configured with {configured}. \
         Configure the original embedder again (ENGRAM_EMBEDDER / ENGRAM_EMBEDDING_DIMS), or run \
         `engram reembed` to rebuild every vector with the configured one"
    )]
    EmbedderMismatch { stored: String, configured: String },

    #[error("database error while {context}: {source}")]
    Database {
        context: &'static str,
        source: sqlx::Error,
    },

    #[error(transparent)]
    Embed(#[from] crate::embed::EmbedError),

    #[error("stored data is corrupt ({0})")]
    Corrupt(String),

    /// The database cannot do what the configuration asks; the message says what to change.
    #[error("{0}")]
    Unsupported(String),

    /// Concurrent writes kept a write from completing; retrying is safe.
    #[error("{0}")]
    Conflict(String),

    /// The database did not answer a call within its bound ([`Deadline`]).
    #[error(
        "the database did not answer within {} ms (ENGRAM_DATABASE_TIMEOUT_MS + \
         ENGRAM_DATABASE_STATEMENT_TIMEOUT_MS)",
        limit.as_millis()
    )]
    TimedOut { limit: std::time::Duration },

    /// A write ended without telling how (the task writing it stopped):
    /// it may or may not be stored; a retry is deduplicated.
    #[error("a write ended unanswered ({0}); it may or may not be stored")]
    Unanswered(&'static str),
}

/// Wraps a database error with what the store was doing (`map_err(db("..."))`).
fn db(context: &'static str) -> impl Fn(sqlx::Error) -> StoreError {
    move |source| StoreError::Database { context, source }
}

/// The store's traits, to call a backend's methods: `use crate::store::prelude::*;`.
pub mod prelude {
    pub use super::{
        AuditLog, Keys, PendingQueue, Reads, Reports, Retention, SealedValues, Search, Store,
        TokenUsage, Versions, WriteBatch, Writes,
    };
}
