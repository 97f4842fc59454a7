//! The one issuance pipeline: every request, from the gRPC API or from a
//! proxy, takes this typed path. It reads the clock (and, to build, the
//! salt), authenticates, asks the gate to decide and build, writes exactly one
//! audit event and returns one [`Outcome`]. Adapters (`grpc::service`,
//! `grpc::envoy_check`) only convert their wire request in and render the
//! outcome out with `render`; metrics, limits and spans hook in here, once.
//!
//! A wire request that does not convert still enters the pipeline (as
//! `Err(InvalidRequest)`), after authentication, so an unauthenticated caller
//! learns nothing about which requests would be valid and every refusal is
//! audited like any other.

use std::net::SocketAddr;
use std::sync::Arc;

use crate::domain::Principal;
use crate::entropy;
use crate::gate::Gate;
use crate::identity::{AuthError, Authenticator};
use crate::metrics::Metrics;
use crate::routes::Routes;

mod audit;
mod check;
mod explain;
mod inspect;
mod issue;
mod refusal;
mod renew;

pub use audit::{AUDIT_TARGET, AuditEvent, SCHEMA_VERSION};
pub use check::{Checked, HttpRequest};

pub use explain::Explanation;
pub use inspect::InspectRequest;
pub use refusal::{InvalidRequest, Refusal};
pub use renew::RenewRequest;

/// The use cases of the service over the identity, the rules and the projects.
pub struct Pipeline {
    gate: Arc<Gate>,
    authenticator: Arc<Authenticator>,
    routes: Option<Arc<Routes>>,
    metrics: Option<Arc<Metrics>>,
}

/// Which entry point a call came through; audit events name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Rpc {
    /// `TokenService/IssueRtcToken`.
    IssueRtcToken,
    /// `TokenService/IssueRtmToken`.
    IssueRtmToken,
    /// `TokenService/IssueChatToken`.
    IssueChatToken,
    /// `TokenService/RenewToken`.
    RenewToken,
    /// `TokenService/InspectToken`.
    InspectToken,
    /// `TokenService/ExplainAccess`.
    ExplainAccess,
    /// Envoy's `Authorization/Check`.
    ExtAuthz,
}

/// What an adapter knows about a call besides its request.
#[derive(Debug, Clone, Copy)]
pub struct Call<'a> {
    /// The entry point.
    pub rpc: Rpc,
    /// The direct peer's address, if the transport knows it.
    pub peer: Option<SocketAddr>,
    /// The `authorization` metadata, for the gRPC API (ext_authz reads the
    /// route's JWT header from the HTTP request instead).
    pub authorization: Credential<'a>,
}

/// The caller's credential header as the transport found it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Credential<'a> {
    /// No credential header.
    Absent,
    /// Exactly one, with this value.
    One(&'a str),
    /// More than one. Refused, because readers disagree about which one
    /// counts (a proxy may check the first and an upstream read the last).
    Duplicated,
}

/// The result of one call with the request id that ties its reply, its audit
/// event and its logs together.
#[derive(Debug)]
pub struct Outcome<T> {
    /// A random id, returned in every error and written in the audit event.
    pub request_id: String,
    /// What the call produced, or why it was refused.
    pub result: Result<T, Refusal>,
}

/// The per-call state between `begin` and `finish`.
struct Flow {
    started: entropy::Stopwatch,
    now: u64,
    event: AuditEvent,
}

impl std::fmt::Debug for Pipeline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pipeline")
            .field("gate", &self.gate)
            .field("routes", &self.routes.is_some())
            .finish_non_exhaustive()
    }
}

impl Rpc {
    /// The `action` label of the decision metrics.
    pub fn action(self) -> &'static str {
        match self {
            Rpc::IssueRtcToken => "rtc",
            Rpc::IssueRtmToken => "rtm",
            Rpc::IssueChatToken => "chat",
            Rpc::RenewToken => "renew",
            Rpc::InspectToken => "inspect",
            Rpc::ExplainAccess => "explain",
            Rpc::ExtAuthz => "ext_authz",
        }
    }

    /// The name in audit events and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Rpc::IssueRtcToken => "IssueRtcToken",
            Rpc::IssueRtmToken => "IssueRtmToken",
            Rpc::IssueChatToken => "IssueChatToken",
            Rpc::RenewToken => "RenewToken",
            Rpc::InspectToken => "InspectToken",
            Rpc::ExplainAccess => "ExplainAccess",
            Rpc::ExtAuthz => "ext_authz",
        }
    }
}

impl Pipeline {
    /// A pipeline over `gate`, authenticating with `authenticator`; `routes`
    /// when ext_authz is enabled.
    pub fn new(
        gate: Arc<Gate>,
        authenticator: Arc<Authenticator>,
        routes: Option<Arc<Routes>>,
    ) -> Self {
        Self {
            gate,
            authenticator,
            routes,
            metrics: None,
        }
    }

    /// The same pipeline, counting every call and JWT verification into `metrics`.
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// The ext_authz routes, when enabled.
    pub fn routes(&self) -> Option<&Routes> {
        self.routes.as_deref()
    }

    /// Starts a call: the clock is read once, here, and a request id drawn.
    fn begin(&self, call: &Call<'_>) -> Flow {
        let now = entropy::unix_now();
        Flow {
            started: entropy::Stopwatch::start(),
            now,
            event: AuditEvent::new(call.rpc, entropy::request_id(), call.peer, now),
        }
    }

    /// The caller's verified identity, recorded in the audit event.
    async fn authenticate(
        &self,
        flow: &mut Flow,
        credential: Credential<'_>,
    ) -> Result<Principal, Refusal> {
        let header = match credential {
            Credential::Absent => None,
            Credential::One(value) => Some(value),
            Credential::Duplicated => {
                return Err(AuthError::Malformed("more than one credential header").into());
            }
        };
        let timer = entropy::Stopwatch::start();
        let (issuer, verified) = self
            .authenticator
            .authenticate_named(header, flow.now)
            .await;
        if let Some(metrics) = &self.metrics {
            let outcome = match &verified {
                Ok(_) => "ok",
                Err(error) => error.reason(),
            };
            metrics.record_jwt(issuer.unwrap_or("none"), outcome, timer.elapsed_secs());
        }
        let principal = verified?;
        flow.event.caller(&principal);
        Ok(principal)
    }

    /// A salt for a token build, from the OS random source.
    fn salt() -> Result<u32, Refusal> {
        entropy::random_salt().map_err(|e| Refusal::Internal(e.to_string()))
    }

    /// Ends a call: logs a server bug with its request id, writes the one
    /// audit event, and hands the outcome to the adapter.
    fn finish<T: audit::Audited>(&self, mut flow: Flow, result: Result<T, Refusal>) -> Outcome<T> {
        match &result {
            Ok(value) => value.describe(&mut flow.event),
            Err(refusal) => {
                if let Refusal::Internal(detail) = refusal {
                    tracing::error!(
                        request_id = %flow.event.request_id,
                        rpc = flow.event.rpc,
                        error = %detail,
                        "internal error"
                    );
                }
                flow.event.refused(refusal);
            }
        }
        flow.event.latency_us = flow.started.elapsed_us();
        flow.event.emit();
        if let Some(metrics) = &self.metrics {
            metrics.record_call(&flow.event.metrics_record(&result));
        }
        Outcome {
            request_id: flow.event.request_id,
            result,
        }
    }
}
