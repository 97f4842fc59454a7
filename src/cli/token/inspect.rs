//! `tokengate token inspect`: prints the token core's inspection of a token,
//! as a summary or as JSON, and the decoded JSON views of both formats.
//!
//! The inspection itself (verification, expiries) is `token::inspect`, the
//! same function the InspectToken RPC calls; this file only reads the token,
//! the certificate and the clock, and renders the result.

use std::collections::BTreeMap;
use std::io::Read as _;
use std::process::ExitCode;
use std::time::{Duration, UNIX_EPOCH};

use anyhow::Context as _;
use serde_json::{Map, Value, json};

use super::args::InspectArgs;
use super::{EXIT_FAILURE, EXIT_INVALID_SIGNATURE, EXIT_OK, load_certificate};
use crate::entropy;
use crate::token::inspect::{self, Decoded, Expectation, InspectedService, Inspection, Keyring};
use crate::token::services::{self, Rtm2Permissions, Service, ServiceKind};
use crate::token::v006::{self, Parsed006};
use crate::token::v007::{self, ParsedToken};
use crate::token::{AppCertificate, ParseError};

/// The decoded view of a 007 token: exactly the fields of the vectors' `expected.decoded`.
pub fn decoded_007(parsed: &ParsedToken) -> Value {
    let t = &parsed.token;
    json!({
        "signature_hex": hex::encode(parsed.signature()),
        "app_id": text(&t.app_id),
        "issue_ts": t.issue_ts,
        "expire": t.expire,
        "salt": t.salt,
        "service_count": parsed.service_count,
        "services": t.services.iter().map(decoded_service).collect::<Vec<_>>(),
    })
}

/// The decoded view of a 006 token: exactly the fields of the vectors' `expected.decoded`.
pub fn decoded_006(parsed: &Parsed006) -> Value {
    json!({
        "app_id": parsed.app_id,
        "signature_hex": hex::encode(&parsed.signature),
        "crc_channel_name": parsed.crc_channel_name,
        "crc_uid": parsed.crc_uid,
        "message_hex": hex::encode(&parsed.message),
        "salt": parsed.salt,
        "ts": parsed.ts,
        "privileges": privileges_json(&parsed.privileges),
    })
}

/// The JSON view of one 007 service.
fn decoded_service(service: &Service) -> Value {
    let mut m = Map::new();
    m.insert("type".into(), service.service_type().into());
    m.insert("name".into(), service.kind.name().into());
    m.insert("privileges".into(), privileges_json(&service.privileges));
    let mut put = |key: &str, value: Value| {
        m.insert(key.into(), value);
    };
    match &service.kind {
        ServiceKind::Rtc { channel_name, uid } => {
            put("channel_name", text(channel_name));
            put("uid", text(uid));
        }
        ServiceKind::Rtm { user_id } | ServiceKind::Chat { user_id } => {
            put("user_id", text(user_id))
        }
        ServiceKind::Streaming {
            channel_name,
            account,
        }
        | ServiceKind::Fcdn {
            channel_name,
            account,
        } => {
            put("channel_name", text(channel_name));
            put("account", text(account));
        }
        ServiceKind::Apaas {
            room_uuid,
            user_uuid,
            role,
        } => {
            put("room_uuid", text(room_uuid));
            put("user_uuid", text(user_uuid));
            put("role", (*role).into());
        }
        ServiceKind::Rtm2 {
            user_id,
            permissions,
        } => {
            put("user_id", text(user_id));
            put("permissions", permissions_json(permissions));
        }
        ServiceKind::Fpa
        | ServiceKind::ConvoAi
        | ServiceKind::Stt
        | ServiceKind::Generic { .. } => {}
    }
    Value::Object(m)
}

fn permissions_json(permissions: &Rtm2Permissions) -> Value {
    let nested = permissions.by_resource().iter().map(|(resource, perms)| {
        let perms: Vec<Value> = perms
            .iter()
            .map(|(permission, list)| {
                json!({
                    "permission_type": permission,
                    "resources": list.iter().map(|r| text(r)).collect::<Vec<_>>(),
                })
            })
            .collect();
        json!({ "resource_type": resource, "permissions": perms })
    });
    Value::Array(nested.collect())
}

