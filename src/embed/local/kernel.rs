//! The dense layers' product, `out = x W^T + b`, for the few rows a
//! sentence has.
//!
//! A general SGEMM packs `W` into its own layout on every call: for a query
//! of ten tokens that packing reads and writes every weight once more and
//! costs more than the arithmetic. Here each output is a dot product of an
//! input row with a weight row, both contiguous as stored, so the weights are
//! read once, straight from where they were loaded. Four weight rows and two
//! input rows are done together: each load feeds two or four multiply-adds,
//! and the block's weight rows stay in L1 while the input rows go past.
//!
//! On x86-64 with AVX2, FMA and F16C (checked once) the weights are kept as
//! IEEE half floats, widened as they are loaded: half the bytes to read per
//! token, and a small model's encoder fits in the L3 cache. Elsewhere they
//! stay `f32` and a portable loop with eight accumulators, which compilers
//! vectorise, does the work. Half floats keep 11 significant bits; the
//! reference test holds the sentence vectors to a cosine of 0.999 with the
//! reference implementation's, and they reach well above it.

/// A weight matrix `[outs, ins]`, row-major, in the form the CPU runs fastest.
pub enum Weights {
    F32(Vec<f32>),
    /// IEEE binary16 bits (only built where [`has_f16_path`] holds).
    F16(Vec<u16>),
}

impl Weights {
    pub fn new(values: Vec<f32>) -> Self {
        #[cfg(target_arch = "x86_64")]
        {
            if has_f16_path() {
                // SAFETY: the CPU has F16C and AVX2 (has_f16_path).
                return Self::F16(unsafe { avx2::to_f16(&values) });
            }
        }
        Self::F32(values)
    }

    /// Row `i` of a matrix `width` wide, widened into `out`.
    pub fn row(&self, i: usize, width: usize, out: &mut [f32]) {
        let range = i * width..(i + 1) * width;
        match self {
            Self::F32(v) => out.copy_from_slice(&v[range]),
            Self::F16(v) => {
                for (o, h) in out.iter_mut().zip(&v[range]) {
                    *o = super::safetensors::f16_to_f32(*h);
                }
            }
        }
    }

    fn len(&self) -> usize {
        match self {
            Self::F32(v) => v.len(),
            Self::F16(v) => v.len(),
        }
    }
}

/// Whether this CPU runs the AVX2 + FMA kernel with half-float weights.
pub fn has_f16_path() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("avx2")
            && std::is_x86_feature_detected!("fma")
            && std::is_x86_feature_detected!("f16c")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// `out[r * outs + o] = bias[o] + sum_i x[r * ins + i] * w[o * ins + i]`.
///
/// Panics when a slice is shorter than its shape says.
pub fn linear(
    x: &[f32],
    rows: usize,
    ins: usize,
    w: &Weights,
    outs: usize,
    bias: &[f32],
    out: &mut [f32],
) {
    assert!(x.len() >= rows * ins, "linear: x too short");
    assert!(w.len() >= outs * ins, "linear: w too short");
    assert!(bias.len() >= outs, "linear: bias too short");
    assert!(out.len() >= rows * outs, "linear: out too short");
    match w {
        Weights::F32(w) => portable(x, rows, ins, w, outs, bias, out),
        #[cfg(target_arch = "x86_64")]
        // SAFETY: F16 weights exist only where has_f16_path() held, and the
        // asserts above keep every index `blocks` reaches in bounds.
        Weights::F16(w) => unsafe { avx2::blocks(x, rows, ins, w, outs, bias, out) },
        #[cfg(not(target_arch = "x86_64"))]
        Weights::F16(_) => unreachable!("half-float weights are built on x86-64 only"),
    }
}

