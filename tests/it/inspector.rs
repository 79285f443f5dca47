//! End-to-end check with the official MCP Inspector CLI
//! (`@modelcontextprotocol/inspector@0.15.0`, a client we did not write).
//!
//! Proves that the real `engram` binary, launched by a third-party client as
//! `engram serve` over stdio, completes the MCP handshake, advertises exactly
//! the tools `remember`, `recall`, `user_context` and `forget`, and that a
//! memory stored by one client session is recalled by a later session (a new
//! server process) against the same SQLite database file.
//!
//! The Inspector is taken from `ENGRAM_INSPECTOR_CLI` (the path of its JS entry
//! point, set by `scripts/test.sh`, which installs it), else fetched with `npx`.
//! It prints the method's result as pretty JSON on stdout and exits non-zero
//! with the error on stderr; it discards the server's stderr, so on failure
//! these tests rerun `engram serve` alone to show its logs.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

const INSPECTOR_PACKAGE: &str = "@modelcontextprotocol/inspector@0.15.0";
const ENGRAM: &str = env!("CARGO_BIN_EXE_engram");

/// A scratch database, one per test.
struct Db {
    dir: tempfile::TempDir,
}

impl Db {
    fn new() -> Self {
        Self {
            dir: tempfile::tempdir().expect("create a temp dir"),
        }
    }

    fn path(&self) -> PathBuf {
        self.dir.path().join("engram.db")
    }

    fn url(&self) -> String {
        format!("sqlite://{}", self.path().display())
    }

    /// The environment the server gets (through the Inspector's `-e`).
    fn server_env(&self) -> Vec<(String, String)> {
        let hermetic = crate::common::HERMETIC.map(|(k, v)| (k.to_owned(), v.to_owned()));
        hermetic
            .into_iter()
            .chain([
                ("ENGRAM_DATABASE_URL".into(), self.url()),
                // The Inspector never reads the server's stderr pipe, so a chatty
                // server could fill it and block; keep the logs to warnings.
                ("ENGRAM_LOG".into(), "warn".into()),
            ])
            .collect()
    }
}

/// `node $ENGRAM_INSPECTOR_CLI --cli`, or `npx --yes <package> --cli`.
fn inspector_command() -> Command {
    let mut cmd = match std::env::var_os("ENGRAM_INSPECTOR_CLI") {
        Some(cli) => {
            assert!(
                Path::new(&cli).is_file(),
                "ENGRAM_INSPECTOR_CLI={} is not a file; run scripts/test.sh, which installs the \
                 MCP Inspector and sets it",
                Path::new(&cli).display()
            );
            let mut cmd = Command::new("node");
            cmd.arg(cli);
            cmd
        }
        None => {
            let mut cmd = Command::new("npx");
            cmd.args(["--yes", INSPECTOR_PACKAGE]);
            cmd
        }
    };
    cmd.arg("--cli");
    // The Inspector hands its whole environment down to the server process.
    without_engram_env(&mut cmd);
    cmd
}

/// Drops the developer's `ENGRAM_*` and `RUST_LOG` variables, so only what a
/// test sets configures the server.
fn without_engram_env(cmd: &mut Command) {
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy();
        if (key.starts_with("ENGRAM_") && key != "ENGRAM_INSPECTOR_CLI") || key == "RUST_LOG" {
            cmd.env_remove(&*key);
        }
    }
}

/// Runs one Inspector invocation against `engram serve` and returns its
/// stdout parsed as JSON. Panics with the Inspector's stderr (and the server's
/// own logs) when the Inspector fails or prints something that is not JSON.
fn inspect(db: &Db, method_args: &[&str]) -> Value {
    let mut cmd = inspector_command();
    for (key, value) in db.server_env() {
        cmd.arg("-e").arg(format!("{key}={value}"));
    }
    cmd.args([ENGRAM, "serve"]).args(method_args);
    let shown = format!("inspector --cli <engram> serve {}", method_args.join(" "));

    let output = cmd.stdin(Stdio::null()).output().unwrap_or_else(|e| {
        panic!(
            "could not start the MCP Inspector ({e}); run scripts/test.sh, which installs it and \
             sets ENGRAM_INSPECTOR_CLI (needs Node.js 20+)"
        )
    });
    let Output {
        status,
        stdout,
        stderr,
    } = output;
    let stdout = String::from_utf8_lossy(&stdout);
    let stderr = String::from_utf8_lossy(&stderr);
    if !status.success() {
        let hint = if std::env::var_os("ENGRAM_INSPECTOR_CLI").is_none() {
            "\n(the Inspector came from npx; if it could not be downloaded, run scripts/test.sh)"
        } else {
            ""
        };
        panic!(
            "`{shown}` failed ({status}){hint}\n--- inspector stderr ---\n{stderr}\n\
             --- inspector stdout ---\n{stdout}\n--- engram serve alone, stdin closed ---\n{}",
            server_alone(db)
        );
    }
    serde_json::from_str(&stdout).unwrap_or_else(|e| {
        panic!(
            "`{shown}` did not print JSON ({e})\n--- inspector stdout ---\n{stdout}\n\
             --- inspector stderr ---\n{stderr}"
        )
    })
}