fn privileges_json(privileges: &BTreeMap<u16, u32>) -> Value {
    let m: Map<String, Value> = privileges
        .iter()
        .map(|(id, value)| (id.to_string(), (*value).into()))
        .collect();
    Value::Object(m)
}

/// Wire bytes as JSON text; invalid UTF-8 is shown with replacement characters.
fn text(bytes: &[u8]) -> Value {
    Value::String(String::from_utf8_lossy(bytes).into_owned())
}

pub(super) fn run_inspect(args: &InspectArgs) -> anyhow::Result<ExitCode> {
    let token = if args.token == "-" {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .context("reading the token from stdin")?;
        s.trim().to_owned()
    } else {
        args.token.trim().to_owned()
    };
    let certificate = load_certificate(args.app_certificate_file.as_deref())?;
    // The CLI has one certificate and no project: it verifies whatever App ID the token carries.
    let certificates: Vec<(String, AppCertificate)> = certificate
        .iter()
        .map(|c| (String::new(), c.clone()))
        .collect();
    let keyrings: Vec<Keyring<'_>> = certificate
        .iter()
        .map(|_| Keyring {
            project: "",
            app_id: None,
            certificates: &certificates,
        })
        .collect();
    let expected = Expectation {
        channel: args.channel.clone(),
        uid: args.uid.clone(),
    };
    match inspect::inspect(&token, &keyrings, &expected, entropy::unix_now()) {
        Ok(found) => {
            let valid = found.signature_checked.then_some(found.signature_valid);
            match &found.decoded {
                Decoded::V007(parsed) => {
                    print_007(parsed, &found, valid, certificate.as_ref(), args.json)
                }
                Decoded::V006(parsed) => {
                    if certificate.is_some() && valid.is_none() {
                        eprintln!(
                            "note: a 006 signature covers the channel and uid; pass --channel and --uid to verify it"
                        );
                    }
                    print_006(parsed, &found, valid, certificate.as_ref(), args.json)
                }
            }
            let code = if valid == Some(false) {
                EXIT_INVALID_SIGNATURE
            } else {
                EXIT_OK
            };
            Ok(ExitCode::from(code))
        }
        Err(e) => {
            let shown = match e.parse_error() {
                ParseError::NotThisVersion { .. } => "not a 006 or 007 token".to_owned(),
                other => other.to_string(),
            };
            if args.json {
                println!("{}", json!({ "error": shown }));
            }
            eprintln!("error: cannot parse the token: {shown}");
            Ok(ExitCode::from(EXIT_FAILURE))
        }
    }
}

/// Privilege id -> absolute expiry (null for 0) of one inspected service.
fn deadlines(service: &InspectedService) -> Value {
    let m: Map<String, Value> = service
        .privileges
        .iter()
        .map(|p| (p.privilege.to_string(), json!(p.expires_at)))
        .collect();
    Value::Object(m)
}

/// Prints a 007 token; `valid` is whether the signature verified, if it was checked.
fn print_007(
    parsed: &ParsedToken,
    found: &Inspection,
    valid: Option<bool>,
    certificate: Option<&AppCertificate>,
    as_json: bool,
) {
    let t = &parsed.token;
    if as_json {
        let mut view = decoded_007(parsed);
        if let Value::Object(m) = &mut view {
            m.insert("version".into(), v007::VERSION.into());
            m.insert("expires_at".into(), found.expires_at.into());
            let per_service: Vec<Value> = found.services.iter().map(deadlines).collect();
            m.insert("privilege_expires_at".into(), Value::Array(per_service));
            if let Some(stop) = parsed.stopped_at_unknown_service_type {
                m.insert("stopped_at_unknown_service_type".into(), stop.into());
            }
            if let Some(v) = valid {
                m.insert("signature_valid".into(), v.into());
            }
        }
        println!("{view}");
        return;
    }
    println!("version      007 (AccessToken2)");
    println!("app id       {}", found.app_id);
    println!(
        "issued at    {} ({})",
        utc(u64::from(t.issue_ts)),
        t.issue_ts
    );
    println!(
        "expires at   {} (issue_ts + {}s)",
        utc(found.expires_at),
        t.expire
    );
    println!("salt         {}", t.salt);
    println!("services     {}", parsed.service_count);
    for (s, inspected) in t.services.iter().zip(&found.services) {
        println!(
            "  {} ({}){}",
            s.kind.name(),
            s.service_type(),
            describe_fields(&s.kind)
        );
        for p in &inspected.privileges {
            let until = match p.expires_at {
                Some(at) => format!("until {} (+{}s)", utc(at), p.value),
                None => "no privilege-specific limit (0)".to_owned(),
            };
            println!(
                "    {:<22} {until}",
                privilege_label(p.service_type, p.privilege)
            );
        }
    }
    if let Some(stop) = parsed.stopped_at_unknown_service_type {
        println!(
            "  (parsing stopped at unknown service type {stop}; the signature still covers it)"
        );
    }
    print_validity(valid, certificate);
}

