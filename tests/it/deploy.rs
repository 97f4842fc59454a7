//! deploy/ checked offline: every YAML document parses (PyYAML from the test
//! venv, duplicate keys refused), the Envoy, Istio and Kubernetes files have
//! the structure that makes them safe and consistent with each other, the
//! Dockerfile builds and runs the right binary, and the real `tokengate
//! check-config` accepts every tokengate config under deploy/, including the
//! one embedded in the Kubernetes ConfigMap, each of which declares the facts
//! its rules read, with the password the pod is given and the network it
//! needs to reach the database.
//!
//! Docker, kubectl, Envoy and Istio cannot run here, so their files are
//! checked by structure; tokengate's own configs are checked by tokengate.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_tokengate");
/// A syntactically valid App Certificate that is nobody's.
const DUMMY_CERT: &str = "0123456789abcdef0123456789abcdef";
/// A password or secret that is nobody's, long enough for an HS secret.
const DUMMY_SECRET: &str = "dummy-secret-that-is-nobodys-0123456789";
const TOKEN_SERVICE: &str = "tokengate.v1.TokenService";

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn deploy() -> PathBuf {
    root().join("deploy")
}

/// The installed test tools: `$TOKENGATE_TOOLS`, else `<crate>/.tools`.
#[allow(clippy::disallowed_methods)] // The test tools' folder is the test runner's setting, not service config.
fn tools_dir() -> PathBuf {
    std::env::var_os("TOKENGATE_TOOLS")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join(".tools"))
}

/// Every file under `dir` whose name ends with one of `extensions`, sorted.
fn files(dir: &Path, extensions: &[&str]) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(files(&path, extensions));
        } else if path
            .extension()
            .is_some_and(|e| extensions.iter().any(|x| e == *x))
        {
            out.push(path);
        }
    }
    out.sort();
    out
}

/// Every YAML file under deploy/, keyed by its path relative to deploy/, as
/// its list of documents (null documents dropped).
fn yaml() -> BTreeMap<String, Vec<Value>> {
    let python = tools_dir().join("venv/bin/python");
    assert!(
        python.is_file(),
        "{} is missing: run `bash .ci/setup` (it installs PyYAML from .ci/requirements.txt)",
        python.display()
    );
    let paths = files(&deploy(), &["yaml", "yml"]);
    assert!(!paths.is_empty(), "no YAML under deploy/");
    let output = Command::new(&python)
        .arg(root().join("tests/deploy/yaml_to_json.py"))
        .args(&paths)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "YAML did not parse: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let parsed: BTreeMap<String, Vec<Value>> = serde_json::from_slice(&output.stdout).unwrap();
    parsed
        .into_iter()
        .map(|(path, docs)| {
            let relative = Path::new(&path)
                .strip_prefix(deploy())
                .unwrap()
                .to_string_lossy()
                .into_owned();
            (
                relative,
                docs.into_iter().filter(|d| !d.is_null()).collect(),
            )
        })
        .collect()
}

/// The one document of `kind` in the files of `folder` (not its subfolders).
fn one<'a>(all: &'a BTreeMap<String, Vec<Value>>, folder: &str, kind: &str) -> &'a Value {
    let found: Vec<&Value> = all
        .iter()
        .filter(|(path, _)| {
            path.strip_prefix(folder)
                .is_some_and(|name| !name.contains('/'))
        })
        .flat_map(|(_, docs)| docs)
        .filter(|d| d["kind"] == kind)
        .collect();
    assert_eq!(found.len(), 1, "expected one {kind} under deploy/{folder}");
    found[0]
}

fn str_of(v: &Value) -> &str {
    v.as_str()
        .unwrap_or_else(|| panic!("expected a string, got {v}"))
}

fn array(v: &Value) -> &Vec<Value> {
    v.as_array()
        .unwrap_or_else(|| panic!("expected a list, got {v}"))
}

/// Every environment variable that a tokengate config names for a certificate.
fn certificate_vars(config_text: &str) -> BTreeSet<String> {
    let table: toml::Table = toml::from_str(config_text).unwrap();
    let projects = table.get("projects").and_then(toml::Value::as_array);
    projects
        .into_iter()
        .flatten()
        .flat_map(|p| p.get("certificates").and_then(toml::Value::as_array))
        .flatten()
        .filter_map(|c| c.get("env").and_then(toml::Value::as_str))
        .map(str::to_owned)
        .collect()
}

/// Every environment variable that a tokengate config names for another
/// secret: a `password_env` (databases, Redis), `secret_env` (HTTP facts) or
/// `hs_secret_env` (issuers), wherever it is.
fn other_secret_vars(config_text: &str) -> BTreeSet<String> {
    fn walk(value: &toml::Value, out: &mut BTreeSet<String>) {
        match value {
            toml::Value::Table(table) => {
                for (key, value) in table {
                    match value.as_str() {
                        Some(var) if key.ends_with("_env") => {
                            out.insert(var.to_owned());
                        }
                        _ => walk(value, out),
                    }
                }
            }
            toml::Value::Array(items) => items.iter().for_each(|v| walk(v, out)),
            _ => {}
        }
    }
    let table: toml::Value = toml::from_str(config_text).unwrap();
    let mut out = BTreeSet::new();
    walk(&table, &mut out);
    out
}

/// Every environment variable a tokengate config reads a secret from.
fn secret_vars(config_text: &str) -> BTreeSet<String> {
    let mut vars = certificate_vars(config_text);
    vars.extend(other_secret_vars(config_text));
    vars
}

/// Runs `tokengate check-config path` with `env` as the whole environment.
fn check_config(path: &Path, env: &BTreeMap<String, String>) -> std::process::Output {
    Command::new(BIN)
        .arg("check-config")
        .arg(path)
        .env_clear()
        .envs(env)
        .output()
        .unwrap()
}

/// Each certificate variable of `config_text` set to a dummy certificate,
/// each other secret variable to a dummy secret.
fn dummy_env(config_text: &str) -> BTreeMap<String, String> {
    let mut env: BTreeMap<String, String> = other_secret_vars(config_text)
        .into_iter()
        .map(|v| (v, DUMMY_SECRET.to_owned()))
        .collect();
    env.extend(
        certificate_vars(config_text)
            .into_iter()
            .map(|v| (v, DUMMY_CERT.to_owned())),
    );
    env
}

