//! Audit log benchmarks (placeholder until written).
fn main() {}
