//! What a user has stored, summed up ([`UserStats`]) or in full
//! ([`UserExport`]): the shapes both backends fill, and how rows become them.

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::Serialize;

use super::{HistoryEntry, Pending};
use crate::model::{Memory, MemoryId, Metadata};

/// Every user's data counted together, for the operator's gauges
/// (`engram_memories`, `engram_pending_extractions`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StoreTotals {
    /// Current memories (expired ones awaiting the purge included).
    pub memories: u64,
    /// Deferred remembers awaiting re-extraction.
    pub pending: u64,
}

/// What one user has stored, counted by the store (the answer of `GET /stats/{user}`).
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
pub struct UserStats {
    /// The user these numbers describe.
    pub user_id: String,
    /// Current memories: neither superseded nor closed.
    #[schemars(schema_with = "crate::model::count_schema")]
    pub memories: u64,
    /// Memories closed by a newer one (or retired without one), kept for history.
    #[schemars(schema_with = "crate::model::count_schema")]
    pub superseded: u64,
    /// History rows (adds, updates, supersedes) of all the user's memories.
    #[schemars(schema_with = "crate::model::count_schema")]
    pub history_events: u64,
    /// Deferred remembers waiting for `engram reextract` (the model failed when they came in).
    #[schemars(schema_with = "crate::model::count_schema")]
    pub pending: u64,
    /// Current memories per category, most first, then by name (byte order).
    pub categories: Vec<CategoryCount>,
    /// When the oldest current memory was created; null without current memories.
    pub oldest: Option<DateTime<Utc>>,
    /// When the newest current memory was created; null without current memories.
    pub newest: Option<DateTime<Utc>>,
    /// Approximate bytes of the user's stored data: the text, metadata JSON
    /// and vector (4 bytes per dimension) of every memory, current or
    /// superseded, plus the texts kept in history.
    #[schemars(schema_with = "crate::model::count_schema")]
    pub storage_bytes: u64,
}

/// How many current memories carry one category.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
pub struct CategoryCount {
    /// The category, as the extractor assigned it.
    pub category: String,
    /// Current memories in it.
    #[schemars(schema_with = "crate::model::count_schema")]
    pub memories: u64,
}

/// Everything stored for one user, read in one snapshot (the answer of `GET /export/{user}`).
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
pub struct UserExport {
    /// The user whose data this is.
    pub user_id: String,
    /// When the export was read.
    pub exported_at: DateTime<Utc>,
    /// Every memory, current and superseded, oldest first.
    pub memories: Vec<ExportedMemory>,
    /// Remembers whose model work failed, waiting for `engram reextract`:
    /// the user's own words, kept until then. Oldest first.
    pub pending: Vec<ExportedPending>,
}

/// One memory in an export, with its whole history.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
pub struct ExportedMemory {
    #[serde(flatten)]
    pub memory: Memory,
    /// When it stopped being current (superseded or closed); null while it is current.
    pub valid_to: Option<DateTime<Utc>>,
    /// Every change to it, oldest first.
    pub history: Vec<HistoryEntry>,
}

/// A deferred remember in an export.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
pub struct ExportedPending {
    /// The deferred remember's id.
    pub id: uuid::Uuid,
    /// The request as it came in: `{"text": ...}` or `{"messages": [...]}`.
    pub input: serde_json::Value,
    /// The metadata the request carried.
    pub metadata: Metadata,
    /// When it was deferred.
    pub created_at: DateTime<Utc>,
    /// Re-extraction attempts that failed so far.
    #[schemars(schema_with = "crate::model::count_schema")]
    pub attempts: u32,
    /// Why it was deferred (or why the last attempt failed).
    pub error: String,
}

impl From<Pending> for ExportedPending {
    fn from(p: Pending) -> Self {
        Self {
            id: p.entry.id,
            input: p.entry.input,
            metadata: p.entry.metadata,
            created_at: p.created_at,
            attempts: p.attempts,
            error: p.entry.error,
        }
    }
}

/// A user's numbers as a store's aggregate query counts them; [`Self::finish`]
/// turns them into [`UserStats`] the same way for every store.
pub(super) struct StatsCounts {
    pub(super) memories: i64,
    pub(super) superseded: i64,
    pub(super) history_events: i64,
    pub(super) pending: i64,
    pub(super) oldest: Option<DateTime<Utc>>,
    pub(super) newest: Option<DateTime<Utc>>,
    /// Bytes of every memory's text and metadata JSON, and of history texts.
    pub(super) text_bytes: i64,
    /// Current memories per category, in any order.
    pub(super) categories: Vec<(String, i64)>,
}

impl StatsCounts {
    /// The stats, with vectors of `dims` dimensions counted in.
    pub(super) fn finish(self, user_id: &str, dims: usize) -> UserStats {
        let count = |n: i64| u64::try_from(n).unwrap_or(0);
        let rows = count(self.memories) + count(self.superseded);
        let vector_bytes = rows.saturating_mul(dims as u64 * 4);
        let mut categories: Vec<CategoryCount> = self
            .categories
            .into_iter()
            .map(|(category, n)| CategoryCount {
                category,
                memories: count(n),
            })
            .collect();
        categories.sort_by(|a, b| {
            b.memories
                .cmp(&a.memories)
                .then_with(|| a.category.cmp(&b.category))
        });
        UserStats {
            user_id: user_id.to_owned(),
            memories: count(self.memories),
            superseded: count(self.superseded),
            history_events: count(self.history_events),
            pending: count(self.pending),
            categories,
            oldest: self.oldest,
            newest: self.newest,
            storage_bytes: count(self.text_bytes).saturating_add(vector_bytes),
        }
    }
}

