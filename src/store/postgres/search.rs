//! Search ([`Search`]): `engram_nearest` for vectors, `engram_keyword_search`
//! for BM25, and recall's candidates in one statement a side. Each call reads in
//! a transaction scoped to its user (`scope`).

use std::collections::{HashMap, HashSet};

use async_trait::async_trait;
use pgvector::Vector;
use sqlx::{PgConnection, Postgres, Row, Transaction};
use uuid::Uuid;

use super::keyword_copy::UserCopy;
use super::read::memories_by_id;
use super::session::Pooler;
use super::{PgStore, db};
use crate::keywords;
use crate::model::{Memory, MemoryId};
use crate::store::keyword_copy::QueryScores;
use crate::store::shared::{MEMORY_COLUMNS, memory_from_row};
use crate::store::{Candidates, Hit, Nearest, Pick, Scored, Search, SearchScope, StoreError};

/// The keyword search's statement up to its result: the user's expired
/// memories (asked for on top of the limit, `$6`, and left out, so that
/// `limit` live ones come back when there are that many) and the hits `k`.
macro_rules! keyword_hits_cte {
    () => {
        "WITH x AS MATERIALIZED (SELECT engram_expired_ids($1) AS ids), \
              k AS MATERIALIZED ( \
                  SELECT k.id, k.score FROM x, \
                      engram_keyword_search($1, $2, $3, $4, $5, $6 + cardinality(x.ids)) k \
                  WHERE k.id <> ALL (x.ids)) "
    };
}

/// BM25 hits for `query`, best first, read on `conn` (a transaction scoped
/// to the user of `at`), each with its memory's cosine similarity to
/// `vector` when one is given, in the same statement. The hits' rows are
/// read by key (`= ANY`): joined to the function's result (whose row count
/// the planner does not know), they were a hash of every row of the user,
/// vectors included (10.8 ms for 1,000 rows of 1536 dimensions; 0.4 ms by
/// key).
async fn keyword_hits(
    conn: &mut PgConnection,
    at: SearchScope<'_>,
    query: &str,
    vector: Option<&[f32]>,
    limit: usize,
) -> Result<Vec<(Hit, Option<f32>)>, StoreError> {
    let terms = keywords::query_terms(query);
    if terms.is_empty() || limit == 0 {
        return Ok(Vec::new());
    }
    let sql = match vector {
        None => concat!(keyword_hits_cte!(), "SELECT id, score, NULL::real FROM k"),
        Some(_) => concat!(
            keyword_hits_cte!(),
            ", s AS ( \
                 SELECT m.id, (1 - (m.embedding <=> $7))::real AS similarity \
                 FROM memories m \
                 WHERE m.id = ANY (ARRAY(SELECT id FROM k)) \
                   AND m.user_id = $1 AND m.valid_to IS NULL) \
             SELECT k.id, k.score, s.similarity FROM k JOIN s ON s.id = k.id"
        ),
    };
    let mut statement = sqlx::query_as(sql)
        .bind(at.scope.user_id().as_str())
        .bind(at.scope.agent_id())
        .bind(at.scope.run_id())
        .bind(at.filter_object())
        .bind(&terms)
        .bind(i32::try_from(limit).unwrap_or(i32::MAX));
    if let Some(vector) = vector {
        statement = statement.bind(Vector::from(vector.to_vec()));
    }
    let rows: Vec<(Uuid, f32, Option<f32>)> = statement
        .fetch_all(&mut *conn)
        .await
        .map_err(db("searching keywords"))?;
    let mut scored: Vec<(Hit, Option<f32>)> = rows
        .into_iter()
        .map(|(id, score, similarity)| {
            (
                Hit {
                    id: MemoryId(id),
                    score,
                },
                similarity,
            )
        })
        .collect();
    scored.sort_by(|(a, _), (b, _)| b.score.total_cmp(&a.score).then(a.id.0.cmp(&b.id.0)));
    scored.truncate(limit);
    Ok(scored)
}

/// The search function a vector search calls.
#[derive(Debug, Clone, Copy)]
enum Through {
    /// `engram_nearest`: recall's, exact below the exact-scan limit.
    Nearest,
    /// `engram_similar`: the reconciler's.
    Similar,
}

