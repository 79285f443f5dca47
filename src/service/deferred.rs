//! When the model fails. With `on_llm_error = "verbatim"` a remember whose
//! LLM (or embedder) call failed keeps the text as given and is queued as a
//! pending entry; `engram reextract` ([`MemoryService::reextract`]) runs the
//! pipeline on it later. With `"fail"` the remember fails and stores nothing.
//!
//! Invariants:
//! * a message is never lost: either nothing was stored and the caller got
//!   the error, or its text is stored verbatim (searchable when the embedder
//!   answered) and, unless every part was already known, queued;
//! * re-extraction replaces the verbatim copies by the extracted facts, and
//!   every copy it replaces or closes stays in history;
//! * re-extracted facts are older than anything stored since they were said:
//!   they never update or supersede a memory written after that;
//! * forgetting a verbatim copy or the user drops the entry (in the store),
//!   so a forgotten text is never extracted back.

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::Serialize;
use serde_json::json;
use uuid::Uuid;

use super::{MemoryService, RememberResult, new_memory};
use crate::error::Error;
use crate::extract::{Extractor, VerbatimExtractor};
use crate::model::{Event, Input, Memory, MemoryId, Message, Metadata, Scope};
use crate::reconcile::Plan;
use crate::store::{NewPending, StoreError};

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
}

/// Why a remember was kept as given, in its result.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
pub struct Deferred {
    /// What failed, as its client reported it.
    pub reason: String,
    /// The entry `engram reextract` will finish; absent when every part was
    /// already known, so nothing is left to do.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pending_id: Option<Uuid>,
    /// False when the embedder failed too: the text is kept, but recall
    /// finds it only after `engram reextract` has run.
    pub searchable: bool,
}

/// What one `engram reextract` run did.
#[derive(Debug, Default, Serialize)]
pub struct ReextractReport {
    pub finished: Vec<Reextracted>,
    pub failed: Vec<ReextractFailure>,
    /// Entries whose verbatim copies wait for the llm extractor, which is
    /// not configured.
    pub skipped: usize,
    /// Entries still pending after the run.
    pub remaining: u64,
}

#[derive(Debug, Serialize)]
pub struct Reextracted {
    pub id: Uuid,
    pub result: RememberResult,
}

#[derive(Debug, Serialize)]
pub struct ReextractFailure {
    pub id: Uuid,
    pub user_id: String,
    pub error: String,
}

/// Failures of the model rather than of the request or the database.
pub(super) fn is_model_failure(error: &Error) -> bool {
    matches!(
        error,
        Error::Extract(_) | Error::Embed(_) | Error::Store(StoreError::Embed(_))
    )
}

impl MemoryService {
    /// Keeps `work`'s text as given after the model failed with `error`.
    pub(super) async fn defer(
        &self,
        work: &Work<'_>,
        error: Error,
    ) -> Result<RememberResult, Error> {
        let reason = error.to_string();
        tracing::warn!(
            user_id = %work.scope.user_id,
            error = %reason,
            "the model failed; keeping the text as given for `engram reextract`"
        );
        let facts = VerbatimExtractor.extract(work.input).await?.facts;
        let texts: Vec<String> = facts.iter().map(|f| f.text.clone()).collect();
        let mut results = Vec::new();
        let mut stored = Vec::new();
        let searchable = match self.embedder.embed_documents(&texts).await {
            Ok(vectors) => {
                for (fact, embedding) in facts.into_iter().zip(vectors) {
                    let event = self.add(new_memory(work, fact, embedding)).await?;
                    if event.event == Event::Add {
                        stored.push(event.id);
                    }
                    results.push(event);
                }
                true
            }
            Err(e) => {
                tracing::warn!(
                    user_id = %work.scope.user_id,
                    error = %e,
                    "the embedder failed too; the text waits, unsearchable, for `engram reextract`"
                );
                false
            }
        };
        let pending_id = if searchable && stored.is_empty() {
            None
        } else {
            let id = Uuid::now_v7();
            self.store
                .add_pending(NewPending {
                    id,
                    scope: work.scope.clone(),
                    input: input_json(work.input),
                    metadata: work.metadata.clone(),
                    infer: work.infer,
                    memory_ids: stored,
                    error: reason.clone(),
                })
                .await?;
            Some(id)
        };
        Ok(RememberResult {
            user_id: work.scope.user_id.clone(),
            results,
            usage: None,
            deferred: Some(Deferred {
                reason,
                pending_id,
                searchable,
            }),
        })
    }

