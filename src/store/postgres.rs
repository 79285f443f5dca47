//! The production store: PostgreSQL with pgvector (migrations/postgres).
//!
//! The database does the work the SQLite store does in process, so any
//! number of engram processes can share it:
//! * vector search is `engram_nearest`, which picks an exact scan or the
//!   vector index (HNSW with iterative scans, or pgvectorscale's DiskANN) per
//!   call from how many rows are in scope, so a user filter never drops rows;
//! * deduplication is the `memories_refuse_duplicate` trigger, under a
//!   per-user advisory lock. It reports near-duplicates (SQLSTATE EG001) rather
//!   than deciding alone: [`PgStore::insert`] applies the same details guard
//!   as SQLite ([`details_differ`]) and retries with the candidates it judged
//!   different, so both stores agree on what a duplicate is;
//! * keyword search is BM25 as [`crate::keywords`] defines it, by
//!   `engram_keyword_search`, over `keyword_postings`: one narrow row per
//!   distinct term of each current memory, keyed by (user, term, memory).
//!   The terms are made here, in Rust, and written in the transaction that
//!   makes a memory current or changes its text; triggers drop them when it
//!   stops being current, keep each user's count and total length in
//!   `memory_users` and each term's document frequency in `keyword_terms`. A store whose postings predate this build gets them at
//!   open ([`PgStore::open`]).
//!
//! The embedding column's dimension is fixed when a store is first opened with
//! an embedder, which is also recorded; a different one is refused.

use std::collections::{HashMap, HashSet};
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use pgvector::Vector;
use sha2::{Digest, Sha256};
use sqlx::postgres::{PgConnectOptions, PgDatabaseError, PgPool, PgPoolOptions, PgRow};
use sqlx::{Connection, PgConnection, Row};
use uuid::Uuid;

use super::{
    HISTORY_SELECT, HistoryEntry, Hit, InsertOutcome, Keys, NewMemory, NewPending, PENDING_SELECT,
    Pending, PendingQueue, Reads, Reports, Scored, Search, SearchScope, StatsCounts, Store,
    StoreError, SupersedeOutcome, UserExport, UserStats, Versions, Writes, assemble_export,
    parse_event,
};
use crate::config::IndexKind;
use crate::embed::{Embedder, EmbedderIdentity};
use crate::keywords::{self, DocumentTerms};
use crate::model::{Memory, MemoryId, Metadata, Scope, details_differ};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

/// The SQLSTATE `engram_refuse_duplicate` raises, with the candidates as JSON detail.
const DUPLICATE_SQLSTATE: &str = "EG001";
/// How often one insert may meet near-duplicates it has not judged yet
/// before giving up. A round may report `FIRST_DEDUP_ROUND << round`
/// candidates (engram.dedup_k; the trigger caps it at 4096), so twelve rounds
/// cover ~16k close memories that differ in a detail, or concurrent writers.
const MAX_DEDUP_ROUNDS: u32 = 12;
const FIRST_DEDUP_ROUND: u32 = 8;
/// pgvector's HNSW indexes `vector` columns of at most this many dimensions.
const MAX_INDEXED_DIMS: usize = 2000;
/// store_info's `keyword_index` once every current memory's postings are
/// the ones [`keywords::document_terms`] makes; anything else (or nothing)
/// and [`PgStore::open`] rebuilds them.
const KEYWORD_INDEX: &str = keywords::INDEX_VERSION;
/// Memories read, cut into terms and written per statement by that rebuild.
const REINDEX_BATCH: i64 = 1000;

/// The columns [`memory_from_row`] reads, from `memories` aliased as `m`.
const MEMORY_COLUMNS: &str = "m.id, m.user_id, m.agent_id, m.run_id, m.content, m.metadata, \
                              m.categories, m.created_at, m.updated_at";

/// A user's numbers ($1: the user) in one row, for [`StatsCounts`]: one
/// aggregate over their memories (current and closed rows each through
/// their own partial index), history and deferred remembers; the category
/// counts as a JSON array of `[category, memories]`.
const STATS: &str = "\
    WITH m AS ( \
             SELECT id, true AS current, created_at, categories, \
                    octet_length(content) + octet_length(metadata::text) AS bytes \
             FROM memories WHERE user_id = $1 AND valid_to IS NULL \
             UNION ALL \
             SELECT id, false, created_at, '{}', \
                    octet_length(content) + octet_length(metadata::text) \
             FROM memories WHERE user_id = $1 AND valid_to IS NOT NULL), \
         h AS (SELECT count(*) AS events, \
                      coalesce(sum(coalesce(octet_length(old_content), 0) \
                                 + coalesce(octet_length(new_content), 0)), 0) AS bytes \
               FROM memory_history WHERE user_id = $1), \
         c AS (SELECT category, count(DISTINCT m.id) AS n \
               FROM m, unnest(m.categories) AS category WHERE m.current GROUP BY category) \
    SELECT count(*) FILTER (WHERE m.current) AS memories, \
           count(*) FILTER (WHERE NOT m.current) AS superseded, \
           min(m.created_at) FILTER (WHERE m.current) AS oldest, \
           max(m.created_at) FILTER (WHERE m.current) AS newest, \
           coalesce(sum(m.bytes), 0) + (SELECT bytes FROM h) AS text_bytes, \
           (SELECT events FROM h) AS history_events, \
           (SELECT count(*) FROM pending_extractions WHERE user_id = $1) AS pending, \
           (SELECT coalesce(jsonb_agg(jsonb_build_array(category, n)), '[]') FROM c) \
               AS categories \
    FROM m";

/// How a PostgreSQL store is opened.
#[derive(Debug, Clone, Copy)]
pub struct PgOptions {
    pub pool_size: u32,
    /// Apply pending migrations; otherwise refuse to open a schema that is behind.
    pub migrate: bool,
    pub index: IndexKind,
    /// When vector search scans a scope exactly instead of using the index
    /// (`engram_exact_scan_limit` in the schema); defaults unless set.
    pub plan: PlanSettings,
}

/// The session settings `engram_exact_scan_limit` reads: exact scans for
/// scopes of at most `exact_scan_max_rows` rows, or whose rows² are below
/// `exact_scan_ratio` × the table's rows. Zero for both forces the index.
#[derive(Debug, Clone, Copy, Default)]
pub struct PlanSettings {
    pub exact_scan_max_rows: Option<u64>,
    pub exact_scan_ratio: Option<f64>,
    /// HNSW's search list size on the index path (schema default 250, at least 2k).
    pub ef_search: Option<u32>,
}

impl PlanSettings {
    /// Every search through the vector index (for tests and benchmarks).
    pub const ALWAYS_INDEX: Self = Self {
        exact_scan_max_rows: Some(0),
        exact_scan_ratio: Some(0.0),
        ef_search: None,
    };
    /// Every search an exact scan (the reference for recall measurements).
    pub const ALWAYS_EXACT: Self = Self {
        exact_scan_max_rows: Some(1_000_000_000_000),
        exact_scan_ratio: None,
        ef_search: None,
    };
}

impl Default for PgOptions {
    fn default() -> Self {
        Self {
            pool_size: crate::config::DEFAULT_DATABASE_POOL_SIZE,
            migrate: true,
            index: IndexKind::Auto,
            plan: PlanSettings::default(),
        }
    }
}

pub struct PgStore {
    pool: PgPool,
    url: String,
    embedder: EmbedderIdentity,
    index: IndexKind,
}

