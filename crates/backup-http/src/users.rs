//! The users file (`state_dir/users.toml`): users with a role, an Argon2id
//! password hash, an optional client certificate, and API tokens (only the
//! SHA-256 of each secret); and [`UsersAuthenticator`], the
//! [`Authenticator`] that answers from it.
//!
//! ```toml
//! [[user]]
//! name = "alice"
//! role = "admin"
//! password = "$argon2id$v=19$m=19456,t=2,p=1$…"
//! client_cert_sha256 = "…"          # optional
//!
//! [[user.token]]
//! name = "cron"
//! sha256 = "…"                      # SHA-256 (hex) of the secret
//! created = "2026-11-29T14:00:00Z"
//! expires = "2027-02-27T14:00:00Z"  # optional
//! ```
use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use async_trait::async_trait;
use chrono::{DateTime, SubsecRound, Utc};
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tokio::sync::Semaphore;
use zeroize::Zeroizing;

use crate::{Authenticator, Credentials, Denial, Principal, Role};

/// File name of the users file in the state directory.
pub const USERS_FILE: &str = "users.toml";

/// Argon2 verifications running at once, at most: each takes ~19 MiB and a
/// core for a moment, and a flood of logins must not take the appliance.
const CONCURRENT_VERIFICATIONS: usize = 2;
/// How long a verified password is taken as verified without Argon2.
const VERIFIED_FOR: Duration = Duration::from_secs(60);
/// Verified passwords remembered at most.
const VERIFIED_ENTRIES: usize = 1024;
/// The longest user or token name.
const MAX_NAME: usize = 64;

/// What went wrong with the users file or a change to it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum UsersError {
    /// A name, fingerprint, password or duration that cannot be used.
    #[error("{0}")]
    Input(String),
    /// No such user or token.
    #[error("{0}")]
    NotFound(String),
    /// The user or token exists already.
    #[error("{0}")]
    AlreadyExists(String),
    /// The users file is not valid: it was left as it was.
    #[error(
        "the users file {path} is not valid: {reason} (fix it, or change it with `backup user …`)"
    )]
    Invalid {
        /// The users file.
        path: PathBuf,
        /// What is wrong, and where.
        reason: String,
    },
    /// Reading or writing a file failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done, to which file.
        what: String,
        /// The cause.
        source: io::Error,
    },
}

/// A user as anyone may see it: no password hash, no token hashes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UserEntry {
    /// The login.
    pub name: String,
    /// What the user may do.
    pub role: Role,
    /// Whether the user must present a registered client certificate.
    pub client_cert: bool,
    /// The user's API tokens.
    pub tokens: Vec<TokenEntry>,
}

/// An API token as anyone may see it: its name and times, never its secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TokenEntry {
    /// The token's name (the login is `USER!NAME`).
    pub name: String,
    /// When it was created.
    pub created: DateTime<Utc>,
    /// When it stops working, if ever.
    pub expires: Option<DateTime<Utc>>,
}

/// A token just created: the only time its secret is known.
pub struct NewToken {
    /// The Basic login of the token: `USER!NAME`.
    pub login: String,
    /// The secret (the Basic password). Shown once, stored nowhere.
    pub secret: Zeroizing<String>,
    /// When it stops working, if ever.
    pub expires: Option<DateTime<Utc>>,
}

impl NewToken {
    /// `USER!NAME:SECRET`: a `.netrc` login and password split at the first `:`.
    pub fn line(&self) -> Zeroizing<String> {
        Zeroizing::new(format!("{}:{}", self.login, self.secret.as_str()))
    }
}

impl std::fmt::Debug for NewToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewToken")
            .field("login", &self.login)
            .field("expires", &self.expires)
            .finish_non_exhaustive()
    }
}

#[derive(Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Document {
    #[serde(default, rename = "user")]
    users: Vec<StoredUser>,
}

#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StoredUser {
    name: String,
    role: Role,
    /// Argon2id PHC string.
    password: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    client_cert_sha256: Option<String>,
    #[serde(default, rename = "token", skip_serializing_if = "Vec::is_empty")]
    tokens: Vec<StoredToken>,
}

#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StoredToken {
    name: String,
    /// SHA-256 (lower-case hex) of the secret.
    sha256: String,
    created: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    expires: Option<DateTime<Utc>>,
}

// Hashes stay out of debug output, even of these private types.
impl std::fmt::Debug for StoredUser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoredUser")
            .field("name", &self.name)
            .field("role", &self.role)
            .field("client_cert", &self.client_cert_sha256.is_some())
            .field("tokens", &self.tokens.len())
            .finish_non_exhaustive()
    }
}

impl StoredUser {
    fn entry(&self) -> UserEntry {
        UserEntry {
            name: self.name.clone(),
            role: self.role,
            client_cert: self.client_cert_sha256.is_some(),
            tokens: self.tokens.iter().map(StoredToken::entry).collect(),
        }
    }
}

impl StoredToken {
    fn entry(&self) -> TokenEntry {
        TokenEntry {
            name: self.name.clone(),
            created: self.created,
            expires: self.expires,
        }
    }
}

/// The users file of a state directory. Each change loads it, changes it
/// and writes it back atomically (mode 0600), under a lock so that two
/// changes at once do not lose one. A missing file is no users.
#[derive(Debug, Clone)]
pub struct UsersFile {
    path: PathBuf,
}

impl UsersFile {
    /// `state_dir/users.toml`.
    pub fn in_state_dir(state_dir: &Path) -> UsersFile {
        UsersFile::at(state_dir.join(USERS_FILE))
    }

    /// A users file somewhere else.
    pub fn at(path: impl Into<PathBuf>) -> UsersFile {
        UsersFile { path: path.into() }
    }

    /// Where it is.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The users, in the file's order.
    pub fn list(&self) -> Result<Vec<UserEntry>, UsersError> {
        Ok(self.load()?.users.iter().map(StoredUser::entry).collect())
    }

