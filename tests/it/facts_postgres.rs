//! Facts from a real PostgreSQL (the server binaries on the machine, started
//! on loopback by `support::postgres`): rules that read room membership from
//! `room_members`, through the real server over gRPC.
//!
//! A participant gets a subscriber token, a host a publisher token, a
//! stranger `no_matching_rule`; a deleted row revokes access after the TTL,
//! and at once with LISTEN/NOTIFY; a capture full of SQL is only ever a
//! parameter; the connection is read-only and the statement timeout is the
//! server's; PostgreSQL stopped gives `fact_unavailable`, never an allow,
//! and its return needs no restart; TLS to the database works; ExplainAccess
//! shows the facts, their values, the cache and the time.

use std::time::Duration;

use serde_json::json;
use tonic::Code;

use crate::support;
use support::calls::{denied_reason, eventually, explain_rtc, issue_rtc, refusal};
use support::postgres::Postgres;
use support::server::{TestServer, config_text, test_keys};
use tokengate::grpc::pb;

/// Hosts publish, participants subscribe; anyone may explain.
const RULES: &str = r#"
[[rules]]
name = "explainers"
actions = ["explain"]

[[rules]]
name = "room hosts"
actions = ["rtc"]
channel = "room-{room}"
condition = 'size(facts.membership) > 0 && facts.membership[0].role == "host"'
project = "main"
max_role = "publisher"
account_claim = "sub"

[[rules]]
name = "room participants"
actions = ["rtc"]
channel = "room-{room}"
condition = 'size(facts.membership) > 0'
project = "main"
max_role = "subscriber"
account_claim = "sub"
"#;

/// The database's config, then the membership fact with `fact_extra` keys.
fn facts_config(
    pg: &Postgres,
    password: &std::path::Path,
    db_extra: &str,
    fact_extra: &str,
) -> String {
    format!(
        r#"
[databases.main]
url = "{url}"
password_file = "{password}"
pool_size = 4
{db_extra}

[[facts]]
name = "membership"
kind = "postgres"
database = "main"
query = "SELECT role FROM room_members WHERE room_id = $1 AND user_id = $2"
params = ["{{captures.room}}", "{{caller.subject}}"]
timeout = "2s"
{fact_extra}
"#,
        url = pg.url(),
        password = password.display(),
    )
}

/// A database with the webinar schema, rooms r1 and r2, and alice hosting
/// r1, bob in it; its password in a file in `dir`.
async fn database(dir: &tempfile::TempDir) -> (Postgres, std::path::PathBuf) {
    let pg = Postgres::start().await;
    seed(&pg);
    let password = dir.path().join("pg-password");
    std::fs::write(&password, format!("{}\n", pg.password())).unwrap();
    (pg, password)
}

fn seed(pg: &Postgres) {
    pg.webinar_schema();
    pg.sql(
        "INSERT INTO users (id) VALUES ('alice'), ('bob'), ('carol');
         INSERT INTO rooms (id) VALUES ('r1'), ('r2');
         INSERT INTO room_members VALUES ('r1', 'alice', 'host'), ('r1', 'bob', 'participant');",
    );
}

async fn start(facts: &str) -> TestServer {
    let (jwks, es256, rs256) = test_keys().await;
    let text = format!("{}{facts}", config_text(&jwks.jwks_url(), RULES));
    let server = TestServer::start_with(text, jwks, es256, rs256).await;
    server.wait_ready().await;
    server
}

async fn issue(
    server: &TestServer,
    sub: &str,
    channel: &str,
    role: pb::Role,
) -> Result<pb::IssueRtcTokenResponse, tonic::Status> {
    issue_rtc(server, &server.mint(sub, json!({})), channel, role).await
}

async fn explain(server: &TestServer, sub: &str, channel: &str) -> pb::ExplainAccessResponse {
    explain_rtc(server, &server.mint(sub, json!({})), channel).await
}

#[tokio::test]
async fn hosts_publish_participants_subscribe_and_strangers_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (pg, password) = database(&dir).await;
    let server = start(&facts_config(&pg, &password, "", "")).await;
    let host = issue(&server, "alice", "room-r1", pb::Role::Publisher)
        .await
        .unwrap();
    let host = host.issued.unwrap();
    assert!(!host.token.is_empty());
    assert_eq!(host.role, pb::Role::Publisher as i32);
    let participant = issue(&server, "bob", "room-r1", pb::Role::Subscriber)
        .await
        .unwrap();
    let participant = participant.issued.unwrap();
    assert!(!participant.token.is_empty());
    assert_eq!(participant.role, pb::Role::Subscriber as i32);
    let status = issue(&server, "bob", "room-r1", pb::Role::Publisher)
        .await
        .unwrap_err();
    assert_eq!(
        refusal(&status, Code::PermissionDenied).0,
        "role_not_allowed"
    );
    assert_eq!(
        denied_reason(issue(&server, "carol", "room-r1", pb::Role::Subscriber).await),
        "no_matching_rule"
    );
    // Membership is per room: alice hosts r1, not r2.
    assert_eq!(
        denied_reason(issue(&server, "alice", "room-r2", pb::Role::Subscriber).await),
        "no_matching_rule"
    );
    server.shutdown().await;
}

