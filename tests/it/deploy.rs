//! The monitoring files in `deploy/`, without Docker: the alert rules pass
//! `promtool check rules` and their unit tests (`promtool test rules`: for
//! each alert, series that fire it and series that do not); the Prometheus
//! configuration passes `promtool check config` and the Alertmanager one
//! `amtool check-config`, and routes critical alerts to PagerDuty and every
//! alert to the webhook; Alertmanager's start script writes the webhook URL
//! in and refuses to start without it or the PagerDuty routing key; the
//! Grafana dashboard parses, and every query in it and in the alert rules is
//! valid PromQL naming only metrics and labels engram exports
//! ([`ENGRAM_METRICS`]); the compose file mounts files that exist and lets
//! Prometheus through engram's `Host` check.
//!
//! promtool comes with Debian's `prometheus` package, amtool with
//! `prometheus-alertmanager`; scripts/test.sh installs them when missing.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::LazyLock;

use regex::Regex;
use serde_json::Value;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

/// One metric family: its name, type and labels (those Prometheus adds to
/// every series, `job` and `instance`, and a histogram's `le`, aside).
#[derive(Debug, Clone, Copy)]
pub struct Metric {
    pub name: &'static str,
    pub kind: Kind,
    pub labels: &'static [&'static str],
}

const fn metric(name: &'static str, kind: Kind, labels: &'static [&'static str]) -> Metric {
    Metric { name, kind, labels }
}

/// Every metric engram exports: the one list that the dashboard and the alert
/// rules are checked against. Written by hand from the metrics' definition;
/// it can be replaced by what a live `/metrics` shows (its `# TYPE` lines and
/// the labels of its samples).
pub const ENGRAM_METRICS: &[Metric] = {
    use Kind::*;
    const ROUTE: &[&str] = &["transport", "operation"];
    &[
        metric(
            "engram_build_info",
            Gauge,
            &["version", "store", "embedder", "extractor"],
        ),
        metric("engram_requests_total", Counter, ROUTE),
        metric("engram_request_duration_seconds", Histogram, ROUTE),
        metric(
            "engram_request_errors_total",
            Counter,
            &["transport", "operation", "code"],
        ),
        metric("engram_remember_events_total", Counter, &["event"]),
        metric("engram_extraction_duration_seconds", Histogram, &[]),
        metric("engram_embedding_duration_seconds", Histogram, &[]),
        metric("engram_llm_requests_total", Counter, &["model", "outcome"]),
        metric("engram_llm_tokens_total", Counter, &["model", "direction"]),
        metric("engram_token_budget_exceeded_total", Counter, &[]),
        metric("engram_cache_requests_total", Counter, &["result"]),
        metric("engram_cache_up", Gauge, &[]),
        metric("engram_pending_extractions", Gauge, &[]),
        metric("engram_memories", Gauge, &[]),
        metric("engram_database_up", Gauge, &[]),
        metric("engram_db_pool_connections", Gauge, &["state"]),
        metric("engram_db_pool_max_connections", Gauge, &[]),
        metric("engram_db_pool_acquire_duration_seconds", Histogram, &[]),
        metric(
            "engram_rate_limited_total",
            Counter,
            &["transport", "scope"],
        ),
        metric("engram_audit_dropped_total", Counter, &[]),
    ]
};

/// Series Prometheus writes itself for each target (the alert on a target
/// that cannot be scraped reads `up`).
const PROMETHEUS_SERIES: &[Metric] = &[metric("up", Kind::Gauge, &[])];

/// Labels Prometheus puts on every scraped series.
const TARGET_LABELS: &[&str] = &["job", "instance"];

/// The alerts the issue asks for, with the severity that routes them.
const ALERTS: &[(&str, &str)] = &[
    ("EngramLatencyHigh", "critical"),
    ("EngramErrorRatioHigh", "critical"),
    ("EngramTokenBudgetExceeded", "warning"),
    ("EngramCacheDown", "warning"),
    ("EngramReextractionQueueGrowing", "warning"),
    ("EngramDatabaseNotReady", "critical"),
];

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn read(path: &str) -> String {
    std::fs::read_to_string(repo().join(path)).unwrap_or_else(|e| panic!("read {path}: {e}"))
}

/// `name`, which must be installed: the message names the Debian package.
fn tool(name: &str, package: &str) -> Command {
    if Command::new(name).arg("--version").output().is_err() {
        panic!(
            "{name} not found on PATH: install Debian's {package} package \
             (apt-get install -y {package}); scripts/test.sh installs it when missing"
        );
    }
    let mut cmd = Command::new(name);
    cmd.current_dir(repo());
    cmd
}

fn promtool() -> Command {
    tool("promtool", "prometheus")
}

fn amtool() -> Command {
    tool("amtool", "prometheus-alertmanager")
}

fn output(cmd: &mut Command) -> Output {
    cmd.output().unwrap_or_else(|e| panic!("run {cmd:?}: {e}"))
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Runs `cmd`, fails the test with its output unless it succeeds, and
/// returns its stdout and stderr.
fn succeeds(cmd: &mut Command) -> String {
    let out = output(cmd);
    let said = text(&out);
    assert!(out.status.success(), "{cmd:?} failed:\n{said}");
    said
}

// --- PromQL -------------------------------------------------------------------

static STRING: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r#""(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|`[^`]*`"#).unwrap());
static SELECTOR: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"([A-Za-z_:][A-Za-z0-9_:]*)?\s*\{([^}]*)\}").unwrap());
static MATCHER: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*(=~|!~|!=|=)").unwrap());
static GROUPING: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"\b(by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)").unwrap()
});
static RANGE: LazyLock<Regex> = LazyLock::new(|| Regex::new(r"\[[^\]]*\]").unwrap());
static WORD: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"\b([A-Za-z_][A-Za-z0-9_:]*)\b(\s*\()?").unwrap());
static LEGEND: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}").unwrap());

