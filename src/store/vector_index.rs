//! An in-process, 8-bit quantised copy of each active user's current vectors,
//! so a similarity scan reads 1 byte per dimension instead of decoding rows.
//! Each row keeps its memory's agent and run, so a search narrowed to either
//! filters the scan itself ([`Among::Scope`]).
//!
//! Invariant: the copy is only an accelerator. Each [`UserVectors`] carries the
//! user's write generation it reflects; the store compares it with the
//! generation in the database before every use and reloads on mismatch, so a
//! write by another process (or a lost update) can never be served stale.
//!
//! Memory is bounded: when the copies together pass the byte budget, the least
//! recently used users' copies are dropped (never the one being asked for); a
//! dropped user is reloaded from the database on next use.
//!
//! Quantisation: each vector is scaled so its largest |component| maps to 127.
//! Scores are approximate (typically within 0.01 of the exact cosine); callers
//! that need exact similarity (dedup) re-check candidates against the stored f32.
//!
//! Each row also keeps a 256-bit [`sketch`] of its vector: the near-duplicate
//! check ([`UserVectors::near`]) of a large copy reads those first and scores
//! only the rows they leave.
//!
//! The copy holds the same memories' keyword postings too ([`UserKeywords`]),
//! so one generation check covers both signals of a search.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::RwLock;

use super::keyword_copy::{QueryScores, UserKeywords};
use super::scratch;
use super::sketch::{self, Sketch};
use crate::keywords::DocumentTerms;
use crate::model::MemoryId;

/// Which of a user's rows a scan counts.
#[derive(Debug, Clone, Copy)]
pub enum Among<'a> {
    /// Every row.
    All,
    /// Rows of this agent and run (`None`: any).
    Scope {
        agent_id: Option<&'a str>,
        run_id: Option<&'a str>,
    },
    /// Rows whose pk is in the set.
    Pks(&'a HashSet<i64>),
}

impl Among<'_> {
    /// Whether the memory at `pk` may count, as far as a pk list says
    /// (agent and run are the scans' to check, by each row's scope).
    fn admits_pk(&self, pk: i64) -> bool {
        match self {
            Among::Pks(allowed) => allowed.contains(&pk),
            Among::All | Among::Scope { .. } => true,
        }
    }
}

/// What a row of the copy holds of its memory besides the vector and terms.
#[derive(Debug, Clone, Copy)]
pub struct RowOf<'a> {
    pub pk: i64,
    pub id: MemoryId,
    pub agent_id: Option<&'a str>,
    pub run_id: Option<&'a str>,
    /// When the memory expires (Unix milliseconds), if it does.
    pub expires_at: Option<i64>,
}

impl RowOf<'_> {
    /// A row of memory `pk` (`id`) with no agent, run or expiry.
    pub fn new(pk: i64, id: MemoryId) -> Self {
        Self {
            pk,
            id,
            agent_id: None,
            run_id: None,
            expires_at: None,
        }
    }
}

/// Per-user quantised vectors, each row with its memory's pk, id, scope and
/// expiry.
#[derive(Debug, Default)]
pub struct UserVectors {
    /// The database write generation this copy reflects; `None` = never loaded.
    pub generation: Option<i64>,
    dims: usize,
    pks: Vec<i64>,
    ids: Vec<MemoryId>,
    /// Each row's (agent, run), as an index into `scope_names`.
    scopes: Vec<usize>,
    /// The distinct (agent, run) pairs of the rows (a user may have a run
    /// per conversation), and where each is in that list.
    scope_names: Vec<(Option<String>, Option<String>)>,
    scope_index: HashMap<(Option<String>, Option<String>), usize>,
    codes: Vec<i8>,
    inv_scales: Vec<f32>,
    sketches: Vec<Sketch>,
    /// Each row's expiry (Unix milliseconds), `i64::MAX` for none.
    expires: Vec<i64>,
    /// How many rows have an expiry: with none, nothing needs checking.
    expiring: usize,
    keywords: UserKeywords,
    /// Approximate bytes held, readable by the index without taking this
    /// copy's lock.
    bytes: Arc<AtomicUsize>,
}

impl UserVectors {
    pub fn new(dims: usize) -> Self {
        Self {
            dims,
            ..Self::default()
        }
    }

    /// Replaces the contents; used on (re)load.
    pub fn reset(&mut self, generation: i64) {
        self.generation = Some(generation);
        self.pks.clear();
        self.ids.clear();
        self.scopes.clear();
        self.scope_names.clear();
        self.scope_index.clear();
        self.codes.clear();
        self.inv_scales.clear();
        self.sketches.clear();
        self.expires.clear();
        self.expiring = 0;
        self.keywords.clear();
        self.account();
    }

    /// Publishes the bytes held, for the index's budget.
    fn account(&self) {
        let row = self.dims + std::mem::size_of::<(i64, MemoryId, usize, f32, Sketch, i64)>();
        let bytes = self.pks.len() * row + self.keywords.bytes();
        self.bytes.store(bytes, Ordering::Relaxed);
    }

