//! Secrets kept out of storage (`ENGRAM_SECRETS`).
//!
//! The detector against a corpus of synthetic secrets and ordinary sentences
//! (`tests/data/secrets/corpus.jsonl`, written by `generate.py` beside it):
//! it prints recall per kind, precision and the false-positive rate, and
//! holds recall >= 95% and false positives <= 1%. Then the real binary over
//! MCP stdio: a remember with secrets stores and answers markers, `refuse`
//! stores nothing, and the LLM extractor is never sent a secret.
//!
//! Redaction happens in the service before extraction, embedding and the
//! store, so one store (SQLite) proves it for both; nothing here depends on
//! what the store does with the text.

use std::collections::BTreeMap;

use crate::common;

use common::fake_openai::FakeOpenAi;
use common::{connect_with, ok, texts, tool_err, total};
use engram::secrets::{Kind, redact};
use serde::Deserialize;
use serde_json::json;

const CORPUS: &str = include_str!("../data/secrets/corpus.jsonl");

#[derive(Deserialize)]
struct Line {
    text: String,
    kind: Option<String>,
    secret: Option<String>,
}

#[derive(Default)]
struct Tally {
    total: usize,
    caught: usize,
}

#[test]
fn secrets_corpus_recall_and_false_positives() {
    let lines: Vec<Line> = CORPUS
        .lines()
        .map(|l| serde_json::from_str(l).expect("a corpus line is JSON"))
        .collect();
    let mut per_kind: BTreeMap<String, Tally> = BTreeMap::new();
    let (mut detections, mut right_detections) = (0usize, 0usize);
    let (mut ordinary, mut flagged) = (0usize, 0usize);
    let mut report = Vec::new();
    for line in &lines {
        let redacted = redact(&line.text);
        detections += redacted.found.len();
        match (&line.kind, &line.secret) {
            (Some(kind), Some(secret)) => {
                let expected = Kind::parse(kind).unwrap_or_else(|| panic!("unknown kind {kind}"));
                let at = line
                    .text
                    .find(secret.as_str())
                    .expect("the secret is in its text");
                let secret_range = at..at + secret.len();
                let on_secret = |r: &std::ops::Range<usize>| {
                    r.start < secret_range.end && secret_range.start < r.end
                };
                right_detections += redacted
                    .found
                    .iter()
                    .filter(|f| on_secret(&f.range))
                    .count();
                let caught = !redacted.text.contains(secret.as_str())
                    && redacted
                        .found
                        .iter()
                        .any(|f| f.kind == expected && on_secret(&f.range));
                let tally = per_kind.entry(kind.clone()).or_default();
                tally.total += 1;
                tally.caught += usize::from(caught);
                if !caught {
                    report.push(format!(
                        "MISSED {kind}: {:?} -> {:?}",
                        line.text, redacted.text
                    ));
                }
            }
            _ => {
                ordinary += 1;
                if !redacted.found.is_empty() {
                    flagged += 1;
                    report.push(format!(
                        "FALSE POSITIVE: {:?} -> {:?}",
                        line.text, redacted.text
                    ));
                }
            }
        }
    }
    let secrets: usize = per_kind.values().map(|t| t.total).sum();
    let caught: usize = per_kind.values().map(|t| t.caught).sum();
    let recall = caught as f64 / secrets as f64;
    let fp_rate = flagged as f64 / ordinary as f64;
    let precision = right_detections as f64 / detections.max(1) as f64;
    println!("kind              caught / total  recall");
    for (kind, t) in &per_kind {
        println!(
            "{kind:<17} {:>6} / {:<5}  {:>5.1}%",
            t.caught,
            t.total,
            100.0 * t.caught as f64 / t.total as f64
        );
    }
    println!(
        "overall           {caught:>6} / {secrets:<5}  {:>5.1}%",
        100.0 * recall
    );
    println!(
        "precision: {right_detections} of {detections} detections on a secret ({:.1}%)",
        100.0 * precision
    );
    println!(
        "false positives: {flagged} of {ordinary} ordinary sentences ({:.2}%)",
        100.0 * fp_rate
    );
    for line in &report {
        println!("{line}");
    }
    assert!(
        secrets >= 150 && ordinary >= 400,
        "the corpus is its promised size"
    );
    assert!(recall >= 0.95, "recall {recall:.3} < 0.95");
    assert!(fp_rate <= 0.01, "false-positive rate {fp_rate:.3} > 0.01");
}

/// Made-up secrets of the right shapes (never real credentials).
const CARD: &str = "4111 1111 1111 1111";
const API_KEY: &str = "sk-proj-Zk3Qm9Vx2Lp8Rt5Wn1Hy7Bc4Df6Gj0Ks";
const PASSWORD: &str = "Tr0ub4dor&3";
const IBAN: &str = "DE89 3704 0044 0532 0130 00";

fn holds_no_secret(text: &str) {
    for secret in [CARD, "4111111111111111", API_KEY, PASSWORD, IBAN] {
        assert!(!text.contains(secret), "{secret} leaked into {text}");
    }
}

