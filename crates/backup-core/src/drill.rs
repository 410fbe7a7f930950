//! Restore drills: proof, on demand or on a schedule, that an image really
//! restores. A drill restores an image through the real restore path (every
//! pre-check, the archive-safety and manifest checks, SQLite's integrity
//! check) into a scratch directory, runs the operator's `drill_check`
//! commands against the restored files, removes the scratch directory and
//! records the result (status, audit log, `on_failure` hook when it fails).
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;

pub use crate::config::{parse_duration, DrillConfig, DEFAULT_DRILL_TIMEOUT};
use crate::context::Context;
use crate::guard::{Operation, RunGuard};
use crate::image::Outcome;
use crate::images::ImageRef;
use crate::ops::status::RunRecord;
pub use crate::ops::status::{DrillCheck, DrillReport};
use crate::progress::Event;
use crate::restore::RestoreOptions;
use crate::{Error, Result};

/// How long a drill past its time limit waits for the restore it stopped
/// to let go of the scratch directory before removing it anyway.
const STOP_GRACE: Duration = Duration::from_secs(10);

/// How much of a failing check's output a failure keeps.
const OUTPUT_TAIL: usize = 2000;

/// What a drill should do.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct DrillOptions {
    /// The image to drill (default: the newest successful image of this node
    /// in the storage).
    pub image: Option<ImageRef>,
    /// The directory to restore under (default `[drill] scratch`, else the
    /// state directory's scratch space). The drill works in a new directory
    /// inside it and removes that directory, never `scratch` itself.
    pub scratch: Option<PathBuf>,
    /// The time limit (default `[drill] timeout`, else 30 minutes).
    pub timeout: Option<Duration>,
}

/// Runs a drill under the operation lock: a backup or restore running makes
/// it fail with [`Error::Busy`] (recorded as skipped). Everything that goes
/// wrong once it runs — no image to drill, an image that does not restore, a
/// failing check, the time limit — is a failed drill: recorded in the status
/// (last drill, last failure) and the audit log, the `on_failure` hook run
/// with `BACKUP_HOOK=drill`, and returned as a report with outcome `failed`.
pub(crate) async fn run(engine: &Context<'_>, opts: &DrillOptions) -> Result<DrillReport> {
    let config = engine.config.drill.clone().unwrap_or_default();
    let limit = match opts.timeout {
        Some(t) if t.is_zero() => {
            return Err(Error::Input(
                "the drill's time limit must be at least 1 second".into(),
            ))
        }
        Some(t) => t,
        None => config.time_limit()?,
    };
    let base = opts
        .scratch
        .clone()
        .or(config.scratch.clone())
        .unwrap_or_else(|| engine.state_dir().join(crate::util::SCRATCH_DIR));
    check_scratch(engine, &base)?;
    let asked = match &opts.image {
        Some(image) => image.shown(),
        None => format!("newest image of {}", engine.config.appliance.node),
    };
    let mut guard = RunGuard::start(engine, Operation::Drill, &asked)?;
    let started_at = Utc::now();
    let started = Instant::now();
    let deadline = started + limit;
    guard.show_running(
        opts.image.as_ref().map(|i| i.shown()).as_deref(),
        started_at,
    )?;
    let work = base.join(format!(
        "run-{}-drill-{}",
        std::process::id(),
        crate::util::random_tag()
    ));
    let mut report = DrillReport {
        outcome: Outcome::Failed,
        image: None,
        started: started_at,
        finished: started_at,
        duration_ms: 0,
        bytes: 0,
        restored: Vec::new(),
        checks: Vec::new(),
        failed_components: Vec::new(),
        failures: Vec::new(),
        timeout_secs: limit.as_secs(),
        scratch: work.clone(),
        scratch_removed: false,
    };
    let drilled = drill(
        engine,
        opts,
        &base,
        &work,
        deadline,
        limit,
        &mut report,
        &mut guard,
    )
    .await;
    if let Err(e) = drilled {
        report.failures.push(e);
    }
    report.duration_ms = started.elapsed().as_millis() as u64;
    if work.exists() {
        if let Err(e) = tokio::task::spawn_blocking({
            let work = work.clone();
            move || crate::util::remove_any(&work)
        })
        .await
        .unwrap_or_else(|e| Err(std::io::Error::other(e.to_string())))
        {
            report.failures.push(format!(
                "the scratch directory {} could not be removed ({e}); remove it by hand",
                work.display()
            ));
        }
    }
    report.scratch_removed = !work.exists();
    report.finished = Utc::now();
    report.outcome = if report.failures.is_empty() {
        Outcome::Success
    } else {
        Outcome::Failed
    };
    record(&mut guard, &report);
    Ok(report)
}

