//! Typed configuration. Layers, later wins: built-in defaults < TOML file
//! (`--config FILE` or `ENGRAM_CONFIG`) < `ENGRAM_*` environment variables.
//!
//! Invariant: a [`Config`] that exists is valid. Every check happens once in
//! [`Config::load`]; a bad value stops start-up with a message naming the key
//! (as both TOML key and env var) and what is allowed.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::Deserialize;

/// The embedder that turns text into vectors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EmbedderKind {
    /// Offline feature hashing; deterministic, no network.
    Hash,
    /// An OpenAI-compatible embeddings endpoint.
    Openai,
}

/// The extractor that turns messages into facts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ExtractorKind {
    /// No LLM: each message is stored as said.
    Verbatim,
    /// An OpenAI-compatible chat model extracts atomic facts.
    Llm,
}

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

/// Who may call the HTTP transport.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthMode {
    /// API keys (`Authorization: Bearer`).
    #[default]
    Keys,
    /// Anyone who can connect; allowed only on a loopback bind.
    None,
}

/// The vector index a PostgreSQL store searches with.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IndexKind {
    /// pgvectorscale's StreamingDiskANN when the `vectorscale` extension is
    /// available, else HNSW.
    #[default]
    Auto,
    /// pgvector HNSW (cosine), searched with iterative scans.
    Hnsw,
    /// pgvectorscale StreamingDiskANN; start-up fails without the extension.
    Diskann,
}

/// Validated configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// `sqlite://PATH` (default: `engram.db` under the XDG data dir) or `postgres://...`.
    pub database_url: String,
    /// Connections the PostgreSQL store may hold open.
    pub database_pool_size: u32,
    /// Apply pending migrations when `serve` starts (else `engram migrate` must).
    pub auto_migrate: bool,
    /// Vector index of a PostgreSQL store (SQLite scans in process: `auto` only).
    pub index: IndexKind,
    /// `redis://...` (Dragonfly, Redis, Valkey); `None` runs without a cache.
    pub cache_url: Option<String>,
    /// Prepended to every cache key, so several deployments can share one server.
    pub cache_prefix: String,
    /// Lifetime of cached recall results and user contexts, in seconds.
    pub cache_ttl_secs: u64,
    /// Lifetime of cached query embeddings, in seconds.
    pub cache_embedding_ttl_secs: u64,
    /// How long one cache command may take before engram goes on without it.
    pub cache_timeout_ms: u64,
    /// Connections to the cache server.
    pub cache_pool_size: usize,
    /// After a cache failure, how long engram goes without it before trying again.
    pub cache_retry_ms: u64,
    pub embedder: EmbedderKind,
    pub embedding_model: Option<String>,
    pub embedding_dims: usize,
    /// `openai` embedder: send `dimensions` with each request.
    pub embedding_send_dimensions: bool,
    /// `openai` embedder: prepended to queries / to stored texts (E5-style models).
    pub embedding_query_prefix: String,
    pub embedding_document_prefix: String,
    /// The request field naming what is embedded (`input_type`, or e.g. `task`).
    pub embedding_input_type_field: String,
    /// Its value for queries (e.g. `query`, `search_query`); unset: not sent.
    pub embedding_query_input_type: Option<String>,
    /// Its value for documents (e.g. `document`, `search_document`); unset: not sent.
    pub embedding_document_input_type: Option<String>,
    /// `openai` embedder: texts per request.
    pub embedding_batch_size: usize,
    pub embedding_timeout_secs: u64,
    /// Retries of a request answered 429 or 5xx (honouring `Retry-After`).
    pub embedding_max_retries: usize,
    /// `OPENAI_BASE_URL`: any OpenAI-compatible server, ending in `/v1`.
    pub openai_base_url: String,
    /// `OPENAI_API_KEY` (environment only).
    pub openai_api_key: Option<Secret>,
    pub extractor: ExtractorKind,
    pub llm_model: String,
    /// `llm` extractor: the categories facts are filed under.
    pub llm_categories: Vec<String>,
    pub llm_timeout_secs: u64,
    /// Retries of a chat request answered 429 or 5xx (honouring `Retry-After`).
    pub llm_max_retries: usize,
    /// The user an omitted `user_id` means.
    pub default_user: String,
    /// Cosine similarity at or above which a new memory counts as already known.
    pub dedup_threshold: f32,
    /// Stored memories at least this similar to a new fact are shown to the
    /// `llm` extractor's reconciliation (add / update / supersede / keep).
    pub reconcile_threshold: f32,
    /// What `remember` does when the model fails.
    pub on_llm_error: OnLlmError,
    /// Who may call the HTTP transport.
    pub auth: AuthMode,
    /// `Host` values the HTTP transport answers (`name` or `name:port`);
    /// anything else is refused, which stops DNS-rebinding pages.
    pub allowed_hosts: Vec<String>,
    /// Browser origins (`https://app.example.com`) allowed to call the HTTP
    /// transport; CORS is answered for these only. Empty (the default): no
    /// CORS, and a request carrying an `Origin` must come from an allowed host.
    pub allowed_origins: Vec<String>,
    /// REST requests per minute per API key (0: unlimited).
    pub rest_rate_limit: u32,
    /// MCP requests per minute per API key (0: unlimited); agents call in bursts.
    pub mcp_rate_limit: u32,
    /// Longest a REST request may take before it is answered 503.
    pub request_timeout_secs: u64,
    /// Largest accepted text, query or conversation, in bytes.
    pub max_text_bytes: usize,
    /// Memory for the in-process vector copies, all users together, in MiB.
    pub vector_cache_mb: usize,
}

