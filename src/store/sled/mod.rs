//! The embedded default backend: one sled tree (key layout in `keys.rs`) for checkpoints and
//! metadata, customer records and their blind-index entries in a record
//! file (`records.rs`), data keys in a key file (`key_file.rs`), audit entries in append-only
//! files (`audit_files.rs`), all made durable by a write-ahead log (`wal.rs`).
//!
//! Writes go to one writer thread (`writer.rs`) that commits them in groups: one log record and
//! one `fdatasync` per group, then the group's records applied to the record file, its other
//! keys to sled and its entries to the audit files, events integrated inline, so a single node
//! needs no separate sequencer. A flusher thread (`flusher.rs`) persists the record file and
//! flushes sled in the background, writes the per-customer history rows of the entries since
//! the last flush, persists the audit files and deletes the log segments they made redundant.
//!
//! Recovery invariant: every group that changes sled ends with its log sequence number (LSN)
//! under `wal_lsn`, and groups are applied in LSN order. sled recovers a prefix of its own
//! writes, so after a crash it holds the groups up to some LSN `L` (and perhaps part of the
//! next); replaying the logged records with LSN > `L`, in order, restores every group whose
//! log record became durable (puts and removes are idempotent). The record file keeps its own
//! LSN and is replayed from there in the same way. Audit entries the files lack are taken from
//! the log too.

mod audit_files;
mod fjall_open;
mod flusher;
mod history;
mod key_file;
mod keys;
mod records;
mod wal;
mod writer;

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::mpsc::{self, Sender};
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;

use async_trait::async_trait;
use tokio::sync::oneshot;

use self::audit_files::AuditFiles;
use self::flusher::Flusher;
use self::history::HistoryIndex;
use self::key_file::KeyFile;
use self::keys::{
    CUSTOMER_PREFIX, EntryOwners, HISTORY_LEN, KEY_FILE_MARK, LEGACY_INDEX_PREFIX, OWNERS_PREFIX,
    RECORDS_MARK, WAL_LSN, completing_leaf, corrupt, decode_entry, decode_pair, entry_key, meta_key,
    owner_key, trailing_u64,
};
use self::records::{INDEX_LAYOUT, RecordFile, RecordOp};
use self::wal::{Op, Wal};
use self::writer::Job;
use super::{
    CustomerRecord, Hash, Integrator, MetaEquals, NodeId, Store, StoreError, TreeHead, Write, Written,
};
use crate::crypto::BlindIndex;
use crate::domain::CustomerId;

/// Customer records, blind-index entries, audit log and metadata in one data directory:
/// sled, the record file, the key file and the audit files, behind one write-ahead log.
pub struct SledStore {
    shared: Arc<Shared>,
    /// The writer thread's queue; `None` once closed.
    jobs: Mutex<Option<Sender<Job>>>,
    writer: Mutex<Option<JoinHandle<()>>>,
    flusher: Mutex<Option<Flusher>>,
}

/// What the store's handle, the writer thread and the flusher share.
struct Shared {
    tree: sled::Tree,
    db: sled::Db,
    wal: Wal,
    audit: AuditFiles,
    /// Wrapped data keys, one slot each; records name their slot.
    keys: KeyFile,
    /// Customer records (the `c` keys of the log's ops), outside sled's B-tree.
    records: RecordFile,
    /// Per-customer history rows of the entries below `history_len` (and perhaps some after).
    history: HistoryIndex,
    integrator: Arc<dyn Integrator>,
    /// Held from a group's log append until sled and the audit files have it; the flusher takes
    /// it to rotate the log between groups.
    apply: Mutex<Applied>,
    /// The durable head: events below `size` are in the log and synced.
    head: RwLock<TreeHead>,
    /// (customer, seq) of the entries whose history rows are not in the history index yet (at
    /// or after the stored `history_len`); readers merge them with the rows.
    history_tail: RwLock<BTreeSet<(CustomerId, u64)>>,
    /// Set after any failure that followed a log append: writes answer 503 until a restart.
    poisoned: AtomicBool,
    /// Test hook: fail the next groups right after their log append.
    #[cfg(test)]
    fail_after_append: AtomicBool,
}

struct Applied {
    /// LSN of the last group logged.
    lsn: u64,
}

