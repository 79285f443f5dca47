//! Changes to a user's memories ([`Writes`], [`WriteBatch`]). Deduplication
//! is the database's trigger; every transaction takes the user's write lock
//! first.

use std::collections::HashMap;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use pgvector::Vector;
use sqlx::PgConnection;
use sqlx::postgres::PgDatabaseError;
use uuid::Uuid;

use super::audit::{INSERT as AUDIT_INSERT, bind_record, insert_audit};
use super::keyword_copy::{Added, claim_text, locked_text};
use super::keyword_index::{index_terms, keyword_length, posting_columns};
use super::queue::insert_pending;
use super::read::memories_by_id;
use super::rows::{now_micros, uuid_array_literal};
use super::{PgStore, db};
use crate::keywords;
use crate::model::{Memory, MemoryId, details_differ};
use crate::store::shared::{MEMORY_COLUMNS, content_hash, for_user, memory_from_row, same_user};
use crate::store::{
    AuditRecord, ImportOutcome, ImportedMemory, InsertOutcome, NewMemory, NewPending, RoundPart,
    Selection, StoreError, SupersedeOutcome, WriteBatch, Writes,
};

/// The SQLSTATE `engram_refuse_duplicate` raises, with the candidates as JSON detail.
pub(super) const DUPLICATE_SQLSTATE: &str = "EG001";

/// How often one insert may meet near-duplicates it has not judged yet
/// before giving up. A round may report `FIRST_DEDUP_ROUND << round`
/// candidates (engram.dedup_k; the trigger caps it at 4096), so twelve rounds
/// cover ~16k close memories that differ in a detail, or concurrent writers.
pub(super) const MAX_DEDUP_ROUNDS: u32 = 12;

pub(super) const FIRST_DEDUP_ROUND: u32 = 8;

/// What the deduplication trigger (`engram_refuse_duplicate`) reads for the
/// inserts that follow, as `engram.dedup_*` settings.
#[derive(Debug, Clone, Copy)]
pub(super) struct Dedup<'a> {
    /// Similarity from which a memory is a near-duplicate; above 1, only a
    /// memory with the same text is one.
    pub(super) threshold: f32,
    /// Near-duplicates already judged to be other memories.
    pub(super) allowed: &'a [Uuid],
    /// How many near-duplicates one refusal names at most.
    pub(super) k: u32,
    /// Rows, each with the user's version at which a search of the whole
    /// user found nothing near it ([`WriteBatch::insert_searched`]).
    pub(super) searched: &'a [(Uuid, u64)],
}

impl Dedup<'static> {
    /// Only a memory with the same text is a duplicate.
    pub(super) fn exact_text(k: u32) -> Self {
        Dedup {
            threshold: 2.0,
            allowed: &[],
            k,
            searched: &[],
        }
    }
}

/// A near-duplicate the trigger named.
#[derive(Debug, serde::Deserialize)]
pub(super) struct Near {
    pub(super) id: Uuid,
    similarity: f32,
}

impl PgStore {
    /// Inserts `news`, in order, with their keyword postings and ADD
    /// history rows inside `tx`, in one statement: the deduplication
    /// trigger runs for each row with whatever `tx` has set, and sees the
    /// rows the statement inserted before it. Any refusal fails the whole
    /// statement.
    pub(super) async fn insert_in(
        tx: &mut sqlx::PgConnection,
        news: &[&NewMemory],
        now: DateTime<Utc>,
    ) -> Result<(), sqlx::Error> {
        // The statement is `engram_insert_memories` (migration
        // 20280201000001), which a round calls too.
        let rows = Rows::of(news);
        let query = sqlx::query(
            "SELECT engram_insert_memories($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, \
             $12, $13, $14, $15, $16)",
        );
        rows.bind_to(query, now).execute(&mut *tx).await.map(|_| ())
    }
}

/// The columns of [`PgStore::insert_in`]'s rows, one array each; the
/// postings flattened, each naming its row by position (from 1).
#[derive(Default)]
pub(super) struct Rows<'a> {
    users: Vec<&'a str>,
    ids: Vec<Uuid>,
    agents: Vec<Option<&'a str>>,
    runs: Vec<Option<&'a str>>,
    contents: Vec<&'a str>,
    hashes: Vec<Vec<u8>>,
    vectors: Vec<Vector>,
    metadata: Vec<serde_json::Value>,
    categories: Vec<serde_json::Value>,
    lengths: Vec<i32>,
    expiries: Vec<Option<DateTime<Utc>>>,
    actors: Vec<&'a str>,
    posting_rows: Vec<i64>,
    posting_terms: Vec<String>,
    posting_counts: Vec<i32>,
}

/// A query of this module's, its arguments bound one by one.
pub(super) type PgQuery<'q> = sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>;

