//! Issuing: decide a request, then build the token its grant describes with
//! the typed official builder of the grant's kind, and read the privileges back.

use super::{Gate, GateError, PrivilegeExpiry, privilege_expiries};
use crate::domain::{Fingerprint, Role, RtcIdentity};
use crate::policy::{self, BoundIdentity, Caller, Decision, Facts, Grant, Request};
use crate::token::builders::{self, Issue, RtcPrivileges};
use crate::token::services::Rtm2Permissions;
use crate::token::{TokenError, v007};

/// A token that was issued, with everything the reply reports.
#[derive(Debug, Clone)]
pub struct Issued {
    /// The token string. Never logged.
    pub token: String,
    /// The App ID it is for.
    pub app_id: String,
    /// The project that signed it.
    pub project: String,
    /// The grant it was built from.
    pub grant: Grant,
    /// `issue_ts`, unix seconds.
    pub issued_at: u64,
    /// When the whole token expires, unix seconds.
    pub expires_at: u64,
    /// Every privilege, read back from the built token.
    pub privileges: Vec<PrivilegeExpiry>,
    /// When a client should renew.
    pub renew_after: u64,
    /// The token's fingerprint.
    pub fingerprint: Fingerprint,
    /// The names of the Agora services in the token, read back from it.
    pub services: Vec<&'static str>,
}

impl Issued {
    /// The rule that granted the token.
    pub fn rule(&self) -> &str {
        self.grant.rule()
    }

    /// The identity the token binds, as text for replies and logs.
    pub fn identity_text(&self) -> String {
        bound_identity_text(&self.grant.identity())
    }

    /// The RTC role, for tokens with an RTC service.
    pub fn role(&self) -> Option<crate::domain::Role> {
        match &self.grant {
            Grant::Rtc(_) => Some(self.grant.role()),
            _ => None,
        }
    }

    /// The names of the Agora services in the token (`rtc`, `rtm`, ...).
    pub fn services(&self) -> &[&'static str] {
        &self.services
    }
}

impl Gate {
    /// Decides `request` for `caller` at `now` and, if allowed, builds the token with `salt`.
    pub fn issue(
        &self,
        caller: Caller<'_>,
        request: &Request,
        now: u64,
        salt: u32,
    ) -> Result<Issued, GateError> {
        self.build(self.decide(caller, request, now, &Facts::none())?, salt)
    }

    /// The first half of [`Gate::issue`]: the grant the rules give
    /// `caller` for `request` at `now`, or why there is none. (The
    /// pipeline calls the halves one by one, so each has its own span.)
    /// `facts` are those fetched for the call ([`Gate::facts_needed`]).
    pub fn decide(
        &self,
        caller: Caller<'_>,
        request: &Request,
        now: u64,
        facts: &Facts,
    ) -> Result<Grant, GateError> {
        match self.policy.evaluate_with_facts(caller, request, now, facts) {
            Decision::Allow(grant) => Ok(grant),
            Decision::Permit(permit) => Err(GateError::NothingToIssue(permit.action)),
            Decision::Deny(denial) => Err(GateError::Denied(denial)),
        }
    }

