//! `memory`: how `remember` and `recall` behave (`default_user`, the
//! thresholds, `on_llm_error`, `max_text_bytes`, `secrets`).

use serde::Deserialize;

use super::layers::{Choice, ConfigError, Layers, Range};
use crate::model::UserId;

pub const DEFAULT_USER: &str = "default";
pub const DEFAULT_DEDUP_THRESHOLD: f32 = 0.9;
pub const DEFAULT_RECONCILE_THRESHOLD: f32 = 0.5;
pub const DEFAULT_MAX_TEXT_BYTES: usize = 32 * 1024;

pub(super) const DEDUP_THRESHOLD: Range<f32> =
    Range::new(DEFAULT_DEDUP_THRESHOLD, 0.0, 1.0).above_min();
pub(super) const RECONCILE_THRESHOLD: Range<f32> =
    Range::new(DEFAULT_RECONCILE_THRESHOLD, 0.0, 1.0);
pub(super) const MAX_TEXT_BYTES: Range<usize> =
    Range::new(DEFAULT_MAX_TEXT_BYTES, 1, 16 * 1024 * 1024);

/// The file keys (and, upper-cased after `ENGRAM_`, the variables) read here.
pub(super) const KEYS: &[&str] = &[
    "default_user",
    "dedup_threshold",
    "reconcile_threshold",
    "on_llm_error",
    "max_text_bytes",
    "secrets",
];

/// What `remember` does when the model (LLM or embedder) fails.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnLlmError {
    /// Store the text as given (as far as the embedder allows), answer with
    /// a warning, and keep the request for `engram reextract`.
    #[default]
    Verbatim,
    /// Refuse the remember with the model's error; nothing is stored.
    Fail,
}

impl Choice for OnLlmError {
    const CHOICES: &'static [(&'static str, Self)] =
        &[("verbatim", Self::Verbatim), ("fail", Self::Fail)];
}

/// What `remember` does with a credential or payment data in what it is
/// about to store (see [`crate::secrets`] for what is detected).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SecretsMode {
    /// Replace each by `[REDACTED:kind]` before extraction, embedding and
    /// storage; the result says what was replaced.
    #[default]
    Redact,
    /// Refuse the remember, naming the field and the kind; nothing is stored.
    Refuse,
    /// Store the text as given.
    Allow,
}

impl Choice for SecretsMode {
    const CHOICES: &'static [(&'static str, Self)] = &[
        ("redact", Self::Redact),
        ("refuse", Self::Refuse),
        ("allow", Self::Allow),
    ];
}

/// How memories are written and read. Invariant: `default_user` is a valid
/// user id.
#[derive(Debug, Clone, PartialEq)]
pub struct MemoryConfig {
    /// The user an omitted `user_id` means.
    pub default_user: UserId,
    /// Cosine similarity at or above which a new memory counts as already known.
    pub dedup_threshold: f32,
    /// Stored memories at least this similar to a new fact are shown to the
    /// `llm` extractor's reconciliation (add / update / supersede / keep).
    pub reconcile_threshold: f32,
    /// What `remember` does when the model fails.
    pub on_llm_error: OnLlmError,
    /// Largest accepted text, query or conversation, in bytes.
    pub max_text_bytes: usize,
    /// What `remember` does with secrets in its input.
    pub secrets: SecretsMode,
}

impl MemoryConfig {
    pub(super) fn load(src: &Layers<'_>) -> Result<Self, ConfigError> {
        let default_user = src
            .string("default_user")?
            .unwrap_or_else(|| DEFAULT_USER.to_owned());
        let default_user =
            UserId::parse(&default_user).map_err(|e| src.invalid("default_user", e.message))?;
        Ok(Self {
            default_user,
            dedup_threshold: src.number("dedup_threshold", &DEDUP_THRESHOLD)?,
            reconcile_threshold: src.number("reconcile_threshold", &RECONCILE_THRESHOLD)?,
            on_llm_error: src.choice("on_llm_error", OnLlmError::Verbatim)?,
            max_text_bytes: src.number("max_text_bytes", &MAX_TEXT_BYTES)?,
            secrets: src.choice("secrets", SecretsMode::Redact)?,
        })
    }
}
