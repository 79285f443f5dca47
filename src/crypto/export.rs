//! An encrypted export (`engram export --encrypt`): the plain export's bytes
//! sealed whole by the [`Sealer`] under the current key, in a small JSON
//! envelope of their own:
//!
//! `{"format":"engram-export-encrypted","version":1,"key_id":"<16 hex>","nonce":"<base64>","ciphertext":"<base64>"}`
//!
//! Invariants:
//! * the plaintext is the plain export byte for byte, so opening gives back
//!   exactly what `engram export` without `--encrypt` writes;
//! * nothing of the export is in clear: no user id, no count, no date; only
//!   its length (the ciphertext is the plaintext plus a 16-byte tag);
//! * the additional data names this format and version, so a ciphertext
//!   sealed for any other place (a metadata value, a queued input) does not
//!   open as an export, nor an export as one of them;
//! * any configured key opens it, current or older: `key_id` names which, so
//!   an export made before a rotation opens with the old key in
//!   `ENGRAM_ENCRYPTION_OLD_KEYS`.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use serde::Serialize;

use super::{OpenError, Sealed, SealedPart, Sealer, TooLarge};

/// The envelope's `format`.
pub const FORMAT: &str = "engram-export-encrypted";
/// The envelope's `version`.
pub const VERSION: u64 = 1;
/// What the seal authenticates besides the plaintext: this format, this version.
const AAD: &[u8] = b"engram-export-encrypted\0v1";

/// The file as written: the field order is the order shown above.
#[derive(Serialize)]
struct Envelope {
    format: String,
    version: u64,
    key_id: String,
    nonce: String,
    ciphertext: String,
}

/// `plain` (an export's JSON) sealed under the current key, as the
/// envelope's JSON.
pub fn seal(sealer: &Sealer, plain: &[u8]) -> Result<Vec<u8>, TooLarge> {
    let sealed = sealer.seal_bytes(plain, AAD)?;
    let envelope = Envelope {
        format: FORMAT.to_owned(),
        version: VERSION,
        key_id: sealed.key_id,
        nonce: B64.encode(sealed.nonce),
        ciphertext: B64.encode(sealed.ciphertext),
    };
    // A struct of strings and a number always serializes.
    Ok(serde_json::to_vec(&envelope).unwrap_or_default())
}

/// The sealed export a file holds; `Malformed` names the first field that
/// is missing or wrong (`format` when it is not JSON or not this format).
pub fn parse(file: &[u8]) -> Result<Sealed, OpenError> {
    let value: serde_json::Value =
        serde_json::from_slice(file).map_err(|_| OpenError::Malformed("format"))?;
    if value.get("format").and_then(|f| f.as_str()) != Some(FORMAT) {
        return Err(OpenError::Malformed("format"));
    }
    if value.get("version").and_then(|v| v.as_u64()) != Some(VERSION) {
        return Err(OpenError::Malformed("version"));
    }
    let field = |name: &'static str| {
        value
            .get(name)
            .and_then(|f| f.as_str())
            .ok_or(OpenError::Malformed(name))
    };
    Sealed::decode(field("key_id")?, field("nonce")?, field("ciphertext")?).map_err(|part| {
        OpenError::Malformed(match part {
            SealedPart::Nonce => "nonce",
            SealedPart::Ciphertext => "ciphertext",
        })
    })
}

/// The plain export `sealed` holds, if a configured key opens it.
pub fn open(sealer: &Sealer, sealed: &Sealed) -> Result<Vec<u8>, OpenError> {
    sealer.open_bytes(sealed, AAD)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::Place;
    use serde_json::{Value, json};

    fn sealer(current: [u8; 32], old: &[[u8; 32]]) -> Sealer {
        Sealer::new(&current, old, Vec::new())
    }

    #[test]
    fn an_export_opens_to_its_exact_bytes_with_the_current_or_an_old_key() {
        let plain = br#"{"user_id":"alice","memories":[{"memory":"Lives in Porto"}]}"#;
        let file = seal(&sealer([1; 32], &[]), plain).unwrap();
        let text = String::from_utf8(file.clone()).unwrap();
        assert!(!text.contains("Porto") && !text.contains("alice"), "{text}");
        let envelope: Value = serde_json::from_slice(&file).unwrap();
        assert_eq!(envelope["format"], FORMAT);
        assert_eq!(envelope["version"], 1);
        assert_eq!(envelope["key_id"], crate::crypto::key_id(&[1; 32]));

        let sealed = parse(&file).unwrap();
        assert_eq!(open(&sealer([1; 32], &[]), &sealed).unwrap(), plain);
        assert_eq!(open(&sealer([2; 32], &[[1; 32]]), &sealed).unwrap(), plain);
        assert_eq!(
            open(&sealer([2; 32], &[]), &sealed),
            Err(OpenError::UnknownKey(crate::crypto::key_id(&[1; 32])))
        );
    }

    #[test]
    fn an_altered_or_foreign_envelope_is_refused() {
        let s = sealer([1; 32], &[]);
        let mut sealed = parse(&seal(&s, b"{}").unwrap()).unwrap();
        sealed.ciphertext[0] ^= 1;
        assert_eq!(open(&s, &sealed), Err(OpenError::Forged));

        // A metadata envelope's ciphertext, moved into an export envelope.
        let value = s.seal(&json!("x"), "alice", Place::PendingInput);
        let moved = Sealed::decode(
            value["kid"].as_str().unwrap(),
            value["n"].as_str().unwrap(),
            value["c"].as_str().unwrap(),
        )
        .unwrap();
        assert_eq!(open(&s, &moved), Err(OpenError::Forged));

        for (file, field) in [
            (&b"not json"[..], "format"),
            (br#"{"user_id":"alice"}"#, "format"),
            (br#"{"format":"engram-export-encrypted","version":2}"#, "version"),
            (br#"{"format":"engram-export-encrypted","version":1}"#, "key_id"),
            (
                br#"{"format":"engram-export-encrypted","version":1,"key_id":"k","nonce":"AA==","ciphertext":""}"#,
                "nonce",
            ),
        ] {
            assert_eq!(parse(file), Err(OpenError::Malformed(field)));
        }
    }
}
