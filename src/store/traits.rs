//! The seam: one trait per concern, and [`Store`], all of them.

use async_trait::async_trait;
use chrono::{DateTime, NaiveDate, Utc};

use super::{
    ApiKey, AuditQuery, AuditRecord, AuditRow, Candidates, HistoryEntry, Hit, ImportOutcome,
    ImportedMemory, InsertOutcome, ListingKey, Nearest, NewMemory, NewPending, Pending, Pick,
    PurgeCounts, PurgePlan, PurgeReport, RoundPart, Scored, SearchScope, Selection, StoreError,
    StoreTotals, SupersedeOutcome, UserExport, UserStats,
};
use crate::embed::EmbedderIdentity;
use crate::model::{Memory, MemoryId, Scope};

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
                .score(at.scope.user_id(), &partial, vector, query)
                .await?,
        );
    }
    Ok(candidates)
}

/// Everything a backend provides: one trait per concern, and the
/// embedder its vectors were built with. `Arc<dyn Store>` is how the
/// service holds a backend; `use crate::store::prelude::*` brings the
/// concerns' methods into scope.
pub trait Store:
    Writes
    + Reads
    + Search
    + PendingQueue
    + Keys
    + Reports
    + Versions
    + AuditLog
    + Retention
    + SealedValues
    + TokenUsage
{
    /// The embedder the stored vectors were built with.
    fn embedder(&self) -> &EmbedderIdentity;

    /// The request pool's connections (in use, idle, maximum), for a store
    /// that has one.
    fn pool_status(&self) -> Option<(u32, u32, u32)> {
        None
    }
}

/// Changes to a user's memories. Every write moves the user's version
/// ([`Versions`]) in its own transaction.
///
/// The changes a remember makes come in a [`WriteBatch`] ([`Writes::begin`]):
/// all of them commit or none do. The single-write methods are a batch of one.
#[async_trait]
pub trait Writes: Send + Sync {
    /// Starts a batch of writes to `user_id`'s memories that commit together
    /// ([`WriteBatch::commit`]) or, dropped uncommitted, not at all.
    ///
    /// Invariant: while a batch is open it holds the user's write lock, so
    /// no other write of theirs (on this store) runs until it ends; the
    /// holder must not wait for another write of the same user meanwhile.
    async fn begin<'a>(&'a self, user_id: &str) -> Result<Box<dyn WriteBatch + 'a>, StoreError>;

    /// Several users' new memories, and their audit records, in one
    /// transaction: a round of remembers that waited for the store (group
    /// commit across users). All or nothing: `Ok(Some(at))`, when every
    /// memory was added at `at`; `Ok(None)` when the store declined, writing
    /// nothing, because it writes users one at a time or because a memory
    /// was a duplicate (of a stored one or of another in the round): the
    /// caller then writes each user's part in a batch of its own, which
    /// judges duplicates as always.
    ///
    /// Each part names a different user. Invariant: the round holds every
    /// user's write lock until it ends, taken in one order (the users' ids
    /// by their bytes), so two rounds never wait on each other in a circle.
    async fn add_round(
        &self,
        parts: Vec<RoundPart>,
        dedup_threshold: f32,
    ) -> Result<Option<DateTime<Utc>>, StoreError> {
        let _ = (parts, dedup_threshold);
        Ok(None)
    }

    /// [`WriteBatch::insert`] in a batch of its own.
    async fn insert(
        &self,
        new: NewMemory,
        dedup_threshold: f32,
    ) -> Result<InsertOutcome, StoreError> {
        let user_id = new.scope.user_id().to_string();
        let mut batch = self.begin(&user_id).await?;
        let outcome = batch.insert(new, dedup_threshold).await?;
        batch.commit().await?;
        Ok(outcome)
    }

    /// [`WriteBatch::update`] in a batch of its own.
    async fn update(
        &self,
        user_id: &str,
        id: MemoryId,
        content: &str,
        embedding: &[f32],
        actor: &str,
    ) -> Result<Option<Memory>, StoreError> {
        let mut batch = self.begin(user_id).await?;
        let updated = batch.update(id, content, embedding, actor).await?;
        batch.commit().await?;
        Ok(updated)
    }

    /// [`WriteBatch::supersede`] in a batch of its own.
    async fn supersede(
        &self,
        old: MemoryId,
        new: NewMemory,
    ) -> Result<SupersedeOutcome, StoreError> {
        let user_id = new.scope.user_id().to_string();
        let mut batch = self.begin(&user_id).await?;
        let outcome = batch.supersede(old, new).await?;
        batch.commit().await?;
        Ok(outcome)
    }

    /// [`WriteBatch::close`] in a batch of its own.
    async fn close(&self, user_id: &str, id: MemoryId, actor: &str) -> Result<bool, StoreError> {
        let mut batch = self.begin(user_id).await?;
        let closed = batch.close(id, actor).await?;
        batch.commit().await?;
        Ok(closed)
    }

    /// Hard-deletes one memory of the user and its history, and any deferred
    /// remember that stored it, with `audit` appended in the same
    /// transaction. False if it was not theirs (nothing is written).
    async fn delete(
        &self,
        user_id: &str,
        id: MemoryId,
        audit: Option<&AuditRecord>,
    ) -> Result<bool, StoreError>;

    /// Hard-deletes the user's memories that `at` selects, current and
    /// superseded, with their history and every deferred remember that
    /// stored one of them, in one transaction bounded by `at.scope`'s user;
    /// `audit` (its memory ids and count set to what was deleted) is
    /// appended in it. Returns the deleted memories' ids; none deleted, the
    /// user's version stays as it was. The user's API keys, and memories
    /// `at` does not select, are untouched.
    async fn delete_matching(
        &self,
        at: Selection<'_>,
        audit: Option<&AuditRecord>,
    ) -> Result<Vec<MemoryId>, StoreError>;

    /// Hard-deletes every memory, history row, deferred remember and daily
    /// token total ([`TokenUsage`]) of the user, with `audit` (its `memory_count` set to how many) appended in
    /// the same transaction; returns how many memories.
    async fn delete_user(
        &self,
        user_id: &str,
        audit: Option<&AuditRecord>,
    ) -> Result<u64, StoreError>;
}

