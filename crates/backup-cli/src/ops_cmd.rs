//! Operations commands: status, audit, log, prune, schedule, daemon, key.
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use backup_core::{Engine, Error, Passphrase, PassphraseProvider, RewrapResult};
use chrono::{DateTime, NaiveDate, Utc};
use clap::Subcommand;

use crate::report::{escape_control, escape_control_lines, human, notice, outln, print_json, when};
use crate::secret::CliSecret;
use crate::Cli;

#[derive(Subcommand)]
pub(crate) enum KeyCommand {
    /// Change the secret and re-key: asks the current secret (--secret-file,
    /// BACKUP_SECRET or prompt) and the new one (--new-secret-file,
    /// BACKUP_NEW_SECRET or prompt, twice). New images get a new master key
    /// that only the new secret (and the key file) opens; the keyring keeps
    /// earlier master keys under the new secret, so older images still
    /// restore here. Elsewhere, older images open with the secret they were
    /// made under until `key rewrap` gives them the new one
    #[command(
        after_help = "Examples:\n  backup --secret-file /root/old.secret key rotate --new-secret-file /root/new.secret"
    )]
    Rotate {
        /// Read the new secret from this file (its first line, without the line end)
        #[arg(long, value_name = "FILE")]
        new_secret_file: Option<PathBuf>,
    },
    /// Give images a key slot under the current secret in place (local and
    /// NFS storage, image files), so the current secret opens them on a bare
    /// machine; their master key stays. Says which could not be changed
    #[command(
        after_help = "Examples:\n  backup key rewrap gw-20261122T020000Z_gw-1_standalone.bkp ./carried/gw.bkp"
    )]
    Rewrap {
        /// Image names or paths
        #[arg(required = true)]
        images: Vec<String>,
    },
    /// Check a secret against the keyring without changing anything
    #[command(
        after_help = "Examples:\n  backup key check                         asks for the secret on a terminal\n  \
backup --secret-file /root/backup.secret key check"
    )]
    Check,
    /// Replace the key that signs the HTTP service's own download links
    /// (`GET /dl/…`): every link it issued stops working at once
    #[command(
        name = "rotate-links",
        after_help = "Examples:\n  backup key rotate-links"
    )]
    RotateLinks,
}

/// `--since` as RFC 3339, a date, or a duration ago (`90m`, `2h`, `3d`, `1w`).
fn parse_since(s: &str) -> anyhow::Result<DateTime<Utc>> {
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Ok(t.with_timezone(&Utc));
    }
    if let Ok(d) = NaiveDate::parse_from_str(s, "%Y-%m-%d") {
        return Ok(d.and_hms_opt(0, 0, 0).expect("midnight").and_utc());
    }
    // A usage error (exit code 2), like any other bad input.
    let bad = || {
        Error::Input(format!(
            "--since {s:?}: use RFC 3339, YYYY-MM-DD, or 90m/2h/3d/1w"
        ))
    };
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: i64 = num.parse().map_err(|_| bad())?;
    let d = match unit {
        "m" => chrono::Duration::try_minutes(n),
        "h" => chrono::Duration::try_hours(n),
        "d" => chrono::Duration::try_days(n),
        "w" => chrono::Duration::try_weeks(n),
        _ => None,
    }
    .ok_or_else(bad)?;
    Utc::now().checked_sub_signed(d).ok_or_else(|| bad().into())
}

pub(crate) fn status(engine: &Engine, json: bool) -> anyhow::Result<ExitCode> {
    let s = engine.status()?;
    if json {
        print_json(&s)?;
        return Ok(ExitCode::SUCCESS);
    }
    match (&s.state[..], &s.current) {
        ("in progress", Some(c)) => outln!(
            "state:          in progress: {} of {} (pid {}), component {}, {} done, {}s elapsed",
            c.operation,
            c.image.as_deref().unwrap_or("-"),
            c.pid,
            c.component.as_deref().unwrap_or("-"),
            human(c.bytes_done),
            s.elapsed_secs.unwrap_or(0)
        )?,
        ("interrupted", Some(c)) => outln!(
            "state:          interrupted: the {} of {} started {} (pid {}) never finished; the next run takes over",
            c.operation,
            c.image.as_deref().unwrap_or("-"),
            when(&c.started),
            c.pid
        )?,
        (state, _) => outln!("state:          {state}")?,
    }
    match &s.last_success {
        Some(r) => outln!(
            "last success:   {} {} ({})",
            when(&r.time),
            r.image.as_deref().unwrap_or("-"),
            human(r.size)
        )?,
        None => outln!("last success:   never")?,
    }
    match &s.last_failure {
        Some(r) => outln!(
            "last failure:   {} {}: {}",
            when(&r.time),
            r.operation,
            escape_control(r.reason.as_deref().unwrap_or("no reason recorded"))
        )?,
        None => outln!("last failure:   none")?,
    }
    if let Some(r) = &s.last_restore {
        let place = match &r.target {
            Some(t) => format!(" under {}", t.display()),
            None => String::new(),
        };
        outln!(
            "last restore:   {} {}{}: restored {}",
            when(&r.time),
            escape_control(&r.image),
            escape_control(&place),
            if r.summary.restored.is_empty() {
                "nothing".to_string()
            } else {
                r.summary.restored.join(", ")
            }
        )?;
        let mut text = Vec::new();
        crate::report::print_summary(&mut text, &r.summary)?;
        for line in String::from_utf8_lossy(&text).lines() {
            outln!("  {}", line.trim_start())?;
        }
    }
    if let Some(r) = &s.last_skipped {
        outln!(
            "last skipped:   {} {}",
            when(&r.time),
            r.reason.as_deref().unwrap_or("")
        )?;
    }
    crate::copy_cmd::print_status(&s.copies)?;
    match (&s.next_run, &s.daemon) {
        (Some(t), Some(d)) => outln!(
            "next backup:    {} — {} (daemon pid {})",
            when(t),
            s.schedule,
            d.pid
        )?,
        (Some(t), None) => outln!(
            "next backup:    {} — {} (no daemon is running: start `backup daemon`)",
            when(t),
            s.schedule
        )?,
        (None, _) => outln!("next backup:    {}", s.schedule)?,
    }
    crate::drill_cmd::print_status(&s)?;
    Ok(ExitCode::SUCCESS)
}

