//! Fusing the vector and keyword candidate lists into one ranking.
//!
//! Reciprocal rank fusion: each list contributes `1 / (K + rank)` for every
//! memory it holds. It needs no calibration between cosine similarities and
//! BM25 scores (which live on unrelated scales), rewards memories that both
//! signals find, and lets either signal alone surface a memory the other
//! misses (an exact name the vectors blur, a paraphrase the keywords miss).
//! Fused scores are divided by the best possible score, so 1.0 means "first
//! in both lists".
//!
//! Invariant: the ranking depends only on the scores, never on the order in
//! which a store returned equal ones. Equal scores share a rank, and equal
//! fused scores are ordered by id, so two processes (whose indexes break
//! ties differently) give the same answer.

use std::collections::HashMap;

use crate::model::MemoryId;
use crate::store::Hit;

/// The usual RRF constant: damps the gap between the first few ranks.
pub const RRF_K: f32 = 60.0;

/// One fused result, best first.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Fused {
    pub id: MemoryId,
    /// In (0, 1]; 1.0 = ranked first by both signals.
    pub score: f32,
    /// Cosine similarity, when the vector list held this memory.
    pub vector_score: Option<f32>,
    /// BM25 relevance, when the keyword list held this memory.
    pub keyword_score: Option<f32>,
}

/// Fuses two best-first lists.
pub fn fuse(vector: &[Hit], keyword: &[Hit]) -> Vec<Fused> {
    let best = 2.0 / (RRF_K + 1.0);
    let mut by_id: HashMap<MemoryId, usize> = HashMap::new();
    let mut out: Vec<Fused> = Vec::with_capacity(vector.len() + keyword.len());
    for (list, is_vector) in [(vector, true), (keyword, false)] {
        let mut rank = 0;
        for (position, hit) in list.iter().enumerate() {
            if position > 0 && hit.score != list[position - 1].score {
                rank = position;
            }
            let contribution = 1.0 / (RRF_K + rank as f32 + 1.0) / best;
            let i = *by_id.entry(hit.id).or_insert_with(|| {
                out.push(Fused {
                    id: hit.id,
                    score: 0.0,
                    vector_score: None,
                    keyword_score: None,
                });
                out.len() - 1
            });
            out[i].score += contribution;
            if is_vector {
                out[i].vector_score = Some(hit.score);
            } else {
                out[i].keyword_score = Some(hit.score);
            }
        }
    }
    out.sort_by(|a, b| b.score.total_cmp(&a.score).then(a.id.cmp(&b.id)));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hits(ids: &[MemoryId]) -> Vec<Hit> {
        ids.iter()
            .enumerate()
            .map(|(i, id)| Hit {
                id: *id,
                score: 1.0 - i as f32 * 0.1,
            })
            .collect()
    }

    #[test]
    fn agreement_wins_and_either_signal_alone_surfaces() {
        let [a, b, c, d] = [(); 4].map(|_| MemoryId::new());
        let fused = fuse(&hits(&[a, b, c]), &hits(&[b, d]));
        let order: Vec<_> = fused.iter().map(|f| f.id).collect();
        assert_eq!(order[0], b, "found by both lists");
        assert!(order.contains(&d), "keyword-only hit kept");
        assert!(order.contains(&c), "vector-only hit kept");
        assert_eq!(fused.len(), 4);
        let top = fused[0];
        assert!(top.vector_score.is_some() && top.keyword_score.is_some());
    }

    #[test]
    fn the_order_of_equal_scores_does_not_matter() {
        let [a, b, c] = [(); 3].map(|_| MemoryId::new());
        let tie = |ids: [MemoryId; 3]| -> Vec<Hit> {
            ids.iter().map(|&id| Hit { id, score: 0.5 }).collect()
        };
        let one = fuse(&tie([a, b, c]), &tie([c, a, b]));
        let other = fuse(&tie([b, c, a]), &tie([a, b, c]));
        assert_eq!(one, other);
        assert!(one.iter().all(|f| f.score == one[0].score));
        let mut sorted = vec![a, b, c];
        sorted.sort();
        assert_eq!(one.iter().map(|f| f.id).collect::<Vec<_>>(), sorted);
    }

    #[test]
    fn first_in_both_scores_one() {
        let a = MemoryId::new();
        let fused = fuse(&hits(&[a]), &hits(&[a]));
        assert!((fused[0].score - 1.0).abs() < 1e-6);
        assert!(fuse(&[], &[]).is_empty());
    }
}
