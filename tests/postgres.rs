//! What only the PostgreSQL store has to prove, against a real server with
//! pgvector: the database itself refuses duplicates (whoever writes), vector
//! search through the index never drops rows a user filter keeps, several
//! engram processes on one database behave as one, and the operator's
//! commands (`migrate`, index choice) fail clearly when they must.
//! The behaviours both stores share are in store_conformance.rs.

mod common;

use std::sync::Arc;

use common::postgres::TestDatabase;
use common::{Client, connect_with, ok, run_engram, texts, total};
use engram::config::IndexKind;
use engram::embed::{Embedder, HashEmbedder};
use engram::model::{MemoryId, MetadataFilter, Scope};
use engram::store::{
    InsertOutcome, NewMemory, PgOptions, PgStore, PlanSettings, SearchScope, Store,
};
use serde_json::json;
use sqlx::PgPool;

const DIMS: usize = 384;

async fn open(url: &str, plan: PlanSettings) -> PgStore {
    let options = PgOptions {
        plan,
        ..PgOptions::default()
    };
    PgStore::open(url, HashEmbedder::new(DIMS).identity(), options)
        .await
        .expect("open the PostgreSQL store")
}

fn memory(scope: &Scope, text: &str) -> NewMemory {
    NewMemory {
        id: MemoryId::new(),
        scope: scope.clone(),
        content: text.to_owned(),
        embedding: HashEmbedder::new(DIMS).embed(text),
        metadata: Default::default(),
        categories: vec![],
        actor: "user".into(),
    }
}

/// Inserts a row with plain SQL, as a writer that is not engram would.
async fn raw_insert(pool: &PgPool, user: &str, text: &str) -> Result<(), sqlx::Error> {
    let embedding = pgvector::Vector::from(HashEmbedder::new(DIMS).embed(text));
    sqlx::query(
        "INSERT INTO memories (id, user_id, content, content_hash, embedding, created_at, \
             updated_at, valid_from) \
         VALUES (gen_random_uuid(), $1, $2, sha256(convert_to($2, 'UTF8')), $3, now(), now(), now())",
    )
    .bind(user)
    .bind(text)
    .bind(embedding)
    .execute(pool)
    .await
    .map(|_| ())
}

fn sqlstate(e: &sqlx::Error) -> Option<String> {
    e.as_database_error()
        .and_then(|d| d.code())
        .map(|c| c.into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_database_refuses_duplicates_whoever_writes_them() {
    let db = TestDatabase::create().await;
    let store = open(&db.url, PlanSettings::default()).await;
    let alice = Scope::user("alice");
    let first = store
        .insert(memory(&alice, "I prefer window seats on long flights"), 0.9)
        .await
        .unwrap();
    assert!(matches!(first, InsertOutcome::Added(_)));

    let pool = store.pool();
    let same = raw_insert(pool, "alice", "I prefer window seats on long flights")
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&same).as_deref(), Some("EG001"), "{same}");
    let near = raw_insert(pool, "alice", "I prefer window seats on long flights!")
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&near).as_deref(), Some("EG001"), "{near}");
    // The error names the memory it duplicates.
    let detail = near
        .as_database_error()
        .and_then(|d| d.try_downcast_ref::<sqlx::postgres::PgDatabaseError>())
        .and_then(|d| d.detail())
        .unwrap_or_default()
        .to_owned();
    let InsertOutcome::Added(first) = first else {
        unreachable!()
    };
    assert!(detail.contains(&first.id.to_string()), "{detail}");

    // Another user, an unrelated text: fine.
    raw_insert(pool, "bob", "I prefer window seats on long flights")
        .await
        .unwrap();
    raw_insert(pool, "alice", "Keeps bees in the garden")
        .await
        .unwrap();
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM memories WHERE user_id = 'alice'")
        .fetch_one(pool)
        .await
        .unwrap();
    assert_eq!(count, 2);
}