    /// One user.
    pub fn get(&self, name: &str) -> Result<UserEntry, UsersError> {
        let doc = self.load()?;
        Ok(find(&doc, name, &self.path)?.entry())
    }

    /// Adds a user; refuses a name that exists. `client_cert_sha256` is
    /// the SHA-256 of the DER certificate the user must present, as
    /// `sha256:…`, 64 hex digits, or `openssl x509 -fingerprint -sha256`'s
    /// `AB:CD:…`.
    pub fn add_user(
        &self,
        name: &str,
        role: Role,
        password: &str,
        client_cert_sha256: Option<&str>,
    ) -> Result<UserEntry, UsersError> {
        check_name("user", name)?;
        let client_cert_sha256 = client_cert_sha256.map(normalise_fingerprint).transpose()?;
        let password = hash_password(password)?;
        self.change(|doc| {
            if doc.users.iter().any(|u| u.name == name) {
                return Err(UsersError::AlreadyExists(format!(
                    "the user {name} exists already: change its password with `backup user passwd {name}`"
                )));
            }
            let user = StoredUser {
                name: name.to_owned(),
                role,
                password,
                client_cert_sha256,
                tokens: Vec::new(),
            };
            let entry = user.entry();
            doc.users.push(user);
            Ok(entry)
        })
    }

    /// Sets a user's password.
    pub fn set_password(&self, name: &str, password: &str) -> Result<(), UsersError> {
        let hash = hash_password(password)?;
        let path = self.path.clone();
        self.change(|doc| {
            find_mut(doc, name, &path)?.password = hash;
            Ok(())
        })
    }

    /// Registers (or, with `None`, removes) the client certificate a user
    /// must present.
    pub fn set_client_cert(
        &self,
        name: &str,
        client_cert_sha256: Option<&str>,
    ) -> Result<(), UsersError> {
        let fingerprint = client_cert_sha256.map(normalise_fingerprint).transpose()?;
        let path = self.path.clone();
        self.change(|doc| {
            find_mut(doc, name, &path)?.client_cert_sha256 = fingerprint;
            Ok(())
        })
    }

    /// Deletes a user and its tokens; returns what was deleted.
    pub fn delete_user(&self, name: &str) -> Result<UserEntry, UsersError> {
        let path = self.path.clone();
        self.change(|doc| {
            find(doc, name, &path)?;
            let at = doc
                .users
                .iter()
                .position(|u| u.name == name)
                .expect("found");
            Ok(doc.users.remove(at).entry())
        })
    }

    /// Creates an API token for `user`: 32 random bytes, returned once (as
    /// 64 hex digits); the file keeps their SHA-256. Refuses a token name
    /// the user has already.
    pub fn create_token(
        &self,
        user: &str,
        name: &str,
        expires: Option<DateTime<Utc>>,
    ) -> Result<NewToken, UsersError> {
        check_name("token", name)?;
        let now = Utc::now().trunc_subsecs(0);
        if expires.is_some_and(|e| e <= now) {
            return Err(UsersError::Input(
                "the token would expire before it is created: give a positive duration".into(),
            ));
        }
        let mut bytes = Zeroizing::new([0u8; 32]);
        random(bytes.as_mut())?;
        let secret = Zeroizing::new(hex::encode(bytes.as_ref()));
        let path = self.path.clone();
        self.change(|doc| {
            let u = find_mut(doc, user, &path)?;
            if u.tokens.iter().any(|t| t.name == name) {
                return Err(UsersError::AlreadyExists(format!(
                    "the user {user} has a token named {name} already: delete it with \
                     `backup token del {user} {name}` or pick another name"
                )));
            }
            u.tokens.push(StoredToken {
                name: name.to_owned(),
                sha256: sha256_hex(secret.as_bytes()),
                created: now,
                expires,
            });
            Ok(())
        })?;
        Ok(NewToken {
            login: format!("{user}!{name}"),
            secret,
            expires,
        })
    }

    /// Deletes (revokes) a token.
    pub fn delete_token(&self, user: &str, name: &str) -> Result<TokenEntry, UsersError> {
        let path = self.path.clone();
        self.change(|doc| {
            let u = find_mut(doc, user, &path)?;
            let at = u
                .tokens
                .iter()
                .position(|t| t.name == name)
                .ok_or_else(|| {
                    UsersError::NotFound(format!(
                    "the user {user} has no token named {name} (see `backup token list {user}`)"
                ))
                })?;
            Ok(u.tokens.remove(at).entry())
        })
    }

    /// The tokens of one user, or of every user, as (user, token).
    pub fn tokens(&self, user: Option<&str>) -> Result<Vec<(String, TokenEntry)>, UsersError> {
        let doc = self.load()?;
        if let Some(user) = user {
            find(&doc, user, &self.path)?;
        }
        Ok(doc
            .users
            .iter()
            .filter(|u| user.is_none_or(|name| u.name == name))
            .flat_map(|u| u.tokens.iter().map(|t| (u.name.clone(), t.entry())))
            .collect())
    }

    fn load(&self) -> Result<Document, UsersError> {
        let text = match fs::read_to_string(&self.path) {
            Ok(text) => text,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Document::default()),
            Err(e) => {
                return Err(UsersError::Io {
                    what: format!("reading the users file {}", self.path.display()),
                    source: e,
                })
            }
        };
        parse(&text, &self.path)
    }

    /// Loads, changes and saves the file under its lock.
    fn change<T>(
        &self,
        edit: impl FnOnce(&mut Document) -> Result<T, UsersError>,
    ) -> Result<T, UsersError> {
        let dir = self.path.parent().unwrap_or(Path::new("."));
        create_private_dir(dir)?;
        let lock_path = dir.join(format!(
            ".{}.lock",
            self.path.file_name().unwrap_or_default().to_string_lossy()
        ));
        let io_error = |what: String| move |source| UsersError::Io { what, source };
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&lock_path)
            .map_err(io_error(format!("opening {}", lock_path.display())))?;
        lock.lock()
            .map_err(io_error(format!("locking {}", lock_path.display())))?;
        let mut doc = self.load()?;
        let result = edit(&mut doc)?;
        let text = toml::to_string(&doc).expect("the users document serialises");
        write_atomic(&self.path, text.as_bytes())?;
        Ok(result)
    }
}

