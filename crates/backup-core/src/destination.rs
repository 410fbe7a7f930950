//! Where a backup's image goes ([`Destination`]), and the one-shot
//! "storage" that writes it to a caller's stream.
use std::ops::Range;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use backup_storage::{
    Capabilities, Capacity, GetResult, ListResult, ObjectMeta, PutOptions, Storage, Upload,
};
use bytes::Bytes;
use tokio::io::{AsyncWrite, AsyncWriteExt};

/// Where [`crate::Engine::create`] writes the image.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub enum Destination {
    /// A new name in the configured storage, with its sidecar manifest and
    /// retention after it.
    #[default]
    Storage,
    /// This local file (written under a temporary name, then renamed).
    File(PathBuf),
    /// This stream: the CLI's standard output, an HTTP response body. Used
    /// by one backup; a second backup with the same stream fails.
    Stream(ImageStream),
}

/// A writer an image is streamed to (see [`Destination::Stream`]).
#[derive(Clone)]
pub struct ImageStream {
    writer: Arc<Mutex<Option<Box<dyn AsyncWrite + Send + Unpin>>>>,
    name: Arc<str>,
}

impl ImageStream {
    /// The image goes to `writer`, which is flushed, not closed, at the end.
    pub fn new(writer: impl AsyncWrite + Send + Unpin + 'static) -> Self {
        ImageStream {
            writer: Arc::new(Mutex::new(Some(Box::new(writer)))),
            name: Arc::from("the output stream"),
        }
    }

    /// What reports call the stream (`location` of the backup's report).
    pub fn named(mut self, name: impl Into<String>) -> Self {
        self.name = Arc::from(name.into());
        self
    }
}

impl std::fmt::Debug for ImageStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("ImageStream").field(&self.name).finish()
    }
}

/// Writes one image to a caller's stream: the "storage" of a backup
/// whose destination is [`Destination::Stream`].
#[derive(Debug)]
pub(crate) struct StreamSink {
    pub(crate) stream: ImageStream,
}

impl std::fmt::Display for StreamSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.stream.name)
    }
}

struct StdoutUpload {
    out: Box<dyn AsyncWrite + Send + Unpin>,
    written: u64,
}

#[async_trait]
impl Upload for StdoutUpload {
    async fn write(&mut self, chunk: Bytes) -> backup_storage::Result<()> {
        self.written += chunk.len() as u64;
        self.out.write_all(&chunk).await.map_err(|e| {
            backup_storage::Error::from_io("writing the image to the output stream", e)
        })
    }
    async fn complete(mut self: Box<Self>) -> backup_storage::Result<ObjectMeta> {
        self.out.flush().await.map_err(|e| {
            backup_storage::Error::from_io("writing the image to the output stream", e)
        })?;
        Ok(ObjectMeta {
            name: "-".into(),
            size: self.written,
            modified: None,
        })
    }
    async fn abort(self: Box<Self>) -> backup_storage::Result<()> {
        // What was written cannot be taken back; the stream is truncated and
        // no reader accepts it (the final chunk is missing).
        Ok(())
    }
}

#[async_trait]
impl Storage for StreamSink {
    fn capabilities(&self) -> Capabilities {
        Capabilities::NONE
    }
    async fn put_opts(
        &self,
        _name: &str,
        _opts: PutOptions,
    ) -> backup_storage::Result<Box<dyn Upload>> {
        let taken = self
            .stream
            .writer
            .lock()
            .map(|mut s| s.take())
            .ok()
            .flatten();
        let out = taken.ok_or_else(|| backup_storage::Error::Unsupported {
            what: "the output stream already holds an image: pass a new stream for each backup"
                .into(),
        })?;
        Ok(Box::new(StdoutUpload { out, written: 0 }))
    }
    async fn get_opts(
        &self,
        name: &str,
        _range: Option<Range<u64>>,
    ) -> backup_storage::Result<GetResult> {
        Err(unsupported(name))
    }
    async fn head(&self, name: &str) -> backup_storage::Result<ObjectMeta> {
        Err(unsupported(name))
    }
    async fn list(&self, _prefix: &str, _delimited: bool) -> backup_storage::Result<ListResult> {
        Ok(ListResult::default())
    }
    async fn delete(&self, name: &str) -> backup_storage::Result<()> {
        Err(unsupported(name))
    }
    async fn capacity(&self) -> backup_storage::Result<Capacity> {
        Ok(Capacity::default())
    }
    async fn presign_get(&self, name: &str, _expires: Duration) -> backup_storage::Result<String> {
        Err(unsupported(name))
    }
}

fn unsupported(name: &str) -> backup_storage::Error {
    backup_storage::Error::Unsupported {
        what: format!("{name}: an output stream can only be written"),
    }
}
