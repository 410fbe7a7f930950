//! [`FtpStorageBuilder`]: the settings of an [`FtpStorage`], from a URL or one by one.

use std::fmt;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use super::core::{FtpStorage, Inner, Password, Tls, CONNECT_TIMEOUT, IO_TIMEOUT};
use super::netrc::find_password;
use super::tls::{pem_roots, system_roots, tls_config};
use super::url::{normalize_dir, parse_url};
use crate::url::{percent_encode, redact};
use crate::{Error, Result};

/// Settings of an [`FtpStorage`].
#[derive(Clone)]
pub struct FtpStorageBuilder {
    tls: bool,
    host: Option<String>,
    port: Option<u16>,
    user: Option<String>,
    password: Option<Password>,
    dir: String,
    ca_pem: Option<Vec<u8>>,
    force_list: bool,
    connect_timeout: Duration,
    io_timeout: Duration,
}

impl Default for FtpStorageBuilder {
    fn default() -> FtpStorageBuilder {
        FtpStorageBuilder {
            tls: false,
            host: None,
            port: None,
            user: None,
            password: None,
            dir: String::new(),
            ca_pem: None,
            force_list: false,
            connect_timeout: CONNECT_TIMEOUT,
            io_timeout: IO_TIMEOUT,
        }
    }
}

impl fmt::Debug for FtpStorageBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FtpStorageBuilder")
            .field("tls", &self.tls)
            .field("host", &self.host)
            .field("port", &self.port)
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "***"))
            .field("dir", &self.dir)
            .field("force_list", &self.force_list)
            .finish_non_exhaustive()
    }
}

impl FtpStorageBuilder {
    /// A builder holding what an `ftp://` or `ftps://` URL says (no password:
    /// set one with [`FtpStorageBuilder::password`], or [`build`] looks it up).
    ///
    /// [`build`]: FtpStorageBuilder::build
    pub fn from_url(url: &str) -> Result<FtpStorageBuilder> {
        let parsed = parse_url(url).map_err(|reason| Error::InvalidUrl {
            url: redact(url),
            reason,
        })?;
        Ok(FtpStorageBuilder {
            tls: parsed.tls,
            host: Some(parsed.host),
            port: Some(parsed.port),
            user: Some(parsed.user),
            dir: parsed.dir,
            ..FtpStorageBuilder::default()
        })
    }

    /// The server's host name or IP address.
    pub fn host(mut self, host: impl Into<String>) -> FtpStorageBuilder {
        self.host = Some(host.into());
        self
    }

    /// The control port (default 21, for ftps:// too: TLS is explicit).
    pub fn port(mut self, port: u16) -> FtpStorageBuilder {
        self.port = Some(port);
        self
    }

    /// The FTP user.
    pub fn user(mut self, user: impl Into<String>) -> FtpStorageBuilder {
        self.user = Some(user.into());
        self
    }

    /// The password; without one, [`FtpStorageBuilder::build`] reads
    /// `BACKUP_FTP_PASSWORD` or `~/.netrc`.
    pub fn password(mut self, password: impl Into<String>) -> FtpStorageBuilder {
        self.password = Some(Password(password.into()));
        self
    }

    /// The storage directory: relative to the login directory, or absolute
    /// when it starts with `/`. It must exist.
    pub fn path(mut self, dir: impl Into<String>) -> FtpStorageBuilder {
        self.dir = dir.into();
        self
    }

    /// Explicit FTPS: `AUTH TLS` on the control connection, `PROT P` data.
    pub fn tls(mut self, on: bool) -> FtpStorageBuilder {
        self.tls = on;
        self
    }

    /// Trusts exactly the CA certificates of this PEM text instead of the
    /// system store (a private CA). Takes effect with [`FtpStorageBuilder::tls`].
    pub fn tls_ca_pem(mut self, pem: impl Into<Vec<u8>>) -> FtpStorageBuilder {
        self.ca_pem = Some(pem.into());
        self
    }

    /// Lists with `LIST` even where the server has `MLSD` (to exercise the
    /// fallback that servers without MLSD get).
    pub fn force_list(mut self, on: bool) -> FtpStorageBuilder {
        self.force_list = on;
        self
    }

    /// The limit on connecting and logging in (default 10 s).
    pub fn connect_timeout(mut self, limit: Duration) -> FtpStorageBuilder {
        self.connect_timeout = limit;
        self
    }

    /// The limit on each reply and on each wait for data (default 60 s).
    pub fn io_timeout(mut self, limit: Duration) -> FtpStorageBuilder {
        self.io_timeout = limit;
        self
    }

    /// The storage; fails if the host or user is missing, no password can be
    /// found, or the TLS trust roots cannot be loaded.
    pub fn build(self) -> Result<FtpStorage> {
        let invalid = |reason: &str| Error::InvalidUrl {
            url: "ftp://…".to_owned(),
            reason: reason.to_owned(),
        };
        let host = self
            .host
            .filter(|h| !h.is_empty())
            .ok_or_else(|| invalid("no FTP host given"))?;
        let user = self
            .user
            .filter(|u| !u.is_empty())
            .ok_or_else(|| invalid("no FTP user given"))?;
        if [host.as_str(), user.as_str(), self.dir.as_str()]
            .iter()
            .any(|s| s.contains(['\r', '\n', '\0']))
        {
            return Err(invalid(
                "the host, user and path may not contain line breaks or NUL",
            ));
        }
        let port = self.port.unwrap_or(21);
        let dir = normalize_dir(&self.dir);
        let scheme = if self.tls { "ftps" } else { "ftp" };
        let shown = format!(
            "{scheme}://{}@{}:{port}/{}",
            percent_encode(user.as_bytes(), false),
            if host.contains(':') {
                format!("[{host}]")
            } else {
                host.clone()
            },
            match dir.strip_prefix('/') {
                Some(abs) => format!("%2F{}", percent_encode(abs.as_bytes(), true)),
                None => percent_encode(dir.as_bytes(), true),
            }
        );
        let password = match self.password {
            Some(p) => p,
            None => find_password(&host, &user, &shown)?,
        };
        let tls = if self.tls {
            let roots = match &self.ca_pem {
                Some(pem) => pem_roots(pem)?,
                None => system_roots()?,
            };
            Some(Tls {
                config: tls_config(roots)?,
                server_name: host.clone(),
            })
        } else {
            None
        };
        Ok(FtpStorage {
            inner: Arc::new(Inner {
                host,
                port,
                user,
                password,
                dir,
                shown,
                tls,
                force_list: self.force_list,
                connect_timeout: self.connect_timeout,
                io_timeout: self.io_timeout,
                mlst: OnceLock::new(),
                prefix: OnceLock::new(),
                idle: Mutex::new(Vec::new()),
            }),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_and_debug_show_no_password() {
        let store = FtpStorage::builder()
            .host("127.0.0.1")
            .port(2121)
            .user("backup")
            .password("s3cret")
            .path("/srv/my backups")
            .build()
            .unwrap();
        assert_eq!(
            store.to_string(),
            "ftp://backup@127.0.0.1:2121/%2Fsrv/my%20backups"
        );
        assert!(!format!("{store:?}").contains("s3cret"));
        let builder = FtpStorage::builder().password("s3cret");
        assert!(!format!("{builder:?}").contains("s3cret"));
        let store = FtpStorage::builder()
            .host("::1")
            .user("u")
            .password("p")
            .path("backups/")
            .build()
            .unwrap();
        assert_eq!(store.to_string(), "ftp://u@[::1]:21/backups");
    }
}
