//! `backup user …` and `backup token …`: the users of the HTTP service and
//! their API tokens, in `state_dir/users.toml`.
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context;
use backup_core::{AuditRecord, Engine, Error};
use backup_http::{Role, UsersError, UsersFile};
use chrono::{SubsecRound, Utc};
use clap::{Subcommand, ValueEnum};
use zeroize::Zeroizing;

use crate::report::{escape_control, notice, outln, print_json, when};
use crate::Cli;

/// Environment variable holding a user's new password for unattended use.
const PASSWORD_ENV: &str = "BACKUP_USER_PASSWORD";

#[derive(Subcommand)]
pub(crate) enum UserCommand {
    /// Add a user. The password comes from --password-file, BACKUP_USER_PASSWORD
    /// or a prompt (asked twice), never the command line
    #[command(
        after_help = "Examples:\n  backup user add alice --role admin                 asks for the password twice\n  \
backup user add audit --role auditor --password-file /root/audit.pw\n  \
backup user add ops --role admin --client-cert-sha256 sha256:3f1c…   must also present that certificate"
    )]
    Add {
        /// The login: 1 to 64 letters, digits, '.', '_' or '-'
        name: String,
        /// admin: back up, download, make links, and all an auditor may;
        /// auditor: status, the image list and metrics only
        #[arg(long, value_enum)]
        role: CliRole,
        /// The SHA-256 of the client certificate this user must present
        /// (`sha256:` and 64 hex digits, or the AB:CD:… form of `openssl x509
        /// -fingerprint -sha256`)
        #[arg(long, value_name = "FINGERPRINT")]
        client_cert_sha256: Option<String>,
        /// Read the password from this file (its first line, without the line end)
        #[arg(long, value_name = "FILE")]
        password_file: Option<PathBuf>,
    },
    /// Change a user's password (from --password-file, BACKUP_USER_PASSWORD or a prompt)
    #[command(after_help = "Examples:\n  backup user passwd alice\n  \
BACKUP_USER_PASSWORD=… backup user passwd alice")]
    Passwd {
        /// The login
        name: String,
        /// Read the password from this file (its first line, without the line end)
        #[arg(long, value_name = "FILE")]
        password_file: Option<PathBuf>,
    },
    /// Delete a user and its API tokens
    #[command(after_help = "Examples:\n  backup user del alice")]
    Del {
        /// The login
        name: String,
    },
    /// List the users, their roles and tokens (never a hash)
    #[command(after_help = "Examples:\n  backup user list\n  backup --json user list")]
    List,
    /// Register the client certificate a user must present (or --clear it)
    #[command(after_help = "Examples:\n  \
backup user cert ops \"$(openssl x509 -in ops.pem -noout -fingerprint -sha256)\"\n  \
backup user cert ops --clear")]
    Cert {
        /// The login
        name: String,
        /// The certificate's SHA-256 (`sha256:` and 64 hex digits, or AB:CD:…)
        #[arg(required_unless_present = "clear", conflicts_with = "clear")]
        fingerprint: Option<String>,
        /// No certificate required any more
        #[arg(long)]
        clear: bool,
    },
}

#[derive(Subcommand)]
pub(crate) enum TokenCommand {
    /// Create an API token: prints `USER!NAME:SECRET` once (login and
    /// password for .netrc or .wgetrc); only its SHA-256 is kept
    #[command(
        after_help = "Examples:\n  backup token create alice cron --expires 90d > /root/backup.token\n  \
backup --json token create alice cron\n\n\
In ~/.netrc:  machine HOST login alice!cron password SECRET"
    )]
    Create {
        /// The user the token acts as (with that user's role)
        user: String,
        /// The token's name: 1 to 64 letters, digits, '.', '_' or '-'
        name: String,
        /// How long it works: a positive number with s, m, h or d (90d, 12h)
        /// [default: until deleted]
        #[arg(long, value_name = "DURATION")]
        expires: Option<String>,
    },
    /// List API tokens (names and times, never a secret)
    #[command(after_help = "Examples:\n  backup token list\n  backup token list alice")]
    List {
        /// Only this user's tokens
        user: Option<String>,
    },
    /// Delete (revoke) an API token
    #[command(after_help = "Examples:\n  backup token del alice cron")]
    Del {
        /// The user
        user: String,
        /// The token's name
        name: String,
    },
}