    /// The second half of [`Gate::issue`]: builds the token a grant
    /// describes, signed by the grant's project.
    pub fn build(&self, grant: Grant, salt: u32) -> Result<Issued, GateError> {
        let unknown = || GateError::UnknownProject(grant.project().to_owned());
        let project = self.projects.get(grant.project()).ok_or_else(unknown)?;
        let certificate = project.signing_certificate().ok_or_else(unknown)?;
        let issued_at = grant.terms().issued_at;
        let issue_ts =
            u32::try_from(issued_at).map_err(|_| GateError::ClockOutOfRange(issued_at))?;
        let issue = Issue {
            app_id: &project.app_id,
            certificate,
            issue_ts,
            salt,
        };
        let token = build_token(&issue, &grant)?;
        // The reply reports what is in the token, read back from it, so the
        // two can never disagree.
        let parsed = v007::parse(&token)
            .map_err(|e| GateError::Bug(format!("built token does not parse: {e}")))?;
        let privileges: Vec<PrivilegeExpiry> = parsed
            .token
            .services
            .iter()
            .flat_map(|s| privilege_expiries(s.kind.service_type(), &s.privileges, issue_ts))
            .collect();
        let expires_at = grant.expires_at();
        let earliest = privileges
            .iter()
            .filter_map(|p| p.expires_at)
            .fold(expires_at, u64::min);
        let services = parsed
            .token
            .services
            .iter()
            .map(|s| s.kind.name())
            .collect();
        Ok(Issued {
            services,
            fingerprint: Fingerprint::of(token.as_bytes()),
            token,
            app_id: project.app_id.as_str().to_owned(),
            project: project.name.clone(),
            privileges,
            issued_at,
            expires_at,
            renew_after: renew_after(issued_at, earliest),
            grant,
        })
    }
}

/// Builds the token for `grant` with the typed official builder of its kind.
pub(super) fn build_token(issue: &Issue<'_>, grant: &Grant) -> Result<String, TokenError> {
    let token_expire = grant.terms().token_lifetime.secs();
    let join = grant.terms().join_lifetime.secs();
    match grant {
        Grant::Rtc(rtc) => {
            let publish = rtc.publish_lifetime.map_or(0, |l| l.secs());
            let privileges = RtcPrivileges {
                join,
                publish_audio: publish,
                publish_video: publish,
                publish_data: publish,
            };
            match (&rtc.rtm_user_id, rtc.role()) {
                (Some(user), role) => builders::rtc_token_with_rtm2(
                    issue,
                    &rtc.channel,
                    &rtc.identity,
                    role,
                    token_expire,
                    privileges,
                    user,
                    join,
                ),
                (None, Role::Publisher) => builders::rtc_token_with_privileges(
                    issue,
                    &rtc.channel,
                    &rtc.identity,
                    token_expire,
                    privileges,
                ),
                (None, Role::Subscriber) => builders::rtc_token(
                    issue,
                    &rtc.channel,
                    &rtc.identity,
                    Role::Subscriber,
                    token_expire,
                    join,
                ),
            }
        }
        Grant::Rtm(rtm) if rtm.permissions.is_empty() => {
            builders::rtm_token(issue, &rtm.user, join)
        }
        Grant::Rtm(rtm) => builders::rtm_token_with_permissions(
            issue,
            &rtm.user,
            &rtm2_permissions(&rtm.permissions),
            join,
        ),
        Grant::Chat(chat) => match &chat.user {
            Some(user) => builders::chat_user_token(issue, user, join),
            None => builders::chat_app_token(issue, join),
        },
        Grant::Fpa(_) => builders::fpa_token(issue),
    }
}

/// The token's permission block for the grant's permission sets, in rule order.
fn rtm2_permissions(sets: &[policy::Rtm2Permission]) -> Rtm2Permissions {
    let mut permissions = Rtm2Permissions::new();
    for set in sets {
        permissions.add(
            set.resource_type,
            set.access,
            set.resources.iter().map(String::as_str),
        );
    }
    permissions
}

/// Suggests renewing at four fifths of the way to the earliest expiry, so a
/// client always holds a valid token and the renewal has time to retry.
fn renew_after(issued_at: u64, earliest_expiry: u64) -> u64 {
    let lifetime = earliest_expiry.saturating_sub(issued_at);
    issued_at + lifetime * 4 / 5
}

