//! The HTTPS client of one node's `backup serve`: the node's certificate is
//! trusted by its pinned SHA-256 alone (no CA, no host name), the
//! handshake's signatures are still checked, and every wait is bounded.
use std::sync::{Arc, Mutex};
use std::time::Duration;

use backup_core::ClusterNode;
use base64::Engine as _;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode, Uri};
use hyper_util::rt::TokioIo;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, SignatureScheme};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use zeroize::Zeroizing;

/// Largest JSON answer read from a node (`/status`, `/runs/{id}`, errors).
const JSON_LIMIT: usize = 1 << 20;

/// A node as the coordinator reaches it.
pub(crate) struct NodeClient {
    /// The node's name, for messages.
    name: String,
    host: String,
    port: u16,
    /// `Basic …` of the node's token.
    authorization: Zeroizing<String>,
    connector: TlsConnector,
    verifier: Arc<PinnedCertificate>,
    /// How long the node may stay silent: connect and headers, and between
    /// two chunks of a body.
    pub(crate) timeout: Duration,
}

impl NodeClient {
    /// A client of `node`: its URL, pinned fingerprint and token file checked.
    pub(crate) fn new(node: &ClusterNode, timeout: Duration) -> Result<NodeClient, String> {
        let uri: Uri = node.url.parse().map_err(|e| {
            format!(
                "url {:?} is not a URL ({e}): write https://ADDRESS:PORT",
                node.url
            )
        })?;
        if uri.scheme_str() != Some("https") {
            return Err(format!(
                "url {:?} is not https://: the coordinator talks to `backup serve` over HTTPS only",
                node.url
            ));
        }
        let host = uri
            .host()
            .ok_or_else(|| format!("url {:?} names no host", node.url))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let port = uri.port_u16().unwrap_or(443);
        let pinned = backup_http::fingerprint::parse(&node.fingerprint)
            .map_err(|e| format!("fingerprint: {e}"))?;
        let authorization = token_authorization(node)?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier = Arc::new(PinnedCertificate {
            pinned,
            seen: Mutex::new(None),
            provider: provider.clone(),
        });
        let config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS set-up: {e}"))?
            .dangerous()
            .with_custom_certificate_verifier(verifier.clone())
            .with_no_client_auth();
        Ok(NodeClient {
            name: node.name.clone(),
            host,
            port,
            authorization,
            connector: TlsConnector::from(Arc::new(config)),
            verifier,
            timeout,
        })
    }

    /// `GET path`: connects, checks the certificate, sends the request with
    /// the token and waits for the response head, all within the timeout.
    pub(crate) async fn get(&self, path: &str) -> Result<Response<Incoming>, String> {
        let address = format!("{}:{}", self.host, self.port);
        let waited = tokio::time::timeout(self.timeout, async {
            let tcp = TcpStream::connect((self.host.as_str(), self.port))
                .await
                .map_err(|e| format!("cannot connect to {address}: {e}"))?;
            let server_name = ServerName::try_from(self.host.clone())
                .map_err(|e| format!("{:?} is not a host name or address: {e}", self.host))?;
            let tls = match self.connector.connect(server_name, tcp).await {
                Ok(tls) => tls,
                Err(e) => return Err(self.handshake_failure(&address, e)),
            };
            let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
                .await
                .map_err(|e| format!("HTTP with {address}: {e}"))?;
            tokio::spawn(async move {
                let _ = connection.await;
            });
            let authority = if self.host.contains(':') {
                format!("[{}]:{}", self.host, self.port)
            } else {
                address.clone()
            };
            let request = Request::get(path)
                .header(hyper::header::HOST, authority)
                .header(hyper::header::AUTHORIZATION, self.authorization.as_str())
                .body(Empty::<Bytes>::new())
                .map_err(|e| format!("request {path}: {e}"))?;
            sender
                .send_request(request)
                .await
                .map_err(|e| format!("GET {path} on {address}: {e}"))
        })
        .await;
        match waited {
            Ok(result) => result,
            Err(_) => Err(format!(
                "no answer from {address} to GET {path} within {} s (timeout_secs)",
                self.timeout.as_secs()
            )),
        }
    }

