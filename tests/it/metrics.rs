//! `/metrics` on the real binary: the README's metrics table is what it
//! exposes, `promtool check metrics` accepts it, and a real Prometheus
//! (Debian's package, installed by `.ci/setup`) scrapes it and reports the
//! counters and histogram counts of the calls this test makes.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write as _;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tonic::Code;

use crate::support;
use support::authz::{envoy_check, ext_authz_section, verdict};
use support::binary::{Running, loopback};
use support::fact_server::FactServer;
use support::fixtures::ROOMS_AND_WEBINARS;
use support::server::{TestServer, config_text};
use tokengate::grpc::pb;
use tokengate::grpc::pb::token_service_client::TokenServiceClient;

/// A binary serving the rooms-and-webinars rules with ext_authz on.
async fn start() -> (Running, (support::JwksServer, FactServer), support::TestKey) {
    let (jwks, es256, _rs256) = support::server::test_keys().await;
    // A generous rate limit, so its counter has samples to check; an HTTP
    // fact a rule reads, so the fact families have samples too.
    let limit = "[[limits.rate]]\nname = \"per-caller\"\nkey = \"caller\"\nrate = \"1000/s\"\n";
    let flags = FactServer::start().await;
    let fact = format!(
        "[[facts]]\nname = \"flag\"\nkind = \"http\"\nurl = \"{}/flags/{{caller.subject}}\"\n\n[[rules]]\nname = \"flagged\"\nactions = [\"rtc\"]\nchannel = \"flagged-*\"\ncondition = 'facts.flag != null'\nproject = \"main\"\naccount_claim = \"sub\"\n",
        flags.url()
    );
    let rules = format!("{ROOMS_AND_WEBINARS}\n{fact}");
    let config = loopback(&format!(
        "{}\n{limit}\n{}",
        config_text(&jwks.jwks_url(), &rules),
        ext_authz_section("")
    ));
    let server = Running::start_config(&config);
    server.wait_ready().await;
    (server, (jwks, flags), es256)
}

/// One allowed, one denied and one unauthenticated `IssueRtcToken`, and one allowed Check.
async fn make_calls(server: &Running, es256: &support::TestKey) {
    let member = es256.mint(&TestServer::claims(
        "alice",
        json!({"teams": ["blue"], "agora_uid": 4242}),
    ));
    let mut client = TokenServiceClient::new(server.channel().await);
    let rtc = |channel: &str| support::fixtures::rtc(channel, pb::Role::Subscriber);
    client
        .issue_rtc_token(TestServer::authed(&member, rtc("team-blue-a")))
        .await
        .unwrap();
    let denied = client
        .issue_rtc_token(TestServer::authed(&member, rtc("team-red-a")))
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied);
    let unauthenticated = client
        .issue_rtc_token(tonic::Request::new(rtc("team-blue-a")))
        .await
        .unwrap_err();
    assert_eq!(unauthenticated.code(), Code::Unauthenticated);
    let mut check =
        envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient::new(
            server.channel().await,
        );
    let bearer = format!("Bearer {member}");
    let got = verdict(
        check
            .check(envoy_check(
                "GET",
                "/rooms/team-blue-a/join",
                &[("authorization", &bearer)],
            ))
            .await
            .unwrap()
            .into_inner(),
    );
    assert!(matches!(got, support::authz::Verdict::Ok { .. }), "{got:?}");
    // The flag service has no flag for alice (404, an empty fact): denied.
    let flagged = client
        .issue_rtc_token(TestServer::authed(&member, rtc("flagged-1")))
        .await
        .unwrap_err();
    assert_eq!(flagged.code(), Code::PermissionDenied);
}

async fn scrape(server: &Running, accept: Option<&str>) -> (String, String) {
    let mut request = reqwest::Client::new().get(format!("http://{}/metrics", server.admin));
    if let Some(accept) = accept {
        request = request.header("accept", accept);
    }
    let response = request.send().await.unwrap();
    assert_eq!(response.status(), 200);
    let content_type = response.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_owned();
    (content_type, response.text().await.unwrap())
}

