//! Encryption at rest: the [`Sealer`] seals sensitive values with
//! AES-256-GCM under the operator's key before they reach the store, and
//! opens them where they leave the service.
//!
//! What is sealed (when `ENGRAM_ENCRYPTION_KEY` or `_KEY_FILE` is set):
//! metadata values under a sensitive key (`ENGRAM_SENSITIVE_METADATA_KEYS`,
//! and any key starting `secret_`), in memories and in deferred remembers,
//! and the whole input of a deferred remember (the text queued for
//! `engram reextract`). Memory text, vectors, keywords, categories, ids,
//! scopes and dates are not: search needs them.
//!
//! A sealed value is an envelope in the value's place:
//! `{"$enc":"v1","kid":"<key id>","n":"<nonce, base64>","c":"<ciphertext+tag, base64>"}`.
//! The plaintext is the value's JSON. The key id is the first 8 bytes (hex)
//! of SHA-256 over a label and the key, so ids need no configuration and
//! reveal nothing of the key.
//!
//! Whole documents are sealed too: an encrypted export ([`export`]) is the
//! plain export's bytes under the same keys, in an envelope of its own.
//! Both envelopes are made by [`Sealer::seal_bytes`], the one AES-256-GCM
//! seal, and opened by [`Sealer::open_bytes`].
//!
//! Invariants:
//! * a value is always sealed under the current key; older keys only open
//!   (`engram rotate-key` re-seals what they sealed under the current one);
//! * the additional data binds an envelope to its user and to its place (the
//!   metadata key, or the pending input), so a ciphertext copied to another
//!   user or another key does not open;
//! * every nonce is 96 random bits from the OS, fresh per seal;
//! * keys never reach logs: `Debug` shows only their ids.

use aes_gcm::aead::{Aead, AeadCore, KeyInit, OsRng, Payload};
use aes_gcm::{Aes256Gcm, Nonce};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::model::Metadata;

pub mod export;

/// The envelope's version tag, under [`TAG`].
pub const VERSION: &str = "v1";
/// The field that marks a JSON object as an envelope.
pub const TAG: &str = "$enc";
/// Metadata keys with this prefix are sensitive whatever the configuration.
pub const SECRET_PREFIX: &str = "secret_";
/// Bytes in a key.
pub const KEY_BYTES: usize = 32;
/// Nonce bytes (AES-GCM's 96 bits).
const NONCE_BYTES: usize = 12;

/// Where a sealed value lives: what its additional data binds it to.
#[derive(Debug, Clone, Copy)]
pub enum Place<'a> {
    /// The value of this metadata key.
    Metadata(&'a str),
    /// A deferred remember's input.
    PendingInput,
}

impl Place<'_> {
    fn aad(&self, user_id: &str) -> Vec<u8> {
        let (kind, name) = match self {
            Place::Metadata(key) => ("metadata", *key),
            Place::PendingInput => ("pending-input", ""),
        };
        // NUL cannot occur in a user id or a metadata key (both are checked
        // for controls at the door), so the fields cannot run together.
        format!("engram/{VERSION}\0{kind}\0{user_id}\0{name}").into_bytes()
    }
}

/// Why a value did not open.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum OpenError {
    #[error(
        "sealed under key id {0}, which is not configured; add that key to ENGRAM_ENCRYPTION_OLD_KEYS (or the key file)"
    )]
    UnknownKey(String),
    #[error("the envelope is malformed: {0}")]
    Malformed(&'static str),
    #[error("the ciphertext does not authenticate (altered, or moved from another user or key)")]
    Forged,
}

/// One key: its id and its cipher.
#[derive(Clone)]
struct Key {
    id: String,
    cipher: Aes256Gcm,
}

impl Key {
    fn new(bytes: &[u8; KEY_BYTES]) -> Self {
        Self {
            id: key_id(bytes),
            cipher: Aes256Gcm::new(bytes.into()),
        }
    }
}

/// A key's id: 16 hex digits of SHA-256 over a label and the key.
pub fn key_id(bytes: &[u8; KEY_BYTES]) -> String {
    let digest = Sha256::new()
        .chain_update(b"engram encryption key id\0")
        .chain_update(bytes)
        .finalize();
    digest[..8].iter().map(|b| format!("{b:02x}")).collect()
}

