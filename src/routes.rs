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

use serde::Deserialize;

use crate::domain::{Account, ChannelName, Role, Uid};
use crate::policy::{self, Action, ChannelScope, Request, RequestedIdentity};

/// An `[ext_authz]` setting that cannot be used; the key is named.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {message}")]
pub struct RoutesError {
    /// The dotted key, e.g. `ext_authz.routes[1].path`.
    pub key: String,
    /// What is wrong with it.
    pub message: String,
}

/// Why an HTTP request cannot become a token request (an HTTP 400).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct BadHttpRequest {
    /// The header or path part at fault.
    pub field: String,
    /// What is wrong with it.
    pub message: String,
}

/// The `[ext_authz]` config section. Off unless `enabled = true`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExtAuthzSection {
    /// Serve `envoy.service.auth.v3.Authorization/Check` on the gRPC port.
    #[serde(default)]
    pub enabled: bool,
    /// The request header that carries the caller's JWT as `Bearer <jwt>`.
    #[serde(default = "default_jwt_header")]
    pub jwt_header: String,
    /// Remove the JWT header from the upstream request once it is verified.
    #[serde(default)]
    pub remove_jwt_header: bool,
    /// The request headers a route may read.
    #[serde(default)]
    pub request_headers: RequestHeaders,
    /// The headers tokengate adds to an allowed upstream request.
    #[serde(default)]
    pub response_headers: ResponseHeaders,
    /// The routes, tried in order; the first that matches decides.
    #[serde(default)]
    pub routes: Vec<RouteSection>,
}

/// Request header names (lowercase, as Envoy sends them).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RequestHeaders {
    /// The channel, when the path does not capture it.
    pub channel: String,
    /// The role (`publisher` or `subscriber`), overriding the route's default.
    pub role: String,
    /// A requested numeric uid (0 asks for the wildcard).
    pub uid: String,
    /// A requested string account.
    pub account: String,
}

/// Names of the headers tokengate adds. Client-supplied copies are always
/// replaced or removed, so a caller can never spoof them.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ResponseHeaders {
    /// The Agora token.
    pub token: String,
    /// The bound numeric uid.
    pub uid: String,
    /// The bound string account (or RTM / Chat user id).
    pub account: String,
    /// When the token expires, unix seconds.
    pub expires_at: String,
    /// The rule that granted it.
    pub rule: String,
}

/// One route as written.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteSection {
    /// The path template, e.g. `/rooms/{channel}/join`.
    pub path: String,
    /// The HTTP methods it applies to; empty means any.
    #[serde(default)]
    pub methods: Vec<String>,
    /// The Agora service the token is for: `rtc` (default), `rtm` or `chat`.
    #[serde(default = "default_service")]
    pub service: String,
    /// The role asked for unless the role header says otherwise: `subscriber` (default) or `publisher`.
    #[serde(default)]
    pub role: Option<String>,
    /// The project to ask for; by default the matching rule's.
    #[serde(default)]
    pub project: Option<String>,
    /// Let the request through without a JWT or token (public routes).
    #[serde(default)]
    pub pass_through: bool,
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

impl Default for ExtAuthzSection {
    fn default() -> Self {
        Self {
            enabled: false,
            jwt_header: default_jwt_header(),
            remove_jwt_header: false,
            request_headers: RequestHeaders::default(),
            response_headers: ResponseHeaders::default(),
            routes: Vec::new(),
        }
    }
}

impl Default for RequestHeaders {
    fn default() -> Self {
        Self {
            channel: "x-agora-channel".into(),
            role: "x-agora-role".into(),
            uid: "x-agora-uid".into(),
            account: "x-agora-account".into(),
        }
    }
}

impl Default for ResponseHeaders {
    fn default() -> Self {
        Self {
            token: "x-agora-token".into(),
            uid: "x-agora-uid".into(),
            account: "x-agora-account".into(),
            expires_at: "x-agora-expires-at".into(),
            rule: "x-agora-rule".into(),
        }
    }
}

impl ResponseHeaders {
    /// Every header tokengate owns on the upstream request.
    pub fn all(&self) -> [&str; 5] {
        [
            &self.token,
            &self.uid,
            &self.account,
            &self.expires_at,
            &self.rule,
        ]
    }
}