impl SledStore {
    /// Opens (or creates) the database in `dir`, replaying the write-ahead log; `cache_bytes`
    /// bounds sled's page cache, and `integrator` completes the log's leaves.
    pub fn open(dir: &Path, cache_bytes: u64, integrator: Arc<dyn Integrator>) -> Result<Self, StoreError> {
        let db = open_db(dir, cache_bytes)?;
        let tree = db.open_tree("custodia").map_err(unavailable)?;
        let (mut lsn, sled_audit_len) = match tree.get(meta_key(WAL_LSN)).map_err(unavailable)? {
            Some(bytes) => decode_pair(&bytes)?,
            None => (0, 0),
        };
        let audit_dir = dir.join("audit");
        std::fs::create_dir_all(&audit_dir)
            .map_err(|e| StoreError::Unavailable(format!("creating {}: {e}", audit_dir.display())))?;
        let audit = AuditFiles::open(&audit_dir)?;
        let (keys, created) = KeyFile::open(&dir.join(KEY_FILE))?;
        // A store whose key file was deleted would open with every customer unreadable:
        // refuse, naming the file. The mark is set once the file exists.
        let marked = tree.get(meta_key(KEY_FILE_MARK)).map_err(unavailable)?.is_some();
        if created && marked {
            return Err(StoreError::Corrupt(format!(
                "{} is missing or empty but this store's records keep their data keys there: refusing to start",
                dir.join(KEY_FILE).display()
            )));
        }
        if !marked {
            tree.insert(meta_key(KEY_FILE_MARK), &[] as &[u8]).map_err(unavailable)?;
        }
        let (records, records_from) = open_records(dir, &db, &tree, lsn)?;
        // Replay what sled lost: every logged batch newer than the last one sled holds, and
        // every audit entry the files lack. Every logged key destruction is repeated (it is
        // guarded by the slot's owner, so a slot reused since is spared).
        let wal_dir = dir.join("wal");
        let durable_in_sled = lsn;
        for record in Wal::read_all(&wal_dir)? {
            for op in &record.ops {
                match op {
                    Op::Audit(seq, entry) if *seq >= audit.len()? => {
                        audit.push(*seq, Arc::from(entry.as_slice()))?;
                    }
                    Op::DestroyKey { slot, owner } => {
                        keys.destroy(*slot, *owner)?;
                    }
                    _ => {}
                }
            }
            // sled and the records each recovered a prefix of the groups, up to their own LSN.
            if record.lsn > records_from && record.ops.iter().any(|op| record_op(op).is_some()) {
                records.apply(record.lsn, record.ops.iter().filter_map(record_op))?;
            }
            if record.lsn > durable_in_sled {
                if record
                    .ops
                    .iter()
                    .any(|op| matches!(op, Op::Put(..) | Op::Remove(..)) && record_op(op).is_none())
                {
                    tree.apply_batch(to_batch(&record.ops)).map_err(unavailable)?;
                }
                lsn = record.lsn;
            }
        }
        if records_from > lsn {
            return Err(StoreError::Corrupt(format!(
                "the customer records hold changes up to log record {records_from} but the log and sled end at {lsn}: refusing to start"
            )));
        }
        build_index(&records)?;
        keys.sync()?;
        let orphans = keys.recover(lsn)?;
        if orphans > 0 {
            tracing::info!(slots = orphans, "zeroed key slots of writes that never became durable");
        }
        // invariant: the log is written before sled, so sled cannot hold a batch whose audit
        // entry the log and files lack. If it does (the disk lost synced log pages), refuse to
        // run rather than give other events the same seqs.
        if sled_audit_len > audit.len()? {
            return Err(StoreError::Corrupt(format!(
                "the store holds changes up to audit entry {} but the audit log ends at {}: refusing to start",
                sled_audit_len,
                audit.len()?
            )));
        }
        audit.persist()?;
        let size = audit.len()?;
        // History rows of the entries since the last flush, written now with their high-water
        // mark, so every open leaves `history_len` stored and the tail empty. Stores written
        // before history rows were derived at flush time hold a row for every entry sled has
        // and no `history_len`: it defaults to that. A new or damaged index (a store from
        // before the index, or lost files) is rebuilt from the first entry.
        let history_dir = history::history_dir(dir);
        let index_existed = history_dir.exists();
        let (history, reset) = HistoryIndex::open_or_reset(&history_dir)?;
        let history_len = match tree.get(meta_key(HISTORY_LEN)).map_err(unavailable)? {
            _ if reset || !index_existed => 0,
            Some(bytes) => trailing_u64(&bytes)?,
            None => sled_audit_len,
        };
        let mut from = history_len;
        while from < size {
            let to = size.min(from + REBUILD_CHUNK);
            history.insert(&history_of(&audit, from, to)?)?;
            from = to;
        }
        history.persist()?;
        tree.insert(meta_key(HISTORY_LEN), &size.to_be_bytes()).map_err(unavailable)?;
        // Rows of stores from before the index lived in sled; they are in the index now.
        for key in tree.scan_prefix(keys::LEGACY_HISTORY_PREFIX).keys() {
            tree.remove(key.map_err(unavailable)?).map_err(unavailable)?;
        }
        // Only once sled, the records and the audit files hold everything may the log go.
        records.persist()?;
        // The blind-index entries are built in the record file, durable and marked: sled's
        // entries of a store from before them can go (again on every open until a flush makes
        // it final; a replay puts back those logged before the build).
        for key in tree.scan_prefix(LEGACY_INDEX_PREFIX).keys() {
            tree.remove(key.map_err(unavailable)?).map_err(unavailable)?;
        }
        db.flush().map_err(unavailable)?;
        let wal = Wal::start(&wal_dir)?;
        let history_tail = BTreeSet::new();
        let head = stored_head(&audit, size)?;
        let shared = Arc::new(Shared {
            tree,
            db,
            wal,
            audit,
            keys,
            records,
            history,
            integrator,
            apply: Mutex::new(Applied { lsn }),
            head: RwLock::new(head),
            history_tail: RwLock::new(history_tail),
            poisoned: AtomicBool::new(false),
            #[cfg(test)]
            fail_after_append: AtomicBool::new(false),
        });
        let (sender, receiver) = mpsc::channel();
        let writer_shared = Arc::clone(&shared);
        let writer = std::thread::Builder::new()
            .name("sled-writer".into())
            .spawn(move || writer::run(&writer_shared, &receiver))
            .map_err(|e| StoreError::Unavailable(format!("starting the writer thread: {e}")))?;
        let flusher = Flusher::start(Arc::clone(&shared))?;
        Ok(SledStore {
            shared,
            jobs: Mutex::new(Some(sender)),
            writer: Mutex::new(Some(writer)),
            flusher: Mutex::new(Some(flusher)),
        })
    }

