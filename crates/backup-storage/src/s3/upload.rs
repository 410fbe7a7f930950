//! Uploads: a single PUT for what fits in one part, a multipart upload
//! beyond, with parts sized so that an image never needs more than 10,000.

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use object_store::path::Path;
use object_store::{
    MultipartUpload, ObjectStore, ObjectStoreExt, PutMultipartOptions, PutPayload, PutPayloadMut,
};
use tokio::task::JoinHandle;

use object_store::aws::AmazonS3;

use super::core::Shared;
use super::error::Meaning;
use crate::{Error, ObjectMeta, PutMode, Result, Upload};

const MIB: u64 = 1 << 20;
/// S3's smallest part (all but the last).
const MIN_PART: u64 = 5 * MIB;
/// S3's largest part.
const MAX_PART: u64 = 5 << 30;
/// S3's most parts in one upload.
const MAX_PARTS: u64 = 10_000;
/// The part size without a size hint: 10,000 parts of 16 MiB hold 156.25 GiB,
/// while two parts in memory stay small.
const DEFAULT_PART: u64 = 16 * MIB;
/// Parts are sized for this many, leaving room for an image that outgrows
/// its hint (on top of the 10 % added to the hint).
const TARGET_PARTS: u64 = 9_000;
/// Writes smaller than this are copied into the part buffer rather than kept
/// as they are, so that a stream of tiny writes does not become a part made
/// of thousands of tiny buffers.
const COPY_BELOW: usize = 256 * 1024;

/// The part size for an object of `size_hint` bytes: at least 5 MiB, a whole
/// number of MiB, and large enough that the hinted size plus 10 % fits in
/// 9,000 parts (so a 5 TiB image, S3's maximum, takes parts of 641 MiB).
/// Without a hint, [`DEFAULT_PART`].
pub(crate) fn part_size(size_hint: Option<u64>) -> u64 {
    let Some(size) = size_hint else {
        return DEFAULT_PART;
    };
    let padded = size.saturating_add(size / 10);
    let part = padded
        .div_ceil(TARGET_PARTS)
        .div_ceil(MIB)
        .saturating_mul(MIB);
    part.clamp(MIN_PART, MAX_PART)
}

/// `AlreadyExists` if `path` exists, asked through `client` (the one without
/// retries where the caller's retry layer can retry, else the upload client).
pub(super) async fn check_absent(
    shared: &Shared,
    client: &AmazonS3,
    name: &str,
    path: &Path,
) -> Result<()> {
    match client.head(path).await {
        Ok(_) => Err(Error::AlreadyExists {
            what: format!("object {name} in {}", shared.location),
        }),
        // A missing bucket also answers a HEAD with a bare 404: the upload
        // itself will say which it is.
        Err(e) if Meaning::of(&e) == Meaning::NotFound => Ok(()),
        // Write-only credentials (a common backup policy) may not HEAD; and
        // a HEAD's 403 has no body to tell rejected credentials apart. The
        // upload's own requests say which; Create then rests on If-None-Match.
        Err(e) if Meaning::of(&e) == Meaning::PermissionDenied => {
            tracing::debug!(%name, storage = %shared.location, error = %e,
                "cannot check whether the object exists before a Create upload");
            Ok(())
        }
        Err(e) => Err(shared.error(
            format!("checking whether {name} exists in {}", shared.location),
            e,
        )),
    }
}

pub(super) fn new_part_buffer() -> PutPayloadMut {
    PutPayloadMut::new().with_block_size(COPY_BELOW)
}

/// A streaming upload: a single PUT for what fits in one part, a multipart
/// upload beyond.
pub(super) struct S3Upload {
    pub(super) shared: Arc<Shared>,
    pub(super) path: Path,
    pub(super) name: String,
    pub(super) mode: PutMode,
    pub(super) part_size: usize,
    /// The part being filled.
    pub(super) buffer: PutPayloadMut,
    /// Started when the first part is full.
    pub(super) multipart: Option<Box<dyn MultipartUpload>>,
    /// The part being sent, in a task of its own so that it progresses while
    /// the caller fills the next one.
    pub(super) in_flight: Option<JoinHandle<object_store::Result<()>>>,
    /// Parts started.
    pub(super) parts: u64,
    pub(super) written: u64,
    /// A `write` future was dropped half-way: what was written is unknown,
    /// so the upload may not complete.
    pub(super) write_cancelled: bool,
    /// Completed or aborted: nothing left to clean up.
    pub(super) finished: bool,
}

