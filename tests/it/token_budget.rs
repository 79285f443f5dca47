//! Token budgets through the real binary (`ENGRAM_TOKEN_BUDGET_DAILY`,
//! `ENGRAM_TOKEN_BUDGET_USERS`): two `engram serve` processes on one
//! database share each user's count; a user over the budget gets `deferred`
//! with cause `token_budget` and the model is not called, while other users
//! are served; an override lets a user past the global budget; the metric
//! (`engram_token_budget_exceeded_total`) and the audit trail (outcome
//! `token_budget`) show it; `engram reextract` leaves the over-budget
//! user's entry queued and finishes another user's, and finishes the first
//! once the budget is raised. Against the fake OpenAI-compatible server,
//! which reports 120 prompt + 30 completion tokens per chat call. And the
//! retention purge drops daily totals past a week.

use std::sync::Arc;

use engram::embed::{Embedder, HashEmbedder};
use engram::store::{PgOptions, PgStore, SqliteStore, Store};
use serde_json::{Value, json};

use crate::common::fake_openai::{FakeOpenAi, Reply};
use crate::common::http::{NO_LIMITS, Server};
use crate::common::postgres::TestDatabase;
use crate::common::run_engram;

const CHAT: &str = "/v1/chat/completions";
/// What the fake reports for each chat call: 120 prompt + 30 completion.
const PER_CALL: u64 = 150;

/// The database both processes share; dropped after them.
enum Db {
    Sqlite {
        _dir: tempfile::TempDir,
        url: String,
    },
    Postgres(TestDatabase),
}

impl Db {
    fn sqlite() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}/engram.db", dir.path().display());
        Self::Sqlite { _dir: dir, url }
    }

    /// The variables that put engram on it (PostgreSQL: the two-role setup).
    fn env(&self) -> Vec<(&'static str, String)> {
        match self {
            Self::Sqlite { url, .. } => vec![("ENGRAM_DATABASE_URL", url.clone())],
            Self::Postgres(db) => vec![
                ("ENGRAM_DATABASE_URL", db.app_url.clone()),
                ("ENGRAM_DATABASE_OWNER_URL", db.owner_url.clone()),
            ],
        }
    }

    /// The store, opened as engram opens it (the default embedder).
    async fn store(&self) -> Arc<dyn Store> {
        let identity = HashEmbedder::new(384).identity();
        match self {
            Self::Sqlite { url, .. } => Arc::new(SqliteStore::open(url, identity).await.unwrap()),
            Self::Postgres(db) => Arc::new(
                PgStore::open(
                    &db.app_url,
                    identity,
                    PgOptions {
                        owner_url: Some(db.owner_url.clone()),
                        ..PgOptions::default()
                    },
                )
                .await
                .unwrap(),
            ),
        }
    }
}

fn borrowed<'a>(env: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    env.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

/// `engram ARGS` with `env`, off the runtime (the fake server runs on it).
async fn engram(args: &[&str], env: &[(&'static str, String)]) -> (bool, String, String) {
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    let env = env.to_vec();
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = run_engram(&args, &borrowed(&env));
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    })
    .await
    .unwrap()
}

