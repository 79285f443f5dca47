//! The audit trail: who did what to whose memories, when, through which
//! door, and how it ended. One row per operation, reads included, in the
//! store's `audit_log` ([`crate::store::AuditLog`]).
//!
//! * A write's row is appended in the write's own transaction: it exists
//!   exactly when the write does. A read's row, and a failed operation's,
//!   is appended after the answer by the [`sink`], off the request path; a
//!   row that cannot be written is counted ([`Auditor::dropped`]) and
//!   logged, and never fails the request.
//! * Rows hold no memory text, and query text only with
//!   `ENGRAM_AUDIT_QUERIES=true`. Users are named by a keyed pseudonym
//!   ([`pseudonym`]): erasing a user leaves their trail, unlinkable without
//!   the key; the operator, who holds it, can still find their rows.
//! * Tamper evidence: [`chain`] seals committed rows into a hash chain
//!   (in `serve`, every few seconds; by hand, `engram audit seal`) and
//!   verifies it (`engram audit verify`), without any lock on the write path.
//! * Where a call came from ([`Origin`]) is set by its door around the
//!   service call ([`from`]); the service reads it when it records.

pub mod chain;
pub mod pseudonym;
pub mod sink;

use std::future::Future;
use std::sync::Arc;

use chrono::Utc;

use crate::auth::Principal;
use crate::error::Error;
use crate::model::{MemoryId, UserId};
use crate::store::{AUDIT_MAX_IDS, AuditRecord};
pub use pseudonym::Pseudonyms;
pub use sink::Sink;

/// The door a call came through and the client's address, if known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    /// `stdio`, `mcp`, `sse`, `rest` or `cli`.
    pub transport: &'static str,
    pub client_addr: Option<String>,
}

tokio::task_local! {
    static ORIGIN: Origin;
}

/// Runs `call` (a service call) as coming from `origin`.
pub async fn from<F: Future>(origin: Origin, call: F) -> F::Output {
    ORIGIN.scope(origin, call).await
}

/// The door the call being served came through (`stdio`, `mcp`, `sse`,
/// `rest`, `cli`, `serve`); `unknown` outside any door.
pub fn transport() -> &'static str {
    ORIGIN.try_with(|o| o.transport).unwrap_or("unknown")
}

/// The origin of the call being served; `unknown` outside any door.
fn current_origin() -> Origin {
    ORIGIN.try_with(Clone::clone).unwrap_or(Origin {
        transport: "unknown",
        client_addr: None,
    })
}

/// Records operations: builds rows, names users by pseudonym, hands
/// reads' rows to the sink.
pub struct Auditor {
    pseudonyms: Pseudonyms,
    /// Keep query text in rows (`ENGRAM_AUDIT_QUERIES`).
    queries: bool,
    sink: Sink,
}

impl Auditor {
    pub fn new(pseudonyms: Pseudonyms, queries: bool, sink: Sink) -> Self {
        Self {
            pseudonyms,
            queries,
            sink,
        }
    }

    /// The pseudonym rows name `user` by.
    pub fn user_ref(&self, user: &str) -> String {
        self.pseudonyms.of(user)
    }

    /// A row for `operation` by `caller` acting for `user`, from the
    /// current call's origin; outcome `ok` and no memories yet.
    pub fn record(
        &self,
        caller: &Principal,
        operation: &'static str,
        user: Option<&UserId>,
        query: Option<&str>,
    ) -> AuditRecord {
        let origin = current_origin();
        let (principal, key_id) = match caller {
            Principal::Operator => ("operator", None),
            Principal::Admin { key_id, .. } => ("admin", Some(*key_id)),
            Principal::User { key_id, .. } => ("user", Some(*key_id)),
        };
        AuditRecord {
            at: Utc::now(),
            principal: principal.to_owned(),
            key_id,
            user_ref: user.map(|u| self.pseudonyms.of(u)),
            transport: origin.transport.to_owned(),
            client_addr: origin.client_addr,
            operation: operation.to_owned(),
            memory_ids: Vec::new(),
            memory_count: 0,
            outcome: "ok".to_owned(),
            query: query.filter(|_| self.queries).map(str::to_owned),
        }
    }

    /// Appends `record` after the answer, with `result`'s outcome and the
    /// memories it touched; never blocks or fails the caller.
    pub fn finish<T>(
        &self,
        mut record: AuditRecord,
        result: &Result<T, Error>,
        touched: impl FnOnce(&T) -> Vec<MemoryId>,
    ) {
        match result {
            Ok(answer) => with_memories(&mut record, touched(answer)),
            Err(e) => record.outcome = e.code().to_owned(),
        }
        self.sink.push(record);
    }

    /// Rows the sink could not write (full queue, or the store refused).
    pub fn dropped(&self) -> u64 {
        self.sink.dropped()
    }

    /// Waits until every row handed over so far is written (tests, shutdown).
    pub async fn flush(&self) {
        self.sink.flush().await;
    }
}

/// Sets the memories `record` touched: their ids up to [`AUDIT_MAX_IDS`],
/// and how many.
pub fn with_memories(record: &mut AuditRecord, mut ids: Vec<MemoryId>) {
    record.memory_count = ids.len() as u64;
    ids.truncate(AUDIT_MAX_IDS);
    record.memory_ids = ids;
}

/// An auditor shared by the service and the sealer.
pub type SharedAuditor = Arc<Auditor>;
