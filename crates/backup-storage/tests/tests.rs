//! The integration tests of backup-storage: one binary, one module per
//! subject, helpers (and the real FTP and S3 servers) in `util`.

mod util;

mod conformance;
#[cfg(feature = "ftp")]
mod ftp_conformance;
#[cfg(feature = "ftp")]
mod ftp_faults;
mod local;
mod retry;
#[cfg(feature = "s3")]
mod s3_behaviour;
#[cfg(feature = "s3")]
mod s3_conformance;
#[cfg(feature = "s3")]
mod s3_url;
mod tmpfs;
