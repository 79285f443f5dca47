//! Keys that age, against the HTTP app and the real `engram keys` commands,
//! on both stores: an expired key is refused like a revoked one on every
//! door, a read-only key reads but never writes (REST and MCP), a rotated
//! key works beside its successor until its grace ends, and erasing a user
//! deletes their keys.

use std::time::{Duration, Instant};

use crate::common;

use common::http::{NO_LIMITS, Server};
use common::postgres::TestDatabase;
use common::{ok, texts, tool_err};
use reqwest::Method;
use rmcp::ServiceExt;
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use serde_json::json;

/// The server under test: on a fresh SQLite file, or on a fresh PostgreSQL
/// database (kept alive beside it).
async fn server(postgres: bool) -> (Server, Option<TestDatabase>) {
    if postgres {
        let db = TestDatabase::create().await;
        (Server::with_keys(Some(&db.url), &NO_LIMITS).await, Some(db))
    } else {
        (Server::with_keys(None, &NO_LIMITS).await, None)
    }
}

/// `engram keys ARGS` on the server's database: (success, stdout, stderr).
fn keys(server: &Server, args: &[&str]) -> (bool, String, String) {
    let mut all = vec!["keys"];
    all.extend_from_slice(args);
    let out = common::run_engram(&all, &[("ENGRAM_DATABASE_URL", &server.database_url)]);
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The `keys list` row of the key starting like `key`.
fn listed(server: &Server, key: &str) -> Option<String> {
    let (_, list, _) = keys(server, &["list"]);
    list.lines()
        .find(|l| l.contains(&key[..15]))
        .map(str::to_owned)
}

/// The id of the key starting like `key`, from `keys list`.
fn key_id(server: &Server, key: &str) -> String {
    let row = listed(server, key).unwrap_or_else(|| panic!("{key} is not listed"));
    row.split_whitespace().next().unwrap_or_default().to_owned()
}

async fn mcp(server: &Server, key: &str) -> common::Client {
    let config = StreamableHttpClientTransportConfig::with_uri(format!("{}/mcp", server.base))
        .auth_header(key.to_owned());
    ().serve(StreamableHttpClientTransport::from_config(config))
        .await
        .expect("MCP handshake with a key")
}

/// Status of a GET of a user's stats with `key`.
async fn stats_status(server: &Server, key: &str) -> u16 {
    server
        .call(Method::GET, "/api/v1/memory/stats/alice", Some(key), None)
        .await
        .status
}

/// Status of an MCP `initialize` posted to `/mcp` with `key`.
async fn mcp_status(server: &Server, key: &str) -> u16 {
    let initialize = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-03-26", "capabilities": {},
        "clientInfo": {"name": "t", "version": "1"}}});
    server
        .http
        .post(format!("{}/mcp", server.base))
        .bearer_auth(key)
        .header("accept", "application/json, text/event-stream")
        .json(&initialize)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

