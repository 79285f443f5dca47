//! Retrieval metrics as pure functions: recall@k, hit@k, the rank of the
//! first relevant result and MRR@k for one query, their means over many
//! queries, and latency percentiles.
//!
//! A ranked list is, best first, the dia_ids each result holds: one result
//! is one memory, and a memory may hold several turns (an exact repeat
//! stored once). Ranks are positions in the list as the system returned it;
//! scores play no part, so results with equal scores keep the system's order.
//! Evidence is a set: an id listed twice counts once, and a turn reached by
//! two results is found once.

use std::collections::HashSet;

use serde::Serialize;

/// The distinct evidence ids.
fn evidence_set(evidence: &[String]) -> HashSet<&str> {
    evidence.iter().map(String::as_str).collect()
}

/// |evidence ∩ dia_ids of the top `k`| / |evidence|; 0 without evidence.
pub fn recall_at(ranked: &[Vec<String>], evidence: &[String], k: usize) -> f64 {
    let wanted = evidence_set(evidence);
    if wanted.is_empty() {
        return 0.0;
    }
    let found: HashSet<&str> = ranked
        .iter()
        .take(k)
        .flatten()
        .map(String::as_str)
        .filter(|id| wanted.contains(id))
        .collect();
    found.len() as f64 / wanted.len() as f64
}

/// The 1-based rank of the first of the top `k` results holding any
/// evidence id, if one does.
pub fn first_rank(ranked: &[Vec<String>], evidence: &[String], k: usize) -> Option<usize> {
    let wanted = evidence_set(evidence);
    ranked
        .iter()
        .take(k)
        .position(|ids| ids.iter().any(|id| wanted.contains(id.as_str())))
        .map(|at| at + 1)
}

/// Whether any of the top `k` results holds an evidence id.
pub fn hit_at(ranked: &[Vec<String>], evidence: &[String], k: usize) -> bool {
    first_rank(ranked, evidence, k).is_some()
}

/// 1 / the rank of the first result holding evidence in the top `k`; 0 if none.
pub fn reciprocal_rank(ranked: &[Vec<String>], evidence: &[String], k: usize) -> f64 {
    first_rank(ranked, evidence, k).map_or(0.0, |rank| 1.0 / rank as f64)
}

/// One query's scores (or, from [`Mean`], their means over queries).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Scores {
    pub recall_at_1: f64,
    pub recall_at_5: f64,
    pub recall_at_10: f64,
    /// 1 when any evidence is in the top 10, else 0.
    pub hit_at_10: f64,
    pub mrr_at_10: f64,
}

impl Scores {
    /// The scores of one ranked list against one query's evidence.
    pub fn of(ranked: &[Vec<String>], evidence: &[String]) -> Self {
        Self {
            recall_at_1: recall_at(ranked, evidence, 1),
            recall_at_5: recall_at(ranked, evidence, 5),
            recall_at_10: recall_at(ranked, evidence, 10),
            hit_at_10: if hit_at(ranked, evidence, 10) {
                1.0
            } else {
                0.0
            },
            mrr_at_10: reciprocal_rank(ranked, evidence, 10),
        }
    }
}

/// The running mean of [`Scores`] over queries.
#[derive(Debug, Clone, Copy, Default)]
pub struct Mean {
    count: usize,
    sum: Scores,
}

impl Mean {
    pub fn add(&mut self, s: &Scores) {
        self.count += 1;
        self.sum.recall_at_1 += s.recall_at_1;
        self.sum.recall_at_5 += s.recall_at_5;
        self.sum.recall_at_10 += s.recall_at_10;
        self.sum.hit_at_10 += s.hit_at_10;
        self.sum.mrr_at_10 += s.mrr_at_10;
    }

    /// How many queries were added.
    pub fn count(&self) -> usize {
        self.count
    }

    /// The mean of each score (all zero before any query).
    pub fn mean(&self) -> Scores {
        if self.count == 0 {
            return Scores::default();
        }
        let n = self.count as f64;
        Scores {
            recall_at_1: self.sum.recall_at_1 / n,
            recall_at_5: self.sum.recall_at_5 / n,
            recall_at_10: self.sum.recall_at_10 / n,
            hit_at_10: self.sum.hit_at_10 / n,
            mrr_at_10: self.sum.mrr_at_10 / n,
        }
    }
}

