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
//!
//! Each call is one `tracing` span, made in `begin` and ended in `finish`:
//! it continues the caller's W3C trace when the adapter found a
//! `traceparent` (`telemetry`), carries the request id (and the trace id
//! when tracing is on) so every log line of the call names them, and records
//! the decision and reason at the end. Authentication, the decision and the
//! build are its child spans. No span field ever holds a JWT, a certificate
//! or a token; a fingerprint at most.
//!
//! Authentication decides who the caller is: its transport identity first
//! (`forwarded`: its own mTLS certificate, or what a trusted proxy forwards),
//! then its JWT. A call with no JWT is refused as unauthenticated unless it
//! has a verified workload identity and some rule admits workloads without a
//! JWT (`authenticate = "mtls"`); then it is decided for that workload alone.
//!
//! The state a call runs on (the gate, the authenticator, the ext_authz
//! routes) is one [`Live`] snapshot behind an `ArcSwap`, loaded once in
//! `begin` and carried in the call's `Flow`: a config reload
//! (`server::reload`) swaps the whole snapshot in one store, so a call in
//! flight finishes on the state it started with, every later call sees the
//! new one, and no call ever sees a mix of the two.

use std::net::SocketAddr;
use std::sync::Arc;

use arc_swap::ArcSwap;

use tracing::Instrument as _;
use tracing::field::Empty;

use crate::domain::{PeerIdentity, Principal};
use crate::entropy;
use crate::facts::FactSources;
use crate::forwarded::{self, Direct, Forwarded, ForwardedError, TrustedProxies};
use crate::gate::Gate;
use crate::identity::{AuthError, Authenticator};
use crate::limits::{Admitted, Arrival, LimitSet, Limiter};
use crate::metrics::Metrics;
use crate::policy::{AuthenticatedBy, Caller, Peer};
use crate::routes::Routes;
use crate::telemetry;

mod audit;
mod check;
mod explain;
mod facts;
mod inspect;
mod issue;
mod limit;
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
    live: Arc<ArcSwap<Live>>,
    metrics: Option<Arc<Metrics>>,
    /// The rate limits' state and the count of calls in flight: one for
    /// the process, kept across reloads (the limits themselves are in `Live`).
    limiter: Arc<Limiter>,
}

/// The state the request path runs on, swapped as a whole by a reload.
#[derive(Debug)]
pub struct Live {
    /// The projects, their certificates and the compiled rules.
    pub gate: Arc<Gate>,
    /// The issuers and their key refreshers.
    pub authenticator: Arc<Authenticator>,
    /// The ext_authz routes, when enabled.
    pub routes: Option<Arc<Routes>>,
    /// `[server.trusted_proxy]`: the peers whose forwarded identity counts;
    /// `None` trusts no proxy.
    pub trusted_proxies: Option<Arc<TrustedProxies>>,
    /// The rate limits and the bound on calls in flight.
    pub limits: Arc<LimitSet>,
    /// The facts the rules read: their sources and caches.
    pub facts: Arc<FactSources>,
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
    /// A forward-auth HTTP check (nginx `auth_request`, Caddy
    /// `forward_auth`, Traefik ForwardAuth, Envoy's HTTP ext_authz).
    ForwardAuth,
}

/// What an adapter knows about a call besides its request.
#[derive(Debug, Clone, Copy)]
pub struct Call<'a> {
    /// The entry point.
    pub rpc: Rpc,
    /// The direct peer's address, if the transport knows it.
    pub peer: Option<SocketAddr>,
    /// The direct peer's verified client certificate identity (mTLS), if it sent one.
    pub peer_identity: Option<&'a PeerIdentity>,
    /// The `authorization` metadata, for the gRPC API (ext_authz reads the
    /// route's JWT header from the HTTP request instead).
    pub authorization: Credential<'a>,
    /// What the direct peer says about the caller (`x-forwarded-client-cert`,
    /// ext_authz's `attributes.source`): believed only from a trusted proxy.
    pub forwarded: Forwarded<'a>,
    /// The caller's W3C trace context, from the gRPC metadata.
    pub trace: TraceHeaders<'a>,
    /// What the server decided when the call arrived (`limits.max_in_flight`);
    /// `None` for a call that did not come through the server, which the
    /// pipeline counts itself.
    pub arrival: Option<&'a Arrival>,
}

/// The W3C trace context headers of a call, as the transport found them:
/// each is set only when it was sent exactly once.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TraceHeaders<'a> {
    /// `traceparent`: the caller's trace and span.
    pub traceparent: Option<&'a str>,
    /// `tracestate`: vendor data that travels with the trace.
    pub tracestate: Option<&'a str>,
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

