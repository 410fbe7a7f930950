//! [`S3StorageBuilder`]: the settings of an [`S3Storage`], from a URL, the
//! environment or one by one.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use object_store::aws::AmazonS3Builder;
use object_store::{BackoffConfig, ClientOptions, RetryConfig};

use super::core::{S3Storage, Shared};
use super::credential::{AwsEnv, Credentials};
use super::url::{check_bucket, check_endpoint, normalize_prefix, parse_url};
use crate::{Error, Result};

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
    pub(super) bucket: &'a str,
    pub(super) prefix: &'a str,
    pub(super) endpoint: Option<&'a str>,
    pub(super) region: Option<&'a str>,
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