impl PgStore {
    /// A vector search through `through`, the user's version and the
    /// memories of the hits from `load_from`, in one statement. The version
    /// is read in the statement's snapshot, which is taken before any of the
    /// search function's own: the search sees at least what that version
    /// holds, so a user still at it holds nothing the search did not see.
    /// (The memories are read in that snapshot too: a hit written after it
    /// is left out, as one forgotten before it would be.)
    async fn search_at_version(
        &self,
        through: Through,
        at: SearchScope<'_>,
        query: &[f32],
        limit: usize,
        load_from: Option<f32>,
    ) -> Result<Nearest, StoreError> {
        if limit == 0 {
            return Ok(nothing_found(load_from));
        }
        let from_copy = self
            .nearest_in_copy(at, &[query], limit, load_from, None)
            .await?;
        if let Some(found) = from_copy.and_then(|found| found.into_iter().next()) {
            return Ok(found);
        }
        self.search_in_sql(through, at, query, limit, load_from)
            .await
    }

    /// [`Self::search_at_version`] in SQL, the user's copy not asked.
    async fn search_in_sql(
        &self,
        through: Through,
        at: SearchScope<'_>,
        query: &[f32],
        limit: usize,
        load_from: Option<f32>,
    ) -> Result<Nearest, StoreError> {
        let function = match through {
            Through::Nearest => "engram_nearest",
            Through::Similar => "engram_similar",
        };
        // Expired memories are excluded by the search itself, so k live ones come back.
        let user_id = at.scope.user_id().as_str();
        let mut tx = self.user_transaction(user_id).await?;
        // (version, hit, its similarity, its memory from `load_from`): a
        // search without hits gives one row of nulls, so the version
        // always comes back. The memories are read by key (`= ANY`): joined
        // to the function's result, whose row count the planner does not
        // know, they were a hash of every row of the user (2.3 ms at 1,800
        // rows; 0.05 ms by key).
        let sql = format!(
            "WITH n AS MATERIALIZED ( \
                 SELECT id, similarity \
                 FROM {function}($1, $2, $3, $4, $5, $6, engram_expired_ids($1))), \
             loaded AS MATERIALIZED ( \
                 SELECT {MEMORY_COLUMNS} FROM memories m \
                 WHERE m.id = ANY (ARRAY(SELECT id FROM n WHERE similarity >= $7)) \
                   AND m.user_id = $1) \
             SELECT (SELECT version FROM memory_users WHERE user_id = $1) AS version, \
                    n.id AS hit, n.similarity, m.* \
             FROM (VALUES (1)) AS one (x) \
             LEFT JOIN n ON true \
             LEFT JOIN loaded m ON m.id = n.id"
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(user_id)
            .bind(at.scope.agent_id())
            .bind(at.scope.run_id())
            .bind(at.filter_object())
            .bind(Vector::from(query.to_vec()))
            .bind(i32::try_from(limit).unwrap_or(i32::MAX))
            .bind(load_from)
            .fetch_all(&mut *tx)
            .await
            .map_err(db("searching vectors"))?;
        PgStore::end_read(tx);
        let column = db("reading a vector search");
        let version: Option<i64> = match rows.first() {
            Some(row) => row.try_get("version").map_err(&column)?,
            None => None,
        };
        let mut found = Vec::with_capacity(rows.len());
        let mut memories = Vec::new();
        for row in &rows {
            let hit: Option<Uuid> = row.try_get("hit").map_err(&column)?;
            let similarity: Option<f32> = row.try_get("similarity").map_err(&column)?;
            if let Some(hit) = hit.zip(similarity) {
                found.push(hit);
            }
            let loaded: Option<Uuid> = row.try_get("id").map_err(&column)?;
            if loaded.is_some() {
                memories.push(memory_from_row(row)?);
            }
        }
        let mut hits = hits(found);
        // The vector index returns rows in relaxed order.
        hits.sort_by(|a, b| b.score.total_cmp(&a.score));
        hits.truncate(limit);
        Ok(Nearest {
            hits,
            version: version.map(|v| v as u64),
            memories: load_from.map(|_| memories),
        })
    }
}

impl PgStore {
    /// Recall's candidates with the keyword side from `copy`: one statement
    /// reads the nearest memories, the cosines of the copy's keyword hits
    /// and the user's version, and a second, in the same transaction, the
    /// memories of the candidates `pick` chooses; `None` when that version
    /// is not the copy's (the copy is stale: the caller takes the SQL path).
    /// The nearest memories are the search function's, or, when the copy
    /// holds codes, the exact best of the rows the codes name (which hold
    /// the exact nearest: `copy_codes`).
    async fn candidates_with_copy(
        &self,
        copy: &UserCopy,
        at: SearchScope<'_>,
        vector: &[f32],
        terms: &[String],
        depth: usize,
        pick: Pick<'_>,
    ) -> Result<Option<Candidates>, StoreError> {
        let user_id = at.scope.user_id().as_str();
        let (keyword_hits, keyword_of) = copy.search(terms, depth);
        let keyword_ids: Vec<Uuid> = keyword_hits.iter().map(|(id, _)| *id).collect();
        // With codes, the rows that may be nearest, scored exactly; without,
        // the search function's nearest.
        let named = copy.may_be_nearest(vector, depth);
        let nearest_sql = match named {
            Some(_) => {
                "SELECT m.id, (1 - (m.embedding <=> $2))::real AS similarity \
                 FROM memories m \
                 WHERE m.id = ANY ($5) AND m.user_id = $1 AND m.valid_to IS NULL"
            }
            None => {
                "SELECT id, similarity FROM engram_nearest($1, NULL, NULL, NULL, $2, $3, \
                     engram_expired_ids($1))"
            }
        };
        let mut tx = self.user_transaction(user_id).await?;
        // (0, nearest id, similarity) rows, (1, keyword hit id, its cosine)
        // rows, and the version on every row: read once (an InitPlan), in
        // the statement's snapshot.
        let sql = format!(
            "WITH v AS MATERIALIZED (SELECT version FROM memory_users WHERE user_id = $1), \
                  n AS MATERIALIZED ({nearest_sql}) \
             SELECT 0::int2, n.id, n.similarity, (SELECT version FROM v) FROM n \
             UNION ALL \
             SELECT 1::int2, m.id, (1 - (m.embedding <=> $2))::real, (SELECT version FROM v) \
             FROM memories m \
             WHERE m.id = ANY ($4) AND m.user_id = $1 AND m.valid_to IS NULL"
        );
        let rows: Vec<(i16, Uuid, f32, Option<i64>)> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(user_id)
            .bind(Vector::from(vector.to_vec()))
            .bind(i32::try_from(depth).unwrap_or(i32::MAX))
            .bind(&keyword_ids)
            .bind(named.as_deref().unwrap_or_default())
            .fetch_all(&mut *tx)
            .await
            .map_err(db("searching vectors"))?;
        // No row says no version: the user has none of either kind, and the
        // SQL path answers that as cheaply.
        if rows.first().and_then(|r| r.3) != Some(copy.version) {
            PgStore::end_read(tx);
            return Ok(None);
        }
        let mut nearest = hits(
            rows.iter()
                .filter(|r| r.0 == 0)
                .map(|r| (r.1, r.2))
                .collect(),
        );
        nearest.sort_by(|a, b| b.score.total_cmp(&a.score));
        nearest.truncate(depth);
        let cosine: HashMap<Uuid, f32> = rows
            .iter()
            .filter(|r| r.0 == 1)
            .map(|r| (r.1, r.2))
            .collect();
        let scored = with_copy_keywords(&nearest, keyword_hits, &keyword_of, &cosine);
        let found = picked_rows(tx, user_id, scored, pick).await?;
        self.keyword_copies.answered();
        Ok(Some(found))
    }
}

impl PgStore {
    /// [`Self::search_at_version`] for each of `queries` from the user's
    /// copy, when it holds their vectors and the searches are of the whole
    /// user: the nearest memories are found here (exactly: what either
    /// search function answers for a user this small), and one statement
    /// reads the user's version and the memories of every search's hits
    /// from `load_from`. `None` when there is no such copy (one is then
    /// loaded in the background) or the version is not the copy's. When
    /// the version `seen` since the search began is the copy's and the copy
    /// holds its memories, nothing is read: the answer is the user as they
    /// were at that read.
    async fn nearest_in_copy(
        &self,
        at: SearchScope<'_>,
        queries: &[&[f32]],
        limit: usize,
        load_from: Option<f32>,
        seen: Option<u64>,
    ) -> Result<Option<Vec<Nearest>>, StoreError> {
        if !at.scope.is_whole_user() || !at.filter.is_empty() {
            return Ok(None);
        }
        let user_id = at.scope.user_id().as_str();
        let Some(copy) = self.keyword_copies.get(user_id) else {
            self.refresh_keyword_copy(user_id);
            return Ok(None);
        };
        // A copy without floats answers none of these (loading it again
        // would not change that).
        if !copy.has_vectors() {
            return Ok(None);
        }
        let found: Vec<Vec<(Uuid, f32)>> = queries
            .iter()
            .map(|query| copy.nearest(query, limit))
            .collect();
        let loads = |similarity: f32| load_from.is_some_and(|least| similarity >= least);
        let mut wanted: Vec<MemoryId> = Vec::new();
        for &(id, similarity) in found.iter().flatten() {
            if loads(similarity) && !wanted.contains(&MemoryId(id)) {
                wanted.push(MemoryId(id));
            }
        }
        let (version, memories) = match copy.memories_at(seen, &wanted) {
            Some(memories) => (Some(copy.version), memories),
            None => self.memories_at_version(user_id, &wanted).await?,
        };
        if version != Some(copy.version) {
            self.refresh_keyword_copy(user_id);
            return Ok(None);
        }
        let nearest = found
            .into_iter()
            .map(|hits| Nearest {
                memories: load_from.map(|_| {
                    let loaded = |m: &&Memory| hits.iter().any(|&(id, s)| id == m.id.0 && loads(s));
                    memories.iter().filter(loaded).cloned().collect()
                }),
                hits: self::hits(hits),
                version: version.map(|v| v as u64),
            })
            .collect();
        Ok(Some(nearest))
    }

