//! Secrets kept out of storage (`ENGRAM_SECRETS`).
//!
//! The detector against a corpus of synthetic secrets and ordinary sentences
//! (`tests/data/secrets/corpus.jsonl`, written by `generate.py` beside it):
//! it prints recall per kind, precision and the false-positive rate, and
//! holds recall >= 95% and false positives <= 1%.

use std::collections::BTreeMap;

use engram::secrets::{Kind, redact};
use serde::Deserialize;

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
