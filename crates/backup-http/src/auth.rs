//! Who may do what: the [`Authenticator`] a service asks about each
//! request's credentials, and the roles it answers with.
use std::net::IpAddr;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

/// What a user may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Back up, download images, issue download links; and all an auditor may.
    Admin,
    /// Read status, the image list and metrics; nothing else.
    Auditor,
}

impl Role {
    /// Whether this role may do what `needed` may.
    pub fn allows(self, needed: Role) -> bool {
        self == Role::Admin || needed == Role::Auditor
    }

    /// `admin` or `auditor`.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Auditor => "auditor",
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "admin" => Ok(Role::Admin),
            "auditor" => Ok(Role::Auditor),
            other => Err(format!("unknown role {other:?}: admin or auditor")),
        }
    }
}

/// The credentials one request presented (HTTP Basic, RFC 7617).
pub struct Credentials {
    /// The login as sent: `alice`, or `alice!cron` for alice's token `cron`.
    pub user: String,
    /// The password or token secret. Never logged.
    pub password: Zeroizing<String>,
    /// The client's address.
    pub address: IpAddr,
    /// SHA-256 (lower-case hex) of the DER client certificate presented at
    /// the TLS handshake, if any.
    pub client_cert_sha256: Option<String>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("user", &self.user)
            .field("address", &self.address)
            .finish_non_exhaustive()
    }
}

/// Who a request was authenticated as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The user (for a token, the user it belongs to).
    pub user: String,
    /// What the request may do (a token's is its user's role at most).
    pub role: Role,
    /// The token's name, when a token was presented.
    pub token: Option<String>,
}

/// Why credentials were not accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Denial {
    /// Unknown user or token, wrong password or secret, an expired or
    /// revoked token: `401`, counted as a failed login.
    BadCredentials,
    /// The password was right, but the user has a client certificate
    /// registered and the connection did not present it: `403`.
    ClientCertificateRequired,
}

/// Checks credentials. The users file ([`crate::UsersAuthenticator`]) is
/// the default; an appliance maker may answer from its own user database.
///
/// Implementations bound their own cost (the default verifies at most two
/// Argon2 hashes at once); failed logins are slowed down by the service, not
/// here.
#[async_trait]
pub trait Authenticator: Send + Sync + 'static {
    /// Who `credentials` belong to, or why they are refused.
    async fn authenticate(&self, credentials: &Credentials) -> Result<Principal, Denial>;

    /// Whether some user has a client certificate registered: the TLS
    /// listener then asks for one at the handshake (optional for the
    /// others).
    fn wants_client_certificates(&self) -> bool {
        false
    }
}

/// Provisional: replaced by the users work.
#[derive(Debug, Default)]
pub struct LoginThrottle {}

/// Too many failed logins: answer `429` with `Retry-After`.
#[derive(Debug, Clone, Copy)]
pub struct Throttled {
    /// When the next attempt is heard.
    pub retry_after: std::time::Duration,
}

impl LoginThrottle {
    /// A throttle with no failures recorded.
    pub fn new() -> Self {
        LoginThrottle {}
    }
    /// Before verifying.
    pub fn check(&self, _address: IpAddr, _user: &str) -> Result<(), Throttled> {
        Ok(())
    }
    /// After a failure.
    pub fn failed(&self, _address: IpAddr, _user: &str) -> Result<std::time::Duration, Throttled> {
        Ok(std::time::Duration::ZERO)
    }
    /// After a success.
    pub fn succeeded(&self, _address: IpAddr, _user: &str) {}
}
