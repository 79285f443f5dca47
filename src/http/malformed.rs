//! `/mcp` answers a message rmcp cannot serve as stdio does
//! ([`crate::jsonrpc`]): JSON-RPC errors in a JSON body, not rmcp's plain
//! text. Not JSON or not a message: HTTP 400 with `-32700` / `-32600`; a
//! served method with params that do not fit it: HTTP 200 with `-32602`, as
//! any other error answer to a request; a malformed notification: 202, no
//! body. Everything else goes on to rmcp untouched.
//!
//! `/mcp` takes no query parameters: a request with any (or with one that
//! is not UTF-8 once decoded) gets 400 with `-32600` and the request's id
//! when it can be read, whatever its method.
//!
//! It runs inside the key gate, so only an authenticated caller gets this
//! far. The gate defers the rate limit to here: a request over it gets 429
//! with `Retry-After` and, for a POST, a JSON-RPC error with the request's
//! id (code -32029, the wait in `data.retry_after_secs`), which MCP clients
//! show where a problem+json body would be "an error response". A
//! `tools/call` is counted here against its acting user's limit too, so
//! that a refusal gets the same 429 (the tool could only answer 200 with
//! the error); the request then carries [`UserCounted`] and the tool does
//! not count it again. Prompts and resources are counted by their handlers.

use axum::Extension;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{Method, StatusCode, Uri, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::MAX_BODY_BYTES;
use super::auth::RateLimited;
use super::problem::Problem;
use super::query::{self, NoQuery};
use crate::auth::Principal;
use crate::jsonrpc::{self, INVALID_PARAMS, INVALID_REQUEST, PARSE_ERROR, Refusal, Verdict};
use crate::limit::{RATE_LIMITED, UserLimit, UserLimited};
use crate::service::MemoryService;
use rmcp::model::{ClientRequest, JsonRpcMessage};
use rmcp::service::{RoleServer, RxJsonRpcMessage};
use std::sync::Arc;

/// What `/mcp` counts a `tools/call` against: its acting user's allowance.
#[derive(Clone)]
pub struct McpUsers {
    pub service: Arc<MemoryService>,
    pub limit: Arc<UserLimit>,
}

/// Marks a request already counted against its acting user's limit.
#[derive(Clone, Copy, Debug)]
pub struct UserCounted;

pub async fn answer_malformed(
    State(users): State<McpUsers>,
    request: Request,
    next: Next,
) -> Response {
    let limited = request.extensions().get::<RateLimited>().copied();
    if request.method() != Method::POST {
        if let Some(RateLimited(seconds)) = limited {
            return Problem::rate_limited(seconds).into_response();
        }
        if let Err(refusal) = no_query(request.uri(), || Value::Null) {
            return refuse(StatusCode::BAD_REQUEST, &refusal);
        }
        return next.run(request).await;
    }
    let (parts, body) = request.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, MAX_BODY_BYTES).await else {
        let refusal = Refusal {
            id: Value::Null,
            code: PARSE_ERROR,
            message: format!(
                "Parse error: the message is over the limit of {} MiB",
                MAX_BODY_BYTES / (1024 * 1024)
            ),
        };
        return refuse(StatusCode::PAYLOAD_TOO_LARGE, &refusal);
    };
    if let Some(RateLimited(seconds)) = limited {
        return rate_limited(&bytes, seconds);
    }
    if let Err(refusal) = no_query(&parts.uri, || id_of(&bytes)) {
        return refuse(StatusCode::BAD_REQUEST, &refusal);
    }
    match jsonrpc::read(&bytes) {
        Verdict::Serve(message) => {
            let mut parts = parts;
            if let Some(requested) = tool_call_user(&message) {
                let caller = parts.extensions.get::<Principal>().cloned();
                if let Some(caller) = caller {
                    let counted = users
                        .limit
                        .check(&users.service, &caller, requested.as_deref())
                        .await;
                    if let Err(limited) = counted {
                        return user_limited(&bytes, &limited);
                    }
                    parts.extensions.insert(UserCounted);
                }
            }
            next.run(Request::from_parts(parts, Body::from(bytes)))
                .await
        }
        Verdict::Drop => StatusCode::ACCEPTED.into_response(),
        Verdict::Refuse(refusal) if refusal.code == INVALID_PARAMS => {
            refuse(StatusCode::OK, &refusal)
        }
        Verdict::Refuse(refusal) => refuse(StatusCode::BAD_REQUEST, &refusal),
    }
}

/// A request over its key's limit: 429 with `Retry-After`, and a JSON-RPC
/// error with the request's id that MCP clients show (the wait in its
/// message and in `data.retry_after_secs`).
fn rate_limited(body: &[u8], seconds: u64) -> Response {
    let id = id_of(body);
    let answer = json!({
        "jsonrpc": "2.0",
        "id": id,
        "error": {
            "code": RATE_LIMITED,
            "message": format!(
                "rate limited: this API key has used its MCP requests for now; retry after \
                 {seconds} s (ENGRAM_MCP_RATE_LIMIT per key and minute)"
            ),
            "data": {"retry_after_secs": seconds},
        },
    });
    (
        StatusCode::TOO_MANY_REQUESTS,
        [
            (header::CONTENT_TYPE, "application/json".to_owned()),
            (header::RETRY_AFTER, seconds.to_string()),
        ],
        answer.to_string(),
    )
        .into_response()
}

/// The `user_id` argument of a `tools/call` (`Some(None)`: the call names
/// none); `None` for any other message.
fn tool_call_user(message: &RxJsonRpcMessage<RoleServer>) -> Option<Option<String>> {
    let JsonRpcMessage::Request(request) = message else {
        return None;
    };
    let ClientRequest::CallToolRequest(call) = &request.request else {
        return None;
    };
    let requested = call
        .params
        .arguments
        .as_ref()
        .and_then(|arguments| arguments.get("user_id"))
        .and_then(Value::as_str)
        .map(str::to_owned);
    Some(requested)
}

/// A `tools/call` over its user's limit: as [`rate_limited`], naming the user.
fn user_limited(body: &[u8], limited: &UserLimited) -> Response {
    let answer = json!({
        "jsonrpc": "2.0",
        "id": id_of(body),
        "error": {
            "code": RATE_LIMITED,
            "message": limited.message(),
            "data": {"retry_after_secs": limited.retry_after},
        },
    });
    (
        StatusCode::TOO_MANY_REQUESTS,
        [
            (header::CONTENT_TYPE, "application/json".to_owned()),
            (header::RETRY_AFTER, limited.retry_after.to_string()),
        ],
        Extension(super::metrics::UserLimitRefusal),
        answer.to_string(),
    )
        .into_response()
}

/// Refuses a query string on `/mcp`, which takes none; `id` gives the
/// request's id (read only for a refusal).
fn no_query(uri: &Uri, id: impl FnOnce() -> Value) -> Result<(), Refusal> {
    query::read::<NoQuery>(uri)
        .map(drop)
        .map_err(|text| Refusal {
            id: id(),
            code: INVALID_REQUEST,
            message: format!(
                "Invalid Request: {text}; /mcp takes no query parameters, send everything in \
                 the JSON-RPC message"
            ),
        })
}

/// The `id` of the message in `body`, as given; null when it is not JSON
/// or has none (as the other malformed-input answers read it).
fn id_of(body: &[u8]) -> Value {
    serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|message| message.get("id").cloned())
        .unwrap_or(Value::Null)
}

fn refuse(status: StatusCode, refusal: &Refusal) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        refusal.to_json().to_string(),
    )
        .into_response()
}
