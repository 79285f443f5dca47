//! `engram eval FILE` as an operator runs it: a tiny LoCoMo-format file is
//! remembered into a scratch store and its questions scored; the report
//! goes to stdout, per-query rows to `--json`, and the scratch store is
//! gone afterwards (a SQLite directory under TMPDIR, or, when
//! ENGRAM_TEST_DATABASE_URL names a PostgreSQL server, a scratch database).
//! A malformed file is refused naming the file, the conversation and the field.

use std::path::Path;
use std::process::Output;

use serde_json::{Value, json};

const ENGRAM: &str = env!("CARGO_BIN_EXE_engram");

/// A home for one run: HOME, XDG dirs and TMPDIR all inside a temp dir, so
/// no user store is touched and the scratch store's leftovers can be seen.
struct Sandbox {
    dir: tempfile::TempDir,
}

impl Sandbox {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        for sub in ["home", "data", "config", "cache", "tmp"] {
            std::fs::create_dir_all(dir.path().join(sub)).expect("create sandbox dir");
        }
        Self { dir }
    }

    fn path(&self, name: &str) -> std::path::PathBuf {
        self.dir.path().join(name)
    }

    /// Writes `data` as a file in the sandbox; returns its path.
    fn file(&self, name: &str, data: &str) -> String {
        let path = self.path(name);
        std::fs::write(&path, data).expect("write input file");
        path.display().to_string()
    }

    /// `engram eval ARGS` with the hash embedder and nothing of the user's.
    fn eval(&self, args: &[&str]) -> Output {
        let mut cmd = std::process::Command::new(ENGRAM);
        cmd.arg("eval")
            .args(args)
            .envs(crate::common::HERMETIC)
            .env("ENGRAM_EMBEDDER", "hash")
            .env("ENGRAM_LOG", "warn")
            .env("HOME", self.path("home"))
            .env("XDG_DATA_HOME", self.path("data"))
            .env("XDG_CONFIG_HOME", self.path("config"))
            .env("XDG_CACHE_HOME", self.path("cache"))
            .env("TMPDIR", self.path("tmp"))
            .stdin(std::process::Stdio::null());
        for key in [
            "ENGRAM_CONFIG",
            "ENGRAM_DATABASE_URL",
            "ENGRAM_CACHE_URL",
            "ENGRAM_EMBEDDING_DIMS",
        ] {
            cmd.env_remove(key);
        }
        cmd.output().expect("run engram eval")
    }

    /// Nothing left in TMPDIR, and no store in the data dir.
    fn assert_clean(&self) {
        let left: Vec<_> = std::fs::read_dir(self.path("tmp"))
            .expect("read TMPDIR")
            .map(|e| e.expect("dir entry").path())
            .collect();
        assert!(left.is_empty(), "scratch files left behind: {left:?}");
        assert!(
            !self.path("data").join("engram").exists(),
            "the configured (default) store was touched"
        );
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn turn(dia_id: &str, speaker: &str, text: &str) -> Value {
    json!({"speaker": speaker, "dia_id": dia_id, "text": text})
}

/// Two conversations. In the first, more turns than a recall returns, and
/// each answered question shares rare words with exactly one turn.
fn dataset() -> Value {
    let mut session_1 = vec![
        turn("D1:1", "Mira", "Hi Tom, long time no see!"),
        turn(
            "D1:2",
            "Tom",
            "Hey Mira! My grandmother started playing the bassoon in a quintet.",
        ),
    ];
    let fillers = [
        "I went for a walk by the river this morning.",
        "The weather has been lovely lately.",
        "Work kept me busy all week.",
        "I cooked pasta for dinner yesterday.",
        "We watched a film on Saturday night.",
        "My neighbour repainted his fence.",
        "I finally cleaned the garage.",
        "The bakery downtown reopened.",
        "I read a novel about sailors.",
        "Traffic was terrible on Monday.",
        "I bought new running shoes.",
        "Our team won the quiz at the pub.",
    ];
    for (i, filler) in fillers.iter().enumerate() {
        let speaker = if i % 2 == 0 { "Mira" } else { "Tom" };
        session_1.push(turn(&format!("D1:{}", i + 3), speaker, filler));
    }
    let session_2 = vec![
        json!({"speaker": "Mira", "dia_id": "D2:1", "text": "Look what I made!",
               "img_url": ["https://example.invalid/pot.jpg"],
               "blip_caption": "a photo of a glazed ceramic teapot"}),
        turn(
            "D2:2",
            "Tom",
            "Beautiful! I adopted a ferret named Biscuit last Tuesday.",
        ),
    ];
    json!([
        {
            "sample_id": "conv-a",
            "conversation": {
                "speaker_a": "Mira",
                "speaker_b": "Tom",
                "session_1": session_1,
                "session_1_date_time": "1:56 pm on 8 May, 2023",
                "session_2": session_2,
                "session_2_date_time": "7:10 pm on 20 May, 2023"
            },
            "qa": [
                {"question": "Which instrument does Tom's grandmother play in a quintet?",
                 "answer": "bassoon", "evidence": ["D1:2"], "category": 4},
                {"question": "When did Tom adopt the ferret Biscuit?",
                 "answer": "the Tuesday before 20 May 2023", "evidence": ["D2:2"], "category": 2},
                {"question": "What ceramic thing did Mira make?",
                 "answer": 1, "evidence": ["D2:1"], "category": 1},
                {"question": "What did Tom's grandmother paint?",
                 "adversarial_answer": "a fence", "evidence": [], "category": 5}
            ]
        },
        {
            "sample_id": "conv-b",
            "conversation": {
                "speaker_a": "Ana",
                "speaker_b": "Bo",
                "session_1": [
                    turn("D1:1", "Ana", "I signed up for a marathon in Reykjavik."),
                    turn("D1:2", "Bo", "Wow, good luck with the training!")
                ],
                "session_1_date_time": "10:00 am on 3 June, 2023"
            },
            "qa": [
                {"question": "Which marathon did Ana sign up for?", "answer": "Reykjavik",
                 "evidence": ["D1:1"], "category": 4}
            ]
        }
    ])
}

/// The JSON rows written by a run, checked for shape.
fn rows(path: &Path) -> Vec<Value> {
    let rows: Vec<Value> =
        serde_json::from_str(&std::fs::read_to_string(path).expect("--json file written"))
            .expect("--json holds a JSON array");
    for row in &rows {
        for key in [
            "sample_id",
            "question",
            "category",
            "evidence",
            "results",
            "metrics",
            "keyword_first_rank",
            "vector_first_rank",
            "latency_ms",
        ] {
            assert!(row.get(key).is_some(), "row lacks {key}: {row:#}");
        }
        let results = row["results"].as_array().expect("results is a list");
        assert!(!results.is_empty() && results.len() <= 10, "{row:#}");
        for r in results {
            assert!(r["id"].is_string(), "{r:#}");
            assert!(
                r["dia_ids"].as_array().is_some_and(|d| d.len() == 1),
                "{r:#}"
            );
            assert!(r["score"].is_number(), "{r:#}");
            assert!(r.get("vector_score").is_some() && r.get("keyword_score").is_some());
        }
        for metric in [
            "recall_at_1",
            "recall_at_5",
            "recall_at_10",
            "hit_at_10",
            "mrr_at_10",
        ] {
            let value = row["metrics"][metric].as_f64().expect(metric);
            assert!((0.0..=1.0).contains(&value), "{metric} = {value}");
        }
        assert!(row["latency_ms"].as_f64().is_some_and(|ms| ms >= 0.0));
    }
    rows
}

fn row_for<'a>(rows: &'a [Value], question_start: &str) -> &'a Value {
    rows.iter()
        .find(|r| {
            r["question"]
                .as_str()
                .is_some_and(|q| q.starts_with(question_start))
        })
        .unwrap_or_else(|| panic!("no row for {question_start:?} in {rows:#?}"))
}

