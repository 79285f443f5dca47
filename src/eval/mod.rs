//! `engram eval FILE`: measures recall on a LoCoMo-format conversation set
//! (see `locomo`), in a scratch store that is thrown away afterwards.
//!
//! 1. Every turn is remembered as said (`infer: false`), one memory per
//!    turn, in the conversation's user (its `sample_id`), with the text
//!    `locomo::Turn::memory_text` and metadata `{"dia_id": ...}`. The
//!    dedup threshold is above any similarity, so distinct turns are never
//!    merged; when the store still answers with an existing memory (an
//!    exact repeat of its text), that memory stands for both turns.
//! 2. Every question with evidence is recalled (limit 10) and timed, and
//!    each search signal is also run on its own, straight on the store
//!    (keyword only, vector only), for diagnosis.
//! 3. The report (`report`) goes to stdout, per-query rows to `--json`,
//!    progress bars and logs to stderr.
//!
//! The embedder is the configured one; the configured database is never
//! opened (`scratch` makes the store).

mod locomo;
mod metrics;
mod report;
mod scratch;

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use indicatif::{ProgressBar, ProgressState, ProgressStyle};
use serde::Serialize;

use crate::auth::Principal;
use crate::config::{Config, OnLlmError};
use crate::embed::Embedder;
use crate::extract::VerbatimExtractor;
use crate::model::{MemoryId, Metadata, MetadataFilter, Scope};
use crate::params::{RecallParams, RememberParams};
use crate::service::{MemoryService, Settings};
use crate::store::{Hit, SearchScope, Store};

use locomo::{Conversation, Question, Turn};
use metrics::{Scores, first_rank};
use scratch::Scratch;

/// Remembers in flight at once while storing turns, so a remote embedder
/// is not idle between requests.
const INGEST_CONCURRENCY: usize = 4;
/// Results per recall, and per single-signal search.
const TOP: usize = 10;
/// Above any cosine similarity (at most 1): no two turns are merged as
/// near-duplicates.
const NEVER_MERGE: f32 = 2.0;

#[derive(Debug, clap::Args)]
pub struct EvalArgs {
    /// LoCoMo-format file: a JSON list of conversations with their questions.
    pub file: PathBuf,
    /// Use a scratch database on this PostgreSQL server (postgres://...,
    /// with pgvector), created for the run and dropped after it. Default: a
    /// scratch SQLite file.
    #[arg(long)]
    pub postgres: Option<String>,
    /// Also write one JSON row per query (results, scores, ranks, latency) here.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Only questions of these categories (1 multi-hop, 2 temporal,
    /// 3 open-domain, 4 single-hop, 5 adversarial); repeat or comma-separate.
    #[arg(long, value_delimiter = ',')]
    pub category: Vec<u32>,
}

#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    #[error(transparent)]
    Input(#[from] locomo::LocomoError),
    #[error(transparent)]
    Startup(#[from] crate::startup::StartupError),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error("{0}")]
    Failed(String),
}

/// One query's row in `--json`; the report is computed from these too.
#[derive(Debug, Serialize)]
struct QueryRow {
    sample_id: String,
    question: String,
    category: u32,
    evidence: Vec<String>,
    /// engram recall's top 10, best first.
    results: Vec<ResultRow>,
    /// engram recall's scores for this query.
    metrics: Scores,
    /// 1-based rank of the first evidence in keyword search alone (null: not in its top 10).
    keyword_first_rank: Option<usize>,
    /// The same for vector search alone.
    vector_first_rank: Option<usize>,
    /// How long the recall took, in milliseconds.
    latency_ms: f64,
    #[serde(skip)]
    keyword: Scores,
    #[serde(skip)]
    vector: Scores,
}

/// One recalled memory.
#[derive(Debug, Serialize)]
struct ResultRow {
    id: MemoryId,
    /// The turns the memory holds (more than one only for an exact repeat).
    dia_ids: Vec<String>,
    score: f32,
    vector_score: Option<f32>,
    keyword_score: Option<f32>,
}

/// A conversation and the questions of it that are evaluated.
struct Selected<'a> {
    conversation: &'a Conversation,
    scope: Scope,
    questions: Vec<&'a Question>,
}

