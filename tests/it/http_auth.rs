//! Who may do what over HTTP, against the real binary: the key matrix on
//! REST, Streamable HTTP and the legacy SSE transport (no key, a wrong one,
//! a revoked one, user A naming user B, admin), rate limits per key and per
//! acting user, and 50 users with their own keys writing and reading at
//! once.

use crate::common;

use common::http::Server;
use common::{ok, texts, tool_err};
use reqwest::Method;
use rmcp::ServiceExt;
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use serde_json::{Value, json};

/// `engram keys list` line of the key starting like `key`: its id.
fn key_id(server: &Server, key: &str) -> String {
    let out = common::run_engram(
        &["keys", "list"],
        &[("ENGRAM_DATABASE_URL", &server.database_url)],
    );
    let list = String::from_utf8_lossy(&out.stdout);
    list.lines()
        .find(|l| l.contains(&key[..15]))
        .and_then(|l| l.split_whitespace().next())
        .unwrap_or_else(|| panic!("{key} not listed: {list}"))
        .to_owned()
}

async fn mcp(server: &Server, key: &str) -> common::Client {
    let config = StreamableHttpClientTransportConfig::with_uri(format!("{}/mcp", server.base))
        .auth_header(key.to_owned());
    ().serve(StreamableHttpClientTransport::from_config(config))
        .await
        .expect("MCP handshake with a key")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_key_matrix_on_rest() {
    let server = Server::with_keys(None, &common::http::NO_LIMITS).await;
    let alice = server.create_key(&["--user", "alice"]);
    let bob = server.create_key(&["--user", "bob"]);
    let admin = server.create_key(&["--admin"]);
    let revoked = server.create_key(&["--user", "alice"]);
    let out = common::run_engram(
        &["keys", "revoke", &key_id(&server, &revoked)],
        &[("ENGRAM_DATABASE_URL", &server.database_url)],
    );
    assert!(out.status.success());

    let remember = |key: String, body: Value| {
        let server = &server;
        async move {
            server
                .call(Method::POST, "/api/v1/memory", Some(&key), Some(body))
                .await
        }
    };
    let stored = remember(alice.clone(), json!({"text": "Alice keeps bees"})).await;
    assert_eq!(stored.status, 200, "{}", stored.text);
    let alices = stored.body["results"][0]["id"].as_str().unwrap().to_owned();
    let stats = "/api/v1/memory/stats/alice";

    // No key, a malformed header, an unknown key, a revoked key: 401.
    let none = server.call(Method::GET, stats, None, None).await;
    none.problem(401, "unauthorized");
    assert_eq!(none.header("www-authenticate"), r#"Bearer realm="engram""#);
    let basic = server
        .http
        .get(format!("{}{stats}", server.base))
        .header("authorization", "Basic YWxpY2U6c2VjcmV0")
        .send()
        .await
        .unwrap();
    assert_eq!(basic.status().as_u16(), 401);
    for key in ["engram_0000", revoked.as_str()] {
        let refused = server.call(Method::GET, stats, Some(key), None).await;
        refused.problem(401, "unauthorized");
        assert!(
            refused.header("www-authenticate").contains("invalid_token"),
            "{:?}",
            refused.headers
        );
    }

    // The owner and an admin may; another user's key may not, on any route.
    for key in [&alice, &admin] {
        let reply = server.call(Method::GET, stats, Some(key), None).await;
        assert_eq!(
            (reply.status, &reply.body["memories"]),
            (200, &json!(1)),
            "{}",
            reply.text
        );
    }
    let one = format!("/api/v1/memory/{alices}?user_id=alice");
    let cross = [
        (Method::GET, stats.to_owned(), None),
        (Method::GET, "/api/v1/memory/context/alice".into(), None),
        (Method::GET, "/api/v1/memory/export/alice".into(), None),
        (Method::DELETE, "/api/v1/memory/users/alice".into(), None),
        (Method::GET, one.clone(), None),
        (
            Method::GET,
            format!("/api/v1/memory/{alices}/history?user_id=alice"),
            None,
        ),
        (Method::DELETE, one.clone(), None),
        (
            Method::POST,
            "/api/v1/memory".into(),
            Some(json!({"text": "Alice hates bees", "user_id": "alice"})),
        ),
        (
            Method::POST,
            "/api/v1/memory/search".into(),
            Some(json!({"query": "bees", "user_id": "alice"})),
        ),
    ];
    for (method, path, body) in cross {
        let reply = server.call(method.clone(), &path, Some(&bob), body).await;
        reply.problem(403, "forbidden");
        assert!(
            reply.text.contains("'bob'") && reply.text.contains("'alice'"),
            "{method} {path}: {}",
            reply.text
        );
    }
    // Bob's own view never shows Alice's memory, by id or by search.
    server
        .call(
            Method::GET,
            &format!("/api/v1/memory/{alices}"),
            Some(&bob),
            None,
        )
        .await
        .problem(404, "not_found");
    let search = server
        .call(
            Method::POST,
            "/api/v1/memory/search",
            Some(&bob),
            Some(json!({"query": "bees"})),
        )
        .await;
    assert_eq!(search.body["user_id"], "bob");
    assert_eq!(search.body["results"], json!([]));
    // Nothing Bob tried changed Alice's memories.
    let after = server.call(Method::GET, stats, Some(&admin), None).await;
    assert_eq!(after.body["memories"], 1, "{}", after.text);
    let history = server
        .call(
            Method::GET,
            &format!("/api/v1/memory/{alices}/history"),
            Some(&alice),
            None,
        )
        .await;
    assert_eq!(history.body["history"].as_array().unwrap().len(), 1);

    // Health checks and the API description need no key.
    assert_eq!(
        server
            .call(Method::GET, "/healthz", None, None)
            .await
            .status,
        200
    );
    assert_eq!(
        server
            .call(Method::GET, "/api/v1/openapi.json", None, None)
            .await
            .status,
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_key_matrix_on_mcp_over_streamable_http_and_sse() {
    let server = Server::with_keys(None, &[]).await;
    let alice = server.create_key(&["--user", "alice"]);
    let bob = server.create_key(&["--user", "bob"]);
    let admin = server.create_key(&["--admin"]);

    // Without a key the handshake itself is refused.
    let anonymous = reqwest::Client::new()
        .post(format!("{}/mcp", server.base))
        .header("accept", "application/json, text/event-stream")
        .json(
            &json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "protocolVersion": "2025-06-18", "capabilities": {},
            "clientInfo": {"name": "t", "version": "1"}}}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status().as_u16(), 401);
    assert!(anonymous.headers().contains_key("www-authenticate"));

    // A Streamable HTTP session answers only the key that opened it.
    let post = |key: &str, session: Option<&str>, body: Value| {
        let mut request = reqwest::Client::new()
            .post(format!("{}/mcp", server.base))
            .bearer_auth(key)
            .header("accept", "application/json, text/event-stream")
            .json(&body);
        if let Some(session) = session {
            request = request.header("mcp-session-id", session);
        }
        request.send()
    };
    let opened = post(
        &alice,
        None,
        json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "protocolVersion": "2025-06-18", "capabilities": {},
            "clientInfo": {"name": "t", "version": "1"}}}),
    )
    .await
    .unwrap();
    assert_eq!(opened.status().as_u16(), 200);
    let session = opened.headers()["mcp-session-id"]
        .to_str()
        .unwrap()
        .to_owned();
    let initialized = json!({"jsonrpc": "2.0", "method": "notifications/initialized"});
    let hijack = post(&bob, Some(&session), initialized.clone())
        .await
        .unwrap();
    assert_eq!(hijack.status().as_u16(), 404);
    assert!(
        hijack
            .text()
            .await
            .unwrap()
            .contains("only the key that opened it")
    );
    let own = post(&alice, Some(&session), initialized).await.unwrap();
    assert_eq!(own.status().as_u16(), 202);
    let end = |key: &str| {
        reqwest::Client::new()
            .delete(format!("{}/mcp", server.base))
            .bearer_auth(key)
            .header("mcp-session-id", &session)
            .send()
    };
    assert_eq!(end(&bob).await.unwrap().status().as_u16(), 404);
    assert!(end(&alice).await.unwrap().status().is_success());

    // A user key: user_id defaults to its user; naming another is an error.
    let as_alice = mcp(&server, &alice).await;
    let stored = ok(&as_alice, "remember", json!({"text": "Alice keeps bees"})).await;
    assert_eq!(stored["user_id"], "alice");
    let refused = tool_err(
        &as_alice,
        "recall",
        json!({"query": "bees", "user_id": "bob"}),
    )
    .await;
    assert!(refused.contains("'alice' only"), "{refused}");
    let refused = tool_err(&as_alice, "forget", json!({"user_id": "bob", "all": true})).await;
    assert!(refused.contains("'alice' only"), "{refused}");
    let as_bob = mcp(&server, &bob).await;
    let bobs = ok(&as_bob, "recall", json!({"query": "bees"})).await;
    assert!(texts(&bobs).is_empty(), "{bobs}");
    // An admin acts for anyone.
    let as_admin = mcp(&server, &admin).await;
    let found = ok(
        &as_admin,
        "recall",
        json!({"query": "bees", "user_id": "alice"}),
    )
    .await;
    assert_eq!(texts(&found), ["Alice keeps bees"]);
    for client in [as_alice, as_bob, as_admin] {
        client.cancel().await.unwrap();
    }

    // Legacy SSE: the stream needs a key, and the session takes posts only
    // with the key that opened it.
    let http = reqwest::Client::new();
    let sse = format!("{}/sse", server.base);
    assert_eq!(http.get(&sse).send().await.unwrap().status().as_u16(), 401);
    let mut stream = http.get(&sse).bearer_auth(&alice).send().await.unwrap();
    assert_eq!(stream.status().as_u16(), 200);
    let mut seen = String::new();
    let endpoint = common::http::sse_endpoint(&mut stream, &mut seen).await;
    let initialize = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2024-11-05", "capabilities": {},
        "clientInfo": {"name": "t", "version": "1"}}});
    let post = |key: Option<&str>| {
        let mut request = http
            .post(format!("{}{endpoint}", server.base))
            .json(&initialize);
        if let Some(key) = key {
            request = request.bearer_auth(key);
        }
        async move { request.send().await.unwrap().status().as_u16() }
    };
    assert_eq!(post(None).await, 401);
    assert_eq!(post(Some(&bob)).await, 404, "another key's session");
    assert_eq!(post(Some(&alice)).await, 202);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limits_count_per_key_and_kind() {
    let server = Server::with_keys(
        None,
        &[
            ("ENGRAM_REST_RATE_LIMIT", "3"),
            ("ENGRAM_MCP_RATE_LIMIT", "1000"),
        ],
    )
    .await;
    let alice = server.create_key(&["--user", "alice"]);
    let bob = server.create_key(&["--user", "bob"]);
    let stats = |user: &'static str, key: Option<String>| {
        let server = &server;
        async move {
            server
                .call(
                    Method::GET,
                    &format!("/api/v1/memory/stats/{user}"),
                    key.as_deref(),
                    None,
                )
                .await
        }
    };
    // Refused requests without a valid key are not counted against anyone.
    for _ in 0..5 {
        assert_eq!(stats("alice", None).await.status, 401);
    }
    for _ in 0..3 {
        let reply = stats("alice", Some(alice.clone())).await;
        assert_eq!(reply.status, 200, "{}", reply.text);
    }
    let limited = stats("alice", Some(alice.clone())).await;
    limited.problem(429, "rate_limited");
    let wait: u64 = limited.header("retry-after").parse().unwrap();
    assert!(
        (1..=20).contains(&wait),
        "3 per minute: one every 20 s; {wait}"
    );
    assert_eq!(limited.body["retry_after"], wait);
    // Another key has its own allowance, and MCP has its own limit.
    assert_eq!(stats("bob", Some(bob.clone())).await.status, 200);
    let as_alice = mcp(&server, &alice).await;
    let found = ok(&as_alice, "recall", json!({"query": "anything"})).await;
    assert_eq!(found["user_id"], "alice");
    as_alice.cancel().await.unwrap();
}

