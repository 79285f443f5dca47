//! Search ([`Search`]): the user's in-process copy (the vector scan and the
//! keyword postings), narrowed by agent and run on both, by metadata through
//! the rows that pass it; exact cosines read from the stored vectors.

use std::collections::{HashMap, HashSet};

use async_trait::async_trait;
use chrono::Utc;
use sqlx::sqlite::SqliteConnection;
use sqlx::{Connection, Row};

use tokio::sync::OwnedRwLockReadGuard;

use super::rows::{filter_json, parse_id};
use super::vectors::{exact_scores, exact_scores_and_ids};
use super::versions::generation;
use super::{SqliteStore, db};
use crate::keywords;
use crate::model::MemoryId;
use crate::store::vector_index::{Among, UserVectors};
use crate::store::{Candidates, Hit, Pick, Scored, Search, SearchScope, StoreError};

/// A vector search re-ranks `limit * RERANK_FACTOR + RERANK_EXTRA` approximate
/// candidates by exact cosine.
pub(super) const RERANK_FACTOR: usize = 2;

pub(super) const RERANK_EXTRA: usize = 10;

impl SqliteStore {
    /// The user's copy at `generation`, read from `conn` (whose snapshot
    /// must be at that generation) if it is not there already.
    pub(super) async fn copy_at(
        &self,
        conn: &mut SqliteConnection,
        user_id: &str,
        generation: i64,
    ) -> Result<OwnedRwLockReadGuard<UserVectors>, StoreError> {
        let entry = self.index.user(user_id);
        let copy = entry.clone().read_owned().await;
        if copy.generation == Some(generation) {
            return Ok(copy);
        }
        drop(copy);
        let mut copy = entry.write_owned().await;
        self.sync_vectors(conn, user_id, &mut copy).await?;
        Ok(copy.downgrade())
    }

    /// The pks of the user's current memories that a metadata filter (and
    /// the scope's agent and run) select: an index-only read, no vectors
    /// decoded. Agent and run alone need no list: the searches filter by them.
    pub(super) async fn scoped_pks(
        &self,
        conn: &mut SqliteConnection,
        at: SearchScope<'_>,
    ) -> Result<HashSet<i64>, StoreError> {
        // One row holding a JSON array: sqlx hands rows over one at a time
        // between threads, which costs more than the query for thousands of rows.
        // The scope index holds agent and run, so narrowing needs no table reads
        // (left to itself the planner picked the recency index: 4x slower).
        let pks: String = sqlx::query_scalar(concat!(
            "SELECT json_group_array(m.pk) FROM memories m INDEXED BY memories_scope \
             WHERE m.user_id = ?1 AND m.valid_to IS NULL \
               AND (?2 IS NULL OR m.agent_id = ?2) AND (?3 IS NULL OR m.run_id = ?3) AND ",
            metadata_matches!("?4"),
            " AND ",
            unexpired!("m")
        ))
        .bind(at.scope.user_id().as_str())
        .bind(at.scope.agent_id())
        .bind(at.scope.run_id())
        .bind(filter_json(at))
        .fetch_one(&mut *conn)
        .await
        .map_err(db("narrowing the search"))?;
        serde_json::from_str(&pks).map_err(|e| StoreError::Corrupt(format!("pk list: {e}")))
    }
}

#[async_trait]
impl Search for SqliteStore {
    async fn vector_search(
        &self,
        at: SearchScope<'_>,
        query: &[f32],
        limit: usize,
    ) -> Result<Vec<Hit>, StoreError> {
        let user_id = at.scope.user_id();
        let entry = self.index.user(user_id);
        let mut conn = self.pool.acquire().await.map_err(db("searching vectors"))?;
        // Agent and run narrow the scan by the copy's own scopes; only a
        // metadata filter needs the rows that pass it.
        let allowed = if at.filter.is_empty() {
            None
        } else {
            Some(self.scoped_pks(&mut conn, at).await?)
        };
        let among = among(at, allowed.as_ref());
        // Expired memories still in the copy take places in the scan that
        // the exact read then empties: the pool makes room for them.
        let now = Utc::now().timestamp_millis();
        let pool =
            |vecs: &UserVectors| limit * RERANK_FACTOR + RERANK_EXTRA + vecs.expired(now).len();
        // Optimistic: scan the copy as it is, then read the user's generation
        // and the candidates' exact vectors in one statement (one snapshot).
        // A copy behind the database is reloaded and the search redone.
        let (seen, approx) = {
            let vecs = entry.read().await;
            (vecs.generation, vecs.top_k_among(query, pool(&vecs), among))
        };
        let pks: Vec<i64> = approx.iter().map(|s| s.pk).collect();
        let (generation, exact) = exact_scores(&mut conn, user_id, &pks, query).await?;
        let (approx, exact) = if seen == Some(generation) {
            (approx, exact)
        } else {
            let mut vecs = entry.write().await;
            let mut tx = conn.begin().await.map_err(db("loading vectors"))?;
            let generation = self.sync_vectors(&mut tx, user_id, &mut vecs).await?;
            let approx = vecs.top_k_among(query, pool(&vecs), among);
            let pks: Vec<i64> = approx.iter().map(|s| s.pk).collect();
            let (read_at, exact) = exact_scores(&mut tx, user_id, &pks, query).await?;
            tx.commit().await.map_err(db("loading vectors"))?;
            debug_assert_eq!(read_at, generation, "one transaction, one generation");
            (approx, exact)
        };
        let exact: HashMap<i64, f32> = exact.into_iter().collect();
        let mut hits: Vec<Hit> = approx
            .iter()
            .filter_map(|s| exact.get(&s.pk).map(|&score| Hit { id: s.id, score }))
            .collect();
        hits.sort_by(|a, b| b.score.total_cmp(&a.score));
        hits.truncate(limit);
        Ok(hits)
    }

