//! Reading the payload: codec detection, tar entries, digests, manifest checks.
use std::collections::BTreeMap;
use std::io::{self, Read};
use std::path::{Component as PathPart, Path, PathBuf};

use super::check::EntryRules;
use super::pipe;
use super::{
    BackupInfo, DigestScheme, EntryDigest, EntryKind, Manifest, Outcome, BACKUP_JSON,
    COMPONENTS_DIR, MANIFEST_JSON,
};
use crate::{Error, Result};

/// Largest `backup.json` / `manifest.json` accepted.
const MAX_JSON: u64 = 16 << 20;

/// Opens the codec of a decrypted payload by its magic bytes (gzip, zstd or
/// plain tar), so restore needs no configuration to know it.
pub(crate) fn decoder<'a, R: Read + 'a>(payload: R) -> io::Result<Box<dyn Read + 'a>> {
    super::codec::decoder(payload)
}

/// One component entry as seen by a visitor.
pub(crate) struct EntryView<'a> {
    /// Path relative to the component.
    pub(crate) rel: &'a Path,
    pub(crate) kind: EntryKind,
    pub(crate) mode: u32,
    pub(crate) mtime: u64,
    pub(crate) uid: u64,
    pub(crate) gid: u64,
    /// Link target: relative to the component for hard links, as stored for symlinks.
    pub(crate) link: Option<PathBuf>,
    pub(crate) size: u64,
}