#[derive(Clone, Copy, ValueEnum)]
pub(crate) enum CliRole {
    Admin,
    Auditor,
}

impl From<CliRole> for Role {
    fn from(r: CliRole) -> Role {
        match r {
            CliRole::Admin => Role::Admin,
            CliRole::Auditor => Role::Auditor,
        }
    }
}

/// The engine (for its audit log) and the users file of its state directory.
fn open(cli: &Cli) -> anyhow::Result<(Engine, UsersFile)> {
    let engine = crate::engine(cli)?;
    let file = UsersFile::in_state_dir(&engine.config().appliance.state_dir);
    Ok((engine, file))
}

/// Writes the audit line of a change to the users file (`done`, `refused`
/// when it was the caller's to fix, else `failed`, with the error) and
/// passes its result on. The target names the user or token, never a secret.
fn audited<T>(
    engine: &Engine,
    operation: &str,
    target: &str,
    change: impl FnOnce() -> anyhow::Result<T>,
) -> anyhow::Result<T> {
    let started = Instant::now();
    let result = change();
    let (outcome, error) = match &result {
        Ok(_) => ("done", None),
        Err(e) => {
            let callers = e
                .chain()
                .find_map(Error::classify)
                .is_some_and(|(kind, _)| kind.is_callers_to_fix());
            (
                if callers { "refused" } else { "failed" },
                Some(format!("{e:#}")),
            )
        }
    };
    let mut record = AuditRecord::new(engine.actor(), operation, target, outcome);
    record.duration_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    record.error = error;
    let appended = engine.append_audit(&record);
    let value = result?;
    appended.context("the change was made, but its audit record could not be written")?;
    Ok(value)
}

/// The engine's error of a users-file error, so that exit codes and `--json`
/// error kinds follow the one mapping.
fn engine_error(e: UsersError) -> anyhow::Error {
    match e {
        UsersError::Input(m) | UsersError::AlreadyExists(m) => Error::Input(m).into(),
        UsersError::NotFound(m) => Error::NotFound(m).into(),
        UsersError::Invalid { path, reason } => Error::Config {
            path,
            reason: format!("{reason} (fix the file, or move it away and add the users again)"),
        }
        .into(),
        other => anyhow::Error::new(other),
    }
}

/// The new password: `--password-file`, else `BACKUP_USER_PASSWORD`, else a
/// prompt on a terminal (asked twice).
fn new_password(file: Option<&Path>, name: &str) -> anyhow::Result<Zeroizing<String>> {
    if let Some(path) = file {
        return Ok(crate::secret::read_secret_file(path)?);
    }
    if let Some(value) = std::env::var_os(PASSWORD_ENV) {
        let value = Zeroizing::new(
            value
                .into_string()
                .map_err(|_| Error::Input(format!("{PASSWORD_ENV} is not valid UTF-8")))?,
        );
        if value.is_empty() {
            return Err(
                Error::Input(format!("{PASSWORD_ENV} is empty: set it to the password")).into(),
            );
        }
        return Ok(value);
    }
    if std::io::stdin().is_terminal() && std::io::stderr().is_terminal() {
        let ask = |label: &str| {
            rpassword::prompt_password(label)
                .map(Zeroizing::new)
                .map_err(|e| {
                    Error::Input(format!("cannot read the password from the terminal: {e}"))
                })
        };
        let first = ask(&format!("Password of {name}: "))?;
        if first.is_empty() {
            return Err(Error::Input(
                "an empty password cannot be used; nothing was changed".into(),
            )
            .into());
        }
        let second = ask("Repeat the password: ")?;
        if *first != *second {
            return Err(Error::Input("the two entries differ; nothing was changed".into()).into());
        }
        return Ok(first);
    }
    Err(Error::Input(format!(
        "no password for {name}: pass --password-file FILE (the password on its first line), \
         set {PASSWORD_ENV}, or run this on a terminal to be asked"
    ))
    .into())
}