    async fn keyword_search(
        &self,
        at: SearchScope<'_>,
        query: &str,
        limit: usize,
    ) -> Result<Vec<Hit>, StoreError> {
        let terms = keywords::query_terms(query);
        if terms.is_empty() || limit == 0 {
            return Ok(Vec::new());
        }
        let user_id = at.scope.user_id();
        let mut conn = self
            .pool
            .acquire()
            .await
            .map_err(db("searching keywords"))?;
        let allowed = if at.filter.is_empty() {
            None
        } else {
            Some(self.scoped_pks(&mut conn, at).await?)
        };
        // The copy at the user's current generation holds the postings, ids
        // and expiries of exactly the current memories: no rows to read.
        let mut tx = conn.begin().await.map_err(db("searching keywords"))?;
        let now = generation(&mut tx, user_id).await?;
        let copy = self.copy_at(&mut tx, user_id, now).await?;
        tx.commit().await.map_err(db("searching keywords"))?;
        let expired = copy.expired(Utc::now().timestamp_millis());
        let (best, _) = copy.keyword_search(&terms, among(at, allowed.as_ref()), limit, &expired);
        let hits = best
            .into_iter()
            .map(|(_, id, score)| Hit { id, score })
            .collect();
        Ok(hits)
    }

    /// One pass instead of the provided three steps: the keyword relevance of
    /// every match (which BM25 computes anyway), the in-process vector scan,
    /// and one statement for the exact cosine and id of every candidate of
    /// either signal.
    async fn candidates(
        &self,
        at: SearchScope<'_>,
        vector: &[f32],
        query: &str,
        depth: usize,
        _pick: Pick<'_>,
        _seen: Option<u64>,
    ) -> Result<Candidates, StoreError> {
        let user_id = at.scope.user_id();
        let terms = keywords::query_terms(query);
        let entry = self.index.user(user_id);
        let mut conn = self.pool.acquire().await.map_err(db("searching"))?;
        // Agent and run narrow the scan by the copy's own scopes; only a
        // metadata filter needs the rows that pass it.
        let allowed = if at.filter.is_empty() {
            None
        } else {
            Some(self.scoped_pks(&mut conn, at).await?)
        };
        let among = among(at, allowed.as_ref());
        // Both signals come from the copy as it is, under one read lock;
        // its generation is checked in the statement that reads the exact
        // vectors, and a copy behind is reloaded and both signals redone.
        let now = Utc::now().timestamp_millis();
        let signals = |copy: &UserVectors| {
            // As in vector_search: expired memories leave the keyword side
            // before its cut, and make room in the vector scan's pool.
            let expired = copy.expired(now);
            let pool = depth * RERANK_FACTOR + RERANK_EXTRA + expired.len();
            let approx = copy.top_k_among(vector, pool, among);
            // The keyword side's best `depth`, cut as keyword_search cuts
            // (equal scores in id order), and the keyword relevance of the
            // vector side's candidates: nothing else of the matches is kept.
            let (by_keyword, scores) = copy.keyword_search(&terms, among, depth, &expired);
            let keyword: HashMap<i64, f32> = by_keyword
                .iter()
                .map(|&(pk, _, score)| (pk, score))
                .chain(
                    approx
                        .iter()
                        .filter(|s| !expired.contains(&s.pk))
                        .filter_map(|s| Some((s.pk, scores.of(s.id)?))),
                )
                .collect();
            let mut union: Vec<i64> = approx
                .iter()
                .map(|s| s.pk)
                .chain(by_keyword.iter().map(|&(pk, ..)| pk))
                .collect();
            union.sort_unstable();
            union.dedup();
            (approx, keyword, by_keyword, union)
        };
        let (seen, (approx, keyword, by_keyword, union)) = {
            let copy = entry.read().await;
            (copy.generation, signals(&copy))
        };
        let (generation, exact) = exact_scores_and_ids(&mut conn, user_id, &union, vector).await?;
        let (approx, keyword, by_keyword, exact) = if seen == Some(generation) {
            (approx, keyword, by_keyword, exact)
        } else {
            let mut copy = entry.write().await;
            let mut tx = conn.begin().await.map_err(db("loading vectors"))?;
            self.sync_vectors(&mut tx, user_id, &mut copy).await?;
            let (approx, keyword, by_keyword, union) = signals(&copy);
            let (_, exact) = exact_scores_and_ids(&mut tx, user_id, &union, vector).await?;
            tx.commit().await.map_err(db("loading vectors"))?;
            (approx, keyword, by_keyword, exact)
        };
        let exact: HashMap<i64, (MemoryId, f32)> = exact
            .into_iter()
            .map(|(pk, id, cosine)| (pk, (id, cosine)))
            .collect();
        let mut by_vector: Vec<(i64, f32)> = approx
            .iter()
            .filter_map(|s| exact.get(&s.pk).map(|&(_, cosine)| (s.pk, cosine)))
            .collect();
        by_vector.sort_by(|a, b| b.1.total_cmp(&a.1));
        by_vector.truncate(depth);
        let chosen: HashSet<i64> = by_vector
            .iter()
            .map(|(pk, _)| *pk)
            .chain(by_keyword.iter().map(|&(pk, ..)| pk))
            .collect();
        let scored = chosen
            .into_iter()
            .filter_map(|pk| {
                exact.get(&pk).map(|&(id, similarity)| Scored {
                    id,
                    similarity,
                    keyword: keyword.get(&pk).copied().unwrap_or(0.0),
                })
            })
            .collect();
        // The rows are left to `get_many`: a read of the winners' rows in
        // process, with no round trip to save.
        Ok(Candidates {
            scored,
            memories: None,
        })
    }

