//! The PostgreSQL test helper (`support::postgres`) does what the facts
//! tests rely on: a real server on 127.0.0.1, the superuser's `sql` for
//! schema and rows, role `tokengate` logging in over TCP with its password
//! and reading but never writing, its connections counted, data kept
//! across stop and restart on the same port, and a TLS-only variant whose
//! certificate verifies for 127.0.0.1 and which refuses plain connections.
//! The client here is psql, as tokengate would be, over TCP.

use std::io::Write as _;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::support;
use support::certs::{Ca, TlsFiles};
use support::postgres::Postgres;

/// Runs `sql` with psql over TCP as `tokengate` with `password`, with the
/// extra libpq `options` (`sslmode=...`); stdout, or stderr on failure.
fn psql_tcp(pg: &Postgres, password: &str, options: &str, sql: &str) -> Result<String, String> {
    let conninfo = format!(
        "host=127.0.0.1 port={} user=tokengate dbname=tokengate connect_timeout=5 {options}",
        pg.port()
    );
    let output = Command::new("/usr/bin/psql")
        .args(["-X", "-At", "-v", "ON_ERROR_STOP=1", &conninfo, "-c", sql])
        .env("PGPASSWORD", password)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&output.stderr).into_owned())
    }
}

/// Polls `pg.connection_count()` until it is `want` (bounded).
async fn await_connections(pg: &Postgres, want: usize) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let count = pg.connection_count();
        if count == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "tokengate has {count} connections, want {want}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn plain_server_reads_only_counts_connections_and_survives_a_restart() {
    let started = Instant::now();
    let mut pg = Postgres::start().await;
    eprintln!("postgres started in {:?}", started.elapsed());
    assert_eq!(
        pg.url(),
        format!("postgres://tokengate@127.0.0.1:{}/tokengate", pg.port())
    );

    pg.webinar_schema();
    pg.sql(
        "INSERT INTO users (id, name) VALUES ('u1', 'Ada'), ('u2', 'Bob');
         INSERT INTO rooms (id, title) VALUES ('r1', 'Launch');
         INSERT INTO room_members VALUES ('r1', 'u1', 'host');",
    );
    assert_eq!(
        pg.sql("SELECT id, name, suspended FROM users ORDER BY id;"),
        "u1|Ada|f\nu2|Bob|f\n"
    );
    // The schema's constraints are there: a third role is refused.
    let err = pg
        .try_sql("INSERT INTO room_members VALUES ('r1', 'u2', 'owner');")
        .unwrap_err();
    assert!(err.contains("check constraint"), "{err}");

    // tokengate reads over TCP with its password, and only with it.
    let rows = psql_tcp(
        &pg,
        pg.password(),
        "sslmode=disable",
        "SELECT r.title, m.role FROM room_members m JOIN rooms r ON r.id = m.room_id \
         WHERE m.user_id = 'u1'",
    )
    .unwrap();
    assert_eq!(rows, "Launch|host\n");
    let err = psql_tcp(&pg, "wrong", "sslmode=disable", "SELECT 1").unwrap_err();
    assert!(err.contains("password authentication failed"), "{err}");
    // ...and cannot write.
    for write in [
        "INSERT INTO users (id) VALUES ('u3')",
        "DELETE FROM users",
        "UPDATE users SET suspended = true",
    ] {
        let err = psql_tcp(&pg, pg.password(), "sslmode=disable", write).unwrap_err();
        assert!(err.contains("permission denied"), "{write}: {err}");
    }
    // A table made later is readable too (default privileges), until revoked.
    pg.sql("CREATE TABLE later (x int); INSERT INTO later VALUES (7);");
    assert_eq!(
        psql_tcp(&pg, pg.password(), "sslmode=disable", "SELECT x FROM later").unwrap(),
        "7\n"
    );
    pg.sql("REVOKE SELECT ON later FROM tokengate;");
    let err = psql_tcp(&pg, pg.password(), "sslmode=disable", "SELECT x FROM later").unwrap_err();
    assert!(err.contains("permission denied"), "{err}");

    // An open session is counted, and no longer once it ends.
    assert_eq!(pg.connection_count(), 0);
    let mut session = Command::new("/usr/bin/psql")
        .args(["-X", "-At", "-h", "127.0.0.1", "-p", &pg.port().to_string()])
        .args(["-U", "tokengate", "-d", "tokengate"])
        .env("PGPASSWORD", pg.password())
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdin = session.stdin.take().unwrap();
    stdin.write_all(b"SELECT 1;\n").unwrap();
    await_connections(&pg, 1).await;
    drop(stdin);
    assert!(session.wait().unwrap().success());
    await_connections(&pg, 0).await;

    // Stopped, it refuses connections; restarted on the same port, it has
    // the same data.
    let port = pg.port();
    pg.stop();
    let err = psql_tcp(&pg, pg.password(), "sslmode=disable", "SELECT 1").unwrap_err();
    assert!(err.contains("Connection refused"), "{err}");
    pg.restart().await;
    assert_eq!(pg.port(), port);
    assert_eq!(
        psql_tcp(
            &pg,
            pg.password(),
            "sslmode=disable",
            "SELECT count(*) FROM users"
        )
        .unwrap(),
        "2\n"
    );
    // NOTIFY from the superuser works (the facts tests' cache invalidation).
    pg.sql("NOTIFY facts, 'users:u1';");
}

#[tokio::test]
async fn tls_server_verifies_for_loopback_and_refuses_plain_connections() {
    let ca = Ca::new("postgres test CA");
    let files = TlsFiles::new(&ca);
    let pg = Postgres::start_tls(&files).await;
    drop(files); // The server and its CA file no longer need the originals.
    let ca_file = pg.ca_file().unwrap();

    let verified = format!(
        "sslmode=verify-full sslrootcert={}",
        ca_file.to_str().unwrap()
    );
    let out = psql_tcp(
        &pg,
        pg.password(),
        &verified,
        "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
    )
    .unwrap();
    assert_eq!(out, "t\n");

    let err = psql_tcp(&pg, pg.password(), "sslmode=disable", "SELECT 1").unwrap_err();
    assert!(err.contains("no encryption"), "{err}");

    // A CA that did not sign the server's certificate fails verification.
    let other = TlsFiles::new(&Ca::new("another CA"));
    let wrong = format!(
        "sslmode=verify-full sslrootcert={}",
        other.path("ca.crt").to_str().unwrap()
    );
    let err = psql_tcp(&pg, pg.password(), &wrong, "SELECT 1").unwrap_err();
    assert!(err.contains("certificate verify failed"), "{err}");
}
