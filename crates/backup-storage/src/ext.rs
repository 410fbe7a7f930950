use async_trait::async_trait;
use bytes::Bytes;
use tokio::io::AsyncReadExt;

use crate::{Error, ObjectMeta, PutMode, PutOptions, Result, Storage};

/// Conveniences over [`Storage`], for every implementation.
#[async_trait]
pub trait StorageExt: Storage {
    /// Uploads a small object in one piece.
    async fn put_bytes(&self, name: &str, data: Bytes, mode: PutMode) -> Result<ObjectMeta> {
        let mut up = self
            .put_opts(
                name,
                PutOptions::mode(mode).with_size_hint(Some(data.len() as u64)),
            )
            .await?;
        if let Err(e) = up.write(data).await {
            let _ = up.abort().await;
            return Err(e);
        }
        up.complete().await
    }

    /// Reads a whole small object; fails with [`crate::Error::Other`] if it is
    /// larger than `limit` bytes (images are streamed, never read this way).
    async fn get_bytes(&self, name: &str, limit: u64) -> Result<Bytes> {
        let too_large = |size: u64| {
            Error::Other {
            what: format!("{name} in {self} has {size} bytes, more than the {limit} expected; is it an image?"),
            source: None,
        }
        };
        let got = self.get_opts(name, None).await?;
        if got.meta.size > limit {
            return Err(too_large(got.meta.size));
        }
        // The object may grow between the metadata and the read: read one byte
        // past the limit to notice, never more.
        let mut data = Vec::with_capacity(usize::try_from(got.meta.size).unwrap_or(0));
        got.reader
            .take(limit.saturating_add(1))
            .read_to_end(&mut data)
            .await
            .map_err(|e| Error::from_io(format!("reading {name} from {self}"), e))?;
        if data.len() as u64 > limit {
            return Err(too_large(data.len() as u64));
        }
        Ok(data.into())
    }

    /// Whether an object exists.
    async fn exists(&self, name: &str) -> Result<bool> {
        match self.head(name).await {
            Ok(_) => Ok(true),
            Err(Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }
}

impl<S: Storage + ?Sized> StorageExt for S {}
