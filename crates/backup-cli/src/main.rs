//! `backup`: the operator and cron frontend of the appliance backup engine.
//!
//! Exit codes: 0 success, 1 failure, 2 usage or input error, 3 partial
//! success, 4 skipped (another backup or restore is running).
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use backup_core::{
    Compression, Config, CreateOptions, Destination, Engine, Error, ErrorKind, ImageDetails,
    ImageRef, ImageStream, KdfParams, Operation, Outcome, PassphraseProvider, RestoreOptions,
};
use clap::{Args, CommandFactory, Parser, Subcommand};

mod cluster_cmd;
mod copy_cmd;
mod drill_cmd;
mod ops_cmd;
mod quickstart;
mod report;
mod secret;
mod serve;
mod storage_cmd;
mod user_cmd;

use report::{escape_control, human, outln, print_json, Reporter};
use secret::CliSecret;

/// Exit code of a partial success.
pub(crate) const EXIT_PARTIAL: u8 = 3;
/// Exit code of a usage or input error.
const EXIT_USAGE: u8 = 2;
/// Exit code of a run skipped because another operation holds the lock.
const EXIT_SKIPPED: u8 = 4;

#[derive(Parser)]
#[command(
    name = "backup",
    version,
    about = "Point-in-time backup and restore of an appliance's state into encrypted images",
    long_about = "Point-in-time backup and restore of an appliance's state (configuration files, \
internal database, audit records, …) into encrypted images on local disk or remote storage.\n\n\
The domain master secret is never accepted on the command line: it comes from --secret-file FILE \
(or BACKUP_SECRET_FILE), the BACKUP_SECRET environment variable, or a prompt on a terminal. \
Unattended backups use the master key file in the state directory and need no secret.\n\n\
The configuration file is --config FILE, else $BACKUP_CONFIG, else ./backup.toml if it exists, \
else /etc/backup/backup.toml.",
    after_help = "Exit codes: 0 success, 1 failure, 2 usage or input error, 3 partial success \
(some components failed; the image holds the rest), 4 skipped (another backup or restore is running).\n\n\
Examples:\n  backup quickstart                 a demo appliance backed up and restored\n  \
backup create                     a standard backup into the configured storage\n  \
backup -q create                  the same for cron: prints nothing unless something is wrong\n  \
backup list\n  backup restore IMAGE --target /tmp/inspect\n\n\
Run `backup COMMAND --help` for a command's options and examples."
)]
pub(crate) struct Cli {
    /// Configuration file [default: ./backup.toml if it exists, else /etc/backup/backup.toml]
    #[arg(
        long,
        short = 'c',
        global = true,
        env = "BACKUP_CONFIG",
        value_name = "FILE"
    )]
    config: Option<PathBuf>,
    /// Read the domain master secret from this file: its first line, without
    /// the line end; the rest is ignored (mode 0600 recommended)
    #[arg(long, global = true, value_name = "FILE", env = "BACKUP_SECRET_FILE")]
    pub(crate) secret_file: Option<PathBuf>,
    /// Machine-readable output: one JSON document on stdout (errors too, as
    /// {"error": {"kind", "message"}}), JSON-lines events on stderr
    #[arg(long, global = true)]
    pub(crate) json: bool,
    /// Per-component progress on stderr
    #[arg(long, short = 'v', global = true, conflicts_with = "quiet")]
    verbose: bool,
    /// Print nothing on success (commands that only show something still
    /// show it); warnings and errors still go to stderr. For cron
    #[arg(long, short = 'q', global = true)]
    pub(crate) quiet: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Set the domain master secret once: creates the master key, its keyring
    /// and the 0600 key file in the state directory (refuses if either already exists)
    #[command(
        after_help = "Examples:\n  backup init                              asks for the secret twice\n  \
backup --secret-file /root/backup.secret init"
    )]
    Init,
    /// Take a backup: a standard one (every applicable default component), or
    /// a custom one with --component
    #[command(
        after_help = "Examples:\n  backup create                            a standard backup into the configured storage\n  \
backup create -C config -C maindb        a custom backup of two components\n  \
backup create --include-audits --halt\n  \
backup create -o /tmp/gw.bkp             to a file instead of the storage\n  \
backup create -o - > gw.bkp               to standard output (never a terminal); reports go to stderr"
    )]
    Create(CreateArgs),
    /// List the images in the configured storage
    #[command(after_help = "Examples:\n  backup list\n  backup --json list | jq -r '.[].name'")]
    List,
    /// Show an image's details (from its sidecar manifest, or by reading it)
    #[command(
        after_help = "Examples:\n  backup show gw-20261122T020000Z_gw-1_standalone.bkp\n  backup show ./carried/gw.bkp"
    )]
    Show {
        /// Image name in the storage, or a path to an image file
        image: String,
    },
    /// Decrypt, decompress and check every component against the manifest, writing nothing
    #[command(
        after_help = "Examples:\n  backup verify gw-20261122T020000Z_gw-1_standalone.bkp\n  \
backup create -o - > gw.bkp && backup verify ./gw.bkp\n  \
backup create -o - | tee gw.bkp | backup verify -"
    )]
    Verify {
        /// Image name in the storage, a path to an image file, or - for standard input
        image: String,
    },
    /// Restore an image onto this appliance (or under --target DIR)
    #[command(
        after_help = "Examples:\n  backup restore gw-20261122T020000Z_gw-1_standalone.bkp --target /tmp/inspect\n  \
backup restore ./carried/gw.bkp -C config      only the config component\n  \
backup restore gw-edge.20261122T020000Z.tar --node data-1 --yes    one node out of a cluster bundle"
    )]
    Restore(RestoreArgs),
    /// Prove an image restores: restore it into scratch space through the
    /// real restore path, run the SQLite integrity check and each
    /// component's drill_check, remove the scratch and record the result
    /// (status, audit log; on_failure hook with BACKUP_HOOK=drill). Exit 1
    /// when the drill fails
    #[command(
        after_help = "Examples:\n  backup drill                                   the newest successful image of this node\n  \
backup drill gw-20261122T020000Z_gw-1_standalone.bkp --timeout 10m\n  \
backup --json drill --scratch /var/tmp/drills"
    )]
    Drill(drill_cmd::DrillArgs),
    /// Write the decrypted payload (a standard .tar.gz, .tar.zst or .tar, as
    /// the image was compressed) for standard tools. The output holds the
    /// appliance's secrets in clear
    #[command(
        after_help = "Examples:\n  backup decrypt IMAGE -o payload.tar.gz && tar -tzvf payload.tar.gz\n  \
backup decrypt IMAGE -o payload         named payload.tar.gz, .tar.zst or .tar after the image's codec"
    )]
    Decrypt {
        /// Image name in the storage, or a path to an image file
        image: String,
        /// Output file (created atomically, mode 0600); without an extension,
        /// `.tar.gz`, `.tar.zst` or `.tar` is added after the image's codec
        #[arg(short, long, value_name = "FILE")]
        output: PathBuf,
    },
    /// Seal a payload (.tar.gz, e.g. edited after `backup decrypt`) into an image
    /// under this appliance's key, after checking it as restore would
    #[command(
        after_help = "Examples:\n  backup encrypt payload.tar.gz -o edited.bkp && backup verify ./edited.bkp\n  \
backup encrypt --rehash edited-payload.tar.gz -o edited.bkp    after editing files in the payload"
    )]
    Encrypt {
        /// The payload file
        input: PathBuf,
        /// The image file to write
        #[arg(short, long, value_name = "IMAGE")]
        output: PathBuf,
        /// Record the payload's current content in its manifest (after an
        /// edit made on purpose): the sealed image then vouches for the edit
        #[arg(long)]
        rehash: bool,
    },
    /// Copy a stored image and its sidecar to a second storage (--to URL, or
    /// every configured copy destination), read back and checked there
    #[command(
        long_about = "Copy a stored image and its sidecar manifest to a second storage: streamed from \
the configured storage, written there under a temporary name and published, then read back and \
checked (size and SHA-256). Without --to, to every [[copy]] destination of the configuration, each \
followed by its own retention. A destination that already holds this very image is left as it is; \
one holding a different image of that name is refused.\n\n\
Exit codes: 0 every destination holds a verified copy, 1 a copy failed or was refused (the report \
says why), 2 usage or input error (unknown image, no destination), 4 skipped (a backup or restore \
is running).",
        after_help = "Examples:\n  backup copy gw-20261122T020000Z_gw-1_standalone.bkp                 to every [[copy]] destination\n  \
backup copy gw-20261122T020000Z_gw-1_standalone.bkp --to sftp://backup@vault.example/srv/gw\n  \
backup --json copy IMAGE --to file:///media/usb/backups"
    )]
    Copy(copy_cmd::CopyArgs),
    /// Download an image from the storage to a local file (to carry it to a replacement machine)
    #[command(
        after_help = "Examples:\n  backup fetch gw-20261122T020000Z_gw-1_standalone.bkp -o /media/usb/gw.bkp"
    )]
    Fetch {
        /// Image name in the storage, or sftp://user@host/path/IMAGE.bkp (a port:
        /// host:2222) on any SSH server
        image: String,
        /// The file to write (created atomically, mode 0600)
        #[arg(short, long, value_name = "FILE")]
        output: PathBuf,
    },
    /// Browse the storage one level at a time: permissions, space, and the
    /// backups with their details; give an image name for its details table
    #[command(after_help = "Examples:\n  backup browse\n  backup browse ..\n  \
