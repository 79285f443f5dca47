//! The production store: PostgreSQL with pgvector (migrations/postgres).
//!
//! The database does the work the SQLite store does in process, so any
//! number of engram processes can share it:
//! * vector search is `engram_nearest`, which picks an exact scan or the
//!   vector index (HNSW with iterative scans, or pgvectorscale's DiskANN) per
//!   call from how many rows are in scope, so a user filter never drops rows;
//! * deduplication is the `memories_refuse_duplicate` trigger, under a
//!   per-user advisory lock. It reports near-duplicates (SQLSTATE EG001) rather
//!   than deciding alone: [`Writes::insert`] applies the same details guard
//!   as SQLite ([`details_differ`]) and retries with the candidates it judged
//!   different, so both stores agree on what a duplicate is;
//! * keyword search is BM25 as [`crate::keywords`] defines it, by
//!   `engram_keyword_search`, over `keyword_postings`: one narrow row per
//!   distinct term of each current memory, keyed by (user, term, memory).
//!   The terms are made here, in Rust, and written in the transaction that
//!   makes a memory current or changes its text; triggers drop them when it
//!   stops being current and keep each user's count and total length in
//!   `memory_users`. A term's document frequency is kept in `keyword_terms`
//!   for users of 10,000 memories or more (`memory_users.keeps_term_counts`)
//!   and counted from the postings by the SQL search for the others.
//!   A store whose postings predate this build gets them at open
//!   ([`PgStore::open`]). Recall reads them from an in-process copy of the
//!   user's postings (`keyword_copy`) while the copy is of the user's
//!   current version, and from SQL otherwise. A small user's copy holds
//!   their vectors too (`copy_vectors`), and recall's nearest memories are
//!   then found in process; a larger user's holds 8-bit codes of them
//!   (`copy_codes`), which name the few rows PostgreSQL scores exactly.
//!
//! The embedding column's dimension is fixed when a store is first opened with
//! an embedder, which is also recorded; a different one is refused.
//!
//! One file per concern: `write` ([`Writes`]), `read` ([`Reads`]), `search`
//! ([`Search`]), `queue` ([`PendingQueue`]), `keys` ([`Keys`]), `reports`
//! ([`Reports`]), `versions` ([`Versions`]), `usage` ([`TokenUsage`]);
//! beside them `schema`
//! (migrations, the dimension, the vector index), `keyword_index` (postings
//! written and rebuilt) and `rows` (the dialect: how rows hold ids, times
//! and JSON, for the shared mapping). What both stores do alike is written
//! once in `store/shared`. This file opens the store: options, pools,
//! re-embedding; `session` says how each connection is set up. Two tasks
//! run beside each store: `indexer` moves rows waiting outside the vector
//! index into it, and `statistics` analyzes tables whose statistics are
//! behind their changes (so cached plans are made again as tables grow);
//! `background` repeats their passes and stops them with the store.
//!
//! The URLs (docs/managed-postgres.md, "URLs and roles"):
//! * `url` (`database_url`): requests, as the runtime role; may be a
//!   transaction pooler ([`PgOptions::pooler`]);
//! * [`PgOptions::direct_url`]: a session (no transaction pooler) as the
//!   same role: operator-wide work, and setup when no owner URL is given.
//!   Without it, `url` (which then must not be a transaction pooler);
//! * [`PgOptions::owner_url`]: a session as the schema's owner: migrations,
//!   index builds, grants. Without it, the direct URL.
//!
//! [`Writes`]: super::Writes
//! [`Writes::insert`]: super::Writes::insert
//! [`details_differ`]: crate::model::details_differ
//! [`Reads`]: super::Reads
//! [`Search`]: super::Search
//! [`PendingQueue`]: super::PendingQueue
//! [`Keys`]: super::Keys
//! [`Reports`]: super::Reports
//! [`Versions`]: super::Versions
//! [`TokenUsage`]: super::TokenUsage

use std::time::Duration;

use pgvector::Vector;
use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::{Connection, PgConnection, Row};
use uuid::Uuid;

use super::shared::next_batch;
use super::{Store, StoreError, db};
use crate::embed::{Embedder, EmbedderIdentity};

mod audit;
mod background;
mod copy_codes;
mod copy_uses;
mod copy_vectors;
mod import;
mod indexer;
mod keys;
mod keyword_copy;
mod keyword_index;
mod queue;
mod read;
mod reports;
mod retention;
mod roles;
mod round;
mod rows;
mod schema;
mod scope;
mod sealed;
mod search;
mod session;
mod statistics;
mod usage;
mod versions;
mod write;

