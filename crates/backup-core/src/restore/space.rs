//! Room to stage: before anything is staged, each selected component's size
//! (from the image's manifest) against the free space of the file system
//! that will hold its staging directory, summed per file system.
use std::os::unix::fs::MetadataExt;

use super::*;
use crate::image::ComponentRecord;

/// What one component needs on the file system its staging goes to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct SpaceNeed {
    /// Component name.
    pub component: String,
    /// The file system (its mount point) that holds the component's staging.
    pub file_system: PathBuf,
    /// Bytes the component needs there (its content bytes plus a block per entry).
    pub needed: u64,
    /// Bytes free there for this process, before the restore.
    pub free: u64,
    /// Whether everything staged on this file system fits.
    pub fits: bool,
}

/// A file system staging goes to: device, mount point, free bytes, and the
/// components staged there with their needs.
type FileSystem = (u64, PathBuf, u64, Vec<(String, u64)>);

/// A block per entry: small files take at least that much each.
const ENTRY_BLOCK: u64 = 4096;

/// Where `planned`'s staging directory goes: beside its first destination
/// (so the final move is a rename), or the scratch space for components
/// without roots. The same rule the staging itself follows.
pub(super) fn staging_base(
    planned: &PlannedComponent,
    target: Option<&Path>,
    scratch: &Path,
) -> PathBuf {
    match planned.roots.first() {
        Some(r) => {
            let r = Path::new(r);
            let dest = match target {
                Some(t) => t.join(r.strip_prefix("/").unwrap_or(r)),
                None => r.to_path_buf(),
            };
            dest.parent()
                .map(Path::to_path_buf)
                .unwrap_or_else(|| PathBuf::from("/"))
        }
        None => scratch.to_path_buf(),
    }
}

/// The room each selected, successfully backed-up component needs, per
/// file system; refuses with the whole table when one file system lacks it.
pub(super) fn check_space(
    info: &BackupInfo,
    records: &[ComponentRecord],
    selected: &[String],
    target: Option<&Path>,
    scratch: &Path,
) -> Result<Vec<SpaceNeed>> {
    let mut by_fs: Vec<FileSystem> = Vec::new();
    for planned in info
        .components
        .iter()
        .filter(|c| selected.contains(&c.name))
    {
        let Some(record) = records
            .iter()
            .find(|r| r.name == planned.name && r.outcome == Outcome::Success)
        else {
            continue;
        };
        let needed = record
            .bytes
            .saturating_add(record.entries.saturating_mul(ENTRY_BLOCK));
        let base = staging_base(planned, target, scratch);
        let existing = nearest_existing(&base);
        let dev = std::fs::metadata(&existing)
            .map_err(|e| Error::io(format!("checking {}", existing.display()), e))?
            .dev();
        match by_fs.iter_mut().find(|(d, ..)| *d == dev) {
            Some((.., parts)) => parts.push((planned.name.clone(), needed)),
            None => {
                let st = rustix::fs::statvfs(&existing).map_err(|e| {
                    Error::io(
                        format!("reading the free space of {}", existing.display()),
                        e.into(),
                    )
                })?;
                let free = st.f_bavail.saturating_mul(st.f_frsize);
                by_fs.push((
                    dev,
                    mount_point(&existing, dev),
                    free,
                    vec![(planned.name.clone(), needed)],
                ));
            }
        }
    }
    let mut rows = Vec::new();
    for (_, fs, free, parts) in &by_fs {
        let total: u64 = parts.iter().map(|(_, n)| n).sum();
        for (component, needed) in parts {
            rows.push(SpaceNeed {
                component: component.clone(),
                file_system: fs.clone(),
                needed: *needed,
                free: *free,
                fits: total <= *free,
            });
        }
    }
    if rows.iter().any(|r| !r.fits) {
        return Err(Error::NoRoom(space_table(&rows)));
    }
    Ok(rows)
}

/// The table of a refusal: component, file system, needed, free.
pub fn space_table(rows: &[SpaceNeed]) -> String {
    let width = rows
        .iter()
        .map(|r| r.component.len())
        .chain([9])
        .max()
        .unwrap_or(9);
    let fs_width = rows
        .iter()
        .map(|r| r.file_system.display().to_string().len())
        .chain([11])
        .max()
        .unwrap_or(11);
    let mut out = format!(
        "{:width$}  {:fs_width$}  {:>14}  {:>14}",
        "component", "file system", "needed", "free"
    );
    // Names from the image stay on their row.
    let plain = |s: &str| s.replace(char::is_control, "?");
    for r in rows {
        out.push_str(&format!(
            "\n{:width$}  {:fs_width$}  {:>14}  {:>14}{}",
            plain(&r.component),
            plain(&r.file_system.display().to_string()),
            r.needed,
            r.free,
            if r.fits { "" } else { "  (does not fit)" }
        ));
    }
    out
}

/// `path`, or its nearest ancestor that exists (a target not created yet).
fn nearest_existing(path: &Path) -> PathBuf {
    path.ancestors()
        .find(|p| !p.as_os_str().is_empty() && p.exists())
        .unwrap_or(Path::new("/"))
        .to_path_buf()
}

/// The topmost directory above `path` on the same device: its mount point.
fn mount_point(path: &Path, dev: u64) -> PathBuf {
    let mut top = path.to_path_buf();
    for p in path.ancestors().skip(1) {
        match std::fs::metadata(p) {
            Ok(md) if md.dev() == dev => top = p.to_path_buf(),
            _ => break,
        }
    }
    top
}
