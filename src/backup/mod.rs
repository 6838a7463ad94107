//! Backup and restore (`custodia backup`, `backup verify`, `restore`, scheduled backups).
//!
//! A backup is one file ([`format`]): the records as stored (sealed values, wrapped data keys,
//! blind-index entries, never decrypted), the vault's metadata ([`crate::vault::META_NAMES`]),
//! the newest signed checkpoint, every audit event as stored with its seq, the log's verifier
//! key, and a trailer with the tree size, root, a SHA-256 checksum and a signature by the
//! vault's audit key over all of them. No plaintext value, no unwrapped key; epoch keys are
//! never in the store, so never in a backup.
//!
//! It is taken online through the [`crate::store::Store`] interface ([`take`]), so it works on
//! sled and PostgreSQL alike; consistency is defined by the log (see [`take`]). A running sled
//! server holds its store locked, so `custodia backup` asks the server for the file over a Unix
//! socket in the data directory ([`control`]) and opens the store itself only when no server
//! answers there.
//!
//! A restore ([`restore`]) first checks the file's signature under the vault's own key (from
//! the configured master key, never the key the file names). It re-applies every erasure and
//! retention purge in the backup's log and in the newer `audit export` (`--log`, or an explicit
//! `--without-log`), by not importing what they removed; re-applies later payment-method
//! deletions, objections and restrictions, and restricts processing (Art. 18) for a consent
//! withdrawal it cannot rebuild; re-appends the export's newer events so the log stays
//! consistent with every checkpoint signed before the loss; and records a `store.restore` event.

pub mod control;
pub mod format;
pub mod restore;
pub mod schedule;
pub mod take;

use std::io::BufReader;
use std::path::{Path, PathBuf};

pub use format::{Invalid, Summary};
pub use take::{Taken, take};

use crate::audit::AuditError;
use crate::audit::checkpoint::VerifierKey;
use crate::store::StoreError;

/// Why a backup or a restore stopped.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The audit log failed (signing the checkpoint, or recording the restore).
    #[error(transparent)]
    Audit(#[from] AuditError),
    /// A file or the control socket failed.
    #[error("{0}")]
    Io(String),
    /// The backup file failed a check.
    #[error("the backup does not verify: {0}")]
    Invalid(#[from] Invalid),
    /// The operation is refused (target not empty, a different history…); nothing changed.
    #[error("{0}")]
    Refused(String),
    /// Re-appending the log or storing a checkpoint failed.
    #[error(transparent)]
    Copy(#[from] crate::copy::CopyError),
}

/// Verifies the backup file at `path` offline (every check of [`format::Reader`]); `pinned`,
/// if given, must be the key the file names.
pub fn verify(path: &Path, pinned: Option<&VerifierKey>) -> Result<Summary, BackupError> {
    let file = std::fs::File::open(path).map_err(|e| BackupError::Io(format!("{}: {e}", path.display())))?;
    Ok(format::Reader::new(BufReader::with_capacity(1 << 20, file), pinned.cloned()).verify()?)
}

/// Creates a new temporary file next to `path` (same directory, so a rename is atomic), named
/// `.<name>.partial-<pid>-<random>`, mode 0600 from its creation. `create_new` (`O_CREAT |
/// O_EXCL`) never opens a file or follows a symlink already at the name, so another local user
/// cannot have the backup written into an inode they own; a taken name is retried with
/// another random part.
pub(crate) fn create_partial(path: &Path) -> Result<(PathBuf, std::fs::File), BackupError> {
    use std::os::unix::fs::OpenOptionsExt;
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let mut last = None;
    for _ in 0..8 {
        let mut random = [0u8; 8];
        crate::crypto::fill_random(&mut random)
            .map_err(|e| BackupError::Io(format!("naming a temporary file: {e}")))?;
        let suffix: String = random.iter().map(|b| format!("{b:02x}")).collect();
        let partial = path.with_file_name(format!(".{name}{PARTIAL}{}-{suffix}", std::process::id()));
        match std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&partial) {
            Ok(file) => return Ok((partial, file)),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => last = Some(e),
            Err(e) => return Err(BackupError::Io(format!("creating {}: {e}", partial.display()))),
        }
    }
    Err(BackupError::Io(format!(
        "creating a temporary file beside {}: {}",
        path.display(),
        last.map(|e| e.to_string()).unwrap_or_default()
    )))
}

/// What a temporary backup file's name holds after `.<name>` (see [`create_partial`]).
pub(crate) const PARTIAL: &str = ".partial-";

/// Makes the finished temporary file durable and moves it to `path`: fsync the file, rename,
/// fsync the directory.
pub(crate) fn commit_file(partial: &Path, path: &Path) -> Result<(), BackupError> {
    let io = |what: &str, e: std::io::Error| BackupError::Io(format!("{what} {}: {e}", path.display()));
    std::fs::File::open(partial).and_then(|f| f.sync_all()).map_err(|e| io("syncing", e))?;
    std::fs::rename(partial, path).map_err(|e| io("renaming into", e))?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(|e| io("syncing the directory of", e))?;
    }
    Ok(())
}