#[tokio::test]
async fn a_deleted_row_revokes_access_after_the_ttl_and_a_new_one_grants_after_the_negative_ttl() {
    let dir = tempfile::tempdir().unwrap();
    let (pg, password) = database(&dir).await;
    let server = start(&facts_config(
        &pg,
        &password,
        "",
        "ttl = \"2s\"\nnegative_ttl = \"1s\"",
    ))
    .await;
    issue(&server, "bob", "room-r1", pb::Role::Subscriber)
        .await
        .unwrap();
    pg.sql("DELETE FROM room_members WHERE user_id = 'bob'");
    // Cached: the deletion is not seen yet (the TTL is what bounds it).
    issue(&server, "bob", "room-r1", pb::Role::Subscriber)
        .await
        .unwrap();
    let revoked_at = tokio::time::Instant::now();
    assert!(
        eventually(Duration::from_secs(6), || async {
            issue(&server, "bob", "room-r1", pb::Role::Subscriber)
                .await
                .is_err()
        })
        .await,
        "access was never revoked"
    );
    assert!(
        revoked_at.elapsed() <= Duration::from_secs(3),
        "revoked late: {:?}",
        revoked_at.elapsed()
    );
    assert_eq!(
        denied_reason(issue(&server, "carol", "room-r1", pb::Role::Subscriber).await),
        "no_matching_rule"
    );
    pg.sql("INSERT INTO room_members VALUES ('r1', 'carol', 'participant')");
    assert!(
        eventually(Duration::from_secs(4), || async {
            issue(&server, "carol", "room-r1", pb::Role::Subscriber)
                .await
                .is_ok()
        })
        .await,
        "the negative entry never expired"
    );
    server.shutdown().await;
}

/// Waits until the database's LISTEN connection is up (its metric says so).
async fn listener_up(server: &TestServer) {
    let client = reqwest::Client::new();
    let url = format!("http://{}/metrics", server.admin);
    let up = eventually(Duration::from_secs(10), || async {
        let text = client.get(&url).send().await.unwrap().text().await.unwrap();
        text.lines()
            .any(|l| l.starts_with("tokengate_fact_listener_up{database=\"main\"} 1"))
    })
    .await;
    assert!(up, "the listener never came up");
}

#[tokio::test]
async fn notify_revokes_at_once_by_key_or_for_the_whole_fact() {
    let dir = tempfile::tempdir().unwrap();
    let (pg, password) = database(&dir).await;
    let server = start(&facts_config(
        &pg,
        &password,
        "",
        "ttl = \"1h\"\nnegative_ttl = \"1h\"\nnotify_channel = \"room_members_changed\"",
    ))
    .await;
    listener_up(&server).await;
    issue(&server, "bob", "room-r1", pb::Role::Subscriber)
        .await
        .unwrap();
    issue(&server, "alice", "room-r1", pb::Role::Publisher)
        .await
        .unwrap();
    // A payload naming the inputs drops that entry only.
    pg.sql("DELETE FROM room_members WHERE user_id = 'bob'; NOTIFY room_members_changed, '[\"r1\", \"bob\"]';");
    assert!(
        eventually(Duration::from_secs(1), || async {
            issue(&server, "bob", "room-r1", pb::Role::Subscriber)
                .await
                .is_err()
        })
        .await,
        "bob kept access for more than a second after NOTIFY"
    );
    pg.sql("UPDATE room_members SET role = 'participant' WHERE user_id = 'alice'");
    // Without a notification, alice's cached host entry stands (ttl 1h)...
    issue(&server, "alice", "room-r1", pb::Role::Publisher)
        .await
        .unwrap();
    // ...and an empty payload drops them all.
    pg.sql("NOTIFY room_members_changed");
    assert!(
        eventually(Duration::from_secs(1), || async {
            issue(&server, "alice", "room-r1", pb::Role::Publisher)
                .await
                .is_err()
        })
        .await,
        "alice kept publishing for more than a second after NOTIFY"
    );
    issue(&server, "alice", "room-r1", pb::Role::Subscriber)
        .await
        .unwrap();
    server.shutdown().await;
}

