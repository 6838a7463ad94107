//! The sled key layout: one tree, keys namespaced by a one-byte prefix.
//!
//! - `c` ‖ customer id (16) → `0x80 ‖ key slot (u64 LE) ‖ record` ([`encode_record`]): the
//!   record without its data key, which lives in the key file (`key_file.rs`); records written
//!   before the key file are a bare [`CustomerRecord::encode`] with the key inline. These keys
//!   are the log's and the writer's name for a record: the record itself is kept in the record
//!   file (`records.rs`) under the bare id, and sled holds none (stores from before the record
//!   file are moved there on open)
//! - `o` ‖ field ‖ 0x00 ‖ blind index (32) → who owns that entry ([`EntryOwners`]): its one
//!   owner's id (16 bytes), or once a second customer joined, the number of owners (u64,
//!   big-endian), each named by a key `o` ‖ field ‖ 0x00 ‖ blind index ‖ customer id (16) →
//!   empty. A unique value is one key, its unique check one point read; a change to a value
//!   many share writes its own owner key and the count, whatever their number (a list of them
//!   would be rewritten whole). These keys are the log's and the writer's name for an entry:
//!   they are kept in the record file's `owners` keyspace, beside the records, and sled holds
//!   none
//! - `i` ‖ field ‖ 0x00 ‖ blind index (32) ‖ customer id (16) → empty: the blind-index entries
//!   of stores from before the record file held them; rebuilt there from the records and
//!   removed on open
//! - `x` ‖ …: per-customer history rows of stores from before the history index
//!   (`history.rs`); moved there and removed on open
//! - `k` ‖ tree size (8, big-endian) → signed checkpoint note
//! - `m` ‖ name → metadata (`wal_lsn`: the LSN of the last batch applied to sled and the audit
//!   length after it; `history_len`: entries whose history rows are in the history index; `key_file`: set
//!   once the key file exists)
//!
//! Audit entries are not in sled but in append-only files (`audit_files.rs`), one entry per
//! event: `n (1) ‖ n × (level (1) ‖ hash (32)) ‖ event` — the Merkle nodes the leaf completes
//! (its own leaf hash at level 0 first), then the canonical JSON. Node (level, index) is
//! completed by leaf `(index + 1) · 2^level − 1`, so it is found in that leaf's entry.

use crate::crypto::Sealed;
use crate::domain::CustomerId;
use crate::store::{CustomerRecord, Hash, IntegratedLeaf, StoreError};

/// First byte of a record whose data key is in the key file.
const DETACHED_KEY: u8 = 0x80;

/// Encodes `record` for its `c` key with the data key left out (its sealed bytes empty; the
/// key id stays, naming what wrapped it), and `slot` naming the key-file slot that holds it.
pub(super) fn encode_record(record: &mut CustomerRecord, slot: u64) -> Result<Vec<u8>, StoreError> {
    let sealed = std::mem::replace(&mut record.data_key.sealed, Sealed::from_bytes(Vec::new()));
    let body = record.encode();
    record.data_key.sealed = sealed;
    let body = body?;
    let mut value = Vec::with_capacity(9 + body.len());
    value.push(DETACHED_KEY);
    value.extend_from_slice(&slot.to_le_bytes());
    value.extend_from_slice(&body);
    Ok(value)
}

/// Decodes a `c` value: the record and the slot of its data key, or `None` for a record that
/// still holds its key inline. A record with a slot has an empty `data_key` until the caller
/// fills it from the key file.
pub(super) fn decode_record(value: &[u8]) -> Result<(CustomerRecord, Option<u64>), StoreError> {
    match value.split_first() {
        Some((&DETACHED_KEY, rest)) => {
            let (slot, body) = rest.split_at_checked(8).ok_or_else(|| corrupt("record layout"))?;
            let slot = u64::from_le_bytes(slot.try_into().map_err(|_| corrupt("record layout"))?);
            Ok((CustomerRecord::decode(body)?, Some(slot)))
        }
        _ => Ok((CustomerRecord::decode(value)?, None)),
    }
}

/// Metadata name of the last applied batch's LSN and audit length.
pub(super) const WAL_LSN: &str = "wal_lsn";
/// Metadata name of the number of audit entries whose history rows are in sled.
pub(super) const HISTORY_LEN: &str = "history_len";
/// Metadata name set once the key file exists (so a deleted key file is noticed on open).
pub(super) const KEY_FILE_MARK: &str = "key_file";
/// Metadata name set once the records live in the record file (so a deleted one is noticed).
pub(super) const RECORDS_MARK: &str = "records";
/// First byte of a customer record's key.
pub(super) const CUSTOMER_PREFIX: &[u8] = b"c";

pub(super) fn customer_key(id: &CustomerId) -> [u8; 17] {
    let mut key = [0u8; 17];
    key[0] = CUSTOMER_PREFIX[0];
    key[1..].copy_from_slice(id.as_bytes());
    key
}

/// First byte of a blind-index entry's keys (its owner count's and its owners').
pub(super) const OWNERS_PREFIX: &[u8] = b"o";
/// First byte of a blind-index entry of a store from before the record file held them.
pub(super) const LEGACY_INDEX_PREFIX: &[u8] = b"i";

/// The key of blind index `index` of `field`: `o ‖ field ‖ 0 ‖ index`, holding its
/// [`EntryOwners`].
pub(super) fn entry_key(field: &str, index: &[u8; 32]) -> Vec<u8> {
    let mut key = Vec::with_capacity(2 + field.len() + 32 + 16);
    key.extend_from_slice(OWNERS_PREFIX);
    key.extend_from_slice(field.as_bytes());
    key.push(0);
    key.extend_from_slice(index);
    key
}

