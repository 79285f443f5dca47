//! Traces over OTLP, on the real wire: the binary, pointed by
//! `OTEL_EXPORTER_OTLP_ENDPOINT` at a receiver this test runs (OTLP/HTTP,
//! protobuf decoded with `opentelemetry-proto`), its models a fake
//! OpenAI-compatible server. What arrives: the spans of a remember through
//! the LLM pipeline and of a recall, each under the client's `traceparent`
//! (an HTTP header; on stdio, MCP's `params._meta`), linked parent to
//! child, with the GenAI attributes, and without memory text, query text or
//! user ids unless `ENGRAM_TRACE_CONTENT=true`. Spans are batched for a
//! minute here, so what arrives was sent by the flush at shutdown.

use crate::common;
use crate::common::stdio::RawStdio;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::routing::post;
use common::fake_openai::{FakeOpenAi, Reply};
use common::http::{NO_LIMITS, Server};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use prost::Message;
use reqwest::Method;
use serde_json::{Value, json};

/// One exported span, flattened, with its resource's attributes.
#[derive(Debug, Clone)]
struct Span {
    trace_id: String,
    span_id: String,
    parent_span_id: String,
    name: String,
    kind: i32,
    attributes: HashMap<String, AnyValue>,
    resource: HashMap<String, AnyValue>,
    error: bool,
}

impl Span {
    fn str(&self, key: &str) -> Option<&str> {
        match self.attributes.get(key) {
            Some(AnyValue::StringValue(s)) => Some(s),
            _ => None,
        }
    }

