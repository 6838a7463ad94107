//! The write-ahead log that makes commits durable.
//!
//! sled's own flush rewrites every dirty page and syncs with `sync_file_range`, which neither
//! scales with many small writes nor flushes the device cache. So every batch is first written
//! to this log — before it is applied to sled, so sled can never hold a batch the log lacks —
//! and group commit makes the log durable with one `fdatasync` for every waiting request. sled
//! itself is flushed in the background (`flusher.rs`), after which the log segments it covers
//! are deleted. After any write or sync error the log refuses every further write until a
//! restart replays it: a failed `fdatasync` may have dropped pages that a retry would report
//! as synced.
//!
//! Recovery invariant: every sled batch also stores its log sequence number (LSN) under one
//! metadata key, and batches are applied in LSN order under the store's apply lock. sled
//! recovers a prefix of its own log, so after a crash it holds exactly the batches up to some
//! LSN `L`; replaying the logged records with LSN > `L`, in order, restores every batch whose
//! log record became durable — never regressing a key sled already had newer.
//!
//! Frame: `len (u32 LE) ‖ crc32 (u32 LE) ‖ payload`; payload: `lsn (u64 LE)` then ops, each
//! `1 ‖ klen (u32) ‖ key ‖ vlen (u32) ‖ value` (put), `2 ‖ klen (u32) ‖ key` (remove) or
//! `3 ‖ seq (u64) ‖ vlen (u32) ‖ entry` (audit append) or `4 ‖ slot (u64) ‖ customer (16) ‖
//! lsn (u64)` (destroy a data key; integers little-endian). A torn
//! or corrupt frame ends the replay of the last segment holding any bytes (an empty newer one
//! is a spare made ahead of a rotation); anywhere else it is an error.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use super::key_file::SlotOwner;
use crate::domain::CustomerId;
use crate::store::StoreError;

/// One key change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Op {
    /// Set `key` to `value`.
    Put(Vec<u8>, Vec<u8>),
    /// Delete `key`.
    Remove(Vec<u8>),
    /// Append audit entry `seq` (kept in the audit files, not in sled).
    Audit(u64, Vec<u8>),
    /// Zero key slot `slot` if it still holds the key `owner` wrote (`key_file.rs`).
    DestroyKey { slot: u64, owner: SlotOwner },
}

/// A logged batch.
pub(super) struct Record {
    pub lsn: u64,
    pub ops: Vec<Op>,
}

struct Segment {
    id: u64,
    /// Shared so a sync can run without the segment lock.
    file: Arc<File>,
    bytes: u64,
}

/// The log: records written by the writer thread (under the store's apply lock) and synced by
/// it once per group.
pub(super) struct Wal {
    dir: PathBuf,
    segment: Mutex<Segment>,
    /// The next segment, created ahead of [`Wal::rotate`] (lock order: `spare`, then `segment`).
    spare: Mutex<Option<Segment>>,
    failed: AtomicBool,
}

impl Wal {
    /// Reads every record of the segments in `dir` (oldest first) for replay, each segment
    /// synced first.
    pub fn read_all(dir: &Path) -> Result<Vec<Record>, StoreError> {
        std::fs::create_dir_all(dir).map_err(io)?;
        let segments = segment_ids(dir)?;
        // The segment writes may have been torn in: the newest one holding any bytes. Newer,
        // empty ones are spares made by `prepare_rotation` while groups still wrote to it.
        let mut in_use = 0;
        for (i, id) in segments.iter().enumerate() {
            if std::fs::metadata(segment_path(dir, *id)).map_err(io)?.len() > 0 {
                in_use = i;
            }
        }
        let mut records = Vec::new();
        for (i, id) in segments.iter().enumerate() {
            let mut bytes = Vec::new();
            // Synced before anything is replayed from it: a record written but not synced before
            // a crash is read back from the page cache, and a replay that made it durable in
            // sled or the record file would otherwise be ahead of the log after a power loss.
            File::open(segment_path(dir, *id))
                .and_then(|mut f| f.read_to_end(&mut bytes).and_then(|_| f.sync_data()))
                .map_err(io)?;
            let last = i >= in_use;
            let mut at = 0;
            while at < bytes.len() {
                match parse_frame(&bytes[at..]) {
                    Some((record, used)) => {
                        records.push(record);
                        at += used;
                    }
                    None if last => break, // a torn tail: its batch was never acknowledged
                    None => {
                        return Err(StoreError::Corrupt(format!("write-ahead log segment {id} is damaged")));
                    }
                }
            }
        }
        sync_dir(dir)?;
        Ok(records)
    }