impl S3Upload {
    pub(super) fn doing(&self) -> String {
        format!("uploading {} to {}", self.name, self.shared.location)
    }

    /// Sends the full buffer as the next part, once the previous part is
    /// through: at most two parts are ever held.
    async fn send_part(&mut self) -> Result<()> {
        self.wait_in_flight().await?;
        if self.parts == MAX_PARTS {
            return Err(Error::Other {
                what: format!(
                    "{}: the object outgrew 10,000 parts of {} MiB ({} GiB); give the expected size \
                     (size hint) so that larger parts are chosen",
                    self.doing(),
                    self.part_size as u64 / MIB,
                    (self.part_size as u64 * MAX_PARTS) >> 30
                ),
                source: None,
            });
        }
        if self.multipart.is_none() {
            let upload = self
                .shared
                .uploads
                .put_multipart_opts(&self.path, PutMultipartOptions::default())
                .await
                .map_err(|e| self.shared.error(self.doing(), e))?;
            self.multipart = Some(upload);
        }
        let payload: PutPayload = std::mem::replace(&mut self.buffer, new_part_buffer()).freeze();
        let multipart = self.multipart.as_mut().expect("started above");
        self.in_flight = Some(tokio::spawn(multipart.put_part(payload)));
        self.parts += 1;
        Ok(())
    }

    async fn wait_in_flight(&mut self) -> Result<()> {
        let Some(handle) = &mut self.in_flight else {
            return Ok(());
        };
        // Awaited through a reference: if this future is dropped, the handle
        // stays for `abort` or `Drop` to wait for.
        let outcome = handle.await;
        self.in_flight = None;
        match outcome {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(self.shared.error(self.doing(), e)),
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(e) => Err(Error::Other {
                what: format!("{}: the part upload task was cancelled", self.doing()),
                source: Some(Box::new(e)),
            }),
        }
    }

    /// Aborts the multipart upload (if any) after a failure, and returns the
    /// failure.
    async fn fail(&mut self, e: Error) -> Error {
        if let Err(abort) = self.abort_multipart().await {
            tracing::warn!(name = %self.name, storage = %self.shared.location, error = %abort,
                "could not abort a failed multipart upload; its parts stay until the bucket's lifecycle rule removes them");
        }
        e
    }

    async fn abort_multipart(&mut self) -> Result<()> {
        self.finished = true;
        // Let the part in flight end first, so that the abort removes it too.
        if let Some(handle) = self.in_flight.take() {
            let _ = handle.await;
        }
        match self.multipart.take() {
            Some(mut upload) => upload.abort().await.map_err(|e| {
                self.shared.error(
                    format!(
                        "aborting the upload of {} to {}",
                        self.name, self.shared.location
                    ),
                    e,
                )
            }),
            None => Ok(()),
        }
    }

    async fn write_inner(&mut self, mut chunk: Bytes) -> Result<()> {
        while !chunk.is_empty() {
            let room = self.part_size - self.buffer.content_length();
            let piece = if chunk.len() > room {
                chunk.split_to(room)
            } else {
                std::mem::take(&mut chunk)
            };
            self.written += piece.len() as u64;
            if piece.len() < COPY_BELOW {
                self.buffer.extend_from_slice(&piece);
            } else {
                self.buffer.push(piece);
            }
            if self.buffer.content_length() == self.part_size {
                self.send_part().await?;
            }
        }
        Ok(())
    }

