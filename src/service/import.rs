//! The import flow (`engram import`): memories brought in from another
//! system, or from another engram, written through the store as their
//! source kept them, never through the extractor.
//!
//! prepare (each record: the checks every door makes, secrets kept out as
//! `ENGRAM_SECRETS` says) ─▶ import (a chunk of one user's records: embed
//! in one batch with this service's embedder, seal sensitive metadata,
//! write in one store batch with the chunk's audit row).
//!
//! Invariants:
//! * vectors are always this service's embedder's: a source's own vectors
//!   never reach the store (the store refuses to mix embedders);
//! * idempotent: a record whose id the user already has is left alone, so
//!   importing a file twice adds nothing; a record whose id is another
//!   user's lands under its fallback id, derived from the source by the
//!   caller, so a second run finds it there too;
//! * a chunk's writes and its audit row (operation `import`, the ids added)
//!   commit together or not at all;
//! * an [`ImportItem`] exists only through [`MemoryService::prepare_import`],
//!   so everything [`MemoryService::import`] writes passed the door's checks.

use chrono::{DateTime, Utc};

use super::MemoryService;
use super::screen;
use super::validate;
use crate::auth::Principal;
use crate::error::Error;
use crate::model::{Event, Input, MemoryId, Metadata, Scope, UserId, validate_metadata};
use crate::store::{HistoryEntry, ImportOutcome, ImportedMemory, NewMemory, StoreError};

/// Who the history of a memory without a history of its own names.
pub const IMPORT_ACTOR: &str = "import";

/// One record as a source gave it, before the checks.
#[derive(Debug, Clone, Default)]
pub struct ImportRecord {
    /// The id to keep.
    pub id: Option<MemoryId>,
    /// The id to use when `id` is absent or another user's: derived from
    /// the source record, so every run picks the same.
    pub fallback_id: MemoryId,
    pub agent_id: Option<String>,
    pub run_id: Option<String>,
    pub text: String,
    pub metadata: Metadata,
    pub categories: Vec<String>,
    /// None: now.
    pub created_at: Option<DateTime<Utc>>,
    /// None: `created_at`.
    pub updated_at: Option<DateTime<Utc>>,
    /// When it stopped being current; none: current.
    pub valid_to: Option<DateTime<Utc>>,
    pub expires_at: Option<DateTime<Utc>>,
    /// Oldest first; empty: an ADD at creation (and, for a closed memory,
    /// a SUPERSEDE without successor when it was closed).
    pub history: Vec<HistoryEntry>,
}

/// A record that passed the checks, for [`MemoryService::import`].
#[derive(Debug, Clone)]
pub struct ImportItem {
    id: Option<MemoryId>,
    fallback_id: MemoryId,
    scope: Scope,
    text: String,
    metadata: Metadata,
    categories: Vec<String>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    valid_to: Option<DateTime<Utc>>,
    expires_at: Option<DateTime<Utc>>,
    history: Vec<HistoryEntry>,
}

impl ImportItem {
    pub fn user_id(&self) -> &UserId {
        self.scope.user_id()
    }
}

/// What became of one item.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Imported {
    /// Written under this id.
    Added(MemoryId),
    /// Already there under this id (an earlier import): nothing changed.
    Present(MemoryId),
    /// A current memory (this id) already holds exactly this text: nothing changed.
    Repeat(MemoryId),
}

impl MemoryService {
    /// Checks `record` as every door checks a remember (ids, text, metadata;
    /// secrets as `ENGRAM_SECRETS` says) and fixes what the source left
    /// open (times, history), for `user`.
    pub fn prepare_import(&self, user: &UserId, record: ImportRecord) -> Result<ImportItem, Error> {
        let scope = Scope::narrowed(
            user.clone(),
            record.agent_id.as_deref(),
            record.run_id.as_deref(),
        )?;
        let text = validate::text("text", &record.text, self.settings.max_text_bytes)?;
        let metadata = validate_metadata(Some(record.metadata))?;
        let (input, metadata, _) =
            screen::secrets(self.settings.secrets, Input::Text(text), metadata)?;
        let Input::Text(text) = input else {
            return Err(Error::invalid(
                "text",
                "a text went in and something else came out",
            ));
        };
        let mut history = record.history;
        for entry in &mut history {
            for kept in [&mut entry.old_memory, &mut entry.new_memory]
                .into_iter()
                .flatten()
            {
                let (input, _, _) = screen::secrets(
                    self.settings.secrets,
                    Input::Text(std::mem::take(kept)),
                    Metadata::new(),
                )?;
                if let Input::Text(screened) = input {
                    *kept = screened;
                }
            }
        }
        let created_at = record.created_at.unwrap_or_else(Utc::now);
        let updated_at = record.updated_at.unwrap_or(created_at).max(created_at);
        if history.is_empty() {
            history.push(entry(Event::Add, None, Some(&text), created_at));
            if let Some(closed) = record.valid_to {
                history.push(entry(Event::Supersede, Some(&text), None, closed));
            }
        }
        Ok(ImportItem {
            id: record.id,
            fallback_id: record.fallback_id,
            scope,
            text,
            metadata,
            categories: record.categories,
            created_at,
            updated_at,
            valid_to: record.valid_to,
            expires_at: record.expires_at,
            history,
        })
    }

