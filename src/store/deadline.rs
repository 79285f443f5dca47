//! A bound on every call to a store: [`Deadline`] wraps one so that a call
//! not answered within its limit fails with [`StoreError::TimedOut`]
//! instead of waiting.
//!
//! PostgreSQL cancels a slow statement itself (`statement_timeout`, set on
//! every request connection) and a call waits at most `acquire_timeout`
//! for a connection; the deadline is the sum of the two, and catches what
//! neither can: a database that stops answering on a connection already
//! taken (a network partition, a frozen host), where a call would
//! otherwise wait for as long as TCP keeps the socket. The abandoned
//! connection goes back to the pool, which tests it before reuse; one that
//! never answers keeps its pool slot until its socket breaks, so a long
//! partition costs at most the pool, and calls then fail on the acquire
//! bound instead.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

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

/// `inner`, with every call bounded by `limit`.
pub struct Deadline {
    inner: Arc<dyn Store>,
    limit: Duration,
}

impl Deadline {
    pub fn new(inner: Arc<dyn Store>, limit: Duration) -> Self {
        Self { inner, limit }
    }
}

/// `call`, or [`StoreError::TimedOut`] once `limit` has passed.
async fn bounded<T>(
    limit: Duration,
    call: impl Future<Output = Result<T, StoreError>>,
) -> Result<T, StoreError> {
    tokio::time::timeout(limit, call)
        .await
        .unwrap_or(Err(StoreError::TimedOut { limit }))
}

impl Store for Deadline {
    fn embedder(&self) -> &EmbedderIdentity {
        self.inner.embedder()
    }

    fn pool_status(&self) -> Option<(u32, u32, u32)> {
        self.inner.pool_status()
    }
}

/// A batch whose every write is bounded (the batch as a whole is not: it
/// lasts as many writes as its caller makes).
struct BoundedBatch<'a> {
    inner: Box<dyn WriteBatch + 'a>,
    limit: Duration,
}

#[async_trait]
impl WriteBatch for BoundedBatch<'_> {
    async fn insert(
        &mut self,
        new: NewMemory,
        dedup_threshold: f32,
    ) -> Result<InsertOutcome, StoreError> {
        bounded(self.limit, self.inner.insert(new, dedup_threshold)).await
    }

    async fn insert_searched(
        &mut self,
        new: NewMemory,
        dedup_threshold: f32,
        searched_at: u64,
    ) -> Result<InsertOutcome, StoreError> {
        bounded(
            self.limit,
            self.inner
                .insert_searched(new, dedup_threshold, searched_at),
        )
        .await
    }

    async fn insert_all(
        &mut self,
        news: Vec<(NewMemory, Option<u64>)>,
        dedup_threshold: f32,
    ) -> Result<Vec<InsertOutcome>, StoreError> {
        bounded(self.limit, self.inner.insert_all(news, dedup_threshold)).await
    }

    async fn update(
        &mut self,
        id: MemoryId,
        content: &str,
        embedding: &[f32],
        actor: &str,
    ) -> Result<Option<Memory>, StoreError> {
        bounded(self.limit, self.inner.update(id, content, embedding, actor)).await
    }

    async fn supersede(
        &mut self,
        old: MemoryId,
        new: NewMemory,
    ) -> Result<SupersedeOutcome, StoreError> {
        bounded(self.limit, self.inner.supersede(old, new)).await
    }

    async fn close(&mut self, id: MemoryId, actor: &str) -> Result<bool, StoreError> {
        bounded(self.limit, self.inner.close(id, actor)).await
    }

    async fn add_pending(&mut self, pending: NewPending) -> Result<(), StoreError> {
        bounded(self.limit, self.inner.add_pending(pending)).await
    }

    async fn import(&mut self, imported: ImportedMemory) -> Result<ImportOutcome, StoreError> {
        bounded(self.limit, self.inner.import(imported)).await
    }

    async fn audit(&mut self, record: &AuditRecord) -> Result<(), StoreError> {
        bounded(self.limit, self.inner.audit(record)).await
    }

    async fn commit(self: Box<Self>) -> Result<(), StoreError> {
        bounded(self.limit, self.inner.commit()).await
    }
}

