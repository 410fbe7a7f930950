//! Engine behaviour through the library API.
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{ensure, Context, Result};
use backup_core::demo::{build_demo, sqlite_rows, tree_diff, DemoAppliance};
use backup_core::{
    Applicability, Committed, Component, ComponentOptions, Config, CreateOptions, Destination,
    Engine, EntrySink, Error, ErrorKind, ImageRef, ImageStream, KdfParams, KeySource, MasterKey,
    Outcome, Passphrase, PassphraseProvider, RestoreContext, RestoreOptions, SnapshotError,
};

#[path = "engine_awkward/mod.rs"]
mod awkward;
#[path = "engine_report/mod.rs"]
mod report;
#[path = "engine_sealing/mod.rs"]
mod sealing;

const SECRET: &str = "engine test secret";

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

fn engine(config: &Config) -> Result<Engine> {
    Ok(Engine::builder(config.clone()).build()?)
}

struct Fixed(&'static str);
impl PassphraseProvider for Fixed {
    fn passphrase(&self, _: &str, _: bool) -> backup_core::Result<Option<Passphrase>> {
        Ok(Some(Passphrase::new(self.0.into())?))
    }
}
struct NoKey;
impl KeySource for NoKey {
    fn master_key(&self) -> backup_core::Result<Option<MasterKey>> {
        Ok(None)
    }
}

fn under(target: &Path, abs: &Path) -> PathBuf {
    target.join(abs.strip_prefix("/").unwrap())
}

#[tokio::test(flavor = "multi_thread")]
async fn standard_backup_excludes_audits_and_restores_in_place() -> Result<()> {
    let (_d, demo) = demo()?;
    let e = engine(&demo.config)?;
    let report = e.create(&CreateOptions::default()).await?;
    let names: Vec<_> = report
        .manifest
        .components
        .iter()
        .map(|c| c.name.as_str())
        .collect();
    assert_eq!(names, ["config", "maindb"]);
    assert_eq!(report.outcome, Outcome::Success);

    // Keep a pristine copy, damage the live tree, restore in place.
    let pristine = demo.dir.join("pristine");
    std::fs::create_dir(&pristine)?;
    let copy = std::process::Command::new("cp")
        .arg("-a")
        .arg(demo.config_dir())
        .arg(&pristine)
        .status()?;
    assert!(copy.success());
    let rows = sqlite_rows(&demo.database())?;
    std::fs::write(demo.config_dir().join("gateway.conf"), "broken")?;
    std::fs::remove_dir_all(demo.config_dir().join("policies"))?;
    std::fs::write(demo.config_dir().join("new-junk.conf"), "junk")?;
    let db = rusqlite_delete(&demo.database());
    assert!(db > 0);

    let restored = e.restore(&report.image, &RestoreOptions::default()).await?;
    assert_eq!(restored.restored, ["config", "maindb"]);
    let diffs = tree_diff(
        &pristine.join("demo-gateway"),
        &demo.config_dir(),
        &["scratch.tmp"],
    )?;
    assert!(diffs.is_empty(), "{diffs:#?}");
    assert_eq!(sqlite_rows(&demo.database())?, rows);
    assert_no_leftovers(demo.config_dir().parent().unwrap());
    assert_no_leftovers(demo.database().parent().unwrap());
    Ok(())
}

fn rusqlite_delete(path: &Path) -> usize {
    let out = std::process::Command::new("sqlite3")
        .arg(path)
        .arg("DELETE FROM objects; SELECT changes();")
        .output();
    match out {
        Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout)
            .trim()
            .parse()
            .unwrap_or(0),
        _ => {
            // No sqlite3 binary: overwrite the database file instead.
            std::fs::write(path, b"not a database any more").unwrap();
            1
        }
    }
}

