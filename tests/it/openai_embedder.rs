//! The `openai` embedder against a fake OpenAI-compatible server (real HTTP
//! and JSON): request shapes, batching, prefixes, retries, timeouts and the
//! errors a user sees; then the real binary embedding through it, with and
//! without the cache.

use crate::common;

use std::time::{Duration, Instant};

use common::fake_openai::{FakeOpenAi, Reply};
use common::redis::{shared_url, unique_prefix};
use common::{connect_with, ok, texts};
use engram::embed::{Embedder, HashEmbedder, InputType, OpenAiEmbedder, OpenAiSettings, dot};
use engram::openai::Endpoint;
use serde_json::{Value, json};

const DIMS: usize = 64;

fn settings(fake: &FakeOpenAi) -> OpenAiSettings {
    OpenAiSettings {
        endpoint: Endpoint {
            base_url: fake.base_url.clone(),
            api_key: Some("test-key".into()),
            timeout: Duration::from_secs(5),
            max_retries: 3,
        },
        model: "text-embedding-3-small".into(),
        dims: DIMS,
        send_dimensions: true,
        query_prefix: String::new(),
        document_prefix: String::new(),
        input_type: None,
        batch_size: 64,
    }
}

fn with_endpoint(fake: &FakeOpenAi, change: impl FnOnce(&mut Endpoint)) -> OpenAiSettings {
    let mut s = settings(fake);
    change(&mut s.endpoint);
    s
}

fn texts_of(n: usize) -> Vec<String> {
    (0..n)
        .map(|i| format!("Memory number {i} about the garden"))
        .collect()
}

#[tokio::test]
async fn documents_go_in_batches_in_order_with_model_dimensions_and_key() {
    let fake = FakeOpenAi::start(DIMS).await;
    let embedder = OpenAiEmbedder::new(OpenAiSettings {
        batch_size: 2,
        document_prefix: "passage: ".into(),
        ..settings(&fake)
    })
    .unwrap();
    let inputs = texts_of(5);
    let vectors = embedder.embed_documents(&inputs).await.unwrap();

    let requests = fake.requests();
    assert_eq!(requests.len(), 3, "5 texts in batches of 2");
    let sent: Vec<String> = requests
        .iter()
        .flat_map(|r| r.body["input"].as_array().unwrap().clone())
        .map(|v| v.as_str().unwrap().to_owned())
        .collect();
    let expected: Vec<String> = inputs.iter().map(|t| format!("passage: {t}")).collect();
    assert_eq!(sent, expected);
    for r in &requests {
        assert_eq!(r.path, "/v1/embeddings");
        assert_eq!(r.body["model"], "text-embedding-3-small");
        assert_eq!(r.body["dimensions"], DIMS);
        assert_eq!(r.authorization.as_deref(), Some("Bearer test-key"));
    }

    // In order, normalised (the fake sends them scaled by 3).
    let reference = HashEmbedder::new(DIMS);
    for (text, v) in expected.iter().zip(&vectors) {
        assert_eq!(v.len(), DIMS);
        assert!((dot(v, v) - 1.0).abs() < 1e-4);
        assert!(dot(v, &reference.embed(text)) > 0.999, "{text}");
    }
    assert_eq!(embedder.identity().name, "openai:text-embedding-3-small");
    assert!(!embedder.is_local());
}

/// The vector `embedder` makes of `text` is the fake's (hash) vector of it.
async fn embeds_as_the_fake(embedder: &OpenAiEmbedder, text: &str) {
    let v = embedder.embed_query(text).await.unwrap();
    assert_eq!(v.len(), DIMS);
    assert!(
        dot(&v, &HashEmbedder::new(DIMS).embed(text)) > 0.999,
        "{text}"
    );
}

/// Vectors are asked for in base64; a server that answers floats anyway is
/// read as such, and one that refuses base64 gets the request again
/// without it, and floats from then on (no refused request each time).
#[tokio::test]
async fn vectors_come_in_base64_and_servers_without_it_still_work() {
    let fake = FakeOpenAi::start(DIMS).await;
    let embedder = OpenAiEmbedder::new(settings(&fake)).unwrap();
    embeds_as_the_fake(&embedder, "tea in Kyoto").await;
    assert_eq!(fake.requests()[0].body["encoding_format"], "base64");

    fake.then(Reply::FloatsOnly);
    embeds_as_the_fake(&embedder, "tea in Kyoto").await;
    assert_eq!(fake.requests().len(), 2);

    fake.then(Reply::NoBase64);
    embeds_as_the_fake(&embedder, "rowing in Porto").await;
    let requests = fake.requests();
    assert_eq!(
        requests.len(),
        4,
        "the refused request, then the same for floats"
    );
    assert_eq!(requests[2].body["encoding_format"], "base64");
    assert_eq!(requests[3].body["input"], requests[2].body["input"]);
    assert!(requests[3].body.get("encoding_format").is_none());
    embeds_as_the_fake(&embedder, "chess in Oslo").await;
    let requests = fake.requests();
    assert_eq!(requests.len(), 5);
    assert!(requests[4].body.get("encoding_format").is_none());
}

