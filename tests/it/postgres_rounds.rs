//! Rounds on PostgreSQL: several users' new memories in one transaction and
//! one statement (`Writes::add_round`, migration `rounds_across_users`).
//! Each user's memories stay their own (rows, counts, versions, in-process
//! copies, audit rows); a duplicate anywhere writes nothing; the duplicate
//! check trusts a claim only at its own user's locked version; row-level
//! security admits a round's users and no one else; and the service's
//! concurrent remembers of many users, which go in rounds, keep one memory
//! per fact.

use std::sync::Arc;

use engram::embed::{Embedder, HashEmbedder};
use engram::model::{Event, MemoryId};
use engram::store::prelude::*;
use engram::store::{
    AuditQuery, AuditRecord, InsertOutcome, NewMemory, PgOptions, PgStore, PlanSettings, Pooler,
    RoundPart,
};
use sqlx::{Connection, PgConnection};

use crate::common::pgbouncer::PgBouncer;
use crate::common::postgres::TestDatabase;
use crate::common::{self, ME};
use crate::postgres::{DIMS, candidates_as_in_steps, memory, open, whole};

const THRESHOLD: f32 = 0.9;

fn part(user: &str, memories: Vec<NewMemory>) -> RoundPart {
    RoundPart {
        user_id: user.to_owned(),
        memories: memories.into_iter().map(|m| (m, None)).collect(),
        audits: Vec::new(),
    }
}

fn audit_record(user_ref: &str, ids: Vec<MemoryId>) -> AuditRecord {
    AuditRecord {
        at: chrono::Utc::now(),
        principal: "operator".into(),
        key_id: None,
        user_ref: Some(user_ref.into()),
        transport: "test".into(),
        client_addr: None,
        operation: "remember".into(),
        memory_count: ids.len() as u64,
        memory_ids: ids,
        outcome: "ok".into(),
        query: None,
    }
}

/// The audit trail's remember rows (of `user_ref`'s, if named), up to 10.
async fn remember_rows(store: &PgStore, user_ref: Option<&str>) -> Vec<engram::store::AuditRow> {
    store
        .audit_rows(&AuditQuery {
            user_ref: user_ref.map(str::to_owned),
            since: None,
            operation: Some("remember".into()),
            before_seq: None,
            limit: 10,
        })
        .await
        .unwrap()
}

/// The user's current memories' texts, sorted.
async fn texts_of(store: &PgStore, user: &str) -> Vec<String> {
    let (memories, _) = store.recent(&whole(user), 100).await.unwrap();
    assert!(
        memories.iter().all(|m| m.scope.user_id().as_str() == user),
        "{memories:?}"
    );
    let mut texts: Vec<String> = memories.into_iter().map(|m| m.memory).collect();
    texts.sort();
    texts
}

