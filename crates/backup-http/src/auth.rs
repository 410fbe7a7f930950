//! Who may do what: the [`Authenticator`] a service asks about each
//! request's credentials, and the roles it answers with.
use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

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

/// How long failed logins are remembered for one (address, user).
const THROTTLE_WINDOW: Duration = Duration::from_secs(15 * 60);
/// Failures answered at once; each one after them is held back.
const FREE_FAILURES: usize = 3;
/// The unit of the hold-back: the `n`th failure waits `UNIT_DELAY × 2^(n−3)`.
const UNIT_DELAY: Duration = Duration::from_millis(250);
/// The longest hold-back.
const MAX_DELAY: Duration = Duration::from_secs(8);
/// From this failure on, attempts are answered `429` without a verification.
const REFUSED_FROM: usize = 10;
/// Addresses and users remembered at most: the oldest go first.
const THROTTLE_ENTRIES: usize = 10_000;
/// A login longer than this is remembered by its first characters only.
const THROTTLE_USER_CHARS: usize = 128;

/// Too many failed logins: answer `429 Too Many Requests` with this
/// `Retry-After`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Throttled {
    /// How long until the window frees an attempt.
    pub retry_after: Duration,
}

impl Throttled {
    /// `Retry-After` in whole seconds, rounded up (at least 1).
    pub fn retry_after_secs(&self) -> u64 {
        self.retry_after.as_millis().div_ceil(1000).max(1) as u64
    }
}

/// Slows down password guessing per (client address, login): the first 3
/// failures within 15 minutes are answered at once, each further one (the
/// `n`th) after 250 ms × 2^(n−3), at most 8 s (the 4th after 500 ms, the
/// 8th and 9th after 8 s), and from the 10th on attempts are refused with
/// `429` until the oldest failures leave the 15-minute window. A success resets the count of
/// that address and login. Nothing is locked: the same user from another
/// address is not affected.
///
/// The methods ending in `_at` take the current time, so that tests need no
/// sleeping; the others use [`Instant::now`].
#[derive(Debug, Default)]
pub struct LoginThrottle {
    failures: Mutex<HashMap<(IpAddr, String), VecDeque<Instant>>>,
}

impl LoginThrottle {
    /// A throttle that remembers nothing yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Before verifying a login: `Err` (answer `429`) when this address and
    /// login already have 9 failures in the window.
    pub fn check(&self, address: IpAddr, user: &str) -> Result<(), Throttled> {
        self.check_at(address, user, Instant::now())
    }

    /// [`check`](Self::check) at `now`.
    pub fn check_at(&self, address: IpAddr, user: &str, now: Instant) -> Result<(), Throttled> {
        let mut map = self.lock();
        let Some(times) = map.get_mut(&key(address, user)) else {
            return Ok(());
        };
        forget_old(times, now);
        match refusal(times, now) {
            Some(t) => Err(t),
            None => Ok(()),
        }
    }

    /// After a failed login: how long to hold the `401` back, or `Err`
    /// (answer `429`) from the 10th failure in the window on.
    pub fn failed(&self, address: IpAddr, user: &str) -> Result<Duration, Throttled> {
        self.failed_at(address, user, Instant::now())
    }

    /// [`failed`](Self::failed) at `now`.
    pub fn failed_at(
        &self,
        address: IpAddr,
        user: &str,
        now: Instant,
    ) -> Result<Duration, Throttled> {
        let mut map = self.lock();
        let key = key(address, user);
        if !map.contains_key(&key) && map.len() >= THROTTLE_ENTRIES {
            make_room(&mut map, now);
        }
        let times = map.entry(key).or_default();
        forget_old(times, now);
        times.push_back(now);
        // Only the count up to the refusal matters.
        while times.len() > REFUSED_FROM {
            times.pop_front();
        }
        let n = times.len();
        if n >= REFUSED_FROM {
            return Err(refusal(times, now).expect("at the refusal count"));
        }
        Ok(delay_after(n))
    }

