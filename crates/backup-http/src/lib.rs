//! The HTTP service of the appliance backup engine.
//!
//! [`router`] gives an [`axum::Router`] an embedder mounts in its own server
//! (`.nest("/backup", router(service))`); `backup serve` is a thin HTTPS
//! listener around the same router. The service has no TLS of its own: the
//! listener terminates TLS and hands each request its [`Peer`].
//!
//! Who may do what is decided by an [`Authenticator`]; the users file's
//! (`state_dir/users.toml`, Argon2id hashes and API tokens) is the default.
#![warn(missing_docs)]

mod auth;
pub mod fingerprint;

pub use auth::{Authenticator, Credentials, Denial, Principal, Role};

use std::net::SocketAddr;

/// The connection a request came in on, as the listener saw it: inserted
/// into each request's extensions by the server (`backup serve` does). A
/// router served by `axum::serve(...).into_make_service_with_connect_info`
/// falls back to `ConnectInfo<SocketAddr>`.
#[derive(Debug, Clone)]
pub struct Peer {
    /// The client's address.
    pub address: SocketAddr,
    /// SHA-256 (lower-case hex) of the DER client certificate it presented, if any.
    pub client_cert_sha256: Option<String>,
}
