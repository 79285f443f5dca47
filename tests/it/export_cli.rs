//! `engram export` through the real binary: the plain export is the REST
//! export's bytes and leaves an audit row (transport `cli`); `--encrypt`
//! hides every memory and decrypts (`--decrypt`) back to the plain export,
//! also after a key rotation; an altered file, a missing key and an
//! existing `--out` file are refused with a message saying what to do, and
//! nothing is written.

use crate::common;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use common::http::Server;
use reqwest::Method;
use serde_json::{Value, json};

/// Memory text and a sensitive metadata value: never in an encrypted export.
const LIVES: &str = "Lives on a houseboat moored in Utrecht";
const PLAYS: &str = "Plays the bassoon on Thursdays";
const DIAGNOSIS: &str = "Glimmerfen syndrome";
const USER: &str = "marguerite";

const OLD_KEY: [u8; 32] = [7; 32];
const NEW_KEY: [u8; 32] = [9; 32];
/// The audit key of the server and of every command (PostgreSQL needs one shared).
const AUDIT_KEY: &str = "0123456789abcdef0123456789abcdef";

/// A server (keys on, encryption under `OLD_KEY`) whose user has two
/// memories, one with sealed metadata; and an admin key.
async fn seeded(database_url: Option<&str>) -> (Server, String) {
    let old = B64.encode(OLD_KEY);
    let env = [
        ("ENGRAM_ENCRYPTION_KEY", old.as_str()),
        ("ENGRAM_SENSITIVE_METADATA_KEYS", "diagnosis"),
        ("ENGRAM_AUDIT_KEY", AUDIT_KEY),
        ("ENGRAM_REST_RATE_LIMIT", "0"),
        ("ENGRAM_REST_USER_RATE_LIMIT", "0"),
    ];
    let server = Server::with_keys(database_url, &env).await;
    let admin = server.create_key(&["--admin"]);
    for (text, metadata) in [
        (LIVES, json!({"diagnosis": DIAGNOSIS, "topic": "home"})),
        (PLAYS, json!({})),
    ] {
        let stored = server
            .call(
                Method::POST,
                "/api/v1/memory",
                Some(&admin),
                Some(json!({"user_id": USER, "text": text, "infer": false, "metadata": metadata})),
            )
            .await;
        assert_eq!(stored.status, 200, "{}", stored.text);
    }
    (server, admin)
}

/// `engram ARGS` on `database_url` with `key` (base64) as the current key
/// (none: no key), plus `env`; off the async workers.
async fn engram(
    args: &[&str],
    database_url: &str,
    key: Option<[u8; 32]>,
    env: &[(&str, String)],
) -> std::process::Output {
    let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
    let mut vars = vec![
        ("ENGRAM_DATABASE_URL".to_owned(), database_url.to_owned()),
        ("ENGRAM_AUDIT_KEY".to_owned(), AUDIT_KEY.to_owned()),
        // Whatever the test process has, the case decides.
        ("ENGRAM_ENCRYPTION_KEY".to_owned(), String::new()),
        ("ENGRAM_ENCRYPTION_OLD_KEYS".to_owned(), String::new()),
    ];
    if let Some(key) = key {
        vars[2].1 = B64.encode(key);
    }
    vars.extend(env.iter().map(|(k, v)| ((*k).to_owned(), v.clone())));
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let vars: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        common::run_engram(&args, &vars)
    })
    .await
    .unwrap()
}

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[track_caller]
fn succeeded(out: &std::process::Output) {
    assert!(out.status.success(), "{}", stderr(out));
}

/// `text` (one export's JSON) with its `exported_at` value blanked, so two
/// exports read at different times compare byte for byte.
fn timeless(text: &str) -> String {
    let value: Value = serde_json::from_str(text).unwrap_or_else(|e| panic!("{e}: {text}"));
    let at = value["exported_at"].as_str().expect("exported_at");
    text.replacen(at, "<exported_at>", 1)
}

/// The `export` rows `engram audit` lists, newest first.
async fn export_rows(database_url: &str) -> Vec<Value> {
    let out = engram(
        &["audit", "--json", "--op", "export"],
        database_url,
        None,
        &[],
    )
    .await;
    succeeded(&out);
    stdout(&out)
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON row"))
        .collect()
}

