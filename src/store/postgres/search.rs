//! Search ([`Search`]): `engram_nearest` for vectors, `engram_keyword_search`
//! for BM25, and recall's candidates in one statement a side. Each call reads in
//! a transaction scoped to its user (`scope`).

use std::collections::{HashMap, HashSet};

use async_trait::async_trait;
use pgvector::Vector;
use sqlx::postgres::PgRow;
use sqlx::{PgConnection, Row};
use uuid::Uuid;

use super::keyword_copy::UserCopy;
use super::{PgStore, db};
use crate::keywords;
use crate::model::{Memory, MemoryId};
use crate::store::shared::{MEMORY_COLUMNS, memory_from_row};
use crate::store::{Candidates, Hit, Nearest, Scored, Search, SearchScope, StoreError};

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
/// to the user of `at`).
async fn keyword_hits(
    conn: &mut PgConnection,
    at: SearchScope<'_>,
    terms: &[String],
    limit: usize,
) -> Result<Vec<Hit>, StoreError> {
    if terms.is_empty() || limit == 0 {
        return Ok(Vec::new());
    }
    let rows: Vec<(Uuid, f32)> =
        sqlx::query_as(concat!(keyword_hits_cte!(), "SELECT id, score FROM k"))
            .bind(at.scope.user_id().as_str())
            .bind(at.scope.agent_id())
            .bind(at.scope.run_id())
            .bind(at.filter_object())
            .bind(terms)
            .bind(i32::try_from(limit).unwrap_or(i32::MAX))
            .fetch_all(&mut *conn)
            .await
            .map_err(db("searching keywords"))?;
    let mut hits = hits(rows);
    hits.sort_by(|a, b| b.score.total_cmp(&a.score).then(a.id.0.cmp(&b.id.0)));
    hits.truncate(limit);
    Ok(hits)
}

