//! `tokengate token build`: flags into the typed builder calls, with an explicit
//! `issue_ts` (default: the clock) and salt (default: the OS random source).

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context as _, anyhow, bail};

use super::args::{BuildArgs, BuildKind, RtcArgs};
use super::{CERTIFICATE_ENV, load_certificate, spec};
use crate::domain::{Account, ChannelName, MAX_LIFETIME_SECS, Role, RtcIdentity, RtmUserId, Uid};
use crate::entropy;
use crate::token::builders::{self, Issue, RtcPrivileges};
use crate::token::services::{PermissionType, ResourceType, Rtm2Permissions};
use crate::token::{AppCertificate, AppId};

pub(super) fn run_build(args: BuildArgs) -> anyhow::Result<String> {
    let common = &args.common;
    match (args.kind, args.spec) {
        (Some(_), Some(_)) => bail!("give either a builder (rtc, rtm, ...) or --spec, not both"),
        (None, None) => {
            bail!("give a builder (rtc, rtm, chat, fpa, apaas, education) or --spec FILE")
        }
        (None, Some(path)) => spec::build_from_spec(common, &path),
        (Some(kind), None) => {
            let app_id = app_id(common.app_id.as_deref())?;
            let certificate = required_certificate(common.app_certificate_file.as_deref())?;
            let issue = Issue {
                app_id: &app_id,
                certificate: &certificate,
                issue_ts: issue_ts_or_now(common.issue_ts)?,
                salt: salt_or_random(common.salt)?,
            };
            build_kind(&issue, kind, common.allow_long_expiry)
        }
    }
}

fn build_kind(issue: &Issue<'_>, kind: BuildKind, allow_long: bool) -> anyhow::Result<String> {
    let token = match kind {
        BuildKind::Rtc(a) => return build_rtc(issue, &a, allow_long),
        BuildKind::Rtm(a) => {
            guard(allow_long, &[("--expire", Some(a.expire))])?;
            let user_id = RtmUserId::parse(&a.user_id).context("--user-id")?;
            if a.permission.is_empty() && !a.rtm2 {
                builders::rtm_token(issue, &user_id, a.expire)?
            } else {
                let permissions = parse_permissions(&a.permission)?;
                builders::rtm_token_with_permissions(issue, &user_id, &permissions, a.expire)?
            }
        }
        BuildKind::Chat(a) => {
            guard(allow_long, &[("--expire", Some(a.expire))])?;
            match a.user_id {
                Some(id) => {
                    let user_id = RtmUserId::parse(&id).context("--user-id")?;
                    builders::chat_user_token(issue, &user_id, a.expire)?
                }
                None => builders::chat_app_token(issue, a.expire)?,
            }
        }
        BuildKind::Fpa => builders::fpa_token(issue)?,
        BuildKind::Apaas(a) | BuildKind::Education(a) => {
            guard(allow_long, &[("--expire", Some(a.expire))])?;
            match (a.app, a.room_uuid, a.user_uuid, a.role) {
                (true, ..) => builders::apaas_app_token(issue, a.expire)?,
                (false, Some(room), Some(user), Some(role)) => {
                    builders::apaas_room_user_token(issue, &room, &user, role, a.expire)?
                }
                (false, None, Some(user), _) => builders::apaas_user_token(issue, &user, a.expire)?,
                _ => bail!("give --app, --user-uuid, or --room-uuid with --user-uuid and --role"),
            }
        }
    };
    Ok(token)
}

fn build_rtc(issue: &Issue<'_>, a: &RtcArgs, allow_long: bool) -> anyhow::Result<String> {
    guard(
        allow_long,
        &[
            ("--token-expire", Some(a.token_expire)),
            ("--privilege-expire", a.privilege_expire),
            ("--join-expire", a.join_expire),
            ("--publish-audio-expire", a.publish_audio_expire),
            ("--publish-video-expire", a.publish_video_expire),
            ("--publish-data-expire", a.publish_data_expire),
            ("--rtm-expire", a.rtm_expire),
        ],
    )?;
    let channel = ChannelName::parse(&a.channel).context("--channel")?;
    let who = rtc_identity(a)?;
    let role = a
        .role
        .as_deref()
        .map(Role::parse)
        .transpose()
        .context("--role")?;
    let base = a.privilege_expire.unwrap_or(a.token_expire);
    let privileges = RtcPrivileges {
        join: a.join_expire.unwrap_or(base),
        publish_audio: a.publish_audio_expire.unwrap_or(base),
        publish_video: a.publish_video_expire.unwrap_or(base),
        publish_data: a.publish_data_expire.unwrap_or(base),
    };
    let per_privilege = a.join_expire.is_some()
        || a.publish_audio_expire.is_some()
        || a.publish_video_expire.is_some()
        || a.publish_data_expire.is_some();
    let need_role = || role.ok_or_else(|| anyhow!("--role publisher|subscriber is required"));
    let token = if let Some(rtm_id) = &a.rtm_user_id {
        let rtm_user_id = RtmUserId::parse(rtm_id).context("--rtm-user-id")?;
        let rtm_expire = a.rtm_expire.unwrap_or(a.token_expire);
        builders::rtc_token_with_rtm2(
            issue,
            &channel,
            &who,
            need_role()?,
            a.token_expire,
            privileges,
            &rtm_user_id,
            rtm_expire,
        )?
    } else if a.with_rtm {
        let RtcIdentity::Account(account) = &who else {
            bail!("--with-rtm logs the account into RTM, so it needs --account");
        };
        builders::rtc_token_with_rtm(issue, &channel, account, need_role()?, a.token_expire, base)?
    } else if per_privilege {
        if role.is_some() {
            bail!("--role does not apply with per-privilege expiries: every privilege is granted");
        }
        builders::rtc_token_with_privileges(issue, &channel, &who, a.token_expire, privileges)?
    } else {
        builders::rtc_token(issue, &channel, &who, need_role()?, a.token_expire, base)?
    };
    Ok(token)
}