impl<'a> Rows<'a> {
    pub(super) fn of(news: &[&'a NewMemory]) -> Self {
        let mut rows = Rows::default();
        for (n, new) in (1..).zip(news) {
            let terms = keywords::document_terms(&new.content);
            let (words, counts) = posting_columns(&terms);
            rows.users.push(new.scope.user_id().as_str());
            rows.ids.push(new.id.0);
            rows.agents.push(new.scope.agent_id());
            rows.runs.push(new.scope.run_id());
            rows.contents.push(&new.content);
            rows.hashes.push(content_hash(&new.content).to_vec());
            rows.vectors.push(Vector::from(new.embedding.clone()));
            rows.metadata
                .push(serde_json::Value::Object(new.metadata.clone()));
            rows.categories.push(serde_json::json!(new.categories));
            rows.lengths.push(keyword_length(&terms));
            rows.expiries.push(new.expires_at);
            rows.actors.push(&new.actor);
            rows.posting_rows
                .extend(std::iter::repeat_n(n, words.len()));
            rows.posting_terms
                .extend(words.into_iter().map(str::to_owned));
            rows.posting_counts.extend(counts);
        }
        rows
    }

    /// Binds `engram_insert_memories`' sixteen arguments, in its order
    /// (`now` is the thirteenth), as the next ones of `query`.
    pub(super) fn bind_to<'q>(&'q self, query: PgQuery<'q>, now: DateTime<Utc>) -> PgQuery<'q> {
        query
            .bind(&self.users)
            .bind(&self.ids)
            .bind(&self.agents)
            .bind(&self.runs)
            .bind(&self.contents)
            .bind(&self.hashes)
            .bind(&self.vectors)
            .bind(&self.metadata)
            .bind(&self.categories)
            .bind(&self.lengths)
            .bind(&self.expiries)
            .bind(&self.actors)
            .bind(now)
            .bind(&self.posting_rows)
            .bind(&self.posting_terms)
            .bind(&self.posting_counts)
    }
}

#[async_trait]
impl Writes for PgStore {
    async fn begin<'a>(&'a self, user_id: &str) -> Result<Box<dyn WriteBatch + 'a>, StoreError> {
        Ok(Box::new(PgBatch {
            store: self,
            user_id: user_id.to_owned(),
            tx: None,
            locked: false,
            copy_write: None,
            audits: Vec::new(),
        }))
    }

    async fn add_round(
        &self,
        parts: Vec<RoundPart>,
        dedup_threshold: f32,
    ) -> Result<Option<DateTime<Utc>>, StoreError> {
        self.write_round(parts, dedup_threshold).await
    }

    async fn delete(
        &self,
        user_id: &str,
        id: MemoryId,
        audit: Option<&AuditRecord>,
    ) -> Result<bool, StoreError> {
        // One statement, so the memory, its history and any deferred
        // remember that stored it (which would bring the text back) go together.
        let mut tx = self.user_transaction(user_id).await?;
        lock_user(&mut tx, user_id).await?;
        let deleted: i64 = sqlx::query_scalar(
            "WITH gone AS (DELETE FROM memories WHERE user_id = $1 AND id = $2 RETURNING id), \
                  history AS (DELETE FROM memory_history \
                              WHERE user_id = $1 AND memory_id IN (SELECT id FROM gone)), \
                  pending AS (DELETE FROM pending_extractions \
                              WHERE user_id = $1 AND $2 = ANY (memory_ids) \
                                AND EXISTS (SELECT 1 FROM gone)) \
             SELECT count(*) FROM gone",
        )
        .bind(user_id)
        .bind(id.0)
        .fetch_one(&mut *tx)
        .await
        .map_err(db("deleting a memory"))?;
        if deleted == 0 {
            return Ok(false);
        }
        if let Some(audit) = audit {
            insert_audit(&mut tx, audit).await?;
        }
        tx.commit().await.map_err(db("committing a delete"))?;
        Ok(true)
    }

    async fn delete_matching(
        &self,
        at: Selection<'_>,
        audit: Option<&AuditRecord>,
    ) -> Result<Vec<MemoryId>, StoreError> {
        let user_id = at.scope.user_id().as_str();
        let mut tx = self.user_transaction(user_id).await?;
        lock_user(&mut tx, user_id).await?;
        // One statement: the memories (current and closed alike; cascades
        // take their postings, triggers their counts and the user's
        // version), their history, and every deferred remember that stored
        // one of them (which would bring its text back).
        let gone: Vec<Uuid> = sqlx::query_scalar(
            "WITH gone AS ( \
                 DELETE FROM memories m WHERE m.user_id = $1 \
                     AND ($2::text IS NULL OR m.agent_id = $2) \
                     AND ($3::text IS NULL OR m.run_id = $3) \
                     AND ($4::jsonb IS NULL OR m.metadata @> $4) \
                     AND ($5::timestamptz IS NULL OR m.created_at < $5) \
                 RETURNING m.id), \
                  history AS (DELETE FROM memory_history \
                              WHERE user_id = $1 AND memory_id IN (SELECT id FROM gone)), \
                  pending AS (DELETE FROM pending_extractions \
                              WHERE user_id = $1 AND memory_ids && ARRAY(SELECT id FROM gone)) \
             SELECT id FROM gone",
        )
        .bind(user_id)
        .bind(at.scope.agent_id())
        .bind(at.scope.run_id())
        .bind(at.filter_object())
        .bind(at.before)
        .fetch_all(&mut *tx)
        .await
        .map_err(db("deleting memories"))?;
        let ids: Vec<MemoryId> = gone.into_iter().map(MemoryId).collect();
        if let Some(audit) = audit {
            let mut audit = audit.clone();
            crate::audit::with_memories(&mut audit, ids.clone());
            insert_audit(&mut tx, &audit).await?;
        }
        tx.commit().await.map_err(db("committing a delete"))?;
        Ok(ids)
    }

    async fn delete_user(
        &self,
        user_id: &str,
        audit: Option<&AuditRecord>,
    ) -> Result<u64, StoreError> {
        let mut tx = self.user_transaction(user_id).await?;
        lock_user(&mut tx, user_id).await?;
        let deleted: i64 = sqlx::query_scalar(
            "WITH gone AS (DELETE FROM memories WHERE user_id = $1 RETURNING 1), \
                  history AS (DELETE FROM memory_history WHERE user_id = $1), \
                  counts AS (DELETE FROM memory_users WHERE user_id = $1), \
                  pending AS (DELETE FROM pending_extractions WHERE user_id = $1), \
                  usage AS (DELETE FROM token_usage WHERE user_id = $1) \
             SELECT count(*) FROM gone",
        )
        .bind(user_id)
        .fetch_one(&mut *tx)
        .await
        .map_err(db("deleting a user's memories"))?;
        if let Some(audit) = audit {
            // The row says how many memories went.
            let mut audit = audit.clone();
            audit.memory_count = deleted.max(0) as u64;
            insert_audit(&mut tx, &audit).await?;
        }
        tx.commit().await.map_err(db("committing a delete"))?;
        Ok(deleted.max(0) as u64)
    }
}

