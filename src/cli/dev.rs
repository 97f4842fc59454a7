//! `tokengate dev`: the embedded default. One command, nothing external: a
//! development issuer with an ephemeral key on loopback, a demo project and
//! the demo rules of `deploy/examples/dev-rules.toml`, then the real server.
//!
//! Dev mode is unsafe by design (anyone on the machine can mint JWTs through
//! its `/mint` endpoint), so it lives only in this subcommand: it binds only
//! loopback addresses, and nothing in the production config can enable it.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context as _, bail};
use serde_json::{Map, Value, json};
use tokio::net::TcpListener;

use super::dev_issuer::{DEV_AUDIENCE, DevIssuer, MintRequest, MintResponse};
use crate::config::{self, Config};
use crate::entropy;

/// The demo rules, compiled into the binary.
const DEV_RULES: &str = include_str!("../../deploy/examples/dev-rules.toml");
/// The variable the dev config names for a generated certificate; only
/// `dev`'s own lookup answers it, the process environment is not asked.
const GENERATED_CERTIFICATE_ENV: &str = "TOKENGATE_DEV_GENERATED_CERTIFICATE";
/// The subject of the JWT that `dev` prints.
pub const DEMO_SUBJECT: &str = "demo-user";
/// The numeric uid claim of the demo JWT.
pub const DEMO_UID: u32 = 4242;

/// Arguments of `tokengate dev`.
#[derive(Debug, clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct DevArgs {
    #[command(subcommand)]
    command: Option<DevCommand>,
    /// The gRPC address (loopback only; port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:50051")]
    grpc_listen: SocketAddr,
    /// The admin HTTP address (loopback only).
    #[arg(long, default_value = "127.0.0.1:9090")]
    admin_listen: SocketAddr,
    /// The development issuer's address: discovery, JWKS and /mint (loopback only).
    #[arg(long, default_value = "127.0.0.1:9091")]
    issuer_listen: SocketAddr,
    /// The forward-auth address, answering `/check` as Caddy or Traefik ask
    /// (`X-Forwarded-Method`, `X-Forwarded-Uri`) (loopback only).
    #[arg(long, default_value = "127.0.0.1:9191")]
    forward_auth_listen: SocketAddr,
    /// The log format.
    #[arg(long, value_enum, default_value = "text")]
    log_format: super::logging::LogFormat,
}

/// The demo project's App ID and certificate, before validation.
struct DemoProject {
    app_id: String,
    certificate: String,
    /// The variable the config names for the certificate.
    certificate_env: &'static str,
    /// Whether both were generated (Agora will refuse the tokens).
    generated: bool,
}

/// Only the App ID: the certificate is a secret.
impl std::fmt::Debug for DemoProject {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DemoProject")
            .field("app_id", &self.app_id)
            .field("generated", &self.generated)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, clap::Subcommand)]
enum DevCommand {
    /// Mint another development JWT from a running `tokengate dev`.
    MintJwt(MintArgs),
}

#[derive(Debug, clap::Args)]
struct MintArgs {
    /// The subject (`sub`).
    #[arg(long)]
    sub: String,
    /// An extra claim, `key=value`; the value is JSON if it parses as JSON
    /// (`teams=["a","b"]`, `agora_uid=7`), else a string. Repeatable.
    #[arg(long = "claim", value_name = "KEY=VALUE")]
    claims: Vec<String>,
    /// Lifetime in seconds.
    #[arg(long, default_value_t = 3600)]
    ttl: u64,
    /// The development issuer of the running `tokengate dev`.
    #[arg(long, default_value = "http://127.0.0.1:9091")]
    issuer_url: String,
}

/// Runs `tokengate dev` or `tokengate dev mint-jwt`.
pub fn run(args: DevArgs) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    match args.command {
        Some(DevCommand::MintJwt(mint)) => runtime.block_on(mint_jwt(mint)),
        None => {
            let _log = super::logging::init(args.log_format);
            runtime.block_on(serve(args))
        }
    }
}