const KEYWORDS: &[&str] = &[
    "and", "or", "unless", "offset", "bool", "inf", "nan", "Inf", "NaN",
];

/// The family a series name belongs to (a histogram's `_bucket`, `_sum` and
/// `_count`), and the labels its series may carry.
fn family(series: &str) -> Option<(&'static Metric, Vec<&'static str>)> {
    let known = ENGRAM_METRICS.iter().chain(PROMETHEUS_SERIES);
    for m in known {
        let mut labels: Vec<&str> = m.labels.iter().chain(TARGET_LABELS).copied().collect();
        match m.kind {
            Kind::Counter | Kind::Gauge if series == m.name => return Some((m, labels)),
            Kind::Histogram => match series.strip_prefix(m.name) {
                Some("_bucket") => {
                    labels.push("le");
                    return Some((m, labels));
                }
                Some("_sum" | "_count") => return Some((m, labels)),
                _ => {}
            },
            _ => {}
        }
    }
    None
}

/// What is wrong with `expr`, a PromQL query (Grafana's `$variables` may
/// stand in label values and ranges): every series it reads must be one
/// engram exports (or `up`), every label it matches, groups by or shows in
/// `legend` must be one those series carry. Also returns the families read.
fn check_promql(expr: &str, legend: &str) -> (Vec<String>, BTreeSet<&'static str>) {
    let mut problems = Vec::new();
    let mut families = BTreeSet::new();
    let mut carried: BTreeSet<&str> = BTreeSet::new();
    let mut used_labels: Vec<String> = Vec::new();

    let plain = STRING.replace_all(expr, "\"\"");
    // Selectors' names are read below, with the bare names.
    let mut series: BTreeSet<String> = BTreeSet::new();
    for cap in SELECTOR.captures_iter(&plain) {
        match cap.get(1) {
            Some(_) => {}
            None => problems.push(format!("a selector without a metric name in `{expr}`")),
        }
        for matcher in cap[2].split(',').filter(|m| !m.trim().is_empty()) {
            match MATCHER.captures(matcher) {
                Some(m) => used_labels.push(m[1].to_owned()),
                None => problems.push(format!("unreadable matcher `{matcher}` in `{expr}`")),
            }
        }
    }
    let plain = SELECTOR.replace_all(&plain, " $1 ");
    for cap in GROUPING.captures_iter(&plain) {
        used_labels.extend(
            cap[2]
                .split(',')
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .map(str::to_owned),
        );
    }
    let plain = GROUPING.replace_all(&plain, " ");
    let plain = RANGE.replace_all(&plain, " ");
    for cap in WORD.captures_iter(&plain) {
        let word = &cap[1];
        if cap.get(2).is_none() && !KEYWORDS.contains(&word) {
            series.insert(word.to_owned());
        }
    }

    if series.is_empty() {
        problems.push(format!("`{expr}` reads no metric"));
    }
    for name in &series {
        match family(name) {
            Some((m, labels)) => {
                families.insert(m.name);
                carried.extend(labels);
            }
            None => problems.push(format!(
                "`{name}` (in `{expr}`) is not a metric engram exports (ENGRAM_METRICS)"
            )),
        }
    }
    used_labels.extend(LEGEND.captures_iter(legend).map(|c| c[1].to_owned()));
    for label in used_labels {
        if !carried.is_empty() && !carried.contains(label.as_str()) {
            problems.push(format!(
                "label `{label}` (in `{expr}`, legend `{legend}`) is on none of the series it reads"
            ));
        }
    }
    (problems, families)
}

