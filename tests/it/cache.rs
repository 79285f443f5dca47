//! The cache against real Redis (the shared test server, and private
//! `redis-server` processes killed and stalled mid-test), on both stores.
//!
//! What must hold: repeated recalls and contexts come from the cache; no
//! write, by this process, another one or raw SQL, and no state of the cache
//! (up, killed, hanging, flapping, reachable from one process but not the
//! other) lets anyone observe a result older than the database or another
//! user's memory; forget leaves no key of the user behind.

use crate::common;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use common::postgres::TestDatabase;
use common::proxy::{Mode, Proxy};
use common::redis::{Peek, PrivateRedis, shared_url, unique_prefix};
use common::{Client, connect_with, ok, texts};
use engram::auth::Principal;
use engram::cache::user_key;
use engram::config::DEFAULT_CACHE_TTL_SECS;
use engram::context::UserContext;
use engram::embed::{EmbedError, Embedder, EmbedderIdentity, HashEmbedder, calibration};
use engram::extract::VerbatimExtractor;
use engram::model::{Event, MemoryId, Metadata};
use engram::params::{
    CorrectParams, ForgetParams, MemoryRef, RecallParams, RememberParams, UserContextParams,
};
use engram::service::{MemoryService, RecallResult, Settings};
use engram::{Config, startup};
use serde_json::json;

const DIMS: usize = 384;

/// Where the memories live; kept alive as long as the test needs them.
enum Db {
    Sqlite(#[allow(dead_code)] tempfile::TempDir, String),
    Postgres(TestDatabase),
}

impl Db {
    async fn sqlite() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}/engram.db", dir.path().display());
        Db::Sqlite(dir, url)
    }

    async fn postgres() -> Self {
        Db::Postgres(TestDatabase::create().await)
    }

    fn url(&self) -> &str {
        match self {
            Db::Sqlite(_, url) => url,
            Db::Postgres(db) => &db.url,
        }
    }
}

/// The hash embedder, presented as a remote one (its query vectors are then
/// cached), counting the query embeddings it is asked for.
struct RemoteLike {
    inner: HashEmbedder,
    queries: AtomicUsize,
    /// While set, every query fails as an unreachable server would.
    down: std::sync::atomic::AtomicBool,
}

impl RemoteLike {
    fn new() -> Arc<Self> {
        Arc::new(Self {
            inner: HashEmbedder::new(DIMS),
            queries: AtomicUsize::new(0),
            down: std::sync::atomic::AtomicBool::new(false),
        })
    }
}

#[async_trait]
impl Embedder for RemoteLike {
    fn identity(&self) -> EmbedderIdentity {
        self.inner.identity()
    }
    async fn embed_documents(&self, texts: &[String]) -> Result<Vec<Vec<f32>>, EmbedError> {
        self.inner.embed_documents(texts).await
    }
    async fn embed_query(&self, text: &str) -> Result<Vec<f32>, EmbedError> {
        if self.down.load(Ordering::SeqCst) {
            return Err(EmbedError::Failed("connection refused".into()));
        }
        self.queries.fetch_add(1, Ordering::SeqCst);
        self.inner.embed_query(text).await
    }
}

struct Cached<'a> {
    url: &'a str,
    prefix: &'a str,
    timeout_ms: u64,
    retry_ms: u64,
}

/// A service as `engram serve` builds it, on `db`, with the cache if given.
async fn service(
    db: &str,
    cache: Option<Cached<'_>>,
    embedder: Arc<dyn Embedder>,
) -> Arc<MemoryService> {
    let mut env: HashMap<String, String> = HashMap::new();
    env.insert("ENGRAM_DATABASE_URL".into(), db.into());
    if let Some(c) = &cache {
        env.insert("ENGRAM_CACHE_URL".into(), c.url.into());
        env.insert("ENGRAM_CACHE_PREFIX".into(), c.prefix.into());
        env.insert("ENGRAM_CACHE_TIMEOUT_MS".into(), c.timeout_ms.to_string());
        env.insert("ENGRAM_CACHE_RETRY_MS".into(), c.retry_ms.to_string());
    }
    let config = Config::load_from(None, &env).unwrap();
    let store = startup::store(&config, embedder.as_ref()).await.unwrap();
    let cache = startup::cache(&config).await.unwrap();
    let settings = Settings {
        dedup_threshold: config.memory.dedup_threshold,
        reconcile_threshold: config.memory.reconcile_threshold,
        max_text_bytes: config.memory.max_text_bytes,
        cache_ttl: Duration::from_secs(DEFAULT_CACHE_TTL_SECS),
        on_llm_error: engram::config::OnLlmError::Fail,
        ..Settings::default()
    };
    Arc::new(
        MemoryService::new(store, embedder, Arc::new(VerbatimExtractor), settings)
            .with_cache(cache),
    )
}

