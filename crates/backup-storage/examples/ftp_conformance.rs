//! Runs the storage conformance suite against an external FTP server, such
//! as the pure-ftpd that `.ci/ftp-daemon.sh` starts in CI:
//!
//! ```text
//! ftp_env="$(bash .ci/ftp-daemon.sh start)" && eval "$ftp_env"
//! cargo run -p backup-storage --example ftp_conformance -- "$BACKUP_TEST_FTP_URL"
//! cargo run -p backup-storage --example ftp_conformance -- --list "$BACKUP_TEST_FTP_URL"
//! cargo run -p backup-storage --example ftp_conformance -- --ca "$BACKUP_TEST_FTP_CA" "$BACKUP_TEST_FTPS_URL"
//! ```
//!
//! The password comes from `BACKUP_FTP_PASSWORD` or `~/.netrc`, as for any
//! `ftp://` storage. `--list` lists with LIST instead of MLSD (the fallback
//! for servers without MLSD); `--ca FILE` trusts the CA certificates of a PEM
//! file instead of the system's, for an `ftps://` URL. Exits non-zero if a check fails or the server
//! cannot be reached: an explicit CI step that cannot pass by being skipped.

use std::process::ExitCode;
use std::time::{Instant, SystemTime};

use anyhow::{bail, Context, Result};
use backup_storage::{conformance, FtpStorageBuilder, Storage};

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> ExitCode {
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ftp_conformance: FAILED: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> Result<()> {
    const USAGE: &str =
        "usage: ftp_conformance [--list] [--ca CA.pem] ftp[s]://USER@HOST:PORT/PATH";
    let mut force_list = false;
    let mut ca = None;
    let mut url = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--list" => force_list = true,
            "--ca" => ca = Some(args.next().context(USAGE)?),
            _ if url.is_none() && !arg.starts_with('-') => url = Some(arg),
            _ => bail!(USAGE),
        }
    }
    let Some(url) = url else { bail!(USAGE) };
    let mut builder = FtpStorageBuilder::from_url(&url)
        .context("opening the storage URL")?
        .force_list(force_list);
    if let Some(ca) = ca {
        let pem = std::fs::read(&ca).with_context(|| format!("reading {ca}"))?;
        builder = builder.tls_ca_pem(pem);
    }
    let store = builder.build().context("opening the FTP storage")?;
    // A namespace of its own, so that runs never meet leftovers.
    let stamp = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)?
        .as_millis();
    let prefix = format!("conformance-{}-{stamp}/", std::process::id());
    let listing = if force_list {
        "LIST"
    } else {
        "MLSD where the server has it"
    };
    println!("ftp_conformance: {store} under {prefix} (listing with {listing})");
    let started = Instant::now();
    conformance::run_all(&store, &prefix)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    println!(
        "ftp_conformance: all checks passed against {store} in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    // The namespace's (now empty) directory: deleting the suite's last
    // objects pruned everything below it.
    let _ = store.list(&prefix, true).await;
    Ok(())
}
