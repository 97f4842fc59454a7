//! `envoy.service.auth.v3.Authorization/Check`: Envoy's (and Istio's CUSTOM
//! action's) external authorization, on the same gRPC port as the token API.
//!
//! A check reads the HTTP request Envoy forwards, finds its route
//! (`mesh::Mesh`), authenticates the JWT, and asks the same `Gate` as
//! `IssueRtcToken`, so nothing about the decision is written twice. An allowed
//! request goes upstream with the token and the bound identity in headers
//! (client copies replaced or removed); a refused one gets 400, 401 or 403
//! with `{"error": reason}`. When the issuer's keys have never loaded the
//! answer is a gRPC UNAVAILABLE, so Envoy's `failure_mode_allow` decides.

use std::collections::HashMap;
use std::sync::Arc;

use envoy_types::ext_authz::v3::pb::{
    Authorization, CheckRequest, CheckResponse, HeaderAppendAction, HttpStatusCode,
};
use envoy_types::ext_authz::v3::{
    CheckResponseExt, DeniedHttpResponseBuilder, OkHttpResponseBuilder,
};
use tonic::{Request, Response, Status};

use super::service::audit;
use super::status::auth_error;
use crate::domain::RtcIdentity;
use crate::entropy;
use crate::gate::{Gate, GateError, Issued};
use crate::identity::Authenticator;
use crate::mesh::Mesh;
use crate::policy::BoundIdentity;

/// The RPC name in audit events.
const RPC: &str = "ext_authz.Check";

/// The ext_authz service.
pub struct ExtAuthz {
    gate: Arc<Gate>,
    authenticator: Arc<Authenticator>,
    mesh: Arc<Mesh>,
}

/// The HTTP request as Envoy describes it.
struct HttpView {
    method: String,
    path: String,
    headers: HashMap<String, String>,
}

impl std::fmt::Debug for ExtAuthz {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExtAuthz")
            .field("mesh", &self.mesh)
            .finish_non_exhaustive()
    }
}

impl ExtAuthz {
    /// A check service over the same gate and authenticator as the token API.
    pub fn new(gate: Arc<Gate>, authenticator: Arc<Authenticator>, mesh: Arc<Mesh>) -> Self {
        Self {
            gate,
            authenticator,
            mesh,
        }
    }

    /// An OK response that forwards the token and identity headers upstream.
    fn allow(&self, issued: &Issued) -> CheckResponse {
        let names = &self.mesh.response_headers;
        let mut ok = OkHttpResponseBuilder::new();
        // Overwrite, never append: a client-supplied copy must not survive next to ours.
        let mut set = |name: &str, value: String| {
            ok.add_header(
                name,
                value,
                Some(HeaderAppendAction::OverwriteIfExistsOrAdd),
                false,
            );
        };
        set(&names.token, issued.token.clone());
        set(&names.expires_at, issued.expires_at.to_string());
        set(&names.rule, issued.grant.rule.clone());
        let (identity_header, other_header) = match &issued.grant.identity {
            BoundIdentity::Rtc(RtcIdentity::Uid(uid)) => {
                set(&names.uid, uid.get().to_string());
                (&names.uid, &names.account)
            }
            BoundIdentity::Rtc(RtcIdentity::AnyUid) => {
                set(&names.uid, "0".to_owned());
                (&names.uid, &names.account)
            }
            BoundIdentity::Rtc(RtcIdentity::Account(account)) => {
                set(&names.account, account.as_str().to_owned());
                (&names.account, &names.uid)
            }
            BoundIdentity::User(user) => {
                set(&names.account, user.as_str().to_owned());
                (&names.account, &names.uid)
            }
            BoundIdentity::App | BoundIdentity::None => (&names.token, &names.uid),
        };
        // The output header this grant does not set is removed, so a client
        // cannot slip in a uid next to our account (or the reverse).
        if other_header != identity_header {
            ok.remove_header(other_header.as_str());
        }
        if matches!(
            issued.grant.identity,
            BoundIdentity::App | BoundIdentity::None
        ) {
            ok.remove_header(names.account.as_str());
        }
        if self.mesh.remove_jwt_header {
            ok.remove_header(self.mesh.jwt_header.as_str());
        }
        let mut response = CheckResponse::with_status(Status::ok(""));
        response.set_http_response(ok);
        response
    }

    /// An OK response for a pass-through route: no token, and every header we own removed.
    fn pass_through(&self) -> CheckResponse {
        let mut ok = OkHttpResponseBuilder::new();
        for name in self.mesh.response_headers.all() {
            ok.remove_header(name);
        }
        let mut response = CheckResponse::with_status(Status::ok(""));
        response.set_http_response(ok);
        response
    }

    fn header(&self, view: &HttpView, name: &str) -> Option<String> {
        view.headers.get(name).cloned()
    }
}

