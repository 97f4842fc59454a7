//! The use cases of the service, independent of the wire: issue, renew,
//! inspect and explain, one file each. The request pipeline calls these, so a
//! decision is made in exactly one way whatever the transport.
//!
//! `Gate` holds the compiled policy and the projects' certificates. It never
//! reads the clock or the random source: `now` and the salt are arguments,
//! supplied by the pipeline.

use std::collections::BTreeMap;
use std::fmt;

use crate::policy::{Action, Caller, Decision, Denial, FactQuery, Facts, Policy, Request};
use crate::token::inspect::privilege_expiries;
use crate::token::{AppCertificate, AppId, TokenError, v007};

mod explain;
mod inspect;
mod issue;
mod renew;

pub use crate::token::inspect::{
    Diagnosis, Expectation, InspectedService, Inspection, PrivilegeExpiry,
};
pub use issue::{Issued, bound_identity_text};
pub use renew::Lifetimes;

/// A failure to serve a use case that is not a policy decision.
#[derive(Debug, thiserror::Error)]
pub enum GateError {
    /// The rules refused.
    #[error("denied: {}", .0.reason.as_str())]
    Denied(Denial),
    /// The channel given with a renewal contradicts the token's own channel.
    #[error("the token is for another channel")]
    ChannelMismatch,
    /// The token the caller gave to renew or inspect is not usable; the message says why.
    #[error("{0}")]
    BadToken(String),
    /// A grant named a project that is not configured (a config bug: the policy checks names at load).
    #[error("project {0:?} is not configured")]
    UnknownProject(String),
    /// The request's action issues no token (`inspect`, `explain`): a caller bug, never the client's.
    #[error("action {0} issues no token")]
    NothingToIssue(Action),
    /// `now` does not fit AccessToken2's 32-bit `issue_ts` (after 2106).
    #[error("the clock ({0}) does not fit a 32-bit issue_ts")]
    ClockOutOfRange(u64),
    /// The token could not be built.
    #[error("token build failed: {0}")]
    Token(#[from] TokenError),
    /// An invariant of the service itself broke (a built token that does not
    /// read back, a grant with no builder): a server bug, never the caller's fault.
    #[error("server bug: {0}")]
    Bug(String),
}

/// One Agora project: its App ID and its named certificates.
pub struct Project {
    /// The name rules use.
    pub name: String,
    /// The App ID.
    pub app_id: AppId,
    /// The certificates by name, in config order; inspect verifies against all.
    pub certificates: Vec<(String, AppCertificate)>,
    /// The index into `certificates` of the one that signs new tokens.
    pub signer: usize,
}

/// The service's core: projects and the compiled policy.
pub struct Gate {
    projects: BTreeMap<String, Project>,
    policy: Policy,
}

impl fmt::Debug for Project {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Project")
            .field("name", &self.name)
            .field("app_id", &self.app_id.as_str())
            .field(
                "certificates",
                &self
                    .certificates
                    .iter()
                    .map(|(name, cert)| format!("{name}:{}", cert.fingerprint()))
                    .collect::<Vec<_>>(),
            )
            .field("signer", &self.signer)
            .finish()
    }
}

impl fmt::Debug for Gate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Gate")
            .field("projects", &self.projects.keys().collect::<Vec<_>>())
            .field("rules", &self.policy.len())
            .finish()
    }
}

impl Project {
    /// The certificate that signs new tokens.
    pub fn signing_certificate(&self) -> Option<&AppCertificate> {
        self.certificates.get(self.signer).map(|(_, cert)| cert)
    }

    /// The name of the first certificate that verifies `token`.
    fn verifying_certificate(&self, token: &v007::ParsedToken) -> Option<String> {
        let named: Vec<(&str, &AppCertificate)> = self
            .certificates
            .iter()
            .map(|(name, cert)| (name.as_str(), cert))
            .collect();
        token.verify_any(&named).map(str::to_owned)
    }
}

impl Gate {
    /// A gate over `projects` and `policy` (whose project names were checked against them).
    pub fn new(projects: Vec<Project>, policy: Policy) -> Self {
        Self {
            projects: projects.into_iter().map(|p| (p.name.clone(), p)).collect(),
            policy,
        }
    }

    /// The configured project names.
    pub fn project_names(&self) -> impl Iterator<Item = &str> {
        self.projects.keys().map(String::as_str)
    }

    /// Whether some rule admits a verified workload without a JWT
    /// (`authenticate = "mtls"`); see [`Policy::admits_workloads`].
    pub fn admits_workloads(&self) -> bool {
        self.policy.admits_workloads()
    }

    /// Whether some rule reads a fact; see [`Policy::reads_facts`].
    pub fn reads_facts(&self) -> bool {
        self.policy.reads_facts()
    }

    /// The facts deciding `request` may read; see [`Policy::facts_needed`].
    pub fn facts_needed(&self, caller: Caller<'_>, request: &Request) -> Vec<FactQuery> {
        self.policy.facts_needed(caller, request)
    }

    /// Checks that `caller` may use `action` (inspect or explain), which
    /// issue nothing, with the `facts` fetched for it.
    pub fn authorize(
        &self,
        caller: Caller<'_>,
        action: Action,
        now: u64,
        facts: &Facts,
    ) -> Result<(), GateError> {
        match self
            .policy
            .evaluate_with_facts(caller, &Request::new(action), now, facts)
        {
            Decision::Allow(_) | Decision::Permit(_) => Ok(()),
            Decision::Deny(denial) => Err(GateError::Denied(denial)),
        }
    }
}