    /// Deletes every old segment and starts a new, empty one.
    pub fn start(dir: &Path) -> Result<Self, StoreError> {
        let old = segment_ids(dir)?;
        let next = old.iter().max().map_or(1, |m| m + 1);
        let segment = open_segment(dir, next)?;
        for id in old {
            std::fs::remove_file(segment_path(dir, id)).map_err(io)?;
        }
        sync_dir(dir)?;
        Ok(Wal {
            dir: dir.to_owned(),
            segment: Mutex::new(segment),
            spare: Mutex::new(None),
            failed: AtomicBool::new(false),
        })
    }

    /// Writes a record to the current segment (not yet synced). Called under the store's writer
    /// lock before the batch is applied, so the log order is the apply order.
    pub fn append(&self, lsn: u64, ops: &[Op]) -> Result<(), StoreError> {
        if self.failed.load(Ordering::Acquire) {
            return Err(failed());
        }
        let mut payload = Vec::with_capacity(64 + ops.iter().map(op_len).sum::<usize>());
        payload.extend_from_slice(&lsn.to_le_bytes());
        for op in ops {
            match op {
                Op::Put(k, v) => {
                    payload.push(1);
                    put_bytes(&mut payload, k);
                    put_bytes(&mut payload, v);
                }
                Op::Remove(k) => {
                    payload.push(2);
                    put_bytes(&mut payload, k);
                }
                Op::Audit(seq, v) => {
                    payload.push(3);
                    payload.extend_from_slice(&seq.to_le_bytes());
                    put_bytes(&mut payload, v);
                }
                Op::DestroyKey { slot, owner } => {
                    payload.push(4);
                    payload.extend_from_slice(&slot.to_le_bytes());
                    payload.extend_from_slice(owner.customer.as_bytes());
                    payload.extend_from_slice(&owner.lsn.to_le_bytes());
                }
            }
        }
        let mut frame = Vec::with_capacity(8 + payload.len());
        frame.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        frame.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
        frame.extend_from_slice(&payload);
        let mut segment = self.segment.lock().map_err(|_| poisoned())?;
        if let Err(e) = (&*segment.file).write_all(&frame) {
            // Cut a partial frame off, and refuse further writes: the caller answers 503.
            let _ = segment.file.set_len(segment.bytes);
            self.failed.store(true, Ordering::Release);
            return Err(io(e));
        }
        segment.bytes += frame.len() as u64;
        Ok(())
    }

    /// Makes every record written so far durable: the group-commit sync. It holds no lock
    /// while it waits for the disk: an `fdatasync` covers every write completed before it
    /// started, and appends from then on wait for the next sync.
    pub fn sync(&self) -> Result<(), String> {
        if self.failed.load(Ordering::Acquire) {
            return Err(failed().to_string());
        }
        let file = {
            let segment = self.segment.lock().map_err(|_| "write-ahead log lock poisoned".to_owned())?;
            Arc::clone(&segment.file)
        };
        file.sync_data().map_err(|e| {
            self.failed.store(true, Ordering::Release);
            e.to_string()
        })
    }

    /// Bytes in the current segment.
    pub fn segment_bytes(&self) -> u64 {
        self.segment.lock().map_or(0, |s| s.bytes)
    }