/// Writes to one user's memories that commit together or not at all
/// ([`Writes::begin`]). Each write sees the ones before it in the batch
/// (an insert is deduplicated against the batch's own memories too);
/// nothing is visible to other readers until [`WriteBatch::commit`].
/// Dropping a batch uncommitted undoes all of it.
///
/// A write's "no" (a duplicate, a memory gone meanwhile, a conflicting
/// text) changes nothing and leaves the batch usable; an `Err` of any other
/// kind leaves it to be dropped.
#[async_trait]
pub trait WriteBatch: Send {
    /// Stores `new` with an ADD history row, unless a current memory of the
    /// user has cosine similarity >= `dedup_threshold` with it and states
    /// the same details. Deduplication is atomic: two concurrent inserts of
    /// near-identical text leave one memory.
    async fn insert(
        &mut self,
        new: NewMemory,
        dedup_threshold: f32,
    ) -> Result<InsertOutcome, StoreError>;

    /// [`WriteBatch::insert`] of a memory that a search of the whole user
    /// at version `searched_at` ([`Search::nearest`]) found no memory
    /// at least `dedup_threshold` similar to, and that is not that close to
    /// any vector this batch wrote before it: a store that can tell the
    /// user is still at that version may skip its own search for
    /// near-duplicates (never its check for the same text). Provided as
    /// [`WriteBatch::insert`].
    async fn insert_searched(
        &mut self,
        new: NewMemory,
        dedup_threshold: f32,
        searched_at: u64,
    ) -> Result<InsertOutcome, StoreError> {
        let _ = searched_at;
        self.insert(new, dedup_threshold).await
    }

    /// Each of `news` as [`WriteBatch::insert_searched`] (with its version)
    /// or [`WriteBatch::insert`] (without) would store it, in order: what
    /// became of each, in order. A claim (the version) is made only for a
    /// memory not that close to any other of `news` either. A store may
    /// write them in fewer round trips; provided one by one.
    async fn insert_all(
        &mut self,
        news: Vec<(NewMemory, Option<u64>)>,
        dedup_threshold: f32,
    ) -> Result<Vec<InsertOutcome>, StoreError> {
        let mut outcomes = Vec::with_capacity(news.len());
        for (new, searched_at) in news {
            outcomes.push(match searched_at {
                Some(version) => self.insert_searched(new, dedup_threshold, version).await?,
                None => self.insert(new, dedup_threshold).await?,
            });
        }
        Ok(outcomes)
    }

    /// Replaces the text and vector of one current memory of the user, with an
    /// UPDATE history row (old and new text, `actor`). `None`: not a current
    /// memory of theirs, nothing changed. Another current memory with exactly
    /// the new text is [`StoreError::Conflict`] (nothing changed; the batch
    /// goes on).
    async fn update(
        &mut self,
        id: MemoryId,
        content: &str,
        embedding: &[f32],
        actor: &str,
    ) -> Result<Option<Memory>, StoreError>;