pub use schema::IndexKind;
pub use session::Pooler;

/// The bytes users' keyword copies may hold unless told otherwise
/// ([`PgStore::with_keyword_copy_bytes`]).
pub const DEFAULT_KEYWORD_COPY_BYTES: usize = 64 * 1024 * 1024;

/// Connections a store holds open unless told otherwise.
pub const DEFAULT_POOL_SIZE: u32 = 16;

/// How long a call waits for a working connection (a free one, or a new one
/// connected) before it fails, unless told otherwise: the bound on how long
/// a request waits when the database is gone.
pub const DEFAULT_ACQUIRE_TIMEOUT: Duration = Duration::from_secs(3);

/// How long one statement of a request may run before the database cancels
/// it (`statement_timeout` on every request connection).
pub const DEFAULT_STATEMENT_TIMEOUT: Duration = Duration::from_secs(5);

use keyword_index::ensure_keyword_index;
use roles::{current_role, grant_runtime_role, policies_bypassed_by};
use schema::{
    bind_dimension, check_dims, check_migrated, ensure_vector_index, lock_schema, migrate_pool,
};
use scope::{ALL_USERS, OPERATOR_POOL_SIZE};
use session::{Settings, connect_options, reachable};

/// How a PostgreSQL store is opened.
#[derive(Debug, Clone)]
pub struct PgOptions {
    /// The owner role's URL (the two-role setup, [`PgStore::open`]): when
    /// set, migrations and index builds run as it and the runtime role is
    /// granted what serving needs; otherwise the direct URL does both. A
    /// session connection: never a transaction pooler.
    pub owner_url: Option<String>,
    /// A session connection (direct, or a pooler in session mode) as the
    /// runtime role, for what needs a session: operator-wide work (its
    /// connections see every user's rows by a session setting) and, without
    /// an owner URL, setup (migrations hold a session advisory lock).
    /// `None`: the runtime URL, which then must be a session too.
    pub direct_url: Option<String>,
    /// What stands between engram and the database on the runtime URL.
    /// [`Pooler::Transaction`] needs `direct_url` or fails at open.
    pub pooler: Pooler,
    pub pool_size: u32,
    /// How long a call waits for a connection before failing with a
    /// database error ([`DEFAULT_ACQUIRE_TIMEOUT`]). A free connection is
    /// pinged before use, within the same bound, so a database that stopped
    /// answering is noticed rather than waited on.
    pub acquire_timeout: Duration,
    /// How long one statement on a request connection may run before the
    /// database cancels it ([`DEFAULT_STATEMENT_TIMEOUT`]); `None`: no
    /// limit. Opening the store (migrations, index builds) is not bound by it.
    pub statement_timeout: Option<Duration>,
    /// Apply pending migrations; otherwise refuse to open a schema that is behind.
    pub migrate: bool,
    pub index: IndexKind,
    /// When vector search scans a scope exactly instead of using the index
    /// (`engram_exact_scan_limit` in the schema); defaults unless set.
    pub plan: PlanSettings,
    /// How often the store looks for rows waiting to enter the vector index
    /// (`indexer`); `None`: never (they are then added by [`PgStore::index_backlog`]).
    pub index_backlog_every: Option<Duration>,
    /// How often the store looks for tables whose statistics are behind
    /// their changes and analyzes them (`statistics`); `None`: never (they
    /// are then left to autovacuum, or [`PgStore::analyze_stale_tables`]).
    pub analyze_every: Option<Duration>,
}

/// The session settings `engram_exact_scan_limit` reads: exact scans for
/// scopes of at most `exact_scan_max_rows` rows, or whose rows² are below
/// `exact_scan_ratio` × the table's rows. Zero for both forces the index.
#[derive(Debug, Clone, Copy, Default)]
pub struct PlanSettings {
    pub exact_scan_max_rows: Option<u64>,
    pub exact_scan_ratio: Option<f64>,
    /// HNSW's search list size on the index path (schema default 250, at least 2k).
    pub ef_search: Option<u32>,
    /// From how many current memories a user's new rows go into the vector
    /// index (`engram_index_from_rows`, schema default 1,000).
    pub index_from_rows: Option<u64>,
    /// How many of a large user's rows may wait outside the vector index
    /// for the indexer before new rows go in directly
    /// (`engram_index_tail_rows`, schema default 2,048); 0: none wait.
    pub index_tail_rows: Option<u64>,
}

