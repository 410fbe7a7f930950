//! `backup quickstart`: a demo appliance backed up and restored with no setup.
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{bail, Context};
use backup_core::demo::{build_demo, sqlite_rows, tree_diff, DEMO_SECRET};
use backup_core::{
    CreateOptions, Engine, KdfParams, Passphrase, PassphraseProvider, RestoreOptions,
};

use crate::report::human;

/// The quickstart uses RFC 9106's small-appliance Argon2 cost (64 MiB) so the
/// demo is quick; real appliances default to 256 MiB.
const DEMO_KDF_MIB: u32 = 64;

struct Fixed(&'static str);

impl PassphraseProvider for Fixed {
    fn passphrase(
        &self,
        _purpose: &str,
        _confirm: bool,
    ) -> backup_core::Result<Option<Passphrase>> {
        Ok(Some(Passphrase::new(self.0.to_string())?))
    }
}

/// No key file: forces the passphrase path, as on a bare replacement machine.
struct NoKeyFile;

impl backup_core::KeySource for NoKeyFile {
    fn master_key(&self) -> backup_core::Result<Option<backup_core::MasterKey>> {
        Ok(None)
    }
}

fn step(n: u32, text: &str) {
    println!("\n[{n}/7] {text}");
}

pub(crate) async fn run(dir: Option<PathBuf>) -> anyhow::Result<ExitCode> {
    let dir = match dir {
        Some(d) => d,
        None => std::env::temp_dir().join(format!(
            "backup-quickstart-{}",
            chrono::Utc::now().format("%Y%m%dT%H%M%S%.3fZ")
        )),
    };
    let dir = std::path::absolute(&dir).context("resolving the demo directory")?;
    println!("backup quickstart: a demo appliance in {}", dir.display());

    step(
        1,
        "building the demo appliance: config tree, SQLite internal database, audit logs",
    );
    let demo = build_demo(&dir, DEMO_KDF_MIB)?;
    let rows = sqlite_rows(&demo.database())?;
    println!("  config tree  {}", demo.config_dir().display());
    println!(
        "  database     {} ({} rows)",
        demo.database().display(),
        rows.len()
    );
    println!("  audit logs   {}", demo.audit_dir().display());
    println!("  config file  {}", demo.config_path.display());

    step(
        2,
        "setting the domain master secret (a clearly labelled DEMO secret; never reuse it)",
    );
    let pass = Passphrase::new(DEMO_SECRET.to_string())?;
    let params = KdfParams {
        memory_kib: DEMO_KDF_MIB * 1024,
        ..KdfParams::SMALL
    };
    let id = backup_core::init_keys(&demo.config.appliance.state_dir, &pass, params)?;
    println!(
        "  key id {id}; keyring and 0600 master key file in {}",
        demo.config.appliance.state_dir.display()
    );

    let engine = Engine::builder(demo.config.clone()).build()?;
    step(
        3,
        "backing up every component, audits included, to the local store",
    );
    let mut opts = CreateOptions::default();
    opts.include_audits = true;
    let report = engine.create(&opts).await.context("demo backup")?;
    println!(
        "  {} → {} ({}, {})",
        report.location,
        report.image,
        report.outcome,
        human(report.size)
    );
    for c in &report.manifest.components {
        println!(
            "    {:<8} {:<8} {:>4} entries {:>10}",
            c.name,
            c.outcome.as_str(),
            c.entries,
            human(c.bytes)
        );
    }

    step(4, "listing the store");
    for image in engine.list().await? {
        let outcome = image
            .sidecar
            .as_ref()
            .map(|s| s.manifest.outcome.as_str())
            .unwrap_or("?");
        println!("  {}  {}  {}", image.name, outcome, human(image.size));
    }

    step(
        5,
        "verifying: full decrypt, decompress and checksum of every component",
    );
    let verified = engine.verify(&report.image).await.context("demo verify")?;
    println!(
        "  ok: {} verified against the manifest",
        verified.verified.join(", ")
    );

    step(6, "restoring into a fresh directory, as a bare replacement machine would (passphrase, no key file)");
    let bare = Engine::builder(demo.config.clone())
        .key_source(Box::new(NoKeyFile))
        .passphrase_provider(Arc::new(Fixed(DEMO_SECRET)))
        .build()?;
    let wrong = Engine::builder(demo.config.clone())
        .key_source(Box::new(NoKeyFile))
        .passphrase_provider(Arc::new(Fixed("not the demo secret")))
        .build()?;
    match wrong.verify(&report.image).await {
        Err(e) => println!("  a wrong passphrase is refused: {e}"),
        Ok(_) => bail!("an image opened with a wrong passphrase"),
    }
    let target = dir.join("restored");
    let mut ropts = RestoreOptions::default();
    ropts.target = Some(target.clone());
    // A replacement machine takes everything, audit records included.
    ropts.include_audits = true;
    let restored = bare
        .restore(&report.image, &ropts)
        .await
        .context("demo restore")?;
    println!(
        "  restored {} under {}",
        restored.restored.join(", "),
        target.display()
    );

    step(7, "proving the restore equals the original");
    let under = |p: PathBuf| target.join(p.strip_prefix("/").unwrap_or(&p));
    let mut problems = Vec::new();
    problems.extend(tree_diff(
        &demo.config_dir(),
        &under(demo.config_dir()),
        &["scratch.tmp"],
    )?);
    problems.extend(tree_diff(&demo.audit_dir(), &under(demo.audit_dir()), &[])?);
    if sqlite_rows(&under(demo.database()))? != rows {
        problems.push("the restored database rows differ".into());
    }
    if under(demo.config_dir()).join("scratch.tmp").exists() {
        problems.push("an excluded file was restored".into());
    }
    if !problems.is_empty() {
        for p in &problems {
            eprintln!("  DIFFERENCE: {p}");
        }
        bail!(
            "the restore differs from the original in {} places",
            problems.len()
        );
    }
    println!("  identical: every file's content, mode, mtime and symlink target, and all {} database rows", rows.len());
    println!(
        "\nDone. Try it yourself:\n  backup --config {} list\n  backup --config {} show {}",
        demo.config_path.display(),
        demo.config_path.display(),
        report.image
    );
    Ok(ExitCode::SUCCESS)
}
