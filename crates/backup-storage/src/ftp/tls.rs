//! Explicit FTPS: the TLS client configuration and its trust roots.

use std::sync::Arc;

use suppaftp::tokio_rustls::rustls;

use crate::{Error, Result};

pub(super) fn tls_config(roots: rustls::RootCertStore) -> Result<Arc<rustls::ClientConfig>> {
    // An explicit provider: with both ring and aws-lc-rs in one build (another
    // dependency may bring the latter), rustls cannot pick a default.
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Other {
            what: "setting up TLS for ftps://".to_owned(),
            source: Some(Box::new(e)),
        })?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

pub(super) fn system_roots() -> Result<rustls::RootCertStore> {
    let found = rustls_native_certs::load_native_certs();
    let mut roots = rustls::RootCertStore::empty();
    let (added, _unparsable) = roots.add_parsable_certificates(found.certs);
    if added == 0 {
        return Err(Error::Other {
            what: format!(
                "ftps:// verifies the server's certificate, but no trusted CA certificate was found \
                 in the system store ({} problems); install ca-certificates, and add a private CA \
                 with update-ca-certificates",
                found.errors.len()
            ),
            source: found
                .errors
                .into_iter()
                .next()
                .map(|e| Box::new(e) as crate::BoxError),
        });
    }
    Ok(roots)
}

pub(super) fn pem_roots(pem: &[u8]) -> Result<rustls::RootCertStore> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::CertificateDer;
    let bad = |e: Box<dyn std::error::Error + Send + Sync>| Error::Other {
        what: "reading the CA certificates for ftps://".to_owned(),
        source: Some(e),
    };
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(pem) {
        roots
            .add(cert.map_err(|e| bad(Box::new(e)))?)
            .map_err(|e| bad(Box::new(e)))?;
    }
    if roots.is_empty() {
        return Err(bad("no certificate in the PEM text".into()));
    }
    Ok(roots)
}
