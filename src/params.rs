//! The arguments both doors accept, defined once: MCP tool arguments (their
//! JSON Schema is what clients see in `tools/list`) and REST request bodies
//! (the same schema in the OpenAPI document), and REST query parameters.
//! Unknown fields are refused; numbers, booleans and objects may also come
//! as strings, as some clients send them, and the same on every door: an
//! integer is `5`, `5.0` or `"5"` (a whole number, as JSON Schema's
//! `integer` has it), never `5.5`.

use schemars::JsonSchema;
use serde::Deserialize;

use crate::model::{Message, Metadata};

#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RememberParams {
    /// Text to remember. Give this or `messages`.
    pub text: Option<String>,
    /// A conversation to remember: [{role: user|assistant|system|tool, content, date?}];
    /// `date` (2026-11-20 or RFC 3339) is when the message was said.
    #[serde(default, deserialize_with = "lenient::messages")]
    pub messages: Option<Vec<Message>>,
    /// Whose memory this is; defaults to the caller's own (the API key's user, else the server's default user).
    pub user_id: Option<String>,
    /// Narrows the memory to one agent.
    pub agent_id: Option<String>,
    /// Narrows the memory to one run or session.
    pub run_id: Option<String>,
    /// Free-form JSON object stored with the memory; recall can filter on it.
    #[serde(default, deserialize_with = "lenient::object")]
    pub metadata: Option<Metadata>,
    /// false stores the text as given, without extraction. Default true.
    #[serde(default, deserialize_with = "lenient::boolean")]
    pub infer: Option<bool>,
    /// Keep these memories at most this many days (1..=36500), after which
    /// they are never returned and are purged. The operator's retention, if
    /// shorter, still applies.
    #[serde(default, deserialize_with = "lenient::integer")]
    pub ttl_days: Option<i64>,
}

#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RecallParams {
    /// What to look for, in natural language or keywords.
    pub query: String,
    /// Whose memories to search; defaults to the caller's own (the API key's user, else the server's default user).
    pub user_id: Option<String>,
    /// Only memories of this agent.
    pub agent_id: Option<String>,
    /// Only memories of this run.
    pub run_id: Option<String>,
    /// How many results, 1..=100 (default 10).
    #[serde(default, deserialize_with = "lenient::integer")]
    pub limit: Option<i64>,
    /// Metadata equality filters, e.g. {"topic": "travel"}; values must be
    /// strings, numbers or booleans.
    #[serde(default, deserialize_with = "lenient::object")]
    pub filters: Option<Metadata>,
    /// Only results scoring at least this, 0..=1 (default 0: up to `limit`
    /// results however weak). Scores are absolute: unrelated memories score
    /// near 0, and 0.2 keeps only what shares words or meaning with the query.
    #[serde(default, deserialize_with = "lenient::number")]
    pub min_score: Option<f64>,
}

#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UserContextParams {
    /// Whose profile; defaults to the caller's own (the API key's user, else the server's default user).
    pub user_id: Option<String>,
    /// Only memories of this agent.
    pub agent_id: Option<String>,
    /// Only memories of this run.
    pub run_id: Option<String>,
    /// How many memories, 1..=100 (default 20).
    #[serde(default, deserialize_with = "lenient::integer")]
    pub limit: Option<i64>,
    /// Optional focus, e.g. the conversation's topic: memories most relevant to
    /// it come first, then the most recent.
    pub query: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ForgetParams {
    /// Delete this one memory (an id from remember or recall).
    pub memory_id: Option<String>,
    /// The memory's owner; defaults to the caller's own (the API key's user,
    /// else the server's default user). With `all: true` it must be given
    /// explicitly.
    pub user_id: Option<String>,
    /// true deletes every memory of `user_id`, with their history (and the
    /// user's API keys); with `agent_id`, `run_id`, `filters` or `before`,
    /// only the memories they select (keys untouched).
    #[serde(default, deserialize_with = "lenient::boolean")]
    pub all: Option<bool>,
    /// With `all: true`: only memories of this agent.
    pub agent_id: Option<String>,
    /// With `all: true`: only memories of this run.
    pub run_id: Option<String>,
    /// With `all: true`: only memories whose metadata has these values, as
    /// recall's `filters`, e.g. {"topic": "travel"}; values must be strings,
    /// numbers or booleans.
    #[serde(default, deserialize_with = "lenient::object")]
    pub filters: Option<Metadata>,
    /// With `all: true`: only memories created before this instant, an RFC
    /// 3339 time (2026-11-20T09:30:00Z) or a date (2026-11-20: its midnight, UTC).
    pub before: Option<String>,
}

