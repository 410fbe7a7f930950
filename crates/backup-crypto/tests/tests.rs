//! The integration tests of backup-crypto: one binary, one module per subject,
//! helpers in `util`.

mod util;

mod kdf;
mod large_stream;
mod roundtrip;
mod tampering;
mod wycheproof;
