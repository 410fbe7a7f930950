//! The frame cache: the compressed frames of large files, kept between
//! backups under the state directory, so that the next backup copies the
//! frames of an unchanged file into its payload instead of reading and
//! compressing the file again.
//!
//! A file of at least [`MIN_FILE`] bytes gets frames of its own: its tar
//! header, data and padding start a new frame and the frame after it starts
//! anew, so the file maps to whole frames (see [`super::writer`]). Smaller
//! files share frames as before — compressing each alone would cost ratio,
//! and reading them costs little.
//!
//! On disk (`<state_dir>/frame-cache`, mode 0700): `frames/<name>`, the
//! frames of one file as they were written into an image (0600), and
//! `index` (0600): the SHA-256 of the rest, then JSON — the codec and level
//! the frames were made with, and per file its key (component, path, size,
//! mtime, ctime, device, inode, mode, owner), the SHA-256 of its content
//! (what the manifest's digest takes for it, see
//! [`super::DigestScheme::PerEntry`]) and each frame's length, uncompressed
//! length and CRC-32.
//!
//! A cached file goes into an image without being decompressed: all its
//! frames are read back and checked first — each frame's length, CRC-32 and
//! that it parses as exactly one frame of the codec, their uncompressed
//! lengths adding up to the file's tar entry — and only then copied in,
//! checked again as they are read, with the content hash recorded in the
//! index standing in for the content in the manifest's digest. A damaged,
//! truncated or missing frame file, or an index that fails its checksum, is
//! ignored and the file is read as usual. (A frame file that changes between
//! the check and the copy fails the component: the cache is under the
//! operation lock, so only something outside the engine can do that.)
//!
//! The index is replaced (atomically) only at the end of a backup whose
//! payload was written in full; frame files are never changed once written
//! and only deleted after the new index names the ones kept. A crash leaves
//! the old index and its frames, plus frame files no index names, which the
//! next backup deletes.
use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::{self, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::parallel::Frames;
use crate::component::{EntryMeta, FileStat};
use crate::model::Compression;

/// The cache's directory under the state directory.
pub(crate) const DIR: &str = "frame-cache";
const INDEX: &str = "index";
const FRAMES: &str = "frames";
const VERSION: u32 = 2;
/// Files at least this large get frames of their own, and are cached.
pub(crate) const MIN_FILE: u64 = 64 * 1024;
/// A file modified less than this long before it is read is neither
/// cached nor taken from the cache: a write right after the read could
/// leave its mtime as it was (file systems stamp times at a coarse clock
/// tick, or in whole seconds), and the cache would hold old content under
/// the new file's key.
pub(crate) const SETTLE: std::time::Duration = std::time::Duration::from_secs(2);

/// Whether every file in `stats` was last modified at least [`SETTLE`]
/// before `now`.
pub(crate) fn settled(stats: &[FileStat], now: std::time::SystemTime) -> bool {
    let Ok(now) = now.duration_since(std::time::UNIX_EPOCH) else {
        return false;
    };
    let limit = now.saturating_sub(SETTLE);
    stats.iter().all(|s| {
        let (secs, nanos) = s.mtime;
        u64::try_from(secs).is_ok_and(|secs| {
            std::time::Duration::new(secs, u32::try_from(nanos).unwrap_or(0)) < limit
        })
    })
}

/// What identifies a file's content between backups without reading it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct FileKey {
    component: String,
    /// The archive-relative path, hex (paths need not be UTF-8).
    path: String,
    /// The entry's size.
    size: u64,
    /// The files its content came from (see [`crate::component::EntrySink::reuse`]).
    files: Vec<FileStat>,
    mode: u32,
    entry_mtime: u64,
    uid: u32,
    gid: u32,
}

impl FileKey {
    pub(crate) fn new(
        component: &str,
        rel: &Path,
        meta: &EntryMeta,
        size: u64,
        files: &[FileStat],
    ) -> FileKey {
        use std::os::unix::ffi::OsStrExt;
        FileKey {
            component: component.to_string(),
            path: hex::encode(rel.as_os_str().as_bytes()),
            size,
            files: files.to_vec(),
            mode: meta.mode,
            entry_mtime: meta.mtime,
            uid: meta.uid,
            gid: meta.gid,
        }
    }

    fn slot(&self) -> (String, String) {
        (self.component.clone(), self.path.clone())
    }

    /// The file's size.
    pub(crate) fn size(&self) -> u64 {
        self.size
    }
}

/// One cached frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct FrameRecord {
    /// Compressed length.
    pub(crate) len: u64,
    /// Uncompressed length.
    pub(crate) raw: u64,
    /// CRC-32 of the compressed bytes.
    pub(crate) crc: u32,
}

/// A cached file: its key and frames.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Entry {
    pub(crate) key: FileKey,
    /// The file under `frames/` holding the frames, one after the other.
    file: String,
    /// Uncompressed bytes before the file's data (its tar header).
    pub(crate) header: u64,
    /// Hex SHA-256 of the file's content.
    content: String,
    pub(crate) frames: Vec<FrameRecord>,
}

