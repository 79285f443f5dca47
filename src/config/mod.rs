//! Typed configuration, in sections. Layers, later wins: built-in defaults <
//! TOML file (`--config FILE` or `ENGRAM_CONFIG`) < environment.
//!
//! The file and the environment stay flat: a file key is the variable's name
//! without `ENGRAM_`, lower-cased (`cache_ttl_secs` / `ENGRAM_CACHE_TTL_SECS`),
//! and the README lists them all. In code each key belongs to one section:
//!
//! | field of [`Config`] | file                | keys                                                   |
//! |---------------------|---------------------|--------------------------------------------------------|
//! | `store`             | `config/store.rs`   | `database_*` (url, pool size, timeouts), `auto_migrate`, `index`, `vector_cache_mb` |
//! | `cache`             | `config/cache.rs`   | `cache_*`                                              |
//! | `embedder`          | `config/embedder.rs`| `embedder`, `embedding_*`                              |
//! | `llm`               | `config/llm.rs`     | `extractor`, `llm_*`                                   |
//! | `budget`            | `config/budget.rs`  | `token_budget_daily`, `token_budget_users`             |
//! | `openai`            | `config/openai.rs`  | `openai_base_url` (`OPENAI_BASE_URL`); `OPENAI_API_KEY`, environment only |
//! | `memory`            | `config/memory.rs`  | `default_user`, `dedup_threshold`, `reconcile_threshold`, `on_llm_error`, `max_text_bytes`, `secrets` |
//! | `http`              | `config/http.rs`    | `auth`, `allowed_hosts`, `allowed_origins`, `rest_rate_limit`, `mcp_rate_limit` (per key), `rest_user_rate_limit`, `mcp_user_rate_limit` (per user), `request_timeout_secs`, `mcp_sessions_per_key` |
//! | `audit`             | `config/audit.rs`   | `audit`, `audit_queries`, `audit_key`                  |
//! | `retention`         | `config/retention.rs` | `retention_days`, `retention_categories`, `history_retention_days`, `retention_purge_interval_secs` |
//! | `crypto`            | `config/crypto.rs`  | `encryption_key`, `encryption_key_file`, `encryption_old_keys`, `sensitive_metadata_keys` |
//! | `metrics`           | `config/metrics.rs` | `metrics_bind`, `metrics_refresh_secs`                 |
//! | `telemetry`         | `config/telemetry.rs` | `trace_content` (the `OTEL_*` variables are read by `crate::telemetry`) |
//!
//! `config/layers.rs` reads the layers: each section asks it for typed values
//! and checks its own invariants. Numeric keys are checked against a
//! `layers::Range` constant beside their default, which the refusal quotes.
//!
//! Invariant: a [`Config`] that exists is valid. Every check happens once in
//! [`Config::load`]; a bad value stops start-up with a message naming the key,
//! where the value came from (the variable, or the file's path) and what is
//! allowed. Unknown file keys are refused by name.

mod audit;
mod budget;
mod cache;
mod crypto;
mod embedder;
mod http;
mod layers;
mod llm;
mod memory;
mod metrics;
mod openai;
pub mod reference;
mod retention;
mod store;
mod telemetry;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::path::Path;

