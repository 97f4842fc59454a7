//! `tokengate check-config` and `tokengate serve` on good and bad configs,
//! through the real binary: exit codes, the key each error names, and that
//! no certificate or database password is ever printed.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use tokengate::token::AppCertificate;

use crate::support::fixtures::LOBBY;

const BIN: &str = env!("CARGO_BIN_EXE_tokengate");

/// The secrets the example config reads from the environment (test values):
/// three certificates, then the facts database's password.
pub(crate) const EXAMPLE_ENV: [(&str, &str); 4] = [
    (
        "AGORA_MAIN_CERT_PRIMARY",
        "5CFd2fd1755d40ecb72977518be15d3b",
    ),
    (
        "AGORA_MAIN_CERT_SECONDARY",
        "0123456789abcdef0123456789abcdef",
    ),
    (
        "AGORA_EVENTS_CERT_PRIMARY",
        "fedcba9876543210fedcba9876543210",
    ),
    ("TOKENGATE_DB_PASSWORD", DB_PASSWORD),
];

/// The example's database password: it must never be printed.
const DB_PASSWORD: &str = "pg-Pa55word-of-the-test";

/// The example's certificates: `EXAMPLE_ENV` but the password.
fn example_certificates() -> impl Iterator<Item = &'static str> {
    EXAMPLE_ENV
        .iter()
        .filter(|(name, _)| name.starts_with("AGORA_"))
        .map(|(_, cert)| *cert)
}

/// A secret that is not a valid certificate: it must not be echoed either.
const NOT_A_CERT: &str = "s3cr3t-but-not-hex";

fn example_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/examples")
}

/// Runs the binary with only the given environment (plus PATH), never hanging.
#[allow(clippy::disallowed_methods)] // The child process needs the runner's PATH to find its tools.
pub(crate) fn run(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = Command::new(BIN);
    command.args(args).env_clear();
    if let Some(path) = std::env::var_os("PATH") {
        command.env("PATH", path);
    }
    for (k, v) in env {
        command.env(k, v);
    }
    let child = command
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    wait_bounded(child)
}