    /// Hands a job to the writer thread.
    fn submit(&self, job: Job) -> Result<(), StoreError> {
        let jobs = self.jobs.lock().map_err(|_| closed())?;
        jobs.as_ref().ok_or_else(closed)?.send(job).map_err(|_| closed())
    }

    fn read_customer(&self, id: &CustomerId) -> Result<Option<CustomerRecord>, StoreError> {
        let key = id.as_bytes();
        let Some(mut value) = self.shared.records.get(key)? else { return Ok(None) };
        // A re-wrap or an erasure may destroy (and reuse) the slot this value names between the
        // two reads. The writer applies the new record before it destroys the old slot, so the
        // record read again names the new slot, or is gone; an unchanged record whose slot
        // does not hold its key is corruption.
        for _ in 0..READ_ATTEMPTS {
            let error = match self.shared.record(&value) {
                Ok((record, _)) => return Ok(Some(record)),
                Err(e) => e,
            };
            match self.shared.records.get(key)? {
                Some(again) if again != value => value = again,
                Some(_) => return Err(error),
                None => return Ok(None),
            }
        }
        Err(StoreError::Unavailable("a customer record kept changing while it was read".into()))
    }

    /// The durable size: events at or past it are not shown.
    fn size(&self) -> Result<u64, StoreError> {
        Ok(self.shared.head.read().map_err(|_| closed())?.size)
    }

    /// The event bytes of entry `seq`.
    fn event(&self, seq: u64) -> Result<Option<Vec<u8>>, StoreError> {
        match self.shared.audit.get(seq)? {
            Some(entry) => Ok(Some(decode_entry(&entry)?.1.to_vec())),
            None => Ok(None),
        }
    }

    /// Stops the threads; the writer finishes the groups already queued.
    fn stop(&self) {
        if let Ok(mut jobs) = self.jobs.lock() {
            jobs.take();
        }
        if let Some(writer) = self.writer.lock().ok().and_then(|mut w| w.take()) {
            let _ = writer.join();
        }
        if let Some(flusher) = self.flusher.lock().ok().and_then(|mut f| f.take()) {
            drop(flusher);
        }
    }
}

impl Drop for SledStore {
    fn drop(&mut self) {
        self.stop();
    }
}

async fn answer<T>(reply: oneshot::Receiver<Result<T, StoreError>>) -> Result<T, StoreError> {
    reply.await.map_err(|_| StoreError::Unavailable("the store's writer stopped".into()))?
}

#[async_trait]
impl Store for SledStore {
    async fn customer(&self, id: &CustomerId) -> Result<Option<CustomerRecord>, StoreError> {
        self.read_customer(id)
    }

    async fn lookup(&self, field: &str, index: &BlindIndex) -> Result<Vec<CustomerId>, StoreError> {
        let entry = entry_key(field, &index.0);
        self.shared.records.owners_of(&entry[OWNERS_PREFIX.len()..])
    }

    async fn customer_ids(
        &self,
        after: Option<CustomerId>,
        limit: usize,
    ) -> Result<Vec<CustomerId>, StoreError> {
        self.shared.records.ids(after.as_ref(), limit)
    }

    async fn write(&self, write: Write) -> Result<Written, StoreError> {
        let mut outcomes = self.write_many(vec![write]).await?;
        // invariant: the writer answers one outcome per write.
        outcomes.pop().unwrap_or_else(|| Err(StoreError::Unavailable("no outcome for a write".into())))
    }

    async fn write_many(&self, writes: Vec<Write>) -> Result<Vec<Result<Written, StoreError>>, StoreError> {
        let (reply, outcome) = oneshot::channel();
        self.submit(Job::Writes { writes, reply })?;
        answer(outcome).await
    }

    async fn import(&self, record: CustomerRecord) -> Result<(), StoreError> {
        let (reply, outcome) = oneshot::channel();
        self.submit(Job::Import { record: Box::new(record), reply })?;
        answer(outcome).await
    }

