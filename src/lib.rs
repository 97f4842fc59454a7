//! tokengate: authenticate a caller by JWT, apply per-channel rules, issue Agora tokens.
//!
//! The module map and its invariants are in `ARCHITECTURE.md`, whose import
//! tables `tests/it/architecture.rs` checks against the code. In short,
//! dependencies flow one way: `cli -> server -> grpc (adapters) -> pipeline ->
//! {identity, gate -> {policy, token}} -> domain`, with `render` beside the
//! adapters as the one place a refusal becomes a status or an HTTP denial;
//! `token` and `policy` are pure: they take time and randomness as arguments
//! and never touch the clock, the network, tokio or tonic.

pub mod cli;
pub mod config;
pub mod domain;
pub mod entropy;
pub mod facts;
pub mod forward_auth;
pub mod forwarded;
pub mod gate;
pub mod grpc;
pub mod identity;
pub mod limits;
pub mod metrics;
pub mod pipeline;
pub mod policy;
pub mod render;
pub mod routes;
pub mod server;
pub mod telemetry;
pub mod tls;
pub mod token;
