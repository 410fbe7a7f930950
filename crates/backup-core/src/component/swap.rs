//! Putting staged trees into place with a rename swap that can be undone.
use std::path::{Path, PathBuf};

/// A component restore that has been put into place but not yet finalised.
pub trait Committed: Send {
    /// Drops the replaced old state.
    fn finalize(self: Box<Self>) -> Result<(), String>;
    /// Puts the old state back.
    fn rollback(self: Box<Self>) -> Result<(), String>;
}

/// For restores with nothing to undo (a restore command that already ran).
pub(crate) struct NothingToUndo;

impl Committed for NothingToUndo {
    fn finalize(self: Box<Self>) -> Result<(), String> {
        Ok(())
    }
    fn rollback(self: Box<Self>) -> Result<(), String> {
        Ok(())
    }
}

/// Staged paths swapped into place; the old ones kept aside until finalised.
#[derive(Debug, Default)]
pub(crate) struct Swapped {
    done: Vec<Placed>,
}

/// One destination put into place.
#[derive(Debug)]
struct Placed {
    dest: PathBuf,
    /// Where the old version was moved, if there was one.
    old: Option<PathBuf>,
    /// Paths (relative to `dest`) moved from the old version into the new
    /// one: rollback moves them back before the old version returns.
    carried: Vec<PathBuf>,
}

impl Swapped {
    /// Moves `staged` to `dest`, keeping whatever was at `dest` aside.
    /// `staged` should be on the same file system as `dest`; if it is not, it
    /// is copied next to `dest` first so the final step is still a rename.
    /// The paths `keep` (relative to `dest`: what the component excludes) are
    /// carried from the current tree into the new one untouched, in place of
    /// whatever the staged tree holds there.
    pub(crate) fn swap(
        &mut self,
        staged: &Path,
        dest: &Path,
        keep: &[PathBuf],
    ) -> Result<(), String> {
        let parent = dest
            .parent()
            .ok_or_else(|| format!("{} has no parent directory", dest.display()))?;
        std::fs::create_dir_all(parent)
            .map_err(|e| format!("cannot create {}: {e}", parent.display()))?;
        let base = dest
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let tag = crate::util::random_tag();
        let incoming = parent.join(format!(".{base}.restore-{tag}"));
        if let Err(e) = std::fs::rename(staged, &incoming) {
            if e.raw_os_error() != Some(libc::EXDEV) {
                return Err(format!(
                    "cannot move {} next to {}: {e}",
                    staged.display(),
                    dest.display()
                ));
            }
            crate::util::copy_tree(staged, &incoming).map_err(|e| {
                format!(
                    "cannot copy {} next to {}: {e}",
                    staged.display(),
                    dest.display()
                )
            })?;
        }
        let mut carried = Vec::new();
        for rel in keep {
            if let Err(e) = carry(dest, &incoming, rel) {
                let _ = carry_back(&incoming, dest, &carried);
                let _ = crate::util::remove_any(&incoming);
                return Err(e);
            }
            carried.push(rel.clone());
        }
        let old = if std::fs::symlink_metadata(dest).is_ok() {
            let old = parent.join(format!(".{base}.old-{tag}"));
            if let Err(e) = std::fs::rename(dest, &old) {
                let _ = carry_back(&incoming, dest, &carried);
                let _ = crate::util::remove_any(&incoming);
                return Err(format!(
                    "cannot move the current {} aside: {e}",
                    dest.display()
                ));
            }
            Some(old)
        } else {
            None
        };
        if let Err(e) = std::fs::rename(&incoming, dest) {
            if let Some(old) = &old {
                let _ = std::fs::rename(old, dest);
            }
            let _ = carry_back(&incoming, dest, &carried);
            let _ = crate::util::remove_any(&incoming);
            return Err(format!(
                "cannot move the restored {} into place: {e}",
                dest.display()
            ));
        }
        self.done.push(Placed {
            dest: dest.to_path_buf(),
            old,
            carried,
        });
        Ok(())
    }

    /// Moves an existing path aside (for example a stale SQLite `-wal` file) so
    /// that rollback can bring it back.
    pub(crate) fn set_aside(&mut self, path: &Path) -> Result<(), String> {
        if std::fs::symlink_metadata(path).is_err() {
            return Ok(());
        }
        let parent = path.parent().unwrap_or(Path::new("/"));
        let base = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let old = parent.join(format!(".{base}.old-{}", crate::util::random_tag()));
        std::fs::rename(path, &old)
            .map_err(|e| format!("cannot move {} aside: {e}", path.display()))?;
        self.done.push(Placed {
            dest: path.to_path_buf(),
            old: Some(old),
            carried: Vec::new(),
        });
        Ok(())
    }
}