/// Loads a tokengate config through the library, with dummy certificates.
fn load(path: &Path) -> tokengate::config::Config {
    let env = dummy_env(&std::fs::read_to_string(path).unwrap());
    tokengate::config::load_file(path, &|name| env.get(name).cloned())
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The ConfigMap's tokengate.toml and policy.toml, written to a temp dir.
fn configmap_config(all: &BTreeMap<String, Vec<Value>>) -> (tempfile::TempDir, PathBuf) {
    let configmap = one(all, "kubernetes/", "ConfigMap");
    let dir = tempfile::tempdir().unwrap();
    for (name, text) in configmap["data"].as_object().unwrap() {
        std::fs::write(dir.path().join(name), str_of(text)).unwrap();
    }
    let path = dir.path().join("tokengate.toml");
    assert!(path.is_file(), "the ConfigMap has no tokengate.toml key");
    (dir, path)
}

/// The host and port of a `postgres://user@host:port/db` URL (5432 by default).
fn postgres_host_port(url: &str) -> (&str, u64) {
    let rest = url
        .strip_prefix("postgres://")
        .or_else(|| url.strip_prefix("postgresql://"))
        .unwrap_or_else(|| panic!("{url} is not a postgres:// URL"));
    let authority = rest.split(['/', '?']).next().unwrap();
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    match host_port.rsplit_once(':') {
        Some((host, port)) => (host, port.parse().unwrap()),
        None => (host_port, 5432),
    }
}

/// Turns a tokengate route template into a concrete path it matches.
fn sample_path(template: &str) -> String {
    template
        .split('/')
        .map(|segment| match segment {
            "{channel}" => "team-red-standup",
            "{uid}" => "42",
            "{account}" => "alice",
            "*" => "x",
            "**" => "a/b",
            literal => literal,
        })
        .collect::<Vec<_>>()
        .join("/")
}

/// The tokengate configs under deploy/: TOML files with a `[server]` or `[[projects]]`.
fn tokengate_configs() -> Vec<PathBuf> {
    files(&deploy(), &["toml"])
        .into_iter()
        .filter(|p| {
            let table: toml::Table = toml::from_str(&std::fs::read_to_string(p).unwrap())
                .unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            table.contains_key("server") || table.contains_key("projects")
        })
        .collect()
}

#[test]
fn every_yaml_document_parses_and_says_what_it_is() {
    let all = yaml();
    for expected in [
        "envoy/envoy.yaml",
        "istio/extension-provider.yaml",
        "istio/authorization-policy.yaml",
        "istio/peer-authentication.yaml",
        "istio/destination-rule.yaml",
        "kubernetes/kustomization.yaml",
        "kubernetes/deployment.yaml",
        "kubernetes/configmap.yaml",
        "kubernetes/secret.yaml",
    ] {
        assert!(
            all.get(expected).is_some_and(|d| !d.is_empty()),
            "deploy/{expected} is missing or empty"
        );
    }
    for (path, docs) in &all {
        for doc in docs {
            assert!(doc.is_object(), "{path}: a document is not a mapping");
            // Envoy's and Traefik's configs and Prometheus's rule files are not API objects.
            if path.starts_with("envoy/")
                || path.starts_with("prometheus/")
                || path == "forward-auth/envoy-http-ext-authz.yaml"
                || path == "forward-auth/traefik.yaml"
            {
                continue;
            }
            // Kubernetes and Istio objects: every one names its kind and itself.
            assert!(doc["apiVersion"].is_string(), "{path}: no apiVersion");
            assert!(doc["kind"].is_string(), "{path}: no kind");
            if doc["kind"] != "Kustomization" {
                assert!(doc["metadata"]["name"].is_string(), "{path}: no name");
                // Namespace-agnostic: the namespace is chosen at apply time.
                assert!(
                    doc["metadata"].get("namespace").is_none(),
                    "{path}: names a namespace"
                );
            }
        }
    }
}

#[test]
fn envoy_calls_tokengate_over_http2_and_fails_closed() {
    let all = yaml();
    let envoy = &all["envoy/envoy.yaml"][0];
    let resources = &envoy["static_resources"];
    let hcm = &resources["listeners"][0]["filter_chains"][0]["filters"][0];
    assert_eq!(hcm["name"], "envoy.filters.network.http_connection_manager");
    let hcm = &hcm["typed_config"];
    let filters = array(&hcm["http_filters"]);

    let ext_authz = filters
        .iter()
        .find(|f| f["name"] == "envoy.filters.http.ext_authz")
        .expect("no ext_authz filter");
    let config = &ext_authz["typed_config"];
    assert_eq!(
        config["@type"],
        "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz"
    );
    assert_eq!(config["transport_api_version"], "V3");
    assert_eq!(config["failure_mode_allow"], false, "must fail closed");
    assert!(
        config.get("with_request_body").is_none(),
        "tokengate never reads the body: do not buffer it"
    );
    let cluster_name = str_of(&config["grpc_service"]["envoy_grpc"]["cluster_name"]);

    let last = filters.last().unwrap();
    assert_eq!(
        last["name"], "envoy.filters.http.router",
        "router must be last"
    );
    assert_eq!(
        last["typed_config"]["@type"],
        "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
    );

    let clusters = array(&resources["clusters"]);
    let cluster = clusters
        .iter()
        .find(|c| c["name"] == cluster_name)
        .unwrap_or_else(|| panic!("no cluster {cluster_name}"));
    let options = &cluster["typed_extension_protocol_options"]["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"];
    assert_eq!(
        options["@type"],
        "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
    );
    assert!(
        options["explicit_http_config"]["http2_protocol_options"].is_object(),
        "the tokengate cluster must speak HTTP/2"
    );
    let endpoint = &cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"];
    assert_eq!(endpoint["address"]["socket_address"]["port_value"], 50051);
    assert_eq!(
        cluster["health_checks"][0]["grpc_health_check"]["service_name"],
        TOKEN_SERVICE
    );

    // Every route goes to a cluster that exists; at least one disables ext_authz.
    let routes = array(&hcm["route_config"]["virtual_hosts"][0]["routes"]);
    for route in routes {
        let target = str_of(&route["route"]["cluster"]);
        assert!(
            clusters.iter().any(|c| c["name"] == target),
            "no cluster {target}"
        );
    }
    let disabled = routes.iter().filter(|r| ext_authz_disabled(r)).count();
    assert!(disabled > 0, "no public route disables ext_authz");
}

/// Whether an Envoy route turns ext_authz off with `ExtAuthzPerRoute { disabled: true }`.
fn ext_authz_disabled(route: &Value) -> bool {
    let per_route = &route["typed_per_filter_config"]["envoy.filters.http.ext_authz"];
    if per_route.is_null() {
        return false;
    }
    assert_eq!(
        per_route["@type"],
        "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthzPerRoute"
    );
    per_route["disabled"] == true
}

/// The first Envoy route whose match takes `path` (prefix, exact path, or
/// path_separated_prefix; Envoy's other matchers are not used in deploy/).
fn envoy_route<'a>(routes: &'a [Value], path: &str) -> &'a Value {
    routes
        .iter()
        .find(|r| {
            let m = &r["match"];
            if let Some(prefix) = m["prefix"].as_str() {
                path.starts_with(prefix)
            } else if let Some(exact) = m["path"].as_str() {
                path == exact
            } else if let Some(prefix) = m["path_separated_prefix"].as_str() {
                path == prefix || path.starts_with(&format!("{prefix}/"))
            } else {
                panic!("unsupported Envoy route match {m}")
            }
        })
        .unwrap_or_else(|| panic!("no Envoy route takes {path}"))
}

