//! The MCP face of engram: four tools, a context resource template and a
//! `with_memory` prompt, each a thin adapter over [`MemoryService`].
//!
//! Adapters hand the caller's [`Principal`] and the parsed arguments to one
//! service method (which resolves the user: an omitted `user_id` is the
//! caller's own, a user key's user or else the configured default user; a
//! user key naming another user is refused) and map the result.
//! Caller mistakes become tool errors (`isError: true`) whose text says what
//! was wrong and what is accepted; the server keeps serving.
//!
//! Over HTTP each call that acts on a user (a tool, the prompt, the context
//! resource) is first counted against that user's rate limit
//! (`crate::limit`); over it, the call is refused as a JSON-RPC error
//! (code -32029, the wait in the message and in `data.retry_after_secs`),
//! the form the key's limit takes on `/mcp`: no other arguments would make
//! it succeed, so it is not a tool error for the model to work around.
//! Over stdio there is no key and nothing is counted.
//!
//! Each `tools/call`, `prompts/get` and `resources/read` runs in its span
//! ([`traced`]), which continues the trace the client names in
//! `params._meta.traceparent`.

mod traced;

use std::sync::Arc;

use rmcp::handler::server::router::prompt::PromptRouter;
use rmcp::handler::server::router::tool::ToolRouter;
use rmcp::handler::server::tool::{IntoCallToolResult, ToolCallContext};
use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, ErrorCode, Extensions, GetPromptResult,
    Implementation, ListResourceTemplatesResult, ListResourcesResult, PaginatedRequestParams,
    PromptMessage, ReadResourceRequestParams, ReadResourceResponse, ReadResourceResult,
    RequestMetaObject, ResourceContents, ResourceTemplate, Role, ServerCapabilities, ServerConfig,
};
use rmcp::service::RequestContext;
use rmcp::{
    ErrorData, Json, RoleServer, ServerHandler, prompt, prompt_handler, prompt_router, tool,
    tool_handler, tool_router,
};
use schemars::JsonSchema;
use serde::Deserialize;

use crate::audit::{self, Origin};
use crate::auth::Principal;
use crate::context::{UserContext, system_prompt};
use crate::error::Error;
use crate::http::UserCounted;
use crate::limit::{RATE_LIMITED, UserLimit, UserLimited};
use crate::params::{ForgetParams, RecallParams, RememberParams, UserContextParams};
use crate::service::{ForgetResult, MemoryService, RecallResult, RememberResult};
use crate::telemetry::spans;

const CONTEXT_URI_PREFIX: &str = "engram://users/";
const CONTEXT_URI_SUFFIX: &str = "/context";

#[derive(Debug, Deserialize, JsonSchema)]
pub struct WithMemoryArgs {
    /// Whose memories to include; defaults to the caller's own (the API key's user, else the server's default user).
    pub user_id: Option<String>,
    /// Optional task: appended to the system prompt, and the memories most
    /// relevant to it are listed first.
    pub task: Option<String>,
}

/// Where a handler learns who is calling.
#[derive(Debug, Clone)]
pub enum Caller {
    /// The same principal for the handler's whole life: stdio (the
    /// operator), or a legacy SSE session (the key that opened it).
    Fixed(Principal),
    /// Each request's own: Streamable HTTP, where the auth layer puts the
    /// [`Principal`] into the HTTP request that rmcp hands to the handler.
    /// A request without one is refused.
    PerRequest,
}

/// The rmcp handler. Cheap to clone: the service is shared.
#[derive(Clone)]
pub struct EngramMcp {
    service: Arc<MemoryService>,
    caller: Caller,
    /// Calls per acting user, over HTTP; `None` (stdio): not counted.
    user_limit: Option<Arc<UserLimit>>,
    /// Where calls come from, for the audit trail, when it is the same for
    /// the handler's whole life (stdio, a legacy SSE session); otherwise
    /// each request's, which the HTTP layer puts in the request.
    origin: Origin,
    tool_router: ToolRouter<Self>,
    prompt_router: PromptRouter<Self>,
}

#[tool_router]
impl EngramMcp {
    pub fn new(service: Arc<MemoryService>, caller: Caller) -> Self {
        Self {
            service,
            caller,
            user_limit: None,
            origin: Origin {
                transport: "stdio",
                client_addr: None,
            },
            tool_router: Self::tool_router(),
            prompt_router: Self::prompt_router(),
        }
    }

    /// Calls come from `origin` (a legacy SSE session's).
    pub fn with_origin(mut self, origin: Origin) -> Self {
        self.origin = origin;
        self
    }

