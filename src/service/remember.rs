//! The remember flow after validation: extract, embed, reconcile, apply;
//! and what it keeps when the model fails.
//!
//! With `on_llm_error = "verbatim"` a remember whose LLM (or embedder) call
//! failed keeps the text as given and queues a pending entry, which
//! `engram reextract` ([`super::reextract`]) later runs through this same
//! flow. With `"fail"` the remember fails and stores nothing. A remember
//! whose user's token budget is spent ([`super::budget`]) is kept and
//! queued the same way, whatever `on_llm_error` says, without calling the
//! model; its audit row's outcome is `token_budget`.
//!
//! Invariants:
//! * a message is never lost: either nothing was stored and the caller got
//!   the error, or its text is stored verbatim (searchable when the embedder
//!   answered) and, unless every part was already known, queued;
//! * a re-extraction replaces the verbatim copies by the extracted facts, and
//!   every copy it replaces or closes stays in history;
//! * re-extracted facts are older than anything stored since they were said:
//!   they never update or supersede a memory written after that.

use std::collections::VecDeque;

use chrono::{DateTime, Utc};
use serde_json::json;
use uuid::Uuid;

use super::MemoryService;
use super::ahead::ReadAhead;
use super::types::{DeferCause, Deferred, MemoryEvent, RememberResult};
use crate::config::RetentionConfig;
use crate::error::Error;
use crate::extract::{Extracted, Extractor, VerbatimExtractor};
use crate::model::{Event, Fact, Input, Memory, MemoryId, Message, Metadata, Scope};
use crate::reconcile::{self, Plan};
use crate::store::{
    AuditRecord, InsertOutcome, NewMemory, NewPending, SearchScope, StoreError, SupersedeOutcome,
    WriteBatch,
};

/// Who closes a verbatim copy that no extracted fact replaced, in history.
const REEXTRACT_ACTOR: &str = "reextract";

/// One remember's work after validation.
pub(super) struct Work<'a> {
    pub scope: &'a Scope,
    pub input: &'a Input,
    pub metadata: &'a Metadata,
    pub infer: bool,
    /// Verbatim copies the facts replace (a re-extraction), oldest first.
    pub replacing: Vec<Memory>,
    /// When the input was said, for a re-extraction: plans against memories
    /// written after it are kept out.
    pub said_at: Option<DateTime<Utc>>,
    /// The audit row of this remember (audit on), written with its writes.
    pub audit: Option<AuditRecord>,
    /// The caller's retention for these memories, in days (`ttl_days`):
    /// it can shorten the operator's, never lengthen it.
    pub ttl_days: Option<u32>,
}

impl Work<'_> {
    /// Appends this remember's audit row to `batch`, naming the memories
    /// it stored, changed or found known.
    async fn audit(
        &self,
        batch: &mut dyn WriteBatch,
        touched: impl Iterator<Item = MemoryId>,
    ) -> Result<(), Error> {
        self.audit_as(batch, touched, None).await
    }

    /// As [`Work::audit`], with `outcome` in place of the record's own
    /// (`ok`) when given.
    async fn audit_as(
        &self,
        batch: &mut dyn WriteBatch,
        touched: impl Iterator<Item = MemoryId>,
        outcome: Option<&str>,
    ) -> Result<(), Error> {
        if let Some(record) = &self.audit {
            let mut record = record.clone();
            crate::audit::with_memories(&mut record, touched.collect());
            if let Some(outcome) = outcome {
                outcome.clone_into(&mut record.outcome);
            }
            batch.audit(&record).await?;
        }
        Ok(())
    }
}

/// Failures of the model rather than of the request or the database.
pub(super) fn is_model_failure(error: &Error) -> bool {
    matches!(
        error,
        Error::Extract(_) | Error::Embed(_) | Error::Store(StoreError::Embed(_))
    )
}