    async fn meta(&self, name: &str) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.shared.tree.get(meta_key(name)).map_err(unavailable)?.map(|v| v.to_vec()))
    }

    async fn init_meta(&self, name: &str, value: Vec<u8>) -> Result<Vec<u8>, StoreError> {
        reserved(name)?;
        let (reply, outcome) = oneshot::channel();
        self.submit(Job::init_meta(name, value, reply))?;
        answer(outcome).await
    }

    async fn put_meta(&self, name: &str, value: Vec<u8>) -> Result<(), StoreError> {
        reserved(name)?;
        let (reply, outcome) = oneshot::channel();
        self.submit(Job::Put { key: meta_key(name), value, reply })?;
        answer(outcome).await
    }

    async fn swap_meta(&self, current: MetaEquals, value: Vec<u8>) -> Result<bool, StoreError> {
        reserved(&current.name)?;
        let (reply, outcome) = oneshot::channel();
        self.submit(Job::Swap { key: meta_key(&current.name), expected: current.value, value, reply })?;
        answer(outcome).await
    }

    async fn head(&self) -> Result<TreeHead, StoreError> {
        Ok(self.shared.head.read().map_err(|_| closed())?.clone())
    }

    async fn nodes(&self, ids: &[NodeId]) -> Result<Vec<Option<Hash>>, StoreError> {
        let size = self.size()?;
        ids.iter()
            .map(|&(level, index)| {
                let Some(seq) = completing_leaf(level, index).filter(|seq| *seq < size) else {
                    return Ok(None);
                };
                match self.shared.audit.get(seq)? {
                    Some(entry) => {
                        Ok(decode_entry(&entry)?.0.into_iter().find(|(l, _)| *l == level).map(|(_, h)| h))
                    }
                    None => Ok(None),
                }
            })
            .collect()
    }

    async fn audit_events(&self, from: u64, limit: usize) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
        let end = self.size()?.min(from.saturating_add(limit as u64));
        let entries = self.shared.audit.range(from, end)?;
        if entries.len() as u64 != end.saturating_sub(from) {
            return Err(corrupt("an audit entry below the head is missing"));
        }
        (from..).zip(entries).map(|(seq, entry)| Ok((seq, decode_entry(&entry)?.1.to_vec()))).collect()
    }

    async fn audit_events_for_customer(
        &self,
        customer: &CustomerId,
        after: Option<u64>,
        limit: usize,
    ) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
        let size = self.size()?;
        let first = after.map_or(0, |a| a.saturating_add(1));
        // The tail not flushed yet, then the rows in the index: a flush writes rows before it
        // trims the tail, so in this order an entry is always found in one or the other (or
        // both, for a moment: the union is taken).
        let mut seqs: BTreeSet<u64> = {
            let tail = self.shared.history_tail.read().map_err(|_| closed())?;
            tail.range((*customer, first)..=(*customer, u64::MAX)).map(|(_, seq)| *seq).take(limit).collect()
        };
        seqs.extend(self.shared.history.seqs(customer, first, limit)?);
        let mut out = Vec::new();
        for seq in seqs.into_iter().filter(|seq| *seq < size).take(limit) {
            let event = self.event(seq)?.ok_or_else(|| corrupt("history names a missing event"))?;
            out.push((seq, event));
        }
        Ok(out)
    }

    async fn put_checkpoint(&self, size: u64, note: Vec<u8>) -> Result<Vec<u8>, StoreError> {
        let (reply, outcome) = oneshot::channel();
        self.submit(Job::checkpoint(size, note, reply))?;
        answer(outcome).await
    }

    async fn latest_checkpoint(&self) -> Result<Option<(u64, Vec<u8>)>, StoreError> {
        match self.shared.tree.scan_prefix([b'k']).next_back() {
            Some(entry) => {
                let (key, value) = entry.map_err(unavailable)?;
                Ok(Some((trailing_u64(&key)?, value.to_vec())))
            }
            None => Ok(None),
        }
    }

    async fn close(&self) -> Result<(), StoreError> {
        self.stop();
        // Everything the writer logged is in sled and the files; make it final there (unless
        // the store is poisoned: then the log is kept for the restart's replay).
        flusher::flush(&self.shared)
    }
}

impl Shared {
    /// Decodes a stored record with its data key read from the key file; also answers the
    /// key's slot (`None` for a record that still holds its key inline).
    fn record(&self, value: &[u8]) -> Result<(CustomerRecord, Option<u64>), StoreError> {
        let (mut record, slot) = keys::decode_record(value)?;
        if let Some(slot) = slot {
            let payload = self.keys.read(slot, &record.id)?;
            record.data_key = postcard::from_bytes(&payload).map_err(|_| corrupt("a key slot's payload"))?;
        }
        Ok((record, slot))
    }

    /// The stored value of sled key `key` as the writer sees it: a record's (`c` key) and a
    /// blind-index key's (`o` key) from the record file, every other from sled.
    fn stored(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        if let Some(id) = key.strip_prefix(CUSTOMER_PREFIX) {
            return self.records.get(id);
        }
        if let Some(entry) = key.strip_prefix(OWNERS_PREFIX) {
            return self.records.index_value(entry);
        }
        Ok(self.tree.get(key).map_err(unavailable)?.map(|value| value.to_vec()))
    }
}

/// Opens the record file (`records.rs`) and answers it with the LSN it holds the groups up to.
///
/// A store without the `records` mark in sled (new, or from before the record file, its
/// records in sled's `c` keys) gets one built aside in `records.new/`: the `c` keys copied with
/// sled's LSN, persisted, the handle closed, the directory renamed to `records/` and the store
/// directory synced, then the mark set and flushed, all before anything is replayed. A crash
/// before the mark leaves sled as it was, so the next open builds again from scratch; a crash
/// after it finds the record file complete. Then the `c` keys are removed from sled (repeated
/// on every open until a flush makes it final).
fn open_records(
    dir: &Path,
    db: &sled::Db,
    tree: &sled::Tree,
    sled_lsn: u64,
) -> Result<(RecordFile, u64), StoreError> {
    let records_dir = records::records_dir(dir);
    if tree.get(meta_key(RECORDS_MARK)).map_err(unavailable)?.is_some() {
        let missing = || {
            StoreError::Corrupt(format!(
                "{} is missing or empty but this store keeps its customer records there: refusing to start",
                records_dir.display()
            ))
        };
        // Checked before fjall opens it, which would create it.
        if !records_dir.exists() {
            return Err(missing());
        }
        let records = RecordFile::open(&records_dir)?;
        let applied = records.applied_lsn()?.ok_or_else(missing)?;
        remove_records_from_sled(tree)?;
        return Ok((records, applied));
    }
    // Without the mark, a record file is a build that was cut after its rename: sled still holds
    // every record (they leave it only after the mark is flushed). Records there and none in
    // sled is not that but a sled that lost its mark: refused, nothing removed.
    if records_dir.exists() {
        if tree.scan_prefix(CUSTOMER_PREFIX).next().is_none()
            && !RecordFile::open(&records_dir)?.is_empty()?
        {
            return Err(StoreError::Corrupt(format!(
                "{} holds customer records but this store has no mark of them: refusing to start",
                records_dir.display()
            )));
        }
        remove_dir(&records_dir)?;
    }
    let building = dir.join(RECORDS_BUILD_DIR);
    if building.exists() {
        remove_dir(&building)?;
    }
    let moved = copy_records_from_sled(&building, tree, sled_lsn)?;
    std::fs::rename(&building, &records_dir)
        .and_then(|()| std::fs::File::open(dir)?.sync_all())
        .map_err(|e| StoreError::Unavailable(format!("renaming {}: {e}", building.display())))?;
    tree.insert(meta_key(RECORDS_MARK), &[] as &[u8]).map_err(unavailable)?;
    db.flush().map_err(unavailable)?;
    if moved > 0 {
        tracing::info!(records = moved, "moved the customer records out of sled into the record file");
    }
    remove_records_from_sled(tree)?;
    Ok((RecordFile::open(&records_dir)?, sled_lsn))
}

