//! A real PostgreSQL server (Debian's package, installed by `.ci/setup`) for
//! the facts tests: a fresh cluster in a temporary folder, listening only on
//! 127.0.0.1 on a free port, stopped and restarted on the same port with the
//! same data, and optionally serving TLS only.
//!
//! Two ways in, on purpose different:
//!
//! * the test itself, as the superuser `postgres`, over the Unix socket in
//!   the temporary folder with `trust` ([`Postgres::sql`]): schema, rows,
//!   `NOTIFY`, `GRANT`/`REVOKE`. The socket's folder is mode 0700, so only
//!   this test (and root) can reach it. The superuser has no password and
//!   cannot log in over TCP.
//! * tokengate, as role `tokengate` with [`Postgres::password`], over TCP to
//!   [`Postgres::url`] with `scram-sha-256` (`hostssl` only with
//!   [`Postgres::start_tls`]). The database `tokengate` belongs to the
//!   superuser; `tokengate` may read every table the superuser creates in
//!   `public` (default privileges: SELECT only) and write none, as the
//!   service only ever reads. `REVOKE SELECT ON t FROM tokengate` makes a
//!   table unreadable for a denial test.
//!
//! initdb and postgres refuse to run as root, and the tests run as root in
//! CI: then the folder is handed to Debian's `postgres` user and both run
//! under its uid (`CommandExt::uid`, so the child we hold and signal *is*
//! the postmaster, with no `runuser` in between). As a normal user they run
//! as that user.

use std::fs::File;
use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The database tokengate reads, owned by the superuser.
pub const DATABASE: &str = "tokengate";
/// The role tokengate logs in as over TCP, with a password; SELECT only.
pub const USER: &str = "tokengate";
/// The superuser, reachable over the Unix socket only, without a password.
pub const SUPERUSER: &str = "postgres";

/// How long a start (or a fast shutdown) may take before the test fails:
/// generous, as the test machines' cores are shared.
const READY_WITHIN: Duration = Duration::from_secs(30);

/// A running (or stopped) PostgreSQL server.
pub struct Postgres {
    port: u16,
    password: String,
    bin: PathBuf,
    /// `Some((uid, gid))` of the `postgres` user when we run as root.
    run_as: Option<(u32, u32)>,
    tls: bool,
    /// The temporary folder: `data/` (the cluster), the Unix socket,
    /// `postgres.log` (the server's stderr, across restarts) and, with TLS,
    /// `ca.crt`.
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl std::fmt::Debug for Postgres {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Postgres")
            .field("port", &self.port)
            .field("tls", &self.tls)
            .field("dir", &self.dir.path())
            .field("running", &self.child.is_some())
            .finish()
    }
}

/// The folder of `initdb` and `postgres`: the highest version under
/// `/usr/lib/postgresql/*/bin` (Debian's layout), else the first `initdb`
/// on `PATH`.
#[allow(clippy::disallowed_methods)] // PATH is the test runner's setting, not service config.
fn server_bin() -> PathBuf {
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let version = entry.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = entry.path().join("bin");
            bin.join("initdb").exists().then_some((version, bin))
        })
        .collect();
    versions.sort();
    if let Some((_, bin)) = versions.pop() {
        return bin;
    }
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .find(|dir| dir.join("initdb").exists() && dir.join("postgres").exists())
        .unwrap_or_else(|| {
            panic!("PostgreSQL's initdb is missing: run `bash .ci/setup` (it installs postgresql)")
        })
}

/// Debian's `psql` (its wrapper picks the newest client), else the server's.
fn psql_binary(bin: &Path) -> PathBuf {
    let debian = PathBuf::from("/usr/bin/psql");
    if debian.exists() {
        debian
    } else {
        bin.join("psql")
    }
}

