//! How the audit trail names a user: HMAC-SHA256 of the user id under a
//! key the server holds, as 64 hex digits. The same user gets the same
//! pseudonym on every instance that holds the same key; without the key
//! a pseudonym cannot be tied to an id (not even by trying likely ids).

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

/// The keyed hash that names users in audit rows.
#[derive(Clone)]
pub struct Pseudonyms {
    key: Vec<u8>,
}

impl std::fmt::Debug for Pseudonyms {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Pseudonyms(<key>)")
    }
}

impl Pseudonyms {
    /// Under `key` (at least 32 bytes: the configuration checks).
    pub fn new(key: Vec<u8>) -> Self {
        Self { key }
    }

    /// The pseudonym of `user_id`.
    pub fn of(&self, user_id: &str) -> String {
        let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(&self.key) else {
            // HMAC takes keys of any length; kept total all the same.
            return String::new();
        };
        mac.update(user_id.as_bytes());
        mac.finalize()
            .into_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pseudonym_is_stable_per_key_and_differs_across_keys() {
        let a = Pseudonyms::new(vec![1; 32]);
        let b = Pseudonyms::new(vec![2; 32]);
        assert_eq!(a.of("alice"), a.of("alice"));
        assert_eq!(a.of("alice").len(), 64);
        assert_ne!(a.of("alice"), a.of("bob"));
        assert_ne!(a.of("alice"), b.of("alice"));
        assert!(!a.of("alice").contains("alice"));
    }
}