backup browse gw-20261122T020000Z_gw-1_standalone.bkp")]
    Browse {
        /// A directory level (`..` for the parent) or an image name [default: the top]
        #[arg(default_value = "")]
        path: String,
    },
    /// Time-limited download links (presigned URLs, S3) for images, as a table or CSV
    #[command(
        after_help = "Examples:\n  backup links --expires 90m\n  backup links IMAGE --csv links.csv"
    )]
    Links {
        /// Images [default: every image in the storage]
        images: Vec<String>,
        /// How long the links work: 90m, 6h, 2d [default: 6h]
        #[arg(long, value_name = "DURATION", default_value = "6h")]
        expires: String,
        /// Also write a CSV (image,node,role,created,size,url,expiry) to this file
        #[arg(long, value_name = "FILE")]
        csv: Option<PathBuf>,
    },
    /// Show whether a backup runs now, the last success and failure, and the next scheduled run
    #[command(after_help = "Examples:\n  backup status\n  backup --json status")]
    Status,
    /// Show the audit log (every create, restore, verify, key and prune operation)
    #[command(
        after_help = "Examples:\n  backup audit --since 3d\n  backup audit --since 2026-11-01"
    )]
    Audit {
        /// Only records at or after this time (RFC 3339, a date YYYY-MM-DD, or a
        /// duration ago such as 2h, 3d)
        #[arg(long, value_name = "WHEN")]
        since: Option<String>,
    },
    /// Print the log lines kept for a backup
    #[command(after_help = "Examples:\n  backup log gw-20261122T020000Z_gw-1_standalone.bkp")]
    Log {
        /// Image name
        image: String,
    },
    /// Delete images the retention policy does not keep (audited)
    // The help names the config section as written, which a doc comment
    // cannot (rustdoc would take `[retention]` for a link).
    #[command(
        about = "Delete images the [retention] policy does not keep (audited)",
        after_help = "Examples:\n  backup prune --dry-run\n  backup prune"
    )]
    Prune {
        /// Only list what would be deleted
        #[arg(long)]
        dry_run: bool,
    },
    /// Print the next scheduled run times
    #[command(after_help = "Examples:\n  backup schedule -n 10")]
    Schedule {
        /// How many
        #[arg(short = 'n', long, default_value_t = 5)]
        count: usize,
    },
    /// Run scheduled backups until SIGTERM/SIGINT (a running backup finishes first)
    #[command(
        after_help = "Examples:\n  backup daemon                 usually started by a service manager"
    )]
    Daemon,
    /// Serve backups over HTTPS (backup-http's service) until SIGTERM/SIGINT
    /// (running requests, such as a streaming backup, finish first); SIGHUP
    /// reloads the users file
    #[command(
        long_about = "Serve backups over HTTPS until SIGTERM/SIGINT: no new connections are \
accepted, requests in flight (such as a streaming backup) finish, then it exits 0; a second signal \
stops at once. SIGHUP reloads the users file.\n\n\
Without [http] tls_cert and tls_key in the configuration, the first start makes a self-signed \
certificate (ECDSA P-256; names: the host name, localhost, 127.0.0.1, ::1 and every non-loopback \
address) at STATE_DIR/http/cert.pem with its key in key.pem (mode 0600), and every start prints \
its fingerprint: sha256: and the SHA-256 of the DER certificate.",
        after_help = "Examples:\n  backup serve                                   on [http] listen (default 127.0.0.1:8443)\n  \
backup serve --listen 0.0.0.0:8443\n  \
curl --cacert STATE_DIR/http/cert.pem https://localhost:8443/healthz\n  \
openssl x509 -in STATE_DIR/http/cert.pem -outform DER | sha256sum    the fingerprint printed\n  \
openssl s_client -connect HOST:8443 </dev/null 2>/dev/null | openssl x509 -outform DER | sha256sum    what clients get"
    )]
    Serve(serve::ServeArgs),
    /// Domain master secret operations
    #[command(
        subcommand,
        after_help = "Examples:\n  backup key check\n  backup key rotate --new-secret-file /root/new.secret\n  \
backup key rewrap IMAGE..."
    )]
    Key(ops_cmd::KeyCommand),
    /// Users of the HTTP service (`backup serve`) in state_dir/users.toml:
    /// add, change a password, delete, list
    #[command(
        subcommand,
        after_help = "Examples:\n  backup user add alice --role admin          asks for the password twice\n  \
BACKUP_USER_PASSWORD=… backup user add audit --role auditor\n  \
backup user list"
    )]
    User(user_cmd::UserCommand),
    /// API tokens of the HTTP service's users, for cron (login USER!NAME in .netrc or .wgetrc)
    #[command(
        subcommand,
        after_help = "Examples:\n  backup token create alice cron --expires 90d\n  backup token list\n  \
backup token del alice cron"
    )]
    Token(user_cmd::TokenCommand),
    /// Clusters and HA pairs: back up every node as one bundle, list and
    /// show bundles, extract one node's image, print the restore order
    #[command(
        subcommand,
        after_help = "Examples:\n  backup cluster create\n  backup --json cluster create --include-audits\n  \
backup cluster list\n  backup cluster show BUNDLE\n  \
backup cluster extract BUNDLE --node data-1\n  backup cluster restore-plan BUNDLE\n  \
backup restore BUNDLE --node data-1        restore a node straight from a bundle"
    )]
    Cluster(cluster_cmd::ClusterCommand),
    /// Build a demo appliance in a fresh directory, back it up, verify it,
    /// restore it elsewhere and prove the restore is identical
    #[command(after_help = "Examples:\n  backup quickstart\n  backup quickstart --dir /tmp/demo")]
    Quickstart {
        /// Directory for the demo [default: a new directory under the system temp dir]
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
    },
    /// Print a shell completion script on stdout
    #[command(
        after_help = "Examples:\n  backup completions bash > /etc/bash_completion.d/backup\n  \
backup completions zsh > \"${fpath[1]}/_backup\""
    )]
    Completions {
        /// The shell
        shell: clap_complete::Shell,
    },
    /// Print the manual page (roff) on stdout
    #[command(
        after_help = "Examples:\n  backup man > /usr/local/share/man/man1/backup.1\n  backup man | man -l -"
    )]
    Man,
}