    /// Adds a row for memory `row`, with its vector and its text's keyword
    /// terms.
    pub fn push(&mut self, row: RowOf<'_>, vector: &[f32], terms: &DocumentTerms) {
        debug_assert_eq!(vector.len(), self.dims);
        let RowOf {
            pk,
            id,
            agent_id,
            run_id,
            expires_at,
        } = row;
        let key = (agent_id.map(str::to_owned), run_id.map(str::to_owned));
        let next = self.scope_names.len();
        let scope = *self.scope_index.entry(key.clone()).or_insert(next);
        if scope == next {
            self.scope_names.push(key);
        }
        let inv_scale = quantise_into(vector, &mut self.codes);
        self.pks.push(pk);
        self.ids.push(id);
        self.scopes.push(scope);
        self.inv_scales.push(inv_scale);
        self.sketches.push(sketch::sketch(vector));
        self.expires.push(expires_at.unwrap_or(i64::MAX));
        self.expiring += usize::from(expires_at.is_some());
        self.keywords.insert(pk, id, scope, terms);
        self.account();
    }

    /// Gives row `pk` a new vector and terms (its memory's text changed,
    /// not its scope).
    pub fn replace(&mut self, pk: i64, vector: &[f32], terms: &DocumentTerms) {
        debug_assert_eq!(vector.len(), self.dims);
        if let Some(i) = self.pks.iter().position(|&p| p == pk) {
            let mut code = Vec::with_capacity(self.dims);
            self.inv_scales[i] = quantise_into(vector, &mut code);
            self.sketches[i] = sketch::sketch(vector);
            self.codes[i * self.dims..(i + 1) * self.dims].copy_from_slice(&code);
            self.keywords.insert(pk, self.ids[i], self.scopes[i], terms);
            self.account();
        }
    }

    pub fn remove(&mut self, pk: i64) {
        self.keywords.remove(pk);
        if let Some(i) = self.pks.iter().position(|&p| p == pk) {
            let last = self.pks.len() - 1;
            self.pks.swap(i, last);
            self.ids.swap(i, last);
            self.scopes.swap(i, last);
            self.inv_scales.swap(i, last);
            self.sketches.swap(i, last);
            self.expires.swap(i, last);
            let d = self.dims;
            if i != last {
                let (head, tail) = self.codes.split_at_mut(last * d);
                head[i * d..(i + 1) * d].copy_from_slice(&tail[..d]);
            }
            self.pks.pop();
            self.ids.pop();
            self.scopes.pop();
            self.inv_scales.pop();
            self.sketches.pop();
            let expires = self.expires.pop();
            self.expiring -= usize::from(expires.is_some_and(|at| at != i64::MAX));
            self.codes.truncate(last * d);
        }
        self.account();
    }

    /// Removes the rows of every pk in `gone` (pks it does not hold are
    /// ignored) in one pass, keeping the others in order.
    pub fn remove_many(&mut self, gone: &HashSet<i64>) {
        if gone.is_empty() {
            return;
        }
        for &pk in gone {
            self.keywords.remove(pk);
        }
        let d = self.dims;
        let mut kept = 0;
        for i in 0..self.pks.len() {
            if gone.contains(&self.pks[i]) {
                continue;
            }
            if kept != i {
                self.pks[kept] = self.pks[i];
                self.ids[kept] = self.ids[i];
                self.scopes[kept] = self.scopes[i];
                self.inv_scales[kept] = self.inv_scales[i];
                self.sketches[kept] = self.sketches[i];
                self.expires[kept] = self.expires[i];
                self.codes.copy_within(i * d..(i + 1) * d, kept * d);
            }
            kept += 1;
        }
        self.pks.truncate(kept);
        self.ids.truncate(kept);
        self.scopes.truncate(kept);
        self.inv_scales.truncate(kept);
        self.sketches.truncate(kept);
        self.expires.truncate(kept);
        self.expiring = self.expires.iter().filter(|&&at| at != i64::MAX).count();
        self.codes.truncate(kept * d);
        self.account();
    }

    /// The pks of the rows whose memory has expired at `now` (Unix
    /// milliseconds): the copy keeps an expiring memory until it is
    /// purged, and searches leave it out before they cut at a limit.
    pub fn expired(&self, now: i64) -> HashSet<i64> {
        if self.expiring == 0 {
            return HashSet::new();
        }
        self.expires
            .iter()
            .zip(&self.pks)
            .filter(|&(&at, _)| at <= now)
            .map(|(_, &pk)| pk)
            .collect()
    }

