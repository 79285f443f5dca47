//! The audit trail through the real binary: every operation leaves a row
//! naming its principal, door, pseudonymous user, memories touched and
//! outcome, with no memory text; `engram audit seal` chains the rows and
//! `engram audit verify` finds a row edited afterwards.

use crate::common;

use common::{connect_to, ok, run_engram, tool_err};
use serde_json::{Value, json};

/// The rows `engram audit --json` prints for the database at `url`, oldest first.
fn audit_rows(url: &str) -> Vec<Value> {
    let out = run_engram(
        &["audit", "--json", "--limit", "1000"],
        &[("ENGRAM_DATABASE_URL", url)],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut rows: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON row"))
        .collect();
    rows.reverse();
    rows
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_stdio_operation_leaves_a_row_and_the_chain_finds_an_edit() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("engram.db");
    let url = format!("sqlite://{}", db.display());
    let client = connect_to(&url, &[]).await;
    let stored = ok(
        &client,
        "remember",
        json!({"user_id": "alice", "infer": false, "messages": [
            {"role": "user", "content": "I moved to Porto in March"},
            {"role": "user", "content": "My sister Ana lives in Braga"}]}),
    )
    .await;
    let first = stored["results"][0]["id"].as_str().unwrap().to_owned();
    ok(
        &client,
        "recall",
        json!({"user_id": "alice", "query": "Porto"}),
    )
    .await;
    ok(&client, "user_context", json!({"user_id": "alice"})).await;
    ok(
        &client,
        "forget",
        json!({"user_id": "alice", "memory_id": first}),
    )
    .await;
    tool_err(
        &client,
        "forget",
        json!({"user_id": "alice", "memory_id": first}),
    )
    .await;
    tool_err(
        &client,
        "forget",
        json!({"user_id": "alice", "filters": {"topic": "x"}}),
    )
    .await;
    ok(
        &client,
        "forget",
        json!({"user_id": "alice", "all": true, "before": "2000-01-01"}),
    )
    .await;
    ok(&client, "forget", json!({"user_id": "alice", "all": true})).await;
    client.cancel().await.unwrap();

    // Reads' and failures' rows are written after their answers, so the
    // trail's order (seq) is not the calls' order: compare as a set.
    let rows = audit_rows(&url);
    let mut ops: Vec<(&str, &str)> = rows
        .iter()
        .map(|r| {
            (
                r["operation"].as_str().unwrap(),
                r["outcome"].as_str().unwrap(),
            )
        })
        .collect();
    ops.sort();
    assert_eq!(
        ops,
        [
            ("forget", "not_found"),
            ("forget", "ok"),
            ("forget_matching", "invalid_input"),
            ("forget_matching", "ok"),
            ("forget_user", "ok"),
            ("recall", "ok"),
            ("remember", "ok"),
            ("user_context", "ok"),
        ]
    );
    for row in &rows {
        assert_eq!(row["principal"], "operator", "{row}");
        assert_eq!(row["transport"], "stdio", "{row}");
        assert!(row["key_id"].is_null(), "{row}");
        let user_ref = row["user_ref"].as_str().expect("a pseudonym");
        assert_eq!(user_ref.len(), 64, "{row}");
        assert_eq!(user_ref, rows[0]["user_ref"].as_str().unwrap());
        let text = row.to_string();
        for secret in ["alice", "Porto", "Braga", "Ana"] {
            assert!(!text.contains(secret), "{secret} in {text}");
        }
    }
    let row = |op: &str, outcome: &str| {
        rows.iter()
            .find(|r| r["operation"] == op && r["outcome"] == outcome)
            .unwrap_or_else(|| panic!("no {op} {outcome} row"))
    };
    assert_eq!(row("remember", "ok")["memory_count"], 2);
    assert_eq!(
        row("remember", "ok")["memory_ids"].as_array().map(Vec::len),
        Some(2)
    );
    assert_eq!(row("forget", "ok")["memory_ids"][0], first.as_str());
    assert_eq!(
        row("forget_matching", "ok")["memory_count"],
        0,
        "nothing was that old"
    );
    assert_eq!(
        row("forget_user", "ok")["memory_count"],
        1,
        "one memory was left to erase"
    );
    // The operator finds a user's rows by id (through the pseudonym).
    let out = run_engram(
        &["audit", "--json", "--user", "alice"],
        &[("ENGRAM_DATABASE_URL", &url)],
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 8);

    let engram = |args: &[&str]| run_engram(args, &[("ENGRAM_DATABASE_URL", &url)]);
    // Before sealing, verify says the rows are not covered yet.
    let unsealed = engram(&["audit", "verify"]);
    assert!(unsealed.status.success());
    let said = String::from_utf8_lossy(&unsealed.stdout);
    assert!(
        said.contains("0 sealed row(s) verified") && said.contains("8 newer row(s) not sealed yet"),
        "{said}"
    );
    let sealed = engram(&["audit", "seal"]);
    assert!(
        sealed.status.success(),
        "{}",
        String::from_utf8_lossy(&sealed.stderr)
    );
    let verified = engram(&["audit", "verify"]);
    assert!(verified.status.success());
    let said = String::from_utf8_lossy(&verified.stdout);
    assert!(
        said.contains("8 sealed row(s) verified") && !said.contains("not sealed"),
        "{said}"
    );
    let sealed_rows = audit_rows(&url);
    let edited = sealed_rows
        .iter()
        .find(|r| r["operation"] == "forget" && r["outcome"] == "not_found")
        .and_then(|r| r["chain_pos"].as_i64())
        .expect("the refused forget's row is sealed");

    // Someone with the database edits a sealed row (past the trigger).
    let pool = sqlx::SqlitePool::connect(&url).await.unwrap();
    sqlx::raw_sql(
        "DROP TRIGGER audit_log_sealed_rows_are_final; \
         UPDATE audit_log SET outcome = 'ok' WHERE operation = 'forget' AND outcome = 'not_found'",
    )
    .execute(&pool)
    .await
    .unwrap();
    pool.close().await;
    let verified = engram(&["audit", "verify"]);
    assert!(!verified.status.success(), "an edited row went unnoticed");
    let said = String::from_utf8_lossy(&verified.stderr);
    assert!(
        said.contains(&format!("chain position {edited}"))
            && said.contains(&format!("{} row(s) before it", edited - 1)),
        "{said}"
    );
}

/// Over HTTP on PostgreSQL: REST and MCP calls leave rows naming the key's
/// kind, the door and the client's address; only an admin key may read the
/// trail (`GET /api/v1/audit`, paged); the running server seals the rows
/// within seconds, and `engram audit verify` finds the chain intact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_calls_are_audited_with_their_door_and_address_and_sealed_while_serving() {
    use common::http::{NO_LIMITS, Server};
    use reqwest::Method;

    let db = common::postgres::TestDatabase::create().await;
    let audit_key = "k".repeat(40);
    let mut env = NO_LIMITS.to_vec();
    env.push(("ENGRAM_AUDIT_KEY", audit_key.as_str()));
    let server = Server::with_keys(Some(&db.url), &env).await;
    let user = server.create_key(&["--user", "alice"]);
    let admin = server.create_key(&["--admin"]);
    let stored = server
        .call(
            Method::POST,
            "/api/v1/memory",
            Some(&user),
            Some(json!({"text": "Keeps bees on the roof", "infer": false})),
        )
        .await;
    assert_eq!(stored.status, 200, "{}", stored.text);
    let recall = common::http::stateless(
        &server.http,
        &server.base,
        Some(&user),
        json!(1),
        "tools/call",
        json!({"name": "recall", "arguments": {"query": "bees"}}),
    )
    .send()
    .await
    .unwrap();
    assert_eq!(recall.status(), 200);
    assert!(recall.text().await.unwrap().contains("Keeps bees"));

    let refused = server
        .call(Method::GET, "/api/v1/audit", Some(&user), None)
        .await;
    refused.problem(403, "forbidden");

    // The recall's row is written after its answer, and sealing runs every
    // two seconds: wait for both.
    let mut rows = Vec::new();
    for _ in 0..50 {
        let page = server
            .call(
                Method::GET,
                "/api/v1/audit?user_id=alice&limit=10",
                Some(&admin),
                None,
            )
            .await;
        assert_eq!(page.status, 200, "{}", page.text);
        rows = page.body["rows"].as_array().cloned().unwrap_or_default();
        if rows.len() == 2 && rows.iter().all(|r| r["chain_pos"].is_i64()) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    let doors: Vec<(&str, &str, &str)> = rows
        .iter()
        .map(|r| {
            (
                r["operation"].as_str().unwrap_or_default(),
                r["transport"].as_str().unwrap_or_default(),
                r["principal"].as_str().unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(
        doors,
        [("recall", "mcp", "user"), ("remember", "rest", "user")],
        "{rows:#?}"
    );
    for row in &rows {
        assert!(row["key_id"].is_string(), "{row}");
        let address = row["client_addr"].as_str().unwrap_or_default();
        assert!(address.starts_with("127.0.0.1:"), "{row}");
        assert!(row["chain_pos"].is_i64(), "not sealed while serving: {row}");
        assert!(!row.to_string().contains("bees"), "{row}");
    }
    assert_eq!(
        rows[0]["memory_ids"], rows[1]["memory_ids"],
        "the recall found the stored memory"
    );

    let verified = run_engram(
        &["audit", "verify"],
        &[
            ("ENGRAM_DATABASE_URL", &db.url),
            ("ENGRAM_AUDIT_KEY", &audit_key),
        ],
    );
    assert!(
        verified.status.success(),
        "{}",
        String::from_utf8_lossy(&verified.stderr)
    );
}
