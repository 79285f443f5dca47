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

/// Refuses what cannot be a hub model id (`org/name` or `name`, letters,
/// digits, `.`, `_` and `-`, no part starting with a dot): an id becomes a
/// directory under the model cache and part of a download URL, so `..` or
/// a `?` must never reach either.
pub fn check_id(id: &str) -> Result<(), String> {
    let parts: Vec<&str> = id.split('/').collect();
    let fits = parts.len() <= 2
        && parts.iter().all(|part| {
            !part.is_empty()
                && part.len() <= 96
                && !part.starts_with('.')
                && part
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        });
    if fits {
        Ok(())
    } else {
        Err(format!(
            "'{id}' is not a model id: expected ORG/NAME as on the hub (letters, digits, \
             '.', '_' and '-'), e.g. {DEFAULT_MODEL}"
        ))
    }
}

/// The ids engram knows, for messages.
pub fn known_ids() -> impl Iterator<Item = &'static str> {
    KNOWN.iter().map(|k| k.id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_that_would_leave_the_cache_or_bend_a_url_are_refused() {
        for good in [
            DEFAULT_MODEL,
            "BAAI/bge-small-en-v1.5",
            "gpt2",
            "org/name_v1.0",
        ] {
            assert!(check_id(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "..",
            "../x",
            "a/../b",
            "a/b/c",
            "/abs",
            "org/",
            ".hidden/x",
            "a/b?x=1",
            "a b",
        ] {
            let err = check_id(bad).unwrap_err();
            assert!(err.contains("not a model id"), "{bad}: {err}");
        }
    }
}
