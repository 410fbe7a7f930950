//! Where a backup's image goes ([`Destination`]), and the one-shot
//! "storage" that writes it to a caller's stream.
use std::io::Write;
use std::path::Path;

use backup_crypto::{EncryptWriter, Keyslot, MasterKey};
use backup_storage::{LocalStorage, PutMode};
use chrono::{DateTime, Utc};
use tokio::sync::mpsc;

use crate::image::pipe;
use crate::image::writer::{ChannelWriter, CHANNEL_DEPTH};
use crate::util::join_error;
use crate::{Error, Result};
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
    /// by one backup; a second backup with the same stream fails. With
    /// [`ImageStream::also_store`], the image is stored in the configured
    /// storage too, as with [`Destination::Storage`].
    Stream(ImageStream),
}

impl Destination {
    /// Whether the image goes into the configured storage (with its
    /// sidecar, and retention after it).
    pub fn stores(&self) -> bool {
        match self {
            Destination::Storage => true,
            Destination::Stream(s) => s.store,
            Destination::File(_) => false,
        }
    }
}

/// Called with the image's name once the run's preflight has passed and
/// the image starts to flow (see [`ImageStream::on_open`]).
type OpenHook = Box<dyn FnOnce(&str) + Send>;

/// A writer an image is streamed to (see [`Destination::Stream`]).
#[derive(Clone)]
pub struct ImageStream {
    writer: Arc<Mutex<Option<Box<dyn AsyncWrite + Send + Unpin>>>>,
    name: Arc<str>,
    on_open: Arc<Mutex<Option<OpenHook>>>,
    pub(crate) store: bool,
}

impl ImageStream {
    /// The image goes to `writer`, which is flushed, not closed, at the end.
    pub fn new(writer: impl AsyncWrite + Send + Unpin + 'static) -> Self {
        ImageStream {
            writer: Arc::new(Mutex::new(Some(Box::new(writer)))),
            name: Arc::from("the output stream"),
            on_open: Arc::new(Mutex::new(None)),
            store: false,
        }
    }

    /// Calls `hook` with the image's name when the first byte is about to
    /// be written: the lock is held, the selection, keys and storage
    /// passed their checks. An HTTP service sends its status line then;
    /// an error before it has its own status code. Not called if the run
    /// fails before.
    pub fn on_open(self, hook: impl FnOnce(&str) + Send + 'static) -> Self {
        if let Ok(mut slot) = self.on_open.lock() {
            *slot = Some(Box::new(hook));
        }
        self
    }

    /// Stores the image in the configured storage as well, under its name,
    /// with its sidecar and retention after it (the storage's preflight
    /// included). A failure of either the storage or the stream fails the
    /// run, and nothing is published under the image's name.
    pub fn also_store(mut self) -> Self {
        self.store = true;
        self
    }

    /// Takes the writer (once) and calls the open hook.
    fn open(&self, image: &str) -> Option<Box<dyn AsyncWrite + Send + Unpin>> {
        let out = self.writer.lock().map(|mut s| s.take()).ok().flatten()?;
        if let Some(hook) = self.on_open.lock().ok().and_then(|mut h| h.take()) {
            hook(image);
        }
        Some(out)
    }