/// Alice and Bob hold a memory each, and the store holds a copy of each
/// (a recall starts its load, in the background: waited for here when the
/// copies hold vectors), so the round's claims and copy moves are seen.
async fn alice_and_bob(store: &PgStore, vectors_in_copies: bool) {
    for (user, text) in [
        ("alice", "Alice keeps bees on her roof"),
        ("bob", "Bob collects vintage typewriters"),
    ] {
        let added = store.insert(memory(&whole(user), text), THRESHOLD).await;
        assert!(matches!(added.unwrap(), InsertOutcome::Added(_)));
        candidates_as_in_steps(store, &whole(user), text).await;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while vectors_in_copies && !store.copy_holds_vectors(user) {
            assert!(
                std::time::Instant::now() < deadline,
                "{user}'s copy not loaded 10 s after a recall"
            );
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_round_writes_each_users_memories_as_their_own() {
    let db = TestDatabase::create().await;
    let store = open(&db, PlanSettings::default()).await;
    alice_and_bob(&store, true).await;
    let versions = [
        store.version("alice").await.unwrap(),
        store.version("bob").await.unwrap(),
    ];
    let (claims, advances) = (store.copy_claims(), store.copy_advances());

    let oboe = memory(&whole("bob"), "Bob plays the oboe in an orchestra");
    let mut bobs = part("bob", vec![oboe.clone()]);
    bobs.audits.push(audit_record("bob-ref", vec![oboe.id]));
    let parts = vec![
        bobs,
        part(
            "alice",
            vec![
                memory(&whole("alice"), "Alice grew up near Porto"),
                memory(&whole("alice"), "Alice runs a marathon every spring"),
            ],
        ),
        part(
            "carol",
            vec![memory(&whole("carol"), "Carol fixes old radios")],
        ),
    ];
    let at = store.add_round(parts, THRESHOLD).await.unwrap();
    assert!(at.is_some(), "nothing in the round is a duplicate");

    assert_eq!(
        texts_of(&store, "alice").await,
        [
            "Alice grew up near Porto",
            "Alice keeps bees on her roof",
            "Alice runs a marathon every spring"
        ]
    );
    assert_eq!(
        texts_of(&store, "bob").await,
        [
            "Bob collects vintage typewriters",
            "Bob plays the oboe in an orchestra"
        ]
    );
    assert_eq!(texts_of(&store, "carol").await, ["Carol fixes old radios"]);
    for (user, before) in ["alice", "bob"].into_iter().zip(versions) {
        let after = store.version(user).await.unwrap();
        assert!(after > before, "{user}: {before:?} -> {after:?}");
    }
    assert_eq!(
        store.stats("alice").await.unwrap().memories,
        3,
        "the user's count"
    );

    // Alice's and Bob's copies claimed their rows and moved on (Carol has
    // no copy), and answer recall, current, with the new memories.
    assert_eq!(store.copy_claims(), claims + 3);
    assert_eq!(store.copy_advances(), advances + 2);
    let answers = store.keyword_copy_answers();
    let found = candidates_as_in_steps(&store, &whole("bob"), "oboe orchestra").await;
    assert_eq!(
        store.keyword_copy_answers(),
        answers + 1,
        "the copy is current"
    );
    assert!(found.iter().any(|c| c.id == oboe.id), "{found:?}");
    let found = candidates_as_in_steps(&store, &whole("alice"), "oboe orchestra").await;
    assert!(found.iter().all(|c| c.id != oboe.id), "{found:?}");

    // History and the audit row came with the round.
    let history = store.history("bob", oboe.id).await.unwrap();
    assert_eq!(history.len(), 1, "{history:?}");
    let rows = remember_rows(&store, Some("bob-ref")).await;
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0].record.memory_ids, [oboe.id]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_round_with_a_duplicate_anywhere_writes_nothing() {
    let db = TestDatabase::create().await;
    let store = open(&db, PlanSettings::default()).await;
    alice_and_bob(&store, true).await;
    let before = (
        store.version("alice").await.unwrap(),
        store.version("bob").await.unwrap(),
    );
    let figs = || part("alice", vec![memory(&whole("alice"), "Alice likes figs")]);

    // Bob's text is one he holds already.
    let again = part(
        "bob",
        vec![memory(&whole("bob"), "Bob collects vintage typewriters")],
    );
    assert_eq!(
        store
            .add_round(vec![figs(), again], THRESHOLD)
            .await
            .unwrap(),
        None
    );
    // Two near-identical memories of Bob's in the one round.
    let twins = part(
        "bob",
        vec![
            memory(&whole("bob"), "Bob sails on the lake at weekends"),
            memory(&whole("bob"), "Bob sails on the lake at weekends!"),
        ],
    );
    assert_eq!(
        store
            .add_round(vec![figs(), twins], THRESHOLD)
            .await
            .unwrap(),
        None
    );

    assert_eq!(
        texts_of(&store, "alice").await,
        ["Alice keeps bees on her roof"]
    );
    assert_eq!(
        texts_of(&store, "bob").await,
        ["Bob collects vintage typewriters"]
    );
    let after = (
        store.version("alice").await.unwrap(),
        store.version("bob").await.unwrap(),
    );
    assert_eq!(before, after, "nothing of a declined round is kept");

    // One user named in two parts is the caller's mistake, not a round.
    let refused = store
        .add_round(vec![figs(), figs()], THRESHOLD)
        .await
        .unwrap_err();
    assert!(refused.to_string().contains("two parts"), "{refused}");
}

/// A claim names the version a search of its user saw; in a round it is
/// trusted only at that user's version under the round's lock, never at
/// another user's, and never once the user has moved on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_round_trusts_a_claim_only_at_its_own_users_version() {
    let db = TestDatabase::create().await;
    let store = open(&db, PlanSettings::default())
        .await
        .with_copy_vector_floats(0)
        .with_copy_code_bytes(0);
    alice_and_bob(&store, false).await;
    let near = "Alice keeps bees on her roof!";
    let claimed = |version: u64| RoundPart {
        user_id: "alice".into(),
        memories: vec![(memory(&whole("alice"), near), Some(version))],
        audits: Vec::new(),
    };
    let bobs = || part("bob", vec![memory(&whole("bob"), "Bob bakes sourdough")]);
    let alice_at = store.version("alice").await.unwrap().unwrap();
    let bob_at = store.version("bob").await.unwrap().unwrap();

    // At Bob's version: searched, and the near one refused.
    let at_bobs = store
        .add_round(vec![claimed(bob_at), bobs()], THRESHOLD)
        .await;
    assert_eq!(at_bobs.unwrap(), None, "a claim at another user's version");
    // Without a claim: searched, refused.
    let unclaimed = part("alice", vec![memory(&whole("alice"), near)]);
    let searched = store.add_round(vec![unclaimed, bobs()], THRESHOLD).await;
    assert_eq!(searched.unwrap(), None, "an unclaimed near-duplicate");

    // At Alice's own version: trusted (the service makes no such claim:
    // its search saw the near one), so the near one gets in.
    let trusted = store
        .add_round(vec![claimed(alice_at), bobs()], THRESHOLD)
        .await;
    assert!(trusted.unwrap().is_some(), "a claim at the user's version");
    assert_eq!(texts_of(&store, "alice").await.len(), 2);

    // Alice has moved on: the same claim is stale now.
    let again = RoundPart {
        user_id: "alice".into(),
        memories: vec![(
            memory(&whole("alice"), "Alice keeps bees on her roof!!"),
            Some(alice_at),
        )],
        audits: Vec::new(),
    };
    let bread = part("bob", vec![memory(&whole("bob"), "Bob brews cider")]);
    let stale = store.add_round(vec![again, bread], THRESHOLD).await;
    assert_eq!(stale.unwrap(), None, "a stale claim is searched");
}

/// A user with no memories has no row: a round locks them at no version,
/// which a claim names as the empty copy's (version 0). Such a claim is
/// trusted while the user is still without memories (here two near twins,
/// claimed by hand: the service claims only a memory alone in its write)
/// and not once they have some.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_on_a_user_without_memories_holds_until_they_have_some() {
    let db = TestDatabase::create().await;
    let store = open(&db, PlanSettings::default())
        .await
        .with_copy_vector_floats(0)
        .with_copy_code_bytes(0);
    let twins = |user: &str| RoundPart {
        user_id: user.into(),
        memories: vec![
            (
                memory(&whole(user), "Dora paddles a kayak to work"),
                Some(0),
            ),
            (
                memory(&whole(user), "Dora paddles a kayak to work!"),
                Some(0),
            ),
        ],
        audits: Vec::new(),
    };
    let trusted = store.add_round(vec![twins("dora")], THRESHOLD).await;
    assert!(trusted.unwrap().is_some(), "claims on a user with no row");
    assert_eq!(texts_of(&store, "dora").await.len(), 2);

    let stale = store.add_round(vec![twins("dora")], THRESHOLD).await;
    assert_eq!(stale.unwrap(), None, "claims of no memories, with some");
    assert_eq!(texts_of(&store, "dora").await.len(), 2);
}

/// The copy of a user with no memories is empty; their first
/// round finds them still without a row, claims from that copy and moves
/// it on, as it moves any other: the next recall is the copy's answer, with
/// the new memories, rather than SQL's after a stale check.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_users_first_round_moves_their_empty_copy_on() {
    let db = TestDatabase::create().await;
    let store = open(&db, PlanSettings::default()).await;
    alice_and_bob(&store, true).await;
    store.load_keyword_copy("dora").await.unwrap();
    assert!(store.copy_holds_vectors("dora"), "an empty copy");
    let (claims, advances) = (store.copy_claims(), store.copy_advances());

    let kayak = memory(&whole("dora"), "Dora paddles a kayak to work");
    let parts = vec![
        part("bob", vec![memory(&whole("bob"), "Bob bakes sourdough")]),
        part(
            "dora",
            vec![kayak.clone(), memory(&whole("dora"), "Dora grows chillies")],
        ),
    ];
    let at = store.add_round(parts, THRESHOLD).await.unwrap();
    assert!(at.is_some(), "nothing in the round is a duplicate");

    assert_eq!(store.copy_claims(), claims + 3, "Bob's one and Dora's two");
    assert_eq!(
        store.copy_advances(),
        advances + 2,
        "Bob's and Dora's copies"
    );
    let answers = store.keyword_copy_answers();
    let found = candidates_as_in_steps(&store, &whole("dora"), "kayak work").await;
    assert_eq!(
        store.keyword_copy_answers(),
        answers + 1,
        "Dora's copy is current"
    );
    assert!(found.iter().any(|c| c.id == kayak.id), "{found:?}");
}

