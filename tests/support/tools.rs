//! The command-line tools of the real-client tests: grpcurl and the venv's
//! python (both installed by `.ci/setup` under the tools folder).
//!
//! A missing tool fails the test with a message naming the fix, never skips it.

use std::ffi::OsStr;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Output};

use super::tools_dir;

/// The venv's `bin` folder (grpcurl and python live there).
pub fn venv_bin() -> PathBuf {
    tools_dir().join("venv/bin")
}

/// The grpcurl executable, asserted to exist.
pub fn grpcurl_path() -> PathBuf {
    existing(venv_bin().join("grpcurl"), "grpcurl")
}

/// Debian's `promtool` (package `prometheus`, installed by `.ci/setup`), asserted to exist.
pub fn promtool_path() -> PathBuf {
    existing(
        PathBuf::from("/usr/bin/promtool"),
        "promtool (Debian package prometheus)",
    )
}

/// Debian's `prometheus` server, asserted to exist.
pub fn prometheus_path() -> PathBuf {
    existing(
        PathBuf::from("/usr/bin/prometheus"),
        "prometheus (Debian package prometheus)",
    )
}

/// The venv's python, asserted to exist.
pub fn python_path() -> PathBuf {
    existing(venv_bin().join("python"), "python (venv)")
}

/// `PATH` with the venv's `bin` folder first, so a shell finds grpcurl by name.
#[allow(clippy::disallowed_methods)] // The child process needs the runner's PATH to find its tools.
pub fn path_with_venv() -> std::ffi::OsString {
    let mut paths = vec![venv_bin()];
    if let Some(path) = std::env::var_os("PATH") {
        paths.extend(std::env::split_paths(&path));
    }
    std::env::join_paths(paths).unwrap()
}

/// The outcome of one tool run, with its output as text.
#[derive(Debug)]
pub struct Run {
    /// The exit code (`None` when killed by a signal).
    pub code: Option<i32>,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

impl Run {
    fn from(output: Output) -> Self {
        Self {
            code: output.status.code(),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }

    /// Asserts a zero exit and returns stdout.
    pub fn success(&self) -> &str {
        assert_eq!(self.code, Some(0), "the tool failed: {self:#?}");
        &self.stdout
    }
}

/// Runs grpcurl with `args` (blocking; call from `spawn_blocking` inside tokio).
pub fn grpcurl<I, S>(args: I) -> Run
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    run(Command::new(grpcurl_path()).args(args))
}

/// Runs grpcurl off the async runtime, so an in-process server keeps serving.
pub async fn grpcurl_async(args: Vec<String>) -> Run {
    blocking(move || grpcurl(args)).await
}

/// Runs grpcurl in plaintext against `addr` off the async runtime: `args`
/// (flags) before the address, `tail` (the verb or method) after it.
pub async fn grpcurl_plaintext(addr: SocketAddr, args: &[&str], tail: &[&str]) -> Run {
    let mut all: Vec<String> = vec!["-plaintext".into()];
    all.extend(args.iter().map(|s| (*s).to_owned()));
    all.push(addr.to_string());
    all.extend(tail.iter().map(|s| (*s).to_owned()));
    grpcurl_async(all).await
}

/// Runs `f` on tokio's blocking pool and re-raises its panic as is (a clear
/// "not installed" message rather than a wrapped `JoinError`).
pub async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    match tokio::task::spawn_blocking(f).await {
        Ok(value) => value,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(e) => panic!("a blocking task failed: {e}"),
    }
}

/// Runs `command` to completion with a two-minute limit (the tools talk to loopback only).
pub fn run(command: &mut Command) -> Run {
    let program = command.get_program().to_owned();
    let child = command
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", program.to_string_lossy()));
    let (tx, rx) = std::sync::mpsc::channel();
    let id = child.id();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(std::time::Duration::from_secs(120)) {
        Ok(output) => Run::from(output.unwrap()),
        Err(_) => {
            // Kill exactly the child we started, by its id.
            let _ = Command::new("kill").arg(id.to_string()).status();
            panic!(
                "{} did not finish within two minutes",
                program.to_string_lossy()
            );
        }
    }
}

fn existing(path: PathBuf, what: &str) -> PathBuf {
    assert!(
        path.is_file(),
        "{what} is not installed at {}: run `bash .ci/setup` (or set TOKENGATE_TOOLS)",
        path.display()
    );
    path
}

/// What Agora's official npm `agora-token` parser saw in each `(token, certificate)`
/// pair (`tests/npm/verify.js`): `parsed`, `verified`, `app_id`, `expire`, `services`.
pub fn agora_token_views(tokens: &[(&str, &str)]) -> Vec<serde_json::Value> {
    use std::io::Write as _;

    let package = tools_dir().join("node/node_modules/agora-token/src/AccessToken2.js");
    existing(package, "agora-token (npm)");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/npm/verify.js");
    let mut child = Command::new("node")
        .arg(script)
        .arg(tools_dir())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run `node` (is Node.js installed and on PATH?): {e}"));
    let input: Vec<serde_json::Value> = tokens
        .iter()
        .map(|(token, certificate)| serde_json::json!({"token": token, "certificate": certificate}))
        .collect();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(serde_json::to_string(&input).unwrap().as_bytes())
        .unwrap();
    let out = Run::from(child.wait_with_output().unwrap());
    serde_json::from_str(out.success())
        .unwrap_or_else(|e| panic!("verify.js printed no JSON ({e}): {out:#?}"))
}