/// Writes a backup of `vault` to `path`: a temporary file, verified, then made durable and
/// renamed, so `path` only ever holds a complete, verified backup.
pub async fn write_file(vault: &crate::vault::Vault, path: &Path) -> Result<(Taken, Summary), BackupError> {
    let (partial, file) = create_partial(path)?;
    let result = async {
        let file = tokio::fs::File::from_std(file);
        let taken = take(vault.store().as_ref(), vault.audit_log(), file).await?;
        let checking = partial.clone();
        let summary = blocking(move || verify(&checking, None)).await?;
        commit_file(&partial, path)?;
        Ok((taken, summary))
    }
    .await;
    if result.is_err() {
        let _ = std::fs::remove_file(&partial);
    }
    result
}

/// Refuses a backup path (`--out`, or the scheduled backup directory) inside the data
/// directory: backups keep the wrapped keys of customers erased since, and README "Erasure"
/// promises that after an erasure no file in the live data directory opens the customer.
/// Paths are compared after resolving what exists of them (symlinks, `..`).
pub fn refuse_inside_data_dir(data_dir: &Path, path: &Path) -> Result<(), BackupError> {
    let resolve = |p: &Path| -> PathBuf {
        // Lexically without `.` and `..`, then the longest existing ancestor canonicalised
        // (symlinks resolved) plus the rest as given.
        let absolute = std::path::absolute(p).unwrap_or_else(|_| p.to_owned());
        let mut plain = PathBuf::new();
        for part in absolute.components() {
            match part {
                std::path::Component::CurDir => {}
                std::path::Component::ParentDir => {
                    plain.pop();
                }
                other => plain.push(other),
            }
        }
        let mut existing = plain.as_path();
        let mut rest = Vec::new();
        loop {
            if let Ok(real) = existing.canonicalize() {
                return rest.iter().rev().fold(real, |acc: PathBuf, part| acc.join(part));
            }
            match (existing.parent(), existing.file_name()) {
                (Some(parent), Some(name)) => {
                    rest.push(name.to_owned());
                    existing = parent;
                }
                _ => return plain,
            }
        }
    };
    if resolve(path).starts_with(resolve(data_dir)) {
        return Err(BackupError::Refused(format!(
            "{} is inside the data directory {}: keep backups elsewhere (they hold the wrapped keys of \
             customers erased since, which the data directory must not)",
            path.display(),
            data_dir.display()
        )));
    }
    Ok(())
}

/// Runs file reading off the async workers.
pub(crate) async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, BackupError> + Send + 'static,
) -> Result<T, BackupError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| BackupError::Io(format!("a backup file task stopped: {e}")))?
}
