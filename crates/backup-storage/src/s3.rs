//! `s3://bucket/prefix?endpoint=…&region=…`: any S3-compatible store, through
//! `object_store`'s `AmazonS3` client (SigV4).
//!
//! - **Names** map to keys `<prefix>/<name>` (just `<name>` without a prefix).
//! - **Credentials** never come from the URL: explicit ones given to
//!   [`S3StorageBuilder::credentials`], or (with [`S3StorageBuilder::from_env`],
//!   which [`S3Storage::from_url`] uses) `AWS_ACCESS_KEY_ID` /
//!   `AWS_SECRET_ACCESS_KEY` / `AWS_SESSION_TOKEN`, else the profile
//!   `AWS_PROFILE` (or `?profile=`, or `default`) of
//!   `AWS_SHARED_CREDENTIALS_FILE` (or `~/.aws/credentials`). Instance-metadata
//!   credentials are deliberately not probed: appliances are not EC2 instances,
//!   and a probe of a link-local address would only delay the real error.
//! - **Endpoint**: without one, AWS itself (virtual-hosted-style requests);
//!   with one, path-style requests, which every S3-compatible server accepts;
//!   plain `http://` only when the endpoint says so.
//! - **Uploads** are multipart, with parts sized from the size hint so that an
//!   image never needs more than 10,000 parts (see [`part_size`]); without a
//!   hint, 16 MiB parts, which caps an object at 156.25 GiB. At most two parts
//!   are in memory: one being sent, one being filled. An object smaller than
//!   one part goes up in a single PUT. Until `complete()` nothing is visible
//!   under the name; a failed, aborted or dropped upload is aborted on the
//!   server. An upload abandoned by a crash stays invisible but keeps its parts
//!   stored: give the bucket a lifecycle rule `AbortIncompleteMultipartUpload`.
//! - **`PutMode::Create`**: checked with a HEAD before the upload starts; a
//!   single-PUT upload is then sent with `If-None-Match: *` (atomic on servers
//!   that honour it, AWS S3 included); a multipart upload is checked with a
//!   HEAD again just before it completes, because `object_store` 0.14 cannot
//!   send `If-None-Match` with CompleteMultipartUpload. So Create is best
//!   effort for large objects, and [`Capabilities::conditional_create`] is
//!   false.
//! - **Time**: connecting is bounded (10 s by default), so is waiting for any
//!   response or body bytes (5 min by default, which a part upload must fit in).
//! - **Retries**: each request is retried by one layer only, so a failure is
//!   tried a known number of times and reported once. Listing, reading,
//!   HEAD and DELETE are retried by the shared layer
//!   ([`crate::RetryStorage`], which [`crate::open_url`] puts around every
//!   backend), and `object_store` does not retry them. Upload requests (the
//!   single PUT, each part, the completion) cannot be replayed by the shared
//!   layer, which never has the data again; `object_store`, which holds the
//!   part in memory, retries those (3 times within one minute by default).
//! - **Errors** say in one line what was being done to which object and what
//!   to do; their source names the S3 error code, the HTTP status and the
//!   server's own message (or the connection failure) instead of
//!   `object_store`'s nested chain, which is logged at debug level.

use std::fmt;
use std::io;
use std::ops::Range;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;
use futures::TryStreamExt;
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::client::{HttpError, HttpErrorKind};
use object_store::list::{PaginatedListOptions, PaginatedListStore};
use object_store::path::Path;
use object_store::signer::Signer;
use object_store::{
    BackoffConfig, ClientOptions, GetOptions, GetRange, MultipartUpload, ObjectStore,
    ObjectStoreExt, PutMultipartOptions, PutPayload, PutPayloadMut, RetryConfig,
};
use tokio::task::JoinHandle;

use crate::{
    Capabilities, Capacity, Error, GetResult, ListResult, ObjectMeta, PutMode, PutOptions, Result,
    Storage, Upload,
};

const MIB: u64 = 1 << 20;
/// S3's smallest part (all but the last).
const MIN_PART: u64 = 5 * MIB;
/// S3's largest part.
const MAX_PART: u64 = 5 << 30;
/// S3's most parts in one upload.
const MAX_PARTS: u64 = 10_000;
/// The part size without a size hint: 10,000 parts of 16 MiB hold 156.25 GiB,
/// while two parts in memory stay small.
const DEFAULT_PART: u64 = 16 * MIB;
/// Parts are sized for this many, leaving room for an image that outgrows
/// its hint (on top of the 10 % added to the hint).
const TARGET_PARTS: u64 = 9_000;
/// Writes smaller than this are copied into the part buffer rather than kept
/// as they are, so that a stream of tiny writes does not become a part made
/// of thousands of tiny buffers.
const COPY_BELOW: usize = 256 * 1024;
/// The longest validity S3 accepts for a presigned URL (SigV4: 7 days).
const MAX_PRESIGN: Duration = Duration::from_secs(7 * 24 * 3600);

/// The part size for an object of `size_hint` bytes: at least 5 MiB, a whole
/// number of MiB, and large enough that the hinted size plus 10 % fits in
/// 9,000 parts (so a 5 TiB image, S3's maximum, takes parts of 641 MiB).
/// Without a hint, [`DEFAULT_PART`].
pub(crate) fn part_size(size_hint: Option<u64>) -> u64 {
    let Some(size) = size_hint else {
        return DEFAULT_PART;
    };
    let padded = size.saturating_add(size / 10);
    let part = padded
        .div_ceil(TARGET_PARTS)
        .div_ceil(MIB)
        .saturating_mul(MIB);
    part.clamp(MIN_PART, MAX_PART)
}

/// An S3 bucket (or a prefix in one) on AWS or any S3-compatible server.
///
/// ```no_run
/// # fn main() -> Result<(), backup_storage::Error> {
/// use backup_storage::S3Storage;
///
/// // Credentials from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY or ~/.aws/credentials.
/// let store = S3Storage::from_url("s3://backups/site-1?endpoint=https://s3.example.net&region=eu-1")?;
/// assert_eq!(store.to_string(), "s3://backups/site-1?endpoint=https://s3.example.net&region=eu-1");
///
/// // Explicit settings, as tests use them.
/// let store = S3Storage::builder()
///     .bucket("backups")
///     .prefix("site-1")
///     .endpoint("http://127.0.0.1:9000")
///     .credentials("AKIDEXAMPLE", "secret")
///     .build()?;
/// # Ok(()) }
/// ```
pub struct S3Storage {
    shared: Arc<Shared>,
}

/// What the storage and its uploads share.
struct Shared {
    /// For requests the shared retry layer retries: no retries of its own.
    store: AmazonS3,
    /// For upload requests, which only the client can retry (it still holds
    /// the data).
    uploads: AmazonS3,
    bucket: String,
    /// Without leading or trailing `/`; empty for the whole bucket.
    prefix: String,
    /// As given, for messages and `Display`.
    endpoint: Option<String>,
    /// Only when given explicitly (URL or builder), so that `Display` gives
    /// back a URL that opens the same place.
    region: Option<String>,
    /// `Display` of the storage, computed once.
    location: String,
}

impl S3Storage {
    /// A builder that takes nothing from the environment: tests and embedders
    /// give every setting, credentials included.
    pub fn builder() -> S3StorageBuilder {
        S3StorageBuilder::new()
    }

    /// Opens `s3://bucket/prefix?endpoint=…&region=…&profile=…`, with
    /// credentials and a default region from the environment (see
    /// [`S3StorageBuilder::from_env`]). A URL carrying credentials is refused.
    pub fn from_url(url: &str) -> Result<S3Storage> {
        S3StorageBuilder::from_env().url(url)?.build()
    }

    /// The bucket.
    pub fn bucket(&self) -> &str {
        &self.shared.bucket
    }

    /// The key prefix (without a trailing `/`; empty for the whole bucket).
    pub fn prefix(&self) -> &str {
        &self.shared.prefix
    }

