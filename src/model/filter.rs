//! Metadata: the free-form object a caller attaches to a memory, and the
//! equality filters a recall applies to it.

use serde_json::Value;

use super::Invalid;

/// Free-form JSON object attached to a memory by the caller.
pub type Metadata = serde_json::Map<String, Value>;

/// Largest accepted metadata object, serialised, in bytes.
pub const MAX_METADATA_BYTES: usize = 16 * 1024;

/// Metadata equality filters: every pair must match the memory's metadata exactly.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MetadataFilter(Vec<(String, Value)>);

impl MetadataFilter {
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
            let kind = match value {
                Value::String(_) | Value::Number(_) | Value::Bool(_) => {
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

    /// True when `metadata` holds every pair with an equal value.
    pub fn matches(&self, metadata: &Metadata) -> bool {
        self.0.iter().all(|(k, v)| metadata.get(k) == Some(v))
    }
}

/// Checks caller metadata: an object of bounded size.
pub fn validate_metadata(metadata: Option<Metadata>) -> Result<Metadata, Invalid> {
    let metadata = metadata.unwrap_or_default();
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
}
