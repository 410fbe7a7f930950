//! How results and progress are shown: bars on a terminal, plain lines
//! otherwise, JSON lines with `--json`.
use std::io::{IsTerminal, Write};
use std::sync::Mutex;
use std::time::Instant;

use backup_core::{ComponentPlan, Event, Progress, RestoreApproval, RestorePlan};
use indicatif::{ProgressBar, ProgressStyle};

enum Mode {
    Json,
    Bars(Mutex<Option<ProgressBar>>),
    Lines,
}

/// Prints progress events on standard error.
pub(crate) struct Reporter {
    mode: Mode,
    verbose: bool,
    started: Mutex<Option<Instant>>,
}

impl Reporter {
    pub(crate) fn new(verbose: bool, json: bool) -> Reporter {
        let mode = if json {
            Mode::Json
        } else if std::io::stderr().is_terminal() {
            Mode::Bars(Mutex::new(None))
        } else {
            Mode::Lines
        };
        Reporter {
            mode,
            verbose,
            started: Mutex::new(None),
        }
    }

    fn say(&self, line: String) {
        match &self.mode {
            Mode::Bars(bar) => match bar.lock().expect("bar").as_ref() {
                Some(b) => b.println(line),
                None => eprintln!("{line}"),
            },
            _ => eprintln!("{line}"),
        }
    }

    fn elapsed(&self) -> f64 {
        self.started
            .lock()
            .expect("reporter")
            .take()
            .map(|t| t.elapsed().as_secs_f64())
            .unwrap_or(0.0)
    }
}

impl Progress for Reporter {
    fn event(&self, event: &Event) {
        if let Mode::Json = self.mode {
            if let Ok(line) = serde_json::to_string(event) {
                eprintln!("{line}");
            }
            return;
        }
        match event {
            Event::Warning { component, message } => match component {
                Some(c) => self.say(format!("warning: {c}: {message}")),
                None => self.say(format!("warning: {message}")),
            },
            Event::Step { message } => {
                // A new step ends the current bar (a prompt may follow).
                if let Mode::Bars(bar) = &self.mode {
                    if let Some(b) = bar.lock().expect("bar").take() {
                        b.finish_and_clear();
                    }
                }
                if self.verbose {
                    self.say(message.clone());
                }
            }
            Event::RunFinished {
                time,
                image,
                outcome,
                reason,
            } => self.say(format!(
                "{} scheduled backup {}: {outcome}{}",
                time.format("%Y-%m-%d %H:%M:%S UTC"),
                image.as_deref().unwrap_or("-"),
                reason
                    .as_ref()
                    .map(|r| format!(" ({r})"))
                    .unwrap_or_default()
            )),
            Event::ComponentStarted { component, kind } => {
                *self.started.lock().expect("reporter") = Some(Instant::now());
                match &self.mode {
                    Mode::Bars(bar) => {
                        let b = ProgressBar::new_spinner();
                        b.set_style(
                            ProgressStyle::with_template(
                                "{spinner} {msg} {bytes} ({bytes_per_sec}, {elapsed})",
                            )
                            .expect("valid template"),
                        );
                        b.set_message(format!("{component} ({kind})"));
                        b.enable_steady_tick(std::time::Duration::from_millis(120));
                        if let Some(old) = bar.lock().expect("bar").replace(b) {
                            old.finish_and_clear();
                        }
                    }
                    _ => {
                        if self.verbose {
                            eprintln!("  {component}: started");
                        }
                    }
                }
            }
            Event::Bytes { bytes, .. } => {
                if let Mode::Bars(bar) = &self.mode {
                    if let Some(b) = bar.lock().expect("bar").as_ref() {
                        b.inc(*bytes);
                    }
                }
            }
            Event::ComponentFinished {
                component,
                outcome,
                entries,
                bytes,
                error,
            } => {
                if let Mode::Bars(bar) = &self.mode {
                    if let Some(b) = bar.lock().expect("bar").take() {
                        b.finish_and_clear();
                    }
                }
                let secs = self.elapsed();
                match error {
                    Some(e) => self.say(format!("  {component}: {outcome} after {secs:.1}s: {e}")),
                    None => self.say(format!(
                        "  {component}: {outcome}, {entries} entries, {} in {secs:.1}s",
                        human(*bytes)
                    )),
                }
            }
            _ => {}
        }
    }
}

/// Bytes for people.
pub(crate) fn human(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// Prints a value as pretty JSON on standard output.
pub(crate) fn print_json<T: serde::Serialize>(value: &T) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

/// Lines of a list shown when asking for confirmation; `--dry-run` shows all.
const ASK_LIST_LIMIT: usize = 20;

/// One line per component: what the restore does to it, in counts.
pub(crate) fn plan_counts(c: &ComponentPlan) -> String {
    let mut line = format!(
        "{} ({}): {} replaced, {} added, {} removed, {} kept (excluded)",
        c.name, c.kind, c.replaced.count, c.added.count, c.removed.count, c.kept.count
    );
    if let Some(action) = &c.action {
        line.push_str("; ");
        line.push_str(action);
    }
    line
}

/// Writes a restore plan for people: per component its counts, then the
/// removed, added, replaced and kept paths (at most `limit` of each).
pub(crate) fn print_plan(
    out: &mut dyn std::io::Write,
    plan: &RestorePlan,
    limit: Option<usize>,
) -> std::io::Result<()> {
    match &plan.target {
        Some(t) => writeln!(
            out,
            "restore plan for {} under {}:",
            plan.image,
            t.display()
        )?,
        None => writeln!(out, "restore plan for {} (in place):", plan.image)?,
    }
    for c in &plan.components {
        writeln!(out, "  {}", plan_counts(c))?;
        for (label, list) in [
            ("remove ", &c.removed),
            ("add    ", &c.added),
            ("replace", &c.replaced),
            ("keep   ", &c.kept),
        ] {
            let shown = limit.unwrap_or(usize::MAX).min(list.paths.len());
            for p in &list.paths[..shown] {
                writeln!(out, "    {label} {}", p.display())?;
            }
            if (shown as u64) < list.count {
                writeln!(
                    out,
                    "    … and {} more to {} (--dry-run lists them all)",
                    list.count - shown as u64,
                    label.trim_end()
                )?;
            }
        }
    }
    for s in &plan.skipped_failed {
        writeln!(out, "  skipped {s}: it failed when the image was made")?;
    }
    for s in &plan.left_out {
        writeln!(
            out,
            "  not restored: {s} (audit records; pass --include-audits to restore them)"
        )?;
    }
    Ok(())
}

/// Shows the plan on standard error and asks on the terminal whether to go
/// ahead; anything but `y`/`yes` declines.
pub(crate) struct AskOnTerminal;

impl RestoreApproval for AskOnTerminal {
    fn approve(&self, plan: &RestorePlan) -> bool {
        let mut err = std::io::stderr().lock();
        if print_plan(&mut err, plan, Some(ASK_LIST_LIMIT)).is_err() {
            return false;
        }
        let _ = write!(err, "Go ahead with this restore? [y/N] ");
        let _ = err.flush();
        drop(err);
        let mut answer = String::new();
        if std::io::stdin().read_line(&mut answer).is_err() {
            return false;
        }
        matches!(answer.trim().to_lowercase().as_str(), "y" | "yes")
    }
}
