//! The conformance suite against the FTP backend and a real FTP server
//! (libunftp, in-process on 127.0.0.1): plain FTP with MLSD, the LIST
//! fallback, and explicit FTPS.

use std::time::{Duration, Instant};

use crate::util::ftp::{files, FaultProxy, FtpServer, TestCa};
use anyhow::{ensure, Result};
use backup_storage::{conformance, FtpStorage, Storage};

/// Runs the suite on a multi-threaded runtime (the suite's future must be
/// Send), then checks that no file is left on the server's disk.
async fn run_suite(
    store: FtpStorage,
    root: &std::path::Path,
    config: conformance::Config,
) -> Result<()> {
    let shown = store.to_string();
    let suite = tokio::spawn(async move {
        conformance::run_all_with(&store, "run-1/", &config)
            .await
            .map_err(|e| e.to_string())
    });
    suite.await?.map_err(anyhow::Error::msg)?;
    // The temporary files of dropped uploads are deleted in the background:
    // give that a moment, then nothing may be left, hidden files included.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left = files(root);
        if left.is_empty() {
            return Ok(());
        }
        ensure!(
            Instant::now() < deadline,
            "left behind on {shown}: {left:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ftp_storage_passes_the_conformance_suite() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let server = FtpServer::start(dir.path())?;
    let store = server.storage().build()?;
    assert_eq!(
        store.to_string(),
        format!("ftp://backup@127.0.0.1:{}/", server.addr.port())
    );
    assert!(!store.capabilities().conditional_create);
    assert!(store.capabilities().atomic_publish);
    run_suite(store, dir.path(), conformance::Config::default()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_list_fallback_passes_the_conformance_suite() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let server = FtpServer::start(dir.path())?;
    let store = server.storage().force_list(true).build()?;
    run_suite(store, dir.path(), conformance::Config::default()).await
}

// Known issue, kept visible: with 16 parallel FTPS connections on a
// multi-threaded runtime, a control connection occasionally stops getting
// replies (seen against libunftp and pure-ftpd; the client stack
// suppaftp + tokio-rustls is suspected, not the servers). The engine itself
// uses one connection at a time. This run uses a current-thread runtime, where
// the stall was never observed, so the suite checks FTPS behaviour
// deterministically; the plain-FTP runs stay multi-threaded.
#[tokio::test(flavor = "current_thread")]
async fn ftps_passes_the_conformance_suite() -> Result<()> {
    let ca = TestCa::new()?;
    let dir = tempfile::tempdir()?;
    let server = FtpServer::start_on(dir.path(), 0, Some(&ca))?;
    // Through the proxy that works around libunftp's AUTH TLS race (see
    // FaultProxy); data connections go to the server directly.
    let proxy = FaultProxy::start(server.addr).await?;
    let store = server
        .storage()
        .port(proxy.addr.port())
        .tls_ca_pem(ca.ca_pem.as_bytes())
        .build()?;
    assert!(
        store.to_string().starts_with("ftps://backup@127.0.0.1:"),
        "{store}"
    );
    run_suite(store, dir.path(), conformance::Config::default()).await
}

#[tokio::test]
async fn ftps_refuses_a_certificate_of_an_unknown_ca() -> Result<()> {
    let ca = TestCa::new()?;
    let other_ca = TestCa::new()?;
    let dir = tempfile::tempdir()?;
    let server = FtpServer::start_on(dir.path(), 0, Some(&ca))?;
    let store = server
        .storage()
        .tls_ca_pem(other_ca.ca_pem.as_bytes())
        .build()?;
    let err = store
        .list("", false)
        .await
        .expect_err("an untrusted certificate");
    let msg = format!("{err}: {:?}", std::error::Error::source(&err));
    assert!(msg.contains("TLS"), "{msg}");
    assert!(
        !err.is_transient(),
        "retrying cannot fix a certificate: {err:?}"
    );
    Ok(())
}
