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
//! Where each concern lives (one idea per file; `docs/architecture.md` says
//! why, and which invariants each part keeps):
//!
//! * Doors. `stdio` (`src/stdio.rs`): MCP on stdin/stdout, answering
//!   malformed JSON-RPC. `http` (`src/http.rs`, `src/http/`): MCP over
//!   Streamable HTTP (`/mcp`) and legacy SSE (`sse.rs`; `jsonrpc_id.rs`
//!   reads a refused post's id), the REST API
//!   (`api.rs`) and its OpenAPI document (`openapi.rs`), the key gate
//!   (`auth.rs`), query strings (`query.rs`), problem+json errors
//!   (`problem.rs`), JSON-RPC errors for what `/mcp` cannot serve
//!   (`malformed.rs`). `limit` (`src/limit.rs`): rate limits per API key
//!   and per acting user, for the HTTP doors, shared through the cache when
//!   there is one. `mcp` (`src/mcp.rs`): the tools, the context resource
//!   and the prompt. [`params`]: the arguments both doors accept. `jsonrpc`
//!   (`src/jsonrpc.rs`): the one answer to a malformed JSON-RPC message.
//! * Who is calling: [`auth`] (the principal, which decides the user a
//!   request acts for and whether it may write; API keys, made once and
//!   stored hashed, which may expire, be read-only, or be rotated).
//! * The flows: [`service`] (`src/service.rs`) is the only place that knows
//!   the order of steps; beside it `validate.rs` (what every door accepts),
//!   `remember.rs` (the write flow, and what it keeps when the model fails
//!   or the user's token budget is spent), `budget.rs` (daily token budgets
//!   per user, counted in the store),
//!   `recall.rs` (search and the context), `cached.rs` (the cache-through
//!   steps), `reextract.rs` (`engram reextract`), `screen.rs` (secrets kept
//!   out of a remember, per `ENGRAM_SECRETS`), `retention.rs` (the purge of
//!   expired and superseded memories: `engram purge`, and `serve`'s loop)
//!   and `types.rs` (results).
//! * The nouns: [`model`] (`ids.rs`: memory and user ids, the scope;
//!   `memory.rs`: memories, messages, facts, events; `filter.rs`: metadata
//!   and its filters; `details.rs`: when two statements differ in a detail).
//! * The steps: [`extract`] (messages to facts: `verbatim.rs`, `llm.rs`),
//!   [`embed`] (text to vectors: `hash.rs`, `openai.rs`, `local/` a sentence
//!   model run in process; `calibration.rs`
//!   measures an embedder's floor), `reconcile` (what new facts do to
//!   similar stored ones), [`keywords`] (terms and BM25 over one user's
//!   memories), `rank` (semantic and keyword relevance fused into one
//!   absolute score), [`context`] (memories rendered for a system prompt),
//!   [`openai`] (the OpenAI-compatible HTTP client), [`secrets`]
//!   (credentials and payment data found in text, and redacted), [`crypto`]
//!   (sensitive metadata and queued inputs sealed at rest, AES-256-GCM).
//! * Durable state: [`store`], one trait per concern (`traits.rs`), each
//!   backend a folder with a file per concern (`sqlite/`, the embedded
//!   default; `postgres/`, PostgreSQL + pgvector); [`cache`], recalls,
//!   contexts and query vectors in a Redis-protocol server, keyed by each
//!   user's write version.
//! * Running it: [`config`] (defaults < TOML file < `ENGRAM_*` env, one file
//!   per section), [`startup`] (a config made into a running service:
//!   `build`, then a transport; [`startup::HttpApp`]; `keys.rs`: the
//!   `engram keys` commands), [`telemetry`] (logs
//!   to stderr: on stdio, stdout belongs to the protocol; `traces.rs`:
//!   OpenTelemetry traces over OTLP when `OTEL_EXPORTER_OTLP_ENDPOINT` is
//!   set; `spans.rs`: every span and its attributes), [`metrics`]
//!   (Prometheus metrics on `/metrics`, bounded labels, no user ids).
//! * Around it: [`chat`] (a chat loop with memory, for
//!   `examples/chat_agent.rs`), [`bench`](mod@bench) (`engram bench`:
//!   speed), [`eval`] (`engram eval`: recall quality on a LoCoMo-format set),
//!   [`failpoint`] (crash points that tests set, to prove what a crash keeps),
//!   [`reference`](mod@reference) (the docs' generated parts: settings, REST, tools),
//!   [`import`] (`engram import`: other systems' memories, and engram's own
//!   exports, read one file per format; `docs/migration.md`).
//!
//! The layout, the seams and the invariants each part keeps: `docs/architecture.md`.

pub mod audit;
pub mod auth;
pub mod bench;
pub mod cache;
pub mod chat;
pub mod config;
pub mod context;
pub mod crypto;
pub mod embed;
mod error;
pub mod eval;
pub mod extract;
pub mod failpoint;
mod http;
pub mod import;
mod jsonrpc;
pub mod keywords;
mod limit;
mod mcp;
pub mod metrics;
pub mod model;
pub mod openai;
pub mod params;
mod rank;
mod reconcile;
pub mod reference;
pub mod secrets;
pub mod service;
pub mod startup;
mod stdio;
pub mod store;
pub mod telemetry;

pub use config::Config;
pub use error::Error;
pub use service::MemoryService;
