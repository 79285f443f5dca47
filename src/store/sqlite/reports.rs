//! What a user has stored ([`Reports`]): stats and the full export, each
//! in one read snapshot.

use async_trait::async_trait;
use sqlx::Row;

use super::queue::pending_from_row;
use super::rows::{MEMORY_COLUMNS, history_from_row, memory_from_row, millis};
use super::{SqliteStore, db};
use crate::store::{
    HISTORY_SELECT, PENDING_SELECT, Reports, StatsCounts, StoreError, UserExport, UserStats,
    assemble_export,
};

/// A user's numbers (?1: the user) in one row, for [`StatsCounts`]: one
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
