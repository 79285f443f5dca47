//! The store conformance suite: one generic body per behaviour, run against
//! every `Store` implementation (SQLite, and PostgreSQL + pgvector on the
//! server `ENGRAM_TEST_DATABASE_URL` names), and PostgreSQL once more
//! through a real PgBouncer in transaction pooling mode (`pgbouncer`: the
//! requests through it, sessions on the direct URLs, as on Supabase). A
//! backend that passes here behaves like the others as far as the service
//! can tell.

use crate::common;

use std::sync::Arc;

use common::pgbouncer::PgBouncer;
use common::postgres::TestDatabase;
use engram::embed::{Embedder, EmbedderIdentity, HashEmbedder};
use engram::keywords;
use engram::model::{Event, Memory, MemoryId, Metadata, MetadataFilter, Scope};
use engram::store::prelude::*;
use engram::store::{
    Access, InsertOutcome, KeyState, ListingKey, NewMemory, NewPending, PgOptions, PgStore, Pooler,
    Scored, SearchScope, Selection, SqliteStore, StoreError, SupersedeOutcome, UserExport,
    UserStats,
};
use serde_json::json;

const DIMS: usize = 384;

/// Where a backend keeps its data; dropped after the store.
enum Place {
    Sqlite {
        _dir: tempfile::TempDir,
    },
    Postgres {
        db: TestDatabase,
        /// How the store was opened, for a second instance.
        options: Box<PgOptions>,
        /// The pooler in front, when there is one; stopped after the store.
        _pooler: Option<PgBouncer>,
    },
}

struct Backend {
    store: Arc<dyn Store>,
    url: String,
    place: Place,
}

/// How the PostgreSQL backend opens: the two-role setup, so every call runs
/// as a role the row-level security policies bind.
fn two_roles(db: &TestDatabase) -> PgOptions {
    PgOptions {
        owner_url: Some(db.owner_url.clone()),
        ..PgOptions::default()
    }
}

impl Backend {
    /// A second store instance on the same database, as another process would open it.
    async fn open_again(&self, embedder: EmbedderIdentity) -> Result<Arc<dyn Store>, StoreError> {
        Ok(match self.place {
            Place::Sqlite { .. } => Arc::new(SqliteStore::open(&self.url, embedder).await?),
            Place::Postgres { ref options, .. } => {
                Arc::new(PgStore::open(&self.url, embedder, (**options).clone()).await?)
            }
        })
    }
}

async fn sqlite() -> Backend {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/engram.db", dir.path().display());
    let store = SqliteStore::open(&url, HashEmbedder::new(DIMS).identity())
        .await
        .unwrap();
    Backend {
        store: Arc::new(store),
        url,
        place: Place::Sqlite { _dir: dir },
    }
}

async fn postgres() -> Backend {
    let db = TestDatabase::create().await;
    let options = two_roles(&db);
    let store = PgStore::open(
        &db.app_url,
        HashEmbedder::new(DIMS).identity(),
        options.clone(),
    )
    .await
    .unwrap();
    Backend {
        store: Arc::new(store),
        url: db.app_url.clone(),
        place: Place::Postgres {
            db,
            options: Box::new(options),
            _pooler: None,
        },
    }
}

/// PostgreSQL with requests through PgBouncer in transaction mode, as
/// Supabase's pooler on port 6543: the runtime role's requests through
/// it, its session work on the direct URL, setup as the owner.
async fn pgbouncer() -> Backend {
    let db = TestDatabase::create().await;
    let pooler = PgBouncer::start().await;
    let options = PgOptions {
        direct_url: Some(db.app_url.clone()),
        pooler: Pooler::Transaction,
        ..two_roles(&db)
    };
    let url = pooler.url(&db.app_url);
    let store = PgStore::open(&url, HashEmbedder::new(DIMS).identity(), options.clone())
        .await
        .unwrap_or_else(|e| panic!("opening through pgbouncer: {e}\n{}", pooler.log()));
    Backend {
        store: Arc::new(store),
        url,
        place: Place::Postgres {
            db,
            options: Box::new(options),
            _pooler: Some(pooler),
        },
    }
}

fn new_memory(scope: &Scope, text: &str, metadata: serde_json::Value) -> NewMemory {
    NewMemory {
        id: MemoryId::new(),
        scope: scope.clone(),
        content: text.to_owned(),
        embedding: HashEmbedder::new(DIMS).embed(text),
        metadata: metadata.as_object().cloned().unwrap_or_default(),
        categories: vec![],
        actor: "user".into(),
        expires_at: None,
    }
}

fn scope(user: &str, agent: Option<&str>, run: Option<&str>) -> Scope {
    Scope::new(user, agent, run).unwrap()
}

async fn add(
    store: &dyn Store,
    scope: &Scope,
    text: &str,
    metadata: serde_json::Value,
) -> MemoryId {
    match store
        .insert(new_memory(scope, text, metadata), 0.9)
        .await
        .unwrap()
    {
        InsertOutcome::Added(m) => m.id,
        InsertOutcome::Duplicate { .. } => panic!("unexpected duplicate for {text}"),
    }
}

async fn keyword_and_vector_search_find_the_memory(b: Backend) {
    let s = b.store.as_ref();
    let alice = scope("alice", None, None);
    let id = add(s, &alice, "I love espresso in Lisbon", json!({})).await;
    add(s, &alice, "My dog is called Rex", json!({})).await;
    let at = SearchScope::unfiltered(&alice);

    let kw = s.keyword_search(at, "espresso", 10).await.unwrap();
    assert_eq!(kw.len(), 1, "{kw:?}");
    assert_eq!(kw[0].id, id);
    assert!(kw[0].score > 0.0);

    let q = HashEmbedder::new(DIMS).embed("espresso Lisbon");
    let vec = s.vector_search(at, &q, 10).await.unwrap();
    assert_eq!(vec.len(), 2);
    assert_eq!(vec[0].id, id);
    assert!(vec[0].score > vec[1].score);
}

async fn users_never_see_each_other(b: Backend) {
    let s = b.store.as_ref();
    let alice = scope("alice", None, None);
    let bob = scope("bob", None, None);
    let a = add(
        s,
        &alice,
        "Alice's secret: the vault code is 1234",
        json!({}),
    )
    .await;
    let at = SearchScope::unfiltered(&bob);
    assert!(
        s.keyword_search(at, "vault code secret", 10)
            .await
            .unwrap()
            .is_empty()
    );
    let q = HashEmbedder::new(DIMS).embed("Alice's secret: the vault code is 1234");
    assert!(s.vector_search(at, &q, 10).await.unwrap().is_empty());
    assert!(s.get_many("bob", &[a]).await.unwrap().is_empty());
    assert!(!s.delete("bob", a, None).await.unwrap());
    assert_eq!(s.get_many("alice", &[a]).await.unwrap().len(), 1);
    // A near-identical text for bob is not a duplicate of alice's.
    add(s, &bob, "Alice's secret: the vault code is 1234", json!({})).await;
}

async fn duplicates_are_refused_even_concurrently(b: Backend) {
    let s = b.store.clone();
    let alice = scope("alice", None, None);
    let first = add(
        s.as_ref(),
        &alice,
        "I prefer window seats on long flights",
        json!({}),
    )
    .await;
    match s
        .insert(
            new_memory(&alice, "I prefer window seats on long flights!", json!({})),
            0.9,
        )
        .await
        .unwrap()
    {
        InsertOutcome::Duplicate {
            existing,
            similarity,
        } => {
            assert_eq!(existing.id, first);
            assert!(similarity >= 0.9);
        }
        other => panic!("expected duplicate, got {other:?}"),
    }
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let s = s.clone();
        let alice = alice.clone();
        tasks.push(tokio::spawn(async move {
            s.insert(new_memory(&alice, "Allergic to peanuts", json!({})), 0.9)
                .await
                .unwrap()
        }));
    }
    let mut added = 0;
    for t in tasks {
        if matches!(t.await.unwrap(), InsertOutcome::Added(_)) {
            added += 1;
        }
    }
    assert_eq!(added, 1);
    let (_, total) = s.recent(&alice, 100).await.unwrap();
    assert_eq!(total, 2);
}

async fn scopes_and_metadata_filters_narrow(b: Backend) {
    let s = b.store.as_ref();
    let a1 = scope("alice", Some("travel-agent"), Some("run-1"));
    let a2 = scope("alice", Some("chef"), None);
    let t = add(
        s,
        &a1,
        "Flying to Tokyo in March",
        json!({"topic": "travel", "n": 1}),
    )
    .await;
    let c = add(
        s,
        &a2,
        "Cooking ramen in Tokyo style",
        json!({"topic": "food", "n": 2}),
    )
    .await;
    let (agent, run) = (Some("travel-agent"), Some("run-1"));
    assert_eq!(
        search(s, scope("alice", agent, None), json!({}), "Tokyo").await,
        [vec![t], vec![t]]
    );
    assert_eq!(
        search(s, scope("alice", agent, run), json!({}), "Tokyo").await,
        [vec![t], vec![t]]
    );
    let other_run = scope("alice", agent, Some("run-2"));
    assert_eq!(
        search(s, other_run, json!({}), "Tokyo").await,
        [vec![], vec![]]
    );

    // Another user's memory under the same agent and run names stays theirs.
    add(
        s,
        &scope("bob", agent, run),
        "Bob is flying to Tokyo too",
        json!({}),
    )
    .await;
    assert_eq!(
        search(s, scope("alice", agent, run), json!({}), "Tokyo").await,
        [vec![t], vec![t]]
    );

    let alice = || scope("alice", None, None);
    assert_eq!(
        search(s, alice(), json!({"topic": "food"}), "Tokyo").await,
        [vec![c], vec![c]]
    );
    // Numbers match numbers, not strings.
    assert_eq!(
        search(s, alice(), json!({"n": "1"}), "Tokyo").await,
        [vec![], vec![]]
    );
    assert_eq!(
        search(s, alice(), json!({"n": 1}), "Tokyo").await,
        [vec![t], vec![t]]
    );
}

/// A filter's number matches a stored number of equal value whichever way
/// either was written (`5.0` and `5`); strings and booleans stay apart.
async fn filter_numbers_compare_by_value(b: Backend) {
    let s = b.store.as_ref();
    let alice = || scope("alice", None, None);
    let id = add(
        s,
        &alice(),
        "Booked the Tokyo flight",
        json!({"n": 5, "r": 7.0, "x": 2.5, "flag": true}),
    )
    .await;
    for filter in [
        json!({"n": 5}),
        json!({"n": 5.0}),
        json!({"r": 7}),
        json!({"r": 7.0}),
        json!({"x": 2.5, "n": 5.0}),
        json!({"flag": true}),
    ] {
        assert_eq!(
            search(s, alice(), filter.clone(), "Tokyo").await,
            [vec![id], vec![id]],
            "{filter}"
        );
    }
    for filter in [
        json!({"n": "5"}),
        json!({"n": 5.5}),
        json!({"x": 2}),
        json!({"flag": 1}),
        json!({"n": true}),
    ] {
        assert_eq!(
            search(s, alice(), filter.clone(), "Tokyo").await,
            [vec![], vec![]],
            "{filter}"
        );
    }
}

/// The ids found by vector search and by keyword search for `query` within
/// `scope` and the metadata `filter`, best first.
async fn search(
    s: &dyn Store,
    scope: Scope,
    filter: serde_json::Value,
    query: &str,
) -> [Vec<MemoryId>; 2] {
    let filter: Metadata = filter.as_object().cloned().unwrap_or_default();
    let filter = MetadataFilter::parse(Some(&filter)).unwrap();
    let at = SearchScope {
        scope: &scope,
        filter: &filter,
    };
    let q = HashEmbedder::new(DIMS).embed(query);
    let ids = |hits: Vec<engram::store::Hit>| hits.iter().map(|h| h.id).collect::<Vec<_>>();
    [
        ids(s.vector_search(at, &q, 10).await.unwrap()),
        ids(s.keyword_search(at, query, 10).await.unwrap()),
    ]
}

async fn delete_removes_rows_history_and_index(b: Backend) {
    let s = b.store.as_ref();
    let alice = scope("alice", None, None);
    let a = add(s, &alice, "Likes green tea", json!({})).await;
    let b2 = add(s, &alice, "Works as a nurse in Oslo", json!({})).await;
    let history = s.history("alice", a).await.unwrap();
    assert_eq!(history.len(), 1);
    assert_eq!(history[0].event, Event::Add);
    assert_eq!(history[0].new_memory.as_deref(), Some("Likes green tea"));
    assert_eq!(history[0].old_memory, None);
    assert_eq!(history[0].actor, "user");

    assert!(s.delete("alice", a, None).await.unwrap());
    assert!(!s.delete("alice", a, None).await.unwrap());
    assert!(s.history("alice", a).await.unwrap().is_empty());
    let at = SearchScope::unfiltered(&alice);
    assert!(
        s.keyword_search(at, "green tea", 10)
            .await
            .unwrap()
            .is_empty()
    );
    let q = HashEmbedder::new(DIMS).embed("Likes green tea");
    let ids: Vec<_> = s
        .vector_search(at, &q, 10)
        .await
        .unwrap()
        .iter()
        .map(|h| h.id)
        .collect();
    assert_eq!(ids, vec![b2]);
    // The same text can be remembered again after being forgotten.
    add(s, &alice, "Likes green tea", json!({})).await;

    assert_eq!(s.delete_user("alice", None).await.unwrap(), 2);
    assert!(s.vector_search(at, &q, 10).await.unwrap().is_empty());
    assert!(s.keyword_search(at, "nurse", 10).await.unwrap().is_empty());
    assert_eq!(s.recent(&alice, 10).await.unwrap().1, 0);
    assert!(s.history("alice", b2).await.unwrap().is_empty());
}

async fn a_second_instance_on_the_same_database_stays_coherent(b: Backend) {
    let other = b
        .open_again(HashEmbedder::new(DIMS).identity())
        .await
        .unwrap();
    let alice = scope("alice", None, None);
    let at = SearchScope::unfiltered(&alice);
    let q = HashEmbedder::new(DIMS).embed("sailing boats");
    // Warm the other instance's copy (vectors and keywords), then write
    // through the first: both signals see the write.
    assert!(other.vector_search(at, &q, 10).await.unwrap().is_empty());
    assert!(
        other
            .keyword_search(at, "sailing", 10)
            .await
            .unwrap()
            .is_empty()
    );
    let id = add(b.store.as_ref(), &alice, "Loves sailing boats", json!({})).await;
    let hits = other.vector_search(at, &q, 10).await.unwrap();
    assert_eq!(hits.first().map(|h| h.id), Some(id));
    let hits = other.keyword_search(at, "sailing", 10).await.unwrap();
    assert_eq!(hits.iter().map(|h| h.id).collect::<Vec<_>>(), [id]);
    let both = other
        .candidates(at, &q, "sailing", 10, &|_: &[Scored]| Vec::new(), None)
        .await
        .unwrap();
    assert!(
        both.scored.iter().any(|c| c.id == id && c.keyword > 0.0),
        "{both:?}"
    );
    // And a duplicate written through the other instance is still refused.
    let dup = other
        .insert(new_memory(&alice, "Loves sailing boats", json!({})), 0.9)
        .await
        .unwrap();
    assert!(matches!(dup, InsertOutcome::Duplicate { .. }));
    assert!(b.store.delete("alice", id, None).await.unwrap());
    assert!(other.vector_search(at, &q, 10).await.unwrap().is_empty());
    assert!(
        other
            .keyword_search(at, "sailing", 10)
            .await
            .unwrap()
            .is_empty()
    );
}

