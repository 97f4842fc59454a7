//! Fetching an issuer's key set: JWKS URL, OIDC discovery, file or inline.
//!
//! Every fetch has one deadline for the whole exchange (discovery and JWKS
//! together: connects, headers and bodies) and a body cap enforced while streaming, so a slow or hostile IdP can
//! neither stall the refresher nor exhaust memory. The `Cache-Control:
//! max-age` of the JWKS response is returned for the scheduler to clamp.
//!
//! Each fetch from a URL or a file is one `jwks.fetch` span (the refresher
//! runs off the request path, so each is a trace of its own) with the
//! source's URL or path, which are config, and the number of keys or the
//! error; never a response body or a key.

use std::time::Duration;

use reqwest::header::CACHE_CONTROL;
use reqwest::{Client, Url};
use serde::Deserialize;
use tracing::Instrument as _;
use tracing::field::Empty;

use super::config::KeySource;
use super::keys::{KeySet, KeySourceError};

/// A freshly fetched and vetted key set.
#[derive(Debug)]
pub struct Fetched {
    /// The vetted keys.
    pub keys: KeySet,
    /// The `max-age` the server asked for, unclamped.
    pub max_age: Option<Duration>,
}

/// What the fetcher needs besides the source.
#[derive(Debug, Clone)]
pub struct FetchLimits {
    /// The deadline of one fetch, discovery and JWKS together.
    pub timeout: Duration,
    /// The largest body accepted.
    pub max_body_size: usize,
}

/// The two fields of an OIDC discovery document we use.
#[derive(Deserialize)]
struct Discovery {
    issuer: String,
    jwks_uri: String,
}

/// Fetches and vets the key set from `source`, in a `jwks.fetch` span.
///
/// `issuers` are the configured `iss` strings a discovery document must name.
pub async fn fetch(
    client: &Client,
    source: &KeySource,
    issuers: &[String],
    limits: &FetchLimits,
) -> Result<Fetched, KeySourceError> {
    let span = match source {
        KeySource::JwksUrl(url) => fetch_span("jwks_url", &without_credentials(url)),
        KeySource::Discovery(url) => fetch_span("discovery", &without_credentials(url)),
        KeySource::File(path) => fetch_span("file", &path.display().to_string()),
        // Nothing is fetched: the keys are in the config.
        KeySource::Inline(_) | KeySource::SecretOnly => tracing::Span::none(),
    };
    let result = fetch_from(client, source, issuers, limits)
        .instrument(span.clone())
        .await;
    match &result {
        Ok(fetched) => {
            // As an i64: OpenTelemetry has no unsigned integers, and
            // tracing-opentelemetry sends a u64 as text.
            span.record(
                "keys",
                i64::try_from(fetched.keys.len()).unwrap_or(i64::MAX),
            );
        }
        Err(error) => {
            span.record("error", tracing::field::display(error));
            span.record("otel.status_code", "error");
        }
    }
    result
}

/// The span of one fetch from `location`.
fn fetch_span(source: &'static str, location: &str) -> tracing::Span {
    tracing::info_span!(
        "jwks.fetch",
        otel.kind = "client",
        otel.status_code = Empty,
        source,
        url = location,
        keys = Empty,
        error = Empty,
    )
}

/// `url` without a user name or password, should one be configured in it.
fn without_credentials(url: &Url) -> String {
    let mut url = url.clone();
    let _ = url.set_username("");
    let _ = url.set_password(None);
    url.to_string()
}

/// [`fetch`], without its span.
async fn fetch_from(
    client: &Client,
    source: &KeySource,
    issuers: &[String],
    limits: &FetchLimits,
) -> Result<Fetched, KeySourceError> {
    // One deadline for both GETs: `fetch_timeout` bounds the refresh, so a
    // slow discovery document cannot double the time a forced refetch takes.
    match source {
        KeySource::JwksUrl(url) => {
            within(limits.timeout, fetch_jwks(client, url.clone(), limits)).await
        }
        KeySource::Discovery(url) => {
            within(limits.timeout, async {
                let jwks_uri = discover(client, url.clone(), issuers, limits).await?;
                fetch_jwks(client, jwks_uri, limits).await
            })
            .await
        }
        KeySource::File(path) => {
            let bytes = tokio::fs::read(path)
                .await
                .map_err(|e| KeySourceError::File {
                    path: path.display().to_string(),
                    reason: e.to_string(),
                })?;
            if bytes.len() > limits.max_body_size {
                return Err(KeySourceError::TooLarge {
                    max: limits.max_body_size,
                });
            }
            Ok(Fetched {
                keys: KeySet::parse(&bytes)?,
                max_age: None,
            })
        }
        KeySource::Inline(json) => Ok(Fetched {
            keys: KeySet::parse(json.as_bytes())?,
            max_age: None,
        }),
        KeySource::SecretOnly => Ok(Fetched {
            keys: KeySet::default(),
            max_age: None,
        }),
    }
}

