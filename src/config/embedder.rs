//! `embedder`: what turns text into vectors (`embedder`, `embedding_*`).

use std::path::PathBuf;

use serde::Deserialize;

use super::layers::{Choice, ConfigError, Layers, Origin, Range};

pub const DEFAULT_EMBEDDING_DIMS: usize = 384;
pub const DEFAULT_OPENAI_EMBEDDING_MODEL: &str = "text-embedding-3-small";
pub const DEFAULT_EMBEDDING_BATCH_SIZE: usize = 64;
pub const DEFAULT_EMBEDDING_TIMEOUT_SECS: u64 = 30;
pub const DEFAULT_EMBEDDING_MAX_RETRIES: usize = 3;
/// The request field naming what is embedded, unless configured.
const DEFAULT_EMBEDDING_INPUT_TYPE_FIELD: &str = "input_type";

pub(super) const DIMS: Range<usize> = Range::new(DEFAULT_EMBEDDING_DIMS, 8, 8192);
pub(super) const BATCH_SIZE: Range<usize> = Range::new(DEFAULT_EMBEDDING_BATCH_SIZE, 1, 2048);
pub(super) const TIMEOUT_SECS: Range<u64> = Range::new(DEFAULT_EMBEDDING_TIMEOUT_SECS, 1, 600);
pub(super) const MAX_RETRIES: Range<usize> = Range::new(DEFAULT_EMBEDDING_MAX_RETRIES, 0, 10);
/// `local` embedder: texts embedded at once (default: one per core).
pub(super) const THREADS: Range<usize> = Range::new(0, 0, 256).note("0: one per core");

/// Request fields the client sends itself, so `embedding_input_type_field`
/// may not name them.
const TAKEN_FIELDS: &[&str] = &["model", "input", "dimensions", "encoding_format", "user"];

/// The file keys (and, upper-cased after `ENGRAM_`, the variables) read here.
pub(super) const KEYS: &[&str] = &[
    "embedder",
    "embedding_model",
    "embedding_dims",
    "embedding_send_dimensions",
    "embedding_query_prefix",
    "embedding_document_prefix",
    "embedding_input_type_field",
    "embedding_query_input_type",
    "embedding_document_input_type",
    "embedding_batch_size",
    "embedding_timeout_secs",
    "embedding_max_retries",
    "embedding_model_path",
    "embedding_threads",
    "model_hub_url",
    "model_cache_dir",
];

/// The embedder that turns text into vectors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EmbedderKind {
    /// The default: the store's recorded embedder when it has one; for a new
    /// store `local` when its model is on disk or the hub answers, else `hash`.
    Auto,
    /// Offline feature hashing; deterministic, no network, no meaning.
    Hash,
    /// A sentence model run in process (`crate::embed::local`).
    Local,
    /// An OpenAI-compatible embeddings endpoint.
    Openai,
}

impl Choice for EmbedderKind {
    const CHOICES: &'static [(&'static str, Self)] = &[
        ("auto", Self::Auto),
        ("hash", Self::Hash),
        ("local", Self::Local),
        ("openai", Self::Openai),
    ];
}

/// The embedder. Invariant: `input_type_field` is a plain field name the
/// client does not send itself; blank input types are `None`.
#[derive(Debug, Clone, PartialEq)]
pub struct EmbedderConfig {
    pub kind: EmbedderKind,
    /// `openai` embedder: the model name (unset: [`DEFAULT_OPENAI_EMBEDDING_MODEL`]);
    /// `local`: the model's id (unset: `crate::embed::local::catalog::DEFAULT_MODEL`).
    pub model: Option<String>,
    /// `local` embedder: a directory holding the model's files (no download).
    pub model_path: Option<PathBuf>,
    /// `local` embedder: texts embedded at once.
    pub threads: usize,
    /// `local` embedder: where models are downloaded from; `None`: never
    /// (`off`, or `HF_HUB_OFFLINE=1`). Unset: `HF_ENDPOINT`, else Hugging Face.
    pub hub_url: Option<String>,
    /// `local` embedder: where downloaded models are kept.
    pub model_cache_dir: PathBuf,
    /// `local` embedder: the hub's access token (`HF_TOKEN`, environment
    /// only), for gated or private models; sent to the hub's own host only.
    pub hub_token: Option<super::Secret>,
    pub dims: usize,
    /// `dims` was configured, not defaulted: `auto` then holds a store to it
    /// (a recorded dimension that differs is refused, not silently kept).
    pub dims_set: bool,
    /// `openai` embedder: send `dimensions` with each request.
    pub send_dimensions: bool,
    /// `openai` embedder: prepended to queries / to stored texts (E5-style models).
    pub query_prefix: String,
    pub document_prefix: String,
    /// The request field naming what is embedded (`input_type`, or e.g. `task`).
    pub input_type_field: String,
    /// Its value for queries (e.g. `query`, `search_query`); unset: not sent.
    pub query_input_type: Option<String>,
    /// Its value for documents (e.g. `document`, `search_document`); unset: not sent.
    pub document_input_type: Option<String>,
    /// `openai` embedder: texts per request.
    pub batch_size: usize,
    pub timeout_secs: u64,
    /// Retries of a request answered 429 or 5xx (honouring `Retry-After`).
    pub max_retries: usize,
}

