//! The real server on 127.0.0.1:0 with a real JWKS server, called with a tonic client:
//! every RPC's success path (the issued token parsed, verified and compared
//! field by field with the reply) and every error status with its details.

use crate::support;

use jsonwebtoken::Algorithm;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tonic::Code;
use tonic_types::StatusExt;

use support::fixtures::{API_RULES, TEAM_ROOMS_SUBSCRIBERS_ONLY, rtc, secs};
use support::server::{APP_ID, ISSUER, PRIMARY_CERT, SECONDARY_CERT, TestServer, config_text};
use support::{JwksServer, TestKey, unix_now};
use tokengate::grpc::pb;
use tokengate::grpc::pb::issued_token::Identity;
use tokengate::token::builders::{Issue, RtcPrivileges, raw};
use tokengate::token::services::{
    PermissionType, ResourceType, Rtm2Permissions, Service, ServiceKind,
};
use tokengate::token::{AppCertificate, AppId, v006, v007};

const HOUR: u32 = 3600;
const HALF_HOUR: u32 = 1800;

// ---------------------------------------------------------------------------
// Callers and requests.

fn alice(server: &TestServer) -> String {
    server.mint("alice", json!({"teams": ["blue"], "agora_uid": 4242}))
}

fn backend(server: &TestServer) -> String {
    server.mint("svc-backend", json!({"scope": "tokens:mint"}))
}

fn debugger(server: &TestServer) -> String {
    server.mint(
        "dev",
        json!({"scope": "tokengate:debug", "teams": ["blue"], "agora_uid": 9}),
    )
}

async fn issue_rtc(
    server: &TestServer,
    jwt: &str,
    request: pb::IssueRtcTokenRequest,
) -> Result<pb::IssuedToken, tonic::Status> {
    let mut client = server.client().await;
    client
        .issue_rtc_token(TestServer::authed(jwt, request))
        .await
        .map(|r| r.into_inner().issued.expect("issued is set"))
}

async fn issue_rtm(
    server: &TestServer,
    jwt: &str,
    request: pb::IssueRtmTokenRequest,
) -> Result<pb::IssuedToken, tonic::Status> {
    let mut client = server.client().await;
    client
        .issue_rtm_token(TestServer::authed(jwt, request))
        .await
        .map(|r| r.into_inner().issued.expect("issued is set"))
}

async fn issue_chat(
    server: &TestServer,
    jwt: &str,
    request: pb::IssueChatTokenRequest,
) -> Result<pb::IssuedToken, tonic::Status> {
    let mut client = server.client().await;
    client
        .issue_chat_token(TestServer::authed(jwt, request))
        .await
        .map(|r| r.into_inner().issued.expect("issued is set"))
}

async fn renew(
    server: &TestServer,
    jwt: &str,
    token: &str,
    lifetimes: Option<pb::Lifetimes>,
) -> Result<pb::IssuedToken, tonic::Status> {
    let mut client = server.client().await;
    client
        .renew_token(TestServer::authed(
            jwt,
            pb::RenewTokenRequest {
                token: token.into(),
                lifetimes,
                channel: String::new(),
            },
        ))
        .await
        .map(|r| r.into_inner().issued.expect("issued is set"))
}

async fn inspect(
    server: &TestServer,
    jwt: &str,
    request: pb::InspectTokenRequest,
) -> Result<pb::InspectTokenResponse, tonic::Status> {
    let mut client = server.client().await;
    client
        .inspect_token(TestServer::authed(jwt, request))
        .await
        .map(tonic::Response::into_inner)
}

async fn explain(
    server: &TestServer,
    jwt: &str,
    request: Option<pb::explain_access_request::Request>,
) -> Result<pb::ExplainAccessResponse, tonic::Status> {
    let mut client = server.client().await;
    client
        .explain_access(TestServer::authed(
            jwt,
            pb::ExplainAccessRequest { request },
        ))
        .await
        .map(tonic::Response::into_inner)
}

async fn ready(rules: &str) -> TestServer {
    let server = TestServer::start(rules).await;
    server.wait_ready().await;
    server
}

// ---------------------------------------------------------------------------
// Expected tokens.

fn rtc_service(channel: &str, uid: &str, privileges: &[(u16, u32)]) -> Service {
    privileges.iter().fold(
        Service::new(ServiceKind::Rtc {
            channel_name: channel.as_bytes().to_vec(),
            uid: uid.as_bytes().to_vec(),
        }),
        |s, &(id, v)| s.with_privilege(id, v),
    )
}

fn publisher(join: u32, publish: u32) -> Vec<(u16, u32)> {
    vec![(1, join), (2, publish), (3, publish), (4, publish)]
}

fn rtm_service(user: &str, login: u32) -> Service {
    Service::new(ServiceKind::Rtm {
        user_id: user.as_bytes().to_vec(),
    })
    .with_privilege(1, login)
}

fn chat_service(user: &str, privilege: u16, value: u32) -> Service {
    Service::new(ServiceKind::Chat {
        user_id: user.as_bytes().to_vec(),
    })
    .with_privilege(privilege, value)
}

/// What an issued token and its reply must say.
struct Expected {
    rule: &'static str,
    channel: &'static str,
    identity: Option<Identity>,
    role: pb::Role,
    /// The token's `expire` (seconds from `issue_ts`).
    expire: u32,
    /// Every service with every privilege value, in wire order.
    services: Vec<Service>,
}

fn fingerprint(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))[..12].to_owned()
}

fn service_enum(service_type: u16) -> i32 {
    match service_type {
        1 => pb::Service::Rtc as i32,
        2 => pb::Service::Rtm as i32,
        5 => pb::Service::Chat as i32,
        8 => pb::Service::Rtm2 as i32,
        other => panic!("unexpected service type {other}"),
    }
}

/// The privilege names of the spec (§2.5) for the services these tests issue.
fn privilege_name(service_type: u16, id: u16) -> &'static str {
    match (service_type, id) {
        (1, 1) => "join_channel",
        (1, 2) => "publish_audio_stream",
        (1, 3) => "publish_video_stream",
        (1, 4) => "publish_data_stream",
        (2 | 8, 1) => "login",
        (5, 1) => "user",
        (5, 2) => "app",
        other => panic!("unexpected privilege {other:?}"),
    }
}

/// Parses and verifies `reply.token` with the primary certificate and checks
/// that the token carries exactly `expected` and that the reply agrees with it.
fn check_issued(reply: &pb::IssuedToken, expected: &Expected) {
    let what = expected.rule;
    let parsed = v007::parse(&reply.token).unwrap();
    assert!(
        parsed.verify(&AppCertificate::parse(PRIMARY_CERT).unwrap()),
        "{what}: the primary certificate verifies"
    );
    assert!(
        !parsed.verify(&AppCertificate::parse(SECONDARY_CERT).unwrap()),
        "{what}: the secondary certificate never signs"
    );
    let token = &parsed.token;
    assert_eq!(token.app_id, APP_ID.as_bytes(), "{what}: app id");
    assert_eq!(token.expire, expected.expire, "{what}: token expire");
    assert_eq!(token.services, expected.services, "{what}: services");
    assert_eq!(parsed.service_count as usize, expected.services.len());

    let now = unix_now();
    let issued_at = u64::from(token.issue_ts);
    assert!(
        issued_at <= now && now - issued_at < 30,
        "{what}: issued now"
    );
    assert_eq!(reply.app_id, APP_ID, "{what}");
    assert_eq!(reply.project, "main", "{what}");
    assert_eq!(reply.channel, expected.channel, "{what}: channel");
    assert_eq!(reply.identity, expected.identity, "{what}: identity");
    assert_eq!(reply.role, expected.role as i32, "{what}: role");
    assert_eq!(reply.matched_rule, expected.rule, "{what}: matched rule");
    assert_eq!(reply.token_fingerprint, fingerprint(&reply.token), "{what}");
    assert_eq!(
        reply.issued_at.unwrap().seconds as u64,
        issued_at,
        "{what}: issued_at"
    );
    let expires_at = issued_at + u64::from(expected.expire);
    assert_eq!(
        reply.expires_at.unwrap().seconds as u64,
        expires_at,
        "{what}: expires_at"
    );

    // The reply lists each privilege of the token with its absolute expiry.
    let want: Vec<(i32, &str, u64)> = expected
        .services
        .iter()
        .flat_map(|s| {
            s.privileges.iter().map(|(&id, &v)| {
                (
                    service_enum(s.service_type()),
                    privilege_name(s.service_type(), id),
                    issued_at + u64::from(v),
                )
            })
        })
        .collect();
    let got: Vec<(i32, &str, u64)> = reply
        .privileges
        .iter()
        .map(|p| {
            (
                p.service,
                p.privilege.as_str(),
                p.expires_at.unwrap().seconds as u64,
            )
        })
        .collect();
    assert_eq!(got, want, "{what}: privilege expiries");

    // Renewal is suggested after issue and before anything expires.
    let earliest = want.iter().map(|(_, _, at)| *at).fold(expires_at, u64::min);
    let renew_after = reply.renew_after.unwrap().seconds as u64;
    assert!(
        issued_at < renew_after && renew_after < earliest,
        "{what}: renew_after {renew_after} in ({issued_at}, {earliest})"
    );
}

