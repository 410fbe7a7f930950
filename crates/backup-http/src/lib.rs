//! The HTTP service of the appliance backup engine.
//!
//! [`router`] gives an [`axum::Router`] an embedder mounts in its own server
//! (`.nest("/backup", router(service))`); `backup serve` is a thin HTTPS
//! listener around the same router. The service has no TLS of its own: the
//! listener terminates TLS and hands each request its [`Peer`].
//!
//! Who may do what is decided by an [`Authenticator`]; the users file's
//! (`state_dir/users.toml`, Argon2id hashes and API tokens) is the default.
//!
//! Every request to a protected route is one line of the engine's audit
//! log (actor `http:<user>@<address>`, route, outcome, bytes, duration,
//! user agent); a backup also gets the engine's own `create` line.
#![warn(missing_docs)]

mod auth;
mod basic;
pub mod fingerprint;
mod links;
mod links_routes;
mod metrics;
mod page;
mod request;
mod routes;
mod service;
mod serving;
mod users;

pub use auth::{Authenticator, Credentials, Denial, LoginThrottle, Principal, Role, Throttled};
pub use basic::parse_basic;
pub use links::{
    links_csv, parse_lifetime, rotate_link_key, SignedLinks, DEFAULT_LINK_LIFETIME, LINK_KEY_FILE,
    MAX_LINK_LIFETIME,
};
pub use routes::router;
pub use service::{RunView, Service};
pub use users::{
    NewToken, TokenEntry, UserEntry, UsersAuthenticator, UsersError, UsersFile, USERS_FILE,
};

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