pub(crate) fn audit(engine: &Engine, since: Option<&str>, json: bool) -> anyhow::Result<ExitCode> {
    let since = since.map(parse_since).transpose()?;
    let records = engine.audit_records(since)?;
    if json {
        print_json(&records)?;
        return Ok(ExitCode::SUCCESS);
    }
    for r in records {
        // A request to the HTTP service shows its route (`GET /ssg/backup`).
        let operation = match &r.route {
            Some(route) => escape_control(route).into_owned(),
            None => r.operation.clone(),
        };
        outln!(
            "{}  {:<10} {:<14} {:<9} {}{}{}",
            when(&r.time),
            r.actor,
            operation,
            r.outcome,
            escape_control(&r.target),
            r.summary
                .map(|s| format!("  [{}]", escape_control(&s)))
                .unwrap_or_default(),
            r.error
                .map(|e| format!("  ({})", escape_control(&e)))
                .unwrap_or_default()
        )?;
    }
    Ok(ExitCode::SUCCESS)
}

pub(crate) fn log(engine: &Engine, image: &str, json: bool) -> anyhow::Result<ExitCode> {
    let text = engine.backup_log(image)?;
    if json {
        print_json(
            &serde_json::json!({ "image": image, "lines": text.lines().collect::<Vec<_>>() }),
        )?;
    } else {
        crate::report::write_raw(&escape_control_lines(&text))?;
    }
    Ok(ExitCode::SUCCESS)
}

pub(crate) async fn prune(engine: &Engine, dry_run: bool, cli: &Cli) -> anyhow::Result<ExitCode> {
    let decisions = engine.prune(dry_run).await.context("prune failed")?;
    if cli.json {
        print_json(&decisions)?;
        return Ok(ExitCode::SUCCESS);
    }
    if cli.quiet && !dry_run {
        return Ok(ExitCode::SUCCESS);
    }
    for d in &decisions {
        let verdict = match (d.keep, dry_run) {
            (true, _) => format!("keep    ({})", d.reasons.join(", ")),
            (false, true) => "would delete".to_string(),
            (false, false) => "deleted".to_string(),
        };
        outln!(
            "{:<48} {}  {verdict}",
            escape_control(&d.name),
            when(&d.created)
        )?;
    }
    Ok(ExitCode::SUCCESS)
}

