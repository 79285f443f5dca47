//! One rule for odd input, on every door and both stores: NUL and other
//! control characters, invisible format characters in ids, ids in NFC,
//! bodies that are not objects, unknown or undecodable query parameters,
//! the forms an integer may take, and duplicate credentials. Through the
//! HTTP app (REST and MCP over Streamable HTTP), on SQLite and on
//! PostgreSQL + pgvector.

use crate::common;

use common::http::{NO_LIMITS, Reply, Server};
use common::postgres::TestDatabase;
use common::{ok, tool_err};
use reqwest::Method;
use rmcp::ServiceExt;
use rmcp::model::CallToolRequestParams;
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use serde_json::{Value, json};

async fn mcp(server: &Server, key: &str) -> common::Client {
    let config = StreamableHttpClientTransportConfig::with_uri(format!("{}/mcp", server.base))
        .auth_header(key.to_owned());
    ().serve(StreamableHttpClientTransport::from_config(config))
        .await
        .expect("MCP handshake with a key")
}

/// The REST route a tool's arguments go to as a body.
fn route(tool: &str) -> &'static str {
    match tool {
        "remember" => "/api/v1/memory",
        "recall" => "/api/v1/memory/search",
        other => panic!("no body route for {other}"),
    }
}

/// (tool, arguments, the field refused). Every other id is `matrix`'s, so
/// nothing may be stored for `matrix` at the end.
fn refused() -> Vec<(&'static str, Value, &'static str)> {
    let m = "matrix";
    vec![
        (
            "remember",
            json!({"user_id": m, "text": "tea\u{0}"}),
            "text",
        ),
        (
            "remember",
            json!({"user_id": m, "text": "tea\u{7}"}),
            "text",
        ),
        (
            "remember",
            json!({"user_id": m, "text": "\u{1b}[2Jtea"}),
            "text",
        ),
        (
            "remember",
            json!({"user_id": m, "messages": [{"role": "user", "content": "tea\u{0}"}]}),
            "messages",
        ),
        (
            "remember",
            json!({"user_id": m, "text": "tea", "metadata": {"k": "v\u{0}"}}),
            "metadata",
        ),
        (
            "remember",
            json!({"user_id": m, "text": "tea", "metadata": {"k\u{0}": "v"}}),
            "metadata",
        ),
        (
            "remember",
            json!({"user_id": m, "text": "tea", "metadata": {"k": {"deep": ["\u{0}"]}}}),
            "metadata",
        ),
        (
            "remember",
            json!({"user_id": "matrix\u{0}", "text": "tea"}),
            "user_id",
        ),
        (
            "remember",
            json!({"user_id": "matrix\u{200b}", "text": "tea"}),
            "user_id",
        ),
        (
            "remember",
            json!({"user_id": "\u{feff}matrix", "text": "tea"}),
            "user_id",
        ),
        (
            "remember",
            json!({"user_id": "mat\u{ad}rix", "text": "tea"}),
            "user_id",
        ),
        (
            "remember",
            json!({"user_id": m, "agent_id": "planner\u{202e}", "text": "tea"}),
            "agent_id",
        ),
        (
            "remember",
            json!({"user_id": m, "run_id": "\u{2066}run\u{2069}", "text": "tea"}),
            "run_id",
        ),
        (
            "remember",
            json!({"user_id": m, "run_id": "run\u{200f}", "text": "tea"}),
            "run_id",
        ),
        (
            "recall",
            json!({"user_id": m, "query": "tea\u{0}"}),
            "query",
        ),
        (
            "recall",
            json!({"user_id": m, "query": "tea", "filters": {"k": "v\u{0}"}}),
            "filters",
        ),
        (
            "recall",
            json!({"user_id": m, "query": "tea", "filters": {"k\u{0}": "v"}}),
            "filters",
        ),
        (
            "recall",
            json!({"user_id": "matrix\u{200b}", "query": "tea"}),
            "user_id",
        ),
    ]
}