impl Entry {
    fn bytes(&self) -> u64 {
        self.frames.iter().map(|f| f.len).sum()
    }

    /// The SHA-256 of the file's content, as recorded.
    pub(crate) fn content_sha256(&self) -> Option<[u8; 32]> {
        hex::decode(&self.content).ok()?.try_into().ok()
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct Index {
    version: u32,
    compression: Compression,
    level: u32,
    /// Backups since the last one that read every file.
    since_full_read: u32,
    entries: Vec<Entry>,
}

/// How a backup uses the cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Settings {
    /// Most bytes the cache holds (`None`: at most the frames of the image
    /// being written, which it is made of).
    pub(crate) limit: Option<u64>,
    /// Every Nth backup reads every file (1: all of them).
    pub(crate) full_read_every: u32,
    /// This backup reads every file (`--no-cache`).
    pub(crate) read_all: bool,
}

/// What a backup did with the cache.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Stats {
    /// Files whose frames came from the cache.
    pub(crate) reused_files: u64,
    /// Their content bytes.
    pub(crate) reused_bytes: u64,
    /// Cache entries found damaged (and ignored).
    pub(crate) damaged: u64,
    /// Whether this backup read every file.
    pub(crate) full_read: bool,
}

/// A file being recorded: its frames go to `out` as they are compressed.
struct Recording {
    entry: Entry,
    out: Option<BufWriter<File>>,
    /// The writer has ended the file (`Some(true)`: recorded in full).
    finished: Option<bool>,
    /// The encoder has emitted the file's last frame.
    ended: bool,
}

/// The cache during one backup, under the operation lock.
pub(crate) struct Session {
    dir: PathBuf,
    compression: Compression,
    level: u32,
    settings: Settings,
    run: String,
    since_full_read: u32,
    old: HashMap<(String, String), Entry>,
    kept: Vec<Entry>,
    recording: HashMap<u64, Recording>,
    recorded: Vec<Entry>,
    bytes: u64,
    next_tag: u64,
    stats: Stats,
}