async fn memories_matching_more_query_words_rank_first(b: Backend) {
    let s = b.store.as_ref();
    let alice = scope("alice", None, None);
    let places = [
        "Rome", "Oslo", "Lima", "Kyoto", "Cairo", "Quito", "Hanoi", "Dakar",
    ];
    let hobbies = ["chess", "tennis", "poetry", "karate", "origami", "salsa"];
    for place in places {
        for hobby in hobbies {
            add(
                s,
                &alice,
                &format!("Drinks espresso in {place} after {hobby}"),
                json!({}),
            )
            .await;
        }
    }
    let mut both = Vec::new();
    for hobby in ["rowing", "fencing", "juggling"] {
        both.push(
            add(
                s,
                &alice,
                &format!("Drinks espresso in Lisbon after {hobby}"),
                json!({}),
            )
            .await,
        );
    }
    both.sort();
    let at = SearchScope::unfiltered(&alice);
    // Fewer two-word matches than asked for: they come first, then one-word ones.
    let hits = s.keyword_search(at, "espresso Lisbon", 10).await.unwrap();
    assert_eq!(hits.len(), 10);
    let mut top: Vec<MemoryId> = hits[..3].iter().map(|h| h.id).collect();
    top.sort();
    assert_eq!(top, both);
    assert!(hits[2].score > hits[3].score, "{hits:?}");
    // As many as asked for: only two-word matches.
    let hits = s.keyword_search(at, "espresso Lisbon", 2).await.unwrap();
    assert!(hits.iter().all(|h| both.contains(&h.id)), "{hits:?}");
}

/// Keyword relevance is BM25 over the user's own current memories, exactly as
/// `engram::keywords` defines it, on every store: the scores, and so the
/// ranking, are recomputed here from the texts and must match. Another
/// user's words, closed memories and replaced texts must not count.
async fn keyword_scores_are_bm25_over_the_users_current_memories(b: Backend) {
    let s = b.store.as_ref();
    let alice = scope("alice", None, None);
    let bob = scope("bob", None, None);
    let texts = [
        "Espresso in Lisbon every weekend",
        "We drank espresso after the long hike near Sintra",
        "Lisbon trams are yellow",
        "Weekend plans: painting the kitchen, then espresso",
        "My sister paints landscapes of the Lisbon coast on weekends",
        "The espresso machine broke again",
        "Dinner with Maria",
    ];
    let mut ids = Vec::new();
    for text in texts {
        ids.push(add(s, &alice, text, json!({})).await);
    }
    // Gone or changed: must leave no trace in alice's statistics.
    let closed = add(s, &alice, "Espresso espresso espresso Lisbon", json!({})).await;
    assert!(s.close("alice", closed, "user").await.unwrap());
    let changed = add(s, &alice, "Lisbon Lisbon Lisbon weekend", json!({})).await;
    let replaced_text = "Tea in Porto";
    s.update(
        "alice",
        changed,
        replaced_text,
        &HashEmbedder::new(DIMS).embed(replaced_text),
        "user",
    )
    .await
    .unwrap()
    .unwrap();
    // Bob's words are everywhere in his memories; alice's scores ignore them.
    for i in 0..20 {
        add(
            s,
            &bob,
            &format!("espresso Lisbon weekend number {i}"),
            json!({}),
        )
        .await;
    }

    let current: Vec<(MemoryId, &str)> = ids
        .iter()
        .copied()
        .zip(texts)
        .chain([(changed, replaced_text)])
        .collect();
    let query = "Where does she drink espresso in Lisbon at the weekend?";
    let terms = keywords::query_terms(query);
    let docs: Vec<keywords::DocumentTerms> = current
        .iter()
        .map(|(_, t)| keywords::document_terms(t))
        .collect();
    let corpus = keywords::Corpus {
        docs: docs.len() as u64,
        total_length: docs.iter().map(|d| u64::from(d.length)).sum(),
    };
    let tf = |doc: &keywords::DocumentTerms, term: &str| {
        doc.counts
            .iter()
            .find(|(t, _)| t == term)
            .map_or(0, |(_, n)| *n)
    };
    let doc_freq: Vec<u64> = terms
        .iter()
        .map(|t| docs.iter().filter(|d| tf(d, t) > 0).count() as u64)
        .collect();
    let bm25 = keywords::Bm25::new(corpus, &doc_freq);
    let mut expected: Vec<(MemoryId, f32)> = current
        .iter()
        .zip(&docs)
        .map(|((id, _), doc)| {
            let matches = terms
                .iter()
                .enumerate()
                .map(|(i, t)| (i, tf(doc, t)))
                .filter(|(_, n)| *n > 0);
            (*id, bm25.score(doc.length, matches))
        })
        .filter(|(_, score)| *score > 0.0)
        .collect();
    expected.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    assert_eq!(expected.len(), 6, "the fixture matches six memories");

    let at = SearchScope::unfiltered(&alice);
    let hits = s.keyword_search(at, query, 10).await.unwrap();
    let got: Vec<MemoryId> = hits.iter().map(|h| h.id).collect();
    let want: Vec<MemoryId> = expected.iter().map(|(id, _)| *id).collect();
    assert_eq!(got, want, "ranking: {hits:?} vs {expected:?}");
    for (hit, (_, score)) in hits.iter().zip(&expected) {
        assert!((hit.score - score).abs() < 1e-4, "{hits:?} vs {expected:?}");
    }
    // Three of the query's four terms ("drink" is in no memory: "drank"
    // stems apart), one of them rare: a little under half the query's weight.
    assert!(hits[0].score > 0.4 && hits[0].score <= 1.0, "{hits:?}");
    // A limit cuts the same ranking.
    let top2 = s.keyword_search(at, query, 2).await.unwrap();
    assert_eq!(top2.iter().map(|h| h.id).collect::<Vec<_>>(), want[..2]);

    // score() gives the same keyword relevance, the cosine, and skips what
    // is not a current memory of the user.
    let vector = HashEmbedder::new(DIMS).embed(query);
    let bobs = add(s, &bob, "espresso in Lisbon", json!({})).await;
    let asked = [want[0], ids[6], closed, bobs, MemoryId::new()];
    let mut scored = s.score("alice", &asked, &vector, query).await.unwrap();
    scored.sort_by_key(|x| x.id);
    let mut expect_ids = vec![want[0], ids[6]];
    expect_ids.sort();
    assert_eq!(
        scored.iter().map(|x| x.id).collect::<Vec<_>>(),
        expect_ids,
        "{scored:?}"
    );
    for x in &scored {
        let text = current.iter().find(|(id, _)| *id == x.id).unwrap().1;
        let cosine = engram::embed::dot(&vector, &HashEmbedder::new(DIMS).embed(text));
        assert!((x.similarity - cosine).abs() < 1e-4, "{x:?} vs {cosine}");
        let keyword = expected
            .iter()
            .find(|(id, _)| *id == x.id)
            .map_or(0.0, |(_, k)| *k);
        assert!((x.keyword - keyword).abs() < 1e-4, "{x:?} vs {keyword}");
    }
    // Function words alone search nothing.
    assert!(
        s.keyword_search(at, "what is it?", 10)
            .await
            .unwrap()
            .is_empty()
    );
}

/// A narrowed keyword search returns the best of the scope, not the best of
/// the user cut down afterwards: with hundreds of better matches outside the
/// agent, its own memories still fill the limit, in the user-wide order.
async fn a_narrowed_keyword_search_returns_the_scopes_best(b: Backend) {
    let s = b.store.as_ref();
    let mut in_agent = Vec::new();
    for i in 0..400 {
        // Outside the agent: short, so they outrank the agent's memories.
        let other = scope("alice", Some("other"), None);
        add(s, &other, &format!("espresso walk {i}"), json!({})).await;
        if i % 20 == 0 {
            let mine = scope("alice", Some("mine"), None);
            let text = format!("an espresso after the long walk by the river, number {i}");
            in_agent.push(add(s, &mine, &text, json!({})).await);
        }
    }
    let none = MetadataFilter::default();
    let everyone = scope("alice", None, None);
    let all = s
        .keyword_search(
            SearchScope {
                scope: &everyone,
                filter: &none,
            },
            "espresso walk",
            1000,
        )
        .await
        .unwrap();
    let expected: Vec<MemoryId> = all
        .iter()
        .map(|h| h.id)
        .filter(|id| in_agent.contains(id))
        .take(10)
        .collect();
    assert_eq!(expected.len(), 10);
    let mine = scope("alice", Some("mine"), None);
    let hits = s
        .keyword_search(
            SearchScope {
                scope: &mine,
                filter: &none,
            },
            "espresso walk",
            10,
        )
        .await
        .unwrap();
    assert_eq!(hits.iter().map(|h| h.id).collect::<Vec<_>>(), expected);
    let first_mine = all.iter().position(|h| in_agent.contains(&h.id)).unwrap();
    assert!(
        first_mine >= 400,
        "the agent's memories rank behind the rest: {first_mine}"
    );
    // Scores do not change with the scope: the statistics are the user's.
    for hit in &hits {
        let same = all.iter().find(|h| h.id == hit.id).unwrap();
        assert!((same.score - hit.score).abs() < 1e-6);
    }
}

/// A store's one-pass recall candidates are the two searches' candidates
/// with both relevances, as the provided three steps compute them: same
/// memories (ties at the cut aside, none here), same scores.
async fn candidates_agree_with_the_two_searches(b: Backend) {
    let s = b.store.as_ref();
    let alice = scope("alice", None, None);
    let mine = scope("alice", Some("mine"), None);
    for i in 0..60 {
        let place = ["Lisbon", "Porto", "Faro"][i % 3];
        let drink = ["espresso", "green tea", "hot chocolate", "orange juice"][i % 4];
        let text = format!("On day {i} I had {drink} in {place} with friend {}", i * 7);
        let at = if i % 5 == 0 { &mine } else { &alice };
        add(s, at, &text, json!({"n": i % 2})).await;
    }
    let none = MetadataFilter::default();
    let odd = MetadataFilter::parse(json!({"n": 1}).as_object()).unwrap();
    for (who, filter) in [(&alice, &none), (&mine, &none), (&alice, &odd)] {
        let at = SearchScope { scope: who, filter };
        for query in [
            "espresso in Lisbon",
            "a hot drink with a friend",
            "what did I have?",
        ] {
            let vector = HashEmbedder::new(DIMS).embed(query);
            let one_pass = common::candidates_as_in_steps(s, at, &vector, query, 8).await;
            assert!(!one_pass.is_empty(), "{query}");
        }
    }
}

/// A search that names the user's version answers as the plain search
/// does, and the version it names is the user's version. The reconciler's
/// search of a small user answers as that search, and the memories it
/// loads (PostgreSQL) are exactly those of its hits from the score asked
/// for, as the store reads them by id.
async fn a_search_at_a_version_answers_as_the_plain_search(b: Backend) {
    let s = b.store.as_ref();
    let alice = scope("alice", None, None);
    let mine = scope("alice", Some("mine"), None);
    let none = MetadataFilter::default();
    let queries: Vec<Vec<f32>> = ["espresso in Lisbon", "a hot drink", "green tea in Faro"]
        .iter()
        .map(|q| HashEmbedder::new(DIMS).embed(q))
        .collect();
    let whole = SearchScope {
        scope: &alice,
        filter: &none,
    };
    let nothing = s.nearest(whole, &queries[0], 5).await.unwrap();
    assert_eq!(
        nothing,
        Default::default(),
        "no memories, no hits, no version"
    );

    for i in 0..24 {
        let place = ["Lisbon", "Porto", "Faro"][i % 3];
        let drink = ["espresso", "green tea", "hot chocolate", "orange juice"][i % 4];
        let text = format!("On day {i} I had {drink} in {place}");
        add(s, if i % 4 == 0 { &mine } else { &alice }, &text, json!({})).await;
    }
    let version = s.version("alice").await.unwrap();
    for who in [&alice, &mine] {
        let at = SearchScope {
            scope: who,
            filter: &none,
        };
        for query in &queries {
            let found = s.nearest(at, query, 5).await.unwrap();
            let alone = s.vector_search(at, query, 5).await.unwrap();
            assert_eq!(ids(&found.hits), ids(&alone));
            for (a, b) in found.hits.iter().zip(&alone) {
                assert!((a.score - b.score).abs() < 1e-6, "{a:?} {b:?}");
            }
            assert!(
                found.version.is_none() || found.version == version,
                "{:?} is not the user's version {version:?}",
                found.version
            );
            assert_eq!(found.memories, None, "no memories asked for");

            // From the third hit's score: the first three (or more, tied).
            let from = found.hits[2].score;
            let loaded = s.similar(at, query, 5, Some(from)).await.unwrap();
            assert_eq!(ids(&loaded.hits), ids(&found.hits));
            // PostgreSQL reads them in the search's statement; SQLite's
            // reads by id cost no round trip, so it leaves them to the caller.
            let in_statement = matches!(b.place, Place::Postgres { .. });
            assert_eq!(loaded.memories.is_some(), in_statement);
            if let Some(mut memories) = loaded.memories {
                let wanted: Vec<MemoryId> = found
                    .hits
                    .iter()
                    .filter(|h| h.score >= from)
                    .map(|h| h.id)
                    .collect();
                assert!(wanted.len() >= 3, "{found:?}");
                let mut by_id = s.get_many("alice", &wanted).await.unwrap();
                memories.sort_by_key(|m| m.id.0);
                by_id.sort_by_key(|m| m.id.0);
                assert_eq!(memories, by_id, "the hits from {from}, as read by id");
            }
        }
    }
    let empty = s.similar(whole, &queries[0], 0, Some(0.0)).await.unwrap();
    assert!(empty.hits.is_empty());
    assert!(empty.memories.is_none_or(|m| m.is_empty()));

    // Every fact's search at once, as each on its own.
    let at = SearchScope {
        scope: &alice,
        filter: &none,
    };
    let all = s
        .similar_all(at, &queries, 5, Some(0.0), None)
        .await
        .unwrap();
    assert_eq!(all.len(), queries.len());
    for (query, together) in queries.iter().zip(all) {
        let alone = s.similar(at, query, 5, Some(0.0)).await.unwrap();
        assert_eq!(ids(&together.hits), ids(&alone.hits));
        assert_eq!(together.version, alone.version);
        let sorted = |memories: Option<Vec<engram::model::Memory>>| {
            memories.map(|mut m| {
                m.sort_by_key(|m| m.id.0);
                m
            })
        };
        assert_eq!(sorted(together.memories), sorted(alone.memories));
    }
    let none_asked = s
        .similar_all(at, &queries, 0, Some(0.0), None)
        .await
        .unwrap();
    assert_eq!(none_asked.len(), queries.len());
    assert!(none_asked.iter().all(|n| n.hits.is_empty()));
}

async fn a_changed_detail_is_not_a_duplicate(b: Backend) {
    let s = b.store.as_ref();
    let alice = scope("alice", None, None);
    add(s, &alice, "I am allergic to peanuts", json!({})).await;
    // Cosine 0.92 with the hash embedder, but the negation changes the fact.
    let not = add(s, &alice, "I am not allergic to peanuts", json!({})).await;
    add(s, &alice, "My flight is on March 3", json!({})).await;
    add(s, &alice, "My flight is on March 5", json!({})).await;
    match s
        .insert(
            new_memory(&alice, "I am not allergic to peanuts", json!({})),
            0.9,
        )
        .await
        .unwrap()
    {
        InsertOutcome::Duplicate { existing, .. } => assert_eq!(existing.id, not),
        other => panic!("expected a duplicate, got {other:?}"),
    }
    assert_eq!(s.recent(&alice, 10).await.unwrap().1, 4);
}

