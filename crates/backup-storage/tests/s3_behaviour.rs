//! Behaviour of the S3 backend that the conformance suite cannot see:
//! credentials, missing buckets, interrupted transfers, dead and silent
//! servers, presigned URLs, where keys land. Against a real S3 server (s3s-fs
//! on 127.0.0.1), never a mock.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::util::s3::{closed_port, pattern, Locks, S3Server, ACCESS_KEY, BUCKET, SECRET_KEY};
use anyhow::{ensure, Context, Result};
use backup_storage::{
    Error, PutMode, PutOptions, RetryPolicy, RetryStorage, S3Storage, Storage, StorageExt,
};
use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const MIB: usize = 1 << 20;

/// The longest any failure may take to surface here: the client's bounded
/// retries take a few seconds, a hang takes forever.
const FAILURE_BOUND: Duration = Duration::from_secs(30);

fn storage_with(server: &S3Server, key: &str, secret: &str, bucket: &str) -> Result<S3Storage> {
    Ok(S3Storage::builder()
        .bucket(bucket)
        .prefix("p")
        .endpoint(server.endpoint())
        .credentials(key, secret)
        .build()?)
}

/// Writes `data` in 1 MiB pieces.
async fn write_all(
    up: &mut Box<dyn backup_storage::Upload>,
    data: &[u8],
) -> backup_storage::Result<()> {
    for piece in data.chunks(MIB) {
        up.write(Bytes::copy_from_slice(piece)).await?;
    }
    Ok(())
}

async fn read_all(store: &dyn Storage, name: &str) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    store
        .get_opts(name, None)
        .await?
        .reader
        .read_to_end(&mut out)
        .await?;
    Ok(out)
}

