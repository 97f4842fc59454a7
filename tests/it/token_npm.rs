//! Cross-implementation check: Agora's official npm package `agora-token`
//! (2.0.6, installed by `.ci/setup`) parses and verifies tokens built by
//! tokengate for every service type, and reads the same fields.

use crate::support::tools::agora_token_views;

use serde_json::{Value, json};
use tokengate::domain::{Account, ChannelName, Role, RtcIdentity, RtmUserId, Uid};
use tokengate::token::builders::{self, Issue, RtcPrivileges, raw};
use tokengate::token::services::{
    PermissionType, ResourceType, Rtm2Permissions, Service, ServiceKind,
};
use tokengate::token::v007::{self, AccessToken2};
use tokengate::token::{AppCertificate, AppId};

const APP_ID: &str = "970CA35de60c44645bbae8a215061b33";
const CERT: &str = "5CFd2fd1755d40ecb72977518be15d3b";

/// Agora's npm parser's view of each of `tokens`, verified with [`CERT`].
fn npm_views(tokens: &[String]) -> Vec<Value> {
    let pairs: Vec<(&str, &str)> = tokens.iter().map(|t| (t.as_str(), CERT)).collect();
    agora_token_views(&pairs)
}

fn text(bytes: &[u8]) -> Value {
    Value::String(String::from_utf8(bytes.to_vec()).unwrap())
}

/// What the npm parser should see, from our own parse of the token.
fn our_view(token: &str) -> Value {
    let parsed = v007::parse(token).unwrap();
    let t = &parsed.token;
    let services: Vec<Value> = t
        .services
        .iter()
        .map(|s| {
            let mut v = json!({
                "type": s.service_type(),
                "privileges": s.privileges.iter().map(|(k, v)| (k.to_string(), json!(v))).collect::<serde_json::Map<_, _>>(),
            });
            let m = v.as_object_mut().unwrap();
            match &s.kind {
                ServiceKind::Rtc { channel_name, uid } => {
                    m.insert("channel_name".into(), text(channel_name));
                    m.insert("uid".into(), text(uid));
                }
                ServiceKind::Streaming { channel_name, account } | ServiceKind::Fcdn { channel_name, account } => {
                    m.insert("channel_name".into(), text(channel_name));
                    m.insert("account".into(), text(account));
                }
                ServiceKind::Rtm { user_id } | ServiceKind::Chat { user_id } => {
                    m.insert("user_id".into(), text(user_id));
                }
                ServiceKind::Apaas { room_uuid, user_uuid, role } => {
                    m.insert("room_uuid".into(), text(room_uuid));
                    m.insert("user_uuid".into(), text(user_uuid));
                    m.insert("role".into(), json!(role));
                }
                ServiceKind::Rtm2 { user_id, permissions } => {
                    m.insert("user_id".into(), text(user_id));
                    let flat: Vec<Value> = permissions
                        .iter()
                        .map(|(r, p, list)| json!([r, p, list.iter().map(|x| text(x)).collect::<Vec<_>>()]))
                        .collect();
                    m.insert("permissions".into(), Value::Array(flat));
                }
                ServiceKind::Fpa | ServiceKind::ConvoAi | ServiceKind::Stt | ServiceKind::Generic { .. } => {}
            }
            v
        })
        .collect();
    json!({
        "parsed": true,
        "verified": true,
        "app_id": text(&t.app_id),
        "issue_ts": t.issue_ts,
        "expire": t.expire,
        "salt": t.salt,
        "services": services,
    })
}

