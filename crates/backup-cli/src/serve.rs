//! `backup serve`: the HTTPS listener around backup-http's router. TLS
//! (rustls, ring) ends here; each request reaches the router with the
//! [`backup_http::Peer`] it came from.
use std::future::Future;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::extract::ConnectInfo;
use backup_http::{Authenticator as _, Peer, UsersAuthenticator};
use clap::Args;
use hyper::body::Incoming;
use hyper::service::Service as _;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use sha2::Digest;
use tokio::net::TcpListener;
use tokio::signal::unix::{signal, SignalKind};
use tokio_rustls::TlsAcceptor;

use crate::report::{notice, print_json, warn};
use crate::Cli;

mod stall;
mod tls;

/// How long a client may take for its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a client may take to send a request's head.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// The most a request's head may take (larger ones are answered 431).
const MAX_HEAD_BYTES: usize = 64 * 1024;
/// Connections served at once; more are closed at once (and logged).
const MAX_CONNECTIONS: usize = 256;
/// How long a response may wait for a client that reads nothing before
/// the connection is dropped (a streamed backup is then aborted).
const WRITE_STALL_LIMIT: Duration = if cfg!(test) {
    Duration::from_secs(1)
} else {
    Duration::from_secs(300)
};

#[derive(Args)]
pub(crate) struct ServeArgs {
    // The help names `[::]` and the config section as written, which a doc
    // comment cannot (rustdoc would take them for links).
    #[arg(
        long,
        value_name = "ADDR",
        help = "Address and port to listen on, e.g. 0.0.0.0:8443 or [::]:8443 (port 0: any free \
port; the one taken is printed) [default: [http] listen in the configuration, else 127.0.0.1:8443]"
    )]
    listen: Option<String>,
}

/// What the listener needs besides the router.
pub(crate) struct ServeOptions {
    /// Where to listen.
    pub(crate) listen: SocketAddr,
    /// The certificate and key.
    pub(crate) tls: tls::TlsMaterial,
    /// Whether to ask clients for an (optional) certificate at the
    /// handshake: while some user has one registered
    /// (`Authenticator::wants_client_certificates`). Asked at every
    /// handshake, so a reload of the users takes effect at once.
    pub(crate) client_certs: Arc<dyn Fn() -> bool + Send + Sync>,
    /// Print the start-up object as JSON on stdout instead of lines on stderr.
    pub(crate) json: bool,
}

/// `backup serve`: backup-http's service for this appliance, its users from
/// `state_dir/users.toml` (reloaded on SIGHUP, and when the file changes).
pub(crate) async fn command(cli: &Cli, args: &ServeArgs) -> anyhow::Result<ExitCode> {
    let engine = Arc::new(crate::engine(cli)?);
    let config = engine.config();
    let (listen, from) = match &args.listen {
        Some(l) => (l.as_str(), "--listen"),
        None => (config.http.listen.as_str(), "[http] listen"),
    };
    let listen = parse_listen(listen, from)?;
    let tls = tls::material(
        &config.http,
        &config.appliance.state_dir,
        &crate::config_path(cli),
    )?;
    let users = Arc::new(
        UsersAuthenticator::in_state_dir(&config.appliance.state_dir)
            .context("reading the users file")?,
    );
    let json = cli.json;
    if users.users().is_empty() {
        warn(
            json,
            &format!(
                "{} has no users yet: every request but /healthz is refused until one is added \
                 with `backup user add NAME --role admin`",
                users.file().path().display()
            ),
        );
    }
    let router = backup_http::router(backup_http::Service::new(engine.clone(), users.clone()));
    let asked = users.clone();
    let opts = ServeOptions {
        listen,
        tls,
        client_certs: Arc::new(move || asked.wants_client_certificates()),
        json,
    };
    serve(router, opts, move || match users.reload() {
        Ok(()) => notice(json, &format!("users reloaded: {}", users.users().len())),
        Err(e) => warn(
            json,
            &format!("the users file was not reloaded (the users loaded before stay): {e}"),
        ),
    })
    .await?;
    Ok(ExitCode::SUCCESS)
}