    /// One query's BM25 over the memories `among` selects by their agent
    /// and run ([`UserKeywords::query`]); the statistics are the whole
    /// user's either way.
    pub fn keyword_query(&self, terms: &[String], among: Among<'_>) -> QueryScores<'_> {
        match among {
            Among::Scope { .. } => {
                let scope_in = self.scope_filter(among);
                self.keywords.query(terms, |scope| scope_in[scope])
            }
            Among::All | Among::Pks(_) => self.keywords.query(terms, |_| true),
        }
    }

    /// One keyword pass for a search: up to `k` memories `among` selects,
    /// best BM25 first (ties by id), the rows in `expired` left out; and
    /// the query's scores, for the relevance of any other memory by id.
    pub fn keyword_search(
        &self,
        terms: &[String],
        among: Among<'_>,
        k: usize,
        expired: &HashSet<i64>,
    ) -> (Vec<(i64, MemoryId, f32)>, QueryScores<'_>) {
        let scores = self.keyword_query(terms, among);
        let best = scores.best(k, |pk| !expired.contains(&pk) && among.admits_pk(pk));
        (best, scores)
    }

    /// Whether each scope of `scope_names` is in `among`'s agent and run
    /// (empty for the other kinds).
    fn scope_filter(&self, among: Among<'_>) -> Vec<bool> {
        match among {
            Among::Scope { agent_id, run_id } => self
                .scope_names
                .iter()
                .map(|(a, r)| {
                    agent_id.is_none_or(|want| a.as_deref() == Some(want))
                        && run_id.is_none_or(|want| r.as_deref() == Some(want))
                })
                .collect(),
            _ => Vec::new(),
        }
    }

    /// The `k` rows most similar to `query` (approximate cosine), best first.
    pub fn top_k(&self, query: &[f32], k: usize) -> Vec<Scored> {
        self.top_k_among(query, k, Among::All)
    }

    /// Up to `k` rows whose approximate cosine with `query` reaches
    /// `min_score`, best first: the near-duplicate check. A copy of
    /// [`SKETCH_FROM_ROWS`] rows or more is first narrowed by sketch (see
    /// [`sketch`]), which reads a twelfth of the bytes of a full scan at 384
    /// dimensions; a smaller one is scanned in full.
    pub fn near(&self, query: &[f32], min_score: f32, k: usize) -> Vec<Scored> {
        if self.pks.len() >= SKETCH_FROM_ROWS {
            self.near_by_sketch(query, min_score, k)
        } else {
            let mut best = self.top_k(query, k);
            best.retain(|s| s.score >= min_score);
            best
        }
    }

    /// [`Self::near`] through the sketches, whatever the copy's size.
    fn near_by_sketch(&self, query: &[f32], min_score: f32, k: usize) -> Vec<Scored> {
        if k == 0 {
            return Vec::new();
        }
        let rows = sketch::within(
            &sketch::sketch(query),
            &self.sketches,
            sketch::max_distance(min_score),
        );
        let mut q = Vec::with_capacity(self.dims);
        let q_inv = quantise_into(query, &mut q);
        let mut scores = vec![0.0f32; rows.len()];
        scan_rows(&q, &self.codes, self.dims, &rows, &mut scores);
        let scored = rows
            .into_iter()
            .zip(scores)
            .map(|(i, score)| (i, score * q_inv * self.inv_scales[i]))
            .filter(|&(_, score)| score >= min_score);
        self.best(scored, k)
    }

    /// The `k` best of `scored` (row, approximate cosine) as results, best first.
    fn best(&self, scored: impl Iterator<Item = (usize, f32)>, k: usize) -> Vec<Scored> {
        best_k(scored, k)
            .into_iter()
            .map(|(i, score)| Scored {
                pk: self.pks[i],
                id: self.ids[i],
                score,
            })
            .collect()
    }

    /// As [`Self::top_k`], counting only the rows `among` selects.
    pub fn top_k_among(&self, query: &[f32], k: usize, among: Among<'_>) -> Vec<Scored> {
        if self.pks.is_empty() || k == 0 {
            return Vec::new();
        }
        let scope_in = self.scope_filter(among);
        let counted = |i: usize| match among {
            Among::All => true,
            Among::Scope { .. } => scope_in[self.scopes[i]],
            Among::Pks(allowed) => allowed.contains(&self.pks[i]),
        };
        if matches!(among, Among::Scope { .. }) && !scope_in.contains(&true) {
            return Vec::new();
        }
        let mut q = Vec::with_capacity(self.dims);
        let q_inv = quantise_into(query, &mut q);
        let mut scores = scratch::take_scores(self.pks.len());
        scan_parallel(&q, &self.codes, self.dims, &mut scores);
        let scored = scores
            .iter()
            .zip(&self.inv_scales)
            .map(|(&s, &inv)| s * q_inv * inv)
            .enumerate()
            .filter(|&(i, _)| counted(i));
        let best = self.best(scored, k);
        scratch::give_scores(scores);
        best
    }
}

/// What the sketch pass of the near-duplicate check kept, measured
/// against a full scan ([`sketch_recall`]).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct SketchRecall {
    /// Queries asked.
    pub queries: usize,
    /// Rows a full scan found at or above the cosine, over all queries.
    pub near: usize,
    /// Of those, rows the sketch pass found too.
    pub found: usize,
    /// Rows the sketch pass left to score, over all queries.
    pub scored: usize,
    /// Rows in the copy.
    pub rows: usize,
    /// Time spent in the sketch pass and its scoring, over all queries.
    pub sketched_time: std::time::Duration,
    /// Time spent in full scans, over all queries.
    pub full_time: std::time::Duration,
}

/// For `engram bench`: loads `rows` into a copy and asks, for each of
/// `queries`, which rows reach `min_score` (up to 64) by a full scan and by
/// the sketch pass.
pub fn sketch_recall(rows: &[Vec<f32>], queries: &[Vec<f32>], min_score: f32) -> SketchRecall {
    const K: usize = 64;
    let dims = rows.first().map_or(0, Vec::len);
    let mut copy = UserVectors::new(dims);
    copy.reset(0);
    let none = crate::keywords::document_terms("");
    for (pk, v) in rows.iter().enumerate() {
        copy.push(RowOf::new(pk as i64, MemoryId::new()), v, &none);
    }
    let max = sketch::max_distance(min_score);
    let mut recall = SketchRecall {
        queries: queries.len(),
        rows: rows.len(),
        ..SketchRecall::default()
    };
    for q in queries {
        let started = std::time::Instant::now();
        let full = copy.top_k(q, K);
        recall.full_time += started.elapsed();
        let full: HashSet<i64> = full
            .into_iter()
            .filter(|s| s.score >= min_score)
            .map(|s| s.pk)
            .collect();
        let started = std::time::Instant::now();
        let sketched = copy.near_by_sketch(q, min_score, K);
        recall.sketched_time += started.elapsed();
        recall.near += full.len();
        recall.found += sketched.iter().filter(|s| full.contains(&s.pk)).count();
        recall.scored += sketch::within(&sketch::sketch(q), &copy.sketches, max).len();
    }
    recall
}

