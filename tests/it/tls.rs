//! TLS and mTLS on the gRPC port, with certificates made here (rcgen): a
//! tonic client, grpcurl and a Python grpcio client over TLS; a plaintext
//! client, a client certificate from another CA and a missing one refused;
//! optional client certificates; the SPIFFE ID in the audit event; the
//! certificate rotated on disk (a Kubernetes `..data` symlink swap) while a
//! client keeps calling, and a bad new file that keeps the old pair; a
//! config reload that re-reads the files and applies new TLS settings; and
//! `check-config` on the files.

use crate::support;

use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, SanType};
use serde_json::{Value, json};
use support::binary::{Running, loopback};
use support::server::{TestServer, config_text, test_keys};
use support::tools::{blocking, grpcurl_async, python_path, run};
use tokengate::grpc::pb;
use tokengate::grpc::pb::token_service_client::TokenServiceClient;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

/// Rooms for any caller, bound to the caller's subject as an account.
const ROOMS: &str = r#"
[[rules]]
name = "rooms"
actions = ["rtc"]
issuer = "https://idp.test.example"
channel = "room-*"
project = "main"
max_role = "publisher"
account_claim = "sub"
default_ttl = "1h"
"#;

/// The SPIFFE ID of the test backend's client certificate.
const BACKEND_SPIFFE_ID: &str = "spiffe://corp.example/ns/backend/sa/api";

/// A certificate authority made for one test.
struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

/// A PEM certificate and its key.
struct Leaf {
    cert: String,
    key: String,
}

impl Ca {
    fn new(name: &str) -> Self {
        let mut params = CertificateParams::default();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        Self { issuer }
    }

    fn pem(&self) -> String {
        self.issuer.pem()
    }

    /// A certificate for the server on 127.0.0.1 and `localhost`, with `serial`.
    fn server(&self, serial: u64) -> Leaf {
        let mut params = CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
        params
            .subject_alt_names
            .push(SanType::IpAddress([127, 0, 0, 1].into()));
        params
            .distinguished_name
            .push(DnType::CommonName, "tokengate");
        params.serial_number = Some(serial.into());
        self.sign(&params)
    }

    /// A client certificate naming `spiffe_id` (and one DNS SAN).
    fn client(&self, spiffe_id: &str) -> Leaf {
        let mut params = CertificateParams::default();
        params.subject_alt_names = vec![
            SanType::URI(spiffe_id.try_into().unwrap()),
            SanType::DnsName("api.backend.svc".try_into().unwrap()),
        ];
        params
            .distinguished_name
            .push(DnType::CommonName, "backend-api");
        self.sign(&params)
    }

    fn sign(&self, params: &CertificateParams) -> Leaf {
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Leaf {
            cert: cert.pem(),
            key: key.serialize_pem(),
        }
    }
}

/// The server's TLS files, laid out as a Kubernetes Secret volume does:
/// `tls.crt` and `tls.key` are symlinks through `..data`, a symlink to the
/// current timestamped folder, swapped atomically on rotation.
struct Files {
    dir: tempfile::TempDir,
    generation: usize,
}

