//! No chained backups: the engine's state directory and its local image
//! store never go into an image, and a restore never writes into them.
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::Result;
use backup_core::{
    Config, CreateOptions, Engine, ErrorKind, Event, ImageRef, Outcome, Progress, RestoreOptions,
};

use super::{all_paths, config_with, Appliance};

/// Collects the warnings of a run.
#[derive(Default)]
struct Warnings(Mutex<Vec<String>>);

impl Progress for Warnings {
    fn event(&self, event: &Event) {
        if let Event::Warning { message, .. } = event {
            self.0.lock().unwrap().push(message.clone());
        }
    }
}

/// The demo with a component `everything` over the whole directory that
/// holds the appliance, its state directory and its `file://` store.
fn over_everything(app: &Appliance) -> Result<Config> {
    config_with(
        app,
        &format!(
            "[[component]]\nname = \"everything\"\nkind = \"files\"\npaths = [{:?}]\ndefault = false\n",
            app.demo.dir.display().to_string()
        ),
    )
}

fn everything() -> CreateOptions {
    let mut opts = CreateOptions::default();
    opts.components = vec!["everything".into()];
    opts
}

/// An engine over the configured `file://` store (the demo's `store/`).
fn engine(config: &Config, progress: Arc<Warnings>) -> Result<Engine> {
    Ok(Engine::builder(config.clone()).progress(progress).build()?)
}