/// 50 users, each with their own key, write and read at once: every write
/// lands, and no answer ever holds another user's memory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_users_at_once_lose_nothing_and_see_only_their_own() {
    const USERS: usize = 50;
    const FACTS: [&str; 8] = [
        "keeps bees on the roof of the old mill",
        "flies to Reykjavik every March for the music festival",
        "is allergic to penicillin and carries an epipen",
        "is learning Portuguese with a tutor on Tuesdays",
        "drives a blue 1998 Volvo estate",
        "has two cats named Miso and Tofu",
        "works night shifts as a radiographer",
        "collects vinyl records of 1970s jazz",
    ];
    let server = Server::with_keys(None, &common::http::NO_LIMITS).await;
    let users: Vec<(String, String)> = (0..USERS)
        .map(|u| {
            let user = format!("user{u:02}");
            let key = server.create_key(&["--user", &user]);
            (user, key)
        })
        .collect();

    // Even users go through the REST API, odd ones through MCP over
    // Streamable HTTP: both doors at once.
    let server = &server;
    let runs = users.iter().enumerate().map(|(u, (user, key))| async move {
        let client = if u % 2 == 1 {
            Some(mcp(server, key).await)
        } else {
            None
        };
        let mut foreign = Vec::new();
        for (i, fact) in FACTS.iter().enumerate() {
            let text = format!("{user} {fact}");
            let query = FACTS[(i + 3) % FACTS.len()];
            let (stored, found) = match &client {
                Some(client) => (
                    ok(client, "remember", json!({"text": text, "infer": false})).await,
                    ok(client, "recall", json!({"query": query, "limit": 20})).await,
                ),
                None => {
                    let stored = server
                        .call(
                            Method::POST,
                            "/api/v1/memory",
                            Some(key),
                            Some(json!({"text": text, "infer": false})),
                        )
                        .await;
                    assert_eq!(stored.status, 200, "{user}: {}", stored.text);
                    let found = server
                        .call(
                            Method::POST,
                            "/api/v1/memory/search",
                            Some(key),
                            Some(json!({"query": query, "limit": 20})),
                        )
                        .await;
                    assert_eq!(found.status, 200, "{user}: {}", found.text);
                    (stored.body, found.body)
                }
            };
            assert_eq!(stored["results"][0]["event"], "ADD", "{stored}");
            assert_eq!(stored["user_id"], user.as_str(), "{stored}");
            for memory in found["results"].as_array().unwrap() {
                let text = memory["memory"].as_str().unwrap_or_default();
                if memory["user_id"] != user.as_str() || !text.starts_with(&format!("{user} ")) {
                    foreign.push(text.to_owned());
                }
            }
        }
        if let Some(client) = client {
            client.cancel().await.unwrap();
        }
        foreign
    });
    let leaks: Vec<String> = futures::future::join_all(runs)
        .await
        .into_iter()
        .flatten()
        .collect();
    assert!(
        leaks.is_empty(),
        "answers held other users' memories: {leaks:?}"
    );

    for (user, key) in &users {
        let export = server
            .call(
                Method::GET,
                &format!("/api/v1/memory/export/{user}"),
                Some(key),
                None,
            )
            .await;
        let mut stored: Vec<String> = export.body["memories"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["memory"].as_str().unwrap().to_owned())
            .collect();
        stored.sort();
        let mut expected: Vec<String> = FACTS.iter().map(|f| format!("{user} {f}")).collect();
        expected.sort();
        assert_eq!(stored, expected, "{user} lost or gained a write");
    }
}

