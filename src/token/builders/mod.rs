//! Every official AccessToken2 builder API (spec §2.6), over the domain types.
//!
//! Time and randomness are arguments ([`Issue`]): `issue_ts` is the build
//! time in unix seconds and `salt` comes from the caller's random source.
//! Every expiry is **seconds from `issue_ts`**, never a timestamp (spec §2.7);
//! a privilege value of 0 means "no privilege-specific limit".
//!
//! The inputs here have passed Agora's product limits ([`crate::domain`]); a
//! channel is a [`crate::domain::ChannelName`] or a [`ChannelScope`], which
//! also admits the wildcard `*`.
//! [`raw`] takes plain strings for everything else (conformance vectors,
//! `--spec` files). APaaS, Education, FPA and Chat-app builders have no domain
//! inputs, so they are re-exported from [`raw`] unchanged.

pub mod raw;

use crate::domain::{Account, ChannelScope, Role, RtcIdentity, RtmUserId};
use crate::token::services::Rtm2Permissions;
use crate::token::{AppCertificate, AppId, TokenError};

pub use raw::{
    APAAS_APP, APAAS_ROOM_USER, APAAS_USER, CHAT_APP, CHAT_USER, LOGIN, RTC_JOIN_CHANNEL,
    RTC_PUBLISH_AUDIO, RTC_PUBLISH_DATA, RTC_PUBLISH_VIDEO, apaas_app_token, apaas_room_user_token,
    apaas_user_token, chat_app_token, education_app_token, education_room_user_token,
    education_user_token, fpa_token,
};

/// Who signs, when and with which salt: the arguments every builder shares.
#[derive(Debug, Clone, Copy)]
pub struct Issue<'a> {
    /// The App ID written into the token.
    pub app_id: &'a AppId,
    /// The App Certificate that signs it.
    pub certificate: &'a AppCertificate,
    /// Unix seconds at build time; every expiry counts from here.
    pub issue_ts: u32,
    /// The salt (official builders draw 1..=99999999).
    pub salt: u32,
}

/// The four RTC privilege expiries, in seconds from `issue_ts`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RtcPrivileges {
    /// Privilege 1, join the channel.
    pub join: u32,
    /// Privilege 2, publish audio.
    pub publish_audio: u32,
    /// Privilege 3, publish video.
    pub publish_video: u32,
    /// Privilege 4, publish data streams.
    pub publish_data: u32,
}

impl RtcPrivileges {
    /// All four privileges with the same expiry.
    pub fn all(expire: u32) -> Self {
        Self {
            join: expire,
            publish_audio: expire,
            publish_video: expire,
            publish_data: expire,
        }
    }
}

/// `build_token_with_uid` and `build_token_with_user_account`: one RTC service
/// for `who`; join = `privilege_expire`, plus the publish privileges for a publisher.
pub fn rtc_token(
    issue: &Issue<'_>,
    channel: impl Into<ChannelScope>,
    who: &RtcIdentity,
    role: Role,
    token_expire: u32,
    privilege_expire: u32,
) -> Result<String, TokenError> {
    let uid = who.wire_string();
    raw::rtc_token(
        issue,
        channel.into().as_str(),
        &uid,
        role,
        token_expire,
        privilege_expire,
    )
}

/// `build_token_with_uid_and_privilege` and `..._user_account_and_privilege`:
/// all four RTC privileges with their own expiries.
pub fn rtc_token_with_privileges(
    issue: &Issue<'_>,
    channel: impl Into<ChannelScope>,
    who: &RtcIdentity,
    token_expire: u32,
    privileges: RtcPrivileges,
) -> Result<String, TokenError> {
    let uid = who.wire_string();
    raw::rtc_token_with_privileges(
        issue,
        channel.into().as_str(),
        &uid,
        token_expire,
        privileges,
    )
}

/// `build_token_with_rtm`: RTC for `account` plus RTM login for the same
/// account, with login = `token_expire`.
pub fn rtc_token_with_rtm(
    issue: &Issue<'_>,
    channel: impl Into<ChannelScope>,
    account: &Account,
    role: Role,
    token_expire: u32,
    privilege_expire: u32,
) -> Result<String, TokenError> {
    raw::rtc_token_with_rtm(
        issue,
        channel.into().as_str(),
        account.as_str(),
        role,
        token_expire,
        privilege_expire,
    )
}

