//! The example's webinar rules (`deploy/examples/policy.toml` section 4) and
//! their facts (`deploy/examples/tokengate.toml`) against a real PostgreSQL
//! loaded with `deploy/examples/facts-schema.sql`, through the real server:
//! hosts publish, ticket holders watch, and the schema's triggers make a
//! change reach the rules at once (a new ticket grants, a removed host
//! loses publishing) although the example caches for minutes.

use std::time::Duration;

use serde_json::json;

use crate::support;
use support::calls::{denied_reason, eventually, issue_rtc};
use support::postgres::Postgres;
use support::server::{ISSUER, TestServer, config_text, test_keys};
use tokengate::grpc::pb;

fn example(name: &str) -> String {
    std::fs::read_to_string(format!(
        "{}/deploy/examples/{name}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap()
}

/// The example's webinar rules, for the test issuer and project.
fn webinar_rules() -> String {
    let policy = example("policy.toml");
    let start = policy.find("# 4. Webinars").expect("a webinar section");
    let end = policy[start..].find("# 5.").expect("a section after it") + start;
    policy[start..end]
        .replace("https://login.example.com", ISSUER)
        .replace("project = \"events\"", "project = \"main\"")
}

/// The example's `[databases]` and `[[facts]]`, pointed at `pg`.
fn example_facts(pg: &Postgres, password: &std::path::Path) -> String {
    let config = example("tokengate.toml");
    let start = config.find("[databases.app]").expect("a database");
    let facts = &config[start..];
    assert!(facts.contains("password_env = \"TOKENGATE_DB_PASSWORD\""));
    facts
        .replace("postgres://tokengate@postgres.app.svc:5432/app", &pg.url())
        .replace(
            "password_env = \"TOKENGATE_DB_PASSWORD\"",
            &format!("password_file = \"{}\"", password.display()),
        )
}

async fn issue(
    server: &TestServer,
    sub: &str,
    channel: &str,
    role: pb::Role,
) -> Result<pb::IssueRtcTokenResponse, tonic::Status> {
    issue_rtc(server, &server.mint(sub, json!({})), channel, role).await
}

#[tokio::test]
async fn the_example_webinar_rules_run_on_the_example_schema() {
    let pg = Postgres::start().await;
    pg.sql(&example("facts-schema.sql"));
    pg.sql(
        "INSERT INTO event_hosts VALUES ('launch', 'host-7');
         INSERT INTO tickets VALUES ('launch', 'guest-9', 'standard'), ('launch', 'refund-1', 'refunded');",
    );
    let dir = tempfile::tempdir().unwrap();
    let password = dir.path().join("db-password");
    std::fs::write(&password, pg.password()).unwrap();
    let (jwks, es256, rs256) = test_keys().await;
    let text = format!(
        "{}{}",
        config_text(&jwks.jwks_url(), &webinar_rules()),
        example_facts(&pg, &password)
    );
    let server = TestServer::start_with(text, jwks, es256, rs256).await;
    server.wait_ready().await;
    let launch = "webinar-launch";

    issue(&server, "host-7", launch, pb::Role::Publisher)
        .await
        .unwrap();
    issue(&server, "guest-9", launch, pb::Role::Subscriber)
        .await
        .unwrap();
    assert_eq!(
        denied_reason(issue(&server, "guest-9", launch, pb::Role::Publisher).await),
        "role_not_allowed"
    );
    assert_eq!(
        denied_reason(issue(&server, "refund-1", launch, pb::Role::Subscriber).await),
        "no_matching_rule"
    );
    assert_eq!(
        denied_reason(issue(&server, "newcomer", launch, pb::Role::Subscriber).await),
        "no_matching_rule"
    );

    // The example caches an empty answer for 10 s and a found one for 5
    // minutes; the triggers' NOTIFY drops just the changed key at once.
    pg.sql("INSERT INTO tickets VALUES ('launch', 'newcomer', 'standard')");
    assert!(
        eventually(Duration::from_secs(2), || async {
            issue(&server, "newcomer", launch, pb::Role::Subscriber)
                .await
                .is_ok()
        })
        .await,
        "a new ticket was not seen within 2 s"
    );
    pg.sql("DELETE FROM event_hosts WHERE user_id = 'host-7'");
    assert!(
        eventually(Duration::from_secs(2), || async {
            issue(&server, "host-7", launch, pb::Role::Publisher)
                .await
                .is_err()
        })
        .await,
        "a removed host kept publishing for more than 2 s"
    );
    pg.sql("UPDATE tickets SET tier = 'refunded' WHERE user_id = 'guest-9'");
    assert!(
        eventually(Duration::from_secs(2), || async {
            issue(&server, "guest-9", launch, pb::Role::Subscriber)
                .await
                .is_err()
        })
        .await,
        "a refunded ticket kept its access for more than 2 s"
    );
    server.shutdown().await;
}