/// Row-level security admits the users `engram.round_users` names, as
/// `engram.user_id` admits one, on engram's own role; no one else's rows
/// are seen or written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn row_security_admits_a_rounds_users_and_no_one_else() {
    let db = TestDatabase::create().await;
    let store = open(&db, PlanSettings::default()).await;
    for user in ["alice", "bob", "carol"] {
        let text = format!("{user} has a memory of their own");
        store
            .insert(memory(&whole(user), &text), THRESHOLD)
            .await
            .unwrap();
    }
    let mut app = PgConnection::connect(&db.app_url).await.unwrap();
    let mut tx = app.begin().await.unwrap();
    sqlx::query("SELECT set_config('engram.round_users', '{alice,carol}', true)")
        .execute(&mut *tx)
        .await
        .unwrap();
    for table in [
        "memories",
        "memory_history",
        "memory_users",
        "keyword_postings",
    ] {
        let users: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT DISTINCT user_id FROM {table} ORDER BY 1"
        )))
        .fetch_all(&mut *tx)
        .await
        .unwrap();
        assert_eq!(users, ["alice", "carol"], "{table}");
    }
    let planted = sqlx::query(
        "INSERT INTO memory_history (memory_id, user_id, event, actor, created_at) \
         VALUES (gen_random_uuid(), 'bob', 'ADD', 'agent', now())",
    )
    .execute(&mut *tx)
    .await
    .unwrap_err();
    let code = planted.as_database_error().and_then(|d| d.code());
    assert_eq!(code.as_deref(), Some("42501"), "{planted}");
    drop(tx);

    // Unset or empty, it admits nobody.
    let mut tx = app.begin().await.unwrap();
    sqlx::query("SELECT set_config('engram.round_users', '', true)")
        .execute(&mut *tx)
        .await
        .unwrap();
    let seen: i64 = sqlx::query_scalar("SELECT count(*) FROM memories")
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    assert_eq!(seen, 0);
}

