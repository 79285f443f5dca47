//! What the service's flows give, as it serialises. (What they take is
//! [`crate::params`]: the arguments both doors accept.)

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use uuid::Uuid;

use crate::extract::Usage;
use crate::model::{Degraded, Event, Memory, MemoryId};
use crate::secrets::Kind;
use crate::store::HistoryEntry;

/// What happened to one fact.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
pub struct MemoryEvent {
    pub id: MemoryId,
    /// The memory's text (for NONE: the text already stored).
    pub memory: String,
    pub event: Event,
    /// For NONE found by deduplication: the cosine similarity with the memory already stored.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub similarity: Option<f32>,
    /// For SUPERSEDE: the memory this one replaces (closed, kept in history).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replaces: Option<MemoryId>,
}

impl MemoryEvent {
    pub(super) fn of(id: MemoryId, memory: String, event: Event) -> Self {
        Self {
            id,
            memory,
            event,
            similarity: None,
            replaces: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
pub struct RememberResult {
    pub user_id: String,
    pub results: Vec<MemoryEvent>,
    /// Model calls and tokens this remember cost; absent when no model was asked.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
    /// Present when the text was kept as given instead of extracted: the
    /// model failed (`on_llm_error = "verbatim"`), or the user's daily token
    /// budget is spent. Why, and what `engram reextract` will finish.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deferred: Option<Deferred>,
    /// Secrets replaced by `[REDACTED:kind]` before anything was extracted,
    /// embedded or stored (`ENGRAM_SECRETS=redact`); absent when none.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub redacted: Vec<Redaction>,
}

/// Secrets of one kind replaced in one field of a remember.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, JsonSchema)]
pub struct Redaction {
    /// The argument they were in: `text`, `messages` or `metadata`.
    pub field: String,
    /// What they were: the name their `[REDACTED:kind]` marker shows.
    pub kind: Kind,
    /// How many were replaced.
    #[schemars(schema_with = "crate::model::count_schema")]
    pub count: u64,
}

/// A recalled memory with its scores.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ScoredMemory {
    #[serde(flatten)]
    pub memory: Memory,
    /// Relevance to the query in 0..=1, the same scale for every query: the
    /// mean of the semantic relevance (cosine similarity above the embedder's
    /// level for unrelated texts) and the keyword relevance. Unrelated
    /// memories score near 0; below 0.2 little is shared with the query.
    pub score: f32,
    /// Cosine similarity of the memory and the query vectors (raw, as the embedder gives it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vector_score: Option<f32>,
    /// Keyword relevance in 0..=1: BM25 over the user's memories, where 1 means
    /// every query word is in the memory.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub keyword_score: Option<f32>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct RecallResult {
    pub user_id: String,
    pub query: String,
    pub results: Vec<ScoredMemory>,
    /// Present when the search ran without one of its signals (`embedder`:
    /// keywords alone); such an answer is never cached.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub degraded: Option<Degraded>,
}

/// One memory read by id, with whether it is still current.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
pub struct MemoryDetail {
    #[serde(flatten)]
    pub memory: Memory,
    /// False once a newer memory superseded it (or it was closed); its
    /// history says by what.
    pub current: bool,
    /// When it stopped being current; absent while it is.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub valid_to: Option<chrono::DateTime<chrono::Utc>>,
}

#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
pub struct ForgetResult {
    pub user_id: String,
    /// How many memories were deleted.
    #[schemars(schema_with = "crate::model::count_schema")]
    pub deleted: u64,
    /// The deleted memory, when one was named.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory_id: Option<MemoryId>,
    /// When a user was erased: how many of their API keys were deleted.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::model::count_schema")]
    pub keys_deleted: Option<u64>,
}

/// Why a remember was kept as given, in its result.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
pub struct Deferred {
    /// Why, for a program: `model_failed` or `token_budget`.
    pub cause: DeferCause,
    /// Why, for a person: what failed, as its client reported it; or the
    /// budget, the day's usage, and when `engram reextract` can finish it.
    pub reason: String,
    /// The entry `engram reextract` will finish; absent when every part was
    /// already known, so nothing is left to do.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pending_id: Option<Uuid>,
    /// False when the embedder failed too: the text is kept, but recall
    /// finds it only after `engram reextract` has run.
    pub searchable: bool,
}

/// Why a remember was kept as given instead of extracted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum DeferCause {
    /// The chat model or the embedder failed (`ENGRAM_ON_LLM_ERROR=verbatim`).
    ModelFailed,
    /// The user's model tokens for the UTC day reached their budget
    /// (`ENGRAM_TOKEN_BUDGET_DAILY`, `ENGRAM_TOKEN_BUDGET_USERS`); the model
    /// was not called.
    TokenBudget,
}

impl DeferCause {
    /// The name the result, the audit trail and the logs use.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ModelFailed => "model_failed",
            Self::TokenBudget => "token_budget",
        }
    }
}

/// A memory's history, for its owner.
#[derive(Debug, Serialize, JsonSchema)]
pub struct HistoryResult {
    pub user_id: String,
    pub memory_id: MemoryId,
    /// Every change, oldest first.
    pub history: Vec<HistoryEntry>,
}

/// What a correction (`PUT /api/v1/memory/{id}`) did, with the memory that
/// is current now.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
pub struct CorrectResult {
    /// The current version: a new memory with a new id (SUPERSEDE), or the
    /// one named, unchanged (NONE).
    #[serde(flatten)]
    pub memory: Memory,
    /// SUPERSEDE: the named memory was closed (kept, with its history) and
    /// this new version replaces it; NONE: it already said exactly this.
    pub event: Event,
    /// For SUPERSEDE: the memory this version replaces (`GET` it: `current`
    /// is false, and its history ends with the SUPERSEDE naming this text).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replaces: Option<MemoryId>,
    /// Secrets replaced by `[REDACTED:kind]` before the text was embedded or
    /// stored (`ENGRAM_SECRETS=redact`); absent when none.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub redacted: Vec<Redaction>,
}

/// One page of a user's current memories, oldest first.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
pub struct MemoryPage {
    pub user_id: String,
    /// Up to `limit` memories, by creation time (then id), oldest first.
    pub results: Vec<Memory>,
    /// Pass as `cursor` for the next page; null on the last page. Opaque:
    /// send it back as given.
    pub next_cursor: Option<String>,
}
