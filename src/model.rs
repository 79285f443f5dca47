//! The nouns every layer shares: memories and their ids, the scope a memory
//! belongs to, the facts an extractor produces, the events a write reports, and
//! the metadata filters a recall applies.
//!
//! Validation of raw input lives here too, so every transport refuses the same
//! garbage with the same words.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use crate::error::Error;

/// Free-form JSON object attached to a memory by the caller.
pub type Metadata = serde_json::Map<String, Value>;

/// Longest accepted user, agent or run id, in bytes.
pub const MAX_ID_LEN: usize = 128;
/// Largest accepted metadata object, serialised, in bytes.
pub const MAX_METADATA_BYTES: usize = 16 * 1024;

/// A memory's identity: a UUID (v7, so ids sort by creation time).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct MemoryId(pub Uuid);

impl MemoryId {
    pub fn new() -> Self {
        Self(Uuid::now_v7())
    }

    /// Parses a caller-supplied id, naming the argument when it is not a UUID.
    pub fn parse(field: &'static str, raw: &str) -> Result<Self, Error> {
        Uuid::parse_str(raw.trim()).map(Self).map_err(|_| {
            Error::invalid(
                field,
                format!(
                    "'{}' is not a memory id; expected a UUID such as \
                     0193a5c4-7b1e-7cc2-9a41-2f6f0d6e8b10 (as returned by remember or recall)",
                    truncate(raw, 60)
                ),
            )
        })
    }
}

impl Default for MemoryId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for MemoryId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl FromStr for MemoryId {
    type Err = uuid::Error;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Uuid::parse_str(s).map(Self)
    }
}

impl JsonSchema for MemoryId {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "MemoryId".into()
    }
    fn json_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
        Uuid::json_schema(generator)
    }
}

/// Who a memory belongs to. `user_id` is always set; agent and run narrow it.
///
/// Invariant: every store read and write is bounded by `user_id`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Scope {
    pub user_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_id: Option<String>,
}

impl Scope {
    pub fn user(user_id: impl Into<String>) -> Self {
        Self {
            user_id: user_id.into(),
            agent_id: None,
            run_id: None,
        }
    }

    /// Builds a scope from raw ids, refusing empty, oversized or control-character ids.
    pub fn new(user_id: &str, agent_id: Option<&str>, run_id: Option<&str>) -> Result<Self, Error> {
        Ok(Self {
            user_id: validate_id("user_id", user_id)?,
            agent_id: agent_id.map(|a| validate_id("agent_id", a)).transpose()?,
            run_id: run_id.map(|r| validate_id("run_id", r)).transpose()?,
        })
    }
}

/// Checks one id and returns it trimmed.
pub fn validate_id(field: &'static str, raw: &str) -> Result<String, Error> {
    let id = raw.trim();
    if id.is_empty() {
        return Err(Error::invalid(
            field,
            "must not be empty; omit it to use the default",
        ));
    }
    if id.len() > MAX_ID_LEN {
        return Err(Error::invalid(
            field,
            format!("is {} bytes; at most {MAX_ID_LEN} are accepted", id.len()),
        ));
    }
    if id.chars().any(char::is_control) {
        return Err(Error::invalid(
            field,
            "contains control characters; use printable text",
        ));
    }
    Ok(id.to_owned())
}

/// A stored memory, as every reader sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Memory {
    pub id: MemoryId,
    /// The remembered text.
    pub memory: String,
    #[serde(flatten)]
    pub scope: Scope,
    #[serde(default)]
    pub metadata: Metadata,
    #[serde(default)]
    pub categories: Vec<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// One message of a conversation handed to `remember`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Message {
    /// `user`, `assistant`, `system` or `tool`.
    pub role: String,
    pub content: String,
    /// When it was said: a date (`2026-11-20`) or an RFC 3339 time. The
    /// extractor resolves relative dates in it ("tomorrow") against this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub date: Option<String>,
}

impl Message {
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        Self {
            role: role.into(),
            content: content.into(),
            date: None,
        }
    }
}

