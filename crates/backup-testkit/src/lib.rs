//! Fixtures the workspace's tests share, so that each is written once:
//!
//! - [`demo`]: the demo appliance (configuration tree, SQLite database, a
//!   store and a state directory) and the tree and row comparisons the tests
//!   prove restores with;
//! - [`MemoryStorage`]: a [`backup_storage::Storage`] over a map in memory,
//!   passing the conformance suite, for tests of the engine without a disk
//!   store;
//! - [`hostile`]: crafted payloads (path traversal, absolute paths, writes
//!   through symlinks, device nodes) and sealing them under an appliance's key
//!   without the checks `backup encrypt` makes, as an attacker would;
//! - [`sshd`]: a real OpenSSH server on 127.0.0.1 for `sftp://` storage;
//! - [`Tmpfs`]: a small file system of a given size (as root), for full
//!   disks and room checks.
//!
//! Not published: its interface follows the tests.
//!
//! ```
//! use backup_storage::{PutMode, StorageExt};
//! use backup_testkit::MemoryStorage;
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let store = MemoryStorage::default();
//! let runtime = tokio::runtime::Builder::new_current_thread().build()?;
//! runtime.block_on(store.put_bytes("a.bkp", "image".into(), PutMode::Create))?;
//! assert_eq!(store.names(), ["a.bkp"]);
//! # Ok(())
//! # }
//! ```

pub mod hostile;
mod memory;
pub mod sshd;
mod tmpfs;

pub use memory::MemoryStorage;
pub use tmpfs::Tmpfs;

/// The demo appliance and the comparisons the tests prove restores with
/// (backup-core's fixture builder, used by `backup quickstart` too).
pub mod demo {
    pub use backup_core::demo::*;
}
