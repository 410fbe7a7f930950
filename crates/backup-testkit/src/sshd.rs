//! A real OpenSSH `sshd` on 127.0.0.1 for tests of `sftp://` storage: a
//! fresh host key, the user running the tests as its only user, logging in
//! with a fresh key listed in an authorized_keys file of the test's own.
//! [`Sshd::start_with_password_user`] adds a throwaway system user who logs
//! in with a password (it needs root, as the CI runs the tests).
//! Each failure panics with what went wrong: a test that needs the server
//! fails loudly without it.

use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};

const SSHD: &str = "/usr/sbin/sshd";

/// A running sshd; dropping it kills the daemon and its sessions.
pub struct Sshd {
    /// Keys, configuration and log.
    pub dir: tempfile::TempDir,
    /// The port it listens on (127.0.0.1).
    pub port: u16,
    /// The user running the tests, who logs in.
    pub user: String,
    /// The client's private key.
    pub key: PathBuf,
    /// The host key's fingerprint, as `ssh-keygen -lf` prints it.
    pub fingerprint: String,
    /// A known_hosts file that lists the host key for \[127.0.0.1\]:port.
    pub known_hosts: PathBuf,
    /// The user who logs in with a password, if the server offers one.
    pub password_user: Option<PasswordUser>,
    child: Option<Child>,
}

/// A system user made for one test, logging in with a random password;
/// dropping it deletes the account.
pub struct PasswordUser {
    /// The login name.
    pub name: String,
    /// The password (the tests pass it in `BACKUP_SSH_PASSWORD`).
    pub password: String,
    /// The user's home directory, which the user owns.
    pub home: PathBuf,
    /// Holds `home`: a directory others may traverse.
    _parent: tempfile::TempDir,
}

impl PasswordUser {
    fn create() -> Result<PasswordUser> {
        ensure!(
            is_root(),
            "a password user needs root (useradd, chpasswd): run the sftp password tests as \
             root, as the CI does"
        );
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let name = format!("bkptest{}x{n}", std::process::id());
        let mut random = [0u8; 18];
        std::fs::File::open("/dev/urandom")
            .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut random))
            .context("reading /dev/urandom")?;
        let password: String = random.iter().map(|b| format!("{b:02x}")).collect();
        let parent = tempfile::tempdir()?;
        std::fs::set_permissions(
            parent.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )?;
        let home = parent.path().join(&name);
        let out = Command::new("useradd")
            .args(["--create-home", "--shell", "/bin/sh", "--home-dir"])
            .arg(&home)
            .arg(&name)
            .output()
            .context("running useradd (install passwd)")?;
        ensure!(out.status.success(), "useradd {name}: {out:?}");
        let user = PasswordUser {
            name,
            password,
            home,
            _parent: parent,
        };
        let mut chpasswd = Command::new("chpasswd")
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("running chpasswd")?;
        std::io::Write::write_all(
            chpasswd.stdin.as_mut().context("chpasswd's stdin")?,
            format!("{}:{}\n", user.name, user.password).as_bytes(),
        )?;
        drop(chpasswd.stdin.take());
        let out = chpasswd.wait_with_output()?;
        ensure!(out.status.success(), "chpasswd for {}: {out:?}", user.name);
        Ok(user)
    }
}

impl Drop for PasswordUser {
    fn drop(&mut self) {
        let _ = Command::new("userdel")
            .arg(&self.name)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

fn keygen(path: &Path) -> Result<()> {
    let out = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "test", "-f"])
        .arg(path)
        .output()
        .context("running ssh-keygen (install openssh-client)")?;
    ensure!(out.status.success(), "ssh-keygen: {out:?}");
    Ok(())
}

/// `SHA256:…` of a public key file, from `ssh-keygen -lf`.
pub fn fingerprint_of(public: &Path) -> Result<String> {
    let out = Command::new("ssh-keygen").arg("-lf").arg(public).output()?;
    ensure!(out.status.success(), "ssh-keygen -lf: {out:?}");
    let text = String::from_utf8(out.stdout)?;
    Ok(text
        .split_whitespace()
        .nth(1)
        .context("ssh-keygen -lf printed no fingerprint")?
        .to_owned())
}

impl Sshd {
    /// Starts sshd; fails loudly where OpenSSH's server is not installed.
    pub fn start() -> Result<Sshd> {
        Sshd::start_with(None)
    }

    /// Starts sshd offering password logins too, with a throwaway user made
    /// for it ([`Sshd::password_user`]); fails loudly unless run as root.
    pub fn start_with_password_user() -> Result<Sshd> {
        Sshd::start_with(Some(PasswordUser::create()?))
    }

