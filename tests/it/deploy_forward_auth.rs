//! deploy/forward-auth/ checked against tokengate: each tokengate fragment,
//! added to deploy/envoy/tokengate.toml, passes the real `check-config` and
//! names the form its proxy sends; the Envoy HTTP ext_authz, Istio and
//! Traefik files (which cannot run here) send the headers tokengate reads,
//! copy exactly the headers it owns, strip them on public pages, reach its
//! forward-auth port and prefix, and fail closed. The nginx and Caddy
//! snippets run for real in `forward_auth_proxies.rs`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::Command;

use serde_json::Value;
use tokengate::forward_auth::{ForwardAuthSettings, OriginalRequest};
use tokengate::routes::{RequestHeaders, ResponseHeaders};

const BIN: &str = env!("CARGO_BIN_EXE_tokengate");
const DUMMY_CERT: &str = "0123456789abcdef0123456789abcdef";
const DUMMY_SECRET: &str = "dummy-secret-that-is-nobodys-0123456789";

fn deploy() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("deploy")
}

/// The one YAML document of deploy/`relative`, as JSON (PyYAML from the
/// test venv, duplicate keys refused).
fn yaml_at(relative: &str) -> Value {
    let python = crate::support::tools::python_path();
    let output = Command::new(python)
        .arg(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/deploy/yaml_to_json.py"))
        .arg(deploy().join(relative))
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{relative} did not parse: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let parsed: BTreeMap<String, Vec<Value>> = serde_json::from_slice(&output.stdout).unwrap();
    let docs: Vec<Value> = parsed
        .into_values()
        .flatten()
        .filter(|d| !d.is_null())
        .collect();
    assert_eq!(docs.len(), 1, "{relative}: one document");
    docs.into_iter().next().unwrap()
}

/// The one YAML document of deploy/forward-auth/`name`.
fn yaml(name: &str) -> Value {
    yaml_at(&format!("forward-auth/{name}"))
}

/// deploy/envoy/tokengate.toml with `fragment` appended, written to a temp
/// dir (its rules file named by absolute path), and the environment it needs.
fn combined(fragment: &str) -> (tempfile::TempDir, PathBuf, BTreeMap<String, String>) {
    let base = std::fs::read_to_string(deploy().join("envoy/tokengate.toml")).unwrap();
    let rules = deploy().join("examples/policy.toml");
    let from = "rules_file = \"../examples/policy.toml\"";
    assert_eq!(base.matches(from).count(), 1);
    let base = base.replace(
        from,
        &format!("rules_file = {:?}", rules.display().to_string()),
    );
    let extra = std::fs::read_to_string(deploy().join("forward-auth").join(fragment)).unwrap();
    let text = format!("{base}\n{extra}");
    let table: toml::Table = toml::from_str(&text).unwrap();
    let mut env = BTreeMap::new();
    for project in table["projects"].as_array().unwrap() {
        for certificate in project["certificates"].as_array().unwrap() {
            env.insert(
                certificate["env"].as_str().unwrap().to_owned(),
                DUMMY_CERT.to_owned(),
            );
        }
    }
    env.insert("TOKENGATE_DB_PASSWORD".to_owned(), DUMMY_SECRET.to_owned());
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tokengate.toml");
    std::fs::write(&path, text).unwrap();
    (dir, path, env)
}

/// The forward-auth settings of deploy/envoy/tokengate.toml plus `fragment`,
/// after the real `check-config` accepted the file.
fn settings(fragment: &str) -> ForwardAuthSettings {
    let (_dir, path, env) = combined(fragment);
    let output = Command::new(BIN)
        .arg("check-config")
        .arg(&path)
        .env_clear()
        .envs(&env)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{fragment}: check-config failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains("forward auth: 0.0.0.0:9191"),
        "{fragment}: the summary names the listener: {stdout}"
    );
    let config = tokengate::config::load_file(&path, &|name| env.get(name).cloned())
        .unwrap_or_else(|e| panic!("{fragment}: {e}"));
    config
        .forward_auth()
        .cloned()
        .unwrap_or_else(|| panic!("{fragment}: forward-auth is off"))
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap_or_else(|| panic!("expected a list, got {v}"))
        .iter()
        .map(|s| s.as_str().unwrap().to_ascii_lowercase())
        .collect()
}

