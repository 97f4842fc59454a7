//! The real server on 127.0.0.1:0 with a real JWKS server, called with a tonic client.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use serde_json::json;
use support::server::{APP_ID, PRIMARY_CERT, TestServer};
use tokengate::grpc::pb;
use tokengate::token::{AppCertificate, services::ServiceKind, v007};

const RULES: &str = r#"
[[rules]]
name = "team rooms"
actions = ["rtc"]
issuer = "https://idp.test.example"
channel = "team-{team}-*"
condition = 'has(claims.teams) && captures.team in claims.teams'
project = "main"
max_role = "publisher"
uid_claim = "agora_uid"
default_ttl = "1h"
max_ttl = "8h"
"#;

#[tokio::test]
async fn an_rtc_token_carries_exactly_the_grant() {
    let server = TestServer::start(RULES).await;
    server.wait_ready().await;
    let jwt = server.mint("alice", json!({"teams": ["blue"], "agora_uid": 4242}));
    let mut client = server.client().await;
    let reply = client
        .issue_rtc_token(TestServer::authed(
            &jwt,
            pb::IssueRtcTokenRequest {
                channel: "team-blue-standup".into(),
                role: pb::Role::Publisher as i32,
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .issued
        .unwrap();
    assert_eq!(reply.app_id, APP_ID);
    assert_eq!(reply.matched_rule, "team rooms");
    assert_eq!(reply.identity, Some(pb::issued_token::Identity::Uid(4242)));
    let parsed = v007::parse(&reply.token).unwrap();
    assert!(parsed.verify(&AppCertificate::parse(PRIMARY_CERT).unwrap()));
    assert_eq!(parsed.token.expire, 3600);
    match &parsed.token.services[0].kind {
        ServiceKind::Rtc { channel_name, uid } => {
            assert_eq!(channel_name, b"team-blue-standup");
            assert_eq!(uid, b"4242");
        }
        other => panic!("unexpected service {other:?}"),
    }
    server.shutdown().await;
}