/// A value that must not reach logs: `Debug` shows `***`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

/// Why configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path} is not valid TOML for engram: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{key} (env {env}): {message}")]
    Invalid {
        key: &'static str,
        env: String,
        message: String,
    },
    #[error(
        "no data directory found for the default database; set ENGRAM_DATABASE_URL=sqlite://PATH"
    )]
    NoDataDir,
}

/// The file layer: every key optional, unknown keys refused (typos fail loudly).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    database_url: Option<String>,
    database_pool_size: Option<i64>,
    auto_migrate: Option<bool>,
    index: Option<String>,
    cache_url: Option<String>,
    cache_prefix: Option<String>,
    cache_ttl_secs: Option<i64>,
    cache_embedding_ttl_secs: Option<i64>,
    cache_timeout_ms: Option<i64>,
    cache_pool_size: Option<i64>,
    cache_retry_ms: Option<i64>,
    embedder: Option<String>,
    embedding_model: Option<String>,
    embedding_dims: Option<i64>,
    embedding_send_dimensions: Option<bool>,
    embedding_query_prefix: Option<String>,
    embedding_document_prefix: Option<String>,
    embedding_input_type_field: Option<String>,
    embedding_query_input_type: Option<String>,
    embedding_document_input_type: Option<String>,
    embedding_batch_size: Option<i64>,
    embedding_timeout_secs: Option<i64>,
    embedding_max_retries: Option<i64>,
    openai_base_url: Option<String>,
    extractor: Option<String>,
    llm_model: Option<String>,
    llm_categories: Option<Vec<String>>,
    llm_timeout_secs: Option<i64>,
    llm_max_retries: Option<i64>,
    default_user: Option<String>,
    dedup_threshold: Option<f64>,
    reconcile_threshold: Option<f64>,
    on_llm_error: Option<String>,
    auth: Option<String>,
    allowed_hosts: Option<Vec<String>>,
    allowed_origins: Option<Vec<String>>,
    rest_rate_limit: Option<i64>,
    mcp_rate_limit: Option<i64>,
    request_timeout_secs: Option<i64>,
    max_text_bytes: Option<i64>,
    vector_cache_mb: Option<i64>,
}

pub const DEFAULT_EMBEDDING_DIMS: usize = 384;
pub const DEFAULT_DEDUP_THRESHOLD: f32 = 0.9;
pub const DEFAULT_RECONCILE_THRESHOLD: f32 = 0.5;
pub const DEFAULT_MAX_TEXT_BYTES: usize = 32 * 1024;
pub const DEFAULT_LLM_MODEL: &str = "gpt-4o-mini";
pub const DEFAULT_USER: &str = "default";
pub const DEFAULT_VECTOR_CACHE_MB: usize = 512;
pub const DEFAULT_DATABASE_POOL_SIZE: u32 = 16;
pub const DEFAULT_CACHE_PREFIX: &str = "engram:";
pub const DEFAULT_CACHE_TTL_SECS: u64 = 300;
pub const DEFAULT_CACHE_EMBEDDING_TTL_SECS: u64 = 7 * 24 * 3600;
pub const DEFAULT_CACHE_TIMEOUT_MS: u64 = 100;
pub const DEFAULT_CACHE_POOL_SIZE: usize = 4;
pub const DEFAULT_CACHE_RETRY_MS: u64 = 1000;
pub const DEFAULT_OPENAI_EMBEDDING_MODEL: &str = "text-embedding-3-small";
pub const DEFAULT_EMBEDDING_BATCH_SIZE: usize = 64;
pub const DEFAULT_EMBEDDING_TIMEOUT_SECS: u64 = 30;
pub const DEFAULT_EMBEDDING_MAX_RETRIES: usize = 3;
pub const DEFAULT_LLM_TIMEOUT_SECS: u64 = 60;
pub const DEFAULT_LLM_MAX_RETRIES: usize = 3;
pub const DEFAULT_REST_RATE_LIMIT: u32 = 10;
pub const DEFAULT_MCP_RATE_LIMIT: u32 = 600;
pub const DEFAULT_REQUEST_TIMEOUT_SECS: u64 = 120;

