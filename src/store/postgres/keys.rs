//! API keys ([`Keys`]), stored hashed.

use async_trait::async_trait;
use uuid::Uuid;

use super::{PgStore, db};
use crate::store::shared::{KEY_SELECT, key_from_row};
use crate::store::{ApiKey, Keys, StoreError};

#[async_trait]
impl Keys for PgStore {
    async fn add_key(&self, key: &ApiKey) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO api_keys (id, prefix, hash, user_id, label, created_at, revoked_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(key.id)
        .bind(&key.prefix)
        .bind(&key.hash)
        .bind(&key.user_id)
        .bind(&key.label)
        .bind(key.created_at)
        .bind(key.revoked_at)
        .execute(&self.pool)
        .await
        .map_err(db("storing an API key"))?;
        Ok(())
    }

    async fn keys(&self) -> Result<Vec<ApiKey>, StoreError> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "{} ORDER BY created_at, id",
            KEY_SELECT
        )))
        .fetch_all(&self.pool)
        .await
        .map_err(db("listing API keys"))?;
        rows.iter().map(key_from_row).collect()
    }

    async fn active_key(&self, hash: &str) -> Result<Option<ApiKey>, StoreError> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "{} WHERE hash = $1 AND revoked_at IS NULL",
            KEY_SELECT
        )))
        .bind(hash)
        .fetch_optional(&self.pool)
        .await
        .map_err(db("looking up an API key"))?;
        row.as_ref().map(key_from_row).transpose()
    }

    async fn revoke_key(&self, id: Uuid) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE api_keys SET revoked_at = now() WHERE id = $1 AND revoked_at IS NULL",
        )
        .bind(id)
        .execute(&self.pool)
        .await
        .map_err(db("revoking an API key"))?
        .rows_affected();
        Ok(done > 0)
    }
}