impl Files {
    fn new(server: &Leaf, ca: &Ca) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut files = Self { dir, generation: 0 };
        files.rotate(&server.cert, &server.key, &ca.pem());
        for name in ["tls.crt", "tls.key", "ca.crt"] {
            std::os::unix::fs::symlink(format!("..data/{name}"), files.dir.path().join(name))
                .unwrap();
        }
        files
    }

    /// Writes a new generation and swaps `..data` to it in one rename.
    fn rotate(&mut self, cert: &str, key: &str, ca: &str) {
        self.generation += 1;
        let folder = format!("..2026_{:02}", self.generation);
        let path = self.dir.path().join(&folder);
        std::fs::create_dir(&path).unwrap();
        std::fs::write(path.join("tls.crt"), cert).unwrap();
        std::fs::write(path.join("tls.key"), key).unwrap();
        std::fs::write(path.join("ca.crt"), ca).unwrap();
        let next = self.dir.path().join("..data_tmp");
        std::os::unix::fs::symlink(&folder, &next).unwrap();
        std::fs::rename(&next, self.dir.path().join("..data")).unwrap();
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// `[server.tls]` for these files; `mtls` is `None` (plain TLS),
    /// `Some("required")` or `Some("optional")`.
    fn section(&self, mtls: Option<&str>) -> String {
        let mut text = format!(
            "\n[server.tls]\ncert_file = {:?}\nkey_file = {:?}\nreload_interval = \"100ms\"\n",
            self.path("tls.crt"),
            self.path("tls.key"),
        );
        if let Some(mode) = mtls {
            text.push_str(&format!(
                "client_ca_file = {:?}\nclient_auth = {mode:?}\n",
                self.path("ca.crt")
            ));
        }
        text
    }
}

/// A client's PEM files on disk, for grpcurl and Python.
struct ClientFiles {
    _dir: tempfile::TempDir,
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

fn client_files(ca: &Ca, leaf: &Leaf) -> ClientFiles {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path
    };
    ClientFiles {
        ca: write("ca.pem", &ca.pem()),
        cert: write("client.pem", &leaf.cert),
        key: write("client.key", &leaf.key),
        _dir: dir,
    }
}

/// The whole config for the binary: rooms, and `[server.tls]` as `files` say.
fn config(jwks_url: &str, files: &Files, mtls: Option<&str>) -> String {
    loopback(&config_text(jwks_url, ROOMS)) + &files.section(mtls)
}

/// A tonic channel over TLS to `addr`, trusting `ca`, presenting `identity`.
async fn tls_channel(
    addr: std::net::SocketAddr,
    ca: &Ca,
    identity: Option<&Leaf>,
) -> Result<Channel, tonic::transport::Error> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca.pem()))
        .domain_name("localhost");
    if let Some(leaf) = identity {
        tls = tls.identity(Identity::from_pem(&leaf.cert, &leaf.key));
    }
    Channel::from_shared(format!("https://{addr}"))
        .unwrap()
        .tls_config(tls)?
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
}

/// An `IssueRtcToken` call for `room-1` as `sub`.
async fn issue(channel: Channel, jwt: &str) -> Result<pb::IssueRtcTokenResponse, tonic::Status> {
    TokenServiceClient::new(channel)
        .issue_rtc_token(TestServer::authed(
            jwt,
            pb::IssueRtcTokenRequest {
                channel: "room-1".into(),
                role: pb::Role::Subscriber as i32,
                ..Default::default()
            },
        ))
        .await
        .map(tonic::Response::into_inner)
}

