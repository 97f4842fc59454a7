//! `tokengate token build --spec FILE`: a raw AccessToken2 from JSON, in the
//! vectors' raw form (spec §0), for services and values no builder writes.

use std::collections::BTreeMap;
use std::io::Read as _;

use anyhow::{Context as _, anyhow, bail};
use serde::Deserialize;

use super::args::CommonArgs;
use super::build::{app_id, check_expiry, issue_ts_or_now, required_certificate, salt_or_random};
use crate::token::builders::raw;
use crate::token::services::{Rtm2Permissions, Service, ServiceKind};
use crate::token::v007::{self, AccessToken2};

/// A `--spec` file: a raw AccessToken2.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Spec {
    app_id: Option<String>,
    expire: u32,
    services: Vec<SpecService>,
    issue_ts: Option<u32>,
    salt: Option<u32>,
}

/// One service of a spec, in the vectors' raw form.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SpecService {
    #[serde(rename = "type")]
    service_type: u16,
    #[serde(default)]
    privileges: BTreeMap<u16, u32>,
    channel_name: Option<String>,
    uid: Option<UidOrAccount>,
    account: Option<UidOrAccount>,
    user_id: Option<String>,
    room_uuid: Option<String>,
    user_uuid: Option<String>,
    role: Option<i16>,
    permissions: Option<Vec<SpecPermission>>,
}

/// A JSON integer is a numeric uid (0 becomes ""); a string is used verbatim.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum UidOrAccount {
    Number(u32),
    Text(String),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SpecPermission {
    resource_type: u16,
    permission_type: u16,
    resources: Vec<String>,
}

pub(super) fn build_from_spec(common: &CommonArgs, path: &str) -> anyhow::Result<String> {
    let text = if path == "-" {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .context("reading the spec from stdin")?;
        s
    } else {
        std::fs::read_to_string(path).with_context(|| format!("reading the spec {path}"))?
    };
    let spec: Spec = serde_json::from_str(&text).context("the spec is not valid")?;
    let app_id = app_id(spec.app_id.as_deref().or(common.app_id.as_deref()))?;
    let certificate = required_certificate(common.app_certificate_file.as_deref())?;
    let mut expiries = vec![("expire".to_owned(), spec.expire)];
    let mut services = Vec::with_capacity(spec.services.len());
    for (i, s) in spec.services.into_iter().enumerate() {
        for (id, value) in &s.privileges {
            expiries.push((format!("services[{i}].privileges.{id}"), *value));
        }
        services.push(spec_service(s).with_context(|| format!("services[{i}]"))?);
    }
    if !common.allow_long_expiry {
        for (key, value) in &expiries {
            check_expiry(key, *value)?;
        }
    }
    let token = AccessToken2 {
        app_id: app_id.as_str().as_bytes().to_vec(),
        issue_ts: issue_ts_or_now(spec.issue_ts.or(common.issue_ts))?,
        expire: spec.expire,
        salt: salt_or_random(spec.salt.or(common.salt))?,
        services,
    };
    Ok(v007::build(&token, &certificate)?)
}

/// One spec service into a [`Service`]; fields that do not belong to the type are refused.
fn spec_service(s: SpecService) -> anyhow::Result<Service> {
    let present = [
        ("channel_name", s.channel_name.is_some()),
        ("uid", s.uid.is_some()),
        ("account", s.account.is_some()),
        ("user_id", s.user_id.is_some()),
        ("room_uuid", s.room_uuid.is_some()),
        ("user_uuid", s.user_uuid.is_some()),
        ("role", s.role.is_some()),
        ("permissions", s.permissions.is_some()),
    ];
    let allowed: &[&str] = match s.service_type {
        1 => &["channel_name", "uid"],
        2 | 5 => &["user_id"],
        3 | 6 => &["channel_name", "account"],
        7 => &["room_uuid", "user_uuid", "role"],
        8 => &["user_id", "permissions"],
        _ => &[],
    };
    if let Some((field, _)) = present.iter().find(|(f, p)| *p && !allowed.contains(f)) {
        bail!("{field} does not apply to service type {}", s.service_type);
    }
    let need = |v: Option<String>, field: &str| {
        v.map(String::into_bytes)
            .ok_or_else(|| anyhow!("{field} is required for service type {}", s.service_type))
    };
    let wire = |v: Option<UidOrAccount>, field: &str| match v {
        Some(UidOrAccount::Number(n)) => Ok(raw::uid_string(n).into_bytes()),
        Some(UidOrAccount::Text(t)) => Ok(t.into_bytes()),
        None => Err(anyhow!(
            "{field} is required for service type {}",
            s.service_type
        )),
    };
    let kind = match s.service_type {
        1 => ServiceKind::Rtc {
            channel_name: need(s.channel_name, "channel_name")?,
            uid: wire(s.uid, "uid")?,
        },
        2 => ServiceKind::Rtm {
            user_id: need(s.user_id, "user_id")?,
        },
        3 => ServiceKind::Streaming {
            channel_name: need(s.channel_name, "channel_name")?,
            account: wire(s.account, "account")?,
        },
        4 => ServiceKind::Fpa,
        5 => ServiceKind::Chat {
            user_id: need(s.user_id, "user_id")?,
        },
        6 => ServiceKind::Fcdn {
            channel_name: need(s.channel_name, "channel_name")?,
            account: wire(s.account, "account")?,
        },
        7 => ServiceKind::Apaas {
            room_uuid: need(s.room_uuid, "room_uuid")?,
            user_uuid: need(s.user_uuid, "user_uuid")?,
            role: s
                .role
                .ok_or_else(|| anyhow!("role is required for service type 7"))?,
        },
        8 => {
            let mut permissions = Rtm2Permissions::new();
            for p in s.permissions.unwrap_or_default() {
                permissions.add_raw(p.resource_type, p.permission_type, p.resources);
            }
            ServiceKind::Rtm2 {
                user_id: need(s.user_id, "user_id")?,
                permissions,
            }
        }
        9 => ServiceKind::ConvoAi,
        10 => ServiceKind::Stt,
        other => ServiceKind::Generic {
            service_type: other,
        },
    };
    Ok(Service {
        privileges: s.privileges,
        kind,
    })
}