#[tokio::test]
async fn a_capture_with_sql_in_it_is_only_ever_a_parameter() {
    let dir = tempfile::tempdir().unwrap();
    let (pg, password) = database(&dir).await;
    let hostile = "x;DROP TABLE room_members;--";
    pg.sql(&format!(
        "INSERT INTO rooms (id) VALUES ('{hostile}'), ('$1');
         INSERT INTO room_members VALUES ('{hostile}', 'carol', 'participant');"
    ));
    let server = start(&facts_config(&pg, &password, "", "")).await;
    for channel in [
        "room-r1;DROP TABLE room_members;--",
        "room-r1 OR 1=1",
        "room-$1",
        "room-r1%",
    ] {
        assert_eq!(
            denied_reason(issue(&server, "bob", channel, pb::Role::Subscriber).await),
            "no_matching_rule",
            "{channel}"
        );
    }
    // The text is matched as it is, as a value: carol is in the room of that name.
    issue(
        &server,
        "carol",
        &format!("room-{hostile}"),
        pb::Role::Subscriber,
    )
    .await
    .unwrap();
    assert_eq!(pg.sql("SELECT count(*) FROM room_members").trim(), "3");
    server.shutdown().await;
}

#[tokio::test]
async fn connections_are_read_only_and_the_statement_timeout_is_the_servers() {
    let dir = tempfile::tempdir().unwrap();
    let (pg, password) = database(&dir).await;
    // Even with the privilege, a fact cannot write.
    pg.sql("GRANT DELETE ON room_members TO tokengate");
    let (jwks, es256, rs256) = test_keys().await;
    let rules = r#"
[[rules]]
name = "explainers"
actions = ["explain"]

[[rules]]
name = "writer"
actions = ["rtc"]
channel = "write-{room}"
condition = 'size(facts.writes) > 0'
project = "main"
account_claim = "sub"

[[rules]]
name = "sleeper"
actions = ["rtc"]
channel = "slow-{room}"
condition = 'size(facts.slow) > 0'
project = "main"
account_claim = "sub"
"#;
    let facts = format!(
        r#"{db}
[[facts]]
name = "writes"
kind = "postgres"
database = "main"
query = "WITH d AS (DELETE FROM room_members WHERE room_id = $1 RETURNING 1) SELECT count(*)::int8 AS n FROM d"
params = ["{{captures.room}}"]

[[facts]]
name = "slow"
kind = "postgres"
database = "main"
query = "SELECT pg_sleep(2)::text AS slept WHERE $1 <> ''"
params = ["{{captures.room}}"]
timeout = "3s"
"#,
        db = facts_config(&pg, &password, "statement_timeout = \"200ms\"", "")
    );
    let text = format!("{}{facts}", config_text(&jwks.jwks_url(), rules));
    let server = TestServer::start_with(text, jwks, es256, rs256).await;
    server.wait_ready().await;
    let status = issue(&server, "bob", "write-r1", pb::Role::Subscriber)
        .await
        .unwrap_err();
    let (reason, metadata) = refusal(&status, Code::PermissionDenied);
    assert_eq!(reason, "fact_unavailable");
    assert_eq!(metadata.get("fact").map(String::as_str), Some("writes"));
    assert_eq!(metadata.get("rule").map(String::as_str), Some("writer"));
    let reply = explain(&server, "bob", "write-r1").await;
    let fact = &reply
        .trace
        .iter()
        .find(|r| r.rule == "writer")
        .unwrap()
        .facts[0];
    // 25006: read_only_sql_transaction.
    assert!(fact.error.contains("25006"), "{fact:?}");
    assert_eq!(pg.sql("SELECT count(*) FROM room_members").trim(), "2");
    let started = std::time::Instant::now();
    assert_eq!(
        denied_reason(issue(&server, "bob", "slow-r1", pb::Role::Subscriber).await),
        "fact_unavailable"
    );
    // Ended by the server's statement_timeout (57014), well before the fact's 3 s.
    assert!(
        started.elapsed() < Duration::from_millis(1500),
        "{:?}",
        started.elapsed()
    );
    let reply = explain(&server, "carol", "slow-r2").await;
    let fact = &reply
        .trace
        .iter()
        .find(|r| r.rule == "sleeper")
        .unwrap()
        .facts[0];
    assert!(fact.error.contains("57014"), "{fact:?}");
    server.shutdown().await;
}

