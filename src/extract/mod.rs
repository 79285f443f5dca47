//! Messages to facts. The [`Extractor`] trait is the seam; `verbatim` keeps
//! what was said without an LLM; `llm` asks an OpenAI-compatible chat model.

mod llm;
mod verbatim;

pub use llm::{DEFAULT_CATEGORIES, LlmExtractor, LlmSettings};
pub use verbatim::VerbatimExtractor;

use async_trait::async_trait;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::model::{Fact, Input};

/// Model calls and tokens spent on one request.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Usage {
    /// The model, as the server named it.
    pub model: String,
    #[schemars(schema_with = "crate::model::count_schema")]
    pub calls: u32,
    #[schemars(schema_with = "crate::model::count_schema")]
    pub prompt_tokens: u64,
    #[schemars(schema_with = "crate::model::count_schema")]
    pub completion_tokens: u64,
}

impl Usage {
    pub fn add(&mut self, other: &Usage) {
        if self.model.is_empty() {
            self.model.clone_from(&other.model);
        }
        self.calls += other.calls;
        self.prompt_tokens += other.prompt_tokens;
        self.completion_tokens += other.completion_tokens;
    }
}

/// Facts, and what getting them cost.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Extracted {
    pub facts: Vec<Fact>,
    pub usage: Usage,
}

/// Decisions, and what getting them cost.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Decided {
    pub decisions: Vec<Decision>,
    pub usage: Usage,
}

#[derive(Debug, thiserror::Error)]
pub enum ExtractError {
    #[error("fact extraction failed: {0}")]
    Failed(String),
}

/// A stored memory shown to the reconciler under a short alias (`m1`, `m2`,
/// ...): models copy short ids reliably, and only shown aliases are accepted.
#[derive(Debug, Clone, PartialEq)]
pub struct Known {
    pub alias: String,
    pub text: String,
}

/// What to do with one new fact.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// New information.
    Add,
    /// Refines the memory `alias`, whose text becomes `text`.
    Update { alias: String, text: String },
    /// Contradicts the memory `alias`, which the fact replaces.
    Supersede { alias: String },
    /// The memory `alias` already says it.
    Keep { alias: String },
}

/// The reconciler's decision for fact number `fact` (its index).
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    pub fact: usize,
    pub action: Action,
}

#[async_trait]
pub trait Extractor: Send + Sync {
    /// Short name for logs and results, e.g. `verbatim`.
    fn name(&self) -> &'static str;

    /// Turns validated input into facts worth remembering, in order. May return
    /// none (nothing memorable); never drops input silently on failure: it errors.
    async fn extract(&self, input: &Input) -> Result<Extracted, ExtractError>;

    /// Whether the facts are a model's judgment of the input (so an empty
    /// answer means nothing was worth remembering), rather than the input as
    /// given. What re-extraction waits for.
    fn infers(&self) -> bool {
        false
    }

    /// Whether [`Extractor::reconcile`] can decide anything; when not, the
    /// service skips looking for similar memories altogether.
    fn reconciles(&self) -> bool {
        false
    }

    /// Decides, in one call, what each fact means for the similar memories
    /// already stored. `None`: this extractor does not reconcile, and every
    /// fact is added (the store still refuses duplicates). Decisions may be
    /// missing or name unknown aliases; the caller checks them.
    async fn reconcile(
        &self,
        _facts: &[Fact],
        _known: &[Known],
    ) -> Result<Option<Decided>, ExtractError> {
        Ok(None)
    }
}
