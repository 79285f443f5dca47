//! Reading a LoCoMo-format file: a JSON list of conversations, each with a
//! `sample_id`, a `conversation` (`session_N` lists of turns and their
//! `session_N_date_time`) and `qa` (questions with their evidence dia_ids and
//! category). Sessions come in numeric order (session_10 after session_9).
//!
//! A refusal names the file, the conversation and the field. What can be
//! read with one obvious repair is read and reported as a warning instead:
//! an evidence entry naming several turns ("D8:6; D9:17") is split, and
//! evidence naming no turn of its conversation is kept (it can never be
//! found, as the protocol counts it). Answers are not read: the evaluation
//! measures retrieval, and they come as strings, numbers or not at all.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

/// The conversations of one file, and what was repaired while reading it.
#[derive(Debug)]
pub struct Dataset {
    pub conversations: Vec<Conversation>,
    /// One line per repair or oddity, for the log.
    pub warnings: Vec<String>,
}

/// One conversation: its turns in session order, and its questions.
#[derive(Debug)]
pub struct Conversation {
    pub sample_id: String,
    pub turns: Vec<Turn>,
    pub questions: Vec<Question>,
}

/// One dialogue turn.
#[derive(Debug, Clone, PartialEq)]
pub struct Turn {
    pub dia_id: String,
    /// The session's date and time as the file writes it ("1:56 pm on 8 May, 2023").
    pub session_date_time: String,
    pub speaker: String,
    pub text: String,
    /// What the photo the speaker shared shows, when they shared one.
    pub blip_caption: Option<String>,
}

impl Turn {
    /// The text the evaluation stores for the turn:
    /// `[<session date_time>] <speaker>: <text>`, plus
    /// ` [shares photo: <caption>]` when the turn has a photo caption.
    pub fn memory_text(&self) -> String {
        let mut text = format!(
            "[{}] {}: {}",
            self.session_date_time, self.speaker, self.text
        );
        if let Some(caption) = &self.blip_caption {
            text.push_str(&format!(" [shares photo: {caption}]"));
        }
        text
    }
}

/// One question about a conversation.
#[derive(Debug, Clone, PartialEq)]
pub struct Question {
    pub question: String,
    /// 1 multi-hop, 2 temporal, 3 open-domain, 4 single-hop, 5 adversarial.
    pub category: u32,
    /// The dia_ids of the turns that answer it, distinct, in the file's order.
    pub evidence: Vec<String>,
}

/// The name of a LoCoMo question category.
pub fn category_name(category: u32) -> Option<&'static str> {
    Some(match category {
        1 => "multi-hop",
        2 => "temporal",
        3 => "open-domain",
        4 => "single-hop",
        5 => "adversarial",
        _ => return None,
    })
}

/// A file that cannot be read as LoCoMo, and why.
#[derive(Debug, thiserror::Error)]
#[error("{}: {message}", path.display())]
pub struct LocomoError {
    pub path: PathBuf,
    pub message: String,
}

/// Reads and checks the file at `path`.
pub fn load(path: &Path) -> Result<Dataset, LocomoError> {
    let refuse = |message: String| LocomoError {
        path: path.to_owned(),
        message,
    };
    let text =
        std::fs::read_to_string(path).map_err(|e| refuse(format!("cannot read the file: {e}")))?;
    parse(&text).map_err(refuse)
}

/// Reads LoCoMo JSON; the error says where (conversation, field) and what.
pub fn parse(text: &str) -> Result<Dataset, String> {
    let root: Value = serde_json::from_str(text).map_err(|e| {
        format!("not valid JSON ({e}); a LoCoMo file is a JSON list of conversations")
    })?;
    let Value::Array(items) = root else {
        return Err(format!(
            "expected a JSON list of conversations, found {}",
            kind(&root)
        ));
    };
    if items.is_empty() {
        return Err("the list of conversations is empty".into());
    }
    let mut warnings = Vec::new();
    let mut conversations = Vec::with_capacity(items.len());
    let mut seen: HashMap<String, usize> = HashMap::new();
    for (i, item) in items.iter().enumerate() {
        let number = i + 1;
        let conversation = read_conversation(number, item, &mut warnings)?;
        if let Some(first) = seen.insert(conversation.sample_id.clone(), number) {
            return Err(format!(
                "conversations {first} and {number} share the sample_id \"{}\"; each \
                 conversation is one user and needs its own",
                conversation.sample_id
            ));
        }
        conversations.push(conversation);
    }
    Ok(Dataset {
        conversations,
        warnings,
    })
}

