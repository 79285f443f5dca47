//! A user's memories by recency, page by page, and a memory's history
//! ([`Reads`](crate::store::Reads)), read alike on both backends.

use sqlx::{AssertSqlSafe, Connection, Encode, Executor, Type};
use uuid::Uuid;

use super::{Dialect, HISTORY_SELECT, MEMORY_COLUMNS, history_from_row, memory_from_row};
use crate::model::{Memory, Scope};
use crate::store::{HistoryEntry, ListingKey, StoreError, db};

/// Up to `limit` memories in `scope`, by the backend's statement `sql`
/// (parameters: the user, agent and run, then the limit).
pub(in crate::store) async fn recent<C>(
    conn: &mut C,
    sql: String,
    scope: &Scope,
    limit: usize,
) -> Result<Vec<Memory>, StoreError>
where
    C: Connection<Database: Dialect>,
    for<'c> &'c mut C: Executor<'c, Database = C::Database>,
    for<'t> &'t str: Encode<'t, C::Database> + Type<C::Database>,
    for<'t> Option<&'t str>: Encode<'t, C::Database> + Type<C::Database>,
    i64: for<'t> Encode<'t, C::Database> + Type<C::Database>,
{
    let rows = sqlx::query(AssertSqlSafe(sql))
        .bind(scope.user_id().as_str())
        .bind(scope.agent_id())
        .bind(scope.run_id())
        .bind(limit as i64)
        .fetch_all(&mut *conn)
        .await
        .map_err(db("listing memories"))?;
    rows.iter().map(memory_from_row).collect()
}

/// The history of memory `id` of the user, oldest first; none while the
/// memory has expired (it is gone for every read before the purge).
pub(in crate::store) async fn history<C>(
    conn: &mut C,
    user_id: &str,
    id: Uuid,
) -> Result<Vec<HistoryEntry>, StoreError>
where
    C: Connection<Database: Dialect>,
    for<'c> &'c mut C: Executor<'c, Database = C::Database>,
    for<'t> &'t str: Encode<'t, C::Database> + Type<C::Database>,
{
    let p = <C::Database as Dialect>::PARAM;
    let now = <C::Database as Dialect>::NOW;
    let sql = format!(
        "{HISTORY_SELECT} WHERE user_id = {p}1 AND memory_id = {p}2 \
         AND NOT EXISTS (SELECT 1 FROM memories m WHERE m.id = {p}2 AND m.expires_at <= {now}) \
         ORDER BY pk"
    );
    let rows = sqlx::query(AssertSqlSafe(sql))
        .bind(user_id)
        .bind(<C::Database as Dialect>::id(id))
        .fetch_all(&mut *conn)
        .await
        .map_err(db("reading history"))?;
    rows.iter().map(history_from_row).collect()
}

/// Up to `limit` current, unexpired memories of the user in (`created_at`,
/// `id`) order, after `after` when given ([`Reads::list`](crate::store::Reads::list)):
/// a range scan of `memories_by_creation` on both backends.
pub(in crate::store) async fn page<C>(
    conn: &mut C,
    user_id: &str,
    after: Option<ListingKey>,
    limit: usize,
) -> Result<Vec<Memory>, StoreError>
where
    C: Connection<Database: Dialect>,
    for<'c> &'c mut C: Executor<'c, Database = C::Database>,
    for<'t> &'t str: Encode<'t, C::Database> + Type<C::Database>,
    i64: for<'t> Encode<'t, C::Database> + Type<C::Database>,
{
    let p = <C::Database as Dialect>::PARAM;
    let now = <C::Database as Dialect>::NOW;
    // Row-value comparison: both planners read it as the start of a range
    // of the (user_id, created_at, id) index.
    let start = if after.is_some() {
        format!("AND (m.created_at, m.id) > ({p}3, {p}4)")
    } else {
        String::new()
    };
    let sql = format!(
        "SELECT {MEMORY_COLUMNS} FROM memories m \
         WHERE m.user_id = {p}1 AND m.valid_to IS NULL {start} \
         AND (m.expires_at IS NULL OR m.expires_at > {now}) \
         ORDER BY m.created_at, m.id LIMIT {p}2"
    );
    let mut query = sqlx::query(AssertSqlSafe(sql))
        .bind(user_id)
        .bind(i64::try_from(limit).unwrap_or(i64::MAX));
    if let Some(key) = after {
        query = query
            .bind(<C::Database as Dialect>::time(key.created_at))
            .bind(<C::Database as Dialect>::id(key.id.0));
    }
    let rows = query
        .fetch_all(&mut *conn)
        .await
        .map_err(db("listing memories"))?;
    rows.iter().map(memory_from_row).collect()
}
