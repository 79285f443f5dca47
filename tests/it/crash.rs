//! What a crash keeps: the server aborted at an exact step
//! (`ENGRAM_TEST_CRASH_AT`, see `engram::failpoint`), then started again
//! on the same database. A remember of several messages is one
//! transaction: killed after writing its facts, before its commit, it
//! leaves none of them.

use crate::common;

use std::time::Duration;

use common::postgres::TestDatabase;
use common::{connect_to, ok, total};
use engram::failpoint;
use serde_json::json;

fn two_messages() -> serde_json::Value {
    json!({
        "user_id": "alice",
        "infer": false,
        "messages": [
            {"role": "user", "content": "I moved to Porto in March"},
            {"role": "user", "content": "My sister Ana lives in Braga"}
        ]
    })
}

async fn a_remember_killed_before_its_commit_leaves_none(url: &str) {
    let crashing = connect_to(url, &[(failpoint::VARIABLE, "remember-before-commit")]).await;
    let args = two_messages().as_object().cloned().expect("an object");
    let call = crashing
        .call_tool(rmcp::model::CallToolRequestParams::new("remember").with_arguments(args));
    let answer = tokio::time::timeout(Duration::from_secs(30), call)
        .await
        .expect("the client notices the server is gone");
    assert!(
        answer.is_err(),
        "the server was to abort before committing the two facts, yet answered {answer:?}"
    );

    let client = connect_to(url, &[]).await;
    assert_eq!(
        total(&client, "alice").await,
        0,
        "a remember killed half way left some of its facts"
    );
    // The same remember, uninterrupted, stores both.
    let stored = ok(&client, "remember", two_messages()).await;
    assert_eq!(
        stored["results"].as_array().map(Vec::len),
        Some(2),
        "{stored}"
    );
    assert_eq!(total(&client, "alice").await, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_a_remember_killed_before_its_commit_leaves_none() {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!("sqlite://{}", dir.path().join("engram.db").display());
    a_remember_killed_before_its_commit_leaves_none(&url).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_remember_killed_before_its_commit_leaves_none() {
    let db = TestDatabase::create().await;
    a_remember_killed_before_its_commit_leaves_none(&db.url).await;
}