#[tokio::test]
async fn postgres_stopped_is_fact_unavailable_never_an_allow_and_recovery_needs_no_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (mut pg, password) = database(&dir).await;
    let server = start(&facts_config(
        &pg,
        &password,
        "connect_timeout = \"500ms\"",
        "ttl = \"0s\"\nnegative_ttl = \"0s\"\nerror_ttl = \"200ms\"",
    ))
    .await;
    issue(&server, "bob", "room-r1", pb::Role::Subscriber)
        .await
        .unwrap();
    pg.stop();
    for sub in ["alice", "bob", "carol"] {
        let status = issue(&server, sub, "room-r1", pb::Role::Subscriber)
            .await
            .unwrap_err();
        let (reason, metadata) = refusal(&status, Code::PermissionDenied);
        assert_eq!(reason, "fact_unavailable", "{sub}");
        assert_eq!(metadata.get("fact").map(String::as_str), Some("membership"));
    }
    let reply = explain(&server, "bob", "room-r1").await;
    assert_eq!(reply.decision, pb::Decision::Deny as i32);
    assert_eq!(reply.deny_reason, "fact_unavailable");
    let hosts = reply.trace.iter().find(|r| r.rule == "room hosts").unwrap();
    let fact = &hosts.facts[0];
    assert!(
        !fact.error.is_empty() && fact.value_json.is_empty(),
        "{fact:?}"
    );
    assert!(hosts.detail.contains("fact_unavailable"), "{hosts:?}");
    pg.restart().await;
    assert!(
        eventually(Duration::from_secs(10), || async {
            issue(&server, "bob", "room-r1", pb::Role::Subscriber)
                .await
                .is_ok()
        })
        .await,
        "access did not come back after PostgreSQL did"
    );
    assert_eq!(
        denied_reason(issue(&server, "carol", "room-r1", pb::Role::Subscriber).await),
        "no_matching_rule"
    );
    server.shutdown().await;
}

#[tokio::test]
async fn explain_shows_each_rules_facts_their_values_the_cache_and_the_time() {
    let dir = tempfile::tempdir().unwrap();
    let (pg, password) = database(&dir).await;
    let server = start(&facts_config(&pg, &password, "", "")).await;
    let first = explain(&server, "bob", "room-r1").await;
    assert_eq!(first.decision, pb::Decision::Allow as i32);
    assert_eq!(first.matched_rule, "room participants");
    let hosts = first.trace.iter().find(|r| r.rule == "room hosts").unwrap();
    let participants = first
        .trace
        .iter()
        .find(|r| r.rule == "room participants")
        .unwrap();
    for rule in [hosts, participants] {
        assert_eq!(rule.facts.len(), 1, "{rule:?}");
        let fact = &rule.facts[0];
        assert_eq!(fact.name, "membership");
        assert_eq!(fact.inputs, vec!["r1", "bob"]);
        assert_eq!(fact.value_json, r#"[{"role":"participant"}]"#);
        assert!(fact.error.is_empty());
        assert!(!fact.cached, "the first explain fetched it: {fact:?}");
        assert!(fact.took.is_some());
    }
    let second = explain(&server, "bob", "room-r1").await;
    let fact = &second
        .trace
        .iter()
        .find(|r| r.rule == "room hosts")
        .unwrap()
        .facts[0];
    assert!(fact.cached, "{fact:?}");
    let stranger = explain(&server, "carol", "room-r1").await;
    assert_eq!(stranger.deny_reason, "no_matching_rule");
    let hosts = stranger
        .trace
        .iter()
        .find(|r| r.rule == "room hosts")
        .unwrap();
    assert_eq!(hosts.facts[0].value_json, "[]");
    server.shutdown().await;
}

#[tokio::test]
async fn the_database_may_require_tls() {
    let files = support::certs::TlsFiles::new(&support::certs::Ca::new("database CA"));
    let pg = Postgres::start_tls(&files).await;
    seed(&pg);
    let dir = tempfile::tempdir().unwrap();
    let password = dir.path().join("pg-password");
    std::fs::write(&password, pg.password()).unwrap();
    let ca = pg.ca_file().unwrap();
    let db_extra = format!("ca_file = \"{}\"", ca.display());
    let mut facts = facts_config(&pg, &password, &db_extra, "");
    facts = facts.replace(&pg.url(), &format!("{}?sslmode=require", pg.url()));
    let server = start(&facts).await;
    issue(&server, "bob", "room-r1", pb::Role::Subscriber)
        .await
        .unwrap();
    assert_eq!(
        denied_reason(issue(&server, "carol", "room-r1", pb::Role::Subscriber).await),
        "no_matching_rule"
    );
    server.shutdown().await;
    // Without the CA, the server's certificate is not trusted: the fact fails closed.
    let other = support::certs::TlsFiles::new(&support::certs::Ca::new("another CA"));
    let wrong = facts_config(
        &pg,
        &password,
        &format!("ca_file = \"{}\"", other.path("ca.crt").display()),
        "",
    )
    .replace(&pg.url(), &format!("{}?sslmode=require", pg.url()));
    let server = start(&wrong).await;
    assert_eq!(
        denied_reason(issue(&server, "bob", "room-r1", pb::Role::Subscriber).await),
        "fact_unavailable"
    );
    server.shutdown().await;
}

/// A TCP proxy to `target` that holds each new connection `delay` before
/// passing bytes: a database that is slow to connect to.
async fn slow_proxy(target: u16, delay: Duration) -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut inbound, _)) = listener.accept().await {
            tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                if let Ok(mut outbound) =
                    tokio::net::TcpStream::connect(("127.0.0.1", target)).await
                {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                }
            });
        }
    });
    port
}

