//! Errors as `application/problem+json` (RFC 9457). Every error the HTTP
//! side answers with carries a stable `code`, which clients branch on; the
//! `detail` says what went wrong and what to do, and may change wording.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use schemars::JsonSchema;
use serde::Serialize;

use super::metrics::UserLimitRefusal;
use crate::error::Error;
use crate::limit::UserLimited;

/// The body of every error response.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct Problem {
    /// `urn:engram:problem:<code>`.
    #[serde(rename = "type")]
    pub kind: String,
    /// A short, fixed summary of the code.
    pub title: &'static str,
    /// The HTTP status, repeated.
    pub status: u16,
    /// What went wrong and what to do about it.
    pub detail: String,
    /// Stable error code: `invalid_input`, `unauthorized`, `forbidden`,
    /// `not_found`, `method_not_allowed`, `conflict`, `payload_too_large`,
    /// `unsupported_media_type`, `rate_limited`, `timeout`, `model_failed`,
    /// `unavailable` or `internal`.
    pub code: &'static str,
    /// The request field at fault, for `invalid_input`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<&'static str>,
    /// Seconds to wait before retrying, for `rate_limited` (also in `Retry-After`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_after: Option<u64>,
    /// Refused by the acting user's rate limit (counted apart in the metrics).
    #[serde(skip)]
    #[schemars(skip)]
    pub per_user: bool,
}

impl Problem {
    pub fn new(status: StatusCode, code: &'static str, detail: impl Into<String>) -> Self {
        Self {
            kind: format!("urn:engram:problem:{code}"),
            title: status.canonical_reason().unwrap_or("Error"),
            status: status.as_u16(),
            detail: detail.into(),
            code,
            field: None,
            retry_after: None,
            per_user: false,
        }
    }

    pub fn unauthorized(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", detail)
    }

    pub fn forbidden(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", detail)
    }

    pub fn not_found(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", detail)
    }

    pub fn invalid(field: Option<&'static str>, detail: impl Into<String>) -> Self {
        Self {
            field,
            ..Self::new(StatusCode::BAD_REQUEST, "invalid_input", detail)
        }
    }

    /// A request over its API key's limit.
    pub fn rate_limited(retry_after: u64) -> Self {
        Self::too_many(
            retry_after,
            format!(
                "this API key has used its requests for now; retry in {retry_after} s \
                 (limits per key and minute, whichever users it acts for: \
                 ENGRAM_REST_RATE_LIMIT, ENGRAM_MCP_RATE_LIMIT)"
            ),
        )
    }

    /// A request over its acting user's limit.
    pub fn user_rate_limited(limited: &UserLimited) -> Self {
        Self {
            per_user: true,
            ..Self::too_many(limited.retry_after, limited.message())
        }
    }

    fn too_many(retry_after: u64, detail: String) -> Self {
        Self {
            retry_after: Some(retry_after),
            ..Self::new(StatusCode::TOO_MANY_REQUESTS, "rate_limited", detail)
        }
    }

    fn status(&self) -> StatusCode {
        StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let status = self.status();
        let (retry_after, per_user) = (self.retry_after, self.per_user);
        let body = serde_json::to_vec(&self).unwrap_or_default();
        let mut response = (status, body).into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if let Some(seconds) = retry_after {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        if status == StatusCode::UNAUTHORIZED {
            headers.insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static(r#"Bearer realm="engram""#),
            );
        }
        if per_user {
            response.extensions_mut().insert(UserLimitRefusal);
        }
        response
    }
}

/// Service errors: the caller's mistakes keep their words; server-side
/// failures are logged here, once, and named by what failed.
impl From<Error> for Problem {
    fn from(e: Error) -> Self {
        let detail = e.to_string();
        // The code is the service's ([`Error::code`]): one classification
        // for problem+json and audit rows; here only the status is chosen.
        match (e.code(), e) {
            (_, Error::InvalidInput { field, .. }) => Self::invalid(Some(field), detail),
            ("not_found", _) => Self::not_found(detail),
            ("forbidden", _) => Self::forbidden(detail),
            (code @ "conflict", _) => Self::new(StatusCode::CONFLICT, code, detail),
            (code @ "unavailable", _) => {
                tracing::error!(error = %detail, "request failed: database");
                Self::new(StatusCode::SERVICE_UNAVAILABLE, code, detail)
            }
            (code @ "model_failed", _) => {
                tracing::error!(error = %detail, "request failed: model");
                Self::new(StatusCode::BAD_GATEWAY, code, detail)
            }
            (code, _) => {
                tracing::error!(error = %detail, "request failed");
                Self::new(StatusCode::INTERNAL_SERVER_ERROR, code, detail)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::StoreError;

    #[test]
    fn problems_carry_code_type_and_headers() {
        let response = Problem::rate_limited(7).into_response();
        assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(response.headers()[header::RETRY_AFTER], "7");
        assert_eq!(
            response.headers()[header::CONTENT_TYPE],
            "application/problem+json"
        );

        let response = Problem::unauthorized("no key").into_response();
        assert_eq!(
            response.headers()[header::WWW_AUTHENTICATE],
            r#"Bearer realm="engram""#
        );

        let p = Problem::from(Error::invalid("limit", "too big"));
        assert_eq!(
            (p.status, p.code, p.field),
            (400, "invalid_input", Some("limit"))
        );
        assert_eq!(p.kind, "urn:engram:problem:invalid_input");
        assert_eq!(p.title, "Bad Request");
        let p = Problem::from(Error::Forbidden("not yours".into()));
        assert_eq!((p.status, p.code), (403, "forbidden"));
        let p = Problem::from(Error::Store(StoreError::Conflict("again".into())));
        assert_eq!((p.status, p.code), (409, "conflict"));
    }
}
