//! Small file system helpers.
use std::io;
use std::path::Path;

/// 8 random hex characters for temporary names.
pub(crate) fn random_tag() -> String {
    let mut b = [0u8; 4];
    getrandom::getrandom(&mut b).expect("the OS random number generator failed");
    hex::encode(b)
}

/// Removes a file, symlink or directory tree; a missing path is fine.
pub(crate) fn remove_any(path: &Path) -> io::Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(md) if md.is_dir() => std::fs::remove_dir_all(path),
        Ok(_) => std::fs::remove_file(path),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// Copies a tree (files, directories, symlinks) keeping modes and mtimes.
pub(crate) fn copy_tree(from: &Path, to: &Path) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let md = std::fs::symlink_metadata(from)?;
    if md.is_dir() {
        std::fs::create_dir(to)?;
        for entry in std::fs::read_dir(from)? {
            let entry = entry?;
            copy_tree(&entry.path(), &to.join(entry.file_name()))?;
        }
        std::fs::set_permissions(to, std::fs::Permissions::from_mode(md.permissions().mode()))?;
    } else if md.file_type().is_symlink() {
        std::os::unix::fs::symlink(std::fs::read_link(from)?, to)?;
        return Ok(());
    } else {
        std::fs::copy(from, to)?;
    }
    filetime::set_file_mtime(to, filetime::FileTime::from_last_modification_time(&md))
}

/// Writes a small file atomically: temp name, fsync, rename, directory fsync.
pub(crate) fn write_atomic(path: &Path, data: &[u8], mode: u32) -> io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        path.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        random_tag()
    ));
    let result = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        std::fs::File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Creates a directory (and parents) readable only by its owner.
pub(crate) fn create_private_dir(path: &Path) -> io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
}

/// The id of a group given by name (looked up in `/etc/group`) or number.
pub(crate) fn group_id(group: &str) -> std::result::Result<u32, String> {
    if let Ok(gid) = group.parse::<u32>() {
        return Ok(gid);
    }
    let table = std::fs::read_to_string("/etc/group")
        .map_err(|e| format!("cannot read /etc/group to look up {group:?}: {e}"))?;
    table
        .lines()
        .filter_map(|line| {
            let mut fields = line.split(':');
            let name = fields.next()?;
            let gid = fields.nth(1)?.parse::<u32>().ok()?;
            (name == group).then_some(gid)
        })
        .next()
        .ok_or_else(|| {
            format!("no group {group:?} in /etc/group; create it or give its numeric id")
        })
}

/// Directory of scratch space in the state directory.
pub(crate) const SCRATCH_DIR: &str = "tmp";

/// A new private scratch directory for this process's run,
/// `state_dir/tmp/run-<pid>-<tag>`: the pid ties it to the run, so a later
/// run can tell a dead run's leftovers from a live one's.
pub(crate) fn run_scratch_dir(state_dir: &Path) -> io::Result<std::path::PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let tmp = state_dir.join(SCRATCH_DIR);
    create_private_dir(&tmp)?;
    // Made by an older version, or by hand: it holds plaintext snapshots.
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o700))?;
    let dir = tmp.join(format!("run-{}-{}", std::process::id(), random_tag()));
    create_private_dir(&dir)?;
    Ok(dir)
}

/// Removes what runs that are gone left in `state_dir/tmp` (a killed run's
/// database snapshots and dumps, in clear); returns what it removed.
///
/// A `run-<pid>-…` directory is stale once its process is gone. With
/// `holding_lock` (only lock holders make scratch space, and we hold the lock)
/// everything not made by this process is stale, whatever its name — which
/// also covers a reused pid.
pub(crate) fn remove_stale_scratch(
    state_dir: &Path,
    holding_lock: bool,
) -> Vec<std::path::PathBuf> {
    let tmp = state_dir.join(SCRATCH_DIR);
    let Ok(entries) = std::fs::read_dir(&tmp) else {
        return Vec::new();
    };
    let me = std::process::id();
    let mut removed = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name();
        let owner = name
            .to_str()
            .and_then(|n| n.strip_prefix("run-"))
            .and_then(|n| n.split('-').next())
            .and_then(|pid| pid.parse::<u32>().ok());
        let stale = match owner {
            Some(pid) if pid == me => false,
            Some(_) if holding_lock => true,
            Some(pid) => !Path::new(&format!("/proc/{pid}")).exists(),
            None => holding_lock,
        };
        if stale && remove_any(&entry.path()).is_ok() {
            removed.push(entry.path());
        }
    }
    removed.sort();
    removed
}

