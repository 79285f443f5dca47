//! Encryption at rest in the flows ([`crate::crypto`]): sensitive metadata
//! is sealed before a remember reaches the store, a deferred remember's
//! input when it is queued; both open at the last step before a caller
//! sees them, and where re-extraction reads its queue.
//!
//! Invariants:
//! * what reaches the store or the cache carries sealed values only: recalls
//!   and contexts are cached as the store returned them, and opened after
//!   the cache;
//! * a filter on a sensitive key is refused (ciphertexts are randomised,
//!   so no stored value could match it);
//! * without a key nothing is sealed, and envelopes already stored are
//!   returned as they are.

use std::sync::Arc;

use serde_json::Value;

use super::MemoryService;
use crate::crypto::{Place, Sealer, is_envelope};
use crate::error::Error;
use crate::model::{Memory, Metadata, MetadataFilter};
use crate::store::UserExport;

impl MemoryService {
    /// Seals sensitive metadata and queued inputs with `sealer`.
    pub fn with_sealer(mut self, sealer: Arc<Sealer>) -> Self {
        self.sealer = Some(sealer);
        self
    }

    /// `metadata` with its sensitive values sealed for `user_id`.
    pub(super) fn seal_metadata(&self, metadata: Metadata, user_id: &str) -> Metadata {
        match &self.sealer {
            Some(sealer) => sealer.seal_metadata(&metadata, user_id),
            None => metadata,
        }
    }

    /// A deferred remember's input, sealed whole for `user_id`.
    pub(super) fn seal_input(&self, input: Value, user_id: &str) -> Value {
        match &self.sealer {
            Some(sealer) => sealer.seal(&input, user_id, Place::PendingInput),
            None => input,
        }
    }

    /// A queued input as it was given; a message naming the missing key
    /// when it does not open.
    pub(super) fn open_input(&self, input: &Value, user_id: &str) -> Result<Value, String> {
        if !is_envelope(input) {
            return Ok(input.clone());
        }
        let Some(sealer) = &self.sealer else {
            return Err(
                "the queued input is encrypted and no ENGRAM_ENCRYPTION_KEY is configured".into(),
            );
        };
        sealer
            .open(input, user_id, Place::PendingInput)
            .map_err(|e| format!("the queued input does not decrypt: {e}"))
    }

    /// Refuses a filter (argument `field`) that names a sensitive key.
    pub(super) fn refuse_sealed_filter(
        &self,
        field: &'static str,
        filter: &MetadataFilter,
    ) -> Result<(), Error> {
        let Some(sealer) = &self.sealer else {
            return Ok(());
        };
        match filter
            .pairs()
            .iter()
            .find(|(key, _)| sealer.is_sensitive(key))
        {
            Some((key, _)) => Err(Error::invalid(
                field,
                format!(
                    "metadata key \"{key}\" is encrypted at rest; it cannot be filtered on \
                     (each stored value is a randomised ciphertext, so none could match)"
                ),
            )),
            None => Ok(()),
        }
    }

    /// Opens `memory`'s sealed metadata in place.
    pub(super) fn open_memory(&self, memory: &mut Memory) {
        if let Some(sealer) = &self.sealer {
            let user_id = memory.scope.user_id().to_string();
            sealer.open_metadata(&mut memory.metadata, &user_id);
        }
    }

    /// Opens every sealed value of an export: memories' metadata, and the
    /// pending entries' inputs and metadata. One that does not open stays
    /// sealed (as in every read).
    pub(super) fn open_export(&self, export: &mut UserExport) {
        let Some(sealer) = &self.sealer else {
            return;
        };
        for memory in &mut export.memories {
            sealer.open_metadata(&mut memory.memory.metadata, &export.user_id);
        }
        for pending in &mut export.pending {
            sealer.open_metadata(&mut pending.metadata, &export.user_id);
            if let Ok(input) = self.open_input(&pending.input, &export.user_id) {
                pending.input = input;
            }
        }
    }
}