#[test]
fn the_promql_check_catches_unknown_metrics_and_labels() {
    let ok = |expr: &str, legend: &str| {
        let (problems, _) = check_promql(expr, legend);
        assert!(problems.is_empty(), "{expr}: {problems:?}");
    };
    let bad = |expr: &str, legend: &str, says: &str| {
        let (problems, _) = check_promql(expr, legend);
        assert!(
            problems.iter().any(|p| p.contains(says)),
            "{expr}: expected a problem naming {says}, got {problems:?}"
        );
    };
    ok(
        r#"histogram_quantile(0.95, sum by (operation, le) (rate(engram_request_duration_seconds_bucket{job=~"$job", transport!="x{y}"}[$__rate_interval])))"#,
        "{{operation}}",
    );
    ok(
        r#"label_replace(engram_database_up == 0, "reason", "x", "", "") or label_replace(up{job="engram"} == 0, "reason", "y", "", "")"#,
        "",
    );
    ok("deriv(engram_pending_extractions[10m]) > 0", "");
    bad(
        "rate(engram_request_total[5m])",
        "",
        "`engram_request_total`",
    );
    bad(
        "engram_request_duration_seconds > 1",
        "",
        "`engram_request_duration_seconds`",
    );
    bad(
        r#"sum(rate(engram_requests_total{code="internal"}[5m]))"#,
        "",
        "label `code`",
    );
    bad(
        "sum by (model) (rate(engram_requests_total[5m]))",
        "",
        "label `model`",
    );
    bad(
        "sum by (operation) (rate(engram_requests_total[5m]))",
        "{{ event }}",
        "label `event`",
    );
    bad(
        "rate(process_cpu_seconds_total[5m])",
        "",
        "`process_cpu_seconds_total`",
    );
    bad(
        r#"{__name__="engram_memories"}"#,
        "",
        "without a metric name",
    );
}

// --- Alert rules --------------------------------------------------------------

/// One rule of alerts.yml, read line by line (the file is ours: one
/// `- alert:` per rule, `expr:` inline or as a `|` block).
#[derive(Debug)]
struct Rule {
    alert: String,
    expr: String,
    severity: Option<String>,
    has_for: bool,
    summary: bool,
    description: bool,
}

fn indent(line: &str) -> usize {
    line.len() - line.trim_start().len()
}

fn alert_rules() -> Vec<Rule> {
    let text = read("deploy/prometheus/alerts.yml");
    let lines: Vec<&str> = text.lines().collect();
    let mut rules: Vec<Rule> = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i];
        let key = line.trim_start();
        if let Some(name) = key.strip_prefix("- alert:") {
            rules.push(Rule {
                alert: name.trim().to_owned(),
                expr: String::new(),
                severity: None,
                has_for: false,
                summary: false,
                description: false,
            });
        } else if let Some(rule) = rules.last_mut() {
            if let Some(value) = key.strip_prefix("expr:") {
                let value = value.trim();
                if value.starts_with('|') || value.starts_with('>') {
                    let mut block = Vec::new();
                    while i + 1 < lines.len()
                        && (lines[i + 1].trim().is_empty() || indent(lines[i + 1]) > indent(line))
                    {
                        i += 1;
                        block.push(lines[i].trim());
                    }
                    rule.expr = block.join(" ");
                } else {
                    rule.expr = value.to_owned();
                }
            } else if let Some(value) = key.strip_prefix("severity:") {
                rule.severity = Some(value.trim().to_owned());
            } else if key.starts_with("for:") {
                rule.has_for = true;
            } else if key.starts_with("summary:") {
                rule.summary = true;
            } else if key.starts_with("description:") {
                rule.description = true;
            }
        }
        i += 1;
    }
    rules
}

#[test]
fn alert_rules_pass_promtool_check() {
    let said = succeeds(promtool().args(["check", "rules", "deploy/prometheus/alerts.yml"]));
    assert!(
        said.contains(&format!("{} rules found", ALERTS.len())),
        "{said}"
    );
}

#[test]
fn alert_rules_unit_tests_pass_promtool_test() {
    let said = succeeds(promtool().args(["test", "rules", "deploy/prometheus/alerts.test.yml"]));
    assert!(said.contains("SUCCESS"), "{said}");
}

#[test]
fn the_six_alerts_read_only_exported_metrics_and_say_what_happened() {
    let rules = alert_rules();
    let names: Vec<&str> = rules.iter().map(|r| r.alert.as_str()).collect();
    let expected: Vec<&str> = ALERTS.iter().map(|(a, _)| *a).collect();
    assert_eq!(
        names, expected,
        "the alerts in deploy/prometheus/alerts.yml"
    );
    for (rule, (_, severity)) in rules.iter().zip(ALERTS) {
        assert_eq!(rule.severity.as_deref(), Some(*severity), "{rule:?}");
        assert!(
            rule.summary && rule.description,
            "{}: needs a summary and a description",
            rule.alert
        );
        let (problems, _) = check_promql(&rule.expr, "");
        assert!(problems.is_empty(), "{}: {problems:#?}", rule.alert);
    }
    let held: Vec<&str> = rules
        .iter()
        .filter(|r| r.has_for)
        .map(|r| r.alert.as_str())
        .collect();
    assert_eq!(
        held,
        [
            "EngramLatencyHigh",
            "EngramErrorRatioHigh",
            "EngramCacheDown",
            "EngramReextractionQueueGrowing",
            "EngramDatabaseNotReady"
        ],
        "alerts that must hold for a while before they fire"
    );
}