impl Session {
    /// Opens the cache in `state_dir` for a backup with this codec; `None`
    /// when it is off (`limit` 0, no frames to cache), in which case any
    /// cache left there is removed.
    pub(crate) fn open(
        state_dir: &Path,
        compression: Compression,
        level: u32,
        settings: Settings,
    ) -> io::Result<Option<Session>> {
        let dir = state_dir.join(DIR);
        if settings.limit == Some(0) || compression == Compression::None {
            crate::util::remove_any(&dir)?;
            return Ok(None);
        }
        crate::util::create_private_dir(&dir.join(FRAMES))?;
        for d in [&dir, &dir.join(FRAMES)] {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o700))?;
        }
        let index = read_index(&dir.join(INDEX))
            .filter(|i| i.version == VERSION && i.compression == compression && i.level == level);
        let since = index.as_ref().map(|i| i.since_full_read);
        let full_read = settings.read_all
            || match since {
                None => true,
                Some(n) => n.saturating_add(1) >= settings.full_read_every.max(1),
            };
        let old = match index {
            Some(i) if !full_read => i.entries.into_iter().map(|e| (e.key.slot(), e)).collect(),
            _ => HashMap::new(),
        };
        Ok(Some(Session {
            dir,
            compression,
            level,
            settings,
            run: crate::util::random_tag(),
            since_full_read: if full_read { 0 } else { since.unwrap_or(0) + 1 },
            old,
            kept: Vec::new(),
            recording: HashMap::new(),
            recorded: Vec::new(),
            bytes: 0,
            next_tag: 0,
            stats: Stats {
                full_read,
                ..Stats::default()
            },
        }))
    }

    /// The cached entry for this file, if its key matches.
    pub(crate) fn lookup(&mut self, key: &FileKey) -> Option<Entry> {
        let entry = self.old.remove(&key.slot())?;
        (entry.key == *key).then_some(entry)
    }

    /// `entry`'s frames, every one of them read and checked once already
    /// (see [`CachedFrames`]), ready to be read again from the first: so a
    /// damaged cache entry is found before any of it goes into an image.
    pub(crate) fn checked_frames(&self, entry: &Entry) -> io::Result<CachedFrames> {
        let mut frames = self.frames(entry)?;
        while frames.next_checked()?.is_some() {}
        frames.rewind()?;
        Ok(frames)
    }

    /// Reads `entry`'s frames and checks them one at a time; see
    /// [`CachedFrames`].
    pub(crate) fn frames(&self, entry: &Entry) -> io::Result<CachedFrames> {
        let raw: u64 = entry.frames.iter().map(|f| f.raw).sum();
        let size = entry.key.size;
        let whole = entry.header >= 512
            && entry.frames.first().is_some_and(|f| f.raw >= entry.header)
            && raw == entry.header + size + super::tar_padding(size);
        if !whole {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "the entry's frames do not hold one tar entry",
            ));
        }
        let file = File::open(self.dir.join(FRAMES).join(&entry.file))?;
        if file.metadata()?.len() != entry.bytes() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "the frame file has the wrong length",
            ));
        }
        Ok(CachedFrames {
            source: io::BufReader::with_capacity(256 * 1024, file),
            compression: self.compression,
            records: entry.frames.clone(),
            index: 0,
        })
    }

    /// `entry` went into the image from the cache: keep it.
    pub(crate) fn reused(&mut self, entry: Entry) {
        self.stats.reused_files += 1;
        self.stats.reused_bytes += entry.key.size;
        // Kept only within the limit (it may have been lowered).
        if self
            .settings
            .limit
            .is_none_or(|l| self.bytes + entry.bytes() <= l)
        {
            self.bytes += entry.bytes();
            self.kept.push(entry);
        }
    }

    /// An entry failed its checks: it is left out of the next index.
    pub(crate) fn damaged(&mut self) {
        self.stats.damaged += 1;
    }

    /// Starts recording the frames of the file `key`; returns the tag to
    /// write them under.
    pub(crate) fn record(&mut self, key: FileKey) -> u64 {
        let tag = self.next_tag;
        self.next_tag += 1;
        let file = format!("{}-{tag}", self.run);
        let out = {
            use std::os::unix::fs::OpenOptionsExt;
            std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(self.dir.join(FRAMES).join(&file))
                .ok()
                .map(|f| BufWriter::with_capacity(256 * 1024, f))
        };
        self.recording.insert(
            tag,
            Recording {
                entry: Entry {
                    key,
                    file,
                    header: 0,
                    content: String::new(),
                    frames: Vec::new(),
                },
                out,
                finished: None,
                ended: false,
            },
        );
        tag
    }

    /// The writer is done with file `tag`: `header` bytes came before its
    /// data, whose SHA-256 is `content`; `None` when it could not be read in
    /// full.
    pub(crate) fn finish(&mut self, tag: u64, header: u64, content: Option<[u8; 32]>) {
        if let Some(r) = self.recording.get_mut(&tag) {
            r.entry.header = header;
            r.entry.content = content.map(hex::encode).unwrap_or_default();
            r.finished = Some(content.is_some());
        }
        self.settle(tag);
    }

    fn frame(&mut self, tag: u64, frame: &[u8], raw: usize) {
        let limit = self.settings.limit;
        let Some(r) = self.recording.get_mut(&tag) else {
            return;
        };
        let Some(out) = &mut r.out else {
            return;
        };
        let len = frame.len() as u64;
        let fits = limit.is_none_or(|l| self.bytes + len <= l);
        if fits && out.write_all(frame).is_ok() {
            let mut crc = flate2::Crc::new();
            crc.update(frame);
            r.entry.frames.push(FrameRecord {
                len,
                raw: raw as u64,
                crc: crc.sum(),
            });
            self.bytes += len;
        } else {
            // Over the limit or unwritable: this file is not cached.
            r.out = None;
            self.bytes -= r.entry.bytes();
            r.entry.frames.clear();
        }
    }

    fn end(&mut self, tag: u64) {
        if let Some(r) = self.recording.get_mut(&tag) {
            r.ended = true;
        }
        self.settle(tag);
    }

    /// Files the entry once both the writer and the encoder are done with it.
    fn settle(&mut self, tag: u64) {
        let Some(r) = self.recording.get(&tag) else {
            return;
        };
        let Some(complete) = r.finished else {
            return;
        };
        if !r.ended {
            return;
        }
        let mut r = self.recording.remove(&tag).expect("just seen");
        let written = match r.out.take() {
            Some(out) if complete => out.into_inner().map_err(|e| e.into_error()).is_ok(),
            _ => false,
        };
        if written && !r.entry.frames.is_empty() {
            self.recorded.push(r.entry);
        } else {
            self.bytes -= r.entry.bytes();
            let _ = std::fs::remove_file(self.dir.join(FRAMES).join(&r.entry.file));
        }
    }

    /// After a payload written in full: replaces the index with the files
    /// reused and recorded by this backup, and deletes every other frame
    /// file. Returns what the backup did with the cache.
    pub(crate) fn commit(mut self) -> io::Result<Stats> {
        // Files still recording never ended (the payload failed): drop them.
        let tags: Vec<u64> = self.recording.keys().copied().collect();
        for tag in tags {
            if let Some(r) = self.recording.get_mut(&tag) {
                r.finished = Some(false);
                r.ended = true;
            }
            self.settle(tag);
        }
        let mut entries = std::mem::take(&mut self.kept);
        entries.append(&mut self.recorded);
        let index = Index {
            version: VERSION,
            compression: self.compression,
            level: self.level,
            since_full_read: self.since_full_read,
            entries,
        };
        let body = serde_json::to_vec(&index).map_err(io::Error::other)?;
        let mut data = hex::encode(Sha256::digest(&body)).into_bytes();
        data.push(b'\n');
        data.extend_from_slice(&body);
        crate::util::write_atomic(&self.dir.join(INDEX), &data, 0o600)?;
        let named: HashSet<&str> = index.entries.iter().map(|e| e.file.as_str()).collect();
        for f in std::fs::read_dir(self.dir.join(FRAMES))?.flatten() {
            if !named.contains(f.file_name().to_string_lossy().as_ref()) {
                let _ = std::fs::remove_file(f.path());
            }
        }
        Ok(self.stats)
    }
}

