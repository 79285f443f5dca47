//! The reference pages' generated parts, rendered as Markdown from the code
//! they describe, so that they cannot drift from it: `engram reference
//! config|rest|tools` prints them, docs/operations.md and docs/api.md hold
//! them between `<!-- generated: engram reference NAME -->` and
//! `<!-- end generated -->`, and `tests/it/docs.rs` fails when a page holds
//! anything else (`ENGRAM_BLESS_DOCS=1` rewrites the pages instead).
//!
//! * `config`: every setting ([`crate::config::reference`]).
//! * `rest`: every REST operation and schema of the OpenAPI document served
//!   at `/api/v1/openapi.json`.
//! * `tools`: every MCP tool as `tools/list` gives it: description,
//!   annotations, input and output JSON Schemas.

use serde_json::Value;

/// A generated part, by the name `engram reference` takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Part {
    /// Every setting: variable, default, meaning.
    Config,
    /// The REST API, from its OpenAPI document.
    Rest,
    /// The MCP tools, from `tools/list`.
    Tools,
}

impl Part {
    /// Every part, in the order the pages use them.
    pub const ALL: [Part; 3] = [Part::Config, Part::Rest, Part::Tools];

    /// The name in `engram reference NAME` and in the page markers.
    pub fn name(self) -> &'static str {
        match self {
            Part::Config => "config",
            Part::Rest => "rest",
            Part::Tools => "tools",
        }
    }

    /// The part as Markdown.
    pub fn render(self) -> String {
        match self {
            Part::Config => crate::config::reference::markdown_table(),
            Part::Rest => rest(crate::http::openapi_document()),
            Part::Tools => tools(&crate::mcp::tool_list()),
        }
    }
}

const METHODS: [&str; 5] = ["get", "post", "put", "patch", "delete"];

/// Every operation (path order, then method), then every schema.
fn rest(document: &Value) -> String {
    let mut out = String::new();
    let Some(paths) = document["paths"].as_object() else {
        return out;
    };
    for (path, item) in paths {
        for method in METHODS {
            let op = &item[method];
            if op.is_null() {
                continue;
            }
            out.push_str(&format!(
                "### `{} {path}`\n\n{}\n\n",
                method.to_ascii_uppercase(),
                text(&op["summary"])
            ));
            let description = text(&op["description"]);
            if !description.is_empty() {
                out.push_str(&format!("{description}\n\n"));
            }
            if let Some(parameters) = op["parameters"].as_array().filter(|p| !p.is_empty()) {
                out.push_str(
                    "| parameter | in | required | type | meaning |\n|---|---|---|---|---|\n",
                );
                for p in parameters {
                    out.push_str(&format!(
                        "| `{}` | {} | {} | {} | {} |\n",
                        text(&p["name"]),
                        text(&p["in"]),
                        yes_no(&p["required"]),
                        type_of(&p["schema"]),
                        cell(&text(&p["description"])),
                    ));
                }
                out.push('\n');
            }
            if let Some(body) =
                op["requestBody"]["content"]["application/json"]["schema"].as_object()
            {
                out.push_str(&format!(
                    "Body: {}.\n\n",
                    type_of(&Value::Object(body.clone()))
                ));
            }
            if let Some(responses) = op["responses"].as_object() {
                let schema_of = |r: &Value| {
                    r["content"]
                        .as_object()
                        .and_then(|c| c.values().next())
                        .map(|c| format!(" with {}", type_of(&c["schema"])))
                        .unwrap_or_default()
                };
                let (ok, errors): (Vec<_>, Vec<_>) = responses
                    .iter()
                    .partition(|(status, _)| status.starts_with('2'));
                let ok: Vec<String> = ok
                    .iter()
                    .map(|(status, r)| format!("`{status}`{}", schema_of(r)))
                    .collect();
                let errors: Vec<String> = errors
                    .iter()
                    .filter(|(status, _)| status.as_str() != "default")
                    .map(|(status, _)| format!("`{status}`"))
                    .collect();
                out.push_str(&format!("Answers {}", ok.join(", ")));
                if !errors.is_empty() {
                    out.push_str(&format!(
                        "; errors {} (and any other, as [`Problem`](#problem))",
                        errors.join(", ")
                    ));
                }
                out.push_str(".\n\n");
            }
        }
    }
    if let Some(schemas) = document["components"]["schemas"].as_object() {
        out.push_str("### Schemas\n\n");
        for (name, schema) in schemas {
            out.push_str(&format!("#### `{name}`\n\n"));
            let description = text(&schema["description"]);
            if !description.is_empty() {
                out.push_str(&format!("{description}\n\n"));
            }
            match schema["properties"].as_object() {
                Some(properties) if !properties.is_empty() => {
                    let required: Vec<&str> = schema["required"]
                        .as_array()
                        .map(|r| r.iter().filter_map(Value::as_str).collect())
                        .unwrap_or_default();
                    out.push_str("| field | type | required | meaning |\n|---|---|---|---|\n");
                    for (field, property) in properties {
                        out.push_str(&format!(
                            "| `{field}` | {} | {} | {} |\n",
                            type_of(property),
                            if required.contains(&field.as_str()) {
                                "yes"
                            } else {
                                "no"
                            },
                            cell(&text(&property["description"])),
                        ));
                    }
                    out.push('\n');
                }
                _ => out.push_str(&format!("Type: {}.\n\n", type_of(schema))),
            }
        }
    }
    out
}

