//! The FTP backend when things go wrong, against a real FTP server (libunftp,
//! in-process on 127.0.0.1): wrong credentials, a missing directory, a server
//! that dies mid-upload, a reset download, servers that cannot be reached;
//! and what lies on the server's disk meanwhile.

use std::time::{Duration, Instant};

use crate::util::ftp::{files, FaultProxy, FtpServer, PASSWORD, USER};
use anyhow::Result;
use backup_storage::{
    open_url, Error, FtpStorage, FtpStorageBuilder, OpenOptions, PutMode, PutOptions, Storage,
    StorageExt,
};
use bytes::Bytes;
use tokio::io::AsyncReadExt;

/// Bytes that tell where they come from: byte i is i mod 251.
fn pattern(len: usize) -> Bytes {
    (0..len)
        .map(|i| (i % 251) as u8)
        .collect::<Vec<u8>>()
        .into()
}

fn chain(e: &dyn std::error::Error) -> String {
    let mut msg = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        source = s.source();
    }
    msg
}

#[tokio::test]
async fn wrong_credentials_are_unauthenticated() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let server = FtpServer::start(dir.path())?;
    for store in [
        server.storage().password("not the password").build()?,
        server.storage().user("intruder").build()?,
    ] {
        let err = store.list("", false).await.expect_err("wrong credentials");
        let msg = chain(&err);
        assert!(matches!(err, Error::Unauthenticated { .. }), "{err:?}");
        assert!(msg.contains("rejected user"), "{msg}");
        assert!(msg.contains("~/.netrc or BACKUP_FTP_PASSWORD"), "{msg}");
        assert!(!msg.contains("not the password"), "{msg}");
        assert!(!err.is_transient());
    }
    Ok(())
}

#[tokio::test]
async fn a_missing_base_directory_is_not_found() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let server = FtpServer::start(dir.path())?;
    let store = server.storage().path("no/such/dir").build()?;
    let err = store.head("gw.bkp").await.expect_err("missing directory");
    assert!(matches!(err, Error::NotFound { .. }), "{err:?}");
    assert!(
        err.to_string()
            .contains("directory no/such/dir does not exist"),
        "{err}"
    );
    let err = store
        .put_bytes("gw.bkp", Bytes::from_static(b"x"), PutMode::Create)
        .await
        .expect_err("missing directory");
    assert!(matches!(err, Error::NotFound { .. }), "{err:?}");
    assert_eq!(files(dir.path()), Vec::<String>::new());
    Ok(())
}

#[tokio::test]
async fn the_url_path_is_the_storage_directory() -> Result<()> {
    let dir = tempfile::tempdir()?;
    std::fs::create_dir_all(dir.path().join("my backups/site"))?;
    let server = FtpServer::start(dir.path())?;
    let url = format!(
        "ftp://{USER}@127.0.0.1:{}/my%20backups/site/",
        server.addr.port()
    );
    let store = FtpStorageBuilder::from_url(&url)?
        .password(PASSWORD)
        .build()?;
    assert_eq!(store.to_string(), url.trim_end_matches('/'));
    store
        .put_bytes("gw/1.bkp", Bytes::from_static(b"image"), PutMode::Create)
        .await?;
    assert_eq!(
        std::fs::read(dir.path().join("my backups/site/gw/1.bkp"))?,
        b"image"
    );
    assert_eq!(store.list("gw/", true).await?.objects[0].name, "gw/1.bkp");

    // Through the URL dispatcher: a password in the URL never gets further.
    let with_password = format!("ftp://{USER}:hunter2@127.0.0.1:{}/", server.addr.port());
    let err = open_url(&with_password, &OpenOptions::default()).expect_err("password in URL");
    assert!(matches!(err, Error::InvalidUrl { .. }), "{err:?}");
    assert!(!format!("{err} {err:?}").contains("hunter2"), "{err:?}");
    Ok(())
}