async fn serve(args: DevArgs) -> anyhow::Result<ExitCode> {
    for addr in [
        args.grpc_listen,
        args.admin_listen,
        args.issuer_listen,
        args.forward_auth_listen,
    ] {
        DevIssuer::check_loopback(addr)?;
    }
    crate::identity::install_crypto_provider();
    let issuer_listener = TcpListener::bind(args.issuer_listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.issuer_listen))?;
    let issuer_url = format!("http://{}", issuer_listener.local_addr()?);
    let issuer = Arc::new(DevIssuer::generate(issuer_url.clone())?);
    let router = Arc::clone(&issuer).router();
    tokio::spawn(async move {
        if let Err(e) = axum::serve(issuer_listener, router).await {
            tracing::error!(error = %e, "development issuer stopped");
        }
    });

    let project = demo_project()?;
    let generated = project.generated;
    let config = dev_config(&args, &issuer, &project)?;
    let grpc = TcpListener::bind(args.grpc_listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.grpc_listen))?;
    let admin = TcpListener::bind(args.admin_listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.admin_listen))?;
    let forward_auth = TcpListener::bind(args.forward_auth_listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.forward_auth_listen))?;
    let addrs = Addresses {
        grpc: grpc.local_addr()?,
        admin: admin.local_addr()?,
        forward_auth: forward_auth.local_addr()?,
        issuer: issuer_url.clone(),
    };

    let demo = MintRequest {
        sub: DEMO_SUBJECT.to_owned(),
        claims: demo_claims(),
        ttl_secs: 3600,
    };
    let jwt = issuer.mint(&demo, entropy::unix_now())?;
    print!("{}", banner(&addrs, &jwt, generated));
    let listeners = crate::server::Listeners {
        grpc,
        admin,
        forward_auth: Some(forward_auth),
    };
    crate::server::serve(config, listeners, super::shutdown_signal()).await?;
    Ok(ExitCode::SUCCESS)
}

/// The demo project's App ID and certificate: from `AGORA_APP_ID` /
/// `AGORA_APP_CERTIFICATE` when both are set, generated (and refused by
/// Agora) with a loud warning when neither is. Only one of them is a mistake
/// (a typo in the other name): refused, rather than silently replaced by a
/// generated project.
#[allow(clippy::disallowed_methods)] // A config-reading edge: dev's only inputs from the environment.
fn demo_project() -> anyhow::Result<DemoProject> {
    let from_env = (
        std::env::var("AGORA_APP_ID").ok(),
        std::env::var("AGORA_APP_CERTIFICATE").ok(),
    );
    Ok(match from_env {
        (Some(app_id), Some(certificate)) => DemoProject {
            app_id: app_id.trim().to_owned(),
            certificate: certificate.trim().to_owned(),
            certificate_env: "AGORA_APP_CERTIFICATE",
            generated: false,
        },
        (None, None) => DemoProject {
            app_id: random_hex32()?,
            certificate: random_hex32()?,
            certificate_env: GENERATED_CERTIFICATE_ENV,
            generated: true,
        },
        (Some(_), None) | (None, Some(_)) => {
            bail!("set both AGORA_APP_ID and AGORA_APP_CERTIFICATE, or neither")
        }
    })
}

/// The dev config, as a config file would say it, through the same
/// validation as `serve`: `config::load`, with a lookup that supplies the
/// demo certificate (the only secret) under the variable the file names.
fn dev_config(args: &DevArgs, issuer: &DevIssuer, project: &DemoProject) -> anyhow::Result<Config> {
    let text = dev_config_text(args, issuer, project)?;
    let env = |name: &str| (name == project.certificate_env).then(|| project.certificate.clone());
    config::load(&text, &env).with_context(|| {
        if project.generated {
            "the dev config".to_owned()
        } else {
            "the dev config (AGORA_APP_ID, AGORA_APP_CERTIFICATE)".to_owned()
        }
    })
}

/// The path of the demo ext_authz route, and of the forward-auth check.
const DEMO_ROUTE: &str = "/rooms/{channel}/join";
const FORWARD_AUTH_PREFIX: &str = "/check";

/// Where `dev` listens, for the banner.
struct Addresses {
    grpc: SocketAddr,
    admin: SocketAddr,
    forward_auth: SocketAddr,
    issuer: String,
}

