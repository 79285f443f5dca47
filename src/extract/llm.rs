//! [`LlmExtractor`]: an OpenAI-compatible chat model turns a conversation into
//! atomic facts about the user, each with categories from a fixed list.
//!
//! One chat request per extraction. The reply is constrained by a JSON Schema
//! (structured outputs); a server that refuses `json_schema` gets the same
//! request once more with `json_object`, and the extractor remembers to use
//! that from then on. A reply that is not the expected JSON is an error:
//! nothing is stored from it, and nothing the model invents (a category off
//! the list, an empty fact) gets through.

use std::sync::atomic::{AtomicBool, Ordering};

use async_openai::Client;
use async_openai::config::OpenAIConfig;
use async_openai::types::chat::{
    ChatCompletionRequestMessage, ChatCompletionRequestSystemMessage,
    ChatCompletionRequestUserMessage, CreateChatCompletionRequest, CreateChatCompletionResponse,
    ResponseFormat, ResponseFormatJsonSchema,
};
use async_trait::async_trait;
use serde::Deserialize;
use serde_json::json;

use super::{Action, Decided, Decision, ExtractError, Extracted, Extractor, Known, Usage};
use crate::model::{Fact, Input};
use crate::openai::Endpoint;
use crate::telemetry::spans;

/// The categories facts are filed under unless configured otherwise.
pub const DEFAULT_CATEGORIES: &[&str] = &[
    "identity",
    "preferences",
    "relationships",
    "plans",
    "health",
    "diet",
    "work",
    "travel.destinations",
    "travel.dates",
    "travel.budget",
    "travel.accommodation",
    "travel.transport",
    "travel.loyalty",
];

/// The sampling temperature of every request: the same input, the same facts.
const TEMPERATURE: f32 = 0.0;

/// At most this many facts are taken from one reply.
const MAX_FACTS: usize = 50;

/// The reconciliation instructions: one decision per new fact.
const RECONCILE_PROMPT: &str = "You keep a user's long-term memory consistent. You get the \
stored memories that resemble some new facts, each with an id, and the new facts, each with a \
number. Decide for every new fact:\n\
- ADD: it is new information that no stored memory covers.\n\
- UPDATE: it refines or adds detail to a stored memory about the same thing without \
contradicting it; give that memory's id and the merged text.\n\
- SUPERSEDE: it contradicts a stored memory (the user moved, changed a preference, a plan \
changed); give the id of the memory it replaces.\n\
- NONE: a stored memory already says it; give that memory's id.\n\
Use only ids from the list. Answer with JSON only: {\"decisions\": [{\"fact\": 0, \
\"event\": \"ADD\", \"id\": null, \"text\": \"...\"}]}, one decision per fact; \
text is the fact's final wording.";

fn decisions_schema() -> serde_json::Value {
    json!({
        "type": "object",
        "additionalProperties": false,
        "required": ["decisions"],
        "properties": {
            "decisions": {
                "type": "array",
                "items": {
                    "type": "object",
                    "additionalProperties": false,
                    "required": ["fact", "event", "id", "text"],
                    "properties": {
                        "fact": {"type": "integer"},
                        "event": {"type": "string", "enum": ["ADD", "UPDATE", "SUPERSEDE", "NONE"]},
                        "id": {"type": ["string", "null"]},
                        "text": {"type": "string"}
                    }
                }
            }
        }
    })
}

/// One chat request: instructions, the material, and the reply's schema.
struct Ask {
    name: &'static str,
    system: String,
    user: String,
    schema: serde_json::Value,
}

#[derive(Debug, Clone)]
pub struct LlmSettings {
    pub endpoint: Endpoint,
    pub model: String,
    pub categories: Vec<String>,
}

pub struct LlmExtractor {
    client: Client<OpenAIConfig>,
    settings: LlmSettings,
    /// False once the server refused `json_schema`: `json_object` from then on.
    json_schema: AtomicBool,
}

#[derive(Deserialize)]
struct Decisions {
    decisions: Vec<ReplyDecision>,
}

#[derive(Deserialize)]
struct ReplyDecision {
    fact: usize,
    event: String,
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    text: Option<String>,
}

#[derive(Deserialize)]
struct Reply {
    facts: Vec<ReplyFact>,
}

#[derive(Deserialize)]
struct ReplyFact {
    text: String,
    #[serde(default)]
    categories: Vec<String>,
}

impl LlmExtractor {
    pub fn new(settings: LlmSettings) -> Result<Self, ExtractError> {
        let client = crate::openai::client(&settings.endpoint, "ENGRAM_EXTRACTOR=verbatim")
            .map_err(ExtractError::Failed)?;
        Ok(Self {
            client,
            settings,
            json_schema: AtomicBool::new(true),
        })
    }

    fn where_(&self) -> String {
        format!(
            "the chat model {} at {}",
            self.settings.model, self.settings.endpoint.base_url
        )
    }