/// For each alert, alerts.test.yml expects it firing at least once and
/// expects it quiet at least once (`exp_alerts: []`).
#[test]
fn every_alert_has_a_firing_and_a_quiet_unit_test() {
    let text = read("deploy/prometheus/alerts.test.yml");
    let lines: Vec<&str> = text.lines().map(str::trim).collect();
    for (alert, _) in ALERTS {
        let (mut fires, mut quiet) = (0, 0);
        for (i, line) in lines.iter().enumerate() {
            if line.strip_prefix("alertname:").map(str::trim) == Some(alert) {
                match lines.get(i + 1) {
                    Some(&"exp_alerts: []") => quiet += 1,
                    Some(&"exp_alerts:") => fires += 1,
                    other => panic!("{alert}: alertname not followed by exp_alerts: {other:?}"),
                }
            }
        }
        assert!(
            fires > 0 && quiet > 0,
            "{alert}: {fires} firing and {quiet} quiet expectations in alerts.test.yml; \
             each alert needs both"
        );
    }
}

// --- Prometheus and Alertmanager configuration --------------------------------

/// Needs no network: the targets are static and no name is resolved.
#[test]
fn prometheus_config_passes_promtool_check() {
    let said = succeeds(promtool().args(["check", "config", "deploy/prometheus/prometheus.yml"]));
    assert!(said.contains("1 rule files found"), "{said}");
}

#[test]
fn alertmanager_config_passes_amtool_check() {
    let said = succeeds(amtool().args(["check-config", "deploy/alertmanager/alertmanager.yml"]));
    assert!(said.contains("2 receivers"), "{said}");
    let config = read("deploy/alertmanager/alertmanager.yml");
    assert!(
        config.contains("routing_key_file: /run/secrets/pagerduty_routing_key"),
        "the PagerDuty key comes from the compose secret's file"
    );
}

/// Each alert of alerts.yml, with its labels, through Alertmanager's routing
/// tree: critical ones page and reach the webhook, warnings the webhook only.
#[test]
fn alertmanager_routes_critical_alerts_to_pagerduty_and_every_alert_to_the_webhook() {
    for rule in alert_rules() {
        let severity = rule.severity.as_deref().expect("severity");
        let receivers = match severity {
            "critical" => "pagerduty,webhook",
            _ => "webhook",
        };
        let said = succeeds(amtool().args([
            "config",
            "routes",
            "test",
            "--config.file=deploy/alertmanager/alertmanager.yml",
            &format!("--verify.receivers={receivers}"),
            &format!("alertname={}", rule.alert),
            &format!("severity={severity}"),
            "job=engram",
            "instance=engram-http:8080",
        ]));
        assert!(said.contains(receivers), "{}: {said}", rule.alert);
    }
}

/// deploy/alertmanager/start.sh with a stand-in `alertmanager` that prints
/// the config it was given.
fn start_script(url: Option<&str>, key: &str) -> (Output, tempfile::TempDir) {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("tempdir");
    let bin = dir.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    let fake = bin.join("alertmanager");
    std::fs::write(
        &fake,
        "#!/bin/sh\necho \"args: $*\"\nfor a; do case $a in --config.file=*) cat \"${a#--config.file=}\";; esac; done\n",
    )
    .unwrap();
    std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
    let key_file = dir.path().join("pagerduty_routing_key");
    std::fs::write(&key_file, key).unwrap();
    // Fails here, naming the package, when amtool (which the script runs) is missing.
    drop(amtool());

    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut cmd = Command::new("sh");
    cmd.arg(repo().join("deploy/alertmanager/start.sh"))
        .arg("--storage.path=/alertmanager")
        .env("PATH", path)
        .env(
            "ALERTMANAGER_TEMPLATE",
            repo().join("deploy/alertmanager/alertmanager.yml"),
        )
        .env("ALERTMANAGER_CONFIG", dir.path().join("alertmanager.yml"))
        .env("PAGERDUTY_ROUTING_KEY_FILE", &key_file)
        .env_remove("ALERT_WEBHOOK_URL");
    if let Some(url) = url {
        cmd.env("ALERT_WEBHOOK_URL", url);
    }
    (output(&mut cmd), dir)
}

