//! The post-restore report: what was restored, what the image holds but was
//! not restored, what this appliance has that the image lacks (and why),
//! and the operator's own reminders for the restored components.
use serde::Deserialize;

use super::*;
use crate::image::{Manifest, Selection};

/// What a restore did, and did not, put back — and what to do next.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct RestoreSummary {
    /// Components put into place (by a dry run: that would be).
    pub restored: Vec<String>,
    /// Components the image holds that were not restored, with why.
    pub not_restored: Vec<Absent>,
    /// Components configured on this appliance that the image does not
    /// hold (or holds only as a failure), with why.
    pub not_in_image: Vec<Absent>,
    /// The `after_restore` notes of the restored components, in order.
    pub notes: Vec<Note>,
}

/// A component left out of a restore, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Absent {
    /// Component name.
    pub component: String,
    /// Why, in words an operator acts on.
    pub reason: String,
}

/// An operator's reminder for a restored component (`after_restore`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Note {
    /// Component name.
    pub component: String,
    /// The reminder as configured.
    pub note: String,
}

impl RestoreSummary {
    /// One line for the audit log: what was left out, and why (no paths, no
    /// secrets).
    pub fn audit_line(&self) -> String {
        let list = |items: &[Absent]| {
            items
                .iter()
                .map(|a| format!("{} ({})", a.component, a.reason))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let mut parts = Vec::new();
        if !self.not_restored.is_empty() {
            parts.push(format!("not restored: {}", list(&self.not_restored)));
        }
        if !self.not_in_image.is_empty() {
            parts.push(format!("not in the image: {}", list(&self.not_in_image)));
        }
        if !self.notes.is_empty() {
            parts.push(format!("{} after-restore note(s)", self.notes.len()));
        }
        parts.join("; ")
    }
}

/// The summary of restoring `restored` out of an image with `info` and
/// `manifest`, the image's `not_restored` components given by the
/// selection.
pub(super) fn summarize(
    engine: &Context<'_>,
    info: &BackupInfo,
    manifest: &Manifest,
    selected: &[String],
    restored: &[String],
) -> RestoreSummary {
    let failed = |name: &str| {
        manifest
            .components
            .iter()
            .find(|r| r.name == name && r.outcome != Outcome::Success)
    };
    let mut summary = RestoreSummary {
        restored: restored.to_vec(),
        ..RestoreSummary::default()
    };
    for c in &info.components {
        let listed_as_failed = failed(&c.name).is_some() && engine.component(&c.name).is_some();
        if selected.contains(&c.name) || listed_as_failed {
            continue;
        }
        let reason = if is_audit(engine, &c.name) {
            "audit records, not selected: pass --include-audits to restore them"
        } else {
            "not selected: name it with --component to restore it"
        };
        summary.not_restored.push(Absent {
            component: c.name.clone(),
            reason: reason.into(),
        });
    }
    for reg in engine.components {
        let name = reg.component.name();
        let reason = if let Some(r) = failed(name) {
            format!(
                "failed at backup time: {}",
                r.error.as_deref().unwrap_or("no reason recorded")
            )
        } else if info.components.iter().any(|c| c.name == name) {
            continue;
        } else if let Some(why) = info.not_applicable.get(name) {
            // Recorded as the source node put it.
            format!(
                "not applicable on the source node ({})",
                why.replace("this node", "that node")
            )
        } else if info.selection == Selection::Custom {
            "custom backup: the component was not selected".into()
        } else if reg.options.audit {
            "audits not included in the backup".into()
        } else if !reg.options.default {
            "not a default component, and the backup was a standard one".into()
        } else {
            "not applicable on the source node, or not configured there when the image was made"
                .into()
        };
        summary.not_in_image.push(Absent {
            component: name.to_string(),
            reason,
        });
    }
    for name in restored {
        if let Some(reg) = engine
            .components
            .iter()
            .find(|r| r.component.name() == name)
        {
            for note in &reg.options.after_restore {
                summary.notes.push(Note {
                    component: name.clone(),
                    note: note.clone(),
                });
            }
        }
    }
    summary
}

/// Whether `name` holds audit records here (registered as such, or, for a
/// component this appliance does not have, by the usual name).
fn is_audit(engine: &Context<'_>, name: &str) -> bool {
    match engine
        .components
        .iter()
        .find(|r| r.component.name() == name)
    {
        Some(r) => r.options.audit,
        None => name == "audits",
    }
}
