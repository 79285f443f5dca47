//! Shared helpers for the tests that drive the real binary over MCP stdio,
//! and fresh PostgreSQL databases ([`postgres`]).
#![allow(dead_code)]

pub mod certs;
pub mod fake_openai;
pub mod http;
pub mod pgbouncer;
pub mod postgres;
pub mod proxy;
pub mod raw;
pub mod redis;
pub mod stdio;

use std::path::{Path, PathBuf};

use engram::auth::Principal;
use engram::model::MemoryId;
use engram::params::{MemoryRef, UserContextParams};
use rmcp::model::{CallToolRequestParams, CallToolResult};
use rmcp::service::RunningService;
use rmcp::transport::{ConfigureCommandExt, TokioChildProcess};
use rmcp::{RoleClient, ServiceExt};
use serde_json::{Value, json};

/// The built binary under test.
pub const ENGRAM: &str = env!("CARGO_BIN_EXE_engram");

/// Set on every engram the tests start (before the test's own variables):
/// no model downloads and no model cache of the machine's, so the default
/// embedder of a new store is `hash` whatever this machine holds or reaches.
/// Tests of the in-process embedder set their own.
pub const HERMETIC: [(&str, &str); 2] = [
    ("ENGRAM_MODEL_HUB_URL", "off"),
    ("ENGRAM_MODEL_CACHE_DIR", "/nonexistent/engram-test-models"),
];

pub type Client = RunningService<RoleClient, ()>;

pub struct Engram {
    _dir: tempfile::TempDir,
    pub db: PathBuf,
}

impl Engram {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = dir.path().join("engram.db");
        Self { _dir: dir, db }
    }

    pub async fn connect(&self) -> Client {
        connect_with(&self.db, &[]).await
    }
}

/// Runs `engram ARGS` with `env`, stdin closed, and returns its output.
pub fn run_engram(args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    let mut cmd = std::process::Command::new(ENGRAM);
    cmd.args(args)
        .envs(HERMETIC)
        .env("ENGRAM_LOG", "warn")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run engram")
}

pub async fn connect_with(db: &Path, env: &[(&str, &str)]) -> Client {
    connect_to(&format!("sqlite://{}", db.display()), env).await
}

/// `engram serve` over stdio on the database at `url`, with `env`.
pub async fn connect_to(url: &str, env: &[(&str, &str)]) -> Client {
    let transport = TokioChildProcess::new(tokio::process::Command::new(ENGRAM).configure(|cmd| {
        cmd.arg("serve")
            .envs(HERMETIC)
            .env("ENGRAM_DATABASE_URL", url)
            .env("ENGRAM_LOG", "warn");
        for (k, v) in env {
            cmd.env(k, v);
        }
    }))
    .expect("spawn engram");
    ().serve(transport)
        .await
        .expect("MCP handshake with engram")
}

pub async fn call(client: &Client, tool: &'static str, args: Value) -> CallToolResult {
    let args = args.as_object().cloned().expect("arguments are an object");
    client
        .call_tool(CallToolRequestParams::new(tool).with_arguments(args))
        .await
        .unwrap_or_else(|e| panic!("{tool} failed at the protocol level: {e}"))
}

/// Calls a tool that must succeed; returns its structured content.
pub async fn ok(client: &Client, tool: &'static str, args: Value) -> Value {
    let result = call(client, tool, args.clone()).await;
    assert_ne!(
        result.is_error,
        Some(true),
        "{tool} {args} failed: {:?}",
        result.content
    );
    result
        .structured_content
        .unwrap_or_else(|| panic!("{tool} returned no structured content"))
}

/// Calls a tool that must fail with a tool error; returns the error text.
pub async fn tool_err(client: &Client, tool: &'static str, args: Value) -> String {
    let result = call(client, tool, args.clone()).await;
    assert_eq!(
        result.is_error,
        Some(true),
        "{tool} {args} should fail: {result:?}"
    );
    result
        .content
        .iter()
        .filter_map(|c| c.as_text().map(|t| t.text.clone()))
        .collect::<Vec<_>>()
        .join("\n")
}

pub fn texts(recall: &Value) -> Vec<String> {
    recall["results"]
        .as_array()
        .expect("results array")
        .iter()
        .map(|r| r["memory"].as_str().expect("memory text").to_owned())
        .collect()
}

/// Asserts that `user`'s best recall for `query` is `text`.
pub async fn assert_best_recall(client: &Client, user: &str, query: &str, text: &str) {
    let found = ok(client, "recall", json!({"query": query, "user_id": user})).await;
    assert_eq!(
        texts(&found).first().map(String::as_str),
        Some(text),
        "{found}"
    );
}

pub async fn total(client: &Client, user: &str) -> u64 {
    ok(client, "user_context", json!({"user_id": user})).await["total"]
        .as_u64()
        .expect("total")
}

