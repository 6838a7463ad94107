//! All cryptography lives here: key types, envelope encryption, blind indexes, random bytes.
//!
//! Callers hand plaintext in and get sealed bytes out (and back); no other module names an
//! algorithm. Key material never leaves this module in a printable or serialisable form: key
//! types zeroize on drop and their `Debug` prints `[redacted]`.
//!
//! Algorithm choices (see `DEPENDENCIES.md`): AES-256-GCM from RustCrypto's `aes-gcm` with its
//! `zeroize` feature, because it wipes expanded key schedules on drop (ring's AEAD keys do not);
//! the cost difference to ring (~0.3 µs per 1 KiB field) is noise next to an HTTP request.
//! HMAC-SHA-256, SHA-256, Ed25519 (audit checkpoints) and the CSPRNG come from `ring`. A master
//! key may instead live in a PKCS#11 token (`pkcs11.rs`), which then runs its AES-256-GCM.

mod blind_index;
mod envelope;
mod epoch;
mod keys;
mod pkcs11;
mod pseudonym;
mod signing;

pub use blind_index::{BlindIndex, BlindIndexKey};
pub use envelope::{Sealed, WrappedKey};
pub use epoch::{
    DataKeyring, EpochError, EpochFile, EpochInfo, EpochKey, MissingFile, OpenReport, Refreshed, SLOT_LEN,
};
pub use keys::{DataKey, KeyId, MasterKey, MasterKeyring, Plaintext, SystemKeys, WrappedSystemKeys};
pub use pkcs11::{
    KEY_SETTING as PKCS11_KEY_SETTING, MODULE_SETTING as PKCS11_MODULE_SETTING,
    PIN_FILE_SETTING as PKCS11_PIN_FILE_SETTING, PIN_SETTING as PKCS11_PIN_SETTING, Pkcs11Config,
    Pkcs11Token, TOKEN_SETTING as PKCS11_TOKEN_SETTING,
};
pub use pseudonym::{MemberKey, PseudonymKey};
pub use signing::{SigningKey, verify_ed25519};

/// A cryptographic operation failed.
///
/// Deliberately coarse: a caller (and so an attacker) learns only that opening failed, never
/// whether it was the key, the nonce, the associated data or the tag.
#[derive(Debug, thiserror::Error)]
pub enum CryptoError {
    /// Authenticated decryption failed, or the sealed bytes are malformed.
    #[error("decryption failed")]
    Open,
    /// A value was wrapped by a master key version this process was not given.
    #[error("no master key with id {0} is configured")]
    UnknownMasterKey(KeyId),
    /// A data key was wrapped under an epoch key that is not in the epoch-key file: destroyed
    /// (the customer's data in this copy is shredded), or the wrong file is configured.
    #[error("no epoch key with id {0} (destroyed, or not in the configured epoch-key file)")]
    UnknownEpochKey(KeyId),
    /// The operating system's random generator failed.
    #[error("random generator failed")]
    Random,
    /// Key material from configuration has the wrong length or encoding.
    #[error("invalid key material: {0}")]
    InvalidKey(&'static str),
    /// A PKCS#11 token (HSM) could not be used: the message names the setting at fault or the
    /// token, key and PKCS#11 return value; never the PIN.
    #[error("PKCS#11: {0}")]
    Pkcs11(String),
}

/// Runs `work` on tokio's blocking pool and waits for it without holding an async worker: the
/// way async code calls anything that may reach a PKCS#11 token (every `cryptoki` call blocks,
/// for a network HSM a round trip or a reconnect). A panic in `work` is resumed here.
pub async fn off_async_workers<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> T {
    let task = tokio::task::spawn_blocking(move || pkcs11::on_blocking_thread(work));
    match task.await {
        Ok(out) => out,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        // invariant: blocking tasks are not cancelled (only a runtime shutdown drops them).
        Err(e) => panic!("a blocking task was cancelled: {e}"),
    }
}

/// Fills `buf` with bytes from the operating system's CSPRNG.
pub fn fill_random(buf: &mut [u8]) -> Result<(), CryptoError> {
    use ring::rand::SecureRandom;
    ring::rand::SystemRandom::new().fill(buf).map_err(|_| CryptoError::Random)
}

/// `n` random bytes, e.g. for opaque tokens.
pub fn random_bytes<const N: usize>() -> Result<[u8; N], CryptoError> {
    let mut out = [0u8; N];
    fill_random(&mut out)?;
    Ok(out)
}

/// SHA-256 over data fed in pieces (the backup file's checksum, which covers hundreds of MB).
pub struct Sha256Stream(ring::digest::Context);

impl Default for Sha256Stream {
    fn default() -> Self {
        Sha256Stream(ring::digest::Context::new(&ring::digest::SHA256))
    }
}

impl Sha256Stream {
    /// Feeds `data`.
    pub fn update(&mut self, data: &[u8]) {
        self.0.update(data);
    }

    /// The digest of everything fed so far, as 64 lowercase hex digits.
    pub fn hex(&self) -> String {
        self.0.clone().finish().as_ref().iter().map(|b| format!("{b:02x}")).collect()
    }
}

/// SHA-256 of `data` (audit tree hashing and key ids).
pub fn sha256(parts: &[&[u8]]) -> [u8; 32] {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    for part in parts {
        ctx.update(part);
    }
    let digest = ctx.finish();
    let mut out = [0u8; 32];
    out.copy_from_slice(digest.as_ref());
    out
}
