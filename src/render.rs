//! The one place a [`Refusal`] becomes wire: a `tonic::Status` with
//! `google.rpc` details for gRPC callers, and an HTTP denial (status code,
//! headers, small JSON body) for ext_authz and forward-auth. Both renderings
//! live side by side so that the two transports can never disagree: the
//! README's error table is checked against them by a test below.
//!
//! This is also the only module that constructs a `tonic::Status`. Every
//! refusal carries `google.rpc.RequestInfo` with the request id, and messages
//! never contain a JWT, a certificate or a token.

use std::collections::HashMap;
use std::time::Duration;

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, FieldViolation, QuotaViolation, StatusExt};

use crate::domain::RtcIdentity;
use crate::identity::AuthError;
use crate::pipeline::{Checked, Refusal};
use crate::policy::BoundIdentity;

/// The `ErrorInfo.domain` of every error tokengate returns.
pub const ERROR_DOMAIN: &str = "tokengate.v1";

/// How long a shed call is told to wait: long enough for the calls in
/// flight to finish, short enough not to lose the client.
const OVERLOAD_RETRY: Duration = Duration::from_secs(1);

/// `wait` in whole seconds, rounded up, at least 1.
fn whole_seconds_up(wait: Duration) -> u64 {
    let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    secs.max(1)
}

/// A refusal as an HTTP response, for a proxy to send to the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpDenial {
    /// The HTTP status code.
    pub status: u16,
    /// Response headers (lowercase names).
    pub headers: Vec<(&'static str, String)>,
    /// `{"error": reason}`.
    pub body: String,
}

/// The gRPC status for `refusal`. `request_id` ties it to the audit event and logs.
pub fn status(refusal: &Refusal, request_id: &str) -> Status {
    let mut details = ErrorDetails::new();
    details.set_request_info(request_id, "");
    let message = match refusal {
        Refusal::BadInput(invalid) => {
            let violations: Vec<FieldViolation> = invalid
                .violations
                .iter()
                .map(|(field, description)| FieldViolation::new(field.clone(), description.clone()))
                .collect();
            details.set_bad_request(violations);
            invalid.to_string()
        }
        Refusal::Denied(denial) => {
            let mut metadata = HashMap::new();
            if let Some(rule) = &denial.rule {
                metadata.insert("rule".to_owned(), rule.clone());
            }
            if let Some(fact) = &denial.fact {
                metadata.insert("fact".to_owned(), fact.clone());
            }
            details.set_error_info(refusal.reason(), ERROR_DOMAIN, metadata);
            format!("{}: {}", denial.reason.as_str(), denial.detail)
        }
        Refusal::Unauthenticated(error) => {
            details.set_error_info(refusal.reason(), ERROR_DOMAIN, HashMap::new());
            error.to_string()
        }
        Refusal::NoRoute { .. } => {
            details.set_error_info(refusal.reason(), ERROR_DOMAIN, HashMap::new());
            "no ext_authz route matches the request".to_owned()
        }
        Refusal::Limited(exceeded) => {
            let names = exceeded.names();
            let mut metadata = HashMap::new();
            metadata.insert("limits".to_owned(), names.clone());
            details.set_error_info(refusal.reason(), ERROR_DOMAIN, metadata);
            // The exact wait GCRA computed, so a client that honours
            // RetryInfo is admitted on its first retry.
            details.set_retry_info(Some(exceeded.retry_after));
            let violations = exceeded
                .limits
                .iter()
                .map(|name| {
                    QuotaViolation::new(
                        format!("limit:{name}"),
                        format!("over the rate limit {name:?}"),
                    )
                })
                .collect::<Vec<_>>();
            details.set_quota_failure(violations);
            format!(
                "rate limited by {names}; retry after {} ms",
                exceeded.retry_after.as_millis()
            )
        }
        Refusal::Overloaded { max_in_flight } => {
            details.set_error_info(refusal.reason(), ERROR_DOMAIN, HashMap::new());
            details.set_retry_info(Some(OVERLOAD_RETRY));
            format!("overloaded: {max_in_flight} calls already in flight; retry later")
        }
        Refusal::Unavailable {
            detail,
            retry_after_secs,
            ..
        } => {
            details.set_error_info(refusal.reason(), ERROR_DOMAIN, HashMap::new());
            details.set_retry_info(Some(Duration::from_secs(u64::from(*retry_after_secs))));
            detail.clone()
        }
        Refusal::Internal(_) => {
            details.set_error_info(refusal.reason(), ERROR_DOMAIN, HashMap::new());
            format!("internal error; request id {request_id}")
        }
    };
    let mut status = Status::with_error_details(grpc_code(refusal), message, details);
    tag_request_id(status.metadata_mut(), request_id);
    status
}