/// The uid and gid of the `postgres` user when this process is root (the
/// owner of `/proc/self` is our effective uid), `None` otherwise.
fn unprivileged_user() -> Option<(u32, u32)> {
    let euid = std::fs::metadata("/proc/self").unwrap().uid();
    if euid != 0 {
        return None;
    }
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap();
    let ids = passwd.lines().find_map(|line| {
        let fields: Vec<&str> = line.split(':').collect();
        (fields.len() > 3 && fields[0] == "postgres")
            .then(|| Some((fields[2].parse().ok()?, fields[3].parse().ok()?)))
            .flatten()
    });
    Some(ids.unwrap_or_else(|| {
        panic!(
            "running as root, and there is no `postgres` user to run PostgreSQL as: \
             run `bash .ci/setup` (the postgresql package creates it)"
        )
    }))
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Postgres {
    /// A fresh server on a free loopback port: `tokengate` logs in with
    /// its password over TCP (`scram-sha-256`, no TLS).
    pub async fn start() -> Self {
        Self::start_inner(None).await
    }

    /// A fresh server that accepts TCP connections over TLS only
    /// (`hostssl`; plain ones are rejected), with `files`' server
    /// certificate for 127.0.0.1 and key. Clients verify it with
    /// [`Postgres::ca_file`] (a copy of `files`' CA).
    pub async fn start_tls(files: &super::certs::TlsFiles) -> Self {
        Self::start_inner(Some(files)).await
    }

    async fn start_inner(tls: Option<&super::certs::TlsFiles>) -> Self {
        let dir = tempfile::tempdir().unwrap();
        // Unique per server, so a test that passes must have read it.
        let suffix: String = dir
            .path()
            .file_name()
            .and_then(|name| name.to_str())
            .unwrap_or("x")
            .chars()
            .filter(char::is_ascii_alphanumeric)
            .collect();
        let mut pg = Self {
            port: free_port(),
            password: format!("tg-pass-{suffix}"),
            bin: server_bin(),
            run_as: unprivileged_user(),
            tls: tls.is_some(),
            dir,
            child: None,
        };
        pg.initdb(tls);
        // Another test may take the free port before postgres binds it:
        // then try another one (only here; a restart keeps its port).
        let mut attempts = 0;
        loop {
            match pg.launch().await {
                Ok(()) => break,
                Err(log) if attempts < 4 && log.contains("could not bind") => {
                    attempts += 1;
                    pg.port = free_port();
                }
                Err(log) => panic!("postgres did not start on port {}:\n{log}", pg.port),
            }
        }
        pg.sql_in(
            "postgres",
            &format!(
                "CREATE ROLE {USER} LOGIN PASSWORD '{}';\nCREATE DATABASE {DATABASE};",
                pg.password
            ),
        );
        pg.sql(&format!(
            "ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT SELECT ON TABLES TO {USER};"
        ));
        pg
    }

    /// A command for one of the server binaries, as the unprivileged user.
    fn server_command(&self, name: &str) -> Command {
        let mut command = Command::new(self.bin.join(name));
        command
            .current_dir(self.dir.path())
            // English messages: `start` looks for "could not bind".
            .env("LC_ALL", "C")
            .stdin(Stdio::null());
        if let Some((uid, gid)) = self.run_as {
            command.uid(uid).gid(gid);
        }
        command
    }

    /// Hands `path` to the unprivileged user, when there is one.
    fn chown(&self, path: &Path) {
        if let Some((uid, gid)) = self.run_as {
            std::os::unix::fs::chown(path, Some(uid), Some(gid)).unwrap();
        }
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("postgres.log")
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Makes the cluster and writes its pg_hba.conf and, for TLS, its key pair.
    fn initdb(&self, tls: Option<&super::certs::TlsFiles>) {
        self.chown(self.dir.path());
        let output = self
            .server_command("initdb")
            .arg("-D")
            .arg(self.data())
            .args(["-U", SUPERUSER, "--auth-local=trust", "--auth-host=reject"])
            // No fsync: a test cluster need not survive a crash of the machine.
            .args(["--no-sync", "-E", "UTF8", "--locale=C", "--no-instructions"])
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "initdb failed:\n{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        let tcp = if tls.is_some() {
            "hostssl all all 127.0.0.1/32 scram-sha-256\n\
             hostnossl all all 127.0.0.1/32 reject\n"
        } else {
            "host all all 127.0.0.1/32 scram-sha-256\n"
        };
        // Overwriting keeps the file's owner (the postgres user) and mode.
        std::fs::write(
            self.data().join("pg_hba.conf"),
            format!("local all all trust\n{tcp}"),
        )
        .unwrap();
        if let Some(files) = tls {
            for (from, to) in [("tls.crt", "server.crt"), ("tls.key", "server.key")] {
                let to = self.data().join(to);
                std::fs::copy(files.path(from), &to).unwrap();
                // postgres refuses a key that others may read.
                std::fs::set_permissions(&to, std::fs::Permissions::from_mode(0o600)).unwrap();
                self.chown(&to);
            }
            std::fs::copy(files.path("ca.crt"), self.dir.path().join("ca.crt")).unwrap();
        }
    }

    /// Starts the postmaster and waits until it accepts connections;
    /// `Err(log)` if it exits or is not ready in time.
    async fn launch(&mut self) -> Result<(), String> {
        let log = File::options()
            .create(true)
            .append(true)
            .open(self.log_path())
            .unwrap();
        let mut command = self.server_command("postgres");
        command
            .arg("-D")
            .arg(self.data())
            .args(["-p", &self.port.to_string()])
            .arg("-k")
            .arg(self.dir.path())
            .args(["-c", "listen_addresses=127.0.0.1"])
            // Speed over durability; the log stays on stderr, in our file.
            .args(["-c", "fsync=off", "-c", "synchronous_commit=off"])
            .args(["-c", "full_page_writes=off", "-c", "logging_collector=off"])
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        if self.tls {
            command.args(["-c", "ssl=on"]);
        }
        self.child = Some(command.spawn().unwrap());
        let socket = self.dir.path().join(format!(".s.PGSQL.{}", self.port));
        let deadline = Instant::now() + READY_WITHIN;
        loop {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                self.child = None;
                return Err(format!("postgres exited ({status}):\n{}", self.log()));
            }
            if socket.exists() && self.try_sql_in("postgres", "SELECT 1").is_ok() {
                return Ok(());
            }
            if Instant::now() > deadline {
                self.stop();
                return Err(format!(
                    "not ready within {READY_WITHIN:?}:\n{}",
                    self.log()
                ));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// `postgres://tokengate@127.0.0.1:<port>/tokengate`, without the
    /// password (see [`Postgres::password`]); the same with TLS (the client
    /// chooses its sslmode).
    pub fn url(&self) -> String {
        format!("postgres://{USER}@127.0.0.1:{}/{DATABASE}", self.port)
    }

    /// The `tokengate` role's password.
    pub fn password(&self) -> &str {
        &self.password
    }

    /// The TCP port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// With [`Postgres::start_tls`], the CA that signed the server's
    /// certificate (for `sslrootcert`); `None` without TLS.
    pub fn ca_file(&self) -> Option<PathBuf> {
        self.tls.then(|| self.dir.path().join("ca.crt"))
    }

    /// Runs `sql` (one or more statements, or psql commands) in database
    /// `tokengate` as the superuser, stopping at the first error; returns
    /// psql's unaligned, tuples-only output. Panics with stderr on failure.
    pub fn sql(&self, sql: &str) -> String {
        self.sql_in(DATABASE, sql)
    }

    /// [`Postgres::sql`] in another database.
    pub fn sql_in(&self, database: &str, sql: &str) -> String {
        self.try_sql_in(database, sql)
            .unwrap_or_else(|err| panic!("psql failed on\n{sql}\n{err}"))
    }

    /// [`Postgres::sql`] that returns psql's stderr on failure.
    pub fn try_sql(&self, sql: &str) -> Result<String, String> {
        self.try_sql_in(DATABASE, sql)
    }

    fn try_sql_in(&self, database: &str, sql: &str) -> Result<String, String> {
        use std::io::Write as _;
        let mut child = Command::new(psql_binary(&self.bin))
            // No ~/.psqlrc, and none of the caller's PG* settings.
            .arg("-X")
            .arg("-h")
            .arg(self.dir.path())
            .args([
                "-p",
                &self.port.to_string(),
                "-U",
                SUPERUSER,
                "-d",
                database,
            ])
            .args(["-v", "ON_ERROR_STOP=1", "-At", "-f", "-"])
            .env_remove("PGPASSWORD")
            .env_remove("PGSERVICE")
            .env_remove("PGOPTIONS")
            .env("PGCONNECT_TIMEOUT", "5")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|err| format!("psql: {err}"))?;
        // Statements on stdin run one by one (each in its own transaction,
        // so CREATE DATABASE works) and psql commands are understood.
        let mut stdin = child.stdin.take().ok_or("psql: no stdin")?;
        stdin
            .write_all(sql.as_bytes())
            .map_err(|err| format!("psql stdin: {err}"))?;
        drop(stdin);
        let output = child
            .wait_with_output()
            .map_err(|err| format!("psql: {err}"))?;
        if output.status.success() {
            Ok(String::from_utf8_lossy(&output.stdout).into_owned())
        } else {
            Err(String::from_utf8_lossy(&output.stderr).into_owned())
        }
    }

    /// The open connections of role `tokengate` (pg_stat_activity), for
    /// pool tests.
    pub fn connection_count(&self) -> usize {
        self.sql(&format!(
            "SELECT count(*) FROM pg_stat_activity WHERE usename = '{USER}';"
        ))
        .trim()
        .parse()
        .unwrap()
    }

    /// The facts tests' schema, empty, readable (only) by `tokengate`.
    pub fn webinar_schema(&self) {
        self.sql(&format!(
            "CREATE TABLE users (
                 id text PRIMARY KEY,
                 name text,
                 suspended bool DEFAULT false
             );
             CREATE TABLE rooms (
                 id text PRIMARY KEY,
                 title text,
                 open bool DEFAULT true
             );
             CREATE TABLE room_members (
                 room_id text REFERENCES rooms,
                 user_id text REFERENCES users,
                 role text CHECK (role IN ('host', 'participant')),
                 PRIMARY KEY (room_id, user_id)
             );
             CREATE TABLE tickets (
                 event_id text,
                 user_id text,
                 PRIMARY KEY (event_id, user_id)
             );
             GRANT SELECT ON users, rooms, room_members, tickets TO {USER};"
        ));
    }

    /// Stops the server with a fast shutdown (SIGINT: connections are
    /// closed, the data is kept) and waits for it; SIGKILL if it has not
    /// exited within the bound. Does nothing when stopped.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        // We may not share a uid with the postmaster, but we are its parent
        // and, if so, root: `kill` may signal it.
        let _ = Command::new("kill")
            .args(["-s", "INT", &child.id().to_string()])
            .status();
        let deadline = Instant::now() + READY_WITHIN;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = child.kill();
        let _ = child.wait();
    }

    /// Stops the server (if running) and starts it again on the same port
    /// with the same data.
    pub async fn restart(&mut self) {
        self.stop();
        if let Err(log) = self.launch().await {
            panic!("postgres did not restart on port {}:\n{log}", self.port);
        }
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        self.stop();
    }
}
