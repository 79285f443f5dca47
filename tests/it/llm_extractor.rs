//! The `llm` extractor against a fake OpenAI-compatible chat server (real
//! HTTP and JSON): the request it sends, what it takes from a reply and what
//! it refuses, the `json_object` fallback, and failures that store nothing.

use crate::common;

use std::sync::Arc;
use std::time::Duration;

use common::fake_openai::{FakeOpenAi, Reply};
use common::{ME, connect_with, current, ok, texts};
use engram::embed::HashEmbedder;
use engram::extract::{DEFAULT_CATEGORIES, Extractor, LlmExtractor, LlmSettings};
use engram::model::{Input, Message};
use engram::openai::Endpoint;
use engram::params::RememberParams;
use engram::service::{MemoryService, Settings};
use engram::store::SqliteStore;
use serde_json::{Value, json};

const CHAT: &str = "/v1/chat/completions";

fn settings(fake: &FakeOpenAi) -> LlmSettings {
    LlmSettings {
        endpoint: Endpoint {
            base_url: fake.base_url.clone(),
            api_key: Some("test-key".into()),
            timeout: Duration::from_secs(5),
            max_retries: 1,
        },
        model: "gpt-4o-mini".into(),
        categories: DEFAULT_CATEGORIES.iter().map(|c| c.to_string()).collect(),
    }
}

fn message(role: &str, content: &str) -> Message {
    Message::new(role, content)
}

fn conversation() -> Input {
    Input::Messages(vec![
        message("system", "internal instructions, not the user"),
        message("user", "I moved to Porto last month"),
        message("assistant", "Nice! Maybe try the francesinha?"),
        message("user", "Sure. Also, I'm vegetarian now"),
    ])
}

#[tokio::test]
async fn one_schema_constrained_request_carries_the_conversation_with_its_roles() {
    let fake = FakeOpenAi::start(64).await;
    fake.then(Reply::Content(
        json!({"facts": [
            {"text": "Lives in Porto", "categories": ["identity", "made-up"]},
            {"text": "Is vegetarian", "categories": ["diet"]},
            {"text": "   ", "categories": []},
            {"text": "Is vegetarian", "categories": ["diet"]}
        ]})
        .to_string(),
    ));
    let extractor = LlmExtractor::new(settings(&fake)).unwrap();
    let extracted = extractor.extract(&conversation()).await.unwrap();
    assert_eq!(
        (
            extracted.usage.calls,
            extracted.usage.prompt_tokens,
            extracted.usage.completion_tokens
        ),
        (1, 120, 30),
        "the server's token counts"
    );
    assert_eq!(extracted.usage.model, "gpt-4o-mini");
    let facts = extracted.facts;

    let got: Vec<(&str, Vec<String>)> = facts
        .iter()
        .map(|f| (f.text.as_str(), f.categories.clone()))
        .collect();
    assert_eq!(
        got,
        [
            ("Lives in Porto", vec!["identity".to_owned()]),
            ("Is vegetarian", vec!["diet".to_owned()])
        ],
        "empty, repeated and off-list output is dropped"
    );

    let requests = fake.requests_to(CHAT);
    assert_eq!(requests.len(), 1);
    let body = &requests[0].body;
    assert_eq!(body["model"], "gpt-4o-mini");
    assert_eq!(body["temperature"], 0.0);
    assert_eq!(
        requests[0].authorization.as_deref(),
        Some("Bearer test-key")
    );
    let messages = body["messages"].as_array().unwrap();
    assert_eq!(messages[0]["role"], "system");
    assert!(
        messages[0]["content"]
            .as_str()
            .unwrap()
            .contains("travel.loyalty")
    );
    let transcript = messages[1]["content"].as_str().unwrap();
    assert!(transcript.starts_with("Today is "), "{transcript}");
    assert!(transcript.contains("[user] I moved to Porto last month\n"));
    assert!(transcript.contains("[assistant] Nice! Maybe try the francesinha?\n"));
    assert!(
        !transcript.contains("internal instructions"),
        "system messages stay out"
    );

    let format = &body["response_format"];
    assert_eq!(format["type"], "json_schema");
    assert_eq!(format["json_schema"]["strict"], true);
    let allowed = &format["json_schema"]["schema"]["properties"]["facts"]["items"]["properties"]["categories"]
        ["items"]["enum"];
    assert_eq!(allowed.as_array().unwrap().len(), DEFAULT_CATEGORIES.len());
}