    /// Closes current memory `old` of the user (`valid_to` = now, a
    /// SUPERSEDE history row naming the new text) and stores `new` (an ADD
    /// row). Only an exact repeat of another current memory refuses `new`
    /// (and leaves `old` as it was): the caller has judged the near ones.
    async fn supersede(
        &mut self,
        old: MemoryId,
        new: NewMemory,
    ) -> Result<SupersedeOutcome, StoreError>;

    /// Closes current memory `id` of the user without a successor
    /// (`valid_to` = now, a SUPERSEDE history row with no new text, `actor`).
    /// False: not a current memory of theirs, nothing changed.
    async fn close(&mut self, id: MemoryId, actor: &str) -> Result<bool, StoreError>;

    /// Keeps a deferred remember of the user (see [`NewPending`]).
    async fn add_pending(&mut self, pending: NewPending) -> Result<(), StoreError>;

    /// Writes a memory brought in from elsewhere as its source kept it
    /// (id, times, current or closed, history), unless the user already
    /// has its id or, for a current one, its exact text; near-duplicates
    /// are not judged. See [`ImportedMemory`] and `store::imported` for
    /// the invariants.
    async fn import(&mut self, imported: ImportedMemory) -> Result<ImportOutcome, StoreError>;

    /// Appends the audit row recording the batch: it commits with the
    /// writes it describes, or not at all.
    async fn audit(&mut self, record: &AuditRecord) -> Result<(), StoreError>;

    /// Makes every write of the batch durable and visible, at once.
    async fn commit(self: Box<Self>) -> Result<(), StoreError>;
}

/// A user's memories by id, by recency, page by page, and their history.
#[async_trait]
pub trait Reads: Send + Sync {
    /// The user's memories with these ids, in no particular order; ids that are
    /// unknown or belong to another user are skipped.
    async fn get_many(&self, user_id: &str, ids: &[MemoryId]) -> Result<Vec<Memory>, StoreError>;

    /// The most recently updated current memories in scope, and how many there are.
    async fn recent(&self, scope: &Scope, limit: usize) -> Result<(Vec<Memory>, u64), StoreError>;

    /// The history of one of the user's memories, oldest first.
    async fn history(&self, user_id: &str, id: MemoryId) -> Result<Vec<HistoryEntry>, StoreError>;

    /// Up to `limit` of the user's current, unexpired memories, oldest first
    /// by ([`ListingKey`]) `created_at` then `id`, starting right after
    /// `after` (from the first when `None`). Each page is one range scan of
    /// an index on (user, created_at, id), however deep it starts. Pages
    /// are keyed, not counted: a memory written between two pages sorts by
    /// its own (later) `created_at`, one deleted or superseded between them
    /// is simply not there, and no other memory repeats or goes missing.
    async fn list(
        &self,
        user_id: &str,
        after: Option<ListingKey>,
        limit: usize,
    ) -> Result<Vec<Memory>, StoreError>;
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

    /// [`Search::vector_search`] and, when the store can tell, the user's
    /// version it read at ([`Nearest`]). Provided with no version.
    async fn nearest(
        &self,
        at: SearchScope<'_>,
        query: &[f32],
        limit: usize,
    ) -> Result<Nearest, StoreError> {
        Ok(Nearest {
            hits: self.vector_search(at, query, limit).await?,
            ..Nearest::default()
        })
    }

    /// The reconciler's search: [`Search::nearest`], except that the store
    /// may answer through its vector index where it keeps the user's rows in
    /// one, as its duplicate check does past its exact-scan limit (a fact's
    /// candidates need not be exact; recall's hits are), and that with
    /// `load_from` it may also read the memories of the hits scoring at
    /// least that ([`Nearest::memories`]). Provided: [`Search::nearest`].
    async fn similar(
        &self,
        at: SearchScope<'_>,
        query: &[f32],
        limit: usize,
        _load_from: Option<f32>,
    ) -> Result<Nearest, StoreError> {
        self.nearest(at, query, limit).await
    }