/// A [`WriteBatch`] on PostgreSQL: one transaction under the user's write
/// lock (taken by the first write: an insert's trigger takes it itself).
/// A write the database may refuse (the deduplication trigger, the unique
/// index on current texts) runs after a savepoint, so that a refusal undoes
/// that write alone. Savepoints are not released one by one: the commit
/// ends them all, and each write costs no round trip more than alone.
///
/// The transaction begins with the batch's first statement, and when that
/// is a savepoint (an insert's), in the same message: a remember's `BEGIN`
/// costs no round trip of its own, and a batch that writes nothing holds
/// no connection.
pub(super) struct PgBatch<'a> {
    store: &'a PgStore,
    pub(super) user_id: String,
    tx: Option<sqlx::Transaction<'static, sqlx::Postgres>>,
    locked: bool,
    /// When the batch began by adding memories to a user whose copy holds
    /// vectors: what the copy is moved on with at its commit.
    copy_write: Option<CopyWrite>,
    /// Audit records, written at the commit: the last in the same statement
    /// as the version the commit reads, when it reads one.
    audits: Vec<AuditRecord>,
}

/// A batch's part in keeping its user's in-process copy current (the
/// invariants of `keyword_copy`).
pub(super) struct CopyWrite {
    /// This instance's turn to write the user, held to the end of the batch.
    _turn: tokio::sync::OwnedMutexGuard<()>,
    /// The copy's version when the batch began: its claims name it, and the
    /// batch locked the user at it or the copy is not moved on.
    from: i64,
    /// The memories the batch added.
    pub(super) added: Vec<Added>,
    /// Whether the batch did anything else to the user's memories.
    other: bool,
}

/// Before a write's first statement, when `user_id`'s copy holds vectors
/// (as floats or codes): waits for this instance's turn to write the user
/// (the copy is then as the writer before left it), and gives each of
/// `news` that has no claim the copy's version as one where no memory of
/// the copy, and no other of `news`, is near it. The duplicate check trusts
/// the claim only if the user is still at that version when the write locks
/// them. `None` (no turn taken, no claim made) when the copy holds no vectors.
pub(super) async fn claim_from_copy(
    store: &PgStore,
    user_id: &str,
    news: &mut [(NewMemory, Option<u64>)],
    dedup_threshold: f32,
) -> Option<CopyWrite> {
    let copies = &store.keyword_copies;
    if !copies.peek(user_id).is_some_and(|c| c.may_claim()) {
        return None;
    }
    let turn = copies.turn(user_id).await;
    let copy = copies.get(user_id).filter(|c| c.may_claim())?;
    let alone: Vec<bool> = (0..news.len())
        .map(|i| {
            let vector = &news[i].0.embedding;
            news.iter().enumerate().all(|(j, (other, _))| {
                j == i || !crate::embed::might_be_near(&other.embedding, vector, dedup_threshold)
            })
        })
        .collect();
    for ((new, claim), alone) in news.iter_mut().zip(alone) {
        if claim.is_none() && alone && copy.clear_of(&new.embedding, dedup_threshold) {
            *claim = u64::try_from(copy.version).ok();
            copies.claimed();
        }
    }
    Some(CopyWrite {
        _turn: turn,
        from: copy.version,
        added: Vec::new(),
        other: false,
    })
}