    /// The key of a validated object name.
    fn key(&self, name: &str) -> Result<Path> {
        self.shared.key(name)
    }
}

impl fmt::Display for S3Storage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.shared.location)
    }
}

impl fmt::Debug for S3Storage {
    // By hand: the client's own Debug would show its credential provider.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("S3Storage")
            .field("bucket", &self.shared.bucket)
            .field("prefix", &self.shared.prefix)
            .field("endpoint", &self.shared.endpoint)
            .field("region", &self.shared.region)
            .finish_non_exhaustive()
    }
}

/// Settings of an [`S3Storage`]. Start from [`S3StorageBuilder::new`] (nothing
/// from the environment) or [`S3StorageBuilder::from_env`].
#[derive(Clone)]
pub struct S3StorageBuilder {
    bucket: Option<String>,
    prefix: String,
    endpoint: Option<String>,
    region: Option<String>,
    profile: Option<String>,
    credentials: Option<Credentials>,
    from_env: bool,
    allow_http: Option<bool>,
    connect_timeout: Duration,
    request_timeout: Duration,
    max_retries: usize,
}

#[derive(Clone)]
struct Credentials {
    key_id: String,
    secret: String,
    token: Option<String>,
}

impl fmt::Debug for S3StorageBuilder {
    // By hand: never show the secret.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("S3StorageBuilder")
            .field("bucket", &self.bucket)
            .field("prefix", &self.prefix)
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("profile", &self.profile)
            .field("credentials", &self.credentials.as_ref().map(|c| &c.key_id))
            .field("from_env", &self.from_env)
            .field("allow_http", &self.allow_http)
            .field("connect_timeout", &self.connect_timeout)
            .field("request_timeout", &self.request_timeout)
            .field("max_retries", &self.max_retries)
            .finish()
    }
}

impl Default for S3StorageBuilder {
    fn default() -> Self {
        S3StorageBuilder::new()
    }
}

impl S3StorageBuilder {
    /// Settings without anything from the environment: a bucket and
    /// credentials must be given.
    pub fn new() -> S3StorageBuilder {
        S3StorageBuilder {
            bucket: None,
            prefix: String::new(),
            endpoint: None,
            region: None,
            profile: None,
            credentials: None,
            from_env: false,
            allow_http: None,
            connect_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(300),
            max_retries: 3,
        }
    }

    /// Like [`S3StorageBuilder::new`], but what is not given explicitly comes,
    /// at [`S3StorageBuilder::build`], from the standard AWS environment:
    /// `AWS_ACCESS_KEY_ID` + `AWS_SECRET_ACCESS_KEY` (+ `AWS_SESSION_TOKEN`),
    /// else the profile (`AWS_PROFILE`, default `default`) in
    /// `AWS_SHARED_CREDENTIALS_FILE` (default `~/.aws/credentials`); the region
    /// from `AWS_REGION`, `AWS_DEFAULT_REGION` or the profile in
    /// `AWS_CONFIG_FILE` (default `~/.aws/config`), else `us-east-1`.
    pub fn from_env() -> S3StorageBuilder {
        S3StorageBuilder {
            from_env: true,
            ..S3StorageBuilder::new()
        }
    }

    /// Takes bucket, prefix, `endpoint`, `region` and `profile` from an
    /// `s3://bucket/prefix?endpoint=…&region=…&profile=…` URL.
    pub fn url(mut self, url: &str) -> Result<S3StorageBuilder> {
        let parsed = parse_url(url)?;
        self.bucket = Some(parsed.bucket);
        self.prefix = parsed.prefix;
        if parsed.endpoint.is_some() {
            self.endpoint = parsed.endpoint;
        }
        if parsed.region.is_some() {
            self.region = parsed.region;
        }
        if parsed.profile.is_some() {
            self.profile = parsed.profile;
        }
        Ok(self)
    }

    /// The bucket.
    pub fn bucket(mut self, bucket: impl Into<String>) -> S3StorageBuilder {
        self.bucket = Some(bucket.into());
        self
    }

    /// The key prefix under which objects live (`a/b` or `a/b/`; empty for the
    /// whole bucket).
    pub fn prefix(mut self, prefix: impl Into<String>) -> S3StorageBuilder {
        self.prefix = prefix.into();
        self
    }

    /// The server, `https://host[:port]` or `http://host[:port]`; without one,
    /// AWS S3 of the region.
    pub fn endpoint(mut self, endpoint: impl Into<String>) -> S3StorageBuilder {
        self.endpoint = Some(endpoint.into());
        self
    }

    /// The region (signed into every request; S3-compatible servers mostly
    /// accept any).
    pub fn region(mut self, region: impl Into<String>) -> S3StorageBuilder {
        self.region = Some(region.into());
        self
    }

    /// The profile of the shared credentials file (with
    /// [`S3StorageBuilder::from_env`]).
    pub fn profile(mut self, profile: impl Into<String>) -> S3StorageBuilder {
        self.profile = Some(profile.into());
        self
    }

    /// Explicit credentials, which take precedence over the environment.
    pub fn credentials(
        mut self,
        access_key_id: impl Into<String>,
        secret_access_key: impl Into<String>,
    ) -> S3StorageBuilder {
        let token = self.credentials.take().and_then(|c| c.token);
        self.credentials = Some(Credentials {
            key_id: access_key_id.into(),
            secret: secret_access_key.into(),
            token,
        });
        self
    }

    /// A session token for temporary credentials (after
    /// [`S3StorageBuilder::credentials`]).
    pub fn session_token(mut self, token: impl Into<String>) -> S3StorageBuilder {
        if let Some(c) = &mut self.credentials {
            c.token = Some(token.into());
        }
        self
    }

    /// Whether plain HTTP is allowed. By default it is exactly when the
    /// endpoint is an `http://` URL; `false` refuses such an endpoint.
    pub fn allow_http(mut self, allow: bool) -> S3StorageBuilder {
        self.allow_http = Some(allow);
        self
    }

