//! The `[ext_authz]` config section as written, and its compilation into
//! [`Routes`]: header names checked, route templates parsed, projects known.
//! Everything here runs once, at config load; a mistake is a `RoutesError`
//! naming the key.

use serde::Deserialize;

use super::{Capture, Route, Routes, Segment};
use crate::domain::Role;
use crate::policy;

/// An `[ext_authz]` setting that cannot be used; the key is named.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {message}")]
pub struct RoutesError {
    /// The dotted key, e.g. `ext_authz.routes[1].path`.
    pub key: String,
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
