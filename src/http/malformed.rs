//! `/mcp` answers a message rmcp cannot serve as stdio does
//! ([`crate::jsonrpc`]): JSON-RPC errors in a JSON body, not rmcp's plain
//! text. Not JSON or not a message: HTTP 400 with `-32700` / `-32600`; a
//! served method with params that do not fit it: HTTP 200 with `-32602`, as
//! any other error answer to a request; a malformed notification: 202, no
//! body. Everything else goes on to rmcp untouched.
//!
//! It runs inside the key gate, so only an authenticated caller gets this far.

use axum::body::Body;
use axum::extract::Request;
use axum::http::{Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde_json::Value;

use super::MAX_BODY_BYTES;
use crate::jsonrpc::{self, INVALID_PARAMS, PARSE_ERROR, Refusal, Verdict};

pub async fn answer_malformed(request: Request, next: Next) -> Response {
    if request.method() != Method::POST {
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
    match jsonrpc::read(&bytes) {
        Verdict::Serve(_) => {
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

fn refuse(status: StatusCode, refusal: &Refusal) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        refusal.to_json().to_string(),
    )
        .into_response()
}
