//! What the server hands the metrics: the build, the methods it serves (so
//! that `grpc_server_*` labels stay bounded), and each issuer's key state
//! and the verified-JWT cache's size, read from the authenticator at scrape time.

use std::sync::Arc;

use arc_swap::ArcSwap;
use prost::Message as _;

use crate::grpc::pb;
use crate::identity::Freshness;
use crate::limits::Limiter;
use crate::metrics::{
    BuildInfo, FactsState, IssuerSnapshot, IssuerState, JwtCacheState, LimitsState, Method, Metrics,
};
use crate::pipeline::Live;

/// The build this binary is.
pub(super) const BUILD: BuildInfo = BuildInfo {
    version: env!("CARGO_PKG_VERSION"),
    git_sha: env!("TOKENGATE_GIT_SHA"),
    rustc: env!("TOKENGATE_RUSTC"),
};

/// The issuers' key state, read at each scrape from the authenticator of
/// the live snapshot (so a reload's new issuers are reported, and the old
/// authenticator is not kept alive by the metrics).
#[derive(Debug)]
struct Issuers(Arc<ArcSwap<Live>>, Arc<Limiter>);

/// The metrics of a server over the live snapshot's authenticator and the limiter.
pub(super) fn metrics(live: &Arc<ArcSwap<Live>>, limiter: &Arc<Limiter>) -> Arc<Metrics> {
    Metrics::new(
        &BUILD,
        Arc::new(Issuers(Arc::clone(live), Arc::clone(limiter))),
    )
}

/// Every method the gRPC port can serve, from the descriptor sets it serves
/// reflection from: the token service, ext_authz, health and reflection.
pub(super) fn served_methods() -> Vec<Method> {
    let sets = [
        pb::FILE_DESCRIPTOR_SET,
        pb::ENVOY_FILE_DESCRIPTOR_SET,
        tonic_health::pb::FILE_DESCRIPTOR_SET,
        tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET,
        tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
    ];
    let mut methods = Vec::new();
    for bytes in sets {
        // The sets are compiled in; one that does not decode only loses its labels.
        let Ok(set) = prost_types::FileDescriptorSet::decode(bytes) else {
            continue;
        };
        for file in &set.file {
            for service in &file.service {
                let full = match file.package() {
                    "" => service.name().to_owned(),
                    package => format!("{package}.{}", service.name()),
                };
                for method in &service.method {
                    let kind = match (method.client_streaming(), method.server_streaming()) {
                        (false, false) => "unary",
                        (true, false) => "client_stream",
                        (false, true) => "server_stream",
                        (true, true) => "bidi_stream",
                    };
                    methods.push(Method {
                        service: full.clone(),
                        method: method.name().to_owned(),
                        kind,
                    });
                }
            }
        }
    }
    methods
}

impl IssuerSnapshot for Issuers {
    fn issuers(&self) -> Vec<IssuerState> {
        let now = crate::entropy::unix_now() as f64;
        self.0
            .load()
            .authenticator
            .readiness()
            .issuers
            .into_iter()
            .map(|status| {
                let age = status.last_success.map(|at| at.elapsed().as_secs_f64());
                IssuerState {
                    name: status.name,
                    loaded: status.loaded,
                    stale: matches!(status.freshness, Freshness::Stale | Freshness::Expired),
                    keys: status.keys as u64,
                    fetches_ok: status.fetches.saturating_sub(status.failures),
                    fetches_failed: status.failures,
                    unknown_kid_refetches: status.forced_refetches,
                    refetches_suppressed: status.suppressed_refetches,
                    last_success_unix: age.map(|a| now - a),
                    key_age_seconds: age,
                }
            })
            .collect()
    }

    fn limits(&self) -> LimitsState {
        let limiter = &self.1;
        LimitsState {
            in_flight: limiter.in_flight() as u64,
            max_in_flight: self.0.load().limits.max_in_flight() as u64,
            local_keys: limiter.local().len() as u64,
            redis_up: limiter.redis().map(|redis| !redis.failing()),
        }
    }

    fn facts(&self) -> FactsState {
        let live = self.0.load();
        FactsState {
            caches: live
                .facts
                .cache_stats()
                .into_iter()
                .map(|c| (c.name.to_string(), c.entries as u64, c.capacity as u64))
                .collect(),
            listeners: live
                .facts
                .listeners()
                .into_iter()
                .filter_map(|(name, up)| Some((name, up?)))
                .collect(),
        }
    }

    fn jwt_cache(&self) -> JwtCacheState {
        self.0
            .load()
            .authenticator
            .verified_cache_stats()
            .map_or_else(JwtCacheState::default, |stats| JwtCacheState {
                entries: stats.entries,
                capacity: stats.capacity,
                evictions: stats.evictions,
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_served_method_is_known_with_its_type() {
        let methods = served_methods();
        let find = |service: &str, method: &str| {
            methods
                .iter()
                .find(|m| m.service == service && m.method == method)
                .map(|m| m.kind)
        };
        assert_eq!(
            find("tokengate.v1.TokenService", "IssueRtcToken"),
            Some("unary")
        );
        assert_eq!(
            find("grpc.health.v1.Health", "Watch"),
            Some("server_stream")
        );
        assert_eq!(
            find(
                "grpc.reflection.v1.ServerReflection",
                "ServerReflectionInfo"
            ),
            Some("bidi_stream")
        );
        assert_eq!(
            find("envoy.service.auth.v3.Authorization", "Check"),
            Some("unary")
        );
    }
}
