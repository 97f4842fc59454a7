//! End to end with the real OpenID provider (npm `oidc-provider`): tokengate
//! finds the provider's keys through OIDC discovery, a client-credentials
//! access token is exchanged for an RTC token over gRPC, and Agora's official
//! npm `agora-token` parser verifies that token. A token minted for another
//! audience is refused.

use crate::support;

use serde_json::json;
use support::OidcProvider;
use support::fixtures::rtc_uid;
use support::oidc::AUDIENCE;
use support::server::{APP_ID, InProcess, PRIMARY_CERT, SECONDARY_CERT, TestServer, project_text};
use support::tools::agora_token_views;
use tokengate::grpc::pb;
use tonic::Code;
use tonic_types::StatusExt;

/// The subject and scope of the provider's client-credentials tokens.
const CLIENT: &str = "agora-caller";

/// A config whose only issuer is `idp`, found through discovery (`discovery = true`
/// or an explicit `discovery_url`), and rules for the client-credentials caller.
fn config_text(idp: &OidcProvider, explicit_url: bool) -> String {
    let keys = if explicit_url {
        format!("discovery_url = \"{}\"", idp.discovery_url())
    } else {
        "discovery = true".to_owned()
    };
    format!(
        r#"{projects}
[[issuers]]
name = "oidc"
issuer = "{issuer}"
audiences = ["{AUDIENCE}"]
algorithms = ["{alg}"]
{keys}

# A backend authenticated by client credentials acts for its users: it names the uid.
[[rules]]
name = "backend"
actions = ["rtc"]
issuer = "{issuer}"
channel = "live-*"
condition = 'caller.subject == "{CLIENT}" && "rtc:token" in caller.scopes'
project = "main"
max_role = "publisher"
caller_chooses_identity = true
default_ttl = "30m"
max_ttl = "2h"
"#,
        projects = project_text(),
        issuer = idp.issuer,
        alg = idp.alg,
    )
}

/// The whole exchange for a provider signing with `alg`.
async fn exchange(alg: &str, explicit_url: bool) {
    let idp = OidcProvider::start(alg).await;
    let gate = InProcess::start(&config_text(&idp, explicit_url)).await;
    // Ready once the provider's keys have loaded through discovery.
    gate.wait_ready().await;
    let mut client = gate.client().await;

    let access_token = idp.token().await;
    let issued = client
        .issue_rtc_token(TestServer::authed(
            &access_token,
            rtc_uid("live-42", pb::Role::Publisher, 1001),
        ))
        .await
        .unwrap_or_else(|status| panic!("{alg}: {status:?}"))
        .into_inner()
        .issued
        .unwrap();
    assert_eq!(issued.matched_rule, "backend");
    assert_eq!(issued.identity, Some(pb::issued_token::Identity::Uid(1001)));

    // Agora's own parser: the primary certificate verifies it, the secondary does not.
    let views = agora_token_views(&[
        (&issued.token, PRIMARY_CERT),
        (&issued.token, SECONDARY_CERT),
    ]);
    let view = &views[0];
    assert_eq!(view["parsed"], true, "{view}");
    assert_eq!(view["verified"], true, "{view}");
    assert_eq!(views[1]["verified"], false, "{}", views[1]);
    assert_eq!(view["app_id"], APP_ID);
    assert_eq!(view["expire"], 1800, "the rule's default_ttl");
    let services = view["services"].as_array().unwrap();
    assert_eq!(services.len(), 1, "{view}");
    assert_eq!(services[0]["type"], 1, "RTC");
    assert_eq!(services[0]["channel_name"], "live-42");
    assert_eq!(services[0]["uid"], "1001");
    assert_eq!(
        services[0]["privileges"],
        json!({"1": 1800, "2": 1800, "3": 1800, "4": 1800}),
        "join and publish for the token's lifetime: {view}"
    );

    // An access token for another resource (audience) is refused.
    let other = idp.token_for(Some("urn:other-service")).await;
    let status = client
        .issue_rtc_token(TestServer::authed(
            &other,
            rtc_uid("live-42", pb::Role::Publisher, 1001),
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    let info = status.get_details_error_info().expect("an ErrorInfo");
    assert_eq!(info.reason, "bad_audience");
    assert!(!status.message().contains(&other), "the JWT leaked");

    // The right audience but a channel no rule grants: PERMISSION_DENIED.
    let status = client
        .issue_rtc_token(TestServer::authed(
            &access_token,
            rtc_uid("studio-1", pb::Role::Publisher, 1001),
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    gate.shutdown().await;
}

#[tokio::test]
async fn an_rs256_access_token_is_exchanged_through_discovery() {
    exchange("RS256", false).await;
}

#[tokio::test]
async fn an_es256_access_token_is_exchanged_through_a_discovery_url() {
    exchange("ES256", true).await;
}