#[derive(Args)]
struct CreateArgs {
    /// Back up only this component (repeatable): a custom backup
    #[arg(long = "component", short = 'C', value_name = "NAME")]
    components: Vec<String>,
    /// Also back up audit components (excluded from a standard backup)
    #[arg(long)]
    include_audits: bool,
    /// Fail at the first failing component and publish nothing (default:
    /// finish the others and publish a partial image, exit code 3)
    #[arg(long)]
    halt: bool,
    /// Read every file, copying nothing from the frame cache (which is then
    /// rebuilt from what this backup reads)
    #[arg(long)]
    no_cache: bool,
    /// Write the image to this file (or `-` for standard output) instead of the configured storage
    #[arg(short, long, value_name = "FILE")]
    output: Option<PathBuf>,
}

#[derive(Args)]
struct RestoreArgs {
    /// Image name in the storage, a path to an image file, or
    /// sftp://user@host/path/IMAGE.bkp (a port: host:2222) on any SSH server (pulled
    /// first; with --node: a cluster bundle's name or path)
    image: String,
    /// Restore this node's image out of the cluster bundle IMAGE; takes the
    /// bundle's restore lease (one node at a time: exit 4 while another
    /// node's restore holds it)
    #[arg(long, value_name = "NAME")]
    node: Option<String>,
    /// With --node: take over the bundle's restore lease if its holder is
    /// gone (its process ended, or it is older than lease_stale_secs of the
    /// cluster section, 6 h by default)
    #[arg(long, requires = "node")]
    take_over_lease: bool,
    /// Restore only this component (repeatable)
    #[arg(long = "component", short = 'C', value_name = "NAME")]
    components: Vec<String>,
    /// Also restore the image's audit components (left out by default: audit
    /// records written since the backup would be lost)
    #[arg(long)]
    include_audits: bool,
    /// Restore under this directory instead of the live paths (for inspection)
    #[arg(long, value_name = "DIR")]
    target: Option<PathBuf>,
    /// Print what the restore would replace, add, remove and keep, and change nothing
    #[arg(long)]
    dry_run: bool,
    /// Go ahead without asking (needed without a terminal when restoring in
    /// place or into a non-empty --target directory)
    #[arg(long, short = 'y')]
    yes: bool,
    /// Accept an image made by another product version
    #[arg(long)]
    force_version: bool,
    /// Accept an image of another node (a backup is not an export: be sure)
    #[arg(long)]
    force_identity: bool,
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return usage_error(e),
    };
    let log = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("BACKUP_LOG")
                .unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr);
    if cli.json {
        log.event_format(report::JsonLog).init();
    } else {
        log.with_ansi(report::colour()).init();
    }
    let json = cli.json;
    let code = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the runtime")
    {
        Ok(runtime) => runtime.block_on(run(cli)),
        Err(e) => Err(e),
    };
    report::clear_progress();
    match code {
        Ok(code) => code,
        // The reader of our output went away (`backup list | head -1`):
        // nothing is wrong, and there is nobody left to tell.
        Err(e) if e.chain().any(|c| c.is::<report::StdoutClosed>()) => ExitCode::SUCCESS,
        Err(e) => {
            if json {
                let doc = error_document(&e);
                if print_json(&doc).is_err() {
                    let _ = writeln!(std::io::stderr(), "{doc}");
                }
            } else {
                let message = format!("{e:#}");
                // A refusal for want of room carries its table over several lines.
                let message = if e
                    .chain()
                    .any(|c| matches!(c.downcast_ref::<Error>(), Some(Error::NoRoom(_))))
                {
                    report::escape_control_lines(&message)
                } else {
                    escape_control(&message).into_owned()
                };
                let _ = writeln!(std::io::stderr(), "error: {message}");
            }
            ExitCode::from(exit_code(&e))
        }
    }
}

