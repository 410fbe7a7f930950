//! Hook commands run around a backup.
use std::process::{Command, Stdio};

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// `[hooks]`: argv arrays run before a backup, after a published one, and
/// after a failed one. They get `BACKUP_OUTCOME`, `BACKUP_IMAGE`,
/// `BACKUP_FAILED_COMPONENTS` (comma-separated) and `BACKUP_NODE`;
/// `on_failure` also runs for a failed second copy, with `BACKUP_HOOK=copy`
/// and `BACKUP_COPY_DESTINATION`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Hooks {
    /// Runs first; a failure fails the backup (its output in the error).
    #[serde(default)]
    pub before: Vec<String>,
    /// Runs after an image was published (success or partial).
    #[serde(default)]
    pub after: Vec<String>,
    /// Runs after a failed backup.
    #[serde(default)]
    pub on_failure: Vec<String>,
}

/// What a hook is told.
#[derive(Debug, Clone, Default)]
pub(crate) struct HookEnv {
    pub(crate) outcome: String,
    pub(crate) image: String,
    pub(crate) failed: Vec<String>,
    pub(crate) node: String,
    /// `BACKUP_HOOK` when it is not the hook's name (`drill` for the
    /// `on_failure` hook of a failed drill).
    pub(crate) kind: Option<String>,
    /// For a failed copy (`BACKUP_HOOK=copy`): the destination, as
    /// `BACKUP_COPY_DESTINATION`.
    pub(crate) copy_destination: Option<String>,
}

/// Runs one hook; an empty argv does nothing.
pub(crate) fn run_hook(name: &str, argv: &[String], env: &HookEnv) -> Result<()> {
    let Some((program, args)) = argv.split_first() else {
        return Ok(());
    };
    let mut command = Command::new(program);
    if let Some(destination) = &env.copy_destination {
        command.env("BACKUP_COPY_DESTINATION", destination);
    }
    command
        .args(args)
        .env("BACKUP_HOOK", env.kind.as_deref().unwrap_or(name))
        .env("BACKUP_OUTCOME", &env.outcome)
        .env("BACKUP_IMAGE", &env.image)
        .env("BACKUP_FAILED_COMPONENTS", env.failed.join(","))
        .env("BACKUP_NODE", &env.node)
        .stdin(Stdio::null());
    crate::util::without_secrets(&mut command);
    let out = command.output().map_err(|e| Error::Hook {
        hook: name.into(),
        reason: format!("cannot run `{}`: {e}", argv.join(" ")),
    })?;
    if out.status.success() {
        return Ok(());
    }
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    let text = text.trim();
    let tail = &text[text.len().saturating_sub(2000)..];
    Err(Error::Hook {
        hook: name.into(),
        reason: format!(
            "`{}` exited with {}{}",
            argv.join(" "),
            out.status,
            if tail.is_empty() {
                String::new()
            } else {
                format!(": {tail}")
            }
        ),
    })
}