/// Records how the drill ended: the status (last drill; a failure also as
/// the last failure), the audit log, and the `on_failure` hook of a failure.
fn record(guard: &mut RunGuard<'_>, report: &DrillReport) {
    let image = report.image.clone().unwrap_or_else(|| "-".into());
    let reason = (!report.failures.is_empty()).then(|| report.failures.join("; "));
    guard.record_drill(report.clone());
    let failure = reason.clone().map(|reason| RunRecord {
        time: report.finished,
        operation: Operation::Drill.status_name().into(),
        outcome: Outcome::Failed,
        image: report.image.clone(),
        size: report.bytes,
        reason: Some(reason),
    });
    let _ = guard.record_end(failure, false);
    guard.audit(&image, report.outcome.as_str(), report.bytes, reason);
    if report.outcome != Outcome::Success {
        guard.on_drill_failure_hook(&image, report.failed_components.clone());
    }
}

/// The drill itself: chooses the image, restores it under `work`, checks
/// what was restored. Failures that end it early are returned; those of
/// single checks are added to the report as it goes on.
#[allow(clippy::too_many_arguments)]
async fn drill(
    engine: &Context<'_>,
    opts: &DrillOptions,
    base: &Path,
    work: &Path,
    deadline: Instant,
    limit: Duration,
    report: &mut DrillReport,
    guard: &mut RunGuard<'_>,
) -> std::result::Result<(), String> {
    let image = match &opts.image {
        Some(image) => image.clone(),
        None => newest_image(engine).await.map_err(|e| e.to_string())?,
    };
    let shown = image.shown();
    report.image = Some(shown.clone());
    let _ = guard.show_running(Some(&shown), report.started);
    engine.progress.event(&Event::Step {
        message: format!(
            "drill: restoring {shown} under {} (time limit {})",
            work.display(),
            show_duration(limit)
        ),
    });
    make_work_dir(engine, base, work).map_err(|e| e.to_string())?;
    let restored_root = work.join("restore");
    let ropts = RestoreOptions {
        target: Some(restored_root.clone()),
        include_audits: true,
        drill_scratch: Some(work.to_path_buf()),
        ..Default::default()
    };
    let stop = Arc::new(AtomicBool::new(false));
    let ctx = engine.with_stop(stop.clone());
    let restore = crate::restore::restore_image_info(&ctx, &image, &ropts);
    tokio::pin!(restore);
    let restored = tokio::select! {
        r = &mut restore => r,
        _ = tokio::time::sleep_until(deadline.into()) => {
            stop.store(true, Ordering::SeqCst);
            // Let the restore notice and clean up after itself before the
            // scratch directory is removed under it.
            let _ = tokio::time::timeout(STOP_GRACE, &mut restore).await;
            return Err(format!(
                "the drill's time limit ({}) passed while restoring {shown}; the restore was stopped — raise [drill] timeout (or --timeout) if the image is that large",
                show_duration(limit)
            ));
        }
    };
    let (restored, info) = restored.map_err(|e| format!("{shown} did not restore: {e}"))?;
    report.restored = restored.restored.clone();
    report.bytes = tree_bytes(&restored_root);
    // The checks, against the restored files.
    for name in &restored.restored {
        let Some(planned) = info.components.iter().find(|c| &c.name == name) else {
            continue;
        };
        let path = restored_path(&restored_root, planned);
        if planned.kind == "sqlite" {
            let db = path.clone();
            let checked = tokio::task::spawn_blocking(move || integrity_check(&db))
                .await
                .unwrap_or_else(|e| Err(e.to_string()));
            push_check(report, name, "integrity_check", checked);
        }
        let argv = engine
            .components
            .iter()
            .find(|r| r.component.name() == name)
            .map(|r| r.options.drill_check.clone())
            .unwrap_or_default();
        if argv.is_empty() {
            continue;
        }
        engine.progress.event(&Event::Step {
            message: format!("drill: running the drill_check of {name}"),
        });
        let checked = run_check(
            &argv,
            &CheckEnv {
                component: name,
                path: &path,
                root: &restored_root,
                output: &work.join(format!("check-{name}.out")),
                node: &engine.config.appliance.node,
            },
            deadline,
        )
        .await;
        if let Err(CheckError::TimedOut) = checked {
            return Err(format!(
                "the drill's time limit ({}) passed while the drill_check of component {name} ran; it was stopped — raise [drill] timeout (or --timeout), or make the check faster",
                show_duration(limit)
            ));
        }
        push_check(
            report,
            name,
            "drill_check",
            checked.map_err(|e| match e {
                CheckError::Failed(why) => why,
                CheckError::TimedOut => unreachable!("handled above"),
            }),
        );
    }
    Ok(())
}

