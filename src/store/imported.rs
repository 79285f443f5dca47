//! Memories brought in from elsewhere (`engram import`): written as their
//! source kept them (id, times, whether still current, history) rather
//! than as a remember writes them (now, current, one ADD row).
//!
//! Invariants every backend keeps for [`WriteBatch::import`](super::WriteBatch::import):
//! * idempotent by id: a memory whose id the user already has is left as
//!   it is ([`ImportOutcome::Present`]), so a second import adds nothing;
//! * one current copy of a text per user, as for every write: a current
//!   memory whose exact text a current memory of the user already holds is
//!   not written ([`ImportOutcome::Repeat`]). Near-duplicates are not
//!   judged: the source already decided they were different memories;
//! * a closed memory (`valid_to` set) never enters the search paths (vector
//!   copy, keyword postings), exactly like one a supersede closed;
//! * the memory, its history rows and the user's version move together,
//!   in the batch's transaction.

use chrono::{DateTime, Utc};

use super::{HistoryEntry, NewMemory};
use crate::model::MemoryId;

/// A memory to be imported, already embedded (with this store's embedder:
/// vectors from elsewhere are never kept).
#[derive(Debug, Clone)]
pub struct ImportedMemory {
    /// Id, scope, text, vector, metadata, categories and expiry; `actor`
    /// names who caused the ADD row when the source has no history.
    pub memory: NewMemory,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// When it stopped being current; none: it is current.
    pub valid_to: Option<DateTime<Utc>>,
    /// Its history as the source kept it, oldest first (each row's
    /// `memory_id` is ignored: the rows are this memory's). Empty: one ADD
    /// row at `created_at` by `memory.actor`.
    pub history: Vec<HistoryEntry>,
}

impl ImportedMemory {
    /// The history rows to write: the source's, or one ADD at creation.
    pub(super) fn history_rows(&self) -> Vec<HistoryEntry> {
        if !self.history.is_empty() {
            return self.history.clone();
        }
        vec![HistoryEntry {
            memory_id: self.memory.id,
            event: crate::model::Event::Add,
            old_memory: None,
            new_memory: Some(self.memory.content.clone()),
            actor: self.memory.actor.clone(),
            created_at: self.created_at,
        }]
    }

    /// Whether the memory goes into the search paths: current and not
    /// expired at `now`.
    pub(super) fn searchable_at(&self, now: DateTime<Utc>) -> bool {
        self.valid_to.is_none() && self.memory.expires_at.is_none_or(|at| at > now)
    }
}

/// What [`WriteBatch::import`](super::WriteBatch::import) did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImportOutcome {
    /// Written, with its history.
    Added,
    /// The user already has a memory with this id: nothing changed.
    Present,
    /// A current memory of the user (this id) already holds exactly this
    /// text: nothing changed.
    Repeat(MemoryId),
    /// The id is another user's memory: nothing changed. (The caller
    /// derives another id, or reports it.)
    IdTaken,
}
