//! Envoy ext_authz helpers: `CheckRequest`s shaped as Envoy's `ext_authz`
//! filter sends them, a config with an `[ext_authz]` section, and a flat view
//! of `CheckResponse`s for assertions.
//!
//! The request mirrors what Envoy 1.3x puts on the wire for an HTTP/2
//! request behind an Istio sidecar: `attributes.request.http` with `id`
//! (the `x-request-id`), method, raw path with its query, host, scheme,
//! protocol and lowercased headers including the `:authority`, `:method`,
//! `:path` and `:scheme` pseudo-headers; the source and destination peers
//! carry socket addresses and SPIFFE principals.

use std::collections::HashMap;

use envoy_types::pb::envoy::config::core::v3::address::Address as AddressKind;
use envoy_types::pb::envoy::config::core::v3::socket_address::PortSpecifier;
use envoy_types::pb::envoy::config::core::v3::{Address, HeaderMap, HeaderValue, SocketAddress};
use envoy_types::pb::envoy::service::auth::v3::attribute_context::{HttpRequest, Peer, Request};
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use envoy_types::pb::envoy::service::auth::v3::check_response::HttpResponse;
use envoy_types::pb::envoy::service::auth::v3::{AttributeContext, CheckRequest, CheckResponse};
use serde_json::Value;
use tonic::transport::Channel;

use super::server::{TestServer, config_text};
use super::{JwksServer, TestKey};

/// The SPIFFE id of the calling workload (the frontend's sidecar).
pub const SOURCE_PRINCIPAL: &str = "spiffe://cluster.local/ns/web/sa/frontend";
/// The SPIFFE id of the protected workload (the rooms service).
pub const DESTINATION_PRINCIPAL: &str = "spiffe://cluster.local/ns/rooms/sa/rooms-api";
/// The `:authority` of the protected service.
pub const HOST: &str = "rooms.example.com";
/// The `x-request-id` Envoy generated.
pub const REQUEST_ID: &str = "6f1d2c7e-8a41-4b9e-9a53-2f0c1d7b5e10";

/// The append action Envoy reads as "overwrite if present, else add" (`OVERWRITE_IF_EXISTS_OR_ADD`).
pub const OVERWRITE_IF_EXISTS_OR_ADD: i32 = 2;

/// An `[ext_authz]` section with the routes every ext_authz test uses, after `extra` keys.
///
/// * `/rooms/{channel}/join` (GET, POST): channel from the path, role subscriber.
/// * `/stage/{channel}`: role publisher by default.
/// * `/calls/**`: channel from the `x-agora-channel` header.
/// * `/public/**`: pass-through.
pub fn ext_authz_section(extra: &str) -> String {
    format!(
        r#"
[ext_authz]
enabled = true
{extra}

[[ext_authz.routes]]
path = "/rooms/{{channel}}/join"
methods = ["GET", "POST"]

[[ext_authz.routes]]
path = "/stage/{{channel}}"
role = "publisher"

[[ext_authz.routes]]
path = "/calls/**"

[[ext_authz.routes]]
path = "/public/**"
pass_through = true
"#
    )
}

/// Starts a server whose config is the test config with `rules` and then `ext_authz` (TOML).
pub async fn start(rules: &str, ext_authz: &str) -> TestServer {
    let (jwks, es256, rs256) = super::server::test_keys().await;
    let text = format!("{}\n{ext_authz}", config_text(&jwks.jwks_url(), rules));
    TestServer::start_with(text, jwks, es256, rs256).await
}

/// An Authorization client connected to `server`.
pub async fn client(server: &TestServer) -> AuthorizationClient<Channel> {
    AuthorizationClient::new(server.channel().await)
}