    /// `GET path` answered 2xx with a JSON body (at most 1 MiB).
    pub(crate) async fn get_json<T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
    ) -> Result<T, String> {
        let response = self.get(path).await?;
        let status = response.status();
        let body = self.read_small(response.into_body()).await?;
        if !status.is_success() {
            return Err(refusal(path, status, &body));
        }
        serde_json::from_slice(&body).map_err(|e| {
            format!("GET {path} answered something that is not the expected JSON: {e}")
        })
    }

    /// A small body, read whole within the timeout per chunk.
    pub(crate) async fn read_small(&self, mut body: Incoming) -> Result<Vec<u8>, String> {
        let mut out = Vec::new();
        while let Some(frame) = self.next_chunk(&mut body).await? {
            out.extend_from_slice(&frame);
            if out.len() > JSON_LIMIT {
                return Err(format!("the node's answer exceeds {JSON_LIMIT} bytes"));
            }
        }
        Ok(out)
    }

    /// The next chunk of a body, `None` at its proper end. A broken
    /// transfer and a silence longer than the timeout are errors.
    pub(crate) async fn next_chunk(&self, body: &mut Incoming) -> Result<Option<Bytes>, String> {
        loop {
            let frame = tokio::time::timeout(self.timeout, body.frame())
                .await
                .map_err(|_| {
                    format!(
                        "node {} sent nothing for {} s (timeout_secs): the transfer was abandoned",
                        self.name,
                        self.timeout.as_secs()
                    )
                })?;
            match frame {
                None => return Ok(None),
                Some(Err(e)) => {
                    return Err(format!(
                        "the transfer from node {} broke off: {e}",
                        self.name
                    ))
                }
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        return Ok(Some(data));
                    }
                }
            }
        }
    }

    fn handshake_failure(&self, address: &str, e: std::io::Error) -> String {
        let seen = self.verifier.seen.lock().map(|s| s.clone()).unwrap_or(None);
        let expected = format!("sha256:{}", hex::encode(self.verifier.pinned));
        match seen {
            Some(seen) if seen != expected => format!(
                "the certificate of {address} is {seen}, but [[cluster.node]] {:?} pins {expected}: \
                 if the node's certificate was replaced, check the fingerprint `backup serve` prints \
                 on the node and update `fingerprint`; otherwise something else answers at this address",
                self.name
            ),
            _ => format!("TLS handshake with {address} failed: {e}"),
        }
    }
}

/// A refused request as an operator reads it: the status and the node's
/// own message.
pub(crate) fn refusal(path: &str, status: StatusCode, body: &[u8]) -> String {
    let message = serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v["error"]["message"].as_str().map(str::to_string))
        .unwrap_or_else(|| String::from_utf8_lossy(&body[..body.len().min(300)]).into_owned());
    let what = match status {
        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
            " (check token_file: a token of an admin user on that node, `backup token create`)"
        }
        StatusCode::CONFLICT => " (a backup or restore is running on that node)",
        _ => "",
    };
    format!("GET {path} answered {status}{what}: {}", message.trim())
}

/// `Basic base64(USER!NAME:SECRET)` from the node's token file: the line
/// `backup token create` printed there. The secret never leaves this value.
fn token_authorization(node: &ClusterNode) -> Result<Zeroizing<String>, String> {
    let path = &node.token_file;
    let text = Zeroizing::new(std::fs::read_to_string(path).map_err(|e| {
        format!(
            "cannot read token_file {}: {e} (put there the line `backup token create USER NAME` printed on node {})",
            path.display(),
            node.name
        )
    })?);
    let line = text.lines().next().unwrap_or("").trim();
    let valid = line
        .split_once(':')
        .is_some_and(|(login, secret)| login.contains('!') && !secret.is_empty());
    if !valid {
        return Err(format!(
            "token_file {} does not hold USER!NAME:SECRET (the line `backup token create` prints)",
            path.display()
        ));
    }
    Ok(Zeroizing::new(format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(line.as_bytes())
    )))
}

/// Accepts exactly the end-entity certificate whose SHA-256 is pinned and
/// remembers what it saw; signatures are verified with the provider's
/// algorithms.
#[derive(Debug)]
struct PinnedCertificate {
    pinned: [u8; 32],
    seen: Mutex<Option<String>>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for PinnedCertificate {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let seen = backup_http::fingerprint::of_der(end_entity.as_ref());
        let matches = seen == format!("sha256:{}", hex::encode(self.pinned));
        if let Ok(mut slot) = self.seen.lock() {
            *slot = Some(seen);
        }
        if matches {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General(
                "the certificate is not the pinned one".into(),
            ))
        }
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
