//! `engram import` and `engram export --all` through the real binary, on
//! both stores: every source format (fixtures in `tests/data/import/`,
//! written to each source's real shape) imports once and only once, with
//! its ids, times, metadata and history kept where the source has them; an
//! export from SQLite imported into PostgreSQL exports the same again (and
//! back, as JSONL); a malformed line is named and what came before it is
//! kept; an unknown format writes nothing. The backup and restore recipes
//! of `docs/migration.md` are in [`crate::backup`], which shares these helpers.

use crate::common;

use common::postgres::TestDatabase;
use serde_json::{Value, json};

/// The audit key of every command (PostgreSQL needs one shared).
const AUDIT_KEY: &str = "0123456789abcdef0123456789abcdef";

/// A fixture's path.
pub fn fixture(name: &str) -> String {
    format!("{}/tests/data/import/{name}", env!("CARGO_MANIFEST_DIR"))
}

/// A store the commands run on.
pub struct Db {
    pub url: String,
    /// PostgreSQL's owner role, when engram serves as a role that owns
    /// nothing (the two-role setup, where row-level security binds).
    owner: Option<String>,
    _dir: Option<tempfile::TempDir>,
}

impl Db {
    /// A new SQLite file.
    pub fn sqlite() -> Self {
        let dir = tempfile::tempdir().unwrap();
        Self {
            url: format!("sqlite://{}/engram.db", dir.path().display()),
            owner: None,
            _dir: Some(dir),
        }
    }

    /// The SQLite file at `path`.
    pub fn sqlite_at(path: &std::path::Path) -> Self {
        Self {
            url: format!("sqlite://{}", path.display()),
            owner: None,
            _dir: None,
        }
    }

    /// `db` as its superuser.
    pub fn postgres(db: &TestDatabase) -> Self {
        Self {
            url: db.url.clone(),
            owner: None,
            _dir: None,
        }
    }

    /// `db` as the role that owns nothing, migrated by its owner.
    pub fn postgres_two_roles(db: &TestDatabase) -> Self {
        Self {
            url: db.app_url.clone(),
            owner: Some(db.owner_url.clone()),
            _dir: None,
        }
    }

    pub fn env(&self) -> Vec<(&str, &str)> {
        let mut env = vec![("ENGRAM_AUDIT_KEY", AUDIT_KEY)];
        if let Some(owner) = &self.owner {
            env.push(("ENGRAM_DATABASE_OWNER_URL", owner.as_str()));
        }
        env
    }
}

/// `engram ARGS` on `db` (plus `env`), off the async workers.
pub async fn engram(args: &[&str], db: &Db, env: &[(&str, &str)]) -> std::process::Output {
    let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
    let mut vars = vec![
        ("ENGRAM_DATABASE_URL".to_owned(), db.url.clone()),
        ("ENGRAM_DEFAULT_USER".to_owned(), "default".to_owned()),
    ];
    vars.extend(
        db.env()
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
    );
    vars.extend(env.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())));
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let vars: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        common::run_engram(&args, &vars)
    })
    .await
    .unwrap()
}

pub fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[track_caller]
pub fn succeeded(out: &std::process::Output) {
    assert!(out.status.success(), "{}", stderr(out));
}

/// Imports `file` (with `args`), which must succeed with stdout empty;
/// returns stderr.
pub async fn import(db: &Db, file: &str, args: &[&str]) -> String {
    let mut all = vec!["import", file];
    all.extend(args);
    let out = engram(&all, db, &[]).await;
    succeeded(&out);
    assert!(
        out.stdout.is_empty(),
        "stdout stays clean: {}",
        stdout(&out)
    );
    stderr(&out)
}

/// Every user's memories, as `engram export --all` writes them.
pub async fn export_all(db: &Db) -> Vec<Value> {
    let out = engram(&["export", "--all"], db, &[]).await;
    succeeded(&out);
    stdout(&out)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

/// One user's memories, from `engram export --user` (the JSON document).
async fn export_user(db: &Db, user: &str) -> Value {
    let out = engram(&["export", "--user", user], db, &[]).await;
    succeeded(&out);
    serde_json::from_str(&stdout(&out)).expect("an export document")
}

/// The memories of `user` among `lines`, by text.
fn of_user<'a>(lines: &'a [Value], user: &str) -> Vec<&'a Value> {
    let mut mine: Vec<&Value> = lines.iter().filter(|m| m["user_id"] == user).collect();
    mine.sort_by_key(|m| m["memory"].as_str().unwrap_or_default().to_owned());
    mine
}

