//! Storage commands: fetch, browse, links.
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use backup_core::{Browse, Engine};

use crate::report::{escape_control, human, outln, print_json};
use crate::Cli;

pub(crate) async fn fetch(
    engine: &Engine,
    image: &str,
    out: &Path,
    cli: &Cli,
) -> anyhow::Result<ExitCode> {
    let n = if is_remote_image(image) {
        pull(engine, image, out).await
    } else {
        Ok(engine.fetch(crate::image_ref(engine, image), out).await?)
    }
    .with_context(|| format!("fetching {image}"))?;
    if cli.json {
        print_json(&serde_json::json!({ "image": image, "output": out, "bytes": n }))?;
    } else if !cli.quiet {
        let out = escape_control(&out.display().to_string()).into_owned();
        outln!(
            "fetched {} to {out} ({}); restore it with `backup restore {out}`",
            escape_control(image),
            human(n),
        )?;
    }
    Ok(ExitCode::SUCCESS)
}

fn space(v: Option<u64>) -> String {
    v.map(human).unwrap_or_else(|| "unknown".into())
}

pub(crate) async fn browse(engine: &Engine, path: &str, json: bool) -> anyhow::Result<ExitCode> {
    let browse = engine
        .browse(path)
        .await
        .with_context(|| format!("browsing {path:?}"))?;
    if json {
        print_json(&browse)?;
        return Ok(ExitCode::SUCCESS);
    }
    match browse {
        Browse::Backup(d) => {
            outln!("backup {}", escape_control(&d.image))?;
            outln!("  created          {}", d.info.created.to_rfc3339())?;
            outln!("  node / role      {} / {}", d.info.node, d.info.role)?;
            outln!(
                "  product version  {} {}",
                d.info.product,
                d.info.product_version
            )?;
            outln!(
                "  image size       {}",
                d.size.map(human).unwrap_or_else(|| "?".into())
            )?;
            outln!("  outcome          {}", d.manifest.outcome)?;
            outln!(
                "  {:<14} {:<8} {:>8} {:>10}",
                "COMPONENT",
                "OUTCOME",
                "ENTRIES",
                "SIZE"
            )?;
            for c in &d.manifest.components {
                outln!(
                    "  {:<14} {:<8} {:>8} {:>10}",
                    c.name,
                    c.outcome.as_str(),
                    c.entries,
                    human(c.bytes)
                )?;
            }
        }
        Browse::Level(v) => {
            outln!("{} /{}", v.location, v.path)?;
            let access = if v.access.exists == Some(false) {
                "missing: no such directory".to_string()
            } else {
                format!(
                    "read {}, write {}",
                    if v.access.read { "yes" } else { "NO" },
                    match v.access.write {
                        Some(true) => "yes",
                        Some(false) => "NO",
                        None => "unknown",
                    }
                )
            };
            outln!(
                "  access: {access}   space: {} used, {} free, {} total",
                space(v.used),
                space(v.free),
                space(v.total)
            )?;
            if let Some(parent) = &v.parent {
                outln!(
                    "  ..{}",
                    if parent.is_empty() {
                        String::new()
                    } else {
                        format!("  ({parent})")
                    }
                )?;
            }
            for d in &v.dirs {
                outln!("  {}", escape_control(d))?;
            }
            for i in &v.images {
                match &i.sidecar {
                    Some(s) => outln!(
                        "  {:<48} {:>10}  {}  {} {}  {} {}  {}",
                        escape_control(&i.name),
                        human(i.size),
                        s.info.created.format("%Y-%m-%d %H:%M"),
                        s.info.node,
                        s.info.role,
                        s.info.product,
                        s.info.product_version,
                        s.manifest.outcome
                    )?,
                    None => outln!(
                        "  {:<48} {:>10}  (details unavailable)",
                        escape_control(&i.name),
                        human(i.size)
                    )?,
                }
            }
            for o in &v.others {
                outln!("  {}", escape_control(o))?;
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn parse_duration(s: &str) -> anyhow::Result<Duration> {
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = num
        .parse()
        .with_context(|| format!("--expires {s:?}: use a number with s, m, h or d (e.g. 6h)"))?;
    let secs = match unit {
        "s" => n,
        "m" => n * 60,
        "h" | "" => n * 3600,
        "d" => n * 86400,
        _ => anyhow::bail!("--expires {s:?}: use a number with s, m, h or d (e.g. 6h)"),
    };
    anyhow::ensure!(
        secs > 0 && secs <= 7 * 86400,
        "--expires must be between 1s and 7d (the S3 limit)"
    );
    Ok(Duration::from_secs(secs))
}

pub(crate) async fn links(
    engine: &Engine,
    images: &[String],
    expires: &str,
    csv: Option<&Path>,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let lifetime = parse_duration(expires)?;
    // A storage that cannot presign gets the HTTP service's own signed
    // links when the service's address is configured.
    let links = match &engine.config().http.public_url {
        Some(url) => {
            let signer = backup_http::SignedLinks::new(&engine.config().appliance.state_dir, url);
            engine.links_signed(images, lifetime, &signer).await
        }
        None => engine.links(images, lifetime).await,
    }
    .context("making download links")?;
    if let Some(path) = csv {
        std::fs::write(path, backup_http::links_csv(&links))
            .with_context(|| format!("writing {}", path.display()))?;
    }
    if json {
        print_json(&links)?;
    } else {
        for l in &links {
            outln!(
                "{}  ({}, expires {})\n  {}",
                l.image,
                human(l.size),
                l.expires.format("%Y-%m-%d %H:%M UTC"),
                l.url
            )?;
        }
        if let Some(path) = csv {
            outln!("wrote {} links to {}", links.len(), path.display())?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// An image named by an `sftp://user@host[:port]/dir/IMAGE.bkp` URL: pulled
/// from any SSH server without configuring it as the storage, with the key
/// and host key settings of `[storage]` (or the user's `~/.ssh`).
pub(crate) fn is_remote_image(arg: &str) -> bool {
    arg.get(..7)
        .is_some_and(|s| s.eq_ignore_ascii_case("sftp://"))
}

/// Downloads the image `url` names to `out` (atomically, as `fetch` does).
pub(crate) async fn pull(engine: &Engine, url: &str, out: &Path) -> anyhow::Result<u64> {
    let (dir, name) = url
        .rsplit_once('/')
        .filter(|(dir, name)| !name.is_empty() && dir.len() > "sftp://".len())
        .with_context(|| {
            format!("{url} does not name an image: write sftp://user@host/path/IMAGE.bkp")
        })?;
    let config = engine.config();
    let mut opts = backup_storage::OpenOptions::default();
    opts.ssh_key = config.storage.ssh_key.clone();
    opts.host_key_sha256 = config.storage.host_key_sha256.clone();
    let storage = backup_storage::open_url(dir, &opts)?;
    let remote = Engine::builder(config.clone()).storage(storage).build()?;
    Ok(remote.fetch(name, out).await?)
}

/// A pulled image in the state directory, removed (with its directory) on
/// drop.
pub(crate) struct Pulled(pub(crate) std::path::PathBuf);

impl Drop for Pulled {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
        if let Some(dir) = self.0.parent() {
            let _ = std::fs::remove_dir(dir);
        }
    }
}

/// Pulls `url` into `pulled/PID/IMAGE` of the state directory, for a
/// restore (not `tmp/`, whose leftovers a restore removes before it
/// starts); reports then name the image.
pub(crate) async fn pull_for_restore(engine: &Engine, url: &str) -> anyhow::Result<Pulled> {
    let name = url.rsplit('/').next().unwrap_or_default();
    anyhow::ensure!(
        !matches!(name, "" | "." | ".."),
        "{url} does not name an image: write sftp://user@host/path/IMAGE.bkp"
    );
    let dir = engine
        .config()
        .appliance
        .state_dir
        .join("pulled")
        .join(std::process::id().to_string());
    {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .with_context(|| format!("making the directory {}", dir.display()))?;
    }
    let pulled = Pulled(dir.join(name));
    pull(engine, url, &pulled.0)
        .await
        .with_context(|| format!("pulling {url}"))?;
    Ok(pulled)
}
