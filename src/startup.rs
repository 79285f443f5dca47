//! Turning a [`Config`] into a running engram: `build` wires the parts,
//! [`HttpApp`] builds the HTTP server and then runs it (so tests can run it
//! in process on a free port), `serve_stdio` runs a transport until the
//! client goes away.

use std::sync::Arc;
use std::time::Duration;

use rmcp::ServiceExt;

use crate::audit::{Auditor, Pseudonyms, Sink};
use crate::auth::Principal;
use crate::cache::{Cache, CacheError, NoCache, RedisCache, RedisSettings};
use crate::config::{Config, ExtractorKind};
use crate::embed::Embedder;
use crate::extract::{Extractor, LlmExtractor, LlmSettings, VerbatimExtractor};
use crate::mcp::{Caller, EngramMcp};
use crate::openai::Endpoint;
use crate::service::{MemoryService, Settings};
use crate::store::{Deadline, PgOptions, PgStore, Traced, redact};
use crate::store::{SqliteStore, Store, StoreError};

mod embedder;
mod export;
mod healthcheck;
mod import;
mod keys;
pub use embedder::{embedder, local_settings, pull_model};
pub use export::{ExportArgs, ExportFormat, export};
pub use healthcheck::{default_probe_url, healthcheck};
pub use import::{ImportArgs, derived_id, import};
pub use keys::{KeyExpiry, create_key, list_keys, revoke_key, rotate_key};

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
    #[error("audit: {0}")]
    Audit(String),

    #[error("{0} pending remember(s) failed again; they stay pending (see above)")]
    Reextract(usize),

    #[error(
        "--encrypt needs an encryption key: set ENGRAM_ENCRYPTION_KEY (or \
         ENGRAM_ENCRYPTION_KEY_FILE); nothing was written"
    )]
    NoExportKey,
    #[error("{url} is not healthy: {why}")]
    Unhealthy { url: String, why: String },
    #[error("{0} exists; pass --force to replace it")]
    OutputExists(String),
    #[error("{path}: {source}")]
    File {
        path: String,
        source: std::io::Error,
    },
    #[error(
        "{path} was encrypted under key id {key_id}, which is not configured: set \
         ENGRAM_ENCRYPTION_KEY to that key (after a rotation: add it to \
         ENGRAM_ENCRYPTION_OLD_KEYS)"
    )]
    ExportKeyMissing { path: String, key_id: String },
    #[error(
        "{path}: authentication failed: the file was changed or another key sealed it \
         (it names key id {key_id})"
    )]
    ExportForged { path: String, key_id: String },
    #[error("{path} is not an engram encrypted export: its \"{field}\" is missing or malformed")]
    NotAnExport { path: String, field: &'static str },
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
        let options = pg_options(config);
        let (acquire_timeout, statement_timeout) = (
            options.acquire_timeout,
            options.statement_timeout.unwrap_or_default(),
        );
        let store = PgStore::open(url, embedder.identity(), options)
            .await?
            .with_keyword_copy_bytes(config.store.vector_cache_mb * 1024 * 1024);
        // A database over the network can stop answering mid-statement,
        // which neither bound above notices.
        let limit = acquire_timeout + statement_timeout;
        return Ok(traced(
            Arc::new(Deadline::new(Arc::new(store), limit)),
            "postgresql",
        ));
    }
    let store = SqliteStore::open(url, embedder.identity())
        .await?
        .with_vector_cache_bytes(config.store.vector_cache_mb * 1024 * 1024);
    Ok(traced(Arc::new(store), "sqlite"))
}

/// `store`, with a span around every call when traces are exported.
pub(crate) fn traced(store: Arc<dyn Store>, system: &'static str) -> Arc<dyn Store> {
    if crate::telemetry::spans::enabled() {
        Arc::new(Traced::new(store, system))
    } else {
        store
    }
}

/// How the configured PostgreSQL store is opened.
fn pg_options(config: &Config) -> PgOptions {
    PgOptions {
        pool_size: config.store.pool_size,
        acquire_timeout: Duration::from_millis(config.store.timeout_ms),
        statement_timeout: Some(Duration::from_millis(config.store.statement_timeout_ms)),
        migrate: config.store.auto_migrate,
        index: config.store.index,
        plan: Default::default(),
        owner_url: config.store.owner_url.clone(),
        direct_url: config.store.direct_url.clone(),
        pooler: config.store.pooler,
        ..PgOptions::default()
    }
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
        ca_file: config.cache.ca_file.clone(),
    };
    Ok(Arc::new(RedisCache::connect(settings).await?))
}

