use std::fmt;

use argon2::{Algorithm, Argon2, Params, Version};
use zeroize::Zeroizing;

use crate::Error;

/// Minimum passphrase length, in characters (not bytes).
pub const MIN_PASSPHRASE_CHARS: usize = 8;

/// The domain master secret. Held in zeroizing memory; `Debug` never shows it.
pub struct Passphrase(Zeroizing<String>);

impl Passphrase {
    /// Accepts a passphrase of at least [`MIN_PASSPHRASE_CHARS`] characters.
    /// A single trailing newline (from a secret file) is *not* stripped here:
    /// callers decide.
    pub fn new(secret: String) -> Result<Passphrase, Error> {
        // Wrap first so that a rejected secret is wiped too.
        let secret = Zeroizing::new(secret);
        if secret.chars().count() < MIN_PASSPHRASE_CHARS {
            return Err(Error::PassphraseTooShort {
                min: MIN_PASSPHRASE_CHARS,
            });
        }
        Ok(Passphrase(secret))
    }

    /// The passphrase bytes (UTF-8), for key derivation.
    pub fn as_bytes(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

impl fmt::Debug for Passphrase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Passphrase(<redacted>)")
    }
}

const MAX_MEMORY_KIB: u32 = 4 * 1024 * 1024;
const MAX_ITERATIONS: u32 = 16;
const MAX_PARALLELISM: u32 = 16;

/// Argon2id (version 0x13) cost parameters, stored in every keyslot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KdfParams {
    /// Memory in KiB.
    pub memory_kib: u32,
    /// Number of passes.
    pub iterations: u32,
    /// Degree of parallelism (lanes).
    pub parallelism: u32,
}

impl KdfParams {
    /// Writer default: m = 256 MiB, t = 3, p = 4.
    pub const DEFAULT: KdfParams = KdfParams {
        memory_kib: 256 * 1024,
        iterations: 3,
        parallelism: 4,
    };
    /// RFC 9106's second recommendation, for small appliances: m = 64 MiB, t = 3, p = 4.
    pub const SMALL: KdfParams = KdfParams {
        memory_kib: 64 * 1024,
        iterations: 3,
        parallelism: 4,
    };
    /// The OWASP floor (m = 19 MiB, t = 2, p = 1): the cheapest a reader accepts. For tests.
    pub const MINIMUM: KdfParams = KdfParams {
        memory_kib: 19 * 1024,
        iterations: 2,
        parallelism: 1,
    };

    /// Checks the bounds a reader enforces before running Argon2: at least
    /// OWASP's floor (m ≥ 19 MiB with t ≥ 2, or m ≥ 46 MiB with t ≥ 1), at most
    /// m ≤ 4 GiB, t ≤ 16, 1 ≤ p ≤ 16. Fails with [`Error::KdfParamsOutOfBounds`].
    pub fn validate(&self) -> Result<(), Error> {
        let KdfParams {
            memory_kib: m,
            iterations: t,
            parallelism: p,
        } = *self;
        let refuse = |what: String| Err(Error::KdfParamsOutOfBounds(what));
        if m > MAX_MEMORY_KIB {
            return refuse(format!(
                "memory {m} KiB is above the cap of 4 GiB ({MAX_MEMORY_KIB} KiB)"
            ));
        }
        if t > MAX_ITERATIONS {
            return refuse(format!(
                "{t} iterations is above the cap of {MAX_ITERATIONS}"
            ));
        }
        if p == 0 || p > MAX_PARALLELISM {
            return refuse(format!("parallelism {p} is outside 1..={MAX_PARALLELISM}"));
        }
        let above_floor = (m >= 19 * 1024 && t >= 2) || (m >= 46 * 1024 && t >= 1);
        if !above_floor {
            return refuse(format!(
                "memory {m} KiB with {t} iterations is below the floor (19 MiB with t >= 2, or 46 MiB with t >= 1)"
            ));
        }
        Ok(())
    }

    /// Runs Argon2id over the passphrase and a 16-byte salt, giving 32 bytes.
    /// Validates the parameters first.
    pub fn derive(
        &self,
        passphrase: &Passphrase,
        salt: &[u8; 16],
    ) -> Result<Zeroizing<[u8; 32]>, Error> {
        // Before anything is allocated: a crafted header must not make us run
        // a 4 GiB or hour-long Argon2.
        self.validate()?;
        let params = Params::new(self.memory_kib, self.iterations, self.parallelism, Some(32))
            .map_err(|e| Error::KdfParamsOutOfBounds(e.to_string()))?;
        let mut out = Zeroizing::new([0u8; 32]);
        Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
            .hash_password_into(passphrase.as_bytes(), salt, out.as_mut())
            .map_err(|e| Error::KdfParamsOutOfBounds(e.to_string()))?;
        Ok(out)
    }
}

impl Default for KdfParams {
    fn default() -> Self {
        KdfParams::DEFAULT
    }
}
