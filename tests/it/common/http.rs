//! engram serving HTTP on a free loopback port, with its own SQLite file
//! (or a given database), and a small REST client: in this process as
//! `engram serve --transport http` builds it, or as the real binary for
//! tests of the process itself.

use std::collections::HashMap;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use engram::Config;
use engram::startup::HttpApp;
use tokio_util::sync::CancellationToken;

use reqwest::Method;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use super::{ENGRAM, run_engram};

/// Every rate limit off (per key and per user, REST and MCP), for tests
/// that make many requests and are not about limits.
pub const NO_LIMITS: [(&str, &str); 4] = [
    ("ENGRAM_REST_RATE_LIMIT", "0"),
    ("ENGRAM_MCP_RATE_LIMIT", "0"),
    ("ENGRAM_REST_USER_RATE_LIMIT", "0"),
    ("ENGRAM_MCP_USER_RATE_LIMIT", "0"),
];

pub struct Server {
    /// The binary, when the test needs the process itself ([`Server::start_process`]).
    pub child: Option<Child>,
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    pub database_url: String,
    pub http: reqwest::Client,
    /// What the process has logged so far ([`Server::start_process`] only).
    pub logs: Arc<Mutex<Vec<String>>>,
    /// Stops the in-process server when the test is done with it.
    stop: Option<CancellationToken>,
    _dir: Option<tempfile::TempDir>,
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(stop) = &self.stop {
            stop.cancel();
        }
    }
}

impl Server {
    /// Without API keys (`ENGRAM_AUTH=none`, loopback).
    pub async fn start() -> Self {
        Self::start_with(&[]).await
    }

    /// Without API keys, plus `env`.
    pub async fn start_with(env: &[(&str, &str)]) -> Self {
        let mut all = vec![("ENGRAM_AUTH", "none")];
        all.extend_from_slice(env);
        Self::in_process(None, &all).await
    }

    /// With API keys (the default), plus `env`; `database_url` None: a
    /// fresh SQLite file.
    pub async fn with_keys(database_url: Option<&str>, env: &[(&str, &str)]) -> Self {
        let mut all = vec![("ENGRAM_AUTH", "keys")];
        all.extend_from_slice(env);
        Self::in_process(database_url, &all).await
    }

    /// The real binary (`engram serve --transport http`, no API keys), for
    /// what only a process shows: signals, exit status, its log, its
    /// metrics, its traces.
    pub async fn start_process() -> Self {
        Self::start_process_with(&[]).await
    }

    /// [`Server::start_process`], plus `env` (which may name the database,
    /// or turn keys on with `ENGRAM_AUTH=keys`).
    pub async fn start_process_with(env: &[(&str, &str)]) -> Self {
        let named = env.iter().find(|(k, _)| *k == "ENGRAM_DATABASE_URL");
        let (dir, database_url) = database(named.map(|(_, v)| *v));
        let mut child = Command::new(ENGRAM)
            .args(["serve", "--transport", "http", "--bind", "127.0.0.1:0"])
            .envs(super::HERMETIC)
            .env("ENGRAM_DATABASE_URL", &database_url)
            .env("ENGRAM_AUTH", "none")
            .env("ENGRAM_LOG", "info")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        // The address it listens on is in its start-up log line.
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let base = tokio::time::timeout(Duration::from_secs(30), async {
            let mut seen = Vec::new();
            while let Some(line) = lines.next_line().await.unwrap() {
                seen.push(line.clone());
                if let Some(at) = line.find("serving MCP at http://") {
                    let url = &line[at + "serving MCP at ".len()..];
                    let end = url.find("/mcp").unwrap();
                    return url[..end].to_owned();
                }
            }
            panic!("engram exited before listening:\n{}", seen.join("\n"));
        })
        .await
        .expect("engram did not start listening");
        // Keep draining its logs so it never blocks on a full pipe.
        let logs = Arc::new(Mutex::new(Vec::new()));
        tokio::spawn({
            let logs = logs.clone();
            async move {
                while let Ok(Some(line)) = lines.next_line().await {
                    logs.lock().unwrap().push(line);
                }
            }
        });
        Self {
            child: Some(child),
            base,
            database_url,
            logs,
            http: reqwest::Client::new(),
            stop: None,
            _dir: dir,
        }
    }

