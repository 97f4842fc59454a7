//! Config reload on the real binary (`tokengate serve --config FILE`): an
//! App Certificate rotated in three reloads, a rule changed and an invalid
//! config written while a client calls without pause; SIGHUP and a file
//! change each trigger a reload; an unchanged issuer keeps its refresher and
//! a changed one restarts, and a removed one's stops; a changed listen
//! address is reported as needing a restart; trusted proxies reload too;
//! unchanged facts keep their cache across a reload, changed ones start a
//! fresh one, and an invalid fact keeps the old ones serving; forward-auth
//! follows reloaded routes and names its restart-only keys.

use crate::support;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use jsonwebtoken::Algorithm;
use serde_json::{Value, json};

use support::binary::{Running, loopback};
use support::server::{APP_ID, AUDIENCE, ISSUER, PRIMARY_CERT, SECONDARY_CERT, TestServer};
use support::{FactServer, JwksServer, Reply, TestKey};
use tokengate::domain::Fingerprint;
use tokengate::grpc::pb;
use tokengate::grpc::pb::token_service_client::TokenServiceClient;
use tokengate::token::{AppCertificate, v007};

/// The old App Certificate (signs first) and the new one (rotated in).
const OLD: &str = PRIMARY_CERT;
const NEW: &str = SECONDARY_CERT;
/// The most calls the background client makes: the loop is bounded even if
/// the test never stops it.
const MAX_CALLS: usize = 50_000;

/// The rules: `room-*` is always allowed; `vip-*` until a reload narrows
/// the "vip" rule to `vip_channel`.
fn rules(vip_channel: &str) -> String {
    format!(
        r#"
[[rules]]
name = "rooms"
channel = "room-*"
actions = ["rtc"]
project = "main"
max_role = "publisher"
uid_claim = "agora_uid"
default_ttl = "1h"
max_ttl = "8h"

[[rules]]
name = "vip"
channel = "{vip_channel}"
actions = ["rtc"]
project = "main"
max_role = "publisher"
uid_claim = "agora_uid"
default_ttl = "1h"
max_ttl = "8h"
"#
    )
}

/// A config whose project `main` has `certificates` (name, file) and signs
/// with `signer`, one issuer at `jwks_url`, and `rules`.
fn config(certificates: &[(&str, &Path)], signer: &str, issuers: &str, rules: &str) -> String {
    let list: Vec<String> = certificates
        .iter()
        .map(|(name, path)| format!("{{ name = \"{name}\", file = \"{}\" }}", path.display()))
        .collect();
    loopback(&format!(
        r#"
[server]
grace_period = "5s"

[[projects]]
name = "main"
app_id = "{APP_ID}"
signing_certificate = "{signer}"
certificates = [{list}]

{issuers}
{rules}
"#,
        list = list.join(", "),
    ))
}

/// The test issuer's table, trusting `jwks_url`.
fn issuer(jwks_url: &str) -> String {
    format!(
        r#"
[[issuers]]
name = "test-idp"
issuer = "{ISSUER}"
audiences = ["{AUDIENCE}"]
jwks_url = "{jwks_url}"
"#
    )
}

/// The certificate files: `old` and `new`, in a folder of their own.
struct Certificates {
    dir: tempfile::TempDir,
}

impl Certificates {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("old"), OLD).unwrap();
        std::fs::write(dir.path().join("new"), NEW).unwrap();
        Self { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

/// Replaces the config file as an editor or a ConfigMap update does: a new
/// file renamed over the old one, so a reload never reads half of it.
fn replace(path: &Path, text: &str) {
    let temporary = path.with_extension("toml.new");
    std::fs::write(&temporary, text).unwrap();
    std::fs::rename(&temporary, path).unwrap();
}

/// The fingerprint a config text has in the logs and metrics.
fn fingerprint(text: &str) -> String {
    Fingerprint::of(text.as_bytes()).as_str().to_owned()
}

/// The JSON log events the binary has written so far.
fn events(server: &Running) -> Vec<Value> {
    server
        .logs()
        .iter()
        .filter_map(|line| serde_json::from_str(line).ok())
        .collect()
}

/// Waits (10 s at most) for a log event that `wanted` accepts, and returns it.
async fn event(server: &Running, what: &str, wanted: impl Fn(&Value) -> bool) -> Value {
    let parse = |line: &str| serde_json::from_str::<Value>(line).ok();
    server
        .logs_once(|line| parse(line).is_some_and(|e| wanted(&e)))
        .await;
    events(server)
        .into_iter()
        .find(|e| wanted(e))
        .unwrap_or_else(|| panic!("no {what} log line; logs: {:#?}", server.logs()))
}

/// Waits for the "config reloaded" line of the config whose text is `text`.
async fn reloaded(server: &Running, text: &str) -> Value {
    let fingerprint = fingerprint(text);
    event(server, "config reloaded", |e| {
        e["message"] == "config reloaded" && e["fingerprint"] == fingerprint.as_str()
    })
    .await
}

/// The value of the sample `series` (name and labels, as exposed) on `/metrics`.
async fn metric(server: &Running, series: &str) -> Option<f64> {
    let body = reqwest::get(format!("http://{}/metrics", server.admin))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    body.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|value| value.trim().parse().ok())
}

