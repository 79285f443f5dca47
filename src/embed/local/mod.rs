//! `local`: a BERT-family sentence model run in process, in pure Rust, from
//! the standard Hugging Face files. No key, no second process, offline once
//! the files are on disk.
//!
//! - `tokenizer`: WordPiece from `tokenizer.json`;
//! - `safetensors` and `bert`: the weights and the encoder's forward pass,
//!   its dense layers in `kernel`;
//! - `model`: a model directory, pooling and normalisation;
//! - [`catalog`]: the models known by id; [`hub`]: downloading one, checked.
//!
//! Inference runs on tokio's blocking threads, at most `threads` texts at once
//! (a semaphore), so a burst of embeddings queues instead of starving the
//! async runtime. A model still downloading makes embedding calls wait for it
//! (up to the embedding timeout) rather than the server's start.

mod bert;
pub mod catalog;
pub mod hub;
mod kernel;
mod model;
mod safetensors;
mod tokenizer;

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use tokio::sync::{Notify, Semaphore};

pub use hub::{DEFAULT_HUB, Hub};
pub use model::{Pooling, SentenceModel, missing_files};

use super::{EmbedError, Embedder, EmbedderIdentity};

/// How long a failed download waits before an embedding call starts another.
const RETRY_AFTER: Duration = Duration::from_secs(30);
/// Query vectors kept in process (a recall's query is often asked again).
const QUERY_CACHE_ENTRIES: usize = 1024;

/// What `local` runs, and where its files are or go.
#[derive(Debug, Clone)]
pub struct LocalSettings {
    /// The model's id; names the store's vectors (`local:{model}`).
    pub model: String,
    /// A directory holding the files; unset: the cache's copy of `model`.
    pub path: Option<PathBuf>,
    /// Where downloaded models live (one directory per id).
    pub cache_dir: PathBuf,
    /// Where to download from; `None`: never download.
    pub hub: Option<String>,
    /// The hub's access token, for gated or private models.
    pub hub_token: Option<String>,
    /// Texts embedded at once.
    pub threads: usize,
    /// Prefixes; `None`: the model's own (the catalog's), else none.
    pub query_prefix: Option<String>,
    pub document_prefix: Option<String>,
    /// How long an embedding call waits for a model still downloading.
    pub wait: Duration,
}

impl LocalSettings {
    /// The directory the model's files are read from.
    pub fn dir(&self) -> PathBuf {
        self.path
            .clone()
            .unwrap_or_else(|| model_dir(&self.cache_dir, &self.model))
    }

    /// True when the model's files are on disk.
    pub fn is_present(&self) -> bool {
        missing_files(&self.dir()).is_empty()
    }
}

/// Where the cache keeps model `id`: `org--name`, as the id's `/` may not
/// appear in a file name.
pub fn model_dir(cache_dir: &Path, id: &str) -> PathBuf {
    cache_dir.join(id.replace('/', "--"))
}

enum State {
    Loading { since: Instant, doing: String },
    Ready(Arc<SentenceModel>),
    Failed { at: Instant, error: String },
}

struct Shared {
    state: Mutex<State>,
    changed: Notify,
}

impl Shared {
    fn set(&self, state: State) {
        *self.state.lock().unwrap_or_else(|e| e.into_inner()) = state;
        self.changed.notify_waiters();
    }

    /// Says how a download is going, waking no one.
    fn progress(&self, doing: String) {
        if let State::Loading { doing: now, .. } =
            &mut *self.state.lock().unwrap_or_else(|e| e.into_inner())
        {
            *now = doing;
        }
    }
}

pub struct LocalEmbedder {
    identity: EmbedderIdentity,
    settings: LocalSettings,
    shared: Arc<Shared>,
    permits: Arc<Semaphore>,
    query_prefix: String,
    document_prefix: String,
    queries: Mutex<QueryCache>,
}

