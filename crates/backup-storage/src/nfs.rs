//! `nfs://server/export/path` over a local NFSv4 mount.
//!
//! The appliance mounts the export itself (these machines cannot mount NFS
//! for tests). We refuse to write anywhere but a real NFS 4.0/4.1/4.2 mount of
//! the named export, checked in `/proc/self/mountinfo`: a backup to an
//! unmounted directory would silently fill the local disk. I/O is the local
//! backend's; `ESTALE` maps to a transient error, and since every operation
//! opens its files by path, the retry layer's next attempt reopens them.
use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;

use crate::{
    Capabilities, Capacity, DirInfo, Error, GetResult, ListResult, LocalStorage, ObjectMeta,
    PutOptions, Result, Storage, Upload,
};

/// What the mount check found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NfsMount {
    /// `4.0`, `4.1` or `4.2`.
    pub version: String,
    /// `server:/export` as mounted.
    pub source: String,
    /// The directory under the mount point that the URL's path names.
    pub subdir: PathBuf,
}

/// Undoes mountinfo's octal escapes (`\040` for a space, …).
fn unescape(field: &str) -> String {
    let b = field.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Checks that `mount` is an NFS 4.x mount of `server:export_path…` in the
/// given mountinfo text. `url_path` is the URL's path: the export, possibly
/// followed by a subdirectory.
pub fn check_mount(
    mountinfo: &str,
    mount: &Path,
    server: &str,
    url_path: &str,
) -> std::result::Result<NfsMount, String> {
    let mount_s = mount.to_string_lossy();
    // The last entry for a mount point is the one in effect (over-mounts).
    let line = mountinfo
        .lines()
        .rfind(|l| l.split(' ').nth(4).map(unescape).as_deref() == Some(&*mount_s))
        .ok_or_else(|| format!("{mount_s} is not a mount point (nothing is mounted there); mount the NFS export first"))?;
    let (_, after) = line
        .split_once(" - ")
        .ok_or_else(|| format!("cannot read the mountinfo line {line:?}"))?;
    let mut f = after.split(' ');
    let (fstype, source, options) = (
        f.next().unwrap_or(""),
        unescape(f.next().unwrap_or("")),
        f.next().unwrap_or(""),
    );
    if fstype != "nfs" && fstype != "nfs4" {
        return Err(format!("{mount_s} is a {fstype} file system ({source}), not an NFS mount of {server}:{url_path}"));
    }
    let vers = options
        .split(',')
        .find_map(|o| o.strip_prefix("vers="))
        .unwrap_or(if fstype == "nfs4" { "4" } else { "3" });
    let version = match vers {
        "4" | "4.0" => "4.0",
        "4.1" => "4.1",
        "4.2" => "4.2",
        other => {
            return Err(format!(
                "{mount_s} is mounted with NFS version {other}; only NFSv4.0, 4.1 and 4.2 are supported — remount with -o vers=4.2"
            ))
        }
    };
    let (src_server, export) = source
        .rsplit_once(':')
        .ok_or_else(|| format!("{mount_s} is mounted from {source:?}, not from {server}"))?;
    let src_server = src_server.trim_start_matches('[').trim_end_matches(']');
    if !src_server.eq_ignore_ascii_case(server) {
        return Err(format!(
            "{mount_s} is mounted from server {src_server} ({source}), not from {server}"
        ));
    }
    let export = if export.is_empty() { "/" } else { export };
    let rest = url_path
        .strip_prefix(export.trim_end_matches('/'))
        .filter(|r| r.is_empty() || r.starts_with('/'));
    let Some(rest) = rest else {
        return Err(format!(
            "{mount_s} holds the export {source}, not {server}:{url_path}"
        ));
    };
    Ok(NfsMount {
        version: version.to_string(),
        source,
        subdir: PathBuf::from(rest.trim_start_matches('/')),
    })
}

/// An NFSv4 export mounted locally.
pub struct NfsStorage {
    local: LocalStorage,
    url: String,
    mount: PathBuf,
    info: NfsMount,
}

impl NfsStorage {
    /// Opens `nfs://server/export[/subdir]` mounted at `mount`, checking
    /// `/proc/self/mountinfo`.
    pub fn open(url: &str, mount: &Path) -> Result<NfsStorage> {
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")
            .map_err(|e| Error::from_io("reading /proc/self/mountinfo", e))?;
        NfsStorage::open_with(url, mount, &mountinfo)
    }

    /// As [`NfsStorage::open`], with recorded mountinfo text (for tests).
    pub fn open_with(url: &str, mount: &Path, mountinfo: &str) -> Result<NfsStorage> {
        let invalid = |reason: String| Error::InvalidUrl {
            url: url.to_string(),
            reason,
        };
        let rest = url
            .strip_prefix("nfs://")
            .ok_or_else(|| invalid("not an nfs:// URL".into()))?;
        let (server, path) = rest
            .split_once('/')
            .ok_or_else(|| invalid("write nfs://server/export/path".into()))?;
        if server.is_empty() || server.contains('@') {
            return Err(invalid(
                "write nfs://server/export/path (no user, no empty server)".into(),
            ));
        }
        let path = format!("/{path}");
        let info = check_mount(mountinfo, mount, server, &path).map_err(|reason| Error::Other {
            what: reason,
            source: None,
        })?;
        let local = LocalStorage::new(mount.join(&info.subdir))?;
        Ok(NfsStorage {
            local,
            url: url.to_string(),
            mount: mount.to_path_buf(),
            info,
        })
    }

    /// Objects created from now on belong to group `gid`, mode 0640 (see
    /// [`LocalStorage::with_group`]).
    pub fn with_group(mut self, gid: Option<u32>) -> NfsStorage {
        self.local = self.local.with_group(gid);
        self
    }

    /// What the mount check found.
    pub fn mount_info(&self) -> &NfsMount {
        &self.info
    }
}

impl fmt::Debug for NfsStorage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NfsStorage")
            .field("url", &self.url)
            .field("mount", &self.mount)
            .field("info", &self.info)
            .finish()
    }
}

