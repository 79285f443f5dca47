//! [`MemoryService`]: the flows, and the only place that knows their order.
//!
//! * remember: validate ─▶ extract facts ─▶ embed (one batch) ─▶ reconcile
//!   with similar stored memories (at most one more model call, see
//!   [`crate::reconcile`]) ─▶ add / update / supersede / keep each (adds are
//!   deduplicated atomically by the store) ─▶ report one event per fact.
//! * recall: validate ─▶ embed query ─▶ vector + keyword candidates ─▶ both
//!   relevances for every candidate ─▶ fuse into absolute scores ([`crate::rank`]) ─▶ load.
//! * user_context: the most relevant (to an optional focus) and most recent
//!   memories, rendered for a system prompt.
//! * forget: hard-delete one memory or all of a user's, then purge the
//!   user's cache entries.
//! * get / history / stats / export: reads of one user's data, straight from
//!   the store (no cache); a memory the user does not have is `NotFound`,
//!   whether unknown or another user's.
//!
//! Recalls and contexts go through the cache when one is configured: the
//! user's version (from the store) and the entry are fetched together, and
//! an entry is served only at the version it was built at (see [`crate::cache`]).
//! Query embeddings of remote embedders are cached too.
//!
//! Nothing here knows about MCP, HTTP or SQL. Callers pass raw-ish requests;
//! all validation happens here so every transport refuses the same input.
//!
//! Beside this file: `types` (requests and results, re-exported here) and
//! `deferred` (what a failed model step leaves, and `engram reextract`).

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::auth::Principal;
use crate::cache::{self, Cache, CacheStats, NoCache, VectorSource, entry};
use crate::config::OnLlmError;
use crate::context::UserContext;
use crate::embed::{Embedder, calibration};
use crate::error::Error;
use crate::extract::{Extracted, Extractor, VerbatimExtractor};
use crate::model::{
    Event, Fact, Input, Memory, MemoryId, Message, MetadataFilter, Scope, normalize_date,
    validate_id, validate_metadata,
};
use crate::rank;
use crate::reconcile::{self, Plan};
use crate::store::{
    HistoryEntry, InsertOutcome, NewMemory, SearchScope, Store, StoreError, SupersedeOutcome,
    UserExport, UserStats,
};

mod deferred;
mod types;

pub use deferred::{Deferred, ReextractReport};
use deferred::{Work, is_model_failure};
pub use types::{
    ForgetResult, ForgetTarget, MemoryDetail, MemoryEvent, RecallRequest, RecallResult,
    RememberRequest, RememberResult, ScoredMemory,
};

pub const DEFAULT_RECALL_LIMIT: usize = 10;
pub const DEFAULT_CONTEXT_LIMIT: usize = 20;
pub const MAX_LIMIT: usize = 100;
pub const MAX_MESSAGES: usize = 200;
/// Each signal contributes this many candidates per requested result to
/// fusion (the development set's R@10 was the same at 20, 40 and 100 for 10
/// results once every candidate carries both relevances).
const CANDIDATES_PER_RESULT: usize = 4;
const MIN_CANDIDATES: usize = 40;

/// Tunables the service enforces.
#[derive(Debug, Clone)]
pub struct Settings {
    pub dedup_threshold: f32,
    /// Stored memories at least this similar to a new fact are shown to the
    /// reconciler (see [`crate::reconcile`]).
    pub reconcile_threshold: f32,
    pub max_text_bytes: usize,
    /// How long a cached recall or context is served (at most; any write ends it sooner).
    pub cache_ttl: Duration,
    /// What `remember` does when the model fails (see [`deferred`]).
    pub on_llm_error: OnLlmError,
}

pub struct MemoryService {
    store: Arc<dyn Store>,
    embedder: Arc<dyn Embedder>,
    extractor: Arc<dyn Extractor>,
    cache: Arc<dyn Cache>,
    settings: Settings,
    tally: Tally,
    /// The embedder's similarity between unrelated texts, measured at the
    /// first search ([`crate::embed::unrelated_similarity`]).
    floor: tokio::sync::OnceCell<f32>,
}

