//! Durable memories, their history, and search. The [`Store`] trait is the
//! seam; `sqlite` is the embedded default, `postgres` the shared production store.
//!
//! Invariants every implementation keeps:
//! * every read and write is bounded by a user id; there is no unscoped path;
//! * a memory and its history row commit together;
//! * [`Store::insert`] deduplicates atomically: two concurrent inserts of
//!   near-identical text for one user leave one memory;
//! * the store remembers which embedder built its vectors and refuses another.

mod postgres;
mod sqlite;
mod vector_index;

pub use postgres::{PgOptions, PgStore, PlanSettings, redact};
pub use sqlite::SqliteStore;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::Serialize;

use crate::embed::EmbedderIdentity;
use crate::model::{Event, Memory, MemoryId, Metadata, MetadataFilter, Scope};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open database {url}: {source}")]
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
}

/// A history row's event as stored (`ADD`, `UPDATE`, `SUPERSEDE`, `DELETE`).
fn parse_event(raw: &str) -> Result<Event, StoreError> {
    Ok(match raw {
        "ADD" => Event::Add,
        "UPDATE" => Event::Update,
        "SUPERSEDE" => Event::Supersede,
        "DELETE" => Event::Delete,
        other => return Err(StoreError::Corrupt(format!("history event '{other}'"))),
    })
}

/// A memory to be written, already embedded.
#[derive(Debug, Clone)]
pub struct NewMemory {
    pub id: MemoryId,
    pub scope: Scope,
    pub content: String,
    pub embedding: Vec<f32>,
    pub metadata: Metadata,
    pub categories: Vec<String>,
    /// Who caused the write, for history (`user`, `assistant`, `operator`...).
    pub actor: String,
}

impl NewMemory {
    /// The memory as stored by a write committed at `at`.
    fn stored_at(self, at: DateTime<Utc>) -> Memory {
        Memory {
            id: self.id,
            memory: self.content,
            scope: self.scope,
            metadata: self.metadata,
            categories: self.categories,
            created_at: at,
            updated_at: at,
        }
    }
}

/// What [`Store::insert`] did.
#[derive(Debug, Clone)]
pub enum InsertOutcome {
    Added(Memory),
    /// A current memory of the user was at least as similar as the threshold.
    Duplicate {
        existing: Memory,
        similarity: f32,
    },
}

/// What [`Store::supersede`] did.
#[derive(Debug, Clone, PartialEq)]
pub enum SupersedeOutcome {
    /// The old memory was closed (`valid_to` set, kept in history) and the
    /// new one stored, in one transaction.
    Superseded(Memory),
    /// The old memory is not a current memory of the user: nothing changed.
    NotFound,
    /// Another current memory of the user already holds the new text exactly:
    /// nothing changed.
    Duplicate(Memory),
}

/// A remember whose model work could not be done when it came in (the LLM or
/// the embedder failed and `on_llm_error = "verbatim"`), kept so `engram
/// reextract` can finish it. Its `memory_ids` are the verbatim memories
/// stored meanwhile (none if even the embedder failed); re-extraction
/// replaces them. Forgetting any of them, or the user, drops the entry: a
/// forgotten text is never brought back.
#[derive(Debug, Clone, PartialEq)]
pub struct NewPending {
    pub id: uuid::Uuid,
    pub scope: Scope,
    /// The request's input as JSON (`{"text": ...}` or `{"messages": [...]}`).
    pub input: serde_json::Value,
    pub metadata: Metadata,
    /// False: the caller asked for the text as given (`infer: false`); only
    /// embedding is left to do.
    pub infer: bool,
    pub memory_ids: Vec<MemoryId>,
    /// Why it was deferred, as the caller would read it.
    pub error: String,
}

/// A stored [`NewPending`], with its attempts so far.
#[derive(Debug, Clone, PartialEq)]
pub struct Pending {
    pub entry: NewPending,
    /// Re-extraction attempts that failed (0 when none was made).
    pub attempts: u32,
    pub created_at: DateTime<Utc>,
}

/// An API key as stored: never the key itself, only its hash.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiKey {
    pub id: uuid::Uuid,
    /// The key's first characters, to tell keys apart in listings.
    pub prefix: String,
    /// SHA-256 of the whole key, hex.
    pub hash: String,
    /// The one user the key acts for; `None`: an admin key (any user).
    pub user_id: Option<String>,
    pub label: String,
    pub created_at: DateTime<Utc>,
    pub revoked_at: Option<DateTime<Utc>>,
}

/// The `SELECT` every store reads [`ApiKey`]s with (same columns on both).
const KEY_SELECT: &str =
    "SELECT id, prefix, hash, user_id, label, created_at, revoked_at FROM api_keys";

/// Where to search: the scope (user, optionally agent and run) and metadata filters.
#[derive(Debug, Clone, Copy)]
pub struct SearchScope<'a> {
    pub scope: &'a Scope,
    pub filter: &'a MetadataFilter,
}

/// One candidate from a search, best first.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Hit {
    pub id: MemoryId,
    /// Cosine similarity for vector hits; BM25 relevance (higher is better) for keyword hits.
    pub score: f32,
}

