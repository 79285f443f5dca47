//! What the flows accept, checked once for every door: a request that passes
//! here is within every limit the service keeps, and one that does not is
//! refused with [`Error::InvalidInput`] naming the argument and what is accepted.

use chrono::{DateTime, NaiveDate, NaiveTime, Utc};

use crate::config::MAX_RETENTION_DAYS;
use crate::error::Error;
use crate::model::{Input, MemoryId, Message, MetadataFilter, check_text, normalize_date};
use crate::params::ForgetParams;

/// Most results a recall or a context may ask for.
pub const MAX_LIMIT: usize = 100;
/// Most messages one remember may carry.
pub const MAX_MESSAGES: usize = 200;

/// Exactly one of text and messages, non-empty and within `max_bytes`.
pub(super) fn input(
    text: Option<String>,
    messages: Option<Vec<Message>>,
    max_bytes: usize,
) -> Result<Input, Error> {
    match (text, messages) {
        (Some(_), Some(_)) => Err(Error::invalid(
            "text",
            "give either `text` or `messages`, not both",
        )),
        (None, None) => Err(Error::invalid(
            "text",
            "nothing to remember: give `text` (a string) or `messages` ([{role, content}])",
        )),
        (Some(raw), None) => Ok(Input::Text(self::text("text", &raw, max_bytes)?)),
        (None, Some(messages)) => conversation(messages, max_bytes).map(Input::Messages),
    }
}

/// Messages with known roles and valid dates (normalised), not all empty.
fn conversation(mut messages: Vec<Message>, max_bytes: usize) -> Result<Vec<Message>, Error> {
    if messages.is_empty() {
        return Err(Error::invalid("messages", "must hold at least one message"));
    }
    if messages.len() > MAX_MESSAGES {
        return Err(Error::invalid(
            "messages",
            format!(
                "holds {} messages; at most {MAX_MESSAGES} are accepted",
                messages.len()
            ),
        ));
    }
    for m in &mut messages {
        if let Some(raw) = &m.date {
            m.date = Some(normalize_date(raw).ok_or_else(|| {
                Error::invalid(
                    "messages",
                    format!(
                        "date '{raw}' is neither a date (2026-11-20) nor an \
                         RFC 3339 time (2026-11-20T09:30:00Z)"
                    ),
                )
            })?);
        }
        check_text("messages", &m.content)?;
        let role = m.role.to_ascii_lowercase();
        if !matches!(role.as_str(), "user" | "assistant" | "system" | "tool") {
            return Err(Error::invalid(
                "messages",
                format!(
                    "role '{}' is not accepted; use user, assistant, system or tool",
                    m.role
                ),
            ));
        }
    }
    let total: usize = messages.iter().map(|m| m.content.len()).sum();
    size("messages", total, max_bytes)?;
    if messages.iter().all(|m| m.content.trim().is_empty()) {
        return Err(Error::invalid(
            "messages",
            "every message is empty; nothing to remember",
        ));
    }
    Ok(messages)
}

/// A text argument (text, query), trimmed, not empty, within `max_bytes`,
/// without control characters but tabs and line breaks.
pub(super) fn text(field: &'static str, raw: &str, max_bytes: usize) -> Result<String, Error> {
    size(field, raw.len(), max_bytes)?;
    check_text(field, raw)?;
    let text = raw.trim();
    if text.is_empty() {
        return Err(Error::invalid(field, "must not be empty"));
    }
    Ok(text.to_owned())
}

/// An optional focus: blank means none.
pub(super) fn focus(raw: Option<String>, max_bytes: usize) -> Result<Option<String>, Error> {
    match raw.filter(|q| !q.trim().is_empty()) {
        Some(q) => text("query", &q, max_bytes).map(Some),
        None => Ok(None),
    }
}

fn size(field: &'static str, bytes: usize, max: usize) -> Result<(), Error> {
    if bytes > max {
        return Err(Error::invalid(
            field,
            format!(
                "is {bytes} bytes; at most {max} are accepted (ENGRAM_MAX_TEXT_BYTES); \
                 split it into smaller pieces"
            ),
        ));
    }
    Ok(())
}

/// `limit` within 1..=[`MAX_LIMIT`], or `default` when omitted.
pub fn limit(raw: Option<i64>, default: usize) -> Result<usize, Error> {
    match raw {
        None => Ok(default),
        Some(n) if (1..=MAX_LIMIT as i64).contains(&n) => Ok(n as usize),
        Some(n) => Err(Error::invalid(
            "limit",
            format!("{n} is out of range; accepted 1..={MAX_LIMIT} (default {default})"),
        )),
    }
}

