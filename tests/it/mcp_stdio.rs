//! End to end over the real protocol: each test starts the built `engram`
//! binary as a child process and drives it with rmcp's client over stdio,
//! against a fresh SQLite file.

use crate::common;

use common::{Engram, call, connect_with, ok, texts, tool_err, total};
use rmcp::model::{CallToolRequestParams, GetPromptRequestParams, ReadResourceRequestParams};
use serde_json::{Value, json};

#[tokio::test]
async fn tools_are_listed_with_schemas_and_annotations() {
    let engram = Engram::new();
    let client = engram.connect().await;
    let tools = client.list_all_tools().await.unwrap();
    let mut names: Vec<_> = tools.iter().map(|t| t.name.to_string()).collect();
    names.sort();
    assert_eq!(names, ["forget", "recall", "remember", "user_context"]);
    for tool in &tools {
        assert!(
            tool.output_schema.is_some(),
            "{} has no outputSchema",
            tool.name
        );
        let ann = tool.annotations.as_ref().expect("annotations");
        match tool.name.as_ref() {
            "recall" | "user_context" => assert_eq!(ann.read_only_hint, Some(true)),
            "forget" => assert_eq!(ann.destructive_hint, Some(true)),
            _ => assert_eq!(ann.read_only_hint, Some(false)),
        }
    }
    client.cancel().await.unwrap();
}

#[tokio::test]
async fn remember_then_recall_round_trip() {
    let engram = Engram::new();
    let client = engram.connect().await;
    let added = ok(
        &client,
        "remember",
        json!({"text": "I live in Lisbon and love espresso"}),
    )
    .await;
    assert_eq!(added["user_id"], "default");
    assert_eq!(added["results"][0]["event"], "ADD");
    let id = added["results"][0]["id"].as_str().unwrap().to_owned();
    ok(&client, "remember", json!({"text": "My dog is called Rex"})).await;

    let found = ok(&client, "recall", json!({"query": "espresso"})).await;
    let first = &found["results"][0];
    assert_eq!(first["id"], id.as_str());
    assert_eq!(first["memory"], "I live in Lisbon and love espresso");
    assert!(first["score"].as_f64().unwrap() > 0.0);
    assert!(
        first["keyword_score"].as_f64().is_some(),
        "keyword search found it: {first}"
    );
    assert!(
        first["vector_score"].as_f64().is_some(),
        "vector search found it: {first}"
    );
    assert!(first["created_at"].as_str().unwrap().starts_with("20"));

    // Scores are absolute: min_score drops what is unrelated (also when
    // sent as a string, as the Inspector CLI does).
    let cut = ok(
        &client,
        "recall",
        json!({"query": "quantum chromodynamics", "min_score": 0.2}),
    )
    .await;
    assert_eq!(cut["results"], json!([]), "{cut}");
    let kept = ok(
        &client,
        "recall",
        json!({"query": "espresso in Lisbon", "min_score": "0.2"}),
    )
    .await;
    assert_eq!(kept["results"].as_array().unwrap().len(), 1, "{kept}");
    assert_eq!(kept["results"][0]["id"], id.as_str());

    // A conversation: one memory per user/assistant message, roles in metadata.
    let conv = ok(
        &client,
        "remember",
        json!({"messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": "I'm allergic to peanuts. Please remember that."},
            {"role": "assistant", "content": "Noted: no peanuts for you."}
        ]}),
    )
    .await;
    assert_eq!(conv["results"].as_array().unwrap().len(), 2);
    let found = ok(
        &client,
        "recall",
        json!({"query": "peanuts allergy", "filters": {"role": "user"}}),
    )
    .await;
    assert_eq!(
        texts(&found),
        ["I'm allergic to peanuts. Please remember that."]
    );
    client.cancel().await.unwrap();
}