    /// The instructions: what a fact is, whose words count, the categories.
    fn system_prompt(&self) -> String {
        format!(
            "You extract durable facts about the user from a conversation, for the user's \
             long-term memory.\n\
             Rules:\n\
             - Each fact is one short, self-contained statement about the user, e.g. \
             \"Is vegetarian\", \"Sister is called Ana\", \"Flies to Tokyo on 2026-03-14\".\n\
             - The user's own words are the source. Use assistant messages only to understand \
             what the user confirms or refers to; never record an assistant suggestion the \
             user did not accept.\n\
             - Write absolute dates: resolve \"tomorrow\", \"next May\" against the date the \
             message was said (in parentheses after its role, when given), else against \
             today's date given below.\n\
             - Skip greetings, questions, small talk and anything not worth knowing next week. \
             If nothing is worth remembering, return an empty list.\n\
             - Write each fact in the language the user wrote it in.\n\
             - Categories: zero or more of {}.\n\
             Answer with JSON only: {{\"facts\": [{{\"text\": \"...\", \"categories\": [\"...\"]}}]}}",
            self.settings.categories.join(", ")
        )
    }

    /// The conversation as a transcript with its roles.
    fn transcript(input: &Input) -> String {
        let today = chrono::Utc::now().format("%Y-%m-%d");
        let mut text = format!("Today is {today}.\nConversation:\n");
        match input {
            Input::Text(t) => text.push_str(&format!("[user] {t}\n")),
            Input::Messages(messages) => {
                for m in messages {
                    let role = m.role.to_ascii_lowercase();
                    if matches!(role.as_str(), "user" | "assistant") && !m.content.trim().is_empty()
                    {
                        match &m.date {
                            Some(date) => {
                                text.push_str(&format!("[{role}] ({date}) {}\n", m.content.trim()))
                            }
                            None => text.push_str(&format!("[{role}] {}\n", m.content.trim())),
                        }
                    }
                }
            }
        }
        text
    }

    fn schema(&self) -> serde_json::Value {
        json!({
            "type": "object",
            "additionalProperties": false,
            "required": ["facts"],
            "properties": {
                "facts": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "additionalProperties": false,
                        "required": ["text", "categories"],
                        "properties": {
                            "text": {"type": "string"},
                            "categories": {
                                "type": "array",
                                "items": {"type": "string", "enum": self.settings.categories}
                            }
                        }
                    }
                }
            }
        })
    }

    fn request(&self, ask: &Ask, json_schema: bool) -> CreateChatCompletionRequest {
        let response_format = if json_schema {
            ResponseFormat::JsonSchema {
                json_schema: ResponseFormatJsonSchema {
                    name: ask.name.into(),
                    description: None,
                    schema: ask.schema.clone(),
                    strict: Some(true),
                },
            }
        } else {
            ResponseFormat::JsonObject
        };
        CreateChatCompletionRequest {
            model: self.settings.model.clone(),
            messages: vec![
                ChatCompletionRequestMessage::System(ChatCompletionRequestSystemMessage {
                    content: ask.system.as_str().into(),
                    name: None,
                }),
                ChatCompletionRequestMessage::User(ChatCompletionRequestUserMessage {
                    content: ask.user.clone().into(),
                    name: None,
                }),
            ],
            response_format: Some(response_format),
            temperature: Some(TEMPERATURE),
            ..Default::default()
        }
    }

    /// One chat request; the reply's text (JSON, per `ask.schema`) and its cost.
    async fn ask(&self, ask: &Ask) -> Result<(String, Usage), ExtractError> {
        let metrics = crate::metrics::metrics();
        // One span per logical call: the json_object retry is part of it.
        let span = spans::chat(
            &self.settings.model,
            &self.settings.endpoint.base_url,
            ask.name,
            Some(TEMPERATURE),
            "json",
        );
        // Counted by the configured model, a bounded set; the reply's own
        // model name may carry a version suffix.
        // A leaf span: timed by its life, never entered (see store/traced.rs).
        let response = match self.complete(ask, &span).await {
            Ok(response) => response,
            Err(e) => {
                metrics.llm_call(&self.settings.model, false, None);
                return Err(e);
            }
        };
        spans::chat_answered(&span, &response);
        let mut usage = Usage {
            model: response.model.clone(),
            calls: 1,
            ..Usage::default()
        };
        if let Some(u) = &response.usage {
            usage.prompt_tokens = u64::from(u.prompt_tokens);
            usage.completion_tokens = u64::from(u.completion_tokens);
        }
        metrics.llm_call(
            &self.settings.model,
            true,
            response
                .usage
                .as_ref()
                .map(|_| (usage.prompt_tokens, usage.completion_tokens)),
        );
        tracing::info!(
            model = %usage.model,
            task = ask.name,
            prompt_tokens = usage.prompt_tokens,
            completion_tokens = usage.completion_tokens,
            "chat model answered"
        );
        let message = response
            .choices
            .into_iter()
            .next()
            .map(|c| c.message)
            .ok_or_else(|| {
                ExtractError::Failed(format!(
                    "{} returned no choices; nothing was stored",
                    self.where_()
                ))
            })?;
        let reply = message.content.as_deref();
        spans::chat_content(
            &span,
            &ask.system,
            &ask.user,
            reply.or(message.refusal.as_deref()),
        );
        if let Some(refusal) = message.refusal {
            spans::fail(&span, "refusal", || refusal.clone());
            return Err(ExtractError::Failed(format!(
                "{} refused: {refusal}; nothing was stored",
                self.where_()
            )));
        }
        Ok((message.content.unwrap_or_default(), usage))
    }

    /// The chat request of `ask`; a failure marks `span` (its [`spans::chat`]).
    async fn complete(
        &self,
        ask: &Ask,
        span: &tracing::Span,
    ) -> Result<CreateChatCompletionResponse, ExtractError> {
        let explain = |e: &async_openai::error::OpenAIError| {
            let message = crate::openai::explain(
                e,
                &self.where_(),
                &self.settings.endpoint,
                "ENGRAM_LLM_MODEL",
                "ENGRAM_LLM_TIMEOUT_SECS",
            );
            spans::fail(span, &crate::openai::error_type(e), || message.clone());
            ExtractError::Failed(message)
        };
        let schema = self.json_schema.load(Ordering::Relaxed);
        match self.client.chat().create(self.request(ask, schema)).await {
            Err(e) if schema && crate::openai::refused_response_format(&e) => {
                tracing::info!(
                    model = %self.settings.model,
                    "the chat server refused json_schema; using json_object from now on"
                );
                self.json_schema.store(false, Ordering::Relaxed);
                self.client
                    .chat()
                    .create(self.request(ask, false))
                    .await
                    .map_err(|e| explain(&e))
            }
            other => other.map_err(|e| explain(&e)),
        }
    }

    /// The facts of a reply, or why it is unusable.
    fn parse(&self, content: &str) -> Result<Vec<Fact>, ExtractError> {
        let reply: Reply = serde_json::from_str(content.trim()).map_err(|e| {
            ExtractError::Failed(format!(
                "{} did not answer with the facts JSON ({e}); nothing was stored",
                self.where_()
            ))
        })?;
        let mut facts: Vec<Fact> = Vec::new();
        for f in reply.facts.into_iter().take(MAX_FACTS) {
            let text = f.text.trim().to_owned();
            if text.is_empty() || facts.iter().any(|seen| seen.text == text) {
                continue;
            }
            let mut categories: Vec<String> = f
                .categories
                .into_iter()
                .filter(|c| self.settings.categories.contains(c))
                .collect();
            categories.dedup();
            facts.push(Fact {
                text,
                categories,
                role: None,
            });
        }
        Ok(facts)
    }
}

