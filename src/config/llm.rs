//! `llm`: the extractor and its chat model (`extractor`, `llm_*`).

use serde::Deserialize;

use super::layers::{Choice, ConfigError, Layers, Range};

pub const DEFAULT_LLM_MODEL: &str = "gpt-4o-mini";
pub const DEFAULT_LLM_TIMEOUT_SECS: u64 = 60;
pub const DEFAULT_LLM_MAX_RETRIES: usize = 3;

pub(super) const TIMEOUT_SECS: Range<u64> = Range::new(DEFAULT_LLM_TIMEOUT_SECS, 1, 600);
pub(super) const MAX_RETRIES: Range<usize> = Range::new(DEFAULT_LLM_MAX_RETRIES, 0, 10);

/// Longest category name, in bytes.
const MAX_CATEGORY_LEN: usize = 64;

/// The file keys (and, upper-cased after `ENGRAM_`, the variables) read here.
pub(super) const KEYS: &[&str] = &[
    "extractor",
    "llm_model",
    "llm_categories",
    "llm_timeout_secs",
    "llm_max_retries",
];

/// The extractor that turns messages into facts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ExtractorKind {
    /// No LLM: each message is stored as said.
    Verbatim,
    /// An OpenAI-compatible chat model extracts atomic facts.
    Llm,
}

impl Choice for ExtractorKind {
    const CHOICES: &'static [(&'static str, Self)] =
        &[("verbatim", Self::Verbatim), ("llm", Self::Llm)];
}

/// The extractor. Invariant: `categories` is not empty and each name is
/// 1-64 bytes.
#[derive(Debug, Clone, PartialEq)]
pub struct LlmConfig {
    pub extractor: ExtractorKind,
    /// `llm` extractor: the chat model.
    pub model: String,
    /// `llm` extractor: the categories facts are filed under.
    pub categories: Vec<String>,
    pub timeout_secs: u64,
    /// Retries of a chat request answered 429 or 5xx (honouring `Retry-After`).
    pub max_retries: usize,
}

impl LlmConfig {
    pub(super) fn load(src: &Layers<'_>) -> Result<Self, ConfigError> {
        let categories = src.list("llm_categories")?.unwrap_or_else(|| {
            crate::extract::DEFAULT_CATEGORIES
                .iter()
                .map(|c| c.to_string())
                .collect()
        });
        if categories.is_empty()
            || categories
                .iter()
                .any(|c| c.is_empty() || c.len() > MAX_CATEGORY_LEN)
        {
            return Err(src.invalid(
                "llm_categories",
                format!(
                    "give a comma-separated list of category names, each 1-{MAX_CATEGORY_LEN} \
                     characters"
                ),
            ));
        }
        Ok(Self {
            extractor: src.choice("extractor", ExtractorKind::Verbatim)?,
            model: src
                .string("llm_model")?
                .unwrap_or_else(|| DEFAULT_LLM_MODEL.to_owned()),
            categories,
            timeout_secs: src.number("llm_timeout_secs", &TIMEOUT_SECS)?,
            max_retries: src.number("llm_max_retries", &MAX_RETRIES)?,
        })
    }
}