#[tokio::test]
async fn near_duplicates_are_not_stored_twice() {
    let engram = Engram::new();
    let client = engram.connect().await;
    let first = ok(
        &client,
        "remember",
        json!({"text": "I prefer window seats on long flights"}),
    )
    .await;
    let again = ok(
        &client,
        "remember",
        json!({"text": "i prefer window seats on long flights!"}),
    )
    .await;
    assert_eq!(again["results"][0]["event"], "NONE");
    assert_eq!(again["results"][0]["id"], first["results"][0]["id"]);
    assert!(again["results"][0]["similarity"].as_f64().unwrap() >= 0.9);
    assert_eq!(total(&client, "default").await, 1);

    // Concurrent identical remembers leave one row.
    let mut calls = Vec::new();
    for _ in 0..10 {
        calls.push(call(
            &client,
            "remember",
            json!({"text": "Vegetarian since 2019"}),
        ));
    }
    let results = futures::future::join_all(calls).await;
    let adds = results
        .iter()
        .filter(|r| r.structured_content.as_ref().unwrap()["results"][0]["event"] == "ADD")
        .count();
    assert_eq!(adds, 1);
    assert_eq!(total(&client, "default").await, 2);
    client.cancel().await.unwrap();
}

#[tokio::test]
async fn scopes_and_metadata_filters_narrow_recall() {
    let engram = Engram::new();
    let client = engram.connect().await;
    ok(
        &client,
        "remember",
        json!({"text": "Booked a hotel in Kyoto for April", "agent_id": "travel",
        "run_id": "trip-1", "metadata": {"topic": "travel", "priority": 2}}),
    )
    .await;
    ok(
        &client,
        "remember",
        json!({"text": "Kyoto style ramen recipe uses dashi", "agent_id": "chef",
        "metadata": {"topic": "food"}}),
    )
    .await;

    let all = ok(&client, "recall", json!({"query": "Kyoto"})).await;
    assert_eq!(all["results"].as_array().unwrap().len(), 2);
    let travel = ok(
        &client,
        "recall",
        json!({"query": "Kyoto", "agent_id": "travel"}),
    )
    .await;
    assert_eq!(texts(&travel), ["Booked a hotel in Kyoto for April"]);
    let other_run = ok(
        &client,
        "recall",
        json!({"query": "Kyoto", "agent_id": "travel", "run_id": "trip-2"}),
    )
    .await;
    assert!(texts(&other_run).is_empty());
    let food = ok(
        &client,
        "recall",
        json!({"query": "Kyoto", "filters": {"topic": "food"}}),
    )
    .await;
    assert_eq!(texts(&food), ["Kyoto style ramen recipe uses dashi"]);
    let prio = ok(
        &client,
        "recall",
        json!({"query": "Kyoto", "filters": {"topic": "travel", "priority": 2}}),
    )
    .await;
    assert_eq!(texts(&prio), ["Booked a hotel in Kyoto for April"]);
    let limited = ok(&client, "recall", json!({"query": "Kyoto", "limit": 1})).await;
    assert_eq!(limited["results"].as_array().unwrap().len(), 1);
    // String forms, as the Inspector CLI sends them, are accepted too.
    let limited = ok(
        &client,
        "recall",
        json!({"query": "Kyoto", "limit": "1", "filters": "{\"topic\": \"food\"}"}),
    )
    .await;
    assert_eq!(texts(&limited), ["Kyoto style ramen recipe uses dashi"]);
    let ctx = ok(&client, "user_context", json!({"agent_id": "chef"})).await;
    assert_eq!(ctx["total"], 1);
    client.cancel().await.unwrap();
}

#[tokio::test]
async fn users_never_see_each_other() {
    let engram = Engram::new();
    let client = engram.connect().await;
    let a = ok(
        &client,
        "remember",
        json!({"user_id": "alice", "text": "Alice's locker code is 4821"}),
    )
    .await;
    let a_id = a["results"][0]["id"].as_str().unwrap().to_owned();
    ok(
        &client,
        "remember",
        json!({"user_id": "bob", "text": "Bob collects vinyl records"}),
    )
    .await;

    let bob = ok(
        &client,
        "recall",
        json!({"user_id": "bob", "query": "Alice locker code 4821"}),
    )
    .await;
    assert_eq!(texts(&bob), ["Bob collects vinyl records"]);
    let ctx = ok(&client, "user_context", json!({"user_id": "bob"})).await;
    assert!(!ctx["context"].as_str().unwrap().contains("4821"));
    // Bob cannot forget Alice's memory by id.
    let err = tool_err(
        &client,
        "forget",
        json!({"user_id": "bob", "memory_id": a_id}),
    )
    .await;
    assert!(err.contains("no memory"), "{err}");
    assert_eq!(total(&client, "alice").await, 1);
    // The default user sees neither.
    assert!(texts(&ok(&client, "recall", json!({"query": "vinyl locker"})).await).is_empty());
    client.cancel().await.unwrap();
}

