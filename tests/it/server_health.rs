//! gRPC health, the admin port's `/healthz` and `/readyz`, and reflection
//! (v1 and v1alpha), against the real server on 127.0.0.1:0.

use crate::support;

use std::time::Duration;

use jsonwebtoken::Algorithm;
use prost::Message;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};

use support::fixtures::{LOBBY, rtc};
use support::server::{TestServer, config_text};
use support::{JwksServer, TestKey};
use tokengate::grpc::pb::Role;

const SERVICE: &str = "tokengate.v1.TokenService";

/// A server whose JWKS answers 503 until `server.jwks.fail_next(0, 503)`.
async fn start_without_keys() -> TestServer {
    let (jwks, es256, rs256) = support::server::test_keys().await;
    jwks.fail_next(usize::MAX, 503);
    TestServer::start_with(config_text(&jwks.jwks_url(), LOBBY), jwks, es256, rs256).await
}

async fn status_of(client: &mut HealthClient<tonic::transport::Channel>, service: &str) -> i32 {
    client
        .check(HealthCheckRequest {
            service: service.into(),
        })
        .await
        .unwrap()
        .into_inner()
        .status
}

async fn admin_status(server: &TestServer, path: &str) -> u16 {
    reqwest::get(format!("http://{}{path}", server.admin))
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// Polls `check` until it reports `want` (the health task runs asynchronously).
async fn eventually(
    client: &mut HealthClient<tonic::transport::Channel>,
    service: &str,
    want: ServingStatus,
) {
    for _ in 0..200 {
        if status_of(client, service).await == want as i32 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("{service:?} never became {want:?}");
}

#[tokio::test]
async fn health_follows_key_loading_and_shutdown() {
    let mut server = start_without_keys().await;
    let mut health = HealthClient::new(server.channel().await);

    // Before any key has loaded: not serving, and the admin port says so too.
    // Sampled a few times over the first fetches, since readiness must never flip early.
    for _ in 0..5 {
        for service in ["", SERVICE] {
            assert_eq!(
                status_of(&mut health, service).await,
                ServingStatus::NotServing as i32,
                "{service:?} before keys load"
            );
        }
        assert_eq!(admin_status(&server, "/readyz").await, 503);
        assert_eq!(admin_status(&server, "/healthz").await, 200);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // An unknown service is NOT_FOUND, as the health protocol says.
    let unknown = health
        .check(HealthCheckRequest {
            service: "no.such.Service".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), tonic::Code::NotFound);

    // The JWKS recovers: serving.
    server.jwks.fail_next(0, 503);
    server.wait_ready().await;
    for service in ["", SERVICE] {
        eventually(&mut health, service, ServingStatus::Serving).await;
    }
    assert_eq!(admin_status(&server, "/readyz").await, 200);
    assert_eq!(admin_status(&server, "/healthz").await, 200);

    // Shutdown starts: a watcher opened before it sees NOT_SERVING for both names.
    let mut watches = Vec::new();
    for service in ["", SERVICE] {
        let mut stream = health
            .watch(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner();
        let first: HealthCheckResponse = stream.message().await.unwrap().unwrap();
        assert_eq!(first.status, ServingStatus::Serving as i32);
        watches.push((service, stream));
    }
    server.begin_shutdown();
    for (service, stream) in &mut watches {
        let next = tokio::time::timeout(Duration::from_secs(5), stream.message())
            .await
            .unwrap_or_else(|_| panic!("{service:?}: no update after shutdown"))
            .unwrap()
            .unwrap();
        assert_eq!(
            next.status,
            ServingStatus::NotServing as i32,
            "{service:?} at shutdown"
        );
    }
    // The admin port no longer answers ready: 503 while it drains, or closed.
    if let Ok(response) = reqwest::get(format!("http://{}/readyz", server.admin)).await {
        assert_eq!(response.status().as_u16(), 503, "/readyz while draining");
    }
    drop(watches);
    server.shutdown().await;
}

#[tokio::test]
async fn not_serving_until_every_issuer_has_loaded_its_keys() {
    // A second issuer whose JWKS fails; the first one's keys load at once.
    let other_key = TestKey::generate(Algorithm::ES256, "other-1");
    let other = JwksServer::start(&[&other_key]).await;
    other.fail_next(usize::MAX, 500);
    let second_issuer = format!(
        "[[issuers]]\nname = \"other-idp\"\nissuer = \"https://other.test.example\"\naudiences = [\"{}\"]\njwks_url = \"{}\"\n",
        support::server::AUDIENCE,
        other.jwks_url()
    );
    // Both issuers reach the lobby rule, which binds `sub`: say it is one namespace.
    let rules = format!("{LOBBY}shared_identity = true\n");
    let server = TestServer::start(&format!("{second_issuer}\n{rules}")).await;
    let mut health = HealthClient::new(server.channel().await);

    // The first issuer works: its callers are served even before overall readiness.
    let jwt = server.mint("alice", serde_json::json!({}));
    let mut client = server.client().await;
    let request = || TestServer::authed(&jwt, rtc("lobby-1", Role::Subscriber));
    let mut served = false;
    for _ in 0..200 {
        if client.issue_rtc_token(request()).await.is_ok() {
            served = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(served, "the first issuer's callers are served");
    for service in ["", SERVICE] {
        assert_eq!(
            status_of(&mut health, service).await,
            ServingStatus::NotServing as i32,
            "{service:?} while the second issuer has no keys"
        );
    }
    assert_eq!(admin_status(&server, "/readyz").await, 503);

    // The second issuer's callers are UNAVAILABLE meanwhile.
    let claims = serde_json::json!({
        "iss": "https://other.test.example", "aud": support::server::AUDIENCE, "sub": "bob",
        "iat": support::unix_now(), "exp": support::unix_now() + 600,
    });
    let other_jwt = other_key.mint(&claims);
    let status = client
        .issue_rtc_token(TestServer::authed(
            &other_jwt,
            rtc("lobby-1", Role::Subscriber),
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unavailable);

    other.fail_next(0, 500);
    server.wait_ready().await;
    for service in ["", SERVICE] {
        eventually(&mut health, service, ServingStatus::Serving).await;
    }
    server.shutdown().await;
}

mod reflection {
    //! Both reflection versions, through the clients tonic-reflection generates.

    use super::*;
    use prost_types::FileDescriptorProto;

    /// What one reflection version answers, in a version-independent shape.
    pub struct Answers {
        /// The listed services.
        pub services: Vec<String>,
        /// The files that define a symbol.
        pub files: Vec<FileDescriptorProto>,
    }

    /// Defines `pub async fn $version(channel, symbol) -> Answers`: lists the
    /// services and asks for the files defining `symbol`, through the client
    /// of `tonic_reflection::pb::$version` (the two versions' types differ, so
    /// one function cannot serve both).
    macro_rules! reflection_client {
        ($version:ident) => {
            pub async fn $version(channel: tonic::transport::Channel, symbol: &str) -> Answers {
                use tonic_reflection::pb::$version::server_reflection_client::ServerReflectionClient;
                use tonic_reflection::pb::$version::server_reflection_request::MessageRequest;
                use tonic_reflection::pb::$version::server_reflection_response::MessageResponse;
                use tonic_reflection::pb::$version::{
                    ServerReflectionRequest, ServerReflectionResponse,
                };
                let mut client = ServerReflectionClient::new(channel);
                let requests = vec![
                    ServerReflectionRequest {
                        host: String::new(),
                        message_request: Some(MessageRequest::ListServices(String::new())),
                    },
                    ServerReflectionRequest {
                        host: String::new(),
                        message_request: Some(MessageRequest::FileContainingSymbol(symbol.into())),
                    },
                ];
                let mut stream = client
                    .server_reflection_info(tonic::codegen::tokio_stream::iter(requests))
                    .await
                    .unwrap()
                    .into_inner();
                let mut answers = Answers {
                    services: Vec::new(),
                    files: Vec::new(),
                };
                while let Some(ServerReflectionResponse {
                    message_response, ..
                }) = stream.message().await.unwrap()
                {
                    match message_response {
                        Some(MessageResponse::ListServicesResponse(list)) => {
                            answers.services = list.service.into_iter().map(|s| s.name).collect();
                        }
                        Some(MessageResponse::FileDescriptorResponse(files)) => {
                            answers.files = decode(&files.file_descriptor_proto);
                        }
                        other => panic!(
                            "{} reflection answered {other:?}",
                            stringify!($version)
                        ),
                    }
                }
                answers
            }
        };
    }

    reflection_client!(v1);
    reflection_client!(v1alpha);

    fn decode(files: &[Vec<u8>]) -> Vec<FileDescriptorProto> {
        files
            .iter()
            .map(|bytes| FileDescriptorProto::decode(bytes.as_slice()).unwrap())
            .collect()
    }
}

/// Whether `files` define message `name` in `package`.
fn defines(files: &[prost_types::FileDescriptorProto], package: &str, message: &str) -> bool {
    files
        .iter()
        .any(|f| f.package() == package && f.message_type.iter().any(|m| m.name() == message))
}

#[tokio::test]
async fn reflection_v1_and_v1alpha_list_the_service_and_resolve_error_details() {
    let server = TestServer::start(LOBBY).await;
    server.wait_ready().await;
    for version in ["v1", "v1alpha"] {
        let answers = |symbol: &'static str| {
            let channel = server.channel();
            async move {
                let channel = channel.await;
                match version {
                    "v1" => reflection::v1(channel, symbol).await,
                    _ => reflection::v1alpha(channel, symbol).await,
                }
            }
        };
        let details = answers("google.rpc.BadRequest").await;
        // Each version lists itself (tonic-reflection builds one per version).
        let own = format!("grpc.reflection.{version}.ServerReflection");
        for service in [SERVICE, "grpc.health.v1.Health", own.as_str()] {
            assert!(
                details.services.iter().any(|s| s == service),
                "{version}: {service} in {:?}",
                details.services
            );
        }
        assert!(
            defines(&details.files, "google.rpc", "BadRequest"),
            "{version}: google.rpc.BadRequest resolves"
        );
        let info = answers("google.rpc.ErrorInfo").await;
        assert!(defines(&info.files, "google.rpc", "ErrorInfo"), "{version}");

        // The service itself resolves to the file that defines its messages.
        let api = answers(SERVICE).await;
        let file = api
            .files
            .iter()
            .find(|f| f.package() == "tokengate.v1")
            .unwrap_or_else(|| panic!("{version}: no tokengate.v1 file"));
        let methods: Vec<&str> = file
            .service
            .iter()
            .find(|s| s.name() == "TokenService")
            .unwrap()
            .method
            .iter()
            .map(|m| m.name())
            .collect();
        assert_eq!(
            methods,
            [
                "IssueRtcToken",
                "IssueRtmToken",
                "IssueChatToken",
                "RenewToken",
                "InspectToken",
                "ExplainAccess"
            ],
            "{version}"
        );
    }
    server.shutdown().await;
}

/// tonic-health starts the overall status "" as SERVING; the server must
/// report NOT_SERVING before it answers its first health check.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_first_health_answer_is_not_serving() {
    for round in 0..20 {
        let server = start_without_keys().await;
        // Connect at once: the server task is starting concurrently.
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", server.addr))
            .unwrap()
            .connect_lazy();
        let mut health = HealthClient::new(channel);
        let first = health
            .check(HealthCheckRequest {
                service: String::new(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            first.status,
            ServingStatus::NotServing as i32,
            "round {round}: SERVING before any key loaded"
        );
        server.shutdown().await;
    }
}

/// A server with a long grace period: a drain that waited for open Watch
/// streams would outlive the test's bound below instead of ending.
async fn start_with_long_grace() -> TestServer {
    let (jwks, es256, rs256) = support::server::test_keys().await;
    let rules = format!("{}{LOBBY}", support::server::LONG_UNKNOWN_KID_WAIT);
    let text = config_text(&jwks.jwks_url(), &rules)
        .replace("grace_period = \"5s\"", "grace_period = \"1h\"");
    assert!(text.contains("grace_period = \"1h\""));
    TestServer::start_with(text, jwks, es256, rs256).await
}

#[tokio::test]
async fn an_open_watch_gets_not_serving_and_ends_so_the_drain_can_finish() {
    let mut server = start_with_long_grace().await;
    server.wait_ready().await;
    let mut health = HealthClient::new(server.channel().await);
    let mut stream = health
        .watch(HealthCheckRequest {
            service: SERVICE.into(),
        })
        .await
        .unwrap()
        .into_inner();
    let first = stream.message().await.unwrap().unwrap();
    assert_eq!(first.status, ServingStatus::Serving as i32);

    server.begin_shutdown();
    let bound = Duration::from_secs(60);
    let last = tokio::time::timeout(bound, stream.message()).await.unwrap();
    assert_eq!(
        last.unwrap().unwrap().status,
        ServingStatus::NotServing as i32
    );
    // The stream ends (no error, no more messages) rather than staying open.
    let end = tokio::time::timeout(bound, stream.message()).await;
    assert!(end.expect("the watch stayed open").unwrap().is_none());
    // With the watch gone nothing is in flight, so the drain ends long before
    // the one-hour grace period; the bound only turns a hang into a failure.
    tokio::time::timeout(Duration::from_secs(60), server.shutdown())
        .await
        .expect("the drain waited for the watch");
}

#[tokio::test]
async fn a_watch_of_an_unknown_service_says_so() {
    let server = TestServer::start(LOBBY).await;
    server.wait_ready().await;
    let mut health = HealthClient::new(server.channel().await);
    let mut stream = health
        .watch(HealthCheckRequest {
            service: "no.such.Service".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let first = stream.message().await.unwrap().unwrap();
    assert_eq!(first.status, ServingStatus::ServiceUnknown as i32);
    server.shutdown().await;
}

#[tokio::test]
async fn readyz_answers_503_while_draining() {
    let mut server = start_with_long_grace().await;
    server.wait_ready().await;
    assert_eq!(admin_status(&server, "/readyz").await, 200);
    // An in-flight call keeps the drain open: a JWT whose kid is unknown makes
    // the server refetch keys from a JWKS that now answers slowly.
    let other = TestKey::generate(Algorithm::ES256, "es-2");
    server.jwks.add_key(&other);
    server.jwks.set_delay(Duration::from_secs(3));
    let jwt = other.mint(&TestServer::claims("alice", serde_json::json!({})));
    let mut client = server.client().await;
    let call = tokio::spawn(async move {
        client
            .issue_rtc_token(TestServer::authed(&jwt, rtc("lobby-1", Role::Subscriber)))
            .await
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    server.begin_shutdown();
    let mut answer = 0;
    for _ in 0..100 {
        answer = admin_status(&server, "/readyz").await;
        if answer == 503 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(answer, 503, "/readyz must say draining while calls finish");
    assert_eq!(admin_status(&server, "/healthz").await, 200);
    let reply = call.await.unwrap();
    assert!(reply.is_ok(), "the in-flight call must finish: {reply:?}");
    tokio::time::timeout(Duration::from_secs(60), server.shutdown())
        .await
        .expect("the drain never finished");
}
