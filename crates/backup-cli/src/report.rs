//! How results and progress are shown: bars on a terminal, plain lines
//! otherwise, JSON lines with `--json`.
use std::io::IsTerminal;
use std::sync::Mutex;
use std::time::Instant;

use backup_core::{Event, Progress};
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
            Event::Step { message } if self.verbose => self.say(message.clone()),
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
