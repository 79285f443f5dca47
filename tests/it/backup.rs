//! The backup and restore recipes of `docs/migration.md`, run as written:
//! SQLite's online copies (`VACUUM INTO` and the backup API, through the
//! `sqlite3` shell, while a server has the file open) and PostgreSQL's
//! `pg_dump` / `pg_restore` (as a superuser, and as the owner role with
//! row-level security on). Each restored store, opened by a new engram,
//! holds every memory the original held (current and closed, with their
//! history) and finds them.

use crate::common;
use crate::import_cli::{Db, engram, export_all, fixture, import, stderr, succeeded};

use common::postgres::TestDatabase;
use serde_json::Value;

/// Memories of three users, one closed and one with an update in its history.
async fn seed(db: &Db) -> Vec<Value> {
    import(db, &fixture("engram-export.json"), &[]).await;
    import(db, &fixture("mem0-get-all.json"), &[]).await;
    import(db, &fixture("openmemory-export.zip"), &[]).await;
    let memories = export_all(db).await;
    assert_eq!(memories.len(), 9, "{memories:#?}");
    memories
}

/// A server on `db` finds what the seed holds.
async fn finds_them(db: &Db) {
    let client = common::connect_to(&db.url, &db.env()).await;
    for (user, query, text) in [
        ("ada", "where does Ada live", "Ada lives in Porto"),
        ("alice", "peanut allergy", "Is allergic to peanuts"),
        (
            "carol",
            "Neovim plugins",
            "Uses Neovim with the Lazy plugin manager",
        ),
    ] {
        common::assert_best_recall(&client, user, query, text).await;
    }
    client.cancel().await.ok();
}

/// Runs `program ARGS` with `env`, which must succeed.
fn run(program: &str, args: &[&str], env: &[(&str, &str)]) {
    let out = std::process::Command::new(program)
        .args(args)
        .envs(env.iter().copied())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_an_online_copy_restores_every_memory() {
    let db = Db::sqlite();
    let before = seed(&db).await;
    let file = db.url.trim_start_matches("sqlite://").to_owned();
    // A server keeps the file open (and its WAL) meanwhile.
    let server = common::connect_to(&db.url, &db.env()).await;
    let dir = tempfile::tempdir().unwrap();
    let vacuumed = dir.path().join("vacuumed.db");
    let backed_up = dir.path().join("backed-up.db");
    let vacuum = format!("VACUUM INTO '{}'", vacuumed.display());
    run("sqlite3", &[&file, &vacuum], &[]);
    let backup = format!(".backup '{}'", backed_up.display());
    run("sqlite3", &[&file, &backup], &[]);
    server.cancel().await.ok();

    for copy in [vacuumed, backed_up] {
        // Restored where a new engram looks for it.
        let restored_dir = tempfile::tempdir().unwrap();
        let restored = restored_dir.path().join("engram.db");
        std::fs::copy(&copy, &restored).unwrap();
        let restored = Db::sqlite_at(&restored);
        assert_eq!(export_all(&restored).await, before, "{}", copy.display());
        finds_them(&restored).await;
        let verified = engram(&["audit", "verify"], &restored, &[]).await;
        succeeded(&verified);
    }
}

/// A PostgreSQL client program: from the test server's installation
/// (`ENGRAM_TEST_PG_BIN`), else from PATH.
fn pg_tool(name: &str) -> String {
    match std::env::var("ENGRAM_TEST_PG_BIN") {
        Ok(dir) if !dir.is_empty() => format!("{dir}/{name}"),
        _ => name.to_owned(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_dump_restores_every_memory() {
    let source = TestDatabase::create().await;
    let db = Db::postgres_two_roles(&source);
    let before = seed(&db).await;
    let dir = tempfile::tempdir().unwrap();
    let dump = dir.path().join("engram.dump");
    let dump = dump.to_str().unwrap();

    // As a superuser (row-level security does not bind it): everything,
    // owners and grants included.
    run(
        &pg_tool("pg_dump"),
        &["--format=custom", "--file", dump, &source.url],
        &[],
    );
    let target = TestDatabase::create().await;
    run(
        &pg_tool("pg_restore"),
        &["--dbname", &target.url, dump],
        &[],
    );
    let restored = Db::postgres_two_roles(&target);
    assert_eq!(export_all(&restored).await, before);
    finds_them(&restored).await;

    // As the owner role: its own session sees every user's rows only with
    // engram.all_users on, and its restore writes them as INSERTs.
    let owner_dump = dir.path().join("engram-owner.dump");
    let owner_dump = owner_dump.to_str().unwrap();
    let all_users = [("PGOPTIONS", "-c engram.all_users=on")];
    run(
        &pg_tool("pg_dump"),
        &[
            "--enable-row-security",
            "--inserts",
            "--format=custom",
            "--file",
            owner_dump,
            &source.owner_url,
        ],
        &all_users,
    );
    let target = TestDatabase::create().await;
    run(
        &pg_tool("pg_restore"),
        &[
            "--enable-row-security",
            "--no-owner",
            "--no-comments",
            "--dbname",
            &target.owner_url,
            owner_dump,
        ],
        &all_users,
    );
    let restored = Db::postgres_two_roles(&target);
    let migrated = engram(&["migrate"], &restored, &[]).await;
    assert!(migrated.status.success(), "{}", stderr(&migrated));
    assert_eq!(export_all(&restored).await, before);
    finds_them(&restored).await;
}