    /// Runs the pipeline on up to `limit` pending entries, oldest first. An
    /// entry that fails again stays, with the new error and one more attempt.
    pub async fn reextract(&self, limit: usize) -> Result<ReextractReport, Error> {
        let (entries, _) = self.store.pending(limit).await?;
        let mut report = ReextractReport::default();
        for pending in entries {
            let entry = &pending.entry;
            // Copies already stored wait for a model; one never stored (the
            // embedder failed) is stored now, as the verbatim extractor would.
            if entry.infer && !self.extractor.infers() && !entry.memory_ids.is_empty() {
                report.skipped += 1;
                continue;
            }
            let outcome = match input_from_json(&entry.input) {
                Ok(input) => {
                    let input = dated(input, pending.created_at);
                    let replacing = self.copies(&entry.scope.user_id, &entry.memory_ids).await?;
                    let work = Work {
                        scope: &entry.scope,
                        input: &input,
                        metadata: &entry.metadata,
                        infer: entry.infer,
                        replacing,
                        said_at: Some(pending.created_at),
                    };
                    self.process(&work).await
                }
                Err(message) => Err(StoreError::Corrupt(message).into()),
            };
            let user_id = &entry.scope.user_id;
            match outcome {
                Ok(result) => {
                    self.store.finish_pending(user_id, entry.id).await?;
                    report.finished.push(Reextracted {
                        id: entry.id,
                        result,
                    });
                }
                Err(error) => {
                    let error = error.to_string();
                    self.store.retry_pending(user_id, entry.id, &error).await?;
                    report.failed.push(ReextractFailure {
                        id: entry.id,
                        user_id: user_id.clone(),
                        error,
                    });
                }
            }
        }
        report.remaining = self.store.pending(0).await?.1;
        Ok(report)
    }

    /// A pending entry's verbatim copies, in the order they were stored.
    async fn copies(&self, user_id: &str, ids: &[MemoryId]) -> Result<Vec<Memory>, Error> {
        let mut copies = self.store.get_many(user_id, ids).await?;
        copies.sort_by_key(|m| ids.iter().position(|id| *id == m.id));
        Ok(copies)
    }

    /// Closes the verbatim copies no fact replaced (a re-extraction's rest).
    pub(super) async fn close_all(&self, work: &Work<'_>, ids: &[MemoryId]) -> Result<(), Error> {
        for &id in ids {
            self.store
                .close(&work.scope.user_id, id, REEXTRACT_ACTOR)
                .await?;
        }
        Ok(())
    }

    /// Turns plans that would update or supersede a memory written after
    /// `said_at` into keeps: an older fact never overrides a newer one.
    pub(super) async fn keep_newer(
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

/// The input as a pending entry stores it.
fn input_json(input: &Input) -> serde_json::Value {
    match input {
        Input::Text(text) => json!({ "text": text }),
        Input::Messages(messages) => json!({ "messages": messages }),
    }
}

fn input_from_json(value: &serde_json::Value) -> Result<Input, String> {
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

/// The input with every message dated (`at` where it had no date), so the
/// extractor resolves "tomorrow" against when it was said, not today.
fn dated(input: Input, at: DateTime<Utc>) -> Input {
    let date = Some(at.format("%Y-%m-%d").to_string());
    let messages = match input {
        Input::Text(content) => vec![Message {
            role: "user".into(),
            content,
            date,
        }],
        Input::Messages(messages) => messages
            .into_iter()
            .map(|m| Message {
                date: m.date.or_else(|| date.clone()),
                ..m
            })
            .collect(),
    };
    Input::Messages(messages)
}
