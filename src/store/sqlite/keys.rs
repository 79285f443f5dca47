//! API keys ([`Keys`](crate::store::Keys)), stored hashed: the shared
//! [`KeyTable`] on this store's pool, revoked at this process's time.

use async_trait::async_trait;
use chrono::Utc;
use sqlx::{Sqlite, SqlitePool};

use super::{SqliteStore, db};
use crate::store::StoreError;
use crate::store::shared::KeyTable;

#[async_trait]
impl KeyTable for SqliteStore {
    type Db = Sqlite;

    fn key_pool(&self) -> &SqlitePool {
        &self.pool
    }

    async fn revoke(&self, id: uuid::Uuid) -> Result<bool, StoreError> {
        let done =
            sqlx::query("UPDATE api_keys SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL")
                .bind(Utc::now().timestamp_millis())
                .bind(id.to_string())
                .execute(&self.pool)
                .await
                .map_err(db("revoking an API key"))?
                .rows_affected();
        Ok(done > 0)
    }
}