    /// Where the request carrying `extensions` came from.
    fn origin(&self, extensions: &Extensions) -> Origin {
        match &self.caller {
            Caller::Fixed(_) => self.origin.clone(),
            Caller::PerRequest => extensions
                .get::<axum::http::request::Parts>()
                .and_then(|parts| parts.extensions.get::<Origin>())
                .cloned()
                .unwrap_or_else(|| self.origin.clone()),
        }
    }

    /// `network.transport` of the request carrying `extensions`: `pipe`
    /// (stdio) or `tcp` (HTTP).
    fn network(&self, extensions: &Extensions) -> &'static str {
        if self.origin(extensions).transport == "stdio" {
            "pipe"
        } else {
            "tcp"
        }
    }

    /// Counts every call that acts on a user against `limit`.
    pub fn with_user_limit(mut self, limit: Arc<UserLimit>) -> Self {
        self.user_limit = Some(limit);
        self
    }

    /// Counts a call naming `user_id` (`None`: the caller's own user)
    /// against its acting user's limit, unless `/mcp` counted it already
    /// (a `tools/call`: [`UserCounted`]). Every tool, the prompt and the
    /// resource call this once, with the user they hand to the service,
    /// before the service acts.
    async fn admit(
        &self,
        extensions: &Extensions,
        caller: &Principal,
        user_id: Option<&str>,
    ) -> Result<(), ErrorData> {
        let Some(limit) = &self.user_limit else {
            return Ok(());
        };
        let counted = extensions
            .get::<axum::http::request::Parts>()
            .is_some_and(|parts| parts.extensions.get::<UserCounted>().is_some());
        if counted {
            return Ok(());
        }
        limit
            .check(&self.service, caller, user_id)
            .await
            .map_err(|limited| rate_limited(&limited))
    }

    /// Who made the request carrying `extensions`.
    fn principal(&self, extensions: &Extensions) -> Result<Principal, Error> {
        match &self.caller {
            Caller::Fixed(principal) => Ok(principal.clone()),
            Caller::PerRequest => extensions
                .get::<axum::http::request::Parts>()
                .and_then(|parts| parts.extensions.get::<Principal>())
                .cloned()
                .ok_or_else(|| Error::Forbidden("the request carries no credentials".into())),
        }
    }

    /// The scope a request acts on: the caller decides the user.
    #[tool(
        description = "Store something worth remembering about the user: a fact, preference or \
                       conversation. Near-duplicates of existing memories are not stored again \
                       (event NONE with the existing id).",
        annotations(
            title = "Remember",
            read_only_hint = false,
            destructive_hint = false,
            idempotent_hint = true,
            open_world_hint = false
        )
    )]
    async fn remember(
        &self,
        Parameters(p): Parameters<RememberParams>,
        extensions: Extensions,
    ) -> Result<Json<RememberResult>, Failure> {
        let caller = self.principal(&extensions).map_err(tool_error)?;
        self.admit(&extensions, &caller, p.user_id.as_deref())
            .await?;
        answer(audit::from(self.origin(&extensions), self.service.remember(&caller, p)).await)
    }

    #[tool(
        description = "Search the user's memories by meaning and keywords; returns the most \
                       relevant first, with ids, text, scores and timestamps.",
        annotations(
            title = "Recall",
            read_only_hint = true,
            destructive_hint = false,
            idempotent_hint = true,
            open_world_hint = false
        )
    )]
    async fn recall(
        &self,
        Parameters(p): Parameters<RecallParams>,
        extensions: Extensions,
    ) -> Result<Json<RecallResult>, Failure> {
        let caller = self.principal(&extensions).map_err(tool_error)?;
        self.admit(&extensions, &caller, p.user_id.as_deref())
            .await?;
        answer(audit::from(self.origin(&extensions), self.service.recall(&caller, p)).await)
    }

    #[tool(
        description = "A compact profile of the user as text ready for a system prompt, plus the \
                       memories themselves: most recent first, or, given `query`, the most \
                       relevant to it first and then the most recent.",
        annotations(
            title = "User context",
            read_only_hint = true,
            destructive_hint = false,
            idempotent_hint = true,
            open_world_hint = false
        )
    )]
    async fn user_context(
        &self,
        Parameters(p): Parameters<UserContextParams>,
        extensions: Extensions,
    ) -> Result<Json<UserContext>, Failure> {
        let caller = self.principal(&extensions).map_err(tool_error)?;
        self.admit(&extensions, &caller, p.user_id.as_deref())
            .await?;
        answer(
            audit::from(
                self.origin(&extensions),
                self.service.user_context(&caller, p),
            )
            .await,
        )
    }

    #[tool(
        description = "Permanently delete memories: {memory_id} deletes one; {user_id, all: true} \
                       deletes every memory and history of that user; {user_id, all: true} with \
                       agent_id, run_id, filters (metadata values) or before (a date) deletes \
                       only the memories they select, current and superseded, with their \
                       history. Returns how many were deleted. Cannot be undone.",
        annotations(
            title = "Forget",
            read_only_hint = false,
            destructive_hint = true,
            idempotent_hint = true,
            open_world_hint = false
        )
    )]
    async fn forget(
        &self,
        Parameters(p): Parameters<ForgetParams>,
        extensions: Extensions,
    ) -> Result<Json<ForgetResult>, Failure> {
        let caller = self.principal(&extensions).map_err(tool_error)?;
        self.admit(&extensions, &caller, p.user_id.as_deref())
            .await?;
        answer(audit::from(self.origin(&extensions), self.service.forget(&caller, p)).await)
    }
}

