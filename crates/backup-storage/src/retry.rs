//! A retry layer shared by all backends: a `Storage` around a `Storage`.
//!
//! Transient errors (connection resets, timeouts, 5xx, FTP 4xx) are retried
//! with exponential backoff and full jitter, a bounded number of times, each
//! retry logged. Permanent errors (authentication, not found, no space) are
//! returned at once. Downloads that fail mid-stream resume from the byte
//! reached with a ranged request. Upload *data* is not replayed: a stream
//! cannot be rewound, so a failed upload fails (and is aborted, leaving
//! nothing visible) and the caller runs the backup again.
use std::fmt;
use std::future::Future;
use std::ops::Range;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use tokio::io::{AsyncRead, ReadBuf};

use crate::{
    Capabilities, Capacity, DirInfo, Error, GetResult, ListResult, ObjectMeta, PutOptions, Result,
    Storage, Upload,
};

/// How often and how patiently to retry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in all, the first included.
    pub attempts: u32,
    /// Delay before the first retry.
    pub base: Duration,
    /// Longest delay between attempts.
    pub max: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            attempts: 5,
            base: Duration::from_millis(250),
            max: Duration::from_secs(10),
        }
    }
}

impl RetryPolicy {
    /// The delay before retry number `retry` (1-based): full jitter over an
    /// exponentially growing window.
    pub fn delay(&self, retry: u32) -> Duration {
        let window = self
            .base
            .saturating_mul(1u32 << retry.saturating_sub(1).min(16))
            .min(self.max);
        let mut b = [0u8; 4];
        let _ = getrandom::getrandom(&mut b);
        let frac = f64::from(u32::from_le_bytes(b)) / f64::from(u32::MAX);
        window.mul_f64(0.5 + frac / 2.0)
    }

    async fn run<T, F, Fut>(&self, what: &str, mut op: F) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        let mut attempt = 1;
        loop {
            match op().await {
                Err(e) if e.is_transient() && attempt < self.attempts => {
                    let delay = self.delay(attempt);
                    tracing::warn!(operation = what, attempt, ?delay, error = %e, "transient storage error; retrying");
                    tokio::time::sleep(delay).await;
                    attempt += 1;
                }
                other => return other,
            }
        }
    }
}

/// Retries the transient failures of another storage.
pub struct RetryStorage {
    inner: Arc<dyn Storage>,
    policy: RetryPolicy,
}

impl RetryStorage {
    /// Wraps `inner`.
    pub fn new(inner: Arc<dyn Storage>, policy: RetryPolicy) -> RetryStorage {
        RetryStorage { inner, policy }
    }
}

impl fmt::Debug for RetryStorage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RetryStorage")
            .field("inner", &self.inner)
            .field("policy", &self.policy)
            .finish()
    }
}

impl fmt::Display for RetryStorage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.inner, f)
    }
}

#[async_trait]
impl Storage for RetryStorage {
    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }

    async fn put_opts(&self, name: &str, opts: PutOptions) -> Result<Box<dyn Upload>> {
        self.policy
            .run("put", || self.inner.put_opts(name, opts.clone()))
            .await
    }

    async fn get_opts(&self, name: &str, range: Option<Range<u64>>) -> Result<GetResult> {
        let first = self
            .policy
            .run("get", || self.inner.get_opts(name, range.clone()))
            .await?;
        let end = first.range.end;
        let reader = Resuming {
            storage: self.inner.clone(),
            policy: self.policy,
            name: name.to_string(),
            pos: first.range.start,
            end,
            reader: Some(first.reader),
            pending: None,
            failures: 0,
        };
        Ok(GetResult {
            meta: first.meta,
            range: first.range,
            reader: Box::new(reader),
        })
    }

    async fn head(&self, name: &str) -> Result<ObjectMeta> {
        self.policy.run("head", || self.inner.head(name)).await
    }

    async fn list(&self, prefix: &str, delimited: bool) -> Result<ListResult> {
        self.policy
            .run("list", || self.inner.list(prefix, delimited))
            .await
    }

    async fn delete(&self, name: &str) -> Result<()> {
        self.policy.run("delete", || self.inner.delete(name)).await
    }

    async fn capacity(&self) -> Result<Capacity> {
        self.policy.run("capacity", || self.inner.capacity()).await
    }

    async fn inspect_dir(&self, prefix: &str) -> Result<DirInfo> {
        self.policy
            .run("inspect", || self.inner.inspect_dir(prefix))
            .await
    }

    async fn presign_get(&self, name: &str, expires: Duration) -> Result<String> {
        self.policy
            .run("presign", || self.inner.presign_get(name, expires))
            .await
    }

    async fn write_at(&self, name: &str, offset: u64, data: bytes::Bytes) -> Result<()> {
        self.policy
            .run("write_at", || {
                self.inner.write_at(name, offset, data.clone())
            })
            .await
    }

    async fn remove_stale_uploads(&self, older_than: Duration) -> Result<Vec<String>> {
        self.policy
            .run("remove stale uploads", || {
                self.inner.remove_stale_uploads(older_than)
            })
            .await
    }
}

