//! Where the domain master secret comes from: a file, the environment, or a
//! prompt — never the command line.
use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use backup_core::{Passphrase, PassphraseProvider};
use zeroize::Zeroizing;

/// Environment variable holding the secret for unattended use.
pub(crate) const SECRET_ENV: &str = "BACKUP_SECRET";

/// The secret in a secret file: its first line without the line end (`\n`
/// or `\r\n`); the rest of the file is ignored, so a trailing blank line or
/// a comment below does not change the secret.
fn first_line<'a>(text: &'a str, path: &Path) -> backup_core::Result<&'a str> {
    let line = text.split('\n').next().unwrap_or_default();
    let line = line.strip_suffix('\r').unwrap_or(line);
    if line.is_empty() {
        return Err(backup_core::Error::Input(format!(
            "the secret file {} has no secret on its first line: write the secret on the first line",
            path.display()
        )));
    }
    Ok(line)
}

/// The first line of a secret file (a password file too), for secrets other
/// than the domain master secret.
pub(crate) fn read_secret_file(path: &Path) -> backup_core::Result<Zeroizing<String>> {
    let text = Zeroizing::new(std::fs::read_to_string(path).map_err(|e| {
        backup_core::Error::Input(format!(
            "cannot read the secret file {}: {e}",
            path.display()
        ))
    })?);
    Ok(Zeroizing::new(first_line(&text, path)?.to_string()))
}

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
        Ok(Passphrase::new(first_line(&text, path)?.to_string())?)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secret_file_gives_its_first_line_without_the_line_end() {
        let p = Path::new("secret");
        for text in [
            "s3cret pass",
            "s3cret pass\n",
            "s3cret pass\r\n",
            "s3cret pass\n\n",
            "s3cret pass\nsecond line\n",
            "s3cret pass\r\n# a comment\r\n",
        ] {
            assert_eq!(first_line(text, p).unwrap(), "s3cret pass", "{text:?}");
        }
        // Only the line end goes: other white space is part of the secret.
        assert_eq!(first_line(" padded \t\n", p).unwrap(), " padded \t");
        for text in ["", "\n", "\r\n", "\nthe secret on line two\n"] {
            let e = first_line(text, p).unwrap_err().to_string();
            assert!(e.contains("first line"), "{text:?}: {e}");
        }
    }
}
