//! Operations around the engine: lock, status, audit log, schedule,
//! retention, hooks.
pub(crate) mod audit;
pub(crate) mod hooks;
pub(crate) mod lock;
pub(crate) mod retention;
pub(crate) mod schedule;
pub(crate) mod status;
