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

/// How an entry's content goes into its component's SHA-256.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DigestScheme {
    /// Payload format 1: the content bytes themselves, in one running hash.
    Stream,
    /// Payload format 2: the SHA-256 of each entry's content, so that a
    /// file's digest can be recorded once and reused while the file is
    /// unchanged (the frame cache), without reading its content again.
    PerEntry,
}

impl DigestScheme {
    /// The scheme of payload format `format` (1 or 2).
    pub fn of_format(format: u32) -> DigestScheme {
        if format >= 2 {
            DigestScheme::PerEntry
        } else {
            DigestScheme::Stream
        }
    }
}

/// The content hash of the entry being digested.
#[derive(Debug, Clone)]
enum Content {
    /// Hashed as it is read.
    Running(Sha256),
    /// Given whole ([`EntryDigest::content_known`]).
    Known([u8; 32]),
}

/// Running checksum of one component's entries.
///
/// The component's SHA-256 covers, for every entry in archive order: its path
/// relative to the component, kind, mode, mtime, link target and size, then
/// its content — in payload format 2 ([`DigestScheme::PerEntry`]) as the
/// SHA-256 of the entry's content (of nothing, for entries without any),
/// in format 1 as the content bytes. Backup and restore compute it the same
/// way from the entries they see, so it is independent of tar header
/// encoding details.
#[derive(Debug, Clone)]
pub struct EntryDigest {
    scheme: DigestScheme,
    hasher: Sha256,
    /// The open entry's content (per-entry scheme only).
    content: Option<Content>,
    /// Content bytes of the open entry.
    open_bytes: u64,
    entries: u64,
    bytes: u64,
}

impl Default for EntryDigest {
    /// The digest this engine writes ([`DigestScheme::PerEntry`]).
    fn default() -> Self {
        EntryDigest::new(DigestScheme::PerEntry)
    }
}

