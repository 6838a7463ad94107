//! The background flush: makes sled, the record file and the audit files hold everything the
//! write-ahead log holds, writes the per-customer history rows of the entries since the last
//! flush, then deletes the log segments that became redundant. Between flushes, every tenth of
//! a second, the audit entries are written ahead to their file, so a flush's syncs are small: a
//! group commit's sync waits behind any sync in progress on the same disk. (A *flush* of
//! storage; a *checkpoint* is only ever a signed tree head.)

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::keys::{HISTORY_LEN, meta_key};
use super::{Shared, unavailable};
use crate::store::StoreError;

/// A flush is due when the current log segment is this large, or this old.
const FLUSH_BYTES: u64 = 64 * 1024 * 1024;
const FLUSH_EVERY: Duration = Duration::from_secs(1);

/// Flushes in the background until dropped.
pub(super) struct Flusher {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Flusher {
    pub(super) fn start(shared: Arc<Shared>) -> Result<Self, StoreError> {
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name("sled-flusher".into())
            .spawn(move || {
                let mut last = Instant::now();
                while !stopping.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(100));
                    let bytes = shared.wal.segment_bytes();
                    if shared.poisoned.load(Ordering::Acquire) {
                        continue;
                    }
                    if bytes >= FLUSH_BYTES || (last.elapsed() >= FLUSH_EVERY && bytes > 0) {
                        if let Err(e) = flush(&shared) {
                            tracing::error!(error = %e, "flush failed; the log keeps growing until one succeeds");
                        }
                        last = Instant::now();
                    } else if let Err(e) = shared.audit.write_ahead() {
                        // Debug only: the next flush, a tenth of a second to a second later,
                        // fails on the same cause and reports it.
                        tracing::debug!(error = %e, "writing audit entries ahead of the flush failed");
                    }
                }
            })
            .map_err(|e| StoreError::Unavailable(format!("starting the flusher: {e}")))?;
        Ok(Flusher { stop, thread: Some(thread) })
    }
}

impl Drop for Flusher {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// One flush. Safe to run concurrently with writes (and with itself: the log rotation under the
/// apply lock orders them).
pub(super) fn flush(shared: &Shared) -> Result<(), StoreError> {
    // A poisoned store keeps its log as it is: the restart's replay needs it to complete or
    // record a group that failed half-way, and nothing may be flushed over it.
    if shared.poisoned.load(Ordering::Acquire) {
        return Err(super::poisoned_error());
    }
    // The next log segment is made before the apply lock is taken, which every write waits for.
    shared.wal.prepare_rotation()?;
    // invariant: rotate under the apply lock, so no group is between its log write and its
    // apply; every record in the returned segments is then in sled and in the audit tail, and
    // the sled flush and the persist below, which start later, cover it.
    let (old, upto, rows) = {
        let _between_groups = shared.apply.lock().map_err(|_| lock_error())?;
        // Again under the lock: the group this flush waited for may have failed (the writer
        // poisons before it lets go of the lock), and its record must stay for the replay.
        if shared.poisoned.load(Ordering::Acquire) {
            return Err(super::poisoned_error());
        }
        let old = shared.wal.rotate()?;
        let upto = shared.audit.len()?;
        let tail = shared.history_tail.read().map_err(|_| lock_error())?;
        let rows: Vec<_> = tail.iter().filter(|(_, seq)| *seq < upto).copied().collect();
        (old, upto, rows)
    };
    // History rows are derived data, made durable in their index and only then their
    // high-water mark; lost in a crash, they are rebuilt from the entries on open (a row written
    // twice is the same row).
    shared.history.insert(&rows)?;
    shared.history.persist()?;
    shared.tree.insert(meta_key(HISTORY_LEN), &upto.to_be_bytes()).map_err(unavailable)?;
    // The records of every group in the old segments, durable before those segments go.
    shared.records.persist()?;
    shared.db.flush().map_err(unavailable)?;
    shared.audit.persist()?;
    shared.wal.remove(&old)?;
    shared.history_tail.write().map_err(|_| lock_error())?.retain(|(_, seq)| *seq >= upto);
    Ok(())
}

fn lock_error() -> StoreError {
    StoreError::Unavailable("store lock poisoned".into())
}
