//! `engram bench --pipeline N`: N remembers with inference (llm extractor,
//! openai embedder) against a stand-in OpenAI-compatible server that answers
//! at once, in this process, over real HTTP and JSON. It measures what engram
//! adds to a remember beyond its model round trips, and how many model calls
//! and tokens a remember costs.
//!
//! Each remember is a short conversation (two user lines, one assistant
//! line) for one user whose store grows as the run goes, so later remembers
//! find similar memories and ask the reconciler. The extractor and embedder
//! are wrapped in timers: a remember's overhead is its wall time minus the
//! time spent inside model calls (request building, HTTP, reply parsing by
//! the OpenAI client included in the latter). Remembers run one at a time,
//! so the timers hold exactly one remember's calls.
//!
//! The stand-in extracts one fact per user line, answers NONE for a fact a
//! stored memory already says word for word and ADD otherwise, and embeds
//! with the hash embedder. Its token counts are estimates (characters / 4 of
//! what was sent and answered), since no tokenizer runs here.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use axum::extract::State;
use axum::routing::post;
use axum::{Json, Router};
use base64::Engine;
use serde_json::{Value, json};

use super::text::Generator;
use super::{ms, percentile};
use crate::auth::Principal;
use crate::embed::{EmbedError, Embedder, EmbedderIdentity, HashEmbedder};
use crate::embed::{OpenAiEmbedder, OpenAiSettings, to_le_bytes};
use crate::extract::{
    DEFAULT_CATEGORIES, Decided, ExtractError, Extracted, Extractor, Known, LlmExtractor,
    LlmSettings,
};
use crate::model::{Fact, Input, Message};
use crate::openai::Endpoint;
use crate::params::RememberParams;
use crate::service::MemoryService;
use crate::store::Store;

pub type BenchError = Box<dyn std::error::Error>;

/// What the stand-in server saw.
#[derive(Default)]
struct Seen {
    chat_calls: AtomicU64,
    embedding_calls: AtomicU64,
    embedded_texts: AtomicU64,
    prompt_chars: AtomicU64,
    completion_chars: AtomicU64,
}

/// Time spent inside model calls, in nanoseconds.
#[derive(Default)]
struct Spent(AtomicU64);

impl Spent {
    async fn time<T>(&self, call: impl Future<Output = T>) -> T {
        let started = Instant::now();
        let out = call.await;
        self.0
            .fetch_add(started.elapsed().as_nanos() as u64, Ordering::Relaxed);
        out
    }

    fn take(&self) -> Duration {
        Duration::from_nanos(self.0.swap(0, Ordering::Relaxed))
    }
}

struct TimedExtractor {
    inner: LlmExtractor,
    spent: Arc<Spent>,
}

#[async_trait]
impl Extractor for TimedExtractor {
    fn name(&self) -> &'static str {
        self.inner.name()
    }

    fn infers(&self) -> bool {
        self.inner.infers()
    }

    fn reconciles(&self) -> bool {
        self.inner.reconciles()
    }

    async fn extract(&self, input: &Input) -> Result<Extracted, ExtractError> {
        self.spent.time(self.inner.extract(input)).await
    }

    async fn reconcile(
        &self,
        facts: &[Fact],
        known: &[Known],
    ) -> Result<Option<Decided>, ExtractError> {
        self.spent.time(self.inner.reconcile(facts, known)).await
    }
}

struct TimedEmbedder {
    inner: OpenAiEmbedder,
    spent: Arc<Spent>,
}

#[async_trait]
impl Embedder for TimedEmbedder {
    fn identity(&self) -> EmbedderIdentity {
        self.inner.identity()
    }

    fn is_local(&self) -> bool {
        self.inner.is_local()
    }

    fn query_variant(&self) -> String {
        self.inner.query_variant()
    }

    async fn embed_documents(&self, texts: &[String]) -> Result<Vec<Vec<f32>>, EmbedError> {
        self.spent.time(self.inner.embed_documents(texts)).await
    }

    async fn embed_query(&self, text: &str) -> Result<Vec<f32>, EmbedError> {
        self.spent.time(self.inner.embed_query(text)).await
    }
}

