//! `s3://bucket/prefix?endpoint=…&region=…`: any S3-compatible store, through
//! `object_store`'s `AmazonS3` client (SigV4).
//!
//! - **Names** map to keys `<prefix>/<name>` (just `<name>` without a prefix).
//! - **Credentials** never come from the URL: explicit ones given to
//!   [`S3StorageBuilder::credentials`], or (with [`S3StorageBuilder::from_env`],
//!   which [`S3Storage::from_url`] uses) `AWS_ACCESS_KEY_ID` /
//!   `AWS_SECRET_ACCESS_KEY` / `AWS_SESSION_TOKEN`, else the profile
//!   `AWS_PROFILE` (or `?profile=`, or `default`) of
//!   `AWS_SHARED_CREDENTIALS_FILE` (or `~/.aws/credentials`). Instance-metadata
//!   credentials are deliberately not probed: appliances are not EC2 instances,
//!   and a probe of a link-local address would only delay the real error.
//! - **Endpoint**: without one, AWS itself (virtual-hosted-style requests);
//!   with one, path-style requests, which every S3-compatible server accepts;
//!   plain `http://` only when the endpoint says so.
//! - **Uploads** are multipart, with parts sized from the size hint so that an
//!   image never needs more than 10,000 parts (see [`part_size`]); without a
//!   hint, 16 MiB parts, which caps an object at 156.25 GiB. At most two parts
//!   are in memory: one being sent, one being filled. An object smaller than
//!   one part goes up in a single PUT. Until `complete()` nothing is visible
//!   under the name; a failed, aborted or dropped upload is aborted on the
//!   server. An upload abandoned by a crash stays invisible but keeps its parts
//!   stored: give the bucket a lifecycle rule `AbortIncompleteMultipartUpload`.
//! - **`PutMode::Create`**: checked with a HEAD before the upload starts; a
//!   single-PUT upload is then sent with `If-None-Match: *` (atomic on servers
//!   that honour it, AWS S3 included); a multipart upload is checked with a
//!   HEAD again just before it completes, because `object_store` 0.14 cannot
//!   send `If-None-Match` with CompleteMultipartUpload. So Create is best
//!   effort for large objects, and [`Capabilities::conditional_create`] is
//!   false.
//! - **Time**: connecting is bounded (10 s by default), so is waiting for any
//!   response or body bytes (5 min by default, which a part upload must fit in).
//! - **Retries**: each request is retried by one layer only, so a failure is
//!   tried a known number of times and reported once. Listing, reading,
//!   HEAD and DELETE are retried by the shared layer
//!   ([`crate::RetryStorage`], which [`crate::open_url`] puts around every
//!   backend), and `object_store` does not retry them. Upload requests (the
//!   single PUT, each part, the completion) cannot be replayed by the shared
//!   layer, which never has the data again; `object_store`, which holds the
//!   part in memory, retries those (3 times within one minute by default).
//! - **Errors** say in one line what was being done to which object and what
//!   to do; their source names the S3 error code, the HTTP status and the
//!   server's own message (or the connection failure) instead of
//!   `object_store`'s nested chain, which is logged at debug level.
//!
//! Layout: this file opens the storage and implements [`Storage`] on it;
//! `core` holds what everything shares (the clients, bucket and prefix, the
//! name-to-key mapping), `builder` the settings, `url` and `credential` where
//! they come from, `error` what a failure means, and `upload` the single PUT
//! and multipart uploads. Imports point from here down to `core`, never back.

mod builder;
mod core;
mod credential;
mod error;
mod upload;
mod url;

use std::ops::Range;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use futures::TryStreamExt;
use object_store::list::{PaginatedListOptions, PaginatedListStore};
use object_store::path::Path;
use object_store::signer::Signer;
use object_store::{GetOptions, GetRange, ObjectStore, ObjectStoreExt};

pub use self::builder::S3StorageBuilder;
pub use self::core::S3Storage;
use self::error::{io_error, Meaning};
use self::upload::{check_absent, new_part_buffer, part_size, S3Upload};

use crate::{
    Capabilities, Capacity, Error, GetResult, ListResult, ObjectMeta, PutMode, PutOptions, Result,
    Storage, Upload,
};

/// The longest validity S3 accepts for a presigned URL (SigV4: 7 days).
const MAX_PRESIGN: Duration = Duration::from_secs(7 * 24 * 3600);

