//! What an operation runs with: the engine's shared state (config, storage,
//! components, keys) and the facts of one call (actor, progress, trigger).
//! The operation modules take a [`Context`], so one engine serves many
//! callers at once, each recorded under its own name; the operation lock
//! still lets one run at a time.
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use backup_storage::Storage;

use crate::component::{Component, Registered};
use crate::config::Config;
use crate::keys::Keys;
use crate::ops::audit::{AuditLog, AuditRecord};
use crate::progress::{Event, Progress};

/// Directory of per-backup log files in the state directory.
pub const LOGS_DIR: &str = "logs";

/// What started an operation.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Trigger {
    /// An operator or a program asked for it (the CLI, an embedder).
    #[default]
    Manual,
    /// The schedule: a backup so started is recorded as a scheduled backup.
    Scheduled,
    /// A request to an HTTP service.
    Http,
    /// A cluster coordinator.
    Cluster,
}

impl Trigger {
    /// How the audit log names it; `None` for an operator's command.
    pub fn audit_name(self) -> Option<&'static str> {
        match self {
            Trigger::Manual => None,
            Trigger::Scheduled => Some("scheduled"),
            Trigger::Http => Some("http"),
            Trigger::Cluster => Some("cluster"),
        }
    }
}

/// The facts of one call: who asks, where its progress goes, what started
/// it. What a call leaves unset falls back to the engine's defaults (see
/// [`crate::EngineBuilder::actor`] and [`crate::EngineBuilder::progress`]).
///
/// ```
/// use backup_core::{Call, Trigger};
/// let call = Call::new().actor("alice@http").trigger(Trigger::Http);
/// # let _ = call;
/// ```
#[derive(Clone, Default)]
pub struct Call {
    actor: Option<String>,
    progress: Option<Arc<dyn Progress>>,
    trigger: Trigger,
}

impl Call {
    /// A manual call with the engine's default actor and progress sink.
    pub fn new() -> Self {
        Call::default()
    }

    /// Who the audit log names as the actor of this call.
    pub fn actor(mut self, actor: impl Into<String>) -> Self {
        self.actor = Some(actor.into());
        self
    }

    /// Receives this call's progress events and warnings.
    pub fn progress(mut self, progress: Arc<dyn Progress>) -> Self {
        self.progress = Some(progress);
        self
    }

    /// What started this call.
    pub fn trigger(mut self, trigger: Trigger) -> Self {
        self.trigger = trigger;
        self
    }
}

impl std::fmt::Debug for Call {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Call")
            .field("actor", &self.actor)
            .field("progress", &self.progress.is_some())
            .field("trigger", &self.trigger)
            .finish()
    }
}

/// One call's view of the engine, as the operation modules see it.
#[derive(Clone)]
pub(crate) struct Context<'a> {
    pub(crate) config: &'a Config,
    pub(crate) storage: Option<Arc<dyn Storage>>,
    /// The group image files are given (`[storage] group`), as an id.
    pub(crate) file_group: Option<u32>,
    pub(crate) components: &'a [Registered],
    pub(crate) keys: Arc<Keys>,
    pub(crate) actor: String,
    pub(crate) progress: Arc<dyn Progress>,
    pub(crate) trigger: Trigger,
    /// Set when the run must stop (a drill past its time limit): reading
    /// an image then fails.
    pub(crate) stop: Option<Arc<std::sync::atomic::AtomicBool>>,
}

/// The parts of an engine a context borrows.
pub(crate) struct Shared<'a> {
    pub(crate) config: &'a Config,
    pub(crate) storage: &'a Option<Arc<dyn Storage>>,
    pub(crate) file_group: Option<u32>,
    pub(crate) components: &'a [Registered],
    pub(crate) keys: &'a Arc<Keys>,
    pub(crate) actor: &'a str,
    pub(crate) progress: &'a Arc<dyn Progress>,
}