impl PgStore {
    /// Cosine similarity to `vector` of these current memories of the user.
    async fn similarities(
        &self,
        user_id: &str,
        ids: &[Uuid],
        vector: &[f32],
    ) -> Result<HashMap<Uuid, f32>, StoreError> {
        if ids.is_empty() {
            return Ok(HashMap::new());
        }
        let rows: Vec<(Uuid, f32)> = sqlx::query_as(
            "SELECT m.id, (1 - (m.embedding <=> $3))::real FROM memories m \
             WHERE m.user_id = $1 AND m.id = ANY ($2) AND m.valid_to IS NULL",
        )
        .bind(user_id)
        .bind(ids)
        .bind(Vector::from(vector.to_vec()))
        .fetch_all(&self.pool)
        .await
        .map_err(db("reading vectors"))?;
        Ok(rows.into_iter().collect())
    }

    /// Connects to `url` (`postgres://...`), brings the schema up to date (or
    /// checks it is, with `migrate: false`), binds the store to `embedder` on
    /// first open (refusing another one later), makes sure the vector index
    /// exists and that the keyword postings are this build's (rebuilding
    /// them once, in one transaction, when they are not).
    pub async fn open(
        url: &str,
        embedder: EmbedderIdentity,
        options: PgOptions,
    ) -> Result<Self, StoreError> {
        check_dims(&embedder)?;
        let pool = connect(url, options.pool_size, options.plan).await?;
        if options.migrate {
            migrate_pool(url, &pool).await?;
        } else {
            check_migrated(url, &pool).await?;
        }
        let store = Self {
            pool,
            url: url.to_owned(),
            embedder,
            index: options.index,
        };
        let mut tx = store.pool.begin().await.map_err(db("opening the store"))?;
        lock_schema(&mut tx).await?;
        store.bind_embedder(&mut tx).await?;
        // Before the vector index: a rebuild that rewrites memories drops it.
        ensure_keyword_index(&mut tx).await?;
        let index = ensure_vector_index(&mut tx, store.index).await?;
        tx.commit().await.map_err(db("opening the store"))?;
        tracing::info!(embedder = %store.embedder, ?index, "PostgreSQL store ready");
        Ok(Self { index, ..store })
    }

    /// Applies pending migrations to the database at `url` (`engram migrate`).
    pub async fn migrate(url: &str) -> Result<(), StoreError> {
        let pool = connect(url, 2, PlanSettings::default()).await?;
        migrate_pool(url, &pool).await?;
        pool.close().await;
        Ok(())
    }

    /// The vector index searches use (`Auto` resolved at open).
    pub fn vector_index(&self) -> IndexKind {
        self.index
    }

    /// The URL the store was opened with (password included: not for display).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The connection pool, for measuring raw queries next to the store's.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Rebuilds every stored vector with `embedder` (whose dimension may
    /// differ), records it as the store's embedder and rebuilds the vector
    /// index. One transaction: all or nothing. Stop running servers first.
    pub async fn reembed(
        url: &str,
        embedder: &dyn Embedder,
        index: IndexKind,
    ) -> Result<u64, StoreError> {
        const BATCH: i64 = 256;
        let identity = embedder.identity();
        check_dims(&identity)?;
        let pool = connect(url, 2, PlanSettings::default()).await?;
        migrate_pool(url, &pool).await?;
        let mut tx = pool.begin().await.map_err(db("starting the re-embed"))?;
        lock_schema(&mut tx).await?;
        for statement in [
            "DROP INDEX IF EXISTS memories_embedding_hnsw",
            "DROP INDEX IF EXISTS memories_embedding_diskann",
            "ALTER TABLE memories ALTER COLUMN embedding TYPE vector",
        ] {
            sqlx::query(statement)
                .execute(&mut *tx)
                .await
                .map_err(db("preparing the re-embed"))?;
        }
        let mut after = Uuid::nil();
        let mut done = 0u64;
        loop {
            let rows: Vec<(Uuid, String)> = sqlx::query_as(
                "SELECT id, content FROM memories WHERE id > $1 ORDER BY id LIMIT $2",
            )
            .bind(after)
            .bind(BATCH)
            .fetch_all(&mut *tx)
            .await
            .map_err(db("reading memories to re-embed"))?;
            let Some(&(last, _)) = rows.last() else { break };
            let texts: Vec<String> = rows.iter().map(|(_, t)| t.clone()).collect();
            let vectors = embedder.embed_documents(&texts).await?;
            let ids: Vec<Uuid> = rows.iter().map(|(id, _)| *id).collect();
            let vectors: Vec<Vector> = vectors.into_iter().map(Vector::from).collect();
            sqlx::query(
                "UPDATE memories m SET embedding = v.embedding \
                 FROM unnest($1::uuid[], $2::vector[]) AS v (id, embedding) WHERE m.id = v.id",
            )
            .bind(&ids)
            .bind(&vectors)
            .execute(&mut *tx)
            .await
            .map_err(db("storing re-embedded vectors"))?;
            done += rows.len() as u64;
            after = last;
        }
        bind_dimension(&mut tx, &identity).await?;
        ensure_vector_index(&mut tx, index).await?;
        tx.commit().await.map_err(db("committing the re-embed"))?;
        pool.close().await;
        Ok(done)
    }

    /// Records the embedder (and fixes the column's dimension) on first open;
    /// refuses a different one afterwards.
    async fn bind_embedder(&self, tx: &mut PgConnection) -> Result<(), StoreError> {
        let configured = self.embedder.to_string();
        let stored: Option<String> =
            sqlx::query_scalar("SELECT value FROM store_info WHERE key = 'embedder'")
                .fetch_optional(&mut *tx)
                .await
                .map_err(db("reading the store's embedder"))?;
        match stored {
            Some(stored) if stored == configured => Ok(()),
            Some(stored) => Err(StoreError::EmbedderMismatch { stored, configured }),
            None => bind_dimension(tx, &self.embedder).await,
        }
    }

    /// Inserts `new`, its keyword postings and its ADD history row inside
    /// `tx`, in one statement (the dedup trigger runs with whatever `tx` has set).
    async fn insert_in(
        tx: &mut sqlx::PgConnection,
        new: &NewMemory,
        now: DateTime<Utc>,
    ) -> Result<(), sqlx::Error> {
        let metadata = serde_json::Value::Object(new.metadata.clone());
        let terms = keywords::document_terms(&new.content);
        let (words, counts) = posting_columns(&terms);
        sqlx::query(
            "WITH m AS ( \
                 INSERT INTO memories (id, user_id, agent_id, run_id, content, content_hash, \
                     embedding, metadata, categories, created_at, updated_at, valid_from, \
                     keyword_length) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $10, $10, $12) \
                 RETURNING id, user_id, content, created_at, keyword_length), \
                  h AS (INSERT INTO memory_history (memory_id, user_id, event, old_content, \
                            new_content, actor, created_at) \
                        SELECT id, user_id, 'ADD', NULL, content, $11, created_at FROM m) \
             INSERT INTO keyword_postings (user_id, term, memory_id, tf, length) \
             SELECT m.user_id, t.term, m.id, t.tf, m.keyword_length \
             FROM m, unnest($13::text[], $14::integer[]) AS t (term, tf)",
        )
        .bind(new.id.0)
        .bind(&new.scope.user_id)
        .bind(&new.scope.agent_id)
        .bind(&new.scope.run_id)
        .bind(&new.content)
        .bind(content_hash(&new.content))
        .bind(Vector::from(new.embedding.clone()))
        .bind(&metadata)
        .bind(&new.categories)
        .bind(now)
        .bind(&new.actor)
        .bind(keyword_length(&terms))
        .bind(&words)
        .bind(&counts)
        .execute(&mut *tx)
        .await
        .map(|_| ())
    }