impl PlanSettings {
    /// Every search through the vector index (for tests and benchmarks).
    pub const ALWAYS_INDEX: Self = Self {
        exact_scan_max_rows: Some(0),
        exact_scan_ratio: Some(0.0),
        ef_search: None,
        index_from_rows: Some(0),
        index_tail_rows: Some(0),
    };
    /// Every search an exact scan (the reference for recall measurements).
    pub const ALWAYS_EXACT: Self = Self {
        exact_scan_max_rows: Some(1_000_000_000_000),
        exact_scan_ratio: None,
        ef_search: None,
        index_from_rows: None,
        index_tail_rows: None,
    };
}

impl Default for PgOptions {
    fn default() -> Self {
        Self {
            pool_size: DEFAULT_POOL_SIZE,
            acquire_timeout: DEFAULT_ACQUIRE_TIMEOUT,
            statement_timeout: Some(DEFAULT_STATEMENT_TIMEOUT),
            migrate: true,
            index: IndexKind::Auto,
            plan: PlanSettings::default(),
            owner_url: None,
            direct_url: None,
            pooler: Pooler::None,
            index_backlog_every: Some(Duration::from_secs(1)),
            analyze_every: Some(Duration::from_secs(1)),
        }
    }
}

pub struct PgStore {
    /// Requests: each per-user call in a transaction scoped to its user
    /// ([`PgStore::user_transaction`]); no connection sees any user's rows
    /// otherwise. Possibly through a transaction pooler: every statement on
    /// it runs in a transaction begun with `settings` (`session`).
    pool: PgPool,
    /// What each transaction on `pool` begins with.
    settings: Settings,
    /// Operator-wide work, whose sessions see every user's rows (`scope`):
    /// on the direct URL.
    operator: PgPool,
    embedder: EmbedderIdentity,
    index: IndexKind,
    /// Users' keyword postings in process, for recall (`keyword_copy`).
    keyword_copies: std::sync::Arc<keyword_copy::KeywordCopies>,
    /// Stops with the store.
    _indexer: Option<background::Background>,
    /// Stops with the store.
    _analyzer: Option<background::Background>,
}

impl PgStore {
    /// Bounds the users' keyword copies (`keyword_copy`) to `bytes`; 0
    /// turns them off, and recall's keyword side stays in SQL.
    pub fn with_keyword_copy_bytes(mut self, bytes: usize) -> Self {
        let limits = self.keyword_copies.vector_limits();
        let copies = keyword_copy::KeywordCopies::new(bytes).with_vector_limits(limits);
        self.keyword_copies = std::sync::Arc::new(copies);
        self
    }

    /// Copies hold the vectors of users of at most `floats` rows times
    /// dimensions (by default the duplicate check's exact-scan budget,
    /// `copy_vectors::MAX_FLOATS`); 0 keeps floats out of copies (larger
    /// users' codes stay: see [`Self::with_copy_code_bytes`]).
    pub fn with_copy_vector_floats(self, floats: usize) -> Self {
        let limits = self.keyword_copies.vector_limits();
        self.with_vector_limits(keyword_copy::VectorLimits { floats, ..limits })
    }

    /// Copies hold codes of the vectors of users past the floats, up to
    /// `bytes` rows times dimensions (`copy_codes::MAX_CODE_BYTES` by
    /// default); 0 keeps codes out of copies, and those users' recall
    /// searches the vector index (tests and benchmarks).
    pub fn with_copy_code_bytes(self, bytes: usize) -> Self {
        let limits = self.keyword_copies.vector_limits();
        self.with_vector_limits(keyword_copy::VectorLimits {
            code_bytes: bytes,
            ..limits
        })
    }

    fn with_vector_limits(mut self, limits: keyword_copy::VectorLimits) -> Self {
        let copies = keyword_copy::KeywordCopies::new(self.keyword_copies.budget());
        self.keyword_copies = std::sync::Arc::new(copies.with_vector_limits(limits));
        self
    }