/// `--expires`: a positive number with s, m, h or d.
fn parse_expires(s: &str) -> anyhow::Result<chrono::Duration> {
    let bad = || {
        Error::Input(format!(
            "--expires {s:?}: use a positive number with s, m, h or d (e.g. 90d)"
        ))
    };
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    let n: i64 = number.parse().map_err(|_| bad())?;
    if n <= 0 {
        return Err(bad().into());
    }
    let d = match unit {
        "s" => chrono::Duration::try_seconds(n),
        "m" => chrono::Duration::try_minutes(n),
        "h" => chrono::Duration::try_hours(n),
        "d" => chrono::Duration::try_days(n),
        _ => None,
    };
    Ok(d.ok_or_else(bad)?)
}

pub(crate) fn user(cli: &Cli, command: &UserCommand) -> anyhow::Result<ExitCode> {
    let (engine, file) = open(cli)?;
    match command {
        UserCommand::Add {
            name,
            role,
            client_cert_sha256,
            password_file,
        } => {
            let entry = audited(&engine, "user.add", name, || {
                let password = new_password(password_file.as_deref(), name)?;
                file.add_user(
                    name,
                    (*role).into(),
                    &password,
                    client_cert_sha256.as_deref(),
                )
                .map_err(engine_error)
            })?;
            if cli.json {
                print_json(&entry)?;
            } else if !cli.quiet {
                outln!(
                    "added user {} ({}{}) to {}",
                    entry.name,
                    entry.role,
                    if entry.client_cert {
                        ", client certificate required"
                    } else {
                        ""
                    },
                    file.path().display()
                )?;
            }
        }
        UserCommand::Passwd {
            name,
            password_file,
        } => {
            audited(&engine, "user.passwd", name, || {
                // An unknown user is refused before a password is asked for.
                file.get(name).map_err(engine_error)?;
                let password = new_password(password_file.as_deref(), name)?;
                file.set_password(name, &password).map_err(engine_error)
            })?;
            if cli.json {
                print_json(&serde_json::json!({ "user": name, "password": "changed" }))?;
            } else if !cli.quiet {
                outln!("changed the password of {name}")?;
            }
        }
        UserCommand::Del { name } => {
            let entry = audited(&engine, "user.del", name, || {
                file.delete_user(name).map_err(engine_error)
            })?;
            if cli.json {
                print_json(&entry)?;
            } else if !cli.quiet {
                outln!(
                    "deleted user {} and its {} token(s)",
                    entry.name,
                    entry.tokens.len()
                )?;
            }
        }
        UserCommand::List => {
            let users = file.list().map_err(engine_error)?;
            if cli.json {
                print_json(&users)?;
            } else if users.is_empty() {
                outln!(
                    "no users in {}: add one with `backup user add NAME --role admin`",
                    file.path().display()
                )?;
            } else {
                outln!("{:<24} {:<8} {:<12} TOKENS", "USER", "ROLE", "CLIENT CERT")?;
                for u in &users {
                    let tokens: Vec<&str> = u.tokens.iter().map(|t| t.name.as_str()).collect();
                    outln!(
                        "{:<24} {:<8} {:<12} {}",
                        u.name,
                        u.role.as_str(),
                        if u.client_cert { "required" } else { "-" },
                        if tokens.is_empty() {
                            "-".to_string()
                        } else {
                            tokens.join(", ")
                        }
                    )?;
                }
            }
        }
        UserCommand::Cert {
            name,
            fingerprint,
            clear,
        } => {
            let fingerprint = if *clear { None } else { fingerprint.as_deref() };
            audited(&engine, "user.cert", name, || {
                file.set_client_cert(name, fingerprint)
                    .map_err(engine_error)
            })?;
            if cli.json {
                print_json(&file.get(name).map_err(engine_error)?)?;
            } else if !cli.quiet {
                match fingerprint {
                    Some(_) => outln!("{name} must now present that client certificate")?,
                    None => outln!("{name} needs no client certificate any more")?,
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub(crate) fn token(cli: &Cli, command: &TokenCommand) -> anyhow::Result<ExitCode> {
    let (engine, file) = open(cli)?;
    match command {
        TokenCommand::Create {
            user,
            name,
            expires,
        } => {
            let token = audited(&engine, "token.create", &format!("{user}!{name}"), || {
                let expires = expires
                    .as_deref()
                    .map(parse_expires)
                    .transpose()?
                    .map(|d| {
                        Utc::now()
                            .trunc_subsecs(0)
                            .checked_add_signed(d)
                            .ok_or_else(|| Error::Input("--expires is too far away".into()))
                    })
                    .transpose()?;
                file.create_token(user, name, expires).map_err(engine_error)
            })?;
            if cli.json {
                print_json(&serde_json::json!({
                    "login": token.login,
                    "secret": token.secret.as_str(),
                    "expires": token.expires,
                }))?;
            } else {
                outln!("{}", token.line().as_str())?;
                if !cli.quiet {
                    notice(
                        false,
                        &format!(
                            "the secret is shown only now; in .netrc: machine HOST login {} password SECRET{}",
                            token.login,
                            token
                                .expires
                                .map(|e| format!(" (expires {})", when(&e)))
                                .unwrap_or_default()
                        ),
                    );
                }
            }
        }
        TokenCommand::List { user } => {
            let tokens = file.tokens(user.as_deref()).map_err(engine_error)?;
            if cli.json {
                let list: Vec<_> = tokens
                    .iter()
                    .map(|(user, t)| {
                        serde_json::json!({
                            "user": user,
                            "name": t.name,
                            "login": format!("{user}!{}", t.name),
                            "created": t.created,
                            "expires": t.expires,
                        })
                    })
                    .collect();
                print_json(&list)?;
            } else if tokens.is_empty() {
                outln!("no API tokens: create one with `backup token create USER NAME`")?;
            } else {
                let now = Utc::now();
                outln!("{:<40} {:<24} EXPIRES", "LOGIN", "CREATED")?;
                for (user, t) in &tokens {
                    let expires = match t.expires {
                        Some(e) if e <= now => format!("{} (expired)", when(&e)),
                        Some(e) => when(&e),
                        None => "never".into(),
                    };
                    outln!(
                        "{:<40} {:<24} {expires}",
                        escape_control(&format!("{user}!{}", t.name)),
                        when(&t.created)
                    )?;
                }
            }
        }
        TokenCommand::Del { user, name } => {
            let token = audited(&engine, "token.del", &format!("{user}!{name}"), || {
                file.delete_token(user, name).map_err(engine_error)
            })?;
            if cli.json {
                print_json(
                    &serde_json::json!({ "user": user, "name": token.name, "deleted": true }),
                )?;
            } else if !cli.quiet {
                outln!(
                    "deleted the token {user}!{}: it no longer logs in",
                    token.name
                )?;
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expires_takes_a_positive_number_with_a_unit() {
        assert_eq!(parse_expires("90d").unwrap(), chrono::Duration::days(90));
        assert_eq!(parse_expires("12h").unwrap(), chrono::Duration::hours(12));
        assert_eq!(parse_expires("30m").unwrap(), chrono::Duration::minutes(30));
        assert_eq!(parse_expires("45s").unwrap(), chrono::Duration::seconds(45));
        for bad in [
            "",
            "0d",
            "-1d",
            "90",
            "d",
            "1w",
            "1.5h",
            "1 h",
            "99999999999999999999d",
        ] {
            assert!(parse_expires(bad).is_err(), "{bad:?}");
        }
    }
}
