//! The chat agent (what `examples/chat_agent.rs` runs) against a fake
//! OpenAI-compatible server: memories shape replies, exchanges are
//! remembered after replying, and a failing memory never stops the chat.

use crate::common;

use std::sync::Arc;
use std::time::Duration;

use common::fake_openai::FakeOpenAi;
use engram::chat::ChatAgent;
use engram::embed::{HashEmbedder, OpenAiEmbedder, OpenAiSettings};
use engram::extract::{DEFAULT_CATEGORIES, LlmExtractor, LlmSettings};
use engram::model::Scope;
use engram::openai::Endpoint;
use engram::params::UserContextParams;
use engram::service::{MemoryService, Settings};
use engram::store::SqliteStore;

fn endpoint(url: &str) -> Endpoint {
    Endpoint {
        base_url: url.into(),
        api_key: Some("test-key".into()),
        timeout: Duration::from_secs(5),
        max_retries: 0,
    }
}

async fn memory(
    fake: &FakeOpenAi,
    dir: &tempfile::TempDir,
    embedder: Arc<dyn engram::embed::Embedder>,
) -> Arc<MemoryService> {
    let url = format!("sqlite://{}/engram.db", dir.path().display());
    let store = SqliteStore::open(&url, embedder.identity()).await.unwrap();
    let extractor = LlmExtractor::new(LlmSettings {
        endpoint: endpoint(&fake.base_url),
        model: "gpt-4o-mini".into(),
        categories: DEFAULT_CATEGORIES.iter().map(|c| c.to_string()).collect(),
    })
    .unwrap();
    Arc::new(MemoryService::new(
        Arc::new(store),
        embedder,
        Arc::new(extractor),
        Settings {
            dedup_threshold: 0.9,
            reconcile_threshold: 0.5,
            max_text_bytes: 32 * 1024,
            cache_ttl: Duration::from_secs(60),
            on_llm_error: engram::config::OnLlmError::Fail,
            ..Settings::default()
        },
    ))
}

fn me() -> Scope {
    Scope::new("me", None, None).unwrap()
}

/// A chat agent for `me` on `fake`'s chat model.
fn agent(fake: &FakeOpenAi, memory: &Arc<MemoryService>) -> ChatAgent {
    ChatAgent::new(
        memory.clone(),
        &endpoint(&fake.base_url),
        "chat-model".into(),
        me(),
    )
    .unwrap()
}

/// Everything stored for the agent's user, most recent first.
async fn stored_context(memory: &MemoryService) -> engram::context::UserContext {
    let request = UserContextParams {
        user_id: Some("me".into()),
        ..UserContextParams::default()
    };
    memory.user_context(common::ME, request).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replies_use_what_earlier_turns_left_in_memory() {
    let fake = FakeOpenAi::start(64).await;
    let dir = tempfile::tempdir().unwrap();
    let memory = memory(&fake, &dir, Arc::new(HashEmbedder::new(64))).await;
    let mut agent = agent(&fake, &memory);

    let first = agent.reply("I am vegetarian").await.unwrap();
    assert_eq!(first, "You said: I am vegetarian. I remember: nothing");
    agent.finish().await;
    let stored = stored_context(&memory).await;
    assert_eq!(
        stored.memories[0].memory, "I am vegetarian",
        "the exchange was remembered"
    );

    let second = agent
        .reply("Which vegetarian dinner tonight?")
        .await
        .unwrap();
    assert!(second.contains("I remember: I am vegetarian"), "{second}");

    // The second request carried the first turn and the memory prompt.
    let chats: Vec<_> = fake
        .requests_to("/v1/chat/completions")
        .into_iter()
        .filter(|r| r.body["model"] == "chat-model")
        .collect();
    assert_eq!(chats.len(), 2);
    let messages = chats[1].body["messages"].as_array().unwrap();
    assert!(
        messages[0]["content"]
            .as_str()
            .unwrap()
            .contains("long-term memory")
    );
    assert_eq!(messages[1]["content"], "I am vegetarian");
    assert_eq!(messages[2]["role"], "assistant");
    assert_eq!(
        messages.last().unwrap()["content"],
        "Which vegetarian dinner tonight?"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_loop_answers_each_line_until_quit_and_remembers_before_returning() {
    let fake = FakeOpenAi::start(64).await;
    let dir = tempfile::tempdir().unwrap();
    let memory = memory(&fake, &dir, Arc::new(HashEmbedder::new(64))).await;
    let mut agent = agent(&fake, &memory);
    let input: &[u8] = b"My dog is called Rex\n\n   \nI live in Ghent\n/quit\nnever read\n";
    let mut output = Vec::new();
    agent.run(input, &mut output).await.unwrap();
    let output = String::from_utf8(output).unwrap();
    let lines: Vec<&str> = output.lines().collect();
    assert_eq!(lines.len(), 2, "{output}");
    assert!(lines[0].starts_with("You said: My dog is called Rex."));
    assert!(lines[1].starts_with("You said: I live in Ghent."));
    let total = stored_context(&memory).await.total;
    assert_eq!(
        total, 2,
        "both exchanges remembered by the time run returns"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_memory_never_stops_the_chat() {
    let fake = FakeOpenAi::start(64).await;
    let dir = tempfile::tempdir().unwrap();
    // Embeddings go to a port where nothing listens: recall and remember fail.
    let broken = OpenAiEmbedder::new(OpenAiSettings {
        endpoint: endpoint("http://127.0.0.1:1/v1"),
        model: "nowhere".into(),
        dims: 64,
        send_dimensions: true,
        query_prefix: String::new(),
        document_prefix: String::new(),
        input_type: None,
        batch_size: 8,
    })
    .unwrap();
    let memory = memory(&fake, &dir, Arc::new(broken)).await;
    let mut agent = agent(&fake, &memory);
    for text in ["Hello there", "Still there?"] {
        let reply = agent.reply(text).await.unwrap();
        assert_eq!(reply, format!("You said: {text}. I remember: nothing"));
    }
    agent.finish().await;
    assert_eq!(stored_context(&memory).await.total, 0);
}
