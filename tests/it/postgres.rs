//! What only the PostgreSQL store has to prove, against a real server with
//! pgvector: the database itself refuses duplicates (whoever writes), vector
//! search through the index never drops rows a user filter keeps, keyword
//! scores computed in SQL are src/keywords.rs's BM25 (postings and per-user
//! statistics kept exact by every write, rebuilt at open when missing),
//! several engram processes on one database behave as one, and the
//! operator's commands (`migrate`, index choice) fail clearly when they must.
//! The behaviours both stores share are in store_conformance.rs.

use std::collections::HashSet;

use crate::common;

use std::sync::Arc;

use common::fake_openai::{FakeOpenAi, Reply};
use common::pgbouncer::PgBouncer;
use common::postgres::TestDatabase;
use common::{Client, connect_to, connect_with, ok, run_engram, texts, total};
use engram::config::IndexKind;
use engram::embed::{Embedder, HashEmbedder};
use engram::keywords::{self, Bm25, Corpus};
use engram::model::{MemoryId, MetadataFilter, Scope};
use engram::store::prelude::*;
use engram::store::{
    InsertOutcome, NewMemory, PgOptions, PgStore, PlanSettings, Pooler, SearchScope, StoreError,
    SupersedeOutcome,
};
use serde_json::json;
use sqlx::{Acquire, PgPool};

pub(crate) const DIMS: usize = 384;

/// The store on `db` in the two-role setup, so the row-level security
/// policies bind every call.
pub(crate) async fn open(db: &TestDatabase, plan: PlanSettings) -> PgStore {
    let options = PgOptions {
        plan,
        owner_url: Some(db.owner_url.clone()),
        ..PgOptions::default()
    };
    PgStore::open(&db.app_url, HashEmbedder::new(DIMS).identity(), options)
        .await
        .expect("open the PostgreSQL store")
}

/// As [`open`], with no indexer at work: rows waiting outside the vector
/// index stay there until the test moves them ([`PgStore::index_backlog`]).
async fn open_idle(db: &TestDatabase, plan: PlanSettings) -> PgStore {
    let options = PgOptions {
        plan,
        owner_url: Some(db.owner_url.clone()),
        index_backlog_every: None,
        ..PgOptions::default()
    };
    PgStore::open(&db.app_url, HashEmbedder::new(DIMS).identity(), options)
        .await
        .expect("open the PostgreSQL store")
}

/// All of the user's memories.
pub(crate) fn whole(id: &str) -> Scope {
    Scope::new(id, None, None).unwrap()
}

pub(crate) fn memory(scope: &Scope, text: &str) -> NewMemory {
    NewMemory {
        id: MemoryId::new(),
        scope: scope.clone(),
        content: text.to_owned(),
        embedding: HashEmbedder::new(DIMS).embed(text),
        metadata: Default::default(),
        categories: vec![],
        actor: "user".into(),
        expires_at: None,
    }
}

/// Inserts a row with plain SQL, as a writer that is not engram would.
async fn raw_insert(pool: &PgPool, user: &str, text: &str) -> Result<(), sqlx::Error> {
    raw_insert_in(&mut *pool.acquire().await?, user, text).await
}

/// As [`raw_insert`], inside `tx`.
async fn raw_insert_in(
    tx: &mut sqlx::PgConnection,
    user: &str,
    text: &str,
) -> Result<(), sqlx::Error> {
    let embedding = pgvector::Vector::from(HashEmbedder::new(DIMS).embed(text));
    sqlx::query(
        "INSERT INTO memories (id, user_id, content, content_hash, embedding, created_at, \
             updated_at, valid_from) \
         VALUES (gen_random_uuid(), $1, $2, sha256(convert_to($2, 'UTF8')), $3, now(), now(), now())",
    )
    .bind(user)
    .bind(text)
    .bind(embedding)
    .execute(tx)
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
    let store = open(&db, PlanSettings::default()).await;
    let alice = whole("alice");
    let first = store
        .insert(memory(&alice, "I prefer window seats on long flights"), 0.9)
        .await
        .unwrap();
    assert!(matches!(first, InsertOutcome::Added(_)));

    let pool = &db.pool().await;
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
    // In the vector index, as the rows of users past engram_index_from_rows are.
    let mut tx = pool.begin().await.unwrap();
    for setting in ["engram.index_from_rows", "engram.index_tail_rows"] {
        sqlx::query(sqlx::AssertSqlSafe(format!("SET LOCAL {setting} = 0")))
            .execute(&mut *tx)
            .await
            .unwrap();
    }
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
    .execute(&mut *tx)
    .await
    .unwrap();
    tx.commit().await.unwrap();
    sqlx::query("ANALYZE memories").execute(pool).await.unwrap();
}

fn ids(hits: &[engram::store::Hit]) -> Vec<MemoryId> {
    hits.iter().map(|h| h.id).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn search_through_the_vector_index_never_drops_rows_the_filter_keeps() {
    let db = TestDatabase::create().await;
    // Every scope goes through the index here; the other store scans exactly.
    let indexed = open(&db, PlanSettings::ALWAYS_INDEX)
        .await
        .with_copy_vector_floats(0)
        .with_copy_code_bytes(0);
    let exact = open(&db, PlanSettings::ALWAYS_EXACT).await;
    let pool = db.pool().await;
    crowd(&pool, 100, 40).await;

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
                    if scope.agent_id().is_some() {
                        agent_rows.push(m.id);
                    }
                    if scope.run_id().is_some() {
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
    let needle = whole("needle");
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
        let pool = pool.clone();
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
                "EXPLAIN SELECT id FROM memories WHERE user_id = 'needle' AND valid_to IS NULL AND indexed \
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
                "SELECT id FROM memories WHERE user_id = 'needle' AND valid_to IS NULL AND indexed \
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
        .vector_search(SearchScope::unfiltered(&trip), &q, 10)
        .await
        .unwrap());
    run_found.sort();
    run_rows.sort();
    assert_eq!(run_found, run_rows);
}

/// 60 distinct memories of user "needle", inserted one by one (their texts
/// and ids, in order), then 3 of user "tiny".
async fn needle_and_tiny(store: &PgStore) -> (Vec<String>, Vec<MemoryId>) {
    let needle = whole("needle");
    let texts: Vec<String> = (0..60)
        .map(|i| {
            format!(
                "Note {i}: {} in {}",
                ["tea", "maps", "jazz", "kites"][i % 4],
                ["Oslo", "Lima", "Pune"][i % 3]
            )
        })
        .collect();
    let mut ids = Vec::new();
    for text in &texts {
        match store.insert(memory(&needle, text), 0.99).await.unwrap() {
            InsertOutcome::Added(m) => ids.push(m.id),
            dup => panic!("unexpected duplicate for {text}: {dup:?}"),
        }
    }
    let tiny = whole("tiny");
    for text in ["Has a cat", "Owns a bike", "Reads at night"] {
        store.insert(memory(&tiny, text), 0.9).await.unwrap();
    }
    (texts, ids)
}

/// The reconciler's search (`engram_similar`) reads the vector index once
/// at least as many of the user's rows are in it as outside, with the
/// settings it changes for that put back; recall's (`engram_nearest`) stays
/// an exact scan below its limit; a small user's search is the exact one.
/// Through the index, every memory, in it or outside, is still its own
/// best match, and the memories loaded are the hits'.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reconcilers_search_reads_the_index_where_the_users_rows_are() {
    let db = TestDatabase::create().await;
    // The schema's exact-scan limit (5,000); rows indexed from a user's
    // 20th, directly (no tail), and no indexer: needle keeps 20 rows
    // outside the index and 40 in it.
    let store = open_idle(
        &db,
        PlanSettings {
            index_from_rows: Some(20),
            index_tail_rows: Some(0),
            ..PlanSettings::default()
        },
    )
    .await;
    let pool = db.pool().await;
    crowd(&pool, 20, 40).await;
    let needle = whole("needle");
    let (texts, ids) = needle_and_tiny(&store).await;

    // Index scans each function makes, counted inside one transaction,
    // and the exact-scan limit's setting after it.
    let scans = |function: &'static str, user: &'static str| {
        let pool = pool.clone();
        async move {
            let mut tx = pool.begin().await.unwrap();
            sqlx::query("SET LOCAL engram.exact_scan_max_rows = 5000")
                .execute(&mut *tx)
                .await
                .unwrap();
            // The backend's counts since it last reported them (about once
            // a second): the difference is this call's.
            let index_scans =
                "SELECT pg_stat_get_xact_numscans('memories_embedding_hnsw'::regclass)";
            let before: i64 = sqlx::query_scalar(index_scans)
                .fetch_one(&mut *tx)
                .await
                .unwrap();
            let q = pgvector::Vector::from(HashEmbedder::new(DIMS).embed("Note 7: kites in Lima"));
            let sql = format!("SELECT count(*) FROM {function}($1, NULL, NULL, NULL, $2, 5)");
            let found: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
                .bind(user)
                .bind(q)
                .fetch_one(&mut *tx)
                .await
                .unwrap();
            let after: i64 = sqlx::query_scalar(index_scans)
                .fetch_one(&mut *tx)
                .await
                .unwrap();
            let limit: String =
                sqlx::query_scalar("SELECT current_setting('engram.exact_scan_max_rows')")
                    .fetch_one(&mut *tx)
                    .await
                    .unwrap();
            tx.rollback().await.unwrap();
            (found, after > before, limit)
        }
    };
    let through_index = (5, true, "5000".to_owned());
    let exact = (5, false, "5000".to_owned());
    assert_eq!(scans("engram_similar", "needle").await, through_index);
    assert_eq!(scans("engram_nearest", "needle").await, exact);
    assert_eq!(
        scans("engram_similar", "tiny").await,
        (3, false, "5000".to_owned())
    );

    // Through the index: each memory is its own best match, in the index
    // (the last 40) or not (the first 20), and loaded with its hits.
    let at = SearchScope::unfiltered(&needle);
    for (text, id) in texts.iter().zip(&ids) {
        let q = HashEmbedder::new(DIMS).embed(text);
        let found = store.similar(at, &q, 5, Some(0.99)).await.unwrap();
        assert_eq!(found.hits.first().map(|h| h.id), Some(*id), "{text}");
        let loaded: Vec<MemoryId> = found.memories.unwrap().iter().map(|m| m.id).collect();
        assert_eq!(loaded, [*id], "{text}");
    }
    // A user with as many rows outside the index as in it is searched as
    // recall searches.
    sqlx::query("UPDATE memories SET indexed = false WHERE user_id = 'needle' AND indexed")
        .execute(&pool)
        .await
        .unwrap();
    assert_eq!(scans("engram_similar", "needle").await, exact);
}

/// A user's rows enter the vector index only from their
/// `engram_index_from_rows`-th memory on (a small user's searches scan
/// exactly and never read it); a search through the index still finds the
/// rows left out, and so does the duplicate check; the indexer then moves
/// the large user's earlier rows in, and leaves the small user's out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_outside_the_vector_index_are_still_found_through_it() {
    let db = TestDatabase::create().await;
    // No indexer at work: the backlog is worked through by hand below, to
    // see the state before.
    let store = open_idle(
        &db,
        PlanSettings {
            index_from_rows: Some(20),
            ..PlanSettings::ALWAYS_INDEX
        },
    )
    .await
    // Its searches through SQL's index path, not an in-process copy.
    .with_copy_vector_floats(0)
    .with_copy_code_bytes(0);
    let exact = open_idle(&db, PlanSettings::ALWAYS_EXACT).await;
    let pool = db.pool().await;
    crowd(&pool, 50, 40).await;

    let needle = whole("needle");
    let (texts, ids) = needle_and_tiny(&store).await;
    // (user, in the index, rows) of the two users.
    let counts = || async {
        sqlx::query_as::<_, (String, bool, i64)>(
            "SELECT user_id, indexed, count(*) FROM memories \
             WHERE user_id IN ('needle', 'tiny') GROUP BY 1, 2 ORDER BY 1, 2",
        )
        .fetch_all(&pool)
        .await
        .unwrap()
    };
    assert_eq!(
        counts().await,
        [
            ("needle".to_owned(), false, 20),
            ("needle".to_owned(), true, 40),
            ("tiny".to_owned(), false, 3),
        ],
        "the first 20 of a user stay out of the index"
    );

    // Through the index branch (40 indexed rows answer a search for 10),
    // each memory is its own best match, in the index or not, and every
    // row outside the index that an exact scan ranks in the top 10 is there.
    let at = SearchScope::unfiltered(&needle);
    let outside: HashSet<MemoryId> = ids[..20].iter().copied().collect();
    for (text, id) in texts.iter().zip(&ids) {
        let q = HashEmbedder::new(DIMS).embed(text);
        let hits = store.vector_search(at, &q, 10).await.unwrap();
        assert_eq!(hits.first().map(|h| h.id), Some(*id), "{text}");
        let got: HashSet<MemoryId> = self::ids(&hits).into_iter().collect();
        let reference = exact.vector_search(at, &q, 10).await.unwrap();
        // Rows tied with the last one may fall either side of the cut (and
        // an in-process copy's cosine may differ from SQL's in its last bits).
        let cut = hits.last().map_or(f32::MAX, |h| h.score + 1e-5);
        for want in &reference {
            if outside.contains(&want.id) && want.score > cut {
                assert!(
                    got.contains(&want.id),
                    "{text}: {} missing\n{hits:?}\n{reference:?}",
                    want.id
                );
            }
        }
    }
    // A near-duplicate of a row outside the index is refused.
    match store.insert(memory(&needle, &texts[3]), 0.9).await.unwrap() {
        InsertOutcome::Duplicate { existing, .. } => assert_eq!(existing.id, ids[3]),
        other => panic!("a duplicate of an unindexed row was stored: {other:?}"),
    }

    // The indexer moves needle's 20 earlier rows in; tiny has no backlog.
    assert_eq!(store.index_backlog().await.unwrap(), 20);
    assert_eq!(
        counts().await,
        [
            ("needle".to_owned(), true, 60),
            ("tiny".to_owned(), false, 3),
        ]
    );
    let marked: i64 = sqlx::query_scalar("SELECT count(*) FROM memory_users WHERE index_backlog")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(marked, 0, "every backlog is cleared");
    assert_eq!(store.index_backlog().await.unwrap(), 0);
    for (text, id) in texts.iter().zip(&ids) {
        let q = HashEmbedder::new(DIMS).embed(text);
        let hits = store.vector_search(at, &q, 10).await.unwrap();
        assert_eq!(hits.first().map(|h| h.id), Some(*id), "{text}, all indexed");
    }
}

/// The store's own indexer works through a backlog without being asked,
/// and stops with the store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_indexer_moves_a_backlog_into_the_index_by_itself() {
    let db = TestDatabase::create().await;
    let options = PgOptions {
        plan: PlanSettings {
            index_from_rows: Some(5),
            ..PlanSettings::default()
        },
        owner_url: Some(db.owner_url.clone()),
        index_backlog_every: Some(std::time::Duration::from_millis(50)),
        ..PgOptions::default()
    };
    let store = PgStore::open(&db.app_url, HashEmbedder::new(DIMS).identity(), options)
        .await
        .unwrap();
    let pool = db.pool().await;
    let user = whole("grows");
    for i in 0..12 {
        let text = format!(
            "Fact number {i} about {}",
            ["boats", "cards", "lamps"][i % 3]
        );
        store.insert(memory(&user, &text), 0.99).await.unwrap();
    }
    let waiting = || async {
        sqlx::query_scalar::<_, i64>(
            "SELECT count(*) FROM memories WHERE user_id = 'grows' AND NOT indexed",
        )
        .fetch_one(&pool)
        .await
        .unwrap()
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while waiting().await > 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "{} rows still outside the index after 10 s",
            waiting().await
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    drop(store);
}

/// The plan `session` runs its prepared `same_text` lookup with.
async fn same_text_plan(session: &mut sqlx::PgConnection) -> String {
    sqlx::query_scalar::<_, String>("EXPLAIN EXECUTE same_text('a', '\\x00')")
        .fetch_all(session)
        .await
        .unwrap()
        .join("\n")
}

