//! The SQLite keyword index: one `keyword_postings` row per distinct term of
//! each current memory (with the memory's agent and run), clustered by
//! (user, term), and per-user statistics in `keyword_users` (kept by
//! triggers, see the migrations). Searches score with BM25 over the user's
//! in-process copy of the same postings ([`crate::store::keyword_copy`]),
//! built from the memories' texts when the copy loads.
//!
//! Invariant: every current memory has postings for exactly the terms of its
//! text ([`keywords::document_terms`]) and `keyword_length` set to its term
//! count; the store writes both with the text, in the same transaction.

use sqlx::sqlite::SqliteConnection;
use sqlx::{Connection, SqlitePool};

use super::{StoreError, advance_every_generation, db};
use crate::keywords::{self, DocumentTerms};

/// What `store_info.keyword_index` says once every current memory is indexed
/// as this version of [`crate::keywords`] cuts text.
const INDEX_VERSION: &str = keywords::INDEX_VERSION;

/// A text's terms and their counts as the postings' inserts read them: a
/// JSON array of `[term, count]` pairs.
pub(super) fn terms_json(terms: &DocumentTerms) -> Result<String, StoreError> {
    serde_json::to_string(&terms.counts).map_err(|e| StoreError::Corrupt(e.to_string()))
}

/// Writes the postings of a memory's text (its `keyword_length` is written
/// with the row, and its scope read from it).
pub(super) async fn index_terms(
    conn: &mut SqliteConnection,
    pk: i64,
    terms: &DocumentTerms,
) -> Result<(), StoreError> {
    if terms.counts.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "INSERT INTO keyword_postings (user_id, agent_id, run_id, term, pk, tf, length) \
         SELECT m.user_id, m.agent_id, m.run_id, j.value ->> 0, m.pk, j.value ->> 1, ?2 \
         FROM memories m, json_each(?3) j WHERE m.pk = ?1",
    )
    .bind(pk)
    .bind(i64::from(terms.length))
    .bind(terms_json(terms)?)
    .execute(&mut *conn)
    .await
    .map_err(db("indexing keywords"))?;
    Ok(())
}