/// The response header that returns the request id to the caller.
pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// Adds `x-request-id` to a reply's metadata, so a user can hand it to an operator.
pub fn tag_request_id(metadata: &mut tonic::metadata::MetadataMap, request_id: &str) {
    // Request ids are hex, always valid metadata; a failure would only drop the header.
    if let Ok(value) = request_id.parse() {
        metadata.insert(REQUEST_ID_HEADER, value);
    }
}

/// The header of an HTTP denial that repeats the body's `error`, for the
/// proxies that answer the client themselves and drop the check's body
/// (nginx's `auth_request` copies headers into variables, never the body).
pub const ERROR_HEADER: &str = "x-tokengate-error";

/// The HTTP denial for `refusal`.
pub fn http_denial(refusal: &Refusal, request_id: &str) -> HttpDenial {
    let mut headers = vec![
        ("content-type", "application/json".to_owned()),
        (REQUEST_ID_HEADER, request_id.to_owned()),
        (ERROR_HEADER, refusal.reason().to_owned()),
    ];
    match refusal {
        // A 401 always carries a challenge (RFC 9110 §15.5.2); one for a
        // request without credentials has no error code (RFC 6750 §3.1).
        Refusal::Unauthenticated(AuthError::Missing) => {
            headers.push(("www-authenticate", "Bearer".to_owned()));
        }
        Refusal::Unauthenticated(_) => {
            headers.push((
                "www-authenticate",
                "Bearer error=\"invalid_token\"".to_owned(),
            ));
        }
        Refusal::Unavailable {
            retry_after_secs, ..
        } => headers.push(("retry-after", retry_after_secs.to_string())),
        // Retry-After is whole seconds (RFC 9110 §10.2.3): rounded up, so a
        // client that waits that long is admitted.
        Refusal::Limited(exceeded) => headers.push((
            "retry-after",
            whole_seconds_up(exceeded.retry_after).to_string(),
        )),
        Refusal::Overloaded { .. } => {
            headers.push(("retry-after", whole_seconds_up(OVERLOAD_RETRY).to_string()))
        }
        _ => {}
    }
    // The body stays minimal; the request id travels in `x-request-id`.
    let body = serde_json::json!({ "error": refusal.reason() });
    HttpDenial {
        status: http_status(refusal),
        headers,
        body: body.to_string(),
    }
}

/// What an allowed HTTP check does to the upstream request: the headers it
/// sets (each replacing any copy the client sent) and the ones it removes.
/// Envoy's gRPC `Check` and forward-auth both answer from this, so the two
/// cannot disagree on which headers a grant owns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamHeaders<'a> {
    /// Set, overwriting: the token, the bound identity, expiry and rule.
    pub set: Vec<(&'a str, String)>,
    /// Removed: the identity header this grant does not bind (so a client
    /// cannot slip a uid in next to our account), the JWT header when the
    /// routes say so, and every header we own on a pass-through route.
    pub remove: Vec<&'a str>,
}

