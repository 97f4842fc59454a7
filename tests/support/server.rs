//! The real tokengate server on `127.0.0.1:0`, in process, for integration tests.
//!
//! `TestServer::start(rules_toml)` starts a JWKS server with one ES256 and one
//! RS256 key, writes a config whose single issuer trusts it, and serves the
//! whole service (token API, health, reflection, admin port) until the
//! `TestServer` is shut down or dropped. `TestServer::mint` signs caller JWTs.
//! [`InProcess`] serves any config text the same way, for tests that bring
//! their own issuer. A panic in the server task is re-raised by `shutdown`.

use std::net::SocketAddr;
use std::ops::{Deref, DerefMut};
use std::time::Duration;

use jsonwebtoken::Algorithm;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::Channel;

use super::{JwksServer, TestKey, unix_now};
use tokengate::config;
use tokengate::grpc::pb::token_service_client::TokenServiceClient;

/// The issuer URL every test JWT carries.
pub const ISSUER: &str = "https://idp.test.example";
/// The audience tokengate expects in tests.
pub const AUDIENCE: &str = "tokengate-test";
/// The test project's App ID and certificates (primary signs).
pub const APP_ID: &str = "970CA35de60c44645bbae8a215061b33";
/// The primary certificate of the test project.
pub const PRIMARY_CERT: &str = "5CFd2fd1755d40ecb72977518be15d3b";
/// The secondary certificate of the test project (verifies, never signs).
pub const SECONDARY_CERT: &str = "0123456789abcdef0123456789abcdef";

/// tokengate serving a config in process: the same `config::load` and
/// `server::serve` as `tokengate serve`, on 127.0.0.1:0.
pub struct InProcess {
    /// The gRPC address.
    pub addr: SocketAddr,
    /// The admin HTTP address.
    pub admin: SocketAddr,
    /// The forward-auth address, when the config turns `[forward_auth]` on
    /// (bound on 127.0.0.1:0 whatever its `listen` says).
    pub forward_auth: Option<SocketAddr>,
    shutdown: Option<oneshot::Sender<()>>,
    join: Option<JoinHandle<Result<(), tokengate::server::StartError>>>,
}

/// A running server and the JWKS server its issuer trusts (the server's
/// addresses and controls are [`InProcess`]'s, through `Deref`).
pub struct TestServer {
    server: InProcess,
    /// The JWKS server (controllable: rotation, outages).
    pub jwks: JwksServer,
    /// The ES256 key the JWKS publishes (kid `es-1`).
    pub es256: TestKey,
    /// The RS256 key the JWKS publishes (kid `rs-1`).
    pub rs256: TestKey,
}

/// TOML for the test issuer (put it first in `rules`): a request waits up to
/// 5 s for a refetch forced by an unknown `kid`, instead of the 1 s default.
/// Tests that make a call slow on purpose (a key published only now, by a
/// JWKS that answers slowly) need the call to wait for the whole refetch.
pub const LONG_UNKNOWN_KID_WAIT: &str = "[issuers.refresh]\nunknown_kid_wait = \"5s\"\n";

/// The `[server]` and `[[projects]]` part of every test config: the project
/// `main` with its two certificates from [`test_env`].
pub fn project_text() -> String {
    format!(
        r#"
[server]
grace_period = "5s"

[[projects]]
name = "main"
app_id = "{APP_ID}"
signing_certificate = "primary"
certificates = [
  {{ name = "primary", env = "TEST_PRIMARY_CERT" }},
  {{ name = "secondary", env = "TEST_SECONDARY_CERT" }},
]
"#
    )
}

/// The config text for a test server: one project, one issuer at `jwks_url`, and `rules`.
pub fn config_text(jwks_url: &str, rules: &str) -> String {
    format!(
        r#"{projects}
[[issuers]]
name = "test-idp"
issuer = "{ISSUER}"
audiences = ["{AUDIENCE}"]
jwks_url = "{jwks_url}"

{rules}
"#,
        projects = project_text(),
    )
}

/// The caller keys of a [`TestServer`]'s issuer, ES256 `es-1` and RS256
/// `rs-1`, and a JWKS server publishing both.
pub async fn test_keys() -> (JwksServer, TestKey, TestKey) {
    let es256 = TestKey::generate(Algorithm::ES256, "es-1");
    let rs256 = TestKey::generate(Algorithm::RS256, "rs-1");
    let jwks = JwksServer::start(&[&es256, &rs256]).await;
    (jwks, es256, rs256)
}

/// The environment the test config reads its certificates from.
pub fn test_env(name: &str) -> Option<String> {
    match name {
        "TEST_PRIMARY_CERT" => Some(PRIMARY_CERT.to_owned()),
        "TEST_SECONDARY_CERT" => Some(SECONDARY_CERT.to_owned()),
        _ => None,
    }
}

