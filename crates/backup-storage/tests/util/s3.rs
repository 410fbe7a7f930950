//! A real S3 server for the tests: `s3s-fs` (SigV4-checking, files on disk)
//! served in-process by hyper on 127.0.0.1, in a runtime of its own so that a
//! test can kill it mid-request.
//!
//! Starting it never fails quietly: every step returns an error that fails
//! the test.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use backup_storage::S3Storage;
use hyper_util::rt::TokioIo;
use s3s::auth::SimpleAuth;
use s3s::service::S3ServiceBuilder;

/// The credentials the server accepts.
pub(crate) const ACCESS_KEY: &str = "AKIDBACKUPTESTS";
pub(crate) const SECRET_KEY: &str = "backup-tests-secret-key";
/// The bucket every server starts with.
pub(crate) const BUCKET: &str = "backups";

/// Object keys under a simulated Object Lock (s3s-fs has none).
#[derive(Clone, Default)]
pub(crate) struct Locks(Arc<std::sync::Mutex<std::collections::BTreeSet<String>>>);

impl Locks {
    pub(crate) fn lock(&self, key: &str) {
        self.0.lock().unwrap().insert(key.to_string());
    }
}

/// s3s-fs behind a filter that refuses to delete the locked keys the way
/// S3 does in a multi-object delete (the request the S3 client sends for a
/// delete): a 200 answer listing an `AccessDenied` error for each of them.
/// Only what a put, a head and a delete need is served.
struct LockingFs {
    inner: s3s_fs::FileSystem,
    locks: Locks,
}

#[async_trait::async_trait]
impl s3s::S3 for LockingFs {
    async fn head_object(
        &self,
        req: s3s::S3Request<s3s::dto::HeadObjectInput>,
    ) -> s3s::S3Result<s3s::S3Response<s3s::dto::HeadObjectOutput>> {
        self.inner.head_object(req).await
    }

    async fn put_object(
        &self,
        req: s3s::S3Request<s3s::dto::PutObjectInput>,
    ) -> s3s::S3Result<s3s::S3Response<s3s::dto::PutObjectOutput>> {
        self.inner.put_object(req).await
    }

    async fn delete_objects(
        &self,
        mut req: s3s::S3Request<s3s::dto::DeleteObjectsInput>,
    ) -> s3s::S3Result<s3s::S3Response<s3s::dto::DeleteObjectsOutput>> {
        let locked = self.locks.0.lock().unwrap().clone();
        let (refused, rest): (Vec<_>, Vec<_>) = std::mem::take(&mut req.input.delete.objects)
            .into_iter()
            .partition(|o| locked.contains(&o.key));
        req.input.delete.objects = rest;
        let mut answer = match req.input.delete.objects.is_empty() {
            true => s3s::S3Response::new(s3s::dto::DeleteObjectsOutput::default()),
            false => self.inner.delete_objects(req).await?,
        };
        let errors = refused
            .into_iter()
            .map(|o| s3s::dto::Error {
                code: Some("AccessDenied".into()),
                key: Some(o.key),
                message: Some("Access Denied because object protected by object lock.".into()),
                ..Default::default()
            })
            .collect::<Vec<_>>();
        if !errors.is_empty() {
            answer.output.errors = Some(errors);
        }
        Ok(answer)
    }
}

pub(crate) struct S3Server {
    pub(crate) addr: SocketAddr,
    root: PathBuf,
    /// Owns the root, for a server that created it.
    _dir: Option<tempfile::TempDir>,
    /// `None` once killed.
    runtime: Option<tokio::runtime::Runtime>,
    /// HTTP requests received so far.
    requests: Arc<AtomicUsize>,
}

impl S3Server {
    /// A server on a fresh root holding the empty bucket [`BUCKET`].
    pub(crate) fn start() -> Result<S3Server> {
        let dir = tempfile::tempdir().context("creating the S3 server's root")?;
        // s3s-fs keeps a bucket as a directory of its root.
        std::fs::create_dir(dir.path().join(BUCKET)).context("creating the bucket")?;
        let mut server = S3Server::start_at(dir.path())?;
        server._dir = Some(dir);
        Ok(server)
    }

    /// A server (on a new port) over the root of an earlier one: what a
    /// restarted S3 server sees.
    pub(crate) fn start_at(root: &Path) -> Result<S3Server> {
        S3Server::serve(root, None)
    }

