//! The real binary serving HTTP (`serve --transport http`), driven by rmcp's
//! Streamable HTTP client and plain HTTP requests: the MCP round trip, the
//! health checks, the refusals of an unsafe start, and shutdown on SIGTERM.

use crate::common;

use std::process::Stdio;
use std::time::Duration;

use common::http::Server;
use common::{ENGRAM, ok, texts};
use rmcp::ServiceExt;
use rmcp::transport::StreamableHttpClientTransport;
use serde_json::{Value, json};
use tokio::process::Command;

async fn get(url: &str) -> (u16, String) {
    let response = reqwest::get(url).await.unwrap();
    let status = response.status().as_u16();
    (status, response.text().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streamable_http_carries_the_mcp_round_trip_and_health_checks() {
    let server = Server::start().await;
    assert_eq!(
        get(&format!("{}/healthz", server.base)).await,
        (200, "ok\n".into())
    );
    assert_eq!(
        get(&format!("{}/readyz", server.base)).await,
        (200, "ready\ndatabase: ok\ncache: none\n".into())
    );

    let transport = StreamableHttpClientTransport::from_uri(format!("{}/mcp", server.base));
    let client = ().serve(transport).await.expect("MCP handshake over HTTP");
    let tools = client.list_all_tools().await.unwrap();
    let mut names: Vec<&str> = tools.iter().map(|t| t.name.as_ref()).collect();
    names.sort();
    assert_eq!(names, ["forget", "recall", "remember", "user_context"]);

    let stored = ok(
        &client,
        "remember",
        json!({"text": "I prefer aisle seats", "user_id": "alice"}),
    )
    .await;
    assert_eq!(stored["results"][0]["event"], "ADD", "{stored}");
    let found = ok(
        &client,
        "recall",
        json!({"query": "aisle", "user_id": "alice"}),
    )
    .await;
    assert_eq!(texts(&found), ["I prefer aisle seats"]);
    let other = ok(
        &client,
        "recall",
        json!({"query": "aisle", "user_id": "bob"}),
    )
    .await;
    assert!(texts(&other).is_empty(), "{other}");
    client.cancel().await.unwrap();
}

/// `/mcp` answers what it cannot serve with JSON-RPC errors in JSON, as
/// stdio does, never rmcp's plain-text refusals.
#[tokio::test]
async fn malformed_messages_on_mcp_get_json_rpc_errors() {
    let server = Server::start().await;
    let post = |body: Vec<u8>| {
        server
            .http
            .post(format!("{}/mcp", server.base))
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream")
            .body(body)
            .send()
    };
    let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
    for (body, status, code, id) in [
        (b"{".to_vec(), 400, -32700, Value::Null),
        (vec![0xff, 0xfe, b'{', b'}'], 400, -32700, Value::Null),
        (deep.into_bytes(), 400, -32700, Value::Null),
        (
            br#"[{"jsonrpc":"2.0","id":1,"method":"ping"}]"#.to_vec(),
            400,
            -32600,
            Value::Null,
        ),
        (
            br#"{"id":3,"method":"ping"}"#.to_vec(),
            400,
            -32600,
            json!(3),
        ),
        (
            br#"{"jsonrpc":"2.0","id":{"a":1},"method":"ping"}"#.to_vec(),
            400,
            -32600,
            json!({"a": 1}),
        ),
        (
            br#"{"jsonrpc":"2.0","id":"x","method":"tools/call","params":{}}"#.to_vec(),
            200,
            -32602,
            json!("x"),
        ),
        (
            br#"{"jsonrpc":"2.0","id":4,"method":"tools/call","params":["recall"]}"#.to_vec(),
            200,
            -32602,
            json!(4),
        ),
    ] {
        let shown = String::from_utf8_lossy(&body)
            .chars()
            .take(60)
            .collect::<String>();
        let response = post(body).await.unwrap();
        assert_eq!(response.status().as_u16(), status, "{shown}");
        assert_eq!(
            response.headers()["content-type"],
            "application/json",
            "{shown}"
        );
        let answer: Value = response.json().await.unwrap();
        assert_eq!(answer["jsonrpc"], "2.0", "{shown}");
        assert_eq!(answer["error"]["code"], code, "{shown}: {answer}");
        assert_eq!(answer["id"], id, "{shown}: {answer}");
    }
}

/// `/mcp` takes no query parameters: any, or one that is not UTF-8 once
/// decoded, is refused with 400 and a JSON-RPC error (-32600) carrying the
/// request's id when it can be read, whatever the method.
#[tokio::test]
async fn query_strings_on_mcp_are_refused_in_json_rpc() {
    let server = Server::start().await;
    let send = |method: reqwest::Method, query: &str, body: &'static str| {
        server
            .http
            .request(method, format!("{}/mcp{query}", server.base))
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream")
            .body(body)
            .send()
    };
    let ping = r#"{"jsonrpc":"2.0","id":9,"method":"ping"}"#;
    for (method, query, body, id, named) in [
        (
            reqwest::Method::POST,
            "?colour=red",
            ping,
            json!(9),
            "`colour`",
        ),
        (
            reqwest::Method::POST,
            "?sessionId=abc",
            ping,
            json!(9),
            "`sessionId`",
        ),
        (reqwest::Method::POST, "?q=%FF", ping, json!(9), "UTF-8"),
        (reqwest::Method::POST, "?%FF=1", ping, json!(9), "UTF-8"),
        (
            reqwest::Method::POST,
            "?colour=red",
            "{",
            Value::Null,
            "`colour`",
        ),
        (
            reqwest::Method::GET,
            "?colour=red",
            "",
            Value::Null,
            "`colour`",
        ),
        (
            reqwest::Method::DELETE,
            "?colour=red",
            "",
            Value::Null,
            "`colour`",
        ),
    ] {
        let shown = format!("{method} /mcp{query} {body}");
        let response = send(method, query, body).await.unwrap();
        assert_eq!(response.status().as_u16(), 400, "{shown}");
        assert_eq!(
            response.headers()["content-type"],
            "application/json",
            "{shown}"
        );
        let answer: Value = response.json().await.unwrap();
        assert_eq!(answer["error"]["code"], -32600, "{shown}: {answer}");
        assert_eq!(answer["id"], id, "{shown}: {answer}");
        let message = answer["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains(named), "{shown}: {message}");
    }
    // An empty query is no parameter: the body is read as usual.
    let answer: Value = send(reqwest::Method::POST, "?", "{")
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(answer["error"]["code"], -32700, "{answer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_the_server_cleanly() {
    let mut server = Server::start_process().await;
    let child = server.child.as_mut().unwrap();
    let pid = child.id().unwrap();
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .expect("engram did not stop on SIGTERM")
        .unwrap();
    assert!(status.success(), "{status:?}");
}

/// Without API keys (`ENGRAM_AUTH=none`), only a loopback bind starts.
#[tokio::test]
async fn an_unsafe_start_is_refused_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}/engram.db", dir.path().display());
    let cases = [
        (
            vec![("ENGRAM_AUTH", "none")],
            "0.0.0.0:0",
            "not a loopback address",
        ),
        (
            vec![("ENGRAM_AUTH", "sometimes")],
            "127.0.0.1:0",
            "ENGRAM_AUTH",
        ),
    ];
    for (env, bind, expected) in cases {
        let mut cmd = Command::new(ENGRAM);
        cmd.args(["serve", "--transport", "http", "--bind", bind])
            .envs(common::HERMETIC)
            .env("ENGRAM_DATABASE_URL", &db)
            .env_remove("ENGRAM_AUTH")
            .stdin(Stdio::null());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let out = tokio::time::timeout(Duration::from_secs(30), cmd.output())
            .await
            .expect("engram did not exit")
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{bind}: {stderr}");
        assert!(stderr.contains(expected), "{bind}: {stderr}");
    }
    assert!(
        !dir.path().join("engram.db").exists(),
        "refused before opening the store"
    );
}

/// The legacy transport's sessions: a post reaches only an open session, and
/// a session ends with its event stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_sse_session_lives_as_long_as_its_stream() {
    let server = Server::start().await;
    let http = reqwest::Client::new();
    let post = |path: String, body: &'static str| {
        let http = http.clone();
        async move {
            http.post(path)
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    let initialize = r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2024-11-05","capabilities":{},"clientInfo":{"name":"t","version":"1"}}}"#;
    assert_eq!(
        post(
            format!("{}/messages?sessionId=nope", server.base),
            initialize
        )
        .await,
        404
    );

    let mut stream = http
        .get(format!("{}/sse", server.base))
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status().as_u16(), 200);
    let mut seen = String::new();
    let endpoint = common::http::sse_endpoint(&mut stream, &mut seen).await;
    assert!(seen.contains("event: endpoint"), "{seen}");
    let target = format!("{}{endpoint}", server.base);
    assert_eq!(post(target.clone(), "not json").await, 400);
    assert_eq!(post(target.clone(), initialize).await, 202);
    // The answer arrives on the stream.
    let answered = tokio::time::timeout(Duration::from_secs(10), async {
        while !seen.contains("\"protocolVersion\"") {
            let chunk = stream.chunk().await.unwrap().expect("stream ended");
            seen.push_str(&String::from_utf8_lossy(&chunk));
        }
    })
    .await;
    assert!(
        answered.is_ok(),
        "no initialize result on the stream: {seen}"
    );

    // The client goes away: its session is gone.
    drop(stream);
    let gone = tokio::time::timeout(Duration::from_secs(10), async {
        while post(target.clone(), initialize).await != 404 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert!(gone.is_ok(), "the session outlived its stream");
}

/// A page on another origin that rebinds its DNS name to 127.0.0.1 still
/// sends its own Host: refused on every route but the probes, before any
/// handler.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_for_other_hosts_are_refused() {
    let server = Server::start().await;
    let http = reqwest::Client::new();
    for path in [
        "/api/v1/openapi.json",
        "/sse",
        "/mcp",
        "/messages?sessionId=x",
    ] {
        let response = http
            .get(format!("{}{path}", server.base))
            .header("host", "evil.example:8765")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 403, "{path}");
        let body = response.text().await.unwrap();
        assert!(body.contains("ENGRAM_ALLOWED_HOSTS"), "{path}: {body}");
    }
    let port = server.base.rsplit(':').next().unwrap();
    let local = http
        .get(format!("{}/api/v1/openapi.json", server.base))
        .header("host", format!("localhost:{port}"))
        .send()
        .await
        .unwrap();
    assert_eq!(local.status().as_u16(), 200);
}

