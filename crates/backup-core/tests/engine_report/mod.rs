//! What a restore says about itself (the post-restore report, in the result,
//! the dry run, the status and the audit log) and the room checks before a
//! restore stages and before a backup snapshots, on real small file systems.

use super::*;
use backup_core::{Absent, RestoreSummary};
use backup_testkit::Tmpfs;

fn absent(component: &str, reason: &str) -> Absent {
    serde_json::from_value(serde_json::json!({"component": component, "reason": reason})).unwrap()
}

fn reasons(list: &[Absent]) -> Vec<(String, String)> {
    list.iter()
        .map(|a| (a.component.clone(), a.reason.clone()))
        .collect()
}

/// The demo appliance with reminders on `config`, a database component that
/// is not applicable here, and one whose dump command fails.
fn reporting_demo() -> Result<(tempfile::TempDir, DemoAppliance, Config)> {
    let (d, demo) = demo()?;
    let text = format!(
        "{}\n[[component]]\nname = \"pg\"\nkind = \"command\"\nbackup = [\"true\"]\napplicable_if_exists = \"/nonexistent/run/postgresql\"\n\n[[component]]\nname = \"ldap\"\nkind = \"command\"\nbackup = [\"sh\", \"-c\", \"echo no server >&2; exit 3\"]\n",
        std::fs::read_to_string(&demo.config_path)?
    );
    let mut config = Config::parse(&text, &demo.config_path)?;
    let c = config
        .components
        .iter_mut()
        .find(|c| c.name == "config")
        .unwrap();
    c.after_restore = vec![
        "re-enroll VPN certificates".into(),
        "redeploy policy".into(),
    ];
    Ok((d, demo, config))
}