/// After a write of `user_id` committed: moves the user's copy on by what
/// `write` added when the write locked the user at the copy's version
/// (`locked`, read back with the version `to` and count `current` it left
/// them at), else (the write added memories) has the copy refreshed.
pub(super) fn move_copy_on(
    store: &PgStore,
    user_id: &str,
    write: Option<CopyWrite>,
    added: bool,
    left_at: Option<(i64, i64, Option<String>)>,
) {
    let moved_on = match (write, left_at) {
        (Some(write), Some((to, current, locked))) if locked == Some(locked_text(write.from)) => {
            store.keyword_copies.advance(
                user_id,
                write.from,
                to,
                current,
                write.added,
                store.embedder.dims,
            )
        }
        _ => false,
    };
    if added && !moved_on {
        store.refresh_copy_after_write(user_id);
    }
}

/// Takes the user's write lock and their version's row, and records that
/// version for the duplicate check (as its trigger otherwise does): no
/// other write moves the version until the batch commits, so the version
/// read at its commit is the one it locked at plus its own writes. The
/// batch of a copy's write begins so (`keyword_copy`). (A new user has no
/// row yet, and no copy.)
const LOCK_WITH_VERSION: &str = "SELECT pg_advisory_xact_lock(hashtextextended( \
         'engram.user:' || current_setting('engram.user_id'), 0)); \
     SELECT set_config('engram.locked_version', u.version::text, true) \
     FROM memory_users u WHERE u.user_id = current_setting('engram.user_id') \
     FOR NO KEY UPDATE";

/// The savepoint a refused write rolls back to (the latest of that name).
const SAVEPOINT: &str = "SAVEPOINT engram_write";
const UNDO: &str = "ROLLBACK TO SAVEPOINT engram_write";