#[tokio::test]
async fn a_server_without_json_schema_gets_json_object_from_then_on() {
    let fake = FakeOpenAi::start(64).await;
    fake.then(Reply::NoJsonSchema);
    let extractor = LlmExtractor::new(settings(&fake)).unwrap();
    let facts = extractor
        .extract(&Input::Text("I live in Oslo".into()))
        .await
        .unwrap()
        .facts;
    assert_eq!(facts[0].text, "I live in Oslo");
    let kinds = |fake: &FakeOpenAi| -> Vec<Value> {
        fake.requests_to(CHAT)
            .iter()
            .map(|r| r.body["response_format"]["type"].clone())
            .collect()
    };
    assert_eq!(kinds(&fake), [json!("json_schema"), json!("json_object")]);

    extractor
        .extract(&Input::Text("I work as a nurse".into()))
        .await
        .unwrap();
    assert_eq!(
        kinds(&fake).len(),
        3,
        "one request: the fallback is remembered"
    );
    assert_eq!(kinds(&fake)[2], "json_object");
}

async fn service(fake: &FakeOpenAi, dir: &tempfile::TempDir) -> MemoryService {
    let url = format!("sqlite://{}/engram.db", dir.path().display());
    let embedder = Arc::new(HashEmbedder::new(64));
    let store = SqliteStore::open(&url, engram::embed::Embedder::identity(embedder.as_ref()))
        .await
        .unwrap();
    MemoryService::new(
        Arc::new(store),
        embedder,
        Arc::new(LlmExtractor::new(settings(fake)).unwrap()),
        Settings {
            dedup_threshold: 0.9,
            reconcile_threshold: 0.3,
            max_text_bytes: 32 * 1024,
            cache_ttl: Duration::from_secs(60),
            on_llm_error: engram::config::OnLlmError::Fail,
            ..Settings::default()
        },
    )
}

fn remember(text: &str) -> RememberParams {
    RememberParams {
        text: Some(text.into()),
        user_id: Some("alice".into()),
        ..RememberParams::default()
    }
}

#[tokio::test]
async fn bad_replies_and_failures_store_nothing() {
    let fake = FakeOpenAi::start(64).await;
    let dir = tempfile::tempdir().unwrap();
    let s = service(&fake, &dir).await;

    fake.then(Reply::Content(
        "Sure! Here are the facts: Lives in Oslo".into(),
    ));
    let err = s
        .remember(ME, remember("I live in Oslo"))
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("did not answer with the facts JSON"), "{err}");

    fake.then(Reply::Content(
        json!({"facts": "Lives in Oslo"}).to_string(),
    ));
    assert!(s.remember(ME, remember("I live in Oslo")).await.is_err());

    for _ in 0..2 {
        fake.then(Reply::Error {
            status: 500,
            code: "server_error",
            retry_after: None,
        });
    }
    let err = s
        .remember(ME, remember("I live in Oslo"))
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("500"), "{err}");
    assert_eq!(common::stored(&s, "alice").await, 0, "nothing was stored");

    // Nothing worth remembering is an answer, not an error.
    fake.then(Reply::Content(json!({"facts": []}).to_string()));
    let none = s.remember(ME, remember("Hi there!")).await.unwrap();
    assert!(none.results.is_empty());

    // infer: false stores the text as given, without asking the model.
    let asked = fake.requests_to(CHAT).len();
    let verbatim = s
        .remember(
            ME,
            RememberParams {
                infer: Some(false),
                ..remember("Keep this exact sentence")
            },
        )
        .await
        .unwrap();
    assert_eq!(verbatim.results[0].memory, "Keep this exact sentence");
    assert_eq!(verbatim.usage, None, "no model, no usage");
    assert_eq!(fake.requests_to(CHAT).len(), asked);
}

/// The binary, configured as a user would, extracts through the server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_turns_a_conversation_into_categorised_facts() {
    let fake = FakeOpenAi::start(64).await;
    let dir = tempfile::tempdir().unwrap();
    let env = [
        ("ENGRAM_EXTRACTOR", "llm"),
        ("ENGRAM_EMBEDDER", "openai"),
        ("ENGRAM_EMBEDDING_DIMS", "64"),
        ("OPENAI_BASE_URL", fake.base_url.as_str()),
        ("OPENAI_API_KEY", "test-key"),
    ];
    let client = connect_with(&dir.path().join("engram.db"), &env).await;
    let result = ok(
        &client,
        "remember",
        json!({"messages": [
            {"role": "user", "content": "I am flying to Tokyo in March"},
            {"role": "assistant", "content": "Exciting! Window or aisle?"},
            {"role": "user", "content": "Window seat, always"}
        ]}),
    )
    .await;
    let events: Vec<&str> = result["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["event"].as_str().unwrap())
        .collect();
    assert_eq!(events, ["ADD", "ADD"], "{result}");
    assert_eq!(result["usage"]["calls"], 1, "{result}");
    assert_eq!(result["usage"]["prompt_tokens"], 120);
    assert_eq!(
        fake.requests_to(CHAT).len(),
        1,
        "exactly one extraction call"
    );

    let found = ok(&client, "recall", json!({"query": "window seat"})).await;
    assert_eq!(texts(&found)[0], "Window seat, always");
    assert_eq!(found["results"][0]["categories"], json!(["preferences"]));

    // Something similar is stored now: one extraction and one reconciliation.
    let more = ok(
        &client,
        "remember",
        json!({"text": "Window seat, always, on long flights"}),
    )
    .await;
    assert_eq!(more["results"][0]["event"], "ADD", "{more}");
    assert_eq!(fake.requests_to(CHAT).len(), 3);
    let shown = fake.requests_to(CHAT)[2].body["messages"][1]["content"].clone();
    assert!(
        shown.as_str().unwrap().contains("] Window seat, always\n"),
        "{shown}"
    );
    client.cancel().await.unwrap();
}

