//! Durable memories, their history, and search. The seam is one trait per
//! concern ([`Writes`], [`Reads`], [`Search`], [`PendingQueue`], [`Keys`],
//! [`Reports`], [`Versions`]) and [`Store`], which is all of them; `sqlite`
//! is the embedded default, `postgres` the shared production store.
//!
//! Invariants every implementation keeps:
//! * every read and write is bounded by a user id; there is no unscoped path;
//! * a memory and its history row commit together;
//! * [`Writes::insert`] deduplicates atomically: two concurrent inserts of
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

/// Wraps a database error with what the store was doing (`map_err(db("..."))`).
fn db(context: &'static str) -> impl Fn(sqlx::Error) -> StoreError {
    move |source| StoreError::Database { context, source }
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

/// What [`Writes::insert`] did.
#[derive(Debug, Clone)]
pub enum InsertOutcome {
    Added(Memory),
    /// A current memory of the user was at least as similar as the threshold.
    Duplicate {
        existing: Memory,
        similarity: f32,
    },
}

/// What [`Writes::supersede`] did.
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

/// The `SELECT` every store reads [`HistoryEntry`] rows with (same columns on both).
const HISTORY_SELECT: &str = "SELECT memory_id, event, old_content, new_content, actor, \
                              created_at FROM memory_history";

/// The `SELECT` every store reads [`Pending`] rows with (same columns on both).
const PENDING_SELECT: &str = "SELECT id, user_id, agent_id, run_id, input, metadata, infer, \
                              memory_ids, error, attempts, created_at FROM pending_extractions";

/// The `SELECT` every store reads [`ApiKey`]s with (same columns on both).
const KEY_SELECT: &str =
    "SELECT id, prefix, hash, user_id, label, created_at, revoked_at FROM api_keys";

/// Where to search: the scope (user, optionally agent and run) and metadata filters.
#[derive(Debug, Clone, Copy)]
pub struct SearchScope<'a> {
    pub scope: &'a Scope,
    pub filter: &'a MetadataFilter,
}

impl SearchScope<'_> {
    /// The metadata filter as the JSON object both stores match against
    /// (`None` without one): PostgreSQL with `@>` (scalar values compare
    /// equal), SQLite key by key (`metadata_matches!`).
    fn filter_object(&self) -> Option<serde_json::Value> {
        if self.filter.is_empty() {
            return None;
        }
        Some(serde_json::Value::Object(
            self.filter.pairs().iter().cloned().collect(),
        ))
    }
}

/// One candidate from a search, best first.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Hit {
    pub id: MemoryId,
    /// Cosine similarity for vector hits; keyword relevance in 0..=1 for keyword hits.
    pub score: f32,
}

/// Both relevances of one memory to one query, for fusion ([`crate::rank`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Scored {
    pub id: MemoryId,
    /// Cosine similarity of the memory's vector and the query's.
    pub similarity: f32,
    /// Keyword relevance in 0..=1 ([`crate::keywords`]); 0 when no query term is in it.
    pub keyword: f32,
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

/// What one user has stored, counted by the store (the answer of `GET /stats/{user}`).
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
pub struct UserStats {
    /// The user these numbers describe.
    pub user_id: String,
    /// Current memories: neither superseded nor closed.
    #[schemars(schema_with = "crate::model::count_schema")]
    pub memories: u64,
    /// Memories closed by a newer one (or retired without one), kept for history.
    #[schemars(schema_with = "crate::model::count_schema")]
    pub superseded: u64,
    /// History rows (adds, updates, supersedes) of all the user's memories.
    #[schemars(schema_with = "crate::model::count_schema")]
    pub history_events: u64,
    /// Deferred remembers waiting for `engram reextract` (the model failed when they came in).
    #[schemars(schema_with = "crate::model::count_schema")]
    pub pending: u64,
    /// Current memories per category, most first, then by name (byte order).
    pub categories: Vec<CategoryCount>,
    /// When the oldest current memory was created; null without current memories.
    pub oldest: Option<DateTime<Utc>>,
    /// When the newest current memory was created; null without current memories.
    pub newest: Option<DateTime<Utc>>,
    /// Approximate bytes of the user's stored data: the text, metadata JSON
    /// and vector (4 bytes per dimension) of every memory, current or
    /// superseded, plus the texts kept in history.
    #[schemars(schema_with = "crate::model::count_schema")]
    pub storage_bytes: u64,
}