async fn reembedding_rebuilds_every_vector(b: Backend) {
    let alice = scope("alice", None, None);
    let id = add(
        b.store.as_ref(),
        &alice,
        "Collects vintage fountain pens",
        json!({}),
    )
    .await;
    add(
        b.store.as_ref(),
        &scope("bob", None, None),
        "Runs marathons",
        json!({}),
    )
    .await;
    let small = HashEmbedder::new(128);
    let done = match b.place {
        Place::Sqlite { .. } => SqliteStore::reembed(&b.url, &small).await.unwrap(),
        // Rewriting a column's type is the owner's work.
        Place::Postgres { ref db, .. } => {
            PgStore::reembed(&db.owner_url, &small, Default::default())
                .await
                .unwrap()
        }
    };
    assert_eq!(done, 2);
    // The old embedder is now the wrong one; the new one opens and finds.
    assert!(
        b.open_again(HashEmbedder::new(DIMS).identity())
            .await
            .is_err()
    );
    let store = b.open_again(small.identity()).await.unwrap();
    let at = SearchScope::unfiltered(&alice);
    let hits = store
        .vector_search(at, &small.embed("vintage fountain pens"), 5)
        .await
        .unwrap();
    assert_eq!(hits.iter().map(|h| h.id).collect::<Vec<_>>(), vec![id]);
    assert!(hits[0].score > 0.5);
    // Dedup works on the new vectors too.
    let dup = store
        .insert(
            NewMemory {
                embedding: small.embed("Collects vintage fountain pens"),
                ..new_memory(&alice, "Collects vintage fountain pens", json!({}))
            },
            0.9,
        )
        .await
        .unwrap();
    assert!(matches!(dup, InsertOutcome::Duplicate { .. }));
}

async fn a_different_embedder_is_refused(b: Backend) {
    add(
        b.store.as_ref(),
        &scope("alice", None, None),
        "anything",
        json!({}),
    )
    .await;
    let err = match b.open_again(HashEmbedder::new(128).identity()).await {
        Err(e) => e,
        Ok(_) => panic!("opened with a different embedder"),
    };
    assert!(matches!(err, StoreError::EmbedderMismatch { .. }));
    let text = err.to_string();
    assert!(
        text.contains("384") && text.contains("128") && text.contains("reembed"),
        "{text}"
    );
}

/// Every write moves the writer's version to a value never seen before; a
/// duplicate (no write) and other users' writes leave it; a second instance
/// reads the same version; a full forget leaves none, and the next write
/// never returns to an old one.
async fn every_write_moves_the_users_version_to_a_new_value(b: Backend) {
    let s = b.store.as_ref();
    let alice = scope("alice", None, None);
    let bob = scope("bob", None, None);
    assert_eq!(s.version("alice").await.unwrap(), None);

    let mut seen = Vec::new();
    let first = add(s, &alice, "I live in Porto", json!({})).await;
    let v1 = s
        .version("alice")
        .await
        .unwrap()
        .expect("a version after a write");
    seen.push(v1);

    let again = s
        .insert(new_memory(&alice, "I live in Porto", json!({})), 0.9)
        .await;
    assert!(matches!(again.unwrap(), InsertOutcome::Duplicate { .. }));
    assert_eq!(
        s.version("alice").await.unwrap(),
        Some(v1),
        "no write, no move"
    );

    add(s, &bob, "Bob plays chess", json!({})).await;
    assert_eq!(
        s.version("alice").await.unwrap(),
        Some(v1),
        "bob's write is bob's"
    );
    let other = b
        .open_again(HashEmbedder::new(DIMS).identity())
        .await
        .unwrap();
    assert_eq!(other.version("alice").await.unwrap(), Some(v1));

    add(s, &alice, "My sister is called Ana", json!({})).await;
    let v2 = s.version("alice").await.unwrap().unwrap();
    assert!(!seen.contains(&v2), "{v2} reused");
    seen.push(v2);
    assert_eq!(other.version("alice").await.unwrap(), Some(v2));

    assert!(other.delete("alice", first, None).await.unwrap());
    let v3 = s.version("alice").await.unwrap().unwrap();
    assert!(!seen.contains(&v3), "{v3} reused");
    seen.push(v3);
    assert!(!s.delete("alice", first, None).await.unwrap());
    assert_eq!(
        s.version("alice").await.unwrap(),
        Some(v3),
        "nothing deleted"
    );

    assert_eq!(s.delete_user("alice", None).await.unwrap(), 1);
    assert_eq!(s.version("alice").await.unwrap(), None);
    add(s, &alice, "I live in Porto", json!({})).await;
    let v4 = s.version("alice").await.unwrap().unwrap();
    assert!(!seen.contains(&v4), "{v4} came back after a full forget");
    assert!(s.version("bob").await.unwrap().is_some());
}

/// A user may hold many memories that sit close together yet each state a
/// different detail; every one is kept, and a true repeat is still caught.
async fn many_close_memories_differing_in_a_detail_are_all_kept(b: Backend) {
    let s = b.store.as_ref();
    let alice = scope("alice", None, None);
    for i in 0..150 {
        add(
            s,
            &alice,
            &format!(
                "Paid the invoice for the garden shed repairs, reference {}",
                1000 + i
            ),
            json!({}),
        )
        .await;
    }
    let again = s
        .insert(
            new_memory(
                &alice,
                "Paid the invoice for the garden shed repairs, reference 1077",
                json!({}),
            ),
            0.9,
        )
        .await
        .unwrap();
    assert!(
        matches!(again, InsertOutcome::Duplicate { .. }),
        "{again:?}"
    );
    assert_eq!(s.recent(&alice, 1).await.unwrap().1, 150);
}

fn ids(hits: &[engram::store::Hit]) -> Vec<MemoryId> {
    hits.iter().map(|h| h.id).collect()
}

/// An update changes one current memory in place: text, vector, keywords,
/// history (old and new text), version; nothing else.
async fn an_update_rewrites_one_memory_and_keeps_its_history(b: Backend) {
    let s = b.store.as_ref();
    let alice = scope("alice", None, None);
    let id = add(s, &alice, "Drinks espresso every morning", json!({})).await;
    let other = add(s, &alice, "Plays tennis on Sundays", json!({})).await;
    let v1 = s.version("alice").await.unwrap();
    let embed = |t: &str| HashEmbedder::new(DIMS).embed(t);

    let text = "Drinks flat whites every morning";
    let updated = s
        .update("alice", id, text, &embed(text), "llm")
        .await
        .unwrap()
        .expect("a current memory of alice");
    assert_eq!((updated.id, updated.memory.as_str()), (id, text));
    assert_ne!(s.version("alice").await.unwrap(), v1);

    let at = SearchScope::unfiltered(&alice);
    assert_eq!(
        ids(&s.keyword_search(at, "flat whites", 10).await.unwrap()),
        [id]
    );
    assert!(
        s.keyword_search(at, "espresso", 10)
            .await
            .unwrap()
            .is_empty()
    );
    let nearest = s.vector_search(at, &embed(text), 1).await.unwrap();
    assert_eq!(nearest[0].id, id);
    assert!(
        nearest[0].score > 0.99,
        "the vector was replaced: {nearest:?}"
    );
    let again = b
        .open_again(HashEmbedder::new(DIMS).identity())
        .await
        .unwrap();
    assert_eq!(
        ids(&again.vector_search(at, &embed(text), 1).await.unwrap()),
        [id]
    );

    let history = s.history("alice", id).await.unwrap();
    let events: Vec<_> = history.iter().map(|h| h.event).collect();
    assert_eq!(events, [Event::Add, Event::Update]);
    assert_eq!(
        history[1].old_memory.as_deref(),
        Some("Drinks espresso every morning")
    );
    assert_eq!(history[1].new_memory.as_deref(), Some(text));
    assert_eq!(history[1].actor, "llm");

    // Not alice's, or the text of another memory: nothing changes.
    assert!(
        s.update("bob", id, "x", &embed("x"), "llm")
            .await
            .unwrap()
            .is_none()
    );
    let clash = s
        .update(
            "alice",
            id,
            "Plays tennis on Sundays",
            &embed("Plays tennis on Sundays"),
            "llm",
        )
        .await;
    assert!(matches!(clash, Err(StoreError::Conflict(_))), "{clash:?}");
    let kept = s.get_many("alice", &[id, other]).await.unwrap();
    assert!(kept.iter().any(|m| m.memory == text));
    assert_eq!(s.recent(&alice, 10).await.unwrap().1, 2);
}

/// A supersede closes the old memory (out of every search, still in history)
/// and stores the new one, atomically; only an exact repeat refuses it.
async fn a_supersede_closes_the_old_memory_and_stores_the_new(b: Backend) {
    let s = b.store.as_ref();
    let alice = scope("alice", None, None);
    let old = add(s, &alice, "Works at Acme as an engineer", json!({})).await;
    add(s, &alice, "Lives in Lisbon", json!({})).await;
    let embed = |t: &str| HashEmbedder::new(DIMS).embed(t);

    // As close as a near-duplicate: the caller judged it, so it goes in.
    let replacement = new_memory(&alice, "Works at Acme as a senior engineer", json!({}));
    let new_id = replacement.id;
    let outcome = s.supersede(old, replacement).await.unwrap();
    assert!(
        matches!(&outcome, SupersedeOutcome::Superseded(m) if m.id == new_id),
        "{outcome:?}"
    );

    let at = SearchScope::unfiltered(&alice);
    let found = ids(&s
        .vector_search(at, &embed("engineer at Acme"), 10)
        .await
        .unwrap());
    assert!(
        found.contains(&new_id) && !found.contains(&old),
        "{found:?}"
    );
    assert!(!ids(&s.keyword_search(at, "engineer", 10).await.unwrap()).contains(&old));
    assert!(!found_current(s, &alice, old).await);
    assert_eq!(
        s.recent(&alice, 10).await.unwrap().1,
        2,
        "one closed, one added"
    );

    let history = s.history("alice", old).await.unwrap();
    let events: Vec<_> = history.iter().map(|h| h.event).collect();
    assert_eq!(events, [Event::Add, Event::Supersede]);
    assert_eq!(
        history[1].new_memory.as_deref(),
        Some("Works at Acme as a senior engineer")
    );
    assert_eq!(
        s.history("alice", new_id).await.unwrap()[0].event,
        Event::Add
    );

    // Closed already, someone else's, or an exact repeat: nothing changes.
    let again = new_memory(&alice, "Works at Acme as a principal engineer", json!({}));
    assert_eq!(
        s.supersede(old, again).await.unwrap(),
        SupersedeOutcome::NotFound
    );
    let bobs = new_memory(&scope("bob", None, None), "Works at Initech", json!({}));
    assert_eq!(
        s.supersede(new_id, bobs).await.unwrap(),
        SupersedeOutcome::NotFound
    );
    let repeat = new_memory(&alice, "Lives in Lisbon", json!({}));
    assert!(matches!(
        s.supersede(new_id, repeat).await.unwrap(),
        SupersedeOutcome::Duplicate(m) if m.memory == "Lives in Lisbon"
    ));
    assert_eq!(s.recent(&alice, 10).await.unwrap().1, 2);
    assert!(found_current(s, &alice, new_id).await);
}

/// Writers and readers of one user at once, more of them than a store has
/// connections: every call finishes (no lock-order cycle between a
/// connection and the user's in-process vectors) and every write lands.
async fn many_writes_and_searches_at_once_all_finish(b: Backend) {
    let s = b.store.clone();
    let alice = scope("alice", None, None);
    let seed = add(
        s.as_ref(),
        &alice,
        "Alice keeps bees in the garden",
        json!({}),
    )
    .await;
    let mut tasks = Vec::new();
    for i in 0..48 {
        let s = s.clone();
        let alice = alice.clone();
        tasks.push(tokio::spawn(async move {
            let at = SearchScope::unfiltered(&alice);
            if i % 2 == 0 {
                let text = format!("Alice visited city number {i} on a trip");
                let added = s.insert(new_memory(&alice, &text, json!({})), 0.9).await;
                assert!(matches!(added, Ok(InsertOutcome::Added(_))), "{added:?}");
            } else {
                let query = HashEmbedder::new(DIMS).embed("Alice bees garden");
                s.vector_search(at, &query, 5).await.unwrap();
            }
        }));
    }
    let all = async {
        for t in tasks {
            t.await.unwrap();
        }
    };
    tokio::time::timeout(std::time::Duration::from_secs(20), all)
        .await
        .expect("concurrent writes and searches stalled");
    let (current, total) = s.recent(&alice, 100).await.unwrap();
    assert_eq!(total, 25);
    assert!(current.iter().any(|m| m.id == seed));
}

/// A close takes one current memory out of every search and listing without
/// a successor (SUPERSEDE in its history, no new text; still readable by id,
/// like a superseded one) and moves the user's version; closing it again, or
/// another user's memory, changes nothing.
/// Every page of `user`'s listing, `per_page` at a time, from the start:
/// the ids of each page.
async fn pages(s: &dyn Store, user: &str, per_page: usize) -> Vec<Vec<MemoryId>> {
    let mut pages = Vec::new();
    let mut after = None;
    loop {
        let page = s.list(user, after, per_page).await.unwrap();
        assert!(page.len() <= per_page, "{page:?}");
        let Some(last) = page.last() else {
            return pages;
        };
        after = Some(ListingKey::of(last));
        pages.push(page.iter().map(|m| m.id).collect());
    }
}

/// The listing: a user's current, unexpired memories (any agent or run),
/// oldest first by (created_at, id), page after page from a key; nobody
/// else's. A write and a delete between two pages neither repeat nor skip
/// any other memory: pages start after a key, not at an offset.
async fn a_listing_pages_through_the_current_memories_in_creation_order(b: Backend) {
    let s = b.store.as_ref();
    let alice = scope("alice", None, None);
    let mut written = Vec::new();
    for (i, at) in [
        alice.clone(),
        scope("alice", Some("planner"), None),
        scope("alice", None, Some("run-1")),
        alice.clone(),
        alice.clone(),
    ]
    .iter()
    .enumerate()
    {
        written.push(add(s, at, &format!("alice fact {i}: {}", i * 7919), json!({})).await);
    }
    add(s, &scope("bob", None, None), "bob keeps bees", json!({})).await;
    let past = chrono::Utc::now() - chrono::Duration::seconds(1);
    add_new(s, expiring(&alice, "an expired fact", past)).await;
    let closed = add(s, &alice, "a fact that was superseded", json!({})).await;
    let successor = new_memory(&alice, "the fact that superseded it", json!({}));
    let successor_id = successor.id;
    s.supersede(closed, successor).await.unwrap();
    written.push(successor_id);

    // The order is (created_at, id), whatever order the ids alone give.
    let mut expected = s.get_many("alice", &written).await.unwrap();
    expected.sort_by_key(|m| (m.created_at, m.id));
    let expected: Vec<MemoryId> = expected.iter().map(|m| m.id).collect();
    assert_eq!(expected.len(), 6);

    let all = s.list("alice", None, 100).await.unwrap();
    assert_eq!(all.iter().map(|m| m.id).collect::<Vec<_>>(), expected);
    assert_eq!(
        all[0].memory,
        s.get_many("alice", &[all[0].id]).await.unwrap()[0].memory
    );
    let by_twos: Vec<MemoryId> = pages(s, "alice", 2).await.concat();
    assert_eq!(by_twos, expected);
    assert_eq!(pages(s, "alice", 4).await.len(), 2, "4 then 2");
    assert_eq!(pages(s, "bob", 2).await.concat().len(), 1);
    assert!(s.list("carol", None, 2).await.unwrap().is_empty());

    // A page, then a delete of a memory further on and a new memory, then
    // the rest: every other memory exactly once, the new one last.
    let first = s.list("alice", None, 2).await.unwrap();
    assert!(s.delete("alice", expected[3], None).await.unwrap());
    let late = add(s, &alice, "written between two pages", json!({})).await;
    let mut seen: Vec<MemoryId> = first.iter().map(|m| m.id).collect();
    let mut after = first.last().map(ListingKey::of);
    loop {
        let page = s.list("alice", after, 2).await.unwrap();
        let Some(last) = page.last() else { break };
        after = Some(ListingKey::of(last));
        seen.extend(page.iter().map(|m| m.id));
    }
    let mut left = expected.clone();
    left.remove(3);
    left.push(late);
    assert_eq!(seen, left);

    // A key past the end, or one another user's memory holds: a position,
    // nothing more.
    let end = s.list("alice", after, 2).await.unwrap();
    assert!(end.is_empty(), "{end:?}");
    let bobs = s.list("bob", None, 1).await.unwrap();
    let from_bobs = s
        .list("alice", Some(ListingKey::of(&bobs[0])), 100)
        .await
        .unwrap();
    assert!(
        from_bobs
            .iter()
            .all(|m| m.scope.user_id().as_str() == "alice")
    );
}

