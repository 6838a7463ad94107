//! The embedded default backend: one sled tree, keys namespaced by a one-byte prefix.
//!
//! Keeping everything in one tree lets a single `sled::Batch` carry a record, its index entries
//! and its audit event, which sled applies atomically. Every write goes through one writer lock,
//! so version checks, unique checks and audit sequence numbers need no retries inside sled.
//! Durability comes from the write-ahead log (`wal.rs`): each batch is logged in apply order,
//! group commit syncs the log, and a background checkpoint flushes sled and drops old segments.
//!
//! Key layout:
//! - `c` ‖ customer id (16) → encoded [`CustomerRecord`]
//! - `i` ‖ field ‖ 0x00 ‖ blind index (32) ‖ customer id (16) → empty
//!
//! Audit entries are not in sled but in append-only files (`audit_files.rs`), one entry per
//! event: `n (1) ‖ n × (level (1) ‖ hash (32)) ‖ event` — the Merkle nodes this leaf completes
//! (its own leaf hash at level 0 first), then the canonical JSON. Node (level, index) is
//! completed by leaf `(index + 1) · 2^level − 1`, so it is found in that leaf's entry.
//! - `x` ‖ customer id (16) ‖ seq (8) → empty (per-customer audit history)
//! - `k` ‖ tree size (8, big-endian) → signed checkpoint note
//! - `m` ‖ name → metadata (`m` ‖ `wal_lsn` holds the LSN of the last applied batch)

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;

use super::audit_files::AuditFiles;
use super::wal::{Op, Wal};
use super::{
    AuditAppend, Commit, CustomerChange, CustomerRecord, GroupCommit, IndexEntry, Store, StoreError,
};
use crate::crypto::BlindIndex;
use crate::domain::CustomerId;

/// Customer records, index entries, audit log and metadata in one sled database.
pub struct SledStore {
    tree: sled::Tree,
    db: sled::Db,
    wal: Arc<Wal>,
    audit: Arc<AuditFiles>,
    writer: Arc<Mutex<WriterState>>,
    group_commit: GroupCommit,
    /// Held for its `Drop`, which stops the checkpoint thread.
    _checkpointer: Checkpointer,
}

struct WriterState {
    /// LSN of the last batch applied (and logged).
    lsn: u64,
}

/// A checkpoint is taken when the current log segment is this large, or this old.
const CHECKPOINT_BYTES: u64 = 64 * 1024 * 1024;
const CHECKPOINT_EVERY: Duration = Duration::from_secs(1);
const WAL_LSN: &str = "wal_lsn";

impl SledStore {
    /// Opens (or creates) the database in `dir`, replaying the write-ahead log. `cache_bytes`
    /// bounds sled's page cache.
    pub fn open(dir: &Path, cache_bytes: u64) -> Result<Self, StoreError> {
        let db = sled::Config::new()
            .path(dir)
            .cache_capacity(cache_bytes)
            .mode(sled::Mode::HighThroughput)
            // Durability comes from the write-ahead log and checkpoints; sled's timer thread
            // would only add uncontrolled I/O and hold the directory lock after a drop.
            .flush_every_ms(None)
            .open()
            .map_err(unavailable)?;
        let tree = db.open_tree("custodia").map_err(unavailable)?;
        let wal_dir = dir.join("wal");
        let (mut lsn, sled_audit_len) = match tree.get(meta_key(WAL_LSN)).map_err(unavailable)? {
            Some(bytes) => decode_lsn(&bytes)?,
            None => (0, 0),
        };
        // Replay what sled lost: every logged batch newer than the last one sled holds.
        let audit_dir = dir.join("audit");
        std::fs::create_dir_all(&audit_dir)
            .map_err(|e| StoreError::Unavailable(format!("creating {}: {e}", audit_dir.display())))?;
        let audit = Arc::new(AuditFiles::open(&audit_dir)?);
        let durable_in_sled = lsn;
        for record in Wal::read_all(&wal_dir)? {
            // Audit entries: whatever the files lack. Sled changes: batches newer than sled's.
            for op in &record.ops {
                if let Op::Audit(seq, entry) = op
                    && *seq >= audit.len()?
                {
                    audit.push(*seq, Arc::from(entry.as_slice()))?;
                }
            }
            if record.lsn > durable_in_sled {
                tree.apply_batch(to_batch(&record.ops)).map_err(unavailable)?;
                lsn = record.lsn;
            }
        }
        // invariant: the log is written before sled, so sled cannot hold a batch whose audit
        // entry the log and files lack. If it does (the disk lost synced log pages), refuse to
        // run rather than reuse sequence numbers for other events.
        if sled_audit_len > audit.len()? {
            return Err(StoreError::Corrupt(format!(
                "the store holds changes up to audit entry {} but the audit log ends at {}: refusing to start",
                sled_audit_len,
                audit.len()?
            )));
        }
        db.flush().map_err(unavailable)?;
        audit.persist()?;
        let wal = Arc::new(Wal::start(&wal_dir)?);
        let flush_wal = Arc::clone(&wal);
        let group_commit = GroupCommit::start("wal", Box::new(move || flush_wal.sync()));
        let writer = Arc::new(Mutex::new(WriterState { lsn }));
        let checkpointer =
            Checkpointer::start(db.clone(), Arc::clone(&wal), Arc::clone(&audit), Arc::clone(&writer));
        Ok(SledStore { tree, db, wal, audit, writer, group_commit, _checkpointer: checkpointer })
    }

