//! [`MemoryService`]: the flows, and the only place that knows their order.
//!
//! * remember: validate ─▶ keep secrets out (`screen`) ─▶ the user's token
//!   budget (`budget`: spent, the text is kept as given and queued) ─▶
//!   extract facts ─▶ embed (one batch) ─▶ reconcile
//!   with similar stored memories (at most one more model call, see
//!   `crate::reconcile`) ─▶ add / update / supersede / keep each (adds are
//!   deduplicated atomically by the store) ─▶ report one event per fact ─▶
//!   count the model's tokens against the budget.
//! * recall: validate ─▶ embed query ─▶ vector + keyword candidates ─▶ both
//!   relevances for every candidate ─▶ fuse into absolute scores (`crate::rank`) ─▶ load.
//! * user_context: the most relevant (to an optional focus) and most recent
//!   memories, rendered for a system prompt.
//! * forget: hard-delete one memory, all of a user's (erasing a user also
//!   deletes their API keys), or those of theirs an agent, a run, a
//!   metadata filter and a creation date select (current and superseded
//!   alike, with their history), then purge the user's cache entries. Like
//!   remember, a write: refused to a read-only key
//!   ([`Principal::may_write`]).
//! * correct (`correct.rs`): one memory's text (and metadata) replaced by a
//!   new version that supersedes it, the old one kept with its history; a
//!   write, refused to a read-only key.
//! * get / history / list / stats / export: reads of one user's data,
//!   straight from the store (no cache); a memory the user does not have is
//!   `NotFound`, whether unknown or another user's. `list` (`listing.rs`)
//!   pages through the current memories, oldest first, by cursor.
//! * purge (`retention.rs`): the operator's retention, applied: expired
//!   memories (never returned by any read even before) and superseded ones
//!   past the history retention are removed, audited.
//!
//! Recalls and contexts go through the cache when one is configured: the
//! user's version (from the store) and the entry are fetched together, and
//! an entry is served only at the version it was built at (see [`crate::cache`]).
//! Query embeddings of remote embedders are cached too.
//!
//! Nothing here knows about MCP, HTTP or SQL. Callers pass raw-ish requests;
//!
//! Every public operation leaves a row in the audit trail when audit is
//! on (`audited.rs`: the public entry points, each around its flow here).
//!
//! Beside this file, one step each: `ahead` (the user's version read while
//! a flow waits on a model), `audited` (the entry points and their
//! audit rows), `validate` (what every door accepts), `screen` (secrets
//! kept out of a remember, as `ENGRAM_SECRETS` says), `budget` (the daily
//! token budgets, counted in the store),
//! `remember` (the write flow, and what it keeps when the model fails or
//! the budget is spent), `grouped` (one user's remembers that wait for
//! another of theirs, written in one transaction),
//! `recall` (search and the context), `correct` (a correction by id),
//! `listing` (pages of a user's memories and their cursor), `cached` (the
//! cache-through steps),
//! `sealing` (sensitive values sealed at rest, opened after the cache),
//! `reextract` (`engram reextract`, which calls into the remember flow) and
//! `types` (requests and results, re-exported here).

use std::sync::Arc;
use std::time::Duration;

use crate::audit::Auditor;
use crate::auth::Principal;
use crate::cache::{self, Cache, NoCache};
use crate::config::{self, OnLlmError, SecretsMode};
use crate::context::UserContext;
use crate::embed::Embedder;
use crate::error::Error;
use crate::extract::Extractor;
use crate::model::{Event, MemoryId, MetadataFilter, Scope, UserId, validate_metadata};
use crate::params::{
    ForgetParams, MemoryRef, RecallParams, RememberParams, Scoped, UserContextParams,
};
use crate::store::{AuditRecord, Selection, Store, UserExport, UserStats};

mod ahead;
mod audited;
mod budget;
mod cached;
mod correct;
mod grouped;
mod import;
mod listing;
mod observed;
mod recall;
mod reextract;
mod remember;
mod retention;
mod screen;
mod sealing;
mod types;
mod validate;

pub use audited::{AuditPage, AuditParams};
use validate::ForgetTarget;

pub use budget::TOKEN_USAGE_KEPT_DAYS;
pub use import::{IMPORT_ACTOR, ImportItem, ImportRecord, Imported};
pub use listing::DEFAULT_LIST_LIMIT;
pub use observed::run_gauges;
pub use reextract::{OverBudget, ReextractReport};
use remember::{Work, is_model_failure};
pub use retention::{PURGE_BATCH, PurgeOutcome, run_purger};
pub use types::{
    CorrectResult, DeferCause, Deferred, ForgetResult, HistoryResult, MemoryDetail, MemoryEvent,
    MemoryPage, RecallResult, Redaction, RememberResult, ScoredMemory,
};
pub use validate::{MAX_LIMIT, MAX_MESSAGES};

