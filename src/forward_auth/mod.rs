//! Forward authentication over HTTP: the check that nginx's `auth_request`,
//! Caddy's `forward_auth`, Traefik's ForwardAuth, HAProxy and Envoy's (or
//! Istio's) HTTP ext_authz make before they let a request through.
//!
//! It is an adapter like `grpc::envoy_check`, over the same
//! `[[ext_authz.routes]]` and the same `Pipeline::check` (route,
//! authentication, rules, build, audit): `request.rs` reads which request the
//! proxy asks about from the headers the configured proxy sends (and only
//! those: `original_request`), and this file renders the outcome: 200 with
//! the token and what it binds in response headers for the proxy to copy
//! upstream, or the refusal's HTTP denial (`render::http_denial`). The
//! listener itself (connection cap, timeouts, drain) is `server`'s.
//!
//! Nothing the client sent is ever echoed: an allowed answer carries only
//! the headers the grant sets, so a client's own `x-agora-token` can reach
//! the upstream only through a proxy that does not overwrite or strip it.
//! The snippets in deploy/forward-auth/ do (tested through the real nginx
//! and Caddy); Envoy is also told which headers to remove.

mod request;

use std::net::SocketAddr;
use std::sync::Arc;

use http::{HeaderMap, HeaderName, HeaderValue, Response, StatusCode};

use crate::forwarded::{Forwarded, XFCC_HEADER};
use crate::pipeline::{Call, Credential, HttpRequest, Pipeline, Rpc, TraceHeaders};
use crate::render::{self, TransportRefusal};

pub use request::OriginalRequest;

/// `[forward_auth]`, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForwardAuthSettings {
    /// Where the listener binds.
    pub listen: SocketAddr,
    /// The path the proxy sends its checks to (`/` for any); a request
    /// elsewhere is a 404, never a check.
    pub path_prefix: String,
    /// Which headers say what the original request was.
    pub original_request: OriginalRequest,
    /// The most connections open at once on the listener.
    pub max_connections: usize,
}

/// Why `[forward_auth]` is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {message}")]
pub struct ForwardAuthError {
    /// The key under `forward_auth`.
    pub key: &'static str,
    /// What is wrong with it.
    pub message: String,
}

impl ForwardAuthSettings {
    /// Validates the settings: the prefix is an absolute path without a
    /// trailing slash (but `/` itself), dot segments, empty segments,
    /// percent signs or a query, and at least one connection is allowed.
    pub fn new(
        listen: SocketAddr,
        path_prefix: &str,
        original_request: OriginalRequest,
        max_connections: usize,
    ) -> Result<Self, ForwardAuthError> {
        let bad = |message: &str| ForwardAuthError {
            key: "path_prefix",
            message: message.to_owned(),
        };
        if !path_prefix.starts_with('/') {
            return Err(bad("must start with /"));
        }
        if path_prefix.len() > 1 && path_prefix.ends_with('/') {
            return Err(bad("must not end with / (write /check, not /check/)"));
        }
        if path_prefix
            .bytes()
            .any(|b| !b.is_ascii_graphic() || matches!(b, b'%' | b'?' | b'#'))
        {
            return Err(bad(
                "must be plain ASCII path characters, without %, ? or #",
            ));
        }
        if path_prefix.len() > 1
            && path_prefix[1..]
                .split('/')
                .any(|segment| matches!(segment, "" | "." | ".."))
        {
            return Err(bad("must not have empty, . or .. segments"));
        }
        if max_connections == 0 {
            return Err(ForwardAuthError {
                key: "max_connections",
                message: "must be at least 1".to_owned(),
            });
        }
        Ok(Self {
            listen,
            path_prefix: path_prefix.to_owned(),
            original_request,
            max_connections,
        })
    }

    /// The part of `path` under the prefix (`""` when it is the prefix
    /// itself), or `None` when `path` is elsewhere.
    fn under_prefix<'a>(&self, path: &'a str) -> Option<&'a str> {
        if self.path_prefix == "/" {
            return Some(path);
        }
        let rest = path.strip_prefix(self.path_prefix.as_str())?;
        (rest.is_empty() || rest.starts_with('/')).then_some(rest)
    }
}

/// The forward-auth check over a pipeline.
#[derive(Debug, Clone)]
pub struct ForwardAuth {
    pipeline: Arc<Pipeline>,
    settings: Arc<ForwardAuthSettings>,
}

impl ForwardAuth {
    /// A check over `pipeline` with `settings`.
    pub fn new(pipeline: Arc<Pipeline>, settings: ForwardAuthSettings) -> Self {
        Self {
            pipeline,
            settings: Arc::new(settings),
        }
    }

    /// The settings it answers by.
    pub fn settings(&self) -> &ForwardAuthSettings {
        &self.settings
    }

