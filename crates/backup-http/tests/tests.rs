//! The integration tests of backup-http: one test binary, one module per
//! subject. The router is driven in process here; backup-cli's tests drive
//! `backup serve` over TLS with real curl, wget and a browser.

mod router;
mod users_service;
