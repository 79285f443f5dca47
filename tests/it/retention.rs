//! Retention through the real binary: `remember {ttl_days}` over MCP sets
//! a memory's expiry (never beyond the operator's retention), an expired
//! memory is gone for recall before any purge, `engram purge --dry-run`
//! says what would go and changes nothing, `engram purge` removes it, and
//! the purge's audit row is listed by `engram audit --op purge`.

use crate::common;

use chrono::{DateTime, TimeDelta, Utc};
use common::{connect_to, ok, run_engram, texts, tool_err};
use serde_json::{Value, json};

fn expiry_of(result: &Value) -> DateTime<Utc> {
    let at = result["expires_at"].as_str().expect("an expires_at");
    DateTime::parse_from_rfc3339(at)
        .unwrap()
        .with_timezone(&Utc)
}

fn close_to(at: DateTime<Utc>, expected: DateTime<Utc>) -> bool {
    (at - expected).abs() < TimeDelta::minutes(5)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remember_with_ttl_days_over_mcp_sets_the_expiry_within_the_operators() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("engram.db").display());
    // The operator keeps memories 30 days; a caller may ask for fewer.
    let client = connect_to(&url, &[("ENGRAM_RETENTION_DAYS", "30")]).await;
    let remember = |text: &str, ttl: Option<i64>| {
        let mut args = json!({"user_id": "alice", "infer": false, "text": text});
        if let Some(ttl) = ttl {
            args["ttl_days"] = ttl.into();
        }
        args
    };
    ok(
        &client,
        "remember",
        remember("Alice's gate code is 2580", Some(7)),
    )
    .await;
    ok(
        &client,
        "remember",
        remember("Alice likes green tea", Some(90)),
    )
    .await;
    ok(&client, "remember", remember("Alice plays the cello", None)).await;
    let refused = tool_err(&client, "remember", remember("never stored", Some(0))).await;
    assert!(refused.contains("ttl_days"), "{refused}");

    let now = Utc::now();
    for (query, days) in [("gate code", 7), ("green tea", 30), ("cello", 30)] {
        let found = ok(
            &client,
            "recall",
            json!({"user_id": "alice", "query": query, "limit": 1}),
        )
        .await;
        let at = expiry_of(&found["results"][0]);
        assert!(
            close_to(at, now + TimeDelta::days(days)),
            "{query}: {at}, expected {days} days from now"
        );
    }
    client.cancel().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engram_purge_dry_run_changes_nothing_then_purge_removes_and_is_audited() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("engram.db").display());
    let client = connect_to(&url, &[]).await;
    for (text, ttl) in [
        ("Alice's locker code is 4411", Some(1)),
        ("Alice keeps bees", None),
    ] {
        let mut args = json!({"user_id": "alice", "infer": false, "text": text});
        if let Some(ttl) = ttl {
            args["ttl_days"] = json!(ttl);
        }
        ok(&client, "remember", args).await;
    }
    // A day passes for the locker code: its expiry is moved into the past,
    // as time would.
    let pool = sqlx::SqlitePool::connect(&url).await.unwrap();
    let moved = sqlx::query(
        "UPDATE memories SET expires_at = expires_at - 2 * 86400000 WHERE expires_at IS NOT NULL",
    )
    .execute(&pool)
    .await
    .unwrap();
    assert_eq!(moved.rows_affected(), 1);
    // Gone for recall before any purge.
    let found = ok(
        &client,
        "recall",
        json!({"user_id": "alice", "query": "locker code bees"}),
    )
    .await;
    assert_eq!(texts(&found), ["Alice keeps bees"]);
    client.cancel().await.unwrap();
    let rows = || async {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM memories")
            .fetch_one(&pool)
            .await
            .unwrap()
    };
    assert_eq!(rows().await, 2);

    let env = [("ENGRAM_DATABASE_URL", url.as_str())];
    let dry = run_engram(&["purge", "--dry-run"], &env);
    let said = String::from_utf8_lossy(&dry.stdout);
    assert!(
        dry.status.success(),
        "{}",
        String::from_utf8_lossy(&dry.stderr)
    );
    assert!(said.contains("would remove 1 expired"), "{said}");
    assert_eq!(rows().await, 2, "a dry run changes nothing");

    let done = run_engram(&["purge"], &env);
    let said = String::from_utf8_lossy(&done.stdout);
    assert!(
        done.status.success(),
        "{}",
        String::from_utf8_lossy(&done.stderr)
    );
    assert!(said.contains("removed 1 expired"), "{said}");
    assert_eq!(rows().await, 1);
    let history: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM memory_history WHERE memory_id NOT IN (SELECT id FROM memories)",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(history, 0, "the purged memory's history went with it");

    let listed = run_engram(&["audit", "--json", "--op", "purge"], &env);
    let rows: Vec<Value> = String::from_utf8_lossy(&listed.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON row"))
        .collect();
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0]["memory_count"], 1);
    assert_eq!(rows[0]["principal"], "operator");
    assert_eq!(rows[0]["transport"], "cli");
    assert_eq!(rows[0]["memory_ids"].as_array().map(Vec::len), Some(1));
}