async fn a_close_retires_a_memory_without_a_successor(b: Backend) {
    let s = b.store.as_ref();
    let alice = scope("alice", None, None);
    let bob = scope("bob", None, None);
    let id = add(s, &alice, "Works at Acme as an engineer", json!({})).await;
    let kept = add(s, &alice, "Lives in Lisbon", json!({})).await;
    let bobs = add(s, &bob, "Works at Initech as an engineer", json!({})).await;
    let embed = |t: &str| HashEmbedder::new(DIMS).embed(t);
    let at = SearchScope::unfiltered(&alice);
    // Warm the in-process vectors, so the close must keep them right.
    let found = ids(&s
        .vector_search(at, &embed("engineer at Acme"), 10)
        .await
        .unwrap());
    assert!(found.contains(&id), "{found:?}");
    let v1 = s.version("alice").await.unwrap();
    let bob_version = s.version("bob").await.unwrap();

    assert!(s.close("alice", id, "llm").await.unwrap());
    let v2 = s.version("alice").await.unwrap();
    assert!(v2.is_some() && v2 != v1, "{v1:?} -> {v2:?}");
    assert_eq!(s.version("bob").await.unwrap(), bob_version);

    let found = ids(&s
        .vector_search(at, &embed("engineer at Acme"), 10)
        .await
        .unwrap());
    assert_eq!(found, [kept]);
    assert!(
        s.keyword_search(at, "engineer Acme", 10)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(!found_current(s, &alice, id).await);
    assert_eq!(s.recent(&alice, 10).await.unwrap().1, 1);
    let again = b
        .open_again(HashEmbedder::new(DIMS).identity())
        .await
        .unwrap();
    assert_eq!(
        ids(&again
            .vector_search(at, &embed("engineer at Acme"), 10)
            .await
            .unwrap()),
        [kept]
    );
    let by_id = s.get_many("alice", &[id]).await.unwrap();
    assert_eq!(
        by_id.iter().map(|m| m.memory.as_str()).collect::<Vec<_>>(),
        ["Works at Acme as an engineer"]
    );

    let history = s.history("alice", id).await.unwrap();
    let events: Vec<_> = history.iter().map(|h| h.event).collect();
    assert_eq!(events, [Event::Add, Event::Supersede]);
    assert_eq!(
        history[1].old_memory.as_deref(),
        Some("Works at Acme as an engineer")
    );
    assert_eq!(history[1].new_memory, None);
    assert_eq!(history[1].actor, "llm");

    // Closed already, or not theirs: nothing changes.
    assert!(!s.close("alice", id, "llm").await.unwrap());
    assert!(!s.close("bob", kept, "llm").await.unwrap());
    assert!(!s.close("alice", bobs, "llm").await.unwrap());
    assert_eq!(s.version("alice").await.unwrap(), v2);
    assert_eq!(s.version("bob").await.unwrap(), bob_version);
    assert_eq!(s.history("alice", id).await.unwrap().len(), 2);
    assert_eq!(s.history("alice", kept).await.unwrap().len(), 1);
    assert!(found_current(s, &alice, kept).await);
    assert!(found_current(s, &bob, bobs).await);
}

fn deferred(
    scope: &Scope,
    input: serde_json::Value,
    metadata: serde_json::Value,
    infer: bool,
    memory_ids: Vec<MemoryId>,
    error: &str,
) -> NewPending {
    NewPending {
        id: uuid::Uuid::now_v7(),
        scope: scope.clone(),
        input,
        metadata: metadata.as_object().cloned().unwrap_or_default(),
        infer,
        memory_ids,
        error: error.to_owned(),
    }
}

/// Stores `entries` in order, each a little after the one before.
async fn add_deferred(s: &dyn Store, entries: &[&NewPending]) {
    for entry in entries {
        s.add_pending((*entry).clone()).await.unwrap();
        // Distinct creation times (SQLite keeps milliseconds).
        tokio::time::sleep(std::time::Duration::from_millis(3)).await;
    }
}

/// The ids of every deferred remember, oldest first.
async fn deferred_ids(s: &dyn Store) -> Vec<uuid::Uuid> {
    let (entries, total) = s.pending(100).await.unwrap();
    assert_eq!(total, entries.len() as u64);
    entries.iter().map(|p| p.entry.id).collect()
}

/// Deferred remembers come back as stored, oldest first across users, with
/// the total; a retry counts the attempt and replaces the reason; finishing
/// drops one entry of its user once. None of it is a write to memories.
async fn deferred_remembers_round_trip_oldest_first(b: Backend) {
    let s = b.store.as_ref();
    let alice = scope("alice", Some("chat"), Some("run-7"));
    let bob = scope("bob", None, None);
    let m1 = add(s, &alice, "Drinks espresso every morning", json!({})).await;
    let m2 = add(s, &alice, "Plays chess on Sundays", json!({})).await;
    let alice_version = s.version("alice").await.unwrap();

    let first = deferred(
        &alice,
        json!({"text": "I drink espresso every morning and play chess on Sundays"}),
        json!({"source": "chat", "n": 1, "tags": ["a", "b"]}),
        true,
        vec![m1, m2],
        "the LLM timed out",
    );
    let second = deferred(
        &bob,
        json!({"messages": [{"role": "user", "content": "I moved to Porto"}]}),
        json!({}),
        false,
        vec![],
        "the embedder is unavailable",
    );
    let third = deferred(
        &alice,
        json!({"text": "Drinks espresso every morning"}),
        json!({"nested": {"x": null}}),
        true,
        vec![m1],
        "the LLM returned no JSON",
    );
    add_deferred(s, &[&first, &second, &third]).await;
    assert_eq!(s.version("alice").await.unwrap(), alice_version);
    assert_eq!(
        s.version("bob").await.unwrap(),
        None,
        "no memories, no version"
    );

    let (page, total) = s.pending(2).await.unwrap();
    assert_eq!(total, 3);
    let entries: Vec<NewPending> = page.iter().map(|p| p.entry.clone()).collect();
    assert_eq!(entries, [first.clone(), second.clone()]);
    assert!(page.iter().all(|p| p.attempts == 0), "{page:?}");
    assert!(page[0].created_at < page[1].created_at, "{page:?}");
    let age = chrono::Utc::now() - page[0].created_at;
    assert!(age.num_seconds().abs() < 60, "created {age} ago");
    let (none, total) = s.pending(0).await.unwrap();
    assert!(none.is_empty());
    assert_eq!(total, 3);

    s.retry_pending("alice", first.id, "the LLM refused")
        .await
        .unwrap();
    s.retry_pending("alice", first.id, "the LLM timed out again")
        .await
        .unwrap();
    // Another user's id: nothing changes.
    s.retry_pending("bob", first.id, "not bob's").await.unwrap();
    let (all, total) = s.pending(10).await.unwrap();
    assert_eq!(total, 3);
    assert_eq!(all.len(), 3);
    assert_eq!(
        all[0].entry,
        NewPending {
            error: "the LLM timed out again".into(),
            ..first.clone()
        }
    );
    assert_eq!(all[0].attempts, 2);
    assert_eq!(all[0].created_at, page[0].created_at);
    assert_eq!((&all[1].entry, all[1].attempts), (&second, 0));
    assert_eq!((&all[2].entry, all[2].attempts), (&third, 0));

    assert!(!s.finish_pending("bob", first.id).await.unwrap());
    assert!(s.finish_pending("alice", first.id).await.unwrap());
    assert!(!s.finish_pending("alice", first.id).await.unwrap());
    assert!(
        !s.finish_pending("alice", uuid::Uuid::now_v7())
            .await
            .unwrap()
    );
    assert_eq!(deferred_ids(s).await, [second.id, third.id]);
    assert_eq!(s.version("alice").await.unwrap(), alice_version);
    assert_eq!(s.version("bob").await.unwrap(), None);
}

/// Forgetting a memory drops the deferred remembers of its user that stored
/// it (and no other); forgetting a user drops all of theirs and nobody else's.
async fn forgetting_drops_the_deferred_remembers_that_stored_it(b: Backend) {
    let s = b.store.as_ref();
    let alice = scope("alice", None, None);
    let bob = scope("bob", None, None);
    let m1 = add(s, &alice, "Drinks espresso every morning", json!({})).await;
    let m2 = add(s, &alice, "Plays chess on Sundays", json!({})).await;
    let m3 = add(s, &alice, "Lives in Lisbon", json!({})).await;
    let bm = add(s, &bob, "Bob restores old motorcycles", json!({})).await;
    let text = |t: &str| json!({ "text": t });
    let both = deferred(
        &alice,
        text("espresso, chess"),
        json!({}),
        true,
        vec![m1, m2],
        "e",
    );
    let chess = deferred(&alice, text("chess"), json!({}), true, vec![m2], "e");
    let lisbon = deferred(&alice, text("Lisbon"), json!({}), true, vec![m3], "e");
    let nothing = deferred(&alice, text("nothing stored"), json!({}), true, vec![], "e");
    // Bob's entry names alice's memory too: forgetting hers leaves his alone.
    let bobs = deferred(
        &bob,
        text("motorcycles"),
        json!({}),
        false,
        vec![bm, m1],
        "e",
    );
    add_deferred(s, &[&both, &chess, &lisbon, &nothing, &bobs]).await;

    assert!(!s.delete("bob", m1, None).await.unwrap());
    assert_eq!(deferred_ids(s).await.len(), 5, "nothing was deleted");
    assert!(s.delete("alice", m1, None).await.unwrap());
    assert_eq!(
        deferred_ids(s).await,
        [chess.id, lisbon.id, nothing.id, bobs.id]
    );
    assert!(s.delete("alice", m2, None).await.unwrap());
    assert_eq!(deferred_ids(s).await, [lisbon.id, nothing.id, bobs.id]);

    assert_eq!(s.delete_user("alice", None).await.unwrap(), 1);
    assert_eq!(deferred_ids(s).await, [bobs.id]);
    // A user with deferred remembers only is forgotten too.
    let later = deferred(&alice, text("again"), json!({}), true, vec![], "e");
    add_deferred(s, &[&later]).await;
    assert_eq!(s.delete_user("alice", None).await.unwrap(), 0);
    assert_eq!(deferred_ids(s).await, [bobs.id]);
    assert!(found_current(s, &bob, bm).await);
}

/// API keys: stored hashed, found by hash while active, revoked once.
async fn api_keys_are_found_by_hash_until_revoked(b: Backend) {
    let s = b.store.clone();
    let (alice_key, alice) = engram::auth::generate(Some("alice".into()), "laptop".into());
    let (admin_key, admin) = engram::auth::generate(None, String::new());
    s.add_key(&alice).await.unwrap();
    s.add_key(&admin).await.unwrap();

    let listed = s.keys().await.unwrap();
    let ids: Vec<_> = listed.iter().map(|k| k.id).collect();
    assert_eq!(ids, [alice.id, admin.id], "oldest first");
    assert_eq!(listed[0].user_id.as_deref(), Some("alice"));
    assert_eq!(listed[0].label, "laptop");
    assert_eq!(listed[1].user_id, None);
    assert!(listed.iter().all(|k| !k.hash.contains(&alice_key[7..])));

    let found = s.active_key(&engram::auth::hash(&alice_key)).await.unwrap();
    assert_eq!(found.map(|k| k.id), Some(alice.id));
    assert_eq!(
        s.active_key(&engram::auth::hash(&admin_key))
            .await
            .unwrap()
            .map(|k| k.user_id),
        Some(None)
    );
    assert_eq!(
        s.active_key(&engram::auth::hash("engram_nope"))
            .await
            .unwrap(),
        None
    );

    assert!(s.revoke_key(alice.id).await.unwrap());
    assert!(!s.revoke_key(alice.id).await.unwrap(), "already revoked");
    assert!(
        !s.revoke_key(uuid::Uuid::now_v7()).await.unwrap(),
        "unknown"
    );
    assert_eq!(s.active_key(&alice.hash).await.unwrap(), None);
    assert!(s.keys().await.unwrap()[0].revoked_at.is_some());
    assert!(
        s.active_key(&admin.hash).await.unwrap().is_some(),
        "others stay"
    );
    assert!(s.add_key(&alice).await.is_err(), "one row per key");
}

/// Expiry: a key is active until its `expires_at`, refused from then on,
/// and still listed (as expired).
async fn an_expired_key_is_not_active(b: Backend) {
    let s = b.store.clone();
    let now = chrono::Utc::now();
    let (_, mut past) = engram::auth::generate(Some("alice".into()), String::new());
    past.expires_at = Some(now - chrono::TimeDelta::seconds(1));
    let (_, mut future) = engram::auth::generate(Some("alice".into()), String::new());
    future.expires_at = Some(now + chrono::TimeDelta::hours(1));
    s.add_key(&past).await.unwrap();
    s.add_key(&future).await.unwrap();

    assert_eq!(s.active_key(&past.hash).await.unwrap(), None, "expired");
    let found = s.active_key(&future.hash).await.unwrap().unwrap();
    assert_eq!(
        (found.id, found.expires_at.map(|t| t.timestamp_millis())),
        (future.id, future.expires_at.map(|t| t.timestamp_millis()))
    );
    let listed = s.keys().await.unwrap();
    let states: Vec<_> = listed.iter().map(|k| k.state(chrono::Utc::now())).collect();
    assert_eq!(states, [KeyState::Expired, KeyState::Active]);
    assert_eq!(
        listed[0].expires_at.map(|t| t.timestamp_millis()),
        past.expires_at.map(|t| t.timestamp_millis())
    );
}

/// Access: a read-only key comes back read-only, from the listing and the
/// lookup, for a user key and an admin key alike.
async fn a_keys_access_round_trips(b: Backend) {
    let s = b.store.clone();
    let (_, mut reader) = engram::auth::generate(Some("alice".into()), "ro".into());
    reader.access = Access::ReadOnly;
    let (_, mut admin_reader) = engram::auth::generate(None, String::new());
    admin_reader.access = Access::ReadOnly;
    let (_, writer) = engram::auth::generate(Some("alice".into()), String::new());
    for key in [&reader, &admin_reader, &writer] {
        s.add_key(key).await.unwrap();
    }
    let access: Vec<_> = s.keys().await.unwrap().iter().map(|k| k.access).collect();
    assert_eq!(
        access,
        [Access::ReadOnly, Access::ReadOnly, Access::ReadWrite]
    );
    for key in [&reader, &admin_reader, &writer] {
        let found = s.active_key(&key.hash).await.unwrap().unwrap();
        assert_eq!(found.access, key.access);
    }
}

/// Rotation: the successor is stored and the old key keeps working until
/// the grace ends (never later than its own expiry); a key that is not
/// active is not rotated, and nothing is stored.
async fn a_rotation_ends_the_old_key_after_its_grace(b: Backend) {
    let s = b.store.clone();
    let now = chrono::Utc::now();
    let (_, old) = engram::auth::generate(Some("alice".into()), "laptop".into());
    s.add_key(&old).await.unwrap();
    let (_, next) = engram::auth::successor(&old, None);
    let grace_end = now + chrono::TimeDelta::hours(1);
    assert!(s.rotate_key(old.id, &next, grace_end).await.unwrap());
    let old_now = s.active_key(&old.hash).await.unwrap().unwrap();
    assert_eq!(
        old_now.expires_at.map(|t| t.timestamp_millis()),
        Some(grace_end.timestamp_millis())
    );
    let successor = s.active_key(&next.hash).await.unwrap().unwrap();
    assert_eq!(
        (successor.id, &successor.user_id, &successor.label),
        (next.id, &old.user_id, &old.label)
    );

    // A later grace does not lengthen the old key's life.
    let (_, third) = engram::auth::successor(&old, None);
    assert!(
        s.rotate_key(old.id, &third, now + chrono::TimeDelta::days(9))
            .await
            .unwrap()
    );
    let old_now = s.active_key(&old.hash).await.unwrap().unwrap();
    assert_eq!(
        old_now.expires_at.map(|t| t.timestamp_millis()),
        Some(grace_end.timestamp_millis())
    );

    // A grace already over: the old key is refused at once.
    let (_, fourth) = engram::auth::successor(&next, None);
    assert!(s.rotate_key(next.id, &fourth, now).await.unwrap());
    assert_eq!(s.active_key(&next.hash).await.unwrap(), None);
    assert!(s.active_key(&fourth.hash).await.unwrap().is_some());

    // Not active (expired, revoked, unknown): refused, nothing stored.
    let before = s.keys().await.unwrap().len();
    assert!(s.revoke_key(third.id).await.unwrap());
    for gone in [next.id, third.id, uuid::Uuid::now_v7()] {
        let (_, orphan) = engram::auth::successor(&old, None);
        assert!(!s.rotate_key(gone, &orphan, grace_end).await.unwrap());
        assert_eq!(s.active_key(&orphan.hash).await.unwrap(), None);
    }
    assert_eq!(s.keys().await.unwrap().len(), before);
}

/// Erasure: a user's keys (active, revoked, expired) are deleted; other
/// users' keys and admin keys stay.
async fn deleting_a_users_keys_leaves_everyone_elses(b: Backend) {
    let s = b.store.clone();
    let (_, a1) = engram::auth::generate(Some("alice".into()), String::new());
    let (_, mut a2) = engram::auth::generate(Some("alice".into()), String::new());
    a2.expires_at = Some(chrono::Utc::now() - chrono::TimeDelta::seconds(1));
    let (_, a3) = engram::auth::generate(Some("alice".into()), String::new());
    let (_, bob) = engram::auth::generate(Some("bob".into()), String::new());
    let (_, admin) = engram::auth::generate(None, String::new());
    for key in [&a1, &a2, &a3, &bob, &admin] {
        s.add_key(key).await.unwrap();
    }
    assert!(s.revoke_key(a3.id).await.unwrap());

    assert_eq!(s.delete_user_keys("alice").await.unwrap(), 3);
    let left: Vec<_> = s.keys().await.unwrap().iter().map(|k| k.id).collect();
    assert_eq!(left, [bob.id, admin.id]);
    assert_eq!(s.active_key(&a1.hash).await.unwrap(), None);
    assert_eq!(s.delete_user_keys("alice").await.unwrap(), 0);
    assert_eq!(s.delete_user_keys("nobody").await.unwrap(), 0);
}

/// Stores `text` for `scope` filed under `categories`; the memory as read back.
async fn add_filed(s: &dyn Store, scope: &Scope, text: &str, categories: &[&str]) -> Memory {
    let new = NewMemory {
        categories: categories.iter().map(|c| c.to_string()).collect(),
        ..new_memory(scope, text, json!({}))
    };
    let id = match s.insert(new, 0.9).await.unwrap() {
        InsertOutcome::Added(m) => m.id,
        InsertOutcome::Duplicate { .. } => panic!("unexpected duplicate for {text}"),
    };
    read_back(s, scope.user_id(), id).await
}

async fn read_back(s: &dyn Store, user_id: &str, id: MemoryId) -> Memory {
    let mut found = s.get_many(user_id, &[id]).await.unwrap();
    assert_eq!(found.len(), 1, "{id} of {user_id}");
    found.remove(0)
}

/// What `storage_bytes` must be, from an export of the same data: text,
/// metadata JSON and vector of every memory, and the texts in history.
/// (Exact for compact metadata such as `{}`; PostgreSQL prints JSON with spaces.)
fn expected_bytes(export: &UserExport) -> u64 {
    let len = |t: &Option<String>| t.as_ref().map_or(0, |t| t.len());
    export
        .memories
        .iter()
        .map(|m| {
            let metadata = serde_json::to_string(&m.memory.metadata).unwrap();
            let history: usize = m
                .history
                .iter()
                .map(|h| len(&h.old_memory) + len(&h.new_memory))
                .sum();
            (m.memory.memory.len() + metadata.len() + DIMS * 4 + history) as u64
        })
        .sum()
}

fn assert_empty_stats(stats: &UserStats, user_id: &str) {
    assert_eq!(
        stats,
        &UserStats {
            user_id: user_id.to_owned(),
            memories: 0,
            superseded: 0,
            history_events: 0,
            pending: 0,
            categories: vec![],
            oldest: None,
            newest: None,
            storage_bytes: 0,
        }
    );
}

fn counts(stats: &UserStats) -> Vec<(&str, u64)> {
    stats
        .categories
        .iter()
        .map(|c| (c.category.as_str(), c.memories))
        .collect()
}

/// Stats count a user's current and superseded memories, history rows and
/// deferred remembers; categories of current memories, most first, then by
/// name; the oldest and newest current memory; and the bytes stored, which
/// grow with content. An unknown user has all zeros.
async fn stats_count_what_a_user_has_stored(b: Backend) {
    let s = b.store.as_ref();
    assert_empty_stats(&s.stats("alice").await.unwrap(), "alice");
    let alice = scope("alice", None, None);
    let espresso = add_filed(
        s,
        &alice,
        "Drinks espresso every morning",
        &["food", "habits", "food"],
    )
    .await;
    let tokyo = add_filed(s, &alice, "Flies to Tokyo in March", &["travel"]).await;
    add_filed(s, &alice, "Likes ramen with extra egg", &["food"]).await;
    let acme = add_filed(s, &alice, "Works at Acme as an engineer", &["work"]).await;
    add_filed(s, &alice, "Has no plans this weekend", &[]).await;
    let bob = scope("bob", None, None);
    add_filed(s, &bob, "Bob restores old motorcycles", &["hobbies"]).await;

    let before = s.stats("alice").await.unwrap();
    assert_eq!((before.memories, before.superseded), (5, 0));
    assert_eq!(before.history_events, 5);
    assert_eq!(
        counts(&before),
        [("food", 2), ("habits", 1), ("travel", 1), ("work", 1)],
        "one memory filed twice under food counts once"
    );
    assert_eq!(before.oldest, Some(espresso.created_at));

    // Supersede one, close another: both stay, as superseded.
    let senior = NewMemory {
        categories: vec!["work".into(), "Career".into()],
        ..new_memory(&alice, "Works at Acme as a senior engineer", json!({}))
    };
    let senior_id = senior.id;
    assert!(matches!(
        s.supersede(acme.id, senior).await.unwrap(),
        SupersedeOutcome::Superseded(_)
    ));
    let senior = read_back(s, "alice", senior_id).await;
    assert!(s.close("alice", tokyo.id, "user").await.unwrap());
    add_deferred(
        s,
        &[
            &deferred(&alice, json!({"text": "a"}), json!({}), true, vec![], "e"),
            &deferred(&alice, json!({"text": "b"}), json!({}), true, vec![], "e"),
            &deferred(&bob, json!({"text": "c"}), json!({}), true, vec![], "e"),
        ],
    )
    .await;

    let stats = s.stats("alice").await.unwrap();
    assert_eq!(stats.user_id, "alice");
    assert_eq!((stats.memories, stats.superseded), (4, 2));
    assert_eq!(
        stats.history_events,
        5 + 1 + 1 + 1,
        "adds, two closes, one add"
    );
    assert_eq!(stats.pending, 2);
    assert_eq!(
        counts(&stats),
        // Travel went with the closed memory; ties by name, byte order.
        [("food", 2), ("Career", 1), ("habits", 1), ("work", 1)]
    );
    assert_eq!(stats.oldest, Some(espresso.created_at));
    assert_eq!(stats.newest, Some(senior.created_at));
    assert_eq!(
        stats.storage_bytes,
        expected_bytes(&s.export("alice").await.unwrap())
    );
    assert!(stats.storage_bytes > before.storage_bytes);

    // More content, more bytes: at least its text and its vector.
    let long = "Keeps a detailed diary of every hike ".repeat(20);
    add(s, &alice, &long, json!({"source": "journal", "n": 3})).await;
    let grown = s.stats("alice").await.unwrap();
    assert!(
        grown.storage_bytes >= stats.storage_bytes + (2 * long.len() + DIMS * 4) as u64,
        "{} -> {}",
        stats.storage_bytes,
        grown.storage_bytes
    );
    assert_eq!(grown.memories, 5);
    assert_eq!(s.stats("bob").await.unwrap().memories, 1);
    assert_empty_stats(&s.stats("carol").await.unwrap(), "carol");
}

/// An export holds every memory of the user, current and superseded (with
/// `valid_to`), oldest first, each with its whole history, and the user's
/// deferred remembers as stored; nothing of anyone else.
async fn an_export_holds_every_memory_with_its_history(b: Backend) {
    let s = b.store.as_ref();
    let empty = s.export("alice").await.unwrap();
    assert_eq!(empty.user_id, "alice");
    assert!(
        empty.memories.is_empty() && empty.pending.is_empty(),
        "{empty:?}"
    );

    let alice = scope("alice", Some("chat"), None);
    let lisbon = add(s, &alice, "Lives in Lisbon", json!({"source": "chat"})).await;
    let tea = add(s, &alice, "Likes green tea", json!({})).await;
    let acme = add(s, &alice, "Works at Acme as an engineer", json!({})).await;
    let embed = |t: &str| HashEmbedder::new(DIMS).embed(t);
    s.update(
        "alice",
        tea,
        "Likes green tea, no sugar",
        &embed("tea"),
        "assistant",
    )
    .await
    .unwrap()
    .unwrap();
    let porto = new_memory(&alice, "Lives in Porto", json!({}));
    let porto_id = porto.id;
    s.supersede(lisbon, porto).await.unwrap();
    assert!(s.close("alice", acme, "reextract").await.unwrap());
    let bob = scope("bob", None, None);
    let bobs = add(s, &bob, "Bob restores old motorcycles", json!({})).await;
    let waiting = deferred(
        &alice,
        json!({"messages": [{"role": "user", "content": "I moved to Porto"}]}),
        json!({"source": "chat"}),
        true,
        vec![porto_id],
        "the LLM timed out",
    );
    let bob_waiting = deferred(&bob, json!({"text": "x"}), json!({}), true, vec![], "e");
    add_deferred(s, &[&waiting, &bob_waiting]).await;
    s.retry_pending("alice", waiting.id, "the LLM timed out again")
        .await
        .unwrap();

    let export = s.export("alice").await.unwrap();
    assert_eq!(export.user_id, "alice");
    let age = chrono::Utc::now() - export.exported_at;
    assert!(age.num_seconds().abs() < 60, "exported {age} ago");
    let ids: Vec<MemoryId> = export.memories.iter().map(|m| m.memory.id).collect();
    assert_eq!(ids, [lisbon, tea, acme, porto_id], "oldest first");
    for m in &export.memories {
        assert_eq!(m.memory, read_back(s, "alice", m.memory.id).await);
        assert_eq!(m.history, s.history("alice", m.memory.id).await.unwrap());
        assert!(m.history.iter().all(|h| h.memory_id == m.memory.id));
    }
    let events =
        |i: usize| -> Vec<Event> { export.memories[i].history.iter().map(|h| h.event).collect() };
    assert_eq!(events(0), [Event::Add, Event::Supersede]);
    assert_eq!(events(1), [Event::Add, Event::Update]);
    assert_eq!(events(2), [Event::Add, Event::Supersede]);
    assert_eq!(events(3), [Event::Add]);
    assert_eq!(export.memories[1].history[1].actor, "assistant");
    assert_eq!(
        export.memories[0].history[1].new_memory.as_deref(),
        Some("Lives in Porto")
    );
    let closed: Vec<bool> = export
        .memories
        .iter()
        .map(|m| m.valid_to.is_some())
        .collect();
    assert_eq!(closed, [true, false, true, false]);
    let lisbon_closed = export.memories[0].valid_to.unwrap();
    assert_eq!(lisbon_closed, export.memories[0].history[1].created_at);
    assert_eq!(export.memories[0].memory.scope, alice);
    assert_eq!(export.memories[0].memory.metadata["source"], "chat");

    assert_eq!(export.pending.len(), 1, "{:?}", export.pending);
    let p = &export.pending[0];
    assert_eq!(p.id, waiting.id);
    assert_eq!(p.input, waiting.input);
    assert_eq!(p.metadata, waiting.metadata);
    assert_eq!(
        (p.attempts, p.error.as_str()),
        (1, "the LLM timed out again")
    );
    let age = chrono::Utc::now() - p.created_at;
    assert!(age.num_seconds().abs() < 60, "created {age} ago");

    // What GET /export serves: each memory flat, with valid_to and history.
    let json = serde_json::to_value(&export).unwrap();
    let first = &json["memories"][0];
    assert_eq!(first["id"], json!(lisbon));
    assert_eq!(first["memory"], "Lives in Lisbon");
    assert_eq!(first["user_id"], "alice");
    assert_eq!(first["agent_id"], "chat");
    assert!(first["valid_to"].is_string(), "{first}");
    assert_eq!(first["history"][0]["event"], "ADD");
    assert!(json["memories"][1]["valid_to"].is_null());
    assert_eq!(json["pending"][0]["input"], waiting.input);

    let bobs_export = s.export("bob").await.unwrap();
    let ids: Vec<MemoryId> = bobs_export.memories.iter().map(|m| m.memory.id).collect();
    assert_eq!(ids, [bobs]);
    assert_eq!(bobs_export.pending.len(), 1);
    assert_eq!(bobs_export.pending[0].id, bob_waiting.id);
}

/// One user's stats and export never hold another's data, however alike
/// their ids; after the user is forgotten both are empty, and the other
/// user's are as they were.
async fn stats_and_exports_are_bounded_by_user_and_emptied_by_forgetting(b: Backend) {
    let s = b.store.as_ref();
    let alice = scope("alice", None, None);
    let old = add_filed(s, &alice, "Works at Acme as an engineer", &["work"]).await;
    add_filed(s, &alice, "Drinks espresso every morning", &["food"]).await;
    s.supersede(
        old.id,
        new_memory(&alice, "Works at Initech as an engineer", json!({})),
    )
    .await
    .unwrap();
    add_deferred(
        s,
        &[&deferred(
            &alice,
            json!({"text": "a"}),
            json!({}),
            true,
            vec![],
            "e",
        )],
    )
    .await;
    for other in ["Alice", "alice ", "alic", "bob"] {
        assert_empty_stats(&s.stats(other).await.unwrap(), other);
        let export = s.export(other).await.unwrap();
        assert!(
            export.memories.is_empty() && export.pending.is_empty(),
            "{other}: {export:?}"
        );
    }
    let bob = scope("bob", None, None);
    add_filed(s, &bob, "Bob restores old motorcycles", &["hobbies"]).await;
    let bob_stats = s.stats("bob").await.unwrap();
    let bob_export = s.export("bob").await.unwrap();
    assert_eq!((bob_stats.memories, bob_stats.superseded), (1, 0));
    assert_eq!((bob_stats.history_events, bob_stats.pending), (1, 0));
    assert_eq!(counts(&bob_stats), [("hobbies", 1)]);
    assert_eq!(bob_stats.storage_bytes, expected_bytes(&bob_export));
    assert_eq!(bob_export.memories.len(), 1);
    let alice_stats = s.stats("alice").await.unwrap();
    assert_eq!((alice_stats.memories, alice_stats.superseded), (2, 1));
    assert_eq!(alice_stats.pending, 1);

    assert_eq!(s.delete_user("alice", None).await.unwrap(), 3);
    assert_empty_stats(&s.stats("alice").await.unwrap(), "alice");
    let gone = s.export("alice").await.unwrap();
    assert!(
        gone.memories.is_empty() && gone.pending.is_empty(),
        "{gone:?}"
    );
    assert_eq!(s.stats("bob").await.unwrap(), bob_stats);
    let after = s.export("bob").await.unwrap();
    assert_eq!(after.memories, bob_export.memories);
}

/// An export reads one snapshot: while memories are added and forgotten
/// around it, every memory it holds comes with its history (an ADD first),
/// and every memory it names in history is there.
async fn an_export_is_one_snapshot_under_concurrent_writes(b: Backend) {
    let s = b.store.clone();
    let alice = scope("alice", None, None);
    for i in 0..5 {
        add(
            s.as_ref(),
            &alice,
            &format!("Alice kept note {i} about bees"),
            json!({}),
        )
        .await;
    }
    let writer = {
        let s = s.clone();
        let alice = alice.clone();
        tokio::spawn(async move {
            for i in 0..40 {
                let text = format!("Alice planted row {i} of tomatoes");
                let id = add(s.as_ref(), &alice, &text, json!({})).await;
                if i % 2 == 0 {
                    assert!(s.delete("alice", id, None).await.unwrap());
                }
            }
        })
    };
    let mut exports = 0;
    while !writer.is_finished() || exports == 0 {
        let export = s.export("alice").await.unwrap();
        for m in &export.memories {
            let events: Vec<Event> = m.history.iter().map(|h| h.event).collect();
            assert_eq!(events.first(), Some(&Event::Add), "{m:?}");
        }
        let stats = s.stats("alice").await.unwrap();
        assert!(stats.history_events >= stats.memories, "{stats:?}");
        exports += 1;
    }
    writer.await.unwrap();
    let export = s.export("alice").await.unwrap();
    assert_eq!(export.memories.len(), 25);
}

/// What a user has, as a store shows it: current texts (sorted), the
/// version, and what vector and keyword search find for `query`.
async fn snapshot(
    s: &dyn Store,
    at: &Scope,
    query: &str,
) -> (Vec<String>, Option<u64>, [Vec<MemoryId>; 2]) {
    let mut texts: Vec<String> = s
        .recent(at, 100)
        .await
        .unwrap()
        .0
        .into_iter()
        .map(|m| m.memory)
        .collect();
    texts.sort();
    let version = s.version(at.user_id()).await.unwrap();
    (
        texts,
        version,
        search(s, at.clone(), json!({}), query).await,
    )
}

/// The writes of [`a_batch_commits_all_of_its_writes_or_none`]: an insert,
/// a supersede, a close, an update and a pending entry; the added memory's id.
async fn write_all(
    batch: &mut dyn WriteBatch,
    alice: &Scope,
    [old, gone, edited]: [MemoryId; 3],
) -> MemoryId {
    let added = new_memory(alice, "Takes violin lessons on Tuesdays", json!({}));
    let added_id = added.id;
    let successor = new_memory(alice, "Works at Globex as a manager", json!({}));
    let pending = NewPending {
        id: uuid::Uuid::now_v7(),
        scope: alice.clone(),
        input: json!({"text": "Takes violin lessons on Tuesdays"}),
        metadata: Default::default(),
        infer: true,
        memory_ids: vec![added_id],
        error: "the model failed".into(),
    };
    let edit = HashEmbedder::new(DIMS).embed("Plays chess on Saturdays");
    let outcome = batch.insert(added, 0.9).await.unwrap();
    assert!(matches!(outcome, InsertOutcome::Added(_)), "{outcome:?}");
    let outcome = batch.supersede(old, successor).await.unwrap();
    assert!(
        matches!(outcome, SupersedeOutcome::Superseded(_)),
        "{outcome:?}"
    );
    assert!(batch.close(gone, "user").await.unwrap());
    let updated = batch
        .update(edited, "Plays chess on Saturdays", &edit, "user")
        .await
        .unwrap();
    assert!(updated.is_some());
    batch.add_pending(pending).await.unwrap();
    added_id
}

/// A batch dropped before its commit leaves nothing behind: no memory, no
/// closed one, no history, no pending entry, the same version, and no
/// vector in a search (SQLite's in-process copy included); committed, all
/// of it shows at once.
async fn a_batch_commits_all_of_its_writes_or_none(b: Backend) {
    let s = b.store.as_ref();
    let alice = scope("alice", None, None);
    let old = add(s, &alice, "Works at Acme as an engineer", json!({})).await;
    let gone = add(s, &alice, "Drives a red bicycle", json!({})).await;
    let edited = add(s, &alice, "Plays chess on Sundays", json!({})).await;
    let before = snapshot(s, &alice, "violin lessons").await;
    let history_before = s.history("alice", old).await.unwrap().len();
    let (pending_before, _) = s.pending(100).await.unwrap();

    let mut batch = s.begin("alice").await.unwrap();
    write_all(batch.as_mut(), &alice, [old, gone, edited]).await;
    drop(batch);
    assert_eq!(
        snapshot(s, &alice, "violin lessons").await,
        before,
        "a dropped batch changed what the user has"
    );
    assert_eq!(s.history("alice", old).await.unwrap().len(), history_before);
    assert_eq!(s.pending(100).await.unwrap().0.len(), pending_before.len());

    let mut batch = s.begin("alice").await.unwrap();
    let added = write_all(batch.as_mut(), &alice, [old, gone, edited]).await;
    batch.commit().await.unwrap();
    let (texts, version, [by_vector, by_keyword]) = snapshot(s, &alice, "violin lessons").await;
    assert_eq!(
        texts,
        [
            "Plays chess on Saturdays",
            "Takes violin lessons on Tuesdays",
            "Works at Globex as a manager"
        ]
    );
    assert_ne!(version, before.1, "the commit moved the version");
    assert_eq!(by_vector.first(), Some(&added));
    assert_eq!(by_keyword.first(), Some(&added));
    assert_eq!(
        s.pending(100).await.unwrap().0.len(),
        pending_before.len() + 1
    );
    assert_eq!(
        s.history("alice", old).await.unwrap().len(),
        history_before + 1
    );
}

/// Each write of a batch sees the ones before it: a near-duplicate of a
/// memory the batch added is refused, and a memory it closed is gone.
/// Another user's memory has no place in it.
async fn a_batch_sees_its_own_writes(b: Backend) {
    let s = b.store.as_ref();
    let alice = scope("alice", None, None);
    let mut batch = s.begin("alice").await.unwrap();
    let first = new_memory(&alice, "Keeps two cats named Miso and Tofu", json!({}));
    let first_id = first.id;
    assert!(matches!(
        batch.insert(first, 0.9).await.unwrap(),
        InsertOutcome::Added(_)
    ));
    let again = new_memory(&alice, "Keeps two cats named Miso and Tofu", json!({}));
    match batch.insert(again, 0.9).await.unwrap() {
        InsertOutcome::Duplicate { existing, .. } => assert_eq!(existing.id, first_id),
        other => panic!("expected the batch's own memory as the duplicate, got {other:?}"),
    }
    assert!(batch.close(first_id, "user").await.unwrap());
    assert!(
        !batch.close(first_id, "user").await.unwrap(),
        "closed twice"
    );
    let bob = scope("bob", None, None);
    let refused = batch
        .insert(new_memory(&bob, "Likes jazz", json!({})), 0.9)
        .await;
    assert!(
        matches!(refused, Err(StoreError::Unsupported(_))),
        "{refused:?}"
    );
    batch.commit().await.unwrap();
    assert!(s.recent(&alice, 10).await.unwrap().0.is_empty());
    assert!(s.recent(&bob, 10).await.unwrap().0.is_empty());
    let events: Vec<_> = s
        .history("alice", first_id)
        .await
        .unwrap()
        .iter()
        .map(|h| h.event)
        .collect();
    assert_eq!(events, [Event::Add, Event::Supersede]);
}

/// A refused write inside a batch (an update to a text another memory
/// holds, a supersede that repeats one) changes nothing and the batch goes on.
async fn a_refused_write_leaves_the_batch_usable(b: Backend) {
    let s = b.store.as_ref();
    let alice = scope("alice", None, None);
    let tea = add(s, &alice, "Likes green tea", json!({})).await;
    let coffee = add(s, &alice, "Drinks coffee every morning", json!({})).await;
    let mut batch = s.begin("alice").await.unwrap();
    let embedding = HashEmbedder::new(DIMS).embed("Likes green tea");
    let refused = batch
        .update(coffee, "Likes green tea", &embedding, "user")
        .await;
    assert!(
        matches!(refused, Err(StoreError::Conflict(_))),
        "{refused:?}"
    );
    let repeat = new_memory(&alice, "Likes green tea", json!({}));
    let outcome = batch.supersede(coffee, repeat).await.unwrap();
    assert!(
        matches!(&outcome, SupersedeOutcome::Duplicate(m) if m.id == tea),
        "{outcome:?}"
    );
    let added = new_memory(&alice, "Runs a marathon every spring", json!({}));
    assert!(matches!(
        batch.insert(added, 0.9).await.unwrap(),
        InsertOutcome::Added(_)
    ));
    batch.commit().await.unwrap();
    let mut texts: Vec<String> = s
        .recent(&alice, 10)
        .await
        .unwrap()
        .0
        .into_iter()
        .map(|m| m.memory)
        .collect();
    texts.sort();
    assert_eq!(
        texts,
        [
            "Drinks coffee every morning",
            "Likes green tea",
            "Runs a marathon every spring"
        ]
    );
}

/// Deletes what `filter` (JSON), `agent`, `run` and `before` select of the
/// user's memories; returns the deleted ids, sorted.
async fn delete_selected(
    s: &dyn Store,
    user: &str,
    (agent, run): (Option<&str>, Option<&str>),
    filter: serde_json::Value,
    before: Option<chrono::DateTime<chrono::Utc>>,
) -> Vec<MemoryId> {
    let at = scope(user, agent, run);
    let filter = MetadataFilter::parse(filter.as_object()).unwrap();
    let selection = Selection {
        scope: &at,
        filter: &filter,
        before,
    };
    let mut gone = s.delete_matching(selection, None).await.unwrap();
    gone.sort();
    gone
}

fn sorted_ids<const N: usize>(ids: [MemoryId; N]) -> Vec<MemoryId> {
    let mut ids = ids.to_vec();
    ids.sort();
    ids
}

/// A bulk delete takes exactly the user's memories its agent, run and
/// metadata filter select (numbers by value, all conditions together),
/// moves the user's version only when it deletes something, and never
/// touches another user's memories.
async fn a_bulk_delete_takes_exactly_what_it_selects(b: Backend) {
    let s = b.store.as_ref();
    let planner_r1 = scope("alice", Some("planner"), Some("r1"));
    let planner_r2 = scope("alice", Some("planner"), Some("r2"));
    let coach_r1 = scope("alice", Some("coach"), Some("r1"));
    let alice = scope("alice", None, None);
    let lisbon = add(
        s,
        &planner_r1,
        "Flies to Lisbon in May",
        json!({"topic": "travel", "n": 5}),
    )
    .await;
    let curry = add(
        s,
        &planner_r2,
        "Likes green curry",
        json!({"topic": "food"}),
    )
    .await;
    let river = add(
        s,
        &coach_r1,
        "Runs along the river",
        json!({"topic": "travel", "n": 6}),
    )
    .await;
    let poetry = add(s, &alice, "Reads poetry at night", json!({"n": 5.0})).await;
    let sails = add(
        s,
        &scope("bob", Some("planner"), Some("r1")),
        "Bob sails on weekends",
        json!({"topic": "travel", "n": 5}),
    )
    .await;

    // Nothing selected: nothing changes, not even the version.
    let version = s.version("alice").await.unwrap();
    let none = delete_selected(s, "alice", (Some("nobody"), None), json!({}), None).await;
    assert!(none.is_empty(), "{none:?}");
    assert_eq!(s.version("alice").await.unwrap(), version);

    // A metadata filter; 5.0 selects 5, and "5" would not.
    let text = delete_selected(s, "alice", (None, None), json!({"n": "5"}), None).await;
    assert!(text.is_empty(), "{text:?}");
    let by_value = delete_selected(s, "alice", (None, None), json!({"n": 5.0}), None).await;
    assert_eq!(by_value, sorted_ids([lisbon, poetry]));
    let moved = s.version("alice").await.unwrap();
    assert_ne!(moved, version, "a bulk delete moves the user's version");

    // Agent and filter together: the coach's travel memory only.
    let both = delete_selected(
        s,
        "alice",
        (Some("coach"), None),
        json!({"topic": "travel"}),
        None,
    )
    .await;
    assert_eq!(both, [river]);

    // A run: r2 only (the planner's r1 memory is already gone).
    let run = delete_selected(s, "alice", (None, Some("r2")), json!({}), None).await;
    assert_eq!(run, [curry]);
    assert_eq!(s.recent(&alice, 10).await.unwrap().1, 0);

    // Bob's memory matched every selection but was never alice's.
    let bob = scope("bob", None, None);
    assert!(found_current(s, &bob, sails).await);
    assert_eq!(s.history("bob", sails).await.unwrap().len(), 1);
}

/// A bulk delete takes superseded memories that match as well as current
/// ones, the history of each, and the deferred remembers that stored any of
/// them; it appends its audit row with the ids it deleted.
async fn a_bulk_delete_takes_history_closed_memories_and_deferred_remembers(b: Backend) {
    let s = b.store.as_ref();
    let chat = scope("alice", Some("chat"), None);
    let other = scope("alice", Some("mail"), None);
    let old = add(s, &chat, "Works at Acme as an engineer", json!({})).await;
    let replacement = new_memory(&chat, "Works at Initech as a manager", json!({}));
    let new = replacement.id;
    let outcome = s.supersede(old, replacement).await.unwrap();
    assert!(
        matches!(outcome, SupersedeOutcome::Superseded(_)),
        "{outcome:?}"
    );
    let kept = add(s, &other, "Writes letters by hand", json!({})).await;
    let text = |t: &str| json!({ "text": t });
    let stored_old = deferred(&chat, text("acme"), json!({}), true, vec![old], "e");
    let stored_both = deferred(&other, text("both"), json!({}), true, vec![kept, new], "e");
    let stored_kept = deferred(&other, text("letters"), json!({}), true, vec![kept], "e");
    add_deferred(s, &[&stored_old, &stored_both, &stored_kept]).await;

    let at = scope("alice", Some("chat"), None);
    let filter = MetadataFilter::default();
    let record = engram::store::AuditRecord {
        at: chrono::Utc::now(),
        principal: "operator".into(),
        key_id: None,
        user_ref: Some("alice-ref".into()),
        transport: "stdio".into(),
        client_addr: None,
        operation: "forget_matching".into(),
        memory_ids: vec![],
        memory_count: 0,
        outcome: "ok".into(),
        query: None,
    };
    let selection = Selection {
        scope: &at,
        filter: &filter,
        before: None,
    };
    let mut gone = s.delete_matching(selection, Some(&record)).await.unwrap();
    gone.sort();
    assert_eq!(gone, sorted_ids([old, new]), "current and closed alike");

    assert!(s.get_many("alice", &[old, new]).await.unwrap().is_empty());
    assert!(s.history("alice", old).await.unwrap().is_empty());
    assert!(s.history("alice", new).await.unwrap().is_empty());
    assert_eq!(deferred_ids(s).await, [stored_kept.id]);
    assert!(found_current(s, &other, kept).await);
    assert_eq!(s.history("alice", kept).await.unwrap().len(), 1);

    let query = engram::store::AuditQuery {
        operation: Some("forget_matching".into()),
        limit: 10,
        ..Default::default()
    };
    let rows = s.audit_rows(&query).await.unwrap();
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0].record.memory_count, 2);
    let mut listed = rows[0].record.memory_ids.clone();
    listed.sort();
    assert_eq!(listed, sorted_ids([old, new]));
}

