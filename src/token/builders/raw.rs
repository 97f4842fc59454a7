//! The official builder APIs over plain strings (spec §2.6), with no product limits.
//!
//! These reproduce Agora's builders exactly, including inputs the typed API in
//! [`super`] refuses (empty accounts, 300-byte user ids, relative expiries of a
//! week): the conformance vectors contain such inputs, and a parsed token may
//! too. `uid` arguments are the wire string: use [`uid_string`] for a number.
//! Every expiry is seconds from `issue_ts`; privilege value 0 means "no
//! privilege-specific limit".

use md5::{Digest as _, Md5};

use super::{Issue, RtcPrivileges};
use crate::domain::Role;
use crate::token::TokenError;
use crate::token::services::{Rtm2Permissions, Service, ServiceKind};
use crate::token::v007::{self, AccessToken2};

/// RTC privilege: join the channel.
pub const RTC_JOIN_CHANNEL: u16 = 1;
/// RTC privilege: publish audio.
pub const RTC_PUBLISH_AUDIO: u16 = 2;
/// RTC privilege: publish video.
pub const RTC_PUBLISH_VIDEO: u16 = 3;
/// RTC privilege: publish data streams.
pub const RTC_PUBLISH_DATA: u16 = 4;
/// RTM, RTM2 and FPA privilege: log in.
pub const LOGIN: u16 = 1;
/// Chat privilege: user token.
pub const CHAT_USER: u16 = 1;
/// Chat privilege: app token.
pub const CHAT_APP: u16 = 2;
/// APaaS privilege: room user.
pub const APAAS_ROOM_USER: u16 = 1;
/// APaaS privilege: user.
pub const APAAS_USER: u16 = 2;
/// APaaS privilege: app.
pub const APAAS_APP: u16 = 3;

/// The APaaS role written by user and app tokens.
const APAAS_NO_ROLE: i16 = -1;
/// The FPA token lifetime, fixed by the official builder.
const FPA_EXPIRE: u32 = 86_400;

/// The wire string of a numeric uid: 0 (any uid) is "", others their decimal text.
pub fn uid_string(uid: u32) -> String {
    if uid == 0 {
        String::new()
    } else {
        uid.to_string()
    }
}

/// `build_token_with_uid` / `build_token_with_user_account`: join =
/// `privilege_expire`, and a publisher also gets the three publish privileges.
pub fn rtc_token(
    issue: &Issue<'_>,
    channel_name: &str,
    uid: &str,
    role: Role,
    token_expire: u32,
    privilege_expire: u32,
) -> Result<String, TokenError> {
    let rtc = rtc_service(
        channel_name,
        uid,
        role,
        RtcPrivileges::all(privilege_expire),
    );
    issue.sign(token_expire, vec![rtc])
}

/// `build_token_with_uid_and_privilege` / `..._user_account_and_privilege`: all
/// four privileges, each with its own expiry, no role.
pub fn rtc_token_with_privileges(
    issue: &Issue<'_>,
    channel_name: &str,
    uid: &str,
    token_expire: u32,
    privileges: RtcPrivileges,
) -> Result<String, TokenError> {
    let rtc = rtc_service(channel_name, uid, Role::Publisher, privileges);
    issue.sign(token_expire, vec![rtc])
}

/// `build_token_with_rtm`: RTC as [`rtc_token`] for `account`, plus RTM with
/// the same account as user id and login = `token_expire`.
pub fn rtc_token_with_rtm(
    issue: &Issue<'_>,
    channel_name: &str,
    account: &str,
    role: Role,
    token_expire: u32,
    privilege_expire: u32,
) -> Result<String, TokenError> {
    let rtc = rtc_service(
        channel_name,
        account,
        role,
        RtcPrivileges::all(privilege_expire),
    );
    let rtm = rtm_service(account, token_expire);
    issue.sign(token_expire, vec![rtc, rtm])
}

