//! Benchmarks live in the `[[bench]]` targets: `cargo bench -p backup-benches`.
