//! The audit log's entries in two append-only files instead of sled: every request appends an
//! event, and keeping those out of sled's B-tree spares sled most of its page writes.
//!
//! `audit.dat` holds the entries back to back; `audit.idx` holds, per seq, the 8-byte end
//! offset of that entry in `audit.dat`, so entry `seq` is found with two positioned reads.
//! Entries are indexed only at a flush; until then they live in memory (`tail`) and in the
//! write-ahead log, which is what makes them durable. Their bytes are written ahead to
//! `audit.dat` every tenth of a second ([`AuditFiles::write_ahead`]), so a flush syncs little:
//! one sync of a second's entries (megabytes) held every group commit's sync behind it for
//! 15–50 ms. Files are written entries first, then the index, each synced, so on open an index
//! entry never points past the data; anything after the last indexed entry (bytes written
//! ahead, a torn write) is cut off.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use crate::store::StoreError;

/// Entries persisted in the files plus the in-memory tail.
pub(super) struct AuditFiles {
    dat: File,
    idx: File,
    state: RwLock<State>,
    /// Serialises `persist` (the flusher and shutdown).
    persisting: Mutex<()>,
    /// Set by any failed write or sync: a second `fdatasync` may report as synced pages the
    /// first one lost, so nothing more is written (and no log segment is deleted) until a
    /// restart replays the write-ahead log over the files.
    failed: AtomicBool,
    /// Test hook: the next sync fails as an I/O error would.
    #[cfg(test)]
    fail_next_sync: AtomicBool,
}

struct State {
    /// Entries 0..persisted are in the files.
    persisted: u64,
    /// Length of `audit.dat` covered by the index.
    dat_len: u64,
    /// Entries persisted..written are written (and synced) to `audit.dat`, not indexed yet.
    /// invariant: persisted <= written <= the next seq.
    written: u64,
    /// Length of `audit.dat` through entry `written - 1`.
    written_len: u64,
    /// Entries persisted..: not indexed yet.
    tail: BTreeMap<u64, Arc<[u8]>>,
}

