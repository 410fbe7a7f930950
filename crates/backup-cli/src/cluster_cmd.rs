//! `backup cluster …`: backing up a cluster or an HA pair as one bundle,
//! and its bundles — listing them, showing one, writing one node's image
//! out of one, and the order in which to restore the nodes.
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context};
use backup_cluster::{ClusterOptions, ClusterReport};
use backup_core::cluster::{BundleNode, ClusterManifest};
use backup_core::{Engine, Outcome};
use clap::{Args, Subcommand};

use crate::report::{escape_control, human, outln, print_json, when};
use crate::{shell_word, Cli, EXIT_PARTIAL};

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
    /// List the cluster bundles in the storage: name, created, outcome, nodes ok/failed
    #[command(after_help = "Examples:\n  backup cluster list\n  backup --json cluster list")]
    List,
    /// Show a bundle's nodes from its manifest: name, role, outcome, image, size, restore order, error
    #[command(
        after_help = "Examples:\n  backup cluster show gw-edge.20261122T020000Z.tar\n  backup cluster show ./carried/edge.tar"
    )]
    Show {
        /// Bundle name in the storage, or a path to a bundle file
        bundle: String,
    },
    /// Write one node's image out of a bundle (a ranged read, checked against
    /// the bundle's manifest), to restore or carry it
    #[command(
        after_help = "Examples:\n  backup cluster extract gw-edge.20261122T020000Z.tar --node data-1\n  \
backup cluster extract ./edge.tar --node ctl-1 -o /media/usb/ctl-1.bkp"
    )]
    Extract {
        /// Bundle name in the storage, or a path to a bundle file
        bundle: String,
        /// The node whose image to write
        #[arg(long, value_name = "NAME")]
        node: String,
        /// The file to write (created atomically, mode 0600) [default: the
        /// image's own name in the current directory]
        #[arg(short, long, value_name = "FILE")]
        output: Option<PathBuf>,
    },
    /// Print the order in which to restore the nodes of a bundle (control or
    /// primary first, one at a time) and the command to run on each
    #[command(
        after_help = "Examples:\n  backup cluster restore-plan gw-edge.20261122T020000Z.tar"
    )]
    RestorePlan {
        /// Bundle name in the storage, or a path to a bundle file
        bundle: String,
    },
}

#[derive(Args)]
pub(crate) struct CreateArgs {
    /// Ask every node to include its audit components
    #[arg(long)]
    include_audits: bool,
}

pub(crate) async fn cluster(cli: &Cli, command: &ClusterCommand) -> anyhow::Result<ExitCode> {
    let engine = crate::engine(cli)?;
    match command {
        ClusterCommand::Create(args) => {
            let mut opts = ClusterOptions::default();
            opts.include_audits = args.include_audits;
            create(cli, &engine, &opts).await
        }
        ClusterCommand::List => list(cli, &engine).await,
        ClusterCommand::Show { bundle } => show(cli, &engine, bundle).await,
        ClusterCommand::Extract {
            bundle,
            node,
            output,
        } => extract(cli, &engine, bundle, node, output.clone()).await,
        ClusterCommand::RestorePlan { bundle } => restore_plan(cli, &engine, bundle).await,
    }
}

