//! The key operations over an appliance's context (audited, under the
//! operation lock), above the key store of the parent module.
use std::path::Path;
use std::time::Instant;

use backup_crypto::{KeyId, Passphrase};

use super::{check_passphrase, ensure_not_initialized, init_keys, rotate_keys, Rotation};
use crate::context::Context;
use crate::guard::{Operation, RunGuard};
use crate::Result;

/// Appends the audit record of a key operation that runs without an
/// [`Engine`](crate::Engine) — `init`, which comes before the appliance's keys
/// (and perhaps its storage) exist — to the state directory's audit log: the
/// record [`Engine::audit_public`](crate::Engine::audit_public) writes.
pub fn audit_key_operation<T>(
    state_dir: &Path,
    actor: &str,
    operation: Operation,
    target: &str,
    result: &Result<T>,
    started: Instant,
) -> Result<()> {
    let (outcome, error) = match result {
        Ok(_) => ("done", None),
        Err(e) => (crate::error::outcome_of(e), Some(e.to_string())),
    };
    let mut record =
        crate::ops::audit::AuditRecord::new(actor, operation.audit_name(), target, outcome);
    record.duration_ms = started.elapsed().as_millis() as u64;
    record.error = error;
    crate::ops::audit::AuditLog::in_state_dir(state_dir).append(&record)
}

/// `init` through the engine (audited as `key.init`): refuses an appliance
/// that has its secret already before `passphrase` is asked for.
pub(crate) fn init(
    engine: &Context<'_>,
    passphrase: impl FnOnce() -> Result<Passphrase>,
) -> Result<KeyId> {
    let guard = RunGuard::start(engine, Operation::KeyInit, "keyring")?;
    let state = &engine.config.appliance.state_dir;
    let result = ensure_not_initialized(state)
        .and_then(|()| passphrase())
        .and_then(|pass| init_keys(state, &pass, engine.config.encryption.kdf_params()));
    guard.audit_result("keyring", &result, |_| 0);
    result
}

/// Checks the current secret against the keyring (audited as `key.check`).
pub(crate) fn check(
    engine: &Context<'_>,
    current: impl FnOnce() -> Result<Passphrase>,
) -> Result<KeyId> {
    let guard = RunGuard::start(engine, Operation::KeyCheck, "keyring")?;
    let state = &engine.config.appliance.state_dir;
    let result = current().and_then(|pass| check_passphrase(state, &pass));
    guard.audit_result("keyring", &result, |_| 0);
    result
}

/// Replaces the domain master secret (audited as `key.rotate`, every attempt:
/// a current or new secret that cannot be had or used included).
pub(crate) fn rotate(
    engine: &Context<'_>,
    current: impl FnOnce() -> Result<Passphrase>,
    new: impl FnOnce() -> Result<Passphrase>,
) -> Result<Rotation> {
    let guard = RunGuard::start(engine, Operation::KeyRotate, "keyring")?;
    let state = &engine.config.appliance.state_dir;
    let result = current().and_then(|cur| {
        let new = new()?;
        rotate_keys(state, &cur, &new, engine.config.encryption.kdf_params())
    });
    guard.audit_result("keyring", &result, |_| 0);
    result
}