/// Where `serve` runs for the purge test, and how the test moves time.
enum Place {
    Sqlite(tempfile::TempDir),
    Postgres(common::postgres::TestDatabase),
}

impl Place {
    fn serve_env(&self) -> Vec<(&'static str, String)> {
        match self {
            Place::Sqlite(dir) => vec![(
                "ENGRAM_DATABASE_URL",
                format!("sqlite://{}", dir.path().join("engram.db").display()),
            )],
            // The two-role setup: the purge runs operator-wide under the
            // row-level security policies.
            Place::Postgres(db) => vec![
                ("ENGRAM_DATABASE_URL", db.app_url.clone()),
                ("ENGRAM_DATABASE_OWNER_URL", db.owner_url.clone()),
            ],
        }
    }

    /// Runs `sql` as the database's superuser (SQLite: on the file).
    async fn raw(&self, sql: &str) -> u64 {
        match self {
            Place::Sqlite(dir) => {
                let url = format!("sqlite://{}", dir.path().join("engram.db").display());
                let pool = sqlx::SqlitePool::connect(&url).await.unwrap();
                let n = sqlx::query(sqlx::AssertSqlSafe(sql.to_owned()))
                    .execute(&pool)
                    .await
                    .unwrap()
                    .rows_affected();
                pool.close().await;
                n
            }
            Place::Postgres(db) => {
                let pool = sqlx::PgPool::connect(&db.url).await.unwrap();
                let n = sqlx::query(sqlx::AssertSqlSafe(sql.to_owned()))
                    .execute(&pool)
                    .await
                    .unwrap()
                    .rows_affected();
                pool.close().await;
                n
            }
        }
    }

    /// How many memories are stored, every user's (as the superuser).
    async fn memories(&self) -> i64 {
        let sql = "SELECT count(*) FROM memories";
        match self {
            Place::Sqlite(dir) => {
                let url = format!("sqlite://{}", dir.path().join("engram.db").display());
                let pool = sqlx::SqlitePool::connect(&url).await.unwrap();
                let n = sqlx::query_scalar(sql).fetch_one(&pool).await.unwrap();
                pool.close().await;
                n
            }
            Place::Postgres(db) => {
                let pool = sqlx::PgPool::connect(&db.url).await.unwrap();
                let n = sqlx::query_scalar(sql).fetch_one(&pool).await.unwrap();
                pool.close().await;
                n
            }
        }
    }
}

/// `serve` purges on its own, every ENGRAM_RETENTION_PURGE_INTERVAL_SECS,
/// and audits it as `serve`.
async fn serve_purges_on_its_interval(place: Place) {
    let env = place.serve_env();
    let mut serve_env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    serve_env.push(("ENGRAM_RETENTION_PURGE_INTERVAL_SECS", "1"));
    let url = env[0].1.clone();
    let client = connect_to(&url, &serve_env).await;
    for (user, text, ttl) in [
        ("alice", "Alice's locker code is 4411", Some(1)),
        ("alice", "Alice keeps bees", None),
        ("bob", "Bob's gate code is 7720", Some(1)),
    ] {
        let mut args = json!({"user_id": user, "infer": false, "text": text});
        if let Some(ttl) = ttl {
            args["ttl_days"] = json!(ttl);
        }
        ok(&client, "remember", args).await;
    }
    let expired = match place {
        Place::Sqlite(_) => {
            "UPDATE memories SET expires_at = expires_at - 2 * 86400000 \
             WHERE expires_at IS NOT NULL"
        }
        Place::Postgres(_) => {
            "UPDATE memories SET expires_at = expires_at - interval '2 days' \
             WHERE expires_at IS NOT NULL"
        }
    };
    assert_eq!(place.raw(expired).await, 2, "a day passes for the codes");
    // Both users' expired memories go without anyone running `engram purge`.
    let mut left = i64::MAX;
    for _ in 0..100 {
        left = place.memories().await;
        if left == 1 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(left, 1, "only Alice's bees are left");
    let found = ok(
        &client,
        "recall",
        json!({"user_id": "alice", "query": "bees locker code"}),
    )
    .await;
    assert_eq!(texts(&found), ["Alice keeps bees"]);
    client.cancel().await.unwrap();

    let listed = run_engram(&["audit", "--json", "--op", "purge"], &serve_env);
    assert!(listed.status.success(), "{listed:?}");
    let rows: Vec<Value> = String::from_utf8_lossy(&listed.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(
        rows.iter()
            .any(|r| r["transport"] == "serve" && r["memory_count"] == 2),
        "{rows:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_purges_on_its_interval_sqlite() {
    serve_purges_on_its_interval(Place::Sqlite(tempfile::tempdir().unwrap())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_purges_on_its_interval_postgres() {
    serve_purges_on_its_interval(Place::Postgres(
        common::postgres::TestDatabase::create().await,
    ))
    .await;
}
