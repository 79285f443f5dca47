//! The spans engram traces, and what each carries: one constructor per
//! kind, so every attribute name lives here.
//!
//! | span | name | kind | attributes |
//! |---|---|---|---|
//! | HTTP request ([`http_request`]) | `{method} {route}` | server | `http.request.method`, `http.route`, `url.scheme`, `http.response.status_code`, `error.type` (5xx) |
//! | MCP request ([`mcp_request`]) | `tools/call {tool}`, `prompts/get {prompt}`, `resources/read` | server | `mcp.method.name`, `gen_ai.operation.name` (`execute_tool`), `gen_ai.tool.name`, `gen_ai.prompt.name`, `jsonrpc.request.id`, `mcp.session.id`, `network.transport` (`pipe`, `tcp`), `error.type` |
//! | memory operation ([`MemoryOp`]) | `upsert_memory`, `search_memory`, `delete_memory` | internal | `gen_ai.operation.name`, `engram.operation`, `gen_ai.memory.record.count`, `gen_ai.memory.record.id` (one record), `engram.memory.ids` (several: comma-separated, at most 100), `error.type` |
//! | chat model call ([`chat`]) | `chat {model}` | client | `gen_ai.operation.name`, `gen_ai.provider.name`, `gen_ai.request.model`, `gen_ai.request.temperature`, `gen_ai.output.type`, `server.address`, `server.port`, `engram.llm.task`; after: `gen_ai.response.model`, `gen_ai.response.id`, `gen_ai.response.finish_reasons`, `gen_ai.usage.input_tokens`, `gen_ai.usage.output_tokens`, `error.type` |
//! | embeddings call ([`embeddings`]) | `embeddings {model}` | client | the same request attributes, `gen_ai.embeddings.dimension.count`, `engram.embeddings.inputs`; after: `gen_ai.response.model`, `gen_ai.usage.input_tokens` |
//! | store call ([`store`]) | the store method | client | `db.system.name` and `db.system` (`postgresql`, `sqlite`), `db.operation.name` (the method), `error.type` |
//! | cache command ([`cache`]) | the Redis command | client | `db.system.name` / `db.system` (`redis`), `db.operation.name` (the command), `engram.cache.operation` |
//!
//! Content: memory text, query text, messages sent to or received from the
//! model, tool arguments and anything naming a user (user ids, resource
//! URIs, URL paths, error messages) are recorded only with
//! `ENGRAM_TRACE_CONTENT=true` ([`content`]); then as the GenAI
//! conventions' opt-in attributes (`gen_ai.memory.query.text`,
//! `gen_ai.memory.records`, `gen_ai.system_instructions`,
//! `gen_ai.input.messages`, `gen_ai.output.messages`,
//! `gen_ai.tool.call.arguments`, `mcp.resource.uri`, `url.path`, and the
//! error message as the status description). Without it, spans hold
//! names, ids of memories, counts, codes and durations only.
//!
//! Parents are explicit: a request or a memory operation runs its work
//! [`within`] its span, a task-local the spans made meanwhile take as their
//! parent. No span is ever entered (entering costs a round through every
//! `tracing` layer on each poll of the future it wraps). Store and cache
//! spans are made only within another engram span, so background work (the
//! audit writer, the sealer) does not start traces of its own. With traces
//! off every constructor returns a disabled span, which costs a branch.

use std::sync::atomic::{AtomicBool, Ordering};

use async_openai::types::chat::CreateChatCompletionResponse;
use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{Status, TraceContextExt};
use opentelemetry::{Array, StringValue, Value};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tracing::Span;
use tracing::field::Empty;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::error::Error;

/// The target of every span engram exports: the log output leaves it
/// out, the exporter takes only it.
pub const TARGET: &str = "engram::trace";

/// Most memory ids one span lists.
const MAX_IDS: usize = 100;

static ENABLED: AtomicBool = AtomicBool::new(false);
static CONTENT: AtomicBool = AtomicBool::new(false);

pub(super) fn set_enabled(on: bool) {
    ENABLED.store(on, Ordering::Relaxed);
}

