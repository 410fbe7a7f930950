//! Partial outcomes: a failing component leaves the others' backup and
//! restore whole; with `halt` nothing is published.
use anyhow::Result;
use backup_core::{CreateOptions, Error, ErrorKind, Outcome, RestoreOptions};
use backup_testkit::demo::tree_diff;
use backup_testkit::MemoryStorage;

use super::{config_with, engine, Appliance};

/// A command component whose dump writes a little and then fails.
const BROKEN: &str = r#"
[[component]]
name = "broken"
kind = "command"
backup = ["sh", "-c", "echo half a dump; exit 3"]
restore = ["true"]
"#;

#[tokio::test(flavor = "multi_thread")]
async fn a_failing_command_component_makes_a_partial_backup_the_others_restore() -> Result<()> {
    let app = Appliance::new()?;
    let config = config_with(&app, BROKEN)?;
    let store = MemoryStorage::default();
    let e = engine(&config, &store)?;
    let report = e.create(&CreateOptions::default()).await?;
    assert_eq!(report.outcome, Outcome::Partial);
    let outcomes: Vec<_> = report
        .manifest
        .components
        .iter()
        .map(|c| (c.name.as_str(), c.outcome))
        .collect();
    assert_eq!(
        outcomes,
        [
            ("config", Outcome::Success),
            ("maindb", Outcome::Success),
            ("broken", Outcome::Failed)
        ]
    );
    assert!(store.names().contains(&report.image));

    let target = app.fresh_dir("t")?;
    let mut opts = RestoreOptions::default();
    opts.target = Some(target.clone());
    let restored = e.restore(&report.image, &opts).await?;
    assert_eq!(restored.restored, ["config", "maindb"]);
    assert_eq!(restored.skipped_failed, ["broken"]);
    let config_dir = app.demo.config_dir();
    let diffs = tree_diff(
        &config_dir,
        &target.join(config_dir.strip_prefix("/")?),
        &["scratch.tmp"],
    )?;
    assert!(diffs.is_empty(), "the restored config differs: {diffs:?}");
    assert!(target
        .join(app.demo.database().strip_prefix("/")?)
        .is_file());
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn with_halt_a_failing_component_publishes_nothing() -> Result<()> {
    let app = Appliance::new()?;
    let config = config_with(&app, BROKEN)?;
    let store = MemoryStorage::default();
    let e = engine(&config, &store)?;
    let mut opts = CreateOptions::default();
    opts.halt = true;
    let err = e.create(&opts).await.expect_err("halted");
    assert!(
        matches!(err, Error::Halted { ref component, .. } if component == "broken"),
        "{err}"
    );
    assert_eq!(err.kind(), ErrorKind::Failed, "{err}");
    assert_eq!(
        store.names(),
        Vec::<String>::new(),
        "a halted backup published"
    );
    assert!(
        e.status()?.last_failure.is_some(),
        "the failure is not in the status"
    );
    Ok(())
}
