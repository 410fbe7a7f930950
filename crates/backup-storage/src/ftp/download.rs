//! Downloads: a `RETR` read in chunks, ended with the server's 226 or `ABOR`.

use std::fmt;
use std::io;
use std::pin::Pin;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::Stream;
use tokio::io::AsyncReadExt;

use super::core::{Transfer, IO_TIMEOUT, READ_CHUNK};
use super::error::{in_step, timed_out};
use super::pool::Session;

/// A RETR in progress, read in chunks by the caller's reader.
pub(super) struct Download {
    pub(super) session: Option<Session>,
    pub(super) transfer: Option<Transfer>,
    pub(super) remaining: u64,
    /// The range runs to the end of the object: read the server's 226 after it.
    pub(super) to_end: bool,
    pub(super) what: String,
}

impl Download {
    pub(super) fn into_stream(self) -> Pin<Box<dyn Stream<Item = io::Result<Bytes>> + Send>> {
        Box::pin(futures::stream::unfold(Some(self), |state| async move {
            let mut download = state?;
            match download.next_chunk().await {
                Ok(Some(chunk)) => Some((Ok(chunk), Some(download))),
                Ok(None) => None,
                Err(e) => Some((Err(e), None)),
            }
        }))
    }

    fn io_error(&self, kind: io::ErrorKind, detail: impl fmt::Display) -> io::Error {
        io::Error::new(kind, format!("{}: {detail}", self.what))
    }

    async fn next_chunk(&mut self) -> io::Result<Option<Bytes>> {
        let limit = self
            .session
            .as_ref()
            .map_or(IO_TIMEOUT, |s| s.inner.io_timeout);
        if self.remaining == 0 {
            self.finish(limit).await?;
            return Ok(None);
        }
        let transfer = self.transfer.as_mut().expect("reading until finished");
        let want = self.remaining.min(READ_CHUNK as u64);
        let mut buf = BytesMut::with_capacity(want as usize);
        let read =
            tokio::time::timeout(limit, (&mut *transfer).take(want).read_buf(&mut buf)).await;
        match read {
            Ok(Ok(0)) => Err(self.io_error(
                io::ErrorKind::UnexpectedEof,
                format_args!(
                    "the server closed the data connection with {} bytes still to come; retry",
                    self.remaining
                ),
            )),
            Ok(Ok(n)) => {
                self.remaining -= n as u64;
                Ok(Some(buf.freeze()))
            }
            Ok(Err(e)) => Err(self.io_error(e.kind(), e)),
            Err(_) => Err(self.io_error(
                io::ErrorKind::TimedOut,
                format_args!(
                    "no data from the server within {} s; retry",
                    limit.as_secs()
                ),
            )),
        }
    }

    pub(super) async fn finish(&mut self, limit: Duration) -> io::Result<()> {
        let (Some(mut session), Some(transfer)) = (self.session.take(), self.transfer.take())
        else {
            return Ok(());
        };
        if self.to_end {
            // All bytes are here; the 226 says the server sent the whole file.
            let finished = match tokio::time::timeout(limit, transfer.finish()).await {
                Ok(r) => r,
                Err(_) => Err(timed_out(limit)),
            };
            session.reusable = in_step(&finished);
            return finished.map_err(|e| self.io_error(io::ErrorKind::Other, e));
        }
        // The range ends before the file: stop the rest. The abort's replies
        // differ between servers (and with the timing), so the connection is
        // not reused.
        session.reusable = false;
        if let Some(client) = session.client.as_mut() {
            let _ = tokio::time::timeout(limit, client.abort(transfer)).await;
        }
        Ok(())
    }
}

impl Drop for Download {
    fn drop(&mut self) {
        let (Some(mut session), Some(transfer)) = (self.session.take(), self.transfer.take())
        else {
            return;
        };
        // Dropped before the end: ABOR in the background, then close.
        session.reusable = false;
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                let limit = session.inner.io_timeout;
                if let Some(client) = session.client.as_mut() {
                    let _ = tokio::time::timeout(limit, client.abort(transfer)).await;
                }
            });
        }
    }
}
