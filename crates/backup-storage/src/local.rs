use std::fmt;
use std::fs::{self, File};
use std::io::{self, Write};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncSeekExt};

use crate::names::{is_temp_name, is_valid_name, is_valid_segment, split_list_prefix, temp_name};
use crate::url::file_url;
use crate::{
    resolve_range, Capabilities, Capacity, DirInfo, Error, FlushScope, GetResult, ListResult,
    ObjectMeta, PutMode, PutOptions, Result, Storage, Upload, Writeback,
};

/// A local directory (`file:///path`). Uploads go to a hidden temporary name,
/// are fsynced, renamed into place and the directory fsynced, so a crash never
/// leaves a partial object under a final name.
///
/// Objects are created readable by their owner only (0600): an image's header
/// holds the wrapped master key, a target for offline guessing. With
/// [`LocalStorage::with_group`] they belong to that group and are
/// group-readable (0640).
#[derive(Debug, Clone)]
pub struct LocalStorage {
    root: PathBuf,
    group: Option<u32>,
}

impl LocalStorage {
    /// Uses an existing directory ([`crate::Error::NotFound`] if it does not
    /// exist, with a message saying to create it).
    pub fn new(root: impl AsRef<Path>) -> Result<LocalStorage> {
        let root = root.as_ref();
        let shown = root.display();
        let missing = |source: Option<io::Error>| {
            Error::NotFound {
            what: format!("storage directory {shown} does not exist; create it (mkdir -p {shown}) or fix [storage] url"),
            source: source.map(|e| e.into()),
        }
        };
        let root = match fs::canonicalize(root) {
            Ok(root) => root,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(missing(Some(e))),
            Err(e) => {
                return Err(Error::from_io(
                    format!("opening storage directory {shown}"),
                    e,
                ))
            }
        };
        match fs::metadata(&root) {
            Ok(meta) if meta.is_dir() => Ok(LocalStorage { root, group: None }),
            Ok(_) => Err(Error::NotFound {
                what: format!("storage path {shown} is not a directory; fix [storage] url"),
                source: None,
            }),
            Err(e) => Err(Error::from_io(
                format!("opening storage directory {shown}"),
                e,
            )),
        }
    }

    /// Objects created from now on belong to group `gid` and are readable by
    /// it (0640); `None` (the default) keeps them owner-only (0600).
    pub fn with_group(mut self, gid: Option<u32>) -> LocalStorage {
        self.group = gid;
        self
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Removes the hidden temporary files of uploads that never finished (a
    /// killed run) and were last written more than `older_than` ago, anywhere
    /// below the root; returns their paths relative to the root. Younger ones
    /// may belong to an upload still running, so they stay.
    pub fn remove_stale_uploads_blocking(&self, older_than: Duration) -> Result<Vec<String>> {
        let cutoff = std::time::SystemTime::now()
            .checked_sub(older_than)
            .unwrap_or(std::time::UNIX_EPOCH);
        let mut removed = Vec::new();
        let mut dirs = vec![String::new()];
        while let Some(dir) = dirs.pop() {
            let entries = match fs::read_dir(self.root.join(&dir)) {
                Ok(e) => e,
                // Deleted meanwhile.
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(Error::from_io(format!("listing {dir} in {self}"), e)),
            };
            for entry in entries {
                let entry =
                    entry.map_err(|e| Error::from_io(format!("listing {dir} in {self}"), e))?;
                let Ok(file_name) = entry.file_name().into_string() else {
                    continue;
                };
                let Ok(kind) = entry.file_type() else {
                    continue;
                };
                let rel = format!("{dir}{file_name}");
                if kind.is_dir() {
                    dirs.push(format!("{rel}/"));
                    continue;
                }
                if !kind.is_file() || !is_temp_name(&file_name) {
                    continue;
                }
                let stale = entry
                    .metadata()
                    .and_then(|m| m.modified())
                    .is_ok_and(|t| t < cutoff);
                if !stale {
                    continue;
                }
                match fs::remove_file(entry.path()) {
                    Ok(()) => removed.push(rel),
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => return Err(Error::from_io(format!("removing {rel} from {self}"), e)),
                }
            }
        }
        removed.sort();
        Ok(removed)
    }

    /// The path of a validated object name.
    fn path(&self, name: &str) -> Result<PathBuf> {
        if is_valid_name(name) {
            Ok(self.root.join(name))
        } else {
            Err(Error::Other {
                what: format!(
                    "invalid object name {name:?}: names are relative and '/'-separated, without empty, \
                     '.' or '..' segments, backslashes or NUL bytes"
                ),
                source: None,
            })
        }
    }

    fn not_found(&self, name: &str, source: Option<io::Error>) -> Error {
        Error::NotFound {
            what: format!("object {name} in {self}"),
            source: source.map(|e| e.into()),
        }
    }

    /// Removes the directories a delete left empty, up to (not including) the
    /// root, so that listings show no "directory" without objects, as on an
    /// object store.
    fn prune_empty_dirs(&self, path: &Path) {
        let mut dir = path.parent();
        while let Some(d) = dir.filter(|d| *d != self.root && d.starts_with(&self.root)) {
            // Fails (ENOTEMPTY) as soon as a directory still holds something.
            if fs::remove_dir(d).is_err() {
                break;
            }
            dir = d.parent();
        }
    }
}

impl fmt::Display for LocalStorage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&file_url(&self.root))
    }
}