/// An export from what a store read in one snapshot: the user's memories
/// (oldest first, each with its `valid_to`), their history rows (oldest
/// first) and deferred remembers. History rows go to their memory; a row
/// whose memory was not read has nowhere to go and is left out.
pub(super) fn assemble_export(
    user_id: &str,
    memories: Vec<(Memory, Option<DateTime<Utc>>)>,
    history: Vec<HistoryEntry>,
    pending: Vec<Pending>,
) -> UserExport {
    let mut by_memory: std::collections::HashMap<MemoryId, Vec<HistoryEntry>> =
        std::collections::HashMap::new();
    for entry in history {
        by_memory.entry(entry.memory_id).or_default().push(entry);
    }
    UserExport {
        user_id: user_id.to_owned(),
        exported_at: Utc::now(),
        memories: memories
            .into_iter()
            .map(|(memory, valid_to)| ExportedMemory {
                history: by_memory.remove(&memory.id).unwrap_or_default(),
                memory,
                valid_to,
            })
            .collect(),
        pending: pending.into_iter().map(ExportedPending::from).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Event;
    use serde_json::{Value, json};

    /// The properties of the object schema `name` in `schema` (the root when
    /// it is the root's title, else from `$defs`).
    fn properties<'a>(schema: &'a Value, name: &str) -> &'a serde_json::Map<String, Value> {
        let object = if schema["title"] == name {
            schema
        } else {
            &schema["$defs"][name]
        };
        object["properties"]
            .as_object()
            .unwrap_or_else(|| panic!("no properties for {name} in {schema:#}"))
    }

    fn undocumented(props: &serde_json::Map<String, Value>) -> Vec<&str> {
        props
            .iter()
            .filter(|(_, p)| p["description"].as_str().is_none_or(str::is_empty))
            .map(|(k, _)| k.as_str())
            .collect()
    }

    /// The schemas the REST API documents: every field described, and an
    /// exported memory flat (the memory's own fields beside valid_to and history).
    #[test]
    fn stats_and_export_schemas_describe_every_field() {
        let stats = serde_json::to_value(schemars::schema_for!(UserStats)).unwrap();
        for name in ["UserStats", "CategoryCount"] {
            assert_eq!(undocumented(properties(&stats, name)), [""; 0], "{name}");
        }
        let export = serde_json::to_value(schemars::schema_for!(UserExport)).unwrap();
        for name in ["UserExport", "ExportedPending", "HistoryEntry"] {
            assert_eq!(undocumented(properties(&export, name)), [""; 0], "{name}");
        }
        let memory = properties(&export, "ExportedMemory");
        for field in [
            "id",
            "memory",
            "user_id",
            "agent_id",
            "created_at",
            "valid_to",
        ] {
            assert!(memory.contains_key(field), "{field} in {memory:#?}");
        }
        assert!(memory["valid_to"]["description"].is_string());
        assert!(memory["history"]["description"].is_string());
        assert!(!memory.contains_key("memories"), "{memory:#?}");
        assert_eq!(
            properties(&stats, "UserStats")["memories"]["type"],
            json!("integer")
        );
    }

    fn history(id: MemoryId, event: Event, at: i64) -> HistoryEntry {
        HistoryEntry {
            memory_id: id,
            event,
            old_memory: None,
            new_memory: Some("x".into()),
            actor: "user".into(),
            created_at: DateTime::from_timestamp(at, 0).unwrap_or_default(),
        }
    }

    fn memory(id: MemoryId) -> Memory {
        Memory {
            id,
            memory: "x".into(),
            scope: crate::model::Scope::new("alice", None, None).unwrap(),
            metadata: Metadata::new(),
            categories: vec![],
            created_at: DateTime::UNIX_EPOCH,
            updated_at: DateTime::UNIX_EPOCH,
            expires_at: None,
        }
    }

    #[test]
    fn an_export_puts_each_history_row_with_its_memory_in_order() {
        let (a, b, orphan) = (MemoryId::new(), MemoryId::new(), MemoryId::new());
        let closed = DateTime::from_timestamp(5, 0);
        let export = assemble_export(
            "alice",
            vec![(memory(a), closed), (memory(b), None)],
            vec![
                history(a, Event::Add, 1),
                history(b, Event::Add, 2),
                history(orphan, Event::Add, 3),
                history(a, Event::Supersede, 5),
            ],
            vec![],
        );
        assert_eq!(export.user_id, "alice");
        let got: Vec<(MemoryId, Option<DateTime<Utc>>, Vec<Event>)> = export
            .memories
            .iter()
            .map(|m| {
                let events = m.history.iter().map(|h| h.event).collect();
                (m.memory.id, m.valid_to, events)
            })
            .collect();
        assert_eq!(
            got,
            [
                (a, closed, vec![Event::Add, Event::Supersede]),
                (b, None, vec![Event::Add]),
            ]
        );
    }

    #[test]
    fn stats_order_categories_and_count_vectors() {
        let counts = StatsCounts {
            memories: 2,
            superseded: 1,
            history_events: 4,
            pending: 0,
            oldest: None,
            newest: None,
            text_bytes: 100,
            categories: vec![
                ("work".into(), 1),
                ("food".into(), 2),
                ("Career".into(), 1),
                ("habits".into(), 1),
            ],
        };
        let stats = counts.finish("alice", 8);
        let order: Vec<(&str, u64)> = stats
            .categories
            .iter()
            .map(|c| (c.category.as_str(), c.memories))
            .collect();
        assert_eq!(
            order,
            [("food", 2), ("Career", 1), ("habits", 1), ("work", 1)]
        );
        assert_eq!(stats.storage_bytes, 100 + 3 * 8 * 4);
        assert_eq!(
            (stats.memories, stats.superseded, stats.history_events),
            (2, 1, 4)
        );
    }
}