impl TestServer {
    /// Starts a JWKS server and tokengate with `rules` (TOML `[[rules]]` tables).
    pub async fn start(rules: &str) -> Self {
        let (jwks, es256, rs256) = test_keys().await;
        let text = config_text(&jwks.jwks_url(), rules);
        Self::start_with(text, jwks, es256, rs256).await
    }

    /// Starts tokengate with a full config text (its certificates come from [`test_env`]).
    pub async fn start_with(
        text: String,
        jwks: JwksServer,
        es256: TestKey,
        rs256: TestKey,
    ) -> Self {
        Self {
            server: InProcess::start(&text).await,
            jwks,
            es256,
            rs256,
        }
    }

    /// Default claims for `sub`: issuer, audience, one hour of validity; `extra` is merged over them.
    pub fn claims(sub: &str, extra: Value) -> Value {
        let now = unix_now();
        let mut claims = json!({
            "iss": ISSUER, "aud": AUDIENCE, "sub": sub,
            "iat": now, "exp": now + 3600,
        });
        if let (Some(base), Some(more)) = (claims.as_object_mut(), extra.as_object()) {
            for (k, v) in more {
                base.insert(k.clone(), v.clone());
            }
        }
        claims
    }

    /// An ES256 JWT for `sub` with `extra` claims.
    pub fn mint(&self, sub: &str, extra: Value) -> String {
        self.es256.mint(&Self::claims(sub, extra))
    }

    /// `request` with `authorization: Bearer <jwt>`.
    pub fn authed<T>(jwt: &str, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        request
            .metadata_mut()
            .insert("authorization", format!("Bearer {jwt}").parse().unwrap());
        request
    }

    /// Signals shutdown and waits for the server to drain; re-raises a server panic.
    pub async fn shutdown(self) {
        self.server.shutdown().await;
    }
}

impl Deref for TestServer {
    type Target = InProcess;

    fn deref(&self) -> &InProcess {
        &self.server
    }
}

impl DerefMut for TestServer {
    fn deref_mut(&mut self) -> &mut InProcess {
        &mut self.server
    }
}

impl InProcess {
    /// Starts tokengate with `text` (its certificates come from [`test_env`]).
    pub async fn start(text: &str) -> Self {
        let config = config::load(text, &test_env).expect("test config loads");
        let grpc = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let admin_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let forward_auth_listener = match config.forward_auth() {
            Some(_) => Some(TcpListener::bind("127.0.0.1:0").await.unwrap()),
            None => None,
        };
        let addr = grpc.local_addr().unwrap();
        let admin = admin_listener.local_addr().unwrap();
        let forward_auth = forward_auth_listener
            .as_ref()
            .map(|l| l.local_addr().unwrap());
        let (tx, rx) = oneshot::channel::<()>();
        let listeners = tokengate::server::Listeners {
            grpc,
            admin: admin_listener,
            forward_auth: forward_auth_listener,
        };
        let join = tokio::spawn(tokengate::server::serve(config, listeners, async move {
            let _ = rx.await;
        }));
        Self {
            addr,
            admin,
            forward_auth,
            shutdown: Some(tx),
            join: Some(join),
        }
    }

    /// A tonic client connected to the server.
    pub async fn client(&self) -> TokenServiceClient<Channel> {
        TokenServiceClient::connect(format!("http://{}", self.addr))
            .await
            .expect("connect to the test server")
    }

    /// A channel to the server, for health and reflection clients.
    pub async fn channel(&self) -> Channel {
        Channel::from_shared(format!("http://{}", self.addr))
            .unwrap()
            .connect()
            .await
            .unwrap()
    }

    /// Waits until `/readyz` answers 200 (every issuer's keys loaded), for at most 30 s.
    pub async fn wait_ready(&self) {
        let ready = ready_within(&reqwest::Client::new(), self.admin, 1200).await;
        assert!(
            ready,
            "the test server never became ready (did its issuers' keys load?)"
        );
    }

    /// Signals shutdown without waiting, so a test can watch the drain
    /// (health going NOT_SERVING, in-flight calls finishing); `shutdown` then waits.
    pub fn begin_shutdown(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }

    /// Whether the server task has ended (after a shutdown, once drained).
    pub fn has_stopped(&self) -> bool {
        self.join.as_ref().is_none_or(JoinHandle::is_finished)
    }

    /// Signals shutdown and waits for the server to drain; re-raises a server panic.
    pub async fn shutdown(mut self) {
        self.begin_shutdown();
        if let Some(join) = self.join.take() {
            match join.await {
                Ok(result) => result.expect("the server ended with an error"),
                Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
                Err(e) => panic!("the server task failed: {e}"),
            }
        }
    }
}

impl Drop for InProcess {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// Polls `admin`'s `/readyz` with `client` every 25 ms until it answers 200,
/// at most `tries` times; whether it did.
pub async fn ready_within(client: &reqwest::Client, admin: SocketAddr, tries: usize) -> bool {
    let url = format!("http://{admin}/readyz");
    for _ in 0..tries {
        if let Ok(response) = client.get(&url).send().await
            && response.status() == 200
        {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    false
}
