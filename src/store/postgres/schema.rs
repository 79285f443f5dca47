//! The schema: migrations (run, or checked when another process runs them),
//! the embedding column's dimension, and the vector index the options name.

use sqlx::PgConnection;
use sqlx::postgres::PgPool;

use super::{db, redact};
use crate::embed::EmbedderIdentity;
use crate::store::StoreError;

/// The vector index a PostgreSQL store searches with.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum IndexKind {
    /// HNSW: DiskANN wrote slower and searched no better when measured
    /// (see `resolve`), so it is used only when asked for by name.
    #[default]
    Auto,
    /// pgvector HNSW (cosine), searched with iterative scans.
    Hnsw,
    /// pgvectorscale StreamingDiskANN (built `plain`); start-up fails
    /// without the extension.
    Diskann,
}

pub(super) static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

/// pgvector's HNSW indexes `vector` columns of at most this many dimensions.
pub(super) const MAX_INDEXED_DIMS: usize = 2000;

pub(super) async fn migrate_pool(url: &str, pool: &PgPool) -> Result<(), StoreError> {
    MIGRATOR
        .run(pool)
        .await
        .map_err(|source| StoreError::Migrate {
            url: redact(url),
            source,
        })
}

/// With automatic migrations off: refuses a schema that lacks a migration of this build.
pub(super) async fn check_migrated(url: &str, pool: &PgPool) -> Result<(), StoreError> {
    let applied: Vec<i64> =
        sqlx::query_scalar("SELECT version FROM _sqlx_migrations WHERE success")
            .fetch_all(pool)
            .await
            .unwrap_or_default();
    let missing: Vec<i64> = MIGRATOR
        .iter()
        .map(|m| m.version)
        .filter(|v| !applied.contains(v))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    Err(StoreError::Unsupported(format!(
        "the schema of {} lacks migrations {missing:?}; run `engram migrate` \
         (or set ENGRAM_AUTO_MIGRATE=true)",
        redact(url)
    )))
}

pub(super) fn check_dims(embedder: &EmbedderIdentity) -> Result<(), StoreError> {
    if embedder.dims <= MAX_INDEXED_DIMS {
        return Ok(());
    }
    Err(StoreError::Unsupported(format!(
        "pgvector indexes at most {MAX_INDEXED_DIMS} dimensions and the embedder has {}; \
         set ENGRAM_EMBEDDING_DIMS to {MAX_INDEXED_DIMS} or fewer (OpenAI's \
         text-embedding-3 models accept a smaller `dimensions`)",
        embedder.dims
    )))
}

/// Serialises schema-level changes (first bind, index creation, re-embed)
/// across processes for the rest of the transaction.
pub(super) async fn lock_schema(tx: &mut PgConnection) -> Result<(), StoreError> {
    sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended('engram.schema', 0))")
        .execute(&mut *tx)
        .await
        .map_err(db("locking the schema"))?;
    Ok(())
}

/// Keeps vectors in their rows rather than in the TOAST table (migration
/// 20270701000001 says why). Changing the column's type resets its storage
/// to the type's, so this follows every `ALTER COLUMN embedding TYPE`.
pub(super) const KEEP_VECTORS_INLINE: &str =
    "ALTER TABLE memories ALTER COLUMN embedding SET STORAGE MAIN";

/// Gives the embedding column `embedder`'s dimension and records the
/// embedder as the store's.
pub(super) async fn bind_dimension(
    tx: &mut PgConnection,
    embedder: &EmbedderIdentity,
) -> Result<(), StoreError> {
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "ALTER TABLE memories ALTER COLUMN embedding TYPE vector({})",
        embedder.dims
    )))
    .execute(&mut *tx)
    .await
    .map_err(db("fixing the vector dimension"))?;
    sqlx::query(KEEP_VECTORS_INLINE)
        .execute(&mut *tx)
        .await
        .map_err(db("fixing the vector dimension"))?;
    sqlx::query(
        "INSERT INTO store_info (key, value) VALUES ('embedder', $1) \
         ON CONFLICT (key) DO UPDATE SET value = excluded.value",
    )
    .bind(embedder.to_string())
    .execute(&mut *tx)
    .await
    .map_err(db("recording the store's embedder"))?;
    Ok(())
}

/// The index `requested` means on a server that has (or lacks) pgvectorscale.
///
/// `auto` is HNSW even where pgvectorscale is installed. The recall@10 of
/// 0.001 once measured through DiskANN was its quantised layout built on an
/// empty table (see `DISKANN_LAYOUT`); whether DiskANN, built `plain`, ever
/// beats HNSW here is measured in docs/benchmarks.md.
fn resolve(requested: IndexKind, vectorscale: bool) -> Result<IndexKind, StoreError> {
    match requested {
        IndexKind::Auto => Ok(IndexKind::Hnsw),
        IndexKind::Diskann if !vectorscale => Err(StoreError::Unsupported(
            "index = diskann needs pgvectorscale, and this PostgreSQL server has no \
             `vectorscale` extension; install pgvectorscale on the server, or set \
             ENGRAM_INDEX=hnsw (or auto)"
                .into(),
        )),
        other => Ok(other),
    }
}

