//! `engram bench --http N`: recall over HTTP, as remote clients make it.
//! The real app (auth gate, per-key limits switched off, JSON, problem
//! mapping) listens on a loopback port in this process; each client is its
//! own HTTP connection pool with its own user's key and recalls one
//! request after another, over the door `--transport` names: the REST API
//! (`POST /api/v1/memory/search`), MCP over Streamable HTTP (`/mcp`, the
//! `recall` tool) or legacy SSE (`/sse`: posted to `/messages`, answered on
//! the stream). Printed per level of concurrency: throughput, p50/p95/p99
//! latency as the client sees it (from sending the request to reading its
//! answer), and the same recalls made in-process for comparison.
//!
//! Clients and server share the machine's cores, so the numbers are a
//! floor for what a separate server would do.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::pipeline::BenchError;
use super::text::Generator;
use super::{ms, percentile};
use crate::auth;
use crate::auth::Principal;
use crate::config::AuthMode;
use crate::embed::HashEmbedder;
use crate::extract::VerbatimExtractor;
use crate::params::{RecallParams, RememberParams};
use crate::service::MemoryService;
use crate::store::Store;

/// Which door the clients use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Door {
    /// `POST /api/v1/memory/search`.
    Rest,
    /// MCP over Streamable HTTP: `tools/call recall` on `/mcp`.
    Mcp,
    /// Legacy MCP over SSE: posted to `/messages`, answered on `/sse`.
    Sse,
}

/// Users the memories are spread over; client `c` acts for user `c % USERS`.
const USERS: usize = 32;

