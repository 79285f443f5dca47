//! Prometheus metrics: what `GET /metrics` shows (and, for stdio
//! deployments, the listener on `ENGRAM_METRICS_BIND`).
//!
//! * `family` holds the kinds of metric (counter, gauge, histogram, and
//!   labelled families of them); `exposition` writes them in the text format.
//! * This file names engram's metrics ([`Metrics`], one per process, reached
//!   through [`metrics()`]) and renders the page ([`render`]) from them and
//!   from what only the running service knows at scrape time ([`Observed`]).
//!
//! Invariants: no label carries a user id, key, memory or query text; every
//! label value comes from a closed set (transports, operations, error codes,
//! event kinds, the configured model names). Counting never fails a request.

mod exposition;
mod family;

use std::borrow::Cow;
use std::sync::{LazyLock, OnceLock};
use std::time::Duration;

pub use exposition::CONTENT_TYPE;
pub use family::{Counter, Family, Gauge, Histogram, Label};

use exposition::Exposition;

/// Latency buckets, in seconds: 1 ms to a minute.
const SECONDS: [f64; 15] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

/// This process's metrics.
pub fn metrics() -> &'static Metrics {
    &METRICS
}

/// Every metric engram counts as it goes. Gauges read from the store and
/// the cache are refreshed in the background (`service/observed.rs`), never
/// per scrape.
pub struct Metrics {
    /// (transport, operation): service calls finished, every outcome.
    pub requests: Family<Counter, 2>,
    /// (transport, operation, code): those that failed.
    pub request_errors: Family<Counter, 3>,
    /// (transport, operation): how long they took.
    pub request_duration: Family<Histogram, 2>,
    /// (event): what remembers did: add, update, supersede, none, deferred.
    pub remember_events: Family<Counter, 1>,
    /// The model extracting one remember's facts (LLM extractor only).
    pub extraction_duration: Histogram,
    /// One embedding call (a batch of texts, or a query).
    pub embedding_duration: Histogram,
    /// (model, outcome): chat completions.
    pub llm_requests: Family<Counter, 2>,
    /// (model, direction): tokens the model reported, input and output.
    pub llm_tokens: Family<Counter, 2>,
    /// Remembers stored verbatim and queued because the user's daily token
    /// budget was spent.
    pub token_budget_exceeded: Counter,
    /// (transport, scope): requests refused by a rate limit (key or user).
    pub rate_limited: Family<Counter, 2>,
    /// Waiting for a PostgreSQL connection and starting its transaction.
    pub pool_acquire: Histogram,
    /// Current memories of every user (refreshed in the background).
    pub memories: Gauge,
    /// Deferred remembers awaiting re-extraction (refreshed in the background).
    pub pending: Gauge,
    /// 1 while the store answered its last check.
    pub database_up: Gauge,
    /// 1 while the configured cache answered its last check.
    pub cache_up: Gauge,
    build: OnceLock<BuildInfo>,
}

/// What is running, for `engram_build_info`.
#[derive(Debug, Clone)]
pub struct BuildInfo {
    pub store: &'static str,
    pub embedder: &'static str,
    pub extractor: &'static str,
}

impl Metrics {
    fn new() -> Self {
        Self {
            requests: Family::new(["transport", "operation"], Counter::default),
            request_errors: Family::new(["transport", "operation", "code"], Counter::default),
            request_duration: Family::new(["transport", "operation"], || Histogram::new(&SECONDS)),
            remember_events: Family::new(["event"], Counter::default),
            extraction_duration: Histogram::new(&SECONDS),
            embedding_duration: Histogram::new(&SECONDS),
            llm_requests: Family::new(["model", "outcome"], Counter::default),
            llm_tokens: Family::new(["model", "direction"], Counter::default),
            token_budget_exceeded: Counter::default(),
            rate_limited: Family::new(["transport", "scope"], Counter::default),
            pool_acquire: Histogram::new(&SECONDS),
            memories: Gauge::default(),
            pending: Gauge::default(),
            database_up: Gauge::default(),
            cache_up: Gauge::default(),
            build: OnceLock::new(),
        }
    }

    /// Records what is running (once, at start).
    pub fn set_build_info(&self, build: BuildInfo) {
        let _ = self.build.set(build);
    }

    /// Records one service call: its door, its operation, how long it took
    /// and, when it failed, its error code.
    pub fn request(
        &self,
        transport: &'static str,
        operation: &'static str,
        failed: Option<&'static str>,
        took: Duration,
    ) {
        let (t, o) = (Cow::Borrowed(transport), Cow::Borrowed(operation));
        self.requests.with([t.clone(), o.clone()]).inc();
        self.request_duration
            .with([t.clone(), o.clone()])
            .observe(took.as_secs_f64());
        if let Some(code) = failed {
            self.request_errors.with([t, o, Cow::Borrowed(code)]).inc();
        }
    }

    /// Records a request refused before it reached the service (a bad key,
    /// a rate limit, an oversized body).
    pub fn refused(&self, transport: &'static str, code: &'static str) {
        self.request(transport, "other", Some(code), Duration::ZERO);
    }

