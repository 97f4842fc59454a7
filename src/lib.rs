//! tokengate: authenticate a caller by JWT, apply per-channel rules, issue Agora tokens.
//!
//! The module map and its invariants are in `ARCHITECTURE.md`. In short,
//! dependencies flow one way: `cli -> server -> grpc -> {identity, policy, token} -> domain`,
//! and `token` and `policy` are pure: they take time and randomness as
//! arguments and never touch the clock, the network, tokio or tonic.

pub mod cli;
pub mod config;
pub mod domain;
pub mod entropy;
pub mod gate;
pub mod grpc;
pub mod identity;
pub mod pipeline;
pub mod policy;
pub mod render;
pub mod routes;
pub mod server;
pub mod token;
