//! The legacy SSE transport under a client that misbehaves: one that posts
//! but stops reading its stream is cut off rather than buffered for, a
//! post refused before it reaches the session (too large, over the rate
//! limit, an odd query string, not JSON) is still answered on the stream,
//! with its id, and a call over its user's rate limit is refused there.

use crate::common;

use std::time::Duration;

use common::http::{Reply, Server};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// `GET /sse` on a raw socket with a small receive buffer, read up to the
/// `endpoint` event: the socket (which the caller may then leave unread)
/// and the path to post to.
async fn open_raw(base: &str, key: Option<&str>) -> (tokio::net::TcpStream, String) {
    let address = base.trim_start_matches("http://").parse().unwrap();
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut stream = socket.connect(address).await.unwrap();
    let auth = key.map_or(String::new(), |k| format!("Authorization: Bearer {k}\r\n"));
    let request = format!("GET /sse HTTP/1.1\r\nHost: 127.0.0.1\r\n{auth}\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut seen = String::new();
    let mut buffer = [0u8; 4096];
    let endpoint = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let n = stream.read(&mut buffer).await.unwrap();
            assert!(n > 0, "the stream ended: {seen}");
            seen.push_str(&String::from_utf8_lossy(&buffer[..n]));
            if let Some(at) = seen.find("data: /messages") {
                let rest = &seen[at + "data: ".len()..];
                if let Some(end) = rest.find(['\r', '\n']) {
                    return rest[..end].to_owned();
                }
            }
        }
    })
    .await
    .expect("no endpoint event");
    assert!(seen.starts_with("HTTP/1.1 200"), "{seen}");
    (stream, endpoint)
}

async fn post(http: &reqwest::Client, url: &str, key: Option<&str>, body: String) -> u16 {
    let mut request = http
        .post(url)
        .header("content-type", "application/json")
        .body(body);
    if let Some(key) = key {
        request = request.bearer_auth(key);
    }
    request.send().await.unwrap().status().as_u16()
}

fn initialize() -> String {
    json!({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
        "protocolVersion": "2024-11-05", "capabilities": {},
        "clientInfo": {"name": "t", "version": "1"}}})
    .to_string()
}

/// A field of `/proc/PID/status`, in kB.
#[cfg(target_os = "linux")]
fn proc_kb(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status
        .lines()
        .find(|l| l.starts_with(field))
        .unwrap_or_else(|| panic!("no {field} in {status}"));
    line[field.len()..]
        .trim()
        .trim_end_matches(" kB")
        .parse()
        .unwrap()
}

/// A client that opens a stream, never reads it and posts 3,000 large
/// `user_context` calls: before the bound, every post got 202 while the
/// replies piled up in engram's memory (hundreds of MB). Now the stream
/// falls behind its queue, is closed, its session ends (later posts: 404),
/// and the process's peak memory grows by a bounded amount.
#[cfg(target_os = "linux")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_that_is_not_read_is_closed_and_memory_stays_bounded() {
    let server = Server::start_process().await;
    let pid = server.child.as_ref().and_then(|c| c.id()).unwrap();
    let http = reqwest::Client::new();
    // 100 memories of ~1 KB: each user_context reply is ~100 KB of JSON.
    for i in 0..100 {
        let words: Vec<String> = (0..150).map(|w| format!("w{i}x{w}")).collect();
        let stored = server
            .call(
                reqwest::Method::POST,
                "/api/v1/memory",
                None,
                Some(json!({"user_id": "u", "infer": false,
                    "text": format!("Fact {i}: {}", words.join(" "))})),
            )
            .await;
        assert_eq!(stored.status, 200, "{}", stored.text);
    }
    let (mut stream, endpoint) = open_raw(&server.base, None).await;
    let target = format!("{}{endpoint}", server.base);
    assert_eq!(post(&http, &target, None, initialize()).await, 202);
    let initialized = json!({"jsonrpc": "2.0", "method": "notifications/initialized"});
    assert_eq!(
        post(&http, &target, None, initialized.to_string()).await,
        202
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = proc_kb(pid, "VmRSS:");

    let mut accepted = 0;
    let mut refused = None;
    for id in 1..=3000 {
        let call = json!({"jsonrpc": "2.0", "id": id, "method": "tools/call", "params": {
            "name": "user_context", "arguments": {"user_id": "u", "limit": 100}}});
        match post(&http, &target, None, call.to_string()).await {
            202 => accepted += 1,
            404 => {
                refused = Some(id);
                break;
            }
            other => panic!("post {id} answered {other}"),
        }
    }
    let peak = proc_kb(pid, "VmHWM:");
    let grown_mb = peak.saturating_sub(before) / 1024;
    assert!(
        refused.is_some(),
        "all 3000 posts accepted for a stream nobody reads (peak grew {grown_mb} MB)"
    );
    assert!(
        grown_mb < 120,
        "peak RSS grew {grown_mb} MB over {before} kB for {accepted} replies nobody read"
    );
    eprintln!("{accepted} posts accepted before the session ended; peak RSS +{grown_mb} MB");

    // The stream was closed: reading it now reaches the end of the response.
    let mut tail = Vec::new();
    let mut buffer = vec![0u8; 64 * 1024];
    let ended = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            let n = stream.read(&mut buffer).await.unwrap();
            tail.extend_from_slice(&buffer[..n]);
            let keep = tail.len().saturating_sub(16);
            tail.drain(..keep);
            if n == 0 || tail.ends_with(b"\r\n0\r\n\r\n") {
                return;
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "the stream stayed open");

    // Said once, as a warning; the replies it dropped are not each an error.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let logs = server.logs.lock().unwrap().clone();
    let fell_behind = logs
        .iter()
        .filter(|l| l.contains("fell behind reading its stream"))
        .count();
    assert_eq!(fell_behind, 1, "{logs:#?}");
    let errors: Vec<&String> = logs.iter().filter(|l| l.contains("ERROR")).collect();
    assert!(errors.is_empty(), "{errors:#?}");
}