/// `ADDR` as an IP address and port; anything else is an input error (exit 2).
fn parse_listen(text: &str, from: &str) -> Result<SocketAddr, backup_core::Error> {
    text.trim().parse().map_err(|_| {
        backup_core::Error::Input(format!(
            "{from} {text:?} is not an address and port: write e.g. 127.0.0.1:8443, \
             0.0.0.0:8443 (every IPv4 interface) or [::]:8443"
        ))
    })
}

/// Serves `router` over HTTPS until SIGTERM or SIGINT, then stops accepting
/// and returns once the requests in flight (a streaming backup) have
/// finished; a second signal returns at once. SIGHUP calls `on_hup`.
pub(crate) async fn serve(
    router: axum::Router,
    opts: ServeOptions,
    on_hup: impl Fn() + Send + 'static,
) -> anyhow::Result<()> {
    let mut term = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;
    let mut hup = signal(SignalKind::hangup()).context("cannot handle SIGHUP")?;
    let stop = async {
        tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        }
    };
    let json = opts.json;
    let listener = bind(&opts).await?;
    let drain = serve_until(listener, router, &opts, stop, async move {
        while hup.recv().await.is_some() {
            notice(json, "SIGHUP: reloading");
            on_hup();
        }
    })
    .await?;
    // A second signal: do not wait for the requests still running.
    tokio::select! {
        () = drain.shutdown() => {
            notice(json, "backup serve stopped");
            Ok(())
        }
        _ = term.recv() => anyhow::bail!("stopped by a second signal: requests still running were cut off"),
        _ = int.recv() => anyhow::bail!("stopped by a second signal: requests still running were cut off"),
    }
}

/// Binds the listening socket and announces it (address, certificate,
/// fingerprint).
async fn bind(opts: &ServeOptions) -> anyhow::Result<TcpListener> {
    let listener = TcpListener::bind(opts.listen).await.with_context(|| {
        format!(
            "cannot listen on {}: is another server using that port? Pick another with \
             --listen or [http] listen",
            opts.listen
        )
    })?;
    let address = listener
        .local_addr()
        .context("cannot read the listening address")?;
    let url = format!("https://{address}/");
    let cert = opts.tls.cert_path.display().to_string();
    let fingerprint = opts.tls.fingerprint();
    if opts.json {
        print_json(&serde_json::json!({
            "listening": url,
            "address": address.to_string(),
            "certificate": cert,
            "fingerprint": fingerprint,
            "generated": opts.tls.generated,
            "client_certificates": (opts.client_certs)(),
        }))?;
    } else {
        if opts.tls.generated {
            notice(false, "made a self-signed certificate for this service");
        }
        notice(false, &format!("listening on {url}"));
        notice(false, &format!("certificate: {cert}"));
        notice(false, &format!("fingerprint: {fingerprint}"));
    }
    Ok(listener)
}