/// The dev config's TOML: loopback listeners, the demo project, the
/// development issuer, the embedded demo rules, and the mesh path (a demo
/// `[[ext_authz.routes]]` served by Envoy's gRPC `Check` and by
/// forward-auth on its loopback port). Built as a TOML table and
/// serialized, so values from the environment cannot break the syntax.
fn dev_config_text(
    args: &DevArgs,
    issuer: &DevIssuer,
    project: &DemoProject,
) -> anyhow::Result<String> {
    let mut rules: toml::Table = toml::from_str(DEV_RULES).context("the embedded dev rules")?;
    let rules = rules
        .remove("rules")
        .context("the embedded dev rules have no [[rules]]")?;
    let config = json!({
        "server": {
            "grpc_listen": args.grpc_listen.to_string(),
            "admin_listen": args.admin_listen.to_string(),
            "grace_period": "2s",
        },
        "ext_authz": {
            "enabled": true,
            "routes": [
                { "path": DEMO_ROUTE, "role": "publisher" },
                { "path": "/public/**", "pass_through": true },
            ],
        },
        "forward_auth": {
            "enabled": true,
            "listen": args.forward_auth_listen.to_string(),
            "path_prefix": FORWARD_AUTH_PREFIX,
            "original_request": "x-forwarded",
        },
        "projects": [{
            "name": "demo",
            "app_id": project.app_id,
            "signing_certificate": "primary",
            "certificates": [{ "name": "primary", "env": project.certificate_env }],
        }],
        "issuers": [{
            "name": "dev",
            "issuer": issuer.issuer(),
            "audiences": [DEV_AUDIENCE],
            "jwks_url": issuer.jwks_url(),
        }],
    });
    let toml::Value::Table(mut config) = toml::Value::try_from(config)? else {
        bail!("the dev config is not a table");
    };
    config.insert("rules".to_owned(), rules);
    Ok(toml::to_string(&config)?)
}

fn demo_claims() -> Map<String, Value> {
    let mut claims = Map::new();
    claims.insert("agora_uid".into(), json!(DEMO_UID));
    claims.insert("scope".into(), json!("rtc:token tokengate:debug"));
    claims
}

fn random_hex32() -> anyhow::Result<String> {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).map_err(|e| anyhow::anyhow!("the OS random source failed: {e}"))?;
    Ok(hex::encode(bytes))
}

/// What `dev` prints: a warning, the demo JWT, and grpcurl and curl lines
/// that work as written (a test runs them).
fn banner(addrs: &Addresses, jwt: &str, generated: bool) -> String {
    let warning = if generated {
        "\n!!! No AGORA_APP_ID / AGORA_APP_CERTIFICATE set: the demo project uses a GENERATED\n\
         !!! App ID and certificate. Tokens are well-formed but Agora will reject them.\n"
    } else {
        ""
    };
    let Addresses {
        grpc,
        admin,
        forward_auth,
        issuer,
    } = addrs;
    let path = DEMO_ROUTE.replace("{channel}", "demo-lobby");
    format!(
        "\n\
=====================================================================\n\
\x20tokengate DEV MODE: an embedded development issuer signs any JWT.\n\
\x20NEVER use this in production; run `tokengate serve --config FILE`.\n\
=====================================================================\n\
{warning}\n\
gRPC:         {grpc}\n\
admin:        http://{admin}/readyz\n\
forward-auth: http://{forward_auth}{FORWARD_AUTH_PREFIX}\n\
issuer:       {issuer} (mint more JWTs: tokengate dev mint-jwt --issuer-url {issuer} --sub alice)\n\
\n\
A JWT for {DEMO_SUBJECT} (agora_uid {DEMO_UID}), valid for one hour:\n\
\n\
export TOKENGATE_JWT='{jwt}'\n\
\n\
List the services:\n\
grpcurl -plaintext {grpc} list\n\
\n\
Issue an RTC token:\n\
grpcurl -plaintext -H \"authorization: Bearer $TOKENGATE_JWT\" -d '{{\"channel\": \"demo-lobby\", \"role\": \"ROLE_PUBLISHER\"}}' {grpc} tokengate.v1.TokenService/IssueRtcToken\n\
\n\
Inspect it (paste the token):\n\
grpcurl -plaintext -H \"authorization: Bearer $TOKENGATE_JWT\" -d '{{\"token\": \"007...\", \"expected_channel\": \"demo-lobby\"}}' {grpc} tokengate.v1.TokenService/InspectToken\n\
\n\
Explain a denied request:\n\
grpcurl -plaintext -H \"authorization: Bearer $TOKENGATE_JWT\" -d '{{\"rtc\": {{\"channel\": \"admin-panel\", \"role\": \"ROLE_PUBLISHER\"}}}}' {grpc} tokengate.v1.TokenService/ExplainAccess\n\
\n\
The mesh path: Envoy's ext_authz Check for GET {path} (the token is in the x-agora-token header it returns):\n\
grpcurl -plaintext -d '{{\"attributes\": {{\"request\": {{\"http\": {{\"method\": \"GET\", \"path\": \"{path}\", \"headers\": {{\"authorization\": \"Bearer '\"$TOKENGATE_JWT\"'\"}}}}}}}}}}' {grpc} envoy.service.auth.v3.Authorization/Check\n\
\n\
The same check as Caddy's forward_auth or Traefik's ForwardAuth asks it (the token is in the x-agora-token response header):\n\
curl -i -H \"authorization: Bearer $TOKENGATE_JWT\" -H \"X-Forwarded-Method: GET\" -H \"X-Forwarded-Uri: {path}\" http://{forward_auth}{FORWARD_AUTH_PREFIX}\n\
\n"
    )
}

