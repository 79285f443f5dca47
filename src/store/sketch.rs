//! 256-bit sign sketches of vectors: a cheap first pass for the
//! near-duplicate check, which must find every stored vector within a
//! cosine of the new one.
//!
//! A sketch holds the signs of 256 projections of the vector onto fixed
//! pseudo-random hyperplanes (twice: random sign flips, then a
//! Walsh-Hadamard transform; O(d log d) per vector, and 256 distinct
//! directions even for vectors of fewer dimensions). Two vectors at angle θ disagree on
//! each sign with probability about θ/π, so the number of differing bits
//! (the Hamming distance) estimates their angle, and a scan reads 32 bytes
//! per row instead of the 8-bit copy's `dims`.
//!
//! The pass may keep rows that are not close (they are checked afterwards);
//! what matters is that it drops no row that is. [`max_distance`] allows six
//! standard deviations above the expected distance at the angle of the
//! lowest cosine wanted: under the binomial model a row exactly at that
//! cosine is dropped with probability below 1e-8, and closer rows far less
//! often. The miss rate on real data is measured, not assumed: see the unit
//! tests and `engram bench` (docs/benchmarks.md).

/// 64-bit words per sketch.
pub const WORDS: usize = 4;

/// Bits per sketch.
pub const BITS: usize = WORDS * 64;

/// A vector's sketch.
pub type Sketch = [u64; WORDS];

/// Standard deviations of slack above the expected distance.
const SLACK_SD: f64 = 6.0;

/// The sketch of `v`. Equal vectors (up to a positive factor) have equal
/// sketches; the zero vector sketches to all zeros.
pub fn sketch(v: &[f32]) -> Sketch {
    let n = v.len().next_power_of_two().max(BITS);
    let mut x = vec![0.0f32; n];
    x[..v.len()].copy_from_slice(v);
    for round in 0..2 {
        for (i, value) in x.iter_mut().enumerate() {
            if flip(round, i) {
                *value = -*value;
            }
        }
        walsh_hadamard(&mut x);
    }
    let mut bits = [0u64; WORDS];
    for (i, &value) in x.iter().take(BITS).enumerate() {
        if value > 0.0 {
            bits[i / 64] |= 1 << (i % 64);
        }
    }
    bits
}

/// The number of bits in which `a` and `b` differ.
pub fn distance(a: &Sketch, b: &Sketch) -> u32 {
    a.iter().zip(b).map(|(x, y)| (x ^ y).count_ones()).sum()
}

/// The largest distance at which a row may still be within `min_cosine` of
/// the query (see the module's note on the slack).
pub fn max_distance(min_cosine: f32) -> u32 {
    let c = f64::from(min_cosine).clamp(-1.0, 1.0);
    let p = c.acos() / std::f64::consts::PI;
    let bits = BITS as f64;
    let bound = bits * p + SLACK_SD * (bits * p * (1.0 - p)).sqrt();
    // At a cosine of 1 the bound would be 0, but rounding can flip a sign
    // of a projection near zero: allow a few bits.
    (bound.ceil() as u32).max(8)
}

/// Indices of the rows of `sketches` within `max` bits of `query`.
pub fn within(query: &Sketch, sketches: &[Sketch], max: u32) -> Vec<usize> {
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("popcnt") {
            // SAFETY: the CPU has POPCNT, checked just above.
            return unsafe { within_popcnt(query, sketches, max) };
        }
    }
    within_portable(query, sketches, max)
}

fn within_portable(query: &Sketch, sketches: &[Sketch], max: u32) -> Vec<usize> {
    sketches
        .iter()
        .enumerate()
        .filter(|(_, s)| distance(query, s) <= max)
        .map(|(i, _)| i)
        .collect()
}

/// As [`within_portable`], compiled so `count_ones` is one instruction.
/// The loop is written out here: an iterator adapter would be compiled on
/// its own, without the feature.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "popcnt")]
unsafe fn within_popcnt(query: &Sketch, sketches: &[Sketch], max: u32) -> Vec<usize> {
    let mut near = Vec::new();
    for (i, s) in sketches.iter().enumerate() {
        let d = (s[0] ^ query[0]).count_ones()
            + (s[1] ^ query[1]).count_ones()
            + (s[2] ^ query[2]).count_ones()
            + (s[3] ^ query[3]).count_ones();
        if d <= max {
            near.push(i);
        }
    }
    near
}

/// Whether coordinate `i` is negated before transform `round`: a fixed
/// pseudo-random pattern (a 64-bit mix of the two), the same in every
/// process, so sketches never need to be stored.
fn flip(round: u64, i: usize) -> bool {
    let mut z = (i as u64 ^ (round << 32)).wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    (z ^ (z >> 31)) & 1 == 1
}

