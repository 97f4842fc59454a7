//! `tokengate dev`, the real binary: the banner it prints works as written.
//! The grpcurl lines are run exactly as printed (through `bash -c`, with
//! `TOKENGATE_JWT` exported and grpcurl on `PATH`), `dev mint-jwt` mints JWTs
//! the server accepts, the project comes from `AGORA_*` when set, and only
//! loopback addresses are accepted. SIGTERM (or SIGINT) ends the server with
//! exit 0, and its logs carry no secrets. Nothing in the production config
//! can turn dev mode on.

use crate::support;

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use support::tools::{Run, blocking, path_with_venv, run};
use tokengate::token::{AppCertificate, services::ServiceKind, v007};

const BIN: &str = env!("CARGO_BIN_EXE_tokengate");
/// How long the banner may take to appear (a cold debug binary on a busy machine).
const PATIENCE: Duration = Duration::from_secs(60);
const KNOWN_APP_ID: &str = "970CA35de60c44645bbae8a215061b33";
const KNOWN_CERT: &str = "5CFd2fd1755d40ecb72977518be15d3b";

/// A running `tokengate dev` and what its banner said.
struct Dev {
    child: Option<Child>,
    /// The whole banner, as printed.
    banner: String,
    /// The stderr (logs) so far, for failure messages.
    logs: Arc<Mutex<String>>,
    /// The thread copying stderr into `logs`; it ends when the process does.
    log_reader: Option<std::thread::JoinHandle<()>>,
}

impl Dev {
    /// Starts `tokengate dev` on free loopback ports with `env` (and no other `AGORA_*`).
    fn start(env: &[(&str, &str)]) -> Self {
        Self::start_with(env, &[])
    }

    /// Like [`Dev::start`], with `extra` arguments (`--log-format json`).
    fn start_with(env: &[(&str, &str)], extra: &[&str]) -> Self {
        let mut command = Command::new(BIN);
        command
            .args([
                "dev",
                "--grpc-listen",
                "127.0.0.1:0",
                "--admin-listen",
                "127.0.0.1:0",
                "--issuer-listen",
                "127.0.0.1:0",
                "--forward-auth-listen",
                "127.0.0.1:0",
            ])
            .args(extra)
            .env_remove("AGORA_APP_ID")
            .env_remove("AGORA_APP_CERTIFICATE")
            // The log assertions need the default level, whatever the caller's shell sets.
            .env_remove("TOKENGATE_LOG")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = command.spawn().unwrap();
        let logs = Arc::new(Mutex::new(String::new()));
        let mut stderr = child.stderr.take().unwrap();
        let sink = Arc::clone(&logs);
        let log_reader = std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = stderr.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        let (tx, rx) = mpsc::channel();
        let stdout = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut dev = Self {
            child: Some(child),
            banner: String::new(),
            logs,
            log_reader: Some(log_reader),
        };
        // The banner is complete once its last line (the forward-auth curl) is out.
        loop {
            let line = rx.recv_timeout(PATIENCE).unwrap_or_else(|_| {
                panic!(
                    "the banner never completed:\n{}\nlogs:\n{}",
                    dev.banner,
                    dev.logs()
                )
            });
            dev.banner.push_str(&line);
            dev.banner.push('\n');
            if line.starts_with("curl") {
                break;
            }
        }
        dev
    }

    fn logs(&self) -> String {
        self.logs.lock().unwrap().clone()
    }

    /// The banner line after the line that starts with `heading`.
    fn line_after(&self, heading: &str) -> &str {
        let mut lines = self.banner.lines();
        lines
            .by_ref()
            .find(|l| l.starts_with(heading))
            .unwrap_or_else(|| panic!("no {heading:?} in the banner:\n{}", self.banner));
        lines
            .next()
            .unwrap_or_else(|| panic!("nothing after {heading:?}"))
    }

    /// The value after `label` on the banner line that starts with it.
    fn field(&self, label: &str) -> &str {
        self.banner
            .lines()
            .find_map(|l| l.strip_prefix(label))
            .unwrap_or_else(|| panic!("no {label:?} line in the banner:\n{}", self.banner))
            .trim()
    }

    /// The demo JWT from the `export TOKENGATE_JWT='...'` line.
    fn jwt(&self) -> &str {
        self.field("export TOKENGATE_JWT=").trim_matches('\'')
    }

    /// The development issuer's URL.
    fn issuer_url(&self) -> &str {
        self.field("issuer:").split_whitespace().next().unwrap()
    }

