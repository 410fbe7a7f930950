//! A small file system of a given size for the tests of full disks and
//! room checks: a tmpfs mounted (`mount -t tmpfs`, as root) on a directory
//! for the life of the value.
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// A tmpfs on a directory, unmounted (lazily, so a failing test that
/// still holds a file open does not keep it) when dropped.
#[derive(Debug)]
pub struct Tmpfs(PathBuf);

impl Tmpfs {
    /// Mounts a tmpfs of `size` (`512k`, `16m`) on `dir`, creating it.
    /// Panics, saying why, where mounting is not allowed (the tests that
    /// need it run as root, as CI does).
    pub fn mount(dir: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(dir).expect("creating the mount point");
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .stdin(Stdio::null())
            .output()
            .expect("running mount");
        assert!(
            out.status.success(),
            "mount -t tmpfs failed: this test needs root and permission to mount\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        Tmpfs(dir.to_path_buf())
    }

    /// Where it is mounted.
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .stdin(Stdio::null())
            .status();
    }
}
