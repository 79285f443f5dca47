//! API keys: how they are made and recognised. A key is `engram_` and 64
//! hex digits (256 random bits, from two v4 UUIDs' random parts, which come
//! from the OS generator); only its SHA-256 is stored, so a database leak
//! does not leak usable keys. The key is shown once, when it is created.

use chrono::Utc;
use sha2::{Digest, Sha256};

use crate::store::ApiKey;

const PREFIX: &str = "engram_";
/// Characters of a key kept in clear to tell keys apart (`engram_` + 8).
const SHOWN: usize = PREFIX.len() + 8;

/// A fresh key for `user_id` (`None`: admin) and its stored form.
pub fn generate(user_id: Option<String>, label: String) -> (String, ApiKey) {
    let secret = format!(
        "{PREFIX}{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    );
    let stored = ApiKey {
        id: uuid::Uuid::now_v7(),
        prefix: secret[..SHOWN].to_owned(),
        hash: hash(&secret),
        user_id,
        label,
        created_at: Utc::now(),
        revoked_at: None,
    };
    (secret, stored)
}

/// The stored form of a presented key (SHA-256, hex).
pub fn hash(key: &str) -> String {
    Sha256::digest(key.trim().as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_long_random_and_stored_only_hashed() {
        let (a, stored) = generate(Some("alice".into()), "laptop".into());
        let (b, _) = generate(None, String::new());
        assert_ne!(a, b);
        assert!(a.starts_with("engram_") && a.len() == 7 + 64, "{a}");
        assert!(a[7..].chars().all(|c| c.is_ascii_hexdigit()));
        assert_eq!(stored.hash, hash(&a));
        assert_eq!(stored.hash.len(), 64);
        assert!(!stored.hash.contains(&a[7..]));
        assert_eq!(stored.prefix, &a[..15]);
        assert_eq!(
            hash(&format!(" {a}\n")),
            stored.hash,
            "surrounding space ignored"
        );
    }
}