/// Adds a check's result to the report (a failure also as a failure of its
/// component).
fn push_check(
    report: &mut DrillReport,
    component: &str,
    check: &str,
    result: std::result::Result<(), String>,
) {
    if let Err(why) = &result {
        report
            .failures
            .push(format!("component {component}: {check} failed: {why}"));
        if !report.failed_components.iter().any(|c| c == component) {
            report.failed_components.push(component.to_string());
        }
    }
    report.checks.push(DrillCheck {
        component: component.to_string(),
        check: check.to_string(),
        passed: result.is_ok(),
        reason: result.err(),
    });
}

/// The newest image of this node in the storage whose manifest says
/// `success`.
async fn newest_image(engine: &Context<'_>) -> Result<ImageRef> {
    let node = &engine.config.appliance.node;
    let images = crate::images::list(engine).await?;
    images
        .into_iter()
        .rev()
        .find(|i| {
            i.parsed.as_ref().is_some_and(|p| &p.node == node)
                && i.sidecar
                    .as_ref()
                    .is_some_and(|s| s.manifest.outcome == Outcome::Success)
        })
        .map(|i| ImageRef::Stored(i.name))
        .ok_or_else(|| {
            Error::NotFound(format!(
                "no successful image of node {node} in the storage to drill; take a backup first (`backup create`)"
            ))
        })
}

/// Refuses a scratch directory inside a component's live files or the
/// engine's own places (other than its scratch space): a drill writes
/// nowhere near what it proves can be restored.
fn check_scratch(engine: &Context<'_>, base: &Path) -> Result<()> {
    if !base.is_absolute() {
        return Err(Error::Input(format!(
            "the drill's scratch directory {} must be an absolute path",
            base.display()
        )));
    }
    if base.starts_with(engine.state_dir().join(crate::util::SCRATCH_DIR)) {
        return Ok(());
    }
    for r in engine.components {
        for root in r.component.roots() {
            if base.starts_with(&root) {
                return Err(Error::Input(format!(
                    "the drill's scratch directory {} is inside {}, a root of component {}; a drill never writes among the live files — choose a directory outside them",
                    base.display(),
                    root.display(),
                    r.component.name()
                )));
            }
        }
    }
    if let Some(place) = crate::own_paths::OwnPaths::of(engine.config).holding(base) {
        return Err(Error::Input(format!(
            "the drill's scratch directory {} is inside {}, {}; leave it out to use the scratch space, or choose a directory outside it",
            base.display(),
            place.path.display(),
            place.what
        )));
    }
    Ok(())
}

