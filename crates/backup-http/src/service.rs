//! The state a router serves from: the engine, the authenticator, the
//! failed-login throttle, the download-link key and the runs it started.
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use backup_core::Engine;
use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::auth::{Authenticator, LoginThrottle};
use crate::links::LinkKey;

/// How many finished runs `GET /runs/{id}` remembers.
const RUNS_KEPT: usize = 200;

/// What a router serves: cheap to clone.
#[derive(Clone)]
pub struct Service {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) engine: Arc<Engine>,
    pub(crate) auth: Arc<dyn Authenticator>,
    pub(crate) throttle: LoginThrottle,
    pub(crate) links: LinkKey,
    pub(crate) runs: Runs,
}

impl Service {
    /// A service backing up and serving `engine`'s appliance, asking `auth`
    /// who may do what.
    pub fn new(engine: Arc<Engine>, auth: Arc<dyn Authenticator>) -> Service {
        let links = LinkKey::in_state_dir(&engine.config().appliance.state_dir);
        Service {
            inner: Arc::new(Inner {
                engine,
                auth,
                throttle: LoginThrottle::new(),
                links,
                runs: Runs::default(),
            }),
        }
    }

    /// The engine it serves.
    pub fn engine(&self) -> &Arc<Engine> {
        &self.inner.engine
    }

    /// Whether a backup started through this service is running now.
    pub fn backup_running(&self) -> bool {
        self.inner.runs.running()
    }
}

impl std::fmt::Debug for Service {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Service")
            .field("engine", &self.inner.engine)
            .finish_non_exhaustive()
    }
}

/// A run started by `GET /backup`, as `GET /runs/{id}` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct RunView {
    /// The run's id (the `X-Backup-Run` header).
    pub id: String,
    /// `running`, `success`, `partial` or `failed`.
    pub outcome: String,
    /// Who asked.
    pub actor: String,
    /// When it started.
    pub started: DateTime<Utc>,
    /// When it ended.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finished: Option<DateTime<Utc>>,
    /// The image (its name in the storage when it is stored too).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Size of the image in bytes.
    pub size: u64,
    /// Whether a copy is kept in the storage.
    pub stored: bool,
    /// Components that failed (a partial image).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub failed_components: Vec<String>,
    /// Why the run failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// The runs this service started, newest last, bounded.
#[derive(Default)]
pub(crate) struct Runs {
    runs: Mutex<VecDeque<RunView>>,
}

impl Runs {
    pub(crate) fn insert(&self, run: RunView) {
        let mut runs = self.runs.lock().unwrap_or_else(|p| p.into_inner());
        if runs.len() >= RUNS_KEPT {
            if let Some(i) = runs.iter().position(|r| r.outcome != "running") {
                runs.remove(i);
            }
        }
        runs.push_back(run);
    }

    pub(crate) fn update(&self, id: &str, change: impl FnOnce(&mut RunView)) {
        let mut runs = self.runs.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(r) = runs.iter_mut().find(|r| r.id == id) {
            change(r);
        }
    }

    pub(crate) fn get(&self, id: &str) -> Option<RunView> {
        let runs = self.runs.lock().unwrap_or_else(|p| p.into_inner());
        runs.iter().find(|r| r.id == id).cloned()
    }

    pub(crate) fn running(&self) -> bool {
        let runs = self.runs.lock().unwrap_or_else(|p| p.into_inner());
        runs.iter().any(|r| r.outcome == "running")
    }
}