    async fn complete_inner(&mut self) -> Result<()> {
        if self.multipart.is_none() {
            // Everything fits in one part: one PUT, conditional for Create.
            let payload = std::mem::replace(&mut self.buffer, new_part_buffer()).freeze();
            let mode = match self.mode {
                PutMode::Overwrite => object_store::PutMode::Overwrite,
                PutMode::Create => object_store::PutMode::Create,
            };
            let result = self
                .shared
                .uploads
                .put_opts(&self.path, payload, mode.into())
                .await;
            return result
                .map(drop)
                .map_err(|e| self.shared.error(self.doing(), e));
        }
        if self.buffer.content_length() > 0 {
            // The last part may be smaller than 5 MiB.
            self.send_part().await?;
        }
        self.wait_in_flight().await?;
        if self.mode == PutMode::Create {
            // Inside the upload: nothing above retries this HEAD.
            check_absent(&self.shared, &self.shared.uploads, &self.name, &self.path).await?;
        }
        let upload = self.multipart.as_mut().expect("multipart upload started");
        upload
            .complete()
            .await
            .map_err(|e| self.shared.error(self.doing(), e))?;
        self.multipart = None;
        Ok(())
    }
}

#[async_trait]
impl Upload for S3Upload {
    async fn write(&mut self, chunk: Bytes) -> Result<()> {
        if self.finished {
            return Err(Error::Other {
                what: format!("{}: the upload already failed", self.doing()),
                source: None,
            });
        }
        self.write_cancelled = true;
        let outcome = self.write_inner(chunk).await;
        self.write_cancelled = false;
        match outcome {
            Ok(()) => Ok(()),
            Err(e) => Err(self.fail(e).await),
        }
    }

    async fn complete(mut self: Box<Self>) -> Result<ObjectMeta> {
        if self.finished || self.write_cancelled {
            let e = Error::upload_broken(self.doing());
            return Err(self.fail(e).await);
        }
        match self.complete_inner().await {
            Ok(()) => {
                self.finished = true;
                Ok(ObjectMeta {
                    name: self.name.clone(),
                    size: self.written,
                    modified: None,
                })
            }
            Err(e) => Err(self.fail(e).await),
        }
    }

    async fn abort(mut self: Box<Self>) -> Result<()> {
        self.abort_multipart().await
    }
}

impl Drop for S3Upload {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        let Some(mut upload) = self.multipart.take() else {
            return; // nothing was sent
        };
        let in_flight = self.in_flight.take();
        let (name, location) = (self.name.clone(), self.shared.location.clone());
        // Drop cannot wait: the abort runs as a task of its own. Without a
        // runtime (or if it shuts down first) the parts stay, invisible,
        // until the bucket's lifecycle rule removes them.
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(async move {
                    if let Some(handle) = in_flight {
                        let _ = handle.await;
                    }
                    if let Err(e) = upload.abort().await {
                        tracing::warn!(%name, %location, error = %e,
                            "could not abort an abandoned multipart upload; its parts stay until the bucket's lifecycle rule removes them");
                    }
                });
            }
            Err(_) => tracing::warn!(%name, %location,
                "an abandoned multipart upload could not be aborted (no async runtime); its parts stay until the bucket's lifecycle rule removes them"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_fit_in_10000_and_are_at_least_5_mib() {
        const GIB: u64 = 1 << 30;
        const TIB: u64 = 1 << 40;
        for size in [
            0,
            1,
            MIB,
            5 * MIB,
            16 * MIB + 1,
            50 * GIB,
            1000 * GIB,
            5 * TIB,
        ] {
            let part = part_size(Some(size));
            assert!(part >= MIN_PART, "{size}: {part}");
            assert!(part <= MAX_PART, "{size}: {part}");
            assert_eq!(part % MIB, 0, "{size}: {part}");
            assert!(size.div_ceil(part) <= MAX_PARTS, "{size}: {part}");
            // The 10 % margin: an image a tenth larger than hinted still fits.
            assert!(
                (size + size / 10).div_ceil(part) <= MAX_PARTS,
                "{size}: {part}"
            );
        }
        assert_eq!(part_size(Some(0)), 5 * MIB);
        assert_eq!(part_size(Some(MIB)), 5 * MIB);
        assert_eq!(part_size(Some(50 * GIB)), 7 * MIB);
        assert_eq!(part_size(Some(5 * TIB)), 641 * MIB);
        assert_eq!(part_size(None), 16 * MIB);
        // Without a hint: the documented ceiling.
        assert_eq!(DEFAULT_PART * MAX_PARTS, 160_000 * MIB);
        // Absurd hints stay within S3's limits instead of overflowing.
        assert_eq!(part_size(Some(u64::MAX)), MAX_PART);
    }
}
