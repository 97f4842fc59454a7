//! The calls and checks the facts tests share: an `IssueRtcToken` or an
//! `ExplainAccess` for a channel with a JWT, a refusal's `ErrorInfo`, and a
//! bounded wait for something to become true.

use std::collections::HashMap;
use std::time::Duration;

use tonic::Code;
use tonic_types::StatusExt as _;

use super::fixtures::rtc;
use super::server::TestServer;
use tokengate::grpc::pb;

/// `IssueRtcToken` for `channel` as `role`, with `jwt`.
pub async fn issue_rtc(
    server: &TestServer,
    jwt: &str,
    channel: &str,
    role: pb::Role,
) -> Result<pb::IssueRtcTokenResponse, tonic::Status> {
    server
        .client()
        .await
        .issue_rtc_token(TestServer::authed(jwt, rtc(channel, role)))
        .await
        .map(tonic::Response::into_inner)
}

/// `ExplainAccess` of a subscriber's `IssueRtcToken` for `channel`, with `jwt`.
pub async fn explain_rtc(
    server: &TestServer,
    jwt: &str,
    channel: &str,
) -> pb::ExplainAccessResponse {
    server
        .client()
        .await
        .explain_access(TestServer::authed(
            jwt,
            pb::ExplainAccessRequest {
                request: Some(pb::explain_access_request::Request::Rtc(rtc(
                    channel,
                    pb::Role::Subscriber,
                ))),
            },
        ))
        .await
        .unwrap()
        .into_inner()
}

/// The ErrorInfo reason and metadata of a refusal with `code`.
pub fn refusal(status: &tonic::Status, code: Code) -> (String, HashMap<String, String>) {
    assert_eq!(status.code(), code, "{status:?}");
    let info = status
        .get_error_details()
        .error_info()
        .cloned()
        .unwrap_or_else(|| panic!("no ErrorInfo in {status:?}"));
    (info.reason, info.metadata)
}

/// The reason of a PERMISSION_DENIED `IssueRtcToken`.
pub fn denied_reason(result: Result<pb::IssueRtcTokenResponse, tonic::Status>) -> String {
    refusal(&result.expect_err("denied"), Code::PermissionDenied).0
}

/// Calls `attempt` every 50 ms until it holds, for at most `limit`.
pub async fn eventually<F, Fut>(limit: Duration, mut attempt: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + limit;
    while tokio::time::Instant::now() < deadline {
        if attempt().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}