/// Builds a record file in `building` from sled's `c` keys, under `sled_lsn`, persisted and
/// closed; answers how many records it holds.
fn copy_records_from_sled(building: &Path, tree: &sled::Tree, sled_lsn: u64) -> Result<usize, StoreError> {
    let records = RecordFile::open(building)?;
    let mut moved = 0usize;
    let mut chunk = Vec::with_capacity(MOVE_CHUNK);
    let mut entries = tree.scan_prefix(CUSTOMER_PREFIX);
    loop {
        let entry = entries.next().transpose().map_err(unavailable)?;
        let done = entry.is_none();
        chunk.extend(entry);
        // The last chunk is applied even when empty: it stores the LSN.
        if done || chunk.len() == MOVE_CHUNK {
            let ops = chunk.iter().map(|(key, value)| RecordOp::Put(&key[CUSTOMER_PREFIX.len()..], value));
            records.apply(sled_lsn, ops)?;
            moved += chunk.len();
            chunk.clear();
        }
        if done {
            break;
        }
    }
    records.persist()?;
    Ok(moved)
}

/// Builds the blind-index entries of a record file not marked as holding them in
/// [`INDEX_LAYOUT`] (a new store, a store from before the record file held them, one in the
/// layout of owner lists, or one an older version ran on since), from the records' own
/// `index_entries`, then marks them. Runs after the replay, when the records hold every durable
/// group; what a build cut short left (no mark) is cleared and built again. One pass writes an
/// owner key per entry a record holds; a second counts each entry's owners (consecutive keys)
/// and turns an entry of one owner into its [`EntryOwners::Sole`] form. The code holds a batch
/// of keys and one record at a time; fjall's memtables may hold more (README "Performance":
/// 943 MiB peak at 1,000,000 customers). It reads every record once, so it takes as long as
/// reading the store.
/// Errors: `Corrupt` naming the customer for a record that does not decode (the store does
/// not start until it is repaired or restored), or for a layout this code does not know
/// (written by a newer Custodia: refused rather than rebuilt under it).
fn build_index(records: &RecordFile) -> Result<(), StoreError> {
    match records.index_layout()? {
        Some(INDEX_LAYOUT) => return Ok(()),
        Some(layout) => {
            return Err(StoreError::Corrupt(format!(
                "the blind-index entries are in layout {layout}, which this version does not know (up to {INDEX_LAYOUT}): refusing to start"
            )));
        }
        None => {}
    }
    records.clear_index()?;
    let mut batch = Vec::with_capacity(MOVE_CHUNK);
    let mut owners = 0usize;
    records.scan_records(|id, value| {
        let (record, _) = keys::decode_record(value).map_err(|e| {
            let id = <[u8; 16]>::try_from(id).map(|id| CustomerId::from_bytes(id).to_string());
            StoreError::Corrupt(format!(
                "building the blind-index entries: the record of customer {} does not decode ({e}): refusing to start",
                id.unwrap_or_else(|_| "with a malformed id".into())
            ))
        })?;
        let entries: BTreeSet<Vec<u8>> =
            record.index_entries.iter().map(|e| entry_key(&e.field, &e.index)).collect();
        for entry in entries {
            batch.push((owner_key(&entry[OWNERS_PREFIX.len()..], &record.id), Some(Vec::new())));
        }
        if batch.len() >= MOVE_CHUNK {
            owners += batch.len();
            records.change_index_keys(std::mem::take(&mut batch))?;
        }
        Ok(())
    })?;
    owners += batch.len();
    records.change_index_keys(std::mem::take(&mut batch))?;
    // Every key is an owner key now (entry ‖ 16-byte id), in order: one entry's are
    // consecutive. An entry with one owner becomes that owner's id in its entry key instead.
    let mut run: Option<(Vec<u8>, u64)> = None;
    let end_of = |(last, count): (Vec<u8>, u64), batch: &mut Vec<(Vec<u8>, Option<Vec<u8>>)>| {
        let (entry, id) = last.split_at(last.len() - 16);
        let owners = match count {
            1 => {
                // The one owner is named in the entry itself, not by an owner key.
                batch.push((last.clone(), None));
                EntryOwners::Sole(CustomerId::from_bytes(id.try_into().expect("16 bytes")))
            }
            n => EntryOwners::Counted(n),
        };
        batch.push((entry.to_vec(), Some(owners.encode())));
    };
    let mut changes = Vec::with_capacity(MOVE_CHUNK);
    records.scan_index(|key| {
        if key.len() < 16 + 1 + 32 {
            return Err(corrupt("blind-index owner key length"));
        }
        let entry = &key[..key.len() - 16];
        match &mut run {
            Some((last, count)) if last.len() == key.len() && last[..last.len() - 16] == *entry => {
                *last = key.to_vec();
                *count += 1;
            }
            _ => {
                if let Some(ended) = run.replace((key.to_vec(), 1)) {
                    end_of(ended, &mut changes);
                }
                if changes.len() >= MOVE_CHUNK {
                    records.change_index_keys(std::mem::take(&mut changes))?;
                }
            }
        }
        Ok(())
    })?;
    if let Some(ended) = run {
        end_of(ended, &mut changes);
    }
    records.change_index_keys(changes)?;
    records.mark_index_built()?;
    if owners > 0 {
        tracing::info!(owner_keys = owners, "built the blind-index entries from the records");
    }
    Ok(())
}