/// Tokens for every service type (1..=10), every builder, RTM2 with
/// permissions, repeated service types and non-ASCII strings.
fn tokens() -> Vec<(&'static str, String)> {
    let app_id = AppId::parse(APP_ID).unwrap();
    let certificate = AppCertificate::parse(CERT).unwrap();
    let issue = Issue {
        app_id: &app_id,
        certificate: &certificate,
        issue_ts: 1_790_000_000,
        salt: 99_999_999,
    };
    let channel = ChannelName::parse("room-1 !#$%&()+-:;<=.>?@[]^_{}|~,").unwrap();
    let uid = RtcIdentity::Uid(Uid::new(4_294_967_295).unwrap());
    let account = Account::parse("alice").unwrap();
    let who = RtcIdentity::Account(account.clone());
    let rtm_user = RtmUserId::parse("ユーザー-1").unwrap();
    let privileges = RtcPrivileges {
        join: 3600,
        publish_audio: 600,
        publish_video: 0,
        publish_data: 60,
    };
    let mut permissions = Rtm2Permissions::new();
    permissions.add(ResourceType::Users, PermissionType::Write, ["bob", "carol"]);
    permissions.add(
        ResourceType::MessageChannels,
        PermissionType::Read,
        ["lobby", "*"],
    );
    permissions.add(
        ResourceType::StreamChannels,
        PermissionType::Read,
        Vec::<String>::new(),
    );
    permissions.add(ResourceType::ServerGroups, PermissionType::Write, ["ops"]);
    permissions.add(ResourceType::GroupChannels, PermissionType::Read, ["g1"]);

    let every_type = AccessToken2::new(APP_ID, 1_790_000_000, 86_400, 42)
        .with_service(Service::new(ServiceKind::Stt))
        .with_service(Service::new(ServiceKind::ConvoAi))
        .with_service(
            Service::new(ServiceKind::Rtm2 {
                user_id: b"u2".to_vec(),
                permissions: permissions.clone(),
            })
            .with_privilege(1, 100),
        )
        .with_service(
            Service::new(ServiceKind::Apaas {
                room_uuid: b"room".to_vec(),
                user_uuid: b"user".to_vec(),
                role: 0,
            })
            .with_privilege(1, 5)
            .with_privilege(3, 6),
        )
        .with_service(
            Service::new(ServiceKind::Fcdn {
                channel_name: b"cdn".to_vec(),
                account: b"0".to_vec(),
            })
            .with_privilege(1, 0)
            .with_privilege(2, 3600),
        )
        .with_service(
            Service::new(ServiceKind::Chat {
                user_id: "用户".as_bytes().to_vec(),
            })
            .with_privilege(1, 7),
        )
        .with_service(Service::new(ServiceKind::Fpa).with_privilege(1, 0))
        .with_service(
            Service::new(ServiceKind::Streaming {
                channel_name: b"live".to_vec(),
                account: b"".to_vec(),
            })
            .with_privilege(1, 10)
            .with_privilege(2, 20),
        )
        .with_service(
            Service::new(ServiceKind::Rtm {
                user_id: b"r".to_vec(),
            })
            .with_privilege(1, 30),
        )
        .with_service(
            Service::new(ServiceKind::Rtc {
                channel_name: b"c".to_vec(),
                uid: b"".to_vec(),
            })
            .with_privilege(1, 40),
        );
    let rtc = |uid: &[u8]| {
        Service::new(ServiceKind::Rtc {
            channel_name: b"c".to_vec(),
            uid: uid.to_vec(),
        })
        .with_privilege(1, 60)
    };
    let repeated = AccessToken2::new(APP_ID, 1_790_000_000, 600, 7)
        .with_service(
            Service::new(ServiceKind::Rtm {
                user_id: b"first".to_vec(),
            })
            .with_privilege(1, 1),
        )
        .with_service(rtc(b"1"))
        .with_service(
            Service::new(ServiceKind::Rtm {
                user_id: b"second".to_vec(),
            })
            .with_privilege(1, 2),
        )
        .with_service(rtc(b"2"));

    vec![
        (
            "rtc uid publisher",
            builders::rtc_token(&issue, &channel, &uid, Role::Publisher, 3600, 3600),
        ),
        (
            "rtc account subscriber",
            builders::rtc_token(&issue, &channel, &who, Role::Subscriber, 600, 0),
        ),
        (
            "rtc any uid",
            builders::rtc_token(
                &issue,
                &channel,
                &RtcIdentity::AnyUid,
                Role::Publisher,
                60,
                60,
            ),
        ),
        (
            "rtc per privilege",
            builders::rtc_token_with_privileges(&issue, &channel, &uid, 3600, privileges),
        ),
        (
            "rtc with rtm",
            builders::rtc_token_with_rtm(&issue, &channel, &account, Role::Publisher, 900, 600),
        ),
        (
            "rtc with rtm2",
            builders::rtc_token_with_rtm2(
                &issue,
                &channel,
                &who,
                Role::Publisher,
                900,
                privileges,
                &rtm_user,
                300,
            ),
        ),
        (
            "rtc with rtm2 subscriber",
            builders::rtc_token_with_rtm2(
                &issue,
                &channel,
                &uid,
                Role::Subscriber,
                900,
                privileges,
                &rtm_user,
                300,
            ),
        ),
        (
            "convoai",
            builders::convoai_token(
                &issue,
                &channel,
                &uid,
                Role::Publisher,
                900,
                privileges,
                &rtm_user,
                300,
            ),
        ),
        (
            "stt",
            builders::stt_token(
                &issue,
                &channel,
                &who,
                Role::Subscriber,
                900,
                privileges,
                &rtm_user,
                300,
            ),
        ),
        ("rtm", builders::rtm_token(&issue, &rtm_user, 3600)),
        (
            "rtm2 permissions",
            builders::rtm_token_with_permissions(&issue, &rtm_user, &permissions, 3600),
        ),
        (
            "rtm2 no permissions",
            builders::rtm_token_with_permissions(&issue, &rtm_user, &Rtm2Permissions::new(), 3600),
        ),
        (
            "chat user",
            builders::chat_user_token(&issue, &rtm_user, 600),
        ),
        ("chat app", builders::chat_app_token(&issue, 600)),
        ("fpa", builders::fpa_token(&issue)),
        (
            "apaas room user",
            builders::apaas_room_user_token(&issue, "room-uuid", "user-uuid", 2, 600),
        ),
        (
            "apaas room user role 0",
            builders::apaas_room_user_token(&issue, "room-uuid", "user-uuid", 0, 600),
        ),
        (
            "apaas user",
            builders::apaas_user_token(&issue, "user-uuid", 600),
        ),
        ("apaas app", builders::apaas_app_token(&issue, 600)),
        (
            "education room user",
            builders::education_room_user_token(&issue, "r", "u", -32768, 600),
        ),
        (
            "education user",
            builders::education_user_token(&issue, "u", 600),
        ),
        ("education app", builders::education_app_token(&issue, 600)),
        ("raw every type", v007::build(&every_type, &certificate)),
        ("raw repeated types", v007::build(&repeated, &certificate)),
        (
            "raw uid string",
            raw::rtc_token(&issue, "c", &raw::uid_string(0), Role::Publisher, 1, 1),
        ),
    ]
    .into_iter()
    .map(|(name, token)| (name, token.unwrap_or_else(|e| panic!("{name}: {e}"))))
    .collect()
}

