//! HTTP facts: a JSON document from a company service, at a URL templated
//! over the call (each templated part percent-encoded, so a capture can
//! never add a path segment or a query, and one that would make a whole
//! segment `.` or `..` is refused rather than resolved to another path),
//! with fixed headers, an optional secret header, a timeout and a bound on
//! the response's size.
//!
//! A 2xx answer is the document (which must be JSON); a 404 is `null`, an
//! empty result cached for `negative_ttl`; any other status, a body larger
//! than `max_response_bytes` (read as it streams, never buffered whole) or
//! a body that is not JSON is a failure, and the rules fail closed on it.
//! Redirects are not followed: a fact's URL is the one the operator wrote.

use std::fmt;

use reqwest::header::{CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue};

use crate::domain::ClaimValue;
use crate::policy::InputTemplate;

use super::SourceError;
use super::value;

/// `GET` or `POST`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HttpMethod {
    /// `GET`: the inputs are in the URL.
    Get,
    /// `POST`: the inputs are in the URL and the JSON body.
    Post,
}

/// A URL with placeholders, split at them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UrlTemplate {
    source: String,
    /// Literal text, then a placeholder, then literal text...: one more
    /// literal than placeholders.
    literals: Vec<String>,
    placeholders: Vec<InputTemplate>,
}

/// An HTTP fact's source, as the config declares it.
#[derive(Debug, Clone, PartialEq)]
pub struct HttpSettings {
    /// The URL template.
    pub url: UrlTemplate,
    /// The method.
    pub method: HttpMethod,
    /// Fixed headers sent with every request.
    pub headers: Vec<(String, String)>,
    /// For `POST`, the JSON body's fields: name to template.
    pub body: Vec<(String, InputTemplate)>,
    /// The secret sent in `secret_header`, read from its file or variable.
    pub secret: Option<Redacted>,
    /// The header that carries the secret.
    pub secret_header: String,
    /// What precedes the secret in it (`Bearer `).
    pub secret_prefix: String,
    /// A PEM bundle of the CAs that sign the service's certificate, if not the system's.
    pub ca_pem: Option<Vec<u8>>,
    /// The largest body read, in bytes.
    pub max_response_bytes: usize,
}

/// A secret's text; its `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct Redacted(pub String);

/// A built HTTP fact.
pub(crate) struct Fetcher {
    client: reqwest::Client,
    settings: HttpSettings,
    headers: HeaderMap,
}

impl fmt::Debug for Redacted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl UrlTemplate {
    /// Parses `text`, an `http://` or `https://` URL whose `{placeholders}`
    /// are in its path or query (never its scheme or host).
    pub fn parse(text: &str) -> Result<Self, String> {
        // Errors quote the URL, and reach stderr and the reload log: never
        // with a credential someone wrote into it.
        let shown = without_userinfo(text);
        let mut literals = Vec::new();
        let mut placeholders = Vec::new();
        let mut rest = text;
        loop {
            match rest.find('{') {
                None => {
                    if rest.contains('}') {
                        return Err(format!("{shown:?} has a `}}` that closes nothing"));
                    }
                    literals.push(rest.to_owned());
                    break;
                }
                Some(at) => {
                    let literal = &rest[..at];
                    if literal.contains('}') {
                        return Err(format!("{shown:?} has a `}}` that closes nothing"));
                    }
                    literals.push(literal.to_owned());
                    let end = rest[at..]
                        .find('}')
                        .ok_or_else(|| format!("{shown:?} has a `{{` that is never closed"))?;
                    placeholders.push(InputTemplate::parse(&rest[at..at + end + 1])?);
                    rest = &rest[at + end + 1..];
                }
            }
        }
        let first = literals.first().map(String::as_str).unwrap_or_default();
        // The scheme and host are fixed: a placeholder may only follow the
        // first `/` after the authority.
        let after_scheme = first
            .strip_prefix("https://")
            .or_else(|| first.strip_prefix("http://"))
            .ok_or_else(|| format!("{shown:?} is not an http:// or https:// URL"))?;
        if !placeholders.is_empty() && !after_scheme.contains(['/', '?']) {
            return Err(format!(
                "{shown:?} has a placeholder in its host; only the path and query may be templated"
            ));
        }
        let sample = literals.join("x");
        let parsed =
            reqwest::Url::parse(&sample).map_err(|e| format!("{shown:?} is not a URL: {e}"))?;
        if parsed.host_str().is_none_or(str::is_empty) {
            return Err(format!("{shown:?} has no host"));
        }
        // A credential in the URL would be sent as Basic auth, and printed
        // by check-config and logged with the fact like the rest of the URL.
        if !parsed.username().is_empty() || parsed.password().is_some() {
            return Err(format!(
                "{shown:?} holds a user name or password; put the credential in secret_file or secret_env (sent in secret_header)"
            ));
        }
        Ok(Self {
            source: text.to_owned(),
            literals,
            placeholders,
        })
    }