    /// Makes everything durable in sled itself and empties the log (used at shutdown).
    pub fn flush(&self) -> Result<(), StoreError> {
        self.wal.sync().map_err(StoreError::Unavailable)?;
        checkpoint(&self.db, &self.wal, &self.audit, &self.writer)
    }

    /// Logs `ops`, then applies them as one atomic sled batch. Called with the writer lock held,
    /// so LSN order, log order and apply order are one order.
    fn apply_ops(&self, writer: &mut WriterState, mut ops: Vec<Op>) -> Result<(), StoreError> {
        let lsn = writer.lsn + 1;
        let appended = ops.iter().filter(|op| matches!(op, Op::Audit(..))).count() as u64;
        let audit_len = self.audit.len()? + appended;
        ops.push(Op::Put(meta_key(WAL_LSN), encode_lsn(lsn, audit_len)));
        // invariant: log first. A batch sled holds is always in the log (a crash can leave a
        // logged batch unapplied, which replay applies, never the reverse).
        self.wal.append(lsn, &ops)?;
        writer.lsn = lsn;
        self.tree.apply_batch(to_batch(&ops)).map_err(unavailable)?;
        for op in &ops {
            if let Op::Audit(seq, entry) = op {
                self.audit.push(*seq, Arc::from(entry.as_slice()))?;
            }
        }
        Ok(())
    }

    fn apply(&self, commit: Commit) -> Result<(), StoreError> {
        let mut writer = self.writer.lock().map_err(|_| poisoned())?;
        if let Some(audit) = &commit.audit {
            let expected = self.audit.len()?;
            if audit.seq != expected {
                return Err(StoreError::AuditOutOfOrder { expected, got: audit.seq });
            }
        }
        let mut ops = Vec::with_capacity(8);
        if let Some(change) = commit.customer {
            self.stage_customer(&mut ops, change)?;
        }
        if let Some(audit) = &commit.audit {
            stage_audit(&mut ops, audit);
        }
        self.apply_ops(&mut writer, ops)
    }

    /// Checks the change against what is stored and adds its writes to `ops`.
    /// Called with the writer lock held.
    fn stage_customer(&self, ops: &mut Vec<Op>, change: CustomerChange) -> Result<(), StoreError> {
        let id = match &change {
            CustomerChange::Put { record, .. } => record.id,
            CustomerChange::Delete { id, .. } => *id,
        };
        let current = self.read_customer(&id)?;
        let (expected, stored_version) = match &change {
            CustomerChange::Put { expected_version, .. } => {
                (*expected_version, current.as_ref().map(|r| r.version))
            }
            CustomerChange::Delete { expected_version, .. } => {
                (Some(*expected_version), current.as_ref().map(|r| r.version))
            }
        };
        if expected != stored_version {
            return Err(StoreError::VersionConflict);
        }
        let old_entries: &[IndexEntry] = current.as_ref().map_or(&[], |r| &r.index_entries);
        match change {
            CustomerChange::Put { record, expected_version } => {
                if record.version != expected_version.unwrap_or(0) + 1 {
                    return Err(StoreError::VersionConflict);
                }
                for entry in old_entries.iter().filter(|e| !record.index_entries.contains(e)) {
                    ops.push(Op::Remove(index_key(&entry.field, &entry.index, &id)));
                }
                for entry in record.index_entries.iter().filter(|e| !old_entries.contains(e)) {
                    if entry.unique && self.index_owners(&entry.field, &entry.index)?.iter().any(|o| o != &id)
                    {
                        return Err(StoreError::UniqueViolation { field: entry.field.clone() });
                    }
                    ops.push(Op::Put(index_key(&entry.field, &entry.index, &id), Vec::new()));
                }
                ops.push(Op::Put(customer_key(&id).to_vec(), record.encode()?));
            }
            CustomerChange::Delete { .. } => {
                for entry in old_entries {
                    ops.push(Op::Remove(index_key(&entry.field, &entry.index, &id)));
                }
                ops.push(Op::Remove(customer_key(&id).to_vec()));
            }
        }
        Ok(())
    }

