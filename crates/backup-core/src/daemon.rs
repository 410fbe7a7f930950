//! The scheduler: runs backups at the configured cron times until stopped.
use std::path::Path;
use std::time::Instant;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::context::{Context, Trigger};
use crate::guard::Operation;
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
    let drill_cfg = engine.config.drill.clone().unwrap_or_default();
    let drills = drill_cfg.schedule()?;
    let sched_cfg = match (engine.config.schedule.clone(), &drills) {
        (Some(s), _) => Some(s),
        (None, Some(_)) => None,
        (None, None) => {
            return Err(Error::Input(
                "no [schedule] and no [drill] cron in the configuration: there is nothing for the daemon to run".into(),
            ))
        }
    };
    let cluster = sched_cfg.as_ref().is_some_and(|s| s.cluster);
    let job = match (cluster, job) {
        (true, None) => {
            return Err(Error::Input(
                "[schedule] cluster = true, but this daemon cannot back up a cluster: run `backup daemon`"
                    .into(),
            ))
        }
        (true, job) => job,
        (false, _) => None,
    };
    let schedule = sched_cfg.as_ref().map(|s| s.parse()).transpose()?;
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
        let missed = match &schedule {
            Some(schedule) => schedule.between(prev.last_seen, started, 10_000),
            None => Vec::new(),
        };
        if let (Some(first), Some(last), Some(sched_cfg)) =
            (missed.first(), missed.last(), &sched_cfg)
        {
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
        let next_backup = schedule.as_ref().and_then(|s| s.next_after(now));
        let next_drill = drills.as_ref().and_then(|s| s.next_after(now));
        let Some(next) = next_backup.into_iter().chain(next_drill).min() else {
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
        let woke = Utc::now();
        if woke < next {
            continue; // a heartbeat wake-up
        }
        // A backup and a drill due together: the backup first, so the
        // drill proves the image just made.
        if let (Some(due), Some(sched_cfg)) = (next_backup.filter(|t| *t <= woke), &sched_cfg) {
            wait_for_drill(engine, &drill_cfg, &mut shutdown).await;
            if *shutdown.borrow() {
                break;
            }
            scheduled_backup(engine, sched_cfg, job, due).await;
            if *shutdown.borrow() {
                break;
            }
        }
        if let Some(due) = next_drill.filter(|t| *t <= woke) {
            scheduled_drill(engine, due).await;
            if *shutdown.borrow() {
                break;
            }
        }
    }
    info.last_seen = Utc::now();
    info.next_run = None;
    store(&path, &info);
    Ok(())
}

/// How long past a drill's time limit a scheduled backup still waits for
/// the drill to end.
const DRILL_WAIT_MARGIN: std::time::Duration = std::time::Duration::from_secs(60);

/// Waits while a restore drill holds the operation lock — at most the
/// drill time limit (`[drill] timeout`) plus a minute — so a scheduled
/// backup follows a drill instead of being skipped for it. Past that, the
/// backup goes ahead and is recorded as skipped if the drill still runs.
async fn wait_for_drill(
    engine: &Context<'_>,
    drill: &crate::drill::DrillConfig,
    shutdown: &mut watch::Receiver<bool>,
) {
    let bound = drill
        .time_limit()
        .unwrap_or(crate::drill::DEFAULT_DRILL_TIMEOUT)
        + DRILL_WAIT_MARGIN;
    let until = Instant::now() + bound;
    let mut told = false;
    loop {
        let holder = crate::ops::lock::probe(engine.state_dir()).ok().flatten();
        let Some(holder) = holder.filter(|h| h.operation == Operation::Drill.status_name()) else {
            return;
        };
        if !told {
            engine.progress.event(&Event::Step {
                message: format!(
                    "a restore drill (pid {}) is running; the scheduled backup waits for it (at most {})",
                    holder.pid,
                    crate::drill::show_duration(bound)
                ),
            });
            told = true;
        }
        if Instant::now() >= until {
            engine.warn(format!(
                "the restore drill (pid {}) still runs after {}; the scheduled backup no longer waits for it",
                holder.pid,
                crate::drill::show_duration(bound)
            ));
            return;
        }
        tokio::select! {
            _ = tokio::time::sleep(std::time::Duration::from_millis(500)) => {}
            _ = shutdown.changed() => return,
        }
    }
}

/// Runs the scheduled backup due at `due` (or the cluster `job`) and tells
/// the frontend how it ended.
async fn scheduled_backup(
    engine: &Context<'_>,
    sched_cfg: &crate::config::ScheduleConfig,
    job: Option<(&dyn ScheduledRun, &crate::Engine)>,
    due: DateTime<Utc>,
) {
    engine.progress.event(&Event::Step {
        message: format!(
            "scheduled backup due at {}",
            due.format("%Y-%m-%d %H:%M UTC")
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
}

/// Runs the scheduled drill due at `due`; the drill records itself
/// (status, audit log, hook), the frontend gets a line.
async fn scheduled_drill(engine: &Context<'_>, due: DateTime<Utc>) {
    engine.progress.event(&Event::Step {
        message: format!(
            "scheduled restore drill due at {}",
            due.format("%Y-%m-%d %H:%M UTC")
        ),
    });
    let drilled = crate::drill::run(
        &engine.with_trigger(Trigger::Scheduled),
        &crate::drill::DrillOptions::default(),
    )
    .await;
    let message = match drilled {
        Ok(r) if r.outcome == crate::image::Outcome::Success => format!(
            "scheduled restore drill of {}: success in {:.1} s",
            r.image.as_deref().unwrap_or("-"),
            r.duration_ms as f64 / 1000.0
        ),
        Ok(r) => format!(
            "scheduled restore drill of {}: failed ({})",
            r.image.as_deref().unwrap_or("-"),
            r.failures.join("; ")
        ),
        Err(e) => format!(
            "scheduled restore drill: {} ({e})",
            crate::error::outcome_of(&e)
        ),
    };
    engine.progress.event(&Event::Step { message });
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
