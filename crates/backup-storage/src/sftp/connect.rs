//! One SSH connection with its SFTP session: the server's host key checked
//! against what the operator trusts, then a key or a password login.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use russh::client::{self, Handle};
use russh::keys::{HashAlg, PrivateKeyWithHashAlg, PublicKey};
use russh_sftp::client::rawsession::Limits;
use russh_sftp::client::RawSftpSession;

use crate::{Error, Result};

/// The environment variable that holds the password.
pub(super) const PASSWORD_VAR: &str = "BACKUP_SSH_PASSWORD";
/// The environment variable that holds the passphrase of the key.
pub(super) const PASSPHRASE_VAR: &str = "BACKUP_SSH_KEY_PASSPHRASE";

/// A secret that never shows in `Debug` output.
#[derive(Clone)]
pub(super) struct Secret(pub(super) String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// Which host keys are trusted.
#[derive(Debug, Clone)]
pub(super) enum HostKeys {
    /// The one key whose SHA-256 fingerprint is this (`SHA256:…`).
    Fingerprint(String),
    /// The keys an OpenSSH `known_hosts` file lists for the host.
    KnownHosts(PathBuf),
}

/// How to log in.
#[derive(Debug, Clone)]
pub(super) struct Login {
    pub(super) user: String,
    /// Key files to offer, in order; a configured key is the only one.
    pub(super) keys: Vec<PathBuf>,
    /// Whether `keys` was configured (a missing file is then an error).
    pub(super) key_configured: bool,
    pub(super) passphrase: Option<Secret>,
    pub(super) password: Option<Secret>,
}

/// An established connection.
pub(super) struct Conn {
    pub(super) sftp: RawSftpSession,
    /// Absolute storage directory, ending in '/'.
    pub(super) root: String,
    pub(super) statvfs: bool,
    pub(super) posix_rename: bool,
    pub(super) fsync: bool,
    /// Bytes per read and per write request.
    pub(super) read_len: u32,
    pub(super) write_len: u32,
    pub(super) ssh: Handle<Client>,
}

impl Conn {
    pub(super) fn is_closed(&self) -> bool {
        self.ssh.is_closed()
    }
}

/// The SSH client's callbacks: only the host key check.
pub(super) struct Client {
    host_keys: HostKeys,
    host: String,
    port: u16,
    /// Why the host key was refused, for the error the connect returns.
    refusal: Arc<Mutex<Option<String>>>,
}

impl client::Handler for Client {
    type Error = russh::Error;

    async fn check_server_key(
        &mut self,
        key: &russh::keys::PublicKeyOrCertificate,
    ) -> std::result::Result<bool, Self::Error> {
        let key = key.public_key();
        match check_host_key(&self.host_keys, &self.host, self.port, &key) {
            Ok(()) => Ok(true),
            Err(why) => {
                *self.refusal.lock().expect("not poisoned") = Some(why);
                Ok(false)
            }
        }
    }
}

/// `SHA256:…`, as `ssh-keygen -lf` prints it.
pub(super) fn fingerprint(key: &PublicKey) -> String {
    key.fingerprint(HashAlg::Sha256).to_string()
}

/// Whether the host key is trusted; the refusal says what was seen and what
/// to do.
fn check_host_key(
    host_keys: &HostKeys,
    host: &str,
    port: u16,
    key: &PublicKey,
) -> std::result::Result<(), String> {
    let seen = fingerprint(key);
    let algorithm = key.algorithm();
    match host_keys {
        HostKeys::Fingerprint(expected) => {
            if *expected == seen {
                Ok(())
            } else {
                Err(format!(
                    "the SSH server {host}:{port} offered the {algorithm} host key {seen}, \
                     but [storage] host_key_sha256 is {expected}: if the server's key really \
                     changed, compare with `ssh-keygen -lf /etc/ssh/ssh_host_*_key.pub` on \
                     the server and update host_key_sha256"
                ))
            }
        }
        HostKeys::KnownHosts(path) => {
            match russh::keys::check_known_hosts_path(host, port, key, path) {
                Ok(true) => Ok(()),
                Ok(false) => Err(format!(
                    "the SSH server {host}:{port} offered the {algorithm} host key {seen}, \
                     which {} does not list for this host: check the fingerprint with \
                     `ssh-keygen -lf /etc/ssh/ssh_host_*_key.pub` on the server, then set \
                     [storage] host_key_sha256 = \"{seen}\" or add the key to known_hosts \
                     (connect once with ssh)",
                    path.display()
                )),
                Err(russh::keys::Error::KeyChanged { line }) => Err(format!(
                    "the host key of the SSH server {host}:{port} CHANGED: it offered the \
                     {algorithm} key {seen}, which differs from line {line} of {}; this may \
                     be an attack; if the server was reinstalled, check the fingerprint on \
                     the server and replace that line",
                    path.display()
                )),
                Err(e) => Err(format!(
                    "cannot read {} to check the host key {seen} of {host}:{port}: {e}",
                    path.display()
                )),
            }
        }
    }
}

/// Where to connect, as the storage knows it.
pub(super) struct Target<'a> {
    pub(super) host: &'a str,
    pub(super) port: u16,
    /// The URL's path: absolute, or relative to the login directory.
    pub(super) path: &'a str,
    pub(super) shown: &'a str,
    pub(super) host_keys: &'a HostKeys,
    pub(super) login: &'a Login,
    pub(super) timeout: Duration,
}