/// `build_token_with_rtm2`: RTC (join; publish privileges only for a
/// publisher) plus RTM(`rtm_user_id`) with login = `rtm_token_expire`.
#[allow(clippy::too_many_arguments)] // mirrors the official BuildTokenWithRtm2 one to one
pub fn rtc_token_with_rtm2(
    issue: &Issue<'_>,
    channel_name: &str,
    rtc_account: &str,
    role: Role,
    token_expire: u32,
    privileges: RtcPrivileges,
    rtm_user_id: &str,
    rtm_token_expire: u32,
) -> Result<String, TokenError> {
    let services = rtc_rtm_services(
        channel_name,
        rtc_account,
        role,
        privileges,
        rtm_user_id,
        rtm_token_expire,
    );
    issue.sign(token_expire, services)
}

/// npm `ConvoAITokenBuilder.buildToken`: [`rtc_token_with_rtm2`] plus a ConvoAI (9) service with no privileges.
#[allow(clippy::too_many_arguments)] // mirrors the official builder one to one
pub fn convoai_token(
    issue: &Issue<'_>,
    channel_name: &str,
    rtc_account: &str,
    role: Role,
    token_expire: u32,
    privileges: RtcPrivileges,
    rtm_user_id: &str,
    rtm_token_expire: u32,
) -> Result<String, TokenError> {
    let mut services = rtc_rtm_services(
        channel_name,
        rtc_account,
        role,
        privileges,
        rtm_user_id,
        rtm_token_expire,
    );
    services.push(Service::new(ServiceKind::ConvoAi));
    issue.sign(token_expire, services)
}

/// npm `SttTokenBuilder.buildToken`: [`rtc_token_with_rtm2`] plus an STT (10) service with no privileges.
#[allow(clippy::too_many_arguments)] // mirrors the official builder one to one
pub fn stt_token(
    issue: &Issue<'_>,
    channel_name: &str,
    rtc_account: &str,
    role: Role,
    token_expire: u32,
    privileges: RtcPrivileges,
    rtm_user_id: &str,
    rtm_token_expire: u32,
) -> Result<String, TokenError> {
    let mut services = rtc_rtm_services(
        channel_name,
        rtc_account,
        role,
        privileges,
        rtm_user_id,
        rtm_token_expire,
    );
    services.push(Service::new(ServiceKind::Stt));
    issue.sign(token_expire, services)
}

/// `RtmTokenBuilder2.build_token`: RTM(`user_id`), login = `expire`.
pub fn rtm_token(issue: &Issue<'_>, user_id: &str, expire: u32) -> Result<String, TokenError> {
    issue.sign(expire, vec![rtm_service(user_id, expire)])
}

/// `RtmTokenBuilder2.build_token_with_permissions`: RTM2(`user_id`, `permissions`), login = `expire`.
pub fn rtm_token_with_permissions(
    issue: &Issue<'_>,
    user_id: &str,
    permissions: &Rtm2Permissions,
    expire: u32,
) -> Result<String, TokenError> {
    let rtm2 = Service::new(ServiceKind::Rtm2 {
        user_id: user_id.as_bytes().to_vec(),
        permissions: permissions.clone(),
    })
    .with_privilege(LOGIN, expire);
    issue.sign(expire, vec![rtm2])
}

/// `ChatTokenBuilder2.build_user_token`: Chat(`user_id`), user = `expire`.
pub fn chat_user_token(
    issue: &Issue<'_>,
    user_id: &str,
    expire: u32,
) -> Result<String, TokenError> {
    issue.sign(expire, vec![chat_service(user_id, CHAT_USER, expire)])
}

/// `ChatTokenBuilder2.build_app_token`: Chat(""), app = `expire`.
pub fn chat_app_token(issue: &Issue<'_>, expire: u32) -> Result<String, TokenError> {
    issue.sign(expire, vec![chat_service("", CHAT_APP, expire)])
}

/// `FpaTokenBuilder.build_token`: a 24-hour token with FPA login = 0.
pub fn fpa_token(issue: &Issue<'_>) -> Result<String, TokenError> {
    let fpa = Service::new(ServiceKind::Fpa).with_privilege(LOGIN, 0);
    issue.sign(FPA_EXPIRE, vec![fpa])
}

