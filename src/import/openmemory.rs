//! OpenMemory (mem0's MCP server with a dashboard): its export archive,
//! as its backup endpoint (`POST /api/v1/backup/export`) writes it: a zip
//! holding `memories.json` (the user, apps, categories, memories, their
//! category links and status history, `export_meta`) and
//! `memories.jsonl.gz` (the same memories, one a line, for re-embedding).
//!
//! Read: `memories.json` from the zip, or given alone; or the JSONL once
//! unpacked (`gunzip memories.jsonl.gz`), one memory a line:
//! `{"id", "content", "metadata", "created_at", "updated_at", "state",
//! "app", "categories"}`.
//!
//! Kept: id, text, metadata, times, categories (by name), the app's name
//! (metadata `app`), and the user (`user.user_id`; the JSONL names none).
//! State: `active` memories are current; `paused` ones too, with metadata
//! `openmemory_state: "paused"`; `archived` ones are closed at
//! `archived_at` (kept in history, never recalled); `deleted` ones are not
//! imported (their user deleted them). Access controls and the status
//! history's rows are not kept (engram's history starts at creation).

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};

use super::{
    Entries, Entry, Format, Lines, Position, ReadError, Source, SourceRecord, json_line, kind,
    map_field, required_text, string, strings, time, uuid_id,
};
use crate::service::ImportRecord;

const DELETED: &str = "a memory its user deleted in OpenMemory";

/// The archive, `memories.json`, or the unpacked JSONL.
pub fn read(bytes: Vec<u8>) -> Result<Source, ReadError> {
    let not_it = |reason: String| ReadError::NotThisFormat {
        format: "OpenMemory export",
        reason,
    };
    if bytes.starts_with(b"PK\x03\x04") {
        let (names, found) = super::zip::extract(&bytes, "memories.json").map_err(not_it)?;
        let json = found.ok_or_else(|| {
            not_it(format!(
                "the archive holds no memories.json (it holds {names:?})"
            ))
        })?;
        return document(&json, "OpenMemory export archive (memories.json)");
    }
    if let Ok(Value::Object(_)) = serde_json::from_slice::<Value>(&bytes) {
        return document(&bytes, "OpenMemory memories.json");
    }
    let total = Lines::count(&bytes);
    let entries: Entries = Box::new(Lines::new(bytes).map(|(line, text)| {
        let object = json_line(line, text)?;
        let at = Position::Line(line);
        let categories =
            strings(&object, "categories").map_err(|e| ReadError::at(at.clone(), e))?;
        let app = string(&object, "app").map_err(|e| ReadError::at(at.clone(), e))?;
        memory(&object, at, None, categories, app)
    }));
    Ok(Source {
        format: Format::Openmemory,
        shape: "OpenMemory memories.jsonl",
        total,
        entries,
    })
}

/// `memories.json`: names of apps and categories are looked up by id.
fn document(json: &[u8], shape: &'static str) -> Result<Source, ReadError> {
    let not_it = |reason: String| ReadError::NotThisFormat {
        format: "OpenMemory export",
        reason,
    };
    let mut document = match serde_json::from_slice::<Value>(json) {
        Ok(Value::Object(o)) => o,
        Ok(other) => return Err(not_it(format!("memories.json is {}", kind(&other)))),
        Err(e) => return Err(not_it(format!("memories.json is not valid JSON: {e}"))),
    };
    let user = document
        .get("user")
        .and_then(|u| u.get("user_id"))
        .and_then(Value::as_str)
        .map(str::to_owned);
    let names = |list: &str| -> HashMap<String, String> {
        document
            .get(list)
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|item| {
                Some((
                    item.get("id")?.as_str()?.to_owned(),
                    item.get("name")?.as_str()?.to_owned(),
                ))
            })
            .collect()
    };
    let apps = names("apps");
    let categories = names("categories");
    let Some(Value::Array(memories)) = document.remove("memories") else {
        return Err(not_it("memories.json has no \"memories\" list".into()));
    };
    let total = memories.len();
    let entries: Entries = Box::new(memories.into_iter().enumerate().map(move |(index, item)| {
        let at = Position::Item {
            list: "memories",
            index,
        };
        let Value::Object(item) = item else {
            return Err(ReadError::at(
                at,
                format!("expected an object, found {}", kind(&item)),
            ));
        };
        let fail = |e: String| ReadError::at(at.clone(), e);
        let named: Vec<String> = strings(&item, "category_ids")
            .map_err(fail)?
            .iter()
            .filter_map(|id| categories.get(id).cloned())
            .collect();
        let app = string(&item, "app_id")
            .map_err(fail)?
            .and_then(|id| apps.get(&id).cloned());
        memory(&item, at, user.clone(), named, app)
    }));
    Ok(Source {
        format: Format::Openmemory,
        shape,
        total,
        entries,
    })
}

fn memory(
    item: &Map<String, Value>,
    at: Position,
    user: Option<String>,
    categories: Vec<String>,
    app: Option<String>,
) -> Result<Entry, ReadError> {
    let fail = |e: String| ReadError::at(at.clone(), e);
    let when = |key: &str| -> Result<Option<DateTime<Utc>>, ReadError> {
        time(item.get(key)).map_err(|e| ReadError::at(at.clone(), format!("{key}: {e}")))
    };
    let state = string(item, "state")
        .map_err(fail)?
        .unwrap_or_else(|| "active".into());
    let mut metadata = map_field(item, "metadata").map_err(fail)?;
    let created_at = when("created_at")?;
    let updated_at = when("updated_at")?;
    let valid_to = match state.as_str() {
        "active" => None,
        "paused" => {
            metadata.insert("openmemory_state".into(), Value::String(state.clone()));
            None
        }
        "archived" => Some(
            when("archived_at")?
                .or(updated_at)
                .or(created_at)
                .unwrap_or_else(Utc::now),
        ),
        "deleted" => return Ok(Entry::Skipped { at, why: DELETED }),
        other => {
            return Err(fail(format!(
                "\"state\" is \"{other}\", expected active, paused, archived or deleted"
            )));
        }
    };
    if let Some(app) = app {
        metadata.entry("app").or_insert(Value::String(app));
    }
    let raw_id = string(item, "id").map_err(fail)?;
    let text = required_text(item, "content").map_err(fail)?;
    let record = ImportRecord {
        id: uuid_id(raw_id.as_deref()),
        text: text.clone(),
        metadata,
        categories,
        created_at,
        updated_at,
        valid_to,
        ..ImportRecord::default()
    };
    Ok(Entry::memory(SourceRecord {
        at,
        user_id: user,
        key: raw_id.unwrap_or_else(|| format!("text:{text}")),
        record,
    }))
}
