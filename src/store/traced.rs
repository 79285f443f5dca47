//! Traces of every store call: [`Traced`] wraps a store so that each call
//! runs in a span naming the database system and the store method
//! (`crate::telemetry::spans::store`), on SQLite and PostgreSQL alike. No
//! SQL and no argument is recorded: the method says what was asked.
//!
//! Installed only when traces are exported; calls made outside any engram
//! span (the audit writer, the sealer) get no span.

use std::future::Future;
use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, NaiveDate, Utc};

use super::{
    ApiKey, AuditLog, AuditQuery, AuditRecord, AuditRow, Candidates, HistoryEntry, Hit,
    ImportOutcome, ImportedMemory, InsertOutcome, Keys, ListingKey, Nearest, NewMemory, NewPending,
    Pending, PendingQueue, Pick, PurgeCounts, PurgePlan, PurgeReport, Reads, Reports, Retention,
    RoundPart, Scored, SealReport, Search, SearchScope, Selection, Store, StoreError, StoreTotals,
    SupersedeOutcome, TokenUsage, UserExport, UserStats, Versions, WriteBatch, Writes,
};
use crate::embed::EmbedderIdentity;
use crate::model::{Memory, MemoryId, Scope};
use crate::telemetry::spans;

/// `inner`, with every call in a span.
pub struct Traced {
    inner: Arc<dyn Store>,
    /// `db.system.name`: `postgresql` or `sqlite`.
    system: &'static str,
}

impl Traced {
    pub fn new(inner: Arc<dyn Store>, system: &'static str) -> Self {
        Self { inner, system }
    }

    async fn call<T>(
        &self,
        operation: &'static str,
        call: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        traced(self.system, operation, call).await
    }
}

/// `call` in the span of `operation`; a failure marks it.
async fn traced<T>(
    system: &'static str,
    operation: &'static str,
    call: impl Future<Output = Result<T, StoreError>>,
) -> Result<T, StoreError> {
    let span = spans::store(system, operation);
    if span.is_disabled() {
        return call.await;
    }
    // A leaf: created (its start) and dropped (its end) around the call but
    // never entered, so the call's polls pay nothing for it.
    let result = call.await;
    if let Err(e) = &result {
        spans::fail(&span, error_type(e), || e.to_string());
    }
    result
}

/// `error.type` of a store failure.
fn error_type(e: &StoreError) -> &'static str {
    match e {
        StoreError::Conflict(_) => "conflict",
        StoreError::TimedOut { .. } => "timeout",
        StoreError::Database { .. } | StoreError::Open { .. } => "database",
        StoreError::Embed(_) => "model_failed",
        _ => "internal",
    }
}

impl Store for Traced {
    fn embedder(&self) -> &EmbedderIdentity {
        self.inner.embedder()
    }

    fn pool_status(&self) -> Option<(u32, u32, u32)> {
        self.inner.pool_status()
    }
}

/// A batch with one span from `begin` to its commit (or rollback, when it
/// is dropped uncommitted) that counts its writes: a remember writes several
/// rows per memory, and a span for each cost more than the writes' own
/// time was worth (docs/benchmarks.md, telemetry overhead).
struct TracedBatch<'a> {
    inner: Box<dyn WriteBatch + 'a>,
    span: tracing::Span,
    writes: u64,
}

impl TracedBatch<'_> {
    /// Counts one write of the batch, marking the span when it failed.
    fn count<T>(&mut self, result: Result<T, StoreError>) -> Result<T, StoreError> {
        self.writes += 1;
        if let Err(e) = &result {
            spans::fail(&self.span, error_type(e), || e.to_string());
        }
        result
    }
}