#[tokio::test(flavor = "multi_thread")]
async fn the_post_restore_report_says_what_was_left_out_and_why_with_the_notes() -> Result<()> {
    let (_d, demo, config) = reporting_demo()?;
    let e = engine(&config)?;
    let standard = e.create(&CreateOptions::default()).await?;
    assert_eq!(standard.outcome, Outcome::Partial, "ldap fails");

    let mut opts = RestoreOptions::default();
    opts.target = Some(demo.dir.join("t1"));
    let plan = e.restore_plan(&standard.image, &opts).await?;
    let report = e.restore(&standard.image, &opts).await?;
    let s = &report.summary;
    assert_eq!(s.restored, ["config", "maindb"]);
    assert!(s.not_restored.is_empty(), "{s:?}");
    let not_in_image = reasons(&s.not_in_image);
    assert_eq!(not_in_image.len(), 3, "{not_in_image:?}");
    assert_eq!(
        not_in_image[0],
        ("audits".into(), "audits not included in the backup".into())
    );
    assert_eq!(
        not_in_image[1],
        (
            "pg".into(),
            "not applicable on the source node (/nonexistent/run/postgresql does not exist on that node)".into()
        )
    );
    assert_eq!(not_in_image[2].0, "ldap");
    assert!(
        not_in_image[2].1.starts_with("failed at backup time: ")
            && not_in_image[2].1.contains("exit"),
        "{not_in_image:?}"
    );
    let notes: Vec<_> = s
        .notes
        .iter()
        .map(|n| (n.component.as_str(), n.note.as_str()))
        .collect();
    assert_eq!(
        notes,
        [
            ("config", "re-enroll VPN certificates"),
            ("config", "redeploy policy")
        ]
    );
    // The dry run tells the same.
    assert_eq!(&plan.summary, s);
    // Kept as the last restore, and audited in short.
    let status = e.status()?;
    let last = status.last_restore.expect("the last restore in the status");
    assert_eq!(&last.summary, s);
    assert_eq!(last.image, standard.image);
    assert_eq!(last.target.as_deref(), Some(demo.dir.join("t1").as_path()));
    let audited = e.audit_records(None)?;
    let r = audited
        .iter()
        .rev()
        .find(|r| r.operation == "restore")
        .expect("a restore record");
    assert_eq!(r.outcome, "done");
    let summary = r.summary.as_deref().expect("the report in short");
    assert!(
        summary.starts_with("not in the image: audits (audits not included in the backup), pg (not applicable on the source node")
            && summary.ends_with("; 2 after-restore note(s)"),
        "{summary}"
    );

    // Only some components: the others are named as not selected.
    opts.target = Some(demo.dir.join("t2"));
    opts.components = vec!["config".into()];
    let report = e.restore(&standard.image, &opts).await?;
    assert_eq!(report.summary.restored, ["config"]);
    assert_eq!(
        report.summary.not_restored,
        [absent(
            "maindb",
            "not selected: name it with --component to restore it"
        )]
    );

    // A custom backup: what it did not take is named as such; audits taken
    // but not asked for on restore are named as not selected.
    let mut custom = CreateOptions::default();
    custom.components = vec!["config".into(), "maindb".into()];
    custom.include_audits = true;
    let custom = e.create(&custom).await?;
    opts.target = Some(demo.dir.join("t3"));
    opts.components = Vec::new();
    let report = e.restore(&custom.image, &opts).await?;
    let s: &RestoreSummary = &report.summary;
    assert_eq!(s.restored, ["config", "maindb"]);
    assert_eq!(
        s.not_restored,
        [absent(
            "audits",
            "audit records, not selected: pass --include-audits to restore them"
        )]
    );
    let custom_reason = "custom backup: the component was not selected";
    assert_eq!(
        reasons(&s.not_in_image),
        [
            ("pg".into(), custom_reason.into()),
            ("ldap".into(), custom_reason.into()),
        ]
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_restore_that_does_not_fit_is_refused_with_the_table_before_anything_is_staged(
) -> Result<()> {
    let (_d, demo) = demo()?;
    // 3 MiB of file data that do not compress away.
    let mut bulk = Vec::with_capacity(3 << 20);
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    while bulk.len() < 3 << 20 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        bulk.extend_from_slice(&x.to_le_bytes());
    }
    std::fs::write(demo.config_dir().join("bulk.bin"), &bulk)?;
    let e = engine(&demo.config)?;
    let image = e.create(&CreateOptions::default()).await?.image;

    let small = demo.dir.join("small");
    let _small = Tmpfs::mount(&small, "1m");
    let mut opts = RestoreOptions::default();
    opts.target = Some(small.clone());
    for dry_run in [true, false] {
        let err = if dry_run {
            e.restore_plan(&image, &opts).await.unwrap_err()
        } else {
            e.restore(&image, &opts).await.unwrap_err()
        };
        assert!(matches!(err, Error::NoRoom(_)), "{err}");
        assert_eq!(err.kind(), ErrorKind::Refused);
        let text = err.to_string();
        let row = text
            .lines()
            .find(|l| l.starts_with("config "))
            .unwrap_or_else(|| panic!("a row for config: {text}"));
        assert!(
            row.contains(&small.display().to_string()) && row.ends_with("(does not fit)"),
            "{text}"
        );
        assert!(text.contains("component") && text.contains("needed") && text.contains("free"));
        // Nothing was written: no staging directory, no target tree.
        let left: Vec<_> = std::fs::read_dir(&small)?.collect();
        assert!(left.is_empty(), "{left:?}");
    }
    let status = e.status()?;
    assert!(status.last_restore.is_none());
    assert!(
        e.audit_records(None)?
            .iter()
            .any(|r| r.operation == "restore" && r.outcome == "refused"),
        "the refusal is audited"
    );

    // With room, the same check passes and the plan shows it, summed per
    // file system: both components stage on the one mount.
    let roomy = demo.dir.join("roomy");
    let _roomy = Tmpfs::mount(&roomy, "16m");
    opts.target = Some(roomy.clone());
    let plan = e.restore_plan(&image, &opts).await?;
    let rows: Vec<_> = plan
        .space
        .iter()
        .map(|r| (r.component.as_str(), r.file_system.clone(), r.fits))
        .collect();
    assert_eq!(
        rows,
        [
            ("config", roomy.clone(), true),
            ("maindb", roomy.clone(), true)
        ]
    );
    assert!(plan.space[0].needed >= 3 << 20 && plan.space[0].free <= 16 << 20);
    let report = e.restore(&image, &opts).await?;
    assert_eq!(report.restored, ["config", "maindb"]);
    Ok(())
}

/// A component that spools its snapshot to scratch first (as a dump command
/// does) and says how much room that takes.
struct Spooling;
impl Component for Spooling {
    fn name(&self) -> &str {
        "spooled"
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
        Some(2 << 20)
    }
    fn scratch_estimate(&self) -> Option<u64> {
        Some(2 << 20)
    }
    fn snapshot(&self, _: &mut dyn EntrySink, _: &Path) -> Result<(), SnapshotError> {
        Err(SnapshotError::Failed("never run: refused up front".into()))
    }
    fn restore(&self, _: &RestoreContext<'_>) -> Result<Box<dyn Committed>, String> {
        Err("not restored in this test".into())
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_backup_whose_scratch_space_cannot_hold_a_snapshot_is_refused_up_front() -> Result<()> {
    let (_d, demo) = demo()?;
    let scratch = demo.config.appliance.state_dir.join("tmp");
    let _tmp = Tmpfs::mount(&scratch, "512k");
    let e = Engine::builder(demo.config.clone())
        .component(Arc::new(Spooling), ComponentOptions::default())
        .build()?;
    let err = e.create(&CreateOptions::default()).await.unwrap_err();
    assert!(matches!(err, Error::Preflight(_)), "{err}");
    assert_eq!(err.kind(), ErrorKind::Refused);
    let text = err.to_string();
    assert!(
        text.contains("component spooled needs about")
            && text.contains(&scratch.display().to_string()),
        "{text}"
    );
    // Nothing was published.
    let stored: Vec<_> = std::fs::read_dir(demo.store())
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(
        stored
            .iter()
            .all(|n| !n.to_string_lossy().ends_with(".bkp")),
        "{stored:?}"
    );
    assert!(e.status()?.last_failure.is_some());
    Ok(())
}