/// The upstream headers of an allowed check.
pub fn upstream_headers(checked: &Checked) -> UpstreamHeaders<'_> {
    let (issued, routes) = match checked {
        Checked::Allowed { issued, routes, .. } => (issued, routes),
        Checked::PassThrough { routes, .. } => {
            return UpstreamHeaders {
                set: Vec::new(),
                remove: routes.response_headers().all().to_vec(),
            };
        }
    };
    let names = routes.response_headers();
    let mut set = vec![
        (names.token.as_str(), issued.token.clone()),
        (names.expires_at.as_str(), issued.expires_at.to_string()),
        (names.rule.as_str(), issued.rule().to_owned()),
    ];
    let mut remove = Vec::with_capacity(2);
    match issued.grant.identity() {
        BoundIdentity::Rtc(RtcIdentity::Uid(uid)) => {
            set.push((&names.uid, uid.get().to_string()));
            remove.push(names.account.as_str());
        }
        BoundIdentity::Rtc(RtcIdentity::AnyUid) => {
            set.push((&names.uid, "0".to_owned()));
            remove.push(names.account.as_str());
        }
        BoundIdentity::Rtc(RtcIdentity::Account(account)) => {
            set.push((&names.account, account.as_str().to_owned()));
            remove.push(names.uid.as_str());
        }
        BoundIdentity::User(user) => {
            set.push((&names.account, user.as_str().to_owned()));
            remove.push(names.uid.as_str());
        }
        BoundIdentity::App => {
            remove.push(names.uid.as_str());
            remove.push(names.account.as_str());
        }
    }
    if routes.remove_jwt_header() {
        remove.push(routes.jwt_header());
    }
    UpstreamHeaders { set, remove }
}

/// A call the gRPC transport refused before the pipeline saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TransportRefusal {
    /// The request message cannot be read: malformed protobuf, invalid UTF-8
    /// in a string field, a compressed flag without `grpc-encoding`, or no
    /// message at all. The caller's fault, so never INTERNAL.
    Malformed(String),
    /// The request message is larger than `limits.max_message_size`.
    TooLarge(String),
    /// The call did not finish within the server's deadline (or the caller's
    /// shorter `grpc-timeout`).
    DeadlineExceeded,
}

impl TransportRefusal {
    /// The `ErrorInfo.reason`.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Malformed(_) => "malformed_message",
            Self::TooLarge(_) => "message_too_large",
            Self::DeadlineExceeded => "deadline_exceeded",
        }
    }

    /// The gRPC code.
    pub fn code(&self) -> Code {
        match self {
            Self::Malformed(_) => Code::InvalidArgument,
            Self::TooLarge(_) => Code::ResourceExhausted,
            Self::DeadlineExceeded => Code::DeadlineExceeded,
        }
    }
}

/// What tonic's codec says when the caller sent a request it cannot read.
/// tonic answers these with INTERNAL (or OUT_OF_RANGE for the size limit),
/// which the README reserves for server bugs.
const MALFORMED_MESSAGE_PREFIXES: [&str; 5] = [
    "failed to decode Protobuf message",
    "protocol error: received message with",
    "Missing request message",
    "Unexpected EOF decoding stream",
    "Error decompressing",
];
/// tonic's message for a request over `max_decoding_message_size`.
const TOO_LARGE_PREFIX: &str = "Error, decoded message length too large";

/// Reads a gRPC response's headers: when the response is one of tonic's own
/// codec refusals of the request (a trailers-only reply with no request id,
/// so it never came through [`status`]), the refusal it stands for.
pub fn transport_refusal(headers: &tonic::codegen::http::HeaderMap) -> Option<TransportRefusal> {
    if headers.contains_key(REQUEST_ID_HEADER) {
        return None;
    }
    let status = Status::from_header_map(headers)?;
    let message = status.message();
    match status.code() {
        Code::Internal
            if MALFORMED_MESSAGE_PREFIXES
                .iter()
                .any(|prefix| message.starts_with(prefix)) =>
        {
            Some(TransportRefusal::Malformed(message.to_owned()))
        }
        Code::OutOfRange if message.starts_with(TOO_LARGE_PREFIX) => {
            Some(TransportRefusal::TooLarge(message.to_owned()))
        }
        _ => None,
    }
}