/// Prints a 006 token; `valid` is whether the signature verified, if it was checked.
fn print_006(
    parsed: &Parsed006,
    found: &Inspection,
    valid: Option<bool>,
    certificate: Option<&AppCertificate>,
    as_json: bool,
) {
    if as_json {
        let mut view = decoded_006(parsed);
        if let Value::Object(m) = &mut view {
            m.insert("version".into(), v006::VERSION.into());
            // The earlier of `ts` and the join deadline: `token::inspect` says why.
            m.insert("expires_at".into(), found.expires_at.into());
            let per_service = found.services.first().map_or(Value::Null, deadlines);
            m.insert("privilege_expires_at".into(), per_service);
            if let Some(v) = valid {
                m.insert("signature_valid".into(), v.into());
            }
        }
        println!("{view}");
        return;
    }
    println!("version      006 (AccessToken, legacy)");
    println!("app id       {}", parsed.app_id);
    println!("ts           {} ({})", utc(u64::from(parsed.ts)), parsed.ts);
    println!("salt         {}", parsed.salt);
    println!("channel crc  {}", parsed.crc_channel_name);
    println!("uid crc      {}", parsed.crc_uid);
    for (id, value) in &parsed.privileges {
        let until = if *value == 0 {
            "no limit (0)".to_owned()
        } else {
            format!("until {} (absolute)", utc(u64::from(*value)))
        };
        println!("  privilege {id:<5} {until}");
    }
    print_validity(valid, certificate);
}

fn print_validity(valid: Option<bool>, certificate: Option<&AppCertificate>) {
    match (valid, certificate) {
        (Some(true), Some(c)) => println!("signature    valid (certificate {})", c.fingerprint()),
        (Some(false), Some(c)) => {
            println!("signature    INVALID for certificate {}", c.fingerprint())
        }
        _ => println!("signature    not checked (no certificate)"),
    }
}

fn describe_fields(kind: &ServiceKind) -> String {
    let s = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    match kind {
        ServiceKind::Rtc { channel_name, uid } => {
            let uid = if uid.is_empty() {
                "(any uid)".to_owned()
            } else {
                s(uid)
            };
            format!(" channel={:?} uid={uid}", s(channel_name))
        }
        ServiceKind::Rtm { user_id } | ServiceKind::Chat { user_id } => {
            format!(" user_id={:?}", s(user_id))
        }
        ServiceKind::Streaming {
            channel_name,
            account,
        }
        | ServiceKind::Fcdn {
            channel_name,
            account,
        } => format!(" channel={:?} account={:?}", s(channel_name), s(account)),
        ServiceKind::Apaas {
            room_uuid,
            user_uuid,
            role,
        } => format!(
            " room={:?} user={:?} role={role}",
            s(room_uuid),
            s(user_uuid)
        ),
        ServiceKind::Rtm2 {
            user_id,
            permissions,
        } => {
            let mut out = format!(" user_id={:?}", s(user_id));
            for (resource, permission, list) in permissions.iter() {
                let names: Vec<String> = list.iter().map(|r| s(r)).collect();
                out.push_str(&format!(" [{resource}:{permission} {names:?}]"));
            }
            out
        }
        ServiceKind::Fpa
        | ServiceKind::ConvoAi
        | ServiceKind::Stt
        | ServiceKind::Generic { .. } => String::new(),
    }
}

/// "joinChannel (1)": the spec's name from the token core's one table, and the id.
fn privilege_label(service_type: u16, id: u16) -> String {
    let name = services::privilege_name(service_type, id).unwrap_or("privilege");
    format!("{name} ({id})")
}

/// A unix time as RFC 3339 UTC.
fn utc(secs: u64) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(secs)).to_string()
}
