//! The rule fixtures and request builders the integration tests share.
//!
//! Each rule is one `[[rules]]` table, written once here; the named rule sets
//! the tests start servers with are composed from them (in order: the first
//! matching rule wins). All of them sign for the test config's project
//! `main` (`support::server::config_text`). A module that needs a rule of its
//! own keeps it next to its tests and appends it to one of these.
//!
//! The tables are macros that expand to string literals so that `concat!` can
//! compose the public constants at compile time.

use tokengate::grpc::pb;

/// The "team rooms" rule: members of a team (`claims.teams`) get RTC tokens
/// for its rooms (`team-{team}-*`); `$key` lines say what else it grants.
macro_rules! team_rooms {
    ($($key:literal),* $(,)?) => {
        concat!(
            r#"
[[rules]]
name = "team rooms"
channel = "team-{team}-*"
condition = 'has(claims.teams) && captures.team in claims.teams'
project = "main"
default_ttl = "1h"
max_ttl = "8h"
"#,
            $($key, "\n",)*
        )
    };
}

/// Team rooms by `agora_uid`, publishing allowed ([`TEAM_ROOMS`]).
macro_rules! team_rooms_by_uid {
    () => {
        team_rooms!(
            r#"actions = ["rtc"]"#,
            r#"issuer = "https://idp.test.example""#,
            r#"max_role = "publisher""#,
            r#"uid_claim = "agora_uid""#,
        )
    };
}

/// Team rooms for RTC and RTM ([`TEAM_ROOMS_WITH_RTM`]).
macro_rules! team_rooms_with_rtm {
    () => {
        concat!(
            team_rooms!(
                r#"actions = ["rtc", "rtm"]"#,
                r#"max_role = "publisher""#,
                r#"uid_claim = "agora_uid""#,
                r#"publish_ttl = "30m""#,
            ),
            r#"
[[rules.rtm_permissions]]
resource_type = "message_channels"
access = "read"
resources = ["team-{team}-general"]

[[rules.rtm_permissions]]
resource_type = "message_channels"
access = "write"
resources = ["team-{team}-chat"]
"#
        )
    };
}

macro_rules! webinar_attendees {
    () => {
        r#"
[[rules]]
name = "webinar attendees"
actions = ["rtc"]
issuer = "https://idp.test.example"
channel = "webinar-*"
project = "main"
max_role = "subscriber"
account_claim = "sub"
default_ttl = "2h"
max_ttl = "4h"
"#
    };
}

macro_rules! lobby {
    () => {
        r#"
[[rules]]
name = "lobby"
actions = ["rtc"]
channel = "lobby-*"
project = "main"
max_role = "subscriber"
account_claim = "sub"
default_ttl = "30m"
max_ttl = "1h"
"#
    };
}

macro_rules! no_admin_rooms {
    () => {
        r#"
[[rules]]
name = "no admin rooms"
effect = "deny"
actions = ["rtc"]
channel = "admin-*"
"#
    };
}

/// Team members publish in their team's rooms as their `agora_uid`, for an
/// hour by default and at most eight.
pub const TEAM_ROOMS: &str = team_rooms_by_uid!();

/// Team rooms bound to the caller's subject as an Agora account, for callers
/// whose JWT carries no `agora_uid` (the Python client's).
pub const TEAM_ROOMS_AS_ACCOUNT: &str = team_rooms!(
    r#"actions = ["rtc"]"#,
    r#"issuer = "https://idp.test.example""#,
    r#"max_role = "publisher""#,
    r#"account_claim = "sub""#,
);

/// Team rooms for RTC and RTM: publishing for at most half an hour, and RTM
/// permissions to read the team's channels and write its chat.
pub const TEAM_ROOMS_WITH_RTM: &str = team_rooms_with_rtm!();

/// [`TEAM_ROOMS_WITH_RTM`] after a policy change: members may only subscribe.
pub const TEAM_ROOMS_SUBSCRIBERS_ONLY: &str = team_rooms!(
    r#"actions = ["rtc", "rtm"]"#,
    r#"max_role = "subscriber""#,
    r#"uid_claim = "agora_uid""#,
);

/// Anyone watches a webinar (`webinar-*`) as their subject (an account
/// binding), for two hours by default and at most four.
pub const WEBINAR_ATTENDEES: &str = webinar_attendees!();

/// Anyone watches a lobby (`lobby-*`) as their subject, for half an hour by
/// default and at most an hour.
pub const LOBBY: &str = lobby!();

/// No token for any `admin-*` channel, whatever a later rule allows.
pub const NO_ADMIN_ROOMS: &str = no_admin_rooms!();

/// The ext_authz rule set: team rooms by uid, webinars by account.
pub const ROOMS_AND_WEBINARS: &str = concat!(team_rooms_by_uid!(), webinar_attendees!());

/// The token API's rule set, every kind of rule, in an order that matters
/// (the first match wins): suspended callers are
/// refused first, a backend with the `tokens:mint` scope names any identity,
/// team rooms with RTM, the lobby, RTM and Chat users, and debugging.
pub const API_RULES: &str = concat!(
    r#"
[[rules]]
name = "suspended"
effect = "deny"
actions = ["rtc", "rtm", "chat"]
condition = 'has(claims.status) && claims.status == "suspended"'

[[rules]]
name = "backend"
actions = ["rtc", "rtm", "chat"]
issuer = "https://idp.test.example"
condition = '"tokens:mint" in caller.scopes'
project = "main"
max_role = "publisher"
caller_chooses_identity = true
allow_wildcard_uid = true
allow_app_token = true
default_ttl = "1h"
max_ttl = "24h"
"#,
    team_rooms_with_rtm!(),
    lobby!(),
    r#"
[[rules]]
name = "users"
actions = ["rtm", "chat"]
project = "main"
account_claim = "sub"
default_ttl = "12h"
max_ttl = "24h"

[[rules]]
name = "debug"
actions = ["inspect", "explain"]
condition = '"tokengate:debug" in caller.scopes'
"#
);

/// An `IssueRtcToken` request for `channel` as `role`; the rule binds the identity.
pub fn rtc(channel: &str, role: pb::Role) -> pb::IssueRtcTokenRequest {
    pb::IssueRtcTokenRequest {
        channel: channel.into(),
        role: role as i32,
        ..Default::default()
    }
}

/// An `IssueRtcToken` request for `channel` as `role` that asks for `uid`.
pub fn rtc_uid(channel: &str, role: pb::Role, uid: u32) -> pb::IssueRtcTokenRequest {
    pb::IssueRtcTokenRequest {
        identity: Some(pb::issue_rtc_token_request::Identity::Uid(uid)),
        ..rtc(channel, role)
    }
}

/// A protobuf duration of `s` whole seconds, as the API's lifetimes take.
pub fn secs(s: i64) -> Option<prost_types::Duration> {
    Some(prost_types::Duration {
        seconds: s,
        nanos: 0,
    })
}