fn remove_dir(dir: &Path) -> Result<(), StoreError> {
    std::fs::remove_dir_all(dir)
        .map_err(|e| StoreError::Unavailable(format!("removing {}: {e}", dir.display())))
}

/// Removes the `c` keys a store from before the record file left in sled (none once moved).
fn remove_records_from_sled(tree: &sled::Tree) -> Result<(), StoreError> {
    for key in tree.scan_prefix(CUSTOMER_PREFIX).keys() {
        tree.remove(key.map_err(unavailable)?).map_err(unavailable)?;
    }
    Ok(())
}

/// File name of the key file in the data directory.
const KEY_FILE: &str = "keys";
/// Records (or blind-index keys) written per batch when a store's records move out of sled
/// (or its blind-index entries are built).
const MOVE_CHUNK: usize = 10_000;
/// Where a record file is built before it is renamed into place (see [`open_records`]).
const RECORDS_BUILD_DIR: &str = "records.new";
/// Audit entries whose history rows are derived in one step when the index is rebuilt.
const REBUILD_CHUNK: u64 = 65_536;

/// How often a read follows a record that changed under it before giving up.
const READ_ATTEMPTS: usize = 16;

/// Opens sled in `dir`. A store dropped a moment ago in this process releases sled's file lock
/// only when sled's I/O threads have finished the writes its drop started, so a lock held
/// elsewhere is waited for up to [`LOCK_WAIT`] before giving up.
fn open_db(dir: &Path, cache_bytes: u64) -> Result<sled::Db, StoreError> {
    let config = sled::Config::new()
        .path(dir)
        .cache_capacity(cache_bytes)
        .mode(sled::Mode::HighThroughput)
        // Durability comes from the write-ahead log and the flusher; sled's timer thread would
        // only add uncontrolled I/O and hold the directory lock after a drop.
        .flush_every_ms(None);
    let deadline = std::time::Instant::now() + LOCK_WAIT;
    loop {
        match config.open() {
            Ok(db) => return Ok(db),
            // sled reports a held lock as an I/O error of kind `Other` whose text says so.
            Err(sled::Error::Io(e))
                if e.to_string().contains("could not acquire lock")
                    && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            Err(e) => return Err(unavailable(e)),
        }
    }
}

/// How long opening waits for sled's file lock (see [`open_db`]).
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Refuses the metadata names the store keeps for itself (recovery depends on them).
fn reserved(name: &str) -> Result<(), StoreError> {
    if [WAL_LSN, HISTORY_LEN, KEY_FILE_MARK, RECORDS_MARK].contains(&name) {
        return Err(StoreError::Unavailable(format!("metadata name `{name}` is reserved by the store")));
    }
    Ok(())
}

/// The (customer, seq) pairs of entries `from..to`, read from the entries themselves.
fn history_of(audit: &AuditFiles, from: u64, to: u64) -> Result<BTreeSet<(CustomerId, u64)>, StoreError> {
    let mut tail = BTreeSet::new();
    for seq in from..to {
        let entry = audit.get(seq)?.ok_or_else(|| corrupt("an audit entry is missing"))?;
        let (_, event) = decode_entry(&entry)?;
        let value: serde_json::Value =
            serde_json::from_slice(event).map_err(|_| corrupt("an audit entry is not JSON"))?;
        if let Some(customer) = value.get("customer_id").and_then(|c| c.as_str()) {
            let id = customer.parse().map_err(|_| corrupt("an audit entry names a malformed customer id"))?;
            tail.insert((id, seq));
        }
    }
    Ok(tail)
}

/// The head of a log of `size` entries, from the O(log n) stored frontier nodes.
fn stored_head(audit: &AuditFiles, size: u64) -> Result<TreeHead, StoreError> {
    let mut roots = Vec::new();
    for level in (0..64u8).rev().filter(|level| size & (1u64 << level) != 0) {
        let start = (size >> (level + 1)) << (level + 1);
        let index = start >> level;
        let seq = completing_leaf(level, index).ok_or_else(|| corrupt("tree position"))?;
        let entry = audit.get(seq)?.ok_or_else(|| corrupt("a frontier entry is missing"))?;
        let node = decode_entry(&entry)?.0.into_iter().find(|(l, _)| *l == level).map(|(_, h)| h);
        roots.push(node.ok_or_else(|| {
            StoreError::Corrupt(format!("missing tree node at level {level}, index {index}"))
        })?);
    }
    Ok(TreeHead { size, roots })
}

