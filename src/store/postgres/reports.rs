//! What a user has stored ([`Reports`]): stats and the full export, each
//! in one read snapshot.

use async_trait::async_trait;

use super::{PgStore, db};
use crate::store::shared::{MEMORY_COLUMNS, reports};
use crate::store::{Reports, StoreError, StoreTotals, UserExport, UserStats};

/// A user's numbers ($1: the user) in one row, for [`reports::stats`]: one
/// aggregate over their memories (current and closed rows each through
/// their own partial index), history and deferred remembers; the category
/// counts as a JSON array of `[category, memories]`.
pub(super) const STATS: &str = "\
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

#[async_trait]
impl Reports for PgStore {
    async fn stats(&self, user_id: &str) -> Result<UserStats, StoreError> {
        let mut tx = self.user_transaction(user_id).await?;
        let stats = reports::stats(&mut *tx, STATS, user_id, self.embedder.dims).await?;
        tx.commit().await.map_err(db("counting the user's data"))?;
        Ok(stats)
    }

    async fn export(&self, user_id: &str) -> Result<UserExport, StoreError> {
        // Three reads from one snapshot: a write committed between them
        // cannot show up in one (history) and not in another (its memory).
        let mut tx = self
            .begin_for(
                user_id,
                "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY",
                "reading an export",
            )
            .await?;
        // Current and closed rows each through their own partial index.
        let memories = format!(
            "SELECT {MEMORY_COLUMNS}, m.valid_to FROM memories m \
             WHERE m.user_id = $1 AND m.valid_to IS NULL \
             UNION ALL \
             SELECT {MEMORY_COLUMNS}, m.valid_to FROM memories m \
             WHERE m.user_id = $1 AND m.valid_to IS NOT NULL \
             ORDER BY created_at, id"
        );
        let export = reports::export(&mut *tx, user_id, memories).await?;
        tx.rollback().await.map_err(db("reading an export"))?;
        Ok(export)
    }

    async fn totals(&self) -> Result<StoreTotals, StoreError> {
        // Every user's: operator-wide. The counts the triggers keep, one row
        // per user, rather than a count of the memories.
        let (memories, pending): (i64, i64) = sqlx::query_as(
            "SELECT (SELECT coalesce(sum(current), 0)::bigint FROM memory_users), \
                    (SELECT count(*) FROM pending_extractions)",
        )
        .fetch_one(self.operator())
        .await
        .map_err(db("counting every user's memories"))?;
        Ok(StoreTotals {
            memories: memories.max(0) as u64,
            pending: pending.max(0) as u64,
        })
    }

    async fn users(&self) -> Result<Vec<String>, StoreError> {
        // Every user's: operator-wide. Byte order, as SQLite sorts.
        sqlx::query_scalar(
            "SELECT user_id FROM (SELECT user_id FROM memories \
                                  UNION SELECT user_id FROM pending_extractions) u \
             ORDER BY user_id COLLATE \"C\"",
        )
        .fetch_all(self.operator())
        .await
        .map_err(db("listing users"))
    }
}