/// Waits for `child` for at most 60 s (a serve that wrongly starts would never exit).
fn wait_bounded(mut child: std::process::Child) -> Output {
    for _ in 0..600 {
        if child.try_wait().unwrap().is_some() {
            return child.wait_with_output().unwrap();
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let _ = child.kill();
    let output = child.wait_with_output().unwrap();
    panic!(
        "tokengate did not exit; stderr: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

pub(crate) fn text(output: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

pub(crate) fn assert_no_certificate(all: &str) {
    let lower = all.to_lowercase();
    for cert in example_certificates() {
        assert!(
            !lower.contains(&cert.to_lowercase()),
            "a certificate is printed: {all}"
        );
    }
    assert!(!all.contains(NOT_A_CERT), "a secret is printed: {all}");
    assert!(
        !lower.contains(&DB_PASSWORD.to_lowercase()),
        "the database password is printed: {all}"
    );
}

#[test]
fn the_example_config_passes_and_prints_only_fingerprints() {
    let path = example_dir().join("tokengate.toml");
    let output = run(&["check-config", path.to_str().unwrap()], &EXAMPLE_ENV);
    let (stdout, stderr) = text(&output);
    assert_eq!(output.status.code(), Some(0), "{stdout}\n{stderr}");
    assert_no_certificate(&format!("{stdout}{stderr}"));
    for cert in example_certificates() {
        let fingerprint = AppCertificate::parse(cert)
            .unwrap()
            .fingerprint()
            .to_string();
        assert!(stdout.contains(&fingerprint), "{fingerprint} in {stdout}");
    }
    for expected in [
        "config ok",
        "project \"main\": app id 970CA35de60c44645bbae8a215061b33",
        "project \"events\"",
        "certificate \"secondary\"",
        "issuer \"company-sso\"",
        "issuer \"backend-auth\"",
        "0.0.0.0:50051",
        "0.0.0.0:9090",
        // The facts the webinar rules read, and their database by URL only.
        "database \"app\": postgres://tokengate@postgres.app.svc:5432/app (pool 8",
        "fact \"event_hosts\": postgres databases.app, dropped on NOTIFY event_hosts_changed",
        "fact \"tickets\": postgres databases.app, dropped on NOTIFY tickets_changed",
    ] {
        assert!(stdout.contains(expected), "{expected:?} in {stdout}");
    }
    // The rules come from policy.toml next to it: every rule is listed.
    let policy = std::fs::read_to_string(example_dir().join("policy.toml")).unwrap();
    let rules = policy.matches("[[rules]]").count();
    assert!(rules > 0);
    assert!(stdout.contains(&format!("rules: {rules}")), "{stdout}");
    assert!(stdout.contains("suspended users"), "{stdout}");
}

#[test]
fn the_example_config_without_its_env_names_the_certificate() {
    let path = example_dir().join("tokengate.toml");
    let output = run(&["check-config", path.to_str().unwrap()], &EXAMPLE_ENV[..1]);
    let (stdout, stderr) = text(&output);
    assert_eq!(output.status.code(), Some(64), "{stdout}\n{stderr}");
    assert!(stderr.contains("projects[0].certificates[1]"), "{stderr}");
    assert!(stderr.contains("AGORA_MAIN_CERT_SECONDARY"), "{stderr}");
}

#[test]
fn the_example_config_without_its_database_password_names_the_variable() {
    let path = example_dir().join("tokengate.toml");
    let output = run(&["check-config", path.to_str().unwrap()], &EXAMPLE_ENV[..3]);
    let (stdout, stderr) = text(&output);
    assert_eq!(output.status.code(), Some(64), "{stdout}\n{stderr}");
    assert!(stderr.contains("databases.app.password_env"), "{stderr}");
    assert!(stderr.contains("TOKENGATE_DB_PASSWORD"), "{stderr}");
    assert_no_certificate(&format!("{stdout}{stderr}"));
}

/// A valid config with one project, one issuer and one rule; each case edits it.
pub(crate) fn base_config() -> String {
    r#"
[server]
grpc_listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
grace_period = "5s"

[[projects]]
name = "main"
app_id = "970CA35de60c44645bbae8a215061b33"
signing_certificate = "primary"
certificates = [{ name = "primary", env = "AGORA_MAIN_CERT_PRIMARY" }]

[[issuers]]
name = "idp"
issuer = "https://idp.test.example"
audiences = ["tokengate"]
jwks_url = "http://127.0.0.1:9/jwks"
"#
    .to_owned()
        + LOBBY
}

fn edit(from: &str, to: &str) -> String {
    let base = base_config();
    assert!(base.contains(from), "the case edits {from:?}");
    base.replacen(from, to, 1)
}

const SECOND_PROJECT: &str = r#"
[[projects]]
name = "main"
app_id = "0a1b2c3d4e5f60718293a4b5c6d7e8f9"
signing_certificate = "primary"
certificates = [{ name = "primary", env = "AGORA_MAIN_CERT_PRIMARY" }]
"#;

/// `(name, config text, env, the key the error must name)`.
type BadConfig = (
    &'static str,
    String,
    Vec<(&'static str, &'static str)>,
    &'static str,
);

fn bad_configs() -> Vec<BadConfig> {
    let env = vec![EXAMPLE_ENV[0]];
    let issuers_start = "[[issuers]]";
    vec![
        (
            "bad app_id",
            edit("970CA35de60c44645bbae8a215061b33", "not-an-app-id"),
            env.clone(),
            "projects[0].app_id",
        ),
        (
            "missing env var",
            base_config(),
            vec![],
            "projects[0].certificates[0]",
        ),
        (
            "certificate that is not hex",
            base_config(),
            vec![("AGORA_MAIN_CERT_PRIMARY", NOT_A_CERT)],
            "projects[0].certificates[0]",
        ),
        (
            "certificate written inline",
            edit(
                r#"{ name = "primary", env = "AGORA_MAIN_CERT_PRIMARY" }"#,
                r#"{ name = "primary", value = "5CFd2fd1755d40ecb72977518be15d3b" }"#,
            ),
            env.clone(),
            "projects[0].certificates[0].value",
        ),
        (
            "duplicate project",
            edit(issuers_start, &format!("{SECOND_PROJECT}\n{issuers_start}")),
            env.clone(),
            "projects[1].name",
        ),
        (
            "unknown field",
            edit("grace_period = \"5s\"", "grace_period = \"5s\"\nbogus = 1"),
            env.clone(),
            "server.bogus",
        ),
        (
            "bad duration",
            edit("grace_period = \"5s\"", "grace_period = \"5 parsecs\""),
            env.clone(),
            "server.grace_period",
        ),
        (
            "bad listen address",
            edit(
                "grpc_listen = \"127.0.0.1:0\"",
                "grpc_listen = \"localhost\"",
            ),
            env.clone(),
            "server.grpc_listen",
        ),
        (
            "signing certificate not listed",
            edit(
                "signing_certificate = \"primary\"",
                "signing_certificate = \"next\"",
            ),
            env.clone(),
            "projects[0].signing_certificate",
        ),
        (
            "rule with unknown project",
            edit(
                "channel = \"lobby-*\"\nproject = \"main\"",
                "channel = \"lobby-*\"\nproject = \"other\"",
            ),
            env.clone(),
            "rules[0].project",
        ),
        (
            "bad CEL condition",
            edit(
                "account_claim = \"sub\"",
                "account_claim = \"sub\"\ncondition = 'claims.teams in in'",
            ),
            env.clone(),
            "rules[0].condition",
        ),
        (
            "unknown rule key",
            edit(
                "account_claim = \"sub\"",
                "account_claim = \"sub\"\nmax_rol = \"publisher\"",
            ),
            env.clone(),
            "rules[0].max_rol",
        ),
        (
            "issuer without key source",
            edit("jwks_url = \"http://127.0.0.1:9/jwks\"\n", ""),
            env.clone(),
            "issuers[0].jwks_url",
        ),
        (
            "no issuers",
            {
                let base = base_config();
                let start = base.find(issuers_start).unwrap();
                let end = base.find("[[rules]]").unwrap();
                format!("{}{}", &base[..start], &base[end..])
            },
            env.clone(),
            "issuers",
        ),
        (
            "HS secret variable not set",
            edit(JWKS_URL_LINE, HS_FROM_ENV),
            env.clone(),
            "issuers[0].hs_secret_env",
        ),
        (
            "HS secret file unreadable",
            edit(
                JWKS_URL_LINE,
                "algorithms = [\"HS256\"]\nhs_secret_file = \"/nonexistent/hs-secret\"\n",
            ),
            env.clone(),
            "issuers[0].hs_secret_file",
        ),
        (
            "HS secret too short",
            edit(JWKS_URL_LINE, HS_FROM_ENV),
            vec![EXAMPLE_ENV[0], ("IDP_HS_SECRET", "short")],
            "issuers[0].hs_secret_env",
        ),
        (
            "two projects with one App ID",
            edit(
                issuers_start,
                &format!(
                    "{}\n{issuers_start}",
                    SECOND_PROJECT
                        .replace("name = \"main\"", "name = \"other\"")
                        .replace(
                            "0a1b2c3d4e5f60718293a4b5c6d7e8f9",
                            "970ca35de60c44645bbae8a215061b33"
                        )
                ),
            ),
            env.clone(),
            "projects[1].app_id",
        ),
        (
            "HS secret beside a JWKS",
            edit(JWKS_URL_LINE, &format!("{JWKS_URL_LINE}{HS_FROM_ENV}")),
            vec![EXAMPLE_ENV[0], ("IDP_HS_SECRET", HS_SECRET)],
            "issuers[0].hs_secret_env",
        ),
        (
            "HS secret that is a PEM public key",
            edit(JWKS_URL_LINE, HS_FROM_ENV),
            vec![EXAMPLE_ENV[0], ("IDP_HS_SECRET", PEM_SECRET)],
            "issuers[0].hs_secret_env",
        ),
        (
            "HS secret that is a JWK",
            edit(JWKS_URL_LINE, HS_FROM_ENV),
            vec![
                EXAMPLE_ENV[0],
                (
                    "IDP_HS_SECRET",
                    r#"{"kty":"RSA","n":"u1SU1LfVLPHCozMxH2Mo4lgOEePzNm0t","e":"AQAB"}"#,
                ),
            ],
            "issuers[0].hs_secret_env",
        ),
        (
            "HS issuer that also allows RS256",
            edit(
                JWKS_URL_LINE,
                "algorithms = [\"HS256\", \"RS256\"]\nhs_secret_env = \"IDP_HS_SECRET\"\n",
            ),
            vec![EXAMPLE_ENV[0], ("IDP_HS_SECRET", HS_SECRET)],
            "issuers[0].algorithms",
        ),
        (
            "zero max_token_lifetime",
            edit(
                JWKS_URL_LINE,
                &format!("{JWKS_URL_LINE}max_token_lifetime = \"0s\"\n"),
            ),
            env.clone(),
            "issuers[0].max_token_lifetime",
        ),
        (
            "unknown_kid_wait beyond 5s",
            edit(
                JWKS_URL_LINE,
                &format!("{JWKS_URL_LINE}[issuers.refresh]\nunknown_kid_wait = \"10s\"\n"),
            ),
            env.clone(),
            "issuers[0].refresh.unknown_kid_wait",
        ),
        (
            "min_refresh below its 5s floor",
            edit(
                JWKS_URL_LINE,
                &format!(
                    "{JWKS_URL_LINE}[issuers.refresh]\nmin_refresh = \"0s\"\ndefault_ttl = \"10s\"\n"
                ),
            ),
            env.clone(),
            "issuers[0].refresh.min_refresh",
        ),
        (
            "unknown_kid_cooldown below its 1s floor",
            edit(
                JWKS_URL_LINE,
                &format!("{JWKS_URL_LINE}[issuers.refresh]\nunknown_kid_cooldown = \"0s\"\n"),
            ),
            env.clone(),
            "issuers[0].refresh.unknown_kid_cooldown",
        ),
        (
            "backoff_initial below its 100ms floor",
            edit(
                JWKS_URL_LINE,
                &format!("{JWKS_URL_LINE}[issuers.refresh]\nbackoff_initial = \"10ms\"\n"),
            ),
            env.clone(),
            "issuers[0].refresh.backoff_initial",
        ),
        (
            "a leeway of an hour",
            edit(JWKS_URL_LINE, &format!("{JWKS_URL_LINE}leeway = \"1h\"\n")),
            env.clone(),
            "issuers[0].leeway",
        ),
        (
            "a jwt cache of no entries",
            base_config() + "\n[jwt_cache]\nmax_entries = 0\n",
            env.clone(),
            "jwt_cache.max_entries",
        ),
        (
            "a jwt cache max_age of a day, even with the cache off",
            base_config() + "\n[jwt_cache]\nenabled = false\nmax_age = \"24h\"\n",
            env.clone(),
            "jwt_cache.max_age",
        ),
        (
            "verified_cache that is not a boolean",
            edit(
                JWKS_URL_LINE,
                &format!("{JWKS_URL_LINE}verified_cache = 1\n"),
            ),
            env.clone(),
            "issuers[0].verified_cache",
        ),
        (
            "a trusted proxy CIDR with host bits set",
            base_config()
                + "\n[server.trusted_proxy]\ncidrs = [\"127.0.0.1/32\", \"10.0.0.1/8\"]\n",
            env.clone(),
            "server.trusted_proxy.cidrs[1]",
        ),
        (
            "a trusted proxy CIDR that is not one",
            base_config() + "\n[server.trusted_proxy]\ncidrs = [\"the-lan\"]\n",
            env.clone(),
            "server.trusted_proxy.cidrs[0]",
        ),
        (
            "a trusted proxy section that trusts nobody",
            base_config() + "\n[server.trusted_proxy]\n",
            env.clone(),
            "server.trusted_proxy.cidrs",
        ),
        (
            "a trusted proxy SPIFFE ID with a capture",
            base_config()
                + "\n[server.trusted_proxy]\ncidrs = [\"10.0.0.0/8\"]\nspiffe_ids = [\"spiffe://corp.example/ns/{ns}/sa/envoy\"]\n",
            env.clone(),
            "server.trusted_proxy.spiffe_ids[0]",
        ),
        (
            "trusted proxies by SPIFFE ID without client certificates",
            base_config()
                + "\n[server.trusted_proxy]\nspiffe_ids = [\"spiffe://corp.example/ns/edge/sa/envoy\"]\n",
            env.clone(),
            "server.trusted_proxy.spiffe_ids",
        ),
        (
            "an mtls rule that binds a claim",
            edit(
                "channel = \"lobby-*\"",
                "channel = \"lobby-*\"\nauthenticate = \"mtls\"",
            ),
            env.clone(),
            "rules[0].account_claim",
        ),
        (
            "an unknown authenticate",
            edit(
                "channel = \"lobby-*\"",
                "channel = \"lobby-*\"\nauthenticate = \"spiffe\"",
            ),
            env.clone(),
            "rules[0].authenticate",
        ),
        (
            "a peer_spiffe_id that is not a SPIFFE ID pattern",
            edit(
                "channel = \"lobby-*\"",
                "channel = \"lobby-*\"\npeer_spiffe_id = \"corp.example/ns/x\"",
            ),
            env.clone(),
            "rules[0].peer_spiffe_id",
        ),
        ("not TOML", "[server\n".to_owned(), env.clone(), "(file)"),
    ]
    .into_iter()
    .chain(bad_limits(&env))
    .chain(bad_forward_auth(&env))
    .collect()
}

/// An `[ext_authz]` section with one route, for `[forward_auth]` to match.
const EXT_AUTHZ: &str =
    "\n[ext_authz]\nenabled = true\n\n[[ext_authz.routes]]\npath = \"/rooms/{channel}/join\"\n";

/// `[forward_auth]` with `keys` (after `enabled = true`).
fn forward_auth(keys: &str) -> String {
    format!(
        "{}{EXT_AUTHZ}\n[forward_auth]\nenabled = true\n{keys}\n",
        base_config()
    )
}

/// `[forward_auth]` mistakes, each named by its key.
fn bad_forward_auth(env: &[(&'static str, &'static str)]) -> Vec<BadConfig> {
    let nginx = "original_request = \"x-original\"\n";
    let cases: Vec<(&'static str, String, &'static str)> = vec![
        (
            "forward-auth without ext_authz",
            format!("{}\n[forward_auth]\nenabled = true\n{nginx}", base_config()),
            "forward_auth.enabled",
        ),
        (
            "no proxy named",
            forward_auth(""),
            "forward_auth.original_request",
        ),
        (
            "an unknown proxy form",
            forward_auth("original_request = \"nginx\""),
            "forward_auth.original_request",
        ),
        (
            "path mode on every path",
            forward_auth("original_request = \"path\""),
            "forward_auth.path_prefix",
        ),
        (
            "a prefix with a trailing slash",
            forward_auth(&format!("{nginx}path_prefix = \"/check/\"")),
            "forward_auth.path_prefix",
        ),
        (
            "a prefix with a dot segment",
            forward_auth(&format!("{nginx}path_prefix = \"/a/../check\"")),
            "forward_auth.path_prefix",
        ),
        (
            "a relative prefix",
            forward_auth(&format!("{nginx}path_prefix = \"check\"")),
            "forward_auth.path_prefix",
        ),
        (
            "no connections",
            forward_auth(&format!("{nginx}max_connections = 0")),
            "forward_auth.max_connections",
        ),
        (
            "the gRPC port's address",
            forward_auth(&format!("{nginx}listen = \"127.0.0.1:9191\"")).replacen(
                "grpc_listen = \"127.0.0.1:0\"",
                "grpc_listen = \"127.0.0.1:9191\"",
                1,
            ),
            "forward_auth.listen",
        ),
        (
            "an unknown key",
            forward_auth(&format!("{nginx}prefix = \"/check\"")),
            "forward_auth.prefix",
        ),
    ];
    cases
        .into_iter()
        .map(|(name, config, key)| (name, config, env.to_vec(), key))
        .collect()
}

/// `[limits]` mistakes: each rate limit key, the rules' `limits`, Redis.
fn bad_limits(env: &[(&'static str, &'static str)]) -> Vec<BadConfig> {
    let rate = |body: &str| format!("\n[[limits.rate]]\nname = \"l\"\n{body}\n");
    let ok = "key = \"caller\"\nrate = \"10/s\"";
    let redis = |body: &str| format!("{}\n[limits.redis]\n{body}\n", rate(ok));
    let cases: Vec<(&'static str, String, &'static str)> = vec![
        (
            "an unknown limit key",
            rate("key = \"tenant\"\nrate = \"1/s\""),
            "limits.rate[0].key",
        ),
        (
            "a cel key without expression",
            rate("key = \"cel\"\nrate = \"1/s\""),
            "limits.rate[0].expression",
        ),
        (
            "a cel key that does not compile",
            rate("key = \"cel\"\nexpression = \"claims.(\"\nrate = \"1/s\""),
            "limits.rate[0].expression",
        ),
        (
            "an expression on a caller key",
            rate("key = \"caller\"\nexpression = \"claims.t\"\nrate = \"1/s\""),
            "limits.rate[0].expression",
        ),
        (
            "a rate that is not a rate",
            rate("key = \"caller\"\nrate = \"ten per second\""),
            "limits.rate[0].rate",
        ),
        (
            "a rate over a million a second",
            rate("key = \"caller\"\nrate = \"2000000/s\""),
            "limits.rate[0].rate",
        ),
        (
            "a zero burst",
            rate(&format!("{ok}\nburst = 0")),
            "limits.rate[0].burst",
        ),
        (
            "a window over a year",
            rate("key = \"caller\"\nrate = \"1/d\"\nburst = 400"),
            "limits.rate[0].burst",
        ),
        (
            "an action that issues nothing",
            rate(&format!("{ok}\nactions = [\"inspect\"]")),
            "limits.rate[0].actions[0]",
        ),
        (
            "no actions",
            rate(&format!("{ok}\nactions = []")),
            "limits.rate[0].actions",
        ),
        (
            "an unknown scope",
            rate(&format!("{ok}\nscope = \"tenant\"")),
            "limits.rate[0].scope",
        ),
        (
            "an unknown fail mode",
            rate(&format!("{ok}\non_redis_failure = \"maybe\"")),
            "limits.rate[0].on_redis_failure",
        ),
        (
            "an unknown rate key",
            rate(&format!("{ok}\nwindow = \"1s\"")),
            "limits.rate[0].window",
        ),
        (
            "a duplicate limit name",
            format!("{}{}", rate(ok), rate(ok)),
            "limits.rate[1].name",
        ),
        (
            "a limit name with a space",
            format!("\n[[limits.rate]]\nname = \"a b\"\n{ok}\n"),
            "limits.rate[0].name",
        ),
        (
            "no calls in flight",
            "\n[limits]\nmax_in_flight = 0\n".to_owned(),
            "limits.max_in_flight",
        ),
        (
            "no local keys",
            "\n[limits]\nlocal_max_keys = 0\n".to_owned(),
            "limits.local_max_keys",
        ),
        (
            "a password in the Redis URL",
            redis("url = \"redis://:pw@127.0.0.1:6379\""),
            "limits.redis.url",
        ),
        (
            "a Redis URL that is not Redis",
            redis("url = \"http://127.0.0.1:6379\""),
            "limits.redis.url",
        ),
        (
            "a Redis password variable that is not set",
            redis(
                "url = \"redis://127.0.0.1:6379\"\npassword_env = \"TG_TEST_UNSET_REDIS_PASSWORD\"",
            ),
            "limits.redis.password_env",
        ),
        (
            "both Redis password sources",
            redis("url = \"redis://127.0.0.1:6379\"\npassword_env = \"A\"\npassword_file = \"/x\""),
            "limits.redis.password_file",
        ),
        (
            "a zero Redis timeout",
            redis("url = \"redis://127.0.0.1:6379\"\ntimeout = \"0s\""),
            "limits.redis.timeout",
        ),
        (
            "a Redis timeout over a second",
            redis("url = \"redis://127.0.0.1:6379\"\ntimeout = \"2s\""),
            "limits.redis.timeout",
        ),
        (
            "a CA file for plaintext Redis",
            redis("url = \"redis://127.0.0.1:6379\"\nca_file = \"/etc/hostname\""),
            "limits.redis.ca_file",
        ),
        (
            "zero replicas",
            redis("url = \"redis://127.0.0.1:6379\"\nreplicas = 0"),
            "limits.redis.replicas",
        ),
    ];
    let mut all: Vec<BadConfig> = cases
        .into_iter()
        .map(|(name, text, key)| (name, base_config() + &text, env.to_vec(), key))
        .collect();
    all.push((
        "a rule naming an unknown limit",
        edit(
            "channel = \"lobby-*\"",
            "channel = \"lobby-*\"\nlimits = [\"nope\"]",
        ),
        env.to_vec(),
        "rules[0].limits[0]",
    ));
    all.push((
        "a rule naming a limit that counts every call",
        edit(
            "channel = \"lobby-*\"",
            "channel = \"lobby-*\"\nlimits = [\"l\"]",
        ) + &rate(ok),
        env.to_vec(),
        "rules[0].limits[0]",
    ));
    all
}

#[test]
fn check_config_prints_the_jwt_cache() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (
            base_config(),
            "jwt cache: on, 10000 entries, max age 60s",
            "",
        ),
        (
            base_config() + "\n[jwt_cache]\nmax_entries = 500\nmax_age = \"5m\"\n",
            "jwt cache: on, 500 entries, max age 300s",
            "",
        ),
        (
            base_config() + "\n[jwt_cache]\nenabled = false\n",
            "jwt cache: off",
            "",
        ),
        (
            edit(
                JWKS_URL_LINE,
                &format!("{JWKS_URL_LINE}verified_cache = false\n"),
            ),
            "jwt cache: on",
            "keys from http://127.0.0.1:9/jwks, not cached",
        ),
    ];
    for (i, (config, cache, issuer)) in cases.into_iter().enumerate() {
        let path = dir.path().join(format!("cache-{i}.toml"));
        std::fs::write(&path, config).unwrap();
        let output = run(&["check-config", path.to_str().unwrap()], &EXAMPLE_ENV[..1]);
        let (stdout, stderr) = text(&output);
        assert_eq!(output.status.code(), Some(0), "{stdout}\n{stderr}");
        assert!(stdout.contains(cache), "{cache:?} in {stdout}");
        assert!(stdout.contains(issuer), "{issuer:?} in {stdout}");
    }
}

#[test]
fn check_config_prints_the_limits_and_never_the_redis_password() {
    let dir = tempfile::tempdir().unwrap();
    let password = dir.path().join("redis-password");
    std::fs::write(&password, "hunter2-redis\n").unwrap();
    let limits = format!(
        r#"
[limits]
max_in_flight = 300

[limits.redis]
url = "redis://127.0.0.1:6379/0"
password_file = {password:?}
replicas = 3

[[limits.rate]]
name = "per-tenant"
key = "cel"
expression = "claims.tenant"
rate = "600/min"
burst = 50
actions = ["rtc"]
on_redis_failure = "closed"
"#
    );
    let cases = [
        (
            base_config(),
            vec![
                "limits: 0 rate limits, in process, at most 100000 keys; at most 1024 calls in flight",
            ],
        ),
        (
            base_config() + &limits,
            vec![
                "limits: 1 rate limits, shared through redis://127.0.0.1:6379/0 (timeout 5ms, retry every 1s, 3 replicas); at most 300 calls in flight",
                "limit \"per-tenant\": 600/min burst 50 by cel \"claims.tenant\" for rtc, fails closed",
            ],
        ),
    ];
    for (i, (config, lines)) in cases.into_iter().enumerate() {
        let path = dir.path().join(format!("limits-{i}.toml"));
        std::fs::write(&path, config).unwrap();
        let output = run(&["check-config", path.to_str().unwrap()], &EXAMPLE_ENV[..1]);
        let (stdout, stderr) = text(&output);
        assert_eq!(output.status.code(), Some(0), "{stdout}\n{stderr}");
        for line in lines {
            assert!(stdout.contains(line), "{line:?} in {stdout}");
        }
        assert!(
            !format!("{stdout}{stderr}").contains("hunter2"),
            "{stdout}{stderr}"
        );
    }
}

/// The base config's issuer key line, which the HS cases extend.
const JWKS_URL_LINE: &str = "jwks_url = \"http://127.0.0.1:9/jwks\"\n";
/// An HS secret for the base issuer, from the environment, in place of its
/// JWKS: symmetric and asymmetric keys never share an issuer.
const HS_FROM_ENV: &str = "algorithms = [\"HS256\"]\nhs_secret_env = \"IDP_HS_SECRET\"\n";
/// An RSA public key PEM, as an HS secret would be mistaken for one.
const PEM_SECRET: &str = "-----BEGIN PUBLIC KEY-----\nMIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEAu1SU1LfVLPHCozMxH2Mo4lgOEePzNm0t\n-----END PUBLIC KEY-----\n";
/// A usable HS secret (32 bytes) for `IDP_HS_SECRET`.
const HS_SECRET: &str = "0123456789abcdef0123456789abcdef";

#[test]
fn an_hs_issuer_passes_with_its_secret_set() {
    // Control for the HS cases above: with the variable set, the same config is fine.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hs.toml");
    std::fs::write(&path, edit(JWKS_URL_LINE, HS_FROM_ENV)).unwrap();
    let output = run(
        &["check-config", path.to_str().unwrap()],
        &[EXAMPLE_ENV[0], ("IDP_HS_SECRET", HS_SECRET)],
    );
    let (stdout, stderr) = text(&output);
    assert_eq!(output.status.code(), Some(0), "{stdout}\n{stderr}");
    assert!(stdout.contains("config ok"), "{stdout}");
    assert!(
        !format!("{stdout}{stderr}").contains(HS_SECRET),
        "the secret is printed"
    );
}

#[test]
fn check_config_prints_the_forward_auth_listener() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (base_config(), "forward auth: off".to_owned()),
        (
            forward_auth(
                "listen = \"127.0.0.1:9292\"\npath_prefix = \"/check\"\noriginal_request = \"x-forwarded\"\nmax_connections = 50",
            ),
            "forward auth: 127.0.0.1:9292 (path prefix /check, original request from x-forwarded, max 50 connections)".to_owned(),
        ),
    ];
    for (i, (config, line)) in cases.into_iter().enumerate() {
        let path = dir.path().join(format!("fa-{i}.toml"));
        std::fs::write(&path, config).unwrap();
        let output = run(&["check-config", path.to_str().unwrap()], &EXAMPLE_ENV[..1]);
        let (stdout, stderr) = text(&output);
        assert_eq!(output.status.code(), Some(0), "{stdout}\n{stderr}");
        assert!(stdout.contains(&line), "{line:?} in {stdout}");
    }
}

#[test]
fn bad_configs_exit_64_and_name_the_key() {
    let dir = tempfile::tempdir().unwrap();
    // The base config itself is valid: every failure below is the edit's.
    let good = dir.path().join("good.toml");
    std::fs::write(&good, base_config()).unwrap();
    let output = run(&["check-config", good.to_str().unwrap()], &EXAMPLE_ENV[..1]);
    assert_eq!(output.status.code(), Some(0), "{:?}", text(&output));

    for (i, (name, config, env, key)) in bad_configs().into_iter().enumerate() {
        let path = dir.path().join(format!("bad-{i}.toml"));
        std::fs::write(&path, &config).unwrap();
        let output = run(&["check-config", path.to_str().unwrap()], &env);
        let (stdout, stderr) = text(&output);
        assert_eq!(output.status.code(), Some(64), "{name}: {stdout}\n{stderr}");
        assert!(
            stderr.contains(&format!("{key}:")),
            "{name}: the error names {key}: {stderr}"
        );
        assert!(!stdout.contains("config ok"), "{name}");
        assert_no_certificate(&format!("{stdout}{stderr}"));
    }
}

#[test]
fn a_missing_config_file_exits_64() {
    let output = run(&["check-config", "/nonexistent/tokengate.toml"], &[]);
    let (_, stderr) = text(&output);
    assert_eq!(output.status.code(), Some(64), "{stderr}");
    assert!(stderr.contains("/nonexistent/tokengate.toml"), "{stderr}");
}

/// `tokengate serve` with the config at `path` and the main project's primary certificate.
fn serve(path: &Path) -> Output {
    let args = [
        "serve",
        "--config",
        path.to_str().unwrap(),
        "--log-format",
        "text",
    ];
    run(&args, &EXAMPLE_ENV[..1])
}

#[test]
fn serve_with_a_bad_config_exits_64_without_binding() {
    // Hold the port the config names: if serve bound before validating, it
    // would fail with "cannot listen" (exit 1) instead of 64.
    let held = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = held.local_addr().unwrap().port();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    let config = edit(
        "grpc_listen = \"127.0.0.1:0\"",
        &format!("grpc_listen = \"127.0.0.1:{port}\""),
    )
    .replacen(
        "channel = \"lobby-*\"",
        "channel = \"lobby-*\"\nproject_typo = 1",
        1,
    );
    std::fs::write(&path, config).unwrap();
    let output = serve(&path);
    let (stdout, stderr) = text(&output);
    assert_eq!(output.status.code(), Some(64), "{stdout}\n{stderr}");
    assert!(stderr.contains("rules[0].project_typo"), "{stderr}");
    assert!(!stderr.contains("cannot listen"), "{stderr}");

    // Control: a valid config on the held port does try to bind, and fails differently.
    let path = dir.path().join("busy.toml");
    std::fs::write(
        &path,
        edit(
            "grpc_listen = \"127.0.0.1:0\"",
            &format!("grpc_listen = \"127.0.0.1:{port}\""),
        ),
    )
    .unwrap();
    let output = serve(&path);
    let (_, stderr) = text(&output);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("cannot listen"), "{stderr}");
    drop(held);
}