/// A command line clap refused. With `--json` anywhere before `--`, the
/// error is a JSON document too; help and version print as usual.
fn usage_error(e: clap::Error) -> ExitCode {
    let json = std::env::args_os()
        .take_while(|a| a != "--")
        .any(|a| a == "--json");
    if !json || !e.use_stderr() {
        e.exit();
    }
    let text = e.render().to_string();
    let message = text.trim().trim_start_matches("error: ");
    let doc = serde_json::json!({
        "error": { "kind": "usage", "class": "input", "message": message }
    });
    let _ = print_json(&doc);
    ExitCode::from(u8::try_from(e.exit_code()).unwrap_or(EXIT_USAGE))
}

/// The engine's classification of a failed command: the kind and name of
/// the first error in the chain that the engine, its storage or its
/// encryption raised; `None` for anything else (exit code 1, kind `other`).
fn classify(e: &anyhow::Error) -> Option<(ErrorKind, &'static str)> {
    e.chain().find_map(Error::classify)
}

/// The exit code of a failed command (see the top of this file): the one
/// place that maps errors to exit codes.
fn exit_code(e: &anyhow::Error) -> u8 {
    match classify(e).map(|(kind, _)| kind) {
        Some(ErrorKind::Busy) => EXIT_SKIPPED,
        Some(kind) if kind.is_callers_to_fix() => EXIT_USAGE,
        _ => 1,
    }
}

/// The `--json` error document: `kind` names the specific error
/// (`wrong_passphrase`, `not_found`, `version_mismatch`, …, or `other`),
/// `class` its [`ErrorKind`] (`input`, `config`, `not_found`, `conflict`,
/// `refused`, `busy`, `failed`, or `other`).
fn error_document(e: &anyhow::Error) -> serde_json::Value {
    let (class, kind) = match classify(e) {
        Some((kind, name)) => (kind.as_str(), name),
        None => ("other", "other"),
    };
    serde_json::json!({
        "error": { "kind": kind, "class": class, "message": format!("{e:#}") }
    })
}

/// `--config`, else `$BACKUP_CONFIG` (both through clap), else
/// `./backup.toml` if it exists, else `/etc/backup/backup.toml`.
pub(crate) fn config_path(cli: &Cli) -> PathBuf {
    if let Some(c) = &cli.config {
        return c.clone();
    }
    let local = PathBuf::from("backup.toml");
    if local.exists() {
        local
    } else {
        PathBuf::from(SYSTEM_CONFIG)
    }
}

/// The configuration file when there is no other.
const SYSTEM_CONFIG: &str = "/etc/backup/backup.toml";