/// Fills `store` with `memories` per user for [`USERS`] users, serves it,
/// and runs `requests` recalls at each level of `clients`.
pub async fn run(
    store: Arc<dyn Store>,
    dims: usize,
    memories: usize,
    requests: usize,
    clients: &[usize],
    door: Door,
) -> Result<(), BenchError> {
    let service = Arc::new(MemoryService::new(
        store.clone(),
        Arc::new(HashEmbedder::new(dims)),
        Arc::new(VerbatimExtractor),
        super::settings(),
    ));
    let started = Instant::now();
    let mut texts = Generator::new(11);
    let mut keys = Vec::with_capacity(USERS);
    for u in 0..USERS {
        let user = format!("http-user-{u:02}");
        for _ in 0..memories {
            let request = RememberParams {
                text: Some(texts.memory()),
                user_id: Some(user.clone()),
                infer: Some(false),
                ..RememberParams::default()
            };
            service.remember(&Principal::Operator, request).await?;
        }
        let (secret, stored) = auth::generate(Some(user.clone()), "bench".into());
        store.add_key(&stored).await?;
        keys.push((user, secret));
    }
    let how = match door {
        Door::Rest => "POST /api/v1/memory/search",
        Door::Mcp => "MCP tools/call recall on /mcp",
        Door::Sse => "MCP tools/call recall over legacy SSE",
    };
    println!(
        "http: {USERS} users x {memories} memories loaded in {:.1}s; {requests} recalls \
         ({how}, limit 10) per level, hash embedder {dims} dims",
        started.elapsed().as_secs_f64()
    );

    let stop = CancellationToken::new();
    let settings = crate::http::Settings {
        auth: AuthMode::Keys,
        allowed_hosts: vec!["127.0.0.1".into()],
        allowed_origins: Vec::new(),
        rest_rate_limit: 0,
        mcp_rate_limit: 0,
        rest_user_rate_limit: 0,
        mcp_user_rate_limit: 0,
        request_timeout: Duration::from_secs(60),
        mcp_sessions_per_key: crate::config::DEFAULT_MCP_SESSIONS_PER_KEY,
        ready_timeout: Duration::from_secs(1),
    };
    let app = crate::http::app(service.clone(), settings, stop.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    let server = tokio::spawn(crate::http::serve(listener, app, stop.clone()));

    // The same queries in-process: what HTTP adds is the difference.
    let mut queries = Generator::new(23);
    let mut local = Vec::with_capacity(requests.min(2000));
    for i in 0..requests.min(2000) {
        let request = RecallParams {
            query: queries.query(),
            user_id: Some(keys[i % USERS].0.clone()),
            limit: Some(10),
            ..RecallParams::default()
        };
        let t = Instant::now();
        service.recall(&Principal::Operator, request).await?;
        local.push(t.elapsed());
    }
    local.sort();
    println!(
        "  in-process recall (no HTTP): p50 {} p99 {}",
        ms(percentile(&local, 0.5)),
        ms(percentile(&local, 0.99))
    );
    println!("  clients  requests  throughput      p50      p95      p99");
    for &count in clients {
        let count = count.max(1);
        let per_client = requests.div_ceil(count);
        let t = Instant::now();
        let runs = (0..count).map(|c| {
            let key = keys[c % USERS].1.clone();
            let base = base.clone();
            tokio::spawn(async move {
                let seed = 1000 + c as u64;
                match door {
                    Door::Rest => client(base, key, per_client, seed).await,
                    Door::Mcp => mcp_client(base, key, per_client, seed).await,
                    Door::Sse => sse_client(base, key, per_client, seed).await,
                }
            })
        });
        let mut latencies = Vec::with_capacity(per_client * count);
        for run in futures::future::join_all(runs).await {
            latencies.extend(run??);
        }
        let wall = t.elapsed();
        latencies.sort();
        println!(
            "  {count:>7}  {:>8}  {:>7.0}/s  {:>7}  {:>7}  {:>7}",
            latencies.len(),
            latencies.len() as f64 / wall.as_secs_f64(),
            ms(percentile(&latencies, 0.5)),
            ms(percentile(&latencies, 0.95)),
            ms(percentile(&latencies, 0.99)),
        );
    }
    stop.cancel();
    server.await??;
    Ok(())
}

/// One client: `count` searches in a row on one keep-alive connection;
/// every answer must be 200.
async fn client(
    base: String,
    key: String,
    count: usize,
    seed: u64,
) -> Result<Vec<Duration>, String> {
    let url = format!("{base}/api/v1/memory/search");
    let http = reqwest::Client::new();
    let mut queries = Generator::new(seed);
    let mut latencies = Vec::with_capacity(count);
    for _ in 0..count {
        let body = serde_json::json!({"query": queries.query(), "limit": 10}).to_string();
        let t = Instant::now();
        let response = http
            .post(&url)
            .bearer_auth(&key)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .map_err(|e| format!("search failed: {e}"))?;
        let status = response.status();
        let answer = response
            .bytes()
            .await
            .map_err(|e| format!("reading the answer failed: {e}"))?;
        latencies.push(t.elapsed());
        if !status.is_success() {
            return Err(format!(
                "search answered {status}: {}",
                String::from_utf8_lossy(&answer)
            ));
        }
    }
    Ok(latencies)
}

/// A `tools/call recall` request with this id.
fn recall_call(id: usize, query: String) -> String {
    serde_json::json!({"jsonrpc": "2.0", "id": id, "method": "tools/call", "params": {
        "name": "recall", "arguments": {"query": query, "limit": 10}}})
    .to_string()
}

const INITIALIZE: &str = r#"{"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":"2024-11-05","capabilities":{},"clientInfo":{"name":"engram-bench","version":"1"}}}"#;
const INITIALIZED: &str = r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#;

/// One MCP client over Streamable HTTP: a session, then `count` recalls in
/// a row, each answer read to its end.
async fn mcp_client(
    base: String,
    key: String,
    count: usize,
    seed: u64,
) -> Result<Vec<Duration>, String> {
    let http = reqwest::Client::new();
    let url = format!("{base}/mcp");
    let send = |body: String, session: Option<&str>| {
        let mut request = http
            .post(&url)
            .bearer_auth(&key)
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream")
            .body(body);
        if let Some(session) = session {
            request = request.header("mcp-session-id", session);
        }
        request.send()
    };
    let opened = send(INITIALIZE.to_owned(), None)
        .await
        .map_err(|e| format!("initialize failed: {e}"))?;
    let session = opened
        .headers()
        .get("mcp-session-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .ok_or_else(|| format!("initialize answered {} without a session", opened.status()))?;
    opened.bytes().await.map_err(|e| e.to_string())?;
    send(INITIALIZED.to_owned(), Some(&session))
        .await
        .map_err(|e| format!("initialized failed: {e}"))?;
    let mut queries = Generator::new(seed);
    let mut latencies = Vec::with_capacity(count);
    for id in 1..=count {
        let body = recall_call(id, queries.query());
        let t = Instant::now();
        let response = send(body, Some(&session))
            .await
            .map_err(|e| format!("recall failed: {e}"))?;
        let status = response.status();
        let answer = response
            .text()
            .await
            .map_err(|e| format!("reading the answer failed: {e}"))?;
        latencies.push(t.elapsed());
        if !status.is_success() || !answer.contains("\"result\"") {
            return Err(format!("recall answered {status}: {answer}"));
        }
    }
    Ok(latencies)
}

/// The messages of a legacy SSE stream, as they arrive.
struct Events {
    stream: reqwest::Response,
    buffer: String,
}

impl Events {
    /// The data of the next event named `name`.
    async fn next(&mut self, name: &str) -> Result<String, String> {
        loop {
            while let Some(end) = self.buffer.find("\n\n") {
                let event: String = self.buffer.drain(..end + 2).collect();
                let mut kind = "message";
                let mut data = String::new();
                for line in event.lines() {
                    if let Some(k) = line.strip_prefix("event:") {
                        kind = k.trim();
                    } else if let Some(d) = line.strip_prefix("data:") {
                        data.push_str(d.strip_prefix(' ').unwrap_or(d));
                    }
                }
                if kind == name && !data.is_empty() {
                    return Ok(data);
                }
            }
            let chunk = self
                .stream
                .chunk()
                .await
                .map_err(|e| format!("the stream failed: {e}"))?
                .ok_or("the stream ended")?;
            self.buffer.push_str(&String::from_utf8_lossy(&chunk));
        }
    }

    /// The message answering `id`.
    async fn answer(&mut self, id: usize) -> Result<serde_json::Value, String> {
        loop {
            let data = self.next("message").await?;
            let message: serde_json::Value =
                serde_json::from_str(&data).map_err(|e| format!("{e}: {data}"))?;
            if message["id"] == id {
                return Ok(message);
            }
        }
    }
}

/// One legacy SSE client: a stream, then `count` recalls in a row, each
/// posted and waited for on the stream.
async fn sse_client(
    base: String,
    key: String,
    count: usize,
    seed: u64,
) -> Result<Vec<Duration>, String> {
    let http = reqwest::Client::new();
    let stream = http
        .get(format!("{base}/sse"))
        .bearer_auth(&key)
        .send()
        .await
        .map_err(|e| format!("opening the stream failed: {e}"))?;
    let mut events = Events {
        stream,
        buffer: String::new(),
    };
    let endpoint = format!("{base}{}", events.next("endpoint").await?);
    let post = |body: String| {
        http.post(&endpoint)
            .bearer_auth(&key)
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    let accepted = |r: reqwest::Response| {
        if r.status() == reqwest::StatusCode::ACCEPTED {
            Ok(())
        } else {
            Err(format!("a post answered {}", r.status()))
        }
    };
    accepted(
        post(INITIALIZE.to_owned())
            .await
            .map_err(|e| e.to_string())?,
    )?;
    events.answer(0).await?;
    accepted(
        post(INITIALIZED.to_owned())
            .await
            .map_err(|e| e.to_string())?,
    )?;
    let mut queries = Generator::new(seed);
    let mut latencies = Vec::with_capacity(count);
    for id in 1..=count {
        let body = recall_call(id, queries.query());
        let t = Instant::now();
        accepted(
            post(body)
                .await
                .map_err(|e| format!("recall failed: {e}"))?,
        )?;
        let answer = events.answer(id).await?;
        latencies.push(t.elapsed());
        if answer.get("result").is_none() {
            return Err(format!("recall answered {answer}"));
        }
    }
    Ok(latencies)
}