impl EntryDigest {
    /// An empty digest computed by `scheme`.
    pub fn new(scheme: DigestScheme) -> EntryDigest {
        EntryDigest {
            scheme,
            hasher: Sha256::new(),
            content: None,
            open_bytes: 0,
            entries: 0,
            bytes: 0,
        }
    }

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
        self.close();
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
        if self.scheme == DigestScheme::PerEntry {
            self.content = Some(Content::Running(Sha256::new()));
        }
    }

    /// Content bytes of the current entry.
    pub fn content(&mut self, data: &[u8]) {
        self.bytes += data.len() as u64;
        self.open_bytes += data.len() as u64;
        match (&mut self.content, self.scheme) {
            (Some(Content::Running(h)), _) => h.update(data),
            (None, DigestScheme::Stream) => self.hasher.update(data),
            // Content after a known hash, or before any entry: it cannot
            // match what a reader computes, which is the point.
            (Some(Content::Known(_)), _) | (None, DigestScheme::PerEntry) => {
                self.hasher.update(b"content out of place");
                self.hasher.update(data);
            }
        }
    }

    /// The current entry's content is `len` bytes whose SHA-256 is `sha256`
    /// (recorded when they were last read), instead of the bytes through
    /// [`EntryDigest::content`]. Only in the per-entry scheme; `false` (and
    /// nothing recorded) otherwise, or when content was already given.
    pub fn content_known(&mut self, sha256: [u8; 32], len: u64) -> bool {
        if !matches!(self.content, Some(Content::Running(_))) || self.open_bytes != 0 {
            return false;
        }
        self.bytes += len;
        self.open_bytes += len;
        self.content = Some(Content::Known(sha256));
        true
    }

    /// The SHA-256 of the current entry's content so far (per-entry scheme).
    pub fn content_sha256(&self) -> Option<[u8; 32]> {
        match &self.content {
            Some(Content::Running(h)) => Some(h.clone().finalize().into()),
            Some(Content::Known(sha)) => Some(*sha),
            None => None,
        }
    }

    fn close(&mut self) {
        if let Some(sha) = self.content_sha256() {
            self.hasher.update(sha);
        }
        self.content = None;
        self.open_bytes = 0;
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
        let mut done = self.clone();
        done.close();
        hex::encode(done.hasher.finalize())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two entries: a directory and a file whose content arrives in pieces.
    fn digest_of(scheme: DigestScheme, pieces: &[&[u8]]) -> EntryDigest {
        let mut d = EntryDigest::new(scheme);
        d.entry(b"etc", EntryKind::Dir, 0o755, 7, b"", 0);
        let size = pieces.iter().map(|p| p.len() as u64).sum();
        d.entry(b"etc/a.conf", EntryKind::File, 0o644, 9, b"", size);
        for p in pieces {
            d.content(p);
        }
        d
    }

    fn header(h: &mut Sha256, rel: &[u8], tag: u8, mode: u32, mtime: u64, size: u64) {
        h.update((rel.len() as u64).to_be_bytes());
        h.update(rel);
        h.update([tag]);
        h.update(mode.to_be_bytes());
        h.update(mtime.to_be_bytes());
        h.update(0u64.to_be_bytes());
        h.update(size.to_be_bytes());
    }

    #[test]
    fn format_1_hashes_the_content_bytes_format_2_each_entry_s_content_hash() {
        let content = b"hostname = gw1\n";
        // Format 1, as images written before format 2 have it.
        let mut one = Sha256::new();
        header(&mut one, b"etc", b'd', 0o755, 7, 0);
        header(
            &mut one,
            b"etc/a.conf",
            b'f',
            0o644,
            9,
            content.len() as u64,
        );
        one.update(content);
        // Format 2: every entry's header, then the SHA-256 of its content.
        let mut two = Sha256::new();
        header(&mut two, b"etc", b'd', 0o755, 7, 0);
        two.update(Sha256::digest(b""));
        header(
            &mut two,
            b"etc/a.conf",
            b'f',
            0o644,
            9,
            content.len() as u64,
        );
        two.update(Sha256::digest(content));
        let pieces: &[&[u8]] = &[b"hostname", b" = gw1\n"];
        let stream = digest_of(DigestScheme::Stream, pieces);
        let per_entry = digest_of(DigestScheme::PerEntry, pieces);
        assert_eq!(stream.hex(), hex::encode(one.finalize()));
        assert_eq!(per_entry.hex(), hex::encode(two.finalize()));
        for d in [&stream, &per_entry] {
            assert_eq!((d.entries(), d.bytes()), (2, content.len() as u64));
        }
        assert_eq!(DigestScheme::of_format(1), DigestScheme::Stream);
        assert_eq!(DigestScheme::of_format(2), DigestScheme::PerEntry);
    }

    #[test]
    fn a_known_content_hash_stands_in_for_the_content() {
        let content = b"audit line\n".repeat(1000);
        let read = digest_of(DigestScheme::PerEntry, &[&content]);
        let mut known = EntryDigest::new(DigestScheme::PerEntry);
        known.entry(b"etc", EntryKind::Dir, 0o755, 7, b"", 0);
        let size = content.len() as u64;
        known.entry(b"etc/a.conf", EntryKind::File, 0o644, 9, b"", size);
        assert!(known.content_known(Sha256::digest(&content).into(), size));
        assert_eq!(known.hex(), read.hex());
        assert_eq!(known.bytes(), read.bytes());
        assert_eq!(read.content_sha256(), Some(Sha256::digest(&content).into()));
        // Refused once content was read, twice, or in format 1.
        let mut partly = digest_of(DigestScheme::PerEntry, &[b"x"]);
        assert!(!partly.content_known([0; 32], 1));
        assert!(!known.content_known([0; 32], 1));
        let mut stream = digest_of(DigestScheme::Stream, &[]);
        assert!(!stream.content_known([0; 32], 0));
        assert_eq!(stream.content_sha256(), None);
        // Content after a known hash cannot make the digest match.
        let mut more = known.clone();
        more.content(b"!");
        assert_ne!(more.hex(), known.hex());
    }
}
