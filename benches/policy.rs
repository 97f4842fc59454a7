//! Benchmarks (placeholder until the policy module lands).

fn main() {}