/// Applies group `lsn`'s ops: its records to the record file in one batch (with the LSN), then
/// every other key to sled one at a time, `wal_lsn` last (the writer puts it last).
///
/// sled's keys not as a `sled::Batch`: sled applies a batch under a lock that every other tree operation
/// waits for. Atomicity is not needed here: the group is in the log first, sled recovers a
/// prefix of its own writes, and until `wal_lsn` names the group, replay re-applies all of it
/// in order (puts and removes are idempotent). Between two keys a reader may see a record
/// without its new index entry, or the reverse, for microseconds; uniqueness is only ever
/// checked by the writer thread.
fn apply(tree: &sled::Tree, records: &RecordFile, lsn: u64, ops: &[Op]) -> Result<(), StoreError> {
    if ops.iter().any(|op| record_op(op).is_some()) {
        records.apply(lsn, ops.iter().filter_map(record_op))?;
    }
    for op in ops.iter().filter(|op| record_op(op).is_none()) {
        match op {
            Op::Put(k, v) => {
                tree.insert(k.as_slice(), v.as_slice()).map_err(unavailable)?;
            }
            Op::Remove(k) => {
                tree.remove(k.as_slice()).map_err(unavailable)?;
            }
            Op::Audit(..) | Op::DestroyKey { .. } => {}
        }
    }
    Ok(())
}

/// An op on a customer record (a `c` key) or a blind-index entry (an `o` key) as a change to
/// the record file, or `None`.
fn record_op(op: &Op) -> Option<RecordOp<'_>> {
    match op {
        Op::Put(key, value) => match key.strip_prefix(CUSTOMER_PREFIX) {
            Some(id) => Some(RecordOp::Put(id, value)),
            None => key.strip_prefix(OWNERS_PREFIX).map(|entry| RecordOp::PutIndex(entry, value)),
        },
        Op::Remove(key) => match key.strip_prefix(CUSTOMER_PREFIX) {
            Some(id) => Some(RecordOp::Remove(id)),
            None => key.strip_prefix(OWNERS_PREFIX).map(RecordOp::RemoveIndex),
        },
        Op::Audit(..) | Op::DestroyKey { .. } => None,
    }
}

/// The ops that sled holds (all but the records) as one sled batch.
fn to_batch(ops: &[Op]) -> sled::Batch {
    let mut batch = sled::Batch::default();
    for op in ops.iter().filter(|op| record_op(op).is_none()) {
        match op {
            Op::Put(k, v) => batch.insert(k.as_slice(), v.as_slice()),
            Op::Remove(k) => batch.remove(k.as_slice()),
            Op::Audit(..) | Op::DestroyKey { .. } => {}
        }
    }
    batch
}

fn unavailable(e: sled::Error) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

fn closed() -> StoreError {
    StoreError::Unavailable("the store is closed".into())
}