    /// The template as written.
    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// The URL with `values` (one per placeholder) percent-encoded in, or
    /// why it cannot be asked: a value that makes a whole path segment `.`
    /// or `..`. Encoding cannot keep those in place (URL parsers resolve
    /// `%2E%2E` like `..`), so `/events/{captures.event}/tickets` with the
    /// capture `..` would ask `/tickets`, another resource.
    fn render(&self, values: &[String]) -> Result<String, String> {
        let mut url = String::with_capacity(self.source.len() + 16);
        // Where each value landed, to check the path segments they touch.
        let mut spans = Vec::with_capacity(values.len());
        for (i, literal) in self.literals.iter().enumerate() {
            url.push_str(literal);
            if let Some(value) = values.get(i) {
                let start = url.len();
                encode_into(value, &mut url);
                spans.push((start, url.len()));
            }
        }
        // The path: from the first `/` after the authority to the query or
        // fragment. An encoded value holds no `/`, `?` or `#`, so these are
        // the template's own.
        let after_scheme = url.find("://").map_or(0, |at| at + 3);
        let Some(path_start) = url[after_scheme..].find('/').map(|at| after_scheme + at) else {
            return Ok(url);
        };
        let path_end = url[path_start..]
            .find(['?', '#'])
            .map_or(url.len(), |at| path_start + at);
        let mut start = path_start + 1;
        for segment in url[path_start + 1..path_end].split('/') {
            let end = start + segment.len();
            let touched = spans.iter().any(|&(a, b)| a <= end && start <= b);
            // An empty value making a whole segment empty (`/users/`) asks
            // another resource too, often a list.
            if touched && segment.is_empty() {
                return Err(
                    "an input is empty and makes an empty path segment, which would ask another resource"
                        .to_owned(),
                );
            }
            if touched && is_dot_segment(segment) {
                return Err(
                    "an input makes a `.` or `..` path segment, which would move the request to another path"
                        .to_owned(),
                );
            }
            start = end + 1;
        }
        Ok(url)
    }
}

impl HttpSettings {
    /// The fact's inputs: the URL's placeholders, then the body's fields.
    pub(crate) fn inputs(&self) -> Vec<InputTemplate> {
        self.url
            .placeholders
            .iter()
            .chain(self.body.iter().map(|(_, template)| template))
            .cloned()
            .collect()
    }
}

