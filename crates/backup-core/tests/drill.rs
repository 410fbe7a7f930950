//! Restore drills through the library API: `Engine::drill` restores into its
//! own scratch directory (the one place in the state directory a restore may
//! write to), records the result, and runs alone under the operation lock.
use anyhow::Result;
use backup_core::demo::build_demo;
use backup_core::{
    CreateOptions, DrillOptions, Engine, ErrorKind, KdfParams, OperationLock, Outcome, Passphrase,
    RestoreOptions,
};

#[tokio::test(flavor = "multi_thread")]
async fn a_drill_restores_checks_records_and_runs_alone() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let mut demo = build_demo(&dir.path().join("demo"), 19)?;
    let state = demo.config.appliance.state_dir.clone();
    backup_core::init_keys(
        &state,
        &Passphrase::new("drill test secret".into())?,
        KdfParams::MINIMUM,
    )?;
    let seen = dir.path().join("seen");
    let db = demo
        .config
        .components
        .iter_mut()
        .find(|c| c.name == "maindb");
    db.expect("the demo has maindb").drill_check =
        vec!["cp".into(), "{path}".into(), seen.display().to_string()];
    let engine = Engine::builder(demo.config.clone()).build()?;
    let made = engine.create(&CreateOptions::default()).await?;

    let report = engine.drill(&DrillOptions::default()).await?;
    assert_eq!(report.outcome, Outcome::Success, "{report:#?}");
    assert_eq!(report.image.as_deref(), Some(made.image.as_str()));
    assert!(report.restored.contains(&"maindb".to_string()));
    assert!(report.checks.iter().all(|c| c.passed), "{report:#?}");
    assert_eq!(
        report
            .checks
            .iter()
            .filter(|c| c.component == "maindb")
            .map(|c| c.check.as_str())
            .collect::<Vec<_>>(),
        ["integrity_check", "drill_check"]
    );
    assert_eq!(
        backup_core::demo::sqlite_rows(&seen)?,
        backup_core::demo::sqlite_rows(&demo.database())?,
        "the check got the restored database"
    );
    assert!(report.scratch.starts_with(state.join("tmp")));
    assert!(report.scratch_removed && !report.scratch.exists());
    let status = engine.status()?;
    assert_eq!(status.last_drill.as_ref(), Some(&report));
    let audit = engine.audit_records(None)?;
    let last = audit.last().expect("audited");
    assert_eq!(
        (last.operation.as_str(), last.outcome.as_str()),
        ("drill", "success")
    );

    // It runs alone: a held lock makes it a recorded skip, not a drill.
    let held = OperationLock::acquire(&state, "backup")?;
    let err = engine
        .drill(&DrillOptions::default())
        .await
        .expect_err("the lock is held");
    assert_eq!(err.kind(), ErrorKind::Busy, "{err}");
    let skipped = engine.status()?.last_skipped.expect("the skip is recorded");
    assert_eq!(skipped.operation, "drill");
    drop(held);

    // The drill's exception is its own: a restore into the scratch space is
    // still refused.
    let mut opts = RestoreOptions::default();
    opts.target = Some(state.join("tmp/inspect"));
    let err = engine
        .restore(made.image.as_str(), &opts)
        .await
        .expect_err("the state directory is never a restore target");
    assert!(err.to_string().contains("state directory"), "{err}");
    Ok(())
}