#[prompt_router]
impl EngramMcp {
    /// A system prompt that carries the user's memories.
    #[prompt(
        name = "with_memory",
        description = "A system prompt carrying what engram remembers about the user."
    )]
    async fn with_memory(
        &self,
        Parameters(args): Parameters<WithMemoryArgs>,
        meta: RequestMetaObject,
        extensions: Extensions,
    ) -> Result<GetPromptResult, ErrorData> {
        let network = self.network(&extensions);
        let span = traced::span(
            "prompts/get",
            Some("with_memory"),
            network,
            None,
            &meta,
            &extensions,
        );
        traced::run(span, self.memory_prompt(args, extensions), |_| false).await
    }
}

impl EngramMcp {
    /// The `with_memory` prompt's answer.
    async fn memory_prompt(
        &self,
        args: WithMemoryArgs,
        extensions: Extensions,
    ) -> Result<GetPromptResult, ErrorData> {
        let caller = self.principal(&extensions).map_err(protocol_error)?;
        self.admit(&extensions, &caller, args.user_id.as_deref())
            .await?;
        let request = UserContextParams {
            user_id: args.user_id,
            query: args.task.clone(),
            ..UserContextParams::default()
        };
        let origin = self.origin(&extensions);
        let context = audit::from(origin, self.service.user_context(&caller, request))
            .await
            .map_err(protocol_error)?;
        let text = system_prompt(&context, args.task.as_deref());
        Ok(
            GetPromptResult::new(vec![PromptMessage::new_text(Role::User, text)]).with_description(
                format!(
                    "Memory-aware system prompt for user \"{}\"",
                    context.user_id
                ),
            ),
        )
    }
}