/// `ApaasTokenBuilder.build_room_user_token` (Education is identical): APaaS
/// roomUser, RTM(`user_uuid`) and Chat(lowercase hex MD5 of `user_uuid`), all = `expire`.
pub fn apaas_room_user_token(
    issue: &Issue<'_>,
    room_uuid: &str,
    user_uuid: &str,
    role: i16,
    expire: u32,
) -> Result<String, TokenError> {
    let chat_user_id = hex::encode(Md5::digest(user_uuid.as_bytes()));
    let services = vec![
        apaas_service(room_uuid, user_uuid, role, APAAS_ROOM_USER, expire),
        rtm_service(user_uuid, expire),
        chat_service(&chat_user_id, CHAT_USER, expire),
    ];
    issue.sign(expire, services)
}

/// `ApaasTokenBuilder.build_user_token`: APaaS("", `user_uuid`, -1), user = `expire`.
pub fn apaas_user_token(
    issue: &Issue<'_>,
    user_uuid: &str,
    expire: u32,
) -> Result<String, TokenError> {
    let apaas = apaas_service("", user_uuid, APAAS_NO_ROLE, APAAS_USER, expire);
    issue.sign(expire, vec![apaas])
}

/// `ApaasTokenBuilder.build_app_token`: APaaS("", "", -1), app = `expire`.
pub fn apaas_app_token(issue: &Issue<'_>, expire: u32) -> Result<String, TokenError> {
    let apaas = apaas_service("", "", APAAS_NO_ROLE, APAAS_APP, expire);
    issue.sign(expire, vec![apaas])
}

pub use apaas_app_token as education_app_token;
pub use apaas_room_user_token as education_room_user_token;
pub use apaas_user_token as education_user_token;

impl Issue<'_> {
    /// Builds an AccessToken2 with these services and the header `expire`.
    pub fn sign(&self, expire: u32, services: Vec<Service>) -> Result<String, TokenError> {
        let token = AccessToken2 {
            app_id: self.app_id.as_str().as_bytes().to_vec(),
            issue_ts: self.issue_ts,
            expire,
            salt: self.salt,
            services,
        };
        v007::build(&token, self.certificate)
    }
}

/// RTC with join, and for a publisher the three publish privileges.
fn rtc_service(channel_name: &str, uid: &str, role: Role, p: RtcPrivileges) -> Service {
    let rtc = Service::new(ServiceKind::Rtc {
        channel_name: channel_name.as_bytes().to_vec(),
        uid: uid.as_bytes().to_vec(),
    })
    .with_privilege(RTC_JOIN_CHANNEL, p.join);
    match role {
        Role::Subscriber => rtc,
        Role::Publisher => rtc
            .with_privilege(RTC_PUBLISH_AUDIO, p.publish_audio)
            .with_privilege(RTC_PUBLISH_VIDEO, p.publish_video)
            .with_privilege(RTC_PUBLISH_DATA, p.publish_data),
    }
}

fn rtc_rtm_services(
    channel_name: &str,
    rtc_account: &str,
    role: Role,
    privileges: RtcPrivileges,
    rtm_user_id: &str,
    rtm_token_expire: u32,
) -> Vec<Service> {
    vec![
        rtc_service(channel_name, rtc_account, role, privileges),
        rtm_service(rtm_user_id, rtm_token_expire),
    ]
}

fn rtm_service(user_id: &str, expire: u32) -> Service {
    Service::new(ServiceKind::Rtm {
        user_id: user_id.as_bytes().to_vec(),
    })
    .with_privilege(LOGIN, expire)
}

fn chat_service(user_id: &str, privilege: u16, expire: u32) -> Service {
    Service::new(ServiceKind::Chat {
        user_id: user_id.as_bytes().to_vec(),
    })
    .with_privilege(privilege, expire)
}

fn apaas_service(
    room_uuid: &str,
    user_uuid: &str,
    role: i16,
    privilege: u16,
    expire: u32,
) -> Service {
    Service::new(ServiceKind::Apaas {
        room_uuid: room_uuid.as_bytes().to_vec(),
        user_uuid: user_uuid.as_bytes().to_vec(),
        role,
    })
    .with_privilege(privilege, expire)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uid_zero_is_the_empty_wildcard() {
        assert_eq!(uid_string(0), "");
        assert_eq!(uid_string(7), "7");
        assert_eq!(uid_string(u32::MAX), "4294967295");
    }
}
