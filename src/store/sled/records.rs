//! Customer records of the sled backend, in a fjall LSM tree with key–value separation in
//! `<store>/records/`, not in sled's B-tree.
//!
//! Why: a read is a point lookup by a random customer id. In sled it pulls the record's whole
//! leaf (a base page and every change logged to it since, one `pread` and one decode each) into
//! a cache that holds a shrinking share of the leaves as the store grows: at 1,000,000
//! customers a read cost 46 % more server CPU than at 100,000 (README "Performance"). Here the
//! tree holds only ids and handles (tens of bytes a customer, bloom-filtered, so a new id's
//! existence check reads no block) and the sealed record is one `pread` from a blob file,
//! whatever the store's size. A blob file's stale records (replaced or erased) go when a
//! compaction of the tables that point into it finds a quarter of it stale: in a quiet store an
//! old copy can stay, sealed under a data key that erasure destroyed.
//!
//! The blind-index entries live here too, in their own keyspace: in sled's B-tree a create
//! paged in and rewrote a random leaf per indexed field, a cost that grew with the store (all
//! of the writer's growth from 100,000 to 1,000,000 customers, README "Performance"). Here
//! joining an entry is a memtable insert (two or three once it is shared), and the unique
//! check of a new value is a point read that the pinned bloom filters answer without reading a
//! block.
//!
//! Layout: keyspace `records`: customer id (16) → the value sled's `c` key used to hold
//! (`keys.rs`: `0x80 ‖ key slot ‖ record`); keyspace `owners`: field ‖ 0x00 ‖ blind index (32)
//! → its sole owner's id or its owner count, and that ‖ customer id (16) → empty for each
//! owner of a counted entry (the log's `o` keys without their prefix, `keys.rs`); keyspace
//! `meta`: `applied_lsn` → the log sequence number (u64, big-endian) of the last group applied
//! here, `index_layout` → [`INDEX_LAYOUT`] (one byte), once the entries were built in this
//! layout from the records.
//!
//! Invariant: this is the store of record; only the `owners` keyspace is derived (from the
//! records' `index_entries`), and kept in step with them by the writer. A group's records,
//! blind-index keys and its LSN are one fjall batch, so after a crash the keyspace holds
//! exactly the groups up to [`RecordFile::applied_lsn`] (fjall recovers a prefix of its
//! journal). The flusher persists it before the log segments go, so the log still holds every
//! group after that LSN and open replays them; a replayed put or removal repeats the final
//! state.

use std::path::{Path, PathBuf};

use fjall::config::PinningPolicy;
use fjall::{Database, Keyspace, KeyspaceCreateOptions, KvSeparationOptions, PersistMode};

use super::fjall_open::{compaction, open_database};
use super::keys::EntryOwners;
use crate::domain::CustomerId;
use crate::store::StoreError;

/// The tree's block cache, in bytes: its index and filter blocks, and data blocks of ids.
///
/// Sized so the data blocks of the records keyspace (an id and a blob handle, some 45 bytes a
/// customer) of 1,000,000 customers stay cached beside the blind-index entries' blocks, which
/// every create reads and writes: at 16 MiB a read at that size paid a block `pread` and decode
/// more than at 100,000 (README "Performance"). Filled as blocks are read, so it adds nothing
/// to the memory a start-up takes.
const CACHE_BYTES: u64 = 64 << 20;
/// The in-memory write buffer before records go to a sorted table, in bytes.
const MEMTABLE_BYTES: u64 = 16 << 20;
/// fjall's journals, at most.
const JOURNAL_BYTES: u64 = 64 << 20;
/// Values at least this long go to blob files. Every record is longer, so the tree that
/// compaction rewrites holds ids and handles only.
const SEPARATION_BYTES: u32 = 64;
/// Blob files of this size, in bytes: a smaller file is rewritten sooner once records in it
/// are replaced or erased.
const BLOB_FILE_BYTES: u64 = 32 << 20;
/// The blind-index keys' write buffer, in bytes: a key is some 70 bytes, so this is some
/// 100,000 of them before a sorted table is written.
const OWNERS_MEMTABLE_BYTES: u64 = 8 << 20;
const APPLIED_LSN: &[u8] = b"applied_lsn";
/// The meta key naming the layout the `owners` keyspace was built in.
const INDEX_LAYOUT_KEY: &[u8] = b"index_layout";
/// The layout of the `owners` keyspace this code reads and writes: 2, an entry's sole owner,
/// or its owner count and a key per owner (`keys::EntryOwners`). (1, marked `owners_built`,
/// was a list of owner ids per entry, rewritten whole on every change; a store in it, or in
/// none, is rebuilt from its records on open. A version of layout 1 does not know this mark:
/// one run on a store of layout 2 clears the keyspace and marks `owners_built` again, so that
/// mark always means "rebuild".)
pub(super) const INDEX_LAYOUT: u8 = 2;
/// The mark of layout 1, removed once layout 2 is built.
const OWNER_LISTS_BUILT: &[u8] = b"owners_built";