impl Committed for Swapped {
    fn finalize(self: Box<Self>) -> Result<(), String> {
        let mut errors = Vec::new();
        for placed in &self.done {
            if let Some(old) = &placed.old {
                if let Err(e) = crate::util::remove_any(old) {
                    errors.push(format!("{}: {e}", old.display()));
                }
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "restored, but could not remove the replaced copies: {}",
                errors.join("; ")
            ))
        }
    }

    fn rollback(self: Box<Self>) -> Result<(), String> {
        let mut errors = Vec::new();
        for Placed { dest, old, carried } in self.done.iter().rev() {
            if let Some(old) = old {
                if let Err(e) = carry_back(dest, old, carried) {
                    errors.push(e);
                    continue;
                }
            }
            if let Err(e) = crate::util::remove_any(dest) {
                errors.push(format!("remove {}: {e}", dest.display()));
                continue;
            }
            if let Some(old) = old {
                if let Err(e) = std::fs::rename(old, dest) {
                    errors.push(format!("put back {}: {e}", dest.display()));
                }
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors.join("; "))
        }
    }
}

/// Moves `from_root/rel` to `to_root/rel`, replacing whatever `to_root`
/// holds there. Missing parent directories are created like their
/// counterparts under `from_root`; the parent's times are kept, so the new
/// tree's directories keep the times the image gave them.
fn carry(from_root: &Path, to_root: &Path, rel: &Path) -> Result<(), String> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let from = from_root.join(rel);
    let to = to_root.join(rel);
    let keeping = |e: std::io::Error| {
        format!(
            "cannot keep the excluded {} out of the restore: {e}",
            from.display()
        )
    };
    let mut partial = PathBuf::new();
    let parents: Vec<_> = rel
        .parent()
        .map(|p| p.components().collect())
        .unwrap_or_default();
    for part in parents {
        partial.push(part);
        let here = to_root.join(&partial);
        match std::fs::symlink_metadata(&here) {
            Ok(md) if md.is_dir() => continue,
            Ok(md) => {
                let what = if md.file_type().is_symlink() {
                    "symlink"
                } else {
                    "file"
                };
                return Err(format!(
                    "cannot keep the excluded {}: the image holds a {what} at {}, where this appliance has a directory; move the excluded path out of the way (or restore under --target) and restore again",
                    from.display(),
                    from_root.join(&partial).display()
                ));
            }
            Err(_) => {}
        }
        let live = std::fs::symlink_metadata(from_root.join(&partial)).map_err(keeping)?;
        std::fs::create_dir(&here).map_err(keeping)?;
        std::fs::set_permissions(&here, std::fs::Permissions::from_mode(live.mode() & 0o7777))
            .map_err(keeping)?;
        if crate::util::is_root() {
            std::os::unix::fs::lchown(&here, Some(live.uid()), Some(live.gid()))
                .map_err(keeping)?;
        }
    }
    if std::fs::symlink_metadata(&to).is_ok() {
        let parent = to.parent().unwrap_or(to_root);
        let times = std::fs::symlink_metadata(parent).map_err(keeping)?;
        crate::util::remove_any(&to).map_err(keeping)?;
        set_times_of(parent, &times).map_err(keeping)?;
    }
    rename_keeping_times(&from, &to).map_err(keeping)
}

/// Moves carried paths back from `from_root` to `to_root` (undoing [`carry`]).
fn carry_back(from_root: &Path, to_root: &Path, carried: &[PathBuf]) -> Result<(), String> {
    let mut errors = Vec::new();
    for rel in carried.iter().rev() {
        if let Err(e) = rename_keeping_times(&from_root.join(rel), &to_root.join(rel)) {
            errors.push(format!(
                "put back the excluded {}: {e}",
                to_root.join(rel).display()
            ));
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors.join("; "))
    }
}

/// Renames `from` to `to`, keeping both parent directories' times (a carry
/// is no change of theirs).
fn rename_keeping_times(from: &Path, to: &Path) -> std::io::Result<()> {
    let parents = [from.parent(), to.parent()];
    let mut times = Vec::new();
    for p in parents.into_iter().flatten() {
        times.push((p, std::fs::symlink_metadata(p)?));
    }
    std::fs::rename(from, to)?;
    for (p, md) in times {
        set_times_of(p, &md)?;
    }
    Ok(())
}

fn set_times_of(path: &Path, md: &std::fs::Metadata) -> std::io::Result<()> {
    let mtime = filetime::FileTime::from_last_modification_time(md);
    let atime = filetime::FileTime::from_last_access_time(md);
    filetime::set_file_times(path, atime, mtime)
}

