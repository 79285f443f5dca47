//! The service's doors as callers see them: each operation runs its flow
//! and leaves its row in the audit trail ([`crate::audit`]). A write's row
//! is written inside the write's transaction (`remember`, `correct`,
//! `forget`); a
//! read's after the answer; a failed operation's, with its error code,
//! after the failure. With audit off these are the flows alone.

use super::MemoryService;
use super::types::{
    CorrectResult, ForgetResult, HistoryResult, MemoryDetail, MemoryPage, RecallResult,
    RememberResult,
};
use crate::auth::Principal;
use crate::context::UserContext;
use crate::error::Error;
use crate::model::{Event, MemoryId, UserId};
use crate::params::{
    CorrectParams, ForgetParams, ListParams, MemoryRef, RecallParams, RememberParams,
    UserContextParams,
};
use crate::store::{AuditQuery, AuditRecord, AuditRow, UserExport, UserStats};
use crate::telemetry::spans::{MemoryOp, Record, Touched};
use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::time::Instant;

impl MemoryService {
    /// A row for `operation` by `caller` naming `user_id` (resolved as the
    /// flow resolves it; a user the flow will refuse is left out).
    pub(super) fn audit_record(
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
    pub(super) fn audit_after<T>(
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
        let started = Instant::now();
        let record = self.audit_record(caller, "remember", req.user_id.as_deref(), None);
        let result = MemoryOp::start("upsert_memory", "remember")
            .run(self.remember_inner(caller, req, record.clone()), |r| {
                Touched::records(r.results.iter().map(|e| Record::new(e.id, &e.memory)))
            })
            .await;
        if result.is_err() {
            self.audit_after(record, &result, |_| Vec::new());
        }
        if let Ok(done) = &result {
            count_events(done);
        }
        metered("remember", started, &result);
        result
    }

    pub async fn recall(
        &self,
        caller: &Principal,
        req: RecallParams,
    ) -> Result<RecallResult, Error> {
        let started = Instant::now();
        let record = self.audit_record(
            caller,
            "recall",
            req.user_id.as_deref(),
            Some(req.query.as_str()),
        );
        let result = MemoryOp::start("search_memory", "recall")
            .query(Some(&req.query))
            .run(self.recall_inner(caller, req), |r| {
                Touched::records(
                    r.results
                        .iter()
                        .map(|m| Record::new(m.memory.id, &m.memory.memory).scored(m.score)),
                )
            })
            .await;
        self.audit_after(record, &result, |r| {
            r.results.iter().map(|m| m.memory.id).collect()
        });
        metered("recall", started, &result);
        result
    }

    pub async fn user_context(
        &self,
        caller: &Principal,
        req: UserContextParams,
    ) -> Result<UserContext, Error> {
        let started = Instant::now();
        let record = self.audit_record(
            caller,
            "user_context",
            req.user_id.as_deref(),
            req.query.as_deref(),
        );
        let result = MemoryOp::start("search_memory", "user_context")
            .query(req.query.as_deref())
            .run(self.user_context_inner(caller, req), |c| {
                Touched::records(c.memories.iter().map(|m| Record::new(m.id, &m.memory)))
            })
            .await;
        self.audit_after(record, &result, |c| {
            c.memories.iter().map(|m| m.id).collect()
        });
        metered("user_context", started, &result);
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
        let started = Instant::now();
        let operation = if req.memory_id.is_some() {
            "forget"
        } else if !req.narrowing().is_empty() {
            "forget_matching"
        } else {
            "forget_user"
        };
        let record = self.audit_record(caller, operation, req.user_id.as_deref(), None);
        let result = MemoryOp::start("delete_memory", operation)
            .run(self.forget_inner(caller, req, record.clone()), |f| {
                Touched::counted(f.deleted, f.memory_id.map(Record::id))
            })
            .await;
        if result.is_err() {
            self.audit_after(record, &result, |_| Vec::new());
        }
        metered(operation, started, &result);
        result
    }

    /// Replaces one of the user's memories by a corrected version (a new
    /// memory that supersedes it; the old one stays, with its history). An
    /// unknown id, or another user's, is [`Error::NotFound`]; one that is
    /// no longer current is [`Error::Conflict`].
    pub async fn correct(
        &self,
        caller: &Principal,
        target: MemoryRef,
        req: CorrectParams,
    ) -> Result<CorrectResult, Error> {
        let started = Instant::now();
        let record = self.audit_record(caller, "correct", target.user_id.as_deref(), None);
        let result = MemoryOp::start("upsert_memory", "correct")
            .run(
                self.correct_inner(caller, target, req, record.clone()),
                |c| Touched::records([Record::new(c.memory.id, &c.memory.memory)]),
            )
            .await;
        match &result {
            // Its row went with its transaction.
            Ok(done) if done.event == Event::Supersede => {}
            // A correction that changed nothing wrote nothing: its row now.
            _ => self.audit_after(record, &result, |c| vec![c.memory.id]),
        }
        metered("correct", started, &result);
        result
    }

    /// A page of the user's current memories, oldest first; `next_cursor`
    /// goes on from it.
    pub async fn list(&self, caller: &Principal, req: ListParams) -> Result<MemoryPage, Error> {
        let started = Instant::now();
        let record = self.audit_record(caller, "list", req.user_id.as_deref(), None);
        let result = MemoryOp::start("search_memory", "list")
            .run(self.list_inner(caller, req), |p| {
                Touched::records(p.results.iter().map(|m| Record::new(m.id, &m.memory)))
            })
            .await;
        self.audit_after(record, &result, |p| {
            p.results.iter().map(|m| m.id).collect()
        });
        metered("list", started, &result);
        result
    }

    /// One of the user's memories, current or superseded, and whether it is
    /// still current. An unknown id, or another user's, is [`Error::NotFound`].
    pub async fn get(&self, caller: &Principal, req: MemoryRef) -> Result<MemoryDetail, Error> {
        let started = Instant::now();
        let record = self.audit_record(caller, "get", req.user_id.as_deref(), None);
        let result = MemoryOp::start("search_memory", "get")
            .run(self.get_inner(caller, req), |d| {
                Touched::records([Record::new(d.memory.id, &d.memory.memory)])
            })
            .await;
        self.audit_after(record, &result, |d| vec![d.memory.id]);
        metered("get", started, &result);
        result
    }

    /// The history of one of the user's memories, oldest first. An unknown
    /// id, or another user's, is [`Error::NotFound`].
    pub async fn history(
        &self,
        caller: &Principal,
        req: MemoryRef,
    ) -> Result<HistoryResult, Error> {
        let started = Instant::now();
        let record = self.audit_record(caller, "history", req.user_id.as_deref(), None);
        let result = MemoryOp::start("search_memory", "history")
            .run(self.history_inner(caller, req), |h| {
                Touched::records([Record::id(h.memory_id)])
            })
            .await;
        self.audit_after(record, &result, |h| vec![h.memory_id]);
        metered("history", started, &result);
        result
    }

    /// What the user has stored: counts, categories, dates and size.
    pub async fn stats(
        &self,
        caller: &Principal,
        user_id: Option<&str>,
    ) -> Result<UserStats, Error> {
        let started = Instant::now();
        let record = self.audit_record(caller, "stats", user_id, None);
        let result = MemoryOp::start("search_memory", "stats")
            .run(self.stats_inner(caller, user_id), |_| Touched::default())
            .await;
        self.audit_after(record, &result, |_| Vec::new());
        metered("stats", started, &result);
        result
    }

    /// Everything stored for the user, in one snapshot.
    pub async fn export(
        &self,
        caller: &Principal,
        user_id: Option<&str>,
    ) -> Result<UserExport, Error> {
        let started = Instant::now();
        let record = self.audit_record(caller, "export", user_id, None);
        let result = MemoryOp::start("search_memory", "export")
            .run(self.export_inner(caller, user_id), |e| {
                Touched::records(
                    e.memories
                        .iter()
                        .map(|m| Record::new(m.memory.id, &m.memory.memory)),
                )
            })
            .await;
        self.audit_after(record, &result, |e| {
            e.memories.iter().map(|m| m.memory.id).collect()
        });
        metered("export", started, &result);
        result
    }
}

/// Counts a finished call of `operation` in the metrics, by the door it
/// came through (the audit origin) and its error code if it failed.
fn metered<T>(operation: &'static str, started: Instant, result: &Result<T, Error>) {
    crate::metrics::metrics().request(
        crate::audit::transport(),
        operation,
        result.as_ref().err().map(Error::code),
        started.elapsed(),
    );
}

/// Counts what a remember did to memories, and whether it was deferred.
fn count_events(done: &RememberResult) {
    let events = &crate::metrics::metrics().remember_events;
    for e in &done.results {
        let event = match e.event {
            Event::Add => "add",
            Event::Update => "update",
            Event::Supersede => "supersede",
            Event::None => "none",
        };
        events.with([std::borrow::Cow::Borrowed(event)]).inc();
    }
    if done.deferred.is_some() {
        events.with([std::borrow::Cow::Borrowed("deferred")]).inc();
    }
}

/// `GET /api/v1/audit`: which rows, newest first.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AuditParams {
    /// Only rows about this user (found through their pseudonym).
    pub user_id: Option<String>,
    /// Only rows at or after this time (RFC 3339).
    pub since: Option<DateTime<Utc>>,
    /// Only this operation (`remember`, `recall`, `user_context`, `forget`,
    /// `forget_user`, `correct`, `get`, `history`, `list`, `stats`, `export`,
    /// `reextract`, `audit`).
    pub op: Option<String>,
    /// Only rows older than this `seq`: the previous page's `next_before`.
    #[serde(default, deserialize_with = "crate::params::lenient::integer")]
    pub before: Option<i64>,
    /// How many rows, 1..=1000 (default 100).
    #[serde(default, deserialize_with = "crate::params::lenient::integer")]
    pub limit: Option<i64>,
}