impl ForgetParams {
    /// The narrowing arguments given (`agent_id`, `run_id`, `filters`,
    /// `before`), by name: a forget with any of them deletes a selection
    /// of the user's memories.
    pub fn narrowing(&self) -> Vec<&'static str> {
        [
            ("agent_id", self.agent_id.is_some()),
            ("run_id", self.run_id.is_some()),
            ("filters", self.filters.is_some()),
            ("before", self.before.is_some()),
        ]
        .into_iter()
        .filter_map(|(name, given)| given.then_some(name))
        .collect()
    }
}

/// Requests that name a scope: a user (omitted: the caller's own), and
/// optionally an agent and a run. The service resolves them into a checked
/// [`crate::model::Scope`].
pub trait Scoped {
    /// `(user_id, agent_id, run_id)` as given.
    fn scope_ids(&self) -> (Option<&str>, Option<&str>, Option<&str>);
}

macro_rules! scoped {
    ($($params:ty),*) => {$(
        impl Scoped for $params {
            fn scope_ids(&self) -> (Option<&str>, Option<&str>, Option<&str>) {
                (
                    self.user_id.as_deref(),
                    self.agent_id.as_deref(),
                    self.run_id.as_deref(),
                )
            }
        }
    )*};
}

scoped!(RememberParams, RecallParams, UserContextParams);

/// A memory named by id (REST: the path), and its owner (the `user_id`
/// query parameter; default: the caller's own user).
#[derive(Debug, Default)]
pub struct MemoryRef {
    pub memory_id: String,
    pub user_id: Option<String>,
}

/// A correction of one memory (`PUT /api/v1/memory/{memory_id}`, mem0's
/// `update`): the text it should say instead, stored as given.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CorrectParams {
    /// The corrected text, stored as given (no extraction), checked and
    /// screened for secrets as `remember`'s.
    pub text: Option<String>,
    /// The new version's metadata, in place of the old version's; omitted:
    /// the old version's is kept.
    #[serde(default, deserialize_with = "lenient::object")]
    pub metadata: Option<Metadata>,
}

/// Which page of a user's memories (`GET /api/v1/memory`).
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ListParams {
    /// Whose memories; defaults to the caller's own (the API key's user, else the server's default user).
    pub user_id: Option<String>,
    /// Where to go on: the previous page's `next_cursor`, as given. Omitted: the first page.
    pub cursor: Option<String>,
    /// How many memories, 1..=100 (default 50).
    #[serde(default, deserialize_with = "lenient::integer")]
    pub limit: Option<i64>,
}

/// Argument decoders that also accept the string forms some clients send
/// (the MCP Inspector CLI passes every `--tool-arg` as a string when a schema
/// type is nullable): `"5"` for 5, `"true"` for true, `"{...}"` for an object.
pub(crate) mod lenient {
    use serde::de::Error as _;
    use serde::{Deserialize, Deserializer};
    use serde_json::Value;

    use crate::model::{Message, Metadata};