#[tokio::test]
async fn an_upload_lives_under_a_hidden_name_until_complete() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let server = FtpServer::start(dir.path())?;
    let store = server.storage().build()?;

    let mut up = store
        .put_opts("site/gw.bkp", PutOptions::mode(PutMode::Create))
        .await?;
    up.write(Bytes::from_static(b"partial image")).await?;
    // The server creates the file when the data connection delivers.
    let deadline = Instant::now() + Duration::from_secs(10);
    while files(dir.path()).is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let on_disk = files(dir.path());
    assert_eq!(on_disk.len(), 1, "{on_disk:?}");
    assert!(
        on_disk[0].starts_with("site/.gw.bkp.partial-"),
        "{on_disk:?}"
    );
    assert!(matches!(
        store.head("site/gw.bkp").await,
        Err(Error::NotFound { .. })
    ));
    assert_eq!(store.list("", false).await?, Default::default());
    assert_eq!(store.list("", true).await?, Default::default());

    let meta = up.complete().await?;
    assert_eq!((meta.name.as_str(), meta.size), ("site/gw.bkp", 13));
    assert!(meta.modified.is_some());
    assert_eq!(files(dir.path()), ["site/gw.bkp"]);
    assert_eq!(
        std::fs::read(dir.path().join("site/gw.bkp"))?,
        b"partial image"
    );

    // Overwrite replaces through the same rename.
    store
        .put_bytes("site/gw.bkp", Bytes::from_static(b"v2"), PutMode::Overwrite)
        .await?;
    assert_eq!(std::fs::read(dir.path().join("site/gw.bkp"))?, b"v2");
    assert_eq!(files(dir.path()), ["site/gw.bkp"]);
    Ok(())
}

#[tokio::test]
async fn a_lost_create_race_is_refused_at_completion() -> Result<()> {
    // Not atomic on FTP (conditional_create is off), but two Create uploads
    // completing one after the other must not both publish.
    let dir = tempfile::tempdir()?;
    let server = FtpServer::start(dir.path())?;
    let store = server.storage().build()?;
    let mut first = store
        .put_opts("gw.bkp", PutOptions::mode(PutMode::Create))
        .await?;
    let mut second = store
        .put_opts("gw.bkp", PutOptions::mode(PutMode::Create))
        .await?;
    first.write(Bytes::from_static(b"first")).await?;
    second.write(Bytes::from_static(b"second")).await?;
    first.complete().await?;
    let err = second.complete().await.expect_err("the name was taken");
    assert!(matches!(err, Error::AlreadyExists { .. }), "{err:?}");
    assert_eq!(files(dir.path()), ["gw.bkp"]);
    assert_eq!(std::fs::read(dir.path().join("gw.bkp"))?, b"first");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_killed_mid_upload_leaves_no_object() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let server = FtpServer::start(dir.path())?;
    let port = server.addr.port();
    let store = server
        .storage()
        .io_timeout(Duration::from_secs(5))
        .build()?;
    // An idle pooled connection that the kill will leave dead.
    store.list("", false).await?;

    let mut up = store
        .put_opts("site/big.bkp", PutOptions::mode(PutMode::Create))
        .await?;
    let chunk = pattern(1 << 20);
    for _ in 0..4 {
        up.write(chunk.clone()).await?;
    }
    server.kill();
    let started = Instant::now();
    let mut written = Ok(());
    for _ in 0..256 {
        written = up.write(chunk.clone()).await;
        if written.is_err() {
            break;
        }
    }
    let outcome = match written {
        Err(e) => Err(e),
        Ok(()) => up.complete().await.map(drop),
    };
    let err = outcome.expect_err("the server is gone");
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "{:?}",
        started.elapsed()
    );
    assert!(err.is_transient(), "{err:?}");
    assert!(err.to_string().contains("uploading site/big.bkp"), "{err}");
    let on_disk = files(dir.path());
    assert!(
        !on_disk.contains(&"site/big.bkp".to_owned()),
        "a partial object under its final name: {on_disk:?}"
    );

    // The same directory served again: the same store recovers, past its
    // dead pooled connections, and the name is free.
    let _server = FtpServer::start_on(dir.path(), port, None)?;
    let data = pattern(3 << 20);
    store
        .put_bytes("site/big.bkp", data.clone(), PutMode::Create)
        .await?;
    assert_eq!(std::fs::read(dir.path().join("site/big.bkp"))?, data);
    assert_eq!(store.get_bytes("site/big.bkp", 4 << 20).await?, data);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_download_whose_connection_is_reset_fails_promptly() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let server = FtpServer::start(dir.path())?;
    let proxy = FaultProxy::start(server.addr).await?;
    let store = FtpStorage::builder()
        .host("127.0.0.1")
        .port(proxy.addr.port())
        .user(USER)
        .password(PASSWORD)
        .build()?;
    let data = pattern(8 << 20);
    store
        .put_bytes("big.bin", data.clone(), PutMode::Create)
        .await?;

    proxy.reset_data_after(1 << 20);
    let got = store.get_opts("big.bin", None).await?;
    let started = Instant::now();
    let mut reader = got.reader;
    let copied = tokio::time::timeout(
        Duration::from_secs(30),
        tokio::io::copy(&mut reader, &mut tokio::io::sink()),
    )
    .await
    .expect("a reset download fails, it does not hang");
    let err = copied.expect_err("the data connection was reset");
    assert!(started.elapsed() < Duration::from_secs(30));
    let msg = err.to_string();
    assert!(msg.contains("reading big.bin from ftp://"), "{msg}");
    assert!(
        matches!(
            err.kind(),
            std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::UnexpectedEof
        ),
        "{err:?}"
    );
    drop(reader);

    // The next download runs on a fresh connection and is whole.
    assert_eq!(store.get_bytes("big.bin", 8 << 20).await?, data);
    Ok(())
}

