//! Conformance with every vector of `../shared/vectors/agora-tokens.json`:
//! payload and string identity with Agora's python3 builder, parse equality
//! with `expected.decoded`, and signature verification, for 007 and 006.

use std::collections::BTreeMap;

use serde_json::Value;
use tokengate::cli::token::{decoded_006, decoded_007};
use tokengate::domain::Role;
use tokengate::token::builders::raw::{self, uid_string};
use tokengate::token::builders::{Issue, RtcPrivileges};
use tokengate::token::services::{Rtm2Permissions, Service, ServiceKind};
use tokengate::token::v006::{self, Issue006, Role006};
use tokengate::token::v007::{self, AccessToken2};
use tokengate::token::{AppCertificate, AppId};

const VECTORS: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../shared/vectors/agora-tokens.json"
);

fn vectors() -> Vec<Value> {
    let text =
        std::fs::read_to_string(VECTORS).unwrap_or_else(|e| panic!("cannot read {VECTORS}: {e}"));
    let doc: Value = serde_json::from_str(&text).unwrap();
    doc["vectors"].as_array().unwrap().clone()
}

fn s<'a>(v: &'a Value, key: &str) -> &'a str {
    v[key]
        .as_str()
        .unwrap_or_else(|| panic!("{key} is not a string in {v}"))
}

fn n(v: &Value, key: &str) -> u32 {
    let wide = v[key]
        .as_u64()
        .unwrap_or_else(|| panic!("{key} is not a u32 in {v}"));
    u32::try_from(wide).unwrap()
}

/// A vector's uid/account: a JSON integer is a numeric uid (0 -> ""), a string is verbatim.
fn wire_uid(v: &Value) -> String {
    match v {
        Value::Number(num) => uid_string(u32::try_from(num.as_u64().unwrap()).unwrap()),
        Value::String(text) => text.clone(),
        other => panic!("uid/account {other} is neither a number nor a string"),
    }
}

/// Official RTC roles: 1 is publisher, anything else acts as subscriber.
fn role(code: u32) -> Role {
    if code == 1 {
        Role::Publisher
    } else {
        Role::Subscriber
    }
}

fn privileges(v: &Value) -> BTreeMap<u16, u32> {
    v.as_object()
        .unwrap()
        .iter()
        .map(|(k, val)| {
            (
                k.parse().unwrap(),
                u32::try_from(val.as_u64().unwrap()).unwrap(),
            )
        })
        .collect()
}

fn permissions(v: &Value) -> Rtm2Permissions {
    let mut set = Rtm2Permissions::new();
    for p in v.as_array().unwrap() {
        let resources: Vec<String> = p["resources"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r.as_str().unwrap().to_owned())
            .collect();
        let code = |k: &str| u16::try_from(p[k].as_u64().unwrap()).unwrap();
        set.add_raw(code("resource_type"), code("permission_type"), resources);
    }
    set
}

fn bytes(v: &Value, key: &str) -> Vec<u8> {
    s(v, key).as_bytes().to_vec()
}

/// A raw `AccessToken2` service from its vector form.
fn raw_service(v: &Value) -> Service {
    let kind = match n(v, "type") {
        1 => ServiceKind::Rtc {
            channel_name: bytes(v, "channel_name"),
            uid: wire_uid(&v["uid"]).into_bytes(),
        },
        2 => ServiceKind::Rtm {
            user_id: bytes(v, "user_id"),
        },
        3 => ServiceKind::Streaming {
            channel_name: bytes(v, "channel_name"),
            account: wire_uid(&v["account"]).into_bytes(),
        },
        4 => ServiceKind::Fpa,
        5 => ServiceKind::Chat {
            user_id: bytes(v, "user_id"),
        },
        6 => ServiceKind::Fcdn {
            channel_name: bytes(v, "channel_name"),
            account: wire_uid(&v["account"]).into_bytes(),
        },
        7 => ServiceKind::Apaas {
            room_uuid: bytes(v, "room_uuid"),
            user_uuid: bytes(v, "user_uuid"),
            role: i16::try_from(v["role"].as_i64().unwrap()).unwrap(),
        },
        8 => ServiceKind::Rtm2 {
            user_id: bytes(v, "user_id"),
            permissions: permissions(&v["permissions"]),
        },
        9 => ServiceKind::ConvoAi,
        10 => ServiceKind::Stt,
        other => ServiceKind::Generic {
            service_type: u16::try_from(other).unwrap(),
        },
    };
    Service {
        privileges: privileges(&v["privileges"]),
        kind,
    }
}