/// `ttl_days` as given: whole days in 1..=[`MAX_RETENTION_DAYS`].
pub fn ttl_days(raw: Option<i64>) -> Result<Option<u32>, Error> {
    match raw {
        None => Ok(None),
        Some(n) if (1..=i64::from(MAX_RETENTION_DAYS)).contains(&n) => Ok(u32::try_from(n).ok()),
        Some(n) => Err(Error::invalid(
            "ttl_days",
            format!(
                "{n} is out of range; accepted 1..={MAX_RETENTION_DAYS} (days the memories are \
                 kept; the operator's retention, if shorter, still applies)"
            ),
        )),
    }
}

/// `min_score` as given: a number in 0..=1; `None` keeps every result (0).
pub fn min_score(raw: Option<f64>) -> Result<f32, Error> {
    match raw {
        None => Ok(0.0),
        Some(x) if (0.0..=1.0).contains(&x) => Ok(x as f32),
        Some(x) => Err(Error::invalid(
            "min_score",
            format!("{x} is out of range; accepted 0..=1 (scores are on that scale)"),
        )),
    }
}

/// What a forget deletes.
#[derive(Debug)]
pub(super) enum ForgetTarget {
    /// One memory (`memory_id`).
    One(MemoryId),
    /// Every memory of the user, and their API keys (`all: true` alone).
    User,
    /// The user's memories of `agent_id` and `run_id` (checked with the
    /// scope) that `filter` and `before` select (`all: true` with any of
    /// them).
    Matching {
        filter: MetadataFilter,
        before: Option<DateTime<Utc>>,
    },
}

/// What a forget deletes. Anything but one memory needs `all: true` and
/// the user named explicitly (never a default): a guard against deleting
/// many memories by accident, narrowed or not.
pub(super) fn forget_target(req: &ForgetParams) -> Result<ForgetTarget, Error> {
    let narrowing = req.narrowing();
    let all = req.all.unwrap_or(false);
    if let (Some(_), Some(field)) = (&req.memory_id, narrowing.first().copied()) {
        return Err(Error::invalid(
            field,
            format!(
                "`{field}` selects many memories to delete (with `all: true`); it cannot \
                 narrow a forget of one `memory_id`: give one or the other"
            ),
        ));
    }
    match (req.memory_id.as_deref(), all) {
        (Some(_), true) => Err(Error::invalid(
            "memory_id",
            "give either `memory_id` or `all: true`, not both",
        )),
        (Some(raw), false) => Ok(ForgetTarget::One(MemoryId::parse("memory_id", raw)?)),
        (None, false) => match narrowing.first().copied() {
            Some(field) => Err(Error::invalid(
                field,
                format!(
                    "`{field}` selects memories to delete; add `all: true` (with `user_id`) \
                     to delete every memory it selects: deleting many memories is never implied"
                ),
            )),
            None => Err(Error::invalid(
                "memory_id",
                "say what to forget: {memory_id} for one memory, {user_id, all: true} \
                 for all of a user's, or {user_id, all: true} with agent_id, run_id, \
                 filters or before for the memories they select",
            )),
        },
        (None, true) if req.user_id.is_none() => Err(Error::invalid(
            "user_id",
            "deleting many memories needs `user_id` given explicitly, with `all: true`",
        )),
        (None, true) if narrowing.is_empty() => Ok(ForgetTarget::User),
        (None, true) => {
            let filter = MetadataFilter::parse(req.filters.as_ref())?;
            if req.filters.is_some() && filter.is_empty() {
                return Err(Error::invalid(
                    "filters",
                    "is empty, so it selects nothing to narrow by; give at least one \
                     {key: value}, or leave `filters` out",
                ));
            }
            let before = req.before.as_deref().map(before).transpose()?;
            Ok(ForgetTarget::Matching { filter, before })
        }
    }
}

/// `before` as an instant: an RFC 3339 time, or a date (its midnight, UTC).
fn before(raw: &str) -> Result<DateTime<Utc>, Error> {
    let raw = raw.trim();
    if let Ok(day) = NaiveDate::parse_from_str(raw, "%Y-%m-%d") {
        return Ok(day.and_time(NaiveTime::MIN).and_utc());
    }
    DateTime::parse_from_rfc3339(raw)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|_| {
            Error::invalid(
                "before",
                format!(
                    "'{}' is neither an RFC 3339 time (2026-11-20T09:30:00Z) nor a date \
                     (2026-11-20)",
                    crate::model::truncate(raw, 60).escape_debug()
                ),
            )
        })
}
