//! The HTTP transport: one axum app.
//!
//! * `/mcp`: MCP over Streamable HTTP (rmcp's tower service; one
//!   [`EngramMcp`] per session, all sharing one [`MemoryService`]; each
//!   request acts as the key it carries).
//! * `/sse` + `/messages`: the legacy HTTP+SSE transport ([`sse`]).
//! * `/api/v1/memory/...`: the REST API ([`api`]), described by
//!   `/api/v1/openapi.json` ([`openapi`]).
//! * `/healthz`: the process is up. `/readyz`: the database answers (the
//!   cache's state is shown, but engram serves without it, so it never
//!   makes the instance unready). Both answer whatever the `Host`, as
//!   `/metrics` does: probes come by the pod's address.
//! * `/metrics`: Prometheus metrics ([`crate::metrics`]; `metrics.rs`), with
//!   no key and whatever the `Host`: a scraper comes by the pod's address.
//!
//! Who may call: every MCP and REST request passes the [`auth`] gate (API
//! keys, per-key rate limits); requests that act on a user are also counted
//! against that user's limit where the user is known (`crate::limit`). No
//! route takes a query parameter it does not name (`query`). Serving
//! without keys (`ENGRAM_AUTH=none`) is allowed on a loopback address only;
//! start-up refuses anything else.
//! Before any of that, a request must name an allowed `Host`, and a
//! browser's `Origin` must be an allowed one (DNS-rebinding pages are
//! refused); CORS is answered only for configured origins.
//!
//! Shutdown: SIGINT or SIGTERM stops accepting connections, ends MCP
//! sessions, and lets requests in flight finish.
//!
//! Traces: when exported, every request runs in its span (`traced.rs`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::{from_fn, from_fn_with_state};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::{StreamableHttpServerConfig, StreamableHttpService};
use tokio_util::sync::CancellationToken;

use crate::audit;
use crate::config::{AuthMode, Config};
use crate::limit::{Door, UserLimit};
use crate::mcp::{Caller, EngramMcp};
use crate::service::MemoryService;

mod api;
mod auth;
mod jsonrpc_id;
mod malformed;
mod metrics;

pub(crate) use malformed::UserCounted;
mod openapi;
mod problem;
mod query;
mod sse;
mod traced;

use problem::Problem;

#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("cannot listen on {bind} (expected HOST:PORT, e.g. 127.0.0.1:8765): {source}")]
    Bind {
        bind: String,
        source: std::io::Error,
    },
    #[error(
        "{0} is not a loopback address, and ENGRAM_AUTH=none would let anyone who reaches it \
         read every user's memories. Use API keys (ENGRAM_AUTH=keys, the default; create keys \
         with `engram keys create`), or bind to 127.0.0.1"
    )]
    NotLoopback(String),
    #[error("the HTTP server failed: {0}")]
    Serve(std::io::Error),
    #[error("cannot watch for SIGINT/SIGTERM: {0}")]
    Signals(std::io::Error),
}

/// Checks that `bind` may be served under `config`, and resolves it.
pub async fn listener(config: &Config, bind: &str) -> Result<tokio::net::TcpListener, HttpError> {
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host(bind)
        .await
        .map_err(|source| HttpError::Bind {
            bind: bind.to_owned(),
            source,
        })?
        .collect();
    if config.http.auth == AuthMode::None
        && (addrs.is_empty() || addrs.iter().any(|a| !a.ip().is_loopback()))
    {
        return Err(HttpError::NotLoopback(bind.to_owned()));
    }
    tokio::net::TcpListener::bind(addrs.as_slice())
        .await
        .map_err(|source| HttpError::Bind {
            bind: bind.to_owned(),
            source,
        })
}

/// Largest request body accepted (a remember is at most ENGRAM_MAX_TEXT_BYTES
/// of text plus JSON around it).
const MAX_BODY_BYTES: usize = 1024 * 1024;

/// What the app needs from the configuration.
#[derive(Debug, Clone)]
pub struct Settings {
    pub auth: AuthMode,
    pub allowed_hosts: Vec<String>,
    pub allowed_origins: Vec<String>,
    /// Requests per minute per API key (0: unlimited).
    pub rest_rate_limit: u32,
    pub mcp_rate_limit: u32,
    /// Requests per minute per acting user (0: unlimited).
    pub rest_user_rate_limit: u32,
    pub mcp_user_rate_limit: u32,
    pub request_timeout: Duration,
    /// How long `/readyz` waits for the database.
    pub ready_timeout: Duration,
    /// Streamable HTTP sessions one key may hold open.
    pub mcp_sessions_per_key: u32,
}