#[tokio::test]
async fn a_connection_slower_than_the_facts_timeout_is_still_made_and_pooled() {
    let dir = tempfile::tempdir().unwrap();
    let (mut pg, password) = database(&dir).await;
    let port = slow_proxy(pg.port(), Duration::from_millis(1500)).await;
    let facts = facts_config(&pg, &password, "", "")
        .replace(&format!(":{}/", pg.port()), &format!(":{port}/"))
        .replace(
            "timeout = \"2s\"",
            "timeout = \"500ms\"\nttl = \"0s\"\nnegative_ttl = \"0s\"\nerror_ttl = \"0s\"",
        );
    assert!(facts.contains(&format!(":{port}/")), "{facts}");
    let server = start(&facts).await;
    // Each call gives up after 500 ms, but the connection it started (1.5 s
    // to open) is finished and pooled: calls succeed from then on. Were it
    // dropped with the call, every call would start a connection anew and
    // none would ever finish.
    assert!(
        eventually(Duration::from_secs(15), || async {
            issue(&server, "bob", "room-r1", pb::Role::Subscriber)
                .await
                .is_ok()
        })
        .await,
        "no call ever got a connection"
    );
    // A restart kills the pooled connections: new ones are opened the same
    // way, by calls that each give up before a connection is ready.
    pg.restart().await;
    assert!(
        eventually(Duration::from_secs(15), || async {
            issue(&server, "bob", "room-r1", pb::Role::Subscriber)
                .await
                .is_ok()
        })
        .await,
        "no call got a connection after PostgreSQL restarted: {:?}",
        issue(&server, "bob", "room-r1", pb::Role::Subscriber).await
    );
    server.shutdown().await;
}

#[tokio::test]
async fn a_schema_change_under_a_prepared_statement_costs_one_call_not_every_call() {
    let dir = tempfile::tempdir().unwrap();
    let (pg, password) = database(&dir).await;
    let facts = facts_config(
        &pg,
        &password,
        "",
        "ttl = \"0s\"\nnegative_ttl = \"0s\"\nerror_ttl = \"0s\"",
    )
    .replace("pool_size = 4", "pool_size = 1");
    let server = start(&facts).await;
    issue(&server, "bob", "room-r1", pb::Role::Subscriber)
        .await
        .unwrap();
    // The one pooled connection's prepared statement now returns a column
    // whose type changed: PostgreSQL refuses it (0A000) once.
    pg.sql("ALTER TABLE room_members ALTER COLUMN role TYPE varchar(20)");
    let mut failures = 0;
    for _ in 0..5 {
        if issue(&server, "bob", "room-r1", pb::Role::Subscriber)
            .await
            .is_err()
        {
            failures += 1;
        }
    }
    assert!(
        failures <= 1,
        "{failures} of 5 calls failed after the schema change"
    );
    server.shutdown().await;
}

#[tokio::test]
async fn a_ca_file_means_tls_or_nothing() {
    // A server without TLS: with ca_file set, tokengate must not fall back
    // to plaintext (as the driver's default `prefer` would).
    let dir = tempfile::tempdir().unwrap();
    let (pg, password) = database(&dir).await;
    let ca = support::certs::TlsFiles::new(&support::certs::Ca::new("database CA"));
    let facts = facts_config(
        &pg,
        &password,
        &format!("ca_file = \"{}\"", ca.path("ca.crt").display()),
        "",
    );
    let server = start(&facts).await;
    assert_eq!(
        denied_reason(issue(&server, "bob", "room-r1", pb::Role::Subscriber).await),
        "fact_unavailable"
    );
    server.shutdown().await;
}