/// The default (`redact`) over MCP stdio: markers stored and recalled, the
/// result says what was replaced, the secret is nowhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_remember_over_stdio_stores_markers_instead_of_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let client = connect_with(&dir.path().join("engram.db"), &[]).await;
    let stored = ok(
        &client,
        "remember",
        json!({
            "text": format!("Pay the hotel with card {CARD} and deploy with {API_KEY}"),
            "metadata": {"note": format!("iban {IBAN}"), "topic": "travel"},
        }),
    )
    .await;
    holds_no_secret(&stored.to_string());
    assert_eq!(
        stored["redacted"],
        json!([
            {"field": "metadata", "kind": "iban", "count": 1},
            {"field": "text", "kind": "api_key", "count": 1},
            {"field": "text", "kind": "card_number", "count": 1},
        ]),
        "{stored}"
    );
    assert_eq!(
        stored["results"][0]["memory"],
        "Pay the hotel with card [REDACTED:card_number] and deploy with [REDACTED:api_key]"
    );

    let found = ok(&client, "recall", json!({"query": "hotel card"})).await;
    holds_no_secret(&found.to_string());
    assert!(
        texts(&found)[0].contains("[REDACTED:card_number]"),
        "{found}"
    );
    assert_eq!(
        found["results"][0]["metadata"]["note"],
        "iban [REDACTED:iban]"
    );
    assert_eq!(found["results"][0]["metadata"]["topic"], "travel");
    let context = ok(&client, "user_context", json!({})).await;
    holds_no_secret(&context.to_string());

    // Nothing to replace: the result has no `redacted` at all.
    let plain = ok(&client, "remember", json!({"text": "I prefer aisle seats"})).await;
    assert!(plain.get("redacted").is_none(), "{plain}");
    client.cancel().await.unwrap();
}

/// `refuse`: the remember fails naming the field and the kind, never the
/// value, and nothing is stored; `allow` stores the text as given.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refuse_stores_nothing_and_allow_stores_as_given() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("engram.db");
    let client = connect_with(&db, &[("ENGRAM_SECRETS", "refuse")]).await;
    let error = tool_err(
        &client,
        "remember",
        json!({"text": format!("my card is {CARD}")}),
    )
    .await;
    assert!(
        error.contains("`text`")
            && error.contains("card_number")
            && error.contains("ENGRAM_SECRETS"),
        "{error}"
    );
    holds_no_secret(&error);
    let error = tool_err(
        &client,
        "remember",
        json!({"messages": [
            {"role": "user", "content": "hi"},
            {"role": "user", "content": format!("password: {PASSWORD}")}
        ]}),
    )
    .await;
    assert!(
        error.contains("`messages`") && error.contains("password"),
        "{error}"
    );
    let error = tool_err(
        &client,
        "remember",
        json!({"text": "a note", "metadata": {"deploy": API_KEY}}),
    )
    .await;
    assert!(
        error.contains("`metadata`") && error.contains("api_key"),
        "{error}"
    );
    assert_eq!(total(&client, "default").await, 0, "nothing was stored");
    client.cancel().await.unwrap();

    let client = connect_with(&db, &[("ENGRAM_SECRETS", "allow")]).await;
    let stored = ok(
        &client,
        "remember",
        json!({"text": format!("my card is {CARD}")}),
    )
    .await;
    assert!(stored.get("redacted").is_none(), "{stored}");
    assert_eq!(stored["results"][0]["memory"], format!("my card is {CARD}"));
    client.cancel().await.unwrap();
}

/// With the `llm` extractor and an OpenAI embedder, nothing sent to the
/// model server holds a secret: redaction comes before both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_model_server_never_sees_a_secret() {
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
    let stored = ok(
        &client,
        "remember",
        json!({"messages": [
            {"role": "user", "content": format!("My password is {PASSWORD} and my card is {CARD}")},
            {"role": "assistant", "content": "Noted."},
            {"role": "user", "content": format!("Salary goes to {IBAN}")}
        ]}),
    )
    .await;
    holds_no_secret(&stored.to_string());
    assert_eq!(stored["usage"]["calls"], 1, "the model was asked: {stored}");
    let kinds: Vec<&str> = stored["redacted"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["password", "card_number", "iban"], "{stored}");
    let found = ok(&client, "recall", json!({"query": "salary"})).await;
    holds_no_secret(&found.to_string());
    assert!(
        texts(&found).iter().any(|t| t.contains("[REDACTED:iban]")),
        "{found}"
    );

    let requests = fake.requests();
    assert!(
        requests
            .iter()
            .any(|r| r.path.ends_with("/chat/completions")),
        "the extractor was called"
    );
    for request in requests {
        holds_no_secret(&request.body.to_string());
    }
    client.cancel().await.unwrap();
}

/// The REST door returns the same `redacted` list as JSON.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rest_result_says_what_was_redacted() {
    let server = common::http::Server::start().await;
    let stored = server
        .call(
            reqwest::Method::POST,
            "/api/v1/memory",
            None,
            Some(json!({"text": format!("card {CARD}, key {API_KEY}")})),
        )
        .await;
    assert_eq!(stored.status, 200, "{}", stored.text);
    holds_no_secret(&stored.text);
    assert_eq!(
        stored.body["redacted"],
        json!([
            {"field": "text", "kind": "api_key", "count": 1},
            {"field": "text", "kind": "card_number", "count": 1},
        ])
    );
}
