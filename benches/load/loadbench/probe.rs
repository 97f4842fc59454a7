//! Real calls with real clients, each reply decoded and its token verified
//! against the benchmark's certificate: the known-good reply sizes the load
//! runs are checked against, and the sample of verified replies around them.

use std::net::SocketAddr;

use anyhow::{Context as _, bail, ensure};
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use envoy_types::pb::envoy::service::auth::v3::check_response::HttpResponse;
use envoy_types::pb::envoy::service::auth::v3::{CheckRequest, CheckResponse};
use prost::Message as _;
use tokengate::grpc::pb;
use tokengate::grpc::pb::token_service_client::TokenServiceClient;
use tokengate::token::inspect::{Expectation, Keyring, inspect};
use tonic::transport::Channel;

use crate::setup::{Bench, CHANNEL, UID};

/// The calls the benchmark makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Call {
    /// `tokengate.v1.TokenService/IssueRtcToken` (the Node peer: its RTC token route).
    Issue,
    /// `envoy.service.auth.v3.Authorization/Check`.
    Check,
    /// `tokengate.v1.TokenService/RenewToken`.
    Renew,
}

impl Call {
    /// The name in the results table.
    pub fn name(self) -> &'static str {
        match self {
            Call::Issue => "IssueRtcToken",
            Call::Check => "Check",
            Call::Renew => "RenewToken",
        }
    }

    /// The gRPC path.
    pub fn path(self) -> &'static str {
        match self {
            Call::Issue => "/tokengate.v1.TokenService/IssueRtcToken",
            Call::Check => "/envoy.service.auth.v3.Authorization/Check",
            Call::Renew => "/tokengate.v1.TokenService/RenewToken",
        }
    }

    /// The request body file of the benchmark directory (`bad`: the broken caller's).
    pub fn body_file(self, bad: bool) -> &'static str {
        match (self, bad) {
            (Call::Issue, _) => "issue.bin",
            (Call::Check, false) => "check.bin",
            (Call::Check, true) => "check.bad.bin",
            (Call::Renew, _) => "renew.bin",
        }
    }

    /// Whether the caller's JWT rides in the `authorization` header (Check's is in the body).
    pub fn bearer_header(self) -> bool {
        self != Call::Check
    }
}

/// Where a probe goes.
#[derive(Debug, Clone)]
pub enum Endpoint {
    /// A gRPC server (tokengate or the floor).
    Grpc(SocketAddr),
    /// The Node peer's RTC token URL (HTTP/1.1, JSON reply).
    Http(String),
}

/// What a probe saw: every reply verified, and the sizes of their bodies as
/// h2load counts them (`data`: the gRPC frames, or the HTTP body).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sample {
    /// Replies received and verified.
    pub count: u64,
    /// The smallest reply body, bytes.
    pub min_bytes: u64,
    /// The largest reply body, bytes.
    pub max_bytes: u64,
}

impl Sample {
    fn add(&mut self, bytes: u64) {
        self.count += 1;
        self.min_bytes = self.min_bytes.min(bytes);
        self.max_bytes = self.max_bytes.max(bytes);
    }
}

/// `count` calls of `call` to `endpoint`, one at a time; the first reply that
/// is not a success, or whose token does not verify, is the error.
pub async fn probe(
    endpoint: &Endpoint,
    call: Call,
    bench: &Bench,
    count: u64,
) -> anyhow::Result<Sample> {
    let mut sample = Sample {
        count: 0,
        min_bytes: u64::MAX,
        max_bytes: 0,
    };
    match endpoint {
        Endpoint::Grpc(addr) => {
            let channel = Channel::from_shared(format!("http://{addr}"))?
                .connect()
                .await
                .with_context(|| format!("cannot connect to {addr}"))?;
            for _ in 0..count {
                sample.add(grpc_call(&channel, call, bench).await?);
            }
        }
        Endpoint::Http(url) => {
            let client = reqwest::Client::new();
            for _ in 0..count {
                sample.add(http_call(&client, url, bench).await?);
            }
        }
    }
    Ok(sample)
}

