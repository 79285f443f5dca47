//! A user's memories by id, by recency, page by page, and their history
//! ([`Reads`]).

use async_trait::async_trait;

use super::{SqliteStore, db};
use crate::model::{Memory, MemoryId, Scope};
use crate::store::shared::{MEMORY_COLUMNS, memory_from_row, reads};
use crate::store::{HistoryEntry, ListingKey, Reads, StoreError};

#[async_trait]
impl Reads for SqliteStore {
    async fn get_many(&self, user_id: &str, ids: &[MemoryId]) -> Result<Vec<Memory>, StoreError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let id_list: Vec<String> = ids.iter().map(ToString::to_string).collect();
        let sql = format!(
            "SELECT {MEMORY_COLUMNS} FROM json_each(?) j CROSS JOIN memories m ON m.id = j.value \
             WHERE m.user_id = ? AND {}",
            unexpired!("m")
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
        const WHERE: &str = concat!(
            "WHERE m.user_id = ?1 AND m.valid_to IS NULL \
             AND (?2 IS NULL OR m.agent_id = ?2) AND (?3 IS NULL OR m.run_id = ?3) AND ",
            unexpired!("m")
        );
        let sql = format!(
            "SELECT {MEMORY_COLUMNS} FROM memories m {WHERE} \
             ORDER BY m.updated_at DESC, m.pk DESC LIMIT ?4"
        );
        let mut conn = self.pool.acquire().await.map_err(db("listing memories"))?;
        let memories = reads::recent(&mut *conn, sql, scope, limit).await?;
        drop(conn);
        let total: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT COUNT(*) FROM memories m {WHERE}"
        )))
        .bind(scope.user_id().as_str())
        .bind(scope.agent_id())
        .bind(scope.run_id())
        .fetch_one(&self.pool)
        .await
        .map_err(db("counting memories"))?;
        Ok((memories, total.max(0) as u64))
    }

    async fn history(&self, user_id: &str, id: MemoryId) -> Result<Vec<HistoryEntry>, StoreError> {
        let mut conn = self.pool.acquire().await.map_err(db("reading history"))?;
        reads::history(&mut *conn, user_id, id.0).await
    }

    async fn list(
        &self,
        user_id: &str,
        after: Option<ListingKey>,
        limit: usize,
    ) -> Result<Vec<Memory>, StoreError> {
        let mut conn = self.pool.acquire().await.map_err(db("listing memories"))?;
        reads::page(&mut *conn, user_id, after, limit).await
    }
}
