//! `GET /metrics`: the Prometheus page ([`crate::metrics`]), and the count
//! of requests the HTTP doors refuse before they reach the service.
//!
//! The page needs no API key and answers whatever the `Host` header says:
//! it holds no user's data (bounded labels, no ids), and a scraper reaches
//! a pod by its IP, which no allowed-hosts list names.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::MemoryService;
use crate::metrics::{self, metrics};

/// A response marks a refusal by the per-user rate limit with this
/// extension (the per-key limit's carry none).
#[derive(Debug, Clone, Copy)]
pub struct UserLimitRefusal;

pub async fn page(State(service): State<Arc<MemoryService>>) -> Response {
    (
        [(header::CONTENT_TYPE, metrics::CONTENT_TYPE)],
        metrics::render(&service.observed()),
    )
        .into_response()
}

/// The router of `ENGRAM_METRICS_BIND`: `/metrics` alone.
pub fn only(service: Arc<MemoryService>) -> axum::Router {
    axum::Router::new()
        .route("/metrics", axum::routing::get(page))
        .with_state(service)
}

/// Counts `response` when it refuses a request before the service: a bad
/// or missing key (401), a rate limit (429), a body too large (413).
pub fn count_refusal(transport: &'static str, response: &Response) {
    let code = match response.status() {
        StatusCode::UNAUTHORIZED => "unauthorized",
        StatusCode::PAYLOAD_TOO_LARGE => "payload_too_large",
        StatusCode::TOO_MANY_REQUESTS => {
            let scope = if response.extensions().get::<UserLimitRefusal>().is_some() {
                "user"
            } else {
                "key"
            };
            metrics()
                .rate_limited
                .with([transport.into(), scope.into()])
                .inc();
            "rate_limited"
        }
        _ => return,
    };
    metrics().refused(transport, code);
}