/// Runs blocking file-system work off the async threads.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(e) => Err(Error::Other {
            what: "a file-system task was cancelled".to_owned(),
            source: Some(Box::new(e)),
        }),
    }
}

fn fsync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Creates `dir` and its missing parents below `root`, fsyncing each parent
/// that gained an entry so the new directories survive a crash too.
fn create_dirs(root: &Path, dir: &Path) -> io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    let rel = dir
        .strip_prefix(root)
        .map_err(|_| io::Error::other("directory outside the storage root"))?;
    let mut cur = root.to_path_buf();
    for component in rel.components() {
        let parent = cur.clone();
        cur.push(component);
        match fs::create_dir(&cur) {
            Ok(()) => fsync_dir(&parent)?,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

fn object_meta(name: String, meta: &fs::Metadata) -> ObjectMeta {
    ObjectMeta {
        name,
        size: meta.len(),
        modified: meta.modified().ok(),
    }
}

#[async_trait]
impl Storage for LocalStorage {
    fn capabilities(&self) -> Capabilities {
        Capabilities {
            atomic_publish: true,
            conditional_create: true,
            presign: false,
            capacity: true,
            rewrite_in_place: true,
        }
    }

    async fn put_opts(&self, name: &str, opts: PutOptions) -> Result<Box<dyn Upload>> {
        let target = self.path(name)?;
        let dir = target
            .parent()
            .expect("a valid name has a parent below the root")
            .to_path_buf();
        let base = target
            .file_name()
            .and_then(|n| n.to_str())
            .expect("a valid name ends in a UTF-8 segment");
        let temp = dir.join(temp_name(base)?);
        let root = self.root.clone();
        let (name, location) = (name.to_owned(), self.to_string());
        let mode = opts.mode;
        let group = self.group;
        blocking(move || {
            if mode == PutMode::Create && target.symlink_metadata().is_ok() {
                return Err(Error::AlreadyExists {
                    what: format!("object {name} in {location}"),
                });
            }
            // A concurrent delete may prune the directory we just created;
            // creating it again is enough.
            let mut attempts = 3;
            let file = loop {
                attempts -= 1;
                let created = create_dirs(&root, &dir).and_then(|()| {
                    use std::os::unix::fs::OpenOptionsExt;
                    fs::OpenOptions::new()
                        .write(true)
                        .create_new(true)
                        .mode(0o600)
                        .open(&temp)
                });
                match created {
                    Err(e) if e.kind() == io::ErrorKind::NotFound && attempts > 0 => continue,
                    Err(e) => {
                        return Err(Error::from_io(
                            format!("creating a temporary file for {name} in {location}"),
                            e,
                        ))
                    }
                    Ok(file) => break file,
                }
            };
            if let Some(gid) = group {
                let shared = rustix::fs::fchown(&file, None, Some(rustix::fs::Gid::from_raw(gid)))
                    .and_then(|()| {
                        rustix::fs::fchmod(&file, rustix::fs::Mode::from_raw_mode(0o640))
                    });
                if let Err(e) = shared {
                    let _ = fs::remove_file(&temp);
                    return Err(Error::from_io(
                        format!("giving the temporary file of {name} in {location} to group {gid}"),
                        e.into(),
                    ));
                }
            }
            let writeback =
                (file.try_clone().ok()).map(|f| Writeback::new(f, FlushScope::FileData));
            let upload = LocalUpload {
                file: Arc::new(file),
                writeback,
                temp: Some(temp),
                target,
                name,
                location,
                mode,
                written: 0,
                write_cancelled: false,
            };
            Ok(Box::new(upload) as Box<dyn Upload>)
        })
        .await
    }

    async fn get_opts(&self, name: &str, range: Option<Range<u64>>) -> Result<GetResult> {
        let path = self.path(name)?;
        let io_err = |e: io::Error| match e.kind() {
            io::ErrorKind::NotFound => self.not_found(name, Some(e)),
            _ => Error::from_io(format!("reading {name} from {self}"), e),
        };
        let mut file = tokio::fs::File::open(&path).await.map_err(io_err)?;
        let meta = file.metadata().await.map_err(io_err)?;
        if !meta.is_file() {
            return Err(self.not_found(name, None));
        }
        let size = meta.len();
        let range = resolve_range(range, size, name, self)?;
        if range.start > 0 {
            file.seek(io::SeekFrom::Start(range.start))
                .await
                .map_err(io_err)?;
        }
        let reader = Box::new(file.take(range.end - range.start));
        Ok(GetResult {
            meta: object_meta(name.to_owned(), &meta),
            range,
            reader,
        })
    }

    async fn head(&self, name: &str) -> Result<ObjectMeta> {
        let path = self.path(name)?;
        match tokio::fs::metadata(&path).await {
            Ok(meta) if meta.is_file() => Ok(object_meta(name.to_owned(), &meta)),
            Ok(_) => Err(self.not_found(name, None)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Err(self.not_found(name, Some(e))),
            Err(e) => Err(Error::from_io(
                format!("reading metadata of {name} in {self}"),
                e,
            )),
        }
    }

    async fn list(&self, prefix: &str, delimited: bool) -> Result<ListResult> {
        let Some((dir, file_prefix)) = split_list_prefix(prefix) else {
            return Ok(ListResult::default());
        };
        let (root, dir, file_prefix) = (self.root.clone(), dir.to_owned(), file_prefix.to_owned());
        let location = self.to_string();
        blocking(move || {
            let mut out = ListResult::default();
            match walk(&root, &dir, &file_prefix, delimited, &mut out) {
                Ok(()) => {}
                // The prefix names a directory that does not exist (or a file).
                Err(e)
                    if e.kind() == io::ErrorKind::NotFound
                        || e.raw_os_error() == Some(libc::ENOTDIR) => {}
                Err(e) => {
                    return Err(Error::from_io(
                        format!("listing {dir}{file_prefix}* in {location}"),
                        e,
                    ))
                }
            }
            out.objects.sort_by(|a, b| a.name.cmp(&b.name));
            out.prefixes.sort();
            Ok(out)
        })
        .await
    }

    async fn delete(&self, name: &str) -> Result<()> {
        let path = self.path(name)?;
        // No fsync of the directory: a delete undone by a crash only leaves an
        // old image that the next prune removes again.
        match tokio::fs::remove_file(&path).await {
            Ok(()) => {
                let this = self.clone();
                blocking(move || {
                    this.prune_empty_dirs(&path);
                    Ok(())
                })
                .await
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::from_io(format!("deleting {name} from {self}"), e)),
        }
    }

    async fn capacity(&self) -> Result<Capacity> {
        let root = self.root.clone();
        let location = self.to_string();
        blocking(move || {
            let st = rustix::fs::statvfs(&root).map_err(|e| {
                Error::from_io(format!("reading the capacity of {location}"), e.into())
            })?;
            // As df reports them: "Avail" (f_bavail) is what we may use, not
            // the root-reserved f_bfree.
            Ok(Capacity {
                total: Some(st.f_blocks * st.f_frsize),
                used: Some(st.f_blocks.saturating_sub(st.f_bfree) * st.f_frsize),
                free: Some(st.f_bavail * st.f_frsize),
            })
        })
        .await
    }

    async fn inspect_dir(&self, prefix: &str) -> Result<DirInfo> {
        let dir = match prefix.strip_suffix('/') {
            None if prefix.is_empty() => self.root.clone(),
            Some(d) if is_valid_name(d) => self.root.join(d),
            _ => {
                return Err(Error::Other {
                    what: format!(
                        "invalid directory {prefix:?}: give a relative, '/'-separated path ending in '/'"
                    ),
                    source: None,
                })
            }
        };
        let (prefix, location) = (prefix.to_owned(), self.to_string());
        blocking(move || {
            let meta = match fs::symlink_metadata(&dir) {
                Ok(meta) => meta,
                Err(e)
                    if e.kind() == io::ErrorKind::NotFound
                        || e.raw_os_error() == Some(libc::ENOTDIR) =>
                {
                    return Ok(DirInfo {
                        exists: Some(false),
                        ..DirInfo::default()
                    })
                }
                Err(e) => {
                    return Err(Error::from_io(
                        format!("inspecting {prefix} in {location}"),
                        e,
                    ))
                }
            };
            if !meta.is_dir() {
                return Ok(DirInfo {
                    exists: Some(false),
                    ..DirInfo::default()
                });
            }
            // access(2) answers for this process (root included) and knows
            // read-only mounts; creating an object needs write and search.
            let writable = match rustix::fs::access(
                &dir,
                rustix::fs::Access::WRITE_OK | rustix::fs::Access::EXEC_OK,
            ) {
                Ok(()) => Some(true),
                Err(
                    rustix::io::Errno::ACCESS | rustix::io::Errno::ROFS | rustix::io::Errno::PERM,
                ) => Some(false),
                Err(_) => None,
            };
            let mut subdirs = Vec::new();
            for entry in fs::read_dir(&dir)
                .map_err(|e| Error::from_io(format!("listing {prefix} in {location}"), e))?
            {
                let Ok(entry) = entry else { continue };
                let Ok(name) = entry.file_name().into_string() else {
                    continue;
                };
                // Symlinked directories are not followed, as in `list`.
                let is_dir = entry.file_type().is_ok_and(|t| t.is_dir());
                if is_dir && is_valid_segment(&name) && !name.contains('\\') {
                    subdirs.push(format!("{prefix}{name}/"));
                }
            }
            subdirs.sort();
            Ok(DirInfo {
                exists: Some(true),
                writable,
                subdirs,
            })
        })
        .await
    }

    async fn write_at(&self, name: &str, offset: u64, data: Bytes) -> Result<()> {
        use std::io::{Seek, SeekFrom, Write};
        let path = self.path(name)?;
        let what = format!("rewriting {name} in {self}");
        tokio::task::spawn_blocking(move || -> io::Result<()> {
            let mut f = std::fs::OpenOptions::new().write(true).open(&path)?;
            if offset + data.len() as u64 > f.metadata()?.len() {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "the write would extend the object",
                ));
            }
            f.seek(SeekFrom::Start(offset))?;
            f.write_all(&data)?;
            f.sync_all()
        })
        .await
        .map_err(|e| Error::Other {
            what: what.clone(),
            source: Some(Box::new(e)),
        })?
        .map_err(|e| Error::from_io(what, e))
    }

    async fn presign_get(&self, _name: &str, _expires: Duration) -> Result<String> {
        Err(Error::Unsupported {
            what: "presigned URLs: file:// storage cannot presign; use `backup fetch` or an S3 backend".to_owned(),
        })
    }

    async fn remove_stale_uploads(&self, older_than: Duration) -> Result<Vec<String>> {
        let this = self.clone();
        blocking(move || this.remove_stale_uploads_blocking(older_than)).await
    }
}

/// Adds to `out` the entries of `root/dir` (`dir` is "" or ends in '/') whose
/// file name starts with `file_prefix`; below that level, everything.
///
/// Symlinks to files are objects; symlinked directories are not followed, so a
/// listing never leaves the root or loops.
fn walk(
    root: &Path,
    dir: &str,
    file_prefix: &str,
    delimited: bool,
    out: &mut ListResult,
) -> io::Result<()> {
    for entry in fs::read_dir(root.join(dir))? {
        let entry = entry?;
        // Names that are not UTF-8, or that no object could have, are not ours.
        let Ok(file_name) = entry.file_name().into_string() else {
            continue;
        };
        if !file_name.starts_with(file_prefix)
            || !is_valid_segment(&file_name)
            || file_name.contains('\\')
        {
            continue;
        }
        let name = format!("{dir}{file_name}");
        let entry_type = match entry.file_type() {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue, // deleted meanwhile
            Err(e) => return Err(e),
        };
        if entry_type.is_dir() {
            let sub = format!("{name}/");
            if !delimited {
                match walk(root, &sub, "", false, out) {
                    Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                    _ => {} // done, or deleted meanwhile
                }
            } else if holds_object(&entry.path())? {
                // As on an object store, a "directory" exists only while it
                // holds an object (not just an unfinished upload).
                out.prefixes.push(sub);
            }
            continue;
        }
        // `fs::metadata` follows a symlink; a dangling one is skipped.
        let meta = match if entry_type.is_symlink() {
            fs::metadata(entry.path())
        } else {
            entry.metadata()
        } {
            Ok(meta) => meta,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        if meta.is_file() {
            out.objects.push(object_meta(name, &meta));
        }
    }
    Ok(())
}

/// Whether a directory holds an object anywhere below it; stops at the first.
fn holds_object(dir: &Path) -> io::Result<bool> {
    let entries = match fs::read_dir(dir) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false), // deleted meanwhile
        entries => entries?,
    };
    for entry in entries {
        let entry = entry?;
        let Ok(file_name) = entry.file_name().into_string() else {
            continue;
        };
        if !is_valid_segment(&file_name) || file_name.contains('\\') {
            continue;
        }
        let Ok(entry_type) = entry.file_type() else {
            continue;
        };
        let found = match entry_type {
            t if t.is_dir() => holds_object(&entry.path())?,
            t if t.is_symlink() => fs::metadata(entry.path()).is_ok_and(|m| m.is_file()),
            t => t.is_file(),
        };
        if found {
            return Ok(true);
        }
    }
    Ok(false)
}

