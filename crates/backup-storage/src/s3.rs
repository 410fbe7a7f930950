//! `s3://bucket/prefix?endpoint=…&region=…`: any S3-compatible store.
use std::sync::Arc;

use crate::{Result, Storage};

/// An S3-compatible bucket (placeholder: being implemented).
#[derive(Debug)]
pub struct S3Storage {}

pub(crate) fn open(url: &str) -> Result<Arc<dyn Storage>> {
    Err(crate::Error::Unsupported { what: format!("{url}: the s3 backend is being implemented") })
}