/// How many current memories carry one category.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
pub struct CategoryCount {
    /// The category, as the extractor assigned it.
    pub category: String,
    /// Current memories in it.
    #[schemars(schema_with = "crate::model::count_schema")]
    pub memories: u64,
}

/// Everything stored for one user, read in one snapshot (the answer of `GET /export/{user}`).
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
pub struct UserExport {
    /// The user whose data this is.
    pub user_id: String,
    /// When the export was read.
    pub exported_at: DateTime<Utc>,
    /// Every memory, current and superseded, oldest first.
    pub memories: Vec<ExportedMemory>,
    /// Remembers whose model work failed, waiting for `engram reextract`:
    /// the user's own words, kept until then. Oldest first.
    pub pending: Vec<ExportedPending>,
}

/// One memory in an export, with its whole history.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
pub struct ExportedMemory {
    #[serde(flatten)]
    pub memory: Memory,
    /// When it stopped being current (superseded or closed); null while it is current.
    pub valid_to: Option<DateTime<Utc>>,
    /// Every change to it, oldest first.
    pub history: Vec<HistoryEntry>,
}

/// A deferred remember in an export.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
pub struct ExportedPending {
    /// The deferred remember's id.
    pub id: uuid::Uuid,
    /// The request as it came in: `{"text": ...}` or `{"messages": [...]}`.
    pub input: serde_json::Value,
    /// The metadata the request carried.
    pub metadata: Metadata,
    /// When it was deferred.
    pub created_at: DateTime<Utc>,
    /// Re-extraction attempts that failed so far.
    #[schemars(schema_with = "crate::model::count_schema")]
    pub attempts: u32,
    /// Why it was deferred (or why the last attempt failed).
    pub error: String,
}

impl From<Pending> for ExportedPending {
    fn from(p: Pending) -> Self {
        Self {
            id: p.entry.id,
            input: p.entry.input,
            metadata: p.entry.metadata,
            created_at: p.created_at,
            attempts: p.attempts,
            error: p.entry.error,
        }
    }
}

/// A user's numbers as a store's aggregate query counts them; [`Self::finish`]
/// turns them into [`UserStats`] the same way for every store.
struct StatsCounts {
    memories: i64,
    superseded: i64,
    history_events: i64,
    pending: i64,
    oldest: Option<DateTime<Utc>>,
    newest: Option<DateTime<Utc>>,
    /// Bytes of every memory's text and metadata JSON, and of history texts.
    text_bytes: i64,
    /// Current memories per category, in any order.
    categories: Vec<(String, i64)>,
}

impl StatsCounts {
    /// The stats, with vectors of `dims` dimensions counted in.
    fn finish(self, user_id: &str, dims: usize) -> UserStats {
        let count = |n: i64| u64::try_from(n).unwrap_or(0);
        let rows = count(self.memories) + count(self.superseded);
        let vector_bytes = rows.saturating_mul(dims as u64 * 4);
        let mut categories: Vec<CategoryCount> = self
            .categories
            .into_iter()
            .map(|(category, n)| CategoryCount {
                category,
                memories: count(n),
            })
            .collect();
        categories.sort_by(|a, b| {
            b.memories
                .cmp(&a.memories)
                .then_with(|| a.category.cmp(&b.category))
        });
        UserStats {
            user_id: user_id.to_owned(),
            memories: count(self.memories),
            superseded: count(self.superseded),
            history_events: count(self.history_events),
            pending: count(self.pending),
            categories,
            oldest: self.oldest,
            newest: self.newest,
            storage_bytes: count(self.text_bytes).saturating_add(vector_bytes),
        }
    }
}

