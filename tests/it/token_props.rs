//! Property tests: build-then-parse round-trips for random tokens, and parsers
//! that never panic on arbitrary input.

use std::collections::BTreeMap;

use proptest::prelude::*;
use tokengate::token::services::{Rtm2Permissions, Service, ServiceKind};
use tokengate::token::v007::{self, AccessToken2};
use tokengate::token::{AppCertificate, AppId, v006};

const CERT: &str = "5CFd2fd1755d40ecb72977518be15d3b";

fn bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(any::<u8>(), 0..max)
}

fn privileges() -> impl Strategy<Value = BTreeMap<u16, u32>> {
    prop::collection::btree_map(any::<u16>(), any::<u32>(), 0..6)
}

fn permissions() -> impl Strategy<Value = Rtm2Permissions> {
    prop::collection::vec(
        (0u16..6, 0u16..3, prop::collection::vec(bytes(12), 0..4)),
        0..6,
    )
    .prop_map(|entries| {
        let mut set = Rtm2Permissions::new();
        for (resource, permission, list) in entries {
            set.add_raw(resource, permission, list);
        }
        set
    })
}

fn kind() -> impl Strategy<Value = ServiceKind> {
    prop_oneof![
        (bytes(70), bytes(40))
            .prop_map(|(channel_name, uid)| ServiceKind::Rtc { channel_name, uid }),
        bytes(70).prop_map(|user_id| ServiceKind::Rtm { user_id }),
        (bytes(70), bytes(40)).prop_map(|(channel_name, account)| ServiceKind::Streaming {
            channel_name,
            account
        }),
        Just(ServiceKind::Fpa),
        bytes(70).prop_map(|user_id| ServiceKind::Chat { user_id }),
        (bytes(70), bytes(40)).prop_map(|(channel_name, account)| ServiceKind::Fcdn {
            channel_name,
            account
        }),
        (bytes(40), bytes(40), any::<i16>()).prop_map(|(room_uuid, user_uuid, role)| {
            ServiceKind::Apaas {
                room_uuid,
                user_uuid,
                role,
            }
        }),
        (bytes(70), permissions()).prop_map(|(user_id, permissions)| ServiceKind::Rtm2 {
            user_id,
            permissions
        }),
        Just(ServiceKind::ConvoAi),
        Just(ServiceKind::Stt),
    ]
}

fn service() -> impl Strategy<Value = Service> {
    (privileges(), kind()).prop_map(|(privileges, kind)| Service { privileges, kind })
}

fn app_id() -> impl Strategy<Value = String> {
    "[0-9a-fA-F]{32}"
}

proptest! {
    #[test]
    fn build_then_parse_round_trips(
        app_id in app_id(),
        issue_ts in any::<u32>(),
        expire in any::<u32>(),
        salt in any::<u32>(),
        services in prop::collection::vec(service(), 1..6),
    ) {
        let certificate = AppCertificate::parse(CERT).unwrap();
        let token = AccessToken2 { app_id: app_id.into_bytes(), issue_ts, expire, salt, services };
        let built = v007::build(&token, &certificate).unwrap();
        let parsed = v007::parse(&built).unwrap();
        let mut sorted = token.clone();
        sorted.services.sort_by_key(Service::service_type);
        prop_assert_eq!(&parsed.token, &sorted);
        prop_assert_eq!(parsed.stopped_at_unknown_service_type, None);
        prop_assert!(parsed.verify(&certificate));
        let other = AppCertificate::parse("0123456789abcdef0123456789abcdef").unwrap();
        prop_assert!(!parsed.verify(&other));
    }

    #[test]
    fn an_unknown_service_stops_parsing_but_still_verifies(
        before in prop::collection::vec(service(), 0..3),
        unknown in 11u16..,
        privileges in privileges(),
    ) {
        let certificate = AppCertificate::parse(CERT).unwrap();
        let mut token = AccessToken2::new("970CA35de60c44645bbae8a215061b33", 1, 2, 3);
        token.services = before.clone();
        token.services.push(Service { privileges, kind: ServiceKind::Generic { service_type: unknown } });
        let parsed = v007::parse(&v007::build(&token, &certificate).unwrap()).unwrap();
        let mut sorted = before;
        sorted.sort_by_key(Service::service_type);
        prop_assert_eq!(&parsed.token.services, &sorted);
        prop_assert_eq!(parsed.stopped_at_unknown_service_type, Some(unknown));
        prop_assert!(parsed.verify(&certificate));
    }

    #[test]
    fn parse_007_never_panics_on_any_string(input in ".{0,200}") {
        let _ = v007::parse(&input);
        let _ = v007::parse(&format!("007{input}"));
    }

    #[test]
    fn parse_007_never_panics_on_any_inflated_payload(payload in bytes(400)) {
        let mut compressed = Vec::new();
        tokengate::token::codec::deflate(&payload, &mut compressed).unwrap();
        let mut token = String::from("007");
        tokengate::token::codec::base64_encode(&compressed, &mut token);
        if let Ok(parsed) = v007::parse(&token) {
            let certificate = AppCertificate::parse(CERT).unwrap();
            let _ = parsed.verify(&certificate);
        }
    }

    #[test]
    fn parse_007_never_panics_on_a_corrupted_real_token(position in 3usize..180, byte in any::<u8>()) {
        let reference = "007eJxTYBBbsMMnKq7p9Hf/HcIX5kce9b518kCiQgSr5Zrp4X1Tu6UUGCzNDZwdjU1TUs0Mkk1MzExMk5ISUy0SjQxNDcwMk4yN3b8IMEQwMTAwMoAwBIL4CgzmKeZGxmamqUmWFsYmFqbGluapxqnGaZYpJmYGSSkpiVwMRhYWRsYmhkbmxgDCaiTj";
        let mut corrupted = reference.as_bytes().to_vec();
        let at = position.min(corrupted.len() - 1);
        corrupted[at] = byte;
        let text = String::from_utf8_lossy(&corrupted);
        let _ = v007::parse(&text);
        let _ = v007::parse(text.get(..at).unwrap_or(&text));
    }

    #[test]
    fn v006_round_trips_and_never_panics(
        channel in ".{0,40}",
        uid in "[0-9]{0,10}",
        salt in any::<u32>(),
        ts in any::<u32>(),
        privileges in privileges(),
        junk in ".{0,120}",
    ) {
        let app_id = AppId::parse("970CA35de60c44645bbae8a215061b33").unwrap();
        let certificate = AppCertificate::parse(CERT).unwrap();
        let token = v006::build(&app_id, &certificate, &channel, &uid, salt, ts, &privileges).unwrap();
        let parsed = v006::parse(&token).unwrap();
        prop_assert_eq!((parsed.salt, parsed.ts, &parsed.privileges), (salt, ts, &privileges));
        prop_assert!(parsed.verify(&certificate, &channel, &uid));
        let _ = v006::parse(&junk);
        let _ = v006::parse(&format!("006{junk}"));
    }
}
