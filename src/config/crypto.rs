//! `crypto`: encryption at rest (`encryption_key`, `encryption_key_file`,
//! `encryption_old_keys`, `sensitive_metadata_keys`); what is sealed and how
//! is [`crate::crypto`]'s.
//!
//! The current key is `encryption_key`, or the first key line of
//! `encryption_key_file`; keys that only open (after a rotation) are
//! `encryption_old_keys` (comma-separated) and the key file's further lines.
//! Blank lines and lines starting `#` in the file are skipped.

use super::layers::{ConfigError, Layers};
use crate::crypto::{KEY_BYTES, Sealer, key_id, parse_key};

/// The file keys (and, upper-cased after `ENGRAM_`, the variables) read here.
pub(super) const KEYS: &[&str] = &[
    "encryption_key",
    "encryption_key_file",
    "encryption_old_keys",
    "sensitive_metadata_keys",
];

/// A key's bytes: `Debug` shows only its id.
#[derive(Clone, PartialEq, Eq)]
pub struct KeyBytes(pub [u8; KEY_BYTES]);

impl std::fmt::Debug for KeyBytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "key id {}", key_id(&self.0))
    }
}

/// Encryption at rest. Invariant: `old_keys` is empty unless `key` is set.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct CryptoConfig {
    /// Seals and opens; `None`: nothing is sealed.
    pub key: Option<KeyBytes>,
    /// Open only (values sealed before a rotation).
    pub old_keys: Vec<KeyBytes>,
    /// Metadata keys whose values are sealed, besides any `secret_*` key.
    pub sensitive_keys: Vec<String>,
}

impl CryptoConfig {
    pub(super) fn load(src: &Layers<'_>) -> Result<Self, ConfigError> {
        let inline = src
            .string("encryption_key")?
            .filter(|k| !k.trim().is_empty());
        let file = src
            .string("encryption_key_file")?
            .filter(|f| !f.trim().is_empty());
        let mut keys: Vec<KeyBytes> = Vec::new();
        match (inline, file) {
            (Some(_), Some(_)) => {
                return Err(src.invalid(
                    "encryption_key_file",
                    "both ENGRAM_ENCRYPTION_KEY and ENGRAM_ENCRYPTION_KEY_FILE are set; set one",
                ));
            }
            (Some(key), None) => keys.push(KeyBytes(
                parse_key(&key).map_err(|e| src.invalid("encryption_key", e))?,
            )),
            (None, Some(path)) => {
                let text = std::fs::read_to_string(path.trim()).map_err(|e| {
                    src.invalid("encryption_key_file", format!("cannot read {path}: {e}"))
                })?;
                let lines = text
                    .lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty() && !l.starts_with('#'));
                for (n, line) in lines.enumerate() {
                    let key = parse_key(line).map_err(|e| {
                        src.invalid("encryption_key_file", format!("key {} {e}", n + 1))
                    })?;
                    keys.push(KeyBytes(key));
                }
                if keys.is_empty() {
                    return Err(src.invalid("encryption_key_file", format!("{path} holds no key")));
                }
            }
            (None, None) => {}
        }
        // The configured current key first, then the file's older ones,
        // then these.
        let given_current = !keys.is_empty();
        for (n, old) in src
            .list("encryption_old_keys")?
            .unwrap_or_default()
            .iter()
            .filter(|k| !k.is_empty())
            .enumerate()
        {
            let key = parse_key(old).map_err(|e| {
                src.invalid("encryption_old_keys", format!("old key {} {e}", n + 1))
            })?;
            keys.push(KeyBytes(key));
        }
        let sensitive_keys = src
            .list("sensitive_metadata_keys")?
            .unwrap_or_default()
            .into_iter()
            .filter(|k| !k.is_empty())
            .collect();
        let mut keys = keys.into_iter();
        let key = keys.next();
        let old_keys: Vec<KeyBytes> = keys.collect();
        if !given_current && key.is_some() {
            return Err(src.invalid(
                "encryption_old_keys",
                "old keys are set without a current key; set ENGRAM_ENCRYPTION_KEY too",
            ));
        }
        Ok(Self {
            key,
            old_keys,
            sensitive_keys,
        })
    }

    /// The sealer this configuration makes; `None` when no key is set.
    pub fn sealer(&self) -> Option<Sealer> {
        let key = self.key.as_ref()?;
        let old: Vec<[u8; KEY_BYTES]> = self.old_keys.iter().map(|k| k.0).collect();
        Some(Sealer::new(&key.0, &old, self.sensitive_keys.clone()))
    }
}