/// Recall's keyword side: [`keyword_hits`], each with its memory's cosine
/// similarity to `vector` and the memory itself, in one statement. The
/// hits' rows are read by key (`= ANY`): joined to the function's result
/// (whose row count the planner does not know), they were a hash of every
/// row of the user, vectors included (10.8 ms for 1,000 rows of 1536
/// dimensions; 0.4 ms by key).
async fn keyword_candidates(
    conn: &mut PgConnection,
    at: SearchScope<'_>,
    terms: &[String],
    vector: &[f32],
    limit: usize,
) -> Result<Vec<(Hit, f32, Memory)>, StoreError> {
    if terms.is_empty() || limit == 0 {
        return Ok(Vec::new());
    }
    let sql = format!(
        concat!(
            keyword_hits_cte!(),
            ", s AS ( \
                 SELECT (1 - (m.embedding <=> $7))::real AS similarity, {columns} \
                 FROM memories m \
                 WHERE m.id = ANY (ARRAY(SELECT id FROM k)) \
                   AND m.user_id = $1 AND m.valid_to IS NULL) \
             SELECT k.score, s.* FROM k JOIN s ON s.id = k.id"
        ),
        columns = MEMORY_COLUMNS
    );
    let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(at.scope.user_id().as_str())
        .bind(at.scope.agent_id())
        .bind(at.scope.run_id())
        .bind(at.filter_object())
        .bind(terms)
        .bind(i32::try_from(limit).unwrap_or(i32::MAX))
        .bind(Vector::from(vector.to_vec()))
        .fetch_all(&mut *conn)
        .await
        .map_err(db("searching keywords"))?;
    let column = db("reading a keyword search");
    let mut found = Vec::with_capacity(rows.len());
    for row in &rows {
        let memory = memory_from_row(row)?;
        let hit = Hit {
            id: memory.id,
            score: row.try_get("score").map_err(&column)?,
        };
        found.push((hit, row.try_get("similarity").map_err(&column)?, memory));
    }
    found.sort_by(|(a, ..), (b, ..)| b.score.total_cmp(&a.score).then(a.id.0.cmp(&b.id.0)));
    found.truncate(limit);
    Ok(found)
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
            return Ok(Nearest {
                memories: load_from.map(|_| Vec::new()),
                ..Nearest::default()
            });
        }
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
        tx.commit().await.map_err(db("searching vectors"))?;
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
    /// reads the nearest memories, the cosines of the copy's keyword hits,
    /// every candidate's memory and the user's version; `None` when that
    /// version is not the copy's (the copy is stale: the caller takes the
    /// SQL path).
    async fn candidates_with_copy(
        &self,
        copy: &UserCopy,
        at: SearchScope<'_>,
        vector: &[f32],
        terms: &[String],
        depth: usize,
    ) -> Result<Option<Candidates>, StoreError> {
        let user_id = at.scope.user_id().as_str();
        let (keyword_hits, keyword_of) = copy.search(terms, depth);
        let keyword_ids: Vec<Uuid> = keyword_hits.iter().map(|(id, _)| *id).collect();
        let mut tx = self.user_transaction(user_id).await?;
        // A row per candidate of either side (`side` 0: nearest, with its
        // similarity; 1: a keyword hit, with its cosine), with its memory
        // (null when expired) and the version, read once (an InitPlan) in
        // the statement's snapshot. The memories are read by key, as in
        // `search_at_version`.
        let sql = format!(
            "WITH v AS MATERIALIZED (SELECT version FROM memory_users WHERE user_id = $1), \
                  n AS MATERIALIZED ( \
                      SELECT id, similarity FROM engram_nearest($1, NULL, NULL, NULL, $2, $3, \
                          engram_expired_ids($1))), \
                  c AS MATERIALIZED ( \
                      SELECT 0::int2 AS side, id, similarity FROM n \
                      UNION ALL \
                      SELECT 1::int2, m.id, (1 - (m.embedding <=> $2))::real FROM memories m \
                      WHERE m.id = ANY ($4) AND m.user_id = $1 AND m.valid_to IS NULL), \
                  loaded AS MATERIALIZED ( \
                      SELECT {MEMORY_COLUMNS} FROM memories m \
                      WHERE m.id = ANY (ARRAY(SELECT id FROM c)) AND m.user_id = $1 \
                        AND (m.expires_at IS NULL OR m.expires_at > now())) \
             SELECT c.side, c.id AS hit, c.similarity, (SELECT version FROM v) AS version, m.* \
             FROM c LEFT JOIN loaded m ON m.id = c.id"
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(user_id)
            .bind(Vector::from(vector.to_vec()))
            .bind(i32::try_from(depth).unwrap_or(i32::MAX))
            .bind(&keyword_ids)
            .fetch_all(&mut *tx)
            .await
            .map_err(db("searching vectors"))?;
        tx.commit().await.map_err(db("searching vectors"))?;
        let column = db("reading recall's candidates");
        // No row says no version: the user has none of either kind, and the
        // SQL path answers that as cheaply.
        let version: Option<i64> = match rows.first() {
            Some(row) => row.try_get("version").map_err(&column)?,
            None => None,
        };
        if version != Some(copy.version) {
            return Ok(None);
        }
        let mut nearest = Vec::new();
        let mut cosine = HashMap::new();
        let mut memories = Loaded::default();
        for row in &rows {
            let side: i16 = row.try_get("side").map_err(&column)?;
            let id: Uuid = row.try_get("hit").map_err(&column)?;
            let similarity: f32 = row.try_get("similarity").map_err(&column)?;
            if side == 0 {
                nearest.push((id, similarity));
            } else {
                cosine.insert(id, similarity);
            }
            memories.read(row)?;
        }
        let mut nearest = hits(nearest);
        nearest.sort_by(|a, b| b.score.total_cmp(&a.score));
        nearest.truncate(depth);
        let scored = both_sides(
            &nearest,
            |id| keyword_of.get(id).copied(),
            &hits(keyword_hits),
            &cosine,
        );
        self.keyword_copies.answered();
        Ok(Some(memories.of(scored)))
    }
}

/// The memories read with recall's candidates, once each.
#[derive(Default)]
struct Loaded(HashMap<MemoryId, Memory>);

impl Loaded {
    /// The memory of `row`, when it carries one (its `id` column is null
    /// when the candidate's memory was not read: expired, or gone).
    fn read(&mut self, row: &PgRow) -> Result<(), StoreError> {
        let id: Option<Uuid> = row.try_get("id").map_err(db("reading a memory"))?;
        if let Some(id) = id
            && !self.0.contains_key(&MemoryId(id))
        {
            self.0.insert(MemoryId(id), memory_from_row(row)?);
        }
        Ok(())
    }

