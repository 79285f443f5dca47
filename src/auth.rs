//! Who is calling, and API keys.
//!
//! A [`Principal`] is established by the transport (stdio: the operator;
//! HTTP: the API key presented) and decides which user a request acts for.
//! Invariant: a user key acts only for its own user. A request naming
//! another user is refused ([`Error::Forbidden`]), never rewritten.
//!
//! A principal also carries what its key may do ([`Access`]): a read-only
//! key may read but not write. Every write flow of the service asks
//! [`Principal::may_write`] first, so the rule holds for every door.
//!
//! A key is `engram_` and 64 hex digits (244 random bits, from two v4 UUIDs,
//! whose random parts come from the OS generator); only its SHA-256 is
//! stored, so a database leak does not leak usable keys. The key is shown
//! once, when it is created. A key may expire (`expires_at`; from then on
//! it is refused like a revoked one), and a rotation ([`successor`]) makes a
//! new key like an old one, for the old one to expire after a grace period.

use chrono::{DateTime, TimeDelta, Utc};

use crate::error::Error;
use crate::model::UserId;
pub use crate::store::Access;
use crate::store::{ApiKey, sha256_hex};

/// Who is calling.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Principal {
    /// Whoever runs this process: stdio, or HTTP with `ENGRAM_AUTH=none`
    /// (loopback only). Acts for any user, and may write.
    Operator,
    /// An admin API key: acts for any user.
    Admin { key_id: uuid::Uuid, access: Access },
    /// A user's API key: acts for that user only.
    User {
        key_id: uuid::Uuid,
        user_id: String,
        access: Access,
    },
}

impl Principal {
    /// The principal an active key stands for.
    pub fn from_key(key: &ApiKey) -> Self {
        match &key.user_id {
            Some(user_id) => Self::User {
                key_id: key.id,
                user_id: user_id.clone(),
                access: key.access,
            },
            None => Self::Admin {
                key_id: key.id,
                access: key.access,
            },
        }
    }

    /// What the caller may do: the operator anything, a key what it was
    /// made for.
    pub fn access(&self) -> Access {
        match self {
            Self::Operator => Access::ReadWrite,
            Self::Admin { access, .. } | Self::User { access, .. } => *access,
        }
    }

    /// Refuses ([`Error::Forbidden`]) a write by a read-only key. Every
    /// write flow (remember, forget) calls this before anything else.
    pub fn may_write(&self) -> Result<(), Error> {
        match self.access() {
            Access::ReadWrite => Ok(()),
            Access::ReadOnly => Err(Error::Forbidden(
                "this API key is read-only (scope: read-only): it may recall, read the \
                 context, stats, exports and history, but not remember or forget; use a key \
                 created without --read-only"
                    .into(),
            )),
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
            Self::Admin { key_id, .. } | Self::User { key_id, .. } => Some(*key_id),
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
        expires_at: None,
        access: Access::ReadWrite,
    };
    (secret, stored)
}

/// A fresh key to succeed `old` in a rotation: the same user (or admin),
/// access and label; it expires at `expires_at`, or else after the same
/// lifetime as `old` (counted from now), or never if `old` never did.
pub fn successor(old: &ApiKey, expires_at: Option<DateTime<Utc>>) -> (String, ApiKey) {
    let (secret, mut key) = generate(old.user_id.clone(), old.label.clone());
    key.access = old.access;
    key.expires_at = expires_at.or_else(|| {
        old.expires_at
            .map(|end| key.created_at + (end - old.created_at))
    });
    (secret, key)
}

/// Longest key lifetime or grace accepted: 100 years.
const MAX_DAYS: i64 = 36_525;

/// A span given to a `keys` flag (`--expires-in`, `--grace`): a whole
/// number and a unit, `s`, `m`, `h`, `d` or `w` (`90s`, `12h`, `30d`, `2w`);
/// at least a second, at most 100 years.
pub fn parse_span(flag: &str, raw: &str) -> Result<TimeDelta, String> {
    let raw = raw.trim();
    let refuse = || {
        format!(
            "{flag} '{raw}' is not a span of time: write a whole number and a unit, \
             s, m, h, d or w (e.g. 90s, 12h, 30d, 2w)"
        )
    };
    let split = raw.find(|c: char| !c.is_ascii_digit()).ok_or_else(refuse)?;
    let (number, unit) = raw.split_at(split);
    let n: i64 = number.parse().map_err(|_| refuse())?;
    let seconds_per = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        "w" => 7 * 86_400,
        _ => return Err(refuse()),
    };
    let seconds = n
        .checked_mul(seconds_per)
        .filter(|&s| s <= MAX_DAYS * 86_400)
        .ok_or_else(|| format!("{flag} '{raw}' is longer than 100 years"))?;
    if seconds == 0 {
        return Err(format!("{flag} must be at least 1s"));
    }
    Ok(TimeDelta::seconds(seconds))
}

