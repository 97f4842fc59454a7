//! TLS on the gRPC port, with rustls on the aws-lc provider: the PEM files
//! (certificate chain, key, optional client CA bundle) loaded and checked
//! into a rustls `ServerConfig`, the acceptor every connection's handshake
//! goes through, the files re-read when they change, and the verified client
//! certificate's identity ([`PeerIdentity`]).
//!
//! `config` loads the files once ([`Material::load`]), so `check-config`
//! refuses what `serve` would: a chain that does not parse, a key that does
//! not match the certificate, a CA bundle with no usable certificate.
//! `serve` starts an [`Acceptor`] on that material.
//!
//! Rotation: every `reload_interval` the acceptor reads the three files
//! again through their paths and compares a SHA-256 of their contents with
//! the last one seen. Contents rather than mtimes, because Kubernetes
//! rotates a mounted Secret by swapping the `..data` symlink, which changes
//! no mtime of the paths the config names, and because a rewrite within one
//! second keeps the mtime; reading through the paths follows the new
//! symlink. When the contents changed and load, the whole `ServerConfig` is
//! swapped (one `ArcSwap` store): the next handshake uses the new chain,
//! key and CA bundle, open connections keep the session they negotiated. A
//! new set that does not load keeps the old one, logs the error once per
//! distinct content and counts it. The whole `ServerConfig` is swapped,
//! rather than only the key through a `ResolvesServerCert`, because the
//! client CA bundle lives in its verifier and rotates too (SPIRE rotates the
//! trust bundle with the SVID); a new config also starts an empty session
//! cache, so no session resumed after a rotation skips the new CA.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use arc_swap::ArcSwap;
use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::sign::{CertifiedKey, SingleCertAndKey};
use sha2::{Digest as _, Sha256};
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

use crate::domain::PeerIdentity;
use crate::metrics::Metrics;

/// The largest PEM file read: a chain or a CA bundle of many certificates fits.
const MAX_PEM_BYTES: u64 = 1 << 20;
/// The ALPN protocol offered: gRPC is HTTP/2 only.
const ALPN_H2: &[u8] = b"h2";
/// How far ahead an expiry is reported: `check-config` and the reloader warn within it.
pub const EXPIRY_WARNING_SECS: i64 = 7 * 24 * 3600;

/// A TLS file that cannot be used, naming which one and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}: {message}", path.display())]
pub struct TlsError {
    /// Which setting named the file: `cert_file`, `key_file` or `client_ca_file`.
    pub file: &'static str,
    /// The file.
    pub path: PathBuf,
    /// What is wrong with it.
    pub message: String,
}

/// Whether clients present certificates, and whether they must.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuth {
    /// No client certificates are asked for (plain TLS).
    None,
    /// Every client must present a certificate the CA bundle verifies.
    Required,
    /// A client may present one (then it must verify) or none.
    Optional,
}

/// Validated TLS settings: which files, and how clients authenticate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSettings {
    cert_file: PathBuf,
    key_file: PathBuf,
    /// With the client CA bundle when `client_auth` is not `None`.
    client_ca_file: Option<PathBuf>,
    client_auth: ClientAuth,
    reload_interval: Duration,
}

impl TlsSettings {
    /// Settings for these files; `client_ca_file` is `Some` exactly when
    /// `client_auth` is not [`ClientAuth::None`] (config checks it and names the key).
    pub fn new(
        cert_file: PathBuf,
        key_file: PathBuf,
        client_ca_file: Option<PathBuf>,
        client_auth: ClientAuth,
        reload_interval: Duration,
    ) -> Self {
        let client_auth = if client_ca_file.is_some() {
            client_auth
        } else {
            ClientAuth::None
        };
        Self {
            cert_file,
            key_file,
            client_ca_file,
            client_auth,
            reload_interval,
        }
    }

    /// The PEM certificate chain, end-entity first.
    pub fn cert_file(&self) -> &Path {
        &self.cert_file
    }