    /// Creates the segment [`Wal::rotate`] will switch to, if it is not there yet: creating a
    /// file and syncing the directory take milliseconds, which must not be spent under the
    /// store's apply lock (every write waits there). An empty segment is harmless on replay.
    pub fn prepare_rotation(&self) -> Result<(), StoreError> {
        let mut spare = self.spare.lock().map_err(|_| poisoned())?;
        if spare.is_none() {
            let next_id = self.segment.lock().map_err(|_| poisoned())?.id + 1;
            *spare = Some(open_segment(&self.dir, next_id)?);
        }
        Ok(())
    }

    /// Starts a new segment (the one [`Wal::prepare_rotation`] made, else a new one) and
    /// returns the ids of the older ones. The caller holds the store's apply lock, so every
    /// record in them was also applied to sled before this call; they may be deleted once a
    /// sled flush that starts after it finished.
    ///
    /// Nothing is synced here: every group syncs its record before the apply lock is released
    /// (`writer.rs`), and a failed sync fails the log (refused below), so the old segment holds
    /// nothing unsynced.
    pub fn rotate(&self) -> Result<Vec<u64>, StoreError> {
        if self.failed.load(Ordering::Acquire) {
            return Err(failed());
        }
        let mut spare = self.spare.lock().map_err(|_| poisoned())?;
        let mut segment = self.segment.lock().map_err(|_| poisoned())?;
        let next = match spare.take() {
            Some(next) if next.id == segment.id + 1 => next,
            _ => open_segment(&self.dir, segment.id + 1)?,
        };
        let old = std::mem::replace(&mut *segment, next);
        drop(segment);
        drop(spare);
        Ok(segment_ids(&self.dir)?.into_iter().filter(|id| *id <= old.id).collect())
    }

    /// Holds the spare's lock, so a flush stops in [`Wal::prepare_rotation`] (tests only).
    #[cfg(test)]
    pub fn hold_spare(&self) -> impl Sized + '_ {
        self.spare.lock().expect("spare lock")
    }

    /// Deletes segments returned by [`Wal::rotate`].
    ///
    /// The directory is not synced here: the next segment's creation syncs it (at the next
    /// flush), and until then a crash may bring a deleted segment back, which is harmless: its
    /// records were flushed, so the replay's guards skip every one (sled changes by the LSN
    /// sled holds, audit entries by the files' length, key destructions by the slot's owner).
    /// Each sync waits for everything written before it on the disk, and a group commit's sync
    /// that ran into this one waited up to 25 ms (README "Performance").
    pub fn remove(&self, ids: &[u64]) -> Result<(), StoreError> {
        for id in ids {
            // Two flushes at once (the flusher's and the one at shutdown) may both name a
            // segment; whichever comes second finds it gone, which is what it wanted.
            match std::fs::remove_file(segment_path(&self.dir, *id)) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(io(e)),
                _ => {}
            }
        }
        Ok(())
    }
}

fn op_len(op: &Op) -> usize {
    match op {
        Op::Put(k, v) => 9 + k.len() + v.len(),
        Op::Remove(k) => 5 + k.len(),
        Op::Audit(_, v) => 13 + v.len(),
        Op::DestroyKey { .. } => 33,
    }
}

fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
    out.extend_from_slice(bytes);
}