/// With a cache that is expected to stay up: a generous command timeout, so
/// a busy test machine does not turn into cache failures.
async fn cached(db: &str, cache_url: &str, prefix: &str) -> Arc<MemoryService> {
    let cache = Cached {
        url: cache_url,
        prefix,
        timeout_ms: 2000,
        retry_ms: 1000,
    };
    service(db, Some(cache), Arc::new(HashEmbedder::new(DIMS))).await
}

/// With a cache the test will break: the default 100 ms timeout, and trying
/// the cache again `retry_ms` after a failure.
async fn cached_retrying(
    db: &str,
    cache_url: &str,
    prefix: &str,
    retry_ms: u64,
) -> Arc<MemoryService> {
    let cache = Cached {
        url: cache_url,
        prefix,
        timeout_ms: 100,
        retry_ms,
    };
    service(db, Some(cache), Arc::new(HashEmbedder::new(DIMS))).await
}

async fn uncached(db: &str) -> Arc<MemoryService> {
    service(db, None, Arc::new(HashEmbedder::new(DIMS))).await
}

/// The caller of every call here: the operator, as on stdio.
const ME: &Principal = &Principal::Operator;

/// Where a recall looks: a user, narrowed to an agent or not.
struct At<'a>(&'a str, Option<&'a str>);

fn scope(user: &str) -> At<'_> {
    At(user, None)
}

fn forget_one(user: &str, id: MemoryId) -> ForgetParams {
    ForgetParams {
        memory_id: Some(id.to_string()),
        user_id: Some(user.into()),
        ..ForgetParams::default()
    }
}

fn forget_all(user: &str) -> ForgetParams {
    ForgetParams {
        user_id: Some(user.into()),
        all: Some(true),
        ..ForgetParams::default()
    }
}

fn context_of(user: &str, limit: i64, focus: Option<&str>) -> UserContextParams {
    UserContextParams {
        user_id: Some(user.into()),
        limit: Some(limit),
        query: focus.map(str::to_owned),
        ..UserContextParams::default()
    }
}

async fn remember(s: &MemoryService, user: &str, text: &str) -> (MemoryId, Event) {
    let r = s
        .remember(
            ME,
            RememberParams {
                text: Some(text.into()),
                user_id: Some(user.into()),
                ..RememberParams::default()
            },
        )
        .await
        .unwrap();
    (r.results[0].id, r.results[0].event)
}

async fn recall_with(
    s: &MemoryService,
    at: At<'_>,
    query: &str,
    limit: i64,
    filters: Option<Metadata>,
) -> RecallResult {
    let request = RecallParams {
        query: query.into(),
        user_id: Some(at.0.into()),
        agent_id: at.1.map(str::to_owned),
        limit: Some(limit),
        filters,
        ..RecallParams::default()
    };
    s.recall(ME, request).await.unwrap()
}

async fn recall(s: &MemoryService, user: &str, query: &str) -> RecallResult {
    recall_with(s, scope(user), query, 100, None).await
}

/// `got` is `want` but for the last bits of a float (a process's
/// in-process copy and PostgreSQL each compute a cosine their own way): the
/// same memories, each scored the same, and the scores in the same order,
/// so that two memories may trade places only if tied.
fn assert_same_answer(got: &RecallResult, want: &RecallResult, what: &str) {
    type Shown<'a> = (
        String,
        String,
        Option<engram::model::Degraded>,
        Vec<&'a engram::service::ScoredMemory>,
    );
    fn shown(r: &RecallResult) -> Shown<'_> {
        let mut memories: Vec<_> = r.results.iter().collect();
        memories.sort_by_key(|m| m.memory.id);
        (r.user_id.clone(), r.query.clone(), r.degraded, memories)
    }
    let ((user, query, degraded, by_id), (w_user, w_query, w_degraded, w_by_id)) =
        (shown(got), shown(want));
    assert_eq!(
        (user, query, degraded),
        (w_user, w_query, w_degraded),
        "{what}"
    );
    assert_eq!(by_id.len(), w_by_id.len(), "{what}: {got:?} {want:?}");
    let close = |a: Option<f32>, b: Option<f32>| match (a, b) {
        (Some(a), Some(b)) => (a - b).abs() < 1e-5,
        (a, b) => a == b,
    };
    for (g, w) in by_id.iter().zip(&w_by_id) {
        assert_eq!(g.memory, w.memory, "{what}");
        assert!(close(Some(g.score), Some(w.score)), "{what}: {g:?} {w:?}");
        assert!(close(g.vector_score, w.vector_score), "{what}: {g:?} {w:?}");
        assert!(
            close(g.keyword_score, w.keyword_score),
            "{what}: {g:?} {w:?}"
        );
    }
    for (g, w) in got.results.iter().zip(&want.results) {
        assert!(close(Some(g.score), Some(w.score)), "{what}: out of order");
    }
}

fn memories(r: &RecallResult) -> Vec<String> {
    let mut texts: Vec<String> = r.results.iter().map(|m| m.memory.memory.clone()).collect();
    texts.sort();
    texts
}

