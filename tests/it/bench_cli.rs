//! `engram bench` through the real binary, at sizes small enough for the
//! suite: every mode runs to the end and prints what docs/benchmarks.md
//! reads from it, and the numbers that are facts rather than timings hold
//! (the vector index finds what an exact scan finds at these sizes, the
//! dedup sketch pass misses no near row, every level of clients makes the
//! requests asked for, the pipeline's events add up).
//!
//! Timings are printed, never asserted: speed is measured by running the
//! bench, not by tests on a shared machine.

use crate::common::{self, postgres::TestDatabase};

/// Runs `engram bench ARGS`; its stdout and stderr, after asserting success.
fn bench(args: &[&str], env: &[(&str, &str)]) -> String {
    let scratch = tempfile::tempdir().expect("a scratch dir");
    let tmp = scratch.path().display().to_string();
    let env: Vec<(&str, &str)> = env
        .iter()
        .copied()
        .chain([("TMPDIR", tmp.as_str())])
        .collect();
    let out = common::run_engram(&[&["bench"], args].concat(), &env);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "engram bench {args:?} failed:\n{text}"
    );
    text
}

/// The table row whose first column is `first`, split on whitespace.
fn row<'a>(text: &'a str, first: &str) -> Vec<&'a str> {
    text.lines()
        .map(|line| line.split_whitespace().collect::<Vec<_>>())
        .find(|cells| cells.first() == Some(&first))
        .unwrap_or_else(|| panic!("no row starting {first}:\n{text}"))
}

#[test]
fn the_sqlite_bench_measures_each_size_and_the_index_finds_what_a_scan_finds() {
    let text = bench(&["--sizes", "200,400", "--queries", "20"], &[]);
    assert!(text.contains("remember/s"), "{text}");
    for size in ["200", "400"] {
        let cells = row(&text, size);
        assert_eq!(
            cells.last(),
            Some(&"1.000"),
            "recall@10 at {size}: {cells:?}"
        );
        assert!(
            text.contains(&format!("dedup sketch pass over {size} rows")),
            "{text}"
        );
    }
    assert!(
        !text.contains("(missed 1"),
        "the sketch pass missed a near row:\n{text}"
    );
    assert_eq!(text.matches("(missed 0)").count(), 2, "{text}");
    assert!(text.contains("RSS"), "{text}");
}

#[test]
fn the_cache_bench_compares_recall_with_and_without_the_cache() {
    let text = bench(
        &[
            "--sizes",
            "200",
            "--queries",
            "20",
            "--cache",
            &common::redis::shared_url(),
        ],
        &[],
    );
    let cache = text
        .split("cache (p50")
        .nth(1)
        .unwrap_or_else(|| panic!("no cache section:\n{text}"));
    let cells = row(cache, "200");
    assert!(cells.len() > 10, "{cells:?}");
}

#[test]
fn the_pipeline_bench_counts_model_calls_and_events() {
    let text = bench(&["--pipeline", "30"], &[]);
    assert!(text.contains("engram overhead"), "{text}");
    assert!(text.contains("LLM calls"), "{text}");
    // Two facts per remember: every one is an event.
    let events = text
        .lines()
        .find(|l| l.trim_start().starts_with("events:"))
        .unwrap_or_else(|| panic!("no events line:\n{text}"));
    let total: u32 = events
        .split_whitespace()
        .filter_map(|w| w.trim_end_matches(',').parse::<u32>().ok())
        .sum();
    assert_eq!(total, 60, "{events}");
}

#[test]
fn the_http_bench_makes_every_request_at_each_level_on_each_transport() {
    for transport in ["rest", "mcp", "sse"] {
        let text = bench(
            &[
                "--http",
                "30",
                "--clients",
                "1,2",
                "--http-memories",
                "10",
                "--transport",
                transport,
            ],
            &[],
        );
        for clients in ["1", "2"] {
            let cells = row(&text, clients);
            assert_eq!(
                cells.get(1),
                Some(&"30"),
                "{transport}, {clients} clients: {cells:?}"
            );
        }
        assert!(text.contains("in-process recall (no HTTP)"), "{text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_postgres_bench_measures_one_user_and_a_crowd_against_the_floor() {
    let db = TestDatabase::create().await;
    let url = db.url.clone();
    let text = tokio::task::spawn_blocking(move || {
        bench(
            &[
                "--postgres",
                &url,
                "--sizes",
                "300",
                "--queries",
                "20",
                "--writers",
                "2",
                "--crowd-rows",
                "400",
                "--crowd-users",
                "10",
            ],
            &[],
        )
    })
    .await
    .expect("the bench ran");
    let one_user = row(&text, "300");
    assert_eq!(one_user.last(), Some(&"1.000"), "{one_user:?}");
    assert!(text.contains("floor p50"), "{text}");
    let crowd = row(&text, "400");
    assert_eq!(crowd.get(1), Some(&"10"), "{crowd:?}");
    assert_eq!(crowd.last(), Some(&"1.000"), "{crowd:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_postgres_pipeline_bench_runs_against_an_empty_database() {
    let db = TestDatabase::create().await;
    let url = db.url.clone();
    let text =
        tokio::task::spawn_blocking(move || bench(&["--postgres", &url, "--pipeline", "20"], &[]))
            .await
            .expect("the bench ran");
    assert!(text.contains("engram overhead"), "{text}");
}