impl<'a> Context<'a> {
    /// The context of `call`, with the engine's defaults where it sets none.
    pub(crate) fn new(shared: Shared<'a>, call: &Call) -> Self {
        Context {
            config: shared.config,
            storage: shared.storage.clone(),
            file_group: shared.file_group,
            components: shared.components,
            keys: shared.keys.clone(),
            actor: call
                .actor
                .clone()
                .unwrap_or_else(|| shared.actor.to_string()),
            progress: call
                .progress
                .clone()
                .unwrap_or_else(|| shared.progress.clone()),
            trigger: call.trigger,
            stop: None,
        }
    }

    /// The same context, started by `trigger`.
    pub(crate) fn with_trigger(&self, trigger: Trigger) -> Self {
        Context {
            trigger,
            ..self.clone()
        }
    }

    /// The same context, stopping its image reads once `stop` is set.
    pub(crate) fn with_stop(&self, stop: Arc<std::sync::atomic::AtomicBool>) -> Self {
        Context {
            stop: Some(stop),
            ..self.clone()
        }
    }

    /// The configured storage, if any.
    pub(crate) fn storage(&self) -> Option<&Arc<dyn Storage>> {
        self.storage.as_ref()
    }

    /// Names of the registered components, in order.
    pub(crate) fn component_names(&self) -> Vec<String> {
        self.components
            .iter()
            .map(|c| c.component.name().to_string())
            .collect()
    }

    /// Whether a registered component holds audit records.
    pub(crate) fn is_audit_component(&self, name: &str) -> bool {
        self.components
            .iter()
            .any(|c| c.component.name() == name && c.options.audit)
    }

    pub(crate) fn component(&self, name: &str) -> Option<&Arc<dyn Component>> {
        self.components
            .iter()
            .find(|c| c.component.name() == name)
            .map(|c| &c.component)
    }

    pub(crate) fn state_dir(&self) -> &Path {
        &self.config.appliance.state_dir
    }

    pub(crate) fn audit_log(&self) -> AuditLog {
        AuditLog::in_state_dir(self.state_dir())
    }

    /// Appends an audit record; a failure to write it is reported, not fatal.
    pub(crate) fn audit(
        &self,
        operation: &str,
        target: &str,
        outcome: &str,
        bytes: u64,
        started: Instant,
        error: Option<String>,
    ) {
        let mut record = AuditRecord::new(self.actor.clone(), operation, target, outcome);
        record.bytes = bytes;
        record.duration_ms = started.elapsed().as_millis() as u64;
        record.error = error;
        self.append_audit(record);
    }

    /// Appends `record`, with this call's trigger; a failure to write it is
    /// reported, not fatal.
    pub(crate) fn append_audit(&self, mut record: AuditRecord) {
        record.trigger = self.trigger.audit_name().map(str::to_string);
        if let Err(e) = self.audit_log().append(&record) {
            self.warn(format!("the audit log could not be written: {e}"));
        }
    }

    /// A warning for the operator, through the call's progress sink.
    pub(crate) fn warn(&self, message: String) {
        self.progress.event(&Event::Warning {
            component: None,
            message,
        });
    }

    /// Removes scratch space left by runs that are gone (see
    /// [`crate::util::remove_stale_scratch`]), saying so.
    pub(crate) fn remove_stale_scratch(&self, holding_lock: bool) {
        for path in crate::util::remove_stale_scratch(self.state_dir(), holding_lock) {
            self.progress.event(&Event::Step {
                message: format!(
                    "removed the scratch space of a run that is gone: {}",
                    path.display()
                ),
            });
        }
    }

    pub(crate) fn log_path(&self, image: &str) -> PathBuf {
        let base = image.rsplit('/').next().unwrap_or(image);
        self.state_dir().join(LOGS_DIR).join(format!("{base}.log"))
    }
}

/// The storage of this call, or an error saying there is none to `what`.
pub(crate) fn need_storage<'e>(
    engine: &'e Context<'e>,
    what: &str,
) -> crate::Result<&'e std::sync::Arc<dyn Storage>> {
    engine
        .storage()
        .ok_or_else(|| crate::Error::NoStorage(format!("there is nothing to {what}")))
}