/// `build_token_with_rtm2`: RTC for `who` (publish privileges only for a
/// publisher) plus RTM login for `rtm_user_id` = `rtm_token_expire`.
#[allow(clippy::too_many_arguments)] // mirrors the official BuildTokenWithRtm2 one to one
pub fn rtc_token_with_rtm2(
    issue: &Issue<'_>,
    channel: impl Into<ChannelScope>,
    who: &RtcIdentity,
    role: Role,
    token_expire: u32,
    privileges: RtcPrivileges,
    rtm_user_id: &RtmUserId,
    rtm_token_expire: u32,
) -> Result<String, TokenError> {
    let uid = who.wire_string();
    raw::rtc_token_with_rtm2(
        issue,
        channel.into().as_str(),
        &uid,
        role,
        token_expire,
        privileges,
        rtm_user_id.as_str(),
        rtm_token_expire,
    )
}

/// npm `ConvoAITokenBuilder.buildToken`: as [`rtc_token_with_rtm2`] plus a ConvoAI (9) service.
#[allow(clippy::too_many_arguments)] // mirrors the official builder one to one
pub fn convoai_token(
    issue: &Issue<'_>,
    channel: impl Into<ChannelScope>,
    who: &RtcIdentity,
    role: Role,
    token_expire: u32,
    privileges: RtcPrivileges,
    rtm_user_id: &RtmUserId,
    rtm_token_expire: u32,
) -> Result<String, TokenError> {
    let uid = who.wire_string();
    raw::convoai_token(
        issue,
        channel.into().as_str(),
        &uid,
        role,
        token_expire,
        privileges,
        rtm_user_id.as_str(),
        rtm_token_expire,
    )
}

/// npm `SttTokenBuilder.buildToken`: as [`rtc_token_with_rtm2`] plus an STT (10) service.
#[allow(clippy::too_many_arguments)] // mirrors the official builder one to one
pub fn stt_token(
    issue: &Issue<'_>,
    channel: impl Into<ChannelScope>,
    who: &RtcIdentity,
    role: Role,
    token_expire: u32,
    privileges: RtcPrivileges,
    rtm_user_id: &RtmUserId,
    rtm_token_expire: u32,
) -> Result<String, TokenError> {
    let uid = who.wire_string();
    raw::stt_token(
        issue,
        channel.into().as_str(),
        &uid,
        role,
        token_expire,
        privileges,
        rtm_user_id.as_str(),
        rtm_token_expire,
    )
}

/// `RtmTokenBuilder2.build_token`: RTM login for `user_id` = `expire`.
pub fn rtm_token(
    issue: &Issue<'_>,
    user_id: &RtmUserId,
    expire: u32,
) -> Result<String, TokenError> {
    raw::rtm_token(issue, user_id.as_str(), expire)
}

/// `RtmTokenBuilder2.build_token_with_permissions`: RTM2 for `user_id` with `permissions`, login = `expire`.
pub fn rtm_token_with_permissions(
    issue: &Issue<'_>,
    user_id: &RtmUserId,
    permissions: &Rtm2Permissions,
    expire: u32,
) -> Result<String, TokenError> {
    raw::rtm_token_with_permissions(issue, user_id.as_str(), permissions, expire)
}

/// `ChatTokenBuilder2.build_user_token`: Chat user privilege for `user_id` = `expire`.
pub fn chat_user_token(
    issue: &Issue<'_>,
    user_id: &RtmUserId,
    expire: u32,
) -> Result<String, TokenError> {
    raw::chat_user_token(issue, user_id.as_str(), expire)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{ChannelName, Uid};
    use crate::token::v007;

    #[test]
    fn typed_and_raw_builders_agree() {
        let app_id = AppId::parse("970CA35de60c44645bbae8a215061b33").unwrap();
        let certificate = AppCertificate::parse("5CFd2fd1755d40ecb72977518be15d3b").unwrap();
        let issue = Issue {
            app_id: &app_id,
            certificate: &certificate,
            issue_ts: 1_111_111,
            salt: 1,
        };
        let channel = ChannelName::parse("7d72365eb983485397e3e3f9d460bdda").unwrap();
        let who = RtcIdentity::Uid(Uid::new(2_882_341_273).unwrap());
        let typed = rtc_token(&issue, &channel, &who, Role::Subscriber, 600, 600).unwrap();
        let untyped = raw::rtc_token(
            &issue,
            channel.as_str(),
            "2882341273",
            Role::Subscriber,
            600,
            600,
        )
        .unwrap();
        assert_eq!(typed, untyped);
        let any = rtc_token(
            &issue,
            &channel,
            &RtcIdentity::AnyUid,
            Role::Publisher,
            600,
            0,
        )
        .unwrap();
        let parsed = v007::parse(&any).unwrap();
        assert_eq!(parsed.token.services[0].privileges.len(), 4);
        assert!(parsed.verify(&certificate));
    }
}
