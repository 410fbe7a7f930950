//! Examples live in the `[[example]]` targets of this package; run them with `cargo run -p backup-examples --example NAME`.