/// An instant given to `--expires-at`: RFC 3339 with an offset
/// (`2027-03-01T00:00:00Z`), after `now`.
pub fn parse_instant(raw: &str, now: DateTime<Utc>) -> Result<DateTime<Utc>, String> {
    let at = DateTime::parse_from_rfc3339(raw.trim())
        .map_err(|e| {
            format!(
                "--expires-at '{}' is not an RFC 3339 time with an offset, \
                 e.g. 2027-03-01T00:00:00Z: {e}",
                raw.trim()
            )
        })?
        .with_timezone(&Utc);
    if at <= now {
        return Err(format!(
            "--expires-at {} is not in the future",
            at.to_rfc3339()
        ));
    }
    Ok(at)
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
            access: Access::ReadWrite,
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
                access: Access::ReadOnly,
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
    fn only_read_only_keys_are_refused_writes() {
        let reader = Principal::User {
            key_id: uuid::Uuid::nil(),
            user_id: "alice".into(),
            access: Access::ReadOnly,
        };
        let refused = reader.may_write();
        assert!(
            matches!(&refused, Err(Error::Forbidden(m)) if m.contains("read-only")),
            "{refused:?}"
        );
        let (_, mut admin) = generate(None, String::new());
        assert!(Principal::from_key(&admin).may_write().is_ok());
        admin.access = Access::ReadOnly;
        assert!(Principal::from_key(&admin).may_write().is_err());
        assert!(Principal::Operator.may_write().is_ok());
    }

    #[test]
    fn spans_and_instants_parse_or_say_what_is_wrong() {
        assert_eq!(parse_span("--grace", "90s"), Ok(TimeDelta::seconds(90)));
        assert_eq!(parse_span("--grace", " 12h "), Ok(TimeDelta::hours(12)));
        assert_eq!(parse_span("--expires-in", "30d"), Ok(TimeDelta::days(30)));
        assert_eq!(parse_span("--expires-in", "2w"), Ok(TimeDelta::days(14)));
        for bad in [
            "",
            "30",
            "d",
            "-1d",
            "1.5h",
            "30 days",
            "1y",
            "9999999999999999999d",
        ] {
            let refused = parse_span("--expires-in", bad);
            assert!(
                refused.as_ref().is_err_and(|m| m.contains("--expires-in")),
                "{bad:?}: {refused:?}"
            );
        }
        assert!(parse_span("--grace", "0s").is_err());
        assert!(parse_span("--grace", "36526d").is_err());
        let now = Utc::now();
        let at = parse_instant("2999-03-01T00:00:00+01:00", now);
        assert_eq!(
            at.map(|t| t.to_rfc3339()).as_deref(),
            Ok("2999-02-28T23:00:00+00:00")
        );
        assert!(parse_instant("2020-01-01T00:00:00Z", now).is_err_and(|m| m.contains("future")));
        assert!(parse_instant("2999-03-01", now).is_err_and(|m| m.contains("RFC 3339")));
    }

    #[test]
    fn a_successor_is_like_its_predecessor_with_a_new_secret() {
        let (old_secret, mut old) = generate(Some("alice".into()), "laptop".into());
        old.access = Access::ReadOnly;
        old.created_at -= TimeDelta::days(10);
        old.expires_at = Some(old.created_at + TimeDelta::days(30));
        let (secret, new) = successor(&old, None);
        assert_ne!((secret.as_str(), new.id), (old_secret.as_str(), old.id));
        assert_eq!(
            (&new.user_id, &new.label, new.access),
            (&old.user_id, &old.label, old.access)
        );
        assert_eq!(
            new.expires_at,
            Some(new.created_at + TimeDelta::days(30)),
            "same lifetime"
        );
        let soon = Utc::now() + TimeDelta::hours(1);
        assert_eq!(successor(&old, Some(soon)).1.expires_at, Some(soon));
        let (_, forever) = generate(None, String::new());
        assert_eq!(successor(&forever, None).1.expires_at, None);
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