/// Asserts that nothing a client sees in `status` contains any of `secrets`.
fn assert_no_secrets(status: &tonic::Status, secrets: &[&str]) {
    let mut seen = vec![
        status.message().to_owned(),
        String::from_utf8_lossy(status.details()).into_owned(),
    ];
    for (key, value) in status.metadata().iter().filter_map(|kv| match kv {
        tonic::metadata::KeyAndValueRef::Ascii(k, v) => Some((k, v)),
        tonic::metadata::KeyAndValueRef::Binary(..) => None,
    }) {
        seen.push(format!("{key}: {}", value.to_str().unwrap_or("")));
    }
    let details = status.get_error_details();
    if let Some(info) = details.error_info() {
        seen.extend(info.metadata.values().cloned());
        seen.push(info.reason.clone());
    }
    if let Some(bad) = details.bad_request() {
        seen.extend(bad.field_violations.iter().map(|v| v.description.clone()));
    }
    for text in &seen {
        let lower = text.to_lowercase();
        for secret in secrets.iter().filter(|s| !s.is_empty()) {
            assert!(
                !lower.contains(&secret.to_lowercase()),
                "a status leaks a secret: {text:?}"
            );
        }
    }
}

fn secrets<'a>(jwt: &'a str, token: &'a str) -> [&'a str; 4] {
    [jwt, token, PRIMARY_CERT, SECONDARY_CERT]
}

/// The ErrorInfo reason and `metadata.rule` of a refusal, after checking code and domain.
fn reason(status: &tonic::Status, code: Code) -> (String, Option<String>) {
    assert_eq!(status.code(), code, "{status:?}");
    let details = status.get_error_details();
    let info = details
        .error_info()
        .unwrap_or_else(|| panic!("no ErrorInfo in {status:?}"));
    assert_eq!(info.domain, "tokengate.v1");
    (info.reason.clone(), info.metadata.get("rule").cloned())
}

/// The fields of a BadRequest, after checking the code.
fn violations(status: &tonic::Status) -> Vec<String> {
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    let details = status.get_error_details();
    let bad = details
        .bad_request()
        .unwrap_or_else(|| panic!("no BadRequest in {status:?}"));
    bad.field_violations
        .iter()
        .map(|v| {
            assert!(!v.description.is_empty(), "{v:?} says why");
            v.field.clone()
        })
        .collect()
}

/// A token signed outside the service, for renew and inspect.
fn foreign_rtc_token(app_id: &str, cert: &str, issue_ts: u32, expire: u32) -> String {
    let app_id = AppId::parse(app_id).unwrap();
    let certificate = AppCertificate::parse(cert).unwrap();
    let issue = Issue {
        app_id: &app_id,
        certificate: &certificate,
        issue_ts,
        salt: 12345,
    };
    raw::rtc_token_with_privileges(
        &issue,
        "team-blue-standup",
        "4242",
        expire,
        RtcPrivileges::all(expire),
    )
    .unwrap()
}

fn now32() -> u32 {
    u32::try_from(unix_now()).unwrap()
}

// ---------------------------------------------------------------------------
// Success paths.

#[tokio::test]
async fn issue_rtc_token_grants_exactly_what_the_rule_allows() {
    let server = ready(API_RULES).await;
    let alice = alice(&server);
    let backend = backend(&server);
    let lobby_user = server.mint("carol", json!({}));
    let cases: Vec<(&str, &str, pb::IssueRtcTokenRequest, Expected)> = vec![
        (
            "uid from the claim, publisher, rule defaults",
            &alice,
            rtc("team-blue-standup", pb::Role::Publisher),
            Expected {
                rule: "team rooms",
                channel: "team-blue-standup",
                identity: Some(Identity::Uid(4242)),
                role: pb::Role::Publisher,
                expire: HOUR,
                services: vec![rtc_service(
                    "team-blue-standup",
                    "4242",
                    &publisher(HOUR, HALF_HOUR),
                )],
            },
        ),
        (
            "subscriber gets only join",
            &alice,
            rtc("team-blue-standup", pb::Role::Subscriber),
            Expected {
                rule: "team rooms",
                channel: "team-blue-standup",
                identity: Some(Identity::Uid(4242)),
                role: pb::Role::Subscriber,
                expire: HOUR,
                services: vec![rtc_service("team-blue-standup", "4242", &[(1, HOUR)])],
            },
        ),
        (
            "requested lifetimes within the maximum",
            &alice,
            pb::IssueRtcTokenRequest {
                lifetimes: Some(pb::Lifetimes {
                    token: secs(2 * 3600),
                    join: secs(3000),
                    publish: secs(600),
                }),
                ..rtc("team-blue-x", pb::Role::Publisher)
            },
            Expected {
                rule: "team rooms",
                channel: "team-blue-x",
                identity: Some(Identity::Uid(4242)),
                role: pb::Role::Publisher,
                expire: 2 * HOUR,
                services: vec![rtc_service("team-blue-x", "4242", &publisher(3000, 600))],
            },
        ),
        (
            "explicit project and RTM login in the same token",
            &alice,
            pb::IssueRtcTokenRequest {
                project: "main".into(),
                with_rtm: true,
                ..rtc("team-blue-standup", pb::Role::Publisher)
            },
            Expected {
                rule: "team rooms",
                channel: "team-blue-standup",
                identity: Some(Identity::Uid(4242)),
                role: pb::Role::Publisher,
                expire: HOUR,
                services: vec![
                    rtc_service("team-blue-standup", "4242", &publisher(HOUR, HALF_HOUR)),
                    rtm_service("4242", HOUR),
                ],
            },
        ),
        (
            "account from sub",
            &lobby_user,
            rtc("lobby-main", pb::Role::Subscriber),
            Expected {
                rule: "lobby",
                channel: "lobby-main",
                identity: Some(Identity::Account("carol".into())),
                role: pb::Role::Subscriber,
                expire: HALF_HOUR,
                services: vec![rtc_service("lobby-main", "carol", &[(1, HALF_HOUR)])],
            },
        ),
        (
            "caller-chosen uid",
            &backend,
            pb::IssueRtcTokenRequest {
                identity: Some(pb::issue_rtc_token_request::Identity::Uid(77)),
                ..rtc("any-room", pb::Role::Publisher)
            },
            Expected {
                rule: "backend",
                channel: "any-room",
                identity: Some(Identity::Uid(77)),
                role: pb::Role::Publisher,
                expire: HOUR,
                services: vec![rtc_service("any-room", "77", &publisher(HOUR, HOUR))],
            },
        ),
        (
            "caller-chosen account",
            &backend,
            pb::IssueRtcTokenRequest {
                identity: Some(pb::issue_rtc_token_request::Identity::Account(
                    "bob@example".into(),
                )),
                ..rtc("any-room", pb::Role::Subscriber)
            },
            Expected {
                rule: "backend",
                channel: "any-room",
                identity: Some(Identity::Account("bob@example".into())),
                role: pb::Role::Subscriber,
                expire: HOUR,
                services: vec![rtc_service("any-room", "bob@example", &[(1, HOUR)])],
            },
        ),
        (
            "wildcard uid with allow_wildcard_uid",
            &backend,
            pb::IssueRtcTokenRequest {
                identity: Some(pb::issue_rtc_token_request::Identity::Uid(0)),
                lifetimes: Some(pb::Lifetimes {
                    token: secs(86_400),
                    join: None,
                    publish: None,
                }),
                ..rtc("broadcast", pb::Role::Subscriber)
            },
            Expected {
                rule: "backend",
                channel: "broadcast",
                identity: Some(Identity::Uid(0)),
                role: pb::Role::Subscriber,
                expire: 86_400,
                services: vec![rtc_service("broadcast", "", &[(1, 86_400)])],
            },
        ),
    ];
    for (name, jwt, request, expected) in cases {
        let reply = issue_rtc(&server, jwt, request)
            .await
            .unwrap_or_else(|e| panic!("{name}: {e:?}"));
        check_issued(&reply, &expected);
    }
    server.shutdown().await;
}