#[async_trait]
impl Writes for Deadline {
    async fn begin<'a>(&'a self, user_id: &str) -> Result<Box<dyn WriteBatch + 'a>, StoreError> {
        let inner = bounded(self.limit, self.inner.begin(user_id)).await?;
        Ok(Box::new(BoundedBatch {
            inner,
            limit: self.limit,
        }))
    }

    async fn add_round(
        &self,
        parts: Vec<RoundPart>,
        dedup_threshold: f32,
    ) -> Result<Option<DateTime<Utc>>, StoreError> {
        bounded(self.limit, self.inner.add_round(parts, dedup_threshold)).await
    }

    async fn delete(
        &self,
        user_id: &str,
        id: MemoryId,
        audit: Option<&AuditRecord>,
    ) -> Result<bool, StoreError> {
        bounded(self.limit, self.inner.delete(user_id, id, audit)).await
    }

    async fn delete_user(
        &self,
        user_id: &str,
        audit: Option<&AuditRecord>,
    ) -> Result<u64, StoreError> {
        bounded(self.limit, self.inner.delete_user(user_id, audit)).await
    }

    async fn delete_matching(
        &self,
        at: Selection<'_>,
        audit: Option<&AuditRecord>,
    ) -> Result<Vec<MemoryId>, StoreError> {
        bounded(self.limit, self.inner.delete_matching(at, audit)).await
    }
}

#[async_trait]
impl Reads for Deadline {
    async fn get_many(&self, user_id: &str, ids: &[MemoryId]) -> Result<Vec<Memory>, StoreError> {
        bounded(self.limit, self.inner.get_many(user_id, ids)).await
    }

    async fn recent(&self, scope: &Scope, limit: usize) -> Result<(Vec<Memory>, u64), StoreError> {
        bounded(self.limit, self.inner.recent(scope, limit)).await
    }

    async fn history(&self, user_id: &str, id: MemoryId) -> Result<Vec<HistoryEntry>, StoreError> {
        bounded(self.limit, self.inner.history(user_id, id)).await
    }

    async fn list(
        &self,
        user_id: &str,
        after: Option<ListingKey>,
        limit: usize,
    ) -> Result<Vec<Memory>, StoreError> {
        bounded(self.limit, self.inner.list(user_id, after, limit)).await
    }
}

#[async_trait]
impl Search for Deadline {
    async fn vector_search(
        &self,
        at: SearchScope<'_>,
        query: &[f32],
        limit: usize,
    ) -> Result<Vec<Hit>, StoreError> {
        bounded(self.limit, self.inner.vector_search(at, query, limit)).await
    }

    async fn nearest(
        &self,
        at: SearchScope<'_>,
        query: &[f32],
        limit: usize,
    ) -> Result<Nearest, StoreError> {
        bounded(self.limit, self.inner.nearest(at, query, limit)).await
    }

    async fn similar(
        &self,
        at: SearchScope<'_>,
        query: &[f32],
        limit: usize,
        load_from: Option<f32>,
    ) -> Result<Nearest, StoreError> {
        bounded(self.limit, self.inner.similar(at, query, limit, load_from)).await
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
        bounded(self.limit, call).await
    }

    async fn keyword_search(
        &self,
        at: SearchScope<'_>,
        query: &str,
        limit: usize,
    ) -> Result<Vec<Hit>, StoreError> {
        bounded(self.limit, self.inner.keyword_search(at, query, limit)).await
    }

    async fn score(
        &self,
        user_id: &str,
        ids: &[MemoryId],
        vector: &[f32],
        query: &str,
    ) -> Result<Vec<Scored>, StoreError> {
        bounded(self.limit, self.inner.score(user_id, ids, vector, query)).await
    }

    async fn version_now(&self, at: SearchScope<'_>) -> Result<Option<u64>, StoreError> {
        bounded(self.limit, self.inner.version_now(at)).await
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
        bounded(
            self.limit,
            self.inner.candidates(at, vector, query, depth, pick, seen),
        )
        .await
    }
}

#[async_trait]
impl PendingQueue for Deadline {
    async fn add_pending(&self, pending: NewPending) -> Result<(), StoreError> {
        bounded(self.limit, self.inner.add_pending(pending)).await
    }

    async fn pending(&self, limit: usize) -> Result<(Vec<Pending>, u64), StoreError> {
        bounded(self.limit, self.inner.pending(limit)).await
    }

    async fn finish_pending(&self, user_id: &str, id: uuid::Uuid) -> Result<bool, StoreError> {
        bounded(self.limit, self.inner.finish_pending(user_id, id)).await
    }

    async fn retry_pending(
        &self,
        user_id: &str,
        id: uuid::Uuid,
        error: &str,
    ) -> Result<(), StoreError> {
        bounded(self.limit, self.inner.retry_pending(user_id, id, error)).await
    }
}

