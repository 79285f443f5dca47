//! `/metrics` after a scripted workload against the real binary: every
//! metric engram names is there (exactly those the dashboard and the alert
//! rules are checked against, `deploy::ENGRAM_METRICS`), with the counts the
//! workload implies, as Prometheus exposition text, and nothing in it names
//! a user, a key or a memory.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{Value, json};

use crate::common::fake_openai::FakeOpenAi;
use crate::common::http::{Server, stateless};
use crate::common::postgres::TestDatabase;
use crate::common::redis::{shared_url, unique_prefix};
use crate::common::{connect_to, ok, run_engram};
use crate::deploy::{ENGRAM_METRICS, Metric};

/// A page of exposition text: each sample by its name and sorted labels.
struct Page {
    text: String,
    types: BTreeMap<String, String>,
    samples: BTreeMap<(String, Vec<(String, String)>), f64>,
}

impl Page {
    /// Parses the text format, failing on any line it does not follow.
    fn parse(text: String) -> Self {
        let mut types = BTreeMap::new();
        let mut samples = BTreeMap::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').expect("a TYPE line names a kind");
                assert!(["counter", "gauge", "histogram"].contains(&kind), "{line}");
                types.insert(name.to_owned(), kind.to_owned());
                continue;
            }
            if line.starts_with("# HELP ") {
                continue;
            }
            assert!(!line.starts_with('#') && !line.is_empty(), "{line:?}");
            let (series, value) = line.rsplit_once(' ').expect("a sample has a value");
            let value: f64 = match value {
                "+Inf" => f64::INFINITY,
                v => v.parse().unwrap_or_else(|_| panic!("not a number: {line}")),
            };
            let (name, labels) = match series.split_once('{') {
                None => (series.to_owned(), Vec::new()),
                Some((name, rest)) => {
                    let body = rest.strip_suffix('}').expect("labels end with }");
                    let mut labels: Vec<(String, String)> = body
                        .split("\",")
                        .map(|pair| {
                            let (k, v) = pair.split_once("=\"").expect("label=\"value\"");
                            (k.to_owned(), v.trim_end_matches('"').to_owned())
                        })
                        .collect();
                    labels.sort();
                    (name.to_owned(), labels)
                }
            };
            assert!(
                name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
                "{name}"
            );
            samples.insert((name, labels), value);
        }
        Self {
            text,
            types,
            samples,
        }
    }

    /// The sample `name` with exactly these labels (0 when absent).
    fn get(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let mut labels: Vec<(String, String)> = labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        labels.sort();
        self.samples
            .get(&(name.to_owned(), labels))
            .copied()
            .unwrap_or(0.0)
    }
}