/// An export from what a store read in one snapshot: the user's memories
/// (oldest first, each with its `valid_to`), their history rows (oldest
/// first) and deferred remembers. History rows go to their memory; a row
/// whose memory was not read has nowhere to go and is left out.
fn assemble_export(
    user_id: &str,
    memories: Vec<(Memory, Option<DateTime<Utc>>)>,
    history: Vec<HistoryEntry>,
    pending: Vec<Pending>,
) -> UserExport {
    let mut by_memory: std::collections::HashMap<MemoryId, Vec<HistoryEntry>> =
        std::collections::HashMap::new();
    for entry in history {
        by_memory.entry(entry.memory_id).or_default().push(entry);
    }
    UserExport {
        user_id: user_id.to_owned(),
        exported_at: Utc::now(),
        memories: memories
            .into_iter()
            .map(|(memory, valid_to)| ExportedMemory {
                history: by_memory.remove(&memory.id).unwrap_or_default(),
                memory,
                valid_to,
            })
            .collect(),
        pending: pending.into_iter().map(ExportedPending::from).collect(),
    }
}

/// [`Search::candidates`] in three steps: both searches at once, then
/// [`Search::score`] for the relevance a candidate's own search did not give.
/// A candidate forgotten meanwhile is left out.
pub async fn candidates_in_steps<S: Search + ?Sized>(
    store: &S,
    at: SearchScope<'_>,
    vector: &[f32],
    query: &str,
    depth: usize,
) -> Result<Vec<Scored>, StoreError> {
    let (by_vector, by_keyword) = tokio::try_join!(
        store.vector_search(at, vector, depth),
        store.keyword_search(at, query, depth),
    )?;
    let mut both: std::collections::HashMap<MemoryId, (Option<f32>, Option<f32>)> =
        std::collections::HashMap::new();
    for hit in by_vector {
        both.entry(hit.id).or_default().0 = Some(hit.score);
    }
    for hit in by_keyword {
        both.entry(hit.id).or_default().1 = Some(hit.score);
    }
    let partial: Vec<MemoryId> = both
        .iter()
        .filter(|(_, (v, k))| v.is_none() || k.is_none())
        .map(|(id, _)| *id)
        .collect();
    let mut candidates: Vec<Scored> = both
        .into_iter()
        .filter_map(|(id, scores)| match scores {
            (Some(similarity), Some(keyword)) => Some(Scored {
                id,
                similarity,
                keyword,
            }),
            _ => None,
        })
        .collect();
    if !partial.is_empty() {
        candidates.extend(
            store
                .score(&at.scope.user_id, &partial, vector, query)
                .await?,
        );
    }
    Ok(candidates)
}

/// Everything a backend provides: one trait per concern, and the
/// embedder its vectors were built with. `Arc<dyn Store>` is how the
/// service holds a backend; `use crate::store::prelude::*` brings the
/// concerns' methods into scope.
pub trait Store: Writes + Reads + Search + PendingQueue + Keys + Reports + Versions {
    /// The embedder the stored vectors were built with.
    fn embedder(&self) -> &EmbedderIdentity;
}

/// The store's traits, to call a backend's methods: `use crate::store::prelude::*;`.
pub mod prelude {
    pub use super::{Keys, PendingQueue, Reads, Reports, Search, Store, Versions, Writes};
}

/// Changes to a user's memories. Every write moves the user's version
/// ([`Versions`]) in its own transaction.
#[async_trait]
pub trait Writes: Send + Sync {
    /// Stores `new` with an ADD history row, unless a current memory of the same
    /// user has cosine similarity >= `dedup_threshold` with it.
    async fn insert(
        &self,
        new: NewMemory,
        dedup_threshold: f32,
    ) -> Result<InsertOutcome, StoreError>;

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

    /// Hard-deletes one memory of the user and its history, and any deferred
    /// remember that stored it. False if it was not theirs.
    async fn delete(&self, user_id: &str, id: MemoryId) -> Result<bool, StoreError>;

    /// Hard-deletes every memory, history row and deferred remember of the
    /// user; returns how many memories.
    async fn delete_user(&self, user_id: &str) -> Result<u64, StoreError>;
}

/// A user's memories by id, by recency, and their history.
#[async_trait]
pub trait Reads: Send + Sync {
    /// The user's memories with these ids, in no particular order; ids that are
    /// unknown or belong to another user are skipped.
    async fn get_many(&self, user_id: &str, ids: &[MemoryId]) -> Result<Vec<Memory>, StoreError>;

    /// The most recently updated current memories in scope, and how many there are.
    async fn recent(&self, scope: &Scope, limit: usize) -> Result<(Vec<Memory>, u64), StoreError>;