impl Routes {
    /// Checks and compiles the section; `known_projects` are the configured project names.
    pub fn compile(
        section: &ExtAuthzSection,
        known_projects: &[&str],
    ) -> Result<Self, RoutesError> {
        let header_keys = [
            ("ext_authz.jwt_header", section.jwt_header.as_str()),
            (
                "ext_authz.request_headers.channel",
                &section.request_headers.channel,
            ),
            (
                "ext_authz.request_headers.role",
                &section.request_headers.role,
            ),
            (
                "ext_authz.request_headers.uid",
                &section.request_headers.uid,
            ),
            (
                "ext_authz.request_headers.account",
                &section.request_headers.account,
            ),
            (
                "ext_authz.response_headers.token",
                &section.response_headers.token,
            ),
            (
                "ext_authz.response_headers.uid",
                &section.response_headers.uid,
            ),
            (
                "ext_authz.response_headers.account",
                &section.response_headers.account,
            ),
            (
                "ext_authz.response_headers.expires_at",
                &section.response_headers.expires_at,
            ),
            (
                "ext_authz.response_headers.rule",
                &section.response_headers.rule,
            ),
        ];
        for (key, name) in header_keys {
            check_header_name(key, name)?;
        }
        let outputs = section.response_headers.all();
        if outputs.contains(&section.jwt_header.as_str()) {
            return Err(error(
                "ext_authz.jwt_header",
                "must differ from every response header",
            ));
        }
        if section.enabled && section.routes.is_empty() {
            return Err(error(
                "ext_authz.routes",
                "at least one route is required when enabled",
            ));
        }
        let routes = section
            .routes
            .iter()
            .enumerate()
            .map(|(i, r)| Route::compile(r, &format!("ext_authz.routes[{i}]"), known_projects))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            jwt_header: section.jwt_header.clone(),
            remove_jwt_header: section.remove_jwt_header,
            request_headers: section.request_headers.clone(),
            response_headers: section.response_headers.clone(),
            routes,
        })
    }

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
    fn compile(section: &RouteSection, key: &str, projects: &[&str]) -> Result<Self, RoutesError> {
        let path_key = format!("{key}.path");
        if !section.path.starts_with('/') {
            return Err(error(&path_key, "must start with /"));
        }
        let raw: Vec<&str> = section.path.trim_start_matches('/').split('/').collect();
        let mut segments = Vec::with_capacity(raw.len());
        for (i, text) in raw.iter().enumerate() {
            let segment = match *text {
                "{channel}" => Segment::Capture(Capture::Channel),
                "{uid}" => Segment::Capture(Capture::Uid),
                "{account}" => Segment::Capture(Capture::Account),
                "*" => Segment::AnyOne,
                "**" if i + 1 == raw.len() => Segment::Rest,
                "**" => return Err(error(&path_key, "`**` may only end a template")),
                t if t.contains(['{', '}', '*']) => {
                    return Err(error(
                        &path_key,
                        &format!(
                            "segment {t:?}: use a whole-segment {{channel}}, {{uid}}, {{account}}, * or a final **"
                        ),
                    ));
                }
                t => Segment::Literal(t.to_owned()),
            };
            if let Segment::Capture(c) = segment
                && segments.contains(&Segment::Capture(c))
            {
                return Err(error(&path_key, &format!("captures {text} twice")));
            }
            segments.push(segment);
        }
        let service = match section.service.as_str() {
            "rtc" => policy::Service::Rtc,
            "rtm" => policy::Service::Rtm,
            "chat" => policy::Service::Chat,
            other => {
                return Err(error(
                    &format!("{key}.service"),
                    &format!("{other:?} is not rtc, rtm or chat"),
                ));
            }
        };
        let role = match &section.role {
            None => Role::Subscriber,
            Some(text) => {
                Role::parse(text).map_err(|e| error(&format!("{key}.role"), &e.to_string()))?
            }
        };
        if let Some(project) = &section.project
            && !projects.contains(&project.as_str())
        {
            return Err(error(
                &format!("{key}.project"),
                &format!("{project:?} is not a configured project"),
            ));
        }
        let mut methods = Vec::with_capacity(section.methods.len());
        for (i, method) in section.methods.iter().enumerate() {
            if method.is_empty() || !method.bytes().all(|b| b.is_ascii_alphabetic()) {
                return Err(error(
                    &format!("{key}.methods[{i}]"),
                    "is not an HTTP method",
                ));
            }
            methods.push(method.to_ascii_uppercase());
        }
        Ok(Self {
            template: section.path.clone(),
            segments,
            methods,
            service,
            role,
            project: section.project.clone(),
            pass_through: section.pass_through,
        })
    }

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
            let hex = segment.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

fn check_header_name(key: &str, name: &str) -> Result<(), RoutesError> {
    let valid = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
    if valid {
        Ok(())
    } else {
        Err(error(
            key,
            &format!("{name:?} is not a lowercase header name"),
        ))
    }
}

fn default_jwt_header() -> String {
    "authorization".into()
}

fn default_service() -> String {
    "rtc".into()
}

fn error(key: &str, message: &str) -> RoutesError {
    RoutesError {
        key: key.to_owned(),
        message: message.to_owned(),
    }
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