#[tokio::test]
async fn forget_one_and_forget_all() {
    let engram = Engram::new();
    let client = engram.connect().await;
    let mut ids = Vec::new();
    for text in ["Likes jazz", "Runs marathons", "Speaks Portuguese"] {
        let r = ok(
            &client,
            "remember",
            json!({"user_id": "carol", "text": text}),
        )
        .await;
        ids.push(r["results"][0]["id"].as_str().unwrap().to_owned());
    }
    ok(
        &client,
        "remember",
        json!({"user_id": "dave", "text": "Likes jazz too"}),
    )
    .await;

    let gone = ok(
        &client,
        "forget",
        json!({"user_id": "carol", "memory_id": ids[0]}),
    )
    .await;
    assert_eq!(gone["deleted"], 1);
    assert!(
        !texts(
            &ok(
                &client,
                "recall",
                json!({"user_id": "carol", "query": "jazz"})
            )
            .await
        )
        .contains(&"Likes jazz".to_owned())
    );
    let again = tool_err(
        &client,
        "forget",
        json!({"user_id": "carol", "memory_id": ids[0]}),
    )
    .await;
    assert!(again.contains("no memory"), "{again}");

    let all = ok(&client, "forget", json!({"user_id": "carol", "all": true})).await;
    assert_eq!(all["deleted"], 2);
    assert_eq!(total(&client, "carol").await, 0);
    assert!(
        texts(
            &ok(
                &client,
                "recall",
                json!({"user_id": "carol", "query": "marathons Portuguese"})
            )
            .await
        )
        .is_empty()
    );
    assert_eq!(total(&client, "dave").await, 1, "other users untouched");
    client.cancel().await.unwrap();
}

/// `forget` with `all: true` and a narrowing deletes the memories it
/// selects (by agent, run, metadata, date) and reports how many; narrowing
/// without `all: true` is refused, naming the argument, and deletes nothing.
#[tokio::test]
async fn forget_by_selection_deletes_what_it_selects() {
    let engram = Engram::new();
    let client = engram.connect().await;
    for (text, agent, run, topic) in [
        ("Flies to Lisbon in May", "planner", "trip", "travel"),
        ("Books trains to Porto", "planner", "trip", "travel"),
        ("Likes green curry", "planner", "dinner", "food"),
        ("Swims before work", "coach", "week-1", "sport"),
        ("Runs on Sundays", "coach", "week-2", "sport"),
    ] {
        ok(
            &client,
            "remember",
            json!({"user_id": "erin", "text": text, "agent_id": agent, "run_id": run,
                   "metadata": {"topic": topic, "priority": 2}, "infer": false}),
        )
        .await;
    }
    ok(
        &client,
        "remember",
        json!({"user_id": "frank", "text": "Flies to Oslo", "agent_id": "planner",
               "metadata": {"topic": "travel"}, "infer": false}),
    )
    .await;

    // Refused without `all: true`, naming the argument; nothing is deleted.
    let refused = tool_err(
        &client,
        "forget",
        json!({"user_id": "erin", "filters": {"topic": "travel"}}),
    )
    .await;
    assert!(
        refused.contains("filters") && refused.contains("all: true"),
        "{refused}"
    );
    let refused = tool_err(
        &client,
        "forget",
        json!({"user_id": "erin", "agent_id": "coach"}),
    )
    .await;
    assert!(
        refused.contains("agent_id") && refused.contains("all: true"),
        "{refused}"
    );
    assert_eq!(total(&client, "erin").await, 5);

    let travel = ok(
        &client,
        "forget",
        json!({"user_id": "erin", "all": true, "filters": {"topic": "travel", "priority": 2.0}}),
    )
    .await;
    assert_eq!(travel["deleted"], 2, "{travel}");
    assert_eq!(travel["user_id"], "erin");
    assert!(travel.get("keys_deleted").is_none(), "{travel}");
    let left = texts(
        &ok(
            &client,
            "recall",
            json!({"user_id": "erin", "query": "Lisbon Porto trains flights"}),
        )
        .await,
    );
    assert!(
        !left
            .iter()
            .any(|t| t.contains("Lisbon") || t.contains("Porto")),
        "{left:?}"
    );

    let run = ok(
        &client,
        "forget",
        json!({"user_id": "erin", "all": true, "agent_id": "coach", "run_id": "week-1"}),
    )
    .await;
    assert_eq!(run["deleted"], 1);
    let old = ok(
        &client,
        "forget",
        json!({"user_id": "erin", "all": true, "before": "2000-01-01"}),
    )
    .await;
    assert_eq!(old["deleted"], 0, "nothing is that old");
    let agent = ok(
        &client,
        "forget",
        json!({"user_id": "erin", "all": true, "agent_id": "planner", "before": "2999-01-01T00:00:00Z"}),
    )
    .await;
    assert_eq!(agent["deleted"], 1);
    let context = ok(&client, "user_context", json!({"user_id": "erin"})).await;
    assert_eq!(context["total"], 1);
    assert_eq!(context["memories"][0]["memory"], "Runs on Sundays");
    assert_eq!(total(&client, "frank").await, 1, "other users untouched");
    client.cancel().await.unwrap();
}