impl PgBatch<'_> {
    /// The batch's transaction, begun now (scoped to its user) if no
    /// statement has begun it yet.
    pub(super) async fn conn(&mut self) -> Result<&mut PgConnection, StoreError> {
        Ok(self.with_user().await?.0)
    }

    /// [`Self::conn`], and the batch's user.
    pub(super) async fn with_user(&mut self) -> Result<(&mut PgConnection, &str), StoreError> {
        let open = match self.tx.take() {
            Some(open) => open,
            None => self.store.user_transaction(&self.user_id).await?,
        };
        Ok((&mut **self.tx.insert(open), &self.user_id))
    }

    /// Takes the user's write lock, once per batch, before a write that
    /// locks one of their rows.
    pub(super) async fn lock(&mut self) -> Result<(), StoreError> {
        if !self.locked {
            let (conn, user_id) = self.with_user().await?;
            lock_user(conn, user_id).await?;
            self.locked = true;
        }
        Ok(())
    }

    /// Marks the point a refused write rolls back to, and sets (for the
    /// rest of the transaction) the deduplication settings the trigger
    /// reads, in one round trip. The values are numbers and uuids, written
    /// into the statement by this code (a simple query takes no parameters).
    /// The batch's first savepoint travels with its `BEGIN`.
    pub(super) async fn savepoint(&mut self, dedup: Option<Dedup<'_>>) -> Result<(), StoreError> {
        // After the savepoint: the insert's trigger updates the version's
        // row inside it, and a row locked by the transaction and updated by
        // its savepoint (two xids) gets a MultiXact for every write, which
        // every later reader of the row resolves. An undo of this savepoint
        // gives the locks up ([`Self::undo`]).
        let lock = if self.copy_write.is_some() && !self.locked {
            format!("; {LOCK_WITH_VERSION}")
        } else {
            String::new()
        };
        let sql = match dedup {
            None => SAVEPOINT.to_owned(),
            Some(Dedup {
                threshold,
                allowed,
                k,
                searched,
            }) => format!(
                "{SAVEPOINT}; SELECT set_config('engram.dedup_threshold', '{threshold}', true), \
                 set_config('engram.dedup_allow', '{}', true), \
                 set_config('engram.dedup_k', '{k}', true), \
                 set_config('engram.dedup_searched', '{}', true)",
                uuid_array_literal(allowed),
                searched
                    .iter()
                    .map(|(id, version)| claim_text(*id, *version))
                    .collect::<Vec<_>>()
                    .join(","),
            ),
        };
        let sql = format!("{sql}{lock}");
        match self.tx.as_mut() {
            Some(tx) => {
                sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
                    .execute(&mut **tx)
                    .await
                    .map_err(db("starting a write"))?;
            }
            None => {
                let begun = self
                    .store
                    .user_transaction_then(&self.user_id, &sql)
                    .await?;
                self.tx = Some(begun);
            }
        }
        if !lock.is_empty() {
            self.locked = true;
        }
        Ok(())
    }

    /// Undoes everything since the last savepoint (a refused write). The
    /// locks taken since go with it: the next write takes the user's lock
    /// again, and the copy is not moved on (its version was locked in what
    /// was undone).
    pub(super) async fn undo(&mut self) -> Result<(), StoreError> {
        sqlx::raw_sql(UNDO)
            .execute(self.conn().await?)
            .await
            .map_err(db("ending a refused write"))?;
        self.locked = false;
        self.changed_otherwise();
        Ok(())
    }

    /// One attempt at inserting `new`; `Ok(Err(near))` when the trigger
    /// refused it (and nothing of it was kept), with the near-duplicates it named.
    async fn try_insert(
        &mut self,
        new: &NewMemory,
        dedup: Dedup<'_>,
        now: DateTime<Utc>,
    ) -> Result<Result<(), Vec<Near>>, StoreError> {
        self.savepoint(Some(dedup)).await?;
        match PgStore::insert_in(self.conn().await?, &[new], now).await {
            Ok(()) => {
                // The trigger took the user's write lock.
                self.locked = true;
                Ok(Ok(()))
            }
            Err(e) => match refused_as_duplicate(&e) {
                Some(near) => {
                    self.undo().await?;
                    Ok(Err(near?))
                }
                None => Err(StoreError::Database {
                    context: "storing a memory",
                    source: e,
                }),
            },
        }
    }

    /// [`WriteBatch::insert`], the first round's search left to the
    /// trigger's judgement when `searched_at` is given
    /// ([`WriteBatch::insert_searched`]).
    async fn insert_deduplicated(
        &mut self,
        new: NewMemory,
        dedup_threshold: f32,
        searched_at: Option<u64>,
    ) -> Result<InsertOutcome, StoreError> {
        same_user(&self.user_id, new.scope.user_id())?;
        let now = now_micros();
        let mut allowed: Vec<Uuid> = Vec::new();
        let claim: Vec<(Uuid, u64)> = searched_at.map(|v| (new.id.0, v)).into_iter().collect();
        for round in 0..MAX_DEDUP_ROUNDS {
            let dedup = Dedup {
                threshold: dedup_threshold,
                allowed: &allowed,
                k: FIRST_DEDUP_ROUND << round,
                // A later round follows a refusal: the search found
                // something after all.
                searched: if round == 0 { &claim } else { &[] },
            };
            let mut near = match self.try_insert(&new, dedup, now).await? {
                Ok(()) => return Ok(InsertOutcome::Added(new.stored_at(now))),
                Err(near) => near,
            };
            // The trigger only says "close"; a candidate stating other
            // details (a number, a negation) is a different memory.
            near.sort_by(|a, b| b.similarity.total_cmp(&a.similarity));
            let ids: Vec<MemoryId> = near.iter().map(|n| MemoryId(n.id)).collect();
            let (conn, user_id) = self.with_user().await?;
            let mut existing: HashMap<MemoryId, Memory> = memories_by_id(conn, user_id, &ids)
                .await?
                .into_iter()
                .map(|m| (m.id, m))
                .collect();
            for n in &near {
                let Some(memory) = existing.remove(&MemoryId(n.id)) else {
                    continue;
                };
                if !details_differ(&new.content, &memory.memory) {
                    return Ok(InsertOutcome::Duplicate {
                        existing: memory,
                        similarity: n.similarity,
                    });
                }
                allowed.push(n.id);
            }
        }
        Err(StoreError::Conflict(format!(
            "memory {} still met near-duplicates after {MAX_DEDUP_ROUNDS} rounds ({} judged \
             different so far): the user holds very many close memories that differ in a \
             detail; try again",
            new.id,
            allowed.len()
        )))
    }

    /// Before a batch's first write: the claims its user's copy can make
    /// ([`claim_from_copy`]), and the turn that goes with them.
    async fn claim_from_copy(
        &mut self,
        news: &mut [(NewMemory, Option<u64>)],
        dedup_threshold: f32,
    ) {
        if self.tx.is_some() || self.copy_write.is_some() {
            return;
        }
        self.copy_write = claim_from_copy(self.store, &self.user_id, news, dedup_threshold).await;
    }

    /// [`WriteBatch::insert_all`] of one memory.
    async fn insert_one(
        &mut self,
        new: NewMemory,
        dedup_threshold: f32,
        searched_at: Option<u64>,
    ) -> Result<InsertOutcome, StoreError> {
        let mut outcomes = self
            .insert_all(vec![(new, searched_at)], dedup_threshold)
            .await?;
        outcomes.pop().ok_or_else(|| {
            StoreError::Corrupt("an insert of one memory answered no outcome".into())
        })
    }

    /// Notes, for the copy, that the batch did something to the user's
    /// memories other than adding them through [`WriteBatch::insert_all`].
    fn changed_otherwise(&mut self) {
        if let Some(write) = &mut self.copy_write {
            write.other = true;
        }
    }

    /// `news` in one statement after one savepoint ([`WriteBatch::insert_all`]):
    /// when it was written. `None` when the database refused any of them:
    /// then nothing of them was kept.
    async fn insert_together(
        &mut self,
        news: &[(NewMemory, Option<u64>)],
        dedup_threshold: f32,
    ) -> Result<Option<DateTime<Utc>>, StoreError> {
        for (new, _) in news {
            same_user(&self.user_id, new.scope.user_id())?;
        }
        let now = now_micros();
        let claims: Vec<(Uuid, u64)> = news
            .iter()
            .filter_map(|(new, searched_at)| searched_at.map(|v| (new.id.0, v)))
            .collect();
        self.savepoint(Some(Dedup {
            threshold: dedup_threshold,
            allowed: &[],
            k: FIRST_DEDUP_ROUND,
            searched: &claims,
        }))
        .await?;
        let rows: Vec<&NewMemory> = news.iter().map(|(new, _)| new).collect();
        match PgStore::insert_in(self.conn().await?, &rows, now).await {
            Ok(()) => {
                // The trigger took the user's write lock.
                self.locked = true;
                Ok(Some(now))
            }
            Err(e) if refused_as_duplicate(&e).is_some() || is_unique_violation(&e) => {
                self.undo().await?;
                Ok(None)
            }
            Err(e) => Err(StoreError::Database {
                context: "storing memories",
                source: e,
            }),
        }
    }
}