/// Many users' remembers at once through the service: those that wait for
/// the store go in rounds of several users, and each user still keeps
/// exactly one memory per fact, each caller answered with its own fact's
/// memory, and nothing of one user's reaches another.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_users_concurrent_remembers_keep_one_memory_per_fact_each() {
    use engram::extract::VerbatimExtractor;
    use engram::params::RememberParams;
    use engram::service::{MemoryService, Settings};

    let db = TestDatabase::create().await;
    let service = Arc::new(MemoryService::new(
        Arc::new(open(&db, PlanSettings::default()).await),
        Arc::new(HashEmbedder::new(crate::postgres::DIMS)),
        Arc::new(VerbatimExtractor),
        Settings {
            dedup_threshold: THRESHOLD,
            ..Settings::default()
        },
    ));
    let users: Vec<String> = (0..8).map(|u| format!("user-{u}")).collect();
    let facts = [
        "keeps bees in the garden behind the house",
        "sings baritone in a Tuesday choir",
        "is allergic to hazelnuts and almonds",
        "drives an old green camper van",
        "collects vinyl records from the seventies",
    ];
    let fact = |user: &str, i: usize| format!("{user} {}", facts[i]);
    let mut tasks = Vec::new();
    // Each fact twice per user, all at once: many rounds, some with a
    // duplicate in them (written again apart, where it is found).
    for copy in 0..2 {
        for i in 0..facts.len() {
            for user in &users {
                let service = service.clone();
                let params = RememberParams {
                    text: Some(fact(user, i)),
                    user_id: Some(user.clone()),
                    infer: Some(false),
                    ..RememberParams::default()
                };
                let user = user.clone();
                tasks.push(tokio::spawn(async move {
                    let answer = service.remember(ME, params).await.unwrap();
                    (user, i, copy, answer)
                }));
            }
        }
    }
    let mut ids = std::collections::HashMap::new();
    for task in tasks {
        let (user, i, _, answer) = task.await.unwrap();
        assert_eq!(answer.results.len(), 1, "{answer:?}");
        let event = &answer.results[0];
        assert_eq!(
            event.memory,
            fact(&user, i),
            "each caller gets its own fact"
        );
        assert!(matches!(event.event, Event::Add | Event::None), "{event:?}");
        ids.entry((user, i)).or_insert_with(Vec::new).push(event.id);
    }
    for ((user, i), both) in &ids {
        assert_eq!(both[0], both[1], "{user} fact {i}: both name one memory");
    }
    for user in &users {
        let mut expected: Vec<String> = (0..facts.len()).map(|i| fact(user, i)).collect();
        expected.sort();
        assert_eq!(common::current(&service, user).await, expected, "{user}");
    }
}