fn find<'a>(doc: &'a Document, name: &str, path: &Path) -> Result<&'a StoredUser, UsersError> {
    doc.users
        .iter()
        .find(|u| u.name == name)
        .ok_or_else(|| no_such_user(name, path))
}

fn find_mut<'a>(
    doc: &'a mut Document,
    name: &str,
    path: &Path,
) -> Result<&'a mut StoredUser, UsersError> {
    doc.users
        .iter_mut()
        .find(|u| u.name == name)
        .ok_or_else(|| no_such_user(name, path))
}

fn no_such_user(name: &str, path: &Path) -> UsersError {
    UsersError::NotFound(format!(
        "no user named {name:?} in {} (see `backup user list`)",
        path.display()
    ))
}

/// Parses and checks a users file: names, uniqueness, hashes, fingerprints.
fn parse(text: &str, path: &Path) -> Result<Document, UsersError> {
    let invalid = |reason: String| UsersError::Invalid {
        path: path.to_owned(),
        reason,
    };
    // The parser's own message quotes the offending line, which may hold a
    // hash: say where instead.
    let mut doc: Document = toml::from_str(text).map_err(|e| {
        let line = e
            .span()
            .and_then(|span| text.get(..span.start))
            .map(|before| before.matches('\n').count() + 1);
        invalid(match line {
            Some(line) => format!("line {line}: {}", e.message().trim_end()),
            None => e.message().trim_end().to_owned(),
        })
    })?;
    let mut seen = std::collections::HashSet::new();
    for u in &mut doc.users {
        check_name("user", &u.name).map_err(|e| invalid(e.to_string()))?;
        if !seen.insert(u.name.clone()) {
            return Err(invalid(format!("the user {} is there twice", u.name)));
        }
        let hash = PasswordHash::new(&u.password).map_err(|_| {
            invalid(format!(
                "the password of {} is not a PHC string (set it with `backup user passwd {}`)",
                u.name, u.name
            ))
        })?;
        if hash.algorithm != argon2::ARGON2ID_IDENT {
            return Err(invalid(format!(
                "the password of {} is not an Argon2id hash (set it with `backup user passwd {}`)",
                u.name, u.name
            )));
        }
        if let Some(f) = &u.client_cert_sha256 {
            u.client_cert_sha256 = Some(
                normalise_fingerprint(f)
                    .map_err(|e| invalid(format!("client_cert_sha256 of {}: {e}", u.name)))?,
            );
        }
        let mut tokens = std::collections::HashSet::new();
        for t in &u.tokens {
            check_name("token", &t.name).map_err(|e| invalid(e.to_string()))?;
            if !tokens.insert(t.name.as_str()) {
                return Err(invalid(format!(
                    "{} has the token {} twice",
                    u.name, t.name
                )));
            }
            if t.sha256.len() != 64 || !t.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(invalid(format!(
                    "the sha256 of {}'s token {} is not 64 hex digits",
                    u.name, t.name
                )));
            }
        }
    }
    for u in &mut doc.users {
        for t in &mut u.tokens {
            t.sha256.make_ascii_lowercase();
        }
    }
    Ok(doc)
}

/// A user or token name: 1 to 64 of `A-Z a-z 0-9 . _ -` (so never `!`,
/// which separates a token's name from its user's, nor `:`, which ends a
/// Basic login).
fn check_name(what: &str, name: &str) -> Result<(), UsersError> {
    let ok = (1..=MAX_NAME).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(UsersError::Input(format!(
            "{name:?} cannot be a {what} name: use 1 to {MAX_NAME} letters, digits, '.', '_' or '-'"
        )))
    }
}

/// A certificate fingerprint as stored: 64 lower-case hex digits. Accepts
/// that, with a `sha256:` prefix or in upper case, and the colon-separated
/// form `openssl x509 -fingerprint -sha256` prints (with or without its
/// `sha256 Fingerprint=` label).
pub(crate) fn normalise_fingerprint(text: &str) -> Result<String, UsersError> {
    let t = text.trim();
    let t = t
        .strip_prefix("sha256 Fingerprint=")
        .or_else(|| t.strip_prefix("SHA256 Fingerprint="))
        .or_else(|| t.strip_prefix("sha256:"))
        .unwrap_or(t);
    let hex: String = if t.contains(':') {
        let pairs: Vec<&str> = t.split(':').collect();
        if pairs.len() != 32 || pairs.iter().any(|p| p.len() != 2) {
            return Err(bad_fingerprint(text));
        }
        pairs.concat()
    } else {
        t.to_owned()
    };
    if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(bad_fingerprint(text));
    }
    Ok(hex.to_ascii_lowercase())
}

fn bad_fingerprint(text: &str) -> UsersError {
    UsersError::Input(format!(
        "{text:?} is not a SHA-256 certificate fingerprint: give `sha256:` and 64 hex digits \
         (`openssl x509 -in CERT -outform DER | sha256sum`) or the AB:CD:… form \
         `openssl x509 -in CERT -noout -fingerprint -sha256` prints"
    ))
}

fn random(buf: &mut [u8]) -> Result<(), UsersError> {
    getrandom::getrandom(buf).map_err(|e| UsersError::Io {
        what: "drawing random bytes from the operating system".into(),
        source: io::Error::other(e.to_string()),
    })
}

fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// An Argon2id PHC string of `password` (the argon2 crate's default
/// parameters, a random salt).
fn hash_password(password: &str) -> Result<String, UsersError> {
    if password.is_empty() {
        return Err(UsersError::Input("an empty password cannot be used".into()));
    }
    let mut salt = [0u8; 16];
    random(&mut salt)?;
    let salt = SaltString::encode_b64(&salt).expect("16 bytes make a salt");
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| UsersError::Input(format!("cannot hash the password: {e}")))
}