fn state(app: &Appliance) -> PathBuf {
    app.state_dir().to_path_buf()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_component_over_the_whole_appliance_leaves_out_the_store_and_the_state_directory(
) -> Result<()> {
    let app = Appliance::new()?;
    let config = over_everything(&app)?;
    let warnings = Arc::new(Warnings::default());
    let e = engine(&config, warnings.clone())?;
    // The second backup finds the first image in the store.
    e.create(&everything()).await?;
    let report = e.create(&everything()).await?;
    assert_eq!(report.outcome, Outcome::Success);
    let store = app.demo.store();
    assert!(
        std::fs::read_dir(&store)?.count() >= 2,
        "the store holds images"
    );

    let record = &report.manifest.components[0];
    for place in [state(&app), store.clone()] {
        let says = format!("left out {}", place.display());
        assert!(
            record.warnings.iter().any(|w| w.starts_with(&says)),
            "{says} in the manifest: {:?}",
            record.warnings
        );
        assert!(
            warnings
                .0
                .lock()
                .unwrap()
                .iter()
                .any(|w| w.starts_with(&says)),
            "{says} as a warning"
        );
    }

    // What the image holds, restored aside.
    let target = app.demo.dir.parent().unwrap().join("restored");
    let mut opts = RestoreOptions::default();
    opts.components = vec!["everything".into()];
    opts.target = Some(target.clone());
    e.restore(report.image.as_str(), &opts).await?;
    let under = |p: &Path| target.join(p.strip_prefix("/").unwrap());
    assert!(under(&app.demo.config_dir().join("gateway.conf")).is_file());
    assert!(under(&app.demo.database()).is_file());
    assert!(under(&app.demo.dir).is_dir());
    assert!(
        !under(&state(&app)).exists(),
        "no state directory, no master.key"
    );
    assert!(!under(&store).exists(), "no images in the image");
    let held = all_paths(&under(&app.demo.dir));
    assert!(
        held.iter().all(|p| !p.to_string_lossy().contains(".bkp")
            && p.file_name() != Some("master.key".as_ref())),
        "{held:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn an_in_place_restore_over_the_appliance_keeps_the_store_and_the_state_directory(
) -> Result<()> {
    let app = Appliance::new()?;
    let config = over_everything(&app)?;
    let e = engine(&config, Arc::new(Warnings::default()))?;
    let report = e.create(&everything()).await?;
    let store = app.demo.store();
    let images_before = all_paths(&store);
    let state_before = all_paths(&state(&app));
    assert!(state_before.iter().any(|p| p == Path::new("master.key")));
    std::fs::write(app.demo.config_dir().join("added-later.conf"), "x")?;

    let mut opts = RestoreOptions::default();
    opts.components = vec!["everything".into()];
    let plan = e.restore_plan(report.image.as_str(), &opts).await?;
    let kept = &plan.components[0].kept.paths;
    assert!(kept.contains(&state(&app)), "{kept:?}");
    assert!(kept.contains(&store), "{kept:?}");
    let removed = &plan.components[0].removed.paths;
    assert!(
        removed
            .iter()
            .all(|p| !p.starts_with(&store) && !p.starts_with(state(&app))),
        "{removed:?}"
    );

    let restored = e.restore(report.image.as_str(), &opts).await?;
    assert_eq!(restored.restored, ["everything"]);
    assert!(!app.demo.config_dir().join("added-later.conf").exists());
    assert_eq!(all_paths(&store), images_before);
    let state_after = all_paths(&state(&app));
    for p in &state_before {
        assert!(state_after.contains(p), "{} kept", p.display());
    }
    // The engine still works: its keys and store are where they were.
    e.create(&everything()).await?;
    Ok(())
}

#[test]
fn a_component_inside_the_state_directory_or_the_store_is_a_config_error() -> Result<()> {
    let app = Appliance::new()?;
    for inside in [state(&app).join("tmp"), state(&app), app.demo.store()] {
        let config = config_with(
            &app,
            &format!(
                "[[component]]\nname = \"inside\"\nkind = \"files\"\npaths = [{:?}]\n",
                inside.display().to_string()
            ),
        )?;
        let err = Engine::builder(config).build().expect_err("refused");
        assert_eq!(err.kind(), ErrorKind::Config, "{err}");
        let text = err.to_string();
        assert!(text.contains(&inside.display().to_string()), "{text}");
        let place = if inside.starts_with(state(&app)) {
            state(&app)
        } else {
            app.demo.store()
        };
        assert!(
            text.contains(&format!("inside {},", place.display())),
            "{text}"
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_restore_into_the_state_directory_or_the_store_is_refused_before_anything_is_staged(
) -> Result<()> {
    let app = Appliance::new()?;
    let extra = app.fresh_dir("extra")?;
    std::fs::write(extra.join("file"), "data")?;
    let config = config_with(
        &app,
        &format!(
            "[[component]]\nname = \"extra\"\nkind = \"files\"\npaths = [{:?}]\n",
            extra.display().to_string()
        ),
    )?;
    let e = engine(&config, Arc::new(Warnings::default()))?;
    let report = e.create(&CreateOptions::default()).await?;
    let image = app.demo.store().join(&report.image);

    // --target inside the state directory: refused, nothing created.
    let target = state(&app).join("restore-here");
    let mut opts = RestoreOptions::default();
    opts.target = Some(target.clone());
    for dry_run in [false, true] {
        let err = match dry_run {
            false => e.restore(report.image.as_str(), &opts).await.err(),
            true => e.restore_plan(report.image.as_str(), &opts).await.err(),
        }
        .expect("refused");
        assert_eq!(err.kind(), ErrorKind::Input, "{err}");
        assert!(err.to_string().contains("never writes there"), "{err}");
        assert!(!target.exists());
    }

    // The same image on an appliance whose store is where `extra` goes.
    let text = std::fs::read_to_string(&app.demo.config_path)?;
    let moved = text.replace(
        &format!("file://{}", app.demo.store().display()),
        &format!("file://{}", extra.display()),
    );
    assert_ne!(moved, text);
    let moved = Config::parse(&moved, &app.demo.config_path)?;
    let e = Engine::builder(moved).build()?;
    let before = all_paths(&app.demo.dir);
    let mut opts = RestoreOptions::default();
    opts.components = vec!["extra".into()];
    let err = e
        .restore(ImageRef::File(image.clone()), &opts)
        .await
        .expect_err("refused");
    assert_eq!(err.kind(), ErrorKind::Input, "{err}");
    let text = err.to_string();
    assert!(
        text.contains(&format!("restored to {}", extra.display()))
            && text.contains("the image store"),
        "{text}"
    );
    assert_eq!(
        all_paths(&app.demo.dir),
        before,
        "nothing staged or written"
    );
    assert_eq!(std::fs::read_to_string(extra.join("file"))?, "data");
    Ok(())
}