#[tool_handler(router = self.tool_router)]
#[prompt_handler(router = self.prompt_router)]
impl ServerHandler for EngramMcp {
    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        let network = self.network(&context.extensions);
        let span = traced::span(
            "tools/call",
            Some(&request.name),
            network,
            Some(&context.id),
            &context.meta,
            &context.extensions,
        );
        if spans::content()
            && let Some(arguments) = &request.arguments
        {
            let arguments = serde_json::Value::Object(arguments.clone()).to_string();
            spans::set(&span, "gen_ai.tool.call.arguments", arguments);
        }
        let call = ToolCallContext::new(self, request, context);
        traced::run(
            span,
            self.tool_router.call(call),
            |answer| matches!(answer, CallToolResponse::Complete(r) if r.is_error == Some(true)),
        )
        .await
    }

    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(
            ServerCapabilities::builder()
                .enable_tools()
                .enable_resources()
                .enable_prompts()
                .build(),
        )
        .with_server_info(Implementation::new("engram", env!("CARGO_PKG_VERSION")))
        .with_instructions(
            "engram is long-term memory. Call `recall` before answering questions that may \
             depend on what you know about the user, `remember` when they tell you something \
             worth keeping, `user_context` for a profile to prime a conversation, and `forget` \
             when asked to delete memories.",
        )
    }

    async fn list_resources(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListResourcesResult, ErrorData> {
        Ok(ListResourcesResult::with_all_items(Vec::new()))
    }

    async fn list_resource_templates(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListResourceTemplatesResult, ErrorData> {
        let template = ResourceTemplate::new(
            format!("{CONTEXT_URI_PREFIX}{{user_id}}{CONTEXT_URI_SUFFIX}"),
            "user_context",
        )
        .with_title("User context")
        .with_description("What engram remembers about a user, as text for a system prompt.")
        .with_mime_type("text/markdown");
        Ok(ListResourceTemplatesResult::with_all_items(vec![template]))
    }

    async fn read_resource(
        &self,
        request: ReadResourceRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<ReadResourceResponse, ErrorData> {
        let network = self.network(&context.extensions);
        let span = traced::span(
            "resources/read",
            None,
            network,
            Some(&context.id),
            &context.meta,
            &context.extensions,
        );
        if spans::content() {
            // The URI names the user.
            spans::set(&span, "mcp.resource.uri", request.uri.clone());
        }
        traced::run(span, self.read_context(request, context), |_| false).await
    }
}

impl EngramMcp {
    /// `resources/read` of `engram://users/{user_id}/context`.
    async fn read_context(
        &self,
        request: ReadResourceRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<ReadResourceResponse, ErrorData> {
        let uri = request.uri;
        let Some(user) = uri
            .strip_prefix(CONTEXT_URI_PREFIX)
            .and_then(|rest| rest.strip_suffix(CONTEXT_URI_SUFFIX))
        else {
            return Err(ErrorData::resource_not_found(
                format!("no resource '{uri}'; engram serves engram://users/{{user_id}}/context"),
                None,
            ));
        };
        let caller = self
            .principal(&context.extensions)
            .map_err(protocol_error)?;
        let user = percent_decode(user);
        self.admit(&context.extensions, &caller, Some(&user))
            .await?;
        let request = UserContextParams {
            user_id: Some(user),
            ..UserContextParams::default()
        };
        let origin = self.origin(&context.extensions);
        let context = audit::from(origin, self.service.user_context(&caller, request))
            .await
            .map_err(protocol_error)?;
        let contents = ResourceContents::text(context.context, uri).with_mime_type("text/markdown");
        Ok(ReadResourceResult::new(vec![contents]).into())
    }
}

/// Why a tool call did not succeed.
#[derive(Debug)]
enum Failure {
    /// A tool error (`isError: true`): the model reads what was wrong.
    Tool(String),
    /// The call itself refused, as a JSON-RPC error (over its user's rate
    /// limit).
    Refused(ErrorData),
}

impl From<String> for Failure {
    fn from(text: String) -> Self {
        Self::Tool(text)
    }
}

impl From<ErrorData> for Failure {
    fn from(error: ErrorData) -> Self {
        Self::Refused(error)
    }
}

impl IntoCallToolResult for Failure {
    fn into_call_tool_result(self) -> Result<CallToolResponse, ErrorData> {
        match self {
            // Text as a tool's contents; the `Err` around it marks it an error.
            Failure::Tool(text) => text.into_call_tool_result(),
            Failure::Refused(error) => Err(error),
        }
    }
}

/// A tool's result: its structured content, or a tool error.
fn answer<T>(result: Result<T, Error>) -> Result<Json<T>, Failure> {
    result.map(Json).map_err(|e| Failure::Tool(tool_error(e)))
}

/// A call over its user's limit, as the key's limit is said on `/mcp`.
fn rate_limited(limited: &UserLimited) -> ErrorData {
    ErrorData::new(
        ErrorCode(RATE_LIMITED),
        limited.message(),
        Some(serde_json::json!({ "retry_after_secs": limited.retry_after })),
    )
}

/// The text of a tool error. Server-side failures are logged here, once.
fn tool_error(e: Error) -> String {
    if !e.is_caller_error() {
        tracing::error!(error = %e, "tool call failed");
    }
    e.to_string()
}

/// Caller mistakes as invalid params; everything else as an internal error.
fn protocol_error(e: Error) -> ErrorData {
    if e.is_caller_error() {
        ErrorData::invalid_params(e.to_string(), None)
    } else {
        tracing::error!(error = %e, "request failed");
        ErrorData::internal_error(e.to_string(), None)
    }
}

/// Decodes `%XX` escapes (user ids in URIs); leaves malformed escapes as they are.
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let Some(b) = std::str::from_utf8(&bytes[i + 1..i + 3])
                .ok()
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            out.push(b);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The tools as `tools/list` lists them, for the reference in `docs/api.md`.
pub(crate) fn tool_list() -> Vec<rmcp::model::Tool> {
    let mut tools = EngramMcp::tool_router().list_all();
    tools.sort_by(|a, b| a.name.cmp(&b.name));
    tools
}

#[cfg(test)]
mod tests {
    use super::percent_decode;

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("alice%20smith"), "alice smith");
        assert_eq!(percent_decode("a%2"), "a%2");
        assert_eq!(percent_decode("plain"), "plain");
    }
}
