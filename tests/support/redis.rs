//! A real `redis-server` (Debian's package, installed by `.ci/setup`) on a
//! free loopback port, in a temporary folder, without persistence: started
//! by the cluster-mode limit tests, stopped and restarted on the same port,
//! and paused (`CLIENT PAUSE`) to be slow.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A running (or stopped) redis-server.
pub struct Redis {
    port: u16,
    password: Option<String>,
    /// `(certificate, key, CA bundle)`: serve TLS only, with these files.
    tls: Option<(PathBuf, PathBuf, PathBuf)>,
    /// An ACL file (`--aclfile`) and the user redis-cli logs in as.
    acl: Option<(PathBuf, String)>,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

fn binary(name: &str) -> PathBuf {
    let path = PathBuf::from("/usr/bin").join(name);
    assert!(
        path.exists(),
        "{} is missing: run `bash .ci/setup` (it installs redis-server)",
        path.display()
    );
    path
}

impl Redis {
    /// Starts redis-server on a free loopback port, requiring `password` if given.
    pub async fn start(password: Option<&str>) -> Self {
        Self::start_inner(password, None).await
    }

    /// Starts redis-server serving TLS only, with `files`' server
    /// certificate (for 127.0.0.1) and key; clients need no certificate.
    pub async fn start_tls(password: Option<&str>, files: &super::certs::TlsFiles) -> Self {
        let tls = (
            files.path("tls.crt"),
            files.path("tls.key"),
            files.path("ca.crt"),
        );
        Self::start_inner(password, Some(tls)).await
    }

    /// Starts redis-server with the users of the ACL file `acl`; redis-cli
    /// logs in as `user` with `password`.
    pub async fn start_acl(acl: PathBuf, user: &str, password: &str) -> Self {
        Self::start_full(Some(password), None, Some((acl, user.to_owned()))).await
    }

    async fn start_inner(password: Option<&str>, tls: Option<(PathBuf, PathBuf, PathBuf)>) -> Self {
        Self::start_full(password, tls, None).await
    }

    async fn start_full(
        password: Option<&str>,
        tls: Option<(PathBuf, PathBuf, PathBuf)>,
        acl: Option<(PathBuf, String)>,
    ) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut redis = Self {
            port,
            password: password.map(str::to_owned),
            tls,
            acl,
            dir: tempfile::tempdir().unwrap(),
            child: None,
        };
        redis.restart().await;
        redis
    }

    /// `redis://127.0.0.1:<port>/0`, or `rediss://` when serving TLS (the
    /// password goes in the config's password_file).
    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() {
            "rediss"
        } else {
            "redis"
        };
        format!("{scheme}://127.0.0.1:{}/0", self.port)
    }

    /// Kills the server (SIGKILL: no shutdown save, as a crash) and waits for it.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port (empty: nothing is persisted).
    pub async fn restart(&mut self) {
        self.stop();
        let mut command = Command::new(binary("redis-server"));
        match &self.tls {
            None => {
                command.args(["--port", &self.port.to_string()]);
            }
            Some((cert, key, ca)) => {
                command
                    .args(["--port", "0", "--tls-port", &self.port.to_string()])
                    .arg("--tls-cert-file")
                    .arg(cert)
                    .arg("--tls-key-file")
                    .arg(key)
                    .arg("--tls-ca-cert-file")
                    .arg(ca)
                    .args(["--tls-auth-clients", "no"]);
            }
        }
        command
            .args(["--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        match (&self.acl, &self.password) {
            (Some((file, _)), _) => {
                command.arg("--aclfile").arg(file);
            }
            (None, Some(password)) => {
                command.args(["--requirepass", password]);
            }
            (None, None) => {}
        }
        self.child = Some(command.spawn().expect("redis-server starts"));
        for _ in 0..200 {
            if self
                .try_cli(&["PING"])
                .is_some_and(|out| out.trim() == "PONG")
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("redis-server on port {} did not answer PING", self.port);
    }

    /// Runs `redis-cli` with `args` and returns its output; panics on failure.
    pub fn cli(&self, args: &[&str]) -> String {
        self.try_cli(args)
            .unwrap_or_else(|| panic!("redis-cli {args:?} failed"))
    }

    fn try_cli(&self, args: &[&str]) -> Option<String> {
        let mut command = Command::new(binary("redis-cli"));
        command.args(["-h", "127.0.0.1", "-p", &self.port.to_string()]);
        if let Some((_, _, ca)) = &self.tls {
            command.arg("--tls").arg("--cacert").arg(ca);
        }
        if let Some((_, user)) = &self.acl {
            command.args(["--user", user]);
        }
        if let Some(password) = &self.password {
            command.args(["--no-auth-warning", "-a", password]);
        }
        let output = command.args(args).stderr(Stdio::null()).output().ok()?;
        let text = String::from_utf8_lossy(&output.stdout).into_owned();
        (output.status.success() && !text.starts_with("ERR") && !text.starts_with("NOAUTH"))
            .then_some(text)
    }

    /// Makes every client wait `for_ms` milliseconds for its next command.
    pub fn pause(&self, for_ms: u64) {
        let out = self.cli(&["CLIENT", "PAUSE", &for_ms.to_string(), "ALL"]);
        assert_eq!(out.trim(), "OK", "CLIENT PAUSE: {out}");
    }

    /// The keys tokengate wrote.
    pub fn keys(&self, pattern: &str) -> Vec<String> {
        self.cli(&["--scan", "--pattern", pattern])
            .lines()
            .map(str::to_owned)
            .filter(|k| !k.is_empty())
            .collect()
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.stop();
    }
}