/// What a run measured.
struct Measured {
    rows: Vec<QueryRow>,
    turns: usize,
    memories: usize,
    ingest: Duration,
}

pub async fn run(config: &Config, args: EvalArgs) -> Result<(), EvalError> {
    let dataset = locomo::load(&args.file)?;
    for warning in &dataset.warnings {
        tracing::warn!("{}: {warning}", args.file.display());
    }
    let selected = select(&dataset.conversations, &args.category)?;
    // A path that cannot be written fails now, not after the run.
    let json = match &args.json {
        Some(path) => Some((path, create(path)?)),
        None => None,
    };

    let embedder = crate::startup::embedder(config).await?;
    let scratch = Scratch::create(args.postgres.as_deref(), config, embedder.identity()).await?;
    let store_description = scratch.description.clone();
    tracing::info!("evaluating in {store_description}");
    let outcome = tokio::select! {
        outcome = evaluate(&scratch.store, &embedder, config, &selected) => outcome,
        Ok(()) = tokio::signal::ctrl_c() => Err(EvalError::Failed("interrupted".into())),
    };
    let removed = scratch.remove().await;
    let finished = match (outcome, removed) {
        (Ok(measured), Ok(())) => Ok(measured),
        (Ok(_), Err(e)) | (Err(e), Ok(())) => Err(e),
        (Err(e), Err(left)) => {
            tracing::warn!("{left}");
            Err(e)
        }
    };
    let measured = match finished {
        Ok(measured) => measured,
        Err(e) => {
            // No half-written rows: the file was created empty, up front.
            if let Some((path, _)) = json {
                let _ = std::fs::remove_file(path);
            }
            return Err(e);
        }
    };

    let header = report::Header {
        file: args.file.display().to_string(),
        embedder: describe_embedder(config, embedder.as_ref()),
        store: store_description,
        conversations: selected.len(),
        turns: measured.turns,
        memories: measured.memories,
        categories: args.category.clone(),
        ingest_secs: measured.ingest.as_secs_f64(),
        concurrency: INGEST_CONCURRENCY,
    };
    print!("{}", report::render(&header, &measured.rows));
    if let Some((path, file)) = json {
        write_rows(path, file, &measured.rows)?;
        tracing::info!(
            "wrote {} query rows to {}",
            measured.rows.len(),
            path.display()
        );
    }
    Ok(())
}

/// The conversations with questions to evaluate: those with evidence, in
/// the chosen categories. None at all is an error naming what was asked.
fn select<'a>(
    conversations: &'a [Conversation],
    categories: &[u32],
) -> Result<Vec<Selected<'a>>, EvalError> {
    let mut selected = Vec::new();
    for conversation in conversations {
        let questions: Vec<&Question> = conversation
            .questions
            .iter()
            .filter(|q| !q.evidence.is_empty())
            .filter(|q| categories.is_empty() || categories.contains(&q.category))
            .collect();
        if questions.is_empty() {
            continue;
        }
        let scope = Scope::new(&conversation.sample_id, None, None).map_err(|e| {
            EvalError::Failed(format!(
                "sample_id \"{}\" cannot be a user id: {e}",
                conversation.sample_id
            ))
        })?;
        selected.push(Selected {
            conversation,
            scope,
            questions,
        });
    }
    if selected.is_empty() {
        let mut present: Vec<u32> = conversations
            .iter()
            .flat_map(|c| &c.questions)
            .filter(|q| !q.evidence.is_empty())
            .map(|q| q.category)
            .collect();
        present.sort_unstable();
        present.dedup();
        let present: Vec<String> = present.iter().map(u32::to_string).collect();
        return Err(EvalError::Failed(if present.is_empty() {
            "no question has evidence: nothing to evaluate".to_owned()
        } else {
            format!(
                "no question with evidence is in the chosen categories; the file has \
                 categories {}",
                present.join(", ")
            )
        }));
    }
    Ok(selected)
}

