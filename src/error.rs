//! The crate-level error: what can stop the server from starting or a CLI command from
//! finishing. Knows nothing of HTTP (request errors are `vault::VaultError`).

use crate::audit::AuditError;
use crate::auth::KeyConfigError;
use crate::config::ConfigError;
use crate::crypto::{CryptoError, EpochError};
use crate::policy::PolicyError;
use crate::store::StoreError;

/// A startup or command failure. Messages name what is wrong and never contain key material.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Configuration could not be loaded.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The policy files are invalid.
    #[error("policy files are invalid:\n{0}")]
    Policy(#[from] PolicyError),
    /// Storage failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// `custodia store copy` stopped.
    #[error(transparent)]
    Copy(#[from] crate::copy::CopyError),
    /// A backup or restore stopped.
    #[error(transparent)]
    Backup(#[from] crate::backup::BackupError),
    /// The audit log could not be opened.
    #[error(transparent)]
    Audit(#[from] AuditError),
    /// A key could not be used.
    #[error(transparent)]
    Crypto(#[from] CryptoError),
    /// The epoch-key file could not be used.
    #[error("cannot start: {0}")]
    Epochs(#[from] EpochError),
    /// Token verification keys could not be loaded.
    #[error(transparent)]
    JwtKeys(#[from] KeyConfigError),
    /// The TLS certificate, key or client CA cannot be used.
    #[error("TLS: {0}")]
    Tls(#[from] crate::listener::TlsError),
    /// Plain HTTP on a non-loopback address without the operator's consent.
    #[error("{0}")]
    Plaintext(String),
    /// Required keys are not configured.
    #[error("cannot start: {0}")]
    MissingKeys(String),
    /// The configured master key does not open this data directory.
    #[error(
        "the configured master key ({configured}) is not the one this data directory was sealed with ({stored})"
    )]
    WrongMasterKey {
        /// The id of the configured key.
        configured: String,
        /// The id(s) the stored keys are wrapped under.
        stored: String,
    },
    /// Filesystem or network failure.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The OS error.
        source: std::io::Error,
    },
}

impl Error {
    /// Wraps an I/O error with what was being done.
    pub fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
        let context = context.into();
        move |source| Error::Io { context, source }
    }
}