/// Starts the stand-in on 127.0.0.1:0; returns its `/v1` base URL.
async fn stand_in(seen: Arc<Seen>, dims: usize) -> std::io::Result<String> {
    let app = Router::new()
        .route("/v1/chat/completions", post(chat))
        .route("/v1/embeddings", post(embeddings))
        .with_state((seen, dims));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            eprintln!("engram bench: the stand-in model server stopped: {e}");
        }
    });
    Ok(format!("http://{addr}/v1"))
}

type StandIn = State<(Arc<Seen>, usize)>;

async fn chat(State((seen, _)): StandIn, Json(body): Json<Value>) -> Json<Value> {
    let prompt: usize = body["messages"]
        .as_array()
        .map(|ms| {
            ms.iter()
                .map(|m| m["content"].as_str().map_or(0, str::len))
                .sum()
        })
        .unwrap_or(0);
    let asked = body["messages"][1]["content"].as_str().unwrap_or_default();
    let content = if asked.starts_with("Stored memories:") {
        decisions(asked)
    } else {
        let facts: Vec<Value> = asked
            .lines()
            .filter_map(|l| l.strip_prefix("[user] "))
            .map(|t| json!({"text": t, "categories": ["preferences"]}))
            .collect();
        json!({ "facts": facts }).to_string()
    };
    seen.chat_calls.fetch_add(1, Ordering::Relaxed);
    seen.prompt_chars
        .fetch_add(prompt as u64, Ordering::Relaxed);
    seen.completion_chars
        .fetch_add(content.len() as u64, Ordering::Relaxed);
    Json(json!({
        "id": "chatcmpl-bench",
        "object": "chat.completion",
        "created": 1_700_000_000,
        "model": body["model"],
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": content, "refusal": null},
            "finish_reason": "stop"
        }],
        "usage": {
            "prompt_tokens": prompt / 4,
            "completion_tokens": content.len() / 4,
            "total_tokens": (prompt + content.len()) / 4
        }
    }))
}

/// NONE for a fact some shown memory says word for word, else ADD.
fn decisions(asked: &str) -> String {
    let (stored, new) = asked.split_once("New facts:\n").unwrap_or((asked, ""));
    let known: Vec<(&str, &str)> = stored
        .lines()
        .filter_map(|l| l.strip_prefix('['))
        .filter_map(|l| l.split_once("] "))
        .collect();
    let decisions: Vec<Value> = new
        .lines()
        .filter_map(|l| l.strip_prefix('['))
        .filter_map(|l| l.split_once("] "))
        .map(|(n, text)| {
            let fact: u64 = n.parse().unwrap_or(0);
            match known.iter().find(|(_, k)| *k == text) {
                Some((alias, _)) => {
                    json!({"fact": fact, "event": "NONE", "id": alias, "text": text})
                }
                None => json!({"fact": fact, "event": "ADD", "id": null, "text": text}),
            }
        })
        .collect();
    json!({ "decisions": decisions }).to_string()
}

async fn embeddings(State((seen, dims)): StandIn, Json(body): Json<Value>) -> Json<Value> {
    let dims = body["dimensions"].as_u64().map_or(dims, |d| d as usize);
    let inputs: Vec<String> = match &body["input"] {
        Value::String(s) => vec![s.clone()],
        Value::Array(items) => items
            .iter()
            .filter_map(|i| i.as_str().map(str::to_owned))
            .collect(),
        _ => Vec::new(),
    };
    seen.embedding_calls.fetch_add(1, Ordering::Relaxed);
    seen.embedded_texts
        .fetch_add(inputs.len() as u64, Ordering::Relaxed);
    let hash = HashEmbedder::new(dims);
    // In base64 when asked, as OpenAI answers.
    let base64 = body["encoding_format"] == "base64";
    let data: Vec<Value> = inputs
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let v = hash.embed(t);
            let embedding = if base64 {
                json!(base64::engine::general_purpose::STANDARD.encode(to_le_bytes(&v)))
            } else {
                json!(v)
            };
            json!({"object": "embedding", "index": i, "embedding": embedding})
        })
        .collect();
    Json(json!({
        "object": "list",
        "data": data,
        "model": body["model"],
        "usage": {"prompt_tokens": 0, "total_tokens": 0}
    }))
}

