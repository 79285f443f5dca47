//! Changes to a user's memories ([`Writes`], [`WriteBatch`]): one write
//! transaction at a time per process (`write_lock`, then `BEGIN IMMEDIATE`),
//! deduplication inside it, and the user's vector copy kept with it (changed
//! as a batch writes; stale if the batch does not commit).

use std::collections::HashSet;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::Row;
use sqlx::sqlite::SqliteConnection;

use super::audit::insert_audit;
use super::queue::insert_pending;
use super::rows::{json_array, parse_id};
use super::vectors::{decode_vector, encode_vector};
use super::versions::{bump_generation, generation};
use super::{SqliteStore, db};
use crate::embed::dot;
use crate::keywords::{self, DocumentTerms};
use crate::model::{Memory, MemoryId, details_differ};
use crate::store::shared::{
    MEMORY_COLUMNS, content_hash_hex, for_user, memory_from_row, same_user,
};
use crate::store::vector_index::{DEDUP_MARGIN, RowOf, UserVectors};
use crate::store::{
    AuditRecord, ImportOutcome, ImportedMemory, InsertOutcome, NewMemory, NewPending, Selection,
    StoreError, SupersedeOutcome, WriteBatch, Writes,
};

/// Writes a new memory with its vector and ADD history row, in one round
/// trip, and answers the row's pk and the user's generation after it (the
/// insert trigger of migration `generations_follow_every_write` moved it,
/// and nothing after the row's insert moves it again). Parameters:
/// ?1 id, ?2 vector blob, ?3 actor, ?4 user, ?5 agent, ?6 run, ?7 content,
/// ?8 content hash, ?9 metadata, ?10 categories, ?11 time (ms), ?12 expiry
/// (ms, or NULL).
///
/// Later statements read what they can from the new row, so each uses few
/// parameters: sqlx counts the unused numbers below a statement's highest one
/// as positional arguments across statements, and stops binding a statement
/// once that count passes the number of arguments (here it reaches 6 of 12).
pub(super) const INSERT_MEMORY: &str = "\
    INSERT INTO memories (id, user_id, agent_id, run_id, content, content_hash, metadata, \
        categories, created_at, updated_at, valid_from, expires_at) \
        VALUES (?1, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?11, ?11, ?12) RETURNING pk; \
    INSERT INTO memory_vectors (pk, embedding) SELECT pk, ?2 FROM memories WHERE id = ?1; \
    INSERT INTO memory_history (memory_id, user_id, event, old_content, new_content, actor, created_at) \
        SELECT id, user_id, 'ADD', NULL, content, ?3, created_at FROM memories WHERE id = ?1; \
    SELECT generation FROM user_generations WHERE user_id = ?4;";

/// How many approximate candidates get an exact dedup check.
pub(super) const DEDUP_CANDIDATES: usize = 8;

/// A current memory about to be closed: its id, pk and text.
#[derive(Clone, Copy)]
pub(super) struct Closed<'a> {
    id: MemoryId,
    pk: i64,
    content: &'a str,
}

/// What a write to one user's memories holds, taken in the store's one lock
/// order (see `write_lock`): the writer lock, then a transaction, then the
/// user's in-process vectors.
pub(super) struct UserWrite<'a> {
    _writer: tokio::sync::MutexGuard<'a, ()>,
    tx: sqlx::Transaction<'static, sqlx::Sqlite>,
    vecs: tokio::sync::OwnedRwLockWriteGuard<UserVectors>,
}

impl UserWrite<'_> {
    /// Commits, then moves the user's vector copy to `generation` by
    /// `change`, if the copy held what the database held when the write
    /// began (`before`, the user's generation then). A copy already behind
    /// is left so: the next read reloads it.
    async fn commit(
        self,
        context: &'static str,
        before: i64,
        generation: i64,
        change: impl FnOnce(&mut UserVectors),
    ) -> Result<(), StoreError> {
        let Self {
            _writer,
            tx,
            mut vecs,
        } = self;
        tx.commit().await.map_err(db(context))?;
        if vecs.generation == Some(before) {
            change(&mut vecs);
            vecs.generation = Some(generation);
        }
        Ok(())
    }
}