fn verify_password(phc: &str, password: &[u8]) -> bool {
    PasswordHash::new(phc)
        .is_ok_and(|hash| Argon2::default().verify_password(password, &hash).is_ok())
}

/// What unknown users are verified against, so that they cost what known
/// ones do.
fn dummy_hash() -> &'static str {
    static DUMMY: OnceLock<String> = OnceLock::new();
    DUMMY.get_or_init(|| {
        let salt = SaltString::encode_b64(b"no such user....").expect("a salt");
        Argon2::default()
            .hash_password(b"no such user", &salt)
            .expect("hashing with default parameters")
            .to_string()
    })
}

fn create_private_dir(dir: &Path) -> Result<(), UsersError> {
    if dir.as_os_str().is_empty() || dir.is_dir() {
        return Ok(());
    }
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| UsersError::Io {
            what: format!("creating {}", dir.display()),
            source: e,
        })
}

/// Writes `data` to `path` with mode 0600: a temporary file beside it,
/// fsynced, renamed over it, the directory fsynced. A crash leaves the old
/// file or the new one, never a mix.
fn write_atomic(path: &Path, data: &[u8]) -> Result<(), UsersError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut nonce = [0u8; 8];
    let _ = getrandom::getrandom(&mut nonce);
    let tmp = dir.join(format!(
        ".{}.{}-{}.tmp",
        path.file_name().unwrap_or_default().to_string_lossy(),
        std::process::id(),
        hex::encode(nonce)
    ));
    let written = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        // Whatever the umask made of it.
        f.set_permissions(fs::Permissions::from_mode(0o600))?;
        f.write_all(data)?;
        f.sync_all()?;
        fs::rename(&tmp, path)?;
        File::open(dir)?.sync_all()
    })();
    written.map_err(|e| {
        let _ = fs::remove_file(&tmp);
        UsersError::Io {
            what: format!("writing the users file {}", path.display()),
            source: e,
        }
    })
}

/// What a cheap `stat` tells of the users file: a change of any means it
/// was rewritten.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    modified: Option<SystemTime>,
    size: u64,
    inode: u64,
    device: u64,
}

fn stamp(path: &Path) -> Result<Option<Stamp>, UsersError> {
    match fs::metadata(path) {
        Ok(m) => Ok(Some(Stamp {
            modified: m.modified().ok(),
            size: m.len(),
            inode: m.ino(),
            device: m.dev(),
        })),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(UsersError::Io {
            what: format!("reading the users file {}", path.display()),
            source: e,
        }),
    }
}

struct Loaded {
    users: Arc<HashMap<String, StoredUser>>,
    /// The file as last read (even when it did not parse: it is not read
    /// again, nor warned about again, until it changes).
    seen: Option<Stamp>,
    /// Bumped at each reload: a verification that started before one is
    /// not remembered after it.
    generation: u64,
}

/// How many Argon2 verifications run now, and the most that ever ran at once.
#[derive(Debug, Default)]
struct Gauge {
    running: AtomicUsize,
    peak: AtomicUsize,
    done: AtomicUsize,
}

/// The [`Authenticator`] of the users file.
///
/// - `USER` + password: Argon2id verification on a blocking thread, at most
///   two at once; a verified password is remembered for 60 s (by an HMAC of
///   user and password under a key of this process, never the password),
///   and forgotten when the file is reloaded. An unknown user costs one
///   verification too, so that timing does not tell which users exist.
/// - `USER!NAME` + secret: the token `NAME` of `USER` (its SHA-256 compared
///   in constant time); an expired, deleted or unknown token is refused. It
///   has its user's role.
/// - A user with a client certificate registered must have presented it on
///   the connection, or is refused with [`Denial::ClientCertificateRequired`]
///   (after the password or token was found right).
///
/// The file is reloaded when it changes (a `stat` per request) and by
/// [`reload`](Self::reload) (SIGHUP). A file that does not parse keeps the
/// users loaded before.
pub struct UsersAuthenticator {
    file: UsersFile,
    state: Mutex<Loaded>,
    verifications: Arc<Semaphore>,
    gauge: Arc<Gauge>,
    cache_key: [u8; 32],
    verified: Mutex<HashMap<[u8; 32], Instant>>,
}

impl std::fmt::Debug for UsersAuthenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UsersAuthenticator")
            .field("file", &self.file.path)
            .finish_non_exhaustive()
    }
}

impl UsersAuthenticator {
    /// Loads the users file; fails if it cannot be read or parsed (a missing
    /// file is no users).
    pub fn new(file: UsersFile) -> Result<UsersAuthenticator, UsersError> {
        let seen = stamp(&file.path)?;
        warn_if_exposed(&file.path);
        let doc = file.load()?;
        let mut cache_key = [0u8; 32];
        random(&mut cache_key)?;
        Ok(UsersAuthenticator {
            file,
            state: Mutex::new(Loaded {
                users: Arc::new(by_name(doc)),
                seen,
                generation: 0,
            }),
            verifications: Arc::new(Semaphore::new(CONCURRENT_VERIFICATIONS)),
            gauge: Arc::default(),
            cache_key,
            verified: Mutex::new(HashMap::new()),
        })
    }

    /// The users file of a state directory.
    pub fn in_state_dir(state_dir: &Path) -> Result<UsersAuthenticator, UsersError> {
        UsersAuthenticator::new(UsersFile::in_state_dir(state_dir))
    }

    /// The users file.
    pub fn file(&self) -> &UsersFile {
        &self.file
    }

    /// The users loaded now.
    pub fn users(&self) -> Vec<UserEntry> {
        self.refresh();
        let mut v: Vec<UserEntry> = self.current().values().map(StoredUser::entry).collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }

    /// Reads the users file again (for SIGHUP). When it does not parse, the
    /// users loaded before stay and the error says why.
    pub fn reload(&self) -> Result<(), UsersError> {
        let seen = stamp(&self.file.path)?;
        self.load_as(seen)
    }

