//! SQLite's dialect: how its rows hold ids (TEXT), times (integer
//! milliseconds) and JSON, lists and id lists (JSON text), for the shared
//! mapping ([`Columns`]); and its parameters of the same kinds.

use chrono::{DateTime, Utc};
use sqlx::Row;
use sqlx::sqlite::SqliteRow;
use uuid::Uuid;

use super::db;
use crate::model::{MemoryId, Metadata};
use crate::store::shared::Columns;
use crate::store::{SearchScope, StoreError};

impl Columns for SqliteRow {
    fn integer(&self, col: &str, cx: &'static str) -> Result<i64, StoreError> {
        self.try_get(col).map_err(db(cx))
    }

    fn id(&self, col: &str, what: &str, cx: &'static str) -> Result<Uuid, StoreError> {
        let raw: String = self.try_get(col).map_err(db(cx))?;
        parse_uuid(&raw, what)
    }

    fn ids(&self, col: &str, what: &str, cx: &'static str) -> Result<Vec<Uuid>, StoreError> {
        let raw: String = self.try_get(col).map_err(db(cx))?;
        serde_json::from_str::<Vec<String>>(&raw)
            .map_err(|e| StoreError::Corrupt(format!("{what}: {e}")))?
            .iter()
            .map(|id| parse_uuid(id, "memory id"))
            .collect()
    }

    fn time(&self, col: &str, cx: &'static str) -> Result<DateTime<Utc>, StoreError> {
        self.try_get(col).map(millis).map_err(db(cx))
    }

    fn opt_time(&self, col: &str, cx: &'static str) -> Result<Option<DateTime<Utc>>, StoreError> {
        let ms: Option<i64> = self.try_get(col).map_err(db(cx))?;
        Ok(ms.map(millis))
    }

    fn json(
        &self,
        col: &str,
        what: &str,
        cx: &'static str,
    ) -> Result<serde_json::Value, StoreError> {
        json_text(self, col, what, cx)
    }

    fn metadata(&self, col: &str, what: &str, cx: &'static str) -> Result<Metadata, StoreError> {
        json_text(self, col, what, cx)
    }

    fn strings(&self, col: &str, what: &str, cx: &'static str) -> Result<Vec<String>, StoreError> {
        json_text(self, col, what, cx)
    }
}

/// A TEXT column holding JSON, as `T`.
fn json_text<T: serde::de::DeserializeOwned>(
    row: &SqliteRow,
    col: &str,
    what: &str,
    cx: &'static str,
) -> Result<T, StoreError> {
    let raw: String = row.try_get(col).map_err(db(cx))?;
    serde_json::from_str(&raw).map_err(|e| StoreError::Corrupt(format!("{what}: {e}")))
}

/// An id kept as TEXT; anything else is corrupt ("`what` 'text'").
fn parse_uuid(raw: &str, what: &str) -> Result<Uuid, StoreError> {
    Uuid::parse_str(raw).map_err(|_| StoreError::Corrupt(format!("{what} '{raw}'")))
}

/// The `id` column of a row of `memories`.
pub(super) fn parse_id(row: &SqliteRow) -> Result<MemoryId, StoreError> {
    row.id("id", "memory id", "reading an id").map(MemoryId)
}

pub(super) fn millis(ms: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(ms).unwrap_or_default()
}

pub(super) fn json_array(values: &[i64]) -> String {
    serde_json::Value::from(values.to_vec()).to_string()
}

pub(super) fn filter_json(at: SearchScope<'_>) -> Option<String> {
    at.filter_object().map(|object| object.to_string())
}