    /// One attempt at the insert transaction; `Ok(Err(near))` when the
    /// trigger refused it, with the near-duplicates it named.
    async fn try_insert(
        &self,
        new: &NewMemory,
        dedup_threshold: f32,
        allowed: &[Uuid],
        dedup_k: u32,
        now: DateTime<Utc>,
    ) -> Result<Result<(), Vec<Near>>, StoreError> {
        let mut tx = self.pool.begin().await.map_err(db("starting a write"))?;
        sqlx::query(
            "SELECT set_config('engram.dedup_threshold', $1, true), \
                    set_config('engram.dedup_allow', $2, true), \
                    set_config('engram.dedup_k', $3, true)",
        )
        .bind(dedup_threshold.to_string())
        .bind(uuid_array_literal(allowed))
        .bind(dedup_k.to_string())
        .execute(&mut *tx)
        .await
        .map_err(db("starting a write"))?;
        let written = Self::insert_in(&mut tx, new, now).await;
        match written {
            Ok(_) => {
                tx.commit().await.map_err(db("committing a memory"))?;
                Ok(Ok(()))
            }
            Err(e) => match refused_as_duplicate(&e) {
                Some(near) => {
                    tx.rollback().await.map_err(db("ending a refused write"))?;
                    Ok(Err(near?))
                }
                None => Err(StoreError::Database {
                    context: "storing a memory",
                    source: e,
                }),
            },
        }
    }
}

/// Search rows (id, score) as hits, in the order given.
fn hits(rows: Vec<(Uuid, f32)>) -> Vec<Hit> {
    rows.into_iter()
        .map(|(id, score)| Hit {
            id: MemoryId(id),
            score,
        })
        .collect()
}

/// A near-duplicate the trigger named.
#[derive(Debug, serde::Deserialize)]
struct Near {
    id: Uuid,
    similarity: f32,
}

/// The near-duplicates in an EG001 error, if `e` is one.
/// A unique index refused the row (here: the same text as a current memory).
fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d) if d.code().as_deref() == Some("23505"))
}

fn refused_as_duplicate(e: &sqlx::Error) -> Option<Result<Vec<Near>, StoreError>> {
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

impl Store for PgStore {
    fn embedder(&self) -> &EmbedderIdentity {
        &self.embedder
    }
}

#[async_trait]
impl Writes for PgStore {
    async fn insert(
        &self,
        new: NewMemory,
        dedup_threshold: f32,
    ) -> Result<InsertOutcome, StoreError> {
        // Postgres keeps microseconds; the memory returned must equal the stored one.
        let now = Utc::now();
        let now = DateTime::from_timestamp_micros(now.timestamp_micros()).unwrap_or(now);
        let mut allowed: Vec<Uuid> = Vec::new();
        for round in 0..MAX_DEDUP_ROUNDS {
            let k = FIRST_DEDUP_ROUND << round;
            let mut near = match self
                .try_insert(&new, dedup_threshold, &allowed, k, now)
                .await?
            {
                Ok(()) => {
                    return Ok(InsertOutcome::Added(new.stored_at(now)));
                }
                Err(near) => near,
            };
            // The trigger only says "close"; a candidate stating other
            // details (a number, a negation) is a different memory.
            near.sort_by(|a, b| b.similarity.total_cmp(&a.similarity));
            let ids: Vec<MemoryId> = near.iter().map(|n| MemoryId(n.id)).collect();
            let mut existing: HashMap<MemoryId, Memory> = self
                .get_many(&new.scope.user_id, &ids)
                .await?
                .into_iter()
                .map(|m| (m.id, m))
                .collect();
            for n in &near {
                // Gone since the trigger saw it (forgotten): nothing to allow.
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
             different so far): the user holds very many close memories, or writers keep \
             adding them; try again",
            new.id,
            allowed.len()
        )))
    }

    async fn delete(&self, user_id: &str, id: MemoryId) -> Result<bool, StoreError> {
        // One statement, so the memory, its history and any deferred
        // remember that stored it (which would bring the text back) go together.
        let mut tx = self.pool.begin().await.map_err(db("starting a write"))?;
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
        tx.commit().await.map_err(db("committing a delete"))?;
        Ok(deleted > 0)
    }

    async fn delete_user(&self, user_id: &str) -> Result<u64, StoreError> {
        let mut tx = self.pool.begin().await.map_err(db("starting a write"))?;
        lock_user(&mut tx, user_id).await?;
        let deleted: i64 = sqlx::query_scalar(
            "WITH gone AS (DELETE FROM memories WHERE user_id = $1 RETURNING 1), \
                  history AS (DELETE FROM memory_history WHERE user_id = $1), \
                  counts AS (DELETE FROM memory_users WHERE user_id = $1), \
                  pending AS (DELETE FROM pending_extractions WHERE user_id = $1) \
             SELECT count(*) FROM gone",
        )
        .bind(user_id)
        .fetch_one(&mut *tx)
        .await
        .map_err(db("deleting a user's memories"))?;
        tx.commit().await.map_err(db("committing a delete"))?;
        Ok(deleted.max(0) as u64)
    }

    async fn update(
        &self,
        user_id: &str,
        id: MemoryId,
        content: &str,
        embedding: &[f32],
        actor: &str,
    ) -> Result<Option<Memory>, StoreError> {
        let now = Utc::now();
        let now = DateTime::from_timestamp_micros(now.timestamp_micros()).unwrap_or(now);
        let terms = keywords::document_terms(content);
        let mut tx = self.pool.begin().await.map_err(db("starting a write"))?;
        lock_user(&mut tx, user_id).await?;
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
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(user_id)
            .bind(id.0)
            .bind(content)
            .bind(content_hash(content))
            .bind(Vector::from(embedding.to_vec()))
            .bind(now)
            .bind(actor)
            .bind(keyword_length(&terms))
            .fetch_optional(&mut *tx)
            .await;
        let memory = match row {
            Ok(Some(row)) => memory_from_row(&row)?,
            Ok(None) => {
                tx.rollback().await.map_err(db("ending a write"))?;
                return Ok(None);
            }
            Err(e) if is_unique_violation(&e) => {
                tx.rollback().await.map_err(db("ending a refused write"))?;
                return Err(StoreError::Conflict(format!(
                    "another current memory of user \"{user_id}\" already holds this text; \
                     {id} was not changed"
                )));
            }
            Err(e) => {
                return Err(StoreError::Database {
                    context: "updating a memory",
                    source: e,
                });
            }
        };
        index_terms(&mut tx, user_id, id, &terms).await?;
        tx.commit().await.map_err(db("committing an update"))?;
        Ok(Some(memory))
    }

    async fn supersede(
        &self,
        old: MemoryId,
        new: NewMemory,
    ) -> Result<SupersedeOutcome, StoreError> {
        let now = Utc::now();
        let now = DateTime::from_timestamp_micros(now.timestamp_micros()).unwrap_or(now);
        let mut tx = self.pool.begin().await.map_err(db("starting a write"))?;
        lock_user(&mut tx, &new.scope.user_id).await?;
        // The caller judged the near-duplicates: the trigger checks exact text only.
        sqlx::query("SELECT set_config('engram.dedup_threshold', '2', true)")
            .execute(&mut *tx)
            .await
            .map_err(db("starting a write"))?;
        let closed = close_in(
            &mut tx,
            &new.scope.user_id,
            old,
            Some(&new.content),
            &new.actor,
            now,
        )
        .await?;
        if !closed {
            tx.rollback().await.map_err(db("ending a write"))?;
            return Ok(SupersedeOutcome::NotFound);
        }
        let written = Self::insert_in(&mut tx, &new, now).await;
        match written {
            Ok(()) => {
                tx.commit().await.map_err(db("committing a supersede"))?;
                Ok(SupersedeOutcome::Superseded(new.stored_at(now)))
            }
            Err(e) => {
                tx.rollback().await.map_err(db("ending a refused write"))?;
                match refused_as_duplicate(&e) {
                    Some(near) => {
                        let near = near?;
                        let ids: Vec<MemoryId> = near.iter().map(|n| MemoryId(n.id)).collect();
                        let existing = self.get_many(&new.scope.user_id, &ids).await?;
                        match existing.into_iter().next() {
                            Some(m) => Ok(SupersedeOutcome::Duplicate(m)),
                            None => Err(StoreError::Conflict(format!(
                                "memory {old} was not superseded: its replacement repeats a \
                                 memory being changed concurrently; try again"
                            ))),
                        }
                    }
                    None => Err(StoreError::Database {
                        context: "storing a memory",
                        source: e,
                    }),
                }
            }
        }
    }

    async fn close(&self, user_id: &str, id: MemoryId, actor: &str) -> Result<bool, StoreError> {
        let now = Utc::now();
        let now = DateTime::from_timestamp_micros(now.timestamp_micros()).unwrap_or(now);
        // One statement; the memories_version_update trigger moves the version.
        let mut tx = self.pool.begin().await.map_err(db("starting a write"))?;
        lock_user(&mut tx, user_id).await?;
        let closed = close_in(&mut tx, user_id, id, None, actor, now).await?;
        tx.commit().await.map_err(db("committing a close"))?;
        Ok(closed)
    }
}

