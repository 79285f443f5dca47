//! The no-LLM extractor: each message becomes one fact, its sentences kept
//! together, so nothing the user said is reworded or lost.
//!
//! User and assistant messages are kept (the role is recorded); system and tool
//! messages are instructions rather than things to remember and are skipped.

use async_trait::async_trait;

use super::{ExtractError, Extracted, Extractor};
use crate::model::{Fact, Input};

#[derive(Debug, Clone, Default)]
pub struct VerbatimExtractor;

#[async_trait]
impl Extractor for VerbatimExtractor {
    fn name(&self) -> &'static str {
        "verbatim"
    }

    async fn extract(&self, input: &Input) -> Result<Extracted, ExtractError> {
        let facts = match input {
            Input::Text(text) => fact(text, None).into_iter().collect(),
            Input::Messages(messages) => messages
                .iter()
                .filter(|m| is_memorable_role(&m.role))
                .filter_map(|m| fact(&m.content, Some(m.role.to_ascii_lowercase())))
                .collect(),
        };
        Ok(Extracted {
            facts,
            usage: Default::default(),
        })
    }
}

fn is_memorable_role(role: &str) -> bool {
    matches!(role.to_ascii_lowercase().as_str(), "user" | "assistant")
}

/// One fact from one message: whitespace collapsed, nothing else changed.
fn fact(text: &str, role: Option<String>) -> Option<Fact> {
    let text = text.split_whitespace().collect::<Vec<_>>().join(" ");
    (!text.is_empty()).then(|| Fact {
        text,
        categories: Vec::new(),
        role,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Message;

    fn msg(role: &str, content: &str) -> Message {
        Message::new(role, content)
    }

    #[tokio::test]
    async fn one_fact_per_message_sentences_together() {
        let input = Input::Messages(vec![
            msg("system", "You are helpful."),
            msg("user", "I moved to Porto.\n  I work remotely."),
            msg("assistant", "Noted!"),
            msg("user", "   "),
        ]);
        let facts = VerbatimExtractor.extract(&input).await.unwrap().facts;
        let texts: Vec<_> = facts.iter().map(|f| f.text.as_str()).collect();
        assert_eq!(texts, ["I moved to Porto. I work remotely.", "Noted!"]);
        assert_eq!(facts[0].role.as_deref(), Some("user"));
    }
}
