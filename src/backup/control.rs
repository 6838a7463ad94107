//! The operator's control channel (DESIGN §1: the CLI on the vault's own machine): a Unix
//! socket `control.sock` in the data directory, mode 0600 in a directory of mode 0700, so only
//! the account that runs the server reaches it. No HTTP role is involved.
//!
//! Protocol: the client sends one line, `backup`; the server answers with the backup file's
//! bytes and closes. A backup that fails on the server ends the stream early, which the client
//! sees as a file without a valid trailer. Any other line is answered with `error: …` and closed.
//!
//! This exists because a running sled server holds its store locked: `custodia backup` cannot
//! open it while the server runs. One backup at a time per server.

use std::path::{Path, PathBuf};
use std::sync::Weak;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

use super::{BackupError, Summary, commit_file, create_partial};
use crate::vault::Vault;

/// The socket's file name in the data directory.
pub const SOCKET: &str = "control.sock";
/// The longest command line read.
const MAX_COMMAND: u64 = 64;

/// Removes the socket file when the serving task ends (or is aborted at shutdown).
struct Bound(PathBuf);

impl Drop for Bound {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Listens on `data_dir/control.sock` and answers `backup` with a backup of `vault`. `None`
/// (and a warning) when the socket cannot be bound, e.g. another live server answers on it or
/// the path is too long for a socket address: then `custodia backup` cannot reach this server.
pub fn spawn(vault: Weak<Vault>, data_dir: &Path) -> Option<tokio::task::JoinHandle<()>> {
    let path = data_dir.join(SOCKET);
    if std::os::unix::net::UnixStream::connect(&path).is_ok() {
        tracing::warn!(socket = %path.display(), "another process answers on the control socket; not listening");
        return None;
    }
    // A socket file left by a server that did not stop cleanly.
    let _ = std::fs::remove_file(&path);
    let listener = match UnixListener::bind(&path) {
        Ok(listener) => listener,
        Err(e) => {
            tracing::warn!(socket = %path.display(), error = %e, "cannot listen on the control socket; `custodia backup` will not reach this server");
            return None;
        }
    };
    {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600));
    }
    let bound = Bound(path);
    Some(tokio::spawn(async move {
        let _bound = bound;
        loop {
            let Ok((stream, _)) = listener.accept().await else { continue };
            let Some(vault) = vault.upgrade() else { return };
            serve(&vault, stream).await;
        }
    }))
}

async fn serve(vault: &Vault, stream: UnixStream) {
    let (read, mut write) = stream.into_split();
    let mut command = String::new();
    let mut reader = BufReader::new(read.take(MAX_COMMAND));
    if reader.read_line(&mut command).await.is_err() {
        return;
    }
    match command.trim_end() {
        "backup" => {
            let started = std::time::Instant::now();
            match super::take(vault.store().as_ref(), vault.audit_log(), &mut write).await {
                Ok(taken) => {
                    crate::metric::backup_succeeded("requested", now_seconds());
                    tracing::info!(
                        size = taken.size,
                        records = taken.records,
                        bytes = taken.bytes,
                        ms = started.elapsed().as_millis() as u64,
                        "backup streamed to the control socket"
                    );
                }
                Err(e) => {
                    crate::metric::backup_failed("requested");
                    tracing::error!(error = %e, "backup over the control socket failed");
                }
            }
        }
        _ => {
            let _ = write.write_all(b"error: unknown command (the control socket knows `backup`)\n").await;
        }
    }
    let _ = write.shutdown().await;
}

/// Unix time now, in seconds (for the last-success metric).
pub(crate) fn now_seconds() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

/// Asks the server running over `data_dir` for a backup and writes it to `out` (a temporary
/// file, verified, made durable, renamed). `None` when no server answers on the socket.
pub async fn backup_from_server(data_dir: &Path, out: &Path) -> Result<Option<(Summary, u64)>, BackupError> {
    let path = data_dir.join(SOCKET);
    let mut stream = match UnixStream::connect(&path).await {
        Ok(stream) => stream,
        Err(e)
            if matches!(e.kind(), std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused) =>
        {
            return Ok(None);
        }
        Err(e) => return Err(BackupError::Io(format!("connecting to {}: {e}", path.display()))),
    };
    let (partial, file) = create_partial(out)?;
    let result = async {
        stream
            .write_all(b"backup\n")
            .await
            .map_err(|e| BackupError::Io(format!("asking the server for a backup: {e}")))?;
        let mut file = tokio::fs::File::from_std(file);
        let bytes = tokio::io::copy(&mut stream, &mut file)
            .await
            .map_err(|e| BackupError::Io(format!("receiving the backup: {e}")))?;
        file.flush().await.map_err(|e| BackupError::Io(format!("writing {}: {e}", partial.display())))?;
        let checking = partial.clone();
        let summary = super::blocking(move || super::verify(&checking, None)).await?;
        commit_file(&partial, out)?;
        Ok(Some((summary, bytes)))
    }
    .await;
    if result.is_err() {
        let _ = std::fs::remove_file(&partial);
    }
    result
}