    /// Recall's candidates from a copy that holds the user's vectors: both
    /// sides are computed here, and one statement reads the rows `pick`
    /// chooses with the user's version, in one snapshot; `None` when that
    /// version is not the copy's (the copy is stale: the caller takes the
    /// SQL path, and the rows read are dropped). When the version `seen`
    /// during the recall is the copy's and the copy holds its memories,
    /// the rows come from the copy and nothing is read: the answer is the
    /// user as they were at that read.
    #[allow(clippy::too_many_arguments)]
    async fn candidates_from_copy(
        &self,
        copy: &UserCopy,
        user_id: &str,
        vector: &[f32],
        terms: &[String],
        depth: usize,
        pick: Pick<'_>,
        seen: Option<u64>,
    ) -> Result<Option<Candidates>, StoreError> {
        let (keyword_hits, keyword_of) = copy.search(terms, depth);
        let nearest = hits(copy.nearest(vector, depth));
        let cosine: HashMap<Uuid, f32> = copy
            .similarities(keyword_hits.iter().map(|(id, _)| id), vector)
            .into_iter()
            .collect();
        let scored = with_copy_keywords(&nearest, keyword_hits, &keyword_of, &cosine);
        let chosen = pick(&scored);
        if let Some(memories) = copy.memories_at(seen, &chosen) {
            self.keyword_copies.answered();
            return Ok(Some(Candidates {
                scored,
                memories: Some(memories),
            }));
        }
        let (version, memories) = self.memories_at_version(user_id, &chosen).await?;
        if version != Some(copy.version) {
            return Ok(None);
        }
        self.keyword_copies.answered();
        Ok(Some(Candidates {
            scored,
            memories: Some(memories),
        }))
    }

