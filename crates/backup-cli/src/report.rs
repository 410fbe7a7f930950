//! How results and progress are shown: bars on a terminal, plain lines
//! otherwise, JSON lines with `--json`.
//!
//! Results go to standard output through [`outln!`], which turns a reader
//! that went away (`backup list | head -1`) into [`StdoutClosed`] instead of
//! a panic. Everything else (progress, warnings, notes) goes to standard
//! error, as JSON lines with `--json`.
use std::borrow::Cow;
use std::fmt;
use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use backup_core::{
    ComponentPlan, Event, Progress, RestoreApproval, RestorePlan, RestoreSummary, SpaceNeed,
};
use indicatif::{ProgressBar, ProgressStyle};

/// Standard output was closed by its reader (a pipe into `head`): the
/// command stops and exits quietly, like other Unix tools.
#[derive(Debug)]
pub(crate) struct StdoutClosed;

impl fmt::Display for StdoutClosed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("standard output was closed")
    }
}

impl std::error::Error for StdoutClosed {}

/// Set while standard output carries an image (`create -o -`): results then
/// go to standard error, JSON on one line so it stays JSON lines there.
static RESULTS_ON_STDERR: AtomicBool = AtomicBool::new(false);

pub(crate) fn results_on_stderr() {
    RESULTS_ON_STDERR.store(true, Ordering::SeqCst);
}

/// The spinner on a terminal, shared so that anything printed afterwards
/// (a result, an error) first clears it.
static BAR: Mutex<Option<ProgressBar>> = Mutex::new(None);

/// Finishes and clears the spinner, if one is drawn.
pub(crate) fn clear_progress() {
    let bar = BAR.lock().unwrap_or_else(|p| p.into_inner()).take();
    if let Some(b) = bar {
        b.finish_and_clear();
    }
}

/// Writes one line of a command's result on standard output.
pub(crate) fn write_out(args: fmt::Arguments<'_>) -> anyhow::Result<()> {
    clear_progress();
    let mut out = std::io::stdout().lock();
    out.write_fmt(args)
        .and_then(|()| out.write_all(b"\n"))
        .map_err(stdout_error)
}

/// Writes text as it is (it carries its own line ends) on standard output.
pub(crate) fn write_raw(text: &str) -> anyhow::Result<()> {
    clear_progress();
    std::io::stdout()
        .lock()
        .write_all(text.as_bytes())
        .map_err(stdout_error)
}

fn stdout_error(e: std::io::Error) -> anyhow::Error {
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        StdoutClosed.into()
    } else {
        anyhow::Error::new(e).context("writing to standard output")
    }
}

/// `println!` for results: fails (rather than panics) when standard output
/// cannot be written. Use with `?`.
macro_rules! outln {
    ($($arg:tt)*) => {
        $crate::report::write_out(format_args!($($arg)*))
    };
}
pub(crate) use outln;

/// Writes a line on standard error; a closed standard error is no reason to
/// panic.
fn err_line(line: &str) {
    let mut err = std::io::stderr().lock();
    let _ = err.write_all(line.as_bytes());
    let _ = err.write_all(b"\n");
}

