//! Secrets kept out of a remember (`ENGRAM_SECRETS`), applied once to the
//! validated input before anything else sees it: the extractor (and so the
//! LLM), the embedder, the store, the pending queue and the cache.
//!
//! Screened: the text, every message's content, and every string in the
//! metadata (at any depth; a metadata number that is a card number too).
//! Not screened: metadata keys, ids (user, agent, run), roles and dates,
//! which are names and times, not free text.
//!
//! Invariant: under `redact` the input that leaves here holds no span
//! [`crate::secrets::detect`] finds, and the returned tally counts every
//! replacement; under `refuse` an input with a secret is an
//! [`Error::InvalidInput`] naming the field and the kinds, never the value.
//! A redacted text may be a few bytes longer than the caller's (the marker
//! against the secret); the size limit applies to what the caller sent.

use std::collections::BTreeMap;

use serde_json::Value;

use super::types::Redaction;
use crate::config::SecretsMode;
use crate::error::Error;
use crate::model::{Input, Metadata};
use crate::secrets::{self, Kind};

/// Replacements so far, by field and kind.
type Tally = BTreeMap<(&'static str, Kind), usize>;

/// `input` and `metadata` as `mode` says to store them, with what was
/// replaced (empty unless `mode` is `redact`), ordered by field, then kind.
pub(super) fn secrets(
    mode: SecretsMode,
    mut input: Input,
    mut metadata: Metadata,
) -> Result<(Input, Metadata, Vec<Redaction>), Error> {
    if mode == SecretsMode::Allow {
        return Ok((input, metadata, Vec::new()));
    }
    let refuse = mode == SecretsMode::Refuse;
    let mut tally = Tally::new();
    match &mut input {
        Input::Text(text) => screen("text", text, refuse, &mut tally)?,
        Input::Messages(messages) => {
            for m in messages.iter_mut() {
                screen("messages", &mut m.content, refuse, &mut tally)?;
            }
        }
    }
    for value in metadata.values_mut() {
        screen_value(value, refuse, &mut tally)?;
    }
    let redacted = tally
        .into_iter()
        .map(|((field, kind), count)| Redaction {
            field: field.to_owned(),
            kind,
            count: count as u64,
        })
        .collect();
    Ok((input, metadata, redacted))
}

/// A correction's text and metadata, screened as a remember's (`text`
/// and `metadata` are the fields a refusal or a redaction names).
pub(super) fn correction(
    mode: SecretsMode,
    text: String,
    metadata: Metadata,
) -> Result<(String, Metadata, Vec<Redaction>), Error> {
    match secrets(mode, Input::Text(text), metadata)? {
        (Input::Text(text), metadata, redacted) => Ok((text, metadata, redacted)),
        // `secrets` gives back the kind of input it was given.
        (Input::Messages(_), ..) => Err(Error::invalid(
            "text",
            "was screened as a conversation; send it again",
        )),
    }
}

fn screen(
    field: &'static str,
    text: &mut String,
    refuse: bool,
    tally: &mut Tally,
) -> Result<(), Error> {
    let redacted = secrets::redact(text);
    if redacted.found.is_empty() {
        return Ok(());
    }
    let counts = redacted.counts();
    if refuse {
        let kinds: Vec<&str> = counts.keys().map(|k| k.as_str()).collect();
        return Err(Error::invalid(
            field,
            format!(
                "holds what looks like a secret ({}); this server refuses secrets \
                 (ENGRAM_SECRETS=refuse): remove it and send again",
                kinds.join(", ")
            ),
        ));
    }
    for (kind, n) in counts {
        *tally.entry((field, kind)).or_insert(0) += n;
    }
    *text = redacted.text;
    Ok(())
}

fn screen_value(value: &mut Value, refuse: bool, tally: &mut Tally) -> Result<(), Error> {
    match value {
        Value::String(text) => screen("metadata", text, refuse, tally),
        Value::Array(items) => items
            .iter_mut()
            .try_for_each(|v| screen_value(v, refuse, tally)),
        Value::Object(map) => map
            .values_mut()
            .try_for_each(|v| screen_value(v, refuse, tally)),
        Value::Number(n) => {
            // A card number sent as a JSON number is a card number still.
            let mut digits = n.to_string();
            screen("metadata", &mut digits, refuse, tally)?;
            if digits != n.to_string() {
                *value = Value::String(digits);
            }
            Ok(())
        }
        Value::Null | Value::Bool(_) => Ok(()),
    }
}