    /// The user's version and their memories with these ids (expired ones
    /// left out), read in one statement's snapshot. No version when the user
    /// has never had a memory.
    ///
    /// The read is `engram_memories_at_version` (migration 20280501000001),
    /// which sets its own settings and scope: on a direct connection it goes
    /// alone, a transaction of its own and one round trip; behind a
    /// transaction pooler inside a transaction, as every statement there.
    async fn memories_at_version(
        &self,
        user_id: &str,
        ids: &[MemoryId],
    ) -> Result<(Option<i64>, Vec<Memory>), StoreError> {
        const CX: &str = "reading memories";
        let ids: Vec<Uuid> = ids.iter().map(|id| id.0).collect();
        let (names, values) = self.settings.names_and_values();
        let query = sqlx::query("SELECT * FROM engram_memories_at_version($1, $2, $3, $4)")
            .bind(names)
            .bind(values)
            .bind(user_id)
            .bind(&ids);
        let rows = match self.settings.pooler() {
            Pooler::None => {
                let mut conn = self.acquire_request(CX).await?;
                query.fetch_all(&mut *conn).await.map_err(db(CX))?
            }
            Pooler::Transaction => {
                let mut tx = self.user_transaction(user_id).await?;
                let rows = query.fetch_all(&mut *tx).await.map_err(db(CX))?;
                PgStore::end_read(tx);
                rows
            }
        };
        let column = db(CX);
        let version: Option<i64> = match rows.first() {
            Some(row) => row.try_get("version").map_err(&column)?,
            None => None,
        };
        let mut memories = Vec::with_capacity(rows.len());
        for row in &rows {
            let loaded: Option<Uuid> = row.try_get("id").map_err(&column)?;
            if loaded.is_some() {
                memories.push(memory_from_row(row)?);
            }
        }
        Ok((version, memories))
    }
}

/// `scored` and the memories of those `pick` chooses, read on `tx` (the
/// candidates' own transaction), which is then committed: the rows cost
/// one statement, not a transaction of their own.
async fn picked_rows(
    mut tx: Transaction<'static, Postgres>,
    user_id: &str,
    scored: Vec<Scored>,
    pick: Pick<'_>,
) -> Result<Candidates, StoreError> {
    let chosen = pick(&scored);
    let memories = memories_by_id(&mut tx, user_id, &chosen).await?;
    PgStore::end_read(tx);
    Ok(Candidates {
        scored,
        memories: Some(memories),
    })
}

#[async_trait]
impl Search for PgStore {
    /// [`Search::nearest`]'s hits: the version costs one lookup by key.
    async fn vector_search(
        &self,
        at: SearchScope<'_>,
        query: &[f32],
        limit: usize,
    ) -> Result<Vec<Hit>, StoreError> {
        Ok(self.nearest(at, query, limit).await?.hits)
    }