    /// Answers one check: the method, request target and headers of the
    /// proxy's request, and its address.
    pub async fn answer(
        &self,
        method: &str,
        target: &str,
        headers: &HeaderMap,
        peer: Option<SocketAddr>,
    ) -> Response<String> {
        let path = target.split(['?', '#']).next().unwrap_or("");
        let Some(rest) = self.settings.under_prefix(path) else {
            // Not a check: a proxy configured with the wrong path. Not
            // audited, like a gRPC call to a method that does not exist.
            return plain(StatusCode::NOT_FOUND, "not a forward-auth path\n");
        };
        let own_target = match self.settings.original_request {
            OriginalRequest::Path => {
                // The remainder with the query string, as Envoy appended
                // the original request's path to `path_prefix` (`path` is
                // the start of `target`, `rest` the end of `path`).
                let rest = &target[path.len() - rest.len()..];
                Some(if rest.starts_with('/') {
                    rest.to_owned()
                } else {
                    format!("/{rest}")
                })
            }
            _ => None,
        };
        let original =
            request::Original::read(self.settings.original_request, method, own_target, headers);
        let http = original
            .as_ref()
            .map(|o| o as &dyn HttpRequest)
            .map_err(Clone::clone);
        let call = Call {
            rpc: Rpc::ForwardAuth,
            peer,
            peer_identity: None,
            // The route's JWT header is read from the request by the check.
            authorization: Credential::Absent,
            forwarded: forwarded_client_cert(headers),
            // The check continues the trace the proxy forwards in the headers.
            trace: TraceHeaders::default(),
            arrival: None,
        };
        let outcome = self.pipeline.check(call, http).await;
        let request_id = outcome.request_id;
        match outcome.result {
            Ok(checked) => {
                let upstream = render::upstream_headers(&checked);
                let mut response = Response::new(String::new());
                let headers = response.headers_mut();
                for (name, value) in upstream.set {
                    insert(headers, name, &value);
                }
                // Envoy's HTTP ext_authz removes the headers this names
                // from the upstream request: the identity header the grant
                // does not bind (a client's own copy would otherwise ride
                // along beside ours) and the JWT when the routes say so. The
                // other proxies cannot act on an answer's removals: their
                // snippets strip those headers themselves.
                if self.settings.original_request == OriginalRequest::Path
                    && !upstream.remove.is_empty()
                {
                    insert(headers, ENVOY_HEADERS_TO_REMOVE, &upstream.remove.join(","));
                }
                insert(headers, render::REQUEST_ID_HEADER, &request_id);
                response
            }
            Err(refusal) => denied(render::http_denial(&refusal, &request_id)),
        }
    }

    /// The answer to a check that did not finish within the server's
    /// deadline (`limits.request_timeout`): 504, the pipeline's audit event
    /// never written, as for a gRPC call the server cut off.
    pub fn deadline_passed() -> Response<String> {
        let request_id = crate::entropy::request_id();
        tracing::warn!(%request_id, "a forward-auth check did not finish within limits.request_timeout");
        denied(render::transport_http_denial(
            &TransportRefusal::DeadlineExceeded,
            &request_id,
        ))
    }
}

/// The header of an allowed answer that lists, comma-separated, the request
/// headers Envoy's HTTP ext_authz must remove before forwarding upstream.
pub const ENVOY_HEADERS_TO_REMOVE: &str = "x-envoy-auth-headers-to-remove";

/// An HTTP denial as the response the proxy relays to the client.
fn denied(denial: render::HttpDenial) -> Response<String> {
    let mut response = Response::new(denial.body);
    *response.status_mut() =
        StatusCode::from_u16(denial.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    for (name, value) in &denial.headers {
        insert(response.headers_mut(), name, value);
    }
    response
}

/// Sets header `name` to `value`; a value that is not a valid header (a
/// token is base64, uids are digits, accounts and rule names are checked
/// printable ASCII) is logged as a bug and left out rather than sent mangled.
fn insert(headers: &mut HeaderMap, name: &str, value: &str) {
    match (
        HeaderName::from_bytes(name.as_bytes()),
        HeaderValue::from_str(value),
    ) {
        (Ok(name), Ok(value)) => {
            headers.insert(name, value);
        }
        _ => tracing::error!(
            header = name,
            "a response header could not be encoded; left out"
        ),
    }
}

/// A plain-text answer outside the pipeline.
fn plain(status: StatusCode, body: &str) -> Response<String> {
    let mut response = Response::new(body.to_owned());
    *response.status_mut() = status;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// `x-forwarded-client-cert`, for the pipeline to read if the peer is a
/// trusted proxy and to ignore otherwise (as on the gRPC port).
fn forwarded_client_cert(headers: &HeaderMap) -> Forwarded<'_> {
    let mut values = headers.get_all(XFCC_HEADER).iter();
    match (values.next(), values.next()) {
        (None, _) => Forwarded::Nothing,
        (Some(value), None) => Forwarded::ClientCert(value.to_str().unwrap_or("\u{fffd}")),
        _ => Forwarded::ClientCertRepeated,
    }
}