    fn read_customer(&self, id: &CustomerId) -> Result<Option<CustomerRecord>, StoreError> {
        match self.tree.get(customer_key(id)).map_err(unavailable)? {
            Some(bytes) => CustomerRecord::decode(&bytes).map(Some),
            None => Ok(None),
        }
    }

    fn index_owners(&self, field: &str, index: &[u8; 32]) -> Result<Vec<CustomerId>, StoreError> {
        let prefix = index_prefix(field, index);
        let mut owners = Vec::new();
        for entry in self.tree.scan_prefix(&prefix) {
            let (key, _) = entry.map_err(unavailable)?;
            let tail: [u8; 16] =
                key[prefix.len()..].try_into().map_err(|_| StoreError::Corrupt("index key length".into()))?;
            owners.push(CustomerId::from_bytes(tail));
        }
        Ok(owners)
    }
}

#[async_trait]
impl Store for SledStore {
    async fn customer(&self, id: &CustomerId) -> Result<Option<CustomerRecord>, StoreError> {
        self.read_customer(id)
    }

    async fn lookup(&self, field: &str, index: &BlindIndex) -> Result<Vec<CustomerId>, StoreError> {
        self.index_owners(field, &index.0)
    }

    async fn commit(&self, commit: Commit) -> Result<(), StoreError> {
        self.apply(commit)
    }

    async fn sync(&self) -> Result<(), StoreError> {
        self.group_commit.wait_durable().await
    }

