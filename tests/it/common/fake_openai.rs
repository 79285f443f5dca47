//! A fake OpenAI-compatible server the tests start on 127.0.0.1:0: real HTTP
//! and JSON (axum), scripted replies, every request recorded.
//!
//! `/v1/embeddings` answers with engram's hash embedding of each input (so
//! similar texts get similar vectors), in base64 when asked as OpenAI does,
//! unless a scripted reply is queued.
//! `/v1/chat/completions` answers with the scripted content, else with one
//! fact per `[user] ...` line of the transcript it was sent (its `(date) `
//! mark dropped: extraction), or
//! ADD for every new fact (reconciliation), or, for a chat turn, an echo of
//! the message and of the memories its system prompt lists.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use base64::Engine;
use engram::embed::{HashEmbedder, to_le_bytes};
use serde_json::{Value, json};

/// One scripted answer, used once, in order.
#[derive(Debug, Clone)]
pub enum Reply {
    /// This status with an OpenAI-style error body, and `Retry-After` if given.
    Error {
        status: u16,
        code: &'static str,
        retry_after: Option<u64>,
    },
    /// Wait this long before answering normally.
    Delay(Duration),
    /// Vectors of this many dimensions, whatever was asked.
    WrongDims(usize),
    /// Floats even if base64 was asked for (a server that ignores `encoding_format`).
    FloatsOnly,
    /// 400 if the request asks for base64 (a server that validates
    /// `encoding_format` and knows only floats); otherwise answered as usual.
    NoBase64,
    /// Embeddings: this text as every embedding's base64.
    Base64Text(&'static str),
    /// Chat: this assistant message content, verbatim.
    Content(String),
    /// Chat: 400 if the request asks for `json_schema` (a server without
    /// structured outputs); otherwise answered as usual.
    NoJsonSchema,
}

#[derive(Debug, Clone)]
pub struct Recorded {
    pub path: String,
    pub authorization: Option<String>,
    pub body: Value,
}

#[derive(Default)]
struct Inner {
    script: VecDeque<Reply>,
    seen: Vec<Recorded>,
}

#[derive(Clone)]
pub struct FakeOpenAi {
    pub base_url: String,
    /// Dimensions of vectors when the request does not name them.
    dims: usize,
    inner: Arc<Mutex<Inner>>,
    _server: Arc<tokio::task::JoinHandle<()>>,
}

impl FakeOpenAi {
    pub async fn start(dims: usize) -> Self {
        let inner = Arc::new(Mutex::new(Inner::default()));
        let state = (inner.clone(), dims);
        let app = Router::new()
            .route("/v1/embeddings", post(embeddings))
            .route("/v1/chat/completions", post(chat))
            .with_state(state);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Self {
            base_url: format!("http://{addr}/v1"),
            dims,
            inner,
            _server: Arc::new(server),
        }
    }

    pub fn dims(&self) -> usize {
        self.dims
    }

    pub fn then(&self, reply: Reply) -> &Self {
        self.inner.lock().unwrap().script.push_back(reply);
        self
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.inner.lock().unwrap().seen.clone()
    }

    /// The requests to one path, e.g. `/v1/chat/completions`.
    pub fn requests_to(&self, path: &str) -> Vec<Recorded> {
        self.requests()
            .into_iter()
            .filter(|r| r.path == path)
            .collect()
    }
}

type AppState = (Arc<Mutex<Inner>>, usize);

/// Records the request and takes the next scripted reply, if any.
fn record(inner: &Mutex<Inner>, path: &str, headers: &HeaderMap, body: &Value) -> Option<Reply> {
    let mut inner = inner.lock().unwrap();
    inner.seen.push(Recorded {
        path: path.into(),
        authorization: headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned),
        body: body.clone(),
    });
    inner.script.pop_front()
}

fn error(status: u16, code: &str, message: &str, retry_after: Option<u64>) -> Response {
    let mut response = (
        StatusCode::from_u16(status).unwrap(),
        Json(json!({"error": {"message": message, "type": code, "param": null, "code": code}})),
    )
        .into_response();
    if let Some(secs) = retry_after {
        response
            .headers_mut()
            .insert("retry-after", secs.to_string().parse().unwrap());
    }
    response
}