pub const DEFAULT_RECALL_LIMIT: usize = 10;
pub const DEFAULT_CONTEXT_LIMIT: usize = 20;

/// Tunables the service enforces.
#[derive(Debug, Clone)]
pub struct Settings {
    pub dedup_threshold: f32,
    /// Stored memories at least this similar to a new fact are shown to the
    /// reconciler (see `crate::reconcile`).
    pub reconcile_threshold: f32,
    pub max_text_bytes: usize,
    /// How long a cached recall or context is served (at most; any write ends it sooner).
    pub cache_ttl: Duration,
    /// What `remember` does when the model fails (see `remember`).
    pub on_llm_error: OnLlmError,
    /// The user a request without `user_id` acts for, unless its caller's
    /// key belongs to a user.
    pub default_user: UserId,
    /// What `remember` does with secrets in its input (see `screen`).
    pub secrets: SecretsMode,
    /// How long memories are kept (see [`config::RetentionConfig`]).
    pub retention: config::RetentionConfig,
    /// How many model tokens each user may spend per UTC day (see `budget`).
    pub token_budget: config::BudgetConfig,
}

/// The defaults `engram serve` runs with (see [`crate::config`]).
impl Default for Settings {
    fn default() -> Self {
        Self {
            dedup_threshold: config::DEFAULT_DEDUP_THRESHOLD,
            reconcile_threshold: config::DEFAULT_RECONCILE_THRESHOLD,
            max_text_bytes: config::DEFAULT_MAX_TEXT_BYTES,
            cache_ttl: Duration::from_secs(config::DEFAULT_CACHE_TTL_SECS),
            on_llm_error: OnLlmError::default(),
            default_user: UserId::parse(config::DEFAULT_USER)
                .expect("the built-in default user is a valid id"),
            secrets: SecretsMode::default(),
            retention: config::RetentionConfig::default(),
            token_budget: config::BudgetConfig::default(),
        }
    }
}

pub struct MemoryService {
    store: Arc<dyn Store>,
    embedder: Arc<dyn Embedder>,
    extractor: Arc<dyn Extractor>,
    cache: Arc<dyn Cache>,
    settings: Settings,
    tally: cached::Tally,
    /// The embedder's similarity between unrelated texts, measured at the
    /// first search ([`crate::embed::unrelated_similarity`]).
    floor: tokio::sync::OnceCell<f32>,
    /// Records every operation (`audited.rs`); `None`: audit off.
    audit: Option<Arc<Auditor>>,
    /// Seals sensitive values at rest (`sealing.rs`); `None`: nothing is sealed.
    sealer: Option<Arc<crate::crypto::Sealer>>,
    /// One user's remembers that wait for another of theirs, written
    /// together (`grouped.rs`).
    groups: Arc<grouped::Groups>,
}

impl MemoryService {
    pub fn new(
        store: Arc<dyn Store>,
        embedder: Arc<dyn Embedder>,
        extractor: Arc<dyn Extractor>,
        settings: Settings,
    ) -> Self {
        Self {
            groups: Arc::new(grouped::Groups::new(
                store.clone(),
                settings.dedup_threshold,
            )),
            store,
            embedder: Arc::new(crate::embed::Timed(embedder)),
            extractor,
            cache: Arc::new(NoCache),
            settings,
            tally: cached::Tally::default(),
            floor: tokio::sync::OnceCell::new(),
            audit: None,
            sealer: None,
        }
    }

    /// Records every operation in the audit trail through `auditor`.
    pub fn with_audit(mut self, auditor: Arc<Auditor>) -> Self {
        self.audit = Some(auditor);
        self
    }

    /// The auditor, when audit is on.
    pub fn auditor(&self) -> Option<&Arc<Auditor>> {
        self.audit.as_ref()
    }

    /// The store, when audit is on: what the sealer seals.
    pub fn audited_store(&self) -> Option<Arc<dyn Store>> {
        self.audit.as_ref().map(|_| self.store.clone())
    }

    /// Serves recalls, contexts and query embeddings through `cache`.
    /// Which embedder builds this service's vectors.
    pub fn embedder_identity(&self) -> crate::embed::EmbedderIdentity {
        self.embedder.identity()
    }

    pub fn with_cache(mut self, cache: Arc<dyn Cache>) -> Self {
        self.cache = cache;
        self
    }

    /// Whether requests can be served: the store answers a (cheap) read.
    pub async fn ready(&self) -> Result<(), Error> {
        self.store.version("").await?;
        Ok(())
    }

