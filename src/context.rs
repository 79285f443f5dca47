//! A user's memories as text an LLM can use: the `user_context` profile and
//! the `with_memory` system prompt built from it. One template, shared by the
//! MCP tool, resource and prompt.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::model::{Degraded, Memory};

/// A compact profile of one user's memories.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct UserContext {
    pub user_id: String,
    /// The memories below as a bulleted list, ready for a system prompt.
    pub context: String,
    /// With a focus query: the most relevant first, then the most recent;
    /// otherwise most recent first.
    pub memories: Vec<Memory>,
    /// How many current memories the user has in all.
    #[schemars(schema_with = "crate::model::count_schema")]
    pub total: u64,
    /// Present when the focus search ran without one of its signals
    /// (`embedder`: keywords alone); such a context is never cached.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub degraded: Option<Degraded>,
}

impl UserContext {
    /// `focus` is the query the first memories were chosen for, if any.
    pub fn new(user_id: String, memories: Vec<Memory>, total: u64, focus: Option<&str>) -> Self {
        let context = render(&user_id, &memories, total, focus);
        Self {
            user_id,
            context,
            memories,
            total,
            degraded: None,
        }
    }
}

fn render(user_id: &str, memories: &[Memory], total: u64, focus: Option<&str>) -> String {
    if memories.is_empty() {
        return format!("No memories are stored for user \"{user_id}\" yet.");
    }
    let order = match focus {
        Some(q) => format!("most relevant to \"{q}\" first, then most recent"),
        None => "most recent first".to_owned(),
    };
    let mut text = format!(
        "What is known about user \"{user_id}\" ({} of {total} memories, {order}):\n",
        memories.len()
    );
    for m in memories {
        text.push_str(&format!(
            "- {} ({})\n",
            m.memory,
            m.updated_at.format("%Y-%m-%d")
        ));
    }
    text
}

/// The system prompt of the `with_memory` prompt: instructions plus the profile.
pub fn system_prompt(context: &UserContext, task: Option<&str>) -> String {
    let mut prompt = String::from(
        "You are an assistant with long-term memory of the user you are talking to. \
         Use the memories below when they help; prefer newer ones when they conflict; \
         do not recite them unprompted, and never invent memories that are not listed.\n\n",
    );
    prompt.push_str(&context.context);
    if let Some(task) = task.map(str::trim).filter(|t| !t.is_empty()) {
        prompt.push_str("\n\nTask: ");
        prompt.push_str(task);
    }
    prompt
}