/// Adds the new memory `new`, stored at `pk` with its text's `terms`, to
/// the user's copy.
pub(super) fn keep(vecs: &mut UserVectors, pk: i64, new: &NewMemory, terms: &DocumentTerms) {
    let scope = &new.scope;
    let row = RowOf {
        agent_id: scope.agent_id(),
        run_id: scope.run_id(),
        expires_at: new.expires_at.map(|at| at.timestamp_millis()),
        ..RowOf::new(pk, new.id)
    };
    vecs.push(row, &new.embedding, terms);
}

impl SqliteStore {
    pub(super) async fn begin_user_write(
        &self,
        user_id: &str,
        context: &'static str,
    ) -> Result<UserWrite<'_>, StoreError> {
        let _writer = self.write_lock.lock().await;
        let tx = self
            .pool
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(db(context))?;
        let vecs = self.index.user(user_id).write_owned().await;
        Ok(UserWrite { _writer, tx, vecs })
    }

    /// The most similar current memory of the user that reaches `threshold`
    /// and states the same details (numbers, negations) as `content`.
    pub(super) async fn find_duplicate(
        &self,
        conn: &mut SqliteConnection,
        vecs: &UserVectors,
        embedding: &[f32],
        content: &str,
        threshold: f32,
    ) -> Result<Option<(i64, f32)>, StoreError> {
        let candidates: Vec<i64> = vecs
            .near(embedding, threshold - DEDUP_MARGIN, DEDUP_CANDIDATES)
            .into_iter()
            .map(|s| s.pk)
            .collect();
        if candidates.is_empty() {
            return Ok(None);
        }
        // An expired memory never makes a new one a duplicate.
        let rows = sqlx::query(concat!(
            "SELECT v.pk, v.embedding, m.content FROM json_each(?) j \
             CROSS JOIN memory_vectors v ON v.pk = j.value JOIN memories m ON m.pk = v.pk \
             WHERE ",
            unexpired!("m")
        ))
        .bind(json_array(&candidates))
        .fetch_all(&mut *conn)
        .await
        .map_err(db("checking for duplicates"))?;
        let mut best: Option<(i64, f32)> = None;
        for row in &rows {
            let v = decode_vector(row.try_get("embedding").map_err(db("reading a vector"))?)?;
            let similarity = dot(embedding, &v);
            let existing: String = row.try_get("content").map_err(db("reading a memory"))?;
            if similarity >= threshold
                && !details_differ(content, &existing)
                && best.is_none_or(|(_, b)| similarity > b)
            {
                best = Some((
                    row.try_get("pk").map_err(db("reading a vector"))?,
                    similarity,
                ));
            }
        }
        Ok(best)
    }

    /// Writes `new` (row, vector, ADD history) and moves
    /// the user to the next generation, in one call ([`INSERT_MEMORY`]);
    /// returns the row's pk, that generation and the text's keyword terms
    /// (for the user's copy).
    pub(super) async fn insert_row(
        conn: &mut SqliteConnection,
        new: &NewMemory,
        now: DateTime<Utc>,
    ) -> Result<(i64, i64, DocumentTerms), StoreError> {
        let metadata =
            serde_json::to_string(&new.metadata).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let categories = serde_json::to_string(&new.categories)
            .map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let terms = keywords::document_terms(&new.content);
        // Rows come back from the two RETURNING clauses: the pk, then the generation.
        let rows = sqlx::query(INSERT_MEMORY)
            .bind(new.id.to_string())
            .bind(encode_vector(&new.embedding))
            .bind(&new.actor)
            .bind(new.scope.user_id().as_str())
            .bind(new.scope.agent_id())
            .bind(new.scope.run_id())
            .bind(&new.content)
            .bind(content_hash_hex(&new.content))
            .bind(&metadata)
            .bind(&categories)
            .bind(now.timestamp_millis())
            .bind(new.expires_at.map(|at| at.timestamp_millis()))
            .fetch_all(&mut *conn)
            .await
            .map_err(db("storing a memory"))?;
        let [pk, generation] = rows
            .iter()
            .map(|row| row.try_get::<i64, _>(0))
            .collect::<Result<Vec<_>, _>>()
            .map_err(db("storing a memory"))?[..]
        else {
            return Err(StoreError::Corrupt(format!(
                "storing a memory returned {} rows, expected 2",
                rows.len()
            )));
        };
        Ok((pk, generation, terms))
    }

    /// The pk and text of a current memory of the user.
    pub(super) async fn current(
        conn: &mut SqliteConnection,
        user_id: &str,
        id: MemoryId,
    ) -> Result<Option<(i64, String)>, StoreError> {
        let row = sqlx::query(
            "SELECT pk, content FROM memories WHERE user_id = ? AND id = ? AND valid_to IS NULL",
        )
        .bind(user_id)
        .bind(id.to_string())
        .fetch_optional(&mut *conn)
        .await
        .map_err(db("finding a memory"))?;
        row.map(|r| -> Result<(i64, String), StoreError> {
            Ok((
                r.try_get("pk").map_err(db("finding a memory"))?,
                r.try_get("content").map_err(db("finding a memory"))?,
            ))
        })
        .transpose()
    }

    /// Another current memory of the user with exactly `content`, if any.
    pub(super) async fn exact_repeat(
        conn: &mut SqliteConnection,
        user_id: &str,
        content: &str,
        except: i64,
    ) -> Result<Option<i64>, StoreError> {
        sqlx::query_scalar(concat!(
            "SELECT pk FROM memories m WHERE m.user_id = ? AND m.content_hash = ? \
             AND m.valid_to IS NULL AND m.pk <> ? AND ",
            unexpired!("m"),
            " LIMIT 1"
        ))
        .bind(user_id)
        .bind(content_hash_hex(content))
        .bind(except)
        .fetch_optional(&mut *conn)
        .await
        .map_err(db("checking for duplicates"))
    }

    /// Closes a current memory (`valid_to` = now; a trigger takes it out of
    /// the keyword index) and records a SUPERSEDE history row naming its
    /// `successor`'s text, if any. The caller moves the generation and drops
    /// the vector from its in-process copy.
    pub(super) async fn close_row(
        conn: &mut SqliteConnection,
        user_id: &str,
        closed: Closed<'_>,
        successor: Option<&str>,
        actor: &str,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        sqlx::query("UPDATE memories SET valid_to = ?, updated_at = ? WHERE pk = ?")
            .bind(now.timestamp_millis())
            .bind(now.timestamp_millis())
            .bind(closed.pk)
            .execute(&mut *conn)
            .await
            .map_err(db("closing a memory"))?;
        sqlx::query(
            "INSERT INTO memory_history (memory_id, user_id, event, old_content, new_content, \
             actor, created_at) VALUES (?, ?, 'SUPERSEDE', ?, ?, ?, ?)",
        )
        .bind(closed.id.to_string())
        .bind(user_id)
        .bind(closed.content)
        .bind(successor)
        .bind(actor)
        .bind(now.timestamp_millis())
        .execute(&mut *conn)
        .await
        .map_err(db("recording history"))?;
        Ok(())
    }

    pub(super) async fn fetch_memory(
        conn: &mut SqliteConnection,
        pk: i64,
    ) -> Result<Memory, StoreError> {
        let sql = format!("SELECT {MEMORY_COLUMNS} FROM memories m WHERE m.pk = ?");
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(pk)
            .fetch_one(&mut *conn)
            .await
            .map_err(db("reading a memory"))?;
        memory_from_row(&row)
    }
}