    /// The history of one of the user's memories, oldest first.
    async fn history(&self, user_id: &str, id: MemoryId) -> Result<Vec<HistoryEntry>, StoreError>;
}

/// Finding a user's memories for a query: by vector, by keywords, and both
/// relevances of each candidate.
#[async_trait]
pub trait Search: Send + Sync {
    /// Up to `limit` current memories in scope, most similar to `query` first.
    async fn vector_search(
        &self,
        at: SearchScope<'_>,
        query: &[f32],
        limit: usize,
    ) -> Result<Vec<Hit>, StoreError>;

    /// Up to `limit` current memories in scope holding terms of `query`, best
    /// first, scored by [`crate::keywords`]: BM25 over the user's current
    /// memories, on a 0..1 scale. Equal scores come in id order.
    async fn keyword_search(
        &self,
        at: SearchScope<'_>,
        query: &str,
        limit: usize,
    ) -> Result<Vec<Hit>, StoreError>;

    /// Both relevances ([`Scored`]) of these memories of the user to a query
    /// given as its vector and its text, in no particular order; ids that are
    /// not current memories of the user are skipped. Keyword relevance is
    /// exactly what [`Search::keyword_search`] would give the memory.
    async fn score(
        &self,
        user_id: &str,
        ids: &[MemoryId],
        vector: &[f32],
        query: &str,
    ) -> Result<Vec<Scored>, StoreError>;

    /// A recall's candidates: the `depth` current memories in scope most
    /// similar to `vector` and the `depth` best by keywords for `query`, each
    /// with both relevances, in no particular order. Provided by
    /// [`candidates_in_steps`]; a store may answer in fewer round trips, and
    /// the conformance suite checks it gives the same.
    async fn candidates(
        &self,
        at: SearchScope<'_>,
        vector: &[f32],
        query: &str,
        depth: usize,
    ) -> Result<Vec<Scored>, StoreError> {
        candidates_in_steps(self, at, vector, query, depth).await
    }
}

/// Remembers whose model step failed, kept for `engram reextract`.
#[async_trait]
pub trait PendingQueue: Send + Sync {
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
}

/// API keys, stored hashed.
#[async_trait]
pub trait Keys: Send + Sync {
    /// Stores a new API key (`created_at` and `revoked_at` as given).
    async fn add_key(&self, key: &ApiKey) -> Result<(), StoreError>;

    /// Every API key, revoked ones included, oldest first (the operator's
    /// `engram keys list`; not bounded by a user).
    async fn keys(&self) -> Result<Vec<ApiKey>, StoreError>;

    /// The key whose hash this is, unless revoked.
    async fn active_key(&self, hash: &str) -> Result<Option<ApiKey>, StoreError>;

    /// Revokes the key with this id. False: unknown or already revoked.
    async fn revoke_key(&self, id: uuid::Uuid) -> Result<bool, StoreError>;
}

/// What a user has stored, summed up or in full.
#[async_trait]
pub trait Reports: Send + Sync {
    /// What the user has stored: counts, categories, dates and size, by
    /// aggregate queries in one snapshot. An unknown user has all zeros.
    async fn stats(&self, user_id: &str) -> Result<UserStats, StoreError>;

    /// Everything stored for the user (memories current and superseded, each
    /// with its history, and deferred remembers), read in one snapshot so a
    /// concurrent write never shows history without its memory. An unknown
    /// user has an empty export.
    async fn export(&self, user_id: &str) -> Result<UserExport, StoreError>;
}

