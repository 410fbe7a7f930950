//! Progress and events, reported through a trait the caller implements.
use serde::Serialize;

use crate::model::Outcome;

/// Something that happened during an operation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
#[non_exhaustive]
pub enum Event {
    /// A step of a longer operation ("uploading", "verifying", …).
    Step {
        /// What is happening.
        message: String,
    },
    /// A component's snapshot or restore started.
    ComponentStarted {
        /// Its name.
        component: String,
        /// Its kind.
        kind: String,
    },
    /// Content bytes of a component processed since the last event.
    Bytes {
        /// The component.
        component: String,
        /// Bytes since the previous `Bytes` event.
        bytes: u64,
    },
    /// A component finished.
    ComponentFinished {
        /// Its name.
        component: String,
        /// Its outcome.
        outcome: Outcome,
        /// Entries.
        entries: u64,
        /// Content bytes.
        bytes: u64,
        /// Why it failed, if it did.
        error: Option<String>,
    },
    /// A run started by the scheduler ended (one per run, whatever its outcome).
    RunFinished {
        /// When it ended.
        time: chrono::DateTime<chrono::Utc>,
        /// The image it published, if any.
        image: Option<String>,
        /// `success`, `partial`, `failed`, `refused` or `skipped`.
        outcome: String,
        /// Why it did not succeed.
        reason: Option<String>,
    },
    /// A non-fatal warning.
    Warning {
        /// The component concerned, if any.
        component: Option<String>,
        /// The warning.
        message: String,
    },
}

/// Receives [`Event`]s. Implementations must be cheap: events arrive from the
/// pipeline's threads while data flows.
pub trait Progress: Send + Sync {
    /// One event. The default ignores it.
    fn event(&self, _event: &Event) {}
}

/// Ignores every event.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoProgress;

impl Progress for NoProgress {}