    fn load_as(&self, seen: Option<Stamp>) -> Result<(), UsersError> {
        warn_if_exposed(&self.file.path);
        let loaded = self.file.load();
        let mut state = self.lock_state();
        state.seen = seen;
        let doc = loaded?;
        state.users = Arc::new(by_name(doc));
        state.generation += 1;
        drop(state);
        self.lock_verified().clear();
        Ok(())
    }

    /// Reloads the file if it changed since it was last read.
    fn refresh(&self) {
        let now = match stamp(&self.file.path) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!("{e}; the users loaded before stay");
                return;
            }
        };
        if self.lock_state().seen == now {
            return;
        }
        match self.load_as(now) {
            Ok(()) => tracing::info!("reloaded the users file {}", self.file.path.display()),
            Err(e) => tracing::warn!("{e}; the users loaded before stay"),
        }
    }

    fn current(&self) -> Arc<HashMap<String, StoredUser>> {
        self.lock_state().users.clone()
    }

    fn lock_state(&self) -> std::sync::MutexGuard<'_, Loaded> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn lock_verified(&self) -> std::sync::MutexGuard<'_, HashMap<[u8; 32], Instant>> {
        self.verified.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The key under which a verified (user, password) is remembered.
    fn verified_key(&self, user: &str, password: &str) -> [u8; 32] {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.cache_key).expect("any key length");
        mac.update(&(user.len() as u64).to_be_bytes());
        mac.update(user.as_bytes());
        mac.update(password.as_bytes());
        mac.finalize().into_bytes().into()
    }

    /// Whether `password` is the one of `phc`: on a blocking thread, once a
    /// place among the concurrent verifications is free.
    async fn verify(&self, phc: String, password: &Zeroizing<String>) -> bool {
        let Ok(permit) = self.verifications.clone().acquire_owned().await else {
            return false;
        };
        let password = password.clone();
        let gauge = self.gauge.clone();
        // The permit goes with the work: a request that gives up waiting
        // does not free a place while its verification still runs.
        let work = tokio::task::spawn_blocking(move || {
            let running = gauge.running.fetch_add(1, Ordering::SeqCst) + 1;
            gauge.peak.fetch_max(running, Ordering::SeqCst);
            let ok = verify_password(&phc, password.as_bytes());
            gauge.running.fetch_sub(1, Ordering::SeqCst);
            gauge.done.fetch_add(1, Ordering::SeqCst);
            drop(permit);
            ok
        });
        work.await.unwrap_or(false)
    }

    async fn password_login(&self, credentials: &Credentials) -> Result<StoredUser, Denial> {
        let (users, generation) = {
            let state = self.lock_state();
            (state.users.clone(), state.generation)
        };
        let user = users.get(&credentials.user);
        let key = self.verified_key(&credentials.user, &credentials.password);
        let now = Instant::now();
        let remembered = user.is_some()
            && self
                .lock_verified()
                .get(&key)
                .is_some_and(|at| now.saturating_duration_since(*at) < VERIFIED_FOR);
        if remembered {
            return Ok(user.expect("checked").clone());
        }
        let phc = user.map_or_else(|| dummy_hash().to_owned(), |u| u.password.clone());
        let right = self.verify(phc, &credentials.password).await;
        let Some(user) = user.filter(|_| right) else {
            return Err(Denial::BadCredentials);
        };
        if self.lock_state().generation == generation {
            let mut verified = self.lock_verified();
            if verified.len() >= VERIFIED_ENTRIES {
                verified.retain(|_, at| now.saturating_duration_since(*at) < VERIFIED_FOR);
                if verified.len() >= VERIFIED_ENTRIES {
                    verified.clear();
                }
            }
            verified.insert(key, now);
        }
        Ok(user.clone())
    }

    fn token_login(&self, user: &str, token: &str, secret: &str) -> Result<StoredUser, Denial> {
        let users = self.current();
        let user = users.get(user).ok_or(Denial::BadCredentials)?;
        let stored = user
            .tokens
            .iter()
            .find(|t| t.name == token)
            .ok_or(Denial::BadCredentials)?;
        if stored.expires.is_some_and(|e| e <= Utc::now()) {
            return Err(Denial::BadCredentials);
        }
        let presented = sha256_hex(secret.as_bytes());
        if bool::from(presented.as_bytes().ct_eq(stored.sha256.as_bytes())) {
            Ok(user.clone())
        } else {
            Err(Denial::BadCredentials)
        }
    }
}

/// The hashes in the users file are for root's eyes only: say so when
/// others may read it (the commands always write it 0600).
fn warn_if_exposed(path: &Path) {
    if let Ok(m) = fs::metadata(path) {
        if m.permissions().mode() & 0o077 != 0 {
            tracing::warn!(
                "the users file {} may be read by others (mode {:o}): `chmod 600` it",
                path.display(),
                m.permissions().mode() & 0o777
            );
        }
    }
}

fn by_name(doc: Document) -> HashMap<String, StoredUser> {
    doc.users.into_iter().map(|u| (u.name.clone(), u)).collect()
}

#[async_trait]
impl Authenticator for UsersAuthenticator {
    async fn authenticate(&self, credentials: &Credentials) -> Result<Principal, Denial> {
        self.refresh();
        let (user, token) = match credentials.user.split_once('!') {
            Some((user, token)) => (
                self.token_login(user, token, &credentials.password)?,
                Some(token.to_owned()),
            ),
            None => (self.password_login(credentials).await?, None),
        };
        if let Some(wanted) = &user.client_cert_sha256 {
            let presented = credentials
                .client_cert_sha256
                .as_deref()
                .and_then(|p| normalise_fingerprint(p).ok());
            let matches =
                presented.is_some_and(|p| bool::from(p.as_bytes().ct_eq(wanted.as_bytes())));
            if !matches {
                return Err(Denial::ClientCertificateRequired);
            }
        }
        Ok(Principal {
            user: user.name,
            role: user.role,
            token,
        })
    }

