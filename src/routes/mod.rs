//! ext_authz routes: how an HTTP request that a proxy or mesh sidecar
//! forwards (method, path, headers) becomes a token request for the rules.
//!
//! This module knows HTTP routes and header names, not protobuf: the
//! `grpc::ext_authz` adapter reads Envoy's `CheckRequest` into plain values,
//! asks [`Routes::request`] for a policy request, and lets the gate decide
//! exactly as for the gRPC API.
//!
//! Route templates are matched segment by segment on the path (the query
//! string is ignored): a literal segment matches itself, `{channel}`,
//! `{uid}` and `{account}` capture one percent-decoded segment, `*` matches
//! one segment, and a final `**` matches the rest of the path (zero or more segments).
//!
//! `section.rs` holds the config section and its compilation; this file the
//! compiled routes, matching and the mapping to a policy request.

use crate::domain::{Account, ChannelName, Role, Uid};
use crate::policy::{self, Action, ChannelScope, Request, RequestedIdentity};

mod section;

pub use section::{ExtAuthzSection, RequestHeaders, ResponseHeaders, RouteSection, RoutesError};

/// Why an HTTP request cannot become a token request (an HTTP 400).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct BadHttpRequest {
    /// The header or path part at fault.
    pub field: String,
    /// What is wrong with it.
    pub message: String,
}

/// The compiled `[ext_authz]` section.
#[derive(Debug, Clone)]
pub struct Routes {
    jwt_header: String,
    remove_jwt_header: bool,
    request_headers: RequestHeaders,
    response_headers: ResponseHeaders,
    routes: Vec<Route>,
}

/// One compiled route.
#[derive(Debug, Clone)]
pub struct Route {
    /// The template as written, for logs.
    pub template: String,
    segments: Vec<Segment>,
    methods: Vec<String>,
    service: policy::Service,
    role: Role,
    project: Option<String>,
    /// Whether the route lets requests through without a token.
    pub pass_through: bool,
}

/// A route that matched, with what the path captured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Matched<'a> {
    /// The route's template.
    pub template: &'a str,
    /// Whether it is a pass-through route.
    pub pass_through: bool,
    captures: Vec<(Capture, String)>,
    route_index: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(String),
    Capture(Capture),
    AnyOne,
    Rest,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Capture {
    Channel,
    Uid,
    Account,
}

impl Routes {
    /// The request header that carries the caller's JWT, lowercase.
    pub fn jwt_header(&self) -> &str {
        &self.jwt_header
    }

    /// Whether the JWT header is removed from the upstream request.
    pub fn remove_jwt_header(&self) -> bool {
        self.remove_jwt_header
    }

    /// The names of the headers tokengate sets upstream.
    pub fn response_headers(&self) -> &ResponseHeaders {
        &self.response_headers
    }

    /// The first route that matches `method` and `path` (the query string is ignored).
    pub fn route(&self, method: &str, path: &str) -> Option<Matched<'_>> {
        let path = path.split(['?', '#']).next().unwrap_or("");
        let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        self.routes
            .iter()
            .enumerate()
            .find_map(|(route_index, route)| {
                if !route.methods.is_empty()
                    // Exact: HTTP methods are case-sensitive (RFC 9110 §9.1).
                    && !route.methods.iter().any(|m| m == method)
                {
                    return None;
                }
                let captures = route.capture(&segments)?;
                Some(Matched {
                    template: &route.template,
                    pass_through: route.pass_through,
                    captures,
                    route_index,
                })
            })
    }

    /// The policy request for a matched route; `header` looks up a lowercase request header.
    pub fn request(
        &self,
        matched: &Matched<'_>,
        header: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Request, BadHttpRequest> {
        let route = self
            .routes
            .get(matched.route_index)
            .ok_or_else(|| bad("route", "unknown route"))?;
        let captured = |c: Capture| {
            matched
                .captures
                .iter()
                .find(|(k, _)| *k == c)
                .map(|(_, v)| v.clone())
        };
        let names = &self.request_headers;
        let mut request = Request::new(Action::Issue(route.service));
        let channel = captured(Capture::Channel).or_else(|| header(&names.channel));
        request.channel = match channel {
            None if route.service == policy::Service::Rtc => {
                return Err(bad(
                    &names.channel,
                    "the route needs a channel (path or header)",
                ));
            }
            None => None,
            Some(text) if text == "*" => Some(ChannelScope::Wildcard),
            Some(text) => Some(ChannelScope::Named(
                ChannelName::parse(&text).map_err(|e| bad("channel", &e.to_string()))?,
            )),
        };
        request.role = Some(match header(&names.role) {
            Some(text) => Role::parse(&text).map_err(|e| bad(&names.role, &e.to_string()))?,
            None => route.role,
        });
        let uid = captured(Capture::Uid).or_else(|| header(&names.uid));
        let account = captured(Capture::Account).or_else(|| header(&names.account));
        request.identity = match (uid, account) {
            (Some(_), Some(_)) => {
                return Err(bad(&names.uid, "send a uid or an account, not both"));
            }
            (Some(text), None) => requested_uid(&text).map_err(|m| bad(&names.uid, &m))?,
            (None, Some(text)) => {
                if route.service == policy::Service::Rtc {
                    Account::parse(&text).map_err(|e| bad(&names.account, &e.to_string()))?;
                }
                RequestedIdentity::Account(text)
            }
            (None, None) => RequestedIdentity::FromJwt,
        };
        request.project = route.project.clone();
        Ok(request)
    }
}