#[tokio::test]
async fn issue_rtm_token_plain_and_with_rtm2_permissions() {
    let server = ready(API_RULES).await;
    let alice = alice(&server);
    let backend = backend(&server);
    let mut team_permissions = Rtm2Permissions::new();
    team_permissions.add(
        ResourceType::MessageChannels,
        PermissionType::Read,
        ["team-blue-general"],
    );
    team_permissions.add(
        ResourceType::MessageChannels,
        PermissionType::Write,
        ["team-blue-chat"],
    );
    let cases: Vec<(&str, &str, pb::IssueRtmTokenRequest, Expected)> = vec![
        (
            "plain login bound from sub",
            &alice,
            pb::IssueRtmTokenRequest::default(),
            Expected {
                rule: "users",
                channel: "",
                identity: Some(Identity::UserId("alice".into())),
                role: pb::Role::Unspecified,
                expire: 12 * HOUR,
                services: vec![rtm_service("alice", 12 * HOUR)],
            },
        ),
        (
            "plain login with a lifetime",
            &alice,
            pb::IssueRtmTokenRequest {
                lifetime: secs(600),
                project: "main".into(),
                ..Default::default()
            },
            Expected {
                rule: "users",
                channel: "",
                identity: Some(Identity::UserId("alice".into())),
                role: pb::Role::Unspecified,
                expire: 600,
                services: vec![rtm_service("alice", 600)],
            },
        ),
        (
            "RTM2 permissions from the team rule's captures",
            &alice,
            pb::IssueRtmTokenRequest {
                channel: "team-blue-general".into(),
                ..Default::default()
            },
            Expected {
                rule: "team rooms",
                channel: "team-blue-general",
                identity: Some(Identity::UserId("4242".into())),
                role: pb::Role::Unspecified,
                expire: HOUR,
                services: vec![
                    Service::new(ServiceKind::Rtm2 {
                        user_id: b"4242".to_vec(),
                        permissions: team_permissions.clone(),
                    })
                    .with_privilege(1, HOUR),
                ],
            },
        ),
        (
            "caller-chosen user id",
            &backend,
            pb::IssueRtmTokenRequest {
                user_id: "user-17".into(),
                ..Default::default()
            },
            Expected {
                rule: "backend",
                channel: "",
                identity: Some(Identity::UserId("user-17".into())),
                role: pb::Role::Unspecified,
                expire: HOUR,
                services: vec![rtm_service("user-17", HOUR)],
            },
        ),
    ];
    for (name, jwt, request, expected) in cases {
        let reply = issue_rtm(&server, jwt, request)
            .await
            .unwrap_or_else(|e| panic!("{name}: {e:?}"));
        check_issued(&reply, &expected);
    }
    server.shutdown().await;
}

#[tokio::test]
async fn issue_chat_token_user_and_app() {
    let server = ready(API_RULES).await;
    let alice = alice(&server);
    let backend = backend(&server);
    let cases: Vec<(&str, &str, pb::IssueChatTokenRequest, Expected)> = vec![
        (
            "user bound from sub",
            &alice,
            pb::IssueChatTokenRequest::default(),
            Expected {
                rule: "users",
                channel: "",
                identity: Some(Identity::UserId("alice".into())),
                role: pb::Role::Unspecified,
                expire: 12 * HOUR,
                services: vec![chat_service("alice", 1, 12 * HOUR)],
            },
        ),
        (
            "app token with allow_app_token",
            &backend,
            pb::IssueChatTokenRequest {
                app_token: true,
                lifetime: secs(900),
                ..Default::default()
            },
            Expected {
                rule: "backend",
                channel: "",
                identity: None,
                role: pb::Role::Unspecified,
                expire: 900,
                services: vec![chat_service("", 2, 900)],
            },
        ),
    ];
    for (name, jwt, request, expected) in cases {
        let reply = issue_chat(&server, jwt, request)
            .await
            .unwrap_or_else(|e| panic!("{name}: {e:?}"));
        check_issued(&reply, &expected);
    }
    // Without allow_app_token the same request is refused.
    let status = issue_chat(
        &server,
        &alice,
        pb::IssueChatTokenRequest {
            app_token: true,
            ..Default::default()
        },
    )
    .await
    .unwrap_err();
    let (why, rule) = reason(&status, Code::PermissionDenied);
    assert_eq!(
        (why.as_str(), rule.as_deref()),
        ("app_token_not_allowed", Some("users"))
    );
    server.shutdown().await;
}

#[tokio::test]
async fn renew_token_reissues_the_same_grant() {
    let server = ready(API_RULES).await;
    let alice_jwt = alice(&server);
    let first = issue_rtc(
        &server,
        &alice_jwt,
        pb::IssueRtcTokenRequest {
            with_rtm: true,
            ..rtc("team-blue-standup", pb::Role::Publisher)
        },
    )
    .await
    .unwrap();
    let renewed = renew(&server, &alice_jwt, &first.token, None)
        .await
        .unwrap();
    assert_ne!(renewed.token, first.token, "a fresh salt and signature");
    check_issued(
        &renewed,
        &Expected {
            rule: "team rooms",
            channel: "team-blue-standup",
            identity: Some(Identity::Uid(4242)),
            role: pb::Role::Publisher,
            expire: HOUR,
            services: vec![
                rtc_service("team-blue-standup", "4242", &publisher(HOUR, HALF_HOUR)),
                rtm_service("4242", HOUR),
            ],
        },
    );

    // New lifetimes within the rule; a subscriber token renews as a subscriber.
    let subscriber = issue_rtc(
        &server,
        &alice_jwt,
        rtc("team-blue-x", pb::Role::Subscriber),
    )
    .await
    .unwrap();
    let renewed = renew(
        &server,
        &alice_jwt,
        &subscriber.token,
        Some(pb::Lifetimes {
            token: secs(7200),
            join: secs(7000),
            publish: None,
        }),
    )
    .await
    .unwrap();
    check_issued(
        &renewed,
        &Expected {
            rule: "team rooms",
            channel: "team-blue-x",
            identity: Some(Identity::Uid(4242)),
            role: pb::Role::Subscriber,
            expire: 2 * HOUR,
            services: vec![rtc_service("team-blue-x", "4242", &[(1, 7000)])],
        },
    );

    // RTM and Chat tokens renew too.
    let rtm = issue_rtm(&server, &alice_jwt, Default::default())
        .await
        .unwrap();
    let renewed = renew(&server, &alice_jwt, &rtm.token, None).await.unwrap();
    check_issued(
        &renewed,
        &Expected {
            rule: "users",
            channel: "",
            identity: Some(Identity::UserId("alice".into())),
            role: pb::Role::Unspecified,
            expire: 12 * HOUR,
            services: vec![rtm_service("alice", 12 * HOUR)],
        },
    );
    let chat = issue_chat(&server, &alice_jwt, Default::default())
        .await
        .unwrap();
    let renewed = renew(&server, &alice_jwt, &chat.token, None).await.unwrap();
    assert_eq!(renewed.identity, Some(Identity::UserId("alice".into())));
    assert_eq!(renewed.matched_rule, "users");

    // A token signed by the secondary certificate (before a rotation) renews,
    // and the new one is signed by the primary.
    let old = foreign_rtc_token(APP_ID, SECONDARY_CERT, now32() - 60, HOUR);
    let renewed = renew(&server, &alice_jwt, &old, None).await.unwrap();
    check_issued(
        &renewed,
        &Expected {
            rule: "team rooms",
            channel: "team-blue-standup",
            identity: Some(Identity::Uid(4242)),
            role: pb::Role::Publisher,
            expire: HOUR,
            services: vec![rtc_service(
                "team-blue-standup",
                "4242",
                &publisher(HOUR, HALF_HOUR),
            )],
        },
    );
    server.shutdown().await;
}