fn facts(texts: &[&str]) -> Reply {
    let facts: Vec<Value> = texts
        .iter()
        .map(|t| json!({"text": t, "categories": ["identity"]}))
        .collect();
    Reply::Content(json!({ "facts": facts }).to_string())
}

fn decide(decisions: Value) -> Reply {
    Reply::Content(json!({ "decisions": decisions }).to_string())
}

/// A contradiction supersedes: the old memory leaves every search and stays
/// in history. Nothing similar stored: no reconciliation call at all.
#[tokio::test]
async fn a_contradiction_supersedes_and_history_keeps_the_old_fact() {
    let fake = FakeOpenAi::start(64).await;
    let dir = tempfile::tempdir().unwrap();
    let s = service(&fake, &dir).await;

    fake.then(facts(&["Lives in Lisbon"]));
    let first = s.remember(ME, remember("I live in Lisbon")).await.unwrap();
    let lisbon = first.results[0].id;
    assert_eq!(
        fake.requests_to(CHAT).len(),
        1,
        "nothing similar: extraction only"
    );

    fake.then(facts(&["Lives in Porto"])).then(decide(
        json!([{"fact": 0, "event": "SUPERSEDE", "id": "m1", "text": "Lives in Porto"}]),
    ));
    let moved = s.remember(ME, remember("I moved to Porto")).await.unwrap();
    assert_eq!(
        fake.requests_to(CHAT).len(),
        3,
        "extraction + one reconciliation"
    );
    let event = &moved.results[0];
    assert_eq!(event.event, engram::model::Event::Supersede);
    assert_eq!(event.replaces, Some(lisbon));
    assert_eq!(current(&s, "alice").await, ["Lives in Porto"]);

    let shown = fake.requests_to(CHAT)[2].body["messages"][1]["content"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        shown.contains("[m1] Lives in Lisbon") && shown.contains("[0] Lives in Porto"),
        "{shown}"
    );
    assert!(
        !shown.contains(&lisbon.to_string()),
        "only aliases are shown"
    );

    let history = common::history(&s, "alice", lisbon).await;
    let events: Vec<_> = history.iter().map(|h| h.event.as_str()).collect();
    assert_eq!(events, ["ADD", "SUPERSEDE"]);
    assert_eq!(history[1].new_memory.as_deref(), Some("Lives in Porto"));
}

/// A refinement updates in place; a known fact changes nothing.
#[tokio::test]
async fn a_refinement_updates_and_a_known_fact_keeps() {
    let fake = FakeOpenAi::start(64).await;
    let dir = tempfile::tempdir().unwrap();
    let s = service(&fake, &dir).await;
    fake.then(facts(&["Likes coffee"]));
    let coffee = s
        .remember(ME, remember("I like coffee"))
        .await
        .unwrap()
        .results[0]
        .id;

    fake.then(facts(&[
        "Likes coffee, espresso most of all",
        "Likes coffee",
    ]))
    .then(decide(json!([
        {"fact": 0, "event": "UPDATE", "id": "m1", "text": "Likes coffee, espresso most of all"},
        {"fact": 1, "event": "NONE", "id": "m1", "text": "Likes coffee"}
    ])));
    let result = s
        .remember(ME, remember("Coffee, yes, espresso above all"))
        .await
        .unwrap();
    let events: Vec<_> = result
        .results
        .iter()
        .map(|r| (r.event.as_str(), r.id))
        .collect();
    assert_eq!(events, [("UPDATE", coffee), ("NONE", coffee)]);
    assert_eq!(
        current(&s, "alice").await,
        ["Likes coffee, espresso most of all"]
    );
    let history = common::history(&s, "alice", coffee).await;
    assert_eq!(history[1].old_memory.as_deref(), Some("Likes coffee"));

    fake.then(facts(&["Likes coffee, espresso most of all"]))
        .then(decide(
            json!([{"fact": 0, "event": "NONE", "id": "m1", "text": "x"}]),
        ));
    let known = s.remember(ME, remember("I like espresso")).await.unwrap();
    assert_eq!(known.results[0].event.as_str(), "NONE");
    assert_eq!(known.results[0].id, coffee);
    assert_eq!(current(&s, "alice").await.len(), 1);

    // Two changes to one memory: only the first is applied; the other fact
    // is added (the store decides whether it is new).
    fake.then(facts(&[
        "Likes coffee, ristretto most of all",
        "Likes coffee, lungo most of all",
    ]))
    .then(decide(json!([
        {"fact": 0, "event": "SUPERSEDE", "id": "m1", "text": "x"},
        {"fact": 1, "event": "SUPERSEDE", "id": "m1", "text": "x"}
    ])));
    let twice = s
        .remember(ME, remember("ristretto, no, lungo"))
        .await
        .unwrap();
    let events: Vec<_> = twice.results.iter().map(|r| r.event.as_str()).collect();
    assert_eq!(events, ["SUPERSEDE", "ADD"]);
    assert_eq!(
        current(&s, "alice").await,
        [
            "Likes coffee, lungo most of all",
            "Likes coffee, ristretto most of all"
        ]
    );
    assert_eq!(
        fake.requests_to(CHAT).len(),
        7,
        "1 call for the first remember (nothing similar), 2 for each of the other three"
    );
}