    fn wants_client_certificates(&self) -> bool {
        self.refresh();
        self.current()
            .values()
            .any(|u| u.client_cert_sha256.is_some())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{IpAddr, Ipv4Addr};

    const FP: &str = "3f1c0e8a4b2d6f7081920a1b2c3d4e5f60718293a4b5c6d7e8f9011223344556";

    struct Setup {
        _dir: tempfile::TempDir,
        file: UsersFile,
    }

    fn setup() -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let file = UsersFile::in_state_dir(&dir.path().join("state"));
        Setup { _dir: dir, file }
    }

    fn creds(user: &str, password: &str) -> Credentials {
        Credentials {
            user: user.into(),
            password: Zeroizing::new(password.into()),
            address: IpAddr::V4(Ipv4Addr::LOCALHOST),
            client_cert_sha256: None,
        }
    }

    fn verifications(auth: &UsersAuthenticator) -> usize {
        auth.gauge.done.load(Ordering::SeqCst)
    }

    #[tokio::test]
    async fn a_password_is_verified_against_its_argon2id_hash() {
        let s = setup();
        s.file
            .add_user("alice", Role::Admin, "alice pw 1", None)
            .unwrap();
        s.file
            .add_user("aud", Role::Auditor, "aud pw 2", None)
            .unwrap();
        let text = fs::read_to_string(s.file.path()).unwrap();
        assert!(text.contains("$argon2id$"), "{text}");
        assert!(
            !text.contains("alice pw 1") && !text.contains("aud pw 2"),
            "{text}"
        );
        let auth = UsersAuthenticator::new(s.file.clone()).unwrap();
        assert_eq!(
            auth.authenticate(&creds("alice", "alice pw 1")).await,
            Ok(Principal {
                user: "alice".into(),
                role: Role::Admin,
                token: None
            })
        );
        assert_eq!(
            auth.authenticate(&creds("aud", "aud pw 2"))
                .await
                .unwrap()
                .role,
            Role::Auditor
        );
        for (user, password) in [
            ("alice", "alice pw 2"),
            ("alice", ""),
            ("aud", "alice pw 1"),
            ("Alice", "alice pw 1"),
        ] {
            assert_eq!(
                auth.authenticate(&creds(user, password)).await,
                Err(Denial::BadCredentials),
                "{user} {password}"
            );
        }
    }

    #[tokio::test]
    async fn an_unknown_user_is_refused_after_a_verification_like_a_known_one() {
        let s = setup();
        s.file
            .add_user("alice", Role::Admin, "alice pw", None)
            .unwrap();
        let auth = UsersAuthenticator::new(s.file.clone()).unwrap();
        let before = verifications(&auth);
        assert_eq!(
            auth.authenticate(&creds("mallory", "alice pw")).await,
            Err(Denial::BadCredentials)
        );
        assert_eq!(verifications(&auth), before + 1);
        assert_eq!(
            auth.authenticate(&creds("alice", "wrong")).await,
            Err(Denial::BadCredentials)
        );
        assert_eq!(verifications(&auth), before + 2);
    }

    #[tokio::test]
    async fn a_verified_password_is_remembered_until_the_file_changes() {
        let s = setup();
        s.file
            .add_user("alice", Role::Admin, "old pw", None)
            .unwrap();
        let auth = UsersAuthenticator::new(s.file.clone()).unwrap();
        auth.authenticate(&creds("alice", "old pw")).await.unwrap();
        let n = verifications(&auth);
        auth.authenticate(&creds("alice", "old pw")).await.unwrap();
        assert_eq!(verifications(&auth), n, "the second login is remembered");
        // A wrong password is never taken from memory.
        assert!(auth.authenticate(&creds("alice", "old pwx")).await.is_err());
        assert_eq!(verifications(&auth), n + 1);
        // A new password: the old one is forgotten at once.
        s.file.set_password("alice", "new pw").unwrap();
        assert_eq!(
            auth.authenticate(&creds("alice", "old pw")).await,
            Err(Denial::BadCredentials)
        );
        auth.authenticate(&creds("alice", "new pw")).await.unwrap();
        // What is remembered is not the password.
        let remembered = format!("{:?}", auth.lock_verified().keys().collect::<Vec<_>>());
        assert!(!remembered.contains("new pw"));
    }

    #[tokio::test]
    async fn tokens_work_with_their_users_role_until_expired_or_deleted() {
        let s = setup();
        s.file
            .add_user("alice", Role::Admin, "alice pw", None)
            .unwrap();
        s.file
            .add_user("aud", Role::Auditor, "aud pw", None)
            .unwrap();
        let cron = s.file.create_token("alice", "cron", None).unwrap();
        let mon = s.file.create_token("aud", "monitor", None).unwrap();
        assert_eq!(cron.login, "alice!cron");
        assert_eq!(cron.secret.len(), 64);
        assert_eq!(
            cron.line().as_str(),
            format!("alice!cron:{}", cron.secret.as_str())
        );
        let text = fs::read_to_string(s.file.path()).unwrap();
        assert!(!text.contains(cron.secret.as_str()), "{text}");
        assert!(text.contains(&sha256_hex(cron.secret.as_bytes())), "{text}");
        let auth = UsersAuthenticator::new(s.file.clone()).unwrap();
        let before = verifications(&auth);
        assert_eq!(
            auth.authenticate(&creds("alice!cron", &cron.secret)).await,
            Ok(Principal {
                user: "alice".into(),
                role: Role::Admin,
                token: Some("cron".into())
            })
        );
        assert_eq!(verifications(&auth), before, "no Argon2 for a token");
        let p = auth
            .authenticate(&creds("aud!monitor", &mon.secret))
            .await
            .unwrap();
        assert_eq!((p.user.as_str(), p.role), ("aud", Role::Auditor));
        for (login, secret) in [
            ("alice!cron", mon.secret.as_str()),
            ("aud!monitor", cron.secret.as_str()),
            ("alice!monitor", mon.secret.as_str()),
            ("alice!", cron.secret.as_str()),
            ("bob!cron", cron.secret.as_str()),
            ("alice!cron", ""),
            // A token's secret is not its user's password, nor the reverse.
            ("alice", cron.secret.as_str()),
            ("alice!cron", "alice pw"),
        ] {
            assert_eq!(
                auth.authenticate(&creds(login, secret)).await,
                Err(Denial::BadCredentials),
                "{login}"
            );
        }
        // Expired.
        s.file
            .change(|doc| {
                doc.users[0].tokens[0].expires = Some(Utc::now() - chrono::Duration::seconds(1));
                Ok(())
            })
            .unwrap();
        assert_eq!(
            auth.authenticate(&creds("alice!cron", &cron.secret)).await,
            Err(Denial::BadCredentials)
        );
        // Deleted.
        let deleted = s.file.delete_token("aud", "monitor").unwrap();
        assert_eq!(deleted.name, "monitor");
        assert_eq!(
            auth.authenticate(&creds("aud!monitor", &mon.secret)).await,
            Err(Denial::BadCredentials)
        );
        assert!(matches!(
            s.file.delete_token("aud", "monitor"),
            Err(UsersError::NotFound(_))
        ));
    }