async fn context(s: &MemoryService, user: &str) -> UserContext {
    s.user_context(ME, context_of(user, 100, None))
        .await
        .unwrap()
}

async fn repeated_recalls_and_contexts_come_from_the_cache(db: Db) {
    let prefix = unique_prefix();
    let s = cached(db.url(), &shared_url(), &prefix).await;
    let plain = uncached(db.url()).await;
    for text in [
        "Prefers aisle seats on long flights",
        "Flies with TAP to Lisbon every spring",
        "Allergic to peanuts",
    ] {
        remember(&s, "alice", text).await;
    }
    remember(&s, "bob", "Flies to Oslo for work").await;

    let first = recall(&s, "alice", "flights to Lisbon").await;
    assert_eq!(s.cache_stats().misses, 1);
    let second = recall(&s, "alice", "flights to Lisbon").await;
    assert_eq!(s.cache_stats().hits, 1, "{:?}", s.cache_stats());
    assert_eq!(first, second, "the cached result is the computed one");
    let uncached = recall(&plain, "alice", "flights to Lisbon").await;
    assert_same_answer(&first, &uncached, "uncached");

    // Every parameter that shapes the result is part of the entry's name.
    let fewer = recall_with(&s, scope("alice"), "flights to Lisbon", 1, None).await;
    assert_eq!(fewer.results.len(), 1);
    let filtered = recall_with(
        &s,
        scope("alice"),
        "flights to Lisbon",
        100,
        json!({"role": "nobody"}).as_object().cloned(),
    )
    .await;
    assert!(filtered.results.is_empty());
    let agent = At("alice", Some("travel"));
    assert!(
        recall_with(&s, agent, "flights to Lisbon", 100, None)
            .await
            .results
            .is_empty()
    );
    let bob = recall(&s, "bob", "flights to Lisbon").await;
    assert_eq!(memories(&bob), ["Flies to Oslo for work"]);
    assert_eq!(s.cache_stats().hits, 1, "{:?}", s.cache_stats());
    assert_eq!(s.cache_stats().misses, 5);

    let c1 = context(&s, "alice").await;
    let c2 = context(&s, "alice").await;
    assert_eq!(c1, c2);
    assert_eq!(c1.total, 3);
    assert_eq!(c1, context(&plain, "alice").await);
    let focused = s
        .user_context(ME, context_of("alice", 2, Some("peanuts")))
        .await
        .unwrap();
    assert_eq!(focused.memories[0].memory, "Allergic to peanuts");
    let stats = s.cache_stats();
    assert_eq!((stats.hits, stats.misses), (2, 7), "{stats:?}");
    assert_eq!((stats.errors, stats.skipped), (0, 0));
}

async fn every_write_ends_the_cached_entries(db: Db) {
    let prefix = unique_prefix();
    let s = cached(db.url(), &shared_url(), &prefix).await;
    let (lisbon, _) = remember(&s, "alice", "Lives in Lisbon").await;
    let q = "where does she live and work";
    assert_eq!(memories(&recall(&s, "alice", q).await), ["Lives in Lisbon"]);
    assert_eq!(context(&s, "alice").await.total, 1);
    recall(&s, "alice", q).await;
    assert_eq!(s.cache_stats().hits, 1);

    // remember
    let (porto, _) = remember(&s, "alice", "Works in Porto on Mondays").await;
    assert_eq!(
        memories(&recall(&s, "alice", q).await),
        ["Lives in Lisbon", "Works in Porto on Mondays"]
    );
    assert_eq!(context(&s, "alice").await.total, 2);

    // a write by another process, which has no cache at all
    let other = uncached(db.url()).await;
    remember(&other, "alice", "Lives with her sister").await;
    assert_eq!(recall(&s, "alice", q).await.results.len(), 3);
    assert_eq!(context(&s, "alice").await.total, 3);

    // correct (a new version supersedes the memory)
    let corrected = s
        .correct(
            ME,
            MemoryRef {
                memory_id: porto.to_string(),
                user_id: Some("alice".into()),
            },
            CorrectParams {
                text: Some("Works in Braga on Mondays".into()),
                metadata: None,
            },
        )
        .await
        .unwrap();
    assert_eq!(corrected.event, Event::Supersede);
    let after = memories(&recall(&s, "alice", q).await);
    assert!(
        after.contains(&"Works in Braga on Mondays".to_owned())
            && !after.contains(&"Works in Porto on Mondays".to_owned()),
        "{after:?}"
    );
    assert_eq!(context(&s, "alice").await.total, 3);

    // forget one
    s.forget(ME, forget_one("alice", lisbon)).await.unwrap();
    let after = memories(&recall(&s, "alice", q).await);
    assert!(!after.contains(&"Lives in Lisbon".to_owned()), "{after:?}");
    assert_eq!(context(&s, "alice").await.total, 2);

    // forget all, then start again
    s.forget(ME, forget_all("alice")).await.unwrap();
    assert!(recall(&s, "alice", q).await.results.is_empty());
    assert_eq!(context(&s, "alice").await.total, 0);
    remember(&s, "alice", "Lives in Lisbon").await;
    assert_eq!(memories(&recall(&s, "alice", q).await), ["Lives in Lisbon"]);
    assert_eq!(context(&s, "alice").await.total, 1);
}