#[async_trait]
impl Writes for SqliteStore {
    async fn begin<'a>(&'a self, user_id: &str) -> Result<Box<dyn WriteBatch + 'a>, StoreError> {
        let mut w = self.begin_user_write(user_id, "starting a write").await?;
        // The copy must hold what the database holds: the batch deduplicates
        // against it and changes it as it writes.
        let generation = self.sync_vectors(&mut w.tx, user_id, &mut w.vecs).await?;
        let UserWrite { _writer, tx, vecs } = w;
        Ok(Box::new(SqliteBatch {
            store: self,
            user_id: user_id.to_owned(),
            _writer,
            tx,
            copy: CopyGuard {
                vecs,
                settled: false,
            },
            generation,
        }))
    }

    async fn delete(
        &self,
        user_id: &str,
        id: MemoryId,
        audit: Option<&AuditRecord>,
    ) -> Result<bool, StoreError> {
        let mut w = self.begin_user_write(user_id, "starting a delete").await?;
        let before = generation(&mut w.tx, user_id).await?;
        let pk: Option<i64> =
            sqlx::query_scalar("SELECT pk FROM memories WHERE user_id = ? AND id = ?")
                .bind(user_id)
                .bind(id.to_string())
                .fetch_optional(&mut *w.tx)
                .await
                .map_err(db("finding a memory"))?;
        let Some(pk) = pk else {
            return Ok(false);
        };
        for (sql, context) in [
            (
                "DELETE FROM memory_vectors WHERE pk = ?",
                "deleting a vector",
            ),
            ("DELETE FROM memories WHERE pk = ?", "deleting a memory"),
        ] {
            sqlx::query(sql)
                .bind(pk)
                .execute(&mut *w.tx)
                .await
                .map_err(db(context))?;
        }
        // Its history, and a deferred remember that stored it (which would
        // bring the text back).
        for (sql, context) in [
            (
                "DELETE FROM memory_history WHERE user_id = ?1 AND memory_id = ?2",
                "deleting history",
            ),
            (
                "DELETE FROM pending_extractions WHERE user_id = ?1 \
                 AND EXISTS (SELECT 1 FROM json_each(memory_ids) WHERE value = ?2)",
                "deleting deferred remembers",
            ),
        ] {
            sqlx::query(sql)
                .bind(user_id)
                .bind(id.to_string())
                .execute(&mut *w.tx)
                .await
                .map_err(db(context))?;
        }
        let generation = bump_generation(&mut w.tx, user_id).await?;
        if let Some(audit) = audit {
            insert_audit(&mut w.tx, audit).await?;
        }
        w.commit("committing a delete", before, generation, |vecs| {
            vecs.remove(pk)
        })
        .await?;
        Ok(true)
    }

    async fn delete_matching(
        &self,
        at: Selection<'_>,
        audit: Option<&AuditRecord>,
    ) -> Result<Vec<MemoryId>, StoreError> {
        let user_id = at.scope.user_id().as_str();
        let mut w = self.begin_user_write(user_id, "starting a delete").await?;
        let before = generation(&mut w.tx, user_id).await?;
        // Current and closed rows alike (no `valid_to` condition), so not
        // through the scope index, which holds current rows only.
        let rows = sqlx::query(concat!(
            "SELECT m.pk, m.id FROM memories m \
             WHERE m.user_id = ?1 AND (?2 IS NULL OR m.agent_id = ?2) \
               AND (?3 IS NULL OR m.run_id = ?3) AND (?5 IS NULL OR m.created_at < ?5) AND ",
            metadata_matches!("?4")
        ))
        .bind(user_id)
        .bind(at.scope.agent_id())
        .bind(at.scope.run_id())
        .bind(at.filter_object().map(|f| f.to_string()))
        .bind(at.before.map(|t| t.timestamp_millis()))
        .fetch_all(&mut *w.tx)
        .await
        .map_err(db("selecting memories to delete"))?;
        let mut pks = Vec::with_capacity(rows.len());
        let mut ids = Vec::with_capacity(rows.len());
        for row in &rows {
            pks.push(
                row.try_get::<i64, _>("pk")
                    .map_err(db("selecting memories to delete"))?,
            );
            ids.push(parse_id(row)?);
        }
        let mut generation_after = before;
        if !pks.is_empty() {
            let pk_list = json_array(&pks);
            let id_list =
                serde_json::Value::from(ids.iter().map(ToString::to_string).collect::<Vec<_>>())
                    .to_string();
            // Vectors first: they are found through the memories. Triggers
            // drop the memories' postings as the rows go.
            for (sql, list, context) in [
                (
                    "DELETE FROM memory_vectors WHERE pk IN (SELECT value FROM json_each(?2))",
                    &pk_list,
                    "deleting vectors",
                ),
                (
                    "DELETE FROM memories WHERE user_id = ?1 \
                     AND pk IN (SELECT value FROM json_each(?2))",
                    &pk_list,
                    "deleting memories",
                ),
                (
                    "DELETE FROM memory_history WHERE user_id = ?1 \
                     AND memory_id IN (SELECT value FROM json_each(?2))",
                    &id_list,
                    "deleting history",
                ),
                // A deferred remember that stored any of them would bring
                // its text back.
                (
                    "DELETE FROM pending_extractions WHERE user_id = ?1 AND EXISTS \
                     (SELECT 1 FROM json_each(memory_ids) p \
                      WHERE p.value IN (SELECT value FROM json_each(?2)))",
                    &id_list,
                    "deleting deferred remembers",
                ),
            ] {
                sqlx::query(sql)
                    .bind(user_id)
                    .bind(list)
                    .execute(&mut *w.tx)
                    .await
                    .map_err(db(context))?;
            }
            generation_after = bump_generation(&mut w.tx, user_id).await?;
        }
        if let Some(audit) = audit {
            let mut audit = audit.clone();
            crate::audit::with_memories(&mut audit, ids.clone());
            insert_audit(&mut w.tx, &audit).await?;
        }
        let gone: HashSet<i64> = pks.into_iter().collect();
        w.commit("committing a delete", before, generation_after, |vecs| {
            vecs.remove_many(&gone)
        })
        .await?;
        Ok(ids)
    }

    async fn delete_user(
        &self,
        user_id: &str,
        audit: Option<&AuditRecord>,
    ) -> Result<u64, StoreError> {
        let _writer = self.write_lock.lock().await;
        let mut tx = self
            .pool
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(db("starting a delete"))?;
        // Vectors first: they are found through the memories. Triggers drop
        // the memories' postings as the rows go.
        let vectors = "DELETE FROM memory_vectors \
                       WHERE pk IN (SELECT pk FROM memories WHERE user_id = ?)";
        for_user(&mut *tx, vectors, user_id, "deleting vectors").await?;
        let memories = "DELETE FROM memories WHERE user_id = ?";
        let deleted = for_user(&mut *tx, memories, user_id, "deleting memories").await?;
        // The generation row goes too (no trace of the user is left). Other
        // processes see generation 0, differ from their copy, and reload.
        for (sql, context) in [
            (
                "DELETE FROM memory_history WHERE user_id = ?",
                "deleting history",
            ),
            (
                "DELETE FROM pending_extractions WHERE user_id = ?",
                "deleting deferred remembers",
            ),
            (
                "DELETE FROM user_generations WHERE user_id = ?",
                "deleting generation",
            ),
            (
                "DELETE FROM token_usage WHERE user_id = ?",
                "deleting token usage",
            ),
        ] {
            for_user(&mut *tx, sql, user_id, context).await?;
        }
        if let Some(audit) = audit {
            // The row says how many memories went.
            let mut audit = audit.clone();
            audit.memory_count = deleted;
            insert_audit(&mut tx, &audit).await?;
        }
        tx.commit().await.map_err(db("committing a delete"))?;
        self.index.drop_user(user_id);
        // The WAL still holds the pages the user's rows were written in:
        // copy it into the file (where secure_delete zeroed them) and empty
        // it. Readers in flight can keep part of it; the next checkpoint
        // finishes the job, so a busy answer is not an error.
        if let Err(e) = sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
            .execute(&self.pool)
            .await
        {
            tracing::warn!(error = %e, "checkpointing the WAL after an erasure failed");
        }
        Ok(deleted)
    }
}