impl Settings {
    pub fn from_config(config: &Config) -> Self {
        Self {
            auth: config.http.auth,
            allowed_hosts: config.http.allowed_hosts.clone(),
            allowed_origins: config.http.allowed_origins.clone(),
            rest_rate_limit: config.http.rest_rate_limit,
            mcp_rate_limit: config.http.mcp_rate_limit,
            rest_user_rate_limit: config.http.rest_user_rate_limit,
            mcp_user_rate_limit: config.http.mcp_user_rate_limit,
            request_timeout: Duration::from_secs(config.http.request_timeout_secs),
            ready_timeout: Duration::from_millis(config.store.ready_timeout_ms),
            mcp_sessions_per_key: config.http.mcp_sessions_per_key,
        }
    }
}

/// The app: MCP at `/mcp` and `/sse`, REST at `/api/v1`, health at
/// `/healthz` and `/readyz`.
pub fn app(service: Arc<MemoryService>, settings: Settings, stop: CancellationToken) -> Router {
    let mcp_service = service.clone();
    let metrics_service = service.clone();
    // One allowance per user for MCP, whichever transport (`/mcp`, `/sse`)
    // or key the calls come through.
    let mcp_user_limit = Arc::new(UserLimit::new(
        settings.mcp_user_rate_limit,
        service.cache(),
        Door::Mcp,
    ));
    let handler_limit = mcp_user_limit.clone();
    let live_sessions = Arc::new(LocalSessionManager::default());
    let mcp = StreamableHttpService::new(
        move || {
            Ok(EngramMcp::new(mcp_service.clone(), Caller::PerRequest)
                .with_user_limit(handler_limit.clone()))
        },
        live_sessions.clone(),
        StreamableHttpServerConfig::default()
            .with_cancellation_token(stop.clone())
            .with_allowed_hosts(settings.allowed_hosts.clone())
            .with_max_request_body_bytes(MAX_BODY_BYTES),
    );
    let mcp_users = malformed::McpUsers {
        service: service.clone(),
        limit: mcp_user_limit.clone(),
    };
    let sessions = sse::Sessions::new(service.clone(), mcp_user_limit, stop.clone());
    let mcp_gate = auth::Gate::new(
        service.clone(),
        settings.auth,
        settings.mcp_rate_limit,
        "mcp",
    );
    // `/messages` counts against the same limit, but its handler refuses
    // (so that the refusal also reaches the session's stream).
    let sse_routes = Router::new()
        .route("/sse", get(sse::open))
        .route_layer(from_fn_with_state(mcp_gate.clone(), auth::gate))
        .route(
            "/messages",
            post(sse::post).layer(from_fn_with_state(
                mcp_gate.clone().deferring_limit(),
                auth::gate,
            )),
        )
        .with_state(sessions);
    let mcp_routes = Router::new()
        .nest_service("/mcp", mcp)
        .layer(from_fn_with_state(mcp_users, malformed::answer_malformed))
        .layer(from_fn_with_state(
            auth::SessionOwners::new(live_sessions, settings.mcp_sessions_per_key),
            auth::owned_sessions,
        ))
        // Over the limit, `/mcp` answers in JSON-RPC too (malformed.rs).
        .layer(from_fn_with_state(mcp_gate.deferring_limit(), auth::gate))
        .merge(sse_routes);

    let rest_gate = auth::Gate::new(
        service.clone(),
        settings.auth,
        settings.rest_rate_limit,
        "rest",
    );
    let timeout = settings.request_timeout;
    let rest = api::router(api::Api {
        service: service.clone(),
        user_limit: Arc::new(UserLimit::new(
            settings.rest_user_rate_limit,
            service.cache(),
            Door::Rest,
        )),
    })
    .layer(from_fn(move |request, next| within(timeout, request, next)))
    .layer(from_fn_with_state(rest_gate, auth::gate))
    .route(
        "/api/v1/openapi.json",
        get(|_: api::Params<query::NoQuery>| async { axum::Json(openapi::document()) }),
    )
    .layer(from_fn(api::problems_only));

    // Probes answer whatever the `Host`: an orchestrator probes by the
    // pod's address, and they tell nothing about any user.
    let ready_timeout = settings.ready_timeout;
    let probes = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(move |state| ready(state, ready_timeout)))
        .with_state(service);
    let mut app = Router::new()
        .merge(mcp_routes)
        .merge(rest)
        .fallback(|method: Method, uri: axum::http::Uri| async move {
            Problem::not_found(format!(
                "no route {method} {}; engram serves /mcp, /sse, /api/v1/memory \
                 (see /api/v1/openapi.json), /healthz and /readyz",
                uri.path()
            ))
        })
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY_BYTES));
    if let Some(cors) = cors(&settings.allowed_origins) {
        app = app.layer(cors);
    }
    let (hosts, origins) = (settings.allowed_hosts, settings.allowed_origins);
    let guarded = app
        .layer(from_fn(audit_origin))
        .layer(from_fn(move |request, next| {
            check_host(hosts.clone(), origins.clone(), request, next)
        }))
        .layer(from_fn(traced::request));
    // Outside the host check: a scraper or a probe comes by the pod's address.
    metrics::only(metrics_service)
        .merge(probes.layer(from_fn(traced::request)))
        .merge(guarded)
}