    async fn nearest(
        &self,
        at: SearchScope<'_>,
        query: &[f32],
        limit: usize,
    ) -> Result<Nearest, StoreError> {
        self.search_at_version(Through::Nearest, at, query, limit, None)
            .await
    }

    /// `engram_similar`: through the index where the user's rows are in it
    /// (migration 20271215000001).
    async fn similar(
        &self,
        at: SearchScope<'_>,
        query: &[f32],
        limit: usize,
        load_from: Option<f32>,
    ) -> Result<Nearest, StoreError> {
        self.search_at_version(Through::Similar, at, query, limit, load_from)
            .await
    }

    /// From the user's copy, one read for all of them; else each search in
    /// SQL, at once.
    async fn similar_all(
        &self,
        at: SearchScope<'_>,
        queries: &[Vec<f32>],
        limit: usize,
        load_from: Option<f32>,
        seen: Option<u64>,
    ) -> Result<Vec<Nearest>, StoreError> {
        if limit == 0 || queries.is_empty() {
            return Ok(queries.iter().map(|_| nothing_found(load_from)).collect());
        }
        let each: Vec<&[f32]> = queries.iter().map(Vec::as_slice).collect();
        let from_copy = self.nearest_in_copy(at, &each, limit, load_from, seen);
        if let Some(found) = from_copy.await? {
            return Ok(found);
        }
        let searches = each
            .iter()
            .map(|query| self.search_in_sql(Through::Similar, at, query, limit, load_from));
        futures::future::try_join_all(searches).await
    }

    /// From a copy of the whole user that holds their memories: the
    /// version alone, in one statement (`engram_memories_at_version` asked
    /// for no rows).
    async fn version_now(&self, at: SearchScope<'_>) -> Result<Option<u64>, StoreError> {
        let user_id = at.scope.user_id().as_str();
        let from_copy = at.scope.is_whole_user()
            && at.filter.is_empty()
            && self
                .keyword_copies
                .peek(user_id)
                .is_some_and(|copy| copy.holds_memories());
        if !from_copy {
            return Ok(None);
        }
        let (version, _) = self.memories_at_version(user_id, &[]).await?;
        Ok(version.and_then(|v| u64::try_from(v).ok()))
    }

