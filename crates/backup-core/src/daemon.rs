//! The scheduler: runs backups at the configured cron times until stopped.
use std::path::Path;
use std::time::Instant;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::context::{Context, Trigger};
use crate::ops::status::RunRecord;
use crate::plan::CreateOptions;
use crate::progress::Event;
use crate::{Error, Result};

/// File the daemon keeps its heartbeat in (state directory).
pub const DAEMON_FILE: &str = "daemon.json";

/// The daemon's heartbeat.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DaemonInfo {
    /// Its process.
    pub pid: u32,
    /// When it started.
    pub started: DateTime<Utc>,
    /// Last time it was known alive (updated every minute and after each run).
    pub last_seen: DateTime<Utc>,
    /// The next run it is waiting for.
    pub next_run: Option<DateTime<Utc>>,
}

/// A scheduled run carried out outside the engine, instead of this node's
/// backup: the cluster backup of a coordinator whose `[schedule]` says
/// `cluster = true` (backup-cluster provides it). It records its own run
/// (status, audit log) and returns how it ended.
#[async_trait::async_trait]
pub trait ScheduledRun: Send + Sync {
    /// Runs once, as scheduled.
    async fn run(&self, engine: &crate::Engine) -> Result<RunRecord>;
}

impl DaemonInfo {
    /// Reads the heartbeat of a state directory.
    pub fn load(state_dir: &Path) -> Option<DaemonInfo> {
        serde_json::from_slice(&std::fs::read(state_dir.join(DAEMON_FILE)).ok()?).ok()
    }

    /// Whether its process still exists.
    pub fn is_alive(&self) -> bool {
        Path::new(&format!("/proc/{}", self.pid)).exists()
    }
}

fn store(path: &Path, info: &DaemonInfo) {
    let data = serde_json::to_vec_pretty(info).expect("daemon info serialises");
    let _ = crate::util::write_atomic(path, &data, 0o600);
}

/// Runs scheduled backups until `shutdown` turns true. A stop request
/// between runs ends at once; during a run, the running backup finishes
/// first (it is never left half-published). Runs missed while no daemon
/// was running are reported (warning, audit log), not replayed.
pub(crate) async fn run(
    engine: &Context<'_>,
    mut shutdown: watch::Receiver<bool>,
    job: Option<(&dyn ScheduledRun, &crate::Engine)>,
) -> Result<()> {
    let sched_cfg = engine.config.schedule.clone().ok_or_else(|| {
        Error::Input(
            "no [schedule] in the configuration: there is nothing for the daemon to run".into(),
        )
    })?;
    let job = match (sched_cfg.cluster, job) {
        (true, None) => {
            return Err(Error::Input(
                "[schedule] cluster = true, but this daemon cannot back up a cluster: run `backup daemon`"
                    .into(),
            ))
        }
        (true, job) => job,
        (false, _) => None,
    };
    let schedule = sched_cfg.parse()?;
    let state = engine.config.appliance.state_dir.clone();
    crate::util::create_private_dir(&state)
        .map_err(|e| Error::io(format!("creating {}", state.display()), e))?;
    let path = state.join(DAEMON_FILE);
    let started = Utc::now();
    if let Some(prev) = DaemonInfo::load(&state) {
        if prev.is_alive() && prev.pid != std::process::id() {
            return Err(Error::Busy(format!(
                "a backup daemon (pid {}) is already running since {}",
                prev.pid, prev.started
            )));
        }
        let missed = schedule.between(prev.last_seen, started, 10_000);
        if let (Some(first), Some(last)) = (missed.first(), missed.last()) {
            let msg = format!(
                "{} scheduled backup(s) between {} and {} were missed while the daemon was not running; they are not replayed",
                missed.len(),
                first.format("%Y-%m-%d %H:%M UTC"),
                last.format("%Y-%m-%d %H:%M UTC")
            );
            engine.progress.event(&Event::Warning {
                component: None,
                message: msg.clone(),
            });
            engine.audit(
                "schedule.missed",
                &sched_cfg.cron.join(", "),
                "missed",
                0,
                Instant::now(),
                Some(msg),
            );
        }
    }
    let mut info = DaemonInfo {
        pid: std::process::id(),
        started,
        last_seen: started,
        next_run: None,
    };
    loop {
        let now = Utc::now();
        let Some(next) = schedule.next_after(now) else {
            return Err(Error::Input(
                "the schedule has no run in the next five years".into(),
            ));
        };
        info.last_seen = now;
        info.next_run = Some(next);
        store(&path, &info);
        let wait = (next - now)
            .to_std()
            .unwrap_or_default()
            .min(std::time::Duration::from_secs(60));
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.changed() => break,
        }
        if *shutdown.borrow() {
            break;
        }
        if Utc::now() < next {
            continue; // a heartbeat wake-up
        }
        engine.progress.event(&Event::Step {
            message: format!(
                "scheduled backup due at {}",
                next.format("%Y-%m-%d %H:%M UTC")
            ),
        });
        let opts = CreateOptions {
            include_audits: sched_cfg.include_audits,
            ..Default::default()
        };
        // Outcomes (success, partial, skipped, failed) are recorded by
        // `create` in the status and the audit log; the frontend gets one
        // event per run.
        let finished = if let Some((job, outer)) = job {
            match job.run(outer).await {
                Ok(r) => Event::RunFinished {
                    time: Utc::now(),
                    image: r.image,
                    outcome: r.outcome.as_str().to_string(),
                    reason: r.reason,
                },
                Err(e) => Event::RunFinished {
                    time: Utc::now(),
                    image: None,
                    outcome: crate::error::outcome_of(&e).to_string(),
                    reason: Some(e.to_string()),
                },
            }
        } else {
            match crate::backup::create(&engine.with_trigger(Trigger::Scheduled), &opts).await {
                Ok(r) => Event::RunFinished {
                    time: Utc::now(),
                    reason: crate::backup::failed_components(&r),
                    image: Some(r.image),
                    outcome: r.outcome.as_str().to_string(),
                },
                Err(e) => Event::RunFinished {
                    time: Utc::now(),
                    image: None,
                    outcome: crate::error::outcome_of(&e).to_string(),
                    reason: Some(e.to_string()),
                },
            }
        };
        engine.progress.event(&finished);
        if *shutdown.borrow() {
            break;
        }
    }
    info.last_seen = Utc::now();
    info.next_run = None;
    store(&path, &info);
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_cluster_schedule_without_a_cluster_job_is_refused_before_any_run() {
        let dir = tempfile::tempdir().unwrap();
        let text = format!(
            "[appliance]\nproduct = \"p\"\nversion = \"1\"\nnode = \"n\"\nstate_dir = {:?}\n\n\
             [storage]\nurl = \"file://{}\"\n\n\
             [schedule]\ncron = [\"* * * * *\"]\ncluster = true\n",
            dir.path().join("state").display().to_string(),
            dir.path().display()
        );
        let config = crate::Config::parse(&text, std::path::Path::new("test.toml")).unwrap();
        let engine = crate::Engine::builder(config).build().unwrap();
        let (_tx, rx) = tokio::sync::watch::channel(false);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let err = runtime.block_on(engine.run_daemon(rx)).unwrap_err();
        assert_eq!(err.kind(), crate::ErrorKind::Input, "{err}");
        assert!(err.to_string().contains("cluster = true"), "{err}");
    }
}