#[test]
fn check_config_prints_the_trusted_proxies() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("proxies.toml");
    std::fs::write(
        &path,
        base_config() + "\n[server.trusted_proxy]\ncidrs = [\"127.0.0.1\", \"10.0.0.0/8\"]\n",
    )
    .unwrap();
    let output = run(&["check-config", path.to_str().unwrap()], &EXAMPLE_ENV[..1]);
    let (stdout, stderr) = text(&output);
    assert_eq!(output.status.code(), Some(0), "{stdout}{stderr}");
    assert!(
        stdout.contains("trusted proxies: cidrs [127.0.0.1/32, 10.0.0.0/8], spiffe_ids []"),
        "{stdout}"
    );
    let path = dir.path().join("none.toml");
    std::fs::write(&path, base_config()).unwrap();
    let output = run(&["check-config", path.to_str().unwrap()], &EXAMPLE_ENV[..1]);
    let (stdout, _) = text(&output);
    assert!(stdout.contains("trusted proxies: none"), "{stdout}");
}

#[test]
fn serve_refuses_a_bad_trusted_proxy_before_binding() {
    let held = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = held.local_addr().unwrap().port();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    let config = edit(
        "grpc_listen = \"127.0.0.1:0\"",
        &format!("grpc_listen = \"127.0.0.1:{port}\""),
    ) + "\n[server.trusted_proxy]\ncidrs = [\"10.0.0.0/33\"]\n";
    std::fs::write(&path, config).unwrap();
    let output = serve(&path);
    let (stdout, stderr) = text(&output);
    assert_eq!(output.status.code(), Some(64), "{stdout}\n{stderr}");
    assert!(
        stderr.contains("server.trusted_proxy.cidrs[0]:"),
        "{stderr}"
    );
    assert!(!stderr.contains("cannot listen"), "{stderr}");
    drop(held);
}