impl S3Storage {
    /// A builder that takes nothing from the environment: tests and embedders
    /// give every setting, credentials included.
    pub fn builder() -> S3StorageBuilder {
        S3StorageBuilder::new()
    }

    /// Opens `s3://bucket/prefix?endpoint=…&region=…&profile=…`, with
    /// credentials and a default region from the environment (see
    /// [`S3StorageBuilder::from_env`]). A URL carrying credentials is refused.
    pub fn from_url(url: &str) -> Result<S3Storage> {
        S3StorageBuilder::from_env().url(url)?.build()
    }

    /// The bucket.
    pub fn bucket(&self) -> &str {
        &self.shared.bucket
    }

    /// The key prefix (without a trailing `/`; empty for the whole bucket).
    pub fn prefix(&self) -> &str {
        &self.shared.prefix
    }

    /// The key of a validated object name.
    fn key(&self, name: &str) -> Result<Path> {
        self.shared.key(name)
    }
}

fn object_meta(name: String, meta: &object_store::ObjectMeta) -> ObjectMeta {
    ObjectMeta {
        name,
        size: meta.size,
        modified: Some(SystemTime::from(meta.last_modified)),
    }
}

// ---------------------------------------------------------------------------
// The trait

#[async_trait]
impl Storage for S3Storage {
    fn capabilities(&self) -> Capabilities {
        Capabilities {
            // A multipart upload shows nothing until it completes.
            atomic_publish: true,
            // Best effort for multipart uploads (see the module docs).
            conditional_create: false,
            presign: true,
            capacity: false,
            rewrite_in_place: false,
        }
    }

    async fn put_opts(&self, name: &str, opts: PutOptions) -> Result<Box<dyn Upload>> {
        let path = self.key(name)?;
        if opts.mode == PutMode::Create {
            // Refuse before any byte is sent (and again at the end).
            check_absent(&self.shared, &self.shared.store, name, &path).await?;
        }
        let part_size = part_size(opts.size_hint);
        Ok(Box::new(S3Upload {
            shared: Arc::clone(&self.shared),
            path,
            name: name.to_owned(),
            mode: opts.mode,
            part_size: usize::try_from(part_size).unwrap_or(usize::MAX),
            buffer: new_part_buffer(),
            multipart: None,
            in_flight: None,
            parts: 0,
            written: 0,
            write_cancelled: false,
            finished: false,
        }))
    }

    async fn get_opts(&self, name: &str, range: Option<Range<u64>>) -> Result<GetResult> {
        let path = self.key(name)?;
        let doing = || format!("reading {name} from {self}");
        let mut options = GetOptions::default();
        match &range {
            Some(r) if r.start > r.end => {
                return Err(Error::Other {
                    what: format!(
                    "cannot read bytes {r:?} of {name} in {self}: the range ends before it starts"
                ),
                    source: None,
                })
            }
            // S3 cannot return nothing: an empty range is answered from a HEAD.
            Some(r) if r.start == r.end => {
                let meta = self.head(name).await?;
                if r.start > meta.size {
                    return Err(Error::Other {
                        what: format!(
                            "cannot read bytes {r:?} of {name} in {self}: the object has {} bytes",
                            meta.size
                        ),
                        source: None,
                    });
                }
                return Ok(GetResult {
                    meta,
                    range: r.clone(),
                    reader: Box::new(tokio::io::empty()),
                });
            }
            Some(r) => options.range = Some(GetRange::Bounded(r.clone())),
            None => {}
        }
        let got = match self.shared.store.get_opts(&path, options).await {
            Ok(got) => got,
            Err(e) => {
                let Some(r) = range.filter(|_| Meaning::of(&e) == Meaning::BadRange) else {
                    return Err(self.shared.error(doing(), e));
                };
                // As every backend: a range starting at the very end is empty,
                // one starting beyond it an error that gives the size.
                let meta = self.head(name).await?;
                if r.start == meta.size {
                    return Ok(GetResult {
                        meta,
                        range: r.start..r.start,
                        reader: Box::new(tokio::io::empty()),
                    });
                }
                return Err(Error::Other {
                    what: format!(
                        "cannot read bytes {r:?} of {name} in {self}: the object has {} bytes",
                        meta.size
                    ),
                    source: Some(Box::new(e)),
                });
            }
        };
        let meta = object_meta(name.to_owned(), &got.meta);
        let range = got.range.clone();
        let shared = Arc::clone(&self.shared);
        let what = doing();
        let stream = got
            .into_stream()
            .map_err(move |e| io_error(shared.error(what.clone(), e)));
        Ok(GetResult {
            meta,
            range,
            reader: Box::new(tokio_util::io::StreamReader::new(stream)),
        })
    }