fn portable(
    x: &[f32],
    rows: usize,
    ins: usize,
    w: &[f32],
    outs: usize,
    bias: &[f32],
    out: &mut [f32],
) {
    for o in 0..outs {
        let wr = &w[o * ins..(o + 1) * ins];
        for r in 0..rows {
            let xr = &x[r * ins..(r + 1) * ins];
            let mut lanes = [0f32; 8];
            let mut wc = wr.chunks_exact(8);
            let mut xc = xr.chunks_exact(8);
            for (a, b) in (&mut wc).zip(&mut xc) {
                for j in 0..8 {
                    lanes[j] += a[j] * b[j];
                }
            }
            let tail: f32 = wc
                .remainder()
                .iter()
                .zip(xc.remainder())
                .map(|(a, b)| a * b)
                .sum();
            out[r * outs + o] = bias[o] + lanes.iter().sum::<f32>() + tail;
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    /// `values` rounded to half floats (to nearest, ties to even).
    ///
    /// # Safety
    /// The CPU must have F16C and AVX2.
    #[target_feature(enable = "avx2,f16c")]
    pub unsafe fn to_f16(values: &[f32]) -> Vec<u16> {
        let mut out = vec![0u16; values.len()];
        let mut chunks = values.chunks_exact(8);
        let mut outs = out.chunks_exact_mut(8);
        for (v, o) in (&mut chunks).zip(&mut outs) {
            // SAFETY: both chunks hold exactly eight elements.
            unsafe {
                let half =
                    _mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(_mm256_loadu_ps(v.as_ptr()));
                _mm_storeu_si128(o.as_mut_ptr().cast(), half);
            }
        }
        for (v, o) in chunks.remainder().iter().zip(outs.into_remainder()) {
            let half = _mm_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(_mm_set_ss(*v));
            *o = _mm_extract_epi16::<0>(half) as u16;
        }
        out
    }

    /// Eight half floats at `p`, widened.
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn load_f16(p: *const u16) -> __m256 {
        // SAFETY: the caller vouches for eight readable elements at `p`.
        _mm256_cvtph_ps(unsafe { _mm_loadu_si128(p.cast()) })
    }

    /// Horizontal sum of eight lanes.
    #[target_feature(enable = "avx2,fma")]
    fn sum(v: __m256) -> f32 {
        let high = _mm256_extractf128_ps(v, 1);
        let low = _mm256_castps256_ps128(v);
        let four = _mm_add_ps(high, low);
        let two = _mm_add_ps(four, _mm_movehl_ps(four, four));
        let one = _mm_add_ss(two, _mm_shuffle_ps(two, two, 1));
        _mm_cvtss_f32(one)
    }

    /// Dot products of `R` input rows with `O` weight rows, over the first
    /// `ins8` (a multiple of 8) columns; the caller adds the tail.
    ///
    /// # Safety
    /// Every pointer must have `ins8` readable elements.
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn tile<const R: usize, const O: usize>(
        xs: [*const f32; R],
        ws: [*const u16; O],
        ins8: usize,
    ) -> [[f32; O]; R] {
        let mut acc = [[_mm256_setzero_ps(); O]; R];
        let mut i = 0;
        while i < ins8 {
            // SAFETY (every load): i + 8 <= ins8, which the rows hold.
            let mut wv = [_mm256_setzero_ps(); O];
            for (o, v) in wv.iter_mut().enumerate() {
                *v = unsafe { load_f16(ws[o].add(i)) };
            }
            for r in 0..R {
                let xv = unsafe { _mm256_loadu_ps(xs[r].add(i)) };
                for o in 0..O {
                    acc[r][o] = _mm256_fmadd_ps(xv, wv[o], acc[r][o]);
                }
            }
            i += 8;
        }
        let mut sums = [[0f32; O]; R];
        for r in 0..R {
            for o in 0..O {
                sums[r][o] = sum(acc[r][o]);
            }
        }
        sums
    }

    /// [`super::linear`] on half-float weights, in tiles of two rows by
    /// four outputs.
    ///
    /// # Safety
    /// The CPU must have AVX2, FMA and F16C, and the slices the shapes they
    /// are given (as `linear` asserts).
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn blocks(
        x: &[f32],
        rows: usize,
        ins: usize,
        w: &[u16],
        outs: usize,
        bias: &[f32],
        out: &mut [f32],
    ) {
        let ins8 = ins - ins % 8;
        let tail = |r: usize, o: usize| -> f32 {
            if ins8 == ins {
                return 0.0;
            }
            (ins8..ins)
                .map(|i| x[r * ins + i] * half_to_f32(w[o * ins + i]))
                .sum()
        };
        let xp = |r: usize| x[r * ins..].as_ptr();
        let wp = |o: usize| w[o * ins..].as_ptr();
        let mut o = 0;
        while o + 4 <= outs {
            let ws = [wp(o), wp(o + 1), wp(o + 2), wp(o + 3)];
            let mut r = 0;
            while r + 2 <= rows {
                // SAFETY: rows r, r+1 and outputs o..o+4 exist, each `ins` long.
                let sums = unsafe { tile::<2, 4>([xp(r), xp(r + 1)], ws, ins8) };
                for (dr, row) in sums.iter().enumerate() {
                    for (d, s) in row.iter().enumerate() {
                        out[(r + dr) * outs + o + d] = bias[o + d] + s + tail(r + dr, o + d);
                    }
                }
                r += 2;
            }
            if r < rows {
                // SAFETY: as above, for the last row.
                let sums = unsafe { tile::<1, 4>([xp(r)], ws, ins8) };
                for (d, s) in sums[0].iter().enumerate() {
                    out[r * outs + o + d] = bias[o + d] + s + tail(r, o + d);
                }
            }
            o += 4;
        }
        while o < outs {
            for r in 0..rows {
                // SAFETY: as above, for one output.
                let sums = unsafe { tile::<1, 1>([xp(r)], [wp(o)], ins8) };
                out[r * outs + o] = bias[o] + sums[0][0] + tail(r, o);
            }
            o += 1;
        }
    }

    /// One half float widened (the tails, under eight columns).
    #[target_feature(enable = "avx2,fma,f16c")]
    fn half_to_f32(h: u16) -> f32 {
        _mm_cvtss_f32(_mm_cvtph_ps(_mm_set1_epi16(h as i16)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plain(x: &[f32], rows: usize, ins: usize, w: &[f32], outs: usize, b: &[f32]) -> Vec<f32> {
        let mut out = vec![0.0; rows * outs];
        for r in 0..rows {
            for o in 0..outs {
                out[r * outs + o] = b[o]
                    + (0..ins)
                        .map(|i| x[r * ins + i] * w[o * ins + i])
                        .sum::<f32>();
            }
        }
        out
    }

    #[test]
    fn every_shape_matches_a_plain_sum() {
        let mut seed = 17u32;
        let mut next = || {
            seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (seed >> 8) as f32 / (1u32 << 24) as f32 - 0.5
        };
        // Odd rows, outputs not a multiple of four, inputs not a multiple of eight.
        for (rows, ins, outs) in [(1, 8, 4), (3, 13, 7), (5, 384, 9), (2, 40, 12), (1, 3, 1)] {
            let x: Vec<f32> = (0..rows * ins).map(|_| next()).collect();
            let w: Vec<f32> = (0..outs * ins).map(|_| next()).collect();
            let b: Vec<f32> = (0..outs).map(|_| next()).collect();
            let want = plain(&x, rows, ins, &w, outs, &b);
            let mut got = vec![0.0; rows * outs];
            linear(&x, rows, ins, &Weights::new(w.clone()), outs, &b, &mut got);
            let mut portable_out = vec![0.0; rows * outs];
            portable(&x, rows, ins, &w, outs, &b, &mut portable_out);
            // Half-float weights keep 11 significant bits.
            for ((g, p), w) in got.iter().zip(&portable_out).zip(&want) {
                assert!((g - w).abs() < 1e-2, "{rows}x{ins}x{outs}: {g} vs {w}");
                assert!((p - w).abs() < 1e-4, "{rows}x{ins}x{outs}: {p} vs {w}");
            }
        }
    }
}
