//! How results and progress are shown: human text or JSON.
use std::io::IsTerminal;
use std::sync::Mutex;
use std::time::Instant;

use backup_core::{Event, Progress};

/// Prints progress events on standard error: one line per component with `-v`,
/// JSON lines with `--json`, nothing otherwise (warnings always).
pub(crate) struct Reporter {
    verbose: bool,
    json: bool,
    started: Mutex<Option<(String, Instant, u64)>>,
}

impl Reporter {
    pub(crate) fn new(verbose: bool, json: bool) -> Reporter {
        Reporter {
            verbose,
            json,
            started: Mutex::new(None),
        }
    }
}

impl Progress for Reporter {
    fn event(&self, event: &Event) {
        if self.json {
            if let Ok(line) = serde_json::to_string(event) {
                eprintln!("{line}");
            }
            return;
        }
        match event {
            Event::Warning { component, message } => match component {
                Some(c) => eprintln!("warning: {c}: {message}"),
                None => eprintln!("warning: {message}"),
            },
            Event::Step { message } if self.verbose => eprintln!("{message}"),
            Event::ComponentStarted { component, .. } if self.verbose => {
                *self.started.lock().expect("reporter") =
                    Some((component.clone(), Instant::now(), 0));
                if std::io::stderr().is_terminal() {
                    eprintln!("  {component}: started");
                }
            }
            Event::Bytes { bytes, .. } if self.verbose => {
                if let Some(s) = self.started.lock().expect("reporter").as_mut() {
                    s.2 += bytes;
                }
            }
            Event::ComponentFinished {
                component,
                outcome,
                entries,
                bytes,
                error,
            } if self.verbose => {
                let secs = self
                    .started
                    .lock()
                    .expect("reporter")
                    .take()
                    .map(|(_, t, _)| t.elapsed().as_secs_f64())
                    .unwrap_or(0.0);
                match error {
                    Some(e) => eprintln!("  {component}: {outcome} after {secs:.1}s: {e}"),
                    None => eprintln!(
                        "  {component}: {outcome}, {entries} entries, {} in {secs:.1}s",
                        human(*bytes)
                    ),
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
