//! The embedded default backend: one sled tree, keys namespaced by a one-byte prefix.
//!
//! Keeping everything in one tree lets a single `sled::Batch` carry a record, its index entries
//! and its audit event, which sled applies atomically. Every write goes through one writer lock,
//! so version checks, unique checks and audit sequence numbers need no retries inside sled.
//!
//! Key layout:
//! - `c` ‖ customer id (16) → encoded [`CustomerRecord`]
//! - `i` ‖ field ‖ 0x00 ‖ blind index (32) ‖ customer id (16) → empty
//! - `e` ‖ seq (8, big-endian) → audit event, canonical JSON
//! - `h` ‖ level (1) ‖ index (8, big-endian) → Merkle subtree hash (32)
//! - `x` ‖ customer id (16) ‖ seq (8) → empty (per-customer audit history)
//! - `k` ‖ tree size (8, big-endian) → signed checkpoint note
//! - `m` ‖ name → metadata

use std::path::Path;
use std::sync::Mutex;

use async_trait::async_trait;

use super::{
    AuditAppend, Commit, CustomerChange, CustomerRecord, GroupCommit, IndexEntry, Store, StoreError,
};
use crate::crypto::BlindIndex;
use crate::domain::CustomerId;

/// Customer records, index entries, audit log and metadata in one sled database.
pub struct SledStore {
    tree: sled::Tree,
    db: sled::Db,
    writer: Mutex<WriterState>,
    group_commit: GroupCommit,
}

struct WriterState {
    audit_size: u64,
}

impl SledStore {
    /// Opens (or creates) the database in `dir`. `cache_bytes` bounds sled's page cache.
    pub fn open(dir: &Path, cache_bytes: u64) -> Result<Self, StoreError> {
        let db = sled::Config::new()
            .path(dir)
            .cache_capacity(cache_bytes)
            .mode(sled::Mode::HighThroughput)
            // Every write is flushed by group commit; sled's own timer thread would only add
            // uncontrolled I/O and hold the directory lock after the store is dropped.
            .flush_every_ms(None)
            .open()
            .map_err(unavailable)?;
        let tree = db.open_tree("custodia").map_err(unavailable)?;
        let audit_size = match tree.scan_prefix([b'e']).next_back() {
            Some(entry) => seq_from_key(&entry.map_err(unavailable)?.0)? + 1,
            None => 0,
        };
        let flush_db = db.clone();
        let group_commit = GroupCommit::start(
            "sled",
            Box::new(move || flush_db.flush().map(|_| ()).map_err(|e| e.to_string())),
        );
        Ok(SledStore { tree, db, writer: Mutex::new(WriterState { audit_size }), group_commit })
    }

    /// Flushes everything to disk (used at shutdown).
    pub fn flush(&self) -> Result<(), StoreError> {
        self.db.flush().map(|_| ()).map_err(unavailable)
    }

    fn apply(&self, commit: Commit) -> Result<(), StoreError> {
        let mut writer = self.writer.lock().map_err(|_| poisoned())?;
        if let Some(audit) = &commit.audit
            && audit.seq != writer.audit_size
        {
            return Err(StoreError::AuditOutOfOrder { expected: writer.audit_size, got: audit.seq });
        }
        let mut batch = sled::Batch::default();
        if let Some(change) = commit.customer {
            self.stage_customer(&mut batch, change)?;
        }
        if let Some(audit) = &commit.audit {
            stage_audit(&mut batch, audit);
        }
        self.tree.apply_batch(batch).map_err(unavailable)?;
        if commit.audit.is_some() {
            writer.audit_size += 1;
        }
        Ok(())
    }

    /// Checks the change against what is stored and adds its writes to `batch`.
    /// Called with the writer lock held.
    fn stage_customer(&self, batch: &mut sled::Batch, change: CustomerChange) -> Result<(), StoreError> {
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
                    batch.remove(index_key(&entry.field, &entry.index, &id));
                }
                for entry in record.index_entries.iter().filter(|e| !old_entries.contains(e)) {
                    if entry.unique && self.index_owners(&entry.field, &entry.index)?.iter().any(|o| o != &id)
                    {
                        return Err(StoreError::UniqueViolation { field: entry.field.clone() });
                    }
                    batch.insert(index_key(&entry.field, &entry.index, &id), &[][..]);
                }
                batch.insert(customer_key(&id).as_slice(), record.encode()?);
            }
            CustomerChange::Delete { .. } => {
                for entry in old_entries {
                    batch.remove(index_key(&entry.field, &entry.index, &id));
                }
                batch.remove(customer_key(&id).as_slice());
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
            let _writer = self.writer.lock().map_err(|_| poisoned())?;
            match self.tree.get(meta_key(name)).map_err(unavailable)? {
                Some(existing) => existing.to_vec(),
                None => {
                    self.tree.insert(meta_key(name), value.as_slice()).map_err(unavailable)?;
                    value
                }
            }
        };
        self.sync().await?;
        Ok(stored)
    }

    async fn put_meta(&self, name: &str, value: Vec<u8>) -> Result<(), StoreError> {
        {
            let _writer = self.writer.lock().map_err(|_| poisoned())?;
            self.tree.insert(meta_key(name), value).map_err(unavailable)?;
        }
        self.sync().await
    }

    async fn audit_size(&self) -> Result<u64, StoreError> {
        Ok(self.writer.lock().map_err(|_| poisoned())?.audit_size)
    }

    async fn audit_events(&self, from: u64, limit: usize) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
        let mut out = Vec::new();
        for entry in self.tree.range(event_key(from)..[b'e' + 1].to_vec()).take(limit) {
            let (key, value) = entry.map_err(unavailable)?;
            out.push((seq_from_key(&key)?, value.to_vec()));
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
                .tree
                .get(event_key(seq))
                .map_err(unavailable)?
                .ok_or_else(|| StoreError::Corrupt(format!("history names missing event {seq}")))?;
            out.push((seq, event.to_vec()));
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
        match self.tree.get(node_key(level, index)).map_err(unavailable)? {
            Some(bytes) => Ok(Some(
                bytes.as_ref().try_into().map_err(|_| StoreError::Corrupt("node hash length".into()))?,
            )),
            None => Ok(None),
        }
    }

    async fn put_checkpoint(&self, size: u64, note: Vec<u8>) -> Result<(), StoreError> {
        self.tree.insert(checkpoint_key(size), note).map_err(unavailable)?;
        Ok(())
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

fn stage_audit(batch: &mut sled::Batch, audit: &AuditAppend) {
    batch.insert(event_key(audit.seq), audit.event.as_slice());
    for (level, index, hash) in &audit.nodes {
        batch.insert(node_key(*level, *index), &hash[..]);
    }
    if let Some(customer) = &audit.customer {
        let mut key = history_prefix(customer);
        key.extend_from_slice(&audit.seq.to_be_bytes());
        batch.insert(key, &[][..]);
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

fn event_key(seq: u64) -> Vec<u8> {
    let mut key = Vec::with_capacity(9);
    key.push(b'e');
    key.extend_from_slice(&seq.to_be_bytes());
    key
}

fn node_key(level: u8, index: u64) -> Vec<u8> {
    let mut key = Vec::with_capacity(10);
    key.push(b'h');
    key.push(level);
    key.extend_from_slice(&index.to_be_bytes());
    key
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