/// True when spans are exported (`OTEL_EXPORTER_OTLP_ENDPOINT` is set).
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// Records content (`ENGRAM_TRACE_CONTENT`) from now on; set at start-up.
pub fn capture_content(on: bool) {
    CONTENT.store(on, Ordering::Relaxed);
}

/// True when spans may carry content: text, queries, messages, user ids.
pub fn content() -> bool {
    enabled() && CONTENT.load(Ordering::Relaxed)
}

tokio::task_local! {
    /// The engram span the task is working in (a request or a memory
    /// operation), set by [`within`]: the parent of the spans made under
    /// it. Spans are never entered, which in `tracing` costs a round through
    /// every layer on each poll of the future; a task-local costs a swap.
    static PARENT: Parent;
}

/// What [`within`] set: a span whose trace is recorded, or the mark of a
/// trace the sampler dropped, under which no span is made at all (each
/// would cost nearly what a recorded one does, to be thrown away).
#[derive(Clone)]
enum Parent {
    Recorded(Span),
    Unsampled,
}

/// Runs `work` under `span`: the spans made while it runs are its children.
pub async fn within<F: std::future::Future>(span: Span, work: F) -> F::Output {
    let parent = if span.is_disabled() || span.context().span().span_context().is_sampled() {
        Parent::Recorded(span)
    } else {
        Parent::Unsampled
    };
    PARENT.scope(parent, work).await
}

/// Where a new span goes.
enum Under {
    /// No engram span around: a new span is a root.
    Nothing,
    /// A dropped trace: no span.
    Unsampled,
    /// This span's child.
    Span(tracing::Id),
}

fn under() -> Under {
    match PARENT.try_with(|parent| match parent {
        Parent::Recorded(span) => span.id().map_or(Under::Nothing, Under::Span),
        Parent::Unsampled => Under::Unsampled,
    }) {
        Ok(under) => under,
        Err(_) => Under::Nothing,
    }
}

/// The parent of a span that may be a root (an operation, a model call):
/// `None` when it is not to be made (traces off, or a dropped trace).
fn parent_or_root() -> Option<Option<tracing::Id>> {
    if !enabled() {
        return None;
    }
    match under() {
        Under::Nothing => Some(None),
        Under::Unsampled => None,
        Under::Span(id) => Some(Some(id)),
    }
}

/// The parent of a span made only inside another engram span (store and
/// cache calls), if there is one that is recorded.
fn recorded_parent() -> Option<tracing::Id> {
    match under() {
        Under::Span(id) if enabled() => Some(id),
        _ => None,
    }
}

/// An HTTP request's span, handed to what serves it on other tasks (MCP
/// handlers read it from the request as their parent).
#[derive(Clone, Debug)]
pub struct RequestSpan(pub Span);

/// Sets `key` on `span` (nothing when the span is disabled).
pub fn set(span: &Span, key: &'static str, value: impl Into<Value>) {
    if !span.is_disabled() {
        span.set_attribute(key, value);
    }
}

/// Marks `span` failed: `error_type` (a low-cardinality code) as
/// `error.type` and the status; the `message` as its description only with
/// content on (messages may name a user).
pub fn fail(span: &Span, error_type: &str, message: impl FnOnce() -> String) {
    if span.is_disabled() {
        return;
    }
    span.set_attribute("error.type", error_type.to_owned());
    let description = if content() {
        message()
    } else {
        error_type.to_owned()
    };
    span.set_status(Status::error(description));
}

/// Continues the trace a W3C `traceparent` (and `tracestate`) names:
/// `span` becomes the remote span's child. Malformed values are ignored.
pub fn continue_trace(span: &Span, traceparent: Option<&str>, tracestate: Option<&str>) {
    let Some(traceparent) = traceparent else {
        return;
    };
    if span.is_disabled() {
        return;
    }
    let mut carrier = std::collections::HashMap::new();
    carrier.insert("traceparent".to_owned(), traceparent.to_owned());
    if let Some(state) = tracestate {
        carrier.insert("tracestate".to_owned(), state.to_owned());
    }
    let parent = TraceContextPropagator::new().extract(&carrier);
    if parent.span().span_context().is_valid() {
        let _ = span.set_parent(parent);
    }
}