    /// The PEM private key.
    pub fn key_file(&self) -> &Path {
        &self.key_file
    }

    /// The PEM bundle of CAs that client certificates are verified against.
    pub fn client_ca_file(&self) -> Option<&Path> {
        self.client_ca_file.as_deref()
    }

    /// Whether client certificates are asked for, and required.
    pub fn client_auth(&self) -> ClientAuth {
        self.client_auth
    }

    /// How often the files are read again for a rotation.
    pub fn reload_interval(&self) -> Duration {
        self.reload_interval
    }
}

/// One loaded set of files: the rustls config they make, and what an
/// operator should know about the certificate.
#[derive(Debug, Clone)]
pub struct Material {
    config: Arc<ServerConfig>,
    /// The end-entity certificate's notAfter, unix seconds.
    not_after: i64,
    /// The end-entity certificate's serial, hex bytes separated by `:`.
    serial: String,
    /// The end-entity certificate's subject, for logs.
    subject: String,
    /// How many certificates the chain holds.
    chain_len: usize,
    /// How many CAs the client CA bundle holds (0 without mTLS).
    client_cas: usize,
    /// The SHA-256 of the files' contents: what the reloader compares.
    digest: [u8; 32],
}

impl Material {
    /// Reads and checks the files: the chain parses (every certificate of
    /// it), the key parses and matches the end-entity certificate, and the
    /// CA bundle holds at least one usable CA.
    pub fn load(settings: &TlsSettings) -> Result<Self, TlsError> {
        let files = Files::read(settings)?;
        Self::build(settings, &files)
    }

    fn build(settings: &TlsSettings, files: &Files) -> Result<Self, TlsError> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let cert_error = |message: String| TlsError {
            file: "cert_file",
            path: settings.cert_file.clone(),
            message,
        };
        let chain = pem_certificates(&files.cert).map_err(cert_error)?;
        let mut leaf = None;
        for (i, der) in chain.iter().enumerate() {
            let parsed = Certificate::parse(der)
                .map_err(|e| cert_error(format!("certificate {} of the chain: {e}", i + 1)))?;
            if i == 0 {
                leaf = Some(parsed);
            }
        }
        let leaf = leaf.ok_or_else(|| cert_error("holds no certificate".into()))?;
        let key_error = |message: String| TlsError {
            file: "key_file",
            path: settings.key_file.clone(),
            message,
        };
        let key = PrivateKeyDer::from_pem_slice(&files.key)
            .map_err(|e| key_error(format!("is not a PEM private key: {e}")))?;
        let certified = CertifiedKey::from_der(chain.clone(), key, &provider).map_err(|e| {
            key_error(match e {
                rustls::Error::InconsistentKeys(_) => format!(
                    "does not match the certificate in {}",
                    settings.cert_file.display()
                ),
                other => format!("is not a usable private key: {other}"),
            })
        })?;
        let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| cert_error(format!("TLS versions: {e}")))?;
        let mut client_cas = 0;
        let verifier = match (&settings.client_ca_file, &files.client_ca) {
            (Some(path), Some(bundle)) if settings.client_auth != ClientAuth::None => {
                let ca_error = |message: String| TlsError {
                    file: "client_ca_file",
                    path: path.clone(),
                    message,
                };
                let cas = pem_certificates(bundle).map_err(ca_error)?;
                let mut roots = rustls::RootCertStore::empty();
                for (i, der) in cas.into_iter().enumerate() {
                    Certificate::parse(&der)
                        .map_err(|e| ca_error(format!("certificate {}: {e}", i + 1)))?;
                    roots
                        .add(der)
                        .map_err(|e| ca_error(format!("certificate {}: {e}", i + 1)))?;
                    client_cas += 1;
                }
                let verifier =
                    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
                let verifier = if settings.client_auth == ClientAuth::Optional {
                    verifier.allow_unauthenticated()
                } else {
                    verifier
                };
                verifier
                    .build()
                    .map_err(|e| ca_error(format!("is not a usable CA bundle: {e}")))?
            }
            _ => WebPkiClientVerifier::no_client_auth(),
        };
        let mut config = builder
            .with_client_cert_verifier(verifier)
            .with_cert_resolver(Arc::new(SingleCertAndKey::from(certified)));
        config.alpn_protocols = vec![ALPN_H2.to_vec()];
        Ok(Self {
            config: Arc::new(config),
            not_after: leaf.not_after,
            serial: leaf.serial,
            subject: leaf.subject,
            chain_len: chain.len(),
            client_cas,
            digest: files.digest(),
        })
    }

    /// The end-entity certificate's notAfter, unix seconds.
    pub fn not_after(&self) -> i64 {
        self.not_after
    }

    /// The end-entity certificate's serial number (hex, `:`-separated).
    pub fn serial(&self) -> &str {
        &self.serial
    }

    /// The end-entity certificate's subject.
    pub fn subject(&self) -> &str {
        &self.subject
    }

    /// How many certificates the chain holds, end-entity included.
    pub fn chain_len(&self) -> usize {
        self.chain_len
    }

    /// How many CAs client certificates are verified against (0 without mTLS).
    pub fn client_cas(&self) -> usize {
        self.client_cas
    }

    /// A warning when the certificate has expired at `now` (unix seconds) or
    /// expires within [`EXPIRY_WARNING_SECS`]; `None` otherwise.
    pub fn expiry_warning(&self, now: u64) -> Option<String> {
        let now = i64::try_from(now).unwrap_or(i64::MAX);
        let left = self.not_after.saturating_sub(now);
        if left <= 0 {
            Some(format!(
                "the TLS certificate (serial {}) expired {} ago; clients will refuse it",
                self.serial,
                humantime::format_duration(Duration::from_secs(left.unsigned_abs()))
            ))
        } else if left < EXPIRY_WARNING_SECS {
            Some(format!(
                "the TLS certificate (serial {}) expires in {}",
                self.serial,
                humantime::format_duration(Duration::from_secs(left.unsigned_abs()))
            ))
        } else {
            None
        }
    }
}