/// Behind a transaction pooler a round goes inside `BEGIN ... COMMIT`:
/// through a real PgBouncer in transaction mode, rounds one after another
/// commit whole (their audit rows with them), and one with a duplicate
/// keeps nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_round_through_a_transaction_pooler_commits_or_declines_whole() {
    let db = TestDatabase::create().await;
    let pooler = PgBouncer::start().await;
    let options = PgOptions {
        owner_url: Some(db.owner_url.clone()),
        direct_url: Some(db.app_url.clone()),
        pooler: Pooler::Transaction,
        ..PgOptions::default()
    };
    let store = PgStore::open(
        &pooler.url(&db.app_url),
        HashEmbedder::new(DIMS).identity(),
        options,
    )
    .await
    .unwrap_or_else(|e| panic!("opening through pgbouncer: {e}\n{}", pooler.log()));

    let texts = [
        ("alice", "Alice grew up near Porto"),
        ("bob", "Bob plays the oboe in an orchestra"),
        ("alice", "Alice runs a marathon every spring"),
        ("bob", "Bob bakes sourdough on Sundays"),
    ];
    for pair in texts.chunks(2) {
        let mut parts = Vec::new();
        for (user, text) in pair {
            let new = memory(&whole(user), text);
            let mut one = part(user, vec![new.clone()]);
            one.audits.push(audit_record(user, vec![new.id]));
            parts.push(one);
        }
        let at = store.add_round(parts, THRESHOLD).await;
        assert!(at.unwrap().is_some(), "{pair:?}: nothing is a duplicate");
    }
    let again = vec![
        part("alice", vec![memory(&whole("alice"), "Alice likes figs")]),
        part("bob", vec![memory(&whole("bob"), texts[1].1)]),
    ];
    assert_eq!(store.add_round(again, THRESHOLD).await.unwrap(), None);

    assert_eq!(
        texts_of(&store, "alice").await,
        [texts[0].1, texts[2].1],
        "the figs went with the declined round"
    );
    assert_eq!(texts_of(&store, "bob").await, [texts[3].1, texts[1].1]);
    let audited = remember_rows(&store, None).await;
    assert_eq!(
        audited.len(),
        4,
        "one audit row per remember of the two rounds"
    );
}

