//! The offline embedder: feature hashing of words and character trigrams.
//!
//! Each lower-cased word adds weight to one signed bucket, and each trigram of
//! `#word#` adds a smaller weight to another, so texts sharing words or word
//! pieces point the same way. Deterministic across runs and machines (FNV-1a,
//! no random seeds); the identity carries a version so a change of scheme is
//! caught by the store's embedder check.

use async_trait::async_trait;

use super::{EmbedError, Embedder, EmbedderIdentity};

const WORD_WEIGHT: f32 = 1.0;
const TRIGRAM_WEIGHT: f32 = 0.35;

#[derive(Debug, Clone)]
pub struct HashEmbedder {
    dims: usize,
}

impl HashEmbedder {
    pub fn new(dims: usize) -> Self {
        Self { dims: dims.max(1) }
    }

    /// Embeds one text synchronously (it is pure CPU work of a few microseconds).
    pub fn embed(&self, text: &str) -> Vec<f32> {
        let mut v = vec![0.0f32; self.dims];
        let mut buf = String::new();
        for word in words(text) {
            self.add(&mut v, fnv1a(word.as_bytes(), 0), WORD_WEIGHT);
            buf.clear();
            buf.push('#');
            buf.push_str(&word);
            buf.push('#');
            let chars: Vec<char> = buf.chars().collect();
            for w in chars.windows(3) {
                let gram: String = w.iter().collect();
                self.add(&mut v, fnv1a(gram.as_bytes(), 1), TRIGRAM_WEIGHT);
            }
        }
        normalise(&mut v);
        v
    }

    fn add(&self, v: &mut [f32], h: u64, weight: f32) {
        let bucket = (h % self.dims as u64) as usize;
        let sign = if (h >> 63) == 0 { 1.0 } else { -1.0 };
        v[bucket] += sign * weight;
    }
}

#[async_trait]
impl Embedder for HashEmbedder {
    fn identity(&self) -> EmbedderIdentity {
        EmbedderIdentity {
            name: "hash-v1".to_owned(),
            dims: self.dims,
        }
    }

    fn is_local(&self) -> bool {
        true
    }

    async fn embed_documents(&self, texts: &[String]) -> Result<Vec<Vec<f32>>, EmbedError> {
        Ok(texts.iter().map(|t| self.embed(t)).collect())
    }

    async fn embed_query(&self, text: &str) -> Result<Vec<f32>, EmbedError> {
        Ok(self.embed(text))
    }
}

/// Lower-cased alphanumeric runs.
fn words(text: &str) -> impl Iterator<Item = String> + '_ {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
}

/// FNV-1a, 64 bit, with a seed byte so words and trigrams land independently.
fn fnv1a(bytes: &[u8], seed: u8) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in std::iter::once(&seed).chain(bytes) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

fn normalise(v: &mut [f32]) {
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm > 0.0 {
        v.iter_mut().for_each(|x| *x /= norm);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::embed::dot;

    #[test]
    fn deterministic_normalised_and_similarity_tracks_overlap() {
        let e = HashEmbedder::new(384);
        let a = e.embed("I love espresso in Lisbon");
        assert_eq!(a, e.embed("I love espresso in Lisbon"));
        assert_eq!(a.len(), 384);
        assert!((dot(&a, &a) - 1.0).abs() < 1e-5);

        let same_words = e.embed("i LOVE espresso, in lisbon!");
        assert!(dot(&a, &same_words) > 0.99);
        let related = e.embed("espresso in Lisbon is great");
        let unrelated = e.embed("my dog is called Rex");
        assert!(dot(&a, &related) > dot(&a, &unrelated));
        assert!(dot(&a, &unrelated) < 0.5);
    }

    #[test]
    fn empty_text_is_the_zero_vector() {
        let v = HashEmbedder::new(16).embed("  ... ");
        assert!(v.iter().all(|x| *x == 0.0));
    }
}