/// Parses a key: base64 (standard alphabet, padded or not) of exactly 32 bytes.
pub fn parse_key(text: &str) -> Result<[u8; KEY_BYTES], String> {
    let text = text.trim();
    let bytes = B64
        .decode(text)
        .or_else(|_| base64::engine::general_purpose::STANDARD_NO_PAD.decode(text))
        .map_err(|_| "is not base64; make a key with `openssl rand -base64 32`".to_owned())?;
    <[u8; KEY_BYTES]>::try_from(bytes.as_slice()).map_err(|_| {
        format!(
            "decodes to {} bytes; a key is exactly {KEY_BYTES} (`openssl rand -base64 32`)",
            bytes.len()
        )
    })
}

/// What one seal made: the key id, the nonce and the ciphertext (with its
/// tag). Envelopes carry these three, in their own field names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sealed {
    pub key_id: String,
    pub nonce: [u8; NONCE_BYTES],
    pub ciphertext: Vec<u8>,
}

/// Which part of a [`Sealed`] did not decode (see [`Sealed::decode`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SealedPart {
    Nonce,
    Ciphertext,
}

impl Sealed {
    /// From a key id and base64 nonce and ciphertext as envelopes carry them.
    pub fn decode(key_id: &str, nonce: &str, ciphertext: &str) -> Result<Self, SealedPart> {
        let nonce = B64
            .decode(nonce)
            .ok()
            .and_then(|n| n.try_into().ok())
            .ok_or(SealedPart::Nonce)?;
        let ciphertext = B64.decode(ciphertext).map_err(|_| SealedPart::Ciphertext)?;
        Ok(Self {
            key_id: key_id.to_owned(),
            nonce,
            ciphertext,
        })
    }
}

/// AES-GCM refused to seal: the input is over 64 GiB.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("too large to encrypt (AES-256-GCM takes at most 64 GiB)")]
pub struct TooLarge;

/// The current key (sealing and opening), older keys (opening only) and the
/// configured sensitive metadata keys.
#[derive(Clone)]
pub struct Sealer {
    current: Key,
    old: Vec<Key>,
    sensitive: Vec<String>,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sealer")
            .field("current", &self.current.id)
            .field(
                "old",
                &self.old.iter().map(|k| k.id.as_str()).collect::<Vec<_>>(),
            )
            .field("sensitive", &self.sensitive)
            .finish()
    }
}

impl Sealer {
    pub fn new(current: &[u8; KEY_BYTES], old: &[[u8; KEY_BYTES]], sensitive: Vec<String>) -> Self {
        let current = Key::new(current);
        let old = old
            .iter()
            .map(Key::new)
            .filter(|k| k.id != current.id)
            .collect();
        Self {
            current,
            old,
            sensitive,
        }
    }

    /// The current key's id: what every new envelope carries.
    pub fn current_id(&self) -> &str {
        &self.current.id
    }

    /// Whether values under metadata key `key` are sealed.
    pub fn is_sensitive(&self, key: &str) -> bool {
        key.starts_with(SECRET_PREFIX) || self.sensitive.iter().any(|k| k == key)
    }

    /// `msg` sealed under the current key, authenticated with `aad`, under
    /// a fresh random nonce: the one AES-256-GCM seal every envelope uses.
    pub fn seal_bytes(&self, msg: &[u8], aad: &[u8]) -> Result<Sealed, TooLarge> {
        let nonce = Aes256Gcm::generate_nonce(&mut OsRng);
        let ciphertext = self
            .current
            .cipher
            .encrypt(&nonce, Payload { msg, aad })
            .map_err(|_| TooLarge)?;
        Ok(Sealed {
            key_id: self.current.id.clone(),
            nonce: nonce.into(),
            ciphertext,
        })
    }

    /// The bytes `sealed` holds, if the key it names is configured (current
    /// or older) and it authenticates with `aad`.
    pub fn open_bytes(&self, sealed: &Sealed, aad: &[u8]) -> Result<Vec<u8>, OpenError> {
        let key = std::iter::once(&self.current)
            .chain(&self.old)
            .find(|k| k.id == sealed.key_id)
            .ok_or_else(|| OpenError::UnknownKey(sealed.key_id.clone()))?;
        key.cipher
            .decrypt(
                &Nonce::from(sealed.nonce),
                Payload {
                    msg: &sealed.ciphertext,
                    aad,
                },
            )
            .map_err(|_| OpenError::Forged)
    }