/// One gRPC call; the reply's frame size.
async fn grpc_call(channel: &Channel, call: Call, bench: &Bench) -> anyhow::Result<u64> {
    let body = crate::setup::read_body(&bench.path(call.body_file(false)))?;
    let (token, size) = match call {
        Call::Issue => {
            let request = pb::IssueRtcTokenRequest::decode(body.as_slice())?;
            let reply = TokenServiceClient::new(channel.clone())
                .issue_rtc_token(authed(bench, request)?)
                .await
                .context("IssueRtcToken")?
                .into_inner();
            let size = reply.encoded_len();
            (issued_token(reply.issued)?, size)
        }
        Call::Renew => {
            let request = pb::RenewTokenRequest::decode(body.as_slice())?;
            let reply = TokenServiceClient::new(channel.clone())
                .renew_token(authed(bench, request)?)
                .await
                .context("RenewToken")?
                .into_inner();
            let size = reply.encoded_len();
            (issued_token(reply.issued)?, size)
        }
        Call::Check => {
            let request = CheckRequest::decode(body.as_slice())?;
            let reply = AuthorizationClient::new(channel.clone())
                .check(request)
                .await
                .context("Check")?
                .into_inner();
            let size = reply.encoded_len();
            (check_token(reply)?, size)
        }
    };
    verify(&token, bench)?;
    Ok(u64::try_from(size)? + 5)
}

/// `message` with the caller's JWT in its `authorization` metadata.
fn authed<T>(bench: &Bench, message: T) -> anyhow::Result<tonic::Request<T>> {
    let mut request = tonic::Request::new(message);
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {}", bench.jwt).parse()?);
    Ok(request)
}

fn issued_token(issued: Option<pb::IssuedToken>) -> anyhow::Result<String> {
    let issued = issued.context("a reply without `issued`")?;
    ensure!(issued.channel == CHANNEL, "issued for {:?}", issued.channel);
    ensure!(
        issued.identity == Some(pb::issued_token::Identity::Uid(UID)),
        "issued for {:?}",
        issued.identity
    );
    Ok(issued.token)
}

/// The token an allowing `Check` sets upstream.
fn check_token(reply: CheckResponse) -> anyhow::Result<String> {
    let code = reply.status.as_ref().map_or(0, |s| s.code);
    match reply.http_response {
        Some(HttpResponse::OkResponse(ok)) if code == 0 => ok
            .headers
            .into_iter()
            .filter_map(|option| option.header)
            .find(|header| header.key == "x-agora-token")
            .map(|header| header.value)
            .context("an OK check without x-agora-token"),
        Some(HttpResponse::DeniedResponse(denied)) => bail!(
            "Check denied (grpc code {code}, HTTP {:?}): {}",
            denied.status.map(|s| s.code),
            denied.body
        ),
        other => bail!("Check answered code {code} with {other:?}"),
    }
}

/// One GET of the Node peer; the body's size.
async fn http_call(client: &reqwest::Client, url: &str, bench: &Bench) -> anyhow::Result<u64> {
    let response = client.get(url).send().await?;
    ensure!(response.status().is_success(), "HTTP {}", response.status());
    let body = response.bytes().await?;
    let json: serde_json::Value = serde_json::from_slice(&body)?;
    let token = json["rtcToken"]
        .as_str()
        .context("a reply without rtcToken")?;
    verify(token, bench)?;
    Ok(u64::try_from(body.len())?)
}

/// The token verifies against the benchmark's certificate, is for its
/// channel and uid, and nothing would make Agora refuse it now.
pub fn verify(token: &str, bench: &Bench) -> anyhow::Result<()> {
    let certificates = [("primary".to_owned(), bench.certificate.clone())];
    let keyring = Keyring {
        project: "main",
        app_id: Some(&bench.app_id),
        certificates: &certificates,
    };
    let expected = Expectation {
        channel: Some(CHANNEL.into()),
        uid: Some(UID.to_string()),
    };
    let found = inspect(token, &[keyring], &expected, tokengate::entropy::unix_now())?;
    ensure!(
        found.signature_valid,
        "the token's signature does not verify"
    );
    ensure!(
        found.diagnoses.is_empty(),
        "Agora would refuse the token: {:?}",
        found.diagnoses
    );
    ensure!(
        found
            .services
            .iter()
            .any(|s| s.service_type == 1 && s.channel == CHANNEL && s.uid == UID.to_string()),
        "the token is not an RTC token for {CHANNEL} and uid {UID}"
    );
    Ok(())
}