async fn forget_leaves_no_key_of_the_user(db: Db) {
    let prefix = unique_prefix();
    let url = shared_url();
    let s = cached(db.url(), &url, &prefix).await;
    let peek = Peek::connect(&url).await;
    let (first, _) = remember(&s, "alice", "Collects vinyl records").await;
    remember(&s, "alice", "Plays the cello").await;
    remember(&s, "bob", "Collects stamps").await;
    for user in ["alice", "bob"] {
        recall(&s, user, "collects").await;
        context(&s, user).await;
    }
    let alice = user_key(&prefix, "alice");
    let bob = user_key(&prefix, "bob");
    assert_eq!(
        peek.keys(&format!("{prefix}*")).await,
        sorted([&alice, &bob])
    );
    assert_eq!(peek.hash_fields(&alice).await.len(), 2);

    // One memory: every entry goes; a floor stays to refuse late writers.
    s.forget(ME, forget_one("alice", first)).await.unwrap();
    assert_eq!(peek.hash_fields(&alice).await, ["~floor"]);
    assert_eq!(
        memories(&recall(&s, "alice", "collects").await),
        ["Plays the cello"]
    );
    assert_eq!(
        peek.hash_fields(&alice).await.len(),
        2,
        "refilled above the floor"
    );

    // Everything: no key of alice's is left; bob's are untouched.
    s.forget(ME, forget_all("alice")).await.unwrap();
    assert_eq!(
        peek.keys(&format!("{prefix}*")).await,
        std::slice::from_ref(&bob)
    );
    assert_eq!(peek.hash_fields(&bob).await.len(), 2);
    assert!(recall(&s, "alice", "collects").await.results.is_empty());
    assert_eq!(
        peek.keys(&format!("{prefix}*")).await,
        [bob],
        "an empty user is not cached"
    );
}

/// A bulk forget ends the user's cached recalls and contexts (a floor
/// stays to refuse late writers), so none serves a deleted memory; another
/// user's entries stay.
async fn a_bulk_forget_ends_the_cached_entries(db: Db) {
    let prefix = unique_prefix();
    let url = shared_url();
    let s = cached(db.url(), &url, &prefix).await;
    let peek = Peek::connect(&url).await;
    for (text, topic) in [
        ("Flies to Lisbon every May", "travel"),
        ("Keeps a passport in the desk drawer", "travel"),
        ("Cooks green curry on Fridays", "food"),
    ] {
        let metadata = json!({ "topic": topic }).as_object().cloned();
        s.remember(
            ME,
            RememberParams {
                text: Some(text.into()),
                user_id: Some("alice".into()),
                metadata,
                ..RememberParams::default()
            },
        )
        .await
        .unwrap();
    }
    remember(&s, "bob", "Flies to Oslo every winter").await;
    let q = "flies passport curry";
    assert_eq!(recall(&s, "alice", q).await.results.len(), 3);
    assert_eq!(recall(&s, "alice", q).await.results.len(), 3);
    assert_eq!(context(&s, "alice").await.total, 3);
    recall(&s, "bob", q).await;
    assert_eq!(
        s.cache_stats().hits,
        1,
        "the second recall came from the cache"
    );
    let alice = user_key(&prefix, "alice");
    let bob = user_key(&prefix, "bob");
    assert_eq!(peek.hash_fields(&alice).await.len(), 2);

    let travel = ForgetParams {
        user_id: Some("alice".into()),
        all: Some(true),
        filters: json!({"topic": "travel"}).as_object().cloned(),
        ..ForgetParams::default()
    };
    let gone = s.forget(ME, travel).await.unwrap();
    assert_eq!(gone.deleted, 2);
    assert_eq!(peek.hash_fields(&alice).await, ["~floor"]);
    assert_eq!(
        memories(&recall(&s, "alice", q).await),
        ["Cooks green curry on Fridays"]
    );
    assert_eq!(context(&s, "alice").await.total, 1);
    assert_eq!(peek.hash_fields(&bob).await.len(), 1, "bob's entry stays");
    assert_eq!(
        memories(&recall(&s, "bob", q).await),
        ["Flies to Oslo every winter"]
    );
}

fn sorted<const N: usize>(keys: [&String; N]) -> Vec<String> {
    let mut keys: Vec<String> = keys.into_iter().cloned().collect();
    keys.sort();
    keys
}

