//! `openai`: the OpenAI-compatible server both the `openai` embedder and the
//! `llm` extractor call (`OPENAI_BASE_URL`, `OPENAI_API_KEY`).

use super::layers::{ConfigError, Layers};

/// The file keys read here. The API key is not one: it is read from the
/// environment only, and a file that names it is refused.
pub(super) const KEYS: &[&str] = &["openai_base_url"];

/// A value that must not reach logs: `Debug` shows `***`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

/// The OpenAI-compatible server. Invariant: `base_url` is an http(s) URL.
#[derive(Debug, Clone, PartialEq)]
pub struct OpenAiConfig {
    /// `OPENAI_BASE_URL`: any OpenAI-compatible server, ending in `/v1`.
    pub base_url: String,
    /// `OPENAI_API_KEY` (environment only); blank is unset.
    pub api_key: Option<Secret>,
}

impl OpenAiConfig {
    pub(super) fn load(src: &Layers<'_>) -> Result<Self, ConfigError> {
        let base_url = src
            .string("openai_base_url")?
            .filter(|u| !u.trim().is_empty())
            .unwrap_or_else(|| crate::openai::OPENAI_API_BASE.to_owned());
        if !(base_url.starts_with("http://") || base_url.starts_with("https://")) {
            return Err(src.invalid(
                "openai_base_url",
                format!("'{base_url}' is not an http(s) URL; e.g. http://localhost:11434/v1"),
            ));
        }
        // Not in `KEYS`, so only the environment can hold it.
        let api_key = src
            .string("openai_api_key")?
            .filter(|k| !k.trim().is_empty())
            .map(|k| Secret(k.trim().to_owned()));
        Ok(Self { base_url, api_key })
    }
}