#[tokio::test]
async fn a_ranged_read_dropped_early_leaves_the_store_usable() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let server = FtpServer::start(dir.path())?;
    let store = server.storage().build()?;
    let data = pattern(4 << 20);
    store
        .put_bytes("big.bin", data.clone(), PutMode::Create)
        .await?;
    for _ in 0..3 {
        let got = store.get_opts("big.bin", Some(1000..3_000_000)).await?;
        let mut reader = got.reader;
        let mut head = [0u8; 10];
        reader.read_exact(&mut head).await?;
        assert_eq!(head[..], data[1000..1010]);
        drop(reader);
    }
    // A range that ends before the object: read whole, then aborted.
    let got = store.get_opts("big.bin", Some(5..70_000)).await?;
    let mut buf = Vec::new();
    got.reader.take(1 << 20).read_to_end(&mut buf).await?;
    assert_eq!(buf[..], data[5..70_000]);
    assert_eq!(store.get_bytes("big.bin", 4 << 20).await?, data);
    Ok(())
}

#[tokio::test]
async fn a_closed_port_fails_at_once() -> Result<()> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let store = FtpStorage::builder()
        .host("127.0.0.1")
        .port(port)
        .user(USER)
        .password(PASSWORD)
        .build()?;
    let started = Instant::now();
    let err = store.head("gw.bkp").await.expect_err("nothing listens");
    assert!(started.elapsed() < Duration::from_secs(30));
    assert!(err.is_transient(), "{err:?}");
    assert!(
        err.to_string()
            .contains(&format!("connecting to ftp://backup@127.0.0.1:{port}/")),
        "{err}"
    );
    Ok(())
}

#[tokio::test]
async fn a_server_that_never_greets_times_out() -> Result<()> {
    // Connections complete in the kernel's backlog, but nothing answers.
    let silent = std::net::TcpListener::bind("127.0.0.1:0")?;
    let store = FtpStorage::builder()
        .host("127.0.0.1")
        .port(silent.local_addr()?.port())
        .user(USER)
        .password(PASSWORD)
        .build()?;
    let started = Instant::now();
    let err = store.list("", true).await.expect_err("no greeting");
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_secs(9) && elapsed < Duration::from_secs(30),
        "the 10 s connect limit: {elapsed:?}"
    );
    assert!(err.is_transient(), "{err:?}");
    assert!(err.to_string().contains("within 10 s"), "{err}");
    drop(silent);
    Ok(())
}