/// Per-user write versions, which caches key their entries by.
#[async_trait]
pub trait Versions: Send + Sync {
    /// The user's write version, which caches key their entries by. Invariant:
    /// every write to the user's memories moves it, in the write's own
    /// transaction, to a value no user has had before. `None` when the user
    /// has no version (nothing stored yet, or everything forgotten).
    async fn version(&self, user_id: &str) -> Result<Option<u64>, StoreError>;
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    /// The properties of the object schema `name` in `schema` (the root when
    /// it is the root's title, else from `$defs`).
    fn properties<'a>(schema: &'a Value, name: &str) -> &'a serde_json::Map<String, Value> {
        let object = if schema["title"] == name {
            schema
        } else {
            &schema["$defs"][name]
        };
        object["properties"]
            .as_object()
            .unwrap_or_else(|| panic!("no properties for {name} in {schema:#}"))
    }

    fn undocumented(props: &serde_json::Map<String, Value>) -> Vec<&str> {
        props
            .iter()
            .filter(|(_, p)| p["description"].as_str().is_none_or(str::is_empty))
            .map(|(k, _)| k.as_str())
            .collect()
    }

    /// The schemas the REST API documents: every field described, and an
    /// exported memory flat (the memory's own fields beside valid_to and history).
    #[test]
    fn stats_and_export_schemas_describe_every_field() {
        let stats = serde_json::to_value(schemars::schema_for!(UserStats)).unwrap();
        for name in ["UserStats", "CategoryCount"] {
            assert_eq!(undocumented(properties(&stats, name)), [""; 0], "{name}");
        }
        let export = serde_json::to_value(schemars::schema_for!(UserExport)).unwrap();
        for name in ["UserExport", "ExportedPending", "HistoryEntry"] {
            assert_eq!(undocumented(properties(&export, name)), [""; 0], "{name}");
        }
        let memory = properties(&export, "ExportedMemory");
        for field in [
            "id",
            "memory",
            "user_id",
            "agent_id",
            "created_at",
            "valid_to",
        ] {
            assert!(memory.contains_key(field), "{field} in {memory:#?}");
        }
        assert!(memory["valid_to"]["description"].is_string());
        assert!(memory["history"]["description"].is_string());
        assert!(!memory.contains_key("memories"), "{memory:#?}");
        assert_eq!(
            properties(&stats, "UserStats")["memories"]["type"],
            json!("integer")
        );
    }

    fn history(id: MemoryId, event: Event, at: i64) -> HistoryEntry {
        HistoryEntry {
            memory_id: id,
            event,
            old_memory: None,
            new_memory: Some("x".into()),
            actor: "user".into(),
            created_at: DateTime::from_timestamp(at, 0).unwrap_or_default(),
        }
    }

    fn memory(id: MemoryId) -> Memory {
        Memory {
            id,
            memory: "x".into(),
            scope: crate::model::Scope::user("alice"),
            metadata: Metadata::new(),
            categories: vec![],
            created_at: DateTime::UNIX_EPOCH,
            updated_at: DateTime::UNIX_EPOCH,
        }
    }

    #[test]
    fn an_export_puts_each_history_row_with_its_memory_in_order() {
        let (a, b, orphan) = (MemoryId::new(), MemoryId::new(), MemoryId::new());
        let closed = DateTime::from_timestamp(5, 0);
        let export = assemble_export(
            "alice",
            vec![(memory(a), closed), (memory(b), None)],
            vec![
                history(a, Event::Add, 1),
                history(b, Event::Add, 2),
                history(orphan, Event::Add, 3),
                history(a, Event::Supersede, 5),
            ],
            vec![],
        );
        assert_eq!(export.user_id, "alice");
        let got: Vec<(MemoryId, Option<DateTime<Utc>>, Vec<Event>)> = export
            .memories
            .iter()
            .map(|m| {
                let events = m.history.iter().map(|h| h.event).collect();
                (m.memory.id, m.valid_to, events)
            })
            .collect();
        assert_eq!(
            got,
            [
                (a, closed, vec![Event::Add, Event::Supersede]),
                (b, None, vec![Event::Add]),
            ]
        );
    }

    #[test]
    fn stats_order_categories_and_count_vectors() {
        let counts = StatsCounts {
            memories: 2,
            superseded: 1,
            history_events: 4,
            pending: 0,
            oldest: None,
            newest: None,
            text_bytes: 100,
            categories: vec![
                ("work".into(), 1),
                ("food".into(), 2),
                ("Career".into(), 1),
                ("habits".into(), 1),
            ],
        };
        let stats = counts.finish("alice", 8);
        let order: Vec<(&str, u64)> = stats
            .categories
            .iter()
            .map(|c| (c.category.as_str(), c.memories))
            .collect();
        assert_eq!(
            order,
            [("food", 2), ("Career", 1), ("habits", 1), ("work", 1)]
        );
        assert_eq!(stats.storage_bytes, 100 + 3 * 8 * 4);
        assert_eq!(
            (stats.memories, stats.superseded, stats.history_events),
            (2, 1, 4)
        );
    }
}
