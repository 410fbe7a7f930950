//! The cluster coordinator: backs up every node of a cluster (control and
//! data nodes) or an HA pair (primary and secondary) as one unit.
//!
//! [`create`] checks every node's `backup serve` (`GET /status`) over HTTPS,
//! trusting each node by its pinned certificate fingerprint alone, pulls a
//! fresh image from each (`GET /backup`) straight into a staging object of
//! the coordinator's storage, and writes one plain tar, the bundle:
//! `cluster-manifest.json` first, then each node's image under its own
//! role-bearing name. A data or secondary node that fails is recorded and
//! the others are kept (outcome partial); a control or primary node that
//! fails cancels the run and nothing is published (outcome failed).
//!
//! ```no_run
//! use backup_cluster::{create, ClusterOptions};
//! use backup_core::{Config, Engine};
//!
//! # async fn run() -> Result<(), backup_core::Error> {
//! let config = Config::load("/etc/backup/coordinator.toml".as_ref())?;
//! let engine = Engine::builder(config).build()?;
//! let report = create(&engine, &ClusterOptions::default()).await?;
//! println!("{} {:?}", report.outcome, report.bundle);
//! # Ok(()) }
//! ```
#![warn(missing_docs)]

mod bundle;
mod client;
mod create;

pub use create::{create, ClusterOptions, ClusterReport, ScheduledCluster};