/// One row of a memory's history.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
pub struct HistoryEntry {
    /// The memory this change happened to.
    pub memory_id: MemoryId,
    /// What happened: ADD, UPDATE, SUPERSEDE (closed, by a newer memory or
    /// without one) or DELETE.
    pub event: Event,
    /// The text before the change (none for ADD).
    pub old_memory: Option<String>,
    /// The text after the change: the memory's for ADD and UPDATE, the
    /// newer memory's for SUPERSEDE (none when closed without one).
    pub new_memory: Option<String>,
    /// Who caused it (`user`, `assistant`, `reextract`...).
    pub actor: String,
    /// When it happened.
    pub created_at: DateTime<Utc>,
}

#[async_trait]
pub trait Store: Send + Sync {
    /// The embedder the stored vectors were built with.
    fn embedder(&self) -> &EmbedderIdentity;

    /// Stores `new` with an ADD history row, unless a current memory of the same
    /// user has cosine similarity >= `dedup_threshold` with it.
    async fn insert(
        &self,
        new: NewMemory,
        dedup_threshold: f32,
    ) -> Result<InsertOutcome, StoreError>;

    /// The user's memories with these ids, in no particular order; ids that are
    /// unknown or belong to another user are skipped.
    async fn get_many(&self, user_id: &str, ids: &[MemoryId]) -> Result<Vec<Memory>, StoreError>;

    /// Up to `limit` current memories in scope, most similar to `query` first.
    async fn vector_search(
        &self,
        at: SearchScope<'_>,
        query: &[f32],
        limit: usize,
    ) -> Result<Vec<Hit>, StoreError>;

    /// Up to `limit` current memories in scope matching words of `query`, by BM25.
    async fn keyword_search(
        &self,
        at: SearchScope<'_>,
        query: &str,
        limit: usize,
    ) -> Result<Vec<Hit>, StoreError>;

    /// The most recently updated current memories in scope, and how many there are.
    async fn recent(&self, scope: &Scope, limit: usize) -> Result<(Vec<Memory>, u64), StoreError>;

    /// The history of one of the user's memories, oldest first.
    async fn history(&self, user_id: &str, id: MemoryId) -> Result<Vec<HistoryEntry>, StoreError>;

    /// Hard-deletes one memory of the user and its history, and any deferred
    /// remember that stored it. False if it was not theirs.
    async fn delete(&self, user_id: &str, id: MemoryId) -> Result<bool, StoreError>;

    /// Hard-deletes every memory, history row and deferred remember of the
    /// user; returns how many memories.
    async fn delete_user(&self, user_id: &str) -> Result<u64, StoreError>;

    /// Replaces the text and vector of one current memory of the user, with an
    /// UPDATE history row (old and new text, `actor`). `None`: not a current
    /// memory of theirs, nothing changed. Another current memory with exactly
    /// the new text is [`StoreError::Conflict`].
    async fn update(
        &self,
        user_id: &str,
        id: MemoryId,
        content: &str,
        embedding: &[f32],
        actor: &str,
    ) -> Result<Option<Memory>, StoreError>;

    /// Closes current memory `old` of `new`'s user (`valid_to` = now, a
    /// SUPERSEDE history row naming the new text) and stores `new` (an ADD
    /// row), atomically. Only an exact repeat of another current memory
    /// refuses `new`: the caller has judged the near ones.
    async fn supersede(
        &self,
        old: MemoryId,
        new: NewMemory,
    ) -> Result<SupersedeOutcome, StoreError>;

    /// Closes current memory `id` of the user without a successor
    /// (`valid_to` = now, a SUPERSEDE history row with no new text, `actor`).
    /// False: not a current memory of theirs, nothing changed.
    async fn close(&self, user_id: &str, id: MemoryId, actor: &str) -> Result<bool, StoreError>;

    /// Keeps a deferred remember (see [`NewPending`]).
    async fn add_pending(&self, pending: NewPending) -> Result<(), StoreError>;

    /// Up to `limit` deferred remembers of every user, oldest first, and how
    /// many there are in all. The one read not bounded by a user: it serves
    /// the operator's `engram reextract`, never a request.
    async fn pending(&self, limit: usize) -> Result<(Vec<Pending>, u64), StoreError>;

    /// Drops a deferred remember of the user once it is done. False if unknown.
    async fn finish_pending(&self, user_id: &str, id: uuid::Uuid) -> Result<bool, StoreError>;

    /// Records a failed attempt (attempts + 1, `error` replaces the reason).
    async fn retry_pending(
        &self,
        user_id: &str,
        id: uuid::Uuid,
        error: &str,
    ) -> Result<(), StoreError>;

    /// Stores a new API key (`created_at` and `revoked_at` as given).
    async fn add_key(&self, key: &ApiKey) -> Result<(), StoreError>;

    /// Every API key, revoked ones included, oldest first (the operator's
    /// `engram keys list`; not bounded by a user).
    async fn keys(&self) -> Result<Vec<ApiKey>, StoreError>;

    /// The key whose hash this is, unless revoked.
    async fn active_key(&self, hash: &str) -> Result<Option<ApiKey>, StoreError>;

    /// Revokes the key with this id. False: unknown or already revoked.
    async fn revoke_key(&self, id: uuid::Uuid) -> Result<bool, StoreError>;

    /// The user's write version, which caches key their entries by. Invariant:
    /// every write to the user's memories moves it, in the write's own
    /// transaction, to a value no user has had before. `None` when the user
    /// has no version (nothing stored yet, or everything forgotten).
    async fn version(&self, user_id: &str) -> Result<Option<u64>, StoreError>;
}
