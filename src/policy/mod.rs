//! Per-channel business rules: compile once at load, `evaluate(.., now) -> Decision`.
//!
//! Pure: never reads the clock, the network or the environment.