    /// Connects to `url` (`postgres://...`), brings the schema up to date (or
    /// checks it is, with `migrate: false`), binds the store to `embedder` on
    /// first open (refusing another one later), makes sure the vector index
    /// exists and that the keyword postings are this build's (rebuilding
    /// them once, in one transaction, when they are not).
    ///
    /// With `options.owner_url`, that setup runs as the owner role and the
    /// role of `url` is granted what serving needs (`roles`): the two-role
    /// setup, in which the role serving requests owns nothing. Either way a
    /// role that skips row-level security (a superuser) is warned about.
    ///
    /// Setup and operator-wide work need a session: behind a transaction
    /// pooler ([`PgOptions::pooler`]) they go to `options.direct_url` (and
    /// the owner's URL), and opening fails without one.
    pub async fn open(
        url: &str,
        embedder: EmbedderIdentity,
        options: PgOptions,
    ) -> Result<Self, StoreError> {
        check_dims(&embedder)?;
        let direct_url = session_url(url, &options)?;
        let (pool, settings, operator) = connect(url, direct_url, &options).await?;
        let setup_url = options.owner_url.as_deref().unwrap_or(direct_url);
        // Opening may build indexes for minutes: on a connection of its
        // own, without the statement bound of requests.
        let setup = Settings::new(&options.plan, None)
            .with(ALL_USERS.0, ALL_USERS.1)
            .session_pool(
                connect_options(setup_url, Pooler::None)?,
                1,
                options.acquire_timeout,
            );
        reachable(&setup, setup_url).await?;
        if options.migrate {
            migrate_pool(setup_url, &setup).await?;
        } else {
            check_migrated(setup_url, &setup).await?;
        }
        let mut runtime = pool
            .begin_with(sqlx::AssertSqlSafe(settings.begin("BEGIN READ ONLY", None)))
            .await
            .map_err(db("opening the store"))?;
        let runtime_role = match options.owner_url {
            Some(_) => Some(current_role(&mut runtime).await?),
            None => None,
        };
        match policies_bypassed_by(&mut runtime).await? {
            Some(why) => tracing::warn!(
                "row-level security is not enforced: {why}, and PostgreSQL applies no \
                 policy to it; serve as a role that owns nothing (see the README's \
                 two-role setup)"
            ),
            None => tracing::info!("row-level security enforced for every per-user table"),
        }
        runtime.commit().await.map_err(db("opening the store"))?;
        let store = Self {
            pool,
            settings,
            operator,
            embedder,
            index: options.index,
            keyword_copies: std::sync::Arc::new(keyword_copy::KeywordCopies::new(
                DEFAULT_KEYWORD_COPY_BYTES,
            )),
            _indexer: None,
            _analyzer: None,
        };
        let mut tx = setup.begin().await.map_err(db("opening the store"))?;
        lock_schema(&mut tx).await?;
        // Under the schema lock: two instances granting at once would
        // collide on the catalog ("tuple concurrently updated").
        if let Some(role) = &runtime_role {
            grant_runtime_role(&mut tx, role).await?;
        }
        store.bind_embedder(&mut tx).await?;
        // Before the vector index: a rebuild that rewrites memories drops it.
        ensure_keyword_index(&mut tx).await?;
        let index = ensure_vector_index(&mut tx, store.index).await?;
        tx.commit().await.map_err(db("opening the store"))?;
        setup.close().await;
        tracing::info!(embedder = %store.embedder, ?index, "PostgreSQL store ready");
        let _indexer = options
            .index_backlog_every
            .map(|every| indexer::spawn(store.operator.clone(), every));
        let _analyzer = options
            .analyze_every
            .map(|every| statistics::spawn(store.operator.clone(), every));
        Ok(Self {
            index,
            _indexer,
            _analyzer,
            ..store
        })
    }

    /// `engram migrate`: everything opening the store does to the schema
    /// (migrations, the embedder's dimension, the indexes, and with
    /// `options.owner_url` the runtime role's grants), so that servers may
    /// then start as a role that owns nothing, without the owner's URL.
    pub async fn migrate(
        url: &str,
        embedder: EmbedderIdentity,
        options: PgOptions,
    ) -> Result<(), StoreError> {
        let options = PgOptions {
            migrate: true,
            statement_timeout: None,
            ..options
        };
        let store = Self::open(url, embedder, options).await?;
        store.pool.close().await;
        store.operator.close().await;
        Ok(())
    }

    /// The vector index searches use (`Auto` resolved at open).
    pub fn vector_index(&self) -> IndexKind {
        self.index
    }