/// Accepts connections until `stop` completes, running `on_hup_loop`
/// alongside; gives what waits for the connections still open
/// ([`GracefulShutdown::shutdown`]).
async fn serve_until(
    listener: TcpListener,
    router: axum::Router,
    opts: &ServeOptions,
    stop: impl Future<Output = &'static str>,
    on_hup_loop: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<GracefulShutdown> {
    let plain = TlsAcceptor::from(Arc::new(tls::server_config(&opts.tls, false)?));
    let asking = TlsAcceptor::from(Arc::new(tls::server_config(&opts.tls, true)?));
    let hup_task = tokio::spawn(on_hup_loop);
    let graceful = GracefulShutdown::new();
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    tokio::pin!(stop);
    let signal = loop {
        let (tcp, address) = tokio::select! {
            signal = &mut stop => break signal,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of descriptors and the like: say so, breathe, go on.
                    warn(opts.json, &format!("cannot accept a connection: {e}"));
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        // An IPv4 client of a dual-stack socket arrives as ::ffff:a.b.c.d;
        // audit lines and the login throttle know it as a.b.c.d.
        let address = SocketAddr::new(address.ip().to_canonical(), address.port());
        tracing::debug!("connection from {address}");
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::warn!("{MAX_CONNECTIONS} connections open: closing the one from {address}");
            continue;
        };
        // Taken before the handshake, so that a stop waits for it too.
        let watcher = graceful.watcher();
        let acceptor = if (opts.client_certs)() {
            asking.clone()
        } else {
            plain.clone()
        };
        let router = router.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => {
                    tracing::debug!("TLS handshake with {address} failed: {e}");
                    return;
                }
                Err(_) => {
                    tracing::debug!("TLS handshake with {address} timed out");
                    return;
                }
            };
            let peer = Peer {
                address,
                client_cert_sha256: tls
                    .get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|chain| chain.first())
                    .map(|der| hex::encode(sha2::Sha256::digest(der))),
            };
            // The router as a hyper service that hands every request its
            // Peer (and axum's ConnectInfo, for handlers written against it).
            let service = TowerToHyperService::new(router);
            let with_peer =
                hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
                    request.extensions_mut().insert(ConnectInfo(peer.address));
                    request.extensions_mut().insert(peer.clone());
                    service.call(request)
                });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .max_header_size(MAX_HEAD_BYTES)
                .serve_connection(
                    TokioIo::new(stall::StallGuard::new(tls, WRITE_STALL_LIMIT)),
                    with_peer,
                );
            if let Err(e) = watcher.watch(conn).await {
                tracing::debug!("connection from {address}: {e}");
            }
        });
    };
    drop(listener);
    hup_task.abort();
    let open = graceful.count();
    notice(
        opts.json,
        &format!(
            "{signal}: no new connections; stopping once the {open} open connection(s) are done \
             (a second signal stops at once)"
        ),
    );
    Ok(graceful)
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::process::{Command, Output, Stdio};
    use std::sync::atomic::{AtomicBool, Ordering};

    use axum::body::Body;
    use axum::routing::get;
    use axum::Extension;
    use backup_core::HttpConfig;
    use futures::StreamExt;

    use super::*;

    /// Serves `router` on `listener` until the returned sender is used; the
    /// handle ends once the drain has.
    fn spawn_server(
        listener: TcpListener,
        router: axum::Router,
        opts: ServeOptions,
    ) -> (
        tokio::sync::oneshot::Sender<()>,
        tokio::task::JoinHandle<()>,
    ) {
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(async move {
            let stop = async move {
                let _ = stop_rx.await;
                "test stop"
            };
            serve_until(listener, router, &opts, stop, std::future::pending())
                .await
                .unwrap()
                .shutdown()
                .await;
        });
        (stop_tx, server)
    }

    /// `curl --cacert CA URL`, run off the runtime's threads.
    fn curl(ca: &Path, url: String) -> tokio::task::JoinHandle<Output> {
        let ca = ca.to_path_buf();
        tokio::task::spawn_blocking(move || {
            Command::new("curl")
                .args(["--silent", "--show-error", "--max-time", "60", "--cacert"])
                .arg(ca)
                .arg(url)
                .stdin(Stdio::null())
                .output()
                .expect("running curl")
        })
    }

    /// The listener with a test router: `/peer` answers the [`Peer`] and
    /// `ConnectInfo` the request was handed; `/slow` sends a first line,
    /// then the second once `release` is notified.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn each_request_gets_its_peer_and_a_stop_waits_for_the_requests_in_flight() {
        let state = tempfile::tempdir().unwrap();
        let tls = tls::material(&HttpConfig::default(), state.path(), Path::new("t.toml")).unwrap();
        let ca = tls.cert_path.clone();
        let started = Arc::new(AtomicBool::new(false));
        let release = Arc::new(tokio::sync::Notify::new());
        let (slow_started, slow_release) = (started.clone(), release.clone());
        let router = axum::Router::new()
            .route(
                "/peer",
                get(
                    |Extension(peer): Extension<Peer>,
                     ConnectInfo(address): ConnectInfo<SocketAddr>| async move {
                        format!("{} {} {:?}", peer.address, address, peer.client_cert_sha256)
                    },
                ),
            )
            .route(
                "/slow",
                get(move || async move {
                    slow_started.store(true, Ordering::SeqCst);
                    let rest = async move {
                        slow_release.notified().await;
                        Ok::<_, std::convert::Infallible>(axum::body::Bytes::from_static(b"end\n"))
                    };
                    let body =
                        futures::stream::iter([Ok(axum::body::Bytes::from_static(b"begin\n"))])
                            .chain(futures::stream::once(rest));
                    Body::from_stream(body)
                }),
            );
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let opts = ServeOptions {
            listen: listener.local_addr().unwrap(),
            tls,
            client_certs: Arc::new(|| false),
            json: false,
        };
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let (closed_tx, closed_rx) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(async move {
            let stop = async move {
                let _ = stop_rx.await;
                "test stop"
            };
            let drain = serve_until(listener, router, &opts, stop, std::future::pending())
                .await
                .unwrap();
            let _ = closed_tx.send(());
            drain.shutdown().await;
        });
        let url = |path: &str| format!("https://localhost:{port}{path}");

        let peer = curl(&ca, url("/peer")).await.unwrap();
        let text = String::from_utf8_lossy(&peer.stdout);
        assert!(peer.status.success(), "{peer:?}");
        let parts: Vec<&str> = text.split(' ').collect();
        assert!(parts[0].starts_with("127.0.0.1:"), "{text}");
        assert_eq!(parts[0], parts[1], "Peer and ConnectInfo disagree: {text}");
        assert_eq!(parts[2], "None", "{text}");

        let slow = curl(&ca, url("/slow"));
        while !started.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        stop_tx.send(()).unwrap();
        closed_rx.await.unwrap();
        // No new connections once stopped…
        let refused = curl(&ca, url("/peer")).await.unwrap();
        assert!(
            !refused.status.success(),
            "served after the stop: {refused:?}"
        );
        // …but the request in flight goes on to its end.
        assert!(!server.is_finished(), "stopped with a request in flight");
        release.notify_one();
        let slow = slow.await.unwrap();
        assert!(slow.status.success(), "{slow:?}");
        assert_eq!(String::from_utf8_lossy(&slow.stdout), "begin\nend\n");
        tokio::time::timeout(Duration::from_secs(60), server)
            .await
            .expect("the listener did not stop once its last request was done")
            .unwrap();
    }

    /// On a dual-stack socket an IPv4 client is known by its IPv4 address
    /// (audit lines and the failed-login throttle key on it), not as
    /// `::ffff:127.0.0.1`.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_ipv4_client_of_a_dual_stack_listener_is_known_by_its_ipv4_address() {
        let state = tempfile::tempdir().unwrap();
        let tls = tls::material(&HttpConfig::default(), state.path(), Path::new("t.toml")).unwrap();
        let ca = tls.cert_path.clone();
        let router = axum::Router::new().route(
            "/peer",
            get(
                |Extension(peer): Extension<Peer>,
                 ConnectInfo(address): ConnectInfo<SocketAddr>| async move {
                    format!("{} {}", peer.address.ip(), address.ip())
                },
            ),
        );
        let listener = TcpListener::bind("[::]:0")
            .await
            .expect("an IPv6 socket on [::] (dual stack)");
        let port = listener.local_addr().unwrap().port();
        let opts = ServeOptions {
            listen: listener.local_addr().unwrap(),
            tls,
            client_certs: Arc::new(|| false),
            json: false,
        };
        let (stop_tx, server) = spawn_server(listener, router, opts);
        let out = curl(&ca, format!("https://127.0.0.1:{port}/peer"))
            .await
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        assert_eq!(String::from_utf8_lossy(&out.stdout), "127.0.0.1 127.0.0.1");
        stop_tx.send(()).unwrap();
        server.await.unwrap();
    }

    /// Whether clients are asked for a certificate follows the authenticator
    /// at each handshake: a user given a certificate (and a reload) is asked
    /// for it without a restart.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn client_certificates_are_asked_for_as_soon_as_the_authenticator_wants_them() {
        let state = tempfile::tempdir().unwrap();
        let tls = tls::material(&HttpConfig::default(), state.path(), Path::new("t.toml")).unwrap();
        let ca = tls.cert_path.clone();
        // The client's certificate and key, as curl --cert/--key read them.
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let cert = rcgen::CertificateParams::new(vec!["alice.example".to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let cert_path = state.path().join("alice.pem");
        let key_path = state.path().join("alice.key");
        std::fs::write(&cert_path, cert.pem()).unwrap();
        std::fs::write(&key_path, key.serialize_pem()).unwrap();
        let expected = hex::encode(sha2::Sha256::digest(cert.der()));

        let router = axum::Router::new().route(
            "/peer",
            get(|Extension(peer): Extension<Peer>| async move {
                peer.client_cert_sha256.unwrap_or_else(|| "none".into())
            }),
        );
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let wanted = Arc::new(AtomicBool::new(false));
        let flag = wanted.clone();
        let opts = ServeOptions {
            listen: listener.local_addr().unwrap(),
            tls,
            client_certs: Arc::new(move || flag.load(Ordering::SeqCst)),
            json: false,
        };
        let (stop_tx, server) = spawn_server(listener, router, opts);
        let with_cert = || {
            let (ca, cert_path, key_path) = (ca.clone(), cert_path.clone(), key_path.clone());
            tokio::task::spawn_blocking(move || {
                let out = Command::new("curl")
                    .args(["--silent", "--show-error", "--fail", "--max-time", "60"])
                    .arg("--cacert")
                    .arg(ca)
                    .arg("--cert")
                    .arg(cert_path)
                    .arg("--key")
                    .arg(key_path)
                    .arg(format!("https://localhost:{port}/peer"))
                    .stdin(Stdio::null())
                    .output()
                    .expect("running curl");
                assert!(out.status.success(), "{out:?}");
                String::from_utf8_lossy(&out.stdout).into_owned()
            })
        };
        assert_eq!(
            with_cert().await.unwrap(),
            "none",
            "asked while nobody has one"
        );
        wanted.store(true, Ordering::SeqCst);
        assert_eq!(with_cert().await.unwrap(), expected);
        // Without a certificate the handshake still succeeds (optional).
        let out = curl(&ca, format!("https://localhost:{port}/peer"))
            .await
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        assert_eq!(String::from_utf8_lossy(&out.stdout), "none");
        stop_tx.send(()).unwrap();
        server.await.unwrap();
    }

    /// A client that stops reading mid-stream is dropped once no write has
    /// made progress for the stall limit (1 s in these tests), so that a
    /// streamed backup does not wait on it for ever: the response body is
    /// dropped (a backup would then be aborted).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_client_that_stops_reading_is_dropped_after_the_stall_limit() {
        let state = tempfile::tempdir().unwrap();
        let tls = tls::material(&HttpConfig::default(), state.path(), Path::new("t.toml")).unwrap();
        /// Set when the response body is dropped (the connection ended).
        struct Dropped(Arc<AtomicBool>);
        impl Drop for Dropped {
            fn drop(&mut self) {
                self.0.store(true, Ordering::SeqCst);
            }
        }
        let dropped = Arc::new(AtomicBool::new(false));
        let flag = dropped.clone();
        let router = axum::Router::new().route(
            "/endless",
            get(move || async move {
                let guard = Dropped(flag.clone());
                let body = futures::stream::repeat_with(move || {
                    let _ = &guard;
                    Ok::<_, std::convert::Infallible>(axum::body::Bytes::from(vec![7u8; 64 * 1024]))
                });
                Body::from_stream(body)
            }),
        );
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let opts = ServeOptions {
            listen: listener.local_addr().unwrap(),
            tls,
            client_certs: Arc::new(|| false),
            json: false,
        };
        let (stop_tx, server) = spawn_server(listener, router, opts);
        // openssl s_client sends the request, then blocks on its full
        // stdout pipe, which nobody reads: it stops reading the socket.
        let mut client = Command::new("openssl")
            .args(["s_client", "-quiet", "-connect"])
            .arg(format!("127.0.0.1:{port}"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("running openssl s_client");
        {
            use std::io::Write;
            let stdin = client.stdin.as_mut().unwrap();
            stdin
                .write_all(b"GET /endless HTTP/1.1\r\nHost: localhost\r\n\r\n")
                .unwrap();
            stdin.flush().unwrap();
        }
        let mut waited = Duration::ZERO;
        while !dropped.load(Ordering::SeqCst) {
            assert!(
                waited < Duration::from_secs(60),
                "the stalled connection was never dropped"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
            waited += Duration::from_millis(100);
        }
        let _ = client.kill();
        let _ = client.wait();
        stop_tx.send(()).unwrap();
        server.await.unwrap();
    }
}
