//! Certificates made for one test with rcgen: a CA, a server certificate for
//! 127.0.0.1 and `localhost`, client certificates naming a SPIFFE ID, the
//! `[server.tls]` files on disk, and tonic TLS channels presenting them.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, SanType};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

/// A certificate authority made for one test.
pub struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

/// A PEM certificate and its key.
pub struct Leaf {
    /// The PEM certificate.
    pub cert: String,
    /// The PEM private key.
    pub key: String,
}

/// A server certificate and the CA bundle in a temporary folder, for `[server.tls]`.
pub struct TlsFiles {
    dir: tempfile::TempDir,
}

impl Ca {
    /// A self-signed CA named `name`.
    pub fn new(name: &str) -> Self {
        let mut params = CertificateParams::default();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        Self { issuer }
    }

    /// The CA certificate, PEM.
    pub fn pem(&self) -> String {
        self.issuer.pem()
    }

    /// A certificate for the server on 127.0.0.1 and `localhost`.
    pub fn server(&self) -> Leaf {
        let mut params = CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
        params
            .subject_alt_names
            .push(SanType::IpAddress([127, 0, 0, 1].into()));
        params
            .distinguished_name
            .push(DnType::CommonName, "tokengate");
        self.sign(&params)
    }

    /// A client certificate naming `spiffe_id` as its URI SAN, and `dns` as its DNS SAN.
    pub fn client(&self, spiffe_id: &str, dns: &str) -> Leaf {
        let mut params = CertificateParams::default();
        params.subject_alt_names = vec![
            SanType::URI(spiffe_id.try_into().unwrap()),
            SanType::DnsName(dns.try_into().unwrap()),
        ];
        params.distinguished_name.push(DnType::CommonName, dns);
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

impl TlsFiles {
    /// Writes `ca`'s server certificate, its key and the CA bundle.
    pub fn new(ca: &Ca) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let server = ca.server();
        std::fs::write(dir.path().join("tls.crt"), &server.cert).unwrap();
        std::fs::write(dir.path().join("tls.key"), &server.key).unwrap();
        std::fs::write(dir.path().join("ca.crt"), ca.pem()).unwrap();
        Self { dir }
    }

    /// A file of the folder.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// `[server.tls]` with client certificates `mode` (`"required"` or `"optional"`).
    pub fn section(&self, mode: &str) -> String {
        format!(
            "\n[server.tls]\ncert_file = {:?}\nkey_file = {:?}\nclient_ca_file = {:?}\nclient_auth = {mode:?}\n",
            self.path("tls.crt"),
            self.path("tls.key"),
            self.path("ca.crt"),
        )
    }
}

/// A tonic channel over TLS to `addr`, trusting `ca`, presenting `identity`.
pub async fn tls_channel(addr: SocketAddr, ca: &Ca, identity: Option<&Leaf>) -> Channel {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca.pem()))
        .domain_name("localhost");
    if let Some(leaf) = identity {
        tls = tls.identity(Identity::from_pem(&leaf.cert, &leaf.key));
    }
    Channel::from_shared(format!("https://{addr}"))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .unwrap()
}
