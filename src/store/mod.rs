//! Storage behind one interface. The store keeps sealed records, blind-index entries and the
//! audit log, and applies a data change together with its audit events atomically, durable on
//! return.
//!
//! The seam follows transparency logs (Trillian, Sunlight): a request hands over its change and
//! its *pending* events; the backend's sequencer gives them seqs and Merkle nodes through the
//! injected, pure [`Integrator`] and advances the head. Each backend lives in its own folder
//! (`sled/`, `memory/`, `postgres/`) with everything that exists only for it (sled's write-ahead log, group
//! commit and audit files).
//!
//! The store never sees plaintext: records hold only sealed bytes, blind indexes and metadata
//! that is not customer data (versions, times, consent flags). No backend type appears outside
//! this module; the rest of the crate holds an `Arc<dyn Store>`.

mod memory;
mod postgres;
mod record;
mod sled;

use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;

pub use self::memory::MemoryData;
use self::memory::MemoryStore;
use self::postgres::PostgresStore;
pub use self::postgres::{
    PostgresSettings, connect_once as connect_postgres, describe_error as describe_postgres_error,
    identity as postgres_identity, migrate as migrate_postgres,
};
use self::sled::SledStore;
pub use record::{
    CardFingerprint, ConsentRecord, ConsentSource, CustomerRecord, IndexEntry, StoredField,
    StoredPaymentMethod,
};

use crate::crypto::BlindIndex;
use crate::domain::CustomerId;

/// A storage failure.
#[derive(Debug, Clone, thiserror::Error)]
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
    /// A [`Write::precondition`] did not hold: nothing was written. Retry with a fresh view
    /// of the named metadata value.
    #[error("metadata {name} changed concurrently")]
    PreconditionFailed {
        /// The metadata name.
        name: String,
    },
    /// The backend failed (I/O, connection, flush).
    #[error("storage unavailable: {0}")]
    Unavailable(String),
    /// The write **is committed** (its change and its pending events are durable), but its
    /// events' seqs, which the caller asked for ([`Write::need_seqs`]), were not assigned within
    /// the backend's wait (a sequencer that is stalled or changing hands): the caller must not
    /// report the write as failed or repeat it.
    #[error("committed; its audit events are not integrated yet")]
    CommittedUnsequenced,
    /// Stored bytes could not be decoded.
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
}

/// One atomic write: at most one customer change and the pending audit events that record it,
/// landing together or not at all, durable on return.
///
/// Invariant: every change of customer data carries an event. The one exception is a
/// master-key re-wrap (no events), which changes no field and is recorded by the `key.rotate`
/// events around the rotation.
#[derive(Debug, Default)]
pub struct Write {
    /// The data change, if the request changes data.
    pub change: Option<CustomerChange>,
    /// The events that record the request, in order.
    pub events: Vec<PendingEvent>,
    /// The caller needs its events' seqs (an erasure receipt names its event's). A backend
    /// that integrates events after the commit (PostgreSQL's sequencer) then waits for them;
    /// otherwise it answers at the commit, with [`Written::seqs`] empty. Backends that
    /// integrate inside the commit (sled, memory) always give them.
    pub need_seqs: bool,
    /// Commit only if a metadata value still is what the caller computed the change from;
    /// otherwise nothing is written and the outcome is [`StoreError::PreconditionFailed`].
    /// Checked atomically with the commit: in the write's transaction under a share lock on the
    /// value's row (PostgreSQL), inside the group commit (sled, memory). The vault fences
    /// writes that wrap or index under epoch keys with `key_epochs` (see `vault::epochs`).
    pub precondition: Option<MetaEquals>,
}

/// A precondition of a [`Write`]: metadata `name` holds exactly `value` (`None`: absent).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetaEquals {
    /// The metadata name.
    pub name: String,
    /// The value it must hold.
    pub value: Option<Vec<u8>>,
}

/// What a write became: the seqs its events were given, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Written {
    /// One leaf index per event of the write; empty when the backend answered at the commit,
    /// before its sequencer integrated them (PostgreSQL without [`Write::need_seqs`]).
    pub seqs: Vec<u64>,
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
    /// Remove the record and every index entry of the customer, and destroy its wrapped data
    /// key where the backend stores it before the write returns (crypto-shredding, DESIGN §4):
    /// sled zeroes and syncs the key's slot, so no file of the data directory opens the
    /// customer's sealed values afterwards.
    Delete {
        /// The customer to remove.
        id: CustomerId,
        /// The version the erasure was decided on.
        expected_version: u64,
    },
}

