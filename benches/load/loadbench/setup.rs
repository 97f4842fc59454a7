//! The benchmark directory: an RS256 issuer (key, JWKS, JWT), a project with
//! a random App Certificate, tokengate's config and the request bodies.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::signature::KeyPair as _;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use envoy_types::pb::envoy::config::core::v3::address::Address as AddressKind;
use envoy_types::pb::envoy::config::core::v3::socket_address::PortSpecifier;
use envoy_types::pb::envoy::config::core::v3::{Address, SocketAddress};
use envoy_types::pb::envoy::service::auth::v3::attribute_context::{HttpRequest, Peer, Request};
use envoy_types::pb::envoy::service::auth::v3::{AttributeContext, CheckRequest};
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use prost::Message as _;
use serde_json::json;
use tokengate::domain::Role;
use tokengate::grpc::pb;
use tokengate::token::builders::{Issue, raw};
use tokengate::token::{AppCertificate, AppId};

/// The benchmark's Agora App ID (the README's example project).
pub const APP_ID: &str = "970CA35de60c44645bbae8a215061b33";
/// The channel every call asks for; the rule grants it to team `blue`.
pub const CHANNEL: &str = "team-blue-standup";
/// The webinar channel of `benches/load/facts.sh` (`issue-webinar.bin`),
/// which the example's webinar rules grant from facts.
pub const WEBINAR_CHANNEL: &str = "webinar-launch";
/// The caller's `agora_uid` claim, bound into every token.
pub const UID: u32 = 4242;
/// The JWT issuer and audience.
pub const ISSUER: &str = "https://idp.bench.example";
const AUDIENCE: &str = "tokengate-bench";
/// The ext_authz path Envoy would check.
pub const CHECK_PATH: &str = "/rooms/team-blue-standup/join";

/// tokengate's ports.
#[derive(Debug, Clone, Copy)]
pub struct Ports {
    /// The gRPC port.
    pub grpc: u16,
    /// The admin port (`/readyz`, `/metrics`).
    pub admin: u16,
}

/// The ports of the directory's base `tokengate.toml` (`loadbench setup`'s
/// defaults); `loadbench run` gives each replica free ones.
pub const DEFAULT_PORTS: Ports = Ports {
    grpc: 50071,
    admin: 9171,
};

/// A written benchmark directory.
#[derive(Debug, Clone)]
pub struct Bench {
    /// The directory.
    pub dir: PathBuf,
    /// The App ID.
    pub app_id: AppId,
    /// The App Certificate (a throwaway, generated here).
    pub certificate: AppCertificate,
    /// The caller's JWT.
    pub jwt: String,
    /// The same JWT with its signature broken (the self-test's bad caller).
    pub bad_jwt: String,
    /// The text appended to every tokengate config (`--config-extra`).
    extra: String,
}

impl Bench {
    /// Writes everything into `dir`, with `tokengate.toml` listening on
    /// `ports`; `extra` is appended to every config.
    pub fn write(dir: &Path, ports: Ports, extra: Option<&Path>) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let dir = dir.canonicalize()?;
        let (encoding, jwk) = rs256_key("bench-rs256")?;
        std::fs::write(
            dir.join("jwks.json"),
            serde_json::to_vec_pretty(&json!({ "keys": [jwk] }))?,
        )?;
        let mut secret = [0_u8; 16];
        getrandom::fill(&mut secret)?;
        let certificate_hex = hex::encode(secret);
        std::fs::write(dir.join("certificate"), &certificate_hex)?;
        let certificate = AppCertificate::parse(&certificate_hex)?;
        let app_id = AppId::parse(APP_ID)?;

        let now = tokengate::entropy::unix_now();
        let claims = json!({
            "iss": ISSUER, "aud": AUDIENCE, "sub": "bench-user",
            "iat": now, "nbf": now, "exp": now + 86_400,
            "teams": ["blue"], "agora_uid": UID,
        });
        let mut header = Header::new(Algorithm::RS256);
        header.kid = Some("bench-rs256".into());
        let jwt = jsonwebtoken::encode(&header, &claims, &encoding)?;
        let bad_jwt = break_signature(&jwt);
        std::fs::write(dir.join("jwt"), &jwt)?;
        std::fs::write(dir.join("jwt.bad"), &bad_jwt)?;

