//! Turning a [`Config`] into a running engram: `build` wires the parts,
//! [`HttpApp`] builds the HTTP server and then runs it (so tests can run it
//! in process on a free port), `serve_stdio` runs a transport until the
//! client goes away.

use std::sync::Arc;
use std::time::Duration;

use rmcp::ServiceExt;

use crate::auth::Principal;
use crate::cache::{Cache, CacheError, NoCache, RedisCache, RedisSettings};
use crate::config::DEFAULT_OPENAI_EMBEDDING_MODEL;
use crate::config::{Config, EmbedderKind, ExtractorKind};
use crate::embed::{Embedder, HashEmbedder, InputType, OpenAiEmbedder, OpenAiSettings};
use crate::extract::{Extractor, LlmExtractor, LlmSettings, VerbatimExtractor};
use crate::mcp::{Caller, EngramMcp};
use crate::openai::Endpoint;
use crate::service::{MemoryService, Settings};
use crate::store::{Deadline, PgOptions, PgStore, redact};
use crate::store::{SqliteStore, Store, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Cache(#[from] CacheError),
    #[error("{0}")]
    Unsupported(String),
    #[error("MCP transport failed: {0}")]
    Transport(String),
    #[error(transparent)]
    Service(#[from] crate::error::Error),
    #[error(transparent)]
    Invalid(#[from] crate::model::Invalid),
    #[error(transparent)]
    Http(#[from] crate::http::HttpError),
    #[error("{0} pending remember(s) failed again; they stay pending (see above)")]
    Reextract(usize),
}

/// The OpenAI-compatible server with this timeout and retry budget.
fn endpoint(config: &Config, timeout_secs: u64, max_retries: usize) -> Endpoint {
    Endpoint {
        base_url: config.openai.base_url.clone(),
        api_key: config.openai.api_key.as_ref().map(|k| k.0.clone()),
        timeout: Duration::from_secs(timeout_secs),
        max_retries,
    }
}

/// The chat model's endpoint (the llm extractor's, and the chat agent's).
pub fn llm_endpoint(config: &Config) -> Endpoint {
    endpoint(config, config.llm.timeout_secs, config.llm.max_retries)
}

/// Builds the embedder a config names.
pub fn embedder(config: &Config) -> Result<Arc<dyn Embedder>, StartupError> {
    match config.embedder.kind {
        EmbedderKind::Hash => Ok(Arc::new(HashEmbedder::new(config.embedder.dims))),
        EmbedderKind::Openai => {
            let settings = OpenAiSettings {
                endpoint: endpoint(
                    config,
                    config.embedder.timeout_secs,
                    config.embedder.max_retries,
                ),
                model: config
                    .embedder
                    .model
                    .clone()
                    .unwrap_or_else(|| DEFAULT_OPENAI_EMBEDDING_MODEL.to_owned()),
                dims: config.embedder.dims,
                send_dimensions: config.embedder.send_dimensions,
                query_prefix: config.embedder.query_prefix.clone(),
                document_prefix: config.embedder.document_prefix.clone(),
                input_type: (config.embedder.query_input_type.is_some()
                    || config.embedder.document_input_type.is_some())
                .then(|| InputType {
                    field: config.embedder.input_type_field.clone(),
                    query: config.embedder.query_input_type.clone(),
                    document: config.embedder.document_input_type.clone(),
                }),
                batch_size: config.embedder.batch_size,
            };
            let embedder = OpenAiEmbedder::new(settings).map_err(|e| match e {
                crate::embed::EmbedError::Failed(message) => StartupError::Unsupported(message),
            })?;
            Ok(Arc::new(embedder))
        }
    }
}

fn extractor(config: &Config) -> Result<Arc<dyn Extractor>, StartupError> {
    match config.llm.extractor {
        ExtractorKind::Verbatim => Ok(Arc::new(VerbatimExtractor)),
        ExtractorKind::Llm => {
            let settings = LlmSettings {
                endpoint: llm_endpoint(config),
                model: config.llm.model.clone(),
                categories: config.llm.categories.clone(),
            };
            let extractor = LlmExtractor::new(settings).map_err(|e| match e {
                crate::extract::ExtractError::Failed(message) => StartupError::Unsupported(message),
            })?;
            Ok(Arc::new(extractor))
        }
    }
}

fn is_postgres(url: &str) -> bool {
    url.starts_with("postgres://") || url.starts_with("postgresql://")
}

/// Opens the store the database URL names, bound to `embedder`.
pub async fn store(
    config: &Config,
    embedder: &dyn Embedder,
) -> Result<Arc<dyn Store>, StartupError> {
    let url = &config.store.database_url;
    if is_postgres(url) {
        let acquire_timeout = Duration::from_millis(config.store.timeout_ms);
        let statement_timeout = Duration::from_millis(config.store.statement_timeout_ms);
        let options = PgOptions {
            pool_size: config.store.pool_size,
            acquire_timeout,
            statement_timeout: Some(statement_timeout),
            migrate: config.store.auto_migrate,
            index: config.store.index,
            plan: Default::default(),
        };
        let store = PgStore::open(url, embedder.identity(), options).await?;
        // A database over the network can stop answering mid-statement,
        // which neither bound above notices.
        let limit = acquire_timeout + statement_timeout;
        return Ok(Arc::new(Deadline::new(Arc::new(store), limit)));
    }
    let store = SqliteStore::open(url, embedder.identity())
        .await?
        .with_vector_cache_bytes(config.store.vector_cache_mb * 1024 * 1024);
    Ok(Arc::new(store))
}

/// The cache `cache_url` names, or none. An unreachable server is not an
/// error (engram runs without it until it answers); a malformed URL is.
pub async fn cache(config: &Config) -> Result<Arc<dyn Cache>, StartupError> {
    let Some(url) = &config.cache.url else {
        return Ok(Arc::new(NoCache));
    };
    let settings = RedisSettings {
        url: url.clone(),
        prefix: config.cache.prefix.clone(),
        entry_ttl: Duration::from_secs(config.cache.ttl_secs),
        vector_ttl: Duration::from_secs(config.cache.embedding_ttl_secs),
        timeout: Duration::from_millis(config.cache.timeout_ms),
        pool_size: config.cache.pool_size,
        retry_every: Duration::from_millis(config.cache.retry_ms),
    };
    Ok(Arc::new(RedisCache::connect(settings).await?))
}

/// Opens the store and wires the service. Fails fast on any misconfiguration.
pub async fn build(config: &Config) -> Result<Arc<MemoryService>, StartupError> {
    let embedder = embedder(config)?;
    let extractor = extractor(config)?;
    let store = store(config, embedder.as_ref()).await?;
    let cache = cache(config).await?;
    let settings = Settings {
        dedup_threshold: config.memory.dedup_threshold,
        reconcile_threshold: config.memory.reconcile_threshold,
        max_text_bytes: config.memory.max_text_bytes,
        cache_ttl: Duration::from_secs(config.cache.ttl_secs),
        on_llm_error: config.memory.on_llm_error,
        default_user: config.memory.default_user.clone(),
        secrets: config.memory.secrets,
    };
    Ok(Arc::new(
        MemoryService::new(store, embedder, extractor, settings).with_cache(cache),
    ))
}

/// `engram migrate`: applies pending migrations to the configured database.
pub async fn migrate(config: &Config) -> Result<(), StartupError> {
    let url = &config.store.database_url;
    if is_postgres(url) {
        PgStore::migrate(url).await?;
    } else {
        // Opening a SQLite store applies its migrations.
        SqliteStore::open(url, embedder(config)?.identity()).await?;
    }
    eprintln!("engram: {} is up to date", redact(url));
    Ok(())
}

/// `engram reextract`: runs the pipeline on up to `limit` pending remembers
/// and prints what became of each. Fails when any failed again (they stay).
pub async fn reextract(config: &Config, limit: usize) -> Result<(), StartupError> {
    let service = build(config).await?;
    let report = service.reextract(limit).await?;
    for done in &report.finished {
        let events: Vec<String> = done
            .result
            .results
            .iter()
            .map(|e| format!("{} \"{}\"", e.event.as_str(), e.memory))
            .collect();
        println!(
            "{} (user {}): {}",
            done.id,
            done.result.user_id,
            if events.is_empty() {
                "nothing worth remembering".to_owned()
            } else {
                events.join("; ")
            }
        );
    }
    for failed in &report.failed {
        println!(
            "{} (user {}): failed again: {}",
            failed.id, failed.user_id, failed.error
        );
    }
    println!(
        "engram: re-extracted {}, failed {}, skipped {} (they need ENGRAM_EXTRACTOR=llm); \
         {} still pending",
        report.finished.len(),
        report.failed.len(),
        report.skipped,
        report.remaining
    );
    if report.failed.is_empty() {
        Ok(())
    } else {
        Err(StartupError::Reextract(report.failed.len()))
    }
}

/// `engram keys create`: stores a new key and prints it, once, on stdout.
pub async fn create_key(
    config: &Config,
    user_id: Option<String>,
    label: String,
) -> Result<(), StartupError> {
    let user_id = match user_id {
        Some(u) if u.trim().is_empty() => {
            return Err(StartupError::Unsupported(
                "--user needs the user id the key acts for (or use --admin)".into(),
            ));
        }
        Some(u) => Some(crate::model::validate_id("user", &u)?),
        None => None,
    };
    let label = crate::auth::check_label(&label).map_err(StartupError::Unsupported)?;
    let store = store(config, embedder(config)?.as_ref()).await?;
    let (secret, key) = crate::auth::generate(user_id, label);
    store.add_key(&key).await?;
    println!("{secret}");
    eprintln!(
        "engram: created key {} ({}) for {}; it is shown only now",
        key.id,
        key.prefix,
        key.user_id
            .as_deref()
            .map_or("any user (admin)".to_owned(), |u| format!("user \"{u}\""))
    );
    Ok(())
}

/// `engram keys list`: one line per key, never the key itself.
pub async fn list_keys(config: &Config) -> Result<(), StartupError> {
    let store = store(config, embedder(config)?.as_ref()).await?;
    for key in store.keys().await? {
        println!(
            "{}  {}...  {:<20}  {}  {}{}",
            key.id,
            key.prefix,
            key.user_id.as_deref().unwrap_or("(admin)"),
            key.created_at.format("%Y-%m-%d %H:%M"),
            key.revoked_at.map_or("active".to_owned(), |t| format!(
                "revoked {}",
                t.format("%Y-%m-%d %H:%M")
            )),
            if key.label.is_empty() {
                String::new()
            } else {
                format!("  {}", printable(&key.label))
            }
        );
    }
    Ok(())
}

/// `text` with every control or invisible format character written as an
/// escape (`\u{a}`): a label stored before labels were checked still prints
/// on its own row.
fn printable(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_control() || crate::model::is_format(c) {
            out.extend(c.escape_unicode());
        } else {
            out.push(c);
        }
    }
    out
}

/// `engram keys revoke ID`.
pub async fn revoke_key(config: &Config, id: &str) -> Result<(), StartupError> {
    let parsed = uuid::Uuid::parse_str(id.trim()).map_err(|_| {
        StartupError::Unsupported(format!(
            "'{id}' is not a key id; `engram keys list` shows them"
        ))
    })?;
    let store = store(config, embedder(config)?.as_ref()).await?;
    if store.revoke_key(parsed).await? {
        eprintln!("engram: revoked key {parsed}");
        Ok(())
    } else {
        Err(StartupError::Unsupported(format!(
            "no active key {parsed}; `engram keys list` shows them"
        )))
    }
}

/// `engram reembed`: rebuilds the store's vectors with the configured embedder.
pub async fn reembed(config: &Config) -> Result<(), StartupError> {
    let embedder = embedder(config)?;
    let url = &config.store.database_url;
    let count = if is_postgres(url) {
        PgStore::reembed(url, embedder.as_ref(), config.store.index).await?
    } else {
        SqliteStore::reembed(url, embedder.as_ref()).await?
    };
    eprintln!(
        "engram: re-embedded {count} memories in {} with {}",
        redact(url),
        embedder.identity()
    );
    Ok(())
}

/// The HTTP server, built and bound but not yet serving: `build` checks the
/// bind is allowed before any store is opened, opens everything and binds
/// (port 0 picks a free port: [`HttpApp::address`] says which); `run` serves
/// until [`HttpApp::stopper`] is cancelled, finishing requests in flight.
pub struct HttpApp {
    listener: tokio::net::TcpListener,
    app: axum::Router,
    stop: tokio_util::sync::CancellationToken,
    address: std::net::SocketAddr,
}

impl HttpApp {
    pub async fn build(config: &Config, bind: &str) -> Result<Self, StartupError> {
        let listener = crate::http::listener(config, bind).await?;
        let service = build(config).await?;
        if config.http.auth == crate::config::AuthMode::Keys && service.active_keys().await? == 0 {
            tracing::warn!(
                "no API key exists yet, so every MCP and REST request will be refused (401): \
                 create one with `engram keys create --user <user_id>` (or --admin)"
            );
        }
        let stop = tokio_util::sync::CancellationToken::new();
        let app = crate::http::app(
            service,
            crate::http::Settings::from_config(config),
            stop.clone(),
        );
        let address = listener
            .local_addr()
            .map_err(|e| StartupError::Transport(e.to_string()))?;
        let loopback_names = ["localhost", "127.0.0.1", "::1"];
        if !address.ip().is_loopback()
            && config
                .http
                .allowed_hosts
                .iter()
                .all(|h| loopback_names.contains(&h.as_str()))
        {
            tracing::warn!(
                "listening on {address}, but ENGRAM_ALLOWED_HOSTS names only this machine ({}): \
                 requests for any other host name are refused (403). List the names clients \
                 use, e.g. ENGRAM_ALLOWED_HOSTS=memory.example.com,10.0.0.5",
                config.http.allowed_hosts.join(", ")
            );
        }
        tracing::info!(
            database = %redact(&config.store.database_url),
            cache = %config.cache.url.as_deref().map(redact).unwrap_or_else(|| "none".into()),
            auth = match config.http.auth {
                crate::config::AuthMode::Keys => "API keys",
                crate::config::AuthMode::None => "none (loopback only)",
            },
            "engram serving MCP at http://{address}/mcp and /sse, REST at http://{address}/api/v1/memory"
        );
        Ok(Self {
            listener,
            app,
            stop,
            address,
        })
    }

    /// Where it listens.
    pub fn address(&self) -> std::net::SocketAddr {
        self.address
    }

    /// Cancelling this stops the server (after requests in flight).
    pub fn stopper(&self) -> tokio_util::sync::CancellationToken {
        self.stop.clone()
    }

    /// Serves until stopped.
    pub async fn run(self) -> Result<(), StartupError> {
        crate::http::serve(self.listener, self.app, self.stop).await?;
        tracing::info!("engram stopped");
        Ok(())
    }
}

/// `engram serve --transport http`: serves until SIGINT/SIGTERM.
pub async fn serve_http(config: &Config, bind: &str) -> Result<(), StartupError> {
    let app = HttpApp::build(config, bind).await?;
    crate::http::stop_on_signals(app.stopper())?;
    app.run().await
}

/// Serves MCP over stdin/stdout until the client disconnects.
pub async fn serve_stdio(config: &Config) -> Result<(), StartupError> {
    let service = build(config).await?;
    tracing::info!(
        database = %redact(&config.store.database_url),
        cache = %config.cache.url.as_deref().map(redact).unwrap_or_else(|| "none".into()),
        default_user = %config.memory.default_user,
        "engram serving MCP on stdio"
    );
    let handler = EngramMcp::new(service, Caller::Fixed(Principal::Operator));
    let transport = crate::stdio::transport(tokio::io::stdin(), tokio::io::stdout());
    let running = match handler.serve(transport).await {
        Ok(running) => running,
        // A client that goes away before initializing is not a server failure.
        Err(rmcp::service::ServerInitializeError::ConnectionClosed(_)) => {
            tracing::info!("the client closed stdin before initializing; engram stopped");
            return Ok(());
        }
        Err(e) => return Err(StartupError::Transport(e.to_string())),
    };
    running
        .waiting()
        .await
        .map_err(|e| StartupError::Transport(e.to_string()))?;
    tracing::info!("client disconnected; engram stopped");
    Ok(())
}
