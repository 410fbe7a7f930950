//! Hostile images: payload surgery at the level of raw tar headers (names and
//! link names written byte for byte, which the tar crate's own setters
//! refuse), and sealing a payload under an appliance's key with none of the
//! checks `backup encrypt` makes. Panics on I/O errors: these build test
//! inputs.

use std::ffi::OsStr;
use std::fs;
use std::io::{Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use backup_core::{KeyFile, KeySource, Keyring};

/// One raw tar entry, for payload surgery.
#[derive(Clone)]
pub struct RawEntry {
    /// The entry's name, as stored.
    pub path: Vec<u8>,
    /// The link target (symbolic and hard links), as stored.
    pub link: Option<Vec<u8>>,
    /// The header (type, mode, owner, times, device numbers).
    pub header: tar::Header,
    /// The content.
    pub data: Vec<u8>,
}

/// The entries of a gzip-compressed tar payload (every member), in order.
pub fn read_payload(path: &Path) -> Vec<RawEntry> {
    let f = fs::File::open(path).unwrap();
    let mut archive = tar::Archive::new(flate2::read::MultiGzDecoder::new(f));
    let mut out = Vec::new();
    for e in archive.entries().unwrap() {
        let mut e = e.unwrap();
        let mut data = Vec::new();
        e.read_to_end(&mut data).unwrap();
        out.push(RawEntry {
            path: e.path_bytes().into_owned(),
            link: e.link_name_bytes().map(|l| l.into_owned()),
            header: e.header().clone(),
            data,
        });
    }
    out
}

/// An entry whose name and link name are written byte for byte (the tar
/// crate's path setters refuse `..` and absolute paths).
pub fn evil(kind: tar::EntryType, path: &str, link: Option<&str>, data: &[u8]) -> RawEntry {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(if kind == tar::EntryType::Directory {
        0o755
    } else {
        0o644
    });
    h.set_mtime(1_600_000_000);
    h.set_size(data.len() as u64);
    h.set_uid(0);
    h.set_gid(0);
    RawEntry {
        path: path.as_bytes().to_vec(),
        link: link.map(|l| l.as_bytes().to_vec()),
        header: h,
        data: data.to_vec(),
    }
}

/// A device node entry (character or block) with its device numbers.
pub fn dev(kind: tar::EntryType, path: &str, major: u32, minor: u32) -> RawEntry {
    let mut e = evil(kind, path, None, b"");
    e.header.set_device_major(major).unwrap();
    e.header.set_device_minor(minor).unwrap();
    e
}

/// Writes `entries` as a gzip-compressed tar payload at `out`: short names
/// byte for byte into the GNU header, long (benign) names through the tar
/// crate's long-name records.
pub fn write_payload(entries: &[RawEntry], out: &Path) {
    let mut b = tar::Builder::new(Vec::new());
    for e in entries {
        let mut h = e.header.clone();
        let raw = e.path.len() < 100 && e.link.as_ref().is_none_or(|l| l.len() < 100);
        if raw {
            let gnu = h.as_gnu_mut().expect("GNU headers");
            gnu.name = [0; 100];
            gnu.name[..e.path.len()].copy_from_slice(&e.path);
            gnu.linkname = [0; 100];
            if let Some(l) = &e.link {
                gnu.linkname[..l.len()].copy_from_slice(l);
            }
            h.set_size(e.data.len() as u64);
            h.set_cksum();
            b.append(&h, &e.data[..]).unwrap();
        } else {
            let path = Path::new(OsStr::from_bytes(&e.path));
            match &e.link {
                Some(l) => b
                    .append_link(&mut h, path, Path::new(OsStr::from_bytes(l)))
                    .unwrap(),
                None => b.append_data(&mut h, path, &e.data[..]).unwrap(),
            }
        }
    }
    let tar = b.into_inner().unwrap();
    let mut gz =
        flate2::write::GzEncoder::new(fs::File::create(out).unwrap(), flate2::Compression::fast());
    gz.write_all(&tar).unwrap();
    gz.finish().unwrap();
}

/// Seals `payload` into an image at `out` under the key of the appliance
/// whose state directory is `state_dir` (its key file and keyring), straight
/// through the crypto layer and checking nothing: how a hostile image reaches
/// an appliance.
pub fn seal_unchecked(state_dir: &Path, payload: &Path, out: &Path) {
    let mk = KeyFile::in_state_dir(state_dir)
        .master_key()
        .unwrap()
        .expect("a master key");
    let slot = Keyring::load(state_dir)
        .unwrap()
        .expect("a keyring")
        .keyslot()
        .unwrap();
    let file = fs::File::create(out).unwrap();
    let mut w = backup_crypto::EncryptWriter::new(file, &mk, &slot, 0).unwrap();
    w.write_all(&fs::read(payload).unwrap()).unwrap();
    w.finish().unwrap().sync_all().unwrap();
}

/// Where the crafted entries of [`unsafe_entry_cases`] aim: an appliance
/// with a `config` files component and a `maindb` database component (the
/// demo appliance's names).
pub struct Layout {
    /// A scratch directory the test owns: the cases create nothing in it
    /// themselves, they aim at `outside-dir/` and `evil-*` paths in it.
    pub dir: PathBuf,
    /// The `config` component's root.
    pub config_root: PathBuf,
    /// The `maindb` component's database file.
    pub database: PathBuf,
}

impl Layout {
    /// The directory outside every component that the cases try to write
    /// into or link to; [`Layout::prepare_outside`] creates it.
    pub fn outside(&self) -> PathBuf {
        self.dir.join("outside-dir")
    }

    /// Creates [`Layout::outside`] holding one file, `secret.txt`, for the
    /// hard-link cases to aim at.
    pub fn prepare_outside(&self) {
        fs::create_dir_all(self.outside()).unwrap();
        fs::write(self.outside().join("secret.txt"), "outside the component\n").unwrap();
    }
}

/// One crafted payload: entries to splice in before `manifest.json`, and the
/// paths a restore that honoured them would create.
pub struct UnsafeCase {
    /// What the case is, for assertion messages.
    pub name: &'static str,
    /// The crafted entries.
    pub entries: Vec<RawEntry>,
    /// Paths that must still not exist after the image is refused.
    pub must_not_exist: Vec<PathBuf>,
}

impl UnsafeCase {
    /// The payload `entries` (a real image's, `backup.json` first and
    /// `manifest.json` last) with this case's entries spliced in before the
    /// manifest.
    pub fn splice(&self, entries: &[RawEntry]) -> Vec<RawEntry> {
        let (manifest, rest) = entries.split_last().expect("a payload with a manifest");
        let mut out = rest.to_vec();
        out.extend(self.entries.iter().cloned());
        out.push(manifest.clone());
        out
    }
}

/// Every kind of entry restore must never honour: path traversal, absolute
/// paths, writes through symlinks, hard links leaving their component or
/// reaching another, entries outside the recorded roots or of a component
/// `backup.json` does not name, device nodes and FIFOs.
pub fn unsafe_entry_cases(layout: &Layout) -> Vec<UnsafeCase> {
    use tar::EntryType as T;
    let rel = |p: &Path| p.strip_prefix("/").unwrap().display().to_string();
    let dir_rel = rel(&layout.dir);
    let comp = format!("components/config/{}", rel(&layout.config_root));
    let dotdots = "../".repeat(16);
    let outside = layout.outside();
    let secret = outside.join("secret.txt");
    let evil_dotdot = layout.dir.join("evil-dotdot");
    let evil_abs = layout.dir.join("evil-abs");
    let planted = outside.join("planted");
    let case = |name, entries, must_not_exist| UnsafeCase {
        name,
        entries,
        must_not_exist,
    };
    vec![
        case(
            "path traversal with ..",
            vec![evil(
                T::Regular,
                &format!("components/config/{dotdots}{dir_rel}/evil-dotdot"),
                None,
                b"pwned\n",
            )],
            vec![evil_dotdot.clone()],
        ),
        case(
            "path traversal inside the component root",
            vec![evil(
                T::Regular,
                &format!("{comp}/../../../../../evil-dotdot"),
                None,
                b"pwned\n",
            )],
            vec![evil_dotdot],
        ),
        case(
            "absolute path",
            vec![evil(
                T::Regular,
                evil_abs.to_str().unwrap(),
                None,
                b"pwned\n",
            )],
            vec![evil_abs],
        ),
        case(
            "symlink to an outside directory, then a file through it",
            vec![
                evil(
                    T::Symlink,
                    &format!("{comp}/link"),
                    Some(outside.to_str().unwrap()),
                    b"",
                ),
                evil(T::Regular, &format!("{comp}/link/pwned"), None, b"pwned\n"),
            ],
            vec![outside.join("pwned")],
        ),
        case(
            "relative symlink escaping, then a file through it",
            vec![
                evil(
                    T::Symlink,
                    &format!("{comp}/rel-link"),
                    Some("../../../../outside-dir"),
                    b"",
                ),
                evil(
                    T::Regular,
                    &format!("{comp}/rel-link/pwned"),
                    None,
                    b"pwned\n",
                ),
            ],
            vec![outside.join("pwned")],
        ),
        case(
            "hard link to an absolute outside file",
            vec![evil(
                T::Link,
                &format!("{comp}/hl"),
                Some(secret.to_str().unwrap()),
                b"",
            )],
            vec![],
        ),
        case(
            "hard link to a component path outside the recorded roots",
            vec![evil(
                T::Link,
                &format!("{comp}/hl"),
                Some(&format!(
                    "components/config/{dir_rel}/outside-dir/secret.txt"
                )),
                b"",
            )],
            vec![],
        ),
        case(
            "hard link with ..",
            vec![evil(
                T::Link,
                &format!("{comp}/hl"),
                Some(&format!("{comp}/../../../../outside-dir/secret.txt")),
                b"",
            )],
            vec![],
        ),
        case(
            "hard link into another component",
            vec![evil(
                T::Link,
                &format!("{comp}/hl"),
                Some(&format!("components/maindb/{}", rel(&layout.database))),
                b"",
            )],
            vec![],
        ),
        case(
            "file outside the recorded roots of its component",
            vec![evil(
                T::Regular,
                &format!("components/config/{dir_rel}/outside-dir/planted"),
                None,
                b"pwned\n",
            )],
            vec![planted.clone()],
        ),
        case(
            "component not in backup.json",
            vec![evil(
                T::Regular,
                &format!("components/nosuch/{dir_rel}/outside-dir/planted"),
                None,
                b"pwned\n",
            )],
            vec![planted],
        ),
        case(
            "character device",
            vec![dev(T::Char, &format!("{comp}/null-dev"), 1, 3)],
            vec![],
        ),
        case(
            "block device",
            vec![dev(T::Block, &format!("{comp}/disk-dev"), 8, 0)],
            vec![],
        ),
        case(
            "FIFO",
            vec![evil(T::Fifo, &format!("{comp}/fifo"), None, b"")],
            vec![],
        ),
    ]
}
