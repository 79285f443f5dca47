//! Eight-bit codes of a larger user's vectors, for their in-process copy
//! (`keyword_copy`): a pass over the codes narrows recall's nearest
//! memories to a few rows that PostgreSQL then scores exactly, and answers
//! a remember's duplicate check when no row can be near.
//!
//! Why: past the rows a copy holds as floats (`copy_vectors`), PostgreSQL
//! answers a user's nearest memories through the vector index. At 1536
//! dimensions an index element is a page, and a search of 10,000 rows
//! with the index's candidate list of 250 took 7.5 ms p50; a pass over the
//! same rows' codes (15 MB) and the exact cosines of ~150 rows by key cost
//! a fraction of that, and the answer is exact where the index's is not.
//!
//! Invariants:
//! * row `i` is the copy's memory `i` (the copy's row order); it holds
//!   `scale[i] * code[i]`, the unit vector rounded to 255 levels, and
//!   `error[i]`, the length of what the rounding took away;
//! * for a unit query `q`, coded `q' = s * c` with error `e`, a row's exact
//!   cosine lies within `bound(i) = error[i] + e * (1 + error[i])` (plus
//!   [`SLACK`] for float rounding, here and in PostgreSQL) of the estimate
//!   `q' . row'`: by Cauchy-Schwarz, `|q.v - q'.v'| <= |q||v - v'| +
//!   |q - q'||v'|`;
//! * so the rows [`CopyCodes::may_be_nearest`] names hold the `k` nearest:
//!   a row left out has an exact cosine below the `k`-th best lower bound,
//!   and `k` rows named are at or above it;
//! * each row is kept as its head (the first [`head_len`] levels) and its
//!   rest, with the length of its unit vector's rest (`rest_lengths[i]`):
//!   the exact cosine is at most the heads' estimate plus the same bound
//!   plus the product of the two rests' lengths (Cauchy-Schwarz on the
//!   rest), so [`CopyCodes::rows_reaching`] reads a row's rest only when
//!   its head leaves it able to reach the threshold.
//!
//! Why the head: the duplicate check of every remember passes over all of
//! the user's rows, and a near duplicate (cosine 0.9 by default) is rare,
//! while a row far from the new vector is ruled out by a quarter of its
//! levels (at 1536 dimensions, 384 of 1,536 bytes). At 8 remembering
//! clients the pass over whole rows was a fifth of engram's CPU
//! (docs/benchmarks.md, twentieth run).

use uuid::Uuid;

use super::copy_vectors::unit;
use crate::store::vector_index::dot_codes;

/// Room for float rounding: of the unit vectors here and of the cosine
/// PostgreSQL computes from the stored vector.
const SLACK: f32 = 1e-4;

/// Bytes of codes a user's copy may hold (rows times dimensions): 21,845
/// memories at 1536 dimensions, 87,381 at 384. A pass over this many bytes
/// takes a few milliseconds; past it the vector index answers sooner.
pub(super) const MAX_CODE_BYTES: usize = 32 << 20;

/// Whether a user of `rows` memories of `dims` dimensions gets codes, with
/// codes bounded to `max_bytes` a user.
pub(super) fn coded_enough(rows: usize, dims: usize, max_bytes: usize) -> bool {
    rows.saturating_mul(dims) <= max_bytes
}

/// A user's current vectors as codes, in the copy's row order.
#[derive(Debug, Clone)]
pub(super) struct CopyCodes {
    dims: usize,
    /// The first [`head_len`] levels of each row, row after row.
    heads: Vec<i8>,
    /// The other levels of each row, row after row.
    rests: Vec<i8>,
    scales: Vec<f32>,
    errors: Vec<f32>,
    /// The length of each row's unit vector past its head.
    rest_lengths: Vec<f32>,
    ids: Vec<Uuid>,
}

