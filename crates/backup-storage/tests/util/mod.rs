//! Helpers of the integration tests: real servers on 127.0.0.1 (`ftp`, `s3`)
//! and the rules that let tests with process-wide effects share one process.
#![allow(dead_code)] // each test module uses a part

#[cfg(feature = "ftp")]
pub(crate) mod ftp;
#[cfg(feature = "s3")]
pub(crate) mod s3;
// Shared with the CLI's tests (backup-testkit, which this crate cannot
// depend on: it depends on this crate).
#[cfg(feature = "sftp")]
#[allow(unreachable_pub)]
#[path = "../../../backup-testkit/src/sshd.rs"]
pub(crate) mod sshd;

use std::process::Command;

use anyhow::{ensure, Context, Result};
use tokio::sync::Mutex;

/// Held by every test that starts a process, for as long as it must not
/// overlap another one's: a child holds a copy of each open descriptor of
/// this process from fork to exec, which keeps a just-dropped upload's
/// blocks allocated (the tmpfs tests count free space).
pub(crate) static FORKS: Mutex<()> = Mutex::const_new(());

/// Runs `body` as the test named `test` (its full libtest name) in a process of
/// its own, this test binary started again with only that test selected: for a
/// test that changes process-wide state (environment variables), which would
/// race with the other tests of the binary. Fails unless the child ran exactly
/// that one test and it passed.
pub(crate) fn alone(test: &str, body: impl FnOnce() -> Result<()>) -> Result<()> {
    const VAR: &str = "BACKUP_STORAGE_TEST_ALONE";
    if std::env::var_os(VAR).is_some_and(|v| v == test) {
        return body();
    }
    let exe = std::env::current_exe().context("the test binary's path")?;
    let out = Command::new(&exe)
        .args([test, "--exact", "--test-threads=1", "--nocapture"])
        .env(VAR, test)
        .output()
        .with_context(|| format!("running {} {test}", exe.display()))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(
        out.status.success() && stdout.contains("test result: ok. 1 passed"),
        "{test} in a process of its own: {}\n--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}",
        out.status
    );
    Ok(())
}