type Reopen = Pin<Box<dyn Future<Output = Result<GetResult>> + Send>>;

/// A download that, when the connection breaks, asks again from where it
/// stopped (a bounded number of times).
struct Resuming {
    storage: Arc<dyn Storage>,
    policy: RetryPolicy,
    name: String,
    pos: u64,
    end: u64,
    reader: Option<crate::ByteReader>,
    pending: Option<(Reopen, Pin<Box<tokio::time::Sleep>>)>,
    failures: u32,
}

fn transient_io(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(
        e.kind(),
        ConnectionReset | ConnectionAborted | BrokenPipe | TimedOut | UnexpectedEof | Interrupted
    ) || e
        .get_ref()
        .and_then(|i| i.downcast_ref::<Error>())
        .is_some_and(Error::is_transient)
}

impl AsyncRead for Resuming {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        loop {
            if let Some((reopen, sleep)) = this.pending.as_mut() {
                if sleep.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                match reopen.as_mut().poll(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Ok(got)) => {
                        this.reader = Some(got.reader);
                        this.pending = None;
                    }
                    Poll::Ready(Err(e)) => {
                        this.pending = None;
                        return Poll::Ready(Err(std::io::Error::other(e)));
                    }
                }
            }
            let Some(reader) = this.reader.as_mut() else {
                return Poll::Ready(Ok(()));
            };
            let before = buf.filled().len();
            match Pin::new(reader).poll_read(cx, buf) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(())) => {
                    let n = (buf.filled().len() - before) as u64;
                    this.pos += n;
                    if n == 0 && this.pos < this.end {
                        // The stream ended before the range did: resume.
                        let e = std::io::Error::new(
                            std::io::ErrorKind::UnexpectedEof,
                            "the download ended early",
                        );
                        if let Some(err) = this.schedule_resume(e) {
                            return Poll::Ready(Err(err));
                        }
                        continue;
                    }
                    return Poll::Ready(Ok(()));
                }
                Poll::Ready(Err(e)) if transient_io(&e) => {
                    if let Some(err) = this.schedule_resume(e) {
                        return Poll::Ready(Err(err));
                    }
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
            }
        }
    }
}

impl Resuming {
    /// Plans a ranged re-request from `pos`; gives the error back when out of attempts.
    fn schedule_resume(&mut self, e: std::io::Error) -> Option<std::io::Error> {
        self.failures += 1;
        if self.failures >= self.policy.attempts {
            return Some(std::io::Error::new(
                e.kind(),
                format!(
                    "downloading {} failed after {} attempts at byte {}: {e}",
                    self.name, self.failures, self.pos
                ),
            ));
        }
        let delay = self.policy.delay(self.failures);
        tracing::warn!(object = %self.name, at = self.pos, ?delay, error = %e, "download interrupted; resuming");
        self.reader = None;
        let (storage, name, range) = (self.storage.clone(), self.name.clone(), self.pos..self.end);
        self.pending = Some((
            Box::pin(async move { storage.get_opts(&name, Some(range)).await }),
            Box::pin(tokio::time::sleep(delay)),
        ));
        None
    }
}
