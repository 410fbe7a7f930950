//! Where the password comes from: `BACKUP_FTP_PASSWORD`, or else `~/.netrc`.

use std::io;
use std::path::Path;

use super::core::{Password, PASSWORD_VAR};
use crate::{Error, Result};

/// `BACKUP_FTP_PASSWORD`, or else the `~/.netrc` entry of `host` and `user`.
pub(super) fn find_password(host: &str, user: &str, shown: &str) -> Result<Password> {
    if let Some(p) = std::env::var_os(PASSWORD_VAR).filter(|p| !p.is_empty()) {
        return p.into_string().map(Password).map_err(|_| Error::Other {
            what: format!("{PASSWORD_VAR} is not UTF-8"),
            source: None,
        });
    }
    let netrc = std::env::var_os("HOME").map(|home| Path::new(&home).join(".netrc"));
    if let Some(path) = &netrc {
        if let Some(password) = netrc_file_password(path, host, user)? {
            return Ok(Password(password));
        }
    }
    Err(Error::Unauthenticated {
        what: format!(
            "no password for FTP user {user} of {shown}: add `machine {host} login {user} password …` \
             to ~/.netrc (mode 600) or set {PASSWORD_VAR}"
        ),
        source: None,
    })
}

fn netrc_file_password(path: &Path, host: &str, user: &str) -> Result<Option<String>> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(Error::from_io(
                format!("reading FTP passwords from {}", path.display()),
                e,
            ))
        }
    };
    let password = netrc_password(&text, host, user);
    if password.is_some() {
        use std::os::unix::fs::PermissionsExt;
        if std::fs::metadata(path).is_ok_and(|m| m.permissions().mode() & 0o077 != 0) {
            tracing::warn!(
                path = %path.display(),
                "other users may read the FTP password in this file: chmod 600 it"
            );
        }
    }
    Ok(password)
}

/// The password of the first `.netrc` entry for `host` whose login is `user`
/// (or that names no login); the `default` entry only if no machine matches.
/// Comments (`#` to the end of the line) and `macdef` bodies are skipped.
fn netrc_password(text: &str, host: &str, user: &str) -> Option<String> {
    #[derive(Default)]
    struct Entry {
        /// `None` for `default`.
        machine: Option<String>,
        login: Option<String>,
        password: Option<String>,
    }
    let mut entries: Vec<Entry> = Vec::new();
    let mut lexer = NetrcLexer { rest: text };
    while let Some(token) = lexer.next_token() {
        match token.as_str() {
            "machine" => entries.push(Entry {
                machine: Some(lexer.next_token().unwrap_or_default()),
                ..Entry::default()
            }),
            "default" => entries.push(Entry::default()),
            "login" | "password" | "passwd" | "account" => {
                let value = lexer.next_token();
                if let Some(entry) = entries.last_mut() {
                    match token.as_str() {
                        "login" => entry.login = value,
                        "account" => {}
                        _ => entry.password = value,
                    }
                }
            }
            "macdef" => {
                lexer.next_token();
                lexer.skip_macro_body();
            }
            _ => {} // unknown keywords (and their values) carry no password
        }
    }
    let usable = |e: &&Entry| e.login.as_deref().is_none_or(|l| l == user) && e.password.is_some();
    let machine = entries
        .iter()
        .filter(|e| {
            e.machine
                .as_deref()
                .is_some_and(|m| m.eq_ignore_ascii_case(host))
        })
        .find(usable);
    let default = || entries.iter().filter(|e| e.machine.is_none()).find(usable);
    machine.or_else(default).and_then(|e| e.password.clone())
}

/// Tokens of a `.netrc`: whitespace-separated, or double-quoted with `\`
/// escapes.
struct NetrcLexer<'a> {
    pub(super) rest: &'a str,
}

impl NetrcLexer<'_> {
    fn next_token(&mut self) -> Option<String> {
        loop {
            self.rest = self.rest.trim_start();
            if self.rest.starts_with('#') {
                self.rest = self.rest.find('\n').map_or("", |i| &self.rest[i..]);
                continue;
            }
            break;
        }
        if self.rest.is_empty() {
            return None;
        }
        let mut token = String::new();
        let mut chars = self.rest.char_indices();
        if self.rest.starts_with('"') {
            chars.next();
            let mut escaped = false;
            for (i, c) in chars {
                match c {
                    _ if escaped => {
                        token.push(c);
                        escaped = false;
                    }
                    '\\' => escaped = true,
                    '"' => {
                        self.rest = &self.rest[i + 1..];
                        return Some(token);
                    }
                    _ => token.push(c),
                }
            }
            self.rest = "";
            return Some(token);
        }
        let end = self
            .rest
            .find(char::is_whitespace)
            .unwrap_or(self.rest.len());
        token.push_str(&self.rest[..end]);
        self.rest = &self.rest[end..];
        Some(token)
    }

    /// A macro body runs to the first empty line.
    fn skip_macro_body(&mut self) {
        let after_name_line = self.rest.find('\n').map_or("", |i| &self.rest[i + 1..]);
        let mut rest = after_name_line;
        loop {
            let (line, next) = match rest.find('\n') {
                Some(i) => (&rest[..i], Some(&rest[i + 1..])),
                None => (rest, None),
            };
            if line.trim_end_matches('\r').is_empty() {
                self.rest = next.unwrap_or("");
                return;
            }
            match next {
                Some(next) => rest = next,
                None => {
                    self.rest = "";
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NETRC: &str = r#"
# A comment: machine nas.example login backup password commented-out
machine other.example login backup password other-pw
machine NAS.example
    login someone-else password not-ours
machine nas.example login backup password "pass word \"quoted\""  # trailing comment
macdef init
    machine nas.example login backup password in-a-macro

machine old.example login backup
    account acct password old-pw
default login backup password default-pw
"#;

    #[test]
    fn netrc_entries_match_host_and_login() {
        assert_eq!(
            netrc_password(NETRC, "nas.example", "backup").as_deref(),
            Some(r#"pass word "quoted""#)
        );
        assert_eq!(
            netrc_password(NETRC, "nas.example", "someone-else").as_deref(),
            Some("not-ours"),
            "host names match case-insensitively"
        );
        assert_eq!(
            netrc_password(NETRC, "old.example", "backup").as_deref(),
            Some("old-pw"),
            "account values are skipped"
        );
        assert_eq!(
            netrc_password(NETRC, "unknown.example", "backup").as_deref(),
            Some("default-pw")
        );
        assert_eq!(netrc_password(NETRC, "unknown.example", "root"), None);
        // A machine entry without login serves any user.
        assert_eq!(
            netrc_password("machine h password pw", "h", "anyone").as_deref(),
            Some("pw")
        );
        // A macro body ends at the first empty line; what follows counts.
        let text =
            "macdef m\nmachine h login u password macro\n\nmachine h login u password real\n";
        assert_eq!(netrc_password(text, "h", "u").as_deref(), Some("real"));
        assert_eq!(netrc_password("", "h", "u"), None);
        assert_eq!(netrc_password("machine h login u", "h", "u"), None);
    }
}