#[tokio::test]
async fn memories_survive_a_restart() {
    let engram = Engram::new();
    let client = engram.connect().await;
    ok(
        &client,
        "remember",
        json!({"text": "Anniversary is on June 3rd"}),
    )
    .await;
    client.cancel().await.unwrap();

    let client = engram.connect().await;
    let found = ok(&client, "recall", json!({"query": "anniversary"})).await;
    assert_eq!(texts(&found), ["Anniversary is on June 3rd"]);
    client.cancel().await.unwrap();
}

/// Clients that pass every argument as text (the Inspector's CLI) can send
/// the conversation as a JSON string; dates are kept in a normal form.
#[tokio::test]
async fn messages_may_come_as_a_json_string_with_dates() {
    let engram = Engram::new();
    let client = engram.connect().await;
    let conversation = json!([
        {"role": "user", "content": "I fly to Oslo tomorrow", "date": "2026-11-20T09:30:00+01:00"},
        {"role": "assistant", "content": "Safe travels"}
    ]);
    let stored = ok(
        &client,
        "remember",
        json!({"messages": conversation.to_string()}),
    )
    .await;
    assert_eq!(stored["results"].as_array().unwrap().len(), 2, "{stored}");
    let found = ok(&client, "recall", json!({"query": "Oslo"})).await;
    assert_eq!(texts(&found)[0], "I fly to Oslo tomorrow");
    client.cancel().await.unwrap();
}

