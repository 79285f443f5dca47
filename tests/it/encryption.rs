//! Encryption at rest, end to end on both stores: sensitive metadata and a
//! deferred remember's input reach the database (and the cache) sealed,
//! come back plain to their owner, cannot be filtered on, and survive
//! `engram rotate-key` (run while a server is up) with the old key removed
//! afterwards.

use crate::common;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use common::fake_openai::{FakeOpenAi, Reply};
use common::http::Server;
use common::redis::{Peek, shared_url, unique_prefix};
use reqwest::Method;
use serde_json::{Value, json};

/// Sensitive values: never in the database or the cache in clear.
const DIAGNOSIS: &str = "Glimmerfen syndrome";
const PIN: &str = "Quokka-Ventriloquist";
/// A deferred remember's text: never in the pending queue in clear.
const QUEUED: &str = "Bartholomew keeps the spare key under the heron statue";

const OLD_KEY: [u8; 32] = [7; 32];
const NEW_KEY: [u8; 32] = [9; 32];

/// The stored JSON of `memories.metadata`, `pending_extractions.metadata`
/// and `pending_extractions.input`, parsed.
async fn sealed_columns(url: &str) -> Vec<Value> {
    let queries = [
        "SELECT metadata FROM memories",
        "SELECT metadata FROM pending_extractions",
        "SELECT input FROM pending_extractions",
    ];
    let mut out = Vec::new();
    if url.starts_with("sqlite:") {
        let pool = sqlx::SqlitePool::connect(url).await.unwrap();
        for q in queries {
            let texts: Vec<String> = sqlx::query_scalar(q).fetch_all(&pool).await.unwrap();
            out.extend(texts.iter().map(|t| serde_json::from_str(t).unwrap()));
        }
        pool.close().await;
    } else {
        let pool = sqlx::PgPool::connect(url).await.unwrap();
        for q in queries {
            let values: Vec<Value> = sqlx::query_scalar(q).fetch_all(&pool).await.unwrap();
            out.extend(values);
        }
        pool.close().await;
    }
    out
}

/// The key ids of every envelope in `values`.
fn kids(values: &[Value]) -> Vec<String> {
    fn walk(v: &Value, out: &mut Vec<String>) {
        if engram::crypto::is_envelope(v) {
            out.push(v["kid"].as_str().unwrap().to_owned());
        } else if let Value::Object(map) = v {
            map.values().for_each(|v| walk(v, out));
        }
    }
    let mut out = Vec::new();
    values.iter().for_each(|v| walk(v, &mut out));
    out
}

async fn run_engram(
    args: &'static [&'static str],
    env: Vec<(String, String)>,
) -> std::process::Output {
    tokio::task::spawn_blocking(move || {
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        common::run_engram(args, &env)
    })
    .await
    .unwrap()
}