/// The files' contents, read once per load.
struct Files {
    cert: Vec<u8>,
    key: Vec<u8>,
    client_ca: Option<Vec<u8>>,
}

impl Files {
    fn read(settings: &TlsSettings) -> Result<Self, TlsError> {
        let read = |file: &'static str, path: &Path| {
            read_bounded(path).map_err(|message| TlsError {
                file,
                path: path.to_path_buf(),
                message,
            })
        };
        Ok(Self {
            cert: read("cert_file", &settings.cert_file)?,
            key: read("key_file", &settings.key_file)?,
            client_ca: match &settings.client_ca_file {
                Some(path) => Some(read("client_ca_file", path)?),
                None => None,
            },
        })
    }

    /// One hash over the three contents, each length-prefixed so that no
    /// two different sets hash alike by moving bytes between files.
    fn digest(&self) -> [u8; 32] {
        let mut hash = Sha256::new();
        for part in [Some(&self.cert), Some(&self.key), self.client_ca.as_ref()] {
            match part {
                Some(bytes) => {
                    hash.update((bytes.len() as u64 + 1).to_be_bytes());
                    hash.update(bytes);
                }
                None => hash.update(0u64.to_be_bytes()),
            }
        }
        hash.finalize().into()
    }
}

/// Reads `path` (through its symlinks), refusing more than [`MAX_PEM_BYTES`].
fn read_bounded(path: &Path) -> Result<Vec<u8>, String> {
    use std::io::Read as _;
    let file = std::fs::File::open(path).map_err(|e| format!("cannot read: {e}"))?;
    let mut bytes = Vec::new();
    file.take(MAX_PEM_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("cannot read: {e}"))?;
    if bytes.len() as u64 > MAX_PEM_BYTES {
        return Err(format!("is larger than {MAX_PEM_BYTES} bytes"));
    }
    Ok(bytes)
}