async fn query_embeddings_of_remote_embedders_are_cached(db: Db) {
    let prefix = unique_prefix();
    let url = shared_url();
    let cache = || Cached {
        url: &url,
        prefix: &prefix,
        timeout_ms: 2000,
        retry_ms: 1000,
    };
    let remote = RemoteLike::new();
    let s = service(db.url(), Some(cache()), remote.clone()).await;
    remember(&s, "alice", "Drinks oat milk flat whites").await;
    remember(&s, "bob", "Drinks black coffee").await;

    recall(&s, "alice", "coffee order").await;
    recall_with(&s, scope("alice"), "coffee order", 3, None).await;
    recall(&s, "bob", "coffee order").await;
    s.user_context(ME, context_of("alice", 5, Some("coffee order")))
        .await
        .unwrap();
    // The first search also measures the embedder's floor (one query per
    // calibration question, each asked once and cached like any other).
    let calibration = calibration::QUESTIONS.len();
    assert_eq!(
        remote.queries.load(Ordering::SeqCst),
        1 + calibration,
        "one text, one call"
    );
    recall(&s, "alice", "milk").await;
    assert_eq!(remote.queries.load(Ordering::SeqCst), 2 + calibration);
    let stats = s.cache_stats();
    assert_eq!(
        (stats.vector_hits, stats.vector_misses),
        (3, 2 + calibration as u64),
        "{stats:?}"
    );

    // Another process with the same embedder reuses the vectors.
    let remote_b = RemoteLike::new();
    let b = service(db.url(), Some(cache()), remote_b.clone()).await;
    recall_with(&b, scope("bob"), "coffee order", 7, None).await;
    assert_eq!(remote_b.queries.load(Ordering::SeqCst), 0);

    // A local embedder computes instead: no vector is stored for it.
    let peek = Peek::connect(&url).await;
    let local_prefix = unique_prefix();
    let local = cached(db.url(), &url, &local_prefix).await;
    recall(&local, "alice", "a query only the local embedder saw").await;
    assert!(peek.keys(&format!("{local_prefix}qv:*")).await.is_empty());
    assert_eq!(
        peek.keys(&format!("{prefix}qv:*")).await.len(),
        2 + calibration
    );
}

macro_rules! on_both_stores {
    ($($test:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    super::$test(super::Db::sqlite().await).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    super::$test(super::Db::postgres().await).await;
                }
            )*
        }
    };
}

on_both_stores!(
    repeated_recalls_and_contexts_come_from_the_cache,
    every_write_ends_the_cached_entries,
    forget_leaves_no_key_of_the_user,
    a_bulk_forget_ends_the_cached_entries,
    query_embeddings_of_remote_embedders_are_cached,
    writes_made_in_sql_end_cached_entries,
);

/// Updates and supersessions made in SQL (as any tool, or a later engram
/// feature, may make them) end cached entries too: the version moves in the
/// database, not in engram (PostgreSQL's and SQLite's triggers).
async fn writes_made_in_sql_end_cached_entries(db: Db) {
    let s = cached(db.url(), &shared_url(), &unique_prefix()).await;
    let (id, _) = remember(&s, "alice", "Budget for Japan is 3000 euros").await;
    remember(&s, "alice", "Travels to Japan in April").await;
    let q = "Japan trip";
    assert_eq!(recall(&s, "alice", q).await.results.len(), 2);
    recall(&s, "alice", q).await;
    assert_eq!(s.cache_stats().hits, 1);

    // By hand, on the database engram uses, beside it.
    let by_hand = |pg: &'static str, lite: &'static str| {
        let (url, id) = (db.url().to_owned(), id.to_string());
        let is_pg = matches!(db, Db::Postgres(_));
        async move {
            if is_pg {
                let pool = sqlx::PgPool::connect(&url).await.unwrap();
                sqlx::query(pg).bind(id).execute(&pool).await.unwrap();
                pool.close().await;
            } else {
                let pool = sqlx::SqlitePool::connect(&url).await.unwrap();
                sqlx::query(lite).bind(id).execute(&pool).await.unwrap();
                pool.close().await;
            }
        }
    };
    by_hand(
        "UPDATE memories SET content = 'Budget for Japan is 4000 euros' WHERE id::text = $1",
        "UPDATE memories SET content = 'Budget for Japan is 4000 euros' WHERE id = ?1",
    )
    .await;
    assert!(
        memories(&recall(&s, "alice", q).await)
            .contains(&"Budget for Japan is 4000 euros".to_owned())
    );

    by_hand(
        "UPDATE memories SET valid_to = now() WHERE id::text = $1",
        "UPDATE memories SET valid_to = unixepoch('subsec') * 1000 WHERE id = ?1",
    )
    .await;
    assert_eq!(
        memories(&recall(&s, "alice", q).await),
        ["Travels to Japan in April"]
    );
    assert_eq!(context(&s, "alice").await.total, 1);
}

