//! Where the domain master secret comes from: a file, the environment, or a
//! prompt — never the command line.
use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use backup_core::{Passphrase, PassphraseProvider};
use zeroize::Zeroizing;

/// Environment variable holding the secret for unattended use.
pub(crate) const SECRET_ENV: &str = "BACKUP_SECRET";

pub(crate) struct CliSecret {
    pub(crate) file: Option<PathBuf>,
    /// The environment variable consulted when there is no file.
    pub(crate) env: Option<&'static str>,
}

impl CliSecret {
    fn read_file(path: &Path) -> backup_core::Result<Passphrase> {
        let text = Zeroizing::new(std::fs::read_to_string(path).map_err(|e| {
            backup_core::Error::Input(format!(
                "cannot read the secret file {}: {e}",
                path.display()
            ))
        })?);
        let trimmed = text
            .strip_suffix('\n')
            .map(|t| t.strip_suffix('\r').unwrap_or(t))
            .unwrap_or(&text);
        Ok(Passphrase::new(trimmed.to_string())?)
    }

    fn prompt(&self, purpose: &str, confirm: bool) -> backup_core::Result<Passphrase> {
        let ask = |label: &str| {
            rpassword::prompt_password(label)
                .map(Zeroizing::new)
                .map_err(|e| {
                    backup_core::Error::Input(format!(
                        "cannot read the passphrase from the terminal: {e}"
                    ))
                })
        };
        eprintln!("The domain master secret is needed to {purpose}.");
        let first = ask("Domain master secret: ")?;
        if confirm {
            let second = ask("Repeat the secret: ")?;
            if *first != *second {
                return Err(backup_core::Error::Input(
                    "the two entries differ; nothing was changed".into(),
                ));
            }
        }
        Ok(Passphrase::new(first.to_string())?)
    }
}

impl PassphraseProvider for CliSecret {
    fn passphrase(&self, purpose: &str, confirm: bool) -> backup_core::Result<Option<Passphrase>> {
        if let Some(path) = &self.file {
            return Self::read_file(path).map(Some);
        }
        if let Some(Ok(value)) = self.env.map(std::env::var) {
            let value = Zeroizing::new(value);
            return Ok(Some(Passphrase::new(value.to_string())?));
        }
        if std::io::stdin().is_terminal() && std::io::stderr().is_terminal() {
            return self.prompt(purpose, confirm).map(Some);
        }
        Ok(None)
    }
}