fn assert_no_leftovers(dir: &Path) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let name = entry.unwrap().file_name().to_string_lossy().into_owned();
        assert!(
            !(name.contains(".staging-") || name.contains(".restore-") || name.contains(".old-")),
            "leftover {name} in {}",
            dir.display()
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn selection_errors_are_input_errors() -> Result<()> {
    let (_d, demo) = demo()?;
    let e = engine(&demo.config)?;
    let mut opts = CreateOptions::default();
    opts.components = vec!["nope".into()];
    let err = e.create(&opts).await.unwrap_err();
    assert!(
        err.is_input_error() && err.to_string().contains("config, maindb, audits"),
        "{err}"
    );
    opts.components = vec!["audits".into()];
    let err = e.create(&opts).await.unwrap_err();
    assert!(
        err.is_input_error() && err.to_string().contains("requires maindb"),
        "{err}"
    );
    opts.components = vec!["audits".into(), "maindb".into()];
    let report = e.create(&opts).await?;
    let info: &backup_core::BackupInfo = &report.info;
    let manifest: &backup_core::Manifest = &report.manifest;
    assert_eq!(info.components.len(), manifest.components.len());
    assert_eq!(report.info.components.len(), 2);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn errors_are_classified_by_kind_and_audited_by_it() -> Result<()> {
    let (_d, demo) = demo()?;
    let e = engine(&demo.config)?;
    let mut opts = CreateOptions::default();
    opts.components = vec!["nope".into()];
    let err = e.create(&opts).await.unwrap_err();
    assert_eq!(
        (err.kind(), err.name()),
        (ErrorKind::Input, "input"),
        "{err}"
    );

    // A name that is not there is not a bad request.
    let err = e.backup_log("nosuch.bkp").unwrap_err();
    assert_eq!(
        (err.kind(), err.name()),
        (ErrorKind::NotFound, "not_found"),
        "{err}"
    );
    let missing = demo.dir.join("no-such-image.bkp");
    let err = e.verify(missing.as_path()).await.unwrap_err();
    assert_eq!(
        (err.kind(), err.name()),
        (ErrorKind::NotFound, "not_found"),
        "{err}"
    );
    let stored = "gw-20000101T000000Z_no-such-node_standalone.bkp";
    let err = e.verify(stored).await.unwrap_err();
    assert_eq!(
        (err.kind(), err.name()),
        (ErrorKind::NotFound, "not_found"),
        "{err}"
    );
    assert!(err.is_input_error(), "the caller's to fix: {err}");

    let err = backup_core::init_keys(
        &demo.config.appliance.state_dir,
        &Passphrase::new(SECRET.into())?,
        KdfParams::MINIMUM,
    )
    .unwrap_err();
    assert_eq!(
        (err.kind(), err.name()),
        (ErrorKind::Conflict, "already_initialized"),
        "{err}"
    );
    let err = Error::from(backup_crypto::Error::WrongPassphrase);
    assert_eq!(
        (err.kind(), err.name()),
        (ErrorKind::Failed, "wrong_passphrase")
    );
    let err = Error::from(backup_crypto::Error::PassphraseTooShort { min: 12 });
    assert_eq!(err.kind(), ErrorKind::Input);

    // The audit log records each outcome by the error's kind.
    let records: Vec<backup_core::AuditRecord> = e.audit_records(None)?;
    let verifies: Vec<String> = records
        .into_iter()
        .filter(|r| r.operation == "verify")
        .map(|r| r.outcome)
        .collect();
    assert_eq!(verifies, ["refused", "refused"]);
    Ok(())
}

#[test]
fn key_operations_run_through_the_engine_and_are_audited() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let demo = build_demo(&dir.path().join("demo"), 19)?;
    let e = engine(&demo.config)?;
    let id = e.init_keys(|| Ok(Passphrase::new(SECRET.into())?))?;
    assert_eq!(e.check_key(|| Ok(Passphrase::new(SECRET.into())?))?, id);
    // An initialised appliance is refused before a secret is asked for.
    let err = e
        .init_keys(|| panic!("no secret is asked for"))
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Conflict, "{err}");
    let err = e
        .rotate_key(
            || Ok(Passphrase::new(SECRET.into())?),
            || Ok(Passphrase::new("short".into())?),
        )
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Input, "{err}");
    let keys: Vec<(String, String)> = e
        .audit_records(None)?
        .into_iter()
        .filter(|r| r.operation.starts_with("key."))
        .map(|r| (r.operation, r.outcome))
        .collect();
    let want = [
        ("key.init", "done"),
        ("key.check", "done"),
        ("key.init", "refused"),
        ("key.rotate", "refused"),
    ];
    assert_eq!(keys, want.map(|(o, r)| (o.to_string(), r.to_string())));
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn not_applicable_components() -> Result<()> {
    let (_d, demo) = demo()?;
    let mut config = demo.config.clone();
    let text = format!(
        "{}\n[[component]]\nname = \"pg\"\nkind = \"command\"\nbackup = [\"true\"]\napplicable_if_exists = \"/nonexistent/run/postgresql\"\n",
        std::fs::read_to_string(&demo.config_path)?
    );
    config = Config::parse(&text, &demo.config_path).unwrap_or(config);
    let e = engine(&config)?;
    // Standard: silently left out, reported.
    let report = e.create(&CreateOptions::default()).await?;
    assert_eq!(report.outcome, Outcome::Success);
    assert!(report.not_applicable.iter().any(|n| n.starts_with("pg")));
    // Custom without halt: recorded as failed → partial.
    let mut opts = CreateOptions::default();
    opts.components = vec!["config".into(), "pg".into()];
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let report = e.create(&opts).await?;
    assert_eq!(report.outcome, Outcome::Partial);
    // Custom with halt: refused before anything is written.
    opts.halt = true;
    let err = e.create(&opts).await.unwrap_err();
    assert!(matches!(err, Error::Halted { .. }), "{err}");
    Ok(())
}