fn read_conversation(
    number: usize,
    item: &Value,
    warnings: &mut Vec<String>,
) -> Result<Conversation, String> {
    let place = format!("conversation {number}");
    let object = object(item, &place)?;
    let sample_id = string(required(object, "sample_id", &place)?, &place, "sample_id")?;
    if sample_id.trim().is_empty() {
        return Err(format!("{place}: `sample_id` is empty"));
    }
    let place = format!("conversation {number} (\"{sample_id}\")");
    let dialogue = object_field(object, "conversation", &place)?;
    let turns = read_sessions(dialogue, &place, warnings)?;
    let dia_ids: HashSet<&str> = turns.iter().map(|t| t.dia_id.as_str()).collect();
    if dia_ids.len() < turns.len() {
        warnings.push(format!(
            "{place}: {} turns share a dia_id with an earlier turn; a question's evidence \
             is found in any of them",
            turns.len() - dia_ids.len()
        ));
    }

    let qa = required(object, "qa", &place)?;
    let Value::Array(qa) = qa else {
        return Err(format!(
            "{place}: `qa` must be a list of questions, found {}",
            kind(qa)
        ));
    };
    let mut questions = Vec::with_capacity(qa.len());
    let mut unknown = Vec::new();
    for (i, q) in qa.iter().enumerate() {
        let question = read_question(q, &format!("{place}, qa[{i}]"), warnings)?;
        unknown.extend(
            question
                .evidence
                .iter()
                .filter(|id| !dia_ids.contains(id.as_str()))
                .map(|id| format!("qa[{i}] {id}")),
        );
        questions.push(question);
    }
    if !unknown.is_empty() {
        warnings.push(format!(
            "{place}: evidence naming no turn of the conversation counts as never found: {}",
            unknown.join(", ")
        ));
    }
    Ok(Conversation {
        sample_id: sample_id.to_owned(),
        turns,
        questions,
    })
}

/// Every turn of every `session_N`, sessions in numeric order.
fn read_sessions(
    dialogue: &Map<String, Value>,
    place: &str,
    warnings: &mut Vec<String>,
) -> Result<Vec<Turn>, String> {
    let mut sessions: Vec<(u32, &str, &Vec<Value>)> = Vec::new();
    for (key, value) in dialogue {
        let Some(n) = key
            .strip_prefix("session_")
            .filter(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
        else {
            continue;
        };
        let number: u32 = n
            .parse()
            .map_err(|_| format!("{place}: conversation.{key}: session number out of range"))?;
        let Value::Array(turns) = value else {
            return Err(format!(
                "{place}: conversation.{key} must be a list of turns, found {}",
                kind(value)
            ));
        };
        sessions.push((number, key, turns));
    }
    if sessions.is_empty() {
        return Err(format!(
            "{place}: `conversation` holds no session (session_1, session_2, ... lists of turns)"
        ));
    }
    sessions.sort_by_key(|(number, ..)| *number);

    let mut turns = Vec::new();
    for (_, key, list) in sessions {
        let date_key = format!("{key}_date_time");
        let at = format!("{place}: conversation.{date_key}");
        let date = match dialogue.get(&date_key) {
            Some(Value::String(s)) if !s.trim().is_empty() => s.trim().to_owned(),
            Some(other) => {
                return Err(format!(
                    "{at} must be the session's date and time (e.g. \"1:56 pm on 8 May, 2023\"), \
                     found {}",
                    kind(other)
                ));
            }
            None => {
                return Err(format!(
                    "{at} is missing: every session needs its date and time"
                ));
            }
        };
        if list.is_empty() {
            warnings.push(format!("{place}: conversation.{key} has no turns"));
        }
        for (i, turn) in list.iter().enumerate() {
            turns.push(read_turn(
                turn,
                &format!("{place}: conversation.{key}[{i}]"),
                &date,
            )?);
        }
    }
    Ok(turns)
}

fn read_turn(value: &Value, place: &str, date: &str) -> Result<Turn, String> {
    let object = object(value, place)?;
    let dia_id = string(required(object, "dia_id", place)?, place, "dia_id")?.trim();
    if dia_id.is_empty() {
        return Err(format!("{place}: `dia_id` is empty"));
    }
    let speaker = string(required(object, "speaker", place)?, place, "speaker")?;
    let text = string(required(object, "text", place)?, place, "text")?;
    let blip_caption = match object.get("blip_caption") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.trim()).filter(|s| !s.is_empty()).map(str::to_owned),
        Some(other) => {
            return Err(format!(
                "{place}: `blip_caption` must be a string, found {}",
                kind(other)
            ));
        }
    };
    Ok(Turn {
        dia_id: dia_id.to_owned(),
        session_date_time: date.to_owned(),
        speaker: speaker.trim().to_owned(),
        text: text.to_owned(),
        blip_caption,
    })
}