/// Diagnostics only: runs `engram serve` directly with the test's environment
/// and stdin closed, and returns its exit status and stderr (startup errors,
/// panics), which the Inspector does not show.
fn server_alone(db: &Db) -> String {
    let mut cmd = Command::new(ENGRAM);
    without_engram_env(&mut cmd);
    cmd.arg("serve")
        .envs(db.server_env())
        .env("ENGRAM_LOG", "debug")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = match cmd.spawn() {
        Ok(child) => child,
        Err(e) => return format!("could not start {ENGRAM}: {e}"),
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    match child.wait_with_output() {
        Ok(out) => format!("{}\n{}", out.status, String::from_utf8_lossy(&out.stderr)),
        Err(e) => format!("could not collect its output: {e}"),
    }
}

/// The JSON payload of a successful `tools/call` result: `structuredContent`
/// when present, else the first text content parsed as JSON.
fn tool_payload(result: &Value, tool: &str) -> Value {
    let text = result["content"]
        .as_array()
        .and_then(|items| items.iter().find_map(|item| item["text"].as_str()));
    assert_ne!(
        result["isError"],
        Value::Bool(true),
        "{tool} returned a tool error: {}",
        text.unwrap_or("(no text content)")
    );
    if let Some(structured) = result.get("structuredContent") {
        return structured.clone();
    }
    let text = text.unwrap_or_else(|| panic!("{tool} returned no text content: {result:#}"));
    serde_json::from_str(text)
        .unwrap_or_else(|e| panic!("{tool}'s text content is not JSON ({e}): {text}"))
}

fn results<'a>(payload: &'a Value, tool: &str) -> &'a [Value] {
    payload["results"]
        .as_array()
        .unwrap_or_else(|| panic!("{tool} returned no `results` array: {payload:#}"))
}

#[test]
fn inspector_lists_exactly_the_four_tools() {
    let db = Db::new();
    let listed = inspect(&db, &["--method", "tools/list"]);

    let tools = listed["tools"]
        .as_array()
        .unwrap_or_else(|| panic!("tools/list result has no `tools` array: {listed:#}"));
    let names: BTreeSet<&str> = tools
        .iter()
        .map(|tool| {
            tool["name"]
                .as_str()
                .unwrap_or_else(|| panic!("tool without a name: {tool:#}"))
        })
        .collect();
    let expected = BTreeSet::from(["forget", "recall", "remember", "user_context"]);
    assert_eq!(names, expected, "tools/list returned {listed:#}");
    assert_eq!(
        tools.len(),
        expected.len(),
        "a tool is listed twice: {listed:#}"
    );

    for tool in tools {
        assert_eq!(
            tool["inputSchema"]["type"], "object",
            "every tool needs an object input schema: {tool:#}"
        );
    }
    let schema = |name: &str| &tools.iter().find(|t| t["name"] == name).unwrap()["inputSchema"];
    assert!(
        schema("remember")["properties"].get("text").is_some(),
        "remember takes `text`: {:#}",
        schema("remember")
    );
    assert!(
        schema("recall")["required"]
            .as_array()
            .is_some_and(|req| req.iter().any(|r| r == "query")),
        "recall requires `query`: {:#}",
        schema("recall")
    );
}