impl Route {
    /// The captures if `path` fits the template.
    fn capture(&self, path: &[&str]) -> Option<Vec<(Capture, String)>> {
        let mut captures = Vec::new();
        for (i, segment) in self.segments.iter().enumerate() {
            match segment {
                Segment::Rest => return Some(captures),
                Segment::Literal(text) => {
                    if path.get(i)? != text {
                        return None;
                    }
                }
                Segment::AnyOne => {
                    path.get(i).filter(|s| !s.is_empty())?;
                }
                Segment::Capture(c) => {
                    let raw = path.get(i).filter(|s| !s.is_empty())?;
                    captures.push((*c, percent_decode(raw)?));
                }
            }
        }
        (path.len() == self.segments.len()).then_some(captures)
    }
}

/// A requested uid from text: 0 asks for the wildcard; anything else must be 1..=4294967295.
fn requested_uid(text: &str) -> Result<RequestedIdentity, String> {
    let n: u64 = text
        .parse()
        .map_err(|_| format!("{text:?} is not a decimal uid"))?;
    if n == 0 {
        return Ok(RequestedIdentity::AnyUid);
    }
    Uid::from_u64(n)
        .map(RequestedIdentity::Uid)
        .map_err(|e| e.to_string())
}

/// Refuses a path that proxies and upstreams may read differently from the
/// route matcher: dot segments (`.`, `..`, also percent-encoded), encoded
/// slashes and backslashes (`%2F`, `%5C`, `\`), empty segments (`//`), and
/// malformed escapes. A request such as `/public/../rooms/x/join` would
/// otherwise match a pass-through route here and reach a token route upstream.
/// Refusing beats normalising: tokengate cannot know how the upstream would
/// normalise, so any path two readers could disagree on never passes.
pub fn check_path(path: &str) -> Result<(), BadHttpRequest> {
    let path = path.split(['?', '#']).next().unwrap_or("");
    let rest = path
        .strip_prefix('/')
        .ok_or_else(|| bad("path", "must start with /"))?;
    let segments: Vec<&str> = rest.split('/').collect();
    for (i, segment) in segments.iter().enumerate() {
        let last = i + 1 == segments.len();
        if segment.is_empty() && !last {
            return Err(bad("path", "has an empty segment (//)"));
        }
        let lower = segment.to_ascii_lowercase();
        if lower.contains("%2f") || lower.contains("%5c") || segment.contains('\\') {
            return Err(bad("path", "has an encoded slash or a backslash"));
        }
        let decoded =
            percent_decode(segment).ok_or_else(|| bad("path", "has a malformed percent escape"))?;
        if decoded == "." || decoded == ".." {
            return Err(bad("path", "has a dot segment"));
        }
    }
    Ok(())
}

