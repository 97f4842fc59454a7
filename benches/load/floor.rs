//! The transport floor: a bare tonic server that answers
//! `tokengate.v1.TokenService/IssueRtcToken` with one precomputed reply and
//! does nothing else (issue 13).
//!
//! It is built from the same proto (`tokengate::grpc::pb`), with the same
//! tonic, hyper and tokio as tokengate, on tokio's default multi-threaded
//! runtime as `tokengate serve` runs, so its req/s and CPU per call are the
//! most this transport allows on the machine: what is left between it and
//! tokengate is tokengate's own work (the JWT, the rules, the token, the audit
//! line, the metrics) and its connection handling. The reply is a real token
//! signed once at start with the benchmark's certificate, shaped like
//! tokengate's reply (same fields, same sizes), so the load harness checks
//! and verifies the floor's replies exactly as it checks tokengate's.
//!
//! Every other method is UNIMPLEMENTED. With `--require-authorization VALUE`
//! a call whose `authorization` is not VALUE is answered UNAUTHENTICATED:
//! the harness's self-test sends a broken JWT to prove that a non-zero
//! grpc-status is caught even though h2load counts it as a success. Without
//! it (the benchmark), the metadata is not looked at.
//!
//! Run by `benches/load/load.sh`; by hand:
//! `cargo run --release --example floor -- --listen 127.0.0.1:50061 --app-id ID --certificate-file F`.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context as _;
use clap::Parser;
use tokengate::domain::{Fingerprint, Role};
use tokengate::grpc::pb;
use tokengate::grpc::pb::token_service_server::{TokenService, TokenServiceServer};
use tokengate::token::builders::{Issue, raw};
use tokengate::token::{AppCertificate, AppId};
use tonic::{Request, Response, Status};

/// The channel and uid of the benchmark's request (`loadbench`'s `issue.bin`).
const CHANNEL: &str = "team-blue-standup";
const UID: u32 = 4242;
/// The reply's lifetime, as the benchmark rule's default grants it.
const TTL: u32 = 3600;

#[derive(Debug, Parser)]
#[command(about = "A bare tonic server answering IssueRtcToken with a precomputed reply")]
struct Args {
    /// The address to listen on.
    #[arg(long)]
    listen: SocketAddr,
    /// The App ID written into the token.
    #[arg(long)]
    app_id: String,
    /// A file holding the App Certificate that signs the token.
    #[arg(long)]
    certificate_file: PathBuf,
    /// Answer UNAUTHENTICATED unless `authorization` is this value (self-test).
    #[arg(long)]
    require_authorization: Option<String>,
}

/// The service: one reply, built once.
#[derive(Debug)]
struct Floor {
    reply: pb::IssueRtcTokenResponse,
    require_authorization: Option<String>,
}

#[tonic::async_trait]
impl TokenService for Floor {
    async fn issue_rtc_token(
        &self,
        request: Request<pb::IssueRtcTokenRequest>,
    ) -> Result<Response<pb::IssueRtcTokenResponse>, Status> {
        if let Some(required) = &self.require_authorization {
            let sent = request.metadata().get("authorization");
            if sent.and_then(|v| v.to_str().ok()) != Some(required.as_str()) {
                return Err(Status::unauthenticated("floor: not the expected caller"));
            }
        }
        Ok(Response::new(self.reply.clone()))
    }

    async fn issue_rtm_token(
        &self,
        _request: Request<pb::IssueRtmTokenRequest>,
    ) -> Result<Response<pb::IssueRtmTokenResponse>, Status> {
        Err(Status::unimplemented(
            "the floor answers IssueRtcToken only",
        ))
    }

    async fn issue_chat_token(
        &self,
        _request: Request<pb::IssueChatTokenRequest>,
    ) -> Result<Response<pb::IssueChatTokenResponse>, Status> {
        Err(Status::unimplemented(
            "the floor answers IssueRtcToken only",
        ))
    }

    async fn renew_token(
        &self,
        _request: Request<pb::RenewTokenRequest>,
    ) -> Result<Response<pb::RenewTokenResponse>, Status> {
        Err(Status::unimplemented(
            "the floor answers IssueRtcToken only",
        ))
    }

    async fn inspect_token(
        &self,
        _request: Request<pb::InspectTokenRequest>,
    ) -> Result<Response<pb::InspectTokenResponse>, Status> {
        Err(Status::unimplemented(
            "the floor answers IssueRtcToken only",
        ))
    }

    async fn explain_access(
        &self,
        _request: Request<pb::ExplainAccessRequest>,
    ) -> Result<Response<pb::ExplainAccessResponse>, Status> {
        Err(Status::unimplemented(
            "the floor answers IssueRtcToken only",
        ))
    }
}

/// A reply shaped like tokengate's for the benchmark's request.
fn reply(
    app_id: &AppId,
    certificate: &AppCertificate,
) -> anyhow::Result<pb::IssueRtcTokenResponse> {
    let now = u32::try_from(tokengate::entropy::unix_now())?;
    let issue = Issue {
        app_id,
        certificate,
        issue_ts: now,
        salt: 12_345_678,
    };
    let token = raw::rtc_token(
        &issue,
        CHANNEL,
        &raw::uid_string(UID),
        Role::Subscriber,
        TTL,
        TTL,
    )?;
    let at = |offset: u32| prost_types::Timestamp {
        seconds: i64::from(now) + i64::from(offset),
        nanos: 0,
    };
    Ok(pb::IssueRtcTokenResponse {
        issued: Some(pb::IssuedToken {
            token_fingerprint: Fingerprint::of(token.as_bytes()).as_str().to_owned(),
            token,
            app_id: app_id.as_str().to_owned(),
            project: "main".into(),
            channel: CHANNEL.into(),
            identity: Some(pb::issued_token::Identity::Uid(UID)),
            role: pb::Role::Subscriber as i32,
            issued_at: Some(at(0)),
            expires_at: Some(at(TTL)),
            privileges: vec![pb::PrivilegeExpiry {
                service: pb::Service::Rtc as i32,
                privilege: "join_channel".into(),
                expires_at: Some(at(TTL)),
            }],
            renew_after: Some(at(TTL * 4 / 5)),
            matched_rule: "team rooms".into(),
        }),
    })
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let app_id = AppId::parse(&args.app_id).context("--app-id")?;
    let text = std::fs::read_to_string(&args.certificate_file)
        .with_context(|| format!("cannot read {}", args.certificate_file.display()))?;
    let certificate = AppCertificate::parse(text.trim()).context("--certificate-file")?;
    let floor = Floor {
        reply: reply(&app_id, &certificate)?,
        require_authorization: args.require_authorization,
    };
    let shutdown = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tonic::transport::Server::builder()
        .add_service(TokenServiceServer::new(floor))
        .serve_with_shutdown(args.listen, async move {
            tokio::select! {
                () = shutdown => {}
                _ = terminate.recv() => {}
            }
        })
        .await?;
    Ok(())
}
