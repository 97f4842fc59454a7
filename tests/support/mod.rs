//! Shared helpers for integration tests: `mod support;` from any test file.
//!
//! * [`keys`]: RS256/PS256/ES256/EdDSA test keys generated in-process, their
//!   public JWKs, and `mint(claims, key)` / `TestKey::mint` for JWTs.
//! * [`jwks_server`]: a controllable JWKS + discovery server on `127.0.0.1:0`.
//! * [`fact_server`]: a scriptable HTTP JSON service on `127.0.0.1:0` for
//!   HTTP facts (`FactServer::start`, `respond(path, Reply::json(..))`,
//!   recorded requests, delays, huge streamed bodies, stop / restart).
//! * [`oidc`]: a real oidc-provider on loopback (`OidcProvider::start(alg)`).
//! * [`fixtures`]: the shared rule sets and request builders.
//! * [`calls`]: an RTC issue or explain call, a refusal's ErrorInfo, a bounded wait.
//! * [`server`]: the real server in process; [`binary`]: the real binary.
//! * [`redis`]: a real redis-server on loopback; [`postgres`]: a real
//!   PostgreSQL on loopback (`Postgres::start()`, `start_tls`, `sql`).
//! * [`certs`]: a CA and 127.0.0.1 server/client certificates for TLS tests.
//!
//! Not every test file uses every helper.
#![allow(dead_code, unused_imports)]

pub mod authz;
pub mod binary;
pub mod calls;
pub mod certs;
pub mod fact_server;
pub mod fixtures;
pub mod jwks_server;
pub mod keys;
pub mod oidc;
pub mod postgres;
pub mod proxies;
pub mod redis;
pub mod server;
pub mod tools;

use std::path::PathBuf;

pub use fact_server::{FactServer, Recorded, Reply};
pub use jwks_server::{JwksBody, JwksServer};
pub use keys::{TestKey, jwks, mint};
pub use oidc::OidcProvider;

/// The installed test tools: `$TOKENGATE_TOOLS`, else `<crate>/.tools`.
#[allow(clippy::disallowed_methods)] // The test tools' folder is the test runner's setting, not service config.
pub fn tools_dir() -> PathBuf {
    std::env::var_os("TOKENGATE_TOOLS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".tools"))
}

/// The current unix time in seconds, for tests that mint tokens "now".
#[allow(clippy::disallowed_methods)] // Tests stand in for the request handler, which supplies `now`.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}
