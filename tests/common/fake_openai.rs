//! A fake OpenAI-compatible server the tests start on 127.0.0.1:0: real HTTP
//! and JSON (axum), scripted replies, every request recorded.
//!
//! `/v1/embeddings` answers with engram's hash embedding of each input (so
//! similar texts get similar vectors) unless a scripted reply is queued.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use engram::embed::HashEmbedder;
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
}

type AppState = (Arc<Mutex<Inner>>, usize);

async fn embeddings(
    State((inner, dims)): State<AppState>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    let reply = {
        let mut inner = inner.lock().unwrap();
        inner.seen.push(Recorded {
            path: "/v1/embeddings".into(),
            authorization: headers
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned),
            body: body.clone(),
        });
        inner.script.pop_front()
    };
    let mut dims = body["dimensions"].as_u64().map_or(dims, |d| d as usize);
    match reply {
        Some(Reply::Error {
            status,
            code,
            retry_after,
        }) => {
            let mut response = (
                StatusCode::from_u16(status).unwrap(),
                Json(json!({"error": {"message": format!("scripted {status}"),
                                      "type": code, "param": null, "code": code}})),
            )
                .into_response();
            if let Some(secs) = retry_after {
                response
                    .headers_mut()
                    .insert("retry-after", secs.to_string().parse().unwrap());
            }
            return response;
        }
        Some(Reply::Delay(d)) => tokio::time::sleep(d).await,
        Some(Reply::WrongDims(d)) => dims = d,
        None => {}
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
            json!({"object": "embedding", "index": i, "embedding": v})
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