fn transient(what: String) -> Error {
    Error::Transient { what, source: None }
}

/// Connects, checks the host key, logs in and starts SFTP.
pub(super) async fn connect(t: Target<'_>) -> Result<Conn> {
    let refusal = Arc::new(Mutex::new(None));
    let handler = Client {
        host_keys: t.host_keys.clone(),
        host: t.host.to_owned(),
        port: t.port,
        refusal: Arc::clone(&refusal),
    };
    let config = Arc::new(client::Config {
        keepalive_interval: Some(Duration::from_secs(30)),
        ..Default::default()
    });
    let connected = tokio::time::timeout(
        t.timeout,
        client::connect(config, (t.host, t.port), handler),
    )
    .await;
    let mut ssh = match connected {
        Err(_) => {
            return Err(transient(format!(
            "connecting to {}: no answer within {} s; check the host, the port and the firewall",
            t.shown,
            t.timeout.as_secs()
        )))
        }
        Ok(Ok(ssh)) => ssh,
        Ok(Err(e)) => {
            if let Some(why) = refusal.lock().expect("not poisoned").take() {
                return Err(Error::Other {
                    what: format!("refusing {}: {why}", t.shown),
                    source: None,
                });
            }
            return Err(Error::Transient {
                what: format!(
                    "connecting to {}: check the host, the port and that sshd runs there",
                    t.shown
                ),
                source: Some(Box::new(e)),
            });
        }
    };
    login(&mut ssh, t.login, t.shown).await?;
    let failed = |e: &dyn fmt::Display| {
        transient(format!(
            "starting SFTP on {}: {e}; check that the server offers the sftp subsystem",
            t.shown
        ))
    };
    let channel = ssh.channel_open_session().await.map_err(|e| failed(&e))?;
    channel
        .request_subsystem(true, "sftp")
        .await
        .map_err(|e| failed(&e))?;
    let cfg = russh_sftp::client::Config {
        request_timeout_secs: t.timeout.as_secs().max(1) * 6,
        ..Default::default()
    };
    let mut sftp = RawSftpSession::new_with_config(channel.into_stream(), cfg);
    let version = sftp.init().await.map_err(|e| failed(&e))?;
    let has = |name: &str| version.extensions.contains_key(name);
    // 32 KiB is what every SFTP server must accept; OpenSSH says more.
    let (mut read_len, mut write_len) = (32 * 1024, 32 * 1024);
    if has(russh_sftp::extensions::LIMITS) {
        if let Ok(limits) = sftp.limits().await {
            let limits = Limits::from(limits);
            // Replies must fit russh-sftp's default 256 KiB packets.
            let cap = |l: Option<u64>, d: u32| {
                l.map_or(d, |l| u32::try_from(l.min(200 * 1024)).expect("bounded"))
            };
            read_len = cap(limits.read_len, read_len);
            write_len = cap(limits.write_len, write_len);
            sftp.set_limits(limits);
        }
    }
    let root = resolve_root(&sftp, t.path).await.map_err(|e| failed(&e))?;
    Ok(Conn {
        statvfs: has(russh_sftp::extensions::STATVFS),
        posix_rename: has("posix-rename@openssh.com"),
        fsync: has(russh_sftp::extensions::FSYNC),
        sftp,
        root,
        read_len,
        write_len,
        ssh,
    })
}

