//! Keyword relevance: how memories are cut into terms, and BM25 over one
//! user's memories, on a 0..1 scale. Both stores index the terms this module
//! makes and score with [`Bm25`], so they rank alike by construction.
//!
//! * A **term** is a maximal run of alphanumeric characters, lower-cased and
//!   reduced by the Snowball English stemmer ("painting", "paints" ->
//!   "paint"), unless it is an English function or question word ("the",
//!   "what", "did": [`crate::model::is_stopword`]), which carry no topic and
//!   are neither indexed nor searched. A memory's length is its number of terms.
//!   (Indexing function words and counting them in lengths cost 0.7 points of
//!   MRR@10 on the development set for BM25 alone, 1.3 for the fused ranking.) A query made only of function words has
//!   no keyword relevance; meaning alone ranks it.
//! * **Statistics are per user**: the number of the user's current memories,
//!   their mean length, and how many of them hold each term. One user's
//!   words never change another's scores.
//! * **Scale**: BM25 (k1 = 1.2, b = 0.75, Lucene's non-negative IDF) divided
//!   by the sum of the query terms' IDF, capped at 1. So 1.0 means the memory
//!   holds every query term at a typical rate for its length, 0.5 that it
//!   holds terms carrying half of the query's information, and a query term
//!   the user never wrote still counts against every memory (it is the
//!   rarest kind of term there is).

use std::collections::HashMap;
use std::sync::LazyLock;

use rust_stemmers::{Algorithm, Stemmer};

use crate::model::is_stopword;

/// What a store records (`store_info.keyword_index`) once every current
/// memory is indexed as this module cuts text. Change it whenever
/// [`document_terms`] changes: stores rebuild their postings on open when
/// the recorded version differs.
pub const INDEX_VERSION: &str = "bm25-v1";

/// At most this many distinct terms of a query are searched.
pub const MAX_QUERY_TERMS: usize = 32;
/// Terms longer than this many bytes are not indexed or searched (hashes,
/// base64 and the like: they never match a query a person types).
pub const MAX_TERM_BYTES: usize = 64;

static STEMMER: LazyLock<Stemmer> = LazyLock::new(|| Stemmer::create(Algorithm::English));

/// The terms of `text`, in order, repeats kept.
fn terms(text: &str) -> impl Iterator<Item = String> + '_ {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty() && w.len() <= MAX_TERM_BYTES)
        .map(str::to_lowercase)
        .filter(|w| !is_stopword(w))
        .map(|w| STEMMER.stem(&w).into_owned())
}

/// A memory's text as the keyword index stores it.
#[derive(Debug, Clone, PartialEq)]
pub struct DocumentTerms {
    /// Each distinct term with its count, sorted by term.
    pub counts: Vec<(String, u32)>,
    /// Number of terms in the text, repeats included.
    pub length: u32,
}

/// Cuts a memory's text into terms for the index.
pub fn document_terms(text: &str) -> DocumentTerms {
    let mut counts: HashMap<String, u32> = HashMap::new();
    let mut length = 0u32;
    for term in terms(text) {
        *counts.entry(term).or_default() += 1;
        length = length.saturating_add(1);
    }
    let mut counts: Vec<(String, u32)> = counts.into_iter().collect();
    counts.sort();
    DocumentTerms { counts, length }
}

/// The distinct terms a query searches for, in the order first written.
/// Empty when the query has no words but function words.
pub fn query_terms(query: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for term in terms(query) {
        if out.len() == MAX_QUERY_TERMS {
            break;
        }
        if !out.contains(&term) {
            out.push(term);
        }
    }
    out
}

/// The statistics BM25 needs about one user's current memories.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Corpus {
    /// Current memories of the user.
    pub docs: u64,
    /// Sum of their lengths (see [`DocumentTerms::length`]).
    pub total_length: u64,
}

impl Corpus {
    fn average_length(&self) -> f64 {
        if self.docs == 0 {
            1.0
        } else {
            (self.total_length as f64 / self.docs as f64).max(1.0)
        }
    }
}

/// BM25 parameters (the usual defaults, which held on the development set).
pub const K1: f64 = 1.2;
pub const B: f64 = 0.75;

/// Scores memories for one query against one user's corpus.
#[derive(Debug, Clone)]
pub struct Bm25 {
    /// IDF of each query term, in query order.
    idf: Vec<f64>,
    /// Sum of `idf`: the raw score that maps to 1.0.
    scale: f64,
    average_length: f64,
}

