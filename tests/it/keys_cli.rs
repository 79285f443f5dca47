//! `engram keys create|list|revoke` as an operator runs them.

use crate::common;

use common::run_engram;

#[test]
fn keys_are_shown_once_listed_without_secrets_and_revoked() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}/engram.db", dir.path().display());
    let env = [("ENGRAM_DATABASE_URL", db.as_str())];
    let text = |out: &std::process::Output| {
        (
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };

    let created = run_engram(
        &["keys", "create", "--user", "alice", "--label", "laptop"],
        &env,
    );
    let (key, said) = text(&created);
    assert!(created.status.success(), "{said}");
    let key = key.trim().to_owned();
    assert!(key.starts_with("engram_") && key.len() == 71, "{key}");
    assert!(said.contains("for user \"alice\""), "{said}");
    let admin = run_engram(&["keys", "create", "--admin"], &env);
    assert!(admin.status.success(), "{}", text(&admin).1);

    let listed = run_engram(&["keys", "list"], &env);
    let (list, _) = text(&listed);
    assert_eq!(list.lines().count(), 2, "{list}");
    assert!(
        list.contains(&key[..15]) && !list.contains(&key[15..]),
        "{list}"
    );
    assert!(list.contains("alice") && list.contains("(admin)") && list.contains("laptop"));
    let id = list
        .lines()
        .next()
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned();

    let revoked = run_engram(&["keys", "revoke", &id], &env);
    assert!(revoked.status.success(), "{}", text(&revoked).1);
    let (list, _) = text(&run_engram(&["keys", "list"], &env));
    assert!(list.lines().next().unwrap().contains("revoked"), "{list}");

    let keys_before = text(&run_engram(&["keys", "list"], &env)).0.lines().count();
    for (args, expected) in [
        (vec!["keys", "revoke", id.as_str()], "no active key"),
        (vec!["keys", "revoke", "nope"], "not a key id"),
        (vec!["keys", "create"], "--user"),
        (
            vec!["keys", "create", "--user", " "],
            "--user needs the user id",
        ),
        (
            vec!["keys", "create", "--user", "bob", "--admin"],
            "cannot be used with",
        ),
        // A label is one line: a newline could print a forged row in `keys list`.
        (
            vec![
                "keys",
                "create",
                "--user",
                "bob",
                "--label",
                "x\n0193a5c4-7b1e-7cc2-9a41-2f6f0d6e8b10  engram_f...  mallory  active",
            ],
            "one line",
        ),
        (
            vec!["keys", "create", "--user", "bob", "--label", "a\u{202e}b"],
            "one line",
        ),
        (vec!["keys", "create", "--user", "bob\u{200b}"], "invisible"),
    ] {
        let out = run_engram(&args, &env);
        let (_, err) = text(&out);
        assert!(!out.status.success(), "{args:?}");
        assert!(err.contains(expected), "{args:?}: {err}");
    }
    let (list, _) = text(&run_engram(&["keys", "list"], &env));
    assert_eq!(
        list.lines().count(),
        keys_before,
        "nothing was created: {list}"
    );
}
