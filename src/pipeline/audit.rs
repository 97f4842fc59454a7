//! The audit event: exactly one per call, written by the pipeline (never by
//! an adapter) to the log target [`AUDIT_TARGET`], with a fixed schema.
//!
//! Every field of the schema is declared in every event; a field that does
//! not apply is left unrecorded, and the JSON log writer renders it as `null`
//! (cli/logging.rs), so a collector sees the same keys on every line. The
//! schema is documented in the README ("Audit events"); changing a field's
//! meaning means bumping [`SCHEMA_VERSION`]. Secrets never appear: the JWT and
//! the token are fingerprints.

use std::net::SocketAddr;

use super::{Refusal, Rpc};
use crate::domain::{Fingerprint, Principal};
use crate::gate::Issued;
use crate::metrics::CallRecord;

/// The tracing target of audit events, so operators can route them.
pub const AUDIT_TARGET: &str = "audit";
/// The audit schema's version, the `schema` field of every event. Version 2
/// added `authenticated_by` and `peer_identity_source`, and made
/// `peer_identity` the caller's workload identity (a trusted proxy's
/// forwarded one, not the proxy's own; none for an ext_authz `Check`
/// unless Envoy is a trusted proxy). Version 3 added `limits` and the
/// decisions `limited` and `shed`. Version 4 added `facts`.
pub const SCHEMA_VERSION: u64 = 4;

/// One call's audit record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEvent {
    /// When the call started, unix seconds (the `now` the decision used).
    pub time: u64,
    /// The request id, also returned to the caller.
    pub request_id: String,
    /// The entry point (`IssueRtcToken`, ..., or `ext_authz`).
    pub rpc: &'static str,
    /// The direct peer.
    pub peer: Option<SocketAddr>,
    /// The caller's verified workload identity (see `peer_identity_source`):
    /// its SPIFFE ID, else its subject, else its first DNS name.
    pub peer_identity: Option<String>,
    /// Where `peer_identity` came from: `tls` (the caller's own mTLS
    /// connection), `xfcc` (a trusted proxy's `x-forwarded-client-cert`)
    /// or `ext_authz` (a trusted Envoy's `attributes.source`).
    pub peer_identity_source: Option<&'static str>,
    /// How the caller authenticated: `jwt`, `mtls` (a workload, no JWT) or `jwt+mtls`.
    pub authenticated_by: Option<&'static str>,
    /// The verified caller's `iss`.
    pub caller_issuer: Option<String>,
    /// The verified caller's `sub`.
    pub caller: Option<String>,
    /// The caller's JWT fingerprint.
    pub jwt: Option<Fingerprint>,
    /// `allow`, `pass_through`, `deny`, `unauthenticated`, `invalid`,
    /// `limited`, `shed`, `unavailable` or `error`.
    pub decision: &'static str,
    /// The stable reason of a refusal.
    pub reason: Option<String>,
    /// The rule that decided.
    pub rule: Option<String>,
    /// The project that signed the token.
    pub project: Option<String>,
    /// The requested channel (`*` for the wildcard).
    pub channel: Option<String>,
    /// The identity the token binds (uid, account or user id).
    pub identity: Option<String>,
    /// The RTC role.
    pub role: Option<String>,
    /// The Agora services in the token, comma-separated (`rtc,rtm`).
    pub services: Option<String>,
    /// When the token expires, unix seconds.
    pub expires_at: Option<u64>,
    /// The issued (or inspected) token's fingerprint.
    pub token: Option<Fingerprint>,
    /// The ext_authz route template that matched.
    pub route: Option<String>,
    /// The rate limits a `limited` call is over, comma-separated.
    pub limits: Option<String>,
    /// The facts the rules asked, each `name:result` (hit, error_hit,
    /// fetched, error, timeout), comma-separated; never their values.
    pub facts: Option<String>,
    /// Time spent in the pipeline, microseconds.
    pub latency_us: u64,
    /// The entry point, for the metrics' `action` label.
    pub(super) call: Rpc,
    /// The services of an issued token, as the metrics count them.
    pub(super) issued_services: Vec<&'static str>,
}

/// A use case's result that knows what to record about itself.
pub(super) trait Audited {
    /// Fills the event's fields for a successful call.
    fn describe(&self, event: &mut AuditEvent);
}

impl AuditEvent {
    /// An event for a call that has just started.
    pub(super) fn new(rpc: Rpc, request_id: String, peer: Option<SocketAddr>, now: u64) -> Self {
        Self {
            time: now,
            request_id,
            rpc: rpc.as_str(),
            peer,
            peer_identity: None,
            peer_identity_source: None,
            authenticated_by: None,
            caller_issuer: None,
            caller: None,
            jwt: None,
            decision: "allow",
            reason: None,
            rule: None,
            project: None,
            channel: None,
            identity: None,
            role: None,
            services: None,
            expires_at: None,
            token: None,
            route: None,
            limits: None,
            facts: None,
            latency_us: 0,
            call: rpc,
            issued_services: Vec::new(),
        }
    }

    /// Notes that the rules asked fact `name`, with `result`.
    pub(super) fn fact(&mut self, name: &str, result: &str) {
        let list = self.facts.get_or_insert_with(String::new);
        if !list.is_empty() {
            list.push(',');
        }
        list.push_str(name);
        list.push(':');
        list.push_str(result);
    }

