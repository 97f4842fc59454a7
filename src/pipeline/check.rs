//! An HTTP authorization check (Envoy's ext_authz today; forward-auth for
//! other proxies next): the request's route decides whether a token is
//! needed, and the same authentication, rules and build as `IssueRtcToken`
//! decide which.

use std::borrow::Cow;
use std::sync::Arc;

use tracing::Instrument as _;

use super::audit::{AuditEvent, Audited};
use super::{Call, Credential, InvalidRequest, Outcome, Pipeline, Refusal, TraceHeaders};
use crate::gate::Issued;
use crate::routes::Routes;

/// The HTTP request a proxy asks about, as the adapter reads it.
pub trait HttpRequest: Sync {
    /// The method, as sent.
    fn method(&self) -> &str;
    /// The path, with the query string if any.
    fn path(&self) -> &str;
    /// The value of header `name` (lowercase), if present.
    fn header(&self, name: &str) -> Option<Cow<'_, str>>;
    /// How many times header `name` was sent.
    fn header_count(&self, name: &str) -> usize;
}

/// What an allowed check lets through.
#[derive(Debug, Clone)]
pub enum Checked {
    /// A token was issued; the adapter forwards it in headers.
    Allowed {
        /// The token and what it binds (boxed: it dwarfs the pass-through variant).
        issued: Box<Issued>,
        /// The route template that matched.
        route: String,
        /// The routes the check ran on, whose header names the reply uses
        /// (the ones in force when the call started, even if a reload has
        /// swapped in others since).
        routes: Arc<Routes>,
    },
    /// A pass-through route: no JWT needed, no token issued.
    PassThrough {
        /// The route template that matched.
        route: String,
        /// The routes the check ran on (see `Allowed`).
        routes: Arc<Routes>,
    },
}

impl Pipeline {
    /// Checks an HTTP request against the ext_authz routes and, on a token
    /// route, issues the token its caller may have.
    pub async fn check(
        &self,
        call: Call<'_>,
        http: Result<&dyn HttpRequest, InvalidRequest>,
    ) -> Outcome<Checked> {
        // Envoy sends its own span of the check in the gRPC metadata when
        // it traces; otherwise the checked request's headers carry the
        // client's trace, and the check continues that.
        let forwarded = |name: &str| match &http {
            Ok(http) if http.header_count(name) == 1 => http.header(name),
            _ => None,
        };
        let (traceparent, tracestate) = (forwarded("traceparent"), forwarded("tracestate"));
        let trace = if call.trace.traceparent.is_some() {
            call.trace
        } else {
            TraceHeaders {
                traceparent: traceparent.as_deref(),
                tracestate: tracestate.as_deref(),
            }
        };
        let mut flow = self.begin(&call, trace);
        let span = flow.span.clone();
        let result = async {
            let http = http?;
            let routes = flow
                .live
                .routes
                .clone()
                .ok_or_else(|| Refusal::Internal("ext_authz is not configured".into()))?;
            crate::routes::check_path(http.path())
                .map_err(|bad| Refusal::field(bad.field, bad.message))?;
            let matched =
                routes
                    .route(http.method(), http.path())
                    .ok_or_else(|| Refusal::NoRoute {
                        method: http.method().to_owned(),
                        path: http.path().to_owned(),
                    })?;
            let route = matched.template.to_owned();
            flow.event.route = Some(route.clone());
            if matched.pass_through {
                return Ok(Checked::PassThrough { route, routes });
            }
            let jwt_header = http.header(routes.jwt_header());
            let bearer = jwt_header.as_deref().map(bearer);
            let credential = match (http.header_count(routes.jwt_header()), bearer.as_deref()) {
                (0, _) | (_, None) => Credential::Absent,
                // A proxy merges repeated headers with commas (RFC 9110
                // §5.3), which a JWT never contains.
                (1, Some(value)) if !value.contains(',') => Credential::One(value),
                _ => Credential::Duplicated,
            };
            let who = self.authenticate(&mut flow, &call, credential).await?;
            let lookup = |name: &str| http.header(name).map(Cow::into_owned);
            let request = routes
                .request(&matched, &lookup)
                .map_err(|bad| Refusal::field(bad.field, bad.message))?;
            let issued = self
                .decide_and_build(&mut flow, who.caller(), &request)
                .await?;
            Ok(Checked::Allowed {
                issued: Box::new(issued),
                route,
                routes,
            })
        }
        .instrument(span)
        .await;
        self.finish(flow, result)
    }
}

impl Audited for Checked {
    fn describe(&self, event: &mut AuditEvent) {
        match self {
            Checked::Allowed { issued, .. } => event.issued(issued),
            Checked::PassThrough { .. } => event.decision = "pass_through",
        }
    }
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