/// With a cache, processes behind one load balancer share each key's
/// allowance: the limit holds for the key, not per process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn processes_sharing_a_cache_share_each_keys_allowance() {
    let redis = common::redis::shared_url();
    let prefix = format!("engram-test-{}:", uuid::Uuid::new_v4().simple());
    let env = [
        ("ENGRAM_REST_RATE_LIMIT", "3"),
        ("ENGRAM_CACHE_URL", redis.as_str()),
        ("ENGRAM_CACHE_PREFIX", prefix.as_str()),
    ];
    let first = Server::with_keys(None, &env).await;
    let second = Server::with_keys(Some(&first.database_url), &env).await;
    let key = first.create_key(&["--user", "alice"]);
    let stats = "/api/v1/memory/stats/alice";
    for server in [&first, &second, &first] {
        let reply = server.call(Method::GET, stats, Some(&key), None).await;
        assert_eq!(reply.status, 200, "{}", reply.text);
    }
    second
        .call(Method::GET, stats, Some(&key), None)
        .await
        .problem(429, "rate_limited");
    first
        .call(Method::GET, stats, Some(&key), None)
        .await
        .problem(429, "rate_limited");
}

/// With a cache, each user's allowance is shared too, apart from the keys':
/// a user over their limit on one process is over it on the other, while
/// the key acting for them goes on serving other users on both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn processes_sharing_a_cache_share_each_users_allowance() {
    let redis = common::redis::shared_url();
    let prefix = format!("engram-test-{}:", uuid::Uuid::new_v4().simple());
    let env = [
        ("ENGRAM_REST_USER_RATE_LIMIT", "2"),
        ("ENGRAM_REST_RATE_LIMIT", "6"),
        ("ENGRAM_CACHE_URL", redis.as_str()),
        ("ENGRAM_CACHE_PREFIX", prefix.as_str()),
    ];
    let first = Server::with_keys(None, &env).await;
    let second = Server::with_keys(Some(&first.database_url), &env).await;
    let admin = first.create_key(&["--admin"]);
    let stats = |server: &Server, user: &str| {
        let path = format!("/api/v1/memory/stats/{user}");
        let (http, base, key) = (server.http.clone(), server.base.clone(), admin.clone());
        async move {
            let response = http.get(format!("{base}{path}")).bearer_auth(key).send();
            common::http::Reply::read(response.await.unwrap()).await
        }
    };
    for server in [&first, &second] {
        let reply = stats(server, "alice").await;
        assert_eq!(reply.status, 200, "{}", reply.text);
    }
    stats(&first, "alice").await.problem(429, "rate_limited");
    stats(&second, "alice").await.problem(429, "rate_limited");
    // Four requests counted against the key so far: two more pass.
    for server in [&second, &first] {
        let reply = stats(server, "bob").await;
        assert_eq!(reply.status, 200, "{}", reply.text);
    }
    let key_limited = stats(&second, "carol").await;
    key_limited.problem(429, "rate_limited");
    assert!(key_limited.text.contains("API key"), "{}", key_limited.text);
}

