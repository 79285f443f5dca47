//! The REST API, `/api/v1/memory/...`: the same service as the MCP tools,
//! for services that speak plain HTTP. Each handler counts the request
//! against its acting user's rate limit ([`Api::admit`]; the key's was
//! counted by the gate), then hands the caller's [`Principal`] and the
//! request to one service method (which resolves the acting user: a user
//! key naming another user is 403) and answers JSON; every error is
//! `application/problem+json` ([`Problem`]).
//!
//! Routes (the OpenAPI document in [`super::openapi`] lists the same):
//! `POST /` remember, `GET /?user_id=&cursor=&limit=` list (a page of the
//! user's current memories), `POST /search`, `GET /context/{user_id}`,
//! `GET /stats/{user_id}`, `GET /export/{user_id}`, `DELETE /users/{user_id}`,
//! `GET /{memory_id}`, `PUT /{memory_id}` correct (a new version supersedes
//! it), `GET /{memory_id}/history`, `DELETE /{memory_id}`.

use std::sync::Arc;

use axum::extract::{FromRequest, FromRequestParts, Path, Request, State};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use schemars::JsonSchema;
use serde::Deserialize;
use serde::de::DeserializeOwned;

use super::problem::Problem;
use super::query::{self, NoQuery};
use crate::auth::Principal;
use crate::context::UserContext;
use crate::limit::UserLimit;
use crate::params::{
    CorrectParams, ForgetParams, ListParams, MemoryRef, RecallParams, RememberParams,
    UserContextParams,
};
use crate::service::{
    AuditPage, AuditParams, CorrectResult, ForgetResult, HistoryResult, MemoryDetail, MemoryPage,
    MemoryService, RecallResult, RememberResult,
};
use crate::store::UserStats;

/// Where the API lives.
pub const BASE: &str = "/api/v1/memory";

#[derive(Clone)]
pub struct Api {
    pub service: Arc<MemoryService>,
    /// REST requests per acting user.
    pub user_limit: Arc<UserLimit>,
}

impl Api {
    /// Counts a request naming `user_id` (`None`: the caller's own user)
    /// against its acting user's limit, or refuses it 429 with
    /// `Retry-After`. Every handler calls this once, with the user it hands
    /// to the service, before the service acts.
    async fn admit(&self, caller: &Principal, user_id: Option<&str>) -> Result<(), Problem> {
        self.user_limit
            .check(&self.service, caller, user_id)
            .await
            .map_err(|limited| Problem::user_rate_limited(&limited))
    }
}

type Answer<T> = Result<Json<T>, Problem>;

/// A JSON body holding one object, read as `T`. serde would also read a
/// struct from a positional array (`["alice", ...]`); a body is refused
/// unless it is an object. Errors of the JSON itself (media type, syntax,
/// size) are axum's, made problems by [`problems_only`].
pub struct Body<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for Body<T> {
    type Rejection = Response;

    async fn from_request(request: Request, state: &S) -> Result<Self, Response> {
        let Json(value) = Json::<serde_json::Value>::from_request(request, state)
            .await
            .map_err(IntoResponse::into_response)?;
        if !value.is_object() {
            let kind = match value {
                serde_json::Value::Array(_) => "an array",
                serde_json::Value::String(_) => "a string",
                serde_json::Value::Number(_) => "a number",
                serde_json::Value::Bool(_) => "a boolean",
                _ => "null",
            };
            return Err(Problem::invalid(
                Some("body"),
                format!(
                    "the body is {kind}; send a JSON object with named fields, \
                     as /api/v1/openapi.json describes"
                ),
            )
            .into_response());
        }
        T::deserialize(value).map(Self).map_err(|e| {
            Problem::invalid(None, format!("the JSON body does not fit this route: {e}"))
                .into_response()
        })
    }
}

/// A route's query parameters, read as `T` (which refuses unknown ones:
/// [`NoQuery`] for a route that takes none). Percent-escapes must decode
/// to UTF-8, as in a path: `%FF` is refused, not read as U+FFFD.
pub struct Params<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for Params<T> {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Problem> {
        query::utf8(parts.uri.query().unwrap_or_default())
            .map_err(|text| Problem::invalid(None, text))?;
        query::fields(&parts.uri).map(Self).map_err(|text| {
            Problem::invalid(
                None,
                format!("{text}; see this route's query parameters in /api/v1/openapi.json"),
            )
        })
    }
}

