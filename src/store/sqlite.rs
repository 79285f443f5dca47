//! The embedded store: one SQLite file (WAL), keyword postings scored by
//! BM25 ([`crate::keywords`]), and vectors as f32 blobs scanned through the
//! in-process [`VectorIndex`].
//!
//! Writes are serialised twice: an in-process mutex (no busy-waiting between
//! our own tasks) and `BEGIN IMMEDIATE` (SQLite's write lock, which also
//! serialises other processes on the same file). Deduplication runs inside
//! that transaction, so it is atomic. Every write bumps the user's generation
//! (from one store-wide sequence), which keeps the vector index honest and is
//! the user's [`Versions::version`] for caches.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePool, SqlitePoolOptions,
    SqliteRow, SqliteSynchronous,
};
use sqlx::{Connection, Row};

mod keyword_index;

use keyword_index::index_terms;

use super::vector_index::{Among, DEFAULT_BUDGET_BYTES, UserVectors, VectorIndex};
use super::{
    HISTORY_SELECT, HistoryEntry, Hit, InsertOutcome, Keys, NewMemory, NewPending, PENDING_SELECT,
    Pending, PendingQueue, Reads, Reports, Scored, Search, SearchScope, StatsCounts, Store,
    StoreError, SupersedeOutcome, UserExport, UserStats, Versions, Writes, assemble_export,
    parse_event,
};
use crate::embed::{Embedder, EmbedderIdentity, dot};
use crate::keywords;
use crate::model::{Memory, MemoryId, Metadata, Scope, details_differ};

/// Writes a new memory with its vector, keyword length and ADD history row, and
/// moves the user to the next write generation, in one round trip (its
/// postings follow: [`index_terms`]). Parameters:
/// ?1 id, ?2 vector blob, ?3 keyword length, ?4 actor, ?5 user, ?6 agent, ?7 run,
/// ?8 content, ?9 content hash, ?10 metadata, ?11 categories, ?12 time (ms).
///
/// Later statements read what they can from the new row, so each uses few
/// parameters: sqlx counts the unused numbers below a statement's highest one
/// as positional arguments across statements, and stops binding a statement
/// once that count passes the number of arguments (here it reaches 6 of 12).
const INSERT_MEMORY: &str = "\
    INSERT INTO memories (id, user_id, agent_id, run_id, content, content_hash, metadata, \
        categories, created_at, updated_at, valid_from, keyword_length) \
        VALUES (?1, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?12, ?12, ?3) RETURNING pk; \
    INSERT INTO memory_vectors (pk, embedding) SELECT pk, ?2 FROM memories WHERE id = ?1; \
    INSERT INTO memory_history (memory_id, user_id, event, old_content, new_content, actor, created_at) \
        SELECT id, user_id, 'ADD', NULL, content, ?4, created_at FROM memories WHERE id = ?1; \
    UPDATE write_seq SET value = value + 1 WHERE one = 1; \
    INSERT INTO user_generations (user_id, generation) \
        SELECT user_id, (SELECT value FROM write_seq WHERE one = 1) FROM memories WHERE id = ?1 \
        ON CONFLICT (user_id) DO UPDATE SET generation = excluded.generation \
        RETURNING generation;";

/// SQL condition: memory `m` holds every key of the JSON object bound at
/// parameter `$p` with an equal value (same JSON type and value), or `$p` is NULL.
macro_rules! metadata_matches {
    ($p:literal) => {
        concat!(
            "(",
            $p,
            " IS NULL OR NOT EXISTS (SELECT 1 FROM json_each(",
            $p,
            ") f \
             WHERE NOT EXISTS (SELECT 1 FROM json_each(m.metadata) mm \
             WHERE mm.key = f.key AND mm.type = f.type AND mm.atom IS f.atom)))"
        )
    };
}

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

/// How far below the threshold an approximate score may be and still get an exact check.
const DEDUP_MARGIN: f32 = 0.05;
/// A vector search re-ranks `limit * RERANK_FACTOR + RERANK_EXTRA` approximate
/// candidates by exact cosine.
const RERANK_FACTOR: usize = 2;
const RERANK_EXTRA: usize = 10;
/// How many approximate candidates get an exact dedup check.
const DEDUP_CANDIDATES: usize = 8;

/// The columns [`memory_from_row`] reads, from `memories` aliased as `m`.
const MEMORY_COLUMNS: &str = "m.id, m.user_id, m.agent_id, m.run_id, m.content, m.metadata, \
                              m.categories, m.created_at, m.updated_at";

/// A user's numbers (?1: the user) in one row, for [`StatsCounts`]: one
/// aggregate over their memories (through `memories_hash`, which holds
/// current and closed rows alike), history and deferred remembers; the
/// category counts as a JSON array of `[category, memories]`.
const STATS: &str = "\
    SELECT count(*) FILTER (WHERE m.valid_to IS NULL) AS memories, \
           count(*) FILTER (WHERE m.valid_to IS NOT NULL) AS superseded, \
           min(m.created_at) FILTER (WHERE m.valid_to IS NULL) AS oldest, \
           max(m.created_at) FILTER (WHERE m.valid_to IS NULL) AS newest, \
           coalesce(sum(octet_length(m.content) + octet_length(m.metadata)), 0) \
             + (SELECT coalesce(sum(coalesce(octet_length(h.old_content), 0) \
                                  + coalesce(octet_length(h.new_content), 0)), 0) \
                FROM memory_history h WHERE h.user_id = ?1) AS text_bytes, \
           (SELECT count(*) FROM memory_history h WHERE h.user_id = ?1) AS history_events, \
           (SELECT count(*) FROM pending_extractions p WHERE p.user_id = ?1) AS pending, \
           (SELECT json_group_array(json_array(c.category, c.n)) FROM ( \
                SELECT j.value AS category, count(DISTINCT cm.pk) AS n \
                FROM memories cm, json_each(cm.categories) j \
                WHERE cm.user_id = ?1 AND cm.valid_to IS NULL GROUP BY j.value) c) AS categories \
    FROM memories m WHERE m.user_id = ?1";

pub struct SqliteStore {
    pool: SqlitePool,
    embedder: EmbedderIdentity,
    index: VectorIndex,
    /// One writer at a time. Lock order, everywhere: `write_lock`, then a
    /// pool connection, then a user's entry in `index`. Nothing holding an
    /// index entry waits for a connection, so readers holding connections
    /// while they wait for an entry can never starve the writer holding it.
    write_lock: tokio::sync::Mutex<()>,
}

/// A current memory about to be closed: its id, pk and text.
#[derive(Clone, Copy)]
struct Closed<'a> {
    id: MemoryId,
    pk: i64,
    content: &'a str,
}

/// What a write to one user's memories holds, taken in the store's one lock
/// order (see `write_lock`): the writer lock, then a transaction, then the
/// user's in-process vectors.
struct UserWrite<'a> {
    _writer: tokio::sync::MutexGuard<'a, ()>,
    tx: sqlx::Transaction<'static, sqlx::Sqlite>,
    vecs: tokio::sync::OwnedRwLockWriteGuard<UserVectors>,
}

