//! Who is calling over HTTP, and whether they may call now.
//!
//! The gate runs in front of `/mcp`, `/sse`, `/messages` and `/api`. With
//! `ENGRAM_AUTH=keys` it requires `Authorization: Bearer <key>`, looks the
//! key up on every request (a revoked or expired key stops at once, on
//! every instance), counts the request against the key's rate limit (the
//! per-user limit is counted later, where the request's user is known: see
//! `crate::limit`), and hands the [`Principal`] to the handler in the
//! request's extensions (with what the key may do: a read-only key's writes
//! are refused by the service, not here). Missing, unknown, revoked and
//! expired keys alike get 401 with
//! `WWW-Authenticate`; an exhausted limit gets 429 with `Retry-After` (on
//! `/messages` the handler gives it, so that it also reaches the session's
//! stream). With `ENGRAM_AUTH=none` (loopback binds only) every request is
//! the operator's and nothing is counted, per key or per user.
//! Either way, a request with more than one `Authorization` header is 400.
//!
//! Sessions: a Streamable HTTP session answers only the principal that
//! opened it ([`owned_sessions`]); legacy SSE sessions keep the same rule
//! in `sse`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::http::{HeaderValue, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::problem::Problem;
use crate::auth::Principal;
use crate::config::AuthMode;
use crate::limit::{RateLimiter, retry_secs};
use crate::service::MemoryService;
use rmcp::transport::common::server_side_http::SessionId;
use rmcp::transport::streamable_http_server::session::SessionManager;
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;

/// The gate for one kind of route (REST or MCP: each has its own per-key
/// limit).
#[derive(Clone)]
pub struct Gate {
    service: Arc<MemoryService>,
    mode: AuthMode,
    limiter: Arc<RateLimiter>,
    /// Pass a rate-limited request on with [`RateLimited`] instead of
    /// answering 429 here (legacy SSE posts, whose client waits for the
    /// refusal on its event stream).
    defer_limit: bool,
}

/// A request over its key's rate limit, passed on by a gate that defers
/// the refusal to the handler: retry after this many seconds.
#[derive(Clone, Copy, Debug)]
pub struct RateLimited(pub u64);

impl Gate {
    /// `kind` names the limit in the shared cache (`rest`, `mcp`; the
    /// per-user limits are `rest-user`, `mcp-user`).
    pub fn new(
        service: Arc<MemoryService>,
        mode: AuthMode,
        per_minute: u32,
        kind: &'static str,
    ) -> Self {
        let limiter = RateLimiter::per_minute(per_minute).shared(service.cache(), kind);
        Self {
            service,
            mode,
            limiter: Arc::new(limiter),
            defer_limit: false,
        }
    }

    /// The same gate and limit, leaving the 429 to the handler: it gets
    /// the request with [`RateLimited`] and must refuse it.
    pub fn deferring_limit(mut self) -> Self {
        self.defer_limit = true;
        self
    }

    /// Who sent a request with this `Authorization` header.
    async fn principal(&self, authorization: Option<HeaderValue>) -> Result<Principal, Response> {
        if self.mode == AuthMode::None {
            return Ok(Principal::Operator);
        }
        let Some(raw) = authorization else {
            return Err(Problem::unauthorized(
                "send an API key as `Authorization: Bearer <key>`; an operator creates one \
                 with `engram keys create --user <user_id>`",
            )
            .into_response());
        };
        let key = raw
            .to_str()
            .ok()
            .and_then(|v| v.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, key)| key.trim())
            .filter(|key| !key.is_empty());
        let Some(key) = key else {
            return Err(
                Problem::unauthorized("the Authorization header must be `Bearer <key>`")
                    .into_response(),
            );
        };
        match self.service.authenticate(key).await {
            Ok(Some(principal)) => Ok(principal),
            Ok(None) => {
                let mut response =
                    Problem::unauthorized("this API key is unknown, revoked or expired")
                        .into_response();
                response.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static(r#"Bearer realm="engram", error="invalid_token""#),
                );
                Err(response)
            }
            Err(e) => Err(Problem::from(e).into_response()),
        }
    }
}

/// The middleware: authenticate, count, then pass the request on with its
/// [`Principal`].
pub async fn gate(State(gate): State<Gate>, mut request: Request, next: Next) -> Response {
    // Two credentials are one too many: which one counts would be a guess.
    if request
        .headers()
        .get_all(header::AUTHORIZATION)
        .iter()
        .nth(1)
        .is_some()
    {
        return Problem::invalid(
            Some("Authorization"),
            "the request carries more than one Authorization header; send exactly one, \
             `Authorization: Bearer <key>`",
        )
        .into_response();
    }
    let authorization = request.headers().get(header::AUTHORIZATION).cloned();
    let principal = match gate.principal(authorization).await {
        Ok(principal) => principal,
        Err(response) => return response,
    };
    if let Some(key) = principal.key_id()
        && let Err(wait) = gate.limiter.check(&key.to_string()).await
    {
        let seconds = retry_secs(wait);
        if !gate.defer_limit {
            return Problem::rate_limited(seconds).into_response();
        }
        request.extensions_mut().insert(RateLimited(seconds));
    }
    request.extensions_mut().insert(principal);
    next.run(request).await
}