    /// How long connecting may take (default 10 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> S3StorageBuilder {
        self.connect_timeout = timeout;
        self
    }

    /// How long to wait for a response, or for the next bytes of one
    /// (default 5 min). Sending a part is waiting for its response: the
    /// largest part must go up within this time.
    pub fn request_timeout(mut self, timeout: Duration) -> S3StorageBuilder {
        self.request_timeout = timeout;
        self
    }

    /// How many times the client itself retries a failed upload request (a
    /// part, a single PUT, the completion), within one minute of the first
    /// attempt (default 3). Other requests are never retried by the client:
    /// the shared retry layer ([`crate::RetryStorage`]) retries those, and
    /// retries in both would multiply.
    pub fn max_retries(mut self, retries: usize) -> S3StorageBuilder {
        self.max_retries = retries;
        self
    }

    /// Checks the settings and makes the client. Nothing is sent yet: a
    /// missing bucket or rejected credentials show at the first request.
    pub fn build(self) -> Result<S3Storage> {
        let bucket = self.bucket.clone().unwrap_or_default();
        let shown = Shown {
            bucket: &bucket,
            prefix: &self.prefix,
            endpoint: self.endpoint.as_deref(),
            region: self.region.as_deref(),
        };
        let invalid = |reason: String| Error::InvalidUrl {
            url: shown.to_string(),
            reason,
        };
        if bucket.is_empty() {
            return Err(invalid("no bucket: write s3://bucket/prefix".to_owned()));
        }
        check_bucket(&bucket).map_err(invalid)?;
        let prefix = normalize_prefix(&self.prefix).map_err(invalid)?;
        let endpoint = match &self.endpoint {
            Some(e) => Some(check_endpoint(e).map_err(invalid)?),
            None => None,
        };
        let is_http = endpoint
            .as_deref()
            .is_some_and(|e| e.starts_with("http://"));
        let allow_http = self.allow_http.unwrap_or(is_http);
        if is_http && !allow_http {
            return Err(invalid(
                "the endpoint is plain http:// but HTTP is not allowed; use https://".to_owned(),
            ));
        }

        let env = if self.from_env {
            Some(AwsEnv::read(self.profile.as_deref()))
        } else {
            None
        };
        let region = self
            .region
            .clone()
            .or_else(|| env.as_ref().and_then(|e| e.region.clone()))
            .unwrap_or_else(|| "us-east-1".to_owned());
        let credentials = match (&self.credentials, &env) {
            (Some(c), _) => c.clone(),
            (None, Some(env)) => env.credentials()?,
            (None, None) => {
                return Err(Error::Unauthenticated {
                    what: format!(
                        "no credentials for {shown}: give an access key and secret (or build from the environment)"
                    ),
                    source: None,
                })
            }
        };
        if credentials.key_id.is_empty() || credentials.secret.is_empty() {
            return Err(Error::Unauthenticated {
                what: format!("empty access key id or secret for {shown}"),
                source: None,
            });
        }

        let client = ClientOptions::new()
            .with_allow_http(allow_http)
            .with_connect_timeout(self.connect_timeout)
            // No total timeout: it would cut a long download short. A stalled
            // transfer is caught by the read timeout instead, which also bounds
            // the wait for any response (reqwest starts it with the request).
            .with_timeout_disabled()
            .with_read_timeout(self.request_timeout);
        let retry = |max_retries| RetryConfig {
            backoff: BackoffConfig::default(),
            max_retries,
            retry_timeout: Duration::from_secs(60),
        };
        let mut builder = AmazonS3Builder::new()
            .with_bucket_name(&bucket)
            .with_region(&region)
            .with_access_key_id(&credentials.key_id)
            .with_secret_access_key(&credentials.secret)
            .with_allow_http(allow_http)
            .with_client_options(client);
        if let Some(token) = &credentials.token {
            builder = builder.with_token(token);
        }
        builder = match &endpoint {
            // Path style: S3-compatible servers rarely have wildcard DNS for
            // bucket subdomains.
            Some(endpoint) => builder
                .with_endpoint(endpoint)
                .with_virtual_hosted_style_request(false),
            // AWS: virtual-hosted style, except for bucket names with dots,
            // which would not match the wildcard TLS certificate.
            None => builder.with_virtual_hosted_style_request(!bucket.contains('.')),
        };
        let build = |max_retries| {
            builder
                .clone()
                .with_retry(retry(max_retries))
                .build()
                .map_err(|e| Error::Other {
                    what: format!("setting up the S3 client for {shown}"),
                    source: Some(Box::new(e)),
                })
        };
        let store = build(0)?;
        let uploads = build(self.max_retries)?;
        let location = Shown {
            bucket: &bucket,
            prefix: &prefix,
            endpoint: endpoint.as_deref(),
            region: self.region.as_deref(),
        }
        .to_string();
        Ok(S3Storage {
            shared: Arc::new(Shared {
                store,
                uploads,
                bucket,
                prefix,
                endpoint,
                region: self.region,
                location,
            }),
        })
    }
}

/// A storage URL for messages: `s3://bucket/prefix?endpoint=…&region=…`.
#[derive(Clone, Copy)]
struct Shown<'a> {
    bucket: &'a str,
    prefix: &'a str,
    endpoint: Option<&'a str>,
    region: Option<&'a str>,
}

impl fmt::Display for Shown<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "s3://{}", self.bucket)?;
        let prefix = self.prefix.trim_matches('/');
        if !prefix.is_empty() {
            write!(f, "/{prefix}")?;
        }
        let mut sep = '?';
        for (key, value) in [("endpoint", self.endpoint), ("region", self.region)] {
            if let Some(value) = value {
                write!(f, "{sep}{key}={value}")?;
                sep = '&';
            }
        }
        Ok(())
    }
}

/// The parts of an `s3://` URL.
#[derive(Debug, PartialEq, Eq)]
struct ParsedUrl {
    bucket: String,
    prefix: String,
    endpoint: Option<String>,
    region: Option<String>,
    profile: Option<String>,
}

fn parse_url(url: &str) -> Result<ParsedUrl> {
    let invalid = |reason: &str| Error::InvalidUrl {
        url: redact_url(url),
        reason: reason.to_owned(),
    };
    let rest = match url.split_once("://") {
        Some((scheme, rest)) if scheme.eq_ignore_ascii_case("s3") => rest,
        _ => return Err(invalid("not an s3:// URL; write s3://bucket/prefix")),
    };
    if rest.contains('#') {
        return Err(invalid("an s3:// URL takes no fragment"));
    }
    let (location, query) = rest.split_once('?').unwrap_or((rest, ""));
    let (bucket, prefix) = location.split_once('/').unwrap_or((location, ""));
    if bucket.contains('@') {
        return Err(invalid(
            "credentials do not belong in the URL (it ends up in logs and status files); \
             set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or a profile in ~/.aws/credentials",
        ));
    }
    let mut parsed = ParsedUrl {
        bucket: percent_decode(bucket).map_err(|r| invalid(&r))?,
        prefix: percent_decode(prefix).map_err(|r| invalid(&r))?,
        endpoint: None,
        region: None,
        profile: None,
    };
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let value = percent_decode(value).map_err(|r| invalid(&r))?;
        if value.is_empty() {
            return Err(invalid(&format!(
                "the query parameter {key:?} has no value"
            )));
        }
        let slot = match key {
            "endpoint" => &mut parsed.endpoint,
            "region" => &mut parsed.region,
            "profile" => &mut parsed.profile,
            _ => {
                return Err(invalid(&format!(
                "unknown query parameter {key:?}; an s3:// URL takes endpoint, region and profile"
            )))
            }
        };
        if slot.replace(value).is_some() {
            return Err(invalid(&format!(
                "the query parameter {key:?} is given twice"
            )));
        }
    }
    if let Some(endpoint) = &parsed.endpoint {
        check_endpoint(endpoint).map_err(|r| invalid(&r))?;
    }
    Ok(parsed)
}

/// The URL with anything that looks like credentials replaced, for messages.
fn redact_url(url: &str) -> String {
    // Credentials can hide in the authority and in the endpoint parameter.
    let mut out = String::with_capacity(url.len());
    let mut rest = url;
    while let Some(i) = rest.find("://") {
        out.push_str(&rest[..i + 3]);
        rest = &rest[i + 3..];
        let end = rest.find(['/', '?', '&']).unwrap_or(rest.len());
        match rest[..end].rfind('@') {
            Some(at) => {
                out.push_str("***");
                out.push_str(&rest[at..end]);
            }
            None => out.push_str(&rest[..end]),
        }
        rest = &rest[end..];
    }
    out.push_str(rest);
    out
}

fn percent_decode(s: &str) -> std::result::Result<String, String> {
    crate::open::percent_decode_utf8(s, "URL")
}

/// Bucket names as S3-compatible servers accept them (AWS is stricter).
fn check_bucket(bucket: &str) -> std::result::Result<(), String> {
    let valid = bucket.len() <= 255
        && bucket
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b));
    if valid {
        Ok(())
    } else {
        Err(format!(
            "invalid bucket name {bucket:?}: letters, digits, '-', '.' and '_' only"
        ))
    }
}

/// `a/b/` → `a/b`, refusing empty, `.` and `..` segments.
fn normalize_prefix(prefix: &str) -> std::result::Result<String, String> {
    let trimmed = prefix.trim_matches('/');
    if trimmed.is_empty() {
        return Ok(String::new());
    }
    if trimmed
        .split('/')
        .all(|s| !s.is_empty() && s != "." && s != ".." && !s.contains(['\\', '\0']))
    {
        Ok(trimmed.to_owned())
    } else {
        Err(format!(
            "invalid prefix {prefix:?}: no empty, '.' or '..' segments"
        ))
    }
}