    /// After a successful login: this address and login start afresh.
    pub fn succeeded(&self, address: IpAddr, user: &str) {
        self.lock().remove(&key(address, user));
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(IpAddr, String), VecDeque<Instant>>> {
        // The map holds no invariant a panicking holder could break.
        self.failures.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn key(address: IpAddr, user: &str) -> (IpAddr, String) {
    (address, user.chars().take(THROTTLE_USER_CHARS).collect())
}

/// The hold-back of the `n`th failure in the window.
fn delay_after(n: usize) -> Duration {
    if n <= FREE_FAILURES {
        return Duration::ZERO;
    }
    let doublings = u32::try_from(n - FREE_FAILURES).unwrap_or(u32::MAX).min(16);
    (UNIT_DELAY * 2u32.pow(doublings)).min(MAX_DELAY)
}

/// `Some` when the next attempt would be the 10th failure in the window:
/// how long until enough of the oldest leave it.
fn refusal(times: &VecDeque<Instant>, now: Instant) -> Option<Throttled> {
    let n = times.len();
    if n < REFUSED_FROM - 1 {
        return None;
    }
    // The next attempt is allowed once only 8 failures remain in the window.
    let freeing = times[n - (REFUSED_FROM - 1)];
    Some(Throttled {
        retry_after: (freeing + THROTTLE_WINDOW).saturating_duration_since(now),
    })
}

fn forget_old(times: &mut VecDeque<Instant>, now: Instant) {
    while times
        .front()
        .is_some_and(|t| now.saturating_duration_since(*t) >= THROTTLE_WINDOW)
    {
        times.pop_front();
    }
}

/// Frees a place in a full map: the entries whose failures all left the
/// window, else the one whose last failure is the oldest.
fn make_room(map: &mut HashMap<(IpAddr, String), VecDeque<Instant>>, now: Instant) {
    map.retain(|_, times| {
        forget_old(times, now);
        !times.is_empty()
    });
    if map.len() < THROTTLE_ENTRIES {
        return;
    }
    let oldest = map
        .iter()
        .min_by_key(|(_, times)| times.back().copied())
        .map(|(k, _)| k.clone());
    if let Some(k) = oldest {
        map.remove(&k);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 1));
    const B: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 2));

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn failures_are_free_three_times_then_250ms_times_2_to_the_n_minus_3_at_most_8s_then_429() {
        let t = LoginThrottle::new();
        let start = Instant::now();
        let mut delays = Vec::new();
        for i in 0..9u64 {
            let now = start + Duration::from_secs(i);
            t.check_at(A, "alice", now).expect("not yet refused");
            delays.push(t.failed_at(A, "alice", now).expect("not yet refused"));
        }
        assert_eq!(delays, [0, 0, 0, 500, 1000, 2000, 4000, 8000, 8000].map(ms),);
        // The 10th attempt is refused before any verification, until the
        // oldest failure (at `start`) leaves the 15-minute window.
        let now = start + Duration::from_secs(9);
        let refused = t.check_at(A, "alice", now).unwrap_err();
        assert_eq!(
            refused.retry_after,
            THROTTLE_WINDOW - Duration::from_secs(9)
        );
        assert_eq!(refused.retry_after_secs(), 15 * 60 - 9);
        // A failure that raced past the check is refused too.
        let raced = t.failed_at(A, "alice", now).unwrap_err();
        assert!(raced.retry_after > Duration::ZERO);
        // Once the oldest failures have left the window, attempts are
        // allowed again, still held back: the failures at 3 s … 9 s are
        // remembered, so this is the 8th in the window.
        let later = start + THROTTLE_WINDOW + Duration::from_secs(2);
        t.check_at(A, "alice", later)
            .expect("allowed after the window");
        assert_eq!(t.failed_at(A, "alice", later).unwrap(), ms(8000));
    }

    #[test]
    fn the_delay_is_capped_at_8s() {
        for n in 8..40 {
            assert_eq!(delay_after(n), MAX_DELAY, "{n}");
        }
        assert_eq!(delay_after(usize::MAX), MAX_DELAY);
    }

    #[test]
    fn a_success_resets_and_other_addresses_and_users_are_not_affected() {
        let t = LoginThrottle::new();
        let now = Instant::now();
        for _ in 0..9 {
            let _ = t.failed_at(A, "alice", now);
        }
        assert!(t.check_at(A, "alice", now).is_err());
        // Never a lockout of the account: alice from elsewhere, and bob from
        // the same address, go through.
        t.check_at(B, "alice", now).unwrap();
        t.check_at(A, "bob", now).unwrap();
        assert_eq!(t.failed_at(B, "alice", now).unwrap(), Duration::ZERO);
        t.succeeded(A, "alice");
        t.check_at(A, "alice", now).unwrap();
        assert_eq!(t.failed_at(A, "alice", now).unwrap(), Duration::ZERO);
    }

    #[test]
    fn failures_older_than_15_minutes_are_forgotten() {
        let t = LoginThrottle::new();
        let start = Instant::now();
        for _ in 0..5 {
            let _ = t.failed_at(A, "alice", start);
        }
        let later = start + THROTTLE_WINDOW;
        assert_eq!(t.failed_at(A, "alice", later).unwrap(), Duration::ZERO);
    }

    #[test]
    fn the_memory_is_bounded_and_the_oldest_go_first() {
        let t = LoginThrottle::new();
        let start = Instant::now();
        for i in 0..THROTTLE_ENTRIES + 10 {
            let now = start + Duration::from_millis(i as u64);
            let _ = t.failed_at(A, &format!("user{i}"), now);
        }
        let map = t.lock();
        assert_eq!(map.len(), THROTTLE_ENTRIES);
        assert!(!map.contains_key(&(A, "user0".to_string())));
        assert!(map.contains_key(&(A, format!("user{}", THROTTLE_ENTRIES + 9))));
        drop(map);
        // A very long login is remembered by its first characters.
        let long = "x".repeat(100_000);
        let _ = t.failed_at(B, &long, start);
        assert!(t
            .lock()
            .keys()
            .all(|(_, user)| user.chars().count() <= THROTTLE_USER_CHARS));
    }
}