async fn list(cli: &Cli, engine: &Engine) -> anyhow::Result<ExitCode> {
    let bundles = engine.bundles().await.context("listing bundles")?;
    if cli.json {
        print_json(&bundles)?;
        return Ok(ExitCode::SUCCESS);
    }
    if bundles.is_empty() {
        outln!(
            "no cluster bundles in {}",
            engine.storage().map(|s| s.to_string()).unwrap_or_default()
        )?;
        return Ok(ExitCode::SUCCESS);
    }
    outln!(
        "{:<48} {:<20} {:<8} {:>4} {:>6} {:>10}",
        "BUNDLE",
        "CREATED",
        "OUTCOME",
        "OK",
        "FAILED",
        "SIZE"
    )?;
    for b in &bundles {
        match &b.manifest {
            Some(m) => {
                let failed = m.nodes.iter().filter(|n| n.outcome == "failed").count();
                outln!(
                    "{:<48} {:<20} {:<8} {:>4} {:>6} {:>10}",
                    escape_control(&b.name),
                    m.created.format("%Y-%m-%d %H:%M:%S").to_string(),
                    escape_control(&m.outcome),
                    m.nodes.len() - failed,
                    failed,
                    human(b.size)
                )?;
            }
            None => {
                outln!(
                    "{:<48} {:<20} {:<8} {:>4} {:>6} {:>10}",
                    escape_control(&b.name),
                    "?",
                    "?",
                    "?",
                    "?",
                    human(b.size)
                )?;
                if let Some(e) = &b.error {
                    outln!("    (details unavailable: {})", escape_control(e))?;
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn manifest(engine: &Engine, bundle: &str) -> anyhow::Result<ClusterManifest> {
    engine
        .bundle_manifest(crate::image_ref(engine, bundle))
        .await
        .with_context(|| format!("reading the manifest of {bundle}"))
}

async fn show(cli: &Cli, engine: &Engine, bundle: &str) -> anyhow::Result<ExitCode> {
    let m = manifest(engine, bundle).await?;
    if cli.json {
        print_json(&m)?;
        return Ok(ExitCode::SUCCESS);
    }
    outln!("bundle:   {}", escape_control(bundle))?;
    outln!("cluster:  {}", escape_control(&m.cluster))?;
    outln!("created:  {}", m.created.to_rfc3339())?;
    outln!("outcome:  {}", escape_control(&m.outcome))?;
    outln!(
        "{:<16} {:<10} {:<8} {:>5} {:>10}  IMAGE",
        "NODE",
        "ROLE",
        "OUTCOME",
        "ORDER",
        "SIZE"
    )?;
    for n in &m.nodes {
        outln!(
            "{:<16} {:<10} {:<8} {:>5} {:>10}  {}",
            escape_control(&n.name),
            n.role.as_str(),
            escape_control(&n.outcome),
            n.order,
            if n.image.is_some() {
                human(n.size)
            } else {
                "-".into()
            },
            escape_control(n.image.as_deref().unwrap_or("-"))
        )?;
        if let Some(e) = &n.error {
            outln!("    error: {}", escape_control(e))?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn extract(
    cli: &Cli,
    engine: &Engine,
    bundle: &str,
    node: &str,
    output: Option<PathBuf>,
) -> anyhow::Result<ExitCode> {
    let out = match output {
        Some(o) => o,
        None => {
            let m = manifest(engine, bundle).await?;
            let entry = m.nodes.iter().find(|n| n.name == node);
            // The image's own name, never a path out of the current
            // directory whatever the manifest says.
            match entry
                .and_then(|n| n.image.as_deref())
                .and_then(|i| i.rsplit('/').next())
            {
                Some(name) if !name.is_empty() && name != "." && name != ".." => {
                    PathBuf::from(name)
                }
                // Let the engine say why there is nothing to extract.
                _ => PathBuf::from(format!("{node}.bkp")),
            }
        }
    };
    let report = engine
        .extract_node(crate::image_ref(engine, bundle), node, &out)
        .await
        .with_context(|| format!("extracting node {node} from {bundle}"))?;
    if cli.json {
        print_json(&report)?;
    } else if !cli.quiet {
        let shown = escape_control(&out.display().to_string()).into_owned();
        outln!(
            "wrote the image of node {} ({}) to {shown} ({}, SHA-256 checked against the \
             bundle's manifest); restore it on {} with `backup restore {}`",
            escape_control(node),
            escape_control(&report.image),
            human(report.size),
            escape_control(node),
            shell_word(&out.display().to_string())
        )?;
    }
    Ok(ExitCode::SUCCESS)
}

/// The nodes of a bundle in restore order.
pub(crate) fn in_restore_order(m: &ClusterManifest) -> Vec<&BundleNode> {
    let mut nodes: Vec<&BundleNode> = m.nodes.iter().collect();
    nodes.sort_by_key(|n| n.order);
    nodes
}

/// One line of advice: the restore order of a bundle's nodes.
pub(crate) fn order_advice(m: &ClusterManifest) -> String {
    let steps: Vec<String> = in_restore_order(m)
        .iter()
        .map(|n| format!("{}. {} ({})", n.order, n.name, n.role.as_str()))
        .collect();
    format!(
        "cluster {}: restore one node at a time, in this order: {}",
        m.cluster,
        steps.join(", ")
    )
}

async fn restore_plan(cli: &Cli, engine: &Engine, bundle: &str) -> anyhow::Result<ExitCode> {
    let m = manifest(engine, bundle).await?;
    let word = shell_word(bundle);
    let steps: Vec<serde_json::Value> = in_restore_order(&m)
        .iter()
        .map(|n| {
            let command = n
                .image
                .as_ref()
                .map(|_| format!("backup restore {word} --node {}", shell_word(&n.name)));
            serde_json::json!({
                "order": n.order,
                "node": n.name,
                "role": n.role,
                "outcome": n.outcome,
                "command": command,
                "error": n.error,
            })
        })
        .collect();
    if cli.json {
        print_json(&serde_json::json!({
            "bundle": bundle,
            "cluster": m.cluster,
            "created": m.created,
            "steps": steps,
        }))?;
        return Ok(ExitCode::SUCCESS);
    }
    outln!(
        "Restore plan for {} (cluster {}, created {}, outcome {}).",
        escape_control(bundle),
        escape_control(&m.cluster),
        when(&m.created),
        escape_control(&m.outcome)
    )?;
    outln!(
        "Restore one node at a time, control (or primary) first: each restore takes the \
         bundle's restore lease, and a second one is refused (exit 4) until the first ends."
    )?;
    for n in in_restore_order(&m) {
        let name = escape_control(&n.name);
        match &n.image {
            Some(_) => outln!(
                "  {}. {name} ({}): on {name}, run  backup restore {word} --node {}",
                n.order,
                n.role.as_str(),
                shell_word(&n.name)
            )?,
            None => outln!(
                "  {}. {name} ({}): no image in this bundle ({}) — restore it from an earlier bundle",
                n.order,
                n.role.as_str(),
                escape_control(n.error.as_deref().unwrap_or("its backup failed"))
            )?,
        }
    }
    outln!(
        "Add --dry-run to a restore to see what it would change first; a node's image restores \
         only on that node."
    )?;
    Ok(ExitCode::SUCCESS)
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
    for name in &report.pruned {
        outln!("pruned (retention): {}", escape_control(name))?;
    }
    Ok(())
}