/// Decodes `%XX` escapes; `None` for a malformed escape or non-UTF-8 result.
fn percent_decode(segment: &str) -> Option<String> {
    let bytes = segment.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            // Two hex digits exactly: `from_str_radix` alone would also take
            // a sign, so `%+1` would decode although no proxy reads it so.
            let hex = segment
                .get(i + 1..i + 3)
                .filter(|hex| hex.bytes().all(|b| b.is_ascii_hexdigit()))?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

fn bad(field: &str, message: &str) -> BadHttpRequest {
    BadHttpRequest {
        field: field.to_owned(),
        message: message.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mesh(routes: &str) -> Routes {
        let text = format!("enabled = true\n{routes}");
        let section: ExtAuthzSection = toml::from_str(&text).unwrap();
        Routes::compile(&section, &["main"]).unwrap()
    }

    #[test]
    fn templates_match_segment_by_segment() {
        let m = mesh(
            r#"
[[routes]]
path = "/rooms/{channel}/join"
methods = ["post"]
role = "publisher"
[[routes]]
path = "/public/**"
pass_through = true
[[routes]]
path = "/users/{uid}/rooms/*"
"#,
        );
        let cases: &[(&str, &str, Option<&str>)] = &[
            (
                "POST",
                "/rooms/team-blue/join",
                Some("/rooms/{channel}/join"),
            ),
            ("GET", "/rooms/team-blue/join", None),
            (
                "POST",
                "/rooms/team-blue/join?x=1",
                Some("/rooms/{channel}/join"),
            ),
            ("POST", "/rooms//join", None),
            ("POST", "/rooms/a/b/join", None),
            ("GET", "/public/health/deep", Some("/public/**")),
            ("GET", "/public", Some("/public/**")),
            ("GET", "/publicity", None),
            ("GET", "/users/42/rooms/x", Some("/users/{uid}/rooms/*")),
            ("GET", "/elsewhere", None),
            // Methods are case-sensitive: a lowercase method is another method.
            ("post", "/rooms/team-blue/join", None),
        ];
        for (method, path, expected) in cases {
            let got = m.route(method, path).map(|r| r.template);
            assert_eq!(got, *expected, "{method} {path}");
        }
    }

    #[test]
    fn paths_that_readers_could_disagree_on_are_refused() {
        let refused = [
            "/public/../rooms/x/join",
            "/public/%2e%2e/rooms/x/join",
            "/public/%2E./rooms/x/join",
            "/public/./x",
            "/rooms/a%2Fb/join",
            "/rooms/a%2fb/join",
            "/rooms/a%5cb/join",
            "/rooms/a\\b/join",
            "/rooms//join",
            "/rooms/%zz/join",
            "/rooms/%+1/join",
            "/rooms/a%+2e/join",
            "rooms/x/join",
            "/..",
        ];
        for path in refused {
            let error = check_path(path).expect_err(path);
            assert_eq!(error.field, "path", "{path}");
        }
        let allowed = [
            "/rooms/team-blue/join",
            "/rooms/room%20one/join?x=../y",
            "/public/",
            "/public/a.b/..c/...",
            "/",
        ];
        for path in allowed {
            assert_eq!(check_path(path), Ok(()), "{path}");
        }
    }

    #[test]
    fn requests_take_path_then_headers_then_route_defaults() {
        let m = mesh("[[routes]]\npath = \"/rooms/{channel}/join\"\nrole = \"publisher\"\n");
        let matched = m.route("GET", "/rooms/room%20one/join").unwrap();
        let none = |_: &str| None;
        let request = m.request(&matched, &none).unwrap();
        assert_eq!(request.channel.unwrap().as_str(), "room one");
        assert_eq!(request.role, Some(Role::Publisher));
        assert_eq!(request.identity, RequestedIdentity::FromJwt);

        let headers = |name: &str| match name {
            "x-agora-role" => Some("subscriber".to_owned()),
            "x-agora-uid" => Some("0".to_owned()),
            _ => None,
        };
        let request = m.request(&matched, &headers).unwrap();
        assert_eq!(request.role, Some(Role::Subscriber));
        assert_eq!(request.identity, RequestedIdentity::AnyUid);
    }

    #[test]
    fn bad_requests_name_the_field() {
        let m = mesh("[[routes]]\npath = \"/rooms/{channel}/join\"\n");
        type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], &'a str);
        let cases: &[Case<'_>] = &[
            ("/rooms/bad%2Fslash/join", &[], "channel"),
            (
                "/rooms/ok/join",
                &[("x-agora-role", "admin")],
                "x-agora-role",
            ),
            (
                "/rooms/ok/join",
                &[("x-agora-uid", "4294967296")],
                "x-agora-uid",
            ),
            ("/rooms/ok/join", &[("x-agora-uid", "-1")], "x-agora-uid"),
            (
                "/rooms/ok/join",
                &[("x-agora-uid", "1"), ("x-agora-account", "a")],
                "x-agora-uid",
            ),
            (
                "/rooms/ok/join",
                &[("x-agora-account", "")],
                "x-agora-account",
            ),
        ];
        for (path, headers, field) in cases {
            let matched = m.route("GET", path).unwrap();
            let lookup = |name: &str| {
                headers
                    .iter()
                    .find(|(k, _)| *k == name)
                    .map(|(_, v)| (*v).to_owned())
            };
            let error = m.request(&matched, &lookup).unwrap_err();
            assert_eq!(error.field, *field, "{path} {headers:?}");
        }
    }

    #[test]
    fn config_errors_name_the_key() {
        let cases: &[(&str, &str)] = &[
            ("enabled = true", "ext_authz.routes"),
            ("[[routes]]\npath = \"rooms\"", "ext_authz.routes[0].path"),
            ("[[routes]]\npath = \"/a/**/b\"", "ext_authz.routes[0].path"),
            (
                "[[routes]]\npath = \"/a/x{channel}\"",
                "ext_authz.routes[0].path",
            ),
            (
                "[[routes]]\npath = \"/{channel}/{channel}\"",
                "ext_authz.routes[0].path",
            ),
            (
                "[[routes]]\npath = \"/a\"\nservice = \"fpa\"",
                "ext_authz.routes[0].service",
            ),
            (
                "[[routes]]\npath = \"/a\"\nrole = \"admin\"",
                "ext_authz.routes[0].role",
            ),
            (
                "[[routes]]\npath = \"/a\"\nproject = \"nope\"",
                "ext_authz.routes[0].project",
            ),
            (
                "[[routes]]\npath = \"/a\"\nmethods = [\"G T\"]",
                "ext_authz.routes[0].methods[0]",
            ),
            ("jwt_header = \"Authorization\"", "ext_authz.jwt_header"),
            ("jwt_header = \"x-agora-token\"", "ext_authz.jwt_header"),
        ];
        for (text, key) in cases {
            let section: ExtAuthzSection = toml::from_str(text).unwrap();
            let error = Routes::compile(&section, &["main"]).unwrap_err();
            assert_eq!(error.key, *key, "{text}");
        }
    }
}