/// Makes `span` a child of `parent` (another engram span, e.g. the HTTP
/// request an MCP call came in).
pub fn child_of(span: &Span, parent: &Span) {
    if !span.is_disabled() && !parent.is_disabled() {
        let _ = span.set_parent(parent.context());
    }
}

/// An HTTP request: `route` is the matched route's template (never the
/// path, which may name a user).
pub fn http_request(method: &str, route: Option<&str>) -> Span {
    if !enabled() {
        return Span::none();
    }
    let name = match route {
        Some(route) => format!("{method} {route}"),
        None => method.to_owned(),
    };
    tracing::info_span!(
        target: TARGET,
        parent: None,
        "http",
        otel.name = name.as_str(),
        otel.kind = "server",
        http.request.method = method,
        http.route = route,
        url.scheme = "http",
    )
}

/// The answer to the request of [`http_request`]'s span: 5xx fails it.
pub fn http_response(span: &Span, status: u16) {
    set(span, "http.response.status_code", i64::from(status));
    if status >= 500 {
        fail(span, &status.to_string(), || format!("answered {status}"));
    }
}

/// An MCP request (`method`, e.g. `tools/call`; `target`, the tool or
/// prompt). `network` is `pipe` (stdio) or `tcp`. A root until given a
/// parent ([`continue_trace`], [`child_of`]).
pub fn mcp_request(method: &'static str, target: Option<&str>, network: &'static str) -> Span {
    if !enabled() {
        return Span::none();
    }
    let tool = (method == "tools/call").then_some(target).flatten();
    let prompt = (method == "prompts/get").then_some(target).flatten();
    let name = match target {
        Some(target) => format!("{method} {target}"),
        None => method.to_owned(),
    };
    tracing::info_span!(
        target: TARGET,
        parent: None,
        "mcp",
        otel.name = name.as_str(),
        otel.kind = "server",
        mcp.method.name = method,
        gen_ai.operation.name = tool.map(|_| "execute_tool"),
        gen_ai.tool.name = tool,
        gen_ai.prompt.name = prompt,
        network.transport = network,
        jsonrpc.protocol.version = "2.0",
        jsonrpc.request.id = Empty,
        mcp.session.id = Empty,
    )
}

/// A memory operation as the GenAI conventions name it
/// (`gen_ai.operation.name`: `upsert_memory`, `search_memory`,
/// `delete_memory`), with `engram.operation` the service method.
pub struct MemoryOp(Span);

/// What a memory operation touched: the memories (ids, and their text and
/// score for `gen_ai.memory.records` with content on), and how many.
#[derive(Default)]
pub struct Touched {
    pub count: u64,
    pub records: Vec<Record>,
}

/// One memory record a memory operation touched.
pub struct Record {
    pub id: String,
    /// The text, kept only with content on.
    pub content: Option<String>,
    pub score: Option<f32>,
}

impl Record {
    /// Record `id`, with its `text` only when content is recorded.
    pub fn new(id: impl ToString, text: &str) -> Self {
        Self {
            id: id.to_string(),
            content: content().then(|| text.to_owned()),
            score: None,
        }
    }

    /// Record `id`, its text not at hand.
    pub fn id(id: impl ToString) -> Self {
        Self {
            id: id.to_string(),
            content: None,
            score: None,
        }
    }

    pub fn scored(mut self, score: f32) -> Self {
        self.score = Some(score);
        self
    }
}

impl Touched {
    /// These records, counted.
    pub fn records(records: impl IntoIterator<Item = Record>) -> Self {
        let records: Vec<Record> = records.into_iter().collect();
        Self {
            count: records.len() as u64,
            records,
        }
    }

    /// `count` records, of which these are known.
    pub fn counted(count: u64, records: impl IntoIterator<Item = Record>) -> Self {
        Self {
            count,
            records: records.into_iter().collect(),
        }
    }
}