/// Which principal opened each Streamable HTTP session, so that a session
/// answers only the key that opened it (as legacy SSE sessions do): a
/// request naming another key's session is answered as if it did not
/// exist. Every request still acts as its own key, so this guards the
/// session itself (its stream, its end), not the memories.
///
/// It also keeps each key's sessions within `per_key` (counting those rmcp
/// still holds: a session ends when closed or after five minutes idle,
/// rmcp's keep-alive) and answers `DELETE` of a session that is not open
/// with 404.
#[derive(Clone)]
pub struct SessionOwners {
    owners: Arc<std::sync::Mutex<HashMap<String, (Principal, Instant)>>>,
    live: Arc<LocalSessionManager>,
    per_key: usize,
}

/// Owners are forgotten this long after their session was last used (rmcp
/// closes a session idle for five minutes), once there are many.
const OWNER_IDLE: Duration = Duration::from_secs(3600);
const OWNER_SWEEP_AT: usize = 4096;

impl SessionOwners {
    /// `live`: the session manager the `/mcp` service runs on.
    pub fn new(live: Arc<LocalSessionManager>, per_key: u32) -> Self {
        Self {
            owners: Arc::default(),
            live,
            per_key: per_key as usize,
        }
    }

    fn with<T>(&self, f: impl FnOnce(&mut HashMap<String, (Principal, Instant)>) -> T) -> T {
        f(&mut self
            .owners
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner))
    }

    /// Whether rmcp still holds session `id`.
    async fn is_open(&self, id: &str) -> bool {
        self.live.sessions.read().await.contains_key(id)
    }

    /// How many sessions `principal` holds open now.
    async fn open_for(&self, principal: &Principal) -> usize {
        let theirs: Vec<String> = self.with(|owners| {
            owners
                .iter()
                .filter(|(_, (owner, _))| owner == principal)
                .map(|(id, _)| id.clone())
                .collect()
        });
        let live = self.live.sessions.read().await;
        theirs
            .iter()
            .filter(|id| live.contains_key(id.as_str()))
            .count()
    }

    /// False when the session belongs to someone else; a session not known
    /// here is left to rmcp (which refuses ids it does not have).
    fn admits(&self, id: &str, principal: &Principal) -> bool {
        self.with(|owners| match owners.get_mut(id) {
            Some((owner, seen)) if owner == principal => {
                *seen = Instant::now();
                true
            }
            Some(_) => false,
            None => true,
        })
    }

    fn insert(&self, id: String, principal: Principal) {
        self.with(|owners| {
            if owners.len() >= OWNER_SWEEP_AT {
                owners.retain(|_, (_, seen)| seen.elapsed() < OWNER_IDLE);
            }
            owners.insert(id, (principal, Instant::now()));
        });
    }

    fn remove(&self, id: &str) {
        self.with(|owners| owners.remove(id));
    }
}

const SESSION_HEADER: &str = "mcp-session-id";

/// The middleware in front of `/mcp` (behind [`gate`]): records who opened
/// a session, refuses its use by anyone else, forgets it when it ends.
pub async fn owned_sessions(
    State(owners): State<SessionOwners>,
    request: Request,
    next: Next,
) -> Response {
    let principal = request.extensions().get::<Principal>().cloned();
    let session = request
        .headers()
        .get(SESSION_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    if let (Some(id), Some(principal)) = (&session, &principal)
        && !owners.admits(id, principal)
    {
        return Problem::not_found(
            "no such session for this key: a session answers only the key that opened it",
        )
        .into_response();
    }
    let ending = request.method() == axum::http::Method::DELETE;
    if let (true, Some(id)) = (ending, &session)
        && !owners.is_open(id).await
    {
        return Problem::not_found(
            "no such session: it was closed, idled out (5 minutes without a request) or never existed",
        )
        .into_response();
    }
    let response = next.run(request).await;
    match (session, principal) {
        (None, Some(principal)) => {
            let Some(id) = response
                .headers()
                .get(SESSION_HEADER)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
            else {
                // Stateless (2026-07-28) requests open no session.
                return response;
            };
            // A new session: within the key's cap, or closed at once.
            if owners.open_for(&principal).await >= owners.per_key {
                if let Err(e) = owners
                    .live
                    .close_session(&SessionId::from(id.as_str()))
                    .await
                {
                    tracing::warn!(error = %e, "closing a session over the cap failed");
                }
                return Problem::new(
                    axum::http::StatusCode::TOO_MANY_REQUESTS,
                    "too_many_sessions",
                    format!(
                        "this key holds {} open MCP sessions, the most allowed \
                         (ENGRAM_MCP_SESSIONS_PER_KEY); close one with DELETE /mcp or let one \
                         idle out (5 minutes)",
                        owners.per_key
                    ),
                )
                .into_response();
            }
            owners.insert(id, principal);
        }
        (Some(id), _) if ending || response.status() == axum::http::StatusCode::NOT_FOUND => {
            owners.remove(&id);
        }
        _ => {}
    }
    response
}
