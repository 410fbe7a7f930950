//! The TLS side of `backup serve`: the certificate (configured, or made once
//! and kept in the state directory) and the rustls server configuration.
use std::io::Write;
use std::net::IpAddr;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context};
use backup_core::HttpConfig;
use chrono::Datelike;
use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, ServerConfig, SignatureScheme};

/// A certificate chain and its key, ready for the listener.
pub(crate) struct TlsMaterial {
    /// Where the certificate was read from (or written to).
    pub(crate) cert_path: PathBuf,
    /// The chain, the server's own certificate first.
    pub(crate) chain: Vec<CertificateDer<'static>>,
    pub(crate) key: PrivateKeyDer<'static>,
    /// Whether this start made the certificate.
    pub(crate) generated: bool,
}

impl TlsMaterial {
    /// `sha256:…` of the server's own certificate (the first of the chain).
    pub(crate) fn fingerprint(&self) -> String {
        backup_http::fingerprint::of_der(&self.chain[0])
    }
}

/// The configured `[http] tls_cert` and `tls_key` (both or neither: one
/// alone is a configuration error), else `state_dir/http/{cert,key}.pem`,
/// made on the first start.
pub(crate) fn material(
    http: &HttpConfig,
    state_dir: &Path,
    config_path: &Path,
) -> anyhow::Result<TlsMaterial> {
    match (&http.tls_cert, &http.tls_key) {
        (Some(cert), Some(key)) => load(cert, key),
        (None, None) => own_certificate(&state_dir.join("http")),
        (cert, _) => {
            let (set, unset) = if cert.is_some() {
                ("tls_cert", "tls_key")
            } else {
                ("tls_key", "tls_cert")
            };
            Err(backup_core::Error::Config {
                path: config_path.to_path_buf(),
                reason: format!(
                    "[http] {set} is set but {unset} is not: set both (the PEM certificate \
                     chain and its private key), or neither to use a self-signed certificate \
                     made in {}",
                    state_dir.join("http").display()
                ),
            }
            .into())
        }
    }
}

fn load(cert_path: &Path, key_path: &Path) -> anyhow::Result<TlsMaterial> {
    let read = |path: &Path| {
        std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))
    };
    let cert_pem = read(cert_path)?;
    let chain = rustls_pemfile::certs(&mut &cert_pem[..])
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("{} is not a PEM certificate chain", cert_path.display()))?;
    if chain.is_empty() {
        bail!(
            "{} holds no PEM certificate (-----BEGIN CERTIFICATE-----)",
            cert_path.display()
        );
    }
    let key_pem = zeroize::Zeroizing::new(read(key_path)?);
    let key = rustls_pemfile::private_key(&mut &key_pem[..])
        .with_context(|| format!("{} is not a PEM private key", key_path.display()))?
        .with_context(|| {
            format!(
                "{} holds no PEM private key (PKCS#8, PKCS#1 or SEC1)",
                key_path.display()
            )
        })?;
    Ok(TlsMaterial {
        cert_path: cert_path.to_path_buf(),
        chain,
        key,
        generated: false,
    })
}

/// The service's own certificate in `dir`: reused when there, else made
/// (a key without a certificate is what an interrupted first start leaves,
/// and is replaced; a certificate without its key is not: clients may trust
/// it).
fn own_certificate(dir: &Path) -> anyhow::Result<TlsMaterial> {
    let cert_path = dir.join("cert.pem");
    let key_path = dir.join("key.pem");
    if cert_path.exists() {
        if !key_path.exists() {
            bail!(
                "{} exists but its key {} does not: put the key back, or remove the \
                 certificate to make a new one (clients then have to trust the new one)",
                cert_path.display(),
                key_path.display()
            );
        }
        return load(&cert_path, &key_path);
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("cannot create {}", dir.display()))?;
    let (cert_pem, key_pem) = self_signed(&host_name(), &interface_addresses())?;
    write_atomic(&key_path, key_pem.as_bytes(), 0o600)?;
    write_atomic(&cert_path, cert_pem.as_bytes(), 0o644)?;
    let mut made = load(&cert_path, &key_path)?;
    made.generated = true;
    Ok(made)
}

