//! API keys ([`Keys`]) stored and found alike on both backends: each is a
//! [`KeyTable`], and [`Keys`] follows. Revoking stays with each: it takes
//! the time where its dialect keeps it (SQLite: this process's clock;
//! PostgreSQL: the database's).

use async_trait::async_trait;
use sqlx::{AssertSqlSafe, Encode, Executor, Pool, Type};
use uuid::Uuid;

use super::{Dialect, KEY_SELECT, key_from_row};
use crate::store::{ApiKey, Keys, StoreError, db};

/// A backend's `api_keys` table.
#[async_trait]
pub(in crate::store) trait KeyTable: Send + Sync {
    type Db: Dialect;

    /// The pool the table is read and written through.
    fn key_pool(&self) -> &Pool<Self::Db>;

    /// [`Keys::revoke_key`]: stamps the key revoked now, unless it is already.
    async fn revoke(&self, id: Uuid) -> Result<bool, StoreError>;
}

#[async_trait]
impl<S> Keys for S
where
    S: KeyTable,
    for<'p> &'p Pool<S::Db>: Executor<'p, Database = S::Db>,
    for<'t> &'t str: Encode<'t, S::Db> + Type<S::Db>,
    for<'t> Option<&'t str>: Encode<'t, S::Db> + Type<S::Db>,
    Option<<S::Db as Dialect>::Time>: for<'t> Encode<'t, S::Db> + Type<S::Db>,
{
    async fn add_key(&self, key: &ApiKey) -> Result<(), StoreError> {
        let p = S::Db::PARAM;
        let sql = format!(
            "INSERT INTO api_keys (id, prefix, hash, user_id, label, created_at, revoked_at) \
             VALUES ({p}1, {p}2, {p}3, {p}4, {p}5, {p}6, {p}7)"
        );
        sqlx::query(AssertSqlSafe(sql))
            .bind(S::Db::id(key.id))
            .bind(key.prefix.as_str())
            .bind(key.hash.as_str())
            .bind(key.user_id.as_deref())
            .bind(key.label.as_str())
            .bind(S::Db::time(key.created_at))
            .bind(key.revoked_at.map(S::Db::time))
            .execute(self.key_pool())
            .await
            .map_err(db("storing an API key"))?;
        Ok(())
    }

    async fn keys(&self) -> Result<Vec<ApiKey>, StoreError> {
        let sql = format!("{KEY_SELECT} ORDER BY created_at, id");
        let rows = sqlx::query(AssertSqlSafe(sql))
            .fetch_all(self.key_pool())
            .await
            .map_err(db("listing API keys"))?;
        rows.iter().map(key_from_row).collect()
    }

    async fn active_key(&self, hash: &str) -> Result<Option<ApiKey>, StoreError> {
        let p = S::Db::PARAM;
        let sql = format!("{KEY_SELECT} WHERE hash = {p}1 AND revoked_at IS NULL");
        let row = sqlx::query(AssertSqlSafe(sql))
            .bind(hash)
            .fetch_optional(self.key_pool())
            .await
            .map_err(db("looking up an API key"))?;
        row.as_ref().map(key_from_row).transpose()
    }

    async fn revoke_key(&self, id: Uuid) -> Result<bool, StoreError> {
        self.revoke(id).await
    }
}