/// The audit events of `IssueRtcToken` calls in the binary's logs, once
/// there are at least `count` (the log writer's thread writes them after
/// the reply; at most 10 s).
async fn audit_events_at_least(server: &Running, count: usize) -> Vec<Value> {
    for _ in 0..200 {
        let events = audit_events(server);
        if events.len() >= count {
            return events;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    audit_events(server)
}

/// The audit events of `IssueRtcToken` calls in the binary's logs so far.
fn audit_events(server: &Running) -> Vec<Value> {
    server
        .logs()
        .iter()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|event| event["target"] == "audit" && event["rpc"] == "IssueRtcToken")
        .collect()
}

/// The serial of the certificate the server presents to a new handshake,
/// as `x509-parser` prints it (`01:02`), read with a bare rustls client.
async fn served_serial(addr: std::net::SocketAddr, ca: &Ca, client: &Leaf) -> String {
    handshake(
        addr,
        ca,
        client,
        &[&rustls::version::TLS13, &rustls::version::TLS12],
    )
    .await
    .serial
}

/// What a bare rustls client's handshake with the server negotiated.
struct Negotiated {
    serial: String,
    version: Option<rustls::ProtocolVersion>,
    alpn: Option<Vec<u8>>,
}

/// A handshake offering `versions` and ALPN `h2`, presenting `client`.
async fn handshake(
    addr: std::net::SocketAddr,
    ca: &Ca,
    client: &Leaf,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> Negotiated {
    use rustls::pki_types::pem::PemObject as _;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(ca.pem().as_bytes()).unwrap())
        .unwrap();
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(
            vec![CertificateDer::from_pem_slice(client.cert.as_bytes()).unwrap()],
            PrivateKeyDer::from_pem_slice(client.key.as_bytes()).unwrap(),
        )
        .unwrap();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let stream = connector
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    let session = stream.get_ref().1;
    let version = session.protocol_version();
    let alpn = session.alpn_protocol().map(<[u8]>::to_vec);
    let leaf = session.peer_certificates().unwrap()[0].clone();
    let (_, cert) =
        <x509_parser::certificate::X509Certificate<'_> as x509_parser::prelude::FromDer<'_, _>>::from_der(
            leaf.as_ref(),
        )
        .unwrap();
    Negotiated {
        serial: cert.raw_serial_as_string(),
        version,
        alpn,
    }
}

/// A sample of `/metrics`, 0 when absent.
async fn metric(server: &Running, sample: &str) -> f64 {
    let text = reqwest::get(format!("http://{}/metrics", server.admin))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|line| line.strip_prefix(sample)?.trim().parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test]
async fn mtls_clients_call_and_their_spiffe_id_is_audited() {
    let (jwks, es256, _rs256) = test_keys().await;
    let ca = Ca::new("tokengate test CA");
    let files = Files::new(&ca.server(1), &ca);
    let server = Running::start_config(&config(&jwks.jwks_url(), &files, Some("required")));
    server.wait_ready().await;
    let addr = server.grpc_addr();
    let jwt = es256.mint(&TestServer::claims("alice", json!({})));
    let backend = ca.client(BACKEND_SPIFFE_ID);

    let channel = tls_channel(addr, &ca, Some(&backend)).await.unwrap();
    let reply = issue(channel, &jwt).await.unwrap();
    assert!(reply.issued.is_some(), "{reply:?}");
    let events = audit_events_at_least(&server, 1).await;
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0]["peer_identity"], BACKEND_SPIFFE_ID, "{events:?}");
    assert_eq!(events[0]["decision"], "allow");
    // TLS 1.3 and 1.2 are both served, each with ALPN h2.
    for (versions, want) in [
        (
            &[&rustls::version::TLS13][..],
            rustls::ProtocolVersion::TLSv1_3,
        ),
        (
            &[&rustls::version::TLS12][..],
            rustls::ProtocolVersion::TLSv1_2,
        ),
    ] {
        let negotiated = handshake(addr, &ca, &backend, versions).await;
        assert_eq!(negotiated.version, Some(want));
        assert_eq!(negotiated.alpn.as_deref(), Some(&b"h2"[..]));
        assert_eq!(negotiated.serial, "01");
    }

    // Required: no client certificate, or one from another CA, fails the handshake.
    let other = Ca::new("another CA");
    let stranger = other.client("spiffe://elsewhere.example/ns/x/sa/y");
    for (what, identity) in [("no certificate", None), ("another CA", Some(&stranger))] {
        let refused = match tls_channel(addr, &ca, identity).await {
            Err(error) => format!("{error:?}"),
            Ok(channel) => match issue(channel, &jwt).await {
                // TLS 1.3: the client learns of the refusal from the
                // server's alert after its own handshake is done, on the
                // first call, as a transport error (UNKNOWN, UNAVAILABLE or
                // CANCELLED, as the alert and the close race); never a
                // refusal of the pipeline, which carries a request id.
                Err(status) => {
                    assert!(
                        status.metadata().get("x-request-id").is_none()
                            && matches!(
                                status.code(),
                                tonic::Code::Unavailable
                                    | tonic::Code::Unknown
                                    | tonic::Code::Cancelled
                            ),
                        "{what}: {status:?}"
                    );
                    format!("{status:?}")
                }
                Ok(reply) => panic!("{what}: a call succeeded: {reply:?}"),
            },
        };
        assert!(!refused.is_empty(), "{what}");
    }
    // The refused handshakes never reached the pipeline.
    assert_eq!(audit_events(&server).len(), 1);
    // A client that does not trust the server's CA refuses it too.
    assert!(
        match tls_channel(addr, &other, Some(&backend)).await {
            Err(_) => true,
            Ok(channel) => issue(channel, &jwt).await.is_err(),
        },
        "a client trusting another CA accepted the server"
    );

    // Plaintext against the TLS port fails clearly: an HTTP/2 GOAWAY that
    // says so, never a reply.
    let plaintext = Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await;
    let refusal = match plaintext {
        Err(error) => format!("{error:?}"),
        Ok(channel) => format!("{:?}", issue(channel, &jwt).await.unwrap_err()),
    };
    assert!(refusal.contains("this port requires TLS"), "{refusal}");
    let run = grpcurl_async(vec![
        "-plaintext".into(),
        "-max-time".into(),
        "5".into(),
        addr.to_string(),
        "list".into(),
    ])
    .await;
    assert_ne!(run.code, Some(0), "{run:?}");
    // grpc-go (grpcurl 1.8.6) reports a closed connection or gives up
    // retrying, as the GOAWAY and the close race; it never gets an answer.
    assert_eq!(audit_events(&server).len(), 1);
}