/// Each fact's similar memories are looked up at once, and shown to the
/// reconciler in the facts' order: the first fact's under `m1`.
#[tokio::test]
async fn similar_memories_are_shown_in_the_order_of_the_facts() {
    let fake = FakeOpenAi::start(64).await;
    let dir = tempfile::tempdir().unwrap();
    let s = service(&fake, &dir).await;
    fake.then(facts(&["Likes coffee"]));
    s.remember(ME, remember("I like coffee")).await.unwrap();
    fake.then(facts(&["Lives in Paris"]));
    s.remember(ME, remember("I live in Paris")).await.unwrap();

    fake.then(facts(&["Lives in Paris, France", "Likes coffee, black"]))
        .then(decide(json!([
            {"fact": 0, "event": "NONE", "id": "m1", "text": "x"},
            {"fact": 1, "event": "NONE", "id": "m2", "text": "x"}
        ])));
    let result = s
        .remember(ME, remember("Paris, France; coffee, black"))
        .await
        .unwrap();
    let events: Vec<_> = result.results.iter().map(|r| r.event.as_str()).collect();
    assert_eq!(events, ["NONE", "NONE"]);
    let asked = fake.requests_to(CHAT).last().unwrap().body.to_string();
    let paris = asked.find("] Lives in Paris\\n").expect("Paris shown");
    let coffee = asked.find("] Likes coffee\\n").expect("coffee shown");
    assert!(
        asked[paris - 3..].starts_with("[m1]") && asked[coffee - 3..].starts_with("[m2]"),
        "the first fact's memory is m1: {asked}"
    );
}

/// Invented ids never touch stored data; a reply that is not the decisions
/// JSON fails the call and writes nothing.
#[tokio::test]
async fn invented_ids_and_garbled_decisions_never_change_stored_memories() {
    let fake = FakeOpenAi::start(64).await;
    let dir = tempfile::tempdir().unwrap();
    let s = service(&fake, &dir).await;
    fake.then(facts(&["Lives in Lisbon"]));
    let lisbon = s
        .remember(ME, remember("I live in Lisbon"))
        .await
        .unwrap()
        .results[0]
        .id;

    let forged = uuid_like(lisbon);
    fake.then(facts(&["Lives in Porto"])).then(decide(
        json!([{"fact": 0, "event": "SUPERSEDE", "id": "m7", "text": "Lives in Porto"},
                             {"fact": 3, "event": "UPDATE", "id": "m1", "text": "Lives on Mars"}]),
    ));
    let added = s.remember(ME, remember("I moved to Porto")).await.unwrap();
    assert_eq!(
        added.results[0].event.as_str(),
        "ADD",
        "unknown alias: added instead"
    );
    assert_eq!(
        current(&s, "alice").await,
        ["Lives in Lisbon", "Lives in Porto"]
    );

    fake.then(facts(&["Lives in Faro"])).then(decide(
        json!([{"fact": 0, "event": "SUPERSEDE", "id": forged, "text": "x"}]),
    ));
    s.remember(ME, remember("Faro now")).await.unwrap();
    assert_eq!(
        common::history(&s, "alice", lisbon).await.len(),
        1,
        "Lisbon untouched"
    );

    fake.then(facts(&["Lives in Braga"]))
        .then(Reply::Content("SUPERSEDE m1 please".into()));
    let err = s
        .remember(ME, remember("Braga!"))
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("decisions JSON"), "{err}");
    assert_eq!(
        current(&s, "alice").await,
        ["Lives in Faro", "Lives in Lisbon", "Lives in Porto"]
    );
}

/// A real id, which the model was never shown: it must not be accepted.
fn uuid_like(id: engram::model::MemoryId) -> String {
    id.to_string()
}