/// Over the MCP limit, `/mcp` still says 429 with `Retry-After`, and its
/// body is a JSON-RPC error with the request's id and the wait, which MCP
/// clients show (a problem+json body reaches the user as "an error response").
#[tokio::test]
async fn an_mcp_request_over_the_limit_gets_a_json_rpc_error_with_the_wait() {
    let server = Server::with_keys(None, &[("ENGRAM_MCP_RATE_LIMIT", "2")]).await;
    let key = server.create_key(&["--user", "alice"]);
    let list = |id: u64| {
        common::http::stateless(
            &server.http,
            &server.base,
            Some(&key),
            json!(id),
            "tools/list",
            json!({}),
        )
        .send()
    };
    for id in 1..=2 {
        assert_eq!(list(id).await.unwrap().status(), 200);
    }
    let limited = list(77).await.unwrap();
    assert_eq!(limited.status(), 429);
    let wait: u64 = limited.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=30).contains(&wait), "{wait}");
    let answer: serde_json::Value = limited.json().await.unwrap();
    assert_eq!(answer["id"], 77, "{answer}");
    assert_eq!(answer["error"]["code"], -32029, "{answer}");
    assert_eq!(
        answer["error"]["data"]["retry_after_secs"], wait,
        "{answer}"
    );
    let message = answer["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains(&format!("retry after {wait} s")),
        "{message}"
    );
}

