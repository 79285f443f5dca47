//! The values the store's traits take and give: new memories and what
//! became of them, search scopes and hits, history rows, deferred remembers,
//! API keys.

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::Serialize;

use crate::model::{Event, Memory, MemoryId, Metadata, MetadataFilter, Scope};

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
    /// When it expires (see [`Memory::expires_at`]); none: kept until forgotten.
    pub expires_at: Option<DateTime<Utc>>,
}

/// One user's part of a round ([`crate::store::Writes::add_round`]): their
/// new memories, each with the version at which a search of the whole user
/// found nothing near it (if one did), and the audit records that name them.
#[derive(Debug, Clone)]
pub struct RoundPart {
    pub user_id: String,
    pub memories: Vec<(NewMemory, Option<u64>)>,
    pub audits: Vec<AuditRecord>,
}

impl NewMemory {
    /// The memory as stored by a write committed at `at`.
    pub(super) fn stored_at(self, at: DateTime<Utc>) -> Memory {
        Memory {
            id: self.id,
            memory: self.content,
            scope: self.scope,
            metadata: self.metadata,
            categories: self.categories,
            created_at: at,
            updated_at: at,
            expires_at: self.expires_at,
        }
    }
}

/// What [`Writes::insert`](super::Writes::insert) did.
#[derive(Debug, Clone)]
pub enum InsertOutcome {
    Added(Memory),
    /// A current memory of the user was at least as similar as the threshold.
    Duplicate {
        existing: Memory,
        similarity: f32,
    },
}

/// What [`Writes::supersede`](super::Writes::supersede) did.
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
    /// From this instant on the key is refused, as if revoked; `None`: never.
    pub expires_at: Option<DateTime<Utc>>,
    /// What the key may do.
    pub access: Access,
}

/// What an API key may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Access {
    /// Read and write: remember and forget as well as every read.
    #[default]
    ReadWrite,
    /// Reads only (recall, context, stats, export, history); every write is
    /// refused.
    ReadOnly,
}

/// Where a key stands at an instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyState {
    Active,
    /// Past its `expires_at` (and not revoked).
    Expired,
    Revoked,
}

impl ApiKey {
    /// The key's state at `now`: revoked wins over expired.
    pub fn state(&self, now: DateTime<Utc>) -> KeyState {
        if self.revoked_at.is_some() {
            KeyState::Revoked
        } else if self.expires_at.is_some_and(|at| at <= now) {
            KeyState::Expired
        } else {
            KeyState::Active
        }
    }
}

/// Where to search: the scope (user, optionally agent and run) and metadata filters.
#[derive(Debug, Clone, Copy)]
pub struct SearchScope<'a> {
    pub scope: &'a Scope,
    pub filter: &'a MetadataFilter,
}

/// The filter that keeps everything.
static NO_FILTER: MetadataFilter = MetadataFilter::none();

impl<'a> SearchScope<'a> {
    /// All of `scope`, without metadata filters.
    pub fn unfiltered(scope: &'a Scope) -> Self {
        Self {
            scope,
            filter: &NO_FILTER,
        }
    }
}

/// Which of one user's memories a bulk forget deletes
/// ([`Writes::delete_matching`](super::Writes::delete_matching)): those in
/// `scope` (the user, and its agent and run when set), whose metadata holds
/// every pair of `filter` (as a recall filters), created before `before`
/// when set. Current and superseded memories alike: a forget by selection
/// leaves no copy of a matching text in history.
#[derive(Debug, Clone, Copy)]
pub struct Selection<'a> {
    pub scope: &'a Scope,
    pub filter: &'a MetadataFilter,
    pub before: Option<DateTime<Utc>>,
}

/// A place in a user's listing ([`Reads::list`](super::Reads::list)):
/// memories come in (`created_at`, `id`) order, and a page starts right
/// after the memory with this key. Two memories never share one (ids are
/// unique), so a page boundary neither repeats nor skips a memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListingKey {
    pub created_at: DateTime<Utc>,
    pub id: MemoryId,
}

impl ListingKey {
    /// The key of `memory`: where the page after it starts.
    pub fn of(memory: &Memory) -> Self {
        Self {
            created_at: memory.created_at,
            id: memory.id,
        }
    }
}

/// One candidate from a search, best first.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Hit {
    pub id: MemoryId,
    /// Cosine similarity for vector hits; keyword relevance in 0..=1 for keyword hits.
    pub score: f32,
}

/// [`crate::store::Search::nearest`]'s answer: the hits, best first, and
/// the user's version the search read at, when the store can tell
/// ([`crate::store::Versions`]).
///
/// Invariant: the hits are what [`crate::store::Search::vector_search`]
/// would have answered with the user at `version`: while they still are,
/// the same search finds the same memories.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Nearest {
    pub hits: Vec<Hit>,
    pub version: Option<u64>,
    /// The memories of the hits scoring at least the `load_from` asked for,
    /// read in the search's statement, in no particular order; `None` when
    /// none was asked for or the store does not read them there (the
    /// caller reads them itself, [`crate::store::Reads::get_many`]). A hit
    /// gone before they were read is left out.
    pub memories: Option<Vec<Memory>>,
}