/// `before` selects the memories created before that instant, and only those.
async fn a_bulk_delete_by_date_takes_what_was_created_before(b: Backend) {
    let s = b.store.as_ref();
    let alice = scope("alice", None, None);
    let early = add(s, &alice, "Learned to swim as a child", json!({"k": 1})).await;
    let early_other = add(s, &alice, "Had a red bicycle", json!({"k": 2})).await;
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    let cut = chrono::Utc::now();
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    let late = add(s, &alice, "Started learning the cello", json!({"k": 1})).await;

    let first = delete_selected(s, "alice", (None, None), json!({"k": 1}), Some(cut)).await;
    assert_eq!(first, [early], "before and the filter together");
    let rest = delete_selected(s, "alice", (None, None), json!({}), Some(cut)).await;
    assert_eq!(rest, [early_other]);
    let (left, total) = s.recent(&alice, 10).await.unwrap();
    assert_eq!(total, 1);
    assert_eq!(left[0].id, late);
}

/// After a bulk delete no search finds a deleted memory, on this instance
/// (SQLite: its in-process vector copy, warmed before the delete) or another
/// one; the rest are still found, a deleted text can be stored again, and
/// later writes are searched as usual.
async fn searches_after_a_bulk_delete_find_only_what_is_left(b: Backend) {
    let s = b.store.as_ref();
    let other = b
        .open_again(HashEmbedder::new(DIMS).identity())
        .await
        .unwrap();
    let alice = scope("alice", None, None);
    let at = SearchScope::unfiltered(&alice);
    let embed = |t: &str| HashEmbedder::new(DIMS).embed(t);
    // More deleted memories near the query than a search's candidate pool
    // holds: a copy that kept them would crowd out what is left.
    let mut work = Vec::new();
    for i in 0..20 {
        let text = format!("Meeting {i} about the budget");
        work.push(add(s, &alice, &text, json!({"area": "work"})).await);
    }
    let mut home = Vec::new();
    for i in 0..3 {
        let text = format!("Garden chore {i}: water the roses");
        home.push(add(s, &alice, &text, json!({"area": "home"})).await);
    }
    let q = embed("budget meeting");
    // Warm both instances' vectors.
    assert_eq!(s.vector_search(at, &q, 30).await.unwrap().len(), 23);
    assert_eq!(other.vector_search(at, &q, 30).await.unwrap().len(), 23);

    let gone = delete_selected(s, "alice", (None, None), json!({"area": "work"}), None).await;
    assert_eq!(gone.len(), 20);
    let mut expected = home.clone();
    expected.sort();
    for store in [s, other.as_ref()] {
        let mut found = ids(&store.vector_search(at, &q, 30).await.unwrap());
        found.sort();
        assert_eq!(found, expected);
        let best = ids(&store.vector_search(at, &q, 1).await.unwrap());
        assert!(best.len() == 1 && home.contains(&best[0]), "{best:?}");
        assert!(
            store
                .keyword_search(at, "budget meeting", 20)
                .await
                .unwrap()
                .is_empty()
        );
        let all = |c: &[Scored]| c.iter().map(|c| c.id).collect();
        let candidates = store
            .candidates(at, &q, "budget", 20, &all, None)
            .await
            .unwrap();
        assert!(
            candidates.scored.iter().all(|c| !work.contains(&c.id)),
            "{candidates:?}"
        );
    }
    // The deleted text is not a duplicate of anything any more.
    let again = add(s, &alice, "Meeting 0 about the budget", json!({})).await;
    for store in [s, other.as_ref()] {
        let found = ids(&store
            .vector_search(at, &embed("Meeting 0 about the budget"), 1)
            .await
            .unwrap());
        assert_eq!(found, [again]);
        let words = ids(&store.keyword_search(at, "budget", 20).await.unwrap());
        assert_eq!(words, [again]);
    }
}