/// A `CheckRequest` as Envoy sends it for `method path` with the client's `headers`
/// (names lowercased by the caller, as Envoy does; pseudo-headers are added here).
pub fn envoy_check(method: &str, path: &str, headers: &[(&str, &str)]) -> CheckRequest {
    let mut map: HashMap<String, String> = [
        (":authority", HOST),
        (":method", method),
        (":path", path),
        (":scheme", "https"),
        ("x-request-id", REQUEST_ID),
        ("x-forwarded-proto", "https"),
        ("user-agent", "Mozilla/5.0 (X11; Linux x86_64)"),
        ("accept", "application/json"),
        (
            "x-forwarded-client-cert",
            "By=spiffe://cluster.local/ns/rooms/sa/rooms-api;URI=spiffe://cluster.local/ns/web/sa/frontend",
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    for (name, value) in headers {
        assert_eq!(
            *name,
            name.to_ascii_lowercase(),
            "Envoy lowercases header names"
        );
        map.insert((*name).to_owned(), (*value).to_owned());
    }
    CheckRequest {
        attributes: Some(AttributeContext {
            source: Some(peer("10.8.3.17", 51_734, SOURCE_PRINCIPAL)),
            destination: Some(peer("10.8.5.2", 8080, DESTINATION_PRINCIPAL)),
            request: Some(Request {
                time: Some(prost_types_timestamp()),
                http: Some(HttpRequest {
                    id: REQUEST_ID.to_owned(),
                    method: method.to_owned(),
                    headers: map,
                    path: path.to_owned(),
                    host: HOST.to_owned(),
                    scheme: "https".to_owned(),
                    protocol: "HTTP/2".to_owned(),
                    size: -1,
                    ..Default::default()
                }),
            }),
            ..Default::default()
        }),
    }
}

/// The same request as Envoy sends it with `encode_raw_headers: true`: the
/// headers travel in `header_map` as raw bytes (key and `raw_value` only) and
/// the `headers` map is empty.
pub fn envoy_check_raw(method: &str, path: &str, headers: &[(&str, &str)]) -> CheckRequest {
    let mut request = envoy_check(method, path, headers);
    let http = request
        .attributes
        .as_mut()
        .and_then(|a| a.request.as_mut())
        .and_then(|r| r.http.as_mut())
        .expect("an HTTP request");
    let mut raw: Vec<HeaderValue> = std::mem::take(&mut http.headers)
        .into_iter()
        .map(|(key, value)| HeaderValue {
            key,
            raw_value: value.into_bytes(),
            ..Default::default()
        })
        .collect();
    raw.sort_by(|a, b| a.key.cmp(&b.key));
    http.header_map = Some(HeaderMap { headers: raw });
    request
}

/// A flat view of a `CheckResponse`.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// OK: headers set upstream `(name, value, append_action)` and headers removed.
    Ok {
        /// The headers set on the upstream request.
        set: Vec<(String, String, i32)>,
        /// The headers removed from the upstream request.
        removed: Vec<String>,
    },
    /// Denied: the HTTP status, the response headers and the parsed JSON body.
    Denied {
        /// The gRPC status code in `CheckResponse.status`.
        grpc_code: i32,
        /// The HTTP status sent to the client.
        http_status: i32,
        /// The response headers `(name, value)`.
        headers: Vec<(String, String)>,
        /// The body, as raw text.
        body: String,
    },
}

impl Verdict {
    /// The value set for `name` on an OK verdict, with its append action.
    pub fn set_header(&self, name: &str) -> Option<(&str, i32)> {
        match self {
            Verdict::Ok { set, .. } => set
                .iter()
                .find(|(n, _, _)| n == name)
                .map(|(_, v, a)| (v.as_str(), *a)),
            Verdict::Denied { .. } => None,
        }
    }

    /// The denial's HTTP status and `error` from the JSON body; panics on OK.
    pub fn denial(&self) -> (i32, String) {
        match self {
            Verdict::Denied {
                http_status, body, ..
            } => {
                let json: Value = serde_json::from_str(body).expect("the deny body is JSON");
                let object = json.as_object().expect("the deny body is an object");
                assert_eq!(
                    object.len(),
                    1,
                    "the body is only {{\"error\": ...}}: {body}"
                );
                let error = json["error"].as_str().expect("error is a string");
                (*http_status, error.to_owned())
            }
            Verdict::Ok { .. } => panic!("expected a denial, got {self:?}"),
        }
    }
}

/// Flattens `response`, checking that its gRPC status agrees with its HTTP response.
pub fn verdict(response: CheckResponse) -> Verdict {
    let grpc_code = response.status.as_ref().map_or(0, |s| s.code);
    match response.http_response {
        Some(HttpResponse::OkResponse(ok)) => {
            assert_eq!(grpc_code, 0, "an OK response carries status OK");
            Verdict::Ok {
                set: ok
                    .headers
                    .into_iter()
                    .map(|option| {
                        let header = option.header.expect("a header option has a header");
                        (header.key, header.value, option.append_action)
                    })
                    .collect(),
                removed: ok.headers_to_remove,
            }
        }
        Some(HttpResponse::DeniedResponse(denied)) => {
            assert_ne!(grpc_code, 0, "a denial never carries status OK");
            Verdict::Denied {
                grpc_code,
                http_status: denied.status.expect("a denial has an HTTP status").code,
                headers: denied
                    .headers
                    .into_iter()
                    .map(|option| {
                        let header = option.header.expect("a header option has a header");
                        (header.key, header.value)
                    })
                    .collect(),
                body: denied.body,
            }
        }
        Some(HttpResponse::ErrorResponse(error)) => panic!("unexpected error response {error:?}"),
        None => panic!("a check response without an HTTP response"),
    }
}

fn peer(ip: &str, port: u32, principal: &str) -> Peer {
    Peer {
        address: Some(Address {
            address: Some(AddressKind::SocketAddress(SocketAddress {
                address: ip.to_owned(),
                port_specifier: Some(PortSpecifier::PortValue(port)),
                ..Default::default()
            })),
        }),
        principal: principal.to_owned(),
        ..Default::default()
    }
}

/// The request time Envoy stamps (the wall clock; tokengate does not read it).
fn prost_types_timestamp() -> envoy_types::pb::google::protobuf::Timestamp {
    envoy_types::pb::google::protobuf::Timestamp {
        seconds: i64::try_from(super::unix_now()).expect("the clock fits i64"),
        nanos: 0,
    }
}