    /// The application in this process (`HttpApp`, as `engram serve
    /// --transport http` builds it), configured by `env` alone, on a free
    /// loopback port it reports rather than logs.
    async fn in_process(database_url: Option<&str>, env: &[(&str, &str)]) -> Self {
        let (dir, database_url) = database(database_url);
        let mut vars: HashMap<String, String> = super::HERMETIC
            .iter()
            .chain(env)
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        vars.insert("ENGRAM_DATABASE_URL".into(), database_url.clone());
        let config = Config::load_from(None, &vars).unwrap();
        let app = HttpApp::build(&config, "127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", app.address());
        let stop = app.stopper();
        tokio::spawn(app.run());
        Self {
            child: None,
            base,
            database_url,
            logs: Arc::default(),
            http: reqwest::Client::new(),
            stop: Some(stop),
            _dir: dir,
        }
    }

    /// `engram keys create ARGS` on this server's database; the new key.
    pub fn create_key(&self, args: &[&str]) -> String {
        let mut all = vec!["keys", "create"];
        all.extend_from_slice(args);
        let out = run_engram(&all, &[("ENGRAM_DATABASE_URL", &self.database_url)]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// A REST call: status, headers and the JSON body (Null when empty or
    /// not JSON).
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        key: Option<&str>,
        body: Option<Value>,
    ) -> Reply {
        let mut request = self.http.request(method, format!("{}{path}", self.base));
        if let Some(key) = key {
            request = request.bearer_auth(key);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        Reply::read(request.send().await.unwrap()).await
    }
}

/// Reads a legacy SSE stream (adding what arrives to `seen`) up to its
/// `endpoint` event; the path to post to.
pub async fn sse_endpoint(stream: &mut reqwest::Response, seen: &mut String) -> String {
    loop {
        let chunk = tokio::time::timeout(Duration::from_secs(10), stream.chunk())
            .await
            .expect("no endpoint event")
            .unwrap()
            .expect("stream ended");
        seen.push_str(&String::from_utf8_lossy(&chunk));
        if let Some(line) = seen.lines().find(|l| l.starts_with("data: /messages")) {
            return line["data: ".len()..].to_owned();
        }
    }
}

#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: Value,
    pub text: String,
}

impl Reply {
    pub async fn read(response: reqwest::Response) -> Self {
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let text = response.text().await.unwrap();
        Reply {
            status,
            headers,
            body: serde_json::from_str(&text).unwrap_or(Value::Null),
            text,
        }
    }

    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
    }

    /// Asserts a problem+json error with this status and code.
    #[track_caller]
    pub fn problem(&self, status: u16, code: &str) -> &Self {
        assert_eq!(
            (self.status, self.body["code"].as_str()),
            (status, Some(code)),
            "{}",
            self.text
        );
        assert_eq!(self.header("content-type"), "application/problem+json");
        assert_eq!(self.body["status"], status);
        assert_eq!(self.body["type"], format!("urn:engram:problem:{code}"));
        assert!(
            self.body["detail"].as_str().is_some_and(|d| !d.is_empty()),
            "{}",
            self.text
        );
        self
    }
}

/// The database a server uses: `given`, or a fresh SQLite file in a
/// directory that lives as long as the server.
fn database(given: Option<&str>) -> (Option<tempfile::TempDir>, String) {
    match given {
        Some(url) => (None, url.to_owned()),
        None => {
            let dir = tempfile::tempdir().unwrap();
            let url = format!("sqlite://{}/engram.db", dir.path().display());
            (Some(dir), url)
        }
    }
}

/// A stateless (2026-07-28) MCP request to `{base}/mcp`: no `initialize`
/// and no session, the method (and a tool's or prompt's name) in headers,
/// the protocol fields in `params._meta`; `key`, if any, as the bearer.
pub fn stateless(
    http: &reqwest::Client,
    base: &str,
    key: Option<&str>,
    id: Value,
    method: &str,
    mut params: Value,
) -> reqwest::RequestBuilder {
    params["_meta"] = serde_json::json!({
        "io.modelcontextprotocol/protocolVersion": "2026-07-28",
        "io.modelcontextprotocol/clientInfo": {"name": "engram-tests", "version": "1"},
        "io.modelcontextprotocol/clientCapabilities": {},
    });
    let mut request = http
        .post(format!("{base}/mcp"))
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .header("mcp-protocol-version", "2026-07-28")
        .header("mcp-method", method);
    if let Some(name) = params.get("name").and_then(Value::as_str) {
        request = request.header("mcp-name", name.to_owned());
    }
    if let Some(key) = key {
        request = request.bearer_auth(key);
    }
    request.body(
        serde_json::json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params})
            .to_string(),
    )
}