impl AuditFiles {
    /// Opens (or creates) the files in `dir`, cutting off any torn tail.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        let open = |name: &str| {
            OpenOptions::new()
                .create(true)
                .read(true)
                .write(true)
                .truncate(false)
                .open(dir.join(name))
                .map_err(io)
        };
        let (dat, idx) = (open("audit.dat")?, open("audit.idx")?);
        let dat_file_len = dat.metadata().map_err(io)?.len();
        // Keep the index up to its first entry that does not end after the one before it, or
        // that points past the data: a torn write of a persist in progress (a zeroed page in
        // the middle, a data sync that did not finish). Everything from that persist on is
        // still in the write-ahead log, which replays it.
        let mut index = Vec::new();
        (&idx).read_to_end(&mut index).map_err(io)?;
        let (mut entries, mut dat_len) = (0u64, 0u64);
        for chunk in index.chunks_exact(8) {
            // invariant: chunks_exact yields 8-byte slices.
            let end = u64::from_le_bytes(chunk.try_into().expect("8 bytes"));
            if end < dat_len || end > dat_file_len {
                break;
            }
            (entries, dat_len) = (entries + 1, end);
        }
        idx.set_len(entries * 8).map_err(io)?;
        dat.set_len(dat_len).map_err(io)?;
        let state = State {
            persisted: entries,
            dat_len,
            written: entries,
            written_len: dat_len,
            tail: BTreeMap::new(),
        };
        Ok(AuditFiles {
            dat,
            idx,
            state: RwLock::new(state),
            persisting: Mutex::new(()),
            failed: AtomicBool::new(false),
            #[cfg(test)]
            fail_next_sync: AtomicBool::new(false),
        })
    }

    /// The number of entries (persisted and in memory).
    pub fn len(&self) -> Result<u64, StoreError> {
        let state = self.state.read().map_err(|_| poisoned())?;
        Ok(state.tail.last_key_value().map_or(state.persisted, |(seq, _)| seq + 1))
    }

    /// Adds entry `seq`, which must be the next one.
    pub fn push(&self, seq: u64, entry: Arc<[u8]>) -> Result<(), StoreError> {
        let mut state = self.state.write().map_err(|_| poisoned())?;
        let next = state.tail.last_key_value().map_or(state.persisted, |(s, _)| s + 1);
        if seq != next {
            return Err(StoreError::AuditOutOfOrder { expected: next, got: seq });
        }
        state.tail.insert(seq, entry);
        Ok(())
    }

    /// Entry `seq`, if it exists.
    pub fn get(&self, seq: u64) -> Result<Option<Arc<[u8]>>, StoreError> {
        let (persisted, dat_len) = {
            let state = self.state.read().map_err(|_| poisoned())?;
            if let Some(entry) = state.tail.get(&seq) {
                return Ok(Some(Arc::clone(entry)));
            }
            (state.persisted, state.dat_len)
        };
        if seq >= persisted {
            return Ok(None);
        }
        // Persisted entries never change, so they are read without holding the lock.
        let start = if seq == 0 { 0 } else { read_u64(&self.idx, (seq - 1) * 8)? };
        let end = read_u64(&self.idx, seq * 8)?;
        if start > end || end > dat_len {
            return Err(StoreError::Corrupt(format!("audit index entry {seq}")));
        }
        let mut buf = vec![0u8; (end - start) as usize];
        self.dat.read_exact_at(&mut buf, start).map_err(io)?;
        Ok(Some(buf.into()))
    }

    /// Entries `from..end` that exist, in seq order: those persisted with two positioned reads
    /// in all (their index slots, then their bytes), the rest from memory. Sequential readers
    /// (the transparency fold, the auditor's pages, backups) read pages through this: entry by
    /// entry, [`AuditFiles::get`] costs three reads each.
    ///
    /// The page is held twice for a moment (the bytes read, then each entry's copy): callers
    /// read pages of bounded length (at most a few thousand entries), never the whole log.
    ///
    /// Errors: [`StoreError::Corrupt`] when the index does not fit the data it covers.
    pub fn range(&self, from: u64, end: u64) -> Result<Vec<Arc<[u8]>>, StoreError> {
        let (persisted, dat_len, in_memory) = {
            let state = self.state.read().map_err(|_| poisoned())?;
            // `end` may lie below `from` or `persisted`: the range is then empty, as
            // `BTreeMap::range` panics when its start is above its end.
            let first = from.max(state.persisted);
            let in_memory: Vec<Arc<[u8]>> =
                state.tail.range(first..end.max(first)).map(|(_, e)| Arc::clone(e)).collect();
            (state.persisted, state.dat_len, in_memory)
        };
        let mut entries = Vec::new();
        // Persisted entries never change, so they are read without holding the lock.
        let to = end.min(persisted);
        if from < to {
            // Slot `seq` holds the end of entry `seq`; entry `from` starts where `from - 1` ends.
            let first_slot = from.saturating_sub(1);
            let mut slots = vec![0u8; ((to - first_slot) * 8) as usize];
            self.idx.read_exact_at(&mut slots, first_slot * 8).map_err(io)?;
            // invariant: chunks_exact yields 8-byte slices.
            let mut ends = slots.chunks_exact(8).map(|s| u64::from_le_bytes(s.try_into().expect("8 bytes")));
            let start = if from == 0 { 0 } else { ends.next().unwrap_or_default() };
            let ends: Vec<u64> = ends.collect();
            let last = ends.last().copied().unwrap_or(start);
            if last < start || last > dat_len {
                return Err(StoreError::Corrupt(format!("audit index entries {from}..{to}")));
            }
            let mut data = vec![0u8; (last - start) as usize];
            self.dat.read_exact_at(&mut data, start).map_err(io)?;
            entries.reserve(ends.len() + in_memory.len());
            let mut at = start;
            for (seq, end) in (from..).zip(ends) {
                if end < at || end > last {
                    return Err(StoreError::Corrupt(format!("audit index entry {seq}")));
                }
                entries.push(Arc::from(&data[(at - start) as usize..(end - start) as usize]));
                at = end;
            }
        }
        entries.extend(in_memory);
        Ok(entries)
    }

    /// Writes the entries not written yet to `audit.dat` after the ones written before, and
    /// syncs them, without indexing them (the flusher calls this between flushes).
    pub fn write_ahead(&self) -> Result<(), StoreError> {
        let _one_at_a_time = self.persisting.lock().map_err(|_| poisoned())?;
        self.write_ahead_locked()
    }

    fn write_ahead_locked(&self) -> Result<(), StoreError> {
        let (data, count, start, first) = {
            let state = self.state.read().map_err(|_| poisoned())?;
            let entries = state.tail.range(state.written..);
            let mut data = Vec::new();
            let mut count = 0;
            for (_, entry) in entries {
                data.extend_from_slice(entry);
                count += 1;
            }
            (data, count, state.written_len, state.written)
        };
        if count == 0 {
            return Ok(());
        }
        self.refuse_after_failure()?;
        // Positioned writes at the known end, never followed by misplaced bytes.
        self.failing(self.dat.write_all_at(&data, start))?;
        self.failing(self.sync(&self.dat))?;
        let mut state = self.state.write().map_err(|_| poisoned())?;
        // invariant: only this function (under `persisting`) moves `written`.
        debug_assert_eq!(state.written, first);
        state.written = first + count;
        state.written_len = start + data.len() as u64;
        Ok(())
    }

    fn refuse_after_failure(&self) -> Result<(), StoreError> {
        if self.failed.load(Ordering::Acquire) {
            return Err(StoreError::Unavailable(
                "audit files: a write or sync failed earlier; restart to recover".into(),
            ));
        }
        Ok(())
    }

    /// `result`, remembering a failure (see `failed`).
    fn failing(&self, result: std::io::Result<()>) -> Result<(), StoreError> {
        result.map_err(|e| {
            self.failed.store(true, Ordering::Release);
            io(e)
        })
    }

    fn sync(&self, file: &File) -> std::io::Result<()> {
        #[cfg(test)]
        if self.fail_next_sync.swap(false, Ordering::AcqRel) {
            return Err(std::io::Error::other("injected sync failure"));
        }
        file.sync_data()
    }

    /// Writes every in-memory entry to the files, indexes them and syncs both (a flush step).
    pub fn persist(&self) -> Result<(), StoreError> {
        let _one_at_a_time = self.persisting.lock().map_err(|_| poisoned())?;
        self.write_ahead_locked()?;
        let (index, first, last, end) = {
            let state = self.state.read().map_err(|_| poisoned())?;
            let mut end = state.dat_len;
            let mut index = Vec::with_capacity((state.written - state.persisted) as usize * 8);
            for (_, entry) in state.tail.range(state.persisted..state.written) {
                end += entry.len() as u64;
                index.extend_from_slice(&end.to_le_bytes());
            }
            (index, state.persisted, state.written, end)
        };
        if last == first {
            return Ok(());
        }
        self.refuse_after_failure()?;
        self.failing(self.idx.write_all_at(&index, first * 8))?;
        self.failing(self.sync(&self.idx))?;
        let mut state = self.state.write().map_err(|_| poisoned())?;
        // invariant: the entries just indexed end where the written ones do.
        debug_assert_eq!(end, state.written_len);
        state.persisted = last;
        state.dat_len = end;
        state.tail.retain(|seq, _| *seq >= last);
        Ok(())
    }
}

