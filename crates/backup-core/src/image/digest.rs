use sha2::{Digest, Sha256};

/// Kinds of archive entries, as hashed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryKind {
    /// A directory.
    Dir,
    /// A regular file.
    File,
    /// A symbolic link.
    Symlink,
    /// A hard link to an earlier entry of the same component.
    Hardlink,
}

impl EntryKind {
    fn tag(self) -> u8 {
        match self {
            EntryKind::Dir => b'd',
            EntryKind::File => b'f',
            EntryKind::Symlink => b'l',
            EntryKind::Hardlink => b'h',
        }
    }
}

/// Running checksum of one component's entries.
///
/// The component's SHA-256 covers, for every entry in archive order: its path
/// relative to the component, kind, mode, mtime, link target, size and content.
/// Backup and restore compute it the same way from the entries they see, so it
/// is independent of tar header encoding details.
#[derive(Debug, Clone, Default)]
pub struct EntryDigest {
    hasher: Sha256,
    entries: u64,
    bytes: u64,
}

impl EntryDigest {
    /// Starts an entry (its content follows through [`EntryDigest::content`]).
    pub fn entry(
        &mut self,
        rel: &[u8],
        kind: EntryKind,
        mode: u32,
        mtime: u64,
        link: &[u8],
        size: u64,
    ) {
        self.entries += 1;
        let h = &mut self.hasher;
        h.update((rel.len() as u64).to_be_bytes());
        h.update(rel);
        h.update([kind.tag()]);
        h.update((mode & 0o7777).to_be_bytes());
        h.update(mtime.to_be_bytes());
        h.update((link.len() as u64).to_be_bytes());
        h.update(link);
        h.update(size.to_be_bytes());
    }

    /// Content bytes of the current entry.
    pub fn content(&mut self, data: &[u8]) {
        self.bytes += data.len() as u64;
        self.hasher.update(data);
    }

    /// Entries seen.
    pub fn entries(&self) -> u64 {
        self.entries
    }

    /// Content bytes seen.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Hex SHA-256 so far.
    pub fn hex(&self) -> String {
        hex::encode(self.hasher.clone().finalize())
    }
}
