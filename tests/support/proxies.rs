//! Real nginx and Caddy (Debian's packages, installed by `.ci/setup`) on
//! loopback, configured from the very snippets under `deploy/forward-auth/`:
//! the test only points the snippet's placeholder hosts (`tokengate:9191`,
//! `app:8081`) and its listen address at loopback, and asserts that each
//! placeholder was found, so a snippet that drifts fails the test instead of
//! being silently rewritten. Each proxy runs in the foreground as a child
//! process, with every file it writes (pid, logs, temp folders, Caddy's data
//! and config homes) in its own temporary folder; it is killed on drop.

use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A proxy in front of tokengate's forward-auth listener and an upstream.
#[derive(Debug)]
pub struct Proxy {
    /// What runs (`nginx` or `caddy`), for messages.
    pub name: &'static str,
    /// Where clients send requests.
    pub addr: SocketAddr,
    child: Child,
    dir: tempfile::TempDir,
}

impl Proxy {
    /// `http://<addr>` + `path`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// The proxy's own log (nginx's error log, Caddy's stderr), for messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("proxy.log")).unwrap_or_default()
    }
}

impl Proxy {
    /// The pids of the proxy's own child processes (nginx's workers).
    pub fn children(&self) -> Vec<u32> {
        let parent = self.child.id();
        let mut pids = Vec::new();
        for entry in std::fs::read_dir("/proc").unwrap().flatten() {
            let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse().ok()) else {
                continue;
            };
            if process_state(pid).is_some_and(|(_, ppid)| ppid == parent) {
                pids.push(pid);
            }
        }
        pids
    }
}

/// The state letter and parent pid of process `pid`, if it exists.
pub fn process_state(pid: u32) -> Option<(char, u32)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may hold spaces: skip past it.
    let rest = &stat[stat.rfind(')')? + 2..];
    let mut fields = rest.split(' ');
    let state = fields.next()?.chars().next()?;
    let ppid = fields.next()?.parse().ok()?;
    Some((state, ppid))
}

impl Drop for Proxy {
    /// Asks the proxy to stop (SIGTERM: nginx's master then stops its
    /// workers, which a SIGKILL of the master would leave running), and
    /// kills it only if it has not exited within 10 s.
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The repository's `deploy/forward-auth/<name>`.
pub fn snippet_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("deploy/forward-auth")
        .join(name)
}

/// `text` with each `(from, to)` replaced, every `from` asserted present
/// exactly `count` times.
pub fn substitute(label: &str, text: &str, replacements: &[(&str, &str, usize)]) -> String {
    let mut out = text.to_owned();
    for (from, to, count) in replacements {
        assert_eq!(
            out.matches(from).count(),
            *count,
            "{label}: expected {from:?} {count} time(s): the snippet changed, update the test with it"
        );
        out = out.replace(from, to);
    }
    out
}

fn existing(path: &str, what: &str) -> PathBuf {
    let path = PathBuf::from(path);
    assert!(
        path.is_file(),
        "{} is missing: run `bash .ci/setup` (it installs {what})",
        path.display()
    );
    path
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Whether this process runs as root (nginx's workers then need `user`).
fn running_as_root() -> bool {
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

/// deploy/forward-auth/nginx.conf in a real nginx, asking tokengate's
/// forward-auth listener at `tokengate` and proxying to `app`.
pub fn nginx(tokengate: SocketAddr, app: SocketAddr) -> Proxy {
    let nginx = existing("/usr/sbin/nginx", "Debian package nginx");
    let snippet = std::fs::read_to_string(snippet_path("nginx.conf")).unwrap();
    start("nginx", |dir, port| {
        let site = substitute(
            "deploy/forward-auth/nginx.conf",
            &snippet,
            &[
                ("server tokengate:9191;", &format!("server {tokengate};"), 1),
                ("server app:8081;", &format!("server {app};"), 1),
                ("listen 8080;", &format!("listen 127.0.0.1:{port};"), 1),
            ],
        );
        std::fs::write(dir.join("site.conf"), site).unwrap();
        let d = dir.display();
        // Workers run as `nobody` under a root master and could not read
        // the private temporary folder; the test runs them as root then.
        let user = if running_as_root() {
            "user root root;"
        } else {
            ""
        };
        let main = format!(
            "{user}\nworker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/proxy.log notice;\n\
             events {{ worker_connections 256; }}\n\
             http {{\n  access_log off;\n  client_body_temp_path {d}/client_body;\n  proxy_temp_path {d}/proxy;\n  \
             fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n  \
             include {d}/site.conf;\n}}\n"
        );
        std::fs::write(dir.join("nginx.conf"), main).unwrap();
        let mut command = Command::new(&nginx);
        command
            .arg("-p")
            .arg(dir)
            .arg("-c")
            .arg(dir.join("nginx.conf"))
            .args(["-g", "daemon off;"])
            .stdout(Stdio::null())
            .stderr(log_file(dir));
        command
    })
}

/// deploy/forward-auth/Caddyfile in a real Caddy, asking tokengate's
/// forward-auth listener at `tokengate` and proxying to `app`.
pub fn caddy(tokengate: SocketAddr, app: SocketAddr) -> Proxy {
    let caddy = existing("/usr/bin/caddy", "Debian package caddy");
    let snippet = std::fs::read_to_string(snippet_path("Caddyfile")).unwrap();
    start("caddy", |dir, port| {
        let site = substitute(
            "deploy/forward-auth/Caddyfile",
            &snippet,
            &[
                ("tokengate:9191 {", &format!("{tokengate} {{"), 1),
                ("reverse_proxy app:8081", &format!("reverse_proxy {app}"), 1),
                ("\n:8080 {", &format!("\nhttp://127.0.0.1:{port} {{"), 1),
            ],
        );
        // No admin endpoint and no certificates: nothing beyond the site.
        let text = format!("{{\n\tadmin off\n\tauto_https off\n}}\n\n{site}");
        std::fs::write(dir.join("Caddyfile"), text).unwrap();
        let mut command = Command::new(&caddy);
        command
            .args(["run", "--adapter", "caddyfile", "--config"])
            .arg(dir.join("Caddyfile"))
            .env("HOME", dir)
            .env("XDG_DATA_HOME", dir.join("data"))
            .env("XDG_CONFIG_HOME", dir.join("config"))
            .stdout(Stdio::null())
            .stderr(log_file(dir));
        command
    })
}

fn log_file(dir: &Path) -> std::fs::File {
    std::fs::File::create(dir.join("proxy.log")).unwrap()
}

/// Starts the command `build` makes for a fresh folder and a free port, and
/// waits until the port accepts connections. Another process may take the
/// free port first: then the proxy exits and another port is tried.
fn start(name: &'static str, build: impl Fn(&Path, u16) -> Command) -> Proxy {
    let mut last_log = String::new();
    for _ in 0..4 {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let child = build(dir.path(), port)
            .spawn()
            .unwrap_or_else(|e| panic!("{name} did not start: {e}"));
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let mut proxy = Proxy {
            name,
            addr,
            child,
            dir,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = proxy.child.try_wait().unwrap() {
                last_log = format!("{name} exited ({status}):\n{}", proxy.log());
                break;
            }
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                return proxy;
            }
            assert!(
                Instant::now() < deadline,
                "{name} did not listen on {addr} within 20 s:\n{}",
                proxy.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        if !last_log.contains("in use") {
            break;
        }
    }
    panic!("{last_log}")
}