/// Head says NotFound and no listing shows the name, through a fresh client.
async fn expect_nothing_under(server: &S3Server, prefix: &str, name: &str) -> Result<()> {
    let fresh = server.storage(prefix)?;
    let head = fresh.head(name).await;
    ensure!(
        matches!(head, Err(Error::NotFound { .. })),
        "head {name}: expected NotFound, got {head:?}"
    );
    for delimited in [false, true] {
        let listing = fresh.list("", delimited).await?;
        ensure!(
            listing.objects.is_empty() && listing.prefixes.is_empty(),
            "listing (delimited: {delimited}): {listing:?}"
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejected_credentials_are_unauthenticated() -> Result<()> {
    let server = S3Server::start()?;
    server
        .storage("p")?
        .put_bytes("gw.bkp", Bytes::from_static(b"x"), PutMode::Create)
        .await?;
    for (key, secret, code) in [
        (ACCESS_KEY, "wrong-secret", "SignatureDoesNotMatch"),
        // AWS would say InvalidAccessKeyId.
        ("AKIDUNKNOWN", SECRET_KEY, "NotSignedUp"),
    ] {
        let store = storage_with(&server, key, secret, BUCKET)?;
        let outcomes = [
            ("list", store.list("", false).await.map(drop)),
            ("get", store.get_opts("gw.bkp", None).await.map(drop)),
            (
                "put",
                store
                    .put_bytes("new.bkp", Bytes::from_static(b"x"), PutMode::Overwrite)
                    .await
                    .map(drop),
            ),
            // Create checks with a HEAD first, which carries no error body:
            // the upload's own request still tells the credentials apart.
            (
                "put create",
                store
                    .put_bytes("new.bkp", Bytes::from_static(b"x"), PutMode::Create)
                    .await
                    .map(drop),
            ),
        ];
        for (op, outcome) in outcomes {
            let err = outcome.expect_err(op);
            ensure!(
                matches!(err, Error::Unauthenticated { .. }),
                "{op} with {code}: expected Unauthenticated, got {err:?}"
            );
            let msg = err.to_string();
            ensure!(
                msg.contains("rejected the credentials") && msg.contains(code),
                "{op}: {msg}"
            );
            ensure!(
                !msg.contains(SECRET_KEY) && !msg.contains("wrong-secret"),
                "{msg}"
            );
        }
    }
    Ok(())
}

/// The engine's retention keeps an image whose delete is refused as not
/// permitted (kept-by-lock): S3's `AccessDenied` on a locked object must
/// reach it as `PermissionDenied`, at once (no retries), the object kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delete_refused_by_object_lock_is_permission_denied() -> Result<()> {
    let locks = Locks::default();
    let server = S3Server::start_locking(&locks)?;
    let store = RetryStorage::new(Arc::new(server.storage("gw/")?), RetryPolicy::default());
    for name in ["locked.bkp", "free.bkp"] {
        store
            .put_bytes(name, Bytes::from_static(b"image"), PutMode::Create)
            .await?;
    }
    locks.lock("gw/locked.bkp");
    let before = server.requests();
    let err = store.delete("locked.bkp").await.expect_err("refused");
    ensure!(matches!(err, Error::PermissionDenied { .. }), "{err:?}");
    ensure!(server.requests() - before == 1, "not retried");
    ensure!(store.exists("locked.bkp").await?, "kept");
    store.delete("free.bkp").await?;
    ensure!(!store.exists("free.bkp").await?);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_bucket_is_not_found_and_named() -> Result<()> {
    let server = S3Server::start()?;
    let store = storage_with(&server, ACCESS_KEY, SECRET_KEY, "no-such-bucket")?;
    // Listing is what the engine does first. (On AWS a GET or PUT says
    // NoSuchBucket too; s3s-fs answers a GET with NoSuchKey and creates the
    // bucket's directory on a PUT.)
    let outcomes = [("list", store.list("", false).await.map(drop))];
    for (op, outcome) in outcomes {
        let err = outcome.expect_err(op);
        ensure!(matches!(err, Error::NotFound { .. }), "{op}: {err:?}");
        let msg = err.to_string();
        ensure!(
            msg.contains("bucket no-such-bucket does not exist")
                && msg.contains(&server.endpoint()),
            "{op}: {msg}"
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_and_aborted_multipart_uploads_leave_nothing() -> Result<()> {
    let server = S3Server::start()?;
    let store = server.storage("p")?;
    let data = pattern(20 * MIB, 1);

    for how in ["dropped", "aborted"] {
        // No size hint: 16 MiB parts, so one part has gone up by now.
        let mut up = store
            .put_opts("site/gw.bkp", PutOptions::mode(PutMode::Create))
            .await?;
        write_all(&mut up, &data).await?;
        ensure!(
            !server.pending_uploads()?.is_empty(),
            "{how}: a multipart upload should be under way"
        );
        if how == "dropped" {
            drop(up);
            // The abort runs in a task of its own.
            server.wait_no_pending_uploads().await.context(how)?;
        } else {
            up.abort().await?;
            assert_eq!(server.pending_uploads()?, Vec::<String>::new(), "{how}");
        }
        expect_nothing_under(&server, "p", "site/gw.bkp")
            .await
            .context(how)?;
    }

    // The name is free for a later upload.
    let mut up = store
        .put_opts(
            "site/gw.bkp",
            PutOptions::mode(PutMode::Create).with_size_hint(Some(data.len() as u64)),
        )
        .await?;
    write_all(&mut up, &data).await?;
    let meta = up.complete().await?;
    assert_eq!(meta.size, data.len() as u64);
    assert!(read_all(&store, "site/gw.bkp").await? == data);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_cut_by_a_dead_server_leaves_nothing() -> Result<()> {
    let mut server = S3Server::start()?;
    let store = server.storage("p")?;
    let data = pattern(30 * MIB, 2);

    // 5 MiB parts: two are up when the server dies.
    let mut up = store
        .put_opts(
            "gw.bkp",
            PutOptions::mode(PutMode::Create).with_size_hint(Some(0)),
        )
        .await?;
    write_all(&mut up, &data[..12 * MIB]).await?;
    server.kill().await?;

    let started = Instant::now();
    let outcome = async {
        write_all(&mut up, &data[12 * MIB..]).await?;
        up.complete().await
    }
    .await;
    let elapsed = started.elapsed();
    let err = outcome.expect_err("the server is dead");
    assert!(err.is_transient(), "{err:?}");
    assert!(elapsed < FAILURE_BOUND, "took {elapsed:?}");

    // The server comes back (on another port) over the same files.
    let server = S3Server::start_at(server.root())?;
    expect_nothing_under(&server, "p", "gw.bkp").await?;
    let store = server.storage("p")?;
    store
        .put_bytes("gw.bkp", Bytes::from_static(b"second try"), PutMode::Create)
        .await?;
    assert_eq!(read_all(&store, "gw.bkp").await?, b"second try");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_download_cut_by_a_dead_server_fails_in_bounded_time() -> Result<()> {
    let mut server = S3Server::start()?;
    let store = server.storage("p")?;
    let data = pattern(48 * MIB, 3);
    let mut up = store
        .put_opts(
            "gw.bkp",
            PutOptions::mode(PutMode::Create).with_size_hint(Some(data.len() as u64)),
        )
        .await?;
    write_all(&mut up, &data).await?;
    up.complete().await?;

    let mut got = store.get_opts("gw.bkp", None).await?;
    let mut first = vec![0; MIB];
    got.reader.read_exact(&mut first).await?;
    assert!(first[..] == data[..MIB]);
    server.kill().await?;

    let started = Instant::now();
    let mut rest = Vec::new();
    let err = got
        .reader
        .read_to_end(&mut rest)
        .await
        .expect_err("the download was cut");
    let elapsed = started.elapsed();
    assert!(elapsed < FAILURE_BOUND, "took {elapsed:?}");
    // The I/O error carries our error: transient, naming the object.
    let mapped = Error::from_io("reading gw.bkp", err);
    assert!(mapped.is_transient(), "{mapped:?}");
    let inner = std::error::Error::source(&mapped)
        .map(|s| s.to_string())
        .unwrap_or_default();
    assert!(
        inner.contains("reading gw.bkp from s3://backups/p"),
        "{inner}"
    );
    assert!(
        rest.len() < data.len() - MIB,
        "got everything: not a cut download"
    );
    Ok(())
}

#[tokio::test]
async fn an_unreachable_server_fails_in_bounded_time() -> Result<()> {
    let store = S3Storage::builder()
        .bucket(BUCKET)
        .endpoint(format!("http://127.0.0.1:{}", closed_port()?))
        .credentials(ACCESS_KEY, SECRET_KEY)
        .build()?;
    let started = Instant::now();
    let outcomes = [
        store.list("", false).await.map(drop),
        store.head("gw.bkp").await.map(drop),
        store
            .put_bytes("gw.bkp", Bytes::from_static(b"x"), PutMode::Overwrite)
            .await
            .map(drop),
    ];
    let elapsed = started.elapsed();
    for outcome in outcomes {
        let err = outcome.expect_err("nothing listens there");
        assert!(err.is_transient(), "{err:?}");
        assert!(
            err.to_string()
                .contains("check the network and the S3 server at http://127.0.0.1:"),
            "{err}"
        );
    }
    assert!(elapsed < FAILURE_BOUND, "took {elapsed:?}");
    Ok(())
}

#[tokio::test]
async fn a_server_that_never_answers_times_out() -> Result<()> {
    // Accepts connections and says nothing, like a hung server.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let silent = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    let store = S3Storage::builder()
        .bucket(BUCKET)
        .endpoint(format!("http://{addr}"))
        .credentials(ACCESS_KEY, SECRET_KEY)
        .request_timeout(Duration::from_secs(1))
        .build()?;
    let started = Instant::now();
    let err = store.list("", false).await.expect_err("no answer");
    let elapsed = started.elapsed();
    silent.abort();
    assert!(err.is_transient(), "{err:?}");
    assert!(
        elapsed >= Duration::from_secs(1),
        "took {elapsed:?}: no timeout?"
    );
    assert!(elapsed < FAILURE_BOUND, "took {elapsed:?}");
    Ok(())
}

#[tokio::test]
async fn connecting_is_bounded_when_syns_go_unanswered() -> Result<()> {
    // A listener whose accept queue is full drops further SYNs, as a
    // firewall that drops packets would: connecting hangs until the connect
    // timeout. (On loopback: no traffic leaves the machine.)
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind("127.0.0.1:0".parse()?)?;
    let listener = socket.listen(1)?;
    let addr = listener.local_addr()?;
    let mut fillers = Vec::new();
    loop {
        match tokio::time::timeout(
            Duration::from_millis(300),
            tokio::net::TcpStream::connect(addr),
        )
        .await
        {
            Ok(stream) => fillers.push(stream?),
            Err(_) => break, // this one hung: the queue is full
        }
        ensure!(fillers.len() < 64, "the accept queue never filled");
    }
    let store = S3Storage::builder()
        .bucket(BUCKET)
        .endpoint(format!("http://{addr}"))
        .credentials(ACCESS_KEY, SECRET_KEY)
        .connect_timeout(Duration::from_secs(1))
        .build()?;
    let started = Instant::now();
    let err = store.list("", false).await.expect_err("cannot connect");
    let elapsed = started.elapsed();
    assert!(err.is_transient(), "{err:?}");
    assert!(
        elapsed >= Duration::from_secs(1),
        "took {elapsed:?}: no timeout?"
    );
    assert!(elapsed < FAILURE_BOUND, "took {elapsed:?}");
    drop((listener, fillers));
    Ok(())
}

/// Fetches a URL with curl; returns the HTTP status and the body.
fn curl(url: &str) -> Result<(u16, Vec<u8>)> {
    // A child holds this process's descriptors from fork to exec: not while
    // the tmpfs tests count free space.
    let _turn = crate::util::FORKS.blocking_lock();
    let out = std::process::Command::new("curl")
        .args([
            "--silent",
            "--show-error",
            "--max-time",
            "20",
            "--write-out",
            "\n%{http_code}",
            url,
        ])
        .output()
        .context("running curl (is it installed?)")?;
    ensure!(
        out.status.success(),
        "curl failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut body = out.stdout;
    let newline = body
        .iter()
        .rposition(|&b| b == b'\n')
        .context("no status")?;
    let status = std::str::from_utf8(&body[newline + 1..])?.trim().parse()?;
    body.truncate(newline);
    Ok((status, body))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presigned_urls_serve_the_object_and_expire() -> Result<()> {
    let server = S3Server::start()?;
    let store = server.storage("p")?;
    assert!(store.capabilities().presign);
    let data = pattern(300_001, 4);
    store
        .put_bytes("site/gw 1.bkp", Bytes::from(data.clone()), PutMode::Create)
        .await?;

    let url = store
        .presign_get("site/gw 1.bkp", Duration::from_secs(3600))
        .await?;
    assert!(
        url.starts_with(&format!(
            "{}/{BUCKET}/p/site/gw%201.bkp?",
            server.endpoint()
        )),
        "{url}"
    );
    assert!(!url.contains(SECRET_KEY), "{url}");
    let (status, body) = tokio::task::spawn_blocking(move || curl(&url)).await??;
    assert_eq!(status, 200);
    assert!(body == data, "the presigned URL served other bytes");

    let url = store
        .presign_get("site/gw 1.bkp", Duration::from_secs(1))
        .await?;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let (status, body) = tokio::task::spawn_blocking(move || curl(&url)).await??;
    assert_eq!(status, 403, "{}", String::from_utf8_lossy(&body));

    let err = store
        .presign_get("site/gw 1.bkp", Duration::from_secs(8 * 24 * 3600))
        .await
        .expect_err("longer than S3 allows");
    assert!(
        err.to_string().contains("between 1 second and 7 days"),
        "{err}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_loses_to_an_object_that_appears_during_a_multipart_upload() -> Result<()> {
    let server = S3Server::start()?;
    let store = server.storage("p")?;
    let mut up = store
        .put_opts(
            "gw.bkp",
            PutOptions::mode(PutMode::Create).with_size_hint(Some(12 * MIB as u64)),
        )
        .await?;
    write_all(&mut up, &pattern(12 * MIB, 5)).await?;
    store
        .put_bytes(
            "gw.bkp",
            Bytes::from_static(b"got there first"),
            PutMode::Overwrite,
        )
        .await?;
    let err = up.complete().await.expect_err("the name was taken");
    assert!(matches!(err, Error::AlreadyExists { .. }), "{err:?}");
    assert_eq!(read_all(&store, "gw.bkp").await?, b"got there first");
    assert_eq!(
        server.pending_uploads()?,
        Vec::<String>::new(),
        "the loser was aborted"
    );

    // Below one part, the single PUT carries If-None-Match: *, which the
    // server enforces: the later of two racing Create uploads loses.
    let mut first = store
        .put_opts("small.bkp", PutOptions::mode(PutMode::Create))
        .await?;
    let mut second = store
        .put_opts("small.bkp", PutOptions::mode(PutMode::Create))
        .await?;
    first.write(Bytes::from_static(b"first")).await?;
    second.write(Bytes::from_static(b"second")).await?;
    first.complete().await?;
    let err = second.complete().await.expect_err("the name was taken");
    assert!(matches!(err, Error::AlreadyExists { .. }), "{err:?}");
    assert_eq!(read_all(&store, "small.bkp").await?, b"first");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_map_to_keys_below_the_prefix() -> Result<()> {
    let server = S3Server::start()?;
    let store = server.storage("/site-a/x/")?;
    assert_eq!(
        store.to_string(),
        format!(
            "s3://{BUCKET}/site-a/x?endpoint={}&region=us-east-1",
            server.endpoint()
        )
    );
    store
        .put_bytes("gw/1.bkp", Bytes::from_static(b"one"), PutMode::Create)
        .await?;
    assert_eq!(
        std::fs::read(server.root().join(BUCKET).join("site-a/x/gw/1.bkp"))?,
        b"one"
    );
    let parent = server.storage("site-a")?;
    let names: Vec<_> = parent
        .list("", false)
        .await?
        .objects
        .into_iter()
        .map(|o| o.name)
        .collect();
    assert_eq!(names, ["x/gw/1.bkp"]);
    assert_eq!(parent.list("", true).await?.prefixes, ["x/"]);
    // A sibling prefix that starts the same is another place.
    assert!(server
        .storage("site-a/x2")?
        .list("", false)
        .await?
        .objects
        .is_empty());
    assert!(server.storage("site-a/")?.head("x/gw/1.bkp").await.is_ok());
    // Names are checked as for every backend.
    for bad in ["../x", "/abs", "a//b", "a/./b", ""] {
        let err = store.head(bad).await.expect_err(bad);
        assert!(
            err.to_string().starts_with("invalid object name"),
            "{bad:?}: {err}"
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_and_out_of_range_reads() -> Result<()> {
    let server = S3Server::start()?;
    let store = server.storage("p")?;
    store
        .put_bytes("gw.bkp", Bytes::from_static(b"0123456789"), PutMode::Create)
        .await?;
    let got = store.get_opts("gw.bkp", Some(10..10)).await?;
    assert_eq!(got.range, 10..10, "an empty range at the end");
    let got = store.get_opts("gw.bkp", Some(3..3)).await?;
    assert_eq!((got.range, got.meta.size), (3..3, 10));
    // Starting at the end: empty, as on every backend.
    let got = store.get_opts("gw.bkp", Some(10..12)).await?;
    assert_eq!(got.range, 10..10);
    let (five, four) = (5, 4);
    for range in [11..12, 11..11, 20..30, five..four] {
        let err = store
            .get_opts("gw.bkp", Some(range.clone()))
            .await
            .expect_err("bad range");
        assert!(matches!(err, Error::Other { .. }), "{range:?}: {err:?}");
        assert!(
            err.to_string()
                .contains(&format!("cannot read bytes {range:?} of gw.bkp")),
            "{err}"
        );
    }
    assert!(store
        .get_opts("gw.bkp", Some(11..12))
        .await
        .expect_err("past the end")
        .to_string()
        .contains("the object has 10 bytes"));
    Ok(())
}

/// An error as an operator sees it: the message and its sources on one line.
fn full_message(e: &Error) -> String {
    let mut msg = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        source = s.source();
    }
    msg
}

/// The shared retry layer, with short delays.
fn with_retries(inner: Arc<dyn Storage>, attempts: u32) -> RetryStorage {
    RetryStorage::new(
        inner,
        RetryPolicy {
            attempts,
            base: Duration::from_millis(1),
            max: Duration::from_millis(5),
        },
    )
}

/// The longest message an operator should have to read for one failure.
const SHORT: usize = 400;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_s3_error_is_sent_once_and_told_in_one_short_line() -> Result<()> {
    let server = S3Server::start()?;
    let bucket = "Not_A_Valid_Bucket";
    let store = with_retries(
        Arc::new(storage_with(&server, ACCESS_KEY, SECRET_KEY, bucket)?),
        4,
    );
    let before = server.requests();
    let err = store
        .list("", false)
        .await
        .expect_err("invalid bucket name");
    ensure!(
        server.requests() - before == 1,
        "a refused request was sent {} times",
        server.requests() - before
    );
    let msg = full_message(&err);
    ensure!(
        msg.len() < SHORT && !msg.contains('\n'),
        "{} characters: {msg}",
        msg.len()
    );
    ensure!(msg.matches("InvalidBucketName").count() == 1, "{msg}");
    ensure!(
        msg.starts_with("listing") && msg.contains("HTTP 400") && msg.contains("[storage] url"),
        "{msg}"
    );
    Ok(())
}

/// A server on 127.0.0.1 that answers every request with `503 SlowDown`
/// and counts the requests.
async fn slow_down_server() -> Result<(String, Arc<AtomicUsize>, tokio::task::JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let count = Arc::new(AtomicUsize::new(0));
    let counter = count.clone();
    let task = tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let counter = counter.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match socket.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                counter.fetch_add(1, Ordering::SeqCst);
                let body = "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>SlowDown</Code>\
                            <Message>Please reduce your request rate.</Message></Error>";
                let answer = format!(
                    "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/xml\r\n\
                     Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = socket.write_all(answer.as_bytes()).await;
                let _ = socket.shutdown().await;
            });
        }
    });
    Ok((format!("http://{addr}"), count, task))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transient_s3_error_is_retried_by_one_layer_only() -> Result<()> {
    let (endpoint, requests, server) = slow_down_server().await?;
    let s3 = S3Storage::builder()
        .bucket(BUCKET)
        .endpoint(&endpoint)
        .credentials(ACCESS_KEY, SECRET_KEY)
        .build()?;
    let store = with_retries(Arc::new(s3), 3);
    let err = store.list("", false).await.expect_err("always 503");
    server.abort();
    ensure!(err.is_transient(), "{err:?}");
    ensure!(
        requests.load(Ordering::SeqCst) == 3,
        "{} requests for 3 attempts",
        requests.load(Ordering::SeqCst)
    );
    let msg = full_message(&err);
    ensure!(
        msg.len() < SHORT && !msg.contains('\n'),
        "{} characters: {msg}",
        msg.len()
    );
    ensure!(msg.matches("SlowDown").count() == 1, "{msg}");
    ensure!(msg.contains("HTTP 503") && msg.contains(&endpoint), "{msg}");

    // An upload request cannot be replayed by the retry layer (the data is
    // gone); the client, which still holds it, retries it 3 times instead.
    let (endpoint, requests, server) = slow_down_server().await?;
    let s3 = S3Storage::builder()
        .bucket(BUCKET)
        .endpoint(&endpoint)
        .credentials(ACCESS_KEY, SECRET_KEY)
        .build()?;
    let store = with_retries(Arc::new(s3), 3);
    let err = store
        .put_bytes("gw.bkp", Bytes::from_static(b"x"), PutMode::Overwrite)
        .await
        .expect_err("always 503");
    server.abort();
    ensure!(err.is_transient(), "{err:?}");
    ensure!(
        requests.load(Ordering::SeqCst) == 4,
        "{} requests for one PUT",
        requests.load(Ordering::SeqCst)
    );
    ensure!(full_message(&err).len() < SHORT, "{err}");
    Ok(())
}

/// Counts the listings that reach the storage it wraps.
#[derive(Debug)]
struct CountingLists {
    inner: S3Storage,
    lists: AtomicUsize,
}

impl std::fmt::Display for CountingLists {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.inner.fmt(f)
    }
}

#[async_trait::async_trait]
impl Storage for CountingLists {
    fn capabilities(&self) -> backup_storage::Capabilities {
        self.inner.capabilities()
    }
    async fn put_opts(
        &self,
        name: &str,
        opts: PutOptions,
    ) -> backup_storage::Result<Box<dyn backup_storage::Upload>> {
        self.inner.put_opts(name, opts).await
    }
    async fn get_opts(
        &self,
        name: &str,
        range: Option<std::ops::Range<u64>>,
    ) -> backup_storage::Result<backup_storage::GetResult> {
        self.inner.get_opts(name, range).await
    }
    async fn head(&self, name: &str) -> backup_storage::Result<backup_storage::ObjectMeta> {
        self.inner.head(name).await
    }
    async fn list(
        &self,
        prefix: &str,
        delimited: bool,
    ) -> backup_storage::Result<backup_storage::ListResult> {
        self.lists.fetch_add(1, Ordering::SeqCst);
        self.inner.list(prefix, delimited).await
    }
    async fn delete(&self, name: &str) -> backup_storage::Result<()> {
        self.inner.delete(name).await
    }
    async fn capacity(&self) -> backup_storage::Result<backup_storage::Capacity> {
        self.inner.capacity().await
    }
    async fn presign_get(&self, name: &str, expires: Duration) -> backup_storage::Result<String> {
        self.inner.presign_get(name, expires).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_connection_is_retried_and_told_in_one_short_line() -> Result<()> {
    let endpoint = format!("http://127.0.0.1:{}", closed_port()?);
    let counting = Arc::new(CountingLists {
        inner: S3Storage::builder()
            .bucket(BUCKET)
            .endpoint(&endpoint)
            .credentials(ACCESS_KEY, SECRET_KEY)
            .build()?,
        lists: AtomicUsize::new(0),
    });
    let store = with_retries(counting.clone(), 3);
    let err = store.list("", false).await.expect_err("nothing listens");
    ensure!(err.is_transient(), "{err:?}");
    ensure!(
        counting.lists.load(Ordering::SeqCst) == 3,
        "{} attempts",
        counting.lists.load(Ordering::SeqCst)
    );
    let msg = full_message(&err);
    ensure!(
        msg.len() < SHORT && !msg.contains('\n'),
        "{} characters: {msg}",
        msg.len()
    );
    ensure!(
        msg.contains("could not connect") && msg.contains(&endpoint),
        "{msg}"
    );
    Ok(())
}
