//! Which request a forward-auth check is about: read from the headers the
//! configured proxy sends, and only those (`original_request`), because a
//! header another proxy would set is, behind this one, just something the
//! client typed.
//!
//! The original method and path are checked here as strictly as HTTP
//! allows (a method is an RFC 9110 token, a path is origin-form ASCII,
//! each header sent once); the path's dot segments and encoded slashes are
//! then refused by the pipeline's `routes::check_path`, as on Envoy's
//! gRPC `Check`.

use std::borrow::Cow;

use http::HeaderMap;

use crate::pipeline::{HttpRequest, InvalidRequest};

/// Where the original request's method and path come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OriginalRequest {
    /// `X-Original-Method` and `X-Original-URI` (nginx `auth_request`, set
    /// by `proxy_set_header` in the auth location).
    XOriginal,
    /// `X-Forwarded-Method` and `X-Forwarded-Uri` (Caddy `forward_auth`,
    /// Traefik ForwardAuth, HAProxy).
    XForwarded,
    /// The check's own method, and its path under `path_prefix` (Envoy's
    /// and Istio's HTTP ext_authz, which append the original path to the
    /// prefix).
    Path,
}

impl OriginalRequest {
    /// Parses the config value.
    pub fn parse(value: &str) -> Option<Self> {
        match value {
            "x-original" => Some(Self::XOriginal),
            "x-forwarded" => Some(Self::XForwarded),
            "path" => Some(Self::Path),
            _ => None,
        }
    }

    /// The config value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::XOriginal => "x-original",
            Self::XForwarded => "x-forwarded",
            Self::Path => "path",
        }
    }

    /// The headers that carry the original method and path, if any.
    fn headers(self) -> Option<(&'static str, &'static str)> {
        match self {
            Self::XOriginal => Some(("x-original-method", "x-original-uri")),
            Self::XForwarded => Some(("x-forwarded-method", "x-forwarded-uri")),
            Self::Path => None,
        }
    }
}

/// The original request, as the pipeline's check reads it.
#[derive(Debug, Clone)]
pub(super) struct Original<'a> {
    method: Cow<'a, str>,
    path: Cow<'a, str>,
    headers: &'a HeaderMap,
}

impl<'a> Original<'a> {
    /// Reads the original request: in `Path` mode `own_target` is the
    /// check's path under the prefix and `method` its method; otherwise both
    /// come from the mode's headers, each of which must be sent exactly once.
    pub(super) fn read(
        mode: OriginalRequest,
        method: &'a str,
        own_target: Option<String>,
        headers: &'a HeaderMap,
    ) -> Result<Self, InvalidRequest> {
        let (method, path) = match (mode.headers(), own_target) {
            (Some((method_header, path_header)), _) => (
                Cow::Borrowed(single(headers, method_header)?),
                Cow::Borrowed(single(headers, path_header)?),
            ),
            (None, Some(target)) => (Cow::Borrowed(method), Cow::Owned(target)),
            (None, None) => {
                return Err(InvalidRequest::field("path", "is not under path_prefix"));
            }
        };
        let method_field = mode.headers().map_or(":method", |(m, _)| m);
        let path_field = mode.headers().map_or(":path", |(_, p)| p);
        if !is_token(&method) {
            return Err(InvalidRequest::field(
                method_field,
                "must be an HTTP method (RFC 9110 token characters)",
            ));
        }
        if !path.starts_with('/') {
            return Err(InvalidRequest::field(
                path_field,
                "must be an origin-form path starting with /",
            ));
        }
        if !path.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(InvalidRequest::field(
                path_field,
                "must be visible ASCII (percent-encode other bytes)",
            ));
        }
        Ok(Self {
            method,
            path,
            headers,
        })
    }
}

/// The value of a header that must be sent exactly once, as visible ASCII.
fn single<'h>(headers: &'h HeaderMap, name: &'static str) -> Result<&'h str, InvalidRequest> {
    let mut values = headers.get_all(name).iter();
    match (values.next(), values.next()) {
        (None, _) => Err(InvalidRequest::field(
            name,
            "is required: the proxy in front must send it (see original_request)",
        )),
        (Some(value), None) => value.to_str().map_err(|_| {
            InvalidRequest::field(name, "must be visible ASCII (percent-encode other bytes)")
        }),
        _ => Err(InvalidRequest::field(name, "must be sent once")),
    }
}

