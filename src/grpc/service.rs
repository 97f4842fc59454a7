//! `tokengate.v1.TokenService`: thin handlers that read top to bottom as
//! authenticate, convert, decide and build (in `gate`), reply.
//!
//! Authentication comes first, so an unauthenticated caller learns nothing
//! about which requests would be valid. Every decision is written once to the
//! audit log (target `audit`) with fingerprints, never secrets.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::convert;
use super::pb;
use super::pb::token_service_server::TokenService;
use super::status::{auth_error, gate_error};
use crate::domain::Principal;
use crate::entropy;
use crate::gate::{Gate, GateError, Issued};
use crate::identity::Authenticator;
use crate::policy;

/// The state every handler shares.
pub struct Api {
    gate: Arc<Gate>,
    authenticator: Arc<Authenticator>,
}

impl std::fmt::Debug for Api {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Api")
            .field("gate", &self.gate)
            .finish_non_exhaustive()
    }
}

impl Api {
    /// Handlers over `gate` that authenticate with `authenticator`.
    pub fn new(gate: Arc<Gate>, authenticator: Arc<Authenticator>) -> Self {
        Self {
            gate,
            authenticator,
        }
    }

    /// The caller's verified identity, from the `authorization` metadata.
    async fn authenticate<T>(
        &self,
        request: &Request<T>,
        rpc: &str,
        now: u64,
    ) -> Result<Principal, Status> {
        let header = request
            .metadata()
            .get("authorization")
            .map(|v| v.to_str().unwrap_or("\u{fffd}"));
        self.authenticator
            .authenticate(header, now)
            .await
            .map_err(|e| {
                tracing::info!(target: "audit", rpc, decision = "unauthenticated", reason = e.reason());
                auth_error(&e)
            })
    }

    /// Decides and builds, logging the decision.
    fn issue(
        &self,
        rpc: &str,
        principal: &Principal,
        request: &policy::Request,
        now: u64,
    ) -> Result<pb::IssuedToken, Status> {
        let salt = entropy::random_salt().map_err(|e| internal(rpc, &e.to_string()))?;
        let result = self.gate.issue(principal, request, now, salt);
        audit(rpc, principal, request, &result);
        result
            .map(|issued| convert::issued(&issued))
            .map_err(|e| status(rpc, &e))
    }
}

#[tonic::async_trait]
impl TokenService for Api {
    async fn issue_rtc_token(
        &self,
        request: Request<pb::IssueRtcTokenRequest>,
    ) -> Result<Response<pb::IssueRtcTokenResponse>, Status> {
        let now = entropy::unix_now();
        let principal = self.authenticate(&request, "IssueRtcToken", now).await?;
        let wanted = convert::rtc_request(request.get_ref(), "")?;
        let issued = self.issue("IssueRtcToken", &principal, &wanted, now)?;
        Ok(Response::new(pb::IssueRtcTokenResponse {
            issued: Some(issued),
        }))
    }

    async fn issue_rtm_token(
        &self,
        request: Request<pb::IssueRtmTokenRequest>,
    ) -> Result<Response<pb::IssueRtmTokenResponse>, Status> {
        let now = entropy::unix_now();
        let principal = self.authenticate(&request, "IssueRtmToken", now).await?;
        let wanted = convert::rtm_request(request.get_ref(), "")?;
        let issued = self.issue("IssueRtmToken", &principal, &wanted, now)?;
        Ok(Response::new(pb::IssueRtmTokenResponse {
            issued: Some(issued),
        }))
    }

    async fn issue_chat_token(
        &self,
        request: Request<pb::IssueChatTokenRequest>,
    ) -> Result<Response<pb::IssueChatTokenResponse>, Status> {
        let now = entropy::unix_now();
        let principal = self.authenticate(&request, "IssueChatToken", now).await?;
        let wanted = convert::chat_request(request.get_ref(), "")?;
        let issued = self.issue("IssueChatToken", &principal, &wanted, now)?;
        Ok(Response::new(pb::IssueChatTokenResponse {
            issued: Some(issued),
        }))
    }

    async fn renew_token(
        &self,
        request: Request<pb::RenewTokenRequest>,
    ) -> Result<Response<pb::RenewTokenResponse>, Status> {
        let now = entropy::unix_now();
        let principal = self.authenticate(&request, "RenewToken", now).await?;
        let lifetimes = convert::renew_lifetimes(request.get_ref().lifetimes.as_ref())?;
        let channel = convert::renew_channel(request.get_ref())?;
        let salt = entropy::random_salt().map_err(|e| internal("RenewToken", &e.to_string()))?;
        let result = self.gate.renew(
            &principal,
            &request.get_ref().token,
            channel,
            lifetimes,
            now,
            salt,
        );
        audit_result("RenewToken", &principal, &result);
        let issued = result.map_err(|e| status("RenewToken", &e))?;
        Ok(Response::new(pb::RenewTokenResponse {
            issued: Some(convert::issued(&issued)),
        }))
    }

