//! The SQLite keyword index is the users' in-process copies: each copy's
//! postings are cut from its memories' texts when it loads
//! ([`crate::store::keyword_copy`], `vectors::sync_vectors`) and kept with
//! every write, and searches score BM25 over them. Nothing of them is
//! stored (migration `keywords_only_in_process` dropped the tables that
//! once held them).
//!
//! What is stored is which version of [`crate::keywords`] the users'
//! generations were last moved for: a build that cuts text differently
//! ranks differently, so it moves every generation once, and a cache keyed
//! by them serves nothing ranked the old way.

use sqlx::{Connection, SqlitePool};

use super::{StoreError, advance_every_generation, db};
use crate::keywords;

/// What `store_info.keyword_index` says once every user's generation has
/// moved past what was cached under an earlier [`crate::keywords`].
const INDEX_VERSION: &str = keywords::INDEX_VERSION;

/// Moves every user's generation, in one write transaction, if the store
/// was last opened by a build that cut text into terms differently (or
/// never recorded it).
pub(super) async fn ensure_index(pool: &SqlitePool) -> Result<(), StoreError> {
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
    if done.is_some() {
        tracing::info!("keywords are cut differently by this build: every user's version moved");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::embed::{Embedder, HashEmbedder};
    use crate::model::{MetadataFilter, Scope};
    use crate::store::{Search, SearchScope, SqliteStore, Versions};

    /// A store written by a build that kept postings beside the rows (and
    /// whose keyword version was an older one) opens without them: the
    /// migration drops them, every user's version moves, and keyword
    /// search, scope by scope, finds what it found before.
    #[tokio::test]
    async fn a_store_with_stored_postings_opens_without_them_and_searches_the_same() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}/engram.db", dir.path().display());
        let pool = super::super::connect_to(&url).await.unwrap();
        super::super::MIGRATOR
            .run_to(20270915000001, &pool)
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
            .bind(chrono::Utc::now().timestamp_millis())
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
                    "INSERT INTO keyword_postings (user_id, agent_id, run_id, term, pk, tf, \
                         length) VALUES ('u', ?, ?, ?, ?, ?, ?)",
                )
                .bind(agent)
                .bind(run)
                .bind(term)
                .bind(pk)
                .bind(i64::from(*tf))
                .bind(i64::from(terms.length))
                .execute(&pool)
                .await
                .unwrap();
            }
        }
        sqlx::query("INSERT INTO store_info (key, value) VALUES ('keyword_index', 'older')")
            .execute(&pool)
            .await
            .unwrap();
        let before: i64 =
            sqlx::query_scalar("SELECT generation FROM user_generations WHERE user_id = 'u'")
                .fetch_one(&pool)
                .await
                .unwrap();
        pool.close().await;

        let store = SqliteStore::open(&url, embedder.identity()).await.unwrap();
        let left: Vec<String> = sqlx::query_scalar(
            "SELECT name FROM sqlite_schema WHERE name LIKE 'keyword%' \
             UNION ALL SELECT name FROM pragma_table_info('memories') \
             WHERE name = 'keyword_length'",
        )
        .fetch_all(&store.pool)
        .await
        .unwrap();
        assert!(left.is_empty(), "left behind: {left:?}");
        let after = store.version("u").await.unwrap().unwrap();
        assert!(
            after > u64::try_from(before).unwrap(),
            "{before} -> {after}"
        );
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