/// The `exact` values of an Envoy `ListStringMatcher`.
fn exact_patterns(matcher: &Value) -> BTreeSet<String> {
    matcher["patterns"]
        .as_array()
        .unwrap_or_else(|| panic!("no patterns in {matcher}"))
        .iter()
        .map(|p| {
            p["exact"]
                .as_str()
                .unwrap_or_else(|| panic!("only exact patterns: {p}"))
                .to_owned()
        })
        .collect()
}

/// The headers tokengate owns upstream.
fn owned() -> BTreeSet<String> {
    ResponseHeaders::default()
        .all()
        .iter()
        .map(|h| (*h).to_owned())
        .collect()
}

/// The client's headers tokengate reads: the JWT and the request hints.
fn read() -> BTreeSet<String> {
    let hints = RequestHeaders::default();
    [
        "authorization",
        &hints.channel,
        &hints.role,
        &hints.uid,
        &hints.account,
    ]
    .iter()
    .map(|h| (*h).to_owned())
    .collect()
}

/// What a denial needs to reach the client.
fn denial_headers() -> BTreeSet<String> {
    [
        "content-type",
        "www-authenticate",
        "retry-after",
        "x-tokengate-error",
    ]
    .iter()
    .map(|h| (*h).to_owned())
    .collect()
}

fn assert_superset(label: &str, got: &BTreeSet<String>, needed: &BTreeSet<String>) {
    let missing: Vec<_> = needed.difference(got).collect();
    assert!(missing.is_empty(), "{label}: missing {missing:?}");
}

#[test]
fn each_fragment_passes_check_config_and_names_its_proxys_form() {
    for (fragment, form) in [
        ("tokengate-nginx.toml", OriginalRequest::XOriginal),
        ("tokengate-x-forwarded.toml", OriginalRequest::XForwarded),
        ("tokengate-envoy-http.toml", OriginalRequest::Path),
    ] {
        let settings = settings(fragment);
        assert_eq!(settings.original_request, form, "{fragment}");
        assert_eq!(settings.path_prefix, "/check", "{fragment}");
        assert_eq!(settings.listen.port(), 9191, "{fragment}");
    }
}

#[test]
fn envoy_http_ext_authz_sends_what_tokengate_reads_and_fails_closed() {
    let settings = settings("tokengate-envoy-http.toml");
    let envoy = yaml("envoy-http-ext-authz.yaml");
    let resources = &envoy["static_resources"];
    let hcm = &resources["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"];
    let filters = hcm["http_filters"].as_array().unwrap();
    let ext_authz = filters
        .iter()
        .find(|f| f["name"] == "envoy.filters.http.ext_authz")
        .expect("an ext_authz filter");
    let config = &ext_authz["typed_config"];
    assert_eq!(config["failure_mode_allow"], false, "must fail closed");
    assert!(config.get("with_request_body").is_none());
    assert!(config.get("grpc_service").is_none(), "the HTTP form");
    assert_eq!(filters.last().unwrap()["name"], "envoy.filters.http.router");
    let http = &config["http_service"];
    assert_eq!(http["path_prefix"], settings.path_prefix.as_str());
    let request = &http["authorization_request"];
    assert_superset(
        "allowed_headers",
        &exact_patterns(&request["allowed_headers"]),
        &read(),
    );
    let response = &http["authorization_response"];
    assert_eq!(
        exact_patterns(&response["allowed_upstream_headers"]),
        owned(),
        "allowed_upstream_headers are exactly the headers tokengate owns"
    );
    assert_superset(
        "allowed_client_headers",
        &exact_patterns(&response["allowed_client_headers"]),
        &denial_headers(),
    );
    // The cluster the check goes to is tokengate's forward-auth port.
    let cluster_name = http["server_uri"]["cluster"].as_str().unwrap();
    let cluster = resources["clusters"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == cluster_name)
        .unwrap_or_else(|| panic!("no cluster {cluster_name}"));
    let endpoint = &cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0];
    assert_eq!(
        endpoint["endpoint"]["address"]["socket_address"]["port_value"],
        u64::from(settings.listen.port())
    );
    assert_eq!(
        cluster["health_checks"][0]["http_health_check"]["path"], "/readyz",
        "checks go to ready replicas only"
    );
    assert_eq!(
        endpoint["endpoint"]["health_check_config"]["port_value"], 9090,
        "readiness is on the admin port"
    );
    // Its routes are envoy.yaml's: the same paths are public on both.
    let grpc = &yaml_at("envoy/envoy.yaml")["static_resources"]["listeners"][0]["filter_chains"][0]
        ["filters"][0]["typed_config"]["route_config"];
    assert_eq!(
        &hcm["route_config"]["virtual_hosts"][0]["routes"],
        &grpc["virtual_hosts"][0]["routes"]
    );
}