/// A component whose restore always fails: the components placed before it
/// must be rolled back.
struct Failing;
impl Component for Failing {
    fn name(&self) -> &str {
        "zz-failing"
    }
    fn kind(&self) -> &str {
        "test"
    }
    fn roots(&self) -> Vec<PathBuf> {
        vec![]
    }
    fn applicability(&self) -> Applicability {
        Applicability::Applicable
    }
    fn estimate_size(&self) -> Option<u64> {
        None
    }
    fn snapshot(&self, sink: &mut dyn EntrySink, _: &Path) -> Result<(), SnapshotError> {
        let meta = backup_core::EntryMeta {
            mode: 0o644,
            mtime: 1,
            uid: 0,
            gid: 0,
        };
        sink.file(Path::new("x"), &meta, 1, &mut &b"x"[..])
    }
    fn restore(&self, _: &RestoreContext<'_>) -> Result<Box<dyn Committed>, String> {
        Err("simulated failure while putting the component into place".into())
    }
}

/// A component that counts how often its applicability is probed.
struct Probed(Arc<std::sync::atomic::AtomicUsize>);
impl Component for Probed {
    fn name(&self) -> &str {
        "probed"
    }
    fn kind(&self) -> &str {
        "test"
    }
    fn roots(&self) -> Vec<PathBuf> {
        vec![]
    }
    fn applicability(&self) -> Applicability {
        self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Applicability::Applicable
    }
    fn estimate_size(&self) -> Option<u64> {
        Some(1)
    }
    fn snapshot(&self, sink: &mut dyn EntrySink, _: &Path) -> Result<(), SnapshotError> {
        Failing.snapshot(sink, Path::new("/"))
    }
    fn restore(&self, _: &RestoreContext<'_>) -> Result<Box<dyn Committed>, String> {
        Err("not restored in this test".into())
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_backup_probes_each_component_once_for_preflight_and_pipeline() -> Result<()> {
    let (_d, demo) = demo()?;
    let probes = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let e = Engine::builder(demo.config.clone())
        .component(
            Arc::new(Probed(probes.clone())),
            ComponentOptions::default(),
        )
        .build()?;
    let report = e.create(&CreateOptions::default()).await?;
    assert!(
        report
            .manifest
            .components
            .iter()
            .any(|c| c.name == "probed"),
        "{:?}",
        report.manifest.components
    );
    assert_eq!(probes.load(std::sync::atomic::Ordering::SeqCst), 1);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failing_restore_rolls_back_what_was_placed() -> Result<()> {
    let (_d, demo) = demo()?;
    let e = Engine::builder(demo.config.clone())
        .component(Arc::new(Failing), ComponentOptions::default())
        .build()?;
    let report = e.create(&CreateOptions::default()).await?;
    std::fs::write(
        demo.config_dir().join("gateway.conf"),
        "changed after the backup",
    )?;
    let err = e
        .restore(&report.image, &RestoreOptions::default())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("rolled back"), "{err}");
    assert_eq!(
        std::fs::read_to_string(demo.config_dir().join("gateway.conf"))?,
        "changed after the backup"
    );
    assert_no_leftovers(demo.config_dir().parent().unwrap());
    Ok(())
}

/// The steps a run announces.
#[derive(Default)]
struct Steps(std::sync::Mutex<Vec<String>>);

impl backup_core::Progress for Steps {
    fn event(&self, event: &backup_core::Event) {
        if let backup_core::Event::Step { message } = event {
            self.0.lock().unwrap().push(message.clone());
        }
    }
}

/// The database's integrity is checked while the rest is staged, and a
/// damaged one fails the restore before any component is put into place.
#[tokio::test(flavor = "multi_thread")]
async fn a_database_failing_its_integrity_check_fails_the_restore_before_anything_is_replaced(
) -> Result<()> {
    let (d, demo) = demo()?;
    let steps = Arc::new(Steps::default());
    let e = Engine::builder(demo.config.clone())
        .progress(steps.clone())
        .build()?;
    let report = e.create(&CreateOptions::default()).await?;
    assert_eq!(report.outcome, Outcome::Success);
    // An index that does not match its table. The backup's integrity check
    // refuses such a database (see the test after this one), so it gets into
    // an image the way a damaged or hostile one would: the payload edited
    // and sealed again with a manifest that matches it.
    let bad = d.path().join("bad.sqlite");
    std::fs::copy(demo.database(), &bad)?;
    mismatch_an_index(&bad)?;
    let plain = d.path().join("payload.tar.gz");
    e.decrypt(&report.image, &plain).await?;
    let mut entries = sealing::read_payload(&plain)?;
    let db_path = format!(
        "components/maindb/{}",
        under(Path::new(""), &demo.database()).display()
    );
    entries
        .iter_mut()
        .find(|x| x.path == db_path.as_bytes())
        .context("the database in the payload")?
        .data = std::fs::read(&bad)?;
    sealing::with_fresh_digest(&mut entries, "maindb")?;
    let edited = d.path().join("edited.tar.gz");
    sealing::write_payload(&entries, &edited)?;
    let image = d.path().join("bad-index.bkp");
    e.encrypt_rehash(&edited, &image).await?;
    steps.0.lock().unwrap().clear();
    std::fs::write(
        demo.config_dir().join("gateway.conf"),
        "changed after the backup",
    )?;
    let live_db = std::fs::read(demo.database())?;
    let err = e
        .restore(image.as_path(), &RestoreOptions::default())
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::RestoreFailed { component, .. } if component == "maindb"),
        "{err}"
    );
    let message = err.to_string();
    assert!(
        message.contains("is damaged") && message.contains("nothing was put into place"),
        "{message}"
    );
    let placed: Vec<String> = steps
        .0
        .lock()
        .unwrap()
        .iter()
        .filter(|s| s.starts_with("putting"))
        .cloned()
        .collect();
    assert!(placed.is_empty(), "{placed:?}");
    assert_eq!(
        std::fs::read_to_string(demo.config_dir().join("gateway.conf"))?,
        "changed after the backup"
    );
    assert_eq!(std::fs::read(demo.database())?, live_db);
    assert_no_leftovers(demo.config_dir().parent().unwrap());
    assert_no_leftovers(demo.database().parent().unwrap());
    Ok(())
}