/// An audit event before the sequencer gives it a place in the log.
///
/// `prefix` is the event's RFC 8785 canonical JSON without its `seq` and `time` members and
/// without the closing brace. Those two members sort last in JCS (after `request_id`), so the
/// leaf's bytes are `prefix ‖ ,"seq":N,"time":"T"}`: the request renders everything else before
/// any lock, and the sequencer only appends.
#[derive(Debug, Clone)]
pub struct PendingEvent {
    /// Canonical JSON of the event without `seq`, `time` and the closing `}`.
    pub prefix: Vec<u8>,
    /// The time of the decision, RFC 3339 UTC with milliseconds.
    pub time: String,
    /// The customer the event names, for the per-customer history index.
    pub customer: Option<CustomerId>,
}

/// A SHA-256 Merkle tree hash (RFC 9162 §2.1.1).
pub type Hash = [u8; 32];

/// A Merkle tree node: (level, index at that level); level 0 are the leaves.
pub type NodeId = (u8, u64);

/// The head of the log: its size and the roots of its perfect subtrees, largest (leftmost)
/// first, from which the next leaf's completed nodes and the root are computed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TreeHead {
    /// The number of leaves.
    pub size: u64,
    /// The frontier: one root per set bit of `size`, highest first.
    pub roots: Vec<Hash>,
}

/// A leaf as the sequencer completed it.
#[derive(Debug, Clone)]
pub struct IntegratedLeaf {
    /// Its index.
    pub seq: u64,
    /// The event's canonical JSON: exactly the bytes the leaf hashes.
    pub event: Vec<u8>,
    /// The customer the event names.
    pub customer: Option<CustomerId>,
    /// Hashes of the subtrees this leaf completes: (level, index at that level, hash); level 0
    /// is the leaf hash itself.
    pub nodes: Vec<(u8, u64, Hash)>,
}

/// The tree math, injected by the audit log so the store never imports it: gives pending
/// events their seqs and computes leaves and nodes. Pure: no I/O, the same answer for the same
/// input, so every backend (and every node) integrates identically.
pub trait Integrator: Send + Sync + 'static {
    /// Appends `pending` to the tree `head`, in order: the completed leaves and the new head.
    fn integrate(&self, head: &TreeHead, pending: Vec<PendingEvent>) -> (Vec<IntegratedLeaf>, TreeHead);
}

/// A turn at a background sweep ([`Store::exclusive`]): released when dropped.
#[derive(Default)]
pub struct Turn(Option<Box<dyn TurnHold>>);

/// What keeps a [`Turn`]: e.g. the database session whose advisory lock is the turn.
pub(crate) trait TurnHold: Send + Sync {
    /// Whether the turn is still this node's (the session holding the lock is alive).
    fn held(&self) -> bool;
}

impl Turn {
    /// A turn that lasts as long as `hold` does.
    pub(crate) fn holding(hold: impl TurnHold + 'static) -> Self {
        Turn(Some(Box::new(hold)))
    }

    /// Whether this node still holds the turn. A session that ended (the database restarted,
    /// an operator terminated it, the network gave up) releases its lock, and another node may
    /// take the turn at once: a sweep asks before each step and stops when this is `false`.
    /// (A step already under way finishes; each of its writes is version-checked or fenced,
    /// see README "Scaling out".)
    pub fn held(&self) -> bool {
        self.0.as_ref().is_none_or(|hold| hold.held())
    }
}

impl std::fmt::Debug for Turn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() { "Turn(held)" } else { "Turn" })
    }
}

/// Which backend, and its settings (DESIGN §8).
#[derive(Debug, Clone)]
pub enum StorageSettings {
    /// The embedded default: sled in `dir`, its page cache bounded by `cache_bytes`.
    Sled {
        /// The store's directory.
        dir: PathBuf,
        /// sled's page cache, in bytes.
        cache_bytes: u64,
    },
    /// Everything in process memory, lost at exit: the reference backend for tests. Opened
    /// twice with the same data, it gives two handles over one store.
    Memory(MemoryData),
    /// PostgreSQL, shared by several nodes (`CUSTODIA_STORE=postgres`).
    Postgres(PostgresSettings),
}

/// Opens the configured backend. The rest of the crate holds the result as `Arc<dyn Store>`
/// and never names a backend type.
pub fn open(
    settings: &StorageSettings,
    integrator: Arc<dyn Integrator>,
) -> Result<Arc<dyn Store>, StoreError> {
    Ok(match settings {
        StorageSettings::Sled { dir, cache_bytes } => {
            Arc::new(SledStore::open(dir, *cache_bytes, integrator)?)
        }
        StorageSettings::Memory(data) => Arc::new(MemoryStore::open(data, integrator)),
        StorageSettings::Postgres(settings) => Arc::new(PostgresStore::open(settings, integrator)?),
    })
}