    async fn meta(&self, name: &str) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.tree.get(meta_key(name)).map_err(unavailable)?.map(|v| v.to_vec()))
    }

    async fn init_meta(&self, name: &str, value: Vec<u8>) -> Result<Vec<u8>, StoreError> {
        let stored = {
            let mut writer = self.writer.lock().map_err(|_| poisoned())?;
            match self.tree.get(meta_key(name)).map_err(unavailable)? {
                Some(existing) => existing.to_vec(),
                None => {
                    self.apply_ops(&mut writer, vec![Op::Put(meta_key(name), value.clone())])?;
                    value
                }
            }
        };
        self.sync().await?;
        Ok(stored)
    }

    async fn put_meta(&self, name: &str, value: Vec<u8>) -> Result<(), StoreError> {
        {
            let mut writer = self.writer.lock().map_err(|_| poisoned())?;
            self.apply_ops(&mut writer, vec![Op::Put(meta_key(name), value)])?;
        }
        self.sync().await
    }

    async fn audit_size(&self) -> Result<u64, StoreError> {
        self.audit.len()
    }

    async fn audit_events(&self, from: u64, limit: usize) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
        let mut out = Vec::new();
        for seq in from..from.saturating_add(limit as u64) {
            let Some(entry) = self.audit.get(seq)? else { break };
            out.push((seq, stored_event(&entry)?.1.to_vec()));
        }
        Ok(out)
    }

    async fn audit_events_for_customer(
        &self,
        customer: &CustomerId,
        after: Option<u64>,
        limit: usize,
    ) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
        let mut start = history_prefix(customer);
        let prefix_len = start.len();
        start.extend_from_slice(&after.map_or(0, |a| a.saturating_add(1)).to_be_bytes());
        let mut end = history_prefix(customer);
        end.extend_from_slice(&u64::MAX.to_be_bytes());
        let mut out = Vec::new();
        for entry in self.tree.range(start..=end).take(limit) {
            let (key, _) = entry.map_err(unavailable)?;
            let seq = u64::from_be_bytes(
                key[prefix_len..].try_into().map_err(|_| StoreError::Corrupt("history key length".into()))?,
            );
            let event = self
                .audit
                .get(seq)?
                .ok_or_else(|| StoreError::Corrupt(format!("history names missing event {seq}")))?;
            out.push((seq, stored_event(&event)?.1.to_vec()));
        }
        Ok(out)
    }

    async fn customer_ids(
        &self,
        after: Option<CustomerId>,
        limit: usize,
    ) -> Result<Vec<CustomerId>, StoreError> {
        let start = match after {
            Some(id) => {
                let mut key = customer_key(&id).to_vec();
                key.push(0);
                key
            }
            None => vec![b'c'],
        };
        let mut out = Vec::new();
        for entry in self.tree.range(start..vec![b'c' + 1]).take(limit) {
            let (key, _) = entry.map_err(unavailable)?;
            let bytes: [u8; 16] =
                key[1..].try_into().map_err(|_| StoreError::Corrupt("customer key length".into()))?;
            out.push(CustomerId::from_bytes(bytes));
        }
        Ok(out)
    }

    async fn audit_node(&self, level: u8, index: u64) -> Result<Option<[u8; 32]>, StoreError> {
        // The leaf that completes node (level, index) is (index + 1) · 2^level − 1.
        let Some(seq) = index
            .checked_add(1)
            .and_then(|n| n.checked_mul(1u64.checked_shl(u32::from(level))?))
            .map(|n| n - 1)
        else {
            return Ok(None);
        };
        match self.audit.get(seq)? {
            Some(value) => Ok(stored_event(&value)?.0.into_iter().find(|(l, _)| *l == level).map(|(_, h)| h)),
            None => Ok(None),
        }
    }

    async fn put_checkpoint(&self, size: u64, note: Vec<u8>) -> Result<(), StoreError> {
        let mut writer = self.writer.lock().map_err(|_| poisoned())?;
        self.apply_ops(&mut writer, vec![Op::Put(checkpoint_key(size).to_vec(), note)])
    }

    async fn latest_checkpoint(&self) -> Result<Option<(u64, Vec<u8>)>, StoreError> {
        match self.tree.scan_prefix([b'k']).next_back() {
            Some(entry) => {
                let (key, value) = entry.map_err(unavailable)?;
                Ok(Some((seq_from_key(&key)?, value.to_vec())))
            }
            None => Ok(None),
        }
    }
}

fn stage_audit(ops: &mut Vec<Op>, audit: &AuditAppend) {
    let mut value = Vec::with_capacity(1 + 33 * audit.nodes.len() + audit.event.len());
    // invariant: a leaf completes at most 64 nodes (one per level), so the count fits a byte.
    value.push(audit.nodes.len() as u8);
    for (level, _, hash) in &audit.nodes {
        value.push(*level);
        value.extend_from_slice(hash);
    }
    value.extend_from_slice(&audit.event);
    ops.push(Op::Audit(audit.seq, value));
    if let Some(customer) = &audit.customer {
        let mut key = history_prefix(customer);
        key.extend_from_slice(&audit.seq.to_be_bytes());
        ops.push(Op::Put(key, Vec::new()));
    }
}

/// The `wal_lsn` value: the batch's LSN and the audit log length after it.
fn encode_lsn(lsn: u64, audit_len: u64) -> Vec<u8> {
    let mut value = lsn.to_be_bytes().to_vec();
    value.extend_from_slice(&audit_len.to_be_bytes());
    value
}

fn decode_lsn(bytes: &[u8]) -> Result<(u64, u64), StoreError> {
    let part = |r: std::ops::Range<usize>| -> Result<u64, StoreError> {
        Ok(u64::from_be_bytes(
            bytes
                .get(r)
                .and_then(|b| b.try_into().ok())
                .ok_or_else(|| StoreError::Corrupt("wal lsn".into()))?,
        ))
    };
    Ok((part(0..8)?, part(8..16)?))
}

