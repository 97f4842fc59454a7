//! `tokengate token build|inspect`: the offline token command line.
//!
//! The only edge of the token core that reads the clock, the OS random source,
//! files and the environment: it turns flags into builder calls with an
//! explicit `issue_ts` and `salt`. The App Certificate comes from a file or
//! the `AGORA_APP_CERTIFICATE` environment variable, never from a flag whose
//! value would show in `ps`, and it is never printed.
//!
//! The decoded JSON views ([`decoded_007`], [`decoded_006`]) live here rather
//! than in `token`, so the pure core needs no serde.

use std::collections::BTreeMap;
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, UNIX_EPOCH};

use anyhow::{Context as _, anyhow, bail};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use crate::domain::{Account, ChannelName, MAX_LIFETIME_SECS, Role, RtcIdentity, RtmUserId, Uid};
use crate::entropy;
use crate::token::builders::{self, Issue, RtcPrivileges, raw};
use crate::token::services::{PermissionType, ResourceType, Rtm2Permissions, Service, ServiceKind};
use crate::token::v006::{self, Parsed006};
use crate::token::v007::{self, AccessToken2, ParsedToken};
use crate::token::{AppCertificate, AppId, ParseError, privilege_expires_at};

/// The environment variable holding the App Certificate.
pub const CERTIFICATE_ENV: &str = "AGORA_APP_CERTIFICATE";

/// Exit code: the token parsed (and verified, when checked) or was built.
const EXIT_OK: u8 = 0;
/// Exit code: the token parsed but its signature is invalid.
const EXIT_INVALID_SIGNATURE: u8 = 1;
/// Exit code: the token could not be parsed, or the command failed.
pub const EXIT_FAILURE: u8 = 2;

/// `tokengate token`: build or inspect Agora tokens offline.
#[derive(Debug, clap::Args)]
pub struct TokenArgs {
    #[command(subcommand)]
    command: TokenCommand,
}

#[derive(Debug, clap::Subcommand)]
enum TokenCommand {
    /// Build an AccessToken2 ("007") with one of Agora's builder APIs, or from a JSON spec.
    Build(BuildArgs),
    /// Decode a 007 or 006 token; verify it when a certificate is available.
    ///
    /// Exit code 0 when it parses (and verifies, if checked), 1 when the
    /// signature is invalid, 2 when it cannot be parsed.
    Inspect(InspectArgs),
}

#[derive(Debug, clap::Args)]
struct BuildArgs {
    #[command(subcommand)]
    kind: Option<BuildKind>,
    /// Build a raw AccessToken2 from a JSON file ("-" for stdin): `app_id`,
    /// `expire`, `services` as in the vectors' raw inputs, optional `issue_ts` and `salt`.
    #[arg(long, value_name = "FILE")]
    spec: Option<String>,
    #[command(flatten)]
    common: CommonArgs,
}

/// Flags every builder shares; global so they may follow the builder name.
#[derive(Debug, clap::Args)]
struct CommonArgs {
    /// The App ID (32 hex characters).
    #[arg(long, env = "AGORA_APP_ID", global = true)]
    app_id: Option<String>,
    /// A file holding the App Certificate (else the AGORA_APP_CERTIFICATE environment variable).
    #[arg(long, value_name = "PATH", global = true)]
    app_certificate_file: Option<PathBuf>,
    /// The issue time in unix seconds (default: now), for reproducible output.
    #[arg(long, global = true)]
    issue_ts: Option<u32>,
    /// The salt (default: random in 1..=99999999), for reproducible output.
    #[arg(long, global = true)]
    salt: Option<u32>,
    /// Allow expiries above 86400 seconds (they are seconds from now, not timestamps).
    #[arg(long, global = true)]
    allow_long_expiry: bool,
}

#[derive(Debug, clap::Subcommand)]
enum BuildKind {
    /// RTC: by uid or account, by role or per privilege, optionally with RTM or RTM2 login.
    Rtc(RtcArgs),
    /// RTM login, or RTM2 with permissions.
    Rtm(RtmArgs),
    /// Chat user or app token.
    Chat(ChatArgs),
    /// FPA login (a fixed 24-hour token).
    Fpa,
    /// APaaS room-user, user or app token.
    Apaas(ApaasArgs),
    /// Education room-user, user or app token (identical to APaaS).
    Education(ApaasArgs),
}