    /// [`Search::similar`] for each of `queries` (a remember's facts), in
    /// their order. Provided: each search on its own, all at once; a store
    /// may answer them together (PostgreSQL, from a user's copy: one read
    /// for all of them, or none when `seen`, the user's version as
    /// [`Search::version_now`] read it after the remember began, is the
    /// copy's).
    async fn similar_all(
        &self,
        at: SearchScope<'_>,
        queries: &[Vec<f32>],
        limit: usize,
        load_from: Option<f32>,
        _seen: Option<u64>,
    ) -> Result<Vec<Nearest>, StoreError> {
        let each = queries
            .iter()
            .map(|query| self.similar(at, query, limit, load_from));
        futures::future::try_join_all(each).await
    }

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

    /// The version of `at`'s user, read now, when this store could answer
    /// [`Search::candidates`] in `at` at that version without reading
    /// anything more (PostgreSQL: from the user's in-process copy, when it
    /// holds their memories); `None`, and nothing read, otherwise. Recall
    /// reads it while its query is embedded and hands it to `candidates`;
    /// remember, while the model extracts, and hands it to `similar_all`.
    async fn version_now(&self, _at: SearchScope<'_>) -> Result<Option<u64>, StoreError> {
        Ok(None)
    }

    /// A recall's candidates: the `depth` current memories in scope most
    /// similar to `vector` and the `depth` best by keywords for `query`, each
    /// with both relevances, in no particular order; and, where the store
    /// reads them in the same transaction, the memories of those `pick`
    /// chooses ([`Candidates::memories`]). `seen` is the user's version as
    /// [`Search::version_now`] read it after the recall began, if it did: a
    /// store that holds the user as of that version may answer from what it
    /// holds. Provided by [`candidates_in_steps`], without memories; a store
    /// may answer in fewer round trips, and the conformance suite checks it
    /// gives the same.
    async fn candidates(
        &self,
        at: SearchScope<'_>,
        vector: &[f32],
        query: &str,
        depth: usize,
        _pick: Pick<'_>,
        _seen: Option<u64>,
    ) -> Result<Candidates, StoreError> {
        Ok(Candidates {
            scored: candidates_in_steps(self, at, vector, query, depth).await?,
            memories: None,
        })
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
    /// Stores a new API key (every field as given).
    async fn add_key(&self, key: &ApiKey) -> Result<(), StoreError>;

    /// Every API key, revoked and expired ones included, oldest first (the
    /// operator's `engram keys list`; not bounded by a user).
    async fn keys(&self) -> Result<Vec<ApiKey>, StoreError>;

    /// The key whose hash this is, unless revoked or expired (`expires_at`
    /// at or before this process's clock).
    async fn active_key(&self, hash: &str) -> Result<Option<ApiKey>, StoreError>;

    /// Revokes the key with this id. False: unknown or already revoked.
    async fn revoke_key(&self, id: uuid::Uuid) -> Result<bool, StoreError>;

    /// Rotation, in one transaction: when key `old` is active (not revoked,
    /// not expired), stores `successor` and moves `old`'s expiry to
    /// `old_expires_at` (or keeps it, when it is sooner). False: `old` is
    /// unknown or not active, and nothing changed.
    async fn rotate_key(
        &self,
        old: uuid::Uuid,
        successor: &ApiKey,
        old_expires_at: DateTime<Utc>,
    ) -> Result<bool, StoreError>;

    /// Deletes every key bound to the user (revoked and expired ones too;
    /// admin keys are bound to no user and stay); how many went.
    async fn delete_user_keys(&self, user_id: &str) -> Result<u64, StoreError>;
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

    /// Every user's current memories and deferred remembers, for gauges
    /// read in the background (not per request: it may cost a scan).
    async fn totals(&self) -> Result<StoreTotals, StoreError>;

    /// Every user with memories (current or closed) or deferred remembers,
    /// in byte order. Not bounded by a user: it serves the operator's
    /// `engram export --all`, never a request.
    async fn users(&self) -> Result<Vec<String>, StoreError>;
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

/// Each user's model tokens per UTC day, which the token budget
/// (`ENGRAM_TOKEN_BUDGET_DAILY`) is checked against. Kept in the store so
/// that every engram process on it counts against one total.
#[async_trait]
pub trait TokenUsage: Send + Sync {
    /// The tokens `user_id` spent on `day`; 0 when none were counted.
    async fn tokens_used(&self, user_id: &str, day: NaiveDate) -> Result<u64, StoreError>;

    /// Adds `tokens` to `user_id`'s total for `day` and returns the new
    /// total. Atomic: concurrent additions, from any process, all count.
    async fn add_tokens(
        &self,
        user_id: &str,
        day: NaiveDate,
        tokens: u64,
    ) -> Result<u64, StoreError>;

    /// Drops every user's totals of days before `before`; how many went.
    /// Not bounded by a user: it serves the operator's purge.
    async fn prune_token_usage(&self, before: NaiveDate) -> Result<u64, StoreError>;
}

/// What one sealing round did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SealReport {
    /// Rows chained this round.
    pub sealed: u64,
    /// The chain's length after it.
    pub chain_length: i64,
    /// False when another sealer held the lock (nothing was done).
    pub ran: bool,
}

/// The audit trail ([`crate::audit`]): rows appended with each operation,
/// sealed afterwards into a hash chain.
///
/// Invariant: engram never changes a row once written but to seal it
/// (`chain_pos` and `hash`, once), and never deletes one. Sealing takes rows
/// whose transaction has ended, in `seq` order, one sealer at a time; a row
/// whose transaction was still open joins a later round, so chain order is
/// `seq` order within each round.
#[async_trait]
pub trait AuditLog: Send + Sync {
    /// Appends `records` in one transaction of their own (reads' records,
    /// and failed operations', written after the answer).
    async fn append_audit(&self, records: &[AuditRecord]) -> Result<(), StoreError>;