/// `raw` as a message date: `YYYY-MM-DD`, or an RFC 3339 time shown in UTC
/// to the minute. `None` when it is neither.
pub fn normalize_date(raw: &str) -> Option<String> {
    let raw = raw.trim();
    if let Ok(day) = chrono::NaiveDate::parse_from_str(raw, "%Y-%m-%d") {
        return Some(day.format("%Y-%m-%d").to_string());
    }
    DateTime::parse_from_rfc3339(raw).ok().map(|t| {
        t.with_timezone(&Utc)
            .format("%Y-%m-%d %H:%M UTC")
            .to_string()
    })
}

/// What `remember` is given: plain text, or a conversation.
#[derive(Debug, Clone, PartialEq)]
pub enum Input {
    Text(String),
    Messages(Vec<Message>),
}

/// A candidate memory produced by an extractor, before embedding and dedup.
#[derive(Debug, Clone, PartialEq)]
pub struct Fact {
    pub text: String,
    pub categories: Vec<String>,
    /// The role of the message the fact came from, when known.
    pub role: Option<String>,
}

/// What a write did to one memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Event {
    /// A new memory was stored.
    Add,
    /// An existing memory's text changed.
    Update,
    /// A memory stopped being true; a newer one replaces it.
    Supersede,
    /// A memory was removed.
    Delete,
    /// Nothing changed: the fact was already known.
    None,
}

impl Event {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Add => "ADD",
            Self::Update => "UPDATE",
            Self::Supersede => "SUPERSEDE",
            Self::Delete => "DELETE",
            Self::None => "NONE",
        }
    }
}

/// Metadata equality filters: every pair must match the memory's metadata exactly.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MetadataFilter(Vec<(String, Value)>);

impl MetadataFilter {
    /// Accepts `{key: scalar, ...}`; refuses nested objects, arrays and null,
    /// saying which key was wrong and what is accepted.
    pub fn parse(raw: Option<&Metadata>) -> Result<Self, Error> {
        let Some(raw) = raw else {
            return Ok(Self::default());
        };
        let mut pairs = Vec::with_capacity(raw.len());
        for (key, value) in raw {
            if key.is_empty() {
                return Err(Error::invalid("filters", "keys must not be empty"));
            }
            let kind = match value {
                Value::String(_) | Value::Number(_) | Value::Bool(_) => {
                    pairs.push((key.clone(), value.clone()));
                    continue;
                }
                Value::Null => "null",
                Value::Array(_) => "an array",
                Value::Object(_) => "an object",
            };
            return Err(Error::invalid(
                "filters",
                format!(
                    "`{key}` is {kind}; filters match metadata by equality, so each value \
                     must be a string, number or boolean, e.g. {{\"{key}\": \"travel\"}}"
                ),
            ));
        }
        Ok(Self(pairs))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn pairs(&self) -> &[(String, Value)] {
        &self.0
    }

    /// True when `metadata` holds every pair with an equal value.
    pub fn matches(&self, metadata: &Metadata) -> bool {
        self.0.iter().all(|(k, v)| metadata.get(k) == Some(v))
    }
}

/// Checks caller metadata: an object of bounded size.
pub fn validate_metadata(metadata: Option<Metadata>) -> Result<Metadata, Error> {
    let metadata = metadata.unwrap_or_default();
    let size = serde_json::to_vec(&metadata).map(|v| v.len()).unwrap_or(0);
    if size > MAX_METADATA_BYTES {
        return Err(Error::invalid(
            "metadata",
            format!("is {size} bytes serialised; at most {MAX_METADATA_BYTES} are accepted"),
        ));
    }
    Ok(metadata)
}

/// True when two texts differ in a detail a similarity score cannot be trusted
/// with, so that they are never duplicates however similar their vectors:
/// * their numbers differ (dates, amounts, times: "March 3" / "March 5");
/// * their negations differ ("allergic" / "not allergic");
/// * a word was swapped: each has a content word the other lacks ("Monday" /
///   "Tuesday"). Pure rewording with the same words, or an added filler word,
///   still counts as the same statement.
pub fn details_differ(a: &str, b: &str) -> bool {
    let (a, b) = (Details::of(a), Details::of(b));
    a.numbers != b.numbers
        || a.negations != b.negations
        || (a.words.difference(&b.words).next().is_some()
            && b.words.difference(&a.words).next().is_some())
}

struct Details {
    numbers: Vec<String>,
    negations: usize,
    words: std::collections::BTreeSet<String>,
}

impl Details {
    fn of(text: &str) -> Self {
        let mut details = Self {
            numbers: Vec::new(),
            negations: 0,
            words: std::collections::BTreeSet::new(),
        };
        for word in text.split(|c: char| !(c.is_alphanumeric() || c == '\'' || c == '’')) {
            let word = word.to_lowercase().replace('’', "'");
            if word.is_empty() {
                continue;
            }
            if word.chars().any(|c| c.is_ascii_digit()) {
                details.numbers.push(word);
            } else if NEGATIONS.contains(&word.as_str()) || word.ends_with("n't") {
                details.negations += 1;
            } else if !is_stopword(&word) {
                details.words.insert(word);
            }
        }
        details.numbers.sort();
        details
    }
}

const NEGATIONS: &[&str] = &[
    "not", "no", "never", "nor", "none", "nothing", "nobody", "neither", "cannot", "without",
];

/// English function words: too common to rank by or to tell statements apart.
pub fn is_stopword(word: &str) -> bool {
    STOPWORDS.contains(&word)
}

const STOPWORDS: &[&str] = &[
    "a", "about", "an", "and", "are", "as", "at", "be", "but", "by", "did", "do", "does", "for",
    "from", "had", "has", "have", "he", "her", "him", "his", "how", "i", "if", "in", "into", "is",
    "it", "its", "me", "my", "of", "on", "or", "our", "she", "so", "that", "the", "their", "them",
    "they", "this", "to", "was", "we", "were", "what", "when", "where", "which", "who", "why",
    "will", "with", "you", "your",
];

/// Schema for a count: a non-negative integer, without the `uint64` format
/// that some clients' validators warn about.
pub fn count_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({"type": "integer", "minimum": 0})
}

