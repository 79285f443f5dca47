//! When the model fails: `on_llm_error = "fail"` refuses and stores nothing;
//! `"verbatim"` keeps the text as given and queues it, and `engram
//! reextract` finishes it later. Against the fake OpenAI-compatible server
//! (real HTTP and JSON) for both the chat model and the embedder.

use crate::common;

use std::sync::Arc;
use std::time::Duration;

use common::fake_openai::{FakeOpenAi, Reply};
use common::{ME, connect_with, current, ok, run_engram, texts};
use engram::config::OnLlmError;
use engram::embed::{Embedder, OpenAiEmbedder, OpenAiSettings};
use engram::extract::{DEFAULT_CATEGORIES, LlmExtractor, LlmSettings};
use engram::model::{Degraded, Event, Message};
use engram::openai::Endpoint;
use engram::params::{ForgetParams, RecallParams, RememberParams, UserContextParams};
use engram::service::{MemoryService, Settings};
use engram::store::SqliteStore;
use serde_json::{Value, json};

const CHAT: &str = "/v1/chat/completions";
const EMBED: &str = "/v1/embeddings";
const DIMS: usize = 64;

fn endpoint(fake: &FakeOpenAi, timeout: Duration) -> Endpoint {
    Endpoint {
        base_url: fake.base_url.clone(),
        api_key: Some("test-key".into()),
        timeout,
        max_retries: 0,
    }
}

/// A service with the llm extractor and the openai embedder, both on `fake`
/// without retries, so one scripted error is one failure.
async fn service(fake: &FakeOpenAi, dir: &tempfile::TempDir, policy: OnLlmError) -> MemoryService {
    service_with(fake, dir, policy, true).await
}

/// As [`service`]; `llm: false` has the verbatim extractor instead.
async fn service_with(
    fake: &FakeOpenAi,
    dir: &tempfile::TempDir,
    policy: OnLlmError,
    llm: bool,
) -> MemoryService {
    let timeout = Duration::from_millis(800);
    let embedder = Arc::new(
        OpenAiEmbedder::new(OpenAiSettings {
            endpoint: endpoint(fake, timeout),
            model: "text-embedding-3-small".into(),
            dims: DIMS,
            send_dimensions: true,
            query_prefix: String::new(),
            document_prefix: String::new(),
            input_type: None,
            batch_size: 16,
        })
        .unwrap(),
    );
    let url = format!("sqlite://{}/engram.db", dir.path().display());
    let store = SqliteStore::open(&url, engram::embed::Embedder::identity(embedder.as_ref()))
        .await
        .unwrap();
    let extractor = LlmExtractor::new(LlmSettings {
        endpoint: endpoint(fake, timeout),
        model: "gpt-4o-mini".into(),
        categories: DEFAULT_CATEGORIES.iter().map(|c| c.to_string()).collect(),
    })
    .unwrap();
    let extractor: Arc<dyn engram::extract::Extractor> = if llm {
        Arc::new(extractor)
    } else {
        Arc::new(engram::extract::VerbatimExtractor)
    };
    MemoryService::new(
        Arc::new(store),
        embedder,
        extractor,
        Settings {
            dedup_threshold: 0.9,
            reconcile_threshold: 0.3,
            max_text_bytes: 32 * 1024,
            cache_ttl: Duration::from_secs(60),
            on_llm_error: policy,
            ..Settings::default()
        },
    )
}

/// A conversation of two facts, with a reply between them.
const LISBON_AND_TOKYO: &[(&str, &str)] = &[
    ("user", "I live in Lisbon"),
    ("assistant", "Lovely city!"),
    ("user", "I fly to Tokyo tomorrow"),
];

fn said(messages: &[(&str, &str)]) -> RememberParams {
    RememberParams {
        messages: Some(
            messages
                .iter()
                .map(|(role, content)| Message::new(*role, *content))
                .collect(),
        ),
        user_id: Some("alice".into()),
        ..RememberParams::default()
    }
}

fn server_error() -> Reply {
    Reply::Error {
        status: 500,
        code: "server_error",
        retry_after: None,
    }
}

/// A normal answer from whichever endpoint comes next.
fn answer() -> Reply {
    Reply::Delay(Duration::ZERO)
}

async fn recall(s: &MemoryService, query: &str) -> Vec<String> {
    let request = RecallParams {
        query: query.into(),
        user_id: Some("alice".into()),
        limit: Some(5),
        ..RecallParams::default()
    };
    s.recall(ME, request)
        .await
        .unwrap()
        .results
        .into_iter()
        .map(|r| r.memory.memory)
        .collect()
}

