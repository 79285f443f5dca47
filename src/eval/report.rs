//! The report `engram eval` prints on stdout: what was measured, engram
//! recall per category (R@1, R@5, R@10, hit@10, MRR@10), each search signal
//! on its own, recall latency and ingest rate. Rendered to a string, so the
//! caller decides where it goes.

use std::collections::BTreeMap;
use std::fmt::Write;

use super::QueryRow;
use super::locomo::category_name;
use super::metrics::{Mean, Scores, percentile};

/// Everything the report shows besides the per-query rows.
pub struct Header {
    pub file: String,
    pub embedder: String,
    pub store: String,
    pub conversations: usize,
    pub turns: usize,
    pub memories: usize,
    /// The categories `--category` kept (empty: all).
    pub categories: Vec<u32>,
    pub ingest_secs: f64,
    pub concurrency: usize,
}

/// The means of one group of queries, for each ranking.
#[derive(Default)]
struct Group {
    recall: Mean,
    keyword: Mean,
    vector: Mean,
}

impl Group {
    fn add(&mut self, row: &QueryRow) {
        self.recall.add(&row.metrics);
        self.keyword.add(&row.keyword);
        self.vector.add(&row.vector);
    }
}

const LABEL: usize = 18;

fn label(category: u32) -> String {
    match category_name(category) {
        Some(name) => format!("{category} {name}"),
        None => format!("category {category}"),
    }
}

/// The whole report, ending in a newline.
pub fn render(header: &Header, rows: &[QueryRow]) -> String {
    let mut overall = Group::default();
    let mut by_category: BTreeMap<u32, Group> = BTreeMap::new();
    for row in rows {
        overall.add(row);
        by_category.entry(row.category).or_default().add(row);
    }
    let groups: Vec<(String, &Group)> = std::iter::once(("overall".to_owned(), &overall))
        .chain(by_category.iter().map(|(c, g)| (label(*c), g)))
        .collect();

    let mut out = String::new();
    let kept = if header.categories.is_empty() {
        String::new()
    } else {
        let list: Vec<String> = header.categories.iter().map(u32::to_string).collect();
        format!(" (category {} only)", list.join(", "))
    };
    let _ = writeln!(out, "engram eval of {}", header.file);
    let _ = writeln!(out, "  embedder  {}", header.embedder);
    let _ = writeln!(out, "  store     {}", header.store);
    let _ = writeln!(
        out,
        "  memories  {} from {} turns of {} conversations (one user each)",
        header.memories, header.turns, header.conversations
    );
    let _ = writeln!(
        out,
        "  queries   {} questions with evidence{kept}, recall limit 10",
        rows.len()
    );
    let _ = writeln!(out);

    let _ = writeln!(
        out,
        "{:<LABEL$} {:>7} {:>6} {:>6} {:>6} {:>7} {:>7}",
        "engram recall", "queries", "R@1", "R@5", "R@10", "hit@10", "MRR@10"
    );
    for (name, group) in &groups {
        let Scores {
            recall_at_1,
            recall_at_5,
            recall_at_10,
            hit_at_10,
            mrr_at_10,
        } = group.recall.mean();
        let _ = writeln!(
            out,
            "{name:<LABEL$} {:>7} {recall_at_1:>6.3} {recall_at_5:>6.3} {recall_at_10:>6.3} \
             {hit_at_10:>7.3} {mrr_at_10:>7.3}",
            group.recall.count()
        );
    }
    let _ = writeln!(out);

    let _ = writeln!(
        out,
        "{:<LABEL$} {:>7} {:>16} {:>16}",
        "single signals", "queries", "keyword only", "vector only"
    );
    let _ = writeln!(
        out,
        "{:<LABEL$} {:>7}   {:>6} {:>7}   {:>6} {:>7}",
        "(store, top 10)", "", "R@10", "MRR@10", "R@10", "MRR@10"
    );
    for (name, group) in &groups {
        let (keyword, vector) = (group.keyword.mean(), group.vector.mean());
        let _ = writeln!(
            out,
            "{name:<LABEL$} {:>7}   {:>6.3} {:>7.3}   {:>6.3} {:>7.3}",
            group.keyword.count(),
            keyword.recall_at_10,
            keyword.mrr_at_10,
            vector.recall_at_10,
            vector.mrr_at_10
        );
    }
    let _ = writeln!(out);

    let mut latencies: Vec<f64> = rows.iter().map(|r| r.latency_ms).collect();
    latencies.sort_by(f64::total_cmp);
    let _ = writeln!(
        out,
        "recall latency  p50 {:.2} ms, p95 {:.2} ms ({} recalls, one at a time)",
        percentile(&latencies, 0.50),
        percentile(&latencies, 0.95),
        latencies.len()
    );
    let rate = header.turns as f64 / header.ingest_secs.max(1e-9);
    let _ = writeln!(
        out,
        "ingest          {} turns in {:.2} s: {rate:.1} memories/s ({} remembers at a time)",
        header.turns, header.ingest_secs, header.concurrency
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(category: u32, recall: f64, latency_ms: f64) -> QueryRow {
        let scores = Scores {
            recall_at_1: recall,
            recall_at_5: recall,
            recall_at_10: recall,
            hit_at_10: recall,
            mrr_at_10: recall,
        };
        QueryRow {
            sample_id: "conv-1".into(),
            question: "q".into(),
            category,
            evidence: vec!["D1:1".into()],
            results: vec![],
            metrics: scores,
            keyword_first_rank: None,
            vector_first_rank: None,
            latency_ms,
            keyword: Scores::default(),
            vector: scores,
        }
    }

    #[test]
    fn rows_per_category_with_names_and_three_decimals() {
        let header = Header {
            file: "dev.json".into(),
            embedder: "hash-v1 (384 dims)".into(),
            store: "sqlite".into(),
            conversations: 2,
            turns: 10,
            memories: 10,
            categories: vec![],
            ingest_secs: 0.5,
            concurrency: 4,
        };
        let rows = [row(4, 1.0, 2.0), row(4, 0.0, 4.0), row(2, 0.5, 1.0)];
        let text = render(&header, &rows);
        let line = |start: &str| {
            text.lines()
                .find(|l| l.starts_with(start))
                .unwrap_or_else(|| panic!("no {start} line in\n{text}"))
                .split_whitespace()
                .collect::<Vec<_>>()
        };
        assert_eq!(
            line("overall"),
            ["overall", "3", "0.500", "0.500", "0.500", "0.500", "0.500"]
        );
        assert_eq!(
            line("4 single-hop"),
            [
                "4",
                "single-hop",
                "2",
                "0.500",
                "0.500",
                "0.500",
                "0.500",
                "0.500"
            ]
        );
        assert_eq!(line("2 temporal")[3], "0.500");
        // The single-signal table: keyword all zero, vector as engram.
        let signals: Vec<&str> = text
            .lines()
            .skip_while(|l| !l.starts_with("single signals"))
            .filter(|l| l.starts_with("overall"))
            .collect();
        assert_eq!(
            signals[0].split_whitespace().collect::<Vec<_>>(),
            ["overall", "3", "0.000", "0.000", "0.500", "0.500"]
        );
        assert!(
            text.contains("p50 2.00 ms, p95 4.00 ms (3 recalls"),
            "{text}"
        );
        assert!(text.contains("20.0 memories/s"), "{text}");
    }
}