#[test]
fn envoy_and_tokengate_routes_agree() {
    let all = yaml();
    let envoy = &all["envoy/envoy.yaml"][0];
    let hcm = &envoy["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"];
    let routes = array(&hcm["route_config"]["virtual_hosts"][0]["routes"]);
    let config = load(&deploy().join("envoy/tokengate.toml"));
    let mesh = config
        .into_parts()
        .ext_authz
        .expect("deploy/envoy/tokengate.toml: ext_authz is off");

    // Each tokengate route: Envoy asks tokengate for it unless tokengate passes it through.
    let file = std::fs::read_to_string(deploy().join("envoy/tokengate.toml")).unwrap();
    let table: toml::Table = toml::from_str(&file).unwrap();
    let templates = table["ext_authz"]["routes"].as_array().unwrap();
    assert!(!templates.is_empty());
    for route in templates {
        let path = sample_path(route["path"].as_str().unwrap());
        let pass_through = route.get("pass_through").and_then(toml::Value::as_bool) == Some(true);
        let disabled = ext_authz_disabled(envoy_route(routes, &path));
        assert_eq!(
            disabled, pass_through,
            "{path}: Envoy disables ext_authz = {disabled}, tokengate passes through = {pass_through}"
        );
    }

    // Paths on both sides: a public path Envoy does not check is pass-through in
    // tokengate too; a checked path with no tokengate route is refused there.
    let check = |method: &str, path: &str, expected: &str| {
        let disabled = ext_authz_disabled(envoy_route(routes, path));
        let tokengate = match mesh.route(method, path) {
            Some(m) if m.pass_through => "pass",
            Some(_) => "token",
            None => "deny",
        };
        let seen = if disabled { "envoy-public" } else { tokengate };
        assert_eq!(seen, expected, "{method} {path}");
        if disabled {
            assert_eq!(
                tokengate, "pass",
                "{path}: public in Envoy but checked by tokengate"
            );
        }
    };
    check("GET", "/public/index.html", "envoy-public");
    check("GET", "/public/assets/app.js", "envoy-public");
    check("POST", "/rooms/team-red-standup/join", "token");
    check("GET", "/rooms/webinar-launch/watch", "token");
    check("POST", "/rooms/team-red-standup/messages", "token");
    check("POST", "/chat/login", "token");
    check("GET", "/rooms/team-red-standup/join", "deny");
    check("POST", "/rooms/team-red-standup/kick", "deny");
    check("GET", "/admin", "deny");
    check("GET", "/", "deny");
}

#[test]
fn istio_policy_uses_a_declared_provider_that_fails_closed() {
    let all = yaml();
    let operator = one(&all, "istio/", "IstioOperator");
    let providers = array(&operator["spec"]["meshConfig"]["extensionProviders"]);
    let policy = one(&all, "istio/", "AuthorizationPolicy");
    assert_eq!(policy["spec"]["action"], "CUSTOM");
    let name = str_of(&policy["spec"]["provider"]["name"]);
    let provider = providers
        .iter()
        .find(|p| p["name"] == name)
        .unwrap_or_else(|| panic!("provider {name} is not in meshConfig.extensionProviders"));
    let grpc = &provider["envoyExtAuthzGrpc"];
    assert_eq!(grpc["failOpen"], false, "must fail closed");
    assert!(grpc["timeout"].is_string());
    for key in grpc.as_object().unwrap().keys() {
        assert!(
            [
                "service",
                "port",
                "timeout",
                "failOpen",
                "statusOnError",
                "clearRouteCache",
                "includeRequestBodyInCheck"
            ]
            .contains(&key.as_str()),
            "envoyExtAuthzGrpc has no field {key}"
        );
    }
    assert!(
        !policy["spec"]["selector"]["matchLabels"]
            .as_object()
            .unwrap()
            .is_empty(),
        "the policy must select the app's workload"
    );

    // The provider, the DestinationRule and the Kubernetes Service name the same thing.
    let service = one(&all, "kubernetes/", "Service");
    let service_name = str_of(&service["metadata"]["name"]);
    let host = str_of(&grpc["service"]);
    assert!(
        host.starts_with(&format!("{service_name}.")) && host.ends_with(".svc.cluster.local"),
        "{host} is not the FQDN of Service {service_name}"
    );
    let grpc_port = array(&service["spec"]["ports"])
        .iter()
        .find(|p| p["appProtocol"] == "grpc")
        .expect("no grpc port on the Service");
    assert_eq!(grpc["port"], grpc_port["port"]);
    let rule = one(&all, "istio/", "DestinationRule");
    assert_eq!(rule["spec"]["host"], host);
    assert_eq!(rule["spec"]["trafficPolicy"]["tls"]["mode"], "ISTIO_MUTUAL");

    let peer = one(&all, "istio/", "PeerAuthentication");
    assert_eq!(peer["spec"]["mtls"]["mode"], "STRICT");
    let pod_labels =
        &one(&all, "kubernetes/", "Deployment")["spec"]["template"]["metadata"]["labels"];
    for (key, value) in peer["spec"]["selector"]["matchLabels"].as_object().unwrap() {
        assert_eq!(&pod_labels[key], value, "PeerAuthentication selects {key}");
    }

    // Every token route of the in-cluster config is sent to tokengate by the policy.
    let (_dir, path) = configmap_config(&all);
    let text = std::fs::read_to_string(&path).unwrap();
    let table: toml::Table = toml::from_str(&text).unwrap();
    let paths: Vec<&str> = array(&policy["spec"]["rules"][0]["to"][0]["operation"]["paths"])
        .iter()
        .map(str_of)
        .collect();
    for route in table["ext_authz"]["routes"].as_array().unwrap() {
        if route.get("pass_through").and_then(toml::Value::as_bool) == Some(true) {
            continue;
        }
        let sample = sample_path(route["path"].as_str().unwrap());
        let covered = paths.iter().any(|p| match p.strip_suffix('*') {
            Some(prefix) => sample.starts_with(prefix),
            None => sample == *p,
        });
        assert!(
            covered,
            "{sample} is a token route but the AuthorizationPolicy skips it"
        );
    }
}