fn read_question(
    value: &Value,
    place: &str,
    warnings: &mut Vec<String>,
) -> Result<Question, String> {
    let object = object(value, place)?;
    let question = string(required(object, "question", place)?, place, "question")?.trim();
    let category = required(object, "category", place)?;
    let category = category
        .as_u64()
        .and_then(|c| u32::try_from(c).ok())
        .ok_or_else(|| {
            format!(
                "{place}: `category` must be a whole number (1 multi-hop, 2 temporal, \
                 3 open-domain, 4 single-hop, 5 adversarial), found {}",
                kind(category)
            )
        })?;
    let listed = required(object, "evidence", place)?;
    let Value::Array(listed) = listed else {
        return Err(format!(
            "{place}: `evidence` must be a list of dia_ids (e.g. [\"D1:3\"]), found {}",
            kind(listed)
        ));
    };
    let mut evidence: Vec<String> = Vec::new();
    for (i, entry) in listed.iter().enumerate() {
        let raw = string(entry, place, &format!("evidence[{i}]"))?;
        let ids: Vec<&str> = raw
            .split(|c: char| c == ';' || c == ',' || c.is_whitespace())
            .filter(|id| !id.is_empty())
            .collect();
        if ids.len() > 1 {
            warnings.push(format!(
                "{place}: evidence[{i}] \"{raw}\" names several turns; read as {}",
                ids.join(", ")
            ));
        }
        for id in ids {
            if !evidence.iter().any(|e| e == id) {
                evidence.push(id.to_owned());
            }
        }
    }
    if !evidence.is_empty() && question.is_empty() {
        return Err(format!("{place}: `question` is empty"));
    }
    Ok(Question {
        question: question.to_owned(),
        category,
        evidence,
    })
}

/// How a JSON value reads in a message.
fn kind(value: &Value) -> String {
    match value {
        Value::Null => "null".into(),
        Value::Bool(b) => format!("{b}"),
        Value::Number(n) => format!("the number {n}"),
        Value::String(s) if s.chars().count() <= 40 => format!("the string \"{s}\""),
        Value::String(_) => "a string".into(),
        Value::Array(_) => "a list".into(),
        Value::Object(_) => "an object".into(),
    }
}

fn object<'a>(value: &'a Value, place: &str) -> Result<&'a Map<String, Value>, String> {
    value
        .as_object()
        .ok_or_else(|| format!("{place} must be an object, found {}", kind(value)))
}

fn required<'a>(
    object: &'a Map<String, Value>,
    key: &str,
    place: &str,
) -> Result<&'a Value, String> {
    object
        .get(key)
        .ok_or_else(|| format!("{place}: `{key}` is missing"))
}

fn object_field<'a>(
    object: &'a Map<String, Value>,
    key: &str,
    place: &str,
) -> Result<&'a Map<String, Value>, String> {
    let value = required(object, key, place)?;
    value
        .as_object()
        .ok_or_else(|| format!("{place}: `{key}` must be an object, found {}", kind(value)))
}