#[test]
fn agora_npm_parses_and_verifies_every_service_type() {
    let tokens = tokens();
    let strings: Vec<String> = tokens.iter().map(|(_, t)| t.clone()).collect();
    let views = npm_views(&strings);
    assert_eq!(views.len(), tokens.len());
    let mut seen_types = std::collections::BTreeSet::new();
    for ((name, token), npm) in tokens.iter().zip(&views) {
        assert_eq!(
            npm,
            &our_view(token),
            "{name}: npm agora-token saw different fields"
        );
        for s in npm["services"].as_array().unwrap() {
            seen_types.insert(s["type"].as_u64().unwrap());
        }
    }
    assert_eq!(
        seen_types,
        (1..=10).collect(),
        "every service type is cross-checked"
    );
}

#[test]
fn agora_npm_rejects_a_token_signed_with_another_certificate() {
    let app_id = AppId::parse(APP_ID).unwrap();
    let other = AppCertificate::parse("0123456789abcdef0123456789abcdef").unwrap();
    let issue = Issue {
        app_id: &app_id,
        certificate: &other,
        issue_ts: 1,
        salt: 1,
    };
    let token = builders::fpa_token(&issue).unwrap();
    let views = npm_views(&[token]);
    assert_eq!(views[0]["parsed"], true);
    assert_eq!(
        views[0]["verified"], false,
        "the npm verifier must notice the wrong certificate"
    );
}