impl Config {
    /// Loads defaults, then `file` (if any), then the process environment.
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        let env: HashMap<String, String> = std::env::vars().collect();
        Self::load_from(file, &env)
    }

    /// As [`Config::load`], with the environment given explicitly (for tests).
    pub fn load_from(
        file: Option<&Path>,
        env: &HashMap<String, String>,
    ) -> Result<Self, ConfigError> {
        let file_cfg = match file {
            Some(path) => read_file(path)?,
            None => FileConfig::default(),
        };
        let layer = Layers {
            file: file_cfg,
            env,
        };

        let database_url = match layer.string("database_url") {
            Some(url) => validate_database_url(url)?,
            None => default_database_url()?,
        };
        let cache_url = layer.string("cache_url").filter(|s| !s.trim().is_empty());
        if let Some(url) = &cache_url {
            validate_cache_url(url)?;
        }

        let cache_prefix = layer
            .string("cache_prefix")
            .unwrap_or_else(|| DEFAULT_CACHE_PREFIX.to_owned());
        if cache_prefix.len() > 64
            || cache_prefix
                .chars()
                .any(|c| c.is_whitespace() || c == '{' || c == '}')
        {
            return Err(invalid(
                "cache_prefix",
                format!(
                    "'{cache_prefix}' is not accepted; use at most 64 characters without spaces or braces (default 'engram:')"
                ),
            ));
        }
        let cache_ttl_secs = layer.number("cache_ttl_secs", DEFAULT_CACHE_TTL_SECS as i64)?;
        if !(1..=86_400).contains(&cache_ttl_secs) {
            return Err(invalid(
                "cache_ttl_secs",
                format!("{cache_ttl_secs} is out of range; allowed 1..=86400 (default 300)"),
            ));
        }
        let cache_embedding_ttl_secs = layer.number(
            "cache_embedding_ttl_secs",
            DEFAULT_CACHE_EMBEDDING_TTL_SECS as i64,
        )?;
        if !(1..=365 * 86_400).contains(&cache_embedding_ttl_secs) {
            return Err(invalid(
                "cache_embedding_ttl_secs",
                format!(
                    "{cache_embedding_ttl_secs} is out of range; allowed 1..=31536000 (default 604800)"
                ),
            ));
        }
        let cache_timeout_ms = layer.number("cache_timeout_ms", DEFAULT_CACHE_TIMEOUT_MS as i64)?;
        if !(1..=60_000).contains(&cache_timeout_ms) {
            return Err(invalid(
                "cache_timeout_ms",
                format!("{cache_timeout_ms} is out of range; allowed 1..=60000 (default 100)"),
            ));
        }
        let cache_pool_size = layer.number("cache_pool_size", DEFAULT_CACHE_POOL_SIZE as i64)?;
        if !(1..=256).contains(&cache_pool_size) {
            return Err(invalid(
                "cache_pool_size",
                format!("{cache_pool_size} is out of range; allowed 1..=256 (default 4)"),
            ));
        }
        let cache_retry_ms = layer.number("cache_retry_ms", DEFAULT_CACHE_RETRY_MS as i64)?;
        if !(1..=600_000).contains(&cache_retry_ms) {
            return Err(invalid(
                "cache_retry_ms",
                format!("{cache_retry_ms} is out of range; allowed 1..=600000 (default 1000)"),
            ));
        }

        let database_pool_size =
            layer.number("database_pool_size", i64::from(DEFAULT_DATABASE_POOL_SIZE))?;
        if !(1..=1000).contains(&database_pool_size) {
            return Err(invalid(
                "database_pool_size",
                format!("{database_pool_size} is out of range; allowed 1..=1000 (default 16)"),
            ));
        }
        let auto_migrate = layer.boolean("auto_migrate", true)?;
        let index = layer.choice("index", IndexKind::Auto, &["auto", "hnsw", "diskann"])?;
        if index != IndexKind::Auto && database_url.starts_with("sqlite://") {
            return Err(invalid(
                "index",
                "hnsw and diskann are PostgreSQL indexes; the SQLite store searches in \
                 process, so leave index unset (auto) or use a postgres:// database_url",
            ));
        }

        let embedder = layer.choice("embedder", EmbedderKind::Hash, &["hash", "openai"])?;
        let extractor = layer.choice("extractor", ExtractorKind::Verbatim, &["verbatim", "llm"])?;
        let embedding_dims = layer.number("embedding_dims", DEFAULT_EMBEDDING_DIMS as i64)?;
        if !(8..=8192).contains(&embedding_dims) {
            return Err(invalid(
                "embedding_dims",
                format!("{embedding_dims} is out of range; allowed 8..=8192 (default 384)"),
            ));
        }
        let embedding_batch_size =
            layer.number("embedding_batch_size", DEFAULT_EMBEDDING_BATCH_SIZE as i64)?;
        if !(1..=2048).contains(&embedding_batch_size) {
            return Err(invalid(
                "embedding_batch_size",
                format!("{embedding_batch_size} is out of range; allowed 1..=2048 (default 64)"),
            ));
        }
        let embedding_timeout_secs = layer.number(
            "embedding_timeout_secs",
            DEFAULT_EMBEDDING_TIMEOUT_SECS as i64,
        )?;
        if !(1..=600).contains(&embedding_timeout_secs) {
            return Err(invalid(
                "embedding_timeout_secs",
                format!("{embedding_timeout_secs} is out of range; allowed 1..=600 (default 30)"),
            ));
        }
        let embedding_max_retries = layer.number(
            "embedding_max_retries",
            DEFAULT_EMBEDDING_MAX_RETRIES as i64,
        )?;
        if !(0..=10).contains(&embedding_max_retries) {
            return Err(invalid(
                "embedding_max_retries",
                format!("{embedding_max_retries} is out of range; allowed 0..=10 (default 3)"),
            ));
        }
        let openai_base_url = env
            .get("OPENAI_BASE_URL")
            .cloned()
            .or_else(|| layer.file.openai_base_url.clone())
            .filter(|u| !u.trim().is_empty())
            .unwrap_or_else(|| crate::openai::OPENAI_API_BASE.to_owned());
        if !(openai_base_url.starts_with("http://") || openai_base_url.starts_with("https://")) {
            return Err(ConfigError::Invalid {
                key: "openai_base_url",
                env: "OPENAI_BASE_URL".into(),
                message: format!(
                    "'{openai_base_url}' is not an http(s) URL; e.g. http://localhost:11434/v1"
                ),
            });
        }
        let openai_api_key = env
            .get("OPENAI_API_KEY")
            .filter(|k| !k.trim().is_empty())
            .map(|k| Secret(k.trim().to_owned()));

        let llm_timeout_secs = layer.number("llm_timeout_secs", DEFAULT_LLM_TIMEOUT_SECS as i64)?;
        if !(1..=600).contains(&llm_timeout_secs) {
            return Err(invalid(
                "llm_timeout_secs",
                format!("{llm_timeout_secs} is out of range; allowed 1..=600 (default 60)"),
            ));
        }
        let llm_max_retries = layer.number("llm_max_retries", DEFAULT_LLM_MAX_RETRIES as i64)?;
        if !(0..=10).contains(&llm_max_retries) {
            return Err(invalid(
                "llm_max_retries",
                format!("{llm_max_retries} is out of range; allowed 0..=10 (default 3)"),
            ));
        }
        let allowed_hosts: Vec<String> =
            match layer.env("allowed_hosts") {
                Some(raw) => raw
                    .split(',')
                    .map(|h| h.trim().to_ascii_lowercase())
                    .collect(),
                None => layer.file.allowed_hosts.clone().unwrap_or_else(|| {
                    ["localhost", "127.0.0.1", "::1"].map(String::from).to_vec()
                }),
            };
        if allowed_hosts.is_empty() || allowed_hosts.iter().any(|h| h.is_empty()) {
            return Err(invalid(
                "allowed_hosts",
                "list at least one host name (comma-separated), e.g. localhost,memory.example.com",
            ));
        }
        let allowed_origins: Vec<String> = match layer.env("allowed_origins") {
            Some(raw) if raw.trim().is_empty() => Vec::new(),
            Some(raw) => raw.split(',').map(str::to_owned).collect(),
            None => layer.file.allowed_origins.clone().unwrap_or_default(),
        }
        .iter()
        .map(|o| origin(o))
        .collect::<Result<_, _>>()?;
        let rest_rate_limit = layer.number("rest_rate_limit", DEFAULT_REST_RATE_LIMIT as i64)?;
        let mcp_rate_limit = layer.number("mcp_rate_limit", DEFAULT_MCP_RATE_LIMIT as i64)?;
        for (key, value, default) in [
            ("rest_rate_limit", rest_rate_limit, DEFAULT_REST_RATE_LIMIT),
            ("mcp_rate_limit", mcp_rate_limit, DEFAULT_MCP_RATE_LIMIT),
        ] {
            if !(0..=1_000_000).contains(&value) {
                return Err(invalid(
                    key,
                    format!(
                        "{value} is out of range; allowed 0..=1000000 requests per minute per key, \
                         0 for no limit (default {default})"
                    ),
                ));
            }
        }
        let request_timeout_secs =
            layer.number("request_timeout_secs", DEFAULT_REQUEST_TIMEOUT_SECS as i64)?;
        if !(1..=3600).contains(&request_timeout_secs) {
            return Err(invalid(
                "request_timeout_secs",
                format!(
                    "{request_timeout_secs} is out of range; allowed 1..=3600 \
                     (default {DEFAULT_REQUEST_TIMEOUT_SECS})"
                ),
            ));
        }
        let llm_categories: Vec<String> = match layer.env("llm_categories") {
            Some(raw) => raw.split(',').map(|c| c.trim().to_owned()).collect(),
            None => layer.file.llm_categories.clone().unwrap_or_else(|| {
                crate::extract::DEFAULT_CATEGORIES
                    .iter()
                    .map(|c| c.to_string())
                    .collect()
            }),
        };
        if llm_categories.is_empty() || llm_categories.iter().any(|c| c.is_empty() || c.len() > 64)
        {
            return Err(invalid(
                "llm_categories",
                "give a comma-separated list of category names, each 1-64 characters",
            ));
        }

        let dedup_threshold = layer.float("dedup_threshold", f64::from(DEFAULT_DEDUP_THRESHOLD))?;
        if !(0.0..=1.0).contains(&dedup_threshold) || dedup_threshold == 0.0 {
            return Err(invalid(
                "dedup_threshold",
                format!("{dedup_threshold} is out of range; allowed (0, 1], default 0.9"),
            ));
        }
        let reconcile_threshold = layer.float(
            "reconcile_threshold",
            f64::from(DEFAULT_RECONCILE_THRESHOLD),
        )?;
        if !(0.0..=1.0).contains(&reconcile_threshold) {
            return Err(invalid(
                "reconcile_threshold",
                format!("{reconcile_threshold} is out of range; allowed 0..=1, default 0.5"),
            ));
        }
        let max_text_bytes = layer.number("max_text_bytes", DEFAULT_MAX_TEXT_BYTES as i64)?;
        if !(1..=16 * 1024 * 1024).contains(&max_text_bytes) {
            return Err(invalid(
                "max_text_bytes",
                format!("{max_text_bytes} is out of range; allowed 1..=16777216 (default 32768)"),
            ));
        }
        let vector_cache_mb = layer.number("vector_cache_mb", DEFAULT_VECTOR_CACHE_MB as i64)?;
        if !(1..=1024 * 1024).contains(&vector_cache_mb) {
            return Err(invalid(
                "vector_cache_mb",
                format!("{vector_cache_mb} is out of range; allowed 1..=1048576 (default 512)"),
            ));
        }
        let default_user = layer
            .string("default_user")
            .unwrap_or_else(|| DEFAULT_USER.to_owned());
        let default_user = crate::model::validate_id("default_user", &default_user)
            .map_err(|e| invalid("default_user", e.to_string()))?;

        let embedding_input_type_field = layer
            .string("embedding_input_type_field")
            .unwrap_or_else(|| "input_type".to_owned());
        let taken = ["model", "input", "dimensions", "encoding_format", "user"];
        if embedding_input_type_field.is_empty()
            || !embedding_input_type_field
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.' || c == '-')
            || taken.contains(&embedding_input_type_field.as_str())
        {
            return Err(invalid(
                "embedding_input_type_field",
                format!(
                    "'{embedding_input_type_field}' cannot name the field: use a plain name \
                     such as input_type or task, not one of {}",
                    taken.join(", ")
                ),
            ));
        }
        let input_type = |key| layer.string(key).filter(|v| !v.trim().is_empty());

        Ok(Self {
            embedding_query_input_type: input_type("embedding_query_input_type"),
            embedding_document_input_type: input_type("embedding_document_input_type"),
            embedding_input_type_field,
            database_url,
            database_pool_size: database_pool_size as u32,
            auto_migrate,
            index,
            cache_url,
            cache_prefix,
            cache_ttl_secs: cache_ttl_secs as u64,
            cache_embedding_ttl_secs: cache_embedding_ttl_secs as u64,
            cache_timeout_ms: cache_timeout_ms as u64,
            cache_pool_size: cache_pool_size as usize,
            cache_retry_ms: cache_retry_ms as u64,
            embedder,
            embedding_model: layer.string("embedding_model"),
            embedding_dims: embedding_dims as usize,
            embedding_send_dimensions: layer.boolean("embedding_send_dimensions", true)?,
            embedding_query_prefix: layer.string("embedding_query_prefix").unwrap_or_default(),
            embedding_document_prefix: layer
                .string("embedding_document_prefix")
                .unwrap_or_default(),
            embedding_batch_size: embedding_batch_size as usize,
            embedding_timeout_secs: embedding_timeout_secs as u64,
            embedding_max_retries: embedding_max_retries as usize,
            openai_base_url,
            openai_api_key,
            extractor,
            llm_model: layer
                .string("llm_model")
                .unwrap_or_else(|| DEFAULT_LLM_MODEL.to_owned()),
            llm_categories,
            llm_timeout_secs: llm_timeout_secs as u64,
            llm_max_retries: llm_max_retries as usize,
            default_user,
            dedup_threshold: dedup_threshold as f32,
            reconcile_threshold: reconcile_threshold as f32,
            auth: layer.choice("auth", AuthMode::Keys, &["keys", "none"])?,
            allowed_hosts,
            allowed_origins,
            rest_rate_limit: rest_rate_limit as u32,
            mcp_rate_limit: mcp_rate_limit as u32,
            request_timeout_secs: request_timeout_secs as u64,
            on_llm_error: layer.choice(
                "on_llm_error",
                OnLlmError::Verbatim,
                &["verbatim", "fail"],
            )?,
            max_text_bytes: max_text_bytes as usize,
            vector_cache_mb: vector_cache_mb as usize,
        })
    }
}