fn rtc_privileges(i: &Value) -> RtcPrivileges {
    RtcPrivileges {
        join: n(i, "join_channel_privilege_expire"),
        publish_audio: n(i, "pub_audio_privilege_expire"),
        publish_video: n(i, "pub_video_privilege_expire"),
        publish_data: n(i, "pub_data_stream_privilege_expire"),
    }
}

/// Builds a 007 vector with the API its `kind` names.
fn build_007(v: &Value) -> String {
    let i = &v["inputs"];
    let app_id = AppId::parse(s(i, "app_id")).unwrap();
    let certificate = AppCertificate::parse(s(i, "app_certificate")).unwrap();
    let issue = Issue {
        app_id: &app_id,
        certificate: &certificate,
        issue_ts: n(v, "issue_ts"),
        salt: n(v, "salt"),
    };
    let kind = s(v, "kind");
    let method = kind.split('.').nth(1).unwrap_or("");
    let result = match kind {
        "AccessToken2" => {
            let token = AccessToken2 {
                app_id: app_id.as_str().as_bytes().to_vec(),
                issue_ts: issue.issue_ts,
                expire: n(i, "expire"),
                salt: issue.salt,
                services: i["services"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(raw_service)
                    .collect(),
            };
            v007::build(&token, &certificate)
        }
        "RtcTokenBuilder2.build_token_with_uid"
        | "RtcTokenBuilder2.build_token_with_user_account" => {
            let who = if method.ends_with("uid") {
                &i["uid"]
            } else {
                &i["account"]
            };
            raw::rtc_token(
                &issue,
                s(i, "channel_name"),
                &wire_uid(who),
                role(n(i, "role")),
                n(i, "token_expire"),
                n(i, "privilege_expire"),
            )
        }
        "RtcTokenBuilder2.build_token_with_uid_and_privilege"
        | "RtcTokenBuilder2.build_token_with_user_account_and_privilege" => {
            let who = if method.contains("uid") {
                &i["uid"]
            } else {
                &i["account"]
            };
            raw::rtc_token_with_privileges(
                &issue,
                s(i, "channel_name"),
                &wire_uid(who),
                n(i, "token_expire"),
                rtc_privileges(i),
            )
        }
        "RtcTokenBuilder2.build_token_with_rtm" => raw::rtc_token_with_rtm(
            &issue,
            s(i, "channel_name"),
            s(i, "account"),
            role(n(i, "role")),
            n(i, "token_expire"),
            n(i, "privilege_expire"),
        ),
        "RtcTokenBuilder2.build_token_with_rtm2" => raw::rtc_token_with_rtm2(
            &issue,
            s(i, "channel_name"),
            s(i, "rtc_account"),
            role(n(i, "rtc_role")),
            n(i, "rtc_token_expire"),
            rtc_privileges(i),
            s(i, "rtm_user_id"),
            n(i, "rtm_token_expire"),
        ),
        "RtmTokenBuilder2.build_token" => raw::rtm_token(&issue, s(i, "user_id"), n(i, "expire")),
        "RtmTokenBuilder2.build_token_with_permissions" => raw::rtm_token_with_permissions(
            &issue,
            s(i, "user_id"),
            &permissions(&i["permissions"]),
            n(i, "expire"),
        ),
        "ChatTokenBuilder2.build_user_token" => {
            raw::chat_user_token(&issue, s(i, "user_id"), n(i, "expire"))
        }
        "ChatTokenBuilder2.build_app_token" => raw::chat_app_token(&issue, n(i, "expire")),
        "FpaTokenBuilder.build_token" => raw::fpa_token(&issue),
        "ApaasTokenBuilder.build_room_user_token" => raw::apaas_room_user_token(
            &issue,
            s(i, "room_uuid"),
            s(i, "user_uuid"),
            i16::try_from(i["role"].as_i64().unwrap()).unwrap(),
            n(i, "expire"),
        ),
        "EducationTokenBuilder.build_room_user_token" => raw::education_room_user_token(
            &issue,
            s(i, "room_uuid"),
            s(i, "user_uuid"),
            i16::try_from(i["role"].as_i64().unwrap()).unwrap(),
            n(i, "expire"),
        ),
        "ApaasTokenBuilder.build_user_token" => {
            raw::apaas_user_token(&issue, s(i, "user_uuid"), n(i, "expire"))
        }
        "EducationTokenBuilder.build_user_token" => {
            raw::education_user_token(&issue, s(i, "user_uuid"), n(i, "expire"))
        }
        "ApaasTokenBuilder.build_app_token" => raw::apaas_app_token(&issue, n(i, "expire")),
        "EducationTokenBuilder.build_app_token" => raw::education_app_token(&issue, n(i, "expire")),
        other => panic!("unknown 007 kind {other}"),
    };
    result.unwrap_or_else(|e| panic!("{}: build failed: {e}", s(v, "id")))
}

/// Builds a 006 vector with the API its `kind` names.
fn build_006(v: &Value) -> String {
    let i = &v["inputs"];
    let app_id = AppId::parse(s(i, "app_id")).unwrap();
    let certificate = AppCertificate::parse(s(i, "app_certificate")).unwrap();
    let salt = n(v, "salt");
    let issue = || Issue006 {
        now: n(v, "now"),
        salt,
    };
    let role006 = || Role006::from_code(u16::try_from(n(i, "role")).unwrap()).unwrap();
    let result = match s(v, "kind") {
        "AccessToken006" => v006::build(
            &app_id,
            &certificate,
            s(i, "channel_name"),
            &wire_uid(&i["uid"]),
            salt,
            n(v, "ts"),
            &privileges(&i["privileges"]),
        ),
        "RtcTokenBuilder.buildTokenWithUid" | "RtcTokenBuilder.buildTokenWithAccount" => {
            let who = if i.get("uid").is_some() {
                &i["uid"]
            } else {
                &i["account"]
            };
            v006::build_rtc(
                &app_id,
                &certificate,
                s(i, "channel_name"),
                &wire_uid(who),
                role006(),
                n(i, "privilege_expired_ts"),
                issue(),
            )
        }
        "RtmTokenBuilder.buildToken" => v006::build_rtm(
            &app_id,
            &certificate,
            s(i, "user_account"),
            n(i, "privilege_expired_ts"),
            issue(),
        ),
        other => panic!("unknown 006 kind {other}"),
    };
    result.unwrap_or_else(|e| panic!("{}: build failed: {e}", s(v, "id")))
}

/// The string python3 produces for this vector: the expected token for
/// generated vectors, `cross_language.python3_token` for official ones.
fn python3_token(v: &Value) -> &str {
    match v["cross_language"]["python3_token"].as_str() {
        Some(t) => t,
        None => s(&v["expected"], "token"),
    }
}

#[test]
fn every_007_vector_builds_the_same_payload_and_string_as_python3() {
    let mut checked = 0;
    for v in vectors().iter().filter(|v| v["version"] == "007") {
        let id = s(v, "id");
        let built = build_007(v);
        let parsed = v007::parse(&built).unwrap_or_else(|e| panic!("{id}: {e}"));
        assert_eq!(
            hex::encode(parsed.payload()),
            s(&v["expected"], "payload_hex"),
            "{id}: payload"
        );
        assert_eq!(built, python3_token(v), "{id}: token string");
        checked += 1;
    }
    assert_eq!(checked, 75 + 174);
}

#[test]
fn every_007_vector_parses_to_its_decoded_fields_and_verifies() {
    let mut checked = 0;
    for v in vectors().iter().filter(|v| v["version"] == "007") {
        let id = s(v, "id");
        let certificate = AppCertificate::parse(s(&v["inputs"], "app_certificate")).unwrap();
        for token in [s(&v["expected"], "token"), python3_token(v)] {
            let parsed = v007::parse(token).unwrap_or_else(|e| panic!("{id}: {e}"));
            assert_eq!(
                decoded_007(&parsed),
                v["expected"]["decoded"],
                "{id}: decoded"
            );
            assert_eq!(parsed.stopped_at_unknown_service_type, None, "{id}");
            assert!(parsed.verify(&certificate), "{id}: verify");
            let wrong = AppCertificate::parse("0123456789abcdef0123456789abcdef").unwrap();
            assert_eq!(
                parsed.verify_any(&[("old", &wrong), ("current", &certificate)]),
                Some("current"),
                "{id}"
            );
        }
        checked += 1;
    }
    assert_eq!(checked, 249);
}

#[test]
fn every_006_vector_builds_byte_for_byte_parses_and_verifies() {
    let mut checked = 0;
    for v in vectors().iter().filter(|v| v["version"] == "006") {
        let id = s(v, "id");
        let expected = &v["expected"];
        assert_eq!(build_006(v), s(expected, "token"), "{id}: token");
        let parsed = v006::parse(s(expected, "token")).unwrap_or_else(|e| panic!("{id}: {e}"));
        assert_eq!(decoded_006(&parsed), expected["decoded"], "{id}: decoded");
        let certificate = AppCertificate::parse(s(&v["inputs"], "app_certificate")).unwrap();
        let (channel, uid) = (
            s(expected, "signed_channel_name"),
            s(expected, "signed_uid"),
        );
        assert!(parsed.verify(&certificate, channel, uid), "{id}: verify");
        assert!(!parsed.verify(&certificate, channel, "not-the-uid"), "{id}");
        checked += 1;
    }
    assert_eq!(checked, 14 + 24);
}
