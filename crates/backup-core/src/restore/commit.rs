//! Putting staged components into place, in an order that keeps what
//! cannot be undone last, and rolling back on a failure.
use super::*;

/// Of the selected components, those to put into place and those skipped
/// because they failed at backup time (an error if one was asked for by name).
pub(super) fn decide(
    walked: &WalkResult,
    selected: &[String],
    requested: &[String],
) -> Result<(Vec<PlannedComponent>, Vec<String>)> {
    let mut to_commit = Vec::new();
    let mut skipped_failed = Vec::new();
    for planned in &walked.info.components {
        if !selected.contains(&planned.name) {
            continue;
        }
        let record = walked
            .manifest
            .components
            .iter()
            .find(|r| r.name == planned.name)
            .expect("checked");
        if record.outcome != Outcome::Success {
            if requested.contains(&planned.name) {
                return Err(Error::Input(format!(
                    "component {} failed when this image was made ({}); it cannot be restored from it",
                    planned.name,
                    record.error.as_deref().unwrap_or("no reason recorded")
                )));
            }
            skipped_failed.push(planned.name.clone());
            continue;
        }
        to_commit.push(planned.clone());
    }
    Ok((to_commit, skipped_failed))
}

/// File trees and databases first, restore commands last (they cannot be undone).
pub(super) fn ordered_for_commit(planned: &[PlannedComponent]) -> Vec<&PlannedComponent> {
    let mut ordered: Vec<&PlannedComponent> =
        planned.iter().filter(|p| p.kind != "command").collect();
    ordered.extend(planned.iter().filter(|p| p.kind == "command"));
    ordered
}

/// Puts staged components into place; on a failure, rolls back those already
/// placed, in reverse order.
pub(super) fn commit(
    plan: Vec<(PlannedComponent, Option<PathBuf>, Arc<dyn Component>)>,
    target: Option<&Path>,
    own: &crate::own_paths::OwnPaths,
    checked: &HashSet<PathBuf>,
    progress: &dyn Progress,
) -> Result<Vec<String>> {
    let mut done: Vec<Box<dyn Committed>> = Vec::new();
    let mut names = Vec::new();
    for (p, staged, component) in plan {
        let Some(staged) = staged else {
            // A component without entries (an empty tree): nothing to place.
            names.push(p.name.clone());
            continue;
        };
        progress.event(&Event::Step {
            message: format!("putting {} into place", p.name),
        });
        let ctx = RestoreContext {
            staged: &staged,
            planned: &p,
            target,
            own,
            checked,
        };
        match component.restore(&ctx) {
            Ok(c) => {
                done.push(c);
                names.push(p.name.clone());
            }
            Err(reason) => {
                let mut undo_errors = Vec::new();
                for c in done.into_iter().rev() {
                    if let Err(e) = c.rollback() {
                        undo_errors.push(e);
                    }
                }
                let reason = if undo_errors.is_empty() {
                    format!("{reason}; components already put into place were rolled back")
                } else {
                    format!("{reason}; ROLLBACK FAILED: {}", undo_errors.join("; "))
                };
                return Err(Error::RestoreFailed {
                    component: p.name.clone(),
                    reason,
                });
            }
        }
    }
    for c in done {
        if let Err(e) = c.finalize() {
            progress.event(&Event::Warning {
                component: None,
                message: e,
            });
        }
    }
    Ok(names)
}
