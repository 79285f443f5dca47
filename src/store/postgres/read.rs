//! A user's memories by id, by recency, page by page, and their history
//! ([`Reads`]).

use async_trait::async_trait;
use sqlx::PgConnection;
use uuid::Uuid;

use super::{PgStore, db};
use crate::model::{Memory, MemoryId, Scope};
use crate::store::shared::{MEMORY_COLUMNS, memory_from_row, reads};
use crate::store::{HistoryEntry, ListingKey, Reads, StoreError};

/// Which rows [`memories_by_id`] reads: the user's (`$1`) of the ids `$2`,
/// expired ones left out.
pub(super) const BY_ID: &str = "m.user_id = $1 AND m.id = ANY ($2) \
     AND (m.expires_at IS NULL OR m.expires_at > now())";

/// The user's memories with these ids, read on `conn` (a write batch reads
/// its own writes so); expired ones are left out.
pub(super) async fn memories_by_id(
    conn: &mut PgConnection,
    user_id: &str,
    ids: &[MemoryId],
) -> Result<Vec<Memory>, StoreError> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let ids: Vec<Uuid> = ids.iter().map(|id| id.0).collect();
    let sql = format!("SELECT {MEMORY_COLUMNS} FROM memories m WHERE {BY_ID}");
    let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(user_id)
        .bind(&ids)
        .fetch_all(&mut *conn)
        .await
        .map_err(db("reading memories"))?;
    rows.iter().map(memory_from_row).collect()
}

#[async_trait]
impl Reads for PgStore {
    async fn get_many(&self, user_id: &str, ids: &[MemoryId]) -> Result<Vec<Memory>, StoreError> {
        let mut tx = self.user_transaction(user_id).await?;
        let memories = memories_by_id(&mut tx, user_id, ids).await?;
        tx.commit().await.map_err(db("reading memories"))?;
        Ok(memories)
    }

    async fn recent(&self, scope: &Scope, limit: usize) -> Result<(Vec<Memory>, u64), StoreError> {
        const WHERE: &str = "WHERE m.user_id = $1 AND m.valid_to IS NULL \
                             AND ($2::text IS NULL OR m.agent_id = $2) \
                             AND ($3::text IS NULL OR m.run_id = $3) \
                             AND (m.expires_at IS NULL OR m.expires_at > now())";
        let sql = format!(
            "SELECT {MEMORY_COLUMNS} FROM memories m {WHERE} \
             ORDER BY m.updated_at DESC, m.id DESC LIMIT $4"
        );
        let mut tx = self.user_transaction(scope.user_id().as_str()).await?;
        let memories = reads::recent(&mut *tx, sql, scope, limit).await?;
        let total: Option<i64> = if scope.is_whole_user() {
            // Kept by triggers; counting a large user's rows would cost milliseconds.
            // Less the expired ones awaiting the purge (an indexed read of those only).
            sqlx::query_scalar(
                "SELECT current - cardinality(engram_expired_ids($1)) \
                 FROM memory_users WHERE user_id = $1",
            )
            .bind(scope.user_id().as_str())
            .fetch_optional(&mut *tx)
            .await
            .map_err(db("counting memories"))?
        } else {
            sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
                "SELECT count(*) FROM memories m {WHERE}"
            )))
            .bind(scope.user_id().as_str())
            .bind(scope.agent_id())
            .bind(scope.run_id())
            .fetch_optional(&mut *tx)
            .await
            .map_err(db("counting memories"))?
        };
        tx.commit().await.map_err(db("counting memories"))?;
        Ok((memories, total.unwrap_or(0).max(0) as u64))
    }

    async fn history(&self, user_id: &str, id: MemoryId) -> Result<Vec<HistoryEntry>, StoreError> {
        let mut tx = self.user_transaction(user_id).await?;
        let history = reads::history(&mut *tx, user_id, id.0).await?;
        tx.commit().await.map_err(db("reading history"))?;
        Ok(history)
    }

    async fn list(
        &self,
        user_id: &str,
        after: Option<ListingKey>,
        limit: usize,
    ) -> Result<Vec<Memory>, StoreError> {
        let mut tx = self.user_transaction(user_id).await?;
        let page = reads::page(&mut *tx, user_id, after, limit).await?;
        tx.commit().await.map_err(db("listing memories"))?;
        Ok(page)
    }
}