/// An endpoint is `http(s)://host[:port][/path]`, without credentials or query.
fn check_endpoint(endpoint: &str) -> std::result::Result<String, String> {
    let rest = endpoint
        .strip_prefix("https://")
        .or_else(|| endpoint.strip_prefix("http://"))
        .ok_or_else(|| {
            "the endpoint must be an https:// (or http://) URL, e.g. endpoint=https://s3.example.net"
                .to_owned()
        })?;
    let authority = &rest[..rest.find('/').unwrap_or(rest.len())];
    if authority.contains('@') {
        return Err(
            "credentials do not belong in the endpoint URL; set AWS_ACCESS_KEY_ID and \
             AWS_SECRET_ACCESS_KEY, or a profile in ~/.aws/credentials"
                .to_owned(),
        );
    }
    if authority.is_empty() || rest.contains(['?', '#']) {
        return Err("the endpoint must be http(s)://host[:port], without query".to_owned());
    }
    Ok(endpoint.trim_end_matches('/').to_owned())
}

/// Whether an object name is relative, `/`-separated, without empty, `.` or
/// `..` segments, backslashes or NUL bytes (as for every backend).
fn is_valid_name(name: &str) -> bool {
    !name.is_empty()
        && !name.contains(['\0', '\\'])
        && name
            .split('/')
            .all(|s| !s.is_empty() && s != "." && s != "..")
}

/// Credentials and region from the AWS environment variables and files.
struct AwsEnv {
    region: Option<String>,
    credentials: Option<Credentials>,
    /// Where we looked, for the error when nothing was found.
    looked: String,
    /// A half-configured source, worth a precise message.
    problem: Option<String>,
}

impl AwsEnv {
    fn read(profile: Option<&str>) -> AwsEnv {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        let profile = profile
            .map(str::to_owned)
            .or_else(|| var("AWS_PROFILE"))
            .unwrap_or_else(|| "default".to_owned());
        let home = var("HOME").map(PathBuf::from);
        let file = |env: &str, name: &str| {
            var(env)
                .map(PathBuf::from)
                .or_else(|| home.as_ref().map(|h| h.join(".aws").join(name)))
        };
        let credentials_file = file("AWS_SHARED_CREDENTIALS_FILE", "credentials");
        let config_file = file("AWS_CONFIG_FILE", "config");

        let mut problem = None;
        let credentials = match (var("AWS_ACCESS_KEY_ID"), var("AWS_SECRET_ACCESS_KEY")) {
            (Some(key_id), Some(secret)) => Some(Credentials {
                key_id,
                secret,
                token: var("AWS_SESSION_TOKEN"),
            }),
            (Some(_), None) | (None, Some(_)) => {
                problem = Some(
                    "only one of AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY is set; set both"
                        .to_owned(),
                );
                None
            }
            (None, None) => None,
        };
        let credentials = credentials.or_else(|| {
            // Half the variables is a mistake to report, not a reason to
            // fall back on some profile.
            if problem.is_some() {
                return None;
            }
            let path = credentials_file.as_ref()?;
            let text = std::fs::read_to_string(path).ok()?;
            let section = ini_section(&text, &profile)?;
            let get = |k: &str| section.iter().find(|(key, _)| key == k).map(|(_, v)| v.clone());
            match (get("aws_access_key_id"), get("aws_secret_access_key")) {
                (Some(key_id), Some(secret)) => Some(Credentials {
                    key_id,
                    secret,
                    token: get("aws_session_token"),
                }),
                _ => {
                    problem.get_or_insert_with(|| {
                        format!(
                            "profile [{profile}] in {} lacks aws_access_key_id or aws_secret_access_key",
                            path.display()
                        )
                    });
                    None
                }
            }
        });
        let region = var("AWS_REGION")
            .or_else(|| var("AWS_DEFAULT_REGION"))
            .or_else(|| {
                let text = std::fs::read_to_string(config_file.as_ref()?).ok()?;
                // ~/.aws/config names profiles "[profile x]", except the default.
                let section = ini_section(&text, &format!("profile {profile}"))
                    .or_else(|| ini_section(&text, &profile))?;
                section
                    .into_iter()
                    .find(|(k, _)| k == "region")
                    .map(|(_, v)| v)
            });
        let looked = format!(
            "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, profile [{profile}] in {}",
            credentials_file
                .as_ref()
                .map_or("~/.aws/credentials (HOME is not set)".to_owned(), |p| {
                    p.display().to_string()
                })
        );
        AwsEnv {
            region,
            credentials,
            looked,
            problem,
        }
    }

    fn credentials(&self) -> Result<Credentials> {
        if let Some(c) = &self.credentials {
            return Ok(c.clone());
        }
        let what = match &self.problem {
            Some(problem) => format!("no usable S3 credentials: {problem}"),
            None => format!(
                "no S3 credentials found (looked at {}): set AWS_ACCESS_KEY_ID and \
                 AWS_SECRET_ACCESS_KEY (and AWS_SESSION_TOKEN for temporary ones), or write a profile",
                self.looked
            ),
        };
        Err(Error::Unauthenticated { what, source: None })
    }
}

/// The `key = value` pairs of section `[name]` of an INI file such as
/// `~/.aws/credentials`; `None` if there is no such section.
fn ini_section(text: &str, name: &str) -> Option<Vec<(String, String)>> {
    let mut found = None;
    let mut in_section = false;
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with(['#', ';']) {
            continue;
        }
        if let Some(header) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            in_section = header.trim() == name;
            if in_section {
                found.get_or_insert_with(Vec::new);
            }
            continue;
        }
        if in_section {
            if let Some((key, value)) = line.split_once('=') {
                found
                    .get_or_insert_with(Vec::new)
                    .push((key.trim().to_owned(), value.trim().to_owned()));
            }
        }
    }
    found
}

// ---------------------------------------------------------------------------
// Errors

/// What an `object_store` error means here.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Meaning {
    NotFound,
    NoSuchBucket,
    AlreadyExists,
    /// With the S3 error code, when there is one.
    Unauthenticated(Option<String>),
    PermissionDenied,
    Transient,
    BadRange,
    Unsupported,
    Other,
}

/// S3 error codes that mean the credentials themselves were refused.
const CREDENTIAL_CODES: [&str; 9] = [
    "InvalidAccessKeyId",
    // What s3s (and AWS, for an account without S3) says of an unknown key.
    "NotSignedUp",
    "InvalidClientTokenId",
    "SignatureDoesNotMatch",
    "ExpiredToken",
    "InvalidToken",
    "TokenRefreshRequired",
    "RequestTimeTooSkewed",
    "AuthorizationHeaderMalformed",
];

impl Meaning {
    fn of(e: &object_store::Error) -> Meaning {
        use object_store::Error as E;
        // The S3 error code and the HTTP status only show in the text of the
        // source chain: object_store keeps its request error type private.
        let text = chain(e);
        let code = s3_code(&text);
        match code {
            Some("NoSuchBucket") => return Meaning::NoSuchBucket,
            Some(c) if CREDENTIAL_CODES.contains(&c) => {
                return Meaning::Unauthenticated(Some(c.to_owned()))
            }
            Some("InvalidRange") => return Meaning::BadRange,
            Some("SlowDown" | "InternalError" | "ServiceUnavailable" | "RequestTimeout") => {
                return Meaning::Transient
            }
            _ => {}
        }
        match e {
            E::NotFound { .. } => return Meaning::NotFound,
            E::AlreadyExists { .. } | E::Precondition { .. } => return Meaning::AlreadyExists,
            E::Unauthenticated { .. } => return Meaning::Unauthenticated(code.map(str::to_owned)),
            E::PermissionDenied { .. } => return Meaning::PermissionDenied,
            E::NotSupported { .. } | E::NotImplemented { .. } => return Meaning::Unsupported,
            _ => {}
        }
        if let Some(kind) = transport_kind(e) {
            return match kind {
                HttpErrorKind::Connect
                | HttpErrorKind::Request
                | HttpErrorKind::Timeout
                | HttpErrorKind::Interrupted => Meaning::Transient,
                _ => Meaning::Other,
            };
        }
        match http_status(&text) {
            Some(416) => Meaning::BadRange,
            Some(404) => Meaning::NotFound,
            Some(401) => Meaning::Unauthenticated(code.map(str::to_owned)),
            Some(403) => Meaning::PermissionDenied,
            Some(408 | 429) => Meaning::Transient,
            Some(s) if (500..600).contains(&s) => Meaning::Transient,
            // A 200 whose body is an S3 error (CompleteMultipartUpload's way
            // of reporting an internal error).
            _ if text.contains("Server returned error response") => Meaning::Transient,
            _ if text.contains("Wanted range starting at") => Meaning::BadRange,
            _ => Meaning::Other,
        }
    }
}