    /// Rows matching `query`, newest first (the operator's `engram audit`
    /// and the admin's `GET /api/v1/audit`).
    async fn audit_rows(&self, query: &AuditQuery) -> Result<Vec<AuditRow>, StoreError>;

    /// Chains up to `limit` unsealed rows onto the sealed ones
    /// ([`crate::store::audit_link`]); does nothing when another sealer
    /// holds the lock.
    async fn seal_audit(&self, limit: usize) -> Result<SealReport, StoreError>;

    /// Sealed rows with `chain_pos` > `after`, in chain order, up to `limit`.
    async fn sealed_audit(&self, after: i64, limit: usize) -> Result<Vec<AuditRow>, StoreError>;
}

/// Retention: removing memories that expired, and closed memories past the
/// history retention ([`PurgePlan`]). The one write not bounded by a user:
/// it serves the operator's purge (`engram purge`, and `serve`'s loop).
#[async_trait]
pub trait Retention: Send + Sync {
    /// How many memories a purge by `plan` would remove now; changes nothing.
    async fn purgeable(&self, plan: &PurgePlan) -> Result<PurgeCounts, StoreError>;

    /// One round of the purge, in one transaction: removes up to
    /// `plan.batch` memories due (each with its vector, keyword postings,
    /// history, and any deferred remember that stored it), moving each
    /// affected user's version, and appends `audit` (its `memory_count` and
    /// `memory_ids` set to what went) in the same transaction when anything
    /// went.
    ///
    /// Invariant: one purge round at a time per database. PostgreSQL: a
    /// round that finds another holding the purge lock does nothing
    /// (`ran: false`); SQLite: rounds queue on the file's write lock. A
    /// round takes each affected user's write lock (in user order) before
    /// touching their rows, as every write does.
    async fn purge(
        &self,
        plan: &PurgePlan,
        audit: Option<&AuditRecord>,
    ) -> Result<PurgeReport, StoreError>;
}

/// The columns that may hold sealed values ([`crate::crypto`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SealedColumn {
    /// `memories.metadata`: sealed values inside the object.
    MemoryMetadata,
    /// `pending_extractions.metadata`: likewise.
    PendingMetadata,
    /// `pending_extractions.input`: the whole value is one envelope.
    PendingInput,
}

/// One row whose column holds a sealed value, as read.
#[derive(Debug, Clone)]
pub struct SealedRow {
    pub id: uuid::Uuid,
    pub user_id: String,
    pub value: serde_json::Value,
}

/// Sealed values, for `engram rotate-key`: found in key order and written
/// back one row at a time, each only if unchanged since it was read, so a
/// serving process may keep writing meanwhile.
#[async_trait]
pub trait SealedValues: Send + Sync {
    /// Up to `limit` rows after `after` (in id order; `Uuid::nil()` first)
    /// whose `column` may hold an envelope (a superset: the caller checks).
    async fn sealed_rows(
        &self,
        column: SealedColumn,
        after: uuid::Uuid,
        limit: usize,
    ) -> Result<Vec<SealedRow>, StoreError>;

    /// Writes `new` into `row`'s column if it still holds `row.value`;
    /// false when the row changed or went meanwhile. The plaintext is the
    /// same, so whether the user's version moves is the backend's choice.
    async fn reseal(
        &self,
        column: SealedColumn,
        row: &SealedRow,
        new: &serde_json::Value,
    ) -> Result<bool, StoreError>;
}