async fn found_current(s: &dyn Store, at: &Scope, id: MemoryId) -> bool {
    s.recent(at, 100)
        .await
        .unwrap()
        .0
        .iter()
        .any(|m| m.id == id)
}

/// `engram rotate-key`'s reads and writes: the rows whose column holds an
/// envelope, in id order from a cursor (a plain string mentioning `$enc` is
/// escaped and not one of them), and a write that lands only on a row still
/// holding what was read.
async fn sealed_values_are_found_and_rewritten_only_if_unchanged(b: Backend) {
    use engram::store::SealedColumn;
    let s = b.store.as_ref();
    let alice = scope("alice", None, None);
    let envelope = |kid: &str| json!({"$enc": "v1", "kid": kid, "n": "bg==", "c": "Yw=="});
    let sealed = add(
        s,
        &alice,
        "Saw the doctor",
        json!({"diagnosis": envelope("old")}),
    )
    .await;
    add(
        s,
        &alice,
        "Plain note",
        json!({"note": "the text \"$enc\" is not a tag"}),
    )
    .await;
    let pending = deferred(
        &alice,
        envelope("old"),
        json!({}),
        true,
        vec![],
        "model down",
    );
    s.add_pending(pending.clone()).await.unwrap();

    let rows = s
        .sealed_rows(SealedColumn::MemoryMetadata, uuid::Uuid::nil(), 10)
        .await
        .unwrap();
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!((rows[0].id, rows[0].user_id.as_str()), (sealed.0, "alice"));
    assert_eq!(rows[0].value, json!({"diagnosis": envelope("old")}));
    assert!(
        s.sealed_rows(SealedColumn::MemoryMetadata, sealed.0, 10)
            .await
            .unwrap()
            .is_empty(),
        "the cursor is exclusive"
    );
    let input = s
        .sealed_rows(SealedColumn::PendingInput, uuid::Uuid::nil(), 10)
        .await
        .unwrap();
    assert_eq!(input.len(), 1);
    assert_eq!(input[0].id, pending.id);
    assert!(
        s.sealed_rows(SealedColumn::PendingMetadata, uuid::Uuid::nil(), 10)
            .await
            .unwrap()
            .is_empty()
    );

    let new = json!({"diagnosis": envelope("new")});
    assert!(
        s.reseal(SealedColumn::MemoryMetadata, &rows[0], &new)
            .await
            .unwrap()
    );
    // Read before that write: stale, refused.
    assert!(
        !s.reseal(SealedColumn::MemoryMetadata, &rows[0], &new)
            .await
            .unwrap()
    );
    let memory = &s.get_many("alice", &[sealed]).await.unwrap()[0];
    assert_eq!(serde_json::Value::Object(memory.metadata.clone()), new);
    assert!(
        s.reseal(SealedColumn::PendingInput, &input[0], &envelope("new"))
            .await
            .unwrap()
    );
    let (entries, _) = s.pending(10).await.unwrap();
    assert_eq!(entries[0].entry.input, envelope("new"));
}