impl MemoryOp {
    /// Starts the span of `operation` (a GenAI memory operation name) done
    /// by the service method `method`.
    pub fn start(operation: &'static str, method: &'static str) -> Self {
        let Some(parent) = parent_or_root() else {
            return Self(Span::none());
        };
        Self(tracing::info_span!(
            target: TARGET,
            parent: parent,
            "memory",
            otel.name = operation,
            otel.kind = "internal",
            gen_ai.operation.name = operation,
            engram.operation = method,
        ))
    }

    /// The search query (`gen_ai.memory.query.text`), kept only with content on.
    pub fn query(self, query: Option<&str>) -> Self {
        if let Some(query) = query.filter(|_| content()) {
            set(&self.0, "gen_ai.memory.query.text", query.to_owned());
        }
        self
    }

    /// Runs `flow` in the span; records what it touched, or how it failed.
    pub async fn run<T, F>(self, flow: F, touched: impl FnOnce(&T) -> Touched) -> Result<T, Error>
    where
        F: std::future::Future<Output = Result<T, Error>>,
    {
        let span = self.0;
        if span.is_disabled() {
            return flow.await;
        }
        let result = within(span.clone(), flow).await;
        match &result {
            Ok(answer) => record(&span, touched(answer)),
            Err(e) => fail(&span, e.code(), || e.to_string()),
        }
        result
    }
}

/// The memories an operation touched, on its span.
fn record(span: &Span, touched: Touched) {
    set(
        span,
        "gen_ai.memory.record.count",
        i64::try_from(touched.count).unwrap_or(i64::MAX),
    );
    if content() {
        let records: Vec<serde_json::Value> = touched
            .records
            .iter()
            .map(|r| {
                let mut record = serde_json::json!({"id": r.id, "content": r.content});
                if let Some(score) = r.score {
                    record["score"] = serde_json::json!(score);
                }
                record
            })
            .collect();
        set(
            span,
            "gen_ai.memory.records",
            serde_json::Value::Array(records).to_string(),
        );
    }
    match touched.records.as_slice() {
        [] => {}
        [one] => set(span, "gen_ai.memory.record.id", one.id.clone()),
        // One string, not an array of strings: an array costs an
        // allocation and an encoded value per id, and a recall lists ten
        // (docs/benchmarks.md, telemetry overhead).
        many => {
            let mut ids = String::with_capacity(many.len().min(MAX_IDS) * 37);
            for (i, record) in many.iter().take(MAX_IDS).enumerate() {
                if i > 0 {
                    ids.push(',');
                }
                ids.push_str(&record.id);
            }
            set(span, "engram.memory.ids", ids);
        }
    }
}

/// Where a model server is: `server.address` and `server.port` of its URL.
pub fn server_of(base_url: &str) -> (String, i64) {
    match reqwest::Url::parse(base_url) {
        Ok(url) => (
            url.host_str().unwrap_or_default().to_owned(),
            url.port_or_known_default().map_or(0, i64::from),
        ),
        Err(_) => (String::new(), 0),
    }
}

/// A chat model call (`task`: what it is for, e.g. `facts`; `output`:
/// `json` or `text`).
pub fn chat(
    model: &str,
    base_url: &str,
    task: &'static str,
    temperature: Option<f32>,
    output: &'static str,
) -> Span {
    let Some(parent) = parent_or_root() else {
        return Span::none();
    };
    let (address, port) = server_of(base_url);
    tracing::info_span!(
        target: TARGET,
        parent: parent,
        "chat",
        otel.name = format!("chat {model}").as_str(),
        otel.kind = "client",
        gen_ai.operation.name = "chat",
        gen_ai.provider.name = "openai",
        gen_ai.request.model = model,
        gen_ai.request.temperature = temperature.map(f64::from),
        gen_ai.output.type = output,
        server.address = address.as_str(),
        server.port = port,
        engram.llm.task = task,
    )
}

