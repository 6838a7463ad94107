//! Scheduled backups (`CUSTODIA_BACKUP_DIR`, `CUSTODIA_BACKUP_INTERVAL_SECS`,
//! `CUSTODIA_BACKUP_KEEP`): every interval the server writes a verified backup file named
//! `custodia-backup-<UTC time>.cbk` (names sort by time) and then, only once it is complete,
//! removes the oldest beyond the number to keep. On PostgreSQL one node per interval takes it
//! (`Store::exclusive("backup")`). Success time and failures are metrics
//! (`custodia_backup_last_success_timestamp_seconds`, `custodia_backup_failures_total`).

use std::path::{Path, PathBuf};
use std::sync::Weak;
use std::time::Duration;

use super::BackupError;
use crate::vault::Vault;

/// File names of scheduled backups start with this…
pub const PREFIX: &str = "custodia-backup-";
/// …and end with this.
pub const SUFFIX: &str = ".cbk";

/// The store's record of the last scheduled backup (Unix ms, decimal): shared by every node on
/// PostgreSQL, so one backup is taken per interval however many nodes tick. Not in
/// [`crate::vault::META_NAMES`]: a restored store starts its schedule afresh.
const LAST_BACKUP: &str = "backup.last_scheduled";

/// Takes a backup into `dir` every `every`, keeping the newest `keep`.
pub fn spawn(vault: Weak<Vault>, dir: PathBuf, every: Duration, keep: usize) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The first tick is immediate: the first backup waits one interval after start.
        tick.tick().await;
        loop {
            tick.tick().await;
            let Some(vault) = vault.upgrade() else { return };
            match once(&vault, &dir, keep, every).await {
                Ok(None) => {}
                Ok(Some(path)) => {
                    crate::metric::backup_succeeded(super::control::now_seconds());
                    tracing::info!(file = %path.display(), "scheduled backup written");
                }
                Err(e) => {
                    crate::metric::backup_failed();
                    tracing::error!(error = %e, dir = %dir.display(), "scheduled backup failed");
                }
            }
        }
    })
}

/// One scheduled backup: `None` when another node holds the turn or took this interval's
/// backup already.
pub async fn once(
    vault: &Vault,
    dir: &Path,
    keep: usize,
    every: Duration,
) -> Result<Option<PathBuf>, BackupError> {
    let store = vault.store();
    let Some(_turn) = store.exclusive("backup").await? else { return Ok(None) };
    let now = chrono::Utc::now().timestamp_millis();
    let last = store.meta(LAST_BACKUP).await?.and_then(|v| String::from_utf8(v).ok()?.parse::<i64>().ok());
    // A tenth of the interval of slack: ticks of one node drift a little.
    if last.is_some_and(|last| now - last < every.as_millis() as i64 * 9 / 10) {
        return Ok(None);
    }
    std::fs::create_dir_all(dir).map_err(|e| BackupError::Io(format!("creating {}: {e}", dir.display())))?;
    let stamp = chrono::Utc::now().format("%Y%m%dT%H%M%S%.3fZ");
    let path = dir.join(format!("{PREFIX}{stamp}{SUFFIX}"));
    super::write_file(vault, &path).await?;
    // No await between the new file's rename (inside `write_file`) and the pruning: a stop in
    // between never leaves more than `keep` complete files.
    prune(dir, keep)?;
    store.put_meta(LAST_BACKUP, now.to_string().into_bytes()).await?;
    Ok(Some(path))
}

/// Removes the oldest scheduled backups in `dir` beyond the newest `keep`.
fn prune(dir: &Path, keep: usize) -> Result<(), BackupError> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map_err(|e| BackupError::Io(format!("listing {}: {e}", dir.display())))?
        .filter_map(|entry| entry.ok()?.file_name().into_string().ok())
        .filter(|name| name.starts_with(PREFIX) && name.ends_with(SUFFIX))
        .collect();
    names.sort();
    let excess = names.len().saturating_sub(keep.max(1));
    for name in &names[..excess] {
        std::fs::remove_file(dir.join(name))
            .map_err(|e| BackupError::Io(format!("removing the old backup {name}: {e}")))?;
    }
    Ok(())
}