/// `(name, type, labels)` rows of the README's "Metrics" table.
fn readme_metrics() -> BTreeMap<String, (String, BTreeSet<String>)> {
    let readme = include_str!("../../README.md");
    let section = readme
        .split("\n## Metrics\n")
        .nth(1)
        .and_then(|rest| rest.split("\n## ").next())
        .expect("a Metrics section");
    section
        .lines()
        .filter(|l| l.starts_with("| `"))
        .map(|line| {
            let cells: Vec<&str> = line.trim_matches('|').split('|').map(str::trim).collect();
            let labels = cells[2]
                .split('`')
                .skip(1)
                .step_by(2)
                .map(str::to_owned)
                .collect();
            (
                cells[0].trim_matches('`').to_owned(),
                (cells[1].to_owned(), labels),
            )
        })
        .collect()
}

/// `(family, type)` from the classic exposition's TYPE lines, and the label
/// names seen on each family's samples.
/// The label names of a sample's label set, `rest` starting right after its
/// `{`: values are quoted and may hold `,`, `=`, `}` (a route template's
/// `{channel}`) and escaped quotes, so they are skipped as quoted strings.
fn label_names(rest: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut chars = rest.chars();
    let mut name = String::new();
    while let Some(c) = chars.next() {
        match c {
            '}' => break,
            ',' | ' ' => {}
            '=' => {
                assert_eq!(chars.next(), Some('"'), "a quoted value in {rest}");
                while let Some(v) = chars.next() {
                    match v {
                        '\\' => {
                            chars.next();
                        }
                        '"' => break,
                        _ => {}
                    }
                }
                names.push(std::mem::take(&mut name));
            }
            c => name.push(c),
        }
    }
    names
}

fn exposed(text: &str) -> BTreeMap<String, (String, BTreeSet<String>)> {
    let mut families: BTreeMap<String, (String, BTreeSet<String>)> = BTreeMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap();
            families.insert(name.to_owned(), (kind.to_owned(), BTreeSet::new()));
        }
    }
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let name = line.split(['{', ' ']).next().unwrap();
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|suffix| {
                name.strip_suffix(suffix)
                    .filter(|base| families.get(*base).is_some_and(|(k, _)| k == "histogram"))
            })
            .unwrap_or(name);
        let Some((_, labels)) = families.get_mut(family) else {
            panic!("sample {name} has no TYPE line");
        };
        if let Some((_, rest)) = line.split_once('{') {
            for key in label_names(rest) {
                if key != "le" {
                    labels.insert(key);
                }
            }
        }
    }
    families
}