#[test]
fn kubernetes_objects_reference_each_other_correctly() {
    let all = yaml();
    let kustomization = one(&all, "kubernetes/", "Kustomization");
    let listed: BTreeSet<&str> = array(&kustomization["resources"])
        .iter()
        .map(str_of)
        .collect();
    for file in &listed {
        assert!(
            all.contains_key(&format!("kubernetes/{file}")),
            "{file} is missing"
        );
    }
    // The Secret template is never applied by `apply -k`: it would overwrite real values.
    assert!(!listed.contains("secret.yaml"));
    let deployment = one(&all, "kubernetes/", "Deployment");
    let spec = &deployment["spec"];
    assert!(
        spec.get("replicas").is_none(),
        "the HPA owns replicas; `apply` would reset them"
    );
    let pod_labels = spec["template"]["metadata"]["labels"].as_object().unwrap();
    let selects_pods = |selector: &Value, what: &str| {
        let selector = selector.as_object().unwrap();
        assert!(!selector.is_empty(), "{what}: empty selector");
        for (key, value) in selector {
            assert_eq!(
                pod_labels.get(key),
                Some(value),
                "{what} selects {key}={value}"
            );
        }
    };
    selects_pods(&spec["selector"]["matchLabels"], "Deployment");

    // The pod: non-root, read-only, no capabilities, resources, probes.
    let pod = &spec["template"]["spec"];
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(pod["automountServiceAccountToken"], false);
    let containers = array(&pod["containers"]);
    assert_eq!(containers.len(), 1);
    let container = &containers[0];
    let security = &container["securityContext"];
    assert_eq!(security["readOnlyRootFilesystem"], true);
    assert_eq!(security["allowPrivilegeEscalation"], false);
    assert_eq!(security["capabilities"]["drop"], serde_json::json!(["ALL"]));
    assert!(container["resources"]["requests"]["cpu"].is_string());
    assert!(container["resources"]["requests"]["memory"].is_string());
    assert!(container["resources"]["limits"]["memory"].is_string());
    let port_of = |name: &str| {
        array(&container["ports"])
            .iter()
            .find(|p| p["name"] == name)
            .unwrap_or_else(|| panic!("no container port {name}"))["containerPort"]
            .as_u64()
            .unwrap()
    };
    let grpc_port = port_of("grpc");
    assert_eq!(grpc_port, 50051);
    assert_eq!(port_of("admin"), 9090);
    for probe in ["startupProbe", "readinessProbe", "livenessProbe"] {
        let grpc = &container[probe]["grpc"];
        assert_eq!(
            grpc["port"], grpc_port,
            "{probe} is not a gRPC probe on the gRPC port"
        );
    }
    assert_eq!(
        container["readinessProbe"]["grpc"]["service"],
        TOKEN_SERVICE
    );

    // The Service: same pods, grpc with appProtocol, targets resolve to container ports.
    let service = one(&all, "kubernetes/", "Service");
    selects_pods(&service["spec"]["selector"], "Service");
    let ports = array(&service["spec"]["ports"]);
    let grpc = ports.iter().find(|p| p["port"] == 50051).expect("no 50051");
    assert_eq!(grpc["appProtocol"], "grpc");
    assert!(ports.iter().any(|p| p["port"] == 9090), "no admin port");
    for port in ports {
        let target = &port["targetPort"];
        let resolved = target
            .as_str()
            .map_or_else(|| target.as_u64().unwrap(), port_of);
        assert_eq!(Some(resolved), port["port"].as_u64(), "{port}");
    }

    // HPA, PDB, NetworkPolicy and ServiceAccount point at this Deployment.
    let name = &deployment["metadata"]["name"];
    let hpa = one(&all, "kubernetes/", "HorizontalPodAutoscaler");
    assert_eq!(hpa["spec"]["scaleTargetRef"]["kind"], "Deployment");
    assert_eq!(&hpa["spec"]["scaleTargetRef"]["name"], name);
    assert!(hpa["spec"]["minReplicas"].as_u64().unwrap() >= 2);
    let pdb = one(&all, "kubernetes/", "PodDisruptionBudget");
    selects_pods(
        &pdb["spec"]["selector"]["matchLabels"],
        "PodDisruptionBudget",
    );
    let policy = one(&all, "kubernetes/", "NetworkPolicy");
    selects_pods(
        &policy["spec"]["podSelector"]["matchLabels"],
        "NetworkPolicy",
    );
    let ingress_ports: BTreeSet<u64> = array(&policy["spec"]["ingress"])
        .iter()
        .flat_map(|rule| array(&rule["ports"]))
        .map(|p| p["port"].as_u64().unwrap())
        .collect();
    assert_eq!(ingress_ports, BTreeSet::from([50051, 9090]));
    let egress_ports: BTreeSet<u64> = array(&policy["spec"]["egress"])
        .iter()
        .flat_map(|rule| array(&rule["ports"]))
        .map(|p| p["port"].as_u64().unwrap())
        .collect();
    assert_eq!(egress_ports, BTreeSet::from([53, 443, 5432]));
    let account = one(&all, "kubernetes/", "ServiceAccount");
    assert_eq!(pod["serviceAccountName"], account["metadata"]["name"]);

    // Every ConfigMap and Secret the pod reads exists, with the keys it reads.
    let configmap = one(&all, "kubernetes/", "ConfigMap");
    let volumes = array(&pod["volumes"]);
    let config_volume = volumes
        .iter()
        .find(|v| v["configMap"].is_object())
        .expect("no ConfigMap volume");
    assert_eq!(
        config_volume["configMap"]["name"],
        configmap["metadata"]["name"]
    );
    let mount = array(&container["volumeMounts"])
        .iter()
        .find(|m| m["name"] == config_volume["name"])
        .expect("the config volume is not mounted");
    assert_eq!(
        mount["mountPath"], "/etc/tokengate",
        "the image reads /etc/tokengate"
    );
    let secret = one(&all, "kubernetes/", "Secret");
    let secret_keys: BTreeSet<&str> = secret["stringData"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    let mut env_vars = BTreeSet::new();
    for var in array(&container["env"]) {
        let reference = &var["valueFrom"]["secretKeyRef"];
        assert_eq!(reference["name"], secret["metadata"]["name"]);
        let key = str_of(&reference["key"]);
        assert!(secret_keys.contains(key), "the Secret has no key {key}");
        // The template's keys are the variables' names (the README's
        // `kubectl create secret` and the placeholder test rely on it).
        assert_eq!(key, str_of(&var["name"]));
        env_vars.insert(str_of(&var["name"]).to_owned());
    }
    // ... and they are exactly the secrets the config reads from the
    // environment: the certificates and the facts database's password. A
    // variable the config names and the pod lacks stops tokengate at start.
    let config_text = str_of(&configmap["data"]["tokengate.toml"]);
    let named = secret_vars(config_text);
    assert_eq!(env_vars, named);
    assert!(
        named.contains("TOKENGATE_DB_PASSWORD"),
        "the ConfigMap's config reads no database password: {named:?}"
    );
    assert_eq!(
        secret_keys,
        named.iter().map(String::as_str).collect(),
        "the Secret template's keys are the variables the config names"
    );

    // The NetworkPolicy lets the pods reach each database the config names:
    // a rule on its port to the namespace of its `<service>.<namespace>.svc` host.
    let table: toml::Table = toml::from_str(config_text).unwrap();
    let databases = table["databases"].as_table().unwrap();
    assert!(!databases.is_empty());
    for (name, database) in databases {
        let url = database["url"].as_str().unwrap();
        let (host, port) = postgres_host_port(url);
        let namespace = host
            .strip_suffix(".svc")
            .and_then(|h| h.split_once('.'))
            .map(|(_, ns)| ns)
            .unwrap_or_else(|| panic!("databases.{name}: {host} is not <service>.<namespace>.svc"));
        let allowed = array(&policy["spec"]["egress"]).iter().any(|rule| {
            array(&rule["ports"])
                .iter()
                .any(|p| p["port"] == port && p["protocol"] == "TCP")
                && array(&rule["to"]).iter().any(|to| {
                    to["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"]
                        == namespace
                        && to["podSelector"]["matchLabels"].is_object()
                })
        });
        assert!(
            allowed,
            "databases.{name}: no egress to pods of namespace {namespace} on TCP {port}"
        );
    }

    // Kubernetes waits for the preStop sleep plus the drain before SIGKILL.
    let (_dir, path) = configmap_config(&all);
    let config = load(&path);
    let pre_stop = container["lifecycle"]["preStop"]["sleep"]["seconds"]
        .as_u64()
        .unwrap_or(0);
    let kill_after = Duration::from_secs(pod["terminationGracePeriodSeconds"].as_u64().unwrap());
    assert!(
        kill_after > config.server().grace_period() + Duration::from_secs(pre_stop),
        "terminationGracePeriodSeconds {kill_after:?} <= preStop {pre_stop}s + grace_period {:?}",
        config.server().grace_period()
    );
    assert_eq!(config.server().grpc_listen().port() as u64, grpc_port);
    assert_eq!(config.server().admin_listen().port(), 9090);
    assert!(
        config.ext_authz().is_some(),
        "the ConfigMap's config has ext_authz off"
    );
}

#[test]
fn the_configmap_ships_the_example_policy() {
    let all = yaml();
    let configmap = one(&all, "kubernetes/", "ConfigMap");
    let example = std::fs::read_to_string(deploy().join("examples/policy.toml")).unwrap();
    assert_eq!(
        str_of(&configmap["data"]["policy.toml"]),
        example,
        "deploy/kubernetes/configmap.yaml's policy.toml drifted from deploy/examples/policy.toml"
    );
}

#[test]
fn check_config_accepts_every_tokengate_config() {
    let mut configs = tokengate_configs();
    let expected = ["envoy/tokengate.toml", "examples/tokengate.toml"];
    for name in expected {
        assert!(configs.contains(&deploy().join(name)), "{name} not found");
    }
    let all = yaml();
    let (_dir, embedded) = configmap_config(&all);
    configs.push(embedded);
    for path in &configs {
        let text = std::fs::read_to_string(path).unwrap();
        let env = dummy_env(&text);
        let output = check_config(path, &env);
        assert!(
            output.status.success(),
            "{}: check-config failed: {}",
            path.display(),
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(String::from_utf8_lossy(&output.stdout).starts_with("config ok"));
        // The same config without any one of its secret variables (a
        // certificate, the database password) is refused (exit 64, naming it).
        assert!(!env.is_empty(), "{}", path.display());
        for var in env.keys() {
            let mut missing = env.clone();
            missing.remove(var);
            let output = check_config(path, &missing);
            assert_eq!(
                output.status.code(),
                Some(64),
                "{} without {var}",
                path.display()
            );
            assert!(
                String::from_utf8_lossy(&output.stderr).contains(var.as_str()),
                "{} without {var}: {}",
                path.display(),
                String::from_utf8_lossy(&output.stderr)
            );
        }
    }
}

/// A config's `[databases]` without their `url`s (which differ by setting),
/// and its `[[facts]]`.
fn facts_part(config_text: &str) -> (toml::Value, toml::Value) {
    let table: toml::Table = toml::from_str(config_text).unwrap();
    let mut databases = table
        .get("databases")
        .cloned()
        .unwrap_or_else(|| toml::Value::Table(toml::Table::new()));
    for (_, database) in databases.as_table_mut().unwrap().iter_mut() {
        database.as_table_mut().unwrap().remove("url");
    }
    let facts = table
        .get("facts")
        .cloned()
        .unwrap_or_else(|| toml::Value::Array(Vec::new()));
    (databases, facts)
}

#[test]
fn every_config_of_the_example_policy_declares_the_example_facts() {
    let example_policy = std::fs::read_to_string(deploy().join("examples/policy.toml")).unwrap();
    let example = std::fs::read_to_string(deploy().join("examples/tokengate.toml")).unwrap();
    let expected = facts_part(&example);
    assert!(
        expected.1.as_array().is_some_and(|f| f.len() == 2),
        "the example declares event_hosts and tickets"
    );

    // Each tokengate config under deploy/, the ConfigMap's and the Redis overlay's.
    let all = yaml();
    let mut configs: Vec<(String, String, String)> = tokengate_configs()
        .into_iter()
        .map(|path| {
            let text = std::fs::read_to_string(&path).unwrap();
            let table: toml::Table = toml::from_str(&text).unwrap();
            let rules = table
                .get("rules_file")
                .and_then(toml::Value::as_str)
                .map(|file| std::fs::read_to_string(path.parent().unwrap().join(file)).unwrap())
                .unwrap_or_default();
            (path.display().to_string(), text, rules)
        })
        .collect();
    for file in [
        "kubernetes/configmap.yaml",
        "kubernetes/redis/configmap.yaml",
    ] {
        let configmap = &all[file][0];
        let policy = &all["kubernetes/configmap.yaml"][0]["data"]["policy.toml"];
        configs.push((
            file.to_owned(),
            str_of(&configmap["data"]["tokengate.toml"]).to_owned(),
            str_of(policy).to_owned(),
        ));
    }
    let users: Vec<&(String, String, String)> = configs
        .iter()
        .filter(|(_, _, rules)| *rules == example_policy)
        .collect();
    assert!(
        users.len() >= 4,
        "{:?}",
        users.iter().map(|u| &u.0).collect::<Vec<_>>()
    );
    for (name, text, _) in users {
        assert_eq!(
            facts_part(text),
            expected,
            "{name}: the facts drifted from the example's"
        );
        assert!(
            secret_vars(text).contains("TOKENGATE_DB_PASSWORD"),
            "{name}: the password is not read from TOKENGATE_DB_PASSWORD"
        );
    }
}

#[test]
fn the_secret_template_holds_no_usable_certificate() {
    let all = yaml();
    let secret = one(&all, "kubernetes/", "Secret");
    let (_dir, path) = configmap_config(&all);
    let values: BTreeMap<String, String> = secret["stringData"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), str_of(v).to_owned()))
        .collect();
    for (key, value) in &values {
        assert!(
            !(value.len() == 32 && value.bytes().all(|b| b.is_ascii_hexdigit())),
            "{key} looks like a real App Certificate"
        );
    }
    // Applied as is, the placeholders stop tokengate at start.
    let output = check_config(&path, &values);
    assert_eq!(output.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&output.stderr).contains("32 hexadecimal"));
}