#[test]
fn inspector_remember_then_recall_in_a_new_session() {
    let db = Db::new();
    let text = "I live in Lisbon and love espresso";

    let remembered = inspect(
        &db,
        &[
            "--method",
            "tools/call",
            "--tool-name",
            "remember",
            "--tool-arg",
            &format!("text={text}"),
        ],
    );
    let payload = tool_payload(&remembered, "remember");
    let stored = results(&payload, "remember");
    assert!(!stored.is_empty(), "remember stored nothing: {payload:#}");
    let ids: Vec<&str> = stored.iter().filter_map(|m| m["id"].as_str()).collect();
    assert_eq!(
        ids.len(),
        stored.len(),
        "every stored memory needs an id: {payload:#}"
    );
    assert!(
        db.path().is_file(),
        "remember did not create the database file {}",
        db.path().display()
    );

    // A second Inspector run: a new client and a new server process.
    let recalled = inspect(
        &db,
        &[
            "--method",
            "tools/call",
            "--tool-name",
            "recall",
            "--tool-arg",
            "query=espresso",
        ],
    );
    let payload = tool_payload(&recalled, "recall");
    let hit = results(&payload, "recall")
        .iter()
        .find(|m| m["memory"] == text)
        .unwrap_or_else(|| panic!("recall(query=espresso) did not return {text:?}: {payload:#}"));
    let hit_id = hit["id"].as_str().unwrap_or_default();
    assert!(
        ids.contains(&hit_id),
        "recalled memory id {hit_id:?} is not one remember returned ({ids:?}): {payload:#}"
    );
}

/// `engram serve --transport http` on a free loopback port; killed on drop.
struct HttpServer {
    child: std::process::Child,
    base: String,
}

impl HttpServer {
    fn start(db: &Db) -> Self {
        use std::io::{BufRead, BufReader};
        let mut cmd = Command::new(ENGRAM);
        without_engram_env(&mut cmd);
        let mut child = cmd
            .args(["serve", "--transport", "http", "--bind", "127.0.0.1:0"])
            .envs(crate::common::HERMETIC)
            .env("ENGRAM_DATABASE_URL", db.url())
            .env("ENGRAM_AUTH", "none")
            .env("ENGRAM_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start engram serve --transport http");
        let mut lines = BufReader::new(child.stderr.take().expect("stderr")).lines();
        let base = loop {
            let line = lines
                .next()
                .expect("engram exited before listening")
                .expect("read engram's log");
            if let Some(at) = line.find("serving MCP at http://") {
                let url = &line[at + "serving MCP at ".len()..];
                break url[..url.find("/mcp").expect("/mcp in the log line")].to_owned();
            }
        };
        // Keep draining its logs so it never blocks on a full pipe.
        std::thread::spawn(move || lines.for_each(drop));
        Self { child, base }
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The Inspector (`--cli URL --transport ...`) against a running server.
fn inspect_url(url: &str, transport: &str, method_args: &[&str]) -> Value {
    let output = inspector_command()
        .args([url, "--transport", transport])
        .args(method_args)
        .stdin(Stdio::null())
        .output()
        .expect("run the MCP Inspector");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "inspector {url} {transport} {method_args:?} failed\n{}\n{stdout}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {stdout}"))
}

#[test]
fn inspector_uses_streamable_http_and_legacy_sse() {
    let db = Db::new();
    let server = HttpServer::start(&db);
    let (mcp, sse) = (
        format!("{}/mcp", server.base),
        format!("{}/sse", server.base),
    );
    for (url, transport) in [(&mcp, "http"), (&sse, "sse")] {
        let listed = inspect_url(url, transport, &["--method", "tools/list"]);
        let names: BTreeSet<&str> = listed["tools"]
            .as_array()
            .unwrap_or_else(|| panic!("no tools over {transport}: {listed:#}"))
            .iter()
            .filter_map(|t| t["name"].as_str())
            .collect();
        assert_eq!(
            names,
            BTreeSet::from(["forget", "recall", "remember", "user_context"]),
            "over {transport}"
        );
    }
    // Stored over SSE, found over Streamable HTTP: one service behind both.
    let stored = inspect_url(
        &sse,
        "sse",
        &[
            "--method",
            "tools/call",
            "--tool-name",
            "remember",
            "--tool-arg",
            "text=Allergic to shellfish",
        ],
    );
    assert_eq!(
        stored["structuredContent"]["results"][0]["event"], "ADD",
        "{stored:#}"
    );
    let found = inspect_url(
        &mcp,
        "http",
        &[
            "--method",
            "tools/call",
            "--tool-name",
            "recall",
            "--tool-arg",
            "query=shellfish",
        ],
    );
    assert_eq!(
        found["structuredContent"]["results"][0]["memory"], "Allergic to shellfish",
        "{found:#}"
    );
}