/// Makes the drill's own directory `work` inside `base` (private; `base`
/// is made too when it is the state directory's scratch space).
fn make_work_dir(engine: &Context<'_>, base: &Path, work: &Path) -> Result<()> {
    if base == engine.state_dir().join(crate::util::SCRATCH_DIR) {
        crate::util::create_private_dir(base)
            .map_err(|e| Error::io(format!("creating {}", base.display()), e))?;
    } else if !base.is_dir() {
        return Err(Error::Input(format!(
            "the drill's scratch directory {} does not exist; create it or choose another",
            base.display()
        )));
    }
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(work)
        .map_err(|e| Error::io(format!("creating {}", work.display()), e))
}

/// Where a component's restored files are under `root` (a restore with
/// `--target root`): a SQLite database's file, a files component's root
/// (`root` itself for several roots), a command component's dump file.
fn restored_path(root: &Path, planned: &crate::image::PlannedComponent) -> PathBuf {
    match (planned.kind.as_str(), planned.roots.as_slice()) {
        ("command", _) => root.join(format!("{}.dump", planned.name)),
        (_, [one]) => {
            let one = Path::new(one);
            root.join(one.strip_prefix("/").unwrap_or(one))
        }
        _ => root.to_path_buf(),
    }
}

/// Bytes of the regular files under `root`.
fn tree_bytes(root: &Path) -> u64 {
    walkdir::WalkDir::new(root)
        .follow_links(false)
        .into_iter()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_type().is_file())
        .filter_map(|e| e.metadata().ok())
        .map(|m| m.len())
        .sum()
}

/// SQLite's own check of the restored database.
fn integrity_check(path: &Path) -> std::result::Result<(), String> {
    let db = rusqlite::Connection::open_with_flags(
        path,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    match crate::component::integrity_problem(&db)
        .map_err(|e| format!("{}: {e}", path.display()))?
    {
        None => Ok(()),
        Some(verdict) => Err(format!("{}: {verdict}", path.display())),
    }
}

/// What a `drill_check` command is told.
struct CheckEnv<'a> {
    component: &'a str,
    /// The component's restored path.
    path: &'a Path,
    /// The root of the restored tree (the command's working directory).
    root: &'a Path,
    /// Where its output goes.
    output: &'a Path,
    node: &'a str,
}

enum CheckError {
    Failed(String),
    TimedOut,
}

