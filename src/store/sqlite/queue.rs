//! Deferred remembers ([`PendingQueue`]).

use async_trait::async_trait;
use chrono::Utc;
use sqlx::Row;
use sqlx::sqlite::SqliteRow;

use super::rows::millis;
use super::{SqliteStore, db};
use crate::model::{Metadata, Scope};
use crate::store::{NewPending, PENDING_SELECT, Pending, PendingQueue, StoreError};

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

pub(super) fn pending_from_row(row: &SqliteRow) -> Result<Pending, StoreError> {
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
