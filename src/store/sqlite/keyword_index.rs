//! The SQLite keyword index: one `keyword_postings` row per distinct term of
//! each current memory (with the memory's agent and run), clustered by
//! (user, term), and per-user statistics in `keyword_users` (kept by
//! triggers, see the migrations). Scoring is [`Bm25`] in Rust over the
//! postings of the query's terms, so a query reads exactly the rows of its
//! terms for its user and nothing of other users; one narrowed to an agent or
//! a run scores only that scope's postings, with the user's statistics.
//!
//! Invariant: every current memory has postings for exactly the terms of its
//! text ([`keywords::document_terms`]) and `keyword_length` set to its term
//! count; the store writes both with the text, in the same transaction.

use std::collections::HashMap;

use sqlx::sqlite::SqliteConnection;
use sqlx::{Connection, Row, SqlitePool};

use super::{StoreError, advance_every_generation, db};
use crate::keywords::{self, Bm25, Corpus, DocumentTerms};
use crate::model::Scope;

/// What `store_info.keyword_index` says once every current memory is indexed
/// as this version of [`crate::keywords`] cuts text.
const INDEX_VERSION: &str = keywords::INDEX_VERSION;

/// One posting as read: (query term index, memory pk, term count, memory length).
type Posting = (usize, i64, u32, u32);

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
    let counts =
        serde_json::to_string(&terms.counts).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    sqlx::query(
        "INSERT INTO keyword_postings (user_id, agent_id, run_id, term, pk, tf, length) \
         SELECT m.user_id, m.agent_id, m.run_id, j.value ->> 0, m.pk, j.value ->> 1, ?2 \
         FROM memories m, json_each(?3) j WHERE m.pk = ?1",
    )
    .bind(pk)
    .bind(i64::from(terms.length))
    .bind(counts)
    .execute(&mut *conn)
    .await
    .map_err(db("indexing keywords"))?;
    Ok(())
}

/// Every current memory in `scope` holding a term of `terms`, with its
/// relevance (pk, score), in no particular order. A scope narrowed to an
/// agent or a run reads only that scope's postings.
pub(super) async fn score_all(
    conn: &mut SqliteConnection,
    scope: &Scope,
    terms: &[String],
) -> Result<Vec<(i64, f32)>, StoreError> {
    if !scope.is_whole_user() {
        let among = (scope.user_id().as_str(), scope.agent_id(), scope.run_id());
        return score_some(conn, among, terms, None).await;
    }
    // One statement, so statistics and postings come from one snapshot; one
    // JSON value, because sqlx hands rows over one at a time between threads.
    // Every posting of the terms is read, so they give the frequencies too.
    let row = sqlx::query(
        "SELECT coalesce((SELECT docs FROM keyword_users WHERE user_id = ?1), 0) AS docs, \
                coalesce((SELECT total_length FROM keyword_users WHERE user_id = ?1), 0) AS total, \
                (SELECT json_group_array(json_array(j.key, p.pk, p.tf, p.length)) \
                 FROM json_each(?2) j CROSS JOIN keyword_postings p \
                   ON p.user_id = ?1 AND p.term = j.value) AS postings",
    )
    .bind(scope.user_id().as_str())
    .bind(terms_json(terms)?)
    .fetch_one(&mut *conn)
    .await
    .map_err(db("searching keywords"))?;
    let corpus = corpus(&row)?;
    let postings: Vec<Posting> = json_column(&row, "postings")?;
    let mut doc_freq = vec![0u64; terms.len()];
    for &(term, ..) in &postings {
        if let Some(n) = doc_freq.get_mut(term) {
            *n += 1;
        }
    }
    Ok(score(corpus, &doc_freq, &postings))
}

/// The relevance of each of `pks` (current memories of the user) that holds
/// a term of `terms`; the others score 0 and are left out.
pub(super) async fn score_pks(
    conn: &mut SqliteConnection,
    user_id: &str,
    terms: &[String],
    pks: &[i64],
) -> Result<HashMap<i64, f32>, StoreError> {
    Ok(score_some(conn, (user_id, None, None), terms, Some(pks))
        .await?
        .into_iter()
        .collect())
}

