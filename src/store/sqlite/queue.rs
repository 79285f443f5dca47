//! Deferred remembers ([`PendingQueue`]).

use async_trait::async_trait;
use chrono::Utc;
use sqlx::sqlite::SqliteConnection;

use super::{SqliteStore, db};
use crate::store::shared::{PENDING_SELECT, pending_from_row};
use crate::store::{NewPending, Pending, PendingQueue, StoreError};

/// Stores a deferred remember on `conn` (in a write batch, or alone).
pub(super) async fn insert_pending(
    conn: &mut SqliteConnection,
    pending: &NewPending,
) -> Result<(), StoreError> {
    let input =
        serde_json::to_string(&pending.input).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    let metadata =
        serde_json::to_string(&pending.metadata).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    let memory_ids: Vec<String> = pending.memory_ids.iter().map(ToString::to_string).collect();
    let memory_ids = serde_json::Value::from(memory_ids).to_string();
    sqlx::query(
        "INSERT INTO pending_extractions (id, user_id, agent_id, run_id, input, metadata, \
         infer, memory_ids, error, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
    )
    .bind(pending.id.to_string())
    .bind(pending.scope.user_id().as_str())
    .bind(pending.scope.agent_id())
    .bind(pending.scope.run_id())
    .bind(input)
    .bind(metadata)
    .bind(pending.infer)
    .bind(memory_ids)
    .bind(&pending.error)
    .bind(Utc::now().timestamp_millis())
    .execute(&mut *conn)
    .await
    .map_err(db("storing a deferred remember"))?;
    Ok(())
}

#[async_trait]
impl PendingQueue for SqliteStore {
    async fn add_pending(&self, pending: NewPending) -> Result<(), StoreError> {
        // Not a memory: no generation moves.
        let _writer = self.write_lock.lock().await;
        let mut conn = self
            .pool
            .acquire()
            .await
            .map_err(db("storing a deferred remember"))?;
        insert_pending(&mut conn, &pending).await
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