/// An upload to a temporary file next to its final name.
struct LocalUpload {
    /// Shared with the blocking task of the write in progress.
    file: Arc<File>,
    /// Flushes the data written so far while the backup goes on.
    writeback: Option<Writeback>,
    /// The temporary file, until it is published or removed.
    temp: Option<PathBuf>,
    target: PathBuf,
    name: String,
    /// The storage, for messages.
    location: String,
    mode: PutMode,
    written: u64,
    /// A `write` future was dropped while its blocking write could still run:
    /// the content is unknown, so the upload may not complete.
    write_cancelled: bool,
}

#[async_trait]
impl Upload for LocalUpload {
    async fn write(&mut self, chunk: Bytes) -> Result<()> {
        if chunk.is_empty() {
            return Ok(());
        }
        let file = Arc::clone(&self.file);
        let len = chunk.len() as u64;
        self.write_cancelled = true;
        // The chunk moves to the blocking thread: no copy and no buffer of our
        // own, and a failure (ENOSPC) is reported by the write that hit it.
        let written = tokio::task::spawn_blocking(move || (&*file).write_all(&chunk)).await;
        self.write_cancelled = false;
        match written {
            Ok(Ok(())) => {
                self.written += len;
                if let Some(wb) = &mut self.writeback {
                    wb.wrote(len);
                }
                Ok(())
            }
            Ok(Err(e)) => Err(Error::from_io(
                format!("writing {} to {}", self.name, self.location),
                e,
            )),
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(e) => Err(Error::Other {
                what: format!(
                    "writing {} to {}: the write task was cancelled",
                    self.name, self.location
                ),
                source: Some(Box::new(e)),
            }),
        }
    }