/// Fills the database with `per_user` random-vector rows for each of `users`
/// other users, through the dedup trigger, in one statement.
async fn crowd(pool: &PgPool, users: usize, per_user: usize) {
    sqlx::query(
        "INSERT INTO memories (id, user_id, content, content_hash, embedding, created_at, \
             updated_at, valid_from) \
         SELECT gen_random_uuid(), 'crowd-' || (i % $1), 'crowd memory ' || i, \
                sha256(convert_to('crowd memory ' || i, 'UTF8')), \
                (SELECT array_agg(random() - 0.5)::vector FROM generate_series(1, $3) WHERE i > 0), \
                now(), now(), now() \
         FROM generate_series(1, $1 * $2) AS i",
    )
    .bind(users as i32)
    .bind(per_user as i32)
    .bind(DIMS as i32)
    .execute(pool)
    .await
    .unwrap();
    sqlx::query("ANALYZE memories").execute(pool).await.unwrap();
}

fn ids(hits: &[engram::store::Hit]) -> Vec<MemoryId> {
    hits.iter().map(|h| h.id).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn search_through_the_vector_index_never_drops_rows_the_filter_keeps() {
    let db = TestDatabase::create().await;
    // Every scope goes through the index here; the other store scans exactly.
    let indexed = open(&db.url, PlanSettings::ALWAYS_INDEX).await;
    let exact = open(&db.url, PlanSettings::ALWAYS_EXACT).await;
    crowd(indexed.pool(), 100, 40).await;

    // 60 memories for one user among 4,000 rows, half under one agent, 5 in one run.
    let topics = [
        "sailing",
        "cheese",
        "violin",
        "hiking",
        "tea",
        "chess",
        "pottery",
        "jazz",
        "rowing",
        "orchids",
        "astronomy",
        "baking",
    ];
    let places = ["Lisbon", "Osaka", "Quito", "Tromso", "Dakar"];
    let mut agent_rows = Vec::new();
    let mut run_rows = Vec::new();
    for (i, topic) in topics.iter().enumerate() {
        for (j, place) in places.iter().enumerate() {
            let n = i * places.len() + j;
            let scope = Scope::new(
                "needle",
                n.is_multiple_of(2).then_some("planner"),
                (n < 10 && n.is_multiple_of(2)).then_some("trip-1"),
            )
            .unwrap();
            let text = format!("Enjoys {topic} whenever visiting {place}");
            match indexed.insert(memory(&scope, &text), 0.9).await.unwrap() {
                InsertOutcome::Added(m) => {
                    if scope.agent_id.is_some() {
                        agent_rows.push(m.id);
                    }
                    if scope.run_id.is_some() {
                        run_rows.push(m.id);
                    }
                }
                dup => panic!("unexpected duplicate for {text}: {dup:?}"),
            }
        }
    }
    assert_eq!((agent_rows.len(), run_rows.len()), (30, 5));

    let none = MetadataFilter::default();
    let q = HashEmbedder::new(DIMS).embed("sailing in Lisbon");
    let needle = Scope::user("needle");
    let planner = Scope::new("needle", Some("planner"), None).unwrap();
    let trip = Scope::new("needle", Some("planner"), Some("trip-1")).unwrap();
    for (scope, expected) in [(&needle, 60), (&planner, 30), (&trip, 5)] {
        let at = SearchScope {
            scope,
            filter: &none,
        };
        let through_index = indexed.vector_search(at, &q, 100).await.unwrap();
        let scanned = exact.vector_search(at, &q, 100).await.unwrap();
        assert_eq!(through_index.len(), expected, "{scope:?}");
        let mut a = ids(&through_index);
        let mut b = ids(&scanned);
        // The best hit is the same; the sets are the same.
        assert_eq!(a[0], b[0], "{scope:?}");
        a.sort();
        b.sort();
        assert_eq!(a, b, "{scope:?}");
        // Scores are the exact cosine either way, best first.
        assert!(through_index.windows(2).all(|w| w[0].score >= w[1].score));
    }
    // What engram_nearest relies on, seen directly: the index alone, with a
    // user filter, drops rows unless iterative scans are on.
    let found_through_index = |iterative: &'static str| {
        let pool = indexed.pool().clone();
        let q = pgvector::Vector::from(q.clone());
        async move {
            let mut tx = pool.begin().await.unwrap();
            for setting in [
                "SET LOCAL enable_sort = off".to_owned(),
                "SET LOCAL hnsw.ef_search = 100".to_owned(),
                format!("SET LOCAL hnsw.iterative_scan = {iterative}"),
            ] {
                sqlx::query(sqlx::AssertSqlSafe(setting))
                    .execute(&mut *tx)
                    .await
                    .unwrap();
            }
            let plan: Vec<String> = sqlx::query_scalar(
                "EXPLAIN SELECT id FROM memories WHERE user_id = 'needle' AND valid_to IS NULL \
                 ORDER BY embedding <=> $1 LIMIT 100",
            )
            .bind(&q)
            .fetch_all(&mut *tx)
            .await
            .unwrap();
            assert!(
                plan.join("\n").contains("memories_embedding_hnsw"),
                "{plan:?}"
            );
            let rows: Vec<uuid::Uuid> = sqlx::query_scalar(
                "SELECT id FROM memories WHERE user_id = 'needle' AND valid_to IS NULL \
                 ORDER BY embedding <=> $1 LIMIT 100",
            )
            .bind(&q)
            .fetch_all(&mut *tx)
            .await
            .unwrap();
            rows.len()
        }
    };
    let without = found_through_index("off").await;
    assert!(without < 60, "the plain index found {without} of 60");
    assert_eq!(found_through_index("relaxed_order").await, 60);

    let mut run_found = ids(&indexed
        .vector_search(
            SearchScope {
                scope: &trip,
                filter: &none,
            },
            &q,
            10,
        )
        .await
        .unwrap());
    run_found.sort();
    run_rows.sort();
    assert_eq!(run_found, run_rows);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyword_search_through_gin_ranks_as_reading_every_row_does() {
    let db = TestDatabase::create().await;
    // Every scope through the indexes (GIN for words), and every scope read directly.
    let indexed = open(&db.url, PlanSettings::ALWAYS_INDEX).await;
    let direct = open(&db.url, PlanSettings::ALWAYS_EXACT).await;
    crowd(indexed.pool(), 20, 10).await;
    let user = Scope::user("reader");
    let drinks = ["espresso", "matcha", "cocoa", "kefir", "lassi"];
    let places = ["Lisbon", "Oslo", "Lima", "Kyoto", "Cairo", "Quito"];
    let times = ["mornings", "weekends", "holidays", "evenings"];
    for drink in drinks {
        for place in places {
            for time in times {
                let text = format!("Drinks {drink} in {place} on {time}");
                let added = indexed.insert(memory(&user, &text), 0.9).await.unwrap();
                assert!(matches!(added, InsertOutcome::Added(_)), "{text}");
            }
        }
    }
    let none = MetadataFilter::default();
    let at = SearchScope {
        scope: &user,
        filter: &none,
    };
    for query in [
        "espresso",                   // one word: every match ranked
        "espresso Lisbon",            // 4 two-word matches: fewer than most limits
        "matcha weekends",            // 6 two-word matches
        "espresso Lisbon weekends",   // pairs: 4 + 5 + 6 - overlaps
        "kefir mornings Oslo cocoa",  // more words than any memory has
        "nothing matches this query", // no word known
    ] {
        for limit in [3, 5, 10, 40] {
            let through_gin = ids(&indexed.keyword_search(at, query, limit).await.unwrap());
            let read_directly = ids(&direct.keyword_search(at, query, limit).await.unwrap());
            assert_eq!(through_gin, read_directly, "{query} (limit {limit})");
        }
    }
    let hits = indexed
        .keyword_search(at, "espresso Lisbon", 10)
        .await
        .unwrap();
    assert_eq!(hits.len(), 10);
    assert!(hits[3].score > hits[4].score, "{hits:?}");
}

fn pg_env(url: &str) -> Vec<(&'static str, String)> {
    vec![
        ("ENGRAM_DATABASE_URL", url.to_owned()),
        ("ENGRAM_DEFAULT_USER", "zoe".to_owned()),
    ]
}

async fn serve(url: &str, extra: &[(&'static str, &str)]) -> Client {
    let mut env = pg_env(url);
    env.extend(extra.iter().map(|(k, v)| (*k, v.to_string())));
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    // connect_with's SQLite path is overridden by ENGRAM_DATABASE_URL.
    connect_with(std::path::Path::new("/nonexistent/unused.db"), &env).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_engram_processes_on_one_database_behave_as_one() {
    let db = TestDatabase::create().await;
    let a = Arc::new(serve(&db.url, &[]).await);
    let b = Arc::new(serve(&db.url, &[]).await);

    ok(
        &a,
        "remember",
        json!({"text": "Keeps a sourdough starter named Bubbles"}),
    )
    .await;
    let found = ok(&b, "recall", json!({"query": "sourdough starter"})).await;
    assert_eq!(texts(&found), ["Keeps a sourdough starter named Bubbles"]);

    // 20 identical remembers at once, split over both processes: one ADD.
    let mut calls = Vec::new();
    for i in 0..20 {
        let client = if i % 2 == 0 { a.clone() } else { b.clone() };
        calls.push(tokio::spawn(async move {
            ok(
                &client,
                "remember",
                json!({"text": "Runs the Berlin marathon every September"}),
            )
            .await
        }));
    }
    let mut events = Vec::new();
    for call in calls {
        let result = call.await.unwrap();
        events.push(result["results"][0]["event"].as_str().unwrap().to_owned());
    }
    assert_eq!(
        events.iter().filter(|e| *e == "ADD").count(),
        1,
        "{events:?}"
    );
    assert_eq!(
        events.iter().filter(|e| *e == "NONE").count(),
        19,
        "{events:?}"
    );
    assert_eq!(total(&a, "zoe").await, 2);
    assert_eq!(total(&b, "zoe").await, 2);

    // Forgotten through one, gone for the other.
    let id = found["results"][0]["id"].as_str().unwrap().to_owned();
    ok(&b, "forget", json!({"memory_id": id})).await;
    let after = ok(&a, "recall", json!({"query": "sourdough starter"})).await;
    assert!(
        texts(&after).iter().all(|t| !t.contains("sourdough")),
        "{after}"
    );
    assert_eq!(total(&a, "zoe").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrations_run_by_command_or_at_start_and_a_behind_schema_is_refused() {
    let db = TestDatabase::create().await;
    let url = db.url.as_str();
    let refused = run_engram(
        &["serve"],
        &[
            ("ENGRAM_DATABASE_URL", url),
            ("ENGRAM_AUTO_MIGRATE", "false"),
        ],
    );
    assert!(!refused.status.success());
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(err.contains("engram migrate"), "{err}");

    let migrated = run_engram(&["migrate"], &[("ENGRAM_DATABASE_URL", url)]);
    let err = String::from_utf8_lossy(&migrated.stderr);
    assert!(migrated.status.success(), "{err}");
    assert!(err.contains("up to date"), "{err}");
    // Idempotent.
    assert!(
        run_engram(&["migrate"], &[("ENGRAM_DATABASE_URL", url)])
            .status
            .success()
    );

    let client = serve(url, &[("ENGRAM_AUTO_MIGRATE", "false")]).await;
    ok(
        &client,
        "remember",
        json!({"text": "Speaks Portuguese at home"}),
    )
    .await;
    assert_eq!(total(&client, "zoe").await, 1);
    client.cancel().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn index_settings_the_server_cannot_serve_stop_start_up_clearly() {
    let db = TestDatabase::create().await;
    let refused = |setting: (&str, &str)| {
        let out = run_engram(&["serve"], &[("ENGRAM_DATABASE_URL", &db.url), setting]);
        assert!(!out.status.success(), "{setting:?} was accepted");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let err = refused(("ENGRAM_EMBEDDING_DIMS", "3072"));
    assert!(
        err.contains("2000") && err.contains("ENGRAM_EMBEDDING_DIMS"),
        "{err}"
    );
    let err = refused(("ENGRAM_INDEX", "diskann"));
    assert!(
        err.contains("vectorscale") && err.contains("ENGRAM_INDEX=hnsw"),
        "{err}"
    );
    // The store opened with auto falls back to HNSW on this server.
    let store = PgStore::open(
        &db.url,
        HashEmbedder::new(DIMS).identity(),
        PgOptions {
            index: IndexKind::Auto,
            ..PgOptions::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(store.vector_index(), IndexKind::Hnsw);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_password_or_host_names_the_url_without_the_password() {
    let out = run_engram(
        &["serve"],
        &[(
            "ENGRAM_DATABASE_URL",
            "postgres://engram:hunter2@127.0.0.1:1/engram",
        )],
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("postgres://engram:***@127.0.0.1:1/engram"),
        "{err}"
    );
    assert!(!err.contains("hunter2"), "{err}");
}
