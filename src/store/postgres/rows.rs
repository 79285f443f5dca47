//! PostgreSQL's dialect: how its rows hold ids (`uuid`), times
//! (`timestamptz`), JSON (`jsonb`), lists (`text[]`) and id lists
//! (`uuid[]`), for the shared mapping ([`Columns`]); and its parameters of
//! the kinds the database cannot take as they are.

use chrono::{DateTime, Utc};
use sqlx::Row;
use sqlx::postgres::PgRow;
use uuid::Uuid;

use super::db;
use crate::model::Metadata;
use crate::store::StoreError;
use crate::store::shared::Columns;

impl Columns for PgRow {
    fn integer(&self, col: &str, cx: &'static str) -> Result<i64, StoreError> {
        self.try_get::<i32, _>(col).map(i64::from).map_err(db(cx))
    }

    fn id(&self, col: &str, _what: &str, cx: &'static str) -> Result<Uuid, StoreError> {
        self.try_get(col).map_err(db(cx))
    }

    fn ids(&self, col: &str, _what: &str, cx: &'static str) -> Result<Vec<Uuid>, StoreError> {
        self.try_get(col).map_err(db(cx))
    }

    fn time(&self, col: &str, cx: &'static str) -> Result<DateTime<Utc>, StoreError> {
        self.try_get(col).map_err(db(cx))
    }

    fn opt_time(&self, col: &str, cx: &'static str) -> Result<Option<DateTime<Utc>>, StoreError> {
        self.try_get(col).map_err(db(cx))
    }

    fn json(
        &self,
        col: &str,
        _what: &str,
        cx: &'static str,
    ) -> Result<serde_json::Value, StoreError> {
        self.try_get(col).map_err(db(cx))
    }

    fn metadata(&self, col: &str, what: &str, cx: &'static str) -> Result<Metadata, StoreError> {
        match self.try_get(col).map_err(db(cx))? {
            serde_json::Value::Object(metadata) => Ok(metadata),
            other => Err(StoreError::Corrupt(format!(
                "{what} is not an object: {other}"
            ))),
        }
    }

    fn strings(&self, col: &str, _what: &str, cx: &'static str) -> Result<Vec<String>, StoreError> {
        self.try_get(col).map_err(db(cx))
    }
}

/// Now, as PostgreSQL keeps it (microseconds): a value written now reads
/// back equal.
pub(super) fn now_micros() -> DateTime<Utc> {
    micros(Utc::now())
}

/// `at` to the microsecond, as a `timestamptz` holds what sqlx sends it.
pub(super) fn micros(at: DateTime<Utc>) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(at.timestamp_micros()).unwrap_or(at)
}

/// A Postgres array literal (`{a,b}`) of ids, for a setting read as `uuid[]`.
pub(super) fn uuid_array_literal(ids: &[Uuid]) -> String {
    let inner: Vec<String> = ids.iter().map(Uuid::to_string).collect();
    format!("{{{}}}", inner.join(","))
}