    /// `scored` with their memories among these.
    fn of(mut self, scored: Vec<Scored>) -> Candidates {
        let memories = scored.iter().filter_map(|c| self.0.remove(&c.id)).collect();
        Candidates {
            scored,
            memories: Some(memories),
        }
    }
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
        let mut tx = self.user_transaction(at.scope.user_id().as_str()).await?;
        let hits = keyword_hits(&mut tx, at, &terms, limit).await?;
        tx.commit().await.map_err(db("searching keywords"))?;
        Ok(hits)
    }

    /// Each search on its own connection, each in one statement that also
    /// gives its candidates the relevance they lack: BM25 for the vector's,
    /// cosine for the keywords'. One statement deep on each side (plus the
    /// transaction's begin and commit).
    async fn candidates(
        &self,
        at: SearchScope<'_>,
        vector: &[f32],
        query: &str,
        depth: usize,
    ) -> Result<Candidates, StoreError> {
        let user_id = at.scope.user_id().as_str();
        let terms = keywords::query_terms(query);
        // The whole user, unfiltered: the keyword side may come from the
        // user's copy, when the copy is of the version the vectors are read at.
        if at.scope.is_whole_user() && at.filter.is_empty() && depth > 0 {
            if let Some(copy) = self.keyword_copies.get(user_id)
                && let Some(found) = self
                    .candidates_with_copy(&copy, at, vector, &terms, depth)
                    .await?
            {
                return Ok(found);
            }
            self.refresh_keyword_copy(user_id);
        }
        let by_vector = async {
            let mut tx = self.user_transaction(user_id).await?;
            // The nearest memories, their BM25 and their rows in one
            // statement (the rows read by key, as in `search_at_version`).
            let sql = format!(
                "WITH n AS MATERIALIZED ( \
                     SELECT id, similarity FROM engram_nearest($1, $2, $3, $4, $5, $6, \
                         engram_expired_ids($1))), \
                 loaded AS MATERIALIZED ( \
                     SELECT {MEMORY_COLUMNS} FROM memories m \
                     WHERE m.id = ANY (ARRAY(SELECT id FROM n)) AND m.user_id = $1 \
                       AND (m.expires_at IS NULL OR m.expires_at > now())) \
                 SELECT n.id AS hit, n.similarity, k.score AS keyword, m.* \
                 FROM n LEFT JOIN engram_keyword_scores($1, $7, ARRAY(SELECT id FROM n)) k \
                     ON k.id = n.id \
                 LEFT JOIN loaded m ON m.id = n.id"
            );
            let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
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
            tx.commit().await.map_err(db("searching vectors"))?;
            let column = db("reading recall's candidates");
            let mut found = Vec::with_capacity(rows.len());
            let mut keyword = HashMap::new();
            let mut memories = Loaded::default();
            for row in &rows {
                let id: Uuid = row.try_get("hit").map_err(&column)?;
                found.push((id, row.try_get("similarity").map_err(&column)?));
                if let Some(score) = row.try_get::<Option<f32>, _>("keyword").map_err(&column)? {
                    keyword.insert(id, score);
                }
                memories.read(row)?;
            }
            let mut hits = hits(found);
            hits.sort_by(|a, b| b.score.total_cmp(&a.score));
            hits.truncate(depth);
            Ok::<_, StoreError>((hits, keyword, memories))
        };
        let by_keyword = async {
            if terms.is_empty() || depth == 0 {
                return Ok(Vec::new());
            }
            let mut tx = self.user_transaction(user_id).await?;
            let found = keyword_candidates(&mut tx, at, &terms, vector, depth).await?;
            tx.commit().await.map_err(db("searching keywords"))?;
            Ok::<_, StoreError>(found)
        };
        let ((vector_hits, their_keyword, mut memories), keyword_side) =
            tokio::try_join!(by_vector, by_keyword)?;
        let mut keyword_hits = Vec::with_capacity(keyword_side.len());
        let mut their_similarity = HashMap::with_capacity(keyword_side.len());
        for (hit, similarity, memory) in keyword_side {
            their_similarity.insert(hit.id.0, similarity);
            memories.0.entry(memory.id).or_insert(memory);
            keyword_hits.push(hit);
        }
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
        Ok(memories.of(scored))
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

/// Search rows (id, score) as hits, in the order given.
pub(super) fn hits(rows: Vec<(Uuid, f32)>) -> Vec<Hit> {
    rows.into_iter()
        .map(|(id, score)| Hit {
            id: MemoryId(id),
            score,
        })
        .collect()
}
