//! The span of every HTTP request: `{method} {route}` with the matched
//! route's template (never the path: it may name a user; with content on,
//! the path too), continuing the trace of a W3C `traceparent` header, ended
//! with the status. The span is put in the request, where MCP handlers
//! (served on other tasks) find their parent.

use crate::telemetry::spans::{self, RequestSpan};
use axum::extract::{MatchedPath, Request};
use axum::middleware::Next;
use axum::response::Response;

pub(super) async fn request(mut request: Request, next: Next) -> Response {
    if !spans::enabled() {
        return next.run(request).await;
    }
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|matched| template(matched.as_str()));
    let span = spans::http_request(request.method().as_str(), route);
    {
        let headers = request.headers();
        let header = |name: &str| headers.get(name).and_then(|value| value.to_str().ok());
        spans::continue_trace(&span, header("traceparent"), header("tracestate"));
    }
    if spans::content() {
        spans::set(&span, "url.path", request.uri().path().to_owned());
    }
    request.extensions_mut().insert(RequestSpan(span.clone()));
    let response = spans::within(span.clone(), next.run(request)).await;
    spans::http_response(&span, response.status().as_u16());
    response
}

/// A matched path as its route: a nested service's tail (`/mcp/{*rest}`)
/// left out.
fn template(matched: &str) -> &str {
    matched.find("/{*").map_or(matched, |tail| &matched[..tail])
}

#[cfg(test)]
mod tests {
    #[test]
    fn routes_leave_out_nested_tails() {
        assert_eq!(
            super::template("/mcp/{*__private__axum_nest_tail_param}"),
            "/mcp"
        );
        assert_eq!(
            super::template("/api/v1/memory/{memory_id}/history"),
            "/api/v1/memory/{memory_id}/history"
        );
    }
}