/// Readiness follows the database; the cache's state is shown but a cache
/// that is down does not make engram unready (it serves without it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_shows_the_cache_without_depending_on_it() {
    let redis = common::redis::shared_url();
    let up = Server::start_with(&[("ENGRAM_CACHE_URL", redis.as_str())]).await;
    let (status, body) = get(&format!("{}/readyz", up.base)).await;
    assert_eq!(
        (status, body.as_str()),
        (200, "ready\ndatabase: ok\ncache: ok\n")
    );

    let down = Server::start_with(&[("ENGRAM_CACHE_URL", "redis://127.0.0.1:1")]).await;
    let (status, body) = get(&format!("{}/readyz", down.base)).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("cache: down"), "{body}");
}

/// The database goes away mid-load, refused (connections cut, new ones
/// closed) or stalled (connections cut, new ones held open and never
/// answered, as a partition looks): `/readyz` says 503 within a second and a
/// half, every request answers 503 `unavailable` within the request bound
/// (`database_timeout_ms`, default 3 s, plus scheduling slack), nothing
/// hangs; when the database is back, engram recovers on its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_its_database_engram_is_unready_at_once_and_recovers() {
    use common::proxy::{Mode, Proxy};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::Instant;

    const READY_BOUND: Duration = Duration::from_millis(1500);
    let request_bound = Duration::from_millis(engram::config::DEFAULT_DATABASE_TIMEOUT_MS)
        + Duration::from_millis(1000);
    let db = common::postgres::TestDatabase::create().await;
    let authority = db.url.split('@').nth(1).unwrap().split('/').next().unwrap();
    let proxy = Proxy::start(authority.to_owned()).await;
    let through = db
        .url
        .replace(authority, &format!("127.0.0.1:{}", proxy.port));
    let server = Server::with_keys(Some(&through), &common::http::NO_LIMITS).await;
    let key = server.create_key(&["--user", "alice"]);
    let search = |http: reqwest::Client, base: String, key: String| async move {
        let response = http
            .post(format!("{base}/api/v1/memory/search"))
            .bearer_auth(key)
            .json(&json!({"query": "bees"}))
            .send()
            .await
            .unwrap();
        common::http::Reply::read(response).await
    };
    let readyz = || async {
        let started = Instant::now();
        let (status, body) = get(&format!("{}/readyz", server.base)).await;
        (status, body, started.elapsed())
    };
    assert_eq!(
        search(server.http.clone(), server.base.clone(), key.clone())
            .await
            .status,
        200
    );

    for mode in [Mode::Refuse, Mode::Stall] {
        // Load: four clients searching in a loop, each answer timed.
        let stop = Arc::new(AtomicBool::new(false));
        let clients: Vec<_> = (0..4)
            .map(|_| {
                let (http, base, key, stop) = (
                    server.http.clone(),
                    server.base.clone(),
                    key.clone(),
                    stop.clone(),
                );
                tokio::spawn(async move {
                    let mut answers = Vec::new();
                    while !stop.load(Ordering::SeqCst) {
                        let started = Instant::now();
                        let reply = search(http.clone(), base.clone(), key.clone()).await;
                        answers.push((started, started.elapsed(), reply));
                    }
                    answers
                })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(300)).await;

        let cut = Instant::now();
        proxy.set(mode);
        let (status, body, took) = readyz().await;
        assert_eq!(status, 503, "{mode:?}: {body}");
        assert!(body.starts_with("not ready\ndatabase: "), "{body}");
        assert!(took < READY_BOUND, "{mode:?}: /readyz took {took:?}");
        eprintln!("{mode:?}: /readyz 503 after {took:?}");
        tokio::time::sleep(request_bound).await;
        stop.store(true, Ordering::SeqCst);
        let mut slowest = Duration::ZERO;
        let mut refused = 0;
        for client in clients {
            for (started, took, reply) in client.await.unwrap() {
                assert!(took < request_bound, "{mode:?}: a request took {took:?}");
                if started > cut {
                    reply.problem(503, "unavailable");
                    assert!(reply.text.contains("database"), "{}", reply.text);
                    slowest = slowest.max(took);
                    refused += 1;
                }
            }
        }
        assert!(
            refused > 0,
            "{mode:?}: no request was made with the database cut"
        );
        eprintln!("{mode:?}: {refused} requests refused, the slowest after {slowest:?}");

        proxy.set(Mode::Pass);
        let back = Instant::now();
        let recovered = tokio::time::timeout(Duration::from_secs(10), async {
            while readyz().await.0 != 200 {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await;
        assert!(
            recovered.is_ok(),
            "{mode:?}: not ready again after the database came back"
        );
        eprintln!("{mode:?}: ready again after {:?}", back.elapsed());
        assert_eq!(
            search(server.http.clone(), server.base.clone(), key.clone())
                .await
                .status,
            200
        );
    }
}

/// PostgreSQL stops answering in the middle of a statement. First slow:
/// another session holds a lock the statement waits for, and the database
/// cancels it at `database_statement_timeout_ms`. Then silent: a partition
/// while the statement waits, so that not even the cancellation comes
/// back, and only engram's own bound on a store call ends the wait. Either
/// way a REST search and an MCP recall answer within the bound
/// (`database_timeout_ms` + `database_statement_timeout_ms`, plus slack)
/// saying the database failed, and engram serves again once it answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_that_stops_answering_mid_statement_fails_requests_within_the_bound() {
    use common::proxy::{Mode, Proxy};

    let bound = Duration::from_millis(1000 + 1500 + 1000);
    let db = common::postgres::TestDatabase::create().await;
    let authority = db.url.split('@').nth(1).unwrap().split('/').next().unwrap();
    let proxy = Proxy::start(authority.to_owned()).await;
    let through = db
        .url
        .replace(authority, &format!("127.0.0.1:{}", proxy.port));
    let server = Server::with_keys(
        Some(&through),
        &[
            ("ENGRAM_REST_RATE_LIMIT", "0"),
            ("ENGRAM_MCP_RATE_LIMIT", "0"),
            ("ENGRAM_DATABASE_TIMEOUT_MS", "1000"),
            ("ENGRAM_DATABASE_STATEMENT_TIMEOUT_MS", "1500"),
        ],
    )
    .await;
    let key = server.create_key(&["--user", "alice"]);
    let stored = server
        .call(
            reqwest::Method::POST,
            "/api/v1/memory",
            Some(&key),
            Some(json!({"text": "Keeps bees on the roof", "infer": false})),
        )
        .await;
    assert_eq!(stored.status, 200, "{}", stored.text);

    // Each request answered and timed from its start; the body as text.
    let rest = {
        let (http, base, key) = (server.http.clone(), server.base.clone(), key.clone());
        move || {
            let request = http
                .post(format!("{base}/api/v1/memory/search"))
                .bearer_auth(&key)
                .json(&json!({"query": "bees"}));
            timed(request)
        }
    };
    let mcp = {
        let (http, base, key) = (server.http.clone(), server.base.clone(), key.clone());
        move || {
            let params = json!({"name": "recall", "arguments": {"query": "bees"}});
            let request =
                common::http::stateless(&http, &base, Some(&key), json!(1), "tools/call", params);
            timed(request)
        }
    };
    let (status, text, _) = rest().await;
    assert_eq!(status, 200, "{text}");
    let (status, text, _) = mcp().await;
    assert!(
        status == 200 && text.contains("Keeps bees"),
        "{status} {text}"
    );

    // Slow: the statement waits on a lock; the database cancels it.
    let pool = db.pool().await;
    let mut locker = pool.begin().await.unwrap();
    sqlx::query("LOCK TABLE memories IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *locker)
        .await
        .unwrap();
    let (status, text, rest_took) = rest().await;
    assert_eq!(status, 503, "{text}");
    assert!(
        text.contains("unavailable") && text.contains("statement timeout"),
        "{text}"
    );
    assert!(rest_took < bound, "REST answered after {rest_took:?}");
    let (status, text, mcp_took) = mcp().await;
    assert!(
        status == 200 && text.contains("statement timeout"),
        "{status} {text}"
    );
    assert!(mcp_took < bound, "MCP answered after {mcp_took:?}");
    eprintln!("a lock wait: REST answered 503 after {rest_took:?}, MCP after {mcp_took:?}");

    // Silent: the statements wait on the lock when the network goes quiet.
    let waiting = (tokio::spawn(rest()), tokio::spawn(mcp()));
    tokio::time::sleep(Duration::from_millis(300)).await;
    proxy.set(Mode::Freeze);
    let (status, text, rest_took) = waiting.0.await.unwrap();
    assert_eq!(status, 503, "{text}");
    assert!(text.contains("did not answer"), "{text}");
    assert!(rest_took < bound, "REST answered after {rest_took:?}");
    let (status, text, mcp_took) = waiting.1.await.unwrap();
    assert!(
        status == 200 && text.contains("did not answer"),
        "{status} {text}"
    );
    assert!(mcp_took < bound, "MCP answered after {mcp_took:?}");
    eprintln!("a partition mid-statement: REST 503 after {rest_took:?}, MCP after {mcp_took:?}");

    locker.rollback().await.unwrap();
    proxy.set(Mode::Pass);
    let back = tokio::time::timeout(Duration::from_secs(15), async {
        loop {
            if rest().await.0 == 200 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    assert!(
        back.is_ok(),
        "engram did not serve again once the database answered"
    );
}

/// Sends `request`; its status, body and how long the answer took. A
/// request unanswered after 20 s fails the test.
async fn timed(request: reqwest::RequestBuilder) -> (u16, String, Duration) {
    let started = std::time::Instant::now();
    let answer = tokio::time::timeout(Duration::from_secs(20), async {
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        (status, response.text().await.unwrap())
    })
    .await
    .unwrap_or_else(|_| panic!("no answer after 20 s"));
    (answer.0, answer.1, started.elapsed())
}

/// A browser page may call engram only from an allowed origin: pages on
/// other sites are refused before any handler, and CORS is answered only
/// for the origins configured.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_origins_are_checked_and_cors_is_off_unless_configured() {
    let plain = Server::start().await;
    let http = reqwest::Client::new();
    let from = |server: &Server, origin: &str, path: &str| {
        http.get(format!("{}{path}", server.base))
            .header("origin", origin)
            .send()
    };
    let evil = from(&plain, "http://evil.example", "/api/v1/openapi.json")
        .await
        .unwrap();
    assert_eq!(evil.status().as_u16(), 403);
    assert!(
        evil.text()
            .await
            .unwrap()
            .contains("ENGRAM_ALLOWED_ORIGINS")
    );
    let local = from(&plain, "http://localhost:6274", "/api/v1/openapi.json")
        .await
        .unwrap();
    assert_eq!(local.status().as_u16(), 200, "a page on an allowed host");
    assert!(!local.headers().contains_key("access-control-allow-origin"));

    let app = "https://app.example.com";
    let configured = Server::start_with(&[("ENGRAM_ALLOWED_ORIGINS", app)]).await;
    let preflight = http
        .request(
            reqwest::Method::OPTIONS,
            format!("{}/api/v1/memory/search", configured.base),
        )
        .header("origin", app)
        .header("access-control-request-method", "POST")
        .header(
            "access-control-request-headers",
            "authorization,content-type",
        )
        .send()
        .await
        .unwrap();
    assert!(preflight.status().is_success(), "{}", preflight.status());
    assert_eq!(preflight.headers()["access-control-allow-origin"], app);
    let allowed = preflight.headers()["access-control-allow-headers"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(allowed.contains("authorization"), "{allowed}");
    let called = from(&configured, app, "/api/v1/openapi.json")
        .await
        .unwrap();
    assert_eq!(called.status().as_u16(), 200);
    assert_eq!(called.headers()["access-control-allow-origin"], app);
    let other = from(
        &configured,
        "https://other.example.com",
        "/api/v1/openapi.json",
    )
    .await
    .unwrap();
    assert_eq!(other.status().as_u16(), 403);
}

/// Probes answer by any address: an orchestrator probes by the pod's IP,
/// which is in no `ENGRAM_ALLOWED_HOSTS`; everything else by that name is
/// still refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_probes_answer_whatever_the_host_and_nothing_else_does() {
    let server = Server::start().await;
    let http = reqwest::Client::new();
    let by_pod_ip = |path: &str| {
        http.get(format!("{}{path}", server.base))
            .header("host", "10.42.0.17:8080")
            .send()
    };
    for probe in ["/healthz", "/readyz"] {
        let answer = by_pod_ip(probe).await.unwrap();
        assert_eq!(
            answer.status().as_u16(),
            200,
            "{probe} by the pod's address"
        );
    }
    for guarded in [
        "/api/v1/openapi.json",
        "/api/v1/memory/stats/default",
        "/mcp",
    ] {
        let answer = by_pod_ip(guarded).await.unwrap();
        assert_eq!(
            answer.status().as_u16(),
            403,
            "{guarded} by the pod's address"
        );
        assert!(
            answer
                .text()
                .await
                .unwrap()
                .contains("ENGRAM_ALLOWED_HOSTS")
        );
    }
}

/// A REST request that runs past ENGRAM_REQUEST_TIMEOUT_SECS (here: a
/// model that does not answer) is answered 503 `timeout`, and nothing of it
/// is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_past_its_time_is_answered_503() {
    use common::fake_openai::{FakeOpenAi, Reply};
    use reqwest::Method;
    let fake = FakeOpenAi::start(384).await;
    fake.then(Reply::Delay(Duration::from_secs(5)));
    let server = Server::start_with(&[
        ("ENGRAM_EXTRACTOR", "llm"),
        ("OPENAI_BASE_URL", fake.base_url.as_str()),
        ("OPENAI_API_KEY", "test"),
        ("ENGRAM_REQUEST_TIMEOUT_SECS", "1"),
    ])
    .await;
    let started = std::time::Instant::now();
    let slow = server
        .call(
            Method::POST,
            "/api/v1/memory",
            None,
            Some(json!({"text": "I moved to Porto", "user_id": "alice"})),
        )
        .await;
    slow.problem(503, "timeout");
    assert!(
        slow.text.contains("ENGRAM_REQUEST_TIMEOUT_SECS"),
        "{}",
        slow.text
    );
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
    let stats = server
        .call(Method::GET, "/api/v1/memory/stats/alice", None, None)
        .await;
    assert_eq!(stats.body["memories"], 0, "{}", stats.text);
    assert_eq!(stats.body["pending"], 0, "{}", stats.text);
}

/// Start-up says when every request would be refused: no API key exists
/// yet (401 for all), or a public bind whose allowed hosts are loopback
/// names only (403 for every other name).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_up_warns_when_every_request_would_be_refused() {
    use tokio::io::{AsyncBufReadExt, BufReader};
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}/engram.db", dir.path().display());
    let start_log = |bind: &'static str| {
        let db = db.clone();
        async move {
            let mut child = Command::new(ENGRAM)
                .args(["serve", "--transport", "http", "--bind", bind])
                .envs(common::HERMETIC)
                .env("ENGRAM_DATABASE_URL", &db)
                .env("ENGRAM_AUTH", "keys")
                .env("ENGRAM_LOG", "info")
                .env_remove("ENGRAM_ALLOWED_HOSTS")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .kill_on_drop(true)
                .spawn()
                .unwrap();
            let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
            let mut log = String::new();
            tokio::time::timeout(Duration::from_secs(30), async {
                while let Some(line) = lines.next_line().await.unwrap() {
                    log.push_str(&line);
                    log.push('\n');
                    if line.contains("serving MCP at") {
                        return;
                    }
                }
                panic!("engram exited before listening: {log}");
            })
            .await
            .expect("engram did not start listening");
            log
        }
    };
    let log = start_log("127.0.0.1:0").await;
    assert!(log.contains("no API key exists yet"), "{log}");
    assert!(!log.contains("ENGRAM_ALLOWED_HOSTS names only"), "{log}");

    let created = common::run_engram(
        &["keys", "create", "--admin"],
        &[("ENGRAM_DATABASE_URL", &db)],
    );
    assert!(created.status.success());
    let log = start_log("0.0.0.0:0").await;
    assert!(!log.contains("no API key exists yet"), "{log}");
    assert!(log.contains("ENGRAM_ALLOWED_HOSTS names only"), "{log}");
}

/// A key holds at most ENGRAM_MCP_SESSIONS_PER_KEY open sessions; closing
/// one makes room; `DELETE` of a session that is not open is 404.
#[tokio::test]
async fn sessions_per_key_are_capped_and_unknown_ones_cannot_be_deleted() {
    let server = Server::start_with(&[("ENGRAM_MCP_SESSIONS_PER_KEY", "2")]).await;
    let url = format!("{}/mcp", server.base);
    let initialize = || {
        server
            .http
            .post(&url)
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream")
            .body(
                json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
                    "protocolVersion": "2025-06-18", "capabilities": {},
                    "clientInfo": {"name": "raw", "version": "1"}}})
                .to_string(),
            )
            .send()
    };
    let mut open = Vec::new();
    for _ in 0..2 {
        let response = initialize().await.unwrap();
        assert_eq!(response.status(), 200);
        open.push(
            response.headers()["mcp-session-id"]
                .to_str()
                .unwrap()
                .to_owned(),
        );
    }
    let refused = initialize().await.unwrap();
    assert_eq!(refused.status(), 429);
    let problem: Value = refused.json().await.unwrap();
    assert_eq!(problem["code"], "too_many_sessions", "{problem}");
    assert!(
        problem["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("ENGRAM_MCP_SESSIONS_PER_KEY"),
        "{problem}"
    );

    let delete = |id: String| server.http.delete(&url).header("mcp-session-id", id).send();
    assert_eq!(delete(open.remove(0)).await.unwrap().status(), 202);
    assert_eq!(initialize().await.unwrap().status(), 200, "room again");
    for unknown in ["no-such-session".to_owned(), uuid_like()] {
        let response = delete(unknown).await.unwrap();
        assert_eq!(response.status(), 404);
    }
}