#[tokio::test]
async fn fail_refuses_with_the_models_error_and_stores_nothing() {
    let fake = FakeOpenAi::start(DIMS).await;
    let dir = tempfile::tempdir().unwrap();
    let s = service(&fake, &dir, OnLlmError::Fail).await;

    fake.then(server_error());
    let err = s
        .remember(ME, said(&[("user", "I live in Lisbon")]))
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("500"), "{err}");

    // The chat model answers, the embedder does not: still nothing stored.
    fake.then(answer()).then(server_error());
    let err = s
        .remember(ME, said(&[("user", "I live in Lisbon")]))
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("embedd"), "{err}");
    assert!(current(&s, "alice").await.is_empty());
    assert_eq!(
        s.reextract(10).await.unwrap().remaining,
        0,
        "nothing queued"
    );
}

#[tokio::test]
async fn a_rate_limit_is_waited_out_and_a_slow_model_times_out() {
    let fake = FakeOpenAi::start(DIMS).await;
    let dir = tempfile::tempdir().unwrap();
    let mut extractor_endpoint = endpoint(&fake, Duration::from_millis(800));
    extractor_endpoint.max_retries = 2;
    let retrying = LlmExtractor::new(LlmSettings {
        endpoint: extractor_endpoint,
        model: "gpt-4o-mini".into(),
        categories: vec!["travel".into()],
    })
    .unwrap();
    let plain = service(&fake, &dir, OnLlmError::Fail).await;
    let s = MemoryService::new(
        Arc::new(
            SqliteStore::open(
                &format!("sqlite://{}/retry.db", dir.path().display()),
                engram::embed::HashEmbedder::new(DIMS).identity(),
            )
            .await
            .unwrap(),
        ),
        Arc::new(engram::embed::HashEmbedder::new(DIMS)),
        Arc::new(retrying),
        plain.settings().clone(),
    );

    fake.then(Reply::Error {
        status: 429,
        code: "rate_limit_exceeded",
        retry_after: Some(1),
    });
    let started = std::time::Instant::now();
    let done = s
        .remember(ME, said(&[("user", "I fly to Tokyo in March")]))
        .await
        .unwrap();
    assert_eq!(done.results[0].memory, "I fly to Tokyo in March");
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "Retry-After was honoured"
    );
    assert_eq!(fake.requests_to(CHAT).len(), 2, "one retry");

    // Slower than the timeout on every attempt: a clear error, nothing stored.
    for _ in 0..3 {
        fake.then(Reply::Delay(Duration::from_secs(2)));
    }
    let err = plain
        .remember(ME, said(&[("user", "I work as a nurse")]))
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("did not answer within"), "{err}");
    assert!(err.contains("ENGRAM_LLM_TIMEOUT_SECS"), "{err}");
    assert!(current(&plain, "alice").await.is_empty());
}