/// The Dockerfile's instructions, continuation lines joined, comments dropped.
fn dockerfile() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(deploy().join("Dockerfile")).unwrap();
    let mut out = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('#') || (line.is_empty() && current.is_empty()) {
            continue;
        }
        match line.strip_suffix('\\') {
            Some(head) => current.push_str(head),
            None => {
                current.push_str(line);
                let (word, rest) = current.split_once(' ').unwrap_or((&current, ""));
                out.push((word.to_ascii_uppercase(), rest.trim().to_owned()));
                current.clear();
            }
        }
    }
    out
}

#[test]
fn the_dockerfile_builds_and_runs_tokengate_as_non_root() {
    let instructions = dockerfile();
    let of = |word: &str| -> Vec<&str> {
        instructions
            .iter()
            .filter(|(w, _)| w == word)
            .map(|(_, rest)| rest.as_str())
            .collect()
    };
    let stages = of("FROM");
    assert!(stages.len() >= 2, "expected a multi-stage build");
    let runtime_start = instructions.iter().rposition(|(w, _)| w == "FROM").unwrap();
    let runtime = &instructions[runtime_start..];
    let builder = &instructions[..runtime_start];
    let runs = |part: &[(String, String)]| -> String {
        part.iter()
            .filter(|(w, _)| w == "RUN")
            .map(|(_, r)| r.as_str())
            .collect::<Vec<_>>()
            .join("\n")
    };
    assert!(
        runs(builder).contains("zlib1g-dev"),
        "the builder needs the system zlib"
    );
    assert!(
        runs(builder).contains("cargo build --release --locked --bin tokengate"),
        "the builder must build the locked release binary"
    );
    assert!(
        runs(runtime).contains("ca-certificates"),
        "IdP TLS needs the CA bundle"
    );

    // The binary copied into the runtime is the one Cargo builds and the entrypoint runs.
    let manifest: toml::Table =
        toml::from_str(&std::fs::read_to_string(root().join("Cargo.toml")).unwrap()).unwrap();
    let bin = manifest["bin"][0]["name"].as_str().unwrap();
    assert!(
        runtime.iter().any(|(w, r)| w == "COPY"
            && r.contains("--from=")
            && r.ends_with(&format!("/bin/{bin}"))),
        "the runtime stage does not copy the {bin} binary"
    );
    let entrypoint: Vec<String> = serde_json::from_str(of("ENTRYPOINT")[0]).unwrap();
    assert_eq!(
        entrypoint,
        [bin, "serve", "--config", "/etc/tokengate/tokengate.toml"]
    );
    let exposed: BTreeSet<&str> = of("EXPOSE").iter().flat_map(|e| e.split(' ')).collect();
    assert_eq!(exposed, BTreeSet::from(["50051", "9090"]));

    // A numeric non-root user, the same the Deployment asks for.
    let user = runtime
        .iter()
        .rfind(|(w, _)| w == "USER")
        .expect("the runtime stage runs as root")
        .1
        .clone();
    let uid: u64 = user.split(':').next().unwrap().parse().unwrap();
    assert_ne!(uid, 0);
    let all = yaml();
    let pod = &one(&all, "kubernetes/", "Deployment")["spec"]["template"]["spec"];
    assert_eq!(pod["securityContext"]["runAsUser"], uid);

    // No secret is baked in: no ARG or ENV that carries one.
    for (word, rest) in &instructions {
        if word == "ARG" || word == "ENV" {
            let upper = rest.to_ascii_uppercase();
            for bad in ["CERT", "SECRET", "TOKEN", "PASSWORD", "KEY"] {
                assert!(!upper.contains(bad), "{word} {rest} may carry a secret");
            }
        }
    }

    // Every COPY source from the context exists and is let in by the ignore file.
    let ignore = std::fs::read_to_string(deploy().join("Dockerfile.dockerignore")).unwrap();
    let allowed: Vec<&str> = ignore
        .lines()
        .filter_map(|l| l.trim().strip_prefix('!'))
        .map(|p| p.trim_end_matches('/'))
        .collect();
    assert!(
        ignore.lines().any(|l| l.trim() == "*"),
        "the ignore file must exclude by default"
    );
    for (_, rest) in instructions
        .iter()
        .filter(|(w, r)| w == "COPY" && !r.contains("--from="))
    {
        let parts: Vec<&str> = rest.split_whitespace().collect();
        for source in &parts[..parts.len() - 1] {
            assert!(root().join(source).exists(), "COPY {source}: no such file");
            assert!(
                allowed.contains(source),
                "COPY {source}: excluded by the ignore file"
            );
        }
    }
}