impl SqliteStore {
    async fn begin_user_write(
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

    /// Opens (creating if needed) the database at `url` (`sqlite://PATH`),
    /// applies migrations, and checks the embedder matches the stored one.
    pub async fn open(url: &str, embedder: EmbedderIdentity) -> Result<Self, StoreError> {
        let pool = connect(url).await?;
        let store = Self {
            pool,
            index: VectorIndex::new(embedder.dims, DEFAULT_BUDGET_BYTES),
            embedder,
            write_lock: tokio::sync::Mutex::new(()),
        };
        store.check_embedder().await?;
        keyword_index::ensure_index(&store.pool).await?;
        Ok(store)
    }

    /// Caps the memory the in-process vector copies may use (all users together).
    pub fn with_vector_cache_bytes(mut self, bytes: usize) -> Self {
        self.index = VectorIndex::new(self.embedder.dims, bytes);
        self
    }

    /// Rebuilds every stored vector with `embedder` and records it as the
    /// store's embedder. One write transaction: all or nothing. Running
    /// servers must be stopped first (they checked the embedder when they opened).
    pub async fn reembed(url: &str, embedder: &dyn Embedder) -> Result<u64, StoreError> {
        const BATCH: i64 = 256;
        let identity = embedder.identity();
        let pool = connect(url).await?;
        let mut tx = pool
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(db("starting the re-embed"))?;
        let mut after = 0i64;
        let mut done = 0u64;
        loop {
            let rows: Vec<(i64, String)> =
                sqlx::query_as("SELECT pk, content FROM memories WHERE pk > ? ORDER BY pk LIMIT ?")
                    .bind(after)
                    .bind(BATCH)
                    .fetch_all(&mut *tx)
                    .await
                    .map_err(db("reading memories to re-embed"))?;
            let Some(&(last, _)) = rows.last() else { break };
            let texts: Vec<String> = rows.iter().map(|(_, t)| t.clone()).collect();
            let vectors = embedder.embed_documents(&texts).await?;
            for ((pk, _), vector) in rows.iter().zip(&vectors) {
                sqlx::query("UPDATE memory_vectors SET embedding = ? WHERE pk = ?")
                    .bind(encode_vector(vector))
                    .bind(pk)
                    .execute(&mut *tx)
                    .await
                    .map_err(db("storing a re-embedded vector"))?;
            }
            done += rows.len() as u64;
            after = last;
        }
        sqlx::query(
            "INSERT INTO store_info (key, value) VALUES ('embedder', ?) \
             ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        )
        .bind(identity.to_string())
        .execute(&mut *tx)
        .await
        .map_err(db("recording the store's embedder"))?;
        // Every user's vectors changed: move all generations past any cached copy.
        advance_every_generation(&mut tx).await?;
        tx.commit().await.map_err(db("committing the re-embed"))?;
        pool.close().await;
        Ok(done)
    }

    /// Records the embedder on first open; refuses a different one afterwards.
    async fn check_embedder(&self) -> Result<(), StoreError> {
        let configured = self.embedder.to_string();
        // First open records it; a concurrent first open loses the race harmlessly.
        sqlx::query(
            "INSERT INTO store_info (key, value) VALUES ('embedder', ?) ON CONFLICT (key) DO NOTHING",
        )
        .bind(&configured)
        .execute(&self.pool)
        .await
        .map_err(db("recording the store's embedder"))?;
        let stored: String =
            sqlx::query_scalar("SELECT value FROM store_info WHERE key = 'embedder'")
                .fetch_one(&self.pool)
                .await
                .map_err(db("reading the store's embedder"))?;
        if stored != configured {
            return Err(StoreError::EmbedderMismatch { stored, configured });
        }
        Ok(())
    }

    /// Keeps the in-process vectors of `user_id` at `generation`, reloading
    /// from `conn` when they are behind.
    async fn sync_vectors(
        &self,
        conn: &mut SqliteConnection,
        user_id: &str,
        vecs: &mut UserVectors,
    ) -> Result<i64, StoreError> {
        let generation = generation(conn, user_id).await?;
        if vecs.generation == Some(generation) {
            return Ok(generation);
        }
        let rows = sqlx::query(
            "SELECT m.pk, m.id, m.agent_id, m.run_id, v.embedding \
             FROM memories m JOIN memory_vectors v ON v.pk = m.pk \
             WHERE m.user_id = ? AND m.valid_to IS NULL",
        )
        .bind(user_id)
        .fetch_all(&mut *conn)
        .await
        .map_err(db("loading vectors"))?;
        vecs.reset(generation);
        for row in &rows {
            let embedding =
                decode_vector(row.try_get("embedding").map_err(db("reading a vector"))?)?;
            if embedding.len() != self.embedder.dims {
                return Err(StoreError::Corrupt(format!(
                    "a vector has {} dims, the store {}",
                    embedding.len(),
                    self.embedder.dims
                )));
            }
            let agent_id: Option<&str> = row.try_get("agent_id").map_err(db("reading a scope"))?;
            let run_id: Option<&str> = row.try_get("run_id").map_err(db("reading a scope"))?;
            vecs.push(
                row.try_get("pk").map_err(db("reading a vector"))?,
                parse_id(row)?,
                agent_id,
                run_id,
                &embedding,
            );
        }
        tracing::debug!(user_id, rows = rows.len(), generation, "loaded vectors");
        Ok(generation)
    }

    /// The most similar current memory of the user that reaches `threshold`
    /// and states the same details (numbers, negations) as `content`.
    async fn find_duplicate(
        &self,
        conn: &mut SqliteConnection,
        vecs: &UserVectors,
        embedding: &[f32],
        content: &str,
        threshold: f32,
    ) -> Result<Option<(i64, f32)>, StoreError> {
        let candidates: Vec<i64> = vecs
            .top_k(embedding, DEDUP_CANDIDATES)
            .into_iter()
            .filter(|s| s.score >= threshold - DEDUP_MARGIN)
            .map(|s| s.pk)
            .collect();
        if candidates.is_empty() {
            return Ok(None);
        }
        let rows = sqlx::query(
            "SELECT v.pk, v.embedding, m.content FROM json_each(?) j \
             CROSS JOIN memory_vectors v ON v.pk = j.value JOIN memories m ON m.pk = v.pk",
        )
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

    /// The pks of the user's current memories that a metadata filter (and
    /// the scope's agent and run) select: an index-only read, no vectors
    /// decoded. Agent and run alone need no list: the searches filter by them.
    async fn scoped_pks(
        &self,
        conn: &mut SqliteConnection,
        at: SearchScope<'_>,
    ) -> Result<HashSet<i64>, StoreError> {
        // One row holding a JSON array: sqlx hands rows over one at a time
        // between threads, which costs more than the query for thousands of rows.
        // The scope index holds agent and run, so narrowing needs no table reads
        // (left to itself the planner picked the recency index: 4x slower).
        let pks: String = sqlx::query_scalar(concat!(
            "SELECT json_group_array(m.pk) FROM memories m INDEXED BY memories_scope \
             WHERE m.user_id = ?1 AND m.valid_to IS NULL \
               AND (?2 IS NULL OR m.agent_id = ?2) AND (?3 IS NULL OR m.run_id = ?3) AND ",
            metadata_matches!("?4")
        ))
        .bind(&at.scope.user_id)
        .bind(&at.scope.agent_id)
        .bind(&at.scope.run_id)
        .bind(filter_json(at))
        .fetch_one(&mut *conn)
        .await
        .map_err(db("narrowing the search"))?;
        serde_json::from_str(&pks).map_err(|e| StoreError::Corrupt(format!("pk list: {e}")))
    }

    /// Writes `new` (row, vector, keyword postings, ADD history) and moves
    /// the user to the next generation; returns the row's pk and that generation.
    async fn insert_row(
        conn: &mut SqliteConnection,
        new: &NewMemory,
        now: DateTime<Utc>,
    ) -> Result<(i64, i64), StoreError> {
        let metadata =
            serde_json::to_string(&new.metadata).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let categories = serde_json::to_string(&new.categories)
            .map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let terms = keywords::document_terms(&new.content);
        // Rows come back from the two RETURNING clauses: the pk, then the generation.
        let rows = sqlx::query(INSERT_MEMORY)
            .bind(new.id.to_string())
            .bind(encode_vector(&new.embedding))
            .bind(i64::from(terms.length))
            .bind(&new.actor)
            .bind(&new.scope.user_id)
            .bind(&new.scope.agent_id)
            .bind(&new.scope.run_id)
            .bind(&new.content)
            .bind(content_hash(&new.content))
            .bind(&metadata)
            .bind(&categories)
            .bind(now.timestamp_millis())
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
        index_terms(conn, pk, &terms).await?;
        Ok((pk, generation))
    }

    /// The pk and text of a current memory of the user.
    async fn current(
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
    async fn exact_repeat(
        conn: &mut SqliteConnection,
        user_id: &str,
        content: &str,
        except: i64,
    ) -> Result<Option<i64>, StoreError> {
        sqlx::query_scalar(
            "SELECT pk FROM memories WHERE user_id = ? AND content_hash = ? \
             AND valid_to IS NULL AND pk <> ? LIMIT 1",
        )
        .bind(user_id)
        .bind(content_hash(content))
        .bind(except)
        .fetch_optional(&mut *conn)
        .await
        .map_err(db("checking for duplicates"))
    }

    /// Closes a current memory (`valid_to` = now; a trigger takes it out of
    /// the keyword index) and records a SUPERSEDE history row naming its
    /// `successor`'s text, if any. The caller moves the generation and drops
    /// the vector from its in-process copy.
    async fn close_row(
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

    async fn fetch_memory(conn: &mut SqliteConnection, pk: i64) -> Result<Memory, StoreError> {
        let sql = format!("SELECT {MEMORY_COLUMNS} FROM memories m WHERE m.pk = ?");
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(pk)
            .fetch_one(&mut *conn)
            .await
            .map_err(db("reading a memory"))?;
        memory_from_row(&row)
    }
}

impl Store for SqliteStore {
    fn embedder(&self) -> &EmbedderIdentity {
        &self.embedder
    }
}

#[async_trait]
impl Writes for SqliteStore {
    async fn insert(
        &self,
        new: NewMemory,
        dedup_threshold: f32,
    ) -> Result<InsertOutcome, StoreError> {
        let UserWrite {
            _writer,
            mut tx,
            mut vecs,
        } = self
            .begin_user_write(&new.scope.user_id, "starting a write")
            .await?;

        self.sync_vectors(&mut tx, &new.scope.user_id, &mut vecs)
            .await?;
        if let Some((pk, similarity)) = self
            .find_duplicate(
                &mut tx,
                &vecs,
                &new.embedding,
                &new.content,
                dedup_threshold,
            )
            .await?
        {
            let existing = Self::fetch_memory(&mut tx, pk).await?;
            tx.rollback().await.map_err(db("ending a read"))?;
            return Ok(InsertOutcome::Duplicate {
                existing,
                similarity,
            });
        }

        let now = Utc::now();
        let (pk, generation) = Self::insert_row(&mut tx, &new, now).await?;
        tx.commit().await.map_err(db("committing a memory"))?;

        let scope = &new.scope;
        vecs.push(
            pk,
            new.id,
            scope.agent_id.as_deref(),
            scope.run_id.as_deref(),
            &new.embedding,
        );
        vecs.generation = Some(generation);
        Ok(InsertOutcome::Added(new.stored_at(now)))
    }

    async fn delete(&self, user_id: &str, id: MemoryId) -> Result<bool, StoreError> {
        let UserWrite {
            _writer,
            mut tx,
            mut vecs,
        } = self.begin_user_write(user_id, "starting a delete").await?;
        let before = generation(&mut tx, user_id).await?;
        let pk: Option<i64> =
            sqlx::query_scalar("SELECT pk FROM memories WHERE user_id = ? AND id = ?")
                .bind(user_id)
                .bind(id.to_string())
                .fetch_optional(&mut *tx)
                .await
                .map_err(db("finding a memory"))?;
        let Some(pk) = pk else {
            return Ok(false);
        };
        sqlx::query("DELETE FROM memory_vectors WHERE pk = ?")
            .bind(pk)
            .execute(&mut *tx)
            .await
            .map_err(db("deleting a vector"))?;
        sqlx::query("DELETE FROM memories WHERE pk = ?")
            .bind(pk)
            .execute(&mut *tx)
            .await
            .map_err(db("deleting a memory"))?;
        sqlx::query("DELETE FROM memory_history WHERE user_id = ? AND memory_id = ?")
            .bind(user_id)
            .bind(id.to_string())
            .execute(&mut *tx)
            .await
            .map_err(db("deleting history"))?;
        // A deferred remember that stored it would bring the text back.
        sqlx::query(
            "DELETE FROM pending_extractions WHERE user_id = ?1 \
             AND EXISTS (SELECT 1 FROM json_each(memory_ids) WHERE value = ?2)",
        )
        .bind(user_id)
        .bind(id.to_string())
        .execute(&mut *tx)
        .await
        .map_err(db("deleting deferred remembers"))?;
        let generation = bump_generation(&mut tx, user_id).await?;
        tx.commit().await.map_err(db("committing a delete"))?;
        if vecs.generation == Some(before) {
            vecs.remove(pk);
            vecs.generation = Some(generation);
        }
        Ok(true)
    }

    async fn delete_user(&self, user_id: &str) -> Result<u64, StoreError> {
        let _writer = self.write_lock.lock().await;
        let mut tx = self
            .pool
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(db("starting a delete"))?;
        // Triggers drop the memories' postings as the rows go.
        sqlx::query(
            "DELETE FROM memory_vectors WHERE pk IN (SELECT pk FROM memories WHERE user_id = ?)",
        )
        .bind(user_id)
        .execute(&mut *tx)
        .await
        .map_err(db("deleting vectors"))?;
        let deleted = sqlx::query("DELETE FROM memories WHERE user_id = ?")
            .bind(user_id)
            .execute(&mut *tx)
            .await
            .map_err(db("deleting memories"))?
            .rows_affected();
        sqlx::query("DELETE FROM memory_history WHERE user_id = ?")
            .bind(user_id)
            .execute(&mut *tx)
            .await
            .map_err(db("deleting history"))?;
        sqlx::query("DELETE FROM pending_extractions WHERE user_id = ?")
            .bind(user_id)
            .execute(&mut *tx)
            .await
            .map_err(db("deleting deferred remembers"))?;
        sqlx::query("DELETE FROM keyword_users WHERE user_id = ?")
            .bind(user_id)
            .execute(&mut *tx)
            .await
            .map_err(db("deleting keyword statistics"))?;
        // The generation row goes too (no trace of the user is left). Other
        // processes see generation 0, differ from their copy, and reload.
        sqlx::query("DELETE FROM user_generations WHERE user_id = ?")
            .bind(user_id)
            .execute(&mut *tx)
            .await
            .map_err(db("deleting generation"))?;
        tx.commit().await.map_err(db("committing a delete"))?;
        self.index.drop_user(user_id);
        Ok(deleted)
    }

    async fn update(
        &self,
        user_id: &str,
        id: MemoryId,
        content: &str,
        embedding: &[f32],
        actor: &str,
    ) -> Result<Option<Memory>, StoreError> {
        let UserWrite {
            _writer,
            mut tx,
            mut vecs,
        } = self.begin_user_write(user_id, "starting an update").await?;
        let before = generation(&mut tx, user_id).await?;
        let Some((pk, old)) = Self::current(&mut tx, user_id, id).await? else {
            return Ok(None);
        };
        if let Some(other) = Self::exact_repeat(&mut tx, user_id, content, pk).await? {
            let existing = Self::fetch_memory(&mut tx, other).await?;
            return Err(StoreError::Conflict(format!(
                "memory {} already holds this text; {id} was not changed",
                existing.id
            )));
        }
        let now = Utc::now().timestamp_millis();
        let terms = keywords::document_terms(content);
        // A trigger drops the old text's postings; the new ones follow.
        sqlx::query(
            "UPDATE memories SET content = ?, content_hash = ?, keyword_length = ?, \
             updated_at = ? WHERE pk = ?",
        )
        .bind(content)
        .bind(content_hash(content))
        .bind(i64::from(terms.length))
        .bind(now)
        .bind(pk)
        .execute(&mut *tx)
        .await
        .map_err(db("updating a memory"))?;
        sqlx::query("UPDATE memory_vectors SET embedding = ? WHERE pk = ?")
            .bind(encode_vector(embedding))
            .bind(pk)
            .execute(&mut *tx)
            .await
            .map_err(db("updating a vector"))?;
        index_terms(&mut tx, pk, &terms).await?;
        let memory = Self::fetch_memory(&mut tx, pk).await?;
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
        .execute(&mut *tx)
        .await
        .map_err(db("recording history"))?;
        let generation = bump_generation(&mut tx, user_id).await?;
        tx.commit().await.map_err(db("committing an update"))?;
        if vecs.generation == Some(before) {
            vecs.replace(pk, embedding);
            vecs.generation = Some(generation);
        }
        Ok(Some(memory))
    }

    async fn supersede(
        &self,
        old: MemoryId,
        new: NewMemory,
    ) -> Result<SupersedeOutcome, StoreError> {
        let user_id = new.scope.user_id.clone();
        let UserWrite {
            _writer,
            mut tx,
            mut vecs,
        } = self.begin_user_write(&user_id, "starting a write").await?;
        let before = generation(&mut tx, &user_id).await?;
        let Some((old_pk, old_content)) = Self::current(&mut tx, &user_id, old).await? else {
            return Ok(SupersedeOutcome::NotFound);
        };
        if let Some(other) = Self::exact_repeat(&mut tx, &user_id, &new.content, old_pk).await? {
            return Ok(SupersedeOutcome::Duplicate(
                Self::fetch_memory(&mut tx, other).await?,
            ));
        }
        let now = Utc::now();
        let closed = Closed {
            id: old,
            pk: old_pk,
            content: &old_content,
        };
        Self::close_row(
            &mut tx,
            &user_id,
            closed,
            Some(&new.content),
            &new.actor,
            now,
        )
        .await?;
        let (pk, generation) = Self::insert_row(&mut tx, &new, now).await?;
        tx.commit().await.map_err(db("committing a supersede"))?;
        if vecs.generation == Some(before) {
            vecs.remove(old_pk);
            let scope = &new.scope;
            vecs.push(
                pk,
                new.id,
                scope.agent_id.as_deref(),
                scope.run_id.as_deref(),
                &new.embedding,
            );
            vecs.generation = Some(generation);
        }
        Ok(SupersedeOutcome::Superseded(new.stored_at(now)))
    }

    async fn close(&self, user_id: &str, id: MemoryId, actor: &str) -> Result<bool, StoreError> {
        let UserWrite {
            _writer,
            mut tx,
            mut vecs,
        } = self.begin_user_write(user_id, "starting a write").await?;
        let before = generation(&mut tx, user_id).await?;
        let Some((pk, content)) = Self::current(&mut tx, user_id, id).await? else {
            return Ok(false);
        };
        let closed = Closed {
            id,
            pk,
            content: &content,
        };
        Self::close_row(&mut tx, user_id, closed, None, actor, Utc::now()).await?;
        let generation = bump_generation(&mut tx, user_id).await?;
        tx.commit().await.map_err(db("committing a close"))?;
        if vecs.generation == Some(before) {
            vecs.remove(pk);
            vecs.generation = Some(generation);
        }
        Ok(true)
    }
}

#[async_trait]
impl Reads for SqliteStore {
    async fn get_many(&self, user_id: &str, ids: &[MemoryId]) -> Result<Vec<Memory>, StoreError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let id_list: Vec<String> = ids.iter().map(ToString::to_string).collect();
        let sql = format!(
            "SELECT {MEMORY_COLUMNS} FROM json_each(?) j CROSS JOIN memories m ON m.id = j.value \
             WHERE m.user_id = ?"
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(serde_json::Value::from(id_list).to_string())
            .bind(user_id)
            .fetch_all(&self.pool)
            .await
            .map_err(db("reading memories"))?;
        rows.iter().map(memory_from_row).collect()
    }

    async fn recent(&self, scope: &Scope, limit: usize) -> Result<(Vec<Memory>, u64), StoreError> {
        const WHERE: &str = "WHERE m.user_id = ?1 AND m.valid_to IS NULL \
                             AND (?2 IS NULL OR m.agent_id = ?2) AND (?3 IS NULL OR m.run_id = ?3)";
        let sql = format!(
            "SELECT {MEMORY_COLUMNS} FROM memories m {WHERE} \
             ORDER BY m.updated_at DESC, m.pk DESC LIMIT ?4"
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(&scope.user_id)
            .bind(&scope.agent_id)
            .bind(&scope.run_id)
            .bind(limit as i64)
            .fetch_all(&self.pool)
            .await
            .map_err(db("listing memories"))?;
        let total: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT COUNT(*) FROM memories m {WHERE}"
        )))
        .bind(&scope.user_id)
        .bind(&scope.agent_id)
        .bind(&scope.run_id)
        .fetch_one(&self.pool)
        .await
        .map_err(db("counting memories"))?;
        let memories = rows.iter().map(memory_from_row).collect::<Result<_, _>>()?;
        Ok((memories, total.max(0) as u64))
    }

    async fn history(&self, user_id: &str, id: MemoryId) -> Result<Vec<HistoryEntry>, StoreError> {
        let sql = format!("{HISTORY_SELECT} WHERE user_id = ? AND memory_id = ? ORDER BY pk");
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(user_id)
            .bind(id.to_string())
            .fetch_all(&self.pool)
            .await
            .map_err(db("reading history"))?;
        rows.iter().map(history_from_row).collect()
    }
}

#[async_trait]
impl Search for SqliteStore {
    async fn vector_search(
        &self,
        at: SearchScope<'_>,
        query: &[f32],
        limit: usize,
    ) -> Result<Vec<Hit>, StoreError> {
        let user_id = &at.scope.user_id;
        let entry = self.index.user(user_id);
        let mut conn = self.pool.acquire().await.map_err(db("searching vectors"))?;
        // Agent and run narrow the scan by the copy's own scopes; only a
        // metadata filter needs the rows that pass it.
        let allowed = if at.filter.is_empty() {
            None
        } else {
            Some(self.scoped_pks(&mut conn, at).await?)
        };
        let among = among(at, allowed.as_ref());
        let pool = limit * RERANK_FACTOR + RERANK_EXTRA;
        // Optimistic: scan the copy as it is, then read the user's generation
        // and the candidates' exact vectors in one statement (one snapshot).
        // A copy behind the database is reloaded and the search redone.
        let (seen, approx) = {
            let vecs = entry.read().await;
            (vecs.generation, vecs.top_k_among(query, pool, among))
        };
        let pks: Vec<i64> = approx.iter().map(|s| s.pk).collect();
        let (generation, exact) = exact_scores(&mut conn, user_id, &pks, query).await?;
        let (approx, exact) = if seen == Some(generation) {
            (approx, exact)
        } else {
            let mut vecs = entry.write().await;
            let mut tx = conn.begin().await.map_err(db("loading vectors"))?;
            let generation = self.sync_vectors(&mut tx, user_id, &mut vecs).await?;
            let approx = vecs.top_k_among(query, pool, among);
            let pks: Vec<i64> = approx.iter().map(|s| s.pk).collect();
            let (read_at, exact) = exact_scores(&mut tx, user_id, &pks, query).await?;
            tx.commit().await.map_err(db("loading vectors"))?;
            debug_assert_eq!(read_at, generation, "one transaction, one generation");
            (approx, exact)
        };
        let exact: HashMap<i64, f32> = exact.into_iter().collect();
        let mut hits: Vec<Hit> = approx
            .iter()
            .filter_map(|s| exact.get(&s.pk).map(|&score| Hit { id: s.id, score }))
            .collect();
        hits.sort_by(|a, b| b.score.total_cmp(&a.score));
        hits.truncate(limit);
        Ok(hits)
    }

    async fn keyword_search(
        &self,
        at: SearchScope<'_>,
        query: &str,
        limit: usize,
    ) -> Result<Vec<Hit>, StoreError> {
        let terms = keywords::query_terms(query);
        if terms.is_empty() || limit == 0 {
            return Ok(Vec::new());
        }
        let mut conn = self
            .pool
            .acquire()
            .await
            .map_err(db("searching keywords"))?;
        // Agent and run narrow the postings read; a metadata filter is
        // checked on the memories that match.
        let mut scored = keyword_index::score_all(&mut conn, at.scope, &terms).await?;
        if !at.filter.is_empty() {
            let allowed = self.scoped_pks(&mut conn, at).await?;
            scored.retain(|(pk, _)| allowed.contains(pk));
        }
        scored.sort_by(|a, b| b.1.total_cmp(&a.1));
        // The best `limit` and any tied with the last of them: ties are
        // broken by id, which only the rows know.
        if let Some(&(_, cut)) = scored.get(limit - 1) {
            scored.retain(|&(_, score)| score >= cut);
        }
        let scores: HashMap<i64, f32> = scored.into_iter().collect();
        let pks: Vec<i64> = scores.keys().copied().collect();
        let rows = sqlx::query(
            "SELECT m.pk, m.id FROM json_each(?) j CROSS JOIN memories m ON m.pk = j.value \
             WHERE m.valid_to IS NULL",
        )
        .bind(json_array(&pks))
        .fetch_all(&mut *conn)
        .await
        .map_err(db("reading keyword hits"))?;
        let mut hits = rows
            .iter()
            .map(|row| {
                let pk: i64 = row.try_get("pk").map_err(db("reading a keyword hit"))?;
                Ok(Hit {
                    id: parse_id(row)?,
                    score: scores.get(&pk).copied().unwrap_or(0.0),
                })
            })
            .collect::<Result<Vec<Hit>, StoreError>>()?;
        hits.sort_by(|a, b| b.score.total_cmp(&a.score).then(a.id.cmp(&b.id)));
        hits.truncate(limit);
        Ok(hits)
    }

    /// One pass instead of the provided three steps: the keyword relevance of
    /// every match (which BM25 computes anyway), the in-process vector scan,
    /// and one statement for the exact cosine and id of every candidate of
    /// either signal.
    async fn candidates(
        &self,
        at: SearchScope<'_>,
        vector: &[f32],
        query: &str,
        depth: usize,
    ) -> Result<Vec<Scored>, StoreError> {
        let user_id = &at.scope.user_id;
        let terms = keywords::query_terms(query);
        let entry = self.index.user(user_id);
        let mut conn = self.pool.acquire().await.map_err(db("searching"))?;
        // Agent and run narrow the scan by the copy's own scopes; only a
        // metadata filter needs the rows that pass it.
        let allowed = if at.filter.is_empty() {
            None
        } else {
            Some(self.scoped_pks(&mut conn, at).await?)
        };
        let among = among(at, allowed.as_ref());
        let mut keyword: HashMap<i64, f32> = if terms.is_empty() {
            HashMap::new()
        } else {
            keyword_index::score_all(&mut conn, at.scope, &terms)
                .await?
                .into_iter()
                .collect()
        };
        if let Some(allowed) = &allowed {
            keyword.retain(|pk, _| allowed.contains(pk));
        }
        let by_keyword = best_with_ties(&keyword, depth);
        // As in vector_search: scan the copy as it is, check its generation
        // in the statement that reads the exact vectors, reload when behind.
        let pool = depth * RERANK_FACTOR + RERANK_EXTRA;
        let (seen, approx) = {
            let vecs = entry.read().await;
            (vecs.generation, vecs.top_k_among(vector, pool, among))
        };
        let union = |approx: &[super::vector_index::Scored]| -> Vec<i64> {
            let mut pks: Vec<i64> = approx
                .iter()
                .map(|s| s.pk)
                .chain(by_keyword.iter().copied())
                .collect();
            pks.sort_unstable();
            pks.dedup();
            pks
        };
        let (generation, exact) =
            exact_scores_and_ids(&mut conn, user_id, &union(&approx), vector).await?;
        let (approx, exact) = if seen == Some(generation) {
            (approx, exact)
        } else {
            let mut vecs = entry.write().await;
            let mut tx = conn.begin().await.map_err(db("loading vectors"))?;
            self.sync_vectors(&mut tx, user_id, &mut vecs).await?;
            let approx = vecs.top_k_among(vector, pool, among);
            let (_, exact) =
                exact_scores_and_ids(&mut tx, user_id, &union(&approx), vector).await?;
            tx.commit().await.map_err(db("loading vectors"))?;
            (approx, exact)
        };
        let exact: HashMap<i64, (MemoryId, f32)> = exact
            .into_iter()
            .map(|(pk, id, cosine)| (pk, (id, cosine)))
            .collect();
        let mut by_vector: Vec<(i64, f32)> = approx
            .iter()
            .filter_map(|s| exact.get(&s.pk).map(|&(_, cosine)| (s.pk, cosine)))
            .collect();
        by_vector.sort_by(|a, b| b.1.total_cmp(&a.1));
        by_vector.truncate(depth);
        // The keyword side cut at `depth` as keyword_search cuts it: equal
        // scores in id order (the ids came with the vectors).
        let mut by_keyword: Vec<(i64, f32, MemoryId)> = by_keyword
            .iter()
            .filter_map(|pk| {
                let (id, _) = exact.get(pk)?;
                Some((*pk, keyword.get(pk).copied().unwrap_or(0.0), *id))
            })
            .collect();
        by_keyword.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.2.cmp(&b.2)));
        by_keyword.truncate(depth);
        let chosen: HashSet<i64> = by_vector
            .iter()
            .map(|(pk, _)| *pk)
            .chain(by_keyword.iter().map(|(pk, ..)| *pk))
            .collect();
        Ok(chosen
            .into_iter()
            .filter_map(|pk| {
                exact.get(&pk).map(|&(id, similarity)| Scored {
                    id,
                    similarity,
                    keyword: keyword.get(&pk).copied().unwrap_or(0.0),
                })
            })
            .collect())
    }

    async fn score(
        &self,
        user_id: &str,
        ids: &[MemoryId],
        vector: &[f32],
        query: &str,
    ) -> Result<Vec<Scored>, StoreError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let id_list: Vec<String> = ids.iter().map(ToString::to_string).collect();
        let mut conn = self.pool.acquire().await.map_err(db("scoring memories"))?;
        // One read transaction: one snapshot for rows, vectors and postings.
        let mut tx = conn.begin().await.map_err(db("scoring memories"))?;
        let rows = sqlx::query(
            "SELECT m.pk, m.id FROM json_each(?) j CROSS JOIN memories m ON m.id = j.value \
             WHERE m.user_id = ? AND m.valid_to IS NULL",
        )
        .bind(serde_json::Value::from(id_list).to_string())
        .bind(user_id)
        .fetch_all(&mut *tx)
        .await
        .map_err(db("scoring memories"))?;
        let mut found: Vec<(i64, MemoryId)> = Vec::with_capacity(rows.len());
        for row in &rows {
            found.push((
                row.try_get("pk").map_err(db("scoring memories"))?,
                parse_id(row)?,
            ));
        }
        let pks: Vec<i64> = found.iter().map(|(pk, _)| *pk).collect();
        let (_, similarities) = exact_scores(&mut tx, user_id, &pks, vector).await?;
        let similarities: HashMap<i64, f32> = similarities.into_iter().collect();
        let terms = keywords::query_terms(query);
        let keyword = if terms.is_empty() {
            HashMap::new()
        } else {
            keyword_index::score_pks(&mut tx, user_id, &terms, &pks).await?
        };
        tx.commit().await.map_err(db("scoring memories"))?;
        Ok(found
            .into_iter()
            .map(|(pk, id)| Scored {
                id,
                similarity: similarities.get(&pk).copied().unwrap_or(0.0),
                keyword: keyword.get(&pk).copied().unwrap_or(0.0),
            })
            .collect())
    }
}

