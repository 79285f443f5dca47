//! Which embedder engram runs, and `engram models pull`.
//!
//! `ENGRAM_EMBEDDER` names one (`hash`, `local`, `openai`); unset (`auto`),
//! the choice keeps data safe first and gives meaning second:
//! 1. a store that recorded an embedder opens with that one, whatever else
//!    is available (a store made offline with `hash` stays `hash` until
//!    `engram reembed`, and an upgrade never changes what a store holds);
//! 2. a new store gets `local` when the model's files are on disk, or when
//!    the hub answers a quick look (the download then runs in the
//!    background: the MCP handshake never waits for it, embedding calls do);
//! 3. else `hash`, with a log line saying why and how to get meaning.

use std::sync::Arc;
use std::time::Duration;

use super::{StartupError, endpoint, is_postgres};
use crate::config::{Config, DEFAULT_OPENAI_EMBEDDING_MODEL, EmbedderKind};
use crate::embed::local::{Hub, LocalSettings, catalog, model_dir};
use crate::embed::{
    EmbedError, Embedder, EmbedderIdentity, HashEmbedder, InputType, LocalEmbedder, OpenAiEmbedder,
    OpenAiSettings,
};
use crate::store::{PgStore, SqliteStore, redact};

/// How long a new store waits for the hub to answer before choosing `hash`.
const HUB_LOOK: Duration = Duration::from_secs(3);

/// Builds the embedder the config (and, for `auto`, the store) names.
pub async fn embedder(config: &Config) -> Result<Arc<dyn Embedder>, StartupError> {
    match config.embedder.kind {
        EmbedderKind::Hash => Ok(hash(config.embedder.dims)),
        EmbedderKind::Openai => openai(config, None, config.embedder.dims),
        EmbedderKind::Local => local(local_settings(config, None)).await,
        EmbedderKind::Auto => auto(config).await,
    }
}

async fn auto(config: &Config) -> Result<Arc<dyn Embedder>, StartupError> {
    let url = &config.store.database_url;
    let recorded = if is_postgres(url) {
        PgStore::recorded_embedder(url).await?
    } else {
        SqliteStore::recorded_embedder(url).await?
    };
    if let Some(recorded) = recorded {
        let identity = EmbedderIdentity::parse(&recorded).ok_or_else(|| {
            StartupError::Unsupported(format!(
                "{} records embedder '{recorded}', which this engram cannot read",
                redact(url)
            ))
        })?;
        return recorded_embedder(config, &identity).await;
    }
    let settings = local_settings(config, None);
    if settings.is_present() || settings.path.is_some() {
        let embedder = local(settings).await?;
        tracing::info!(embedder = %embedder.identity(), "embedder: local (semantic recall, in process)");
        return Ok(embedder);
    }
    let why_not = match settings.hub.clone() {
        None => {
            "no model on disk and downloads are off (ENGRAM_MODEL_HUB_URL=off or HF_HUB_OFFLINE)"
                .to_owned()
        }
        Some(base) => match Hub::new(&base, settings.hub_token.clone()) {
            Err(e) => e,
            Ok(hub) => match hub.reachable(&settings.model, HUB_LOOK).await {
                Ok(()) => {
                    let embedder = local(settings).await?;
                    tracing::info!(
                        embedder = %embedder.identity(), hub = base.as_str(),
                        "embedder: local (semantic recall, in process); its model is downloading \
                         in the background, and remember/recall wait for it"
                    );
                    return Ok(embedder);
                }
                Err(e) => format!("no model on disk and {e}"),
            },
        },
    };
    tracing::info!(
        "embedder: hash (lexical: recall matches words, not meaning): {why_not}. For semantic \
         recall, run `engram models pull` and start with a new store, or run \
         `ENGRAM_EMBEDDER=local engram reembed` on this one"
    );
    Ok(hash(config.embedder.dims))
}

/// The embedder a store recorded, built from what the config adds to it.
async fn recorded_embedder(
    config: &Config,
    identity: &EmbedderIdentity,
) -> Result<Arc<dyn Embedder>, StartupError> {
    let name = identity.name.as_str();
    // A dimension configured outright is kept, so a store that differs refuses it.
    let dims = if config.embedder.dims_set {
        config.embedder.dims
    } else {
        identity.dims
    };
    let embedder = if name == "hash-v1" {
        hash(dims)
    } else if let Some(model) = name.strip_prefix("openai:") {
        openai(config, Some(model), dims)?
    } else if let Some(model) = name.strip_prefix("local:") {
        local(local_settings(config, Some(model))).await?
    } else {
        return Err(StartupError::Unsupported(format!(
            "the store records embedder {identity}, which this engram does not know"
        )));
    };
    if name == "hash-v1" {
        tracing::info!(
            "embedder: hash, as this store recorded (lexical: recall matches words, not \
             meaning); for semantic recall run `ENGRAM_EMBEDDER=local engram reembed`"
        );
    } else {
        tracing::info!(embedder = %embedder.identity(), "embedder: as this store recorded");
    }
    Ok(embedder)
}