/// The checks every store shares: the report's tables, the rows' shape, an
/// obvious keyword match found first.
fn check_run(out: &Output, json_path: &Path) {
    let stdout = text(&out.stdout);
    assert!(
        out.status.success(),
        "eval failed: {}\n{stdout}",
        text(&out.stderr)
    );
    for part in [
        "embedder  hash-v1 (",
        "memories  18 from 18 turns of 2 conversations",
        "queries   4 questions with evidence",
        "engram recall",
        "R@1",
        "hit@10",
        "MRR@10",
        "keyword only",
        "vector only",
        "recall latency  p50",
        "memories/s",
    ] {
        assert!(stdout.contains(part), "report lacks {part:?}:\n{stdout}");
    }
    let overall = stdout
        .lines()
        .find(|l| l.starts_with("overall"))
        .expect("overall row");
    let cells: Vec<&str> = overall.split_whitespace().collect();
    assert_eq!(cells.len(), 7, "{overall}");
    assert_eq!(cells[1], "4", "{overall}");
    for cell in &cells[2..] {
        assert!(
            cell.len() == 5 && cell.parse::<f64>().is_ok(),
            "three decimals: {overall}"
        );
    }
    for category in ["1 multi-hop", "2 temporal", "4 single-hop"] {
        assert!(
            stdout.lines().any(|l| l.starts_with(category)),
            "no {category} row:\n{stdout}"
        );
    }
    assert!(!stdout.contains("5 adversarial"), "no query has category 5");

    let rows = rows(json_path);
    assert_eq!(rows.len(), 4, "one row per question with evidence");
    let bassoon = row_for(&rows, "Which instrument");
    assert_eq!(bassoon["sample_id"], "conv-a");
    assert_eq!(bassoon["category"], 4);
    assert_eq!(bassoon["evidence"], json!(["D1:2"]));
    assert_eq!(bassoon["metrics"]["hit_at_10"], 1.0, "{bassoon:#}");
    assert_eq!(bassoon["keyword_first_rank"], 1, "{bassoon:#}");
    assert_eq!(
        bassoon["results"][0]["dia_ids"],
        json!(["D1:2"]),
        "{bassoon:#}"
    );
    let marathon = row_for(&rows, "Which marathon");
    assert_eq!(marathon["sample_id"], "conv-b");
    assert_eq!(marathon["metrics"]["hit_at_10"], 1.0, "{marathon:#}");
    // conv-b's user holds only its own two turns.
    assert!(marathon["results"].as_array().is_some_and(|r| r.len() <= 2));
}