#[derive(Debug, clap::Args)]
#[command(group = clap::ArgGroup::new("identity").required(true).args(["uid", "account", "any_uid"]))]
struct RtcArgs {
    /// The channel name (under 64 bytes, Agora's 89-character set).
    #[arg(long, allow_hyphen_values = true)]
    channel: String,
    /// A numeric uid, 1..=4294967295 (0 is the wildcard: use --any-uid).
    #[arg(long)]
    uid: Option<u64>,
    /// A string user account (1 to 255 bytes).
    #[arg(long, allow_hyphen_values = true)]
    account: Option<String>,
    /// Admit any uid (the wildcard uid 0).
    #[arg(long)]
    any_uid: bool,
    /// publisher or subscriber.
    #[arg(long)]
    role: Option<String>,
    /// Token lifetime in seconds from now.
    #[arg(long)]
    token_expire: u32,
    /// Privilege lifetime in seconds from now (default: the token lifetime).
    #[arg(long)]
    privilege_expire: Option<u32>,
    /// Join privilege lifetime; any per-privilege flag selects the per-privilege builder.
    #[arg(long)]
    join_expire: Option<u32>,
    /// Publish-audio privilege lifetime.
    #[arg(long)]
    publish_audio_expire: Option<u32>,
    /// Publish-video privilege lifetime.
    #[arg(long)]
    publish_video_expire: Option<u32>,
    /// Publish-data-stream privilege lifetime.
    #[arg(long)]
    publish_data_expire: Option<u32>,
    /// Add RTM login for the same account (build_token_with_rtm; needs --account).
    #[arg(long, conflicts_with = "rtm_user_id")]
    with_rtm: bool,
    /// Add RTM login for this user id (build_token_with_rtm2).
    #[arg(long, allow_hyphen_values = true)]
    rtm_user_id: Option<String>,
    /// RTM login lifetime with --rtm-user-id (default: the token lifetime).
    #[arg(long, requires = "rtm_user_id")]
    rtm_expire: Option<u32>,
}

#[derive(Debug, clap::Args)]
struct RtmArgs {
    /// The RTM user id (1 to 64 bytes).
    #[arg(long, allow_hyphen_values = true)]
    user_id: String,
    /// Token and login lifetime in seconds from now.
    #[arg(long)]
    expire: u32,
    /// An RTM2 permission RESOURCE:PERMISSION[:NAME], repeatable; RESOURCE is
    /// message-channels, stream-channels, group-channels, server-groups or users,
    /// PERMISSION read or write. Any of these selects an RTM2 token.
    #[arg(long, value_name = "SPEC")]
    permission: Vec<String>,
    /// Build an RTM2 token even with no --permission.
    #[arg(long)]
    rtm2: bool,
}

#[derive(Debug, clap::Args)]
#[command(group = clap::ArgGroup::new("who").required(true).args(["user_id", "app"]))]
struct ChatArgs {
    /// The chat user id (1 to 64 bytes) for a user token.
    #[arg(long, allow_hyphen_values = true)]
    user_id: Option<String>,
    /// Build an app token instead.
    #[arg(long)]
    app: bool,
    /// Lifetime in seconds from now.
    #[arg(long)]
    expire: u32,
}

#[derive(Debug, clap::Args)]
#[command(group = clap::ArgGroup::new("scope").required(true).args(["user_uuid", "app"]))]
struct ApaasArgs {
    /// The room uuid: with --user-uuid and --role, a room-user token.
    #[arg(long, allow_hyphen_values = true, requires_all = ["user_uuid", "role"])]
    room_uuid: Option<String>,
    /// The user uuid: alone, a user token.
    #[arg(long, allow_hyphen_values = true)]
    user_uuid: Option<String>,
    /// The room role (a signed 16-bit integer).
    #[arg(long, allow_negative_numbers = true, requires = "room_uuid")]
    role: Option<i16>,
    /// Build an app token.
    #[arg(long, conflicts_with_all = ["user_uuid", "room_uuid"])]
    app: bool,
    /// Lifetime in seconds from now.
    #[arg(long)]
    expire: u32,
}