#[tokio::test]
async fn the_readme_table_is_what_metrics_exposes_and_promtool_accepts_it() {
    let (server, _jwks, es256) = start().await;
    make_calls(&server, &es256).await;
    let (content_type, classic) = scrape(&server, None).await;
    assert!(
        content_type.starts_with("text/plain; version=0.0.4"),
        "{content_type}"
    );
    let (content_type, openmetrics) =
        scrape(&server, Some("application/openmetrics-text; version=1.0.0")).await;
    assert!(
        content_type.starts_with("application/openmetrics-text"),
        "{content_type}"
    );
    assert!(openmetrics.ends_with("# EOF\n"));
    assert!(!classic.contains("# EOF"));

    let documented = readme_metrics();
    let seen = exposed(&classic);
    let documented_names: BTreeSet<&String> = documented.keys().collect();
    let seen_names: BTreeSet<&String> = seen.keys().collect();
    assert_eq!(documented_names, seen_names, "README table vs /metrics");
    for (name, (kind, labels)) in &documented {
        let (seen_kind, seen_labels) = &seen[name];
        assert_eq!(kind, seen_kind, "{name}: type");
        // A family with samples must carry exactly the documented labels.
        if !seen_labels.is_empty() || classic.lines().any(|l| l.starts_with(&format!("{name} "))) {
            assert_eq!(labels, seen_labels, "{name}: labels");
        }
    }
    // No sample names a channel, subject, uid or token.
    for secret in ["team-blue-a", "alice", "4242"] {
        assert!(!classic.contains(secret), "{secret} in /metrics");
    }

    let promtool = support::tools::promtool_path();
    let mut child = Command::new(&promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{}: {e} (run `bash .ci/setup`)", promtool.display()));
    child
        .stdin
        .take()
        .unwrap()
        .write_all(classic.as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A free loopback port for Prometheus (it cannot be handed a bound socket).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The value of a Prometheus instant query's single result, if it has one.
async fn query(client: &reqwest::Client, prometheus: &str, expr: &str) -> Option<f64> {
    let body: Value = client
        .post(format!("http://{prometheus}/api/v1/query"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("query={}", percent_encode(expr)))
        .send()
        .await
        .ok()?
        .json()
        .await
        .ok()?;
    let result = body["data"]["result"].as_array()?;
    let [one] = result.as_slice() else {
        return None;
    };
    one["value"][1].as_str()?.parse().ok()
}

#[tokio::test]
async fn a_real_prometheus_scrapes_the_counters_and_histograms() {
    let (server, _jwks, es256) = start().await;
    make_calls(&server, &es256).await;

    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 500ms\nscrape_configs:\n  - job_name: tokengate\n    static_configs:\n      - targets: ['{}']\n",
            server.admin
        ),
    )
    .unwrap();
    let listen = format!("127.0.0.1:{}", free_port());
    let binary = support::tools::prometheus_path();
    let prometheus = Command::new(&binary)
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.path().join("data").display()
        ))
        .arg(format!("--web.listen-address={listen}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("{}: {e} (run `bash .ci/setup`)", binary.display()));
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _prometheus = Kill(prometheus);

    let client = reqwest::Client::new();
    // make_calls: two denied IssueRtcToken calls (team-red-a, flagged-1) of four.
    let expectations: [(&str, f64); 8] = [
        (
            r#"tokengate_decisions_total{action="rtc",decision="allow"}"#,
            1.0,
        ),
        (
            r#"tokengate_decisions_total{action="rtc",decision="deny",reason="no_matching_rule"}"#,
            2.0,
        ),
        (
            r#"tokengate_fact_lookups_total{fact="flag",result="fetched"}"#,
            1.0,
        ),
        (
            r#"tokengate_decisions_total{action="rtc",decision="unauthenticated",reason="missing"}"#,
            1.0,
        ),
        (
            r#"tokengate_ext_authz_checks_total{outcome="allowed",route="/rooms/{channel}/join",via="ext_authz"}"#,
            1.0,
        ),
        (
            r#"grpc_server_handled_total{grpc_method="IssueRtcToken",grpc_code="OK"}"#,
            1.0,
        ),
        (
            r#"sum(grpc_server_handling_seconds_count{grpc_method="IssueRtcToken"})"#,
            4.0,
        ),
        (
            r#"sum(tokengate_tokens_issued_total{project="main",service="rtc"})"#,
            2.0,
        ),
    ];
    // Prometheus needs a moment to start and scrape; everything is bounded.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut last = Vec::new();
    loop {
        last.clear();
        for (expr, want) in &expectations {
            let got = query(&client, &listen, expr).await;
            if got != Some(*want) {
                last.push(format!("{expr} = {got:?}, want {want}"));
            }
        }
        if last.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "Prometheus never saw: {last:#?}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let up = query(&client, &listen, r#"up{job="tokengate"}"#).await;
    assert_eq!(up, Some(1.0));
}

/// `application/x-www-form-urlencoded` for a PromQL expression.
fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