/// Whether `value` is an RFC 9110 token (what a method is), at most 32 bytes.
fn is_token(value: &str) -> bool {
    !value.is_empty()
        && value.len() <= 32
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

impl HttpRequest for Original<'_> {
    fn method(&self) -> &str {
        &self.method
    }

    fn path(&self) -> &str {
        &self.path
    }

    /// Repeated headers are merged with commas (RFC 9110 §5.3), as Envoy
    /// merges them into the `CheckRequest`, so both checks read the same
    /// value; the JWT header's count is checked by the pipeline.
    fn header(&self, name: &str) -> Option<Cow<'_, str>> {
        let mut values = self.headers.get_all(name).iter();
        let first = values.next()?;
        let mut merged = String::from_utf8_lossy(first.as_bytes());
        for value in values {
            let merged = merged.to_mut();
            merged.push_str(", ");
            merged.push_str(&String::from_utf8_lossy(value.as_bytes()));
        }
        Some(merged)
    }

    fn header_count(&self, name: &str) -> usize {
        self.headers.get_all(name).iter().count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, value.parse().unwrap());
        }
        map
    }

    #[test]
    fn each_mode_reads_only_its_own_headers() {
        let sent = headers(&[
            ("x-original-method", "POST"),
            ("x-original-uri", "/rooms/a/join?x=1"),
            ("x-forwarded-method", "PUT"),
            ("x-forwarded-uri", "/rooms/b/join"),
        ]);
        let nginx = Original::read(OriginalRequest::XOriginal, "GET", None, &sent).unwrap();
        assert_eq!(
            (nginx.method(), nginx.path()),
            ("POST", "/rooms/a/join?x=1")
        );
        let caddy = Original::read(OriginalRequest::XForwarded, "GET", None, &sent).unwrap();
        assert_eq!((caddy.method(), caddy.path()), ("PUT", "/rooms/b/join"));
        let envoy = Original::read(
            OriginalRequest::Path,
            "DELETE",
            Some("/rooms/c".into()),
            &sent,
        )
        .unwrap();
        assert_eq!((envoy.method(), envoy.path()), ("DELETE", "/rooms/c"));
    }

    #[test]
    fn missing_repeated_or_malformed_originals_are_refused_naming_the_header() {
        let cases: [(&[(&'static str, &str)], &str); 8] = [
            (&[("x-original-uri", "/a")], "x-original-method"),
            (&[("x-original-method", "GET")], "x-original-uri"),
            (
                &[
                    ("x-original-method", "GET"),
                    ("x-original-uri", "/a"),
                    ("x-original-uri", "/b"),
                ],
                "x-original-uri",
            ),
            (
                &[
                    ("x-original-method", "GET"),
                    ("x-original-method", "POST"),
                    ("x-original-uri", "/a"),
                ],
                "x-original-method",
            ),
            (
                &[("x-original-method", "G E T"), ("x-original-uri", "/a")],
                "x-original-method",
            ),
            (
                &[("x-original-method", ""), ("x-original-uri", "/a")],
                "x-original-method",
            ),
            (
                &[
                    ("x-original-method", "GET"),
                    ("x-original-uri", "http://evil/a"),
                ],
                "x-original-uri",
            ),
            (
                &[("x-original-method", "GET"), ("x-original-uri", "a/b")],
                "x-original-uri",
            ),
        ];
        for (pairs, field) in cases {
            let error = Original::read(OriginalRequest::XOriginal, "GET", None, &headers(pairs))
                .unwrap_err();
            assert_eq!(error.violations[0].0, field, "{pairs:?}");
        }
        let mut raw = HeaderMap::new();
        raw.insert("x-original-method", "GET".parse().unwrap());
        raw.insert(
            "x-original-uri",
            http::HeaderValue::from_bytes(b"/rooms/\xff").unwrap(),
        );
        let error = Original::read(OriginalRequest::XOriginal, "GET", None, &raw).unwrap_err();
        assert_eq!(error.violations[0].0, "x-original-uri");
    }

    #[test]
    fn repeated_headers_are_merged_as_envoy_merges_them() {
        let sent = headers(&[
            ("x-original-method", "GET"),
            ("x-original-uri", "/a"),
            ("x-agora-channel", "one"),
            ("x-agora-channel", "two"),
        ]);
        let original = Original::read(OriginalRequest::XOriginal, "GET", None, &sent).unwrap();
        assert_eq!(original.header("x-agora-channel").unwrap(), "one, two");
        assert_eq!(original.header_count("x-agora-channel"), 2);
        assert_eq!(original.header("absent"), None);
        assert_eq!(original.header_count("absent"), 0);
    }
}
