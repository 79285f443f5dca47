//! The command line as an operator meets it: help and version, start-up
//! refusing bad configuration with a message that names the key, config
//! files, and the embedder guard with its `engram reembed` way out.

use crate::common;

use std::process::Output;

use common::{Engram, connect_with, ok, run_engram, texts};
use serde_json::json;

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn help_and_version() {
    let help = run_engram(&["--help"], &[]);
    assert!(help.status.success());
    let text = String::from_utf8_lossy(&help.stdout);
    for word in ["serve", "migrate", "reembed", "bench", "--config"] {
        assert!(text.contains(word), "--help lacks {word}: {text}");
    }
    let version = run_engram(&["--version"], &[]);
    assert_eq!(
        String::from_utf8_lossy(&version.stdout).trim(),
        format!("engram {}", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn bad_configuration_stops_start_up_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}/e.db", dir.path().display());
    let cases = [
        ("ENGRAM_EMBEDDER", "bert", "auto, hash, local, openai"),
        ("ENGRAM_EXTRACTOR", "magic", "verbatim, llm"),
        ("ENGRAM_EMBEDDING_DIMS", "lots", "integer"),
        ("ENGRAM_DEDUP_THRESHOLD", "2", "(0, 1]"),
        ("ENGRAM_MAX_TEXT_BYTES", "0", "1..="),
        ("ENGRAM_VECTOR_CACHE_MB", "0", "1..="),
        ("ENGRAM_DATABASE_URL", "mysql://db", "sqlite://"),
        ("ENGRAM_CACHE_URL", "memcached://x", "redis://"),
        ("ENGRAM_INDEX", "ivfflat", "auto, hnsw, diskann"),
        ("ENGRAM_AUTO_MIGRATE", "sometimes", "true or false"),
        ("ENGRAM_DATABASE_POOL_SIZE", "0", "1..=1000"),
        ("ENGRAM_DEFAULT_USER", " ", "default_user"),
    ];
    for (key, value, allowed) in cases {
        let mut env = vec![("ENGRAM_DATABASE_URL", db.as_str())];
        env.push((key, value));
        let out = run_engram(&["serve"], &env);
        assert!(!out.status.success(), "{key}={value} should stop start-up");
        let err = stderr(&out);
        assert!(
            err.contains(key),
            "{key}={value}: message does not name the key: {err}"
        );
        assert!(
            err.contains(allowed),
            "{key}={value}: message does not say what is allowed: {err}"
        );
        assert!(out.stdout.is_empty(), "nothing on stdout");
    }
    // OpenAI itself without a key: start-up says which variable, and the way out.
    let no_key = run_engram(
        &["serve"],
        &[
            ("ENGRAM_DATABASE_URL", &db),
            ("ENGRAM_EMBEDDER", "openai"),
            ("OPENAI_API_KEY", ""),
            ("OPENAI_BASE_URL", ""),
        ],
    );
    assert!(!no_key.status.success());
    let err = stderr(&no_key);
    assert!(
        err.contains("OPENAI_API_KEY is not set") && err.contains("ENGRAM_EMBEDDER=hash"),
        "{err}"
    );
}

#[test]
fn config_file_is_read_and_typos_in_it_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("engram.toml");
    std::fs::write(&file, "embedder = \"hash\"\nembeding_dims = 12\n").unwrap();
    let out = run_engram(&["serve", "--config", file.to_str().unwrap()], &[]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("embeding_dims"), "{}", stderr(&out));

    let missing = run_engram(&["serve"], &[("ENGRAM_CONFIG", "/nonexistent/engram.toml")]);
    assert!(!missing.status.success());
    assert!(
        stderr(&missing).contains("/nonexistent/engram.toml"),
        "{}",
        stderr(&missing)
    );
}

#[tokio::test]
async fn a_store_refuses_another_embedder_until_reembedded() {
    let engram_dir = Engram::new();
    let url = format!("sqlite://{}", engram_dir.db.display());
    let client = connect_with(&engram_dir.db, &[("ENGRAM_DEFAULT_USER", "zoe")]).await;
    ok(
        &client,
        "remember",
        json!({"text": "Plays the cello in an orchestra"}),
    )
    .await;
    client.cancel().await.unwrap();

    let env = [
        ("ENGRAM_DATABASE_URL", url.as_str()),
        ("ENGRAM_EMBEDDING_DIMS", "256"),
    ];
    let refused = run_engram(&["serve"], &env);
    assert!(!refused.status.success());
    let err = stderr(&refused);
    assert!(
        err.contains("384") && err.contains("256") && err.contains("engram reembed"),
        "{err}"
    );

    let reembed = run_engram(&["reembed"], &env);
    assert!(reembed.status.success(), "{}", stderr(&reembed));
    assert!(
        stderr(&reembed).contains("re-embedded 1 memories"),
        "{}",
        stderr(&reembed)
    );

    let client = connect_with(
        &engram_dir.db,
        &[
            ("ENGRAM_DEFAULT_USER", "zoe"),
            ("ENGRAM_EMBEDDING_DIMS", "256"),
        ],
    )
    .await;
    let found = ok(&client, "recall", json!({"query": "cello orchestra"})).await;
    assert_eq!(texts(&found), ["Plays the cello in an orchestra"]);
    assert!(found["results"][0]["vector_score"].as_f64().unwrap() > 0.5);
    client.cancel().await.unwrap();
}

#[test]
fn a_client_that_leaves_before_initializing_ends_the_server_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}/e.db", dir.path().display());
    let out = run_engram(
        &["serve"],
        &[("ENGRAM_DATABASE_URL", &db), ("ENGRAM_LOG", "info")],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(out.stdout.is_empty(), "stdout is for the protocol only");
    assert!(
        stderr(&out).contains("before initializing"),
        "{}",
        stderr(&out)
    );
}