#[async_trait]
impl PendingQueue for SqliteStore {
    async fn add_pending(&self, pending: NewPending) -> Result<(), StoreError> {
        let input = serde_json::to_string(&pending.input)
            .map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let metadata = serde_json::to_string(&pending.metadata)
            .map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let memory_ids: Vec<String> = pending.memory_ids.iter().map(ToString::to_string).collect();
        let memory_ids = serde_json::Value::from(memory_ids).to_string();
        // Not a memory: no generation moves.
        let _writer = self.write_lock.lock().await;
        sqlx::query(
            "INSERT INTO pending_extractions (id, user_id, agent_id, run_id, input, metadata, \
             infer, memory_ids, error, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(pending.id.to_string())
        .bind(&pending.scope.user_id)
        .bind(&pending.scope.agent_id)
        .bind(&pending.scope.run_id)
        .bind(input)
        .bind(metadata)
        .bind(pending.infer)
        .bind(memory_ids)
        .bind(&pending.error)
        .bind(Utc::now().timestamp_millis())
        .execute(&self.pool)
        .await
        .map_err(db("storing a deferred remember"))?;
        Ok(())
    }

    async fn pending(&self, limit: usize) -> Result<(Vec<Pending>, u64), StoreError> {
        // One read transaction: the count and the rows from one snapshot.
        let mut tx = self
            .pool
            .begin()
            .await
            .map_err(db("reading deferred remembers"))?;
        let sql = format!("{PENDING_SELECT} ORDER BY created_at, id LIMIT ?");
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(i64::try_from(limit).unwrap_or(i64::MAX))
            .fetch_all(&mut *tx)
            .await
            .map_err(db("reading deferred remembers"))?;
        let total: i64 = sqlx::query_scalar("SELECT count(*) FROM pending_extractions")
            .fetch_one(&mut *tx)
            .await
            .map_err(db("counting deferred remembers"))?;
        tx.rollback()
            .await
            .map_err(db("reading deferred remembers"))?;
        let pending = rows
            .iter()
            .map(pending_from_row)
            .collect::<Result<_, _>>()?;
        Ok((pending, total.max(0) as u64))
    }

    async fn finish_pending(&self, user_id: &str, id: uuid::Uuid) -> Result<bool, StoreError> {
        let _writer = self.write_lock.lock().await;
        let done = sqlx::query("DELETE FROM pending_extractions WHERE user_id = ? AND id = ?")
            .bind(user_id)
            .bind(id.to_string())
            .execute(&self.pool)
            .await
            .map_err(db("dropping a deferred remember"))?
            .rows_affected();
        Ok(done > 0)
    }

    async fn retry_pending(
        &self,
        user_id: &str,
        id: uuid::Uuid,
        error: &str,
    ) -> Result<(), StoreError> {
        let _writer = self.write_lock.lock().await;
        sqlx::query(
            "UPDATE pending_extractions SET attempts = attempts + 1, error = ? \
             WHERE user_id = ? AND id = ?",
        )
        .bind(error)
        .bind(user_id)
        .bind(id.to_string())
        .execute(&self.pool)
        .await
        .map_err(db("recording a failed re-extraction"))?;
        Ok(())
    }
}

#[async_trait]
impl Keys for SqliteStore {
    async fn add_key(&self, key: &super::ApiKey) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO api_keys (id, prefix, hash, user_id, label, created_at, revoked_at) \
             VALUES (?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(key.id.to_string())
        .bind(&key.prefix)
        .bind(&key.hash)
        .bind(&key.user_id)
        .bind(&key.label)
        .bind(key.created_at.timestamp_millis())
        .bind(key.revoked_at.map(|t| t.timestamp_millis()))
        .execute(&self.pool)
        .await
        .map_err(db("storing an API key"))?;
        Ok(())
    }