    /// A server on a fresh root whose deletes of the keys `locks` holds
    /// are refused as S3 refuses them under Object Lock (s3s-fs has no
    /// object lock of its own).
    pub(crate) fn start_locking(locks: &Locks) -> Result<S3Server> {
        let dir = tempfile::tempdir().context("creating the S3 server's root")?;
        std::fs::create_dir(dir.path().join(BUCKET)).context("creating the bucket")?;
        let mut server = S3Server::serve(dir.path(), Some(locks.clone()))?;
        server._dir = Some(dir);
        Ok(server)
    }

    fn serve(root: &Path, locks: Option<Locks>) -> Result<S3Server> {
        // s3s-fs's error is no std error: carry its Debug text.
        let fs = s3s_fs::FileSystem::new(root)
            .map_err(|e| anyhow::anyhow!("opening {} for s3s-fs: {e:?}", root.display()))?;
        let service = {
            let mut b = match locks {
                Some(locks) => S3ServiceBuilder::new(LockingFs { inner: fs, locks }),
                None => S3ServiceBuilder::new(fs),
            };
            b.set_auth(SimpleAuth::from_single(ACCESS_KEY, SECRET_KEY));
            b.build()
        };
        let listener = std::net::TcpListener::bind("127.0.0.1:0")
            .context("binding the S3 server to 127.0.0.1")?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("s3s-fs")
            .enable_all()
            .build()
            .context("starting the S3 server's runtime")?;
        let listener = {
            let _guard = runtime.enter();
            tokio::net::TcpListener::from_std(listener)?
        };
        let requests = Arc::new(AtomicUsize::new(0));
        let counter = requests.clone();
        runtime.spawn(async move {
            loop {
                let Ok((socket, _)) = listener.accept().await else {
                    // Out of file descriptors or the like: do not spin.
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                };
                let service = service.clone();
                let counter = counter.clone();
                let counted = hyper::service::service_fn(move |req| {
                    counter.fetch_add(1, Ordering::SeqCst);
                    hyper::service::Service::call(&service, req)
                });
                tokio::spawn(async move {
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(socket), counted)
                        .await;
                });
            }
        });
        Ok(S3Server {
            addr,
            root: root.to_owned(),
            _dir: None,
            runtime: Some(runtime),
            requests,
        })
    }

    /// How many HTTP requests the server has received.
    pub(crate) fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }

    pub(crate) fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The server's files (the bucket is the directory [`BUCKET`]).
    pub(crate) fn root(&self) -> &Path {
        &self.root
    }

    /// Storage on [`BUCKET`] under `prefix`, with the right credentials.
    pub(crate) fn storage(&self, prefix: &str) -> Result<S3Storage> {
        Ok(S3Storage::builder()
            .bucket(BUCKET)
            .prefix(prefix)
            .endpoint(self.endpoint())
            .region("us-east-1")
            .credentials(ACCESS_KEY, SECRET_KEY)
            .build()?)
    }

    /// Files of unfinished multipart uploads in the server's root.
    pub(crate) fn pending_uploads(&self) -> Result<Vec<String>> {
        let mut out = Vec::new();
        for entry in std::fs::read_dir(&self.root)? {
            let name = entry?.file_name().to_string_lossy().into_owned();
            if name.starts_with(".upload") {
                out.push(name);
            }
        }
        Ok(out)
    }

    /// Waits (at most 10 s) until no multipart upload is pending: an abort
    /// made by `Drop` runs in a task of its own.
    pub(crate) async fn wait_no_pending_uploads(&self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let pending = self.pending_uploads()?;
            if pending.is_empty() {
                return Ok(());
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "multipart uploads still pending after 10 s: {pending:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Stops the server at once, as a crash would: connections are cut and
    /// the port closes.
    pub(crate) async fn kill(&mut self) -> Result<()> {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
        // The runtime drops its tasks (listener, connections) on its own
        // thread: wait until the port refuses connections.
        let deadline = Instant::now() + Duration::from_secs(10);
        while tokio::net::TcpStream::connect(self.addr).await.is_ok() {
            anyhow::ensure!(
                Instant::now() < deadline,
                "the killed S3 server still accepts connections"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(())
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            // Not `drop`: a runtime may not be dropped inside another one.
            runtime.shutdown_background();
        }
    }
}

/// A port on 127.0.0.1 where nothing listens.
pub(crate) fn closed_port() -> Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

/// Deterministic bytes for object contents.
pub(crate) fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| ((i as u64 * 2_654_435_761) >> 13) as u8 ^ seed)
        .collect()
}