impl Bm25 {
    /// `doc_freq[i]`: how many of the user's current memories hold query term `i`.
    pub fn new(corpus: Corpus, doc_freq: &[u64]) -> Self {
        let n = corpus.docs as f64;
        let idf: Vec<f64> = doc_freq
            .iter()
            .map(|&df| {
                let df = (df as f64).min(n);
                (1.0 + (n - df + 0.5) / (df + 0.5)).ln()
            })
            .collect();
        let scale = idf.iter().sum();
        Self {
            idf,
            scale,
            average_length: corpus.average_length(),
        }
    }

    /// The relevance in 0..=1 of a memory of `length` terms that holds query
    /// term `i` `tf` times for each `(i, tf)` given.
    pub fn score(&self, length: u32, matches: impl IntoIterator<Item = (usize, u32)>) -> f32 {
        let raw: f64 = matches
            .into_iter()
            .map(|(i, tf)| self.term_weight(i, tf, length))
            .sum();
        self.relevance(raw)
    }

    /// What query term `i`, held `tf` times by a memory of `length` terms,
    /// adds to the memory's raw score (0 for an unknown term).
    pub fn term_weight(&self, i: usize, tf: u32, length: u32) -> f64 {
        let norm = K1 * (1.0 - B + B * f64::from(length) / self.average_length);
        let tf = f64::from(tf);
        self.idf
            .get(i)
            .map_or(0.0, |idf| idf * tf * (K1 + 1.0) / (tf + norm))
    }

    /// The relevance in 0..=1 of a memory whose term weights sum to `raw`.
    pub fn relevance(&self, raw: f64) -> f32 {
        if self.scale <= 0.0 {
            return 0.0;
        }
        (raw / self.scale).min(1.0) as f32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documents_keep_every_term_stemmed_and_counted() {
        let doc = document_terms("I painted; she paints PAINTINGS of the sea!");
        assert_eq!(doc.length, 4);
        let count = |t: &str| doc.counts.iter().find(|(x, _)| x == t).map(|(_, n)| *n);
        assert_eq!(count("paint"), Some(3), "{doc:?}");
        assert_eq!(count("the"), None, "function words are not indexed");
        assert_eq!(count("sea"), Some(1));
        assert!(doc.counts.windows(2).all(|w| w[0].0 < w[1].0), "sorted");
    }

    #[test]
    fn queries_drop_function_and_question_words() {
        assert_eq!(
            query_terms("When did Caroline go to the support groups?"),
            ["carolin", "go", "support", "group"]
        );
        assert!(query_terms("who is it").is_empty());
        assert!(query_terms("?! ...").is_empty());
        assert_eq!(query_terms("Paint, painting, PAINTS"), ["paint"]);
        let long = "x".repeat(MAX_TERM_BYTES + 1);
        assert_eq!(query_terms(&format!("{long} tea")), ["tea"]);
    }

    #[test]
    fn bm25_is_one_for_a_full_match_and_favours_rare_terms() {
        let corpus = Corpus {
            docs: 100,
            total_length: 1000,
        };
        // Query: a rare term (in 1 memory) and a common one (in 50).
        let bm25 = Bm25::new(corpus, &[1, 50]);
        let both = bm25.score(10, [(0, 1), (1, 1)]);
        let rare = bm25.score(10, [(0, 1)]);
        let common = bm25.score(10, [(1, 1)]);
        assert!((both - 1.0).abs() < 1e-6, "{both}");
        assert!(rare > 0.7 && common < 0.3, "{rare} {common}");
        assert!(
            bm25.score(40, [(0, 1)]) < rare,
            "longer memories weigh less"
        );
        assert!(bm25.score(10, [(0, 3)]) >= rare, "repeats weigh more");
        assert!(bm25.score(1, [(0, 50), (1, 50)]) <= 1.0, "capped");
        assert_eq!(bm25.score(10, []), 0.0);
        // A term the user never wrote counts against every memory.
        let unseen = Bm25::new(corpus, &[1, 0]);
        assert!(unseen.score(10, [(0, 1)]) < 0.55);
        // Nothing stored: nothing scores.
        let empty = Bm25::new(
            Corpus {
                docs: 0,
                total_length: 0,
            },
            &[0],
        );
        assert!(empty.score(3, [(0, 1)]) <= 1.0);
    }
}
