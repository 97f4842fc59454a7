//! `envoy.service.auth.v3.Authorization/Check`: Envoy's (and Istio's CUSTOM
//! action's) external authorization, on the same gRPC port as the token API.
//!
//! The adapter reads the HTTP request out of Envoy's `CheckRequest`, hands it
//! to the pipeline's `check` (routes, authentication, rules, build, audit),
//! and renders the outcome: OK with the token and the bound identity in
//! headers (client copies replaced or removed), or the refusal's HTTP denial
//! (`render::http_denial`). Every refusal is an HTTP answer, never a gRPC
//! error, so a request can never steer Envoy onto its `failure_mode_allow` path.

use std::borrow::Cow;
use std::sync::Arc;

use envoy_types::ext_authz::v3::pb::{
    Authorization, CheckRequest, CheckResponse, HeaderAppendAction, HttpStatusCode,
};
use envoy_types::ext_authz::v3::{
    CheckResponseExt, DeniedHttpResponseBuilder, OkHttpResponseBuilder,
};
use envoy_types::pb::envoy::service::auth::v3::attribute_context::HttpRequest as EnvoyHttp;
use tonic::{Request, Response, Status};

use crate::forwarded::Forwarded;
use crate::pipeline::{
    Call, Checked, Credential, HttpRequest, InvalidRequest, Pipeline, Refusal, Rpc,
};
use crate::render;

/// The ext_authz service.
pub struct EnvoyCheck {
    pipeline: Arc<Pipeline>,
}

/// The HTTP request as Envoy describes it, borrowed from the `CheckRequest`:
/// a check reads a handful of headers, so none is copied until it is read.
struct HttpView<'a> {
    http: &'a EnvoyHttp,
}

impl std::fmt::Debug for EnvoyCheck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EnvoyCheck")
            .field("pipeline", &self.pipeline)
            .finish_non_exhaustive()
    }
}

impl EnvoyCheck {
    /// A check service over the pipeline; the routes (and the header names
    /// they set) are the ones each check ran on, which the outcome carries.
    pub fn new(pipeline: Arc<Pipeline>) -> Self {
        Self { pipeline }
    }

    /// An OK response that sets the token and identity headers upstream
    /// (overwriting, never appending: a client-supplied copy must not
    /// survive next to ours) and removes the ones this grant does not own.
    fn allow(checked: &Checked) -> CheckResponse {
        let upstream = render::upstream_headers(checked);
        let mut ok = OkHttpResponseBuilder::new();
        for (name, value) in upstream.set {
            ok.add_header(
                name,
                value,
                Some(HeaderAppendAction::OverwriteIfExistsOrAdd),
                false,
            );
        }
        for name in upstream.remove {
            ok.remove_header(name);
        }
        let mut response = CheckResponse::with_status(render::allowed());
        response.set_http_response(ok);
        response
    }
}

#[tonic::async_trait]
impl Authorization for EnvoyCheck {
    async fn check(
        &self,
        request: Request<CheckRequest>,
    ) -> Result<Response<CheckResponse>, Status> {
        let view = http_view(request.get_ref());
        let http = view
            .as_ref()
            .map(|v| v as &dyn HttpRequest)
            .map_err(Clone::clone);
        let call = Call {
            rpc: Rpc::ExtAuthz,
            peer: request.remote_addr(),
            peer_identity: super::service::peer_identity(&request),
            authorization: Credential::Absent,
            forwarded: check_source(request.get_ref()),
            trace: super::service::trace_headers(request.metadata()),
            arrival: request.extensions().get::<crate::limits::Arrival>(),
        };
        let outcome = self.pipeline.check(call, http).await;
        Ok(Response::new(match outcome.result {
            Ok(checked) => Self::allow(&checked),
            Err(refusal) => deny(&refusal, &outcome.request_id),
        }))
    }
}

/// The refusal's HTTP denial, with the matching gRPC status for Envoy's logs.
fn deny(refusal: &Refusal, request_id: &str) -> CheckResponse {
    let denial = render::http_denial(refusal, request_id);
    let mut denied = DeniedHttpResponseBuilder::new();
    let code = HttpStatusCode::try_from(i32::from(denial.status))
        .unwrap_or(HttpStatusCode::InternalServerError);
    denied.set_http_status(code);
    for (name, value) in &denial.headers {
        denied.add_header(*name, value.as_str(), None, false);
    }
    denied.set_body(denial.body);
    let mut response = CheckResponse::with_status(render::status(refusal, request_id));
    response.set_http_response(denied);
    response
}

/// What Envoy says of the checked request's client (`attributes.source`:
/// its principal and address), which the pipeline believes only when this
/// Envoy is a trusted proxy.
fn check_source(request: &CheckRequest) -> Forwarded<'_> {
    let source = request.attributes.as_ref().and_then(|a| a.source.as_ref());
    let principal = source.map_or("", |s| s.principal.as_str());
    let address = source
        .and_then(|s| s.address.as_ref())
        .and_then(|a| a.address.as_ref())
        .and_then(|a| match a {
            envoy_types::pb::envoy::config::core::v3::address::Address::SocketAddress(socket) => {
                Some(socket.address.as_str())
            }
            _ => None,
        })
        .unwrap_or("");
    Forwarded::CheckSource { principal, address }
}

/// Method, path and headers from `attributes.request.http` (`headers`, or
/// `header_map` when Envoy sends raw headers).
fn http_view(request: &CheckRequest) -> Result<HttpView<'_>, InvalidRequest> {
    let http = request
        .attributes
        .as_ref()
        .and_then(|a| a.request.as_ref())
        .and_then(|r| r.http.as_ref())
        .ok_or_else(|| InvalidRequest::field("attributes.request.http", "is required"))?;
    Ok(HttpView { http })
}

impl HttpRequest for HttpView<'_> {
    fn method(&self) -> &str {
        &self.http.method
    }

    fn path(&self) -> &str {
        &self.http.path
    }

    /// The value of header `name` (lowercase). Envoy lowercases the keys of
    /// `headers`, so a map lookup finds them; other senders' keys are matched
    /// case-insensitively, and raw `header_map` entries win, as they did when
    /// both were merged.
    fn header_count(&self, name: &str) -> usize {
        let http = self.http;
        let raw = http.header_map.as_ref().map_or(0, |map| {
            map.headers
                .iter()
                .filter(|h| h.key.eq_ignore_ascii_case(name))
                .count()
        });
        if raw > 0 {
            return raw;
        }
        http.headers
            .keys()
            .filter(|k| k.eq_ignore_ascii_case(name))
            .count()
    }

    fn header(&self, name: &str) -> Option<Cow<'_, str>> {
        let http = self.http;
        if let Some(map) = &http.header_map
            && let Some(header) = map
                .headers
                .iter()
                .rev()
                .find(|h| h.key.eq_ignore_ascii_case(name))
        {
            return Some(if header.value.is_empty() {
                String::from_utf8_lossy(&header.raw_value)
            } else {
                Cow::Borrowed(&header.value)
            });
        }
        let value = http.headers.get(name).or_else(|| {
            http.headers
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v)
        });
        value.map(|v| Cow::Borrowed(v.as_str()))
    }
}