/// One row of a scan result.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Scored {
    pub pk: i64,
    pub id: MemoryId,
    /// Approximate cosine similarity.
    pub score: f32,
}

/// Appends the 8-bit codes of `v` to `out`; returns the factor that maps a
/// code dot product back to the real scale.
fn quantise_into(v: &[f32], out: &mut Vec<i8>) -> f32 {
    let max = v.iter().fold(0.0f32, |m, x| m.max(x.abs()));
    if max == 0.0 {
        out.extend(std::iter::repeat_n(0i8, v.len()));
        return 0.0;
    }
    let scale = 127.0 / max;
    out.extend(v.iter().map(|x| (x * scale).round() as i8));
    1.0 / scale
}

/// The `k` best `(row, score)` pairs, best first: one pass keeping the `k`
/// best so far in a heap, so a scan of n rows allocates O(k), not O(n).
fn best_k(scored: impl Iterator<Item = (usize, f32)>, k: usize) -> Vec<(usize, f32)> {
    /// Ordered so that the heap's top is the worst entry kept.
    struct Kept(usize, f32);
    impl PartialEq for Kept {
        fn eq(&self, other: &Self) -> bool {
            self.cmp(other) == std::cmp::Ordering::Equal
        }
    }
    impl Eq for Kept {}
    impl PartialOrd for Kept {
        fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
            Some(self.cmp(other))
        }
    }
    impl Ord for Kept {
        fn cmp(&self, other: &Self) -> std::cmp::Ordering {
            other.1.total_cmp(&self.1).then(self.0.cmp(&other.0))
        }
    }
    let mut heap = std::collections::BinaryHeap::with_capacity(k + 1);
    for (row, score) in scored {
        if heap.len() < k {
            heap.push(Kept(row, score));
        } else if let Some(mut worst) = heap.peek_mut()
            && score > worst.1
        {
            *worst = Kept(row, score);
        }
    }
    let mut best: Vec<(usize, f32)> = heap.into_iter().map(|Kept(row, s)| (row, s)).collect();
    best.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    best
}

/// How far below the dedup threshold an approximate score may be and
/// still get an exact check (the 8-bit scores are within about 0.01).
pub const DEDUP_MARGIN: f32 = 0.05;

/// Rows from which [`UserVectors::near`] narrows by sketch first. Below,
/// a full scan costs under half a millisecond.
pub const SKETCH_FROM_ROWS: usize = 8 * 1024;

/// Rows per thread below which a scan stays on the calling thread (a thread
/// costs tens of microseconds; a 16k-row slice takes about a millisecond).
const ROWS_PER_THREAD: usize = 16 * 1024;

/// Integer dot products of `q` with every row of `codes`, into `scores`,
/// split across the machine's cores when there are enough rows to pay for it.
fn scan_parallel(q: &[i8], codes: &[i8], dims: usize, scores: &mut [f32]) {
    let threads = std::thread::available_parallelism()
        .map(usize::from)
        .unwrap_or(1)
        .min(scores.len() / ROWS_PER_THREAD)
        .max(1);
    if threads == 1 {
        return scan(q, codes, dims, scores);
    }
    let rows_each = scores.len().div_ceil(threads);
    // The calling thread scans the first slice itself: one thread fewer to
    // start (each maps and unmaps its stack).
    let mut slices = codes
        .chunks(rows_each * dims)
        .zip(scores.chunks_mut(rows_each));
    let Some((own_codes, own_scores)) = slices.next() else {
        return;
    };
    std::thread::scope(|s| {
        for (codes, scores) in slices {
            s.spawn(move || scan(q, codes, dims, scores));
        }
        scan(q, own_codes, dims, own_scores);
    });
}

/// Integer dot products of `q` with every row of `codes`, into `scores`.
fn scan(q: &[i8], codes: &[i8], dims: usize, scores: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU supports AVX2, checked just above.
            unsafe { avx2::scan(q, codes, dims, scores) };
            return;
        }
    }
    scan_portable(q, codes, dims, scores);
}

/// Integer dot products of `q` with the rows `rows` of `codes`, into `scores`.
fn scan_rows(q: &[i8], codes: &[i8], dims: usize, rows: &[usize], scores: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU supports AVX2, checked just above.
            unsafe { avx2::scan_rows(q, codes, dims, rows, scores) };
            return;
        }
    }
    for (&row, score) in rows.iter().zip(scores.iter_mut()) {
        *score = dot_i8(&codes[row * dims..(row + 1) * dims], q) as f32;
    }
}

fn scan_portable(q: &[i8], codes: &[i8], dims: usize, scores: &mut [f32]) {
    for (row, score) in codes.chunks_exact(dims).zip(scores.iter_mut()) {
        *score = dot_i8(row, q) as f32;
    }
}

/// The integer dot product of two codes of levels within -127..=127 (this
/// index's, and PostgreSQL copies' `copy_codes`), with AVX2 where the CPU
/// has it.
pub(crate) fn dot_codes(a: &[i8], b: &[i8]) -> i32 {
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU supports AVX2, checked just above.
            return unsafe { avx2::dot(a, b) };
        }
    }
    dot_i8(a, b)
}