/// A table that fills faster than autovacuum looks (once a minute) is
/// analyzed by the store itself, as the runtime role, and a plan that a
/// session cached while the table was empty is then made again from the new
/// statistics: the duplicate check's same-text lookup probes the unique index
/// on (user, text hash) rather than reading the user's rows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tables_that_fill_fast_are_analyzed_and_cached_plans_made_again() {
    let db = TestDatabase::create().await;
    let idle = open_idle(&db, PlanSettings::default()).await;
    // Nothing has changed yet: nothing is due.
    assert_eq!(
        idle.analyze_stale_tables().await.unwrap(),
        Vec::<&str>::new()
    );
    drop(idle);
    let options = PgOptions {
        owner_url: Some(db.owner_url.clone()),
        index_backlog_every: None,
        analyze_every: Some(std::time::Duration::from_millis(50)),
        ..PgOptions::default()
    };
    let store = PgStore::open(&db.app_url, HashEmbedder::new(DIMS).identity(), options)
        .await
        .unwrap();

    // Only the store analyzes here.
    let pool = db.pool().await;
    sqlx::query("ALTER TABLE memories SET (autovacuum_enabled = false)")
        .execute(&pool)
        .await
        .unwrap();
    // A session caches its generic plan of the lookup while the table is empty.
    let mut session = pool.acquire().await.unwrap();
    sqlx::raw_sql(
        "SET plan_cache_mode = force_generic_plan; \
         PREPARE same_text (text, bytea) AS SELECT id FROM memories \
             WHERE user_id = $1 AND content_hash = $2 AND valid_to IS NULL",
    )
    .execute(&mut *session)
    .await
    .unwrap();
    let before = same_text_plan(&mut session).await;

    let rows: Vec<(String, Option<&str>, serde_json::Value)> = (0..600)
        .map(|i| {
            (
                format!("Note {i} about {}", THINGS[i % THINGS.len()]),
                None,
                json!({}),
            )
        })
        .collect();
    bulk_insert(&pool, "a", &rows).await;
    let analyzed = || async {
        sqlx::query_scalar::<_, f32>("SELECT reltuples FROM pg_class WHERE relname = 'memories'")
            .fetch_one(&pool)
            .await
            .unwrap()
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while analyzed().await < 600.0 {
        assert!(
            std::time::Instant::now() < deadline,
            "memories not analyzed 30 s after 600 rows went in (reltuples {})",
            analyzed().await
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    // ANALYZE writes `reltuples` in place before its statistics commit, so
    // the plan may still be made from the old ones for a moment.
    let mut after = same_text_plan(&mut session).await;
    while !after.contains("memories_current_text") && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        after = same_text_plan(&mut session).await;
    }
    assert!(
        after.contains("memories_current_text"),
        "before the analyze:\n{before}\nafter:\n{after}"
    );
    drop(store);
}

/// The store analyzes a table again once its changes reach its size (50
/// rows + 100%), not at autovacuum's 10%: a table that grows fast is
/// analyzed at each doubling (its plans' choices move with its size), not
/// every second, and autovacuum keeps the rest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_store_analyzes_a_table_again_when_it_has_doubled() {
    let db = TestDatabase::create().await;
    let options = PgOptions {
        owner_url: Some(db.owner_url.clone()),
        index_backlog_every: None,
        analyze_every: None,
        ..PgOptions::default()
    };
    let store = PgStore::open(&db.app_url, HashEmbedder::new(DIMS).identity(), options)
        .await
        .unwrap();
    // One connection, told after each insert to report its counts at once
    // (a backend may otherwise hold them back up to 10 s).
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect(&db.url)
        .await
        .unwrap();
    // Only this test analyzes here.
    sqlx::raw_sql(
        "ALTER TABLE memories SET (autovacuum_enabled = false); \
         ALTER TABLE keyword_postings SET (autovacuum_enabled = false)",
    )
    .execute(&pool)
    .await
    .unwrap();
    let mut written = 0;
    let mut add = async |n: usize| {
        let rows: Vec<(String, Option<&str>, serde_json::Value)> = (written..written + n)
            .map(|i| {
                (
                    format!("Note {i} on {}", THINGS[i % THINGS.len()]),
                    None,
                    json!({}),
                )
            })
            .collect();
        bulk_insert(&pool, "a", &rows).await;
        sqlx::query("SELECT pg_stat_force_next_flush()")
            .execute(&pool)
            .await
            .unwrap();
        written += n;
    };
    // Whether the store finds `memories` due once the statistics show
    // `changes` since its last analyze (a backend reports its counts up to a
    // second after its transaction).
    let stats = db.pool().await;
    let due_after = async |changes: i64| {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let seen: i64 = sqlx::query_scalar(
                "SELECT coalesce((SELECT n_mod_since_analyze FROM pg_stat_user_tables \
                                  WHERE relname = 'memories'), -1)",
            )
            .fetch_one(&stats)
            .await
            .unwrap();
            if seen == changes {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the statistics show {seen} changes, not {changes}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        store
            .analyze_stale_tables()
            .await
            .unwrap()
            .contains(&"memories")
    };

    add(600).await;
    assert!(due_after(600).await, "600 new rows on an empty table");
    // 200 changes: past autovacuum's threshold (50 + 10% of 600), short of
    // the store's (50 + 600).
    add(200).await;
    assert!(!due_after(200).await, "200 changes on 600 rows");
    // 700 in all since the last analyze.
    add(500).await;
    assert!(due_after(700).await, "700 changes on 600 rows");
    assert!(!due_after(0).await, "nothing changed since");
    drop(store);
}

/// Unless `engram.index_tail_rows` says otherwise, up to 2,048 of a large
/// user's rows wait outside the vector index (20280601000001; 256 before),
/// and the rows after them go in directly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn by_default_a_large_users_tail_holds_2048_rows() {
    let db = TestDatabase::create().await;
    // Migrates the database; its indexer never sees the uncommitted rows.
    let _store = open_idle(&db, PlanSettings::default()).await;
    let pool = db.pool().await;
    let mut tx = pool.begin().await.unwrap();
    // Every row of the user counts as a large user's; the tail is the
    // schema's default.
    sqlx::query("SET LOCAL engram.index_from_rows = 0")
        .execute(&mut *tx)
        .await
        .unwrap();
    let insert = |from: i32, to: i32| {
        sqlx::query(
            "INSERT INTO memories (id, user_id, content, content_hash, embedding, created_at, \
                 updated_at, valid_from) \
             SELECT gen_random_uuid(), 'burst', 'burst memory ' || i, \
                    sha256(convert_to('burst memory ' || i, 'UTF8')), \
                    (SELECT array_agg(random() - 0.5)::vector FROM generate_series(1, $3) \
                     WHERE i > 0), \
                    now(), now(), now() \
             FROM generate_series($1, $2) AS i",
        )
        .bind(from)
        .bind(to)
        .bind(DIMS as i32)
    };
    insert(1, 2040).execute(&mut *tx).await.unwrap();
    for i in 2041..=2050 {
        insert(i, i).execute(&mut *tx).await.unwrap();
    }
    let rows: Vec<(bool, i64)> = sqlx::query_as(
        "SELECT indexed, count(*) FROM memories WHERE user_id = 'burst' GROUP BY 1 ORDER BY 1",
    )
    .fetch_all(&mut *tx)
    .await
    .unwrap();
    assert_eq!(rows, [(false, 2048), (true, 2)]);
    tx.rollback().await.unwrap();
}

/// A large user's new rows wait outside the vector index (a tail of at
/// most `engram_index_tail_rows`) instead of paying the index insertion on
/// the write; they are found exactly meanwhile, by searches and by the
/// duplicate check; a full tail sends rows in directly; the indexer's move
/// leaves the user's version alone (nothing a reader sees changed), and the
/// count of waiting rows stays what the rows say through every kind of write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_rows_wait_outside_the_index_and_are_found_exactly() {
    let db = TestDatabase::create().await;
    // No indexer at work in either store: the tail is moved by hand below.
    let store = open_idle(
        &db,
        PlanSettings {
            index_from_rows: Some(20),
            index_tail_rows: Some(10),
            ..PlanSettings::ALWAYS_INDEX
        },
    )
    .await
    // Its searches through SQL's index path, not an in-process copy.
    .with_copy_vector_floats(0)
    .with_copy_code_bytes(0);
    let exact = open_idle(&db, PlanSettings::ALWAYS_EXACT).await;
    let pool = db.pool().await;
    let user = whole("tail");
    let texts: Vec<String> = (0..50)
        .map(|i| {
            format!(
                "Entry {i}: {} near {}",
                ["owls", "ferns", "clocks", "rivers", "bread"][i % 5],
                ["Bergen", "Quito", "Hanoi"][i % 3]
            )
        })
        .collect();
    let mut ids = Vec::new();
    let add = async |text: &str| match store.insert(memory(&user, text), 0.99).await.unwrap() {
        InsertOutcome::Added(m) => m.id,
        dup => panic!("unexpected duplicate for {text}: {dup:?}"),
    };
    for text in &texts[..25] {
        ids.push(add(text).await);
    }
    // (in the index, rows), and the count the triggers keep.
    let state = || async {
        let rows = sqlx::query_as::<_, (bool, i64)>(
            "SELECT indexed, count(*) FROM memories \
             WHERE user_id = 'tail' AND valid_to IS NULL GROUP BY 1 ORDER BY 1",
        )
        .fetch_all(&pool)
        .await
        .unwrap();
        let (waiting, version): (i64, i64) =
            sqlx::query_as("SELECT waiting, version FROM memory_users WHERE user_id = 'tail'")
                .fetch_one(&pool)
                .await
                .unwrap();
        let outside = rows.iter().find(|r| !r.0).map_or(0, |r| r.1);
        assert_eq!(
            waiting, outside,
            "memory_users.waiting counts the rows outside"
        );
        (rows, version)
    };
    // The first 20 stay out as a small user's do; that is already a full
    // tail, so the next 5 go in directly.
    assert_eq!(state().await.0, [(false, 20), (true, 5)]);
    let (_, before) = state().await;
    assert_eq!(store.index_backlog().await.unwrap(), 20);
    let (rows, after) = state().await;
    assert_eq!(rows, [(true, 25)]);
    assert_eq!(
        before, after,
        "moving rows into the index is no write a reader sees"
    );

    // With the tail empty, the next 10 wait and the 5 after them go in.
    for text in &texts[25..40] {
        ids.push(add(text).await);
    }
    assert_eq!(state().await.0, [(false, 10), (true, 30)]);
    let waiting: Vec<MemoryId> = ids[25..35].to_vec();
    // Searches go through the index (ALWAYS_INDEX) and still find every
    // waiting row exactly: each is its own best match, and every waiting row
    // an exact scan ranks above the cut is there.
    let at = SearchScope::unfiltered(&user);
    for (text, id) in texts[..40].iter().zip(&ids) {
        let q = HashEmbedder::new(DIMS).embed(text);
        let hits = store.vector_search(at, &q, 10).await.unwrap();
        assert_eq!(hits.first().map(|h| h.id), Some(*id), "{text}");
        // Ties at the cut as above.
        let cut = hits.last().map_or(f32::MAX, |h| h.score + 1e-5);
        let got: HashSet<MemoryId> = self::ids(&hits).into_iter().collect();
        for want in exact.vector_search(at, &q, 10).await.unwrap() {
            if waiting.contains(&want.id) && want.score > cut {
                assert!(got.contains(&want.id), "{text}: {} missing", want.id);
            }
        }
    }
    // A near-duplicate of a waiting row is refused.
    match store.insert(memory(&user, &texts[30]), 0.9).await.unwrap() {
        InsertOutcome::Duplicate { existing, .. } => assert_eq!(existing.id, ids[30]),
        other => panic!("a duplicate of a waiting row was stored: {other:?}"),
    }
    // Closing a waiting row and deleting another (plain SQL, as an
    // operator sees every user) keep the count true.
    let mut tx = pool.begin().await.unwrap();
    for sql in [
        "SELECT set_config('engram.all_users', 'on', true)",
        "UPDATE memories SET valid_to = now() WHERE id = $1",
        "DELETE FROM memories WHERE id = $2",
    ] {
        sqlx::query(sql)
            .bind(ids[26].0)
            .bind(ids[27].0)
            .execute(&mut *tx)
            .await
            .unwrap();
    }
    tx.commit().await.unwrap();
    assert_eq!(state().await.0, [(false, 8), (true, 30)]);
    assert_eq!(store.index_backlog().await.unwrap(), 8);
    assert_eq!(state().await.0, [(true, 38)]);
    for (text, id) in texts[..40]
        .iter()
        .zip(&ids)
        .filter(|(_, id)| **id != ids[26] && **id != ids[27])
    {
        let q = HashEmbedder::new(DIMS).embed(text);
        let hits = store.vector_search(at, &q, 10).await.unwrap();
        assert_eq!(hits.first().map(|h| h.id), Some(*id), "{text}, all indexed");
    }
}

/// At more than 384 dimensions the duplicate check scans exactly only as
/// many rows as the exact-scan limit allows at 384 (limit x 384 / d) and
/// reads the vector index past that; recall keeps the limit as set. Seen in
/// the index's own scan count: 20 rows of 1536 dimensions, a limit of 40
/// (10 at this dimension): the check reads the index; with a limit of 100
/// (25 here), it does not.
/// The duplicate check trusts a search of the whole user only for the row
/// it was made for and only while the user is at the version it was made
/// at: a stale claim, a claim about another row, or a batch that wrote
/// before its first insert gets the full search. The same text is refused
/// whatever the claim. (A trusted claim is seen here by what it lets
/// through: a near-duplicate no honest search would have vouched for.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_duplicate_check_trusts_a_search_only_at_its_version() {
    let db = TestDatabase::create().await;
    let store = open(&db, PlanSettings::default()).await;
    let alice = whole("alice");
    let seats = "I prefer window seats on long flights";
    let near = "I prefer window seats on long flights!";
    let refused = |outcome: InsertOutcome| matches!(outcome, InsertOutcome::Duplicate { .. });
    store.insert(memory(&alice, seats), 0.9).await.unwrap();
    store
        .insert(memory(&alice, "Keeps bees in the garden"), 0.9)
        .await
        .unwrap();

    let at = SearchScope::unfiltered(&alice);
    let found = store
        .nearest(at, &HashEmbedder::new(DIMS).embed(near), 5)
        .await
        .unwrap();
    let v1 = found.version.expect("the store names its version");
    assert_eq!(store.version("alice").await.unwrap(), Some(v1));
    assert!(found.hits[0].score >= 0.9, "the search saw the near one");

    // A claim about the same text: refused all the same.
    let mut batch = store.begin("alice").await.unwrap();
    let same = batch.insert_searched(memory(&alice, seats), 0.9, v1).await;
    assert!(refused(same.unwrap()), "the same text is always refused");
    drop(batch);

    // A claim at a version the user has left: searched, refused.
    store
        .insert(memory(&alice, "Collects old maps of Porto"), 0.9)
        .await
        .unwrap();
    let v2 = store.version("alice").await.unwrap().unwrap();
    let mut batch = store.begin("alice").await.unwrap();
    let stale = batch.insert_searched(memory(&alice, near), 0.9, v1).await;
    assert!(refused(stale.unwrap()), "a stale claim is not trusted");
    drop(batch);

    // A batch that wrote before its first insert: its own write moved the
    // version no search saw, so a claim at the version before is not trusted.
    let maps = store.recent(&alice, 10).await.unwrap().0;
    let maps = maps.iter().find(|m| m.memory.contains("maps")).unwrap().id;
    let mut batch = store.begin("alice").await.unwrap();
    let rewritten = "Collects old maps of Lisbon";
    let vector = HashEmbedder::new(DIMS).embed(rewritten);
    assert!(
        batch
            .update(maps, rewritten, &vector, "user")
            .await
            .unwrap()
            .is_some()
    );
    let after_own = batch.insert_searched(memory(&alice, near), 0.9, v2).await;
    assert!(
        refused(after_own.unwrap()),
        "searched after the batch's own write"
    );
    drop(batch);

    // A claim in plain SQL about another row: searched, refused.
    let pool = db.pool().await;
    let mut conn = pool.acquire().await.unwrap();
    let mut tx = conn.begin().await.unwrap();
    sqlx::query("SELECT set_config('engram.dedup_searched', $1, true)")
        .bind(format!("{}@{v2}", uuid::Uuid::now_v7()))
        .execute(&mut *tx)
        .await
        .unwrap();
    let other = raw_insert_in(&mut tx, "alice", near).await.unwrap_err();
    assert_eq!(sqlstate(&other).as_deref(), Some("EG001"), "{other}");
    drop(tx);

    // The claim for this row at the user's version: trusted, so the near
    // one gets in (the service makes no such claim: its search saw it).
    let mut batch = store.begin("alice").await.unwrap();
    let trusted = batch.insert_searched(memory(&alice, near), 0.9, v2).await;
    assert!(matches!(trusted.unwrap(), InsertOutcome::Added(_)));
    // Later inserts of the same batch: still the version the lock saw.
    let next = "I prefer window seats on long flights!!";
    let second = batch.insert_searched(memory(&alice, next), 0.9, v2).await;
    assert!(matches!(second.unwrap(), InsertOutcome::Added(_)));
    // Without a claim, the batch's own rows are searched like any other.
    let third = batch.insert(
        memory(&alice, "I prefer window seats on long flights?"),
        0.9,
    );
    assert!(
        refused(third.await.unwrap()),
        "an unclaimed insert is searched"
    );
    batch.commit().await.unwrap();
    assert_eq!(store.recent(&alice, 10).await.unwrap().1, 5);
}