/// The caller of in-process service calls: the operator, as on stdio.
pub const ME: &Principal = &Principal::Operator;

/// The user's current memories (up to 100), sorted: what a service holds
/// as true for the user right now.
pub async fn current(s: &engram::MemoryService, user: &str) -> Vec<String> {
    let request = UserContextParams {
        user_id: Some(user.into()),
        limit: Some(100),
        ..UserContextParams::default()
    };
    let mut texts: Vec<String> = s
        .user_context(ME, request)
        .await
        .unwrap()
        .memories
        .into_iter()
        .map(|m| m.memory)
        .collect();
    texts.sort();
    texts
}

/// The history of one of the user's memories, oldest first.
pub async fn history(
    s: &engram::MemoryService,
    user: &str,
    id: engram::model::MemoryId,
) -> Vec<engram::store::HistoryEntry> {
    let memory = MemoryRef {
        memory_id: id.to_string(),
        user_id: Some(user.into()),
    };
    s.history(ME, memory).await.unwrap().history
}

/// How many memories the user has, current or not.
pub async fn stored(s: &engram::MemoryService, user: &str) -> u64 {
    let request = UserContextParams {
        user_id: Some(user.into()),
        ..UserContextParams::default()
    };
    s.user_context(ME, request).await.unwrap().total
}

/// `got` and `want` (each sorted by id) are the same candidates with the
/// same scores, but for memories tied on similarity at the vector side's
/// cut.
pub fn assert_same_candidates(
    got: &[engram::store::Scored],
    want: &[engram::store::Scored],
    query: &str,
) {
    // Memories tied on similarity at the vector side's cut may come in
    // either way (SQL and an in-process copy break ties differently): the
    // candidates found one way only must be such ties, as many each way.
    let ids = |c: &[engram::store::Scored]| c.iter().map(|x| x.id).collect::<Vec<_>>();
    let only = |a: &[engram::store::Scored], b: &[engram::store::Scored]| {
        a.iter()
            .filter(|x| !ids(b).contains(&x.id))
            .map(|x| x.similarity)
            .collect::<Vec<_>>()
    };
    let (got_only, want_only) = (only(got, want), only(want, got));
    assert_eq!(got_only.len(), want_only.len(), "{query}: {got:?} {want:?}");
    if let Some(tie) = got_only.first() {
        let tied = got_only
            .iter()
            .chain(&want_only)
            .all(|s| (s - tie).abs() < 1e-4);
        assert!(tied, "{query}: {got:?} {want:?}");
    }
    let both = |a: &[engram::store::Scored], b: &[engram::store::Scored]| {
        let in_b = ids(b);
        a.iter()
            .filter(|x| in_b.contains(&x.id))
            .cloned()
            .collect::<Vec<_>>()
    };
    for (g, w) in both(got, want).iter().zip(&both(want, got)) {
        assert_eq!(g.id, w.id);
        assert!((g.similarity - w.similarity).abs() < 1e-4, "{g:?} {w:?}");
        assert!((g.keyword - w.keyword).abs() < 1e-4, "{g:?} {w:?}");
    }
}

/// `store`'s recall candidates for `query` (embedded as `vector`) at `at`,
/// by id, checked against the two searches' (`candidates_in_steps`): the
/// same memories (ties at the cut aside), the same scores.
pub async fn candidates_as_in_steps(
    store: &dyn engram::store::Store,
    at: engram::store::SearchScope<'_>,
    vector: &[f32],
    query: &str,
    depth: usize,
) -> Vec<engram::store::Scored> {
    let sorted = |mut c: Vec<engram::store::Scored>| {
        c.sort_by_key(|x| x.id);
        c
    };
    // Every other candidate, by id: what recall would pick is the
    // store's business, that it reads exactly the picked rows is the test's.
    let pick = |scored: &[engram::store::Scored]| {
        let mut ids: Vec<MemoryId> = scored.iter().map(|c| c.id).collect();
        ids.sort();
        ids.into_iter().step_by(2).collect()
    };
    let candidates = store
        .candidates(at, vector, query, depth, &pick, None)
        .await
        .unwrap();
    let got = sorted(candidates.scored);
    let want = sorted(
        engram::store::candidates_in_steps(store, at, vector, query, depth)
            .await
            .unwrap(),
    );
    assert_same_candidates(&got, &want, query);
    // Memories read with the candidates are the picked ones', as the
    // store reads them by id.
    if let Some(mut loaded) = candidates.memories {
        loaded.sort_by_key(|m| m.id);
        let mut by_id = store
            .get_many(at.scope.user_id(), &pick(&got))
            .await
            .unwrap();
        by_id.sort_by_key(|m| m.id);
        assert!(!by_id.is_empty(), "{query}");
        assert_eq!(loaded, by_id, "{query}");
    }
    got
}