/// The oldest Kubernetes the manifests support: the `preStop.sleep` action is 1.30.
const OLDEST_KUBERNETES: &str = "1.30.0";

#[test]
fn kubernetes_manifests_match_the_api_schemas() {
    let validate = tools_dir().join("venv/bin/kubernetes-validate");
    assert!(
        validate.is_file(),
        "{} is missing: run `bash .ci/setup` (kubernetes-validate is in .ci/requirements.txt)",
        validate.display()
    );
    // Every file whose documents are all built-in Kubernetes objects; Istio's
    // and cert-manager's CRDs and kustomize's file have no schema there, and
    // an overlay's patches are partial objects by design.
    let all = yaml();
    let patches = overlay_patches(&all);
    let manifests: Vec<PathBuf> = all
        .iter()
        .filter(|(path, _)| !patches.contains(*path))
        .filter(|(_, docs)| {
            !docs.is_empty()
                && docs.iter().all(|d| {
                    d["apiVersion"].as_str().is_some_and(|v| {
                        !v.contains("istio.io")
                            && !v.starts_with("kustomize.")
                            && !v.starts_with("cert-manager.io")
                    })
                })
        })
        .map(|(path, _)| deploy().join(path))
        .collect();
    for expected in [
        "kubernetes/deployment.yaml",
        "kubernetes/networkpolicy.yaml",
        "kubernetes/hpa.yaml",
        "kubernetes/redis/redis.yaml",
        "kubernetes/redis/networkpolicy.yaml",
    ] {
        assert!(
            manifests.contains(&deploy().join(expected)),
            "{expected} not validated"
        );
    }
    // Strict: an unknown or misspelt field fails, as `kubectl apply` would refuse it.
    for version in [OLDEST_KUBERNETES, "1.37.0"] {
        let output = Command::new(&validate)
            .args(["--strict", "--kubernetes-version", version])
            .args(&manifests)
            .output()
            .unwrap();
        let report = String::from_utf8_lossy(&output.stdout).into_owned()
            + &String::from_utf8_lossy(&output.stderr);
        assert!(output.status.success(), "Kubernetes {version}:\n{report}");
        assert!(
            !report.contains("Couldn't find schema"),
            "Kubernetes {version}:\n{report}"
        );
        let documents: usize = manifests
            .iter()
            .map(|path| all[path.strip_prefix(deploy()).unwrap().to_str().unwrap()].len())
            .sum();
        assert_eq!(
            report.matches(" passed ").count(),
            documents,
            "Kubernetes {version}:\n{report}"
        );
    }
}