#[tokio::test]
async fn bad_input_gets_clear_tool_errors_and_writes_nothing() {
    let engram = Engram::new();
    let client = connect_with(&engram.db, &[("ENGRAM_MAX_TEXT_BYTES", "1024")]).await;
    ok(&client, "remember", json!({"text": "baseline memory"})).await;

    let cases: Vec<(&'static str, Value, &str)> = vec![
        ("remember", json!({"text": "   "}), "must not be empty"),
        ("remember", json!({}), "give `text`"),
        (
            "remember",
            json!({"text": "x".repeat(2000)}),
            "at most 1024",
        ),
        (
            "remember",
            json!({"text": "a", "messages": [{"role": "user", "content": "b"}]}),
            "not both",
        ),
        ("remember", json!({"messages": []}), "at least one message"),
        (
            "remember",
            json!({"messages": [{"role": "user", "content": "  "}]}),
            "empty",
        ),
        (
            "remember",
            json!({"messages": [{"role": "wizard", "content": "hi"}]}),
            "role 'wizard'",
        ),
        (
            "remember",
            json!({"messages": "[{\"role\": \"user\""}),
            "expected a list of messages",
        ),
        (
            "remember",
            json!({"messages": [{"role": "user", "content": "hi", "date": "yesterday"}]}),
            "date 'yesterday'",
        ),
        ("remember", json!({"text": "hi", "user_id": ""}), "user_id"),
        ("recall", json!({"query": ""}), "must not be empty"),
        ("recall", json!({"query": "x".repeat(2000)}), "at most 1024"),
        ("recall", json!({"query": "hi", "limit": 0}), "1..=100"),
        ("recall", json!({"query": "hi", "limit": 101}), "1..=100"),
        (
            "recall",
            json!({"query": "hi", "min_score": 2}),
            "accepted 0..=1",
        ),
        (
            "recall",
            json!({"query": "hi", "min_score": "high"}),
            "expected a number",
        ),
        (
            "recall",
            json!({"query": "hi", "filters": {"topic": {"$in": ["a"]}}}),
            "string, number or boolean",
        ),
        (
            "recall",
            json!({"query": "hi", "filters": {"tags": ["a"]}}),
            "string, number or boolean",
        ),
        ("user_context", json!({"limit": -5}), "1..=100"),
        (
            "forget",
            json!({"memory_id": "not-a-uuid"}),
            "expected a UUID",
        ),
        ("forget", json!({}), "say what to forget"),
        ("forget", json!({"all": true}), "user_id"),
        (
            "forget",
            json!({"all": true, "filters": {"topic": "travel"}}),
            "user_id",
        ),
        (
            "forget",
            json!({"user_id": "x", "run_id": "r1"}),
            "add `all: true`",
        ),
        (
            "forget",
            json!({"memory_id": "0193a5c4-7b1e-7cc2-9a41-2f6f0d6e8b10", "agent_id": "a"}),
            "cannot narrow a forget of one `memory_id`",
        ),
        (
            "forget",
            json!({"user_id": "x", "all": true, "filters": {}}),
            "is empty",
        ),
        (
            "forget",
            json!({"user_id": "x", "all": true, "filters": {"topic": ["a"]}}),
            "string, number or boolean",
        ),
        (
            "forget",
            json!({"user_id": "x", "all": true, "before": "last week"}),
            "RFC 3339",
        ),
        (
            "forget",
            json!({"memory_id": "0193a5c4-7b1e-7cc2-9a41-2f6f0d6e8b10", "all": true}),
            "not both",
        ),
        (
            "forget",
            json!({"memory_id": "0193a5c4-7b1e-7cc2-9a41-2f6f0d6e8b10"}),
            "no memory",
        ),
    ];
    for (tool, args, expected) in cases {
        let err = tool_err(&client, tool, args.clone()).await;
        assert!(
            err.contains(expected),
            "{tool} {args}: error {err:?} should mention {expected:?}"
        );
    }
    // Wrong types and unknown arguments are refused, naming the problem.
    for (args, expected) in [
        (json!({"query": "hi", "limit": "ten"}), "invalid type"),
        (json!({"query": "hi", "usr_id": "x"}), "usr_id"),
    ] {
        let refusal = match client
            .call_tool(
                CallToolRequestParams::new("recall")
                    .with_arguments(args.as_object().cloned().unwrap()),
            )
            .await
        {
            Err(e) => e.to_string(),
            Ok(r) => {
                assert_eq!(r.is_error, Some(true), "{args} should be refused: {r:?}");
                format!("{:?}", r.content)
            }
        };
        assert!(refusal.contains(expected), "{args}: {refusal}");
    }
    // Still serving, and nothing was written by the failures.
    assert_eq!(total(&client, "default").await, 1);
    assert_eq!(
        texts(&ok(&client, "recall", json!({"query": "baseline"})).await),
        ["baseline memory"]
    );
    client.cancel().await.unwrap();
}