    /// Rebuilds every stored vector with `embedder` (whose dimension may
    /// differ), records it as the store's embedder and rebuilds the vector
    /// index. One transaction: all or nothing. Stop running servers first.
    pub async fn reembed(
        url: &str,
        embedder: &dyn Embedder,
        index: IndexKind,
    ) -> Result<u64, StoreError> {
        let identity = embedder.identity();
        check_dims(&identity)?;
        // Operator-wide: every user's vectors.
        let options = PgOptions::for_tools();
        let pool = Settings::new(&options.plan, None)
            .with(ALL_USERS.0, ALL_USERS.1)
            .session_pool(
                connect_options(url, Pooler::None)?,
                options.pool_size,
                options.acquire_timeout,
            );
        reachable(&pool, url).await?;
        migrate_pool(url, &pool).await?;
        let mut tx = pool.begin().await.map_err(db("starting the re-embed"))?;
        lock_schema(&mut tx).await?;
        for statement in [
            "DROP INDEX IF EXISTS memories_embedding_hnsw",
            "DROP INDEX IF EXISTS memories_embedding_diskann",
            "ALTER TABLE memories ALTER COLUMN embedding TYPE vector",
            schema::KEEP_VECTORS_INLINE,
        ] {
            sqlx::query(statement)
                .execute(&mut *tx)
                .await
                .map_err(db("preparing the re-embed"))?;
        }
        let mut after = Uuid::nil();
        let mut done = 0u64;
        loop {
            let batch = next_batch(
                &mut *tx,
                "SELECT id, content FROM memories WHERE id > $1 ORDER BY id LIMIT $2",
                after,
                embedder,
            )
            .await?;
            let Some(&(last, _)) = batch.last() else {
                break;
            };
            done += batch.len() as u64;
            let (ids, vectors): (Vec<Uuid>, Vec<Vector>) = batch
                .into_iter()
                .map(|(id, vector)| (id, Vector::from(vector)))
                .unzip();
            sqlx::query(
                "UPDATE memories m SET embedding = v.embedding \
                 FROM unnest($1::uuid[], $2::vector[]) AS v (id, embedding) WHERE m.id = v.id",
            )
            .bind(&ids)
            .bind(&vectors)
            .execute(&mut *tx)
            .await
            .map_err(db("storing re-embedded vectors"))?;
            after = last;
        }
        bind_dimension(&mut tx, &identity).await?;
        ensure_vector_index(&mut tx, index).await?;
        tx.commit().await.map_err(db("committing the re-embed"))?;
        pool.close().await;
        Ok(done)
    }

    /// The embedder the database at `url` recorded, changing nothing:
    /// `None` before engram's first open. Plain queries (no prepared
    /// statement), so `url` may be a transaction pooler.
    pub async fn recorded_embedder(url: &str) -> Result<Option<String>, StoreError> {
        let options = connect_options(url, Pooler::None)?;
        let mut conn = PgConnection::connect_with(&options)
            .await
            .map_err(|source| StoreError::Open {
                url: redact(url),
                source,
            })?;
        let cx = "reading the store's embedder";
        // Two statements: one naming a table that does not exist fails to plan.
        let row = sqlx::raw_sql("SELECT to_regclass('store_info') IS NOT NULL")
            .fetch_one(&mut conn)
            .await
            .map_err(db(cx))?;
        let exists: bool = row.try_get(0).map_err(db(cx))?;
        let recorded = if exists {
            let row = sqlx::raw_sql("SELECT value FROM store_info WHERE key = 'embedder'")
                .fetch_optional(&mut conn)
                .await
                .map_err(db(cx))?;
            row.map(|row| row.try_get(0)).transpose().map_err(db(cx))?
        } else {
            None
        };
        let _ = conn.close().await;
        Ok(recorded)
    }

    /// Records the embedder (and fixes the column's dimension) on first open;
    /// refuses a different one afterwards.
    async fn bind_embedder(&self, tx: &mut PgConnection) -> Result<(), StoreError> {
        let configured = self.embedder.to_string();
        let stored: Option<String> =
            sqlx::query_scalar("SELECT value FROM store_info WHERE key = 'embedder'")
                .fetch_optional(&mut *tx)
                .await
                .map_err(db("reading the store's embedder"))?;
        match stored {
            Some(stored) if stored == configured => Ok(()),
            Some(stored) => Err(StoreError::EmbedderMismatch { stored, configured }),
            None => bind_dimension(tx, &self.embedder).await,
        }
    }
}

impl Store for PgStore {
    fn embedder(&self) -> &EmbedderIdentity {
        &self.embedder
    }

    fn pool_status(&self) -> Option<(u32, u32, u32)> {
        let idle = u32::try_from(self.pool.num_idle()).unwrap_or(u32::MAX);
        let open = self.pool.size();
        let max = self.pool.options().get_max_connections();
        Some((open.saturating_sub(idle), idle, max))
    }
}