#[async_trait]
impl WriteBatch for TracedBatch<'_> {
    async fn insert(
        &mut self,
        new: NewMemory,
        dedup_threshold: f32,
    ) -> Result<InsertOutcome, StoreError> {
        let result = self.inner.insert(new, dedup_threshold).await;
        self.count(result)
    }

    async fn insert_searched(
        &mut self,
        new: NewMemory,
        dedup_threshold: f32,
        searched_at: u64,
    ) -> Result<InsertOutcome, StoreError> {
        let result = self
            .inner
            .insert_searched(new, dedup_threshold, searched_at)
            .await;
        self.count(result)
    }

    async fn insert_all(
        &mut self,
        news: Vec<(NewMemory, Option<u64>)>,
        dedup_threshold: f32,
    ) -> Result<Vec<InsertOutcome>, StoreError> {
        // Counted as one write each.
        self.writes += news.len().saturating_sub(1) as u64;
        let result = self.inner.insert_all(news, dedup_threshold).await;
        self.count(result)
    }

    async fn update(
        &mut self,
        id: MemoryId,
        content: &str,
        embedding: &[f32],
        actor: &str,
    ) -> Result<Option<Memory>, StoreError> {
        let result = self.inner.update(id, content, embedding, actor).await;
        self.count(result)
    }

    async fn supersede(
        &mut self,
        old: MemoryId,
        new: NewMemory,
    ) -> Result<SupersedeOutcome, StoreError> {
        let result = self.inner.supersede(old, new).await;
        self.count(result)
    }

    async fn close(&mut self, id: MemoryId, actor: &str) -> Result<bool, StoreError> {
        let result = self.inner.close(id, actor).await;
        self.count(result)
    }

    async fn add_pending(&mut self, pending: NewPending) -> Result<(), StoreError> {
        let result = self.inner.add_pending(pending).await;
        self.count(result)
    }

    async fn import(&mut self, imported: ImportedMemory) -> Result<ImportOutcome, StoreError> {
        let result = self.inner.import(imported).await;
        self.count(result)
    }

    async fn audit(&mut self, record: &AuditRecord) -> Result<(), StoreError> {
        let result = self.inner.audit(record).await;
        self.count(result)
    }

    async fn commit(self: Box<Self>) -> Result<(), StoreError> {
        let Self {
            inner,
            span,
            writes,
        } = *self;
        span.record(
            "db.operation.batch.size",
            i64::try_from(writes).unwrap_or(i64::MAX),
        );
        let result = inner.commit().await;
        if let Err(e) = &result {
            spans::fail(&span, error_type(e), || e.to_string());
        }
        result
    }
}

#[async_trait]
impl Writes for Traced {
    async fn begin<'a>(&'a self, user_id: &str) -> Result<Box<dyn WriteBatch + 'a>, StoreError> {
        let span = spans::write_batch(self.system);
        let inner = match self.inner.begin(user_id).await {
            Ok(inner) => inner,
            Err(e) => {
                spans::fail(&span, error_type(&e), || e.to_string());
                return Err(e);
            }
        };
        Ok(Box::new(TracedBatch {
            inner,
            span,
            writes: 0,
        }))
    }

    async fn add_round(
        &self,
        parts: Vec<RoundPart>,
        dedup_threshold: f32,
    ) -> Result<Option<DateTime<Utc>>, StoreError> {
        self.call("add_round", self.inner.add_round(parts, dedup_threshold))
            .await
    }

    async fn delete(
        &self,
        user_id: &str,
        id: MemoryId,
        audit: Option<&AuditRecord>,
    ) -> Result<bool, StoreError> {
        self.call("delete", self.inner.delete(user_id, id, audit))
            .await
    }

    async fn delete_user(
        &self,
        user_id: &str,
        audit: Option<&AuditRecord>,
    ) -> Result<u64, StoreError> {
        self.call("delete_user", self.inner.delete_user(user_id, audit))
            .await
    }

    async fn delete_matching(
        &self,
        at: Selection<'_>,
        audit: Option<&AuditRecord>,
    ) -> Result<Vec<MemoryId>, StoreError> {
        self.call("delete_matching", self.inner.delete_matching(at, audit))
            .await
    }
}

#[async_trait]
impl Reads for Traced {
    async fn get_many(&self, user_id: &str, ids: &[MemoryId]) -> Result<Vec<Memory>, StoreError> {
        self.call("get_many", self.inner.get_many(user_id, ids))
            .await
    }

    async fn recent(&self, scope: &Scope, limit: usize) -> Result<(Vec<Memory>, u64), StoreError> {
        self.call("recent", self.inner.recent(scope, limit)).await
    }