/// A self-signed ECDSA P-256 certificate for `host` (its common name) and
/// its key, both PEM. Subject alternative names: `host`, `localhost`,
/// 127.0.0.1, ::1 and `addresses`. Valid from yesterday for ten years.
pub(crate) fn self_signed(
    host: &str,
    addresses: &[IpAddr],
) -> anyhow::Result<(String, zeroize::Zeroizing<String>)> {
    let mut names = vec![host.to_string(), "localhost".into()];
    names.extend(["127.0.0.1", "::1"].map(String::from));
    names.extend(addresses.iter().map(IpAddr::to_string));
    let mut seen = std::collections::HashSet::new();
    names.retain(|n| !n.is_empty() && seen.insert(n.clone()));
    // A host name that is no valid DNS name (rcgen refuses it) stays the
    // common name only.
    let mut params = rcgen::CertificateParams::new(names.clone())
        .or_else(|_| rcgen::CertificateParams::new(names[1..].to_vec()))
        .context("cannot make the certificate's subject alternative names")?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, host);
    let since = chrono::Utc::now().date_naive() - chrono::Days::new(1);
    let ymd = |d: chrono::NaiveDate| rcgen::date_time_ymd(d.year(), d.month() as u8, d.day() as u8);
    params.not_before = ymd(since);
    params.not_after = ymd(since.with_year(since.year() + 10).unwrap_or(since));
    params.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
        .context("cannot generate the certificate's key")?;
    let cert = params
        .self_signed(&key)
        .context("cannot sign the certificate")?;
    Ok((cert.pem(), zeroize::Zeroizing::new(key.serialize_pem())))
}

/// This machine's host name (empty if the system has none).
fn host_name() -> String {
    rustix::system::uname()
        .nodename()
        .to_string_lossy()
        .into_owned()
}

/// Every non-loopback address of this machine's interfaces.
fn interface_addresses() -> Vec<IpAddr> {
    match if_addrs::get_if_addrs() {
        Ok(interfaces) => interfaces
            .iter()
            .filter(|i| !i.is_loopback())
            .map(if_addrs::Interface::ip)
            .collect(),
        Err(e) => {
            tracing::warn!(
                "cannot list the network interfaces ({e}): the certificate names only the \
                 host name and the loopback addresses"
            );
            Vec::new()
        }
    }
}

/// Writes a file whole or not at all: a temporary name beside it, fsync, rename.
fn write_atomic(path: &Path, data: &[u8], mode: u32) -> anyhow::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let result = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        std::fs::File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.with_context(|| format!("cannot write {}", path.display()))
}

/// The rustls configuration of the listener: ring, TLS 1.2 and 1.3, ALPN
/// `http/1.1`; with `client_certs`, an optional client certificate is asked
/// for at the handshake (see [`AnyClientCertificate`]).
pub(crate) fn server_config(
    material: &TlsMaterial,
    client_certs: bool,
) -> anyhow::Result<ServerConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .context("the TLS provider does not support TLS 1.2 and 1.3")?;
    let builder = if client_certs {
        builder.with_client_cert_verifier(Arc::new(AnyClientCertificate { provider }))
    } else {
        builder.with_no_client_auth()
    };
    let mut config = builder
        .with_single_cert(material.chain.clone(), material.key.clone_key())
        .with_context(|| {
            format!(
                "cannot use the certificate {} with its key (does the key belong to it?)",
                material.cert_path.display()
            )
        })?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// Takes any client certificate, or none: a certificate is pinned per user
/// by its SHA-256 after the handshake, not by a CA here. The handshake
/// signature is still checked, so a client presenting a certificate holds
/// its private key.
#[derive(Debug)]
struct AnyClientCertificate {
    provider: Arc<CryptoProvider>,
}

