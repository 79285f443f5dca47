//! Memories and what they are made from: the messages `remember` is given,
//! the facts an extractor finds in them, and the events a write reports.

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{MemoryId, Metadata, Scope};

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
    /// When the memory stops being returned and becomes due for the
    /// retention purge; none: kept until forgotten.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<DateTime<Utc>>,
}

impl Memory {
    /// Whether the memory has expired at `now` (it is then never returned,
    /// even before the purge removes it).
    pub fn expired_at(&self, now: DateTime<Utc>) -> bool {
        self.expires_at.is_some_and(|at| at <= now)
    }
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
    /// Nothing changed: the fact was already known.
    None,
}

impl Event {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Add => "ADD",
            Self::Update => "UPDATE",
            Self::Supersede => "SUPERSEDE",
            Self::None => "NONE",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