fn poisoned_error() -> StoreError {
    StoreError::Unavailable("an earlier write failed after its log record; restart to recover".into())
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;

    use super::*;
    use crate::audit::tree::Tree;
    use crate::store::PendingEvent;

    fn write(n: u64) -> Write {
        let prefix = format!("{{\"n\":{n}").into_bytes();
        Write {
            need_seqs: true,
            precondition: None,
            change: None,
            events: vec![PendingEvent { prefix, time: "2026-11-30T12:00:00.000Z".into(), customer: None }],
        }
    }

    /// A store in `path` with an 8 MiB cache.
    fn open_at(path: &Path) -> SledStore {
        SledStore::open(path, 8 << 20, Arc::new(Tree)).unwrap()
    }

    /// Reopens the store in `path` (the old one dropped) and checks that the group that failed
    /// after its log append (see [`poisoned`]) was replayed after seq 0.
    async fn assert_failed_group_replayed(path: &Path) {
        assert_eq!(
            seqs(&open_at(path)).await,
            vec![0, 1],
            "the log record of the failed group was kept for the replay"
        );
    }

    /// The seqs of the store's first ten events.
    async fn seqs(store: &SledStore) -> Vec<u64> {
        store.audit_events(0, 10).await.unwrap().iter().map(|(seq, _)| *seq).collect()
    }

    /// `store` after seq 0 was acknowledged and the group of seq 1 failed after its log append.
    async fn poisoned(store: SledStore) -> SledStore {
        assert_eq!(store.write(write(0)).await.unwrap().seqs, vec![0]);
        store.shared.fail_after_append.store(true, Ordering::SeqCst);
        assert!(matches!(store.write(write(1)).await, Err(StoreError::Unavailable(_))));
        store.shared.fail_after_append.store(false, Ordering::SeqCst);
        store
    }

    #[tokio::test]
    async fn a_failure_after_the_log_append_poisons_the_store_until_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store");
        let open = || open_at(&path);
        let store = poisoned(open()).await;
        // Poisoned: nothing more is acknowledged, so no later request can be given seq 1 while
        // the log holds the failed group's event under it.
        assert!(matches!(store.write(write(2)).await, Err(StoreError::Unavailable(_))));
        assert!(store.put_meta("m", b"v".to_vec()).await.is_err());
        assert_eq!(store.head().await.unwrap().size, 1, "the failed event never became visible");
        drop(store);

        // A restart replays the log: the failed group's event stays as an attempt that was
        // never answered, and the log goes on after it.
        let store = open();
        let events = store.audit_events(0, 10).await.unwrap();
        assert_eq!(events.iter().map(|(seq, _)| *seq).collect::<Vec<_>>(), vec![0, 1]);
        assert!(String::from_utf8_lossy(&events[1].1).starts_with("{\"n\":1,"));
        assert_eq!(store.write(write(3)).await.unwrap().seqs, vec![2]);
    }

    #[tokio::test]
    async fn a_graceful_stop_of_a_poisoned_store_keeps_the_failed_groups_log_record() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store");
        let store = poisoned(open_at(&path)).await;
        // A graceful stop (SIGTERM → close) must not flush over the failed group's record.
        assert!(store.close().await.is_err(), "closing a poisoned store reports the poison");
        drop(store);
        assert_failed_group_replayed(&path).await;
    }

    #[tokio::test]
    async fn a_flush_that_started_before_a_group_failed_keeps_the_groups_log_record() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store");
        let store = open_at(&path);
        assert_eq!(store.write(write(0)).await.unwrap().seqs, vec![0]);
        // A flush that found the store healthy and is on its way to the apply lock...
        let spare = store.shared.wal.hold_spare();
        let flushing = {
            let shared = Arc::clone(&store.shared);
            std::thread::spawn(move || flusher::flush(&shared))
        };
        std::thread::sleep(std::time::Duration::from_millis(300));
        // ...while a group fails after its log append and poisons the store.
        store.shared.fail_after_append.store(true, Ordering::SeqCst);
        assert!(matches!(store.write(write(1)).await, Err(StoreError::Unavailable(_))));
        store.shared.fail_after_append.store(false, Ordering::SeqCst);
        drop(spare);
        assert!(flushing.join().unwrap().is_err(), "a flush under the apply lock sees the poison");
        drop(store);
        assert_failed_group_replayed(&path).await;
    }

    #[tokio::test]
    async fn a_deleted_log_segment_that_a_crash_brings_back_is_skipped_on_replay() {
        // Deleting flushed segments does not sync the directory (`Wal::remove`): a crash may
        // undo the deletion, and the old records must then change nothing.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store");
        let open = || open_at(&path);
        let store = open();
        store.put_meta("m", b"old".to_vec()).await.unwrap();
        assert_eq!(store.write(write(0)).await.unwrap().seqs, vec![0]);
        let segments: Vec<(std::path::PathBuf, Vec<u8>)> = std::fs::read_dir(path.join("wal"))
            .unwrap()
            .map(|entry| {
                let path = entry.unwrap().path();
                let bytes = std::fs::read(&path).unwrap();
                (path, bytes)
            })
            .collect();
        assert!(segments.iter().any(|(_, bytes)| !bytes.is_empty()), "the writes are in the log");
        flusher::flush(&store.shared).unwrap();
        assert!(segments.iter().all(|(path, _)| !path.exists()), "the flush deleted them");
        store.put_meta("m", b"new".to_vec()).await.unwrap();
        assert_eq!(store.write(write(1)).await.unwrap().seqs, vec![1]);
        flusher::flush(&store.shared).unwrap();
        // Left in the current segment, so the returned one is not the newest holding bytes
        // (whose torn tail the replay would forgive): it must read as whole.
        store.put_meta("n", b"unflushed".to_vec()).await.unwrap();
        assert_eq!(store.write(write(2)).await.unwrap().seqs, vec![2]);
        drop(store);
        for (path, bytes) in &segments {
            std::fs::write(path, bytes).unwrap();
        }

        let store = open();
        assert_eq!(store.meta("m").await.unwrap(), Some(b"new".to_vec()), "no key went back");
        assert_eq!(store.meta("n").await.unwrap(), Some(b"unflushed".to_vec()), "the newer log replayed");
        assert_eq!(seqs(&store).await, vec![0, 1, 2], "no event twice, none lost");
        assert_eq!(store.write(write(3)).await.unwrap().seqs, vec![3]);
    }

    #[tokio::test]
    async fn a_key_file_cut_before_its_header_is_recreated_but_a_deleted_one_stops_the_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store");
        let open = || SledStore::open(&path, 8 << 20, Arc::new(Tree));
        // A first start killed between creating `keys` and syncing its header (the mark is
        // only set after the header is synced).
        std::fs::create_dir_all(&path).unwrap();
        std::fs::write(path.join(KEY_FILE), b"custodia-k").unwrap();
        open().unwrap().close().await.unwrap();
        // Deleted by hand: every record naming a slot would be unreadable, so refuse.
        std::fs::remove_file(path.join(KEY_FILE)).unwrap();
        let err = open().err().expect("a deleted key file is refused").to_string();
        assert!(err.contains("keys") && err.contains("refusing"), "{err}");
    }

    #[tokio::test]
    async fn the_stores_own_metadata_names_cannot_be_written_through_the_trait() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(&dir.path().join("store"), 8 << 20, Arc::new(Tree)).unwrap();
        store.write(write(0)).await.unwrap();
        for name in [WAL_LSN, HISTORY_LEN, KEY_FILE_MARK, RECORDS_MARK] {
            assert!(store.put_meta(name, b"x".to_vec()).await.is_err(), "{name}");
            assert!(store.init_meta(name, b"x".to_vec()).await.is_err(), "{name}");
        }
        assert!(store.put_meta("anything_else", b"x".to_vec()).await.is_ok());
    }
}
