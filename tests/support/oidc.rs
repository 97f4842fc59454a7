//! Launches the real OpenID provider (npm `oidc-provider`, `idp.mjs`) on loopback.
//!
//! The script is copied next to the tools' `node_modules` because Node's ESM
//! loader ignores `NODE_PATH`. The process is killed when the handle drops.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::Value;

use super::tools_dir;

/// A running oidc-provider.
pub struct OidcProvider {
    child: Child,
    /// The issuer URL (`http://127.0.0.1:<port>`), also its `iss`.
    pub issuer: String,
    /// The port it listens on.
    pub port: u16,
    /// The algorithm its access tokens are signed with.
    pub alg: String,
}

/// Counts script copies, to name the staging files uniquely.
static COPIES: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// The audience of access tokens for the default resource.
pub const AUDIENCE: &str = "agora-token-service";

impl OidcProvider {
    /// Starts a provider signing access tokens with `alg` (RS256, PS256, ES256 or EdDSA).
    pub async fn start(alg: &str) -> Self {
        Self::start_with(alg, 0, "1").await
    }

    /// Starts on `port` (0 = any) with kids suffixed `kid_suffix`; a restart
    /// with a new suffix is a rotation to new keys under new kids.
    pub async fn start_with(alg: &str, port: u16, kid_suffix: &str) -> Self {
        let node_dir = tools_dir().join("node");
        let provider_pkg = node_dir.join("node_modules/oidc-provider/package.json");
        assert!(
            provider_pkg.is_file(),
            "oidc-provider is not installed at {}: run `bash .ci/setup` (or set TOKENGATE_TOOLS)",
            provider_pkg.display()
        );
        let script = node_dir.join("tokengate-idp.mjs");
        // Tests start providers concurrently: write a private copy, then
        // rename it into place atomically so node never reads half a file.
        let staging = node_dir.join(format!(
            "tokengate-idp.mjs.{}-{}",
            std::process::id(),
            COPIES.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
        ));
        std::fs::copy(support_file("idp.mjs"), &staging).unwrap();
        std::fs::rename(&staging, &script).unwrap();
        let mut child = Command::new("node")
            .arg(&script)
            .current_dir(&node_dir)
            .env("ALG", alg)
            .env("PORT", port.to_string())
            .env("KID_SUFFIX", kid_suffix)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run node (needed for oidc-provider): {e}"));
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = rx.recv_timeout(Duration::from_secs(60)).unwrap_or_default();
        let Ok(ready) = serde_json::from_str::<Value>(&line) else {
            let _ = child.kill();
            panic!("oidc-provider did not start (stdout: {line:?})");
        };
        let provider = Self {
            child,
            issuer: ready["issuer"].as_str().unwrap().to_owned(),
            port: u16::try_from(ready["port"].as_u64().unwrap()).unwrap(),
            alg: alg.to_owned(),
        };
        provider.wait_for_discovery().await;
        provider
    }

    /// The discovery URL.
    pub fn discovery_url(&self) -> String {
        format!("{}/.well-known/openid-configuration", self.issuer)
    }

    /// An access token (a JWT) for the default resource, via client credentials.
    pub async fn token(&self) -> String {
        self.token_for(None).await
    }

    /// An access token for `resource` (e.g. `urn:other-service` for another audience).
    pub async fn token_for(&self, resource: Option<&str>) -> String {
        let mut form = vec![("grant_type", "client_credentials"), ("scope", "rtc:token")];
        if let Some(resource) = resource {
            form.push(("resource", resource));
        }
        let body = form
            .iter()
            .map(|(k, v)| format!("{k}={}", v.replace(':', "%3A")))
            .collect::<Vec<_>>()
            .join("&");
        let response = reqwest::Client::new()
            .post(format!("{}/token", self.issuer))
            .basic_auth("agora-caller", Some("agora-caller-secret"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body)
            .send()
            .await
            .unwrap();
        let status = response.status();
        let text = response.text().await.unwrap();
        assert!(
            status.is_success(),
            "token endpoint answered {status}: {text}"
        );
        let json: Value = serde_json::from_str(&text).unwrap();
        json["access_token"].as_str().unwrap().to_owned()
    }

    /// Stops the provider and waits for the process to exit.
    pub fn stop(mut self) -> u16 {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.port
    }

    async fn wait_for_discovery(&self) {
        let client = reqwest::Client::new();
        for _ in 0..200 {
            if let Ok(r) = client.get(self.discovery_url()).send().await
                && r.status().is_success()
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!(
            "oidc-provider discovery never answered at {}",
            self.discovery_url()
        );
    }
}

impl Drop for OidcProvider {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A file under `tests/support/`.
fn support_file(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/support")
        .join(name)
}
