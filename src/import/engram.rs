//! engram's own export: the JSON document `engram export --user U` and
//! `GET /api/v1/memory/export/{user_id}` write (`{"user_id", "exported_at",
//! "memories": [...], "pending": [...]}`), or the JSONL `engram export
//! --all` writes: one exported memory a line (the same object as in the
//! document's `memories`), and a deferred remember as
//! `{"user_id": ..., "pending": {...}}`.
//!
//! Everything of a memory is kept: id, scope, text, metadata, categories,
//! times, expiry, whether it is current, and its history. Deferred
//! remembers are not imported (they are the user's words awaiting the
//! model at the source: run `engram reextract` there first); each is
//! reported as skipped.

use serde_json::{Map, Value};

use super::{
    Entries, Entry, Format, Lines, Position, ReadError, Source, SourceRecord, json_line, kind,
    map_field, required_text, string, strings, time, uuid_id,
};
use crate::model::{Event, MemoryId};
use crate::service::ImportRecord;
use crate::store::HistoryEntry;

const PENDING: &str = "a deferred remember (run `engram reextract` at the source first)";

/// The document or the JSONL, whichever `bytes` hold.
pub fn read(bytes: Vec<u8>) -> Result<Source, ReadError> {
    if let Ok(Value::Object(document)) = serde_json::from_slice::<Value>(&bytes)
        && document.contains_key("memories")
    {
        return Ok(document_source(document));
    }
    let total = Lines::count(&bytes);
    let entries: Entries = Box::new(Lines::new(bytes).map(|(line, text)| {
        let object = json_line(line, text)?;
        let at = Position::Line(line);
        if object.contains_key("pending") {
            return Ok(Entry::Skipped { at, why: PENDING });
        }
        let user = string(&object, "user_id").map_err(|e| ReadError::at(at.clone(), e))?;
        memory(&object, at, user)
    }));
    Ok(Source {
        format: Format::Engram,
        shape: "engram export (JSONL)",
        total,
        entries,
    })
}

fn document_source(mut document: Map<String, Value>) -> Source {
    let user = document
        .get("user_id")
        .and_then(Value::as_str)
        .map(str::to_owned);
    let memories = match document.remove("memories") {
        Some(Value::Array(items)) => items,
        _ => Vec::new(),
    };
    let pending = match document.remove("pending") {
        Some(Value::Array(items)) => items.len(),
        _ => 0,
    };
    let total = memories.len() + pending;
    let memories = memories.into_iter().enumerate().map(move |(index, item)| {
        let at = Position::Item {
            list: "memories",
            index,
        };
        match item {
            Value::Object(object) => {
                // A memory names its user; the document's is the fallback.
                let own = string(&object, "user_id").map_err(|e| ReadError::at(at.clone(), e))?;
                memory(&object, at, own.or_else(|| user.clone()))
            }
            other => Err(ReadError::at(
                at,
                format!("expected an object, found {}", kind(&other)),
            )),
        }
    });
    let pending = (0..pending).map(|index| {
        Ok(Entry::Skipped {
            at: Position::Item {
                list: "pending",
                index,
            },
            why: PENDING,
        })
    });
    Source {
        format: Format::Engram,
        shape: "engram export (JSON)",
        total,
        entries: Box::new(memories.chain(pending)),
    }
}

/// One exported memory.
fn memory(
    object: &Map<String, Value>,
    at: Position,
    user: Option<String>,
) -> Result<Entry, ReadError> {
    let fail = |e: String| ReadError::at(at.clone(), e);
    let raw_id = string(object, "id").map_err(fail)?;
    let id = uuid_id(raw_id.as_deref()).ok_or_else(|| {
        fail(format!(
            "\"id\" is {raw_id:?}, expected a memory id (a UUID)"
        ))
    })?;
    let history = match object.get("history") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(rows)) => rows
            .iter()
            .enumerate()
            .map(|(n, row)| history_row(id, row).map_err(|e| fail(format!("history[{n}]: {e}"))))
            .collect::<Result<_, _>>()?,
        Some(other) => {
            return Err(fail(format!(
                "\"history\" is {}, expected a list",
                kind(other)
            )));
        }
    };
    let record = ImportRecord {
        id: Some(id),
        agent_id: string(object, "agent_id").map_err(fail)?,
        run_id: string(object, "run_id").map_err(fail)?,
        text: required_text(object, "memory").map_err(fail)?,
        metadata: map_field(object, "metadata").map_err(fail)?,
        categories: strings(object, "categories").map_err(fail)?,
        created_at: time(object.get("created_at")).map_err(|e| fail(format!("created_at: {e}")))?,
        updated_at: time(object.get("updated_at")).map_err(|e| fail(format!("updated_at: {e}")))?,
        valid_to: time(object.get("valid_to")).map_err(|e| fail(format!("valid_to: {e}")))?,
        expires_at: time(object.get("expires_at")).map_err(|e| fail(format!("expires_at: {e}")))?,
        history,
        ..ImportRecord::default()
    };
    Ok(Entry::memory(SourceRecord {
        at,
        user_id: user,
        key: id.to_string(),
        record,
    }))
}

fn history_row(id: MemoryId, row: &Value) -> Result<HistoryEntry, String> {
    let Value::Object(row) = row else {
        return Err(format!("expected an object, found {}", kind(row)));
    };
    let event = match string(row, "event")?.as_deref() {
        Some("ADD") => Event::Add,
        Some("UPDATE") => Event::Update,
        Some("SUPERSEDE") => Event::Supersede,
        other => {
            return Err(format!(
                "\"event\" is {other:?}, expected ADD, UPDATE or SUPERSEDE"
            ));
        }
    };
    Ok(HistoryEntry {
        memory_id: id,
        event,
        old_memory: string(row, "old_memory")?,
        new_memory: string(row, "new_memory")?,
        actor: string(row, "actor")?.unwrap_or_else(|| crate::service::IMPORT_ACTOR.to_owned()),
        created_at: time(row.get("created_at"))?.ok_or("\"created_at\" is missing")?,
    })
}