/// The gRPC status for a transport refusal, with `ErrorInfo`, `RequestInfo`
/// and `x-request-id` as every pipeline refusal has.
pub fn transport_status(refusal: &TransportRefusal, request_id: &str) -> Status {
    let mut details = ErrorDetails::new();
    details.set_request_info(request_id, "");
    details.set_error_info(refusal.reason(), ERROR_DOMAIN, HashMap::new());
    let message = match refusal {
        // tonic's description names the problem and never echoes the payload.
        TransportRefusal::Malformed(detail) => format!("malformed request message: {detail}"),
        TransportRefusal::TooLarge(detail) => format!("request message too large: {detail}"),
        TransportRefusal::DeadlineExceeded => {
            "the server's deadline for this call passed".to_owned()
        }
    };
    let mut status = Status::with_error_details(refusal.code(), message, details);
    tag_request_id(status.metadata_mut(), request_id);
    status
}

/// A transport refusal as an HTTP denial (the forward-auth port's own
/// deadline): 504 for the deadline, with the same body and headers as
/// every other denial.
pub fn transport_http_denial(refusal: &TransportRefusal, request_id: &str) -> HttpDenial {
    let status = match refusal {
        TransportRefusal::Malformed(_) => 400,
        TransportRefusal::TooLarge(_) => 413,
        TransportRefusal::DeadlineExceeded => 504,
    };
    let reason = refusal.reason();
    HttpDenial {
        status,
        headers: vec![
            ("content-type", "application/json".to_owned()),
            (REQUEST_ID_HEADER, request_id.to_owned()),
            (ERROR_HEADER, reason.to_owned()),
        ],
        body: serde_json::json!({ "error": reason }).to_string(),
    }
}

/// [`transport_status`] as a trailers-only gRPC HTTP response, for the
/// server's tower layer, which works on HTTP responses.
pub fn transport_response(
    refusal: &TransportRefusal,
    request_id: &str,
) -> tonic::codegen::http::Response<tonic::body::Body> {
    transport_status(refusal, request_id).into_http()
}

/// The OK status of an allowed ext_authz check.
pub fn allowed() -> Status {
    Status::ok("")
}

/// The health protocol's answer for a service it does not report on
/// (`grpc.health.v1` says NOT_FOUND).
pub fn unknown_health_service() -> Status {
    Status::not_found("unknown service")
}

/// The gRPC code of each refusal.
pub fn grpc_code(refusal: &Refusal) -> Code {
    match refusal {
        Refusal::Unauthenticated(_) => Code::Unauthenticated,
        Refusal::Denied(_) | Refusal::NoRoute { .. } => Code::PermissionDenied,
        Refusal::BadInput(_) => Code::InvalidArgument,
        Refusal::Limited(_) | Refusal::Overloaded { .. } => Code::ResourceExhausted,
        Refusal::Unavailable { .. } => Code::Unavailable,
        Refusal::Internal(_) => Code::Internal,
    }
}