#[async_trait]
impl Reads for PgStore {
    async fn get_many(&self, user_id: &str, ids: &[MemoryId]) -> Result<Vec<Memory>, StoreError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let ids: Vec<Uuid> = ids.iter().map(|id| id.0).collect();
        let sql = format!(
            "SELECT {MEMORY_COLUMNS} FROM memories m WHERE m.user_id = $1 AND m.id = ANY($2)"
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(user_id)
            .bind(&ids)
            .fetch_all(&self.pool)
            .await
            .map_err(db("reading memories"))?;
        rows.iter().map(memory_from_row).collect()
    }

    async fn recent(&self, scope: &Scope, limit: usize) -> Result<(Vec<Memory>, u64), StoreError> {
        const WHERE: &str = "WHERE m.user_id = $1 AND m.valid_to IS NULL \
                             AND ($2::text IS NULL OR m.agent_id = $2) \
                             AND ($3::text IS NULL OR m.run_id = $3)";
        let sql = format!(
            "SELECT {MEMORY_COLUMNS} FROM memories m {WHERE} \
             ORDER BY m.updated_at DESC, m.id DESC LIMIT $4"
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(&scope.user_id)
            .bind(&scope.agent_id)
            .bind(&scope.run_id)
            .bind(limit as i64)
            .fetch_all(&self.pool)
            .await
            .map_err(db("listing memories"))?;
        let total: Option<i64> = if scope.agent_id.is_none() && scope.run_id.is_none() {
            // Kept by triggers; counting a large user's rows would cost milliseconds.
            sqlx::query_scalar("SELECT current FROM memory_users WHERE user_id = $1")
                .bind(&scope.user_id)
                .fetch_optional(&self.pool)
                .await
                .map_err(db("counting memories"))?
        } else {
            sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
                "SELECT count(*) FROM memories m {WHERE}"
            )))
            .bind(&scope.user_id)
            .bind(&scope.agent_id)
            .bind(&scope.run_id)
            .fetch_optional(&self.pool)
            .await
            .map_err(db("counting memories"))?
        };
        let memories = rows.iter().map(memory_from_row).collect::<Result<_, _>>()?;
        Ok((memories, total.unwrap_or(0).max(0) as u64))
    }

    async fn history(&self, user_id: &str, id: MemoryId) -> Result<Vec<HistoryEntry>, StoreError> {
        let sql = format!("{HISTORY_SELECT} WHERE user_id = $1 AND memory_id = $2 ORDER BY pk");
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(user_id)
            .bind(id.0)
            .fetch_all(&self.pool)
            .await
            .map_err(db("reading history"))?;
        rows.iter().map(history_from_row).collect()
    }
}