fn day(text: &str) -> chrono::NaiveDate {
    text.parse().unwrap()
}

/// Token usage: a total per user and UTC day, each addition answering the
/// new total; users never see each other's; the purge's pruning drops
/// days before the one it names, every user's.
async fn token_usage_is_a_total_per_user_and_day(b: Backend) {
    let s = b.store.as_ref();
    let (d1, d2) = (day("2027-06-01"), day("2027-06-02"));
    assert_eq!(s.tokens_used("alice", d1).await.unwrap(), 0);
    assert_eq!(s.add_tokens("alice", d1, 150).await.unwrap(), 150);
    assert_eq!(s.add_tokens("alice", d1, 30).await.unwrap(), 180);
    assert_eq!(s.add_tokens("alice", d2, 7).await.unwrap(), 7);
    assert_eq!(s.add_tokens("bob", d1, 5).await.unwrap(), 5);
    assert_eq!(s.add_tokens("bob", d1, 0).await.unwrap(), 5);
    for (user, at, used) in [
        ("alice", d1, 180),
        ("alice", d2, 7),
        ("bob", d1, 5),
        ("bob", d2, 0),
        ("carol", d1, 0),
        // Ids are compared exactly.
        ("Alice", d1, 0),
    ] {
        assert_eq!(s.tokens_used(user, at).await.unwrap(), used, "{user} {at}");
    }
    assert_eq!(
        s.prune_token_usage(d1).await.unwrap(),
        0,
        "nothing before d1"
    );
    assert_eq!(s.prune_token_usage(d2).await.unwrap(), 2);
    assert_eq!(s.tokens_used("alice", d1).await.unwrap(), 0);
    assert_eq!(s.tokens_used("bob", d1).await.unwrap(), 0);
    assert_eq!(s.tokens_used("alice", d2).await.unwrap(), 7);
}

/// Two store instances on one database (two processes, as far as the
/// database can tell) adding to one user's day at once: every addition
/// counts, exactly once, and each answers a different total.
async fn token_usage_from_two_instances_adds_up_exactly(b: Backend) {
    let other = b
        .open_again(HashEmbedder::new(DIMS).identity())
        .await
        .unwrap();
    let today = day("2027-06-03");
    let mut tasks = tokio::task::JoinSet::new();
    for i in 1..=20u64 {
        for store in [b.store.clone(), other.clone()] {
            tasks.spawn(async move { store.add_tokens("alice", today, i).await.unwrap() });
        }
    }
    let mut totals = Vec::new();
    while let Some(total) = tasks.join_next().await {
        totals.push(total.unwrap());
    }
    totals.sort_unstable();
    totals.dedup();
    assert_eq!(totals.len(), 40, "each addition saw its own total");
    assert_eq!(totals.last(), Some(&420));
    assert_eq!(b.store.tokens_used("alice", today).await.unwrap(), 420);
    assert_eq!(other.tokens_used("alice", today).await.unwrap(), 420);
}

/// Erasing a user deletes their token usage too, and no one else's.
async fn erasing_a_user_deletes_their_token_usage(b: Backend) {
    let s = b.store.as_ref();
    let today = day("2027-06-04");
    s.add_tokens("alice", today, 100).await.unwrap();
    s.add_tokens("alice", day("2027-06-03"), 100).await.unwrap();
    s.add_tokens("bob", today, 40).await.unwrap();
    add(
        s,
        &scope("alice", None, None),
        "Alice keeps bees",
        json!({}),
    )
    .await;
    assert_eq!(s.delete_user("alice", None).await.unwrap(), 1);
    assert_eq!(s.tokens_used("alice", today).await.unwrap(), 0);
    assert_eq!(s.tokens_used("alice", day("2027-06-03")).await.unwrap(), 0);
    assert_eq!(s.tokens_used("bob", today).await.unwrap(), 40);
}

