//! Building the payload: tar entries → codec → encryption → bounded channel.
use std::io::{self, Read, Write};
use std::path::Path;
use std::sync::{Arc, Mutex};

use bytes::{Bytes, BytesMut};
use tokio::sync::mpsc;

use super::check::EntryRules;
use super::frame_cache::{self, Entry, FileKey, Session};
use super::{EntryDigest, EntryKind};
use crate::component::{EntryMeta, EntrySink, FileStat, SnapshotError};
use crate::progress::{Event, Progress};

/// Size of the buffers handed to the uploader.
pub(crate) const CHUNK: usize = 256 * 1024;
/// Buffers in flight between the producer thread and the uploader.
pub(crate) const CHANNEL_DEPTH: usize = 8;

/// A `Write` that hands fixed-size buffers to an async consumer over a bounded
/// channel; it blocks when the consumer is behind (back-pressure) and fails
/// with `BrokenPipe` when the consumer has gone away.
pub(crate) struct ChannelWriter {
    tx: mpsc::Sender<Bytes>,
    buf: BytesMut,
    written: u64,
}

impl ChannelWriter {
    pub(crate) fn new(tx: mpsc::Sender<Bytes>) -> ChannelWriter {
        ChannelWriter {
            tx,
            buf: BytesMut::with_capacity(CHUNK),
            written: 0,
        }
    }

    fn send(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = self.buf.split().freeze();
        self.buf.reserve(CHUNK);
        self.tx
            .blocking_send(chunk)
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the upload stopped"))
    }

    /// Sends what is buffered; returns the total bytes written.
    pub(crate) fn finish(mut self) -> io::Result<u64> {
        self.send()?;
        Ok(self.written)
    }
}