#[async_trait]
impl Search for PgStore {
    async fn vector_search(
        &self,
        at: SearchScope<'_>,
        query: &[f32],
        limit: usize,
    ) -> Result<Vec<Hit>, StoreError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let rows: Vec<(Uuid, f32)> =
            sqlx::query_as("SELECT id, similarity FROM engram_nearest($1, $2, $3, $4, $5, $6)")
                .bind(&at.scope.user_id)
                .bind(&at.scope.agent_id)
                .bind(&at.scope.run_id)
                .bind(filter_json(at))
                .bind(Vector::from(query.to_vec()))
                .bind(i32::try_from(limit).unwrap_or(i32::MAX))
                .fetch_all(&self.pool)
                .await
                .map_err(db("searching vectors"))?;
        let mut hits = hits(rows);
        // The vector index returns rows in relaxed order.
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
        let rows: Vec<(Uuid, f32)> =
            sqlx::query_as("SELECT id, score FROM engram_keyword_search($1, $2, $3, $4, $5, $6)")
                .bind(&at.scope.user_id)
                .bind(&at.scope.agent_id)
                .bind(&at.scope.run_id)
                .bind(filter_json(at))
                .bind(&terms)
                .bind(i32::try_from(limit).unwrap_or(i32::MAX))
                .fetch_all(&self.pool)
                .await
                .map_err(db("searching keywords"))?;
        let mut hits = hits(rows);
        hits.sort_by(|a, b| b.score.total_cmp(&a.score).then(a.id.0.cmp(&b.id.0)));
        Ok(hits)
    }

    /// Each search on its own connection, and as soon as one answers, the
    /// relevance its candidates lack: BM25 for the vector's (while the
    /// keyword side finishes), cosine for the keywords' (while the vector
    /// search, the slower, still runs). Two round trips deep, not three.
    async fn candidates(
        &self,
        at: SearchScope<'_>,
        vector: &[f32],
        query: &str,
        depth: usize,
    ) -> Result<Vec<Scored>, StoreError> {
        let user_id = &at.scope.user_id;
        let terms = keywords::query_terms(query);
        let by_vector = async {
            // The nearest memories and their BM25 in one statement.
            let rows: Vec<(Uuid, f32, Option<f32>)> = sqlx::query_as(
                "WITH n AS MATERIALIZED ( \
                     SELECT id, similarity FROM engram_nearest($1, $2, $3, $4, $5, $6)) \
                 SELECT n.id, n.similarity, k.score FROM n LEFT JOIN engram_keyword_scores( \
                     $1, $7, ARRAY(SELECT id FROM n)) k ON k.id = n.id",
            )
            .bind(user_id)
            .bind(&at.scope.agent_id)
            .bind(&at.scope.run_id)
            .bind(filter_json(at))
            .bind(Vector::from(vector.to_vec()))
            .bind(i32::try_from(depth).unwrap_or(i32::MAX))
            .bind(&terms)
            .fetch_all(&self.pool)
            .await
            .map_err(db("searching vectors"))?;
            let keyword: HashMap<Uuid, f32> = rows
                .iter()
                .filter_map(|(id, _, k)| k.map(|k| (*id, k)))
                .collect();
            let mut hits = hits(rows.into_iter().map(|(id, s, _)| (id, s)).collect());
            hits.sort_by(|a, b| b.score.total_cmp(&a.score));
            hits.truncate(depth);
            Ok::<_, StoreError>((hits, keyword))
        };
        let by_keyword = async {
            let hits = self.keyword_search(at, query, depth).await?;
            let ids: Vec<Uuid> = hits.iter().map(|h| h.id.0).collect();
            let similarity = self.similarities(user_id, &ids, vector).await?;
            Ok::<_, StoreError>((hits, similarity))
        };
        let ((vector_hits, their_keyword), (keyword_hits, their_similarity)) =
            tokio::try_join!(by_vector, by_keyword)?;
        let keyword_of: HashMap<Uuid, f32> =
            keyword_hits.iter().map(|h| (h.id.0, h.score)).collect();
        let mut out: Vec<Scored> = Vec::with_capacity(vector_hits.len() + keyword_hits.len());
        let mut seen: HashSet<Uuid> = HashSet::new();
        for hit in &vector_hits {
            seen.insert(hit.id.0);
            let keyword = keyword_of
                .get(&hit.id.0)
                .or_else(|| their_keyword.get(&hit.id.0))
                .copied()
                .unwrap_or(0.0);
            out.push(Scored {
                id: hit.id,
                similarity: hit.score,
                keyword,
            });
        }
        for hit in &keyword_hits {
            // A memory closed or forgotten between the two reads has no row.
            if let Some(&similarity) = their_similarity.get(&hit.id.0)
                && seen.insert(hit.id.0)
            {
                out.push(Scored {
                    id: hit.id,
                    similarity,
                    keyword: hit.score,
                });
            }
        }
        Ok(out)
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
        let ids: Vec<Uuid> = ids.iter().map(|id| id.0).collect();
        let terms = keywords::query_terms(query);
        // BM25 by engram_keyword_scores (whose statistics cover all of the
        // user's memories, not only these), once: MATERIALIZED keeps it off
        // the inner side of a loop over the memories. The memories' own rows
        // give the cosine and keep only current memories of the user.
        let rows: Vec<(Uuid, f32, f32)> = sqlx::query_as(
            "WITH k AS MATERIALIZED (SELECT id, score FROM engram_keyword_scores($1, $4, $2)) \
             SELECT m.id, (1 - (m.embedding <=> $3))::real, coalesce(k.score, 0)::real \
             FROM memories m LEFT JOIN k ON k.id = m.id \
             WHERE m.user_id = $1 AND m.id = ANY ($2) AND m.valid_to IS NULL",
        )
        .bind(user_id)
        .bind(&ids)
        .bind(Vector::from(vector.to_vec()))
        .bind(&terms)
        .fetch_all(&self.pool)
        .await
        .map_err(db("scoring memories"))?;
        Ok(rows
            .into_iter()
            .map(|(id, similarity, keyword)| Scored {
                id: MemoryId(id),
                similarity,
                keyword,
            })
            .collect())
    }
}

#[async_trait]
impl PendingQueue for PgStore {
    async fn add_pending(&self, pending: NewPending) -> Result<(), StoreError> {
        let now = Utc::now();
        let now = DateTime::from_timestamp_micros(now.timestamp_micros()).unwrap_or(now);
        let metadata = serde_json::Value::Object(pending.metadata.clone());
        let memory_ids: Vec<Uuid> = pending.memory_ids.iter().map(|id| id.0).collect();
        // Not a memory: no trigger, no version moves.
        sqlx::query(
            "INSERT INTO pending_extractions (id, user_id, agent_id, run_id, input, metadata, \
             infer, memory_ids, error, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
        )
        .bind(pending.id)
        .bind(&pending.scope.user_id)
        .bind(&pending.scope.agent_id)
        .bind(&pending.scope.run_id)
        .bind(&pending.input)
        .bind(&metadata)
        .bind(pending.infer)
        .bind(&memory_ids)
        .bind(&pending.error)
        .bind(now)
        .execute(&self.pool)
        .await
        .map_err(db("storing a deferred remember"))?;
        Ok(())
    }

    async fn pending(&self, limit: usize) -> Result<(Vec<Pending>, u64), StoreError> {
        // One statement, so the count and the rows come from one snapshot.
        let rows = sqlx::query(
            "WITH total AS (SELECT count(*) AS total FROM pending_extractions) \
             SELECT t.total, p.* FROM total t LEFT JOIN LATERAL ( \
                 SELECT id, user_id, agent_id, run_id, input, metadata, infer, memory_ids, \
                        error, attempts, created_at \
                 FROM pending_extractions ORDER BY created_at, id LIMIT $1) p ON true \
             ORDER BY p.created_at, p.id",
        )
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(&self.pool)
        .await
        .map_err(db("reading deferred remembers"))?;
        let mut total = 0i64;
        let mut pending = Vec::with_capacity(rows.len());
        for row in &rows {
            total = row
                .try_get("total")
                .map_err(db("counting deferred remembers"))?;
            // The count's own row when there are none (the LATERAL side is NULL).
            let id: Option<Uuid> = row
                .try_get("id")
                .map_err(db("reading a deferred remember"))?;
            if id.is_some() {
                pending.push(pending_from_row(row)?);
            }
        }
        Ok((pending, total.max(0) as u64))
    }

    async fn finish_pending(&self, user_id: &str, id: Uuid) -> Result<bool, StoreError> {
        let done = sqlx::query("DELETE FROM pending_extractions WHERE user_id = $1 AND id = $2")
            .bind(user_id)
            .bind(id)
            .execute(&self.pool)
            .await
            .map_err(db("dropping a deferred remember"))?
            .rows_affected();
        Ok(done > 0)
    }

    async fn retry_pending(&self, user_id: &str, id: Uuid, error: &str) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE pending_extractions SET attempts = attempts + 1, error = $3 \
             WHERE user_id = $1 AND id = $2",
        )
        .bind(user_id)
        .bind(id)
        .bind(error)
        .execute(&self.pool)
        .await
        .map_err(db("recording a failed re-extraction"))?;
        Ok(())
    }
}

#[async_trait]
impl Keys for PgStore {
    async fn add_key(&self, key: &super::ApiKey) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO api_keys (id, prefix, hash, user_id, label, created_at, revoked_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(key.id)
        .bind(&key.prefix)
        .bind(&key.hash)
        .bind(&key.user_id)
        .bind(&key.label)
        .bind(key.created_at)
        .bind(key.revoked_at)
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
            "{} WHERE hash = $1 AND revoked_at IS NULL",
            super::KEY_SELECT
        )))
        .bind(hash)
        .fetch_optional(&self.pool)
        .await
        .map_err(db("looking up an API key"))?;
        row.as_ref().map(key_from_row).transpose()
    }

    async fn revoke_key(&self, id: Uuid) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE api_keys SET revoked_at = now() WHERE id = $1 AND revoked_at IS NULL",
        )
        .bind(id)
        .execute(&self.pool)
        .await
        .map_err(db("revoking an API key"))?
        .rows_affected();
        Ok(done > 0)
    }
}