/// Runs `count` remembers with inference into `open_store`'s store and
/// prints the numbers.
pub async fn run<F, Fut>(count: usize, dims: usize, open_store: F) -> Result<(), BenchError>
where
    F: FnOnce(EmbedderIdentity) -> Fut,
    Fut: Future<Output = Result<Arc<dyn Store>, BenchError>>,
{
    let seen = Arc::new(Seen::default());
    let base_url = stand_in(seen.clone(), dims).await?;
    let endpoint = Endpoint {
        base_url: base_url.clone(),
        api_key: Some("bench".into()),
        timeout: Duration::from_secs(30),
        max_retries: 0,
    };
    let spent = Arc::new(Spent::default());
    let embedder = Arc::new(TimedEmbedder {
        inner: OpenAiEmbedder::new(OpenAiSettings {
            endpoint: endpoint.clone(),
            model: "text-embedding-3-small".into(),
            dims,
            send_dimensions: true,
            query_prefix: String::new(),
            document_prefix: String::new(),
            input_type: None,
            batch_size: 64,
        })?,
        spent: spent.clone(),
    });
    let extractor = Arc::new(TimedExtractor {
        inner: LlmExtractor::new(LlmSettings {
            endpoint,
            model: "gpt-4o-mini".into(),
            categories: DEFAULT_CATEGORIES.iter().map(|c| c.to_string()).collect(),
        })?,
        spent: spent.clone(),
    });
    let store = open_store(embedder.identity()).await?;
    let service = MemoryService::new(store, embedder, extractor, super::settings());
    println!(
        "pipeline: {count} remembers with inference (2 user lines + 1 assistant line each), \
         one user, stand-in model server at {base_url} answering at once"
    );

    let mut texts = Generator::new(7);
    let (mut walls, mut models, mut overheads) = (Vec::new(), Vec::new(), Vec::new());
    let (mut calls, mut prompt, mut completion, mut facts) = (0u64, 0u64, 0u64, 0usize);
    let mut events = std::collections::BTreeMap::<&'static str, usize>::new();
    let mut said: Vec<String> = Vec::with_capacity(count);
    spent.take();
    for i in 0..count {
        // Every fifth conversation repeats an earlier line: a known fact.
        let first = match said.get(i / 2) {
            Some(earlier) if i % 5 == 4 => earlier.clone(),
            _ => texts.memory(),
        };
        said.push(first.clone());
        let request = RememberParams {
            messages: Some(vec![
                Message::new("user", first),
                Message::new("assistant", "Noted, thanks for telling me."),
                Message::new("user", texts.memory()),
            ]),
            user_id: Some(super::BENCH_USER.into()),
            ..RememberParams::default()
        };
        let started = Instant::now();
        let result = service.remember(&Principal::Operator, request).await?;
        let wall = started.elapsed();
        let model = spent.take();
        walls.push(wall);
        models.push(model);
        overheads.push(wall.saturating_sub(model));
        if let Some(usage) = &result.usage {
            calls += u64::from(usage.calls);
            prompt += usage.prompt_tokens;
            completion += usage.completion_tokens;
        }
        facts += result.results.len();
        for r in &result.results {
            *events.entry(r.event.as_str()).or_default() += 1;
        }
    }

    let n = count.max(1) as f64;
    for (name, values) in [
        ("remember (wall)", &mut walls),
        ("  inside model calls", &mut models),
        ("  engram overhead", &mut overheads),
    ] {
        values.sort();
        println!(
            "  {name:<22} p50 {:>9}   p95 {:>9}   p99 {:>9}",
            ms(percentile(values, 0.50)),
            ms(percentile(values, 0.95)),
            ms(percentile(values, 0.99)),
        );
    }
    let get = |c: &AtomicU64| c.load(Ordering::Relaxed) as f64;
    println!(
        "  per remember: {:.2} LLM calls ({:.0} prompt + {:.0} completion tokens, \
         estimated), {:.2} embedding requests ({:.2} texts), {:.2} facts",
        calls as f64 / n,
        prompt as f64 / n,
        completion as f64 / n,
        get(&seen.embedding_calls) / n,
        get(&seen.embedded_texts) / n,
        facts as f64 / n,
    );
    println!(
        "  events: {}",
        events
            .iter()
            .map(|(e, c)| format!("{e} {c}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    debug_assert_eq!(calls, seen.chat_calls.load(Ordering::Relaxed));
    Ok(())
}