async fn the_plain_export_is_the_rest_export_and_is_audited(database_url: Option<&str>) {
    let (server, admin) = seeded(database_url).await;
    let url = server.database_url.clone();
    let rest = server
        .call(
            Method::GET,
            &format!("/api/v1/memory/export/{USER}"),
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(rest.status, 200, "{}", rest.text);
    assert_eq!(rest.body["memories"].as_array().map(Vec::len), Some(2));
    assert_eq!(rest.body["memories"][0]["metadata"]["diagnosis"], DIAGNOSIS);

    let out = engram(&["export", "--user", USER], &url, Some(OLD_KEY), &[]).await;
    succeeded(&out);
    let cli = stdout(&out);
    let document = cli.strip_suffix('\n').expect("ends with a newline");
    assert_eq!(timeless(document), timeless(&rest.text));
    assert!(
        stderr(&out).contains("exported 2 memories and 0 deferred remembers"),
        "{}",
        stderr(&out)
    );

    // The export's row: the operator on the command line, the memories read.
    let rows = export_rows(&url).await;
    let cli_rows: Vec<&Value> = rows.iter().filter(|r| r["transport"] == "cli").collect();
    assert_eq!(cli_rows.len(), 1, "{rows:?}");
    let row = cli_rows[0];
    assert_eq!(row["principal"], "operator", "{row}");
    assert_eq!(row["outcome"], "ok", "{row}");
    assert_eq!(row["memory_count"], 2, "{row}");
    assert!(!row.to_string().contains(USER), "{row}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_the_plain_export_is_the_rest_export_and_is_audited() {
    the_plain_export_is_the_rest_export_and_is_audited(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_the_plain_export_is_the_rest_export_and_is_audited() {
    let db = common::postgres::TestDatabase::create().await;
    the_plain_export_is_the_rest_export_and_is_audited(Some(&db.url)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_encrypted_export_hides_the_memories_and_decrypts_to_the_plain_export() {
    let (server, _) = seeded(None).await;
    let url = server.database_url.clone();
    let dir = tempfile::tempdir().unwrap();
    let sealed = dir.path().join("export.enc.json");
    let sealed_arg = sealed.to_str().unwrap();

    let plain = engram(&["export", "--user", USER], &url, Some(OLD_KEY), &[]).await;
    succeeded(&plain);
    let out = engram(
        &["export", "--user", USER, "--encrypt", "--out", sealed_arg],
        &url,
        Some(OLD_KEY),
        &[],
    )
    .await;
    succeeded(&out);
    assert!(out.stdout.is_empty(), "{}", stdout(&out));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&sealed).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "{mode:o}");
    }
    let bytes = std::fs::read(&sealed).unwrap();
    let text = String::from_utf8(bytes.clone()).unwrap();
    for secret in [LIVES, PLAYS, DIAGNOSIS, USER, "houseboat", "bassoon"] {
        assert!(!text.contains(secret), "{secret} in {text}");
    }
    let envelope: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(envelope["format"], "engram-export-encrypted");
    assert_eq!(envelope["version"], 1);
    assert_eq!(envelope["key_id"], engram::crypto::key_id(&OLD_KEY));

    let opened = engram(
        &["export", "--decrypt", sealed_arg],
        &url,
        Some(OLD_KEY),
        &[],
    )
    .await;
    succeeded(&opened);
    let opened = stdout(&opened);
    assert_eq!(timeless(&opened), timeless(&stdout(&plain)));
    assert!(opened.contains(LIVES) && opened.contains(DIAGNOSIS));
    // Two CLI exports, two rows.
    let rows = export_rows(&url).await;
    assert_eq!(
        rows.iter().filter(|r| r["transport"] == "cli").count(),
        2,
        "{rows:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_encrypted_export_decrypts_after_the_key_is_rotated() {
    let (server, _) = seeded(None).await;
    let url = server.database_url.clone();
    let dir = tempfile::tempdir().unwrap();
    let sealed = dir.path().join("export.enc.json");
    let sealed_arg = sealed.to_str().unwrap();
    let out = engram(
        &["export", "--user", USER, "--encrypt", "--out", sealed_arg],
        &url,
        Some(OLD_KEY),
        &[],
    )
    .await;
    succeeded(&out);
    let before = engram(
        &["export", "--decrypt", sealed_arg],
        &url,
        Some(OLD_KEY),
        &[],
    )
    .await;
    succeeded(&before);

    let old_in_ring = [("ENGRAM_ENCRYPTION_OLD_KEYS", B64.encode(OLD_KEY))];
    let after = engram(
        &["export", "--decrypt", sealed_arg],
        &url,
        Some(NEW_KEY),
        &old_in_ring,
    )
    .await;
    succeeded(&after);
    assert_eq!(stdout(&after), stdout(&before), "byte for byte");

    // The old key gone (or no key at all): refused, naming the key it needs.
    let old_id = engram::crypto::key_id(&OLD_KEY);
    for key in [Some(NEW_KEY), None] {
        let refused = engram(&["export", "--decrypt", sealed_arg], &url, key, &[]).await;
        assert!(!refused.status.success());
        assert!(refused.stdout.is_empty(), "{}", stdout(&refused));
        let err = stderr(&refused);
        assert!(
            err.contains(&format!(
                "encrypted under key id {old_id}, which is not configured"
            )) && err.contains("ENGRAM_ENCRYPTION_OLD_KEYS"),
            "{err}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tampered_encrypted_export_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/engram.db", dir.path().display());
    let sealed = dir.path().join("export.enc.json");
    let sealed_arg = sealed.to_str().unwrap();
    let out = engram(
        &["export", "--user", USER, "--encrypt", "--out", sealed_arg],
        &url,
        Some(OLD_KEY),
        &[],
    )
    .await;
    succeeded(&out);
    let mut envelope: Value = serde_json::from_slice(&std::fs::read(&sealed).unwrap()).unwrap();
    let mut ciphertext = B64
        .decode(envelope["ciphertext"].as_str().unwrap())
        .unwrap();
    ciphertext[3] ^= 0x20;
    envelope["ciphertext"] = json!(B64.encode(ciphertext));
    std::fs::write(&sealed, envelope.to_string()).unwrap();

    let opened = dir.path().join("opened.json");
    let refused = engram(
        &[
            "export",
            "--decrypt",
            sealed_arg,
            "--out",
            opened.to_str().unwrap(),
        ],
        &url,
        Some(OLD_KEY),
        &[],
    )
    .await;
    assert!(!refused.status.success());
    let err = stderr(&refused);
    assert!(
        err.contains("authentication failed: the file was changed or another key sealed it"),
        "{err}"
    );
    assert!(!opened.exists(), "nothing is written");

    // A plain export is not an encrypted one.
    let plain = dir.path().join("plain.json");
    std::fs::write(&plain, r#"{"user_id":"x","memories":[]}"#).unwrap();
    let refused = engram(
        &["export", "--decrypt", plain.to_str().unwrap()],
        &url,
        Some(OLD_KEY),
        &[],
    )
    .await;
    assert!(!refused.status.success());
    assert!(
        stderr(&refused).contains("is not an engram encrypted export"),
        "{}",
        stderr(&refused)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn encrypt_without_a_key_is_refused_and_writes_nothing() {
    let (server, _) = seeded(None).await;
    let url = server.database_url.clone();
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("export.enc.json");
    for out_file in [None, Some(target.to_str().unwrap())] {
        let mut args = vec!["export", "--user", USER, "--encrypt"];
        args.extend(out_file.iter().flat_map(|f| ["--out", *f]));
        let refused = engram(&args, &url, None, &[]).await;
        assert!(!refused.status.success());
        assert!(refused.stdout.is_empty(), "{}", stdout(&refused));
        let err = stderr(&refused);
        assert!(
            err.contains("--encrypt needs an encryption key: set ENGRAM_ENCRYPTION_KEY"),
            "{err}"
        );
    }
    assert!(!target.exists(), "nothing is written");
    let rows = export_rows(&url).await;
    assert!(
        rows.iter().all(|r| r["transport"] != "cli"),
        "nothing was exported: {rows:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_existing_out_file_is_kept_unless_forced() {
    let (server, _) = seeded(None).await;
    let url = server.database_url.clone();
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("export.json");
    std::fs::write(&target, "keep me").unwrap();
    let target_arg = target.to_str().unwrap();

    let refused = engram(
        &["export", "--user", USER, "--out", target_arg],
        &url,
        Some(OLD_KEY),
        &[],
    )
    .await;
    assert!(!refused.status.success());
    assert!(
        stderr(&refused).contains("exists; pass --force to replace it"),
        "{}",
        stderr(&refused)
    );
    assert_eq!(std::fs::read_to_string(&target).unwrap(), "keep me");

    let forced = engram(
        &["export", "--user", USER, "--out", target_arg, "--force"],
        &url,
        Some(OLD_KEY),
        &[],
    )
    .await;
    succeeded(&forced);
    let written = std::fs::read_to_string(&target).unwrap();
    assert!(
        written.contains(LIVES) && written.ends_with("}\n"),
        "{written}"
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&target).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "{mode:o}");
    }
}
