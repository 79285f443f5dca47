//! Raw JSON-RPC over the binary's stdio, as a sloppy or newer client would
//! speak it: every line sent gets an answer or a JSON-RPC error (never
//! silence), string ids are echoed, and stdout carries nothing but protocol
//! (logs go to stderr even at debug level).

use std::process::Stdio;
use std::time::Duration;

use serde_json::{Value, json};

use crate::common::stdio::RawStdio;

/// engram at debug level, its stderr dropped: stdout must stay pure protocol.
fn start() -> RawStdio {
    RawStdio::start("debug", &[], Stdio::null())
}

#[tokio::test]
async fn every_line_gets_an_answer_and_stdout_is_pure_protocol() {
    let mut raw = start();

    // A 2026-07-28 client probes with server/discover (string id) before initialize.
    let discover = raw
        .exchange(
            &json!({"jsonrpc": "2.0", "id": "probe-1", "method": "server/discover", "params": {"_meta": {
                "io.modelcontextprotocol/protocolVersion": "2026-07-28",
                "io.modelcontextprotocol/clientInfo": {"name": "raw", "version": "1"},
                "io.modelcontextprotocol/clientCapabilities": {}}}})
            .to_string(),
        )
        .await;
    assert_eq!(discover["id"], "probe-1");
    assert!(
        discover.get("result").is_some() || discover.get("error").is_some(),
        "{discover}"
    );

    // A bare discover (no _meta) still gets an answer.
    let bare = raw
        .exchange(r#"{"jsonrpc":"2.0","id":"probe-2","method":"server/discover"}"#)
        .await;
    assert_eq!(bare["id"], "probe-2");
    assert!(
        bare.get("result").is_some() || bare.get("error").is_some(),
        "{bare}"
    );

    // Garbage and malformed messages get JSON-RPC errors.
    let parse = raw.exchange("this is not json").await;
    assert_eq!(parse["error"]["code"], -32700);
    assert_eq!(parse["id"], Value::Null);
    let invalid = raw.exchange(r#"{"jsonrpc":"2.0","id":"x-1"}"#).await;
    assert_eq!(invalid["error"]["code"], -32600);
    assert_eq!(invalid["id"], "x-1");
    let batch = raw
        .exchange(r#"[{"jsonrpc":"2.0","id":1,"method":"ping"}]"#)
        .await;
    assert_eq!(batch["error"]["code"], -32600);

    // The classic handshake, with a string id.
    let init = raw
        .exchange(
            &json!({"jsonrpc": "2.0", "id": "init-1", "method": "initialize", "params": {
                "protocolVersion": "2025-06-18", "capabilities": {},
                "clientInfo": {"name": "raw", "version": "1"}}})
            .to_string(),
        )
        .await;
    assert_eq!(init["id"], "init-1");
    assert_eq!(init["result"]["serverInfo"]["name"], "engram");
    raw.send(r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#)
        .await;

    let unknown = raw
        .exchange(r#"{"jsonrpc":"2.0","id":"u-1","method":"memories/teleport"}"#)
        .await;
    assert_eq!(unknown["id"], "u-1");
    assert_eq!(unknown["error"]["code"], -32601);

    // A served method with params that do not fit: -32602 naming what is wrong.
    let no_name = raw
        .exchange(r#"{"jsonrpc":"2.0","id":"p-1","method":"tools/call","params":{}}"#)
        .await;
    assert_eq!(no_name["id"], "p-1");
    assert_eq!(no_name["error"]["code"], -32602, "{no_name}");
    let text = no_name["error"]["message"].as_str().unwrap_or_default();
    assert!(
        text.contains("tools/call") && text.contains("name"),
        "{text}"
    );
    let positional = raw
        .exchange(r#"{"jsonrpc":"2.0","id":"p-2","method":"resources/read","params":["x"]}"#)
        .await;
    assert_eq!(positional["error"]["code"], -32602, "{positional}");

    let remembered = raw
        .exchange(
            &json!({"jsonrpc": "2.0", "id": "call-1", "method": "tools/call", "params": {
                "name": "remember", "arguments": {"text": "Speaks fluent Japanese"}}})
            .to_string(),
        )
        .await;
    assert_eq!(remembered["id"], "call-1");
    assert_eq!(
        remembered["result"]["structuredContent"]["results"][0]["event"],
        "ADD"
    );

    let unknown_tool = raw
        .exchange(r#"{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"teleport","arguments":{}}}"#)
        .await;
    assert_eq!(unknown_tool["id"], 7);
    assert!(
        unknown_tool.get("error").is_some() || unknown_tool["result"]["isError"] == true,
        "{unknown_tool}"
    );

    let recalled = raw
        .exchange(
            &json!({"jsonrpc": "2.0", "id": "call-2", "method": "tools/call", "params": {
                "name": "recall", "arguments": {"query": "Japanese"}}})
            .to_string(),
        )
        .await;
    assert_eq!(recalled["id"], "call-2");
    assert_eq!(
        recalled["result"]["structuredContent"]["results"][0]["memory"],
        "Speaks fluent Japanese"
    );

    // Closing stdin ends the server cleanly.
    drop(raw.stdin);
    let status = tokio::time::timeout(Duration::from_secs(10), raw.child.wait())
        .await
        .expect("engram exits when stdin closes")
        .unwrap();
    assert!(status.success(), "{status}");
}
