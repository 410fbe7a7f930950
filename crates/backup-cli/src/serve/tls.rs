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