/// What a walk over the payload does with what it finds.
pub(crate) trait Visitor {
    /// `backup.json` was read (before any component entry): pre-checks go here.
    fn info(&mut self, info: &BackupInfo) -> Result<()>;
    /// A component entry; `data` yields its content (whatever is not read is
    /// drained and still hashed).
    fn entry(&mut self, component: &str, entry: &EntryView<'_>, data: &mut dyn Read) -> Result<()>;
}

/// What a complete walk established.
#[derive(Debug)]
pub(crate) struct WalkResult {
    pub(crate) info: BackupInfo,
    pub(crate) manifest: Manifest,
}

/// Reads a whole payload, checking its structure and every component's digest
/// against the manifest, and drains the stream to its end so the final
/// encrypted chunk is authenticated.
///
/// Three stages overlap, each on its own thread with bounded pipes between
/// them: reading and decrypting `payload`, decompressing, and the walk itself
/// (tar parsing and whatever the visitor does — extraction, on restore).
/// Errors of the earlier stages reach the walk unchanged, in stream order.
pub(crate) fn walk<R: Read + Send>(payload: R, visitor: &mut dyn Visitor) -> Result<WalkResult> {
    walk_entries(payload, visitor)?.checked()
}

/// What a walk saw, before the manifest is compared with it.
pub(crate) struct Walked {
    pub(crate) info: BackupInfo,
    /// `manifest.json`, if the payload has one.
    pub(crate) manifest: Option<Manifest>,
    /// Each component's digest as computed from its entries.
    pub(crate) digests: BTreeMap<String, EntryDigest>,
}

impl Walked {
    /// The manifest must be there and match every successful component.
    pub(crate) fn checked(self) -> Result<WalkResult> {
        let manifest = self.manifest.ok_or_else(|| {
            Error::InvalidImage(
                "the payload ends without manifest.json: the backup did not finish writing it"
                    .into(),
            )
        })?;
        check_manifest(&self.info, &manifest, &self.digests)?;
        Ok(WalkResult {
            info: self.info,
            manifest,
        })
    }
}

/// [`walk`] without the final comparison with the manifest: every other
/// check runs, and the digests are returned (to recompute a manifest).
pub(crate) fn walk_entries<R: Read + Send>(
    payload: R,
    visitor: &mut dyn Visitor,
) -> Result<Walked> {
    let pipeline_err = |e: io::Error| Error::from_pipeline_io("reading the image", e);
    std::thread::scope(|s| {
        let plain =
            pipe::read_ahead(s, "backup-decrypt", move || Ok(payload)).map_err(pipeline_err)?;
        let tar_stream = pipe::read_ahead(s, "backup-decompress", move || decoder(plain))
            .map_err(pipeline_err)?;
        walk_tar(tar_stream, visitor)
    })
}

fn walk_tar<R: Read>(tar_stream: R, visitor: &mut dyn Visitor) -> Result<Walked> {
    let pipeline_err = |e: io::Error| Error::from_pipeline_io("reading the image", e);
    let mut archive = tar::Archive::new(tar_stream);
    let entries = archive.entries().map_err(pipeline_err)?;
    let mut info: Option<BackupInfo> = None;
    let mut manifest: Option<Manifest> = None;
    let mut digests: BTreeMap<String, EntryDigest> = BTreeMap::new();
    // The archive-safety rules of each component: every walk checks every
    // entry, so verify refuses exactly what restore would.
    let mut rules: BTreeMap<String, EntryRules> = BTreeMap::new();

    for next in entries {
        let mut entry = next.map_err(pipeline_err)?;
        let raw_path = entry.path_bytes().into_owned();
        let shown = String::from_utf8_lossy(&raw_path).into_owned();
        if manifest.is_some() {
            return Err(Error::InvalidImage(format!(
                "entry {shown:?} follows manifest.json"
            )));
        }
        let path = bytes_path(&raw_path);
        if path == Path::new(BACKUP_JSON) {
            if info.is_some() {
                return Err(Error::InvalidImage("backup.json appears twice".into()));
            }
            let parsed: BackupInfo = read_json(&mut entry, BACKUP_JSON)?;
            if !(super::OLDEST_PAYLOAD_FORMAT..=super::PAYLOAD_FORMAT).contains(&parsed.format) {
                return Err(Error::InvalidImage(format!(
                    "payload format {} is not supported by this engine (it reads formats {} to {}); use a newer backup tool",
                    parsed.format,
                    super::OLDEST_PAYLOAD_FORMAT,
                    super::PAYLOAD_FORMAT
                )));
            }
            for planned in &parsed.components {
                let checks =
                    EntryRules::new(&planned.roots).map_err(|reason| Error::UnsafeArchive {
                        entry: BACKUP_JSON.into(),
                        reason: format!("component {}: {reason}", planned.name),
                    })?;
                rules.insert(planned.name.clone(), checks);
            }
            visitor.info(&parsed)?;
            info = Some(parsed);
            continue;
        }
        let Some(info) = info.as_ref() else {
            // `tar -C DIR -czf FILE .` names every entry `./…`.
            let hint = if shown.starts_with("./") {
                "; re-pack it naming the three at the top, backup.json first: `tar -C DIR -czf FILE backup.json components manifest.json`"
            } else {
                ""
            };
            return Err(Error::InvalidImage(format!(
                "the first entry is {shown:?}, not backup.json: this is not a backup image payload{hint}"
            )));
        };
        if path == Path::new(MANIFEST_JSON) {
            manifest = Some(read_json(&mut entry, MANIFEST_JSON)?);
            continue;
        }
        if entry.header().entry_type() == tar::EntryType::Directory
            && is_structural_dir(info, &path)
        {
            // `components/`, `components/<name>/` and the parents of a root
            // carry nothing: GNU tar adds them when a payload is re-packed by hand.
            continue;
        }
        let (component, rel) = split_component(&path).ok_or_else(|| Error::UnsafeArchive {
            entry: shown.clone(),
            reason: "not under components/<name>/, or it has absolute, '.' or '..' parts".into(),
        })?;
        if !info.components.iter().any(|c| c.name == component) {
            return Err(Error::UnsafeArchive {
                entry: shown,
                reason: format!("component {component:?} is not listed in backup.json"),
            });
        }
        let header = entry.header();
        let kind = match header.entry_type() {
            tar::EntryType::Directory => EntryKind::Dir,
            tar::EntryType::Regular | tar::EntryType::Continuous => EntryKind::File,
            tar::EntryType::Symlink => EntryKind::Symlink,
            tar::EntryType::Link => EntryKind::Hardlink,
            other => {
                return Err(Error::UnsafeArchive {
                    entry: shown,
                    reason: format!(
                        "entry type {other:?} (device, FIFO or unknown) is never restored"
                    ),
                })
            }
        };
        let mode = header.mode().map_err(pipeline_err)?;
        let mtime = header.mtime().map_err(pipeline_err)?;
        let uid = header.uid().map_err(pipeline_err)?;
        let gid = header.gid().map_err(pipeline_err)?;
        let size = if kind == EntryKind::File {
            entry.size()
        } else {
            0
        };
        let link_raw = entry.link_name_bytes().map(|l| l.into_owned());
        let link = match (kind, link_raw) {
            (EntryKind::Symlink, Some(l)) => Some(bytes_path(&l)),
            (EntryKind::Hardlink, Some(l)) => {
                let target = bytes_path(&l);
                match split_component(&target) {
                    Some((c, r)) if c == component => Some(r),
                    _ => {
                        return Err(Error::UnsafeArchive {
                            entry: shown,
                            reason: format!(
                                "hard link to {} leaves its component",
                                target.display()
                            ),
                        })
                    }
                }
            }
            (EntryKind::Symlink | EntryKind::Hardlink, None) => {
                return Err(Error::InvalidImage(format!(
                    "link entry {shown:?} has no target"
                )))
            }
            _ => None,
        };
        let hardlink_target = link.as_deref().filter(|_| kind == EntryKind::Hardlink);
        rules
            .get_mut(&component)
            .expect("a rule set per listed component")
            .check(&rel, kind, hardlink_target)
            .map_err(|reason| Error::UnsafeArchive {
                entry: shown.clone(),
                reason,
            })?;
        let link_bytes = link.as_deref().map(path_bytes).unwrap_or_default().to_vec();
        let scheme = DigestScheme::of_format(info.format);
        let digest = digests
            .entry(component.clone())
            .or_insert_with(|| EntryDigest::new(scheme));
        digest.entry(path_bytes(&rel), kind, mode, mtime, &link_bytes, size);
        let view = EntryView {
            rel: &rel,
            kind,
            mode,
            mtime,
            uid,
            gid,
            link,
            size,
        };
        let mut hashing = HashingReader {
            inner: &mut entry,
            digest,
            read: 0,
        };
        visitor.entry(&component, &view, &mut hashing)?;
        io::copy(&mut hashing, &mut io::sink()).map_err(pipeline_err)?;
        if hashing.read != size {
            return Err(Error::InvalidImage(format!(
                "{shown} is shorter than its header says ({} of {size} bytes)",
                hashing.read
            )));
        }
    }
    // The tar end marker was reached: drain the rest (padding, gzip trailer,
    // and the final encrypted chunk, which authenticates the stream's length).
    let mut rest = archive.into_inner();
    io::copy(&mut rest, &mut io::sink()).map_err(pipeline_err)?;

    let info =
        info.ok_or_else(|| Error::InvalidImage("the payload holds no backup.json".into()))?;
    Ok(Walked {
        info,
        manifest,
        digests,
    })
}

/// Every successful component's entries must match the manifest exactly, and
/// failed components must not be counted as restorable.
pub(crate) fn check_manifest(
    info: &BackupInfo,
    manifest: &Manifest,
    digests: &BTreeMap<String, EntryDigest>,
) -> Result<()> {
    for planned in &info.components {
        if !manifest.components.iter().any(|r| r.name == planned.name) {
            return Err(Error::InvalidImage(format!(
                "manifest.json has no record of component {}",
                planned.name
            )));
        }
    }
    for record in &manifest.components {
        if !info.components.iter().any(|p| p.name == record.name) {
            return Err(Error::InvalidImage(format!(
                "manifest.json records unplanned component {}",
                record.name
            )));
        }
        if record.outcome != Outcome::Success {
            continue;
        }
        let empty = EntryDigest::default();
        let got = digests.get(&record.name).unwrap_or(&empty);
        if got.entries() != record.entries
            || got.bytes() != record.bytes
            || got.hex() != record.sha256
        {
            return Err(Error::InvalidImage(format!(
                "component {} does not match its manifest (manifest: {} entries, {} bytes, sha256 {}; image: {} entries, {} bytes, sha256 {}) — the payload was altered",
                record.name,
                record.entries,
                record.bytes,
                record.sha256,
                got.entries(),
                got.bytes(),
                got.hex()
            )));
        }
    }
    Ok(())
}

/// A directory entry that is `components/`, `components/<name>/`, or a strict
/// ancestor of one of the component's roots.
fn is_structural_dir(info: &BackupInfo, path: &Path) -> bool {
    let Ok(below) = path.strip_prefix(COMPONENTS_DIR) else {
        return false;
    };
    let mut parts = below.components();
    let Some(PathPart::Normal(name)) = parts.next() else {
        return below.as_os_str().is_empty();
    };
    let rel: PathBuf = parts.collect();
    let Some(planned) = info.components.iter().find(|c| name == c.name.as_str()) else {
        return false;
    };
    rel.as_os_str().is_empty()
        || planned.roots.iter().any(|root| {
            let root = Path::new(root).strip_prefix("/").unwrap_or(Path::new(root));
            root != rel && root.starts_with(&rel)
        })
}

fn read_json<T: serde::de::DeserializeOwned>(entry: &mut dyn Read, what: &str) -> Result<T> {
    let mut data = Vec::new();
    entry
        .take(MAX_JSON + 1)
        .read_to_end(&mut data)
        .map_err(|e| Error::from_pipeline_io("reading the image", e))?;
    if data.len() as u64 > MAX_JSON {
        return Err(Error::InvalidImage(format!(
            "{what} is larger than {MAX_JSON} bytes"
        )));
    }
    serde_json::from_slice(&data)
        .map_err(|e| Error::InvalidImage(format!("{what} is not valid: {e}")))
}

fn bytes_path(b: &[u8]) -> PathBuf {
    use std::os::unix::ffi::OsStrExt;
    PathBuf::from(std::ffi::OsStr::from_bytes(b))
}

fn path_bytes(p: &Path) -> &[u8] {
    use std::os::unix::ffi::OsStrExt;
    p.as_os_str().as_bytes()
}

/// `components/<name>/<rel>` → (name, rel), refusing anything but plain
/// path parts (no root, no `.`, no `..`).
fn split_component(path: &Path) -> Option<(String, PathBuf)> {
    let mut parts = path.components();
    if parts.next()? != PathPart::Normal(COMPONENTS_DIR.as_ref()) {
        return None;
    }
    let PathPart::Normal(name) = parts.next()? else {
        return None;
    };
    let rel: PathBuf = parts.clone().collect();
    if rel.as_os_str().is_empty() || !parts.all(|p| matches!(p, PathPart::Normal(_))) {
        return None;
    }
    // `components()` silently drops interior `.` parts; refuse them explicitly.
    if path_bytes(path)
        .split(|b| *b == b'/')
        .any(|s| s == b"." || s == b"..")
    {
        return None;
    }
    Some((name.to_str()?.to_string(), rel))
}

struct HashingReader<'a, R: Read> {
    inner: &'a mut R,
    digest: &'a mut EntryDigest,
    /// Content bytes read so far.
    read: u64,
}

impl<R: Read> Read for HashingReader<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.digest.content(&buf[..n]);
        self.read += n as u64;
        Ok(n)
    }
}

/// A visitor that only lets the walk check things.
pub(crate) struct NullVisitor;

impl Visitor for NullVisitor {
    fn info(&mut self, _info: &BackupInfo) -> Result<()> {
        Ok(())
    }
    fn entry(&mut self, _c: &str, _e: &EntryView<'_>, _d: &mut dyn Read) -> Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_component_refuses_escapes() {
        let ok = split_component(Path::new("components/config/etc/gw/a.conf")).unwrap();
        assert_eq!(ok, ("config".to_string(), PathBuf::from("etc/gw/a.conf")));
        for bad in [
            "/components/config/etc",
            "components/config/../../etc/passwd",
            "components/config/./x",
            "components/config",
            "components/../x",
            "other/config/x",
            "components/config/a/../../b",
        ] {
            assert!(split_component(Path::new(bad)).is_none(), "{bad} accepted");
        }
    }
}
