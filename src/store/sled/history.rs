//! The per-customer audit history: which seqs name a customer, so an Art. 15 export or an
//! auditor's customer filter costs that customer's history, not the log's size.
//!
//! Rows are `customer id (16) ‖ seq (8, big-endian)` with empty values, in a fjall LSM tree in
//! `<store>/history/` rather than in sled: every audited request adds a row for a random
//! customer, which an LSM tree takes as a sequential append, while sled rewrote a random B-tree
//! leaf per row (a fifth of read throughput, README "Performance").
//!
//! Invariant: the rows are derived data. The flusher writes the rows of the entries up to some
//! length, persists them ([`HistoryIndex::persist`]), and only then advances `history_len` in
//! sled; a row written twice is the same row. So after a crash the rows below `history_len`
//! are all here, and open rebuilds the rest from the audit entries. If the index cannot be
//! opened at all, [`HistoryIndex::open_or_reset`] starts it empty and the store's open rebuilds
//! every row from the log.

use std::path::{Path, PathBuf};

use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode};

use super::fjall_open::{compaction, open_database};

use crate::domain::CustomerId;
use crate::store::StoreError;

/// The index's block cache, in bytes: lookups read one customer's few rows.
const CACHE_BYTES: u64 = 4 << 20;
/// The in-memory write buffer before rows go to a sorted table on disk, in bytes.
const MEMTABLE_BYTES: u64 = 8 << 20;
/// fjall's journals, at most (its smallest bound; the default is 512 MiB of disk).
const JOURNAL_BYTES: u64 = 64 << 20;

/// The history rows of one sled store.
pub(super) struct HistoryIndex {
    db: Database,
    rows: Keyspace,
}

impl HistoryIndex {
    /// Opens (or creates) the index in `dir`. `Ok(None)` if the files there cannot be opened
    /// (damaged): the caller removes them and rebuilds the rows from the log.
    pub(super) fn open(dir: &Path) -> Result<Option<Self>, StoreError> {
        let opened = open_database(dir, |builder| {
            builder
                .cache_size(CACHE_BYTES)
                .worker_threads(1)
                .max_journaling_size(JOURNAL_BYTES)
                // Durability is ours to decide (`persist` before `history_len` moves), so fjall's
                // journal is not flushed after each batch.
                .manual_journal_persist(true)
        })?;
        let db = match opened {
            Ok(db) => db,
            Err(e) => {
                tracing::warn!(error = %e, dir = %dir.display(), "the history index does not open; it is rebuilt from the log");
                return Ok(None);
            }
        };
        let rows = db
            .keyspace("history", || {
                KeyspaceCreateOptions::default()
                    .max_memtable_size(MEMTABLE_BYTES)
                    .compaction_strategy(compaction())
            })
            .map_err(unavailable)?;
        Ok(Some(HistoryIndex { db, rows }))
    }

    /// Opens the index in `dir`, or, if it is damaged, removes it and starts an empty one.
    /// Answers whether it was rebuilt (every row must then be written again).
    pub(super) fn open_or_reset(dir: &Path) -> Result<(Self, bool), StoreError> {
        if let Some(index) = Self::open(dir)? {
            return Ok((index, false));
        }
        std::fs::remove_dir_all(dir)
            .map_err(|e| StoreError::Unavailable(format!("removing {}: {e}", dir.display())))?;
        match Self::open(dir)? {
            Some(index) => Ok((index, true)),
            None => Err(StoreError::Unavailable(format!("{} does not open even when empty", dir.display()))),
        }
    }

    /// Adds rows (customer, seq); rows already present are unchanged. Not durable until
    /// [`persist`](Self::persist).
    pub(super) fn insert<'a>(
        &self,
        rows: impl IntoIterator<Item = &'a (CustomerId, u64)>,
    ) -> Result<(), StoreError> {
        let mut batch = self.db.batch();
        for (customer, seq) in rows {
            batch.insert(&self.rows, row_key(customer, *seq).to_vec(), Vec::<u8>::new());
        }
        batch.commit().map_err(unavailable)
    }

    /// Makes every row inserted so far durable (`fdatasync` of fjall's journal).
    pub(super) fn persist(&self) -> Result<(), StoreError> {
        self.db.persist(PersistMode::SyncData).map_err(unavailable)
    }

    /// Up to `limit` seqs of `customer`'s rows at or after `first`, ascending.
    pub(super) fn seqs(
        &self,
        customer: &CustomerId,
        first: u64,
        limit: usize,
    ) -> Result<Vec<u64>, StoreError> {
        let (start, end) = (row_key(customer, first), row_key(customer, u64::MAX));
        let mut seqs = Vec::new();
        for row in self.rows.range(start..=end).take(limit) {
            let key = row.key().map_err(unavailable)?;
            let tail: [u8; 8] = key
                .get(16..)
                .and_then(|t| t.try_into().ok())
                .ok_or_else(|| StoreError::Corrupt("a history row has the wrong length".into()))?;
            seqs.push(u64::from_be_bytes(tail));
        }
        Ok(seqs)
    }
}

/// The directory of a store's history index.
pub(super) fn history_dir(store_dir: &Path) -> PathBuf {
    store_dir.join("history")
}

fn row_key(customer: &CustomerId, seq: u64) -> [u8; 24] {
    let mut key = [0u8; 24];
    key[..16].copy_from_slice(customer.as_bytes());
    key[16..].copy_from_slice(&seq.to_be_bytes());
    key
}

fn unavailable(e: fjall::Error) -> StoreError {
    StoreError::Unavailable(format!("history index: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_come_back_per_customer_in_order_and_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (CustomerId::random(), CustomerId::random());
        {
            let (index, rebuilt) = HistoryIndex::open_or_reset(dir.path()).unwrap();
            assert!(!rebuilt);
            index.insert(&[(a, 7), (b, 3), (a, 2), (a, 300)]).unwrap();
            index.insert(&[(a, 7)]).unwrap();
            index.persist().unwrap();
            assert_eq!(index.seqs(&a, 0, 10).unwrap(), vec![2, 7, 300]);
            assert_eq!(index.seqs(&a, 3, 1).unwrap(), vec![7]);
        }
        let (index, rebuilt) = HistoryIndex::open_or_reset(dir.path()).unwrap();
        assert!(!rebuilt);
        assert_eq!(index.seqs(&a, 0, 10).unwrap(), vec![2, 7, 300]);
        assert_eq!(index.seqs(&b, 0, 10).unwrap(), vec![3]);
        assert!(index.seqs(&CustomerId::random(), 0, 10).unwrap().is_empty());
    }

    #[test]
    fn a_damaged_index_is_reset_so_the_store_can_rebuild_it() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (index, _) = HistoryIndex::open_or_reset(dir.path()).unwrap();
            index.insert(&[(CustomerId::random(), 1)]).unwrap();
            index.persist().unwrap();
        }
        // Overwrite every file fjall keeps with garbage.
        for entry in walk(dir.path()) {
            std::fs::write(&entry, b"not an index").unwrap();
        }
        let (index, rebuilt) = HistoryIndex::open_or_reset(dir.path()).unwrap();
        assert!(rebuilt, "a damaged index must be reported as rebuilt");
        assert!(index.seqs(&CustomerId::random(), 0, 10).unwrap().is_empty());
    }

    fn walk(dir: &Path) -> Vec<PathBuf> {
        let mut files = Vec::new();
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                files.extend(walk(&path));
            } else {
                files.push(path);
            }
        }
        files
    }
}