impl fmt::Display for NfsStorage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} (NFSv{} at {})",
            self.url,
            self.info.version,
            self.mount.display()
        )
    }
}

#[async_trait]
impl Storage for NfsStorage {
    fn capabilities(&self) -> Capabilities {
        self.local.capabilities()
    }
    async fn put_opts(&self, name: &str, opts: PutOptions) -> Result<Box<dyn Upload>> {
        self.local.put_opts(name, opts).await
    }
    async fn get_opts(&self, name: &str, range: Option<Range<u64>>) -> Result<GetResult> {
        self.local.get_opts(name, range).await
    }
    async fn head(&self, name: &str) -> Result<ObjectMeta> {
        self.local.head(name).await
    }
    async fn list(&self, prefix: &str, delimited: bool) -> Result<ListResult> {
        self.local.list(prefix, delimited).await
    }
    async fn delete(&self, name: &str) -> Result<()> {
        self.local.delete(name).await
    }
    async fn capacity(&self) -> Result<Capacity> {
        self.local.capacity().await
    }
    async fn presign_get(&self, _name: &str, _expires: Duration) -> Result<String> {
        Err(Error::Unsupported {
            what: "presigned URLs: nfs:// storage cannot presign; use `backup fetch`".into(),
        })
    }
    async fn write_at(&self, name: &str, offset: u64, data: Bytes) -> Result<()> {
        self.local.write_at(name, offset, data).await
    }
    async fn inspect_dir(&self, prefix: &str) -> Result<DirInfo> {
        self.local.inspect_dir(prefix).await
    }
    async fn remove_stale_uploads(&self, older_than: Duration) -> Result<Vec<String>> {
        self.local.remove_stale_uploads(older_than).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Recorded /proc/self/mountinfo lines.
    const NFS42: &str = "612 29 0:60 / /mnt/backups rw,relatime shared:300 - nfs4 nas.example:/exports/appliances rw,vers=4.2,rsize=1048576,wsize=1048576,namlen=255,hard,proto=tcp,timeo=600,retrans=2,sec=sys,clientaddr=10.0.0.5,local_lock=none,addr=10.0.0.2";
    const NFS41: &str = "613 29 0:61 / /mnt/backups rw,relatime shared:301 - nfs4 nas.example:/exports/appliances rw,vers=4.1,rsize=1048576,wsize=1048576,hard,proto=tcp,sec=sys,addr=10.0.0.2";
    const NFS40: &str = "614 29 0:62 / /mnt/backups rw,relatime shared:302 - nfs4 nas.example:/exports/appliances rw,vers=4.0,rsize=1048576,wsize=1048576,hard,proto=tcp,sec=sys,addr=10.0.0.2";
    const NFS3: &str = "615 29 0:63 / /mnt/backups rw,relatime shared:303 - nfs nas.example:/exports/appliances rw,vers=3,rsize=1048576,wsize=1048576,namlen=255,hard,proto=tcp,timeo=600,retrans=2,sec=sys,mountaddr=10.0.0.2,mountvers=3,mountport=20048,mountproto=udp,local_lock=none,addr=10.0.0.2";
    const EXT4: &str = "29 1 254:1 / / rw,relatime shared:1 - ext4 /dev/vda1 rw,errors=remount-ro\n616 29 254:1 /srv/backups /mnt/backups rw,relatime shared:1 - ext4 /dev/vda1 rw,errors=remount-ro";
    const BIND_OF_NFS: &str = "617 29 0:60 /appliances/gw /mnt/backups rw,relatime shared:300 - nfs4 nas.example:/exports rw,vers=4.2,addr=10.0.0.2";
    const SPACE: &str = "618 29 0:64 / /mnt/my\\040backups rw,relatime - nfs4 10.0.0.2:/exports/appliances rw,vers=4.2,addr=10.0.0.2";

    fn check(info: &str, url_path: &str) -> std::result::Result<NfsMount, String> {
        check_mount(info, Path::new("/mnt/backups"), "nas.example", url_path)
    }

    #[test]
    fn accepts_each_nfs4_version() {
        for (line, v) in [(NFS42, "4.2"), (NFS41, "4.1"), (NFS40, "4.0")] {
            let m = check(line, "/exports/appliances").unwrap();
            assert_eq!(
                (m.version.as_str(), m.subdir.as_os_str().is_empty()),
                (v, true)
            );
        }
        let m = check(NFS42, "/exports/appliances/site-a/gw").unwrap();
        assert_eq!(m.subdir, PathBuf::from("site-a/gw"));
    }

    #[test]
    fn refuses_nfs3_local_disks_and_other_exports() {
        let e = check(NFS3, "/exports/appliances").unwrap_err();
        assert!(e.contains("NFS version 3") && e.contains("vers=4.2"), "{e}");
        let e = check(EXT4, "/exports/appliances").unwrap_err();
        assert!(e.contains("ext4") && e.contains("not an NFS mount"), "{e}");
        let e = check("", "/exports/appliances").unwrap_err();
        assert!(e.contains("not a mount point"), "{e}");
        let e = check(NFS42, "/exports/other").unwrap_err();
        assert!(e.contains("holds the export"), "{e}");
        let e = check_mount(
            NFS42,
            Path::new("/mnt/backups"),
            "other-nas",
            "/exports/appliances",
        )
        .unwrap_err();
        assert!(e.contains("not from other-nas"), "{e}");
        // /exports/appliancesX must not pass for /exports/appliances.
        assert!(check(NFS42, "/exports/appliancesX").is_err());
    }

    #[test]
    fn a_bind_mount_is_judged_by_its_source() {
        // A bind of a subdirectory of an NFS export is still that export.
        let m = check(BIND_OF_NFS, "/exports/appliances/gw").unwrap();
        assert_eq!(m.version, "4.2");
        // A bind of a local directory (ext4) is refused.
        assert!(check(EXT4, "/exports/appliances").is_err());
    }

    #[test]
    fn escaped_mount_points() {
        let m = check_mount(
            SPACE,
            Path::new("/mnt/my backups"),
            "10.0.0.2",
            "/exports/appliances",
        )
        .unwrap();
        assert_eq!(m.version, "4.2");
    }

    #[tokio::test]
    async fn io_goes_through_the_local_backend() {
        let dir = tempfile::tempdir().unwrap();
        let mount = dir.path().to_string_lossy().replace(' ', "\\040");
        let info = format!(
            "700 29 0:70 / {mount} rw - nfs4 nas.example:/exports rw,vers=4.1,addr=10.0.0.2"
        );
        let s = NfsStorage::open_with("nfs://nas.example/exports", dir.path(), &info).unwrap();
        assert!(s.to_string().contains("NFSv4.1"));
        crate::conformance::run_all(&s, "nfs-conformance/")
            .await
            .unwrap();
    }
}
