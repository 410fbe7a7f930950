use std::fmt;
use std::ops::Range;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;

use crate::Result;

/// A stream of object bytes.
pub type ByteReader = Box<dyn tokio::io::AsyncRead + Send + Unpin>;

/// What `put` does when the name already exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PutMode {
    /// Replace an existing object.
    #[default]
    Overwrite,
    /// Fail with [`crate::Error::AlreadyExists`] if the name exists.
    Create,
}

/// Options of [`Storage::put_opts`].
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct PutOptions {
    /// Overwrite or create-only.
    pub mode: PutMode,
    /// Expected total size, if known (lets S3 choose its part size, lets a
    /// backend refuse early when there is no room).
    pub size_hint: Option<u64>,
}

impl PutOptions {
    /// Options with the given mode and no size hint.
    pub fn mode(mode: PutMode) -> PutOptions {
        PutOptions {
            mode,
            size_hint: None,
        }
    }

    /// Sets the expected size.
    pub fn with_size_hint(mut self, size: Option<u64>) -> PutOptions {
        self.size_hint = size;
        self
    }
}

/// Facts about one stored object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectMeta {
    /// Name relative to the storage root, `/`-separated.
    pub name: String,
    /// Size in bytes.
    pub size: u64,
    /// Last modification time, where the backend knows it.
    pub modified: Option<SystemTime>,
}

/// One level (or all levels) of a listing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListResult {
    /// Objects, sorted by name.
    pub objects: Vec<ObjectMeta>,
    /// With a delimiter: the "directories" directly below the prefix, each
    /// ending in `/`, sorted.
    pub prefixes: Vec<String>,
}

/// Space on the storage, where the backend can know it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Capacity {
    /// Total bytes.
    pub total: Option<u64>,
    /// Used bytes.
    pub used: Option<u64>,
    /// Bytes available to us.
    pub free: Option<u64>,
}

/// What a backend knows of one "directory" level without writing anything
/// (see [`Storage::inspect_dir`]). `None` means it cannot tell.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct DirInfo {
    /// Whether the directory exists. Object stores cannot tell: there a
    /// prefix exists only while objects lie under it.
    pub exists: Option<bool>,
    /// Whether objects may be created in it, as the backend judges from
    /// permissions (never by writing a probe).
    pub writable: Option<bool>,
    /// Sub-directories directly below it, each ending in `/`, empty ones
    /// included (a delimited [`Storage::list`] shows only those that hold
    /// objects), sorted.
    pub subdirs: Vec<String>,
}

/// What a backend can do. Callers check this instead of matching on backends.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Capabilities {
    /// Publishing renames a temporary object, so a final name is never partial.
    pub atomic_publish: bool,
    /// [`PutMode::Create`] is enforced atomically by the server.
    pub conditional_create: bool,
    /// [`Storage::presign_get`] works.
    pub presign: bool,
    /// [`Storage::capacity`] reports real numbers.
    pub capacity: bool,
    /// Objects can be rewritten in place (header rewrap after key rotation).
    pub rewrite_in_place: bool,
}

impl Capabilities {
    /// All capabilities off; set fields with struct update syntax from this.
    pub const NONE: Capabilities = Capabilities {
        atomic_publish: false,
        conditional_create: false,
        presign: false,
        capacity: false,
        rewrite_in_place: false,
    };
}

/// A streaming upload in progress. Nothing is visible under the final name
/// until [`Upload::complete`] succeeds; [`Upload::abort`] (or dropping the
/// upload) leaves nothing behind.
#[async_trait]
pub trait Upload: Send {
    /// Appends bytes.
    async fn write(&mut self, chunk: Bytes) -> Result<()>;
    /// Makes the object durable and visible under its final name.
    async fn complete(self: Box<Self>) -> Result<ObjectMeta>;
    /// Discards everything written.
    async fn abort(self: Box<Self>) -> Result<()>;
}