pub(crate) fn engine(cli: &Cli) -> anyhow::Result<Engine> {
    let config = Config::load(&config_path(cli))?;
    let secret: Arc<dyn PassphraseProvider> = Arc::new(CliSecret {
        file: cli.secret_file.clone(),
        env: Some(secret::SECRET_ENV),
    });
    Ok(Engine::builder(config)
        .passphrase_provider(secret)
        .progress(Arc::new(Reporter::new(cli.verbose, cli.quiet, cli.json)))
        .build()?)
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match &cli.command {
        Command::Init => init(&cli),
        Command::Create(args) => create(&cli, args).await,
        Command::List => list(&cli).await,
        Command::Show { image } => show(&cli, image).await,
        Command::Verify { image } => verify(&cli, image).await,
        Command::Copy(args) => copy_cmd::copy(&cli, args).await,
        Command::Restore(args) => restore(&cli, args).await,
        Command::Drill(args) => drill_cmd::drill(&cli, args).await,
        Command::Decrypt { image, output } => decrypt(&cli, image, output).await,
        Command::Encrypt {
            input,
            output,
            rehash,
        } => {
            let engine = engine(&cli)?;
            let sealed = if *rehash {
                engine.encrypt_rehash(input, output).await
            } else {
                engine.encrypt(input, output).await
            };
            let n = sealed.with_context(|| format!("sealing {}", input.display()))?;
            if cli.json {
                print_json(
                    &serde_json::json!({ "output": output, "bytes": n, "rehashed": rehash }),
                )?;
            } else if !cli.quiet {
                outln!(
                    "sealed {} into {} ({}){}",
                    escape_control(&input.display().to_string()),
                    escape_control(&output.display().to_string()),
                    human(n),
                    if *rehash {
                        "; its manifest now records the edited content"
                    } else {
                        ""
                    }
                )?;
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Quickstart { dir } => quickstart::run(dir.clone(), cli.json).await,
        Command::Completions { shell } => completions(*shell, cli.json),
        Command::Man => manpage(cli.json),
        Command::Fetch { image, output } => {
            storage_cmd::fetch(&engine(&cli)?, image, output, &cli).await
        }
        Command::Browse { path } => storage_cmd::browse(&engine(&cli)?, path, cli.json).await,
        Command::Links {
            images,
            expires,
            csv,
        } => storage_cmd::links(&engine(&cli)?, images, expires, csv.as_deref(), cli.json).await,
        Command::Status => ops_cmd::status(&engine(&cli)?, cli.json),
        Command::Audit { since } => ops_cmd::audit(&engine(&cli)?, since.as_deref(), cli.json),
        Command::Log { image } => ops_cmd::log(&engine(&cli)?, image, cli.json),
        Command::Prune { dry_run } => ops_cmd::prune(&engine(&cli)?, *dry_run, &cli).await,
        Command::Schedule { count } => ops_cmd::schedule(&engine(&cli)?, *count, cli.json),
        Command::Daemon => ops_cmd::daemon(engine(&cli)?, cli.json).await,
        Command::Serve(args) => serve::command(&cli, args).await,
        Command::Key(k) => ops_cmd::key(&cli, k).await,
        Command::User(c) => user_cmd::user(&cli, c),
        Command::Token(c) => user_cmd::token(&cli, c),
        Command::Cluster(c) => cluster_cmd::cluster(&cli, c).await,
    }
}

fn init(cli: &Cli) -> anyhow::Result<ExitCode> {
    let engine = engine(cli)?;
    let state = &engine.config().appliance.state_dir;
    let keyring = state.join(backup_core::KEYRING_FILE);
    let params: KdfParams = engine.config().encryption.kdf_params();
    // The engine refuses an initialised appliance before asking for a
    // secret that could not be used anyway.
    let result = engine.init_keys(|| {
        let secret = CliSecret {
            file: cli.secret_file.clone(),
            env: Some(secret::SECRET_ENV),
        };
        let pass = secret
            .passphrase("set the domain master secret (at least 8 characters)", true)?
            .ok_or_else(|| Error::PassphraseRequired("set the domain master secret".into()))?;
        if !cli.quiet {
            report::notice(
                cli.json,
                &format!(
                    "deriving the key slot (Argon2id, {} MiB, {} passes, {} lanes)…",
                    params.memory_kib / 1024,
                    params.iterations,
                    params.parallelism
                ),
            );
        }
        Ok(pass)
    });
    let id = result?;
    if cli.json {
        print_json(&serde_json::json!({ "key_id": id.to_string(), "state_dir": state }))?;
    } else if !cli.quiet {
        outln!("domain master secret set (key id {id})")?;
        outln!("  keyring:         {}", keyring.display())?;
        outln!(
            "  master key file: {} (mode 0600, for unattended backups)",
            state.join(backup_core::KEY_FILE).display()
        )?;
        outln!("Keep the secret safe: an image plus the secret restores this appliance anywhere.")?;
    }
    Ok(ExitCode::SUCCESS)
}

/// Keeps standard output for the image alone (`create -o -`): gives a
/// duplicate of it for the image and points standard output at standard
/// error, so that the report, and anything else that would print there,
/// cannot end up inside the image.
fn stdout_for_image() -> anyhow::Result<std::fs::File> {
    use std::os::fd::AsFd;
    if std::io::stdout().is_terminal() {
        return Err(Error::Input(
            "-o - writes the image to standard output, which is a terminal: redirect it \
             (`backup create -o - > image.bkp`, or into a pipe) or pass -o FILE"
                .into(),
        )
        .into());
    }
    let mut stdout = std::io::stdout().lock();
    stdout.flush().context("writing to standard output")?;
    let image = stdout
        .as_fd()
        .try_clone_to_owned()
        .context("duplicating standard output")?;
    rustix::stdio::dup2_stdout(std::io::stderr())
        .context("pointing standard output at standard error")?;
    report::results_on_stderr();
    Ok(std::fs::File::from(image))
}

async fn create(cli: &Cli, args: &CreateArgs) -> anyhow::Result<ExitCode> {
    let mut opts = CreateOptions::default();
    opts.destination = match &args.output {
        Some(path) if path.as_os_str() == "-" => Destination::Stream(
            ImageStream::new(tokio::fs::File::from_std(stdout_for_image()?))
                .named("standard output"),
        ),
        Some(path) => Destination::File(path.clone()),
        None => Destination::Storage,
    };
    let engine = engine(cli)?;
    opts.components = args.components.clone();
    opts.include_audits = args.include_audits;
    opts.halt = args.halt;
    opts.no_cache = args.no_cache;
    let report = engine.create(&opts).await.context("backup failed")?;
    if cli.json {
        print_json(&report)?;
    } else if !cli.quiet || report.outcome != Outcome::Success {
        outln!(
            "{}: {} ({}) in {}",
            report.outcome,
            escape_control(&report.image),
            human(report.size),
            report.location
        )?;
        for c in &report.manifest.components {
            match &c.error {
                Some(e) => outln!(
                    "  {:<12} {:<8} {}",
                    c.name,
                    c.outcome.as_str(),
                    escape_control(e)
                )?,
                None => outln!(
                    "  {:<12} {:<8} {} entries, {}",
                    c.name,
                    c.outcome.as_str(),
                    c.entries,
                    human(c.bytes)
                )?,
            }
        }
        for n in &report.not_applicable {
            outln!("  not applicable: {n}")?;
        }
        for n in &report.pruned {
            outln!("  deleted by retention: {}", escape_control(n))?;
        }
    }
    // A failed copy leaves the backup's outcome (and exit code) alone; it
    // is shown even with -q, and reported in the status, audit log and
    // on_failure hook.
    if !cli.json && (!cli.quiet || report.copies.iter().any(|c| !c.outcome.is_ok())) {
        for c in &report.copies {
            copy_cmd::print_record(c)?;
        }
    }
    Ok(match report.outcome {
        Outcome::Success => ExitCode::SUCCESS,
        _ => ExitCode::from(EXIT_PARTIAL),
    })
}

async fn list(cli: &Cli) -> anyhow::Result<ExitCode> {
    let engine = engine(cli)?;
    let images = engine.list().await.context("listing images")?;
    if cli.json {
        print_json(&images)?;
        return Ok(ExitCode::SUCCESS);
    }
    if images.is_empty() {
        outln!(
            "no images in {}",
            engine.storage().map(|s| s.to_string()).unwrap_or_default()
        )?;
        return Ok(ExitCode::SUCCESS);
    }
    outln!(
        "{:<48} {:<20} {:<10} {:<10} {:<8} {:>10}  SELECTION",
        "IMAGE",
        "CREATED",
        "NODE",
        "ROLE",
        "OUTCOME",
        "SIZE"
    )?;
    for i in &images {
        let (created, node, role) = match (&i.sidecar, &i.parsed) {
            (Some(s), _) => (
                s.info.created.format("%Y-%m-%d %H:%M:%S").to_string(),
                s.info.node.clone(),
                s.info.role.to_string(),
            ),
            (None, Some(p)) => (
                p.created.format("%Y-%m-%d %H:%M:%S").to_string(),
                p.node.clone(),
                p.role.clone(),
            ),
            _ => ("?".into(), "?".into(), "?".into()),
        };
        let outcome = i
            .sidecar
            .as_ref()
            .map(|s| s.manifest.outcome.as_str())
            .unwrap_or("?");
        // The stored size is not the one written: it will not verify.
        let damaged = match i.expected_size {
            Some(e) if i.size_mismatch && i.size < e => {
                format!("  TRUNCATED: {} of {e} bytes", i.size)
            }
            Some(e) if i.size_mismatch => format!("  SIZE: {} bytes, {e} written", i.size),
            _ => String::new(),
        };
        let selection = i
            .selection
            .as_ref()
            .map(ToString::to_string)
            .unwrap_or_else(|| "?".into());
        outln!(
            "{:<48} {:<20} {:<10} {:<10} {:<8} {:>10}  {selection}{damaged}",
            escape_control(&i.name),
            created,
            node,
            role,
            outcome,
            human(i.size)
        )?;
        if let Some(e) = &i.sidecar_error {
            outln!("    (details unavailable: {})", escape_control(e))?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn print_details(d: &ImageDetails) -> anyhow::Result<()> {
    outln!("image:           {}", escape_control(&d.image))?;
    if let Some(size) = d.size {
        outln!("size:            {} ({size} bytes)", human(size))?;
    }
    outln!("created:         {}", d.info.created.to_rfc3339())?;
    outln!(
        "product:         {} {}",
        d.info.product,
        d.info.product_version
    )?;
    outln!("node:            {} ({})", d.info.node, d.info.role)?;
    if let Some(c) = &d.info.cluster {
        outln!("cluster:         {c}")?;
    }
    outln!("selection:       {}", d.selection)?;
    outln!("compression:     {}", d.info.compression.name())?;
    outln!("outcome:         {}", d.manifest.outcome)?;
    outln!("components:")?;
    for c in &d.manifest.components {
        outln!(
            "  {:<12} {:<8} {:>6} entries {:>10}  sha256 {}",
            c.name,
            c.outcome.as_str(),
            c.entries,
            human(c.bytes),
            &c.sha256[..16.min(c.sha256.len())]
        )?;
        if let Some(e) = &c.error {
            outln!("      error: {}", escape_control(e))?;
        }
        for w in &c.warnings {
            outln!("      warning: {}", escape_control(w))?;
        }
    }
    Ok(())
}

/// Which image an `IMAGE` argument names: an existing file, anything with a
/// `/` (`/dev/stdin` for `-` included), or anything at all when no storage
/// is configured, is a file; otherwise it is a name in the storage.
pub(crate) fn image_ref(engine: &Engine, arg: &str) -> ImageRef {
    let path = Path::new(arg);
    if path.is_file() || arg.contains('/') || engine.storage().is_none() {
        ImageRef::File(path.to_path_buf())
    } else {
        ImageRef::Stored(arg.to_string())
    }
}

async fn show(cli: &Cli, image: &str) -> anyhow::Result<ExitCode> {
    let engine = engine(cli)?;
    let details = engine
        .show(image_ref(&engine, image))
        .await
        .with_context(|| format!("reading {image}"))?;
    if cli.json {
        print_json(&details)?;
    } else {
        print_details(&details)?;
    }
    Ok(ExitCode::SUCCESS)
}

async fn verify(cli: &Cli, image: &str) -> anyhow::Result<ExitCode> {
    // `-` is the image on standard input (`backup create -o - | backup verify -`).
    let image = if image == "-" {
        if std::io::stdin().is_terminal() {
            return Err(Error::Input(
                "verify - reads the image from standard input, which is a terminal: pipe or \
                 redirect the image into it (`backup verify - < image.bkp`)"
                    .into(),
            )
            .into());
        }
        "/dev/stdin"
    } else {
        image
    };
    let engine = engine(cli)?;
    let report = engine
        .verify(image_ref(&engine, image))
        .await
        .with_context(|| format!("verification of {image} failed"))?;
    if cli.json {
        print_json(&report)?;
    } else {
        if !cli.quiet {
            outln!(
                "verified {} ({}): decrypted, decompressed and checked {} against the manifest",
                escape_control(&report.image),
                human(report.size),
                report.verified.join(", ")
            )?;
        }
        for c in report
            .manifest
            .components
            .iter()
            .filter(|c| c.outcome != Outcome::Success)
        {
            outln!(
                "  note: component {} is recorded as {} in this image",
                c.name,
                c.outcome
            )?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The image a restore reads: `IMAGE`, or with `--node` that node's image
/// in the bundle `IMAGE`.
fn restore_source(engine: &Engine, args: &RestoreArgs) -> ImageRef {
    let given = image_ref(engine, &args.image);
    match &args.node {
        Some(node) => ImageRef::Node {
            bundle: Box::new(given),
            node: node.clone(),
        },
        None => given,
    }
}

async fn restore(cli: &Cli, args: &RestoreArgs) -> anyhow::Result<ExitCode> {
    let engine = engine(cli)?;
    // Kept until the restore has ended.
    let pulled = if storage_cmd::is_remote_image(&args.image) {
        Some(storage_cmd::pull_for_restore(&engine, &args.image).await?)
    } else {
        None
    };
    let source = match &pulled {
        Some(p) => {
            let file = ImageRef::File(p.0.clone());
            match &args.node {
                Some(node) => ImageRef::Node {
                    bundle: Box::new(file),
                    node: node.clone(),
                },
                None => file,
            }
        }
        None => restore_source(&engine, args),
    };
    if let (ImageRef::Node { bundle, .. }, false) = (&source, cli.quiet) {
        // The order is advice: the lease enforces one node at a time.
        if let Ok(m) = engine.bundle_manifest(&**bundle).await {
            report::notice(cli.json, &cluster_cmd::order_advice(&m));
        }
    }
    let mut opts = RestoreOptions::default();
    opts.take_over_lease = args.take_over_lease;
    opts.components = args.components.clone();
    opts.include_audits = args.include_audits;
    opts.target = args.target.clone();
    opts.force_version = args.force_version;
    opts.force_identity = args.force_identity;
    if args.dry_run {
        let plan = engine
            .restore_plan(source, &opts)
            .await
            .with_context(|| format!("planning the restore of {} failed", args.image))?;
        if cli.json {
            print_json(&plan)?;
        } else {
            let mut text = Vec::new();
            report::print_plan(&mut text, &plan, None)?;
            report::print_space(&mut text, &plan.space)?;
            report::write_raw(&String::from_utf8_lossy(&text))?;
            outln!("dry run: nothing was changed")?;
        }
        return Ok(ExitCode::SUCCESS);
    }
    if let Some(what) = overwrites(args.target.as_deref()) {
        if !args.yes {
            if !std::io::stdin().is_terminal() {
                let refused: Result<ExitCode, Error> = Err(Error::Input(format!(
                    "restoring {what} replaces files and removes those the image does not hold, \
                     and there is no terminal to confirm on: see the plan with \
                     `{}`, then pass --yes",
                    dry_run_command(args)
                )));
                let target = opts.audit_target(&source.to_string(), None);
                engine.audit_public(
                    Operation::Restore,
                    &target,
                    &refused,
                    std::time::Instant::now(),
                );
                return refused.map_err(Into::into);
            }
            opts.approval = Some(Arc::new(report::AskOnTerminal));
        }
    }
    let report = engine
        .restore(source, &opts)
        .await
        .with_context(|| format!("restore of {} failed", args.image))?;
    if cli.json {
        print_json(&report)?;
    } else if !cli.quiet {
        match &report.target {
            Some(t) => outln!(
                "restored {} from {} under {}",
                report.restored.join(", "),
                escape_control(&report.image),
                escape_control(&t.display().to_string())
            )?,
            None => outln!(
                "restored {} from {}",
                report.restored.join(", "),
                escape_control(&report.image)
            )?,
        }
        for c in &report.plan.components {
            outln!("  {}", report::plan_counts(c))?;
        }
        for s in &report.skipped_failed {
            outln!("  skipped {s}: it failed when the image was made")?;
        }
        let mut text = Vec::new();
        report::print_summary(&mut text, &report.summary)?;
        report::write_raw(&String::from_utf8_lossy(&text))?;
    }
    Ok(if report.skipped_failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_PARTIAL)
    })
}

/// What a restore would overwrite and so needs confirming: the live paths,
/// or a `--target` directory that already holds something. `None` for a new
/// or empty target directory.
fn overwrites(target: Option<&std::path::Path>) -> Option<String> {
    let Some(t) = target else {
        return Some("in place".into());
    };
    match std::fs::read_dir(t).map(|mut entries| entries.next().is_none()) {
        Ok(true) => None,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        _ => Some(format!("into {}, which is not empty,", t.display())),
    }
}

async fn decrypt(cli: &Cli, image: &str, output: &Path) -> anyhow::Result<ExitCode> {
    let engine = engine(cli)?;
    let n = engine
        .decrypt(image_ref(&engine, image), output)
        .await
        .with_context(|| format!("decrypting {image}"))?;
    let codec = payload_codec(output)?;
    // Without an extension, the file is named for what it holds, so that
    // tar and file managers pick the right decompressor.
    let output = if output.extension().is_none() {
        let mut named = output.as_os_str().to_owned();
        named.push(match codec {
            Compression::Gzip => ".tar.gz",
            Compression::Zstd => ".tar.zst",
            _ => ".tar",
        });
        let named = PathBuf::from(named);
        std::fs::rename(output, &named)
            .with_context(|| format!("renaming {} to {}", output.display(), named.display()))?;
        named
    } else {
        output.to_path_buf()
    };
    report::warn(
        cli.json,
        &format!(
            "{} holds this appliance's configuration and secrets in clear; delete it when done",
            output.display()
        ),
    );
    if cli.json {
        print_json(&serde_json::json!({
            "output": output,
            "bytes": n,
            "compression": codec.name(),
        }))?;
    } else if !cli.quiet {
        let file = shell_word(&output.display().to_string());
        let list = match codec {
            Compression::Gzip => format!("tar -tzvf {file}"),
            Compression::Zstd => format!("tar --zstd -tvf {file}"),
            _ => format!("tar -tvf {file}"),
        };
        outln!(
            "wrote {} ({}): list it with `{list}`",
            escape_control(&output.display().to_string()),
            human(n)
        )?;
    }
    Ok(ExitCode::SUCCESS)
}

/// The codec of a decrypted payload, from its first bytes (the gzip and zstd
/// magic numbers; anything else is a plain tar).
fn payload_codec(path: &Path) -> anyhow::Result<Compression> {
    use std::io::Read;
    let mut head = Vec::with_capacity(4);
    std::fs::File::open(path)
        .and_then(|f| f.take(4).read_to_end(&mut head))
        .with_context(|| format!("reading {}", path.display()))?;
    Ok(match head.as_slice() {
        [0x1f, 0x8b, ..] => Compression::Gzip,
        [0x28, 0xb5, 0x2f, 0xfd] => Compression::Zstd,
        _ => Compression::None,
    })
}

/// `backup restore … --dry-run` for the same image, selection and target.
fn dry_run_command(args: &RestoreArgs) -> String {
    let mut words = vec!["backup restore".to_string(), shell_word(&args.image)];
    if let Some(node) = &args.node {
        words.push(format!("--node {}", shell_word(node)));
    }
    for c in &args.components {
        words.push(format!("-C {}", shell_word(c)));
    }
    if args.include_audits {
        words.push("--include-audits".into());
    }
    if let Some(t) = &args.target {
        words.push(format!("--target {}", shell_word(&t.display().to_string())));
    }
    if args.force_version {
        words.push("--force-version".into());
    }
    if args.force_identity {
        words.push("--force-identity".into());
    }
    words.push("--dry-run".into());
    words.join(" ")
}

/// A path as one shell word, for commands the operator may paste.
pub(crate) fn shell_word(s: &str) -> String {
    let plain = |c: char| c.is_ascii_alphanumeric() || "/._-+:,=@%".contains(c);
    if !s.is_empty() && s.chars().all(plain) {
        s.to_string()
    } else {
        format!("'{}'", escape_control(&s.replace('\'', "'\\''")))
    }
}

/// `backup completions SHELL`: the script on stdout (in a JSON document with `--json`).
fn completions(shell: clap_complete::Shell, json: bool) -> anyhow::Result<ExitCode> {
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), "backup", &mut script);
    let script = String::from_utf8(script).context("the completion script is not UTF-8")?;
    if json {
        print_json(&serde_json::json!({ "shell": shell.to_string(), "script": script }))?;
    } else {
        report::write_raw(&script)?;
    }
    Ok(ExitCode::SUCCESS)
}

/// `backup man`: the manual page as roff on stdout (in a JSON document with `--json`).
fn manpage(json: bool) -> anyhow::Result<ExitCode> {
    let mut roff = Vec::new();
    clap_mangen::Man::new(Cli::command())
        .render(&mut roff)
        .context("rendering the manual page")?;
    let roff = String::from_utf8(roff).context("the manual page is not UTF-8")?;
    if json {
        print_json(&serde_json::json!({ "manpage": roff }))?;
    } else {
        report::write_raw(&roff)?;
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_and_json_errors_follow_the_engine_error_kind() {
        let cases: Vec<(anyhow::Error, u8, &str, &str)> = vec![
            (Error::Input("bad".into()).into(), 2, "input", "input"),
            (
                Error::NotFound("no log".into()).into(),
                2,
                "not_found",
                "not_found",
            ),
            (
                Error::from(backup_storage::Error::NotFound {
                    what: "x.bkp".into(),
                    source: None,
                })
                .into(),
                2,
                "not_found",
                "not_found",
            ),
            (
                Error::AlreadyInitialized("/state/keyring.json".into()).into(),
                2,
                "conflict",
                "already_initialized",
            ),
            (
                Error::Busy("restore".into()).into(),
                EXIT_SKIPPED,
                "busy",
                "busy",
            ),
            (
                Error::Preflight("no room".into()).into(),
                1,
                "refused",
                "preflight",
            ),
            (
                Error::from(backup_crypto::Error::WrongPassphrase).into(),
                1,
                "failed",
                "wrong_passphrase",
            ),
            // Bare storage and crypto errors, and ones under a context.
            (
                anyhow::Error::from(backup_storage::Error::InvalidUrl {
                    url: "ftp://".into(),
                    reason: "no host".into(),
                })
                .context("opening the storage"),
                2,
                "config",
                "invalid_url",
            ),
            (
                anyhow::Error::from(backup_crypto::Error::PassphraseTooShort { min: 12 }),
                2,
                "input",
                "passphrase_too_short",
            ),
            (anyhow::anyhow!("something else"), 1, "other", "other"),
        ];
        for (e, code, class, kind) in cases {
            assert_eq!(exit_code(&e), code, "{e:#}");
            let doc = error_document(&e);
            assert_eq!(doc["error"]["class"], class, "{doc}");
            assert_eq!(doc["error"]["kind"], kind, "{doc}");
            assert_eq!(doc["error"]["message"], format!("{e:#}"), "{doc}");
        }
    }
}
