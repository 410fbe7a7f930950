//! `backup cluster …`: backing up a cluster or an HA pair as one bundle.
use std::process::ExitCode;

use anyhow::{bail, Context};
use backup_cluster::{ClusterOptions, ClusterReport};
use backup_core::{Engine, Outcome};
use clap::{Args, Subcommand};

use crate::report::{escape_control, human, outln, print_json};
use crate::{Cli, EXIT_PARTIAL};

/// `backup cluster`.
#[derive(Subcommand)]
pub(crate) enum ClusterCommand {
    /// Back up every node of [cluster] into one bundle
    /// ({prefix}{cluster}.{UTC time}.tar): control/primary first, then the
    /// others; a failed data/secondary node is recorded (exit 3), a failed
    /// control/primary node cancels the backup (exit 1, nothing published)
    #[command(after_help = "Examples:\n  backup cluster create\n  \
backup cluster create --include-audits\n  \
backup --json cluster create    the report as JSON (outcome, bundle, size, per node)\n  \
tar -tvf /var/backups/edge.20260101T020000Z.tar    the manifest first, then one image per node\n\n\
Exit codes: 0 every node backed up, 3 partial (a data/secondary node failed or its image is \
partial; the bundle holds the others), 1 failed (a control/primary node failed: no bundle), \
4 another backup or restore runs on this machine.")]
    Create(CreateArgs),
}

#[derive(Args)]
pub(crate) struct CreateArgs {
    /// Ask every node to include its audit components
    #[arg(long)]
    include_audits: bool,
}

pub(crate) async fn cluster(cli: &Cli, command: &ClusterCommand) -> anyhow::Result<ExitCode> {
    match command {
        ClusterCommand::Create(args) => {
            let engine = crate::engine(cli)?;
            let mut opts = ClusterOptions::default();
            opts.include_audits = args.include_audits;
            create(cli, &engine, &opts).await
        }
    }
}

async fn create(cli: &Cli, engine: &Engine, opts: &ClusterOptions) -> anyhow::Result<ExitCode> {
    let report = backup_cluster::create(engine, opts)
        .await
        .context("cluster backup failed")?;
    if cli.json {
        print_json(&report)?;
    } else if !cli.quiet || report.outcome != Outcome::Success {
        print_report(&report)?;
    }
    match report.outcome {
        Outcome::Success => Ok(ExitCode::SUCCESS),
        Outcome::Failed if cli.json => Ok(ExitCode::FAILURE),
        Outcome::Failed => bail!(
            "cluster backup failed: {}",
            report.reason.as_deref().unwrap_or("no reason recorded")
        ),
        _ => Ok(ExitCode::from(EXIT_PARTIAL)),
    }
}

fn print_report(report: &ClusterReport) -> anyhow::Result<()> {
    match &report.bundle {
        Some(bundle) => outln!(
            "{}: {} ({})",
            report.outcome,
            escape_control(bundle),
            human(report.size)
        )?,
        None => outln!("{}: no bundle was published", report.outcome)?,
    }
    for n in &report.nodes {
        let detail = match (&n.image, &n.error) {
            (Some(image), None) => format!("{image} ({})", human(n.size)),
            (Some(image), Some(e)) => format!("{image} ({}): {e}", human(n.size)),
            (None, Some(e)) => e.clone(),
            (None, None) => "-".into(),
        };
        outln!(
            "  {:<12} {:<9} {:<8} {}",
            escape_control(&n.name),
            n.role.as_str(),
            n.outcome,
            escape_control(&detail)
        )?;
    }
    Ok(())
}
