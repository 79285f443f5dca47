//! What the two dialects spell differently in the statements the backends
//! share (`keys`, `reads`, `reports`, `reembed`, `for_user`): the
//! placeholder, how ids and times are bound, and what a statement reports. SQLite's placeholders are
//! its own numbered `?NNN`, never PostgreSQL's `$n`.

use chrono::{DateTime, Utc};
use sqlx::postgres::PgQueryResult;
use sqlx::sqlite::SqliteQueryResult;
use sqlx::{Database, Encode, IntoArguments, Postgres, Sqlite, Type};
use uuid::Uuid;

use super::Columns;

/// A backend's database, as the shared statements need it: rows the shared
/// mapping reads ([`Columns`]), and parameters spelled and bound its way.
pub(in crate::store) trait Dialect:
    Database<Row: Columns, Arguments: IntoArguments<Self>>
{
    /// What a parameter's number follows: `{p}1` is `?1` on SQLite, `$1` on PostgreSQL.
    const PARAM: &'static str;

    /// The database's clock as the type `memories.expires_at` holds: a
    /// memory with `expires_at` at or before it has expired.
    const NOW: &'static str;

    /// An id as bound: TEXT on SQLite, `uuid` on PostgreSQL.
    type Id: for<'t> Encode<'t, Self> + Type<Self> + Send;

    /// A time as bound: integer milliseconds on SQLite, `timestamptz` on PostgreSQL.
    type Time: for<'t> Encode<'t, Self> + Type<Self> + Send;

    fn id(id: Uuid) -> Self::Id;

    fn time(at: DateTime<Utc>) -> Self::Time;

    /// How many rows a statement changed.
    fn rows_affected(done: &Self::QueryResult) -> u64;
}

impl Dialect for Sqlite {
    const PARAM: &'static str = "?";
    const NOW: &'static str = "unixepoch('subsec') * 1000";
    type Id = String;
    type Time = i64;

    fn id(id: Uuid) -> String {
        id.to_string()
    }

    fn time(at: DateTime<Utc>) -> i64 {
        at.timestamp_millis()
    }

    fn rows_affected(done: &SqliteQueryResult) -> u64 {
        done.rows_affected()
    }
}

impl Dialect for Postgres {
    const PARAM: &'static str = "$";
    const NOW: &'static str = "now()";
    type Id = Uuid;
    type Time = DateTime<Utc>;

    fn id(id: Uuid) -> Uuid {
        id
    }

    fn time(at: DateTime<Utc>) -> DateTime<Utc> {
        at
    }

    fn rows_affected(done: &PgQueryResult) -> u64 {
        done.rows_affected()
    }
}