    async fn keyword_search(
        &self,
        at: SearchScope<'_>,
        query: &str,
        limit: usize,
    ) -> Result<Vec<Hit>, StoreError> {
        if keywords::query_terms(query).is_empty() || limit == 0 {
            return Ok(Vec::new());
        }
        let mut tx = self.user_transaction(at.scope.user_id().as_str()).await?;
        let hits = keyword_hits(&mut tx, at, query, None, limit).await?;
        tx.commit().await.map_err(db("searching keywords"))?;
        Ok(hits.into_iter().map(|(hit, _)| hit).collect())
    }

    /// Each search on its own connection, each in one statement that also
    /// gives its candidates the relevance they lack: BM25 for the vector's,
    /// cosine for the keywords'. One statement deep on each side (plus the
    /// transaction's begin and commit), then the picked rows in the vector
    /// side's transaction.
    async fn candidates(
        &self,
        at: SearchScope<'_>,
        vector: &[f32],
        query: &str,
        depth: usize,
        pick: Pick<'_>,
        seen: Option<u64>,
    ) -> Result<Candidates, StoreError> {
        let user_id = at.scope.user_id().as_str();
        let terms = keywords::query_terms(query);
        // The whole user, unfiltered: the keyword side may come from the
        // user's copy, when the copy is of the version the vectors are read at.
        if at.scope.is_whole_user() && at.filter.is_empty() && depth > 0 {
            if let Some(copy) = self.keyword_copies.get(user_id) {
                let found = if copy.has_vectors() {
                    self.candidates_from_copy(&copy, user_id, vector, &terms, depth, pick, seen)
                        .await?
                } else {
                    self.candidates_with_copy(&copy, at, vector, &terms, depth, pick)
                        .await?
                };
                if let Some(found) = found {
                    return Ok(found);
                }
            }
            self.refresh_keyword_copy(user_id);
        }
        let by_vector = async {
            let mut tx = self.user_transaction(user_id).await?;
            // The nearest memories and their BM25 in one statement.
            let rows: Vec<(Uuid, f32, Option<f32>)> = sqlx::query_as(
                "WITH n AS MATERIALIZED ( \
                     SELECT id, similarity FROM engram_nearest($1, $2, $3, $4, $5, $6, \
                         engram_expired_ids($1))) \
                 SELECT n.id, n.similarity, k.score FROM n LEFT JOIN engram_keyword_scores( \
                     $1, $7, ARRAY(SELECT id FROM n)) k ON k.id = n.id",
            )
            .bind(user_id)
            .bind(at.scope.agent_id())
            .bind(at.scope.run_id())
            .bind(at.filter_object())
            .bind(Vector::from(vector.to_vec()))
            .bind(i32::try_from(depth).unwrap_or(i32::MAX))
            .bind(&terms)
            .fetch_all(&mut *tx)
            .await
            .map_err(db("searching vectors"))?;
            let keyword: HashMap<Uuid, f32> = rows
                .iter()
                .filter_map(|(id, _, k)| k.map(|k| (*id, k)))
                .collect();
            let mut hits = hits(rows.into_iter().map(|(id, s, _)| (id, s)).collect());
            hits.sort_by(|a, b| b.score.total_cmp(&a.score));
            hits.truncate(depth);
            // Left open: the picked rows are read in it.
            Ok::<_, StoreError>((hits, keyword, tx))
        };
        let by_keyword = async {
            if terms.is_empty() || depth == 0 {
                return Ok((Vec::new(), HashMap::new()));
            }
            let mut tx = self.user_transaction(user_id).await?;
            let scored = keyword_hits(&mut tx, at, query, Some(vector), depth).await?;
            PgStore::end_read(tx);
            let similarity: HashMap<Uuid, f32> = scored
                .iter()
                .filter_map(|(h, s)| s.map(|s| (h.id.0, s)))
                .collect();
            let hits: Vec<Hit> = scored.into_iter().map(|(h, _)| h).collect();
            Ok::<_, StoreError>((hits, similarity))
        };
        let ((vector_hits, their_keyword, tx), (keyword_hits, their_similarity)) =
            tokio::try_join!(by_vector, by_keyword)?;
        let keyword_of: HashMap<Uuid, f32> =
            keyword_hits.iter().map(|h| (h.id.0, h.score)).collect();
        let scored = both_sides(
            &vector_hits,
            |id| {
                keyword_of
                    .get(id)
                    .or_else(|| their_keyword.get(id))
                    .copied()
            },
            &keyword_hits,
            &their_similarity,
        );
        picked_rows(tx, user_id, scored, pick).await
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
        let ids: Vec<Uuid> = ids.iter().map(|id| id.0).collect();
        let terms = keywords::query_terms(query);
        // BM25 by engram_keyword_scores (whose statistics cover all of the
        // user's memories, not only these), once: MATERIALIZED keeps it off
        // the inner side of a loop over the memories. The memories' own rows
        // give the cosine and keep only current memories of the user.
        let mut tx = self.user_transaction(user_id).await?;
        let rows: Vec<(Uuid, f32, f32)> = sqlx::query_as(
            "WITH k AS MATERIALIZED (SELECT id, score FROM engram_keyword_scores($1, $4, $2)) \
             SELECT m.id, (1 - (m.embedding <=> $3))::real, coalesce(k.score, 0)::real \
             FROM memories m LEFT JOIN k ON k.id = m.id \
             WHERE m.user_id = $1 AND m.id = ANY ($2) AND m.valid_to IS NULL \
               AND (m.expires_at IS NULL OR m.expires_at > now())",
        )
        .bind(user_id)
        .bind(&ids)
        .bind(Vector::from(vector.to_vec()))
        .bind(&terms)
        .fetch_all(&mut *tx)
        .await
        .map_err(db("scoring memories"))?;
        tx.commit().await.map_err(db("scoring memories"))?;
        Ok(rows
            .into_iter()
            .map(|(id, similarity, keyword)| Scored {
                id: MemoryId(id),
                similarity,
                keyword,
            })
            .collect())
    }
}

/// Recall's candidates from its two sides: each nearest memory with its
/// BM25 (`keyword_of`; 0 when it holds no query term), then each keyword
/// hit not among them with its cosine (`similarity_of`). A hit without a
/// cosine (closed or forgotten between two reads) is left out.
fn both_sides(
    nearest: &[Hit],
    keyword_of: impl Fn(&Uuid) -> Option<f32>,
    keyword_hits: &[Hit],
    similarity_of: &HashMap<Uuid, f32>,
) -> Vec<Scored> {
    let mut out = Vec::with_capacity(nearest.len() + keyword_hits.len());
    let mut seen: HashSet<Uuid> = HashSet::new();
    for hit in nearest {
        seen.insert(hit.id.0);
        out.push(Scored {
            id: hit.id,
            similarity: hit.score,
            keyword: keyword_of(&hit.id.0).unwrap_or(0.0),
        });
    }
    for hit in keyword_hits {
        if let Some(&similarity) = similarity_of.get(&hit.id.0)
            && seen.insert(hit.id.0)
        {
            out.push(Scored {
                id: hit.id,
                similarity,
                keyword: hit.score,
            });
        }
    }
    out
}

/// [`both_sides`] with the keyword side from a user's copy: its hits, and
/// the BM25 of any memory.
fn with_copy_keywords(
    nearest: &[Hit],
    keyword_hits: Vec<(Uuid, f32)>,
    keyword_of: &QueryScores<'_>,
    similarity_of: &HashMap<Uuid, f32>,
) -> Vec<Scored> {
    both_sides(
        nearest,
        |id| keyword_of.of(MemoryId(*id)),
        &hits(keyword_hits),
        similarity_of,
    )
}

/// Search rows (id, score) as hits, in the order given.
/// A search asked for no hits: none, and (with `load_from`) no memories.
fn nothing_found(load_from: Option<f32>) -> Nearest {
    Nearest {
        memories: load_from.map(|_| Vec::new()),
        ..Nearest::default()
    }
}

pub(super) fn hits(rows: Vec<(Uuid, f32)>) -> Vec<Hit> {
    rows.into_iter()
        .map(|(id, score)| Hit {
            id: MemoryId(id),
            score,
        })
        .collect()
}
