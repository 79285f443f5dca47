//! The embedded store: one SQLite file (WAL), and each active user's
//! in-process copy ([`VectorIndex`]) that searches read: the vectors as
//! 8-bit codes, rescored from the stored f32 blobs, and keyword postings cut
//! from the texts and scored by BM25 ([`crate::keywords`]).
//!
//! Writes are serialised twice: an in-process mutex (no busy-waiting between
//! our own tasks) and `BEGIN IMMEDIATE` (SQLite's write lock, which also
//! serialises other processes on the same file). Deduplication runs inside
//! that transaction, so it is atomic. Every write bumps the user's generation
//! (from one store-wide sequence), which keeps the vector index honest and is
//! the user's [`Versions::version`] for caches; triggers move it too (migration
//! `generations_follow_every_write`), so SQL run by hand on the file does.
//!
//! One file per concern: `write` ([`Writes`]), `read` ([`Reads`]), `search`
//! ([`Search`]), `queue` ([`PendingQueue`]), `keys` ([`Keys`]), `reports`
//! ([`Reports`]), `versions` (the generations, [`Versions`]), `usage`
//! (tokens per user and day, [`TokenUsage`]); beside them
//! `vectors` (the in-process copy and exact cosines), `keyword_index` (the
//! keyword version's marker) and `rows` (the dialect: how rows hold ids, times and
//! JSON, for the shared mapping). What both stores do alike is written once
//! in `store/shared`. This file opens the store: connection, migrations,
//! the embedder check, re-embedding.
//!
//! [`Writes`]: super::Writes
//! [`Reads`]: super::Reads
//! [`Search`]: super::Search
//! [`PendingQueue`]: super::PendingQueue
//! [`Keys`]: super::Keys
//! [`Reports`]: super::Reports
//! [`Versions`]: super::Versions
//! [`Versions::version`]: super::Versions::version
//! [`TokenUsage`]: super::TokenUsage

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};

use sqlx::Connection as _;

use super::shared::next_batch;
use super::vector_index::{DEFAULT_BUDGET_BYTES, VectorIndex};
use super::{Store, StoreError, db};
use crate::embed::{Embedder, EmbedderIdentity};

/// SQL condition: memory `m` holds every key of the JSON object bound at
/// parameter `$p` with an equal value (same JSON type and value), or `$p` is NULL.
macro_rules! metadata_matches {
    ($p:literal) => {
        concat!(
            "(",
            $p,
            " IS NULL OR NOT EXISTS (SELECT 1 FROM json_each(",
            $p,
            ") f \
             WHERE NOT EXISTS (SELECT 1 FROM json_each(m.metadata) mm \
             WHERE mm.key = f.key AND mm.atom IS f.atom \
               AND replace(mm.type, 'integer', 'real') = replace(f.type, 'integer', 'real'))))"
        )
    };
}

/// SQL condition: memory `$m` has not expired by the database's clock
/// (`expires_at` is Unix milliseconds). Invariant: every read that returns
/// or scores memories for a request holds it, so an expired memory is never
/// returned, even before the retention purge removes it.
macro_rules! unexpired {
    ($m:literal) => {
        concat!(
            "(",
            $m,
            ".expires_at IS NULL OR ",
            $m,
            ".expires_at > unixepoch('subsec') * 1000)"
        )
    };
}

mod audit;
mod import;
mod keys;
mod keyword_index;
mod queue;
mod read;
mod reports;
mod retention;
mod rows;
mod sealed;
mod search;
mod usage;
mod vectors;
mod versions;
mod write;

use vectors::encode_vector;
use versions::advance_every_generation;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

/// The SQLite store; see the module documentation.
pub struct SqliteStore {
    pool: SqlitePool,
    embedder: EmbedderIdentity,
    index: VectorIndex,
    /// One writer at a time. Lock order, everywhere: `write_lock`, then a
    /// pool connection, then a user's entry in `index`. Nothing holding an
    /// index entry waits for a connection, so readers holding connections
    /// while they wait for an entry can never starve the writer holding it.
    write_lock: tokio::sync::Mutex<()>,
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `url` (`sqlite://PATH`),
    /// applies migrations, and checks the embedder matches the stored one.
    pub async fn open(url: &str, embedder: EmbedderIdentity) -> Result<Self, StoreError> {
        let pool = connect(url).await?;
        let store = Self {
            pool,
            index: VectorIndex::new(embedder.dims, DEFAULT_BUDGET_BYTES),
            embedder,
            write_lock: tokio::sync::Mutex::new(()),
        };
        store.check_embedder().await?;
        keyword_index::ensure_index(&store.pool).await?;
        Ok(store)
    }

    /// Caps the memory the in-process vector copies may use (all users together).
    pub fn with_vector_cache_bytes(mut self, bytes: usize) -> Self {
        self.index = VectorIndex::new(self.embedder.dims, bytes);
        self
    }

