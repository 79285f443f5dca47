//! Row-level security on PostgreSQL: the database itself keeps users apart,
//! whatever a query says (migration `row_level_security`), for the role
//! engram serves as in the two-role setup (ENGRAM_DATABASE_OWNER_URL).

use engram::embed::{Embedder, HashEmbedder};
use engram::model::Scope;
use engram::store::{NewPending, PendingQueue, PgOptions, PgStore, TokenUsage};
use serde_json::json;
use sqlx::{Connection, Executor, PgConnection};

use crate::common::postgres::{APP_ROLE, TestDatabase};
use crate::common::{connect_to, ok, run_engram, texts};

/// The per-user tables: every table of the schema with a `user_id` column.
async fn per_user_tables(conn: &mut PgConnection) -> Vec<String> {
    sqlx::query_scalar(
        "SELECT c.table_name::text FROM information_schema.columns c \
         JOIN information_schema.tables t USING (table_schema, table_name) \
         WHERE c.table_schema = 'public' AND c.column_name = 'user_id' \
           AND t.table_type = 'BASE TABLE' ORDER BY 1",
    )
    .fetch_all(conn)
    .await
    .unwrap()
}

fn two_role_env(db: &TestDatabase) -> Vec<(&'static str, String)> {
    vec![
        ("ENGRAM_DATABASE_URL", db.app_url.clone()),
        ("ENGRAM_DATABASE_OWNER_URL", db.owner_url.clone()),
    ]
}

fn borrowed<'a>(env: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    env.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