/// A browser origin as sent in `Origin`: `scheme://host[:port]`, lowercase,
/// nothing after the authority.
fn origin(raw: &str) -> Result<String, ConfigError> {
    let origin = raw.trim().trim_end_matches('/').to_ascii_lowercase();
    let authority = origin
        .strip_prefix("https://")
        .or_else(|| origin.strip_prefix("http://"));
    match authority {
        Some(a) if !a.is_empty() && !a.contains(['/', '?', '#', '*', ' ']) => Ok(origin),
        _ => Err(invalid(
            "allowed_origins",
            format!(
                "'{}' is not an origin; list them as scheme://host[:port], comma-separated, \
                 e.g. https://app.example.com,http://localhost:3000 (no wildcards)",
                raw.trim()
            ),
        )),
    }
}

/// `redis://` or `redis-cluster://`, parseable by the cache client. TLS
/// (`rediss://`) is refused by name: this build has no TLS for the cache.
fn validate_cache_url(url: &str) -> Result<(), ConfigError> {
    let shown = crate::store::redact(url);
    if url.starts_with("rediss://") || url.starts_with("redis-cluster+tls://") {
        return Err(invalid(
            "cache_url",
            format!(
                "'{shown}': TLS connections to the cache are not supported by this build; \
                 use redis:// on a private network (or a TLS-terminating proxy)"
            ),
        ));
    }
    if !(url.starts_with("redis://") || url.starts_with("redis-cluster://")) {
        return Err(invalid(
            "cache_url",
            format!("'{shown}' is not a redis:// (or redis-cluster://) URL"),
        ));
    }
    fred::types::config::Config::from_url(url)
        .map(|_| ())
        .map_err(|e| {
            invalid(
                "cache_url",
                format!("'{shown}' is not usable: {}", e.details()),
            )
        })
}