    /// `plaintext`'s JSON sealed under the current key, bound to `user_id`
    /// and `place`.
    pub fn seal(&self, plaintext: &Value, user_id: &str, place: Place<'_>) -> Value {
        let msg = plaintext.to_string();
        // AES-GCM refuses only inputs over 64 GiB; metadata is at most 16 KiB.
        // Were it refused, the envelope's empty ciphertext would never open.
        let sealed = self
            .seal_bytes(msg.as_bytes(), &place.aad(user_id))
            .unwrap_or_else(|TooLarge| Sealed {
                key_id: self.current.id.clone(),
                nonce: [0; NONCE_BYTES],
                ciphertext: Vec::new(),
            });
        json!({
            TAG: VERSION,
            "kid": sealed.key_id,
            "n": B64.encode(sealed.nonce),
            "c": B64.encode(sealed.ciphertext),
        })
    }

    /// The value an envelope sealed, if `user_id` and `place` are the ones
    /// it was sealed for and its key is configured.
    pub fn open(
        &self,
        envelope: &Value,
        user_id: &str,
        place: Place<'_>,
    ) -> Result<Value, OpenError> {
        let field = |name: &'static str| {
            envelope
                .get(name)
                .and_then(Value::as_str)
                .ok_or(OpenError::Malformed(name))
        };
        if field(TAG)? != VERSION {
            return Err(OpenError::Malformed("$enc is not v1"));
        }
        let sealed = Sealed::decode(field("kid")?, field("n")?, field("c")?).map_err(|part| {
            OpenError::Malformed(match part {
                SealedPart::Nonce => "n",
                SealedPart::Ciphertext => "c",
            })
        })?;
        let plain = self.open_bytes(&sealed, &place.aad(user_id))?;
        serde_json::from_slice(&plain).map_err(|_| OpenError::Malformed("plaintext"))
    }

    /// `metadata` with every sensitive value sealed (values already sealed
    /// are left as they are).
    pub fn seal_metadata(&self, metadata: &Metadata, user_id: &str) -> Metadata {
        metadata
            .iter()
            .map(|(key, value)| {
                let value = if self.is_sensitive(key) && !is_envelope(value) {
                    self.seal(value, user_id, Place::Metadata(key))
                } else {
                    value.clone()
                };
                (key.clone(), value)
            })
            .collect()
    }

    /// Opens every envelope in `metadata` in place. One that does not open
    /// stays sealed (the caller sees the envelope), and the reason is logged:
    /// one lost key must not fail every read of the user.
    pub fn open_metadata(&self, metadata: &mut Metadata, user_id: &str) {
        for (key, value) in metadata.iter_mut() {
            if !is_envelope(value) {
                continue;
            }
            match self.open(value, user_id, Place::Metadata(key)) {
                Ok(plain) => *value = plain,
                Err(e) => tracing::warn!(
                    user_id,
                    metadata_key = %key,
                    error = %e,
                    "a sealed metadata value did not open; it is returned sealed"
                ),
            }
        }
    }

    /// `metadata` re-sealed under the current key: `Some` when any envelope
    /// was under an older key, else `None` (nothing to write).
    pub fn reseal_metadata(
        &self,
        metadata: &Metadata,
        user_id: &str,
    ) -> Result<Option<Metadata>, OpenError> {
        let mut changed = false;
        let mut out = Metadata::new();
        for (key, value) in metadata {
            let value = match self.reseal(value, user_id, Place::Metadata(key))? {
                Some(new) => {
                    changed = true;
                    new
                }
                None => value.clone(),
            };
            out.insert(key.clone(), value);
        }
        Ok(changed.then_some(out))
    }

    /// `value` re-sealed under the current key when it is an envelope
    /// under another; `None` otherwise.
    pub fn reseal(
        &self,
        value: &Value,
        user_id: &str,
        place: Place<'_>,
    ) -> Result<Option<Value>, OpenError> {
        if !is_envelope(value)
            || value.get("kid").and_then(Value::as_str) == Some(self.current_id())
        {
            return Ok(None);
        }
        let plain = self.open(value, user_id, place)?;
        Ok(Some(self.seal(&plain, user_id, place)))
    }
}

/// Whether `value` is an envelope (an object tagged [`TAG`]).
pub fn is_envelope(value: &Value) -> bool {
    value.get(TAG).is_some_and(Value::is_string)
}