/// Alice and Bob each get a row in every per-user table, through engram:
/// memories (with history, keyword postings and counts) by remember, a
/// deferred remember and a day's token usage through the store, an API key
/// by the CLI.
async fn alice_and_bob(db: &TestDatabase) -> PgStore {
    let env = two_role_env(db);
    let client = connect_to(&db.app_url, &borrowed(&env)).await;
    for (user, text) in [
        ("alice", "Alice keeps bees on her roof"),
        ("alice", "Alice is allergic to penicillin"),
        ("bob", "Bob collects vintage typewriters"),
    ] {
        ok(&client, "remember", json!({"user_id": user, "text": text})).await;
    }
    let found = ok(
        &client,
        "recall",
        json!({"user_id": "alice", "query": "bees roof"}),
    )
    .await;
    assert_eq!(texts(&found)[0], "Alice keeps bees on her roof");
    client.cancel().await.unwrap();

    let store = PgStore::open(
        &db.app_url,
        HashEmbedder::new(384).identity(),
        PgOptions {
            owner_url: Some(db.owner_url.clone()),
            ..PgOptions::default()
        },
    )
    .await
    .unwrap();
    for user in ["alice", "bob"] {
        store
            .add_pending(NewPending {
                id: uuid::Uuid::now_v7(),
                scope: Scope::new(user, None, None).unwrap(),
                input: json!({"text": format!("{user} said something to finish later")}),
                metadata: Default::default(),
                infer: true,
                memory_ids: Vec::new(),
                error: "the model was down".to_owned(),
            })
            .await
            .unwrap();
        store
            .add_tokens(user, chrono::Utc::now().date_naive(), 150)
            .await
            .unwrap();
        let key = run_engram(&["keys", "create", "--user", user], &borrowed(&env));
        assert!(key.status.success(), "{key:?}");
    }
    store
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unscoped_query_through_engrams_connection_sees_only_the_acting_user() {
    let db = TestDatabase::create().await;
    // Every user's term counts kept, so that keyword_terms holds rows too:
    // a user's counts start to be kept by a write that finds them at the
    // line already, so Bob writes a second time.
    db.set_default("engram.term_counts_from", "1").await;
    let store = alice_and_bob(&db).await;
    let env = two_role_env(&db);
    let client = connect_to(&db.app_url, &borrowed(&env)).await;
    let text = json!({"user_id": "bob", "text": "Bob restores old radios"});
    ok(&client, "remember", text).await;
    client.cancel().await.unwrap();
    let mut admin = PgConnection::connect(&db.url).await.unwrap();

    // Every per-user table has the policy, forced, and holds both users' rows.
    let tables = per_user_tables(&mut admin).await;
    assert_eq!(
        tables,
        [
            "api_keys",
            "keyword_postings",
            "keyword_terms",
            "memories",
            "memory_history",
            "memory_users",
            "pending_extractions",
            "token_usage"
        ]
    );
    for table in &tables {
        let (enabled, forced): (bool, bool) = sqlx::query_as(
            "SELECT relrowsecurity, relforcerowsecurity FROM pg_class \
             WHERE oid = $1::regclass",
        )
        .bind(table)
        .fetch_one(&mut admin)
        .await
        .unwrap();
        assert!(
            enabled && forced,
            "{table}: enabled {enabled}, forced {forced}"
        );
        let users: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT DISTINCT user_id FROM {table} WHERE user_id IS NOT NULL ORDER BY 1"
        )))
        .fetch_all(&mut admin)
        .await
        .unwrap();
        assert_eq!(users, ["alice", "bob"], "{table}");
    }

    // In a transaction engram begins for Alice, queries that name no user
    // at all find Alice's rows and nothing of Bob's, in every table.
    for (acting, other) in [("alice", "bob"), ("bob", "alice")] {
        let mut tx = store.user_transaction(acting).await.unwrap();
        for table in &tables {
            let users: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
                "SELECT DISTINCT user_id FROM {table} ORDER BY 1"
            )))
            .fetch_all(&mut *tx)
            .await
            .unwrap();
            assert_eq!(users, [acting], "{table} as {acting}");
        }
        let texts: Vec<String> = sqlx::query_scalar("SELECT content FROM memories")
            .fetch_all(&mut *tx)
            .await
            .unwrap();
        assert!(
            texts
                .iter()
                .all(|t| t.to_lowercase().contains(acting) && !t.to_lowercase().contains(other)),
            "{texts:?}"
        );
        tx.rollback().await.unwrap();
    }

    // Unscoped writes touch the acting user's rows alone.
    let mut tx = store.user_transaction("alice").await.unwrap();
    let updated = sqlx::query("UPDATE memories SET content = 'overwritten'")
        .execute(&mut *tx)
        .await
        .unwrap()
        .rows_affected();
    assert_eq!(updated, 2, "Alice's two memories, not Bob's");
    let deleted = sqlx::query("DELETE FROM memory_history")
        .execute(&mut *tx)
        .await
        .unwrap()
        .rows_affected();
    assert_eq!(deleted, 2, "Alice's two ADD events, not Bob's");
    tx.rollback().await.unwrap();

    // A row for another user cannot be written, nor a row moved to one.
    let mut tx = store.user_transaction("alice").await.unwrap();
    let moved = sqlx::query("UPDATE pending_extractions SET user_id = 'bob'")
        .execute(&mut *tx)
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&moved), "42501", "{moved}");
    tx.rollback().await.unwrap();
    let mut tx = store.user_transaction("alice").await.unwrap();
    let planted = sqlx::query(
        "INSERT INTO memory_history (memory_id, user_id, event, actor, created_at) \
         VALUES (gen_random_uuid(), 'bob', 'ADD', 'agent', now())",
    )
    .execute(&mut *tx)
    .await
    .unwrap_err();
    assert_eq!(sqlstate(&planted), "42501", "{planted}");
    tx.rollback().await.unwrap();
    // Nor can one user's tokens be counted, or cleared, as another's.
    let mut tx = store.user_transaction("alice").await.unwrap();
    let spent = sqlx::query(
        "INSERT INTO token_usage (user_id, day, tokens) VALUES ('bob', current_date - 1, 1)",
    )
    .execute(&mut *tx)
    .await
    .unwrap_err();
    assert_eq!(sqlstate(&spent), "42501", "{spent}");
    tx.rollback().await.unwrap();
    let mut tx = store.user_transaction("alice").await.unwrap();
    let cleared = sqlx::query("UPDATE token_usage SET tokens = 0")
        .execute(&mut *tx)
        .await
        .unwrap()
        .rows_affected();
    assert_eq!(cleared, 1, "Alice's day, not Bob's");
    tx.rollback().await.unwrap();

    // The scope ended with its transaction: the same role, on a connection
    // that named no user, sees no one's rows.
    let mut app = PgConnection::connect(&db.app_url).await.unwrap();
    for table in &tables {
        let n: i64 =
            sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT count(*) FROM {table}")))
                .fetch_one(&mut app)
                .await
                .unwrap();
        assert_eq!(n, 0, "{table} without a user");
    }

    // The runtime role owns nothing: it cannot lift the policies, and the
    // audit trail is append-only for it by privilege as well as by trigger.
    for (statement, what) in [
        (
            "ALTER TABLE memories DISABLE ROW LEVEL SECURITY",
            "lift RLS",
        ),
        (
            "ALTER TABLE memories NO FORCE ROW LEVEL SECURITY",
            "unforce RLS",
        ),
        (
            "DROP POLICY engram_acting_user ON memories",
            "drop a policy",
        ),
        ("DELETE FROM audit_log", "delete audit rows"),
        (
            "UPDATE audit_log SET operation = 'recall'",
            "rewrite audit rows",
        ),
        ("TRUNCATE audit_log", "truncate the audit trail"),
        (
            "UPDATE store_info SET value = 'x'",
            "change the store's record",
        ),
    ] {
        let refused = app.execute(statement).await.unwrap_err();
        assert_eq!(sqlstate(&refused), "42501", "{what}: {refused}");
    }
    let role: String = sqlx::query_scalar("SELECT current_user::text")
        .fetch_one(&mut app)
        .await
        .unwrap();
    assert_eq!(role, APP_ROLE);
}