#[async_trait]
impl WriteBatch for PgBatch<'_> {
    async fn insert(
        &mut self,
        new: NewMemory,
        dedup_threshold: f32,
    ) -> Result<InsertOutcome, StoreError> {
        self.insert_one(new, dedup_threshold, None).await
    }

    async fn insert_searched(
        &mut self,
        new: NewMemory,
        dedup_threshold: f32,
        searched_at: u64,
    ) -> Result<InsertOutcome, StoreError> {
        self.insert_one(new, dedup_threshold, Some(searched_at))
            .await
    }

    /// Several in one statement; should the database refuse any (a
    /// duplicate, of a memory or of another of them), each on its own. The
    /// user's copy, when it holds vectors, makes the claims the caller did
    /// not, and is told what was added.
    async fn insert_all(
        &mut self,
        mut news: Vec<(NewMemory, Option<u64>)>,
        dedup_threshold: f32,
    ) -> Result<Vec<InsertOutcome>, StoreError> {
        self.claim_from_copy(&mut news, dedup_threshold).await;
        let copied: Vec<Added> = match &self.copy_write {
            Some(_) => news.iter().map(|(new, _)| Added::of(new)).collect(),
            None => Vec::new(),
        };
        let outcomes = if news.len() > 1
            && let Some(at) = self.insert_together(&news, dedup_threshold).await?
        {
            let added = news.into_iter().map(|(new, _)| new.stored_at(at));
            added.map(InsertOutcome::Added).collect()
        } else {
            let mut outcomes = Vec::with_capacity(news.len());
            for (new, searched_at) in news {
                outcomes.push(
                    self.insert_deduplicated(new, dedup_threshold, searched_at)
                        .await?,
                );
            }
            outcomes
        };
        if let Some(write) = &mut self.copy_write {
            let kept = copied.into_iter().zip(&outcomes);
            write
                .added
                .extend(kept.filter_map(|(added, outcome)| match outcome {
                    InsertOutcome::Added(memory) => Some(added.stored_as(memory.clone())),
                    InsertOutcome::Duplicate { .. } => None,
                }));
        }
        Ok(outcomes)
    }

    async fn update(
        &mut self,
        id: MemoryId,
        content: &str,
        embedding: &[f32],
        actor: &str,
    ) -> Result<Option<Memory>, StoreError> {
        self.changed_otherwise();
        let now = now_micros();
        let terms = keywords::document_terms(content);
        self.lock().await?;
        self.savepoint(None).await?;
        // One statement: the row (locked), its new text, vector and keyword
        // length, and the UPDATE history row. Triggers drop the old text's
        // postings and move the version; the new postings follow.
        let sql = format!(
            "WITH old AS (SELECT id, content FROM memories \
                          WHERE user_id = $1 AND id = $2 AND valid_to IS NULL FOR UPDATE), \
                  m AS (UPDATE memories SET content = $3, content_hash = $4, embedding = $5, \
                            updated_at = $6, keyword_length = $8 \
                        WHERE id IN (SELECT id FROM old) RETURNING *), \
                  h AS (INSERT INTO memory_history (memory_id, user_id, event, old_content, \
                            new_content, actor, created_at) \
                        SELECT old.id, $1, 'UPDATE', old.content, $3, $7, $6 FROM old) \
             SELECT {MEMORY_COLUMNS} FROM m"
        );
        // A second try only after an expired memory with the new text was
        // closed: expired memories never hold a text against a live one.
        let mut retried = false;
        // Whether the savepoint was already rolled back to for a refusal.
        let mut undone = false;
        let row = loop {
            let (conn, user_id) = self.with_user().await?;
            let row = sqlx::query(sqlx::AssertSqlSafe(sql.as_str()))
                .bind(user_id)
                .bind(id.0)
                .bind(content)
                .bind(content_hash(content))
                .bind(Vector::from(embedding.to_vec()))
                .bind(now)
                .bind(actor)
                .bind(keyword_length(&terms))
                .fetch_optional(conn)
                .await;
            match row {
                Err(e) if is_unique_violation(&e) && !retried => {
                    self.undo().await?;
                    retried = true;
                    let (conn, user_id) = self.with_user().await?;
                    if close_expired_repeats(conn, user_id, content).await? == 0 {
                        undone = true;
                        break Err(e);
                    }
                    self.savepoint(None).await?;
                }
                row => break row,
            }
        };
        let memory = match row {
            Ok(Some(row)) => memory_from_row(&row)?,
            // Not a current memory of theirs: nothing changed.
            Ok(None) => return Ok(None),
            Err(e) if is_unique_violation(&e) => {
                if !undone {
                    self.undo().await?;
                }
                return Err(StoreError::Conflict(format!(
                    "another current memory of user \"{}\" already holds this text; \
                     {id} was not changed",
                    self.user_id
                )));
            }
            Err(e) => {
                return Err(StoreError::Database {
                    context: "updating a memory",
                    source: e,
                });
            }
        };
        let (conn, user_id) = self.with_user().await?;
        index_terms(conn, user_id, id, &terms).await?;
        Ok(Some(memory))
    }

    async fn supersede(
        &mut self,
        old: MemoryId,
        new: NewMemory,
    ) -> Result<SupersedeOutcome, StoreError> {
        self.changed_otherwise();
        same_user(&self.user_id, new.scope.user_id())?;
        let now = now_micros();
        self.lock().await?;
        // The caller judged the near-duplicates: the trigger checks exact text only.
        self.savepoint(Some(Dedup::exact_text(FIRST_DEDUP_ROUND)))
            .await?;
        let (conn, user_id) = self.with_user().await?;
        let closed = close_in(conn, user_id, old, Some(&new.content), &new.actor, now).await?;
        if !closed {
            return Ok(SupersedeOutcome::NotFound);
        }
        let refused = match PgStore::insert_in(self.conn().await?, &[&new], now).await {
            Ok(()) => return Ok(SupersedeOutcome::Superseded(new.stored_at(now))),
            Err(e) => match refused_as_duplicate(&e) {
                Some(near) => near?,
                None => {
                    return Err(StoreError::Database {
                        context: "storing a memory",
                        source: e,
                    });
                }
            },
        };
        // Undoes the close too: `old` stays as it was.
        self.undo().await?;
        let ids: Vec<MemoryId> = refused.iter().map(|n| MemoryId(n.id)).collect();
        let (conn, user_id) = self.with_user().await?;
        let existing = memories_by_id(conn, user_id, &ids).await?;
        match existing.into_iter().next() {
            Some(m) => Ok(SupersedeOutcome::Duplicate(m)),
            None => Err(StoreError::Corrupt(format!(
                "memory {old} was not superseded: the database called its replacement a \
                 repeat of memories it cannot find"
            ))),
        }
    }

    async fn close(&mut self, id: MemoryId, actor: &str) -> Result<bool, StoreError> {
        self.changed_otherwise();
        // One statement; the memories_version_update trigger moves the version.
        self.lock().await?;
        let (conn, user_id) = self.with_user().await?;
        close_in(conn, user_id, id, None, actor, now_micros()).await
    }

    async fn add_pending(&mut self, pending: NewPending) -> Result<(), StoreError> {
        same_user(&self.user_id, pending.scope.user_id())?;
        insert_pending(self.conn().await?, &pending).await
    }

    async fn import(&mut self, imported: ImportedMemory) -> Result<ImportOutcome, StoreError> {
        self.changed_otherwise();
        same_user(&self.user_id, imported.memory.scope.user_id())?;
        self.import_memory(imported).await
    }

    /// Kept for the commit, in the batch's transaction: a record saves a
    /// round trip of its own, and a write undone later leaves it whole.
    async fn audit(&mut self, record: &AuditRecord) -> Result<(), StoreError> {
        self.audits.push(record.clone());
        Ok(())
    }

    /// Commits; a batch that only added memories to a user whose copy
    /// holds vectors first reads the version it leaves them at, and moves
    /// the copy on to it once committed.
    async fn commit(mut self: Box<Self>) -> Result<(), StoreError> {
        const CX: &str = "committing a write";
        if !self.audits.is_empty() {
            self.conn().await?;
        }
        let PgBatch {
            store,
            user_id,
            tx,
            copy_write,
            audits,
            ..
        } = *self;
        // Nothing was written.
        let Some(mut tx) = tx else {
            return Ok(());
        };
        let added = copy_write.as_ref().is_none_or(|w| !w.added.is_empty());
        let copy_write = copy_write.filter(|w| !w.other && !w.added.is_empty());
        let (last, earlier) = match audits.split_last() {
            Some((last, earlier)) => (Some(last), earlier),
            None => (None, &[][..]),
        };
        for record in earlier {
            insert_audit(&mut tx, record).await?;
        }
        const LEFT_AT: &str = "SELECT version, current, \
             current_setting('engram.locked_version', true) \
             FROM memory_users WHERE user_id = ";
        let mut left_at = None;
        match (copy_write.is_some(), last) {
            (true, Some(record)) => {
                let sql = format!("WITH audited AS ({AUDIT_INSERT}) {LEFT_AT}$12");
                let query = bind_record(sqlx::query(sqlx::AssertSqlSafe(sql)), record);
                left_at = query
                    .bind(&user_id)
                    .try_map(|row: sqlx::postgres::PgRow| {
                        <(i64, i64, Option<String>) as sqlx::FromRow<_>>::from_row(&row)
                    })
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err(db(CX))?;
            }
            (true, None) => {
                left_at = sqlx::query_as::<_, (i64, i64, Option<String>)>(sqlx::AssertSqlSafe(
                    format!("{LEFT_AT}$1"),
                ))
                .bind(&user_id)
                .fetch_optional(&mut *tx)
                .await
                .map_err(db(CX))?;
            }
            (false, Some(record)) => insert_audit(&mut tx, record).await?,
            (false, None) => {}
        }
        tx.commit().await.map_err(db(CX))?;
        move_copy_on(store, &user_id, copy_write, added, left_at);
        Ok(())
    }
}

