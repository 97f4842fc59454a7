//! `[telemetry]`: where traces are exported (OTLP/gRPC), how many are kept,
//! and what the service is called, with the standard `OTEL_*` environment
//! variables filling in what the file leaves unset.
//!
//! Tracing is off unless the file says `enabled = true`: an `OTEL_*`
//! variable set for the whole pod must not start an export by itself. When
//! it is on, each setting comes from the file's key, else its environment
//! variable, else the default, and `OTEL_SDK_DISABLED=true` turns it off
//! again, as the OpenTelemetry spec asks. Every value is checked here, so
//! `check-config` names a bad key (or variable) before anything starts.

use std::collections::BTreeMap;

use reqwest::Url;

use super::ConfigError;
use super::file::TelemetrySection;

/// Where OTLP/gRPC goes when neither the file nor the environment says.
const DEFAULT_ENDPOINT: &str = "http://localhost:4317";
/// The service name when neither the file nor the environment gives one.
const DEFAULT_SERVICE_NAME: &str = "tokengate";

/// Validated trace export settings, present only when tracing is on.
#[derive(Debug, Clone, PartialEq)]
pub struct TelemetrySettings {
    endpoint: String,
    sampling_ratio: f64,
    service_name: String,
    resource: Vec<(String, String)>,
}

impl TelemetrySettings {
    /// The OTLP/gRPC collector, `http://` or `https://` with a host and a port.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// The share of the traces tokengate starts that are sampled, in 0..=1.
    /// A caller's sampling decision (its `traceparent` flags) is kept as sent.
    pub fn sampling_ratio(&self) -> f64 {
        self.sampling_ratio
    }

    /// The `service.name` resource attribute.
    pub fn service_name(&self) -> &str {
        &self.service_name
    }

    /// The other resource attributes, by key (`deployment.environment`, ...).
    pub fn resource(&self) -> &[(String, String)] {
        &self.resource
    }
}

