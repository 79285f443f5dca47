//! Reading memories kept by other systems (and by engram itself) for
//! `engram import`: one file per source format, each turning a file's
//! bytes into [`SourceRecord`]s, one at a time, in file order.
//!
//! * `engram`: engram's own export, the JSON document of
//!   `engram export --user U` and `GET /api/v1/memory/export/{user_id}`,
//!   or the JSONL of `engram export --all` (one exported memory a line);
//! * `mem0`: mem0's `get_all` JSON (`{"results": [...]}`, or the bare list
//!   of older versions), and a dump of its pgvector table (`id`, `vector`,
//!   `payload`) as CSV (`COPY ... WITH (FORMAT csv, HEADER)`) or as JSON
//!   lines (`psql -At`, one row a line);
//! * `openmemory`: OpenMemory's export archive (a zip holding
//!   `memories.json`), that `memories.json` alone, or its
//!   `memories.jsonl` (the archive's `memories.jsonl.gz`, unpacked);
//! * `server_memory`: the MCP reference `server-memory`'s JSONL knowledge
//!   graph (entities with observations, relations).
//!
//! Invariants:
//! * a record that cannot be read is an error naming where it is in the
//!   file (a line, or an item of a document) and why; records before it
//!   have already been handed out, so the caller keeps what it imported;
//! * every record carries a `key` that names it within its source and
//!   does not change between runs over the same file: ids derived from it
//!   make a re-import recognise what it imported before;
//! * vectors in a source are never read into a record: engram embeds every
//!   text again with its own embedder.

use std::fmt;

use chrono::{DateTime, NaiveDate, NaiveDateTime, Utc};
use serde_json::Value;

use crate::service::ImportRecord;

mod csv;
pub mod engram;
pub mod mem0;
pub mod openmemory;
pub mod server_memory;
mod zip;

/// The formats `engram import` reads (`--format`; detected when not given).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// engram's own export: `engram export` JSON or JSONL.
    Engram,
    /// mem0's `get_all` JSON.
    Mem0,
    /// A dump of mem0's pgvector table (CSV or JSON lines).
    Mem0Pgvector,
    /// OpenMemory's export zip, its `memories.json`, or its `memories.jsonl`.
    Openmemory,
    /// server-memory's JSONL knowledge graph.
    ServerMemory,
}

impl Format {
    pub fn name(self) -> &'static str {
        match self {
            Self::Engram => "engram",
            Self::Mem0 => "mem0",
            Self::Mem0Pgvector => "mem0-pgvector",
            Self::Openmemory => "openmemory",
            Self::ServerMemory => "server-memory",
        }
    }
}

/// Where a record is in its file, as the operator looks for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Position {
    /// A line of a line-oriented file (1-based).
    Line(usize),
    /// An item of a list in a JSON document (0-based, as `jq` counts).
    Item { list: &'static str, index: usize },
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Line(n) => write!(f, "line {n}"),
            Self::Item { list, index } => write!(f, "{list}[{index}]"),
        }
    }
}

/// One memory read from a source.
#[derive(Debug, Clone)]
pub struct SourceRecord {
    pub at: Position,
    /// The user the source files it under, if it names one.
    pub user_id: Option<String>,
    /// Names the record within its source, the same on every run (its id
    /// when it has one; else what it is made of).
    pub key: String,
    /// The memory; its `fallback_id` is left for the caller to derive.
    pub record: ImportRecord,
}

/// A source's entries, boxed.
pub(crate) type Entries = Box<dyn Iterator<Item = Result<Entry, ReadError>> + Send>;

/// Why a source could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("{at}: {reason}")]
    Malformed { at: Position, reason: String },
    #[error("not a {format} file: {reason}")]
    NotThisFormat {
        format: &'static str,
        reason: String,
    },
    #[error(
        "cannot tell which format this is ({seen}); pass --format engram, mem0, mem0-pgvector, \
         openmemory or server-memory"
    )]
    Unknown { seen: String },
}

impl ReadError {
    pub(crate) fn at(at: Position, reason: impl Into<String>) -> Self {
        Self::Malformed {
            at,
            reason: reason.into(),
        }
    }
}