/// The `p` quantile (0..=1) of ascending `sorted` values by nearest rank
/// (the value at position round((n - 1) * p)); 0 for no values.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let at = ((sorted.len() - 1) as f64 * p.clamp(0.0, 1.0)).round() as usize;
    sorted[at]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A ranked list from each result's dia_ids.
    fn ranked(results: &[&[&str]]) -> Vec<Vec<String>> {
        results
            .iter()
            .map(|ids| ids.iter().map(|id| id.to_string()).collect())
            .collect()
    }

    fn ids(list: &[&str]) -> Vec<String> {
        list.iter().map(|id| id.to_string()).collect()
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9
    }

    #[test]
    fn recall_counts_the_evidence_found_within_k() {
        let list = ranked(&[&["D1:1"], &["D1:2"], &["D1:3"], &["D2:1"]]);
        let evidence = ids(&["D1:3", "D2:1", "D9:9"]);
        assert_eq!(recall_at(&list, &evidence, 1), 0.0);
        assert!(close(recall_at(&list, &evidence, 3), 1.0 / 3.0));
        assert!(close(recall_at(&list, &evidence, 10), 2.0 / 3.0));
        // No evidence: nothing to find, and no division by zero.
        assert_eq!(recall_at(&list, &[], 10), 0.0);
        assert_eq!(recall_at(&[], &evidence, 10), 0.0);
    }

    #[test]
    fn a_memory_holding_two_turns_counts_for_both() {
        // Rank 2 holds D1:4 and D1:7 (one memory, an exact repeat stored once).
        let list = ranked(&[&["D1:1"], &["D1:4", "D1:7"], &["D1:2"]]);
        let evidence = ids(&["D1:7", "D1:4"]);
        assert_eq!(recall_at(&list, &evidence, 1), 0.0);
        assert_eq!(recall_at(&list, &evidence, 2), 1.0);
        assert_eq!(first_rank(&list, &evidence, 10), Some(2));
        assert_eq!(reciprocal_rank(&list, &evidence, 10), 0.5);
        assert!(hit_at(&list, &evidence, 2));
        assert!(!hit_at(&list, &evidence, 1));
    }

    #[test]
    fn ties_and_repeats_count_each_evidence_turn_once() {
        // The same turn reached by two results, and an evidence id listed
        // twice: recall never passes 1, and the first of the two sets the rank.
        let list = ranked(&[&["D3:1"], &["D2:5"], &["D2:5", "D2:6"]]);
        let evidence = ids(&["D2:5", "D2:5", "D4:4"]);
        assert_eq!(recall_at(&list, &evidence, 10), 0.5);
        assert_eq!(first_rank(&list, &evidence, 10), Some(2));
        // Results the system scored equal keep its order: rank is position.
        let tied = ranked(&[&["D1:1"], &["D1:2"]]);
        assert_eq!(first_rank(&tied, &ids(&["D1:2"]), 10), Some(2));
    }

    #[test]
    fn hit_and_mrr_look_only_at_the_top_k() {
        let list: Vec<Vec<String>> = (1..=12).map(|i| vec![format!("D1:{i}")]).collect();
        let evidence = ids(&["D1:11"]);
        assert!(!hit_at(&list, &evidence, 10));
        assert_eq!(reciprocal_rank(&list, &evidence, 10), 0.0);
        assert_eq!(first_rank(&list, &evidence, 10), None);
        assert_eq!(first_rank(&list, &evidence, 12), Some(11));
        let first = ids(&["D1:1", "D1:11"]);
        assert_eq!(reciprocal_rank(&list, &first, 10), 1.0);
        assert_eq!(reciprocal_rank(&list, &ids(&["D1:4"]), 10), 0.25);
    }

    #[test]
    fn scores_of_a_query_and_their_mean() {
        let list = ranked(&[&["a"], &["b"], &["c"], &["d"], &["e"], &["f"]]);
        let one = Scores::of(&list, &ids(&["a", "f"]));
        assert_eq!(
            one,
            Scores {
                recall_at_1: 0.5,
                recall_at_5: 0.5,
                recall_at_10: 1.0,
                hit_at_10: 1.0,
                mrr_at_10: 1.0,
            }
        );
        let none = Scores::of(&list, &ids(&["z"]));
        assert_eq!(none, Scores::default());

        let mut mean = Mean::default();
        assert_eq!(mean.mean(), Scores::default());
        mean.add(&one);
        mean.add(&none);
        assert_eq!(mean.count(), 2);
        let m = mean.mean();
        assert_eq!((m.recall_at_1, m.recall_at_10), (0.25, 0.5));
        assert_eq!((m.hit_at_10, m.mrr_at_10), (0.5, 0.5));
    }

    #[test]
    fn percentiles_by_nearest_rank() {
        let sorted: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&sorted, 0.5), 51.0);
        assert_eq!(percentile(&sorted, 0.95), 95.0);
        assert_eq!(percentile(&sorted, 0.0), 1.0);
        assert_eq!(percentile(&sorted, 1.0), 100.0);
        assert_eq!(percentile(&[7.0], 0.95), 7.0);
        assert_eq!(percentile(&[], 0.5), 0.0);
        // Equal values: any of them.
        assert_eq!(percentile(&[2.0, 2.0, 2.0, 9.0], 0.5), 2.0);
    }
}
