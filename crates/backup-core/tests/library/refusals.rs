//! Requests the engine refuses, each with the `ErrorKind` front-ends map to
//! exit codes, audit outcomes and status codes, and nothing written.
use anyhow::Result;
use backup_core::{CreateOptions, Error, ErrorKind, OperationLock, RestoreOptions};
use backup_testkit::MemoryStorage;

use super::{all_paths, engine, Appliance};

#[tokio::test(flavor = "multi_thread")]
async fn an_image_of_another_version_or_node_is_refused() -> Result<()> {
    let app = Appliance::new()?;
    let store = MemoryStorage::default();
    let name = engine(app.config(), &store)?
        .create(&CreateOptions::default())
        .await?
        .image;

    let mut other_version = app.config().clone();
    other_version.appliance.version = "9.3.0".into();
    let mut other_node = app.config().clone();
    other_node.appliance.node = "gw-2".into();
    for (i, (what, config)) in [("version", other_version), ("node", other_node)]
        .into_iter()
        .enumerate()
    {
        let target = app.fresh_dir(&format!("t-{i}"))?;
        let mut opts = RestoreOptions::default();
        opts.target = Some(target.clone());
        let err = engine(&config, &store)?
            .restore(&name, &opts)
            .await
            .expect_err(what);
        assert_eq!(err.kind(), ErrorKind::Refused, "another {what}: {err}");
        assert!(
            all_paths(&target).is_empty(),
            "another {what}: the refused restore wrote under the target"
        );
    }
    Ok(())
}

/// Warnings an engine reported.
#[derive(Default)]
struct Warnings(std::sync::Mutex<Vec<String>>);

impl backup_core::Progress for Warnings {
    fn event(&self, event: &backup_core::Event) {
        if let backup_core::Event::Warning { message, .. } = event {
            self.0.lock().unwrap().push(message.clone());
        }
    }
}

/// Verify vouches for the image, restore also checks that it is this
/// appliance's: a verify says when a restore here would refuse the image.
#[tokio::test(flavor = "multi_thread")]
async fn verify_says_when_a_restore_here_would_refuse_the_image() -> Result<()> {
    let app = Appliance::new()?;
    let store = MemoryStorage::default();
    let name = engine(app.config(), &store)?
        .create(&CreateOptions::default())
        .await?
        .image;
    let mut other_node = app.config().clone();
    other_node.appliance.node = "gw-2".into();
    for (config, refused_here) in [(app.config().clone(), false), (other_node, true)] {
        let warnings = std::sync::Arc::new(Warnings::default());
        let e = backup_core::Engine::builder(config)
            .storage(std::sync::Arc::new(store.clone()))
            .progress(warnings.clone())
            .build()?;
        e.verify(&name).await?;
        let said = warnings.0.lock().unwrap().clone();
        let warned = said
            .iter()
            .any(|w| w.contains("a restore on this appliance would refuse it"));
        assert_eq!(warned, refused_here, "warnings: {said:?}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_components_and_missing_requirements_are_input_errors() -> Result<()> {
    let app = Appliance::new()?;
    let store = MemoryStorage::default();
    let e = engine(app.config(), &store)?;
    for (components, says) in [(vec!["nope"], "nope"), (vec!["audits"], "requires maindb")] {
        let mut opts = CreateOptions::default();
        opts.components = components.iter().map(|c| c.to_string()).collect();
        let err = e.create(&opts).await.expect_err(says);
        assert_eq!(err.kind(), ErrorKind::Input, "{components:?}: {err}");
        assert!(err.to_string().contains(says), "{components:?}: {err}");
        assert!(
            store.names().is_empty(),
            "{components:?}: something was stored"
        );
    }

    // Restoring a component the image does not hold.
    let name = e.create(&CreateOptions::default()).await?.image;
    let target = app.fresh_dir("t")?;
    let mut opts = RestoreOptions::default();
    opts.target = Some(target.clone());
    opts.components = vec!["nope".into()];
    let err = e
        .restore(&name, &opts)
        .await
        .expect_err("unknown component");
    assert_eq!(err.kind(), ErrorKind::Input, "{err}");
    assert!(all_paths(&target).is_empty());
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_backup_without_storage_is_a_configuration_error() -> Result<()> {
    let app = Appliance::new()?;
    let mut config = app.config().clone();
    config.storage.url = "none".into();
    let e = backup_core::Engine::builder(config).build()?;
    let err = e
        .create(&CreateOptions::default())
        .await
        .expect_err("no storage");
    assert!(matches!(err, Error::NoStorage(_)), "{err}");
    assert_eq!(err.kind(), ErrorKind::Config, "{err}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_backup_while_another_operation_holds_the_lock_is_busy() -> Result<()> {
    let app = Appliance::new()?;
    let store = MemoryStorage::default();
    let e = engine(app.config(), &store)?;
    let held = OperationLock::acquire(app.state_dir(), "restore")?;
    let err = e
        .create(&CreateOptions::default())
        .await
        .expect_err("the lock is held");
    assert_eq!(err.kind(), ErrorKind::Busy, "{err}");
    assert!(
        store.names().is_empty(),
        "a skipped backup stored something"
    );
    drop(held);
    e.create(&CreateOptions::default()).await?;
    assert!(!store.names().is_empty());
    Ok(())
}