/// Makes an index of the database at `path` disagree with its table:
/// `quick_check` passes it, `integrity_check` does not.
fn mismatch_an_index(path: &Path) -> Result<()> {
    let db = rusqlite::Connection::open(path)?;
    db.execute_batch(
        "CREATE INDEX objects_name ON objects(name);
         PRAGMA writable_schema = ON;
         UPDATE sqlite_schema SET sql = 'CREATE INDEX objects_name ON objects(kind)'
             WHERE name = 'objects_name';
         PRAGMA writable_schema = OFF;",
    )?;
    let quick: String = db.query_row("PRAGMA quick_check", [], |r| r.get(0))?;
    ensure!(quick == "ok", "{quick}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_database_an_index_of_which_does_not_match_its_table_fails_its_component_at_backup(
) -> Result<()> {
    // What restore would refuse, the backup refuses: an image whose
    // component succeeded restores.
    let (_d, demo) = demo()?;
    mismatch_an_index(&demo.database())?;
    let e = engine(&demo.config)?;
    let report = e.create(&CreateOptions::default()).await?;
    assert_eq!(report.outcome, Outcome::Partial);
    let record = report
        .manifest
        .components
        .iter()
        .find(|r| r.name == "maindb")
        .context("maindb's record")?;
    assert_eq!(record.outcome, Outcome::Failed);
    let error = record.error.clone().unwrap_or_default();
    assert!(error.contains("fails its integrity check"), "{error}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn an_image_for_standard_output_goes_to_the_given_stream() -> Result<()> {
    let (d, demo) = demo()?;
    let e = engine(&demo.config)?;
    let path = d.path().join("streamed.bkp");
    let mut opts = CreateOptions::default();
    opts.destination = Destination::Stream(
        ImageStream::new(tokio::fs::File::create(&path).await?).named("standard output"),
    );
    let report = e.create(&opts).await?;
    assert_eq!(report.location, "standard output");
    assert_eq!(report.size, std::fs::metadata(&path)?.len());
    let verified = e.verify(path.as_path()).await?;
    assert_eq!(verified.size, report.size);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn an_image_streams_to_any_writer_once_and_nothing_is_stored() -> Result<()> {
    use tokio::io::AsyncReadExt;
    let (d, demo) = demo()?;
    let e = engine(&demo.config)?;
    // A pipe, as an HTTP response body would be: the reader sees the end
    // of the image when the backup lets go of the writer.
    let (writer, mut reader) = tokio::io::duplex(64 * 1024);
    let mut opts = CreateOptions::default();
    opts.destination = Destination::Stream(ImageStream::new(writer));
    let received = async {
        let mut bytes = Vec::new();
        reader.read_to_end(&mut bytes).await.map(|_| bytes)
    };
    let (report, received) = tokio::join!(e.create(&opts), received);
    let (report, received) = (report?, received?);
    assert_eq!(report.image, "-");
    assert_eq!(report.location, "the output stream");
    assert_eq!(report.size, received.len() as u64);
    assert!(e.list().await?.is_empty(), "a streamed image is not stored");
    let path = d.path().join("received.bkp");
    std::fs::write(&path, &received)?;
    assert_eq!(e.verify(path.as_path()).await?.size, report.size);

    let again = e.create(&opts).await.expect_err("the stream is used up");
    assert!(again.to_string().contains("new stream"), "{again}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_streamed_image_can_be_stored_too_and_says_when_it_opens() -> Result<()> {
    use tokio::io::AsyncReadExt;
    let (_d, demo) = demo()?;
    let e = engine(&demo.config)?;
    let (writer, mut reader) = tokio::io::duplex(64 * 1024);
    let (opened_tx, opened_rx) = std::sync::mpsc::channel();
    let mut opts = CreateOptions::default();
    opts.destination = Destination::Stream(
        ImageStream::new(writer)
            .also_store()
            .on_open(move |name| opened_tx.send(name.to_string()).unwrap()),
    );
    let received = async {
        let mut bytes = Vec::new();
        reader.read_to_end(&mut bytes).await.map(|_| bytes)
    };
    let (report, received) = tokio::join!(e.create(&opts), received);
    let (report, received) = (report?, received?);
    assert_eq!(
        opened_rx.try_recv()?,
        report.image,
        "the hook names the image"
    );
    let stored = e.list().await?;
    assert_eq!(stored.len(), 1, "the streamed image is stored too");
    assert_eq!(stored[0].name, report.image);
    assert_eq!(stored[0].size, received.len() as u64);
    assert_eq!(e.verify(report.image.as_str()).await?.size, report.size);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_reader_that_goes_away_fails_the_run_and_nothing_is_stored() -> Result<()> {
    use tokio::io::AsyncReadExt;
    let (_d, demo) = demo()?;
    let e = engine(&demo.config)?;
    let (writer, mut reader) = tokio::io::duplex(1024);
    let mut opts = CreateOptions::default();
    opts.destination = Destination::Stream(ImageStream::new(writer).also_store());
    // The client reads a little, then disconnects.
    let gone = async move {
        let mut first = [0u8; 512];
        reader.read_exact(&mut first).await.unwrap();
        drop(reader);
    };
    let (result, ()) = tokio::join!(e.create(&opts), gone);
    let err = result.expect_err("the run fails when its reader goes away");
    assert_eq!(err.kind(), backup_core::ErrorKind::Failed, "{err}");
    assert!(
        e.list().await?.is_empty(),
        "nothing is published: {:?}",
        e.list().await?
    );
    let status = e.status()?;
    assert_eq!(
        status
            .last_failure
            .map(|r| r.outcome.to_string())
            .as_deref(),
        Some("failed")
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_name_is_never_read_as_a_file() -> Result<()> {
    let (d, demo) = demo()?;
    let e = engine(&demo.config)?;
    let path = d.path().join("carried.bkp");
    let mut opts = CreateOptions::default();
    opts.destination = Destination::File(path.clone());
    e.create(&opts).await?;
    let as_text = path.to_str().unwrap();

    // The path's text is taken as a name in the storage (which refuses it).
    let err = e.verify(as_text).await.expect_err("not read from the file");
    assert!(matches!(err, Error::Storage(_)), "{err:?}");
    let verified = e.verify(ImageRef::File(path.clone())).await?;
    assert_eq!(verified.image, as_text);

    // Without a storage a name names nothing: refused, not opened.
    let mut bare = demo.config.clone();
    bare.storage.url = "none".into();
    let err = engine(&bare)?
        .verify(as_text)
        .await
        .expect_err("no storage");
    assert!(matches!(err, Error::NoStorage(_)), "{err}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_lone_image_restores_on_a_bare_machine_with_the_passphrase() -> Result<()> {
    let (d, demo) = demo()?;
    let e = engine(&demo.config)?;
    let image = d.path().join("carried.bkp");
    let mut opts = CreateOptions::default();
    opts.destination = Destination::File(image.clone());
    e.create(&opts).await?;

    // The replacement: same identity, an empty state directory, no storage.
    let mut bare_config = demo.config.clone();
    bare_config.appliance.state_dir = d.path().join("bare-state");
    bare_config.storage.url = "none".into();
    let target = d.path().join("inspect");
    let mut ropts = RestoreOptions::default();
    ropts.target = Some(target.clone());

    let without = Engine::builder(bare_config.clone()).build()?;
    let err = without.restore(image.as_path(), &ropts).await.unwrap_err();
    assert!(matches!(err, Error::PassphraseRequired(_)), "{err}");

    let wrong = Engine::builder(bare_config.clone())
        .passphrase_provider(Arc::new(Fixed("wrong secret!")))
        .build()?;
    let err = wrong.restore(image.as_path(), &ropts).await.unwrap_err();
    assert!(
        matches!(err, Error::Crypto(backup_crypto::Error::WrongPassphrase)),
        "{err}"
    );
    assert!(std::fs::read_dir(&target)
        .map(|mut r| r.next().is_none())
        .unwrap_or(true));

    let right = Engine::builder(bare_config)
        .key_source(Box::new(NoKey))
        .passphrase_provider(Arc::new(Fixed(SECRET)))
        .build()?;
    right.restore(image.as_path(), &ropts).await?;
    let diffs = tree_diff(
        &demo.config_dir(),
        &under(&target, &demo.config_dir()),
        &["scratch.tmp"],
    )?;
    assert!(diffs.is_empty(), "{diffs:#?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_resealed_payload_with_altered_content_is_refused() -> Result<()> {
    let (d, demo) = demo()?;
    let e = engine(&demo.config)?;
    let report = e.create(&CreateOptions::default()).await?;
    let plain = d.path().join("payload.tar.gz");
    e.decrypt(&report.image, &plain).await?;
    // Unpack, change one configuration file, pack again in the same order.
    let work = d.path().join("work");
    std::fs::create_dir(&work)?;
    let ok = std::process::Command::new("tar")
        .arg("-xzf")
        .arg(&plain)
        .arg("-C")
        .arg(&work)
        .status()?;
    assert!(ok.success());
    let conf = under(&work.join("components/config"), &demo.config_dir()).join("gateway.conf");
    std::fs::write(&conf, "tampered = yes\n")?;
    let repacked = d.path().join("repacked.tar.gz");
    let ok = std::process::Command::new("tar")
        .arg("-czf")
        .arg(&repacked)
        .arg("-C")
        .arg(&work)
        .args(["backup.json", "components", "manifest.json"])
        .status()?;
    assert!(ok.success());
    let sealed = d.path().join("resealed.bkp");
    // encrypt itself refuses it now; sealed past it, verify and restore do.
    let err = e.encrypt(&repacked, &sealed).await.unwrap_err();
    assert!(
        err.to_string().contains("does not match its manifest"),
        "{err}"
    );
    sealing::seal_unchecked(&demo.config.appliance.state_dir, &repacked, &sealed)?;
    let err = e.verify(sealed.as_path()).await.unwrap_err();
    assert!(
        err.to_string().contains("does not match its manifest"),
        "{err}"
    );
    let mut ropts = RestoreOptions::default();
    ropts.target = Some(d.path().join("t"));
    assert!(e.restore(sealed.as_path(), &ropts).await.is_err());
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn identity_and_version_are_checked_before_anything_is_written() -> Result<()> {
    let (d, demo) = demo()?;
    let report = engine(&demo.config)?
        .create(&CreateOptions::default())
        .await?;
    let target = d.path().join("t");
    let mut ropts = RestoreOptions::default();
    ropts.target = Some(target.clone());

    let mut other_version = demo.config.clone();
    other_version.appliance.version = "9.3.0".into();
    let err = engine(&other_version)?
        .restore(&report.image, &ropts)
        .await
        .unwrap_err();
    let msg = err.to_string();
    assert!(
        matches!(err, Error::VersionMismatch { .. })
            && msg.contains("9.0.1")
            && msg.contains("9.3.0"),
        "{msg}"
    );
    assert!(
        !target.exists() || std::fs::read_dir(&target)?.next().is_none(),
        "something was written"
    );

    let mut other_node = demo.config.clone();
    other_node.appliance.node = "gw-2".into();
    let err = engine(&other_node)?
        .restore(&report.image, &ropts)
        .await
        .unwrap_err();
    let msg = err.to_string();
    assert!(
        matches!(err, Error::IdentityMismatch { .. })
            && msg.contains("gw-1")
            && msg.contains("gw-2"),
        "{msg}"
    );

    ropts.force_identity = true;
    engine(&other_node)?.restore(&report.image, &ropts).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn zstd_and_uncompressed_images_restore_and_gnu_tar_reads_their_payloads() -> Result<()> {
    for (codec, tar_flag) in [
        (backup_core::Compression::Zstd, "--zstd"),
        (backup_core::Compression::None, "--no-auto-compress"),
    ] {
        let (d, demo) = demo()?;
        let mut config = demo.config.clone();
        config.image.compression = codec;
        // Small blocks would not change the format; two threads exercise
        // the parallel paths both ways.
        config.image.threads = Some(2);
        let e = engine(&config)?;
        let report = e.create(&CreateOptions::default()).await?;
        assert_eq!(report.outcome, Outcome::Success);
        e.verify(&report.image).await?;

        let plain = d.path().join("payload");
        e.decrypt(&report.image, &plain).await?;
        let listing = std::process::Command::new("tar")
            .args([tar_flag, "-tf"])
            .arg(&plain)
            .output()?;
        assert!(listing.status.success(), "GNU tar {tar_flag} -t");
        let names = String::from_utf8(listing.stdout)?;
        assert!(names.starts_with("backup.json\n"), "{names}");
        assert!(names.trim_end().ends_with("manifest.json"), "{names}");

        let target = d.path().join("restored");
        let mut ropts = RestoreOptions::default();
        ropts.target = Some(target.clone());
        e.restore(&report.image, &ropts).await?;
        let diffs = tree_diff(
            &demo.config_dir(),
            &under(&target, &demo.config_dir()),
            &["scratch.tmp"],
        )?;
        assert!(diffs.is_empty(), "{codec:?}: {diffs:#?}");
    }
    Ok(())
}

/// `cp -a` of a directory into a fresh `<into>/<name>` (for before/after comparisons).
fn copy_aside(from: &Path, into: &Path) -> PathBuf {
    std::fs::create_dir_all(into).unwrap();
    let ok = std::process::Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(into)
        .status()
        .unwrap()
        .success();
    assert!(ok, "cp -a {} failed", from.display());
    into.join(from.file_name().unwrap())
}

/// Live changes made after a backup of the demo: an edited file, a new
/// file the component owns, and excluded files (an edited one, a new one, a
/// new one in a new directory).
fn change_config_after_backup(config: &Path) {
    std::fs::write(config.join("gateway.conf"), "edited after the backup\n").unwrap();
    std::fs::write(config.join("new-junk.conf"), "not in the image\n").unwrap();
    std::fs::write(
        config.join("scratch.tmp"),
        "excluded, edited after the backup\n",
    )
    .unwrap();
    std::fs::write(config.join("policies/later.tmp"), "excluded, new\n").unwrap();
    std::fs::create_dir(config.join("work")).unwrap();
    std::fs::write(
        config.join("work/cache.tmp"),
        "excluded, in a new directory\n",
    )
    .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn in_place_restore_keeps_excluded_paths_as_they_are() -> Result<()> {
    let (_d, demo) = demo()?;
    let e = engine(&demo.config)?;
    let config = demo.config_dir();
    let pristine = copy_aside(&config, &demo.dir.join("pristine"));
    let report = e.create(&CreateOptions::default()).await?;
    change_config_after_backup(&config);

    e.restore(&report.image, &RestoreOptions::default()).await?;
    let read = |rel: &str| std::fs::read_to_string(config.join(rel)).ok();
    assert_eq!(
        read("scratch.tmp").as_deref(),
        Some("excluded, edited after the backup\n"),
        "an excluded file was replaced by the image's copy"
    );
    assert_eq!(
        read("policies/later.tmp").as_deref(),
        Some("excluded, new\n")
    );
    assert_eq!(
        read("work/cache.tmp").as_deref(),
        Some("excluded, in a new directory\n")
    );
    // Everything the component owns is back to its backed-up state.
    assert_eq!(
        read("new-junk.conf"),
        None,
        "a file the image lacks survived"
    );
    let diffs = tree_diff(
        &pristine,
        &config,
        &["scratch.tmp", "later.tmp", "work", "cache.tmp"],
    )?;
    assert!(diffs.is_empty(), "{diffs:#?}");
    assert_no_leftovers(config.parent().unwrap());
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dry_run_plans_what_a_restore_does_and_writes_nothing() -> Result<()> {
    let (_d, demo) = demo()?;
    let e = engine(&demo.config)?;
    let config = demo.config_dir();
    let report = e.create(&CreateOptions::default()).await?;
    change_config_after_backup(&config);
    let before = copy_aside(&config, &demo.dir.join("before"));
    let state = &demo.config.appliance.state_dir;
    let state_before = dir_listing(state);

    let plan = e
        .restore_plan(&report.image, &RestoreOptions::default())
        .await?;
    let names: Vec<_> = plan.components.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["config", "maindb"]);
    let cfg = &plan.components[0];
    let set = |v: &backup_core::PathList| {
        assert_eq!(
            v.count as usize,
            v.paths.len(),
            "a dry run lists every path"
        );
        v.paths
            .iter()
            .map(|p| p.strip_prefix(&config).unwrap().display().to_string())
            .collect::<Vec<_>>()
    };
    assert_eq!(set(&cfg.removed), ["new-junk.conf"], "{cfg:#?}");
    assert_eq!(
        set(&cfg.kept),
        ["policies/later.tmp", "scratch.tmp", "work/cache.tmp"],
        "{cfg:#?}"
    );
    assert!(set(&cfg.replaced).contains(&"gateway.conf".to_string()));
    assert_eq!(cfg.added.count, 0, "{cfg:#?}");
    // Nothing changed: the live tree, its parent (no staging), the state
    // directory (but for the audit log).
    let diffs = tree_diff(&before, &config, &[])?;
    assert!(
        diffs.is_empty(),
        "a dry run changed the live tree: {diffs:#?}"
    );
    assert_no_leftovers(config.parent().unwrap());
    assert_no_leftovers(demo.database().parent().unwrap());
    let mut state_after = dir_listing(state);
    state_after.retain(|p| p != Path::new("audit.log"));
    let mut expected = state_before;
    expected.retain(|p| p != Path::new("audit.log"));
    assert_eq!(
        state_after, expected,
        "a dry run wrote in the state directory"
    );
    let audited = e.audit_records(None)?;
    let last = audited.last().unwrap();
    assert_eq!(last.operation, "restore.dry-run");
    assert!(last.target.contains("in place"), "{last:?}");

    // The restore itself reports the same plan, and does it.
    let done = e.restore(&report.image, &RestoreOptions::default()).await?;
    let cfg_done = &done.plan.components[0];
    assert_eq!(cfg_done.removed, cfg.removed);
    assert_eq!(cfg_done.kept, cfg.kept);
    assert_eq!(cfg_done.replaced, cfg.replaced);
    assert!(!config.join("new-junk.conf").exists());
    Ok(())
}

fn dir_listing(dir: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = walk_paths(dir);
    out.sort();
    out
}

fn walk_paths(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let p = entry.unwrap().path();
            if p.is_dir() {
                stack.push(p.clone());
            }
            out.push(p.strip_prefix(dir).unwrap().to_path_buf());
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn audits_are_restored_only_when_asked() -> Result<()> {
    let (_d, demo) = demo()?;
    let e = engine(&demo.config)?;
    let mut with_audits = CreateOptions::default();
    with_audits.include_audits = true;
    let report = e.create(&with_audits).await?;
    let later = demo.audit_dir().join("audit-2026-11-04.jsonl");
    std::fs::write(&later, "{\"seq\":0,\"written\":\"after the backup\"}\n")?;

    let done = e.restore(&report.image, &RestoreOptions::default()).await?;
    assert_eq!(done.restored, ["config", "maindb"]);
    assert_eq!(done.left_out, ["audits"]);
    assert!(
        later.exists(),
        "a default restore replaced the audit records"
    );

    let mut only = RestoreOptions::default();
    only.components = vec!["audits".into()];
    let plan = e.restore_plan(&report.image, &only).await?;
    assert_eq!(plan.components.len(), 1);
    assert_eq!(
        plan.components[0].removed.paths,
        std::slice::from_ref(&later)
    );

    let mut opts = RestoreOptions::default();
    opts.include_audits = true;
    let done = e.restore(&report.image, &opts).await?;
    assert_eq!(done.restored, ["config", "maindb", "audits"]);
    assert!(done.left_out.is_empty());
    assert!(
        !later.exists(),
        "--include-audits did not restore the audit records"
    );
    let last = e.audit_records(None)?.pop().unwrap();
    assert_eq!(last.operation, "restore");
    assert!(
        last.target.contains("in place") && last.target.contains("config, maindb, audits"),
        "{last:?}"
    );
    Ok(())
}

/// Says no, after recording the plan it was shown.
struct Decline(std::sync::Mutex<Option<backup_core::RestorePlan>>);
impl backup_core::RestoreApproval for Decline {
    fn approve(&self, plan: &backup_core::RestorePlan) -> bool {
        *self.0.lock().unwrap() = Some(plan.clone());
        false
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_declined_restore_changes_nothing() -> Result<()> {
    let (_d, demo) = demo()?;
    let e = engine(&demo.config)?;
    let config = demo.config_dir();
    let report = e.create(&CreateOptions::default()).await?;
    change_config_after_backup(&config);
    let before = copy_aside(&config, &demo.dir.join("before"));
    let decline = Arc::new(Decline(std::sync::Mutex::new(None)));
    let mut opts = RestoreOptions::default();
    opts.approval = Some(decline.clone());
    let err = e.restore(&report.image, &opts).await.unwrap_err();
    assert!(err.is_input_error(), "{err}");
    assert!(err.to_string().contains("not confirmed"), "{err}");
    let shown = decline
        .0
        .lock()
        .unwrap()
        .clone()
        .expect("the plan was shown");
    assert_eq!(
        shown.components[0].removed.paths,
        [config.join("new-junk.conf")]
    );
    let diffs = tree_diff(&before, &config, &[])?;
    assert!(
        diffs.is_empty(),
        "a declined restore changed the tree: {diffs:#?}"
    );
    assert_no_leftovers(config.parent().unwrap());
    assert_no_leftovers(demo.database().parent().unwrap());
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rolled_back_restore_puts_excluded_paths_back() -> Result<()> {
    let (_d, demo) = demo()?;
    let e = Engine::builder(demo.config.clone())
        .component(Arc::new(Failing), ComponentOptions::default())
        .build()?;
    let config = demo.config_dir();
    let report = e.create(&CreateOptions::default()).await?;
    change_config_after_backup(&config);
    let before = copy_aside(&config, &demo.dir.join("before"));
    let err = e
        .restore(&report.image, &RestoreOptions::default())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("rolled back"), "{err}");
    let diffs = tree_diff(&before, &config, &[])?;
    assert!(
        diffs.is_empty(),
        "rollback did not restore the tree: {diffs:#?}"
    );
    assert_no_leftovers(config.parent().unwrap());
    Ok(())
}
