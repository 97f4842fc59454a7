//! `[forward_auth]` as written, and its validation into
//! `forward_auth::ForwardAuthSettings`: off by default; when on, it needs
//! `[ext_authz]` (its routes are the ones forward-auth matches), names the
//! proxy in front (`original_request`, no default: the headers it trusts
//! are the operator's choice) and listens on an address of its own.

use std::net::SocketAddr;

use serde::Deserialize;

use super::ConfigError;
use crate::forward_auth::{ForwardAuthSettings, OriginalRequest};

/// `[forward_auth]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct ForwardAuthSection {
    /// Whether the listener runs.
    pub enabled: bool,
    /// Its address.
    pub listen: SocketAddr,
    /// The path checks are sent to; `/` takes any.
    pub path_prefix: String,
    /// `x-original` (nginx), `x-forwarded` (Caddy, Traefik, HAProxy) or
    /// `path` (Envoy and Istio HTTP ext_authz).
    pub original_request: Option<String>,
    /// The most open connections.
    pub max_connections: usize,
}

impl Default for ForwardAuthSection {
    fn default() -> Self {
        Self {
            enabled: false,
            listen: SocketAddr::from(([0, 0, 0, 0], 9191)),
            path_prefix: "/".to_owned(),
            original_request: None,
            max_connections: 1000,
        }
    }
}

/// The most connections `max_connections` may allow (the gRPC port's bound).
const MAX_CONNECTIONS: usize = 1_000_000;

/// The validated settings, when enabled. `ext_authz_on` says whether
/// `[ext_authz]` is enabled; `taken` lists the other listen addresses.
pub(super) fn resolve(
    section: &ForwardAuthSection,
    ext_authz_on: bool,
    taken: &[(&str, SocketAddr)],
) -> Result<Option<ForwardAuthSettings>, ConfigError> {
    let invalid = |key: &str, message: String| ConfigError::Invalid {
        key: format!("forward_auth.{key}"),
        message,
    };
    if !section.enabled {
        return Ok(None);
    }
    if !ext_authz_on {
        return Err(invalid(
            "enabled",
            "needs [ext_authz] enabled: forward-auth checks match its [[ext_authz.routes]]"
                .to_owned(),
        ));
    }
    let Some(mode) = &section.original_request else {
        return Err(invalid(
            "original_request",
            "is required: x-original (nginx auth_request), x-forwarded (Caddy forward_auth, Traefik ForwardAuth, HAProxy) or path (Envoy or Istio HTTP ext_authz); it says which headers are trusted".to_owned(),
        ));
    };
    let Some(mode) = OriginalRequest::parse(mode) else {
        return Err(invalid(
            "original_request",
            format!("unknown value {mode:?}: use x-original, x-forwarded or path"),
        ));
    };
    if mode == OriginalRequest::Path && section.path_prefix == "/" {
        return Err(invalid(
            "path_prefix",
            "must be set with original_request = \"path\" (Envoy's path_prefix, e.g. /check), so the original path can be told from the check's own".to_owned(),
        ));
    }
    if section.max_connections > MAX_CONNECTIONS {
        return Err(invalid(
            "max_connections",
            format!("must be at most {MAX_CONNECTIONS}"),
        ));
    }
    for (key, addr) in taken {
        if addr.port() != 0 && *addr == section.listen {
            return Err(invalid("listen", format!("must differ from {key}")));
        }
    }
    ForwardAuthSettings::new(
        section.listen,
        &section.path_prefix,
        mode,
        section.max_connections,
    )
    .map(Some)
    .map_err(|e| invalid(e.key, e.message))
}
