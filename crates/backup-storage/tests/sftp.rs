//! The sftp backend against a real OpenSSH sshd on 127.0.0.1: the
//! conformance suite, host keys that are not trusted, and a server killed
//! in the middle of an upload.

use std::time::{Duration, Instant};

use anyhow::{ensure, Result};
use backup_storage::{
    conformance, Error, PutMode, PutOptions, SftpStorage, SftpStorageBuilder, Storage, StorageExt,
};
use bytes::Bytes;

use crate::util::sshd::{files, fingerprint_of, Sshd};

/// A storage of `path` on `sshd`, with the test's key and known_hosts.
trait StorageOf {
    fn storage(&self, path: &std::path::Path) -> Result<SftpStorageBuilder>;
}

impl StorageOf for Sshd {
    fn storage(&self, path: &std::path::Path) -> Result<SftpStorageBuilder> {
        Ok(SftpStorageBuilder::from_url(&self.url(path))?
            .ssh_key(Some(self.key.clone()))
            .known_hosts(self.known_hosts.clone()))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sftp_storage_passes_the_conformance_suite() -> Result<()> {
    let _forks = crate::util::FORKS.lock().await;
    let sshd = Sshd::start()?;
    let root = tempfile::tempdir()?;
    let dir = root.path().join("store");
    let store = sshd.storage(&dir)?.build()?;
    assert_eq!(store.to_string(), sshd.url(&dir));
    assert!(store.capabilities().atomic_publish);
    let shown = store.to_string();
    let suite = tokio::spawn(async move {
        conformance::run_all(&store, "run-1/")
            .await
            .map_err(|e| e.to_string())
    });
    suite
        .await?
        .map_err(|e| anyhow::anyhow!("{e}\nsshd log:\n{}", sshd.log()))?;
    // Dropped uploads are cleaned up in the background.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left = files(root.path());
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
async fn capacity_comes_from_the_statvfs_extension() -> Result<()> {
    let _forks = crate::util::FORKS.lock().await;
    let sshd = Sshd::start()?;
    let root = tempfile::tempdir()?;
    let store = sshd.storage(root.path())?.build()?;
    let cap = store.capacity().await?;
    let vfs = rustix::fs::statvfs(root.path())?;
    assert_eq!(cap.total, Some(vfs.f_blocks * vfs.f_frsize), "{cap:?}");
    assert!(cap.free.is_some_and(|f| f > 0), "{cap:?}");
    Ok(())
}

/// The error of the first operation on `store`, which must be a refusal.
async fn refusal(store: &SftpStorage) -> String {
    match store.list("", false).await {
        Ok(l) => panic!("{store} was trusted and listed: {l:?}"),
        Err(e) => {
            assert!(
                !e.is_transient(),
                "a refused host key is not worth retrying: {e}"
            );
            e.to_string()
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_keys_that_are_not_trusted_are_refused_showing_the_fingerprint() -> Result<()> {
    let _forks = crate::util::FORKS.lock().await;
    let sshd = Sshd::start()?;
    let root = tempfile::tempdir()?;
    let elsewhere = tempfile::tempdir()?;

    // Unknown: an empty known_hosts.
    let empty = elsewhere.path().join("known_hosts");
    std::fs::write(&empty, "")?;
    let store = sshd.storage(root.path())?.known_hosts(empty).build()?;
    let msg = refusal(&store).await;
    assert!(msg.contains(&sshd.fingerprint), "{msg}");
    assert!(msg.contains("does not list"), "{msg}");

    // Changed: known_hosts lists another key of the same type for the host.
    let other = elsewhere.path().join("other");
    let out = std::process::Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(&other)
        .output()?;
    ensure!(out.status.success(), "{out:?}");
    let changed = elsewhere.path().join("changed_hosts");
    std::fs::write(
        &changed,
        format!(
            "[127.0.0.1]:{} {}",
            sshd.port,
            std::fs::read_to_string(other.with_extension("pub"))?
        ),
    )?;
    let store = sshd.storage(root.path())?.known_hosts(changed).build()?;
    let msg = refusal(&store).await;
    assert!(
        msg.contains(&sshd.fingerprint) && msg.contains("CHANGED"),
        "{msg}"
    );

    // A configured fingerprint that is not the server's.
    let wrong = fingerprint_of(&other.with_extension("pub"))?;
    let store = sshd
        .storage(root.path())?
        .host_key_sha256(Some(wrong.clone()))
        .build()?;
    let msg = refusal(&store).await;
    assert!(
        msg.contains(&sshd.fingerprint) && msg.contains(&wrong),
        "{msg}"
    );
    assert!(files(root.path()).is_empty());

    // The right fingerprint is enough, whatever known_hosts says.
    let store = sshd
        .storage(root.path())?
        .known_hosts(elsewhere.path().join("none"))
        .host_key_sha256(Some(sshd.fingerprint.clone()))
        .build()?;
    store
        .put_bytes("a.bkp", Bytes::from_static(b"x"), PutMode::Create)
        .await?;
    assert_eq!(store.list("", false).await?.objects.len(), 1);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_killed_mid_upload_publishes_nothing() -> Result<()> {
    let _forks = crate::util::FORKS.lock().await;
    let mut sshd = Sshd::start()?;
    let root = tempfile::tempdir()?;
    let store = sshd.storage(root.path())?.build()?;
    let mut up = store
        .put_opts("site/gw-1.bkp", PutOptions::mode(PutMode::Create))
        .await?;
    up.write(Bytes::from(vec![7u8; 300_000])).await?;
    sshd.kill()?;
    // The connection is gone: a further write or the completion fails.
    let outcome = match up.write(Bytes::from(vec![7u8; 300_000])).await {
        Ok(()) => up.complete().await.map(drop),
        Err(e) => Err(e),
    };
    let err = outcome.expect_err("the upload cannot finish without its server");
    assert!(
        err.is_transient(),
        "a lost connection is worth retrying: {err}"
    );
    assert!(!root.path().join("site/gw-1.bkp").exists());
    // Once the server is back, the name is free and nothing is listed; the
    // temporary file left behind is removed as a stale upload.
    sshd.spawn()?;
    let head = store.head("site/gw-1.bkp").await;
    assert!(matches!(head, Err(Error::NotFound { .. })), "{head:?}");
    assert!(store.list("", false).await?.objects.is_empty());
    let left = files(root.path());
    assert_eq!(left.len(), 1, "{left:?}");
    assert!(store
        .remove_stale_uploads(Duration::from_secs(3600))
        .await?
        .is_empty());
    let removed = store.remove_stale_uploads(Duration::ZERO).await?;
    assert_eq!(removed.len(), 1, "{removed:?}");
    assert!(
        removed[0].starts_with("site/.gw-1.bkp.partial-"),
        "{removed:?}"
    );
    assert!(files(root.path()).is_empty());
    assert!(
        !root.path().join("site").exists(),
        "the emptied directory is removed"
    );
    store
        .put_bytes(
            "site/gw-1.bkp",
            Bytes::from_static(b"again"),
            PutMode::Create,
        )
        .await?;
    assert_eq!(&store.get_bytes("site/gw-1.bkp", 100).await?[..], b"again");
    Ok(())
}

#[test]
fn defaults_come_from_home_and_the_passphrase_from_the_environment() -> Result<()> {
    crate::util::alone(
        "sftp::defaults_come_from_home_and_the_passphrase_from_the_environment",
        defaults_from_home_and_the_environment,
    )
}

fn defaults_from_home_and_the_environment() -> Result<()> {
    const PASSPHRASE: &str = "correct horse battery";
    let runtime = tokio::runtime::Runtime::new()?;
    let sshd = Sshd::start()?;
    let home = tempfile::tempdir()?;
    let ssh = home.path().join(".ssh");
    std::fs::create_dir(&ssh)?;
    // ~/.ssh/id_ed25519, encrypted, and ~/.ssh/known_hosts.
    let out = std::process::Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", PASSPHRASE, "-f"])
        .arg(ssh.join("id_ed25519"))
        .output()?;
    ensure!(out.status.success(), "{out:?}");
    let authorized = sshd.dir.path().join("authorized_keys");
    let mut keys = std::fs::read_to_string(&authorized)?;
    keys.push_str(&std::fs::read_to_string(ssh.join("id_ed25519.pub"))?);
    std::fs::write(&authorized, keys)?;
    std::fs::copy(&sshd.known_hosts, ssh.join("known_hosts"))?;
    std::env::set_var("HOME", home.path());
    std::env::remove_var("BACKUP_SSH_PASSWORD");
    let root = tempfile::tempdir()?;
    let url = sshd.url(root.path());
    let open = || backup_storage::open_url(&url, &backup_storage::OpenOptions::default());

    std::env::remove_var("BACKUP_SSH_KEY_PASSPHRASE");
    let err = runtime
        .block_on(open()?.list("", false))
        .expect_err("an encrypted key without its passphrase");
    ensure!(
        err.to_string().contains("BACKUP_SSH_KEY_PASSPHRASE"),
        "{err}"
    );

    std::env::set_var("BACKUP_SSH_KEY_PASSPHRASE", "wrong horse");
    let err = runtime
        .block_on(open()?.list("", false))
        .expect_err("a wrong passphrase");
    ensure!(
        err.to_string().contains("passphrase") && !format!("{err:?}").contains("wrong horse"),
        "{err:?}"
    );

    std::env::set_var("BACKUP_SSH_KEY_PASSPHRASE", PASSPHRASE);
    let store = open()?;
    runtime.block_on(async {
        store
            .put_bytes("gw.bkp", Bytes::from_static(b"image"), PutMode::Create)
            .await?;
        ensure!(store.list("", false).await?.objects.len() == 1);
        Ok(())
    })?;
    ensure!(root.path().join("gw.bkp").is_file());
    Ok(())
}