/// Both relevances of one memory to one query, for fusion (`crate::rank`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Scored {
    pub id: MemoryId,
    /// Cosine similarity of the memory's vector and the query's.
    pub similarity: f32,
    /// Keyword relevance in 0..=1 ([`crate::keywords`]); 0 when no query term is in it.
    pub keyword: f32,
}

/// Chooses, among a recall's candidates, those whose memories the caller
/// wants (recall: the winners of fusion), for
/// [`crate::store::Search::candidates`] to read with them.
pub type Pick<'a> = &'a (dyn Fn(&[Scored]) -> Vec<MemoryId> + Send + Sync);

/// [`crate::store::Search::candidates`]'s answer: a recall's candidates,
/// and the memories of those the pick chose where the store read them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Candidates {
    /// Each candidate with both relevances, in no particular order.
    pub scored: Vec<Scored>,
    /// The memories of the candidates the pick chose, read in the
    /// candidates' own transaction, in no particular order; `None` when the
    /// store does not read them there (the caller reads them itself,
    /// [`crate::store::Reads::get_many`]). Expired memories, and ones gone
    /// since the search, are left out, as `get_many` leaves them out.
    pub memories: Option<Vec<Memory>>,
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

/// One audited operation, as the audit trail keeps it ([`crate::audit`]).
/// It holds no memory text, and a query only where the operator asked.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
pub struct AuditRecord {
    pub at: DateTime<Utc>,
    /// `operator` (stdio, or HTTP without keys), `admin` or `user`.
    pub principal: String,
    /// The API key behind the call, if any.
    pub key_id: Option<uuid::Uuid>,
    /// The acting user's pseudonym (a keyed hash of the id), if any.
    pub user_ref: Option<String>,
    /// `stdio`, `mcp`, `sse`, `rest`, `cli`, or `serve` (what a server
    /// does on its own, such as the retention purge).
    pub transport: String,
    /// The client's address, when the transport knows it.
    pub client_addr: Option<String>,
    /// What was done: `remember`, `recall`, `user_context`, `forget`, ...
    pub operation: String,
    /// The memories touched, up to [`AUDIT_MAX_IDS`]; `memory_count` is all of them.
    pub memory_ids: Vec<MemoryId>,
    pub memory_count: u64,
    /// `ok`, or the error's code (`invalid_input`, `forbidden`, `not_found`, ...);
    /// `token_budget` for a remember kept as given because the user's
    /// daily token budget was spent.
    pub outcome: String,
    /// The query text, only with `ENGRAM_AUDIT_QUERIES=true`.
    pub query: Option<String>,
}

/// The most memory ids one audit row lists; a larger set is counted only.
pub const AUDIT_MAX_IDS: usize = 100;

/// An audit row as stored: the record, its place in the append order
/// (`seq`) and, once sealed, in the hash chain.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
pub struct AuditRow {
    pub seq: i64,
    #[serde(flatten)]
    pub record: AuditRecord,
    /// Position in the hash chain; `None` until sealed.
    pub chain_pos: Option<i64>,
    /// SHA-256 (hex) over the previous row's hash and this row; `None` until sealed.
    pub hash: Option<String>,
}

/// Which audit rows to read, newest first.
#[derive(Debug, Clone, Default)]
pub struct AuditQuery {
    pub user_ref: Option<String>,
    pub since: Option<DateTime<Utc>>,
    pub operation: Option<String>,
    /// Rows with `seq` below this (the next page of a listing).
    pub before_seq: Option<i64>,
    pub limit: usize,
}

/// What a retention purge removes ([`Retention`](super::Retention)).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PurgePlan {
    /// Memories whose `expires_at` is at or before this go, current or closed.
    pub now: DateTime<Utc>,
    /// Closed (superseded) memories whose `valid_to` is before this go,
    /// with their history; `None`: history is kept.
    pub closed_before: Option<DateTime<Utc>>,
    /// The most memories one transaction removes.
    pub batch: usize,
}

/// How many memories a purge removes (or would): expired ones, and closed
/// ones past the history retention (that had not expired).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct PurgeCounts {
    pub expired: u64,
    pub history: u64,
}

impl PurgeCounts {
    pub fn total(&self) -> u64 {
        self.expired + self.history
    }
}

/// What one purge round ([`Retention::purge`](super::Retention::purge)) did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PurgeReport {
    pub removed: PurgeCounts,
    /// False when another purge held the lock (nothing was done).
    pub ran: bool,
}
