//! Uploads: `STOR` into a hidden temporary name, published by `RNFR`/`RNTO`.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use suppaftp::FtpError;
use tokio::io::AsyncWriteExt;

use super::core::{Inner, Transfer};
use super::error::{in_step, reply_code, timed_out, Op};
use super::pool::{ftp, Session};
use crate::{Error, ObjectMeta, PutMode, Result, Upload};

pub(super) struct FtpUpload {
    pub(super) inner: Arc<Inner>,
    /// The control connection of the transfer; `None` once completed or aborted.
    pub(super) session: Option<Session>,
    /// The data connection; `None` once closed.
    pub(super) transfer: Option<Transfer>,
    pub(super) name: String,
    pub(super) temp: String,
    pub(super) mode: PutMode,
    pub(super) written: u64,
    /// A write failed or was cancelled: what the server holds is unknown.
    pub(super) broken: bool,
    /// Completed or aborted: nothing for `Drop` to clean up.
    pub(super) done: bool,
}

impl FtpUpload {
    pub(super) fn what(&self) -> String {
        format!("uploading {} to {}", self.name, self.inner.url())
    }

    /// Why a write failed: a server that runs out of space says so on the
    /// control connection (452/552) and drops the data connection, which is
    /// all the write itself sees.
    async fn write_failure(&mut self, e: io::Error) -> Error {
        if let (Some(transfer), Some(session)) = (self.transfer.take(), self.session.as_mut()) {
            session.reusable = false;
            if let Ok(Err(reply @ FtpError::UnexpectedResponse(_))) =
                tokio::time::timeout(Duration::from_secs(2), transfer.finish()).await
            {
                return self.inner.error(Op::Write, self.what(), reply);
            }
        }
        self.inner
            .error(Op::Write, self.what(), FtpError::ConnectionError(e))
    }

    /// Closes the data connection, then publishes the temporary file.
    async fn publish(&mut self) -> Result<ObjectMeta> {
        let inner = Arc::clone(&self.inner);
        let what = self.what();
        let session = self.session.as_mut().expect("an upload completes once");
        let transfer = self.transfer.take().expect("an upload completes once");
        session.reusable = false;
        let finished = match tokio::time::timeout(inner.io_timeout, transfer.finish()).await {
            Ok(r) => r,
            Err(_) => Err(timed_out(inner.io_timeout)),
        };
        session.reusable = in_step(&finished);
        finished.map_err(|e| inner.error(Op::Write, what.clone(), e))?;

        // The server's size of the temporary file must be what we sent: a
        // transfer cut short by the server can still end in 226.
        let stored = session.stat(&self.temp).await?;
        let modified = match stored {
            Some(entry) if entry.size == self.written => entry.modified,
            other => {
                return Err(Error::Other {
                    what: format!(
                        "{what}: the server holds {} bytes of the {} sent; retry the upload",
                        other.map_or(0, |e| e.size),
                        self.written
                    ),
                    source: None,
                })
            }
        };
        if self.mode == PutMode::Create && session.stat(&self.name).await?.is_some() {
            return Err(Error::AlreadyExists {
                what: format!("object {} in {}", self.name, inner.url()),
            });
        }
        let name = self.name.as_str();
        let (temp, target) = (inner.abs(&self.temp), inner.abs(name));
        let (temp, target) = (temp.as_str(), target.as_str());
        let renamed = ftp!(session, |c| c.rename(temp, target));
        if let Err(e) = renamed {
            // Servers that refuse to rename onto an existing file (RFC 959
            // leaves it open): replace it in two steps.
            let replaceable = matches!(reply_code(&e), Some(550 | 553))
                && self.mode == PutMode::Overwrite
                && session.stat(name).await?.is_some();
            if !replaceable {
                return Err(inner.error(Op::Write, what, e));
            }
            tracing::debug!(name, url = %inner.url(), "the server does not rename onto an existing file: deleting it first");
            session.remove(name).await?;
            ftp!(session, |c| c.rename(temp, target))
                .map_err(|e| inner.error(Op::Write, what.clone(), e))?;
        }
        Ok(ObjectMeta {
            name: self.name.clone(),
            size: self.written,
            modified,
        })
    }
}