    fn int(&self, key: &str) -> Option<i64> {
        match self.attributes.get(key) {
            Some(AnyValue::IntValue(i)) => Some(*i),
            _ => None,
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn attributes(list: &[KeyValue]) -> HashMap<String, AnyValue> {
    list.iter()
        .filter_map(|kv| {
            let value = kv.value.as_ref()?.value.clone()?;
            Some((kv.key.clone(), value))
        })
        .collect()
}

/// Every string an attribute holds (arrays included), for leak checks.
fn strings(value: &AnyValue) -> Vec<String> {
    match value {
        AnyValue::StringValue(s) => vec![s.clone()],
        AnyValue::ArrayValue(array) => array
            .values
            .iter()
            .filter_map(|v| v.value.as_ref())
            .flat_map(strings)
            .collect(),
        other => vec![format!("{other:?}")],
    }
}

/// An OTLP/HTTP trace receiver on 127.0.0.1:0.
struct Receiver {
    endpoint: String,
    spans: Arc<Mutex<Vec<Span>>>,
    /// Content types of the posts received.
    posts: Arc<Mutex<Vec<String>>>,
}

type Seen = (Arc<Mutex<Vec<Span>>>, Arc<Mutex<Vec<String>>>);

async fn export(
    State((spans, posts)): State<Seen>,
    headers: axum::http::HeaderMap,
    body: Bytes,
) -> impl axum::response::IntoResponse {
    posts.lock().unwrap().push(
        headers
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned(),
    );
    let request = ExportTraceServiceRequest::decode(body).expect("an OTLP protobuf request");
    let mut seen = spans.lock().unwrap();
    for resource_spans in request.resource_spans {
        let resource = resource_spans
            .resource
            .map(|r| attributes(&r.attributes))
            .unwrap_or_default();
        for scope in resource_spans.scope_spans {
            for span in scope.spans {
                seen.push(Span {
                    trace_id: hex(&span.trace_id),
                    span_id: hex(&span.span_id),
                    parent_span_id: hex(&span.parent_span_id),
                    name: span.name.clone(),
                    kind: span.kind,
                    attributes: attributes(&span.attributes),
                    resource: resource.clone(),
                    // STATUS_CODE_ERROR
                    error: span.status.is_some_and(|s| s.code == 2),
                });
            }
        }
    }
    (
        [("content-type", "application/x-protobuf")],
        ExportTraceServiceResponse::default().encode_to_vec(),
    )
}

impl Receiver {
    async fn start() -> Self {
        let spans = Arc::new(Mutex::new(Vec::new()));
        let posts = Arc::new(Mutex::new(Vec::new()));
        let app = Router::new()
            .route("/v1/traces", post(export))
            .with_state((spans.clone(), posts.clone()));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Self {
            endpoint: format!("http://{address}"),
            spans,
            posts,
        }
    }

    fn spans(&self) -> Vec<Span> {
        self.spans.lock().unwrap().clone()
    }
}

/// The variables that point engram at `receiver` and `fake`: traces on,
/// batched for a minute (so only the flush at shutdown sends them), the
/// llm extractor and the openai embedder.
fn env<'a>(receiver: &'a Receiver, fake: &'a FakeOpenAi) -> Vec<(&'a str, &'a str)> {
    let mut env = vec![
        ("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint.as_str()),
        ("OTEL_BSP_SCHEDULE_DELAY", "60000"),
        ("ENGRAM_EXTRACTOR", "llm"),
        ("ENGRAM_EMBEDDER", "openai"),
        ("ENGRAM_EMBEDDING_DIMS", "64"),
        ("OPENAI_BASE_URL", fake.base_url.as_str()),
        ("OPENAI_API_KEY", "test-key"),
    ];
    env.extend_from_slice(&NO_LIMITS);
    env
}

/// A W3C `traceparent` of a client's span, and that span's ids.
fn traceparent(trace: &str, span: &str) -> String {
    format!("00-{trace}-{span}-01")
}

/// Stops the served process with SIGTERM and waits for it.
async fn stop(server: &mut Server) {
    let child = server.child.as_mut().expect("a process");
    let pid = child.id().expect("running");
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let status = tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .expect("engram stopped")
        .unwrap();
    assert!(status.success(), "{status:?}");
}

fn one<'a>(spans: &'a [Span], what: &str, test: impl Fn(&Span) -> bool) -> &'a Span {
    let found: Vec<&Span> = spans.iter().filter(|s| test(s)).collect();
    assert_eq!(
        found.len(),
        1,
        "exactly one {what} span; got {found:#?}\namong {:#?}",
        spans.iter().map(|s| &s.name).collect::<Vec<_>>()
    );
    found[0]
}

/// Asserts no attribute of any span holds one of `secrets`.
fn nothing_of(spans: &[Span], secrets: &[&str]) {
    for span in spans {
        for (key, value) in span.attributes.iter().chain(span.resource.iter()) {
            for text in strings(value) {
                for secret in secrets {
                    assert!(
                        !text.contains(secret),
                        "span {} carries {secret:?} in {key} = {text:?}",
                        span.name
                    );
                }
            }
        }
    }
}

const USER: &str = "otel-user-7f3a";
const SAID: &str = "I moved to Porto last month";
const ASKED: &str = "where does the user live";

/// Over REST: remembers what the user `SAID`, recalls with what they
/// `ASKED`, then stops the server (which exports the spans).
async fn remember_then_recall(server: &mut Server) {
    for (path, body) in [
        (
            "/api/v1/memory",
            json!({"messages": [{"role": "user", "content": SAID}], "user_id": USER}),
        ),
        (
            "/api/v1/memory/search",
            json!({"query": ASKED, "user_id": USER}),
        ),
    ] {
        let reply = server.call(Method::POST, path, None, Some(body)).await;
        assert_eq!(reply.status, 200, "{}", reply.text);
    }
    stop(server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_remember_and_a_recall_arrive_as_linked_genai_spans_under_the_clients_trace() {
    let receiver = Receiver::start().await;
    let fake = FakeOpenAi::start(64).await;
    let mut server = Server::start_process_with(&env(&receiver, &fake)).await;

    let (remember_trace, remember_parent) =
        ("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7");
    let stored = server
        .http
        .request(Method::POST, format!("{}/api/v1/memory", server.base))
        .header("traceparent", traceparent(remember_trace, remember_parent))
        .json(&json!({"messages": [{"role": "user", "content": SAID}], "user_id": USER}))
        .send()
        .await
        .unwrap();
    assert_eq!(stored.status(), 200);
    let stored: Value = stored.json().await.unwrap();
    let memory_id = stored["results"][0]["id"].as_str().unwrap().to_owned();

    let (recall_trace, recall_parent) = ("0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331");
    let found = server
        .http
        .request(
            Method::POST,
            format!("{}/api/v1/memory/search", server.base),
        )
        .header("traceparent", traceparent(recall_trace, recall_parent))
        .json(&json!({"query": ASKED, "user_id": USER}))
        .send()
        .await
        .unwrap();
    assert_eq!(found.status(), 200);
    let found: Value = found.json().await.unwrap();
    assert_eq!(found["results"][0]["id"], memory_id.as_str());

    // MCP over HTTP: the tool call's span under the HTTP request's.
    let (mcp_trace, mcp_parent) = ("a1b2c3d4e5f60718293a4b5c6d7e8f90", "1122334455667788");
    let called = common::http::stateless(
        &server.http,
        &server.base,
        None,
        json!("otel-1"),
        "tools/call",
        json!({"name": "recall", "arguments": {"query": ASKED, "user_id": USER}}),
    )
    .header("traceparent", traceparent(mcp_trace, mcp_parent))
    .send()
    .await
    .unwrap();
    assert_eq!(called.status(), 200);
    let called = called.text().await.unwrap();
    assert!(called.contains(&memory_id), "{called}");

    assert!(
        receiver.spans().is_empty(),
        "spans are batched for a minute: none before shutdown"
    );
    stop(&mut server).await;
    let spans = receiver.spans();
    assert!(
        receiver
            .posts
            .lock()
            .unwrap()
            .iter()
            .all(|t| t == "application/x-protobuf"),
        "OTLP/HTTP with protobuf"
    );
    assert!(
        spans.iter().all(
            |s| s.resource.get("service.name") == Some(&AnyValue::StringValue("engram".into()))
        ),
        "service.name defaults to engram"
    );

    // The remember: client span -> HTTP request -> upsert_memory -> chat, embeddings, store.
    let remember: Vec<Span> = spans
        .iter()
        .filter(|s| s.trace_id == remember_trace)
        .cloned()
        .collect();
    let http = one(&remember, "HTTP", |s| s.name == "POST /api/v1/memory");
    assert_eq!(
        http.parent_span_id, remember_parent,
        "the client's span is the parent"
    );
    assert_eq!(http.kind, SpanKind::Server as i32);
    assert_eq!(http.str("http.request.method"), Some("POST"));
    assert_eq!(http.str("http.route"), Some("/api/v1/memory"));
    assert_eq!(http.int("http.response.status_code"), Some(200));
    let upsert = one(&remember, "memory operation", |s| s.name == "upsert_memory");
    assert_eq!(upsert.parent_span_id, http.span_id);
    assert_eq!(upsert.str("gen_ai.operation.name"), Some("upsert_memory"));
    assert_eq!(upsert.str("engram.operation"), Some("remember"));
    assert_eq!(upsert.int("gen_ai.memory.record.count"), Some(1));
    assert_eq!(
        upsert.str("gen_ai.memory.record.id"),
        Some(memory_id.as_str())
    );
    let chat = one(&remember, "chat", |s| s.name == "chat gpt-4o-mini");
    assert_eq!(chat.parent_span_id, upsert.span_id);
    assert_eq!(chat.kind, SpanKind::Client as i32);
    assert_eq!(chat.str("gen_ai.operation.name"), Some("chat"));
    assert_eq!(chat.str("gen_ai.provider.name"), Some("openai"));
    assert_eq!(chat.str("gen_ai.request.model"), Some("gpt-4o-mini"));
    assert_eq!(chat.str("engram.llm.task"), Some("facts"));
    assert_eq!(
        chat.int("gen_ai.usage.input_tokens"),
        Some(120),
        "the server's counts"
    );
    assert_eq!(chat.int("gen_ai.usage.output_tokens"), Some(30));
    assert_eq!(chat.str("server.address"), Some("127.0.0.1"));
    let embedding = remember
        .iter()
        .find(|s| s.name == "embeddings text-embedding-3-small")
        .expect("an embeddings span");
    assert_eq!(embedding.parent_span_id, upsert.span_id);
    assert_eq!(embedding.str("gen_ai.operation.name"), Some("embeddings"));
    assert_eq!(embedding.int("gen_ai.embeddings.dimension.count"), Some(64));
    let stores: Vec<&Span> = remember
        .iter()
        .filter(|s| s.str("db.system.name") == Some("sqlite"))
        .collect();
    // The remember's writes: one span for its write batch (its transaction),
    // counting the rows it wrote: at least the memory and its audit row.
    let batch = stores
        .iter()
        .find(|s| s.str("db.operation.name") == Some("write_batch"))
        .unwrap_or_else(|| panic!("a write batch span: {stores:#?}"));
    assert_eq!(batch.name, "write_batch");
    assert_eq!(batch.parent_span_id, upsert.span_id);
    assert_eq!(batch.str("db.system"), Some("sqlite"));
    assert!(
        batch.int("db.operation.batch.size").is_some_and(|n| n >= 2),
        "{batch:#?}"
    );

    // The recall: client span -> HTTP request -> search_memory -> embeddings, store.
    let recall: Vec<Span> = spans
        .iter()
        .filter(|s| s.trace_id == recall_trace)
        .cloned()
        .collect();
    let http = one(&recall, "HTTP", |s| s.name == "POST /api/v1/memory/search");
    assert_eq!(http.parent_span_id, recall_parent);
    let search = one(&recall, "memory operation", |s| s.name == "search_memory");
    assert_eq!(search.parent_span_id, http.span_id);
    assert_eq!(search.str("engram.operation"), Some("recall"));
    assert_eq!(search.int("gen_ai.memory.record.count"), Some(1));
    assert_eq!(
        search.str("gen_ai.memory.record.id"),
        Some(memory_id.as_str())
    );
    assert!(
        recall
            .iter()
            .any(|s| s.name == "embeddings text-embedding-3-small"
                && s.parent_span_id == search.span_id),
        "the query's embedding under the recall"
    );
    assert!(
        recall.iter().any(
            |s| s.str("db.system.name") == Some("sqlite") && s.parent_span_id == search.span_id
        ),
        "store calls under the recall"
    );

    // The MCP call: client span -> HTTP request -> tools/call -> search_memory.
    let mcp: Vec<Span> = spans
        .iter()
        .filter(|s| s.trace_id == mcp_trace)
        .cloned()
        .collect();
    let http = one(&mcp, "HTTP", |s| s.name == "POST /mcp");
    assert_eq!(http.parent_span_id, mcp_parent);
    let call = one(&mcp, "tools/call", |s| s.name == "tools/call recall");
    assert_eq!(call.parent_span_id, http.span_id);
    assert_eq!(call.kind, SpanKind::Server as i32);
    assert_eq!(call.str("gen_ai.tool.name"), Some("recall"));
    assert_eq!(call.str("network.transport"), Some("tcp"));
    assert_eq!(call.str("jsonrpc.request.id"), Some("otel-1"));
    let search = one(&mcp, "memory operation", |s| s.name == "search_memory");
    assert_eq!(search.parent_span_id, call.span_id);

    // No memory text, query text or user id anywhere without the opt-in.
    nothing_of(&spans, &[USER, "Porto", "moved", ASKED]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_trace_content_the_genai_opt_in_attributes_carry_the_text() {
    let receiver = Receiver::start().await;
    let fake = FakeOpenAi::start(64).await;
    let mut env = env(&receiver, &fake);
    env.push(("ENGRAM_TRACE_CONTENT", "true"));
    let mut server = Server::start_process_with(&env).await;
    remember_then_recall(&mut server).await;
    let spans = receiver.spans();
    let search = one(&spans, "recall", |s| s.name == "search_memory");
    assert_eq!(search.str("gen_ai.memory.query.text"), Some(ASKED));
    let records: Value =
        serde_json::from_str(search.str("gen_ai.memory.records").expect("the records")).unwrap();
    assert_eq!(records[0]["content"], SAID, "{records}");
    assert!(records[0]["score"].is_number(), "{records}");
    let chat = one(&spans, "chat", |s| s.name == "chat gpt-4o-mini");
    assert!(
        chat.str("gen_ai.input.messages")
            .is_some_and(|m| m.contains(SAID)),
        "the conversation sent: {chat:#?}"
    );
    assert!(chat.str("gen_ai.output.messages").is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_model_call_fails_its_chat_span_and_the_deferred_remember_does_not() {
    let receiver = Receiver::start().await;
    let fake = FakeOpenAi::start(64).await;
    fake.then(Reply::Error {
        status: 400,
        code: "invalid_request_error",
        retry_after: None,
    });
    let mut server = Server::start_process_with(&env(&receiver, &fake)).await;
    let body = json!({"messages": [{"role": "user", "content": SAID}], "user_id": USER});
    let stored = server
        .call(Method::POST, "/api/v1/memory", None, Some(body))
        .await;
    assert_eq!(stored.status, 200, "{}", stored.text);
    assert!(stored.text.contains("deferred"), "{}", stored.text);
    stop(&mut server).await;

    let spans = receiver.spans();
    let chat = one(&spans, "chat", |s| s.name == "chat gpt-4o-mini");
    assert!(chat.error, "the refused call: {chat:#?}");
    assert_eq!(chat.str("error.type"), Some("400"));
    let upsert = one(&spans, "remember", |s| s.name == "upsert_memory");
    assert_eq!(chat.parent_span_id, upsert.span_id);
    assert!(
        !upsert.error && upsert.str("error.type").is_none(),
        "stored verbatim and queued, the remember succeeded: {upsert:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recall_of_several_memories_lists_their_ids_on_its_span() {
    let receiver = Receiver::start().await;
    let fake = FakeOpenAi::start(64).await;
    let mut server = Server::start_process_with(&env(&receiver, &fake)).await;
    let mut ids = Vec::new();
    for text in [
        "I live in Porto",
        "I work in Porto",
        "Porto is rainy in winter",
    ] {
        let body = json!({"messages": [{"role": "user", "content": text}], "user_id": USER, "infer": false});
        let stored = server
            .call(Method::POST, "/api/v1/memory", None, Some(body))
            .await;
        assert_eq!(stored.status, 200, "{}", stored.text);
        let stored: Value = serde_json::from_str(&stored.text).unwrap();
        ids.push(stored["results"][0]["id"].as_str().unwrap().to_owned());
    }
    let body = json!({"query": "Porto", "user_id": USER});
    let found = server
        .call(Method::POST, "/api/v1/memory/search", None, Some(body))
        .await;
    assert_eq!(found.status, 200, "{}", found.text);
    stop(&mut server).await;

    let spans = receiver.spans();
    let search = one(&spans, "recall", |s| s.name == "search_memory");
    assert_eq!(search.int("gen_ai.memory.record.count"), Some(3));
    let mut listed: Vec<&str> = search
        .str("engram.memory.ids")
        .expect("the ids, comma-separated")
        .split(',')
        .collect();
    listed.sort_unstable();
    ids.sort_unstable();
    assert_eq!(listed, ids);
    assert_eq!(
        search.str("gen_ai.memory.record.id"),
        None,
        "several records"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_trace_that_is_not_sampled_exports_no_span_of_its_request() {
    let receiver = Receiver::start().await;
    let fake = FakeOpenAi::start(64).await;
    let mut server = Server::start_process_with(&env(&receiver, &fake)).await;
    let (dropped, kept) = (
        "11111111111111111111111111111111",
        "22222222222222222222222222222222",
    );
    for (trace, flags, said) in [
        (dropped, "00", "I moved to Porto last month"),
        (kept, "01", "I work as a baker"),
    ] {
        let sent = server
            .http
            .request(Method::POST, format!("{}/api/v1/memory", server.base))
            .header(
                "traceparent",
                format!("00-{trace}-00f067aa0ba902b7-{flags}"),
            )
            .json(&json!({"messages": [{"role": "user", "content": said}], "user_id": USER}))
            .send()
            .await
            .unwrap();
        assert_eq!(sent.status(), 200);
    }
    stop(&mut server).await;

    let spans = receiver.spans();
    assert!(
        spans.iter().all(|s| s.trace_id == kept),
        "only the sampled trace, and no new root under the dropped one: {:#?}",
        spans
            .iter()
            .map(|s| (&s.name, &s.trace_id))
            .collect::<Vec<_>>()
    );
    for name in [
        "POST /api/v1/memory",
        "upsert_memory",
        "chat gpt-4o-mini",
        "write_batch",
    ] {
        one(&spans, name, |s| s.name == name);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_postgresql_with_a_cache_store_calls_and_cache_commands_have_their_spans() {
    let receiver = Receiver::start().await;
    let fake = FakeOpenAi::start(64).await;
    let db = common::postgres::TestDatabase::create().await;
    let redis = common::redis::shared_url();
    let prefix = common::redis::unique_prefix();
    let mut env = env(&receiver, &fake);
    env.extend([
        ("ENGRAM_DATABASE_URL", db.app_url.as_str()),
        ("ENGRAM_DATABASE_OWNER_URL", db.owner_url.as_str()),
        ("ENGRAM_CACHE_URL", redis.as_str()),
        ("ENGRAM_CACHE_PREFIX", prefix.as_str()),
    ]);
    let mut server = Server::start_process_with(&env).await;
    remember_then_recall(&mut server).await;
    let spans = receiver.spans();
    let search = one(&spans, "recall", |s| s.name == "search_memory");
    let under = |s: &&Span| s.parent_span_id == search.span_id;
    let store: Vec<&Span> = spans
        .iter()
        .filter(under)
        .filter(|s| s.str("db.system.name") == Some("postgresql"))
        .collect();
    assert!(
        store
            .iter()
            .any(|s| s.str("db.operation.name") == Some("candidates")),
        "{store:#?}"
    );
    let cache: Vec<&Span> = spans
        .iter()
        .filter(under)
        .filter(|s| s.str("db.system.name") == Some("redis"))
        .collect();
    for command in ["HGET", "GET"] {
        assert!(
            cache.iter().any(|s| s.name == command
                && s.str("db.operation.name") == Some(command)
                && s.kind == SpanKind::Client as i32),
            "a {command} span under the recall: {cache:#?}"
        );
    }
    nothing_of(&spans, &[USER, "Porto", "moved", ASKED]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_stdio_a_tool_call_continues_the_trace_in_params_meta() {
    let receiver = Receiver::start().await;
    let fake = FakeOpenAi::start(64).await;
    let mut engram = RawStdio::start(
        "warn",
        &env(&receiver, &fake),
        std::process::Stdio::inherit(),
    );
    let init = engram
        .exchange(
            &json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "protocolVersion": "2025-06-18", "capabilities": {},
            "clientInfo": {"name": "otel-test", "version": "1"}}})
            .to_string(),
        )
        .await;
    assert_eq!(init["result"]["serverInfo"]["name"], "engram", "{init}");
    engram
        .send(r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#)
        .await;
    let (trace, parent) = ("5b8efff798038103d269b633813fc60c", "eee19b7ec3c1b174");
    let called = engram
        .exchange(
            &json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {
            "name": "remember",
            "arguments": {"text": SAID, "user_id": USER},
            "_meta": {"traceparent": traceparent(trace, parent)}}})
            .to_string(),
        )
        .await;
    assert_ne!(called["result"]["isError"], true, "{called}");
    let recalled = engram
        .exchange(
            &json!({"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": {
            "name": "recall", "arguments": {"query": ASKED, "user_id": USER}}})
            .to_string(),
        )
        .await;
    assert_ne!(recalled["result"]["isError"], true, "{recalled}");

    // The client goes away: engram exports what is queued, then exits.
    drop(engram.stdin);
    let status = tokio::time::timeout(Duration::from_secs(30), engram.child.wait())
        .await
        .expect("engram exited")
        .unwrap();
    assert!(status.success(), "{status:?}");
    let spans = receiver.spans();

    let call = one(&spans, "tools/call remember", |s| {
        s.name == "tools/call remember"
    });
    assert_eq!(
        (call.trace_id.as_str(), call.parent_span_id.as_str()),
        (trace, parent)
    );
    assert_eq!(call.kind, SpanKind::Server as i32);
    assert_eq!(call.str("mcp.method.name"), Some("tools/call"));
    assert_eq!(call.str("gen_ai.operation.name"), Some("execute_tool"));
    assert_eq!(call.str("gen_ai.tool.name"), Some("remember"));
    assert_eq!(call.str("network.transport"), Some("pipe"));
    assert_eq!(call.str("jsonrpc.request.id"), Some("2"));
    assert!(!call.error);
    let upsert = one(&spans, "upsert_memory", |s| s.name == "upsert_memory");
    assert_eq!(upsert.parent_span_id, call.span_id);
    assert_eq!(upsert.trace_id, trace);
    let chat = one(&spans, "chat", |s| s.name == "chat gpt-4o-mini");
    assert_eq!(chat.parent_span_id, upsert.span_id);

    // A call without _meta starts its own trace.
    let recall = one(&spans, "tools/call recall", |s| {
        s.name == "tools/call recall"
    });
    assert_ne!(recall.trace_id, trace);
    assert_eq!(recall.parent_span_id, "");
    let search = one(&spans, "search_memory", |s| s.name == "search_memory");
    assert_eq!(search.parent_span_id, recall.span_id);

    nothing_of(&spans, &[USER, "Porto", "moved", ASKED]);
}

#[test]
fn a_protocol_this_build_does_not_speak_is_refused_at_start() {
    for (variable, value) in [
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
        ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "http/json"),
    ] {
        let out = common::run_engram(
            &["migrate"],
            &[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318"),
                (variable, value),
                (
                    "ENGRAM_DATABASE_URL",
                    "sqlite:///nonexistent/never-opened.db",
                ),
            ],
        );
        assert!(!out.status.success());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains(&format!("{variable}={value}")) && stderr.contains("http/protobuf"),
            "{stderr}"
        );
    }
}