/// A backend whose one admin key serves many users is held to each user's
/// allowance, not capped as one user: requests for three users, together
/// over the per-user limit, all pass; the user who goes over it is refused
/// whichever key acts for them; and the key's own limit still bounds the
/// key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_key_is_limited_per_acting_user_on_rest() {
    let server = Server::with_keys(
        None,
        &[
            ("ENGRAM_REST_USER_RATE_LIMIT", "3"),
            ("ENGRAM_REST_RATE_LIMIT", "11"),
        ],
    )
    .await;
    let admin = server.create_key(&["--admin"]);
    let carol = server.create_key(&["--user", "carol"]);
    let stats = |user: &str, key: &str| {
        let (path, key) = (format!("/api/v1/memory/stats/{user}"), key.to_owned());
        let server = &server;
        async move { server.call(Method::GET, &path, Some(&key), None).await }
    };
    // Nine requests from one key: three times one user's allowance.
    for user in ["alice", "bob", "carol"] {
        for _ in 0..3 {
            let reply = stats(user, &admin).await;
            assert_eq!(reply.status, 200, "{user}: {}", reply.text);
        }
    }
    // Alice's fourth, named in a body this time: refused for her.
    let limited = server
        .call(
            Method::POST,
            "/api/v1/memory/search",
            Some(&admin),
            Some(json!({"query": "tea", "user_id": "alice"})),
        )
        .await;
    limited.problem(429, "rate_limited");
    let wait: u64 = limited.header("retry-after").parse().unwrap();
    assert!(
        (1..=20).contains(&wait),
        "3 a minute: one every 20 s; {wait}"
    );
    assert_eq!(limited.body["retry_after"], wait);
    let detail = limited.body["detail"].as_str().unwrap_or_default();
    assert!(
        detail.contains("'alice'") && detail.contains("ENGRAM_REST_USER_RATE_LIMIT"),
        "{detail}"
    );
    // Carol's own key draws on the same allowance as the admin acting for her.
    stats("carol", &carol).await.problem(429, "rate_limited");
    // Another user through the same key: the key is not capped as one user.
    assert_eq!(stats("dave", &admin).await.status, 200);
    // The key's eleventh counted request was dave's; its twelfth is over
    // the key's limit, whoever it is for.
    let key_limited = stats("erin", &admin).await;
    key_limited.problem(429, "rate_limited");
    let detail = key_limited.body["detail"].as_str().unwrap_or_default();
    assert!(
        detail.contains("API key") && detail.contains("ENGRAM_REST_RATE_LIMIT"),
        "{detail}"
    );
}

