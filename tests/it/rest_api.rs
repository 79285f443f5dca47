//! The REST API over real HTTP against the real binary: every route's
//! success and error shapes, and the OpenAPI document covering every route.

use crate::common;

use common::http::{Reply, Server};
use reqwest::Method;
use serde_json::{Value, json};

/// The routes the API promises, as (method, OpenAPI path).
const ROUTES: [(&str, &str); 11] = [
    ("post", "/api/v1/memory"),
    ("post", "/api/v1/memory/search"),
    ("post", "/api/v1/memory/forget"),
    ("get", "/api/v1/memory/context/{user_id}"),
    ("get", "/api/v1/memory/stats/{user_id}"),
    ("get", "/api/v1/memory/export/{user_id}"),
    ("delete", "/api/v1/memory/users/{user_id}"),
    ("get", "/api/v1/memory/{memory_id}"),
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
        if method == "post" {
            assert!(op["requestBody"]["content"]["application/json"]["schema"].is_object());
        }
        // The documented route exists: it answers with something other
        // than "no route" or "method not allowed".
        let concrete = path
            .replace("{user_id}", "alice")
            .replace("{memory_id}", "0193a5c4-7b1e-7cc2-9a41-2f6f0d6e8b10");
        let method = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
        let body = (method == Method::POST).then(|| json!({"text": "x", "query": "x"}));
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