        let extra = match extra {
            Some(path) => std::fs::read_to_string(path)
                .with_context(|| format!("cannot read {}", path.display()))?,
            None => String::new(),
        };

        let issue = pb::IssueRtcTokenRequest {
            channel: CHANNEL.into(),
            role: pb::Role::Subscriber as i32,
            ..Default::default()
        };
        std::fs::write(dir.join("issue.bin"), grpc_frame(&issue.encode_to_vec())?)?;
        let webinar = pb::IssueRtcTokenRequest {
            channel: WEBINAR_CHANNEL.into(),
            ..issue
        };
        std::fs::write(
            dir.join("issue-webinar.bin"),
            grpc_frame(&webinar.encode_to_vec())?,
        )?;
        for (name, jwt) in [("check.bin", &jwt), ("check.bad.bin", &bad_jwt)] {
            let check = check_request(jwt);
            std::fs::write(dir.join(name), grpc_frame(&check.encode_to_vec())?)?;
        }
        let renew = pb::RenewTokenRequest {
            token: token_to_renew(&app_id, &certificate, now)?,
            ..Default::default()
        };
        std::fs::write(dir.join("renew.bin"), grpc_frame(&renew.encode_to_vec())?)?;
        let bench = Self {
            dir,
            app_id,
            certificate,
            jwt,
            bad_jwt,
            extra,
        };
        bench.write_config("tokengate.toml", ports, "")?;
        Ok(bench)
    }

    /// Writes a tokengate config named `name` listening on `ports`: the
    /// benchmark's config, the extra text, then `tail` (a variant's limits).
    /// Each replica of a run gets its own, as each needs its own ports.
    pub fn write_config(&self, name: &str, ports: Ports, tail: &str) -> anyhow::Result<PathBuf> {
        let mut config = config_text(&self.dir, ports);
        for part in [self.extra.as_str(), tail] {
            if !part.is_empty() {
                config.push('\n');
                config.push_str(part);
            }
        }
        let path = self.path(name);
        std::fs::write(&path, config)?;
        Ok(path)
    }

    /// A file of the directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}

/// The protobuf message read back from a request body file.
pub fn read_body(path: &Path) -> anyhow::Result<Vec<u8>> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    bytes
        .get(5..)
        .map(<[u8]>::to_vec)
        .context("a request body is a gRPC frame")
}

/// A fresh RSA-2048 key and its public JWK.
fn rs256_key(kid: &str) -> anyhow::Result<(EncodingKey, serde_json::Value)> {
    let pair = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048)?;
    let der = AsDer::<aws_lc_rs::encoding::Pkcs8V1Der<'_>>::as_der(&pair)?;
    let pem = pem_wrap("PRIVATE KEY", der.as_ref());
    // The public half only proves the pair is whole before it is used.
    let _ = pair.public_key();
    let encoding = EncodingKey::from_rsa_pem(pem.as_bytes())?;
    let jwk = Jwk::from_encoding_key(&encoding, Algorithm::RS256)?;
    let mut jwk = serde_json::to_value(jwk)?;
    jwk["kid"] = json!(kid);
    jwk["use"] = json!("sig");
    Ok((encoding, jwk))
}

fn pem_wrap(label: &str, der: &[u8]) -> String {
    let body = STANDARD.encode(der);
    let mut pem = format!("-----BEGIN {label}-----\n");
    for chunk in body.as_bytes().chunks(64) {
        pem.push_str(&String::from_utf8_lossy(chunk));
        pem.push('\n');
    }
    pem.push_str(&format!("-----END {label}-----\n"));
    pem
}

/// The JWT with the first character of its signature changed: it still
/// parses, and its signature no longer verifies.
fn break_signature(jwt: &str) -> String {
    let (head, signature) = jwt.rsplit_once('.').unwrap_or((jwt, ""));
    let mut chars: Vec<char> = signature.chars().collect();
    if let Some(first) = chars.first_mut() {
        *first = if *first == 'A' { 'B' } else { 'A' };
    }
    format!("{head}.{}", chars.into_iter().collect::<String>())
}

/// The five-byte gRPC frame header (uncompressed, big-endian length) and the message.
pub fn grpc_frame(message: &[u8]) -> anyhow::Result<Vec<u8>> {
    let len = u32::try_from(message.len())?;
    let mut frame = Vec::with_capacity(message.len() + 5);
    frame.push(0);
    frame.extend_from_slice(&len.to_be_bytes());
    frame.extend_from_slice(message);
    Ok(frame)
}