    async fn keys(&self) -> Result<Vec<super::ApiKey>, StoreError> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "{} ORDER BY created_at, id",
            super::KEY_SELECT
        )))
        .fetch_all(&self.pool)
        .await
        .map_err(db("listing API keys"))?;
        rows.iter().map(key_from_row).collect()
    }

    async fn active_key(&self, hash: &str) -> Result<Option<super::ApiKey>, StoreError> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "{} WHERE hash = ? AND revoked_at IS NULL",
            super::KEY_SELECT
        )))
        .bind(hash)
        .fetch_optional(&self.pool)
        .await
        .map_err(db("looking up an API key"))?;
        row.as_ref().map(key_from_row).transpose()
    }

    async fn revoke_key(&self, id: uuid::Uuid) -> Result<bool, StoreError> {
        let done =
            sqlx::query("UPDATE api_keys SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL")
                .bind(Utc::now().timestamp_millis())
                .bind(id.to_string())
                .execute(&self.pool)
                .await
                .map_err(db("revoking an API key"))?
                .rows_affected();
        Ok(done > 0)
    }
}

#[async_trait]
impl Reports for SqliteStore {
    async fn stats(&self, user_id: &str) -> Result<UserStats, StoreError> {
        // One statement: one snapshot.
        let row = sqlx::query(STATS)
            .bind(user_id)
            .fetch_one(&self.pool)
            .await
            .map_err(db("counting the user's data"))?;
        let get = db("reading the user's stats");
        let categories: String = row.try_get("categories").map_err(&get)?;
        let counts = StatsCounts {
            memories: row.try_get("memories").map_err(&get)?,
            superseded: row.try_get("superseded").map_err(&get)?,
            history_events: row.try_get("history_events").map_err(&get)?,
            pending: row.try_get("pending").map_err(&get)?,
            oldest: row
                .try_get::<Option<i64>, _>("oldest")
                .map_err(&get)?
                .map(millis),
            newest: row
                .try_get::<Option<i64>, _>("newest")
                .map_err(&get)?
                .map(millis),
            text_bytes: row.try_get("text_bytes").map_err(&get)?,
            categories: serde_json::from_str(&categories)
                .map_err(|e| StoreError::Corrupt(format!("category counts: {e}")))?,
        };
        Ok(counts.finish(user_id, self.embedder.dims))
    }

