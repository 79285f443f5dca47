//! The vectors of a small user's in-process copy (`keyword_copy`), so that
//! recall's nearest memories, and the cosines of its keyword hits, are
//! computed here instead of by PostgreSQL's exact scan.
//!
//! Why: below the vector index's threshold (and at 1536 dimensions, one row
//! a page) PostgreSQL answers a user's nearest memories by scanning every
//! row: ~1 ms alone at 1,000 rows, three times that beside the other work
//! of a busy machine. The same scan over unit vectors held here is a pass
//! of dot products, and recall is left one statement: the user's version
//! and the rows it picked.
//!
//! Invariants:
//! * row `i` is the copy's memory `i` (the copy's row order), its vector
//!   scaled to unit length, so a cosine is a dot product with the unit query;
//! * only users PostgreSQL itself scans exactly get vectors (rows times
//!   dimensions at most [`MAX_FLOATS`], the budget the duplicate check's
//!   exact scan is sized by): for a larger user the index answers in
//!   PostgreSQL faster than a scan here would, and the copy holds postings
//!   only;
//! * a vector of length zero (which has no cosine) leaves the user without
//!   vectors: PostgreSQL answers for them;
//! * every row is also held as a code (`copy_codes`), a quarter of its
//!   bytes: a pass over the codes names the rows that may be nearest (or
//!   within a duplicate's threshold), and only those are scored exactly.
//!   The answers are the full scan's; the pass reads 1.5 KB a row at 1536
//!   dimensions where the floats are 6 KB, and a user's floats do not stay
//!   in the processor's caches between remembers.

use std::collections::HashMap;

use uuid::Uuid;

use super::copy_codes::CopyCodes;

/// Rows times dimensions a copy's vectors may hold: what the duplicate
/// check scans exactly (5,000 rows at 384 dimensions, 1,250 at 1536).
pub(super) const MAX_FLOATS: usize = 5000 * 384;

/// Whether a user of `rows` memories of `dims` dimensions gets vectors,
/// with copies' vectors bounded to `max_floats` a user.
pub(super) fn small_enough(rows: usize, dims: usize, max_floats: usize) -> bool {
    rows.saturating_mul(dims) <= max_floats
}

/// A user's current vectors, unit length, in the copy's row order.
#[derive(Debug, Clone)]
pub(super) struct CopyVectors {
    dims: usize,
    /// Row after row, `dims` each.
    values: Vec<f32>,
    ids: Vec<Uuid>,
    row_of: HashMap<Uuid, usize>,
    /// The same rows as codes, which narrow every pass to a few rows.
    codes: CopyCodes,
}

impl CopyVectors {
    pub fn with_capacity(dims: usize, rows: usize) -> Self {
        Self {
            dims,
            values: Vec::with_capacity(dims * rows),
            ids: Vec::with_capacity(rows),
            row_of: HashMap::with_capacity(rows),
            codes: CopyCodes::with_capacity(dims, rows),
        }
    }

    /// Appends `id`'s vector as the next row; `false` (and nothing kept)
    /// when it is not of the copy's dimensions or has length zero.
    #[must_use]
    pub fn push(&mut self, id: Uuid, vector: &[f32]) -> bool {
        let Some(unit) = unit(vector).filter(|v| v.len() == self.dims) else {
            return false;
        };
        if !self.codes.push(id, &unit) {
            return false;
        }
        self.row_of.insert(id, self.ids.len());
        self.ids.push(id);
        self.values.extend_from_slice(&unit);
        true
    }

    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// The row `id`'s vector is in, if the copy holds it.
    pub fn row_of(&self, id: &Uuid) -> Option<usize> {
        self.row_of.get(id).copied()
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        Self::bytes_for(self.len(), self.dims)
    }

    /// Bytes a copy of `rows` vectors of `dims` dimensions holds.
    pub fn bytes_for(rows: usize, dims: usize) -> usize {
        // The values, the ids, the map (its entries and control bytes), and
        // the codes.
        rows * (dims * 4 + 16 + 32) + CopyCodes::bytes_for(rows, dims)
    }

    /// Up to `k` rows nearest to `query`, best first (ties by id), each with
    /// its cosine similarity; rows `skip` names are left out.
    pub fn nearest(
        &self,
        query: &[f32],
        k: usize,
        skip: impl Fn(usize) -> bool,
    ) -> Vec<(Uuid, f32)> {
        let Some(query) = unit(query).filter(|q| q.len() == self.dims) else {
            return Vec::new();
        };
        let mut scored: Vec<(usize, f32)> = self
            .codes
            .rows_may_be_nearest(&query, k, skip)
            .into_iter()
            .map(|row| (row, dot(self.row(row), &query)))
            .collect();
        let order = |a: &(usize, f32), b: &(usize, f32)| {
            b.1.total_cmp(&a.1).then(self.ids[a.0].cmp(&self.ids[b.0]))
        };
        if scored.len() > k && k > 0 {
            scored.select_nth_unstable_by(k - 1, order);
        }
        scored.truncate(k);
        scored.sort_by(order);
        scored
            .into_iter()
            .map(|(row, s)| (self.ids[row], s))
            .collect()
    }

