//! Rows to the store's values, once for both backends: the column lists
//! every read selects (the same names on both schemas), and the mapping
//! of a row of either dialect ([`Columns`]) to a memory, a history entry,
//! a deferred remember, an API key, a user's stats or their export.

use chrono::{DateTime, Utc};

use super::Columns;
use crate::model::{Event, Memory, MemoryId, Scope};
use crate::store::report::{StatsCounts, assemble_export};
use crate::store::{Access, ApiKey, HistoryEntry, NewPending, Pending, StoreError, UserExport};

/// The columns [`memory_from_row`] reads, from `memories` aliased as `m`.
pub(in crate::store) const MEMORY_COLUMNS: &str = "m.id, m.user_id, m.agent_id, m.run_id, \
    m.content, m.metadata, m.categories, m.created_at, m.updated_at, m.expires_at";

/// The `SELECT` [`history_from_row`] reads.
pub(in crate::store) const HISTORY_SELECT: &str = "SELECT memory_id, event, old_content, \
    new_content, actor, created_at FROM memory_history";

/// The `SELECT` [`pending_from_row`] reads.
pub(in crate::store) const PENDING_SELECT: &str = "SELECT id, user_id, agent_id, run_id, input, \
    metadata, infer, memory_ids, error, attempts, created_at FROM pending_extractions";

/// The `SELECT` [`key_from_row`] reads.
pub(in crate::store) const KEY_SELECT: &str = "SELECT id, prefix, hash, user_id, label, created_at, revoked_at, expires_at, read_only \
     FROM api_keys";

/// A history row's event as stored (`ADD`, `UPDATE`, `SUPERSEDE`).
/// The schema also allows `DELETE`, which nothing writes: a forgotten
/// memory's history goes with it.
fn parse_event(raw: &str) -> Result<Event, StoreError> {
    Ok(match raw {
        "ADD" => Event::Add,
        "UPDATE" => Event::Update,
        "SUPERSEDE" => Event::Supersede,
        other => return Err(StoreError::Corrupt(format!("history event '{other}'"))),
    })
}

/// The scope columns (`user_id`, `agent_id`, `run_id`) of a row.
fn scope_from_row<R: Columns>(row: &R, cx: &'static str) -> Result<Scope, StoreError> {
    Scope::from_parts(
        row.text("user_id", cx)?,
        row.opt_text("agent_id", cx)?,
        row.opt_text("run_id", cx)?,
    )
    .map_err(|e| StoreError::Corrupt(format!("{cx}: {e}")))
}

/// A memory, from [`MEMORY_COLUMNS`].
pub(in crate::store) fn memory_from_row<R: Columns>(row: &R) -> Result<Memory, StoreError> {
    const CX: &str = "reading a memory";
    Ok(Memory {
        id: MemoryId(row.id("id", "memory id", CX)?),
        memory: row.text("content", CX)?,
        scope: scope_from_row(row, CX)?,
        metadata: row.metadata("metadata", "metadata", CX)?,
        categories: row.strings("categories", "categories", CX)?,
        created_at: row.time("created_at", CX)?,
        updated_at: row.time("updated_at", CX)?,
        expires_at: row.opt_time("expires_at", CX)?,
    })
}

/// A history entry, from [`HISTORY_SELECT`].
pub(in crate::store) fn history_from_row<R: Columns>(row: &R) -> Result<HistoryEntry, StoreError> {
    const CX: &str = "reading history";
    Ok(HistoryEntry {
        memory_id: MemoryId(row.id("memory_id", "history memory id", CX)?),
        event: parse_event(&row.text("event", CX)?)?,
        old_memory: row.opt_text("old_content", CX)?,
        new_memory: row.opt_text("new_content", CX)?,
        actor: row.text("actor", CX)?,
        created_at: row.time("created_at", CX)?,
    })
}

/// A deferred remember, from [`PENDING_SELECT`].
pub(in crate::store) fn pending_from_row<R: Columns>(row: &R) -> Result<Pending, StoreError> {
    const CX: &str = "reading a deferred remember";
    let attempts = row.integer("attempts", CX)?;
    let memory_ids = row.ids("memory_ids", "deferred remember memory ids", CX)?;
    Ok(Pending {
        entry: NewPending {
            id: row.id("id", "deferred remember id", CX)?,
            scope: scope_from_row(row, CX)?,
            input: row.json("input", "deferred remember input", CX)?,
            metadata: row.metadata("metadata", "deferred remember metadata", CX)?,
            infer: row.flag("infer", CX)?,
            memory_ids: memory_ids.into_iter().map(MemoryId).collect(),
            error: row.text("error", CX)?,
        },
        attempts: u32::try_from(attempts)
            .map_err(|_| StoreError::Corrupt(format!("{attempts} re-extraction attempts")))?,
        created_at: row.time("created_at", CX)?,
    })
}

/// An API key, from [`KEY_SELECT`].
pub(in crate::store) fn key_from_row<R: Columns>(row: &R) -> Result<ApiKey, StoreError> {
    const CX: &str = "reading an API key";
    Ok(ApiKey {
        id: row.id("id", "API key id", CX)?,
        prefix: row.text("prefix", CX)?,
        hash: row.text("hash", CX)?,
        user_id: row.opt_text("user_id", CX)?,
        label: row.text("label", CX)?,
        created_at: row.time("created_at", CX)?,
        revoked_at: row.opt_time("revoked_at", CX)?,
        expires_at: row.opt_time("expires_at", CX)?,
        access: if row.flag("read_only", CX)? {
            Access::ReadOnly
        } else {
            Access::ReadWrite
        },
    })
}

/// A user's numbers from the one row of a backend's stats query: counts
/// `memories`, `superseded`, `history_events`, `pending` and `text_bytes`,
/// times `oldest` and `newest`, and `categories` as a JSON array of
/// `[category, memories]`.
pub(in crate::store) fn stats_from_row<R: Columns>(row: &R) -> Result<StatsCounts, StoreError> {
    const CX: &str = "reading the user's stats";
    let categories = row.json("categories", "category counts", CX)?;
    Ok(StatsCounts {
        memories: row.bigint("memories", CX)?,
        superseded: row.bigint("superseded", CX)?,
        history_events: row.bigint("history_events", CX)?,
        pending: row.bigint("pending", CX)?,
        oldest: row.opt_time("oldest", CX)?,
        newest: row.opt_time("newest", CX)?,
        text_bytes: row.bigint("text_bytes", CX)?,
        categories: serde_json::from_value(categories)
            .map_err(|e| StoreError::Corrupt(format!("category counts: {e}")))?,
    })
}

/// A user's export from the rows of its three reads: memories
/// ([`MEMORY_COLUMNS`] and `valid_to`), history ([`HISTORY_SELECT`]) and
/// deferred remembers ([`PENDING_SELECT`]), each in export order.
pub(in crate::store) fn export_from_rows<R: Columns>(
    user_id: &str,
    memories: &[R],
    history: &[R],
    pending: &[R],
) -> Result<UserExport, StoreError> {
    let memories = memories
        .iter()
        .map(|row| {
            let valid_to: Option<DateTime<Utc>> = row.opt_time("valid_to", "reading a memory")?;
            Ok((memory_from_row(row)?, valid_to))
        })
        .collect::<Result<_, StoreError>>()?;
    let history = history
        .iter()
        .map(history_from_row)
        .collect::<Result<_, _>>()?;
    let pending = pending
        .iter()
        .map(pending_from_row)
        .collect::<Result<_, _>>()?;
    Ok(assemble_export(user_id, memories, history, pending))
}