#[tokio::test]
async fn optional_client_certificates_and_plain_tls() {
    let (jwks, es256, _rs256) = test_keys().await;
    let ca = Ca::new("tokengate test CA");
    let files = Files::new(&ca.server(7), &ca);
    let server = Running::start_config(&config(&jwks.jwks_url(), &files, Some("optional")));
    server.wait_ready().await;
    let addr = server.grpc_addr();
    let jwt = es256.mint(&TestServer::claims("bob", json!({})));

    // Without a certificate: served, with no peer identity.
    let channel = tls_channel(addr, &ca, None).await.unwrap();
    issue(channel, &jwt).await.unwrap();
    // With one: served, and its SPIFFE ID audited.
    let channel = tls_channel(addr, &ca, Some(&ca.client(BACKEND_SPIFFE_ID)))
        .await
        .unwrap();
    issue(channel, &jwt).await.unwrap();
    let events = audit_events_at_least(&server, 2).await;
    assert_eq!(events.len(), 2, "{events:?}");
    assert_eq!(events[0]["peer_identity"], Value::Null, "{events:?}");
    assert_eq!(events[1]["peer_identity"], BACKEND_SPIFFE_ID, "{events:?}");
    // Optional still verifies: a certificate from another CA is refused.
    let other = Ca::new("another CA");
    let stranger = other.client("spiffe://elsewhere.example/ns/x/sa/y");
    let refused = match tls_channel(addr, &ca, Some(&stranger)).await {
        Err(_) => true,
        Ok(channel) => issue(channel, &jwt).await.is_err(),
    };
    assert!(refused, "a certificate from another CA was accepted");
    assert_eq!(audit_events(&server).len(), 2);
}