/// The settings `section` and the environment describe, or `None` when tracing is off.
pub(super) fn resolve(
    section: &TelemetrySection,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Option<TelemetrySettings>, ConfigError> {
    // Checked whether or not tracing is on, so a typo shows before the day it is turned on.
    let file_resource = file_resource(&section.resource)?;
    if let Some(ratio) = section.sampling_ratio {
        check_ratio(ratio, "telemetry.sampling_ratio")?;
    }
    let disabled = env("OTEL_SDK_DISABLED").is_some_and(|v| v.trim().eq_ignore_ascii_case("true"));
    if !section.enabled || disabled {
        return Ok(None);
    }
    let (endpoint, key) = match &section.endpoint {
        Some(endpoint) => (endpoint.clone(), "telemetry.endpoint"),
        None => match env("OTEL_EXPORTER_OTLP_ENDPOINT").filter(|v| !v.trim().is_empty()) {
            Some(endpoint) => (endpoint.trim().to_owned(), "OTEL_EXPORTER_OTLP_ENDPOINT"),
            None => (DEFAULT_ENDPOINT.to_owned(), "telemetry.endpoint"),
        },
    };
    check_endpoint(&endpoint, key)?;
    let sampling_ratio = match section.sampling_ratio {
        Some(ratio) => ratio,
        None => match env("OTEL_TRACES_SAMPLER_ARG").filter(|v| !v.trim().is_empty()) {
            Some(text) => {
                let key = "OTEL_TRACES_SAMPLER_ARG";
                let ratio = text
                    .trim()
                    .parse::<f64>()
                    .map_err(|_| invalid(key, &format!("{text:?} is not a number")))?;
                check_ratio(ratio, key)?;
                ratio
            }
            None => 1.0,
        },
    };
    let mut resource = match env("OTEL_RESOURCE_ATTRIBUTES") {
        Some(text) => env_resource(&text)?,
        None => BTreeMap::new(),
    };
    let env_service = resource.remove("service.name");
    // The file's attributes override the environment's, key by key.
    resource.extend(file_resource);
    let service_name = match &section.service_name {
        Some(name) if name.trim().is_empty() => {
            return Err(invalid("telemetry.service_name", "must not be empty"));
        }
        Some(name) => name.clone(),
        None => env("OTEL_SERVICE_NAME")
            .filter(|v| !v.trim().is_empty())
            .or(env_service)
            .unwrap_or_else(|| DEFAULT_SERVICE_NAME.to_owned()),
    };
    Ok(Some(TelemetrySettings {
        endpoint,
        sampling_ratio,
        service_name,
        resource: resource.into_iter().collect(),
    }))
}

fn check_ratio(ratio: f64, key: &str) -> Result<(), ConfigError> {
    if (0.0..=1.0).contains(&ratio) {
        Ok(())
    } else {
        Err(invalid(key, "must be between 0 and 1"))
    }
}

/// An OTLP/gRPC endpoint: `http` or `https`, a host, and no path, query or
/// credentials (an OTLP/HTTP `/v1/traces` URL given by mistake is refused).
fn check_endpoint(endpoint: &str, key: &str) -> Result<(), ConfigError> {
    let url = Url::parse(endpoint)
        .map_err(|e| invalid(key, &format!("{endpoint:?} is not a URL: {e}")))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(invalid(key, "must be an http:// or https:// URL"));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(invalid(key, "must name a host"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(invalid(
            key,
            "must not hold credentials (set OTEL_EXPORTER_OTLP_HEADERS instead)",
        ));
    }
    if url.path() != "/" || url.query().is_some() || url.fragment().is_some() {
        return Err(invalid(
            key,
            "must have no path or query: OTLP/gRPC is served at the root (this is not the OTLP/HTTP /v1/traces URL)",
        ));
    }
    Ok(())
}

/// `[telemetry.resource]`: non-empty keys; `service.name` belongs in `service_name`.
fn file_resource(
    table: &BTreeMap<String, String>,
) -> Result<BTreeMap<String, String>, ConfigError> {
    for key in table.keys() {
        let path = format!("telemetry.resource.{key}");
        if key.trim().is_empty() {
            return Err(invalid("telemetry.resource", "keys must not be empty"));
        }
        if key == "service.name" {
            return Err(invalid(&path, "set telemetry.service_name instead"));
        }
    }
    Ok(table.clone())
}

/// `OTEL_RESOURCE_ATTRIBUTES`: `key=value` pairs separated by commas, values
/// percent-encoded (W3C Baggage octets), as the OpenTelemetry spec defines it.
fn env_resource(text: &str) -> Result<BTreeMap<String, String>, ConfigError> {
    let key = "OTEL_RESOURCE_ATTRIBUTES";
    let mut out = BTreeMap::new();
    for pair in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (name, value) = pair
            .split_once('=')
            .ok_or_else(|| invalid(key, &format!("{pair:?} is not key=value")))?;
        let name = name.trim();
        if name.is_empty() {
            return Err(invalid(key, &format!("{pair:?} has an empty key")));
        }
        let value = percent_decode(value.trim()).ok_or_else(|| {
            invalid(
                key,
                &format!("the value of {name:?} is badly percent-encoded"),
            )
        })?;
        out.insert(name.to_owned(), value);
    }
    Ok(out)
}

/// `%XX` escapes decoded; `None` for a broken escape or a result that is not UTF-8.
fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3)?;
            let hex = std::str::from_utf8(hex).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