#[test]
fn alertmanager_start_script_writes_in_the_webhook_url_and_needs_the_routing_key() {
    // & and \ mean something to sed and awk's gsub: written as they are.
    let url = r"https://hooks.example.com/alerts?token=a&b=\1|c";
    let (out, dir) = start_script(Some(url), "a-routing-key\n");
    let said = text(&out);
    assert!(out.status.success(), "start.sh failed:\n{said}");
    let rendered = dir.path().join("alertmanager.yml");
    assert!(
        said.starts_with(&format!(
            "args: --config.file={} --storage.path=/alertmanager\n",
            rendered.display()
        )),
        "{said}"
    );
    assert!(said.contains(&format!("- url: {url}\n")), "{said}");
    assert!(!said.contains(".invalid"), "placeholder left in:\n{said}");
    succeeds(amtool().arg("check-config").arg(&rendered));

    for (url, key, says) in [
        (None, "a-routing-key", "ALERT_WEBHOOK_URL is not set"),
        (
            Some("hooks.example.com/x"),
            "a-routing-key",
            "http:// or https://",
        ),
        (
            Some("https://hooks.example.com/x"),
            "",
            "set PAGERDUTY_ROUTING_KEY",
        ),
    ] {
        let (out, _dir) = start_script(url, key);
        let said = text(&out);
        assert!(
            !out.status.success() && said.contains(says) && !said.contains("args:"),
            "{url:?}, key {key:?}: expected a refusal saying {says:?}, got:\n{said}"
        );
    }
}

// --- Grafana dashboard --------------------------------------------------------

/// The panels, rows' nested panels included.
fn panels(dashboard: &Value) -> Vec<&Value> {
    let mut out = Vec::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        out.push(panel);
        if let Some(nested) = panel["panels"].as_array() {
            out.extend(nested);
        }
    }
    out
}

fn dashboard() -> Value {
    let text = read("deploy/grafana/engram.json");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("deploy/grafana/engram.json: {e}"))
}

/// Every query of the dashboard: panel title, expr, legend.
fn queries(dashboard: &Value) -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    for panel in panels(dashboard) {
        if panel["type"] == "row" {
            continue;
        }
        let title = panel["title"].as_str().unwrap_or("(untitled)").to_owned();
        for target in panel["targets"].as_array().into_iter().flatten() {
            out.push((
                title.clone(),
                target["expr"].as_str().unwrap_or_default().to_owned(),
                target["legendFormat"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
            ));
        }
    }
    out
}