    /// Whether any row's cosine to `query` is at least `least`; `None` for
    /// a query of length zero or other dimensions.
    pub fn any_reaches(&self, query: &[f32], least: f32) -> Option<bool> {
        let query = unit(query).filter(|q| q.len() == self.dims)?;
        let named = self.codes.rows_reaching(&query, least)?;
        Some(
            named
                .into_iter()
                .any(|row| dot(self.row(row), &query) >= least),
        )
    }

    /// The same rows as codes only (`copy_codes`), for a user who outgrew
    /// floats.
    pub fn into_codes(self) -> CopyCodes {
        self.codes
    }

    /// The same rows' codes, without the floats (a copy giving up its
    /// floats while others share it).
    pub fn codes(&self) -> &CopyCodes {
        &self.codes
    }

    /// Row `row`'s unit vector.
    fn row(&self, row: usize) -> &[f32] {
        &self.values[row * self.dims..(row + 1) * self.dims]
    }

    /// Each of `ids`' cosine similarity to `query`, for those in the copy.
    pub fn similarities<'a>(
        &self,
        ids: impl IntoIterator<Item = &'a Uuid>,
        query: &[f32],
    ) -> Vec<(Uuid, f32)> {
        let Some(query) = unit(query).filter(|q| q.len() == self.dims) else {
            return Vec::new();
        };
        ids.into_iter()
            .filter_map(|id| {
                let start = *self.row_of.get(id)? * self.dims;
                Some((*id, dot(&self.values[start..start + self.dims], &query)))
            })
            .collect()
    }
}

/// `v` scaled to unit length; `None` for length zero (or not finite).
pub(super) fn unit(v: &[f32]) -> Option<Vec<f32>> {
    let norm = (v.iter().map(|x| f64::from(*x) * f64::from(*x)).sum::<f64>()).sqrt();
    if norm == 0.0 || !norm.is_finite() {
        return None;
    }
    Some(v.iter().map(|x| (f64::from(*x) / norm) as f32).collect())
}

/// The dot product, with AVX2 where the CPU has it. Both paths sum the
/// same sixteen lanes in the same order ([`dot_lanes`]), so a row scores
/// the same on every CPU.
fn dot(a: &[f32], b: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU supports AVX2, checked just above.
            return unsafe { dot_avx2(a, b) };
        }
    }
    dot_lanes(a, b)
}

/// [`dot_lanes`] compiled for AVX2: the sixteen lanes are two 256-bit
/// registers where the baseline target has four 128-bit ones (measured on
/// recall from a copy: the rows' rescoring was 8.5% of engram's CPU).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn dot_avx2(a: &[f32], b: &[f32]) -> f32 {
    dot_lanes(a, b)
}