/// An error and its sources, on one line.
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut msg = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        source = s.source();
    }
    msg
}

/// The `<Code>` of an S3 XML error body quoted in an error message.
fn s3_code(text: &str) -> Option<&str> {
    let start = text.find("<Code>")? + "<Code>".len();
    let len = text[start..].find("</Code>")?;
    Some(text[start..start + len].trim())
}

/// The status in object_store's "…status code: 404 Not Found…".
fn http_status(text: &str) -> Option<u16> {
    let start = text.find("status code: ")? + "status code: ".len();
    text.get(start..start + 3)?.parse().ok()
}

/// The kind of the transport error in the chain, if there is one.
fn transport_kind(e: &(dyn std::error::Error + 'static)) -> Option<HttpErrorKind> {
    let mut current = Some(e);
    while let Some(e) = current {
        if let Some(h) = e.downcast_ref::<HttpError>() {
            return Some(h.kind());
        }
        current = e.source();
    }
    None
}

impl Shared {
    fn key(&self, name: &str) -> Result<Path> {
        if !is_valid_name(name) {
            return Err(Error::Other {
                what: format!(
                    "invalid object name {name:?}: names are relative and '/'-separated, without empty, \
                     '.' or '..' segments, backslashes or NUL bytes"
                ),
                source: None,
            });
        }
        let key = if self.prefix.is_empty() {
            name.to_owned()
        } else {
            format!("{}/{name}", self.prefix)
        };
        Path::parse(&key).map_err(|e| Error::Other {
            what: format!("invalid object name {name:?}"),
            source: Some(Box::new(e)),
        })
    }

    /// The object name of a key of ours (`None` for a key outside the prefix).
    fn name<'k>(&self, key: &'k str) -> Option<&'k str> {
        if self.prefix.is_empty() {
            Some(key)
        } else {
            key.strip_prefix(self.prefix.as_str())?.strip_prefix('/')
        }
    }

    fn where_(&self) -> String {
        match &self.endpoint {
            Some(e) => e.clone(),
            None => format!(
                "AWS S3 ({})",
                self.region
                    .as_deref()
                    .unwrap_or("region from the environment")
            ),
        }
    }

    /// Our error for `e`, which happened while `doing` (which names the
    /// object and this storage); the message says what the operator can do.
    fn error(&self, doing: String, e: object_store::Error) -> Error {
        let meaning = Meaning::of(&e);
        let failure = S3Failure::of(&e);
        tracing::debug!(operation = %doing, error = %chain(&e), "S3 request failed");
        // The server answered: say what to do about its answer.
        let hint = failure
            .answered()
            .map(|_| self.hint(failure.code.as_deref()));
        let source = Some(Box::new(failure) as crate::BoxError);
        match meaning {
            Meaning::NotFound => Error::NotFound {
                what: doing,
                source,
            },
            Meaning::NoSuchBucket => Error::NotFound {
                what: format!(
                    "{doing}: bucket {} does not exist at {}; create it, or fix the bucket in [storage] url",
                    self.bucket,
                    self.where_()
                ),
                source,
            },
            Meaning::AlreadyExists => Error::AlreadyExists { what: doing },
            Meaning::Unauthenticated(code) => Error::Unauthenticated {
                what: format!(
                    "{doing}: the S3 server rejected the credentials{}; check AWS_ACCESS_KEY_ID and \
                     AWS_SECRET_ACCESS_KEY (or the profile in ~/.aws/credentials){}",
                    code.as_deref().map(|c| format!(" ({c})")).unwrap_or_default(),
                    if code.as_deref() == Some("RequestTimeTooSkewed") {
                        ", and set this machine's clock right"
                    } else {
                        ", and that this machine's clock is right"
                    }
                ),
                source,
            },
            Meaning::PermissionDenied => Error::PermissionDenied {
                what: format!(
                    "{doing}: access denied; check that the credentials may use bucket {} \
                     (bucket policy, user permissions) and that they are the right ones",
                    self.bucket
                ),
                source,
            },
            Meaning::Transient => Error::Transient {
                what: format!(
                    "{doing}: retry; if it persists, check the network and the S3 server at {}",
                    self.where_()
                ),
                source,
            },
            Meaning::BadRange => Error::Other {
                what: format!("{doing}: the range starts past the end of the object"),
                source,
            },
            Meaning::Unsupported => Error::Unsupported {
                what: format!("{doing}: the S3 server or client does not support this"),
            },
            Meaning::Other => Error::Other {
                what: match hint {
                    Some(hint) => format!("{doing}: {hint}"),
                    None => doing,
                },
                source,
            },
        }
    }

    /// What to do about an S3 error that has no meaning of its own.
    fn hint(&self, code: Option<&str>) -> String {
        if code == Some("InvalidBucketName") {
            format!(
                "{:?} is not a valid S3 bucket name (3-63 lowercase letters, digits, dots and \
                 hyphens); fix the bucket in [storage] url",
                self.bucket
            )
        } else {
            format!(
                "check [storage] url and the S3 server's log at {}",
                self.where_()
            )
        }
    }
}

/// What an S3 request ended with, kept short: the S3 error code, the HTTP
/// status and the server's message, or the connection failure. It stands
/// as the source of our error instead of `object_store`'s error, whose text
/// nests the same failure several times (request, retry and client layers).
#[derive(Debug)]
struct S3Failure {
    code: Option<String>,
    status: Option<u16>,
    /// The server's `<Message>`, or the innermost cause.
    detail: String,
}

/// Longest detail kept from a failure.
const MAX_DETAIL: usize = 200;

impl S3Failure {
    fn of(e: &object_store::Error) -> S3Failure {
        let text = chain(e);
        let code = s3_code(&text).map(str::to_owned);
        let status = http_status(&text);
        let detail = match s3_message(&text) {
            Some(m) => m.to_owned(),
            None => {
                let mut innermost: &(dyn std::error::Error + 'static) = e;
                while let Some(next) = innermost.source() {
                    innermost = next;
                }
                let cause = innermost.to_string();
                match transport_kind(e) {
                    Some(kind) => format!("{}: {cause}", transport_words(kind)),
                    // Without a body the innermost text is object_store's
                    // whole status line; the status says it.
                    None if status.is_some() => String::new(),
                    None => cause,
                }
            }
        };
        let mut detail = detail.trim().to_owned();
        if detail.len() > MAX_DETAIL {
            let mut cut = MAX_DETAIL;
            while !detail.is_char_boundary(cut) {
                cut -= 1;
            }
            detail.truncate(cut);
            detail.push('…');
        }
        S3Failure {
            code,
            status,
            detail,
        }
    }

    /// "S3 error CODE (HTTP STATUS)", or what is known of it.
    fn answered(&self) -> Option<String> {
        match (&self.code, self.status) {
            (Some(c), Some(s)) => Some(format!("S3 error {c} (HTTP {s})")),
            (Some(c), None) => Some(format!("S3 error {c}")),
            (None, Some(s)) => Some(format!("HTTP {s}")),
            (None, None) => None,
        }
    }
}

impl fmt::Display for S3Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.answered(), self.detail.is_empty()) {
            (Some(answered), true) => f.write_str(&answered),
            (Some(answered), false) => write!(f, "{answered}: {}", self.detail),
            (None, false) => f.write_str(&self.detail),
            (None, true) => f.write_str("the S3 request failed"),
        }
    }
}

