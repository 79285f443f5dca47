//! The HTTP transport: one axum app.
//!
//! * `/mcp`: MCP over Streamable HTTP (rmcp's tower service; one
//!   [`EngramMcp`] per session, all sharing one [`MemoryService`]).
//! * `/sse` + `/messages`: the legacy HTTP+SSE transport ([`sse`]).
//! * `/healthz`: the process is up. `/readyz`: the database answers (the
//!   cache's state is shown, but engram serves without it, so it never
//!   makes the instance unready).
//!
//! Who may call: API keys exist (`engram keys`) but are not checked here
//! yet, so for now the transport runs
//! only with `ENGRAM_AUTH=none`, and only on a loopback address (start-up
//! refuses anything else), where reaching the port already means being on
//! the machine. The REST API comes next.
//!
//! Shutdown: SIGINT or SIGTERM stops accepting connections, ends MCP
//! sessions, and lets requests in flight finish.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::{StreamableHttpServerConfig, StreamableHttpService};
use tokio_util::sync::CancellationToken;

use crate::config::{AuthMode, Config};
use crate::mcp::EngramMcp;
use crate::service::MemoryService;

mod sse;

#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("cannot listen on {bind} (expected HOST:PORT, e.g. 127.0.0.1:8765): {source}")]
    Bind {
        bind: String,
        source: std::io::Error,
    },
    #[error(
        "the HTTP transport does not check API keys yet: run it with ENGRAM_AUTH=none, \
         which is allowed on a loopback address only (127.0.0.1, ::1, localhost)"
    )]
    NoAuth,
    #[error(
        "{0} is not a loopback address: without API keys, anyone who reaches it could read \
         every user's memories. Bind to 127.0.0.1 (and put a proxy with authentication in \
         front), or wait for API keys"
    )]
    NotLoopback(String),
    #[error("the HTTP server failed: {0}")]
    Serve(std::io::Error),
    #[error("cannot watch for SIGINT/SIGTERM: {0}")]
    Signals(std::io::Error),
}

/// Checks that `bind` may be served under `config`, and resolves it.
pub async fn listener(config: &Config, bind: &str) -> Result<tokio::net::TcpListener, HttpError> {
    if config.auth != AuthMode::None {
        return Err(HttpError::NoAuth);
    }
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host(bind)
        .await
        .map_err(|source| HttpError::Bind {
            bind: bind.to_owned(),
            source,
        })?
        .collect();
    if addrs.is_empty() || addrs.iter().any(|a| !a.ip().is_loopback()) {
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

/// The app: MCP at `/mcp` and `/sse`, health at `/healthz` and `/readyz`;
/// every request's `Host` must be one of `allowed_hosts`.
pub fn app(
    service: Arc<MemoryService>,
    default_user: String,
    allowed_hosts: Vec<String>,
    stop: CancellationToken,
) -> Router {
    let mcp_service = service.clone();
    let mcp_user = default_user.clone();
    let mcp = StreamableHttpService::new(
        move || Ok(EngramMcp::new(mcp_service.clone(), mcp_user.clone())),
        Arc::new(LocalSessionManager::default()),
        StreamableHttpServerConfig::default()
            .with_cancellation_token(stop.clone())
            .with_allowed_hosts(allowed_hosts.clone())
            .with_max_request_body_bytes(MAX_BODY_BYTES),
    );
    let sessions = sse::Sessions::new(service.clone(), default_user.clone(), stop.clone());
    let legacy = Router::new()
        .route("/sse", get(sse::open))
        .route("/messages", post(sse::post))
        .with_state(sessions);
    Router::new()
        .nest_service("/mcp", mcp)
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .with_state(service)
        .merge(legacy)
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(axum::middleware::from_fn(move |request, next| {
            check_host(allowed_hosts.clone(), request, next)
        }))
}

/// Refuses a request whose `Host` is not allowed (403), before any handler.
async fn check_host(
    allowed: Vec<String>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let host = request
        .headers()
        .get(axum::http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or_default()
        .to_ascii_lowercase();
    if host_allowed(&allowed, &host) {
        return next.run(request).await;
    }
    tracing::warn!(host = %host, "refused a request for a host that is not allowed");
    (
        StatusCode::FORBIDDEN,
        format!(
            "host '{host}' is not served here; allowed: {} (ENGRAM_ALLOWED_HOSTS)\n",
            allowed.join(", ")
        ),
    )
        .into_response()
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

/// `/readyz`: 503 when the database does not answer. The cache is
/// reported but never fails readiness: engram serves without it.
async fn ready(State(service): State<Arc<MemoryService>>) -> impl IntoResponse {
    let cache = match service.cache_state().await {
        None => "none".to_owned(),
        Some(Ok(())) => "ok".to_owned(),
        Some(Err(e)) => format!("down ({e})"),
    };
    match service.ready().await {
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
    axum::serve(listener, app)
        .with_graceful_shutdown(async move { stop.cancelled().await })
        .await
        .map_err(HttpError::Serve)
}

#[cfg(test)]
mod tests {
    use super::host_allowed;

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