#[async_trait]
impl Reports for PgStore {
    async fn stats(&self, user_id: &str) -> Result<UserStats, StoreError> {
        // One statement: one snapshot.
        let row = sqlx::query(STATS)
            .bind(user_id)
            .fetch_one(&self.pool)
            .await
            .map_err(db("counting the user's data"))?;
        let get = db("reading the user's stats");
        let categories: serde_json::Value = row.try_get("categories").map_err(&get)?;
        let counts = StatsCounts {
            memories: row.try_get("memories").map_err(&get)?,
            superseded: row.try_get("superseded").map_err(&get)?,
            history_events: row.try_get("history_events").map_err(&get)?,
            pending: row.try_get("pending").map_err(&get)?,
            oldest: row.try_get("oldest").map_err(&get)?,
            newest: row.try_get("newest").map_err(&get)?,
            text_bytes: row.try_get("text_bytes").map_err(&get)?,
            categories: serde_json::from_value(categories)
                .map_err(|e| StoreError::Corrupt(format!("category counts: {e}")))?,
        };
        Ok(counts.finish(user_id, self.embedder.dims))
    }

    async fn export(&self, user_id: &str) -> Result<UserExport, StoreError> {
        // Three reads from one snapshot: a write committed between them
        // cannot show up in one (history) and not in another (its memory).
        let mut tx = self
            .pool
            .begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            .await
            .map_err(db("reading an export"))?;
        // Current and closed rows each through their own partial index.
        let sql = format!(
            "SELECT {MEMORY_COLUMNS}, m.valid_to FROM memories m \
             WHERE m.user_id = $1 AND m.valid_to IS NULL \
             UNION ALL \
             SELECT {MEMORY_COLUMNS}, m.valid_to FROM memories m \
             WHERE m.user_id = $1 AND m.valid_to IS NOT NULL \
             ORDER BY created_at, id"
        );
        let memories = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(user_id)
            .fetch_all(&mut *tx)
            .await
            .map_err(db("exporting memories"))?;
        let history = sqlx::query(sqlx::AssertSqlSafe(format!(
            "{HISTORY_SELECT} WHERE user_id = $1 ORDER BY pk"
        )))
        .bind(user_id)
        .fetch_all(&mut *tx)
        .await
        .map_err(db("exporting history"))?;
        let pending = sqlx::query(sqlx::AssertSqlSafe(format!(
            "{PENDING_SELECT} WHERE user_id = $1 ORDER BY created_at, id"
        )))
        .bind(user_id)
        .fetch_all(&mut *tx)
        .await
        .map_err(db("exporting deferred remembers"))?;
        tx.rollback().await.map_err(db("reading an export"))?;
        let memories = memories
            .iter()
            .map(|row| {
                let valid_to = row.try_get("valid_to").map_err(db("reading a memory"))?;
                Ok((memory_from_row(row)?, valid_to))
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
impl Versions for PgStore {
    async fn version(&self, user_id: &str) -> Result<Option<u64>, StoreError> {
        // Moved by the memories_version_* triggers (migration user_versions).
        let v: Option<i64> =
            sqlx::query_scalar("SELECT version FROM memory_users WHERE user_id = $1")
                .bind(user_id)
                .fetch_optional(&self.pool)
                .await
                .map_err(db("reading the user's version"))?;
        Ok(v.map(|v| v as u64))
    }
}

/// A memory's postings as the columns `unnest` reads: terms, and how often each occurs.
fn posting_columns(terms: &DocumentTerms) -> (Vec<&str>, Vec<i32>) {
    terms
        .counts
        .iter()
        .map(|(term, tf)| (term.as_str(), i32::try_from(*tf).unwrap_or(i32::MAX)))
        .unzip()
}

/// `memories.keyword_length` for these terms.
fn keyword_length(terms: &DocumentTerms) -> i32 {
    i32::try_from(terms.length).unwrap_or(i32::MAX)
}

/// Writes the postings of memory `id` of the user, whose text now has
/// `terms` (its old postings, if any, already dropped by the trigger).
async fn index_terms(
    conn: &mut PgConnection,
    user_id: &str,
    id: MemoryId,
    terms: &DocumentTerms,
) -> Result<(), StoreError> {
    let (words, counts) = posting_columns(terms);
    sqlx::query(
        "INSERT INTO keyword_postings (user_id, term, memory_id, tf, length) \
         SELECT $1, t.term, $2, t.tf, $5 FROM unnest($3::text[], $4::integer[]) AS t (term, tf)",
    )
    .bind(user_id)
    .bind(id.0)
    .bind(&words)
    .bind(&counts)
    .bind(keyword_length(terms))
    .execute(&mut *conn)
    .await
    .map_err(db("indexing a memory's keywords"))?;
    Ok(())
}

/// Brings the keyword postings up to this build when store_info's
/// `keyword_index` is not [`KEYWORD_INDEX`] (the first open after the
/// migration that introduced them, or a store whose marker an operator
/// cleared): every current memory's text is cut into terms again and its
/// postings and keyword length rewritten, inside the caller's transaction
/// under the schema lock, so a second process opening meanwhile waits and
/// then finds the work done. A fresh database has nothing to rebuild and is
/// marked at once.
///
/// Setting a memory's keyword length writes a new version of its wide row,
/// and every index gets an entry for it; in the vector index each costs a
/// graph insertion (~4 ms: 200k memories took 13 minutes). So when lengths
/// must change, the vector index is dropped first and the caller's
/// `ensure_vector_index` builds it again, as `reembed` does.
async fn ensure_keyword_index(tx: &mut PgConnection) -> Result<(), StoreError> {
    let marker: Option<String> =
        sqlx::query_scalar("SELECT value FROM store_info WHERE key = 'keyword_index'")
            .fetch_optional(&mut *tx)
            .await
            .map_err(db("reading the keyword index version"))?;
    if marker.as_deref() == Some(KEYWORD_INDEX) {
        return Ok(());
    }
    let started = std::time::Instant::now();
    sqlx::query("DELETE FROM keyword_postings")
        .execute(&mut *tx)
        .await
        .map_err(db("clearing the keyword postings"))?;
    let (mut memories, mut postings, mut rewritten) = (0u64, 0u64, 0u64);
    let mut after = Uuid::nil();
    loop {
        let rows: Vec<(Uuid, String, String, i32)> = sqlx::query_as(
            "SELECT id, user_id, content, keyword_length FROM memories \
             WHERE valid_to IS NULL AND id > $1 ORDER BY id LIMIT $2",
        )
        .bind(after)
        .bind(REINDEX_BATCH)
        .fetch_all(&mut *tx)
        .await
        .map_err(db("reading memories to index"))?;
        let Some((last, ..)) = rows.last() else { break };
        after = *last;
        // Postings as parallel columns, and the lengths that changed.
        let (mut users, mut words, mut ids, mut counts, mut lengths) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let (mut changed, mut changed_lengths) = (Vec::new(), Vec::new());
        for (id, user_id, content, stored_length) in &rows {
            let terms = keywords::document_terms(content);
            let length = keyword_length(&terms);
            for (term, tf) in &terms.counts {
                users.push(user_id.as_str());
                words.push(term.clone());
                ids.push(*id);
                counts.push(i32::try_from(*tf).unwrap_or(i32::MAX));
                lengths.push(length);
            }
            if length != *stored_length {
                changed.push(*id);
                changed_lengths.push(length);
            }
        }
        if !changed.is_empty() && rewritten == 0 {
            for statement in [
                "DROP INDEX IF EXISTS memories_embedding_hnsw",
                "DROP INDEX IF EXISTS memories_embedding_diskann",
            ] {
                sqlx::query(statement)
                    .execute(&mut *tx)
                    .await
                    .map_err(db("dropping the vector index for the keyword rebuild"))?;
            }
        }
        // The memories_count_update trigger moves the users' total lengths
        // along with the memories' own.
        sqlx::query(
            "WITH p AS (INSERT INTO keyword_postings (user_id, term, memory_id, tf, length) \
                        SELECT * FROM unnest($1::text[], $2::text[], $3::uuid[], \
                                             $4::integer[], $5::integer[])) \
             UPDATE memories m SET keyword_length = v.length \
             FROM unnest($6::uuid[], $7::integer[]) AS v (id, length) WHERE m.id = v.id",
        )
        .bind(&users)
        .bind(&words)
        .bind(&ids)
        .bind(&counts)
        .bind(&lengths)
        .bind(&changed)
        .bind(&changed_lengths)
        .execute(&mut *tx)
        .await
        .map_err(db("writing keyword postings"))?;
        memories += rows.len() as u64;
        postings += ids.len() as u64;
        rewritten += changed.len() as u64;
    }
    // Recounted rather than trusted; and every user moves to a new version,
    // as their keyword scores may have changed.
    sqlx::query(
        "UPDATE memory_users u SET keyword_length = s.total \
         FROM (SELECT user_id, sum(keyword_length) AS total FROM memories \
               WHERE valid_to IS NULL GROUP BY user_id) s \
         WHERE u.user_id = s.user_id AND u.keyword_length <> s.total",
    )
    .execute(&mut *tx)
    .await
    .map_err(db("summing keyword lengths"))?;
    sqlx::query("UPDATE memory_users SET version = nextval('engram_write_version')")
        .execute(&mut *tx)
        .await
        .map_err(db("moving user versions"))?;
    sqlx::query(
        "INSERT INTO store_info (key, value) VALUES ('keyword_index', $1) \
         ON CONFLICT (key) DO UPDATE SET value = excluded.value",
    )
    .bind(KEYWORD_INDEX)
    .execute(&mut *tx)
    .await
    .map_err(db("recording the keyword index version"))?;
    if memories > 0 {
        tracing::info!(
            memories,
            postings,
            lengths_rewritten = rewritten,
            seconds = started.elapsed().as_secs_f64(),
            "keyword postings rebuilt{}",
            if rewritten > 0 {
                "; the vector index is built again next"
            } else {
                ""
            }
        );
    }
    Ok(())
}

/// Takes the user's write lock for the rest of `tx`: the advisory lock the
/// deduplication trigger and the keyword statistics' triggers take.
///
/// Invariant: every engram transaction that changes a user's memories takes
/// it before any other lock of theirs (a memory's row, the user's counts and
/// term statistics), so two writers of one user queue here instead of each
/// holding what the other waits for.
async fn lock_user(tx: &mut PgConnection, user_id: &str) -> Result<(), StoreError> {
    sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended('engram.user:' || $1, 0))")
        .bind(user_id)
        .execute(&mut *tx)
        .await
        .map_err(db("taking the user's write lock"))?;
    Ok(())
}

/// Closes current memory `id` of the user (`valid_to` = now, locked first)
/// with a SUPERSEDE history row naming `successor`'s text, if any, in one
/// statement; triggers drop its keyword postings and move the user's version. False
/// when it is not a current memory of theirs (nothing changed).
async fn close_in(
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

async fn connect(url: &str, pool_size: u32, plan: PlanSettings) -> Result<PgPool, StoreError> {
    let open_err = |source| StoreError::Open {
        url: redact(url),
        source,
    };
    let mut options = PgConnectOptions::from_str(url)
        .map_err(open_err)?
        .application_name("engram")
        // JIT compiles plans whose estimated cost is high (an exact scan of a
        // large user looks expensive) and adds tens of milliseconds to them.
        .options([("jit", "off")]);
    if let Some(rows) = plan.exact_scan_max_rows {
        options = options.options([("engram.exact_scan_max_rows", rows.to_string())]);
    }
    if let Some(ratio) = plan.exact_scan_ratio {
        options = options.options([("engram.exact_scan_ratio", ratio.to_string())]);
    }
    if let Some(ef) = plan.ef_search {
        options = options.options([("engram.ef_search", ef.to_string())]);
    }
    // One direct connection first: a pool retries until its timeout and then
    // reports only that, while this reports what is wrong (refused, auth, no database).
    let probe = PgConnection::connect_with(&options)
        .await
        .map_err(open_err)?;
    probe.close().await.map_err(open_err)?;
    Ok(PgPoolOptions::new()
        .max_connections(pool_size)
        .acquire_timeout(Duration::from_secs(10))
        .connect_lazy_with(options))
}

async fn migrate_pool(url: &str, pool: &PgPool) -> Result<(), StoreError> {
    MIGRATOR
        .run(pool)
        .await
        .map_err(|source| StoreError::Migrate {
            url: redact(url),
            source,
        })
}

/// With automatic migrations off: refuses a schema that lacks a migration of this build.
async fn check_migrated(url: &str, pool: &PgPool) -> Result<(), StoreError> {
    let applied: Vec<i64> =
        sqlx::query_scalar("SELECT version FROM _sqlx_migrations WHERE success")
            .fetch_all(pool)
            .await
            .unwrap_or_default();
    let missing: Vec<i64> = MIGRATOR
        .iter()
        .map(|m| m.version)
        .filter(|v| !applied.contains(v))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    Err(StoreError::Unsupported(format!(
        "the schema of {} lacks migrations {missing:?}; run `engram migrate` \
         (or set ENGRAM_AUTO_MIGRATE=true)",
        redact(url)
    )))
}

fn check_dims(embedder: &EmbedderIdentity) -> Result<(), StoreError> {
    if embedder.dims <= MAX_INDEXED_DIMS {
        return Ok(());
    }
    Err(StoreError::Unsupported(format!(
        "pgvector indexes at most {MAX_INDEXED_DIMS} dimensions and the embedder has {}; \
         set ENGRAM_EMBEDDING_DIMS to {MAX_INDEXED_DIMS} or fewer (OpenAI's \
         text-embedding-3 models accept a smaller `dimensions`)",
        embedder.dims
    )))
}

/// Serialises schema-level changes (first bind, index creation, re-embed)
/// across processes for the rest of the transaction.
async fn lock_schema(tx: &mut PgConnection) -> Result<(), StoreError> {
    sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended('engram.schema', 0))")
        .execute(&mut *tx)
        .await
        .map_err(db("locking the schema"))?;
    Ok(())
}

/// Gives the embedding column `embedder`'s dimension and records the
/// embedder as the store's.
async fn bind_dimension(
    tx: &mut PgConnection,
    embedder: &EmbedderIdentity,
) -> Result<(), StoreError> {
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "ALTER TABLE memories ALTER COLUMN embedding TYPE vector({})",
        embedder.dims
    )))
    .execute(&mut *tx)
    .await
    .map_err(db("fixing the vector dimension"))?;
    sqlx::query(
        "INSERT INTO store_info (key, value) VALUES ('embedder', $1) \
         ON CONFLICT (key) DO UPDATE SET value = excluded.value",
    )
    .bind(embedder.to_string())
    .execute(&mut *tx)
    .await
    .map_err(db("recording the store's embedder"))?;
    Ok(())
}