/// The records of one sled store.
pub(super) struct RecordFile {
    db: Database,
    records: Keyspace,
    owners: Keyspace,
    meta: Keyspace,
}

/// A change to one record or blind-index key, as the log holds it.
pub(super) enum RecordOp<'a> {
    /// Set the record of this customer (id bytes) to this value.
    Put(&'a [u8], &'a [u8]),
    /// Remove this customer's record.
    Remove(&'a [u8]),
    /// Set this blind-index key (an `o` key without its prefix) to this value.
    PutIndex(&'a [u8], &'a [u8]),
    /// Remove this blind-index key.
    RemoveIndex(&'a [u8]),
}

impl RecordFile {
    /// Opens (or creates) the records in `dir`.
    pub(super) fn open(dir: &Path) -> Result<Self, StoreError> {
        let db = open_database(dir, |builder| {
            builder
                .cache_size(CACHE_BYTES)
                .worker_threads(1)
                .max_journaling_size(JOURNAL_BYTES)
                // Durability is the flusher's (`persist` before the log goes), so fjall's
                // journal is not synced after each batch: the write-ahead log was.
                .manual_journal_persist(true)
        })?
        .map_err(|e| {
            StoreError::Corrupt(format!("the customer records in {} do not open: {e}", dir.display()))
        })?;
        let records = db
            .keyspace("records", || {
                KeyspaceCreateOptions::default()
                    .max_memtable_size(MEMTABLE_BYTES)
                    .compaction_strategy(compaction())
                    .with_kv_separation(Some(
                        KvSeparationOptions::default()
                            .separation_threshold(SEPARATION_BYTES)
                            .file_target_size(BLOB_FILE_BYTES),
                    ))
                    // Every level's filter and index blocks stay in memory (some 1.5 MB at
                    // 1,000,000 customers), so a point read costs at most one data block and
                    // one blob read at any size.
                    .filter_block_pinning_policy(PinningPolicy::all(true))
                    .index_block_pinning_policy(PinningPolicy::all(true))
            })
            .map_err(unavailable)?;
        let owners = db
            .keyspace("owners", || {
                KeyspaceCreateOptions::default()
                    .max_memtable_size(OWNERS_MEMTABLE_BYTES)
                    .compaction_strategy(compaction())
                    // A create's unique check reads an entry that mostly does not exist: with
                    // every filter in memory that costs no block read at any size.
                    .filter_block_pinning_policy(PinningPolicy::all(true))
                    .index_block_pinning_policy(PinningPolicy::all(true))
            })
            .map_err(unavailable)?;
        let meta = db.keyspace("meta", KeyspaceCreateOptions::default).map_err(unavailable)?;
        Ok(RecordFile { db, records, owners, meta })
    }

    /// The value of blind-index key `key` (an `o` key without its prefix).
    pub(super) fn index_value(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.owners.get(key).map_err(unavailable)?.map(|value| value.to_vec()))
    }

    /// The owners of the entry under `entry` (an `o` key without its prefix), ascending: one
    /// point read for a value nobody or one customer holds, a prefix scan of its owner keys
    /// for a value shared.
    pub(super) fn owners_of(&self, entry: &[u8]) -> Result<Vec<CustomerId>, StoreError> {
        let Some(value) = self.owners.get(entry).map_err(unavailable)? else {
            return Ok(Vec::new());
        };
        if let EntryOwners::Sole(id) = EntryOwners::decode(&value)? {
            return Ok(vec![id]);
        }
        let mut owners = Vec::new();
        for item in self.owners.prefix(entry) {
            let key = item.key().map_err(unavailable)?;
            match key.len() - entry.len() {
                0 => {}
                16 => owners.push(CustomerId::from_bytes(key[entry.len()..].try_into().expect("16 bytes"))),
                _ => return Err(StoreError::Corrupt("blind-index owner key length".into())),
            }
        }
        Ok(owners)
    }

    /// The layout the blind-index keys are in: [`INDEX_LAYOUT`] or a later one as marked,
    /// `None` if never built, or if a version from before the layouts (one that marks its owner
    /// lists `owners_built`, which [`mark_index_built`](Self::mark_index_built) removes) ran
    /// on the file since: it kept its own lists in the keyspace, so nothing there can be
    /// trusted.
    pub(super) fn index_layout(&self) -> Result<Option<u8>, StoreError> {
        if self.meta.get(OWNER_LISTS_BUILT).map_err(unavailable)?.is_some() {
            return Ok(None);
        }
        match self.meta.get(INDEX_LAYOUT_KEY).map_err(unavailable)? {
            None => Ok(None),
            Some(value) => match *value {
                [layout] => Ok(Some(layout)),
                _ => Err(StoreError::Corrupt("index_layout length".into())),
            },
        }
    }

    /// Removes every blind-index key: what an unmarked build left is started again.
    pub(super) fn clear_index(&self) -> Result<(), StoreError> {
        self.owners.clear().map_err(unavailable)
    }

    /// Puts (`Some(value)`) or removes blind-index keys (without their prefix) while they are
    /// built from the records; not durable until [`persist`](Self::persist).
    pub(super) fn change_index_keys(&self, keys: Vec<(Vec<u8>, Option<Vec<u8>>)>) -> Result<(), StoreError> {
        let mut batch = self.db.batch();
        for (key, value) in keys {
            match value {
                Some(value) => batch.insert(&self.owners, key, value),
                None => batch.remove(&self.owners, key),
            }
        }
        batch.commit().map_err(unavailable)
    }

    /// Calls `visit` with every blind-index key, ascending (a snapshot: keys put meanwhile are
    /// not visited).
    pub(super) fn scan_index(
        &self,
        mut visit: impl FnMut(&[u8]) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        for item in self.owners.iter() {
            visit(&item.key().map_err(unavailable)?)?;
        }
        Ok(())
    }

    /// Calls `visit` with every stored record's id bytes and value (as [`get`](Self::get)
    /// answers it), ascending.
    pub(super) fn scan_records(
        &self,
        mut visit: impl FnMut(&[u8], &[u8]) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        for item in self.records.iter() {
            let (id, value) = item.into_inner().map_err(unavailable)?;
            visit(&id, &value)?;
        }
        Ok(())
    }

    /// Marks the blind-index keys built in [`INDEX_LAYOUT`]. Not durable until
    /// [`persist`](Self::persist).
    pub(super) fn mark_index_built(&self) -> Result<(), StoreError> {
        let mut batch = self.db.batch();
        batch.insert(&self.meta, INDEX_LAYOUT_KEY, vec![INDEX_LAYOUT]);
        batch.remove(&self.meta, OWNER_LISTS_BUILT);
        batch.commit().map_err(unavailable)
    }

    /// The stored value of customer `id`.
    pub(super) fn get(&self, id: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.records.get(id).map_err(unavailable)?.map(|value| value.to_vec()))
    }

    /// Whether no customer record is stored.
    pub(super) fn is_empty(&self) -> Result<bool, StoreError> {
        self.records.is_empty().map_err(unavailable)
    }

    /// Up to `limit` customer ids after `after` (all from the first if `None`), ascending.
    pub(super) fn ids(
        &self,
        after: Option<&CustomerId>,
        limit: usize,
    ) -> Result<Vec<CustomerId>, StoreError> {
        let entries = match after {
            Some(id) => self.records.range::<&[u8], _>((
                std::ops::Bound::Excluded(id.as_bytes().as_slice()),
                std::ops::Bound::Unbounded,
            )),
            None => self.records.iter(),
        };
        entries
            .take(limit)
            .map(|entry| {
                let key = entry.key().map_err(unavailable)?;
                let bytes: [u8; 16] =
                    key.as_ref().try_into().map_err(|_| StoreError::Corrupt("record key length".into()))?;
                Ok(CustomerId::from_bytes(bytes))
            })
            .collect()
    }

    /// Applies group `lsn`'s record and blind-index changes and records the LSN, atomically.
    /// Not durable until [`persist`](Self::persist) (the write-ahead log is).
    pub(super) fn apply<'a>(
        &self,
        lsn: u64,
        ops: impl IntoIterator<Item = RecordOp<'a>>,
    ) -> Result<(), StoreError> {
        let mut batch = self.db.batch();
        for op in ops {
            match op {
                RecordOp::Put(id, value) => batch.insert(&self.records, id.to_vec(), value.to_vec()),
                RecordOp::Remove(id) => batch.remove(&self.records, id.to_vec()),
                RecordOp::PutIndex(key, value) => batch.insert(&self.owners, key.to_vec(), value.to_vec()),
                RecordOp::RemoveIndex(key) => batch.remove(&self.owners, key.to_vec()),
            }
        }
        batch.insert(&self.meta, APPLIED_LSN, lsn.to_be_bytes().to_vec());
        batch.commit().map_err(unavailable)
    }

    /// The LSN of the last group applied; `None` for a record file that never had one applied
    /// (new, or emptied by hand: the first apply, even of no records, stores it).
    pub(super) fn applied_lsn(&self) -> Result<Option<u64>, StoreError> {
        self.meta
            .get(APPLIED_LSN)
            .map_err(unavailable)?
            .map(|bytes| {
                let bytes = bytes
                    .as_ref()
                    .try_into()
                    .map_err(|_| StoreError::Corrupt("applied_lsn length".into()))?;
                Ok(u64::from_be_bytes(bytes))
            })
            .transpose()
    }

    /// Makes every group applied so far durable (`fdatasync` of fjall's journal).
    pub(super) fn persist(&self) -> Result<(), StoreError> {
        self.db.persist(PersistMode::SyncData).map_err(unavailable)
    }
}

/// Where a store in `dir` keeps its records.
pub(super) fn records_dir(dir: &Path) -> PathBuf {
    dir.join("records")
}

fn unavailable(e: fjall::Error) -> StoreError {
    StoreError::Unavailable(format!("customer records: {e}"))
}
