//! The OpenAPI 3.1 document of the REST API, served at
//! `/api/v1/openapi.json`. Paths are written out here next to
//! [`super::api::router`]; the schemas are generated from the very types the
//! handlers read and write (JSON Schema 2020-12, which OpenAPI 3.1 uses), so
//! they cannot drift from the code. A test checks every route is listed.

use std::sync::LazyLock;

use schemars::JsonSchema;
use schemars::generate::{SchemaGenerator, SchemaSettings};
use serde_json::{Map, Value, json};

use super::api::{AUDIT, BASE, ContextQuery, OwnerQuery};
use super::problem::Problem;
use crate::context::UserContext;
use crate::params::{CorrectParams, ForgetParams, ListParams, RecallParams, RememberParams};
use crate::service::{
    AuditPage, AuditParams, CorrectResult, ForgetResult, HistoryResult, MemoryDetail, MemoryPage,
    RecallResult, RememberResult,
};
use crate::store::{UserExport, UserStats};

static DOCUMENT: LazyLock<Value> = LazyLock::new(build);

/// The document (built once).
pub fn document() -> &'static Value {
    &DOCUMENT
}

fn settings() -> SchemaSettings {
    SchemaSettings::draft2020_12().with(|s| {
        s.definitions_path = "/components/schemas".into();
        s.meta_schema = None;
    })
}

/// Schemas for what clients send (optional fields as serde reads them) and
/// for what they receive (as serde writes them).
struct Schemas {
    requests: SchemaGenerator,
    responses: SchemaGenerator,
}

impl Schemas {
    fn request<T: JsonSchema>(&mut self) -> Value {
        self.requests.subschema_for::<T>().to_value()
    }

    fn response<T: JsonSchema>(&mut self) -> Value {
        self.responses.subschema_for::<T>().to_value()
    }