#[async_trait]
impl Keys for Deadline {
    async fn add_key(&self, key: &ApiKey) -> Result<(), StoreError> {
        bounded(self.limit, self.inner.add_key(key)).await
    }

    async fn keys(&self) -> Result<Vec<ApiKey>, StoreError> {
        bounded(self.limit, self.inner.keys()).await
    }

    async fn active_key(&self, hash: &str) -> Result<Option<ApiKey>, StoreError> {
        bounded(self.limit, self.inner.active_key(hash)).await
    }

    async fn revoke_key(&self, id: uuid::Uuid) -> Result<bool, StoreError> {
        bounded(self.limit, self.inner.revoke_key(id)).await
    }

    async fn rotate_key(
        &self,
        old: uuid::Uuid,
        successor: &ApiKey,
        old_expires_at: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        bounded(
            self.limit,
            self.inner.rotate_key(old, successor, old_expires_at),
        )
        .await
    }

    async fn delete_user_keys(&self, user_id: &str) -> Result<u64, StoreError> {
        bounded(self.limit, self.inner.delete_user_keys(user_id)).await
    }
}

#[async_trait]
impl Reports for Deadline {
    async fn stats(&self, user_id: &str) -> Result<UserStats, StoreError> {
        bounded(self.limit, self.inner.stats(user_id)).await
    }

    async fn export(&self, user_id: &str) -> Result<UserExport, StoreError> {
        bounded(self.limit, self.inner.export(user_id)).await
    }

    async fn totals(&self) -> Result<StoreTotals, StoreError> {
        bounded(self.limit, self.inner.totals()).await
    }

    async fn users(&self) -> Result<Vec<String>, StoreError> {
        bounded(self.limit, self.inner.users()).await
    }
}

#[async_trait]
impl Versions for Deadline {
    async fn version(&self, user_id: &str) -> Result<Option<u64>, StoreError> {
        bounded(self.limit, self.inner.version(user_id)).await
    }
}

#[async_trait]
impl TokenUsage for Deadline {
    async fn tokens_used(&self, user_id: &str, day: NaiveDate) -> Result<u64, StoreError> {
        bounded(self.limit, self.inner.tokens_used(user_id, day)).await
    }

    async fn add_tokens(
        &self,
        user_id: &str,
        day: NaiveDate,
        tokens: u64,
    ) -> Result<u64, StoreError> {
        bounded(self.limit, self.inner.add_tokens(user_id, day, tokens)).await
    }

    async fn prune_token_usage(&self, before: NaiveDate) -> Result<u64, StoreError> {
        bounded(self.limit, self.inner.prune_token_usage(before)).await
    }
}

#[async_trait]
impl AuditLog for Deadline {
    async fn append_audit(&self, records: &[AuditRecord]) -> Result<(), StoreError> {
        bounded(self.limit, self.inner.append_audit(records)).await
    }

    async fn audit_rows(&self, query: &AuditQuery) -> Result<Vec<AuditRow>, StoreError> {
        bounded(self.limit, self.inner.audit_rows(query)).await
    }

    async fn seal_audit(&self, limit: usize) -> Result<SealReport, StoreError> {
        bounded(self.limit, self.inner.seal_audit(limit)).await
    }

    async fn sealed_audit(&self, after: i64, limit: usize) -> Result<Vec<AuditRow>, StoreError> {
        bounded(self.limit, self.inner.sealed_audit(after, limit)).await
    }
}

#[async_trait]
impl Retention for Deadline {
    async fn purgeable(&self, plan: &PurgePlan) -> Result<PurgeCounts, StoreError> {
        bounded(self.limit, self.inner.purgeable(plan)).await
    }

    async fn purge(
        &self,
        plan: &PurgePlan,
        audit: Option<&AuditRecord>,
    ) -> Result<PurgeReport, StoreError> {
        bounded(self.limit, self.inner.purge(plan, audit)).await
    }
}

#[async_trait]
impl super::SealedValues for Deadline {
    async fn sealed_rows(
        &self,
        column: super::SealedColumn,
        after: uuid::Uuid,
        limit: usize,
    ) -> Result<Vec<super::SealedRow>, StoreError> {
        bounded(self.limit, self.inner.sealed_rows(column, after, limit)).await
    }

    async fn reseal(
        &self,
        column: super::SealedColumn,
        row: &super::SealedRow,
        new: &serde_json::Value,
    ) -> Result<bool, StoreError> {
        bounded(self.limit, self.inner.reseal(column, row, new)).await
    }
}
