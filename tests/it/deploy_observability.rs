//! deploy/prometheus (alerting rules) and deploy/grafana (the dashboard)
//! checked with Prometheus's own parser: `promtool check rules` accepts the
//! rule file, every dashboard query parses (each one becomes a recording rule
//! of a generated rule file that promtool checks), and every expression of
//! both names only metrics tokengate exports, groups by labels that exist and
//! matches the label values the server writes.
//!
//! promtool comes from Debian's `prometheus` package, which `.ci/setup`
//! installs; a missing promtool fails the test, naming the fix.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

use crate::support::tools_dir;

const RULES: &str = "deploy/prometheus/tokengate-alerts.yaml";
const DASHBOARD: &str = "deploy/grafana/tokengate-dashboard.json";

/// The metrics tokengate exports, as scraped (counters with `_total`,
/// histograms as their `_bucket`, `_sum` and `_count` series). The README's
/// metrics reference table, which its own test checks against `/metrics`, is
/// the source of truth: when the README has that table, [`exported_metrics`]
/// reads the names from it and this list is not used.
const EXPORTED: &[&str] = &[
    "grpc_server_started_total",
    "grpc_server_handled_total",
    "grpc_server_handling_seconds_bucket",
    "grpc_server_handling_seconds_sum",
    "grpc_server_handling_seconds_count",
    "tokengate_decisions_total",
    "tokengate_rule_decisions_total",
    "tokengate_tokens_issued_total",
    "tokengate_jwt_verifications_total",
    "tokengate_jwt_verification_seconds_bucket",
    "tokengate_jwt_verification_seconds_sum",
    "tokengate_jwt_verification_seconds_count",
    "tokengate_ext_authz_checks_total",
    "tokengate_config_generation",
    "tokengate_config_last_load_timestamp_seconds",
    "tokengate_config_info",
    "tokengate_build_info",
    "tokengate_jwks_keys",
    "tokengate_jwks_loaded",
    "tokengate_jwks_stale",
    "tokengate_jwks_last_success_timestamp_seconds",
    "tokengate_jwks_key_age_seconds",
    "tokengate_jwks_fetches_total",
    "tokengate_jwks_unknown_kid_refetches_total",
    "tokengate_jwks_refetches_suppressed_total",
    "tokengate_connections_refused_total",
    "tokengate_config_reloads_total",
    "tokengate_config_last_reload_success_timestamp_seconds",
    "process_cpu_seconds_total",
    "process_resident_memory_bytes",
    "process_virtual_memory_bytes",
    "process_open_fds",
    "process_max_fds",
    "process_start_time_seconds",
];

/// Every label tokengate's metrics carry, plus the ones Prometheus attaches
/// (`job`, `instance`) and the histogram's `le`: a query may group only by these.
const LABELS: &[&str] = &[
    "job",
    "instance",
    "le",
    "grpc_service",
    "grpc_method",
    "grpc_type",
    "grpc_code",
    "action",
    "decision",
    "reason",
    "rule",
    "project",
    "service",
    "issuer",
    "outcome",
    "route",
    "fingerprint",
    "version",
    "git_sha",
    "rustc",
    "port",
    "result",
    "limit",
    "backend",
    "fact",
    "database",
];

/// The `grpc_code` values the server writes (go-grpc-prometheus's spelling).
const GRPC_CODES: &[&str] = &[
    "OK",
    "Canceled",
    "Cancelled",
    "Unknown",
    "InvalidArgument",
    "DeadlineExceeded",
    "NotFound",
    "AlreadyExists",
    "PermissionDenied",
    "ResourceExhausted",
    "FailedPrecondition",
    "Aborted",
    "OutOfRange",
    "Unimplemented",
    "Internal",
    "Unavailable",
    "DataLoss",
    "Unauthenticated",
];

/// The `decision` values (the audit event's decisions).
const DECISIONS: &[&str] = &[
    "allow",
    "pass_through",
    "deny",
    "unauthenticated",
    "invalid",
    "limited",
    "shed",
    "unavailable",
    "error",
];

/// PromQL keywords, aggregation operators and binary keywords: identifiers
/// that are not metric names even when no `(` follows them.
const KEYWORDS: &[&str] = &[
    "and",
    "or",
    "unless",
    "bool",
    "offset",
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "atan2",
    "inf",
    "nan",
    "sum",
    "min",
    "max",
    "avg",
    "group",
    "stddev",
    "stdvar",
    "count",
    "count_values",
    "bottomk",
    "topk",
    "quantile",
    "limitk",
    "limit_ratio",
];

