//! Metadata: the free-form object a caller attaches to a memory, and the
//! equality filters a recall applies to it.

use serde_json::Value;

use super::{Invalid, control_in_text, truncate};

/// Free-form JSON object attached to a memory by the caller.
pub type Metadata = serde_json::Map<String, Value>;

/// Largest accepted metadata object, serialised, in bytes.
pub const MAX_METADATA_BYTES: usize = 16 * 1024;

/// Metadata equality filters: every pair must match the memory's metadata exactly.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MetadataFilter(Vec<(String, Value)>);

impl MetadataFilter {
    /// No filter: every memory matches.
    pub const fn none() -> Self {
        Self(Vec::new())
    }

    /// Accepts `{key: scalar, ...}`; refuses nested objects, arrays and null,
    /// saying which key was wrong and what is accepted.
    pub fn parse(raw: Option<&Metadata>) -> Result<Self, Invalid> {
        let Some(raw) = raw else {
            return Ok(Self::default());
        };
        let mut pairs = Vec::with_capacity(raw.len());
        for (key, value) in raw {
            if key.is_empty() {
                return Err(Invalid::new("filters", "keys must not be empty"));
            }
            check_key("filters", key)?;
            let kind = match value {
                Value::String(s) => {
                    check_value("filters", key, s)?;
                    pairs.push((key.clone(), value.clone()));
                    continue;
                }
                Value::Number(_) | Value::Bool(_) => {
                    pairs.push((key.clone(), value.clone()));
                    continue;
                }
                Value::Null => "null",
                Value::Array(_) => "an array",
                Value::Object(_) => "an object",
            };
            return Err(Invalid::new(
                "filters",
                format!(
                    "`{key}` is {kind}; filters match metadata by equality, so each value \
                     must be a string, number or boolean, e.g. {{\"{key}\": \"travel\"}}"
                ),
            ));
        }
        Ok(Self(pairs))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn pairs(&self) -> &[(String, Value)] {
        &self.0
    }

    /// True when `metadata` holds every pair with an equal value; numbers
    /// are equal by value (`5.0` matches `5`), as both stores compare them.
    pub fn matches(&self, metadata: &Metadata) -> bool {
        self.0
            .iter()
            .all(|(k, v)| metadata.get(k).is_some_and(|m| same_scalar(m, v)))
    }
}

fn same_scalar(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => match (x.as_i64(), y.as_i64()) {
            (Some(x), Some(y)) => x == y,
            _ => x.as_f64() == y.as_f64(),
        },
        _ => a == b,
    }
}

/// A metadata key: no control characters at all.
fn check_key(field: &'static str, key: &str) -> Result<(), Invalid> {
    match key.chars().find(|c| c.is_control()) {
        None => Ok(()),
        Some(c) => Err(Invalid::new(
            field,
            format!(
                "the key '{}' contains the control character U+{:04X}; keys must be printable text",
                truncate(key, 60).escape_debug(),
                u32::from(c)
            ),
        )),
    }
}

/// A string value: the rule for text (tabs and line breaks, no other control characters).
fn check_value(field: &'static str, key: &str, value: &str) -> Result<(), Invalid> {
    match control_in_text(value) {
        None => Ok(()),
        Some(c) => Err(Invalid::new(
            field,
            format!(
                "the value of `{}` contains the control character U+{:04X}{}; string values \
                 may hold tabs and line breaks but no other control characters",
                truncate(key, 60).escape_debug(),
                u32::from(c),
                if c == '\0' { " (NUL)" } else { "" }
            ),
        )),
    }
}

/// Every key and string in `value`, at any depth, checked as above; `key`
/// names the innermost key around `value`.
fn check_tree(key: &str, value: &Value) -> Result<(), Invalid> {
    match value {
        Value::String(s) => check_value("metadata", key, s),
        Value::Array(items) => items.iter().try_for_each(|v| check_tree(key, v)),
        Value::Object(map) => map.iter().try_for_each(|(k, v)| {
            check_key("metadata", k)?;
            check_tree(k, v)
        }),
        Value::Null | Value::Bool(_) | Value::Number(_) => Ok(()),
    }
}

/// Checks caller metadata: an object of bounded size whose keys and
/// strings hold no control characters (but tabs and line breaks in strings).
pub fn validate_metadata(metadata: Option<Metadata>) -> Result<Metadata, Invalid> {
    let metadata = metadata.unwrap_or_default();
    for (key, value) in &metadata {
        check_key("metadata", key)?;
        check_tree(key, value)?;
    }
    let size = serde_json::to_vec(&metadata).map(|v| v.len()).unwrap_or(0);
    if size > MAX_METADATA_BYTES {
        return Err(Invalid::new(
            "metadata",
            format!("is {size} bytes serialised; at most {MAX_METADATA_BYTES} are accepted"),
        ));
    }
    Ok(metadata)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn filters_accept_scalars_and_refuse_shapes() {
        let ok = json!({"topic": "travel", "n": 3, "flag": true});
        let f = MetadataFilter::parse(ok.as_object()).unwrap();
        assert_eq!(f.pairs().len(), 3);
        assert!(f.matches(ok.as_object().unwrap()));

        for bad in [
            json!({"a": {"b": 1}}),
            json!({"a": [1]}),
            json!({"a": null}),
        ] {
            let err = MetadataFilter::parse(bad.as_object())
                .unwrap_err()
                .to_string();
            assert!(err.contains("`a`"), "{err}");
            assert!(err.contains("string, number or boolean"), "{err}");
        }
    }

    #[test]
    fn numbers_match_by_value() {
        let stored = json!({"n": 5, "x": 2.5});
        let f = MetadataFilter::parse(json!({"n": 5.0}).as_object()).unwrap();
        assert!(f.matches(stored.as_object().unwrap()));
        let f = MetadataFilter::parse(json!({"x": 2.5, "n": 5}).as_object()).unwrap();
        assert!(f.matches(stored.as_object().unwrap()));
        let f = MetadataFilter::parse(json!({"n": "5"}).as_object()).unwrap();
        assert!(!f.matches(stored.as_object().unwrap()));
    }

    #[test]
    fn control_characters_are_refused_in_keys_and_strings() {
        for bad in [
            json!({"a\u{0}": 1}),
            json!({"a": "x\u{0}y"}),
            json!({"a": "x\u{1b}y"}),
            json!({"a": {"b\nc": 1}}),
            json!({"a": [{"b": "\u{0}"}]}),
        ] {
            let err = validate_metadata(bad.as_object().cloned()).unwrap_err();
            assert_eq!(err.field, "metadata");
            assert!(err.message.contains("control character"), "{err}");
        }
        assert!(validate_metadata(json!({"a": "tab\tline\r\n"}).as_object().cloned()).is_ok());
        for bad in [json!({"a": "x\u{0}"}), json!({"a\u{7}": "x"})] {
            let err = MetadataFilter::parse(bad.as_object()).unwrap_err();
            assert_eq!(err.field, "filters");
        }
    }
}