    /// What the metrics count of this call.
    pub(super) fn metrics_record<'a, T>(
        &'a self,
        result: &'a Result<T, Refusal>,
    ) -> CallRecord<'a> {
        CallRecord {
            action: self.call.action(),
            decision: self.decision,
            reason: match result {
                Ok(_) => "none",
                Err(refusal) => refusal.reason(),
            },
            rule: self.rule.as_deref(),
            // Tokens are counted only for calls that issued one.
            project: self
                .project
                .as_deref()
                .filter(|_| !self.issued_services.is_empty()),
            services: &self.issued_services,
            route: self.route.as_deref(),
        }
    }

    /// Records the verified caller.
    pub(super) fn caller(&mut self, principal: &Principal) {
        self.caller_issuer = Some(principal.issuer.clone());
        self.caller = Some(principal.subject.clone());
        self.jwt = Some(principal.token_fingerprint.clone());
    }

    /// Records a refusal's decision, reason and rule.
    pub(super) fn refused(&mut self, refusal: &Refusal) {
        self.decision = refusal.decision();
        self.reason = Some(refusal.reason().to_owned());
        if let Some(rule) = refusal.rule() {
            self.rule = Some(rule.to_owned());
        }
    }

    /// Records what an issued token holds.
    pub(super) fn issued(&mut self, issued: &Issued) {
        self.rule = Some(issued.rule().to_owned());
        self.project = Some(issued.project.clone());
        self.identity = Some(issued.identity_text());
        self.role = issued.role().map(|role| role.to_string());
        self.services = Some(issued.services().join(","));
        self.issued_services = issued.services().to_vec();
        self.expires_at = Some(issued.expires_at);
        self.token = Some(issued.fingerprint.clone());
    }

    /// Writes the event. Every schema field is named here, in schema order.
    pub(super) fn emit(&self) {
        tracing::info!(
            target: AUDIT_TARGET,
            schema = SCHEMA_VERSION,
            time = self.time,
            request_id = %self.request_id,
            rpc = self.rpc,
            peer = self.peer.map(display),
            peer_identity = self.peer_identity.as_deref(),
            peer_identity_source = self.peer_identity_source,
            authenticated_by = self.authenticated_by,
            caller_issuer = self.caller_issuer.as_deref(),
            caller = self.caller.as_deref(),
            jwt = self.jwt.as_ref().map(display),
            decision = self.decision,
            reason = self.reason.as_deref(),
            rule = self.rule.as_deref(),
            project = self.project.as_deref(),
            channel = self.channel.as_deref(),
            identity = self.identity.as_deref(),
            role = self.role.as_deref(),
            services = self.services.as_deref(),
            expires_at = self.expires_at,
            token = self.token.as_ref().map(display),
            route = self.route.as_deref(),
            limits = self.limits.as_deref(),
            facts = self.facts.as_deref(),
            latency_us = self.latency_us,
        );
    }
}

impl Audited for Issued {
    fn describe(&self, event: &mut AuditEvent) {
        event.issued(self);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use tracing::field::{Field, Visit};
    use tracing_subscriber::layer::{Context, Layer, SubscriberExt as _};

    use super::*;

    /// Collects the names of the fields each audit event declares and records.
    /// Per event: the declared and the recorded field names.
    type Seen = Vec<(Vec<String>, Vec<String>)>;

    #[derive(Clone, Default)]
    struct Fields(Arc<Mutex<Seen>>);

    struct Recorded<'a>(&'a mut Vec<String>);

    impl Visit for Recorded<'_> {
        fn record_debug(&mut self, field: &Field, _: &dyn std::fmt::Debug) {
            self.0.push(field.name().to_owned());
        }
    }

    impl<S: tracing::Subscriber> Layer<S> for Fields {
        fn on_event(&self, event: &tracing::Event<'_>, _: Context<'_, S>) {
            let declared = event
                .metadata()
                .fields()
                .iter()
                .map(|f| f.name().to_owned())
                .collect();
            let mut recorded = Vec::new();
            event.record(&mut Recorded(&mut recorded));
            self.0.lock().unwrap().push((declared, recorded));
        }
    }

    #[test]
    fn every_event_declares_the_whole_schema_and_records_what_applies() {
        let fields = Fields::default();
        let subscriber = tracing_subscriber::registry().with(fields.clone());
        let mut event = AuditEvent::new(Rpc::IssueRtcToken, "abc".into(), None, 7);
        event.refused(&Refusal::Internal("x".into()));
        tracing::subscriber::with_default(subscriber, || event.emit());
        let seen = fields.0.lock().unwrap().clone();
        assert_eq!(seen.len(), 1);
        let (declared, recorded) = &seen[0];
        let schema = [
            "schema",
            "time",
            "request_id",
            "rpc",
            "peer",
            "peer_identity",
            "peer_identity_source",
            "authenticated_by",
            "caller_issuer",
            "caller",
            "jwt",
            "decision",
            "reason",
            "rule",
            "project",
            "channel",
            "identity",
            "role",
            "services",
            "expires_at",
            "token",
            "route",
            "limits",
            "facts",
            "latency_us",
        ];
        assert_eq!(declared, &schema.map(str::to_owned).to_vec());
        assert!(recorded.contains(&"reason".to_owned()), "{recorded:?}");
        assert!(!recorded.contains(&"peer".to_owned()), "{recorded:?}");
    }
}