/// Every `CERTIFICATE` block of a PEM file, at least one.
fn pem_certificates(bytes: &[u8]) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_slice_iter(bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("is not PEM: {e}"))?;
    if certs.is_empty() {
        return Err("holds no PEM CERTIFICATE block".into());
    }
    Ok(certs)
}

/// What tokengate reads of a certificate.
struct Certificate {
    not_after: i64,
    serial: String,
    subject: String,
    identity: PeerIdentity,
}

impl Certificate {
    fn parse(der: &[u8]) -> Result<Self, String> {
        use x509_parser::prelude::{FromDer as _, GeneralName, X509Certificate};
        let (rest, cert) =
            X509Certificate::from_der(der).map_err(|e| format!("not an X.509 certificate: {e}"))?;
        if !rest.is_empty() {
            return Err("trailing bytes after the certificate".into());
        }
        let names = cert
            .subject_alternative_name()
            .map_err(|e| format!("subjectAltName: {e}"))?
            .map(|ext| ext.value.general_names.clone())
            .unwrap_or_default();
        let uris: Vec<&str> = names
            .iter()
            .filter_map(|name| match name {
                GeneralName::URI(uri) => Some(*uri),
                _ => None,
            })
            .collect();
        let spiffe_id = match uris.as_slice() {
            [one] if one.starts_with("spiffe://") => Some((*one).to_owned()),
            _ => None,
        };
        let dns_names = names
            .iter()
            .filter_map(|name| match name {
                GeneralName::DNSName(dns) => Some((*dns).to_owned()),
                _ => None,
            })
            .collect();
        let subject = cert.subject().to_string();
        Ok(Self {
            not_after: cert.validity().not_after.timestamp(),
            serial: cert.raw_serial_as_string(),
            identity: PeerIdentity {
                spiffe_id,
                dns_names,
                subject: (!subject.is_empty()).then(|| subject.clone()),
            },
            subject,
        })
    }
}

/// The identity a verified client certificate names (`der` is the
/// end-entity certificate rustls verified); `None` if it does not parse.
pub fn peer_identity(der: &[u8]) -> Option<PeerIdentity> {
    Certificate::parse(der).ok().map(|cert| cert.identity)
}

/// The TLS side of the gRPC port: the current config, swapped on rotation.
#[derive(Debug, Clone)]
pub struct Acceptor {
    current: Arc<ArcSwap<ServerConfig>>,
    /// What the reloader task and a config reload ([`Acceptor::apply`]) share.
    shared: Arc<Mutex<Shared>>,
    /// Wakes the reloader task when a config reload hands it new settings.
    wake: Arc<tokio::sync::Notify>,
    /// Where a reload's new files are counted, as the reloader task counts its own.
    metrics: Option<Arc<Metrics>>,
}

/// The files in force and a config reload's hand-over to the reloader task.
///
/// Every store into `current` happens under this lock, so a poll of the
/// old files that finishes after a reload cannot overwrite the reload's set.
#[derive(Debug)]
struct Shared {
    /// The settings the files are read through.
    settings: TlsSettings,
    /// The SHA-256 of the contents being served.
    served: [u8; 32],
    /// Settings a reload applied, for the task to poll with from now on.
    pending: Option<TlsSettings>,
}

/// What [`Acceptor::apply`] changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Applied {
    /// The files' contents differ from those served: new handshakes use the new set.
    pub files: bool,
    /// The settings (paths, client CA, `client_auth`, `reload_interval`) differ.
    pub settings: bool,
}

