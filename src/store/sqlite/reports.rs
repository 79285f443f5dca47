//! What a user has stored ([`Reports`]): stats and the full export, each
//! in one read snapshot.

use async_trait::async_trait;

use super::{SqliteStore, db};
use crate::store::shared::{
    HISTORY_SELECT, MEMORY_COLUMNS, PENDING_SELECT, export_from_rows, stats_from_row,
};
use crate::store::{Reports, StoreError, UserExport, UserStats};

/// A user's numbers (?1: the user) in one row, for [`stats_from_row`]: one
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
        // One statement: one snapshot.
        let row = sqlx::query(STATS)
            .bind(user_id)
            .fetch_one(&self.pool)
            .await
            .map_err(db("counting the user's data"))?;
        let counts = stats_from_row(&row)?;
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
        export_from_rows(user_id, &memories, &history, &pending)
    }
}