    #[tokio::test]
    async fn a_user_with_a_client_certificate_must_present_it() {
        let s = setup();
        let colons = FP
            .as_bytes()
            .chunks(2)
            .map(|p| std::str::from_utf8(p).unwrap().to_ascii_uppercase())
            .collect::<Vec<_>>()
            .join(":");
        s.file
            .add_user("alice", Role::Admin, "alice pw", Some(&colons))
            .unwrap();
        s.file.add_user("bob", Role::Admin, "bob pw", None).unwrap();
        let token = s.file.create_token("alice", "cron", None).unwrap();
        assert!(fs::read_to_string(s.file.path()).unwrap().contains(FP));
        let auth = UsersAuthenticator::new(s.file.clone()).unwrap();
        assert!(auth.wants_client_certificates());
        assert_eq!(
            auth.authenticate(&creds("alice", "alice pw")).await,
            Err(Denial::ClientCertificateRequired)
        );
        assert_eq!(
            auth.authenticate(&creds("alice!cron", &token.secret)).await,
            Err(Denial::ClientCertificateRequired)
        );
        // A wrong password says nothing about the certificate.
        assert_eq!(
            auth.authenticate(&creds("alice", "wrong")).await,
            Err(Denial::BadCredentials)
        );
        let mut other = creds("alice", "alice pw");
        other.client_cert_sha256 = Some("0".repeat(64));
        assert_eq!(
            auth.authenticate(&other).await,
            Err(Denial::ClientCertificateRequired)
        );
        let mut right = creds("alice", "alice pw");
        right.client_cert_sha256 = Some(FP.into());
        assert_eq!(auth.authenticate(&right).await.unwrap().user, "alice");
        let mut right = creds("alice!cron", &token.secret);
        right.client_cert_sha256 = Some(FP.into());
        assert!(auth.authenticate(&right).await.is_ok());
        // Users without one need none.
        assert!(auth.authenticate(&creds("bob", "bob pw")).await.is_ok());
        s.file.set_client_cert("alice", None).unwrap();
        assert!(!auth.wants_client_certificates());
        assert!(auth.authenticate(&creds("alice", "alice pw")).await.is_ok());
    }