async fn scrape(base: &str) -> Page {
    // A scraper comes by the pod's address, which no allowed host names.
    let response = reqwest::Client::new()
        .get(format!("{base}/metrics"))
        .header("host", "10.9.9.9:9090")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let kind = response.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(kind.starts_with("text/plain; version=0.0.4"), "{kind}");
    Page::parse(response.text().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_a_scripted_workload_and_name_no_user() {
    let db = TestDatabase::create().await;
    let fake = FakeOpenAi::start(64).await;
    let prefix = unique_prefix();
    let cache = shared_url();
    let env = [
        ("ENGRAM_DATABASE_URL", db.app_url.as_str()),
        ("ENGRAM_DATABASE_OWNER_URL", db.owner_url.as_str()),
        ("ENGRAM_AUTH", "keys"),
        ("ENGRAM_CACHE_URL", cache.as_str()),
        ("ENGRAM_CACHE_PREFIX", prefix.as_str()),
        ("ENGRAM_EXTRACTOR", "llm"),
        ("ENGRAM_LLM_MODEL", "gpt-metrics"),
        ("ENGRAM_LLM_MAX_RETRIES", "0"),
        ("OPENAI_BASE_URL", fake.base_url.as_str()),
        ("OPENAI_API_KEY", "test-key"),
        ("ENGRAM_REST_USER_RATE_LIMIT", "5"),
        ("ENGRAM_METRICS_REFRESH_SECS", "1"),
    ];
    let key = run_engram(&["keys", "create", "--admin"], &env);
    assert!(key.status.success(), "{key:?}");
    let key = String::from_utf8_lossy(&key.stdout).trim().to_owned();
    let engram = Server::start_process_with(&env).await;
    let base = engram.base.clone();
    let http = reqwest::Client::new();
    let rest = |path: &str, body: Value, key: &str| {
        http.post(format!("{base}/api/v1/memory{path}"))
            .bearer_auth(key)
            .json(&body)
            .send()
    };

    for text in [
        "I keep bees on my roof in Porto",
        "I am allergic to penicillin",
    ] {
        let r = rest(
            "",
            json!({"user_id": "alice-7f3a", "messages": [{"role": "user", "content": text}]}),
            &key,
        )
        .await
        .unwrap();
        assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    }
    for _ in 0..2 {
        let r = rest(
            "/search",
            json!({"user_id": "alice-7f3a", "query": "bees"}),
            &key,
        )
        .await
        .unwrap();
        assert_eq!(r.status(), 200);
    }
    let bad = rest(
        "/search",
        json!({"user_id": "alice-7f3a", "query": ""}),
        &key,
    )
    .await
    .unwrap();
    assert_eq!(bad.status(), 400);
    let stranger = rest(
        "/search",
        json!({"user_id": "alice-7f3a", "query": "bees"}),
        "engram_not-a-key",
    )
    .await
    .unwrap();
    assert_eq!(stranger.status(), 401);
    // Bob's recalls until his per-user limit refuses some.
    let (mut served, mut refused) = (0, 0);
    for _ in 0..12 {
        match rest(
            "/search",
            json!({"user_id": "bob-91c2", "query": "x"}),
            &key,
        )
        .await
        .unwrap()
        .status()
        .as_u16()
        {
            200 => served += 1,
            429 => refused += 1,
            other => panic!("status {other}"),
        }
    }
    assert!(
        refused > 0 && served > 0,
        "{served} served, {refused} refused"
    );
    // One recall over MCP (stateless Streamable HTTP).
    let mcp = stateless(
        &http,
        &base,
        Some(&key),
        json!(1),
        "tools/call",
        json!({"name": "recall", "arguments": {"user_id": "alice-7f3a", "query": "roof"}}),
    )
    .send()
    .await
    .unwrap();
    assert_eq!(mcp.status(), 200, "{}", mcp.text().await.unwrap());

    // The gauges are refreshed every second.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let page = scrape(&base).await;
    // The page and the list the dashboard and alerts are checked against
    // (deploy.rs) name the same families, of the same types and labels.
    let listed: BTreeMap<&str, &Metric> = ENGRAM_METRICS.iter().map(|m| (m.name, m)).collect();
    let shown: Vec<&str> = page.types.keys().map(String::as_str).collect();
    assert_eq!(
        shown,
        listed.keys().copied().collect::<Vec<_>>(),
        "{}",
        page.text
    );
    for (name, labels) in page.samples.keys() {
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s).filter(|f| listed.contains_key(f)))
            .unwrap_or(name);
        let metric = listed[family];
        assert_eq!(
            page.types[family],
            format!("{:?}", metric.kind).to_lowercase(),
            "{family}"
        );
        for (label, _) in labels {
            assert!(
                metric.labels.contains(&label.as_str()) || label == "le",
                "{name} has label {label}, not in {:?}",
                metric.labels
            );
        }
    }
    let chats = fake.requests_to("/v1/chat/completions").len() as f64;
    let rest_op = |op: &'static str| [("transport", "rest"), ("operation", op)];
    let expect = [
        (
            "engram_build_info",
            vec![
                ("version", env!("CARGO_PKG_VERSION")),
                ("store", "postgres"),
                ("embedder", "hash"),
                ("extractor", "llm"),
            ],
            1.0,
        ),
        ("engram_requests_total", rest_op("remember").to_vec(), 2.0),
        (
            "engram_requests_total",
            rest_op("recall").to_vec(),
            3.0 + f64::from(served),
        ),
        (
            "engram_requests_total",
            vec![("transport", "mcp"), ("operation", "recall")],
            1.0,
        ),
        (
            "engram_request_duration_seconds_count",
            rest_op("remember").to_vec(),
            2.0,
        ),
        (
            "engram_request_duration_seconds_bucket",
            vec![
                ("transport", "rest"),
                ("operation", "remember"),
                ("le", "+Inf"),
            ],
            2.0,
        ),
        (
            "engram_request_errors_total",
            vec![
                ("transport", "rest"),
                ("operation", "recall"),
                ("code", "invalid_input"),
            ],
            1.0,
        ),
        (
            "engram_request_errors_total",
            vec![
                ("transport", "rest"),
                ("operation", "other"),
                ("code", "unauthorized"),
            ],
            1.0,
        ),
        (
            "engram_request_errors_total",
            vec![
                ("transport", "rest"),
                ("operation", "other"),
                ("code", "rate_limited"),
            ],
            f64::from(refused),
        ),
        (
            "engram_rate_limited_total",
            vec![("transport", "rest"), ("scope", "user")],
            f64::from(refused),
        ),
        ("engram_remember_events_total", vec![("event", "add")], 2.0),
        ("engram_extraction_duration_seconds_count", vec![], 2.0),
        (
            "engram_llm_requests_total",
            vec![("model", "gpt-metrics"), ("outcome", "ok")],
            chats,
        ),
        (
            "engram_llm_tokens_total",
            vec![("model", "gpt-metrics"), ("direction", "input")],
            120.0 * chats,
        ),
        (
            "engram_llm_tokens_total",
            vec![("model", "gpt-metrics"), ("direction", "output")],
            30.0 * chats,
        ),
        ("engram_token_budget_exceeded_total", vec![], 0.0),
        ("engram_cache_up", vec![], 1.0),
        ("engram_memories", vec![], 2.0),
        ("engram_pending_extractions", vec![], 0.0),
        ("engram_database_up", vec![], 1.0),
        ("engram_db_pool_max_connections", vec![], 16.0),
        ("engram_audit_dropped_total", vec![], 0.0),
    ];
    for (name, labels, value) in &expect {
        assert_eq!(
            page.get(name, labels),
            *value,
            "{name}{labels:?}\n{}",
            page.text
        );
    }
    assert!(chats >= 2.0, "the model was called for each remember");
    // The second identical recall came from the cache.
    assert!(page.get("engram_cache_requests_total", &[("result", "hit")]) >= 1.0);
    assert!(page.get("engram_embedding_duration_seconds_count", &[]) >= 2.0);
    assert!(page.get("engram_db_pool_acquire_duration_seconds_count", &[]) >= 1.0);
    let in_use = page.get("engram_db_pool_connections", &[("state", "in_use")]);
    let idle = page.get("engram_db_pool_connections", &[("state", "idle")]);
    assert!(
        in_use + idle >= 1.0 && in_use + idle <= 16.0,
        "{in_use} + {idle}"
    );

    // Nothing names a user, a key or a memory.
    for secret in ["alice", "bob", key.as_str(), "bees", "Porto", "penicillin"] {
        assert!(!page.text.contains(secret), "{secret} in\n{}", page.text);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stdio_deployment_is_scraped_on_metrics_bind() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("engram.db").display());
    // A free port: bind one, note it, let it go.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let bind = format!("127.0.0.1:{port}");
    let client = connect_to(&url, &[("ENGRAM_METRICS_BIND", bind.as_str())]).await;
    ok(
        &client,
        "remember",
        json!({"text": "Keeps a sourdough starter"}),
    )
    .await;
    ok(&client, "recall", json!({"query": "sourdough"})).await;
    let page = scrape(&format!("http://{bind}")).await;
    client.cancel().await.unwrap();
    for op in ["remember", "recall"] {
        assert_eq!(
            page.get(
                "engram_requests_total",
                &[("transport", "stdio"), ("operation", op)]
            ),
            1.0,
            "{}",
            page.text
        );
    }
    assert_eq!(
        page.get(
            "engram_build_info",
            &[
                ("version", env!("CARGO_PKG_VERSION")),
                ("store", "sqlite"),
                ("embedder", "hash"),
                ("extractor", "verbatim"),
            ]
        ),
        1.0
    );
    // No pool, no cache: their families are left out rather than zero.
    assert!(!page.types.contains_key("engram_db_pool_connections"));
    assert!(!page.types.contains_key("engram_cache_up"));
}
