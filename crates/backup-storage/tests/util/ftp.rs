//! A real FTP(S) server for the FTP backend's tests: libunftp serving a
//! directory on 127.0.0.1, with a password check, on a runtime of its own so
//! that a test can kill it mid-transfer; and a TCP proxy that resets
//! connections on demand.

use std::net::SocketAddr;
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context as _, Result};
use async_trait::async_trait;
use backup_storage::FtpStorage;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use unftp_core::auth::{AuthenticationError, Authenticator, Credentials, Principal};

pub(crate) const USER: &str = "backup";
pub(crate) const PASSWORD: &str = "correct horse battery staple";

/// Accepts exactly [`USER`] with [`PASSWORD`].
#[derive(Debug)]
struct OneUser;

#[async_trait]
impl Authenticator for OneUser {
    async fn authenticate(
        &self,
        username: &str,
        creds: &Credentials,
    ) -> Result<Principal, AuthenticationError> {
        if username != USER {
            return Err(AuthenticationError::BadUser);
        }
        if creds.password.as_deref() != Some(PASSWORD) {
            return Err(AuthenticationError::BadPassword);
        }
        Ok(Principal {
            username: username.to_owned(),
        })
    }
}

/// PEM files of a server certificate (for 127.0.0.1 and localhost) and the
/// private CA that issued it.
pub(crate) struct TestCa {
    pub(crate) ca_pem: String,
    pub(crate) cert_file: PathBuf,
    pub(crate) key_file: PathBuf,
    _dir: tempfile::TempDir,
}

impl TestCa {
    pub(crate) fn new() -> Result<TestCa> {
        use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
        let ca_key = KeyPair::generate()?;
        let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "backup test CA");
        let ca = ca_params.self_signed(&ca_key)?;
        let issuer = rcgen::Issuer::new(ca_params, ca_key);
        let key = KeyPair::generate()?;
        let params = CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])?;
        let cert = params.signed_by(&key, &issuer)?;
        let dir = tempfile::tempdir()?;
        let cert_file = dir.path().join("server.pem");
        let key_file = dir.path().join("server.key");
        std::fs::write(&cert_file, cert.pem())?;
        std::fs::write(&key_file, key.serialize_pem())?;
        Ok(TestCa {
            ca_pem: ca.pem(),
            cert_file,
            key_file,
            _dir: dir,
        })
    }
}

/// A libunftp server; killed (runtime and all connections) when dropped.
pub(crate) struct FtpServer {
    pub(crate) addr: SocketAddr,
    pub(crate) root: PathBuf,
    tls: bool,
    runtime: Option<tokio::runtime::Runtime>,
}

/// Passive port ranges, one per server started by this process, so that
/// servers of parallel tests do not take each other's ports.
///
/// libunftp answers each PASV by binding a random port of its range
/// (SO_REUSEADDR, nine tries) and then listening on it, which fails the
/// run at random in two ways this layout keeps rare:
/// - The ranges lie outside the kernel's ephemeral port range. Inside it, the
///   client's own data connections (a thousand uploads leave a thousand
///   sockets in TIME_WAIT, bound without SO_REUSEADDR) took so many ports
///   that all nine tries could fail: 425 to PASV, in ~8% of runs.
/// - Each range is wide. A pick that lands on a port whose earlier data
///   connection is not closed yet binds, but then fails to listen
///   (EADDRINUSE), and libunftp closes the control connection.
fn passive_ports() -> RangeInclusive<u16> {
    const SPAN: u16 = 1_400;
    const SERVERS: u16 = 20;
    static NEXT: AtomicU64 = AtomicU64::new(0);
    static BASE: std::sync::OnceLock<u16> = std::sync::OnceLock::new();
    let base = *BASE.get_or_init(|| {
        let (low, high) = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
            .ok()
            .and_then(|s| {
                let mut it = s.split_whitespace().map(|n| n.parse::<u32>().ok());
                Some((it.next()??, it.next()??))
            })
            .unwrap_or((32_768, 60_999));
        let need = u32::from(SPAN * SERVERS);
        if low >= 1024 + need {
            (low - need) as u16
        } else if high + need <= 65_535 {
            (high + 1) as u16
        } else {
            panic!(
                "the ephemeral port range {low}-{high} leaves no {need} ports for FTP passive mode"
            )
        }
    });
    // All FTP tests share this process: each server takes the next range.
    let n = NEXT.fetch_add(1, Ordering::Relaxed) as u16 % SERVERS;
    let start = base + n * SPAN;
    start..=start + SPAN - 1
}

impl FtpServer {
    /// Serves `root` on a free port of 127.0.0.1.
    pub(crate) fn start(root: &Path) -> Result<FtpServer> {
        FtpServer::start_on(root, 0, None)
    }