/// `GET /context/{user_id}` options.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ContextQuery {
    /// Only memories of this agent.
    pub agent_id: Option<String>,
    /// Only memories of this run.
    pub run_id: Option<String>,
    /// How many memories, 1..=100 (default 20).
    #[serde(default, deserialize_with = "crate::params::lenient::integer")]
    pub limit: Option<i64>,
    /// Optional focus: the memories most relevant to it come first.
    pub query: Option<String>,
}

/// The owner of a memory named by id; defaults to the caller's own user.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OwnerQuery {
    pub user_id: Option<String>,
}

impl OwnerQuery {
    fn of(self, memory_id: String) -> MemoryRef {
        MemoryRef {
            memory_id,
            user_id: self.user_id,
        }
    }
}

/// The routes, each behind the REST gate (added by the caller).
pub fn router(api: Api) -> Router {
    Router::new()
        .route(BASE, post(remember).get(list))
        .route(&format!("{BASE}/"), post(remember).get(list))
        .route(&format!("{BASE}/search"), post(search))
        .route(&format!("{BASE}/forget"), post(forget))
        .route(&format!("{BASE}/context/{{user_id}}"), get(context))
        .route(&format!("{BASE}/stats/{{user_id}}"), get(stats))
        .route(&format!("{BASE}/export/{{user_id}}"), get(export))
        .route(
            &format!("{BASE}/users/{{user_id}}"),
            axum::routing::delete(forget_user),
        )
        .route(
            &format!("{BASE}/{{memory_id}}"),
            get(get_memory).put(correct).delete(forget_memory),
        )
        .route(&format!("{BASE}/{{memory_id}}/history"), get(history))
        .route(AUDIT, get(audit_trail))
        .with_state(api)
}

/// The audit trail's route (admin keys only).
pub const AUDIT: &str = "/api/v1/audit";

async fn audit_trail(
    State(api): State<Api>,
    Extension(caller): Extension<Principal>,
    Params(params): Params<AuditParams>,
) -> Answer<AuditPage> {
    // Acts on no user: counted against the key's limit only.
    Ok(Json(api.service.audit_trail(&caller, params).await?))
}

async fn remember(
    State(api): State<Api>,
    Extension(caller): Extension<Principal>,
    _: Params<NoQuery>,
    Body(p): Body<RememberParams>,
) -> Answer<RememberResult> {
    api.admit(&caller, p.user_id.as_deref()).await?;
    Ok(Json(api.service.remember(&caller, p).await?))
}

async fn list(
    State(api): State<Api>,
    Extension(caller): Extension<Principal>,
    Params(p): Params<ListParams>,
) -> Answer<MemoryPage> {
    api.admit(&caller, p.user_id.as_deref()).await?;
    Ok(Json(api.service.list(&caller, p).await?))
}

async fn search(
    State(api): State<Api>,
    Extension(caller): Extension<Principal>,
    _: Params<NoQuery>,
    Body(p): Body<RecallParams>,
) -> Answer<RecallResult> {
    api.admit(&caller, p.user_id.as_deref()).await?;
    Ok(Json(api.service.recall(&caller, p).await?))
}

async fn context(
    State(api): State<Api>,
    Extension(caller): Extension<Principal>,
    Path(user_id): Path<String>,
    Params(q): Params<ContextQuery>,
) -> Answer<UserContext> {
    api.admit(&caller, Some(&user_id)).await?;
    let p = UserContextParams {
        user_id: Some(user_id),
        agent_id: q.agent_id,
        run_id: q.run_id,
        limit: q.limit,
        query: q.query,
    };
    Ok(Json(api.service.user_context(&caller, p).await?))
}

async fn stats(
    State(api): State<Api>,
    Extension(caller): Extension<Principal>,
    Path(user_id): Path<String>,
    _: Params<NoQuery>,
) -> Answer<UserStats> {
    api.admit(&caller, Some(&user_id)).await?;
    Ok(Json(api.service.stats(&caller, Some(&user_id)).await?))
}

async fn export(
    State(api): State<Api>,
    Extension(caller): Extension<Principal>,
    Path(user_id): Path<String>,
    _: Params<NoQuery>,
) -> Result<Response, Problem> {
    api.admit(&caller, Some(&user_id)).await?;
    let export = api.service.export(&caller, Some(&user_id)).await?;
    let disposition = format!(
        "attachment; filename=\"engram-export-{}.json\"",
        export.user_id.replace(
            |c: char| !c.is_ascii_alphanumeric() && c != '-' && c != '_',
            "_"
        )
    );
    Ok(([(header::CONTENT_DISPOSITION, disposition)], Json(export)).into_response())
}