fn hash(dims: usize) -> Arc<dyn Embedder> {
    Arc::new(HashEmbedder::new(dims))
}

fn openai(
    config: &Config,
    recorded_model: Option<&str>,
    dims: usize,
) -> Result<Arc<dyn Embedder>, StartupError> {
    let e = &config.embedder;
    let settings = OpenAiSettings {
        endpoint: endpoint(config, e.timeout_secs, e.max_retries),
        model: e
            .model
            .clone()
            .or(recorded_model.map(str::to_owned))
            .unwrap_or_else(|| DEFAULT_OPENAI_EMBEDDING_MODEL.to_owned()),
        dims,
        send_dimensions: e.send_dimensions,
        query_prefix: e.query_prefix.clone(),
        document_prefix: e.document_prefix.clone(),
        input_type: (e.query_input_type.is_some() || e.document_input_type.is_some()).then(|| {
            InputType {
                field: e.input_type_field.clone(),
                query: e.query_input_type.clone(),
                document: e.document_input_type.clone(),
            }
        }),
        batch_size: e.batch_size,
    };
    let embedder = OpenAiEmbedder::new(settings).map_err(unsupported)?;
    Ok(Arc::new(embedder))
}

async fn local(settings: LocalSettings) -> Result<Arc<dyn Embedder>, StartupError> {
    Ok(Arc::new(
        LocalEmbedder::open(settings).await.map_err(unsupported)?,
    ))
}

/// The `local` embedder's settings; `recorded_model` is the store's, which
/// the configured model overrides (the store then refuses the mismatch).
pub fn local_settings(config: &Config, recorded_model: Option<&str>) -> LocalSettings {
    let e = &config.embedder;
    let prefix = |p: &str| (!p.is_empty()).then(|| p.to_owned());
    LocalSettings {
        model: e
            .model
            .clone()
            .or(recorded_model.map(str::to_owned))
            .unwrap_or_else(|| catalog::DEFAULT_MODEL.to_owned()),
        path: e.model_path.clone(),
        cache_dir: e.model_cache_dir.clone(),
        hub: e.hub_url.clone(),
        hub_token: e.hub_token.as_ref().map(|t| t.0.clone()),
        threads: e.threads,
        query_prefix: prefix(&e.query_prefix),
        document_prefix: prefix(&e.document_prefix),
        wait: Duration::from_secs(e.timeout_secs),
    }
}

fn unsupported(e: EmbedError) -> StartupError {
    match e {
        EmbedError::Failed(message) => StartupError::Unsupported(message),
    }
}

/// `engram models pull [ID]`: downloads a model into the cache (a progress
/// bar on a terminal), checked; a model already there is left as it is.
pub async fn pull_model(config: &Config, id: Option<String>) -> Result<(), StartupError> {
    let id = id
        .or_else(|| config.embedder.model.clone())
        .unwrap_or_else(|| catalog::DEFAULT_MODEL.to_owned());
    let settings = LocalSettings {
        model: id.clone(),
        path: None,
        ..local_settings(config, None)
    };
    catalog::check_id(&id).map_err(StartupError::Unsupported)?;
    let dir = model_dir(&settings.cache_dir, &id);
    if settings.is_present() {
        eprintln!("engram: {id} is already in {}", dir.display());
        return Ok(());
    }
    let base = settings.hub.clone().ok_or_else(|| {
        StartupError::Unsupported(
            "downloads are off (ENGRAM_MODEL_HUB_URL=off or HF_HUB_OFFLINE): set \
             ENGRAM_MODEL_HUB_URL, or copy the model's files and set ENGRAM_EMBEDDING_MODEL_PATH"
                .to_owned(),
        )
    })?;
    let hub = Hub::new(&base, settings.hub_token.clone()).map_err(StartupError::Unsupported)?;
    let bar =
        indicatif::ProgressBar::with_draw_target(None, indicatif::ProgressDrawTarget::stderr());
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{msg:>24} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    let progress = |file: &str, done: u64, total: Option<u64>| {
        if bar.message() != file {
            bar.set_message(file.to_owned());
            bar.set_length(total.unwrap_or(0));
        }
        bar.set_position(done);
    };
    eprintln!(
        "engram: downloading {id} from {base} into {}",
        dir.display()
    );
    hub.pull(&id, &dir, &progress)
        .await
        .map_err(StartupError::Unsupported)?;
    bar.finish_and_clear();
    // Loading it proves the files make a model engram can run.
    let embedder = LocalEmbedder::open(settings).await.map_err(unsupported)?;
    eprintln!(
        "engram: {} is ready in {}",
        embedder.identity(),
        dir.display()
    );
    Ok(())
}
