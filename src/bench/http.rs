//! `engram bench --http N`: recall over the REST API, as remote clients
//! make it. The real app (auth gate, per-key limits switched off, JSON,
//! problem mapping) listens on a loopback port in this process; each client
//! is its own HTTP connection pool with its own user's key and sends
//! `POST /api/v1/memory/search` one request after another. Printed per
//! level of concurrency: throughput, p50/p95/p99 latency as the client sees
//! it, and the same recalls made in-process for comparison.
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
    println!(
        "http: {USERS} users x {memories} memories loaded in {:.1}s; {requests} recalls \
         (POST /api/v1/memory/search, limit 10) per level, hash embedder {dims} dims",
        started.elapsed().as_secs_f64()
    );

    let stop = CancellationToken::new();
    let settings = crate::http::Settings {
        auth: AuthMode::Keys,
        allowed_hosts: vec!["127.0.0.1".into()],
        allowed_origins: Vec::new(),
        rest_rate_limit: 0,
        mcp_rate_limit: 0,
        request_timeout: Duration::from_secs(60),
        mcp_sessions_per_key: crate::config::DEFAULT_MCP_SESSIONS_PER_KEY,
        ready_timeout: Duration::from_secs(1),
    };
    let app = crate::http::app(service.clone(), settings, stop.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/api/v1/memory/search", listener.local_addr()?);
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
            let url = url.clone();
            tokio::spawn(client(url, key, per_client, 1000 + c as u64))
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
    url: String,
    key: String,
    count: usize,
    seed: u64,
) -> Result<Vec<Duration>, String> {
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
