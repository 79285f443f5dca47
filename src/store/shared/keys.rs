//! API keys ([`Keys`]) stored and found alike on both backends: each is a
//! [`KeyTable`], and [`Keys`] follows. Revoking stays with each: it takes
//! the time where its dialect keeps it (SQLite: this process's clock;
//! PostgreSQL: the database's). A rotation is one transaction: the old key
//! gets its end and the successor is stored, or neither.
//!
//! Expiry is judged by this process's clock on both backends (bound into
//! the query), the same clock that `engram keys create --expires-in` and
//! `engram keys rotate --grace` count from.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::query::Query;
use sqlx::{AssertSqlSafe, Database, Encode, Executor, Pool, Type};
use uuid::Uuid;

use super::{Dialect, KEY_SELECT, key_from_row};
use crate::store::{Access, ApiKey, Keys, StoreError, db};

/// A backend's `api_keys` table.
#[async_trait]
pub(in crate::store) trait KeyTable: Send + Sync {
    type Db: Dialect;

    /// The pool the table is read and written through.
    fn key_pool(&self) -> &Pool<Self::Db>;

    /// [`Keys::revoke_key`]: stamps the key revoked now, unless it is already.
    async fn revoke(&self, id: Uuid) -> Result<bool, StoreError>;
}

/// The condition a key row meets while active, `{p}N` being the instant.
fn active_at(p: &str, n: u8) -> String {
    format!("revoked_at IS NULL AND (expires_at IS NULL OR expires_at > {p}{n})")
}

/// The `INSERT` of one key, bound by [`insert_key`].
fn insert_key_sql(p: &str) -> String {
    format!(
        "INSERT INTO api_keys \
         (id, prefix, hash, user_id, label, created_at, revoked_at, expires_at, read_only) \
         VALUES ({p}1, {p}2, {p}3, {p}4, {p}5, {p}6, {p}7, {p}8, {p}9)"
    )
}

#[async_trait]
impl<S> Keys for S
where
    S: KeyTable,
    for<'p> &'p Pool<S::Db>: Executor<'p, Database = S::Db>,
    for<'c> &'c mut <S::Db as Database>::Connection: Executor<'c, Database = S::Db>,
    for<'t> &'t str: Encode<'t, S::Db> + Type<S::Db>,
    for<'t> Option<&'t str>: Encode<'t, S::Db> + Type<S::Db>,
    bool: for<'t> Encode<'t, S::Db> + Type<S::Db>,
    Option<<S::Db as Dialect>::Time>: for<'t> Encode<'t, S::Db> + Type<S::Db>,
{
    async fn add_key(&self, key: &ApiKey) -> Result<(), StoreError> {
        let sql = insert_key_sql(S::Db::PARAM);
        bind_key::<S::Db>(&sql, key)
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
        let sql = format!("{KEY_SELECT} WHERE hash = {p}1 AND {}", active_at(p, 2));
        let row = sqlx::query(AssertSqlSafe(sql))
            .bind(hash)
            .bind(S::Db::time(Utc::now()))
            .fetch_optional(self.key_pool())
            .await
            .map_err(db("looking up an API key"))?;
        row.as_ref().map(key_from_row).transpose()
    }

    async fn revoke_key(&self, id: Uuid) -> Result<bool, StoreError> {
        self.revoke(id).await
    }

    async fn rotate_key(
        &self,
        old: Uuid,
        successor: &ApiKey,
        old_expires_at: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let p = S::Db::PARAM;
        let now = Utc::now();
        let mut tx = self
            .key_pool()
            .begin()
            .await
            .map_err(db("starting a key rotation"))?;
        // The old key first: only an active one is rotated, and its expiry
        // only ever moves sooner.
        let shorten = format!(
            "UPDATE api_keys SET expires_at = CASE \
             WHEN expires_at IS NULL OR expires_at > {p}1 THEN {p}1 ELSE expires_at END \
             WHERE id = {p}2 AND {}",
            active_at(p, 3)
        );
        let shortened = sqlx::query(AssertSqlSafe(shorten))
            .bind(S::Db::time(old_expires_at))
            .bind(S::Db::id(old))
            .bind(S::Db::time(now))
            .execute(&mut *tx)
            .await
            .map_err(db("ending a rotated key"))?;
        if S::Db::rows_affected(&shortened) == 0 {
            // Dropping the transaction rolls it back; nothing was written.
            return Ok(false);
        }
        let sql = insert_key_sql(p);
        bind_key::<S::Db>(&sql, successor)
            .execute(&mut *tx)
            .await
            .map_err(db("storing a successor key"))?;
        tx.commit().await.map_err(db("committing a key rotation"))?;
        Ok(true)
    }

    async fn delete_user_keys(&self, user_id: &str) -> Result<u64, StoreError> {
        let p = S::Db::PARAM;
        let sql = format!("DELETE FROM api_keys WHERE user_id = {p}1");
        let done = sqlx::query(AssertSqlSafe(sql))
            .bind(user_id)
            .execute(self.key_pool())
            .await
            .map_err(db("deleting a user's API keys"))?;
        Ok(S::Db::rows_affected(&done))
    }
}

/// [`insert_key_sql`] with `key`'s columns bound.
fn bind_key<'q, D>(sql: &'q str, key: &'q ApiKey) -> Query<'q, D, <D as Database>::Arguments>
where
    D: Dialect,
    &'q str: Encode<'q, D> + Type<D>,
    Option<&'q str>: Encode<'q, D> + Type<D>,
    bool: Encode<'q, D> + Type<D>,
    Option<D::Time>: Encode<'q, D> + Type<D>,
{
    sqlx::query(AssertSqlSafe(sql))
        .bind(D::id(key.id))
        .bind(key.prefix.as_str())
        .bind(key.hash.as_str())
        .bind(key.user_id.as_deref())
        .bind(key.label.as_str())
        .bind(D::time(key.created_at))
        .bind(key.revoked_at.map(D::time))
        .bind(key.expires_at.map(D::time))
        .bind(key.access == Access::ReadOnly)
}