    async fn export(&self, user_id: &str) -> Result<UserExport, StoreError> {
        // One read transaction: the memories, their history and the deferred
        // remembers from one snapshot.
        let mut tx = self.pool.begin().await.map_err(db("reading an export"))?;
        let sql = format!(
            "SELECT {MEMORY_COLUMNS}, m.valid_to FROM memories m WHERE m.user_id = ? \
             ORDER BY m.created_at, m.pk"
        );
        let memories = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(user_id)
            .fetch_all(&mut *tx)
            .await
            .map_err(db("exporting memories"))?;
        let history = sqlx::query(sqlx::AssertSqlSafe(format!(
            "{HISTORY_SELECT} WHERE user_id = ? ORDER BY pk"
        )))
        .bind(user_id)
        .fetch_all(&mut *tx)
        .await
        .map_err(db("exporting history"))?;
        let pending = sqlx::query(sqlx::AssertSqlSafe(format!(
            "{PENDING_SELECT} WHERE user_id = ? ORDER BY created_at, id"
        )))
        .bind(user_id)
        .fetch_all(&mut *tx)
        .await
        .map_err(db("exporting deferred remembers"))?;
        tx.rollback().await.map_err(db("reading an export"))?;
        let memories = memories
            .iter()
            .map(|row| {
                let valid_to: Option<i64> =
                    row.try_get("valid_to").map_err(db("reading a memory"))?;
                Ok((memory_from_row(row)?, valid_to.map(millis)))
            })
            .collect::<Result<_, StoreError>>()?;
        let history = history
            .iter()
            .map(history_from_row)
            .collect::<Result<_, _>>()?;
        let pending = pending
            .iter()
            .map(pending_from_row)
            .collect::<Result<_, _>>()?;
        Ok(assemble_export(user_id, memories, history, pending))
    }
}

