//! Rows as the PostgreSQL store reads and writes them: column lists, row to
//! value mapping, hashes and array and JSON parameters.

use sha2::{Digest, Sha256};
use sqlx::Row;
use sqlx::postgres::PgRow;
use uuid::Uuid;

use super::db;
use crate::model::{Memory, MemoryId, Metadata, Scope};
use crate::store::{HistoryEntry, StoreError, parse_event};

/// The columns [`memory_from_row`] reads, from `memories` aliased as `m`.
pub(super) const MEMORY_COLUMNS: &str = "m.id, m.user_id, m.agent_id, m.run_id, m.content, m.metadata, \
                              m.categories, m.created_at, m.updated_at";

pub(super) fn memory_from_row(row: &PgRow) -> Result<Memory, StoreError> {
    let get = db("reading a memory");
    let metadata: serde_json::Value = row.try_get("metadata").map_err(&get)?;
    let serde_json::Value::Object(metadata) = metadata else {
        return Err(StoreError::Corrupt(format!(
            "metadata is not an object: {metadata}"
        )));
    };
    Ok(Memory {
        id: MemoryId(row.try_get("id").map_err(&get)?),
        memory: row.try_get("content").map_err(&get)?,
        scope: Scope {
            user_id: row.try_get("user_id").map_err(&get)?,
            agent_id: row.try_get("agent_id").map_err(&get)?,
            run_id: row.try_get("run_id").map_err(&get)?,
        },
        metadata: Metadata::from(metadata),
        categories: row.try_get("categories").map_err(&get)?,
        created_at: row.try_get("created_at").map_err(&get)?,
        updated_at: row.try_get("updated_at").map_err(&get)?,
    })
}

pub(super) fn history_from_row(row: &PgRow) -> Result<HistoryEntry, StoreError> {
    let get = db("reading history");
    let event: String = row.try_get("event").map_err(&get)?;
    Ok(HistoryEntry {
        memory_id: MemoryId(row.try_get("memory_id").map_err(&get)?),
        event: parse_event(&event)?,
        old_memory: row.try_get("old_content").map_err(&get)?,
        new_memory: row.try_get("new_content").map_err(&get)?,
        actor: row.try_get("actor").map_err(&get)?,
        created_at: row.try_get("created_at").map_err(&get)?,
    })
}

pub(super) fn content_hash(content: &str) -> Vec<u8> {
    Sha256::digest(content.as_bytes()).to_vec()
}

/// A Postgres array literal (`{a,b}`) of ids, for a setting read as `uuid[]`.
pub(super) fn uuid_array_literal(ids: &[Uuid]) -> String {
    let inner: Vec<String> = ids.iter().map(Uuid::to_string).collect();
    format!("{{{}}}", inner.join(","))
}