/// The read that ends a search from a user's in-process copy goes alone,
/// outside `BEGIN`, and sets its own scope (migration
/// `read_at_version_in_one_statement`): as the runtime role it answers the
/// user it names and no one else, and leaves nothing set behind it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_one_statement_read_answers_the_user_it_names_alone() {
    let db = TestDatabase::create().await;
    let _store = alice_and_bob(&db).await;
    let mut admin = PgConnection::connect(&db.url).await.unwrap();
    let everyone: Vec<(uuid::Uuid, String)> =
        sqlx::query_as("SELECT id, user_id FROM memories ORDER BY content")
            .fetch_all(&mut admin)
            .await
            .unwrap();
    assert_eq!(everyone.len(), 3);
    let ids: Vec<uuid::Uuid> = everyone.iter().map(|(id, _)| *id).collect();

    let mut app = PgConnection::connect(&db.app_url).await.unwrap();
    for user in ["alice", "bob"] {
        let version: i64 =
            sqlx::query_scalar("SELECT version FROM memory_users WHERE user_id = $1")
                .bind(user)
                .fetch_one(&mut admin)
                .await
                .unwrap();
        // Every memory's id asked for, as the user: the user's alone come back.
        let rows: Vec<(Option<i64>, Option<uuid::Uuid>, Option<String>)> = sqlx::query_as(
            "SELECT version, id, user_id FROM engram_memories_at_version( \
                 ARRAY['jit'], ARRAY['off'], $1, $2) ORDER BY id",
        )
        .bind(user)
        .bind(&ids)
        .fetch_all(&mut app)
        .await
        .unwrap();
        let mut want: Vec<uuid::Uuid> = everyone
            .iter()
            .filter(|(_, owner)| owner == user)
            .map(|(id, _)| *id)
            .collect();
        want.sort();
        assert_eq!(
            rows.iter().map(|r| r.1.unwrap()).collect::<Vec<_>>(),
            want,
            "{user}"
        );
        assert!(
            rows.iter()
                .all(|r| r.0 == Some(version) && r.2.as_deref() == Some(user))
        );
        // The scope and settings were the statement's own: nothing is left
        // on the connection.
        let (seen, scope, jit): (i64, String, String) = sqlx::query_as(
            "SELECT (SELECT count(*) FROM memories), \
                    coalesce(current_setting('engram.user_id', true), ''), \
                    current_setting('jit')",
        )
        .fetch_one(&mut app)
        .await
        .unwrap();
        assert_eq!((seen, scope.as_str()), (0, ""), "after {user}'s read");
        assert_eq!(jit, "on", "the server's default, not the read's");
    }
    // No id of the user's: one row, the version alone.
    let rows: Vec<(Option<i64>, Option<uuid::Uuid>)> = sqlx::query_as(
        "SELECT version, id FROM engram_memories_at_version('{}', '{}', 'alice', $1)",
    )
    .bind(vec![uuid::Uuid::now_v7()])
    .fetch_all(&mut app)
    .await
    .unwrap();
    assert_eq!(rows.len(), 1);
    assert!(rows[0].0.is_some() && rows[0].1.is_none());
    // A user with no memories: no version either.
    let rows: Vec<(Option<i64>, Option<uuid::Uuid>)> = sqlx::query_as(
        "SELECT version, id FROM engram_memories_at_version('{}', '{}', 'carol', $1)",
    )
    .bind(&ids)
    .fetch_all(&mut app)
    .await
    .unwrap();
    assert_eq!(rows, [(None, None)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_two_role_setup_serves_seals_and_says_it_enforces() {
    let db = TestDatabase::create().await;
    drop(alice_and_bob(&db).await);
    let mut env = two_role_env(&db);
    env.push(("ENGRAM_LOG", "info".to_owned()));
    // Sealing updates audit rows: the runtime role may write exactly that.
    let sealed = run_engram(&["audit", "seal"], &borrowed(&env));
    let stderr = String::from_utf8_lossy(&sealed.stderr);
    assert!(sealed.status.success(), "{stderr}");
    assert!(stderr.contains("row-level security enforced"), "{stderr}");
    let verified = run_engram(&["audit", "verify"], &borrowed(&env));
    assert!(verified.status.success(), "{verified:?}");

    // The superuser skips every policy: engram says so.
    let as_superuser = run_engram(
        &["audit", "verify"],
        &[("ENGRAM_DATABASE_URL", db.url.as_str())],
    );
    let stderr = String::from_utf8_lossy(&as_superuser.stderr);
    assert!(
        stderr.contains("row-level security is not enforced") && stderr.contains("superuser"),
        "{stderr}"
    );
}

fn sqlstate(e: &sqlx::Error) -> String {
    e.as_database_error()
        .and_then(|d| d.code())
        .map(|c| c.into_owned())
        .unwrap_or_default()
}
