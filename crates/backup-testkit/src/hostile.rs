//! Hostile images: payload surgery at the level of raw tar headers (names and
//! link names written byte for byte, which the tar crate's own setters
//! refuse), and sealing a payload under an appliance's key with none of the
//! checks `backup encrypt` makes. Panics on I/O errors: these build test
//! inputs.

use std::ffi::OsStr;
use std::fs;
use std::io::{Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

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

/// The entries of a gzip-compressed tar payload, in order.
pub fn read_payload(path: &Path) -> Vec<RawEntry> {
    let f = fs::File::open(path).unwrap();
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(f));
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