    /// An upload that writes to this stream, or an error if a backup took
    /// the stream already.
    pub(crate) fn upload(&self, image: &str) -> backup_storage::Result<Box<dyn Upload>> {
        let out = self
            .open(image)
            .ok_or_else(|| backup_storage::Error::Unsupported {
                what: "the output stream already holds an image: pass a new stream for each backup"
                    .into(),
            })?;
        Ok(Box::new(StreamUpload { out, written: 0 }))
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

struct StreamUpload {
    out: Box<dyn AsyncWrite + Send + Unpin>,
    written: u64,
}

#[async_trait]
impl Upload for StreamUpload {
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
        name: &str,
        _opts: PutOptions,
    ) -> backup_storage::Result<Box<dyn Upload>> {
        self.stream.upload(name)
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

/// An image written to the storage and a stream at once: each chunk goes to
/// the storage's upload, then to the stream. The storage's upload is
/// completed before the stream is flushed, so a reader of the stream sees
/// its end only once the image is stored.
struct TeeUpload {
    stored: Box<dyn Upload>,
    streamed: Box<dyn Upload>,
}

#[async_trait]
impl Upload for TeeUpload {
    async fn write(&mut self, chunk: Bytes) -> backup_storage::Result<()> {
        self.stored.write(chunk.clone()).await?;
        self.streamed.write(chunk).await
    }
    async fn complete(self: Box<Self>) -> backup_storage::Result<ObjectMeta> {
        let TeeUpload { stored, streamed } = *self;
        let meta = match stored.complete().await {
            Ok(meta) => meta,
            Err(e) => {
                let _ = streamed.abort().await;
                return Err(e);
            }
        };
        streamed.complete().await?;
        Ok(meta)
    }
    async fn abort(self: Box<Self>) -> backup_storage::Result<()> {
        let _ = self.streamed.abort().await;
        self.stored.abort().await
    }
}

/// A local file as a storage destination (temp name, fsync, rename; mode
/// 0600, or 0640 with the configured group).
pub(crate) fn local_destination(
    path: &Path,
    group: Option<u32>,
) -> Result<(Arc<dyn Storage>, String)> {
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| Error::Input(format!("{} is not a usable file name", path.display())))?
        .to_string();
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    Ok((
        Arc::new(LocalStorage::new(&parent)?.with_group(group)),
        name,
    ))
}

/// Streams an encrypted image into `storage` under `name` (never overwriting).
///
/// Three stages run at once, joined by bounded queues, so the slowest sets
/// the pace and memory stays fixed: `produce` writes the payload on a
/// blocking thread (tar, and the codec, which fans out to its own compression
/// threads); a second blocking thread encrypts; the async upload sends.
/// On any failure the upload is aborted, so nothing appears under `name`.
pub(crate) async fn write_sealed<T, F>(
    storage: Arc<dyn Storage>,
    name: String,
    copy: Option<&ImageStream>,
    mk: MasterKey,
    slot: Keyslot,
    created: DateTime<Utc>,
    produce: F,
) -> Result<(T, u64)>
where
    T: Send + 'static,
    F: FnOnce(&mut dyn Write) -> Result<T> + Send + 'static,
{
    let mut upload = storage
        .put_opts(&name, PutOptions::mode(PutMode::Create))
        .await?;
    if let Some(stream) = copy {
        match stream.upload(&name) {
            Ok(streamed) => {
                upload = Box::new(TeeUpload {
                    stored: upload,
                    streamed,
                })
            }
            Err(e) => {
                let _ = upload.abort().await;
                return Err(e.into());
            }
        }
    }
    let (tx, mut rx) = mpsc::channel::<Bytes>(CHANNEL_DEPTH);
    let (plain_tx, mut plain_rx) = pipe::pipe(pipe::PIPE_DEPTH);
    // `Ok(None)`: the payload ended without its end marker, i.e. the
    // producer failed (its own error says why); the image is then *not*
    // finished, so no valid-looking truncated image can be sealed.
    let encryptor = tokio::task::spawn_blocking(move || -> Result<Option<u64>> {
        let io_err = |e| Error::from_pipeline_io("encrypting the image", e);
        let mut sealed =
            EncryptWriter::new(ChannelWriter::new(tx), &mk, &slot, created.timestamp())?;
        loop {
            match plain_rx.recv_chunk() {
                Ok(Some(chunk)) => {
                    sealed.write_all(&chunk).map_err(io_err)?;
                    plain_rx.recycle(chunk);
                }
                Ok(None) => break,
                Err(_) => return Ok(None),
            }
        }
        let size = sealed.finish()?.finish().map_err(io_err)?;
        Ok(Some(size))
    });
    let producer = tokio::task::spawn_blocking(move || -> Result<T> {
        let mut plain = plain_tx;
        let value = produce(&mut plain)?;
        plain
            .finish()
            .map_err(|e| Error::from_pipeline_io("writing the image", e))?;
        Ok(value)
    });
    let mut upload_error = None;
    while let Some(chunk) = rx.recv().await {
        if let Err(e) = upload.write(chunk).await {
            upload_error = Some(e);
            break;
        }
    }
    drop(rx);
    let produced = producer.await.map_err(join_error).and_then(|r| r);
    let sealed = encryptor.await.map_err(join_error).and_then(|r| r);
    // The first cause wins: the storage, then the encryption stage (whose
    // failure makes the producer's writes fail), then the producer.
    let outcome = match (upload_error, sealed, produced) {
        (Some(e), _, _) => Err(e.into()),
        (None, Err(e), _) => Err(e),
        (None, Ok(_), Err(e)) => Err(e),
        (None, Ok(None), Ok(_)) => Err(Error::from_pipeline_io(
            "writing the image",
            std::io::Error::other("the payload stream stopped before its end"),
        )),
        (None, Ok(Some(size)), Ok(value)) => Ok((value, size)),
    };
    match outcome {
        Ok(done) => {
            upload.complete().await?;
            Ok(done)
        }
        Err(e) => {
            let _ = upload.abort().await;
            Err(e)
        }
    }
}