    /// Records a chat completion of `model`: its outcome and, when the
    /// server reported them, its tokens.
    pub fn llm_call(&self, model: &str, ok: bool, tokens: Option<(u64, u64)>) {
        let model: Label = Cow::Owned(model.to_owned());
        let outcome = Cow::Borrowed(if ok { "ok" } else { "error" });
        self.llm_requests.with([model.clone(), outcome]).inc();
        if let Some((input, output)) = tokens {
            self.llm_tokens
                .with([model.clone(), Cow::Borrowed("input")])
                .add(input);
            self.llm_tokens
                .with([model, Cow::Borrowed("output")])
                .add(output);
        }
    }
}

/// What the running service knows at scrape time.
#[derive(Debug, Clone, Default)]
pub struct Observed {
    /// Cache lookups so far (hits, misses, errors); `None` without a cache.
    pub cache: Option<(u64, u64, u64)>,
    /// Audit rows of reads that could not be written.
    pub audit_dropped: u64,
    /// PostgreSQL's request pool: (in use, idle, maximum).
    pub pool: Option<(u32, u32, u32)>,
}

/// The `/metrics` page.
pub fn render(observed: &Observed) -> String {
    let m = metrics();
    let mut page = Exposition::default();
    let build = m.build.get().cloned().unwrap_or(BuildInfo {
        store: "unknown",
        embedder: "unknown",
        extractor: "unknown",
    });
    page.gauges_of(
        "engram_build_info",
        "What is running: the version, the store, the embedder and the extractor.",
        &[(
            &[
                ("version", env!("CARGO_PKG_VERSION")),
                ("store", build.store),
                ("embedder", build.embedder),
                ("extractor", build.extractor),
            ],
            1.0,
        )],
    );
    page.counters(
        "engram_requests_total",
        "Service calls finished (tools, REST operations), every outcome.",
        &m.requests,
    );
    page.histograms(
        "engram_request_duration_seconds",
        "How long service calls took, from the door to the answer.",
        &m.request_duration,
    );
    page.counters(
        "engram_request_errors_total",
        "Calls that failed, by error code (operation `other`: refused before the service).",
        &m.request_errors,
    );
    page.counters(
        "engram_remember_events_total",
        "What remembers did to memories: add, update, supersede, none, deferred.",
        &m.remember_events,
    );
    page.histogram(
        "engram_extraction_duration_seconds",
        "The model extracting one remember's facts (ENGRAM_EXTRACTOR=llm).",
        &m.extraction_duration,
    );
    page.histogram(
        "engram_embedding_duration_seconds",
        "One embedding call: a batch of texts or a query.",
        &m.embedding_duration,
    );
    page.counters(
        "engram_llm_requests_total",
        "Chat completions called, by model and outcome.",
        &m.llm_requests,
    );
    page.counters(
        "engram_llm_tokens_total",
        "Tokens the model reported, by model and direction (input, output).",
        &m.llm_tokens,
    );
    page.counter(
        "engram_token_budget_exceeded_total",
        "Remembers stored verbatim and queued because the user's daily token budget was spent.",
        m.token_budget_exceeded.get(),
    );
    page.counters(
        "engram_rate_limited_total",
        "Requests refused by a rate limit, by transport and scope (key, user).",
        &m.rate_limited,
    );
    if let Some((hits, misses, errors)) = observed.cache {
        page.counters_of(
            "engram_cache_requests_total",
            "Cache lookups (answers and query embeddings) by result.",
            &[
                (&[("result", "hit")], hits),
                (&[("result", "miss")], misses),
                (&[("result", "error")], errors),
            ],
        );
        page.gauge_of(
            "engram_cache_up",
            "1 while the configured cache answers, 0 while it is down.",
            &m.cache_up,
        );
    }
    page.gauge_of(
        "engram_pending_extractions",
        "Deferred remembers awaiting re-extraction (refreshed in the background).",
        &m.pending,
    );
    page.gauge_of(
        "engram_memories",
        "Current memories of every user (refreshed in the background).",
        &m.memories,
    );
    page.gauge_of(
        "engram_database_up",
        "1 while the store answers its background check.",
        &m.database_up,
    );
    if let Some((in_use, idle, max)) = observed.pool {
        page.gauges_of(
            "engram_db_pool_connections",
            "PostgreSQL request pool connections by state.",
            &[
                (&[("state", "in_use")], f64::from(in_use)),
                (&[("state", "idle")], f64::from(idle)),
            ],
        );
        page.gauge(
            "engram_db_pool_max_connections",
            "The PostgreSQL request pool's size (ENGRAM_DATABASE_POOL_SIZE).",
            f64::from(max),
        );
        page.histogram(
            "engram_db_pool_acquire_duration_seconds",
            "Waiting for a PostgreSQL connection and starting its transaction.",
            &m.pool_acquire,
        );
    }
    page.counter(
        "engram_audit_dropped_total",
        "Audit rows of reads that could not be written (full queue, or the store refused).",
        observed.audit_dropped,
    );
    page.finish()
}