/// What the state in force between two reloads does.
#[derive(Debug, Clone, Copy)]
struct State {
    /// The certificate that signs.
    signer: &'static str,
    /// Whether `vip-1` is allowed.
    vip: bool,
}

/// One call of the background client: the phase counter before and after it, and its outcome.
#[derive(Debug)]
struct Record {
    before: u64,
    after: u64,
    channel: &'static str,
    result: Result<String, tonic::Code>,
}

/// Whether `record` agrees with `state`; `strict` also checks that the token
/// does not verify against the other certificate.
fn agrees(record: &Record, state: State, strict: bool) -> bool {
    let vip = record.channel == "vip-1";
    match &record.result {
        Err(tonic::Code::PermissionDenied) => vip && !state.vip,
        Err(_) => false,
        Ok(token) => {
            if vip && !state.vip {
                return false;
            }
            let other = if state.signer == OLD { NEW } else { OLD };
            let parsed = v007::parse(token).unwrap();
            parsed.verify(&AppCertificate::parse(state.signer).unwrap())
                && !(strict && parsed.verify(&AppCertificate::parse(other).unwrap()))
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rotation_a_rule_change_and_an_invalid_config_under_load_fail_no_call() {
    let es256 = TestKey::generate(Algorithm::ES256, "es-1");
    let jwks = JwksServer::start(&[&es256]).await;
    let certs = Certificates::new();
    let (old, new) = (certs.path("old"), certs.path("new"));
    let idp = issuer(&jwks.jwks_url());
    // The stable states, in order, and the config each reload writes.
    let steps: Vec<(State, String)> = vec![
        (
            State {
                signer: OLD,
                vip: true,
            },
            config(&[("old", &old)], "old", &idp, &rules("vip-*")),
        ),
        // (a) 1: the new certificate as a secondary.
        (
            State {
                signer: OLD,
                vip: true,
            },
            config(
                &[("old", &old), ("new", &new)],
                "old",
                &idp,
                &rules("vip-*"),
            ),
        ),
        // (a) 2: the new one signs.
        (
            State {
                signer: NEW,
                vip: true,
            },
            config(
                &[("old", &old), ("new", &new)],
                "new",
                &idp,
                &rules("vip-*"),
            ),
        ),
        // (a) 3: the old one removed.
        (
            State {
                signer: NEW,
                vip: true,
            },
            config(&[("new", &new)], "new", &idp, &rules("vip-*")),
        ),
        // (b) the "vip" rule no longer matches vip-1.
        (
            State {
                signer: NEW,
                vip: false,
            },
            config(&[("new", &new)], "new", &idp, &rules("vip-only-*")),
        ),
    ];
    let server = Running::start_config(&steps[0].1);
    server.wait_ready().await;
    let jwt = es256.mint(&TestServer::claims("alice", json!({"agora_uid": 42})));

    // The client: one call after the other, alternating a room and vip-1,
    // each recorded with the phase before and after it. Even phases are
    // stable states (phase / 2), odd ones a reload in progress.
    let phase = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let records = Arc::new(Mutex::new(Vec::<Record>::new()));
    let mut client = TokenServiceClient::new(server.channel().await);
    let client_task = tokio::spawn({
        let (phase, stop, records) = (phase.clone(), stop.clone(), records.clone());
        async move {
            for i in 0..MAX_CALLS {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                let channel = if i % 2 == 0 { "room-1" } else { "vip-1" };
                let before = phase.load(Ordering::SeqCst);
                let request =
                    TestServer::authed(&jwt, support::fixtures::rtc(channel, pb::Role::Publisher));
                let result = client
                    .issue_rtc_token(request)
                    .await
                    .map(|reply| {
                        reply
                            .into_inner()
                            .issued
                            .map(|i| i.token)
                            .unwrap_or_default()
                    })
                    .map_err(|status| status.code());
                let after = phase.load(Ordering::SeqCst);
                records.lock().unwrap().push(Record {
                    before,
                    after,
                    channel,
                    result,
                });
            }
        }
    });
    // Waits until the client has made a few calls wholly inside the current phase.
    let settle = |phase_now: u64| {
        let records = records.clone();
        async move {
            for _ in 0..400 {
                let inside = records
                    .lock()
                    .unwrap()
                    .iter()
                    .filter(|r| r.before == phase_now && r.after == phase_now)
                    .count();
                if inside >= 6 {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
            panic!("the client made no calls in phase {phase_now}");
        }
    };
    settle(0).await;
    for (i, (_, text)) in steps.iter().enumerate().skip(1) {
        phase.fetch_add(1, Ordering::SeqCst);
        // A file change, no signal.
        replace(server.config_path(), text);
        let line = reloaded(&server, text).await;
        assert_eq!(
            line["trigger"],
            format!("file {}", server.config_path().display()),
            "{line}"
        );
        if i <= 3 {
            assert!(
                line["projects_changed"].as_str().unwrap().contains("main"),
                "{line}"
            );
        } else {
            assert!(
                line["rules_changed"].as_str().unwrap().contains("vip"),
                "{line}"
            );
            assert!(line["projects_changed"].as_str().unwrap() == "[]", "{line}");
        }
        assert_eq!(line["previous"], fingerprint(&steps[i - 1].1), "{line}");
        let now = phase.fetch_add(1, Ordering::SeqCst) + 1;
        settle(now).await;
    }

    // (c) An invalid config: refused whole, the key named as check-config
    // names it, counted; the calls go on as before.
    let last = steps.last().unwrap().clone();
    let invalid = config(&[("new", &new)], "missing", &idp, &rules("vip-*"));
    phase.fetch_add(1, Ordering::SeqCst);
    replace(server.config_path(), &invalid);
    let refused = event(&server, "config reload refused", |e| {
        e["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("config reload refused"))
    })
    .await;
    assert!(
        refused["error"].as_str().unwrap().starts_with(
            "projects[0].signing_certificate: \"missing\" is not one of the project's certificates"
        ),
        "{refused}"
    );
    assert_eq!(refused["fingerprint"], fingerprint(&last.1), "{refused}");
    let now = phase.fetch_add(1, Ordering::SeqCst) + 1;
    settle(now).await;
    stop.store(true, Ordering::SeqCst);
    client_task.await.unwrap();

    // Every call agrees with the state of its time: exactly, when it ran
    // wholly between two reloads; with either neighbour, when a reload
    // happened during it.
    let mut states: Vec<State> = steps.iter().map(|(state, _)| *state).collect();
    states.push(last.0);
    let records = std::mem::take(&mut *records.lock().unwrap());
    let mut failed = Vec::new();
    for record in records.iter() {
        let (lo, hi) = (record.before / 2, record.after.div_ceil(2));
        let ok = if lo == hi {
            agrees(record, states[lo as usize], true)
        } else {
            (lo..=hi).any(|k| agrees(record, states[k as usize], false))
        };
        if !ok {
            failed.push(record);
        }
    }
    assert!(
        failed.is_empty(),
        "{} of {} calls disagree with the config of their time: {failed:#?}",
        failed.len(),
        records.len()
    );
    let strict = records.iter().filter(|r| r.before == r.after).count();
    assert!(strict >= 6 * states.len(), "{strict} calls between reloads");

    // The counters: four reloads swapped in, one refused; the config in
    // force is still the last good one.
    assert_eq!(
        metric(
            &server,
            "tokengate_config_reloads_total{result=\"success\"}"
        )
        .await,
        Some(4.0)
    );
    assert_eq!(
        metric(
            &server,
            "tokengate_config_reloads_total{result=\"failure\"}"
        )
        .await,
        Some(1.0)
    );
    let info = format!(
        "tokengate_config_info{{fingerprint=\"{}\"}}",
        fingerprint(&last.1)
    );
    assert_eq!(metric(&server, &info).await, Some(1.0));
    assert!(
        metric(
            &server,
            "tokengate_config_last_reload_success_timestamp_seconds"
        )
        .await
        .is_some_and(|t| t > 0.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_and_cuts_a_file_changes_wait_short() {
    let es256 = TestKey::generate(Algorithm::ES256, "es-1");
    let jwks = JwksServer::start(&[&es256]).await;
    let certs = Certificates::new();
    let old = certs.path("old");
    let idp = issuer(&jwks.jwks_url());
    let first = config(&[("old", &old)], "old", &idp, &rules("vip-*"));
    let mut server = Running::start_config(&first);
    server.wait_ready().await;

    // A SIGHUP alone: the file is read and validated again, nothing changed.
    server.signal("HUP");
    let line = event(&server, "config reloaded: nothing changed", |e| {
        e["message"] == "config reloaded: nothing changed"
    })
    .await;
    assert_eq!(line["trigger"], "SIGHUP", "{line}");
    assert_eq!(line["fingerprint"], fingerprint(&first), "{line}");

    // A change followed by a SIGHUP: the signal does not wait for the
    // debounce, and the new rules serve.
    let second = config(&[("old", &old)], "old", &idp, &rules("vip-only-*"));
    replace(server.config_path(), &second);
    server.signal("HUP");
    let line = reloaded(&server, &second).await;
    assert_eq!(line["trigger"], "SIGHUP", "{line}");
    let jwt = es256.mint(&TestServer::claims("alice", json!({"agora_uid": 42})));
    let mut client = TokenServiceClient::new(server.channel().await);
    let denied = client
        .issue_rtc_token(TestServer::authed(
            &jwt,
            support::fixtures::rtc("vip-1", pb::Role::Publisher),
        ))
        .await
        .unwrap_err();
    assert_eq!(denied.code(), tonic::Code::PermissionDenied);
    client
        .issue_rtc_token(TestServer::authed(
            &jwt,
            support::fixtures::rtc("room-1", pb::Role::Publisher),
        ))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unchanged_issuer_keeps_its_refresher_and_a_changed_one_restarts() {
    let kept_key = TestKey::generate(Algorithm::ES256, "a-1");
    let changed_key = TestKey::generate(Algorithm::ES256, "b-1");
    let kept_jwks = JwksServer::start(&[&kept_key]).await;
    let changed_jwks = JwksServer::start(&[&changed_key]).await;
    let certs = Certificates::new();
    let old = certs.path("old");
    let issuers = |leeway: &str| {
        format!(
            r#"{}
[[issuers]]
name = "other-idp"
issuer = "https://other.test.example"
audiences = ["{AUDIENCE}"]
jwks_url = "{}"
leeway = "{leeway}"
"#,
            issuer(&kept_jwks.jwks_url()),
            changed_jwks.jwks_url()
        )
    };
    // Both issuers' callers share one user namespace here.
    let shared = rules("vip-*").replace(
        "max_ttl = \"8h\"\n",
        "max_ttl = \"8h\"\nshared_identity = true\n",
    );
    let first = config(&[("old", &old)], "old", &issuers("30s"), &shared);
    let server = Running::start_config(&first);
    server.wait_ready().await;
    let (kept_before, changed_before) = (kept_jwks.jwks_fetches(), changed_jwks.jwks_fetches());
    assert!(kept_before >= 1 && changed_before >= 1);

    let second = config(&[("old", &old)], "old", &issuers("45s"), &shared);
    replace(server.config_path(), &second);
    let line = reloaded(&server, &second).await;
    assert_eq!(line["issuers_kept"], "[\"test-idp\"]", "{line}");
    assert_eq!(line["issuers_changed"], "[\"other-idp\"]", "{line}");
    assert_eq!(line["issuers_added"], "[]", "{line}");
    assert_eq!(line["issuers_removed"], "[]", "{line}");
    // The reload waited for the restarted refresher's first fetch; the kept
    // one fetched nothing.
    assert!(
        changed_jwks.jwks_fetches() > changed_before,
        "the changed issuer's refresher did not fetch again"
    );
    assert_eq!(kept_jwks.jwks_fetches(), kept_before);
    // Both issuers' callers are served by the new config.
    let mut client = TokenServiceClient::new(server.channel().await);
    let kept_jwt = kept_key.mint(&TestServer::claims("alice", json!({"agora_uid": 42})));
    let changed_jwt = changed_key.mint(&json!({
        "iss": "https://other.test.example", "aud": AUDIENCE, "sub": "bob",
        "agora_uid": 43, "iat": support::unix_now(), "exp": support::unix_now() + 600,
    }));
    for jwt in [kept_jwt, changed_jwt] {
        client
            .issue_rtc_token(TestServer::authed(
                &jwt,
                support::fixtures::rtc("room-1", pb::Role::Publisher),
            ))
            .await
            .unwrap();
    }
    assert_eq!(kept_jwks.jwks_fetches(), kept_before);
    // The metrics' issuer collectors report the new authenticator's issuers.
    assert_eq!(
        metric(&server, "tokengate_jwks_loaded{issuer=\"other-idp\"}").await,
        Some(1.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_listen_address_needs_a_restart_and_the_rest_applies() {
    let es256 = TestKey::generate(Algorithm::ES256, "es-1");
    let jwks = JwksServer::start(&[&es256]).await;
    let certs = Certificates::new();
    let old = certs.path("old");
    let idp = issuer(&jwks.jwks_url());
    let first = config(&[("old", &old)], "old", &idp, &rules("vip-*"));
    let server = Running::start_config(&first);
    server.wait_ready().await;

    let second = config(&[("old", &old)], "old", &idp, &rules("vip-only-*")).replacen(
        "grpc_listen = \"127.0.0.1:0\"",
        "grpc_listen = \"127.0.0.1:50999\"",
        1,
    );
    replace(server.config_path(), &second);
    let line = reloaded(&server, &second).await;
    assert_eq!(line["needs_restart"], "[\"server.grpc_listen\"]", "{line}");
    assert_eq!(line["rules_changed"], "[\"vip\"]", "{line}");
    let warning = event(&server, "needs a restart", |e| {
        e["key"] == "server.grpc_listen"
            && e["message"]
                .as_str()
                .is_some_and(|m| m.contains("needs a restart"))
    })
    .await;
    assert_eq!(warning["level"], "WARN", "{warning}");
    // Still on the address it started with, with the new rules.
    let jwt = es256.mint(&TestServer::claims("alice", json!({"agora_uid": 42})));
    let mut client = TokenServiceClient::new(server.channel().await);
    let denied = client
        .issue_rtc_token(TestServer::authed(
            &jwt,
            support::fixtures::rtc("vip-1", pb::Role::Publisher),
        ))
        .await
        .unwrap_err();
    assert_eq!(denied.code(), tonic::Code::PermissionDenied);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_issuers_refresher_stops() {
    let es256 = TestKey::generate(Algorithm::ES256, "es-1");
    let jwks = JwksServer::start(&[&es256]).await;
    // An issuer whose IdP keeps failing: its refresher retries every 200 ms
    // at most, so a refresher left running after its removal shows at once.
    let failing = JwksServer::start(&[]).await;
    failing.fail_next(1_000_000, 500);
    let certs = Certificates::new();
    let old = certs.path("old");
    let gone = format!(
        r#"
[[issuers]]
name = "gone-idp"
issuer = "https://gone.test.example"
audiences = ["{AUDIENCE}"]
jwks_url = "{}"
required_for_readiness = false
[issuers.refresh]
backoff_initial = "100ms"
backoff_max = "200ms"
"#,
        failing.jwks_url()
    );
    let idp = issuer(&jwks.jwks_url());
    let shared = rules("vip-*").replace(
        "max_ttl = \"8h\"\n",
        "max_ttl = \"8h\"\nshared_identity = true\n",
    );
    let first = config(&[("old", &old)], "old", &format!("{idp}{gone}"), &shared);
    let server = Running::start_config(&first);
    server.wait_ready().await;
    for _ in 0..200 {
        if failing.jwks_fetches() >= 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(
        failing.jwks_fetches() >= 3,
        "the failing issuer is not retrying"
    );

    let second = config(&[("old", &old)], "old", &idp, &rules("vip-*"));
    replace(server.config_path(), &second);
    let line = reloaded(&server, &second).await;
    assert_eq!(line["issuers_removed"], "[\"gone-idp\"]", "{line}");
    assert_eq!(line["issuers_kept"], "[\"test-idp\"]", "{line}");
    // A fetch already under way may still land; none starts after it.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let after = failing.jwks_fetches();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        failing.jwks_fetches(),
        after,
        "the removed issuer's refresher still fetches"
    );
    assert_eq!(
        metric(&server, "tokengate_jwks_loaded{issuer=\"gone-idp\"}").await,
        None
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trusted_proxies_reload_with_the_rest() {
    const BACKEND: &str = "spiffe://corp.example/ns/backend/sa/api";
    let workloads = r#"
[[rules]]
name = "backend mints"
actions = ["rtc"]
channel = "svc-*"
peer_spiffe_id = "spiffe://corp.example/ns/backend/sa/api"
authenticate = "mtls"
project = "main"
caller_chooses_identity = true
"#;
    let es256 = TestKey::generate(Algorithm::ES256, "es-1");
    let jwks = JwksServer::start(&[&es256]).await;
    let certs = Certificates::new();
    let old = certs.path("old");
    let idp = issuer(&jwks.jwks_url());
    let untrusted = config(&[("old", &old)], "old", &idp, workloads);
    let server = Running::start_config(&untrusted);
    server.wait_ready().await;
    let channel = server.channel().await;
    // A workload behind the sidecar on loopback, forwarded by XFCC, no JWT.
    let call = || {
        let mut request =
            tonic::Request::new(support::fixtures::rtc_uid("svc-1", pb::Role::Subscriber, 7));
        request.metadata_mut().insert(
            "x-forwarded-client-cert",
            format!("By=spiffe://corp.example/ns/edge/sa/envoy;URI={BACKEND}")
                .parse()
                .unwrap(),
        );
        let mut client = TokenServiceClient::new(channel.clone());
        async move { client.issue_rtc_token(request).await }
    };
    assert_eq!(
        call().await.unwrap_err().code(),
        tonic::Code::Unauthenticated
    );

    let trusted = format!("{untrusted}\n[server.trusted_proxy]\ncidrs = [\"127.0.0.1/32\"]\n");
    replace(server.config_path(), &trusted);
    let line = reloaded(&server, &trusted).await;
    assert_eq!(line["trusted_proxy_changed"], true, "{line}");
    let issued = call().await.unwrap().into_inner().issued.unwrap();
    assert_eq!(issued.matched_rule, "backend mints");

    // Trust withdrawn: the header is ignored again from the next call on.
    replace(server.config_path(), &untrusted);
    let line = reloaded(&server, &untrusted).await;
    assert_eq!(line["trusted_proxy_changed"], true, "{line}");
    assert_eq!(
        call().await.unwrap_err().code(),
        tonic::Code::Unauthenticated
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_changes_the_rate_limits_and_keeps_the_budgets_spent() {
    let es256 = TestKey::generate(Algorithm::ES256, "es-1");
    let jwks = JwksServer::start(&[&es256]).await;
    let certs = Certificates::new();
    let old = certs.path("old");
    let idp = issuer(&jwks.jwks_url());
    let base = config(&[("old", &old)], "old", &idp, &rules("vip-*"));
    let limit = |burst: u32| {
        format!(
            "{base}\n[[limits.rate]]\nname = \"per-caller\"\nkey = \"caller\"\nrate = \"1/h\"\nburst = {burst}\n"
        )
    };
    let first = limit(1);
    let server = Running::start_config(&first);
    server.wait_ready().await;
    let jwt = es256.mint(&TestServer::claims("alice", json!({"agora_uid": 42})));
    let client = TokenServiceClient::new(server.channel().await);
    let call = || {
        let request =
            TestServer::authed(&jwt, support::fixtures::rtc("room-1", pb::Role::Subscriber));
        let mut client = client.clone();
        async move { client.issue_rtc_token(request).await.map(|_| ()) }
    };
    call().await.unwrap();
    assert_eq!(
        call().await.unwrap_err().code(),
        tonic::Code::ResourceExhausted
    );

    // A burst of 3: the call already spent still counts, two more are admitted.
    let second = limit(3);
    replace(server.config_path(), &second);
    let line = reloaded(&server, &second).await;
    assert_eq!(line["limits_changed"], true, "{line}");
    call().await.unwrap();
    call().await.unwrap();
    assert_eq!(
        call().await.unwrap_err().code(),
        tonic::Code::ResourceExhausted
    );

    // Limits withdrawn: nothing counts any more. Redis added: a restart.
    let third = format!("{base}\n[limits.redis]\nurl = \"redis://127.0.0.1:9/0\"\n");
    replace(server.config_path(), &third);
    let line = reloaded(&server, &third).await;
    assert_eq!(line["needs_restart"], "[\"limits.redis\"]", "{line}");
    for _ in 0..5 {
        call().await.unwrap();
    }
    drop(client);
}

/// An HTTP fact `flag` read at `url/{caller.subject}`, cached for `ttl`,
/// each fetch bounded by `timeout`, and the rule that reads it: `flagged-*`
/// for callers whose flag is on.
fn flag_fact(url: &str, ttl: &str, timeout: &str) -> String {
    format!(
        r#"
[[facts]]
name = "flag"
kind = "http"
url = "{url}/{{caller.subject}}"
ttl = "{ttl}"
timeout = "{timeout}"

[[rules]]
name = "flagged"
channel = "flagged-*"
actions = ["rtc"]
condition = 'facts.flag != null && facts.flag.on == true'
project = "main"
max_role = "publisher"
uid_claim = "agora_uid"
default_ttl = "1h"
max_ttl = "8h"
"#
    )
}

/// The "fact configured" log events so far.
fn fact_announcements(server: &Running) -> Vec<Value> {
    events(server)
        .into_iter()
        .filter(|e| e["message"] == "fact configured")
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn facts_keep_their_cache_across_an_unrelated_reload_and_start_afresh_when_changed() {
    let es256 = TestKey::generate(Algorithm::ES256, "es-1");
    let jwks = JwksServer::start(&[&es256]).await;
    let flags = FactServer::start().await;
    let certs = Certificates::new();
    let old = certs.path("old");
    let idp = issuer(&jwks.jwks_url());
    let v1 = format!("{}/flags", flags.url());
    let v2 = format!("{}/v2/flags", flags.url());
    let text = |vip: &str, url: &str, ttl: &str, timeout: &str| {
        let rules = format!("{}{}", rules(vip), flag_fact(url, ttl, timeout));
        config(&[("old", &old)], "old", &idp, &rules)
    };
    flags.respond("/flags/alice", Reply::json(200, json!({"on": true})));
    let first = text("vip-*", &v1, "10m", "2s");
    let server = Running::start_config(&first);
    server.wait_ready().await;
    let alice = es256.mint(&TestServer::claims("alice", json!({"agora_uid": 42})));
    let bob = es256.mint(&TestServer::claims("bob", json!({"agora_uid": 43})));
    let client = TokenServiceClient::new(server.channel().await);
    let call = |jwt: &str, channel: &str| {
        let request =
            TestServer::authed(jwt, support::fixtures::rtc(channel, pb::Role::Subscriber));
        let mut client = client.clone();
        async move {
            client
                .issue_rtc_token(request)
                .await
                .map(|_| ())
                .map_err(|status| status.code())
        }
    };
    let denied = Err(tonic::Code::PermissionDenied);

    // One fetch, then the cache answers.
    call(&alice, "flagged-1").await.unwrap();
    call(&alice, "flagged-2").await.unwrap();
    assert_eq!(flags.count("/flags/alice"), 1, "{:?}", flags.requests());
    assert_eq!(fact_announcements(&server).len(), 1);
    // From here the service says alice's flag is off: a call still allowed
    // was answered by the cache, a denied one by a fresh fetch.
    flags.respond("/flags/alice", Reply::json(200, json!({"on": false})));

    // (a) Only an unrelated rule changes: the same sources, the same cache.
    let narrowed = text("vip-1", &v1, "10m", "2s");
    replace(server.config_path(), &narrowed);
    let line = reloaded(&server, &narrowed).await;
    assert_eq!(line["facts_changed"], false, "{line}");
    assert_eq!(line["rules_changed"], "[\"vip\"]", "{line}");
    assert_eq!(
        call(&alice, "vip-2").await,
        denied,
        "the rule change applied"
    );
    call(&alice, "flagged-3").await.unwrap();
    assert_eq!(flags.count("/flags/alice"), 1, "{:?}", flags.requests());
    assert_eq!(fact_announcements(&server).len(), 1, "nothing re-announced");

    // (b) The fact's ttl changes: new sources, an empty cache, a new fetch.
    let longer = text("vip-1", &v1, "11m", "2s");
    replace(server.config_path(), &longer);
    let line = reloaded(&server, &longer).await;
    assert_eq!(line["facts_changed"], true, "{line}");
    assert_eq!(line["rules_changed"], "[]", "{line}");
    assert_eq!(call(&alice, "flagged-4").await, denied);
    assert_eq!(flags.count("/flags/alice"), 2, "{:?}", flags.requests());
    assert_eq!(fact_announcements(&server).len(), 2, "announced again");
    // ... and that cache is one too: the off flag is kept.
    flags.respond("/flags/alice", Reply::json(200, json!({"on": true})));
    assert_eq!(call(&alice, "flagged-5").await, denied);
    assert_eq!(flags.count("/flags/alice"), 2, "{:?}", flags.requests());

    // (b) The fact's URL changes: fetched at the new one.
    flags.respond("/v2/flags/alice", Reply::json(200, json!({"on": true})));
    let moved = text("vip-1", &v2, "11m", "2s");
    replace(server.config_path(), &moved);
    let line = reloaded(&server, &moved).await;
    assert_eq!(line["facts_changed"], true, "{line}");
    call(&alice, "flagged-6").await.unwrap();
    assert_eq!(flags.count("/v2/flags/alice"), 1, "{:?}", flags.requests());
    assert_eq!(flags.count("/flags/alice"), 2, "{:?}", flags.requests());
    let announced = fact_announcements(&server);
    assert_eq!(announced.len(), 3, "{announced:?}");
    assert_eq!(
        announced[2]["source"],
        format!("{v2}/{{caller.subject}}"),
        "{announced:?}"
    );

    // (c) An invalid fact: the whole config is refused, the key named, and
    // the facts in force keep serving, their cache and their source.
    let invalid = text("vip-1", &v2, "11m", "0s");
    replace(server.config_path(), &invalid);
    let refused = event(&server, "config reload refused", |e| {
        e["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("config reload refused"))
    })
    .await;
    assert!(
        refused["error"]
            .as_str()
            .unwrap()
            .starts_with("facts[0].timeout: must be positive"),
        "{refused}"
    );
    assert_eq!(refused["fingerprint"], fingerprint(&moved), "{refused}");
    flags.respond("/v2/flags/alice", Reply::json(200, json!({"on": false})));
    flags.respond("/v2/flags/bob", Reply::json(200, json!({"on": true})));
    call(&alice, "flagged-7").await.unwrap();
    assert_eq!(flags.count("/v2/flags/alice"), 1, "{:?}", flags.requests());
    call(&bob, "flagged-7").await.unwrap();
    assert_eq!(flags.count("/v2/flags/bob"), 1, "{:?}", flags.requests());
    assert_eq!(flags.count("/flags/bob"), 0, "{:?}", flags.requests());
    assert_eq!(fact_announcements(&server).len(), 3);
    assert_eq!(
        metric(
            &server,
            "tokengate_config_reloads_total{result=\"failure\"}"
        )
        .await,
        Some(1.0)
    );
    drop(client);
}

/// The forward-auth answer's status for nginx's form of `GET path` at `prefix`.
async fn forward_auth_status(
    addr: std::net::SocketAddr,
    prefix: &str,
    path: &str,
    jwt: &str,
) -> u16 {
    reqwest::Client::new()
        .get(format!("http://{addr}{prefix}"))
        .header("authorization", format!("Bearer {jwt}"))
        .header("x-original-method", "GET")
        .header("x-original-uri", path)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forward_auth_follows_reloaded_routes_and_names_its_restart_keys() {
    let (jwks, es256, _rs256) = support::server::test_keys().await;
    let base =
        support::server::config_text(&jwks.jwks_url(), support::fixtures::ROOMS_AND_WEBINARS);
    let forward_auth = "\n[forward_auth]\nenabled = true\nlisten = \"127.0.0.1:0\"\npath_prefix = \"/check\"\noriginal_request = \"x-original\"\n";
    let first = loopback(&format!(
        "{base}\n{}{forward_auth}",
        support::authz::ext_authz_section("")
    ));
    let server = Running::start_config(&first);
    server.wait_ready().await;
    let addr = server
        .forward_auth
        .expect("the forward-auth address is logged");
    let jwt = es256.mint(&TestServer::claims(
        "alice",
        json!({"teams": ["blue"], "agora_uid": 4242}),
    ));
    let lobby = "/lobby/team-blue-standup";
    assert_eq!(
        forward_auth_status(addr, "/check", lobby, &jwt).await,
        403,
        "no such route yet"
    );

    // A new route applies at once; a new prefix and proxy need a restart.
    let route = "\n[[ext_authz.routes]]\npath = \"/lobby/{channel}\"\n";
    let second = loopback(&format!(
        "{base}\n{}{route}{}",
        support::authz::ext_authz_section(""),
        forward_auth
            .replace("/check", "/auth")
            .replace("x-original", "x-forwarded")
    ));
    replace(server.config_path(), &second);
    let line = reloaded(&server, &second).await;
    assert_eq!(
        line["needs_restart"], "[\"forward_auth.path_prefix\", \"forward_auth.original_request\"]",
        "{line}"
    );
    assert_eq!(line["routes_changed"], true, "{line}");
    assert_eq!(
        forward_auth_status(addr, "/check", lobby, &jwt).await,
        200,
        "the new route"
    );
    assert_eq!(
        forward_auth_status(addr, "/auth", lobby, &jwt).await,
        404,
        "the old prefix holds"
    );
}