    async fn inspect_token(
        &self,
        request: Request<pb::InspectTokenRequest>,
    ) -> Result<Response<pb::InspectTokenResponse>, Status> {
        let now = entropy::unix_now();
        let principal = self.authenticate(&request, "InspectToken", now).await?;
        let msg = request.get_ref();
        let expected = convert::expectation(msg);
        let found = self
            .gate
            .inspect(&principal, &msg.token, &expected, now)
            .map_err(|e| {
                audit_refusal("InspectToken", &principal, &e);
                status("InspectToken", &e)
            })?;
        tracing::info!(
            target: "audit", rpc = "InspectToken", decision = "allow",
            caller = %principal.subject, jwt = %principal.token_fingerprint,
            token = %found.fingerprint, signature_valid = found.signature_valid,
        );
        Ok(Response::new(convert::inspection(&found)))
    }

    async fn explain_access(
        &self,
        request: Request<pb::ExplainAccessRequest>,
    ) -> Result<Response<pb::ExplainAccessResponse>, Status> {
        let now = entropy::unix_now();
        let principal = self.authenticate(&request, "ExplainAccess", now).await?;
        let wanted = match &request.get_ref().request {
            Some(pb::explain_access_request::Request::Rtc(r)) => convert::rtc_request(r, "rtc.")?,
            Some(pb::explain_access_request::Request::Rtm(r)) => convert::rtm_request(r, "rtm.")?,
            Some(pb::explain_access_request::Request::Chat(r)) => {
                convert::chat_request(r, "chat.")?
            }
            None => {
                return Err(super::status::InvalidRequest::field(
                    "request",
                    "set one of rtc, rtm or chat",
                )
                .into());
            }
        };
        let (decision, trace) = self.gate.explain(&principal, &wanted, now).map_err(|e| {
            audit_refusal("ExplainAccess", &principal, &e);
            status("ExplainAccess", &e)
        })?;
        tracing::info!(
            target: "audit", rpc = "ExplainAccess", decision = "allow",
            caller = %principal.subject, jwt = %principal.token_fingerprint,
            explained = wanted.action.as_str(),
        );
        Ok(Response::new(convert::explanation(&decision, &trace)))
    }
}

/// The status for a use-case error; INTERNAL errors are logged with a request id.
fn status(rpc: &str, error: &GateError) -> Status {
    let request_id = entropy::request_id();
    if matches!(
        error,
        GateError::UnknownProject(_) | GateError::ClockOutOfRange(_) | GateError::Token(_)
    ) {
        tracing::error!(rpc, request_id, error = %error, "internal error");
    }
    gate_error(error, &request_id)
}

fn internal(rpc: &str, message: &str) -> Status {
    let request_id = entropy::request_id();
    tracing::error!(rpc, request_id, error = message, "internal error");
    Status::internal(format!("internal error; request id {request_id}"))
}

/// One audit event per issuing decision.
pub(super) fn audit(
    rpc: &str,
    principal: &Principal,
    request: &policy::Request,
    result: &Result<Issued, GateError>,
) {
    let channel = request.channel.as_ref().map(|c| c.as_str()).unwrap_or("");
    match result {
        Ok(issued) => tracing::info!(
            target: "audit", rpc, decision = "allow",
            caller_iss = %principal.issuer, caller = %principal.subject,
            jwt = %principal.token_fingerprint, channel,
            identity = %crate::gate::bound_identity_text(&issued.grant.identity()),
            role = %issued.grant.role(), rule = %issued.grant.rule(),
            project = %issued.project, expires_at = issued.expires_at,
            token = %issued.fingerprint,
        ),
        Err(error) => {
            tracing::info!(target: "audit", rpc, channel, action = request.action.as_str(), "refused");
            audit_refusal(rpc, principal, error);
        }
    }
}

fn audit_result(rpc: &str, principal: &Principal, result: &Result<Issued, GateError>) {
    match result {
        Ok(issued) => tracing::info!(
            target: "audit", rpc, decision = "allow",
            caller = %principal.subject, jwt = %principal.token_fingerprint,
            rule = %issued.grant.rule(), project = %issued.project,
            token = %issued.fingerprint,
        ),
        Err(error) => audit_refusal(rpc, principal, error),
    }
}

fn audit_refusal(rpc: &str, principal: &Principal, error: &GateError) {
    let (reason, rule) = match error {
        GateError::Denied(denial) => (denial.reason.as_str(), denial.rule.as_deref().unwrap_or("")),
        GateError::BadToken(_) | GateError::ChannelMismatch => ("bad_token", ""),
        _ => ("internal", ""),
    };
    tracing::info!(
        target: "audit", rpc, decision = "deny", reason, rule,
        caller_iss = %principal.issuer, caller = %principal.subject,
        jwt = %principal.token_fingerprint,
    );
}