impl MemoryService {
    /// The pipeline after validation: extract, embed, reconcile, apply.
    pub(super) async fn process(&self, work: &Work<'_>) -> Result<RememberResult, Error> {
        // The user's version, read while the model extracts and the facts
        // are embedded, for the reconciler's search (`ahead`).
        let reconciles = work.infer && self.extractor.reconciles();
        let mut ahead = ReadAhead::maybe(
            reconciles.then(|| self.store.version_now(SearchScope::unfiltered(work.scope))),
        );
        let Extracted { facts, mut usage } = if work.infer {
            let started = std::time::Instant::now();
            let extracted = ahead.beside(self.extractor.extract(work.input)).await;
            if self.extractor.infers() {
                crate::metrics::metrics()
                    .extraction_duration
                    .observe(started.elapsed().as_secs_f64());
            }
            extracted?
        } else {
            VerbatimExtractor.extract(work.input).await?
        };
        if facts.is_empty() && work.infer && self.extractor.infers() {
            // The model found nothing worth remembering: a normal answer. A
            // re-extraction still retires what it stored verbatim.
            let copies: Vec<MemoryId> = work.replacing.iter().map(|m| m.id).collect();
            let mut batch = self.store.begin(work.scope.user_id()).await?;
            close_all(batch.as_mut(), &copies).await?;
            work.audit(batch.as_mut(), copies.iter().copied()).await?;
            batch.commit().await?;
            return Ok(RememberResult {
                user_id: work.scope.user_id().to_string(),
                results: Vec::new(),
                usage: Some(usage),
                deferred: None,
                redacted: Vec::new(),
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
        let embeddings = ahead.beside(self.embedder.embed_documents(&texts)).await?;
        let seen = ahead.seen();
        let copies: Vec<MemoryId> = work.replacing.iter().map(|m| m.id).collect();
        let (mut plans, searched) = if work.infer {
            let reconciled = reconcile::plan(
                self.store.as_ref(),
                self.extractor.as_ref(),
                work.scope,
                &facts,
                &embeddings,
                self.settings.reconcile_threshold,
                &copies,
                seen,
            )
            .await?;
            usage.add(&reconciled.usage);
            (reconciled.plans, reconciled.searched)
        } else {
            (vec![Plan::Add; facts.len()], Vec::new())
        };
        if let Some(said_at) = work.said_at {
            self.keep_newer(work.scope.user_id(), said_at, &mut plans)
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

        let searched_at = |index: usize| {
            searched
                .get(index)
                .copied()
                .flatten()
                .and_then(|s| s.clear_of(self.settings.dedup_threshold))
        };
        let planned = facts.into_iter().zip(embeddings).zip(plans).enumerate();
        let planned: Vec<(NewMemory, Option<u64>, Plan)> = planned
            .map(|(index, ((fact, embedding), plan))| {
                let new = new_memory(work, fact, embedding, &self.settings.retention);
                (new, searched_at(index), plan)
            })
            .collect();
        // New facts that replace nothing (the usual remember), beside any
        // facts already known, go to the store together (on PostgreSQL, one
        // statement), and with those of the user's other remembers that
        // wait meanwhile (`grouped`).
        let adds_and_keeps = planned
            .iter()
            .all(|(_, _, p)| matches!(p, Plan::Add | Plan::Keep { .. }));
        let any_add = planned.iter().any(|(_, _, p)| matches!(p, Plan::Add));
        if work.replacing.is_empty() && adds_and_keeps && any_add {
            let mut memories = Vec::with_capacity(planned.len());
            let mut kept = Vec::new();
            for (position, (new, at, plan)) in planned.into_iter().enumerate() {
                match plan {
                    Plan::Keep { memory } => kept.push((position, known(memory))),
                    _ => memories.push((new, at)),
                }
            }
            let facts = NewFacts {
                user_id: work.scope.user_id().to_string(),
                memories,
                kept,
                audit: work.audit.clone(),
            };
            let results = self.groups.write(facts).await?;
            return Ok(RememberResult {
                user_id: work.scope.user_id().to_string(),
                results,
                usage: (usage.calls > 0).then_some(usage),
                deferred: None,
                redacted: Vec::new(),
            });
        }

        // Every write of this remember in one batch: all of its facts or none.
        let mut batch = self.store.begin(work.scope.user_id()).await?;
        let mut writes = Writer {
            batch: batch.as_mut(),
            dedup_threshold: self.settings.dedup_threshold,
            // Memories a re-extraction replaces, taken one per added fact;
            // any left over are closed at the end.
            replacing: work.replacing.iter().cloned().collect(),
            written: Vec::new(),
        };
        let mut results = Vec::with_capacity(planned.len());
        for (new, searched_at, plan) in planned {
            let vectors = &mut rewritten_vectors;
            results.push(writes.apply(plan, new, searched_at, vectors).await?);
        }
        let leftover: Vec<MemoryId> = writes.replacing.iter().map(|m| m.id).collect();
        close_all(writes.batch, &leftover).await?;
        let touched = results.iter().map(|e| e.id).chain(leftover.iter().copied());
        work.audit(writes.batch, touched).await?;
        crate::failpoint::crash_point("remember-before-commit");
        batch.commit().await?;
        Ok(RememberResult {
            user_id: work.scope.user_id().to_string(),
            results,
            usage: (usage.calls > 0).then_some(usage),
            deferred: None,
            redacted: Vec::new(),
        })
    }

    /// Keeps `work`'s text as given and queues it for `engram reextract`:
    /// the model failed (`reason`: its error), or was not called because
    /// the user's token budget is spent.
    pub(super) async fn defer(
        &self,
        work: &Work<'_>,
        cause: DeferCause,
        reason: String,
    ) -> Result<RememberResult, Error> {
        match cause {
            DeferCause::ModelFailed => tracing::warn!(
                user_id = %work.scope.user_id(),
                error = %reason,
                "the model failed; keeping the text as given for `engram reextract`"
            ),
            DeferCause::TokenBudget => tracing::info!(
                user_id = %work.scope.user_id(),
                "the user's token budget for today is spent; keeping the text as given \
                 for `engram reextract`"
            ),
        }
        let facts = VerbatimExtractor.extract(work.input).await?.facts;
        let texts: Vec<String> = facts.iter().map(|f| f.text.clone()).collect();
        let vectors = match self.embedder.embed_documents(&texts).await {
            Ok(vectors) => Some(vectors),
            Err(e) => {
                tracing::warn!(
                    user_id = %work.scope.user_id(),
                    error = %e,
                    "the embedder failed too; the text waits, unsearchable, for `engram reextract`"
                );
                None
            }
        };
        let searchable = vectors.is_some();
        // The kept copies and their pending entry in one batch: a copy is
        // never stored without the entry that will re-extract it.
        let mut batch = self.store.begin(work.scope.user_id()).await?;
        let mut writes = Writer {
            batch: batch.as_mut(),
            dedup_threshold: self.settings.dedup_threshold,
            replacing: VecDeque::new(),
            written: Vec::new(),
        };
        let mut results = Vec::new();
        let mut stored = Vec::new();
        for (fact, embedding) in facts.into_iter().zip(vectors.into_iter().flatten()) {
            let new = new_memory(work, fact, embedding, &self.settings.retention);
            let event = writes.add(new, None).await?;
            if event.event == Event::Add {
                stored.push(event.id);
            }
            results.push(event);
        }
        let pending_id = if searchable && stored.is_empty() {
            None
        } else {
            let id = Uuid::now_v7();
            writes
                .batch
                .add_pending(NewPending {
                    id,
                    scope: work.scope.clone(),
                    input: self
                        .seal_input(input_json(work.input, work.ttl_days), work.scope.user_id()),
                    metadata: work.metadata.clone(),
                    infer: work.infer,
                    memory_ids: stored,
                    error: reason.clone(),
                })
                .await?;
            Some(id)
        };
        // A budget deferral is told apart in the trail; a model failure
        // kept verbatim stays `ok`, as it always was.
        let outcome = (cause == DeferCause::TokenBudget).then_some(cause.as_str());
        work.audit_as(writes.batch, results.iter().map(|e| e.id), outcome)
            .await?;
        crate::failpoint::crash_point("remember-before-commit");
        batch.commit().await?;
        Ok(RememberResult {
            user_id: work.scope.user_id().to_string(),
            results,
            usage: None,
            deferred: Some(Deferred {
                cause,
                reason,
                pending_id,
                searchable,
            }),
            redacted: Vec::new(),
        })
    }

    /// Turns plans that would update or supersede a memory written after
    /// `said_at` into keeps: an older fact never overrides a newer one.
    async fn keep_newer(
        &self,
        user_id: &str,
        said_at: DateTime<Utc>,
        plans: &mut [Plan],
    ) -> Result<(), Error> {
        let targets: Vec<MemoryId> = plans
            .iter()
            .filter_map(|p| match p {
                Plan::Update { id, .. } | Plan::Supersede { id } => Some(*id),
                _ => None,
            })
            .collect();
        if targets.is_empty() {
            return Ok(());
        }
        let newer: Vec<_> = self
            .store
            .get_many(user_id, &targets)
            .await?
            .into_iter()
            .filter(|m| m.updated_at > said_at)
            .collect();
        for plan in plans.iter_mut() {
            let target = match plan {
                Plan::Update { id, .. } | Plan::Supersede { id } => *id,
                _ => continue,
            };
            if let Some(memory) = newer.iter().find(|m| m.id == target) {
                *plan = Plan::Keep {
                    memory: memory.clone(),
                };
            }
        }
        Ok(())
    }
}

/// The writes of one remember, into its batch.
struct Writer<'b> {
    batch: &'b mut dyn WriteBatch,
    dedup_threshold: f32,
    /// Verbatim copies a re-extraction replaces, not replaced yet, oldest first.
    replacing: VecDeque<Memory>,
    /// Every vector this batch has written so far: no search before the
    /// batch saw them.
    written: Vec<Vec<f32>>,
}

impl Writer<'_> {
    /// Carries out `plan` for the fact `new` stands for: `searched_at` as
    /// for [`Writer::add`]; an update takes its vector from
    /// `rewritten_vectors`.
    async fn apply(
        &mut self,
        plan: Plan,
        new: NewMemory,
        searched_at: Option<u64>,
        rewritten_vectors: &mut impl Iterator<Item = Vec<f32>>,
    ) -> Result<MemoryEvent, Error> {
        Ok(match plan {
            Plan::Add => self.add_replacing(new, searched_at).await?,
            Plan::Keep { memory } => known(memory),
            Plan::Update { id, text } => {
                let vector = rewritten_vectors.next().unwrap_or_default();
                match self.update(id, &text, vector, &new.actor).await {
                    Ok(Some(m)) => MemoryEvent::of(m.id, m.memory, Event::Update),
                    // Gone meanwhile, or the new text is another memory's:
                    // the fact is added (or found known) instead.
                    Ok(None) | Err(StoreError::Conflict(_)) => {
                        self.add_replacing(new, None).await?
                    }
                    Err(e) => return Err(e.into()),
                }
            }
            Plan::Supersede { id } => self.supersede(id, new).await?,
        })
    }

    /// Rewrites memory `id` ([`WriteBatch::update`]).
    async fn update(
        &mut self,
        id: MemoryId,
        text: &str,
        vector: Vec<f32>,
        actor: &str,
    ) -> Result<Option<Memory>, StoreError> {
        let updated = self.batch.update(id, text, &vector, actor).await;
        if matches!(updated, Ok(Some(_))) {
            self.written.push(vector);
        }
        updated
    }

    /// Closes memory `old` and stores `new` in its place; when `old` is gone
    /// meanwhile, `new` is added as any new fact.
    async fn supersede(&mut self, old: MemoryId, new: NewMemory) -> Result<MemoryEvent, Error> {
        let vector = new.embedding.clone();
        Ok(match self.batch.supersede(old, new.clone()).await? {
            SupersedeOutcome::Superseded(m) => {
                self.written.push(vector);
                MemoryEvent {
                    replaces: Some(old),
                    ..MemoryEvent::of(m.id, m.memory, Event::Supersede)
                }
            }
            SupersedeOutcome::Duplicate(m) => MemoryEvent::of(m.id, m.memory, Event::None),
            SupersedeOutcome::NotFound => self.add_replacing(new, None).await?,
        })
    }

    /// A new fact: in place of the next memory a re-extraction replaces
    /// (still current), else added as usual ([`Writer::add`], with
    /// `searched_at`). A copy that already says the fact word for word is
    /// kept as it is.
    async fn add_replacing(
        &mut self,
        new: NewMemory,
        searched_at: Option<u64>,
    ) -> Result<MemoryEvent, Error> {
        let same = self.replacing.iter().position(|m| m.memory == new.content);
        if let Some(same) = same.and_then(|at| self.replacing.remove(at)) {
            return Ok(MemoryEvent::of(same.id, same.memory, Event::None));
        }
        while let Some(old) = self.replacing.pop_front() {
            match self.batch.supersede(old.id, new.clone()).await? {
                SupersedeOutcome::Superseded(m) => {
                    self.written.push(new.embedding);
                    return Ok(MemoryEvent {
                        replaces: Some(old.id),
                        ..MemoryEvent::of(m.id, m.memory, Event::Add)
                    });
                }
                SupersedeOutcome::Duplicate(m) => {
                    // Nothing changed: `old` is still to be replaced.
                    self.replacing.push_front(old);
                    return Ok(MemoryEvent::of(m.id, m.memory, Event::None));
                }
                // Forgotten or replaced meanwhile: try the next one.
                SupersedeOutcome::NotFound => {}
            }
        }
        self.add(new, searched_at).await
    }

    /// Stores a new memory unless the store finds it already known.
    /// `searched_at`: the version at which a search of the whole user found
    /// no memory near it; the store may rely on it
    /// ([`WriteBatch::insert_searched`]) unless this batch has written a
    /// vector near it since.
    async fn add(
        &mut self,
        new: NewMemory,
        searched_at: Option<u64>,
    ) -> Result<MemoryEvent, Error> {
        let mut events = self.add_all(vec![(new, searched_at)]).await?;
        events.pop().ok_or_else(|| {
            StoreError::Corrupt("a store answered no outcome for a memory".into()).into()
        })
    }

    /// [`Writer::add`] of several new memories at once
    /// ([`WriteBatch::insert_all`]), in order. A memory's claim stands only
    /// if no vector this batch wrote, nor any other of `news`, is near it.
    async fn add_all(
        &mut self,
        news: Vec<(NewMemory, Option<u64>)>,
    ) -> Result<Vec<MemoryEvent>, Error> {
        let threshold = self.dedup_threshold;
        let near: Vec<bool> = (0..news.len())
            .map(|i| {
                let others = news
                    .iter()
                    .enumerate()
                    .filter(|(j, _)| *j != i)
                    .map(|(_, (other, _))| &other.embedding);
                let vector = &news[i].0.embedding;
                self.written
                    .iter()
                    .chain(others)
                    .any(|w| crate::embed::might_be_near(w, vector, threshold))
            })
            .collect();
        let vectors: Vec<Vec<f32>> = news.iter().map(|(new, _)| new.embedding.clone()).collect();
        let claimed: Vec<(NewMemory, Option<u64>)> = news
            .into_iter()
            .zip(near)
            .map(|((new, searched_at), near)| (new, searched_at.filter(|_| !near)))
            .collect();
        let outcomes = self.batch.insert_all(claimed, threshold).await?;
        if outcomes.len() != vectors.len() {
            return Err(StoreError::Corrupt(format!(
                "a store answered {} outcomes for {} memories",
                outcomes.len(),
                vectors.len()
            ))
            .into());
        }
        let mut events = Vec::with_capacity(outcomes.len());
        for (outcome, vector) in outcomes.into_iter().zip(vectors) {
            events.push(match outcome {
                InsertOutcome::Added(m) => {
                    self.written.push(vector);
                    MemoryEvent::of(m.id, m.memory, Event::Add)
                }
                InsertOutcome::Duplicate {
                    existing,
                    similarity,
                } => MemoryEvent {
                    similarity: Some(similarity),
                    ..MemoryEvent::of(existing.id, existing.memory, Event::None)
                },
            });
        }
        Ok(events)
    }
}

/// A remember's facts when all are new or already known: what
/// [`write_new`] writes.
pub(super) struct NewFacts {
    pub user_id: String,
    /// The memories, each with the version at which a search of the whole
    /// user found nothing near it ([`Writer::add`]).
    pub memories: Vec<(NewMemory, Option<u64>)>,
    /// The facts the reconciler found known, each with its place among
    /// the remember's facts (ascending) and its event (`NONE`): nothing to
    /// write, but answered and audited in that place, as a batch would.
    pub kept: Vec<(usize, MemoryEvent)>,
    /// The remember's audit row (audit on), to name what it stored.
    pub audit: Option<AuditRecord>,
}

impl NewFacts {
    /// The remember's events in its facts' order: `written` (one per
    /// memory, in order) with the kept facts' events in their places.
    fn in_order(&self, written: Vec<MemoryEvent>) -> Vec<MemoryEvent> {
        let mut events = written;
        for (position, event) in &self.kept {
            events.insert((*position).min(events.len()), event.clone());
        }
        events
    }

    /// The remember's audit row naming its events' memories, in order.
    fn audit_of(&self, events: &[MemoryEvent]) -> Option<AuditRecord> {
        self.audit.as_ref().map(|record| {
            let mut record = record.clone();
            crate::audit::with_memories(&mut record, events.iter().map(|e| e.id).collect());
            record
        })
    }
}

/// A fact the reconciler found already said by `memory`: answered `NONE`
/// with it, and nothing written.
fn known(memory: Memory) -> MemoryEvent {
    MemoryEvent::of(memory.id, memory.memory, Event::None)
}

/// Writes the facts of several remembers of one user (all new, beside any
/// already known) in one batch: one transaction, their memories in one
/// [`Writer::add_all`] (so each is deduplicated against the others too),
/// each remember's audit row naming its own. Answers each remember's
/// events, in order.
pub(super) async fn write_new(
    store: &dyn crate::store::Store,
    dedup_threshold: f32,
    remembers: &[NewFacts],
) -> Result<Vec<Vec<MemoryEvent>>, Error> {
    let Some(first) = remembers.first() else {
        return Ok(Vec::new());
    };
    let mut batch = store.begin(&first.user_id).await?;
    let mut writes = Writer {
        batch: batch.as_mut(),
        dedup_threshold,
        replacing: VecDeque::new(),
        written: Vec::new(),
    };
    let memories = remembers
        .iter()
        .flat_map(|r| r.memories.iter().cloned())
        .collect();
    let mut events = writes.add_all(memories).await?.into_iter();
    let mut answers = Vec::with_capacity(remembers.len());
    for remember in remembers {
        let own = remember.in_order(events.by_ref().take(remember.memories.len()).collect());
        if let Some(record) = remember.audit_of(&own) {
            writes.batch.audit(&record).await?;
        }
        answers.push(own);
    }
    crate::failpoint::crash_point("remember-before-commit");
    batch.commit().await?;
    Ok(answers)
}

/// Writes the facts of remembers of several users (all new) in one round
/// ([`crate::store::Writes::add_round`]): each user's memories as one part,
/// their claims standing only where no other memory of the part is near
/// (as [`Writer::add_all`] has it), each remember's audit row naming its
/// own. Answers each remember's events, in order; `None` when the store
/// declined the round and wrote nothing.
pub(super) async fn write_round(
    store: &dyn crate::store::Store,
    dedup_threshold: f32,
    remembers: &[&NewFacts],
) -> Result<Option<Vec<Vec<MemoryEvent>>>, Error> {
    // A round writes every memory or none: each remember's events are its
    // memories added, with its kept facts in their places.
    let answers: Vec<Vec<MemoryEvent>> = remembers
        .iter()
        .map(|remember| {
            let added = remember.memories.iter();
            let added =
                added.map(|(new, _)| MemoryEvent::of(new.id, new.content.clone(), Event::Add));
            remember.in_order(added.collect())
        })
        .collect();
    let mut parts: Vec<crate::store::RoundPart> = Vec::new();
    for (remember, events) in remembers.iter().zip(&answers) {
        let at = match parts.iter().position(|p| p.user_id == remember.user_id) {
            Some(at) => at,
            None => {
                parts.push(crate::store::RoundPart {
                    user_id: remember.user_id.clone(),
                    memories: Vec::new(),
                    audits: Vec::new(),
                });
                parts.len() - 1
            }
        };
        let part = &mut parts[at];
        part.memories.extend(remember.memories.iter().cloned());
        if let Some(record) = remember.audit_of(events) {
            part.audits.push(record);
        }
    }
    for part in &mut parts {
        let near: Vec<bool> = (0..part.memories.len())
            .map(|i| {
                let vector = &part.memories[i].0.embedding;
                part.memories.iter().enumerate().any(|(j, (other, _))| {
                    j != i && crate::embed::might_be_near(&other.embedding, vector, dedup_threshold)
                })
            })
            .collect();
        for ((_, claim), near) in part.memories.iter_mut().zip(near) {
            if near {
                *claim = None;
            }
        }
    }
    if store.add_round(parts, dedup_threshold).await?.is_none() {
        return Ok(None);
    }
    Ok(Some(answers))
}

/// Closes the verbatim copies no fact replaced (a re-extraction's rest).
async fn close_all(batch: &mut dyn WriteBatch, ids: &[MemoryId]) -> Result<(), Error> {
    for &id in ids {
        batch.close(id, REEXTRACT_ACTOR).await?;
    }
    Ok(())
}

/// A fact of `work` as the store takes it: the request's metadata plus the
/// fact's role, which is also the history's actor, and its expiry.
///
/// Expiry counts from when the text came into engram: now, or for a
/// re-extraction when its remember was deferred; never from a date the
/// input carries (a message's `date`), so a memory brought in with old
/// dates gets its full retention from its arrival.
fn new_memory(
    work: &Work<'_>,
    fact: Fact,
    embedding: Vec<f32>,
    retention: &RetentionConfig,
) -> NewMemory {
    let stored_at = work.said_at.unwrap_or_else(Utc::now);
    let expires_at = retention.expiry(stored_at, &fact.categories, work.ttl_days);
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
        expires_at,
    }
}

/// The input as a pending entry stores it, with the caller's `ttl_days`
/// (which the re-extracted memories keep).
fn input_json(input: &Input, ttl_days: Option<u32>) -> serde_json::Value {
    let mut value = match input {
        Input::Text(text) => json!({ "text": text }),
        Input::Messages(messages) => json!({ "messages": messages }),
    };
    if let (Some(days), Some(object)) = (ttl_days, value.as_object_mut()) {
        object.insert("ttl_days".to_owned(), days.into());
    }
    value
}

/// The `ttl_days` a pending entry's input keeps, if any.
pub(super) fn ttl_from_json(value: &serde_json::Value) -> Option<u32> {
    value
        .get("ttl_days")
        .and_then(serde_json::Value::as_u64)
        .and_then(|days| u32::try_from(days).ok())
}

pub(super) fn input_from_json(value: &serde_json::Value) -> Result<Input, String> {
    if let Some(text) = value.get("text").and_then(|t| t.as_str()) {
        return Ok(Input::Text(text.to_owned()));
    }
    let messages = value
        .get("messages")
        .cloned()
        .ok_or_else(|| "a pending entry holds neither text nor messages".to_owned())?;
    serde_json::from_value::<Vec<Message>>(messages)
        .map(Input::Messages)
        .map_err(|e| format!("a pending entry's messages do not parse: {e}"))
}
