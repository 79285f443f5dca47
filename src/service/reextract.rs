//! `engram reextract`: finishes what a remember kept as given when the model
//! failed (see [`super::remember`]), by running the pending entry through
//! the remember flow with the copies it replaces. One way: this step calls
//! into the flow; the flow knows nothing of it.
//!
//! Forgetting a verbatim copy or the user drops the entry (in the store), so
//! a forgotten text is never extracted back.
//!
//! The token budget ([`super::budget`]) holds here too: an entry that would
//! call the model for a user whose budget for the day is spent stays
//! queued, untouched (no attempt counted), and is reported as held back;
//! the tokens of each entry that ran count against its user's budget.

use chrono::{DateTime, Utc};
use serde::Serialize;
use uuid::Uuid;

use super::MemoryService;
use super::remember::{Work, input_from_json, ttl_from_json};
use super::types::RememberResult;
use crate::auth::Principal;
use crate::error::Error;
use crate::model::{Input, Memory, MemoryId, Message};
use crate::store::StoreError;

/// What one `engram reextract` run did.
#[derive(Debug, Default, Serialize)]
pub struct ReextractReport {
    pub finished: Vec<Reextracted>,
    pub failed: Vec<ReextractFailure>,
    /// Entries whose verbatim copies wait for the llm extractor, which is
    /// not configured.
    pub skipped: usize,
    /// Entries left queued because their user's token budget for the day
    /// is spent.
    pub over_budget: Vec<OverBudget>,
    /// Entries still pending after the run.
    pub remaining: u64,
}

#[derive(Debug, Serialize)]
pub struct Reextracted {
    pub id: Uuid,
    pub result: RememberResult,
}

/// An entry held back by its user's token budget.
#[derive(Debug, Serialize)]
pub struct OverBudget {
    pub id: Uuid,
    pub user_id: String,
    /// The budget, the day's usage, and when the entry can run.
    pub reason: String,
}

#[derive(Debug, Serialize)]
pub struct ReextractFailure {
    pub id: Uuid,
    pub user_id: String,
    pub error: String,
}

impl MemoryService {
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
            let user_id = entry.scope.user_id();
            if entry.infer
                && self.extractor.infers()
                && let Some(spent) = self.budget_spent(user_id).await?
            {
                report.over_budget.push(OverBudget {
                    id: entry.id,
                    user_id: user_id.to_string(),
                    reason: spent.held_back(),
                });
                continue;
            }
            let input = self.open_input(&entry.input, entry.scope.user_id());
            let outcome = match input.and_then(|input| input_from_json(&input)) {
                Ok(input) => {
                    let input = dated(input, pending.created_at);
                    let replacing = self
                        .copies(entry.scope.user_id(), &entry.memory_ids)
                        .await?;
                    let work = Work {
                        scope: &entry.scope,
                        input: &input,
                        metadata: &entry.metadata,
                        infer: entry.infer,
                        replacing,
                        said_at: Some(pending.created_at),
                        ttl_days: ttl_from_json(&entry.input),
                        audit: self.audit.as_ref().map(|a| {
                            a.record(
                                &Principal::Operator,
                                "reextract",
                                Some(entry.scope.user_id()),
                                None,
                            )
                        }),
                    };
                    self.process(&work).await
                }
                Err(message) => Err(StoreError::Corrupt(message).into()),
            };
            match outcome {
                Ok(result) => {
                    self.count_tokens(user_id, result.usage.as_ref()).await;
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
                        user_id: user_id.to_string(),
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
