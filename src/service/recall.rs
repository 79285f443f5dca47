//! The read side of the flows: recall's search (both signals, fusion, the
//! rows) and the context built from recent and relevant memories.

use std::collections::HashMap;

use super::MemoryService;
use super::ahead::ReadAhead;
use super::types::{RecallResult, ScoredMemory};
use crate::context::UserContext;
use crate::embed::calibration;
use crate::error::Error;
use crate::model::{Degraded, Memory, MemoryId, MetadataFilter, Scope};
use crate::rank;
use crate::store::{Scored, SearchScope};

/// Each signal contributes this many candidates per requested result to
/// fusion (the development set's R@10 was the same at 20, 40 and 100 for 10
/// results once every candidate carries both relevances).
const CANDIDATES_PER_RESULT: usize = 4;
const MIN_CANDIDATES: usize = 40;

/// One result's place and scores, before its row is read.
struct Ranked {
    id: MemoryId,
    score: f32,
    /// Absent when the embedder did not answer.
    vector_score: Option<f32>,
    keyword_score: f32,
}

impl MemoryService {
    /// Recall without the cache: both searches, fusion, and the rows. When
    /// the embedder fails, the keyword search alone answers, flagged
    /// [`Degraded::Embedder`] (recall stays up while a remote embedding
    /// server is down; remember has its own fallback).
    pub(super) async fn search(
        &self,
        scope: &Scope,
        query: String,
        limit: usize,
        filter: &MetadataFilter,
    ) -> Result<RecallResult, Error> {
        let at = SearchScope { scope, filter };
        let depth = (limit * CANDIDATES_PER_RESULT).max(MIN_CANDIDATES);
        // The user's version, read while the query is embedded (`ahead`).
        let mut ahead = ReadAhead::new(self.store.version_now(at));
        let semantic = ahead.beside(self.semantic_side(&query)).await;
        let seen = ahead.seen();
        let semantic = match semantic {
            Ok(semantic) => semantic,
            Err(Error::Embed(e)) => {
                tracing::warn!(
                    user_id = %scope.user_id(),
                    error = %e,
                    "the embedder failed; recall ranks by keywords alone"
                );
                let hits = self.store.keyword_search(at, &query, limit).await?;
                let ranked = hits.into_iter().map(|h| Ranked {
                    id: h.id,
                    score: (1.0 - rank::SEMANTIC_WEIGHT) * h.score,
                    vector_score: None,
                    keyword_score: h.score,
                });
                let results = self.rows(scope, ranked.collect(), None).await?;
                return Ok(RecallResult {
                    user_id: scope.user_id().to_string(),
                    query,
                    results,
                    degraded: Some(Degraded::Embedder),
                });
            }
            Err(e) => return Err(e),
        };
        let (embedding, semantic) = semantic;
        // The store may read the winners' rows with the candidates.
        let winners = |scored: &[Scored]| {
            let mut fused = rank::fuse(scored, semantic);
            fused.truncate(limit);
            fused.into_iter().map(|f| f.id).collect()
        };
        let candidates = self
            .store
            .candidates(at, &embedding, &query, depth, &winners, seen)
            .await?;
        let mut fused = rank::fuse(&candidates.scored, semantic);
        fused.truncate(limit);
        let ranked = fused.into_iter().map(|f| Ranked {
            id: f.id,
            score: f.score,
            vector_score: Some(f.vector_score),
            keyword_score: f.keyword_score,
        });
        let results = self
            .rows(scope, ranked.collect(), candidates.memories)
            .await?;
        Ok(RecallResult {
            user_id: scope.user_id().to_string(),
            query,
            results,
            degraded: None,
        })
    }

    /// The query's vector and how to read its similarities: what needs the
    /// embedder (whose failure is an [`Error::Embed`]).
    async fn semantic_side(&self, query: &str) -> Result<(Vec<f32>, rank::Semantic), Error> {
        let embedding = self.embed_query(query).await?;
        Ok((embedding, rank::Semantic::new(self.floor().await?)))
    }

    /// The memories of `ranked`, in its order, with their scores: from
    /// `loaded` when the search read them, else read now. A memory
    /// forgotten since the search is simply left out.
    async fn rows(
        &self,
        scope: &Scope,
        ranked: Vec<Ranked>,
        loaded: Option<Vec<Memory>>,
    ) -> Result<Vec<ScoredMemory>, Error> {
        let loaded = match loaded {
            Some(memories) => memories,
            None => {
                let ids: Vec<MemoryId> = ranked.iter().map(|r| r.id).collect();
                self.store.get_many(scope.user_id(), &ids).await?
            }
        };
        let mut memories: HashMap<MemoryId, Memory> =
            loaded.into_iter().map(|m| (m.id, m)).collect();
        Ok(ranked
            .into_iter()
            .filter_map(|r| {
                memories.remove(&r.id).map(|memory| ScoredMemory {
                    memory,
                    score: r.score,
                    vector_score: r.vector_score,
                    keyword_score: Some(r.keyword_score),
                })
            })
            .collect())
    }

    /// The embedder's similarity between unrelated texts, measured once per
    /// process ([`calibration`]). Its queries go through the query cache, so
    /// further processes sharing a cache ask a remote embedder for none of them.
    async fn floor(&self) -> Result<f32, Error> {
        let floor = self
            .floor
            .get_or_try_init(|| async {
                let documents = self
                    .embedder
                    .embed_documents(&calibration::statements())
                    .await?;
                let mut queries = Vec::with_capacity(calibration::QUESTIONS.len());
                for question in calibration::QUESTIONS {
                    queries.push(self.embed_query(question).await?);
                }
                let floor = calibration::mean_similarity(&queries, &documents);
                tracing::info!(
                    embedder = %self.embedder.identity(),
                    floor,
                    "measured the embedder's similarity between unrelated texts"
                );
                Ok::<f32, Error>(floor)
            })
            .await?;
        Ok(*floor)
    }

    pub(super) async fn build_context(
        &self,
        scope: &Scope,
        limit: usize,
        focus: Option<String>,
    ) -> Result<UserContext, Error> {
        let (recent, total) = self.store.recent(scope, limit).await?;
        let Some(query) = focus else {
            return Ok(UserContext::new(
                scope.user_id().to_string(),
                recent,
                total,
                None,
            ));
        };
        let relevant = self
            .search(scope, query, limit, &MetadataFilter::none())
            .await?;
        let mut memories: Vec<Memory> = relevant.results.into_iter().map(|r| r.memory).collect();
        for m in recent {
            if memories.len() >= limit {
                break;
            }
            if !memories.iter().any(|seen| seen.id == m.id) {
                memories.push(m);
            }
        }
        Ok(UserContext {
            degraded: relevant.degraded,
            ..UserContext::new(
                scope.user_id().to_string(),
                memories,
                total,
                Some(&relevant.query),
            )
        })
    }
}