/// Makes a child process die with the engine (`PR_SET_PDEATHSIG`): a killed
/// engine must not leave a dump command running, writing into scratch space
/// nobody removes.
///
/// The signal follows the *thread* that spawned the child; call this only for
/// children that thread waits for.
#[allow(unsafe_code)]
pub(crate) fn die_with_engine(cmd: &mut std::process::Command) {
    use std::os::unix::process::CommandExt;
    let engine = libc::pid_t::try_from(std::process::id()).unwrap_or(0);
    // SAFETY: the closure runs in the child between fork and exec; it only
    // makes async-signal-safe system calls (prctl, getppid) and allocates
    // nothing (errors are built from raw OS error numbers).
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) != 0 {
                return Err(io::Error::last_os_error());
            }
            // The engine died before the request took effect.
            if libc::getppid() != engine {
                return Err(io::Error::from_raw_os_error(libc::ESRCH));
            }
            Ok(())
        });
    }
}

/// Whether this process runs as root (then owners are restored too).
pub(crate) fn is_root() -> bool {
    // /proc/self belongs to the effective user; this avoids an unsafe libc call.
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self")
        .map(|m| m.uid() == 0)
        .unwrap_or(false)
}

/// A file whose data is flushed in the background as it grows.
struct WritebackFile {
    file: std::fs::File,
    writeback: Option<backup_storage::Writeback>,
}

impl std::io::Write for WritebackFile {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.file.write(buf)?;
        if let Some(wb) = &mut self.writeback {
            wb.wrote(n as u64);
        }
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
}

/// Writes a stream to `path` atomically: a hidden temporary file beside it,
/// written back while it grows, fsync, rename. On error the temporary file is removed and `path` untouched.
pub(crate) fn write_stream_atomic<F>(path: &Path, mode: u32, fill: F) -> crate::Result<u64>
where
    F: FnOnce(&mut dyn std::io::Write) -> crate::Result<u64>,
{
    use std::os::unix::fs::OpenOptionsExt;
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => std::path::PathBuf::from("."),
    };
    let base = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{base}.partial-{}", random_tag()));
    let io = |what: &str, e| crate::Error::io(format!("{what} {}", path.display()), e);
    let result = (|| {
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)
            .map_err(|e| io("creating a temporary file for", e))?;
        let writeback = (file.try_clone().ok())
            .map(|f| backup_storage::Writeback::new(f, backup_storage::FlushScope::FileData));
        let mut w = std::io::BufWriter::with_capacity(1 << 20, WritebackFile { file, writeback });
        let n = fill(&mut w)?;
        let WritebackFile { file, writeback } =
            w.into_inner().map_err(|e| io("writing", e.into_error()))?;
        if let Some(wb) = writeback {
            // A failed background flush: the sync_all below reports it.
            let _ = wb.finish();
        }
        file.sync_all().map_err(|e| io("flushing", e))?;
        std::fs::rename(&tmp, path).map_err(|e| io("publishing", e))?;
        Ok(n)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

pub(crate) fn join_error(e: tokio::task::JoinError) -> crate::Error {
    crate::Error::io(
        "a worker thread failed",
        std::io::Error::other(e.to_string()),
    )
}

/// The variables that carry a secret to the engine: no child process (a
/// hook, a component's command, a drill check) inherits them.
const SECRET_VARIABLES: [&str; 6] = [
    "BACKUP_SECRET",
    "BACKUP_NEW_SECRET",
    "BACKUP_FTP_PASSWORD",
    "BACKUP_SSH_PASSWORD",
    "BACKUP_SSH_KEY_PASSPHRASE",
    "BACKUP_USER_PASSWORD",
];

/// Keeps the engine's secrets out of a child's environment.
pub(crate) fn without_secrets(cmd: &mut std::process::Command) -> &mut std::process::Command {
    for name in SECRET_VARIABLES {
        cmd.env_remove(name);
    }
    cmd
}