fn read_u64(file: &File, at: u64) -> Result<u64, StoreError> {
    let mut buf = [0u8; 8];
    file.read_exact_at(&mut buf, at).map_err(io)?;
    Ok(u64::from_le_bytes(buf))
}

fn io(e: std::io::Error) -> StoreError {
    StoreError::Unavailable(format!("audit files: {e}"))
}

fn poisoned() -> StoreError {
    StoreError::Unavailable("audit files lock poisoned".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_are_read_back_from_memory_and_from_the_files() {
        let dir = tempfile::tempdir().unwrap();
        let files = AuditFiles::open(dir.path()).unwrap();
        files.push(0, Arc::from(&b"zero"[..])).unwrap();
        files.push(1, Arc::from(&b"one"[..])).unwrap();
        assert!(matches!(files.push(3, Arc::from(&b"x"[..])), Err(StoreError::AuditOutOfOrder { .. })));
        assert_eq!(&*files.get(1).unwrap().unwrap(), b"one");
        files.persist().unwrap();
        files.push(2, Arc::from(&b"two"[..])).unwrap();
        assert_eq!(&*files.get(0).unwrap().unwrap(), b"zero");
        assert_eq!(&*files.get(2).unwrap().unwrap(), b"two");
        assert!(files.get(3).unwrap().is_none());
        files.persist().unwrap();
        drop(files);
        let again = AuditFiles::open(dir.path()).unwrap();
        assert_eq!(again.len().unwrap(), 3);
        assert_eq!(&*again.get(1).unwrap().unwrap(), b"one");
        assert_eq!(&*again.get(2).unwrap().unwrap(), b"two");
    }

    #[test]
    fn a_range_reads_across_the_files_and_memory_as_entry_by_entry_reads_do() {
        let dir = tempfile::tempdir().unwrap();
        let files = AuditFiles::open(dir.path()).unwrap();
        let entry =
            |seq: u64| Arc::<[u8]>::from(format!("entry {seq} {}", "x".repeat(seq as usize % 7)).as_bytes());
        for seq in 0..10 {
            files.push(seq, entry(seq)).unwrap();
            match seq {
                3 | 6 => files.persist().unwrap(),
                8 => files.write_ahead().unwrap(),
                _ => {}
            }
        }
        // 0..7 indexed in the files, 7..9 written ahead only, 9 in memory alone.
        for from in 0..11 {
            for end in from..12 {
                let one_by_one: Vec<Arc<[u8]>> =
                    (from..end).map_while(|seq| files.get(seq).unwrap()).collect();
                assert_eq!(files.range(from, end).unwrap(), one_by_one, "{from}..{end}");
            }
        }
        assert_eq!(files.range(5, 3).unwrap(), Vec::<Arc<[u8]>>::new(), "an empty range");
        drop(files);
        // An index entry that ends before the one ahead of it is reported, not sliced.
        let idx = OpenOptions::new().write(true).open(dir.path().join("audit.idx")).unwrap();
        let files = AuditFiles::open(dir.path()).unwrap();
        idx.write_all_at(&3u64.to_le_bytes(), 8 * 4).unwrap();
        assert!(matches!(files.range(2, 7), Err(StoreError::Corrupt(_))));
        assert!(matches!(files.range(4, 5), Err(StoreError::Corrupt(_))));
        assert_eq!(files.range(0, 4).unwrap().len(), 4, "the entries before it still read");
        // A slot in the middle pointing past the page's last entry (within the data)...
        let dat_len = std::fs::metadata(dir.path().join("audit.dat")).unwrap().len();
        idx.write_all_at(&(dat_len - 1).to_le_bytes(), 8 * 4).unwrap();
        assert!(matches!(files.range(3, 6), Err(StoreError::Corrupt(_))));
        // ...and a last slot past the data the index covers: no buffer of that size is made.
        idx.write_all_at(&u64::MAX.to_le_bytes(), 8 * 5).unwrap();
        assert!(matches!(files.range(3, 6), Err(StoreError::Corrupt(_))));
        assert!(matches!(files.range(5, 6), Err(StoreError::Corrupt(_))));
    }

    #[test]
    fn entries_written_ahead_count_only_once_indexed() {
        let dir = tempfile::tempdir().unwrap();
        let files = AuditFiles::open(dir.path()).unwrap();
        files.push(0, Arc::from(&b"zero"[..])).unwrap();
        files.persist().unwrap();
        files.push(1, Arc::from(&b"one"[..])).unwrap();
        files.write_ahead().unwrap();
        files.push(2, Arc::from(&b"two"[..])).unwrap();
        files.write_ahead().unwrap();
        files.write_ahead().unwrap();
        files.push(3, Arc::from(&b"three"[..])).unwrap();
        assert_eq!(&*files.get(2).unwrap().unwrap(), b"two", "from memory until indexed");
        assert_eq!(std::fs::metadata(dir.path().join("audit.dat")).unwrap().len(), 10);
        // Without a flush, a reopen keeps what is indexed and cuts the bytes written ahead:
        // the write-ahead log replays the rest.
        drop(files);
        let reopened = AuditFiles::open(dir.path()).unwrap();
        assert_eq!(reopened.len().unwrap(), 1);
        assert_eq!(std::fs::metadata(dir.path().join("audit.dat")).unwrap().len(), 4);
        for (seq, entry) in [(1, &b"one"[..]), (2, b"two"), (3, b"three")] {
            reopened.push(seq, Arc::from(entry)).unwrap();
            if seq == 2 {
                reopened.write_ahead().unwrap();
            }
        }
        // A flush indexes entries written ahead and the rest alike.
        reopened.persist().unwrap();
        drop(reopened);
        let again = AuditFiles::open(dir.path()).unwrap();
        assert_eq!(again.len().unwrap(), 4);
        for (seq, entry) in [(0, &b"zero"[..]), (1, b"one"), (2, b"two"), (3, b"three")] {
            assert_eq!(&*again.get(seq).unwrap().unwrap(), entry);
        }
    }

    #[test]
    fn after_a_failed_sync_nothing_more_is_written_until_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let files = AuditFiles::open(dir.path()).unwrap();
        files.push(0, Arc::from(&b"zero"[..])).unwrap();
        files.fail_next_sync.store(true, Ordering::Release);
        assert!(files.write_ahead().is_err());
        // A retry could be told "synced" for pages the failed sync lost: it is refused.
        assert!(files.write_ahead().is_err());
        assert!(files.persist().is_err());
        assert_eq!(&*files.get(0).unwrap().unwrap(), b"zero", "still served from memory");
        drop(files);
        let reopened = AuditFiles::open(dir.path()).unwrap();
        assert_eq!(reopened.len().unwrap(), 0, "nothing indexed: the log replays entry 0");
        reopened.push(0, Arc::from(&b"zero"[..])).unwrap();
        reopened.persist().unwrap();
        assert_eq!(&*reopened.get(0).unwrap().unwrap(), b"zero");
    }

    #[test]
    fn a_zeroed_index_page_in_the_middle_cuts_the_files_there() {
        let dir = tempfile::tempdir().unwrap();
        let files = AuditFiles::open(dir.path()).unwrap();
        for (seq, entry) in [b"zero", b"one!", b"two!", b"3333"].iter().enumerate() {
            files.push(seq as u64, Arc::from(&entry[..])).unwrap();
        }
        files.persist().unwrap();
        drop(files);
        // Entry 2's index slot zeroed, as a torn page write leaves it; 3 still looks fine.
        let idx = OpenOptions::new().write(true).open(dir.path().join("audit.idx")).unwrap();
        idx.write_all_at(&[0; 8], 16).unwrap();
        let again = AuditFiles::open(dir.path()).unwrap();
        assert_eq!(again.len().unwrap(), 2, "cut at the first entry that does not follow on");
        assert_eq!(&*again.get(1).unwrap().unwrap(), b"one!");
        assert!(again.get(2).unwrap().is_none(), "the log, not a corrupt file, supplies it again");
    }

    #[test]
    fn a_torn_write_is_cut_off_on_open() {
        let dir = tempfile::tempdir().unwrap();
        let files = AuditFiles::open(dir.path()).unwrap();
        files.push(0, Arc::from(&b"zero"[..])).unwrap();
        files.push(1, Arc::from(&b"one"[..])).unwrap();
        files.persist().unwrap();
        drop(files);
        // The data of entry 1 lost, its index entry kept (the data sync never finished).
        let dat = OpenOptions::new().write(true).open(dir.path().join("audit.dat")).unwrap();
        dat.set_len(5).unwrap();
        let again = AuditFiles::open(dir.path()).unwrap();
        assert_eq!(again.len().unwrap(), 1);
        again.push(1, Arc::from(&b"uno"[..])).unwrap();
        assert_eq!(&*again.get(1).unwrap().unwrap(), b"uno");
    }
}
