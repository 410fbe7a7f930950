//! The retry layer against a storage that fails on purpose.
use std::ops::Range;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use backup_storage::{
    Capabilities, Capacity, Error, GetResult, ListResult, LocalStorage, ObjectMeta, PutMode,
    PutOptions, RetryPolicy, RetryStorage, Storage, StorageExt, Upload,
};
use tokio::io::{AsyncRead, AsyncReadExt, ReadBuf};

/// Fails the first `fail_calls` heads with a transient error, and cuts every
/// download after `cut_after` bytes (with a connection reset).
#[derive(Debug)]
struct Flaky {
    inner: LocalStorage,
    fail_calls: AtomicU32,
    heads: AtomicU32,
    gets: AtomicU32,
    cut_after: u64,
}

impl std::fmt::Display for Flaky {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "flaky:{}", self.inner)
    }
}

struct Cut {
    inner: backup_storage::ByteReader,
    left: u64,
}

impl AsyncRead for Cut {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if self.left == 0 {
            return Poll::Ready(Err(std::io::Error::new(
                std::io::ErrorKind::ConnectionReset,
                "reset by peer",
            )));
        }
        let max = (buf.remaining() as u64).min(self.left) as usize;
        let mut tmp = vec![0u8; max];
        let mut rb = ReadBuf::new(&mut tmp);
        match Pin::new(&mut self.inner).poll_read(cx, &mut rb) {
            Poll::Ready(Ok(())) => {
                let n = rb.filled().len();
                buf.put_slice(rb.filled());
                self.left -= n as u64;
                Poll::Ready(Ok(()))
            }
            other => other,
        }
    }
}

#[async_trait]
impl Storage for Flaky {
    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }
    async fn put_opts(
        &self,
        name: &str,
        opts: PutOptions,
    ) -> backup_storage::Result<Box<dyn Upload>> {
        self.inner.put_opts(name, opts).await
    }
    async fn get_opts(
        &self,
        name: &str,
        range: Option<Range<u64>>,
    ) -> backup_storage::Result<GetResult> {
        self.gets.fetch_add(1, Ordering::SeqCst);
        let mut got = self.inner.get_opts(name, range).await?;
        got.reader = Box::new(Cut {
            inner: got.reader,
            left: self.cut_after,
        });
        Ok(got)
    }
    async fn head(&self, name: &str) -> backup_storage::Result<ObjectMeta> {
        self.heads.fetch_add(1, Ordering::SeqCst);
        if self.fail_calls.load(Ordering::SeqCst) > 0 {
            self.fail_calls.fetch_sub(1, Ordering::SeqCst);
            return Err(Error::Transient {
                what: "HTTP 503 slow down".into(),
                source: None,
            });
        }
        self.inner.head(name).await
    }
    async fn list(&self, prefix: &str, delimited: bool) -> backup_storage::Result<ListResult> {
        self.inner.list(prefix, delimited).await
    }
    async fn delete(&self, name: &str) -> backup_storage::Result<()> {
        self.inner.delete(name).await
    }
    async fn capacity(&self) -> backup_storage::Result<Capacity> {
        self.inner.capacity().await
    }
    async fn presign_get(&self, name: &str, expires: Duration) -> backup_storage::Result<String> {
        self.inner.presign_get(name, expires).await
    }
}

fn fast() -> RetryPolicy {
    RetryPolicy {
        attempts: 4,
        base: Duration::from_millis(5),
        max: Duration::from_millis(20),
    }
}

fn flaky(dir: &std::path::Path, fail_calls: u32, cut_after: u64) -> Arc<Flaky> {
    Arc::new(Flaky {
        inner: LocalStorage::new(dir).unwrap(),
        fail_calls: AtomicU32::new(fail_calls),
        heads: AtomicU32::new(0),
        gets: AtomicU32::new(0),
        cut_after,
    })
}

#[tokio::test]
async fn transient_errors_are_retried_then_given_up() {
    let dir = tempfile::tempdir().unwrap();
    let f = flaky(dir.path(), 2, u64::MAX);
    let s = RetryStorage::new(f.clone(), fast());
    s.put_bytes("a", bytes::Bytes::from_static(b"x"), PutMode::Create)
        .await
        .unwrap();
    assert_eq!(s.head("a").await.unwrap().size, 1);
    assert_eq!(
        f.heads.load(Ordering::SeqCst),
        3,
        "two failures, then success"
    );

    let f = flaky(dir.path(), 100, u64::MAX);
    let s = RetryStorage::new(f.clone(), fast());
    let err = s.head("a").await.unwrap_err();
    assert!(err.is_transient());
    assert_eq!(f.heads.load(Ordering::SeqCst), 4, "bounded attempts");
}

#[tokio::test]
async fn permanent_errors_are_not_retried() {
    let dir = tempfile::tempdir().unwrap();
    let f = flaky(dir.path(), 0, u64::MAX);
    let s = RetryStorage::new(f.clone(), fast());
    assert!(matches!(
        s.head("missing").await,
        Err(Error::NotFound { .. })
    ));
    assert_eq!(f.heads.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_reset_download_resumes_where_it_stopped() {
    let dir = tempfile::tempdir().unwrap();
    let data: Vec<u8> = (0..1_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(dir.path().join("img"), &data).unwrap();
    // Every connection breaks after 300 kB: the 1 MB object needs 4 requests.
    let f = flaky(dir.path(), 0, 300_000);
    let s = RetryStorage::new(
        f.clone(),
        RetryPolicy {
            attempts: 6,
            ..fast()
        },
    );
    let mut got = s.get_opts("img", None).await.unwrap();
    let mut out = Vec::new();
    got.reader.read_to_end(&mut out).await.unwrap();
    assert!(out == data, "resumed download differs");
    assert_eq!(f.gets.load(Ordering::SeqCst), 4);

    // Too many resets: a clear error, not a hang.
    let f = flaky(dir.path(), 0, 100_000);
    let s = RetryStorage::new(
        f,
        RetryPolicy {
            attempts: 3,
            ..fast()
        },
    );
    let mut got = s.get_opts("img", None).await.unwrap();
    let err = got.reader.read_to_end(&mut Vec::new()).await.unwrap_err();
    assert!(err.to_string().contains("failed after 3 attempts"), "{err}");
}