/// Indexes every current memory if the store was last written by a version
/// that indexed keywords differently (or not at all). One write
/// transaction; every user's generation moves, so cached recalls ranked the
/// old way are not served again.
pub(super) async fn ensure_index(pool: &SqlitePool) -> Result<(), StoreError> {
    const BATCH: i64 = 1000;
    let done: Option<String> =
        sqlx::query_scalar("SELECT value FROM store_info WHERE key = 'keyword_index'")
            .fetch_optional(pool)
            .await
            .map_err(db("reading the keyword index version"))?;
    if done.as_deref() == Some(INDEX_VERSION) {
        return Ok(());
    }
    let mut conn = pool.acquire().await.map_err(db("indexing keywords"))?;
    let mut tx = conn
        .begin_with("BEGIN IMMEDIATE")
        .await
        .map_err(db("indexing keywords"))?;
    let mut after = 0i64;
    let mut indexed = 0u64;
    sqlx::query("DELETE FROM keyword_postings")
        .execute(&mut *tx)
        .await
        .map_err(db("indexing keywords"))?;
    loop {
        let rows: Vec<(i64, String)> = sqlx::query_as(
            "SELECT pk, content FROM memories \
             WHERE valid_to IS NULL AND pk > ? ORDER BY pk LIMIT ?",
        )
        .bind(after)
        .bind(BATCH)
        .fetch_all(&mut *tx)
        .await
        .map_err(db("reading memories to index"))?;
        let Some(&(last, ..)) = rows.last() else {
            break;
        };
        for (pk, content) in &rows {
            let terms = keywords::document_terms(content);
            sqlx::query("UPDATE memories SET keyword_length = ? WHERE pk = ?")
                .bind(i64::from(terms.length))
                .bind(pk)
                .execute(&mut *tx)
                .await
                .map_err(db("indexing keywords"))?;
            index_terms(&mut tx, *pk, &terms).await?;
        }
        indexed += rows.len() as u64;
        after = last;
    }
    // Recounted from the rows rather than trusted to the triggers' increments.
    sqlx::query(
        "DELETE FROM keyword_users; \
         INSERT INTO keyword_users (user_id, docs, total_length) \
             SELECT user_id, count(*), sum(keyword_length) FROM memories \
             WHERE valid_to IS NULL GROUP BY user_id;",
    )
    .execute(&mut *tx)
    .await
    .map_err(db("counting keyword statistics"))?;
    advance_every_generation(&mut tx).await?;
    sqlx::query(
        "INSERT INTO store_info (key, value) VALUES ('keyword_index', ?) \
         ON CONFLICT (key) DO UPDATE SET value = excluded.value",
    )
    .bind(INDEX_VERSION)
    .execute(&mut *tx)
    .await
    .map_err(db("recording the keyword index version"))?;
    tx.commit().await.map_err(db("indexing keywords"))?;
    if indexed > 0 {
        tracing::info!(memories = indexed, "indexed keywords for BM25 ranking");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::embed::{Embedder, HashEmbedder};
    use crate::model::{MetadataFilter, Scope};
    use crate::store::{Search, SearchScope, SqliteStore};

    /// A store whose postings were written before they carried a scope gets
    /// its memories' agents and runs in the migration (no keyword rebuild),
    /// and a narrowed search then finds exactly the scope's memories.
    #[tokio::test]
    async fn postings_of_the_previous_schema_get_their_scope() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}/engram.db", dir.path().display());
        let pool = super::super::connect_to(&url).await.unwrap();
        super::super::MIGRATOR
            .run_to(20261230000001, &pool)
            .await
            .unwrap();
        let embedder = HashEmbedder::new(8);
        let memories = [
            ("planner", None, "Drinks green tea every morning"),
            ("coach", Some("run-1"), "Tea before every long run"),
            ("coach", None, "Coffee after the gym"),
        ];
        for (n, (agent, run, text)) in memories.iter().enumerate() {
            let terms = keywords::document_terms(text);
            let pk: i64 = sqlx::query_scalar(
                "INSERT INTO memories (id, user_id, agent_id, run_id, content, content_hash, \
                     metadata, categories, created_at, updated_at, valid_from, keyword_length) \
                 VALUES (?1, 'u', ?2, ?3, ?4, ?5, '{}', '[]', ?6, ?6, ?6, ?7) RETURNING pk",
            )
            .bind(crate::model::MemoryId::new().to_string())
            .bind(agent)
            .bind(run)
            .bind(text)
            .bind(format!("hash-{n}"))
            .bind(chrono::Utc::now().to_rfc3339())
            .bind(i64::from(terms.length))
            .fetch_one(&pool)
            .await
            .unwrap();
            sqlx::query("INSERT INTO memory_vectors (pk, embedding) VALUES (?, ?)")
                .bind(pk)
                .bind(super::super::encode_vector(&embedder.embed(text)))
                .execute(&pool)
                .await
                .unwrap();
            for (term, tf) in &terms.counts {
                sqlx::query(
                    "INSERT INTO keyword_postings (user_id, term, pk, tf, length) \
                     VALUES ('u', ?, ?, ?, ?)",
                )
                .bind(term)
                .bind(pk)
                .bind(i64::from(*tf))
                .bind(i64::from(terms.length))
                .execute(&pool)
                .await
                .unwrap();
            }
        }
        sqlx::query("INSERT INTO store_info (key, value) VALUES ('keyword_index', ?)")
            .bind(INDEX_VERSION)
            .execute(&pool)
            .await
            .unwrap();
        pool.close().await;

        let store = SqliteStore::open(&url, embedder.identity()).await.unwrap();
        let unscoped: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM keyword_postings p JOIN memories m ON m.pk = p.pk \
             WHERE p.agent_id IS NOT m.agent_id OR p.run_id IS NOT m.run_id",
        )
        .fetch_one(&store.pool)
        .await
        .unwrap();
        assert_eq!(unscoped, 0, "every posting has its memory's scope");
        let none = MetadataFilter::default();
        for (scope, want) in [
            (Scope::new("u", Some("planner"), None).unwrap(), 1),
            (Scope::new("u", Some("coach"), None).unwrap(), 1),
            (Scope::new("u", None, Some("run-1")).unwrap(), 1),
            (Scope::new("u", None, None).unwrap(), 2),
        ] {
            let at = SearchScope {
                scope: &scope,
                filter: &none,
            };
            let hits = store.keyword_search(at, "tea", 10).await.unwrap();
            assert_eq!(hits.len(), want, "{scope:?}: {hits:?}");
        }
    }
}