    /// An integer: a JSON number without a fractional part (`5` or `5.0`,
    /// as JSON Schema's `integer` has it), or the same written as a string.
    pub fn integer<'de, D: Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
        match Option::<Value>::deserialize(d)? {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Number(n)) => whole(n.as_i64(), n.as_f64())
                .map(Some)
                .ok_or_else(|| D::Error::custom(format!("invalid type: {n} is not an integer"))),
            Some(Value::String(s)) => {
                let t = s.trim();
                whole(t.parse().ok(), t.parse().ok())
                    .map(Some)
                    .ok_or_else(|| {
                        D::Error::custom(format!(
                            "invalid type: string \"{s}\", expected an integer"
                        ))
                    })
            }
            Some(other) => Err(D::Error::custom(format!(
                "invalid type: {other}, expected an integer"
            ))),
        }
    }

    /// `exact`, else `float` when it is a whole number an `i64` holds exactly.
    fn whole(exact: Option<i64>, float: Option<f64>) -> Option<i64> {
        const EXACT: f64 = 9_007_199_254_740_992.0; // 2^53
        exact.or_else(|| {
            float
                .filter(|x| x.fract() == 0.0 && x.abs() <= EXACT)
                .map(|x| x as i64)
        })
    }

    pub fn number<'de, D: Deserializer<'de>>(d: D) -> Result<Option<f64>, D::Error> {
        match Option::<Value>::deserialize(d)? {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Number(n)) => n
                .as_f64()
                .map(Some)
                .ok_or_else(|| D::Error::custom(format!("invalid type: {n} is not a number"))),
            Some(Value::String(s)) => s.trim().parse().map(Some).map_err(|_| {
                D::Error::custom(format!("invalid type: string \"{s}\", expected a number"))
            }),
            Some(other) => Err(D::Error::custom(format!(
                "invalid type: {other}, expected a number"
            ))),
        }
    }

    pub fn boolean<'de, D: Deserializer<'de>>(d: D) -> Result<Option<bool>, D::Error> {
        match Option::<Value>::deserialize(d)? {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(b)),
            Some(Value::String(s)) if s.trim() == "true" => Ok(Some(true)),
            Some(Value::String(s)) if s.trim() == "false" => Ok(Some(false)),
            Some(other) => Err(D::Error::custom(format!(
                "invalid type: {other}, expected true or false"
            ))),
        }
    }

    /// A list of messages, or that list written as a JSON string (clients
    /// that pass every argument as text).
    pub fn messages<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<Message>>, D::Error> {
        let value = match Option::<Value>::deserialize(d)? {
            None | Some(Value::Null) => return Ok(None),
            Some(Value::String(s)) => serde_json::from_str::<Value>(&s).map_err(|_| {
                D::Error::custom(format!(
                    "invalid type: string \"{s}\", expected a list of messages such as \
                     [{{\"role\": \"user\", \"content\": \"...\"}}]"
                ))
            })?,
            Some(other) => other,
        };
        // Each message an object: serde would also take `["user", "hi"]`.
        if let Value::Array(items) = &value
            && let Some(i) = items.iter().position(|m| !m.is_object())
        {
            return Err(D::Error::custom(format!(
                "message {i} is not an object; each message is {{\"role\": ..., \"content\": ...}}"
            )));
        }
        serde_json::from_value(value)
            .map(Some)
            .map_err(D::Error::custom)
    }

    pub fn object<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Metadata>, D::Error> {
        match Option::<Value>::deserialize(d)? {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Object(map)) => Ok(Some(map)),
            Some(Value::String(s)) => match serde_json::from_str::<Value>(&s) {
                Ok(Value::Object(map)) => Ok(Some(map)),
                _ => Err(D::Error::custom(format!(
                    "invalid type: string \"{s}\", expected a JSON object such as {{\"topic\": \"travel\"}}"
                ))),
            },
            Some(other) => Err(D::Error::custom(format!(
                "invalid type: {other}, expected a JSON object such as {{\"topic\": \"travel\"}}"
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn limit(v: serde_json::Value) -> Result<Option<i64>, String> {
        serde_json::from_value::<RecallParams>(json!({"query": "q", "limit": v}))
            .map(|p| p.limit)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn an_integer_is_a_whole_number_in_any_form() {
        for ok in [json!(5), json!(5.0), json!("5"), json!(" 5.0 "), json!(5e0)] {
            assert_eq!(limit(ok.clone()), Ok(Some(5)), "{ok}");
        }
        for bad in [
            json!(5.5),
            json!("5.5"),
            json!("five"),
            json!(true),
            json!(1e300),
        ] {
            let err = limit(bad.clone()).unwrap_err();
            assert!(err.contains("integer"), "{bad}: {err}");
        }
    }

    #[test]
    fn messages_are_objects() {
        let err = serde_json::from_value::<RememberParams>(json!({"messages": [["user", "hi"]]}))
            .unwrap_err()
            .to_string();
        assert!(err.contains("message 0 is not an object"), "{err}");
    }
}