impl Acceptor {
    /// Serves `material`, and re-reads `settings`' files every
    /// `reload_interval` until the acceptor is dropped. Must run in a tokio runtime.
    pub fn start(settings: TlsSettings, material: Material, metrics: Option<Arc<Metrics>>) -> Self {
        let current = Arc::new(ArcSwap::new(Arc::clone(&material.config)));
        if let Some(metrics) = &metrics {
            metrics.tls_loaded(material.not_after);
        }
        tracing::info!(
            serial = %material.serial,
            subject = %material.subject,
            not_after = material.not_after,
            client_auth = ?settings.client_auth,
            client_cas = material.client_cas,
            "serving TLS on the gRPC port"
        );
        warn_expiry(&material);
        let shared = Arc::new(Mutex::new(Shared {
            settings,
            served: material.digest,
            pending: None,
        }));
        let wake = Arc::new(tokio::sync::Notify::new());
        tokio::spawn(reload(
            Arc::clone(&shared),
            Arc::clone(&wake),
            Arc::downgrade(&current),
            metrics.clone(),
        ));
        Self {
            current,
            shared,
            wake,
            metrics,
        }
    }

    /// Serves `material` (loaded and checked by a config reload through
    /// `settings`) from the next handshake on, and re-reads the files
    /// through `settings` from now on: new paths, a new client CA or
    /// `client_auth` and a new `reload_interval` all apply without a restart.
    pub fn apply(&self, settings: TlsSettings, material: Material) -> Applied {
        let mut shared = lock(&self.shared);
        let applied = Applied {
            files: shared.served != material.digest,
            settings: shared.settings != settings,
        };
        if applied.files {
            // Whichever of the poll and the reload sees new contents first
            // counts them; the other finds them served already.
            announce(self.metrics.as_deref(), &material, "config reload");
        }
        self.current.store(Arc::clone(&material.config));
        shared.served = material.digest;
        shared.settings = settings.clone();
        shared.pending = Some(settings);
        drop(shared);
        self.wake.notify_one();
        applied
    }

    /// The TLS handshake on `stream` with the current config, and the
    /// identity of the client certificate it verified, if the client sent one.
    pub async fn accept(
        &self,
        stream: TcpStream,
    ) -> std::io::Result<(TlsStream<TcpStream>, Option<PeerIdentity>)> {
        let mut stream = stream;
        refuse_plaintext_http2(&mut stream).await?;
        let acceptor = TlsAcceptor::from(self.current.load_full());
        let stream = acceptor.accept(stream).await?;
        let identity = stream
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|chain| chain.first())
            .and_then(|leaf| peer_identity(leaf.as_ref()));
        Ok((stream, identity))
    }
}

/// The HTTP/2 client preface starts with these bytes; a TLS ClientHello with 0x16.
const HTTP2_PREFACE_START: &[u8] = b"PRI";
/// What a plaintext gRPC client is told, in an HTTP/2 GOAWAY's debug data.
const PLAINTEXT_REFUSAL: &[u8] = b"tokengate: this port requires TLS";

/// A plaintext HTTP/2 client on the TLS port would only see a TLS alert,
/// which its HTTP/2 stack reads as a malformed frame; it is answered in
/// its own protocol instead, an empty SETTINGS and a GOAWAY
/// (PROTOCOL_ERROR) whose debug data says that the port requires TLS, and
/// the connection is refused.
async fn refuse_plaintext_http2(stream: &mut TcpStream) -> std::io::Result<()> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut first = [0u8; 3];
    let read = stream.peek(&mut first).await?;
    if first[..read] != *HTTP2_PREFACE_START {
        return Ok(());
    }
    let mut frames = vec![0, 0, 0, 0x4, 0, 0, 0, 0, 0];
    let length = u32::try_from(8 + PLAINTEXT_REFUSAL.len()).unwrap_or(8);
    frames.extend_from_slice(&length.to_be_bytes()[1..]);
    // GOAWAY on stream 0: last stream 0, PROTOCOL_ERROR, the debug data.
    // Type, flags, stream id, last stream id, error code.
    frames.extend_from_slice(&[0x7, 0]);
    frames.extend_from_slice(&[0; 8]);
    frames.extend_from_slice(&1u32.to_be_bytes());
    frames.extend_from_slice(PLAINTEXT_REFUSAL);
    // Best effort: the connection is refused whether or not the client
    // reads it. What the client sent is read until it closes (a close with
    // unread data would reset the connection, and the client could lose the
    // GOAWAY); the caller's handshake timeout bounds it.
    if stream.write_all(&frames).await.is_ok() && stream.shutdown().await.is_ok() {
        let mut sink = [0u8; 1024];
        while matches!(stream.read(&mut sink).await, Ok(n) if n > 0) {}
    }
    Err(std::io::Error::new(
        std::io::ErrorKind::InvalidData,
        "a plaintext HTTP/2 client on the TLS port",
    ))
}