/// Each tool: its description, hints, and both schemas as JSON.
fn tools(tools: &[rmcp::model::Tool]) -> String {
    let mut out = String::new();
    for tool in tools {
        out.push_str(&format!("### `{}`\n\n", tool.name));
        if let Some(description) = &tool.description {
            out.push_str(&format!("{description}\n\n"));
        }
        if let Some(a) = &tool.annotations {
            let hints = [
                ("read-only", a.read_only_hint),
                ("destructive", a.destructive_hint),
                ("idempotent", a.idempotent_hint),
                ("open world", a.open_world_hint),
            ];
            let listed: Vec<String> = hints
                .iter()
                .filter_map(|(name, hint)| {
                    hint.map(|h| format!("{name}: {}", if h { "yes" } else { "no" }))
                })
                .collect();
            out.push_str(&format!("Hints: {}.\n\n", listed.join(", ")));
        }
        out.push_str("Input schema:\n\n```json\n");
        out.push_str(&pretty(&Value::Object((*tool.input_schema).clone())));
        out.push_str("\n```\n\n");
        if let Some(output) = &tool.output_schema {
            out.push_str("Output schema:\n\n```json\n");
            out.push_str(&pretty(&Value::Object((**output).clone())));
            out.push_str("\n```\n\n");
        }
    }
    out
}

fn pretty(value: &Value) -> String {
    serde_json::to_string_pretty(value).unwrap_or_default()
}

fn text(value: &Value) -> String {
    value.as_str().unwrap_or_default().trim().to_owned()
}

fn yes_no(value: &Value) -> &'static str {
    if value.as_bool().unwrap_or(false) {
        "yes"
    } else {
        "no"
    }
}

/// Text that fits a table cell: one line, pipes escaped.
fn cell(text: &str) -> String {
    text.split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .replace('|', "\\|")
}

/// A schema in a few words: a `$ref`'s name, a type (with its items'), or
/// the alternatives of a `oneOf`/`anyOf`.
fn type_of(schema: &Value) -> String {
    if let Some(reference) = schema["$ref"].as_str() {
        let name = reference.rsplit('/').next().unwrap_or(reference);
        return format!("[`{name}`](#{})", name.to_ascii_lowercase());
    }
    for key in ["oneOf", "anyOf"] {
        if let Some(options) = schema[key].as_array() {
            let names: Vec<String> = options.iter().map(type_of).collect();
            return names.join(" or ");
        }
    }
    match &schema["type"] {
        Value::String(t) if t == "array" => format!("array of {}", type_of(&schema["items"])),
        Value::String(t) => format!("`{t}`"),
        Value::Array(types) => types
            .iter()
            .filter_map(Value::as_str)
            .map(|t| format!("`{t}`"))
            .collect::<Vec<_>>()
            .join(" or "),
        _ if schema.get("enum").is_some() => "one of the listed values".to_owned(),
        _ => "any JSON".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_route_and_tool_is_in_the_reference() {
        let rest = Part::Rest.render();
        let document = crate::http::openapi_document();
        for path in document["paths"].as_object().expect("paths").keys() {
            assert!(rest.contains(&format!(" {path}`")), "{path} missing");
        }
        let tools = Part::Tools.render();
        for name in ["remember", "recall", "user_context", "forget"] {
            assert!(tools.contains(&format!("### `{name}`")), "{name} missing");
        }
        assert!(tools.contains("\"properties\""));
    }

    #[test]
    fn a_schema_reads_in_a_few_words() {
        let reference = serde_json::json!({"$ref": "#/components/schemas/RecallResult"});
        assert_eq!(type_of(&reference), "[`RecallResult`](#recallresult)");
        let list = serde_json::json!({"type": "array", "items": {"type": "string"}});
        assert_eq!(type_of(&list), "array of `string`");
        let nullable = serde_json::json!({"type": ["string", "null"]});
        assert_eq!(type_of(&nullable), "`string` or `null`");
        assert_eq!(cell("a |\n b"), "a \\| b");
    }
}