#[async_trait]
impl Versions for SqliteStore {
    async fn version(&self, user_id: &str) -> Result<Option<u64>, StoreError> {
        let g: Option<i64> =
            sqlx::query_scalar("SELECT generation FROM user_generations WHERE user_id = ?")
                .bind(user_id)
                .fetch_optional(&self.pool)
                .await
                .map_err(db("reading the user's version"))?;
        Ok(g.map(|g| g as u64))
    }
}

/// The store's pool on `url`, its schema brought up to date.
async fn connect(url: &str) -> Result<SqlitePool, StoreError> {
    let pool = connect_to(url).await?;
    MIGRATOR
        .run(&pool)
        .await
        .map_err(|source| StoreError::Migrate {
            url: url.to_owned(),
            source,
        })?;
    Ok(pool)
}

/// A pool on the database at `url` (created if missing), schema untouched.
async fn connect_to(url: &str) -> Result<SqlitePool, StoreError> {
    let open_err = |source| StoreError::Open {
        url: url.to_owned(),
        source,
    };
    let path = url.strip_prefix("sqlite://").unwrap_or(url);
    if let Some(parent) = Path::new(path).parent()
        && !parent.as_os_str().is_empty()
    {
        std::fs::create_dir_all(parent).map_err(|e| open_err(sqlx::Error::Io(e)))?;
    }
    let options = SqliteConnectOptions::from_str("sqlite://")
        .map_err(open_err)?
        .filename(path)
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Normal)
        .busy_timeout(Duration::from_secs(10))
        .foreign_keys(true)
        // Reads come from the OS page cache through mmap rather than read()
        // calls, and each connection keeps a larger page cache of its own.
        .pragma("mmap_size", "268435456")
        .pragma("cache_size", "-32768");
    SqlitePoolOptions::new()
        .max_connections(8)
        // A connection to a local file does not go stale; the check would
        // cost a round trip to the connection's worker thread per query.
        .test_before_acquire(false)
        .connect_with(options)
        .await
        .map_err(open_err)
}

