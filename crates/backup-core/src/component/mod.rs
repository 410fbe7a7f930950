//! Components: the named parts of an appliance's state that a backup captures.
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;

mod command;
mod files;
mod sqlite;
mod swap;

pub use command::CommandComponent;
pub use files::FilesComponent;
pub use sqlite::SqliteComponent;
pub(crate) use sqlite::{integrity_problem, IntegrityCheck, JOURNAL_SUFFIXES};
pub use swap::Committed;
pub(crate) use swap::{is_special, NothingToUndo, Swapped};

use crate::model::PlannedComponent;

/// Metadata of one archive entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EntryMeta {
    /// Permission bits (and setuid/setgid/sticky).
    pub mode: u32,
    /// Modification time, Unix seconds.
    pub mtime: u64,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
}

impl EntryMeta {
    /// The metadata of a file system object.
    pub fn from_metadata(md: &std::fs::Metadata) -> EntryMeta {
        use std::os::unix::fs::MetadataExt;
        EntryMeta {
            mode: md.mode() & 0o7777,
            mtime: md.mtime().max(0) as u64,
            uid: md.uid(),
            gid: md.gid(),
        }
    }
}

/// What identifies a regular file's content between backups without
/// reading it (see [`EntrySink::reuse`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FileStat {
    /// Device.
    pub dev: u64,
    /// Inode.
    pub ino: u64,
    /// Size in bytes.
    pub size: u64,
    /// Modification time: seconds and nanoseconds.
    pub mtime: (i64, i64),
    /// Status change time: seconds and nanoseconds.
    pub ctime: (i64, i64),
}

impl FileStat {
    /// The identity of a file system object.
    pub fn from_metadata(md: &std::fs::Metadata) -> FileStat {
        use std::os::unix::fs::MetadataExt;
        FileStat {
            dev: md.dev(),
            ino: md.ino(),
            size: md.len(),
            mtime: (md.mtime(), md.mtime_nsec()),
            ctime: (md.ctime(), md.ctime_nsec()),
        }
    }
}

/// Why a snapshot stopped.
#[derive(Debug)]
pub enum SnapshotError {
    /// The component could not be captured (its own failure: a missing file,
    /// a failing dump command). The image stays well-formed; the component is
    /// recorded as failed.
    Failed(String),
    /// Writing the image failed (storage gone, disk full): the whole backup stops.
    Output(io::Error),
}

impl From<io::Error> for SnapshotError {
    fn from(e: io::Error) -> Self {
        SnapshotError::Output(e)
    }
}

/// Where a component writes its entries. Paths are relative to the component
/// (for file-based components: the absolute path without its leading `/`).
pub trait EntrySink {
    /// A directory.
    fn dir(&mut self, rel: &Path, meta: &EntryMeta) -> Result<(), SnapshotError>;
    /// A regular file of `size` bytes read from `data`. If `data` fails or ends
    /// early the entry is padded to `size` (the archive stays valid) and
    /// [`SnapshotError::Failed`] is returned for a read error; a short read is
    /// reported as a warning (the file changed while being read).
    fn file(
        &mut self,
        rel: &Path,
        meta: &EntryMeta,
        size: u64,
        data: &mut dyn Read,
    ) -> Result<(), SnapshotError>;
    /// Offers a regular file entry of `size` bytes about to be read, before
    /// it is opened: returns `Ok(true)` when the sink wrote its entry without
    /// reading it (its compressed frames were cached by an earlier backup
    /// and `stats` shows it unchanged); otherwise the caller goes on with
    /// [`EntrySink::file`], and the sink may remember `stats` for it.
    /// `stats` are those of every file the content comes from, taken
    /// before the content is read: the file itself, and for a database its
    /// write-ahead log. Default: never.
    fn reuse(
        &mut self,
        rel: &Path,
        meta: &EntryMeta,
        size: u64,
        stats: &[FileStat],
    ) -> Result<bool, SnapshotError> {
        let _ = (rel, meta, size, stats);
        Ok(false)
    }
    /// A symbolic link.
    fn symlink(&mut self, rel: &Path, meta: &EntryMeta, target: &Path)
        -> Result<(), SnapshotError>;
    /// A hard link to an earlier file entry of the same component.
    fn hardlink(
        &mut self,
        rel: &Path,
        meta: &EntryMeta,
        target_rel: &Path,
    ) -> Result<(), SnapshotError>;
    /// A non-fatal warning, kept in the manifest.
    fn warn(&mut self, message: String);
    /// Whether the path `rel` (and all under it) stays out of the image:
    /// the engine's own state directory or image store inside a root.
    /// A component walking a tree skips it; entries under it are dropped
    /// anyway. Default: nothing is left out.
    fn is_left_out(&self, rel: &Path) -> bool {
        let _ = rel;
        false
    }
}