/// Two services, one database, one cache: each sees the other's writes at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_services_on_one_database_and_cache_stay_coherent() {
    let db = TestDatabase::create().await;
    let prefix = unique_prefix();
    let a = cached(&db.url, &shared_url(), &prefix).await;
    let b = cached(&db.url, &shared_url(), &prefix).await;
    let mut expected: Vec<String> = Vec::new();
    for i in 0..30 {
        let (writer, reader) = if i % 2 == 0 { (&a, &b) } else { (&b, &a) };
        let text = format!("Visited city number {i} on the grand tour");
        let (id, event) = remember(writer, "alice", &text).await;
        assert_eq!(event, Event::Add);
        expected.push(text);
        expected.sort();
        // Twice from each side: the second read of each is a cache hit.
        for s in [reader, reader, writer, writer] {
            assert_eq!(
                memories(&recall(s, "alice", "grand tour city").await),
                expected
            );
            assert_eq!(context(s, "alice").await.total, expected.len() as u64);
        }
        if i % 5 == 4 {
            reader.forget(ME, forget_one("alice", id)).await.unwrap();
            expected.retain(|t| t != &format!("Visited city number {i} on the grand tour"));
            for s in [writer, reader] {
                assert_eq!(
                    memories(&recall(s, "alice", "grand tour city").await),
                    expected
                );
            }
        }
    }
    for s in [&a, &b] {
        let stats = s.cache_stats();
        assert!(stats.hits >= 60, "{stats:?}");
        assert_eq!(stats.errors, 0, "{stats:?}");
    }
}

/// The cache server is killed mid-test: every request still succeeds with
/// the database's answer, and the cache is used again once it is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_cache_is_survived_and_used_again_when_it_returns() {
    let db = Db::sqlite().await;
    let mut redis = PrivateRedis::start().await;
    let s = cached_retrying(db.url(), &redis.url(), "engram:", 1000).await;
    let plain = uncached(db.url()).await;
    remember(&s, "alice", "Runs marathons").await;
    recall(&s, "alice", "running").await;
    recall(&s, "alice", "running").await;
    assert_eq!(s.cache_stats().hits, 1);

    redis.kill();
    for i in 0..10 {
        let (id, _) = remember(&s, "alice", &format!("Ran race number {i} this year")).await;
        let got = recall(&s, "alice", "race running").await;
        let want = recall(&plain, "alice", "race running").await;
        assert_same_answer(&got, &want, "race");
        assert!(memories(&got).contains(&format!("Ran race number {i} this year")));
        assert_eq!(context(&s, "alice").await, context(&plain, "alice").await);
        if i % 3 == 0 {
            s.forget(ME, forget_one("alice", id)).await.unwrap();
            assert!(
                !memories(&recall(&s, "alice", "race running").await)
                    .contains(&format!("Ran race number {i} this year"))
            );
        }
    }
    let down = s.cache_stats();
    assert!(down.errors >= 1, "{down:?}");
    assert!(down.skipped >= 1, "later requests skip the cache: {down:?}");
    assert_eq!(down.hits, 1);

    redis.restart().await;
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let expected = recall(&plain, "alice", "race running").await;
        let got = recall(&s, "alice", "race running").await;
        assert_same_answer(&got, &expected, "race, cached");
        if s.cache_stats().hits > 1 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "cache not used again: {:?}",
            s.cache_stats()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let peek = Peek::connect(&redis.url()).await;
    assert_eq!(
        peek.keys("engram:u:*").await,
        [user_key("engram:", "alice")]
    );
}

/// A full cache (memory limit reached, no eviction) refuses every write:
/// requests succeed without it, and it is used again once it has room.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_cache_is_survived_and_used_again_when_it_has_room() {
    let db = Db::sqlite().await;
    let redis = PrivateRedis::start().await;
    let s = cached_retrying(db.url(), &redis.url(), "engram:", 50).await;
    let plain = uncached(db.url()).await;
    let peek = Peek::connect(&redis.url()).await;
    let config = |key: &str, value: &str| vec!["SET".into(), key.into(), value.into()];
    peek.command("CONFIG", config("maxmemory-policy", "noeviction"))
        .await;
    peek.command("CONFIG", config("maxmemory", "1")).await;

    remember(&s, "alice", "Grows tomatoes on the balcony").await;
    for i in 0..5 {
        remember(&s, "alice", &format!("Planted seedling batch {i}")).await;
        let got = recall(&s, "alice", "balcony garden seedling").await;
        let want = recall(&plain, "alice", "balcony garden seedling").await;
        assert_same_answer(&got, &want, "seedling");
        assert_eq!(context(&s, "alice").await.total, i + 2);
        tokio::time::sleep(Duration::from_millis(60)).await;
    }
    let full = s.cache_stats();
    assert_eq!(full.hits, 0, "{full:?}");
    assert!(full.errors >= 2, "refused writes are failures: {full:?}");
    assert!(peek.keys("engram:*").await.is_empty());

    peek.command("CONFIG", config("maxmemory", "0")).await;
    let deadline = Instant::now() + Duration::from_secs(15);
    while s.cache_stats().hits == 0 {
        assert!(Instant::now() < deadline, "{:?}", s.cache_stats());
        let got = recall(&s, "alice", "balcony garden seedling").await;
        let want = recall(&plain, "alice", "balcony garden seedling").await;
        assert_same_answer(&got, &want, "seedling");
        tokio::time::sleep(Duration::from_millis(60)).await;
    }
}