    async fn complete(mut self: Box<Self>) -> Result<ObjectMeta> {
        if self.write_cancelled {
            return Err(Error::Other {
                what: format!(
                    "upload of {} to {}: a write was cancelled; start the upload again",
                    self.name, self.location
                ),
                source: None,
            });
        }
        let temp = self
            .temp
            .clone()
            .expect("an upload is completed or aborted once");
        let (file, target, mode) = (Arc::clone(&self.file), self.target.clone(), self.mode);
        let (name, location, size) = (self.name.clone(), self.location.clone(), self.written);
        let writeback = self.writeback.take();
        let meta = blocking(move || {
            let io_err = |doing: &str, e| Error::from_io(format!("{doing} {name} in {location}"), e);
            if let Some(wb) = writeback {
                // A failed background flush: the sync_all below reports it.
                let _ = wb.finish();
            }
            file.sync_all().map_err(|e| io_err("writing", e))?;
            let modified = file.metadata().and_then(|m| m.modified()).ok();
            match mode {
                // A hard link fails with EEXIST if the name exists, so two
                // concurrent Create uploads cannot both win.
                PutMode::Create => match fs::hard_link(&temp, &target) {
                    Ok(()) => {
                        if let Err(e) = fs::remove_file(&temp) {
                            tracing::warn!(temp = %temp.display(), error = %e, "could not remove a published upload's temporary name");
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                        return Err(Error::AlreadyExists { what: format!("object {name} in {location}") })
                    }
                    Err(e) => return Err(io_err("publishing", e)),
                },
                PutMode::Overwrite => fs::rename(&temp, &target).map_err(|e| io_err("publishing", e))?,
            }
            let dir = target.parent().expect("objects live below the root");
            fsync_dir(dir).map_err(|e| io_err("making durable the directory of", e))?;
            Ok(ObjectMeta { name, size, modified })
        })
        .await?;
        self.temp = None;
        Ok(meta)
    }

    async fn abort(mut self: Box<Self>) -> Result<()> {
        let Some(temp) = self.temp.take() else {
            return Ok(());
        };
        match tokio::fs::remove_file(&temp).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => {
                // Leave it to Drop to try once more.
                self.temp = Some(temp);
                Err(Error::from_io(
                    format!(
                        "removing the temporary file of {} in {}",
                        self.name, self.location
                    ),
                    e,
                ))
            }
        }
    }
}

impl Drop for LocalUpload {
    fn drop(&mut self) {
        // Neither completed nor aborted (an error path, a cancelled task):
        // best effort, the file is only ever hidden from listings.
        if let Some(temp) = self.temp.take() {
            if let Err(e) = fs::remove_file(&temp) {
                if e.kind() != io::ErrorKind::NotFound {
                    tracing::warn!(temp = %temp.display(), error = %e, "could not remove an abandoned upload");
                }
            }
        }
    }
}