/// Runs `exchange` under the fetch's one deadline.
async fn within<T>(
    timeout: Duration,
    exchange: impl Future<Output = Result<T, KeySourceError>>,
) -> Result<T, KeySourceError> {
    tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| KeySourceError::Timeout(timeout))?
}

/// Reads the `max-age` directive of a `Cache-Control` value.
///
/// `no-cache` and `no-store` count as zero, which the scheduler then clamps
/// up to `min_refresh`.
pub fn max_age(cache_control: &str) -> Option<Duration> {
    let mut found = None;
    for directive in cache_control.split(',') {
        let directive = directive.trim();
        let lower = directive.to_ascii_lowercase();
        if lower == "no-cache" || lower == "no-store" {
            return Some(Duration::ZERO);
        }
        if let Some(value) = lower.strip_prefix("max-age=") {
            found = value
                .trim_matches('"')
                .parse::<u64>()
                .ok()
                .map(Duration::from_secs);
        }
    }
    found
}

/// Fetches a JWKS and its `max-age`.
async fn fetch_jwks(
    client: &Client,
    url: Url,
    limits: &FetchLimits,
) -> Result<Fetched, KeySourceError> {
    let (bytes, cache_control) = get(client, url, limits).await?;
    Ok(Fetched {
        keys: KeySet::parse(&bytes)?,
        max_age: cache_control.as_deref().and_then(max_age),
    })
}

/// Fetches a discovery document and returns its `jwks_uri` after checking its issuer.
async fn discover(
    client: &Client,
    url: Url,
    issuers: &[String],
    limits: &FetchLimits,
) -> Result<Url, KeySourceError> {
    let (bytes, _) = get(client, url, limits).await?;
    let doc: Discovery = serde_json::from_slice(&bytes).map_err(|_| KeySourceError::Garbage {
        what: "discovery document",
    })?;
    // OIDC Discovery §4.3: the issuer in the document must be the one we
    // asked about, or a hijacked document could point us at foreign keys.
    if !issuers.contains(&doc.issuer) {
        return Err(KeySourceError::IssuerMismatch { found: doc.issuer });
    }
    let jwks_uri = Url::parse(&doc.jwks_uri).map_err(|_| KeySourceError::BadJwksUri)?;
    match jwks_uri.scheme() {
        "http" | "https" => Ok(jwks_uri),
        _ => Err(KeySourceError::BadJwksUri),
    }
}

/// GETs `url` under the body cap (the caller sets the deadline); returns the body and its `Cache-Control`.
async fn get(
    client: &Client,
    url: Url,
    limits: &FetchLimits,
) -> Result<(Vec<u8>, Option<String>), KeySourceError> {
    {
        let mut response = client
            .get(url)
            .header(reqwest::header::ACCEPT, "application/json")
            .send()
            .await
            .map_err(|e| KeySourceError::Request(e.without_url().to_string()))?;
        let status = response.status();
        if !status.is_success() {
            return Err(KeySourceError::Status(status.as_u16()));
        }
        let too_large = KeySourceError::TooLarge {
            max: limits.max_body_size,
        };
        if response
            .content_length()
            .is_some_and(|n| n > limits.max_body_size as u64)
        {
            return Err(too_large);
        }
        let cache_control = response
            .headers()
            .get(CACHE_CONTROL)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let mut body = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| KeySourceError::Request(e.without_url().to_string()))?
        {
            if body.len() + chunk.len() > limits.max_body_size {
                return Err(too_large);
            }
            body.extend_from_slice(&chunk);
        }
        Ok((body, cache_control))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn max_age_is_read_from_cache_control() {
        let cases = [
            ("max-age=300", Some(300)),
            ("public, max-age=86400, must-revalidate", Some(86_400)),
            ("Max-Age=60", Some(60)),
            ("max-age=\"120\"", Some(120)),
            ("no-cache", Some(0)),
            ("private, no-store", Some(0)),
            ("public", None),
            ("max-age=-5", None),
            ("max-age=abc", None),
            ("", None),
        ];
        for (header, expected) in cases {
            assert_eq!(
                max_age(header),
                expected.map(Duration::from_secs),
                "{header}"
            );
        }
    }
}
