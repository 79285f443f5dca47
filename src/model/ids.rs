//! Ids: a memory's (a UUID v7) and the user's, agent's and run's a memory
//! belongs to (checked text).

use std::fmt;
use std::str::FromStr;

use std::borrow::Cow;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use unicode_general_category::{GeneralCategory, get_general_category};
use unicode_normalization::{UnicodeNormalization, is_nfc};
use uuid::Uuid;

use super::{Invalid, truncate};

/// Longest accepted user, agent or run id, in bytes.
pub const MAX_ID_LEN: usize = 128;

/// A memory's identity: a UUID (v7, so ids sort by creation time).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct MemoryId(pub Uuid);

impl MemoryId {
    pub fn new() -> Self {
        Self(Uuid::now_v7())
    }

    /// Parses a caller-supplied id, naming the argument when it is not a UUID.
    pub fn parse(field: &'static str, raw: &str) -> Result<Self, Invalid> {
        Uuid::parse_str(raw.trim()).map(Self).map_err(|_| {
            Invalid::new(
                field,
                format!(
                    "'{}' is not a memory id; expected a UUID such as \
                     0193a5c4-7b1e-7cc2-9a41-2f6f0d6e8b10 (as returned by remember or recall)",
                    truncate(raw, 60)
                ),
            )
        })
    }
}

impl Default for MemoryId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for MemoryId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl FromStr for MemoryId {
    type Err = uuid::Error;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Uuid::parse_str(s).map(Self)
    }
}

impl JsonSchema for MemoryId {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "MemoryId".into()
    }
    fn json_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
        Uuid::json_schema(generator)
    }
}

/// A user's id as every layer below the doors holds it: parsed once
/// ([`UserId::parse`]), trimmed, in Unicode NFC, never empty, at most
/// [`MAX_ID_LEN`] bytes, without control or invisible format characters. The field is private, so an unchecked id
/// cannot become one (deserialising checks it too).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, JsonSchema)]
#[serde(transparent)]
pub struct UserId(String);