    /// Rebuilds every stored vector with `embedder` and records it as the
    /// store's embedder. One write transaction: all or nothing. Running
    /// servers must be stopped first (they checked the embedder when they opened).
    pub async fn reembed(url: &str, embedder: &dyn Embedder) -> Result<u64, StoreError> {
        let identity = embedder.identity();
        let pool = connect(url).await?;
        let mut tx = pool
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(db("starting the re-embed"))?;
        let mut after = 0i64;
        let mut done = 0u64;
        loop {
            let batch = next_batch(
                &mut *tx,
                "SELECT pk, content FROM memories WHERE pk > ? ORDER BY pk LIMIT ?",
                after,
                embedder,
            )
            .await?;
            let Some(&(last, _)) = batch.last() else {
                break;
            };
            for (pk, vector) in &batch {
                sqlx::query("UPDATE memory_vectors SET embedding = ? WHERE pk = ?")
                    .bind(encode_vector(vector))
                    .bind(pk)
                    .execute(&mut *tx)
                    .await
                    .map_err(db("storing a re-embedded vector"))?;
            }
            done += batch.len() as u64;
            after = last;
        }
        sqlx::query(
            "INSERT INTO store_info (key, value) VALUES ('embedder', ?) \
             ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        )
        .bind(identity.to_string())
        .execute(&mut *tx)
        .await
        .map_err(db("recording the store's embedder"))?;
        // Every user's vectors changed: move all generations past any cached copy.
        advance_every_generation(&mut tx).await?;
        tx.commit().await.map_err(db("committing the re-embed"))?;
        pool.close().await;
        Ok(done)
    }

    /// The embedder the store at `url` recorded, without creating or
    /// changing anything: `None` for a missing file or a store never opened.
    pub async fn recorded_embedder(url: &str) -> Result<Option<String>, StoreError> {
        let path = url.strip_prefix("sqlite://").unwrap_or(url);
        if !Path::new(path).exists() {
            return Ok(None);
        }
        let open_err = |source| StoreError::Open {
            url: url.to_owned(),
            source,
        };
        let options = SqliteConnectOptions::from_str("sqlite://")
            .map_err(open_err)?
            .filename(path)
            .read_only(true)
            .busy_timeout(Duration::from_secs(10));
        let mut conn = sqlx::SqliteConnection::connect_with(&options)
            .await
            .map_err(open_err)?;
        let table: Option<String> = sqlx::query_scalar(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name = 'store_info'",
        )
        .fetch_optional(&mut conn)
        .await
        .map_err(db("reading the store's embedder"))?;
        let recorded = match table {
            None => None,
            Some(_) => sqlx::query_scalar("SELECT value FROM store_info WHERE key = 'embedder'")
                .fetch_optional(&mut conn)
                .await
                .map_err(db("reading the store's embedder"))?,
        };
        let _ = conn.close().await;
        Ok(recorded)
    }

    /// Records the embedder on first open; refuses a different one afterwards.
    async fn check_embedder(&self) -> Result<(), StoreError> {
        let configured = self.embedder.to_string();
        // First open records it; a concurrent first open loses the race harmlessly.
        sqlx::query(
            "INSERT INTO store_info (key, value) VALUES ('embedder', ?) ON CONFLICT (key) DO NOTHING",
        )
        .bind(&configured)
        .execute(&self.pool)
        .await
        .map_err(db("recording the store's embedder"))?;
        let stored: String =
            sqlx::query_scalar("SELECT value FROM store_info WHERE key = 'embedder'")
                .fetch_one(&self.pool)
                .await
                .map_err(db("reading the store's embedder"))?;
        if stored != configured {
            return Err(StoreError::EmbedderMismatch { stored, configured });
        }
        Ok(())
    }
}

impl Store for SqliteStore {
    fn embedder(&self) -> &EmbedderIdentity {
        &self.embedder
    }
}

/// The store's pool on `url`, its schema brought up to date.
async fn connect(url: &str) -> Result<SqlitePool, StoreError> {
    let pool = connect_to(url).await?;
    MIGRATOR
        .run(&pool)
        .await
        .map_err(|source| StoreError::Migrate {
            url: url.to_owned(),
            source,
        })?;
    Ok(pool)
}

/// A pool on the database at `url` (created if missing), schema untouched.
async fn connect_to(url: &str) -> Result<SqlitePool, StoreError> {
    let open_err = |source| StoreError::Open {
        url: url.to_owned(),
        source,
    };
    let path = url.strip_prefix("sqlite://").unwrap_or(url);
    if let Some(parent) = Path::new(path).parent()
        && !parent.as_os_str().is_empty()
    {
        std::fs::create_dir_all(parent).map_err(|e| open_err(sqlx::Error::Io(e)))?;
    }
    let options = SqliteConnectOptions::from_str("sqlite://")
        .map_err(open_err)?
        .filename(path)
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Normal)
        .busy_timeout(Duration::from_secs(10))
        .foreign_keys(true)
        // Reads come from the OS page cache through mmap rather than read()
        // calls, and each connection keeps a larger page cache of its own.
        .pragma("mmap_size", "268435456")
        .pragma("cache_size", "-32768")
        // Deleted content is overwritten with zeros, not left in free
        // pages: an erased user's text is gone from the file, not just
        // unreachable (`delete_user` also checkpoints the WAL).
        .pragma("secure_delete", "on");
    SqlitePoolOptions::new()
        .max_connections(8)
        // A connection to a local file does not go stale; the check would
        // cost a round trip to the connection's worker thread per query.
        .test_before_acquire(false)
        .connect_with(options)
        .await
        .map_err(open_err)
}