/// Clauses whose parenthesised list holds label names, not expressions.
const GROUPING: &[&str] = &[
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
];

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Runs promtool with `args`; a missing promtool fails with the fix.
fn promtool(args: &[&std::ffi::OsStr]) -> std::process::Output {
    match Command::new("promtool").args(args).output() {
        Ok(output) => output,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
            "promtool is missing: run `bash .ci/setup` (it installs Debian's `prometheus` package, which provides promtool)"
        ),
        Err(e) => panic!("promtool did not run: {e}"),
    }
}

/// `promtool check rules path`: its exit status and its whole report.
fn check_rules(path: &Path) -> (bool, String) {
    let output = promtool(&["check".as_ref(), "rules".as_ref(), path.as_os_str()]);
    let report = String::from_utf8_lossy(&output.stdout).into_owned()
        + &String::from_utf8_lossy(&output.stderr);
    (output.status.success(), report)
}

/// The rule file's one YAML document, parsed by PyYAML (duplicate keys refused).
fn rules() -> Value {
    let python = tools_dir().join("venv/bin/python");
    assert!(
        python.is_file(),
        "{} is missing: run `bash .ci/setup` (it installs PyYAML from .ci/requirements.txt)",
        python.display()
    );
    let path = root().join(RULES);
    let output = Command::new(&python)
        .arg(root().join("tests/deploy/yaml_to_json.py"))
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{RULES} did not parse: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let parsed: BTreeMap<String, Vec<Value>> = serde_json::from_slice(&output.stdout).unwrap();
    let docs = &parsed[&path.to_string_lossy().into_owned()];
    assert_eq!(docs.len(), 1, "{RULES}: expected one YAML document");
    docs[0].clone()
}

/// Every rule of the rule file, with its group's name.
fn all_rules(rules: &Value) -> Vec<(String, Value)> {
    let groups = rules["groups"].as_array().expect("a `groups` list");
    groups
        .iter()
        .flat_map(|g| {
            let name = g["name"].as_str().unwrap().to_owned();
            g["rules"]
                .as_array()
                .unwrap()
                .iter()
                .map(move |r| (name.clone(), r.clone()))
        })
        .collect()
}

fn dashboard() -> Value {
    let text = std::fs::read_to_string(root().join(DASHBOARD)).unwrap();
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{DASHBOARD}: {e}"))
}

/// The metric names the README's metrics reference lists, when it has one: a
/// table under a heading that says "Metrics", whose first column names each
/// metric in backticks. Counters gain `_total` and histograms their series
/// unless the table already spells them that way.
fn readme_metrics() -> Option<BTreeSet<String>> {
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    let mut names = BTreeSet::new();
    let mut in_section: Option<usize> = None;
    for line in readme.lines() {
        let level = line.chars().take_while(|c| *c == '#').count();
        if level > 0 && line[level..].starts_with(' ') {
            if in_section.is_some_and(|l| level <= l) {
                in_section = None;
            }
            if line.contains("Metrics") {
                in_section = Some(level);
            }
            continue;
        }
        if in_section.is_none() || !line.starts_with('|') {
            continue;
        }
        let first = line.trim_start_matches('|').split('|').next().unwrap_or("");
        let lower = line.to_lowercase();
        for name in first.split('`').skip(1).step_by(2) {
            let name = name.split('{').next().unwrap().trim();
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                continue;
            }
            names.insert(name.to_owned());
            if lower.contains("histogram") {
                for suffix in ["_bucket", "_sum", "_count"] {
                    names.insert(format!("{name}{suffix}"));
                }
            } else if lower.contains("counter") && !name.ends_with("_total") {
                names.insert(format!("{name}_total"));
            }
        }
    }
    (!names.is_empty()).then_some(names)
}

/// The exported metric names: the README's table if there is one, else [`EXPORTED`].
fn exported_metrics() -> BTreeSet<String> {
    readme_metrics().unwrap_or_else(|| EXPORTED.iter().map(|s| (*s).to_owned()).collect())
}