/// Rules that bind the same text as an account and as a uid.
const NUMERIC_RULES: &str = r#"
[[rules]]
name = "accounts"
actions = ["rtc"]
channel = "acct-{room}"
project = "main"
max_role = "publisher"
account_claim = "sub"

[[rules]]
name = "uids"
actions = ["rtc"]
channel = "uid-{room}"
project = "main"
max_role = "publisher"
uid_claim = "agora_uid"
"#;

#[tokio::test]
async fn a_numeric_account_renews_as_an_account_and_a_uid_as_a_uid() {
    let server = ready(NUMERIC_RULES).await;
    // The subject "4242" is an account here; the same digits are its uid claim.
    let jwt = server.mint("4242", json!({"agora_uid": 4242}));
    let cases = [
        ("acct-1", "accounts", Identity::Account("4242".into())),
        ("uid-1", "uids", Identity::Uid(4242)),
    ];
    for (channel, rule, identity) in cases {
        let first = issue_rtc(&server, &jwt, rtc(channel, pb::Role::Publisher))
            .await
            .unwrap();
        assert_eq!(first.identity, Some(identity.clone()), "{channel}");
        // On the wire both tokens name "4242"; renewal binds it as the rule does.
        let renewed = renew(&server, &jwt, &first.token, None)
            .await
            .unwrap_or_else(|e| panic!("{channel}: renewal refused: {e:?}"));
        check_issued(
            &renewed,
            &Expected {
                rule,
                channel,
                identity: Some(identity),
                role: pb::Role::Publisher,
                expire: HOUR,
                services: vec![rtc_service(channel, "4242", &publisher(HOUR, HOUR))],
            },
        );
    }
    // The identity must still be the bound one: another caller's numeric
    // account does not renew as theirs.
    let other = server.mint("4243", json!({"agora_uid": 4243}));
    let first = issue_rtc(&server, &jwt, rtc("acct-1", pb::Role::Subscriber))
        .await
        .unwrap();
    let status = renew(&server, &other, &first.token, None)
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    let info = status.get_error_details().error_info().cloned().unwrap();
    assert_eq!(info.reason, "identity_not_allowed");
    let first = issue_rtc(&server, &jwt, rtc("uid-1", pb::Role::Subscriber))
        .await
        .unwrap();
    let status = renew(&server, &other, &first.token, None)
        .await
        .unwrap_err();
    let info = status.get_error_details().error_info().cloned().unwrap();
    assert_eq!(info.reason, "identity_not_allowed");
    server.shutdown().await;
}

#[tokio::test]
async fn renew_token_never_grants_more_than_the_rules_now_allow() {
    let server = ready(API_RULES).await;
    let alice_jwt = alice(&server);
    let token = issue_rtc(
        &server,
        &alice_jwt,
        rtc("team-blue-standup", pb::Role::Publisher),
    )
    .await
    .unwrap()
    .token;

    // The caller's JWT now maps elsewhere: another uid, or no longer in the team.
    let moved = server.mint("alice", json!({"teams": ["blue"], "agora_uid": 5555}));
    let left = server.mint("alice", json!({"teams": ["red"], "agora_uid": 4242}));
    let suspended = server.mint(
        "alice",
        json!({"teams": ["blue"], "agora_uid": 4242, "status": "suspended"}),
    );
    type Case<'a> = (
        &'a str,
        &'a str,
        Option<pb::Lifetimes>,
        &'a str,
        Option<&'a str>,
    );
    let cases: [Case<'_>; 4] = [
        (
            "uid claim changed",
            &moved,
            None,
            "identity_not_allowed",
            Some("team rooms"),
        ),
        ("left the team", &left, None, "no_matching_rule", None),
        (
            "suspended",
            &suspended,
            None,
            "denied_by_rule",
            Some("suspended"),
        ),
        (
            "asks for more than the rule's maximum",
            &alice_jwt,
            Some(pb::Lifetimes {
                token: secs(9 * 3600),
                join: None,
                publish: None,
            }),
            "ttl_too_long",
            Some("team rooms"),
        ),
    ];
    for (name, jwt, lifetimes, want, rule) in cases {
        let status = renew(&server, jwt, &token, lifetimes).await.unwrap_err();
        let (why, got_rule) = reason(&status, Code::PermissionDenied);
        assert_eq!((why.as_str(), got_rule.as_deref()), (want, rule), "{name}");
        assert_no_secrets(&status, &secrets(jwt, &token));
    }

    // The rule changed: team rooms only grant subscribers now. The publisher
    // token is refused, not silently downgraded.
    let jwks = JwksServer::start(&[&server.es256, &server.rs256]).await;
    let stricter = TestServer::start_with(
        config_text(&jwks.jwks_url(), TEAM_ROOMS_SUBSCRIBERS_ONLY),
        jwks,
        server.es256.clone(),
        server.rs256.clone(),
    )
    .await;
    stricter.wait_ready().await;
    let status = renew(&stricter, &alice_jwt, &token, None)
        .await
        .unwrap_err();
    let (why, rule) = reason(&status, Code::PermissionDenied);
    assert_eq!(
        (why.as_str(), rule.as_deref()),
        ("role_not_allowed", Some("team rooms"))
    );
    // A subscriber token of the same grant still renews there.
    let subscriber = issue_rtc(
        &server,
        &alice_jwt,
        rtc("team-blue-standup", pb::Role::Subscriber),
    )
    .await
    .unwrap();
    let renewed = renew(&stricter, &alice_jwt, &subscriber.token, None)
        .await
        .unwrap();
    assert_eq!(renewed.role, pb::Role::Subscriber as i32);
    stricter.shutdown().await;

    // Tokens that are not this service's: field `token`.
    let other_app = foreign_rtc_token(
        "0a1b2c3d4e5f60718293a4b5c6d7e8f9",
        PRIMARY_CERT,
        now32(),
        HOUR,
    );
    let wrong_cert = foreign_rtc_token(APP_ID, "ffffffffffffffffffffffffffffffff", now32(), HOUR);
    let v006 = v006::build_rtc(
        &AppId::parse(APP_ID).unwrap(),
        &AppCertificate::parse(PRIMARY_CERT).unwrap(),
        "team-blue-standup",
        "4242",
        v006::Role006::Publisher,
        now32() + 3600,
        v006::Issue006 {
            now: now32(),
            salt: 1,
        },
    )
    .unwrap();
    for (name, bad) in [
        ("unknown app id", other_app.as_str()),
        ("wrong certificate", wrong_cert.as_str()),
        ("not a token", "007garbage"),
        ("a 006 token", v006.as_str()),
        ("empty", ""),
    ] {
        let status = renew(&server, &alice_jwt, bad, None).await.unwrap_err();
        assert_eq!(violations(&status), ["token"], "{name}");
        assert_no_secrets(&status, &secrets(&alice_jwt, bad));
    }
    server.shutdown().await;
}