async fn forget_user(
    State(api): State<Api>,
    Extension(caller): Extension<Principal>,
    Path(user_id): Path<String>,
    _: Params<NoQuery>,
) -> Answer<ForgetResult> {
    api.admit(&caller, Some(&user_id)).await?;
    let p = ForgetParams {
        user_id: Some(user_id),
        all: Some(true),
        ..ForgetParams::default()
    };
    Ok(Json(api.service.forget(&caller, p).await?))
}

/// The `forget` tool's arguments as a body: one memory, every memory of a
/// user, or (with `all: true`) those an agent, a run, a metadata filter and
/// a creation date select.
async fn forget(
    State(api): State<Api>,
    Extension(caller): Extension<Principal>,
    _: Params<NoQuery>,
    Body(p): Body<ForgetParams>,
) -> Answer<ForgetResult> {
    api.admit(&caller, p.user_id.as_deref()).await?;
    Ok(Json(api.service.forget(&caller, p).await?))
}

async fn get_memory(
    State(api): State<Api>,
    Extension(caller): Extension<Principal>,
    Path(memory_id): Path<String>,
    Params(owner): Params<OwnerQuery>,
) -> Answer<MemoryDetail> {
    api.admit(&caller, owner.user_id.as_deref()).await?;
    Ok(Json(api.service.get(&caller, owner.of(memory_id)).await?))
}

async fn correct(
    State(api): State<Api>,
    Extension(caller): Extension<Principal>,
    Path(memory_id): Path<String>,
    Params(owner): Params<OwnerQuery>,
    Body(p): Body<CorrectParams>,
) -> Answer<CorrectResult> {
    api.admit(&caller, owner.user_id.as_deref()).await?;
    Ok(Json(
        api.service.correct(&caller, owner.of(memory_id), p).await?,
    ))
}

async fn history(
    State(api): State<Api>,
    Extension(caller): Extension<Principal>,
    Path(memory_id): Path<String>,
    Params(owner): Params<OwnerQuery>,
) -> Answer<HistoryResult> {
    api.admit(&caller, owner.user_id.as_deref()).await?;
    Ok(Json(
        api.service.history(&caller, owner.of(memory_id)).await?,
    ))
}

async fn forget_memory(
    State(api): State<Api>,
    Extension(caller): Extension<Principal>,
    Path(memory_id): Path<String>,
    Params(owner): Params<OwnerQuery>,
) -> Answer<ForgetResult> {
    api.admit(&caller, owner.user_id.as_deref()).await?;
    let p = ForgetParams {
        memory_id: Some(memory_id),
        user_id: owner.user_id,
        ..ForgetParams::default()
    };
    Ok(Json(api.service.forget(&caller, p).await?))
}

/// Turns every error response of the API that is not already a problem
/// (axum's own rejections: a body that is not JSON, a missing field, an
/// unknown route or method, a body over the limit) into one, so clients
/// see one error shape with a stable code.
pub async fn problems_only(request: Request, next: Next) -> Response {
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let response = next.run(request).await;
    let status = response.status();
    let is_problem = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/problem+json"));
    if !(status.is_client_error() || status.is_server_error()) || is_problem {
        return response;
    }
    let text = match axum::body::to_bytes(response.into_body(), 64 * 1024).await {
        Ok(bytes) => String::from_utf8_lossy(&bytes).trim().to_owned(),
        Err(_) => String::new(),
    };
    let problem = match status {
        StatusCode::NOT_FOUND => Problem::not_found(format!(
            "no route {method} {path}; the routes are listed in /api/v1/openapi.json"
        )),
        StatusCode::METHOD_NOT_ALLOWED => Problem::new(
            status,
            "method_not_allowed",
            format!("{path} does not accept {method}; see /api/v1/openapi.json"),
        ),
        StatusCode::PAYLOAD_TOO_LARGE => Problem::new(
            status,
            "payload_too_large",
            format!(
                "the request body is over the limit of {} MiB",
                super::MAX_BODY_BYTES / (1024 * 1024)
            ),
        ),
        StatusCode::UNSUPPORTED_MEDIA_TYPE => Problem::new(
            status,
            "unsupported_media_type",
            "send the body as JSON with `Content-Type: application/json`",
        ),
        StatusCode::BAD_REQUEST | StatusCode::UNPROCESSABLE_ENTITY => Problem::invalid(None, text),
        _ if status.is_client_error() => Problem::invalid(None, text),
        _ => Problem::new(status, "internal", text),
    };
    problem.into_response()
}