/// Records what a chat model answered on its [`chat`] span: the model,
/// the response id, the finish reasons and the tokens it counted.
pub fn chat_answered(span: &Span, response: &CreateChatCompletionResponse) {
    if span.is_disabled() {
        return;
    }
    set(span, "gen_ai.response.model", response.model.clone());
    set(span, "gen_ai.response.id", response.id.clone());
    let reasons: Vec<StringValue> = response
        .choices
        .iter()
        .filter_map(|c| serde_json::to_value(c.finish_reason?).ok())
        .filter_map(|r| r.as_str().map(|r| StringValue::from(r.to_owned())))
        .collect();
    set(
        span,
        "gen_ai.response.finish_reasons",
        Value::Array(Array::String(reasons)),
    );
    if let Some(usage) = &response.usage {
        set(
            span,
            "gen_ai.usage.input_tokens",
            i64::from(usage.prompt_tokens),
        );
        set(
            span,
            "gen_ai.usage.output_tokens",
            i64::from(usage.completion_tokens),
        );
    }
}

/// The messages of a chat call, with content on: the instructions and the
/// user's turn sent, and `output`, the reply (when there is one).
pub fn chat_content(span: &Span, system: &str, user: &str, output: Option<&str>) {
    if span.is_disabled() || !content() {
        return;
    }
    let text = |t: &str| serde_json::json!([{"type": "text", "content": t}]);
    set(span, "gen_ai.system_instructions", text(system).to_string());
    let input = serde_json::json!([{"role": "user", "parts": text(user)}]);
    set(span, "gen_ai.input.messages", input.to_string());
    if let Some(output) = output {
        let output = serde_json::json!([{"role": "assistant", "parts": text(output)}]);
        set(span, "gen_ai.output.messages", output.to_string());
    }
}

/// An embeddings call for `inputs` texts.
pub fn embeddings(model: &str, base_url: &str, dims: usize, inputs: usize) -> Span {
    let Some(parent) = parent_or_root() else {
        return Span::none();
    };
    let (address, port) = server_of(base_url);
    tracing::info_span!(
        target: TARGET,
        parent: parent,
        "embeddings",
        otel.name = format!("embeddings {model}").as_str(),
        otel.kind = "client",
        gen_ai.operation.name = "embeddings",
        gen_ai.provider.name = "openai",
        gen_ai.request.model = model,
        gen_ai.embeddings.dimension.count = dims as i64,
        server.address = address.as_str(),
        server.port = port,
        engram.embeddings.inputs = inputs as i64,
    )
}

/// A call to the store (`system`: `postgresql` or `sqlite`; `operation`:
/// the store method). Disabled outside an engram span.
pub fn store(system: &'static str, operation: &'static str) -> Span {
    let Some(parent) = recorded_parent() else {
        return Span::none();
    };
    tracing::info_span!(
        target: TARGET,
        parent: parent,
        "db",
        otel.name = operation,
        otel.kind = "client",
        db.system.name = system,
        db.system = system,
        db.operation.name = operation,
    )
}

/// A write batch of the store (one transaction, from `begin` to its commit
/// or rollback): one span for all its writes, which it counts in
/// `db.operation.batch.size`. Disabled outside an engram span.
pub fn write_batch(system: &'static str) -> Span {
    let Some(parent) = recorded_parent() else {
        return Span::none();
    };
    tracing::info_span!(
        target: TARGET,
        parent: parent,
        "db",
        otel.name = "write_batch",
        otel.kind = "client",
        db.system.name = system,
        db.system = system,
        db.operation.name = "write_batch",
        db.operation.batch.size = tracing::field::Empty,
    )
}

/// A cache command (`command`, e.g. `HGET`; `operation`, engram's name for
/// it). Disabled outside an engram span.
pub fn cache(command: &'static str, operation: &'static str) -> Span {
    let Some(parent) = recorded_parent() else {
        return Span::none();
    };
    tracing::info_span!(
        target: TARGET,
        parent: parent,
        "cache",
        otel.name = command,
        otel.kind = "client",
        db.system.name = "redis",
        db.system = "redis",
        db.operation.name = command,
        engram.cache.operation = operation,
    )
}