impl LocalEmbedder {
    /// Opens the model: loads it when its files are on disk, else starts
    /// downloading it in the background (when a hub is configured) and
    /// returns at once. `Err` when it can be neither loaded nor fetched, or
    /// its dimension cannot be known before it is.
    pub async fn open(settings: LocalSettings) -> Result<Self, EmbedError> {
        catalog::check_id(&settings.model).map_err(EmbedError::Failed)?;
        let known = catalog::known(&settings.model);
        let dir = settings.dir();
        let present = settings.is_present();
        let shared = Arc::new(Shared {
            state: Mutex::new(State::Loading {
                since: Instant::now(),
                doing: "loading".to_owned(),
            }),
            changed: Notify::new(),
        });
        let dims = if present {
            let model = load(&settings).await?;
            let dims = model.dims();
            if let Some(k) = known
                && k.dims != dims
            {
                return Err(EmbedError::Failed(format!(
                    "{} holds a model of {dims} dimensions, but {} has {}: set \
                     ENGRAM_EMBEDDING_MODEL to the id of the model the files are",
                    dir.display(),
                    k.id,
                    k.dims
                )));
            }
            tracing::info!(
                model = %settings.model, dir = %dir.display(), dims,
                max_tokens = model.max_tokens(), pooling = ?model.pooling(),
                "local embedding model loaded"
            );
            shared.set(State::Ready(Arc::new(model)));
            dims
        } else if settings.path.is_some() {
            return Err(EmbedError::Failed(format!(
                "ENGRAM_EMBEDDING_MODEL_PATH={} lacks {}: it must hold a \
                 sentence-transformers model's config.json, tokenizer.json and model.safetensors",
                dir.display(),
                names(&missing_files(&dir))
            )));
        } else {
            let Some(k) = known else {
                return Err(EmbedError::Failed(format!(
                    "model {} is not on disk and engram does not know its dimension: \
                     run `engram models pull {}` first (known ids: {})",
                    settings.model,
                    settings.model,
                    catalog::known_ids().collect::<Vec<_>>().join(", ")
                )));
            };
            if settings.hub.is_none() {
                return Err(EmbedError::Failed(offline_help(&settings)));
            }
            k.dims
        };
        let embedder = Self {
            identity: EmbedderIdentity {
                name: format!("local:{}", settings.model),
                dims,
            },
            query_prefix: settings
                .query_prefix
                .clone()
                .unwrap_or_else(|| known.map(|k| k.query_prefix).unwrap_or("").to_owned()),
            document_prefix: settings
                .document_prefix
                .clone()
                .unwrap_or_else(|| known.map(|k| k.document_prefix).unwrap_or("").to_owned()),
            permits: Arc::new(Semaphore::new(settings.threads.max(1))),
            queries: Mutex::new(QueryCache::default()),
            shared,
            settings,
        };
        if !present {
            embedder.fetch_in_background();
        }
        Ok(embedder)
    }

    /// Starts downloading and loading the model; the state says how it went.
    fn fetch_in_background(&self) {
        self.shared.set(loading());
        self.spawn_fetch();
    }

    /// The download task alone: the caller has put the state in `Loading`.
    fn spawn_fetch(&self) {
        let settings = self.settings.clone();
        let shared = self.shared.clone();
        tokio::spawn(async move {
            let result = fetch(&settings, &shared).await;
            match result {
                Ok(model) => {
                    tracing::info!(model = %settings.model, "local embedding model downloaded and loaded");
                    shared.set(State::Ready(Arc::new(model)));
                }
                Err(error) => {
                    tracing::error!(model = %settings.model, %error, "local embedding model unavailable");
                    shared.set(State::Failed {
                        at: Instant::now(),
                        error,
                    });
                }
            }
        });
    }

    /// The model, waiting for a download in progress up to `settings.wait`.
    async fn model(&self) -> Result<Arc<SentenceModel>, EmbedError> {
        let deadline = Instant::now() + self.settings.wait;
        loop {
            let changed = self.shared.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let retry = {
                let mut state = self.shared.state.lock().unwrap_or_else(|e| e.into_inner());
                match &*state {
                    State::Ready(model) => return Ok(model.clone()),
                    State::Failed { at, error } => {
                        if at.elapsed() < RETRY_AFTER {
                            return Err(EmbedError::Failed(format!(
                                "the embedding model {} is unavailable: {error}",
                                self.settings.model
                            )));
                        }
                        // Under the lock: one caller starts the retry, the
                        // others find it loading and wait for it.
                        *state = loading();
                        true
                    }
                    State::Loading { since, doing } => {
                        if Instant::now() >= deadline {
                            return Err(EmbedError::Failed(format!(
                                "the embedding model {} is still being fetched ({doing}, \
                                 for {}s); try again shortly, or fetch it ahead with \
                                 `engram models pull`",
                                self.settings.model,
                                since.elapsed().as_secs()
                            )));
                        }
                        false
                    }
                }
            };
            if retry {
                self.shared.changed.notify_waiters();
                self.spawn_fetch();
                continue;
            }
            let _ = tokio::time::timeout_at(deadline.into(), changed).await;
        }
    }

    /// Embeds each text with `prefix` on the blocking pool, `threads` at a time.
    async fn run(&self, texts: &[String], prefix: &str) -> Result<Vec<Vec<f32>>, EmbedError> {
        let model = self.model().await?;
        let tasks: Vec<_> = texts
            .iter()
            .map(|text| {
                let model = model.clone();
                let permits = self.permits.clone();
                let text = format!("{prefix}{text}");
                async move {
                    let _permit = permits
                        .acquire_owned()
                        .await
                        .map_err(|_| EmbedError::Failed("the embedder is shut down".into()))?;
                    tokio::task::spawn_blocking(move || model.embed(&text))
                        .await
                        .map_err(|e| EmbedError::Failed(format!("embedding a text failed: {e}")))
                }
            })
            .collect();
        futures::future::try_join_all(tasks).await
    }
}

