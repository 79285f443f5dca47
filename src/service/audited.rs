//! The service's doors as callers see them: each operation runs its flow
//! and leaves its row in the audit trail ([`crate::audit`]). A write's row
//! is written inside the write's transaction (`remember`, `forget`); a
//! read's after the answer; a failed operation's, with its error code,
//! after the failure. With audit off these are the flows alone.

use super::MemoryService;
use super::types::{ForgetResult, HistoryResult, MemoryDetail, RecallResult, RememberResult};
use crate::auth::Principal;
use crate::context::UserContext;
use crate::error::Error;
use crate::model::MemoryId;
use crate::params::{ForgetParams, MemoryRef, RecallParams, RememberParams, UserContextParams};
use crate::store::{AuditRecord, UserExport, UserStats};

impl MemoryService {
    /// A row for `operation` by `caller` naming `user_id` (resolved as the
    /// flow resolves it; a user the flow will refuse is left out).
    fn audit_record(
        &self,
        caller: &Principal,
        operation: &'static str,
        user_id: Option<&str>,
        query: Option<&str>,
    ) -> Option<AuditRecord> {
        let auditor = self.audit.as_ref()?;
        let user = self.acting_user(caller, user_id).ok();
        Some(auditor.record(caller, operation, user.as_ref(), query))
    }

    /// Hands `record` to the sink with `result`'s outcome: every read's
    /// row, and a write's when the write failed (its own row went with
    /// its transaction).
    fn audit_after<T>(
        &self,
        record: Option<AuditRecord>,
        result: &Result<T, Error>,
        touched: impl FnOnce(&T) -> Vec<MemoryId>,
    ) {
        if let (Some(auditor), Some(record)) = (&self.audit, record) {
            auditor.finish(record, result, touched);
        }
    }

    pub async fn remember(
        &self,
        caller: &Principal,
        req: RememberParams,
    ) -> Result<RememberResult, Error> {
        let record = self.audit_record(caller, "remember", req.user_id.as_deref(), None);
        let result = self.remember_inner(caller, req, record.clone()).await;
        if result.is_err() {
            self.audit_after(record, &result, |_| Vec::new());
        }
        result
    }

    pub async fn recall(
        &self,
        caller: &Principal,
        req: RecallParams,
    ) -> Result<RecallResult, Error> {
        let record = self.audit_record(
            caller,
            "recall",
            req.user_id.as_deref(),
            Some(req.query.as_str()),
        );
        let result = self.recall_inner(caller, req).await;
        self.audit_after(record, &result, |r| {
            r.results.iter().map(|m| m.memory.id).collect()
        });
        result
    }

    pub async fn user_context(
        &self,
        caller: &Principal,
        req: UserContextParams,
    ) -> Result<UserContext, Error> {
        let record = self.audit_record(
            caller,
            "user_context",
            req.user_id.as_deref(),
            req.query.as_deref(),
        );
        let result = self.user_context_inner(caller, req).await;
        self.audit_after(record, &result, |c| {
            c.memories.iter().map(|m| m.id).collect()
        });
        result
    }

    /// Deletes one memory (`memory_id`), every memory of a user named
    /// explicitly (`user_id` with `all: true`), or those of theirs that
    /// `agent_id`, `run_id`, `filters` and `before` select (with `all:
    /// true`; the user's API keys stay), then the user's cache entries.
    pub async fn forget(
        &self,
        caller: &Principal,
        req: ForgetParams,
    ) -> Result<ForgetResult, Error> {
        let operation = if req.memory_id.is_some() {
            "forget"
        } else if !req.narrowing().is_empty() {
            "forget_matching"
        } else {
            "forget_user"
        };
        let record = self.audit_record(caller, operation, req.user_id.as_deref(), None);
        let result = self.forget_inner(caller, req, record.clone()).await;
        if result.is_err() {
            self.audit_after(record, &result, |_| Vec::new());
        }
        result
    }

    /// One of the user's memories, current or superseded, and whether it is
    /// still current. An unknown id, or another user's, is [`Error::NotFound`].
    pub async fn get(&self, caller: &Principal, req: MemoryRef) -> Result<MemoryDetail, Error> {
        let record = self.audit_record(caller, "get", req.user_id.as_deref(), None);
        let result = self.get_inner(caller, req).await;
        self.audit_after(record, &result, |d| vec![d.memory.id]);
        result
    }

    /// The history of one of the user's memories, oldest first. An unknown
    /// id, or another user's, is [`Error::NotFound`].
    pub async fn history(
        &self,
        caller: &Principal,
        req: MemoryRef,
    ) -> Result<HistoryResult, Error> {
        let record = self.audit_record(caller, "history", req.user_id.as_deref(), None);
        let result = self.history_inner(caller, req).await;
        self.audit_after(record, &result, |h| vec![h.memory_id]);
        result
    }

    /// What the user has stored: counts, categories, dates and size.
    pub async fn stats(
        &self,
        caller: &Principal,
        user_id: Option<&str>,
    ) -> Result<UserStats, Error> {
        let record = self.audit_record(caller, "stats", user_id, None);
        let result = self.stats_inner(caller, user_id).await;
        self.audit_after(record, &result, |_| Vec::new());
        result
    }

    /// Everything stored for the user, in one snapshot.
    pub async fn export(
        &self,
        caller: &Principal,
        user_id: Option<&str>,
    ) -> Result<UserExport, Error> {
        let record = self.audit_record(caller, "export", user_id, None);
        let result = self.export_inner(caller, user_id).await;
        self.audit_after(record, &result, |e| {
            e.memories.iter().map(|m| m.memory.id).collect()
        });
        result
    }
}