/// The identity a grant bound, for replies and logs.
pub fn bound_identity_text(identity: &BoundIdentity) -> String {
    match identity {
        BoundIdentity::Rtc(RtcIdentity::Uid(uid)) => uid.to_string(),
        BoundIdentity::Rtc(RtcIdentity::Account(account)) => account.to_string(),
        BoundIdentity::Rtc(RtcIdentity::AnyUid) => "0".into(),
        BoundIdentity::User(user) => user.to_string(),
        BoundIdentity::App => "(app)".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{
        Account, ChannelName, ChannelScope, Lifetime, Principal, Rtm2PermissionType,
        Rtm2ResourceType, RtmUserId, Uid,
    };
    use crate::gate::Project;
    use crate::policy::{
        Action, ChatGrant, FpaGrant, Policy, RtcGrant, Rtm2Permission, RtmGrant, Terms,
    };
    use crate::token::builders::raw;
    use crate::token::services::{PermissionType, ResourceType};
    use crate::token::{AppCertificate, AppId};

    const ISSUE_TS: u32 = 1_700_000_000;
    const SALT: u32 = 12_345_678;
    const TOKEN: u32 = 3600;
    const JOIN: u32 = 1800;
    const PUBLISH: u32 = 900;

    fn app_id() -> AppId {
        AppId::parse("970CA35de60c44645bbae8a215061b33").unwrap()
    }

    fn certificate() -> AppCertificate {
        AppCertificate::parse("5CFd2fd1755d40ecb72977518be15d3b").unwrap()
    }

    fn terms() -> Terms {
        Terms {
            rule: "r".into(),
            project: "main".into(),
            issued_at: u64::from(ISSUE_TS),
            token_lifetime: Lifetime::from_secs(u64::from(TOKEN)).unwrap(),
            join_lifetime: Lifetime::from_secs(u64::from(JOIN)).unwrap(),
            clamped: false,
        }
    }

    fn rtc(
        channel: ChannelScope,
        identity: RtcIdentity,
        publish: Option<u32>,
        rtm: Option<&str>,
    ) -> Grant {
        Grant::Rtc(RtcGrant {
            terms: terms(),
            channel,
            identity,
            publish_lifetime: publish.map(|s| Lifetime::from_secs(u64::from(s)).unwrap()),
            rtm_user_id: rtm.map(|u| RtmUserId::parse(u).unwrap()),
        })
    }

    fn room() -> ChannelScope {
        ChannelScope::Named(ChannelName::parse("room-1").unwrap())
    }

    fn uid() -> RtcIdentity {
        RtcIdentity::Uid(Uid::new(2_882_341_273).unwrap())
    }

    fn user(id: &str) -> RtmUserId {
        RtmUserId::parse(id).unwrap()
    }

    /// Every kind of grant, built on the service path (typed builders) and
    /// with the raw builders as the service built it before grants were typed:
    /// the tokens are byte for byte the same.
    #[test]
    fn the_typed_build_path_matches_the_raw_builders_for_every_kind() {
        let (app_id, certificate) = (app_id(), certificate());
        let issue = Issue {
            app_id: &app_id,
            certificate: &certificate,
            issue_ts: ISSUE_TS,
            salt: SALT,
        };
        let publisher = RtcPrivileges::all(PUBLISH);
        let publisher = RtcPrivileges {
            join: JOIN,
            ..publisher
        };
        let subscriber = RtcPrivileges {
            join: JOIN,
            ..RtcPrivileges::default()
        };
        let mut permissions = Rtm2Permissions::new();
        permissions.add(
            ResourceType::MessageChannels,
            PermissionType::Read,
            ["team-*"],
        );
        permissions.add(ResourceType::Users, PermissionType::Write, ["bob", "carol"]);
        let sets = vec![
            Rtm2Permission {
                resource_type: Rtm2ResourceType::MessageChannels,
                access: Rtm2PermissionType::Read,
                resources: vec!["team-*".into()],
            },
            Rtm2Permission {
                resource_type: Rtm2ResourceType::Users,
                access: Rtm2PermissionType::Write,
                resources: vec!["bob".into(), "carol".into()],
            },
        ];
        let account = RtcIdentity::Account(Account::parse("alice").unwrap());
        let cases: Vec<(&str, Grant, String)> = vec![
            (
                "rtc subscriber",
                rtc(room(), uid(), None, None),
                raw::rtc_token(
                    &issue,
                    "room-1",
                    "2882341273",
                    Role::Subscriber,
                    TOKEN,
                    JOIN,
                )
                .unwrap(),
            ),
            (
                "rtc subscriber, account, wildcard channel",
                rtc(ChannelScope::Wildcard, account, None, None),
                raw::rtc_token(&issue, "*", "alice", Role::Subscriber, TOKEN, JOIN).unwrap(),
            ),
            (
                "rtc publisher, any uid",
                rtc(room(), RtcIdentity::AnyUid, Some(PUBLISH), None),
                raw::rtc_token_with_privileges(&issue, "room-1", "", TOKEN, publisher).unwrap(),
            ),
            (
                "rtc publisher with rtm2",
                rtc(room(), uid(), Some(PUBLISH), Some("2882341273")),
                raw::rtc_token_with_rtm2(
                    &issue,
                    "room-1",
                    "2882341273",
                    Role::Publisher,
                    TOKEN,
                    publisher,
                    "2882341273",
                    JOIN,
                )
                .unwrap(),
            ),
            (
                "rtc subscriber with rtm2",
                rtc(room(), uid(), None, Some("2882341273")),
                raw::rtc_token_with_rtm2(
                    &issue,
                    "room-1",
                    "2882341273",
                    Role::Subscriber,
                    TOKEN,
                    subscriber,
                    "2882341273",
                    JOIN,
                )
                .unwrap(),
            ),
            (
                "rtm login",
                Grant::Rtm(RtmGrant {
                    terms: terms(),
                    channel: None,
                    user: user("bob"),
                    permissions: Vec::new(),
                }),
                raw::rtm_token(&issue, "bob", JOIN).unwrap(),
            ),
            (
                "rtm with permissions",
                Grant::Rtm(RtmGrant {
                    terms: terms(),
                    channel: Some(room()),
                    user: user("bob"),
                    permissions: sets,
                }),
                raw::rtm_token_with_permissions(&issue, "bob", &permissions, JOIN).unwrap(),
            ),
            (
                "chat user",
                Grant::Chat(ChatGrant {
                    terms: terms(),
                    channel: None,
                    user: Some(user("bob")),
                }),
                raw::chat_user_token(&issue, "bob", JOIN).unwrap(),
            ),
            (
                "chat app",
                Grant::Chat(ChatGrant {
                    terms: terms(),
                    channel: None,
                    user: None,
                }),
                raw::chat_app_token(&issue, JOIN).unwrap(),
            ),
            (
                "fpa",
                Grant::Fpa(FpaGrant { terms: terms() }),
                raw::fpa_token(&issue).unwrap(),
            ),
        ];
        for (name, grant, expected) in cases {
            assert_eq!(build_token(&issue, &grant).unwrap(), expected, "{name}");
        }
    }

    #[test]
    fn an_action_that_issues_nothing_is_a_server_bug_not_a_token() {
        let (policy, _) = Policy::from_toml(
            "[[rules]]\nname = \"debug\"\nactions = [\"inspect\"]\n",
            &["main"],
        )
        .unwrap();
        let project = Project {
            name: "main".into(),
            app_id: app_id(),
            certificates: vec![("primary".into(), certificate())],
            signer: 0,
        };
        let gate = Gate::new(vec![project], policy);
        let principal = Principal {
            issuer: "https://idp.example".into(),
            subject: "eve".into(),
            audiences: vec![],
            scopes: vec![],
            claims: Default::default(),
            expires_at: u64::from(ISSUE_TS) + 600,
            token_fingerprint: Fingerprint::of(b"jwt"),
        };
        let inspect = Request::new(Action::Inspect);
        let result = gate.issue(Caller::jwt(&principal), &inspect, u64::from(ISSUE_TS), SALT);
        assert!(
            matches!(result, Err(GateError::NothingToIssue(Action::Inspect))),
            "{result:?}"
        );
        assert!(
            gate.authorize(
                Caller::jwt(&principal),
                Action::Inspect,
                u64::from(ISSUE_TS),
                &Facts::none()
            )
            .is_ok()
        );
    }
}
