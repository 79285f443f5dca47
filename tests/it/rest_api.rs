//! The REST API over real HTTP against the real binary: every route's
//! success and error shapes, and the OpenAPI document covering every route;
//! correcting a memory and listing a user's memories page by page, on both
//! stores; and the README's REST examples within the default rate limits.

use crate::common;

use common::http::{NO_LIMITS, Reply, Server};
use common::postgres::TestDatabase;
use reqwest::Method;
use serde_json::{Value, json};

/// The routes the API promises, as (method, OpenAPI path).
const ROUTES: [(&str, &str); 13] = [
    ("post", "/api/v1/memory"),
    ("get", "/api/v1/memory"),
    ("post", "/api/v1/memory/search"),
    ("post", "/api/v1/memory/forget"),
    ("get", "/api/v1/memory/context/{user_id}"),
    ("get", "/api/v1/memory/stats/{user_id}"),
    ("get", "/api/v1/memory/export/{user_id}"),
    ("delete", "/api/v1/memory/users/{user_id}"),
    ("get", "/api/v1/memory/{memory_id}"),
    ("put", "/api/v1/memory/{memory_id}"),
    ("delete", "/api/v1/memory/{memory_id}"),
    ("get", "/api/v1/memory/{memory_id}/history"),
    ("get", "/api/v1/audit"),
];

async fn server() -> (Server, String) {
    let server = Server::with_keys(None, &common::http::NO_LIMITS).await;
    let key = server.create_key(&["--user", "alice"]);
    (server, key)
}