/// Two writers that both searched before either wrote, each claiming its
/// near-duplicate fact is clear at the same version, leave one memory: the
/// second to take the user's lock finds the version moved and searches.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claims_made_before_a_concurrent_write_are_not_trusted() {
    let db = TestDatabase::create().await;
    let store = Arc::new(open(&db, PlanSettings::default()).await);
    let alice = whole("alice");
    store
        .insert(memory(&alice, "Keeps bees in the garden"), 0.9)
        .await
        .unwrap();
    let at = SearchScope::unfiltered(&alice);
    let facts = [
        "Prefers aisle seats on night trains",
        "Drinks green tea before breakfast",
        "Plays the cello in a string quartet",
        "Grows chillies on the balcony",
        "Runs a marathon every autumn",
        "Collects stamps from Iceland",
        "Bakes sourdough on Sundays",
        "Reads detective novels at night",
        "Learns Japanese with flashcards",
        "Repairs vintage radios",
        "Swims in the lake each morning",
        "Knits scarves for the winter market",
    ];
    for (round, fact) in facts.iter().enumerate() {
        let first = (*fact).to_owned();
        let second = format!("{first}!");
        let mut claims = Vec::new();
        for text in [&first, &second] {
            let found = store
                .nearest(at, &HashEmbedder::new(DIMS).embed(text), 5)
                .await
                .unwrap();
            assert!(found.hits.iter().all(|h| h.score < 0.9), "round {round}");
            claims.push((memory(&alice, text), found.version.unwrap()));
        }
        let writes = claims.into_iter().map(|(new, version)| {
            let store = store.clone();
            tokio::spawn(async move {
                let mut batch = store.begin("alice").await?;
                let outcome = batch.insert_searched(new, 0.9, version).await?;
                batch.commit().await?;
                Ok::<_, StoreError>(outcome)
            })
        });
        let outcomes: Vec<InsertOutcome> = futures::future::join_all(writes)
            .await
            .into_iter()
            .map(|joined| joined.unwrap().unwrap())
            .collect();
        let added = outcomes
            .iter()
            .filter(|o| matches!(o, InsertOutcome::Added(_)))
            .count();
        assert_eq!(added, 1, "round {round}: {outcomes:?}");
    }
    assert_eq!(store.recent(&alice, 100).await.unwrap().1, 13);
}

/// A batch's new memories go in with one statement (the rows share the
/// command that inserted them), and the duplicate check trusts each row's
/// own claim only, only at the user's version: a claim on the second row
/// lets a near one through (no honest search would vouch for it; the
/// service makes no such claim), while a row without a claim beside a
/// claimed one, or with a stale claim, is searched and refused, and the
/// others still go in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batchs_inserts_go_in_together_each_with_its_own_claim() {
    let db = TestDatabase::create().await;
    let store = open(&db, PlanSettings::default()).await;
    let alice = whole("alice");
    store
        .insert(memory(&alice, "I prefer window seats on long flights"), 0.9)
        .await
        .unwrap();
    let v1 = store.version("alice").await.unwrap().unwrap();
    let together = |news: Vec<(NewMemory, Option<u64>)>| {
        let store = &store;
        async move {
            let mut batch = store.begin("alice").await.unwrap();
            let outcomes = batch.insert_all(news, 0.9).await.unwrap();
            batch.commit().await.unwrap();
            outcomes
                .into_iter()
                .map(|o| matches!(o, InsertOutcome::Added(_)))
                .collect::<Vec<bool>>()
        }
    };

    let tea = memory(&alice, "Drinks green tea before breakfast");
    let near = memory(&alice, "I prefer window seats on long flights!");
    let added = together(vec![(tea.clone(), Some(v1)), (near.clone(), Some(v1))]).await;
    assert_eq!(added, [true, true], "the second row's claim was trusted");
    let pool = db.pool().await;
    let commands: Vec<String> =
        sqlx::query_scalar("SELECT DISTINCT cmin::text FROM memories WHERE id = ANY ($1)")
            .bind(vec![tea.id.0, near.id.0])
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(
        commands.len(),
        1,
        "one statement inserted both: {commands:?}"
    );

    let v2 = store.version("alice").await.unwrap().unwrap();
    let cello = memory(&alice, "Plays the cello in a string quartet");
    let unclaimed = memory(&alice, "I prefer window seats on long flights?");
    let added = together(vec![(cello, Some(v2)), (unclaimed, None)]).await;
    assert_eq!(added, [true, false], "a row without a claim is searched");

    let maps = memory(&alice, "Collects old maps of Porto");
    let stale = memory(&alice, "I prefer window seats on long flights!!");
    let added = together(vec![(maps, Some(v1)), (stale, Some(v1))]).await;
    assert_eq!(added, [true, false], "a stale claim is not trusted");
    assert_eq!(store.recent(&alice, 10).await.unwrap().1, 5);
}

/// A service over `db` whose model is `fake` (the hash embedder, duplicates
/// at 0.9, the reconciler asked above `reconcile_threshold`).
/// Audit is on: its rows are read from the store this returns beside it.
async fn service_with_model(
    db: &TestDatabase,
    fake: &FakeOpenAi,
    reconcile_threshold: f32,
) -> (engram::service::MemoryService, Arc<PgStore>) {
    use engram::audit::{Auditor, Pseudonyms, Sink};
    use engram::extract::{DEFAULT_CATEGORIES, LlmExtractor, LlmSettings};
    use engram::service::{MemoryService, Settings};

    let llm = LlmSettings {
        endpoint: engram::openai::Endpoint {
            base_url: fake.base_url.clone(),
            api_key: Some("test-key".into()),
            timeout: std::time::Duration::from_secs(5),
            max_retries: 1,
        },
        model: "gpt-4o-mini".into(),
        categories: DEFAULT_CATEGORIES.iter().map(|c| c.to_string()).collect(),
    };
    let store = Arc::new(open(db, PlanSettings::default()).await);
    let auditor = Auditor::new(
        Pseudonyms::new(b"test pseudonym key".to_vec()),
        false,
        Sink::start(store.clone()),
    );
    let service = MemoryService::new(
        store.clone(),
        Arc::new(HashEmbedder::new(DIMS)),
        Arc::new(LlmExtractor::new(llm).unwrap()),
        Settings {
            dedup_threshold: 0.9,
            reconcile_threshold,
            ..Settings::default()
        },
    )
    .with_audit(Arc::new(auditor));
    (service, store)
}

/// The model's answer extracting `texts` as facts.
fn fact_reply(texts: &[&str]) -> Reply {
    let facts: Vec<_> = texts
        .iter()
        .map(|t| json!({"text": t, "categories": ["hobbies"]}))
        .collect();
    Reply::Content(json!({ "facts": facts }).to_string())
}

/// A remember of `text` for alice.
fn alices(text: &str) -> engram::params::RememberParams {
    engram::params::RememberParams {
        text: Some(text.into()),
        user_id: Some("alice".into()),
        ..Default::default()
    }
}

/// A remember whose facts its reconciliation found clear of every stored
/// memory still deduplicates them against each other: the second of two
/// near-identical facts is found known, not stored, though the search made
/// before the batch saw neither.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn facts_of_one_remember_are_deduplicated_against_each_other() {
    use engram::model::Event;

    let db = TestDatabase::create().await;
    let fake = FakeOpenAi::start(DIMS).await;
    let (service, _) = service_with_model(&db, &fake, 0.5).await;
    let (facts, remember) = (fact_reply, alices);

    fake.then(facts(&["Prefers window seats on long flights"]));
    service
        .remember(common::ME, remember("I like window seats"))
        .await
        .unwrap();
    fake.then(facts(&[
        "Keeps bees in the garden",
        "Keeps bees in the garden!",
    ]));
    let bees = service
        .remember(common::ME, remember("I keep bees, in the garden!"))
        .await
        .unwrap();
    let events: Vec<Event> = bees.results.iter().map(|r| r.event).collect();
    assert_eq!(events, [Event::Add, Event::None], "{bees:?}");
    assert_eq!(bees.results[1].id, bees.results[0].id);
    assert_eq!(
        common::current(&service, "alice").await,
        [
            "Keeps bees in the garden",
            "Prefers window seats on long flights"
        ]
    );
}

/// One user's remembers from many clients at once, each fact sent twice:
/// those that wait for the user's write under way go in together
/// (`service::grouped`), and still exactly one memory is kept per fact, each
/// caller is answered with its own fact's memory, and a recall of each fact
/// (through the user's in-process copy) finds it first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_users_concurrent_remembers_keep_one_memory_per_fact() {
    use engram::extract::VerbatimExtractor;
    use engram::model::Event;
    use engram::params::{RecallParams, RememberParams};
    use engram::service::{MemoryService, Settings};

    let db = TestDatabase::create().await;
    let service = Arc::new(MemoryService::new(
        Arc::new(open(&db, PlanSettings::default()).await),
        Arc::new(HashEmbedder::new(DIMS)),
        Arc::new(VerbatimExtractor),
        Settings {
            dedup_threshold: 0.9,
            ..Settings::default()
        },
    ));
    // Seeded first, so the user has a copy that the writes move on.
    let facts = [
        "Keeps bees in the garden behind the house",
        "Sings baritone in a Tuesday choir",
        "Is allergic to hazelnuts and almonds",
        "Drives an old green camper van",
        "Collects vinyl records from the seventies",
        "Grew up on a farm near Porto",
        "Runs a marathon every spring",
        "Speaks fluent Japanese after living in Osaka",
        "Fixes vintage typewriters as a hobby",
        "Takes oat milk in coffee, never sugar",
        "Plays chess online most evenings",
        "Volunteers at the animal shelter on Saturdays",
    ];
    let remember = |text: &str| RememberParams {
        text: Some(text.into()),
        user_id: Some("alice".into()),
        infer: Some(false),
        ..RememberParams::default()
    };
    service
        .remember(common::ME, remember("Works as a nurse on night shifts"))
        .await
        .unwrap();
    let mut tasks = Vec::new();
    for round in 0..2 {
        for (i, text) in facts.iter().enumerate() {
            let service = service.clone();
            let params = remember(text);
            tasks.push(tokio::spawn(async move {
                let answer = service.remember(common::ME, params).await.unwrap();
                (round, i, answer)
            }));
        }
    }
    let mut ids = vec![Vec::new(); facts.len()];
    for task in tasks {
        let (_, i, answer) = task.await.unwrap();
        assert_eq!(answer.results.len(), 1, "{answer:?}");
        let event = &answer.results[0];
        assert_eq!(event.memory, facts[i], "each caller gets its own fact");
        assert!(matches!(event.event, Event::Add | Event::None), "{event:?}");
        ids[i].push(event.id);
    }
    for (i, both) in ids.iter().enumerate() {
        assert_eq!(
            both[0], both[1],
            "fact {i}: both callers name the one memory"
        );
    }
    let mut expected: Vec<String> = facts.iter().map(|f| f.to_string()).collect();
    expected.push("Works as a nurse on night shifts".into());
    expected.sort();
    assert_eq!(common::current(&service, "alice").await, expected);
    for (i, text) in facts.iter().enumerate() {
        let found = service
            .recall(
                common::ME,
                RecallParams {
                    query: text.to_string(),
                    user_id: Some("alice".into()),
                    limit: Some(3),
                    ..RecallParams::default()
                },
            )
            .await
            .unwrap();
        assert_eq!(found.results[0].memory.id, ids[i][0], "{found:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_duplicate_check_scales_the_exact_scan_limit_by_dimension() {
    const WIDE: usize = 1536;
    let db = TestDatabase::create().await;
    let plan = PlanSettings {
        exact_scan_max_rows: Some(40),
        exact_scan_ratio: Some(0.0),
        index_from_rows: Some(0),
        index_tail_rows: Some(0),
        ef_search: None,
    };
    let options = PgOptions {
        plan,
        owner_url: Some(db.owner_url.clone()),
        index: IndexKind::Hnsw,
        ..PgOptions::default()
    };
    let embedder = HashEmbedder::new(WIDE);
    let store = PgStore::open(&db.app_url, embedder.identity(), options)
        .await
        .unwrap();
    let user = whole("wide");
    for i in 0..20 {
        let text = format!("Wide note {i} on {}", ["gliders", "moss", "tiles"][i % 3]);
        let wide = NewMemory {
            embedding: embedder.embed(&text),
            ..memory(&user, &text)
        };
        store.insert(wide, 0.9).await.unwrap();
    }
    // Only a session of the test's own from here, whose statistics it
    // flushes itself: the store's sessions end (and flush theirs) first.
    drop(store);
    let pool = db.pool().await;
    let mut conn = pool.acquire().await.unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let others: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity \
             WHERE datname = current_database() AND pid <> pg_backend_pid()",
        )
        .fetch_one(&mut *conn)
        .await
        .unwrap();
        if others == 0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the store's sessions did not end"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let index_scans = async |conn: &mut sqlx::PgConnection| -> i64 {
        sqlx::query("SELECT pg_stat_force_next_flush()")
            .execute(&mut *conn)
            .await
            .unwrap();
        sqlx::query("SELECT pg_stat_clear_snapshot()")
            .execute(&mut *conn)
            .await
            .unwrap();
        sqlx::query_scalar(
            "SELECT idx_scan FROM pg_stat_user_indexes \
             WHERE indexrelname = 'memories_embedding_hnsw'",
        )
        .fetch_one(&mut *conn)
        .await
        .unwrap()
    };
    let insert = async |conn: &mut sqlx::PgConnection, limit: u32, text: &str| {
        let mut tx = conn.begin().await.unwrap();
        for (name, value) in [
            ("engram.all_users", "on".to_owned()),
            ("engram.exact_scan_max_rows", limit.to_string()),
            ("engram.exact_scan_ratio", "0".to_owned()),
            ("engram.index_from_rows", "0".to_owned()),
            ("engram.index_tail_rows", "0".to_owned()),
        ] {
            sqlx::query("SELECT set_config($1, $2, true)")
                .bind(name)
                .bind(value)
                .execute(&mut *tx)
                .await
                .unwrap();
        }
        sqlx::query(
            "INSERT INTO memories (id, user_id, content, content_hash, embedding, created_at, \
                 updated_at, valid_from) \
             VALUES (gen_random_uuid(), 'wide', $1, sha256(convert_to($1, 'UTF8')), $2, \
                     now(), now(), now())",
        )
        .bind(text)
        .bind(pgvector::Vector::from(HashEmbedder::new(WIDE).embed(text)))
        .execute(&mut *tx)
        .await
        .unwrap();
        tx.commit().await.unwrap();
    };
    let before = index_scans(&mut conn).await;
    insert(&mut conn, 40, "A first new note about canals").await;
    let after = index_scans(&mut conn).await;
    assert!(
        after > before,
        "20 rows > 40 x 384 / 1536: the check reads the index"
    );
    insert(&mut conn, 100, "A second new note about lanterns").await;
    assert_eq!(
        index_scans(&mut conn).await,
        after,
        "21 rows <= 100 x 384 / 1536: an exact scan"
    );
    // A search (recall's function) at 22 rows under a limit of 40 scans
    // exactly, as set.
    let mut tx = conn.begin().await.unwrap();
    sqlx::query(
        "SELECT set_config('engram.all_users', 'on', true), \
                set_config('engram.exact_scan_max_rows', '40', true), \
                set_config('engram.exact_scan_ratio', '0', true)",
    )
    .execute(&mut *tx)
    .await
    .unwrap();
    let found: Vec<(uuid::Uuid, f32)> =
        sqlx::query_as("SELECT * FROM engram_nearest('wide', NULL, NULL, NULL, $1, 5)")
            .bind(pgvector::Vector::from(
                HashEmbedder::new(WIDE).embed("notes about moss"),
            ))
            .fetch_all(&mut *tx)
            .await
            .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(found.len(), 5);
    assert_eq!(
        index_scans(&mut conn).await,
        after,
        "recall keeps the limit"
    );
}

/// Keyword relevance as src/keywords.rs defines it, computed here from the
/// texts alone: BM25 over `memories` (one user's current memories), each
/// hit with its score, best first and equal scores in id order.
fn bm25(memories: &[(MemoryId, String)], query: &str) -> Vec<(MemoryId, f32)> {
    let terms = keywords::query_terms(query);
    let docs: Vec<(MemoryId, keywords::DocumentTerms)> = memories
        .iter()
        .map(|(id, text)| (*id, keywords::document_terms(text)))
        .collect();
    let tf = |doc: &keywords::DocumentTerms, term: &str| {
        doc.counts.iter().find(|(t, _)| t == term).map(|(_, n)| *n)
    };
    let corpus = Corpus {
        docs: docs.len() as u64,
        total_length: docs.iter().map(|(_, d)| u64::from(d.length)).sum(),
    };
    let df: Vec<u64> = terms
        .iter()
        .map(|t| docs.iter().filter(|(_, d)| tf(d, t).is_some()).count() as u64)
        .collect();
    let scorer = Bm25::new(corpus, &df);
    let mut hits: Vec<(MemoryId, f32)> = docs
        .iter()
        .filter_map(|(id, doc)| {
            let matches: Vec<(usize, u32)> = terms
                .iter()
                .enumerate()
                .filter_map(|(i, t)| tf(doc, t).map(|n| (i, n)))
                .collect();
            (!matches.is_empty()).then(|| (*id, scorer.score(doc.length, matches)))
        })
        .collect();
    hits.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    hits
}

/// `got` has the hits and scores of `want` (to 1e-5), best first, equal
/// scores in id order.
fn assert_same_scores(got: &[engram::store::Hit], want: &[(MemoryId, f32)], what: &str) {
    let mut by_id: Vec<(MemoryId, f32)> = got.iter().map(|h| (h.id, h.score)).collect();
    let mut expected = want.to_vec();
    by_id.sort_by_key(|h| h.0);
    expected.sort_by_key(|h| h.0);
    assert_eq!(
        by_id.iter().map(|h| h.0).collect::<Vec<_>>(),
        expected.iter().map(|h| h.0).collect::<Vec<_>>(),
        "{what}: hits {got:?}, expected {want:?}"
    );
    for ((id, score), (_, expected)) in by_id.iter().zip(&expected) {
        assert!(
            (score - expected).abs() < 1e-5,
            "{what}: {id} scored {score}, BM25 says {expected}"
        );
    }
    assert!(
        got.windows(2)
            .all(|w| w[0].score > w[1].score || (w[0].score == w[1].score && w[0].id < w[1].id)),
        "{what}: not best first, then by id: {got:?}"
    );
}