/// The files (relative to deploy/) that overlays name as patches.
fn overlay_patches(all: &BTreeMap<String, Vec<Value>>) -> BTreeSet<String> {
    all.iter()
        .filter(|(path, _)| path.ends_with("/kustomization.yaml"))
        .flat_map(|(path, docs)| {
            let folder = path.trim_end_matches("kustomization.yaml").to_owned();
            docs.iter()
                .flat_map(|d| d["patches"].as_array().cloned().unwrap_or_default())
                .filter_map(move |p| p["path"].as_str().map(|file| format!("{folder}{file}")))
        })
        .collect()
}

#[test]
fn the_redis_overlay_is_the_base_plus_a_locked_down_redis_and_a_config_that_uses_it() {
    let all = yaml();
    let kustomization = one(&all, "kubernetes/redis/", "Kustomization");
    let resources: BTreeSet<&str> = array(&kustomization["resources"])
        .iter()
        .map(str_of)
        .collect();
    assert!(resources.contains(".."), "the overlay builds on the base");
    assert!(
        !resources.contains("secret.yaml"),
        "the Secret template is never applied"
    );
    for file in resources.iter().filter(|f| **f != "..") {
        assert!(
            all.contains_key(&format!("kubernetes/redis/{file}")),
            "{file} is missing"
        );
    }
    for patch in overlay_patches(&all) {
        assert!(all.contains_key(&patch), "{patch} is missing");
    }

    // The config is the base's with the limits appended, and check-config accepts it.
    let base = one(&all, "kubernetes/", "ConfigMap");
    let overlay = &all["kubernetes/redis/configmap.yaml"][0];
    let base_text = str_of(&base["data"]["tokengate.toml"]);
    let text = str_of(&overlay["data"]["tokengate.toml"]);
    assert!(
        text.starts_with(base_text.trim_end()),
        "the overlay's tokengate.toml drifted from the base's"
    );
    let table: toml::Table = toml::from_str(text).unwrap();
    let redis = &table["limits"]["redis"];
    let password_file = redis["password_file"].as_str().unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("password"), "0123abcd").unwrap();
    std::fs::write(
        dir.path().join("policy.toml"),
        str_of(&base["data"]["policy.toml"]),
    )
    .unwrap();
    let local = text.replace(password_file, dir.path().join("password").to_str().unwrap());
    let path = dir.path().join("tokengate.toml");
    std::fs::write(&path, &local).unwrap();
    let output = check_config(&path, &dummy_env(&local));
    assert!(
        output.status.success(),
        "check-config: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains("shared through redis://tokengate-redis:6379/0"),
        "{stdout}"
    );

    // The URL names the Service; the replica count is the HPA's minimum.
    let redis_docs = &all["kubernetes/redis/redis.yaml"];
    let service = redis_docs.iter().find(|d| d["kind"] == "Service").unwrap();
    let url = redis["url"].as_str().unwrap();
    let port = service["spec"]["ports"][0]["port"].as_u64().unwrap();
    assert_eq!(
        url,
        format!("redis://{}:{port}/0", str_of(&service["metadata"]["name"]))
    );
    let hpa = one(&all, "kubernetes/", "HorizontalPodAutoscaler");
    assert_eq!(
        redis["replicas"].as_integer().map(|n| n as u64),
        hpa["spec"]["minReplicas"].as_u64()
    );

    // tokengate mounts the password where password_file reads it, from the Secret.
    let secret = one(&all, "kubernetes/redis/", "Secret");
    let secret_name = str_of(&secret["metadata"]["name"]);
    let patch = &all["kubernetes/redis/deployment.yaml"][0];
    let pod = &patch["spec"]["template"]["spec"];
    let mount = array(&pod["containers"][0]["volumeMounts"])
        .iter()
        .find(|m| m["name"] == "redis-password")
        .expect("the password volume is mounted");
    let volume = array(&pod["volumes"])
        .iter()
        .find(|v| v["name"] == "redis-password")
        .unwrap();
    assert_eq!(volume["secret"]["secretName"], secret_name);
    let item = &volume["secret"]["items"][0];
    assert_eq!(
        format!("{}/{}", str_of(&mount["mountPath"]), str_of(&item["path"])),
        password_file
    );
    assert_eq!(mount["readOnly"], true);

    // Redis: one instance, not root, read-only, bounded, no persistence, ACLs.
    let deployment = redis_docs
        .iter()
        .find(|d| d["kind"] == "Deployment")
        .unwrap();
    let spec = &deployment["spec"];
    assert_eq!(spec["replicas"], 1);
    let pod = &spec["template"]["spec"];
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(pod["automountServiceAccountToken"], false);
    let container = &pod["containers"][0];
    assert_eq!(container["securityContext"]["readOnlyRootFilesystem"], true);
    assert_eq!(
        container["securityContext"]["allowPrivilegeEscalation"],
        false
    );
    assert!(container["resources"]["limits"]["memory"].is_string());
    let config = redis_docs
        .iter()
        .find(|d| d["kind"] == "ConfigMap")
        .unwrap();
    let conf = str_of(&config["data"]["redis.conf"]);
    for line in [
        "save \"\"",
        "appendonly no",
        "maxmemory-policy volatile-ttl",
        "aclfile /run/redis/users.acl",
    ] {
        assert!(
            conf.lines().any(|l| l.trim() == line),
            "redis.conf lacks {line:?}"
        );
    }
    assert!(conf.lines().any(|l| l.starts_with("maxmemory ")));
    let rules = str_of(&config["data"]["acl-rules"]);
    let prefix = table["limits"]["redis"]
        .get("key_prefix")
        .and_then(toml::Value::as_str)
        .unwrap_or("tokengate:rl:");
    assert!(
        rules.contains(&format!("~{prefix}*")),
        "the ACL covers the key prefix: {rules}"
    );
    assert!(
        rules.contains("-@all"),
        "the ACL grants nothing else: {rules}"
    );
    assert_eq!(
        redis["username"].as_str(),
        Some("tokengate"),
        "tokengate logs in as the ACL user"
    );
    let pod_labels = spec["template"]["metadata"]["labels"].as_object().unwrap();
    for (key, value) in service["spec"]["selector"].as_object().unwrap() {
        assert_eq!(
            pod_labels.get(key),
            Some(value),
            "the Service selects {key}"
        );
    }

    // Only tokengate reaches Redis, and tokengate may reach it.
    let policy = one(&all, "kubernetes/redis/", "NetworkPolicy");
    let from = &policy["spec"]["ingress"][0];
    assert_eq!(
        from["from"][0]["podSelector"]["matchLabels"]["app.kubernetes.io/name"],
        "tokengate"
    );
    assert_eq!(from["ports"][0]["port"], port);
    assert_eq!(policy["spec"]["egress"], serde_json::json!([]));
    let egress = array(&kustomization["patches"])
        .iter()
        .find_map(|p| p["patch"].as_str())
        .expect("the overlay patches tokengate's egress");
    assert!(egress.contains("tokengate-redis") && egress.contains(&format!("port: {port}")));
}