/// The index at `path`, if it is there and whole.
fn read_index(path: &Path) -> Option<Index> {
    let data = std::fs::read(path).ok()?;
    let at = data.iter().position(|&b| b == b'\n')?;
    let (sum, body) = (&data[..at], &data[at + 1..]);
    if sum != hex::encode(Sha256::digest(body)).as_bytes() {
        return None;
    }
    serde_json::from_slice(body).ok()
}

/// The frames of a cached file, each read and checked before it is handed
/// out: its length, CRC-32, and that it parses as exactly one whole frame.
pub(crate) struct CachedFrames {
    source: io::BufReader<File>,
    compression: Compression,
    records: Vec<FrameRecord>,
    /// The next frame's.
    index: usize,
}

impl CachedFrames {
    /// Back to the first frame.
    fn rewind(&mut self) -> io::Result<()> {
        use std::io::Seek;
        self.source.rewind()?;
        self.index = 0;
        Ok(())
    }

    /// The next frame, checked, with its uncompressed length; `None` after
    /// the last.
    pub(crate) fn next_checked(&mut self) -> io::Result<Option<(Vec<u8>, u64)>> {
        let Some(record) = self.records.get(self.index).copied() else {
            return Ok(None);
        };
        let index = self.index as u64;
        self.index += 1;
        let checked = match self.compression {
            Compression::Gzip => check::<super::gunzip::Gzip>(&mut self.source, index, &record),
            Compression::Zstd => check::<super::unzstd::Zstd>(&mut self.source, index, &record),
            Compression::None => Err("the payload has no frames".into()),
        };
        let frame = checked.map_err(|what| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("cached frame {index}: {what}"),
            )
        })?;
        Ok(Some((frame, record.raw)))
    }
}

fn check<F: Frames>(
    source: &mut dyn Read,
    index: u64,
    record: &FrameRecord,
) -> Result<Vec<u8>, String> {
    // Read as one frame of the codec, which must be exactly the recorded
    // length, then its CRC-32.
    let mut frame = Vec::new();
    let whole = F::read_frame(&mut source.take(record.len), index, &mut frame)
        .map_err(|e| format!("cannot read it: {e}"))?;
    if !whole || frame.len() as u64 != record.len {
        return Err("it is not one whole frame of its recorded length".into());
    }
    let mut crc = flate2::Crc::new();
    crc.update(&frame);
    if crc.sum() != record.crc {
        return Err("its CRC-32 does not match".into());
    }
    Ok(frame)
}

/// Sees the frames the encoder writes for files being recorded.
pub(crate) struct Tap(pub(crate) std::sync::Arc<std::sync::Mutex<Session>>);

impl super::codec::FrameTap for Tap {
    fn frame(&mut self, tag: u64, frame: &[u8], raw: usize) {
        if let Ok(mut s) = self.0.lock() {
            s.frame(tag, frame, raw);
        }
    }

