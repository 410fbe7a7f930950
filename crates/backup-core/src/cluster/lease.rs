//! The restore lease of a bundle: one node of a cluster is restored at a
//! time. Every restore from a bundle first creates `{bundle}.restore-lease`
//! beside it (in the storage holding the bundle, or next to a bundle file)
//! with create-only semantics, and removes it when it ends; a second
//! restore finds it and is refused, naming who holds it since when.
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use backup_storage::{PutMode, Storage, StorageExt};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::LEASE_SUFFIX;
use crate::context::Context;
use crate::images::ImageRef;
use crate::{Error, Result};

/// Largest lease object read.
const MAX_LEASE: u64 = 64 << 10;

/// Who holds a bundle's restore lease: the lease object's content.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseHolder {
    /// The node being restored.
    pub node: String,
    /// The host the restore runs on.
    pub host: String,
    /// Its process id there.
    pub pid: u32,
    /// When it started.
    pub started: DateTime<Utc>,
}

impl LeaseHolder {
    /// Whether the holder is gone: its process has ended on this host, or
    /// it started longer than `stale_after` ago.
    fn is_stale(&self, stale_after: Duration, now: DateTime<Utc>) -> bool {
        let gone = self.host == crate::ops::lock::hostname()
            && !std::path::Path::new(&format!("/proc/{}", self.pid)).exists();
        let age = (now - self.started).to_std().unwrap_or_default();
        gone || age > stale_after
    }
}

impl std::fmt::Display for LeaseHolder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the restore of node {} on host {} (pid {}) since {}",
            self.node,
            self.host,
            self.pid,
            self.started.format("%Y-%m-%d %H:%M:%S UTC")
        )
    }
}

/// Where a bundle's lease lives.
#[derive(Clone)]
enum Place {
    Stored {
        storage: Arc<dyn Storage>,
        name: String,
    },
    File(PathBuf),
}

impl std::fmt::Display for Place {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Place::Stored { storage, name } => write!(f, "{name} in {storage}"),
            Place::File(p) => write!(f, "{}", p.display()),
        }
    }
}

impl Place {
    /// Creates the lease object; `Ok(false)` if it exists.
    async fn create(&self, bytes: &[u8]) -> Result<bool> {
        match self {
            Place::Stored { storage, name } => match storage
                .put_bytes(name, bytes::Bytes::copy_from_slice(bytes), PutMode::Create)
                .await
            {
                Ok(_) => Ok(true),
                Err(backup_storage::Error::AlreadyExists { .. }) => Ok(false),
                Err(e) => Err(e.into()),
            },
            Place::File(p) => {
                use std::io::Write;
                let file = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .open(p);
                match file {
                    Ok(mut f) => {
                        f.write_all(bytes)
                            .and_then(|()| f.sync_all())
                            .map_err(|e| {
                                Error::io(format!("writing the lease {}", p.display()), e)
                            })?;
                        Ok(true)
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
                    Err(e) => Err(Error::io(format!("creating the lease {}", p.display()), e)),
                }
            }
        }
    }

    /// The lease object's bytes; `None` if there is none.
    async fn read(&self) -> Result<Option<Vec<u8>>> {
        match self {
            Place::Stored { storage, name } => match storage.get_bytes(name, MAX_LEASE).await {
                Ok(b) => Ok(Some(b.to_vec())),
                Err(backup_storage::Error::NotFound { .. }) => Ok(None),
                Err(e) => Err(e.into()),
            },
            Place::File(p) => match std::fs::read(p) {
                Ok(b) => Ok(Some(b)),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(Error::io(format!("reading the lease {}", p.display()), e)),
            },
        }
    }

    async fn delete(&self) -> Result<()> {
        match self {
            Place::Stored { storage, name } => Ok(storage.delete(name).await?),
            Place::File(p) => match std::fs::remove_file(p) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    Err(Error::io(format!("removing the lease {}", p.display()), e))
                }
                _ => Ok(()),
            },
        }
    }
}

/// A restore lease held by this process; [`Lease::release`] gives it back.
pub(crate) struct Lease {
    place: Place,
    bytes: Vec<u8>,
}

impl Lease {
    /// Takes the restore lease of `bundle` for restoring `node`. Refused
    /// with [`Error::Busy`] while another restore holds it; with
    /// `take_over`, a lease whose holder is gone (its process ended on
    /// this host, or older than `[cluster] lease_stale_secs`) is taken
    /// over, a live one never.
    pub(crate) async fn acquire(
        engine: &Context<'_>,
        bundle: &ImageRef,
        node: &str,
        take_over: bool,
    ) -> Result<Lease> {
        let place = match bundle {
            ImageRef::Stored(name) => Place::Stored {
                storage: crate::context::need_storage(engine, "restore from")?.clone(),
                name: format!("{name}{LEASE_SUFFIX}"),
            },
            ImageRef::File(p) => {
                let mut name = p.as_os_str().to_owned();
                name.push(LEASE_SUFFIX);
                Place::File(PathBuf::from(name))
            }
            ImageRef::Node { .. } => {
                return Err(Error::Input(format!("{bundle} is not a bundle")));
            }
        };
        let me = LeaseHolder {
            node: node.to_string(),
            host: crate::ops::lock::hostname(),
            pid: std::process::id(),
            started: Utc::now(),
        };
        let bytes = serde_json::to_vec(&me).expect("a lease serialises");
        let stale_after = Duration::from_secs(
            engine
                .config
                .cluster
                .as_ref()
                .map(|c| c.lease_stale_secs)
                .unwrap_or(6 * 3600),
        );
        // A lease released between our create and our read is simply
        // tried again; a few rounds settle any race.
        for _ in 0..5 {
            if place.create(&bytes).await? {
                return Ok(Lease { place, bytes });
            }
            let Some(held) = place.read().await? else {
                continue;
            };
            let holder = serde_json::from_slice::<LeaseHolder>(&held).ok();
            let stale = holder
                .as_ref()
                .is_none_or(|h| h.is_stale(stale_after, Utc::now()));
            let who = holder
                .as_ref()
                .map(ToString::to_string)
                .unwrap_or_else(|| "a restore whose lease does not parse".into());
            if !take_over {
                let hint = if stale {
                    format!(
                        "; its holder looks gone — if no restore from this bundle runs, pass \
                         --take-over-lease (or remove {place})"
                    )
                } else {
                    String::new()
                };
                return Err(Error::Busy(format!(
                    "the restore lease {place} is held by {who}: the nodes of a cluster are \
                     restored one at a time — wait until that restore ends, then run this \
                     again{hint}"
                )));
            }
            if !stale {
                return Err(Error::Busy(format!(
                    "the restore lease {place} is held by {who}, which is still running \
                     (--take-over-lease only takes over a lease whose holder is gone, or older \
                     than {}s): wait until that restore ends",
                    stale_after.as_secs()
                )));
            }
            // Take over only the lease we judged: if it changed meanwhile,
            // someone else took it over first.
            if place.read().await?.as_deref() != Some(&held[..]) {
                continue;
            }
            place.delete().await?;
            engine.warn(format!(
                "took over the restore lease {place}, held by {who}, whose holder is gone"
            ));
        }
        Err(Error::Busy(format!(
            "the restore lease {place} keeps changing hands: other restores from this bundle \
             are starting; wait until they end"
        )))
    }

    /// Gives the lease back (only if it is still ours).
    pub(crate) async fn release(self) -> Result<()> {
        match self.place.read().await? {
            Some(b) if b == self.bytes => self.place.delete().await,
            _ => Ok(()),
        }
    }
}
