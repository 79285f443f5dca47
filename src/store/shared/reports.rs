//! What a user has stored ([`Reports`](crate::store::Reports)), read alike on
//! both backends: the stats by the backend's aggregate statement, the export
//! inside the snapshot each opens its own way.

use sqlx::{AssertSqlSafe, Connection, Encode, Executor, Type};

use super::rows::{export_from_rows, stats_from_row};
use super::{Dialect, HISTORY_SELECT, PENDING_SELECT};
use crate::store::{StoreError, UserExport, UserStats, db};

/// The user's stats from the backend's statement `sql` (its parameter: the
/// user; its one row: what [`stats_from_row`] reads), for a store whose
/// vectors have `dims` dimensions. One statement: one snapshot.
pub(in crate::store) async fn stats<C>(
    conn: &mut C,
    sql: &'static str,
    user_id: &str,
    dims: usize,
) -> Result<UserStats, StoreError>
where
    C: Connection<Database: Dialect>,
    for<'c> &'c mut C: Executor<'c, Database = C::Database>,
    for<'t> &'t str: Encode<'t, C::Database> + Type<C::Database>,
{
    let row = sqlx::query(sql)
        .bind(user_id)
        .fetch_one(&mut *conn)
        .await
        .map_err(db("counting the user's data"))?;
    Ok(stats_from_row(&row)?.finish(user_id, dims))
}

/// Everything stored for the user, read on `conn` (the caller's read
/// snapshot, so a write committed meanwhile cannot show up in one read and
/// not in another): the memories by the backend's statement `memories`
/// ([`super::MEMORY_COLUMNS`] and `valid_to` of user `{p}1`, oldest first),
/// then their history and the deferred remembers.
pub(in crate::store) async fn export<C>(
    conn: &mut C,
    user_id: &str,
    memories: String,
) -> Result<UserExport, StoreError>
where
    C: Connection<Database: Dialect>,
    for<'c> &'c mut C: Executor<'c, Database = C::Database>,
    for<'t> &'t str: Encode<'t, C::Database> + Type<C::Database>,
{
    let p = <C::Database as Dialect>::PARAM;
    let memories = sqlx::query(AssertSqlSafe(memories))
        .bind(user_id)
        .fetch_all(&mut *conn)
        .await
        .map_err(db("exporting memories"))?;
    let sql = format!("{HISTORY_SELECT} WHERE user_id = {p}1 ORDER BY pk");
    let history = sqlx::query(AssertSqlSafe(sql))
        .bind(user_id)
        .fetch_all(&mut *conn)
        .await
        .map_err(db("exporting history"))?;
    let sql = format!("{PENDING_SELECT} WHERE user_id = {p}1 ORDER BY created_at, id");
    let pending = sqlx::query(AssertSqlSafe(sql))
        .bind(user_id)
        .fetch_all(&mut *conn)
        .await
        .map_err(db("exporting deferred remembers"))?;
    export_from_rows(user_id, &memories, &history, &pending)
}