/// On a direct connection a round is a transaction of its own: it leaves
/// none of its settings on the connection for the next transaction, and
/// it is bounded by the store's statement timeout as every request
/// statement is (here while it waits for a user's lock another session
/// holds), without hanging the connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_round_alone_leaves_nothing_behind_and_is_bounded() {
    let db = TestDatabase::create().await;
    let options = PgOptions {
        owner_url: Some(db.owner_url.clone()),
        pool_size: 1,
        statement_timeout: Some(std::time::Duration::from_millis(500)),
        ..PgOptions::default()
    };
    let store = PgStore::open(&db.app_url, HashEmbedder::new(DIMS).identity(), options)
        .await
        .expect("open the PostgreSQL store");
    let round = |alice: &str, bob: &str| {
        vec![
            part("alice", vec![memory(&whole("alice"), alice)]),
            part("bob", vec![memory(&whole("bob"), bob)]),
        ]
    };
    let first = round("Alice keeps bees", "Bob collects typewriters");
    assert!(store.add_round(first, THRESHOLD).await.unwrap().is_some());

    // The pool's one connection, next: nothing of the round's is set.
    let mut tx = store.user_transaction("mallory").await.unwrap();
    let left: (String, String, String) = sqlx::query_as(
        "SELECT coalesce(current_setting('engram.round_users', true), ''), \
                coalesce(current_setting('engram.round_locked', true), ''), \
                coalesce(current_setting('engram.dedup_searched', true), '')",
    )
    .fetch_one(&mut *tx)
    .await
    .unwrap();
    assert_eq!(left, (String::new(), String::new(), String::new()));
    drop(tx);

    // Bob's write lock, held by another session.
    let mut holder = PgConnection::connect(&db.owner_url).await.unwrap();
    sqlx::query("SELECT pg_advisory_lock(hashtextextended('engram.user:bob', 0))")
        .execute(&mut holder)
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let waited = tokio::time::timeout(
        std::time::Duration::from_secs(20),
        store.add_round(round("Alice likes figs", "Bob brews cider"), THRESHOLD),
    )
    .await
    .expect("a round waiting for a lock ends at the statement timeout");
    let refused = waited.unwrap_err().to_string();
    assert!(refused.contains("statement timeout"), "{refused}");
    assert!(started.elapsed() < std::time::Duration::from_secs(10));
    sqlx::query("SELECT pg_advisory_unlock_all()")
        .execute(&mut holder)
        .await
        .unwrap();

    // The connection serves the next round, and only the first is kept.
    let next = round("Alice sings in a choir", "Bob rows on Saturdays");
    assert!(store.add_round(next, THRESHOLD).await.unwrap().is_some());
    assert_eq!(
        texts_of(&store, "alice").await,
        ["Alice keeps bees", "Alice sings in a choir"]
    );
    assert_eq!(
        texts_of(&store, "bob").await,
        ["Bob collects typewriters", "Bob rows on Saturdays"]
    );
}
