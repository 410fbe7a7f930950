//! `backup quickstart`: a demo appliance backed up and restored with no setup.
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{bail, Context};
use backup_core::demo::{build_demo, sqlite_rows, tree_diff, DEMO_SECRET};
use backup_core::{
    CreateOptions, Engine, KdfParams, Passphrase, PassphraseProvider, RestoreOptions,
};

use crate::report::{human, outln};

/// A line of the demo's story: on stdout, or a JSON `step` event on stderr
/// with `--json` (stdout then carries one JSON document at the end).
macro_rules! say {
    ($json:expr, $($arg:tt)*) => {
        if $json {
            crate::report::notice(true, format!($($arg)*).trim());
            Ok::<(), anyhow::Error>(())
        } else {
            outln!($($arg)*)
        }
    };
}

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

fn step(json: bool, n: u32, text: &str) -> anyhow::Result<()> {
    say!(json, "\n[{n}/7] {text}")
}

pub(crate) async fn run(dir: Option<PathBuf>, json: bool) -> anyhow::Result<ExitCode> {
    let dir = match dir {
        Some(d) => d,
        None => std::env::temp_dir().join(format!(
            "backup-quickstart-{}",
            chrono::Utc::now().format("%Y%m%dT%H%M%S%.3fZ")
        )),
    };
    let dir = std::path::absolute(&dir).context("resolving the demo directory")?;
    say!(
        json,
        "backup quickstart: a demo appliance in {}",
        dir.display()
    )?;

    step(
        json,
        1,
        "building the demo appliance: config tree, SQLite internal database, audit logs",
    )?;
    let demo = build_demo(&dir, DEMO_KDF_MIB)?;
    let rows = sqlite_rows(&demo.database())?;
    say!(json, "  config tree  {}", demo.config_dir().display())?;
    say!(
        json,
        "  database     {} ({} rows)",
        demo.database().display(),
        rows.len()
    )?;
    say!(json, "  audit logs   {}", demo.audit_dir().display())?;
    say!(json, "  config file  {}", demo.config_path.display())?;

    step(
        json,
        2,
        "setting the domain master secret (a clearly labelled DEMO secret; never reuse it)",
    )?;
    let pass = Passphrase::new(DEMO_SECRET.to_string())?;
    let params = KdfParams {
        memory_kib: DEMO_KDF_MIB * 1024,
        ..KdfParams::SMALL
    };
    let id = backup_core::init_keys(&demo.config.appliance.state_dir, &pass, params)?;
    say!(
        json,
        "  key id {id}; keyring and 0600 master key file in {}",
        demo.config.appliance.state_dir.display()
    )?;

    let engine = Engine::builder(demo.config.clone()).build()?;
    step(
        json,
        3,
        "backing up every component, audits included, to the local store",
    )?;
    let mut opts = CreateOptions::default();
    opts.include_audits = true;
    let report = engine.create(&opts).await.context("demo backup")?;
    say!(
        json,
        "  {} → {} ({}, {})",
        report.location,
        report.image,
        report.outcome,
        human(report.size)
    )?;
    for c in &report.manifest.components {
        say!(
            json,
            "    {:<8} {:<8} {:>4} entries {:>10}",
            c.name,
            c.outcome.as_str(),
            c.entries,
            human(c.bytes)
        )?;
    }

    step(json, 4, "listing the store")?;
    for image in engine.list().await? {
        let outcome = image
            .sidecar
            .as_ref()
            .map(|s| s.manifest.outcome.as_str())
            .unwrap_or("?");
        say!(json, "  {}  {}  {}", image.name, outcome, human(image.size))?;
    }

    step(
        json,
        5,
        "verifying: full decrypt, decompress and checksum of every component",
    )?;
    let verified = engine.verify(&report.image).await.context("demo verify")?;
    say!(
        json,
        "  ok: {} verified against the manifest",
        verified.verified.join(", ")
    )?;

    step(json, 6, "restoring into a fresh directory, as a bare replacement machine would (passphrase, no key file)")?;
    let bare = Engine::builder(demo.config.clone())
        .key_source(Box::new(NoKeyFile))
        .passphrase_provider(Arc::new(Fixed(DEMO_SECRET)))
        .build()?;
    let wrong = Engine::builder(demo.config.clone())
        .key_source(Box::new(NoKeyFile))
        .passphrase_provider(Arc::new(Fixed("not the demo secret")))
        .build()?;
    match wrong.verify(&report.image).await {
        Err(e) => say!(json, "  a wrong passphrase is refused: {e}")?,
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
    say!(
        json,
        "  restored {} under {}",
        restored.restored.join(", "),
        target.display()
    )?;

    step(json, 7, "proving the restore equals the original")?;
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
            crate::report::warn(json, &format!("DIFFERENCE: {p}"));
        }
        bail!(
            "the restore differs from the original in {} places",
            problems.len()
        );
    }
    say!(json, "  identical: every file's content, mode, mtime and symlink target, and all {} database rows", rows.len())?;
    if json {
        crate::report::print_json(&serde_json::json!({
            "dir": dir,
            "config": demo.config_path,
            "image": report.image,
            "outcome": report.outcome,
            "size": report.size,
            "verified": verified.verified,
            "restored": restored.restored,
            "target": target,
            "identical": true,
        }))?;
        return Ok(ExitCode::SUCCESS);
    }
    say!(
        json,
        "\nDone. Try it yourself:\n  backup --config {} list\n  backup --config {} show {}",
        demo.config_path.display(),
        demo.config_path.display(),
        report.image
    )?;
    Ok(ExitCode::SUCCESS)
}