/// Reads the raw stream until a `message` event whose JSON has `id`.
async fn answer_on(stream: &mut tokio::net::TcpStream, seen: &mut String, id: &Value) -> Value {
    let mut buffer = [0u8; 8192];
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            for line in seen.lines() {
                if let Some(data) = line.strip_prefix("data: ")
                    && let Ok(message) = serde_json::from_str::<Value>(data)
                    && message["id"] == *id
                {
                    return message;
                }
            }
            let n = stream.read(&mut buffer).await.unwrap();
            assert!(n > 0, "the stream ended: {seen}");
            seen.push_str(&String::from_utf8_lossy(&buffer[..n]));
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no answer with id {id} on the stream: {seen}"))
}

/// What an SDK client waits for: a post refused with 400, 413 or 429 is
/// answered on the stream too, with the request's id, and the HTTP status
/// stays what it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_posts_are_answered_on_the_stream_with_their_id() {
    // The stream and three posts; the third is over the limit.
    let server = Server::with_keys(None, &[("ENGRAM_MCP_RATE_LIMIT", "3")]).await;
    let key = server.create_key(&["--user", "alice"]);
    let http = reqwest::Client::new();
    let (mut stream, endpoint) = open_raw(&server.base, Some(&key)).await;
    let target = format!("{}{endpoint}", server.base);
    let mut seen = String::new();

    // Not JSON, though its id can be read: -32700.
    let broken = r#"{"jsonrpc":"2.0","id":"p-1","method":"tools/call","params":{"#;
    assert_eq!(post(&http, &target, Some(&key), broken.into()).await, 400);
    let answer = answer_on(&mut stream, &mut seen, &json!("p-1")).await;
    assert_eq!(answer["error"]["code"], -32700, "{answer}");

    // Over 1 MiB, its id last (as the TypeScript SDK writes it): -32600.
    let text = "a".repeat(1024 * 1024 + 10);
    let large = format!(
        r#"{{"method":"tools/call","params":{{"name":"remember","arguments":{{"text":"{text}"}}}},"jsonrpc":"2.0","id":41}}"#
    );
    assert_eq!(post(&http, &target, Some(&key), large).await, 413);
    let answer = answer_on(&mut stream, &mut seen, &json!(41)).await;
    assert_eq!(answer["error"]["code"], -32600, "{answer}");
    assert!(
        answer["error"]["message"]
            .as_str()
            .unwrap()
            .contains("larger than"),
        "{answer}"
    );

    // Over the rate limit: a server error that says when to retry.
    let call = json!({"jsonrpc": "2.0", "id": 42, "method": "tools/call", "params": {
        "name": "user_context", "arguments": {}}});
    let limited = http
        .post(&target)
        .bearer_auth(&key)
        .header("content-type", "application/json")
        .body(call.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(limited.status().as_u16(), 429);
    let retry: u64 = limited.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let answer = answer_on(&mut stream, &mut seen, &json!(42)).await;
    let error = &answer["error"];
    assert_eq!(error["code"], -32029, "{answer}");
    assert_eq!(error["data"]["retry_after_secs"], retry, "{answer}");
    assert!(
        error["message"]
            .as_str()
            .unwrap()
            .contains(&format!("retry after {retry} seconds")),
        "{answer}"
    );
}