/// The REST API's OpenAPI document, as `/api/v1/openapi.json` serves it.
pub(crate) fn openapi_document() -> &'static serde_json::Value {
    openapi::document()
}

/// The router of `ENGRAM_METRICS_BIND`: `GET /metrics` alone.
pub fn metrics_only(service: Arc<MemoryService>) -> Router {
    metrics::only(service)
}

/// Notes where a request came from, for the audit trail: the door (by its
/// path) and the client's address. In the request (MCP handlers read it
/// there: rmcp may serve them on another task) and around the handler.
/// Counts the requests refused before the service, by door.
async fn audit_origin(
    mut request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let path = request.uri().path();
    let transport = if path.starts_with("/mcp") {
        "mcp"
    } else if path.starts_with("/sse") || path.starts_with("/messages") {
        "sse"
    } else {
        "rest"
    };
    let client_addr = request
        .extensions()
        .get::<axum::extract::ConnectInfo<SocketAddr>>()
        .map(|info| info.0.to_string());
    let origin = audit::Origin {
        transport,
        client_addr,
    };
    request.extensions_mut().insert(origin.clone());
    let response = audit::from(origin, next.run(request)).await;
    metrics::count_refusal(transport, &response);
    response
}

/// Answers 503 `timeout` when the request takes longer than `limit`. The
/// handler is dropped, which rolls back any transaction it had open.
async fn within(
    limit: Duration,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    match tokio::time::timeout(limit, next.run(request)).await {
        Ok(response) => response,
        Err(_) => Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "timeout",
            format!(
                "the request took longer than {} s (ENGRAM_REQUEST_TIMEOUT_SECS); it was \
                 stopped and may be retried",
                limit.as_secs()
            ),
        )
        .into_response(),
    }
}

/// CORS for the configured browser origins; none when none is configured.
fn cors(origins: &[String]) -> Option<tower_http::cors::CorsLayer> {
    use tower_http::cors::{AllowOrigin, CorsLayer};
    if origins.is_empty() {
        return None;
    }
    let origins: Vec<HeaderValue> = origins
        .iter()
        .filter_map(|o| HeaderValue::from_str(o).ok())
        .collect();
    let mcp_headers = ["mcp-session-id", "mcp-protocol-version", "last-event-id"]
        .map(axum::http::HeaderName::from_static);
    Some(
        CorsLayer::new()
            .allow_origin(AllowOrigin::list(origins))
            .allow_methods([Method::GET, Method::POST, Method::PUT, Method::DELETE])
            .allow_headers(
                [header::AUTHORIZATION, header::CONTENT_TYPE, header::ACCEPT]
                    .into_iter()
                    .chain(mcp_headers.clone())
                    .collect::<Vec<_>>(),
            )
            .expose_headers(
                [header::WWW_AUTHENTICATE, header::RETRY_AFTER]
                    .into_iter()
                    .chain(mcp_headers)
                    .collect::<Vec<_>>(),
            )
            .max_age(Duration::from_secs(600)),
    )
}

/// Refuses (403) a request whose `Host` is not allowed, or that a browser
/// sent from an `Origin` that is neither configured nor on an allowed host,
/// before any handler.
async fn check_host(
    hosts: Vec<String>,
    origins: Vec<String>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let host = lowercase(&request, header::HOST).unwrap_or_default();
    let origin = lowercase(&request, header::ORIGIN);
    if !host_allowed(&hosts, &host) {
        tracing::warn!(host = %host, "refused a request for a host that is not allowed");
        return Problem::forbidden(format!(
            "host '{host}' is not served here; allowed: {} (ENGRAM_ALLOWED_HOSTS)",
            hosts.join(", ")
        ))
        .into_response();
    }
    if let Some(origin) = origin {
        // `origin` is scheme://authority: its authority must be an allowed host.
        let authority = origin.split_once("://").map_or("", |(_, a)| a);
        if !origins.contains(&origin) && !host_allowed(&hosts, authority) {
            tracing::warn!(origin = %origin, "refused a request from an origin that is not allowed");
            return Problem::forbidden(format!(
                "requests from origin '{origin}' are not accepted; list it in \
                 ENGRAM_ALLOWED_ORIGINS to let that web page call engram"
            ))
            .into_response();
        }
    }
    next.run(request).await
}

fn lowercase(request: &axum::extract::Request, name: header::HeaderName) -> Option<String> {
    let value = request.headers().get(name)?.to_str().ok()?;
    Some(value.to_ascii_lowercase())
}