fn dot_i8(a: &[i8], b: &[i8]) -> i32 {
    a.iter()
        .zip(b)
        .map(|(&x, &y)| i32::from(x) * i32::from(y))
        .sum()
}

/// 32 products per step: `maddubs` multiplies unsigned by signed bytes, so
/// |a| is paired with b carrying a's sign. Codes are within -127..=127 (see
/// [`quantise_into`]), so |a| fits a byte and a pair sum (at most 2 * 127 * 127)
/// cannot saturate 16 bits.
#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    #[target_feature(enable = "avx2")]
    pub unsafe fn scan(q: &[i8], codes: &[i8], dims: usize, scores: &mut [f32]) {
        for (row, score) in codes.chunks_exact(dims).zip(scores.iter_mut()) {
            // SAFETY: AVX2 is enabled for this function; slices are equal-length.
            *score = unsafe { dot(row, q) } as f32;
        }
    }

    /// Rows ahead whose codes are fetched into cache while one is scored:
    /// the rows are scattered over the copy, so each would otherwise wait
    /// on memory.
    const PREFETCH_AHEAD: usize = 4;

    #[target_feature(enable = "avx2")]
    pub unsafe fn scan_rows(
        q: &[i8],
        codes: &[i8],
        dims: usize,
        rows: &[usize],
        scores: &mut [f32],
    ) {
        for (k, (&row, score)) in rows.iter().zip(scores.iter_mut()).enumerate() {
            if let Some(&ahead) = rows.get(k + PREFETCH_AHEAD) {
                let start = ahead * dims;
                let mut at = start;
                while at < start + dims {
                    // SAFETY: `at` is inside `codes` (the row is), and a
                    // prefetch never faults.
                    unsafe { _mm_prefetch::<_MM_HINT_T0>(codes.as_ptr().add(at).cast()) };
                    at += 64;
                }
            }
            // SAFETY: AVX2 is enabled for this function; slices are equal-length.
            *score = unsafe { dot(&codes[row * dims..(row + 1) * dims], q) } as f32;
        }
    }

    #[target_feature(enable = "avx2")]
    pub unsafe fn dot(a: &[i8], b: &[i8]) -> i32 {
        let n = a.len().min(b.len());
        let ones = _mm256_set1_epi16(1);
        let mut acc = _mm256_setzero_si256();
        let mut i = 0;
        while i + 32 <= n {
            // SAFETY: i + 32 <= n, so both 32-byte loads are in bounds.
            let (va, vb) = unsafe {
                (
                    _mm256_loadu_si256(a.as_ptr().add(i).cast()),
                    _mm256_loadu_si256(b.as_ptr().add(i).cast()),
                )
            };
            let pairs = _mm256_maddubs_epi16(_mm256_sign_epi8(va, va), _mm256_sign_epi8(vb, va));
            acc = _mm256_add_epi32(acc, _mm256_madd_epi16(pairs, ones));
            i += 32;
        }
        let lanes = _mm_add_epi32(
            _mm256_castsi256_si128(acc),
            _mm256_extracti128_si256(acc, 1),
        );
        let lanes = _mm_add_epi32(lanes, _mm_shuffle_epi32(lanes, 0b01_00_11_10));
        let lanes = _mm_add_epi32(lanes, _mm_shuffle_epi32(lanes, 0b10_11_00_01));
        _mm_cvtsi128_si32(lanes) + super::dot_i8(&a[i..n], &b[i..n])
    }
}

/// All users' copies. Each user's copy sits behind its own async lock: scans
/// share it, writers and reloads take it exclusively.
#[derive(Debug)]
pub struct VectorIndex {
    dims: usize,
    budget_bytes: usize,
    state: Mutex<Slots>,
}

#[derive(Debug, Default)]
struct Slots {
    tick: u64,
    by_user: HashMap<String, Slot>,
}

#[derive(Debug)]
struct Slot {
    vectors: Arc<RwLock<UserVectors>>,
    bytes: Arc<AtomicUsize>,
    last_used: u64,
}

/// Default budget for all users' copies together.
pub const DEFAULT_BUDGET_BYTES: usize = 512 * 1024 * 1024;

impl VectorIndex {
    pub fn new(dims: usize, budget_bytes: usize) -> Self {
        Self {
            dims,
            budget_bytes,
            state: Mutex::default(),
        }
    }

    /// The user's copy (empty and unloaded if new), marked as just used.
    pub fn user(&self, user_id: &str) -> Arc<RwLock<UserVectors>> {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        state.tick += 1;
        let tick = state.tick;
        let slot = state.by_user.entry(user_id.to_owned()).or_insert_with(|| {
            let vectors = UserVectors::new(self.dims);
            Slot {
                bytes: vectors.bytes.clone(),
                vectors: Arc::new(RwLock::new(vectors)),
                last_used: tick,
            }
        });
        slot.last_used = tick;
        let vectors = slot.vectors.clone();
        self.evict_over_budget(&mut state, user_id);
        vectors
    }

    pub fn drop_user(&self, user_id: &str) {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        state.by_user.remove(user_id);
    }