/// What one PromQL expression refers to.
#[derive(Debug, Default, PartialEq)]
struct Names {
    /// Metric names (identifiers that are neither a function, a keyword nor a label).
    metrics: BTreeSet<String>,
    /// Labels named in `by`, `without`, `on`, `ignoring` and `group_*` lists.
    grouping: BTreeSet<String>,
    /// Label matchers: label name, and the values a `=` or `=~` matcher accepts.
    matchers: Vec<(String, Vec<String>)>,
}

fn is_ident_start(c: char) -> bool {
    c.is_ascii_alphabetic() || c == '_' || c == ':'
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == ':'
}

/// The index just past the string literal that opens at `start`.
fn skip_string(chars: &[char], start: usize) -> usize {
    let quote = chars[start];
    let mut i = start + 1;
    while i < chars.len() && chars[i] != quote {
        if chars[i] == '\\' && quote != '`' {
            i += 1;
        }
        i += 1;
    }
    i + 1
}

/// The index just past the bracket that closes the one at `start`.
fn skip_brackets(chars: &[char], start: usize, close: char) -> usize {
    let open = chars[start];
    let mut depth = 0;
    let mut i = start;
    while i < chars.len() {
        match chars[i] {
            '"' | '\'' | '`' => {
                i = skip_string(chars, i);
                continue;
            }
            c if c == open => depth += 1,
            c if c == close => {
                depth -= 1;
                if depth == 0 {
                    return i + 1;
                }
            }
            _ => {}
        }
        i += 1;
    }
    i
}

/// The label matchers inside one `{...}`: `name op "value"`, comma-separated.
fn matchers(chars: &[char]) -> Vec<(String, Vec<String>)> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        if !is_ident_start(chars[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < chars.len() && is_ident(chars[i]) {
            i += 1;
        }
        let name: String = chars[start..i].iter().collect();
        while i < chars.len() && chars[i].is_whitespace() {
            i += 1;
        }
        let op_start = i;
        while i < chars.len() && matches!(chars[i], '=' | '!' | '~') {
            i += 1;
        }
        let op: String = chars[op_start..i].iter().collect();
        while i < chars.len() && chars[i].is_whitespace() {
            i += 1;
        }
        if i < chars.len() && matches!(chars[i], '"' | '\'' | '`') {
            let end = skip_string(chars, i);
            let value: String = chars[i + 1..end - 1].iter().collect();
            i = end;
            let values = match op.as_str() {
                "=" => vec![value],
                // A regex matcher: each alternative of a plain `a|b|c` regex.
                "=~" => value.split('|').map(str::to_owned).collect(),
                _ => continue,
            };
            out.push((name, values));
        }
    }
    out
}

