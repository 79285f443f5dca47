//! Messages to facts. The [`Extractor`] trait is the seam; `verbatim` keeps
//! what was said without an LLM; `llm` asks an OpenAI-compatible chat model.

mod llm;
mod verbatim;

pub use llm::{DEFAULT_CATEGORIES, LlmExtractor, LlmSettings};
pub use verbatim::VerbatimExtractor;

use async_trait::async_trait;

use crate::model::{Fact, Input};

#[derive(Debug, thiserror::Error)]
pub enum ExtractError {
    #[error("fact extraction failed: {0}")]
    Failed(String),
}

#[async_trait]
pub trait Extractor: Send + Sync {
    /// Short name for logs and results, e.g. `verbatim`.
    fn name(&self) -> &'static str;

    /// Turns validated input into facts worth remembering, in order. May return
    /// none (nothing memorable); never drops input silently on failure: it errors.
    async fn extract(&self, input: &Input) -> Result<Vec<Fact>, ExtractError>;
}