/// The user's vector copy while a batch holds it. Invariant: it holds
/// what the batch's transaction holds; if the batch ends without a commit,
/// dropping the guard marks the copy stale, and the next read reloads it.
pub(super) struct CopyGuard {
    pub(super) vecs: tokio::sync::OwnedRwLockWriteGuard<UserVectors>,
    settled: bool,
}

impl CopyGuard {
    /// The transaction committed at `generation`: the copy is that generation's.
    fn settle(mut self, generation: i64) {
        self.vecs.generation = Some(generation);
        self.settled = true;
    }
}

impl Drop for CopyGuard {
    fn drop(&mut self) {
        if !self.settled {
            self.vecs.generation = None;
        }
    }
}

/// A [`WriteBatch`] on SQLite: one `BEGIN IMMEDIATE` transaction under the
/// writer lock, with the user's vector copy held for writing and changed
/// with each write, so that the batch deduplicates against its own memories.
pub(super) struct SqliteBatch<'a> {
    store: &'a SqliteStore,
    pub(super) user_id: String,
    _writer: tokio::sync::MutexGuard<'a, ()>,
    pub(super) tx: sqlx::Transaction<'static, sqlx::Sqlite>,
    pub(super) copy: CopyGuard,
    /// The user's generation after the batch's last write.
    pub(super) generation: i64,
}