/// `tokengate dev mint-jwt`: asks the running dev issuer for a JWT and prints it.
async fn mint_jwt(args: MintArgs) -> anyhow::Result<ExitCode> {
    let mut claims = Map::new();
    for pair in &args.claims {
        let Some((key, value)) = pair.split_once('=') else {
            bail!("--claim {pair:?} is not KEY=VALUE");
        };
        let value = serde_json::from_str(value).unwrap_or_else(|_| Value::String(value.to_owned()));
        claims.insert(key.to_owned(), value);
    }
    let request = MintRequest {
        sub: args.sub,
        claims,
        ttl_secs: args.ttl,
    };
    let url = format!("{}/mint", args.issuer_url.trim_end_matches('/'));
    let response = reqwest::Client::new()
        .post(&url)
        .json(&request)
        .send()
        .await
        .with_context(|| format!("is `tokengate dev` running? cannot reach {url}"))?
        .error_for_status()?
        .json::<MintResponse>()
        .await?;
    println!("{}", response.jwt);
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::KeySource;

    fn args() -> DevArgs {
        DevArgs {
            command: None,
            grpc_listen: "127.0.0.1:0".parse().unwrap(),
            admin_listen: "127.0.0.1:1".parse().unwrap(),
            issuer_listen: "127.0.0.1:2".parse().unwrap(),
            forward_auth_listen: "127.0.0.1:3".parse().unwrap(),
            log_format: super::super::logging::LogFormat::Text,
        }
    }

    fn project(app_id: &str, certificate: &str) -> DemoProject {
        DemoProject {
            app_id: app_id.to_owned(),
            certificate: certificate.to_owned(),
            certificate_env: GENERATED_CERTIFICATE_ENV,
            generated: true,
        }
    }

    #[test]
    fn the_dev_config_is_a_validated_config() {
        let issuer = DevIssuer::generate("http://127.0.0.1:2".to_owned()).unwrap();
        let demo = project(
            "970CA35de60c44645bbae8a215061b33",
            "5CFd2fd1755d40ecb72977518be15d3b",
        );
        let config = dev_config(&args(), &issuer, &demo).unwrap();
        assert_eq!(config.server().grpc_listen(), args().grpc_listen);
        assert_eq!(config.server().admin_listen(), args().admin_listen);
        assert_eq!(
            config.server().grace_period(),
            std::time::Duration::from_secs(2)
        );
        let [project] = config.projects() else {
            panic!("one project")
        };
        assert_eq!(project.name, "demo");
        assert_eq!(project.app_id.as_str(), demo.app_id);
        let [dev] = config.issuers() else {
            panic!("one issuer")
        };
        assert_eq!(dev.issuer(), [issuer.issuer()]);
        assert_eq!(dev.audiences(), [DEV_AUDIENCE]);
        assert_eq!(
            dev.key_source(),
            &KeySource::jwks_url(&issuer.jwks_url()).unwrap()
        );
        let rules = DEV_RULES.matches("[[rules]]").count();
        assert_eq!(config.policy().len(), rules);
    }

    #[test]
    fn the_dev_config_refuses_what_serve_refuses() {
        let issuer = DevIssuer::generate("http://127.0.0.1:2".to_owned()).unwrap();
        // A quote in the App ID cannot break the generated TOML: it is refused
        // by the App ID check, like in any config file.
        let bad_id = project(
            "970CA35d\"e60c44645bbae8a215061b33",
            "5CFd2fd1755d40ecb72977518be15d3b",
        );
        let err = format!("{:#}", dev_config(&args(), &issuer, &bad_id).unwrap_err());
        assert!(err.contains("projects[0].app_id"), "{err}");
        let bad_cert = project("970CA35de60c44645bbae8a215061b33", "not-a-certificate");
        let err = format!("{:#}", dev_config(&args(), &issuer, &bad_cert).unwrap_err());
        assert!(err.contains("projects[0].certificates[0]"), "{err}");
        assert!(!err.contains("not-a-certificate"), "{err}");
    }
}