fn invalid(key: &str, message: &str) -> ConfigError {
    ConfigError::Invalid {
        key: key.to_owned(),
        message: message.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn section(text: &str) -> TelemetrySection {
        super::super::parse_toml(text).unwrap()
    }

    fn no_env(_: &str) -> Option<String> {
        None
    }

    #[test]
    fn off_unless_enabled_even_with_otel_variables() {
        let env = |name: &str| {
            (name == "OTEL_EXPORTER_OTLP_ENDPOINT").then(|| "http://collector:4317".to_owned())
        };
        assert_eq!(resolve(&section(""), &env).unwrap(), None);
        let disabled = |name: &str| (name == "OTEL_SDK_DISABLED").then(|| "true".to_owned());
        assert_eq!(
            resolve(&section("enabled = true"), &disabled).unwrap(),
            None
        );
    }

    #[test]
    fn defaults_when_enabled() {
        let settings = resolve(&section("enabled = true"), &no_env)
            .unwrap()
            .unwrap();
        assert_eq!(settings.endpoint(), "http://localhost:4317");
        assert_eq!(settings.sampling_ratio(), 1.0);
        assert_eq!(settings.service_name(), "tokengate");
        assert!(settings.resource().is_empty());
    }

    #[test]
    fn the_file_wins_and_the_environment_fills_in() {
        let env = |name: &str| {
            Some(match name {
                "OTEL_EXPORTER_OTLP_ENDPOINT" => "https://env-collector:4317".to_owned(),
                "OTEL_TRACES_SAMPLER_ARG" => "0.25".to_owned(),
                "OTEL_SERVICE_NAME" => "from-env".to_owned(),
                "OTEL_RESOURCE_ATTRIBUTES" => {
                    "service.name=ignored, deployment.environment=prod,team=a%20b".to_owned()
                }
                _ => return None,
            })
        };
        let from_env = resolve(&section("enabled = true"), &env).unwrap().unwrap();
        assert_eq!(from_env.endpoint(), "https://env-collector:4317");
        assert_eq!(from_env.sampling_ratio(), 0.25);
        assert_eq!(from_env.service_name(), "from-env");
        assert_eq!(
            from_env.resource(),
            &[
                ("deployment.environment".to_owned(), "prod".to_owned()),
                ("team".to_owned(), "a b".to_owned()),
            ]
        );
        let file = section(
            "enabled = true\nendpoint = \"http://127.0.0.1:4317\"\nsampling_ratio = 0.5\nservice_name = \"gate\"\n[resource]\nteam = \"c\"",
        );
        let from_file = resolve(&file, &env).unwrap().unwrap();
        assert_eq!(from_file.endpoint(), "http://127.0.0.1:4317");
        assert_eq!(from_file.sampling_ratio(), 0.5);
        assert_eq!(from_file.service_name(), "gate");
        assert!(
            from_file
                .resource()
                .contains(&("team".to_owned(), "c".to_owned()))
        );
        // Without OTEL_SERVICE_NAME, the resource attribute names the service.
        let attrs_only = |name: &str| {
            (name == "OTEL_RESOURCE_ATTRIBUTES").then(|| "service.name=svc".to_owned())
        };
        let named = resolve(&section("enabled = true"), &attrs_only)
            .unwrap()
            .unwrap();
        assert_eq!(named.service_name(), "svc");
    }

    #[test]
    fn bad_values_name_the_key_or_the_variable() {
        // The file's text, an environment variable, and the key the error names.
        type Case = (
            &'static str,
            Option<(&'static str, &'static str)>,
            &'static str,
        );
        let cases: [Case; 11] = [
            ("sampling_ratio = 1.5", None, "telemetry.sampling_ratio"),
            ("sampling_ratio = -0.1", None, "telemetry.sampling_ratio"),
            ("endpoint = \"localhost:4317\"", None, "telemetry.endpoint"),
            ("endpoint = \"ftp://c:4317\"", None, "telemetry.endpoint"),
            (
                "endpoint = \"http://c:4318/v1/traces\"",
                None,
                "telemetry.endpoint",
            ),
            (
                "endpoint = \"http://u:p@c:4317\"",
                None,
                "telemetry.endpoint",
            ),
            ("service_name = \" \"", None, "telemetry.service_name"),
            (
                "[resource]\n\"service.name\" = \"x\"",
                None,
                "telemetry.resource.service.name",
            ),
            (
                "",
                Some(("OTEL_TRACES_SAMPLER_ARG", "lots")),
                "OTEL_TRACES_SAMPLER_ARG",
            ),
            (
                "",
                Some(("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318/v1/traces")),
                "OTEL_EXPORTER_OTLP_ENDPOINT",
            ),
            (
                "",
                Some(("OTEL_RESOURCE_ATTRIBUTES", "a=%zz")),
                "OTEL_RESOURCE_ATTRIBUTES",
            ),
        ];
        for (text, var, key) in cases {
            let env = move |name: &str| {
                var.filter(|(n, _)| *n == name)
                    .map(|(_, value)| value.to_owned())
            };
            let text = format!("enabled = true\n{text}");
            match resolve(&section(&text), &env) {
                Err(ConfigError::Invalid { key: got, .. }) => assert_eq!(got, key, "{text}"),
                other => panic!("{text}: {other:?}"),
            }
        }
    }

    #[test]
    fn a_bad_ratio_is_refused_even_while_tracing_is_off() {
        assert!(resolve(&section("sampling_ratio = 2.0"), &no_env).is_err());
    }

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("a%2Cb%3D").as_deref(), Some("a,b="));
        assert_eq!(percent_decode("plain").as_deref(), Some("plain"));
        assert_eq!(percent_decode("%4"), None);
        assert_eq!(percent_decode("%ff"), None);
    }
}