    async fn head(&self, name: &str) -> Result<ObjectMeta> {
        let path = self.key(name)?;
        let meta = self
            .shared
            .store
            .head(&path)
            .await
            .map_err(|e| self.shared.error(format!("object {name} in {self}"), e))?;
        Ok(object_meta(name.to_owned(), &meta))
    }

    async fn list(&self, prefix: &str, delimited: bool) -> Result<ListResult> {
        let key_prefix = if self.shared.prefix.is_empty() {
            prefix.to_owned()
        } else {
            format!("{}/{prefix}", self.shared.prefix)
        };
        let mut out = ListResult::default();
        let mut page_token = None;
        // object_store's own `list` treats the prefix as a directory; the
        // paginated call passes it through as a plain string prefix.
        loop {
            let opts = PaginatedListOptions {
                delimiter: delimited.then_some("/".into()),
                page_token,
                ..Default::default()
            };
            let page = self
                .shared
                .store
                .list_paginated(
                    (!key_prefix.is_empty()).then_some(key_prefix.as_str()),
                    opts,
                )
                .await
                .map_err(|e| self.shared.error(format!("listing {prefix}* in {self}"), e))?;
            for meta in &page.result.objects {
                if let Some(name) = self.shared.name(meta.location.as_ref()) {
                    out.objects.push(object_meta(name.to_owned(), meta));
                }
            }
            for p in &page.result.common_prefixes {
                if let Some(name) = self.shared.name(p.as_ref()) {
                    out.prefixes.push(format!("{name}/"));
                }
            }
            page_token = page.page_token;
            if page_token.is_none() {
                break;
            }
        }
        out.objects.sort_by(|a, b| a.name.cmp(&b.name));
        out.prefixes.sort();
        out.prefixes.dedup();
        Ok(out)
    }

    async fn delete(&self, name: &str) -> Result<()> {
        let path = self.key(name)?;
        match self.shared.store.delete(&path).await {
            Ok(()) => Ok(()),
            // S3 answers 204 for a missing key; other servers may say 404.
            Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.shared.error(format!("deleting {name} from {self}"), e)),
        }
    }

    async fn capacity(&self) -> Result<Capacity> {
        // A bucket has no size limit that S3 would tell.
        Ok(Capacity::default())
    }

    async fn presign_get(&self, name: &str, expires: Duration) -> Result<String> {
        let path = self.key(name)?;
        if expires.is_zero() || expires > MAX_PRESIGN {
            return Err(Error::Other {
                what: format!(
                    "presigning {name} in {self}: the validity must be between 1 second and 7 days, not {expires:?}"
                ),
                source: None,
            });
        }
        let url = self
            .shared
            .store
            .signed_url(http::Method::GET, &path, expires)
            .await
            .map_err(|e| self.shared.error(format!("presigning {name} in {self}"), e))?;
        Ok(url.to_string())
    }
}

pub(crate) fn open(url: &str) -> Result<Arc<dyn Storage>> {
    Ok(Arc::new(S3Storage::from_url(url)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_stay_out_of_debug_and_display() {
        let store = S3Storage::builder()
            .bucket("b")
            .prefix("p/")
            .endpoint("http://127.0.0.1:1")
            .credentials("AKIDVISIBLE", "TOPSECRET")
            .session_token("TOKENSECRET")
            .build()
            .unwrap();
        let shown = format!("{store} {store:?}");
        assert_eq!(store.to_string(), "s3://b/p?endpoint=http://127.0.0.1:1");
        assert!(
            !shown.contains("TOPSECRET") && !shown.contains("TOKENSECRET"),
            "{shown}"
        );
        let builder = S3Storage::builder().credentials("AKID", "TOPSECRET");
        assert!(!format!("{builder:?}").contains("TOPSECRET"));
    }
}