    async fn score(
        &self,
        user_id: &str,
        ids: &[MemoryId],
        vector: &[f32],
        query: &str,
    ) -> Result<Vec<Scored>, StoreError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let id_list: Vec<String> = ids.iter().map(ToString::to_string).collect();
        let mut conn = self.pool.acquire().await.map_err(db("scoring memories"))?;
        // One read transaction: one snapshot for rows, vectors and postings.
        let mut tx = conn.begin().await.map_err(db("scoring memories"))?;
        let rows = sqlx::query(concat!(
            "SELECT m.pk, m.id FROM json_each(?) j CROSS JOIN memories m ON m.id = j.value \
             WHERE m.user_id = ? AND m.valid_to IS NULL AND ",
            unexpired!("m")
        ))
        .bind(serde_json::Value::from(id_list).to_string())
        .bind(user_id)
        .fetch_all(&mut *tx)
        .await
        .map_err(db("scoring memories"))?;
        let mut found: Vec<(i64, MemoryId)> = Vec::with_capacity(rows.len());
        for row in &rows {
            found.push((
                row.try_get("pk").map_err(db("scoring memories"))?,
                parse_id(row)?,
            ));
        }
        let pks: Vec<i64> = found.iter().map(|(pk, _)| *pk).collect();
        let (generation, similarities) = exact_scores(&mut tx, user_id, &pks, vector).await?;
        let similarities: HashMap<i64, f32> = similarities.into_iter().collect();
        let terms = keywords::query_terms(query);
        let keyword: HashMap<i64, f32> = if terms.is_empty() {
            HashMap::new()
        } else {
            let copy = self.copy_at(&mut tx, user_id, generation).await?;
            let scores = copy.keyword_query(&terms, Among::All);
            found
                .iter()
                .filter_map(|&(pk, id)| Some((pk, scores.of(id)?)))
                .collect()
        };
        tx.commit().await.map_err(db("scoring memories"))?;
        Ok(found
            .into_iter()
            .map(|(pk, id)| Scored {
                id,
                similarity: similarities.get(&pk).copied().unwrap_or(0.0),
                keyword: keyword.get(&pk).copied().unwrap_or(0.0),
            })
            .collect())
    }
}

/// The rows of the in-process copy a search in `at` counts: those in
/// `allowed` when a metadata filter picked them, else those of the scope's
/// agent and run (every row for a whole-user search).
pub(super) fn among<'a>(at: SearchScope<'a>, allowed: Option<&'a HashSet<i64>>) -> Among<'a> {
    match allowed {
        Some(pks) => Among::Pks(pks),
        None if at.scope.is_whole_user() => Among::All,
        None => Among::Scope {
            agent_id: at.scope.agent_id(),
            run_id: at.scope.run_id(),
        },
    }
}