/// The dot product, over sixteen lanes that the compiler keeps in vector
/// registers (a plain sum of products is one chain of adds, in order).
#[inline(always)]
fn dot_lanes(a: &[f32], b: &[f32]) -> f32 {
    const LANES: usize = 16;
    let mut lanes = [0f32; LANES];
    let (a16, a_rest) = a.as_chunks::<LANES>();
    let (b16, b_rest) = b.as_chunks::<LANES>();
    for (x, y) in a16.iter().zip(b16) {
        for i in 0..LANES {
            lanes[i] += x[i] * y[i];
        }
    }
    let tail: f32 = a_rest.iter().zip(b_rest).map(|(x, y)| x * y).sum();
    lanes.iter().sum::<f32>() + tail
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// A small, fixed pseudo-random vector (tests here and in `copy_codes`).
    pub(in crate::store::postgres) fn vector(seed: u64, dims: usize) -> Vec<f32> {
        // A small, fixed pseudo-random sequence.
        let mut state = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (0..dims)
            .map(|_| {
                state = state
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((state >> 33) as f32 / (1u64 << 31) as f32) - 0.5
            })
            .collect()
    }

    /// The cosine, in f64.
    pub(in crate::store::postgres) fn cosine(a: &[f32], b: &[f32]) -> f64 {
        let d: f64 = a
            .iter()
            .zip(b)
            .map(|(x, y)| f64::from(*x) * f64::from(*y))
            .sum();
        let n = |v: &[f32]| v.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
        d / (n(a) * n(b))
    }

    #[test]
    fn nearest_is_the_exact_order_of_cosines_without_skipped_rows() {
        let dims = 37; // not a multiple of the lanes
        let rows: Vec<Vec<f32>> = (0..300).map(|i| vector(i, dims)).collect();
        let mut copy = CopyVectors::with_capacity(dims, rows.len());
        let ids: Vec<Uuid> = (0..rows.len()).map(|_| Uuid::new_v4()).collect();
        for (id, row) in ids.iter().zip(&rows) {
            assert!(copy.push(*id, row));
        }
        for q in 0..20 {
            let query = vector(1000 + q, dims);
            let skip = |row: usize| row % 7 == 3;
            let mut want: Vec<(Uuid, f64)> = rows
                .iter()
                .enumerate()
                .filter(|(row, _)| !skip(*row))
                .map(|(row, v)| (ids[row], cosine(v, &query)))
                .collect();
            want.sort_by(|a, b| b.1.total_cmp(&a.1));
            want.truncate(10);
            let got = copy.nearest(&query, 10, skip);
            assert_eq!(got.len(), 10);
            for ((gid, gs), (wid, ws)) in got.iter().zip(&want) {
                assert_eq!(gid, wid);
                assert!((f64::from(*gs) - ws).abs() < 1e-5, "{gs} {ws}");
                let one = copy.similarities([gid], &query);
                assert_eq!(one.len(), 1);
                assert!((one[0].1 - gs).abs() < 1e-6);
            }
        }
        assert!(copy.nearest(&vector(5, dims), 0, |_| false).is_empty());
        assert_eq!(copy.nearest(&vector(5, dims), 1000, |_| false).len(), 300);
        assert!(
            copy.similarities(&[Uuid::new_v4()], &vector(5, dims))
                .is_empty()
        );
    }

    #[test]
    fn the_dot_product_is_the_same_on_every_path() {
        // Lengths below, at and off the sixteen lanes, and 1536.
        for dims in [5, 16, 37, 384, 1536] {
            for seed in 0..10 {
                let (a, b) = (vector(seed, dims), vector(100 + seed, dims));
                let exact: f64 = a
                    .iter()
                    .zip(&b)
                    .map(|(x, y)| f64::from(*x) * f64::from(*y))
                    .sum();
                assert_eq!(dot(&a, &b).to_bits(), dot_lanes(&a, &b).to_bits());
                assert!((f64::from(dot(&a, &b)) - exact).abs() < 1e-4);
            }
        }
    }

    /// Every row scored exactly, as the copy did before its codes narrowed
    /// the pass: the `k` best rows (ties by id) with their cosines.
    fn full_scan(copy: &CopyVectors, query: &[f32], k: usize) -> Vec<(Uuid, f32)> {
        let query = unit(query).unwrap();
        let mut all: Vec<(Uuid, f32)> = (0..copy.len())
            .map(|row| (copy.ids[row], dot(copy.row(row), &query)))
            .collect();
        all.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        all.truncate(k);
        all
    }

    #[test]
    fn the_codes_narrow_a_pass_without_changing_its_answer() {
        for dims in [384, 1536] {
            // Rows sharing one of five parts with the queries, so that many
            // cosines crowd near every cut, and some rows are near-copies.
            let crowd = |i: u64| -> Vec<f32> {
                let own = vector(i, dims);
                let shared = vector(7000 + i % 5, dims);
                own.iter().zip(&shared).map(|(a, b)| a * 0.6 + b).collect()
            };
            let mut copy = CopyVectors::with_capacity(dims, 1000);
            for i in 0..1000 {
                assert!(copy.push(Uuid::new_v4(), &crowd(i)));
            }
            for q in 0..30u64 {
                let query = crowd(50_000 + q);
                for k in [1, 5, 40] {
                    assert_eq!(
                        copy.nearest(&query, k, |_| false),
                        full_scan(&copy, &query, k),
                        "dims {dims}, k {k}"
                    );
                }
                // At, just above and just below the best cosine.
                let best = full_scan(&copy, &query, 1)[0].1;
                assert_eq!(copy.any_reaches(&query, best), Some(true));
                assert_eq!(copy.any_reaches(&query, best - 1e-3), Some(true));
                assert_eq!(copy.any_reaches(&query, best + 1e-3), Some(false));
            }
            // A stored row reaches itself.
            assert_eq!(copy.any_reaches(&crowd(17), 0.999), Some(true));
        }
        let copy = CopyVectors::with_capacity(4, 0);
        assert_eq!(copy.any_reaches(&[1.0, 0.0, 0.0, 0.0], 0.5), Some(false));
        assert_eq!(copy.any_reaches(&[0.0; 4], 0.5), None);
        assert_eq!(copy.any_reaches(&[1.0; 3], 0.5), None);
    }

    #[test]
    fn a_vector_of_length_zero_or_other_dimensions_is_refused() {
        let mut copy = CopyVectors::with_capacity(4, 2);
        assert!(!copy.push(Uuid::new_v4(), &[0.0; 4]));
        assert!(!copy.push(Uuid::new_v4(), &[1.0; 3]));
        assert_eq!(copy.len(), 0);
        assert!(copy.nearest(&[0.0; 4], 3, |_| false).is_empty());
    }

    #[test]
    fn only_users_scanned_exactly_get_vectors() {
        assert!(small_enough(5000, 384, MAX_FLOATS));
        assert!(!small_enough(5001, 384, MAX_FLOATS));
        assert!(small_enough(1250, 1536, MAX_FLOATS));
        assert!(!small_enough(1251, 1536, MAX_FLOATS));
        assert!(!small_enough(usize::MAX, 2, MAX_FLOATS));
        assert!(!small_enough(1, 384, 0));
    }
}
