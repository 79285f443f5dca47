//! The span of each MCP request engram serves (`tools/call`, `prompts/get`,
//! `resources/read`): its parent is the trace the client names in
//! `params._meta.traceparent` (and `tracestate`), else the HTTP request it
//! came in (`/mcp`), else none; its outcome is the JSON-RPC error's code or,
//! for a tool, `tool_error` when the result is an error.

use std::future::Future;

use rmcp::ErrorData;
use rmcp::model::{Extensions, RequestId, RequestMetaObject};
use tracing::Span;

use crate::telemetry::spans::{self, RequestSpan};

/// The span of an MCP request: `method` on `target` (the tool or prompt),
/// through `network` (`pipe`: stdio; `tcp`: HTTP).
pub(super) fn span(
    method: &'static str,
    target: Option<&str>,
    network: &'static str,
    id: Option<&RequestId>,
    meta: &RequestMetaObject,
    extensions: &Extensions,
) -> Span {
    let span = spans::mcp_request(method, target, network);
    if span.is_disabled() {
        return span;
    }
    let parts = extensions.get::<axum::http::request::Parts>();
    if let Some(traceparent) = meta.get_traceparent() {
        spans::continue_trace(&span, Some(traceparent), meta.get_tracestate());
    } else if let Some(RequestSpan(http)) = parts.and_then(|p| p.extensions.get::<RequestSpan>()) {
        spans::child_of(&span, http);
    }
    if let Some(id) = id {
        span.record("jsonrpc.request.id", id.to_string().as_str());
    }
    if let Some(session) = parts
        .and_then(|p| p.headers.get("mcp-session-id"))
        .and_then(|v| v.to_str().ok())
    {
        span.record("mcp.session.id", session);
    }
    span
}

/// Runs `request` in `span`; `failed` says what of an answer counts as an
/// error (a tool's error result), JSON-RPC errors always do.
pub(super) async fn run<T>(
    span: Span,
    request: impl Future<Output = Result<T, ErrorData>>,
    failed: impl FnOnce(&T) -> bool,
) -> Result<T, ErrorData> {
    if span.is_disabled() {
        return request.await;
    }
    let answer = spans::within(span.clone(), request).await;
    match &answer {
        Ok(answer) if failed(answer) => spans::fail(&span, "tool_error", || "tool error".into()),
        Ok(_) => {}
        Err(e) => spans::fail(&span, &e.code.0.to_string(), || e.message.to_string()),
    }
    answer
}