#[tokio::test]
async fn grpcurl_and_python_call_over_mtls() {
    let (jwks, es256, _rs256) = test_keys().await;
    let ca = Ca::new("tokengate test CA");
    let files = Files::new(&ca.server(3), &ca);
    let server = Running::start_config(&config(&jwks.jwks_url(), &files, Some("required")));
    server.wait_ready().await;
    let addr = server.grpc_addr();
    let jwt = es256.mint(&TestServer::claims("carol", json!({})));
    let client = client_files(&ca, &ca.client(BACKEND_SPIFFE_ID));
    let tls_args = |with_cert: bool| {
        let mut args = vec![
            "-cacert".to_owned(),
            client.ca.display().to_string(),
            "-max-time".into(),
            "20".into(),
        ];
        if with_cert {
            args.extend([
                "-cert".to_owned(),
                client.cert.display().to_string(),
                "-key".into(),
                client.key.display().to_string(),
            ]);
        }
        args
    };

    let mut args = tls_args(true);
    args.extend([
        "-H".to_owned(),
        format!("authorization: Bearer {jwt}"),
        "-d".into(),
        json!({"channel": "room-1", "role": "ROLE_SUBSCRIBER"}).to_string(),
        addr.to_string(),
        "tokengate.v1.TokenService/IssueRtcToken".into(),
    ]);
    let done = grpcurl_async(args).await;
    let reply: Value = serde_json::from_str(done.success()).unwrap();
    assert!(
        reply["issued"]["token"]
            .as_str()
            .is_some_and(|t| t.starts_with("007")),
        "{reply}"
    );
    // Without -cert the required client certificate is missing: refused.
    let mut args = tls_args(false);
    args.extend([addr.to_string(), "list".to_owned()]);
    let refused = grpcurl_async(args).await;
    assert_ne!(refused.code, Some(0), "{refused:?}");

    // Python grpcio with ssl_channel_credentials.
    let python = |with_cert: bool| {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/client.py");
        let mut command = Command::new(python_path());
        command
            .arg(script)
            .arg(addr.to_string())
            .arg("IssueRtcToken")
            .arg(json!({"channel": "room-1", "role": "ROLE_SUBSCRIBER"}).to_string())
            .env("TOKENGATE_JWT", &jwt)
            .env("TOKENGATE_TLS_CA", &client.ca);
        if with_cert {
            command
                .env("TOKENGATE_TLS_CERT", &client.cert)
                .env("TOKENGATE_TLS_KEY", &client.key);
        }
        command
    };
    let mut command = python(true);
    let out = blocking(move || run(&mut command)).await;
    let reply: Value = serde_json::from_str(out.success())
        .unwrap_or_else(|e| panic!("client.py printed no JSON ({e}): {out:#?}"));
    assert_eq!(reply["ok"], true, "{reply}");
    assert!(
        reply["response"]["issued"]["token"]
            .as_str()
            .is_some_and(|t| t.starts_with("007")),
        "{reply}"
    );
    let mut command = python(false);
    let out = blocking(move || run(&mut command)).await;
    let reply: Value = serde_json::from_str(out.success())
        .unwrap_or_else(|e| panic!("client.py printed no JSON ({e}): {out:#?}"));
    assert_eq!(reply["code"], "UNAVAILABLE", "{reply}");
    let events = audit_events_at_least(&server, 2).await;
    assert_eq!(events.len(), 2, "{events:?}");
    assert!(
        events
            .iter()
            .all(|event| event["peer_identity"] == BACKEND_SPIFFE_ID),
        "{events:?}"
    );
}