impl std::error::Error for S3Failure {}

fn transport_words(kind: HttpErrorKind) -> &'static str {
    match kind {
        HttpErrorKind::Connect => "could not connect",
        HttpErrorKind::Timeout => "timed out",
        HttpErrorKind::Interrupted => "the connection broke",
        HttpErrorKind::Decode => "the answer could not be read",
        _ => "the request failed",
    }
}

/// The `<Message>` of an S3 XML error body quoted in an error message.
fn s3_message(text: &str) -> Option<&str> {
    let start = text.find("<Message>")? + "<Message>".len();
    let len = text[start..].find("</Message>")?;
    Some(text[start..start + len].trim()).filter(|m| !m.is_empty())
}

/// The I/O error a reader reports for a failed download: its kind carries the
/// meaning, so that [`Error::from_io`] finds it again.
fn io_error(e: Error) -> io::Error {
    let kind = match &e {
        Error::NotFound { .. } => io::ErrorKind::NotFound,
        Error::PermissionDenied { .. } | Error::Unauthenticated { .. } => {
            io::ErrorKind::PermissionDenied
        }
        Error::Transient { .. } => io::ErrorKind::ConnectionAborted,
        _ => io::ErrorKind::Other,
    };
    io::Error::new(kind, e)
}

fn object_meta(name: String, meta: &object_store::ObjectMeta) -> ObjectMeta {
    ObjectMeta {
        name,
        size: meta.size,
        modified: Some(SystemTime::from(meta.last_modified)),
    }
}

// ---------------------------------------------------------------------------
// The trait

#[async_trait]
impl Storage for S3Storage {
    fn capabilities(&self) -> Capabilities {
        Capabilities {
            // A multipart upload shows nothing until it completes.
            atomic_publish: true,
            // Best effort for multipart uploads (see the module docs).
            conditional_create: false,
            presign: true,
            capacity: false,
            rewrite_in_place: false,
        }
    }

    async fn put_opts(&self, name: &str, opts: PutOptions) -> Result<Box<dyn Upload>> {
        let path = self.key(name)?;
        if opts.mode == PutMode::Create {
            // Refuse before any byte is sent (and again at the end).
            check_absent(&self.shared, &self.shared.store, name, &path).await?;
        }
        let part_size = part_size(opts.size_hint);
        Ok(Box::new(S3Upload {
            shared: Arc::clone(&self.shared),
            path,
            name: name.to_owned(),
            mode: opts.mode,
            part_size: usize::try_from(part_size).unwrap_or(usize::MAX),
            buffer: new_part_buffer(),
            multipart: None,
            in_flight: None,
            parts: 0,
            written: 0,
            write_cancelled: false,
            finished: false,
        }))
    }

    async fn get_opts(&self, name: &str, range: Option<Range<u64>>) -> Result<GetResult> {
        let path = self.key(name)?;
        let doing = || format!("reading {name} from {self}");
        let mut options = GetOptions::default();
        match &range {
            Some(r) if r.start > r.end => {
                return Err(Error::Other {
                    what: format!(
                    "cannot read bytes {r:?} of {name} in {self}: the range ends before it starts"
                ),
                    source: None,
                })
            }
            // S3 cannot return nothing: an empty range is answered from a HEAD.
            Some(r) if r.start == r.end => {
                let meta = self.head(name).await?;
                if r.start > meta.size {
                    return Err(Error::Other {
                        what: format!(
                            "cannot read bytes {r:?} of {name} in {self}: the object has {} bytes",
                            meta.size
                        ),
                        source: None,
                    });
                }
                return Ok(GetResult {
                    meta,
                    range: r.clone(),
                    reader: Box::new(tokio::io::empty()),
                });
            }
            Some(r) => options.range = Some(GetRange::Bounded(r.clone())),
            None => {}
        }
        let got = match self.shared.store.get_opts(&path, options).await {
            Ok(got) => got,
            Err(e) => {
                let Some(r) = range.filter(|_| Meaning::of(&e) == Meaning::BadRange) else {
                    return Err(self.shared.error(doing(), e));
                };
                // As every backend: a range starting at the very end is empty,
                // one starting beyond it an error that gives the size.
                let meta = self.head(name).await?;
                if r.start == meta.size {
                    return Ok(GetResult {
                        meta,
                        range: r.start..r.start,
                        reader: Box::new(tokio::io::empty()),
                    });
                }
                return Err(Error::Other {
                    what: format!(
                        "cannot read bytes {r:?} of {name} in {self}: the object has {} bytes",
                        meta.size
                    ),
                    source: Some(Box::new(e)),
                });
            }
        };
        let meta = object_meta(name.to_owned(), &got.meta);
        let range = got.range.clone();
        let shared = Arc::clone(&self.shared);
        let what = doing();
        let stream = got
            .into_stream()
            .map_err(move |e| io_error(shared.error(what.clone(), e)));
        Ok(GetResult {
            meta,
            range,
            reader: Box::new(tokio_util::io::StreamReader::new(stream)),
        })
    }

    async fn head(&self, name: &str) -> Result<ObjectMeta> {
        let path = self.key(name)?;
        let meta = self
            .shared
            .store
            .head(&path)
            .await
            .map_err(|e| self.shared.error(format!("object {name} in {self}"), e))?;
        Ok(object_meta(name.to_owned(), &meta))
    }

    async fn list(&self, prefix: &str, delimited: bool) -> Result<ListResult> {
        let key_prefix = if self.shared.prefix.is_empty() {
            prefix.to_owned()
        } else {
            format!("{}/{prefix}", self.shared.prefix)
        };
        let mut out = ListResult::default();
        let mut page_token = None;
        // object_store's own `list` treats the prefix as a directory; the
        // paginated call passes it through as a plain string prefix.
        loop {
            let opts = PaginatedListOptions {
                delimiter: delimited.then_some("/".into()),
                page_token,
                ..Default::default()
            };
            let page = self
                .shared
                .store
                .list_paginated(
                    (!key_prefix.is_empty()).then_some(key_prefix.as_str()),
                    opts,
                )
                .await
                .map_err(|e| self.shared.error(format!("listing {prefix}* in {self}"), e))?;
            for meta in &page.result.objects {
                if let Some(name) = self.shared.name(meta.location.as_ref()) {
                    out.objects.push(object_meta(name.to_owned(), meta));
                }
            }
            for p in &page.result.common_prefixes {
                if let Some(name) = self.shared.name(p.as_ref()) {
                    out.prefixes.push(format!("{name}/"));
                }
            }
            page_token = page.page_token;
            if page_token.is_none() {
                break;
            }
        }
        out.objects.sort_by(|a, b| a.name.cmp(&b.name));
        out.prefixes.sort();
        out.prefixes.dedup();
        Ok(out)
    }

    async fn delete(&self, name: &str) -> Result<()> {
        let path = self.key(name)?;
        match self.shared.store.delete(&path).await {
            Ok(()) => Ok(()),
            // S3 answers 204 for a missing key; other servers may say 404.
            Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.shared.error(format!("deleting {name} from {self}"), e)),
        }
    }

    async fn capacity(&self) -> Result<Capacity> {
        // A bucket has no size limit that S3 would tell.
        Ok(Capacity::default())
    }

    async fn presign_get(&self, name: &str, expires: Duration) -> Result<String> {
        let path = self.key(name)?;
        if expires.is_zero() || expires > MAX_PRESIGN {
            return Err(Error::Other {
                what: format!(
                    "presigning {name} in {self}: the validity must be between 1 second and 7 days, not {expires:?}"
                ),
                source: None,
            });
        }
        let url = self
            .shared
            .store
            .signed_url(http::Method::GET, &path, expires)
            .await
            .map_err(|e| self.shared.error(format!("presigning {name} in {self}"), e))?;
        Ok(url.to_string())
    }
}

