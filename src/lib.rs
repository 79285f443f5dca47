//! engram: long-term memory for AI agents, served over MCP.
//!
//! One flow, several thin doors. Every transport parses input, resolves who is
//! calling, calls one [`MemoryService`] method and maps the result:
//!
//! ```text
//! agent ──MCP (stdio, HTTP, SSE)──▶ mcp ──┐
//! service ──REST /api/v1──▶ http::api ────┴─▶ MemoryService ──▶ Extractor ─▶ Embedder ─▶ Store
//!                                                 └──▶ Cache (optional)
//! ```
//!
//! * [`auth`]: who is calling (the principal, which decides the user a request
//!   acts for) and API keys (made once, stored hashed).
//! * [`config`]: typed configuration, defaults < TOML file < `ENGRAM_*` env, validated once.
//! * [`model`]: the nouns: memories, ids, scopes, facts, events, filters.
//! * [`service`]: the only place that knows the order of steps (remember, recall,
//!   user_context, forget); when the model fails, what is kept and how
//!   `engram reextract` finishes it (`service::deferred`).
//! * [`extract`]: turns messages into facts (`verbatim`, as said; `llm`, an
//!   OpenAI-compatible chat model that also reconciles them with what is stored).
//! * [`embed`]: turns text into vectors (`hash`, offline and deterministic;
//!   `openai`, any OpenAI-compatible embeddings server).
//! * [`openai`]: the OpenAI-compatible HTTP client (key, timeout, retries, errors).
//! * [`store`]: durable memories, history and search, one trait per concern
//!   (writes, reads, search, the pending queue, keys, reports, versions); each
//!   backend a folder with a file per concern (`sqlite`, the embedded default;
//!   `postgres`, PostgreSQL + pgvector for shared deployments).
//! * [`cache`]: recalls, contexts and query vectors in a Redis-protocol server
//!   (Dragonfly, Redis), keyed by each user's write version in the store.
//! * [`context`]: a user's memories rendered for a system prompt.
//! * `reconcile`: what new facts mean for similar stored memories (add,
//!   update, supersede, keep), validated before anything is written.
//! * [`keywords`]: terms (stemmed words) and BM25 over one user's memories, on a 0..1 scale.
//! * `rank`: fuses semantic and keyword relevance into one absolute score.
//! * [`chat`]: a chat loop with memory (recall before, remember after each
//!   reply), for applications and `examples/chat_agent.rs`.
//! * `mcp`: the rmcp server handler: tools, the context resource and the prompt.
//! * [`params`]: the arguments MCP tools and REST bodies share, defined once.
//! * [`bench`](mod@bench): the `engram bench` workload (one user; many users on PostgreSQL;
//!   the cache; remember with inference against a stand-in model server;
//!   recall over the REST API).
//! * [`eval`]: `engram eval FILE`: recall scored on a LoCoMo-format conversation set, in a scratch store.
//! * `stdio`: the stdio transport, which answers malformed JSON-RPC instead of ignoring it.
//! * `http`: the HTTP transport: MCP over Streamable HTTP (`/mcp`) and legacy SSE
//!   (`/sse`), the REST API with its OpenAPI document, the key gate and rate limits,
//!   problem+json errors, health checks.
//! * [`startup`]: builds the service from a config and runs a transport
//!   ([`startup::HttpApp`]: build, then run).
//! * [`telemetry`]: logging to stderr (stdout belongs to the protocol on stdio).
//!
//! The layout, the seams and the invariants each part keeps: `docs/architecture.md`.

pub mod auth;
pub mod bench;
pub mod cache;
pub mod chat;
pub mod config;
pub mod context;
pub mod embed;
mod error;
pub mod eval;
pub mod extract;
mod http;
pub mod keywords;
mod mcp;
pub mod model;
pub mod openai;
pub mod params;
mod rank;
mod reconcile;
pub mod service;
pub mod startup;
mod stdio;
pub mod store;
pub mod telemetry;

pub use config::Config;
pub use error::Error;
pub use service::MemoryService;