/// The chat model fails: every message is stored as said (searchable), the
/// caller is told, and re-extraction replaces the copies by facts, dated
/// when they were said; the assistant's copy is closed, kept in history.
#[tokio::test]
async fn verbatim_keeps_the_text_and_reextract_replaces_it_with_facts() {
    let fake = FakeOpenAi::start(DIMS).await;
    let dir = tempfile::tempdir().unwrap();
    let s = service(&fake, &dir, OnLlmError::Verbatim).await;

    fake.then(server_error());
    let kept = s.remember(ME, said(LISBON_AND_TOKYO)).await.unwrap();
    let deferred = kept.deferred.clone().expect("deferred");
    assert!(deferred.reason.contains("500"), "{deferred:?}");
    assert!(deferred.searchable);
    assert!(deferred.pending_id.is_some());
    let events: Vec<Event> = kept.results.iter().map(|r| r.event).collect();
    assert_eq!(events, [Event::Add, Event::Add, Event::Add]);
    assert_eq!(recall(&s, "Lisbon").await[0], "I live in Lisbon");
    let copies: Vec<_> = kept.results.iter().map(|r| r.id).collect();

    // The model is back and words the facts its own way.
    fake.then(Reply::Content(
        json!({"facts": [
            {"text": "Lives in Lisbon", "categories": ["identity"]},
            {"text": "Flies to Tokyo on the day after it was said", "categories": ["travel"]}
        ]})
        .to_string(),
    ));
    let report = s.reextract(10).await.unwrap();
    assert!(report.failed.is_empty(), "{:?}", report.failed);
    assert_eq!(report.finished.len(), 1);
    assert_eq!(report.remaining, 0);
    let facts = &report.finished[0].result;
    assert_eq!(facts.deferred, None);
    let replaced: Vec<_> = facts
        .results
        .iter()
        .map(|r| (r.event, r.replaces))
        .collect();
    assert_eq!(
        replaced,
        [(Event::Add, Some(copies[0])), (Event::Add, Some(copies[1]))],
        "{facts:?}"
    );
    assert_eq!(
        current(&s, "alice").await,
        [
            "Flies to Tokyo on the day after it was said",
            "Lives in Lisbon"
        ],
        "no verbatim copy is current any more"
    );
    assert_eq!(recall(&s, "Lisbon").await[0], "Lives in Lisbon");

    // The extraction saw when each message was said, to resolve "tomorrow".
    let sent = fake.requests_to(CHAT).last().unwrap().body["messages"][1]["content"]
        .as_str()
        .unwrap()
        .to_owned();
    let today = chrono::Utc::now().format("%Y-%m-%d").to_string();
    assert!(
        sent.contains(&format!("[user] ({today}) I fly to Tokyo tomorrow")),
        "{sent}"
    );
    // Every copy stays in history: replaced ones name their fact, the one
    // left over is closed by the re-extraction.
    let history = common::history(&s, "alice", copies[0]).await;
    assert_eq!(history.last().unwrap().event, Event::Supersede);
    assert_eq!(
        history.last().unwrap().new_memory.as_deref(),
        Some("Lives in Lisbon")
    );
    let history = common::history(&s, "alice", copies[2]).await;
    let last = history.last().unwrap();
    assert_eq!(last.event, Event::Supersede);
    assert_eq!(last.old_memory.as_deref(), Some("I fly to Tokyo tomorrow"));
    assert_eq!(last.new_memory, None);
    assert_eq!(last.actor, "reextract");

    // Done is done: a second run finds nothing.
    let again = s.reextract(10).await.unwrap();
    assert!(again.finished.is_empty() && again.failed.is_empty());
}

/// Facts that repeat a copy word for word keep that copy: nothing churns.
#[tokio::test]
async fn a_copy_that_already_says_the_fact_is_kept() {
    let fake = FakeOpenAi::start(DIMS).await;
    let dir = tempfile::tempdir().unwrap();
    let s = service(&fake, &dir, OnLlmError::Verbatim).await;
    fake.then(server_error());
    let kept = s.remember(ME, said(LISBON_AND_TOKYO)).await.unwrap();
    // The fake extracts each user line as said.
    let report = s.reextract(10).await.unwrap();
    let result = &report.finished[0].result;
    let kept_ids: Vec<_> = result.results.iter().map(|r| (r.event, r.id)).collect();
    assert_eq!(
        kept_ids,
        [
            (Event::None, kept.results[0].id),
            (Event::None, kept.results[2].id)
        ]
    );
    assert_eq!(
        current(&s, "alice").await,
        ["I fly to Tokyo tomorrow", "I live in Lisbon"],
        "the assistant's copy is closed"
    );
}

/// The embedder fails too: nothing is searchable yet, but the message is
/// kept and re-extraction stores it once the servers answer.
#[tokio::test]
async fn an_embedder_outage_keeps_the_message_until_reextract() {
    let fake = FakeOpenAi::start(DIMS).await;
    let dir = tempfile::tempdir().unwrap();
    let s = service(&fake, &dir, OnLlmError::Verbatim).await;

    // Extraction answers; the embedding of its facts fails, and so does
    // the embedding of the verbatim copy.
    fake.then(answer())
        .then(server_error())
        .then(server_error());
    let kept = s
        .remember(ME, said(&[("user", "I am allergic to peanuts")]))
        .await
        .unwrap();
    let deferred = kept.deferred.expect("deferred");
    assert!(!deferred.searchable);
    assert!(deferred.pending_id.is_some());
    assert!(kept.results.is_empty());
    assert!(current(&s, "alice").await.is_empty());

    // Still failing: the entry stays, with one more attempt.
    fake.then(server_error());
    let failed = s.reextract(10).await.unwrap();
    assert_eq!(failed.failed.len(), 1);
    assert!(failed.failed[0].error.contains("500"), "{failed:?}");
    assert_eq!(failed.remaining, 1);

    let report = s.reextract(10).await.unwrap();
    assert_eq!(report.finished.len(), 1, "{report:?}");
    assert_eq!(current(&s, "alice").await, ["I am allergic to peanuts"]);
    assert_eq!(recall(&s, "peanuts").await, ["I am allergic to peanuts"]);
}