/// Resolves `requested` against the server (DiskANN needs pgvectorscale's
/// `vectorscale` extension) and creates that index if it is missing.
async fn ensure_vector_index(
    tx: &mut PgConnection,
    requested: IndexKind,
) -> Result<IndexKind, StoreError> {
    let vectorscale: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = 'vectorscale')",
    )
    .fetch_one(&mut *tx)
    .await
    .map_err(db("looking for pgvectorscale"))?;
    let kind = match requested {
        IndexKind::Auto if vectorscale => IndexKind::Diskann,
        IndexKind::Auto => IndexKind::Hnsw,
        IndexKind::Diskann if !vectorscale => {
            return Err(StoreError::Unsupported(
                "index = diskann needs pgvectorscale, and this PostgreSQL server has no \
                 `vectorscale` extension; install pgvectorscale on the server, or set \
                 ENGRAM_INDEX=hnsw (or auto)"
                    .into(),
            ));
        }
        other => other,
    };
    let statements: &[&'static str] = match kind {
        // Partial: superseded rows are never searched, so they stay out of the graph.
        IndexKind::Hnsw | IndexKind::Auto => &[
            "CREATE INDEX IF NOT EXISTS memories_embedding_hnsw ON memories \
             USING hnsw (embedding vector_cosine_ops) WHERE valid_to IS NULL",
        ],
        IndexKind::Diskann => &[
            "CREATE EXTENSION IF NOT EXISTS vectorscale",
            "CREATE INDEX IF NOT EXISTS memories_embedding_diskann ON memories \
             USING diskann (embedding vector_cosine_ops)",
        ],
    };
    for statement in statements {
        sqlx::query(*statement)
            .execute(&mut *tx)
            .await
            .map_err(db("creating the vector index"))?;
    }
    sqlx::query(
        "INSERT INTO store_info (key, value) VALUES ('vector_index', $1) \
         ON CONFLICT (key) DO UPDATE SET value = excluded.value",
    )
    .bind(format!("{kind:?}").to_lowercase())
    .execute(&mut *tx)
    .await
    .map_err(db("recording the vector index"))?;
    Ok(kind)
}