/// The levels of a row read before its rest: a quarter of them (in whole
/// AVX2 steps of 32), from 256 dimensions; all of them below, where a row
/// is short enough to read whole.
fn head_len(dims: usize) -> usize {
    if dims >= 256 {
        dims / 4 / 32 * 32
    } else {
        dims
    }
}

/// A query as the rows are kept: coded, split at the head, with the length
/// of its unit vector's rest.
struct Query {
    head: Vec<i8>,
    rest: Vec<i8>,
    scale: f32,
    error: f32,
    rest_length: f32,
}

/// A vector's code: the levels, their scale, and the length of the error.
struct Coded {
    code: Vec<i8>,
    scale: f32,
    error: f32,
}

/// The length of `v` past its first `head` components.
fn rest_length(v: &[f32], head: usize) -> f32 {
    v[head..]
        .iter()
        .map(|x| f64::from(*x) * f64::from(*x))
        .sum::<f64>()
        .sqrt() as f32
}

/// `v` (unit length) rounded to levels of its largest component / 127.
fn code(v: &[f32]) -> Coded {
    let largest = v.iter().fold(0f32, |m, x| m.max(x.abs()));
    let scale = if largest > 0.0 { largest / 127.0 } else { 1.0 };
    let code: Vec<i8> = v
        .iter()
        .map(|x| (x / scale).round().clamp(-127.0, 127.0) as i8)
        .collect();
    let error = v
        .iter()
        .zip(&code)
        .map(|(x, c)| {
            let d = f64::from(*x) - f64::from(scale) * f64::from(*c);
            d * d
        })
        .sum::<f64>()
        .sqrt() as f32;
    Coded { code, scale, error }
}

impl CopyCodes {
    pub fn with_capacity(dims: usize, rows: usize) -> Self {
        let head = head_len(dims);
        Self {
            dims,
            heads: Vec::with_capacity(head * rows),
            rests: Vec::with_capacity((dims - head) * rows),
            scales: Vec::with_capacity(rows),
            errors: Vec::with_capacity(rows),
            rest_lengths: Vec::with_capacity(rows),
            ids: Vec::with_capacity(rows),
        }
    }

    /// Appends `id`'s vector as the next row; `false` (and nothing kept)
    /// when it is not of the copy's dimensions or has length zero.
    #[must_use]
    pub fn push(&mut self, id: Uuid, vector: &[f32]) -> bool {
        let Some(unit) = unit(vector).filter(|v| v.len() == self.dims) else {
            return false;
        };
        let head = head_len(self.dims);
        let coded = code(&unit);
        self.heads.extend_from_slice(&coded.code[..head]);
        self.rests.extend_from_slice(&coded.code[head..]);
        self.scales.push(coded.scale);
        self.errors.push(coded.error);
        self.rest_lengths.push(rest_length(&unit, head));
        self.ids.push(id);
        true
    }

    /// `query` as the rows are kept; `None` for a query of length zero or
    /// other dimensions.
    fn query(&self, query: &[f32]) -> Option<Query> {
        let unit = unit(query).filter(|q| q.len() == self.dims)?;
        let head = head_len(self.dims);
        let Coded {
            mut code,
            scale,
            error,
        } = code(&unit);
        let rest = code.split_off(head);
        Some(Query {
            head: code,
            rest,
            scale,
            error,
            rest_length: rest_length(&unit, head),
        })
    }

    /// Row `row`'s head and rest.
    fn row(&self, row: usize) -> (&[i8], &[i8]) {
        let head = head_len(self.dims);
        let rest = self.dims - head;
        (
            &self.heads[row * head..(row + 1) * head],
            &self.rests[row * rest..(row + 1) * rest],
        )
    }

    /// Row `row`'s heads' part of its estimated cosine to `q`.
    fn head_estimate(&self, row: usize, q: &Query) -> f32 {
        let (head, _) = self.row(row);
        dot_codes(head, &q.head) as f32 * self.scales[row] * q.scale
    }