/// Without an LLM (verbatim extractor) an embedder outage is still survived:
/// the text waits and re-extraction stores it as said.
#[tokio::test]
async fn without_an_llm_an_embedder_outage_waits_for_reextract() {
    let fake = FakeOpenAi::start(DIMS).await;
    let dir = tempfile::tempdir().unwrap();
    let s = service_with(&fake, &dir, OnLlmError::Verbatim, false).await;
    fake.then(server_error()).then(server_error());
    let kept = s
        .remember(ME, said(&[("user", "Vegetarian since 2019")]))
        .await
        .unwrap();
    assert!(!kept.deferred.expect("deferred").searchable);
    assert!(current(&s, "alice").await.is_empty());
    let report = s.reextract(10).await.unwrap();
    assert_eq!(
        (report.finished.len(), report.skipped),
        (1, 0),
        "{report:?}"
    );
    assert_eq!(current(&s, "alice").await, ["Vegetarian since 2019"]);
    assert_eq!(fake.requests_to(CHAT).len(), 0, "no chat model involved");
}

/// A forgotten text is never extracted back: forgetting a verbatim copy,
/// or the user, drops the pending entry.
#[tokio::test]
async fn forgetting_a_kept_text_drops_its_reextraction() {
    let fake = FakeOpenAi::start(DIMS).await;
    let dir = tempfile::tempdir().unwrap();
    let s = service(&fake, &dir, OnLlmError::Verbatim).await;

    fake.then(server_error());
    let kept = s
        .remember(ME, said(&[("user", "My PIN is 4321")]))
        .await
        .unwrap();
    let one = ForgetParams {
        memory_id: Some(kept.results[0].id.to_string()),
        user_id: Some("alice".into()),
        ..ForgetParams::default()
    };
    s.forget(ME, one).await.unwrap();
    fake.then(server_error());
    s.remember(ME, said(&[("user", "My passport number is X123")]))
        .await
        .unwrap();
    let all = ForgetParams {
        user_id: Some("alice".into()),
        all: Some(true),
        ..ForgetParams::default()
    };
    s.forget(ME, all).await.unwrap();

    let asked = fake.requests_to(CHAT).len();
    let report = s.reextract(10).await.unwrap();
    assert!(report.finished.is_empty() && report.failed.is_empty());
    assert_eq!(report.remaining, 0);
    assert_eq!(
        fake.requests_to(CHAT).len(),
        asked,
        "the model never saw them"
    );
    assert!(current(&s, "alice").await.is_empty());
}

/// What was said before a newer memory never overrides it: the reconciler's
/// SUPERSEDE of the newer memory becomes a keep.
#[tokio::test]
async fn an_older_fact_never_overrides_a_newer_memory() {
    let fake = FakeOpenAi::start(DIMS).await;
    let dir = tempfile::tempdir().unwrap();
    let s = service(&fake, &dir, OnLlmError::Verbatim).await;

    fake.then(server_error());
    s.remember(ME, said(&[("user", "I live in Lisbon")]))
        .await
        .unwrap();
    // Later, with the model back: the move supersedes the kept copy.
    fake.then(Reply::Content(
        json!({"facts": [{"text": "I live in Berlin", "categories": []}]}).to_string(),
    ))
    .then(answer())
    .then(Reply::Content(
        json!({"decisions": [{"fact": 0, "event": "SUPERSEDE", "id": "m1", "text": ""}]})
            .to_string(),
    ));
    let moved = s
        .remember(ME, said(&[("user", "I moved to Berlin")]))
        .await
        .unwrap();
    assert_eq!(moved.results[0].event, Event::Supersede, "{moved:?}");
    assert_eq!(current(&s, "alice").await, ["I live in Berlin"]);

    // Re-extracting the older message: the model would supersede Berlin.
    fake.then(answer()).then(answer()).then(Reply::Content(
        json!({"decisions": [{"fact": 0, "event": "SUPERSEDE", "id": "m1", "text": ""}]})
            .to_string(),
    ));
    let report = s.reextract(10).await.unwrap();
    assert_eq!(report.finished.len(), 1, "{report:?}");
    assert_eq!(report.finished[0].result.results[0].event, Event::None);
    assert_eq!(current(&s, "alice").await, ["I live in Berlin"]);
}