fn key_from_row(row: &PgRow) -> Result<super::ApiKey, StoreError> {
    let read = db("reading an API key");
    Ok(super::ApiKey {
        id: row.try_get("id").map_err(&read)?,
        prefix: row.try_get("prefix").map_err(&read)?,
        hash: row.try_get("hash").map_err(&read)?,
        user_id: row.try_get("user_id").map_err(&read)?,
        label: row.try_get("label").map_err(&read)?,
        created_at: row.try_get("created_at").map_err(&read)?,
        revoked_at: row.try_get("revoked_at").map_err(&read)?,
    })
}

fn db(context: &'static str) -> impl Fn(sqlx::Error) -> StoreError {
    move |source| StoreError::Database { context, source }
}

fn memory_from_row(row: &PgRow) -> Result<Memory, StoreError> {
    let get = db("reading a memory");
    let metadata: serde_json::Value = row.try_get("metadata").map_err(&get)?;
    let serde_json::Value::Object(metadata) = metadata else {
        return Err(StoreError::Corrupt(format!(
            "metadata is not an object: {metadata}"
        )));
    };
    Ok(Memory {
        id: MemoryId(row.try_get("id").map_err(&get)?),
        memory: row.try_get("content").map_err(&get)?,
        scope: Scope {
            user_id: row.try_get("user_id").map_err(&get)?,
            agent_id: row.try_get("agent_id").map_err(&get)?,
            run_id: row.try_get("run_id").map_err(&get)?,
        },
        metadata: Metadata::from(metadata),
        categories: row.try_get("categories").map_err(&get)?,
        created_at: row.try_get("created_at").map_err(&get)?,
        updated_at: row.try_get("updated_at").map_err(&get)?,
    })
}

fn history_from_row(row: &PgRow) -> Result<HistoryEntry, StoreError> {
    let get = db("reading history");
    let event: String = row.try_get("event").map_err(&get)?;
    Ok(HistoryEntry {
        memory_id: MemoryId(row.try_get("memory_id").map_err(&get)?),
        event: parse_event(&event)?,
        old_memory: row.try_get("old_content").map_err(&get)?,
        new_memory: row.try_get("new_content").map_err(&get)?,
        actor: row.try_get("actor").map_err(&get)?,
        created_at: row.try_get("created_at").map_err(&get)?,
    })
}

fn pending_from_row(row: &PgRow) -> Result<Pending, StoreError> {
    let get = db("reading a deferred remember");
    let metadata: serde_json::Value = row.try_get("metadata").map_err(&get)?;
    let serde_json::Value::Object(metadata) = metadata else {
        return Err(StoreError::Corrupt(format!(
            "deferred remember metadata is not an object: {metadata}"
        )));
    };
    let memory_ids: Vec<Uuid> = row.try_get("memory_ids").map_err(&get)?;
    let attempts: i32 = row.try_get("attempts").map_err(&get)?;
    Ok(Pending {
        entry: NewPending {
            id: row.try_get("id").map_err(&get)?,
            scope: Scope {
                user_id: row.try_get("user_id").map_err(&get)?,
                agent_id: row.try_get("agent_id").map_err(&get)?,
                run_id: row.try_get("run_id").map_err(&get)?,
            },
            input: row.try_get("input").map_err(&get)?,
            metadata,
            infer: row.try_get("infer").map_err(&get)?,
            memory_ids: memory_ids.into_iter().map(MemoryId).collect(),
            error: row.try_get("error").map_err(&get)?,
        },
        attempts: u32::try_from(attempts)
            .map_err(|_| StoreError::Corrupt(format!("{attempts} re-extraction attempts")))?,
        created_at: row.try_get("created_at").map_err(&get)?,
    })
}

fn content_hash(content: &str) -> Vec<u8> {
    Sha256::digest(content.as_bytes()).to_vec()
}

/// A Postgres array literal (`{a,b}`) of ids, for a setting read as `uuid[]`.
fn uuid_array_literal(ids: &[Uuid]) -> String {
    let inner: Vec<String> = ids.iter().map(Uuid::to_string).collect();
    format!("{{{}}}", inner.join(","))
}

/// The metadata filter as a JSON object for `@>` (scalar values: equality).
fn filter_json(at: SearchScope<'_>) -> Option<serde_json::Value> {
    if at.filter.is_empty() {
        return None;
    }
    Some(serde_json::Value::Object(
        at.filter.pairs().iter().cloned().collect(),
    ))
}

/// `url` without its password, for messages and logs.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            match userinfo.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme + 3], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_reach_messages() {
        assert_eq!(
            redact("postgres://engram:s3cret@db:5432/engram"),
            "postgres://engram:***@db:5432/engram"
        );
        assert_eq!(
            redact("postgres://engram@db/engram"),
            "postgres://engram@db/engram"
        );
        assert_eq!(redact("postgres://db/engram"), "postgres://db/engram");
    }

    #[test]
    fn allow_lists_are_array_literals() {
        assert_eq!(uuid_array_literal(&[]), "{}");
        let id = Uuid::nil();
        assert_eq!(uuid_array_literal(&[id, id]), format!("{{{id},{id}}}"));
    }
}