/// `/sse` takes no query parameters and `/messages` only `sessionId`:
/// anything else, or a value that is not UTF-8 once decoded, is 400; a
/// refused post whose session can still be told is answered on its stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_strings_on_sse_and_messages_are_refused() {
    let server = Server::start().await;
    let http = reqwest::Client::new();
    for query in ["?colour=red", "?sessionId=abc", "?x=%FF", "?%FF"] {
        let url = format!("{}/sse{query}", server.base);
        let reply = Reply::read(http.get(&url).send().await.unwrap()).await;
        reply.problem(400, "invalid_input");
    }

    let (mut stream, endpoint) = open_raw(&server.base, None).await;
    let target = format!("{}{endpoint}", server.base);
    let mut seen = String::new();
    let send = |url: String, id: &str| {
        let body = json!({"jsonrpc": "2.0", "id": id, "method": "ping"}).to_string();
        let request = http
            .post(url)
            .header("content-type", "application/json")
            .body(body);
        async move { Reply::read(request.send().await.unwrap()).await }
    };
    // Beside the session: refused, and answered on the session's stream.
    for (query, id, named) in [("&colour=red", "q-1", "`colour`"), ("&x=%FF", "q-2", "`x`")] {
        let reply = send(format!("{target}{query}"), id).await;
        reply.problem(400, "invalid_input");
        assert!(reply.text.contains(named), "{query}: {}", reply.text);
        let answer = answer_on(&mut stream, &mut seen, &json!(id)).await;
        assert_eq!(answer["error"]["code"], -32600, "{answer}");
        let message = answer["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains(named), "{message}");
    }
    // No session, or no one session: refused on the POST alone.
    let base = &server.base;
    for url in [
        format!("{base}/messages"),
        format!("{base}/messages?colour=red"),
        format!("{base}/messages?sessionId=%FF"),
        format!("{target}&sessionId=another"),
    ] {
        send(url, "q-3").await.problem(400, "invalid_input");
    }
    // The session still serves a well-formed post.
    assert_eq!(post(&http, &target, None, initialize()).await, 202);
    let answer = answer_on(&mut stream, &mut seen, &json!(0)).await;
    assert!(answer["result"]["serverInfo"].is_object(), "{answer}");
}

/// A session's tool call over its user's limit is refused on the stream as
/// a JSON-RPC error with the wait; the post itself was accepted (the key's
/// own limit was not reached).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_over_its_users_limit_is_refused_on_the_stream() {
    let server = Server::with_keys(None, &[("ENGRAM_MCP_USER_RATE_LIMIT", "2")]).await;
    let key = server.create_key(&["--user", "alice"]);
    let http = reqwest::Client::new();
    let (mut stream, endpoint) = open_raw(&server.base, Some(&key)).await;
    let target = format!("{}{endpoint}", server.base);
    let mut seen = String::new();
    assert_eq!(post(&http, &target, Some(&key), initialize()).await, 202);
    answer_on(&mut stream, &mut seen, &json!(0)).await;
    let initialized = json!({"jsonrpc": "2.0", "method": "notifications/initialized"});
    let status = post(&http, &target, Some(&key), initialized.to_string()).await;
    assert_eq!(status, 202);
    for id in 1..=3 {
        let call = json!({"jsonrpc": "2.0", "id": id, "method": "tools/call", "params": {
            "name": "user_context", "arguments": {}}});
        assert_eq!(
            post(&http, &target, Some(&key), call.to_string()).await,
            202
        );
        let answer = answer_on(&mut stream, &mut seen, &json!(id)).await;
        if id <= 2 {
            assert_eq!(
                answer["result"]["structuredContent"]["user_id"], "alice",
                "{answer}"
            );
            continue;
        }
        let error = &answer["error"];
        assert_eq!(error["code"], -32029, "{answer}");
        let wait = error["data"]["retry_after_secs"]
            .as_u64()
            .unwrap_or_default();
        assert!((1..=30).contains(&wait), "{answer}");
        let message = error["message"].as_str().unwrap_or_default();
        assert!(
            message.contains(&format!("retry after {wait} s")),
            "{message}"
        );
    }
}