/// Whether any value of `metadata` is an envelope.
pub fn has_envelope(metadata: &Metadata) -> bool {
    metadata.values().any(is_envelope)
}

#[cfg(test)]
mod tests {
    use super::*;

    const K1: [u8; 32] = [1; 32];
    const K2: [u8; 32] = [2; 32];

    fn sealer(current: [u8; 32], old: &[[u8; 32]]) -> Sealer {
        Sealer::new(&current, old, vec!["diagnosis".into()])
    }

    #[test]
    fn sealed_values_open_for_their_user_and_place_only() {
        let s = sealer(K1, &[]);
        let plain = json!({"code": "E11", "n": 3});
        let env = s.seal(&plain, "alice", Place::Metadata("diagnosis"));
        assert!(is_envelope(&env));
        assert!(!env.to_string().contains("E11"), "{env}");
        assert_eq!(
            s.open(&env, "alice", Place::Metadata("diagnosis")),
            Ok(plain)
        );
        // Moved to another user, another key, or the pending input: refused.
        for (user, place) in [
            ("bob", Place::Metadata("diagnosis")),
            ("alice", Place::Metadata("secret_x")),
            ("alice", Place::PendingInput),
        ] {
            assert_eq!(s.open(&env, user, place), Err(OpenError::Forged));
        }
        // Two seals of one value differ (fresh nonces).
        assert_ne!(
            env,
            s.seal(
                &json!({"code": "E11", "n": 3}),
                "alice",
                Place::Metadata("diagnosis")
            )
        );
    }

    #[test]
    fn a_wrong_key_or_an_altered_ciphertext_is_refused() {
        let env = sealer(K1, &[]).seal(&json!("x"), "alice", Place::PendingInput);
        let other = sealer(K2, &[]);
        assert!(matches!(
            other.open(&env, "alice", Place::PendingInput),
            Err(OpenError::UnknownKey(_))
        ));
        // Same id claimed, different key: authentication fails.
        let mut forged = env.clone();
        forged["kid"] = json!(other.current_id());
        assert_eq!(
            other.open(&forged, "alice", Place::PendingInput),
            Err(OpenError::Forged)
        );
        let mut altered = env.clone();
        let mut c = B64.decode(env["c"].as_str().unwrap()).unwrap();
        c[0] ^= 1;
        altered["c"] = json!(B64.encode(c));
        assert_eq!(
            sealer(K1, &[]).open(&altered, "alice", Place::PendingInput),
            Err(OpenError::Forged)
        );
    }

    #[test]
    fn old_keys_open_and_reseal_moves_to_the_current_key() {
        let before = sealer(K1, &[]);
        let after = sealer(K2, &[K1]);
        let mut metadata = Metadata::new();
        metadata.insert("diagnosis".into(), json!("flu"));
        metadata.insert("secret_pin".into(), json!(1234));
        metadata.insert("topic".into(), json!("health"));
        let sealed = before.seal_metadata(&metadata, "alice");
        assert_eq!(sealed["topic"], json!("health"), "not sensitive: plain");
        assert!(is_envelope(&sealed["diagnosis"]) && is_envelope(&sealed["secret_pin"]));

        let mut opened = sealed.clone();
        after.open_metadata(&mut opened, "alice");
        assert_eq!(opened, metadata, "the old key still opens");

        let resealed = after.reseal_metadata(&sealed, "alice").unwrap().unwrap();
        assert_eq!(resealed["diagnosis"]["kid"], json!(after.current_id()));
        assert_eq!(after.reseal_metadata(&resealed, "alice").unwrap(), None);
        let mut opened = resealed;
        sealer(K2, &[]).open_metadata(&mut opened, "alice");
        assert_eq!(opened, metadata, "the new key alone opens it all");
    }

    #[test]
    fn keys_parse_from_base64_of_32_bytes_only() {
        assert_eq!(parse_key(&B64.encode(K1)), Ok(K1));
        assert!(parse_key("not base64!").unwrap_err().contains("not base64"));
        assert!(
            parse_key(&B64.encode([0u8; 16]))
                .unwrap_err()
                .contains("16 bytes")
        );
        let debug = format!("{:?}", sealer(K1, &[K2]));
        assert!(!debug.contains(&B64.encode(K1)) && debug.contains(&key_id(&K1)));
    }
}