/// Sockets, FIFOs and device files: no backup holds them (the files
/// component skips them with a warning), so a restore has nothing to put in
/// their place, and removing a live daemon's socket would break it. Restores
/// carry them over like excluded paths.
pub(crate) fn is_special(file_type: &std::fs::FileType) -> bool {
    use std::os::unix::fs::FileTypeExt;
    file_type.is_socket()
        || file_type.is_fifo()
        || file_type.is_block_device()
        || file_type.is_char_device()
}

/// The topmost paths under `root` (relative to it) that `excluded` matches,
/// given each path's original absolute location `original.join(rel)`, and
/// the special files ([`is_special`]) under it. `root` itself is never
/// excluded; symlinks are not followed.
pub(crate) fn excluded_under(
    root: &Path,
    original: &Path,
    excluded: &dyn Fn(&Path) -> bool,
) -> std::io::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    if !std::fs::symlink_metadata(root).is_ok_and(|m| m.is_dir()) {
        return Ok(out);
    }
    let mut it = walkdir::WalkDir::new(root)
        .follow_links(false)
        .sort_by_file_name()
        .min_depth(1)
        .into_iter();
    while let Some(next) = it.next() {
        let entry = next.map_err(std::io::Error::from)?;
        let rel = entry.path().strip_prefix(root).expect("under the root");
        if is_special(&entry.file_type()) || excluded(&original.join(rel)) {
            if entry.file_type().is_dir() {
                it.skip_current_dir();
            }
            out.push(rel.to_path_buf());
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(path: &Path, text: &str) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }

    fn read(path: &Path) -> Option<String> {
        std::fs::read_to_string(path).ok()
    }

    #[test]
    fn a_swap_carries_kept_paths_over_the_staged_ones_and_rollback_brings_them_back() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("etc");
        let staged = dir.path().join("staging");
        write(&dest.join("a/x"), "old x");
        write(&dest.join("a/keep.tmp"), "live");
        write(&dest.join("cache/f"), "live cache");
        write(
            &dest.join("new/deeper/keep.tmp"),
            "live, in a directory the image lacks",
        );
        write(&staged.join("a/x"), "new x");
        write(&staged.join("a/keep.tmp"), "the image's copy");
        write(&staged.join("cache/g"), "the image's cache");
        let keep: Vec<PathBuf> = ["a/keep.tmp", "cache", "new/deeper/keep.tmp"]
            .iter()
            .map(PathBuf::from)
            .collect();

        let mut swapped = Swapped::default();
        swapped.swap(&staged, &dest, &keep).unwrap();
        assert_eq!(read(&dest.join("a/x")).as_deref(), Some("new x"));
        assert_eq!(read(&dest.join("a/keep.tmp")).as_deref(), Some("live"));
        assert_eq!(read(&dest.join("cache/f")).as_deref(), Some("live cache"));
        assert_eq!(read(&dest.join("cache/g")), None);
        assert_eq!(
            read(&dest.join("new/deeper/keep.tmp")).as_deref(),
            Some("live, in a directory the image lacks")
        );

        Box::new(swapped).rollback().unwrap();
        assert_eq!(read(&dest.join("a/x")).as_deref(), Some("old x"));
        assert_eq!(read(&dest.join("a/keep.tmp")).as_deref(), Some("live"));
        assert_eq!(read(&dest.join("cache/f")).as_deref(), Some("live cache"));
        assert_eq!(
            read(&dest.join("new/deeper/keep.tmp")).as_deref(),
            Some("live, in a directory the image lacks")
        );
        let names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["etc"], "leftovers beside the destination");
    }

    #[test]
    fn excluded_under_gives_the_topmost_matches_by_original_path_and_special_files() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("restored/etc/app");
        write(&root.join("a.conf"), "");
        write(&root.join("cache/inner.tmp"), "");
        write(&root.join("sub/b.tmp"), "");
        let original = Path::new("/etc/app");
        let excluded = |p: &Path| {
            p == Path::new("/etc/app/cache") || p.extension().is_some_and(|e| e == "tmp")
        };
        let _socket = std::os::unix::net::UnixListener::bind(root.join("sub/live.sock")).unwrap();
        let found = excluded_under(&root, original, &excluded).unwrap();
        assert_eq!(
            found,
            [
                PathBuf::from("cache"),
                PathBuf::from("sub/b.tmp"),
                PathBuf::from("sub/live.sock")
            ]
        );
        assert!(excluded_under(&root.join("missing"), original, &excluded)
            .unwrap()
            .is_empty());
    }
}