/// A source's records, read lazily, and how many there are (for a
/// progress bar; a line format counts its non-blank lines).
pub struct Source {
    pub format: Format,
    /// What the source says about itself, for the operator (e.g. "mem0
    /// pgvector dump (CSV)").
    pub shape: &'static str,
    pub total: usize,
    pub entries: Entries,
}

/// What a source holds at one place.
#[derive(Debug, Clone)]
pub enum Entry {
    Memory(Box<SourceRecord>),
    /// Something the source holds that is not imported, and why (say, a
    /// deferred remember in an engram export, or a memory OpenMemory's
    /// user deleted).
    Skipped {
        at: Position,
        why: &'static str,
    },
}

impl Entry {
    pub(crate) fn memory(record: SourceRecord) -> Self {
        Self::Memory(Box::new(record))
    }
}

/// Reads `bytes` as `format`, or as the format its content shows.
pub fn read(bytes: Vec<u8>, format: Option<Format>) -> Result<Source, ReadError> {
    let format = match format {
        Some(format) => format,
        None => detect(&bytes)?,
    };
    match format {
        Format::Engram => engram::read(bytes),
        Format::Mem0 => mem0::read_get_all(bytes),
        Format::Mem0Pgvector => mem0::read_table(bytes),
        Format::Openmemory => openmemory::read(bytes),
        Format::ServerMemory => server_memory::read(bytes),
    }
}

/// The format `bytes` show: a zip archive is OpenMemory's; a JSON
/// document or the first JSON line is recognised by its keys; a CSV
/// header with `payload` is a mem0 table dump.
pub fn detect(bytes: &[u8]) -> Result<Format, ReadError> {
    if bytes.starts_with(b"PK\x03\x04") {
        return Ok(Format::Openmemory);
    }
    let text = String::from_utf8_lossy(&bytes[..bytes.len().min(1 << 20)]);
    let trimmed = text.trim_start_matches('\u{feff}').trim_start();
    if trimmed.is_empty() {
        return Err(ReadError::Unknown {
            seen: "the file is empty".into(),
        });
    }
    // A whole JSON document (the first line alone may be `{`).
    if let Ok(document) = serde_json::from_slice::<Value>(bytes)
        && let Some(format) = document_format(&document)
    {
        return Ok(format);
    }
    let first = trimmed.lines().next().unwrap_or_default();
    if let Ok(Value::Object(line)) = serde_json::from_str::<Value>(first) {
        return line_format(&line).ok_or_else(|| ReadError::Unknown {
            seen: format!("a JSON line with keys {}", keys(&line)),
        });
    }
    let header: Vec<String> = csv::Reader::new(first.as_bytes())
        .next()
        .and_then(Result::ok)
        .map(|(_, fields)| fields)
        .unwrap_or_default();
    if header.iter().any(|f| f == "payload") && header.iter().any(|f| f == "id") {
        return Ok(Format::Mem0Pgvector);
    }
    Err(ReadError::Unknown {
        seen: format!(
            "the first line starts with {:?}",
            first.chars().take(40).collect::<String>()
        ),
    })
}

fn document_format(document: &Value) -> Option<Format> {
    match document {
        Value::Object(o) if o.contains_key("exported_at") && o.contains_key("memories") => {
            Some(Format::Engram)
        }
        Value::Object(o) if o.contains_key("export_meta") || o.contains_key("status_history") => {
            Some(Format::Openmemory)
        }
        Value::Object(o) if o.get("results").is_some_and(Value::is_array) => Some(Format::Mem0),
        Value::Array(items) => match items.first() {
            Some(Value::Object(o)) if o.contains_key("payload") => Some(Format::Mem0Pgvector),
            Some(Value::Object(o)) if o.contains_key("memory") => Some(Format::Mem0),
            _ => None,
        },
        _ => None,
    }
}

fn line_format(line: &serde_json::Map<String, Value>) -> Option<Format> {
    let has = |k: &str| line.contains_key(k);
    if matches!(
        line.get("type").and_then(Value::as_str),
        Some("entity" | "relation")
    ) {
        Some(Format::ServerMemory)
    } else if (has("memory") && has("history")) || has("pending") {
        Some(Format::Engram)
    } else if has("payload") {
        Some(Format::Mem0Pgvector)
    } else if has("content") && has("state") {
        Some(Format::Openmemory)
    } else {
        None
    }
}

