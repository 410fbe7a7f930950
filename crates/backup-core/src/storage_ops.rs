//! Writing an image to standard output: the "storage" of an appliance that
//! has none.
use std::ops::Range;
use std::time::Duration;

use async_trait::async_trait;
use backup_storage::{
    Capabilities, Capacity, GetResult, ListResult, ObjectMeta, PutOptions, Storage, Upload,
};
use bytes::Bytes;
use tokio::io::AsyncWriteExt;

/// Writes one image to standard output (`backup create --output -`): the
/// "storage" of an appliance that has none.
#[derive(Debug)]
pub(crate) struct StdoutSink {
    /// Written instead of this process's standard output when set
    /// ([`crate::CreateOptions::output_stream`]).
    pub(crate) stream: Option<std::sync::Arc<std::fs::File>>,
}

impl std::fmt::Display for StdoutSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("standard output")
    }
}

struct StdoutUpload {
    out: Box<dyn tokio::io::AsyncWrite + Send + Unpin>,
    written: u64,
}

#[async_trait]
impl Upload for StdoutUpload {
    async fn write(&mut self, chunk: Bytes) -> backup_storage::Result<()> {
        self.written += chunk.len() as u64;
        self.out
            .write_all(&chunk)
            .await
            .map_err(|e| backup_storage::Error::from_io("writing to standard output", e))
    }
    async fn complete(mut self: Box<Self>) -> backup_storage::Result<ObjectMeta> {
        self.out
            .flush()
            .await
            .map_err(|e| backup_storage::Error::from_io("writing to standard output", e))?;
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
impl Storage for StdoutSink {
    fn capabilities(&self) -> Capabilities {
        Capabilities::NONE
    }
    async fn put_opts(
        &self,
        _name: &str,
        _opts: PutOptions,
    ) -> backup_storage::Result<Box<dyn Upload>> {
        let out: Box<dyn tokio::io::AsyncWrite + Send + Unpin> = match &self.stream {
            Some(file) => Box::new(tokio::fs::File::from_std(file.try_clone().map_err(
                |e| backup_storage::Error::from_io("duplicating the output stream", e),
            )?)),
            None => Box::new(tokio::io::stdout()),
        };
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
        what: format!("{name}: standard output can only be written"),
    }
}
