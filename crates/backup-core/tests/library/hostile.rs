//! Every crafted payload of the testkit's hostile builders, sealed under the
//! appliance's key and stored: verify and restore (under a target and in
//! place) refuse it with the same error kind, and nothing is written outside
//! staging.
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;

use anyhow::Result;
use backup_core::{CreateOptions, ErrorKind, RestoreOptions};
use backup_testkit::demo::tree_diff;
use backup_testkit::hostile::{
    read_payload, seal_unchecked, unsafe_entry_cases, write_payload, Layout,
};
use backup_testkit::MemoryStorage;

use super::{all_paths, engine, Appliance};

#[tokio::test(flavor = "multi_thread")]
async fn stored_hostile_images_are_refused_alike_by_verify_and_restore() -> Result<()> {
    let app = Appliance::new()?;
    let store = MemoryStorage::default();
    let name = engine(app.config(), &store)?
        .create(&CreateOptions::default())
        .await?
        .image;
    let work = app.fresh_dir("work")?;
    let payload = work.join("payload.tar.gz");
    engine(app.config(), &store)?
        .decrypt(&name, &payload)
        .await?;
    let entries = read_payload(&payload);

    // A pristine copy of the live component roots to compare with.
    let pristine = app.fresh_dir("pristine")?;
    for (from, to) in [
        (app.demo.config_dir(), pristine.join("config")),
        (
            app.demo.database().parent().unwrap().to_path_buf(),
            pristine.join("db"),
        ),
    ] {
        let ok = std::process::Command::new("cp")
            .arg("-a")
            .arg(&from)
            .arg(&to)
            .status()?;
        assert!(ok.success(), "cp -a {}", from.display());
    }

    let layout = Layout {
        dir: app.demo.dir.clone(),
        config_root: app.demo.config_dir(),
        database: app.demo.database(),
    };
    layout.prepare_outside();
    let outside_before = all_paths(&layout.outside());

    // Sanity: the same payload re-packed without a crafted entry restores,
    // so a refusal below is the crafted entry's doing.
    {
        let tgz = work.join("repacked.tar.gz");
        write_payload(&entries, &tgz);
        let sealed = work.join("repacked.bkp");
        seal_unchecked(app.state_dir(), &tgz, &sealed);
        let store = MemoryStorage::default();
        store.insert(&name, std::fs::read(&sealed)?);
        let e = engine(app.config(), &store)?;
        e.verify(&name).await?;
        let mut opts = RestoreOptions::default();
        opts.target = Some(app.fresh_dir("t-repacked")?);
        e.restore(&name, &opts).await?;
    }

    let cases = unsafe_entry_cases(&layout);
    assert!(!cases.is_empty());
    for (i, case) in cases.iter().enumerate() {
        let what = case.name;
        let tgz = work.join(format!("crafted-{i}.tar.gz"));
        write_payload(&case.splice(&entries), &tgz);
        let sealed = work.join(format!("crafted-{i}.bkp"));
        seal_unchecked(app.state_dir(), &tgz, &sealed);
        // Stored under the name of a real image, as a swapped object would be.
        let store = MemoryStorage::default();
        store.insert(&name, std::fs::read(&sealed)?);
        let e = engine(app.config(), &store)?;

        let verify = e.verify(&name).await.expect_err(what);
        let target = app.fresh_dir(&format!("t-crafted-{i}"))?;
        std::fs::write(target.join("already-here.txt"), "mine\n")?;
        let mut opts = RestoreOptions::default();
        opts.target = Some(target.clone());
        let under_target = e.restore(&name, &opts).await.expect_err(what);
        let in_place = e
            .restore(&name, &RestoreOptions::default())
            .await
            .expect_err(what);

        assert_eq!(
            verify.kind(),
            ErrorKind::Refused,
            "{what}: verify: {verify}"
        );
        for (how, err) in [("under a target", &under_target), ("in place", &in_place)] {
            assert_eq!(
                (err.kind(), err.name()),
                (verify.kind(), verify.name()),
                "{what}: restore {how} and verify disagree: {err} / {verify}"
            );
        }

        for p in &case.must_not_exist {
            assert!(
                std::fs::symlink_metadata(p).is_err(),
                "{what}: {} was created",
                p.display()
            );
        }
        assert_eq!(
            all_paths(&layout.outside()),
            outside_before,
            "{what}: the outside directory changed"
        );
        assert_eq!(
            std::fs::metadata(layout.outside().join("secret.txt"))?.nlink(),
            1,
            "{what}: the outside file got a link"
        );
        assert_eq!(
            all_paths(&target),
            [PathBuf::from("already-here.txt")],
            "{what}: the refused restore left things under the target"
        );
        let config_diff = tree_diff(&pristine.join("config"), &app.demo.config_dir(), &[])?;
        let db_diff = tree_diff(
            &pristine.join("db"),
            app.demo.database().parent().unwrap(),
            &[],
        )?;
        assert!(
            config_diff.is_empty() && db_diff.is_empty(),
            "{what}: the live appliance changed: {config_diff:?} {db_diff:?}"
        );
        let scratch = all_paths(&app.state_dir().join("tmp"));
        assert!(scratch.is_empty(), "{what}: scratch left: {scratch:?}");
    }
    Ok(())
}
