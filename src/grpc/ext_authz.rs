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

use std::borrow::Cow;
use std::sync::Arc;

use envoy_types::ext_authz::v3::pb::{
    Authorization, CheckRequest, CheckResponse, HeaderAppendAction, HttpStatusCode,
};
use envoy_types::ext_authz::v3::{
    CheckResponseExt, DeniedHttpResponseBuilder, OkHttpResponseBuilder,
};
use envoy_types::pb::envoy::service::auth::v3::attribute_context::HttpRequest;
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

/// The HTTP request as Envoy describes it, borrowed from the `CheckRequest`:
/// a check reads a handful of headers, so none is copied until it is read.
struct HttpView<'a> {
    method: &'a str,
    path: &'a str,
    http: &'a HttpRequest,
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
        set(&names.rule, issued.grant.rule().to_owned());
        let (identity_header, other_header) = match &issued.grant.identity() {
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
            BoundIdentity::App => (&names.token, &names.uid),
        };
        // The output header this grant does not set is removed, so a client
        // cannot slip in a uid next to our account (or the reverse).
        if other_header != identity_header {
            ok.remove_header(other_header.as_str());
        }
        if matches!(issued.grant.identity(), BoundIdentity::App) {
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

    fn header(&self, view: &HttpView<'_>, name: &str) -> Option<String> {
        view.header(name).map(Cow::into_owned)
    }
}

impl<'a> HttpView<'a> {
    /// The value of header `name` (lowercase). Envoy lowercases the keys of
    /// `headers`, so a map lookup finds them; other senders' keys are matched
    /// case-insensitively, and raw `header_map` entries win, as they did when
    /// both were merged.
    fn header(&self, name: &str) -> Option<Cow<'a, str>> {
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

#[tonic::async_trait]
impl Authorization for ExtAuthz {
    async fn check(
        &self,
        request: Request<CheckRequest>,
    ) -> Result<Response<CheckResponse>, Status> {
        let now = entropy::unix_now();
        let view = http_view(request.get_ref())?;
        let Some(matched) = self.mesh.route(view.method, view.path) else {
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
        let jwt_header = view.header(&self.mesh.jwt_header);
        let bearer = jwt_header.as_deref().map(bearer);
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

/// The header value as the authenticator expects it: `Bearer <jwt>`
/// (borrowed when the header already has the scheme, the usual case).
fn bearer(value: &str) -> Cow<'_, str> {
    // Compared as bytes: slicing the text at 7 could split a multi-byte
    // character of an attacker-chosen header and panic.
    let has_scheme = value
        .as_bytes()
        .get(..7)
        .is_some_and(|scheme| scheme.eq_ignore_ascii_case(b"bearer "));
    if has_scheme {
        Cow::Borrowed(value)
    } else {
        Cow::Owned(format!("Bearer {value}"))
    }
}

/// Method, path and headers from `attributes.request.http` (`headers`, or
/// `header_map` when Envoy sends raw headers).
fn http_view(request: &CheckRequest) -> Result<HttpView<'_>, Status> {
    let http = request
        .attributes
        .as_ref()
        .and_then(|a| a.request.as_ref())
        .and_then(|r| r.http.as_ref())
        .ok_or_else(|| Status::invalid_argument("attributes.request.http is required"))?;
    Ok(HttpView {
        method: &http.method,
        path: &http.path,
        http,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_prefixes_only_bare_values_and_never_panics() {
        let cases = [
            ("Bearer abc", "Bearer abc"),
            ("bearer abc", "bearer abc"),
            ("abc", "Bearer abc"),
            // Byte 7 falls inside the euro sign: a text slice would panic.
            ("abcdef\u{20ac}x", "Bearer abcdef\u{20ac}x"),
            (
                "\u{20ac}\u{20ac}\u{20ac}",
                "Bearer \u{20ac}\u{20ac}\u{20ac}",
            ),
            ("", "Bearer "),
        ];
        for (input, expected) in cases {
            assert_eq!(bearer(input), expected, "{input:?}");
        }
    }
}