    /// Waits until the admin port says ready (the dev issuer's keys are loaded).
    async fn wait_ready(&self) {
        let url = self.field("admin:").to_owned();
        assert!(url.ends_with("/readyz"), "{url}");
        for _ in 0..1200 {
            if let Ok(response) = reqwest::get(&url).await
                && response.status() == 200
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("tokengate dev never became ready; logs:\n{}", self.logs());
    }

    /// Sends SIGTERM and waits for the exit.
    fn terminate(&mut self) -> ExitStatus {
        self.signal("-TERM")
    }

    /// Sends `signal` (a `kill` option such as `-INT`) and waits for the exit.
    fn signal(&mut self, signal: &str) -> ExitStatus {
        let mut child = self.child.take().unwrap();
        let status = Command::new("kill")
            .args([signal, &child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "kill -TERM failed");
        child.wait().unwrap()
    }

    /// Stops the server with SIGTERM, asserts a clean exit and returns its logs.
    async fn stop(self) -> String {
        self.stop_with("-TERM").await
    }

    /// Stops the server with `signal`, asserts a clean exit and returns its logs.
    async fn stop_with(mut self, signal: &'static str) -> String {
        let logs = Arc::clone(&self.logs);
        let status = blocking(move || {
            let status = self.signal(signal);
            // Every last log line is in `logs` only once the reader has hit EOF.
            if let Some(reader) = self.log_reader.take() {
                reader.join().unwrap();
            }
            status
        })
        .await;
        assert_eq!(
            status.code(),
            Some(0),
            "tokengate dev should exit 0 on {signal}; logs:\n{}",
            logs.lock().unwrap()
        );
        logs.lock().unwrap().clone()
    }
}

impl Drop for Dev {
    fn drop(&mut self) {
        // A failed test still ends the server it started: SIGTERM, then wait.
        if self.child.is_some() {
            let _ = self.terminate();
        }
    }
}

/// Runs one banner line exactly as printed, the way a user pastes it into a shell.
async fn paste(line: &str, jwt: &str) -> Run {
    // Fail with the fix (not bash's "command not found") when grpcurl is missing.
    support::tools::grpcurl_path();
    let mut command = Command::new("bash");
    command
        .args(["-c", line])
        .env("TOKENGATE_JWT", jwt)
        .env("PATH", path_with_venv());
    blocking(move || run(&mut command)).await
}

/// Runs a banner line that calls `tokengate` itself, with the binary on `PATH`.
async fn paste_with_binary(line: &str) -> Run {
    let bin_dir = std::path::Path::new(BIN).parent().unwrap().to_owned();
    let mut paths = vec![bin_dir];
    paths.extend(std::env::split_paths(&path_with_venv()));
    let mut command = Command::new("bash");
    command
        .args(["-c", line])
        .env("PATH", std::env::join_paths(paths).unwrap());
    blocking(move || run(&mut command)).await
}

/// `tokengate dev mint-jwt` with `args`.
async fn mint_jwt(args: &[&str]) -> Run {
    let mut command = Command::new(BIN);
    command.arg("dev").arg("mint-jwt").args(args);
    blocking(move || run(&mut command)).await
}

/// The issued token of an `IssueRtcToken` reply printed by grpcurl.
fn issued(run: &Run) -> Value {
    let reply: Value = serde_json::from_str(run.success())
        .unwrap_or_else(|e| panic!("grpcurl printed no JSON ({e}): {run:#?}"));
    reply["issued"].clone()
}

/// Asserts that the 007 `token` is an RTC token for `channel` and `uid`
/// (the string Agora hashes: a decimal uid or an account).
fn check_rtc(token: &str, channel: &str, uid: &str) -> v007::ParsedToken {
    let parsed = v007::parse(token).unwrap();
    assert_eq!(parsed.token.services.len(), 1);
    match &parsed.token.services[0].kind {
        ServiceKind::Rtc {
            channel_name,
            uid: bound,
        } => {
            assert_eq!(channel_name, channel.as_bytes());
            assert_eq!(bound, uid.as_bytes());
        }
        other => panic!("unexpected service {other:?}"),
    }
    parsed
}

#[tokio::test]
async fn the_printed_lines_work_with_a_generated_project() {
    let dev = Dev::start(&[]);
    assert!(dev.banner.contains("tokengate DEV MODE"), "{}", dev.banner);
    assert!(
        dev.banner.contains("NEVER use this in production"),
        "{}",
        dev.banner
    );
    assert!(
        dev.banner.contains("GENERATED") && dev.banner.contains("Agora will reject them"),
        "the generated-project warning is missing:\n{}",
        dev.banner
    );
    dev.wait_ready().await;
    let jwt = dev.jwt().to_owned();
    assert_eq!(jwt.split('.').count(), 3, "not a JWT: {jwt}");

    let list = paste(dev.line_after("List the services:"), &jwt).await;
    assert!(
        list.success().contains("tokengate.v1.TokenService"),
        "{list:#?}"
    );

    let issue_line = dev.line_after("Issue an RTC token:");
    assert!(issue_line.contains("$TOKENGATE_JWT"), "{issue_line}");
    let token = issued(&paste(issue_line, &jwt).await);
    assert_eq!(token["channel"], "demo-lobby");
    assert_eq!(token["account"], "demo-user");
    assert_eq!(token["matchedRule"], "demo rooms");
    let parsed = check_rtc(token["token"].as_str().unwrap(), "demo-lobby", "demo-user");
    assert_eq!(
        String::from_utf8(parsed.token.app_id.clone()).unwrap(),
        token["appId"].as_str().unwrap()
    );

    // The inspect line, with the token pasted where it says so.
    let inspect_line = dev.line_after("Inspect it (paste the token):");
    assert!(inspect_line.contains("\"007...\""), "{inspect_line}");
    let pasted = inspect_line.replace("007...", token["token"].as_str().unwrap());
    let inspected: Value = serde_json::from_str(paste(&pasted, &jwt).await.success()).unwrap();
    assert_eq!(inspected["project"], "demo", "{inspected}");
    assert_eq!(inspected["certificate"], "primary", "{inspected}");
    assert_eq!(inspected["signatureValid"], true, "{inspected}");
    assert_eq!(
        inspected["services"][0]["channel"], "demo-lobby",
        "{inspected}"
    );
    assert!(inspected.get("diagnoses").is_none(), "{inspected}");
    let elsewhere = pasted.replace(
        "\"expected_channel\": \"demo-lobby\"",
        "\"expected_channel\": \"demo-other\"",
    );
    let mismatch: Value = serde_json::from_str(paste(&elsewhere, &jwt).await.success()).unwrap();
    assert_eq!(mismatch["diagnoses"][0]["agoraError"], 110, "{mismatch}");

    let explain = paste(dev.line_after("Explain a denied request:"), &jwt).await;
    let decision: Value = serde_json::from_str(explain.success()).unwrap();
    assert_eq!(decision["decision"], "DECISION_DENY", "{decision}");
    assert_eq!(decision["denyReason"], "denied_by_rule", "{decision}");
    assert_eq!(decision["matchedRule"], "no admin rooms", "{decision}");

    // Another JWT from `dev mint-jwt`, with a numeric uid for the `uid-*` rooms.
    let minted = mint_jwt(&[
        "--issuer-url",
        dev.issuer_url(),
        "--sub",
        "bob",
        "--claim",
        "agora_uid=7",
    ])
    .await;
    let bob = minted.success().trim().to_owned();
    assert_eq!(bob.split('.').count(), 3, "not a JWT: {minted:#?}");
    let uid_line = issue_line.replace("demo-lobby", "uid-42");
    let token = issued(&paste(&uid_line, &bob).await);
    assert_eq!(token["uid"], 7, "{token}");
    assert_eq!(token["matchedRule"], "uid rooms");
    check_rtc(token["token"].as_str().unwrap(), "uid-42", "7");

    // The dev server refuses a JWT that its issuer did not sign.
    let forged = format!("{}.{}", &bob[..bob.rfind('.').unwrap()], "AAAA");
    let refused = paste(issue_line, &forged).await;
    assert_ne!(refused.code, Some(0));
    assert!(refused.stderr.contains("Unauthenticated"), "{refused:#?}");

    // The mint-jwt command of the banner, as printed, with `tokengate` on PATH.
    let mint_line = dev
        .field("issuer:")
        .split_once("(mint more JWTs: ")
        .map(|(_, rest)| rest.trim_end_matches(')'))
        .unwrap_or_else(|| panic!("no mint-jwt command in the banner:\n{}", dev.banner));
    let alice = paste_with_binary(mint_line)
        .await
        .success()
        .trim()
        .to_owned();
    let token = issued(&paste(issue_line, &alice).await);
    assert_eq!(token["account"], "alice", "{token}");

    // The mesh path: Envoy's Check through grpcurl, and forward-auth through curl.
    let check_line = dev.line_after("The mesh path:");
    let check: Value = serde_json::from_str(paste(check_line, &jwt).await.success())
        .unwrap_or_else(|e| panic!("the Check printed no JSON: {e}"));
    let set = check["okResponse"]["headers"]
        .as_array()
        .unwrap_or_else(|| panic!("{check}"));
    let mesh_token = set
        .iter()
        .find(|h| h["header"]["key"] == "x-agora-token")
        .and_then(|h| h["header"]["value"].as_str())
        .unwrap_or_else(|| panic!("no token header in {check}"));
    check_rtc(mesh_token, "demo-lobby", "demo-user");
    let curl_line = dev.line_after("The same check as Caddy");
    let curl = paste(curl_line, &jwt).await;
    let answer = curl.success();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let forward_token = answer
        .lines()
        .find_map(|l| l.strip_prefix("x-agora-token: "))
        .map(str::trim)
        .unwrap_or_else(|| panic!("no token header in {answer}"));
    check_rtc(forward_token, "demo-lobby", "demo-user");

    let issued_token = token["token"].as_str().unwrap().to_owned();
    let logs = dev.stop().await;
    assert!(
        logs.contains("IssueRtcToken"),
        "the calls were not logged:\n{logs}"
    );
    // stderr is a pipe here, as under systemd or a log collector: no colour codes.
    assert!(
        !logs.contains('\x1b'),
        "ANSI escapes in logs written to a pipe:\n{logs:?}"
    );
    assert!(
        logs.contains("forward_auth"),
        "the forward-auth check was not logged:\n{logs}"
    );
    for secret in [
        &jwt,
        &bob,
        &issued_token,
        &mesh_token.to_owned(),
        &forward_token.to_owned(),
    ] {
        assert!(
            !logs.contains(secret.as_str()),
            "a secret reached the logs:\n{logs}"
        );
    }
}

#[tokio::test]
async fn tokens_verify_with_the_certificate_from_the_environment() {
    let dev = Dev::start_with(
        &[
            ("AGORA_APP_ID", KNOWN_APP_ID),
            ("AGORA_APP_CERTIFICATE", KNOWN_CERT),
        ],
        &["--log-format", "json"],
    );
    assert!(dev.banner.contains("tokengate DEV MODE"), "{}", dev.banner);
    assert!(
        !dev.banner.contains("GENERATED"),
        "no generated-project warning when AGORA_* are set:\n{}",
        dev.banner
    );
    dev.wait_ready().await;
    let jwt = dev.jwt().to_owned();
    let token = issued(&paste(dev.line_after("Issue an RTC token:"), &jwt).await);
    assert_eq!(token["appId"], KNOWN_APP_ID);
    let parsed = check_rtc(token["token"].as_str().unwrap(), "demo-lobby", "demo-user");
    assert!(parsed.verify(&AppCertificate::parse(KNOWN_CERT).unwrap()));
    assert!(!parsed.verify(&AppCertificate::parse("0123456789abcdef0123456789abcdef").unwrap()));
    // Ctrl-C in the terminal that runs `dev` is a clean stop too.
    let logs = dev.stop_with("-INT").await;
    assert!(logs.contains("SIGINT received"), "{logs}");
    // `--log-format json`: one JSON object per line, for log collectors, without secrets.
    let lines: Vec<Value> = logs
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    assert!(
        lines
            .iter()
            .any(|l| l["rpc"] == "IssueRtcToken" && l["decision"] == "allow"),
        "{logs}"
    );
    for secret in [KNOWN_CERT, jwt.as_str(), token["token"].as_str().unwrap()] {
        assert!(!logs.contains(secret), "a secret reached the logs:\n{logs}");
    }
}

#[tokio::test]
async fn dev_refuses_non_loopback_addresses() {
    let flags = [
        "--grpc-listen",
        "--admin-listen",
        "--issuer-listen",
        "--forward-auth-listen",
    ];
    for flag in flags {
        let mut command = Command::new(BIN);
        command.args(["dev", flag, "0.0.0.0:0"]);
        for other in flags {
            if other != flag {
                command.args([other, "127.0.0.1:0"]);
            }
        }
        let out = blocking(move || run(&mut command)).await;
        assert_ne!(out.code, Some(0), "{flag} 0.0.0.0:0 was accepted: {out:#?}");
        assert!(out.stderr.contains("loopback"), "{flag}: {out:#?}");
        assert!(!out.stdout.contains("TOKENGATE_JWT"), "{flag}: {out:#?}");
    }
}

#[tokio::test]
async fn mint_jwt_says_when_no_dev_server_runs() {
    // Port 9 (discard) on loopback: nothing of ours listens there.
    let out = mint_jwt(&["--issuer-url", "http://127.0.0.1:9", "--sub", "bob"]).await;
    assert_ne!(out.code, Some(0), "{out:#?}");
    assert!(
        out.stderr.contains("is `tokengate dev` running?"),
        "{out:#?}"
    );
    assert!(out.stdout.is_empty(), "{out:#?}");
}

#[tokio::test]
async fn a_malformed_certificate_in_the_environment_is_refused_without_echoing_it() {
    let secret = "not-a-certificate-but-secret-0123";
    let mut command = Command::new(BIN);
    command
        .args([
            "dev",
            "--grpc-listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
        ])
        .args(["--issuer-listen", "127.0.0.1:0"])
        .env("AGORA_APP_ID", KNOWN_APP_ID)
        .env("AGORA_APP_CERTIFICATE", secret);
    let out = blocking(move || run(&mut command)).await;
    assert_ne!(out.code, Some(0), "{out:#?}");
    assert!(out.stderr.contains("AGORA_APP_CERTIFICATE"), "{out:#?}");
    assert!(
        !out.stderr.contains(secret) && !out.stdout.contains(secret),
        "{out:#?}"
    );
    assert!(!out.stdout.contains("TOKENGATE_JWT"), "{out:#?}");
}

#[tokio::test]
async fn the_production_config_cannot_enable_dev_mode() {
    let cases = [
        ("dev = true\n", "dev: unknown field `dev`"),
        ("[dev]\nenabled = true\n", "dev: unknown field `dev`"),
        ("[server]\ndev = true\n", "server.dev: unknown field `dev`"),
        (
            "[[issuers]]\nname = \"x\"\nissuer = \"http://127.0.0.1:1\"\naudiences = [\"a\"]\ndev = true\n",
            "issuers[0].dev: unknown field `dev`",
        ),
    ];
    let dir = tempfile::tempdir().unwrap();
    for (i, (text, expected)) in cases.into_iter().enumerate() {
        let path = dir.path().join(format!("{i}.toml"));
        std::fs::write(&path, text).unwrap();
        for subcommand in [&["check-config"][..], &["serve", "--config"][..]] {
            let mut command = Command::new(BIN);
            command.args(subcommand).arg(&path);
            let out = blocking(move || run(&mut command)).await;
            assert_eq!(out.code, Some(64), "{subcommand:?} {text:?}: {out:#?}");
            assert!(
                out.stderr.contains(expected),
                "{subcommand:?} {text:?}: {out:#?}"
            );
        }
    }
}

#[tokio::test]
async fn dev_exits_when_its_port_is_taken() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let mut command = Command::new(BIN);
    command.args([
        "dev",
        "--grpc-listen",
        &addr,
        "--admin-listen",
        "127.0.0.1:0",
        "--issuer-listen",
        "127.0.0.1:0",
    ]);
    let out = blocking(move || run(&mut command)).await;
    assert_ne!(out.code, Some(0), "{out:#?}");
    assert!(
        out.stderr.contains(&format!("cannot listen on {addr}")),
        "{out:#?}"
    );
    drop(taken);
}

#[tokio::test]
async fn dev_refuses_only_one_of_the_agora_variables() {
    for (name, value) in [
        ("AGORA_APP_ID", KNOWN_APP_ID),
        ("AGORA_APP_CERTIFICATE", KNOWN_CERT),
    ] {
        let mut command = Command::new(BIN);
        command
            .args(["dev", "--grpc-listen", "127.0.0.1:0"])
            .args([
                "--admin-listen",
                "127.0.0.1:0",
                "--issuer-listen",
                "127.0.0.1:0",
            ])
            .env_remove("AGORA_APP_ID")
            .env_remove("AGORA_APP_CERTIFICATE")
            .env(name, value);
        let out = blocking(move || run(&mut command)).await;
        assert_ne!(out.code, Some(0), "{name} alone was accepted: {out:#?}");
        assert!(
            out.stderr
                .contains("set both AGORA_APP_ID and AGORA_APP_CERTIFICATE, or neither"),
            "{out:#?}"
        );
        assert!(!out.stderr.contains(KNOWN_CERT), "{out:#?}");
        assert!(!out.stdout.contains("TOKENGATE_JWT"), "{out:#?}");
    }
}
