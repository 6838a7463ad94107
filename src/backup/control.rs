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

use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::Semaphore;

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

/// How long a client has to send its command line.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a write to the client may stall (a stopped or stuck client) before the backup is
/// abandoned and the socket freed for the next one.
const WRITE_STALL: Duration = Duration::from_secs(30);
/// The pause after a failed `accept` (e.g. out of file descriptors), so the loop does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(200);

/// Listens on `data_dir/control.sock` and answers `backup` with a backup of `vault`. `None`
/// (and a warning) when the socket cannot be bound, e.g. another live server answers on it, the
/// data directory is reachable by other accounts, or the path is too long for a socket address:
/// then `custodia backup` cannot reach this server.
///
/// Each connection is served in its own task; one backup runs at a time, and a client arriving
/// meanwhile is answered `error: busy` at once. A client must send its command within 5 s and
/// must be the server's own account (`SO_PEERCRED`); a write that stalls 30 s ends the backup.
pub fn spawn(vault: Weak<Vault>, data_dir: &Path) -> Option<tokio::task::JoinHandle<()>> {
    let path = data_dir.join(SOCKET);
    // The socket is bound in the data directory, which must be this account's alone (0700):
    // between `bind` and `chmod` the socket has the umask's mode, so the directory is the gate.
    let private = std::fs::metadata(data_dir).is_ok_and(|m| {
        use std::os::unix::fs::MetadataExt;
        m.mode() & 0o077 == 0
    });
    if !private {
        tracing::warn!(dir = %data_dir.display(), "the data directory is reachable by other accounts (not 0700); not listening on the control socket");
        return None;
    }
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
        if let Err(e) = std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)) {
            tracing::warn!(socket = %path.display(), error = %e, "cannot make the control socket 0600; not listening");
            return None;
        }
    }
    // The socket file is ours: its owner is this process's effective uid.
    let own_uid = {
        use std::os::unix::fs::MetadataExt;
        match std::fs::metadata(&path) {
            Ok(m) => m.uid(),
            Err(e) => {
                tracing::warn!(socket = %path.display(), error = %e, "cannot read the control socket; not listening");
                return None;
            }
        }
    };
    let bound = Bound(path);
    let one_at_a_time = Arc::new(Semaphore::new(1));
    Some(tokio::spawn(async move {
        let _bound = bound;
        loop {
            let stream = match listener.accept().await {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::warn!(error = %e, "accepting on the control socket failed");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            };
            if vault.strong_count() == 0 {
                return;
            }
            let (vault, gate) = (vault.clone(), Arc::clone(&one_at_a_time));
            tokio::spawn(async move {
                if !stream.peer_cred().is_ok_and(|c| c.uid() == own_uid) {
                    tracing::warn!("a control socket client of another account was refused");
                    return;
                }
                serve(&vault, &gate, stream).await;
            });
        }
    }))
}

/// Reads the command (a client that sends none holds nothing but its own task), then takes
/// the one backup turn or answers `error: busy`.
async fn serve(vault: &Weak<Vault>, gate: &Arc<Semaphore>, stream: UnixStream) {
    let (read, write) = stream.into_split();
    let mut write = StallLimit::new(write, WRITE_STALL);
    let mut command = String::new();
    let mut reader = BufReader::new(read.take(MAX_COMMAND));
    match tokio::time::timeout(COMMAND_TIMEOUT, reader.read_line(&mut command)).await {
        Ok(Ok(_)) => {}
        _ => return,
    }
    match command.trim_end() {
        "backup" => {
            let Ok(_turn) = gate.clone().try_acquire_owned() else {
                let _ = write.write_all(b"error: busy (a backup is running)\n").await;
                let _ = write.shutdown().await;
                return;
            };
            let Some(vault) = vault.upgrade() else { return };
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

/// A writer whose writes fail with `TimedOut` once one stays pending for `limit`.
struct StallLimit<W> {
    inner: W,
    limit: Duration,
    sleep: Pin<Box<tokio::time::Sleep>>,
    armed: bool,
}

impl<W> StallLimit<W> {
    fn new(inner: W, limit: Duration) -> Self {
        StallLimit { inner, limit, sleep: Box::pin(tokio::time::sleep(limit)), armed: false }
    }

    /// `Ready(Err)` once the pending operation has stalled past the limit.
    fn stalled<T>(
        &mut self,
        polled: Poll<std::io::Result<T>>,
        cx: &mut Context<'_>,
    ) -> Poll<std::io::Result<T>> {
        match polled {
            Poll::Ready(r) => {
                self.armed = false;
                Poll::Ready(r)
            }
            Poll::Pending => {
                if !self.armed {
                    self.sleep.as_mut().reset(tokio::time::Instant::now() + self.limit);
                    self.armed = true;
                }
                match self.sleep.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "the client stopped reading",
                    ))),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }
}

impl<W: AsyncWrite + Unpin> AsyncWrite for StallLimit<W> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.stalled(polled, cx)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let polled = Pin::new(&mut self.inner).poll_flush(cx);
        self.stalled(polled, cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let polled = Pin::new(&mut self.inner).poll_shutdown(cx);
        self.stalled(polled, cx)
    }
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
        // The server must run as this account (the file just created is owned by our uid).
        let own_uid = {
            use std::os::unix::fs::MetadataExt;
            file.metadata().map_err(|e| BackupError::Io(format!("{}: {e}", partial.display())))?.uid()
        };
        let server_uid =
            stream.peer_cred().map_err(|e| BackupError::Io(format!("{}: {e}", path.display())))?.uid();
        if server_uid != own_uid {
            return Err(BackupError::Refused(format!(
                "{} is served by another account (uid {server_uid}); not taking a backup from it",
                path.display()
            )));
        }
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
        let summary = match super::blocking(move || super::verify(&checking, None)).await {
            Ok(summary) => summary,
            Err(e) => {
                // The server's own answer (`error: busy …`), not a backup.
                let head = std::fs::read(&partial).unwrap_or_default();
                if head.starts_with(b"error: ") && head.len() < 200 {
                    let said = String::from_utf8_lossy(&head).trim().to_owned();
                    return Err(BackupError::Refused(format!("the server answered: {said}")));
                }
                return Err(e);
            }
        };
        commit_file(&partial, out)?;
        Ok(Some((summary, bytes)))
    }
    .await;
    if result.is_err() {
        let _ = std::fs::remove_file(&partial);
    }
    result
}