#[tokio::test]
async fn inspect_token_finds_project_certificate_and_diagnoses() {
    let server = ready(API_RULES).await;
    let debug = debugger(&server);
    let alice_jwt = alice(&server);
    let issued = issue_rtc(
        &server,
        &alice_jwt,
        rtc("team-blue-standup", pb::Role::Publisher),
    )
    .await
    .unwrap();

    // A token this service issued: everything checks out.
    let found = inspect(
        &server,
        &debug,
        pb::InspectTokenRequest {
            token: issued.token.clone(),
            expected_channel: "team-blue-standup".into(),
            expected_identity: Some(pb::inspect_token_request::ExpectedIdentity::ExpectedUid(
                4242,
            )),
        },
    )
    .await
    .unwrap();
    assert_eq!(found.version, "007");
    assert_eq!(found.app_id, APP_ID);
    assert_eq!(found.project, "main");
    assert_eq!(found.certificate, "primary");
    assert!(found.signature_valid);
    assert_eq!(found.issued_at, issued.issued_at);
    assert_eq!(found.expires_at, issued.expires_at);
    assert_eq!(found.token_fingerprint, issued.token_fingerprint);
    assert!(found.diagnoses.is_empty(), "{:?}", found.diagnoses);
    assert_eq!(found.services.len(), 1);
    let rtc_found = &found.services[0];
    assert_eq!(rtc_found.service, pb::Service::Rtc as i32);
    assert_eq!(rtc_found.r#type, 1);
    assert_eq!(rtc_found.channel, "team-blue-standup");
    assert_eq!(rtc_found.uid, "4242");
    let issued_at = issued.issued_at.unwrap().seconds;
    let privileges: Vec<(u32, &str, u32, i64)> = rtc_found
        .privileges
        .iter()
        .map(|p| {
            (
                p.id,
                p.name.as_str(),
                p.value,
                p.expires_at.unwrap().seconds,
            )
        })
        .collect();
    let h = i64::from(HOUR);
    let half = i64::from(HALF_HOUR);
    assert_eq!(
        privileges,
        [
            (1, "join_channel", HOUR, issued_at + h),
            (2, "publish_audio_stream", HALF_HOUR, issued_at + half),
            (3, "publish_video_stream", HALF_HOUR, issued_at + half),
            (4, "publish_data_stream", HALF_HOUR, issued_at + half),
        ]
    );

    // Table: token, expected channel and uid -> certificate and diagnosis codes.
    let now = now32();
    let secondary = foreign_rtc_token(APP_ID, SECONDARY_CERT, now - 10, HOUR);
    let expired = foreign_rtc_token(APP_ID, PRIMARY_CERT, now - 7200, HOUR);
    let wrong_cert = foreign_rtc_token(APP_ID, "ffffffffffffffffffffffffffffffff", now, HOUR);
    let other_app = foreign_rtc_token("0a1b2c3d4e5f60718293a4b5c6d7e8f9", PRIMARY_CERT, now, HOUR);
    let uid = |u| Some(pb::inspect_token_request::ExpectedIdentity::ExpectedUid(u));
    let account =
        |a: &str| Some(pb::inspect_token_request::ExpectedIdentity::ExpectedAccount(a.to_owned()));
    type Case<'a> = (
        &'a str,
        &'a str,
        &'a str,
        Option<pb::inspect_token_request::ExpectedIdentity>,
        &'a str,
        &'a str,
        &'a [(u32, &'a str)],
    );
    let cases: Vec<Case<'_>> = vec![
        ("secondary", &secondary, "", None, "main", "secondary", &[]),
        (
            "expired",
            &expired,
            "team-blue-standup",
            uid(4242),
            "main",
            "primary",
            &[(109, "expired"), (109, "privilege_expired")],
        ),
        (
            "channel mismatch",
            &issued.token,
            "team-red-standup",
            uid(4242),
            "main",
            "primary",
            &[(110, "channel_mismatch")],
        ),
        (
            "uid mismatch",
            &issued.token,
            "team-blue-standup",
            uid(4243),
            "main",
            "primary",
            &[(110, "uid_mismatch")],
        ),
        (
            "account is not the uid",
            &issued.token,
            "",
            account("alice"),
            "main",
            "primary",
            &[(110, "uid_mismatch")],
        ),
        (
            "bad signature",
            &wrong_cert,
            "",
            None,
            "main",
            "",
            &[(110, "bad_signature")],
        ),
        (
            "unknown app id",
            &other_app,
            "",
            None,
            "",
            "",
            &[(110, "unknown_app_id")],
        ),
    ];
    for (name, token, channel, identity, project, certificate, diagnoses) in cases {
        let found = inspect(
            &server,
            &debug,
            pb::InspectTokenRequest {
                token: token.to_owned(),
                expected_channel: channel.into(),
                expected_identity: identity,
            },
        )
        .await
        .unwrap_or_else(|e| panic!("{name}: {e:?}"));
        assert_eq!(found.project, project, "{name}");
        assert_eq!(found.certificate, certificate, "{name}");
        assert_eq!(found.signature_valid, !certificate.is_empty(), "{name}");
        let got: Vec<(u32, &str)> = found
            .diagnoses
            .iter()
            .map(|d| (d.agora_error, d.code.as_str()))
            .collect();
        assert_eq!(got, diagnoses, "{name}");
        for d in &found.diagnoses {
            assert!(!d.message.is_empty(), "{name}: {d:?}");
            for secret in [token, PRIMARY_CERT, SECONDARY_CERT] {
                assert!(!d.message.contains(secret), "{name}: {d:?}");
            }
        }
    }

    // RTM and Chat tokens: the user id, and no RTC service to compare with.
    let chat = issue_chat(&server, &alice_jwt, Default::default())
        .await
        .unwrap();
    let found = inspect(
        &server,
        &debug,
        pb::InspectTokenRequest {
            token: chat.token.clone(),
            expected_channel: "team-blue-standup".into(),
            expected_identity: None,
        },
    )
    .await
    .unwrap();
    assert_eq!(found.services.len(), 1);
    assert_eq!(found.services[0].service, pb::Service::Chat as i32);
    assert_eq!(found.services[0].user_id, "alice");
    assert_eq!(found.services[0].privileges[0].name, "user");
    let codes: Vec<(u32, &str)> = found
        .diagnoses
        .iter()
        .map(|d| (d.agora_error, d.code.as_str()))
        .collect();
    assert_eq!(codes, [(110, "no_rtc_service")]);

    // Absolute times of the expired token.
    let found = inspect(
        &server,
        &debug,
        pb::InspectTokenRequest {
            token: expired.clone(),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(found.issued_at.unwrap().seconds, i64::from(now - 7200));
    assert_eq!(
        found.expires_at.unwrap().seconds,
        i64::from(now - 7200 + HOUR)
    );
    assert_eq!(found.salt, 12345);

    // A 006 token can be verified only with the channel and uid it was made for.
    let app_id = AppId::parse(APP_ID).unwrap();
    let primary = AppCertificate::parse(PRIMARY_CERT).unwrap();
    let token006 = v006::build_rtc(
        &app_id,
        &primary,
        "team-blue-standup",
        "4242",
        v006::Role006::Subscriber,
        now + 600,
        v006::Issue006 { now, salt: 7 },
    )
    .unwrap();
    let found = inspect(
        &server,
        &debug,
        pb::InspectTokenRequest {
            token: token006.clone(),
            expected_channel: "team-blue-standup".into(),
            expected_identity: uid(4242),
        },
    )
    .await
    .unwrap();
    assert_eq!(found.version, "006");
    assert_eq!(
        (found.project.as_str(), found.certificate.as_str()),
        ("main", "primary")
    );
    assert!(found.signature_valid);
    assert!(found.diagnoses.is_empty(), "{:?}", found.diagnoses);
    assert_eq!(found.expires_at.unwrap().seconds, i64::from(now + 600));
    assert_eq!(found.salt, 7);
    let found = inspect(
        &server,
        &debug,
        pb::InspectTokenRequest {
            token: token006.clone(),
            expected_channel: "team-blue-other".into(),
            expected_identity: uid(4242),
        },
    )
    .await
    .unwrap();
    assert!(!found.signature_valid);
    let codes: Vec<&str> = found.diagnoses.iter().map(|d| d.code.as_str()).collect();
    assert!(codes.contains(&"channel_mismatch"), "{codes:?}");
    let found = inspect(
        &server,
        &debug,
        pb::InspectTokenRequest {
            token: token006.clone(),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let codes: Vec<&str> = found.diagnoses.iter().map(|d| d.code.as_str()).collect();
    assert_eq!(codes, ["unverifiable"]);

    // Unreadable tokens are INVALID_ARGUMENT on `token`.
    for bad in ["007notbase64!", "hello", ""] {
        let status = inspect(
            &server,
            &debug,
            pb::InspectTokenRequest {
                token: bad.into(),
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
        assert_eq!(violations(&status), ["token"], "{bad:?}");
    }

    // Only callers a rule allows to inspect.
    let status = inspect(
        &server,
        &alice_jwt,
        pb::InspectTokenRequest {
            token: issued.token.clone(),
            ..Default::default()
        },
    )
    .await
    .unwrap_err();
    let (why, rule) = reason(&status, Code::PermissionDenied);
    assert_eq!((why.as_str(), rule), ("no_matching_rule", None));
    assert_no_secrets(&status, &secrets(&alice_jwt, &issued.token));
    server.shutdown().await;
}

/// A 006 token's expiry is the earlier of `ts` and its join deadline, whichever
/// order they come in: the same value `tokengate token inspect` prints
/// (tests/cli_token.rs, `inspect_006_expiry_is_the_earlier_of_ts_and_join`).
#[tokio::test]
async fn inspect_006_expiry_is_the_earlier_of_ts_and_join() {
    let server = ready(API_RULES).await;
    let debug = debugger(&server);
    let app_id = AppId::parse(APP_ID).unwrap();
    let primary = AppCertificate::parse(PRIMARY_CERT).unwrap();
    let t: u32 = 1_700_000_000;
    // (ts, join deadline): the builders' shape (ts = now + 86400 after the
    // join deadline) and the official vector's (ts first).
    for (ts, join) in [(t + 86_400, t + 600), (t + 600, t + 86_400)] {
        let privileges = std::collections::BTreeMap::from([(v006::JOIN_CHANNEL, join)]);
        let token = v006::build(&app_id, &primary, "c", "7", 9, ts, &privileges).unwrap();
        let found = inspect(
            &server,
            &debug,
            pb::InspectTokenRequest {
                token,
                expected_channel: "c".into(),
                expected_identity: Some(pb::inspect_token_request::ExpectedIdentity::ExpectedUid(
                    7,
                )),
            },
        )
        .await
        .unwrap();
        assert!(found.signature_valid, "ts {ts}, join {join}");
        assert_eq!(
            found.expires_at.unwrap().seconds,
            i64::from(t + 600),
            "ts {ts}, join {join}"
        );
        let privilege = &found.services[0].privileges[0];
        assert_eq!((privilege.id, privilege.name.as_str()), (1, "join_channel"));
        assert_eq!(privilege.expires_at.unwrap().seconds, i64::from(join));
        // Long past: Agora would refuse it as expired (109).
        let codes: Vec<(u32, &str)> = found
            .diagnoses
            .iter()
            .map(|d| (d.agora_error, d.code.as_str()))
            .collect();
        assert_eq!(codes, [(109, "expired")], "ts {ts}, join {join}");
    }
    server.shutdown().await;
}

#[tokio::test]
async fn explain_access_traces_allow_and_deny() {
    let server = ready(API_RULES).await;
    let debug = debugger(&server);
    use pb::explain_access_request::Request as Explained;

    let allowed = explain(
        &server,
        &debug,
        Some(Explained::Rtc(rtc(
            "team-blue-standup",
            pb::Role::Publisher,
        ))),
    )
    .await
    .unwrap();
    assert_eq!(allowed.decision, pb::Decision::Allow as i32);
    assert_eq!(allowed.matched_rule, "team rooms");
    assert_eq!(allowed.deny_reason, "");
    assert!(
        allowed.grant.contains("team-blue-standup"),
        "{}",
        allowed.grant
    );
    assert!(
        allowed.grant.contains('9'),
        "the debugger's uid: {}",
        allowed.grant
    );
    let trace: Vec<(u32, &str, bool)> = allowed
        .trace
        .iter()
        .map(|t| (t.index, t.rule.as_str(), t.matched))
        .collect();
    assert_eq!(
        trace,
        [
            (0, "suspended", false),
            (1, "backend", false),
            (2, "team rooms", true)
        ]
    );
    assert!(allowed.trace.iter().all(|t| !t.detail.is_empty()));

    let denied = explain(
        &server,
        &debug,
        Some(Explained::Rtc(rtc("team-red-standup", pb::Role::Publisher))),
    )
    .await
    .unwrap();
    assert_eq!(denied.decision, pb::Decision::Deny as i32);
    assert_eq!(denied.deny_reason, "no_matching_rule");
    assert_eq!(denied.matched_rule, "");
    assert_eq!(denied.grant, "");
    assert_eq!(denied.trace.len(), 6, "every rule considered");
    assert!(denied.trace.iter().all(|t| !t.matched));
    let team = &denied.trace[2];
    assert!(team.detail.contains("false"), "{team:?}");

    let role = explain(
        &server,
        &debug,
        Some(Explained::Rtc(rtc("lobby-x", pb::Role::Publisher))),
    )
    .await
    .unwrap();
    assert_eq!(role.decision, pb::Decision::Deny as i32);
    assert_eq!(
        (role.deny_reason.as_str(), role.matched_rule.as_str()),
        ("role_not_allowed", "lobby")
    );

    let rtm = explain(
        &server,
        &debug,
        Some(Explained::Rtm(pb::IssueRtmTokenRequest::default())),
    )
    .await
    .unwrap();
    assert_eq!(
        (rtm.decision, rtm.matched_rule.as_str()),
        (pb::Decision::Allow as i32, "users")
    );
    let chat = explain(
        &server,
        &debug,
        Some(Explained::Chat(pb::IssueChatTokenRequest {
            app_token: true,
            ..Default::default()
        })),
    )
    .await
    .unwrap();
    assert_eq!(
        (chat.decision, chat.deny_reason.as_str()),
        (pb::Decision::Deny as i32, "app_token_not_allowed")
    );

    // Malformed explained requests name the nested field.
    let status = explain(&server, &debug, None).await.unwrap_err();
    assert_eq!(violations(&status), ["request"]);
    let status = explain(
        &server,
        &debug,
        Some(Explained::Rtc(rtc("bad/channel", pb::Role::Unspecified))),
    )
    .await
    .unwrap_err();
    assert_eq!(violations(&status), ["rtc.channel", "rtc.role"]);

    // Only callers a rule allows to explain.
    let alice_jwt = alice(&server);
    let status = explain(
        &server,
        &alice_jwt,
        Some(Explained::Rtc(rtc(
            "team-blue-standup",
            pb::Role::Publisher,
        ))),
    )
    .await
    .unwrap_err();
    let (why, _) = reason(&status, Code::PermissionDenied);
    assert_eq!(why, "no_matching_rule");
    server.shutdown().await;
}

// ---------------------------------------------------------------------------
// Errors.

#[tokio::test]
async fn unauthenticated_callers_get_the_failed_check() {
    let server = ready(API_RULES).await;
    let now = unix_now();
    let claims = |extra: Value| TestServer::claims("alice", extra);
    let impostor = TestKey::generate(Algorithm::ES256, "es-1");
    let unpublished = TestKey::generate(Algorithm::ES256, "es-unpublished");
    let cases: Vec<(&str, Option<String>, &str)> = vec![
        ("no header", None, "missing"),
        ("not a JWT", Some("Bearer not-a-jwt".into()), "malformed"),
        (
            "expired",
            Some(
                server
                    .es256
                    .mint(&claims(json!({"iat": now - 7200, "exp": now - 3600}))),
            ),
            "expired",
        ),
        (
            "not valid yet",
            Some(server.es256.mint(&claims(json!({"nbf": now + 3600})))),
            "not_yet_valid",
        ),
        (
            "issued in the future",
            Some(
                server
                    .es256
                    .mint(&claims(json!({"iat": now + 3600, "exp": now + 7200}))),
            ),
            "issued_in_future",
        ),
        (
            "another audience",
            Some(server.es256.mint(&claims(json!({"aud": "someone-else"})))),
            "bad_audience",
        ),
        (
            "unknown issuer",
            Some(
                server
                    .es256
                    .mint(&claims(json!({"iss": "https://evil.example"}))),
            ),
            "unknown_issuer",
        ),
        (
            "signed by another key with the same kid",
            Some(impostor.mint(&claims(json!({})))),
            "bad_signature",
        ),
        (
            "a kid the JWKS does not publish",
            Some(unpublished.mint(&claims(json!({})))),
            "unknown_key",
        ),
        (
            "over the 8 KiB size limit",
            Some(format!("Bearer {}", "a".repeat(9000))),
            "too_large",
        ),
        (
            "another scheme",
            Some(format!("Basic {}", server.es256.mint(&claims(json!({}))))),
            "malformed",
        ),
        (
            "alg none",
            Some(server.es256.mint_raw(
                r#"{"alg":"none","typ":"JWT"}"#,
                &claims(json!({})).to_string(),
            )),
            "algorithm_not_allowed",
        ),
    ];
    for (name, jwt, want) in cases {
        let mut request = tonic::Request::new(rtc("team-blue-standup", pb::Role::Publisher));
        if let Some(jwt) = &jwt {
            let value = if jwt.contains(' ') {
                jwt.clone()
            } else {
                format!("Bearer {jwt}")
            };
            request
                .metadata_mut()
                .insert("authorization", value.parse().unwrap());
        }
        let status = server
            .client()
            .await
            .issue_rtc_token(request)
            .await
            .unwrap_err();
        let (why, _) = reason(&status, Code::Unauthenticated);
        assert_eq!(why, want, "{name}");
        let jwt = jwt.unwrap_or_default();
        let credential = jwt.rsplit(' ').next().unwrap_or_default();
        assert_no_secrets(&status, &secrets(credential, ""));
    }
    // The RS256 key of the same issuer is accepted (control for the cases above).
    let rs = server.rs256.mint(&TestServer::claims(
        "alice",
        json!({"teams": ["blue"], "agora_uid": 4242}),
    ));
    assert!(
        issue_rtc(&server, &rs, rtc("team-blue-standup", pb::Role::Publisher))
            .await
            .is_ok()
    );
    // Every RPC authenticates first.
    let mut client = server.client().await;
    let statuses = [
        client
            .issue_rtm_token(pb::IssueRtmTokenRequest::default())
            .await
            .unwrap_err(),
        client
            .issue_chat_token(pb::IssueChatTokenRequest::default())
            .await
            .unwrap_err(),
        client
            .renew_token(pb::RenewTokenRequest::default())
            .await
            .unwrap_err(),
        client
            .inspect_token(pb::InspectTokenRequest::default())
            .await
            .unwrap_err(),
        client
            .explain_access(pb::ExplainAccessRequest::default())
            .await
            .unwrap_err(),
    ];
    for status in statuses {
        assert_eq!(reason(&status, Code::Unauthenticated).0, "missing");
    }
    server.shutdown().await;
}

#[tokio::test]
async fn refusals_carry_the_deny_reason_and_rule() {
    let server = ready(API_RULES).await;
    let alice_jwt = alice(&server);
    let backend_jwt = backend(&server);
    let suspended = server.mint(
        "mallory",
        json!({"teams": ["blue"], "agora_uid": 1, "status": "suspended"}),
    );
    let no_uid = server.mint("dave", json!({"teams": ["blue"]}));
    let carol = server.mint("carol", json!({}));
    let with_lifetime = |token: i64| pb::IssueRtcTokenRequest {
        lifetimes: Some(pb::Lifetimes {
            token: secs(token),
            join: None,
            publish: None,
        }),
        ..rtc("team-blue-standup", pb::Role::Publisher)
    };
    let with_identity = |identity| pb::IssueRtcTokenRequest {
        identity: Some(identity),
        ..rtc("team-blue-standup", pb::Role::Publisher)
    };
    use pb::issue_rtc_token_request::Identity as Asked;
    let cases: Vec<(&str, &str, pb::IssueRtcTokenRequest, &str, Option<&str>)> = vec![
        (
            "no rule for the channel",
            &alice_jwt,
            rtc("elsewhere", pb::Role::Subscriber),
            "no_matching_rule",
            None,
        ),
        (
            "not in the team",
            &alice_jwt,
            rtc("team-red-standup", pb::Role::Subscriber),
            "no_matching_rule",
            None,
        ),
        (
            "publisher in the lobby",
            &alice_jwt,
            rtc("lobby-main", pb::Role::Publisher),
            "role_not_allowed",
            Some("lobby"),
        ),
        (
            "nine hours",
            &alice_jwt,
            with_lifetime(9 * 3600),
            "ttl_too_long",
            Some("team rooms"),
        ),
        (
            "wildcard uid",
            &alice_jwt,
            with_identity(Asked::Uid(0)),
            "wildcard_uid_not_allowed",
            Some("team rooms"),
        ),
        (
            "someone else's uid",
            &alice_jwt,
            with_identity(Asked::Uid(99)),
            "identity_not_allowed",
            Some("team rooms"),
        ),
        (
            "suspended",
            &suspended,
            rtc("team-blue-standup", pb::Role::Subscriber),
            "denied_by_rule",
            Some("suspended"),
        ),
        (
            "JWT without the uid claim",
            &no_uid,
            rtc("team-blue-standup", pb::Role::Subscriber),
            "missing_identity_claim",
            Some("team rooms"),
        ),
        (
            "wildcard channel",
            &backend_jwt,
            pb::IssueRtcTokenRequest {
                identity: Some(Asked::Uid(5)),
                ..rtc("*", pb::Role::Subscriber)
            },
            "wildcard_channel_not_allowed",
            Some("backend"),
        ),
        (
            "backend names nobody",
            &backend_jwt,
            rtc("any-room", pb::Role::Subscriber),
            "identity_required",
            Some("backend"),
        ),
        (
            "RTM login without an RTM rule",
            &carol,
            pb::IssueRtcTokenRequest {
                with_rtm: true,
                ..rtc("lobby-main", pb::Role::Subscriber)
            },
            "action_not_allowed",
            Some("lobby"),
        ),
    ];
    for (name, jwt, request, want, rule) in cases {
        let status = issue_rtc(&server, jwt, request).await.unwrap_err();
        let (why, got_rule) = reason(&status, Code::PermissionDenied);
        assert_eq!((why.as_str(), got_rule.as_deref()), (want, rule), "{name}");
        assert!(
            status.message().contains(want),
            "{name}: {}",
            status.message()
        );
        assert_no_secrets(&status, &secrets(jwt, ""));
    }
    // RTM: wildcard uid exists only for RTC; Chat: the backend names nobody.
    let status = issue_rtm(
        &server,
        &server.mint("carol", json!({"status": "suspended"})),
        Default::default(),
    )
    .await
    .unwrap_err();
    assert_eq!(
        reason(&status, Code::PermissionDenied),
        ("denied_by_rule".into(), Some("suspended".into()))
    );
    let status = issue_chat(&server, &backend_jwt, Default::default())
        .await
        .unwrap_err();
    assert_eq!(
        reason(&status, Code::PermissionDenied),
        ("identity_required".into(), Some("backend".into()))
    );
    server.shutdown().await;
}

#[tokio::test]
async fn malformed_requests_list_every_field_violation() {
    let server = ready(API_RULES).await;
    let jwt = alice(&server);
    let lifetimes = |token: i64, join: i64, publish: i64| pb::IssueRtcTokenRequest {
        lifetimes: Some(pb::Lifetimes {
            token: secs(token),
            join: secs(join),
            publish: secs(publish),
        }),
        ..rtc("team-blue-standup", pb::Role::Publisher)
    };
    use pb::issue_rtc_token_request::Identity as Asked;
    let cases: Vec<(&str, pb::IssueRtcTokenRequest, &[&str])> = vec![
        (
            "bad channel character",
            rtc("team/blue", pb::Role::Publisher),
            &["channel"],
        ),
        ("empty channel", rtc("", pb::Role::Publisher), &["channel"]),
        (
            "channel too long",
            rtc(&"c".repeat(64), pb::Role::Publisher),
            &["channel"],
        ),
        (
            "role unspecified",
            rtc("team-blue-x", pb::Role::Unspecified),
            &["role"],
        ),
        (
            "unknown role number",
            pb::IssueRtcTokenRequest {
                role: 7,
                ..rtc("team-blue-x", pb::Role::Publisher)
            },
            &["role"],
        ),
        (
            "channel and role at once",
            rtc("bad\u{e9}", pb::Role::Unspecified),
            &["channel", "role"],
        ),
        (
            "token over 24h",
            lifetimes(86_401, 60, 60),
            &["lifetimes.token"],
        ),
        (
            "every lifetime over 24h",
            lifetimes(90_000, 90_000, 90_000),
            &["lifetimes.token", "lifetimes.join", "lifetimes.publish"],
        ),
        ("zero lifetime", lifetimes(0, 60, 60), &["lifetimes.token"]),
        (
            "negative lifetime",
            lifetimes(60, -5, 60),
            &["lifetimes.join"],
        ),
        (
            "fractional seconds",
            pb::IssueRtcTokenRequest {
                lifetimes: Some(pb::Lifetimes {
                    token: Some(prost_types::Duration {
                        seconds: 60,
                        nanos: 5,
                    }),
                    join: None,
                    publish: None,
                }),
                ..rtc("team-blue-x", pb::Role::Publisher)
            },
            &["lifetimes.token"],
        ),
        (
            "unknown project",
            pb::IssueRtcTokenRequest {
                project: "nope".into(),
                ..rtc("team-blue-x", pb::Role::Publisher)
            },
            &["project"],
        ),
        (
            "empty account",
            pb::IssueRtcTokenRequest {
                identity: Some(Asked::Account(String::new())),
                ..rtc("team-blue-x", pb::Role::Publisher)
            },
            &["account"],
        ),
        (
            "account with a bad character",
            pb::IssueRtcTokenRequest {
                identity: Some(Asked::Account("bob/smith".into())),
                ..rtc("team-blue-x", pb::Role::Publisher)
            },
            &["account"],
        ),
        (
            "account too long",
            pb::IssueRtcTokenRequest {
                identity: Some(Asked::Account("a".repeat(256))),
                ..rtc("team-blue-x", pb::Role::Publisher)
            },
            &["account"],
        ),
    ];
    for (name, request, fields) in cases {
        let status = issue_rtc(&server, &jwt, request).await.unwrap_err();
        assert_eq!(violations(&status), fields, "{name}");
        assert_no_secrets(&status, &secrets(&jwt, ""));
    }

    // A request over the configured message size (64 KiB) is refused before decoding.
    let huge = "h".repeat(70_000);
    let status = issue_rtc(&server, &jwt, rtc(&huge, pb::Role::Publisher))
        .await
        .unwrap_err();
    assert!(
        matches!(status.code(), Code::OutOfRange | Code::ResourceExhausted),
        "{status:?}"
    );
    assert!(!status.message().contains(&huge[..100]));

    // RTM and Chat user ids, and their lifetimes.
    let status = issue_rtm(
        &server,
        &jwt,
        pb::IssueRtmTokenRequest {
            user_id: "u".repeat(65),
            lifetime: secs(100_000),
            channel: "bad/channel".into(),
            project: String::new(),
        },
    )
    .await
    .unwrap_err();
    assert_eq!(violations(&status), ["user_id", "lifetime", "channel"]);
    let status = issue_chat(
        &server,
        &jwt,
        pb::IssueChatTokenRequest {
            user_id: "bob".into(),
            app_token: true,
            ..Default::default()
        },
    )
    .await
    .unwrap_err();
    assert_eq!(violations(&status), ["user_id"]);
    let status = issue_chat(
        &server,
        &jwt,
        pb::IssueChatTokenRequest {
            project: "nope".into(),
            ..Default::default()
        },
    )
    .await
    .unwrap_err();
    assert_eq!(violations(&status), ["project"]);
    let status = renew(
        &server,
        &jwt,
        "007x",
        Some(pb::Lifetimes {
            token: secs(100_000),
            join: None,
            publish: None,
        }),
    )
    .await
    .unwrap_err();
    assert_eq!(violations(&status), ["lifetimes.token"]);
    server.shutdown().await;
}

#[tokio::test]
async fn unavailable_while_the_issuers_keys_have_never_loaded() {
    let (jwks, es256, rs256) = support::server::test_keys().await;
    jwks.fail_next(usize::MAX, 503);
    let text = config_text(&jwks.jwks_url(), API_RULES);
    let server = TestServer::start_with(text, jwks, es256, rs256).await;
    let jwt = alice(&server);
    let status = issue_rtc(&server, &jwt, rtc("team-blue-standup", pb::Role::Publisher))
        .await
        .unwrap_err();
    let (why, _) = reason(&status, Code::Unavailable);
    assert_eq!(why, "keys_unavailable");
    assert_no_secrets(&status, &secrets(&jwt, ""));

    // Once the JWKS answers, the same call succeeds.
    server.jwks.fail_next(0, 503);
    server.wait_ready().await;
    let reply = issue_rtc(&server, &jwt, rtc("team-blue-standup", pb::Role::Publisher))
        .await
        .unwrap();
    assert_eq!(reply.matched_rule, "team rooms");
    server.shutdown().await;
}

#[tokio::test]
async fn unavailable_when_the_jwks_port_is_closed() {
    // A port that was just free: nothing listens on it.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/jwks", closed.local_addr().unwrap());
    drop(closed);
    let es256 = TestKey::generate(Algorithm::ES256, "es-1");
    let rs256 = TestKey::generate(Algorithm::RS256, "rs-1");
    let jwks = JwksServer::start(&[&es256]).await;
    let server = TestServer::start_with(config_text(&url, API_RULES), jwks, es256, rs256).await;
    let jwt = server.mint(
        "alice",
        json!({"iss": ISSUER, "teams": ["blue"], "agora_uid": 1}),
    );
    let status = issue_rtc(&server, &jwt, rtc("team-blue-standup", pb::Role::Publisher))
        .await
        .unwrap_err();
    assert_eq!(reason(&status, Code::Unavailable).0, "keys_unavailable");
    server.shutdown().await;
}

#[tokio::test]
async fn the_request_timeout_bounds_every_call() {
    let limits = "[limits]\nrequest_timeout = \"1s\"\n";
    let wait = support::server::LONG_UNKNOWN_KID_WAIT;
    let server = ready(&format!("{wait}{limits}\n{API_RULES}")).await;
    // A JWT signed by a key the JWKS publishes only now, slowly: without the
    // timeout the call would wait about 3 s for the refetch and then succeed.
    let late = TestKey::generate(Algorithm::ES256, "es-late");
    server.jwks.set_delay(std::time::Duration::from_secs(3));
    server.jwks.add_key(&late);
    let jwt = late.mint(&TestServer::claims(
        "alice",
        json!({"teams": ["blue"], "agora_uid": 4242}),
    ));
    let status = issue_rtc(&server, &jwt, rtc("team-blue-standup", pb::Role::Publisher))
        .await
        .unwrap_err();
    assert!(
        matches!(status.code(), Code::Cancelled | Code::DeadlineExceeded),
        "{status:?}"
    );
    assert_no_secrets(&status, &secrets(&jwt, ""));
    // The key did arrive: the next call is fast and succeeds.
    server.jwks.set_delay(std::time::Duration::ZERO);
    let mut ok = false;
    for _ in 0..100 {
        if issue_rtc(&server, &jwt, rtc("team-blue-standup", pb::Role::Publisher))
            .await
            .is_ok()
        {
            ok = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(ok, "the late key is used once fetched");
    server.shutdown().await;
}

#[tokio::test]
async fn renewing_a_channel_scoped_rtm_token_needs_its_channel() {
    let server = ready(API_RULES).await;
    let alice = alice(&server);
    let first = issue_rtm(
        &server,
        &alice,
        pb::IssueRtmTokenRequest {
            channel: "team-blue-general".into(),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(first.matched_rule, "team rooms");
    let renew_in = |channel: &str| {
        let request = pb::RenewTokenRequest {
            token: first.token.clone(),
            lifetimes: None,
            channel: channel.into(),
        };
        let jwt = alice.clone();
        let server = &server;
        async move {
            let mut client = server.client().await;
            client
                .renew_token(TestServer::authed(&jwt, request))
                .await
                .map(|r| r.into_inner().issued.unwrap())
        }
    };
    // With its channel the same rule decides again, and the RTM2 permissions stay.
    let renewed = renew_in("team-blue-general").await.unwrap();
    assert_eq!(renewed.matched_rule, "team rooms");
    let parsed = v007::parse(&renewed.token).unwrap();
    assert!(matches!(
        &parsed.token.services[0].kind,
        ServiceKind::Rtm2 { user_id, permissions } if user_id == b"4242" && !permissions.is_empty()
    ));
    // A channel outside the team no longer fits the rule that granted it: the
    // next rule decides, and it binds another user id (the subject), so the
    // renewal is refused rather than re-issued for someone else.
    let outside = renew_in("team-red-general").await.unwrap_err();
    assert_eq!(outside.code(), tonic::Code::PermissionDenied);
    let info = outside.get_error_details();
    assert_eq!(info.error_info().unwrap().reason, "identity_not_allowed");

    // An RTC token's channel is its own: a different one is refused by field.
    let rtc = issue_rtc(
        &server,
        &alice,
        pb::IssueRtcTokenRequest {
            channel: "team-blue-standup".into(),
            role: pb::Role::Subscriber as i32,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let mut client = server.client().await;
    let refused = client
        .renew_token(TestServer::authed(
            &alice,
            pb::RenewTokenRequest {
                token: rtc.token.clone(),
                lifetimes: None,
                channel: "team-blue-other".into(),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);
    let details = refused.get_error_details();
    let fields: Vec<&str> = details
        .bad_request()
        .unwrap()
        .field_violations
        .iter()
        .map(|v| v.field.as_str())
        .collect();
    assert_eq!(fields, ["channel"]);
    // The same channel repeated is fine.
    let same = client
        .renew_token(TestServer::authed(
            &alice,
            pb::RenewTokenRequest {
                token: rtc.token,
                lifetimes: None,
                channel: "team-blue-standup".into(),
            },
        ))
        .await
        .unwrap();
    assert_eq!(same.into_inner().issued.unwrap().matched_rule, "team rooms");
    server.shutdown().await;
}