fn uuid_like() -> String {
    "0193a5c4-7b1e-7cc2-9a41-2f6f0d6e8b10".to_owned()
}

/// A 2026-07-28 client needs no `initialize` and no session: `server/discover`,
/// `tools/list` and `tools/call` are answered on their own (any replica can
/// serve them), and they open no session, so the session cap never refuses them.
#[tokio::test]
async fn stateless_requests_need_no_session_and_count_against_no_cap() {
    let server = Server::start_with(&[("ENGRAM_MCP_SESSIONS_PER_KEY", "1")]).await;
    let ask = |method: &str, params: Value| {
        common::http::stateless(
            &server.http,
            &server.base,
            None,
            json!(method),
            method,
            params,
        )
        .send()
    };
    for _ in 0..3 {
        for (method, params) in [
            ("server/discover", json!({})),
            ("tools/list", json!({})),
            (
                "tools/call",
                json!({"name": "remember", "arguments": {"text": "Stateless note", "infer": false}}),
            ),
        ] {
            let response = ask(method, params).await.unwrap();
            assert_eq!(response.status(), 200, "{method}");
            assert!(
                response.headers().get("mcp-session-id").is_none(),
                "{method}"
            );
            let body = response.text().await.unwrap();
            assert!(body.contains("\"result\""), "{method}: {body}");
            assert!(!body.contains("\"isError\":true"), "{method}: {body}");
        }
    }
}