fn texts(body: &Value, list: &str) -> Vec<String> {
    body[list]
        .as_array()
        .unwrap_or(&Vec::new())
        .iter()
        .map(|m| m["memory"].as_str().unwrap_or_default().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_answers_and_a_memory_lives_its_whole_life() {
    let (server, key) = server().await;
    let call = |method: Method, path: String, body: Option<Value>| {
        let (server, key) = (&server, key.clone());
        async move { server.call(method, &path, Some(&key), body).await }
    };
    let base = "/api/v1/memory";

    // POST / (with and without the trailing slash): remember, for the key's user.
    let stored = call(
        Method::POST,
        base.into(),
        Some(json!({"text": "I prefer aisle seats on long flights", "metadata": {"topic": "travel"}})),
    )
    .await;
    assert_eq!(stored.status, 200, "{}", stored.text);
    assert_eq!(stored.body["user_id"], "alice");
    assert_eq!(stored.body["results"][0]["event"], "ADD");
    let id = stored.body["results"][0]["id"].as_str().unwrap().to_owned();
    let second = call(
        Method::POST,
        format!("{base}/"),
        Some(json!({"messages": [{"role": "user", "content": "My sister lives in Lisbon"}]})),
    )
    .await;
    assert_eq!(second.status, 200, "{}", second.text);
    let sister = second.body["results"][0]["id"].as_str().unwrap().to_owned();

    // POST /search
    let found = call(
        Method::POST,
        format!("{base}/search"),
        Some(json!({"query": "aisle seats", "limit": 5, "filters": {"topic": "travel"}})),
    )
    .await;
    assert_eq!(found.status, 200, "{}", found.text);
    assert_eq!(found.body["user_id"], "alice");
    assert_eq!(
        texts(&found.body, "results"),
        ["I prefer aisle seats on long flights"]
    );
    // min_score: only what is relevant (here: nothing).
    let relevant = call(
        Method::POST,
        format!("{base}/search"),
        Some(json!({"query": "quantum chromodynamics", "min_score": 0.2})),
    )
    .await;
    assert_eq!(relevant.status, 200, "{}", relevant.text);
    assert_eq!(relevant.body["results"], json!([]), "{}", relevant.text);

    // GET /context/{user_id}, with its options.
    let context = call(Method::GET, format!("{base}/context/alice"), None).await;
    assert_eq!(context.status, 200, "{}", context.text);
    assert_eq!(context.body["total"], 2);
    assert!(context.body["context"].as_str().unwrap().contains("Lisbon"));
    let focused = call(
        Method::GET,
        format!("{base}/context/alice?limit=1&query=sister"),
        None,
    )
    .await;
    assert_eq!(
        texts(&focused.body, "memories"),
        ["My sister lives in Lisbon"]
    );
    call(Method::GET, format!("{base}/context/alice?limit=0"), None)
        .await
        .problem(400, "invalid_input");
    call(Method::GET, format!("{base}/context/alice?bogus=1"), None)
        .await
        .problem(400, "invalid_input");

    // GET /{memory_id}
    let one = call(Method::GET, format!("{base}/{id}"), None).await;
    assert_eq!(one.status, 200, "{}", one.text);
    assert_eq!(one.body["memory"], "I prefer aisle seats on long flights");
    assert_eq!(one.body["metadata"]["topic"], "travel");
    assert_eq!(one.body["current"], true, "{}", one.text);
    assert!(one.body.get("valid_to").is_none(), "{}", one.text);
    let named = call(Method::GET, format!("{base}/{id}?user_id=alice"), None).await;
    assert_eq!(named.status, 200, "{}", named.text);
    let bad = call(Method::GET, format!("{base}/not-a-uuid"), None).await;
    bad.problem(400, "invalid_input");
    assert_eq!(bad.body["field"], "memory_id");
    call(
        Method::GET,
        format!("{base}/0193a5c4-7b1e-7cc2-9a41-2f6f0d6e8b10"),
        None,
    )
    .await
    .problem(404, "not_found");

    // GET /{memory_id}/history
    let history = call(Method::GET, format!("{base}/{id}/history"), None).await;
    assert_eq!(history.status, 200, "{}", history.text);
    assert_eq!(history.body["memory_id"], id.as_str());
    assert_eq!(history.body["history"][0]["event"], "ADD");
    call(
        Method::GET,
        format!("{base}/0193a5c4-7b1e-7cc2-9a41-2f6f0d6e8b10/history"),
        None,
    )
    .await
    .problem(404, "not_found");

    // GET /stats/{user_id}
    let stats = call(Method::GET, format!("{base}/stats/alice"), None).await;
    assert_eq!(stats.status, 200, "{}", stats.text);
    assert_eq!(stats.body["memories"], 2, "{}", stats.text);
    assert!(stats.body["storage_bytes"].as_u64().unwrap() > 0);
    assert!(stats.body["oldest"].is_string() && stats.body["newest"].is_string());

    // GET /export/{user_id}: everything, as a download.
    let export = call(Method::GET, format!("{base}/export/alice"), None).await;
    assert_eq!(export.status, 200, "{}", export.text);
    assert!(
        export.header("content-disposition").contains("attachment"),
        "{:?}",
        export.headers
    );
    let mut exported = texts(&export.body, "memories");
    exported.sort();
    assert_eq!(
        exported,
        [
            "I prefer aisle seats on long flights",
            "My sister lives in Lisbon"
        ]
    );
    assert_eq!(export.body["memories"][0]["history"][0]["event"], "ADD");

    // DELETE /{memory_id}, then it is gone, and a second delete is a 404.
    let forgot = call(Method::DELETE, format!("{base}/{id}"), None).await;
    assert_eq!(forgot.status, 200, "{}", forgot.text);
    assert_eq!(forgot.body["deleted"], 1);
    call(Method::GET, format!("{base}/{id}"), None)
        .await
        .problem(404, "not_found");
    call(Method::DELETE, format!("{base}/{id}"), None)
        .await
        .problem(404, "not_found");

    // DELETE /users/{user_id}: the right to be forgotten, the user's own
    // key included; an admin key reads what is left.
    let gone = call(Method::DELETE, format!("{base}/users/alice"), None).await;
    assert_eq!(gone.status, 200, "{}", gone.text);
    assert_eq!(gone.body["deleted"], 1);
    assert_eq!(gone.body["keys_deleted"], 1);
    call(Method::GET, format!("{base}/stats/alice"), None)
        .await
        .problem(401, "unauthorized");
    let admin = server.create_key(&["--admin"]);
    let read = |path: String| {
        let (server, admin) = (&server, admin.clone());
        async move { server.call(Method::GET, &path, Some(&admin), None).await }
    };
    let stats = read(format!("{base}/stats/alice")).await;
    assert_eq!(stats.body["memories"], 0, "{}", stats.text);
    read(format!("{base}/{sister}?user_id=alice"))
        .await
        .problem(404, "not_found");
    let export = read(format!("{base}/export/alice")).await;
    assert_eq!(export.body["memories"], json!([]), "{}", export.text);
}

/// POST /forget takes the `forget` tool's arguments: with `all: true` and a
/// narrowing it deletes what that selects and reports how many, leaving the
/// user's keys; narrowing without `all: true` is a 400 naming the field.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forget_by_selection_over_rest() {
    let (server, key) = server().await;
    let call = |method: Method, path: &str, body: Option<Value>| {
        let (server, key) = (&server, key.clone());
        let path = format!("/api/v1/memory{path}");
        async move { server.call(method, &path, Some(&key), body).await }
    };
    for (text, topic, agent) in [
        ("I prefer aisle seats on long flights", "travel", "planner"),
        ("My passport expires in 2031", "travel", "planner"),
        ("I am allergic to peanuts", "health", "planner"),
        ("I train for a marathon", "health", "coach"),
    ] {
        let stored = call(
            Method::POST,
            "",
            Some(json!({"text": text, "agent_id": agent, "metadata": {"topic": topic}, "infer": false})),
        )
        .await;
        assert_eq!(stored.status, 200, "{}", stored.text);
    }

    let refused = call(
        Method::POST,
        "/forget",
        Some(json!({"user_id": "alice", "filters": {"topic": "travel"}})),
    )
    .await;
    refused.problem(400, "invalid_input");
    assert_eq!(refused.body["field"], "filters");
    assert!(refused.text.contains("all: true"), "{}", refused.text);
    call(
        Method::POST,
        "/forget",
        Some(json!({"user_id": "alice", "all": true, "before": "soon"})),
    )
    .await
    .problem(400, "invalid_input");
    call(
        Method::POST,
        "/forget",
        Some(json!({"user_id": "alice", "all": true, "colour": "red"})),
    )
    .await
    .problem(400, "invalid_input");

    let travel = call(
        Method::POST,
        "/forget",
        Some(json!({"user_id": "alice", "all": true, "filters": {"topic": "travel"}})),
    )
    .await;
    assert_eq!(travel.status, 200, "{}", travel.text);
    assert_eq!(travel.body["deleted"], 2, "{}", travel.text);
    assert!(travel.body.get("keys_deleted").is_none(), "{}", travel.text);

    // The key still works: only memories went.
    let coach = call(
        Method::POST,
        "/forget",
        Some(json!({"user_id": "alice", "all": true, "agent_id": "coach"})),
    )
    .await;
    assert_eq!(coach.status, 200, "{}", coach.text);
    assert_eq!(coach.body["deleted"], 1);
    let stats = call(Method::GET, "/stats/alice", None).await;
    assert_eq!(stats.body["memories"], 1, "{}", stats.text);
    let found = call(
        Method::POST,
        "/search",
        Some(json!({"query": "aisle seats passport marathon peanuts"})),
    )
    .await;
    assert_eq!(texts(&found.body, "results"), ["I am allergic to peanuts"]);

    // One memory by id, through the same route.
    let id = found.body["results"][0]["id"].as_str().unwrap().to_owned();
    let one = call(Method::POST, "/forget", Some(json!({"memory_id": id}))).await;
    assert_eq!(one.status, 200, "{}", one.text);
    assert_eq!(one.body["deleted"], 1);
    assert_eq!(one.body["memory_id"], id.as_str());

    // A user key may not select another user's memories.
    let admin = server.create_key(&["--admin"]);
    server
        .call(
            Method::POST,
            "/api/v1/memory",
            Some(&admin),
            Some(json!({"user_id": "bob", "text": "Bob keeps bees", "infer": false})),
        )
        .await;
    let theirs = call(
        Method::POST,
        "/forget",
        Some(json!({"user_id": "bob", "all": true, "before": "2999-01-01"})),
    )
    .await;
    theirs.problem(403, "forbidden");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_get_problems_with_stable_codes() {
    let (server, key) = server().await;
    let url = |path: &str| format!("{}{path}", server.base);
    let send = |request: reqwest::RequestBuilder| async {
        Reply::read(request.bearer_auth(&key).send().await.unwrap()).await
    };
    let http = &server.http;
    let search = url("/api/v1/memory/search");

    // Not JSON at all, JSON of the wrong shape, an unknown field.
    send(http.post(&search).body("query=aisle"))
        .await
        .problem(415, "unsupported_media_type");
    send(
        http.post(&search)
            .header("content-type", "application/json")
            .body("{not json"),
    )
    .await
    .problem(400, "invalid_input");
    let missing = send(http.post(&search).json(&json!({}))).await;
    missing.problem(400, "invalid_input");
    assert!(missing.text.contains("query"), "{}", missing.text);
    send(
        http.post(&search)
            .json(&json!({"query": "x", "colour": "red"})),
    )
    .await
    .problem(400, "invalid_input");
    let empty = send(http.post(url("/api/v1/memory")).json(&json!({}))).await;
    empty.problem(400, "invalid_input");
    assert_eq!(empty.body["field"], "text");
    // Over the body limit. The server answers before reading the rest and
    // closes that connection, so this request gets a client of its own (a
    // shared pool could hand the closed connection to the next request).
    let huge = "x".repeat(2 * 1024 * 1024);
    send(
        reqwest::Client::new()
            .post(&search)
            .json(&json!({ "query": huge })),
    )
    .await
    .problem(413, "payload_too_large");
    // Routes and methods that do not exist.
    send(http.get(url("/api/v1/nothing")))
        .await
        .problem(404, "not_found");
    send(http.put(url("/api/v1/memory/search")))
        .await
        .problem(405, "method_not_allowed");
    send(http.patch(url("/api/v1/memory/users/alice")))
        .await
        .problem(405, "method_not_allowed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_document_covers_every_route() {
    let (server, key) = server().await;
    // Public: a client reads it before it has a key.
    let doc = server
        .call(Method::GET, "/api/v1/openapi.json", None, None)
        .await;
    assert_eq!(doc.status, 200, "{}", doc.text);
    let doc = doc.body;
    assert_eq!(doc["openapi"], "3.1.0");
    assert_eq!(
        doc["components"]["securitySchemes"]["bearer"]["scheme"],
        "bearer"
    );
    let paths = doc["paths"].as_object().unwrap();
    let mut documented: Vec<(String, String)> = paths
        .iter()
        .flat_map(|(path, ops)| {
            ops.as_object()
                .unwrap()
                .keys()
                .map(|m| (m.clone(), path.clone()))
                .collect::<Vec<_>>()
        })
        .collect();
    documented.sort();
    let mut promised: Vec<(String, String)> = ROUTES
        .iter()
        .map(|(m, p)| (m.to_string(), p.to_string()))
        .collect();
    promised.sort();
    assert_eq!(documented, promised);

    for (method, path) in ROUTES {
        let op = &doc["paths"][path][method];
        assert!(op["operationId"].is_string(), "{method} {path}");
        let ok = &op["responses"]["200"]["content"]["application/json"]["schema"];
        assert!(ok.is_object(), "{method} {path} has no response schema");
        assert_eq!(
            op["responses"]["default"]["content"]["application/problem+json"]["schema"]["$ref"],
            "#/components/schemas/Problem"
        );
        for parameter in op["parameters"].as_array().unwrap() {
            if parameter["in"] == "path" {
                let name = parameter["name"].as_str().unwrap();
                assert!(path.contains(&format!("{{{name}}}")), "{path}: {name}");
            }
        }
        if method == "post" || method == "put" {
            assert!(op["requestBody"]["content"]["application/json"]["schema"].is_object());
        }
        // The documented route exists: it answers with something other
        // than "no route" or "method not allowed".
        let concrete = path
            .replace("{user_id}", "alice")
            .replace("{memory_id}", "0193a5c4-7b1e-7cc2-9a41-2f6f0d6e8b10");
        let method = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
        let body = match method {
            Method::POST => Some(json!({"text": "x", "query": "x"})),
            Method::PUT => Some(json!({"text": "x"})),
            _ => None,
        };
        let reply = server
            .call(method.clone(), &concrete, Some(&key), body)
            .await;
        assert!(
            ![404, 405].contains(&reply.status) || reply.text.contains("no memory"),
            "{method} {concrete}: {}",
            reply.text
        );
    }

    // The schemas describe what the routes return: a search result has the
    // fields the document lists as required.
    let schemas = &doc["components"]["schemas"];
    let recall = &schemas["RecallResult"];
    let mut required: Vec<&str> = recall["required"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    required.sort();
    assert_eq!(required, ["query", "results", "user_id"]);
    assert!(schemas["Problem"]["properties"]["code"].is_object());
    assert!(schemas["UserStats"]["properties"]["storage_bytes"].is_object());
}

/// A server with API keys on a fresh SQLite file, or on a fresh PostgreSQL
/// database (kept alive beside it); no rate limits.
async fn on_store(postgres: bool) -> (Server, Option<TestDatabase>) {
    if postgres {
        let db = TestDatabase::create().await;
        (Server::with_keys(Some(&db.url), &NO_LIMITS).await, Some(db))
    } else {
        (Server::with_keys(None, &NO_LIMITS).await, None)
    }
}

/// Remembers `text` as given for the key's user; the new memory's id.
async fn remember(server: &Server, key: &str, text: &str, metadata: Value) -> String {
    let stored = server
        .call(
            Method::POST,
            "/api/v1/memory",
            Some(key),
            Some(json!({"text": text, "metadata": metadata, "infer": false})),
        )
        .await;
    assert_eq!(stored.status, 200, "{}", stored.text);
    assert_eq!(stored.body["results"][0]["event"], "ADD", "{}", stored.text);
    stored.body["results"][0]["id"].as_str().unwrap().to_owned()
}

/// PUT corrects a memory as a supersede: the answer is a new version with a
/// new id that `replaces` the old; the old one stays readable (not current)
/// with the change in its history; search finds only the new text; another
/// user's key, an unknown id, a superseded memory, a bad text and a
/// read-only key are each refused with their problem, and change nothing.
async fn correcting_a_memory_keeps_the_old_version(postgres: bool) {
    let (server, _db) = on_store(postgres).await;
    let key = server.create_key(&["--user", "alice"]);
    let base = "/api/v1/memory";
    let id = remember(
        &server,
        &key,
        "I take my coffee black",
        json!({"topic": "food", "source": "chat"}),
    )
    .await;
    let put = |path: String, key: &str, body: Value| {
        let (server, key) = (&server, key.to_owned());
        async move {
            server
                .call(Method::PUT, &path, Some(&key), Some(body))
                .await
        }
    };
    let get = |path: String, key: &str| {
        let (server, key) = (&server, key.to_owned());
        async move { server.call(Method::GET, &path, Some(&key), None).await }
    };

    let corrected = put(
        format!("{base}/{id}"),
        &key,
        json!({"text": "I take my coffee with oat milk"}),
    )
    .await;
    assert_eq!(corrected.status, 200, "{}", corrected.text);
    let body = &corrected.body;
    assert_eq!(body["event"], "SUPERSEDE", "{}", corrected.text);
    assert_eq!(body["replaces"], id.as_str());
    assert_eq!(body["memory"], "I take my coffee with oat milk");
    assert_eq!(body["user_id"], "alice");
    assert_eq!(
        body["metadata"],
        json!({"topic": "food", "source": "chat"}),
        "kept"
    );
    let new_id = body["id"].as_str().unwrap().to_owned();
    assert_ne!(new_id, id, "a new version has a new id");

    // The new version is current; the old one is kept, closed, with why.
    let new = get(format!("{base}/{new_id}"), &key).await;
    assert_eq!(new.status, 200, "{}", new.text);
    assert_eq!(new.body["memory"], "I take my coffee with oat milk");
    assert_eq!(new.body["current"], true);
    let old = get(format!("{base}/{id}"), &key).await;
    assert_eq!(old.status, 200, "{}", old.text);
    assert_eq!(old.body["memory"], "I take my coffee black");
    assert_eq!(old.body["current"], false, "{}", old.text);
    assert!(old.body["valid_to"].is_string(), "{}", old.text);
    let history = get(format!("{base}/{id}/history"), &key).await;
    assert_eq!(history.status, 200, "{}", history.text);
    let events = &history.body["history"];
    assert_eq!(
        (events[0]["event"].as_str(), events[1]["event"].as_str()),
        (Some("ADD"), Some("SUPERSEDE")),
        "{}",
        history.text
    );
    assert_eq!(events[1]["old_memory"], "I take my coffee black");
    assert_eq!(events[1]["new_memory"], "I take my coffee with oat milk");
    let found = server
        .call(
            Method::POST,
            &format!("{base}/search"),
            Some(&key),
            Some(json!({"query": "coffee"})),
        )
        .await;
    assert_eq!(
        texts(&found.body, "results"),
        ["I take my coffee with oat milk"],
        "{}",
        found.text
    );

    // Audited as a write, in its transaction: one row naming both versions.
    let admin = server.create_key(&["--admin"]);
    let trail = get("/api/v1/audit?user_id=alice&op=correct".to_owned(), &admin).await;
    assert_eq!(trail.status, 200, "{}", trail.text);
    assert_eq!(trail.body["rows"][0]["outcome"], "ok", "{}", trail.text);
    assert_eq!(
        trail.body["rows"][0]["memory_ids"],
        json!([id, new_id]),
        "{}",
        trail.text
    );

    // New metadata replaces the old; the same text and metadata again
    // change nothing.
    let retagged = put(
        format!("{base}/{new_id}"),
        &key,
        json!({"text": "I take my coffee with oat milk", "metadata": {"topic": "drinks"}}),
    )
    .await;
    assert_eq!(retagged.status, 200, "{}", retagged.text);
    assert_eq!(retagged.body["event"], "SUPERSEDE");
    assert_eq!(retagged.body["metadata"], json!({"topic": "drinks"}));
    let latest = retagged.body["id"].as_str().unwrap().to_owned();
    let same = put(
        format!("{base}/{latest}"),
        &key,
        json!({"text": "I take my coffee with oat milk", "metadata": {"topic": "drinks"}}),
    )
    .await;
    assert_eq!(same.status, 200, "{}", same.text);
    assert_eq!(
        (same.body["event"].as_str(), same.body["id"].as_str()),
        (Some("NONE"), Some(latest.as_str()))
    );
    assert!(same.body.get("replaces").is_none(), "{}", same.text);

    // A superseded memory is a conflict: correct its successor.
    let stale = put(
        format!("{base}/{id}"),
        &key,
        json!({"text": "I drink tea now"}),
    )
    .await;
    stale.problem(409, "conflict");
    assert!(stale.text.contains("no longer current"), "{}", stale.text);
    // A text another current memory holds already: a conflict too.
    let other = remember(&server, &key, "I live in Lisbon", json!({})).await;
    put(
        format!("{base}/{other}"),
        &key,
        json!({"text": "I take my coffee with oat milk"}),
    )
    .await
    .problem(409, "conflict");

    // Bob's key: alice's memory is not found, exactly as an unknown one is.
    let bob = server.create_key(&["--user", "bob"]);
    let theirs = put(
        format!("{base}/{latest}"),
        &bob,
        json!({"text": "mine now"}),
    )
    .await;
    theirs.problem(404, "not_found");
    let unknown = put(
        format!("{base}/0193a5c4-7b1e-7cc2-9a41-2f6f0d6e8b10"),
        &bob,
        json!({"text": "mine now"}),
    )
    .await;
    unknown.problem(404, "not_found");
    assert_eq!(
        theirs.body["detail"]
            .as_str()
            .map(|d| d.replace(&latest, "ID")),
        unknown.body["detail"]
            .as_str()
            .map(|d| d.replace("0193a5c4-7b1e-7cc2-9a41-2f6f0d6e8b10", "ID")),
        "the two 404s differ only by the id"
    );
    // Naming alice in the query is refused, as on every route.
    put(
        format!("{base}/{latest}?user_id=alice"),
        &bob,
        json!({"text": "mine now"}),
    )
    .await
    .problem(403, "forbidden");

    // Bad input names the field; a read-only key may not write.
    for (body, field) in [
        (json!({}), "text"),
        (json!({"text": "   "}), "text"),
        (json!({"text": "a\u{7}b"}), "text"),
        (json!({"text": "x", "metadata": {"a\u{1}b": 1}}), "metadata"),
    ] {
        let bad = put(format!("{base}/{latest}"), &key, body.clone()).await;
        bad.problem(400, "invalid_input");
        assert_eq!(bad.body["field"], field, "{body}: {}", bad.text);
    }
    put(
        format!("{base}/{latest}"),
        &key,
        json!({"text": "x", "colour": "red"}),
    )
    .await
    .problem(400, "invalid_input");
    put(format!("{base}/not-a-uuid"), &key, json!({"text": "x"}))
        .await
        .problem(400, "invalid_input");
    let reader = server.create_key(&["--user", "alice", "--read-only"]);
    put(
        format!("{base}/{latest}"),
        &reader,
        json!({"text": "I quit coffee"}),
    )
    .await
    .problem(403, "forbidden");

    // None of the refusals changed anything.
    let now = get(format!("{base}/{latest}"), &key).await;
    assert_eq!(now.body["memory"], "I take my coffee with oat milk");
    assert_eq!(now.body["current"], true);
    let stats = get(format!("{base}/stats/alice"), &key).await;
    assert_eq!(stats.body["memories"], 2, "{}", stats.text);
}

/// GET / lists a user's current memories a page at a time: pages of 2 over
/// 5 memories, with a memory remembered and one forgotten between pages,
/// show every other memory once, in creation order, and the new one at the
/// end; `next_cursor` is null on the last page. Bad cursors and limits are
/// 400 naming the parameter; a user key lists only its own user.
async fn listing_pages_by_cursor(postgres: bool) {
    let (server, _db) = on_store(postgres).await;
    let key = server.create_key(&["--user", "alice"]);
    let list = |query: String| {
        let (server, key) = (&server, key.clone());
        async move {
            server
                .call(
                    Method::GET,
                    &format!("/api/v1/memory{query}"),
                    Some(&key),
                    None,
                )
                .await
        }
    };
    let mut ids = Vec::new();
    for text in [
        "I take my coffee black",
        "My sister lives in Lisbon",
        "I train for a marathon",
        "I am allergic to peanuts",
        "I prefer aisle seats",
    ] {
        ids.push(remember(&server, &key, text, json!({})).await);
    }
    let page_ids = |page: &Reply| -> Vec<String> {
        page.body["results"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["id"].as_str().unwrap().to_owned())
            .collect()
    };

    // All at once (the default limit), oldest first.
    let all = list(String::new()).await;
    assert_eq!(all.status, 200, "{}", all.text);
    assert_eq!(all.body["user_id"], "alice");
    assert_eq!(page_ids(&all), ids);
    assert_eq!(all.body["next_cursor"], Value::Null, "{}", all.text);
    assert_eq!(all.body["results"][0]["memory"], "I take my coffee black");

    // Pages of two, with a forget and a remember after the first.
    let first = list("?limit=2".into()).await;
    assert_eq!(first.status, 200, "{}", first.text);
    assert_eq!(page_ids(&first), ids[..2]);
    let gone = server
        .call(
            Method::DELETE,
            &format!("/api/v1/memory/{}", ids[3]),
            Some(&key),
            None,
        )
        .await;
    assert_eq!(gone.status, 200, "{}", gone.text);
    let late = remember(&server, &key, "I keep bees on the roof", json!({})).await;
    let mut seen = page_ids(&first);
    let mut cursor = first.body["next_cursor"].as_str().unwrap().to_owned();
    let mut pages = 1;
    loop {
        let page = list(format!("?limit=2&cursor={cursor}")).await;
        assert_eq!(page.status, 200, "{}", page.text);
        pages += 1;
        seen.extend(page_ids(&page));
        match page.body["next_cursor"].as_str() {
            Some(next) => cursor = next.to_owned(),
            None => break,
        }
        assert!(pages < 10, "the listing does not end");
    }
    let expected = [&ids[0], &ids[1], &ids[2], &ids[4], &late].map(String::clone);
    assert_eq!(seen, expected);
    assert_eq!(pages, 3, "2 + 2 + 1, and no empty page to find the end");

    // A cursor it did not give, a limit out of range, an unknown parameter.
    for query in [
        "?cursor=page-2",
        "?cursor=",
        "?limit=0",
        "?limit=101",
        "?offset=2",
    ] {
        let bad = list(query.into()).await;
        bad.problem(400, "invalid_input");
        if query.starts_with("?cursor") {
            assert_eq!(bad.body["field"], "cursor", "{query}: {}", bad.text);
        }
    }
    let tampered = format!("{}x", &cursor[1..]);
    list(format!("?cursor={tampered}"))
        .await
        .problem(400, "invalid_input");

    // Users: a user key lists its own (named or not), never another's; an
    // admin key lists anyone's, and bob has none.
    let named = list("?user_id=alice&limit=1".into()).await;
    assert_eq!(page_ids(&named), ids[..1]);
    list("?user_id=bob".into()).await.problem(403, "forbidden");
    let admin = server.create_key(&["--admin"]);
    let bobs = server
        .call(
            Method::GET,
            "/api/v1/memory/?user_id=bob",
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(bobs.status, 200, "{}", bobs.text);
    assert_eq!(bobs.body["results"], json!([]));
    assert_eq!(bobs.body["next_cursor"], Value::Null);
    let alices = server
        .call(
            Method::GET,
            "/api/v1/memory?user_id=alice&limit=100",
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(page_ids(&alices).len(), 5, "{}", alices.text);
}

macro_rules! on_both_stores {
    ($($test:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    super::$test(false).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    super::$test(true).await;
                }
            )*
        }
    };
}

on_both_stores!(
    correcting_a_memory_keeps_the_old_version,
    listing_pages_by_cursor
);

/// What a user expects of the default REST limit: following the README's
/// REST section by hand (its curl examples, then a look at every route it
/// lists, each twice) is never refused, with the shipped binary; and the
/// default still bounds a user, at 120 requests a minute (the allowance
/// refills meanwhile, 2 a second).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_examples_fit_the_default_rest_limit() {
    let server = Server::start_process_with(&[("ENGRAM_AUTH", "keys")]).await;
    let key = server.create_key(&["--user", "alice"]);
    let started = std::time::Instant::now();
    let base = "/api/v1/memory";
    let made = std::cell::Cell::new(0usize);
    let call = async |method: Method, path: String, body: Option<Value>| {
        made.set(made.get() + 1);
        let reply = server.call(method.clone(), &path, Some(&key), body).await;
        assert_ne!(
            reply.status,
            429,
            "request {} ({method} {path}): {}",
            made.get(),
            reply.text
        );
        reply
    };
    for _ in 0..2 {
        let body = json!({"text": "I take my coffee black"});
        call(Method::POST, base.into(), Some(body)).await;
        let body = json!({"query": "coffee"});
        call(Method::POST, format!("{base}/search"), Some(body)).await;
    }
    let listed = call(Method::GET, format!("{base}?limit=2"), None).await;
    let id = listed.body["results"][0]["id"].as_str().unwrap().to_owned();
    let body = json!({"text": "I take my coffee with oat milk"});
    let corrected = call(Method::PUT, format!("{base}/{id}"), Some(body)).await;
    assert_eq!(corrected.status, 200, "{}", corrected.text);
    for path in [
        format!("{base}/{id}"),
        format!("{base}/{id}/history"),
        format!("{base}/context/alice"),
        format!("{base}/stats/alice"),
        format!("{base}/export/alice"),
        format!("{base}?limit=2"),
    ] {
        call(Method::GET, path.clone(), None).await;
        call(Method::GET, path, None).await;
    }
    assert!(made.get() >= 17, "{}", made.get());

    // Still a limit: past the minute's allowance (and what refilled while
    // these requests ran) the next request is refused.
    let limit = engram::config::DEFAULT_REST_USER_RATE_LIMIT as usize;
    assert_eq!(limit, 120);
    let stats = format!("{base}/stats/alice");
    let refused = loop {
        let reply = server.call(Method::GET, &stats, Some(&key), None).await;
        if reply.status == 429 {
            break reply;
        }
        assert_eq!(reply.status, 200, "{}", reply.text);
        made.set(made.get() + 1);
        assert!(made.get() < 10 * limit, "never refused");
    };
    refused.problem(429, "rate_limited");
    assert!(
        refused.text.contains("ENGRAM_REST_USER_RATE_LIMIT"),
        "{}",
        refused.text
    );
    let refilled = (started.elapsed().as_secs_f64() * limit as f64 / 60.0).ceil() as usize;
    assert!(
        (limit..=limit + refilled).contains(&made.get()),
        "refused after {} requests; allowed {limit} + {refilled} refilled",
        made.get()
    );
}