impl ClientCertVerifier for AnyClientCertificate {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};

    use rustls::client::danger::{ServerCertVerified, ServerCertVerifier};
    use rustls::client::ResolvesClientCert;
    use rustls::pki_types::ServerName;
    use rustls::sign::CertifiedKey;
    use rustls::ClientConfig;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    fn provider() -> Arc<CryptoProvider> {
        Arc::new(rustls::crypto::ring::default_provider())
    }

    /// A fresh self-signed certificate and key for `name`, as DER.
    fn cert_and_key(name: &str) -> (CertificateDer<'static>, PrivateKeyDer<'static>) {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let cert = rcgen::CertificateParams::new(vec![name.to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let key = PrivateKeyDer::try_from(key.serialize_der()).unwrap();
        (cert.der().clone(), key)
    }

    fn server_material() -> TlsMaterial {
        let (cert, key) = cert_and_key("localhost");
        TlsMaterial {
            cert_path: PathBuf::from("test-cert.pem"),
            chain: vec![cert],
            key,
            generated: false,
        }
    }

    /// The client side: trusts exactly the server's certificate, and offers
    /// `certified` when (and only when) the server asks for a certificate.
    #[derive(Debug)]
    struct Client {
        server_cert: CertificateDer<'static>,
        certified: Arc<CertifiedKey>,
        asked: AtomicBool,
    }

    impl ServerCertVerifier for Client {
        fn verify_server_cert(
            &self,
            end_entity: &CertificateDer<'_>,
            _intermediates: &[CertificateDer<'_>],
            _server_name: &ServerName<'_>,
            _ocsp_response: &[u8],
            _now: UnixTime,
        ) -> Result<ServerCertVerified, rustls::Error> {
            assert_eq!(end_entity.as_ref(), self.server_cert.as_ref());
            Ok(ServerCertVerified::assertion())
        }

        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            verify_tls12_signature(
                message,
                cert,
                dss,
                &provider().signature_verification_algorithms,
            )
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            verify_tls13_signature(
                message,
                cert,
                dss,
                &provider().signature_verification_algorithms,
            )
        }

        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            provider()
                .signature_verification_algorithms
                .supported_schemes()
        }
    }

    #[derive(Debug)]
    struct Resolver(Arc<Client>);

    impl ResolvesClientCert for Resolver {
        fn resolve(
            &self,
            _root_hint_subjects: &[&[u8]],
            _sigschemes: &[SignatureScheme],
        ) -> Option<Arc<CertifiedKey>> {
            self.0.asked.store(true, Ordering::SeqCst);
            Some(self.0.certified.clone())
        }

        fn has_certs(&self) -> bool {
            true
        }
    }

    /// What the server saw of one handshake.
    struct Seen {
        asked: bool,
        result: Result<Option<CertificateDer<'static>>, String>,
    }

    /// One handshake over an in-memory pipe between the listener's config and
    /// a client presenting `client_cert` signed with `client_key`, with
    /// `version`.
    async fn handshake(
        client_certs: bool,
        version: &'static rustls::SupportedProtocolVersion,
        client_cert: CertificateDer<'static>,
        client_key: PrivateKeyDer<'static>,
    ) -> Seen {
        let material = server_material();
        let server = tokio_rustls::TlsAcceptor::from(Arc::new(
            server_config(&material, client_certs).unwrap(),
        ));
        let signing = provider()
            .key_provider
            .load_private_key(client_key)
            .unwrap();
        let client = Arc::new(Client {
            server_cert: material.chain[0].clone(),
            certified: Arc::new(CertifiedKey::new(vec![client_cert], signing)),
            asked: AtomicBool::new(false),
        });
        let mut config = ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[version])
            .unwrap()
            .dangerous()
            .with_custom_certificate_verifier(client.clone())
            .with_client_cert_resolver(Arc::new(Resolver(client.clone())));
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
        let (near, far) = tokio::io::duplex(64 * 1024);
        let server_side = tokio::spawn(async move {
            let mut tls = server.accept(far).await.map_err(|e| e.to_string())?;
            let (_, conn) = tls.get_ref();
            assert_eq!(conn.alpn_protocol(), Some(&b"http/1.1"[..]));
            let cert = conn
                .peer_certificates()
                .and_then(|c| c.first())
                .map(|c| c.clone().into_owned());
            // One byte each way: the client's certificate messages
            // (TLS 1.3) are read before this completes.
            let mut byte = [0u8; 1];
            tls.read_exact(&mut byte).await.map_err(|e| e.to_string())?;
            tls.write_all(b"!").await.map_err(|e| e.to_string())?;
            tls.flush().await.map_err(|e| e.to_string())?;
            Ok::<_, String>(cert)
        });
        let name = ServerName::try_from("localhost").unwrap();
        if let Ok(mut tls) = connector.connect(name, near).await {
            let mut byte = [0u8; 1];
            if tls.write_all(b"?").await.is_ok() && tls.flush().await.is_ok() {
                let _ = tls.read_exact(&mut byte).await;
            }
            let _ = tls.shutdown().await;
        }
        let result = server_side.await.unwrap();
        Seen {
            asked: client.asked.load(Ordering::SeqCst),
            result,
        }
    }

    const VERSIONS: [&rustls::SupportedProtocolVersion; 2] =
        [&rustls::version::TLS13, &rustls::version::TLS12];

    #[tokio::test]
    async fn a_client_certificate_is_asked_for_only_when_the_authenticator_wants_one() {
        for version in VERSIONS {
            let (cert, key) = cert_and_key("alice.example");
            let seen = handshake(true, version, cert.clone(), key).await;
            assert!(seen.asked, "{version:?}: no CertificateRequest");
            assert_eq!(
                seen.result.expect("handshake"),
                Some(cert),
                "{version:?}: the presented certificate"
            );

            let (cert, key) = cert_and_key("alice.example");
            let seen = handshake(false, version, cert, key).await;
            assert!(!seen.asked, "{version:?}: a certificate was asked for");
            assert_eq!(seen.result.expect("handshake"), None, "{version:?}");
        }
    }

    #[tokio::test]
    async fn a_client_certificate_without_its_private_key_fails_the_handshake() {
        for version in VERSIONS {
            let (cert, _) = cert_and_key("alice.example");
            let (_, other_key) = cert_and_key("mallory.example");
            let seen = handshake(true, version, cert, other_key).await;
            assert!(seen.asked);
            let e = seen.result.expect_err("a stolen certificate was accepted");
            assert!(e.to_lowercase().contains("signature"), "{version:?}: {e}");
        }
    }

    fn no_tls() -> HttpConfig {
        HttpConfig::default()
    }

    #[test]
    fn the_own_certificate_is_made_once_and_reused() {
        let state = tempfile::tempdir().unwrap();
        let made = material(&no_tls(), state.path(), Path::new("backup.toml")).unwrap();
        assert!(made.generated);
        assert_eq!(made.cert_path, state.path().join("http/cert.pem"));
        let again = material(&no_tls(), state.path(), Path::new("backup.toml")).unwrap();
        assert!(!again.generated);
        assert_eq!(again.fingerprint(), made.fingerprint());
        // No temporary files left behind.
        let mut names: Vec<_> = std::fs::read_dir(state.path().join("http"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, ["cert.pem", "key.pem"]);
    }

    #[test]
    fn a_certificate_without_its_key_is_refused_and_a_lone_key_replaced() {
        let state = tempfile::tempdir().unwrap();
        let made = material(&no_tls(), state.path(), Path::new("backup.toml")).unwrap();
        let http = state.path().join("http");
        std::fs::remove_file(http.join("key.pem")).unwrap();
        let e = material(&no_tls(), state.path(), Path::new("backup.toml"))
            .err()
            .expect("a certificate without its key was used");
        let e = format!("{e:#}");
        assert!(e.contains("key.pem") && e.contains("does not"), "{e}");
        assert!(
            http.join("cert.pem").exists(),
            "the certificate was removed"
        );

        std::fs::remove_file(http.join("cert.pem")).unwrap();
        std::fs::write(http.join("key.pem"), "left by an interrupted start").unwrap();
        let remade = material(&no_tls(), state.path(), Path::new("backup.toml")).unwrap();
        assert!(remade.generated);
        assert_ne!(remade.fingerprint(), made.fingerprint());
        server_config(&remade, false).expect("the new key belongs to the new certificate");
    }

    #[test]
    fn a_configured_key_that_belongs_to_another_certificate_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let cert = rcgen::CertificateParams::new(vec!["localhost".to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let other_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let cert_path = dir.path().join("cert.pem");
        let key_path = dir.path().join("key.pem");
        std::fs::write(&cert_path, cert.pem()).unwrap();
        std::fs::write(&key_path, other_key.serialize_pem()).unwrap();
        let http = HttpConfig {
            tls_cert: Some(cert_path),
            tls_key: Some(key_path),
            ..HttpConfig::default()
        };
        let loaded = material(&http, dir.path(), Path::new("backup.toml")).unwrap();
        assert_eq!(loaded.chain, vec![cert.der().clone()]);
        let e = format!("{:#}", server_config(&loaded, false).expect_err("mismatch"));
        assert!(e.contains("does the key belong to it"), "{e}");
        assert!(!dir.path().join("http").exists());
    }

    #[test]
    fn the_certificate_names_the_host_loopback_and_interface_addresses() {
        let addresses: Vec<IpAddr> =
            vec!["192.0.2.7".parse().unwrap(), "2001:db8::7".parse().unwrap()];
        let (pem, key) = self_signed("gw-test", &addresses).unwrap();
        assert!(key.contains("PRIVATE KEY"));
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cert.pem");
        std::fs::write(&path, pem).unwrap();
        let out = std::process::Command::new("openssl")
            .args(["x509", "-noout", "-text", "-in"])
            .arg(&path)
            .output()
            .expect("running openssl");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        for needle in [
            "Subject: CN = gw-test",
            "DNS:gw-test",
            "DNS:localhost",
            "IP Address:127.0.0.1",
            "IP Address:0:0:0:0:0:0:0:1",
            "IP Address:192.0.2.7",
            "IP Address:2001:DB8:0:0:0:0:0:7",
            "TLS Web Server Authentication",
            "prime256v1",
        ] {
            assert!(text.contains(needle), "no {needle:?} in\n{text}");
        }
    }
}