/// `AlreadyExists` if `path` exists, asked through `client` (the one without
/// retries where the caller's retry layer can retry, else the upload client).
async fn check_absent(shared: &Shared, client: &AmazonS3, name: &str, path: &Path) -> Result<()> {
    match client.head(path).await {
        Ok(_) => Err(Error::AlreadyExists {
            what: format!("object {name} in {}", shared.location),
        }),
        // A missing bucket also answers a HEAD with a bare 404: the upload
        // itself will say which it is.
        Err(e) if Meaning::of(&e) == Meaning::NotFound => Ok(()),
        // Write-only credentials (a common backup policy) may not HEAD; and
        // a HEAD's 403 has no body to tell rejected credentials apart. The
        // upload's own requests say which; Create then rests on If-None-Match.
        Err(e) if Meaning::of(&e) == Meaning::PermissionDenied => {
            tracing::debug!(%name, storage = %shared.location, error = %e,
                "cannot check whether the object exists before a Create upload");
            Ok(())
        }
        Err(e) => Err(shared.error(
            format!("checking whether {name} exists in {}", shared.location),
            e,
        )),
    }
}

fn new_part_buffer() -> PutPayloadMut {
    PutPayloadMut::new().with_block_size(COPY_BELOW)
}

// ---------------------------------------------------------------------------
// Uploads

/// A streaming upload: a single PUT for what fits in one part, a multipart
/// upload beyond.
struct S3Upload {
    shared: Arc<Shared>,
    path: Path,
    name: String,
    mode: PutMode,
    part_size: usize,
    /// The part being filled.
    buffer: PutPayloadMut,
    /// Started when the first part is full.
    multipart: Option<Box<dyn MultipartUpload>>,
    /// The part being sent, in a task of its own so that it progresses while
    /// the caller fills the next one.
    in_flight: Option<JoinHandle<object_store::Result<()>>>,
    /// Parts started.
    parts: u64,
    written: u64,
    /// A `write` future was dropped half-way: what was written is unknown,
    /// so the upload may not complete.
    write_cancelled: bool,
    /// Completed or aborted: nothing left to clean up.
    finished: bool,
}

impl S3Upload {
    fn doing(&self) -> String {
        format!("uploading {} to {}", self.name, self.shared.location)
    }

    /// Sends the full buffer as the next part, once the previous part is
    /// through: at most two parts are ever held.
    async fn send_part(&mut self) -> Result<()> {
        self.wait_in_flight().await?;
        if self.parts == MAX_PARTS {
            return Err(Error::Other {
                what: format!(
                    "{}: the object outgrew 10,000 parts of {} MiB ({} GiB); give the expected size \
                     (size hint) so that larger parts are chosen",
                    self.doing(),
                    self.part_size as u64 / MIB,
                    (self.part_size as u64 * MAX_PARTS) >> 30
                ),
                source: None,
            });
        }
        if self.multipart.is_none() {
            let upload = self
                .shared
                .uploads
                .put_multipart_opts(&self.path, PutMultipartOptions::default())
                .await
                .map_err(|e| self.shared.error(self.doing(), e))?;
            self.multipart = Some(upload);
        }
        let payload: PutPayload = std::mem::replace(&mut self.buffer, new_part_buffer()).freeze();
        let multipart = self.multipart.as_mut().expect("started above");
        self.in_flight = Some(tokio::spawn(multipart.put_part(payload)));
        self.parts += 1;
        Ok(())
    }

    async fn wait_in_flight(&mut self) -> Result<()> {
        let Some(handle) = &mut self.in_flight else {
            return Ok(());
        };
        // Awaited through a reference: if this future is dropped, the handle
        // stays for `abort` or `Drop` to wait for.
        let outcome = handle.await;
        self.in_flight = None;
        match outcome {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(self.shared.error(self.doing(), e)),
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(e) => Err(Error::Other {
                what: format!("{}: the part upload task was cancelled", self.doing()),
                source: Some(Box::new(e)),
            }),
        }
    }

    /// Aborts the multipart upload (if any) after a failure, and returns the
    /// failure.
    async fn fail(&mut self, e: Error) -> Error {
        if let Err(abort) = self.abort_multipart().await {
            tracing::warn!(name = %self.name, storage = %self.shared.location, error = %abort,
                "could not abort a failed multipart upload; its parts stay until the bucket's lifecycle rule removes them");
        }
        e
    }

    async fn abort_multipart(&mut self) -> Result<()> {
        self.finished = true;
        // Let the part in flight end first, so that the abort removes it too.
        if let Some(handle) = self.in_flight.take() {
            let _ = handle.await;
        }
        match self.multipart.take() {
            Some(mut upload) => upload.abort().await.map_err(|e| {
                self.shared.error(
                    format!(
                        "aborting the upload of {} to {}",
                        self.name, self.shared.location
                    ),
                    e,
                )
            }),
            None => Ok(()),
        }
    }

    async fn write_inner(&mut self, mut chunk: Bytes) -> Result<()> {
        while !chunk.is_empty() {
            let room = self.part_size - self.buffer.content_length();
            let piece = if chunk.len() > room {
                chunk.split_to(room)
            } else {
                std::mem::take(&mut chunk)
            };
            self.written += piece.len() as u64;
            if piece.len() < COPY_BELOW {
                self.buffer.extend_from_slice(&piece);
            } else {
                self.buffer.push(piece);
            }
            if self.buffer.content_length() == self.part_size {
                self.send_part().await?;
            }
        }
        Ok(())
    }

    async fn complete_inner(&mut self) -> Result<()> {
        if self.multipart.is_none() {
            // Everything fits in one part: one PUT, conditional for Create.
            let payload = std::mem::replace(&mut self.buffer, new_part_buffer()).freeze();
            let mode = match self.mode {
                PutMode::Overwrite => object_store::PutMode::Overwrite,
                PutMode::Create => object_store::PutMode::Create,
            };
            let result = self
                .shared
                .uploads
                .put_opts(&self.path, payload, mode.into())
                .await;
            return result
                .map(drop)
                .map_err(|e| self.shared.error(self.doing(), e));
        }
        if self.buffer.content_length() > 0 {
            // The last part may be smaller than 5 MiB.
            self.send_part().await?;
        }
        self.wait_in_flight().await?;
        if self.mode == PutMode::Create {
            // Inside the upload: nothing above retries this HEAD.
            check_absent(&self.shared, &self.shared.uploads, &self.name, &self.path).await?;
        }
        let upload = self.multipart.as_mut().expect("multipart upload started");
        upload
            .complete()
            .await
            .map_err(|e| self.shared.error(self.doing(), e))?;
        self.multipart = None;
        Ok(())
    }
}

#[async_trait]
impl Upload for S3Upload {
    async fn write(&mut self, chunk: Bytes) -> Result<()> {
        if self.finished {
            return Err(Error::Other {
                what: format!("{}: the upload already failed", self.doing()),
                source: None,
            });
        }
        self.write_cancelled = true;
        let outcome = self.write_inner(chunk).await;
        self.write_cancelled = false;
        match outcome {
            Ok(()) => Ok(()),
            Err(e) => Err(self.fail(e).await),
        }
    }

    async fn complete(mut self: Box<Self>) -> Result<ObjectMeta> {
        if self.finished || self.write_cancelled {
            let e = Error::Other {
                what: format!(
                    "{}: a write failed or was cancelled; start the upload again",
                    self.doing()
                ),
                source: None,
            };
            return Err(self.fail(e).await);
        }
        match self.complete_inner().await {
            Ok(()) => {
                self.finished = true;
                Ok(ObjectMeta {
                    name: self.name.clone(),
                    size: self.written,
                    modified: None,
                })
            }
            Err(e) => Err(self.fail(e).await),
        }
    }

    async fn abort(mut self: Box<Self>) -> Result<()> {
        self.abort_multipart().await
    }
}