#[test]
fn dashboard_parses_and_every_panel_queries_exported_metrics() {
    let dashboard = dashboard();
    assert_eq!(dashboard["uid"], "engram");
    let variables: BTreeSet<&str> = dashboard["templating"]["list"]
        .as_array()
        .expect("templating.list")
        .iter()
        .filter_map(|v| v["name"].as_str())
        .collect();

    let mut ids = BTreeSet::new();
    let mut problems = Vec::new();
    for panel in panels(&dashboard) {
        let title = panel["title"].as_str().unwrap_or("(untitled)");
        assert!(
            ids.insert(panel["id"].as_u64().expect("panel id")),
            "{title}: duplicate panel id"
        );
        if panel["type"] == "row" {
            continue;
        }
        let targets = panel["targets"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or(&[]);
        if targets.is_empty() {
            problems.push(format!("{title}: no query"));
        }
        for target in targets {
            let expr = target["expr"].as_str().unwrap_or_default();
            if expr.trim().is_empty() {
                problems.push(format!("{title}: a target without a PromQL expr"));
                continue;
            }
            if target["datasource"]["uid"] != "${datasource}" {
                problems.push(format!("{title}: not on the $datasource variable"));
            }
            let legend = target["legendFormat"].as_str().unwrap_or_default();
            let (found, _) = check_promql(expr, legend);
            problems.extend(found.into_iter().map(|p| format!("{title}: {p}")));
        }
    }
    // The variables' own queries, label_values(SELECTOR, LABEL).
    let label_values = Regex::new(r"^label_values\((.*),\s*([A-Za-z_][A-Za-z0-9_]*)\)$").unwrap();
    for variable in dashboard["templating"]["list"].as_array().unwrap() {
        if variable["type"] != "query" {
            continue;
        }
        let query = variable["query"]["query"].as_str().expect("variable query");
        let cap = label_values
            .captures(query)
            .unwrap_or_else(|| panic!("variable query `{query}` is not label_values(...)"));
        let (found, _) = check_promql(&cap[1], &format!("{{{{{}}}}}", &cap[2]));
        problems.extend(found);
    }
    // Every $variable used is defined ($__ ones are Grafana's).
    let used = Regex::new(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)").unwrap();
    let json = dashboard.to_string();
    for cap in used.captures_iter(&json) {
        let name = &cap[1];
        if !name.starts_with("__") && !variables.contains(name) {
            problems.push(format!("${name} is used but not a dashboard variable"));
        }
    }
    assert!(problems.is_empty(), "{problems:#?}");
}

/// Every engram metric has a place on the dashboard.
#[test]
fn dashboard_shows_every_engram_metric() {
    let mut shown = BTreeSet::new();
    for (_, expr, legend) in queries(&dashboard()) {
        shown.extend(check_promql(&expr, &legend).1);
    }
    let missing: Vec<&str> = ENGRAM_METRICS
        .iter()
        .map(|m| m.name)
        .filter(|name| name.starts_with("engram_") && !shown.contains(name))
        .collect();
    assert!(missing.is_empty(), "not on the dashboard: {missing:?}");
}

/// The dashboard's queries are valid PromQL: promtool checks them as
/// recording rules, with Grafana's variables given values.
#[test]
fn dashboard_queries_are_valid_promql() {
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, (title, expr, _)) in queries(&dashboard()).iter().enumerate() {
        let expr = expr
            .replace("$__rate_interval", "5m")
            .replace("$job", ".+")
            .replace("$instance", ".+")
            .replace("$operation", ".+");
        assert!(!expr.contains('$'), "{title}: a variable left in `{expr}`");
        rules.push_str(&format!(
            "      # {title}\n      - record: dashboard:query_{i}\n        expr: {}\n",
            serde_json::to_string(&expr).unwrap()
        ));
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("dashboard-rules.yml");
    std::fs::write(&file, &rules).unwrap();
    let out = output(promtool().args(["check", "rules"]).arg(&file));
    assert!(
        out.status.success(),
        "promtool rejects a dashboard query:\n{}\n{rules}",
        text(&out)
    );
}

// --- Compose ------------------------------------------------------------------

/// Without Docker: every file the compose file mounts exists, and the host
/// Prometheus scrapes is one engram-http answers (`ENGRAM_ALLOWED_HOSTS`) on
/// the port it binds.
#[test]
fn compose_mounts_existing_files_and_lets_prometheus_scrape_engram() {
    let compose = read("deploy/docker-compose.yml");
    let mount = Regex::new(r#"(?m)^\s*-\s*"?\./([^:"]+):"#).unwrap();
    let mounted: Vec<PathBuf> = mount
        .captures_iter(&compose)
        .map(|c| repo().join("deploy").join(&c[1]))
        .collect();
    assert!(mounted.len() >= 6, "mounts found: {mounted:?}");
    for path in &mounted {
        assert!(
            path.exists(),
            "compose mounts {} which does not exist",
            path.display()
        );
    }

    let prometheus = read("deploy/prometheus/prometheus.yml");
    let job = prometheus
        .split("- job_name: engram")
        .nth(1)
        .expect("a scrape job named engram (the alerts read up{job=\"engram\"})");
    let target = Regex::new(r#"targets:\s*\["([^":]+):(\d+)"\]"#)
        .unwrap()
        .captures(job)
        .expect("the engram job's target");
    let (host, port) = (&target[1], &target[2]);

    let compose = compose_file();
    let service = &compose["services"][host];
    assert!(
        service.is_mapping(),
        "no compose service {host} (Prometheus's target)"
    );
    let env = environment(service);
    let allowed = env
        .get("ENGRAM_ALLOWED_HOSTS")
        .expect("engram-http sets ENGRAM_ALLOWED_HOSTS");
    assert!(
        allowed.split(',').any(|h| h == host),
        "ENGRAM_ALLOWED_HOSTS={allowed} does not let Prometheus's Host: {host}:{port} through"
    );
    assert_eq!(
        env.get("ENGRAM_BIND")
            .map(|b| b.rsplit(':').next().unwrap_or_default()),
        Some(port),
        "{host} does not listen on {port}"
    );
    let compose = read("deploy/docker-compose.yml");
    for secret in [
        "pagerduty_routing_key",
        "environment: PAGERDUTY_ROUTING_KEY",
    ] {
        assert!(compose.contains(secret), "compose lacks `{secret}`");
    }
}

/// The compose file, parsed.
fn compose_file() -> serde_yaml::Value {
    serde_yaml::from_str(&read("deploy/docker-compose.yml")).expect("the compose file is YAML")
}

/// A service's `environment`, as a map (compose allows a map or `K=V` items).
fn environment(service: &serde_yaml::Value) -> std::collections::BTreeMap<String, String> {
    let scalar = |v: &serde_yaml::Value| match v {
        serde_yaml::Value::String(s) => s.clone(),
        serde_yaml::Value::Number(n) => n.to_string(),
        serde_yaml::Value::Bool(b) => b.to_string(),
        _ => String::new(),
    };
    match &service["environment"] {
        serde_yaml::Value::Mapping(map) => {
            map.iter().map(|(k, v)| (scalar(k), scalar(v))).collect()
        }
        serde_yaml::Value::Sequence(items) => items
            .iter()
            .filter_map(|item| item.as_str()?.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect(),
        _ => Default::default(),
    }
}

fn strings(value: &serde_yaml::Value) -> Vec<String> {
    value
        .as_sequence()
        .map(|items| {
            items
                .iter()
                .filter_map(|i| i.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// Every setting a service or the image sets is one engram reads.
fn assert_known_settings(what: &str, env: &std::collections::BTreeMap<String, String>) {
    let known: BTreeSet<&str> = engram::config::reference::SETTINGS
        .iter()
        .map(|s| s.variable)
        .collect();
    for name in env
        .keys()
        .filter(|k| k.starts_with("ENGRAM_") || k.starts_with("OTEL_"))
    {
        assert!(
            known.contains(name.as_str()),
            "{what} sets {name}, which is not in the configuration reference"
        );
    }
}

/// Without Docker: each engram service builds the image, sets only settings
/// engram reads, reaches services the file defines, waits for PostgreSQL to
/// be healthy, keeps its data in a declared volume at the image's VOLUME;
/// the HTTP one publishes the port it binds, answers its own service name
/// and is probed with `engram healthcheck`.
#[test]
fn compose_services_use_settings_engram_reads_and_probes_that_work() {
    let compose = compose_file();
    let image = image();
    let services = compose["services"].as_mapping().expect("services");
    let names: BTreeSet<String> = services
        .keys()
        .filter_map(|k| k.as_str().map(str::to_owned))
        .collect();
    let declared_volumes: BTreeSet<String> = compose["volumes"]
        .as_mapping()
        .map(|m| {
            m.keys()
                .filter_map(|k| k.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    let engram_services: Vec<&str> = ["engram", "engram-http"].into();
    for name in &engram_services {
        let service = &compose["services"][*name];
        assert_eq!(
            service["build"]["dockerfile"].as_str(),
            Some("deploy/Dockerfile"),
            "{name} builds the image"
        );
        let env = environment(service);
        assert_known_settings(&format!("compose service {name}"), &env);
        for url_key in ["ENGRAM_DATABASE_URL", "ENGRAM_CACHE_URL"] {
            let url = env
                .get(url_key)
                .unwrap_or_else(|| panic!("{name} sets {url_key}"));
            let host = url
                .split('@')
                .next_back()
                .and_then(|rest| rest.rsplit("://").next())
                .and_then(|rest| rest.split([':', '/']).next())
                .unwrap_or_default();
            assert!(
                names.contains(host),
                "{name}: {url_key} names {host}, not a service"
            );
            assert!(
                compose["services"][host]["depends_on"].is_null(),
                "{host} is a dependency"
            );
            assert!(
                !service["depends_on"][host]["condition"].is_null(),
                "{name} does not wait for {host}"
            );
        }
        assert_eq!(
            service["depends_on"]["postgres"]["condition"].as_str(),
            Some("service_healthy"),
            "{name} waits for PostgreSQL to be healthy"
        );
        let volumes = strings(&service["volumes"]);
        let data = volumes
            .iter()
            .find(|v| v.ends_with(&format!(":{}", image.volume)))
            .unwrap_or_else(|| {
                panic!(
                    "{name} mounts nothing at the image's VOLUME {}",
                    image.volume
                )
            });
        let volume = data.split(':').next().unwrap_or_default();
        assert!(
            declared_volumes.contains(volume),
            "{name}: volume {volume} is not declared"
        );
    }
    assert!(
        !compose["services"]["postgres"]["healthcheck"].is_null(),
        "the engram services wait for PostgreSQL's health check"
    );

    let http = &compose["services"]["engram-http"];
    let env = environment(http);
    let bind_port = env
        .get("ENGRAM_BIND")
        .and_then(|b| b.rsplit(':').next())
        .expect("engram-http sets ENGRAM_BIND");
    let ports = strings(&http["ports"]);
    assert!(
        ports
            .iter()
            .any(|p| p.rsplit(':').next() == Some(bind_port)),
        "engram-http publishes {ports:?}, not the port it binds ({bind_port})"
    );
    assert!(
        strings(&http["command"])
            .windows(2)
            .any(|w| w == ["--transport", "http"]),
        "engram-http serves HTTP"
    );
    assert_eq!(
        strings(&http["healthcheck"]["test"]),
        ["CMD", "engram", "healthcheck"],
        "engram-http is probed with engram healthcheck (the image has no curl)"
    );
    let allowed = env
        .get("ENGRAM_ALLOWED_HOSTS")
        .expect("ENGRAM_ALLOWED_HOSTS");
    assert!(allowed.split(',').any(|h| h == "engram-http"));
    assert_eq!(
        compose["services"]["engram"]["healthcheck"]["disable"].as_bool(),
        Some(true),
        "the stdio service has no HTTP server to probe"
    );
}

// --- The image ----------------------------------------------------------------

/// What the Dockerfile's final stage sets.
struct Image {
    env: std::collections::BTreeMap<String, String>,
    expose: String,
    volume: String,
    user: String,
    healthcheck: Vec<String>,
    entrypoint: Vec<String>,
    cmd: Vec<String>,
}

/// Reads deploy/Dockerfile's last stage (continuation lines joined).
fn image() -> Image {
    let text = read("deploy/Dockerfile").replace("\\\n", " ");
    let last = text
        .rsplit_once("\nFROM ")
        .map(|(_, stage)| stage.to_owned())
        .expect("a final stage");
    let mut image = Image {
        env: Default::default(),
        expose: String::new(),
        volume: String::new(),
        user: String::new(),
        healthcheck: Vec::new(),
        entrypoint: Vec::new(),
        cmd: Vec::new(),
    };
    let json = |s: &str| -> Vec<String> {
        serde_json::from_str(s.trim()).unwrap_or_else(|e| panic!("not a JSON array: {s}: {e}"))
    };
    for line in last.lines().map(str::trim) {
        let (instruction, rest) = line.split_once(' ').unwrap_or((line, ""));
        match instruction {
            "ENV" => {
                for pair in rest.split_whitespace() {
                    let (k, v) = pair.split_once('=').expect("ENV K=V");
                    image.env.insert(k.to_owned(), v.to_owned());
                }
            }
            "EXPOSE" => image.expose = rest.trim().to_owned(),
            "VOLUME" => image.volume = rest.trim().to_owned(),
            "USER" => image.user = rest.trim().to_owned(),
            "HEALTHCHECK" => {
                let (_, command) = rest.split_once("CMD").expect("HEALTHCHECK ... CMD [...]");
                image.healthcheck = json(command);
            }
            "ENTRYPOINT" => image.entrypoint = json(rest),
            "CMD" => image.cmd = json(rest),
            _ => {}
        }
    }
    image
}

/// Without Docker: the image runs as a numeric non-root user, keeps the
/// SQLite store and the model under its VOLUME, exposes the port it binds;
/// its ENTRYPOINT + CMD, run with its ENV (the volume in a scratch dir, a
/// free port), serves, its HEALTHCHECK passes, and a probe by the pod's
/// address is answered.
#[test]
fn the_image_serves_and_passes_its_health_check_without_docker() {
    let image = image();
    let uid: u32 = image
        .user
        .split(':')
        .next()
        .and_then(|u| u.parse().ok())
        .expect("USER is numeric (runAsNonRoot can check it)");
    assert_ne!(uid, 0, "the image runs as root");
    assert_known_settings("the Dockerfile", &image.env);
    let database = &image.env["ENGRAM_DATABASE_URL"];
    assert!(
        database.starts_with(&format!("sqlite://{}/", image.volume)),
        "the SQLite default {database} is outside the VOLUME {}",
        image.volume
    );
    assert!(image.env["ENGRAM_MODEL_CACHE_DIR"].starts_with(&image.volume));
    let bind = &image.env["ENGRAM_BIND"];
    assert_eq!(
        bind.rsplit(':').next(),
        Some(image.expose.as_str()),
        "EXPOSE is the bound port"
    );
    assert_eq!(image.entrypoint, ["engram"]);
    assert_eq!(
        image.healthcheck.first().map(String::as_str),
        Some("engram")
    );

    let scratch = tempfile::tempdir().expect("a scratch volume");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let env: Vec<(String, String)> = image
        .env
        .iter()
        .map(|(k, v)| {
            let v = v.replace(&image.volume, &scratch.path().display().to_string());
            let v = if k == "ENGRAM_BIND" {
                format!("0.0.0.0:{port}")
            } else {
                v
            };
            (k.clone(), v)
        })
        .collect();
    let engram = env!("CARGO_BIN_EXE_engram");
    let mut server = Command::new(engram)
        .args(&image.cmd)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .env("ENGRAM_MODEL_HUB_URL", "off")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run the image's command");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let healthy = loop {
        let check = Command::new(engram)
            .args(&image.healthcheck[1..])
            .envs(env.iter().map(|(k, v)| (k, v)))
            .output()
            .expect("run the health check");
        if check.status.success() {
            break Ok(());
        }
        if std::time::Instant::now() > deadline {
            break Err(text(&check));
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    };
    let by_pod_ip = get_by_host(port, "/readyz", "10.1.2.3");
    let _ = server.kill();
    let logs = server
        .wait_with_output()
        .map(|o| text(&o))
        .unwrap_or_default();
    if let Err(last) = healthy {
        panic!("the health check never passed: {last}\nserver:\n{logs}");
    }
    assert!(
        by_pod_ip.starts_with("HTTP/1.1 200"),
        "a probe by the pod's address: {by_pod_ip}\nserver:\n{logs}"
    );
    assert!(
        scratch.path().join("engram.db").exists(),
        "the store is not under the volume"
    );
}

/// A plain HTTP/1.1 GET with the given `Host`; the whole answer.
fn get_by_host(port: u16, path: &str, host: &str) -> String {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )
    .expect("send the request");
    let mut answer = String::new();
    stream.read_to_string(&mut answer).expect("read the answer");
    answer
}