fn truncate(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((i, _)) => format!("{}...", &s[..i]),
        None => s.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn message_dates_are_days_or_utc_minutes() {
        assert_eq!(
            normalize_date(" 2026-11-20 ").as_deref(),
            Some("2026-11-20")
        );
        assert_eq!(
            normalize_date("2026-11-20T09:30:00+01:00").as_deref(),
            Some("2026-11-20 08:30 UTC")
        );
        for bad in ["yesterday", "2026-13-01", "20/11/2026", ""] {
            assert_eq!(normalize_date(bad), None, "{bad}");
        }
    }

    #[test]
    fn filters_accept_scalars_and_refuse_shapes() {
        let ok = json!({"topic": "travel", "n": 3, "flag": true});
        let f = MetadataFilter::parse(ok.as_object()).unwrap();
        assert_eq!(f.pairs().len(), 3);
        assert!(f.matches(ok.as_object().unwrap()));

        for bad in [
            json!({"a": {"b": 1}}),
            json!({"a": [1]}),
            json!({"a": null}),
        ] {
            let err = MetadataFilter::parse(bad.as_object())
                .unwrap_err()
                .to_string();
            assert!(err.contains("`a`"), "{err}");
            assert!(err.contains("string, number or boolean"), "{err}");
        }
    }

    #[test]
    fn changed_numbers_and_negations_are_details() {
        assert!(details_differ(
            "I am allergic to peanuts",
            "I am not allergic to peanuts"
        ));
        assert!(details_differ("I like it", "I don't like it"));
        assert!(details_differ("Flight on March 3", "Flight on March 5"));
        assert!(details_differ("Budget 2000 EUR", "Budget 2500 EUR"));
        assert!(!details_differ("Flight on March 3!", "flight on march 3"));
        assert!(!details_differ(
            "I prefer window seats",
            "I PREFER window seats."
        ));
    }

    #[test]
    fn ids_are_validated() {
        assert!(validate_id("user_id", " ").is_err());
        assert!(validate_id("user_id", &"x".repeat(MAX_ID_LEN + 1)).is_err());
        assert!(validate_id("user_id", "a\u{0}b").is_err());
        assert_eq!(validate_id("user_id", " alice ").unwrap(), "alice");
        let err = MemoryId::parse("memory_id", "nope")
            .unwrap_err()
            .to_string();
        assert!(err.contains("expected a UUID"), "{err}");
    }
}