/// An object's keys, for a message.
fn keys(object: &serde_json::Map<String, Value>) -> String {
    let keys: Vec<&str> = object.keys().map(String::as_str).take(8).collect();
    format!("[{}]", keys.join(", "))
}

/// The non-blank lines of a text file, numbered from 1, each parsed by
/// `parse` when asked for.
pub(crate) struct Lines {
    bytes: Vec<u8>,
    offset: usize,
    line: usize,
}

impl Lines {
    pub(crate) fn new(bytes: Vec<u8>) -> Self {
        Self {
            bytes,
            offset: 0,
            line: 0,
        }
    }

    /// How many lines hold something.
    pub(crate) fn count(bytes: &[u8]) -> usize {
        bytes
            .split(|b| *b == b'\n')
            .filter(|l| !l.trim_ascii().is_empty())
            .count()
    }
}

impl Iterator for Lines {
    /// (line number, the line's text or why it is not text)
    type Item = (usize, Result<String, ReadError>);

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if self.offset >= self.bytes.len() {
                return None;
            }
            let rest = &self.bytes[self.offset..];
            let end = rest.iter().position(|b| *b == b'\n').unwrap_or(rest.len());
            let raw = &rest[..end];
            self.offset += end + 1;
            self.line += 1;
            if raw.trim_ascii().is_empty() {
                continue;
            }
            let text = std::str::from_utf8(raw)
                .map(|t| {
                    t.trim_start_matches('\u{feff}')
                        .trim_end_matches('\r')
                        .to_owned()
                })
                .map_err(|e| ReadError::at(Position::Line(self.line), format!("not UTF-8: {e}")));
            return Some((self.line, text));
        }
    }
}

/// A JSON object read from one line.
pub(crate) fn json_line(
    line: usize,
    text: Result<String, ReadError>,
) -> Result<serde_json::Map<String, Value>, ReadError> {
    match serde_json::from_str::<Value>(&text?) {
        Ok(Value::Object(o)) => Ok(o),
        Ok(other) => Err(ReadError::at(
            Position::Line(line),
            format!("expected a JSON object, found {}", kind(&other)),
        )),
        Err(e) => Err(ReadError::at(
            Position::Line(line),
            format!("not valid JSON: {e}"),
        )),
    }
}

/// What a JSON value is, for a message.
pub(crate) fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// A time as the sources write them: RFC 3339 (any offset), or without an
/// offset (taken as UTC), or a date alone (its midnight, UTC), or Unix
/// seconds. None for null or absent.
pub(crate) fn time(value: Option<&Value>) -> Result<Option<DateTime<Utc>>, String> {
    let raw = match value {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Number(n)) => {
            let seconds = n.as_f64().unwrap_or(f64::NAN);
            return DateTime::from_timestamp_millis((seconds * 1000.0) as i64)
                .map(Some)
                .ok_or_else(|| format!("{n} is not a Unix time"));
        }
        Some(Value::String(s)) if s.trim().is_empty() => return Ok(None),
        Some(Value::String(s)) => s.trim(),
        Some(other) => return Err(format!("expected a time, found {}", kind(other))),
    };
    if let Ok(t) = DateTime::parse_from_rfc3339(raw) {
        return Ok(Some(t.with_timezone(&Utc)));
    }
    for layout in ["%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%d %H:%M:%S%.f"] {
        if let Ok(t) = NaiveDateTime::parse_from_str(raw, layout) {
            return Ok(Some(t.and_utc()));
        }
    }
    if let Ok(t) = DateTime::parse_from_str(raw, "%Y-%m-%d %H:%M:%S%.f%#z") {
        return Ok(Some(t.with_timezone(&Utc)));
    }
    if let Ok(day) = NaiveDate::parse_from_str(raw, "%Y-%m-%d") {
        return Ok(day.and_hms_opt(0, 0, 0).map(|t| t.and_utc()));
    }
    Err(format!(
        "'{raw}' is not a time (RFC 3339, e.g. 2026-11-20T09:30:00Z)"
    ))
}