/// The rows of the in-process copy a search in `at` counts: those in
/// `allowed` when a metadata filter picked them, else those of the scope's
/// agent and run (every row for a whole-user search).
fn among<'a>(at: SearchScope<'a>, allowed: Option<&'a HashSet<i64>>) -> Among<'a> {
    match allowed {
        Some(pks) => Among::Pks(pks),
        None if at.scope.agent_id.is_none() && at.scope.run_id.is_none() => Among::All,
        None => Among::Scope {
            agent_id: at.scope.agent_id.as_deref(),
            run_id: at.scope.run_id.as_deref(),
        },
    }
}

/// The `depth` best of `scores` (pk, score) and every one tied with the last.
fn best_with_ties(scores: &HashMap<i64, f32>, depth: usize) -> Vec<i64> {
    let mut ranked: Vec<(i64, f32)> = scores.iter().map(|(&pk, &s)| (pk, s)).collect();
    ranked.sort_by(|a, b| b.1.total_cmp(&a.1));
    if let Some(&(_, cut)) = ranked.get(depth.saturating_sub(1)) {
        ranked.retain(|&(_, s)| s >= cut);
    }
    ranked.into_iter().map(|(pk, _)| pk).collect()
}

/// Exact cosine similarity of `query` with the stored vectors of `pks` that
/// are current memories, with their ids, and the user's generation, read in
/// one statement.
async fn exact_scores_and_ids(
    conn: &mut SqliteConnection,
    user_id: &str,
    pks: &[i64],
    query: &[f32],
) -> Result<(i64, Vec<(i64, MemoryId, f32)>), StoreError> {
    // The row without a pk carries the user's generation; the others a vector.
    let rows = sqlx::query(
        "SELECT NULL AS pk, NULL AS id, NULL AS embedding, \
                coalesce((SELECT generation FROM user_generations WHERE user_id = ?), 0) \
                AS generation \
         UNION ALL \
         SELECT * FROM (SELECT v.pk, m.id, v.embedding, NULL FROM json_each(?) j \
                        CROSS JOIN memory_vectors v ON v.pk = j.value \
                        JOIN memories m ON m.pk = v.pk WHERE m.valid_to IS NULL)",
    )
    .bind(user_id)
    .bind(json_array(pks))
    .fetch_all(&mut *conn)
    .await
    .map_err(db("reading vectors"))?;
    let mut generation = None;
    let mut scores = Vec::with_capacity(pks.len());
    for row in &rows {
        let pk: Option<i64> = row.try_get("pk").map_err(db("reading a vector"))?;
        match pk {
            None => {
                generation = row
                    .try_get("generation")
                    .map_err(db("reading the user's generation"))?;
            }
            Some(pk) => {
                let v = decode_vector(row.try_get("embedding").map_err(db("reading a vector"))?)?;
                scores.push((pk, parse_id(row)?, dot(query, &v)));
            }
        }
    }
    let generation = generation.ok_or_else(|| StoreError::Corrupt("no generation row".into()))?;
    Ok((generation, scores))
}

/// Exact cosine similarity of `query` with the stored vectors of `pks`./// Exact cosine similarity of `query` with the stored vectors of `pks`
/// (those still current), and the user's generation, in one statement.
async fn exact_scores(
    conn: &mut SqliteConnection,
    user_id: &str,
    pks: &[i64],
    query: &[f32],
) -> Result<(i64, Vec<(i64, f32)>), StoreError> {
    let (generation, scores) = exact_scores_and_ids(conn, user_id, pks, query).await?;
    Ok((
        generation,
        scores
            .into_iter()
            .map(|(pk, _, cosine)| (pk, cosine))
            .collect(),
    ))
}

