//! The real `tokengate serve` binary as a child process, with its JSON logs
//! collected line by line, its bound addresses read from its "listening"
//! line, and signals sent by pid.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use tonic::transport::Channel;

use super::server::{PRIMARY_CERT, SECONDARY_CERT, config_text, ready_within};

/// The binary, running; killed if the test fails before it exits.
pub struct Running {
    child: Option<Child>,
    grpc: SocketAddr,
    /// The admin HTTP address.
    pub admin: SocketAddr,
    /// The forward-auth address, when the config turns it on.
    pub forward_auth: Option<SocketAddr>,
    logs: Arc<Mutex<Vec<String>>>,
    reader: Option<std::thread::JoinHandle<()>>,
    /// While set, the reader stops reading stderr, so the pipe fills up and
    /// the child's log writer blocks, as behind a stuck log collector.
    paused: Arc<std::sync::atomic::AtomicBool>,
    /// Keeps its keep-alive connection to the admin port open across the
    /// signal, as a prober would: it must not hold the exit either.
    admin_client: reqwest::Client,
    /// When the last signal was sent.
    signalled_at: Option<Instant>,
    config: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

/// The test config `text` listening on 127.0.0.1:0 for both ports.
pub fn loopback(text: &str) -> String {
    text.replacen(
        "[server]\n",
        "[server]\ngrpc_listen = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n",
        1,
    )
}

impl Running {
    /// Starts `tokengate serve` on 127.0.0.1:0 with a config trusting `jwks_url`,
    /// and reads the bound addresses from its "listening" log line.
    pub fn start(jwks_url: &str, rules: &str) -> Self {
        Self::start_with_grace(jwks_url, rules, "5s")
    }

    /// Like [`Running::start`] with another grace period.
    pub fn start_with_grace(jwks_url: &str, rules: &str, grace: &str) -> Self {
        let config = loopback(&config_text(jwks_url, rules)).replacen(
            "grace_period = \"5s\"",
            &format!("grace_period = \"{grace}\""),
            1,
        );
        Self::start_config(&config)
    }

    /// Starts `tokengate serve` with this whole config text (its listen addresses must be port 0).
    pub fn start_config(config: &str) -> Self {
        Self::start_config_as(config, "json")
    }

    /// Like [`Running::start_config`] with `--log-format format` (`json` or `text`).
    pub fn start_config_as(config: &str, format: &str) -> Self {
        Self::start_config_with(config, format, &[])
    }

    /// Like [`Running::start_config_as`] with more environment variables
    /// (`TOKENGATE_LOG` among them overrides the default `info`).
    pub fn start_config_with(config: &str, format: &str, env: &[(&str, &str)]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokengate.toml");
        std::fs::write(&path, config).unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_tokengate"))
            .args(["serve", "--config", path.to_str().unwrap()])
            .args(["--log-format", format])
            .env("TEST_PRIMARY_CERT", PRIMARY_CERT)
            .env("TEST_SECONDARY_CERT", SECONDARY_CERT)
            .env("TOKENGATE_LOG", "info")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let logs = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let sink = Arc::clone(&logs);
        let paused = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let hold = Arc::clone(&paused);
        // Drains stderr for the whole run so the child never blocks on a full
        // pipe (unless the test pauses it).
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                // The JSON logger flattens event fields into the top-level object.
                if let Ok(event) = serde_json::from_str::<Value>(&line)
                    && event["message"] == "tokengate listening"
                {
                    let _ = tx.send(event);
                } else if line.contains("tokengate listening") {
                    // Text: `... tokengate listening grpc=127.0.0.1:1 admin=127.0.0.1:2`.
                    let field = |name: &str| {
                        line.split_whitespace()
                            .find_map(|w| w.strip_prefix(&format!("{name}=")))
                            .map(|v| Value::from(v.trim_matches('"')))
                            .unwrap_or(Value::Null)
                    };
                    let _ = tx
                        .send(serde_json::json!({"grpc": field("grpc"), "admin": field("admin"), "forward_auth": field("forward_auth")}));
                }
                sink.lock().unwrap().push(line);
                while hold.load(std::sync::atomic::Ordering::SeqCst) {
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
        });
        let mut running = Self {
            child: Some(child),
            grpc: "127.0.0.1:1".parse().unwrap(),
            admin: "127.0.0.1:1".parse().unwrap(),
            forward_auth: None,
            logs,
            reader: Some(reader),
            paused,
            admin_client: reqwest::Client::new(),
            signalled_at: None,
            config: path,
            _dir: dir,
        };
        let fields = rx
            .recv_timeout(Duration::from_secs(30))
            .unwrap_or_else(|_| panic!("no listening line; logs: {:?}", running.logs()));
        running.grpc = fields["grpc"].as_str().unwrap().parse().unwrap();
        running.admin = fields["admin"].as_str().unwrap().parse().unwrap();
        running.forward_auth = fields["forward_auth"].as_str().map(|a| a.parse().unwrap());
        running
    }

    /// Stops reading the child's stderr (after the line being read) until
    /// [`Running::resume_logs`]: once the pipe's buffer is full, the child's
    /// writes to stderr block.
    pub fn pause_logs(&self) {
        self.paused.store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// Reads the child's stderr again.
    pub fn resume_logs(&self) {
        self.paused
            .store(false, std::sync::atomic::Ordering::SeqCst);
    }

    /// The log lines once one of them satisfies `wanted` (log lines are
    /// written by the child's writer thread, a moment after the call that
    /// logged them returned), or all of them after 10 s.
    pub async fn logs_once(&self, wanted: impl Fn(&str) -> bool) -> Vec<String> {
        for _ in 0..200 {
            let logs = self.logs();
            if logs.iter().any(|line| wanted(line)) {
                return logs;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.logs()
    }

    pub fn logs(&self) -> Vec<String> {
        self.logs.lock().unwrap().clone()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// Sends `signal` ("TERM", "INT") to the child, by its pid.
    pub fn signal(&mut self, signal: &str) {
        self.signalled_at = Some(Instant::now());
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.pid().to_string())
            .status()
            .unwrap();
        assert!(status.success(), "kill -{signal}");
    }

    /// Waits for the child to exit, at most `limit` after the signal.
    pub async fn exit_within(&mut self, limit: Duration) -> ExitStatus {
        let started = self.signalled_at.expect("a signal was sent");
        loop {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                self.child = None;
                // The last lines may still be in the pipe: read to its end.
                if let Some(reader) = self.reader.take() {
                    reader.join().unwrap();
                }
                return status;
            }
            if started.elapsed() > limit {
                panic!(
                    "still running {limit:?} after the signal; logs: {:#?}",
                    self.logs()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The config file the binary was started with (a test rewrites it to reload).
    pub fn config_path(&self) -> &std::path::Path {
        &self.config
    }

    /// The gRPC address.
    pub fn grpc_addr(&self) -> SocketAddr {
        self.grpc
    }

    pub async fn wait_ready(&self) {
        let ready = ready_within(&self.admin_client, self.admin, 400).await;
        assert!(ready, "never ready; logs: {:#?}", self.logs());
    }

    pub async fn channel(&self) -> Channel {
        Channel::from_shared(format!("http://{}", self.grpc))
            .unwrap()
            .connect()
            .await
            .unwrap()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Kibibytes of resident memory of process `pid`, from `/proc/<pid>/status`.
pub fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("a VmRSS line")
}