/// An optional string field; anything else is an error naming it.
pub(crate) fn string(
    object: &serde_json::Map<String, Value>,
    key: &str,
) -> Result<Option<String>, String> {
    match object.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(other) => Err(format!("\"{key}\" is {}, expected a string", kind(other))),
    }
}

/// A list of strings (none: empty).
pub(crate) fn strings(
    object: &serde_json::Map<String, Value>,
    key: &str,
) -> Result<Vec<String>, String> {
    match object.get(key) {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| {
                v.as_str()
                    .map(str::to_owned)
                    .ok_or_else(|| format!("\"{key}\" holds {}, expected strings", kind(v)))
            })
            .collect(),
        Some(other) => Err(format!("\"{key}\" is {}, expected a list", kind(other))),
    }
}

/// A metadata object (none: empty).
pub(crate) fn map_field(
    object: &serde_json::Map<String, Value>,
    key: &str,
) -> Result<serde_json::Map<String, Value>, String> {
    match object.get(key) {
        None | Some(Value::Null) => Ok(serde_json::Map::new()),
        Some(Value::Object(o)) => Ok(o.clone()),
        Some(other) => Err(format!("\"{key}\" is {}, expected an object", kind(other))),
    }
}

/// A uuid id, when the source's id is one.
pub(crate) fn uuid_id(raw: Option<&str>) -> Option<crate::model::MemoryId> {
    raw.and_then(|r| uuid::Uuid::parse_str(r.trim()).ok())
        .map(crate::model::MemoryId)
}

/// The required text field `key`.
pub(crate) fn required_text(
    object: &serde_json::Map<String, Value>,
    key: &str,
) -> Result<String, String> {
    match string(object, key)? {
        Some(text) if !text.trim().is_empty() => Ok(text),
        Some(_) => Err(format!("\"{key}\" is empty")),
        None => Err(format!("\"{key}\" is missing (the memory's text)")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_are_told_apart_by_their_content() {
        let cases: [(&[u8], Format); 8] = [
            (b"PK\x03\x04rest", Format::Openmemory),
            (
                br#"{"user_id":"a","exported_at":"x","memories":[]}"#,
                Format::Engram,
            ),
            (b"{\n  \"results\": []\n}", Format::Mem0),
            (br#"[{"id":"1","memory":"m"}]"#, Format::Mem0),
            (br#"[{"id":"1","payload":{}}]"#, Format::Mem0Pgvector),
            (
                b"id,vector,payload\n1,\"[1]\",\"{}\"\n",
                Format::Mem0Pgvector,
            ),
            (
                b"{\"type\":\"relation\",\"from\":\"a\",\"to\":\"b\",\"relationType\":\"r\"}\n",
                Format::ServerMemory,
            ),
            (
                b"{\"id\":\"1\",\"content\":\"c\",\"state\":\"active\"}\n",
                Format::Openmemory,
            ),
        ];
        for (bytes, format) in cases {
            assert_eq!(
                detect(bytes).ok(),
                Some(format),
                "{}",
                String::from_utf8_lossy(bytes)
            );
        }
        for unknown in [&b""[..], b"hello\n", b"{\"what\": 1}\n"] {
            assert!(matches!(detect(unknown), Err(ReadError::Unknown { .. })));
        }
    }

    #[test]
    fn times_are_read_as_the_sources_write_them() {
        let utc = |raw: Value| time(Some(&raw)).map(|t| t.map(|t| t.to_rfc3339()));
        let at = |s: &str| Ok(Some(s.to_owned()));
        assert_eq!(
            utc(Value::from("2025-09-14T08:12:44.5-07:00")),
            at("2025-09-14T15:12:44.500+00:00")
        );
        assert_eq!(
            utc(Value::from("2025-09-14 08:12:44")),
            at("2025-09-14T08:12:44+00:00")
        );
        assert_eq!(
            utc(Value::from("2025-09-14")),
            at("2025-09-14T00:00:00+00:00")
        );
        assert_eq!(
            utc(Value::from(1_700_000_000)),
            at("2023-11-14T22:13:20+00:00")
        );
        assert_eq!(utc(Value::Null), Ok(None));
        assert!(utc(Value::from("last tuesday")).is_err());
        assert!(utc(Value::from(true)).is_err());
    }
}