/// The unnormalised Walsh-Hadamard transform, in place (`x.len()` a power of two).
fn walsh_hadamard(x: &mut [f32]) {
    let mut h = 1;
    while h < x.len() {
        for block in x.chunks_exact_mut(2 * h) {
            let (lo, hi) = block.split_at_mut(h);
            for (a, b) in lo.iter_mut().zip(hi.iter_mut()) {
                let (s, d) = (*a + *b, *a - *b);
                *a = s;
                *b = d;
            }
        }
        h *= 2;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A deterministic generator of normal deviates (xorshift + Box-Muller).
    struct Normal(u64);
    impl Normal {
        fn uniform(&mut self) -> f64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            ((self.0 >> 11) as f64 + 0.5) / (1u64 << 53) as f64
        }
        fn next(&mut self) -> f64 {
            let (u, v) = (self.uniform(), self.uniform());
            (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()
        }
        fn unit(&mut self, dims: usize) -> Vec<f64> {
            let v: Vec<f64> = (0..dims).map(|_| self.next()).collect();
            let norm = v.iter().map(|x| x * x).sum::<f64>().sqrt();
            v.into_iter().map(|x| x / norm).collect()
        }
    }

    /// A unit vector at exactly `cosine` to unit vector `a` (in the plane
    /// of `a` and a random direction).
    fn at_cosine(rng: &mut Normal, a: &[f64], cosine: f64) -> Vec<f64> {
        let r = rng.unit(a.len());
        let along: f64 = r.iter().zip(a).map(|(x, y)| x * y).sum();
        let mut ortho: Vec<f64> = r.iter().zip(a).map(|(x, y)| x - along * y).collect();
        let norm = ortho.iter().map(|x| x * x).sum::<f64>().sqrt();
        ortho.iter_mut().for_each(|x| *x /= norm);
        let sine = (1.0 - cosine * cosine).sqrt();
        a.iter()
            .zip(&ortho)
            .map(|(x, o)| cosine * x + sine * o)
            .collect()
    }

    fn f32s(v: &[f64]) -> Vec<f32> {
        v.iter().map(|&x| x as f32).collect()
    }

    #[test]
    fn the_transform_is_orthogonal_up_to_scale() {
        let mut x = vec![1.0f32, 2.0, 3.0, 4.0, 0.0, 0.0, -1.0, 0.5];
        let energy: f32 = x.iter().map(|v| v * v).sum();
        walsh_hadamard(&mut x);
        let after: f32 = x.iter().map(|v| v * v).sum();
        assert!((after - energy * 8.0).abs() < 1e-3, "{after} vs {energy}");
        walsh_hadamard(&mut x);
        assert_eq!(x[1], 16.0, "applied twice: n times the input");
    }

    #[test]
    fn equal_and_scaled_vectors_share_a_sketch() {
        let mut rng = Normal(7);
        let v = f32s(&rng.unit(384));
        let doubled: Vec<f32> = v.iter().map(|x| x * 2.0).collect();
        assert_eq!(sketch(&v), sketch(&doubled));
        let negated: Vec<f32> = v.iter().map(|x| -x).collect();
        assert!(distance(&sketch(&v), &sketch(&negated)) > 240);
    }

    /// The distance tracks the angle: mean within a few bits of 256·θ/π.
    #[test]
    fn distance_estimates_the_angle() {
        let mut rng = Normal(11);
        for cosine in [0.95, 0.85, 0.5, 0.0] {
            let mut total = 0u64;
            for _ in 0..400 {
                let a = rng.unit(384);
                let b = at_cosine(&mut rng, &a, cosine);
                total += u64::from(distance(&sketch(&f32s(&a)), &sketch(&f32s(&b))));
            }
            let mean = total as f64 / 400.0;
            let expected = BITS as f64 * cosine.acos() / std::f64::consts::PI;
            assert!(
                (mean - expected).abs() < 4.0,
                "cosine {cosine}: mean distance {mean}, expected {expected}"
            );
        }
    }

    /// The miss rate where it matters: 20,000 pairs exactly at the lowest
    /// cosine the dedup check asks for (0.85), in the dimensions engram runs
    /// with, and in a short vector padded up to the sketch's width. None may
    /// be dropped; unrelated vectors almost all are.
    #[test]
    fn no_pair_at_the_wanted_cosine_is_dropped() {
        let max = max_distance(0.85);
        let mut rng = Normal(3);
        for dims in [384, 1536, 8] {
            let mut dropped = 0;
            let mut unrelated_kept = 0;
            for _ in 0..20_000 / 3 {
                let a = rng.unit(dims);
                let b = at_cosine(&mut rng, &a, 0.85);
                let sa = sketch(&f32s(&a));
                if distance(&sa, &sketch(&f32s(&b))) > max {
                    dropped += 1;
                }
                if distance(&sa, &sketch(&f32s(&rng.unit(dims)))) <= max {
                    unrelated_kept += 1;
                }
            }
            assert_eq!(dropped, 0, "{dims} dims: pairs at cosine 0.85 dropped");
            if dims >= 384 {
                assert!(
                    unrelated_kept < 5,
                    "{dims} dims: {unrelated_kept} unrelated kept"
                );
            }
        }
    }

    #[test]
    fn the_bound_grows_as_the_cosine_falls() {
        assert!(max_distance(0.95) < max_distance(0.85));
        assert!(max_distance(0.85) < max_distance(0.5));
        assert!(max_distance(1.0) >= 8);
        assert_eq!(max_distance(-1.0), max_distance(-2.0));
    }

    #[test]
    fn within_finds_the_rows_under_the_bound_on_every_path() {
        let mut rng = Normal(5);
        let rows: Vec<Sketch> = (0..500).map(|_| sketch(&f32s(&rng.unit(64)))).collect();
        let query = rows[17];
        let near = within(&query, &rows, 100);
        assert!(near.contains(&17));
        assert_eq!(near, within_portable(&query, &rows, 100));
        assert!(near.iter().all(|&i| distance(&query, &rows[i]) <= 100));
    }
}