/// A base64 vector that does not decode to floats is an error naming what
/// came back, not a panic or a short vector.
#[tokio::test]
async fn a_base64_vector_that_is_not_floats_is_refused_clearly() {
    let fake = FakeOpenAi::start(DIMS).await;
    let embedder = OpenAiEmbedder::new(settings(&fake)).unwrap();
    fake.then(Reply::Base64Text("not base64 at all!"));
    let err = embedder.embed_query("x").await.unwrap_err().to_string();
    assert!(
        err.contains("not valid base64") && err.contains("127.0.0.1"),
        "{err}"
    );
    fake.then(Reply::Base64Text("AAAAAAA="));
    let err = embedder.embed_query("x").await.unwrap_err().to_string();
    assert!(err.contains("5 bytes"), "{err}");
    // Whole floats, but too few of them: the usual dimension error.
    fake.then(Reply::Base64Text("AAAAAA=="));
    let err = embedder.embed_query("x").await.unwrap_err().to_string();
    assert!(err.contains("1-dimensional"), "{err}");
}

#[tokio::test]
async fn queries_carry_their_own_prefix_and_dimensions_can_be_left_out() {
    let fake = FakeOpenAi::start(DIMS).await;
    let embedder = OpenAiEmbedder::new(OpenAiSettings {
        query_prefix: "query: ".into(),
        document_prefix: "passage: ".into(),
        send_dimensions: false,
        ..settings(&fake)
    })
    .unwrap();
    embedder.embed_query("coffee in Lisbon").await.unwrap();
    let request = &fake.requests()[0];
    assert_eq!(request.body["input"], json!(["query: coffee in Lisbon"]));
    assert!(request.body.get("dimensions").is_none(), "{}", request.body);
}

#[tokio::test]
async fn an_input_type_field_tells_queries_from_documents() {
    let fake = FakeOpenAi::start(DIMS).await;
    let embedder = OpenAiEmbedder::new(OpenAiSettings {
        input_type: Some(InputType {
            field: "input_type".into(),
            query: Some("search_query".into()),
            document: Some("search_document".into()),
        }),
        ..settings(&fake)
    })
    .unwrap();
    let q = embedder.embed_query("coffee in Lisbon").await.unwrap();
    let d = embedder
        .embed_documents(&["Likes coffee in Lisbon".to_owned()])
        .await
        .unwrap();
    assert_eq!((q.len(), d[0].len()), (DIMS, DIMS));
    let sent: Vec<Value> = fake
        .requests()
        .iter()
        .map(|r| r.body["input_type"].clone())
        .collect();
    assert_eq!(sent, [json!("search_query"), json!("search_document")]);
    assert_eq!(fake.requests()[0].body["model"], "text-embedding-3-small");
    assert_eq!(fake.requests()[0].body["dimensions"], DIMS);

    // Only one side configured: the other sends no field. The cache key of
    // query vectors changes with the query's type.
    let documents_only = OpenAiEmbedder::new(OpenAiSettings {
        input_type: Some(InputType {
            field: "task".into(),
            query: None,
            document: Some("retrieval.passage".into()),
        }),
        ..settings(&fake)
    })
    .unwrap();
    documents_only.embed_query("tea").await.unwrap();
    assert!(fake.requests()[2].body.get("task").is_none());
    assert_ne!(embedder.query_variant(), documents_only.query_variant());
}