    /// The cache's state for health checks: `None` without a cache, else
    /// whether it answers now. Requests are served either way.
    pub async fn cache_state(&self) -> Option<Result<(), String>> {
        if !self.cache.enabled() {
            return None;
        }
        Some(self.cache.ping().await)
    }

    /// The principal a presented API key stands for; `None` when the key is
    /// unknown, revoked or expired. Read from the store on every call, so a
    /// revocation holds at once on every instance.
    pub async fn authenticate(&self, presented: &str) -> Result<Option<Principal>, Error> {
        let key = self.store.active_key(&crate::auth::hash(presented)).await?;
        Ok(key.as_ref().map(Principal::from_key))
    }

    /// The cache (or [`NoCache`]), for state shared between processes.
    pub fn cache(&self) -> Arc<dyn Cache> {
        self.cache.clone()
    }

    /// How many API keys are active (neither revoked nor expired).
    pub async fn active_keys(&self) -> Result<usize, Error> {
        let keys = self.store.keys().await?;
        let now = chrono::Utc::now();
        Ok(keys
            .iter()
            .filter(|k| k.state(now) == crate::store::KeyState::Active)
            .count())
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// The scope a request acts in: its user resolved through `caller` (an
    /// omitted `user_id` is the caller's own; see [`Principal::acting_user`]),
    /// narrowed by agent and run. Every flow starts here, so ids are checked
    /// once and the same way for every door.
    fn scope(&self, caller: &Principal, req: &impl Scoped) -> Result<Scope, Error> {
        let (user_id, agent_id, run_id) = req.scope_ids();
        let user = self.acting_user(caller, user_id)?;
        Ok(Scope::narrowed(user, agent_id, run_id)?)
    }

    /// The user `caller` acts for, named or the caller's own: the one
    /// resolution every flow makes, which the doors also use to count a
    /// request against its user's rate limit (`crate::limit`).
    pub fn acting_user(&self, caller: &Principal, user_id: Option<&str>) -> Result<UserId, Error> {
        caller.acting_user(user_id, &self.settings.default_user)
    }

    async fn remember_inner(
        &self,
        caller: &Principal,
        req: RememberParams,
        audit: Option<AuditRecord>,
    ) -> Result<RememberResult, Error> {
        caller.may_write()?;
        let scope = self.scope(caller, &req)?;
        let input = validate::input(req.text, req.messages, self.settings.max_text_bytes)?;
        let metadata = validate_metadata(req.metadata)?;
        // Before extraction: neither the model nor the store sees a secret.
        let (input, metadata, redacted) = screen::secrets(self.settings.secrets, input, metadata)?;
        // Sealed once here: the memories and any pending entry carry only
        // the sealed values.
        let metadata = self.seal_metadata(metadata, scope.user_id());
        let work = Work {
            scope: &scope,
            input: &input,
            metadata: &metadata,
            infer: req.infer.unwrap_or(true),
            replacing: Vec::new(),
            said_at: None,
            audit,
            ttl_days: validate::ttl_days(req.ttl_days)?,
        };
        // The model is not called for a user whose budget is spent: the text
        // is kept as given and queued, whatever `on_llm_error` says (this
        // is no failure).
        let calls_model = work.infer && self.extractor.infers();
        if calls_model && let Some(spent) = self.budget_spent(scope.user_id()).await? {
            crate::metrics::metrics().token_budget_exceeded.inc();
            let done = self
                .defer(&work, DeferCause::TokenBudget, spent.reason())
                .await;
            return done.map(|result| RememberResult { redacted, ..result });
        }
        let done = match self.process(&work).await {
            Err(error)
                if is_model_failure(&error)
                    && self.settings.on_llm_error == OnLlmError::Verbatim =>
            {
                self.defer(&work, DeferCause::ModelFailed, error.to_string())
                    .await
            }
            done => done,
        };
        if let Ok(result) = &done {
            self.count_tokens(scope.user_id(), result.usage.as_ref())
                .await;
        }
        done.map(|result| RememberResult { redacted, ..result })
    }

    async fn recall_inner(
        &self,
        caller: &Principal,
        req: RecallParams,
    ) -> Result<RecallResult, Error> {
        let scope = self.scope(caller, &req)?;
        let query = validate::text("query", &req.query, self.settings.max_text_bytes)?;
        let limit = validate::limit(req.limit, DEFAULT_RECALL_LIMIT)?;
        let filter = MetadataFilter::parse(req.filters.as_ref())?;
        self.refuse_sealed_filter("filters", &filter)?;
        let min_score = validate::min_score(req.min_score)?;
        let field = self
            .cache
            .enabled()
            .then(|| cache::recall_field(&scope, &query, limit, &filter));
        // Scores are absolute, so the cut applies to a cached answer as well.
        let mut result: RecallResult = self
            .through_cache(scope.user_id(), field, || {
                self.search(&scope, query, limit, &filter)
            })
            .await?;
        result.results.retain(|r| r.score >= min_score);
        // After the cache: what it holds stays sealed.
        for scored in &mut result.results {
            self.open_memory(&mut scored.memory);
        }
        Ok(result)
    }

    /// The user's profile: with a focus (`query`), the memories most
    /// relevant to it first, then the most recent ones up to `limit`;
    /// without, most recent first.
    async fn user_context_inner(
        &self,
        caller: &Principal,
        req: UserContextParams,
    ) -> Result<UserContext, Error> {
        let scope = self.scope(caller, &req)?;
        let limit = validate::limit(req.limit, DEFAULT_CONTEXT_LIMIT)?;
        let focus = validate::focus(req.query, self.settings.max_text_bytes)?;
        let field = self
            .cache
            .enabled()
            .then(|| cache::context_field(&scope, limit, focus.as_deref()));
        let mut context = self
            .through_cache(scope.user_id(), field, || {
                self.build_context(&scope, limit, focus)
            })
            .await?;
        // After the cache: what it holds stays sealed.
        for memory in &mut context.memories {
            self.open_memory(memory);
        }
        Ok(context)
    }

    /// Deletes one memory (`memory_id`), every memory of a user named
    /// explicitly (`user_id` with `all: true`), or those of theirs that
    /// `agent_id`, `run_id`, `filters` and `before` select (with `all:
    /// true`), then the user's cache entries.
    async fn forget_inner(
        &self,
        caller: &Principal,
        req: ForgetParams,
        audit: Option<AuditRecord>,
    ) -> Result<ForgetResult, Error> {
        caller.may_write()?;
        let target = validate::forget_target(&req)?;
        let user = self.acting_user(caller, req.user_id.as_deref())?;
        match target {
            ForgetTarget::User => {
                // Keys first: once they are gone no request of the user's can
                // begin, so none writes behind the erasure of the memories.
                let keys_deleted = self.store.delete_user_keys(&user).await?;
                let deleted = self.store.delete_user(&user, audit.as_ref()).await?;
                self.cache.purge_user(&user, None).await;
                Ok(ForgetResult {
                    user_id: user.into(),
                    deleted,
                    memory_id: None,
                    keys_deleted: Some(keys_deleted),
                })
            }
            ForgetTarget::Matching { filter, before } => {
                self.refuse_sealed_filter("filters", &filter)?;
                let scope =
                    Scope::narrowed(user.clone(), req.agent_id.as_deref(), req.run_id.as_deref())?;
                let at = Selection {
                    scope: &scope,
                    filter: &filter,
                    before,
                };
                let deleted = self.store.delete_matching(at, audit.as_ref()).await?;
                if !deleted.is_empty() {
                    self.purge_after_delete(&user).await;
                }
                Ok(ForgetResult {
                    user_id: user.into(),
                    deleted: deleted.len() as u64,
                    memory_id: None,
                    keys_deleted: None,
                })
            }
            ForgetTarget::One(id) => {
                let audit = audit.map(|mut record| {
                    crate::audit::with_memories(&mut record, vec![id]);
                    record
                });
                if !self.store.delete(&user, id, audit.as_ref()).await? {
                    return Err(Error::NotFound(format!(
                        "no memory {id} belongs to user \"{user}\"; nothing was deleted"
                    )));
                }
                self.purge_after_delete(&user).await;
                Ok(ForgetResult {
                    user_id: user.into(),
                    deleted: 1,
                    memory_id: Some(id),
                    keys_deleted: None,
                })
            }
        }
    }

    /// Ends the user's cache entries after a delete that leaves some of
    /// their memories. The floor (the version the delete moved the user
    /// to) keeps out entries of reads that began before the delete.
    /// Unreadable version: delete everything instead.
    async fn purge_after_delete(&self, user: &UserId) {
        if self.cache.enabled() {
            let floor = self.store.version(user).await.unwrap_or(None);
            self.cache.purge_user(user, floor).await;
        }
    }

    /// One of the user's memories as stored (sealed values still sealed);
    /// an unknown id, or another user's, is [`Error::NotFound`].
    async fn stored_memory(
        &self,
        user: &UserId,
        id: MemoryId,
    ) -> Result<crate::model::Memory, Error> {
        self.store
            .get_many(user, &[id])
            .await?
            .into_iter()
            .next()
            .ok_or_else(|| not_theirs(id, user))
    }

    /// One of the user's memories, current or superseded, and whether it is
    /// still current. An unknown id, or another user's, is [`Error::NotFound`].
    async fn get_inner(&self, caller: &Principal, req: MemoryRef) -> Result<MemoryDetail, Error> {
        let (user, id) = self.memory_ref(caller, &req)?;
        let mut memory = self.stored_memory(&user, id).await?;
        self.open_memory(&mut memory);
        // A closed memory's last history row is the SUPERSEDE that closed
        // it (nothing is written to a memory after that), at its valid_to.
        let history = self.store.history(&user, id).await?;
        let valid_to = history
            .last()
            .filter(|h| h.event == Event::Supersede)
            .map(|h| h.created_at);
        Ok(MemoryDetail {
            memory,
            current: valid_to.is_none(),
            valid_to,
        })
    }

    /// The history of one of the user's memories, oldest first. An unknown
    /// id, or another user's, is [`Error::NotFound`].
    async fn history_inner(
        &self,
        caller: &Principal,
        req: MemoryRef,
    ) -> Result<HistoryResult, Error> {
        let (user, id) = self.memory_ref(caller, &req)?;
        let history = self.store.history(&user, id).await?;
        if history.is_empty() {
            return Err(not_theirs(id, &user));
        }
        Ok(HistoryResult {
            user_id: user.into(),
            memory_id: id,
            history,
        })
    }

    /// What the user has stored: counts, categories, dates and size. An
    /// unknown user has all zeros.
    async fn stats_inner(
        &self,
        caller: &Principal,
        user_id: Option<&str>,
    ) -> Result<UserStats, Error> {
        let user = self.acting_user(caller, user_id)?;
        Ok(self.store.stats(&user).await?)
    }

    /// Everything stored for the user, in one snapshot: memories current and
    /// superseded with their history, and deferred remembers. An unknown
    /// user has an empty export.
    async fn export_inner(
        &self,
        caller: &Principal,
        user_id: Option<&str>,
    ) -> Result<UserExport, Error> {
        let user = self.acting_user(caller, user_id)?;
        let mut export = self.store.export(&user).await?;
        self.open_export(&mut export);
        Ok(export)
    }

    fn memory_ref(&self, caller: &Principal, req: &MemoryRef) -> Result<(UserId, MemoryId), Error> {
        let user = self.acting_user(caller, req.user_id.as_deref())?;
        Ok((user, MemoryId::parse("memory_id", &req.memory_id)?))
    }
}

/// The answer to a read of a memory the user does not have (unknown, or
/// another user's: the two are not told apart).
fn not_theirs(id: MemoryId, user_id: &str) -> Error {
    Error::NotFound(format!("no memory {id} belongs to user \"{user_id}\""))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::embed::HashEmbedder;
    use crate::extract::VerbatimExtractor;
    use crate::rank;
    use crate::store::SearchScope;
    use crate::store::SqliteStore;

    /// A service on a fresh SQLite file, and the directory that holds it.
    async fn service() -> (MemoryService, tempfile::TempDir) {
        let dir = tempfile::tempdir().expect("tempdir");
        let url = format!("sqlite://{}/engram.db", dir.path().display());
        let embedder = Arc::new(HashEmbedder::new(64));
        let store = SqliteStore::open(&url, embedder.identity())
            .await
            .expect("open store");
        let settings = Settings {
            dedup_threshold: 0.9,
            reconcile_threshold: 0.8,
            max_text_bytes: 4096,
            cache_ttl: Duration::from_secs(60),
            on_llm_error: OnLlmError::Fail,
            ..Settings::default()
        };
        let service = MemoryService::new(
            Arc::new(store),
            embedder,
            Arc::new(VerbatimExtractor),
            settings,
        );
        (service, dir)
    }

    async fn remember(s: &MemoryService, user: &str, text: &str) -> MemoryId {
        let result = s
            .remember(
                ME,
                RememberParams {
                    text: Some(text.into()),
                    user_id: Some(user.into()),
                    infer: Some(false),
                    ..RememberParams::default()
                },
            )
            .await
            .expect("remember");
        result.results[0].id
    }

    /// Every test call is the operator's, as on stdio.
    const ME: &Principal = &Principal::Operator;

    fn recall_request(user: &str, query: &str, min_score: Option<f64>) -> RecallParams {
        RecallParams {
            query: query.into(),
            user_id: Some(user.into()),
            limit: Some(10),
            min_score,
            ..RecallParams::default()
        }
    }

    fn at(user: &str, id: MemoryId) -> MemoryRef {
        MemoryRef {
            memory_id: id.to_string(),
            user_id: Some(user.into()),
        }
    }

    /// The fusion regression the ranking exists to prevent, end to end: the
    /// one memory naming the query's rare word comes first, although forty
    /// others repeat the rest of the question's wording and the hash
    /// embedder ranks every one of them above it. (Rank fusion put it 41st.)
    #[tokio::test]
    async fn the_keyword_hit_is_not_buried_by_lexical_lookalikes() {
        let (s, _dir) = service().await;
        for i in 0..40 {
            remember(
                &s,
                "alice",
                &format!("What does Caroline think about the weekend plans, draft {i}?"),
            )
            .await;
        }
        let hit = remember(&s, "alice", "Caroline adopted a greyhound called Zephyr").await;
        let query = "What does Caroline think about Zephyr?";
        let vectors = s
            .store
            .vector_search(
                SearchScope {
                    scope: &Scope::new("alice", None, None).unwrap(),
                    filter: &MetadataFilter::default(),
                },
                &s.embedder.embed_query(query).await.unwrap(),
                40,
            )
            .await
            .unwrap();
        assert!(
            vectors.iter().all(|h| h.id != hit),
            "the embedder alone does not find it in its top 40"
        );
        let result = s
            .recall(ME, recall_request("alice", query, None))
            .await
            .unwrap();
        assert_eq!(result.results[0].memory.id, hit, "{:#?}", result.results);
    }

    /// Scores are absolute: a query unrelated to everything stored scores
    /// below [`rank::RELEVANT`] everywhere, so `min_score` at that level
    /// answers nothing, while a related one keeps its match.
    #[tokio::test]
    async fn min_score_leaves_out_what_is_unrelated() {
        let (s, _dir) = service().await;
        for text in [
            "I live in Lisbon and love espresso",
            "My dog Rex is afraid of thunder",
            "I work as a nurse on night shifts",
            "My sister plays the cello in an orchestra",
        ] {
            remember(&s, "alice", text).await;
        }
        let unrelated = "quantum chromodynamics lattice simulations";
        let all = s
            .recall(ME, recall_request("alice", unrelated, None))
            .await
            .unwrap();
        assert_eq!(all.results.len(), 4, "without min_score: up to limit");
        assert!(
            all.results.iter().all(|r| r.score < rank::RELEVANT),
            "{:#?}",
            all.results
        );
        let cut = s
            .recall(
                ME,
                recall_request("alice", unrelated, Some(f64::from(rank::RELEVANT))),
            )
            .await
            .unwrap();
        assert!(cut.results.is_empty(), "{:#?}", cut.results);

        let related = s
            .recall(
                ME,
                recall_request(
                    "alice",
                    "espresso in Lisbon",
                    Some(f64::from(rank::RELEVANT)),
                ),
            )
            .await
            .unwrap();
        assert_eq!(related.results.len(), 1, "{:#?}", related.results);
        assert_eq!(
            related.results[0].memory.memory,
            "I live in Lisbon and love espresso"
        );
        assert!(related.results[0].score <= 1.0);

        for bad in [-0.1, 1.5, f64::NAN] {
            match s
                .recall(ME, recall_request("alice", "espresso", Some(bad)))
                .await
            {
                Err(Error::InvalidInput { field, .. }) => assert_eq!(field, "min_score"),
                other => panic!("min_score {bad}: {other:?}"),
            }
        }
    }

    #[tokio::test]
    async fn reads_by_id_are_the_users_own() {
        let (s, _dir) = service().await;
        let id = remember(&s, "alice", "Lives in Lisbon").await;

        let detail = s.get(ME, at("alice", id)).await.unwrap();
        let memory = &detail.memory;
        assert_eq!((memory.id, memory.memory.as_str()), (id, "Lives in Lisbon"));
        assert!(detail.current && detail.valid_to.is_none());
        assert_eq!(
            s.history(ME, at("alice", id)).await.unwrap().history.len(),
            1
        );
        // Ids are trimmed as everywhere else.
        assert_eq!(s.get(ME, at(" alice ", id)).await.unwrap().memory.id, id);

        // Closed: still readable by id, no longer current, since when.
        assert!(s.store.close("alice", id, "test").await.unwrap());
        let closed = s.get(ME, at("alice", id)).await.unwrap();
        assert!(!closed.current, "{closed:?}");
        let history = s.history(ME, at("alice", id)).await.unwrap().history;
        assert_eq!(closed.valid_to, history.last().map(|h| h.created_at));
        assert_eq!(history.len(), 2);

        let unknown = MemoryId::new();
        for (user, id) in [("bob", id), ("alice", unknown)] {
            let expected = format!("no memory {id} belongs to user \"{user}\"");
            match s.get(ME, at(user, id)).await {
                Err(Error::NotFound(message)) => assert_eq!(message, expected),
                other => panic!("get {user} {id}: {other:?}"),
            }
            match s.history(ME, at(user, id)).await {
                Err(Error::NotFound(message)) => assert_eq!(message, expected),
                other => panic!("history {user} {id}: {other:?}"),
            }
        }
    }

    #[tokio::test]
    async fn stats_and_exports_are_per_user_and_refuse_bad_ids() {
        let (s, _dir) = service().await;
        let id = remember(&s, "alice", "Lives in Lisbon").await;

        let stats = s.stats(ME, Some("alice")).await.unwrap();
        assert_eq!((stats.user_id.as_str(), stats.memories), ("alice", 1));
        assert!(stats.storage_bytes > 0);
        let export = s.export(ME, Some(" alice")).await.unwrap();
        assert_eq!(export.user_id, "alice");
        assert_eq!(export.memories.len(), 1);
        assert_eq!(export.memories[0].memory.id, id);
        assert_eq!(s.stats(ME, Some("nobody")).await.unwrap().memories, 0);
        assert!(
            s.export(ME, Some("nobody"))
                .await
                .unwrap()
                .memories
                .is_empty()
        );

        for bad in ["", "  ", "a\u{7}b"] {
            assert!(
                matches!(
                    s.stats(ME, Some(bad)).await,
                    Err(Error::InvalidInput {
                        field: "user_id",
                        ..
                    })
                ),
                "{bad:?}"
            );
            assert!(matches!(
                s.export(ME, Some(bad)).await,
                Err(Error::InvalidInput { .. })
            ));
            assert!(matches!(
                s.get(ME, at(bad, id)).await,
                Err(Error::InvalidInput { .. })
            ));
            assert!(matches!(
                s.history(ME, at(bad, id)).await,
                Err(Error::InvalidInput { .. })
            ));
        }
        let long = "u".repeat(crate::model::MAX_ID_LEN + 1);
        assert!(matches!(
            s.stats(ME, Some(&long)).await,
            Err(Error::InvalidInput { .. })
        ));
    }

    /// Starts a remember of each of `texts` for `user`, whose write is held
    /// (`Groups::hold`), and waits until all of them are queued.
    async fn queue_remembers(
        s: &Arc<MemoryService>,
        user: &'static str,
        texts: &[&'static str],
    ) -> Vec<tokio::task::JoinHandle<Result<RememberResult, Error>>> {
        let waiting: Vec<_> = texts
            .iter()
            .map(|&text| {
                let s = s.clone();
                tokio::spawn(async move {
                    let params = RememberParams {
                        text: Some(text.into()),
                        user_id: Some(user.into()),
                        infer: Some(false),
                        ..RememberParams::default()
                    };
                    s.remember(ME, params).await
                })
            })
            .collect();
        while s.groups.queued(user) < texts.len() {
            tokio::task::yield_now().await;
        }
        waiting
    }

    /// Remembers of one user that arrive while a write of theirs is under
    /// way wait, and are then written in one round: each answered with its
    /// own events, duplicates among them found (one kept), each audit row
    /// naming its own memory, and a remember arriving after the round
    /// writes alone again.
    #[tokio::test]
    async fn remembers_waiting_for_their_user_are_written_together() {
        let (s, _dir) = service().await;
        let auditor = Arc::new(Auditor::new(
            crate::audit::Pseudonyms::new(b"test pseudonym key".to_vec()),
            false,
            crate::audit::Sink::start(s.store.clone()),
        ));
        let s = Arc::new(s.with_audit(auditor.clone()));
        let held = s.groups.hold("alice");
        let texts = [
            "Alice keeps bees in the garden",
            "Alice sings in a choir on Tuesdays",
            "Alice is allergic to hazelnuts",
            "Alice sings in a choir on Tuesdays",
            "Alice drives an old green van",
        ];
        let waiting = queue_remembers(&s, "alice", &texts).await;
        let (_, stored) = s
            .store
            .recent(&Scope::new("alice", None, None).unwrap(), 10)
            .await
            .unwrap();
        assert_eq!(
            stored, 0,
            "nothing is written while the user's write is under way"
        );
        drop(held);
        let mut answers = Vec::new();
        for task in waiting {
            answers.push(task.await.expect("task").expect("remember"));
        }
        assert_eq!(
            s.groups.rounds(),
            1,
            "the five waited and went in one round"
        );
        let events: Vec<_> = answers.iter().map(|a| a.results[0].event).collect();
        use crate::model::Event;
        assert_eq!(
            events,
            [Event::Add, Event::Add, Event::Add, Event::None, Event::Add]
        );
        assert_eq!(answers[3].results[0].id, answers[1].results[0].id);
        for (answer, text) in answers.iter().zip(texts) {
            assert_eq!(answer.results.len(), 1);
            assert_eq!(answer.results[0].memory, text);
        }
        let (_, stored) = s
            .store
            .recent(&Scope::new("alice", None, None).unwrap(), 10)
            .await
            .unwrap();
        assert_eq!(stored, 4);

        // Each remember's audit row names the memory it answered with.
        let mut rows = Vec::new();
        for _ in 0..200 {
            rows = s
                .store
                .audit_rows(&crate::store::AuditQuery {
                    user_ref: Some(auditor.user_ref("alice")),
                    since: None,
                    operation: Some("remember".into()),
                    before_seq: None,
                    limit: 100,
                })
                .await
                .unwrap();
            if rows.len() >= texts.len() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let mut audited: Vec<MemoryId> = rows
            .iter()
            .flat_map(|r| r.record.memory_ids.iter().copied())
            .collect();
        let mut answered: Vec<MemoryId> = answers.iter().map(|a| a.results[0].id).collect();
        audited.sort_by_key(|id| id.0);
        answered.sort_by_key(|id| id.0);
        assert_eq!(audited, answered, "{rows:#?}");

        // Nothing under way any more: the next remember writes alone.
        remember(&s, "alice", "Alice collects vinyl records").await;
        assert_eq!(s.groups.rounds(), 1);
        assert_eq!(s.groups.queued("alice"), 0);
    }

    /// With every write slot taken, remembers of other users wait too, and
    /// the first slot to end writes all of them in one round (SQLite takes
    /// no rounds of several users: each user's remembers are written apart,
    /// in that round); each is answered with its own memory.
    #[tokio::test]
    async fn other_users_remembers_wait_for_a_slot_and_go_in_one_round() {
        let (s, _dir) = service().await;
        let s = Arc::new(s);
        let slots: Vec<_> = (0..grouped::WRITES_AT_ONCE)
            .map(|i| s.groups.hold(&format!("holder-{i}")))
            .collect();
        let mut waiting = Vec::new();
        for (user, texts) in [
            (
                "carol",
                &["Carol fixes old radios", "Carol speaks Finnish"][..],
            ),
            ("dave", &["Dave grows chillies on the balcony"][..]),
            ("erin", &["Erin swims in the sea all winter"][..]),
        ] {
            waiting.extend(queue_remembers(&s, user, texts).await);
        }
        assert_eq!(s.groups.queued("carol"), 2);
        drop(slots);
        for task in waiting {
            let answer = task.await.expect("task").expect("remember");
            assert_eq!(answer.results[0].event, crate::model::Event::Add);
        }
        assert_eq!(s.groups.rounds(), 1, "all four in one round");
        for (user, count) in [("carol", 2), ("dave", 1), ("erin", 1)] {
            let scope = Scope::new(user, None, None).unwrap();
            assert_eq!(s.store.recent(&scope, 10).await.unwrap().1, count, "{user}");
        }
    }

    /// A round the store refuses (here one remember's insert, refused by a
    /// trigger) is written again one remember at a time: the others are
    /// stored and answered, only the refused one fails, and nothing of the
    /// failed round is left behind.
    #[tokio::test]
    async fn a_refused_round_is_written_again_one_remember_at_a_time() {
        let (s, dir) = service().await;
        let url = format!("sqlite://{}/engram.db", dir.path().display());
        let pool = sqlx::SqlitePool::connect(&url).await.expect("connect");
        sqlx::query(
            "CREATE TRIGGER poisoned BEFORE INSERT ON memories \
             WHEN NEW.content LIKE '%poison%' BEGIN SELECT RAISE(ABORT, 'poisoned'); END",
        )
        .execute(&pool)
        .await
        .expect("trigger");
        pool.close().await;
        let s = Arc::new(s);
        let held = s.groups.hold("bob");
        let texts = [
            "Bob rows on the river at dawn",
            "Bob keeps poison dart frogs",
            "Bob bakes rye bread on Sundays",
        ];
        let waiting = queue_remembers(&s, "bob", &texts).await;
        drop(held);
        let mut answers = Vec::new();
        for task in waiting {
            answers.push(task.await.expect("task"));
        }
        assert_eq!(s.groups.rounds(), 1, "the three went in one round");
        let refused = answers[1].as_ref().expect_err("the poisoned one fails");
        assert!(refused.to_string().contains("poisoned"), "{refused}");
        for i in [0, 2] {
            let answer = answers[i].as_ref().expect("the others are written alone");
            assert_eq!(answer.results.len(), 1);
            assert_eq!(answer.results[0].memory, texts[i]);
        }
        let (stored, count) = s
            .store
            .recent(&Scope::new("bob", None, None).unwrap(), 10)
            .await
            .unwrap();
        assert_eq!(count, 2);
        let mut contents: Vec<&str> = stored.iter().map(|m| m.memory.as_str()).collect();
        contents.sort();
        let mut written = [texts[0], texts[2]];
        written.sort();
        assert_eq!(contents, written);
    }
}