fn string<'a>(value: &'a Value, place: &str, field: &str) -> Result<&'a str, String> {
    value
        .as_str()
        .ok_or_else(|| format!("{place}: `{field}` must be a string, found {}", kind(value)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn turn(dia_id: &str, speaker: &str, text: &str) -> Value {
        json!({"speaker": speaker, "dia_id": dia_id, "text": text})
    }

    fn sample() -> Value {
        json!([{
            "sample_id": "conv-1",
            "conversation": {
                "speaker_a": "Ana",
                "speaker_b": "Ben",
                "session_10": [turn("D10:1", "Ben", "Back from Lisbon.")],
                "session_10_date_time": "9:00 am on 1 June, 2023",
                "session_2": [
                    turn("D2:1", "Ana", "I adopted a cat."),
                    {"speaker": "Ben", "dia_id": "D2:2", "text": "Look!",
                     "img_url": ["http://example.invalid/x.jpg"],
                     "blip_caption": "a photo of a grey cat"}
                ],
                "session_2_date_time": "1:56 pm on 8 May, 2023",
                "session_9": [turn("D9:1", "Ana", "Packing for Lisbon.")],
                "session_9_date_time": "8:00 pm on 30 May, 2023"
            },
            "qa": [
                {"question": "What pet did Ana adopt?", "answer": "a cat",
                 "evidence": ["D2:1"], "category": 4},
                {"question": "When did Ben go?", "answer": 2023,
                 "evidence": ["D9:1; D10:1", "D9:1"], "category": 2},
                {"question": "What did Ben's dog eat?",
                 "adversarial_answer": "kibble", "evidence": [], "category": 5},
                {"question": "Where?", "answer": "x", "evidence": ["D7:7"], "category": 1}
            ]
        }])
    }

    #[test]
    fn reads_sessions_in_numeric_order_with_dates_and_captions() {
        let data = parse(&sample().to_string()).unwrap();
        let c = &data.conversations[0];
        assert_eq!(c.sample_id, "conv-1");
        let order: Vec<&str> = c.turns.iter().map(|t| t.dia_id.as_str()).collect();
        assert_eq!(order, ["D2:1", "D2:2", "D9:1", "D10:1"]);
        assert_eq!(
            c.turns[0].memory_text(),
            "[1:56 pm on 8 May, 2023] Ana: I adopted a cat."
        );
        assert_eq!(
            c.turns[1].memory_text(),
            "[1:56 pm on 8 May, 2023] Ben: Look! [shares photo: a photo of a grey cat]"
        );
        assert_eq!(
            c.turns[3].memory_text(),
            "[9:00 am on 1 June, 2023] Ben: Back from Lisbon."
        );
    }

    #[test]
    fn evidence_is_split_deduplicated_and_checked_against_the_turns() {
        let data = parse(&sample().to_string()).unwrap();
        let q = &data.conversations[0].questions;
        assert_eq!(q.len(), 4);
        assert_eq!(q[0].evidence, ["D2:1"]);
        assert_eq!(q[1].evidence, ["D9:1", "D10:1"]);
        assert_eq!(q[1].category, 2);
        assert!(q[2].evidence.is_empty());
        let warnings = data.warnings.join("\n");
        assert!(
            warnings.contains("\"D9:1; D10:1\" names several turns"),
            "{warnings}"
        );
        assert!(warnings.contains("qa[3] D7:7"), "{warnings}");
    }

    /// `edit` breaks the sample; the message must contain every `expected` part.
    fn refused(edit: impl FnOnce(&mut Value), expected: &[&str]) {
        let mut data = sample();
        edit(&mut data);
        let err = parse(&data.to_string()).expect_err("should be refused");
        for part in expected {
            assert!(err.contains(part), "{part:?} not in: {err}");
        }
    }

    #[test]
    fn bad_input_is_refused_naming_the_conversation_and_field() {
        let err = parse("{\"sample_id\": 1").unwrap_err();
        assert!(err.contains("not valid JSON"), "{err}");
        assert!(
            parse("{}")
                .unwrap_err()
                .contains("JSON list of conversations")
        );
        assert!(parse("[]").unwrap_err().contains("empty"));
        refused(
            |d| d[0]["conversation"]["session_2"][1]["text"] = json!(null),
            &[
                "conversation 1 (\"conv-1\")",
                "session_2[1]",
                "`text`",
                "null",
            ],
        );
        refused(
            |d| {
                d[0]["conversation"]
                    .as_object_mut()
                    .unwrap()
                    .remove("session_9_date_time");
            },
            &["conv-1", "session_9_date_time is missing"],
        );
        refused(
            |d| d[0]["qa"][1]["category"] = json!("temporal"),
            &["qa[1]", "`category`", "\"temporal\""],
        );
        refused(
            |d| {
                d[0]["qa"][0].as_object_mut().unwrap().remove("evidence");
            },
            &["qa[0]", "`evidence` is missing"],
        );
        refused(
            |d| d[0]["qa"][0]["evidence"] = json!([3]),
            &["qa[0]", "evidence[0]", "the number 3"],
        );
        refused(
            |d| {
                d[0].as_object_mut().unwrap().remove("sample_id");
            },
            &["conversation 1", "`sample_id` is missing"],
        );
        refused(
            |d| {
                let copy = d[0].clone();
                d.as_array_mut().unwrap().push(copy);
            },
            &["conversations 1 and 2", "conv-1"],
        );
        refused(
            |d| d[0]["conversation"] = json!({"speaker_a": "Ana"}),
            &["conv-1", "holds no session"],
        );
    }

    #[test]
    fn answers_of_any_type_or_none_are_accepted() {
        let mut data = sample();
        data[0]["qa"][0]["answer"] = json!(42.5);
        data[0]["qa"][1]["answer"] = json!(["a", "b"]);
        assert!(parse(&data.to_string()).is_ok());
    }

    #[test]
    fn load_names_the_file() {
        let err = load(Path::new("/nonexistent/locomo.json")).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("/nonexistent/locomo.json: cannot read")
        );
    }

    #[test]
    fn category_names() {
        assert_eq!(category_name(1), Some("multi-hop"));
        assert_eq!(category_name(5), Some("adversarial"));
        assert_eq!(category_name(6), None);
    }
}