#[test]
fn istio_http_provider_sends_what_tokengate_reads_and_fails_closed() {
    let settings = settings("tokengate-envoy-http.toml");
    let operator = yaml("istio-extension-provider-http.yaml");
    assert_eq!(operator["kind"], "IstioOperator");
    let providers = operator["spec"]["meshConfig"]["extensionProviders"]
        .as_array()
        .unwrap();
    assert_eq!(providers.len(), 1);
    let provider = &providers[0]["envoyExtAuthzHttp"];
    assert_eq!(provider["port"], u64::from(settings.listen.port()));
    assert_eq!(provider["pathPrefix"], settings.path_prefix.as_str());
    assert_eq!(provider["failOpen"], false, "must fail closed");
    let set = |key: &str| strings(&provider[key]).into_iter().collect::<BTreeSet<_>>();
    assert_superset(
        "includeRequestHeadersInCheck",
        &set("includeRequestHeadersInCheck"),
        &read(),
    );
    assert_eq!(set("headersToUpstreamOnAllow"), owned());
    assert_superset(
        "headersToDownstreamOnDeny",
        &set("headersToDownstreamOnDeny"),
        &denial_headers(),
    );
    // Beside the gRPC provider of deploy/istio/, under a name of its own.
    let grpc = yaml_at("istio/extension-provider.yaml");
    let taken = grpc["spec"]["meshConfig"]["extensionProviders"]
        .as_array()
        .unwrap()
        .iter()
        .any(|p| p["name"] == providers[0]["name"]);
    assert!(!taken, "the HTTP provider's name is the gRPC one's");
}

#[test]
fn traefik_forward_auth_copies_exactly_tokengates_headers_and_strips_them_on_public_pages() {
    let settings = settings("tokengate-x-forwarded.toml");
    let traefik = yaml("traefik.yaml");
    let http = &traefik["http"];
    let auth = &http["middlewares"]["tokengate"]["forwardAuth"];
    let port = settings.listen.port();
    assert_eq!(
        auth["address"],
        format!("http://tokengate:{port}{}", settings.path_prefix).as_str()
    );
    assert_eq!(
        auth["trustForwardHeader"], false,
        "a client's X-Forwarded-Uri must never name the request"
    );
    let set = |v: &Value| strings(v).into_iter().collect::<BTreeSet<_>>();
    assert_eq!(set(&auth["authResponseHeaders"]), owned());
    assert_superset(
        "authRequestHeaders",
        &set(&auth["authRequestHeaders"]),
        &read(),
    );
    // The public router strips every owned header (an empty value removes it).
    let routers = http["routers"].as_object().unwrap();
    let public = routers
        .values()
        .find(|r| r["rule"].as_str().unwrap().contains("/public/"))
        .expect("a public router");
    let strip = public["middlewares"].as_array().unwrap();
    assert_eq!(strip.len(), 1);
    let stripped =
        &http["middlewares"][strip[0].as_str().unwrap()]["headers"]["customRequestHeaders"];
    let stripped: BTreeSet<String> = stripped
        .as_object()
        .unwrap()
        .iter()
        .map(|(name, value)| {
            assert_eq!(value, "", "{name}: an empty value removes the header");
            name.to_ascii_lowercase()
        })
        .collect();
    assert_eq!(stripped, owned());
    assert!(
        public["priority"].as_u64() > routers["app"]["priority"].as_u64(),
        "the public router wins over the catch-all"
    );
    // Every other router goes through the check.
    for (name, router) in routers {
        if router != public {
            assert_eq!(
                router["middlewares"],
                serde_json::json!(["tokengate"]),
                "{name}"
            );
        }
    }
}
