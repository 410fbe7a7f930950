//! What an [`S3Storage`] and its uploads share: the clients, the bucket and
//! prefix, and the mapping of object names to keys. Every other module of
//! the backend builds on this one; it imports none of them but `url`.

use std::fmt;
use std::sync::Arc;

use object_store::aws::AmazonS3;
use object_store::path::Path;

use super::url::is_valid_name;
use crate::{Error, Result};

/// An S3 bucket (or a prefix in one) on AWS or any S3-compatible server.
///
/// ```no_run
/// # fn main() -> Result<(), backup_storage::Error> {
/// use backup_storage::S3Storage;
///
/// // Credentials from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY or ~/.aws/credentials.
/// let store = S3Storage::from_url("s3://backups/site-1?endpoint=https://s3.example.net&region=eu-1")?;
/// assert_eq!(store.to_string(), "s3://backups/site-1?endpoint=https://s3.example.net&region=eu-1");
///
/// // Explicit settings, as tests use them.
/// let store = S3Storage::builder()
///     .bucket("backups")
///     .prefix("site-1")
///     .endpoint("http://127.0.0.1:9000")
///     .credentials("AKIDEXAMPLE", "secret")
///     .build()?;
/// # Ok(()) }
/// ```
pub struct S3Storage {
    pub(super) shared: Arc<Shared>,
}

/// What the storage and its uploads share.
pub(super) struct Shared {
    /// For requests the shared retry layer retries: no retries of its own.
    pub(super) store: AmazonS3,
    /// For upload requests, which only the client can retry (it still holds
    /// the data).
    pub(super) uploads: AmazonS3,
    pub(super) bucket: String,
    /// Without leading or trailing `/`; empty for the whole bucket.
    pub(super) prefix: String,
    /// As given, for messages and `Display`.
    pub(super) endpoint: Option<String>,
    /// Only when given explicitly (URL or builder), so that `Display` gives
    /// back a URL that opens the same place.
    pub(super) region: Option<String>,
    /// `Display` of the storage, computed once.
    pub(super) location: String,
}

impl fmt::Display for S3Storage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.shared.location)
    }
}

impl fmt::Debug for S3Storage {
    // By hand: the client's own Debug would show its credential provider.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("S3Storage")
            .field("bucket", &self.shared.bucket)
            .field("prefix", &self.shared.prefix)
            .field("endpoint", &self.shared.endpoint)
            .field("region", &self.shared.region)
            .finish_non_exhaustive()
    }
}

impl Shared {
    pub(super) fn key(&self, name: &str) -> Result<Path> {
        if !is_valid_name(name) {
            return Err(Error::Other {
                what: format!(
                    "invalid object name {name:?}: names are relative and '/'-separated, without empty, \
                     '.' or '..' segments, backslashes or NUL bytes"
                ),
                source: None,
            });
        }
        let key = if self.prefix.is_empty() {
            name.to_owned()
        } else {
            format!("{}/{name}", self.prefix)
        };
        Path::parse(&key).map_err(|e| Error::Other {
            what: format!("invalid object name {name:?}"),
            source: Some(Box::new(e)),
        })
    }

    /// The object name of a key of ours (`None` for a key outside the prefix).
    pub(super) fn name<'k>(&self, key: &'k str) -> Option<&'k str> {
        if self.prefix.is_empty() {
            Some(key)
        } else {
            key.strip_prefix(self.prefix.as_str())?.strip_prefix('/')
        }
    }

    pub(super) fn where_(&self) -> String {
        match &self.endpoint {
            Some(e) => e.clone(),
            None => format!(
                "AWS S3 ({})",
                self.region
                    .as_deref()
                    .unwrap_or("region from the environment")
            ),
        }
    }
}
