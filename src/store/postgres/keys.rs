//! API keys ([`Keys`](crate::store::Keys)), stored hashed: the shared
//! [`KeyTable`] on this store's pool, revoked at the database's time.

use async_trait::async_trait;
use sqlx::{PgPool, Postgres};
use uuid::Uuid;

use super::{PgStore, db};
use crate::store::StoreError;
use crate::store::shared::KeyTable;

#[async_trait]
impl KeyTable for PgStore {
    type Db = Postgres;

    /// Keys are found by hash before anyone's user is known: operator-wide.
    fn key_pool(&self) -> &PgPool {
        self.operator()
    }

    async fn revoke(&self, id: Uuid) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE api_keys SET revoked_at = now() WHERE id = $1 AND revoked_at IS NULL",
        )
        .bind(id)
        .execute(self.operator())
        .await
        .map_err(db("revoking an API key"))?
        .rows_affected();
        Ok(done > 0)
    }
}