/// Several memories stored at once ([`WriteBatch::insert_all`]) come out
/// as stored one by one: each with its own scope, metadata, categories,
/// expiry, actor, history and keyword postings; a repeat of a stored memory
/// found known; and a repeat of another memory of the same call found
/// known too, though the two arrive together (on PostgreSQL, in one
/// statement, which the repeat makes the store take apart again). A batch
/// that writes nothing commits.
async fn memories_stored_together_are_each_as_if_stored_alone(b: Backend) {
    let s = b.store.as_ref();
    let alice = scope("alice", None, None);
    let planner = scope("alice", Some("planner"), Some("run-1"));
    let known = add(s, &alice, "Keeps bees in the garden", json!({})).await;
    let version = s.version("alice").await.unwrap().expect("a version");
    // In milliseconds, which both stores keep.
    let expires = chrono::DateTime::from_timestamp_millis(
        (chrono::Utc::now() + chrono::Duration::days(30)).timestamp_millis(),
    )
    .expect("a time");
    let seats = NewMemory {
        categories: vec!["travel".into(), "preferences".into()],
        expires_at: Some(expires),
        actor: "assistant".into(),
        ..new_memory(
            &planner,
            "Prefers window seats on long flights",
            json!({"source": "chat"}),
        )
    };
    let tea = new_memory(&alice, "Drinks green tea before breakfast", json!({"n": 2}));
    let together = |news: Vec<(NewMemory, Option<u64>)>| async move {
        let mut batch = s.begin("alice").await.unwrap();
        let outcomes = batch.insert_all(news, 0.9).await.unwrap();
        batch.commit().await.unwrap();
        outcomes
    };

    // New ones only, the second vouched for by a search at this version.
    let outcomes = together(vec![(seats.clone(), None), (tea.clone(), Some(version))]).await;
    let added: Vec<MemoryId> = outcomes
        .iter()
        .map(|o| match o {
            InsertOutcome::Added(m) => m.id,
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(added, [seats.id, tea.id]);
    let stored = read_back(s, "alice", seats.id).await;
    assert_eq!(stored.memory, seats.content);
    assert_eq!(stored.scope, planner);
    assert_eq!(stored.metadata, seats.metadata);
    assert_eq!(stored.categories, seats.categories);
    assert_eq!(stored.expires_at, Some(expires));
    let stored = read_back(s, "alice", tea.id).await;
    assert_eq!(
        (stored.scope, stored.metadata),
        (alice.clone(), tea.metadata.clone())
    );
    assert!(stored.categories.is_empty() && stored.expires_at.is_none());
    for (new, actor) in [(&seats, "assistant"), (&tea, "user")] {
        let history = s.history("alice", new.id).await.unwrap();
        assert_eq!(history.len(), 1, "{history:?}");
        assert_eq!(history[0].event, Event::Add);
        assert_eq!(history[0].new_memory.as_deref(), Some(new.content.as_str()));
        assert_eq!(history[0].actor, actor);
    }
    let whole = SearchScope::unfiltered(&alice);
    for (words, id) in [("window seats", seats.id), ("green tea", tea.id)] {
        let hits = ids(&s.keyword_search(whole, words, 5).await.unwrap());
        assert_eq!(hits, [id], "{words}");
    }
    assert_ne!(s.version("alice").await.unwrap(), Some(version));

    // Repeats: of a stored memory, and of the first of this call.
    let hens = new_memory(&alice, "Keeps three hens in the yard", json!({}));
    let again = new_memory(&alice, "Keeps three hens in the yard!", json!({}));
    let bees = new_memory(&alice, "Keeps bees in the garden", json!({}));
    let outcomes = together(vec![(hens.clone(), None), (bees, None), (again, None)]).await;
    match &outcomes[..] {
        [
            InsertOutcome::Added(first),
            InsertOutcome::Duplicate {
                existing: known_one,
                ..
            },
            InsertOutcome::Duplicate {
                existing: repeated, ..
            },
        ] => {
            assert_eq!(first.id, hens.id);
            assert_eq!(known_one.id, known);
            assert_eq!(repeated.id, hens.id);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(s.recent(&alice, 10).await.unwrap().1, 4);

    // Nothing to write.
    assert!(together(Vec::new()).await.is_empty());
    let empty = s.begin("alice").await.unwrap();
    empty.commit().await.unwrap();
    assert_eq!(s.recent(&alice, 10).await.unwrap().1, 4);
}

macro_rules! conformance {
    ($backend:ident: $($test:ident),* $(,)?) => {
        mod $backend {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    super::$test(super::$backend().await).await;
                }
            )*
        }
    };
}

macro_rules! every_backend {
    ($($test:ident),* $(,)?) => {
        conformance!(sqlite: $($test),*);
        conformance!(postgres: $($test),*);
        conformance!(pgbouncer: $($test),*);
    };
}

every_backend!(
    keyword_and_vector_search_find_the_memory,
    users_never_see_each_other,
    duplicates_are_refused_even_concurrently,
    scopes_and_metadata_filters_narrow,
    filter_numbers_compare_by_value,
    delete_removes_rows_history_and_index,
    a_second_instance_on_the_same_database_stays_coherent,
    a_different_embedder_is_refused,
    a_changed_detail_is_not_a_duplicate,
    reembedding_rebuilds_every_vector,
    memories_matching_more_query_words_rank_first,
    keyword_scores_are_bm25_over_the_users_current_memories,
    a_narrowed_keyword_search_returns_the_scopes_best,
    candidates_agree_with_the_two_searches,
    a_search_at_a_version_answers_as_the_plain_search,
    every_write_moves_the_users_version_to_a_new_value,
    many_close_memories_differing_in_a_detail_are_all_kept,
    an_update_rewrites_one_memory_and_keeps_its_history,
    a_supersede_closes_the_old_memory_and_stores_the_new,
    many_writes_and_searches_at_once_all_finish,
    api_keys_are_found_by_hash_until_revoked,
    an_expired_key_is_not_active,
    a_keys_access_round_trips,
    a_rotation_ends_the_old_key_after_its_grace,
    deleting_a_users_keys_leaves_everyone_elses,
    a_close_retires_a_memory_without_a_successor,
    a_listing_pages_through_the_current_memories_in_creation_order,
    deferred_remembers_round_trip_oldest_first,
    forgetting_drops_the_deferred_remembers_that_stored_it,
    stats_count_what_a_user_has_stored,
    an_export_holds_every_memory_with_its_history,
    stats_and_exports_are_bounded_by_user_and_emptied_by_forgetting,
    an_export_is_one_snapshot_under_concurrent_writes,
    a_batch_commits_all_of_its_writes_or_none,
    a_batch_sees_its_own_writes,
    a_refused_write_leaves_the_batch_usable,
    a_bulk_delete_takes_exactly_what_it_selects,
    a_bulk_delete_takes_history_closed_memories_and_deferred_remembers,
    a_bulk_delete_by_date_takes_what_was_created_before,
    searches_after_a_bulk_delete_find_only_what_is_left,
    memories_stored_together_are_each_as_if_stored_alone,
    sealed_values_are_found_and_rewritten_only_if_unchanged,
    token_usage_is_a_total_per_user_and_day,
    token_usage_from_two_instances_adds_up_exactly,
    erasing_a_user_deletes_their_token_usage,
);

/// SQLite only: with a vector budget too small for two users, every switch of
/// user drops the other's copy, and searches and dedup stay correct.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_stays_correct_when_vector_copies_are_evicted() {
    let b = sqlite().await;
    let store = SqliteStore::open(&b.url, HashEmbedder::new(DIMS).identity())
        .await
        .unwrap()
        .with_vector_cache_bytes(1);
    let (alice, bob) = (scope("alice", None, None), scope("bob", None, None));
    let none = MetadataFilter::default();
    let a = add(
        &store,
        &alice,
        "Alice grows tomatoes on her balcony",
        json!({}),
    )
    .await;
    let bb = add(&store, &bob, "Bob restores old motorcycles", json!({})).await;
    for _ in 0..3 {
        for (who, id, text) in [
            (&alice, a, "tomatoes balcony"),
            (&bob, bb, "old motorcycles"),
        ] {
            let at = SearchScope {
                scope: who,
                filter: &none,
            };
            let q = HashEmbedder::new(DIMS).embed(text);
            let hits = store.vector_search(at, &q, 5).await.unwrap();
            assert_eq!(hits.iter().map(|h| h.id).collect::<Vec<_>>(), vec![id]);
        }
    }
    let dup = store
        .insert(
            new_memory(&alice, "Alice grows tomatoes on her balcony", json!({})),
            0.9,
        )
        .await
        .unwrap();
    assert!(matches!(dup, InsertOutcome::Duplicate { existing, .. } if existing.id == a));
}

// Retention: expiry and the purge.

fn expiring(scope: &Scope, text: &str, at: chrono::DateTime<chrono::Utc>) -> NewMemory {
    NewMemory {
        expires_at: Some(at),
        ..new_memory(scope, text, json!({}))
    }
}

async fn add_new(s: &dyn Store, new: NewMemory) -> MemoryId {
    match s.insert(new, 0.9).await.unwrap() {
        InsertOutcome::Added(m) => m.id,
        InsertOutcome::Duplicate { existing, .. } => panic!("unexpected duplicate of {existing:?}"),
    }
}

fn purge_record() -> engram::store::AuditRecord {
    engram::store::AuditRecord {
        at: chrono::Utc::now(),
        principal: "operator".into(),
        key_id: None,
        user_ref: None,
        transport: "cli".into(),
        client_addr: None,
        operation: "purge".into(),
        memory_ids: vec![],
        memory_count: 0,
        outcome: "ok".into(),
        query: None,
    }
}

fn plan_at(
    now: chrono::DateTime<chrono::Utc>,
    closed_before: Option<chrono::DateTime<chrono::Utc>>,
) -> engram::store::PurgePlan {
    engram::store::PurgePlan {
        now,
        closed_before,
        batch: 1000,
    }
}

/// An expired memory is gone for every read before any purge: searches,
/// scores, candidates, get, recent (and its count), history; and it never
/// makes a new memory with its text a duplicate. A memory that expires
/// later reads as usual and carries its expiry.
async fn an_expired_memory_is_never_returned_even_before_the_purge(b: Backend) {
    let s = b.store.as_ref();
    let alice = scope("alice", None, None);
    let now = chrono::Utc::now();
    let live = add(s, &alice, "Alice keeps bees in her garden", json!({})).await;
    let later = add_new(
        s,
        expiring(
            &alice,
            "Alice flies to Oslo in March",
            now + chrono::TimeDelta::days(3),
        ),
    )
    .await;
    let text = "Alice's passport is in the blue folder";
    let gone = add_new(
        s,
        expiring(&alice, text, now - chrono::TimeDelta::minutes(1)),
    )
    .await;
    let at = SearchScope::unfiltered(&alice);
    let q = HashEmbedder::new(DIMS).embed(text);

    let kw = s
        .keyword_search(at, "passport blue folder", 10)
        .await
        .unwrap();
    assert!(kw.iter().all(|h| h.id != gone), "{kw:?}");
    let vec = s.vector_search(at, &q, 10).await.unwrap();
    assert!(vec.iter().all(|h| h.id != gone), "{vec:?}");
    assert_eq!(vec.len(), 2, "the live memories fill the places: {vec:?}");
    let all = |c: &[Scored]| c.iter().map(|c| c.id).collect();
    let both = s.candidates(at, &q, text, 10, &all, None).await.unwrap();
    assert!(both.scored.iter().all(|c| c.id != gone), "{both:?}");
    let loaded = both.memories.unwrap_or_default();
    assert!(loaded.iter().all(|m| m.id != gone), "{loaded:?}");
    let scored = s.score("alice", &[gone, live], &q, text).await.unwrap();
    assert_eq!(scored.iter().map(|c| c.id).collect::<Vec<_>>(), vec![live]);
    assert!(s.get_many("alice", &[gone]).await.unwrap().is_empty());
    assert!(s.history("alice", gone).await.unwrap().is_empty());
    let (recent, total) = s.recent(&alice, 10).await.unwrap();
    assert_eq!(total, 2);
    assert!(recent.iter().all(|m| m.id != gone));
    let kept = read_back(s, "alice", later).await;
    assert_eq!(
        kept.expires_at.map(|t| t.timestamp_millis()),
        Some((now + chrono::TimeDelta::days(3)).timestamp_millis())
    );

    // The same text again is a new memory, found in its place.
    let again = add(s, &alice, text, json!({})).await;
    assert_ne!(again, gone);
    let kw = s
        .keyword_search(at, "passport blue folder", 10)
        .await
        .unwrap();
    assert_eq!(kw.iter().map(|h| h.id).collect::<Vec<_>>(), vec![again]);
    // And an update to the text of an expired memory is no conflict.
    let other = "Alice's visa is in the red folder";
    add_new(
        s,
        expiring(&alice, other, now - chrono::TimeDelta::minutes(1)),
    )
    .await;
    let updated = s
        .update(
            "alice",
            live,
            other,
            &HashEmbedder::new(DIMS).embed(other),
            "user",
        )
        .await
        .unwrap();
    assert_eq!(updated.map(|m| m.memory), Some(other.to_owned()));
}

/// The purge removes expired memories (current or closed) with their
/// history and the deferred remembers that stored them, leaves everything
/// else, moves the user's version, and appends its audit row naming what
/// went. A dry count says the same beforehand and changes nothing.
async fn a_purge_removes_expired_memories_and_moves_the_version(b: Backend) {
    let s = b.store.as_ref();
    let alice = scope("alice", None, None);
    let bob = scope("bob", None, None);
    let now = chrono::Utc::now();
    let past = now - chrono::TimeDelta::minutes(1);
    let live = add(s, &alice, "Alice keeps bees in her garden", json!({})).await;
    let gone = add_new(
        s,
        expiring(&alice, "Alice's passport is in the blue folder", past),
    )
    .await;
    let bobs = add_new(s, expiring(&bob, "Bob's locker code is 4411", past)).await;
    let future = now + chrono::TimeDelta::days(1);
    let soon = add_new(s, expiring(&bob, "Bob visits Rome next week", future)).await;
    s.add_pending(deferred(
        &alice,
        json!({"text": "x"}),
        json!({}),
        true,
        vec![gone],
        "model",
    ))
    .await
    .unwrap();
    let plan = plan_at(chrono::Utc::now(), None);
    let counted = s.purgeable(&plan).await.unwrap();
    assert_eq!((counted.expired, counted.history), (2, 0));
    assert_eq!(
        s.purgeable(&plan).await.unwrap(),
        counted,
        "counting changes nothing"
    );
    let version = s.version("alice").await.unwrap();

    let report = s.purge(&plan, Some(&purge_record())).await.unwrap();
    assert!(report.ran);
    assert_eq!((report.removed.expired, report.removed.history), (2, 0));
    assert_ne!(s.version("alice").await.unwrap(), version);
    let export = s.export("alice").await.unwrap();
    let ids: Vec<MemoryId> = export.memories.iter().map(|m| m.memory.id).collect();
    assert_eq!(ids, vec![live]);
    assert!(export.pending.is_empty(), "{:?}", export.pending);
    let bob_ids: Vec<MemoryId> = s
        .export("bob")
        .await
        .unwrap()
        .memories
        .iter()
        .map(|m| m.memory.id)
        .collect();
    assert_eq!(bob_ids, vec![soon]);
    assert!(!bob_ids.contains(&bobs));
    let rows = s
        .audit_rows(&engram::store::AuditQuery {
            operation: Some("purge".into()),
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].record.memory_count, 2);
    let mut named = rows[0].record.memory_ids.clone();
    named.sort();
    let mut expected = vec![gone, bobs];
    expected.sort();
    assert_eq!(named, expected);

    // Nothing left to do: no second row. Tomorrow, Bob's other memory goes.
    let again = s.purge(&plan, Some(&purge_record())).await.unwrap();
    assert_eq!(again.removed.total(), 0);
    let tomorrow = plan_at(future + chrono::TimeDelta::seconds(1), None);
    assert_eq!(s.purge(&tomorrow, None).await.unwrap().removed.expired, 1);
    assert!(s.export("bob").await.unwrap().memories.is_empty());
    // Searches after the purge (the SQLite copy reloads) find the live one only.
    let q = HashEmbedder::new(DIMS).embed("bees garden");
    let hits = s
        .vector_search(SearchScope::unfiltered(&alice), &q, 10)
        .await
        .unwrap();
    assert_eq!(hits.iter().map(|h| h.id).collect::<Vec<_>>(), vec![live]);
}

/// Superseded memories stay (in history) until the history retention has
/// passed since they were closed; then they go with their history rows,
/// and the current memory that replaced them keeps its own.
async fn superseded_memories_go_after_the_history_retention(b: Backend) {
    let s = b.store.as_ref();
    let alice = scope("alice", None, None);
    let old = add(s, &alice, "Alice lives in Porto", json!({})).await;
    let new = new_memory(&alice, "Alice lives in Lisbon", json!({}));
    let new_id = new.id;
    assert!(matches!(
        s.supersede(old, new).await.unwrap(),
        SupersedeOutcome::Superseded(_)
    ));
    let now = chrono::Utc::now();
    // No history retention: nothing is due.
    assert_eq!(
        s.purge(&plan_at(now, None), None)
            .await
            .unwrap()
            .removed
            .total(),
        0
    );
    // Closed less than the retention ago: kept.
    let before_close = now - chrono::TimeDelta::hours(1);
    assert_eq!(
        s.purge(&plan_at(now, Some(before_close)), None)
            .await
            .unwrap()
            .removed
            .total(),
        0
    );
    assert_eq!(s.history("alice", old).await.unwrap().len(), 2);
    // Thirty days on, with a retention of ten: the closed memory goes.
    let later = now + chrono::TimeDelta::days(30);
    let due = plan_at(later, Some(later - chrono::TimeDelta::days(10)));
    assert_eq!(s.purgeable(&due).await.unwrap().history, 1);
    let report = s.purge(&due, None).await.unwrap();
    assert_eq!((report.removed.expired, report.removed.history), (0, 1));
    assert!(s.history("alice", old).await.unwrap().is_empty());
    let export = s.export("alice").await.unwrap();
    assert_eq!(
        export
            .memories
            .iter()
            .map(|m| m.memory.id)
            .collect::<Vec<_>>(),
        vec![new_id]
    );
    assert_eq!(export.memories[0].history.len(), 1, "the ADD row stays");
}

/// Two instances purging the same database at once, in small rounds,
/// remove every due memory exactly once between them, and leave the rest.
async fn two_purges_at_once_remove_each_memory_once(b: Backend) {
    let s = b.store.clone();
    let other = b
        .open_again(HashEmbedder::new(DIMS).identity())
        .await
        .unwrap();
    let past = chrono::Utc::now() - chrono::TimeDelta::minutes(1);
    for user in ["ann", "ben", "cy"] {
        let at = scope(user, None, None);
        for i in 0..12 {
            let text = format!("{user} note number {i} about topic {}", i * 7919);
            add_new(s.as_ref(), expiring(&at, &text, past)).await;
        }
        add(
            s.as_ref(),
            &at,
            &format!("{user} keeps this one"),
            json!({}),
        )
        .await;
    }
    let plan = engram::store::PurgePlan {
        now: chrono::Utc::now(),
        closed_before: None,
        batch: 5,
    };
    let run = |store: Arc<dyn Store>| async move {
        let mut removed = 0;
        loop {
            let round = store.purge(&plan, Some(&purge_record())).await.unwrap();
            removed += round.removed.total();
            if round.ran && round.removed.total() == 0 {
                return removed;
            }
            if !round.ran {
                tokio::task::yield_now().await;
            }
        }
    };
    let (a, b2) = tokio::join!(tokio::spawn(run(s.clone())), tokio::spawn(run(other)));
    assert_eq!(a.unwrap() + b2.unwrap(), 36);
    assert_eq!(s.purgeable(&plan).await.unwrap().total(), 0);
    for user in ["ann", "ben", "cy"] {
        let (left, total) = s.recent(&scope(user, None, None), 20).await.unwrap();
        assert_eq!((left.len(), total), (1, 1), "{user}: {left:?}");
    }
    let rows = s
        .audit_rows(&engram::store::AuditQuery {
            operation: Some("purge".into()),
            limit: 100,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(rows.iter().map(|r| r.record.memory_count).sum::<u64>(), 36);
}

mod retention {
    use super::*;

    every_backend!(
        an_expired_memory_is_never_returned_even_before_the_purge,
        a_purge_removes_expired_memories_and_moves_the_version,
        superseded_memories_go_after_the_history_retention,
        two_purges_at_once_remove_each_memory_once,
    );
}