/// Closes an upload's data connection and deletes its temporary file, on the
/// upload's own connection if it is still usable.
async fn discard(
    inner: Arc<Inner>,
    session: Option<Session>,
    transfer: Option<Transfer>,
    temp: String,
) -> Result<()> {
    let mut session = session;
    if let Some(transfer) = transfer {
        // Ending the data connection ends the STOR (the server keeps what it
        // got, under the temporary name); ABOR's replies differ between servers.
        let finished = tokio::time::timeout(inner.io_timeout, transfer.finish()).await;
        if let Some(s) = session.as_mut() {
            s.reusable = matches!(finished, Ok(ref r) if in_step(r));
        }
    }
    let mut session = match session {
        Some(s) if s.reusable => s,
        _ => inner.session().await?,
    };
    session.remove(&temp).await.map(drop)
}

#[async_trait]
impl Upload for FtpUpload {
    async fn write(&mut self, chunk: Bytes) -> Result<()> {
        if self.broken || self.transfer.is_none() {
            return Err(Error::Other {
                what: format!(
                    "{}: an earlier write failed or was cancelled; start the upload again",
                    self.what()
                ),
                source: None,
            });
        }
        if chunk.is_empty() {
            return Ok(());
        }
        let limit = self.inner.io_timeout;
        let transfer = self.transfer.as_mut().expect("checked above");
        self.broken = true;
        match tokio::time::timeout(limit, transfer.write_all(&chunk)).await {
            Ok(Ok(())) => {
                self.broken = false;
                self.written += chunk.len() as u64;
                Ok(())
            }
            Ok(Err(e)) => Err(self.write_failure(e).await),
            Err(_) => Err(self.inner.error(Op::Write, self.what(), timed_out(limit))),
        }
    }

    async fn complete(mut self: Box<Self>) -> Result<ObjectMeta> {
        if self.broken || self.transfer.is_none() {
            return Err(Error::upload_broken(self.what()));
        }
        let published = self.publish().await;
        self.done = true;
        if published.is_err() {
            let (inner, session, transfer) = (
                Arc::clone(&self.inner),
                self.session.take(),
                self.transfer.take(),
            );
            if let Err(e) = discard(inner, session, transfer, self.temp.clone()).await {
                tracing::warn!(temp = %self.temp, url = %self.inner.url(), error = %e, "could not remove the temporary file of a failed upload");
            }
        }
        published
    }

    async fn abort(mut self: Box<Self>) -> Result<()> {
        self.done = true;
        let (inner, session, transfer) = (
            Arc::clone(&self.inner),
            self.session.take(),
            self.transfer.take(),
        );
        discard(inner, session, transfer, self.temp.clone())
            .await
            .map_err(|e| Error::Other {
                what: format!(
                    "{}: removing the temporary file {} (hidden from listings)",
                    self.what(),
                    self.temp
                ),
                source: Some(Box::new(e)),
            })
    }
}

impl Drop for FtpUpload {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        // Neither completed nor aborted (an error path, a cancelled task):
        // clean up in the background, best effort. The temporary file is
        // hidden from listings meanwhile, and if this fails.
        let (inner, session, transfer) = (
            Arc::clone(&self.inner),
            self.session.take(),
            self.transfer.take(),
        );
        let temp = std::mem::take(&mut self.temp);
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(async move {
                    let url = inner.url().to_owned();
                    if let Err(e) = discard(inner, session, transfer, temp.clone()).await {
                        tracing::warn!(%temp, %url, error = %e, "could not remove the temporary file of an abandoned upload");
                    }
                });
            }
            Err(_) => {
                tracing::warn!(%temp, url = %inner.url(), "an upload was abandoned outside a runtime: its temporary file stays (hidden)");
            }
        }
    }
}