/// Reads one key from env first, then the file.
struct Layers<'a> {
    file: FileConfig,
    env: &'a HashMap<String, String>,
}

impl Layers<'_> {
    fn env(&self, key: &str) -> Option<&String> {
        self.env.get(&env_name(key))
    }

    fn string(&self, key: &'static str) -> Option<String> {
        if let Some(v) = self.env(key) {
            return Some(v.clone());
        }
        match key {
            "database_url" => self.file.database_url.clone(),
            "index" => self.file.index.clone(),
            "cache_url" => self.file.cache_url.clone(),
            "cache_prefix" => self.file.cache_prefix.clone(),
            "embedder" => self.file.embedder.clone(),
            "embedding_model" => self.file.embedding_model.clone(),
            "embedding_query_prefix" => self.file.embedding_query_prefix.clone(),
            "embedding_document_prefix" => self.file.embedding_document_prefix.clone(),
            "embedding_input_type_field" => self.file.embedding_input_type_field.clone(),
            "embedding_query_input_type" => self.file.embedding_query_input_type.clone(),
            "embedding_document_input_type" => self.file.embedding_document_input_type.clone(),
            "extractor" => self.file.extractor.clone(),
            "llm_model" => self.file.llm_model.clone(),
            "on_llm_error" => self.file.on_llm_error.clone(),
            "auth" => self.file.auth.clone(),
            "default_user" => self.file.default_user.clone(),
            _ => None,
        }
    }

    fn choice<T: for<'de> Deserialize<'de>>(
        &self,
        key: &'static str,
        default: T,
        allowed: &[&str],
    ) -> Result<T, ConfigError> {
        let Some(raw) = self.string(key) else {
            return Ok(default);
        };
        let value = raw.trim().to_ascii_lowercase();
        serde_json::from_value(serde_json::Value::String(value)).map_err(|_| {
            invalid(
                key,
                format!("'{raw}' is not one of: {}", allowed.join(", ")),
            )
        })
    }

    fn number(&self, key: &'static str, default: i64) -> Result<i64, ConfigError> {
        if let Some(raw) = self.env(key) {
            return parse(key, raw, "an integer");
        }
        let file = match key {
            "embedding_dims" => self.file.embedding_dims,
            "max_text_bytes" => self.file.max_text_bytes,
            "vector_cache_mb" => self.file.vector_cache_mb,
            "database_pool_size" => self.file.database_pool_size,
            "cache_ttl_secs" => self.file.cache_ttl_secs,
            "cache_embedding_ttl_secs" => self.file.cache_embedding_ttl_secs,
            "cache_timeout_ms" => self.file.cache_timeout_ms,
            "cache_pool_size" => self.file.cache_pool_size,
            "cache_retry_ms" => self.file.cache_retry_ms,
            "embedding_batch_size" => self.file.embedding_batch_size,
            "embedding_timeout_secs" => self.file.embedding_timeout_secs,
            "embedding_max_retries" => self.file.embedding_max_retries,
            "llm_timeout_secs" => self.file.llm_timeout_secs,
            "llm_max_retries" => self.file.llm_max_retries,
            "rest_rate_limit" => self.file.rest_rate_limit,
            "mcp_rate_limit" => self.file.mcp_rate_limit,
            "request_timeout_secs" => self.file.request_timeout_secs,
            _ => None,
        };
        Ok(file.unwrap_or(default))
    }

    fn boolean(&self, key: &'static str, default: bool) -> Result<bool, ConfigError> {
        if let Some(raw) = self.env(key) {
            return match raw.trim().to_ascii_lowercase().as_str() {
                "true" | "1" | "yes" | "on" => Ok(true),
                "false" | "0" | "no" | "off" => Ok(false),
                _ => Err(invalid(key, format!("'{raw}' is not true or false"))),
            };
        }
        let file = match key {
            "auto_migrate" => self.file.auto_migrate,
            "embedding_send_dimensions" => self.file.embedding_send_dimensions,
            _ => None,
        };
        Ok(file.unwrap_or(default))
    }

    fn float(&self, key: &'static str, default: f64) -> Result<f64, ConfigError> {
        if let Some(raw) = self.env(key) {
            return parse(key, raw, "a number");
        }
        let file = match key {
            "dedup_threshold" => self.file.dedup_threshold,
            "reconcile_threshold" => self.file.reconcile_threshold,
            _ => None,
        };
        Ok(file.unwrap_or(default))
    }
}

