//! Text to vectors. The [`Embedder`] trait is the seam; `hash` is the offline
//! lexical implementation, `local` a sentence model run in process, `openai`
//! any OpenAI-compatible embeddings server. Vectors are L2-normalised, so cosine similarity is a dot product.
//!
//! Documents (what is stored) and queries (what is searched) go through separate
//! methods because remote models often embed them differently.

pub mod calibration;
mod hash;
pub mod local;
mod openai;
mod timed;

pub use calibration::unrelated_similarity;

pub use hash::HashEmbedder;
pub use local::{LocalEmbedder, LocalSettings};
pub use openai::{InputType, OpenAiEmbedder, OpenAiSettings};
pub use timed::Timed;

use async_trait::async_trait;

/// Which embedder built a vector. The store keeps this and refuses to mix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmbedderIdentity {
    /// e.g. `hash-v1` or `openai:text-embedding-3-small`.
    pub name: String,
    pub dims: usize,
}

impl std::fmt::Display for EmbedderIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({} dims)", self.name, self.dims)
    }
}

impl EmbedderIdentity {
    /// The identity a store recorded (its [`Display`](std::fmt::Display)
    /// form, `name (N dims)`), or `None` for any other text.
    pub fn parse(recorded: &str) -> Option<Self> {
        let (name, rest) = recorded.rsplit_once(" (")?;
        let dims = rest.strip_suffix(" dims)")?.parse().ok()?;
        Some(Self {
            name: name.to_owned(),
            dims,
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum EmbedError {
    #[error("embedding failed: {0}")]
    Failed(String),
}

#[async_trait]
pub trait Embedder: Send + Sync {
    fn identity(&self) -> EmbedderIdentity;

    /// True for in-process embedders, whose vectors cost less to compute than
    /// a cache round trip; query vectors are then never cached.
    fn is_local(&self) -> bool {
        false
    }

    /// What else, beyond the identity, shapes a query's vector (for remote
    /// embedders: the server and the query prefix). Part of its cache key.
    fn query_variant(&self) -> String {
        String::new()
    }

    /// Embeds texts to be stored, in order; one vector per text.
    async fn embed_documents(&self, texts: &[String]) -> Result<Vec<Vec<f32>>, EmbedError>;

    /// Embeds a search query.
    async fn embed_query(&self, text: &str) -> Result<Vec<f32>, EmbedError>;
}

/// A vector's bytes: f32 little-endian, the layout of OpenAI's base64
/// embeddings, of the SQLite store's blobs and of cached query vectors.
pub fn to_le_bytes(vector: &[f32]) -> Vec<u8> {
    vector.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// The vector whose bytes ([`to_le_bytes`]) are `bytes`; `None` unless
/// they are a whole number of floats.
pub fn from_le_bytes(bytes: &[u8]) -> Option<Vec<f32>> {
    if !bytes.len().is_multiple_of(4) {
        return None;
    }
    Some(
        bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
    )
}

/// Whether vectors `a` and `b` might be near-duplicates at `threshold`, with
/// a margin for the rounding of a store that computes the similarity its
/// own way.
pub fn might_be_near(a: &[f32], b: &[f32], threshold: f32) -> bool {
    const ROUNDING: f64 = 1e-4;
    let (mut dot, mut aa, mut bb) = (0f64, 0f64, 0f64);
    for (x, y) in a.iter().zip(b) {
        let (x, y) = (f64::from(*x), f64::from(*y));
        dot += x * y;
        aa += x * x;
        bb += y * y;
    }
    let norms = (aa * bb).sqrt();
    // A zero vector has no direction: treat it as near anything.
    norms == 0.0 || a.len() != b.len() || dot / norms >= f64::from(threshold) - ROUNDING
}

/// Dot product of two equal-length vectors (cosine, for normalised ones).
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}
