//! The integration tests, as one test binary: every module shares one build
//! of the library and of the helpers in `tests/support` (real servers on
//! 127.0.0.1:0, keys, the JWKS server, the OpenID provider, the binary
//! harness). Run one area with `cargo test --test it <module>::`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../support/mod.rs"]
mod support;

mod architecture;
mod cli_config;
mod cli_dev;
mod cli_facts_config;
mod cli_limits;
mod cli_token;
mod deploy;
mod deploy_forward_auth;
mod deploy_observability;
mod ext_authz;
mod fact_server_support;
mod facts_example;
mod facts_http;
mod facts_postgres;
mod faults;
mod forward_auth;
mod forward_auth_proxies;
mod hardening;
mod identity_cache;
mod identity_catalogue;
mod identity_hardening;
mod identity_jwks;
mod identity_oidc;
mod identity_wycheproof;
mod limits;
mod limits_redis;
mod log_writer;
mod metrics;
mod pipeline;
mod policy_example;
mod policy_facts;
mod policy_props;
mod policy_rules;
mod policy_workload;
mod postgres_support;
mod reload;
mod server_api;
mod server_churn;
mod server_fds;
mod server_grpcurl;
mod server_health;
mod server_oidc;
mod server_python;
mod server_signals;
mod server_transport;
mod telemetry;
mod tls;
mod token_invalid;
mod token_npm;
mod token_props;
mod token_vectors;
mod workload_identity;