    /// Drops least recently used copies, other than `keep`'s, until within budget.
    fn evict_over_budget(&self, state: &mut Slots, keep: &str) {
        let bytes = |slot: &Slot| slot.bytes.load(Ordering::Relaxed);
        let mut total: usize = state.by_user.values().map(bytes).sum();
        while total > self.budget_bytes {
            let victim = state
                .by_user
                .iter()
                .filter(|(user, _)| user.as_str() != keep)
                .min_by_key(|(_, slot)| slot.last_used)
                .map(|(user, slot)| (user.clone(), bytes(slot)));
            let Some((user, freed)) = victim else { break };
            state.by_user.remove(&user);
            total -= freed;
            tracing::debug!(user_id = %user, freed, "dropped a user's cached vectors");
        }
    }

    #[cfg(test)]
    fn cached_users(&self) -> Vec<String> {
        let state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let mut users: Vec<String> = state.by_user.keys().cloned().collect();
        users.sort();
        users
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::embed::{HashEmbedder, dot};
    use crate::keywords::document_terms;

    /// `dot_codes` (AVX2 where the CPU has it) is the plain integer dot
    /// product, whatever the length (whole 32-byte steps and a tail), at
    /// the extremes of the levels too.
    #[test]
    fn the_codes_dot_is_the_plain_integer_dot() {
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut level = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            ((state % 255) as i32 - 127) as i8
        };
        for len in [0, 1, 31, 32, 33, 64, 384, 1536, 1537] {
            let a: Vec<i8> = (0..len).map(|_| level()).collect();
            let b: Vec<i8> = (0..len).map(|_| level()).collect();
            assert_eq!(dot_codes(&a, &b), dot_i8(&a, &b), "length {len}");
            let high = vec![127i8; len];
            let low = vec![-127i8; len];
            assert_eq!(dot_codes(&high, &low), -(127 * 127) * len as i32);
            assert_eq!(dot_codes(&low, &low), 127 * 127 * len as i32);
        }
    }