/// Parses one frame; `None` if it is incomplete or its checksum fails.
fn parse_frame(bytes: &[u8]) -> Option<(Record, usize)> {
    let len = u32::from_le_bytes(bytes.get(0..4)?.try_into().ok()?) as usize;
    let crc = u32::from_le_bytes(bytes.get(4..8)?.try_into().ok()?);
    let payload = bytes.get(8..8 + len)?;
    if crc32fast::hash(payload) != crc {
        return None;
    }
    let lsn = u64::from_le_bytes(payload.get(0..8)?.try_into().ok()?);
    let mut at = 8;
    let mut ops = Vec::new();
    let take = |at: &mut usize| -> Option<Vec<u8>> {
        let n = u32::from_le_bytes(payload.get(*at..*at + 4)?.try_into().ok()?) as usize;
        let v = payload.get(*at + 4..*at + 4 + n)?.to_vec();
        *at += 4 + n;
        Some(v)
    };
    while at < payload.len() {
        let tag = payload[at];
        at += 1;
        match tag {
            1 => {
                let k = take(&mut at)?;
                let v = take(&mut at)?;
                ops.push(Op::Put(k, v));
            }
            2 => ops.push(Op::Remove(take(&mut at)?)),
            3 => {
                let seq = u64::from_le_bytes(payload.get(at..at + 8)?.try_into().ok()?);
                at += 8;
                ops.push(Op::Audit(seq, take(&mut at)?));
            }
            4 => {
                let field = |from: usize, to: usize| payload.get(at + from..at + to);
                let slot = u64::from_le_bytes(field(0, 8)?.try_into().ok()?);
                let customer = CustomerId::from_bytes(field(8, 24)?.try_into().ok()?);
                let lsn = u64::from_le_bytes(field(24, 32)?.try_into().ok()?);
                at += 32;
                ops.push(Op::DestroyKey { slot, owner: SlotOwner { customer, lsn } });
            }
            _ => return None,
        }
    }
    Some((Record { lsn, ops }, 8 + len))
}

fn segment_path(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("{id:016x}.wal"))
}

fn segment_ids(dir: &Path) -> Result<Vec<u64>, StoreError> {
    let mut ids = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io)? {
        let name = entry.map_err(io)?.file_name();
        let name = name.to_string_lossy();
        if let Some(id) = name.strip_suffix(".wal").and_then(|h| u64::from_str_radix(h, 16).ok()) {
            ids.push(id);
        }
    }
    ids.sort_unstable();
    Ok(ids)
}

fn open_segment(dir: &Path, id: u64) -> Result<Segment, StoreError> {
    let file = OpenOptions::new().create(true).append(true).open(segment_path(dir, id)).map_err(io)?;
    sync_dir(dir)?;
    Ok(Segment { id, file: Arc::new(file), bytes: 0 })
}

fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(io)
}

fn io(e: std::io::Error) -> StoreError {
    StoreError::Unavailable(format!("write-ahead log: {e}"))
}

fn poisoned() -> StoreError {
    StoreError::Unavailable("write-ahead log lock poisoned".into())
}

