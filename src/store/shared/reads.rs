//! A user's memories by recency and a memory's history
//! ([`Reads`](crate::store::Reads)), read alike on both backends.

use sqlx::{AssertSqlSafe, Connection, Encode, Executor, Type};
use uuid::Uuid;

use super::{Dialect, HISTORY_SELECT, history_from_row, memory_from_row};
use crate::model::{Memory, Scope};
use crate::store::{HistoryEntry, StoreError, db};

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
