//! [`ChatAgent`]: a chat loop with long-term memory, for applications that
//! talk to an OpenAI-compatible chat model themselves (`examples/chat_agent.rs`
//! runs it in a terminal).
//!
//! Each turn: recall the user's memories relevant to the message (the same
//! `user_context` the MCP tool serves), answer with the `with_memory` system
//! prompt, then store the exchange in the background, so remembering never
//! delays a reply. Memory is an aid, not a dependency: when recall or
//! remember fails, the agent says so on stderr and keeps answering.

use std::sync::Arc;

use async_openai::Client;
use async_openai::config::OpenAIConfig;
use async_openai::types::chat::{
    ChatCompletionRequestAssistantMessage, ChatCompletionRequestMessage,
    ChatCompletionRequestSystemMessage, ChatCompletionRequestUserMessage,
    CreateChatCompletionRequest,
};
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncWrite, AsyncWriteExt};
use tokio::task::JoinSet;

use crate::auth::Principal;
use crate::context::{UserContext, system_prompt};
use crate::model::{Message, Scope};
use crate::openai::Endpoint;
use crate::params::{RememberParams, UserContextParams};
use crate::service::MemoryService;

/// Earlier turns of this session sent with each request (memory covers the rest).
const SESSION_TURNS: usize = 10;

pub struct ChatAgent {
    memory: Arc<MemoryService>,
    client: Client<OpenAIConfig>,
    model: String,
    /// The chat server, for traces (`server.address`).
    base_url: String,
    scope: Scope,
    /// (user, assistant) pairs of this session, oldest first.
    turns: Vec<(String, String)>,
    /// Exchanges being remembered.
    storing: JoinSet<()>,
}

impl ChatAgent {
    pub fn new(
        memory: Arc<MemoryService>,
        endpoint: &Endpoint,
        model: String,
        scope: Scope,
    ) -> Result<Self, String> {
        Ok(Self {
            memory,
            client: crate::openai::client(endpoint, "")?,
            model,
            base_url: endpoint.base_url.clone(),
            scope,
            turns: Vec::new(),
            storing: JoinSet::new(),
        })
    }

    /// One turn: the model's reply to `text`, shaped by what is remembered.
    pub async fn reply(&mut self, text: &str) -> Result<String, String> {
        let request = UserContextParams {
            user_id: Some(self.scope.user_id().to_string()),
            agent_id: self.scope.agent_id().map(str::to_owned),
            run_id: self.scope.run_id().map(str::to_owned),
            limit: Some(20),
            query: Some(text.to_owned()),
        };
        let context = match self
            .memory
            .user_context(&Principal::Operator, request)
            .await
        {
            Ok(context) => context,
            Err(e) => {
                eprintln!("(memory unavailable, answering without it: {e})");
                UserContext::new(self.scope.user_id().to_string(), Vec::new(), 0, None)
            }
        };
        let mut messages = vec![ChatCompletionRequestMessage::System(
            ChatCompletionRequestSystemMessage {
                content: system_prompt(&context, None).as_str().into(),
                name: None,
            },
        )];
        let recent = self.turns.len().saturating_sub(SESSION_TURNS);
        for (user, assistant) in &self.turns[recent..] {
            messages.push(user_message(user));
            messages.push(ChatCompletionRequestMessage::Assistant(
                ChatCompletionRequestAssistantMessage {
                    content: Some(assistant.as_str().into()),
                    ..Default::default()
                },
            ));
        }
        messages.push(user_message(text));
        let request = CreateChatCompletionRequest {
            model: self.model.clone(),
            messages,
            ..Default::default()
        };
        let span =
            crate::telemetry::spans::chat(&self.model, &self.base_url, "reply", None, "text");
        // A leaf span: timed by its life, never entered.
        let response = self.client.chat().create(request).await.map_err(|e| {
            let kind = crate::openai::error_type(&e);
            crate::telemetry::spans::fail(&span, &kind, || e.to_string());
            format!("the chat model {} failed: {e}", self.model)
        })?;
        crate::telemetry::spans::chat_answered(&span, &response);
        let reply = response
            .choices
            .into_iter()
            .next()
            .and_then(|c| c.message.content)
            .unwrap_or_default();
        self.turns.push((text.to_owned(), reply.clone()));
        self.remember_in_background(text, &reply);
        Ok(reply)
    }

    fn remember_in_background(&mut self, user: &str, assistant: &str) {
        let memory = self.memory.clone();
        let request = RememberParams {
            messages: Some(vec![
                Message::new("user", user.to_owned()),
                Message::new("assistant", assistant.to_owned()),
            ]),
            user_id: Some(self.scope.user_id().to_string()),
            agent_id: self.scope.agent_id().map(str::to_owned),
            run_id: self.scope.run_id().map(str::to_owned),
            ..RememberParams::default()
        };
        self.storing.spawn(async move {
            if let Err(e) = memory.remember(&Principal::Operator, request).await {
                eprintln!("(could not remember this exchange: {e})");
            }
        });
    }

    /// Waits for every exchange still being remembered.
    pub async fn finish(&mut self) {
        while self.storing.join_next().await.is_some() {}
    }

    /// Reads lines from `input` until EOF or `/quit`, writing each reply to
    /// `output`; remembers everything before returning.
    pub async fn run<R, W>(&mut self, input: R, mut output: W) -> std::io::Result<()>
    where
        R: AsyncBufRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        let mut lines = input.lines();
        while let Some(line) = lines.next_line().await? {
            let line = line.trim();
            if line == "/quit" {
                break;
            }
            if line.is_empty() {
                continue;
            }
            let answer = match self.reply(line).await {
                Ok(reply) => reply,
                Err(e) => format!("(no answer: {e})"),
            };
            output.write_all(format!("{answer}\n").as_bytes()).await?;
            output.flush().await?;
        }
        self.finish().await;
        Ok(())
    }
}

fn user_message(text: &str) -> ChatCompletionRequestMessage {
    ChatCompletionRequestMessage::User(ChatCompletionRequestUserMessage {
        content: text.into(),
        name: None,
    })
}