#[derive(Debug, clap::Args)]
struct InspectArgs {
    /// The token, or "-" to read it from stdin.
    token: String,
    /// Print one JSON object instead of a summary.
    #[arg(long)]
    json: bool,
    /// A file holding the App Certificate to verify with (else AGORA_APP_CERTIFICATE, if set).
    #[arg(long, value_name = "PATH")]
    app_certificate_file: Option<PathBuf>,
    /// 006 only: the channel name the token must be for (006 signs it without carrying it).
    #[arg(long)]
    channel: Option<String>,
    /// 006 only: the uid string the token must be for ("" for uid 0).
    #[arg(long)]
    uid: Option<String>,
}

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

/// Runs `tokengate token ...` and returns the process exit code.
pub fn run(args: TokenArgs) -> anyhow::Result<ExitCode> {
    match args.command {
        TokenCommand::Build(build) => {
            let token = run_build(build)?;
            println!("{token}");
            Ok(ExitCode::from(EXIT_OK))
        }
        TokenCommand::Inspect(inspect) => run_inspect(&inspect),
    }
}

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

fn run_build(args: BuildArgs) -> anyhow::Result<String> {
    let common = &args.common;
    match (args.kind, args.spec) {
        (Some(_), Some(_)) => bail!("give either a builder (rtc, rtm, ...) or --spec, not both"),
        (None, None) => {
            bail!("give a builder (rtc, rtm, chat, fpa, apaas, education) or --spec FILE")
        }
        (None, Some(path)) => build_from_spec(common, &path),
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

fn build_from_spec(common: &CommonArgs, path: &str) -> anyhow::Result<String> {
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

fn check_expiry(name: &str, value: u32) -> anyhow::Result<()> {
    if value > MAX_LIFETIME_SECS {
        bail!(
            "{name} is {value} seconds, more than 24 hours: AccessToken2 expiries are seconds \
             from now, not unix timestamps (pass 3600, not now + 3600). Agora caps tokens at \
             24 hours; pass --allow-long-expiry if you really mean {value} seconds"
        );
    }
    Ok(())
}

fn app_id(value: Option<&str>) -> anyhow::Result<AppId> {
    let value = value.ok_or_else(|| anyhow!("no App ID: pass --app-id or set AGORA_APP_ID"))?;
    Ok(AppId::parse(value)?)
}

fn required_certificate(file: Option<&Path>) -> anyhow::Result<AppCertificate> {
    load_certificate(file)?.ok_or_else(|| {
        anyhow!("no App Certificate: set {CERTIFICATE_ENV} or pass --app-certificate-file PATH")
    })
}

/// The certificate from `file`, else from the environment, else none. The
/// error never contains the file's content.
#[allow(clippy::disallowed_methods)] // A config-reading edge: the CLI's certificate may come from its variable.
fn load_certificate(file: Option<&Path>) -> anyhow::Result<Option<AppCertificate>> {
    let text = match file {
        Some(path) => std::fs::read_to_string(path)
            .with_context(|| format!("reading the certificate file {}", path.display()))?,
        None => match std::env::var(CERTIFICATE_ENV) {
            Ok(v) if !v.trim().is_empty() => v,
            _ => return Ok(None),
        },
    };
    Ok(Some(AppCertificate::parse(text.trim())?))
}

/// `issue_ts` as given, else the current unix time.
fn issue_ts_or_now(given: Option<u32>) -> anyhow::Result<u32> {
    match given {
        Some(ts) => Ok(ts),
        None => u32::try_from(entropy::unix_now()).context("the clock is past 2106"),
    }
}

/// The salt as given, else uniform in 1..=99999999 from the OS random source.
fn salt_or_random(given: Option<u32>) -> anyhow::Result<u32> {
    match given {
        Some(salt) => Ok(salt),
        None => Ok(entropy::random_salt()?),
    }
}

fn run_inspect(args: &InspectArgs) -> anyhow::Result<ExitCode> {
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
    let outcome = if token.starts_with(v006::VERSION) {
        v006::parse(&token).map(|p| inspect_006(&p, certificate.as_ref(), args))
    } else {
        v007::parse(&token).map(|p| inspect_007(&p, certificate.as_ref(), args.json))
    };
    match outcome {
        Ok(valid) => {
            let code = if valid == Some(false) {
                EXIT_INVALID_SIGNATURE
            } else {
                EXIT_OK
            };
            Ok(ExitCode::from(code))
        }
        Err(e) => {
            let shown = match e {
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

/// Prints a 007 token; returns whether the signature is valid, if it was checked.
fn inspect_007(
    parsed: &ParsedToken,
    certificate: Option<&AppCertificate>,
    as_json: bool,
) -> Option<bool> {
    let t = &parsed.token;
    let valid = certificate.map(|c| parsed.verify(c));
    if as_json {
        let mut view = decoded_007(parsed);
        if let Value::Object(m) = &mut view {
            m.insert("version".into(), v007::VERSION.into());
            m.insert("expires_at".into(), t.expires_at().into());
            let per_service: Vec<Value> = t
                .services
                .iter()
                .map(|s| {
                    let deadlines: Map<String, Value> = s
                        .privileges
                        .iter()
                        .map(|(id, v)| {
                            (id.to_string(), json!(privilege_expires_at(t.issue_ts, *v)))
                        })
                        .collect();
                    Value::Object(deadlines)
                })
                .collect();
            m.insert("privilege_expires_at".into(), Value::Array(per_service));
            if let Some(stop) = parsed.stopped_at_unknown_service_type {
                m.insert("stopped_at_unknown_service_type".into(), stop.into());
            }
            if let Some(v) = valid {
                m.insert("signature_valid".into(), v.into());
            }
        }
        println!("{view}");
        return valid;
    }
    println!("version      007 (AccessToken2)");
    println!("app id       {}", String::from_utf8_lossy(&t.app_id));
    println!(
        "issued at    {} ({})",
        utc(u64::from(t.issue_ts)),
        t.issue_ts
    );
    println!(
        "expires at   {} (issue_ts + {}s)",
        utc(t.expires_at()),
        t.expire
    );
    println!("salt         {}", t.salt);
    println!("services     {}", parsed.service_count);
    for s in &t.services {
        println!(
            "  {} ({}){}",
            s.kind.name(),
            s.service_type(),
            describe_fields(&s.kind)
        );
        for (id, value) in &s.privileges {
            let until = match privilege_expires_at(t.issue_ts, *value) {
                Some(at) => format!("until {} (+{value}s)", utc(at)),
                None => "no privilege-specific limit (0)".to_owned(),
            };
            println!("    {:<22} {until}", privilege_name(s.service_type(), *id));
        }
    }
    if let Some(stop) = parsed.stopped_at_unknown_service_type {
        println!(
            "  (parsing stopped at unknown service type {stop}; the signature still covers it)"
        );
    }
    print_validity(valid, certificate);
    valid
}

/// Prints a 006 token; returns whether the signature is valid, if it was checked.
fn inspect_006(
    parsed: &Parsed006,
    certificate: Option<&AppCertificate>,
    args: &InspectArgs,
) -> Option<bool> {
    let valid = match (certificate, &args.channel, &args.uid) {
        (Some(c), Some(channel), Some(uid)) => Some(parsed.verify(c, channel, uid)),
        (Some(_), ..) => {
            eprintln!(
                "note: a 006 signature covers the channel and uid; pass --channel and --uid to verify it"
            );
            None
        }
        _ => None,
    };
    if args.json {
        let mut view = decoded_006(parsed);
        if let Value::Object(m) = &mut view {
            m.insert("version".into(), v006::VERSION.into());
            // 006 has no lifetime field: `ts` is when the builder says the token ends.
            m.insert("expires_at".into(), parsed.ts.into());
            let deadlines: Map<String, Value> = parsed
                .privileges
                .iter()
                .map(|(id, v)| {
                    (
                        id.to_string(),
                        if *v == 0 { Value::Null } else { (*v).into() },
                    )
                })
                .collect();
            m.insert("privilege_expires_at".into(), Value::Object(deadlines));
            if let Some(v) = valid {
                m.insert("signature_valid".into(), v.into());
            }
        }
        println!("{view}");
        return valid;
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
    valid
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

fn privilege_name(service_type: u16, id: u16) -> String {
    let name = match (service_type, id) {
        (1, 1) => "joinChannel",
        (1, 2) => "publishAudioStream",
        (1, 3) => "publishVideoStream",
        (1, 4) => "publishDataStream",
        (2 | 4 | 8, 1) => "login",
        (3, 1) => "publishMixStream",
        (3, 2) => "publishRawStream",
        (5, 1) => "user",
        (5, 2) => "app",
        (6, 1) => "publish",
        (6, 2) => "play",
        (7, 1) => "roomUser",
        (7, 2) => "user",
        (7, 3) => "app",
        _ => "privilege",
    };
    format!("{name} ({id})")
}

/// A unix time as RFC 3339 UTC.
fn utc(secs: u64) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(secs)).to_string()
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