    /// Row `row`'s rests' part of its estimated cosine to `q`.
    fn rest_estimate(&self, row: usize, q: &Query) -> f32 {
        let (_, rest) = self.row(row);
        dot_codes(rest, &q.rest) as f32 * self.scales[row] * q.scale
    }

    /// How far row `row`'s estimate from `q` may be off its exact cosine
    /// (the module's invariants).
    fn bound(&self, row: usize, q: &Query) -> f32 {
        self.errors[row] + q.error * (1.0 + self.errors[row]) + SLACK
    }

    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        Self::bytes_for(self.len(), self.dims)
    }

    /// Bytes a copy of `rows` codes of `dims` dimensions holds.
    pub fn bytes_for(rows: usize, dims: usize) -> usize {
        // The codes, scale, error and rest length, and the id.
        rows * (dims + 12 + 16)
    }

    /// Each row's estimated cosine to `query` and how far off it may be;
    /// `None` for a query of length zero or other dimensions.
    fn estimates(&self, query: &[f32]) -> Option<impl Iterator<Item = (usize, f32, f32)> + '_> {
        let q = self.query(query)?;
        Some((0..self.len()).map(move |row| {
            let estimate = self.head_estimate(row, &q) + self.rest_estimate(row, &q);
            (row, estimate, self.bound(row, &q))
        }))
    }

    /// The rows, but those `skip` names, that may be among the `k` nearest
    /// to `query`: every row whose exact cosine can reach the `k`-th best
    /// lower bound. Their exact cosines decide the `k` nearest. All rows
    /// (not skipped) when there are at most `k`.
    pub fn may_be_nearest(
        &self,
        query: &[f32],
        k: usize,
        skip: impl Fn(usize) -> bool,
    ) -> Vec<Uuid> {
        self.rows_may_be_nearest(query, k, skip)
            .into_iter()
            .map(|row| self.ids[row])
            .collect()
    }

    /// [`Self::may_be_nearest`], as rows of the copy.
    pub fn rows_may_be_nearest(
        &self,
        query: &[f32],
        k: usize,
        skip: impl Fn(usize) -> bool,
    ) -> Vec<usize> {
        if k == 0 {
            return Vec::new();
        }
        let Some(estimates) = self.estimates(query) else {
            return Vec::new();
        };
        let rows: Vec<(usize, f32, f32)> = estimates.filter(|(row, _, _)| !skip(*row)).collect();
        if rows.len() <= k {
            return rows.iter().map(|(row, _, _)| *row).collect();
        }
        let mut lower: Vec<f32> = rows.iter().map(|(_, e, b)| e - b).collect();
        let (_, kth, _) = lower.select_nth_unstable_by(k - 1, |a, b| b.total_cmp(a));
        let cut = *kth;
        rows.iter()
            .filter(|(_, e, b)| e + b >= cut)
            .map(|(row, _, _)| *row)
            .collect()
    }

    /// The rows whose exact cosine to `query` may reach `least`; every
    /// other row's is below `least - SLACK`. `None` for a query of length
    /// zero or other dimensions.
    pub fn rows_reaching(&self, query: &[f32], least: f32) -> Option<Vec<usize>> {
        let q = self.query(query)?;
        Some(
            (0..self.len())
                .filter(|&row| {
                    self.head_leaves_open(row, &q, least)
                        .is_some_and(|from_head| {
                            from_head + self.rest_estimate(row, &q) + self.bound(row, &q) >= least
                        })
                })
                .collect(),
        )
    }

    /// Row `row`'s heads' estimate from `q`, when its exact cosine may
    /// still reach `least` after its head alone; `None` when it cannot
    /// (whatever its rest: the module's invariants).
    fn head_leaves_open(&self, row: usize, q: &Query, least: f32) -> Option<f32> {
        let from_head = self.head_estimate(row, q);
        let most = from_head + self.bound(row, q) + self.rest_lengths[row] * q.rest_length;
        (most >= least).then_some(from_head)
    }

    /// Whether no row, however close its exact cosine comes to its
    /// estimate, is within `threshold` of `vector` (less a margin for the
    /// database's rounding). `false` for a vector of length zero.
    pub fn clear_of(&self, vector: &[f32], threshold: f32) -> bool {
        self.rows_reaching(vector, threshold - SLACK)
            .is_some_and(|rows| rows.is_empty())
    }
}