impl PgOptions {
    /// For the one-shot command `reembed`: two connections,
    /// and no load balancer waiting on them, so a slow database gets longer.
    fn for_tools() -> Self {
        Self {
            pool_size: 2,
            acquire_timeout: Duration::from_secs(10),
            statement_timeout: None,
            ..Self::default()
        }
    }
}

/// The session URL of a store on `url` with `options`: the direct URL, or
/// `url` itself unless that is a transaction pooler.
fn session_url<'a>(url: &'a str, options: &'a PgOptions) -> Result<&'a str, StoreError> {
    match (&options.direct_url, options.pooler) {
        (Some(direct), _) => Ok(direct),
        (None, Pooler::None) => Ok(url),
        (None, Pooler::Transaction) => Err(StoreError::Unsupported(format!(
            "{} goes through a transaction pooler, where no session lasts past a \
             transaction; migrations and operator-wide work need one: set \
             ENGRAM_DATABASE_DIRECT_URL to a direct connection (or a session-mode pooler)",
            redact(url)
        ))),
    }
}

/// How long a request connection may sit idle and still be used unpinged.
const PING_IF_IDLE_FOR: Duration = Duration::from_secs(1);

/// The pools: requests' on `url` (and the settings its transactions begin
/// with) and the operator's on `direct_url` (`scope`). Lazy: connections are
/// made as calls need them, so a database that is down at a call fails that
/// call within `acquire_timeout`, and the next call after it is back
/// connects again; each statement bounded by `statement_timeout`.
async fn connect(
    url: &str,
    direct_url: &str,
    options: &PgOptions,
) -> Result<(PgPool, Settings, PgPool), StoreError> {
    let open_err = |url: &str| {
        let url = redact(url);
        move |source| StoreError::Open { url, source }
    };
    let connect = connect_options(url, options.pooler)?;
    // One direct connection first: a pool retries until its timeout and then
    // reports only that, while this reports what is wrong (refused, auth, no
    // database, a certificate not trusted).
    let probe = PgConnection::connect_with(&connect)
        .await
        .map_err(open_err(url))?;
    probe.close().await.map_err(open_err(url))?;
    let settings = Settings::new(&options.plan, options.statement_timeout);
    let operator = settings
        .clone()
        .with(ALL_USERS.0, ALL_USERS.1)
        .session_pool(
            connect_options(direct_url, Pooler::None)?,
            OPERATOR_POOL_SIZE.min(options.pool_size.max(1)),
            options.acquire_timeout,
        );
    let settings = settings.behind(options.pooler);
    let bound = settings.direct_bound();
    let requests = PgPoolOptions::new()
        .max_connections(options.pool_size)
        .acquire_timeout(options.acquire_timeout)
        // A connection that sat idle may have been cut (a restarted server, a
        // proxy's idle timeout): it is pinged before use, and replaced if it
        // does not answer. One in use a moment ago is not: that ping was a
        // round trip more on every transaction of a busy server.
        .test_before_acquire(false)
        .before_acquire(|conn, meta| {
            Box::pin(async move {
                if meta.idle_for >= PING_IF_IDLE_FOR {
                    conn.ping().await?;
                }
                Ok(true)
            })
        })
        .after_connect(move |conn, _| {
            let bound = bound.clone();
            Box::pin(async move {
                match bound {
                    Some(sql) => session::apply(conn, sql).await,
                    None => Ok(()),
                }
            })
        })
        .connect_lazy_with(connect);
    Ok((requests, settings, operator))
}

/// `url` without its password, for messages and logs.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            match userinfo.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme + 3], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::rows::uuid_array_literal;
    use super::*;

    #[test]
    fn passwords_never_reach_messages() {
        assert_eq!(
            redact("postgres://engram:s3cret@db:5432/engram"),
            "postgres://engram:***@db:5432/engram"
        );
        assert_eq!(
            redact("postgres://engram@db/engram"),
            "postgres://engram@db/engram"
        );
        assert_eq!(redact("postgres://db/engram"), "postgres://db/engram");
    }

    #[test]
    fn allow_lists_are_array_literals() {
        assert_eq!(uuid_array_literal(&[]), "{}");
        let id = Uuid::nil();
        assert_eq!(uuid_array_literal(&[id, id]), format!("{{{id},{id}}}"));
    }
}