fn config_text(dir: &Path, ports: Ports) -> String {
    let dir = dir.display();
    let (grpc, admin) = (ports.grpc, ports.admin);
    format!(
        r#"# The load benchmark's config, written by `loadbench setup`.
[server]
grpc_listen = "127.0.0.1:{grpc}"
admin_listen = "127.0.0.1:{admin}"
grace_period = "2s"

[[projects]]
name = "main"
app_id = "{APP_ID}"
signing_certificate = "primary"
certificates = [{{ name = "primary", file = "{dir}/certificate" }}]

[[issuers]]
name = "bench-idp"
issuer = "{ISSUER}"
audiences = ["{AUDIENCE}"]
jwks_file = "{dir}/jwks.json"
algorithms = ["RS256"]

[[rules]]
name = "team rooms"
channel = "team-{{team}}-*"
condition = 'has(claims.teams) && captures.team in claims.teams'
project = "main"
actions = ["rtc"]
issuer = "{ISSUER}"
max_role = "publisher"
uid_claim = "agora_uid"
default_ttl = "1h"
max_ttl = "8h"

[ext_authz]
enabled = true

[[ext_authz.routes]]
path = "/rooms/{{channel}}/join"
methods = ["GET", "POST"]
"#
    )
}

/// A `CheckRequest` as Envoy sends it for `GET /rooms/team-blue-standup/join`
/// with the caller's JWT (the attributes of `tests/support/authz.rs`).
fn check_request(jwt: &str) -> CheckRequest {
    let headers = [
        (":authority", "rooms.bench.example"),
        (":method", "GET"),
        (":path", CHECK_PATH),
        (":scheme", "https"),
        ("x-request-id", "6f1b1a52-3c4e-4f0e-9a8b-2f7f0c9d1e11"),
        ("x-forwarded-proto", "https"),
        ("user-agent", "Mozilla/5.0 (X11; Linux x86_64)"),
        ("accept", "application/json"),
        (
            "x-forwarded-client-cert",
            "By=spiffe://cluster.local/ns/rooms/sa/rooms-api;URI=spiffe://cluster.local/ns/web/sa/frontend",
        ),
        ("authorization", &format!("Bearer {jwt}")),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    let peer = |ip: &str, port: u32, principal: &str| Peer {
        address: Some(Address {
            address: Some(AddressKind::SocketAddress(SocketAddress {
                address: ip.into(),
                port_specifier: Some(PortSpecifier::PortValue(port)),
                ..Default::default()
            })),
        }),
        principal: principal.into(),
        ..Default::default()
    };
    CheckRequest {
        attributes: Some(AttributeContext {
            source: Some(peer(
                "10.8.3.17",
                51_734,
                "spiffe://cluster.local/ns/web/sa/frontend",
            )),
            destination: Some(peer(
                "10.8.5.2",
                8080,
                "spiffe://cluster.local/ns/rooms/sa/rooms-api",
            )),
            request: Some(Request {
                time: Some(envoy_types::pb::google::protobuf::Timestamp {
                    seconds: 1_767_225_600,
                    nanos: 0,
                }),
                http: Some(HttpRequest {
                    id: "6f1b1a52-3c4e-4f0e-9a8b-2f7f0c9d1e11".into(),
                    method: "GET".into(),
                    headers,
                    path: CHECK_PATH.into(),
                    host: "rooms.bench.example".into(),
                    scheme: "https".into(),
                    protocol: "HTTP/2".into(),
                    size: -1,
                    ..Default::default()
                }),
            }),
            ..Default::default()
        }),
    }
}

/// A token for the benchmark's caller, as tokengate would have issued it, for `RenewToken`.
fn token_to_renew(
    app_id: &AppId,
    certificate: &AppCertificate,
    now: u64,
) -> anyhow::Result<String> {
    let issue = Issue {
        app_id,
        certificate,
        issue_ts: u32::try_from(now)?,
        salt: tokengate::entropy::random_salt()?,
    };
    Ok(raw::rtc_token(
        &issue,
        CHANNEL,
        &raw::uid_string(UID),
        Role::Subscriber,
        86_400,
        86_400,
    )?)
}