/// Cache lookups by outcome; the cache itself counts its failures.
#[derive(Default)]
struct Tally {
    hits: AtomicU64,
    misses: AtomicU64,
    vector_hits: AtomicU64,
    vector_misses: AtomicU64,
}

impl Tally {
    fn count(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

impl MemoryService {
    pub fn new(
        store: Arc<dyn Store>,
        embedder: Arc<dyn Embedder>,
        extractor: Arc<dyn Extractor>,
        settings: Settings,
    ) -> Self {
        Self {
            store,
            embedder,
            extractor,
            cache: Arc::new(NoCache),
            settings,
            tally: Tally::default(),
            floor: tokio::sync::OnceCell::new(),
        }
    }

    /// Serves recalls, contexts and query embeddings through `cache`.
    pub fn with_cache(mut self, cache: Arc<dyn Cache>) -> Self {
        self.cache = cache;
        self
    }

    /// Cache counters since start (all zero without a cache).
    pub fn cache_stats(&self) -> CacheStats {
        let (errors, skipped) = self.cache.failures();
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        CacheStats {
            hits: get(&self.tally.hits),
            misses: get(&self.tally.misses),
            vector_hits: get(&self.tally.vector_hits),
            vector_misses: get(&self.tally.vector_misses),
            errors,
            skipped,
        }
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
    /// unknown or revoked. Read from the store on every call, so a
    /// revocation holds at once on every instance.
    pub async fn authenticate(&self, presented: &str) -> Result<Option<Principal>, Error> {
        let key = self.store.active_key(&crate::auth::hash(presented)).await?;
        Ok(key.as_ref().map(Principal::from_key))
    }

    /// The cache (or [`NoCache`]), for state shared between processes.
    pub fn cache(&self) -> Arc<dyn Cache> {
        self.cache.clone()
    }

    /// How many API keys are not revoked.
    pub async fn active_keys(&self) -> Result<usize, Error> {
        let keys = self.store.keys().await?;
        Ok(keys.iter().filter(|k| k.revoked_at.is_none()).count())
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    pub async fn remember(&self, req: RememberRequest) -> Result<RememberResult, Error> {
        let input = self.validate_input(req.text, req.messages)?;
        let metadata = validate_metadata(req.metadata)?;
        let work = Work {
            scope: &req.scope,
            input: &input,
            metadata: &metadata,
            infer: req.infer,
            replacing: Vec::new(),
            said_at: None,
        };
        match self.process(&work).await {
            Err(error)
                if is_model_failure(&error)
                    && self.settings.on_llm_error == OnLlmError::Verbatim =>
            {
                self.defer(&work, error).await
            }
            done => done,
        }
    }

    /// The pipeline after validation: extract, embed, reconcile, apply.
    async fn process(&self, work: &Work<'_>) -> Result<RememberResult, Error> {
        let Extracted { facts, mut usage } = if work.infer {
            self.extractor.extract(work.input).await?
        } else {
            VerbatimExtractor.extract(work.input).await?
        };
        if facts.is_empty() && work.infer && self.extractor.infers() {
            // The model found nothing worth remembering: a normal answer. A
            // re-extraction still retires what it stored verbatim.
            let copies: Vec<MemoryId> = work.replacing.iter().map(|m| m.id).collect();
            self.close_all(work, &copies).await?;
            return Ok(RememberResult {
                user_id: work.scope.user_id.clone(),
                results: Vec::new(),
                usage: Some(usage),
                deferred: None,
            });
        }
        if facts.is_empty() {
            return Err(Error::invalid(
                "messages",
                "nothing to remember: every message was empty or a system/tool message; \
                 send user or assistant messages with text",
            ));
        }
        let texts: Vec<String> = facts.iter().map(|f| f.text.clone()).collect();
        let embeddings = self.embedder.embed_documents(&texts).await?;
        let copies: Vec<MemoryId> = work.replacing.iter().map(|m| m.id).collect();
        let mut plans = if work.infer {
            let (plans, reconciling) = reconcile::plan(
                self.store.as_ref(),
                self.extractor.as_ref(),
                work.scope,
                &facts,
                &embeddings,
                self.settings.reconcile_threshold,
                &copies,
            )
            .await?;
            usage.add(&reconciling);
            plans
        } else {
            vec![Plan::Add; facts.len()]
        };
        if let Some(said_at) = work.said_at {
            self.keep_newer(&work.scope.user_id, said_at, &mut plans)
                .await?;
        }
        // Rewritten texts get their own vectors, in one batch.
        let rewritten: Vec<String> = plans
            .iter()
            .filter_map(|p| match p {
                Plan::Update { text, .. } => Some(text.clone()),
                _ => None,
            })
            .collect();
        let mut rewritten_vectors = if rewritten.is_empty() {
            Vec::new()
        } else {
            self.embedder.embed_documents(&rewritten).await?
        }
        .into_iter();

        // Memories a re-extraction replaces, taken one per added fact; any
        // left over are closed at the end.
        let mut replacing: VecDeque<Memory> = work.replacing.iter().cloned().collect();
        let mut results = Vec::with_capacity(facts.len());
        for ((fact, embedding), plan) in facts.into_iter().zip(embeddings).zip(plans) {
            let new = new_memory(work, fact, embedding);
            let event = match plan {
                Plan::Add => self.add_replacing(new, &mut replacing).await?,
                Plan::Keep { memory } => MemoryEvent::of(memory.id, memory.memory, Event::None),
                Plan::Update { id, text } => {
                    let vector = rewritten_vectors.next().unwrap_or_default();
                    let updated = self
                        .store
                        .update(&work.scope.user_id, id, &text, &vector, &new.actor)
                        .await;
                    match updated {
                        Ok(Some(m)) => MemoryEvent::of(m.id, m.memory, Event::Update),
                        // Gone meanwhile, or the new text is another memory's:
                        // the fact is added (or found known) instead.
                        Ok(None) | Err(StoreError::Conflict(_)) => {
                            self.add_replacing(new, &mut replacing).await?
                        }
                        Err(e) => return Err(e.into()),
                    }
                }
                Plan::Supersede { id } => self.supersede(id, new, &mut replacing).await?,
            };
            results.push(event);
        }
        let leftover: Vec<MemoryId> = replacing.iter().map(|m| m.id).collect();
        self.close_all(work, &leftover).await?;
        Ok(RememberResult {
            user_id: work.scope.user_id.clone(),
            results,
            usage: (usage.calls > 0).then_some(usage),
            deferred: None,
        })
    }

    /// Closes memory `old` and stores `new` in its place; when `old` is gone
    /// meanwhile, `new` is added as any new fact.
    async fn supersede(
        &self,
        old: MemoryId,
        new: NewMemory,
        replacing: &mut VecDeque<Memory>,
    ) -> Result<MemoryEvent, Error> {
        Ok(match self.store.supersede(old, new.clone()).await? {
            SupersedeOutcome::Superseded(m) => MemoryEvent {
                replaces: Some(old),
                ..MemoryEvent::of(m.id, m.memory, Event::Supersede)
            },
            SupersedeOutcome::Duplicate(m) => MemoryEvent::of(m.id, m.memory, Event::None),
            SupersedeOutcome::NotFound => self.add_replacing(new, replacing).await?,
        })
    }

    /// A new fact: in place of the next memory a re-extraction replaces
    /// (still current), else added as usual. A copy that already says the
    /// fact word for word is kept as it is.
    async fn add_replacing(
        &self,
        new: NewMemory,
        replacing: &mut VecDeque<Memory>,
    ) -> Result<MemoryEvent, Error> {
        let same = replacing.iter().position(|m| m.memory == new.content);
        if let Some(same) = same.and_then(|at| replacing.remove(at)) {
            return Ok(MemoryEvent::of(same.id, same.memory, Event::None));
        }
        while let Some(old) = replacing.pop_front() {
            match self.store.supersede(old.id, new.clone()).await? {
                SupersedeOutcome::Superseded(m) => {
                    return Ok(MemoryEvent {
                        replaces: Some(old.id),
                        ..MemoryEvent::of(m.id, m.memory, Event::Add)
                    });
                }
                SupersedeOutcome::Duplicate(m) => {
                    // Nothing changed: `old` is still to be replaced.
                    replacing.push_front(old);
                    return Ok(MemoryEvent::of(m.id, m.memory, Event::None));
                }
                // Forgotten or replaced meanwhile: try the next one.
                SupersedeOutcome::NotFound => {}
            }
        }
        self.add(new).await
    }

    /// Stores a new memory unless the store finds it already known.
    async fn add(&self, new: NewMemory) -> Result<MemoryEvent, Error> {
        Ok(
            match self
                .store
                .insert(new, self.settings.dedup_threshold)
                .await?
            {
                InsertOutcome::Added(m) => MemoryEvent::of(m.id, m.memory, Event::Add),
                InsertOutcome::Duplicate {
                    existing,
                    similarity,
                } => MemoryEvent {
                    similarity: Some(similarity),
                    ..MemoryEvent::of(existing.id, existing.memory, Event::None)
                },
            },
        )
    }

    pub async fn recall(&self, req: RecallRequest) -> Result<RecallResult, Error> {
        let query = self.validate_text("query", &req.query)?;
        let limit = validate_limit(req.limit, DEFAULT_RECALL_LIMIT)?;
        let filter = MetadataFilter::parse(req.filters.as_ref())?;
        let min_score = validate_min_score(req.min_score)?;
        let field = self
            .cache
            .enabled()
            .then(|| cache::recall_field(&req.scope, &query, limit, &filter));
        // Scores are absolute, so the cut applies to a cached answer as well.
        let mut result: RecallResult = self
            .through_cache(&req.scope.user_id, field, || {
                self.search(&req.scope, query, limit, &filter)
            })
            .await?;
        result.results.retain(|r| r.score >= min_score);
        Ok(result)
    }

    /// Recall without the cache: both searches, fusion, and the rows.
    async fn search(
        &self,
        scope: &Scope,
        query: String,
        limit: usize,
        filter: &MetadataFilter,
    ) -> Result<RecallResult, Error> {
        let at = SearchScope { scope, filter };
        let depth = (limit * CANDIDATES_PER_RESULT).max(MIN_CANDIDATES);
        let embedding = self.embed_query(&query).await?;
        let semantic = rank::Semantic::new(self.floor().await?);
        let candidates = self.store.candidates(at, &embedding, &query, depth).await?;
        let mut fused = rank::fuse(&candidates, semantic);
        fused.truncate(limit);

        let ids: Vec<MemoryId> = fused.iter().map(|f| f.id).collect();
        // A memory forgotten since the search is simply left out.
        let mut memories: HashMap<MemoryId, Memory> = self
            .store
            .get_many(&scope.user_id, &ids)
            .await?
            .into_iter()
            .map(|m| (m.id, m))
            .collect();
        let results = fused
            .into_iter()
            .filter_map(|f| {
                memories.remove(&f.id).map(|memory| ScoredMemory {
                    memory,
                    score: f.score,
                    vector_score: Some(f.vector_score),
                    keyword_score: Some(f.keyword_score),
                })
            })
            .collect();
        Ok(RecallResult {
            user_id: scope.user_id.clone(),
            query,
            results,
        })
    }

    /// The embedder's similarity between unrelated texts, measured once per
    /// process ([`calibration`]). Its queries go through the query cache, so
    /// further processes sharing a cache ask a remote embedder for none of them.
    async fn floor(&self) -> Result<f32, Error> {
        let floor = self
            .floor
            .get_or_try_init(|| async {
                let documents = self
                    .embedder
                    .embed_documents(&calibration::statements())
                    .await?;
                let mut queries = Vec::with_capacity(calibration::QUESTIONS.len());
                for question in calibration::QUESTIONS {
                    queries.push(self.embed_query(question).await?);
                }
                let floor = calibration::mean_similarity(&queries, &documents);
                tracing::info!(
                    embedder = %self.embedder.identity(),
                    floor,
                    "measured the embedder's similarity between unrelated texts"
                );
                Ok::<f32, Error>(floor)
            })
            .await?;
        Ok(*floor)
    }

    /// `build()`'s value, from the cache when an entry of the user's current
    /// version is there, else built and stored. `field: None` skips the cache.
    async fn through_cache<T, F, Fut>(
        &self,
        user_id: &str,
        field: Option<String>,
        build: F,
    ) -> Result<T, Error>
    where
        T: Serialize + DeserializeOwned,
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, Error>>,
    {
        let Some(field) = field else {
            return build().await;
        };
        // Both lookups at once. The version is read before build() reads any
        // data, so an entry stored under it is never older than it.
        let (version, stored) = tokio::join!(
            self.store.version(user_id),
            self.cache.get_entry(user_id, &field)
        );
        let Some(version) = version? else {
            // Nothing stored for the user: nothing worth caching, and no
            // version that a later write could be told apart from.
            return build().await;
        };
        if let Some(value) = stored.and_then(|bytes| entry::decode::<T>(&bytes, version)) {
            Tally::count(&self.tally.hits);
            return Ok(value);
        }
        Tally::count(&self.tally.misses);
        let value = build().await?;
        if let Some(bytes) = entry::encode(version, self.settings.cache_ttl, &value) {
            self.cache.put_entry(user_id, &field, version, bytes).await;
        }
        Ok(value)
    }

    /// The query's vector; remote embedders' vectors come from the cache when
    /// it has them (local ones are cheaper to compute than to fetch).
    async fn embed_query(&self, query: &str) -> Result<Vec<f32>, Error> {
        if !self.cache.enabled() || self.embedder.is_local() {
            return Ok(self.embedder.embed_query(query).await?);
        }
        let source = VectorSource {
            embedder: self.embedder.identity(),
            variant: self.embedder.query_variant(),
        };
        if let Some(vector) = self
            .cache
            .get_vector(&source, query)
            .await
            .and_then(|bytes| entry::decode_vector(&bytes, source.embedder.dims))
        {
            Tally::count(&self.tally.vector_hits);
            return Ok(vector);
        }
        Tally::count(&self.tally.vector_misses);
        let vector = self.embedder.embed_query(query).await?;
        self.cache
            .put_vector(&source, query, entry::encode_vector(&vector))
            .await;
        Ok(vector)
    }

    /// The user's profile: with `focus`, the memories most relevant to it
    /// first, then the most recent ones up to `limit`; without, most recent first.
    pub async fn user_context(
        &self,
        scope: &Scope,
        limit: Option<i64>,
        focus: Option<String>,
    ) -> Result<UserContext, Error> {
        let limit = validate_limit(limit, DEFAULT_CONTEXT_LIMIT)?;
        let focus = match focus.filter(|q| !q.trim().is_empty()) {
            Some(q) => Some(self.validate_text("query", &q)?),
            None => None,
        };
        let field = self
            .cache
            .enabled()
            .then(|| cache::context_field(scope, limit, focus.as_deref()));
        self.through_cache(&scope.user_id, field, || {
            self.build_context(scope, limit, focus)
        })
        .await
    }

    async fn build_context(
        &self,
        scope: &Scope,
        limit: usize,
        focus: Option<String>,
    ) -> Result<UserContext, Error> {
        let (recent, total) = self.store.recent(scope, limit).await?;
        let Some(query) = focus else {
            return Ok(UserContext::new(scope.user_id.clone(), recent, total, None));
        };
        let none = MetadataFilter::default();
        let relevant = self.search(scope, query, limit, &none).await?;
        let mut memories: Vec<Memory> = relevant.results.into_iter().map(|r| r.memory).collect();
        for m in recent {
            if memories.len() >= limit {
                break;
            }
            if !memories.iter().any(|seen| seen.id == m.id) {
                memories.push(m);
            }
        }
        Ok(UserContext::new(
            scope.user_id.clone(),
            memories,
            total,
            Some(&relevant.query),
        ))
    }

    pub async fn forget(&self, user_id: &str, target: ForgetTarget) -> Result<ForgetResult, Error> {
        match target {
            ForgetTarget::One(id) => {
                if !self.store.delete(user_id, id).await? {
                    return Err(Error::NotFound(format!(
                        "no memory {id} belongs to user \"{user_id}\"; nothing was deleted"
                    )));
                }
                if self.cache.enabled() {
                    // The floor keeps out entries of reads that began before
                    // the delete. Unreadable version: delete everything instead.
                    let floor = self.store.version(user_id).await.unwrap_or(None);
                    self.cache.purge_user(user_id, floor).await;
                }
                Ok(ForgetResult {
                    user_id: user_id.to_owned(),
                    deleted: 1,
                    memory_id: Some(id),
                })
            }
            ForgetTarget::AllOfUser => {
                let deleted = self.store.delete_user(user_id).await?;
                self.cache.purge_user(user_id, None).await;
                Ok(ForgetResult {
                    user_id: user_id.to_owned(),
                    deleted,
                    memory_id: None,
                })
            }
        }
    }

    /// The history of one of the user's memories, oldest first. An unknown
    /// id, or another user's, is [`Error::NotFound`].
    pub async fn history(&self, user_id: &str, id: MemoryId) -> Result<Vec<HistoryEntry>, Error> {
        let user_id = validate_id("user_id", user_id)?;
        let history = self.store.history(&user_id, id).await?;
        if history.is_empty() {
            return Err(not_theirs(id, &user_id));
        }
        Ok(history)
    }

    /// Exactly one of text and messages, non-empty and within the size cap.
    fn validate_input(
        &self,
        text: Option<String>,
        messages: Option<Vec<Message>>,
    ) -> Result<Input, Error> {
        match (text, messages) {
            (Some(_), Some(_)) => Err(Error::invalid(
                "text",
                "give either `text` or `messages`, not both",
            )),
            (None, None) => Err(Error::invalid(
                "text",
                "nothing to remember: give `text` (a string) or `messages` ([{role, content}])",
            )),
            (Some(text), None) => Ok(Input::Text(self.validate_text("text", &text)?)),
            (None, Some(messages)) => {
                if messages.is_empty() {
                    return Err(Error::invalid("messages", "must hold at least one message"));
                }
                if messages.len() > MAX_MESSAGES {
                    return Err(Error::invalid(
                        "messages",
                        format!(
                            "holds {} messages; at most {MAX_MESSAGES} are accepted",
                            messages.len()
                        ),
                    ));
                }
                let mut messages = messages;
                for m in &mut messages {
                    if let Some(raw) = &m.date {
                        m.date = Some(normalize_date(raw).ok_or_else(|| {
                            Error::invalid(
                                "messages",
                                format!(
                                    "date '{raw}' is neither a date (2026-11-20) nor an \
                                     RFC 3339 time (2026-11-20T09:30:00Z)"
                                ),
                            )
                        })?);
                    }
                    let role = m.role.to_ascii_lowercase();
                    if !matches!(role.as_str(), "user" | "assistant" | "system" | "tool") {
                        return Err(Error::invalid(
                            "messages",
                            format!(
                                "role '{}' is not accepted; use user, assistant, system or tool",
                                m.role
                            ),
                        ));
                    }
                }
                let total: usize = messages.iter().map(|m| m.content.len()).sum();
                self.check_size("messages", total)?;
                if messages.iter().all(|m| m.content.trim().is_empty()) {
                    return Err(Error::invalid(
                        "messages",
                        "every message is empty; nothing to remember",
                    ));
                }
                Ok(Input::Messages(messages))
            }
        }
    }

    fn validate_text(&self, field: &'static str, raw: &str) -> Result<String, Error> {
        self.check_size(field, raw.len())?;
        let text = raw.trim();
        if text.is_empty() {
            return Err(Error::invalid(field, "must not be empty"));
        }
        Ok(text.to_owned())
    }

    fn check_size(&self, field: &'static str, bytes: usize) -> Result<(), Error> {
        let max = self.settings.max_text_bytes;
        if bytes > max {
            return Err(Error::invalid(
                field,
                format!(
                    "is {bytes} bytes; at most {max} are accepted (ENGRAM_MAX_TEXT_BYTES); \
                     split it into smaller pieces"
                ),
            ));
        }
        Ok(())
    }

    /// What the user has stored: counts, categories, dates and size. An
    /// unknown user has all zeros.
    pub async fn stats(&self, user_id: &str) -> Result<UserStats, Error> {
        let user_id = validate_id("user_id", user_id)?;
        Ok(self.store.stats(&user_id).await?)
    }

    /// Everything stored for the user, in one snapshot: memories current and
    /// superseded with their history, and deferred remembers. An unknown
    /// user has an empty export.
    pub async fn export(&self, user_id: &str) -> Result<UserExport, Error> {
        let user_id = validate_id("user_id", user_id)?;
        Ok(self.store.export(&user_id).await?)
    }

    /// One of the user's memories, current or superseded, and whether it is
    /// still current. An unknown id, or another user's, is [`Error::NotFound`].
    pub async fn get(&self, user_id: &str, id: MemoryId) -> Result<MemoryDetail, Error> {
        let user_id = validate_id("user_id", user_id)?;
        let memory = self
            .store
            .get_many(&user_id, &[id])
            .await?
            .into_iter()
            .next()
            .ok_or_else(|| not_theirs(id, &user_id))?;
        // A closed memory's last history row is the SUPERSEDE that closed
        // it (nothing is written to a memory after that), at its valid_to.
        let history = self.store.history(&user_id, id).await?;
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
}

/// The answer to a read of a memory the user does not have (unknown, or
/// another user's: the two are not told apart).
fn not_theirs(id: MemoryId, user_id: &str) -> Error {
    Error::NotFound(format!("no memory {id} belongs to user \"{user_id}\""))
}

/// A fact of `work` as the store takes it: the request's metadata plus the
/// fact's role, which is also the history's actor.
fn new_memory(work: &Work<'_>, fact: Fact, embedding: Vec<f32>) -> NewMemory {
    let mut metadata = work.metadata.clone();
    if let Some(role) = &fact.role {
        metadata
            .entry("role")
            .or_insert_with(|| role.clone().into());
    }
    NewMemory {
        id: MemoryId::new(),
        scope: work.scope.clone(),
        content: fact.text,
        embedding,
        metadata,
        categories: fact.categories,
        actor: fact.role.unwrap_or_else(|| "user".to_owned()),
    }
}

/// `limit` within 1..=100, or the default when omitted.
pub fn validate_limit(raw: Option<i64>, default: usize) -> Result<usize, Error> {
    match raw {
        None => Ok(default),
        Some(n) if (1..=MAX_LIMIT as i64).contains(&n) => Ok(n as usize),
        Some(n) => Err(Error::invalid(
            "limit",
            format!("{n} is out of range; accepted 1..={MAX_LIMIT} (default {default})"),
        )),
    }
}

/// `min_score` as given: a number in 0..=1; `None` keeps every result (0).
pub fn validate_min_score(raw: Option<f64>) -> Result<f32, Error> {
    match raw {
        None => Ok(0.0),
        Some(x) if (0.0..=1.0).contains(&x) => Ok(x as f32),
        Some(x) => Err(Error::invalid(
            "min_score",
            format!("{x} is out of range; accepted 0..=1 (scores are on that scale)"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::embed::HashEmbedder;
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
            .remember(RememberRequest {
                scope: Scope::user(user),
                text: Some(text.into()),
                messages: None,
                metadata: None,
                infer: false,
            })
            .await
            .expect("remember");
        result.results[0].id
    }

    fn recall_request(user: &str, query: &str, min_score: Option<f64>) -> RecallRequest {
        RecallRequest {
            scope: Scope::user(user),
            query: query.into(),
            limit: Some(10),
            filters: None,
            min_score,
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
                    scope: &Scope::user("alice"),
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
            .recall(recall_request("alice", query, None))
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
            .recall(recall_request("alice", unrelated, None))
            .await
            .unwrap();
        assert_eq!(all.results.len(), 4, "without min_score: up to limit");
        assert!(
            all.results.iter().all(|r| r.score < rank::RELEVANT),
            "{:#?}",
            all.results
        );
        let cut = s
            .recall(recall_request(
                "alice",
                unrelated,
                Some(f64::from(rank::RELEVANT)),
            ))
            .await
            .unwrap();
        assert!(cut.results.is_empty(), "{:#?}", cut.results);

        let related = s
            .recall(recall_request(
                "alice",
                "espresso in Lisbon",
                Some(f64::from(rank::RELEVANT)),
            ))
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
                .recall(recall_request("alice", "espresso", Some(bad)))
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

        let detail = s.get("alice", id).await.unwrap();
        let memory = &detail.memory;
        assert_eq!((memory.id, memory.memory.as_str()), (id, "Lives in Lisbon"));
        assert!(detail.current && detail.valid_to.is_none());
        assert_eq!(s.history("alice", id).await.unwrap().len(), 1);
        // Ids are trimmed as everywhere else.
        assert_eq!(s.get(" alice ", id).await.unwrap().memory.id, id);

        // Closed: still readable by id, no longer current, since when.
        assert!(s.store.close("alice", id, "test").await.unwrap());
        let closed = s.get("alice", id).await.unwrap();
        assert!(!closed.current, "{closed:?}");
        let history = s.history("alice", id).await.unwrap();
        assert_eq!(closed.valid_to, history.last().map(|h| h.created_at));
        assert_eq!(history.len(), 2);

        let unknown = MemoryId::new();
        for (user, id) in [("bob", id), ("alice", unknown)] {
            let expected = format!("no memory {id} belongs to user \"{user}\"");
            match s.get(user, id).await {
                Err(Error::NotFound(message)) => assert_eq!(message, expected),
                other => panic!("get {user} {id}: {other:?}"),
            }
            match s.history(user, id).await {
                Err(Error::NotFound(message)) => assert_eq!(message, expected),
                other => panic!("history {user} {id}: {other:?}"),
            }
        }
    }

    #[tokio::test]
    async fn stats_and_exports_are_per_user_and_refuse_bad_ids() {
        let (s, _dir) = service().await;
        let id = remember(&s, "alice", "Lives in Lisbon").await;

        let stats = s.stats("alice").await.unwrap();
        assert_eq!((stats.user_id.as_str(), stats.memories), ("alice", 1));
        assert!(stats.storage_bytes > 0);
        let export = s.export(" alice").await.unwrap();
        assert_eq!(export.user_id, "alice");
        assert_eq!(export.memories.len(), 1);
        assert_eq!(export.memories[0].memory.id, id);
        assert_eq!(s.stats("nobody").await.unwrap().memories, 0);
        assert!(s.export("nobody").await.unwrap().memories.is_empty());

        for bad in ["", "  ", "a\u{7}b"] {
            assert!(
                matches!(
                    s.stats(bad).await,
                    Err(Error::InvalidInput {
                        field: "user_id",
                        ..
                    })
                ),
                "{bad:?}"
            );
            assert!(matches!(
                s.export(bad).await,
                Err(Error::InvalidInput { .. })
            ));
            assert!(matches!(
                s.get(bad, id).await,
                Err(Error::InvalidInput { .. })
            ));
            assert!(matches!(
                s.history(bad, id).await,
                Err(Error::InvalidInput { .. })
            ));
        }
        let long = "u".repeat(crate::model::MAX_ID_LEN + 1);
        assert!(matches!(
            s.stats(&long).await,
            Err(Error::InvalidInput { .. })
        ));
    }
}