/// Fills the store and runs the queries.
async fn evaluate(
    store: &Arc<dyn Store>,
    embedder: &Arc<dyn Embedder>,
    config: &Config,
    selected: &[Selected<'_>],
) -> Result<Measured, EvalError> {
    let service = MemoryService::new(
        store.clone(),
        embedder.clone(),
        Arc::new(VerbatimExtractor),
        settings(config),
    );
    let started = Instant::now();
    let owners = ingest(&service, selected).await?;
    let ingest_time = started.elapsed();
    let rows = query(
        &service,
        store.as_ref(),
        embedder.as_ref(),
        selected,
        &owners,
    )
    .await?;
    Ok(Measured {
        rows,
        turns: selected.iter().map(|s| s.conversation.turns.len()).sum(),
        memories: owners.len(),
        ingest: ingest_time,
    })
}

/// The service's settings: the configuration's, except that no two turns
/// are merged and a failure fails the run.
fn settings(config: &Config) -> Settings {
    Settings {
        dedup_threshold: NEVER_MERGE,
        reconcile_threshold: config.memory.reconcile_threshold,
        max_text_bytes: config.memory.max_text_bytes,
        cache_ttl: Duration::from_secs(config.cache.ttl_secs),
        on_llm_error: OnLlmError::Fail,
        secrets: config.memory.secrets,
        ..Settings::default()
    }
}

/// Remembers every turn, a few at a time; returns which turns each memory holds.
async fn ingest(
    service: &MemoryService,
    selected: &[Selected<'_>],
) -> Result<HashMap<MemoryId, Vec<String>>, EvalError> {
    let turns: Vec<(&Selected, &Turn)> = selected
        .iter()
        .flat_map(|s| s.conversation.turns.iter().map(move |t| (s, t)))
        .collect();
    let bar = progress(turns.len(), "storing turns");
    let mut owners: HashMap<MemoryId, Vec<String>> = HashMap::new();
    let mut stored = futures::stream::iter(
        turns
            .into_iter()
            .map(|(s, turn)| async move { (turn, remember(service, s, turn).await) }),
    )
    .buffered(INGEST_CONCURRENCY);
    while let Some((turn, id)) = stored.next().await {
        owners.entry(id?).or_default().push(turn.dia_id.clone());
        bar.inc(1);
    }
    bar.finish_and_clear();
    Ok(owners)
}

/// Stores one turn; returns the memory that holds it.
async fn remember(
    service: &MemoryService,
    at: &Selected<'_>,
    turn: &Turn,
) -> Result<MemoryId, EvalError> {
    let failed = |why: String| {
        EvalError::Failed(format!(
            "storing turn {} of {}: {why}",
            turn.dia_id, at.conversation.sample_id
        ))
    };
    let mut metadata = Metadata::new();
    metadata.insert("dia_id".into(), turn.dia_id.clone().into());
    let result = service
        .remember(
            &Principal::Operator,
            RememberParams {
                text: Some(turn.memory_text()),
                user_id: Some(at.scope.user_id().to_string()),
                metadata: Some(metadata),
                infer: Some(false),
                ..RememberParams::default()
            },
        )
        .await
        .map_err(|e| failed(e.to_string()))?;
    match result.results.as_slice() {
        [event] => Ok(event.id),
        other => Err(failed(format!(
            "expected one memory, the store answered {}",
            other.len()
        ))),
    }
}

/// Recalls every selected question and runs each signal alone.
async fn query(
    service: &MemoryService,
    store: &dyn Store,
    embedder: &dyn Embedder,
    selected: &[Selected<'_>],
    owners: &HashMap<MemoryId, Vec<String>>,
) -> Result<Vec<QueryRow>, EvalError> {
    let total = selected.iter().map(|s| s.questions.len()).sum();
    let bar = progress(total, "recalling");
    let mut rows = Vec::with_capacity(total);
    let no_filter = MetadataFilter::default();
    for s in selected {
        let at = SearchScope {
            scope: &s.scope,
            filter: &no_filter,
        };
        for q in &s.questions {
            let failed = |why: String| {
                EvalError::Failed(format!(
                    "recalling \"{}\" of {}: {why}",
                    q.question, s.conversation.sample_id
                ))
            };
            let started = Instant::now();
            let recalled = service
                .recall(
                    &Principal::Operator,
                    RecallParams {
                        query: q.question.clone(),
                        user_id: Some(s.scope.user_id().to_string()),
                        limit: Some(TOP as i64),
                        // Always the top 10, however low they score.
                        min_score: None,
                        ..RecallParams::default()
                    },
                )
                .await
                .map_err(|e| failed(e.to_string()))?;
            let latency = started.elapsed();
            let results: Vec<ResultRow> = recalled
                .results
                .iter()
                .map(|r| ResultRow {
                    id: r.memory.id,
                    dia_ids: owners.get(&r.memory.id).cloned().unwrap_or_default(),
                    score: r.score,
                    vector_score: r.vector_score,
                    keyword_score: r.keyword_score,
                })
                .collect();
            let ranked: Vec<Vec<String>> = results.iter().map(|r| r.dia_ids.clone()).collect();

            let keyword = store.keyword_search(at, &q.question, TOP).await?;
            let vector = embedder
                .embed_query(&q.question)
                .await
                .map_err(|e| failed(e.to_string()))?;
            let vector = store.vector_search(at, &vector, TOP).await?;
            let (keyword, vector) = (turns_of(&keyword, owners), turns_of(&vector, owners));

            rows.push(QueryRow {
                sample_id: s.conversation.sample_id.clone(),
                question: q.question.clone(),
                category: q.category,
                evidence: q.evidence.clone(),
                metrics: Scores::of(&ranked, &q.evidence),
                results,
                keyword_first_rank: first_rank(&keyword, &q.evidence, TOP),
                vector_first_rank: first_rank(&vector, &q.evidence, TOP),
                latency_ms: latency.as_secs_f64() * 1000.0,
                keyword: Scores::of(&keyword, &q.evidence),
                vector: Scores::of(&vector, &q.evidence),
            });
            bar.inc(1);
        }
    }
    bar.finish_and_clear();
    Ok(rows)
}

/// The turns each hit's memory holds, in the hits' order.
fn turns_of(hits: &[Hit], owners: &HashMap<MemoryId, Vec<String>>) -> Vec<Vec<String>> {
    hits.iter()
        .map(|h| owners.get(&h.id).cloned().unwrap_or_default())
        .collect()
}

/// A progress bar on stderr (drawn only when stderr is a terminal).
fn progress(len: usize, what: &'static str) -> ProgressBar {
    let bar = ProgressBar::new(len as u64);
    if let Ok(style) =
        ProgressStyle::with_template("{msg:>13} [{bar:32}] {pos}/{len} ({rate}, eta {eta})")
    {
        let style = style
            .with_key(
                "rate",
                |state: &ProgressState, out: &mut dyn std::fmt::Write| {
                    let _ = write!(out, "{:.0}/s", state.per_sec());
                },
            )
            .progress_chars("=> ");
        bar.set_style(style);
    }
    bar.set_message(what);
    bar
}

/// The embedder as the report names it: identity, and for a server where
/// it is and the prefixes it is given.
fn describe_embedder(config: &Config, embedder: &dyn Embedder) -> String {
    let mut text = embedder.identity().to_string();
    if embedder.identity().name.starts_with("openai:") {
        text.push_str(&format!(" at {}", config.openai.base_url));
        for (what, prefix) in [
            ("query", &config.embedder.query_prefix),
            ("document", &config.embedder.document_prefix),
        ] {
            if !prefix.is_empty() {
                text.push_str(&format!(", {what} prefix {prefix:?}"));
            }
        }
    }
    text
}

fn create(path: &Path) -> Result<File, EvalError> {
    File::create(path)
        .map_err(|e| EvalError::Failed(format!("cannot write {}: {e}", path.display())))
}

fn write_rows(path: &Path, file: File, rows: &[QueryRow]) -> Result<(), EvalError> {
    let failed = |e: String| EvalError::Failed(format!("cannot write {}: {e}", path.display()));
    let mut out = BufWriter::new(file);
    serde_json::to_writer_pretty(&mut out, rows).map_err(|e| failed(e.to_string()))?;
    out.write_all(b"\n").map_err(|e| failed(e.to_string()))?;
    out.flush().map_err(|e| failed(e.to_string()))
}