/// Opens the store and wires the service. Fails fast on any misconfiguration.
pub async fn build(config: &Config) -> Result<Arc<MemoryService>, StartupError> {
    crate::telemetry::spans::capture_content(config.telemetry.trace_content);
    let embedder = embedder(config).await?;
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
        retention: config.retention.clone(),
        token_budget: config.budget.clone(),
    };
    let mut service =
        MemoryService::new(store.clone(), embedder, extractor, settings).with_cache(cache);
    if config.audit.enabled {
        let pseudonyms = Pseudonyms::new(audit_key(config)?);
        let auditor = Auditor::new(pseudonyms, config.audit.queries, Sink::start(store));
        service = service.with_audit(Arc::new(auditor));
    }
    if let Some(sealer) = config.crypto.sealer() {
        service = service.with_sealer(Arc::new(sealer));
    }
    Ok(Arc::new(service))
}

/// Writes the audit rows still queued (reads' rows go after the answer).
async fn flush_audit(service: &MemoryService) {
    if let Some(auditor) = service.auditor() {
        auditor.flush().await;
    }
}

/// The key audit rows' user pseudonyms are made with: `ENGRAM_AUDIT_KEY`,
/// else a random key kept in a file beside the data (made on first use,
/// readable by its owner only). Instances sharing a PostgreSQL database
/// must share the key: set `ENGRAM_AUDIT_KEY` there.
pub fn audit_key(config: &Config) -> Result<Vec<u8>, StartupError> {
    if let Some(key) = &config.audit.key {
        return Ok(key.0.as_bytes().to_vec());
    }
    let url = &config.store.database_url;
    let path = match url.strip_prefix("sqlite://") {
        Some(db) => std::path::PathBuf::from(format!("{db}.audit-key")),
        None => {
            tracing::warn!(
                "ENGRAM_AUDIT_KEY is not set: audit pseudonyms use a key file on this machine;                  every instance on this database must use the same key (set ENGRAM_AUDIT_KEY)"
            );
            dirs::data_dir()
                .ok_or_else(|| StartupError::Audit("no data directory for the audit key".into()))?
                .join("engram")
                .join("audit.key")
        }
    };
    read_or_make_key(&path).map_err(|e| {
        StartupError::Audit(format!(
            "the audit key file {}: {e} (or set ENGRAM_AUDIT_KEY)",
            path.display()
        ))
    })
}

/// The key in `path`, or a new random one written there (mode 0600).
fn read_or_make_key(path: &std::path::Path) -> std::io::Result<Vec<u8>> {
    match std::fs::read(path) {
        Ok(key) if key.len() >= crate::config::MIN_AUDIT_KEY_BYTES => return Ok(key),
        Ok(_) => {
            return Err(std::io::Error::other(
                "it is shorter than 32 bytes; remove it to make a new one",
            ));
        }
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        Err(_) => {}
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let key = format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    );
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    use std::io::Write;
    options.open(path)?.write_all(key.as_bytes())?;
    Ok(key.into_bytes())
}

/// `engram migrate`: applies pending migrations to the configured database.
pub async fn migrate(config: &Config) -> Result<(), StartupError> {
    let url = &config.store.database_url;
    if is_postgres(url) {
        PgStore::migrate(url, embedder(config).await?.identity(), pg_options(config)).await?;
    } else {
        // Opening a SQLite store applies its migrations.
        SqliteStore::open(url, embedder(config).await?.identity()).await?;
    }
    eprintln!("engram: {} is up to date", redact(url));
    Ok(())
}

/// `engram reextract`: runs the pipeline on up to `limit` pending remembers
/// and prints what became of each. Fails when any failed again (they stay).
pub async fn reextract(config: &Config, limit: usize) -> Result<(), StartupError> {
    let service = build(config).await?;
    let cli = crate::audit::Origin {
        transport: "cli",
        client_addr: None,
    };
    let report = crate::audit::from(cli, service.reextract(limit)).await?;
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
    for held in &report.over_budget {
        println!(
            "{} (user {}): skipped, over the token budget: {}",
            held.id, held.user_id, held.reason
        );
    }
    println!(
        "engram: re-extracted {}, failed {}, skipped {} (they need ENGRAM_EXTRACTOR=llm), \
         skipped {} over the token budget; {} still pending",
        report.finished.len(),
        report.failed.len(),
        report.skipped,
        report.over_budget.len(),
        report.remaining
    );
    if report.failed.is_empty() {
        Ok(())
    } else {
        Err(StartupError::Reextract(report.failed.len()))
    }
}

