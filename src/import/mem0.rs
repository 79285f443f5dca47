//! mem0: its `get_all` answer, and a dump of its pgvector table.
//!
//! `get_all` (mem0 2.x: `{"results": [item, ...]}`; 1.x: the bare list):
//! each item is `{"id", "memory", "hash", "metadata", "created_at",
//! "updated_at", "user_id"?, "agent_id"?, "run_id"?, "actor_id"?,
//! "role"?}`. Kept: the id, the text, user, agent and run, the times,
//! `metadata`; every other field but `hash` and `score` (`actor_id`,
//! `role`, and whatever a later version adds) goes into the metadata
//! under its own name. `categories`, when an item has them (mem0's
//! platform), become engram categories.
//!
//! The pgvector table (`id uuid, vector vector(N), payload jsonb`): the
//! payload holds the text as `data`, `hash`, the times, the ids, and the
//! caller's metadata flattened beside them. Kept as for `get_all`;
//! `hash` and `text_lemmatized` (both derived from the text) are dropped,
//! and so is the vector: engram embeds the text again.

use serde_json::{Map, Value};

use super::csv;
use super::{
    Entries, Entry, Format, Lines, Position, ReadError, Source, SourceRecord, json_line, kind,
    map_field, required_text, string, strings, time, uuid_id,
};
use crate::service::ImportRecord;

/// Fields of a `get_all` item that are not metadata.
const ITEM_FIELDS: &[&str] = &[
    "id",
    "memory",
    "hash",
    "metadata",
    "created_at",
    "updated_at",
    "user_id",
    "agent_id",
    "run_id",
    "score",
    "categories",
];

/// Fields of a table row's payload that are not metadata.
const PAYLOAD_FIELDS: &[&str] = &[
    "id",
    "data",
    "hash",
    "created_at",
    "updated_at",
    "user_id",
    "agent_id",
    "run_id",
    "text_lemmatized",
    "categories",
];

/// A `get_all` answer.
pub fn read_get_all(bytes: Vec<u8>) -> Result<Source, ReadError> {
    let not_it = |reason: String| ReadError::NotThisFormat {
        format: "mem0 get_all",
        reason,
    };
    let document: Value =
        serde_json::from_slice(&bytes).map_err(|e| not_it(format!("not valid JSON: {e}")))?;
    let (list, items) = match document {
        Value::Object(mut o) => match o.remove("results") {
            Some(Value::Array(items)) => ("results", items),
            _ => return Err(not_it("it has no \"results\" list".into())),
        },
        Value::Array(items) => ("", items),
        other => return Err(not_it(format!("it is {}", kind(&other)))),
    };
    let total = items.len();
    let entries: Entries = Box::new(items.into_iter().enumerate().map(move |(index, item)| {
        let at = Position::Item { list, index };
        match item {
            Value::Object(item) => {
                let metadata =
                    map_field(&item, "metadata").map_err(|e| ReadError::at(at.clone(), e))?;
                memory(&item, "memory", ITEM_FIELDS, metadata, at)
            }
            other => Err(ReadError::at(
                at,
                format!("expected an object, found {}", kind(&other)),
            )),
        }
    }));
    Ok(Source {
        format: Format::Mem0,
        shape: "mem0 get_all (JSON)",
        total,
        entries,
    })
}

/// A dump of the pgvector table: CSV with a header, JSON lines, or a
/// JSON list of rows.
pub fn read_table(bytes: Vec<u8>) -> Result<Source, ReadError> {
    if let Ok(Value::Array(rows)) = serde_json::from_slice::<Value>(&bytes) {
        let total = rows.len();
        let entries: Entries = Box::new(rows.into_iter().enumerate().map(|(index, row)| {
            let at = Position::Item { list: "", index };
            match row {
                Value::Object(row) => table_row(&row, at),
                other => Err(ReadError::at(
                    at,
                    format!("expected an object, found {}", kind(&other)),
                )),
            }
        }));
        return Ok(Source {
            format: Format::Mem0Pgvector,
            shape: "mem0 pgvector dump (JSON)",
            total,
            entries,
        });
    }
    let first = bytes
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .map(|i| bytes[i]);
    if first == Some(b'{') {
        let total = Lines::count(&bytes);
        let entries: Entries = Box::new(
            Lines::new(bytes)
                .map(|(line, text)| table_row(&json_line(line, text)?, Position::Line(line))),
        );
        return Ok(Source {
            format: Format::Mem0Pgvector,
            shape: "mem0 pgvector dump (JSON lines)",
            total,
            entries,
        });
    }
    csv_source(bytes)
}