#[async_trait]
impl WriteBatch for SqliteBatch<'_> {
    async fn insert(
        &mut self,
        new: NewMemory,
        dedup_threshold: f32,
    ) -> Result<InsertOutcome, StoreError> {
        same_user(&self.user_id, new.scope.user_id())?;
        let duplicate = self
            .store
            .find_duplicate(
                &mut self.tx,
                &self.copy.vecs,
                &new.embedding,
                &new.content,
                dedup_threshold,
            )
            .await?;
        if let Some((pk, similarity)) = duplicate {
            let existing = SqliteStore::fetch_memory(&mut self.tx, pk).await?;
            return Ok(InsertOutcome::Duplicate {
                existing,
                similarity,
            });
        }
        let now = Utc::now();
        let (pk, generation, terms) = SqliteStore::insert_row(&mut self.tx, &new, now).await?;
        keep(&mut self.copy.vecs, pk, &new, &terms);
        self.generation = generation;
        Ok(InsertOutcome::Added(new.stored_at(now)))
    }

    async fn update(
        &mut self,
        id: MemoryId,
        content: &str,
        embedding: &[f32],
        actor: &str,
    ) -> Result<Option<Memory>, StoreError> {
        let user_id = self.user_id.as_str();
        let tx = &mut self.tx;
        let Some((pk, old)) = SqliteStore::current(tx, user_id, id).await? else {
            return Ok(None);
        };
        if let Some(other) = SqliteStore::exact_repeat(tx, user_id, content, pk).await? {
            let existing = SqliteStore::fetch_memory(tx, other).await?;
            return Err(StoreError::Conflict(format!(
                "memory {} already holds this text; {id} was not changed",
                existing.id
            )));
        }
        let now = Utc::now().timestamp_millis();
        let terms = keywords::document_terms(content);
        sqlx::query(
            "UPDATE memories SET content = ?, content_hash = ?, updated_at = ? WHERE pk = ?",
        )
        .bind(content)
        .bind(content_hash_hex(content))
        .bind(now)
        .bind(pk)
        .execute(&mut **tx)
        .await
        .map_err(db("updating a memory"))?;
        sqlx::query("UPDATE memory_vectors SET embedding = ? WHERE pk = ?")
            .bind(encode_vector(embedding))
            .bind(pk)
            .execute(&mut **tx)
            .await
            .map_err(db("updating a vector"))?;
        let memory = SqliteStore::fetch_memory(tx, pk).await?;
        sqlx::query(
            "INSERT INTO memory_history (memory_id, user_id, event, old_content, new_content, \
             actor, created_at) VALUES (?, ?, 'UPDATE', ?, ?, ?, ?)",
        )
        .bind(id.to_string())
        .bind(user_id)
        .bind(&old)
        .bind(content)
        .bind(actor)
        .bind(now)
        .execute(&mut **tx)
        .await
        .map_err(db("recording history"))?;
        self.generation = bump_generation(tx, user_id).await?;
        self.copy.vecs.replace(pk, embedding, &terms);
        Ok(Some(memory))
    }

    async fn supersede(
        &mut self,
        old: MemoryId,
        new: NewMemory,
    ) -> Result<SupersedeOutcome, StoreError> {
        same_user(&self.user_id, new.scope.user_id())?;
        let user_id = self.user_id.as_str();
        let tx = &mut self.tx;
        let Some((old_pk, old_content)) = SqliteStore::current(tx, user_id, old).await? else {
            return Ok(SupersedeOutcome::NotFound);
        };
        if let Some(other) = SqliteStore::exact_repeat(tx, user_id, &new.content, old_pk).await? {
            let existing = SqliteStore::fetch_memory(tx, other).await?;
            return Ok(SupersedeOutcome::Duplicate(existing));
        }
        let now = Utc::now();
        let closed = Closed {
            id: old,
            pk: old_pk,
            content: &old_content,
        };
        let successor = Some(new.content.as_str());
        SqliteStore::close_row(tx, user_id, closed, successor, &new.actor, now).await?;
        let (pk, generation, terms) = SqliteStore::insert_row(tx, &new, now).await?;
        self.generation = generation;
        self.copy.vecs.remove(old_pk);
        keep(&mut self.copy.vecs, pk, &new, &terms);
        Ok(SupersedeOutcome::Superseded(new.stored_at(now)))
    }

    async fn close(&mut self, id: MemoryId, actor: &str) -> Result<bool, StoreError> {
        let user_id = self.user_id.as_str();
        let tx = &mut self.tx;
        let Some((pk, content)) = SqliteStore::current(tx, user_id, id).await? else {
            return Ok(false);
        };
        let closed = Closed {
            id,
            pk,
            content: &content,
        };
        SqliteStore::close_row(tx, user_id, closed, None, actor, Utc::now()).await?;
        self.generation = bump_generation(tx, user_id).await?;
        self.copy.vecs.remove(pk);
        Ok(true)
    }

    async fn import(&mut self, imported: ImportedMemory) -> Result<ImportOutcome, StoreError> {
        same_user(&self.user_id, imported.memory.scope.user_id())?;
        self.import_memory(imported).await
    }

    async fn add_pending(&mut self, pending: NewPending) -> Result<(), StoreError> {
        same_user(&self.user_id, pending.scope.user_id())?;
        // Not a memory: no generation moves.
        insert_pending(&mut self.tx, &pending).await
    }

    async fn audit(&mut self, record: &AuditRecord) -> Result<(), StoreError> {
        insert_audit(&mut self.tx, record).await
    }

    async fn commit(self: Box<Self>) -> Result<(), StoreError> {
        let Self {
            tx,
            copy,
            generation,
            ..
        } = *self;
        tx.commit().await.map_err(db("committing a write"))?;
        copy.settle(generation);
        Ok(())
    }
}
