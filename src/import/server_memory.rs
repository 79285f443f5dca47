//! The MCP reference `server-memory`'s knowledge graph (its
//! `memory.jsonl`): one JSON object a line, an entity
//! `{"type": "entity", "name", "entityType", "observations": [...]}` or a
//! relation `{"type": "relation", "from", "to", "relationType"}`.
//!
//! What it becomes:
//! * each observation of an entity is a memory whose text names the
//!   entity, `"{name}: {observation}"` (an observation alone, "Speaks
//!   fluent Spanish", is not findable by the entity's name), with metadata
//!   `entity` (the name), `entity_type` and `source: "server-memory"`;
//! * each relation is a memory `"{from} {relationType} {to}"`, with
//!   metadata `relation`, `from`, `to` and `source`;
//! * an entity without observations stays out (nothing to remember).
//!
//! The graph has no ids and no times: ids are derived from what a memory
//! is made of (so a re-import recognises it), and the times are the
//! import's.

use serde_json::{Map, Value};

use super::{
    Entries, Entry, Format, Lines, Position, ReadError, Source, SourceRecord, json_line, kind,
    string,
};
use crate::service::ImportRecord;

/// The source's name in metadata.
const SOURCE: &str = "server-memory";

pub fn read(bytes: Vec<u8>) -> Result<Source, ReadError> {
    let total = count(&bytes);
    let entries: Entries = Box::new(Lines::new(bytes).flat_map(|(line, text)| {
        match json_line(line, text).and_then(|object| graph_line(&object, Position::Line(line))) {
            Ok(entries) => entries.into_iter().map(Ok).collect::<Vec<_>>(),
            Err(e) => vec![Err(e)],
        }
    }));
    Ok(Source {
        format: Format::ServerMemory,
        shape: "server-memory knowledge graph (JSONL)",
        total,
        entries,
    })
}

/// Memories to expect: each entity's observations and each relation
/// (a line that does not parse counts as one).
fn count(bytes: &[u8]) -> usize {
    Lines::new(bytes.to_vec())
        .map(|(_, text)| {
            let line: Option<Value> = text.ok().and_then(|t| serde_json::from_str(&t).ok());
            match line
                .as_ref()
                .and_then(|l| l.get("observations"))
                .and_then(Value::as_array)
            {
                Some(observations) => observations.len(),
                None => 1,
            }
        })
        .sum()
}

fn graph_line(object: &Map<String, Value>, at: Position) -> Result<Vec<Entry>, ReadError> {
    let fail = |e: String| ReadError::at(at.clone(), e);
    let field = |key: &str| -> Result<String, ReadError> {
        match string(object, key).map_err(fail)? {
            Some(value) if !value.trim().is_empty() => Ok(value),
            _ => Err(fail(format!("\"{key}\" is missing or empty"))),
        }
    };
    match string(object, "type").map_err(fail)?.as_deref() {
        Some("entity") => {
            let name = field("name")?;
            let entity_type = string(object, "entityType").map_err(fail)?;
            let observations = match object.get("observations") {
                None | Some(Value::Null) => Vec::new(),
                Some(Value::Array(items)) => items.clone(),
                Some(other) => {
                    return Err(fail(format!(
                        "\"observations\" is {}, expected a list",
                        kind(other)
                    )));
                }
            };
            observations
                .iter()
                .enumerate()
                .map(|(n, observation)| {
                    let Some(observation) = observation.as_str() else {
                        return Err(fail(format!(
                            "observations[{n}] is {}, expected a string",
                            kind(observation)
                        )));
                    };
                    let mut metadata = Map::new();
                    metadata.insert("entity".into(), Value::String(name.clone()));
                    if let Some(t) = &entity_type {
                        metadata.insert("entity_type".into(), Value::String(t.clone()));
                    }
                    metadata.insert("source".into(), Value::String(SOURCE.into()));
                    Ok(memory(
                        &at,
                        format!("{name}: {observation}"),
                        format!("entity\u{0}{name}\u{0}{observation}"),
                        metadata,
                    ))
                })
                .collect()
        }
        Some("relation") => {
            let (from, to, relation) = (field("from")?, field("to")?, field("relationType")?);
            let mut metadata = Map::new();
            metadata.insert("relation".into(), Value::String(relation.clone()));
            metadata.insert("from".into(), Value::String(from.clone()));
            metadata.insert("to".into(), Value::String(to.clone()));
            metadata.insert("source".into(), Value::String(SOURCE.into()));
            Ok(vec![memory(
                &at,
                format!("{from} {relation} {to}"),
                format!("relation\u{0}{from}\u{0}{relation}\u{0}{to}"),
                metadata,
            )])
        }
        other => Err(fail(format!(
            "\"type\" is {other:?}, expected \"entity\" or \"relation\""
        ))),
    }
}

fn memory(at: &Position, text: String, key: String, metadata: Map<String, Value>) -> Entry {
    Entry::memory(SourceRecord {
        at: at.clone(),
        user_id: None,
        key,
        record: ImportRecord {
            text,
            metadata,
            ..ImportRecord::default()
        },
    })
}
