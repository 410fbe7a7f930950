//! `backup copy`: a stored image to a second storage by hand, and how
//! copies are shown (after `backup create`, in `backup status`).
use std::process::ExitCode;

use anyhow::Context;
use backup_core::{CopyConfig, CopyOutcome, CopyRecord, Error};
use clap::Args;

use crate::report::{escape_control, human, outln, print_json, when};
use crate::Cli;

#[derive(Args)]
pub(crate) struct CopyArgs {
    /// Image name in the configured storage
    image: String,
    /// Copy to this storage URL (file://, nfs://, s3://, ftp://, ftps://,
    /// sftp://) instead of every configured destination; passwords never go
    /// in it (they come from the environment or ~/.netrc, as for the storage)
    #[arg(long, value_name = "URL")]
    to: Option<String>,
}

pub(crate) async fn copy(cli: &Cli, args: &CopyArgs) -> anyhow::Result<ExitCode> {
    let engine = crate::engine(cli)?;
    let to = args
        .to
        .as_deref()
        .map(|url| destination(url, engine.config()))
        .transpose()?;
    let records = engine
        .copy(&args.image, to.as_ref())
        .await
        .with_context(|| format!("copying {}", args.image))?;
    if cli.json {
        print_json(&records)?;
    } else if !cli.quiet || records.iter().any(|r| !r.outcome.is_ok()) {
        for r in &records {
            print_record(r)?;
        }
    }
    Ok(if records.iter().all(|r| r.outcome.is_ok()) {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// The destination `--to URL` names, with the SSH key and host key of
/// `[storage]`. A password in the URL is refused: it would sit in argv.
fn destination(url: &str, config: &backup_core::Config) -> anyhow::Result<CopyConfig> {
    if let Some((_, rest)) = url.split_once("://") {
        let authority = rest.split('/').next().unwrap_or_default();
        if let Some((user, _)) = authority.rsplit_once('@') {
            if user.contains(':') {
                return Err(Error::Input(
                    "--to URL holds a password, which would show in the process list: leave it out of the URL and give it as for the storage (BACKUP_FTP_PASSWORD, ~/.netrc, BACKUP_SSH_PASSWORD, the AWS environment)".into(),
                )
                .into());
            }
        }
    }
    Ok(CopyConfig::new(url).with_storage_keys(&config.storage))
}

/// One copy as a line (and its reason, retention under it).
pub(crate) fn print_record(r: &CopyRecord) -> anyhow::Result<()> {
    let what = match r.outcome {
        CopyOutcome::Copied => format!("copied and verified ({})", human(r.bytes)),
        CopyOutcome::Present => format!("already there, verified ({})", human(r.bytes)),
        other => other.to_string(),
    };
    outln!(
        "  copy to {}: {}{}",
        escape_control(&r.place()),
        what,
        r.reason
            .as_deref()
            .map(|why| format!(": {}", escape_control(why)))
            .unwrap_or_default()
    )?;
    for name in &r.pruned {
        outln!(
            "    deleted there by its retention: {}",
            escape_control(name)
        )?;
    }
    if let Some(e) = &r.retention_error {
        outln!("    its retention could not run: {}", escape_control(e))?;
    }
    Ok(())
}

/// The `copies:` lines of `backup status`: each destination's last copy.
pub(crate) fn print_status(records: &[CopyRecord]) -> anyhow::Result<()> {
    for r in records {
        outln!(
            "last copy:      {} to {}: {} {}{}",
            when(&r.time),
            escape_control(&r.place()),
            r.outcome,
            escape_control(&r.image),
            r.reason
                .as_deref()
                .map(|why| format!(": {}", escape_control(why)))
                .unwrap_or_default()
        )?;
    }
    Ok(())
}