async fn sealed_at_rest_then_rotated(database_url: &str) {
    let old = B64.encode(OLD_KEY);
    let new = B64.encode(NEW_KEY);
    let prefix = unique_prefix();
    let redis = shared_url();
    let fake = FakeOpenAi::start(64).await;
    let base = [
        ("ENGRAM_SENSITIVE_METADATA_KEYS", "diagnosis"),
        ("ENGRAM_CACHE_URL", redis.as_str()),
        ("ENGRAM_CACHE_PREFIX", prefix.as_str()),
        ("ENGRAM_EXTRACTOR", "llm"),
        ("OPENAI_BASE_URL", fake.base_url.as_str()),
        ("ENGRAM_LLM_MAX_RETRIES", "0"),
        ("ENGRAM_ON_LLM_ERROR", "verbatim"),
        ("ENGRAM_REST_RATE_LIMIT", "0"),
        ("ENGRAM_REST_USER_RATE_LIMIT", "0"),
    ];
    let mut env = base.to_vec();
    env.push(("ENGRAM_ENCRYPTION_KEY", old.as_str()));
    let server = Server::with_keys(Some(database_url), &env).await;
    let alice = server.create_key(&["--user", "alice"]);
    let metadata = json!({"diagnosis": DIAGNOSIS, "secret_pin": PIN, "topic": "health"});

    let stored = server
        .call(
            Method::POST,
            "/api/v1/memory",
            Some(&alice),
            Some(
                json!({"text": "Saw the doctor on Tuesday", "infer": false, "metadata": metadata}),
            ),
        )
        .await;
    assert_eq!(stored.status, 200, "{}", stored.text);
    let id = stored.body["results"][0]["id"].as_str().unwrap().to_owned();
    // The model fails once: the remember is kept verbatim and queued.
    fake.then(Reply::Error {
        status: 500,
        code: "server_error",
        retry_after: None,
    });
    let deferred = server
        .call(
            Method::POST,
            "/api/v1/memory",
            Some(&alice),
            Some(json!({"text": QUEUED, "metadata": {"diagnosis": DIAGNOSIS}})),
        )
        .await;
    assert_eq!(deferred.status, 200, "{}", deferred.text);
    assert!(
        deferred.body["deferred"]["pending_id"].is_string(),
        "{}",
        deferred.text
    );

    // Plain for their owner, twice (the second from the cache).
    for _ in 0..2 {
        let found = server
            .call(
                Method::POST,
                "/api/v1/memory/search",
                Some(&alice),
                Some(json!({"query": "doctor Tuesday"})),
            )
            .await;
        assert_eq!(found.status, 200, "{}", found.text);
        let hit = found.body["results"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["id"] == id.as_str())
            .unwrap_or_else(|| panic!("{}", found.text));
        assert_eq!(hit["metadata"], metadata, "{}", found.text);
        let context = server
            .call(
                Method::GET,
                "/api/v1/memory/context/alice",
                Some(&alice),
                None,
            )
            .await;
        assert_eq!(context.status, 200, "{}", context.text);
        assert!(context.text.contains(PIN), "{}", context.text);
    }
    let one = server
        .call(
            Method::GET,
            &format!("/api/v1/memory/{id}"),
            Some(&alice),
            None,
        )
        .await;
    assert_eq!(one.status, 200, "{}", one.text);
    assert!(
        one.text.contains(DIAGNOSIS) && one.text.contains(PIN),
        "{}",
        one.text
    );
    // The export is plain JSON: the queued input and its metadata too.
    let export = server
        .call(
            Method::GET,
            "/api/v1/memory/export/alice",
            Some(&alice),
            None,
        )
        .await;
    assert_eq!(export.status, 200, "{}", export.text);
    assert_eq!(
        export.body["pending"][0]["input"],
        json!({"text": QUEUED}),
        "{}",
        export.text
    );
    assert_eq!(
        export.body["pending"][0]["metadata"]["diagnosis"],
        DIAGNOSIS
    );
    assert!(!export.text.contains("$enc"), "{}", export.text);

    // Filtering on a sealed key is refused, saying why; a plain key filters.
    for key in ["diagnosis", "secret_pin"] {
        let refused = server
            .call(
                Method::POST,
                "/api/v1/memory/search",
                Some(&alice),
                Some(json!({"query": "doctor", "filters": {key: "x"}})),
            )
            .await;
        assert_eq!(refused.status, 400, "{}", refused.text);
        assert!(
            refused
                .text
                .contains(&format!("metadata key \\\"{key}\\\" is encrypted at rest")),
            "{}",
            refused.text
        );
    }
    let refused = server
        .call(
            Method::POST,
            "/api/v1/memory/forget",
            Some(&alice),
            Some(json!({"user_id": "alice", "filters": {"diagnosis": DIAGNOSIS}, "all": true})),
        )
        .await;
    assert_eq!(refused.status, 400, "{}", refused.text);
    assert!(
        refused.text.contains("is encrypted at rest"),
        "{}",
        refused.text
    );
    let plain = server
        .call(
            Method::POST,
            "/api/v1/memory/search",
            Some(&alice),
            Some(json!({"query": "doctor", "filters": {"topic": "health"}})),
        )
        .await;
    assert_eq!(plain.status, 200, "{}", plain.text);
    assert_eq!(
        plain.body["results"].as_array().unwrap().len(),
        1,
        "{}",
        plain.text
    );

    // At rest: nothing sensitive in any table or cache entry.
    let peek = Peek::connect(&redis).await;
    let cached = peek.everything(&prefix).await;
    assert!(cached.len() > 2, "the reads left nothing in the cache");
    for text in &cached {
        assert!(
            !text.contains(DIAGNOSIS) && !text.contains(PIN),
            "cache holds {text}"
        );
    }
    for (table, row) in common::raw::every_row(database_url).await {
        assert!(
            !row.contains(DIAGNOSIS) && !row.contains(PIN),
            "{table} holds {row}"
        );
        if table == "pending_extractions" {
            assert!(
                !row.contains("Bartholomew"),
                "the queued input is plain: {row}"
            );
        }
    }
    let old_id = engram::crypto::key_id(&OLD_KEY);
    let sealed = kids(&sealed_columns(database_url).await);
    // Two values of one memory, two of its deferred copy, one in the pending
    // metadata, the pending input.
    assert_eq!(sealed.len(), 5, "{sealed:?}");
    assert!(sealed.iter().all(|k| *k == old_id), "{sealed:?}");

    // Rotation while the server is up: the new key seals, the old one opens.
    let rotate_env = vec![
        ("ENGRAM_DATABASE_URL".to_owned(), database_url.to_owned()),
        ("ENGRAM_ENCRYPTION_KEY".to_owned(), new.clone()),
        ("ENGRAM_ENCRYPTION_OLD_KEYS".to_owned(), old.clone()),
        ("ENGRAM_CACHE_URL".to_owned(), redis.clone()),
        ("ENGRAM_CACHE_PREFIX".to_owned(), prefix.clone()),
    ];
    let rotated = run_engram(&["rotate-key"], rotate_env.clone()).await;
    let stdout = String::from_utf8_lossy(&rotated.stdout);
    assert!(
        rotated.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&rotated.stderr)
    );
    assert!(stdout.contains("memory metadata: 2 re-sealed"), "{stdout}");
    assert!(stdout.contains("pending inputs: 1 re-sealed"), "{stdout}");
    let new_id = engram::crypto::key_id(&NEW_KEY);
    let sealed = kids(&sealed_columns(database_url).await);
    assert_eq!(sealed.len(), 5, "{sealed:?}");
    assert!(sealed.iter().all(|k| *k == new_id), "{sealed:?}");
    // A second run finds nothing left to do.
    let again = run_engram(&["rotate-key"], rotate_env).await;
    assert!(again.status.success());
    assert!(String::from_utf8_lossy(&again.stdout).contains("0 re-sealed"));
    drop(server);
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;

    // The old key removed: everything still reads, and the queued input
    // re-extracts.
    let reextract_env = vec![
        ("ENGRAM_DATABASE_URL".to_owned(), database_url.to_owned()),
        ("ENGRAM_ENCRYPTION_KEY".to_owned(), new.clone()),
        (
            "ENGRAM_SENSITIVE_METADATA_KEYS".to_owned(),
            "diagnosis".to_owned(),
        ),
        ("ENGRAM_EXTRACTOR".to_owned(), "llm".to_owned()),
        ("OPENAI_BASE_URL".to_owned(), fake.base_url.clone()),
    ];
    let reextracted = run_engram(&["reextract"], reextract_env).await;
    assert!(
        reextracted.status.success(),
        "{}{}",
        String::from_utf8_lossy(&reextracted.stdout),
        String::from_utf8_lossy(&reextracted.stderr)
    );
    let mut env = base.to_vec();
    env.push(("ENGRAM_ENCRYPTION_KEY", new.as_str()));
    let server = Server::with_keys(Some(database_url), &env).await;
    let found = server
        .call(
            Method::POST,
            "/api/v1/memory/search",
            Some(&alice),
            Some(json!({"query": "spare key heron statue", "limit": 10})),
        )
        .await;
    assert_eq!(found.status, 200, "{}", found.text);
    let results = found.body["results"].as_array().unwrap();
    assert!(results.len() >= 2, "{}", found.text);
    for r in results {
        assert_eq!(r["metadata"]["diagnosis"], DIAGNOSIS, "{}", found.text);
    }
    assert!(
        results
            .iter()
            .any(|r| r["memory"].as_str().unwrap().contains("heron")),
        "{}",
        found.text
    );
    let export = server
        .call(
            Method::GET,
            "/api/v1/memory/export/alice",
            Some(&alice),
            None,
        )
        .await;
    assert_eq!(
        export.body["pending"],
        json!([]),
        "re-extracted: {}",
        export.text
    );
    assert!(!export.text.contains("$enc"), "{}", export.text);
    for (table, row) in common::raw::every_row(database_url).await {
        assert!(
            !row.contains(DIAGNOSIS) && !row.contains(PIN),
            "{table} holds {row}"
        );
    }
    let sealed = kids(&sealed_columns(database_url).await);
    assert!(sealed.iter().all(|k| *k == new_id), "{sealed:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_sensitive_values_are_sealed_at_rest_and_survive_rotation() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/engram.db", dir.path().display());
    sealed_at_rest_then_rotated(&url).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_sensitive_values_are_sealed_at_rest_and_survive_rotation() {
    let db = common::postgres::TestDatabase::create().await;
    sealed_at_rest_then_rotated(&db.url).await;
}

#[test]
fn a_key_that_is_not_32_bytes_of_base64_stops_start_up() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/engram.db", dir.path().display());
    let out = common::run_engram(
        &["migrate"],
        &[
            ("ENGRAM_ENCRYPTION_KEY", "c2hvcnQ="),
            ("ENGRAM_DATABASE_URL", url.as_str()),
        ],
    );
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("ENGRAM_ENCRYPTION_KEY") && stderr.contains("5 bytes"),
        "{stderr}"
    );
    assert!(!stderr.contains("c2hvcnQ"), "the key is echoed: {stderr}");
}
