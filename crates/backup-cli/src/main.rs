//! `backup`: the operator and cron frontend of the appliance backup engine.
//!
//! Exit codes: 0 success, 1 failure, 2 usage or input error, 3 partial
//! success, 4 skipped (another backup or restore is running).
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use backup_core::{
    Config, CreateOptions, Engine, Error, ImageDetails, KdfParams, Outcome, PassphraseProvider,
    RestoreOptions,
};
use clap::{Args, Parser, Subcommand};

mod ops_cmd;
mod quickstart;
mod report;
mod secret;
mod storage_cmd;

use report::{human, print_json, Reporter};
use secret::CliSecret;

/// Exit code of a partial success.
const EXIT_PARTIAL: u8 = 3;
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
The domain master secret is never accepted on the command line: it comes from --secret-file FILE, \
the BACKUP_SECRET environment variable, or a prompt on a terminal. Unattended backups use the \
master key file in the state directory and need no secret.",
    after_help = "Exit codes: 0 success, 1 failure, 2 usage or input error, 3 partial success \
(some components failed; the image holds the rest), 4 skipped (another backup or restore is running).\n\nStart with `backup quickstart` to see a demo appliance backed up and restored."
)]
pub(crate) struct Cli {
    /// Configuration file [default: ./backup.toml]
    #[arg(
        long,
        short = 'c',
        global = true,
        env = "BACKUP_CONFIG",
        value_name = "FILE"
    )]
    config: Option<PathBuf>,
    /// Read the domain master secret from this file (first line; mode 0600 recommended)
    #[arg(long, global = true, value_name = "FILE")]
    pub(crate) secret_file: Option<PathBuf>,
    /// Machine-readable output: JSON on stdout, JSON-lines events on stderr
    #[arg(long, global = true)]
    pub(crate) json: bool,
    /// Per-component progress on stderr
    #[arg(long, short = 'v', global = true)]
    verbose: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Set the domain master secret once: creates the master key, its keyring
    /// and the 0600 key file in the state directory (refuses if already set)
    Init,
    /// Take a backup: a standard one (every applicable default component), or
    /// a custom one with --component
    Create(CreateArgs),
    /// List the images in the configured storage
    List,
    /// Show an image's details (from its sidecar manifest, or by reading it)
    Show {
        /// Image name in the storage, or a path to an image file
        image: String,
    },
    /// Decrypt, decompress and check every component against the manifest, writing nothing
    Verify {
        /// Image name in the storage, or a path to an image file
        image: String,
    },
    /// Restore an image onto this appliance (or under --target DIR)
    Restore(RestoreArgs),
    /// Write the decrypted payload (a standard .tar.gz) for standard tools.
    /// The output holds the appliance's secrets in clear
    Decrypt {
        /// Image name in the storage, or a path to an image file
        image: String,
        /// Output file (created atomically, mode 0600)
        #[arg(short, long, value_name = "FILE")]
        output: PathBuf,
    },
    /// Seal a payload (.tar.gz, e.g. edited after `backup decrypt`) into an image
    /// under this appliance's key, after checking it as restore would
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
    /// Download an image from the storage to a local file (to carry it to a replacement machine)
    Fetch {
        /// Image name in the storage
        image: String,
        /// The file to write (created atomically, mode 0600)
        #[arg(short, long, value_name = "FILE")]
        output: PathBuf,
    },
    /// Browse the storage one level at a time: permissions, space, and the
    /// backups with their details; give an image name for its details table
    Browse {
        /// A directory level (`..` for the parent) or an image name [default: the top]
        #[arg(default_value = "")]
        path: String,
    },
    /// Time-limited download links (presigned URLs, S3) for images, as a table or CSV
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
    Status,
    /// Show the audit log (every create, restore, verify, key and prune operation)
    Audit {
        /// Only records at or after this time (RFC 3339, a date YYYY-MM-DD, or a
        /// duration ago such as 2h, 3d)
        #[arg(long, value_name = "WHEN")]
        since: Option<String>,
    },
    /// Print the log lines kept for a backup
    Log {
        /// Image name
        image: String,
    },
    /// Delete images the [retention] policy does not keep (audited)
    Prune {
        /// Only list what would be deleted
        #[arg(long)]
        dry_run: bool,
    },
    /// Print the next scheduled run times
    Schedule {
        /// How many
        #[arg(short = 'n', long, default_value_t = 5)]
        count: usize,
    },
    /// Run scheduled backups until SIGTERM/SIGINT (a running backup finishes first)
    Daemon,
    /// Domain master secret operations
    #[command(subcommand)]
    Key(ops_cmd::KeyCommand),
    /// Build a demo appliance in a fresh directory, back it up, verify it,
    /// restore it elsewhere and prove the restore is identical
    Quickstart {
        /// Directory for the demo [default: a new directory under the system temp dir]
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
    },
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
    /// Write the image to this file (or `-` for standard output) instead of the configured storage
    #[arg(short, long, value_name = "FILE")]
    output: Option<PathBuf>,
}