/// The first user's memories for the keyword tests: (text, agent, topic).
const KEYWORD_FIXTURE: [(&str, Option<&str>, &str); 8] = [
    (
        "Drinks green tea every morning in Lisbon",
        Some("planner"),
        "drinks",
    ),
    (
        "Prefers green tea over coffee, and tea over juice",
        None,
        "drinks",
    ),
    (
        "Booked a window seat for the flight to Oslo",
        Some("planner"),
        "travel",
    ),
    ("Her sister paints watercolours of the sea", None, "art"),
    ("Paints the kitchen green next spring", None, "home"),
    (
        "Is learning to paint with oils on weekends",
        Some("planner"),
        "art",
    ),
    ("Coffee with oat milk, never with sugar", None, "drinks"),
    (
        "Runs along the sea front in Lisbon on Sundays",
        None,
        "sport",
    ),
];
/// Another user's, sharing many words: they must change none of the first user's scores.
const OTHER_USER: [&str; 5] = [
    "Drinks green tea",
    "Tea, tea and more tea in Lisbon",
    "Flies to Oslo every week by zeppelin",
    "Paints paints paints",
    "Coffee coffee coffee",
];
const KEYWORD_QUERIES: [&str; 9] = [
    "green tea",
    "What does she paint?",
    "tea in Lisbon",
    "coffee zeppelin",                        // one term only the other user wrote
    "sea",                                    // one term
    "who is it",                              // only function words: kept
    "Lisbon Oslo paint coffee tea green sea", // many terms
    "the",                                    // a stop word every text but two holds
    "nothing here matches",                   // no term the user wrote
];

