//! Who is calling over HTTP, and whether they may call now.
//!
//! The gate runs in front of `/mcp`, `/sse`, `/messages` and `/api`. With
//! `ENGRAM_AUTH=keys` it requires `Authorization: Bearer <key>`, looks the
//! key up on every request (a revoked key stops at once, on every
//! instance), counts the request against the key's rate limit, and hands
//! the [`Principal`] to the handler in the request's extensions. Missing or
//! unknown keys get 401 with `WWW-Authenticate`; an exhausted limit gets
//! 429 with `Retry-After`. With `ENGRAM_AUTH=none` (loopback binds only)
//! every request is the operator's and nothing is counted.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderValue, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::limit::RateLimiter;
use super::problem::Problem;
use crate::auth::Principal;
use crate::config::AuthMode;
use crate::service::MemoryService;

/// The gate for one kind of route (REST or MCP: each has its own limit).
#[derive(Clone)]
pub struct Gate {
    service: Arc<MemoryService>,
    mode: AuthMode,
    limiter: Arc<RateLimiter>,
}

impl Gate {
    /// `kind` names the limit in the shared cache (`rest`, `mcp`).
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
        }
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
                    Problem::unauthorized("this API key is unknown or has been revoked")
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
    let authorization = request.headers().get(header::AUTHORIZATION).cloned();
    let principal = match gate.principal(authorization).await {
        Ok(principal) => principal,
        Err(response) => return response,
    };
    if let Some(key) = principal.key_id()
        && let Err(wait) = gate.limiter.check(key).await
    {
        // Whole seconds, rounded up: retrying after Retry-After must succeed.
        let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
        return Problem::rate_limited(seconds.max(1)).into_response();
    }
    request.extensions_mut().insert(principal);
    next.run(request).await
}