#[tokio::test]
async fn context_resource_and_prompt_carry_the_profile() {
    let engram = Engram::new();
    let client = engram.connect().await;
    ok(
        &client,
        "remember",
        json!({"user_id": "erin smith", "text": "Prefers aisle seats"}),
    )
    .await;
    ok(
        &client,
        "remember",
        json!({"user_id": "erin smith", "text": "Works in Berlin"}),
    )
    .await;

    let ctx = ok(&client, "user_context", json!({"user_id": "erin smith"})).await;
    let text = ctx["context"].as_str().unwrap();
    assert!(
        text.contains("Prefers aisle seats") && text.contains("Works in Berlin"),
        "{text}"
    );
    assert_eq!(
        ctx["memories"][0]["memory"], "Works in Berlin",
        "most recent first"
    );
    // With a focus, the most relevant memory leads even though it is older.
    let focused = ok(
        &client,
        "user_context",
        json!({"user_id": "erin smith", "query": "aisle or window seat?"}),
    )
    .await;
    assert_eq!(focused["memories"][0]["memory"], "Prefers aisle seats");
    assert_eq!(focused["memories"].as_array().unwrap().len(), 2);
    let text = focused["context"].as_str().unwrap();
    assert!(text.contains("most relevant to"), "{text}");

    let templates = client.list_resource_templates(None).await.unwrap();
    assert_eq!(
        templates.resource_templates[0].uri_template,
        "engram://users/{user_id}/context"
    );
    let read = client
        .read_resource(ReadResourceRequestParams::new(
            "engram://users/erin%20smith/context",
        ))
        .await
        .unwrap();
    let body = serde_json::to_value(&read.contents[0]).unwrap();
    assert!(
        body["text"]
            .as_str()
            .unwrap()
            .contains("Prefers aisle seats"),
        "{body}"
    );
    assert!(
        client
            .read_resource(ReadResourceRequestParams::new("engram://nothing"))
            .await
            .is_err()
    );

    let mut args = serde_json::Map::new();
    args.insert("user_id".into(), json!("erin smith"));
    args.insert("task".into(), json!("Book seats for a flight"));
    let prompt = client
        .get_prompt(GetPromptRequestParams::new("with_memory").with_arguments(args))
        .await
        .unwrap();
    let message = serde_json::to_value(&prompt.messages[0]).unwrap();
    let text = message["content"]["text"].as_str().unwrap();
    assert!(text.contains("long-term memory"), "{text}");
    assert!(text.contains("Task: Book seats for a flight"), "{text}");
    let aisle = text
        .find("Prefers aisle seats")
        .expect("aisle memory listed");
    let berlin = text.find("Works in Berlin").expect("Berlin memory listed");
    assert!(
        aisle < berlin,
        "the memory relevant to the task comes first: {text}"
    );
    client.cancel().await.unwrap();
}

#[tokio::test]
async fn two_servers_on_one_database_stay_coherent() {
    // As when Claude Desktop and Cursor each start `engram serve` on the default file.
    let engram = Engram::new();
    let a = engram.connect().await;
    let b = engram.connect().await;
    // Warm b's in-memory vectors before a writes.
    assert!(texts(&ok(&b, "recall", json!({"query": "sailing"})).await).is_empty());
    let added = ok(&a, "remember", json!({"text": "Goes sailing every summer"})).await;
    let found = ok(&b, "recall", json!({"query": "sailing"})).await;
    assert_eq!(texts(&found), ["Goes sailing every summer"]);
    // Dedup holds across processes.
    let again = ok(&b, "remember", json!({"text": "goes sailing every summer"})).await;
    assert_eq!(again["results"][0]["event"], "NONE");
    assert_eq!(again["results"][0]["id"], added["results"][0]["id"]);
    // A forget through one is seen by the other.
    let id = added["results"][0]["id"].as_str().unwrap();
    ok(&b, "forget", json!({"memory_id": id})).await;
    assert!(texts(&ok(&a, "recall", json!({"query": "sailing"})).await).is_empty());
    a.cancel().await.unwrap();
    b.cancel().await.unwrap();
}

#[tokio::test]
async fn a_changed_number_or_negation_is_never_swallowed_as_a_duplicate() {
    let engram = Engram::new();
    let client = engram.connect().await;
    for (first, second) in [
        ("I am allergic to peanuts", "I am not allergic to peanuts"),
        (
            "My flight to Tokyo is on March 3",
            "My flight to Tokyo is on March 5",
        ),
    ] {
        let a = ok(&client, "remember", json!({"text": first})).await;
        let b = ok(&client, "remember", json!({"text": second})).await;
        assert_eq!(a["results"][0]["event"], "ADD");
        assert_eq!(
            b["results"][0]["event"], "ADD",
            "{second} was swallowed: {b}"
        );
        assert_ne!(a["results"][0]["id"], b["results"][0]["id"]);
    }
    assert_eq!(total(&client, "default").await, 4);
    client.cancel().await.unwrap();
}