/// `engram reembed`: rebuilds the store's vectors with the configured embedder.
pub async fn reembed(config: &Config) -> Result<(), StartupError> {
    let embedder = embedder(config).await?;
    let url = &config.store.database_url;
    let count = if is_postgres(url) {
        // Rewrites a column's type: as the owner, when there is one, and
        // never through a transaction pooler.
        PgStore::reembed(
            config.store.setup_url(),
            embedder.as_ref(),
            config.store.index,
        )
        .await?
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
    service: Arc<MemoryService>,
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
        if let Some(store) = service.audited_store() {
            tokio::spawn(crate::audit::chain::run_sealer(store, stop.clone()));
        }
        spawn_purger(config, &service, &stop);
        spawn_metrics(config, &service, &stop).await?;
        let app = crate::http::app(
            service.clone(),
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
            service,
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
        flush_audit(&self.service).await;
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
    let sealing = tokio_util::sync::CancellationToken::new();
    if let Some(store) = service.audited_store() {
        tokio::spawn(crate::audit::chain::run_sealer(store, sealing.clone()));
    }
    spawn_purger(config, &service, &sealing);
    spawn_metrics(config, &service, &sealing).await?;
    let _stop_sealing = sealing.drop_guard();
    let handler = EngramMcp::new(service.clone(), Caller::Fixed(Principal::Operator));
    let (input, output) = crate::stdio::standard_streams();
    let transport = crate::stdio::transport(input, output);
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
    flush_audit(&service).await;
    tracing::info!("client disconnected; engram stopped");
    Ok(())
}

/// Which audit rows `engram audit` lists.
#[derive(Debug, Clone, Default)]
pub struct AuditListing {
    /// Rows about this user id (found through their pseudonym).
    pub user: Option<String>,
    pub since: Option<chrono::DateTime<chrono::Utc>>,
    pub operation: Option<String>,
    pub limit: usize,
    /// One JSON object per line instead of a table.
    pub json: bool,
}

/// `engram audit`: the newest audit rows matching `listing`, newest first.
pub async fn audit_list(config: &Config, listing: AuditListing) -> Result<(), StartupError> {
    let store = store(config, embedder(config).await?.as_ref()).await?;
    let user_ref = match &listing.user {
        Some(user) => Some(Pseudonyms::new(audit_key(config)?).of(user)),
        None => None,
    };
    let query = crate::store::AuditQuery {
        user_ref,
        since: listing.since,
        operation: listing.operation,
        before_seq: None,
        limit: listing.limit,
    };
    for row in store.audit_rows(&query).await? {
        if listing.json {
            println!(
                "{}",
                serde_json::to_string(&row).map_err(|e| StartupError::Audit(e.to_string()))?
            );
            continue;
        }
        let r = &row.record;
        println!(
            "{:>8}  {}  {:<13} {:<8} {:<5} {:<15} {:<12} {:>5}  {}  {}",
            row.seq,
            r.at.format("%Y-%m-%d %H:%M:%S"),
            r.operation,
            r.principal,
            r.transport,
            r.client_addr.as_deref().unwrap_or("-"),
            r.outcome,
            r.memory_count,
            r.user_ref.as_deref().map_or("-", |u| &u[..12.min(u.len())]),
            if row.chain_pos.is_some() {
                "sealed"
            } else {
                "unsealed"
            }
        );
    }
    Ok(())
}

/// `engram audit seal`: chains every committed row now.
pub async fn audit_seal(config: &Config) -> Result<(), StartupError> {
    let store = store(config, embedder(config).await?.as_ref()).await?;
    let sealed = crate::audit::chain::seal_all(store.as_ref()).await?;
    eprintln!("engram: sealed {sealed} audit row(s)");
    Ok(())
}

/// How many of the newest rows `engram audit verify` looks at for ones
/// not sealed yet.
const UNSEALED_SHOWN: usize = 1000;

/// `engram audit verify`: recomputes the chain; fails at the first broken
/// row; says how many newer rows are not sealed (so not covered) yet.
pub async fn audit_verify(config: &Config) -> Result<(), StartupError> {
    let store = store(config, embedder(config).await?.as_ref()).await?;
    let verification = crate::audit::chain::verify(store.as_ref()).await?;
    match verification.broken {
        None => {
            println!(
                "audit chain intact: {} sealed row(s) verified",
                verification.checked
            );
            // Rows not sealed yet are not covered: say so, so that an intact
            // chain is not read as the whole trail.
            let newest = store
                .audit_rows(&crate::store::AuditQuery {
                    limit: UNSEALED_SHOWN,
                    ..Default::default()
                })
                .await?;
            let unsealed = newest.iter().filter(|r| r.chain_pos.is_none()).count();
            if unsealed > 0 {
                let at_least = if unsealed == UNSEALED_SHOWN {
                    "at least "
                } else {
                    ""
                };
                println!(
                    "{at_least}{unsealed} newer row(s) not sealed yet, so not verified: \
                     `engram serve` seals every few seconds; `engram audit seal` seals now"
                );
            }
            Ok(())
        }
        Some(broken) => Err(StartupError::Audit(format!(
            "the audit chain breaks at chain position {} (row seq {}): {}; {} row(s) before it \
             verified",
            broken.chain_pos, broken.seq, broken.reason, verification.checked
        ))),
    }
}

/// Runs the retention purge inside `serve` until `stop`, every
/// `ENGRAM_RETENTION_PURGE_INTERVAL_SECS` (unless 0).
fn spawn_purger(
    config: &Config,
    service: &Arc<MemoryService>,
    stop: &tokio_util::sync::CancellationToken,
) {
    if let Some(secs) = config.retention.purge_every_secs {
        tokio::spawn(crate::service::run_purger(
            service.clone(),
            Duration::from_secs(secs),
            stop.clone(),
        ));
    }
}

/// Records what is running for the metrics, refreshes their gauges every
/// `ENGRAM_METRICS_REFRESH_SECS` until `stop`, and with `ENGRAM_METRICS_BIND`
/// serves `GET /metrics` there (the stdio transport's only way to be scraped).
async fn spawn_metrics(
    config: &Config,
    service: &Arc<MemoryService>,
    stop: &tokio_util::sync::CancellationToken,
) -> Result<(), StartupError> {
    use crate::config::ExtractorKind;
    crate::metrics::metrics().set_build_info(crate::metrics::BuildInfo {
        store: if is_postgres(&config.store.database_url) {
            "postgres"
        } else {
            "sqlite"
        },
        embedder: match service.embedder_identity().name.split(':').next() {
            Some("openai") => "openai",
            Some("local") => "local",
            _ => "hash",
        },
        extractor: match config.llm.extractor {
            ExtractorKind::Verbatim => "verbatim",
            ExtractorKind::Llm => "llm",
        },
    });
    tokio::spawn(crate::service::run_gauges(
        service.clone(),
        Duration::from_secs(config.metrics.refresh_secs),
        stop.clone(),
    ));
    if let Some(bind) = config.metrics.bind {
        let listener = tokio::net::TcpListener::bind(bind).await.map_err(|e| {
            StartupError::Transport(format!(
                "cannot listen on {bind} for metrics (ENGRAM_METRICS_BIND): {e}"
            ))
        })?;
        tracing::info!(address = %bind, "serving Prometheus metrics at /metrics");
        let app = crate::http::metrics_only(service.clone());
        let stop = stop.clone();
        tokio::spawn(async move {
            let served = axum::serve(listener, app)
                .with_graceful_shutdown(async move { stop.cancelled().await })
                .await;
            if let Err(e) = served {
                tracing::warn!(error = %e, "the metrics listener stopped");
            }
        });
    }
    Ok(())
}

/// `engram purge [--dry-run]`: removes (or with `dry_run` counts) the
/// memories the retention settings make due now, and says what went.
pub async fn purge(config: &Config, dry_run: bool) -> Result<(), StartupError> {
    let service = build(config).await?;
    let cli = crate::audit::Origin {
        transport: "cli",
        client_addr: None,
    };
    let outcome = crate::audit::from(cli, service.purge(dry_run)).await?;
    flush_audit(&service).await;
    let r = &config.retention;
    let days = |d: Option<u32>| {
        d.map_or_else(
            || "kept until forgotten".to_owned(),
            |d| format!("{d} days"),
        )
    };
    eprintln!(
        "engram: retention: memories {}{}; superseded memories {}",
        days(r.days),
        if r.categories.is_empty() {
            String::new()
        } else {
            let by: Vec<String> = r
                .categories
                .iter()
                .map(|(c, d)| format!("{c}={d}"))
                .collect();
            format!(" (by category: {})", by.join(", "))
        },
        days(r.history_days)
    );
    let (expired, history) = (outcome.removed.expired, outcome.removed.history);
    if dry_run {
        println!(
            "would remove {expired} expired memories and {history} superseded memories past \
             the history retention (dry run: nothing changed)"
        );
    } else {
        println!(
            "removed {expired} expired memories and {history} superseded memories past the \
             history retention{}",
            if outcome.skipped {
                "; another purge was running, so this one stopped early"
            } else {
                ""
            }
        );
    }
    Ok(())
}

/// Rows `engram rotate-key` reads per round.
const RESEAL_BATCH: usize = 256;

/// What `engram rotate-key` did, per column.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ResealCounts {
    /// Rows re-sealed under the current key.
    pub resealed: u64,
    /// Rows already all under the current key.
    pub current: u64,
    /// Rows that changed or went while being re-sealed (run again for them).
    pub raced: u64,
    /// Rows holding a value no configured key opens (left as they are).
    pub unreadable: u64,
}

/// `engram rotate-key`: re-seals every sealed value (memories' metadata,
/// pending entries' metadata and inputs) under the current key, in rounds
/// of `RESEAL_BATCH` (256) rows, each row written only if unchanged since read,
/// so `engram serve` keeps running meanwhile (its older keys still open
/// what is not re-sealed yet). Then the touched users' cache entries are
/// dropped, so none holds a value under a key about to be removed.
pub async fn rotate_encryption_key(config: &Config) -> Result<(), StartupError> {
    let Some(sealer) = config.crypto.sealer() else {
        return Err(StartupError::Unsupported(
            "no encryption key is configured; set ENGRAM_ENCRYPTION_KEY (the new key) and \
             ENGRAM_ENCRYPTION_OLD_KEYS (the keys it replaces)"
                .into(),
        ));
    };
    let store = store(config, embedder(config).await?.as_ref()).await?;
    let cache = cache(config).await?;
    let mut users = std::collections::BTreeSet::new();
    let mut failed = 0;
    for (column, name) in [
        (
            crate::store::SealedColumn::MemoryMetadata,
            "memory metadata",
        ),
        (
            crate::store::SealedColumn::PendingMetadata,
            "pending metadata",
        ),
        (crate::store::SealedColumn::PendingInput, "pending inputs"),
    ] {
        let counts = reseal_column(store.as_ref(), &sealer, column, &mut users).await?;
        println!(
            "{name}: {} re-sealed under key {}, {} already current, {} changed meanwhile, \
             {} unreadable",
            counts.resealed,
            sealer.current_id(),
            counts.current,
            counts.raced,
            counts.unreadable
        );
        failed += counts.raced + counts.unreadable;
    }
    for user in &users {
        if let Ok(user) = crate::model::UserId::parse(user) {
            cache.purge_user(&user, None).await;
        }
    }
    if failed > 0 {
        return Err(StartupError::Unsupported(format!(
            "{failed} row(s) were not re-sealed (see above); run `engram rotate-key` again, and \
             configure the key of any unreadable one"
        )));
    }
    Ok(())
}

/// Re-seals one column's rows; the users touched go into `users`.
async fn reseal_column(
    store: &dyn Store,
    sealer: &crate::crypto::Sealer,
    column: crate::store::SealedColumn,
    users: &mut std::collections::BTreeSet<String>,
) -> Result<ResealCounts, StartupError> {
    use crate::crypto::Place;
    use crate::store::SealedColumn;
    let mut counts = ResealCounts::default();
    let mut after = uuid::Uuid::nil();
    loop {
        let rows = store.sealed_rows(column, after, RESEAL_BATCH).await?;
        let Some(last) = rows.last() else {
            return Ok(counts);
        };
        after = last.id;
        for row in rows {
            let new = match (column, &row.value) {
                (SealedColumn::PendingInput, value) => {
                    sealer.reseal(value, &row.user_id, Place::PendingInput)
                }
                (_, serde_json::Value::Object(metadata)) => sealer
                    .reseal_metadata(metadata, &row.user_id)
                    .map(|m| m.map(serde_json::Value::Object)),
                _ => Ok(None),
            };
            match new {
                Ok(Some(new)) => {
                    if store.reseal(column, &row, &new).await? {
                        counts.resealed += 1;
                        users.insert(row.user_id);
                    } else {
                        counts.raced += 1;
                    }
                }
                Ok(None) => counts.current += 1,
                Err(e) => {
                    eprintln!("engram: {} (user {}): {e}", row.id, row.user_id);
                    counts.unreadable += 1;
                }
            }
        }
    }
}
