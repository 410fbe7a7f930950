//! `backup drill`: a restore drill, and its lines in `backup status`.
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use backup_core::{DrillOptions, DrillReport, Outcome, StatusView};
use clap::Args;

use crate::report::{escape_control, human, outln, print_json, when};
use crate::Cli;

#[derive(Args)]
pub(crate) struct DrillArgs {
    /// Image name in the storage, or a path to an image file [default: the
    /// newest successful image of this node in the storage]
    image: Option<String>,
    /// Restore under a new directory inside DIR (which must exist) instead of
    /// the scratch space of the state directory; the new directory is removed
    /// afterwards, DIR never is
    #[arg(long, value_name = "DIR")]
    scratch: Option<PathBuf>,
    /// The time limit: 90s, 30m, 2h [default: the drill section's timeout, else 30m]
    #[arg(long, value_name = "DURATION")]
    timeout: Option<String>,
}

pub(crate) async fn drill(cli: &Cli, args: &DrillArgs) -> anyhow::Result<ExitCode> {
    let engine = crate::engine(cli)?;
    let mut opts = DrillOptions::default();
    opts.image = args.image.as_deref().map(|i| crate::image_ref(&engine, i));
    opts.scratch = args.scratch.clone();
    opts.timeout = args
        .timeout
        .as_deref()
        .map(backup_core::parse_duration)
        .transpose()
        .map_err(|e| backup_core::Error::Input(format!("--timeout: {e}")))?;
    let report = engine.drill(&opts).await.context("restore drill")?;
    if cli.json {
        print_json(&report)?;
    } else if !cli.quiet || report.outcome != Outcome::Success {
        print_report(&report)?;
    }
    Ok(match report.outcome {
        Outcome::Success => ExitCode::SUCCESS,
        _ => ExitCode::FAILURE,
    })
}

fn print_report(r: &DrillReport) -> anyhow::Result<()> {
    let image = escape_control(r.image.as_deref().unwrap_or("-"));
    match r.outcome {
        Outcome::Success => outln!(
            "drill success: {image} restored and checked in {} ({}; time limit {}s)",
            seconds(r.duration_ms),
            human(r.bytes),
            r.timeout_secs
        )?,
        outcome => outln!(
            "drill {outcome}: {image} after {} (time limit {}s)",
            seconds(r.duration_ms),
            r.timeout_secs
        )?,
    }
    if !r.restored.is_empty() {
        outln!("  restored:   {}", r.restored.join(", "))?;
    }
    for c in &r.checks {
        outln!(
            "  {:<12} {:<16} {}",
            c.component,
            c.check,
            match &c.reason {
                None => "passed".to_string(),
                Some(why) => format!("FAILED: {}", escape_control(why)),
            }
        )?;
    }
    for f in &r.failures {
        outln!("  failure:    {}", escape_control(f))?;
    }
    outln!(
        "  scratch:    {} ({})",
        escape_control(&r.scratch.display().to_string()),
        if r.scratch_removed {
            "removed"
        } else {
            "NOT removed"
        }
    )?;
    Ok(())
}

fn seconds(ms: u64) -> String {
    format!("{:.1} s", ms as f64 / 1000.0)
}

/// The drill lines of `backup status`: the last drill and the next one.
pub(crate) fn print_status(s: &StatusView) -> anyhow::Result<()> {
    match &s.last_drill {
        Some(r) => {
            outln!(
                "last drill:     {} {} {} in {}{}",
                when(&r.finished),
                r.outcome,
                escape_control(r.image.as_deref().unwrap_or("-")),
                seconds(r.duration_ms),
                if r.failures.is_empty() {
                    String::new()
                } else {
                    format!(": {}", escape_control(&r.failures.join("; ")))
                }
            )?;
        }
        None => outln!("last drill:     never")?,
    }
    match &s.next_drill {
        Some(t) => outln!("next drill:     {} — {}", when(t), s.drill_schedule)?,
        None => outln!("next drill:     {}", s.drill_schedule)?,
    }
    Ok(())
}
