//! The plan of a backup: which components it takes. Below the operations
//! that need it (backup, and images for what a backup would take now).
use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;

use crate::component::{Applicability, Component};
use crate::context::Context;
use crate::destination::Destination;
use crate::image::Selection;
use crate::own_paths::{tree_size, OwnPaths};
use crate::{Error, Result};

/// What a backup takes.
pub(crate) struct Plan {
    pub(crate) selection: Selection,
    pub(crate) items: Vec<PlanItem>,
    /// Components left out of a standard backup, with the reason.
    pub(crate) not_applicable: Vec<String>,
    /// The same, name → reason, as the image records them.
    pub(crate) not_applicable_reasons: std::collections::BTreeMap<String, String>,
}

impl Plan {
    /// The components the backup takes, in order.
    pub(crate) fn component_names(&self) -> impl Iterator<Item = &str> {
        self.items.iter().map(|i| i.component.name())
    }

    /// The selected components' estimated total size (unknown sizes count
    /// as 0), without the engine's own places they leave out.
    pub(crate) fn estimate(&self) -> u64 {
        self.items
            .iter()
            .filter_map(|i| {
                let left_out: u64 = i.left_out.iter().map(|(p, _)| tree_size(p)).sum();
                Some(i.component.estimate_size()?.saturating_sub(left_out))
            })
            .sum()
    }
}

/// One component a backup takes, with its applicability as probed.
pub(crate) struct PlanItem {
    pub(crate) component: Arc<dyn Component>,
    pub(crate) applicability: Applicability,
    /// The engine's own places inside the component's roots (absolute, with
    /// what each is): left out of the image, with a warning.
    pub(crate) left_out: Vec<(PathBuf, String)>,
}

/// The plan of a backup: which components it takes, each probed for its
/// applicability once. Selection errors (an unknown component, a missing
/// requirement, nothing applicable) are found here, before the run starts.
pub(crate) fn plan(engine: &Context<'_>, opts: &CreateOptions) -> Result<Plan> {
    for name in &opts.components {
        if engine.component(name).is_none() {
            return Err(Error::Input(format!(
                "unknown component {name:?}; this appliance has: {}",
                engine.component_names().join(", ")
            )));
        }
    }
    let custom = !opts.components.is_empty();
    let own = OwnPaths::of(engine.config);
    let mut items = Vec::new();
    let mut not_applicable = Vec::new();
    let mut not_applicable_reasons = std::collections::BTreeMap::new();
    for reg in engine.components {
        let name = reg.component.name();
        let wanted = if custom {
            opts.components.iter().any(|n| n == name) || (opts.include_audits && reg.options.audit)
        } else {
            if reg.options.audit {
                opts.include_audits
            } else {
                reg.options.default
            }
        };
        if !wanted {
            continue;
        }
        let applicability = reg.component.applicability();
        if let Applicability::NotApplicable(why) = &applicability {
            if !custom {
                not_applicable.push(format!("{name} ({why})"));
                not_applicable_reasons.insert(name.to_string(), why.to_string());
                continue;
            }
            if opts.halt {
                return Err(Error::Halted {
                    component: name.to_string(),
                    reason: format!("not applicable: {why}"),
                });
            }
        }
        let left_out = reg
            .component
            .roots()
            .iter()
            .flat_map(|root| {
                own.under(root)
                    .into_iter()
                    .map(|(rel, place)| (root.join(rel), place.what.clone()))
                    .collect::<Vec<_>>()
            })
            .filter(|(path, _)| std::fs::symlink_metadata(path).is_ok())
            .collect();
        items.push(PlanItem {
            component: reg.component.clone(),
            applicability,
            left_out,
        });
    }
    for item in &items {
        // Restore refuses a whole image naming such a root, so no image gets one.
        crate::image::check::EntryRules::new(&item.component.roots()).map_err(|reason| {
            Error::Input(format!(
                "component {}: {reason}; give it absolute paths without '.' or '..' parts",
                item.component.name()
            ))
        })?;
    }
    let selected: BTreeSet<&str> = items.iter().map(|i| i.component.name()).collect();
    for reg in engine.components {
        if !selected.contains(reg.component.name()) {
            continue;
        }
        for req in &reg.options.requires {
            if !selected.contains(req.as_str()) {
                return Err(Error::Input(format!(
                    "component {} requires {req}, which is not in this backup; add --component {req}",
                    reg.component.name()
                )));
            }
        }
    }
    if items.is_empty() {
        return Err(Error::Input(
            "nothing to back up: no applicable component is selected".into(),
        ));
    }
    Ok(Plan {
        selection: if custom {
            Selection::Custom
        } else {
            Selection::Standard
        },
        items,
        not_applicable,
        not_applicable_reasons,
    })
}

/// What `create` should do.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct CreateOptions {
    /// A custom backup of these components (empty: a standard backup).
    pub components: Vec<String>,
    /// Include audit components.
    pub include_audits: bool,
    /// Fail at the first failing component and publish nothing.
    pub halt: bool,
    /// Where the image goes (default: the configured storage).
    pub destination: Destination,
    /// Started by the schedule (recorded in status and audit log); the same
    /// as a call with [`Trigger::Scheduled`](crate::Trigger::Scheduled).
    pub scheduled: bool,
    /// Read every file, reusing nothing from the frame cache (which is
    /// rebuilt from what this backup reads).
    pub no_cache: bool,
}