#[derive(Args)]
struct RestoreArgs {
    /// Image name in the storage, or a path to an image file
    image: String,
    /// Restore only this component (repeatable)
    #[arg(long = "component", short = 'C', value_name = "NAME")]
    components: Vec<String>,
    /// Restore under this directory instead of the live paths (for inspection)
    #[arg(long, value_name = "DIR")]
    target: Option<PathBuf>,
    /// Accept an image made by another product version
    #[arg(long)]
    force_version: bool,
    /// Accept an image of another node (a backup is not an export: be sure)
    #[arg(long)]
    force_identity: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("BACKUP_LOG")
                .unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            let core = e.chain().find_map(|c| c.downcast_ref::<Error>());
            ExitCode::from(match core {
                Some(Error::Busy(_)) => EXIT_SKIPPED,
                Some(c) if c.is_input_error() => EXIT_USAGE,
                _ => 1,
            })
        }
    }
}

pub(crate) fn config_path(cli: &Cli) -> PathBuf {
    cli.config
        .clone()
        .unwrap_or_else(|| PathBuf::from("backup.toml"))
}

pub(crate) fn engine(cli: &Cli) -> anyhow::Result<Engine> {
    let config = Config::load(&config_path(cli))?;
    let secret: Arc<dyn PassphraseProvider> = Arc::new(CliSecret {
        file: cli.secret_file.clone(),
        env: Some(secret::SECRET_ENV),
    });
    Ok(Engine::builder(config)
        .passphrase_provider(secret)
        .progress(Arc::new(Reporter::new(cli.verbose, cli.json)))
        .build()?)
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match &cli.command {
        Command::Init => init(&cli),
        Command::Create(args) => create(&cli, args).await,
        Command::List => list(&cli).await,
        Command::Show { image } => show(&cli, image).await,
        Command::Verify { image } => verify(&cli, image).await,
        Command::Restore(args) => restore(&cli, args).await,
        Command::Decrypt { image, output } => {
            let engine = engine(&cli)?;
            eprintln!(
                "warning: {} will hold this appliance's configuration and secrets in clear; delete it when done",
                output.display()
            );
            let n = engine
                .decrypt(image, output)
                .await
                .with_context(|| format!("decrypting {image}"))?;
            if cli.json {
                print_json(&serde_json::json!({ "output": output, "bytes": n }))?;
            } else {
                println!(
                    "wrote {} ({}): list it with `tar -tzvf {}`",
                    output.display(),
                    human(n),
                    output.display()
                );
            }
            Ok(ExitCode::SUCCESS)
        }
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
            } else {
                println!(
                    "sealed {} into {} ({}){}",
                    input.display(),
                    output.display(),
                    human(n),
                    if *rehash {
                        "; its manifest now records the edited content"
                    } else {
                        ""
                    }
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Quickstart { dir } => quickstart::run(dir.clone()).await,
        Command::Fetch { image, output } => {
            storage_cmd::fetch(&engine(&cli)?, image, output, cli.json).await
        }
        Command::Browse { path } => storage_cmd::browse(&engine(&cli)?, path, cli.json).await,
        Command::Links {
            images,
            expires,
            csv,
        } => storage_cmd::links(&engine(&cli)?, images, expires, csv.as_deref(), cli.json).await,
        Command::Status => ops_cmd::status(&engine(&cli)?, cli.json),
        Command::Audit { since } => ops_cmd::audit(&engine(&cli)?, since.as_deref(), cli.json),
        Command::Log { image } => ops_cmd::log(&engine(&cli)?, image),
        Command::Prune { dry_run } => ops_cmd::prune(&engine(&cli)?, *dry_run, cli.json).await,
        Command::Schedule { count } => ops_cmd::schedule(&engine(&cli)?, *count, cli.json),
        Command::Daemon => ops_cmd::daemon(engine(&cli)?).await,
        Command::Key(k) => ops_cmd::key(&cli, k).await,
    }
}

fn init(cli: &Cli) -> anyhow::Result<ExitCode> {
    let config = Config::load(&config_path(cli))?;
    let state = &config.appliance.state_dir;
    let keyring = state.join(backup_core::KEYRING_FILE);
    if keyring.exists() {
        return Err(Error::AlreadyInitialized(keyring).into());
    }
    let secret = CliSecret {
        file: cli.secret_file.clone(),
        env: Some(secret::SECRET_ENV),
    };
    let pass = secret
        .passphrase("set the domain master secret (at least 8 characters)", true)?
        .ok_or_else(|| Error::PassphraseRequired("set the domain master secret".into()))?;
    let params: KdfParams = config.encryption.kdf_params();
    eprintln!(
        "deriving the key slot (Argon2id, {} MiB, {} passes, {} lanes)…",
        params.memory_kib / 1024,
        params.iterations,
        params.parallelism
    );
    let id = backup_core::init_keys(state, &pass, params)?;
    if cli.json {
        print_json(&serde_json::json!({ "key_id": id.to_string(), "state_dir": state }))?;
    } else {
        println!("domain master secret set (key id {id})");
        println!("  keyring:         {}", keyring.display());
        println!(
            "  master key file: {} (mode 0600, for unattended backups)",
            state.join(backup_core::KEY_FILE).display()
        );
        println!(
            "Keep the secret safe: an image plus the secret restores this appliance anywhere."
        );
    }
    Ok(ExitCode::SUCCESS)
}

async fn create(cli: &Cli, args: &CreateArgs) -> anyhow::Result<ExitCode> {
    let engine = engine(cli)?;
    let mut opts = CreateOptions::default();
    opts.components = args.components.clone();
    opts.include_audits = args.include_audits;
    opts.halt = args.halt;
    opts.output = args.output.clone();
    let report = engine.create(&opts).await.context("backup failed")?;
    if cli.json {
        print_json(&report)?;
    } else {
        println!(
            "{}: {} ({}) in {}",
            report.outcome,
            report.image,
            human(report.size),
            report.location
        );
        for c in &report.manifest.components {
            match &c.error {
                Some(e) => println!("  {:<12} {:<8} {e}", c.name, c.outcome.as_str()),
                None => println!(
                    "  {:<12} {:<8} {} entries, {}",
                    c.name,
                    c.outcome.as_str(),
                    c.entries,
                    human(c.bytes)
                ),
            }
        }
        for n in &report.not_applicable {
            println!("  not applicable: {n}");
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
        println!(
            "no images in {}",
            engine.storage().map(|s| s.to_string()).unwrap_or_default()
        );
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{:<48} {:<20} {:<10} {:<10} {:<8} {:>10}",
        "IMAGE", "CREATED", "NODE", "ROLE", "OUTCOME", "SIZE"
    );
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
        println!(
            "{:<48} {:<20} {:<10} {:<10} {:<8} {:>10}{damaged}",
            i.name,
            created,
            node,
            role,
            outcome,
            human(i.size)
        );
        if let Some(e) = &i.sidecar_error {
            println!("    (details unavailable: {e})");
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn print_details(d: &ImageDetails) {
    println!("image:           {}", d.image);
    if let Some(size) = d.size {
        println!("size:            {} ({size} bytes)", human(size));
    }
    println!("created:         {}", d.info.created.to_rfc3339());
    println!(
        "product:         {} {}",
        d.info.product, d.info.product_version
    );
    println!("node:            {} ({})", d.info.node, d.info.role);
    if let Some(c) = &d.info.cluster {
        println!("cluster:         {c}");
    }
    println!("selection:       {:?}", d.info.selection);
    println!("compression:     {:?}", d.info.compression);
    println!("outcome:         {}", d.manifest.outcome);
    println!("components:");
    for c in &d.manifest.components {
        println!(
            "  {:<12} {:<8} {:>6} entries {:>10}  sha256 {}",
            c.name,
            c.outcome.as_str(),
            c.entries,
            human(c.bytes),
            &c.sha256[..16.min(c.sha256.len())]
        );
        if let Some(e) = &c.error {
            println!("      error: {e}");
        }
        for w in &c.warnings {
            println!("      warning: {w}");
        }
    }
}

async fn show(cli: &Cli, image: &str) -> anyhow::Result<ExitCode> {
    let engine = engine(cli)?;
    let details = engine
        .show(image)
        .await
        .with_context(|| format!("reading {image}"))?;
    if cli.json {
        print_json(&details)?;
    } else {
        print_details(&details);
    }
    Ok(ExitCode::SUCCESS)
}

async fn verify(cli: &Cli, image: &str) -> anyhow::Result<ExitCode> {
    let engine = engine(cli)?;
    let report = engine
        .verify(image)
        .await
        .with_context(|| format!("verification of {image} failed"))?;
    if cli.json {
        print_json(&report)?;
    } else {
        println!(
            "verified {} ({}): decrypted, decompressed and checked {} against the manifest",
            report.image,
            human(report.size),
            report.verified.join(", ")
        );
        for c in report
            .manifest
            .components
            .iter()
            .filter(|c| c.outcome != Outcome::Success)
        {
            println!(
                "  note: component {} is recorded as {} in this image",
                c.name, c.outcome
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn restore(cli: &Cli, args: &RestoreArgs) -> anyhow::Result<ExitCode> {
    let engine = engine(cli)?;
    let mut opts = RestoreOptions::default();
    opts.components = args.components.clone();
    opts.target = args.target.clone();
    opts.force_version = args.force_version;
    opts.force_identity = args.force_identity;
    let report = engine
        .restore(&args.image, &opts)
        .await
        .with_context(|| format!("restore of {} failed", args.image))?;
    if cli.json {
        print_json(&report)?;
    } else {
        match &report.target {
            Some(t) => println!(
                "restored {} from {} under {}",
                report.restored.join(", "),
                report.image,
                t.display()
            ),
            None => println!(
                "restored {} from {}",
                report.restored.join(", "),
                report.image
            ),
        }
        for s in &report.skipped_failed {
            println!("  skipped {s}: it failed when the image was made");
        }
    }
    Ok(ExitCode::SUCCESS)
}