fn failed() -> StoreError {
    StoreError::Unavailable("write-ahead log failed earlier; restart to recover".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A new log in a temporary directory holding record 1 (`a` = `1`), synced.
    fn with_one_synced_record() -> (tempfile::TempDir, Wal) {
        let dir = tempfile::tempdir().unwrap();
        let wal = Wal::start(dir.path()).unwrap();
        wal.append(1, &[Op::Put(b"a".to_vec(), b"1".to_vec())]).unwrap();
        wal.sync().unwrap();
        (dir, wal)
    }

    #[test]
    fn records_round_trip_and_a_torn_tail_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let wal = Wal::start(dir.path()).unwrap();
        wal.append(1, &[Op::Put(b"a".to_vec(), b"1".to_vec()), Op::Remove(b"b".to_vec())]).unwrap();
        let destroy = Op::DestroyKey {
            slot: 9,
            owner: SlotOwner { customer: CustomerId::from_bytes([3; 16]), lsn: 1 },
        };
        wal.append(
            2,
            &[Op::Put(b"c".to_vec(), vec![0; 1000]), Op::Audit(7, b"{}".to_vec()), destroy.clone()],
        )
        .unwrap();
        wal.sync().unwrap();
        drop(wal);
        let records = Wal::read_all(dir.path()).unwrap();
        assert_eq!(records.iter().map(|r| r.lsn).collect::<Vec<_>>(), vec![1, 2]);
        assert_eq!(records[0].ops[1], Op::Remove(b"b".to_vec()));
        assert_eq!(records[1].ops[1], Op::Audit(7, b"{}".to_vec()));
        assert_eq!(records[1].ops[2], destroy);

        // Cut the last frame in half, as a crash during the write would.
        let path = segment_path(dir.path(), segment_ids(dir.path()).unwrap()[0]);
        let len = std::fs::metadata(&path).unwrap().len();
        OpenOptions::new().write(true).open(&path).unwrap().set_len(len - 510).unwrap();
        let records = Wal::read_all(dir.path()).unwrap();
        assert_eq!(records.len(), 1);
    }

    #[test]
    fn rotation_hands_back_the_old_segments() {
        let (dir, wal) = with_one_synced_record();
        let old = wal.rotate().unwrap();
        wal.append(2, &[Op::Put(b"b".to_vec(), b"2".to_vec())]).unwrap();
        wal.sync().unwrap();
        wal.remove(&old).unwrap();
        let records = Wal::read_all(dir.path()).unwrap();
        assert_eq!(records.iter().map(|r| r.lsn).collect::<Vec<_>>(), vec![2]);
    }

    #[test]
    fn a_prepared_segment_is_the_next_one_and_empty_it_replays_as_nothing() {
        let (dir, wal) = with_one_synced_record();
        wal.prepare_rotation().unwrap();
        wal.prepare_rotation().unwrap();
        assert_eq!(segment_ids(dir.path()).unwrap().len(), 2, "one spare, however often prepared");
        // A crash here leaves an empty newest segment: the replay reads past it.
        let records = Wal::read_all(dir.path()).unwrap();
        assert_eq!(records.iter().map(|r| r.lsn).collect::<Vec<_>>(), vec![1]);
        let old = wal.rotate().unwrap();
        wal.append(2, &[Op::Put(b"b".to_vec(), b"2".to_vec())]).unwrap();
        wal.sync().unwrap();
        assert_eq!(segment_ids(dir.path()).unwrap().len(), 2, "the rotation used the spare");
        wal.remove(&old).unwrap();
        let records = Wal::read_all(dir.path()).unwrap();
        assert_eq!(records.iter().map(|r| r.lsn).collect::<Vec<_>>(), vec![2]);
    }

    #[test]
    fn a_torn_tail_before_a_prepared_empty_segment_is_ignored() {
        // The flusher prepares the next segment, then waits for the apply lock while a group
        // writes its record to the current one; a crash (or SIGKILL mid-write) tears that
        // record, never acknowledged. The empty spare must not make it "before the last".
        let (dir, wal) = with_one_synced_record();
        wal.prepare_rotation().unwrap();
        wal.append(2, &[Op::Put(b"b".to_vec(), vec![0; 9000])]).unwrap();
        drop(wal);
        let ids = segment_ids(dir.path()).unwrap();
        assert_eq!(ids.len(), 2, "the current segment and the spare");
        let path = segment_path(dir.path(), ids[0]);
        let len = std::fs::metadata(&path).unwrap().len();
        OpenOptions::new().write(true).open(&path).unwrap().set_len(len - 4096).unwrap();
        let records = Wal::read_all(dir.path()).unwrap();
        assert_eq!(records.iter().map(|r| r.lsn).collect::<Vec<_>>(), vec![1]);
    }

    #[test]
    fn a_damaged_frame_before_the_last_segment_is_an_error() {
        let (dir, wal) = with_one_synced_record();
        let _ = wal.rotate().unwrap();
        wal.append(2, &[Op::Put(b"b".to_vec(), b"2".to_vec())]).unwrap();
        wal.sync().unwrap();
        let first = segment_path(dir.path(), segment_ids(dir.path()).unwrap()[0]);
        let mut bytes = std::fs::read(&first).unwrap();
        bytes[10] ^= 0xff;
        std::fs::write(&first, bytes).unwrap();
        assert!(matches!(Wal::read_all(dir.path()), Err(StoreError::Corrupt(_))));
    }
}
