//! Storage behind one interface. The store keeps sealed records, blind-index entries and the
//! audit log, and applies a data change together with its audit event atomically.
//!
//! The store never sees plaintext: records hold only sealed bytes, blind indexes and metadata
//! that is not customer data (versions, times, consent flags). No backend type appears outside
//! this module; the rest of the crate holds an `Arc<dyn Store>`.

mod audit_files;
mod group_commit;
mod record;
mod sled;
mod wal;

use async_trait::async_trait;

pub use self::sled::SledStore;
pub use group_commit::GroupCommit;
pub use record::{
    ConsentRecord, ConsentSource, CustomerRecord, IndexEntry, StoredField, StoredPaymentMethod,
};

use crate::crypto::BlindIndex;
use crate::domain::CustomerId;

/// A storage failure.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The record changed since it was read (optimistic concurrency); reload and retry.
    #[error("the record changed concurrently")]
    VersionConflict,
    /// A unique index entry is already held by another customer.
    #[error("unique value of field {field} already in use")]
    UniqueViolation {
        /// The declared field whose unique index clashed.
        field: String,
    },
    /// An audit append did not continue the log where it ends (a bug, or a second writer).
    #[error("audit append out of order: expected seq {expected}, got {got}")]
    AuditOutOfOrder {
        /// The next sequence number the store expects.
        expected: u64,
        /// The sequence number offered.
        got: u64,
    },
    /// The backend failed (I/O, connection, flush).
    #[error("storage unavailable: {0}")]
    Unavailable(String),
    /// Stored bytes could not be decoded.
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
}

/// One atomic write: at most one customer change and its audit event.
///
/// Invariant: every change of customer data carries its audit event. The one exception is a
/// master-key re-wrap (`audit: None`), which changes no field and is recorded by the
/// `key.rotate` events around the rotation.
#[derive(Debug)]
pub struct Commit {
    /// The data change, if the request changes data.
    pub customer: Option<CustomerChange>,
    /// The audit event that records the request.
    pub audit: Option<AuditAppend>,
}

/// A change to one customer. The store keeps the blind-index entries in step with
/// [`CustomerRecord::index_entries`], and refuses a unique entry held by another customer.
#[derive(Debug)]
pub enum CustomerChange {
    /// Create (`expected_version: None`, the id must be free) or replace a record.
    Put {
        /// The new record; its `version` must be `expected_version + 1` (or 1 on create).
        record: Box<CustomerRecord>,
        /// The version the change was computed from.
        expected_version: Option<u64>,
    },
    /// Remove the record and every index entry of the customer.
    Delete {
        /// The customer to remove.
        id: CustomerId,
        /// The version the erasure was decided on.
        expected_version: u64,
    },
}

/// One audit log leaf and the Merkle nodes it completes.
#[derive(Debug, Clone)]
pub struct AuditAppend {
    /// The leaf index; must equal the current log size.
    pub seq: u64,
    /// The event as canonical JSON (RFC 8785): exactly the bytes that are hashed.
    pub event: Vec<u8>,
    /// The customer the event concerns, for the per-customer history index.
    pub customer: Option<CustomerId>,
    /// Hashes of the subtrees this leaf completes: (level, index at that level, hash); level 0
    /// is the leaf hash itself.
    pub nodes: Vec<(u8, u64, [u8; 32])>,
}

/// The storage interface every backend implements. Object-safe: used as `Arc<dyn Store>`.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// The stored record of a customer, if any.
    async fn customer(&self, id: &CustomerId) -> Result<Option<CustomerRecord>, StoreError>;

    /// Customers whose `field` has the blind index `index`.
    async fn lookup(&self, field: &str, index: &BlindIndex) -> Result<Vec<CustomerId>, StoreError>;

    /// Applies a commit atomically: the customer change, its index entries and the audit event
    /// land together or not at all. Not yet durable: see [`Store::sync`]. Implementations must
    /// finish (or not start) the commit even if the returned future is dropped half-way, since
    /// the audit log's frontier follows what this call reports.
    async fn commit(&self, commit: Commit) -> Result<(), StoreError>;

    /// Returns once everything committed before this call is durable on disk. Concurrent callers
    /// share flushes (group commit).
    async fn sync(&self) -> Result<(), StoreError>;

    /// A vault-wide metadata value (wrapped system keys, format version).
    async fn meta(&self, name: &str) -> Result<Option<Vec<u8>>, StoreError>;

    /// Stores `value` under `name` unless a value is there already; returns the value now stored.
    /// Durable on return.
    async fn init_meta(&self, name: &str, value: Vec<u8>) -> Result<Vec<u8>, StoreError>;

    /// Stores `value` under `name`, replacing any value. Durable on return.
    async fn put_meta(&self, name: &str, value: Vec<u8>) -> Result<(), StoreError>;

    /// The number of audit events (the next seq).
    async fn audit_size(&self) -> Result<u64, StoreError>;

    /// Up to `limit` audit events with seq ≥ `from`, in order, as stored canonical JSON.
    async fn audit_events(&self, from: u64, limit: usize) -> Result<Vec<(u64, Vec<u8>)>, StoreError>;

    /// Up to `limit` audit events that name `customer`, with seq > `after`, in order. Served
    /// from a per-customer index: cost depends on this customer's history, not the log's size.
    async fn audit_events_for_customer(
        &self,
        customer: &CustomerId,
        after: Option<u64>,
        limit: usize,
    ) -> Result<Vec<(u64, Vec<u8>)>, StoreError>;

    /// Up to `limit` customer ids greater than `after`, in id order (for background sweeps).
    async fn customer_ids(
        &self,
        after: Option<CustomerId>,
        limit: usize,
    ) -> Result<Vec<CustomerId>, StoreError>;

    /// The stored Merkle node at (`level`, `index`), if that subtree is complete.
    async fn audit_node(&self, level: u8, index: u64) -> Result<Option<[u8; 32]>, StoreError>;

    /// Keeps a signed checkpoint (its note) of the tree of `size` leaves. Storing a size again
    /// replaces that size's note. Not yet durable: see [`Store::sync`].
    async fn put_checkpoint(&self, size: u64, note: Vec<u8>) -> Result<(), StoreError>;

    /// The checkpoint with the largest size, as (size, note).
    async fn latest_checkpoint(&self) -> Result<Option<(u64, Vec<u8>)>, StoreError>;
}
