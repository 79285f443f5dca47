//! Erasure everywhere, proven: a user with memories, history, a deferred
//! remember, a day's token usage, cache entries, rate-limit state and audit
//! rows is erased, and
//! then no table (listed from the schema) and no cache key or value holds
//! their id or their text. Audit rows stay, naming them by pseudonym only.
//! On SQLite the file's bytes are checked too: deleted rows must not
//! survive in free pages or in the WAL.

use crate::common;

use common::fake_openai::FakeOpenAi;
use common::http::Server;
use common::redis::{Peek, shared_url, unique_prefix};
use reqwest::Method;
use serde_json::json;

/// What must not be found anywhere once alice is erased.
const TRACES: [&str; 3] = ["alice", "marmalade", "Philippa"];

/// Gives alice everything a user can leave behind, erases her, and checks
/// the cache. The server is stopped after.
async fn leave_traces_then_erase(database_url: &str) {
    let prefix = unique_prefix();
    let redis = shared_url();
    let fake = FakeOpenAi::start(64).await;
    let server = Server::with_keys(
        Some(database_url),
        &[
            ("ENGRAM_CACHE_URL", redis.as_str()),
            ("ENGRAM_CACHE_PREFIX", prefix.as_str()),
            // The model answers once (its tokens are counted for alice),
            // then her day's budget is spent: the next remember is kept
            // verbatim and queued for re-extraction (a deferred remember).
            ("ENGRAM_EXTRACTOR", "llm"),
            ("OPENAI_BASE_URL", fake.base_url.as_str()),
            ("OPENAI_API_KEY", "test-key"),
            ("ENGRAM_LLM_MAX_RETRIES", "0"),
            ("ENGRAM_TOKEN_BUDGET_DAILY", "100"),
        ],
    )
    .await;
    let alice = server.create_key(&["--user", "alice"]);
    let admin = server.create_key(&["--admin"]);
    let extracted = server
        .call(
            Method::POST,
            "/api/v1/memory",
            Some(&alice),
            Some(json!({"text": "Philippa's marmalade won a prize at the fair"})),
        )
        .await;
    assert_eq!(extracted.status, 200, "{}", extracted.text);
    assert!(
        extracted.body["usage"]["calls"].as_u64() >= Some(1),
        "{}",
        extracted.text
    );
    let kept = server
        .call(
            Method::POST,
            "/api/v1/memory",
            Some(&alice),
            Some(json!({"text": "Grandmother Philippa's marmalade recipe uses Seville oranges"})),
        )
        .await;
    assert_eq!(kept.status, 200, "{}", kept.text);
    assert_eq!(
        kept.body["deferred"]["cause"], "token_budget",
        "{}",
        kept.text
    );
    assert!(
        kept.body["deferred"]["pending_id"].is_string(),
        "{}",
        kept.text
    );
    let stored = server
        .call(
            Method::POST,
            "/api/v1/memory",
            Some(&alice),
            Some(json!({"text": "Makes marmalade every January", "infer": false})),
        )
        .await;
    assert_eq!(stored.status, 200, "{}", stored.text);
    for _ in 0..2 {
        let found = server
            .call(
                Method::POST,
                "/api/v1/memory/search",
                Some(&alice),
                Some(json!({"query": "marmalade"})),
            )
            .await;
        assert_eq!(found.status, 200, "{}", found.text);
        let context = server
            .call(
                Method::GET,
                "/api/v1/memory/context/alice",
                Some(&alice),
                None,
            )
            .await;
        assert_eq!(context.status, 200, "{}", context.text);
    }
    let peek = Peek::connect(&redis).await;
    assert!(
        !peek.keys(&format!("{prefix}*")).await.is_empty(),
        "the calls left nothing in the cache to erase"
    );

    let erased = server
        .call(
            Method::DELETE,
            "/api/v1/memory/users/alice",
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(erased.status, 200, "{}", erased.text);
    assert_eq!(erased.body["deleted"], 3, "{}", erased.text);

    for text in peek.everything(&prefix).await {
        for trace in TRACES {
            assert!(!text.contains(trace), "the cache holds {trace}: {text}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_an_erased_user_leaves_no_trace_in_any_table_the_file_or_the_cache() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/engram.db", dir.path().display());
    leave_traces_then_erase(&url).await;
    // The server is gone: what is on disk is what stays.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let rows = common::raw::every_row(&url).await;
    let audit = rows.iter().filter(|(t, _)| t == "audit_log").count();
    assert!(audit >= 6, "the erasure kept the audit trail: {audit} rows");
    for (table, row) in &rows {
        for trace in TRACES {
            assert!(!row.contains(trace), "{table} holds {trace}: {row}");
        }
    }
    let path = url.trim_start_matches("sqlite://");
    for file in [path.to_owned(), format!("{path}-wal")] {
        let Ok(bytes) = std::fs::read(&file) else {
            continue;
        };
        for trace in ["marmalade", "Philippa"] {
            assert!(
                !bytes.windows(trace.len()).any(|w| w == trace.as_bytes()),
                "{file} still holds \"{trace}\" in its bytes"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_an_erased_user_leaves_no_trace_in_any_table_or_the_cache() {
    let db = common::postgres::TestDatabase::create().await;
    leave_traces_then_erase(&db.url).await;
    let rows = common::raw::every_row(&db.url).await;
    assert!(
        rows.iter().any(|(t, _)| t == "audit_log"),
        "the audit trail stays"
    );
    for (table, row) in &rows {
        for trace in TRACES {
            assert!(!row.contains(trace), "{table} holds {trace}: {row}");
        }
    }
}