async fn generation(conn: &mut SqliteConnection, user_id: &str) -> Result<i64, StoreError> {
    let g: Option<i64> =
        sqlx::query_scalar("SELECT generation FROM user_generations WHERE user_id = ?")
            .bind(user_id)
            .fetch_optional(&mut *conn)
            .await
            .map_err(db("reading the user's generation"))?;
    Ok(g.unwrap_or(0))
}

/// The next value of the store-wide write sequence (never reused).
async fn next_write_seq(conn: &mut SqliteConnection) -> Result<i64, StoreError> {
    sqlx::query_scalar("UPDATE write_seq SET value = value + 1 WHERE one = 1 RETURNING value")
        .fetch_one(&mut *conn)
        .await
        .map_err(db("advancing the write sequence"))
}

/// Moves every user to one new generation: what every user had cached or
/// copied in process is stale (a re-embed, a keyword re-index).
async fn advance_every_generation(conn: &mut SqliteConnection) -> Result<(), StoreError> {
    let next = next_write_seq(conn).await?;
    sqlx::query("UPDATE user_generations SET generation = ?")
        .bind(next)
        .execute(&mut *conn)
        .await
        .map_err(db("advancing generations"))?;
    Ok(())
}

async fn bump_generation(conn: &mut SqliteConnection, user_id: &str) -> Result<i64, StoreError> {
    let next = next_write_seq(conn).await?;
    sqlx::query(
        "INSERT INTO user_generations (user_id, generation) VALUES (?, ?) \
         ON CONFLICT (user_id) DO UPDATE SET generation = excluded.generation",
    )
    .bind(user_id)
    .bind(next)
    .execute(&mut *conn)
    .await
    .map_err(db("recording the user's generation"))?;
    Ok(next)
}

fn db(context: &'static str) -> impl Fn(sqlx::Error) -> StoreError {
    move |source| StoreError::Database { context, source }
}

fn memory_from_row(row: &SqliteRow) -> Result<Memory, StoreError> {
    let get = db("reading a memory");
    let metadata: String = row.try_get("metadata").map_err(&get)?;
    let categories: String = row.try_get("categories").map_err(&get)?;
    Ok(Memory {
        id: parse_id(row)?,
        memory: row.try_get("content").map_err(&get)?,
        scope: Scope {
            user_id: row.try_get("user_id").map_err(&get)?,
            agent_id: row.try_get("agent_id").map_err(&get)?,
            run_id: row.try_get("run_id").map_err(&get)?,
        },
        metadata: serde_json::from_str::<Metadata>(&metadata)
            .map_err(|e| StoreError::Corrupt(format!("metadata: {e}")))?,
        categories: serde_json::from_str(&categories)
            .map_err(|e| StoreError::Corrupt(format!("categories: {e}")))?,
        created_at: millis(row.try_get("created_at").map_err(&get)?),
        updated_at: millis(row.try_get("updated_at").map_err(&get)?),
    })
}

fn history_from_row(row: &SqliteRow) -> Result<HistoryEntry, StoreError> {
    let get = db("reading history");
    let memory_id: String = row.try_get("memory_id").map_err(&get)?;
    let event: String = row.try_get("event").map_err(&get)?;
    Ok(HistoryEntry {
        memory_id: memory_id
            .parse()
            .map_err(|_| StoreError::Corrupt(format!("history memory id '{memory_id}'")))?,
        event: parse_event(&event)?,
        old_memory: row.try_get("old_content").map_err(&get)?,
        new_memory: row.try_get("new_content").map_err(&get)?,
        actor: row.try_get("actor").map_err(&get)?,
        created_at: millis(row.try_get("created_at").map_err(&get)?),
    })
}

fn pending_from_row(row: &SqliteRow) -> Result<Pending, StoreError> {
    let get = db("reading a deferred remember");
    let id: String = row.try_get("id").map_err(&get)?;
    let input: String = row.try_get("input").map_err(&get)?;
    let metadata: String = row.try_get("metadata").map_err(&get)?;
    let memory_ids: String = row.try_get("memory_ids").map_err(&get)?;
    let attempts: i64 = row.try_get("attempts").map_err(&get)?;
    let memory_ids = serde_json::from_str::<Vec<String>>(&memory_ids)
        .map_err(|e| StoreError::Corrupt(format!("deferred remember memory ids: {e}")))?
        .iter()
        .map(|raw| {
            raw.parse()
                .map_err(|_| StoreError::Corrupt(format!("memory id '{raw}'")))
        })
        .collect::<Result<_, _>>()?;
    Ok(Pending {
        entry: NewPending {
            id: id
                .parse()
                .map_err(|_| StoreError::Corrupt(format!("deferred remember id '{id}'")))?,
            scope: Scope {
                user_id: row.try_get("user_id").map_err(&get)?,
                agent_id: row.try_get("agent_id").map_err(&get)?,
                run_id: row.try_get("run_id").map_err(&get)?,
            },
            input: serde_json::from_str(&input)
                .map_err(|e| StoreError::Corrupt(format!("deferred remember input: {e}")))?,
            metadata: serde_json::from_str::<Metadata>(&metadata)
                .map_err(|e| StoreError::Corrupt(format!("deferred remember metadata: {e}")))?,
            infer: row.try_get("infer").map_err(&get)?,
            memory_ids,
            error: row.try_get("error").map_err(&get)?,
        },
        attempts: u32::try_from(attempts)
            .map_err(|_| StoreError::Corrupt(format!("{attempts} re-extraction attempts")))?,
        created_at: millis(row.try_get("created_at").map_err(&get)?),
    })
}

fn parse_id(row: &SqliteRow) -> Result<MemoryId, StoreError> {
    let raw: String = row.try_get("id").map_err(db("reading an id"))?;
    raw.parse()
        .map_err(|_| StoreError::Corrupt(format!("memory id '{raw}'")))
}

fn key_from_row(row: &SqliteRow) -> Result<super::ApiKey, StoreError> {
    let read = db("reading an API key");
    let id: String = row.try_get("id").map_err(&read)?;
    Ok(super::ApiKey {
        id: uuid::Uuid::parse_str(&id)
            .map_err(|_| StoreError::Corrupt(format!("API key id '{id}'")))?,
        prefix: row.try_get("prefix").map_err(&read)?,
        hash: row.try_get("hash").map_err(&read)?,
        user_id: row.try_get("user_id").map_err(&read)?,
        label: row.try_get("label").map_err(&read)?,
        created_at: millis(row.try_get("created_at").map_err(&read)?),
        revoked_at: row
            .try_get::<Option<i64>, _>("revoked_at")
            .map_err(&read)?
            .map(millis),
    })
}

fn millis(ms: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(ms).unwrap_or_default()
}

fn encode_vector(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn decode_vector(bytes: Vec<u8>) -> Result<Vec<f32>, StoreError> {
    if !bytes.len().is_multiple_of(4) {
        return Err(StoreError::Corrupt(format!(
            "a vector blob of {} bytes",
            bytes.len()
        )));
    }
    Ok(bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect())
}

fn content_hash(content: &str) -> String {
    Sha256::digest(content.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn json_array(values: &[i64]) -> String {
    serde_json::Value::from(values.to_vec()).to_string()
}

fn filter_json(at: SearchScope<'_>) -> Option<String> {
    if at.filter.is_empty() {
        return None;
    }
    let object: serde_json::Map<String, serde_json::Value> =
        at.filter.pairs().iter().cloned().collect();
    Some(serde_json::Value::Object(object).to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vectors_round_trip() {
        let v = vec![0.5, -1.25, 3.0];
        assert_eq!(decode_vector(encode_vector(&v)).unwrap(), v);
        assert!(decode_vector(vec![1, 2, 3]).is_err());
    }
}