fn to_batch(ops: &[Op]) -> sled::Batch {
    let mut batch = sled::Batch::default();
    for op in ops {
        match op {
            Op::Put(k, v) => batch.insert(k.as_slice(), v.as_slice()),
            Op::Remove(k) => batch.remove(k.as_slice()),
            Op::Audit(..) => {}
        }
    }
    batch
}

/// Flushes sled and drops the log segments the flush made redundant.
fn checkpoint(
    db: &sled::Db,
    wal: &Wal,
    audit: &AuditFiles,
    writer: &Mutex<WriterState>,
) -> Result<(), StoreError> {
    // invariant: rotate under the writer lock, so no batch is between its log write and its
    // apply; every record in the returned segments was then applied (to sled and to the audit
    // tail) before the flush and the persist started, which both cover it.
    let old = {
        let _no_writes = writer.lock().map_err(|_| poisoned())?;
        wal.rotate()?
    };
    db.flush().map_err(unavailable)?;
    audit.persist()?;
    wal.remove(&old)
}

/// Takes a checkpoint in the background when the log segment grows large or old.
struct Checkpointer {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Checkpointer {
    fn start(db: sled::Db, wal: Arc<Wal>, audit: Arc<AuditFiles>, writer: Arc<Mutex<WriterState>>) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name("sled-checkpoint".into())
            .spawn(move || {
                let mut last = Instant::now();
                while !stopping.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(100));
                    let due = wal.segment_bytes() >= CHECKPOINT_BYTES
                        || (last.elapsed() >= CHECKPOINT_EVERY && wal.segment_bytes() > 0);
                    if due {
                        if let Err(e) = checkpoint(&db, &wal, &audit, &writer) {
                            tracing::error!(error = %e, "checkpoint failed; the log keeps growing until one succeeds");
                        }
                        last = Instant::now();
                    }
                }
            })
            .ok();
        Checkpointer { stop, thread }
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn history_prefix(customer: &CustomerId) -> Vec<u8> {
    let mut key = Vec::with_capacity(25);
    key.push(b'x');
    key.extend_from_slice(customer.as_bytes());
    key
}

fn customer_key(id: &CustomerId) -> [u8; 17] {
    let mut key = [0u8; 17];
    key[0] = b'c';
    key[1..].copy_from_slice(id.as_bytes());
    key
}

fn index_prefix(field: &str, index: &[u8; 32]) -> Vec<u8> {
    let mut key = Vec::with_capacity(2 + field.len() + 32 + 16);
    key.push(b'i');
    key.extend_from_slice(field.as_bytes());
    key.push(0);
    key.extend_from_slice(index);
    key
}

fn index_key(field: &str, index: &[u8; 32], id: &CustomerId) -> Vec<u8> {
    let mut key = index_prefix(field, index);
    key.extend_from_slice(id.as_bytes());
    key
}

/// (level, hash) of the Merkle nodes one leaf completed.
type CompletedNodes = Vec<(u8, [u8; 32])>;

/// Splits a stored `e` value into the nodes its leaf completed and the event bytes.
fn stored_event(value: &[u8]) -> Result<(CompletedNodes, &[u8]), StoreError> {
    let corrupt = || StoreError::Corrupt("audit entry layout".into());
    let (&count, mut rest) = value.split_first().ok_or_else(corrupt)?;
    let mut nodes = Vec::with_capacity(usize::from(count));
    for _ in 0..count {
        let (head, tail) = rest.split_at_checked(33).ok_or_else(corrupt)?;
        let hash: [u8; 32] = head[1..].try_into().map_err(|_| corrupt())?;
        nodes.push((head[0], hash));
        rest = tail;
    }
    Ok((nodes, rest))
}

fn checkpoint_key(size: u64) -> [u8; 9] {
    let mut key = [0u8; 9];
    key[0] = b'k';
    key[1..].copy_from_slice(&size.to_be_bytes());
    key
}

fn meta_key(name: &str) -> Vec<u8> {
    let mut key = vec![b'm'];
    key.extend_from_slice(name.as_bytes());
    key
}

fn seq_from_key(key: &[u8]) -> Result<u64, StoreError> {
    let bytes: [u8; 8] = key
        .get(1..9)
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| StoreError::Corrupt("audit key length".into()))?;
    Ok(u64::from_be_bytes(bytes))
}

fn unavailable(e: sled::Error) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

fn poisoned() -> StoreError {
    StoreError::Unavailable("store writer lock poisoned".into())
}
