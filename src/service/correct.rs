//! Correcting one memory (`PUT /api/v1/memory/{id}`, mem0's `update`): a
//! supersede with history, never an overwrite.
//!
//! The named memory is closed (`valid_to` set, a SUPERSEDE history row
//! naming the new text) and a new version is stored in its place, with a
//! new id, in one transaction with its audit row; the write moves the
//! user's version, so no cached recall or context outlives it. That is how
//! every supersede in engram works: each version is a row of its own with
//! the time it was true, so the old text stays readable by its old id
//! (`current: false`) and in its history.
//!
//! Invariants:
//! * the new version keeps the old one's user, agent, run, categories and
//!   expiry (a correction fixes what a memory says, not how long it is
//!   kept), and its metadata unless the request gives new metadata;
//! * the text is stored as given (no extraction, no deduplication against
//!   near texts), after the same checks and secrets screening as a
//!   remember's;
//! * a memory the caller's user does not have (unknown, forgotten, or
//!   another user's) is `NotFound`, the same answer for all three; one that
//!   is no longer current, or a text another current memory already holds,
//!   is a `Conflict`, and nothing changes;
//! * a correction that changes nothing (same text, same metadata) stores
//!   nothing and answers the memory as it is (`NONE`).

use super::types::CorrectResult;
use super::{MemoryService, screen, validate};
use crate::auth::Principal;
use crate::error::Error;
use crate::model::{Event, MemoryId, validate_metadata};
use crate::params::{CorrectParams, MemoryRef};
use crate::store::{AuditRecord, NewMemory, SupersedeOutcome};

/// Who made a correction, in history: the caller, as for a remembered text.
const CORRECT_ACTOR: &str = "user";

impl MemoryService {
    pub(super) async fn correct_inner(
        &self,
        caller: &Principal,
        target: MemoryRef,
        req: CorrectParams,
        audit: Option<AuditRecord>,
    ) -> Result<CorrectResult, Error> {
        caller.may_write()?;
        let (user, id) = self.memory_ref(caller, &target)?;
        let Some(raw) = req.text else {
            return Err(Error::invalid(
                "text",
                "give the corrected text: {\"text\": \"...\"} (and `metadata` to replace it)",
            ));
        };
        let text = validate::text("text", &raw, self.settings.max_text_bytes)?;
        let given = req.metadata.is_some();
        let metadata = validate_metadata(req.metadata)?;
        let (text, metadata, redacted) = screen::correction(self.settings.secrets, text, metadata)?;

        let mut old = self.stored_memory(&user, id).await?;
        let history = self.store.history(&user, id).await?;
        if let Some(closed) = history.last().filter(|h| h.event == Event::Supersede) {
            return Err(no_longer_current(id, closed.created_at));
        }
        let stored_metadata = old.metadata.clone();
        self.open_memory(&mut old);
        if text == old.memory && (!given || metadata == old.metadata) {
            return Ok(CorrectResult {
                memory: old,
                event: Event::None,
                replaces: None,
                redacted,
            });
        }

        let embedding = self
            .embedder
            .embed_documents(std::slice::from_ref(&text))
            .await?
            .pop()
            .ok_or_else(|| {
                crate::embed::EmbedError::Failed("the embedder returned no vector".into())
            })?;
        let new = NewMemory {
            id: MemoryId::new(),
            scope: old.scope.clone(),
            content: text,
            embedding,
            metadata: if given {
                self.seal_metadata(metadata, &user)
            } else {
                stored_metadata
            },
            categories: old.categories.clone(),
            actor: CORRECT_ACTOR.to_owned(),
            expires_at: old.expires_at,
        };
        let mut batch = self.store.begin(&user).await?;
        let mut memory = match batch.supersede(id, new).await? {
            SupersedeOutcome::Superseded(memory) => memory,
            SupersedeOutcome::Duplicate(other) => {
                return Err(Error::Conflict(format!(
                    "memory {} of user \"{user}\" already says exactly this; forget {id} \
                     instead of correcting it into a copy",
                    other.id
                )));
            }
            SupersedeOutcome::NotFound => {
                return Err(Error::Conflict(format!(
                    "memory {id} changed while it was being corrected (superseded or \
                     forgotten meanwhile); read it again and retry"
                )));
            }
        };
        if let Some(record) = &audit {
            let mut record = record.clone();
            crate::audit::with_memories(&mut record, vec![id, memory.id]);
            batch.audit(&record).await?;
        }
        batch.commit().await?;
        self.open_memory(&mut memory);
        Ok(CorrectResult {
            memory,
            event: Event::Supersede,
            replaces: Some(id),
            redacted,
        })
    }
}

/// A correction of a memory a newer one already replaced (or that was
/// closed): the newer one is what to correct.
fn no_longer_current(id: MemoryId, since: chrono::DateTime<chrono::Utc>) -> Error {
    Error::Conflict(format!(
        "memory {id} is no longer current: it was superseded at {}; correct the current \
         version instead (GET /api/v1/memory lists the current memories; its history says \
         what replaced it)",
        since.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
    ))
}
