//! How similar an embedder finds texts that have nothing to do with each
//! other: the floor under which cosine similarity says nothing.
//!
//! Embedders differ wildly here (the offline hash embedder gives unrelated
//! texts ~0.05, E5-style models ~0.7), so a raw cosine cannot be read the same
//! way across embedders. [`unrelated_similarity`] measures it once per
//! process: it embeds fixed memory-like statements as documents and fixed
//! questions on other topics as queries, with the embedder's own document
//! and query paths, and takes the mean cosine of every pair. Nothing in the
//! two lists is about the same thing.

use super::{EmbedError, Embedder, dot};

/// Stored-memory-like statements, embedded as documents.
pub const STATEMENTS: &[&str] = &[
    "I moved to Lisbon last spring and work as a nurse.",
    "My daughter started learning the violin this year.",
    "We adopted a rescue dog called Biscuit.",
    "I'm allergic to peanuts and shellfish.",
    "Our team ships the billing service every Tuesday.",
    "I ran my first half marathon in October.",
    "My grandmother taught me to bake sourdough bread.",
    "I prefer window seats on long flights.",
    "The car needs new tires before winter.",
    "I'm reading a history of the Roman empire.",
    "We painted the kitchen a pale yellow.",
    "My brother lives in Toronto with his wife.",
    "I volunteer at the animal shelter on Saturdays.",
    "The quarterly report is due next Friday.",
    "I've been learning to play chess online.",
    "Our garden has tomatoes, basil and peppers.",
];

/// Questions on other topics, embedded as queries.
pub const QUESTIONS: &[&str] = &[
    "What is the capital of Australia?",
    "How do I reset a router password?",
    "Which planets have rings?",
    "Recommend a laptop for video editing",
    "What time does the pharmacy close?",
    "How many calories are in an avocado?",
    "Explain how vaccines train the immune system",
    "Who won the football match yesterday?",
];

/// The mean cosine similarity the embedder gives a query and a stored text
/// that are unrelated. Costs one document batch and one query per question.
pub async fn unrelated_similarity(embedder: &dyn Embedder) -> Result<f32, EmbedError> {
    let documents = embedder.embed_documents(&statements()).await?;
    let mut queries = Vec::with_capacity(QUESTIONS.len());
    for question in QUESTIONS {
        queries.push(embedder.embed_query(question).await?);
    }
    Ok(mean_similarity(&queries, &documents))
}

/// [`STATEMENTS`] as owned strings, for [`Embedder::embed_documents`].
pub fn statements() -> Vec<String> {
    STATEMENTS.iter().map(|s| (*s).to_owned()).collect()
}

/// The mean cosine of every (query, document) pair.
pub fn mean_similarity(queries: &[Vec<f32>], documents: &[Vec<f32>]) -> f32 {
    let mut total = 0.0f64;
    let mut pairs = 0u32;
    for query in queries {
        for document in documents {
            total += f64::from(dot(query, document));
            pairs += 1;
        }
    }
    (total / f64::from(pairs.max(1))) as f32
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::embed::HashEmbedder;

    #[tokio::test]
    async fn the_hash_embedders_floor_is_near_zero() {
        let floor = unrelated_similarity(&HashEmbedder::new(384)).await.unwrap();
        assert!((0.0..0.15).contains(&floor), "{floor}");
    }
}