/// The key that names `owner` as an owner of the entry under `entry_key` (one whose value is
/// [`EntryOwners::Counted`]).
pub(super) fn owner_key(entry_key: &[u8], owner: &CustomerId) -> Vec<u8> {
    let mut key = Vec::with_capacity(entry_key.len() + 16);
    key.extend_from_slice(entry_key);
    key.extend_from_slice(owner.as_bytes());
    key
}

/// Who owns a blind-index entry, as the value of its [`entry_key`] says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum EntryOwners {
    /// One customer, named here (16 bytes): every entry until a second customer joins it, so
    /// a unique value costs one key.
    Sole(CustomerId),
    /// This many (at least one; 8 bytes, big-endian), each named by an [`owner_key`]. An entry
    /// stays counted until its last owner leaves.
    Counted(u64),
}

impl EntryOwners {
    /// The number of owners.
    pub(super) fn count(self) -> u64 {
        match self {
            EntryOwners::Sole(_) => 1,
            EntryOwners::Counted(n) => n,
        }
    }

    pub(super) fn encode(self) -> Vec<u8> {
        match self {
            EntryOwners::Sole(id) => id.as_bytes().to_vec(),
            EntryOwners::Counted(n) => n.to_be_bytes().to_vec(),
        }
    }

    /// Errors: `Corrupt` for a value of another length.
    pub(super) fn decode(value: &[u8]) -> Result<Self, StoreError> {
        if let Ok(id) = <[u8; 16]>::try_from(value) {
            return Ok(EntryOwners::Sole(CustomerId::from_bytes(id)));
        }
        let count = <[u8; 8]>::try_from(value).map_err(|_| corrupt("blind-index entry length"))?;
        Ok(EntryOwners::Counted(u64::from_be_bytes(count)))
    }
}

/// Prefix of the history rows stores kept in sled before the history index.
pub(super) const LEGACY_HISTORY_PREFIX: [u8; 1] = [b'x'];

pub(super) fn checkpoint_key(size: u64) -> [u8; 9] {
    let mut key = [0u8; 9];
    key[0] = b'k';
    key[1..].copy_from_slice(&size.to_be_bytes());
    key
}

/// The big-endian u64 that ends a `k` key.
pub(super) fn trailing_u64(key: &[u8]) -> Result<u64, StoreError> {
    let at = key.len().checked_sub(8).ok_or_else(|| corrupt("key too short"))?;
    Ok(u64::from_be_bytes(key[at..].try_into().map_err(|_| corrupt("key too short"))?))
}

pub(super) fn meta_key(name: &str) -> Vec<u8> {
    let mut key = vec![b'm'];
    key.extend_from_slice(name.as_bytes());
    key
}

/// An audit entry as stored: the nodes the leaf completes, then the event.
pub(super) fn encode_entry(leaf: &IntegratedLeaf) -> Vec<u8> {
    let mut value = Vec::with_capacity(1 + 33 * leaf.nodes.len() + leaf.event.len());
    // invariant: a leaf completes at most 64 nodes (one per level), so the count fits a byte.
    value.push(leaf.nodes.len() as u8);
    for (level, _, hash) in &leaf.nodes {
        value.push(*level);
        value.extend_from_slice(hash);
    }
    value.extend_from_slice(&leaf.event);
    value
}

/// (level, hash) of the Merkle nodes one leaf completed.
pub(super) type CompletedNodes = Vec<(u8, Hash)>;

/// Splits a stored audit entry into the nodes its leaf completed and the event bytes.
pub(super) fn decode_entry(value: &[u8]) -> Result<(CompletedNodes, &[u8]), StoreError> {
    let (&count, mut rest) = value.split_first().ok_or_else(|| corrupt("audit entry layout"))?;
    let mut nodes = Vec::with_capacity(usize::from(count));
    for _ in 0..count {
        let (head, tail) = rest.split_at_checked(33).ok_or_else(|| corrupt("audit entry layout"))?;
        let hash: Hash = head[1..].try_into().map_err(|_| corrupt("audit entry layout"))?;
        nodes.push((head[0], hash));
        rest = tail;
    }
    Ok((nodes, rest))
}

/// The leaf that completes node (`level`, `index`): `(index + 1) · 2^level − 1`.
pub(super) fn completing_leaf(level: u8, index: u64) -> Option<u64> {
    index.checked_add(1)?.checked_mul(1u64.checked_shl(u32::from(level))?).map(|n| n - 1)
}

/// A pair of u64s (big-endian), the value of `wal_lsn`.
pub(super) fn encode_pair(a: u64, b: u64) -> Vec<u8> {
    let mut value = a.to_be_bytes().to_vec();
    value.extend_from_slice(&b.to_be_bytes());
    value
}

pub(super) fn decode_pair(bytes: &[u8]) -> Result<(u64, u64), StoreError> {
    let part = |r: std::ops::Range<usize>| -> Result<u64, StoreError> {
        Ok(u64::from_be_bytes(
            bytes.get(r).and_then(|b| b.try_into().ok()).ok_or_else(|| corrupt("u64 pair"))?,
        ))
    };
    Ok((part(0..8)?, part(8..16)?))
}

pub(super) fn corrupt(what: &str) -> StoreError {
    StoreError::Corrupt(what.to_owned())
}