    /// Serves `root` on `port` (0: a free one), with explicit FTPS if `tls`.
    pub(crate) fn start_on(root: &Path, port: u16, tls: Option<&TestCa>) -> Result<FtpServer> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        // Bound here, so the port is known and a failure is an error, not a
        // silent server that never came up.
        let std_listener = std::net::TcpListener::bind(("127.0.0.1", port))
            .with_context(|| format!("binding the FTP test server to 127.0.0.1:{port}"))?;
        let addr = std_listener.local_addr()?;
        std_listener.set_nonblocking(true)?;
        let root_dir = root.to_path_buf();
        let mut builder = libunftp::ServerBuilder::with_authenticator(
            Box::new(move || {
                unftp_sbe_fs::Filesystem::new(root_dir.clone()).expect("the served directory")
            }),
            Arc::new(OneUser),
        )
        .greeting("backup test server")
        .passive_ports(passive_ports())
        .idle_session_timeout(600);
        if let Some(ca) = tls {
            builder = builder.ftps(ca.cert_file.clone(), ca.key_file.clone());
        }
        let server = builder.build().context("building the FTP test server")?;
        // libunftp binds by address: give the port back to it. Nothing else
        // takes a port between these two lines in a test process.
        drop(std_listener);
        let (up_tx, up_rx) = std::sync::mpsc::channel();
        runtime.spawn(async move {
            let result = server.listen(addr.to_string()).await;
            let _ = up_tx.send(format!("the FTP test server stopped: {result:?}"));
        });
        let server = FtpServer {
            addr,
            root: root.to_path_buf(),
            tls: tls.is_some(),
            runtime: Some(runtime),
        };
        server.wait_until_up(&up_rx)?;
        Ok(server)
    }

    fn wait_until_up(&self, stopped: &std::sync::mpsc::Receiver<String>) -> Result<()> {
        for _ in 0..200 {
            if let Ok(why) = stopped.try_recv() {
                bail!("{why}");
            }
            if let Ok(mut s) = std::net::TcpStream::connect(self.addr) {
                use std::io::Read;
                s.set_read_timeout(Some(Duration::from_secs(5)))?;
                let mut greeting = [0u8; 3];
                if s.read_exact(&mut greeting).is_ok() && &greeting == b"220" {
                    return Ok(());
                }
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        bail!("the FTP test server on {} did not greet", self.addr)
    }

    /// A builder for this server, with the right credentials.
    pub(crate) fn storage(&self) -> backup_storage::FtpStorageBuilder {
        FtpStorage::builder()
            .host(self.addr.ip().to_string())
            .port(self.addr.port())
            .user(USER)
            .password(PASSWORD)
            .tls(self.tls)
    }

    /// Kills the server: its runtime and every connection go at once, as
    /// when the process dies.
    pub(crate) fn kill(mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

impl Drop for FtpServer {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// Every file below `dir`, hidden ones included, as sorted relative paths.
pub(crate) fn files(dir: &Path) -> Vec<String> {
    fn walk(base: &Path, dir: &Path, out: &mut Vec<String>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(base, &path, out);
            } else {
                out.push(
                    path.strip_prefix(base)
                        .unwrap()
                        .to_string_lossy()
                        .into_owned(),
                );
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

/// A TCP proxy in front of an FTP server, control and (passive) data
/// connections both: it rewrites the server's `227` replies to data ports of
/// its own, so that it can reset a download's data connection on demand.
///
/// With FTPS the replies after `AUTH TLS` are encrypted: data connections then
/// bypass the proxy. For FTPS the proxy holds the client's first bytes after
/// the server's `234` back for a moment: libunftp 0.24 switches its control
/// connection to TLS in a task it spawns after replying 234, so a ClientHello
/// that arrives before that task ran is read as an FTP command and answered in
/// plain text (the client then fails with "InvalidContentType"). Real servers
/// switch before reading on; this works around the test server's race only.
pub(crate) struct FaultProxy {
    pub(crate) addr: SocketAddr,
    /// Reset the next download's data connection after this many bytes.
    reset_after: Arc<Mutex<Option<u64>>>,
    task: tokio::task::JoinHandle<()>,
}

impl FaultProxy {
    pub(crate) async fn start(server: SocketAddr) -> Result<FaultProxy> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let reset_after = Arc::new(Mutex::new(None));
        let reset = Arc::clone(&reset_after);
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let reset = Arc::clone(&reset);
                tokio::spawn(async move {
                    let _ = proxy_control(client, server, reset).await;
                });
            }
        });
        Ok(FaultProxy {
            addr,
            reset_after,
            task,
        })
    }

    /// The next data connection that carries more than `bytes` bytes from
    /// the server is reset (RST) once it has passed them on.
    pub(crate) fn reset_data_after(&self, bytes: u64) {
        *self.reset_after.lock().unwrap() = Some(bytes);
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn proxy_control(
    client: TcpStream,
    server: SocketAddr,
    reset: Arc<Mutex<Option<u64>>>,
) -> Result<()> {
    use tokio::io::AsyncReadExt;
    let upstream = TcpStream::connect(server).await?;
    let (mut client_read, mut client_write) = client.into_split();
    let (upstream_read, mut upstream_write) = upstream.into_split();
    let tls_upgrade = Arc::new(tokio::sync::Notify::new());
    let upgrading = Arc::clone(&tls_upgrade);
    let to_server = tokio::spawn(async move {
        let mut buf = vec![0u8; 16 * 1024];
        let mut upgraded = false;
        loop {
            let n = match client_read.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            // The client speaks only after reading the 234, which the other
            // direction announces before passing it on.
            if !upgraded && upgrading_now(&upgrading) {
                upgraded = true;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            if upstream_write.write_all(&buf[..n]).await.is_err() {
                break;
            }
        }
        let _ = upstream_write.shutdown().await;
    });
    let mut lines = BufReader::new(upstream_read);
    let mut line = Vec::new();
    loop {
        line.clear();
        if lines.read_until(b'\n', &mut line).await? == 0 {
            break;
        }
        if line.starts_with(b"234 ") {
            tls_upgrade.notify_one();
            // Encrypted from here on: no more lines to read or rewrite.
            client_write.write_all(&line).await?;
            let mut rest = lines;
            let _ = tokio::io::copy(&mut rest, &mut client_write).await;
            break;
        }
        if line.starts_with(b"227 ") {
            let text = String::from_utf8_lossy(&line).into_owned();
            let port = pasv_port(&text).context("parsing a 227 reply")?;
            let data_listener = TcpListener::bind("127.0.0.1:0").await?;
            let local = data_listener.local_addr()?.port();
            let reset = Arc::clone(&reset);
            tokio::spawn(async move {
                if let Ok((client, _)) = data_listener.accept().await {
                    let _ = proxy_data(client, SocketAddr::new(server.ip(), port), reset).await;
                }
            });
            line = format!(
                "227 Entering Passive Mode (127,0,0,1,{},{})\r\n",
                local >> 8,
                local & 0xff
            )
            .into_bytes();
        }
        client_write.write_all(&line).await?;
    }
    to_server.abort();
    Ok(())
}

/// Whether the server has just agreed to `AUTH TLS` (consumes the notice).
fn upgrading_now(notice: &tokio::sync::Notify) -> bool {
    let notified = notice.notified();
    tokio::pin!(notified);
    // A stored permit completes the future at once.
    futures::FutureExt::now_or_never(notified).is_some()
}

fn pasv_port(reply: &str) -> Option<u16> {
    let inner = &reply[reply.find('(')? + 1..reply.find(')')?];
    let numbers: Vec<u16> = inner
        .split(',')
        .filter_map(|n| n.trim().parse().ok())
        .collect();
    match numbers[..] {
        [_, _, _, _, hi, lo] => Some(hi * 256 + lo),
        _ => None,
    }
}

async fn proxy_data(
    mut client: TcpStream,
    server: SocketAddr,
    reset: Arc<Mutex<Option<u64>>>,
) -> Result<()> {
    use tokio::io::AsyncReadExt;
    let mut upstream = TcpStream::connect(server).await?;
    let (mut from_client, mut from_server) = (vec![0u8; 16 * 1024], vec![0u8; 16 * 1024]);
    let (mut client_open, mut server_open) = (true, true);
    let mut passed = 0u64;
    while client_open || server_open {
        tokio::select! {
            n = client.read(&mut from_client), if client_open => {
                match n? {
                    0 => {
                        client_open = false;
                        upstream.shutdown().await?;
                    }
                    n => upstream.write_all(&from_client[..n]).await?,
                }
            }
            n = upstream.read(&mut from_server), if server_open => {
                match n? {
                    0 => {
                        server_open = false;
                        client.shutdown().await?;
                    }
                    n => {
                        client.write_all(&from_server[..n]).await?;
                        passed += n as u64;
                        let limit = *reset.lock().unwrap();
                        if limit.is_some_and(|limit| passed > limit) {
                            reset.lock().unwrap().take();
                            // Zero linger turns the close into a reset
                            // (RST), as a crashed middlebox would send.
                            client.set_zero_linger()?;
                            return Ok(());
                        }
                    }
                }
            }
        }
    }
    Ok(())
}
