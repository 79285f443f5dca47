//! An embedder whose every call is timed into
//! `engram_embedding_duration_seconds` ([`crate::metrics`]): the service
//! wraps whatever embedder it is given, so each kind is measured alike.

use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;

use super::{EmbedError, Embedder, EmbedderIdentity};

pub struct Timed(pub Arc<dyn Embedder>);

impl Timed {
    fn observe(started: Instant) {
        crate::metrics::metrics()
            .embedding_duration
            .observe(started.elapsed().as_secs_f64());
    }
}

#[async_trait]
impl Embedder for Timed {
    fn identity(&self) -> EmbedderIdentity {
        self.0.identity()
    }

    fn is_local(&self) -> bool {
        self.0.is_local()
    }

    fn query_variant(&self) -> String {
        self.0.query_variant()
    }

    async fn embed_documents(&self, texts: &[String]) -> Result<Vec<Vec<f32>>, EmbedError> {
        let started = Instant::now();
        let vectors = self.0.embed_documents(texts).await;
        Self::observe(started);
        vectors
    }

    async fn embed_query(&self, text: &str) -> Result<Vec<f32>, EmbedError> {
        let started = Instant::now();
        let vector = self.0.embed_query(text).await;
        Self::observe(started);
        vector
    }
}