/// Whether a component applies on this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applicability {
    /// It does.
    Applicable,
    /// It does not, and why (e.g. "/run/postgresql does not exist").
    NotApplicable(String),
}

/// What a component's restore gets to work with.
#[derive(Debug)]
pub struct RestoreContext<'a> {
    /// The staging directory holding the component's extracted, verified
    /// entries at their archive-relative paths.
    pub staged: &'a Path,
    /// The component as planned in the image (kind, roots).
    pub planned: &'a PlannedComponent,
    /// `--target DIR`: restore under this root instead of the live locations.
    pub target: Option<&'a Path>,
    /// The engine's own places, carried over untouched where a destination
    /// holds one (see [`RestoreContext::own_places_under`]).
    pub(crate) own: &'a crate::own_paths::OwnPaths,
    /// Staged databases whose integrity check already passed (it ran in
    /// the background while the rest of the image was extracted).
    pub(crate) checked: &'a std::collections::HashSet<PathBuf>,
}

impl RestoreContext<'_> {
    /// The engine's own places (its state directory, a local image store)
    /// inside the tree at `dest`, relative to it: a component that replaces
    /// the tree carries them over as they are, like the paths it excludes.
    pub fn own_places_under(&self, dest: &Path) -> Vec<PathBuf> {
        self.own
            .under(dest)
            .into_iter()
            .map(|(rel, _)| rel)
            .filter(|rel| std::fs::symlink_metadata(dest.join(rel)).is_ok())
            .collect()
    }

    /// Where an absolute path of the image goes on this restore.
    pub fn destination(&self, original: &Path) -> PathBuf {
        match self.target {
            Some(t) => t.join(original.strip_prefix("/").unwrap_or(original)),
            None => original.to_path_buf(),
        }
    }
}

/// One part of an appliance's state.
///
/// Built-in kinds are [`FilesComponent`], [`SqliteComponent`] and
/// [`CommandComponent`]; embedders add their own by implementing this trait
/// and registering it with [`crate::EngineBuilder::component`].
pub trait Component: Send + Sync {
    /// Unique name.
    fn name(&self) -> &str;
    /// Kind, recorded in the image.
    fn kind(&self) -> &str;
    /// Absolute paths the entries live under, recorded in `backup.json` so
    /// restore can check every entry before writing it. Empty for components
    /// that are not a file tree; their entries must then be flat names.
    fn roots(&self) -> Vec<PathBuf>;
    /// Whether the component applies on this node.
    fn applicability(&self) -> Applicability;
    /// Estimated snapshot size in bytes, if it can be known cheaply.
    fn estimate_size(&self) -> Option<u64>;
    /// Bytes of scratch space its snapshot needs at most (a database copy,
    /// a spooled dump), if it can be known cheaply; a backup refuses up
    /// front when the scratch space lacks them. Default: none.
    fn scratch_estimate(&self) -> Option<u64> {
        None
    }
    /// Writes the component's entries. `scratch` is a private directory for
    /// temporary files (removed afterwards).
    fn snapshot(&self, sink: &mut dyn EntrySink, scratch: &Path) -> Result<(), SnapshotError>;
    /// Whether the live path at `original` (an absolute path under one of
    /// [`Component::roots`], never a root itself) is one this component
    /// leaves out of its snapshots. An in-place restore keeps such paths as
    /// they are and restore plans list them as kept. Default: none.
    fn is_excluded(&self, original: &Path) -> bool {
        let _ = original;
        false
    }
    /// Puts verified, staged entries into place. Called only after every
    /// selected component of the image was extracted and verified. The
    /// returned handle finalises (drops the old state) or rolls back.
    fn restore(&self, ctx: &RestoreContext<'_>) -> Result<Box<dyn Committed>, String>;
}

/// The archive-relative form of an absolute path.
pub(crate) fn rel_of(abs: &Path) -> &Path {
    abs.strip_prefix("/").unwrap_or(abs)
}

/// How a registered component takes part in backups.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ComponentOptions {
    /// Part of a standard backup.
    pub default: bool,
    /// Components that must be in the same backup.
    pub requires: Vec<String>,
    /// Holds audit records (a standard backup includes it only with `include_audits`).
    pub audit: bool,
    /// The operator's reminders shown after the component is restored
    /// ("re-enroll VPN certificates").
    pub after_restore: Vec<String>,
    /// argv a restore drill runs against the component's restored files
    /// (`{path}` in an argument is replaced by their path).
    pub drill_check: Vec<String>,
}

impl Default for ComponentOptions {
    fn default() -> Self {
        ComponentOptions {
            default: true,
            requires: Vec::new(),
            audit: false,
            after_restore: Vec::new(),
            drill_check: Vec::new(),
        }
    }
}

/// A component as the engine holds it, with how it takes part.
pub(crate) struct Registered {
    pub(crate) component: Arc<dyn Component>,
    pub(crate) options: ComponentOptions,
}
