//! What a user has stored ([`Reports`]): stats and the full export, each
//! in one read snapshot.

use async_trait::async_trait;

use super::{SqliteStore, db};
use crate::store::shared::{MEMORY_COLUMNS, reports};
use crate::store::{Reports, StoreError, StoreTotals, UserExport, UserStats};

/// A user's numbers (?1: the user) in one row, for [`reports::stats`]: one
/// aggregate over their memories (through `memories_hash`, which holds
/// current and closed rows alike), history and deferred remembers; the
/// category counts as a JSON array of `[category, memories]`.
pub(super) const STATS: &str = "\
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

#[async_trait]
impl Reports for SqliteStore {
    async fn stats(&self, user_id: &str) -> Result<UserStats, StoreError> {
        let mut conn = self
            .pool
            .acquire()
            .await
            .map_err(db("counting the user's data"))?;
        reports::stats(&mut *conn, STATS, user_id, self.embedder.dims).await
    }

    async fn export(&self, user_id: &str) -> Result<UserExport, StoreError> {
        // One read transaction: the memories, their history and the deferred
        // remembers from one snapshot.
        let mut tx = self.pool.begin().await.map_err(db("reading an export"))?;
        let memories = format!(
            "SELECT {MEMORY_COLUMNS}, m.valid_to FROM memories m WHERE m.user_id = ?1 \
             ORDER BY m.created_at, m.pk"
        );
        let export = reports::export(&mut *tx, user_id, memories).await?;
        tx.rollback().await.map_err(db("reading an export"))?;
        Ok(export)
    }

    async fn totals(&self) -> Result<StoreTotals, StoreError> {
        // Counts the current rows through the partial index on them; run
        // in the background, never per request.
        let (memories, pending): (i64, i64) = sqlx::query_as(
            "SELECT (SELECT count(*) FROM memories INDEXED BY memories_scope \
                     WHERE valid_to IS NULL), \
                    (SELECT count(*) FROM pending_extractions)",
        )
        .fetch_one(&self.pool)
        .await
        .map_err(db("counting every user's memories"))?;
        Ok(StoreTotals {
            memories: memories.max(0) as u64,
            pending: pending.max(0) as u64,
        })
    }

    async fn users(&self) -> Result<Vec<String>, StoreError> {
        sqlx::query_scalar(
            "SELECT user_id FROM memories UNION SELECT user_id FROM pending_extractions \
             ORDER BY 1",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(db("listing users"))
    }
}