/// The binary as a user runs it: a remember during an outage answers with a
/// warning, and `engram reextract` finishes it (exit 0), or reports what
/// failed again (exit 1).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reextract_command_finishes_what_an_outage_left() {
    let fake = FakeOpenAi::start(DIMS).await;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("engram.db");
    let db_url = format!("sqlite://{}", db.display());
    let env = [
        ("ENGRAM_EXTRACTOR", "llm"),
        ("ENGRAM_EMBEDDER", "openai"),
        ("ENGRAM_EMBEDDING_DIMS", "64"),
        ("ENGRAM_LLM_MAX_RETRIES", "0"),
        ("OPENAI_BASE_URL", fake.base_url.as_str()),
        ("OPENAI_API_KEY", "test-key"),
        ("ENGRAM_DATABASE_URL", db_url.as_str()),
    ];
    let client = connect_with(&db, &env).await;
    fake.then(server_error());
    let kept = ok(
        &client,
        "remember",
        json!({"messages": [{"role": "user", "content": "I prefer aisle seats", "date": "2026-11-20"}]}),
    )
    .await;
    assert_eq!(kept["deferred"]["searchable"], true, "{kept}");
    let found = ok(&client, "recall", json!({"query": "aisle seats"})).await;
    assert_eq!(texts(&found), ["I prefer aisle seats"]);
    client.cancel().await.unwrap();

    let run = |env: Vec<(String, String)>| {
        tokio::task::spawn_blocking(move || {
            let env: Vec<(&str, &str)> =
                env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            run_engram(&["reextract"], &env)
        })
    };
    let owned: Vec<(String, String)> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();

    fake.then(server_error());
    let out = run(owned.clone()).await.unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("failed again"), "{stdout}");
    assert!(stdout.contains("1 still pending"), "{stdout}");

    let out = run(owned).await.unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("NONE \"I prefer aisle seats\""), "{stdout}");
    assert!(stdout.contains("re-extracted 1, failed 0"), "{stdout}");
    assert!(stdout.contains("0 still pending"), "{stdout}");
    // The message's own date reached the model, not the day it ran.
    let sent: Value = fake.requests_to(CHAT).last().unwrap().body["messages"][1]["content"].clone();
    assert!(
        sent.as_str()
            .unwrap()
            .contains("[user] (2026-11-20) I prefer aisle seats"),
        "{sent}"
    );
    assert!(fake.requests_to(EMBED).len() >= 2);
}

/// Recall stays up while the embedding server is down: the keyword search
/// answers alone, says so, and is not taken for the usual answer once the
/// server is back. A focused context degrades the same way.
#[tokio::test]
async fn an_embedder_outage_leaves_recall_to_keywords_and_says_so() {
    let fake = FakeOpenAi::start(DIMS).await;
    let dir = tempfile::tempdir().unwrap();
    let s = service_with(&fake, &dir, OnLlmError::Fail, false).await;
    for text in [
        "I live in Lisbon",
        "My sister plays the cello",
        "I work night shifts as a nurse",
    ] {
        let request = RememberParams {
            text: Some(text.into()),
            user_id: Some("alice".into()),
            infer: Some(false),
            ..RememberParams::default()
        };
        s.remember(ME, request).await.unwrap();
    }
    let ask = |query: &str| RecallParams {
        query: query.into(),
        user_id: Some("alice".into()),
        ..RecallParams::default()
    };

    // Down before the first search: not even the floor can be measured.
    fake.then(server_error());
    let down = s.recall(ME, ask("Where is Lisbon?")).await.unwrap();
    assert_eq!(down.degraded, Some(Degraded::Embedder));
    assert_eq!(down.results.len(), 1, "{:#?}", down.results);
    let hit = &down.results[0];
    assert_eq!(hit.memory.memory, "I live in Lisbon");
    assert_eq!(hit.vector_score, None);
    assert!(hit.score > 0.0 && hit.score <= 0.5, "{}", hit.score);

    // Back up: the usual answer, both signals.
    let up = s.recall(ME, ask("Where is Lisbon?")).await.unwrap();
    assert_eq!(up.degraded, None);
    assert_eq!(up.results[0].memory.memory, "I live in Lisbon");
    assert!(up.results[0].vector_score.is_some());
    assert!(up.results[0].score > hit.score);

    // Down again, after the floor is known.
    fake.then(server_error());
    let context = UserContextParams {
        user_id: Some("alice".into()),
        query: Some("cello".into()),
        ..UserContextParams::default()
    };
    let focused = s.user_context(ME, context).await.unwrap();
    assert_eq!(focused.degraded, Some(Degraded::Embedder));
    assert_eq!(focused.memories[0].memory, "My sister plays the cello");
    assert_eq!(focused.total, 3);
}
