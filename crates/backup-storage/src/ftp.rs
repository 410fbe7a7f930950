//! `ftp://user@host:port/path` and `ftps://` (explicit TLS).
use std::sync::Arc;

use crate::{Result, Storage};

/// An FTP server directory (placeholder: being implemented).
#[derive(Debug)]
pub struct FtpStorage {}

pub(crate) fn open(url: &str) -> Result<Arc<dyn Storage>> {
    Err(crate::Error::Unsupported { what: format!("{url}: the ftp backend is being implemented") })
}