/// A page of the audit trail, newest first.
#[derive(Debug, Serialize, JsonSchema)]
pub struct AuditPage {
    pub rows: Vec<AuditRow>,
    /// Pass as `before` for the next page; absent on the last.
    pub next_before: Option<i64>,
}

/// Most audit rows one page holds.
const MAX_AUDIT_PAGE: i64 = 1000;

impl MemoryService {
    /// A page of the audit trail, for the operator or an admin key (a
    /// user's key may not read it: the trail covers every user). Reading
    /// it is audited too (`audit`).
    pub async fn audit_trail(
        &self,
        caller: &Principal,
        params: AuditParams,
    ) -> Result<AuditPage, Error> {
        let started = Instant::now();
        let record = self
            .audit
            .as_ref()
            .map(|a| a.record(caller, "audit", None, None));
        let result = self.audit_trail_inner(caller, params).await;
        self.audit_after(record, &result, |_| Vec::new());
        metered("audit", started, &result);
        result
    }

    async fn audit_trail_inner(
        &self,
        caller: &Principal,
        params: AuditParams,
    ) -> Result<AuditPage, Error> {
        if matches!(caller, Principal::User { .. }) {
            return Err(Error::Forbidden(
                "the audit trail covers every user: read it with an admin key".into(),
            ));
        }
        let Some(auditor) = &self.audit else {
            return Err(Error::NotFound(
                "the audit trail is off (ENGRAM_AUDIT=false)".into(),
            ));
        };
        let limit = match params.limit {
            None => 100,
            Some(n @ 1..=MAX_AUDIT_PAGE) => n,
            Some(n) => {
                return Err(Error::invalid(
                    "limit",
                    format!("{n} is out of range; ask for 1..={MAX_AUDIT_PAGE} rows"),
                ));
            }
        };
        let user_ref = params
            .user_id
            .as_deref()
            .map(|u| UserId::parse(u).map(|u| auditor.user_ref(&u)))
            .transpose()?;
        let query = AuditQuery {
            user_ref,
            since: params.since,
            operation: params.op,
            before_seq: params.before,
            limit: limit as usize,
        };
        let rows = self.store.audit_rows(&query).await?;
        let next_before = (rows.len() == limit as usize)
            .then(|| rows.last().map(|r| r.seq))
            .flatten();
        Ok(AuditPage { rows, next_before })
    }
}