/// The relevance of the current memories in `among` (a user, and an agent
/// and a run when given; and among `pks`, when given) holding a term of
/// `terms`. Only their postings are read; the
/// frequencies are counted over all of the user's, the statistics BM25
/// scores with whatever the scope.
async fn score_some(
    conn: &mut SqliteConnection,
    (user_id, agent_id, run_id): (&str, Option<&str>, Option<&str>),
    terms: &[String],
    pks: Option<&[i64]>,
) -> Result<Vec<(i64, f32)>, StoreError> {
    let row = sqlx::query(
        "SELECT coalesce((SELECT docs FROM keyword_users WHERE user_id = ?1), 0) AS docs, \
                coalesce((SELECT total_length FROM keyword_users WHERE user_id = ?1), 0) AS total, \
                (SELECT json_group_array(json_array(f.key, f.n)) FROM ( \
                    SELECT j.key, count(p.pk) AS n FROM json_each(?2) j \
                    LEFT JOIN keyword_postings p ON p.user_id = ?1 AND p.term = j.value \
                    GROUP BY j.key) f) AS doc_freq, \
                (SELECT json_group_array(json_array(j.key, p.pk, p.tf, p.length)) \
                 FROM json_each(?2) j CROSS JOIN keyword_postings p \
                   ON p.user_id = ?1 AND p.term = j.value \
                 WHERE (?3 IS NULL OR p.agent_id = ?3) AND (?4 IS NULL OR p.run_id = ?4) \
                   AND (?5 IS NULL OR p.pk IN (SELECT value FROM json_each(?5)))) AS postings",
    )
    .bind(user_id)
    .bind(terms_json(terms)?)
    .bind(agent_id)
    .bind(run_id)
    .bind(pks.map(|pks| serde_json::Value::from(pks.to_vec()).to_string()))
    .fetch_one(&mut *conn)
    .await
    .map_err(db("scoring keywords"))?;
    let corpus = corpus(&row)?;
    let mut doc_freq = vec![0u64; terms.len()];
    for (term, n) in json_column::<Vec<(usize, u64)>>(&row, "doc_freq")? {
        if let Some(slot) = doc_freq.get_mut(term) {
            *slot = n;
        }
    }
    let postings: Vec<Posting> = json_column(&row, "postings")?;
    Ok(score(corpus, &doc_freq, &postings))
}

/// BM25 of each memory among `postings`.
fn score(corpus: Corpus, doc_freq: &[u64], postings: &[Posting]) -> Vec<(i64, f32)> {
    let bm25 = Bm25::new(corpus, doc_freq);
    let mut by_memory: HashMap<i64, (u32, Vec<(usize, u32)>)> = HashMap::new();
    for &(term, pk, tf, length) in postings {
        by_memory
            .entry(pk)
            .or_insert_with(|| (length, Vec::new()))
            .1
            .push((term, tf));
    }
    by_memory
        .into_iter()
        .map(|(pk, (length, matches))| (pk, bm25.score(length, matches)))
        .collect()
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

fn terms_json(terms: &[String]) -> Result<String, StoreError> {
    serde_json::to_string(terms).map_err(|e| StoreError::Corrupt(e.to_string()))
}

fn corpus(row: &sqlx::sqlite::SqliteRow) -> Result<Corpus, StoreError> {
    let docs: i64 = row
        .try_get("docs")
        .map_err(db("reading keyword statistics"))?;
    let total: i64 = row
        .try_get("total")
        .map_err(db("reading keyword statistics"))?;
    Ok(Corpus {
        docs: docs.max(0) as u64,
        total_length: total.max(0) as u64,
    })
}

fn json_column<T: serde::de::DeserializeOwned>(
    row: &sqlx::sqlite::SqliteRow,
    column: &str,
) -> Result<T, StoreError> {
    let raw: String = row
        .try_get(column)
        .map_err(db("reading keyword postings"))?;
    serde_json::from_str(&raw).map_err(|e| StoreError::Corrupt(format!("{column}: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::embed::{Embedder, HashEmbedder};
    use crate::model::MetadataFilter;
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