    async fn history(&self, user_id: &str, id: MemoryId) -> Result<Vec<HistoryEntry>, StoreError> {
        self.call("history", self.inner.history(user_id, id)).await
    }

    async fn list(
        &self,
        user_id: &str,
        after: Option<ListingKey>,
        limit: usize,
    ) -> Result<Vec<Memory>, StoreError> {
        self.call("list", self.inner.list(user_id, after, limit))
            .await
    }
}

#[async_trait]
impl Search for Traced {
    async fn vector_search(
        &self,
        at: SearchScope<'_>,
        query: &[f32],
        limit: usize,
    ) -> Result<Vec<Hit>, StoreError> {
        self.call("vector_search", self.inner.vector_search(at, query, limit))
            .await
    }

    async fn nearest(
        &self,
        at: SearchScope<'_>,
        query: &[f32],
        limit: usize,
    ) -> Result<Nearest, StoreError> {
        self.call("nearest", self.inner.nearest(at, query, limit))
            .await
    }

    async fn similar(
        &self,
        at: SearchScope<'_>,
        query: &[f32],
        limit: usize,
        load_from: Option<f32>,
    ) -> Result<Nearest, StoreError> {
        self.call("similar", self.inner.similar(at, query, limit, load_from))
            .await
    }

    async fn similar_all(
        &self,
        at: SearchScope<'_>,
        queries: &[Vec<f32>],
        limit: usize,
        load_from: Option<f32>,
        seen: Option<u64>,
    ) -> Result<Vec<Nearest>, StoreError> {
        let call = self.inner.similar_all(at, queries, limit, load_from, seen);
        self.call("similar_all", call).await
    }

    async fn keyword_search(
        &self,
        at: SearchScope<'_>,
        query: &str,
        limit: usize,
    ) -> Result<Vec<Hit>, StoreError> {
        self.call(
            "keyword_search",
            self.inner.keyword_search(at, query, limit),
        )
        .await
    }

    async fn score(
        &self,
        user_id: &str,
        ids: &[MemoryId],
        vector: &[f32],
        query: &str,
    ) -> Result<Vec<Scored>, StoreError> {
        self.call("score", self.inner.score(user_id, ids, vector, query))
            .await
    }

    async fn version_now(&self, at: SearchScope<'_>) -> Result<Option<u64>, StoreError> {
        self.call("version_now", self.inner.version_now(at)).await
    }

    async fn candidates(
        &self,
        at: SearchScope<'_>,
        vector: &[f32],
        query: &str,
        depth: usize,
        pick: Pick<'_>,
        seen: Option<u64>,
    ) -> Result<Candidates, StoreError> {
        self.call(
            "candidates",
            self.inner.candidates(at, vector, query, depth, pick, seen),
        )
        .await
    }
}

#[async_trait]
impl PendingQueue for Traced {
    async fn add_pending(&self, pending: NewPending) -> Result<(), StoreError> {
        self.call("add_pending", self.inner.add_pending(pending))
            .await
    }

    async fn pending(&self, limit: usize) -> Result<(Vec<Pending>, u64), StoreError> {
        self.call("pending", self.inner.pending(limit)).await
    }

    async fn finish_pending(&self, user_id: &str, id: uuid::Uuid) -> Result<bool, StoreError> {
        self.call("finish_pending", self.inner.finish_pending(user_id, id))
            .await
    }

    async fn retry_pending(
        &self,
        user_id: &str,
        id: uuid::Uuid,
        error: &str,
    ) -> Result<(), StoreError> {
        self.call(
            "retry_pending",
            self.inner.retry_pending(user_id, id, error),
        )
        .await
    }
}

#[async_trait]
impl Keys for Traced {
    async fn add_key(&self, key: &ApiKey) -> Result<(), StoreError> {
        self.call("add_key", self.inner.add_key(key)).await
    }

    async fn keys(&self) -> Result<Vec<ApiKey>, StoreError> {
        self.call("keys", self.inner.keys()).await
    }

    async fn active_key(&self, hash: &str) -> Result<Option<ApiKey>, StoreError> {
        self.call("active_key", self.inner.active_key(hash)).await
    }