impl Write for ChannelWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let n = data.len().min(CHUNK - self.buf.len());
        self.buf.extend_from_slice(&data[..n]);
        self.written += n as u64;
        if self.buf.len() == CHUNK {
            self.send()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The payload codec on the writing side (parallel gzip, zstd or none).
pub(crate) use super::codec::Encoder;

/// What the tar writer needs of the codec to cut frames at file
/// boundaries and to add cached frames (see [`super::frame_cache`]).
pub(crate) trait FrameSink: Write {
    /// See [`Encoder::is_framed`].
    fn is_framed(&self) -> bool;
    /// See [`Encoder::raw_written`].
    fn raw_written(&self) -> u64;
    /// See [`Encoder::set_tag`].
    fn set_tag(&mut self, tag: Option<u64>) -> io::Result<()>;
    /// See [`Encoder::splice`].
    fn splice(&mut self, frames: Vec<u8>, raw: u64) -> io::Result<()>;
    /// See [`Encoder::set_tap`].
    fn set_tap(&mut self, tap: Box<dyn super::codec::FrameTap>);
}

impl<W: Write> FrameSink for Encoder<W> {
    fn is_framed(&self) -> bool {
        Encoder::is_framed(self)
    }
    fn raw_written(&self) -> u64 {
        Encoder::raw_written(self)
    }
    fn set_tag(&mut self, tag: Option<u64>) -> io::Result<()> {
        Encoder::set_tag(self, tag)
    }
    fn splice(&mut self, frames: Vec<u8>, raw: u64) -> io::Result<()> {
        Encoder::splice(self, frames, raw)
    }
    fn set_tap(&mut self, tap: Box<dyn super::codec::FrameTap>) {
        Encoder::set_tap(self, tap)
    }
}

/// The frame cache as the tar writer uses it.
struct CacheUse {
    session: Arc<Mutex<Session>>,
    /// The file last offered to [`EntrySink::reuse`] and not reused: its
    /// frames are recorded when it is written next.
    offered: Option<(std::path::PathBuf, FileKey)>,
}

/// Writes the tar stream of an image and records each component's digest.
pub(crate) struct TarWriter<W: Write> {
    builder: tar::Builder<W>,
    prefix: String,
    component: String,
    digest: EntryDigest,
    /// The rules restore applies to the current component's entries: an
    /// entry they refuse fails the component instead of being written.
    rules: EntryRules,
    warnings: Vec<String>,
    /// The current component's paths (archive-relative) that stay out of
    /// the image: the engine's own places inside its roots.
    left_out: Vec<std::path::PathBuf>,
    progress: Arc<dyn Progress>,
    cache: Option<CacheUse>,
}

impl<W: FrameSink> TarWriter<W> {
    /// Uses the frame cache `session`: large files are cut into frames of
    /// their own and recorded, unchanged ones are copied from the cache.
    /// Nothing changes for a payload without frames.
    pub(crate) fn use_frame_cache(&mut self, session: Arc<Mutex<Session>>) {
        let encoder = self.builder.get_mut();
        if !encoder.is_framed() {
            return;
        }
        encoder.set_tap(Box::new(frame_cache::Tap(session.clone())));
        self.cache = Some(CacheUse {
            session,
            offered: None,
        });
    }

    fn session(&self) -> Option<Arc<Mutex<Session>>> {
        self.cache.as_ref().map(|c| c.session.clone())
    }

    /// Checks a regular file's entry and records it in the manifest's
    /// digest (read from disk or spliced from the frame cache alike).
    fn record_file(
        &mut self,
        rel: &Path,
        meta: &EntryMeta,
        size: u64,
    ) -> Result<(), SnapshotError> {
        self.check(rel, EntryKind::File, None)?;
        self.digest.entry(
            bytes_of(rel),
            EntryKind::File,
            meta.mode,
            meta.mtime,
            b"",
            size,
        );
        Ok(())
    }

    /// Writes the entry of `rel` from the cached `entry`'s frames, all of
    /// them checked before the first goes in, its recorded content hash
    /// standing in for its content in the digest. `Ok(false)` (nothing
    /// written) when a frame fails its checks.
    fn splice_cached(
        &mut self,
        rel: &Path,
        meta: &EntryMeta,
        entry: Entry,
        session: &Mutex<Session>,
    ) -> Result<bool, SnapshotError> {
        let lock = || session.lock().expect("frame cache");
        let checked = lock().checked_frames(&entry);
        let (Ok(mut frames), Some(content)) = (checked, entry.content_sha256()) else {
            lock().damaged();
            return Ok(false);
        };
        let (header, size) = (entry.header, entry.key.size());
        self.record_file(rel, meta, size)?;
        let known = self.digest.content_known(content, size);
        debug_assert!(known, "a fresh entry in the per-entry digest");
        let changed = |e: io::Error| {
            SnapshotError::Failed(format!(
                "the frame cache's copy of {} changed while it was read ({e}); back up again, with --no-cache if it happens again",
                Path::new("/").join(rel).display()
            ))
        };
        let mut done = 0u64;
        while let Some((frame, raw)) = frames.next_checked().map_err(changed)? {
            let (start, end) = (done, done + raw);
            let data = end.min(header + size).saturating_sub(start.max(header));
            self.progress.event(&Event::Bytes {
                component: self.component.clone(),
                bytes: data,
            });
            self.builder.get_mut().splice(frame, raw)?;
            done = end;
        }
        lock().reused(entry);
        Ok(true)
    }
}

impl<W: FrameSink> TarWriter<W> {
    pub(crate) fn new(inner: W, progress: Arc<dyn Progress>) -> TarWriter<W> {
        let mut builder = tar::Builder::new(inner);
        builder.mode(tar::HeaderMode::Complete);
        builder.follow_symlinks(false);
        TarWriter {
            builder,
            prefix: String::new(),
            component: String::new(),
            digest: EntryDigest::default(),
            rules: EntryRules::new::<&Path>(&[]).expect("no roots are valid roots"),
            warnings: Vec::new(),
            left_out: Vec::new(),
            progress,
            cache: None,
        }
    }

    /// Adds a small JSON document at the top level (`backup.json`, `manifest.json`).
    pub(crate) fn json<T: serde::Serialize>(&mut self, path: &str, value: &T) -> io::Result<()> {
        let data = serde_json::to_vec_pretty(value).map_err(io::Error::other)?;
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_mode(0o600);
        h.set_mtime(now_secs());
        h.set_size(data.len() as u64);
        self.builder.append_data(&mut h, path, &data[..])
    }

    /// Starts the entries of a component recorded with these `roots`
    /// (refused if restore would refuse them).
    pub(crate) fn begin_component(&mut self, name: &str, roots: &[String]) -> Result<(), String> {
        self.prefix = format!("{}/{name}/", super::COMPONENTS_DIR);
        self.component = name.to_string();
        self.digest = EntryDigest::default();
        self.warnings.clear();
        self.left_out.clear();
        self.rules = EntryRules::new(roots)?;
        Ok(())
    }

    /// Leaves these absolute paths (each with what it is) and everything
    /// under them out of the current component, with a warning for each.
    pub(crate) fn leave_out(&mut self, places: &[(std::path::PathBuf, String)]) {
        for (path, what) in places {
            self.left_out
                .push(crate::component::rel_of(path).to_path_buf());
            self.warn(format!(
                "left out {}: it is {what}, which no image holds (a backup of the backups)",
                path.display()
            ));
        }
    }

    /// Refuses an entry restore would refuse, before anything of it is written.
    fn check(
        &mut self,
        rel: &Path,
        kind: EntryKind,
        link: Option<&Path>,
    ) -> Result<(), SnapshotError> {
        self.rules.check(rel, kind, link).map_err(|reason| {
            SnapshotError::Failed(format!(
                "{} cannot be restored: {reason}",
                Path::new("/").join(rel).display()
            ))
        })
    }

    /// Ends the current component, giving its digest and warnings.
    pub(crate) fn end_component(&mut self) -> (EntryDigest, Vec<String>) {
        (
            std::mem::take(&mut self.digest),
            std::mem::take(&mut self.warnings),
        )
    }

    pub(crate) fn finish(self) -> io::Result<W> {
        self.builder.into_inner()
    }

    fn header(kind: tar::EntryType, meta: &EntryMeta, size: u64) -> tar::Header {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(meta.mode);
        h.set_mtime(meta.mtime);
        h.set_uid(meta.uid.into());
        h.set_gid(meta.gid.into());
        h.set_size(size);
        h
    }

    fn path(&self, rel: &Path) -> std::path::PathBuf {
        Path::new(&self.prefix).join(rel)
    }
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn bytes_of(p: &Path) -> &[u8] {
    use std::os::unix::ffi::OsStrExt;
    p.as_os_str().as_bytes()
}

impl<W: FrameSink> EntrySink for TarWriter<W> {
    fn dir(&mut self, rel: &Path, meta: &EntryMeta) -> Result<(), SnapshotError> {
        if self.is_left_out(rel) {
            return Ok(());
        }
        self.check(rel, EntryKind::Dir, None)?;
        self.digest
            .entry(bytes_of(rel), EntryKind::Dir, meta.mode, meta.mtime, b"", 0);
        let mut h = Self::header(tar::EntryType::Directory, meta, 0);
        let path = self.path(rel);
        self.builder.append_data(&mut h, path, io::empty())?;
        Ok(())
    }

    fn file(
        &mut self,
        rel: &Path,
        meta: &EntryMeta,
        size: u64,
        data: &mut dyn Read,
    ) -> Result<(), SnapshotError> {
        if self.is_left_out(rel) {
            return Ok(());
        }
        self.record_file(rel, meta, size)?;
        let mut h = Self::header(tar::EntryType::Regular, meta, size);
        let path = self.path(rel);
        // A large file offered to `reuse` just before is recorded into the
        // cache: its frames start and end with it.
        let recording = match (
            self.cache.as_mut().and_then(|c| c.offered.take()),
            self.session(),
        ) {
            (Some((offered, key)), Some(session))
                if offered == rel && key.size() == size && size >= frame_cache::MIN_FILE =>
            {
                let tag = session.lock().expect("frame cache").record(key);
                self.builder.get_mut().set_tag(Some(tag))?;
                Some((session, tag, self.builder.get_ref().raw_written()))
            }
            _ => None,
        };
        let mut exact = ExactReader {
            inner: data,
            remaining: size,
            digest: &mut self.digest,
            error: None,
            short: false,
            progress: &*self.progress,
            component: &self.component,
            unreported: 0,
        };
        self.builder.append_data(&mut h, path, &mut exact)?;
        exact.report();
        let (error, short) = (exact.error.take(), exact.short);
        if let Some((session, tag, before)) = recording {
            self.builder.get_mut().set_tag(None)?;
            let written = self.builder.get_ref().raw_written() - before;
            let header = written.saturating_sub(size + super::tar_padding(size));
            let complete = error.is_none() && !short;
            let content = self.digest.content_sha256().filter(|_| complete);
            session
                .lock()
                .expect("frame cache")
                .finish(tag, header, content);
        }
        if let Some(e) = error {
            return Err(SnapshotError::Failed(format!(
                "cannot read {}: {e}",
                Path::new("/").join(rel).display()
            )));
        }
        if short {
            self.warn(format!(
                "{} shrank while it was being read; the rest of its entry is zero-filled — back up again when it is quiet",
                Path::new("/").join(rel).display()
            ));
        }
        Ok(())
    }

    fn reuse(
        &mut self,
        rel: &Path,
        meta: &EntryMeta,
        size: u64,
        stats: &[FileStat],
    ) -> Result<bool, SnapshotError> {
        let left_out = self.is_left_out(rel);
        let Some(cache) = self.cache.as_mut() else {
            return Ok(false);
        };
        cache.offered = None;
        if size < frame_cache::MIN_FILE
            || left_out
            || !frame_cache::settled(stats, std::time::SystemTime::now())
        {
            return Ok(false);
        }
        let key = FileKey::new(&self.component, rel, meta, size, stats);
        let session = cache.session.clone();
        let found = session.lock().expect("frame cache").lookup(&key);
        cache.offered = Some((rel.to_path_buf(), key));
        let Some(entry) = found else {
            return Ok(false);
        };
        let reused = self.splice_cached(rel, meta, entry, &session)?;
        if reused {
            if let Some(c) = self.cache.as_mut() {
                c.offered = None;
            }
        }
        Ok(reused)
    }

    fn symlink(
        &mut self,
        rel: &Path,
        meta: &EntryMeta,
        target: &Path,
    ) -> Result<(), SnapshotError> {
        if self.is_left_out(rel) {
            return Ok(());
        }
        self.check(rel, EntryKind::Symlink, None)?;
        self.digest.entry(
            bytes_of(rel),
            EntryKind::Symlink,
            meta.mode,
            meta.mtime,
            bytes_of(target),
            0,
        );
        let mut h = Self::header(tar::EntryType::Symlink, meta, 0);
        let path = self.path(rel);
        self.builder.append_link(&mut h, path, target)?;
        Ok(())
    }

    fn hardlink(
        &mut self,
        rel: &Path,
        meta: &EntryMeta,
        target_rel: &Path,
    ) -> Result<(), SnapshotError> {
        if self.is_left_out(rel) {
            return Ok(());
        }
        self.check(rel, EntryKind::Hardlink, Some(target_rel))?;
        self.digest.entry(
            bytes_of(rel),
            EntryKind::Hardlink,
            meta.mode,
            meta.mtime,
            bytes_of(target_rel),
            0,
        );
        let mut h = Self::header(tar::EntryType::Link, meta, 0);
        let path = self.path(rel);
        let target = self.path(target_rel);
        self.builder.append_link(&mut h, path, target)?;
        Ok(())
    }

    fn is_left_out(&self, rel: &Path) -> bool {
        self.left_out.iter().any(|l| rel.starts_with(l))
    }

    fn warn(&mut self, message: String) {
        self.progress.event(&Event::Warning {
            component: Some(self.component.clone()),
            message: message.clone(),
        });
        self.warnings.push(message);
    }
}

/// Yields exactly `remaining` bytes whatever the source does: a read error or
/// an early end is replaced by zeros (and remembered) so the tar stays valid.
struct ExactReader<'a> {
    inner: &'a mut dyn Read,
    remaining: u64,
    digest: &'a mut EntryDigest,
    error: Option<io::Error>,
    short: bool,
    progress: &'a dyn Progress,
    component: &'a str,
    unreported: u64,
}

impl ExactReader<'_> {
    fn report(&mut self) {
        if self.unreported > 0 {
            self.progress.event(&Event::Bytes {
                component: self.component.to_string(),
                bytes: self.unreported,
            });
            self.unreported = 0;
        }
    }
}

impl Read for ExactReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.remaining == 0 {
            return Ok(0);
        }
        let want = buf
            .len()
            .min(self.remaining.min(usize::MAX as u64) as usize);
        let n = if self.error.is_some() || self.short {
            0
        } else {
            loop {
                match self.inner.read(&mut buf[..want]) {
                    Ok(n) => break n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => {
                        self.error = Some(e);
                        break 0;
                    }
                }
            }
        };
        let n = if n == 0 {
            if self.error.is_none() {
                self.short = true;
            }
            buf[..want].fill(0);
            want
        } else {
            n
        };
        self.digest.content(&buf[..n]);
        self.remaining -= n as u64;
        self.unreported += n as u64;
        if self.unreported >= 4 << 20 {
            self.report();
        }
        Ok(n)
    }
}