    /// The properties of a query-string type, as OpenAPI `in: query` parameters.
    fn query_parameters<T: JsonSchema>(&mut self) -> Vec<Value> {
        let schema = self.requests.root_schema_for::<T>().to_value();
        let required: Vec<&str> = schema["required"]
            .as_array()
            .map(|r| r.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        let Some(properties) = schema["properties"].as_object() else {
            return Vec::new();
        };
        properties
            .iter()
            .map(|(name, property)| {
                let mut property = property.clone();
                let description = property
                    .as_object_mut()
                    .and_then(|p| p.remove("description"))
                    .unwrap_or_else(|| json!(""));
                json!({
                    "name": name,
                    "in": "query",
                    "required": required.contains(&name.as_str()),
                    "description": description,
                    "schema": property,
                })
            })
            .collect()
    }

    /// Both sides' schemas in one map. A type used on both sides must read
    /// as it writes: one name, one schema (the unit tests build the
    /// document, so a type that does not fails there).
    fn components(mut self) -> Map<String, Value> {
        let mut all = self.requests.take_definitions(true);
        for (name, schema) in self.responses.take_definitions(true) {
            debug_assert!(
                all.get(&name).is_none_or(|request| *request == schema),
                "{name} reads and writes different schemas"
            );
            all.insert(name, schema);
        }
        all
    }
}

fn path_parameter(name: &str, description: &str) -> Value {
    json!({
        "name": name,
        "in": "path",
        "required": true,
        "description": description,
        "schema": { "type": "string" },
    })
}

/// One operation: its parameters, optional JSON body and 200 response.
fn operation(
    id: &str,
    summary: &str,
    description: &str,
    parameters: Vec<Value>,
    body: Option<Value>,
    ok: Value,
) -> Value {
    let problem = json!({
        "description": "An error, with a stable `code`.",
        "content": { "application/problem+json": { "schema": { "$ref": "#/components/schemas/Problem" } } },
    });
    let mut op = json!({
        "operationId": id,
        "summary": summary,
        "description": description,
        "tags": ["memory"],
        "parameters": parameters,
        "responses": {
            "200": { "description": "OK", "content": { "application/json": { "schema": ok } } },
            "400": problem.clone(),
            "401": problem.clone(),
            "403": problem.clone(),
            "429": problem.clone(),
            "default": problem,
        },
    });
    if let Some(schema) = body {
        op["requestBody"] = json!({
            "required": true,
            "content": { "application/json": { "schema": schema } },
        });
    }
    op
}

/// `op` with the answers only a correction gives named: 404 and 409.
fn correct_operation(mut op: Value) -> Value {
    let problem = op["responses"]["default"].clone();
    op["responses"]["404"] = problem.clone();
    op["responses"]["409"] = problem;
    op
}

fn build() -> Value {
    let mut s = Schemas {
        requests: settings().for_deserialize().into_generator(),
        responses: settings().for_serialize().into_generator(),
    };
    let user = || path_parameter("user_id", "The user; a user key may name only its own.");
    let memory = || path_parameter("memory_id", "A memory id (UUID) from remember or search.");
    let owner = s.query_parameters::<OwnerQuery>();
    let mut paths = Map::new();

    paths.insert(
        BASE.to_owned(),
        json!({
            "post": operation(
                "remember",
                "Remember a text or a conversation",
                "Extracts facts (with an LLM when configured), deduplicates them against what \
                 is stored and reconciles them (ADD / UPDATE / SUPERSEDE / NONE). `user_id` \
                 defaults to the key's user.",
                vec![],
                Some(s.request::<RememberParams>()),
                s.response::<RememberResult>(),
            ),
            "get": operation(
                "list_memories",
                "List a user's memories, page by page",
                "The user's current memories, oldest first (by creation time, then id), up to \
                 `limit` (1..=100, default 50) a page. Pass the answer's `next_cursor` as \
                 `cursor` for the next page; it is null on the last. Pages are keyed, not \
                 counted: a memory written or forgotten between two pages never makes another \
                 repeat or go missing. A cursor this server did not give is 400 naming \
                 `cursor`. `user_id` defaults to the key's user.",
                s.query_parameters::<ListParams>(),
                None,
                s.response::<MemoryPage>(),
            ),
        }),
    );
    paths.insert(
        format!("{BASE}/search"),
        json!({ "post": operation(
            "search",
            "Search memories",
            "Vector and keyword search over the user's current memories, best first.",
            vec![],
            Some(s.request::<RecallParams>()),
            s.response::<RecallResult>(),
        )}),
    );
    paths.insert(
        format!("{BASE}/forget"),
        json!({ "post": operation(
            "forget",
            "Forget memories: one, a user's, or a selection",
            "The MCP `forget` tool's arguments. `{memory_id}` deletes one memory; `{user_id, \
             all: true}` every memory of the user, with their API keys (as DELETE \
             /users/{user_id}); `{user_id, all: true}` with any of `agent_id`, `run_id`, \
             `filters` (metadata equality, as search's) and `before` (created before that \
             instant) deletes the memories they all select, current and superseded, with \
             their history and deferred remembers, and leaves keys alone. Narrowing without \
             `all: true` is refused. `deleted` is how many memories went. Cannot be undone.",
            vec![],
            Some(s.request::<ForgetParams>()),
            s.response::<ForgetResult>(),
        )}),
    );
    let mut context_parameters = vec![user()];
    context_parameters.extend(s.query_parameters::<ContextQuery>());
    paths.insert(
        format!("{BASE}/context/{{user_id}}"),
        json!({ "get": operation(
            "context",
            "A user's profile for a system prompt",
            "The user's memories as text ready for a system prompt, and the memories: most \
             recent first, or the most relevant to `query` first.",
            context_parameters,
            None,
            s.response::<UserContext>(),
        )}),
    );
    paths.insert(
        format!("{BASE}/stats/{{user_id}}"),
        json!({ "get": operation(
            "stats",
            "Counts for a user",
            "Current and superseded memories, history events, deferred remembers, categories, \
             oldest and newest, approximate storage.",
            vec![user()],
            None,
            s.response::<UserStats>(),
        )}),
    );
    paths.insert(
        format!("{BASE}/export/{{user_id}}"),
        json!({ "get": operation(
            "export",
            "Everything stored about a user",
            "Every memory (current and superseded) with its history, and deferred remembers, \
             as one JSON document.",
            vec![user()],
            None,
            s.response::<UserExport>(),
        )}),
    );
    paths.insert(
        AUDIT.to_owned(),
        json!({ "get": operation(
            "audit",
            "The audit trail (admin keys)",
            "Who did what to whose memories, newest first: principal, door, client address, \
             the user's pseudonym, memories touched, outcome; sealed rows carry their place \
             in the hash chain. Page with `next_before`. User keys get 403.",
            s.query_parameters::<AuditParams>(),
            None,
            s.response::<AuditPage>(),
        )}),
    );
    paths.insert(
        format!("{BASE}/users/{{user_id}}"),
        json!({ "delete": operation(
            "forget_user",
            "Forget a user (right to be forgotten)",
            "Deletes every memory, history row and deferred remember of the user, and their \
             cache entries. Cannot be undone.",
            vec![user()],
            None,
            s.response::<ForgetResult>(),
        )}),
    );
    let mut one = vec![memory()];
    one.extend(owner.iter().cloned());
    paths.insert(
        format!("{BASE}/{{memory_id}}"),
        json!({
            "get": operation(
                "get_memory",
                "One memory",
                "A memory of the user, current or superseded (`current`, `valid_to`); 404 if unknown \
                 or another user's.",
                one.clone(),
                None,
                s.response::<MemoryDetail>(),
            ),
            "put": correct_operation(
                operation(
                    "correct_memory",
                    "Correct a memory (mem0's update)",
                    "Stores `text` (as given, checked and screened for secrets as remember's) \
                     as a new version of the memory, with a new id, that supersedes it: the old \
                     version stays readable by its id (`current: false`) and its history ends \
                     with the SUPERSEDE naming the new text. The new version keeps the old \
                     one's scope, categories and expiry, and its metadata unless `metadata` is \
                     given. The answer is the new version with `event: SUPERSEDE` and \
                     `replaces` (the old id); the same text and metadata change nothing \
                     (`event: NONE`, the memory as it is). 404 if unknown or another user's; \
                     409 `conflict` if it is no longer current (correct its successor) or \
                     another current memory already says exactly this. Read-only keys get 403.",
                    one.clone(),
                    Some(s.request::<CorrectParams>()),
                    s.response::<CorrectResult>(),
                ),
            ),
            "delete": operation(
                "forget_memory",
                "Forget one memory",
                "Deletes the memory and its history. Cannot be undone.",
                one.clone(),
                None,
                s.response::<ForgetResult>(),
            ),
        }),
    );
    paths.insert(
        format!("{BASE}/{{memory_id}}/history"),
        json!({ "get": operation(
            "history",
            "A memory's history",
            "Every change of the memory (ADD, UPDATE, SUPERSEDE), oldest first.",
            one,
            None,
            s.response::<HistoryResult>(),
        )}),
    );
    s.response::<Problem>();

    json!({
        "openapi": "3.1.0",
        "jsonSchemaDialect": "https://json-schema.org/draft/2020-12/schema",
        "info": {
            "title": "engram",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Long-term memory for AI agents. Every request needs \
                `Authorization: Bearer <key>` (`engram keys create`); a user key acts for its \
                own user only. Errors are application/problem+json with a stable `code`. \
                Rate limited per API key and per acting user (429 with Retry-After).",
        },
        "servers": [{ "url": "/" }],
        "security": [{ "bearer": [] }],
        "tags": [{ "name": "memory" }],
        "paths": paths,
        "components": {
            "securitySchemes": { "bearer": { "type": "http", "scheme": "bearer" } },
            "schemas": s.components(),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every `$ref` points at a schema the document defines.
    #[test]
    fn references_resolve() {
        fn refs<'a>(v: &'a Value, out: &mut Vec<&'a str>) {
            match v {
                Value::Object(m) => {
                    if let Some(Value::String(r)) = m.get("$ref") {
                        out.push(r);
                    }
                    m.values().for_each(|v| refs(v, out));
                }
                Value::Array(a) => a.iter().for_each(|v| refs(v, out)),
                _ => {}
            }
        }
        let doc = document();
        let mut found = Vec::new();
        refs(doc, &mut found);
        assert!(found.len() > 10, "{found:?}");
        for r in found {
            let name = r
                .strip_prefix("#/components/schemas/")
                .unwrap_or_else(|| panic!("unexpected $ref {r}"));
            assert!(
                doc["components"]["schemas"].get(name).is_some(),
                "{r} is not defined"
            );
        }
    }
}