/// A hanging cache (the server blocked) costs each request at most the
/// command timeout, and a forget made meanwhile is carried out when the
/// cache answers again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purges_made_while_the_cache_hangs_are_replayed() {
    let db = Db::sqlite().await;
    let redis = PrivateRedis::start().await;
    let s = cached_retrying(db.url(), &redis.url(), "engram:", 1000).await;
    remember(&s, "alice", "Keeps bees").await;
    remember(&s, "bob", "Keeps chickens").await;
    for user in ["alice", "bob"] {
        recall(&s, user, "keeps").await;
    }
    let peek = Peek::connect(&redis.url()).await;
    assert_eq!(peek.keys("engram:u:*").await.len(), 2);

    // The server stops answering every client for 3 s.
    peek.command("CLIENT", vec!["PAUSE".into(), "3000".into(), "ALL".into()])
        .await;
    let started = Instant::now();
    s.forget(ME, forget_all("alice")).await.unwrap();
    assert!(recall(&s, "alice", "keeps").await.results.is_empty());
    assert_eq!(
        memories(&recall(&s, "bob", "keeps").await),
        ["Keeps chickens"]
    );
    let took = started.elapsed();
    assert!(
        took < Duration::from_millis(2500),
        "requests waited for the hung cache: {took:?}"
    );
    assert!(s.cache_stats().errors >= 1, "{:?}", s.cache_stats());

    // Once the server answers, the next use of the cache replays the purge.
    let deadline = Instant::now() + Duration::from_secs(15);
    while peek
        .keys("engram:u:*")
        .await
        .contains(&user_key("engram:", "alice"))
    {
        assert!(Instant::now() < deadline, "alice's key was never purged");
        recall(&s, "bob", "keeps").await;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        memories(&recall(&s, "bob", "keeps").await),
        ["Keeps chickens"]
    );
}

/// One process reaches the cache through a proxy that passes, refuses and
/// stalls at random; another reaches it directly; a third has no cache.
/// Whatever the proxy does, every answer equals the uncached one and holds
/// only the asking user's memories.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flapping_cache_never_serves_stale_or_foreign_results() {
    let db = Db::postgres().await;
    let url = shared_url();
    let prefix = unique_prefix();
    let proxy = Proxy::start(url.clone()).await;
    // Retrying soon after each failure, so it goes back to the cache within
    // each passing spell and meets entries from before the last outage.
    let flaky = cached_retrying(db.url(), &proxy.url(), &prefix, 20).await;
    let direct = cached(db.url(), &url, &prefix).await;
    let truth = uncached(db.url()).await;
    let users = ["ann", "ben", "cat"];
    let mut rng = fastrand_like(42);
    let mut written: HashMap<&str, Vec<MemoryId>> = HashMap::new();

    for step in 0..120 {
        if step % 8 == 0 {
            proxy.set(match rng() % 3 {
                0 => Mode::Pass,
                1 => Mode::Refuse,
                _ => Mode::Stall,
            });
        }
        let user = users[(rng() % 3) as usize];
        let (writer, reader) = if rng().is_multiple_of(2) {
            (&flaky, &direct)
        } else {
            (&direct, &flaky)
        };
        match rng() % 4 {
            0 if written.get(user).is_some_and(|ids| !ids.is_empty()) => {
                let ids = written.get_mut(user).unwrap();
                let id = ids.remove((rng() as usize) % ids.len());
                writer.forget(ME, forget_one(user, id)).await.unwrap();
            }
            _ => {
                let text = format!("{user} noted fact {step} about the garden");
                let (id, _) = remember(writer, user, &text).await;
                written.entry(user).or_default().push(id);
            }
        }
        for s in [reader, writer, reader] {
            let got = recall(s, user, "fact about the garden").await;
            let want = recall(&truth, user, "fact about the garden").await;
            assert_same_answer(&got, &want, &format!("step {step}"));
            assert!(got.results.iter().all(|m| m.memory.scope.user_id() == user));
            assert!(
                memories(&got).iter().all(|t| t.starts_with(user)),
                "{got:?}"
            );
            assert_eq!(
                context(s, user).await,
                context(&truth, user).await,
                "step {step}"
            );
        }
    }
    eprintln!("flapping: flaky {:?}", flaky.cache_stats());
    assert!(flaky.cache_stats().errors > 0, "{:?}", flaky.cache_stats());
    assert!(direct.cache_stats().hits > 0, "{:?}", direct.cache_stats());

    // Passing for good: the flaky process is served from the cache again.
    proxy.set(Mode::Pass);
    let hits = flaky.cache_stats().hits;
    let deadline = Instant::now() + Duration::from_secs(15);
    while flaky.cache_stats().hits == hits {
        assert!(Instant::now() < deadline, "{:?}", flaky.cache_stats());
        for user in users {
            let got = recall(&flaky, user, "fact about the garden").await;
            let want = recall(&truth, user, "fact about the garden").await;
            assert_same_answer(&got, &want, "passing");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A keywords-only answer given while the embedder was down is not cached:
/// once it is back, the same recall gets both signals.
#[tokio::test]
async fn an_answer_without_the_embedder_is_never_cached() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}/engram.db", dir.path().display());
    let remote = RemoteLike::new();
    let cache = Cached {
        url: &shared_url(),
        prefix: &unique_prefix(),
        timeout_ms: 2000,
        retry_ms: 1000,
    };
    let s = service(&db, Some(cache), remote.clone()).await;
    remember(&s, "alice", "Drinks oat milk flat whites").await;
    remember(&s, "alice", "Walks the dog at dawn").await;

    remote.down.store(true, Ordering::SeqCst);
    let down = recall(&s, "alice", "oat milk").await;
    assert_eq!(down.degraded, Some(engram::model::Degraded::Embedder));
    assert_eq!(down.results[0].memory.memory, "Drinks oat milk flat whites");
    let focused = s
        .user_context(ME, context_of("alice", 5, Some("dog")))
        .await
        .unwrap();
    assert_eq!(focused.degraded, Some(engram::model::Degraded::Embedder));

    remote.down.store(false, Ordering::SeqCst);
    let up = recall(&s, "alice", "oat milk").await;
    assert_eq!(up.degraded, None, "the degraded answer was cached");
    assert!(up.results[0].vector_score.is_some());
    let focused = s
        .user_context(ME, context_of("alice", 5, Some("dog")))
        .await
        .unwrap();
    assert_eq!(focused.degraded, None, "the degraded context was cached");
    assert_eq!(
        recall(&s, "alice", "oat milk").await,
        up,
        "now from the cache"
    );
    assert_eq!(s.cache_stats().hits, 1, "{:?}", s.cache_stats());
}