#[cfg(test)]
mod tests {
    use super::super::copy_vectors::tests::{cosine, vector};
    use super::*;

    /// Rows that share a part with the query, so that many cosines crowd
    /// near the cut, as real memories' do.
    fn rows(count: u64, dims: usize) -> Vec<Vec<f32>> {
        (0..count)
            .map(|i| {
                let own = vector(i, dims);
                let shared = vector(5000 + i % 5, dims);
                own.iter().zip(&shared).map(|(a, b)| a + b).collect()
            })
            .collect()
    }

    #[test]
    fn the_rows_named_hold_the_exact_nearest_and_are_few() {
        for dims in [37, 384, 1536] {
            let rows = rows(2000, dims);
            let ids: Vec<Uuid> = rows.iter().map(|_| Uuid::new_v4()).collect();
            let mut codes = CopyCodes::with_capacity(dims, rows.len());
            for (id, row) in ids.iter().zip(&rows) {
                assert!(codes.push(*id, row));
            }
            let mut named = 0;
            for q in 0..20u64 {
                let mut query = vector(9000 + q, dims);
                for (x, s) in query.iter_mut().zip(vector(5000 + q % 5, dims)) {
                    *x += s;
                }
                let skip = |row: usize| row % 11 == 4;
                let mut exact: Vec<(Uuid, f64)> = rows
                    .iter()
                    .enumerate()
                    .filter(|(row, _)| !skip(*row))
                    .map(|(row, v)| (ids[row], cosine(v, &query)))
                    .collect();
                exact.sort_by(|a, b| b.1.total_cmp(&a.1));
                let got = codes.may_be_nearest(&query, 40, skip);
                for (id, _) in &exact[..40] {
                    assert!(got.contains(id), "dims {dims}: a nearest row left out");
                }
                for id in &got {
                    let row = ids.iter().position(|x| x == id).unwrap();
                    assert!(!skip(row), "a skipped row named");
                }
                named += got.len();
            }
            // Few enough to score exactly: a fraction of the rows (these
            // crowd more than real memories do: a tenth of them at 1536).
            assert!(
                named / 20 < 400,
                "dims {dims}: {} rows named a query",
                named / 20
            );
        }
    }

    #[test]
    fn the_bound_holds_for_every_row() {
        let dims = 1536;
        let rows = rows(300, dims);
        let mut codes = CopyCodes::with_capacity(dims, rows.len());
        for row in &rows {
            assert!(codes.push(Uuid::new_v4(), row));
        }
        let query = vector(77, dims);
        for (row, estimate, bound) in codes.estimates(&query).unwrap() {
            let exact = cosine(&rows[row], &query) as f32;
            assert!(
                (exact - estimate).abs() <= bound,
                "{exact} {estimate} {bound}"
            );
            assert!(bound < 0.05, "{bound}");
        }
    }

