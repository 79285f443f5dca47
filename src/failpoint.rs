//! Crash points for tests: `ENGRAM_TEST_CRASH_AT=<name>` makes the process
//! abort (no unwinding, no cleanup, as `kill -9` would) the first time it
//! reaches the point of that name. Tests use it to prove what survives a
//! crash at an exact step instead of racing a timed kill.
//!
//! Points: `remember-before-commit` (a remember has written its facts,
//! all of them, and is about to commit).
//!
//! Unset (always, outside tests), a point costs one load of a cached value.

use std::sync::OnceLock;

/// The variable naming the point to crash at.
pub const VARIABLE: &str = "ENGRAM_TEST_CRASH_AT";

/// Aborts the process if `name` is the configured crash point.
pub fn crash_point(name: &str) {
    static AT: OnceLock<Option<String>> = OnceLock::new();
    let at = AT.get_or_init(|| std::env::var(VARIABLE).ok().filter(|v| !v.is_empty()));
    if at.as_deref() == Some(name) {
        eprintln!("{VARIABLE}={name}: aborting here, as a test asked");
        std::process::abort();
    }
}