impl Fetcher {
    pub(crate) fn new(settings: &HttpSettings) -> Result<Self, String> {
        let mut builder = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            // The URL is the one the operator wrote: an HTTP(S)_PROXY in the
            // environment would see the secret header of http:// facts.
            .no_proxy()
            .user_agent(concat!("tokengate/", env!("CARGO_PKG_VERSION")));
        if let Some(pem) = &settings.ca_pem {
            for certificate in reqwest::Certificate::from_pem_bundle(pem)
                .map_err(|e| format!("ca_file is not a PEM bundle: {e}"))?
            {
                builder = builder.add_root_certificate(certificate);
            }
        }
        let client = builder
            .build()
            .map_err(|e| format!("cannot build an HTTP client: {e}"))?;
        let mut headers = HeaderMap::new();
        for (name, value) in &settings.headers {
            let name = HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| format!("headers: {name:?} is not a header name"))?;
            let value = HeaderValue::from_str(value)
                .map_err(|_| format!("headers.{name}: not a header value"))?;
            headers.insert(name, value);
        }
        if let Some(secret) = &settings.secret {
            let name = HeaderName::from_bytes(settings.secret_header.as_bytes()).map_err(|_| {
                format!(
                    "secret_header: {:?} is not a header name",
                    settings.secret_header
                )
            })?;
            let mut value =
                HeaderValue::from_str(&format!("{}{}", settings.secret_prefix, secret.0))
                    .map_err(|_| "the secret is not a valid header value".to_owned())?;
            // Kept out of any debug output of the request (reqwest and hyper honour it).
            value.set_sensitive(true);
            headers.insert(name, value);
        }
        Ok(Self {
            client,
            settings: settings.clone(),
            headers,
        })
    }

    /// Fetches the document for `inputs` (the URL's placeholders, then the body's fields).
    pub(crate) async fn fetch(&self, inputs: &[String]) -> Result<ClaimValue, SourceError> {
        let in_url = self.settings.url.placeholders.len();
        let url = self
            .settings
            .url
            .render(&inputs[..in_url.min(inputs.len())])
            .map_err(SourceError::Failed)?;
        let request = match self.settings.method {
            HttpMethod::Get => self.client.get(&url),
            HttpMethod::Post => {
                let body: serde_json::Map<String, serde_json::Value> = self
                    .settings
                    .body
                    .iter()
                    .zip(inputs.iter().skip(in_url))
                    .map(|((name, _), value)| {
                        (name.clone(), serde_json::Value::from(value.as_str()))
                    })
                    .collect();
                self.client.post(&url).json(&body)
            }
        };
        let mut response = request
            .headers(self.headers.clone())
            .header(reqwest::header::ACCEPT, "application/json")
            .send()
            .await
            // Without the URL: it can hold the caller's ids, and the error
            // text reaches explanations.
            .map_err(|e| SourceError::Failed(format!("request failed: {}", e.without_url())))?;
        let status = response.status();
        if status == reqwest::StatusCode::NOT_FOUND {
            return Ok(ClaimValue::Null);
        }
        if !status.is_success() {
            return Err(SourceError::Failed(format!("HTTP {}", status.as_u16())));
        }
        let content_type = response
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_ascii_lowercase();
        let essence = content_type.split(';').next().unwrap_or("").trim();
        if essence != "application/json" && !essence.ends_with("+json") {
            return Err(SourceError::Failed(format!(
                "the response is not JSON (content-type {essence:?})"
            )));
        }
        let limit = self.settings.max_response_bytes;
        if response.content_length().is_some_and(|n| n > limit as u64) {
            return Err(SourceError::Oversized(format!(
                "the response is larger than {limit} bytes"
            )));
        }
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(|e| {
            SourceError::Failed(format!("reading the response failed: {}", e.without_url()))
        })? {
            if body.len() + chunk.len() > limit {
                return Err(SourceError::Oversized(format!(
                    "the response is larger than {limit} bytes"
                )));
            }
            body.extend_from_slice(&chunk);
        }
        let document: serde_json::Value = serde_json::from_slice(&body)
            .map_err(|e| SourceError::Failed(format!("the response is not JSON: {e}")))?;
        value::from_json(document).map_err(SourceError::Failed)
    }
}

/// Whether a URL parser resolves `segment` as `.` or `..` (the WHATWG URL
/// standard's single- and double-dot segments, `%2e` in any case included).
fn is_dot_segment(segment: &str) -> bool {
    let lower = segment.to_ascii_lowercase();
    matches!(
        lower.as_str(),
        "." | ".." | "%2e" | ".%2e" | "%2e." | "%2e%2e"
    )
}

/// `text` with whatever precedes an `@` after the scheme shown as `***`:
/// the user name and password a URL may hold (an `@` later in the path
/// hides a little more than needed, which an error message can afford).
fn without_userinfo(text: &str) -> String {
    match (text.find("://"), text.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme + 3 => {
            format!("{}***{}", &text[..scheme + 3], &text[at..])
        }
        _ => text.to_owned(),
    }
}

