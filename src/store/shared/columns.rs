//! How each dialect stores the columns whose types differ, so that one
//! mapping ([`super::rows`]) reads a row of either backend.
//!
//! SQLite keeps ids as TEXT, times as integer milliseconds, and JSON, lists
//! and id lists as JSON text; PostgreSQL as `uuid`, `timestamptz`, `jsonb`,
//! `text[]` and `uuid[]`. Each backend implements [`Columns`] for its row
//! type; the mappers are generic over it (static dispatch, no boxing).
//!
//! [`Plain`] reads the columns both hand over alike, for any sqlx row.
//! Every method takes the column, and the context a database error is
//! reported with ([`crate::store::StoreError::Database`]); the ones that
//! can find corrupt data also take `what`, the noun its message names.

use chrono::{DateTime, Utc};
use sqlx::{ColumnIndex, Decode, Row, Type};
use uuid::Uuid;

use crate::model::Metadata;
use crate::store::{StoreError, db};

/// The columns both dialects hand over as the same Rust type (text,
/// booleans, 64-bit integers): read alike from any sqlx row.
pub(in crate::store) trait Plain {
    /// A `TEXT` column.
    fn text(&self, col: &str, cx: &'static str) -> Result<String, StoreError>;

    /// A nullable `TEXT` column.
    fn opt_text(&self, col: &str, cx: &'static str) -> Result<Option<String>, StoreError>;

    /// A boolean column.
    fn flag(&self, col: &str, cx: &'static str) -> Result<bool, StoreError>;

    /// A 64-bit integer column (`count(*)`, sums).
    fn bigint(&self, col: &str, cx: &'static str) -> Result<i64, StoreError>;
}

impl<R> Plain for R
where
    R: Row,
    for<'c> &'c str: ColumnIndex<R>,
    for<'r> String: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> bool: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> i64: Decode<'r, R::Database> + Type<R::Database>,
{
    fn text(&self, col: &str, cx: &'static str) -> Result<String, StoreError> {
        self.try_get(col).map_err(db(cx))
    }

    fn opt_text(&self, col: &str, cx: &'static str) -> Result<Option<String>, StoreError> {
        self.try_get(col).map_err(db(cx))
    }

    fn flag(&self, col: &str, cx: &'static str) -> Result<bool, StoreError> {
        self.try_get(col).map_err(db(cx))
    }

    fn bigint(&self, col: &str, cx: &'static str) -> Result<i64, StoreError> {
        self.try_get(col).map_err(db(cx))
    }
}

/// A result row, read column by column in its dialect's types.
pub(in crate::store) trait Columns: Plain {
    /// An `INTEGER` column (32 bits on PostgreSQL), widened.
    fn integer(&self, col: &str, cx: &'static str) -> Result<i64, StoreError>;

    /// An id; on SQLite, text that is not one is corrupt: "`what` 'text'".
    fn id(&self, col: &str, what: &str, cx: &'static str) -> Result<Uuid, StoreError>;

    /// A list of ids; on SQLite a JSON array of them ("`what`: error" when it
    /// is not one, "memory id 'text'" for an element that is no id).
    fn ids(&self, col: &str, what: &str, cx: &'static str) -> Result<Vec<Uuid>, StoreError>;

    /// A point in time.
    fn time(&self, col: &str, cx: &'static str) -> Result<DateTime<Utc>, StoreError>;

    /// A nullable point in time.
    fn opt_time(&self, col: &str, cx: &'static str) -> Result<Option<DateTime<Utc>>, StoreError>;

    /// Any JSON value; on SQLite, text that is not JSON is "`what`: error".
    fn json(
        &self,
        col: &str,
        what: &str,
        cx: &'static str,
    ) -> Result<serde_json::Value, StoreError>;

    /// A JSON object (metadata); anything else is corrupt, named `what`.
    fn metadata(&self, col: &str, what: &str, cx: &'static str) -> Result<Metadata, StoreError>;

    /// A list of strings; on SQLite a JSON array ("`what`: error" when not one).
    fn strings(&self, col: &str, what: &str, cx: &'static str) -> Result<Vec<String>, StoreError>;
}