async fn chat(
    State((inner, _)): State<AppState>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    let reply = record(&inner, "/v1/chat/completions", &headers, &body);
    let content = match reply {
        Some(Reply::Error {
            status,
            code,
            retry_after,
        }) => return error(status, code, &format!("scripted {status}"), retry_after),
        Some(Reply::Delay(d)) => {
            tokio::time::sleep(d).await;
            None
        }
        Some(Reply::Content(c)) => Some(c),
        Some(Reply::NoJsonSchema) if body["response_format"]["type"] == "json_schema" => {
            return error(
                400,
                "invalid_request_error",
                "response_format json_schema is not supported by this server",
                None,
            );
        }
        _ => None,
    };
    let content = content.unwrap_or_else(|| {
        let transcript = body["messages"]
            .as_array()
            .and_then(|m| m.last())
            .and_then(|m| m["content"].as_str())
            .unwrap_or_default();
        // Reconciliation: every new fact is an ADD.
        if let Some((_, new)) = transcript.split_once("New facts:\n") {
            let decisions: Vec<Value> = new
                .lines()
                .enumerate()
                .map(|(i, line)| {
                    let text = line.split_once("] ").map_or(line, |(_, t)| t);
                    json!({"fact": i, "event": "ADD", "id": null, "text": text})
                })
                .collect();
            return json!({ "decisions": decisions }).to_string();
        }
        // A chat turn (not an extraction transcript): echo the message and
        // the memories the system prompt lists.
        if !transcript.starts_with("Today is ") {
            let system = body["messages"][0]["content"].as_str().unwrap_or_default();
            let remembered: Vec<&str> = system
                .lines()
                .filter_map(|l| l.strip_prefix("- "))
                .collect();
            return format!(
                "You said: {transcript}. I remember: {}",
                if remembered.is_empty() {
                    "nothing".to_owned()
                } else {
                    remembered.join("; ")
                }
            );
        }
        // Extraction: one fact per user line of the transcript.
        let facts: Vec<Value> = transcript
            .lines()
            .filter_map(|l| l.strip_prefix("[user] "))
            .map(undated)
            .map(|t| json!({"text": t, "categories": ["preferences"]}))
            .collect();
        json!({ "facts": facts }).to_string()
    });
    Json(json!({
        "id": "chatcmpl-fake",
        "object": "chat.completion",
        "created": 1_700_000_000,
        "model": body["model"],
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": content, "refusal": null},
            "finish_reason": "stop"
        }],
        "usage": {"prompt_tokens": 120, "completion_tokens": 30, "total_tokens": 150}
    }))
    .into_response()
}

/// A transcript line without its `(date) ` mark, if it has one.
fn undated(line: &str) -> &str {
    match line
        .strip_prefix('(')
        .and_then(|rest| rest.split_once(") "))
    {
        Some((date, text)) if date.starts_with(|c: char| c.is_ascii_digit()) => text,
        _ => line,
    }
}

async fn embeddings(
    State((inner, dims)): State<AppState>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    let reply = record(&inner, "/v1/embeddings", &headers, &body);
    let mut dims = body["dimensions"].as_u64().map_or(dims, |d| d as usize);
    let mut base64 = body["encoding_format"] == "base64";
    let mut verbatim = None;
    match reply {
        Some(Reply::Error {
            status,
            code,
            retry_after,
        }) => return error(status, code, &format!("scripted {status}"), retry_after),
        Some(Reply::Delay(d)) => tokio::time::sleep(d).await,
        Some(Reply::WrongDims(d)) => dims = d,
        Some(Reply::FloatsOnly) => base64 = false,
        Some(Reply::NoBase64) if base64 => {
            return error(
                400,
                "invalid_request_error",
                "encoding_format: only 'float' is supported",
                None,
            );
        }
        Some(Reply::Base64Text(text)) => verbatim = Some(text),
        Some(Reply::Content(_) | Reply::NoJsonSchema | Reply::NoBase64) | None => {}
    }
    let embedder = HashEmbedder::new(dims);
    let inputs: Vec<String> = match &body["input"] {
        Value::String(s) => vec![s.clone()],
        Value::Array(items) => items
            .iter()
            .map(|v| v.as_str().unwrap_or_default().to_owned())
            .collect(),
        _ => return (StatusCode::BAD_REQUEST, "input must be text").into_response(),
    };
    let data: Vec<Value> = inputs
        .iter()
        .enumerate()
        // Unnormalised on purpose (x3): the client must normalise.
        .map(|(i, text)| {
            let v: Vec<f32> = embedder.embed(text).iter().map(|x| x * 3.0).collect();
            let embedding = match verbatim {
                Some(text) => json!(text),
                None if base64 => {
                    json!(base64::engine::general_purpose::STANDARD.encode(to_le_bytes(&v)))
                }
                None => json!(v),
            };
            json!({"object": "embedding", "index": i, "embedding": embedding})
        })
        .collect();
    let tokens: usize = inputs.iter().map(|t| t.split_whitespace().count()).sum();
    Json(json!({
        "object": "list",
        "data": data,
        "model": body["model"],
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens}
    }))
    .into_response()
}