/// `host` (`name`, `name:port`, `[v6]:port`) matches an entry as a whole or
/// by its name alone.
fn host_allowed(allowed: &[String], host: &str) -> bool {
    let name = match host.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or_default(),
        None => host.rsplit_once(':').map_or(host, |(name, _)| name),
    };
    allowed.iter().any(|a| a == host || a == name)
}

/// `/readyz`: 503 when the database does not answer within `limit` (a
/// load balancer needs an answer sooner than a request's wait for a
/// connection). The cache is asked at the same time and reported, but never
/// fails readiness: engram serves without it.
async fn ready(State(service): State<Arc<MemoryService>>, limit: Duration) -> impl IntoResponse {
    let (cache, database) = tokio::join!(
        service.cache_state(),
        tokio::time::timeout(limit, service.ready())
    );
    let cache = match cache {
        None => "none".to_owned(),
        Some(Ok(())) => "ok".to_owned(),
        Some(Err(e)) => format!("down ({e})"),
    };
    let database = match database {
        Ok(answer) => answer.map_err(|e| e.to_string()),
        Err(_) => Err(format!(
            "no answer within {} ms (ENGRAM_DATABASE_READY_TIMEOUT_MS)",
            limit.as_millis()
        )),
    };
    match database {
        Ok(()) => (
            StatusCode::OK,
            format!("ready\ndatabase: ok\ncache: {cache}\n"),
        ),
        Err(e) => {
            tracing::warn!(error = %e, "not ready");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                format!("not ready\ndatabase: {e}\ncache: {cache}\n"),
            )
        }
    }
}

/// Cancels `stop` on SIGINT or SIGTERM. The handlers are registered before
/// this returns, so a signal sent as soon as the server says it listens is
/// never left to the default action (an abrupt exit).
pub fn stop_on_signals(stop: CancellationToken) -> Result<(), HttpError> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut terminate = signal(SignalKind::terminate()).map_err(HttpError::Signals)?;
        let mut interrupt = signal(SignalKind::interrupt()).map_err(HttpError::Signals)?;
        tokio::spawn(async move {
            tokio::select! {
                _ = terminate.recv() => {}
                _ = interrupt.recv() => {}
            }
            tracing::info!("shutting down: finishing requests in flight");
            stop.cancel();
        });
    }
    #[cfg(not(unix))]
    tokio::spawn(async move {
        let _ = tokio::signal::ctrl_c().await;
        tracing::info!("shutting down: finishing requests in flight");
        stop.cancel();
    });
    Ok(())
}

/// Serves `app` on `listener` until `stop` is cancelled, then drains.
pub async fn serve(
    listener: tokio::net::TcpListener,
    app: Router,
    stop: CancellationToken,
) -> Result<(), HttpError> {
    let app = app.into_make_service_with_connect_info::<SocketAddr>();
    axum::serve(without_delay(listener), app)
        .with_graceful_shutdown(async move { stop.cancelled().await })
        .await
        .map_err(HttpError::Serve)
}

/// Sets TCP_NODELAY on every accepted socket. MCP answers are small writes
/// (an SSE event, a JSON body); with Nagle's algorithm on, one waits for the
/// client's delayed ACK of the one before (tens of milliseconds).
fn without_delay(
    listener: tokio::net::TcpListener,
) -> axum::serve::TapIo<tokio::net::TcpListener, fn(&mut tokio::net::TcpStream)> {
    use axum::serve::ListenerExt;
    fn no_delay(socket: &mut tokio::net::TcpStream) {
        if let Err(e) = socket.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY on an accepted socket");
        }
    }
    listener.tap_io(no_delay as fn(&mut tokio::net::TcpStream))
}

#[cfg(test)]
mod tests {
    use super::{host_allowed, without_delay};

    #[tokio::test]
    async fn accepted_sockets_do_not_wait_for_acks() {
        use axum::serve::Listener;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let mut listener = without_delay(listener);
        let _client = tokio::net::TcpStream::connect(address).await.unwrap();
        let (accepted, _) = listener.accept().await;
        assert!(accepted.nodelay().unwrap());
    }

    #[test]
    fn hosts_match_by_name_or_name_and_port() {
        let allowed: Vec<String> = ["localhost", "127.0.0.1", "::1", "mem.example.com:8443"]
            .map(String::from)
            .to_vec();
        for ok in [
            "localhost",
            "localhost:8765",
            "127.0.0.1:1",
            "[::1]:8765",
            "mem.example.com:8443",
        ] {
            assert!(host_allowed(&allowed, ok), "{ok}");
        }
        for refused in [
            "evil.example",
            "evil.example:8765",
            "",
            "mem.example.com",
            "127.0.0.2:8765",
        ] {
            assert!(!host_allowed(&allowed, refused), "{refused}");
        }
    }
}