/// Runs a `drill_check` argv — no shell: `{path}` in an argument is
/// replaced by the restored path, which is also in `BACKUP_DRILL_PATH` —
/// in the restored tree, until it ends or `deadline` passes (then its
/// process group is killed).
async fn run_check(
    argv: &[String],
    env: &CheckEnv<'_>,
    deadline: Instant,
) -> std::result::Result<(), CheckError> {
    use std::os::unix::process::CommandExt;
    let failed = |why: String| CheckError::Failed(why);
    let path = env.path.to_str().ok_or_else(|| {
        failed(format!(
            "the restored path {} is not UTF-8, so it cannot be put into the command",
            env.path.display()
        ))
    })?;
    let args: Vec<String> = argv.iter().map(|a| a.replace("{path}", path)).collect();
    let Some((program, rest)) = args.split_first() else {
        return Ok(());
    };
    let out = std::fs::File::create(env.output)
        .map_err(|e| failed(format!("cannot create {}: {e}", env.output.display())))?;
    let err = out
        .try_clone()
        .map_err(|e| failed(format!("cannot create {}: {e}", env.output.display())))?;
    let mut cmd = std::process::Command::new(program);
    cmd.args(rest)
        .current_dir(env.root)
        .env("BACKUP_HOOK", "drill_check")
        .env("BACKUP_DRILL_COMPONENT", env.component)
        .env("BACKUP_DRILL_PATH", env.path)
        .env("BACKUP_DRILL_ROOT", env.root)
        .env("BACKUP_NODE", env.node)
        .stdin(std::process::Stdio::null())
        .stdout(out)
        .stderr(err)
        .process_group(0);
    crate::util::without_secrets(&mut cmd);
    let shown = argv.join(" ");
    let mut child = cmd
        .spawn()
        .map_err(|e| failed(format!("cannot run `{shown}`: {e}")))?;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) => {}
            Err(e) => return Err(failed(format!("waiting for `{shown}`: {e}"))),
        }
        if Instant::now() >= deadline {
            kill_group(child.id());
            let _ = child.kill();
            let _ = child.wait();
            return Err(CheckError::TimedOut);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    if status.success() {
        return Ok(());
    }
    let text = std::fs::read(env.output).unwrap_or_default();
    let text = String::from_utf8_lossy(&text);
    let text = text.trim();
    let mut cut = text.len().saturating_sub(OUTPUT_TAIL);
    while !text.is_char_boundary(cut) {
        cut += 1;
    }
    let tail = &text[cut..];
    Err(failed(format!(
        "`{shown}` exited with {status}{}",
        if tail.is_empty() {
            String::new()
        } else {
            format!(": {tail}")
        }
    )))
}

/// Kills the process group a check leads (what it started too: a shell's
/// children).
#[allow(unsafe_code)]
fn kill_group(pid: u32) {
    if let Ok(pid) = libc::pid_t::try_from(pid) {
        // SAFETY: kill(2) with a negative pid signals that process group; it
        // touches no memory of ours.
        unsafe {
            libc::kill(-pid, libc::SIGKILL);
        }
    }
}

/// A duration as the configuration writes it.
pub(crate) fn show_duration(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        s if s % 3600 == 0 && s > 0 => format!("{}h", s / 3600),
        s if s % 60 == 0 && s > 0 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_as_the_configuration_writes_them() {
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("30m"), Ok(Duration::from_secs(1800)));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
        assert_eq!(parse_duration("1d"), Ok(Duration::from_secs(86_400)));
        assert_eq!(parse_duration("45"), Ok(Duration::from_secs(45)));
        assert!(parse_duration("0m").is_err());
        assert!(parse_duration("half an hour").is_err());
        assert!(parse_duration("10w").is_err());
        assert_eq!(show_duration(Duration::from_secs(1800)), "30m");
        assert_eq!(show_duration(Duration::from_secs(90)), "90s");
    }

    #[test]
    fn a_drill_section_is_checked_with_the_configuration() {
        let text = |drill: &str| {
            format!(
                "[appliance]\nproduct = \"p\"\nversion = \"1\"\nnode = \"n\"\nstate_dir = \"/tmp/s\"\n\n[drill]\n{drill}\n"
            )
        };
        let parse = |drill: &str| crate::Config::parse(&text(drill), Path::new("t.toml"));
        let config = parse("cron = [\"0 3 * * 0\"]\n").unwrap();
        let drill = config.drill.unwrap();
        assert_eq!(drill.time_limit().unwrap(), DEFAULT_DRILL_TIMEOUT);
        assert!(drill.schedule().unwrap().is_some());
        assert_eq!(
            parse("timeout = \"5m\"")
                .unwrap()
                .drill
                .unwrap()
                .time_limit()
                .unwrap(),
            Duration::from_secs(300)
        );
        for bad in [
            "cron = [\"61 * * * *\"]",
            "timeout = \"soon\"",
            "timeout = \"5m\"\ntimeout_secs = 300",
            "scratch = \"relative\"",
            "timezone = \"Mars/Olympus\"\ncron = [\"0 3 * * *\"]",
        ] {
            assert!(parse(bad).is_err(), "{bad} must be refused");
        }
    }
}
