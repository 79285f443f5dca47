//! A statement whose one parameter is the user, run on a connection inside
//! a write: SQLite's deletes of everything a user has, PostgreSQL's lock of
//! a user's writes.

use sqlx::{Connection, Encode, Executor, Type};

use super::Dialect;
use crate::store::{StoreError, db};

/// Runs `sql` with `user_id` as its parameter on `conn`; how many rows it changed.
pub(in crate::store) async fn for_user<C>(
    conn: &mut C,
    sql: &'static str,
    user_id: &str,
    context: &'static str,
) -> Result<u64, StoreError>
where
    C: Connection<Database: Dialect>,
    for<'c> &'c mut C: Executor<'c, Database = C::Database>,
    for<'t> &'t str: Encode<'t, C::Database> + Type<C::Database>,
{
    let done = sqlx::query(sql)
        .bind(user_id)
        .execute(&mut *conn)
        .await
        .map_err(db(context))?;
    Ok(<C::Database as Dialect>::rows_affected(&done))
}

/// Refuses a write of `given`'s memories in a batch begun for `batch`: the
/// batch holds only that user's write lock, and moves only their version.
pub(in crate::store) fn same_user(batch: &str, given: &str) -> Result<(), StoreError> {
    if batch == given {
        return Ok(());
    }
    Err(StoreError::Unsupported(format!(
        "a write batch of user \"{batch}\" cannot write a memory of user \"{given}\""
    )))
}