    #[tokio::test]
    async fn a_changed_file_is_reloaded_and_a_broken_one_keeps_the_users_before() {
        let s = setup();
        let auth = UsersAuthenticator::new(s.file.clone()).unwrap();
        assert!(auth.users().is_empty(), "a missing file is no users");
        s.file
            .add_user("alice", Role::Admin, "alice pw", None)
            .unwrap();
        assert!(auth.authenticate(&creds("alice", "alice pw")).await.is_ok());
        let good = fs::read_to_string(s.file.path()).unwrap();

        fs::write(
            s.file.path(),
            "[[user]]\nname = \"alice\"\nthis is not TOML",
        )
        .unwrap();
        let e = auth.reload().unwrap_err();
        assert!(matches!(e, UsersError::Invalid { .. }), "{e}");
        assert!(e.to_string().contains("users.toml"), "{e}");
        assert!(e.to_string().contains("line 3"), "{e}");
        // The error says where, but never quotes a hash.
        let hash_line = good.lines().find(|l| l.starts_with("password")).unwrap();
        fs::write(
            s.file.path(),
            good.replace(hash_line, &format!("{hash_line} trailing")),
        )
        .unwrap();
        let e = auth.reload().unwrap_err().to_string();
        assert!(e.contains("line 4") && !e.contains("argon2"), "{e}");
        assert!(auth.authenticate(&creds("alice", "alice pw")).await.is_ok());
        // Nor does an empty or partly valid file open the service to anyone.
        for broken in [
            "[[user]]\nname = \"eve\"\nrole = \"admin\"\npassword = \"plain text\"\n".to_string(),
            good.replace("role = \"admin\"", "role = \"root\""),
            format!("{good}\n{good}"),
        ] {
            fs::write(s.file.path(), &broken).unwrap();
            assert!(auth.reload().is_err(), "{broken}");
            assert!(auth.authenticate(&creds("alice", "alice pw")).await.is_ok());
            assert_eq!(auth.users().len(), 1);
        }
        // Deleting a user is seen at the next request.
        fs::write(s.file.path(), &good).unwrap();
        s.file.delete_user("alice").unwrap();
        assert_eq!(
            auth.authenticate(&creds("alice", "alice pw")).await,
            Err(Denial::BadCredentials)
        );
        // A broken file at the start is an error, not an empty user list.
        fs::write(s.file.path(), "not = [toml").unwrap();
        assert!(UsersAuthenticator::new(s.file.clone()).is_err());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn at_most_two_verifications_run_at_once() {
        let s = setup();
        s.file
            .add_user("alice", Role::Admin, "alice pw", None)
            .unwrap();
        let auth = Arc::new(UsersAuthenticator::new(s.file.clone()).unwrap());
        let tasks: Vec<_> = (0..8)
            .map(|i| {
                let auth = auth.clone();
                tokio::spawn(async move {
                    let user = if i % 2 == 0 { "alice" } else { "nobody" };
                    auth.authenticate(&creds(user, &format!("wrong {i}"))).await
                })
            })
            .collect();
        for t in tasks {
            assert_eq!(t.await.unwrap(), Err(Denial::BadCredentials));
        }
        assert_eq!(verifications(&auth), 8);
        // Eight at once were asked for; never more than two ran.
        let peak = auth.gauge.peak.load(Ordering::SeqCst);
        assert!((1..=CONCURRENT_VERIFICATIONS).contains(&peak), "{peak}");
        assert_eq!(
            auth.verifications.available_permits(),
            CONCURRENT_VERIFICATIONS
        );
    }

    #[test]
    fn the_file_is_private_and_changes_are_checked() {
        let s = setup();
        assert!(s.file.list().unwrap().is_empty());
        s.file.add_user("alice", Role::Admin, "pw", None).unwrap();
        let mode = fs::metadata(s.file.path()).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert!(matches!(
            s.file.add_user("alice", Role::Auditor, "pw", None),
            Err(UsersError::AlreadyExists(_))
        ));
        let long = "a".repeat(65);
        for bad in ["", "al!ce", "al:ce", "al ce", "ålice", "a/b", long.as_str()] {
            assert!(
                matches!(
                    s.file.add_user(bad, Role::Admin, "pw", None),
                    Err(UsersError::Input(_))
                ),
                "{bad:?}"
            );
            assert!(s.file.create_token("alice", bad, None).is_err(), "{bad:?}");
        }
        s.file
            .add_user(&"a".repeat(64), Role::Auditor, "pw", None)
            .unwrap();
        s.file
            .add_user("A.b_c-9", Role::Auditor, "pw", None)
            .unwrap();
        assert!(matches!(
            s.file.add_user("bob", Role::Admin, "", None),
            Err(UsersError::Input(_))
        ));
        assert!(s
            .file
            .add_user("bob", Role::Admin, "pw", Some("abc"))
            .is_err());
        assert!(matches!(
            s.file.set_password("nobody", "pw"),
            Err(UsersError::NotFound(_))
        ));
        s.file.create_token("alice", "cron", None).unwrap();
        assert!(matches!(
            s.file.create_token("alice", "cron", None),
            Err(UsersError::AlreadyExists(_))
        ));
        assert!(s
            .file
            .create_token(
                "alice",
                "old",
                Some(Utc::now() - chrono::Duration::hours(1))
            )
            .is_err());
        let expires = Utc::now() + chrono::Duration::days(90);
        s.file
            .create_token("alice", "later", Some(expires))
            .unwrap();
        let tokens = s.file.tokens(Some("alice")).unwrap();
        assert_eq!(
            tokens
                .iter()
                .map(|(_, t)| t.name.as_str())
                .collect::<Vec<_>>(),
            ["cron", "later"]
        );
        assert_eq!(tokens[1].1.expires, Some(expires));
        assert!(s.file.tokens(Some("nobody")).is_err());
        let gone = s.file.delete_user("alice").unwrap();
        assert_eq!(gone.tokens.len(), 2);
        assert!(s.file.tokens(None).unwrap().is_empty());
        assert!(!fs::read_to_string(s.file.path()).unwrap().contains("cron"));
        // No temporary files are left behind.
        let names: Vec<String> = fs::read_dir(s.file.path().parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".tmp"))
            .collect();
        assert!(names.is_empty(), "{names:?}");
    }

    #[test]
    fn changes_made_at_the_same_time_are_all_kept() {
        let s = setup();
        std::thread::scope(|scope| {
            for i in 0..6 {
                let file = &s.file;
                scope.spawn(move || {
                    file.add_user(&format!("user{i}"), Role::Auditor, "pw", None)
                        .unwrap();
                    file.create_token(&format!("user{i}"), "cron", None)
                        .unwrap();
                });
            }
        });
        let users = s.file.list().unwrap();
        assert_eq!(users.len(), 6, "{users:?}");
        assert!(users.iter().all(|u| u.tokens.len() == 1), "{users:?}");
    }

    #[test]
    fn fingerprints_are_stored_as_lower_hex_from_every_usual_form() {
        let upper = FP.to_ascii_uppercase();
        let colons = upper
            .as_bytes()
            .chunks(2)
            .map(|p| std::str::from_utf8(p).unwrap())
            .collect::<Vec<_>>()
            .join(":");
        for form in [
            FP.to_string(),
            format!("sha256:{FP}"),
            upper.clone(),
            colons.clone(),
            format!("sha256 Fingerprint={colons}"),
            format!(" {FP}\n"),
        ] {
            assert_eq!(normalise_fingerprint(&form).unwrap(), FP, "{form}");
        }
        for bad in [
            &FP[1..],
            &format!("{FP}0"),
            &format!("sha1:{FP}"),
            &FP.replace('3', "g"),
            &colons[..colons.len() - 3],
            &colons.replacen(':', "", 1),
        ] {
            assert!(normalise_fingerprint(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn debug_output_never_shows_a_hash_or_secret() {
        let s = setup();
        s.file
            .add_user("alice", Role::Admin, "alice pw", Some(FP))
            .unwrap();
        let token = s.file.create_token("alice", "cron", None).unwrap();
        let doc = s.file.load().unwrap();
        let shown = format!(
            "{:?} {:?} {:?} {:?} {:?}",
            token,
            s.file.list().unwrap(),
            doc.users,
            UsersAuthenticator::new(s.file.clone()).unwrap(),
            creds("alice", "alice pw"),
        );
        assert!(!shown.contains(token.secret.as_str()), "{shown}");
        assert!(
            !shown.contains(&sha256_hex(token.secret.as_bytes())),
            "{shown}"
        );
        assert!(!shown.contains("argon2"), "{shown}");
        assert!(!shown.contains("alice pw"), "{shown}");
        assert!(shown.contains("alice"), "{shown}");
    }
}