    fn start_with(password_user: Option<PasswordUser>) -> Result<Sshd> {
        ensure!(
            Path::new(SSHD).exists(),
            "{SSHD} is missing: the sftp tests need OpenSSH's server (apt-get install openssh-server)"
        );
        let dir = tempfile::tempdir()?;
        let d = dir.path();
        keygen(&d.join("host_key"))?;
        keygen(&d.join("client_key"))?;
        std::fs::copy(d.join("client_key.pub"), d.join("authorized_keys"))?;
        let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?
            .local_addr()?
            .port();
        let user = String::from_utf8(Command::new("id").arg("-un").output()?.stdout)?
            .trim()
            .to_owned();
        // sshd run as root needs its privilege separation directory.
        if is_root() {
            std::fs::create_dir_all("/run/sshd")?;
        }
        // Passwords are checked against the shadow file (no PAM), and only
        // for the throwaway user.
        let passwords = match &password_user {
            Some(u) => format!(
                "PasswordAuthentication no\nMatch User {}\n  PasswordAuthentication yes\n",
                u.name
            ),
            None => "PasswordAuthentication no\n".to_owned(),
        };
        let config = format!(
            "Port {port}\nListenAddress 127.0.0.1\nHostKey {d}/host_key\nPidFile {d}/sshd.pid\n\
             AuthorizedKeysFile {d}/authorized_keys\nStrictModes no\nUsePAM no\n\
             PermitRootLogin prohibit-password\n\
             KbdInteractiveAuthentication no\nSubsystem sftp internal-sftp\nMaxStartups 50\n\
             {passwords}",
            d = d.display()
        );
        std::fs::write(d.join("sshd_config"), config)?;
        let fingerprint = fingerprint_of(&d.join("host_key.pub"))?;
        let host_pub = std::fs::read_to_string(d.join("host_key.pub"))?;
        let known_hosts = d.join("known_hosts");
        std::fs::write(&known_hosts, format!("[127.0.0.1]:{port} {host_pub}"))?;
        let mut sshd = Sshd {
            port,
            user,
            key: d.join("client_key"),
            fingerprint,
            known_hosts,
            password_user,
            child: None,
            dir,
        };
        sshd.spawn()?;
        Ok(sshd)
    }

    /// Starts the daemon (again) on the same port and keys.
    pub fn spawn(&mut self) -> Result<()> {
        let d = self.dir.path();
        let log = std::fs::File::create(d.join("sshd.log"))?;
        let child = Command::new(SSHD)
            .args(["-D", "-e", "-f"])
            .arg(d.join("sshd_config"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("starting sshd")?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect((Ipv4Addr::LOCALHOST, self.port)).is_err() {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                bail!("sshd exited at start ({status}): {}", self.log());
            }
            ensure!(
                Instant::now() < deadline,
                "sshd did not listen: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("sshd.log")).unwrap_or_default()
    }

    /// The URL of `path` on this server.
    pub fn url(&self, path: &Path) -> String {
        format!(
            "sftp://{}@127.0.0.1:{}{}",
            self.user,
            self.port,
            path.display()
        )
    }

    /// Kills the daemon and every session process it forked (SIGKILL).
    pub fn kill(&mut self) -> Result<()> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        let mut pids = vec![child.id()];
        let mut i = 0;
        while i < pids.len() {
            pids.extend(children(pids[i]));
            i += 1;
        }
        for pid in pids.iter().rev() {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
        }
        child.wait()?;
        Ok(())
    }
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.trim_ascii() == b"0")
}

/// The processes whose parent is `pid`, from /proc.
fn children(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in entries.flatten() {
        let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else {
            continue;
        };
        // pid (comm) state ppid …; comm may hold spaces: split after ')'.
        let Some(after) = stat.rsplit_once(')').map(|(_, a)| a) else {
            continue;
        };
        let ppid = after.split_whitespace().nth(1).and_then(|p| p.parse().ok());
        if ppid == Some(pid) {
            if let Ok(child) = e.file_name().to_string_lossy().parse() {
                out.push(child);
            }
        }
    }
    out
}

impl Drop for Sshd {
    fn drop(&mut self) {
        // The daemon's sessions go first: userdel refuses a logged-in user.
        let _ = self.kill();
        drop(self.password_user.take());
    }
}

/// Every file below `root`, hidden ones included.
pub fn files(root: &Path) -> Vec<PathBuf> {
    walkdir(root)
}

fn walkdir(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(walkdir(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}
