//! Where backup images live: one small async [`Storage`] trait, shaped like an
//! object store, with backends selected by URL.
//!
//! The trait has few methods, each taking full options; conveniences such as
//! [`StorageExt::put_bytes`] live in an extension trait with a blanket impl.
//! Cross-cutting behaviour (retry, dry-run, …) wraps a `Storage` in another
//! `Storage`. What a backend can do is data: [`Capabilities`].
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), backup_storage::Error> {
//! use backup_storage::{LocalStorage, PutMode, Storage, StorageExt};
//!
//! let dir = tempfile::tempdir().unwrap();
//! let store = LocalStorage::new(dir.path())?;
//! store.put_bytes("gw-1.bkp", bytes::Bytes::from_static(b"image"), PutMode::Create).await?;
//! assert_eq!(&store.get_bytes("gw-1.bkp", 1 << 20).await?[..], b"image");
//! let listing = store.list("gw-", false).await?;
//! assert_eq!(listing.objects[0].name, "gw-1.bkp");
//! # Ok(()) }
//! ```
#![warn(missing_docs)]

mod error;
mod ext;
#[cfg(feature = "ftp")]
mod ftp;
mod local;
mod names;
mod nfs;
mod open;
mod retry;
#[cfg(feature = "s3")]
mod s3;
#[cfg(feature = "sftp")]
mod sftp;
mod types;
mod url;
mod writeback;

#[cfg(feature = "conformance")]
pub mod conformance;

pub use error::{BoxError, Error};
pub use ext::StorageExt;
#[cfg(feature = "ftp")]
pub use ftp::{FtpStorage, FtpStorageBuilder};
pub use local::LocalStorage;
pub use nfs::{check_mount, NfsMount, NfsStorage};
pub use open::{local_dir, open_url, OpenOptions};
pub use retry::{RetryPolicy, RetryStorage};
#[cfg(feature = "s3")]
pub use s3::{S3Storage, S3StorageBuilder};
#[cfg(feature = "sftp")]
pub use sftp::{SftpStorage, SftpStorageBuilder};
pub use types::{
    resolve_range, ByteReader, Capabilities, Capacity, DirInfo, GetResult, ListResult, ObjectMeta,
    PutMode, PutOptions, Storage, Upload,
};
pub use writeback::{FlushScope, Writeback, WRITEBACK_INTERVAL};

/// Result alias of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
