//! SHA-256 as the store keeps it. A memory's text's, which
//! `memories.content_hash` holds and the exact-repeat index compares:
//! PostgreSQL as `bytea` ([`content_hash`]), SQLite as lowercase hex
//! ([`content_hash_hex`]). An API key's, as lowercase hex ([`sha256_hex`],
//! through `auth::hash`).

use sha2::{Digest, Sha256};

/// SHA-256 of `content`.
pub(in crate::store) fn content_hash(content: &str) -> [u8; 32] {
    Sha256::digest(content.as_bytes()).into()
}

/// SHA-256 of `content`, as [`sha256_hex`] writes it.
pub(in crate::store) fn content_hash_hex(content: &str) -> String {
    sha256_hex(content)
}

/// SHA-256 of `text`, as 64 lowercase hex digits.
pub(crate) fn sha256_hex(text: &str) -> String {
    content_hash(text)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_forms_are_one_digest() {
        // SHA-256 of "abc" (FIPS 180-2, appendix B.1).
        let hex = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
        assert_eq!(content_hash_hex("abc"), hex);
        let bytes: String = content_hash("abc")
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(bytes, hex);
    }
}