/// Whether standard error takes colour: a terminal, and `NO_COLOR` unset
/// (or empty, as no-color.org says).
pub(crate) fn colour() -> bool {
    std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

/// Text with control characters (a file name holding an escape sequence or a
/// line break) shown escaped, so it cannot rewrite the operator's terminal or
/// forge lines of output.
pub(crate) fn escape_control(s: &str) -> Cow<'_, str> {
    if !s.chars().any(char::is_control) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// Like [`escape_control`], but keeps line breaks (and tabs) of a
/// multi-line text such as a backup's log.
pub(crate) fn escape_control_lines(s: &str) -> String {
    s.split_inclusive('\n')
        .map(|line| {
            let (body, end) = match line.strip_suffix('\n') {
                Some(b) => (b, "\n"),
                None => (line, ""),
            };
            let body: String = body
                .split('\t')
                .map(|part| escape_control(part).into_owned())
                .collect::<Vec<_>>()
                .join("\t");
            format!("{body}{end}")
        })
        .collect()
}

/// A note for the operator on standard error (a JSON `step` event with `--json`).
pub(crate) fn notice(json: bool, message: &str) {
    if json {
        json_event(&Event::Step {
            message: message.to_string(),
        });
    } else {
        err_line(&escape_control(message));
    }
}

/// A warning on standard error (a JSON `warning` event with `--json`).
pub(crate) fn warn(json: bool, message: &str) {
    if json {
        json_event(&Event::Warning {
            component: None,
            message: message.to_string(),
        });
    } else {
        err_line(&format!("warning: {}", escape_control(message)));
    }
}

fn json_event(event: &Event) {
    if let Ok(line) = serde_json::to_string(event) {
        err_line(&line);
    }
}

enum Mode {
    Json,
    Bars,
    Lines,
}

/// Prints progress events on standard error.
pub(crate) struct Reporter {
    mode: Mode,
    verbose: bool,
    quiet: bool,
    started: Mutex<Option<Instant>>,
}

impl Reporter {
    pub(crate) fn new(verbose: bool, quiet: bool, json: bool) -> Reporter {
        let mode = if json {
            Mode::Json
        } else if std::io::stderr().is_terminal() {
            Mode::Bars
        } else {
            Mode::Lines
        };
        Reporter {
            mode,
            verbose,
            quiet,
            started: Mutex::new(None),
        }
    }

    fn say(&self, line: &str) {
        let line = escape_control(line);
        let bar = BAR.lock().unwrap_or_else(|p| p.into_inner());
        match (&self.mode, bar.as_ref()) {
            (Mode::Bars, Some(b)) => b.println(line),
            _ => err_line(&line),
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
            if !self.quiet || matches!(event, Event::Warning { .. }) {
                json_event(event);
            }
            return;
        }
        match event {
            Event::Warning { component, message } => match component {
                Some(c) => self.say(&format!("warning: {c}: {message}")),
                None => self.say(&format!("warning: {message}")),
            },
            Event::Step { message } => {
                // A new step ends the current bar (a prompt may follow).
                clear_progress();
                if self.verbose {
                    self.say(message);
                }
            }
            Event::RunFinished {
                time,
                image,
                outcome,
                reason,
            } => self.say(&format!(
                "{} scheduled backup {}: {outcome}{}",
                when(time),
                image.as_deref().unwrap_or("-"),
                reason
                    .as_ref()
                    .map(|r| format!(" ({r})"))
                    .unwrap_or_default()
            )),
            Event::ComponentStarted { component, kind } => {
                *self.started.lock().expect("reporter") = Some(Instant::now());
                match &self.mode {
                    Mode::Bars if !self.quiet => {
                        let b = ProgressBar::new_spinner();
                        b.set_style(
                            ProgressStyle::with_template(
                                "{spinner} {msg} {bytes} ({bytes_per_sec}, {elapsed})",
                            )
                            .expect("valid template"),
                        );
                        b.set_message(
                            escape_control(&format!("{component} ({kind})")).into_owned(),
                        );
                        b.enable_steady_tick(std::time::Duration::from_millis(120));
                        let old = BAR.lock().unwrap_or_else(|p| p.into_inner()).replace(b);
                        if let Some(old) = old {
                            old.finish_and_clear();
                        }
                    }
                    _ => {
                        if self.verbose {
                            self.say(&format!("  {component}: started"));
                        }
                    }
                }
            }
            Event::Bytes { bytes, .. } => {
                if let Some(b) = BAR.lock().unwrap_or_else(|p| p.into_inner()).as_ref() {
                    b.inc(*bytes);
                }
            }
            Event::ComponentFinished {
                component,
                outcome,
                entries,
                bytes,
                error,
            } => {
                clear_progress();
                let secs = self.elapsed();
                // Per-component lines only with -v, so that cron mails only
                // problems; a failed component is one.
                match error {
                    Some(e) => self.say(&format!("  {component}: {outcome} after {secs:.1}s: {e}")),
                    None if self.verbose => self.say(&format!(
                        "  {component}: {outcome}, {entries} entries, {} in {secs:.1}s",
                        human(*bytes)
                    )),
                    None => {}
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

/// Prints a value as JSON on standard output: pretty, or on one line while
/// standard output carries an image and results go to standard error.
pub(crate) fn print_json<T: serde::Serialize>(value: &T) -> anyhow::Result<()> {
    if RESULTS_ON_STDERR.load(Ordering::SeqCst) {
        outln!("{}", serde_json::to_string(value)?)
    } else {
        outln!("{}", serde_json::to_string_pretty(value)?)
    }
}

/// Log records of `tracing` as JSON lines (`{"event": "log", "level": …}`),
/// so that with `--json` every line on standard error is JSON.
pub(crate) struct JsonLog;

impl<S, N> tracing_subscriber::fmt::FormatEvent<S, N> for JsonLog
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    N: for<'a> tracing_subscriber::fmt::FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        _ctx: &tracing_subscriber::fmt::FmtContext<'_, S, N>,
        mut writer: tracing_subscriber::fmt::format::Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> fmt::Result {
        let mut fields = serde_json::Map::new();
        event.record(&mut JsonFields(&mut fields));
        let meta = event.metadata();
        fields.insert("event".into(), "log".into());
        fields.insert(
            "level".into(),
            meta.level().to_string().to_lowercase().into(),
        );
        fields.insert("target".into(), meta.target().into());
        let line = serde_json::to_string(&fields).map_err(|_| fmt::Error)?;
        writeln!(writer, "{line}")
    }
}

struct JsonFields<'a>(&'a mut serde_json::Map<String, serde_json::Value>);

impl tracing::field::Visit for JsonFields<'_> {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn fmt::Debug) {
        self.0
            .insert(field.name().into(), format!("{value:?}").into());
    }
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_u64(&mut self, field: &tracing::field::Field, value: u64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_i64(&mut self, field: &tracing::field::Field, value: i64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_bool(&mut self, field: &tracing::field::Field, value: bool) {
        self.0.insert(field.name().into(), value.into());
    }
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
                writeln!(
                    out,
                    "    {label} {}",
                    escape_control(&p.display().to_string())
                )?;
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
    print_summary(out, &plan.summary)
}

/// The post-restore report after the restored components: what the image
/// holds that was not restored, what this appliance has that the image
/// lacks, each with why, and the operator's `after_restore` notes.
pub(crate) fn print_summary(
    out: &mut dyn std::io::Write,
    summary: &RestoreSummary,
) -> std::io::Result<()> {
    for a in &summary.not_restored {
        writeln!(
            out,
            "  not restored: {} ({})",
            a.component,
            escape_control(&a.reason)
        )?;
    }
    for a in &summary.not_in_image {
        writeln!(
            out,
            "  not in the image: {} ({})",
            a.component,
            escape_control(&a.reason)
        )?;
    }
    for n in &summary.notes {
        writeln!(
            out,
            "  after restoring {}: {}",
            n.component,
            escape_control(&n.note)
        )?;
    }
    Ok(())
}

/// The room staging needs, per component and file system, as the restore
/// checks it before staging anything.
pub(crate) fn print_space(out: &mut dyn std::io::Write, rows: &[SpaceNeed]) -> std::io::Result<()> {
    if rows.is_empty() {
        return Ok(());
    }
    writeln!(out, "room to stage (checked before anything is written):")?;
    for line in backup_core::space_table(rows).lines() {
        writeln!(out, "  {}", escape_control(line))?;
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

/// A time as the CLI shows it: `2026-11-29 18:47:07 UTC`.
pub(crate) fn when(t: &chrono::DateTime<chrono::Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%S UTC").to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_escaped_and_plain_text_is_not_copied() {
        assert!(matches!(escape_control("a b/é.conf"), Cow::Borrowed(_)));
        assert_eq!(
            escape_control("evil\x1b[2Jname\nwarning: forged\r\x7f"),
            "evil\\u{1b}[2Jname\\nwarning: forged\\r\\u{7f}"
        );
        assert_eq!(
            escape_control_lines("one\x1b]0;x\x07\n\ttwo\n"),
            "one\\u{1b}]0;x\\u{7}\n\ttwo\n"
        );
    }
}