    async fn revoke_key(&self, id: uuid::Uuid) -> Result<bool, StoreError> {
        self.call("revoke_key", self.inner.revoke_key(id)).await
    }

    async fn rotate_key(
        &self,
        old: uuid::Uuid,
        successor: &ApiKey,
        old_expires_at: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        self.call(
            "rotate_key",
            self.inner.rotate_key(old, successor, old_expires_at),
        )
        .await
    }

    async fn delete_user_keys(&self, user_id: &str) -> Result<u64, StoreError> {
        self.call("delete_user_keys", self.inner.delete_user_keys(user_id))
            .await
    }
}

#[async_trait]
impl Reports for Traced {
    async fn stats(&self, user_id: &str) -> Result<UserStats, StoreError> {
        self.call("stats", self.inner.stats(user_id)).await
    }

    async fn export(&self, user_id: &str) -> Result<UserExport, StoreError> {
        self.call("export", self.inner.export(user_id)).await
    }

    async fn totals(&self) -> Result<StoreTotals, StoreError> {
        // The gauges' background read: no request's span to hang it under.
        self.inner.totals().await
    }

    async fn users(&self) -> Result<Vec<String>, StoreError> {
        self.call("users", self.inner.users()).await
    }
}

#[async_trait]
impl TokenUsage for Traced {
    async fn tokens_used(&self, user_id: &str, day: NaiveDate) -> Result<u64, StoreError> {
        self.call("tokens_used", self.inner.tokens_used(user_id, day))
            .await
    }

    async fn add_tokens(
        &self,
        user_id: &str,
        day: NaiveDate,
        tokens: u64,
    ) -> Result<u64, StoreError> {
        self.call("add_tokens", self.inner.add_tokens(user_id, day, tokens))
            .await
    }

    async fn prune_token_usage(&self, before: NaiveDate) -> Result<u64, StoreError> {
        self.call("prune_token_usage", self.inner.prune_token_usage(before))
            .await
    }
}

#[async_trait]
impl Versions for Traced {
    async fn version(&self, user_id: &str) -> Result<Option<u64>, StoreError> {
        self.call("version", self.inner.version(user_id)).await
    }
}

#[async_trait]
impl AuditLog for Traced {
    async fn append_audit(&self, records: &[AuditRecord]) -> Result<(), StoreError> {
        self.call("append_audit", self.inner.append_audit(records))
            .await
    }

    async fn audit_rows(&self, query: &AuditQuery) -> Result<Vec<AuditRow>, StoreError> {
        self.call("audit_rows", self.inner.audit_rows(query)).await
    }

    async fn seal_audit(&self, limit: usize) -> Result<SealReport, StoreError> {
        self.call("seal_audit", self.inner.seal_audit(limit)).await
    }

    async fn sealed_audit(&self, after: i64, limit: usize) -> Result<Vec<AuditRow>, StoreError> {
        self.call("sealed_audit", self.inner.sealed_audit(after, limit))
            .await
    }
}

#[async_trait]
impl Retention for Traced {
    async fn purgeable(&self, plan: &PurgePlan) -> Result<PurgeCounts, StoreError> {
        self.call("purgeable", self.inner.purgeable(plan)).await
    }

    async fn purge(
        &self,
        plan: &PurgePlan,
        audit: Option<&AuditRecord>,
    ) -> Result<PurgeReport, StoreError> {
        self.call("purge", self.inner.purge(plan, audit)).await
    }
}

#[async_trait]
impl super::SealedValues for Traced {
    async fn sealed_rows(
        &self,
        column: super::SealedColumn,
        after: uuid::Uuid,
        limit: usize,
    ) -> Result<Vec<super::SealedRow>, StoreError> {
        self.call("sealed_rows", self.inner.sealed_rows(column, after, limit))
            .await
    }

    async fn reseal(
        &self,
        column: super::SealedColumn,
        row: &super::SealedRow,
        new: &serde_json::Value,
    ) -> Result<bool, StoreError> {
        self.call("reseal", self.inner.reseal(column, row, new))
            .await
    }
}
