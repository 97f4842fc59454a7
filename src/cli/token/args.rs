//! The clap arguments of `tokengate token build` and `tokengate token inspect`.

use std::path::PathBuf;

#[derive(Debug, clap::Args)]
pub(super) struct BuildArgs {
    #[command(subcommand)]
    pub(super) kind: Option<BuildKind>,
    /// Build a raw AccessToken2 from a JSON file ("-" for stdin): `app_id`,
    /// `expire`, `services` as in the vectors' raw inputs, optional `issue_ts` and `salt`.
    #[arg(long, value_name = "FILE")]
    pub(super) spec: Option<String>,
    #[command(flatten)]
    pub(super) common: CommonArgs,
}

/// Flags every builder shares; global so they may follow the builder name.
#[derive(Debug, clap::Args)]
pub(super) struct CommonArgs {
    /// The App ID (32 hex characters).
    #[arg(long, env = "AGORA_APP_ID", global = true)]
    pub(super) app_id: Option<String>,
    /// A file holding the App Certificate (else the AGORA_APP_CERTIFICATE environment variable).
    #[arg(long, value_name = "PATH", global = true)]
    pub(super) app_certificate_file: Option<PathBuf>,
    /// The issue time in unix seconds (default: now), for reproducible output.
    #[arg(long, global = true)]
    pub(super) issue_ts: Option<u32>,
    /// The salt (default: random in 1..=99999999), for reproducible output.
    #[arg(long, global = true)]
    pub(super) salt: Option<u32>,
    /// Allow expiries above 86400 seconds (they are seconds from now, not timestamps).
    #[arg(long, global = true)]
    pub(super) allow_long_expiry: bool,
}

#[derive(Debug, clap::Subcommand)]
pub(super) enum BuildKind {
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
pub(super) struct RtcArgs {
    /// The channel name (under 64 bytes, Agora's 89-character set).
    #[arg(long, allow_hyphen_values = true)]
    pub(super) channel: String,
    /// A numeric uid, 1..=4294967295 (0 is the wildcard: use --any-uid).
    #[arg(long)]
    pub(super) uid: Option<u64>,
    /// A string user account (1 to 255 bytes).
    #[arg(long, allow_hyphen_values = true)]
    pub(super) account: Option<String>,
    /// Admit any uid (the wildcard uid 0).
    #[arg(long)]
    pub(super) any_uid: bool,
    /// publisher or subscriber.
    #[arg(long)]
    pub(super) role: Option<String>,
    /// Token lifetime in seconds from now.
    #[arg(long)]
    pub(super) token_expire: u32,
    /// Privilege lifetime in seconds from now (default: the token lifetime).
    #[arg(long)]
    pub(super) privilege_expire: Option<u32>,
    /// Join privilege lifetime; any per-privilege flag selects the per-privilege builder.
    #[arg(long)]
    pub(super) join_expire: Option<u32>,
    /// Publish-audio privilege lifetime.
    #[arg(long)]
    pub(super) publish_audio_expire: Option<u32>,
    /// Publish-video privilege lifetime.
    #[arg(long)]
    pub(super) publish_video_expire: Option<u32>,
    /// Publish-data-stream privilege lifetime.
    #[arg(long)]
    pub(super) publish_data_expire: Option<u32>,
    /// Add RTM login for the same account (build_token_with_rtm; needs --account).
    #[arg(long, conflicts_with = "rtm_user_id")]
    pub(super) with_rtm: bool,
    /// Add RTM login for this user id (build_token_with_rtm2).
    #[arg(long, allow_hyphen_values = true)]
    pub(super) rtm_user_id: Option<String>,
    /// RTM login lifetime with --rtm-user-id (default: the token lifetime).
    #[arg(long, requires = "rtm_user_id")]
    pub(super) rtm_expire: Option<u32>,
}

#[derive(Debug, clap::Args)]
pub(super) struct RtmArgs {
    /// The RTM user id (1 to 64 bytes).
    #[arg(long, allow_hyphen_values = true)]
    pub(super) user_id: String,
    /// Token and login lifetime in seconds from now.
    #[arg(long)]
    pub(super) expire: u32,
    /// An RTM2 permission RESOURCE:PERMISSION[:NAME], repeatable; RESOURCE is
    /// message-channels, stream-channels, group-channels, server-groups or users,
    /// PERMISSION read or write. Any of these selects an RTM2 token.
    #[arg(long, value_name = "SPEC")]
    pub(super) permission: Vec<String>,
    /// Build an RTM2 token even with no --permission.
    #[arg(long)]
    pub(super) rtm2: bool,
}

#[derive(Debug, clap::Args)]
#[command(group = clap::ArgGroup::new("who").required(true).args(["user_id", "app"]))]
pub(super) struct ChatArgs {
    /// The chat user id (1 to 64 bytes) for a user token.
    #[arg(long, allow_hyphen_values = true)]
    pub(super) user_id: Option<String>,
    /// Build an app token instead.
    #[arg(long)]
    pub(super) app: bool,
    /// Lifetime in seconds from now.
    #[arg(long)]
    pub(super) expire: u32,
}

#[derive(Debug, clap::Args)]
#[command(group = clap::ArgGroup::new("scope").required(true).args(["user_uuid", "app"]))]
pub(super) struct ApaasArgs {
    /// The room uuid: with --user-uuid and --role, a room-user token.
    #[arg(long, allow_hyphen_values = true, requires_all = ["user_uuid", "role"])]
    pub(super) room_uuid: Option<String>,
    /// The user uuid: alone, a user token.
    #[arg(long, allow_hyphen_values = true)]
    pub(super) user_uuid: Option<String>,
    /// The room role (a signed 16-bit integer).
    #[arg(long, allow_negative_numbers = true, requires = "room_uuid")]
    pub(super) role: Option<i16>,
    /// Build an app token.
    #[arg(long, conflicts_with_all = ["user_uuid", "room_uuid"])]
    pub(super) app: bool,
    /// Lifetime in seconds from now.
    #[arg(long)]
    pub(super) expire: u32,
}

#[derive(Debug, clap::Args)]
pub(super) struct InspectArgs {
    /// The token, or "-" to read it from stdin.
    pub(super) token: String,
    /// Print one JSON object instead of a summary.
    #[arg(long)]
    pub(super) json: bool,
    /// A file holding the App Certificate to verify with (else AGORA_APP_CERTIFICATE, if set).
    #[arg(long, value_name = "PATH")]
    pub(super) app_certificate_file: Option<PathBuf>,
    /// 006 only: the channel name the token must be for (006 signs it without carrying it).
    #[arg(long)]
    pub(super) channel: Option<String>,
    /// 006 only: the uid string the token must be for ("" for uid 0).
    #[arg(long)]
    pub(super) uid: Option<String>,
}