/// The near-duplicates in an EG001 error, if `e` is one.
/// A unique index refused the row (here: the same text as a current memory).
pub(super) fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d) if d.code().as_deref() == Some("23505"))
}

pub(super) fn refused_as_duplicate(e: &sqlx::Error) -> Option<Result<Vec<Near>, StoreError>> {
    let db_err = e.as_database_error()?;
    if db_err.code().as_deref() != Some(DUPLICATE_SQLSTATE) {
        return None;
    }
    let detail = db_err
        .try_downcast_ref::<PgDatabaseError>()
        .and_then(PgDatabaseError::detail)
        .unwrap_or("[]");
    Some(
        serde_json::from_str(detail)
            .map_err(|e| StoreError::Corrupt(format!("duplicate report '{detail}': {e}"))),
    )
}

/// Takes the user's write lock for the rest of `tx`: the advisory lock the
/// deduplication trigger and the keyword statistics' triggers take.
///
/// Invariant: every engram transaction that changes a user's memories takes
/// it before any other lock of theirs (a memory's row, the user's counts and
/// term statistics), so two writers of one user queue here instead of each
/// holding what the other waits for.
pub(super) async fn lock_user(tx: &mut PgConnection, user_id: &str) -> Result<(), StoreError> {
    let lock = "SELECT pg_advisory_xact_lock(hashtextextended('engram.user:' || $1, 0))";
    for_user(tx, lock, user_id, "taking the user's write lock").await?;
    Ok(())
}