fn parse<T: FromStr>(key: &'static str, raw: &str, what: &str) -> Result<T, ConfigError> {
    raw.trim()
        .parse()
        .map_err(|_| invalid(key, format!("'{raw}' is not {what}")))
}

fn env_name(key: &str) -> String {
    format!("ENGRAM_{}", key.to_ascii_uppercase())
}

fn invalid(key: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key,
        env: env_name(key),
        message: message.into(),
    }
}

fn read_file(path: &Path) -> Result<FileConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    toml::from_str(&text).map_err(|e| ConfigError::Parse {
        path: path.to_owned(),
        message: e.to_string(),
    })
}

fn validate_database_url(url: String) -> Result<String, ConfigError> {
    let url = url.trim().to_owned();
    if let Some(path) = url.strip_prefix("sqlite://") {
        if path.is_empty() {
            return Err(invalid(
                "database_url",
                "sqlite:// needs a file path, e.g. sqlite:///var/lib/engram/engram.db",
            ));
        }
        return Ok(url);
    }
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        return Ok(url);
    }
    Err(invalid(
        "database_url",
        format!(
            "'{url}' is not supported; use sqlite://PATH or postgres://USER@HOST:PORT/DATABASE"
        ),
    ))
}

fn default_database_url() -> Result<String, ConfigError> {
    let dir = dirs::data_dir().ok_or(ConfigError::NoDataDir)?;
    Ok(format!(
        "sqlite://{}",
        dir.join("engram").join("engram.db").display()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults_then_file_then_env() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("engram.toml");
        std::fs::write(
            &file,
            "database_url = \"sqlite:///tmp/a.db\"\nembedding_dims = 128\ndefault_user = \"filey\"\n",
        )
        .unwrap();

        let cfg = Config::load_from(Some(&file), &env(&[("ENGRAM_DEFAULT_USER", "envy")])).unwrap();
        assert_eq!(cfg.database_url, "sqlite:///tmp/a.db");
        assert_eq!(cfg.embedding_dims, 128);
        assert_eq!(cfg.default_user, "envy");
        assert_eq!(cfg.dedup_threshold, 0.9);
        assert_eq!(cfg.max_text_bytes, 32 * 1024);
        assert_eq!(cfg.vector_cache_mb, 512);
        assert_eq!(cfg.embedder, EmbedderKind::Hash);
        assert_eq!(cfg.index, IndexKind::Auto);
        assert!(cfg.auto_migrate);
    }

    #[test]
    fn openai_settings_come_from_the_standard_variables() {
        let cfg = Config::load_from(
            None,
            &env(&[
                ("ENGRAM_EMBEDDER", "openai"),
                ("OPENAI_BASE_URL", "http://localhost:11434/v1"),
                ("OPENAI_API_KEY", "sk-secret"),
                ("ENGRAM_EMBEDDING_QUERY_PREFIX", "query: "),
                ("ENGRAM_EMBEDDING_SEND_DIMENSIONS", "false"),
                ("ENGRAM_EMBEDDING_BATCH_SIZE", "16"),
                ("ENGRAM_EMBEDDING_QUERY_INPUT_TYPE", "search_query"),
                ("ENGRAM_ON_LLM_ERROR", "Fail"),
            ]),
        )
        .unwrap();
        assert_eq!(cfg.embedding_input_type_field, "input_type");
        assert_eq!(
            cfg.embedding_query_input_type.as_deref(),
            Some("search_query")
        );
        assert_eq!(cfg.embedding_document_input_type, None);
        assert_eq!(cfg.on_llm_error, OnLlmError::Fail);
        for bad in ["model", "", "a b"] {
            let err = Config::load_from(None, &env(&[("ENGRAM_EMBEDDING_INPUT_TYPE_FIELD", bad)]))
                .unwrap_err()
                .to_string();
            assert!(err.contains("ENGRAM_EMBEDDING_INPUT_TYPE_FIELD"), "{err}");
        }
        let err = Config::load_from(None, &env(&[("ENGRAM_ON_LLM_ERROR", "ignore")]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("verbatim, fail"), "{err}");
        assert_eq!(cfg.embedder, EmbedderKind::Openai);
        assert_eq!(cfg.openai_base_url, "http://localhost:11434/v1");
        assert_eq!(cfg.embedding_query_prefix, "query: ");
        assert!(!cfg.embedding_send_dimensions);
        assert_eq!(cfg.embedding_batch_size, 16);
        assert_eq!(cfg.embedding_max_retries, DEFAULT_EMBEDDING_MAX_RETRIES);
        let shown = format!("{cfg:?}");
        assert!(!shown.contains("sk-secret"), "{shown}");

        let defaults = Config::load_from(None, &env(&[])).unwrap();
        assert_eq!(defaults.openai_base_url, crate::openai::OPENAI_API_BASE);
        assert_eq!(defaults.openai_api_key, None);

        let err = Config::load_from(None, &env(&[("OPENAI_BASE_URL", "localhost:11434")]))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("OPENAI_BASE_URL") && err.contains("http"),
            "{err}"
        );
        let err = Config::load_from(None, &env(&[("ENGRAM_EMBEDDING_BATCH_SIZE", "0")]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("ENGRAM_EMBEDDING_BATCH_SIZE"), "{err}");
    }

    #[test]
    fn cache_settings_are_checked() {
        let cfg = Config::load_from(
            None,
            &env(&[
                ("ENGRAM_CACHE_URL", "redis://cache:6379/2"),
                ("ENGRAM_CACHE_PREFIX", "staging:"),
                ("ENGRAM_CACHE_TTL_SECS", "60"),
                ("ENGRAM_CACHE_TIMEOUT_MS", "25"),
            ]),
        )
        .unwrap();
        assert_eq!(cfg.cache_url.as_deref(), Some("redis://cache:6379/2"));
        assert_eq!(cfg.cache_prefix, "staging:");
        assert_eq!(cfg.cache_ttl_secs, 60);
        assert_eq!(cfg.cache_timeout_ms, 25);
        assert_eq!(
            cfg.cache_embedding_ttl_secs,
            DEFAULT_CACHE_EMBEDDING_TTL_SECS
        );
        assert_eq!(cfg.cache_pool_size, DEFAULT_CACHE_POOL_SIZE);

        let unset = Config::load_from(None, &env(&[("ENGRAM_CACHE_URL", " ")])).unwrap();
        assert_eq!(unset.cache_url, None);

        for (key, value, expect) in [
            ("ENGRAM_CACHE_URL", "memcached://x", "redis://"),
            ("ENGRAM_CACHE_URL", "rediss://:secret@x:6380", "TLS"),
            ("ENGRAM_CACHE_TTL_SECS", "0", "1..=86400"),
            ("ENGRAM_CACHE_TIMEOUT_MS", "soon", "integer"),
            ("ENGRAM_CACHE_PREFIX", "a b", "without spaces"),
            ("ENGRAM_CACHE_POOL_SIZE", "0", "1..=256"),
        ] {
            let err = Config::load_from(None, &env(&[(key, value)]))
                .unwrap_err()
                .to_string();
            assert!(
                err.contains(key) && err.contains(expect),
                "{key}={value}: {err}"
            );
            assert!(!err.contains("secret"), "password shown: {err}");
        }
    }

    #[test]
    fn postgres_urls_and_their_settings() {
        let cfg = Config::load_from(
            None,
            &env(&[
                ("ENGRAM_DATABASE_URL", "postgres://engram@db:5432/engram"),
                ("ENGRAM_INDEX", "hnsw"),
                ("ENGRAM_AUTO_MIGRATE", "false"),
                ("ENGRAM_DATABASE_POOL_SIZE", "4"),
            ]),
        )
        .unwrap();
        assert_eq!(cfg.index, IndexKind::Hnsw);
        assert!(!cfg.auto_migrate);
        assert_eq!(cfg.database_pool_size, 4);

        let err = Config::load_from(
            None,
            &env(&[
                ("ENGRAM_DATABASE_URL", "sqlite:///tmp/x.db"),
                ("ENGRAM_INDEX", "diskann"),
            ]),
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("ENGRAM_INDEX") && err.contains("PostgreSQL"),
            "{err}"
        );

        let err = Config::load_from(None, &env(&[("ENGRAM_AUTO_MIGRATE", "sometimes")]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("ENGRAM_AUTO_MIGRATE"), "{err}");
    }

    #[test]
    fn bad_values_name_the_key_and_the_choices() {
        let err = Config::load_from(None, &env(&[("ENGRAM_EMBEDDER", "bert")]))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("ENGRAM_EMBEDDER") && err.contains("hash, openai"),
            "{err}"
        );

        let err = Config::load_from(None, &env(&[("ENGRAM_EMBEDDING_DIMS", "many")]))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("embedding_dims") && err.contains("integer"),
            "{err}"
        );

        let err = Config::load_from(None, &env(&[("ENGRAM_DEDUP_THRESHOLD", "1.5")]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("dedup_threshold"), "{err}");

        let err = Config::load_from(None, &env(&[("ENGRAM_DATABASE_URL", "mysql://x")]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("sqlite://"), "{err}");
    }

    #[test]
    fn http_limits_and_origins() {
        let cfg = Config::load_from(None, &env(&[])).unwrap();
        assert_eq!((cfg.rest_rate_limit, cfg.mcp_rate_limit), (10, 600));
        assert_eq!(cfg.request_timeout_secs, 120);
        assert!(cfg.allowed_origins.is_empty());

        let cfg = Config::load_from(
            None,
            &env(&[
                ("ENGRAM_REST_RATE_LIMIT", "0"),
                ("ENGRAM_MCP_RATE_LIMIT", "5000"),
                ("ENGRAM_REQUEST_TIMEOUT_SECS", "30"),
                (
                    "ENGRAM_ALLOWED_ORIGINS",
                    " https://App.example.com/ ,http://localhost:3000",
                ),
            ]),
        )
        .unwrap();
        assert_eq!((cfg.rest_rate_limit, cfg.mcp_rate_limit), (0, 5000));
        assert_eq!(cfg.request_timeout_secs, 30);
        assert_eq!(
            cfg.allowed_origins,
            ["https://app.example.com", "http://localhost:3000"]
        );

        for (key, value, says) in [
            ("ENGRAM_ALLOWED_ORIGINS", "*", "no wildcards"),
            ("ENGRAM_ALLOWED_ORIGINS", "app.example.com", "scheme://host"),
            (
                "ENGRAM_ALLOWED_ORIGINS",
                "https://a.example/path",
                "not an origin",
            ),
            ("ENGRAM_REST_RATE_LIMIT", "-1", "0 for no limit"),
            ("ENGRAM_REQUEST_TIMEOUT_SECS", "0", "1..=3600"),
        ] {
            let err = Config::load_from(None, &env(&[(key, value)]))
                .unwrap_err()
                .to_string();
            assert!(
                err.contains(key) && err.contains(says),
                "{key}={value}: {err}"
            );
        }
    }

    #[test]
    fn unknown_file_keys_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("engram.toml");
        std::fs::write(&file, "embeder = \"hash\"\n").unwrap();
        let err = Config::load_from(Some(&file), &env(&[]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("embeder"), "{err}");
    }
}
