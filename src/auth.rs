//! Who is calling, and API keys.
//!
//! A [`Principal`] is established by the transport (stdio: the operator;
//! HTTP: the API key presented) and decides which user a request acts for.
//! Invariant: a user key acts only for its own user. A request naming
//! another user is refused ([`Error::Forbidden`]), never rewritten.
//!
//! A key is `engram_` and 64 hex digits (244 random bits, from two v4 UUIDs,
//! whose random parts come from the OS generator); only its SHA-256 is
//! stored, so a database leak does not leak usable keys. The key is shown
//! once, when it is created.

use chrono::Utc;

use crate::error::Error;
use crate::model::UserId;
use crate::store::{ApiKey, sha256_hex};

/// Who is calling.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Principal {
    /// Whoever runs this process: stdio, or HTTP with `ENGRAM_AUTH=none`
    /// (loopback only). Acts for any user.
    Operator,
    /// An admin API key: acts for any user.
    Admin { key_id: uuid::Uuid },
    /// A user's API key: acts for that user only.
    User { key_id: uuid::Uuid, user_id: String },
}

impl Principal {
    /// The principal an active key stands for.
    pub fn from_key(key: &ApiKey) -> Self {
        match &key.user_id {
            Some(user_id) => Self::User {
                key_id: key.id,
                user_id: user_id.clone(),
            },
            None => Self::Admin { key_id: key.id },
        }
    }

    /// The user a request acts for. `requested` is the user it names (a
    /// tool argument, a path); `None` means the caller's own: a user key's
    /// user, otherwise `default_user`. A user key naming anyone else is
    /// refused.
    pub fn acting_user(
        &self,
        requested: Option<&str>,
        default_user: &UserId,
    ) -> Result<UserId, Error> {
        let requested = requested.map(UserId::parse).transpose()?;
        match (self, requested) {
            (Self::User { user_id, .. }, None) => Ok(UserId::parse(user_id)?),
            (Self::User { user_id, .. }, Some(named)) if named == user_id.as_str() => Ok(named),
            (Self::User { user_id, .. }, Some(named)) => Err(Error::Forbidden(format!(
                "this API key acts for user '{user_id}' only, not '{named}'; omit user_id \
                 or use an admin key"
            ))),
            (Self::Operator | Self::Admin { .. }, Some(named)) => Ok(named),
            (Self::Operator | Self::Admin { .. }, None) => Ok(default_user.clone()),
        }
    }

    /// The key behind the call, if any (rate limits count per key).
    pub fn key_id(&self) -> Option<uuid::Uuid> {
        match self {
            Self::Operator => None,
            Self::Admin { key_id } | Self::User { key_id, .. } => Some(*key_id),
        }
    }
}

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

/// Longest accepted key label, in characters.
pub const MAX_LABEL_CHARS: usize = 200;

/// A key's label as given to `engram keys create --label`: one line of
/// printable text (no control or invisible format characters, so `engram
/// keys list` prints one row per key), trimmed, at most [`MAX_LABEL_CHARS`].
pub fn check_label(raw: &str) -> Result<String, String> {
    let label = raw.trim();
    if let Some(c) = label
        .chars()
        .find(|&c| c.is_control() || crate::model::is_format(c))
    {
        return Err(format!(
            "--label must be one line of printable text; it contains U+{:04X}",
            u32::from(c)
        ));
    }
    if label.chars().count() > MAX_LABEL_CHARS {
        return Err(format!(
            "--label is longer than {MAX_LABEL_CHARS} characters"
        ));
    }
    Ok(label.to_owned())
}

/// The stored form of a presented key (SHA-256, hex).
pub fn hash(key: &str) -> String {
    sha256_hex(key.trim())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_user_key_acts_for_its_user_only() {
        let default = UserId::parse("default").unwrap();
        let default = &default;
        let alice = Principal::User {
            key_id: uuid::Uuid::nil(),
            user_id: "alice".into(),
        };
        assert_eq!(
            alice.acting_user(None, default).ok().as_deref(),
            Some("alice")
        );
        assert_eq!(
            alice.acting_user(Some(" alice "), default).ok().as_deref(),
            Some("alice")
        );
        let refused = alice.acting_user(Some("bob"), default);
        assert!(
            matches!(&refused, Err(Error::Forbidden(m)) if m.contains("'alice'") && m.contains("'bob'")),
            "{refused:?}"
        );
        assert!(matches!(
            alice.acting_user(Some(""), default),
            Err(Error::InvalidInput { .. })
        ));
        for anyone in [
            Principal::Operator,
            Principal::Admin {
                key_id: uuid::Uuid::nil(),
            },
        ] {
            assert_eq!(
                anyone.acting_user(Some("bob"), default).ok().as_deref(),
                Some("bob")
            );
            assert_eq!(
                anyone.acting_user(None, default).ok().as_deref(),
                Some("default")
            );
        }
    }

    #[test]
    fn labels_are_one_printable_line() {
        assert_eq!(check_label(" laptop ").as_deref(), Ok("laptop"));
        assert_eq!(check_label("").as_deref(), Ok(""));
        for bad in ["a\nb", "a\rb", "a\u{1b}[2Jb", "a\u{202e}b", "a\u{0}b"] {
            assert!(check_label(bad).is_err(), "{bad:?}");
        }
        assert!(check_label(&"x".repeat(MAX_LABEL_CHARS + 1)).is_err());
    }

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