    #[test]
    fn rows_reaching_names_what_whole_estimates_name_and_reads_few_rests() {
        for dims in [37, 255, 256, 384, 1536] {
            let rows = rows(600, dims);
            let mut codes = CopyCodes::with_capacity(dims, rows.len());
            for row in &rows {
                assert!(codes.push(Uuid::new_v4(), row));
            }
            let mut rests_read = 0;
            for (q, least) in (0..12u64).zip([0.9, 0.5, 0.2, 0.95, 0.7, 0.99].iter().cycle()) {
                // Stored rows themselves and rows a little off them, among
                // queries that share a part with many rows.
                let query: Vec<f32> = match q % 3 {
                    0 => rows[q as usize * 7].clone(),
                    1 => rows[q as usize].iter().map(|x| x * 1.01 + 0.002).collect(),
                    _ => {
                        let shared = vector(5000 + q % 5, dims);
                        vector(9000 + q, dims)
                            .iter()
                            .zip(&shared)
                            .map(|(a, b)| a + b)
                            .collect()
                    }
                };
                let named = codes.rows_reaching(&query, *least).unwrap();
                let prepared = codes.query(&query).unwrap();
                let whole: Vec<bool> = (codes.estimates(&query).unwrap())
                    .map(|(_, estimate, bound)| estimate + bound >= *least)
                    .collect();
                for (row, stored) in rows.iter().enumerate() {
                    let exact = cosine(stored, &query) as f32;
                    assert_eq!(
                        named.contains(&row),
                        whole[row],
                        "dims {dims}: row {row} at {exact} for {least}"
                    );
                    if exact >= *least {
                        assert!(named.contains(&row), "dims {dims}: a reaching row left out");
                    }
                    if *least == 0.9 && codes.head_leaves_open(row, &prepared, *least).is_some() {
                        rests_read += 1;
                    }
                }
            }
            // At the duplicate check's threshold, from 256 dimensions, a row
            // far from the query is ruled out by its head: of these (a fifth
            // of them share a part with the query) few are read whole.
            let share = rests_read as f64 / (2.0 * rows.len() as f64);
            if dims >= 256 {
                assert!(share < 0.1, "dims {dims}: {share} of the rows read whole");
            } else {
                assert_eq!(codes.rests.len(), 0, "dims {dims}: rows are read whole");
            }
        }
    }

    #[test]
    fn clear_of_only_when_no_row_can_be_within_the_threshold() {
        let dims = 384;
        let rows = rows(500, dims);
        let mut codes = CopyCodes::with_capacity(dims, rows.len());
        for row in &rows {
            assert!(codes.push(Uuid::new_v4(), row));
        }
        // A stored vector itself, and one a little off it: not clear.
        assert!(!codes.clear_of(&rows[10], 0.95));
        let near: Vec<f32> = rows[10].iter().map(|x| x * 1.01 + 0.001).collect();
        assert!(cosine(&near, &rows[10]) > 0.95);
        assert!(!codes.clear_of(&near, 0.95));
        // Unrelated: clear.
        assert!(codes.clear_of(&vector(123_456, dims), 0.95));
        assert!(!codes.clear_of(&vec![0.0; dims], 0.95));
        // An empty copy is clear of anything.
        assert!(CopyCodes::with_capacity(dims, 0).clear_of(&rows[0], 0.95));
    }

    #[test]
    fn a_few_rows_are_all_named_and_bad_input_names_none() {
        let mut codes = CopyCodes::with_capacity(4, 3);
        assert!(!codes.push(Uuid::new_v4(), &[0.0; 4]));
        assert!(!codes.push(Uuid::new_v4(), &[1.0; 3]));
        assert!(codes.push(Uuid::new_v4(), &[1.0, 0.0, 0.0, 0.0]));
        assert!(codes.push(Uuid::new_v4(), &[0.0, 1.0, 0.0, 0.0]));
        assert_eq!(codes.len(), 2);
        assert_eq!(
            codes
                .may_be_nearest(&[1.0, 0.5, 0.0, 0.0], 5, |_| false)
                .len(),
            2
        );
        assert!(
            codes
                .may_be_nearest(&[1.0, 0.5, 0.0, 0.0], 0, |_| false)
                .is_empty()
        );
        assert!(codes.may_be_nearest(&[0.0; 4], 5, |_| false).is_empty());
    }

    #[test]
    fn only_users_within_the_bytes_get_codes() {
        assert!(coded_enough(21_845, 1536, MAX_CODE_BYTES));
        assert!(!coded_enough(21_846, 1536, MAX_CODE_BYTES));
        assert!(!coded_enough(usize::MAX, 2, MAX_CODE_BYTES));
        assert!(!coded_enough(1, 384, 0));
    }
}