#[tokio::test]
async fn rate_limits_and_server_errors_are_retried_honouring_retry_after() {
    let fake = FakeOpenAi::start(DIMS).await;
    fake.then(Reply::Error {
        status: 429,
        code: "rate_limit_exceeded",
        retry_after: Some(1),
    })
    .then(Reply::Error {
        status: 503,
        code: "server_error",
        retry_after: None,
    });
    let embedder = OpenAiEmbedder::new(settings(&fake)).unwrap();
    let started = Instant::now();
    let v = embedder.embed_query("hello").await.unwrap();
    assert_eq!(v.len(), DIMS);
    assert_eq!(fake.requests().len(), 3, "429, 503, then success");
    assert!(
        started.elapsed() >= Duration::from_millis(950),
        "Retry-After: 1 was not waited: {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn errors_say_what_to_fix() {
    let fake = FakeOpenAi::start(DIMS).await;

    // Still rate-limited after every retry.
    let few_retries = OpenAiEmbedder::new(with_endpoint(&fake, |e| e.max_retries = 1)).unwrap();
    for _ in 0..2 {
        fake.then(Reply::Error {
            status: 429,
            code: "rate_limit_exceeded",
            retry_after: Some(0),
        });
    }
    let err = few_retries.embed_query("x").await.unwrap_err().to_string();
    assert!(err.contains("429") && err.contains("rate-limited"), "{err}");

    let embedder = OpenAiEmbedder::new(settings(&fake)).unwrap();
    fake.then(Reply::Error {
        status: 401,
        code: "invalid_api_key",
        retry_after: None,
    });
    let err = embedder.embed_query("x").await.unwrap_err().to_string();
    assert!(err.contains("OPENAI_API_KEY"), "{err}");

    fake.then(Reply::WrongDims(32));
    let err = embedder.embed_query("x").await.unwrap_err().to_string();
    assert!(
        err.contains("32-dimensional") && err.contains("ENGRAM_EMBEDDING_DIMS"),
        "{err}"
    );

    let slow = OpenAiEmbedder::new(with_endpoint(&fake, |e| {
        e.timeout = Duration::from_millis(300)
    }))
    .unwrap();
    fake.then(Reply::Delay(Duration::from_secs(2)));
    let err = slow.embed_query("x").await.unwrap_err().to_string();
    assert!(err.contains("did not answer within"), "{err}");

    let nowhere = OpenAiEmbedder::new(with_endpoint(&fake, |e| {
        e.base_url = "http://127.0.0.1:1/v1".into();
        e.max_retries = 0;
    }))
    .unwrap();
    let err = nowhere.embed_query("x").await.unwrap_err().to_string();
    assert!(err.contains("OPENAI_BASE_URL"), "{err}");

    let err = OpenAiEmbedder::new(with_endpoint(&fake, |e| {
        e.base_url = engram::openai::OPENAI_API_BASE.into();
        e.api_key = None;
    }))
    .err()
    .unwrap()
    .to_string();
    assert!(err.contains("OPENAI_API_KEY is not set"), "{err}");
}

async fn serve(fake: &FakeOpenAi, extra: &[(&str, &str)]) -> (tempfile::TempDir, common::Client) {
    let dir = tempfile::tempdir().unwrap();
    let dims = fake.dims().to_string();
    let mut env = vec![
        ("ENGRAM_EMBEDDER", "openai"),
        ("ENGRAM_EMBEDDING_DIMS", dims.as_str()),
        ("OPENAI_BASE_URL", fake.base_url.as_str()),
        ("OPENAI_API_KEY", "test-key"),
    ];
    env.extend_from_slice(extra);
    let client = connect_with(&dir.path().join("engram.db"), &env).await;
    (dir, client)
}

/// The binary, configured as a user would, embeds through the server; with
/// the cache, a repeated query costs no second embedding request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_embeds_through_the_server_and_the_cache_saves_repeats() {
    let fake = FakeOpenAi::start(DIMS).await;
    let prefix = unique_prefix();
    let url = shared_url();
    let (_dir, client) = serve(
        &fake,
        &[("ENGRAM_CACHE_URL", &url), ("ENGRAM_CACHE_PREFIX", &prefix)],
    )
    .await;
    ok(
        &client,
        "remember",
        json!({"text": "Prefers oat milk in coffee"}),
    )
    .await;
    ok(&client, "remember", json!({"text": "Allergic to peanuts"})).await;
    assert_eq!(fake.requests().len(), 2, "one request per remembered text");

    for limit in [10, 5, 10] {
        let found = ok(
            &client,
            "recall",
            json!({"query": "coffee milk", "limit": limit}),
        )
        .await;
        assert_eq!(texts(&found)[0], "Prefers oat milk in coffee");
    }
    let queries: Vec<_> = fake
        .requests()
        .into_iter()
        .filter(|r| r.body["input"] == json!(["coffee milk"]))
        .collect();
    assert_eq!(
        queries.len(),
        1,
        "the query vector came from the cache after the first"
    );
    client.cancel().await.unwrap();
}
