//! The models engram knows by id: their dimension (so a store can be opened
//! before the files arrive), how they pool, and the prefixes they were
//! trained with. Any other BERT-family model runs too, once its files are
//! on disk (`engram models pull ID`); its directory then says the rest.

use super::model::Pooling;

/// What a fresh `engram serve` runs when it embeds in process.
pub const DEFAULT_MODEL: &str = "sentence-transformers/all-MiniLM-L6-v2";

#[derive(Debug, Clone, Copy)]
pub struct Known {
    pub id: &'static str,
    pub dims: usize,
    pub pooling: Pooling,
    pub query_prefix: &'static str,
    pub document_prefix: &'static str,
}

const KNOWN: &[Known] = &[
    Known {
        id: DEFAULT_MODEL,
        dims: 384,
        pooling: Pooling::Mean,
        query_prefix: "",
        document_prefix: "",
    },
    Known {
        id: "BAAI/bge-small-en-v1.5",
        dims: 384,
        pooling: Pooling::Cls,
        query_prefix: "Represent this sentence for searching relevant passages: ",
        document_prefix: "",
    },
    Known {
        id: "intfloat/e5-small-v2",
        dims: 384,
        pooling: Pooling::Mean,
        query_prefix: "query: ",
        document_prefix: "passage: ",
    },
];

/// The known model `id`, compared without case.
pub fn known(id: &str) -> Option<Known> {
    KNOWN
        .iter()
        .find(|k| k.id.eq_ignore_ascii_case(id))
        .copied()
}

/// The ids engram knows, for messages.
pub fn known_ids() -> impl Iterator<Item = &'static str> {
    KNOWN.iter().map(|k| k.id)
}
