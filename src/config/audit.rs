//! `audit`: the audit trail (`audit`, `audit_queries`, `audit_key`).

use super::layers::{ConfigError, Layers};
use super::openai::Secret;

/// The file keys (and, upper-cased after `ENGRAM_`, the variables) read here.
pub(super) const KEYS: &[&str] = &["audit", "audit_queries", "audit_key"];

/// The shortest pseudonym key accepted, in bytes.
pub const MIN_AUDIT_KEY_BYTES: usize = 32;

/// The audit trail. Invariant: `key`, when set, has at least
/// [`MIN_AUDIT_KEY_BYTES`] bytes.
#[derive(Debug, Clone, PartialEq)]
pub struct AuditConfig {
    /// Record every operation (default on).
    pub enabled: bool,
    /// Keep the query text of recalls and focused contexts in audit rows.
    pub queries: bool,
    /// The key users' pseudonyms are made with; `None`: a key file kept
    /// beside the data (see `startup::audit_key`).
    pub key: Option<Secret>,
}

impl AuditConfig {
    pub(super) fn load(src: &Layers<'_>) -> Result<Self, ConfigError> {
        let key = src.string("audit_key")?.filter(|k| !k.trim().is_empty());
        if let Some(key) = &key
            && key.trim().len() < MIN_AUDIT_KEY_BYTES
        {
            return Err(src.invalid(
                "audit_key",
                format!(
                    "the key is {} bytes; use at least {MIN_AUDIT_KEY_BYTES} random bytes, e.g. \
                     the output of `openssl rand -base64 32`",
                    key.trim().len()
                ),
            ));
        }
        Ok(Self {
            enabled: src.boolean("audit", true)?,
            queries: src.boolean("audit_queries", false)?,
            key: key.map(|k| Secret(k.trim().to_owned())),
        })
    }
}
