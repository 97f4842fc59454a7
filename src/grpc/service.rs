//! `tokengate.v1.TokenService`: thin handlers. Each converts its message
//! (`convert`), hands it to the pipeline with what the transport knows about
//! the call, and renders the outcome (`render`). Authentication, the
//! decision, the build and the audit event all happen in the pipeline.

use std::sync::Arc;

use tonic::metadata::MetadataMap;
use tonic::{Request, Response, Status};

use super::convert;
use super::pb;
use super::pb::token_service_server::TokenService;
use crate::domain::PeerIdentity;
use crate::forwarded::{Forwarded, XFCC_HEADER};
use crate::limits::Arrival;
use crate::pipeline::{
    Call, Credential, InspectRequest, InvalidRequest, Outcome, Pipeline, Rpc, TraceHeaders,
};
use crate::render;

/// The state every handler shares.
#[derive(Debug)]
pub struct Api {
    pipeline: Arc<Pipeline>,
}

impl Api {
    /// Handlers over `pipeline`.
    pub fn new(pipeline: Arc<Pipeline>) -> Self {
        Self { pipeline }
    }
}

/// What the transport knows about a call: its peer, its `authorization`
/// and `x-forwarded-client-cert` metadata and its W3C trace context.
fn call<T>(request: &Request<T>, rpc: Rpc) -> Call<'_> {
    let mut values = request.metadata().get_all("authorization").iter();
    let authorization = match (values.next(), values.next()) {
        (None, _) => Credential::Absent,
        // A value that is not visible ASCII cannot be a bearer JWT; the
        // replacement character makes the authenticator call it malformed.
        (Some(value), None) => Credential::One(value.to_str().unwrap_or("\u{fffd}")),
        (Some(_), Some(_)) => Credential::Duplicated,
    };
    Call {
        rpc,
        peer: request.remote_addr(),
        peer_identity: peer_identity(request),
        authorization,
        forwarded: forwarded_client_cert(request.metadata()),
        trace: trace_headers(request.metadata()),
        arrival: request.extensions().get::<Arrival>(),
    }
}

/// The `x-forwarded-client-cert` metadata, for the pipeline to read if the
/// peer is a trusted proxy and to ignore otherwise.
fn forwarded_client_cert(metadata: &MetadataMap) -> Forwarded<'_> {
    let mut values = metadata.get_all(XFCC_HEADER).iter();
    match (values.next(), values.next()) {
        (None, _) => Forwarded::Nothing,
        // A value that is not visible ASCII is refused by the parser, which
        // takes no key that starts with the replacement character.
        (Some(value), None) => Forwarded::ClientCert(value.to_str().unwrap_or("\u{fffd}")),
        (Some(_), Some(_)) => Forwarded::ClientCertRepeated,
    }
}

/// The verified client certificate's identity, which the server put in the
/// request's extensions after an mTLS handshake.
pub(super) fn peer_identity<T>(request: &Request<T>) -> Option<&PeerIdentity> {
    request
        .extensions()
        .get::<Arc<PeerIdentity>>()
        .map(|identity| &**identity)
}

/// The `traceparent` and `tracestate` metadata, each only when sent exactly
/// once (W3C: a repeated `traceparent` is ignored, and the call starts a trace).
pub(super) fn trace_headers(metadata: &MetadataMap) -> TraceHeaders<'_> {
    let single = |name: &str| {
        let mut values = metadata.get_all(name).iter();
        match (values.next(), values.next()) {
            (Some(value), None) => value.to_str().ok(),
            _ => None,
        }
    };
    TraceHeaders {
        traceparent: single("traceparent"),
        tracestate: single("tracestate"),
    }
}

/// The reply for an outcome: the message, or the refusal's status; both carry `x-request-id`.
fn reply<T, R>(outcome: Outcome<T>, message: impl FnOnce(T) -> R) -> Result<Response<R>, Status> {
    match outcome.result {
        Ok(value) => {
            let mut response = Response::new(message(value));
            render::tag_request_id(response.metadata_mut(), &outcome.request_id);
            Ok(response)
        }
        Err(refusal) => Err(render::status(&refusal, &outcome.request_id)),
    }
}

#[tonic::async_trait]
impl TokenService for Api {
    async fn issue_rtc_token(
        &self,
        request: Request<pb::IssueRtcTokenRequest>,
    ) -> Result<Response<pb::IssueRtcTokenResponse>, Status> {
        let wanted = convert::rtc_request(request.get_ref(), "");
        let outcome = self
            .pipeline
            .issue(call(&request, Rpc::IssueRtcToken), wanted)
            .await;
        reply(outcome, |issued| pb::IssueRtcTokenResponse {
            issued: Some(convert::issued(issued)),
        })
    }

    async fn issue_rtm_token(
        &self,
        request: Request<pb::IssueRtmTokenRequest>,
    ) -> Result<Response<pb::IssueRtmTokenResponse>, Status> {
        let wanted = convert::rtm_request(request.get_ref(), "");
        let outcome = self
            .pipeline
            .issue(call(&request, Rpc::IssueRtmToken), wanted)
            .await;
        reply(outcome, |issued| pb::IssueRtmTokenResponse {
            issued: Some(convert::issued(issued)),
        })
    }

    async fn issue_chat_token(
        &self,
        request: Request<pb::IssueChatTokenRequest>,
    ) -> Result<Response<pb::IssueChatTokenResponse>, Status> {
        let wanted = convert::chat_request(request.get_ref(), "");
        let outcome = self
            .pipeline
            .issue(call(&request, Rpc::IssueChatToken), wanted)
            .await;
        reply(outcome, |issued| pb::IssueChatTokenResponse {
            issued: Some(convert::issued(issued)),
        })
    }

    async fn renew_token(
        &self,
        request: Request<pb::RenewTokenRequest>,
    ) -> Result<Response<pb::RenewTokenResponse>, Status> {
        let wanted = convert::renew_request(request.get_ref());
        let outcome = self
            .pipeline
            .renew(call(&request, Rpc::RenewToken), wanted)
            .await;
        reply(outcome, |issued| pb::RenewTokenResponse {
            issued: Some(convert::issued(issued)),
        })
    }

    async fn inspect_token(
        &self,
        request: Request<pb::InspectTokenRequest>,
    ) -> Result<Response<pb::InspectTokenResponse>, Status> {
        let msg = request.get_ref();
        let wanted = InspectRequest {
            token: msg.token.clone(),
            expected: convert::expectation(msg),
        };
        let outcome = self
            .pipeline
            .inspect(call(&request, Rpc::InspectToken), Ok(wanted))
            .await;
        reply(outcome, |found| convert::inspection(&found))
    }

    async fn explain_access(
        &self,
        request: Request<pb::ExplainAccessRequest>,
    ) -> Result<Response<pb::ExplainAccessResponse>, Status> {
        use pb::explain_access_request::Request as Wanted;
        let wanted = match &request.get_ref().request {
            Some(Wanted::Rtc(r)) => convert::rtc_request(r, "rtc."),
            Some(Wanted::Rtm(r)) => convert::rtm_request(r, "rtm."),
            Some(Wanted::Chat(r)) => convert::chat_request(r, "chat."),
            None => Err(InvalidRequest::field(
                "request",
                "set one of rtc, rtm or chat",
            )),
        };
        let outcome = self
            .pipeline
            .explain(call(&request, Rpc::ExplainAccess), wanted)
            .await;
        reply(outcome, |explained| convert::explanation(&explained))
    }
}