/// The storage directory as an absolute path ending in '/': the URL's path,
/// or below the login directory for `/~/…`.
async fn resolve_root(
    sftp: &RawSftpSession,
    path: &str,
) -> std::result::Result<String, russh_sftp::client::error::Error> {
    let mut root = if let Some(rel) = path
        .strip_prefix("/~")
        .filter(|r| r.is_empty() || r.starts_with('/'))
    {
        let home = sftp.realpath(".").await?;
        let home = home
            .files
            .first()
            .map(|f| f.filename.clone())
            .unwrap_or_else(|| "/".to_owned());
        format!("{}{}", home.trim_end_matches('/'), rel)
    } else {
        path.to_owned()
    };
    if !root.ends_with('/') {
        root.push('/');
    }
    Ok(root)
}

async fn login(ssh: &mut Handle<Client>, login: &Login, shown: &str) -> Result<()> {
    let mut tried = Vec::new();
    for path in &login.keys {
        if !login.key_configured && !path.exists() {
            continue;
        }
        let key = load_key(path, login.passphrase.as_ref())?;
        let hash = ssh.best_supported_rsa_hash().await.ok().flatten().flatten();
        let key = PrivateKeyWithHashAlg::new(Arc::new(key), hash);
        let outcome = ssh
            .authenticate_publickey(&login.user, key)
            .await
            .map_err(|e| Error::Transient {
                what: format!("logging in to {shown} with the key {}", path.display()),
                source: Some(Box::new(e)),
            })?;
        if outcome.success() {
            return Ok(());
        }
        tried.push(format!("the key {}", path.display()));
    }
    if let Some(password) = &login.password {
        let outcome = ssh
            .authenticate_password(&login.user, &password.0)
            .await
            .map_err(|e| Error::Transient {
                what: format!("logging in to {shown} with a password"),
                source: Some(Box::new(e)),
            })?;
        if outcome.success() {
            return Ok(());
        }
        tried.push(format!("the password from {PASSWORD_VAR}"));
    }
    let what = if tried.is_empty() {
        format!(
            "{shown}: no SSH key ({}) and no {PASSWORD_VAR}: set [storage] ssh_key, or \
             put the password in {PASSWORD_VAR}",
            login
                .keys
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        )
    } else {
        format!(
            "{shown} refused {} for user {}: check the user's authorized_keys or password",
            tried.join(" and "),
            login.user
        )
    };
    Err(Error::Unauthenticated { what, source: None })
}

fn load_key(path: &Path, passphrase: Option<&Secret>) -> Result<russh::keys::PrivateKey> {
    russh::keys::load_secret_key(path, passphrase.map(|p| p.0.as_str())).map_err(|e| {
        let hint = match e {
            russh::keys::Error::KeyIsEncrypted => {
                format!("the key is encrypted: put its passphrase in {PASSPHRASE_VAR}")
            }
            _ if passphrase.is_some() => {
                format!("check the file and the passphrase in {PASSPHRASE_VAR} ({e})")
            }
            _ => format!("check the file ({e})"),
        };
        Error::Other {
            what: format!("loading the SSH key {}: {hint}", path.display()),
            source: None,
        }
    })
}
