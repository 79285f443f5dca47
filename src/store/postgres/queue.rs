//! Deferred remembers ([`PendingQueue`]).

use async_trait::async_trait;
use sqlx::{PgConnection, Row};
use uuid::Uuid;

use super::rows::now_micros;
use super::{PgStore, db};
use crate::store::shared::pending_from_row;
use crate::store::{NewPending, Pending, PendingQueue, StoreError};

/// Stores a deferred remember on `conn` (in a write batch, or alone).
pub(super) async fn insert_pending(
    conn: &mut PgConnection,
    pending: &NewPending,
) -> Result<(), StoreError> {
    let now = now_micros();
    let metadata = serde_json::Value::Object(pending.metadata.clone());
    let memory_ids: Vec<Uuid> = pending.memory_ids.iter().map(|id| id.0).collect();
    // Not a memory: no trigger, no version moves.
    sqlx::query(
        "INSERT INTO pending_extractions (id, user_id, agent_id, run_id, input, metadata, \
         infer, memory_ids, error, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
    )
    .bind(pending.id)
    .bind(pending.scope.user_id().as_str())
    .bind(pending.scope.agent_id())
    .bind(pending.scope.run_id())
    .bind(&pending.input)
    .bind(&metadata)
    .bind(pending.infer)
    .bind(&memory_ids)
    .bind(&pending.error)
    .bind(now)
    .execute(&mut *conn)
    .await
    .map_err(db("storing a deferred remember"))?;
    Ok(())
}

#[async_trait]
impl PendingQueue for PgStore {
    async fn add_pending(&self, pending: NewPending) -> Result<(), StoreError> {
        let mut tx = self
            .user_transaction(pending.scope.user_id().as_str())
            .await?;
        insert_pending(&mut tx, &pending).await?;
        tx.commit().await.map_err(db("storing a deferred remember"))
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
        // Every user's: operator-wide.
        .fetch_all(self.operator())
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
        let cx = "dropping a deferred remember";
        let mut tx = self.user_transaction(user_id).await?;
        let done = sqlx::query("DELETE FROM pending_extractions WHERE user_id = $1 AND id = $2")
            .bind(user_id)
            .bind(id)
            .execute(&mut *tx)
            .await
            .map_err(db(cx))?
            .rows_affected();
        tx.commit().await.map_err(db(cx))?;
        Ok(done > 0)
    }

    async fn retry_pending(&self, user_id: &str, id: Uuid, error: &str) -> Result<(), StoreError> {
        let cx = "recording a failed re-extraction";
        let mut tx = self.user_transaction(user_id).await?;
        sqlx::query(
            "UPDATE pending_extractions SET attempts = attempts + 1, error = $3 \
             WHERE user_id = $1 AND id = $2",
        )
        .bind(user_id)
        .bind(id)
        .bind(error)
        .execute(&mut *tx)
        .await
        .map_err(db(cx))?;
        tx.commit().await.map_err(db(cx))
    }
}
