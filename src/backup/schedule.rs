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
                    crate::metric::backup_succeeded("scheduled", super::control::now_seconds());
                    tracing::info!(file = %path.display(), "scheduled backup written");
                }
                Err(e) => {
                    crate::metric::backup_failed("scheduled");
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
    {
        use std::os::unix::fs::DirBuilderExt;
        // 0700 from creation: the files hold every wrapped key and sealed value.
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| BackupError::Io(format!("creating {}: {e}", dir.display())))?;
    }
    let stamp = chrono::Utc::now().format(STAMP);
    let path = dir.join(format!("{PREFIX}{stamp}{SUFFIX}"));
    super::write_file(vault, &path).await?;
    // No await between the new file's rename (inside `write_file`) and the pruning: a stop in
    // between never leaves more than `keep` complete files.
    prune(dir, keep, &path)?;
    store.put_meta(LAST_BACKUP, now.to_string().into_bytes()).await?;
    Ok(Some(path))
}

/// The time in a scheduled backup's name (UTC).
const STAMP: &str = "%Y%m%dT%H%M%S%.3fZ";

/// The time a scheduled backup's file name carries, if `name` is exactly
/// `PREFIX + STAMP + SUFFIX` (anything else is not one of ours).
fn stamp_of(name: &str) -> Option<chrono::NaiveDateTime> {
    let stamp = name.strip_prefix(PREFIX)?.strip_suffix(SUFFIX)?;
    let parsed = chrono::NaiveDateTime::parse_from_str(stamp, STAMP).ok()?;
    // Exactly the format written (no other spelling of the same time).
    (parsed.format(STAMP).to_string() == stamp).then_some(parsed)
}

/// Removes the oldest scheduled backups in `dir` beyond the newest `keep`, and temporary files
/// of scheduled backups that did not finish. Only regular files (not followed through
/// symlinks) whose names parse as a scheduled backup's count, ordered by the parsed time;
/// `written` (the backup just made) is never removed, whatever other names say.
/// Called with the backup turn held.
fn prune(dir: &Path, keep: usize, written: &Path) -> Result<(), BackupError> {
    let mut backups = Vec::new();
    let entries =
        std::fs::read_dir(dir).map_err(|e| BackupError::Io(format!("listing {}: {e}", dir.display())))?;
    for entry in entries.flatten() {
        let Ok(name) = entry.file_name().into_string() else { continue };
        let path = dir.join(&name);
        let regular = std::fs::symlink_metadata(&path).is_ok_and(|m| m.file_type().is_file());
        if !regular || path == written {
            continue;
        }
        if let Some(at) = stamp_of(&name) {
            backups.push((at, name));
        } else if name
            .strip_prefix('.')
            .is_some_and(|n| n.split_once(super::PARTIAL).is_some_and(|(base, _)| stamp_of(base).is_some()))
        {
            // A scheduled backup that did not finish (a crash mid-write): the caller holds the
            // backup turn and its own file is renamed already, so no one is writing this.
            let _ = std::fs::remove_file(&path);
        }
    }
    backups.sort();
    // `written` is one of the `keep` kept.
    let excess = backups.len().saturating_sub(keep.max(1) - 1);
    for (_, name) in &backups[..excess] {
        std::fs::remove_file(dir.join(name))
            .map_err(|e| BackupError::Io(format!("removing the old backup {name}: {e}")))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_exact_scheduled_names_parse() {
        assert!(stamp_of("custodia-backup-20261130T190000.123Z.cbk").is_some());
        for name in [
            "custodia-backup-zzz.cbk",
            "custodia-backup-20261130T190000Z.cbk",
            "custodia-backup-20261130T190000.123Z.cbk.bak",
            "xcustodia-backup-20261130T190000.123Z.cbk",
            "custodia-backup-20261330T190000.123Z.cbk",
        ] {
            assert!(stamp_of(name).is_none(), "{name}");
        }
    }
}