/// A new certificate is served: counted, logged (`by` says what noticed the
/// change: the poll or a config reload) and checked for its expiry.
fn announce(metrics: Option<&Metrics>, material: &Material, by: &'static str) {
    if let Some(metrics) = metrics {
        metrics.tls_reloaded(true);
        metrics.tls_loaded(material.not_after);
    }
    tracing::info!(
        serial = %material.serial,
        subject = %material.subject,
        not_after = material.not_after,
        by,
        "TLS files changed; new handshakes use the new certificate"
    );
    warn_expiry(material);
}

/// Logs a warning when the certificate expires within [`EXPIRY_WARNING_SECS`].
fn warn_expiry(material: &Material) {
    if let Some(warning) = material.expiry_warning(crate::entropy::unix_now()) {
        tracing::warn!(not_after = material.not_after, "{warning}");
    }
}

/// The shared state, even after a panic elsewhere held the lock: it holds
/// plain values that stay consistent.
fn lock(shared: &Mutex<Shared>) -> std::sync::MutexGuard<'_, Shared> {
    shared
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A fresh interval timer whose first tick is one `period` away.
fn interval(period: Duration) -> tokio::time::Interval {
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The first tick would be at once; the files were just read.
    tick.reset();
    tick
}

/// Polls the files every interval; swaps in a new set that loads, and
/// keeps the old one (logged once per distinct content, counted) when it
/// does not. A config reload's new settings wake it and take effect at once.
async fn reload(
    shared: Arc<Mutex<Shared>>,
    wake: Arc<tokio::sync::Notify>,
    current: Weak<ArcSwap<ServerConfig>>,
    metrics: Option<Arc<Metrics>>,
) {
    let (mut settings, mut seen) = {
        let shared = lock(&shared);
        (shared.settings.clone(), shared.served)
    };
    let mut tick = interval(settings.reload_interval);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = wake.notified() => {}
        }
        let Some(current) = current.upgrade() else {
            return;
        };
        {
            let mut state = lock(&shared);
            if let Some(applied) = state.pending.take() {
                if applied.reload_interval != settings.reload_interval {
                    tick = interval(applied.reload_interval);
                }
                settings = applied;
                seen = state.served;
                // The reload has just loaded these files; the next tick polls them.
                continue;
            }
        }
        let checked = settings.clone();
        let last = seen;
        // File reads and key parsing stay off the runtime's workers.
        let polled = tokio::task::spawn_blocking(move || poll(&checked, last)).await;
        match polled {
            Ok(Poll::Unchanged | Poll::Torn) | Err(_) => {}
            Ok(Poll::Unreadable(error)) => {
                // A file missing for a moment (mid-rotation) keeps the old set.
                failed(&metrics, &error, &mut seen, None);
            }
            Ok(Poll::Refused(digest, error)) => {
                failed(&metrics, &error, &mut seen, Some(digest));
            }
            Ok(Poll::Loaded(material)) => {
                let mut state = lock(&shared);
                if state.pending.is_some() {
                    // A config reload came in during the poll: its set
                    // wins, and the next round polls its settings.
                    wake.notify_one();
                    continue;
                }
                seen = material.digest;
                state.served = material.digest;
                current.store(Arc::clone(&material.config));
                drop(state);
                announce(metrics.as_deref(), &material, "poll");
            }
        }
    }
}