async fn the_matrix(database_url: Option<&str>) {
    let server = Server::with_keys(database_url, &NO_LIMITS).await;
    let admin = server.create_key(&["--admin"]);
    let client = mcp(&server, &admin).await;

    for (tool, args, field) in refused() {
        let rest = server
            .call(Method::POST, route(tool), Some(&admin), Some(args.clone()))
            .await;
        rest.problem(400, "invalid_input");
        assert_eq!(
            rest.body["field"], field,
            "REST {tool} {args}: {}",
            rest.text
        );
        let said = tool_err(&client, tool, args.clone()).await;
        assert!(
            said.contains(&format!("`{field}`")),
            "MCP {tool} {args}: {said}"
        );
    }
    // The context: its focus over MCP and in a query string, its user in a path.
    let said = tool_err(
        &client,
        "user_context",
        json!({"user_id": "matrix", "query": "tea\u{0}"}),
    )
    .await;
    assert!(said.contains("`query`"), "{said}");
    for (path, field) in [
        ("/api/v1/memory/context/matrix?query=tea%00", "query"),
        ("/api/v1/memory/context/matrix%E2%80%8B", "user_id"),
        (
            "/api/v1/memory/context/matrix?agent_id=a%E2%80%AEb",
            "agent_id",
        ),
        ("/api/v1/memory/stats/matrix%00", "user_id"),
    ] {
        let reply = server.call(Method::GET, path, Some(&admin), None).await;
        reply.problem(400, "invalid_input");
        assert_eq!(reply.body["field"], field, "{path}: {}", reply.text);
    }
    let stats = server
        .call(
            Method::GET,
            "/api/v1/memory/stats/matrix",
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(stats.body["memories"], 0, "{}", stats.text);

    // Tabs and line breaks are text; ids are one spelling (NFC).
    let kept = ok(
        &client,
        "remember",
        json!({"user_id": "Jose\u{301}", "infer": false,
               "text": "Line one\n\tline two\r\n", "metadata": {"note": "a\tb\nc"}}),
    )
    .await;
    assert_eq!(kept["user_id"], "Jos\u{e9}", "{kept}");
    let rest = server
        .call(
            Method::POST,
            "/api/v1/memory",
            Some(&admin),
            Some(json!({"user_id": "Jos\u{e9}", "text": "Tea\tat five"})),
        )
        .await;
    assert_eq!(rest.status, 200, "{}", rest.text);
    let stats = server
        .call(
            Method::GET,
            "/api/v1/memory/stats/Jose%CC%81",
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(stats.body["user_id"], "Jos\u{e9}", "{}", stats.text);
    assert_eq!(stats.body["memories"], 2, "{}", stats.text);
    client.cancel().await.ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_and_invisible_characters_are_refused_on_sqlite() {
    the_matrix(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_and_invisible_characters_are_refused_on_postgres() {
    let db = TestDatabase::create().await;
    the_matrix(Some(&db.url)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_are_objects_and_queries_hold_known_utf8_parameters() {
    let server = Server::with_keys(None, &NO_LIMITS).await;
    let key = server.create_key(&["--user", "alice"]);
    let send = |request: reqwest::RequestBuilder| {
        let key = key.clone();
        async move { Reply::read(request.bearer_auth(key).send().await.unwrap()).await }
    };
    let url = |path: &str| format!("{}/api/v1/memory{path}", server.base);
    let http = &server.http;

    // A positional array where an object is expected (serde reads a struct
    // from one, field by field).
    for (path, body) in [
        (
            "",
            json!(["I like tea", null, null, null, null, null, null]),
        ),
        ("", json!(["I like tea"])),
        ("/search", json!(["tea", null, null, null, null, null])),
        ("", json!("I like tea")),
    ] {
        let reply = send(http.post(url(path)).json(&body)).await;
        reply.problem(400, "invalid_input");
        assert_eq!(reply.body["field"], "body", "{body}: {}", reply.text);
    }
    let nested = send(
        http.post(url(""))
            .json(&json!({"messages": [["user", "I like tea"]]})),
    )
    .await;
    nested.problem(400, "invalid_input");
    assert!(nested.text.contains("not an object"), "{}", nested.text);
    let stats = send(http.get(url("/stats/alice"))).await;
    assert_eq!(stats.body["memories"], 0, "{}", stats.text);

    // Unknown query parameters, on routes with some and routes with none.
    let stored = send(http.post(url("")).json(&json!({"text": "I like tea"}))).await;
    assert_eq!(stored.status, 200, "{}", stored.text);
    let id = stored.body["results"][0]["id"].as_str().unwrap().to_owned();
    for (method, path) in [
        (Method::POST, "/search?user_id=alice".to_owned()),
        (Method::POST, "?user_id=alice".to_owned()),
        (Method::GET, "/context/alice?user_id=alice".to_owned()),
        (Method::GET, "/stats/alice?user_id=alice".to_owned()),
        (Method::GET, "/export/alice?user_id=alice".to_owned()),
        (
            Method::GET,
            format!("/{id}?user_id=alice&user_id=bob&colour=red"),
        ),
        (Method::GET, format!("/{id}/history?colour=red")),
        (Method::DELETE, "/users/alice?colour=red".to_owned()),
    ] {
        let mut request = http.request(method.clone(), url(&path));
        if method == Method::POST {
            request = request.json(&json!({"query": "tea", "text": "tea"}));
        }
        let reply = send(request).await;
        reply.problem(400, "invalid_input");
        let named = if path.contains("colour") && !path.contains("user_id=bob") {
            "colour"
        } else {
            "user_id"
        };
        assert!(
            reply.text.contains(named),
            "{method} {path}: {}",
            reply.text
        );
    }
    let search = send(
        http.post(url("/search?user_id=alice"))
            .json(&json!({"query": "tea"})),
    )
    .await;
    let detail = search.body["detail"].as_str().unwrap_or_default();
    assert!(
        detail.contains("unknown field `user_id`")
            && detail.contains("this route takes no query parameters"),
        "{detail}"
    );
    let doc = server
        .call(Method::GET, "/api/v1/openapi.json?colour=red", None, None)
        .await;
    doc.problem(400, "invalid_input");
    // The memory and the user are still there.
    let stats = send(http.get(url("/stats/alice"))).await;
    assert_eq!(stats.body["memories"], 1, "{}", stats.text);

    // Percent-escapes that are not UTF-8: in a query as in a path.
    for path in [
        "/context/alice?query=%FF",
        "/context/alice?%FF=1",
        "/context/%FF",
    ] {
        let reply = send(http.get(url(path))).await;
        reply.problem(400, "invalid_input");
    }
    let reply = send(http.get(url("/context/alice?query=%FF"))).await;
    assert!(reply.text.contains("`query`"), "{}", reply.text);
    let fine = send(http.get(url("/context/alice?query=caf%C3%A9&limit=5"))).await;
    assert_eq!(fine.status, 200, "{}", fine.text);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_integer_takes_the_same_forms_on_every_door() {
    let server = Server::with_keys(None, &NO_LIMITS).await;
    let key = server.create_key(&["--user", "alice"]);
    let client = mcp(&server, &key).await;
    let search = |limit: Value| {
        let (server, key) = (&server, key.clone());
        async move {
            server
                .call(
                    Method::POST,
                    "/api/v1/memory/search",
                    Some(&key),
                    Some(json!({"query": "tea", "limit": limit})),
                )
                .await
        }
    };
    for limit in [json!(5), json!(5.0), json!("5"), json!("5.0")] {
        let rest = search(limit.clone()).await;
        assert_eq!(rest.status, 200, "REST limit {limit}: {}", rest.text);
        ok(&client, "recall", json!({"query": "tea", "limit": limit})).await;
        let context = server
            .call(
                Method::GET,
                &format!(
                    "/api/v1/memory/context/alice?limit={}",
                    limit.as_str().map_or(limit.to_string(), str::to_owned)
                ),
                Some(&key),
                None,
            )
            .await;
        assert_eq!(
            context.status, 200,
            "context limit {limit}: {}",
            context.text
        );
    }
    for limit in [json!(5.5), json!("5.5"), json!("five"), json!(true)] {
        let rest = search(limit.clone()).await;
        rest.problem(400, "invalid_input");
        assert!(
            rest.text.contains("integer"),
            "REST limit {limit}: {}",
            rest.text
        );
        let args = json!({"query": "tea", "limit": limit});
        let refused = client
            .call_tool(
                CallToolRequestParams::new("recall")
                    .with_arguments(args.as_object().cloned().unwrap_or_default()),
            )
            .await;
        let said = match refused {
            Err(e) => e.to_string(),
            Ok(result) => {
                assert_eq!(result.is_error, Some(true), "MCP limit {limit}: {result:?}");
                format!("{:?}", result.content)
            }
        };
        assert!(said.contains("integer"), "MCP limit {limit}: {said}");
    }
    let reply = server
        .call(
            Method::GET,
            "/api/v1/memory/context/alice?limit=5.5",
            Some(&key),
            None,
        )
        .await;
    reply.problem(400, "invalid_input");
    client.cancel().await.ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_authorization_headers_are_refused() {
    let server = Server::with_keys(None, &NO_LIMITS).await;
    let alice = server.create_key(&["--user", "alice"]);
    let bob = server.create_key(&["--user", "bob"]);
    for path in ["/api/v1/memory/stats/alice", "/mcp"] {
        for (first, second) in [(&alice, &bob), (&alice, &alice), (&bob, &alice)] {
            let reply = Reply::read(
                server
                    .http
                    .get(format!("{}{path}", server.base))
                    .header("authorization", format!("Bearer {first}"))
                    .header("authorization", format!("Bearer {second}"))
                    .send()
                    .await
                    .unwrap(),
            )
            .await;
            reply.problem(400, "invalid_input");
            assert_eq!(reply.body["field"], "Authorization", "{}", reply.text);
        }
    }
    let one = server
        .call(
            Method::GET,
            "/api/v1/memory/stats/alice",
            Some(&alice),
            None,
        )
        .await;
    assert_eq!(one.status, 200, "{}", one.text);
}