#[tonic::async_trait]
impl Authorization for ExtAuthz {
    async fn check(
        &self,
        request: Request<CheckRequest>,
    ) -> Result<Response<CheckResponse>, Status> {
        let now = entropy::unix_now();
        let view = http_view(request.get_ref())?;
        let Some(matched) = self.mesh.route(&view.method, &view.path) else {
            tracing::info!(target: "audit", rpc = RPC, decision = "deny", reason = "no_matching_route", method = %view.method);
            return Ok(Response::new(deny(
                HttpStatusCode::Forbidden,
                "no_matching_route",
                None,
            )));
        };
        if matched.pass_through {
            tracing::info!(target: "audit", rpc = RPC, decision = "pass_through", route = matched.template);
            return Ok(Response::new(self.pass_through()));
        }
        let bearer = self
            .header(&view, &self.mesh.jwt_header)
            .map(|v| bearer(&v));
        let principal = match self
            .authenticator
            .authenticate(bearer.as_deref(), now)
            .await
        {
            Ok(principal) => principal,
            // Undecidable: a gRPC error lets Envoy's failure_mode_allow decide.
            Err(e) if e.keys_never_loaded() => return Err(auth_error(&e)),
            Err(e) => {
                tracing::info!(target: "audit", rpc = RPC, decision = "unauthenticated", reason = e.reason());
                let challenge =
                    (!matches!(e.reason(), "missing")).then_some("Bearer error=\"invalid_token\"");
                return Ok(Response::new(deny(
                    HttpStatusCode::Unauthorized,
                    e.reason(),
                    challenge,
                )));
            }
        };
        let lookup = |name: &str| self.header(&view, name);
        let wanted = match self.mesh.request(&matched, &lookup) {
            Ok(wanted) => wanted,
            Err(bad) => {
                tracing::info!(target: "audit", rpc = RPC, decision = "deny", reason = "invalid_request", field = %bad.field);
                return Ok(Response::new(deny(
                    HttpStatusCode::BadRequest,
                    "invalid_request",
                    None,
                )));
            }
        };
        let salt = entropy::random_salt().map_err(|e| Status::internal(e.to_string()))?;
        let result = self.gate.issue(&principal, &wanted, now, salt);
        audit(RPC, &principal, &wanted, &result);
        match result {
            Ok(issued) => Ok(Response::new(self.allow(&issued))),
            Err(GateError::Denied(denial)) => Ok(Response::new(deny(
                HttpStatusCode::Forbidden,
                denial.reason.as_str(),
                None,
            ))),
            Err(error) => {
                let request_id = entropy::request_id();
                tracing::error!(rpc = RPC, request_id, error = %error, "internal error");
                Err(Status::internal(format!(
                    "internal error; request id {request_id}"
                )))
            }
        }
    }
}

/// A denied HTTP response with a small JSON body; it never contains the JWT.
fn deny(code: HttpStatusCode, reason: &str, challenge: Option<&str>) -> CheckResponse {
    let mut denied = DeniedHttpResponseBuilder::new();
    denied.set_http_status(code);
    denied.add_header("content-type", "application/json", None, false);
    if let Some(challenge) = challenge {
        denied.add_header("www-authenticate", challenge, None, false);
    }
    denied.set_body(serde_json::json!({ "error": reason }).to_string());
    let status = match code {
        HttpStatusCode::Unauthorized => Status::unauthenticated(reason),
        HttpStatusCode::BadRequest => Status::invalid_argument(reason),
        _ => Status::permission_denied(reason),
    };
    let mut response = CheckResponse::with_status(status);
    response.set_http_response(denied);
    response
}

/// The header value as the authenticator expects it: `Bearer <jwt>`.
fn bearer(value: &str) -> String {
    let has_scheme = value.len() > 7 && value[..7].eq_ignore_ascii_case("bearer ");
    if has_scheme {
        value.to_owned()
    } else {
        format!("Bearer {value}")
    }
}

/// Method, path and lowercased headers from `attributes.request.http`
/// (`headers`, or `header_map` when Envoy sends raw headers).
fn http_view(request: &CheckRequest) -> Result<HttpView, Status> {
    let http = request
        .attributes
        .as_ref()
        .and_then(|a| a.request.as_ref())
        .and_then(|r| r.http.as_ref())
        .ok_or_else(|| Status::invalid_argument("attributes.request.http is required"))?;
    let mut headers: HashMap<String, String> = http
        .headers
        .iter()
        .map(|(k, v)| (k.to_ascii_lowercase(), v.clone()))
        .collect();
    if let Some(map) = &http.header_map {
        for header in &map.headers {
            let value = if header.value.is_empty() {
                String::from_utf8_lossy(&header.raw_value).into_owned()
            } else {
                header.value.clone()
            };
            headers.insert(header.key.to_ascii_lowercase(), value);
        }
    }
    Ok(HttpView {
        method: http.method.clone(),
        path: http.path.clone(),
        headers,
    })
}