/// What one poll of the files found.
enum Poll {
    /// The contents in use.
    Unchanged,
    /// New contents that load.
    Loaded(Box<Material>),
    /// New contents that do not load, read the same twice.
    Refused([u8; 32], TlsError),
    /// New contents that do not load, but changed while being read: the
    /// files were read during a rotation; the next poll reads them again.
    Torn,
    /// A file could not be read.
    Unreadable(TlsError),
}

/// Reads the files and, when their contents differ from `seen`, loads them.
fn poll(settings: &TlsSettings, seen: [u8; 32]) -> Poll {
    let files = match Files::read(settings) {
        Ok(files) => files,
        Err(error) => return Poll::Unreadable(error),
    };
    let digest = files.digest();
    if digest == seen {
        return Poll::Unchanged;
    }
    match Material::build(settings, &files) {
        Ok(material) => Poll::Loaded(Box::new(material)),
        // The three files are read one after the other, so a rotation
        // between two reads pairs an old certificate with a new key: read
        // again, and count a failure only if the contents held still.
        Err(error) => match Files::read(settings) {
            Ok(again) if again.digest() == digest => Poll::Refused(digest, error),
            _ => Poll::Torn,
        },
    }
}

/// A reload that failed: counted and logged once per distinct content, the
/// old set kept.
fn failed(
    metrics: &Option<Arc<Metrics>>,
    error: &TlsError,
    seen: &mut [u8; 32],
    digest: Option<[u8; 32]>,
) {
    // The failed contents count as seen, so the same bad file is reported
    // once rather than every interval; an unreadable file has no digest,
    // and marks nothing seen so its return is noticed.
    let digest = digest.unwrap_or_else(|| {
        let mut hash = Sha256::new();
        hash.update(error.to_string().as_bytes());
        hash.finalize().into()
    });
    if digest == *seen {
        return;
    }
    *seen = digest;
    if let Some(metrics) = metrics {
        metrics.tls_reloaded(false);
    }
    tracing::error!(
        file = error.file,
        %error,
        "the new TLS files cannot be used; still serving the previous certificate"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_spiffe_id_is_the_single_uri_san() {
        let params = |sans: Vec<rcgen::SanType>| {
            let mut p = rcgen::CertificateParams::default();
            p.subject_alt_names = sans;
            p.distinguished_name = rcgen::DistinguishedName::new();
            p.distinguished_name
                .push(rcgen::DnType::CommonName, "workload");
            p
        };
        let key = rcgen::KeyPair::generate().unwrap();
        let uri = |s: &str| rcgen::SanType::URI(s.try_into().unwrap());
        let dns = |s: &str| rcgen::SanType::DnsName(s.try_into().unwrap());
        let one = params(vec![uri("spiffe://corp.example/ns/a/sa/b"), dns("b.a.svc")])
            .self_signed(&key)
            .unwrap();
        let identity = peer_identity(one.der()).unwrap();
        assert_eq!(
            identity.spiffe_id.as_deref(),
            Some("spiffe://corp.example/ns/a/sa/b")
        );
        assert_eq!(identity.dns_names, ["b.a.svc"]);
        assert_eq!(identity.subject.as_deref(), Some("CN=workload"));
        assert_eq!(
            identity.audit_name(),
            Some("spiffe://corp.example/ns/a/sa/b")
        );
        let two = params(vec![
            uri("spiffe://corp.example/a"),
            uri("spiffe://corp.example/b"),
        ])
        .self_signed(&key)
        .unwrap();
        assert_eq!(peer_identity(two.der()).unwrap().spiffe_id, None);
        let https = params(vec![uri("https://corp.example/a")])
            .self_signed(&key)
            .unwrap();
        let identity = peer_identity(https.der()).unwrap();
        assert_eq!(identity.spiffe_id, None);
        assert_eq!(identity.audit_name(), Some("CN=workload"));
    }
}