    fn end(&mut self, tag: u64) {
        if let Ok(mut s) = self.0.lock() {
            s.end(tag);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::component::{Component, FilesComponent};
    use crate::image::writer::{Encoder, TarWriter};
    use std::os::unix::fs::PermissionsExt;
    use std::sync::{Arc, Mutex};

    /// Text that compresses, different per `seed`.
    fn text(n: usize, seed: u64) -> Vec<u8> {
        let mut s = seed | 1;
        let mut out = Vec::with_capacity(n + 80);
        while out.len() < n {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            out.extend_from_slice(
                format!("{{\"seq\":{s},\"action\":\"login\",\"ok\":true}}\n").as_bytes(),
            );
        }
        out.truncate(n);
        out
    }

    struct Source {
        dir: tempfile::TempDir,
    }

    /// Dates `path` (a file, or every file under a directory) an hour
    /// back: files written just now are not cached (see [`SETTLE`]).
    fn settle(path: &Path) {
        if path.is_dir() {
            for e in std::fs::read_dir(path).unwrap() {
                settle(&e.unwrap().path());
            }
            return;
        }
        let hour_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
        std::fs::File::options()
            .write(true)
            .open(path)
            .unwrap()
            .set_modified(hour_ago)
            .unwrap();
    }

    impl Source {
        /// Small and large files, one over several frames, one random.
        fn new() -> Source {
            let dir = tempfile::tempdir().unwrap();
            let root = dir.path().join("data");
            std::fs::create_dir_all(root.join("etc")).unwrap();
            for i in 0..30 {
                std::fs::write(
                    root.join(format!("etc/small-{i}.conf")),
                    text(700 + i * 10, i as u64),
                )
                .unwrap();
            }
            std::fs::write(root.join("audit-1.jsonl"), text(5 << 20, 101)).unwrap();
            std::fs::write(root.join("audit-2.jsonl"), text(300_000, 102)).unwrap();
            let mut s = 7u64;
            let random: Vec<u8> = (0..1_500_000)
                .map(|_| {
                    s ^= s << 13;
                    s ^= s >> 7;
                    s ^= s << 17;
                    (s >> 24) as u8
                })
                .collect();
            std::fs::write(root.join("firmware.bin"), random).unwrap();
            std::fs::write(root.join("exactly-64k.bin"), text(MIN_FILE as usize, 103)).unwrap();
            settle(&root);
            Source { dir }
        }

        fn root(&self) -> PathBuf {
            self.dir.path().join("data")
        }

        fn state(&self) -> PathBuf {
            self.dir.path().join("state")
        }
    }

    fn settings() -> Settings {
        Settings {
            limit: None,
            full_read_every: 1000,
            read_all: false,
        }
    }

    /// One backup of the files component over `root`: the decompressed
    /// tar, the component's digest and what the cache did.
    fn backup(
        root: &Path,
        state: &Path,
        codec: Compression,
        settings: Settings,
    ) -> (Vec<u8>, String, Option<Stats>) {
        let (payload, digest, stats) = backup_payload(root, state, codec, settings);
        let mut tar_bytes = Vec::new();
        crate::image::codec::decoder(&payload[..])
            .unwrap()
            .read_to_end(&mut tar_bytes)
            .unwrap();
        (tar_bytes, digest, stats)
    }

    /// [`backup`]'s compressed payload, not decompressed.
    fn backup_payload(
        root: &Path,
        state: &Path,
        codec: Compression,
        settings: Settings,
    ) -> (Vec<u8>, String, Option<Stats>) {
        let session = Session::open(state, codec, 3, settings)
            .unwrap()
            .map(|s| Arc::new(Mutex::new(s)));
        let encoder = Encoder::with_threads(Vec::new(), codec, 3, 2).unwrap();
        let mut tar = TarWriter::new(encoder, Arc::new(crate::progress::NoProgress));
        if let Some(s) = &session {
            tar.use_frame_cache(s.clone());
        }
        let files = FilesComponent::new("files", vec![root.to_path_buf()], &[], None).unwrap();
        tar.begin_component("files", &[root.display().to_string()])
            .unwrap();
        let scratch = tempfile::tempdir().unwrap();
        files.snapshot(&mut tar, scratch.path()).unwrap();
        let (digest, warnings) = tar.end_component();
        assert!(warnings.is_empty(), "{warnings:?}");
        let payload = tar.finish().unwrap().finish().unwrap();
        let stats = session.map(|s| {
            Arc::into_inner(s)
                .unwrap()
                .into_inner()
                .unwrap()
                .commit()
                .unwrap()
        });
        (payload, digest.hex(), stats)
    }

    fn frame_files(state: &Path) -> Vec<PathBuf> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(state.join(DIR).join(FRAMES))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        files.sort();
        files
    }

    fn index(state: &Path) -> Index {
        read_index(&state.join(DIR).join(INDEX)).expect("a whole index")
    }

    fn write_index(state: &Path, index: &Index) {
        let body = serde_json::to_vec(index).unwrap();
        let mut data = hex::encode(Sha256::digest(&body)).into_bytes();
        data.push(b'\n');
        data.extend_from_slice(&body);
        std::fs::write(state.join(DIR).join(INDEX), data).unwrap();
    }

    #[test]
    fn a_warm_cache_gives_the_same_tar_and_digest_without_reading_the_files() {
        for codec in [Compression::Gzip, Compression::Zstd] {
            let src = Source::new();
            let (plain, plain_digest, none) = backup(
                &src.root(),
                &src.state(),
                codec,
                Settings {
                    limit: Some(0),
                    ..settings()
                },
            );
            assert!(none.is_none() && !src.state().join(DIR).exists());
            let (cold, cold_digest, cold_stats) =
                backup(&src.root(), &src.state(), codec, settings());
            assert_eq!((&cold, &cold_digest), (&plain, &plain_digest), "{codec:?}");
            assert!(cold_stats.unwrap().full_read);
            // The four files of 64 KiB or more are cached.
            assert_eq!(index(&src.state()).entries.len(), 4);
            let (warm, warm_digest, stats) = backup(&src.root(), &src.state(), codec, settings());
            let stats = stats.unwrap();
            assert_eq!((&warm, &warm_digest), (&plain, &plain_digest), "{codec:?}");
            assert_eq!(
                (
                    stats.reused_files,
                    stats.reused_bytes,
                    stats.damaged,
                    stats.full_read
                ),
                (4, (5 << 20) + 300_000 + 1_500_000 + MIN_FILE, 0, false)
            );
            // Made unreadable, an unchanged file's content still comes from
            // the cache: it was not read.
            let big = src.root().join("audit-1.jsonl");
            std::fs::set_permissions(&big, std::fs::Permissions::from_mode(0o000)).unwrap();
            if std::fs::File::open(&big).is_err() {
                let (again, digest, _) = backup(&src.root(), &src.state(), codec, settings());
                assert_eq!((again, digest), (plain.clone(), plain_digest.clone()));
            }
            std::fs::set_permissions(&big, std::fs::Permissions::from_mode(0o644)).unwrap();
        }
    }

    #[test]
    fn each_large_file_is_whole_frames_holding_exactly_its_tar_entry() {
        let src = Source::new();
        let (tar, _, _) = backup(&src.root(), &src.state(), Compression::Zstd, settings());
        let session = Session::open(&src.state(), Compression::Zstd, 3, settings())
            .unwrap()
            .unwrap();
        for entry in index(&src.state()).entries {
            let mut frames = session.frames(&entry).unwrap();
            let mut raw = Vec::new();
            while let Some((frame, len)) = frames.next_checked().unwrap() {
                let at = raw.len();
                crate::image::codec::decoder(&frame[..])
                    .unwrap()
                    .read_to_end(&mut raw)
                    .unwrap();
                assert_eq!((raw.len() - at) as u64, len);
            }
            let header = entry.header as usize;
            let size = entry.key.size as usize;
            // The frames hold the tar header, the file and its padding,
            // found as one piece in the tar.
            let at = tar
                .windows(raw.len())
                .position(|w| w == raw)
                .expect("in the tar");
            assert_eq!(at % 512, 0);
            let name = String::from_utf8(hex::decode(&entry.key.path).unwrap()).unwrap();
            let file = std::fs::read(Path::new("/").join(&name)).unwrap();
            assert_eq!(&raw[header..header + size], &file[..], "{name}");
            assert_eq!(
                entry.content_sha256(),
                Some(Sha256::digest(&file).into()),
                "{name}"
            );
            assert!(raw[header + size..].iter().all(|&b| b == 0));
        }
    }

    #[test]
    fn the_ratio_stays_within_half_a_percent_of_frames_cut_anywhere() {
        for codec in [Compression::Gzip, Compression::Zstd] {
            let src = Source::new();
            let size = |settings| {
                let session = Session::open(&src.state(), codec, 3, settings).unwrap();
                let encoder = Encoder::with_threads(Vec::new(), codec, 3, 2).unwrap();
                let mut tar = TarWriter::new(encoder, Arc::new(crate::progress::NoProgress));
                if let Some(s) = session {
                    tar.use_frame_cache(Arc::new(Mutex::new(s)));
                }
                let files = FilesComponent::new("files", vec![src.root()], &[], None).unwrap();
                tar.begin_component("files", &[src.root().display().to_string()])
                    .unwrap();
                files.snapshot(&mut tar, Path::new("/tmp")).unwrap();
                tar.finish().unwrap().finish().unwrap().len() as f64
            };
            let (cut, uncut) = (
                size(settings()),
                size(Settings {
                    limit: Some(0),
                    ..settings()
                }),
            );
            assert!(cut <= uncut * 1.005, "{codec:?}: {cut} vs {uncut}");
        }
    }

    #[test]
    fn damaged_truncated_or_missing_frames_are_never_used() {
        for codec in [Compression::Gzip, Compression::Zstd] {
            let src = Source::new();
            let (plain, plain_digest, _) = backup(&src.root(), &src.state(), codec, settings());
            let files = frame_files(&src.state());
            assert_eq!(files.len(), 4);
            // A flipped byte in the last frame of the 5 MiB file (several
            // frames: the first ones go in, the rest is read from the file),
            // a truncated file, a missing one, one replaced by zeros.
            let entries = index(&src.state()).entries;
            let big = entries.iter().find(|e| e.key.size == 5 << 20).unwrap();
            assert!(big.frames.len() >= 3, "{:?}", big.frames);
            let big_file = src.state().join(DIR).join(FRAMES).join(&big.file);
            let mut data = std::fs::read(&big_file).unwrap();
            let n = data.len();
            data[n - 100] ^= 0x40;
            std::fs::write(&big_file, data).unwrap();
            let others: Vec<PathBuf> = files.iter().filter(|f| **f != big_file).cloned().collect();
            let data = std::fs::read(&others[0]).unwrap();
            std::fs::write(&others[0], &data[..data.len() / 2]).unwrap();
            std::fs::remove_file(&others[1]).unwrap();
            let len = std::fs::metadata(&others[2]).unwrap().len();
            std::fs::write(&others[2], vec![0u8; len as usize]).unwrap();
            let (tar, digest, stats) = backup(&src.root(), &src.state(), codec, settings());
            assert_eq!((&tar, &digest), (&plain, &plain_digest), "{codec:?}");
            let stats = stats.unwrap();
            assert_eq!((stats.reused_files, stats.damaged), (0, 4), "{codec:?}");
            // The damaged entries are read in full and recorded anew.
            for reused in [4, 4] {
                let (tar, _, stats) = backup(&src.root(), &src.state(), codec, settings());
                assert_eq!(tar, plain);
                assert_eq!(stats.unwrap().reused_files, reused, "{codec:?}");
            }
        }
    }

    #[test]
    fn a_forged_cache_entry_makes_an_image_that_cannot_be_read_not_a_wrong_one() {
        // Cached frames are not decompressed on their way in: damage with
        // its CRC-32 fixed up and the index's checksum recomputed (a forgery
        // by someone who can write the state directory, not wear) gets into
        // the payload. The codec's own checksum of the content (XXH64 in a
        // zstd frame, CRC-32 in a gzip member) refuses it on every read, and
        // the manifest's digest still holds the content hash of the file, so
        // such an image fails verify and restore instead of restoring wrong
        // data.
        for codec in [Compression::Gzip, Compression::Zstd] {
            let src = Source::new();
            let (plain, plain_digest, _) = backup(&src.root(), &src.state(), codec, settings());
            let mut idx = index(&src.state());
            let entry = idx
                .entries
                .iter_mut()
                .find(|e| e.key.size == 300_000)
                .unwrap();
            let path = src.state().join(DIR).join(FRAMES).join(&entry.file);
            let mut data = std::fs::read(&path).unwrap();
            let n = data.len();
            data[n / 2] ^= 1;
            std::fs::write(&path, &data).unwrap();
            let mut crc = flate2::Crc::new();
            crc.update(&data);
            entry.frames[0].crc = crc.sum();
            assert_eq!(entry.frames.len(), 1);
            write_index(&src.state(), &idx);
            let (payload, digest, stats) =
                backup_payload(&src.root(), &src.state(), codec, settings());
            assert_eq!(stats.unwrap().reused_files, 4, "{codec:?}");
            // The digest is the one of the files' true content …
            assert_eq!(digest, plain_digest, "{codec:?}");
            // … and the payload cannot be read past the forged frame.
            let mut tar = Vec::new();
            let read = crate::image::codec::decoder(&payload[..])
                .unwrap()
                .read_to_end(&mut tar);
            assert!(read.is_err(), "{codec:?}: the forged frame was read");
            assert_ne!(tar, plain);
        }
    }

    #[test]
    fn a_damaged_index_or_another_codec_or_level_means_reading_everything() {
        let src = Source::new();
        let (plain, _, _) = backup(&src.root(), &src.state(), Compression::Gzip, settings());
        let path = src.state().join(DIR).join(INDEX);
        let mut data = std::fs::read(&path).unwrap();
        let n = data.len();
        data[n - 10] ^= 1;
        std::fs::write(&path, &data).unwrap();
        let (tar, _, stats) = backup(&src.root(), &src.state(), Compression::Gzip, settings());
        assert_eq!(tar, plain);
        assert!(stats.unwrap().full_read);
        // Frames of gzip are no use to zstd, nor level 3's to level 6.
        let (_, _, stats) = backup(&src.root(), &src.state(), Compression::Zstd, settings());
        assert!(stats.unwrap().full_read);
        let s = Session::open(&src.state(), Compression::Zstd, 6, settings())
            .unwrap()
            .unwrap();
        assert!(s.stats.full_read && s.old.is_empty());
    }

    #[test]
    fn a_change_the_key_cannot_see_is_caught_by_the_full_read() {
        let src = Source::new();
        let file = src.root().join("audit-2.jsonl");
        let (old, _, _) = backup(&src.root(), &src.state(), Compression::Zstd, settings());
        // The content changes; the cache is made to believe the key still
        // matches (as for a file rewritten with its size, mtime and ctime
        // kept, which the file system does not show).
        let mut new = std::fs::read(&file).unwrap();
        new[1000..1010].copy_from_slice(b"CHANGED!!!");
        std::fs::write(&file, &new).unwrap();
        settle(&file);
        let stat = FileStat::from_metadata(&std::fs::metadata(&file).unwrap());
        let mut idx = index(&src.state());
        for e in &mut idx.entries {
            if e.key.size == 300_000 {
                e.key.files = vec![stat];
                e.key.entry_mtime = stat.mtime.0 as u64;
            }
        }
        write_index(&src.state(), &idx);
        let stale = |tar: &[u8]| tar.windows(10).any(|w| w == b"CHANGED!!!");
        // The documented trade-off: reused.
        let (tar, _, _) = backup(&src.root(), &src.state(), Compression::Zstd, settings());
        assert!(!stale(&tar));
        let _ = old;
        write_index(&src.state(), &idx);
        let every = Settings {
            full_read_every: 1,
            ..settings()
        };
        let (tar, _, stats) = backup(&src.root(), &src.state(), Compression::Zstd, every);
        assert!(stale(&tar) && stats.unwrap().full_read);
        write_index(&src.state(), &idx);
        let no_cache = Settings {
            read_all: true,
            ..settings()
        };
        let (tar, _, stats) = backup(&src.root(), &src.state(), Compression::Zstd, no_cache);
        assert!(stale(&tar) && stats.unwrap().full_read);
    }

    #[test]
    fn every_nth_backup_reads_everything() {
        let src = Source::new();
        let every = Settings {
            full_read_every: 3,
            ..settings()
        };
        let full: Vec<bool> = (0..7)
            .map(|_| {
                backup(&src.root(), &src.state(), Compression::Zstd, every)
                    .2
                    .unwrap()
                    .full_read
            })
            .collect();
        assert_eq!(full, [true, false, false, true, false, false, true]);
    }

    #[test]
    fn a_file_modified_just_before_it_is_read_is_not_cached() {
        // A write in the same clock tick as the one before the read would
        // leave mtime and ctime as the key recorded them: such a file is
        // read every time until it has been quiet for SETTLE.
        let src = Source::new();
        let fresh = src.root().join("audit-2.jsonl");
        std::fs::write(&fresh, text(300_000, 55)).unwrap();
        let (first, _, _) = backup(&src.root(), &src.state(), Compression::Zstd, settings());
        let sizes = |state: &Path| -> Vec<u64> {
            let mut s: Vec<u64> = index(state).entries.iter().map(|e| e.key.size).collect();
            s.sort();
            s
        };
        assert_eq!(sizes(&src.state()), [MIN_FILE, 1_500_000, 5 << 20]);
        // Rewritten right after it was read, same size, same second.
        let mut changed = std::fs::read(&fresh).unwrap();
        changed[..7].copy_from_slice(b"CHANGED");
        std::fs::write(&fresh, &changed).unwrap();
        let (tar, _, stats) = backup(&src.root(), &src.state(), Compression::Zstd, settings());
        assert_eq!(stats.unwrap().reused_files, 3);
        assert!(tar.windows(7).any(|w| w == b"CHANGED"));
        assert_ne!(tar, first);
        // Quiet for long enough: cached, then reused.
        settle(&fresh);
        backup(&src.root(), &src.state(), Compression::Zstd, settings());
        assert_eq!(sizes(&src.state()), [MIN_FILE, 300_000, 1_500_000, 5 << 20]);
        let (again, _, stats) = backup(&src.root(), &src.state(), Compression::Zstd, settings());
        assert_eq!(stats.unwrap().reused_files, 4);
        assert!(again.windows(7).any(|w| w == b"CHANGED"));
    }

    #[test]
    fn the_cache_keeps_only_what_the_last_backup_used_within_its_limit() {
        let src = Source::new();
        backup(&src.root(), &src.state(), Compression::Zstd, settings());
        std::fs::remove_file(src.root().join("firmware.bin")).unwrap();
        std::fs::write(src.root().join("audit-2.jsonl"), text(300_001, 9)).unwrap();
        settle(&src.root().join("audit-2.jsonl"));
        backup(&src.root(), &src.state(), Compression::Zstd, settings());
        let idx = index(&src.state());
        let mut sizes: Vec<u64> = idx.entries.iter().map(|e| e.key.size).collect();
        sizes.sort();
        assert_eq!(sizes, [MIN_FILE, 300_001, 5 << 20]);
        let total: u64 = idx.entries.iter().map(Entry::bytes).sum();
        let on_disk: u64 = frame_files(&src.state())
            .iter()
            .map(|f| std::fs::metadata(f).unwrap().len())
            .sum();
        assert_eq!((frame_files(&src.state()).len(), on_disk), (3, total));
        // A limit below that keeps the cache within it.
        for limit in [total - 1, 200_000, 1] {
            let s = Settings {
                limit: Some(limit),
                ..settings()
            };
            let (_, _, stats) = backup(&src.root(), &src.state(), Compression::Zstd, s);
            let _ = stats;
            let on_disk: u64 = frame_files(&src.state())
                .iter()
                .map(|f| std::fs::metadata(f).unwrap().len())
                .sum();
            assert!(on_disk <= limit, "{on_disk} > {limit}");
            let idx: u64 = index(&src.state()).entries.iter().map(Entry::bytes).sum();
            assert_eq!(idx, on_disk);
        }
        // 0 removes it.
        backup(
            &src.root(),
            &src.state(),
            Compression::Zstd,
            Settings {
                limit: Some(0),
                ..settings()
            },
        );
        assert!(!src.state().join(DIR).exists());
    }

    #[test]
    fn the_cache_is_private_to_its_owner() {
        let src = Source::new();
        backup(&src.root(), &src.state(), Compression::Gzip, settings());
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        let dir = src.state().join(DIR);
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&dir.join(FRAMES)), 0o700);
        assert_eq!(mode(&dir.join(INDEX)), 0o600);
        for f in frame_files(&src.state()) {
            assert_eq!(mode(&f), 0o600, "{}", f.display());
        }
    }

    #[test]
    fn frames_left_by_a_crashed_backup_are_removed_and_the_old_index_still_serves() {
        let src = Source::new();
        let (plain, _, _) = backup(&src.root(), &src.state(), Compression::Zstd, settings());
        // A backup that recorded a file and never committed.
        let mut s = Session::open(&src.state(), Compression::Zstd, 3, settings())
            .unwrap()
            .unwrap();
        let key = index(&src.state()).entries[0].key.clone();
        let tag = s.record(key);
        s.frame(tag, b"partial", 7);
        drop(s);
        assert_eq!(frame_files(&src.state()).len(), 5);
        let (tar, _, stats) = backup(&src.root(), &src.state(), Compression::Zstd, settings());
        assert_eq!(tar, plain);
        assert_eq!(stats.unwrap().reused_files, 4);
        assert_eq!(frame_files(&src.state()).len(), 4);
    }
}
