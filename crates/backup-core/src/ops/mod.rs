//! Operations around the engine: lock, status, audit log, schedule,
//! retention, hooks.
pub mod audit;
pub mod hooks;
pub mod lock;
pub mod retention;
pub mod schedule;
pub mod status;