/// `engram serve --transport http` with `env`: the process (killed when
/// dropped) and its base URL.
async fn serve_http(env: &[(&'static str, String)]) -> (Server, String) {
    let server = Server::start_process_with(&borrowed(env)).await;
    let base = server.base.clone();
    (server, base)
}

/// The value of one series (`name` or `name{labels}`, as the page writes
/// it) on `base`'s `/metrics`; 0 when absent.
async fn sample(base: &str, series: &str) -> f64 {
    let page = reqwest::get(format!("{base}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    page.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .map_or(0.0, |value| value.parse().unwrap())
}

/// `POST /api/v1/memory` for `user`; the result, which must be a 200.
async fn remember(http: &reqwest::Client, base: &str, user: &str, text: &str) -> Value {
    let response = http
        .post(format!("{base}/api/v1/memory"))
        .json(&json!({"user_id": user, "text": text}))
        .send()
        .await
        .unwrap();
    let status = response.status();
    let body: Value = response.json().await.unwrap();
    assert_eq!(status, 200, "{user}: {body}");
    body
}

/// The outcomes of `user`'s remember rows in the audit trail, newest first.
async fn remember_outcomes(env: &[(&'static str, String)], user: &str) -> Vec<String> {
    let (ok, stdout, stderr) = engram(
        &["audit", "--json", "--op", "remember", "--user", user],
        env,
    )
    .await;
    assert!(ok, "{stderr}");
    stdout
        .lines()
        .map(|line| {
            let row: Value = serde_json::from_str(line).expect("a JSON row");
            row["outcome"].as_str().unwrap().to_owned()
        })
        .collect()
}

async fn budgets_hold_across_processes(db: Db) {
    let fake = FakeOpenAi::start(64).await;
    let audit_key = "k".repeat(40);
    let mut env = db.env();
    env.extend(
        [
            ("ENGRAM_EXTRACTOR", "llm"),
            ("ENGRAM_LLM_MAX_RETRIES", "0"),
            ("OPENAI_BASE_URL", fake.base_url.as_str()),
            ("OPENAI_API_KEY", "test-key"),
            ("ENGRAM_TOKEN_BUDGET_DAILY", "200"),
            ("ENGRAM_TOKEN_BUDGET_USERS", "carol=1000"),
            ("ENGRAM_AUDIT_KEY", audit_key.as_str()),
            ("ENGRAM_AUTH", "none"),
        ]
        .into_iter()
        .chain(NO_LIMITS)
        .map(|(k, v)| (k, v.to_owned())),
    );
    // Migrated once, before two processes start on it.
    let (migrated, _, stderr) = engram(&["migrate"], &env).await;
    assert!(migrated, "{stderr}");
    // A keeps the text when the model fails (the default); B refuses the
    // remember then: a spent budget is no failure, so B defers it anyway.
    let (_a, a) = serve_http(&env).await;
    let mut strict = env.clone();
    strict.push(("ENGRAM_ON_LLM_ERROR", "fail".to_owned()));
    let (_b, b) = serve_http(&strict).await;
    let http = reqwest::Client::new();
    let chats = || fake.requests_to(CHAT).len() as u64;
    let store = db.store().await;
    let today = chrono::Utc::now().date_naive();

    // Alice: a remember on each process, each under the budget when it
    // starts; together they pass it.
    let before = chats();
    let first = remember(&http, &b, "alice", "I keep bees on my roof in Porto").await;
    assert_eq!(first["usage"]["prompt_tokens"], 120, "{first}");
    assert!(first.get("deferred").is_none(), "{first}");
    let second = remember(&http, &a, "alice", "My sister plays the cello in Braga").await;
    assert!(second.get("deferred").is_none(), "{second}");
    let alice_calls = chats() - before;
    let alice_used = store.tokens_used("alice", today).await.unwrap();
    assert_eq!(alice_used, PER_CALL * alice_calls, "prompt + completion");
    assert!(alice_used >= 300, "{alice_used}");

    // B itself counted 150 of them: only the shared count says she is over.
    let asked = chats();
    let third = remember(&http, &b, "alice", "I am allergic to penicillin").await;
    assert_eq!(chats(), asked, "the model was not called for her");
    let deferred = &third["deferred"];
    assert_eq!(deferred["cause"], "token_budget", "{third}");
    let reason = deferred["reason"].as_str().unwrap();
    for says in [
        &format!("{alice_used} of 200 tokens used"),
        "engram reextract",
        "00:00 UTC",
        "ENGRAM_TOKEN_BUDGET_DAILY",
    ] {
        assert!(reason.contains(says), "{says}: {reason}");
    }
    assert_eq!(deferred["searchable"], true);
    let alice_pending = deferred["pending_id"].as_str().unwrap().to_owned();
    assert_eq!(third["results"][0]["event"], "ADD", "kept as said: {third}");
    assert_eq!(third["results"][0]["memory"], "I am allergic to penicillin");
    assert!(third.get("usage").is_none(), "{third}");
    assert_eq!(store.tokens_used("alice", today).await.unwrap(), alice_used);

    // Bob, on the same process, is served by the model.
    let bob = remember(&http, &b, "bob", "Bob collects vintage typewriters").await;
    assert!(bob.get("deferred").is_none(), "{bob}");
    assert_eq!(bob["usage"]["calls"], 1, "{bob}");
    // Carol's own budget (1000) takes her past the global one.
    let before = chats();
    for text in [
        "Carol runs marathons in autumn",
        "Carol's cat is called Miso",
        "Carol works as a glassblower",
    ] {
        let done = remember(&http, &a, "carol", text).await;
        assert!(done.get("deferred").is_none(), "{done}");
    }
    let carol_used = store.tokens_used("carol", today).await.unwrap();
    assert_eq!(carol_used, PER_CALL * (chats() - before));
    assert!(carol_used > 200, "{carol_used}");
    // A model failure still defers as it did, with its own cause.
    fake.then(Reply::Error {
        status: 500,
        code: "server_error",
        retry_after: None,
    });
    let failed = remember(&http, &a, "bob", "Bob repairs old radios").await;
    assert_eq!(failed["deferred"]["cause"], "model_failed", "{failed}");
    assert!(
        failed["deferred"]["reason"]
            .as_str()
            .unwrap()
            .contains("500"),
        "{failed}"
    );

    // The metric counts the budget's deferral where it happened; both
    // deferrals are remember events.
    let exceeded = "engram_token_budget_exceeded_total";
    assert_eq!(sample(&b, exceeded).await, 1.0);
    assert_eq!(sample(&a, exceeded).await, 0.0);
    for base in [&a, &b] {
        let deferred = r#"engram_remember_events_total{event="deferred"}"#;
        assert_eq!(sample(base, deferred).await, 1.0, "{base}");
    }
    // The audit trail tells the budget's deferral apart.
    assert_eq!(
        remember_outcomes(&env, "alice").await,
        ["token_budget", "ok", "ok"]
    );
    assert_eq!(remember_outcomes(&env, "bob").await, ["ok", "ok"]);
    assert_eq!(remember_outcomes(&env, "carol").await, ["ok", "ok", "ok"]);

    // `engram reextract`: Alice is still over, her entry stays as it was;
    // Bob's is finished, and its tokens count against his budget.
    let bob_used = store.tokens_used("bob", today).await.unwrap();
    assert_eq!(bob_used, PER_CALL, "the failed call counted nothing");
    let asked = chats();
    let (ok, stdout, stderr) = engram(&["reextract"], &env).await;
    assert!(ok, "{stdout}\n{stderr}");
    assert!(
        stdout.contains(&format!(
            "{alice_pending} (user alice): skipped, over the token budget: \
             the user's token budget for {today} (UTC) is spent"
        )),
        "{stdout}"
    );
    assert!(
        stdout.contains("(user bob): NONE \"Bob repairs old radios\""),
        "{stdout}"
    );
    assert!(
        stdout.contains("re-extracted 1, failed 0")
            && stdout.contains("skipped 1 over the token budget; 1 still pending"),
        "{stdout}"
    );
    let calls = chats() - asked;
    assert!(calls >= 1, "Bob's entry called the model");
    assert_eq!(
        store.tokens_used("bob", today).await.unwrap(),
        bob_used + PER_CALL * calls
    );
    let (left, _) = store.pending(10).await.unwrap();
    let left: Vec<_> = left
        .iter()
        .map(|p| {
            (
                p.entry.id.to_string(),
                p.entry.scope.user_id().to_string(),
                p.attempts,
            )
        })
        .collect();
    assert_eq!(left, [(alice_pending.clone(), "alice".to_owned(), 0)]);

    // Her budget raised, her entry is finished too.
    let mut raised = env.clone();
    for (key, value) in &mut raised {
        if *key == "ENGRAM_TOKEN_BUDGET_USERS" {
            *value = "carol=1000,alice=100000".to_owned();
        }
    }
    let (ok, stdout, stderr) = engram(&["reextract"], &raised).await;
    assert!(ok, "{stdout}\n{stderr}");
    assert!(
        stdout.contains(&format!(
            "{alice_pending} (user alice): NONE \"I am allergic to penicillin\""
        )) && stdout.contains("re-extracted 1, failed 0")
            && stdout.contains("0 still pending"),
        "{stdout}"
    );
    assert!(store.tokens_used("alice", today).await.unwrap() > alice_used);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_a_user_over_the_token_budget_is_deferred_and_counted_across_processes() {
    budgets_hold_across_processes(Db::sqlite()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_user_over_the_token_budget_is_deferred_and_counted_across_processes() {
    budgets_hold_across_processes(Db::Postgres(TestDatabase::create().await)).await;
}

/// The retention purge drops daily totals older than a week (only today's
/// is ever read), every user's, and keeps the rest; a dry run drops none.
#[tokio::test]
async fn the_purge_drops_daily_totals_older_than_a_week() {
    let db = Db::sqlite();
    let store = db.store().await;
    let service = engram::MemoryService::new(
        store.clone(),
        Arc::new(HashEmbedder::new(384)),
        Arc::new(engram::extract::VerbatimExtractor),
        engram::service::Settings::default(),
    );
    let now = chrono::Utc::now();
    let today = now.date_naive();
    let ago = |days: u64| today - chrono::Days::new(days);
    let kept = engram::service::TOKEN_USAGE_KEPT_DAYS;
    for (user, day) in [
        ("alice", today),
        ("alice", ago(kept)),
        ("alice", ago(kept + 1)),
        ("bob", ago(30)),
    ] {
        store.add_tokens(user, day, 10).await.unwrap();
    }
    service.purge_at(now, true).await.unwrap();
    assert_eq!(store.tokens_used("bob", ago(30)).await.unwrap(), 10);
    service.purge_at(now, false).await.unwrap();
    for (user, day, left) in [
        ("alice", today, 10),
        ("alice", ago(kept), 10),
        ("alice", ago(kept + 1), 0),
        ("bob", ago(30), 0),
    ] {
        assert_eq!(
            store.tokens_used(user, day).await.unwrap(),
            left,
            "{user} {day}"
        );
    }
}