/// Percent-encodes everything but RFC 3986's unreserved characters, so a
/// value is one path segment or one query value whatever it holds.
fn encode_into(value: &str, out: &mut String) {
    use std::fmt::Write as _;
    for byte in value.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(byte));
        } else {
            let _ = write!(out, "%{byte:02X}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_templates_encode_each_value_and_keep_the_host_fixed() {
        let t = UrlTemplate::parse(
            "https://svc.internal/rooms/{captures.room}/members?u={caller.subject}",
        )
        .unwrap();
        assert_eq!(
            t.render(&["a/b ?#".to_owned(), "é&x=1".to_owned()]),
            Ok("https://svc.internal/rooms/a%2Fb%20%3F%23/members?u=%C3%A9%26x%3D1".to_owned())
        );
        assert!(UrlTemplate::parse("https://{captures.host}/x").is_err());
        assert!(UrlTemplate::parse("https://h.{captures.host}/x").is_err());
        assert!(UrlTemplate::parse("ftp://h/{channel}").is_err());
        assert!(UrlTemplate::parse("https://h/{channel").is_err());
        assert!(UrlTemplate::parse("https://h/}").is_err());
        assert!(UrlTemplate::parse("https://h/{nope}").is_err());
        assert_eq!(
            UrlTemplate::parse("http://h/x").unwrap().render(&[]),
            Ok("http://h/x".to_owned())
        );
        for with_credentials in [
            "https://svc:hunter2@h/{channel}",
            "https://svc@h/{channel}",
            "https://:hunter2@h/x",
        ] {
            let error = UrlTemplate::parse(with_credentials).unwrap_err();
            assert!(error.contains("holds a user name or password"), "{error}");
            assert!(
                !error.contains("hunter2") && !error.contains("svc"),
                "{error}"
            );
        }
        // Nor does any other error quote the credential.
        let error = UrlTemplate::parse("ftp://svc:hunter2@h/{channel}").unwrap_err();
        assert!(error.contains("not an http://"), "{error}");
        assert!(!error.contains("hunter2"), "{error}");
        // An empty value may not make a whole path segment.
        let users = UrlTemplate::parse("https://h/users/{caller.subject}/x").unwrap();
        assert!(users.render(&[String::new()]).is_err());
        let prefixed = UrlTemplate::parse("https://h/users/u-{caller.subject}").unwrap();
        assert_eq!(
            prefixed.render(&[String::new()]),
            Ok("https://h/users/u-".to_owned())
        );
        let query = UrlTemplate::parse("https://h/users?u={caller.subject}").unwrap();
        assert_eq!(
            query.render(&[String::new()]),
            Ok("https://h/users?u=".to_owned())
        );
        // A placeholder may start the query of a URL without a path.
        assert!(UrlTemplate::parse("https://h?u={caller.subject}").is_ok());
        // An `@` in the path is no credential.
        assert!(UrlTemplate::parse("https://h/users/{caller.subject}@corp").is_ok());
    }

    #[test]
    fn a_value_that_makes_a_dot_segment_is_refused_wherever_it_lands() {
        let render = |template: &str, values: &[&str]| {
            let values: Vec<String> = values.iter().map(|v| (*v).to_owned()).collect();
            UrlTemplate::parse(template).unwrap().render(&values)
        };
        for (template, values) in [
            ("http://h/e/{captures.a}/t", &[".."][..]),
            ("http://h/e/{captures.a}/t", &["."]),
            ("http://h/e/{captures.a}", &[".."]),
            ("http://h/{captures.a}{captures.b}/t", &[".", "."]),
            ("http://h/e/.{captures.a}/t", &["."]),
            ("http://h/e/%2E{captures.a}/t", &["."]),
            ("http://h/e/.{captures.a}/t", &[""]),
            ("http://h/e/{captures.a}?q=1", &[".."]),
        ] {
            assert!(render(template, values).is_err(), "{template} {values:?}");
        }
        // Dots that stay inside a segment, or sit in the query, are values like any other.
        for (template, values, url) in [
            (
                "http://h/e/{captures.a}/t",
                &["..."][..],
                "http://h/e/.../t",
            ),
            ("http://h/e/{captures.a}/t", &["a.."], "http://h/e/a../t"),
            ("http://h/e/x{captures.a}/t", &[".."], "http://h/e/x../t"),
            ("http://h/e/{captures.a}/t", &["%2e"], "http://h/e/%252e/t"),
            ("http://h/e?q={captures.a}", &[".."], "http://h/e?q=.."),
            (
                "http://h/e/t?q={captures.a}/x",
                &[".."],
                "http://h/e/t?q=../x",
            ),
            ("http://h/./{captures.a}", &["x"], "http://h/./x"),
        ] {
            assert_eq!(render(template, values), Ok(url.to_owned()), "{template}");
        }
    }
}