/// The caller of one call as authentication established it.
#[derive(Debug)]
pub(super) struct Authenticated {
    /// The verified JWT's caller; `None` for a workload admitted without one.
    principal: Option<Arc<Principal>>,
    /// The transport identity the rules see.
    peer: Peer,
}

impl Authenticated {
    /// The caller as the rules see it.
    pub(super) fn caller(&self) -> Caller<'_> {
        Caller {
            principal: self.principal.as_deref(),
            peer: &self.peer,
        }
    }
}

/// The per-call state between `begin` and `finish`.
struct Flow {
    /// The snapshot this call runs on, from start to finish.
    live: Arc<Live>,
    started: entropy::Stopwatch,
    now: u64,
    event: AuditEvent,
    /// The call's span: the use case runs inside it, `finish` ends it.
    span: tracing::Span,
    /// Whether the bound on calls in flight was reached: the call is shed.
    shed: bool,
    /// The call's place under `limits.max_in_flight`, held to its end, when
    /// the pipeline counts the call itself (the server holds it otherwise).
    _place: Option<Admitted>,
}

impl std::fmt::Debug for Pipeline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let live = self.live.load();
        f.debug_struct("Pipeline")
            .field("gate", &live.gate)
            .field("routes", &live.routes.is_some())
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
            Rpc::ForwardAuth => "forward_auth",
        }
    }

    /// The fully qualified gRPC method, the name of the call's span.
    pub fn span_name(self) -> &'static str {
        match self {
            Rpc::IssueRtcToken => "tokengate.v1.TokenService/IssueRtcToken",
            Rpc::IssueRtmToken => "tokengate.v1.TokenService/IssueRtmToken",
            Rpc::IssueChatToken => "tokengate.v1.TokenService/IssueChatToken",
            Rpc::RenewToken => "tokengate.v1.TokenService/RenewToken",
            Rpc::InspectToken => "tokengate.v1.TokenService/InspectToken",
            Rpc::ExplainAccess => "tokengate.v1.TokenService/ExplainAccess",
            Rpc::ExtAuthz => "envoy.service.auth.v3.Authorization/Check",
            Rpc::ForwardAuth => "tokengate.forward_auth/Check",
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
            Rpc::ForwardAuth => "forward_auth",
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
        Self::over(Arc::new(ArcSwap::from_pointee(Live {
            gate,
            authenticator,
            routes,
            trusted_proxies: None,
            limits: Arc::new(LimitSet::unlimited()),
            facts: FactSources::none(),
        })))
    }

    /// A pipeline over the snapshot `live` holds at each call's start; the
    /// owner of `live` may swap in a new one at any time (a reload).
    pub fn over(live: Arc<ArcSwap<Live>>) -> Self {
        Self {
            live,
            metrics: None,
            limiter: Arc::new(Limiter::local_only()),
        }
    }

    /// The same pipeline, keeping the rate limits' state in `limiter`.
    pub fn with_limiter(mut self, limiter: Arc<Limiter>) -> Self {
        self.limiter = limiter;
        self
    }

    /// The same pipeline, counting every call and JWT verification into `metrics`.
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// Starts a call: the clock is read once, here, a request id drawn, and
    /// the call's span opened under the caller's trace, if `trace` names one.
    /// The live snapshot is loaded once, here, too.
    fn begin(&self, call: &Call<'_>, trace: TraceHeaders<'_>) -> Flow {
        // Owned rather than a guard: the call holds it across awaits.
        let live = self.live.load_full();
        let (shed, place) = match call.arrival {
            Some(Arrival::Admitted(_)) => (false, None),
            Some(Arrival::Shed) => (true, None),
            None => match self.limiter.enter(&live.limits) {
                Some(place) => (false, Some(place)),
                None => (true, None),
            },
        };
        let now = entropy::unix_now();
        let event = AuditEvent::new(call.rpc, entropy::request_id(), call.peer, now);
        let span = tracing::info_span!(
            "call",
            otel.name = call.rpc.span_name(),
            otel.kind = "server",
            otel.status_code = Empty,
            rpc = call.rpc.as_str(),
            request_id = %event.request_id,
            trace_id = Empty,
            decision = Empty,
            reason = Empty,
            rule = Empty,
        );
        if let Some(trace_id) =
            telemetry::continue_trace(&span, trace.traceparent, trace.tracestate)
        {
            span.record("trace_id", trace_id);
        }
        Flow {
            live,
            started: entropy::Stopwatch::start(),
            now,
            event,
            span,
            shed,
            _place: place,
        }
    }

    /// The caller's transport identity (see `forwarded`), recorded in the
    /// audit event. A trusted proxy's malformed forwarded identity is the
    /// caller's fault: INVALID_ARGUMENT naming the header or field.
    fn transport_identity(&self, flow: &mut Flow, call: &Call<'_>) -> Result<Peer, Refusal> {
        let direct = Direct {
            address: call.peer.map(|a| a.ip()),
            identity: call.peer_identity,
        };
        let resolved =
            forwarded::resolve(flow.live.trusted_proxies.as_deref(), direct, call.forwarded)
                .map_err(|error| match error {
                    ForwardedError::Malformed { field, reason } => Refusal::field(field, reason),
                    other => Refusal::Internal(other.to_string()),
                })?;
        flow.event.peer_identity = resolved
            .identity
            .as_ref()
            .and_then(PeerIdentity::audit_name)
            .map(str::to_owned);
        flow.event.peer_identity_source = resolved.source.map(forwarded::IdentitySource::as_str);
        Ok(Peer {
            address: resolved.address.map(|a| a.to_string()),
            workload: resolved.identity,
        })
    }

    /// Who the caller is: its transport identity, then its JWT (shared with
    /// the verified-JWT cache when it answered), both recorded in the audit
    /// event. Without a JWT, a verified workload is the caller when a rule
    /// admits workloads; anyone else is unauthenticated, as ever.
    async fn authenticate(
        &self,
        flow: &mut Flow,
        call: &Call<'_>,
        credential: Credential<'_>,
    ) -> Result<Authenticated, Refusal> {
        // Shedding happens here, at the first costly step of every use case
        // (an ext_authz pass-through route, which never authenticates, costs
        // a route match and is never shed): the call is refused before any
        // JWT is verified, with its audit event like any refusal.
        if flow.shed {
            return Err(Refusal::Overloaded {
                max_in_flight: flow.live.limits.max_in_flight(),
            });
        }
        let peer = self.transport_identity(flow, call)?;
        if credential == Credential::Absent
            && peer.workload.is_some()
            && flow.live.gate.admits_workloads()
        {
            flow.event.authenticated_by = Some(AuthenticatedBy::Mtls.as_str());
            return Ok(Authenticated {
                principal: None,
                peer,
            });
        }
        let principal = self.verify_jwt(flow, credential).await?;
        let by = match peer.workload {
            Some(_) => AuthenticatedBy::JwtAndMtls,
            None => AuthenticatedBy::Jwt,
        };
        flow.event.authenticated_by = Some(by.as_str());
        Ok(Authenticated {
            principal: Some(principal),
            peer,
        })
    }

    /// The caller's verified JWT, recorded in the audit event.
    async fn verify_jwt(
        &self,
        flow: &mut Flow,
        credential: Credential<'_>,
    ) -> Result<Arc<Principal>, Refusal> {
        let span = tracing::info_span!(
            "authenticate",
            issuer = Empty,
            outcome = Empty,
            cache = Empty
        );
        let header = match credential {
            Credential::Absent => None,
            Credential::One(value) => Some(value),
            Credential::Duplicated => {
                let error = AuthError::Malformed("more than one credential header");
                telemetry::record(&span, "outcome", error.reason());
                return Err(error.into());
            }
        };
        let timer = entropy::Stopwatch::start();
        let authentication = flow
            .live
            .authenticator
            .authenticate_call(header, flow.now)
            .instrument(span.clone())
            .await;
        let issuer = authentication.issuer.unwrap_or("none");
        let verified = authentication.result;
        let outcome = match &verified {
            Ok(_) => "ok",
            Err(error) => error.reason(),
        };
        if let Some(metrics) = &self.metrics {
            // A cache hit verified no signature: it is counted as a hit only,
            // so the verification counter and histogram stay about
            // verifications (see the README's "The verified-JWT cache").
            if authentication.cache.verified_in_full() {
                metrics.record_jwt(issuer, outcome, timer.elapsed_secs());
            }
            if let Some(result) = authentication.cache.label() {
                metrics.record_jwt_cache(issuer, result);
            }
        }
        // The issuer's configured name, never the token or its claims.
        telemetry::record(&span, "issuer", issuer);
        telemetry::record(&span, "outcome", outcome);
        if let Some(result) = authentication.cache.label() {
            telemetry::record(&span, "cache", result);
        }
        if let Err(error) = &verified {
            span.in_scope(|| tracing::debug!(reason = error.reason(), "authentication refused"));
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
        let span = std::mem::replace(&mut flow.span, tracing::Span::none());
        let _inside = span.enter();
        match &result {
            Ok(value) => value.describe(&mut flow.event),
            Err(refusal) => {
                if matches!(refusal, Refusal::Internal(_) | Refusal::Unavailable { .. }) {
                    telemetry::record(&span, "otel.status_code", "error");
                }
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
        telemetry::record(&span, "decision", flow.event.decision);
        if let Some(reason) = &flow.event.reason {
            telemetry::record(&span, "reason", reason.as_str());
        }
        if let Some(rule) = &flow.event.rule {
            telemetry::record(&span, "rule", rule.as_str());
        }
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