/// The metric names, grouping labels and matchers of a PromQL expression.
/// promtool checks the syntax; this finds the names in a valid expression:
/// strings and durations hold none, `{...}` holds matchers, a grouping
/// clause's list holds labels, and an identifier followed by `(` is a function.
fn promql_names(expr: &str) -> Names {
    let chars: Vec<char> = expr.chars().collect();
    let mut names = Names::default();
    let mut i = 0;
    let mut grouping_next = false;
    while i < chars.len() {
        let c = chars[i];
        if matches!(c, '"' | '\'' | '`') {
            i = skip_string(&chars, i);
        } else if c == '{' {
            let end = skip_brackets(&chars, i, '}');
            names
                .matchers
                .extend(matchers(&chars[i + 1..end.saturating_sub(1)]));
            i = end;
        } else if c == '[' {
            i = skip_brackets(&chars, i, ']');
        } else if c == '(' && grouping_next {
            let end = skip_brackets(&chars, i, ')');
            let list: String = chars[i + 1..end - 1].iter().collect();
            names.grouping.extend(
                list.split(',')
                    .map(str::trim)
                    .filter(|l| !l.is_empty())
                    .map(str::to_owned),
            );
            grouping_next = false;
            i = end;
        } else if c.is_ascii_digit()
            || (c == '.' && chars.get(i + 1).is_some_and(char::is_ascii_digit))
        {
            // A number or a duration (`0.99`, `1e3`, `0x1f`, `5m`): never a name.
            while i < chars.len() && (is_ident(chars[i]) || chars[i] == '.') {
                i += 1;
            }
        } else if is_ident_start(c) {
            let start = i;
            while i < chars.len() && is_ident(chars[i]) {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            let lower = word.to_lowercase();
            let next = chars[i..].iter().find(|c| !c.is_whitespace());
            grouping_next = GROUPING.contains(&lower.as_str()) && next == Some(&'(');
            if !KEYWORDS.contains(&lower.as_str()) && next != Some(&'(') {
                names.metrics.insert(word);
            }
        } else {
            i += 1;
        }
    }
    names
}

/// `expr` with Grafana's variables replaced by valid literals: the interval
/// variables by durations, the dashboard's own variables (used inside label
/// matchers) by a label value. An unknown variable fails the test.
fn substitute(expr: &str, variables: &BTreeSet<String>) -> String {
    let builtin = |name: &str| match name {
        "__rate_interval" | "__interval" => Some("5m".to_owned()),
        "__range" => Some("6h".to_owned()),
        "__range_s" => Some("21600".to_owned()),
        "__range_ms" | "__interval_ms" => Some("300000".to_owned()),
        _ => None,
    };
    let chars: Vec<char> = expr.chars().collect();
    let mut out = String::new();
    let mut i = 0;
    while i < chars.len() {
        let (name, end) = if chars[i] == '$' && chars.get(i + 1) == Some(&'{') {
            let close = chars[i..].iter().position(|c| *c == '}').unwrap() + i;
            let inner: String = chars[i + 2..close].iter().collect();
            (inner.split(':').next().unwrap().to_owned(), close + 1)
        } else if chars[i] == '$' {
            let len = chars[i + 1..].iter().take_while(|c| is_ident(**c)).count();
            (chars[i + 1..i + 1 + len].iter().collect(), i + 1 + len)
        } else if chars[i] == '[' && chars.get(i + 1) == Some(&'[') {
            let close = chars[i..].iter().position(|c| *c == ']').unwrap() + i;
            (chars[i + 2..close].iter().collect(), close + 2)
        } else {
            out.push(chars[i]);
            i += 1;
            continue;
        };
        let value = builtin(&name)
            .or_else(|| variables.contains(&name).then(|| "tokengate".to_owned()))
            .unwrap_or_else(|| panic!("`{expr}` uses ${name}, which is not a dashboard variable"));
        out.push_str(&value);
        i = end;
    }
    out
}

/// Every string under an `expr` key anywhere in `value`, with the title of
/// the panel it belongs to.
fn exprs(value: &Value, panel: &str, out: &mut Vec<(String, String)>) {
    match value {
        Value::Object(map) => {
            let title = map
                .get("title")
                .and_then(Value::as_str)
                .unwrap_or(panel)
                .to_owned();
            for (key, v) in map {
                match (key.as_str(), v) {
                    ("expr", Value::String(e)) => out.push((title.clone(), e.clone())),
                    _ => exprs(v, &title, out),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| exprs(v, panel, out)),
        _ => {}
    }
}

fn variables(dashboard: &Value) -> &Vec<Value> {
    dashboard["templating"]["list"]
        .as_array()
        .expect("templating.list")
}

/// Every PromQL query of the dashboard, variables substituted, with where it
/// comes from: each target's `expr`, and the selector of each `label_values`
/// variable query.
fn dashboard_queries(dashboard: &Value) -> Vec<(String, String)> {
    let names: BTreeSet<String> = variables(dashboard)
        .iter()
        .map(|v| v["name"].as_str().unwrap().to_owned())
        .collect();
    let mut found = Vec::new();
    exprs(&dashboard["panels"], "", &mut found);
    let mut queries: Vec<(String, String)> = found
        .into_iter()
        .map(|(title, e)| (format!("panel {title:?}"), substitute(&e, &names)))
        .collect();
    for var in variables(dashboard) {
        if var["type"] != "query" {
            continue;
        }
        let query = var["query"]["query"]
            .as_str()
            .or_else(|| var["query"].as_str())
            .unwrap();
        let args = query
            .strip_prefix("label_values(")
            .and_then(|q| q.strip_suffix(')'))
            .unwrap_or_else(|| {
                panic!(
                    "variable {}: not a label_values query: {query}",
                    var["name"]
                )
            });
        let (selector, label) = args.rsplit_once(',').unwrap();
        assert!(
            LABELS.contains(&label.trim()),
            "variable {}: no metric has the label {label:?}",
            var["name"]
        );
        queries.push((
            format!("variable {}", var["name"]),
            substitute(selector.trim(), &names),
        ));
    }
    queries
}

/// Checks that `expr` names only exported metrics and known labels, and
/// matches only label values the server writes.
fn check_names(origin: &str, expr: &str, exported: &BTreeSet<String>) -> Vec<String> {
    let names = promql_names(expr);
    let mut problems = Vec::new();
    for metric in &names.metrics {
        if !exported.contains(metric) {
            problems.push(format!(
                "{origin}: `{metric}` is not an exported metric, in `{expr}`"
            ));
        }
    }
    if names.metrics.is_empty() {
        problems.push(format!("{origin}: names no metric: `{expr}`"));
    }
    for label in &names.grouping {
        if !LABELS.contains(&label.as_str()) {
            problems.push(format!(
                "{origin}: groups by `{label}`, which no metric has, in `{expr}`"
            ));
        }
    }
    for (label, values) in &names.matchers {
        if !LABELS.contains(&label.as_str()) {
            problems.push(format!(
                "{origin}: matches `{label}`, which no metric has, in `{expr}`"
            ));
        }
        let known = match label.as_str() {
            "grpc_code" => GRPC_CODES,
            "decision" => DECISIONS,
            "outcome" if expr.contains("tokengate_jwks_fetches_total") => &["ok", "error"][..],
            "result" if expr.contains("tokengate_config_reloads_total") => {
                &["success", "failure"][..]
            }
            _ => continue,
        };
        for value in values {
            if !known.contains(&value.as_str()) {
                problems.push(format!(
                    "{origin}: `{label}` is never {value:?} (it is one of {known:?}), in `{expr}`"
                ));
            }
        }
    }
    problems
}

/// The GitHub anchor of every README heading.
fn readme_anchors() -> BTreeSet<String> {
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    let mut in_code = false;
    let mut anchors = BTreeSet::new();
    for line in readme.lines() {
        if line.starts_with("```") {
            in_code = !in_code;
        }
        if in_code || !line.starts_with('#') {
            continue;
        }
        let text = line.trim_start_matches('#').trim().to_lowercase();
        let anchor: String = text
            .chars()
            .filter(|c| c.is_alphanumeric() || *c == ' ' || *c == '-' || *c == '_')
            .map(|c| if c == ' ' { '-' } else { c })
            .collect();
        anchors.insert(anchor);
    }
    anchors
}

#[test]
fn the_name_finder_sees_metrics_and_nothing_else() {
    let names = promql_names(
        r#"sum by (job, le) (rate(foo_bucket{a="x{y}", grpc_code=~"Internal|Unavailable"}[5m] offset 1h))
           / on (job) group_left (issuer) max without(instance) (bar) > 0.5e-3 and time() - baz:rec
           or histogram_quantile(0.99, qux) unless vector(1) * 2 AND ignoring(x) topk(3, quux)"#,
    );
    let metrics: Vec<&str> = names.metrics.iter().map(String::as_str).collect();
    assert_eq!(metrics, ["bar", "baz:rec", "foo_bucket", "quux", "qux"]);
    let grouping: Vec<&str> = names.grouping.iter().map(String::as_str).collect();
    assert_eq!(grouping, ["instance", "issuer", "job", "le", "x"]);
    assert_eq!(
        names.matchers,
        [
            ("a".to_owned(), vec!["x{y}".to_owned()]),
            (
                "grpc_code".to_owned(),
                vec!["Internal".to_owned(), "Unavailable".to_owned()]
            ),
        ]
    );
    let exported = exported_metrics();
    assert!(
        check_names("self-test", "rate(not_a_metric_total[5m])", &exported)[0]
            .contains("`not_a_metric_total` is not an exported metric")
    );
    assert!(
        check_names(
            "self-test",
            r#"grpc_server_handled_total{grpc_code="INTERNAL"}"#,
            &exported
        )[0]
        .contains(r#"is never "INTERNAL""#)
    );
    let vars = BTreeSet::from(["job".to_owned()]);
    assert_eq!(
        substitute(
            r#"rate(x{job=~"$job", j="${job:regex}"}[$__rate_interval])"#,
            &vars
        ),
        r#"rate(x{job=~"tokengate", j="tokengate"}[5m])"#
    );
}

#[test]
fn promtool_accepts_the_alerting_rules() {
    let (ok, report) = check_rules(&root().join(RULES));
    assert!(ok, "promtool check rules {RULES}:\n{report}");
    assert!(report.contains("SUCCESS"), "{report}");
}

#[test]
fn every_alert_is_actionable_and_names_only_exported_metrics() {
    let rules = rules();
    let exported = exported_metrics();
    let anchors = readme_anchors();
    let all = all_rules(&rules);
    assert!(!all.is_empty(), "{RULES} has no rules");
    let mut problems = Vec::new();
    for (group, rule) in &all {
        let expr = rule["expr"].as_str().unwrap();
        let Some(alert) = rule["alert"].as_str() else {
            problems.extend(check_names(&format!("{group} record"), expr, &exported));
            continue;
        };
        let origin = format!("{group}/{alert}");
        problems.extend(check_names(&origin, expr, &exported));
        if rule["for"].as_str().is_none_or(|f| f.is_empty()) {
            problems.push(format!("{origin}: no `for`"));
        }
        let severity = rule["labels"]["severity"].as_str().unwrap_or("");
        if !["critical", "warning"].contains(&severity) {
            problems.push(format!(
                "{origin}: severity {severity:?} is not critical or warning"
            ));
        }
        for key in ["summary", "description"] {
            if rule["annotations"][key]
                .as_str()
                .is_none_or(|s| s.trim().is_empty())
            {
                problems.push(format!("{origin}: no {key} annotation"));
            }
        }
        match rule["annotations"]["runbook_url"]
            .as_str()
            .and_then(|u| u.strip_prefix("README.md#"))
        {
            Some(anchor) if anchors.contains(anchor) => {}
            other => problems.push(format!(
                "{origin}: runbook_url {other:?} is not README.md#<a README heading>"
            )),
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn the_alerts_cover_keys_errors_latency_denials_and_descriptors() {
    let rules = rules();
    let exprs: Vec<String> = all_rules(&rules)
        .iter()
        .filter(|(_, r)| r["alert"].is_string())
        .map(|(_, r)| {
            r["expr"]
                .as_str()
                .unwrap()
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect();
    // Each concern is one alert whose expression holds every one of its parts.
    for (concern, parts) in [
        ("JWKS served stale", &["tokengate_jwks_stale == 1"][..]),
        (
            "JWKS fetches failing",
            &[
                "tokengate_jwks_fetches_total{outcome=\"error\"}",
                "outcome=\"ok\"",
            ][..],
        ),
        (
            "JWKS last success long ago",
            &["time() - tokengate_jwks_last_success_timestamp_seconds"][..],
        ),
        ("JWKS never loaded", &["tokengate_jwks_loaded == 0"][..]),
        (
            "gRPC server error ratio",
            &[
                "grpc_server_handled_total{grpc_code=~",
                "Internal",
                "Unavailable",
                "/",
            ][..],
        ),
        (
            "decision error ratio",
            &["tokengate_decisions_total{decision=\"error\"}", "/"][..],
        ),
        (
            "TokenService p99 latency",
            &[
                "histogram_quantile(0.99",
                "grpc_server_handling_seconds_bucket",
                "grpc_service=\"tokengate.v1.TokenService\"",
            ][..],
        ),
        (
            "denials spike against the 1h average",
            &["deny", "unauthenticated", "[5m]", "[1h]"][..],
        ),
        (
            "file descriptors near the limit",
            &["process_open_fds / process_max_fds"][..],
        ),
    ] {
        assert!(
            exprs.iter().any(|e| parts.iter().all(|p| e.contains(p))),
            "no alert for {concern} (an expression with {parts:?}) in {RULES}"
        );
    }
}

#[test]
fn every_dashboard_query_parses_and_names_only_exported_metrics() {
    let dashboard = dashboard();
    let queries = dashboard_queries(&dashboard);
    assert!(queries.len() > 20, "only {} queries found", queries.len());
    let exported = exported_metrics();
    let problems: Vec<String> = queries
        .iter()
        .flat_map(|(origin, expr)| check_names(origin, expr, &exported))
        .collect();
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    // Prometheus's own parser: each query becomes a recording rule, and
    // `promtool check rules` parses every rule's expression.
    let rules: Vec<Value> = queries
        .iter()
        .enumerate()
        .map(|(n, (_, expr))| serde_json::json!({ "record": format!("dashboard:query_{n}"), "expr": expr }))
        .collect();
    let file = serde_json::json!({ "groups": [{ "name": "dashboard", "rules": rules }] });
    let dir = tempfile::tempdir().unwrap();
    // JSON is YAML, which is what promtool reads.
    let path = dir.path().join("dashboard-queries.yaml");
    std::fs::write(&path, serde_json::to_string_pretty(&file).unwrap()).unwrap();
    let (ok, report) = check_rules(&path);
    let listing: Vec<String> = queries
        .iter()
        .enumerate()
        .map(|(n, (origin, expr))| format!("dashboard:query_{n} ({origin}): {expr}"))
        .collect();
    assert!(
        ok,
        "a dashboard query does not parse:\n{report}\n{}",
        listing.join("\n")
    );
    assert!(
        report.contains(&format!("SUCCESS: {} rules found", queries.len())),
        "{report}"
    );
}

#[test]
fn promtool_refuses_a_query_that_does_not_parse() {
    // The dashboard check relies on promtool parsing every recording rule.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.yaml");
    std::fs::write(
        &path,
        r#"{"groups": [{"name": "g", "rules": [{"record": "r:x", "expr": "sum(rate(x[5m])"}]}]}"#,
    )
    .unwrap();
    let (ok, report) = check_rules(&path);
    assert!(!ok, "promtool accepted an unbalanced expression:\n{report}");
}

#[test]
fn the_dashboard_has_its_variables_and_the_panels_operators_need() {
    let dashboard = dashboard();
    let schema = dashboard["schemaVersion"].as_u64().unwrap();
    assert!(schema >= 36, "schemaVersion {schema} is below 36");
    let vars = variables(&dashboard);
    let var = |name: &str| {
        vars.iter()
            .find(|v| v["name"] == name)
            .unwrap_or_else(|| panic!("no `{name}` variable"))
    };
    assert_eq!(var("datasource")["type"], "datasource");
    assert_eq!(var("datasource")["query"], "prometheus");
    for name in ["job", "instance"] {
        assert_eq!(var(name)["type"], "query", "{name}");
        assert_eq!(var(name)["datasource"]["uid"], "${datasource}", "{name}");
    }
    // Every panel and every target reads the chosen data source, and filters
    // by the chosen job and instance.
    let mut ids = BTreeSet::new();
    let mut panels: Vec<&Value> = Vec::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        panels.push(panel);
        panels.extend(panel["panels"].as_array().into_iter().flatten());
    }
    for panel in panels {
        let id = panel["id"].as_u64().unwrap();
        assert!(ids.insert(id), "panel id {id} is used twice");
        assert!(panel["gridPos"]["w"].is_u64(), "panel {id} has no gridPos");
        if panel["type"] == "row" {
            continue;
        }
        let title = panel["title"].as_str().unwrap();
        assert_eq!(panel["datasource"]["uid"], "${datasource}", "{title}");
        let targets = panel["targets"].as_array().unwrap();
        assert!(!targets.is_empty(), "{title}: no query");
        for target in targets {
            let expr = target["expr"].as_str().unwrap();
            assert_eq!(target["datasource"]["uid"], "${datasource}", "{title}");
            for selector in ["job=~\"$job\"", "instance=~\"$instance\""] {
                assert!(
                    expr.contains(selector),
                    "{title}: `{expr}` does not filter by {selector}"
                );
            }
        }
    }
    let mut found = Vec::new();
    exprs(&dashboard["panels"], "", &mut found);
    let shown: BTreeSet<String> = found
        .iter()
        .flat_map(|(_, e)| {
            promql_names(&substitute(
                e,
                &BTreeSet::from(["job".into(), "instance".into()]),
            ))
            .metrics
        })
        .collect();
    for metric in [
        "grpc_server_handled_total",
        "grpc_server_handling_seconds_bucket",
        "tokengate_decisions_total",
        "tokengate_rule_decisions_total",
        "tokengate_tokens_issued_total",
        "tokengate_jwt_verifications_total",
        "tokengate_jwt_verification_seconds_bucket",
        "tokengate_jwks_key_age_seconds",
        "tokengate_jwks_stale",
        "tokengate_jwks_fetches_total",
        "tokengate_ext_authz_checks_total",
        "process_resident_memory_bytes",
        "process_cpu_seconds_total",
        "process_open_fds",
        "process_max_fds",
        "tokengate_build_info",
        "tokengate_config_info",
    ] {
        assert!(shown.contains(metric), "no panel shows {metric}");
    }
}
