//! engram's integration tests, as one test binary: it links the dependency
//! set once rather than once per file. Each module is one area, against the
//! real things (the built binary over stdio and HTTP, PostgreSQL with
//! pgvector, Redis, a fake OpenAI-compatible server on a real socket);
//! `common` holds what they share.
//!
//! * Stores: [`store_conformance`] (every behaviour, both stores, and
//!   PostgreSQL again through PgBouncer in transaction mode),
//!   [`postgres`] (what only PostgreSQL has to prove), [`postgres_rounds`]
//!   (several users' remembers in one transaction), [`cache`] (Redis,
//!   never the source of truth), [`crash`] (what an abort at an exact step
//!   keeps, both stores).
//! * Models: [`llm_extractor`], [`openai_embedder`], [`local_embedder`] (the
//!   in-process model: reference vectors, downloads, the default embedder), [`failure_policy`]
//!   (when the model fails), [`token_budget`] (daily token budgets, shared
//!   by two processes), [`chat_agent`].
//! * Protocols, through the binary: [`mcp_stdio`], [`protocol`] (raw
//!   JSON-RPC framing), [`stdio_streams`] (stdio over pipes, a Unix
//!   socket, a file, a stdout that stderr shares), [`mcp_http`], [`sse_limits`] (the legacy SSE
//!   transport's bounds and refusals), [`rest_api`], [`http_auth`],
//!   [`inspector`] (the official MCP Inspector CLI), [`odd_input`] (one
//!   rule for odd input on every door and both stores), [`key_lifecycle`]
//!   (keys that expire, read-only keys, rotation, erasure; both stores).
//! * Traces: [`otel`] (OTLP export through the binary, to a receiver the
//!   test runs).
//! * What is stored: [`secrets`] (credentials and payment data kept out).
//! * The command line: [`cli`], [`keys_cli`], [`eval_cli`], [`bench_cli`]
//!   (every bench mode at small sizes), [`export_cli`]
//!   (plain and encrypted exports), [`import_cli`] (every source format,
//!   idempotent, on both stores; export and import round trips).
//! * Compliance: [`audit`] (the audit trail through the binary), [`erasure`]
//!   (an erased user leaves no trace in any table, file or cache key),
//!   [`retention`] (expiry, `ttl_days` and `engram purge`; the stores'
//!   side is in [`store_conformance`]).
//! * Operations: [`backup`] (the backup and restore recipes, both stores),
//!   [`deploy`] (the dashboards, alert rules and Alertmanager
//!   configuration in `deploy/`, checked with promtool and amtool; the
//!   image's and the compose file's settings), [`tls`] (PostgreSQL through
//!   a TLS-terminating PgBouncer and Redis over TLS, with certificates the
//!   tests make: right CA, wrong CA, wrong host name).
//! * The docs: [`docs`] (every runnable example run, client configurations
//!   checked, generated reference parts current, links resolved).

mod common;

mod audit;
mod backup;
mod bench_cli;
mod cache;
mod chat_agent;
mod cli;
mod crash;
mod deploy;
mod docs;
mod encryption;
mod erasure;
mod eval_cli;
mod export_cli;
mod failure_policy;
mod http_auth;
mod import_cli;
mod inspector;
mod key_lifecycle;
mod keys_cli;
mod llm_extractor;
mod local_embedder;
mod mcp_http;
mod mcp_stdio;
mod metrics;
mod odd_input;
mod openai_embedder;
mod otel;
mod postgres;
mod postgres_rounds;
mod protocol;
mod rest_api;
mod retention;
mod row_level_security;
mod secrets;
mod sse_limits;
mod stdio_streams;
mod store_conformance;
mod tls;
mod token_budget;