/// Stores the keyword fixture (the first user's memories, under `user`,
/// and the other user's under `other`); returns the first user's.
async fn store_keyword_fixture(
    store: &PgStore,
    user: &str,
    other: &str,
) -> Vec<(MemoryId, String)> {
    let mut stored = Vec::new();
    for (text, agent, topic) in KEYWORD_FIXTURE {
        let scope = Scope::new(user, agent, None).unwrap();
        let mut new = memory(&scope, text);
        new.metadata = json!({ "topic": topic }).as_object().cloned().unwrap();
        let InsertOutcome::Added(m) = store.insert(new, 0.95).await.unwrap() else {
            panic!("{text} was taken for a duplicate");
        };
        stored.push((m.id, text.to_owned()));
    }
    for text in OTHER_USER {
        let added = store
            .insert(memory(&whole(other), text), 0.95)
            .await
            .unwrap();
        assert!(matches!(added, InsertOutcome::Added(_)), "{text}");
    }
    stored
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyword_scores_are_bm25_over_the_users_own_memories() {
    let db = TestDatabase::create().await;
    let store = open(&db, PlanSettings::default()).await;
    let mine = store_keyword_fixture(&store, "kw", "other").await;
    let user = whole("kw");
    let at = SearchScope::unfiltered(&user);
    for query in KEYWORD_QUERIES {
        let expected = bm25(&mine, query);
        let hits = store.keyword_search(at, query, 100).await.unwrap();
        assert_same_scores(&hits, &expected, query);
        // A limit keeps the best, in the same order.
        let top = store.keyword_search(at, query, 2).await.unwrap();
        assert_eq!(top, hits[..hits.len().min(2)], "{query}");
    }
    let full = store.keyword_search(at, "green tea", 100).await.unwrap();
    assert!(full[0].score > 0.9 && full[0].score <= 1.0, "{full:?}");
    assert!(
        store.keyword_search(at, "?!", 10).await.unwrap().is_empty(),
        "a query without words finds nothing"
    );

    // A narrower scope keeps its own memories' scores: the statistics are the user's.
    let planner = Scope::new("kw", Some("planner"), None).unwrap();
    let drinks = json!({"topic": "drinks"}).as_object().cloned().unwrap();
    let drinks = MetadataFilter::parse(Some(&drinks)).unwrap();
    let in_planner = |id: &MemoryId| {
        let i = mine.iter().position(|(m, _)| m == id).unwrap();
        KEYWORD_FIXTURE[i].1 == Some("planner")
    };
    let on_drinks = |id: &MemoryId| {
        let i = mine.iter().position(|(m, _)| m == id).unwrap();
        KEYWORD_FIXTURE[i].2 == "drinks"
    };
    for query in KEYWORD_QUERIES {
        let expected = bm25(&mine, query);
        let narrowed = SearchScope::unfiltered(&planner);
        let want: Vec<(MemoryId, f32)> = expected
            .iter()
            .copied()
            .filter(|(id, _)| in_planner(id))
            .collect();
        let hits = store.keyword_search(narrowed, query, 100).await.unwrap();
        assert_same_scores(&hits, &want, &format!("{query} (agent planner)"));
        let filtered = SearchScope {
            scope: &user,
            filter: &drinks,
        };
        let want: Vec<(MemoryId, f32)> = expected
            .iter()
            .copied()
            .filter(|(id, _)| on_drinks(id))
            .collect();
        let hits = store.keyword_search(filtered, query, 100).await.unwrap();
        assert_same_scores(&hits, &want, &format!("{query} (topic drinks)"));
    }

    // The other user's scores are theirs alone too.
    let theirs: Vec<(MemoryId, String)> = {
        let (memories, _) = store.recent(&whole("other"), 100).await.unwrap();
        memories.into_iter().map(|m| (m.id, m.memory)).collect()
    };
    let other = whole("other");
    let at = SearchScope::unfiltered(&other);
    for query in KEYWORD_QUERIES {
        let hits = store.keyword_search(at, query, 100).await.unwrap();
        assert_same_scores(&hits, &bm25(&theirs, query), &format!("{query} (other)"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn score_gives_both_relevances_of_the_users_current_memories_only() {
    let db = TestDatabase::create().await;
    let store = open(&db, PlanSettings::default()).await;
    let mine = store_keyword_fixture(&store, "kw", "other").await;
    let (theirs, _) = store.recent(&whole("other"), 1).await.unwrap();
    let embedder = HashEmbedder::new(DIMS);
    let query = "green tea in Lisbon";
    let vector = embedder.embed(query);
    // Three of the user's memories (one without a query term), another
    // user's, and an unknown id.
    let asked = [
        mine[0].0,
        mine[2].0,
        mine[7].0,
        theirs[0].id,
        MemoryId::new(),
    ];
    let mut scored = store.score("kw", &asked, &vector, query).await.unwrap();
    scored.sort_by_key(|s| s.id);
    let mut want_ids = vec![mine[0].0, mine[2].0, mine[7].0];
    want_ids.sort();
    assert_eq!(scored.iter().map(|s| s.id).collect::<Vec<_>>(), want_ids);
    // Keyword relevance: BM25 with the statistics of all the user's memories.
    let expected = bm25(&mine, query);
    let user = whole("kw");
    let searched = store
        .keyword_search(SearchScope::unfiltered(&user), query, 100)
        .await
        .unwrap();
    for s in &scored {
        let want = expected
            .iter()
            .find(|(id, _)| *id == s.id)
            .map_or(0.0, |(_, score)| *score);
        assert!((s.keyword - want).abs() < 1e-5, "{s:?}: BM25 says {want}");
        let found = searched
            .iter()
            .find(|h| h.id == s.id)
            .map_or(0.0, |h| h.score);
        assert_eq!(s.keyword, found, "score and keyword_search agree exactly");
        // Similarity: the cosine of the two vectors.
        let text = &mine.iter().find(|(id, _)| *id == s.id).unwrap().1;
        let v = embedder.embed(text);
        let dot: f32 = v.iter().zip(&vector).map(|(a, b)| a * b).sum();
        let norms = v.iter().map(|a| a * a).sum::<f32>().sqrt()
            * vector.iter().map(|a| a * a).sum::<f32>().sqrt();
        assert!((s.similarity - dot / norms).abs() < 1e-4, "{s:?}");
    }
    let no_term = scored.iter().find(|s| s.id == mine[2].0).unwrap();
    assert_eq!(no_term.keyword, 0.0, "{no_term:?}");
    assert!(scored.iter().any(|s| s.keyword > 0.5), "{scored:?}");

    // A closed memory is not current: skipped. No ids, no rows.
    assert!(store.close("kw", mine[0].0, "user").await.unwrap());
    let after = store.score("kw", &asked, &vector, query).await.unwrap();
    assert_eq!(after.len(), 2, "{after:?}");
    assert!(
        store
            .score("kw", &[], &vector, query)
            .await
            .unwrap()
            .is_empty()
    );
    // A query without words: similarity only.
    let plain = store.score("kw", &asked, &vector, "?!").await.unwrap();
    assert_eq!(plain.len(), 2);
    assert!(plain.iter().all(|s| s.keyword == 0.0), "{plain:?}");
}

/// The words the many-memory keyword tests build sentences from: the same
/// words at the same lengths, so many scores tie.
const WHO: [&str; 4] = ["My sister", "My brother", "Our team", "Ana"];
const VERBS: [&str; 5] = ["likes", "avoids", "orders", "collects", "paints"];
const THINGS: [&str; 5] = [
    "green tea",
    "espresso",
    "sushi",
    "jazz records",
    "tea and tea cakes",
];
const PLACES: [&str; 4] = ["in Lisbon", "in Oslo", "at home", "in Lisbon or Oslo"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyword_search_keeps_exactly_the_best_k_of_many() {
    // Enough memories that a limit leaves most matches out, with many equal
    // scores (the same words at the same length), so the best k is decided
    // by rare terms, bounds and ids as well as by the scores.
    let db = TestDatabase::create().await;
    let store = open(&db, PlanSettings::default()).await;
    let (who, verbs, things, places) = (WHO, VERBS, THINGS, PLACES);
    let user = whole("many");
    let mut mine = Vec::new();
    for (i, w) in who.iter().enumerate() {
        for (j, v) in verbs.iter().enumerate() {
            for (k, t) in things.iter().enumerate() {
                let place = places[(i + j + k) % places.len()];
                let text = format!("{w} {v} {t} {place}");
                let scope = Scope::new("many", (k % 2 == 0).then_some("planner"), None).unwrap();
                let InsertOutcome::Added(m) =
                    store.insert(memory(&scope, &text), 0.99).await.unwrap()
                else {
                    panic!("{text} was taken for a duplicate");
                };
                mine.push((m.id, text));
            }
        }
    }
    let none = MetadataFilter::default();
    let planner = Scope::new("many", Some("planner"), None).unwrap();
    let in_planner: Vec<MemoryId> = {
        let (rows, _) = store.recent(&planner, 1000).await.unwrap();
        rows.into_iter().map(|m| m.id).collect()
    };
    let queries = [
        "tea",
        "green tea",
        "sushi Lisbon",
        "sister likes espresso",
        "brother orders tea cakes in Oslo",
        "team collects jazz records at home",
        "Ana paints",
        "likes avoids orders collects paints",
        "espresso sushi jazz Lisbon Oslo home",
        "tea tea cakes Lisbon",
    ];
    for query in queries {
        let expected = bm25(&mine, query);
        for limit in [1, 3, 7, 20, 60] {
            for (scope, keep) in [(&user, None), (&planner, Some(&in_planner))] {
                let at = SearchScope {
                    scope,
                    filter: &none,
                };
                let hits = store.keyword_search(at, query, limit).await.unwrap();
                let want: Vec<(MemoryId, f32)> = expected
                    .iter()
                    .copied()
                    .filter(|(id, _)| keep.is_none_or(|ids| ids.contains(id)))
                    .take(limit)
                    .collect();
                let what = format!("{query} (limit {limit}, {scope:?})");
                assert_same_scores(&hits, &want, &what);
                assert_eq!(
                    hits.iter().map(|h| h.id).collect::<Vec<_>>(),
                    want.iter().map(|h| h.0).collect::<Vec<_>>(),
                    "{what}"
                );
            }
        }
    }
}

/// Inserts memories as the store would (keyword length, postings), many per
/// statement: `(text, agent, metadata)` for `user`. Near-duplicates are let
/// through; only the same text twice would be refused.
async fn bulk_insert(
    pool: &PgPool,
    user: &str,
    rows: &[(String, Option<&str>, serde_json::Value)],
) {
    let embedder = HashEmbedder::new(DIMS);
    let (mut ids, mut agents, mut texts, mut vectors, mut metadata, mut lengths) =
        (vec![], vec![], vec![], vec![], vec![], vec![]);
    let (mut posting_ids, mut terms, mut counts) = (vec![], vec![], vec![]);
    for (text, agent, meta) in rows {
        let id = uuid::Uuid::now_v7();
        let doc = keywords::document_terms(text);
        for (term, tf) in doc.counts {
            posting_ids.push(id);
            terms.push(term);
            counts.push(tf as i32);
        }
        ids.push(id);
        agents.push(agent.map(str::to_owned));
        texts.push(text.clone());
        vectors.push(pgvector::Vector::from(embedder.embed(text)));
        metadata.push(meta.clone());
        lengths.push(doc.length as i32);
    }
    let mut tx = pool.begin().await.unwrap();
    sqlx::query("SELECT set_config('engram.dedup_threshold', '2', true)")
        .execute(&mut *tx)
        .await
        .unwrap();
    sqlx::query(
        "WITH m AS ( \
             INSERT INTO memories (id, user_id, agent_id, content, content_hash, embedding, \
                 metadata, created_at, updated_at, valid_from, keyword_length) \
             SELECT id, $1, agent_id, content, sha256(convert_to(content, 'UTF8')), embedding, \
                    metadata, now(), now(), now(), keyword_length \
             FROM unnest($2::uuid[], $3::text[], $4::text[], $5::vector[], $6::jsonb[], \
                         $7::integer[]) AS r (id, agent_id, content, embedding, metadata, \
                                              keyword_length) \
             RETURNING id, keyword_length) \
         INSERT INTO keyword_postings (user_id, term, memory_id, tf, length) \
         SELECT $1, p.term, m.id, p.tf, m.keyword_length \
         FROM unnest($8::uuid[], $9::text[], $10::integer[]) AS p (memory_id, term, tf) \
              JOIN m ON m.id = p.memory_id",
    )
    .bind(user)
    .bind(&ids)
    .bind(&agents)
    .bind(&texts)
    .bind(&vectors)
    .bind(&metadata)
    .bind(&lengths)
    .bind(&posting_ids)
    .bind(&terms)
    .bind(&counts)
    .execute(&mut *tx)
    .await
    .unwrap();
    tx.commit().await.unwrap();
}

/// Whether a memory is in the scope a case searches.
type InScope = dyn Fn(&engram::model::Memory) -> bool;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyword_search_narrows_small_and_large_scopes_alike() {
    // More memories in some scopes than the search reads up front (1,000):
    // those are checked on the ranked memories instead. Both ways, the
    // scores are the user's and only memories in scope come back.
    let db = TestDatabase::create().await;
    let store = open(&db, PlanSettings::default()).await;
    let (who, verbs, things, places) = (WHO, VERBS, THINGS, PLACES);
    let mut rows = Vec::new();
    for n in 0..3 {
        for w in who {
            for v in verbs {
                for t in things {
                    for p in places {
                        let i = rows.len();
                        let agent = if i % 25 == 0 { "rare" } else { "common" };
                        let meta = json!({"kind": "note", "half": i % 2 == 0});
                        rows.push((format!("{w} {v} {t} {p} (note {n})"), Some(agent), meta));
                    }
                }
            }
        }
    }
    assert_eq!(rows.len(), 1200);
    let pool = db.pool().await;
    bulk_insert(&pool, "wide", &rows).await;
    assert_index_is_exact(&pool, "after a bulk insert").await;
    let (all, total) = store.recent(&whole("wide"), 2000).await.unwrap();
    assert_eq!(total, 1200);
    let by_id: std::collections::HashMap<MemoryId, &engram::model::Memory> =
        all.iter().map(|m| (m.id, m)).collect();
    let mine: Vec<(MemoryId, String)> = all.iter().map(|m| (m.id, m.memory.clone())).collect();
    let filter = |pairs: serde_json::Value| {
        let pairs = pairs.as_object().cloned().unwrap();
        MetadataFilter::parse(Some(&pairs)).unwrap()
    };
    let common = Scope::new("wide", Some("common"), None).unwrap();
    let rare = Scope::new("wide", Some("rare"), None).unwrap();
    let user = whole("wide");
    let (none, note, half) = (
        MetadataFilter::default(),
        filter(json!({"kind": "note"})),
        filter(json!({"half": true})),
    );
    let cases: [(&Scope, &MetadataFilter, &InScope); 5] = [
        (&common, &none, &|m| m.scope.agent_id() == Some("common")),
        (&rare, &none, &|m| m.scope.agent_id() == Some("rare")),
        (&user, &note, &|_| true),
        (&user, &half, &|m| m.metadata["half"] == json!(true)),
        (&rare, &half, &|m| {
            m.scope.agent_id() == Some("rare") && m.metadata["half"] == json!(true)
        }),
    ];
    for query in ["tea", "sister orders sushi in Oslo", "jazz Lisbon home"] {
        let expected = bm25(&mine, query);
        for (scope, filter, keep) in &cases {
            for limit in [1, 10, 50] {
                let at = SearchScope { scope, filter };
                let hits = store.keyword_search(at, query, limit).await.unwrap();
                let want: Vec<(MemoryId, f32)> = expected
                    .iter()
                    .copied()
                    .filter(|(id, _)| keep(by_id[id]))
                    .take(limit)
                    .collect();
                let what = format!("{query} (limit {limit}, {scope:?}, {filter:?})");
                assert_same_scores(&hits, &want, &what);
                assert_eq!(
                    hits.iter().map(|h| h.id).collect::<Vec<_>>(),
                    want.iter().map(|h| h.0).collect::<Vec<_>>(),
                    "{what}"
                );
            }
        }
    }
}

/// Checks the keyword index against a recount from the memories
/// themselves: the postings of every current memory are exactly its
/// terms, its keyword_length its length, each user's row in memory_users
/// has their current memories' count and total length, and keyword_terms
/// each term's document frequency for the users whose counts are kept.
async fn assert_index_is_exact(pool: &PgPool, what: &str) {
    let current: Vec<(uuid::Uuid, String, String, i32)> = sqlx::query_as(
        "SELECT id, user_id, content, keyword_length FROM memories WHERE valid_to IS NULL",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    let mut expected_postings = Vec::new();
    let mut expected_users: std::collections::BTreeMap<String, (i64, i64)> = Default::default();
    for (id, user, content, length) in &current {
        let terms = keywords::document_terms(content);
        assert_eq!(
            *length as u32, terms.length,
            "{what}: keyword_length of {content:?}"
        );
        for (term, tf) in &terms.counts {
            expected_postings.push((user.clone(), term.clone(), *id, *tf as i32, *length));
        }
        let entry = expected_users.entry(user.clone()).or_default();
        entry.0 += 1;
        entry.1 += i64::from(*length);
    }
    expected_postings.sort();
    let postings: Vec<(String, String, uuid::Uuid, i32, i32)> = sqlx::query_as(
        "SELECT user_id, term, memory_id, tf, length FROM keyword_postings \
         ORDER BY user_id, term, memory_id",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    let mut postings = postings;
    postings.sort();
    assert_eq!(postings, expected_postings, "{what}: postings");
    let users: Vec<(String, i64, i64)> =
        sqlx::query_as("SELECT user_id, current, keyword_length FROM memory_users ORDER BY 1")
            .fetch_all(pool)
            .await
            .unwrap();
    let expected_users: Vec<(String, i64, i64)> = expected_users
        .into_iter()
        .map(|(user, (n, total))| (user, n, total))
        .collect();
    assert_eq!(users, expected_users, "{what}: memory_users");

    // keyword_terms: for each user whose counts are kept, each term's
    // document frequency exactly, and bounds that hold every posting's tf
    // and length; for every other user, nothing.
    let recount: Vec<(String, String, i32, i32, i32)> = sqlx::query_as(
        "SELECT p.user_id, p.term, count(*)::integer, max(p.tf), min(p.length) \
         FROM keyword_postings p JOIN memory_users u ON u.user_id = p.user_id \
         WHERE u.keeps_term_counts GROUP BY p.user_id, p.term ORDER BY 1, 2",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    let terms: Vec<(String, String, i32, i32, i32)> = sqlx::query_as(
        "SELECT user_id, term, docs, max_tf, min_length FROM keyword_terms ORDER BY 1, 2",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    let docs = |rows: &[(String, String, i32, i32, i32)]| -> Vec<(String, String, i32)> {
        rows.iter()
            .map(|(user, term, docs, ..)| (user.clone(), term.clone(), *docs))
            .collect()
    };
    assert_eq!(docs(&terms), docs(&recount), "{what}: keyword_terms.docs");
    for (stored, actual) in terms.iter().zip(&recount) {
        assert!(
            stored.3 >= actual.3 && stored.4 <= actual.4,
            "{what}: keyword_terms bounds {stored:?} do not hold {actual:?}"
        );
    }
}

/// The users whose document frequencies are kept (not counted at search).
async fn users_keeping_term_counts(pool: &PgPool) -> Vec<String> {
    sqlx::query_scalar("SELECT user_id FROM memory_users WHERE keeps_term_counts ORDER BY 1")
        .fetch_all(pool)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postings_and_lengths_follow_every_write() {
    let db = TestDatabase::create().await;
    let store = open(&db, PlanSettings::default()).await;
    let pool = &db.pool().await;
    let mine = store_keyword_fixture(&store, "kw", "other").await;
    assert_index_is_exact(pool, "after inserts").await;

    let new = memory(
        &whole("kw"),
        "Now drinks rooibos tea in the evening, tea only",
    );
    let outcome = store.supersede(mine[0].0, new).await.unwrap();
    assert!(
        matches!(outcome, SupersedeOutcome::Superseded(_)),
        "{outcome:?}"
    );
    assert_index_is_exact(pool, "after a supersede").await;

    let text = "Coffee, coffee and oat milk every single day";
    let embedding = HashEmbedder::new(DIMS).embed(text);
    let updated = store
        .update("kw", mine[6].0, text, &embedding, "user")
        .await;
    assert!(updated.unwrap().is_some());
    assert_index_is_exact(pool, "after an update").await;
    // The same text again: its postings are rewritten, not doubled.
    let again = store
        .update("kw", mine[6].0, text, &embedding, "user")
        .await;
    assert!(again.unwrap().is_some());
    assert_index_is_exact(pool, "after an update to the same text").await;
    // An update refused (another memory holds the text) changes nothing.
    let refused = store
        .update("kw", mine[1].0, text, &embedding, "user")
        .await
        .unwrap_err();
    assert!(matches!(refused, StoreError::Conflict(_)), "{refused}");
    // An update of a closed memory changes nothing either.
    let closed = store
        .update("kw", mine[0].0, "Whatever", &embedding, "user")
        .await;
    assert!(closed.unwrap().is_none());
    assert_index_is_exact(pool, "after refused updates").await;

    assert!(store.close("kw", mine[3].0, "user").await.unwrap());
    assert_index_is_exact(pool, "after a close").await;
    assert!(store.delete("kw", mine[4].0, None).await.unwrap());
    assert_index_is_exact(pool, "after a delete").await;
    // A closed memory deleted: its postings were gone already.
    assert!(store.delete("kw", mine[3].0, None).await.unwrap());
    assert_index_is_exact(pool, "after deleting a closed memory").await;

    // Scores still follow BM25 over what is current.
    let (current, _) = store.recent(&whole("kw"), 100).await.unwrap();
    let current: Vec<(MemoryId, String)> = current.into_iter().map(|m| (m.id, m.memory)).collect();
    let user = whole("kw");
    let at = SearchScope::unfiltered(&user);
    for query in KEYWORD_QUERIES {
        let hits = store.keyword_search(at, query, 100).await.unwrap();
        assert_same_scores(
            &hits,
            &bm25(&current, query),
            &format!("{query} (after writes)"),
        );
    }

    assert_eq!(store.delete_user("other", None).await.unwrap(), 5);
    assert_index_is_exact(pool, "after forgetting a user").await;
    let left: i64 =
        sqlx::query_scalar("SELECT count(*) FROM keyword_postings WHERE user_id = 'other'")
            .fetch_one(pool)
            .await
            .unwrap();
    assert_eq!(left, 0);
    // Closing every memory of a user leaves nothing of theirs.
    for (id, _) in &current {
        assert!(store.close("kw", *id, "user").await.unwrap());
    }
    assert_index_is_exact(pool, "after closing everything").await;
    let users: i64 = sqlx::query_scalar("SELECT count(*) FROM memory_users")
        .fetch_one(pool)
        .await
        .unwrap();
    assert_eq!(users, 0);
}

/// Writers of one user at once (adds, updates, supersedes, closes, deletes
/// of overlapping words): every one finishes (none dies in a deadlock
/// between the user's lock, a memory's row and the shared statistics) and
/// the statistics come out exactly as a recount gives them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writers_of_one_user_keep_the_statistics_exact() {
    let db = TestDatabase::create().await;
    // The user's counts start to be kept in the middle of the writes below
    // (24 memories, then 24 writers that remove 12 and add 24).
    db.set_default("engram.term_counts_from", "30").await;
    let store = Arc::new(open(&db, PlanSettings::default()).await);
    let user = whole("busy");
    let words = [
        "tea", "coffee", "garden", "piano", "river", "bread", "chess",
    ];
    let text = |i: usize, round: usize| {
        format!(
            "{} and {} then {} note {i} round {round}",
            words[i % 7],
            words[(i + round) % 7],
            words[(i * 3 + 1) % 7]
        )
    };
    let mut seeded = Vec::new();
    for i in 0..24 {
        let outcome = store.insert(memory(&user, &text(i, 0)), 2.0).await.unwrap();
        let InsertOutcome::Added(m) = outcome else {
            panic!("{outcome:?}")
        };
        seeded.push(m.id);
    }
    let mut tasks = tokio::task::JoinSet::new();
    for (i, id) in seeded.iter().copied().enumerate() {
        let store = Arc::clone(&store);
        let user = user.clone();
        let (first, second) = (text(i, 1), text(i + 24, 2));
        tasks.spawn(async move {
            let embed = |t: &str| HashEmbedder::new(DIMS).embed(t);
            match i % 4 {
                0 => {
                    store
                        .update("busy", id, &first, &embed(&first), "user")
                        .await?;
                }
                1 => {
                    store.supersede(id, memory(&user, &first)).await?;
                }
                2 => {
                    store.close("busy", id, "user").await?;
                }
                _ => {
                    store.delete("busy", id, None).await?;
                }
            }
            store.insert(memory(&user, &second), 2.0).await?;
            Ok::<_, StoreError>(())
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.unwrap().unwrap();
    }
    let pool = db.pool().await;
    assert_index_is_exact(&pool, "after concurrent writers").await;
    assert_eq!(users_keeping_term_counts(&pool).await, ["busy"]);
}

/// The keyword search results of every fixture query, for comparing stores.
async fn keyword_results(store: &PgStore, user: &str) -> Vec<Vec<engram::store::Hit>> {
    let scope = whole(user);
    let at = SearchScope::unfiltered(&scope);
    let mut all = Vec::new();
    for query in KEYWORD_QUERIES {
        all.push(store.keyword_search(at, query, 100).await.unwrap());
    }
    all
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_without_this_builds_postings_gets_them_at_open() {
    // A database at the schema before keyword postings, with memories
    // written then (the old triggers ran), upgraded by opening it.
    let db = TestDatabase::create().await;
    let pool = owner_pool_at_schema(&db, 20261220000001).await;
    let mut mine = Vec::new();
    for (text, ..) in KEYWORD_FIXTURE {
        raw_insert(&pool, "kw", text).await.unwrap();
        let id: uuid::Uuid = sqlx::query_scalar("SELECT id FROM memories WHERE content = $1")
            .bind(text)
            .fetch_one(&pool)
            .await
            .unwrap();
        mine.push((MemoryId(id), text.to_owned()));
    }
    for text in OTHER_USER {
        raw_insert(&pool, "other", text).await.unwrap();
    }

    // Two processes open it at once: one rebuilds, the other waits for it.
    let (a, b) = tokio::join!(
        open(&db, PlanSettings::default()),
        open(&db, PlanSettings::default())
    );
    assert_index_is_exact(&pool, "after the upgrade").await;
    let marker: String =
        sqlx::query_scalar("SELECT value FROM store_info WHERE key = 'keyword_index'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(marker, "bm25-v1");
    let upgraded = keyword_results(&a, "kw").await;
    for (query, hits) in KEYWORD_QUERIES.iter().zip(&upgraded) {
        assert_same_scores(hits, &bm25(&mine, query), &format!("{query} (upgraded)"));
    }
    assert_eq!(keyword_results(&b, "kw").await, upgraded);
    drop((a, b));

    // The marker and the postings gone (and the sums wrong): the next open
    // rebuilds them, and every score comes back the same.
    sqlx::raw_sql(
        "DELETE FROM store_info WHERE key = 'keyword_index'; \
         DELETE FROM keyword_postings; \
         UPDATE memory_users SET keyword_length = 7",
    )
    .execute(&pool)
    .await
    .unwrap();
    let before = open(&db, PlanSettings::default()).await;
    assert_eq!(keyword_results(&before, "kw").await, upgraded);
    assert_index_is_exact(&pool, "after the rebuild").await;
    // Marked: the next open leaves the postings alone.
    sqlx::query("DELETE FROM keyword_postings WHERE user_id = 'other'")
        .execute(&pool)
        .await
        .unwrap();
    open(&db, PlanSettings::default()).await;
    let left: i64 =
        sqlx::query_scalar("SELECT count(*) FROM keyword_postings WHERE user_id = 'other'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(left, 0);
    pool.close().await;
}

/// A pool on `db` as its owner, with the migrations applied up to and
/// including `version` (a store an earlier build left).
async fn owner_pool_at_schema(db: &TestDatabase, version: i64) -> PgPool {
    let pool = PgPool::connect(&db.owner_url).await.unwrap();
    sqlx::migrate!("./migrations/postgres")
        .run_to(version, &pool)
        .await
        .unwrap();
    pool
}

/// A memory of `user`'s and its keyword postings, inserted by hand as a
/// build of an earlier schema wrote them (the triggers of the schema the
/// database is at run).
async fn insert_with_postings(pool: &PgPool, user: &str, agent: Option<&str>, text: &str) {
    let doc = keywords::document_terms(text);
    let embedding = pgvector::Vector::from(HashEmbedder::new(DIMS).embed(text));
    // As the user, where the schema has row-level security.
    let mut tx = pool.begin().await.unwrap();
    sqlx::query("SELECT set_config('engram.user_id', $1, true)")
        .bind(user)
        .execute(&mut *tx)
        .await
        .unwrap();
    sqlx::query(
        "WITH m AS (INSERT INTO memories (id, user_id, agent_id, content, content_hash, \
                        embedding, created_at, updated_at, valid_from, keyword_length) \
                    VALUES ($1, $2, $3, $4, sha256(convert_to($4, 'UTF8')), $5, now(), \
                            now(), now(), $6) RETURNING id, keyword_length) \
         INSERT INTO keyword_postings (user_id, term, memory_id, tf, length) \
         SELECT $2, t.term, m.id, t.tf, m.keyword_length \
         FROM m, unnest($7::text[], $8::integer[]) AS t (term, tf)",
    )
    .bind(uuid::Uuid::now_v7())
    .bind(user)
    .bind(agent)
    .bind(text)
    .bind(embedding)
    .bind(doc.length as i32)
    .bind(
        doc.counts
            .iter()
            .map(|(t, _)| t.clone())
            .collect::<Vec<_>>(),
    )
    .bind(
        doc.counts
            .iter()
            .map(|&(_, n)| n as i32)
            .collect::<Vec<_>>(),
    )
    .execute(&mut *tx)
    .await
    .unwrap();
    tx.commit().await.unwrap();
}

/// Every fixture query's answer from the SQL keyword functions alone (no
/// copy): `engram_keyword_search`'s best `k`, and `engram_keyword_scores` of
/// every current memory of the user's, as (id, score) lists.
async fn sql_keyword_answers(
    pool: &PgPool,
    user: &str,
    k: i32,
) -> Vec<(Vec<(uuid::Uuid, f32)>, Vec<(uuid::Uuid, f32)>)> {
    let mut conn = pool.acquire().await.unwrap();
    sqlx::query("SET engram.all_users = 'on'")
        .execute(&mut *conn)
        .await
        .unwrap();
    let ids: Vec<uuid::Uuid> =
        sqlx::query_scalar("SELECT id FROM memories WHERE user_id = $1 AND valid_to IS NULL")
            .bind(user)
            .fetch_all(&mut *conn)
            .await
            .unwrap();
    let mut answers = Vec::new();
    for query in KEYWORD_QUERIES {
        let terms = keywords::query_terms(query);
        let hits: Vec<(uuid::Uuid, f32)> = sqlx::query_as(
            "SELECT id, score FROM engram_keyword_search($1, NULL, NULL, NULL, $2, $3)",
        )
        .bind(user)
        .bind(&terms)
        .bind(k)
        .fetch_all(&mut *conn)
        .await
        .unwrap();
        let scores: Vec<(uuid::Uuid, f32)> =
            sqlx::query_as("SELECT id, score FROM engram_keyword_scores($1, $2, $3) ORDER BY id")
                .bind(user)
                .bind(&terms)
                .bind(&ids)
                .fetch_all(&mut *conn)
                .await
                .unwrap();
        answers.push((hits, scores));
    }
    answers
}

/// The users with rows in keyword_terms, read on `conn`.
async fn users_with_stored_counts(conn: &mut sqlx::PgConnection) -> Vec<String> {
    sqlx::query_scalar("SELECT DISTINCT user_id FROM keyword_terms ORDER BY 1")
        .fetch_all(conn)
        .await
        .unwrap()
}

/// A store whose document frequencies were all kept in `keyword_terms`
/// (the schema before 20280701000001) keeps only those of users with many
/// memories after its migration: a small user's rows are gone, and the SQL
/// keyword functions answer as they did from the stored counts, after a
/// deletion that left the stored bounds wider than the postings.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stored_term_counts_of_small_users_give_way_to_counts_at_search() {
    let db = TestDatabase::create().await;
    let pool = owner_pool_at_schema(&db, 20280601000001).await;
    for (text, agent, _) in KEYWORD_FIXTURE {
        insert_with_postings(&pool, "kw", agent, text).await;
    }
    for text in OTHER_USER {
        insert_with_postings(&pool, "other", None, text).await;
    }
    // Past row-level security, as the operator.
    let mut admin = pool.acquire().await.unwrap();
    sqlx::query("SET engram.all_users = 'on'")
        .execute(&mut *admin)
        .await
        .unwrap();
    // "Paints paints paints" held the other user's largest tf of "paint":
    // its stored bound stays that wide after it goes.
    let deleted = sqlx::query("DELETE FROM memories WHERE content = 'Paints paints paints'")
        .execute(&mut *admin)
        .await
        .unwrap();
    assert_eq!(deleted.rows_affected(), 1);
    assert_eq!(users_with_stored_counts(&mut admin).await, ["kw", "other"]);
    let before = [
        sql_keyword_answers(&pool, "kw", 3).await,
        sql_keyword_answers(&pool, "other", 3).await,
    ];
    assert!(
        before[0].iter().any(|(hits, _)| hits.len() == 3),
        "some query finds the search's k: {before:?}"
    );

    // Migrated as engram migrates, by opening the store (its setup
    // connection acts for all users: the tables' row-level security binds
    // their owner too); its keyword index marked current, so opening
    // rebuilds no postings.
    sqlx::query(
        "INSERT INTO store_info (key, value) VALUES ('keyword_index', $1) \
         ON CONFLICT (key) DO UPDATE SET value = excluded.value",
    )
    .bind(keywords::INDEX_VERSION)
    .execute(&mut *admin)
    .await
    .unwrap();
    drop(open(&db, PlanSettings::default()).await);
    assert!(
        users_with_stored_counts(&mut admin).await.is_empty(),
        "two users of a few memories keep no counts"
    );
    let after = [
        sql_keyword_answers(&pool, "kw", 3).await,
        sql_keyword_answers(&pool, "other", 3).await,
    ];
    assert_eq!(after, before);

    // A write after the migration is counted by the next search.
    insert_with_postings(&pool, "kw", None, "Green tea again, green tea always").await;
    let grown = sql_keyword_answers(&pool, "kw", 3).await;
    assert_ne!(
        grown[0],
        after[0][0].clone(),
        "\"green tea\" sees the new memory"
    );
    drop(admin);
    pool.close().await;
}

/// The keyword search and scores are the same whether a user's document
/// frequencies are kept by their writes or counted at search: the same
/// memories, written into a store that keeps every user's counts and into
/// one that keeps none, score alike (compared by text: ids differ).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kept_and_counted_term_frequencies_score_alike() {
    let mut answers = Vec::new();
    for from in ["1", "1000000"] {
        let db = TestDatabase::create().await;
        db.set_default("engram.term_counts_from", from).await;
        let store = open(&db, PlanSettings::default()).await;
        let mine = store_keyword_fixture(&store, "kw", "other").await;
        // A memory changed and one deleted: counts moved both ways.
        let text = "Coffee, coffee and oat milk every single day";
        let embedding = HashEmbedder::new(DIMS).embed(text);
        assert!(
            store
                .update("kw", mine[6].0, text, &embedding, "user")
                .await
                .unwrap()
                .is_some()
        );
        store.delete("kw", mine[1].0, None).await.unwrap();
        let pool = db.pool().await;
        assert_index_is_exact(&pool, &format!("counts kept from {from}")).await;
        let keeping = users_keeping_term_counts(&pool).await;
        if from == "1" {
            assert_eq!(keeping, ["kw", "other"]);
        } else {
            assert!(keeping.is_empty(), "{keeping:?}");
        }
        let texts: std::collections::HashMap<uuid::Uuid, String> =
            sqlx::query_as("SELECT id, content FROM memories")
                .fetch_all(&pool)
                .await
                .unwrap()
                .into_iter()
                .collect();
        let by_text = |list: &[(uuid::Uuid, f32)]| -> Vec<(String, f32)> {
            let mut named: Vec<(String, f32)> = list
                .iter()
                .map(|(id, score)| (texts[id].clone(), *score))
                .collect();
            named.sort_by(|a, b| a.0.cmp(&b.0));
            named
        };
        let mut mode = Vec::new();
        for user in ["kw", "other"] {
            for (hits, scores) in sql_keyword_answers(&pool, user, 100).await {
                mode.push((by_text(&hits), by_text(&scores)));
            }
        }
        answers.push(mode);
        pool.close().await;
    }
    assert!(answers[0].iter().any(|(hits, _)| !hits.is_empty()));
    assert_eq!(answers[0], answers[1]);
}

/// A store written by the build before keyword_terms opens at this schema
/// (through keyword_terms and back to counts at search) without a keyword
/// rebuild, and searches score as before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postings_written_before_keyword_terms_open_without_a_rebuild() {
    let db = TestDatabase::create().await;
    let pool = owner_pool_at_schema(&db, 20261230000001).await;
    // The postings that build wrote, by hand.
    for (text, agent, _) in KEYWORD_FIXTURE {
        insert_with_postings(&pool, "kw", agent, text).await;
    }
    sqlx::query("INSERT INTO store_info (key, value) VALUES ('keyword_index', $1)")
        .bind(keywords::INDEX_VERSION)
        .execute(&pool)
        .await
        .unwrap();
    let store = open(&db, PlanSettings::default()).await;
    assert_index_is_exact(&pool, "after the migration").await;
    let planner = Scope::new("kw", Some("planner"), None).unwrap();
    let at = SearchScope::unfiltered(&planner);
    let hits = store.keyword_search(at, "tea", 10).await.unwrap();
    let planned = KEYWORD_FIXTURE
        .iter()
        .filter(|(text, agent, _)| {
            *agent == Some("planner")
                && keywords::document_terms(text)
                    .counts
                    .iter()
                    .any(|(term, _)| term == "tea")
        })
        .count();
    assert!(planned > 0, "the fixture has planner memories about tea");
    assert_eq!(hits.len(), planned, "{hits:?}");
    pool.close().await;
}

fn pg_env(db: &TestDatabase) -> Vec<(&'static str, String)> {
    vec![
        ("ENGRAM_DATABASE_URL", db.app_url.clone()),
        ("ENGRAM_DATABASE_OWNER_URL", db.owner_url.clone()),
        ("ENGRAM_DEFAULT_USER", "zoe".to_owned()),
    ]
}

async fn serve(db: &TestDatabase, extra: &[(&'static str, &str)]) -> Client {
    let mut env = pg_env(db);
    env.extend(extra.iter().map(|(k, v)| (*k, v.to_string())));
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    // connect_with's SQLite path is overridden by ENGRAM_DATABASE_URL.
    connect_with(std::path::Path::new("/nonexistent/unused.db"), &env).await
}

/// The binary over MCP stdio: sixteen remembers of one user in flight at
/// once on the one pipe (eight facts, each twice), as an agent framework's
/// parallel tool calls send them. Those that wait for the user's write go
/// in together; each call is answered with its own fact, one memory is kept
/// per fact, and each is found again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remembers_in_flight_at_once_over_stdio_keep_one_memory_per_fact() {
    let db = TestDatabase::create().await;
    let client = serve(&db, &[]).await;
    let facts = [
        "Keeps bees in the garden behind the house",
        "Sings baritone in a Tuesday choir",
        "Is allergic to hazelnuts and almonds",
        "Drives an old green camper van",
        "Collects vinyl records from the seventies",
        "Grew up on a farm near Porto",
        "Runs a marathon every spring",
        "Fixes vintage typewriters as a hobby",
    ];
    let calls = facts.iter().chain(facts.iter()).map(|text| {
        ok(
            &client,
            "remember",
            json!({"text": text, "user_id": "zoe", "infer": false}),
        )
    });
    let answers = futures::future::join_all(calls).await;
    let mut ids = vec![Vec::new(); facts.len()];
    for (i, answer) in answers.iter().enumerate() {
        let result = &answer["results"][0];
        assert_eq!(result["memory"], facts[i % facts.len()], "{answer}");
        ids[i % facts.len()].push(result["id"].as_str().expect("id").to_owned());
    }
    for both in &ids {
        assert_eq!(both[0], both[1], "both calls name the one memory: {ids:?}");
    }
    assert_eq!(total(&client, "zoe").await, facts.len() as u64);
    for text in facts {
        common::assert_best_recall(&client, "zoe", text, text).await;
    }
    client.cancel().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_engram_processes_on_one_database_behave_as_one() {
    let db = TestDatabase::create().await;
    let a = Arc::new(serve(&db, &[]).await);
    let b = Arc::new(serve(&db, &[]).await);

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
    // The two-role setup: the owner migrates, the runtime role serves.
    let app = ("ENGRAM_DATABASE_URL", db.app_url.as_str());
    let owner = ("ENGRAM_DATABASE_OWNER_URL", db.owner_url.as_str());
    let refused = run_engram(&["serve"], &[app, ("ENGRAM_AUTO_MIGRATE", "false")]);
    assert!(!refused.status.success());
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(err.contains("engram migrate"), "{err}");

    let migrated = run_engram(&["migrate"], &[app, owner]);
    let err = String::from_utf8_lossy(&migrated.stderr);
    assert!(migrated.status.success(), "{err}");
    assert!(err.contains("up to date"), "{err}");
    // Idempotent.
    assert!(run_engram(&["migrate"], &[app, owner]).status.success());

    // Servers then need no owner credentials.
    let env = [
        ("ENGRAM_DATABASE_URL", db.app_url.as_str()),
        ("ENGRAM_AUTO_MIGRATE", "false"),
        ("ENGRAM_DEFAULT_USER", "zoe"),
    ];
    let client = connect_to(&db.app_url, &env).await;
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
    if has_vectorscale(&db).await {
        eprintln!("skipped the refusal of ENGRAM_INDEX=diskann: this server has pgvectorscale");
    } else {
        let err = refused(("ENGRAM_INDEX", "diskann"));
        assert!(
            err.contains("vectorscale") && err.contains("ENGRAM_INDEX=hnsw"),
            "{err}"
        );
    }
    // The store opened with auto is HNSW on any server.
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

/// Where the store's memories live: the vector column's storage, and the
/// number of chunks in the memories table's TOAST table (none: every value
/// of every row is in the row).
async fn vector_storage(pool: &PgPool) -> (String, i64) {
    let storage: String = sqlx::query_scalar(
        "SELECT attstorage::text FROM pg_attribute \
         WHERE attrelid = 'memories'::regclass AND attname = 'embedding'",
    )
    .fetch_one(pool)
    .await
    .unwrap();
    let toast: String = sqlx::query_scalar(
        "SELECT reltoastrelid::regclass::text FROM pg_class WHERE oid = 'memories'::regclass",
    )
    .fetch_one(pool)
    .await
    .unwrap();
    let chunks: i64 =
        sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT count(*) FROM {toast}")))
            .fetch_one(pool)
            .await
            .unwrap();
    (storage, chunks)
}

/// At 1536 dimensions a vector is 6 kB, past the ~2 kB at which PostgreSQL
/// moves values out of line; exact scans then read it through the TOAST
/// index (3x slower, docs/benchmarks.md). The store keeps it, and the text
/// beside it, in the row from the first bind on and again after a re-embed,
/// which changes the column's type (and with it, in PostgreSQL, the
/// column's storage).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_vectors_stay_in_their_rows_from_the_first_bind_and_after_a_reembed() {
    let db = TestDatabase::create().await;
    let pool = db.pool().await;
    let wide = HashEmbedder::new(1536);
    let options = PgOptions {
        owner_url: Some(db.owner_url.clone()),
        ..PgOptions::default()
    };
    let store = PgStore::open(&db.app_url, wide.identity(), options.clone())
        .await
        .unwrap();
    let alice = whole("alice");
    let text = "Keeps bees on the roof of her flat";
    let outcome = store
        .insert(
            NewMemory {
                embedding: wide.embed(text),
                ..memory(&alice, text)
            },
            0.9,
        )
        .await
        .unwrap();
    assert!(matches!(outcome, InsertOutcome::Added(_)), "{outcome:?}");
    assert_eq!(vector_storage(&pool).await, ("m".into(), 0));

    let other = HashEmbedder::new(1024);
    assert_eq!(
        PgStore::reembed(&db.owner_url, &other, Default::default())
            .await
            .unwrap(),
        1
    );
    assert_eq!(vector_storage(&pool).await, ("m".into(), 0));
    // And the re-embedded store finds its memory.
    let store = PgStore::open(&db.app_url, other.identity(), options)
        .await
        .unwrap();
    let hits = store
        .vector_search(SearchScope::unfiltered(&alice), &other.embed(text), 1)
        .await
        .unwrap();
    assert_eq!(hits.len(), 1);
}

/// Whether the server can install pgvectorscale (tests that need it skip
/// without it; a test that needs it absent skips with it).
async fn has_vectorscale(db: &TestDatabase) -> bool {
    sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = 'vectorscale')",
    )
    .fetch_one(&db.pool().await)
    .await
    .unwrap()
}

/// The DiskANN index is created with the store, on no rows. pgvectorscale's
/// default layout learns its quantisation from the rows there at build time
/// and, built on none, ranked at random (recall@10 0.005); the store builds
/// it `plain`. Here: rows written after the index, searched through it,
/// against an exact scan of the same rows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_diskann_index_built_on_an_empty_store_finds_what_an_exact_scan_finds() {
    let db = TestDatabase::create().await;
    if !has_vectorscale(&db).await {
        eprintln!("skipped: this PostgreSQL server has no pgvectorscale (vectorscale extension)");
        return;
    }
    let open_with = |plan| {
        PgStore::open(
            &db.url,
            HashEmbedder::new(DIMS).identity(),
            PgOptions {
                index: IndexKind::Diskann,
                plan,
                ..PgOptions::default()
            },
        )
    };
    // Its searches through the index, not an in-process copy.
    let indexed = open_with(PlanSettings::ALWAYS_INDEX)
        .await
        .unwrap()
        .with_copy_vector_floats(0)
        .with_copy_code_bytes(0);
    assert_eq!(indexed.vector_index(), IndexKind::Diskann);
    // Whole vectors, and (as HNSW's) current memories only.
    let definition: String = sqlx::query_scalar(
        "SELECT indexdef FROM pg_indexes WHERE indexname = 'memories_embedding_diskann'",
    )
    .fetch_one(&db.pool().await)
    .await
    .unwrap();
    assert!(
        definition.contains("storage_layout=plain") && definition.contains("valid_to IS NULL"),
        "{definition}"
    );
    let exact = open_with(PlanSettings::ALWAYS_EXACT).await.unwrap();

    let words = [
        "garden", "violin", "Lisbon", "ramen", "kayak", "sister", "chess", "winter", "bakery",
        "harbour", "lantern", "tennis", "Kyoto", "pottery", "compass", "thunder",
    ];
    let text = |i: usize| {
        format!(
            "note {i}: {} with {} near {} and {}",
            words[i % 16],
            words[(i / 16) % 16],
            words[(i / 256) % 16],
            words[(i * 7 + 3) % 16]
        )
    };
    let rows: Vec<(String, Option<&str>, serde_json::Value)> =
        (0..2000).map(|i| (text(i), None, json!({}))).collect();
    bulk_insert(&db.pool().await, "dana", &rows).await;

    let dana = whole("dana");
    let at = SearchScope::unfiltered(&dana);
    let embedder = HashEmbedder::new(DIMS);
    let (mut found, mut expected) = (0, 0);
    for q in 0..30 {
        let query = embedder.embed(&format!(
            "{} {} {}",
            words[q % 16],
            words[(q * 5 + 1) % 16],
            words[(q * 3 + 2) % 16]
        ));
        let want = ids(&exact.vector_search(at, &query, 10).await.unwrap());
        let got = ids(&indexed.vector_search(at, &query, 10).await.unwrap());
        expected += want.len();
        found += got.iter().filter(|id| want.contains(id)).count();
    }
    let recall = found as f64 / expected as f64;
    assert!(recall >= 0.9, "recall@10 through DiskANN: {recall:.3}");
}

/// A request connection the server cut while it sat idle (a restart, an
/// idle timeout, a proxy) is pinged before its next use and replaced: the
/// call after the cut succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_cut_while_idle_is_replaced_before_the_next_call() {
    let db = TestDatabase::create().await;
    let store = open(&db, PlanSettings::default()).await;
    let fay = whole("fay");
    store
        .insert(memory(&fay, "I play the violin"), 0.99)
        .await
        .unwrap();
    let admin = db.pool().await;
    let cut: i64 = sqlx::query_scalar(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
         WHERE datname = current_database() AND usename = $1 AND pid <> pg_backend_pid()",
    )
    .bind(common::postgres::APP_ROLE)
    .fetch_one(&admin)
    .await
    .unwrap();
    assert!(cut >= 1, "the store holds an idle connection");
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    let version = store.version("fay").await.expect("the next call succeeds");
    assert!(version.is_some());
}

/// `store`'s recall candidates for `query` over the whole of `user`, checked
/// against the two searches' (all SQL).
pub(crate) async fn candidates_as_in_steps(
    store: &PgStore,
    user: &Scope,
    query: &str,
) -> Vec<engram::store::Scored> {
    let none = MetadataFilter::default();
    let at = SearchScope {
        scope: user,
        filter: &none,
    };
    let vector = HashEmbedder::new(DIMS).embed(query);
    common::candidates_as_in_steps(store, at, &vector, query, 8).await
}

/// Recall's keyword side from a user's in-process copy: what SQL gives, used
/// only while the copy is of the version the vectors are read at. A write by
/// another instance (or by plain SQL) makes it stale, and SQL answers (the
/// new memory found) until the copy is loaded again; a copy over the budget
/// is not kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_keyword_copy_answers_as_sql_does_and_only_while_current() {
    let db = TestDatabase::create().await;
    let a = open(&db, PlanSettings::default()).await;
    let b = open(&db, PlanSettings::default()).await;
    let user = whole("kc");
    for i in 0..40 {
        let place = ["Lisbon", "Porto", "Faro"][i % 3];
        let drink = ["espresso", "green tea", "hot chocolate", "orange juice"][i % 4];
        let text = format!("On day {i} I had {drink} in {place} with friend {}", i * 7);
        a.insert(memory(&user, &text), 0.95).await.unwrap();
    }
    let mut expiring = memory(&user, "espresso in Lisbon, long ago");
    expiring.expires_at = Some(chrono::Utc::now() - chrono::Duration::seconds(1));
    a.insert(expiring, 0.95).await.unwrap();
    let agree = |store, query| candidates_as_in_steps(store, &user, query);
    a.load_keyword_copy("kc").await.unwrap();
    assert!(a.keyword_copy_bytes() > 0);
    for query in ["espresso in Lisbon", "a hot drink with a friend", "day 21"] {
        agree(&a, query).await;
    }
    assert_eq!(a.keyword_copy_answers(), 3, "the copy answered each recall");

    // Another instance writes: a's copy is stale, SQL answers and finds it.
    let zephyr = b
        .insert(memory(&user, "a greyhound called Zephyr"), 0.95)
        .await
        .unwrap();
    let InsertOutcome::Added(zephyr) = zephyr else {
        panic!("not added")
    };
    let got = agree(&a, "Zephyr").await;
    assert!(got.iter().any(|c| c.id == zephyr.id), "{got:?}");
    assert_eq!(a.keyword_copy_answers(), 3, "a stale copy answered");

    // Loaded again, it answers, with the new memory in it.
    a.load_keyword_copy("kc").await.unwrap();
    let got = agree(&a, "Zephyr").await;
    assert!(got.iter().any(|c| c.id == zephyr.id), "{got:?}");
    assert_eq!(a.keyword_copy_answers(), 4);

    // A copy larger than the budget is not kept; SQL answers.
    let small = open(&db, PlanSettings::default())
        .await
        .with_keyword_copy_bytes(64);
    small.load_keyword_copy("kc").await.unwrap();
    assert_eq!(small.keyword_copy_bytes(), 0);
    agree(&small, "espresso in Lisbon").await;
    assert_eq!(small.keyword_copy_answers(), 0);
}

/// `memories`, added in one batch of their own through
/// [`WriteBatch::insert_all`] (a remember's way), committed.
async fn add_all(store: &PgStore, user: &Scope, texts: &[&str]) -> Vec<InsertOutcome> {
    let mut batch = store.begin(user.user_id().as_str()).await.unwrap();
    let news = texts.iter().map(|t| (memory(user, t), None)).collect();
    let outcomes = batch.insert_all(news, 0.95).await.unwrap();
    batch.commit().await.unwrap();
    outcomes
}

/// Through `store`'s copy of `user` (floats or codes): two new memories in
/// one batch are both claimed, the copy moves on and recall through it
/// finds them; a near-duplicate of one gets no claim and is refused. The
/// claims counted after.
async fn claims_two_adds_and_refuses_a_near_duplicate(store: &PgStore, user: &Scope) -> u64 {
    let (claims, advances) = (store.copy_claims(), store.copy_advances());
    let outcomes = add_all(
        store,
        user,
        &["My cat is called Pixel", "I cycle to work on Mondays"],
    )
    .await;
    assert!(
        outcomes
            .iter()
            .all(|o| matches!(o, InsertOutcome::Added(_))),
        "{outcomes:?}"
    );
    assert_eq!(store.copy_claims(), claims + 2);
    assert_eq!(store.copy_advances(), advances + 1);
    let answers = store.keyword_copy_answers();
    let got = candidates_as_in_steps(store, user, "cat called Pixel").await;
    assert_eq!(
        store.keyword_copy_answers(),
        answers + 1,
        "the moved copy is current"
    );
    let InsertOutcome::Added(pixel) = &outcomes[0] else {
        unreachable!()
    };
    assert!(got.iter().any(|c| c.id == pixel.id), "{got:?}");

    let outcomes = add_all(store, user, &["My cat is called Pixel!"]).await;
    assert!(
        matches!(outcomes[0], InsertOutcome::Duplicate { .. }),
        "{outcomes:?}"
    );
    assert_eq!(store.copy_claims(), claims + 2);
    claims + 2
}

/// A small user's copy holds their vectors, and recall's vector side is
/// then the copy's (what SQL gives, with the postings-only copy and
/// without a copy); the copy answers only while current.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_with_vectors_answers_as_sql_does_and_only_while_current() {
    let db = TestDatabase::create().await;
    let a = open(&db, PlanSettings::default()).await;
    let postings_only = open(&db, PlanSettings::default())
        .await
        .with_copy_vector_floats(0);
    let user = whole("cv");
    for i in 0..30 {
        let text = format!(
            "Trip {i}: a {} in {}",
            ["boat", "train", "bus"][i % 3],
            i * 11
        );
        a.insert(memory(&user, &text), 0.95).await.unwrap();
    }
    let mut expiring = memory(&user, "a boat trip long ago");
    expiring.expires_at = Some(chrono::Utc::now() - chrono::Duration::seconds(1));
    a.insert(expiring, 0.95).await.unwrap();
    a.load_keyword_copy("cv").await.unwrap();
    postings_only.load_keyword_copy("cv").await.unwrap();
    assert!(a.copy_holds_vectors("cv"));
    assert!(!postings_only.copy_holds_vectors("cv"));
    for query in ["a boat trip", "train 33", "nothing of the kind"] {
        let with_vectors = candidates_as_in_steps(&a, &user, query).await;
        let without = candidates_as_in_steps(&postings_only, &user, query).await;
        let ids = |c: &[engram::store::Scored]| c.iter().map(|x| x.id).collect::<Vec<_>>();
        assert_eq!(ids(&with_vectors), ids(&without), "{query}");
    }
    assert_eq!(a.keyword_copy_answers(), 3);
    assert_eq!(postings_only.keyword_copy_answers(), 3);

    // The reconciler's search, from the copy: the hits and the version SQL
    // gives, the memories from the similarity asked for.
    let none = MetadataFilter::default();
    let at = SearchScope {
        scope: &user,
        filter: &none,
    };
    let query = HashEmbedder::new(DIMS).embed("a bus trip");
    let sql = open(&db, PlanSettings::default())
        .await
        .with_keyword_copy_bytes(0);
    let want = sql.similar(at, &query, 5, Some(0.1)).await.unwrap();
    let got = a.similar(at, &query, 5, Some(0.1)).await.unwrap();
    assert_eq!(got.version, want.version);
    // The same similarities in order; the same memories but for ties at
    // the cut (the copy and SQL break ties differently).
    assert_eq!(got.hits.len(), want.hits.len());
    for (g, w) in got.hits.iter().zip(&want.hits) {
        assert!((g.score - w.score).abs() < 1e-4, "{g:?} {w:?}");
    }
    let cut = want.hits.last().map_or(0.0, |h| h.score);
    let above = |hits: &[engram::store::Hit]| {
        let mut above: Vec<MemoryId> = hits
            .iter()
            .filter(|h| h.score > cut + 1e-4)
            .map(|h| h.id)
            .collect();
        above.sort();
        above
    };
    assert_eq!(above(&got.hits), above(&want.hits));
    // The memories of the hits from the similarity asked for.
    let loaded = |nearest: engram::store::Nearest| {
        let mut m: Vec<MemoryId> = nearest.memories.unwrap().iter().map(|m| m.id).collect();
        m.sort();
        let mut hits: Vec<MemoryId> = nearest
            .hits
            .iter()
            .filter(|h| h.score >= 0.1)
            .map(|h| h.id)
            .collect();
        hits.sort();
        assert_eq!(m, hits);
        m.len()
    };
    let want_version = want.version;
    assert_eq!(loaded(got), loaded(want));

    // Several facts' searches from the copy in one read: each as the copy
    // answers it alone.
    let queries: Vec<Vec<f32>> = ["a bus trip", "train 33", "a boat"]
        .iter()
        .map(|q| HashEmbedder::new(DIMS).embed(q))
        .collect();
    let together = a
        .similar_all(at, &queries, 5, Some(0.1), None)
        .await
        .unwrap();
    for (query, together) in queries.iter().zip(together) {
        let alone = a.similar(at, query, 5, Some(0.1)).await.unwrap();
        assert_eq!(together.hits, alone.hits);
        assert_eq!(together.version, alone.version);
        assert_eq!(loaded(together), loaded(alone));
    }

    // Plain SQL changes a memory: the copy is stale and SQL answers.
    let admin = db.pool().await;
    sqlx::query(
        "UPDATE memories SET valid_to = now() WHERE user_id = 'cv' AND content LIKE 'Trip 3:%'",
    )
    .execute(&admin)
    .await
    .unwrap();
    candidates_as_in_steps(&a, &user, "a boat trip").await;
    assert_eq!(a.keyword_copy_answers(), 3, "a stale copy answered");
    let after = a.similar(at, &query, 5, None).await.unwrap();
    assert_ne!(after.version, want_version);
    let all_after = a.similar_all(at, &queries, 5, None, None).await.unwrap();
    assert!(all_after.iter().all(|n| n.version == after.version));
}

/// Behind a transaction pooler the read that ends a search from a copy
/// stays inside a transaction (on a direct connection it is one statement,
/// `engram_memories_at_version`): through a real PgBouncer, the copy still
/// answers recall and the reconciler's search, with the rows and the
/// version a direct store's SQL gives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_behind_a_transaction_pooler_reads_its_rows_as_sql_does() {
    let db = TestDatabase::create().await;
    let pooler = PgBouncer::start().await;
    let pooled = PgStore::open(
        &pooler.url(&db.app_url),
        HashEmbedder::new(DIMS).identity(),
        PgOptions {
            owner_url: Some(db.owner_url.clone()),
            direct_url: Some(db.app_url.clone()),
            pooler: Pooler::Transaction,
            ..PgOptions::default()
        },
    )
    .await
    .unwrap_or_else(|e| panic!("opening through pgbouncer: {e}\n{}", pooler.log()));
    let user = whole("tp");
    for i in 0..20 {
        let text = format!(
            "Walk {i}: along the {} at {}",
            ["river", "coast"][i % 2],
            i * 7
        );
        pooled.insert(memory(&user, &text), 0.95).await.unwrap();
    }
    pooled.load_keyword_copy("tp").await.unwrap();
    assert!(pooled.copy_holds_vectors("tp"));
    let sql = open(&db, PlanSettings::default())
        .await
        .with_keyword_copy_bytes(0);

    let none = MetadataFilter::default();
    let at = SearchScope {
        scope: &user,
        filter: &none,
    };
    let query = HashEmbedder::new(DIMS).embed("a walk along the river");
    // Every row asked for: no cut, where the copy and SQL break ties apart.
    let want = sql.similar(at, &query, 30, Some(0.1)).await.unwrap();
    let got = pooled.similar(at, &query, 30, Some(0.1)).await.unwrap();
    assert!(got.version.is_some());
    assert_eq!(got.version, want.version);
    let loaded = |nearest: &engram::store::Nearest| {
        let mut ids: Vec<MemoryId> = nearest
            .memories
            .as_ref()
            .unwrap()
            .iter()
            .map(|m| m.id)
            .collect();
        ids.sort();
        ids
    };
    assert!(!loaded(&got).is_empty());
    assert_eq!(loaded(&got), loaded(&want));

    // Recall's candidates: answered by the copy, the picked rows read
    // through the pooler.
    let pick_all = |scored: &[engram::store::Scored]| scored.iter().map(|c| c.id).collect();
    let candidates = pooled
        .candidates(at, &query, "walk river", 8, &pick_all, None)
        .await
        .unwrap();
    assert_eq!(pooled.keyword_copy_answers(), 1);
    let mut read: Vec<MemoryId> = candidates.memories.unwrap().iter().map(|m| m.id).collect();
    let mut scored: Vec<MemoryId> = candidates.scored.iter().map(|c| c.id).collect();
    read.sort();
    scored.sort();
    assert!(!read.is_empty());
    assert_eq!(read, scored);
}

/// Copies that do not all fit with their floats give up the floats before
/// anyone goes without: the third user's copy comes in as codes, and the
/// least recently used other copy gives up its floats to make room. Every
/// copy still answers recall as SQL does, and a small user's copy of codes
/// follows this instance's adds and claims for them as a larger user's does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copies_past_their_budget_give_up_floats_first_and_answer_as_sql_does() {
    let db = TestDatabase::create().await;
    let writer = open(&db, PlanSettings::default()).await;
    let users = ["fa", "fb", "fc"];
    for user in users {
        let scope = whole(user);
        for i in 0..30 {
            let text = format!(
                "Walk {i} of {user}: the {} by the {} on day {}",
                ["lighthouse", "mill", "bridge"][i % 3],
                ["river", "coast", "forest", "lake"][i % 4],
                i * 3
            );
            writer.insert(memory(&scope, &text), 0.95).await.unwrap();
        }
    }
    // What one user's copy holds with floats, and as codes alone.
    let with_floats = open(&db, PlanSettings::default()).await;
    with_floats.load_keyword_copy("fa").await.unwrap();
    assert!(with_floats.copy_holds_vectors("fa"));
    let full = with_floats.keyword_copy_bytes();
    let codes_only = open(&db, PlanSettings::default())
        .await
        .with_copy_vector_floats(0);
    codes_only.load_keyword_copy("fa").await.unwrap();
    let coded = codes_only.keyword_copy_bytes();
    assert!(coded * 2 < full, "{coded} {full}");

    // Room for two with floats and half a third as codes.
    let a = open(&db, PlanSettings::default())
        .await
        .with_keyword_copy_bytes(2 * full + coded / 2);
    for user in users {
        a.load_keyword_copy(user).await.unwrap();
    }
    assert!(users.iter().all(|user| a.keyword_copy_held(user)));
    assert!(a.copy_holds_codes("fa") && !a.copy_holds_vectors("fa"));
    assert!(a.copy_holds_vectors("fb"));
    assert!(a.copy_holds_codes("fc") && !a.copy_holds_vectors("fc"));
    assert!(a.keyword_copy_bytes() <= 2 * full + coded / 2);
    assert_eq!(a.copies_refused(), 0);
    for user in users {
        for query in [
            "the lighthouse by the river",
            "mill day 12",
            "nothing like it",
        ] {
            candidates_as_in_steps(&a, &whole(user), query).await;
        }
    }
    assert_eq!(a.keyword_copy_answers(), 9, "every copy answered");

    // fa's copy of codes moves on with this instance's adds.
    claims_two_adds_and_refuses_a_near_duplicate(&a, &whole("fa")).await;
    assert!(a.copy_holds_codes("fa") && !a.copy_holds_vectors("fa"));
}

/// A larger user's copy holds 8-bit codes of their vectors: recall's
/// nearest memories are then the exact best of the rows the codes name,
/// which are what SQL's exact scan gives; the codes answer a remember's
/// duplicate check and follow this instance's adds; a near-duplicate gets
/// no claim and is refused. A user who outgrows floats gets codes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_with_codes_answers_as_sql_does_and_claims_for_its_adds() {
    let db = TestDatabase::create().await;
    // No user is small enough for floats: copies hold codes.
    let a = open(&db, PlanSettings::default())
        .await
        .with_copy_vector_floats(0);
    let sql = open(&db, PlanSettings::default())
        .await
        .with_copy_vector_floats(0)
        .with_copy_code_bytes(0);
    let user = whole("cc");
    for i in 0..60 {
        let text = format!(
            "Visit {i}: the {} near {} on day {}",
            ["museum", "harbour", "market", "castle"][i % 4],
            ["Oslo", "Porto", "Lyon"][i % 3],
            i * 7
        );
        a.insert(memory(&user, &text), 0.95).await.unwrap();
    }
    let mut expiring = memory(&user, "the museum near Oslo long ago");
    expiring.expires_at = Some(chrono::Utc::now() - chrono::Duration::seconds(1));
    a.insert(expiring, 0.95).await.unwrap();
    a.load_keyword_copy("cc").await.unwrap();
    sql.load_keyword_copy("cc").await.unwrap();
    assert!(a.copy_holds_codes("cc") && !a.copy_holds_vectors("cc"));
    assert!(!sql.copy_holds_codes("cc") && !sql.copy_holds_vectors("cc"));
    for query in [
        "the museum near Oslo",
        "harbour day 14",
        "castle",
        "nothing of the kind",
    ] {
        // Each against its own store's steps (SQL for the vector side), and
        // the two alike.
        // (Both sorted by id.)
        let with_codes = candidates_as_in_steps(&a, &user, query).await;
        let without = candidates_as_in_steps(&sql, &user, query).await;
        assert_eq!(with_codes.len(), without.len(), "{query}");
        common::assert_same_candidates(&with_codes, &without, query);
    }
    assert_eq!(a.keyword_copy_answers(), 4);

    claims_two_adds_and_refuses_a_near_duplicate(&a, &user).await;
    assert!(a.copy_holds_codes("cc"));

    // A user who outgrows floats through this instance's adds: codes.
    let growing = open(&db, PlanSettings::default())
        .await
        .with_copy_vector_floats(21 * DIMS);
    let other = whole("cg");
    let texts: Vec<String> = (0..20)
        .map(|i| format!("Recipe {i}: soup with {}", i * 13))
        .collect();
    for text in &texts {
        growing.insert(memory(&other, text), 0.95).await.unwrap();
    }
    growing.load_keyword_copy("cg").await.unwrap();
    assert!(growing.copy_holds_vectors("cg"));
    add_all(&growing, &other, &["Recipe 98: a pie", "Recipe 99: a stew"]).await;
    assert!(growing.copy_holds_codes("cg") && !growing.copy_holds_vectors("cg"));
    let before = growing.keyword_copy_answers();
    let got = candidates_as_in_steps(&growing, &other, "a stew").await;
    assert_eq!(growing.keyword_copy_answers(), before + 1);
    assert!(!got.is_empty());
}

/// Writers of one user at once, in one instance, each with a fact that
/// says what the others' say: each passes over the copy before its turn,
/// and the rows the others appended meanwhile are checked in its turn, so
/// exactly one is kept (a claim made without them would be trusted by the
/// database, and a duplicate kept).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_near_duplicates_through_one_copy_keep_one() {
    let db = TestDatabase::create().await;
    for (user_id, store) in [
        ("nf", open(&db, PlanSettings::default()).await),
        (
            "nc",
            open(&db, PlanSettings::default())
                .await
                .with_copy_vector_floats(0),
        ),
    ] {
        let user = whole(user_id);
        for i in 0..10 {
            let text = format!("Errand {i}: post a letter to {}", i * 17);
            store.insert(memory(&user, &text), 0.95).await.unwrap();
        }
        store.load_keyword_copy(user_id).await.unwrap();
        assert!(store.copy_holds_vectors(user_id) || store.copy_holds_codes(user_id));
        // The same words, so the same vector; not the same text.
        let texts = [
            "My cat is called Pixel",
            "My cat is called Pixel!",
            "My cat is called Pixel.",
            "my cat is called pixel",
        ];
        let writes = texts
            .iter()
            .map(|t| add_all(&store, &user, std::slice::from_ref(t)));
        let outcomes: Vec<InsertOutcome> = futures::future::join_all(writes)
            .await
            .into_iter()
            .flatten()
            .collect();
        let kept = outcomes
            .iter()
            .filter(|o| matches!(o, InsertOutcome::Added(_)))
            .count();
        assert_eq!(kept, 1, "{user_id}: {outcomes:?}");
    }
}

/// This instance's own adds move the user's copy on (it keeps answering,
/// with the new memories in it), and the copy answers their duplicate
/// check with a claim the database trusts only at the copy's version: a
/// near-duplicate written meanwhile by another instance is still refused.
/// A batch that does anything else, or whose adds close an expired repeat,
/// leaves the copy behind (SQL answers until it is loaded again).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_follows_its_own_adds_and_answers_their_duplicate_check() {
    let db = TestDatabase::create().await;
    let a = open(&db, PlanSettings::default()).await;
    let b = open(&db, PlanSettings::default()).await;
    let user = whole("cw");
    let first: Vec<String> = (0..20)
        .map(|i| {
            format!(
                "Note {i}: the {} is {}",
                ["kettle", "lamp", "chair", "rug"][i % 4],
                i * 3
            )
        })
        .collect();
    for text in &first {
        a.insert(memory(&user, text), 0.95).await.unwrap();
    }
    a.load_keyword_copy("cw").await.unwrap();
    assert!(a.copy_holds_vectors("cw"));
    let claims = claims_two_adds_and_refuses_a_near_duplicate(&a, &user).await;

    // Another instance adds a memory: a's copy does not hold it and claims
    // a near-duplicate of it clear, at the copy's version; the database,
    // at a newer one, checks for itself and refuses it.
    let by_b = b
        .insert(memory(&user, "The boiler was serviced in May"), 0.95)
        .await
        .unwrap();
    assert!(matches!(by_b, InsertOutcome::Added(_)));
    let outcomes = add_all(&a, &user, &["The boiler was serviced in May."]).await;
    assert!(
        matches!(outcomes[0], InsertOutcome::Duplicate { .. }),
        "{outcomes:?}"
    );
    assert_eq!(a.copy_claims(), claims + 1, "the stale copy claimed");
    let answers = a.keyword_copy_answers();
    candidates_as_in_steps(&a, &user, "boiler serviced").await;
    assert_eq!(a.keyword_copy_answers(), answers, "the stale copy answered");

    // Loaded again; a batch that adds and closes leaves it behind.
    a.load_keyword_copy("cw").await.unwrap();
    let advances = a.copy_advances();
    let InsertOutcome::Added(pixel) = &add_all(&a, &user, &["Pixel likes the lamp"]).await[0]
    else {
        panic!("not added")
    };
    assert_eq!(a.copy_advances(), advances + 1);
    let mut batch = a.begin("cw").await.unwrap();
    batch
        .insert_all(vec![(memory(&user, "The rug is blue"), None)], 0.95)
        .await
        .unwrap();
    assert!(batch.close(pixel.id, "user").await.unwrap());
    batch.commit().await.unwrap();
    assert_eq!(
        a.copy_advances(),
        advances + 1,
        "a batch that closed moved it on"
    );
    let answers = a.keyword_copy_answers();
    let got = candidates_as_in_steps(&a, &user, "Pixel likes the lamp").await;
    assert!(got.iter().all(|c| c.id != pixel.id), "{got:?}");
    assert_eq!(a.keyword_copy_answers(), answers);

    // An add that closes an expired memory of the same text.
    let mut expiring = memory(&user, "The window sticks");
    expiring.expires_at = Some(chrono::Utc::now() + chrono::Duration::milliseconds(300));
    a.insert(expiring, 0.95).await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(400)).await;
    a.load_keyword_copy("cw").await.unwrap();
    let advances = a.copy_advances();
    let outcomes = add_all(&a, &user, &["The window sticks"]).await;
    assert!(
        matches!(outcomes[0], InsertOutcome::Added(_)),
        "{outcomes:?}"
    );
    assert_eq!(
        a.copy_advances(),
        advances,
        "the copy still holds the closed one"
    );
    let answers = a.keyword_copy_answers();
    candidates_as_in_steps(&a, &user, "window sticks").await;
    assert_eq!(a.keyword_copy_answers(), answers);
}

/// Server sessions of the app role on `db` still inside a transaction
/// (`idle in transaction`), after the pool has had up to 2 s to flush.
async fn left_in_a_transaction(db: &TestDatabase) -> i64 {
    let admin = PgPool::connect(&db.url)
        .await
        .expect("connect as superuser");
    let mut open = 0;
    for _ in 0..40 {
        open = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity \
             WHERE datname = current_database() AND usename = $1 \
               AND state LIKE 'idle in transaction%'",
        )
        .bind(common::postgres::APP_ROLE)
        .fetch_one(&admin)
        .await
        .expect("read pg_stat_activity");
        if open == 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    open
}

/// Recall's read-only transactions are dropped rather than committed
/// (`PgStore::end_read`): their ROLLBACK goes out as the pool takes the
/// connection back. After every kind of search (the SQL path, the keyword
/// copy's path, the vector and keyword searches alone), no session is left
/// inside a transaction, and the next transaction on the same connections
/// is another user's alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_transactions_end_before_their_connections_are_used_again() {
    let db = TestDatabase::create().await;
    let options = PgOptions {
        owner_url: Some(db.owner_url.clone()),
        // The SQL path holds two connections at once.
        pool_size: 2,
        ..PgOptions::default()
    };
    let store = PgStore::open(&db.app_url, HashEmbedder::new(DIMS).identity(), options)
        .await
        .expect("open the PostgreSQL store");
    let user = whole("reader");
    for i in 0..12 {
        let text = format!("Had an espresso in Lisbon on day {i}");
        store.insert(memory(&user, &text), 0.95).await.unwrap();
    }
    let none = MetadataFilter::default();
    let at = SearchScope {
        scope: &user,
        filter: &none,
    };
    let query = "espresso in Lisbon";
    let vector = HashEmbedder::new(DIMS).embed(query);
    let every = |scored: &[engram::store::Scored]| scored.iter().map(|c| c.id).collect();

    let found = store
        .candidates(at, &vector, query, 8, &every, None)
        .await
        .unwrap();
    assert!(found.memories.is_some_and(|m| !m.is_empty()));
    store.vector_search(at, &vector, 5).await.unwrap();
    store.keyword_search(at, query, 5).await.unwrap();
    assert_eq!(left_in_a_transaction(&db).await, 0, "after the SQL path");

    store.load_keyword_copy("reader").await.unwrap();
    let answers = store.keyword_copy_answers();
    let found = store
        .candidates(at, &vector, query, 8, &every, None)
        .await
        .unwrap();
    assert_eq!(
        store.keyword_copy_answers(),
        answers + 1,
        "the copy answered"
    );
    assert!(found.memories.is_some_and(|m| !m.is_empty()));
    assert_eq!(left_in_a_transaction(&db).await, 0, "after the copy's path");

    for _ in 0..2 {
        let mut tx = store.user_transaction("someone else").await.unwrap();
        let (seen, acting): (i64, String) = sqlx::query_as(
            "SELECT (SELECT count(*) FROM memories), current_setting('engram.user_id')",
        )
        .fetch_one(&mut *tx)
        .await
        .unwrap();
        tx.commit().await.unwrap();
        assert_eq!((seen, acting.as_str()), (0, "someone else"));
    }
}

/// A recall whose user's version was read while its query was embedded
/// (`version_now`) takes the picked memories from the user's copy when the
/// copy is of that version, and reads nothing more: the memories are the
/// ones SQL gives, field for field, for rows the copy loaded and rows this
/// instance's writes moved it on with. A version read after another
/// instance wrote is not the copy's, and the answer then comes from SQL
/// with that write in it.
#[tokio::test]
async fn a_recall_that_read_its_users_version_ahead_takes_the_rows_from_the_copy() {
    let db = TestDatabase::create().await;
    let store = open(&db, PlanSettings::default()).await;
    let other = open(&db, PlanSettings::default()).await;
    let user = whole("ahead");
    for i in 0..6 {
        let text = format!("Walked the dog along the river on day {i}");
        store.insert(memory(&user, &text), 0.95).await.unwrap();
    }
    // Loaded now; the next writes move it on.
    store.load_keyword_copy("ahead").await.unwrap();
    let mut tagged = memory(&user, "Walked the river path with a lantern");
    tagged.metadata = json!({"place": "river", "n": 3})
        .as_object()
        .cloned()
        .unwrap();
    tagged.categories = vec!["walks".into()];
    tagged.expires_at = Some(chrono::Utc::now() + chrono::Duration::days(30));
    let advances = store.copy_advances();
    store.insert(tagged, 0.95).await.unwrap();
    store
        .insert(memory(&user, "Walked along the river at dawn"), 0.95)
        .await
        .unwrap();
    assert!(
        store.copy_advances() > advances,
        "the writes moved the copy on"
    );

    let none = MetadataFilter::default();
    let at = SearchScope {
        scope: &user,
        filter: &none,
    };
    let query = "walked the river";
    let vector = HashEmbedder::new(DIMS).embed(query);
    let every = |scored: &[engram::store::Scored]| scored.iter().map(|c| c.id).collect();
    let sorted = |found: engram::store::Candidates| {
        let mut memories = found
            .memories
            .expect("the memories come with the candidates");
        memories.sort_by_key(|m| m.id.0);
        memories
    };

    let seen = store.version_now(at).await.unwrap();
    assert!(
        seen.is_some(),
        "the copy holds the memories: the version is read"
    );
    assert_eq!(
        other.version_now(at).await.unwrap(),
        None,
        "no copy, no read"
    );
    let from_copy = sorted(
        store
            .candidates(at, &vector, query, 20, &every, seen)
            .await
            .unwrap(),
    );
    let from_sql = sorted(
        other
            .candidates(at, &vector, query, 20, &every, None)
            .await
            .unwrap(),
    );
    assert_eq!(from_copy.len(), 8);
    assert_eq!(from_copy, from_sql);
    // The reconciler's searches too: the hits (all of the user's, so that
    // ties at the cut do not matter), the version and the memories SQL
    // gives.
    let similar = |found: Vec<engram::store::Nearest>| {
        let mut found = found.into_iter().next().expect("one search");
        let mut memories = found.memories.take().expect("the memories were read");
        memories.sort_by_key(|m| m.id.0);
        let mut hits: Vec<MemoryId> = found.hits.iter().map(|h| h.id).collect();
        hits.sort();
        (hits, found.version, memories)
    };
    let queries = [vector.clone()];
    let ahead = store.similar_all(at, &queries, 20, Some(0.1), seen);
    let in_sql = other.similar_all(at, &queries, 20, Some(0.1), None);
    let (ahead, in_sql) = (
        similar(ahead.await.unwrap()),
        similar(in_sql.await.unwrap()),
    );
    assert!(
        !ahead.2.is_empty(),
        "memories above the similarity asked for"
    );
    assert_eq!(ahead, in_sql);
    assert_eq!(ahead.1, seen);

    // Another instance writes. A version read before that write still
    // names the copy's: the answer is the user as they were then, with
    // nothing read (a remember's write then finds the version moved on).
    other
        .insert(memory(&user, "Walked the river with a new friend"), 0.95)
        .await
        .unwrap();
    let then = sorted(
        store
            .candidates(at, &vector, query, 20, &every, seen)
            .await
            .unwrap(),
    );
    assert_eq!(then, from_copy);
    let reconciled_then = store.similar_all(at, &queries, 20, Some(0.1), seen);
    assert_eq!(similar(reconciled_then.await.unwrap()), ahead);
    // One read after it is not the copy's: SQL answers, with that write.
    let seen_after = store.version_now(at).await.unwrap();
    assert_ne!(seen_after, seen);
    let after = sorted(
        store
            .candidates(at, &vector, query, 20, &every, seen_after)
            .await
            .unwrap(),
    );
    assert_eq!(after.len(), 9);
    assert!(
        after
            .iter()
            .any(|m| m.memory == "Walked the river with a new friend")
    );
    let reconciled = store.similar_all(at, &queries, 20, Some(0.1), seen_after);
    let (_, version, memories) = similar(reconciled.await.unwrap());
    assert_eq!(version, seen_after);
    assert!(
        memories
            .iter()
            .any(|m| m.memory == "Walked the river with a new friend")
    );
}

/// A remember with a fact the reconciler finds known beside a new one
/// still goes as a round: the new fact is stored, the known one answered
/// `NONE` with the stored memory's id, each in its fact's place, and the
/// remember's audit row names both, in that order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_known_fact_beside_a_new_one_is_answered_in_its_place() {
    use engram::model::Event;

    let db = TestDatabase::create().await;
    let fake = FakeOpenAi::start(DIMS).await;
    let (service, store) = service_with_model(&db, &fake, 0.3).await;
    let (facts, remember) = (fact_reply, alices);
    let decide = |decisions: serde_json::Value| {
        Reply::Content(json!({ "decisions": decisions }).to_string())
    };

    fake.then(facts(&["Keeps bees in the garden"]));
    let bees = service
        .remember(common::ME, remember("I keep bees"))
        .await
        .unwrap()
        .results[0]
        .id;
    fake.then(facts(&[
        "Keeps bees in the garden, two hives",
        "Plays the cello",
    ]))
    .then(decide(json!([
        {"fact": 0, "event": "NONE", "id": "m1", "text": "x"},
        {"fact": 1, "event": "ADD", "text": "Plays the cello"}
    ])));
    let both = service
        .remember(
            common::ME,
            remember("Two hives of bees; and I play the cello"),
        )
        .await
        .unwrap();
    let events: Vec<(Event, bool)> = both
        .results
        .iter()
        .map(|r| (r.event, r.id == bees))
        .collect();
    assert_eq!(
        events,
        [(Event::None, true), (Event::Add, false)],
        "{both:?}"
    );
    assert_eq!(
        common::current(&service, "alice").await,
        ["Keeps bees in the garden", "Plays the cello"]
    );

    service.auditor().expect("audit is on").flush().await;
    let rows = store
        .audit_rows(&engram::store::AuditQuery {
            operation: Some("remember".into()),
            limit: 1,
            ..engram::store::AuditQuery::default()
        })
        .await
        .unwrap();
    let named: Vec<MemoryId> = rows[0].record.memory_ids.clone();
    assert_eq!(named, [bees, both.results[1].id], "{rows:?}");
}