/// Closes the user's expired current memories holding exactly `content`
/// (at their expiry, as the deduplication trigger does), so that they no
/// longer hold the text against a live memory; how many.
async fn close_expired_repeats(
    conn: &mut PgConnection,
    user_id: &str,
    content: &str,
) -> Result<u64, StoreError> {
    let done = sqlx::query(
        "UPDATE memories SET valid_to = expires_at WHERE user_id = $1 AND content_hash = $2 \
         AND valid_to IS NULL AND expires_at <= now()",
    )
    .bind(user_id)
    .bind(content_hash(content))
    .execute(&mut *conn)
    .await
    .map_err(db("closing expired memories"))?;
    Ok(done.rows_affected())
}

/// Closes current memory `id` of the user (`valid_to` = now, locked first)
/// with a SUPERSEDE history row naming `successor`'s text, if any, in one
/// statement; triggers drop its keyword postings and move the user's version. False
/// when it is not a current memory of theirs (nothing changed).
pub(super) async fn close_in(
    conn: &mut PgConnection,
    user_id: &str,
    id: MemoryId,
    successor: Option<&str>,
    actor: &str,
    now: DateTime<Utc>,
) -> Result<bool, StoreError> {
    let closed: Option<Uuid> = sqlx::query_scalar(
        "WITH old AS (SELECT id, content FROM memories \
                      WHERE user_id = $1 AND id = $2 AND valid_to IS NULL FOR UPDATE), \
              m AS (UPDATE memories SET valid_to = $3, updated_at = $3 \
                    WHERE id IN (SELECT id FROM old) RETURNING id), \
              h AS (INSERT INTO memory_history (memory_id, user_id, event, old_content, \
                        new_content, actor, created_at) \
                    SELECT old.id, $1, 'SUPERSEDE', old.content, $4, $5, $3 FROM old) \
         SELECT id FROM old",
    )
    .bind(user_id)
    .bind(id.0)
    .bind(now)
    .bind(successor)
    .bind(actor)
    .fetch_optional(&mut *conn)
    .await
    .map_err(db("closing a memory"))?;
    Ok(closed.is_some())
}
