//! A terminal chat agent with long-term memory (see `engram::chat`).
//!
//! ```sh
//! export OPENAI_API_KEY=sk-...        # or OPENAI_BASE_URL=http://localhost:11434/v1 (Ollama)
//! cargo run --example chat_agent -- me
//! ```
//!
//! The argument is the user id (default: ENGRAM_DEFAULT_USER). Memory uses the
//! same configuration as `engram serve` (ENGRAM_* variables, OPENAI_*): point
//! it at the same database and the agent shares the user's memories with every
//! MCP client. The chat model is ENGRAM_CHAT_MODEL (default: ENGRAM_LLM_MODEL).
//! Type a message per line; `/quit` or end of input stops.

use engram::chat::ChatAgent;
use engram::model::Scope;
use engram::{Config, startup};
use tokio::io::BufReader;

#[tokio::main]
async fn main() {
    // Logs to stderr, and traces when OTEL_EXPORTER_OTLP_ENDPOINT is set.
    let telemetry = match engram::telemetry::init() {
        Ok(telemetry) => telemetry,
        Err(e) => {
            eprintln!("chat_agent: {e}");
            std::process::exit(1);
        }
    };
    let result = chat().await;
    // Export the spans still queued (blocking: off the async threads).
    let _ = tokio::task::spawn_blocking(move || telemetry.shutdown()).await;
    if let Err(e) = result {
        eprintln!("chat_agent: {e}");
        std::process::exit(1);
    }
}

async fn chat() -> Result<(), Box<dyn std::error::Error>> {
    let config = Config::load(None)?;
    let user = std::env::args()
        .nth(1)
        .unwrap_or_else(|| config.memory.default_user.to_string());
    let memory = startup::build(&config).await?;
    let endpoint = startup::llm_endpoint(&config);
    let model = std::env::var("ENGRAM_CHAT_MODEL").unwrap_or_else(|_| config.llm.model.clone());
    let mut agent = ChatAgent::new(memory, &endpoint, model, Scope::new(&user, None, None)?)?;
    eprintln!("chatting as {user}; /quit to stop");
    agent
        .run(BufReader::new(tokio::io::stdin()), tokio::io::stdout())
        .await?;
    Ok(())
}
