//! Rows as the SQLite store reads and writes them: column lists, row to
//! value mapping, ids, times, hashes and JSON parameters.

use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};
use sqlx::Row;
use sqlx::sqlite::SqliteRow;

use super::db;
use crate::model::{Memory, MemoryId, Metadata, Scope};
use crate::store::{HistoryEntry, SearchScope, StoreError, parse_event};

/// The columns [`memory_from_row`] reads, from `memories` aliased as `m`.
pub(super) const MEMORY_COLUMNS: &str = "m.id, m.user_id, m.agent_id, m.run_id, m.content, m.metadata, \
                              m.categories, m.created_at, m.updated_at";

pub(super) fn memory_from_row(row: &SqliteRow) -> Result<Memory, StoreError> {
    let get = db("reading a memory");
    let metadata: String = row.try_get("metadata").map_err(&get)?;
    let categories: String = row.try_get("categories").map_err(&get)?;
    Ok(Memory {
        id: parse_id(row)?,
        memory: row.try_get("content").map_err(&get)?,
        scope: Scope {
            user_id: row.try_get("user_id").map_err(&get)?,
            agent_id: row.try_get("agent_id").map_err(&get)?,
            run_id: row.try_get("run_id").map_err(&get)?,
        },
        metadata: serde_json::from_str::<Metadata>(&metadata)
            .map_err(|e| StoreError::Corrupt(format!("metadata: {e}")))?,
        categories: serde_json::from_str(&categories)
            .map_err(|e| StoreError::Corrupt(format!("categories: {e}")))?,
        created_at: millis(row.try_get("created_at").map_err(&get)?),
        updated_at: millis(row.try_get("updated_at").map_err(&get)?),
    })
}

pub(super) fn history_from_row(row: &SqliteRow) -> Result<HistoryEntry, StoreError> {
    let get = db("reading history");
    let memory_id: String = row.try_get("memory_id").map_err(&get)?;
    let event: String = row.try_get("event").map_err(&get)?;
    Ok(HistoryEntry {
        memory_id: memory_id
            .parse()
            .map_err(|_| StoreError::Corrupt(format!("history memory id '{memory_id}'")))?,
        event: parse_event(&event)?,
        old_memory: row.try_get("old_content").map_err(&get)?,
        new_memory: row.try_get("new_content").map_err(&get)?,
        actor: row.try_get("actor").map_err(&get)?,
        created_at: millis(row.try_get("created_at").map_err(&get)?),
    })
}

pub(super) fn parse_id(row: &SqliteRow) -> Result<MemoryId, StoreError> {
    let raw: String = row.try_get("id").map_err(db("reading an id"))?;
    raw.parse()
        .map_err(|_| StoreError::Corrupt(format!("memory id '{raw}'")))
}

pub(super) fn millis(ms: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(ms).unwrap_or_default()
}

pub(super) fn content_hash(content: &str) -> String {
    Sha256::digest(content.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

pub(super) fn json_array(values: &[i64]) -> String {
    serde_json::Value::from(values.to_vec()).to_string()
}

pub(super) fn filter_json(at: SearchScope<'_>) -> Option<String> {
    at.filter_object().map(|object| object.to_string())
}
