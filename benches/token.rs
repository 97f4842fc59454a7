//! Benchmarks (placeholder until the token module lands).

fn main() {}
