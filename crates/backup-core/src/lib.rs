//! The appliance backup engine: components, plans, the image format, backup,
//! verification and restore.
//!
//! An [`Engine`] is built from a [`Config`] (the appliance's TOML file). A
//! backup takes a consistent snapshot of the selected [`Component`]s into one
//! encrypted image on a [`backup_storage::Storage`]; restore checks the image's
//! product version and node identity first, stages and verifies everything,
//! and only then swaps it into place.
//!
//! ```no_run
//! use std::sync::Arc;
//! use backup_core::{Config, CreateOptions, Engine, RestoreOptions};
//!
//! # async fn run() -> Result<(), backup_core::Error> {
//! let config = Config::load("/etc/backup.toml".as_ref())?;
//! let engine = Engine::builder(config).build()?;
//! let report = engine.create(&CreateOptions::default()).await?;
//! println!("{} ({}, {} bytes)", report.image, report.outcome, report.size);
//! engine.verify(&report.image).await?;
//! let mut opts = RestoreOptions::default();
//! opts.target = Some("/tmp/inspect".into());
//! engine.restore(&report.image, &opts).await?;
//! # Ok(()) }
//! ```
//!
//! Everything an embedder uses is re-exported here, the documents the engine
//! writes included ([`BackupInfo`], [`Manifest`], [`Sidecar`], [`StatusView`],
//! [`RetentionDecision`], [`AuditRecord`]); the modules behind them are
//! private, so they can change without breaking an embedder:
//!
//! ```compile_fail
//! use backup_core::ops::lock::OperationLock; // backup_core::OperationLock
//! ```
//!
//! ```compile_fail
//! use backup_core::image::codec::Encoder; // feature `bench`: backup_core::bench
//! ```
#![warn(missing_docs)]

mod backup;
mod browse;
pub mod cluster;
mod component;
mod config;
mod context;
mod copy;
mod daemon;
#[cfg(feature = "bench")]
#[doc(hidden)]
pub mod bench {
    //! The payload codecs, for the benchmarks in `benches/` (feature
    //! `bench`; not a stable interface).
    pub use crate::image::codec::{decoder, default_threads, Encoder};
}
#[cfg(feature = "demo")]
pub mod demo;
mod destination;
mod drill;
mod engine;
mod error;
#[cfg(any(test, feature = "fuzzing"))]
#[doc(hidden)]
pub mod fuzzing;
mod guard;
mod image;
mod images;
mod keys;
mod lazy_storage;
mod model;
mod ops;
mod own_paths;
mod plan;
mod progress;
mod restore;
mod retention;
mod runs;
mod transfer;
mod util;
mod verify;

pub use backup::{CreateReport, PROBE_OBJECT};
pub use browse::{Access, Browse, BrowseImage, BrowseView, DownloadLink, LinkSigner};
pub use component::ComponentOptions;
pub use component::{
    Applicability, CommandComponent, Committed, Component, EntryMeta, EntrySink, FileStat,
    FilesComponent, RestoreContext, SnapshotError, SqliteComponent,
};
pub use config::{
    Appliance, ClusterConfig, ClusterNode, ComponentConfig, ComponentKind, Compression, Config,
    EncryptionConfig, HttpConfig, ImageConfig, Role, ScheduleConfig, StorageConfig,
};
pub use context::{Call, Trigger};
pub use copy::{CopyConfig, CopyDestination, CopyOutcome, CopyRecord};
pub use daemon::{DaemonInfo, ScheduledRun, DAEMON_FILE};
pub use destination::{Destination, ImageStream};
pub use drill::{
    parse_duration, DrillCheck, DrillConfig, DrillOptions, DrillReport, DEFAULT_DRILL_TIMEOUT,
};
pub use engine::{Engine, EngineBuilder, EngineCall};
pub use error::{Error, ErrorKind, Result};
pub use guard::Operation;
pub use image::{
    BackupInfo, ComponentRecord, DigestScheme, EntryDigest, EntryKind, Manifest, Outcome,
    PlannedComponent, Selection, Sidecar,
};
pub use images::ImageRef;
pub use images::{ImageDetails, ImageSelection, ImageSummary};
pub use keys::ops::audit_key_operation;
pub use keys::rewrap::RewrapResult;
pub use keys::{
    check_passphrase, ensure_not_initialized, init_keys, rotate_keys, EarlierKey, KeyFile,
    KeySource, Keyring, NoPassphrase, PassphraseProvider, Rotation, KEYRING_FILE, KEY_FILE,
};
pub use ops::audit::AuditRecord;
pub use ops::lock::{LockHolder, OperationLock};
pub use ops::retention::{RetentionDecision, RetentionPolicy};
pub use ops::status::{CurrentRun, RestoreRecord, RunRecord};
pub use plan::CreateOptions;
pub use progress::{Event, NoProgress, Progress};
pub use restore::{
    space_table, Absent, ComponentPlan, Note, PathList, RestoreApproval, RestoreOptions,
    RestorePlan, RestoreReport, RestoreSummary, SpaceNeed, PLAN_PATHS_KEPT,
};
pub use retention::KEPT_BY_LOCK;
pub use runs::{ApplianceIdentity, StatusView, LOGS_DIR};
pub use verify::VerifyReport;

pub use backup_crypto::{KdfParams, MasterKey, Passphrase};