impl Drop for S3Upload {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        let Some(mut upload) = self.multipart.take() else {
            return; // nothing was sent
        };
        let in_flight = self.in_flight.take();
        let (name, location) = (self.name.clone(), self.shared.location.clone());
        // Drop cannot wait: the abort runs as a task of its own. Without a
        // runtime (or if it shuts down first) the parts stay, invisible,
        // until the bucket's lifecycle rule removes them.
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(async move {
                    if let Some(handle) = in_flight {
                        let _ = handle.await;
                    }
                    if let Err(e) = upload.abort().await {
                        tracing::warn!(%name, %location, error = %e,
                            "could not abort an abandoned multipart upload; its parts stay until the bucket's lifecycle rule removes them");
                    }
                });
            }
            Err(_) => tracing::warn!(%name, %location,
                "an abandoned multipart upload could not be aborted (no async runtime); its parts stay until the bucket's lifecycle rule removes them"),
        }
    }
}

pub(crate) fn open(url: &str) -> Result<Arc<dyn Storage>> {
    Ok(Arc::new(S3Storage::from_url(url)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_fit_in_10000_and_are_at_least_5_mib() {
        const GIB: u64 = 1 << 30;
        const TIB: u64 = 1 << 40;
        for size in [
            0,
            1,
            MIB,
            5 * MIB,
            16 * MIB + 1,
            50 * GIB,
            1000 * GIB,
            5 * TIB,
        ] {
            let part = part_size(Some(size));
            assert!(part >= MIN_PART, "{size}: {part}");
            assert!(part <= MAX_PART, "{size}: {part}");
            assert_eq!(part % MIB, 0, "{size}: {part}");
            assert!(size.div_ceil(part) <= MAX_PARTS, "{size}: {part}");
            // The 10 % margin: an image a tenth larger than hinted still fits.
            assert!(
                (size + size / 10).div_ceil(part) <= MAX_PARTS,
                "{size}: {part}"
            );
        }
        assert_eq!(part_size(Some(0)), 5 * MIB);
        assert_eq!(part_size(Some(MIB)), 5 * MIB);
        assert_eq!(part_size(Some(50 * GIB)), 7 * MIB);
        assert_eq!(part_size(Some(5 * TIB)), 641 * MIB);
        assert_eq!(part_size(None), 16 * MIB);
        // Without a hint: the documented ceiling.
        assert_eq!(DEFAULT_PART * MAX_PARTS, 160_000 * MIB);
        // Absurd hints stay within S3's limits instead of overflowing.
        assert_eq!(part_size(Some(u64::MAX)), MAX_PART);
    }

    #[test]
    fn urls_parse_and_refuse_credentials() {
        let p =
            parse_url("s3://backups/site-1/gw?endpoint=http%3A%2F%2F127.0.0.1%3A9000&region=eu-1")
                .unwrap();
        assert_eq!(
            p,
            ParsedUrl {
                bucket: "backups".into(),
                prefix: "site-1/gw".into(),
                endpoint: Some("http://127.0.0.1:9000".into()),
                region: Some("eu-1".into()),
                profile: None,
            }
        );
        let p = parse_url("s3://b?endpoint=https://s3.example.net/&profile=nas").unwrap();
        assert_eq!((p.prefix.as_str(), p.profile.as_deref()), ("", Some("nas")));

        for (url, reason) in [
            ("s3://AKID:s3cret@bucket/p", "do not belong in the URL"),
            (
                "s3://bucket/p?endpoint=https://AKID:s3cret@host",
                "do not belong in the endpoint",
            ),
            ("s3://bucket/p?endpoint=ftp://host", "must be an https://"),
            (
                "s3://bucket/p?secret=x",
                "unknown query parameter \"secret\"",
            ),
            ("s3://bucket/p?region=a&region=b", "given twice"),
            ("s3://bucket/p?region=", "has no value"),
            ("file:///x", "not an s3:// URL"),
        ] {
            match parse_url(url) {
                Err(Error::InvalidUrl {
                    url: shown,
                    reason: got,
                }) => {
                    assert!(got.contains(reason), "{url}: {got}");
                    assert!(
                        !shown.contains("s3cret") && !got.contains("s3cret"),
                        "{shown} {got}"
                    );
                }
                other => panic!("{url}: {other:?}"),
            }
        }
        assert_eq!(
            redact_url("s3://k:s@b/p?endpoint=https://k:s@h:1/x&region=r"),
            "s3://***@b/p?endpoint=https://***@h:1/x&region=r"
        );
    }

    #[test]
    fn prefixes_and_names() {
        assert_eq!(normalize_prefix("/a/b/").unwrap(), "a/b");
        assert_eq!(normalize_prefix("").unwrap(), "");
        assert!(normalize_prefix("a//b").is_err());
        assert!(normalize_prefix("a/../b").is_err());
        for bad in ["", "/a", "a/", "a//b", ".", "a/../b", "a\\b", "a\0b"] {
            assert!(!is_valid_name(bad), "{bad:?}");
        }
        assert!(is_valid_name("site/gw-1.bkp"));
    }

    #[test]
    fn profiles_are_read_from_ini_sections() {
        let text = "\
# comment
[default]
aws_access_key_id = AKIDDEFAULT
aws_secret_access_key = secret-default

[nas]
aws_access_key_id=AKIDNAS
aws_secret_access_key=secret=with=equals
; comment
aws_session_token = tok

[profile nas]
region = eu-2
";
        let nas = ini_section(text, "nas").unwrap();
        assert_eq!(
            nas,
            [
                ("aws_access_key_id".to_owned(), "AKIDNAS".to_owned()),
                (
                    "aws_secret_access_key".to_owned(),
                    "secret=with=equals".to_owned()
                ),
                ("aws_session_token".to_owned(), "tok".to_owned()),
            ]
        );
        assert_eq!(ini_section(text, "profile nas").unwrap()[0].1, "eu-2");
        assert_eq!(ini_section(text, "default").unwrap().len(), 2);
        assert!(ini_section(text, "missing").is_none());
    }

    #[test]
    fn error_texts_are_read_for_codes_and_statuses() {
        let body = "Server returned non-2xx status code: 403 Forbidden: <?xml version=\"1.0\"?><Error><Code>SignatureDoesNotMatch</Code></Error>";
        assert_eq!(s3_code(body), Some("SignatureDoesNotMatch"));
        assert_eq!(http_status(body), Some(403));
        assert_eq!(http_status("no status"), None);
        let e = object_store::Error::PermissionDenied {
            path: "x".into(),
            source: body.into(),
        };
        assert_eq!(
            Meaning::of(&e),
            Meaning::Unauthenticated(Some("SignatureDoesNotMatch".into()))
        );
        let e = object_store::Error::Generic {
            store: "S3",
            source: "Error performing list request: Server returned non-2xx status code: 404 Not Found: <Error><Code>NoSuchBucket</Code></Error>".into(),
        };
        assert_eq!(Meaning::of(&e), Meaning::NoSuchBucket);
        let e = object_store::Error::Generic {
            store: "S3",
            source: "Server returned non-2xx status code: 503 Service Unavailable: ".into(),
        };
        assert_eq!(Meaning::of(&e), Meaning::Transient);
        let e = object_store::Error::Generic {
            store: "S3",
            source: Box::new(HttpError::new(
                HttpErrorKind::Connect,
                io::Error::other("refused"),
            )),
        };
        assert_eq!(Meaning::of(&e), Meaning::Transient);
    }

    #[test]
    fn secrets_stay_out_of_debug_and_display() {
        let store = S3Storage::builder()
            .bucket("b")
            .prefix("p/")
            .endpoint("http://127.0.0.1:1")
            .credentials("AKIDVISIBLE", "TOPSECRET")
            .session_token("TOKENSECRET")
            .build()
            .unwrap();
        let shown = format!("{store} {store:?}");
        assert_eq!(store.to_string(), "s3://b/p?endpoint=http://127.0.0.1:1");
        assert!(
            !shown.contains("TOPSECRET") && !shown.contains("TOKENSECRET"),
            "{shown}"
        );
        let builder = S3Storage::builder().credentials("AKID", "TOPSECRET");
        assert!(!format!("{builder:?}").contains("TOPSECRET"));
    }
}