#[async_trait]
impl Extractor for LlmExtractor {
    fn name(&self) -> &'static str {
        "llm"
    }

    fn infers(&self) -> bool {
        true
    }

    fn reconciles(&self) -> bool {
        true
    }

    async fn extract(&self, input: &Input) -> Result<Extracted, ExtractError> {
        let (content, usage) = self
            .ask(&Ask {
                name: "facts",
                system: self.system_prompt(),
                user: Self::transcript(input),
                schema: self.schema(),
            })
            .await?;
        Ok(Extracted {
            facts: self.parse(&content)?,
            usage,
        })
    }

    async fn reconcile(
        &self,
        facts: &[Fact],
        known: &[Known],
    ) -> Result<Option<Decided>, ExtractError> {
        let mut user = String::from("Stored memories:\n");
        for k in known {
            user.push_str(&format!("[{}] {}\n", k.alias, k.text));
        }
        user.push_str("New facts:\n");
        for (i, f) in facts.iter().enumerate() {
            user.push_str(&format!("[{i}] {}\n", f.text));
        }
        let (content, usage) = self
            .ask(&Ask {
                name: "decisions",
                system: RECONCILE_PROMPT.to_owned(),
                user,
                schema: decisions_schema(),
            })
            .await?;
        let reply: Decisions = serde_json::from_str(content.trim()).map_err(|e| {
            ExtractError::Failed(format!(
                "{} did not answer with the decisions JSON ({e}); nothing was stored",
                self.where_()
            ))
        })?;
        let decisions = reply
            .decisions
            .into_iter()
            .filter_map(|d| {
                let alias = d.id.filter(|a| !a.trim().is_empty());
                let action = match (d.event.to_ascii_uppercase().as_str(), alias) {
                    ("ADD", _) => Action::Add,
                    ("UPDATE", Some(alias)) => Action::Update {
                        alias,
                        text: d.text.filter(|t| !t.trim().is_empty())?.trim().to_owned(),
                    },
                    ("SUPERSEDE", Some(alias)) => Action::Supersede { alias },
                    ("NONE", Some(alias)) => Action::Keep { alias },
                    // Unknown events and missing ids: no decision, so the fact is added.
                    _ => return None,
                };
                Some(Decision {
                    fact: d.fact,
                    action,
                })
            })
            .collect();
        Ok(Some(Decided { decisions, usage }))
    }
}