#[async_trait]
impl Embedder for LocalEmbedder {
    fn identity(&self) -> EmbedderIdentity {
        self.identity.clone()
    }

    fn is_local(&self) -> bool {
        // Its own query cache (below) is nearer than any shared one.
        true
    }

    async fn embed_documents(&self, texts: &[String]) -> Result<Vec<Vec<f32>>, EmbedError> {
        self.run(texts, &self.document_prefix).await
    }

    async fn embed_query(&self, text: &str) -> Result<Vec<f32>, EmbedError> {
        if let Some(vector) = self.lock_queries().get(text) {
            return Ok(vector);
        }
        let vector = self
            .run(&[text.to_owned()], &self.query_prefix)
            .await?
            .pop()
            .ok_or_else(|| EmbedError::Failed("no vector came back".into()))?;
        self.lock_queries().put(text, vector.clone());
        Ok(vector)
    }
}

impl LocalEmbedder {
    fn lock_queries(&self) -> std::sync::MutexGuard<'_, QueryCache> {
        self.queries.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The last [`QUERY_CACHE_ENTRIES`] query vectors, oldest out first.
#[derive(Default)]
struct QueryCache {
    vectors: HashMap<String, Vec<f32>>,
    order: VecDeque<String>,
}

impl QueryCache {
    fn get(&self, text: &str) -> Option<Vec<f32>> {
        self.vectors.get(text).cloned()
    }

    fn put(&mut self, text: &str, vector: Vec<f32>) {
        if self.vectors.contains_key(text) {
            return;
        }
        if self.order.len() >= QUERY_CACHE_ENTRIES
            && let Some(oldest) = self.order.pop_front()
        {
            self.vectors.remove(&oldest);
        }
        self.order.push_back(text.to_owned());
        self.vectors.insert(text.to_owned(), vector);
    }
}

/// The state of a download about to start.
fn loading() -> State {
    State::Loading {
        since: Instant::now(),
        doing: "starting the download".to_owned(),
    }
}

/// Loads the model `settings` name from its directory, on a blocking thread
/// (pooling from the catalog when the directory does not say).
async fn load(settings: &LocalSettings) -> Result<SentenceModel, EmbedError> {
    let dir = settings.dir();
    let pooling = catalog::known(&settings.model).map_or(Pooling::Mean, |k| k.pooling);
    tokio::task::spawn_blocking(move || SentenceModel::load(&dir, pooling))
        .await
        .map_err(|e| EmbedError::Failed(format!("loading the model failed: {e}")))?
        .map_err(EmbedError::Failed)
}

/// Downloads the model into the cache, then loads it.
async fn fetch(settings: &LocalSettings, shared: &Shared) -> Result<SentenceModel, String> {
    let base = settings
        .hub
        .as_deref()
        .ok_or_else(|| offline_help(settings))?;
    let hub = Hub::new(base, settings.hub_token.clone())?;
    let dir = settings.dir();
    if settings.is_present() {
        // Another process fetched it meanwhile.
        return load(settings).await.map_err(|EmbedError::Failed(e)| e);
    }
    tracing::info!(model = %settings.model, hub = base, dir = %dir.display(), "downloading the embedding model");
    let last_logged = Mutex::new((String::new(), 0u64));
    let progress = |file: &str, done: u64, total: Option<u64>| {
        let doing = match total {
            Some(total) => format!("{file}: {} of {} MiB", done >> 20, total >> 20),
            None => format!("{file}: {} MiB", done >> 20),
        };
        // A log line per file and per 10% of a large one.
        let tenth = total.map_or(0, |t| done * 10 / t.max(1));
        let mut last = last_logged.lock().unwrap_or_else(|e| e.into_inner());
        if last.0 != file || last.1 != tenth {
            *last = (file.to_owned(), tenth);
            tracing::info!(model = %settings.model, "{doing}");
        }
        drop(last);
        shared.progress(doing);
    };
    hub.pull(&settings.model, &dir, &progress)
        .await
        .map_err(|e| format!("{e}. {}", offline_help(settings)))?;
    load(settings).await.map_err(|EmbedError::Failed(e)| e)
}

/// What to do when the model cannot be downloaded.
pub fn offline_help(settings: &LocalSettings) -> String {
    format!(
        "model {} is not in {}. Fetch it with `engram models pull {}` where the \
         network reaches the hub, or put its config.json, tokenizer.json and \
         model.safetensors in a directory and set ENGRAM_EMBEDDING_MODEL_PATH to it; \
         or run with ENGRAM_EMBEDDER=hash",
        settings.model,
        settings.dir().display(),
        settings.model
    )
}

fn names(paths: &[PathBuf]) -> String {
    paths
        .iter()
        .filter_map(|p| p.file_name())
        .map(|n| n.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(", ")
}