#[test]
fn a_certificate_given_as_jwks_file_is_refused_by_check_config() {
    let dir = tempfile::tempdir().unwrap();
    let pem = dir.path().join("idp.pem");
    std::fs::write(
        &pem,
        "-----BEGIN CERTIFICATE-----\nMIIBszCCAVmgAwIBAgIU\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    let path = dir.path().join("pem.toml");
    std::fs::write(
        &path,
        edit(
            JWKS_URL_LINE,
            &format!("jwks_file = {:?}\n", pem.display().to_string()),
        ),
    )
    .unwrap();
    let output = run(&["check-config", path.to_str().unwrap()], &[EXAMPLE_ENV[0]]);
    let (stdout, stderr) = text(&output);
    assert_eq!(output.status.code(), Some(64), "{stdout}{stderr}");
    assert!(stderr.contains("issuers[0].jwks_file:"), "{stderr}");
    assert!(stderr.contains("not a usable JWKS"), "{stderr}");
}

#[cfg(unix)]
#[test]
fn check_config_warns_about_world_readable_secrets_and_symlinks_out_of_its_folder() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir().unwrap();
    let secrets = tempfile::tempdir().unwrap();
    let cert = secrets.path().join("primary");
    std::fs::write(&cert, "5CFd2fd1755d40ecb72977518be15d3b\n").unwrap();
    std::fs::set_permissions(&cert, std::fs::Permissions::from_mode(0o644)).unwrap();
    let link = dir.path().join("primary");
    std::os::unix::fs::symlink(&cert, &link).unwrap();
    let path = dir.path().join("tokengate.toml");
    std::fs::write(
        &path,
        edit(
            r#"{ name = "primary", env = "AGORA_MAIN_CERT_PRIMARY" }"#,
            &format!(
                r#"{{ name = "primary", file = {:?} }}"#,
                link.display().to_string()
            ),
        ),
    )
    .unwrap();
    let output = run(&["check-config", path.to_str().unwrap()], &[]);
    let (stdout, stderr) = text(&output);
    assert_eq!(output.status.code(), Some(0), "{stdout}{stderr}");
    assert!(
        stdout.contains("warning: projects[0].certificates[0].file:"),
        "{stdout}"
    );
    assert!(
        stdout.contains("readable by every user (mode 644)"),
        "{stdout}"
    );
    assert!(stdout.contains("outside the config's folder"), "{stdout}");
    assert_no_certificate(&format!("{stdout}{stderr}"));
}

