//! The in-process copy of each small user's vectors ([`VectorIndex`]), kept
//! at the user's version through the change log (migration
//! `memory_changes`), so recall scans vectors here instead of asking
//! `engram_nearest`, and reads from the database only the candidates.
//!
//! Invariant: the copy is never used at a version other than the one the
//! database gave in the same transaction. [`PgStore::synced_copy`] reads
//! the user's version and the memories logged since the copy's, and brings
//! the copy there: re-reading those memories when the log covers the gap,
//! every row otherwise. Whoever wrote (this process, another instance, raw
//! SQL), the triggers logged it, so no copy is served stale.
//!
//! A user whose vectors would take more than [`MAX_COPY_BYTES`] is left to
//! the database's index: its scan of the copy would cost more than the index
//! search it saves.

use std::collections::HashSet;
use std::sync::Arc;

use pgvector::Vector;
use sqlx::PgConnection;
use tokio::sync::RwLock;
use uuid::Uuid;

use super::{PgStore, db};
use crate::model::MemoryId;
use crate::store::StoreError;
use crate::store::vector_index::{UserVectors, VectorIndex};

/// The largest copy of one user kept (one byte per dimension per memory):
/// 10,000 memories of 1536 dimensions, scanned in about a millisecond.
pub const MAX_COPY_BYTES: usize = 16 * 1024 * 1024;

/// The version a copy holds for a user without current memories (the
/// sequence starts at 1, so no real version is 0).
const NO_MEMORIES: i64 = 0;

/// PostgreSQL rows are keyed by id; the copy's integer key is unused here.
const NO_PK: i64 = 0;

/// A copy ready to scan, and how many of the user's current memories have
/// expired without being purged yet (still in the copy; the candidates'
/// read drops them, so a scan asks for that many more).
pub(super) struct Synced {
    pub vectors: Arc<RwLock<UserVectors>>,
    pub expired: usize,
}

/// What the database says of the user before a copy is used.
struct Header {
    version: Option<i64>,
    current: i64,
    expired: i32,
    /// The memories changed since the copy's version; `None` when the log
    /// does not reach back that far (or there is no copy).
    changed: Option<Vec<Uuid>>,
}

impl PgStore {
    /// The user's copy at the database's current version, read on `conn` (a
    /// transaction scoped to the user); `None` when the user's memories are
    /// searched by the database instead (copies off, or too many rows).
    pub(super) async fn synced_copy(
        &self,
        conn: &mut PgConnection,
        copies: &VectorIndex,
        user_id: &str,
    ) -> Result<Option<Synced>, StoreError> {
        let entry = copies.user(user_id);
        let seen = entry.read().await.generation;
        let header = header(conn, user_id, seen).await?;
        let Some(version) = header.version else {
            if seen != Some(NO_MEMORIES) {
                entry.write().await.reset(NO_MEMORIES);
            }
            return Ok(Some(Synced {
                vectors: entry.clone(),
                expired: 0,
            }));
        };
        if usize::try_from(header.current).unwrap_or(usize::MAX) * self.embedder.dims
            > MAX_COPY_BYTES
        {
            copies.drop_user(user_id);
            return Ok(None);
        }
        if seen != Some(version) {
            let mut vecs = entry.write().await;
            if vecs.generation != Some(version) {
                match header.changed {
                    // Another task may have moved the copy since `seen`: the
                    // log was read from `seen`, so only then does it apply.
                    Some(changed) if vecs.generation == seen => {
                        self.catch_up(conn, user_id, &mut vecs, version, changed)
                            .await?
                    }
                    _ => self.load(conn, user_id, &mut vecs, version).await?,
                }
            }
        }
        Ok(Some(Synced {
            vectors: entry,
            expired: usize::try_from(header.expired).unwrap_or(0),
        }))
    }

    /// Re-reads the memories `changed` into `vecs`, which then holds
    /// `version`. The rows read may be newer than `version`: a later change
    /// is in the log after `version` and is applied again on next use.
    async fn catch_up(
        &self,
        conn: &mut PgConnection,
        user_id: &str,
        vecs: &mut UserVectors,
        version: i64,
        changed: Vec<Uuid>,
    ) -> Result<(), StoreError> {
        let rows = current_rows(conn, user_id, Some(&changed)).await?;
        let gone: HashSet<MemoryId> = changed.into_iter().map(MemoryId).collect();
        vecs.remove_ids(&gone);
        self.push_rows(vecs, rows)?;
        vecs.generation = Some(version);
        Ok(())
    }

    /// Replaces `vecs` with every current memory of the user, at `version`.
    async fn load(
        &self,
        conn: &mut PgConnection,
        user_id: &str,
        vecs: &mut UserVectors,
        version: i64,
    ) -> Result<(), StoreError> {
        let rows = current_rows(conn, user_id, None).await?;
        vecs.reset(version);
        let count = rows.len();
        self.push_rows(vecs, rows)?;
        tracing::debug!(user_id, rows = count, version, "loaded a user's vectors");
        Ok(())
    }

    fn push_rows(&self, vecs: &mut UserVectors, rows: Vec<Row>) -> Result<(), StoreError> {
        for (id, agent_id, run_id, embedding) in rows {
            let embedding = embedding.as_slice();
            if embedding.len() != self.embedder.dims {
                return Err(StoreError::Corrupt(format!(
                    "a vector has {} dims, the store {}",
                    embedding.len(),
                    self.embedder.dims
                )));
            }
            vecs.push(
                NO_PK,
                MemoryId(id),
                agent_id.as_deref(),
                run_id.as_deref(),
                embedding,
            );
        }
        Ok(())
    }
}

/// The user's version, row count and expired count, and the memories
/// logged after `seen` when the log reaches back to it, in one statement.
async fn header(
    conn: &mut PgConnection,
    user_id: &str,
    seen: Option<i64>,
) -> Result<Header, StoreError> {
    let (version, current, expired, changed): (Option<i64>, Option<i64>, i32, Option<Vec<Uuid>>) =
        sqlx::query_as(
            "SELECT u.version, u.current, cardinality(engram_expired_ids($1)), \
                    CASE WHEN $2 >= u.changes_from THEN ARRAY( \
                        SELECT DISTINCT c.memory_id FROM memory_changes c \
                        WHERE c.user_id = $1 AND c.version > $2) END \
             FROM (SELECT) AS one LEFT JOIN memory_users u ON u.user_id = $1",
        )
        .bind(user_id)
        .bind(seen.unwrap_or(-1))
        .fetch_one(&mut *conn)
        .await
        .map_err(db("reading the user's version"))?;
    Ok(Header {
        version,
        current: current.unwrap_or(0),
        expired,
        changed,
    })
}

/// A current memory's id, agent, run and vector.
type Row = (Uuid, Option<String>, Option<String>, Vector);

/// The user's current, unexpired memories (those of `only` when given).
async fn current_rows(
    conn: &mut PgConnection,
    user_id: &str,
    only: Option<&[Uuid]>,
) -> Result<Vec<Row>, StoreError> {
    sqlx::query_as(
        "SELECT id, agent_id, run_id, embedding FROM memories \
         WHERE user_id = $1 AND valid_to IS NULL \
           AND (expires_at IS NULL OR expires_at > now()) \
           AND ($2::uuid[] IS NULL OR id = ANY ($2))",
    )
    .bind(user_id)
    .bind(only)
    .fetch_all(&mut *conn)
    .await
    .map_err(db("loading the user's vectors"))
}