/// A small deterministic generator (xorshift), so a failure replays.
fn fastrand_like(seed: u64) -> impl FnMut() -> u64 {
    let mut x = seed;
    move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    }
}

async fn serve_cached(db: &str, cache_url: &str, prefix: &str) -> Client {
    let env = [
        ("ENGRAM_DATABASE_URL", db),
        ("ENGRAM_CACHE_URL", cache_url),
        ("ENGRAM_CACHE_PREFIX", prefix),
        ("ENGRAM_DEFAULT_USER", "zoe"),
    ];
    connect_with(std::path::Path::new("/nonexistent/unused.db"), &env).await
}

/// The real binary, twice, over MCP stdio: one database, one cache.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_engram_processes_share_one_cache_coherently() {
    let db = TestDatabase::create().await;
    let prefix = unique_prefix();
    let url = shared_url();
    let a = serve_cached(&db.url, &url, &prefix).await;
    let b = serve_cached(&db.url, &url, &prefix).await;

    ok(
        &a,
        "remember",
        json!({"text": "Speaks Portuguese and Dutch"}),
    )
    .await;
    for _ in 0..2 {
        let found = ok(
            &b,
            "recall",
            json!({"query": "languages spoken Portuguese"}),
        )
        .await;
        assert_eq!(texts(&found), ["Speaks Portuguese and Dutch"]);
    }
    let added = ok(
        &a,
        "remember",
        json!({"text": "Learning Portuguese grammar weekly"}),
    )
    .await;
    let found = ok(
        &b,
        "recall",
        json!({"query": "languages spoken Portuguese"}),
    )
    .await;
    assert_eq!(texts(&found).len(), 2, "{found}");

    let id = added["results"][0]["id"].as_str().unwrap().to_owned();
    ok(&b, "forget", json!({"memory_id": id})).await;
    let found = ok(
        &a,
        "recall",
        json!({"query": "languages spoken Portuguese"}),
    )
    .await;
    assert_eq!(texts(&found), ["Speaks Portuguese and Dutch"]);
    let context = ok(&a, "user_context", json!({})).await;
    assert_eq!(context["total"], 1);

    ok(&a, "forget", json!({"all": true, "user_id": "zoe"})).await;
    let peek = Peek::connect(&url).await;
    assert!(peek.keys(&format!("{prefix}u:*")).await.is_empty());
    let found = ok(
        &b,
        "recall",
        json!({"query": "languages spoken Portuguese"}),
    )
    .await;
    assert!(texts(&found).is_empty());
    a.cancel().await.unwrap();
    b.cancel().await.unwrap();
}