    /// Every user with memories or deferred remembers, in byte order: the
    /// operator's alone (`engram export --all`), never a request's.
    pub async fn users(&self, caller: &Principal) -> Result<Vec<String>, Error> {
        match caller {
            Principal::Operator => Ok(self.store.users().await?),
            _ => Err(Error::Forbidden(
                "listing every user is the operator's, on the command line".into(),
            )),
        }
    }

    /// Writes `items` (all of `user`'s, at most a few hundred: one
    /// transaction) with vectors from this service's embedder, and one
    /// audit row; what became of each, in order.
    pub async fn import(
        &self,
        caller: &Principal,
        user: &UserId,
        items: Vec<ImportItem>,
    ) -> Result<Vec<Imported>, Error> {
        let record = self.audit_record(caller, "import", Some(user.as_str()), None);
        let result = self.import_inner(caller, user, items, record.clone()).await;
        if result.is_err() {
            self.audit_after(record, &result, |_| Vec::new());
        }
        result
    }

    async fn import_inner(
        &self,
        caller: &Principal,
        user: &UserId,
        items: Vec<ImportItem>,
        audit: Option<crate::store::AuditRecord>,
    ) -> Result<Vec<Imported>, Error> {
        caller.may_write()?;
        if let Some(other) = items.iter().find(|i| i.user_id() != user) {
            return Err(Error::invalid(
                "user_id",
                format!(
                    "an import batch for user \"{user}\" holds a record of \"{}\"",
                    other.user_id()
                ),
            ));
        }
        if items.is_empty() {
            return Ok(Vec::new());
        }
        let texts: Vec<String> = items.iter().map(|i| i.text.clone()).collect();
        let vectors = self.embedder.embed_documents(&texts).await?;
        let mut batch = self.store.begin(user.as_str()).await?;
        let mut results = Vec::with_capacity(items.len());
        let mut added = Vec::new();
        for (item, embedding) in items.into_iter().zip(vectors) {
            let metadata = self.seal_metadata(item.metadata.clone(), user.as_str());
            let mut imported = ImportedMemory {
                memory: NewMemory {
                    id: item.id.unwrap_or(item.fallback_id),
                    scope: item.scope.clone(),
                    content: item.text.clone(),
                    embedding,
                    metadata,
                    categories: item.categories.clone(),
                    actor: IMPORT_ACTOR.to_owned(),
                    expires_at: item.expires_at,
                },
                created_at: item.created_at,
                updated_at: item.updated_at,
                valid_to: item.valid_to,
                history: item.history.clone(),
            };
            let mut outcome = batch.import(imported.clone()).await?;
            if outcome == ImportOutcome::IdTaken && imported.memory.id != item.fallback_id {
                imported.memory.id = item.fallback_id;
                outcome = batch.import(imported.clone()).await?;
            }
            // Under row-level security the kept id's owner is not visible
            // before the write: a second run may meet its own earlier copy,
            // under the fallback id, as a repeat of the text.
            if outcome == ImportOutcome::Repeat(item.fallback_id) {
                imported.memory.id = item.fallback_id;
                outcome = ImportOutcome::Present;
            }
            let id = imported.memory.id;
            results.push(match outcome {
                ImportOutcome::Added => {
                    added.push(id);
                    Imported::Added(id)
                }
                ImportOutcome::Present => Imported::Present(id),
                ImportOutcome::Repeat(existing) => Imported::Repeat(existing),
                ImportOutcome::IdTaken => {
                    return Err(Error::Store(StoreError::Conflict(format!(
                        "memory id {id} belongs to another user, and so does the id derived \
                         from the record; nothing of this batch was written"
                    ))));
                }
            });
        }
        if let Some(mut record) = audit {
            crate::audit::with_memories(&mut record, added);
            batch.audit(&record).await?;
        }
        batch.commit().await?;
        Ok(results)
    }
}

fn entry(event: Event, old: Option<&str>, new: Option<&str>, at: DateTime<Utc>) -> HistoryEntry {
    HistoryEntry {
        // The store writes the rows under the memory's id.
        memory_id: MemoryId(uuid::Uuid::nil()),
        event,
        old_memory: old.map(str::to_owned),
        new_memory: new.map(str::to_owned),
        actor: IMPORT_ACTOR.to_owned(),
        created_at: at,
    }
}