fn texts(memories: &[&Value]) -> Vec<String> {
    memories
        .iter()
        .map(|m| m["memory"].as_str().unwrap_or_default().to_owned())
        .collect()
}

/// A time field, parsed.
fn at(value: &Value) -> chrono::DateTime<chrono::Utc> {
    value
        .as_str()
        .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
        .unwrap_or_else(|| panic!("not a time: {value}"))
        .to_utc()
}

/// `expected` (RFC 3339, any offset) within the millisecond SQLite keeps.
#[track_caller]
fn same_instant(got: &Value, expected: &str) {
    let expected = chrono::DateTime::parse_from_rfc3339(expected)
        .unwrap()
        .to_utc();
    let diff = (at(got) - expected)
        .num_microseconds()
        .unwrap_or(i64::MAX)
        .abs();
    assert!(diff < 1000, "{got} vs {expected}");
}

/// The summary line's counts: (added, already there).
#[track_caller]
fn counted(stderr: &str, added: u64, present: u64) {
    let want = format!("{added} added, {present} already there");
    assert!(stderr.contains(&want), "want {want:?} in: {stderr}");
}

async fn every_format_imports_once_and_keeps_what_it_can(db: &Db) {
    let cases: [(&str, &[&str], u64); 7] = [
        ("engram-export.json", &[], 3),
        ("mem0-get-all.json", &[], 3),
        ("mem0-pgvector.csv", &[], 3),
        // The same rows as the CSV: nothing new.
        ("mem0-pgvector.jsonl", &[], 0),
        ("openmemory-export.zip", &[], 3),
        // The archive's memories, unpacked (they name no user).
        ("openmemory/memories.jsonl", &["--user", "carol"], 0),
        ("server-memory.jsonl", &["--user", "dana"], 4),
    ];
    for (file, args, added) in cases {
        let first = import(db, &fixture(file), args).await;
        counted(&first, added, 3 - added.min(3));
        // Twice: nothing more.
        let second = import(db, &fixture(file), args).await;
        let present = if file == "server-memory.jsonl" { 4 } else { 3 };
        counted(&second, 0, present);
    }
    let lines = export_all(db).await;
    assert_eq!(lines.len(), 3 + 3 + 3 + 3 + 4, "{lines:#?}");

    // engram's own export comes back as it was, history and closed memory included.
    let source: Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("engram-export.json")).unwrap())
            .unwrap();
    let ada = export_user(db, "ada").await;
    assert_eq!(ada["memories"], source["memories"]);
    assert_eq!(
        ada["pending"],
        json!([]),
        "deferred remembers are not imported"
    );

    // mem0: ids, scope, times (offsets resolved) and every field but the hash.
    let alice = of_user(&lines, "alice");
    let hike = alice[1];
    assert_eq!(hike["id"], "8f14e45f-ceea-4e67-9a3b-2f1c6b1a0001");
    assert_eq!(
        hike["metadata"],
        json!({"source": "chat", "trip_count": 3, "role": "user"})
    );
    same_instant(&hike["created_at"], "2025-09-14T08:12:44.512301-07:00");
    same_instant(&hike["updated_at"], "2025-10-01T11:00:00-07:00");
    let peanuts = alice[0];
    assert_eq!(peanuts["agent_id"], "health-assistant");
    assert_eq!(peanuts["metadata"], json!({"actor_id": "dr-lee"}));
    assert_eq!(peanuts["updated_at"], peanuts["created_at"]);
    assert_eq!(alice[2]["run_id"], "onboarding-2025-09");
    assert!(
        !lines.iter().any(|m| m.to_string().contains("3b1f0e2c")),
        "no mem0 hash"
    );

    // mem0's table: the payload's fields, never its vector or derived text.
    let bob = of_user(&lines, "bob");
    assert_eq!(
        texts(&bob),
        [
            "Drives a blue 2019 Subaru, \"Bluey\"",
            "Has two cats named Miso and Tofu",
            "Speaks Portuguese,\nand some Italian",
        ]
    );
    assert_eq!(bob[0]["agent_id"], "car-helper");
    assert_eq!(bob[0]["metadata"], json!({}));
    assert_eq!(bob[1]["metadata"], json!({"pets": 2, "role": "user"}));
    assert_eq!(bob[2]["metadata"], json!({"languages": ["pt", "it"]}));
    same_instant(&bob[0]["updated_at"], "2025-08-03T09:30:00-07:00");

    // OpenMemory: states, categories by name, the app; deleted ones stay out.
    let carol = of_user(&lines, "carol");
    assert_eq!(
        texts(&carol),
        [
            "Is migrating the billing service to Rust",
            "Uses Neovim with the Lazy plugin manager",
            "Works from the Berlin office on Tuesdays",
        ]
    );
    assert_eq!(carol[0]["metadata"]["openmemory_state"], "paused");
    assert_eq!(carol[0]["valid_to"], Value::Null);
    assert_eq!(carol[1]["categories"], json!(["preferences"]));
    assert_eq!(carol[1]["metadata"]["app"], "cursor");
    same_instant(&carol[2]["valid_to"], "2025-06-01T08:00:00+00:00");
    let events: Vec<&Value> = carol[2]["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| &h["event"])
        .collect();
    assert_eq!(events, [&json!("ADD"), &json!("SUPERSEDE")]);

    // server-memory: observations and relations, naming their entities.
    let dana = of_user(&lines, "dana");
    assert_eq!(
        texts(&dana),
        [
            "Crumb_and_Co: Opened in 2019",
            "Dana_Whitfield owns Crumb_and_Co",
            "Dana_Whitfield: Runs a bakery in Leeds",
            "Dana_Whitfield: Speaks fluent Japanese",
        ]
    );
    assert_eq!(
        dana[1]["metadata"],
        json!({"relation": "owns", "from": "Dana_Whitfield", "to": "Crumb_and_Co", "source": "server-memory"})
    );
    assert_eq!(dana[2]["metadata"]["entity_type"], "person");

    // A server on the store finds them: re-embedded, and in the keyword index.
    let client = common::connect_to(&db.url, &db.env()).await;
    for (user, query, text) in [
        (
            "alice",
            "hiking in the Dolomites",
            "Likes to hike in the Dolomites every September",
        ),
        (
            "dana",
            "Who owns Crumb_and_Co?",
            "Dana_Whitfield owns Crumb_and_Co",
        ),
        (
            "carol",
            "which editor",
            "Uses Neovim with the Lazy plugin manager",
        ),
    ] {
        common::assert_best_recall(&client, user, query, text).await;
    }
    let archived = common::ok(
        &client,
        "recall",
        json!({"query": "Berlin office Tuesdays", "user_id": "carol"}),
    )
    .await;
    assert!(
        !common::texts(&archived)
            .iter()
            .any(|t| t.contains("Berlin")),
        "an archived memory is history, never recalled: {archived}"
    );
    client.cancel().await.ok();

    // Each chunk left an audit row: the operator, on the command line.
    let out = engram(&["audit", "--json", "--op", "import"], db, &[]).await;
    succeeded(&out);
    let rows: Vec<Value> = stdout(&out)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 14, "one per chunk (each file twice): {rows:#?}");
    assert!(
        rows.iter()
            .all(|r| r["transport"] == "cli" && r["principal"] == "operator")
    );
    let written: u64 = rows
        .iter()
        .map(|r| r["memory_count"].as_u64().unwrap())
        .sum();
    assert_eq!(written, 16, "the rows count what was added: {rows:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_every_format_imports_once_and_keeps_what_it_can() {
    every_format_imports_once_and_keeps_what_it_can(&Db::sqlite()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_every_format_imports_once_and_keeps_what_it_can() {
    let db = TestDatabase::create().await;
    every_format_imports_once_and_keeps_what_it_can(&Db::postgres_two_roles(&db)).await;
}

/// `export` with its read time blanked and its memories in id order (the
/// stores order ties in creation time differently).
fn comparable(mut export: Value) -> Value {
    export["exported_at"] = json!("<exported_at>");
    if let Some(memories) = export["memories"].as_array_mut() {
        memories.sort_by_key(|m| m["id"].as_str().unwrap_or_default().to_owned());
    }
    export
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_export_from_sqlite_imports_into_postgres_and_exports_the_same() {
    let dir = tempfile::tempdir().unwrap();
    let sqlite = Db::sqlite();
    // Memories remembered here, and some with a history of their own.
    let client = common::connect_to(&sqlite.url, &sqlite.env()).await;
    for (text, metadata) in [
        ("Ada keeps bees on her roof", json!({"topic": "hobby"})),
        ("Ada's sister is called Ines", json!({})),
    ] {
        let args = json!({"text": text, "user_id": "ada", "infer": false, "metadata": metadata});
        common::ok(&client, "remember", args).await;
    }
    client.cancel().await.ok();
    import(&sqlite, &fixture("engram-export.json"), &[]).await;
    import(&sqlite, &fixture("mem0-get-all.json"), &[]).await;

    let exported = dir.path().join("ada.json");
    let out = engram(
        &[
            "export",
            "--user",
            "ada",
            "--out",
            exported.to_str().unwrap(),
        ],
        &sqlite,
        &[],
    )
    .await;
    succeeded(&out);
    let from_sqlite: Value =
        serde_json::from_str(&std::fs::read_to_string(&exported).unwrap()).unwrap();
    assert_eq!(from_sqlite["memories"].as_array().map(Vec::len), Some(5));

    let postgres = TestDatabase::create().await;
    let db = Db::postgres_two_roles(&postgres);
    let first = import(&db, exported.to_str().unwrap(), &[]).await;
    counted(&first, 5, 0);
    let from_postgres = export_user(&db, "ada").await;
    assert_eq!(comparable(from_postgres), comparable(from_sqlite));

    // And back, every user at once, as JSONL.
    let lines = dir.path().join("all.jsonl");
    let out = engram(
        &["export", "--all", "--out", lines.to_str().unwrap()],
        &db,
        &[],
    )
    .await;
    succeeded(&out);
    assert!(stderr(&out).contains("of 1 user(s)"), "{}", stderr(&out));
    let again = Db::sqlite();
    counted(&import(&again, lines.to_str().unwrap(), &[]).await, 5, 0);
    let mut before = export_all(&sqlite).await;
    let mut after = export_all(&again).await;
    before.retain(|m| m["user_id"] == "ada");
    for side in [&mut before, &mut after] {
        side.sort_by_key(|m| m["id"].as_str().unwrap_or_default().to_owned());
    }
    assert_eq!(after, before);
}

/// A knowledge graph whose third line is cut short.
const BROKEN: &str = r#"{"type":"entity","name":"Eve","entityType":"person","observations":["Plays chess","Lives in Oslo"]}
{"type":"relation","from":"Eve","to":"Oslo_Chess_Club","relationType":"belongs_to"}
{"type":"entity","name":"Oslo_Chess_Club","entityType":"organi
{"type":"entity","name":"Frank","entityType":"person","observations":["Teaches Eve"]}
"#;

async fn a_malformed_line_is_named_and_what_came_before_stays(db: &Db) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("memory.jsonl");
    std::fs::write(&file, BROKEN).unwrap();
    let path = file.to_str().unwrap();
    let out = engram(&["import", path, "--user", "eve"], db, &[]).await;
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains(&format!("{path}: line 3: not valid JSON")),
        "{err}"
    );
    assert!(err.contains("3 added"), "{err}");
    let kept = of_user(&export_all(db).await, "eve")
        .into_iter()
        .cloned()
        .collect::<Vec<_>>();
    assert_eq!(kept.len(), 3, "the lines before it are imported: {kept:#?}");

    // Fixed, the next run adds the rest and only the rest.
    let fixed = BROKEN.replace(
        r#""entityType":"organi"#,
        r#""entityType":"organization","observations":["Meets on Mondays"]}"#,
    );
    std::fs::write(&file, fixed).unwrap();
    counted(&import(db, path, &["--user", "eve"]).await, 2, 3);
    assert_eq!(of_user(&export_all(db).await, "eve").len(), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_a_malformed_line_is_named_and_what_came_before_stays() {
    a_malformed_line_is_named_and_what_came_before_stays(&Db::sqlite()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_malformed_line_is_named_and_what_came_before_stays() {
    let db = TestDatabase::create().await;
    a_malformed_line_is_named_and_what_came_before_stays(&Db::postgres(&db)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_or_wrong_format_is_refused_and_nothing_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::sqlite();
    let notes = dir.path().join("notes.txt");
    std::fs::write(&notes, "remember to buy milk\n").unwrap();
    let out = engram(&["import", notes.to_str().unwrap()], &db, &[]).await;
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("cannot tell which format this is"), "{err}");
    assert!(
        err.contains("pass --format engram, mem0, mem0-pgvector"),
        "{err}"
    );

    let graph = fixture("server-memory.jsonl");
    let out = engram(&["import", &graph, "--format", "mem0"], &db, &[]).await;
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("not a mem0 get_all file"),
        "{}",
        stderr(&out)
    );

    // A history event engram does not know, named with its place.
    let bad = dir.path().join("bad.jsonl");
    let line = json!({"id": "0192f3a0-1111-7000-8000-00000000000a", "memory": "x",
        "user_id": "u", "history": [{"event": "MERGE", "created_at": "2026-01-01T00:00:00Z"}]});
    std::fs::write(&bad, format!("{line}\n")).unwrap();
    let out = engram(&["import", bad.to_str().unwrap()], &db, &[]).await;
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("line 1: history[0]: \"event\" is Some(\"MERGE\")"),
        "{}",
        stderr(&out)
    );
    assert_eq!(
        export_all(&db).await,
        Vec::<Value>::new(),
        "nothing was written"
    );
}

async fn a_record_under_another_user_gets_an_id_of_its_own(db: &Db) {
    import(db, &fixture("mem0-get-all.json"), &[]).await;
    // The same file for another user: new memories, with ids derived from
    // the records, found again by a second run.
    for _ in 0..2 {
        import(db, &fixture("mem0-get-all.json"), &["--user", "zed"]).await;
    }
    // Another file that reuses alice's ids for mallory.
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("mallory.json");
    let text = std::fs::read_to_string(fixture("mem0-get-all.json")).unwrap();
    std::fs::write(&copy, text.replace("\"alice\"", "\"mallory\"")).unwrap();
    counted(&import(db, copy.to_str().unwrap(), &[]).await, 3, 0);
    counted(&import(db, copy.to_str().unwrap(), &[]).await, 0, 3);

    let lines = export_all(db).await;
    let ids = |user: &str| -> Vec<String> {
        let mut ids: Vec<String> = of_user(&lines, user)
            .iter()
            .map(|m| m["id"].as_str().unwrap().to_owned())
            .collect();
        ids.sort();
        ids
    };
    let (alice, zed, mallory) = (ids("alice"), ids("zed"), ids("mallory"));
    assert_eq!(alice.len(), 3);
    assert!(alice[0].starts_with("8f14e45f"), "{alice:?}");
    for other in [&zed, &mallory] {
        assert_eq!(other.len(), 3);
        assert!(other.iter().all(|id| !alice.contains(id)), "{other:?}");
    }
    assert_ne!(zed, mallory);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_a_record_under_another_user_gets_an_id_of_its_own() {
    a_record_under_another_user_gets_an_id_of_its_own(&Db::sqlite()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_record_under_another_user_gets_an_id_of_its_own() {
    // Both ways a stored id is found to be another user's: seen (as the
    // superuser, whom no policy binds), and refused by the primary key
    // (row-level security hides the row).
    let db = TestDatabase::create().await;
    a_record_under_another_user_gets_an_id_of_its_own(&Db::postgres(&db)).await;
    let db = TestDatabase::create().await;
    a_record_under_another_user_gets_an_id_of_its_own(&Db::postgres_two_roles(&db)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeat_of_a_current_memory_is_not_imported_twice() {
    let db = Db::sqlite();
    let client = common::connect_to(&db.url, &db.env()).await;
    let args = json!({"text": "Is allergic to peanuts", "user_id": "alice", "infer": false});
    common::ok(&client, "remember", args).await;
    client.cancel().await.ok();
    let err = import(&db, &fixture("mem0-get-all.json"), &[]).await;
    assert!(
        err.contains("2 added, 0 already there, 1 repeating"),
        "{err}"
    );
    assert_eq!(of_user(&export_all(&db).await, "alice").len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_lines_are_the_documents_records_and_every_user_needs_them() {
    let db = Db::sqlite();
    import(&db, &fixture("engram-export.json"), &[]).await;
    import(&db, &fixture("mem0-get-all.json"), &[]).await;
    let document = export_user(&db, "ada").await;
    let out = engram(&["export", "--user", "ada", "--format", "jsonl"], &db, &[]).await;
    succeeded(&out);
    let lines: Vec<Value> = stdout(&out)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(Value::Array(lines), document["memories"]);
    // Every user, in byte order of their ids.
    let users: Vec<Value> = export_all(&db)
        .await
        .iter()
        .map(|m| m["user_id"].clone())
        .collect();
    assert_eq!(users, ["ada", "ada", "ada", "alice", "alice", "alice"]);

    let refused = engram(&["export", "--all", "--format", "json"], &db, &[]).await;
    assert!(!refused.status.success());
    assert!(
        stderr(&refused).contains("--all writes JSON lines"),
        "{}",
        stderr(&refused)
    );
    assert!(refused.stdout.is_empty());
    let refused = engram(
        &["export", "--user", "ada", "--format", "jsonl", "--encrypt"],
        &db,
        &[],
    )
    .await;
    assert!(!refused.status.success());
    assert!(
        stderr(&refused).contains("--encrypt seals one JSON document"),
        "{}",
        stderr(&refused)
    );
}
