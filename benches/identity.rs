//! Benchmarks (placeholder until the identity module lands).

fn main() {}