impl EmbedderConfig {
    pub(super) fn load(src: &Layers<'_>) -> Result<Self, ConfigError> {
        let input_type_field = src
            .string("embedding_input_type_field")?
            .unwrap_or_else(|| DEFAULT_EMBEDDING_INPUT_TYPE_FIELD.to_owned());
        if input_type_field.is_empty()
            || !input_type_field
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.' || c == '-')
            || TAKEN_FIELDS.contains(&input_type_field.as_str())
        {
            return Err(src.invalid(
                "embedding_input_type_field",
                format!(
                    "'{input_type_field}' cannot name the field: use a plain name \
                     such as {DEFAULT_EMBEDDING_INPUT_TYPE_FIELD} or task, not one of {}",
                    TAKEN_FIELDS.join(", ")
                ),
            ));
        }
        let input_type = |key: &'static str| -> Result<Option<String>, ConfigError> {
            Ok(src.string(key)?.filter(|v| !v.trim().is_empty()))
        };
        let threads = match src.number("embedding_threads", &THREADS)? {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        };
        let offline = src
            .foreign_env("HF_HUB_OFFLINE")
            .is_some_and(|v| matches!(v.trim(), "1" | "true" | "yes" | "on"));
        let hub_url = match src.string("model_hub_url")? {
            Some(url) if url.trim().eq_ignore_ascii_case("off") => None,
            Some(url) if url.starts_with("http://") || url.starts_with("https://") => Some(url),
            Some(url) => {
                return Err(src.invalid(
                    "model_hub_url",
                    format!("'{url}' is neither an http(s) URL nor off"),
                ));
            }
            None if offline => None,
            None => Some(
                src.foreign_env("HF_ENDPOINT")
                    .filter(|v| !v.trim().is_empty())
                    .unwrap_or(crate::embed::local::DEFAULT_HUB)
                    .to_owned(),
            ),
        };
        let model_cache_dir = match src.string("model_cache_dir")? {
            Some(dir) => PathBuf::from(dir),
            None => dirs::cache_dir()
                .unwrap_or_else(std::env::temp_dir)
                .join("engram")
                .join("models"),
        };
        Ok(Self {
            kind: src.choice("embedder", EmbedderKind::Auto)?,
            model: src.string("embedding_model")?,
            model_path: src.string("embedding_model_path")?.map(PathBuf::from),
            threads,
            hub_url,
            model_cache_dir,
            hub_token: src
                .foreign_env("HF_TOKEN")
                .filter(|t| !t.trim().is_empty())
                .map(|t| super::Secret(t.trim().to_owned())),
            dims: src.number("embedding_dims", &DIMS)?,
            dims_set: !matches!(src.origin("embedding_dims"), Origin::Default { .. }),
            send_dimensions: src.boolean("embedding_send_dimensions", true)?,
            query_prefix: src.string("embedding_query_prefix")?.unwrap_or_default(),
            document_prefix: src.string("embedding_document_prefix")?.unwrap_or_default(),
            input_type_field,
            query_input_type: input_type("embedding_query_input_type")?,
            document_input_type: input_type("embedding_document_input_type")?,
            batch_size: src.number("embedding_batch_size", &BATCH_SIZE)?,
            timeout_secs: src.number("embedding_timeout_secs", &TIMEOUT_SECS)?,
            max_retries: src.number("embedding_max_retries", &MAX_RETRIES)?,
        })
    }
}