/// The bytes a `get_opts` with `range` reads of an object of `size` bytes:
/// everything for `None`, the range cut at the end of the object otherwise.
/// A range that starts beyond the end (or runs backwards) is an error naming
/// `name` in `location`. Backends call this rather than judging ranges
/// themselves, so all of them answer alike.
pub fn resolve_range(
    range: Option<Range<u64>>,
    size: u64,
    name: &str,
    location: &dyn fmt::Display,
) -> Result<Range<u64>> {
    match range {
        None => Ok(0..size),
        Some(r) if r.start <= r.end && r.start <= size => Ok(r.start..r.end.min(size)),
        Some(r) => Err(crate::Error::Other {
            what: format!(
                "cannot read bytes {r:?} of {name} in {location}: the object has {size} bytes"
            ),
            source: None,
        }),
    }
}

/// The result of [`Storage::get_opts`].
pub struct GetResult {
    /// The object's metadata.
    pub meta: ObjectMeta,
    /// The byte range being returned.
    pub range: Range<u64>,
    /// The bytes of `range`.
    pub reader: ByteReader,
}

impl fmt::Debug for GetResult {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GetResult")
            .field("meta", &self.meta)
            .field("range", &self.range)
            .finish_non_exhaustive()
    }
}

/// A place where images are stored. Names are relative, `/`-separated, never
/// starting with `/` and never containing `..` segments.
///
/// `Display` describes the location for operators (a URL without credentials).
#[async_trait]
pub trait Storage: Send + Sync + fmt::Debug + fmt::Display {
    /// What this backend can do.
    fn capabilities(&self) -> Capabilities;

    /// Starts a streaming upload of `name`.
    /// With [`PutMode::Create`] an existing name fails with
    /// [`crate::Error::AlreadyExists`] (at start or at completion).
    async fn put_opts(&self, name: &str, opts: PutOptions) -> Result<Box<dyn Upload>>;

    /// Streams an object, whole or a byte range (`range.end` is clamped to the size).
    async fn get_opts(&self, name: &str, range: Option<Range<u64>>) -> Result<GetResult>;

    /// Metadata of one object ([`crate::Error::NotFound`] if absent).
    async fn head(&self, name: &str) -> Result<ObjectMeta>;

    /// Lists objects whose name starts with `prefix`. With `delimited`, only one
    /// level: objects directly under the prefix plus sub-"directories" in
    /// [`ListResult::prefixes`]. Hidden temporary objects of unfinished uploads
    /// are never listed.
    async fn list(&self, prefix: &str, delimited: bool) -> Result<ListResult>;

    /// Deletes an object. Deleting a missing object succeeds.
    async fn delete(&self, name: &str) -> Result<()>;

    /// Total / used / free space, where known.
    async fn capacity(&self) -> Result<Capacity>;

    /// A URL that lets anyone holding it GET the object until `expires` passes;
    /// [`crate::Error::Unsupported`] where the backend cannot presign.
    async fn presign_get(&self, name: &str, expires: Duration) -> Result<String>;

    /// What the backend knows of the directory `prefix` (`""` for the top,
    /// else ending in `/`), found without creating or removing anything.
    /// Backends without directories keep this default, which knows nothing.
    async fn inspect_dir(&self, prefix: &str) -> Result<DirInfo> {
        let _ = prefix;
        Ok(DirInfo::default())
    }

    /// Overwrites bytes of an existing object in place, durably (used to
    /// replace an image header's keyslot after key rotation). Backends that
    /// cannot ([`Capabilities::rewrite_in_place`] is false) keep this default,
    /// which fails with [`crate::Error::Unsupported`].
    async fn write_at(&self, name: &str, offset: u64, data: Bytes) -> Result<()> {
        let _ = (offset, data);
        Err(crate::Error::Unsupported {
            what: format!("rewriting {name} in place on {self}"),
        })
    }

    /// Removes the hidden temporary objects of uploads that never finished
    /// (a killed run) and were last written more than `older_than` ago;
    /// returns their names. Backends that leave no such objects (or cannot
    /// tell them) keep this default, which removes nothing; wrappers forward it.
    async fn remove_stale_uploads(&self, older_than: Duration) -> Result<Vec<String>> {
        let _ = older_than;
        Ok(Vec::new())
    }
}
