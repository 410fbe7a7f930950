//! The local backend on real, small file systems: a full disk (ENOSPC), a
//! read-only mount (EROFS), and capacity as `df` reports it.
//!
//! These mount tmpfs file systems, which needs root (as on the development
//! machines and in CI). A mount that fails fails the test: these behaviours
//! are not checked anywhere else.
//!
//! The tests take turns ([`serial`]), with every other test that starts a
//! process ([`crate::util::FORKS`]). Each spawns processes (mount, umount,
//! df), and a child holds a copy of every open descriptor of the test
//! process from fork until exec: an upload another test has just aborted or
//! dropped then keeps its blocks on the full file system for that moment,
//! and "the space came back" would fail at random.

use std::fs;
use std::path::Path;
use std::process::Command;

use anyhow::{bail, ensure, Context, Result};
use backup_storage::{Error, LocalStorage, PutMode, PutOptions, Storage, StorageExt};
use bytes::Bytes;
use tempfile::TempDir;
use tokio::sync::MutexGuard;

use crate::util::FORKS;

/// Held for the whole of each test; see the module docs.
async fn serial() -> MutexGuard<'static, ()> {
    FORKS.lock().await
}

/// A tmpfs mounted on a temporary directory for the life of the value.
struct Tmpfs {
    dir: TempDir,
}

impl Tmpfs {
    fn mount(options: &str) -> Result<Tmpfs> {
        let dir = tempfile::tempdir()?;
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", options, "tmpfs"])
            .arg(dir.path())
            .status()
            .context("running mount")?;
        ensure!(
            status.success(),
            "mount -t tmpfs -o {options} failed ({status}): these tests need root and permission to mount"
        );
        Ok(Tmpfs { dir })
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn entries(&self) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(self.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        // Lazy, so that a failing test holding a file open still unmounts.
        let unmounted = Command::new("umount").arg("-l").arg(self.path()).status();
        if !matches!(unmounted, Ok(s) if s.success()) {
            eprintln!("could not unmount {}: {unmounted:?}", self.path().display());
        }
    }
}

/// Writes 64 KiB chunks until a write fails; the error must come well before
/// the upload could have fit.
async fn write_until_full(
    store: &LocalStorage,
    name: &str,
) -> Result<(Box<dyn backup_storage::Upload>, Error)> {
    let mut up = store
        .put_opts(name, PutOptions::mode(PutMode::Create))
        .await?;
    let chunk = Bytes::from(vec![0xA5; 64 * 1024]);
    let mut written = 0;
    loop {
        match up.write(chunk.clone()).await {
            Ok(()) => written += chunk.len(),
            Err(e) => return Ok((up, e)),
        }
        ensure!(
            written < 8 << 20,
            "no error after writing {written} bytes to a 1 MiB file system"
        );
    }
}

fn assert_no_space(err: &Error) {
    assert!(
        matches!(err, Error::NoSpace { .. }),
        "expected NoSpace, got {err:?}"
    );
    let msg = err.to_string();
    assert!(
        msg.starts_with("no space left on the storage: writing gw-1.bkp to file://"),
        "{msg}"
    );
    assert!(
        msg.ends_with("free space on the storage or prune old images"),
        "{msg}"
    );
    let errno = std::error::Error::source(err)
        .and_then(|s| s.downcast_ref::<std::io::Error>()?.raw_os_error());
    assert_eq!(
        errno,
        Some(libc::ENOSPC),
        "the I/O error is kept as the source"
    );
}

#[tokio::test]
async fn a_full_disk_fails_the_upload_with_no_space_and_leaves_nothing() -> Result<()> {
    let _serial = serial().await;
    let fs = Tmpfs::mount("size=1m")?;
    let store = LocalStorage::new(fs.path())?;

    // As a caller does: abort after the failed write.
    let (up, err) = write_until_full(&store, "gw-1.bkp").await?;
    assert_no_space(&err);
    up.abort().await?;
    assert_eq!(
        fs.entries(),
        Vec::<String>::new(),
        "no final name, no temporary file"
    );
    assert!(matches!(
        store.head("gw-1.bkp").await,
        Err(Error::NotFound { .. })
    ));

    // A careless caller that just drops the upload leaves nothing either.
    let (up, err) = write_until_full(&store, "gw-1.bkp").await?;
    assert_no_space(&err);
    drop(up);
    assert_eq!(fs.entries(), Vec::<String>::new());

    // The space came back: a small image fits.
    store
        .put_bytes("gw-1.bkp", Bytes::from_static(b"small"), PutMode::Create)
        .await?;
    assert_eq!(fs.entries(), ["gw-1.bkp"]);
    Ok(())
}

#[tokio::test]
async fn a_read_only_mount_is_permission_denied() -> Result<()> {
    let _serial = serial().await;
    let fs = Tmpfs::mount("ro,size=1m")?;
    let store = LocalStorage::new(fs.path())?;
    let err = store
        .put_opts("gw-1.bkp", PutOptions::default())
        .await
        .map(drop)
        .expect_err("read-only");
    assert!(matches!(err, Error::PermissionDenied { .. }), "{err:?}");
    assert!(err.to_string().contains("read-only mount"), "{err}");
    Ok(())
}

/// `df -B1 --output=size,used,avail DIR` as numbers.
fn df(dir: &Path) -> Result<[u64; 3]> {
    let out = Command::new("df")
        .args(["-B1", "--output=size,used,avail"])
        .arg(dir)
        .output()
        .context("running df")?;
    ensure!(
        out.status.success(),
        "df failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout)?;
    let numbers: Vec<u64> = text
        .lines()
        .nth(1)
        .context("df printed no data line")?
        .split_whitespace()
        .map(str::parse)
        .collect::<Result<_, _>>()?;
    match numbers[..] {
        [size, used, avail] => Ok([size, used, avail]),
        _ => bail!("unexpected df output {text:?}"),
    }
}

#[tokio::test]
async fn capacity_is_what_df_reports() -> Result<()> {
    let _serial = serial().await;
    // On a file system of our own nothing else writes: equal to the byte.
    let fs = Tmpfs::mount("size=4m")?;
    let store = LocalStorage::new(fs.path())?;
    store
        .put_bytes(
            "gw-1.bkp",
            Bytes::from(vec![7; (1 << 20) + 5]),
            PutMode::Create,
        )
        .await?;
    let cap = store.capacity().await?;
    let [size, used, avail] = df(fs.path())?;
    assert_eq!(
        (cap.total, cap.used, cap.free),
        (Some(size), Some(used), Some(avail))
    );
    assert_eq!(size, 4 << 20);
    assert!(used > 1 << 20, "the image is counted: {used}");

    // On the live file system of the temporary directory, within a margin.
    let dir = tempfile::tempdir()?;
    let cap = LocalStorage::new(dir.path())?.capacity().await?;
    let [size, used, avail] = df(dir.path())?;
    let close = |a: Option<u64>, b: u64| a.is_some_and(|a| a.abs_diff(b) < 64 << 20);
    assert!(
        close(cap.total, size) && close(cap.used, used) && close(cap.free, avail),
        "{cap:?} vs df {size} {used} {avail}"
    );
    Ok(())
}