fn rtc_identity(a: &RtcArgs) -> anyhow::Result<RtcIdentity> {
    match (a.uid, &a.account, a.any_uid) {
        (Some(0), ..) => {
            bail!("--uid 0 is the wildcard that admits any user; pass --any-uid if you mean it")
        }
        (Some(uid), ..) => Ok(RtcIdentity::Uid(Uid::from_u64(uid).context("--uid")?)),
        (None, Some(account), _) => Ok(RtcIdentity::Account(
            Account::parse(account).context("--account")?,
        )),
        (None, None, true) => Ok(RtcIdentity::AnyUid),
        (None, None, false) => bail!("give --uid, --account or --any-uid"),
    }
}

/// Parses repeated `RESOURCE:PERMISSION[:NAME]` flags; names accumulate per pair.
fn parse_permissions(specs: &[String]) -> anyhow::Result<Rtm2Permissions> {
    let mut pairs: BTreeMap<(ResourceType, PermissionType), Vec<String>> = BTreeMap::new();
    for spec in specs {
        let mut parts = spec.splitn(3, ':');
        let resource = match parts.next().unwrap_or_default() {
            "message-channels" => ResourceType::MessageChannels,
            "stream-channels" => ResourceType::StreamChannels,
            "group-channels" => ResourceType::GroupChannels,
            "server-groups" => ResourceType::ServerGroups,
            "users" => ResourceType::Users,
            other => bail!("--permission {spec:?}: unknown resource type {other:?}"),
        };
        let permission = match parts.next() {
            Some("read") => PermissionType::Read,
            Some("write") => PermissionType::Write,
            _ => bail!("--permission {spec:?}: the permission must be read or write"),
        };
        let names = pairs.entry((resource, permission)).or_default();
        if let Some(name) = parts.next() {
            names.push(name.to_owned());
        }
    }
    let mut permissions = Rtm2Permissions::new();
    for ((resource, permission), names) in pairs {
        permissions.add(resource, permission, names);
    }
    Ok(permissions)
}

/// Refuses expiries above a day unless allowed: the usual cause is passing a
/// unix timestamp where 007 wants seconds from now (spec §2.7).
fn guard(allow_long: bool, expiries: &[(&str, Option<u32>)]) -> anyhow::Result<()> {
    if allow_long {
        return Ok(());
    }
    for (flag, value) in expiries {
        if let Some(v) = value {
            check_expiry(flag, *v)?;
        }
    }
    Ok(())
}

pub(super) fn check_expiry(name: &str, value: u32) -> anyhow::Result<()> {
    if value > MAX_LIFETIME_SECS {
        bail!(
            "{name} is {value} seconds, more than 24 hours: AccessToken2 expiries are seconds \
             from now, not unix timestamps (pass 3600, not now + 3600). Agora caps tokens at \
             24 hours; pass --allow-long-expiry if you really mean {value} seconds"
        );
    }
    Ok(())
}

pub(super) fn app_id(value: Option<&str>) -> anyhow::Result<AppId> {
    let value = value.ok_or_else(|| anyhow!("no App ID: pass --app-id or set AGORA_APP_ID"))?;
    Ok(AppId::parse(value)?)
}

pub(super) fn required_certificate(file: Option<&Path>) -> anyhow::Result<AppCertificate> {
    load_certificate(file)?.ok_or_else(|| {
        anyhow!("no App Certificate: set {CERTIFICATE_ENV} or pass --app-certificate-file PATH")
    })
}

/// `issue_ts` as given, else the current unix time.
pub(super) fn issue_ts_or_now(given: Option<u32>) -> anyhow::Result<u32> {
    match given {
        Some(ts) => Ok(ts),
        None => u32::try_from(entropy::unix_now()).context("the clock is past 2106"),
    }
}

/// The salt as given, else uniform in 1..=99999999 from the OS random source.
pub(super) fn salt_or_random(given: Option<u32>) -> anyhow::Result<u32> {
    match given {
        Some(salt) => Ok(salt),
        None => Ok(entropy::random_salt()?),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn salts_stay_in_the_official_range() {
        for _ in 0..1000 {
            let salt = salt_or_random(None).unwrap();
            assert!((1..=entropy::MAX_SALT).contains(&salt), "{salt}");
        }
        assert_eq!(salt_or_random(Some(7)).unwrap(), 7);
    }

    #[test]
    fn the_expiry_guard_explains_relative_seconds() {
        assert!(check_expiry("--token-expire", 86_400).is_ok());
        let err = check_expiry("--token-expire", 1_800_000_000)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("seconds from now, not unix timestamps"),
            "{err}"
        );
        assert!(guard(true, &[("--expire", Some(u32::MAX))]).is_ok());
    }

    #[test]
    fn permissions_accumulate_per_pair() {
        let flags: Vec<String> = ["users:read:a", "users:read:b:c", "message-channels:write"]
            .map(String::from)
            .to_vec();
        let p = parse_permissions(&flags).unwrap();
        let flat: Vec<(u16, u16, usize)> = p.iter().map(|(r, q, l)| (r, q, l.len())).collect();
        assert_eq!(flat, vec![(0, 1, 0), (4, 0, 2)]);
        assert!(parse_permissions(&["rooms:read".to_owned()]).is_err());
        assert!(parse_permissions(&["users:admin".to_owned()]).is_err());
    }
}