impl UserId {
    /// Checks a caller-supplied user id (the argument `user_id`).
    pub fn parse(raw: &str) -> Result<Self, Invalid> {
        validate_id("user_id", raw).map(Self)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Maps keyed by user id are looked up by `&str` (the derived `Eq`, `Ord`
/// and `Hash` are the string's).
impl std::borrow::Borrow<str> for UserId {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl std::ops::Deref for UserId {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<UserId> for String {
    fn from(id: UserId) -> Self {
        id.0
    }
}

impl PartialEq<str> for UserId {
    fn eq(&self, other: &str) -> bool {
        self.0 == other
    }
}

impl PartialEq<&str> for UserId {
    fn eq(&self, other: &&str) -> bool {
        self.0 == *other
    }
}

impl<'de> Deserialize<'de> for UserId {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(deserializer)?;
        Self::parse(&raw).map_err(serde::de::Error::custom)
    }
}

/// Who a memory belongs to: a user, narrowed to one agent and one run or not.
///
/// The fields are private and every constructor checks them, so a scope
/// that exists holds valid ids. Invariant: every store read and write is
/// bounded by its user.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Scope {
    user_id: UserId,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    agent_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    run_id: Option<String>,
}

impl Scope {
    /// All of the user's memories.
    pub fn user(user_id: UserId) -> Self {
        Self {
            user_id,
            agent_id: None,
            run_id: None,
        }
    }

    /// Builds a scope from raw ids, refusing empty, oversized or
    /// control-character ids.
    pub fn new(
        user_id: &str,
        agent_id: Option<&str>,
        run_id: Option<&str>,
    ) -> Result<Self, Invalid> {
        Self::narrowed(UserId::parse(user_id)?, agent_id, run_id)
    }

    /// The user's scope narrowed by raw agent and run ids, refused as [`Scope::new`] refuses them.
    pub fn narrowed(
        user_id: UserId,
        agent_id: Option<&str>,
        run_id: Option<&str>,
    ) -> Result<Self, Invalid> {
        Ok(Self {
            user_id,
            agent_id: agent_id.map(|a| validate_id("agent_id", a)).transpose()?,
            run_id: run_id.map(|r| validate_id("run_id", r)).transpose()?,
        })
    }

    /// A scope from ids read back from a row, checked without copying those
    /// that are already trimmed (see `checked`: the ids a row was written
    /// under are kept as they are).
    pub fn from_parts(
        user_id: String,
        agent_id: Option<String>,
        run_id: Option<String>,
    ) -> Result<Self, Invalid> {
        Ok(Self {
            user_id: UserId(checked("user_id", user_id)?),
            agent_id: agent_id.map(|a| checked("agent_id", a)).transpose()?,
            run_id: run_id.map(|r| checked("run_id", r)).transpose()?,
        })
    }

    pub fn user_id(&self) -> &UserId {
        &self.user_id
    }

    pub fn agent_id(&self) -> Option<&str> {
        self.agent_id.as_deref()
    }

    pub fn run_id(&self) -> Option<&str> {
        self.run_id.as_deref()
    }

    /// True when the scope is the whole user (no agent, no run).
    pub fn is_whole_user(&self) -> bool {
        self.agent_id.is_none() && self.run_id.is_none()
    }
}

/// An id read back from a row: trimmed, and refused only when it could
/// never have been stored (empty, oversized, control characters). It is
/// not normalised and may hold format characters: rows written before the
/// current rule keep the id they were written under, so that writes bounded
/// by it reach them.
fn checked(field: &'static str, raw: String) -> Result<String, Invalid> {
    let id = raw.trim();
    if id.is_empty() || id.len() > MAX_ID_LEN || id.chars().any(char::is_control) {
        return Err(Invalid::new(
            field,
            format!("'{}' is not an id", truncate(&raw, 60).escape_debug()),
        ));
    }
    if id.len() == raw.len() {
        Ok(raw)
    } else {
        Ok(id.to_owned())
    }
}

/// Checks one id and returns it trimmed and in NFC.
pub fn validate_id(field: &'static str, raw: &str) -> Result<String, Invalid> {
    check_id(field, raw).map(Cow::into_owned)
}

/// The id within `raw` (trimmed, in Unicode NFC), or why it is refused:
/// empty, over [`MAX_ID_LEN`] bytes, or holding a character that does not
/// print (a control character, or an invisible format character such as a
/// zero-width space or a bidi control: `alice\u{200b}` would print exactly
/// like `alice`).
fn check_id<'a>(field: &'static str, raw: &'a str) -> Result<Cow<'a, str>, Invalid> {
    let trimmed = raw.trim();
    if let Some(c) = trimmed.chars().find(|&c| c.is_control() || is_format(c)) {
        let kind = if c.is_control() {
            "a control character"
        } else {
            "an invisible format character (zero-width, bidi control, soft hyphen...)"
        };
        return Err(Invalid::new(
            field,
            format!(
                "contains {kind} (U+{:04X}); ids must be printable text, so two ids \
                 that print alike are the same id",
                u32::from(c)
            ),
        ));
    }
    let id = if is_nfc(trimmed) {
        Cow::Borrowed(trimmed)
    } else {
        Cow::Owned(trimmed.nfc().collect::<String>())
    };
    if id.is_empty() {
        return Err(Invalid::new(
            field,
            "must not be empty; omit it to use the default",
        ));
    }
    if id.len() > MAX_ID_LEN {
        return Err(Invalid::new(
            field,
            format!("is {} bytes; at most {MAX_ID_LEN} are accepted", id.len()),
        ));
    }
    Ok(id)
}

/// Unicode general category Cf: characters that change how text around
/// them is shown but show nothing themselves.
pub fn is_format(c: char) -> bool {
    get_general_category(c) == GeneralCategory::Format
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_validated() {
        assert!(validate_id("user_id", " ").is_err());
        assert!(validate_id("user_id", &"x".repeat(MAX_ID_LEN + 1)).is_err());
        assert!(validate_id("user_id", "a\u{0}b").is_err());
        assert_eq!(validate_id("user_id", " alice ").unwrap(), "alice");
        assert_eq!(UserId::parse(" alice ").unwrap(), "alice");
        let err = UserId::parse("").unwrap_err();
        assert_eq!(err.field, "user_id");
        let err = serde_json::from_str::<UserId>("\"a\\u0007b\"").unwrap_err();
        assert!(err.to_string().contains("control character"), "{err}");
        // One spelling per id: NFC, and nothing invisible.
        assert_eq!(validate_id("user_id", "Jose\u{301}").unwrap(), "Jos\u{e9}");
        // A row keeps the id it was written under.
        assert_eq!(
            Scope::from_parts("Jose\u{301}".into(), None, None)
                .unwrap()
                .user_id(),
            "Jose\u{301}"
        );
        for invisible in [
            '\u{200b}', '\u{200f}', '\u{202e}', '\u{2066}', '\u{feff}', '\u{ad}',
        ] {
            let err = validate_id("agent_id", &format!("alice{invisible}x")).unwrap_err();
            assert_eq!(err.field, "agent_id");
            assert!(err.to_string().contains("invisible"), "{err}");
        }
        let err = MemoryId::parse("memory_id", "nope")
            .unwrap_err()
            .to_string();
        assert!(err.contains("expected a UUID"), "{err}");
    }

    #[test]
    fn scopes_hold_checked_ids_only() {
        let scope = Scope::new(" alice ", Some(" planner"), None).unwrap();
        assert_eq!(scope.user_id(), "alice");
        assert_eq!(scope.agent_id(), Some("planner"));
        assert!(!scope.is_whole_user());
        assert!(Scope::new("alice", Some(""), None).is_err());
        assert!(Scope::new("alice", None, Some("a\nb")).is_err());

        // Read back from a row: kept as it is, or refused.
        let row = Scope::from_parts("bob".into(), None, Some("run-1".into())).unwrap();
        assert_eq!(
            (row.user_id().as_str(), row.run_id()),
            ("bob", Some("run-1"))
        );
        assert_eq!(
            Scope::from_parts(" bob".into(), None, None)
                .unwrap()
                .user_id(),
            "bob"
        );
        let err = Scope::from_parts("bob".into(), Some("x".repeat(MAX_ID_LEN + 1)), None);
        assert_eq!(err.unwrap_err().field, "agent_id");
        assert!(Scope::user(UserId::parse("carol").unwrap()).is_whole_user());
    }
}
