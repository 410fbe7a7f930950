//! The run guard through the library API: every run recorded, local
//! operations without the storage, no leftovers of killed runs, private files.
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::Result;
use backup_core::demo::{build_demo, DemoAppliance};
use backup_core::OperationLock;
use backup_core::{CreateOptions, Engine, Error, KdfParams, Passphrase};

const SECRET: &str = "runs test secret";

fn demo() -> Result<(tempfile::TempDir, DemoAppliance)> {
    let dir = tempfile::tempdir()?;
    let demo = build_demo(&dir.path().join("demo"), 19)?;
    backup_core::init_keys(
        &demo.config.appliance.state_dir,
        &Passphrase::new(SECRET.into())?,
        KdfParams::MINIMUM,
    )?;
    Ok((dir, demo))
}

fn state(demo: &DemoAppliance) -> PathBuf {
    demo.config.appliance.state_dir.clone()
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o7777
}

/// Every file below `dir`, recursively.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(e.path());
            } else {
                out.push(e.path());
            }
        }
    }
    out.sort();
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failure_at_the_storage_stage_is_in_the_status() -> Result<()> {
    let (_d, demo) = demo()?;
    let engine = Engine::builder(demo.config.clone()).build()?;
    engine.create(&CreateOptions::default()).await?;
    // The store becomes unusable between runs (a file where the directory was).
    std::fs::rename(demo.store(), demo.dir.join("store.moved"))?;
    std::fs::write(demo.store(), "not a directory")?;

    let err = engine
        .create(&CreateOptions::default())
        .await
        .expect_err("no storage to write to");
    let status = settled_status(&engine).await?;
    let failure = status.last_failure.expect("the failure is recorded");
    assert_eq!(failure.reason.as_deref(), Some(err.to_string().as_str()));
    assert_eq!(status.state, "not running");
    let last = status
        .last_backup
        .expect("the failed run is the last backup");
    assert_eq!(last.outcome, backup_core::Outcome::Failed);
    let audit = engine.audit_records(None)?;
    assert_eq!(audit.last().map(|r| r.outcome.as_str()), Some("failed"));
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn local_operations_work_while_the_storage_directory_is_missing() -> Result<()> {
    let (_d, demo) = demo()?;
    std::fs::remove_dir(demo.store())?;
    let engine = Engine::builder(demo.config.clone())
        .build()
        .expect("building the engine does not touch the storage");
    let status = engine.status()?;
    assert_eq!(status.state, "not running");
    assert!(status.last_failure.is_none());
    assert!(engine.audit_records(None)?.is_empty());

    let err = engine
        .create(&CreateOptions::default())
        .await
        .expect_err("the storage is missing");
    assert!(err.to_string().contains("mkdir -p"), "{err}");
    let failure = engine.status()?.last_failure.expect("recorded");
    assert!(
        failure.reason.as_deref().unwrap_or("").contains("mkdir -p"),
        "{failure:?}"
    );

    // Once it is back, the same engine uses it.
    std::fs::create_dir(demo.store())?;
    let report = engine.create(&CreateOptions::default()).await?;
    assert!(demo.store().join(&report.image).is_file());
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn hooks_do_not_run_for_a_selection_error() -> Result<()> {
    let (_d, mut demo) = demo()?;
    let marks = demo.dir.join("hook-marks");
    std::fs::create_dir(&marks)?;
    let touch = |name: &str| vec!["touch".to_string(), marks.join(name).display().to_string()];
    demo.config.hooks.before = touch("before");
    demo.config.hooks.on_failure = touch("on_failure");
    let engine = Engine::builder(demo.config.clone()).build()?;

    let mut opts = CreateOptions::default();
    opts.components = vec!["no-such-component".into()];
    let err = engine.create(&opts).await.expect_err("unknown component");
    assert!(err.is_input_error(), "{err}");
    assert!(
        std::fs::read_dir(&marks)?.next().is_none(),
        "no hook runs for a run that never started"
    );
    let failure = engine
        .status()?
        .last_failure
        .expect("the refusal is recorded");
    assert!(
        failure
            .reason
            .as_deref()
            .unwrap_or("")
            .contains("no-such-component"),
        "{failure:?}"
    );
    let audit = engine.audit_records(None)?;
    assert_eq!(audit.last().map(|r| r.outcome.as_str()), Some("refused"));

    // A run that starts and fails still runs both.
    std::fs::remove_dir_all(demo.store())?;
    std::fs::write(demo.store(), "not a directory")?;
    engine
        .create(&CreateOptions::default())
        .await
        .expect_err("storage unusable");
    assert!(marks.join("on_failure").exists());
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn the_next_run_removes_scratch_of_dead_runs_only() -> Result<()> {
    let (_d, demo) = demo()?;
    let tmp = state(&demo).join("tmp");
    // A run killed by `kill -9` left a snapshot behind (its pid is above any
    // pid_max, so never alive), and an older version left an unnamed one.
    let dead = tmp.join("run-999999999-0badc0de");
    let legacy = tmp.join("1234abcd");
    for d in [&dead, &legacy] {
        std::fs::create_dir_all(d)?;
        std::fs::write(d.join("maindb.snapshot.sqlite"), "plaintext rows")?;
    }
    // A live process's scratch (this test's `sleep` child stands for it).
    let mut live_child = std::process::Command::new("sleep").arg("60").spawn()?;
    let live = tmp.join(format!("run-{}-feedf00d", live_child.id()));
    std::fs::create_dir_all(&live)?;
    std::fs::write(live.join("dump"), "in use")?;

    let engine = Engine::builder(demo.config.clone()).build()?;
    // Another operation holds the lock: the backup is skipped and deletes nothing.
    let held = OperationLock::acquire(&state(&demo), "restore")?;
    let err = engine.create(&CreateOptions::default()).await.unwrap_err();
    assert!(matches!(err, Error::Busy(_)), "{err}");
    assert!(dead.exists() && legacy.exists() && live.exists());
    // The next backup holds the lock: no other run can be using scratch
    // space, so everything not its own goes.
    drop(held);
    let image = engine.create(&CreateOptions::default()).await?.image;
    assert!(!dead.exists() && !legacy.exists());
    assert!(!live.exists(), "no live run holds the lock, so it is stale");

    // A run that takes no lock removes only what a dead process left.
    std::fs::create_dir_all(&live)?;
    std::fs::create_dir_all(&dead)?;
    engine.verify(&image).await?;
    assert!(!dead.exists(), "a dead pid's scratch goes at any run");
    assert!(live.exists(), "a live pid's scratch stays without the lock");
    live_child.kill()?;
    live_child.wait()?;

    // What the backups left: nothing but the (private) scratch directory.
    assert_eq!(mode(&tmp), 0o700);
    let left: Vec<_> = files_under(&tmp)
        .into_iter()
        .filter(|p| !p.starts_with(&live))
        .collect();
    assert!(left.is_empty(), "{left:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn prune_removes_unfinished_uploads_older_than_a_day() -> Result<()> {
    let (_d, mut demo) = demo()?;
    demo.config.retention.keep_last = Some(5);
    let engine = Engine::builder(demo.config.clone()).build()?;
    let report = engine.create(&CreateOptions::default()).await?;
    let old = demo
        .store()
        .join(format!(".{}.partial-00000000000000aa", report.image));
    let young = demo
        .store()
        .join(format!(".{}.partial-00000000000000bb", report.image));
    std::fs::create_dir_all(demo.store().join("site"))?;
    let old_nested = demo.store().join("site/.x.bkp.partial-00000000000000cc");
    for p in [&old, &young, &old_nested] {
        std::fs::write(p, "half an image")?;
    }
    let two_days_ago =
        filetime::FileTime::from_unix_time(chrono::Utc::now().timestamp() - 2 * 86400, 0);
    filetime::set_file_mtime(&old, two_days_ago)?;
    filetime::set_file_mtime(&old_nested, two_days_ago)?;

    engine.prune(true).await?;
    assert!(old.exists(), "a dry run deletes nothing");
    engine.prune(false).await?;
    assert!(!old.exists() && !old_nested.exists());
    assert!(young.exists(), "an upload younger than a day may still run");
    assert!(demo.store().join(&report.image).exists());
    let audit = engine.audit_records(None)?;
    let removed: Vec<_> = audit
        .iter()
        .filter(|r| r.operation == "prune.partial")
        .map(|r| r.target.clone())
        .collect();
    assert_eq!(removed.len(), 2, "{removed:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn images_and_outputs_are_private_or_group_readable() -> Result<()> {
    let (_d, mut demo) = demo()?;
    let engine = Engine::builder(demo.config.clone()).build()?;
    let report = engine.create(&CreateOptions::default()).await?;
    let image = demo.store().join(&report.image);
    assert_eq!(mode(&image), 0o600, "image");
    assert_eq!(
        mode(&demo.store().join(format!("{}.manifest", report.image))),
        0o600
    );

    let mut opts = CreateOptions::default();
    let out = demo.dir.join("out.bkp");
    opts.destination = backup_core::Destination::File(out.clone());
    engine.create(&opts).await?;
    assert_eq!(mode(&out), 0o600, "create -o");

    let payload = demo.dir.join("payload.tar.gz");
    engine.decrypt(&report.image, &payload).await?;
    let sealed = demo.dir.join("sealed.bkp");
    engine.encrypt(&payload, &sealed).await?;
    assert_eq!(mode(&sealed), 0o600, "encrypt -o");

    // With a group (`[storage] group`): 0640 and that group, by name or by id.
    let text = std::fs::read_to_string(&demo.config_path)?.replace(
        "prefix = \"demo-\"",
        "prefix = \"demo-\"\ngroup = \"backup\"",
    );
    let parsed = backup_core::Config::parse(&text, &demo.config_path)?;
    assert_eq!(parsed.storage.group.as_deref(), Some("backup"));
    let (group, gid) = std::fs::read_to_string("/etc/group")?
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            Some((f.first()?.to_string(), f.get(2)?.parse::<u32>().ok()?))
        })
        .find(|(_, gid)| *gid != 0)
        .expect("a group other than root in /etc/group");
    for spec in [group.clone(), (gid + 1).to_string()] {
        demo.config.storage.group = Some(spec.clone());
        let engine = Engine::builder(demo.config.clone()).build()?;
        let want = spec.parse::<u32>().unwrap_or(gid);
        let report = engine.create(&CreateOptions::default()).await?;
        let image = demo.store().join(&report.image);
        assert_eq!(mode(&image), 0o640, "{spec}");
        assert_eq!(std::fs::metadata(&image)?.gid(), want, "{spec}");
        let out = demo.dir.join(format!("out-{spec}.bkp"));
        let mut opts = CreateOptions::default();
        opts.destination = backup_core::Destination::File(out.clone());
        engine.create(&opts).await?;
        assert_eq!((mode(&out), std::fs::metadata(&out)?.gid()), (0o640, want));
    }
    demo.config.storage.group = Some("no-such-group-here".into());
    let err = Engine::builder(demo.config.clone()).build().unwrap_err();
    assert!(err.to_string().contains("no-such-group-here"), "{err}");
    Ok(())
}

/// Keeps every event.
#[derive(Default)]
struct Events(std::sync::Mutex<Vec<backup_core::Event>>);

impl backup_core::Progress for Events {
    fn event(&self, event: &backup_core::Event) {
        self.0.lock().unwrap().push(event.clone());
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_daemon_starts_without_the_storage_and_reports_each_failed_run() -> Result<()> {
    let (_d, demo) = demo()?;
    let text =
        std::fs::read_to_string(&demo.config_path)? + "\n[schedule]\ncron = [\"* * * * *\"]\n";
    let config = backup_core::Config::parse(&text, &demo.config_path)?;
    std::fs::remove_dir(demo.store())?;
    let events = std::sync::Arc::new(Events::default());
    let engine = Engine::builder(config).progress(events.clone()).build()?;
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let watch = async {
        // A run is due within a minute; give it two.
        for _ in 0..1200 {
            let finished = events.0.lock().unwrap().iter().find_map(|e| match e {
                backup_core::Event::RunFinished {
                    outcome, reason, ..
                } => Some((outcome.clone(), reason.clone())),
                _ => None,
            });
            if let Some(f) = finished {
                let _ = stop.send(true);
                return Some(f);
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        let _ = stop.send(true);
        None
    };
    let (ran, finished) = tokio::join!(engine.run_daemon(stopped), watch);
    ran?;
    let (outcome, reason) = finished.expect("a scheduled run within two minutes");
    // The storage probe before the run refuses it.
    assert_eq!(outcome, "refused");
    assert!(reason.unwrap_or_default().contains("mkdir -p"));
    let failure = engine.status()?.last_failure.expect("recorded");
    assert_eq!(failure.operation, "backup");
    assert!(failure.reason.unwrap_or_default().contains("mkdir -p"));
    Ok(())
}

impl Events {
    fn steps(&self) -> Vec<String> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .filter_map(|e| match e {
                backup_core::Event::Step { message } => Some(message.clone()),
                _ => None,
            })
            .collect()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn one_engine_serves_callers_each_with_its_own_actor_progress_and_trigger() -> Result<()> {
    use backup_core::{Call, Trigger};
    use std::sync::Arc;
    let (_d, demo) = demo()?;
    let defaults = Arc::new(Events::default());
    let engine = Engine::builder(demo.config.clone())
        .actor("the engine's default")
        .progress(defaults.clone())
        .build()?;
    let alice = Arc::new(Events::default());
    let bob = Arc::new(Events::default());
    let report = engine
        .with_call(Call::new().actor("alice").progress(alice.clone()))
        .create(&CreateOptions::default())
        .await?;

    // Two callers at once on the same engine, each heard and named apart.
    let bobs = engine.with_call(
        Call::new()
            .actor("bob")
            .progress(bob.clone())
            .trigger(Trigger::Http),
    );
    let carols = engine.with_call(Call::new().actor("carol"));
    let (b, c) = tokio::join!(bobs.verify(&report.image), carols.verify(&report.image));
    b?;
    c?;
    engine.verify(&report.image).await?;

    let audit = engine.audit_records(None)?;
    let who: Vec<(&str, &str)> = audit
        .iter()
        .map(|r| (r.operation.as_str(), r.actor.as_str()))
        .collect();
    assert_eq!(who[0], ("create", "alice"), "{who:?}");
    let mut verifiers: Vec<&str> = who[1..3].iter().map(|w| w.1).collect();
    verifiers.sort();
    assert_eq!(verifiers, ["bob", "carol"], "{who:?}");
    assert_eq!(who[3], ("verify", "the engine's default"), "{who:?}");

    // Progress goes to the caller's sink; a call that sets none uses the default.
    assert!(!alice.0.lock().unwrap().is_empty());
    let verifying = |steps: Vec<String>| steps.iter().any(|s| s.starts_with("verifying "));
    assert!(verifying(bob.steps()), "{:?}", bob.steps());
    assert!(!verifying(alice.steps()), "{:?}", alice.steps());
    assert!(verifying(defaults.steps()), "{:?}", defaults.steps());
    let backing_up = |events: &Events| {
        events
            .0
            .lock()
            .unwrap()
            .iter()
            .any(|e| matches!(e, backup_core::Event::ComponentStarted { .. }))
    };
    assert!(backing_up(&alice));
    assert!(
        !backing_up(&defaults),
        "alice's backup went to her sink only"
    );

    // A call started by the schedule is a scheduled backup, skipped as one.
    let held = OperationLock::acquire(&state(&demo), "restore")?;
    let err = engine
        .with_call(Call::new().trigger(Trigger::Scheduled))
        .create(&CreateOptions::default())
        .await
        .expect_err("the lock is held");
    assert!(matches!(err, Error::Busy(_)), "{err}");
    drop(held);
    let skipped = engine.status()?.last_skipped.expect("the skip is recorded");
    assert_eq!(skipped.operation, "scheduled backup");
    Ok(())
}

/// The status once no process holds the lock. The tests share one process,
/// and a child another test spawns (a hook, a dump command, GNU tar) holds a
/// copy of every descriptor open at the moment it was forked until it execs,
/// the lock's included: the kernel keeps the lock that long after the run
/// dropped it, and `status` rightly says "in progress" meanwhile. A lock that
/// stays held fails the assertion after the wait.
async fn settled_status(engine: &Engine) -> Result<backup_core::StatusView> {
    for _ in 0..100 {
        let status = engine.status()?;
        if status.state != "in progress" {
            return Ok(status);
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    Ok(engine.status()?)
}