async fn an_expired_key_is_refused_on_every_door(postgres: bool) {
    let (server, _db) = server(postgres).await;
    let made = Instant::now();
    let key = server.create_key(&["--user", "alice", "--expires-in", "3s"]);
    assert!(
        listed(&server, &key)
            .is_some_and(|row| row.contains("active") && row.contains("expires 2")),
        "{:?}",
        listed(&server, &key)
    );
    assert_eq!(stats_status(&server, &key).await, 200);

    tokio::time::sleep(
        (made + Duration::from_millis(3500)).saturating_duration_since(Instant::now()),
    )
    .await;
    let refused = server
        .call(Method::GET, "/api/v1/memory/stats/alice", Some(&key), None)
        .await;
    refused.problem(401, "unauthorized");
    assert!(refused.header("www-authenticate").contains("invalid_token"));
    assert!(
        refused.body["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("expired")
    );
    assert_eq!(mcp_status(&server, &key).await, 401, "/mcp");
    let sse = server
        .http
        .get(format!("{}/sse", server.base))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(sse.status().as_u16(), 401, "/sse");
    let messages = server
        .http
        .post(format!("{}/messages?sessionId=x", server.base))
        .bearer_auth(&key)
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(messages.status().as_u16(), 401, "/messages");
    let row = listed(&server, &key).unwrap_or_default();
    assert!(row.contains("expired"), "{row}");

    // Bad expiries are refused with what is wrong, and nothing is made.
    let before = keys(&server, &["list"]).1.lines().count();
    for (args, says) in [
        (vec!["--expires-in", "30"], "not a span of time"),
        (vec!["--expires-in", "0s"], "at least 1s"),
        (
            vec!["--expires-at", "2020-01-01T00:00:00Z"],
            "not in the future",
        ),
        (vec!["--expires-at", "tomorrow"], "RFC 3339"),
        (
            vec!["--expires-in", "1d", "--expires-at", "2999-01-01T00:00:00Z"],
            "cannot be used with",
        ),
    ] {
        let mut all = vec!["create", "--user", "alice"];
        all.extend_from_slice(&args);
        let (done, _, err) = keys(&server, &all);
        assert!(!done && err.contains(says), "{args:?}: {err}");
    }
    assert_eq!(keys(&server, &["list"]).1.lines().count(), before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_key_is_refused_on_every_door_sqlite() {
    an_expired_key_is_refused_on_every_door(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_key_is_refused_on_every_door_postgres() {
    an_expired_key_is_refused_on_every_door(true).await;
}

async fn a_read_only_key_reads_but_never_writes(postgres: bool) {
    let (server, _db) = server(postgres).await;
    let writer = server.create_key(&["--user", "alice"]);
    let reader = server.create_key(&["--user", "alice", "--read-only"]);
    let admin_reader = server.create_key(&["--admin", "--read-only"]);
    assert!(listed(&server, &reader).is_some_and(|r| r.contains("read-only")));
    assert!(listed(&server, &writer).is_some_and(|r| r.contains("read-write")));
    let stored = server
        .call(
            Method::POST,
            "/api/v1/memory",
            Some(&writer),
            Some(json!({"text": "Alice keeps bees"})),
        )
        .await;
    assert_eq!(stored.status, 200, "{}", stored.text);
    let id = stored.body["results"][0]["id"].as_str().unwrap().to_owned();

    for key in [&reader, &admin_reader] {
        // Every read.
        let found = server
            .call(
                Method::POST,
                "/api/v1/memory/search",
                Some(key),
                Some(json!({"query": "bees", "user_id": "alice"})),
            )
            .await;
        assert_eq!(texts(&found.body), ["Alice keeps bees"], "{}", found.text);
        for path in [
            "/api/v1/memory/context/alice".to_owned(),
            "/api/v1/memory/stats/alice".to_owned(),
            "/api/v1/memory/export/alice".to_owned(),
            format!("/api/v1/memory/{id}?user_id=alice"),
            format!("/api/v1/memory/{id}/history?user_id=alice"),
        ] {
            let read = server.call(Method::GET, &path, Some(key), None).await;
            assert_eq!(read.status, 200, "{path}: {}", read.text);
        }
        // Every write: 403, naming the scope.
        for (method, path, body) in [
            (
                Method::POST,
                "/api/v1/memory".to_owned(),
                Some(json!({"text": "Alice hates bees", "user_id": "alice"})),
            ),
            (
                Method::DELETE,
                format!("/api/v1/memory/{id}?user_id=alice"),
                None,
            ),
            (
                Method::DELETE,
                "/api/v1/memory/users/alice".to_owned(),
                None,
            ),
            (
                Method::POST,
                "/api/v1/memory/forget".to_owned(),
                Some(json!({"user_id": "alice", "all": true, "filters": {"topic": "bees"}})),
            ),
        ] {
            let refused = server.call(method.clone(), &path, Some(key), body).await;
            refused.problem(403, "forbidden");
            assert!(
                refused.body["detail"]
                    .as_str()
                    .unwrap_or_default()
                    .contains("read-only"),
                "{method} {path}: {}",
                refused.text
            );
        }
    }

    // Over MCP (Streamable HTTP): reads answer, writes are tool errors.
    let as_reader = mcp(&server, &reader).await;
    let found = ok(&as_reader, "recall", json!({"query": "bees"})).await;
    assert_eq!(texts(&found), ["Alice keeps bees"]);
    let context = ok(&as_reader, "user_context", json!({})).await;
    assert_eq!(context["total"], 1);
    for (tool, args) in [
        ("remember", json!({"text": "Alice hates bees"})),
        ("forget", json!({"memory_id": id})),
        ("forget", json!({"user_id": "alice", "all": true})),
        (
            "forget",
            json!({"user_id": "alice", "all": true, "before": "2999-01-01"}),
        ),
    ] {
        let refused = tool_err(&as_reader, tool, args).await;
        assert!(refused.contains("read-only"), "{tool}: {refused}");
    }
    as_reader.cancel().await.unwrap();

    // Nothing was written or deleted; a writing key still writes.
    let stats = server
        .call(
            Method::GET,
            "/api/v1/memory/stats/alice",
            Some(&writer),
            None,
        )
        .await;
    assert_eq!(stats.body["memories"], 1, "{}", stats.text);
    assert!(
        listed(&server, &reader).is_some(),
        "a refused erasure deleted no key"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_key_reads_but_never_writes_sqlite() {
    a_read_only_key_reads_but_never_writes(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_key_reads_but_never_writes_postgres() {
    a_read_only_key_reads_but_never_writes(true).await;
}

async fn a_rotated_key_works_beside_its_successor_until_the_grace_ends(postgres: bool) {
    let (server, _db) = server(postgres).await;
    let old = server.create_key(&["--user", "alice", "--read-only", "--label", "laptop"]);
    let old_id = key_id(&server, &old);
    let rotated = Instant::now();
    let (done, out, err) = keys(&server, &["rotate", &old_id, "--grace", "2s"]);
    assert!(done, "{err}");
    let new = out.trim().to_owned();
    assert!(
        new.starts_with("engram_") && new.len() == 71 && new != old,
        "{new}"
    );
    assert!(err.contains(&old_id) && err.contains("read-only"), "{err}");
    let row = listed(&server, &new).unwrap_or_default();
    assert!(
        row.contains("alice")
            && row.contains("read-only")
            && row.contains("laptop")
            && row.contains("active"),
        "the successor is like the old key: {row}"
    );

    // Both work during the grace.
    assert_eq!(stats_status(&server, &old).await, 200);
    assert_eq!(stats_status(&server, &new).await, 200);

    tokio::time::sleep(
        (rotated + Duration::from_millis(2500)).saturating_duration_since(Instant::now()),
    )
    .await;
    server
        .call(Method::GET, "/api/v1/memory/stats/alice", Some(&old), None)
        .await
        .problem(401, "unauthorized");
    assert_eq!(mcp_status(&server, &old).await, 401);
    assert_eq!(stats_status(&server, &new).await, 200);
    assert!(listed(&server, &old).is_some_and(|r| r.contains("expired")));

    // Only an active key is rotated.
    let (done, _, err) = keys(&server, &["rotate", &old_id]);
    assert!(!done && err.contains("no active key"), "{err}");
    let (done, _, err) = keys(
        &server,
        &["rotate", &key_id(&server, &new), "--grace", "soon"],
    );
    assert!(!done && err.contains("--grace"), "{err}");
    assert_eq!(
        keys(&server, &["list"]).1.lines().count(),
        2,
        "nothing made"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_key_works_beside_its_successor_until_the_grace_ends_sqlite() {
    a_rotated_key_works_beside_its_successor_until_the_grace_ends(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_key_works_beside_its_successor_until_the_grace_ends_postgres() {
    a_rotated_key_works_beside_its_successor_until_the_grace_ends(true).await;
}

async fn erasing_a_user_deletes_their_keys(postgres: bool) {
    let (server, _db) = server(postgres).await;
    let alice = server.create_key(&["--user", "alice"]);
    let alice_reader = server.create_key(&["--user", "alice", "--read-only"]);
    let bob = server.create_key(&["--user", "bob"]);
    let admin = server.create_key(&["--admin"]);
    let stored = server
        .call(
            Method::POST,
            "/api/v1/memory",
            Some(&alice),
            Some(json!({"text": "Alice keeps bees"})),
        )
        .await;
    assert_eq!(stored.status, 200, "{}", stored.text);

    let erased = server
        .call(
            Method::DELETE,
            "/api/v1/memory/users/alice",
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(erased.status, 200, "{}", erased.text);
    assert_eq!(
        (&erased.body["deleted"], &erased.body["keys_deleted"]),
        (&json!(1), &json!(2)),
        "{}",
        erased.text
    );
    for gone in [&alice, &alice_reader] {
        assert_eq!(stats_status(&server, gone).await, 401);
        assert_eq!(listed(&server, gone), None, "the row is deleted");
    }
    for kept in [&bob, &admin] {
        assert!(listed(&server, kept).is_some());
    }
    assert_eq!(
        server
            .call(Method::GET, "/api/v1/memory/stats/bob", Some(&bob), None)
            .await
            .status,
        200
    );

    // A user erasing themselves over MCP takes their own keys with them.
    let carol = server.create_key(&["--user", "carol"]);
    let as_carol = mcp(&server, &carol).await;
    ok(&as_carol, "remember", json!({"text": "Carol sails"})).await;
    let erased = ok(
        &as_carol,
        "forget",
        json!({"user_id": "carol", "all": true}),
    )
    .await;
    assert_eq!(
        (&erased["deleted"], &erased["keys_deleted"]),
        (&json!(1), &json!(1))
    );
    assert_eq!(listed(&server, &carol), None);
    assert_eq!(mcp_status(&server, &carol).await, 401);
    as_carol.cancel().await.ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn erasing_a_user_deletes_their_keys_sqlite() {
    erasing_a_user_deletes_their_keys(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn erasing_a_user_deletes_their_keys_postgres() {
    erasing_a_user_deletes_their_keys(true).await;
}
