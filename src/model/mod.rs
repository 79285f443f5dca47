//! The nouns every layer shares, one kind per file: ids and the scope a
//! memory belongs to (`ids`), memories, messages, facts and events
//! (`memory`), metadata and its filters (`filter`), and when two statements
//! differ in a detail (`details`).
//!
//! Validation of raw input lives here too, so every door refuses the same
//! garbage with the same words; it fails with [`Invalid`], which depends on
//! nothing else in the crate.

mod details;
mod filter;
mod ids;
mod memory;

pub use details::{details_differ, is_stopword};
pub use filter::{MAX_METADATA_BYTES, Metadata, MetadataFilter, validate_metadata};
pub use ids::{MAX_ID_LEN, MemoryId, Scope, UserId, is_format, validate_id};
pub use memory::{Event, Fact, Input, Memory, Message, normalize_date};

/// A part of the search a read answered without: the results are still
/// the best engram could find, ranked by what remained.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Degraded {
    /// The query could not be embedded (the embedding server failed):
    /// results are ranked by keywords alone, and their scores are the
    /// keyword half of the usual scale.
    Embedder,
}

/// A value the caller sent that is not accepted: `field` names the argument,
/// `message` says what was wrong and what is accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid `{field}`: {message}")]
pub struct Invalid {
    pub field: &'static str,
    pub message: String,
}

impl Invalid {
    pub fn new(field: &'static str, message: impl Into<String>) -> Self {
        Self {
            field,
            message: message.into(),
        }
    }
}

/// Schema for a count: a non-negative integer, without the `uint64` format
/// that some clients' validators warn about.
pub fn count_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({"type": "integer", "minimum": 0})
}

/// `s` cut to `max` characters, marked when cut (for quoting input in errors).
/// The first character text may not hold: a C0 control other than tab,
/// line feed and carriage return (NUL among them: PostgreSQL cannot store
/// it, and no text needs it).
pub fn control_in_text(text: &str) -> Option<char> {
    text.chars()
        .find(|&c| c <= '\u{1f}' && !matches!(c, '\t' | '\n' | '\r'))
}

/// Why `text` is refused: it holds a control character (see [`control_in_text`]).
pub fn check_text(field: &'static str, text: &str) -> Result<(), Invalid> {
    match control_in_text(text) {
        None => Ok(()),
        Some(c) => Err(Invalid::new(
            field,
            format!(
                "contains the control character U+{:04X}{}; text may hold tabs and line \
                 breaks but no other control characters",
                u32::from(c),
                if c == '\0' { " (NUL)" } else { "" }
            ),
        )),
    }
}

pub(crate) fn truncate(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((i, _)) => format!("{}...", &s[..i]),
        None => s.to_owned(),
    }
}