fn csv_source(bytes: Vec<u8>) -> Result<Source, ReadError> {
    let rows: Vec<csv::Record> = csv::Reader::new(&bytes).collect();
    let mut rows = rows.into_iter();
    let header = match rows.next() {
        Some(Ok((_, header))) => header,
        Some(Err((line, e))) => return Err(ReadError::at(Position::Line(line), e)),
        None => {
            return Err(ReadError::NotThisFormat {
                format: "mem0 pgvector dump",
                reason: "the file is empty".into(),
            });
        }
    };
    let column = |name: &str| header.iter().position(|h| h.trim() == name);
    let (Some(id), Some(payload)) = (column("id"), column("payload")) else {
        return Err(ReadError::NotThisFormat {
            format: "mem0 pgvector dump",
            reason: format!(
                "its CSV header is {header:?}; it needs \"id\" and \"payload\" columns \
                 (COPY ... WITH (FORMAT csv, HEADER))"
            ),
        });
    };
    let total = rows.len();
    let entries: Entries = Box::new(rows.map(move |row| {
        let (line, fields) = row.map_err(|(line, e)| ReadError::at(Position::Line(line), e))?;
        let at = Position::Line(line);
        let (Some(raw_id), Some(raw_payload)) = (fields.get(id), fields.get(payload)) else {
            return Err(ReadError::at(
                at,
                format!("has {} fields, the header {}", fields.len(), header.len()),
            ));
        };
        let payload: Value = serde_json::from_str(raw_payload)
            .map_err(|e| ReadError::at(at.clone(), format!("payload is not valid JSON: {e}")))?;
        let mut row = Map::new();
        row.insert("id".into(), Value::String(raw_id.clone()));
        row.insert("payload".into(), payload);
        table_row(&row, at)
    }));
    Ok(Source {
        format: Format::Mem0Pgvector,
        shape: "mem0 pgvector dump (CSV)",
        total,
        entries,
    })
}

/// One table row: `{"id", "payload", "vector"?}`.
fn table_row(row: &Map<String, Value>, at: Position) -> Result<Entry, ReadError> {
    let payload = match row.get("payload") {
        Some(Value::Object(payload)) => payload.clone(),
        // psql may hand jsonb over as a string.
        Some(Value::String(raw)) => match serde_json::from_str(raw) {
            Ok(Value::Object(payload)) => payload,
            _ => return Err(ReadError::at(at, "\"payload\" is not a JSON object")),
        },
        Some(other) => {
            return Err(ReadError::at(
                at,
                format!("\"payload\" is {}, expected an object", kind(other)),
            ));
        }
        None => return Err(ReadError::at(at, "\"payload\" is missing")),
    };
    let mut item = payload;
    let id = row.get("id").cloned().unwrap_or(Value::Null);
    item.insert(
        "id".into(),
        match id {
            Value::String(_) | Value::Null => id,
            other => Value::String(other.to_string()),
        },
    );
    memory(&item, "data", PAYLOAD_FIELDS, Map::new(), at)
}

/// A mem0 memory from `item` (text under `text_key`): `known` fields are
/// read as such, every other one joins `metadata`.
fn memory(
    item: &Map<String, Value>,
    text_key: &str,
    known: &[&str],
    mut metadata: Map<String, Value>,
    at: Position,
) -> Result<Entry, ReadError> {
    let fail = |e: String| ReadError::at(at.clone(), e);
    for (key, value) in item {
        if !known.contains(&key.as_str()) && key != text_key && !value.is_null() {
            metadata.entry(key.clone()).or_insert_with(|| value.clone());
        }
    }
    let raw_id = string(item, "id").map_err(fail)?;
    let text = required_text(item, text_key).map_err(fail)?;
    let key = match &raw_id {
        Some(id) if !id.trim().is_empty() => id.trim().to_owned(),
        _ => format!("text:{text}"),
    };
    let created_at = time(item.get("created_at")).map_err(|e| fail(format!("created_at: {e}")))?;
    let record = ImportRecord {
        id: uuid_id(raw_id.as_deref()),
        agent_id: string(item, "agent_id").map_err(fail)?,
        run_id: string(item, "run_id").map_err(fail)?,
        text,
        metadata,
        categories: strings(item, "categories").map_err(fail)?,
        created_at,
        updated_at: time(item.get("updated_at")).map_err(|e| fail(format!("updated_at: {e}")))?,
        ..ImportRecord::default()
    };
    let user_id = string(item, "user_id").map_err(fail)?;
    Ok(Entry::memory(SourceRecord {
        at,
        user_id,
        key,
        record,
    }))
}