/// The same over MCP (Streamable HTTP): an admin key's tool calls count per
/// acting user; the call over its user's limit gets 429 with `Retry-After`
/// and a JSON-RPC error -32029 naming the user and the wait, as the key's
/// limit does, and requests that act on no user (`tools/list`) count only
/// against the key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_key_is_limited_per_acting_user_over_mcp() {
    let server = Server::with_keys(None, &[("ENGRAM_MCP_USER_RATE_LIMIT", "3")]).await;
    let admin = server.create_key(&["--admin"]);
    let client = mcp(&server, &admin).await;
    for user in ["alice", "bob", "carol"] {
        for _ in 0..3 {
            let found = ok(&client, "recall", json!({"query": "tea", "user_id": user})).await;
            assert_eq!(found["user_id"], user);
        }
    }
    for _ in 0..5 {
        client
            .list_all_tools()
            .await
            .expect("tools/list counts per key only");
    }
    let args = json!({"user_id": "alice", "text": "likes tea"});
    let refused = client
        .call_tool(
            rmcp::model::CallToolRequestParams::new("remember")
                .with_arguments(args.as_object().cloned().unwrap()),
        )
        .await;
    // Refused before the tool runs, as the key's limit is: the client sees
    // the 429 and its Retry-After.
    let refusal = format!(
        "{:?}",
        refused.expect_err("alice's fourth call was refused")
    );
    assert!(
        refusal.contains("429") && refusal.contains("retry_after: Some("),
        "{refusal}"
    );
    // On the wire: 429 with Retry-After, the JSON-RPC error as the body.
    let raw = common::http::stateless(
        &server.http,
        &server.base,
        Some(&admin),
        json!(7),
        "tools/call",
        json!({"name": "recall", "arguments": {"query": "tea", "user_id": "alice"}}),
    )
    .send()
    .await
    .unwrap();
    assert_eq!(raw.status().as_u16(), 429);
    let retry_after: u64 = raw.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let body: Value = raw.json().await.unwrap();
    assert_eq!(body["id"], 7, "{body}");
    assert_eq!(body["error"]["code"], -32029, "{body}");
    assert_eq!(
        body["error"]["data"]["retry_after_secs"], retry_after,
        "{body}"
    );
    // The session and the key go on serving other users; the refused call
    // stored nothing (REST has its own allowance for alice).
    let found = ok(&client, "user_context", json!({"user_id": "dave"})).await;
    assert_eq!(found["user_id"], "dave");
    client.cancel().await.unwrap();
    let stats = server
        .call(
            Method::GET,
            "/api/v1/memory/stats/alice",
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(stats.body["memories"], 0, "{}", stats.text);
}