/// The HTTP status of each refusal.
pub fn http_status(refusal: &Refusal) -> u16 {
    match refusal {
        Refusal::Unauthenticated(_) => 401,
        Refusal::Denied(_) | Refusal::NoRoute { .. } => 403,
        Refusal::BadInput(_) => 400,
        Refusal::Limited(_) => 429,
        // Shedding is the server's state, not the client's rate: 503, as
        // Envoy's own overload manager answers.
        Refusal::Overloaded { .. } => 503,
        Refusal::Unavailable { .. } => 503,
        Refusal::Internal(_) => 500,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::InvalidRequest;
    use crate::policy::{Denial, DenyReason};

    /// One refusal of each kind, with every reason it can carry.
    fn every_refusal() -> Vec<(&'static str, Vec<Refusal>)> {
        let auth = [
            AuthError::Missing,
            AuthError::Malformed("x"),
            AuthError::TooLarge { size: 2, max: 1 },
            AuthError::UnknownIssuer,
            AuthError::UnknownKey { issuer: "a".into() },
            AuthError::AlgorithmNotAllowed,
            AuthError::BadSignature,
            AuthError::Expired,
            AuthError::NotYetValid,
            AuthError::IssuedInFuture,
            AuthError::BadIssuer,
            AuthError::BadAudience,
            AuthError::MissingClaim("email".into()),
            AuthError::LifetimeTooLong,
        ];
        let denials = DenyReason::ALL
            .into_iter()
            .filter(|r| *r != DenyReason::UnknownProject)
            .map(|reason| {
                Refusal::Denied(Denial {
                    reason,
                    rule: Some("r".into()),
                    detail: "d".into(),
                    fact: None,
                })
            });
        vec![
            (
                "unauthenticated",
                auth.into_iter().map(Refusal::Unauthenticated).collect(),
            ),
            ("denied", denials.collect()),
            (
                "no route",
                vec![Refusal::NoRoute {
                    method: "GET".into(),
                    path: "/x".into(),
                }],
            ),
            (
                "bad input",
                vec![Refusal::BadInput(InvalidRequest::field("channel", "empty"))],
            ),
            (
                "rate limited",
                vec![Refusal::Limited(crate::limits::Exceeded {
                    limits: vec!["per-caller".into()],
                    retry_after: Duration::from_millis(250),
                })],
            ),
            ("overloaded", vec![Refusal::Overloaded { max_in_flight: 8 }]),
            (
                "unavailable",
                vec![
                    Refusal::from(AuthError::KeysNotLoaded { issuer: "a".into() }),
                    Refusal::from(AuthError::KeysExpired { issuer: "a".into() }),
                    Refusal::Unavailable {
                        reason: "limits_unavailable",
                        detail: "d".into(),
                        retry_after_secs: 1,
                    },
                ],
            ),
            ("internal", vec![Refusal::Internal("bug".into())]),
        ]
    }

    /// The README's "Errors" table: `| refusal | gRPC code | HTTP | reasons |`.
    fn readme_rows() -> Vec<(String, String, u16, Vec<String>)> {
        let readme = include_str!("../README.md");
        let section = readme
            .split("\n## Errors\n")
            .nth(1)
            .and_then(|rest| rest.split("\n## ").next())
            .unwrap_or_default();
        section
            .lines()
            .filter(|l| l.starts_with("| `") || l.starts_with("| "))
            .filter_map(|line| {
                let cells: Vec<&str> = line.trim_matches('|').split('|').map(str::trim).collect();
                let http = cells.get(2)?.trim_matches('`').parse::<u16>().ok()?;
                let reasons = cells
                    .get(3)?
                    .split('`')
                    .skip(1)
                    .step_by(2)
                    .map(str::to_owned)
                    .collect();
                Some((
                    cells[0].to_owned(),
                    cells[1].trim_matches('`').to_owned(),
                    http,
                    reasons,
                ))
            })
            .collect()
    }

    fn code_name(code: Code) -> String {
        // `Code::PermissionDenied` -> `PERMISSION_DENIED`, as the README writes it.
        let debug = format!("{code:?}");
        let mut out = String::new();
        for (i, c) in debug.chars().enumerate() {
            if c.is_uppercase() && i > 0 {
                out.push('_');
            }
            out.push(c.to_ascii_uppercase());
        }
        out
    }

    #[test]
    fn the_readme_error_table_is_what_the_code_renders() {
        let rows = readme_rows();
        assert_eq!(
            rows.len(),
            every_refusal().len(),
            "one README row per refusal kind: {rows:?}"
        );
        for (kind, refusals) in every_refusal() {
            let row = rows
                .iter()
                .find(|(name, ..)| name == kind)
                .unwrap_or_else(|| panic!("README has no row for {kind:?}: {rows:?}"));
            for refusal in &refusals {
                assert_eq!(code_name(grpc_code(refusal)), row.1, "{kind}: {refusal:?}");
                assert_eq!(http_status(refusal), row.2, "{kind}: {refusal:?}");
                assert!(
                    row.3.iter().any(|r| r == refusal.reason()),
                    "{kind}: README lacks reason {:?}",
                    refusal.reason()
                );
                let status = status(refusal, "rid");
                assert_eq!(status.code(), grpc_code(refusal));
                let denial = http_denial(refusal, "rid");
                assert_eq!(denial.status, http_status(refusal));
            }
            // And the README lists no reason the code cannot produce.
            for reason in &row.3 {
                assert!(
                    refusals.iter().any(|r| r.reason() == reason),
                    "{kind}: README reason {reason:?} is never produced"
                );
            }
        }
    }

    #[test]
    fn a_rate_limited_call_carries_the_exact_wait_and_the_limits() {
        let refusal = Refusal::Limited(crate::limits::Exceeded {
            limits: vec!["per-caller".into(), "per-tenant".into()],
            retry_after: Duration::from_millis(1_250),
        });
        let status = status(&refusal, "rid");
        assert_eq!(status.code(), Code::ResourceExhausted);
        let details = status.get_error_details();
        assert_eq!(
            details.retry_info().and_then(|r| r.retry_delay),
            Some(Duration::from_millis(1_250))
        );
        let subjects: Vec<_> = details
            .quota_failure()
            .map(|q| q.violations.iter().map(|v| v.subject.clone()).collect())
            .unwrap_or_default();
        assert_eq!(subjects, ["limit:per-caller", "limit:per-tenant"]);
        let info = details.error_info().unwrap();
        assert_eq!(info.reason, "rate_limited");
        assert_eq!(info.metadata["limits"], "per-caller,per-tenant");
        let denial = http_denial(&refusal, "rid");
        assert_eq!(denial.status, 429);
        // 1.25 s is 2 whole seconds: a client that waits 1 would be refused again.
        assert!(denial.headers.contains(&("retry-after", "2".to_owned())));
        assert_eq!(whole_seconds_up(Duration::from_millis(1)), 1);
        assert_eq!(whole_seconds_up(Duration::from_secs(3)), 3);
        assert_eq!(whole_seconds_up(Duration::ZERO), 1);
    }

    #[test]
    fn every_status_and_denial_carries_the_request_id_and_the_reason() {
        for (_, refusals) in every_refusal() {
            for refusal in refusals {
                let status = status(&refusal, "0123abcd");
                let details = status.get_error_details();
                assert_eq!(
                    details.request_info().map(|r| r.request_id.as_str()),
                    Some("0123abcd")
                );
                let denial = http_denial(&refusal, "0123abcd");
                let body: serde_json::Value = serde_json::from_str(&denial.body).unwrap();
                assert_eq!(body["error"], refusal.reason());
                assert!(
                    denial
                        .headers
                        .contains(&(REQUEST_ID_HEADER, "0123abcd".to_owned()))
                );
            }
        }
    }

    #[test]
    fn bad_input_carries_every_violation() {
        let mut error = InvalidRequest::field("channel", "must not be empty");
        error.push("uid", "out of range");
        let status = status(&Refusal::BadInput(error), "r");
        assert_eq!(status.code(), Code::InvalidArgument);
        let details = status.get_error_details();
        let fields: Vec<_> = details
            .bad_request()
            .unwrap()
            .field_violations
            .iter()
            .map(|v| v.field.clone())
            .collect();
        assert_eq!(fields, ["channel", "uid"]);
        assert_eq!(
            status.message(),
            "invalid request: channel: must not be empty; uid: out of range"
        );
    }

    #[test]
    fn denials_name_the_rule_and_internal_errors_only_the_request_id() {
        let denied = status(
            &Refusal::Denied(Denial {
                reason: DenyReason::RoleNotAllowed,
                rule: Some("lobby".into()),
                detail: "publisher is above max_role".into(),
                fact: None,
            }),
            "r",
        );
        let info = denied.get_error_details().error_info().unwrap().clone();
        assert_eq!(info.reason, "role_not_allowed");
        assert_eq!(info.domain, ERROR_DOMAIN);
        assert_eq!(info.metadata.get("rule").map(String::as_str), Some("lobby"));
        let internal = status(&Refusal::Internal("secret detail".into()), "abc");
        assert_eq!(internal.message(), "internal error; request id abc");
    }

    #[test]
    fn tonic_codec_refusals_become_the_callers_fault_and_ours_are_left_alone() {
        let rendered = |status: Status| status.into_http::<()>().headers().clone();
        let cases = [
            (
                Status::internal("failed to decode Protobuf message: invalid wire type"),
                Some(Code::InvalidArgument),
            ),
            (
                Status::internal(
                    "protocol error: received message with compressed-flag but no grpc-encoding was specified",
                ),
                Some(Code::InvalidArgument),
            ),
            (
                Status::internal("Missing request message."),
                Some(Code::InvalidArgument),
            ),
            (
                Status::out_of_range(
                    "Error, decoded message length too large: found 9 bytes, the limit is: 1 bytes",
                ),
                Some(Code::ResourceExhausted),
            ),
            (Status::internal("something else broke"), None),
            (Status::unimplemented(""), None),
        ];
        for (status, expected) in cases {
            let refusal = transport_refusal(&rendered(status.clone()));
            assert_eq!(
                refusal.as_ref().map(TransportRefusal::code),
                expected,
                "{status:?}"
            );
            if let Some(refusal) = refusal {
                let status = transport_status(&refusal, "0123abcd");
                assert_eq!(status.code(), refusal.code());
                let details = status.get_error_details();
                assert_eq!(
                    details.request_info().map(|r| r.request_id.as_str()),
                    Some("0123abcd")
                );
                // Rendered once, it is never rewritten again.
                assert_eq!(transport_refusal(&rendered(status)), None);
            }
        }
        // A pipeline refusal is never mistaken for a codec one.
        let ours = status(
            &Refusal::Internal("failed to decode Protobuf message".into()),
            "r",
        );
        assert_eq!(transport_refusal(&rendered(ours)), None);
        let deadline = transport_status(&TransportRefusal::DeadlineExceeded, "r");
        assert_eq!(deadline.code(), Code::DeadlineExceeded);
    }

    #[test]
    fn challenges_follow_rfc_6750_and_unavailable_says_when_to_retry() {
        let challenge = |denial: &HttpDenial| {
            denial
                .headers
                .iter()
                .find(|(n, _)| *n == "www-authenticate")
                .map(|(_, v)| v.clone())
        };
        let missing = http_denial(&Refusal::Unauthenticated(AuthError::Missing), "r");
        assert_eq!(challenge(&missing).as_deref(), Some("Bearer"));
        let bad = http_denial(&Refusal::Unauthenticated(AuthError::Expired), "r");
        assert_eq!(
            challenge(&bad).as_deref(),
            Some("Bearer error=\"invalid_token\"")
        );
        let unavailable = http_denial(
            &Refusal::from(AuthError::KeysNotLoaded { issuer: "a".into() }),
            "r",
        );
        assert_eq!(unavailable.status, 503);
        assert!(
            unavailable
                .headers
                .contains(&("retry-after", "1".to_owned()))
        );
    }
}