/// The DiskANN index's storage layout. pgvectorscale's default layout
/// (`memory_optimized`) quantises vectors with statistics it learns from the
/// rows present when the index is built, and engram builds it when the store
/// is created: on no rows. Such an index ranks at random: recall@10 0.005
/// at 20,000 rows (0.555 for the same index built after the rows), measured
/// here with pgvectorscale 0.9.0 (docs/benchmarks.md). `plain` keeps whole
/// vectors in the index and learns nothing.
const DISKANN_LAYOUT: &str = "storage_layout=plain";

/// Warns when the DiskANN index in place quantises (one built by an earlier
/// engram, or by hand): built on few rows, it ranks at random.
async fn warn_if_quantised(tx: &mut PgConnection) -> Result<(), StoreError> {
    let options: Option<Vec<String>> = sqlx::query_scalar(
        "SELECT reloptions FROM pg_class WHERE oid = 'memories_embedding_diskann'::regclass",
    )
    .fetch_one(&mut *tx)
    .await
    .map_err(db("looking at the vector index"))?;
    if !options
        .unwrap_or_default()
        .iter()
        .any(|o| o == DISKANN_LAYOUT)
    {
        tracing::warn!(
            "the DiskANN index memories_embedding_diskann quantises vectors \
             (storage_layout memory_optimized), which ranks at random when the index was \
             built on few rows; unless it was built after the data was loaded, drop it \
             (DROP INDEX memories_embedding_diskann) and restart: engram rebuilds it with {DISKANN_LAYOUT}"
        );
    }
    Ok(())
}

/// Resolves `requested` against the server (DiskANN needs pgvectorscale's
/// `vectorscale` extension) and creates that index if it is missing.
pub(super) async fn ensure_vector_index(
    tx: &mut PgConnection,
    requested: IndexKind,
) -> Result<IndexKind, StoreError> {
    let vectorscale: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = 'vectorscale')",
    )
    .fetch_one(&mut *tx)
    .await
    .map_err(db("looking for pgvectorscale"))?;
    let kind = resolve(requested, vectorscale)?;
    // A runtime role that owns nothing may open a store its owner set up:
    // then the index is there and recorded, and nothing is written.
    let (index_name, recorded_as) = match kind {
        IndexKind::Diskann => ("memories_embedding_diskann", "diskann"),
        IndexKind::Hnsw | IndexKind::Auto => ("memories_embedding_hnsw", "hnsw"),
    };
    let in_place: bool = sqlx::query_scalar(
        "SELECT to_regclass($1) IS NOT NULL AND EXISTS ( \
             SELECT 1 FROM store_info WHERE key = 'vector_index' AND value = $2)",
    )
    .bind(index_name)
    .bind(recorded_as)
    .fetch_one(&mut *tx)
    .await
    .map_err(db("looking for the vector index"))?;
    if in_place {
        if kind == IndexKind::Diskann {
            warn_if_quantised(tx).await?;
        }
        return Ok(kind);
    }
    let statements: &[&'static str] = match kind {
        // Partial: superseded rows are never searched, and the rows of
        // users small enough to be scanned exactly are not searched through
        // it (`indexed`, migration 20270801000001), so both stay out of the graph.
        IndexKind::Hnsw | IndexKind::Auto => &[
            "CREATE INDEX IF NOT EXISTS memories_embedding_hnsw ON memories \
             USING hnsw (embedding vector_cosine_ops) WHERE valid_to IS NULL AND indexed",
        ],
        // `plain`: see DISKANN_LAYOUT. Partial, as HNSW's.
        IndexKind::Diskann => &[
            "CREATE EXTENSION IF NOT EXISTS vectorscale",
            "CREATE INDEX IF NOT EXISTS memories_embedding_diskann ON memories \
             USING diskann (embedding vector_cosine_ops) WITH (storage_layout = plain) \
             WHERE valid_to IS NULL AND indexed",
        ],
    };
    for statement in statements {
        sqlx::query(*statement)
            .execute(&mut *tx)
            .await
            .map_err(db("creating the vector index"))?;
    }
    sqlx::query(
        "INSERT INTO store_info (key, value) VALUES ('vector_index', $1) \
         ON CONFLICT (key) DO UPDATE SET value = excluded.value",
    )
    .bind(recorded_as)
    .execute(&mut *tx)
    .await
    .map_err(db("recording the vector index"))?;
    Ok(kind)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_is_hnsw_even_with_pgvectorscale_and_diskann_needs_the_extension() {
        assert_eq!(resolve(IndexKind::Auto, true).unwrap(), IndexKind::Hnsw);
        assert_eq!(resolve(IndexKind::Auto, false).unwrap(), IndexKind::Hnsw);
        assert_eq!(
            resolve(IndexKind::Diskann, true).unwrap(),
            IndexKind::Diskann
        );
        assert!(resolve(IndexKind::Diskann, false).is_err());
        assert_eq!(resolve(IndexKind::Hnsw, true).unwrap(), IndexKind::Hnsw);
    }
}