/// The storage interface every backend implements. Object-safe: used as `Arc<dyn Store>`.
///
/// Every write is durable on return, and atomic: a backend may batch concurrent writes (sled's
/// group commit), but each caller sees its own write fully done or not at all. A backend
/// integrates the events of a write into the log (seqs, leaves, nodes, head) through the
/// injected [`Integrator`]; `head`, `nodes` and the event readers never show an event before
/// it is durable. `head` and the event readers read their own writes: every event whose write
/// returned before the call began is in what they show (PostgreSQL waits for its sequencer to
/// integrate what was committed before the read).
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// The stored record of a customer, if any.
    async fn customer(&self, id: &CustomerId) -> Result<Option<CustomerRecord>, StoreError>;

    /// Customers whose `field` has the blind index `index`.
    async fn lookup(&self, field: &str, index: &BlindIndex) -> Result<Vec<CustomerId>, StoreError>;

    /// Up to `limit` customer ids greater than `after`, in id order (for background sweeps).
    async fn customer_ids(
        &self,
        after: Option<CustomerId>,
        limit: usize,
    ) -> Result<Vec<CustomerId>, StoreError>;

    /// Applies the change (version check, unique entries) and appends its events, atomically;
    /// durable on return. `VersionConflict` / `UniqueViolation` / `PreconditionFailed`: nothing
    /// was written, not even the events.
    async fn write(&self, write: Write) -> Result<Written, StoreError>;

    /// Independent writes made durable together (key rotation, retention sweeps): one outcome
    /// per write, in order. The outer error means the batch as a whole failed.
    async fn write_many(&self, writes: Vec<Write>) -> Result<Vec<Result<Written, StoreError>>, StoreError>;

    /// A vault-wide metadata value (wrapped system keys, format version).
    async fn meta(&self, name: &str) -> Result<Option<Vec<u8>>, StoreError>;

    /// Stores `value` under `name` unless a value is there already; returns the value now stored.
    /// Durable on return.
    async fn init_meta(&self, name: &str, value: Vec<u8>) -> Result<Vec<u8>, StoreError>;

    /// Stores `value` under `name`, replacing any value. Durable on return.
    async fn put_meta(&self, name: &str, value: Vec<u8>) -> Result<(), StoreError>;

    /// Compare-and-set: stores `value` under `current.name` only if that name still holds
    /// exactly `current.value` (`None`: absent), checked atomically with the store; answers
    /// whether it did. Durable on return when `true`; nothing changes when `false`. For a value
    /// that two nodes may step on at once (the epoch destruction marker, `vault::epochs`).
    async fn swap_meta(&self, current: MetaEquals, value: Vec<u8>) -> Result<bool, StoreError>;

    /// The durable head of the log.
    async fn head(&self) -> Result<TreeHead, StoreError>;

    /// The stored Merkle nodes with these ids (`None` for a subtree not complete), in one call:
    /// a proof is one round trip on a network backend.
    async fn nodes(&self, ids: &[NodeId]) -> Result<Vec<Option<Hash>>, StoreError>;

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

    /// Keeps a signed checkpoint (its note) of the tree of `size` leaves unless one is stored
    /// for that size; returns the note now stored for `size`. Durable on return. The caller
    /// compares: a different note for the same size is a fork.
    async fn put_checkpoint(&self, size: u64, note: Vec<u8>) -> Result<Vec<u8>, StoreError>;

    /// The checkpoint with the largest size, as (size, note).
    async fn latest_checkpoint(&self) -> Result<Option<(u64, Vec<u8>)>, StoreError>;

    /// Stores `record` as it is (version, data key and index entries kept) for a customer the
    /// store does not hold, with no event: for `custodia store copy` and `custodia restore` into
    /// an empty store, whose log is copied separately. `VersionConflict` if the customer exists,
    /// `UniqueViolation` on a clash. Backends that are never a copy's destination refuse it
    /// (every backend here implements it).
    async fn import(&self, record: CustomerRecord) -> Result<(), StoreError> {
        let _ = record;
        Err(StoreError::Unavailable("this backend cannot be the destination of a store copy".into()))
    }

    /// Whether the store holds nothing: no record, no event (integrated or pending), no
    /// checkpoint, no metadata. `custodia store copy` only writes into an empty store. This
    /// default sees records, the log's head and checkpoints; a backend that can be a copy's
    /// destination looks at everything it keeps.
    async fn is_empty(&self) -> Result<bool, StoreError> {
        Ok(self.head().await?.size == 0
            && self.customer_ids(None, 1).await?.is_empty()
            && self.latest_checkpoint().await?.is_none())
    }

    /// A turn at the background sweep named `task` (retention, key epochs, master-key
    /// rotation) among every node sharing this store: `Some` while this node may run it (drop
    /// the turn to release it), `None` while another node holds it. A single-process backend
    /// always grants it; PostgreSQL holds an advisory lock in a session of the turn's own.
    async fn exclusive(&self, task: &str) -> Result<Option<Turn>, StoreError> {
        let _ = task;
        Ok(Some(Turn::default()))
    }

    /// Makes everything durable in its final place and releases the backend (at shutdown).
    /// Later calls fail.
    async fn close(&self) -> Result<(), StoreError>;
}