pub use audit::{AuditConfig, MIN_AUDIT_KEY_BYTES};
pub use budget::{BudgetConfig, MAX_TOKEN_BUDGET};
pub use cache::{
    CacheConfig, DEFAULT_CACHE_EMBEDDING_TTL_SECS, DEFAULT_CACHE_POOL_SIZE, DEFAULT_CACHE_PREFIX,
    DEFAULT_CACHE_RETRY_MS, DEFAULT_CACHE_TIMEOUT_MS, DEFAULT_CACHE_TTL_SECS,
};
pub use crypto::{CryptoConfig, KeyBytes};
pub use embedder::{
    DEFAULT_EMBEDDING_BATCH_SIZE, DEFAULT_EMBEDDING_DIMS, DEFAULT_EMBEDDING_MAX_RETRIES,
    DEFAULT_EMBEDDING_TIMEOUT_SECS, DEFAULT_OPENAI_EMBEDDING_MODEL, EmbedderConfig, EmbedderKind,
};
pub use http::{
    AuthMode, DEFAULT_ALLOWED_HOSTS, DEFAULT_MCP_RATE_LIMIT, DEFAULT_MCP_SESSIONS_PER_KEY,
    DEFAULT_MCP_USER_RATE_LIMIT, DEFAULT_REQUEST_TIMEOUT_SECS, DEFAULT_REST_RATE_LIMIT,
    DEFAULT_REST_USER_RATE_LIMIT, HttpConfig,
};
pub use layers::{ConfigError, Origin};
pub use llm::{
    DEFAULT_LLM_MAX_RETRIES, DEFAULT_LLM_MODEL, DEFAULT_LLM_TIMEOUT_SECS, ExtractorKind, LlmConfig,
};
pub use memory::{
    DEFAULT_DEDUP_THRESHOLD, DEFAULT_MAX_TEXT_BYTES, DEFAULT_RECONCILE_THRESHOLD, DEFAULT_USER,
    MemoryConfig, OnLlmError, SecretsMode,
};
pub use metrics::{DEFAULT_METRICS_REFRESH_SECS, MetricsConfig};
pub use openai::{OpenAiConfig, Secret};
pub use retention::{DEFAULT_PURGE_INTERVAL_SECS, MAX_RETENTION_DAYS, RetentionConfig};
pub use store::{
    DEFAULT_DATABASE_POOL_SIZE, DEFAULT_DATABASE_READY_TIMEOUT_MS,
    DEFAULT_DATABASE_STATEMENT_TIMEOUT_MS, DEFAULT_DATABASE_TIMEOUT_MS, DEFAULT_VECTOR_CACHE_MB,
    IndexKind, Pooler, StoreConfig,
};
pub use telemetry::TelemetryConfig;

use layers::Layers;

/// Every file key, section by section.
fn file_keys() -> Vec<&'static str> {
    [
        store::KEYS,
        cache::KEYS,
        embedder::KEYS,
        llm::KEYS,
        budget::KEYS,
        openai::KEYS,
        memory::KEYS,
        http::KEYS,
        audit::KEYS,
        retention::KEYS,
        crypto::KEYS,
        metrics::KEYS,
        telemetry::KEYS,
    ]
    .concat()
}

/// Validated configuration, one field per section.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Where memories are kept.
    pub store: StoreConfig,
    /// The optional cache server.
    pub cache: CacheConfig,
    /// What turns text into vectors.
    pub embedder: EmbedderConfig,
    /// The extractor and its chat model.
    pub llm: LlmConfig,
    /// How many model tokens each user may spend per day.
    pub budget: BudgetConfig,
    /// The OpenAI-compatible server the `openai` embedder and `llm` extractor call.
    pub openai: OpenAiConfig,
    /// How `remember` and `recall` behave.
    pub memory: MemoryConfig,
    /// Who may call the HTTP transport, and how much.
    pub http: HttpConfig,
    /// The audit trail.
    pub audit: AuditConfig,
    /// How long memories are kept.
    pub retention: RetentionConfig,
    /// Encryption at rest of sensitive values.
    pub crypto: CryptoConfig,
    /// Where Prometheus metrics are served, and how fresh their gauges are.
    pub metrics: MetricsConfig,
    /// What exported traces may carry.
    pub telemetry: TelemetryConfig,
}

impl Config {
    /// Loads defaults, then `file` (if any), then the process environment.
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        // `vars()` would panic on a variable that is not UTF-8, even one that
        // is not engram's; such a value reaches the checks as text instead.
        let env: HashMap<String, String> = std::env::vars_os()
            .map(|(k, v)| {
                (
                    k.to_string_lossy().into_owned(),
                    v.to_string_lossy().into_owned(),
                )
            })
            .collect();
        Self::load_from(file, &env)
    }

    /// As [`Config::load`], with the environment given explicitly (for tests).
    pub fn load_from(
        file: Option<&Path>,
        env: &HashMap<String, String>,
    ) -> Result<Self, ConfigError> {
        let file_keys = file_keys();
        let src = Layers::new(file, env, &file_keys)?;
        Ok(Self {
            store: StoreConfig::load(&src)?,
            cache: CacheConfig::load(&src)?,
            embedder: EmbedderConfig::load(&src)?,
            llm: LlmConfig::load(&src)?,
            budget: BudgetConfig::load(&src)?,
            openai: OpenAiConfig::load(&src)?,
            memory: MemoryConfig::load(&src)?,
            http: HttpConfig::load(&src)?,
            audit: AuditConfig::load(&src)?,
            retention: RetentionConfig::load(&src)?,
            crypto: CryptoConfig::load(&src)?,
            metrics: MetricsConfig::load(&src)?,
            telemetry: TelemetryConfig::load(&src)?,
        })
    }
}
