//! Fusing semantic and keyword relevance into one absolute score.
//!
//! A memory's score is the mean of two relevances, each on 0..=1:
//! * **keyword**: BM25 over the user's memories, divided by what a memory
//!   holding every query term would score ([`crate::keywords`]);
//! * **semantic**: the cosine similarity of the memory and the query,
//!   rescaled so that the embedder's similarity between unrelated texts (its
//!   floor, measured by [`crate::embed::unrelated_similarity`]) is 0 and
//!   identical vectors are 1.
//!
//! So the score means the same for every query, user, store and embedder:
//! a memory unrelated to the query scores near 0 whatever else is stored,
//! and one that shares the query's rare words and meaning scores high.
//!
//! Why scores and not ranks: reciprocal rank fusion (what engram did first)
//! gives every candidate of each list a share by position, however weak the
//! list. With an uninformative signal (the hash embedder on a paraphrase,
//! a keyword search whose only match is a common word) its noise took places
//! from the other signal's real hits: on the development set equal-weight RRF
//! scored 11 points of MRR@10 below BM25 alone, and this fusion scores above
//! both (docs/benchmarks.md, "Retrieval quality"). A signal that has nothing
//! to say here adds about nothing to anyone.
//!
//! Invariant: the ranking depends only on the scores, never on the order in
//! which a store returned candidates; equal scores are ordered by id, so two
//! processes give the same answer.

use crate::model::MemoryId;
use crate::store::Scored;

/// The semantic relevance's share of the score (the keyword's is the rest).
/// Equal shares: on the development set anything from 0.3 to 0.5 was within
/// a point of R@10 for both the hash embedder and e5-small, and an equal
/// split is the choice least fitted to that set.
pub const SEMANTIC_WEIGHT: f32 = 0.5;

/// The score below which a result shares little with the query: a query
/// unrelated to every memory stays under it (tested with the hash embedder
/// and e5-small), and it is the `min_score` to ask for "only what is
/// relevant" (the `min_score` parameter's description says 0.2). The tests
/// hold the ranking to it.
#[cfg(test)]
pub const RELEVANT: f32 = 0.2;

/// Turns an embedder's cosine similarities into relevance.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Semantic {
    floor: f32,
}

impl Semantic {
    /// `floor`: the embedder's mean similarity between unrelated texts.
    pub fn new(floor: f32) -> Self {
        Self {
            floor: floor.clamp(-1.0, 0.99),
        }
    }

    /// 0 at or below the floor, 1 for identical vectors, linear between.
    pub fn relevance(&self, similarity: f32) -> f32 {
        ((similarity - self.floor) / (1.0 - self.floor)).clamp(0.0, 1.0)
    }
}

/// One fused result.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Fused {
    pub id: MemoryId,
    /// In 0..=1 (see the module docs).
    pub score: f32,
    /// Cosine similarity with the query.
    pub vector_score: f32,
    /// Keyword relevance in 0..=1.
    pub keyword_score: f32,
}

/// Scores every candidate, best first.
pub fn fuse(candidates: &[Scored], semantic: Semantic) -> Vec<Fused> {
    let mut out: Vec<Fused> = candidates
        .iter()
        .map(|c| Fused {
            id: c.id,
            score: SEMANTIC_WEIGHT * semantic.relevance(c.similarity)
                + (1.0 - SEMANTIC_WEIGHT) * c.keyword.clamp(0.0, 1.0),
            vector_score: c.similarity,
            keyword_score: c.keyword,
        })
        .collect();
    out.sort_by(|a, b| b.score.total_cmp(&a.score).then(a.id.cmp(&b.id)));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scored(id: MemoryId, similarity: f32, keyword: f32) -> Scored {
        Scored {
            id,
            similarity,
            keyword,
        }
    }

    /// The regression the fusion exists to prevent: a keyword hit (the only
    /// memory naming the query's rare word) must not be buried by memories an
    /// uninformative embedder scores a little above its floor, however many.
    #[test]
    fn an_uninformative_signal_does_not_bury_the_keyword_hit() {
        let semantic = Semantic::new(0.75); // an E5-like floor
        let hit = MemoryId::new();
        let mut candidates = vec![scored(hit, 0.77, 0.8)];
        for i in 0..40 {
            // Vector noise: all near the floor, some a little above the hit.
            candidates.push(scored(MemoryId::new(), 0.78 + i as f32 * 0.001, 0.0));
        }
        let fused = fuse(&candidates, semantic);
        assert_eq!(fused[0].id, hit, "{:?}", &fused[..3]);
        // And the reverse: a strong semantic match the keywords miss entirely
        // still beats weak keyword matches on a common word.
        let paraphrase = MemoryId::new();
        let mut candidates = vec![scored(paraphrase, 0.93, 0.0)];
        for _ in 0..40 {
            candidates.push(scored(MemoryId::new(), 0.76, 0.15));
        }
        assert_eq!(fuse(&candidates, semantic)[0].id, paraphrase);
    }

    #[test]
    fn agreement_wins_over_either_signal_alone() {
        let semantic = Semantic::new(0.05);
        let [both, words, meaning] = [(); 3].map(|_| MemoryId::new());
        let fused = fuse(
            &[
                scored(words, 0.1, 0.9),
                scored(meaning, 0.8, 0.0),
                scored(both, 0.7, 0.7),
            ],
            semantic,
        );
        let order: Vec<MemoryId> = fused.iter().map(|f| f.id).collect();
        assert_eq!(order[0], both);
        assert_eq!(fused[0].vector_score, 0.7);
        assert_eq!(fused[0].keyword_score, 0.7);
    }

    #[test]
    fn scores_are_absolute() {
        let semantic = Semantic::new(0.25);
        let a = MemoryId::new();
        // Identical text with every query term: 1.
        assert!((fuse(&[scored(a, 1.0, 1.0)], semantic)[0].score - 1.0).abs() < 1e-6);
        // Unrelated (at or below the floor, no shared word): 0, even when
        // it is the only candidate, i.e. ranked first.
        assert_eq!(fuse(&[scored(a, 0.2, 0.0)], semantic)[0].score, 0.0);
        assert_eq!(semantic.relevance(0.625), 0.5);
        assert!(fuse(&[], semantic).is_empty());
    }

    #[test]
    fn the_order_of_candidates_does_not_matter() {
        let semantic = Semantic::new(0.0);
        let [a, b, c] = [(); 3].map(|_| MemoryId::new());
        let one = fuse(
            &[
                scored(a, 0.5, 0.5),
                scored(b, 0.5, 0.5),
                scored(c, 0.5, 0.5),
            ],
            semantic,
        );
        let other = fuse(
            &[
                scored(c, 0.5, 0.5),
                scored(a, 0.5, 0.5),
                scored(b, 0.5, 0.5),
            ],
            semantic,
        );
        assert_eq!(one, other);
        let mut sorted = vec![a, b, c];
        sorted.sort();
        assert_eq!(one.iter().map(|f| f.id).collect::<Vec<_>>(), sorted);
    }
}