/// A second issuer for the base config: a partner IdP with its own users.
const PARTNER_ISSUER: &str = r#"
[[issuers]]
name = "partner"
issuer = "https://partner.test.example"
audiences = ["tokengate"]
jwks_url = "http://127.0.0.1:9/partner-jwks"
"#;

#[test]
fn a_rule_two_issuers_reach_must_namespace_the_identity_it_binds() {
    let dir = tempfile::tempdir().unwrap();
    let two = edit("[[rules]]", &format!("{PARTNER_ISSUER}\n[[rules]]"));
    let cases = [
        (
            "raw sub, two issuers",
            two.clone(),
            Some("rules[0].issuer:"),
        ),
        (
            "one issuer's callers",
            two.replace(
                "account_claim = \"sub\"",
                "account_claim = \"sub\"\nissuer = \"https://idp.test.example\"",
            ),
            None,
        ),
        (
            "prefixed by issuer name",
            two.replace(
                "account_claim = \"sub\"",
                "account_claim = \"sub\"\nidentity_prefix = \"issuer_name\"",
            ),
            None,
        ),
        (
            "explicitly shared",
            two.replace(
                "account_claim = \"sub\"",
                "account_claim = \"sub\"\nshared_identity = true",
            ),
            None,
        ),
        ("one issuer only", base_config(), None),
    ];
    for (i, (name, config, error)) in cases.into_iter().enumerate() {
        let path = dir.path().join(format!("issuers-{i}.toml"));
        std::fs::write(&path, &config).unwrap();
        let output = run(&["check-config", path.to_str().unwrap()], &EXAMPLE_ENV[..1]);
        let (stdout, stderr) = text(&output);
        match error {
            Some(key) => {
                assert_eq!(output.status.code(), Some(64), "{name}: {stdout}\n{stderr}");
                assert!(stderr.contains(key), "{name}: {stderr}");
                assert!(stderr.contains("idp, partner"), "{name}: {stderr}");
            }
            None => assert_eq!(output.status.code(), Some(0), "{name}: {stdout}\n{stderr}"),
        }
    }
}

#[test]
fn check_config_warns_about_an_ambiguous_pattern_and_suggests_a_form() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ambiguous.toml");
    std::fs::write(
        &path,
        edit("channel = \"lobby-*\"", "channel = \"team-{team}-*\""),
    )
    .unwrap();
    let output = run(&["check-config", path.to_str().unwrap()], &EXAMPLE_ENV[..1]);
    let (stdout, stderr) = text(&output);
    assert_eq!(output.status.code(), Some(0), "{stdout}\n{stderr}");
    assert!(
        stdout.contains(r#"warning: rules[0] ("lobby").channel: "team-{team}-*" can fit one channel with different values of {team}"#),
        "{stdout}"
    );
    assert!(stdout.contains(r#"e.g. "team-{team}""#), "{stdout}");
}