#[test]
fn scores_a_small_file_on_sqlite_and_leaves_nothing_behind() {
    let sandbox = Sandbox::new();
    let file = sandbox.file("locomo.json", &dataset().to_string());
    let json_path = sandbox.path("rows.json");
    let out = sandbox.eval(&[&file, "--json", &json_path.display().to_string()]);
    check_run(&out, &json_path);
    assert!(text(&out.stdout).contains("store     sqlite"));
    sandbox.assert_clean();

    // --category keeps only the named categories (repeatable or a list).
    let only = sandbox.path("only.json");
    let out = sandbox.eval(&[
        &file,
        "--category",
        "4,2",
        "--category",
        "3",
        "--json",
        &only.display().to_string(),
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(stdout.contains("(category 4, 2, 3 only)"), "{stdout}");
    let categories: Vec<i64> = rows(&only)
        .iter()
        .filter_map(|r| r["category"].as_i64())
        .collect();
    assert_eq!(categories.len(), 3);
    assert!(
        categories.iter().all(|c| [2, 4].contains(c)),
        "{categories:?}"
    );
    // A category without questions is refused, naming those there are.
    let none = sandbox.eval(&[&file, "--category", "5"]);
    assert!(!none.status.success());
    assert!(
        text(&none.stderr).contains("the file has categories 1, 2, 4"),
        "{}",
        text(&none.stderr)
    );
    sandbox.assert_clean();
}

#[test]
fn a_malformed_file_is_refused_naming_the_problem() {
    let sandbox = Sandbox::new();
    let mut data = dataset();
    data[1]["qa"][0]
        .as_object_mut()
        .expect("a question")
        .remove("evidence");
    let file = sandbox.file("broken.json", &data.to_string());
    let out = sandbox.eval(&[&file]);
    assert!(!out.status.success());
    let stderr = text(&out.stderr);
    for part in [
        file.as_str(),
        "conversation 2 (\"conv-b\")",
        "qa[0]",
        "`evidence` is missing",
    ] {
        assert!(stderr.contains(part), "message lacks {part:?}: {stderr}");
    }
    assert!(out.stdout.is_empty(), "nothing on stdout");

    let mut data = dataset();
    data[0]["conversation"]["session_2"][1]["speaker"] = json!(7);
    let file = sandbox.file("speaker.json", &data.to_string());
    let stderr = text(&sandbox.eval(&[&file]).stderr);
    assert!(
        stderr.contains("session_2[1]") && stderr.contains("`speaker` must be a string"),
        "{stderr}"
    );

    let file = sandbox.file("truncated.json", "[{\"sample_id\": \"conv-a\"");
    let stderr = text(&sandbox.eval(&[&file]).stderr);
    assert!(
        stderr.contains(&file) && stderr.contains("not valid JSON"),
        "{stderr}"
    );

    let missing = sandbox.path("missing.json").display().to_string();
    let stderr = text(&sandbox.eval(&[&missing]).stderr);
    assert!(
        stderr.contains(&missing) && stderr.contains("cannot read"),
        "{stderr}"
    );
    sandbox.assert_clean();
}

/// With a PostgreSQL server (ENGRAM_TEST_DATABASE_URL): the same run in a
/// scratch database, which is dropped afterwards.
#[tokio::test]
async fn scores_on_a_scratch_postgres_database_and_drops_it() {
    use sqlx::Connection;

    let Ok(server) = std::env::var("ENGRAM_TEST_DATABASE_URL") else {
        eprintln!("note: ENGRAM_TEST_DATABASE_URL is not set; the --postgres run is skipped");
        return;
    };
    let sandbox = Sandbox::new();
    let file = sandbox.file("locomo.json", &dataset().to_string());
    let json_path = sandbox.path("rows.json");
    let args = [
        file.clone(),
        "--postgres".into(),
        server.clone(),
        "--json".into(),
        json_path.display().to_string(),
    ];
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    // The child runs to its end; nothing else waits on this test's runtime.
    let out = sandbox.eval(&args);
    check_run(&out, &json_path);
    let stdout = text(&out.stdout);
    let name = stdout
        .split_whitespace()
        .find(|w| w.starts_with("engram_eval_"))
        .unwrap_or_else(|| panic!("the report names the scratch database:\n{stdout}"));
    assert!(stdout.contains("store     postgres"), "{stdout}");

    let mut admin = sqlx::PgConnection::connect(&server)
        .await
        .expect("connect to ENGRAM_TEST_DATABASE_URL");
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM pg_database WHERE datname = $1")
        .bind(name)
        .fetch_one(&mut admin)
        .await
        .expect("list databases");
    assert_eq!(left, 0, "scratch database {name} was not dropped");
    sandbox.assert_clean();
}
