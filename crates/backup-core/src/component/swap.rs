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
    /// (destination, where the old version was moved, if there was one)
    done: Vec<(PathBuf, Option<PathBuf>)>,
}

impl Swapped {
    /// Moves `staged` to `dest`, keeping whatever was at `dest` aside.
    /// `staged` should be on the same file system as `dest`; if it is not, it
    /// is copied next to `dest` first so the final step is still a rename.
    pub(crate) fn swap(&mut self, staged: &Path, dest: &Path) -> Result<(), String> {
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
        let old = if std::fs::symlink_metadata(dest).is_ok() {
            let old = parent.join(format!(".{base}.old-{tag}"));
            if let Err(e) = std::fs::rename(dest, &old) {
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
            let _ = crate::util::remove_any(&incoming);
            return Err(format!(
                "cannot move the restored {} into place: {e}",
                dest.display()
            ));
        }
        self.done.push((dest.to_path_buf(), old));
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
        self.done.push((path.to_path_buf(), Some(old)));
        Ok(())
    }
}

impl Committed for Swapped {
    fn finalize(self: Box<Self>) -> Result<(), String> {
        let mut errors = Vec::new();
        for (_, old) in &self.done {
            if let Some(old) = old {
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
        for (dest, old) in self.done.iter().rev() {
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