    #[test]
    fn best_k_keeps_the_k_highest_in_order_as_a_full_sort_would() {
        // Scores with ties, negatives and more rows than k.
        let scores: Vec<f32> = (0..200)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 7.0)
            .collect();
        for k in [1, 5, 10, 200, 500] {
            let mut sorted: Vec<(usize, f32)> = scores.iter().copied().enumerate().collect();
            sorted.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
            sorted.truncate(k);
            let got = best_k(scores.iter().copied().enumerate(), k);
            let got_scores: Vec<f32> = got.iter().map(|&(_, s)| s).collect();
            let want_scores: Vec<f32> = sorted.iter().map(|&(_, s)| s).collect();
            assert_eq!(got_scores, want_scores, "k = {k}");
            assert!(got.iter().all(|&(row, s)| scores[row] == s));
        }
        assert!(best_k(std::iter::empty(), 3).is_empty());
    }

    /// The copy says which rows have expired at a time, as rows come and
    /// go by every path (one removal, many, a reload).
    #[test]
    fn expired_rows_are_those_due_at_the_time_asked() {
        let mut uv = UserVectors::new(8);
        uv.reset(1);
        let expiring = |pk: i64, at: Option<i64>| RowOf {
            expires_at: at,
            ..RowOf::new(pk, MemoryId::new())
        };
        for (pk, at) in [(1, None), (2, Some(100)), (3, Some(200)), (4, Some(300))] {
            uv.push(expiring(pk, at), &[0.5; 8], &document_terms(""));
        }
        let at = |uv: &UserVectors, now: i64| -> Vec<i64> {
            let mut pks: Vec<i64> = uv.expired(now).into_iter().collect();
            pks.sort_unstable();
            pks
        };
        assert_eq!(at(&uv, 99), Vec::<i64>::new());
        assert_eq!(at(&uv, 100), vec![2], "due at its own time");
        assert_eq!(at(&uv, 250), vec![2, 3]);
        // Removing row 2 moves the last row (4) into its place.
        uv.remove(2);
        assert_eq!(at(&uv, 1000), vec![3, 4]);
        uv.remove_many(&[3].into_iter().collect());
        assert_eq!(at(&uv, 1000), vec![4]);
        assert_eq!(uv.expiring, 1);
        uv.remove(4);
        assert_eq!(uv.expiring, 0, "no row left with an expiry");
        assert_eq!(at(&uv, i64::MAX - 1), Vec::<i64>::new());
        uv.push(expiring(5, Some(10)), &[0.5; 8], &document_terms(""));
        uv.reset(2);
        assert_eq!((uv.expiring, at(&uv, 1000)), (0, vec![]));
    }

    #[test]
    fn removing_many_rows_keeps_the_others_and_their_vectors() {
        let e = HashEmbedder::new(64);
        let texts: Vec<String> = (0..20).map(|i| format!("row {i} of {}", i * 7)).collect();
        let mut uv = UserVectors::new(64);
        uv.reset(1);
        let ids: Vec<MemoryId> = (0..20).map(|_| MemoryId::new()).collect();
        for (i, t) in texts.iter().enumerate() {
            uv.push(
                RowOf::new(i as i64, ids[i]),
                &e.embed(t),
                &document_terms(t),
            );
        }
        let gone: HashSet<i64> = [0, 3, 4, 19, 99].into_iter().collect();
        uv.remove_many(&gone);
        assert_eq!(uv.pks.len(), 16);
        assert_eq!(uv.pks.len(), 16);
        for (i, t) in texts.iter().enumerate() {
            let best = uv.top_k(&e.embed(t), 1);
            if gone.contains(&(i as i64)) {
                assert_ne!(best[0].pk, i as i64);
            } else {
                assert_eq!((best[0].pk, best[0].id), (i as i64, ids[i]), "{t}");
                assert!(best[0].score > 0.97, "{t}: {}", best[0].score);
            }
        }
    }

    #[test]
    fn approximate_scores_track_exact_cosine_and_rank_the_same() {
        let e = HashEmbedder::new(384);
        let texts: Vec<String> = (0..200)
            .map(|i| format!("note {i} about topic {} and place {}", i % 17, i % 11))
            .collect();
        let mut uv = UserVectors::new(384);
        uv.reset(1);
        let vecs: Vec<Vec<f32>> = texts.iter().map(|t| e.embed(t)).collect();
        for (i, v) in vecs.iter().enumerate() {
            uv.push(
                RowOf::new(i as i64, MemoryId::new()),
                v,
                &document_terms(&texts[i]),
            );
        }
        let q = e.embed("topic 3 and place 5");
        let approx = uv.top_k(&q, 10);
        for hit in &approx {
            let exact = dot(&q, &vecs[hit.pk as usize]);
            assert!(
                (exact - hit.score).abs() < 0.02,
                "approx {} exact {exact}",
                hit.score
            );
        }
        let mut exact: Vec<(usize, f32)> = vecs
            .iter()
            .enumerate()
            .map(|(i, v)| (i, dot(&q, v)))
            .collect();
        exact.sort_by(|a, b| b.1.total_cmp(&a.1));
        assert_eq!(approx[0].pk as usize, exact[0].0);
    }

    /// The sketch pass drops nothing a full scan finds: near-repeats of
    /// memories (a word or a number changed) over hash vectors, checked
    /// after rows were replaced and removed, so the sketches stay aligned.
    #[test]
    fn the_sketch_pass_finds_every_near_row_a_full_scan_finds() {
        let e = HashEmbedder::new(384);
        let subjects = ["My sister", "My boss", "Our neighbour", "The user"];
        let verbs = ["likes", "hates", "collects", "writes about"];
        let things = [
            "espresso",
            "green tea",
            "old maps",
            "jazz records",
            "trail running",
        ];
        let text = |i: usize| {
            format!(
                "{} {} {} in {} (note {})",
                subjects[i % 4],
                verbs[i / 4 % 4],
                things[i / 16 % 5],
                ["Lisbon", "Oslo", "Quito"][i / 80 % 3],
                i % 50
            )
        };
        let mut uv = UserVectors::new(384);
        uv.reset(1);
        for i in 0..2000 {
            uv.push(
                RowOf::new(i as i64, MemoryId::new()),
                &e.embed(&text(i)),
                &document_terms(&text(i)),
            );
        }
        let sailing = "Something else entirely, about sailing";
        uv.replace(5, &e.embed(sailing), &document_terms(sailing));
        uv.remove(6);
        uv.remove_many(&HashSet::from([7, 8, 1999]));
        let (mut compared, mut found) = (0, 0);
        for i in (0..2400).step_by(7) {
            let query = e.embed(&text(i));
            let mut full = uv.top_k(&query, 8);
            full.retain(|s| s.score >= 0.85);
            let sketched = uv.near_by_sketch(&query, 0.85, 8);
            let pks = |hits: &[Scored]| hits.iter().map(|s| s.pk).collect::<Vec<_>>();
            // Ties at the cut may fall either way; compare what both agree is in.
            let cut = full.last().map_or(f32::MAX, |s| s.score);
            let above = |hits: &[Scored]| {
                let mut pks: Vec<i64> = hits
                    .iter()
                    .filter(|s| s.score > cut)
                    .map(|s| s.pk)
                    .collect();
                pks.sort_unstable();
                pks
            };
            assert_eq!(
                above(&full),
                above(&sketched),
                "query {i}: {:?} vs {:?}",
                pks(&full),
                pks(&sketched)
            );
            assert_eq!(full.len(), sketched.len(), "query {i}");
            compared += 1;
            found += full.len();
        }
        assert!(
            found > compared * 4,
            "the queries had near rows to find: {found}"
        );
        assert!(
            uv.near_by_sketch(&e.embed("Something else entirely, about sailing"), 0.85, 8)[0].pk
                == 5
        );
    }

    #[test]
    fn the_simd_scan_matches_the_portable_one() {
        let dims = 100; // not a multiple of 32: exercises the tail
        let mut state = 7u32;
        let mut byte = || {
            state = state.wrapping_mul(1_103_515_245).wrapping_add(12_345);
            ((state >> 16) % 255) as i32 - 127
        };
        let q: Vec<i8> = (0..dims).map(|_| byte() as i8).collect();
        let codes: Vec<i8> = (0..dims * 50).map(|_| byte() as i8).collect();
        let mut fast = vec![0.0; 50];
        let mut slow = vec![0.0; 50];
        scan(&q, &codes, dims, &mut fast);
        scan_portable(&q, &codes, dims, &mut slow);
        assert_eq!(fast, slow);
        let extremes = vec![127i8; 64];
        let negative = vec![-127i8; 64];
        let mut out = vec![0.0; 1];
        scan(&extremes, &negative, 64, &mut out);
        assert_eq!(out[0], -(127.0 * 127.0 * 64.0));
    }

    #[test]
    fn a_split_scan_matches_a_single_one() {
        let dims = 40;
        let rows = 2 * ROWS_PER_THREAD + 7;
        let q: Vec<i8> = (0..dims).map(|i| (i as i8) - 20).collect();
        let codes: Vec<i8> = (0..rows * dims)
            .map(|i| ((i * 31) % 255) as i32 as i8)
            .collect();
        let mut single = vec![0.0; rows];
        let mut split = vec![0.0; rows];
        scan(&q, &codes, dims, &mut single);
        scan_parallel(&q, &codes, dims, &mut split);
        assert_eq!(single, split);
    }

    /// A row of eight equal components and no terms.
    fn push_plain(v: &mut UserVectors, pk: i64) {
        v.push(
            RowOf::new(pk, MemoryId::new()),
            &[0.5; 8],
            &document_terms(""),
        );
    }

    #[tokio::test]
    async fn least_recently_used_users_are_dropped_past_the_budget() {
        let dims = 8;
        let mut probe = UserVectors::new(dims);
        for pk in 0..10 {
            push_plain(&mut probe, pk);
        }
        let row_bytes = probe.bytes.load(Ordering::Relaxed) / 10;
        assert!(row_bytes > dims, "a row counts its codes and more");
        let index = VectorIndex::new(dims, 25 * row_bytes);
        for user in ["a", "b", "c"] {
            let vectors = index.user(user);
            let mut v = vectors.write().await;
            v.reset(1);
            for pk in 0..10 {
                push_plain(&mut v, pk);
            }
        }
        // 30 rows cached, budget 25: asking for "c" again drops "a", the oldest.
        index.user("c");
        assert_eq!(index.cached_users(), ["b", "c"]);
        // The one being asked for stays even when it alone is over budget.
        let big = index.user("b");
        push_plain(&mut *big.write().await, 99);
        let vectors = index.user("b");
        for pk in 100..120 {
            push_plain(&mut *vectors.write().await, pk);
        }
        index.user("b");
        assert_eq!(index.cached_users(), ["b"]);
    }

    #[test]
    fn top_k_among_counts_only_allowed_rows() {
        let e = HashEmbedder::new(64);
        let mut uv = UserVectors::new(64);
        uv.reset(1);
        for (pk, agent, run, t) in [
            (1, Some("a"), None, "red apples"),
            (2, Some("b"), Some("r"), "red apple pie"),
            (3, None, Some("r"), "blue sky"),
            (4, Some("b"), None, "red sky"),
        ] {
            uv.push(
                RowOf {
                    agent_id: agent,
                    run_id: run,
                    ..RowOf::new(pk, MemoryId::new())
                },
                &e.embed(t),
                &document_terms(t),
            );
        }
        let q = e.embed("red apples");
        let pks = |uv: &UserVectors, among| -> Vec<i64> {
            let mut pks: Vec<i64> = uv.top_k_among(&q, 5, among).iter().map(|s| s.pk).collect();
            pks.sort_unstable();
            pks
        };
        let only: HashSet<i64> = [2, 3].into();
        let none: HashSet<i64> = HashSet::new();
        assert_eq!(pks(&uv, Among::Pks(&only)), vec![2, 3]);
        assert!(pks(&uv, Among::Pks(&none)).is_empty());
        let scope = |agent_id, run_id| Among::Scope { agent_id, run_id };
        assert_eq!(pks(&uv, scope(Some("b"), None)), vec![2, 4]);
        assert_eq!(pks(&uv, scope(None, Some("r"))), vec![2, 3]);
        assert_eq!(pks(&uv, scope(Some("b"), Some("r"))), vec![2]);
        assert!(pks(&uv, scope(Some("c"), None)).is_empty());
        assert_eq!(pks(&uv, scope(None, None)), vec![1, 2, 3, 4]);
        assert_eq!(uv.top_k(&q, 1)[0].pk, 1);
        // Removing a row keeps each row's scope with it.
        uv.remove(1);
        assert_eq!(pks(&uv, scope(Some("b"), None)), vec![2, 4]);
        assert!(pks(&uv, scope(Some("a"), None)).is_empty());
    }

    #[test]
    fn replace_changes_the_vector_and_keeps_the_scope() {
        let e = HashEmbedder::new(32);
        let mut uv = UserVectors::new(32);
        uv.reset(1);
        uv.push(
            RowOf {
                agent_id: Some("a"),
                run_id: None,
                ..RowOf::new(7, MemoryId::new())
            },
            &e.embed("alpha"),
            &document_terms("alpha"),
        );
        uv.push(
            RowOf {
                agent_id: Some("b"),
                run_id: None,
                ..RowOf::new(8, MemoryId::new())
            },
            &e.embed("bravo"),
            &document_terms("bravo"),
        );
        uv.replace(7, &e.embed("charlie"), &document_terms("charlie"));
        let among = Among::Scope {
            agent_id: Some("a"),
            run_id: None,
        };
        let top = uv.top_k_among(&e.embed("charlie"), 1, among);
        assert_eq!(top[0].pk, 7);
        assert!(top[0].score > 0.98);
    }

    #[test]
    fn remove_keeps_rows_aligned() {
        let e = HashEmbedder::new(32);
        let mut uv = UserVectors::new(32);
        uv.reset(1);
        for (pk, t) in [(10, "alpha"), (11, "bravo"), (12, "charlie")] {
            uv.push(
                RowOf::new(pk, MemoryId::new()),
                &e.embed(t),
                &document_terms(t),
            );
        }
        uv.remove(10);
        assert_eq!(uv.top_k(&e.embed("x"), 10).len(), 2);
        let top = uv.top_k(&e.embed("charlie"), 1);
        assert_eq!(top[0].pk, 12);
        assert!(top[0].score > 0.98);
    }
}