pub(crate) fn schedule(engine: &Engine, count: usize, json: bool) -> anyhow::Result<ExitCode> {
    let Some(cfg) = &engine.config().schedule else {
        if json {
            print_json(&serde_json::json!({ "schedule": "disabled", "next": [] }))?;
        } else {
            outln!("schedule disabled (no [schedule] in the configuration)")?;
        }
        return Ok(ExitCode::SUCCESS);
    };
    let next = cfg.parse()?.upcoming(Utc::now(), count);
    if json {
        print_json(
            &serde_json::json!({ "cron": cfg.cron, "timezone": cfg.timezone, "next": next }),
        )?;
    } else {
        let tz = cfg.parse()?.timezone();
        outln!("{} ({})", cfg.cron.join(", "), cfg.timezone)?;
        for t in next {
            outln!(
                "  {}  ({} local)",
                when(&t),
                t.with_timezone(&tz).format("%Y-%m-%d %H:%M %Z")
            )?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub(crate) async fn daemon(engine: Engine, json: bool) -> anyhow::Result<ExitCode> {
    let (tx, rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        notice(
            json,
            "stop requested: exiting now if idle, or after the running backup finishes",
        );
        let _ = tx.send(true);
    });
    if let Some(cfg) = &engine.config().schedule {
        notice(
            json,
            &format!(
                "backup daemon: schedule {} ({}){}",
                cfg.cron.join(", "),
                cfg.timezone,
                if cfg.cluster {
                    "; each run backs up the whole [cluster]"
                } else {
                    ""
                }
            ),
        );
    }
    if let Some(drill) = engine
        .config()
        .drill
        .as_ref()
        .filter(|d| !d.cron.is_empty())
    {
        notice(
            json,
            &format!(
                "backup daemon: restore drills {} ({})",
                drill.cron.join(", "),
                drill.timezone
            ),
        );
    }
    engine
        .run_daemon_with(rx, &backup_cluster::ScheduledCluster)
        .await?;
    notice(json, "backup daemon stopped");
    if json {
        print_json(&serde_json::json!({ "daemon": "stopped" }))?;
    }
    Ok(ExitCode::SUCCESS)
}

fn new_secret(file: &Option<PathBuf>) -> backup_core::Result<Passphrase> {
    if file.is_none() {
        if let Ok(v) = std::env::var("BACKUP_NEW_SECRET") {
            // As the engine's error, so a short secret is an input error (exit 2).
            return Ok(Passphrase::new(zeroize::Zeroizing::new(v).to_string())?);
        }
    }
    let provider = CliSecret {
        file: file.clone(),
        env: None,
    };
    provider
        .passphrase(
            "set the NEW domain master secret (at least 8 characters)",
            true,
        )?
        .ok_or_else(|| {
            Error::PassphraseRequired(
                "set the new secret (BACKUP_NEW_SECRET or --new-secret-file)".into(),
            )
        })
}

pub(crate) async fn key(cli: &Cli, cmd: &KeyCommand) -> anyhow::Result<ExitCode> {
    let current = || -> backup_core::Result<Passphrase> {
        CliSecret {
            file: cli.secret_file.clone(),
            env: Some(crate::secret::SECRET_ENV),
        }
        .passphrase("confirm the CURRENT domain master secret", false)?
        .ok_or_else(|| Error::PassphraseRequired("confirm the current secret".into()))
    };
    let engine = crate::engine(cli)?;
    match cmd {
        KeyCommand::RotateLinks => {
            let started = std::time::Instant::now();
            let state = &engine.config().appliance.state_dir;
            let result = backup_http::rotate_link_key(state).map_err(|e| Error::Io {
                what: format!("writing a new link key in {}", state.display()),
                source: e,
            });
            let mut record = backup_core::AuditRecord::new(
                engine.actor(),
                "key.rotate-links",
                backup_http::LINK_KEY_FILE,
                if result.is_ok() { "done" } else { "failed" },
            );
            record.duration_ms = started.elapsed().as_millis() as u64;
            record.error = result.as_ref().err().map(|e| e.to_string());
            engine.append_audit(&record)?;
            result?;
            if cli.json {
                print_json(&serde_json::json!({ "link_key": "rotated" }))?;
            } else if !cli.quiet {
                outln!("new link key: every download link the HTTP service issued stops working")?;
            }
        }
        KeyCommand::Check => {
            let result = engine.check_key(current);
            let id = result?;
            if cli.json {
                print_json(
                    &serde_json::json!({ "key_id": id.to_string(), "opens_keyring": true }),
                )?;
            } else if !cli.quiet {
                outln!("the secret opens the keyring (key id {id})")?;
            }
        }
        KeyCommand::Rotate { new_secret_file } => {
            // Every attempt is audited, refused ones (a short new secret, none
            // given, a wrong current one) included.
            let result = engine.rotate_key(current, || new_secret(new_secret_file));
            let rotation = result?;
            if cli.json {
                print_json(&rotation)?;
            } else if !cli.quiet {
                outln!(
                    "new master key {} for new images; the previous one ({}) is kept in the keyring",
                    rotation.key_id,
                    rotation.previous
                )?;
                outln!(
                    "this appliance still opens images of {} earlier key(s) ({}) with the key file or the new secret",
                    rotation.kept.len(),
                    rotation.kept.join(", ")
                )?;
                if !rotation.key_file_updated {
                    outln!("no key file in the state directory: backups need the new secret")?;
                }
                outln!("the previous secret opens nothing made from now on, but still opens older images wherever their headers carry its key slot: `backup key rewrap IMAGE…` gives them one under the new secret")?;
            }
        }
        KeyCommand::Rewrap { images } => {
            let images: Vec<_> = images
                .iter()
                .map(|i| crate::image_ref(&engine, i))
                .collect();
            let results = engine.rewrap(&images).await?;
            let mut failed = false;
            for (image, r) in &results {
                let image = escape_control(image);
                match r {
                    RewrapResult::Rewrapped if !cli.json && !cli.quiet => {
                        outln!("{image}: rewrapped")?
                    }
                    RewrapResult::AlreadyCurrent if !cli.json && !cli.quiet => {
                        outln!("{image}: already current")?
                    }
                    RewrapResult::NotRewrapped { reason } => {
                        failed = true;
                        if !cli.json {
                            outln!("{image}: NOT rewrapped: {}", escape_control(reason))?;
                        }
                    }
                    _ => {}
                }
            }
            if cli.json {
                print_json(&results)?;
            }
            if failed {
                return Ok(ExitCode::FAILURE);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