#[tokio::test]
async fn a_rotated_certificate_serves_new_handshakes_and_no_call_fails() {
    let (jwks, es256, _rs256) = test_keys().await;
    let ca = Ca::new("tokengate test CA");
    let mut files = Files::new(&ca.server(0x1001), &ca);
    let server = Running::start_config(&config(&jwks.jwks_url(), &files, Some("required")));
    server.wait_ready().await;
    let addr = server.grpc_addr();
    let jwt = es256.mint(&TestServer::claims("dave", json!({})));
    let backend = ca.client(BACKEND_SPIFFE_ID);
    assert_eq!(served_serial(addr, &ca, &backend).await, "10:01");
    let expiry = metric(
        &server,
        "tokengate_tls_certificate_expiry_timestamp_seconds{port=\"grpc\"}",
    )
    .await;
    assert!(expiry > support::unix_now() as f64, "{expiry}");

    // A client keeps calling: on one long-lived connection, and on a new
    // connection (a new handshake) for every other call.
    let stop = Arc::new(AtomicBool::new(false));
    let calls = Arc::new(AtomicUsize::new(0));
    let kept = tls_channel(addr, &ca, Some(&backend)).await.unwrap();
    let caller = {
        let (stop, calls, jwt) = (Arc::clone(&stop), Arc::clone(&calls), jwt.clone());
        let ca_pem = ca.pem();
        let identity = Identity::from_pem(&backend.cert, &backend.key);
        tokio::spawn(async move {
            let mut failures = Vec::new();
            while !stop.load(Ordering::SeqCst) {
                if let Err(status) = issue(kept.clone(), &jwt).await {
                    failures.push(format!("long-lived: {status:?}"));
                }
                let tls = ClientTlsConfig::new()
                    .ca_certificate(Certificate::from_pem(&ca_pem))
                    .identity(identity.clone())
                    .domain_name("localhost");
                let fresh = Channel::from_shared(format!("https://{addr}"))
                    .unwrap()
                    .tls_config(tls)
                    .unwrap()
                    .connect()
                    .await;
                match fresh {
                    Ok(channel) => {
                        if let Err(status) = issue(channel, &jwt).await {
                            failures.push(format!("new connection: {status:?}"));
                        }
                    }
                    Err(error) => failures.push(format!("connect: {error:?}")),
                }
                calls.fetch_add(2, Ordering::SeqCst);
            }
            failures
        })
    };
    while calls.load(Ordering::SeqCst) < 10 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Rotate as Kubernetes does: a new folder, `..data` swapped.
    let next = ca.server(0x2002);
    files.rotate(&next.cert, &next.key, &ca.pem());
    let mut rotated = false;
    for _ in 0..200 {
        if served_serial(addr, &ca, &backend).await == "20:02" {
            rotated = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(rotated, "the new certificate was never served");
    assert_eq!(
        metric(&server, "tokengate_tls_reloads_total{result=\"ok\"}").await,
        1.0
    );

    // A bad new file (a key that is not the certificate's) keeps the old pair.
    let before = calls.load(Ordering::SeqCst);
    let stray = ca.server(0x3003);
    files.rotate(&stray.cert, &next.key, &ca.pem());
    let mut counted = false;
    for _ in 0..200 {
        if metric(&server, "tokengate_tls_reloads_total{result=\"error\"}").await == 1.0 {
            counted = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(counted, "the bad files were not counted");
    assert_eq!(served_serial(addr, &ca, &backend).await, "20:02");
    while calls.load(Ordering::SeqCst) < before + 10 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.store(true, Ordering::SeqCst);
    let failures = caller.await.unwrap();
    assert!(failures.is_empty(), "calls failed: {failures:#?}");
    assert!(calls.load(Ordering::SeqCst) >= 20);
    let logs = server.logs().join("\n");
    assert!(
        logs.contains("still serving the previous certificate")
            && logs.contains("does not match the certificate"),
        "{logs}"
    );
    // The bad files are reported once, not at every poll.
    assert_eq!(
        metric(&server, "tokengate_tls_reloads_total{result=\"error\"}").await,
        1.0
    );
}

/// `tokengate check-config` on `text`, with the test certificates' environment.
fn check_config(text: &str) -> (bool, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tokengate.toml");
    std::fs::write(&path, text).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_tokengate"))
        .arg("check-config")
        .arg(&path)
        .env("TEST_PRIMARY_CERT", support::server::PRIMARY_CERT)
        .env("TEST_SECONDARY_CERT", support::server::SECONDARY_CERT)
        .output()
        .unwrap();
    let code_64 = out.status.code() == Some(64);
    assert!(out.status.success() || code_64, "{out:?}");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A server certificate valid until `not_after_unix`.
fn expiring(ca: &Ca, not_after_unix: u64) -> Leaf {
    let mut params = CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
    params.not_before = rcgen::date_time_ymd(2020, 1, 1);
    params.not_after = rcgen::date_time_ymd(1970, 1, 1) + Duration::from_secs(not_after_unix);
    ca.sign(&params)
}

#[test]
fn check_config_checks_the_tls_files_and_warns_before_expiry() {
    let ca = Ca::new("tokengate test CA");
    let server = ca.server(5);
    let files = Files::new(&server, &ca);
    let base = config_text("https://idp.test.example/jwks", ROOMS);

    let (ok, out, err) = check_config(&(base.clone() + &files.section(Some("required"))));
    assert!(ok, "{out}{err}");
    assert!(out.contains("tls: ") && out.contains("serial 05"), "{out}");
    assert!(out.contains("mtls: client certificates required"), "{out}");
    assert!(!out.contains("expires in"), "{out}");

    // Refusals name the key, exit 64.
    let cases = [
        (
            files.section(None).replace("tls.key", "ca.crt"),
            "server.tls.key_file",
        ),
        (
            files.section(None).replace("tls.crt", "tls.key"),
            "server.tls.cert_file",
        ),
        (
            files
                .section(Some("required"))
                .replace("ca.crt\"", "tls.key\""),
            "server.tls.client_ca_file",
        ),
        (
            files.section(None) + "client_auth = \"optional\"\n",
            "server.tls.client_auth",
        ),
        (
            files.section(None).replace("100ms", "0s"),
            "server.tls.reload_interval",
        ),
        (files.section(None) + "bogus = 1\n", "server.tls.bogus"),
    ];
    for (section, key) in cases {
        let (ok, out, err) = check_config(&(base.clone() + &section));
        assert!(!ok, "{section}: {out}");
        assert!(err.contains(key), "{section}: {err}");
    }
    // A key that is not the certificate's.
    let mut mismatched = Files::new(&server, &ca);
    let other = ca.server(6);
    mismatched.rotate(&server.cert, &other.key, &ca.pem());
    let (ok, _, err) = check_config(&(base.clone() + &mismatched.section(None)));
    assert!(!ok);
    assert!(
        err.contains("server.tls.key_file") && err.contains("does not match the certificate"),
        "{err}"
    );

    // Expiring within 7 days, or expired: a warning, exit 0.
    let now = support::unix_now();
    for (not_after, words) in [(now + 3 * 86_400, "expires in"), (now - 86_400, "expired")] {
        let leaf = expiring(&ca, not_after);
        let mut soon = Files::new(&leaf, &ca);
        soon.rotate(&leaf.cert, &leaf.key, &ca.pem());
        let (ok, out, err) = check_config(&(base.clone() + &soon.section(None)));
        assert!(ok, "{out}{err}");
        assert!(
            out.lines()
                .any(|l| l.starts_with("warning: server.tls.cert_file") && l.contains(words)),
            "{out}"
        );
    }
}

#[tokio::test]
async fn a_stalled_handshake_holds_its_slot_only_until_the_header_read_timeout() {
    let (jwks, es256, _rs256) = test_keys().await;
    let ca = Ca::new("tokengate test CA");
    let files = Files::new(&ca.server(9), &ca);
    let text = config(&jwks.jwks_url(), &files, None).replacen(
        "[server]\n",
        "[limits]\nmax_connections = 1\nheader_read_timeout = \"1s\"\n\n[server]\n",
        1,
    );
    let server = Running::start_config(&text);
    server.wait_ready().await;
    let addr = server.grpc_addr();
    let jwt = es256.mint(&TestServer::claims("erin", json!({})));

    // A peer that opens TCP and never sends its ClientHello takes the one
    // slot: the cap counts it before any handshake, so a TLS client is
    // turned away meanwhile.
    let mut stalled = tokio::net::TcpStream::connect(addr).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let turned_away = match tls_channel(addr, &ca, None).await {
        Err(_) => true,
        Ok(channel) => issue(channel, &jwt).await.is_err(),
    };
    assert!(
        turned_away,
        "a second connection was served over max_connections = 1"
    );
    // The stalled peer is closed once its header read timeout is over (the
    // bound here is generous; without the timeout it would wait forever).
    let mut byte = [0u8; 1];
    let closed = tokio::time::timeout(
        Duration::from_secs(20),
        tokio::io::AsyncReadExt::read(&mut stalled, &mut byte),
    )
    .await;
    assert!(
        matches!(closed, Ok(Ok(0)) | Ok(Err(_))),
        "the stalled handshake was not closed: {closed:?}"
    );
    // Its slot is free again: a TLS client is served.
    let mut served = false;
    for _ in 0..100 {
        if let Ok(channel) = tls_channel(addr, &ca, None).await
            && issue(channel, &jwt).await.is_ok()
        {
            served = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(served, "the slot was never freed");
}

/// Waits (10 s at most) for the "config reloaded" log event whose `tls` field is `tls`.
async fn reloaded_with_tls(server: &Running, tls: &str) -> Value {
    let wanted = |line: &str| {
        serde_json::from_str::<Value>(line)
            .is_ok_and(|e| e["message"] == "config reloaded" && e["tls"] == tls)
    };
    server.logs_once(wanted).await;
    let line = server
        .logs()
        .into_iter()
        .find(|line| wanted(line))
        .unwrap_or_else(|| panic!("no reload with tls = {tls:?}; logs: {:#?}", server.logs()));
    serde_json::from_str(&line).unwrap()
}

#[tokio::test]
async fn a_config_reload_rereads_the_tls_files_and_applies_new_tls_settings() {
    let (jwks, es256, _rs256) = test_keys().await;
    let ca = Ca::new("tokengate test CA");
    let mut files = Files::new(&ca.server(0x1001), &ca);
    // The poll is an hour apart: only the config reload can see the rotation.
    let hourly = |files: &Files, mtls| {
        config(&jwks.jwks_url(), files, Some(mtls)).replacen(
            "reload_interval = \"100ms\"",
            "reload_interval = \"1h\"",
            1,
        )
    };
    let server = Running::start_config(&hourly(&files, "required"));
    server.wait_ready().await;
    let addr = server.grpc_addr();
    let backend = ca.client(BACKEND_SPIFFE_ID);
    assert_eq!(served_serial(addr, &ca, &backend).await, "10:01");

    // The `..data` swap is a change of a file the config names: the reload
    // re-reads the PEM files through the running acceptor.
    let next = ca.server(0x2002);
    files.rotate(&next.cert, &next.key, &ca.pem());
    reloaded_with_tls(&server, "files re-read").await;
    assert_eq!(served_serial(addr, &ca, &backend).await, "20:02");
    assert_eq!(
        metric(&server, "tokengate_tls_reloads_total{result=\"ok\"}").await,
        1.0
    );

    // Client certificates turned optional by a reload: a client without one
    // is served from the next handshake on.
    let jwt = es256.mint(&TestServer::claims("erin", json!({})));
    assert!(
        match tls_channel(addr, &ca, None).await {
            Ok(channel) => issue(channel, &jwt).await.is_err(),
            Err(_) => true,
        },
        "a client without a certificate was served while they were required"
    );
    let optional = hourly(&files, "optional");
    let temporary = server.config_path().with_extension("new");
    std::fs::write(&temporary, &optional).unwrap();
    std::fs::rename(&temporary, server.config_path()).unwrap();
    reloaded_with_tls(&server, "settings applied").await;
    let channel = tls_channel(addr, &ca, None).await.unwrap();
    issue(channel, &jwt).await.unwrap();
}
