//! Epoch keys: the layer between the master key and customers' data keys that makes erasure
//! reach copies of the data directory (backups, snapshots) that cannot be overwritten.
//!
//! A customer's data key is wrapped under the current **epoch key** (AES-256-GCM, associated
//! data binding the customer and the epoch's id); each epoch key is wrapped under the master key
//! (associated data binding the epoch's id, its creation time and the master key's id). Epochs
//! rotate: live data keys are re-wrapped to the new epoch and the old epoch key is destroyed. A
//! copy of the data directory taken before an erasure holds the erased customer's data key only
//! wrapped under epochs that are destroyed later, so it stops opening.
//!
//! Epoch keys live only in the **epoch-key file** ([`EpochFile`]), outside the data directory,
//! never in the store, a backup or the audit log. The file is a header and fixed-size slots:
//!
//! ```text
//! header (128 bytes): "custodia-epochs\0" ‖ format u32 ‖ slot length u32 ‖ zeros ‖ crc32
//! slot (128 bytes):   state (1 = used) ‖ epoch id (8) ‖ created, ms since 1970 (i64) ‖
//!                     generation (u64) ‖ master key id (8) ‖ sealed epoch key (61) ‖ zeros ‖ crc32
//! ```
//!
//! Invariants, so that no crash loses the only copy of a key and no destroyed key survives:
//! - a slot is written once, when free, then synced; it is never changed in place except to be
//!   zeroed. Re-wrapping an epoch key under a new master key writes a new slot (higher
//!   generation), syncs, then zeroes the old one; a crash in between leaves two valid copies;
//! - destroying an epoch zeroes every slot holding it and syncs (`fdatasync`) before it returns;
//! - a slot whose checksum does not match (a write or a zeroing cut by a crash, or damage) is
//!   reported and zeroed on open; by the first two rules it holds no key that is needed, and a
//!   half-zeroed slot must not keep part of a destroyed key. A free slot with bytes left is
//!   zeroed too;
//! - one process at a time: the file is locked (advisory, exclusive) while open.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use aes_gcm::{Aes256Gcm, KeyInit};
use zeroize::Zeroizing;

use super::BlindIndexKey;
use super::envelope::{self, Sealed, WrappedKey};
use super::keys::{DataKey, EPOCH_PREFIX, KeyId, MASTER_PREFIX, MasterKeyring};
use super::{CryptoError, fill_random};
use crate::domain::CustomerId;

mod keydb;

const MAGIC: &[u8; 16] = b"custodia-epochs\0";
const FORMAT: u32 = 1;
/// Length of the header and of every slot, in bytes. Slots are aligned to it, so a slot never
/// straddles a 512-byte sector or a page.
pub const SLOT_LEN: usize = 128;
const HEADER_LEN: usize = SLOT_LEN;
/// `version (1) ‖ nonce (12) ‖ 32 key bytes ‖ tag (16)`.
pub(crate) const SEALED_LEN: usize = 61;
const CRC_AT: usize = SLOT_LEN - 4;
const USED: u8 = 1;
/// How long `open` waits for a lock that a handle dropped a moment ago may still hold.
const LOCK_WAIT: Duration = Duration::from_secs(5);

/// What the epoch-key file or the epoch keyring could not do. Messages name the file and ids,
/// never key material.
#[derive(Debug, thiserror::Error)]
pub enum EpochError {
    /// The file does not exist, but the store says data keys are wrapped under epoch keys.
    #[error(
        "the epoch-key file {} is missing, but this store has data keys wrapped under epoch keys: restore the file (it is kept like the master key) or set CUSTODIA_KEY_EPOCH_FILE to where it is; starting with a new file would make every customer unreadable",
        path.display()
    )]
    Missing {
        /// The configured path.
        path: PathBuf,
    },
    /// The key database holds no epoch key, but the store says data keys are wrapped under
    /// epoch keys.
    #[error(
        "the key database (CUSTODIA_KEY_DATABASE_URL) holds no epoch key, but this store has data keys wrapped under epoch keys: point the setting at the key database these nodes used; starting with new keys would make every customer unreadable"
    )]
    KeyDatabaseEmpty,
    /// Another process holds the file's lock.
    #[error("the epoch-key file {} is in use by another process", path.display())]
    Locked {
        /// The file.
        path: PathBuf,
    },
    /// A filesystem operation failed.
    #[error("{op} the epoch-key file {}: {source}", path.display())]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// The file is not an epoch-key file, or a slot is inconsistent.
    #[error("the epoch-key file {} is not valid: {detail}", path.display())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong (ids and slot numbers only).
        detail: String,
    },
    /// An epoch key is wrapped under a master key that is not configured.
    #[error(
        "epoch key {epoch} in {} is wrapped under master key {master}, which is not configured (configure it as current or in CUSTODIA_PREVIOUS_MASTER_KEYS)",
        path.display()
    )]
    UnknownMaster {
        /// The epoch.
        epoch: KeyId,
        /// The master key version it needs.
        master: KeyId,
        /// The file.
        path: PathBuf,
    },
    /// The master key could not be used at all (an HSM outage, a refused login): nothing is
    /// known about the file, which is not reported as altered.
    #[error(
        "epoch key {epoch} in {} could not be opened: the master key {master} could not be used (token error: {reason})",
        path.display()
    )]
    MasterUnusable {
        /// The epoch.
        epoch: KeyId,
        /// The master key version it is wrapped under.
        master: KeyId,
        /// The file.
        path: PathBuf,
        /// What the token or module answered (setting names and return values, never a PIN).
        reason: String,
    },
    /// The current epoch cannot be destroyed.
    #[error("epoch {0} is the current epoch and cannot be destroyed")]
    Current(KeyId),
    /// A cryptographic operation failed.
    #[error(transparent)]
    Crypto(#[from] CryptoError),
}

/// Whether [`DataKeyring::open`] may create a missing file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MissingFile {
    /// Create it (a fresh store, or one whose data keys are all under master keys).
    Create,
    /// Refuse with [`EpochError::Missing`] (the store has data keys under epoch keys).
    Refuse,
}

/// What opening the file found and repaired (slot numbers count from 0 after the header).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OpenReport {
    /// The file did not exist and was created.
    pub created: bool,
    /// A slot cut short at the end of the file (an interrupted append), now zeroed. A whole slot
    /// that fails its checksum is damage and refuses the open instead.
    pub torn: Vec<usize>,
    /// Free slots that still had bytes (a zeroing cut short), now zeroed.
    pub scrubbed: Vec<usize>,
    /// Older copies of an epoch key that a newer copy replaced (a master-key re-wrap cut
    /// between writing the new slot and zeroing the old), now zeroed.
    pub superseded: Vec<usize>,
}

/// An epoch as anyone may see it: id and times, no key material.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EpochInfo {
    /// `ek-` and 16 hex digits, derived from the key by HMAC (reveals nothing of it).
    pub id: KeyId,
    /// When the epoch began, milliseconds since 1970 (UTC).
    pub created_ms: i64,
    /// The master key version the epoch key is wrapped under in the file.
    pub master: KeyId,
}

/// One epoch key in memory. Zeroized on drop; prints `[redacted]`.
pub struct EpochKey {
    info: EpochInfo,
    bytes: Zeroizing<[u8; 32]>,
    cipher: Aes256Gcm,
    /// The epoch's blind-index key, HMAC-SHA-256(epoch key, [`BLIND_INDEX_LABEL`]): derived, never
    /// stored, so destroying the epoch key destroys it (ring keeps its HMAC pads in memory
    /// unwiped until the process drops the key; the guarantee is about stored copies).
    index: BlindIndexKey,
}

/// Domain separation of the blind-index key derived from an epoch key.
const BLIND_INDEX_LABEL: &[u8] = b"custodia/blind-index/v1";

impl EpochKey {
    fn from_bytes(bytes: Zeroizing<[u8; 32]>, created_ms: i64, master: KeyId) -> Result<Self, CryptoError> {
        let id = KeyId::derive(EPOCH_PREFIX, b"custodia epoch key id", bytes.as_ref());
        let cipher = Aes256Gcm::new_from_slice(bytes.as_ref())
            .map_err(|_| CryptoError::InvalidKey("an epoch key must be 32 bytes"))?;
        let derived = ring::hmac::sign(
            &ring::hmac::Key::new(ring::hmac::HMAC_SHA256, bytes.as_ref()),
            BLIND_INDEX_LABEL,
        );
        let derived = Zeroizing::new(derived.as_ref().to_vec());
        let index = BlindIndexKey::from_bytes(&derived);
        Ok(EpochKey { info: EpochInfo { id, created_ms, master }, bytes, cipher, index })
    }

    /// This epoch's id and times.
    pub fn info(&self) -> &EpochInfo {
        &self.info
    }

    /// The blind-index key of this epoch (see the README, "Erasure"): index entries computed
    /// under it are shredded when the epoch is destroyed.
    pub fn blind_index(&self) -> &BlindIndexKey {
        &self.index
    }
}

impl std::fmt::Debug for EpochKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "EpochKey({}, [redacted])", self.info.id)
    }
}

/// One stored copy of an epoch key: the key wrapped under a master key (a file slot, or a row
/// of the key database). Never plain key bytes.
#[derive(Clone)]
pub(crate) struct StoredEpoch {
    pub(crate) id: [u8; 8],
    pub(crate) created_ms: i64,
    /// Orders copies of one epoch in the file (a master re-wrap writes a newer one); 0 in the
    /// key database, which holds one copy per epoch.
    pub(crate) generation: u64,
    pub(crate) master: [u8; 8],
    pub(crate) sealed: [u8; SEALED_LEN],
}

impl StoredEpoch {
    fn encode(&self) -> [u8; SLOT_LEN] {
        let mut out = [0u8; SLOT_LEN];
        out[0] = USED;
        out[1..9].copy_from_slice(&self.id);
        out[9..17].copy_from_slice(&self.created_ms.to_be_bytes());
        out[17..25].copy_from_slice(&self.generation.to_be_bytes());
        out[25..33].copy_from_slice(&self.master);
        out[33..33 + SEALED_LEN].copy_from_slice(&self.sealed);
        let crc = crc32fast::hash(&out[..CRC_AT]);
        out[CRC_AT..].copy_from_slice(&crc.to_be_bytes());
        out
    }

    fn decode(bytes: &[u8]) -> SlotRead {
        if bytes.iter().all(|b| *b == 0) {
            return SlotRead::Free;
        }
        let crc = u32::from_be_bytes(bytes[CRC_AT..SLOT_LEN].try_into().unwrap_or_default());
        if bytes[0] != USED || crc != crc32fast::hash(&bytes[..CRC_AT]) {
            return if bytes[0] == 0 { SlotRead::Leftover } else { SlotRead::Torn };
        }
        let mut s = StoredEpoch {
            id: [0; 8],
            created_ms: i64::from_be_bytes(bytes[9..17].try_into().unwrap_or_default()),
            generation: u64::from_be_bytes(bytes[17..25].try_into().unwrap_or_default()),
            master: [0; 8],
            sealed: [0; SEALED_LEN],
        };
        s.id.copy_from_slice(&bytes[1..9]);
        s.master.copy_from_slice(&bytes[25..33]);
        s.sealed.copy_from_slice(&bytes[33..33 + SEALED_LEN]);
        SlotRead::Used(s)
    }

    fn epoch_id(&self) -> KeyId {
        KeyId::from_raw(EPOCH_PREFIX, &self.id)
    }

    fn master_id(&self) -> KeyId {
        KeyId::from_raw(MASTER_PREFIX, &self.master)
    }
}

enum SlotRead {
    Free,
    Used(StoredEpoch),
    /// State byte says free but bytes remain.
    Leftover,
    /// Checksum mismatch.
    Torn,
}

/// The epoch-key file: a header and fixed-size slots, locked while open. It stores only
/// wrapped epoch keys; [`DataKeyring`] unwraps them.
pub struct EpochFile {
    file: File,
    path: PathBuf,
    /// `None` for a free slot.
    slots: Vec<Option<StoredEpoch>>,
    next_generation: u64,
}

impl EpochFile {
    /// Opens (or with [`MissingFile::Create`] creates, mode 0600) and locks the file, zeroing
    /// torn and leftover slots (listed in the report).
    pub fn open(path: &Path, missing: MissingFile) -> Result<(EpochFile, OpenReport), EpochError> {
        let io = |op: &'static str| move |source| EpochError::Io { op, path: path.to_owned(), source };
        let mut report = OpenReport::default();
        let file = match OpenOptions::new().read(true).write(true).open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => match missing {
                MissingFile::Refuse => return Err(EpochError::Missing { path: path.to_owned() }),
                MissingFile::Create => {
                    report.created = true;
                    create_private(path).map_err(io("creating"))?
                }
            },
            Err(e) => return Err(io("opening")(e)),
        };
        lock(&file, path)?;
        let mut bytes = Vec::new();
        (&file).read_to_end(&mut bytes).map_err(io("reading"))?;
        if bytes.len() < HEADER_LEN {
            // Nothing is ever stored before the header is synced: a short file is a creation
            // cut by a crash.
            write_at(&file, 0, &header()).map_err(io("writing"))?;
            file.set_len(HEADER_LEN as u64).map_err(io("writing"))?;
            file.sync_all().map_err(io("syncing"))?;
            sync_parent(path).map_err(io("syncing the directory of"))?;
            bytes = header().to_vec();
        } else if bytes[..HEADER_LEN] != header() {
            return Err(EpochError::Invalid {
                path: path.to_owned(),
                detail: "the header is not that of a custodia epoch-key file (format 1)".into(),
            });
        }
        let mut this = EpochFile { file, path: path.to_owned(), slots: Vec::new(), next_generation: 1 };
        let body = &bytes[HEADER_LEN..];
        let count = body.len().div_ceil(SLOT_LEN);
        let mut repair = Vec::new();
        for i in 0..count {
            let mut slot = [0u8; SLOT_LEN];
            let chunk = &body[i * SLOT_LEN..body.len().min((i + 1) * SLOT_LEN)];
            slot[..chunk.len()].copy_from_slice(chunk);
            let torn_tail = chunk.len() < SLOT_LEN;
            match StoredEpoch::decode(&slot) {
                SlotRead::Used(s) if !torn_tail => {
                    this.next_generation = this.next_generation.max(s.generation + 1);
                    this.slots.push(Some(s));
                }
                SlotRead::Free if !torn_tail => this.slots.push(None),
                SlotRead::Leftover => {
                    report.scrubbed.push(i);
                    repair.push(i);
                    this.slots.push(None);
                }
                // A slot cut short at the end of the file: an append the crash interrupted,
                // before the epoch was listed anywhere.
                _ if torn_tail => {
                    report.torn.push(i);
                    repair.push(i);
                    this.slots.push(None);
                }
                // A whole slot that fails its checksum is damage, not a crash (slots are
                // sector-aligned and written whole): it may be the only copy of an epoch key,
                // so stop rather than zero it.
                _ => {
                    return Err(EpochError::Invalid {
                        path: path.to_owned(),
                        detail: format!(
                            "slot {i} fails its checksum: the file is damaged and that slot may hold the \
                             only copy of an epoch key; restore the file from your copy"
                        ),
                    });
                }
            }
        }
        for i in repair {
            this.zero_slot(i)?;
        }
        Ok((this, report))
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn used(&self) -> impl Iterator<Item = (usize, &StoredEpoch)> {
        self.slots.iter().enumerate().filter_map(|(i, s)| s.as_ref().map(|s| (i, s)))
    }

    /// Writes `entry` (given the next generation) into a free slot, or appends one, and syncs
    /// before returning the slot number.
    fn write_new(&mut self, mut entry: StoredEpoch) -> Result<usize, EpochError> {
        entry.generation = self.next_generation;
        let index = self.slots.iter().position(Option::is_none).unwrap_or(self.slots.len());
        let path = &self.path;
        let io = |op: &'static str| move |source| EpochError::Io { op, path: path.clone(), source };
        write_at(&self.file, slot_offset(index), &entry.encode()).map_err(io("writing"))?;
        // sync_all, not sync_data: an append changes the file's length.
        self.file.sync_all().map_err(io("syncing"))?;
        self.next_generation += 1;
        if index == self.slots.len() {
            self.slots.push(Some(entry));
        } else {
            self.slots[index] = Some(entry);
        }
        Ok(index)
    }

    /// Overwrites slot `index` with zeros and syncs (`fdatasync`) before returning.
    fn zero_slot(&mut self, index: usize) -> Result<(), EpochError> {
        let path = &self.path;
        let io = |op: &'static str| move |source| EpochError::Io { op, path: path.clone(), source };
        write_at(&self.file, slot_offset(index), &[0u8; SLOT_LEN]).map_err(io("zeroing a slot of"))?;
        self.file.sync_data().map_err(io("syncing"))?;
        if let Some(slot) = self.slots.get_mut(index) {
            *slot = None;
        }
        Ok(())
    }
}

impl std::fmt::Debug for EpochFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "EpochFile({}, {} slots)", self.path.display(), self.slots.len())
    }
}

/// Where the wrapped epoch keys are kept: the epoch-key file ([`EpochFile`], the default) or
/// the key database (`keydb`, shared by every node of a PostgreSQL deployment). Each operation
/// is durable when it returns. Implementations may block (file syncs, database round trips):
/// callers run them off the async workers (`crypto::off_async_workers`).
pub(crate) trait EpochStore: Send {
    /// Where the keys are, for messages (a path, or the key database's setting name).
    fn place(&self) -> PathBuf;
    /// Every stored copy, with a handle to [`EpochStore::supersede`] older copies by.
    fn load(&mut self) -> Result<Vec<(usize, StoredEpoch)>, EpochError>;
    /// Stores a new epoch durably before returning. With `only_if_empty`, stores nothing and
    /// returns `false` when any epoch is stored already (two nodes opening a new key database
    /// at once agree on one first epoch).
    fn add(&mut self, entry: StoredEpoch, only_if_empty: bool) -> Result<bool, EpochError>;
    /// Removes older copies (handles from `load`), durably; returns what it removed.
    fn supersede(&mut self, handles: &[usize]) -> Result<Vec<usize>, EpochError>;
    /// Destroys every copy of the epoch durably before returning; `false` if none was stored.
    fn destroy(&mut self, id: &KeyId) -> Result<bool, EpochError>;
    /// Stores `entry` (an epoch already stored, re-wrapped under another master key) in place of
    /// its copies under other master keys, never leaving a moment without a valid copy.
    fn replace(&mut self, entry: StoredEpoch) -> Result<(), EpochError>;
}

impl EpochStore for EpochFile {
    fn place(&self) -> PathBuf {
        self.path.clone()
    }

    fn load(&mut self) -> Result<Vec<(usize, StoredEpoch)>, EpochError> {
        // One process holds the file (locked): what is in memory is what is on disk.
        Ok(self.used().map(|(i, s)| (i, s.clone())).collect())
    }

    fn add(&mut self, entry: StoredEpoch, only_if_empty: bool) -> Result<bool, EpochError> {
        if only_if_empty && self.used().next().is_some() {
            return Ok(false);
        }
        self.write_new(entry)?;
        Ok(true)
    }

    fn supersede(&mut self, handles: &[usize]) -> Result<Vec<usize>, EpochError> {
        for i in handles {
            self.zero_slot(*i)?;
        }
        Ok(handles.to_vec())
    }

    fn destroy(&mut self, id: &KeyId) -> Result<bool, EpochError> {
        let slots: Vec<usize> = self.used().filter(|(_, s)| &s.epoch_id() == id).map(|(i, _)| i).collect();
        for i in &slots {
            self.zero_slot(*i)?;
        }
        Ok(!slots.is_empty())
    }

    fn replace(&mut self, entry: StoredEpoch) -> Result<(), EpochError> {
        let old: Vec<usize> = self
            .used()
            .filter(|(_, s)| s.id == entry.id && s.master != entry.master)
            .map(|(i, _)| i)
            .collect();
        // The new slot is synced before an old one is zeroed: a crash between leaves two
        // valid copies, and `open` keeps the newer.
        self.write_new(entry)?;
        for i in old {
            self.zero_slot(i)?;
        }
        Ok(())
    }
}

/// Wraps and unwraps customers' data keys: new wraps under the current epoch key; data keys
/// wrapped directly under a master key (stored before epochs existed) still unwrap. Owns the
/// master keyring (epoch keys and vault-wide keys are wrapped under it) and the epoch-key file.
pub struct DataKeyring {
    master: MasterKeyring,
    store: Mutex<Box<dyn EpochStore>>,
    /// Where the keys are kept, for messages.
    place: PathBuf,
    /// The keys are in the key database, which other nodes change too.
    shared: bool,
    /// Epoch keys, newest first; never empty after `open`.
    epochs: RwLock<Vec<Arc<EpochKey>>>,
    /// The store's `key_epochs` metadata value this view was last brought up to (see
    /// [`DataKeyring::listed`]); `None` before the first.
    listed: RwLock<Option<Vec<u8>>>,
}

impl std::fmt::Debug for DataKeyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DataKeyring({} epochs, [redacted])", self.epochs().len())
    }
}

/// What [`DataKeyring::refresh`] changed in this process's view.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Refreshed {
    /// Epochs another node created, now known here.
    pub learned: Vec<KeyId>,
    /// Epochs another node destroyed, now dropped (and zeroized) here.
    pub forgotten: Vec<KeyId>,
}

impl DataKeyring {
    /// Opens the epoch-key file at `path` (creating it only with [`MissingFile::Create`]),
    /// unwraps every epoch key under `master`, and creates a first epoch (at `now_ms`) when the
    /// file holds none. Fails if another process holds the file, if an epoch key needs a master
    /// key that is not configured, or if the file is not an epoch-key file.
    pub fn open(
        master: MasterKeyring,
        path: &Path,
        missing: MissingFile,
        now_ms: i64,
    ) -> Result<(DataKeyring, OpenReport), EpochError> {
        let (file, report) = EpochFile::open(path, missing)?;
        Self::open_store(master, Box::new(file), false, report, now_ms)
    }

    /// Opens the key database (`CUSTODIA_KEY_DATABASE_URL`) as the epoch-key store, shared by
    /// every node: creates its table; when it is empty and an epoch-key file exists at
    /// `import_from`, moves that file's epochs into it (returned: how many); refuses a table
    /// still empty with [`MissingFile::Refuse`] (the data lists epochs); unwraps every epoch key
    /// and creates a first epoch when there is none. Runs database round trips on `runtime`:
    /// call it off the async workers.
    pub fn open_key_database(
        master: MasterKeyring,
        settings: &crate::store::PostgresSettings,
        runtime: tokio::runtime::Handle,
        missing: MissingFile,
        import_from: Option<&Path>,
        now_ms: i64,
    ) -> Result<(DataKeyring, usize), EpochError> {
        let (db, imported) = keydb::KeyDatabase::open(settings.clone(), runtime, missing, import_from)?;
        let (ring, _) = Self::open_store(master, Box::new(db), true, OpenReport::default(), now_ms)?;
        Ok((ring, imported))
    }

    fn open_store(
        master: MasterKeyring,
        mut store: Box<dyn EpochStore>,
        shared: bool,
        mut report: OpenReport,
        now_ms: i64,
    ) -> Result<(DataKeyring, OpenReport), EpochError> {
        let place = store.place();
        let (epochs, superseded) = unwrap_all(&master, store.load()?, &place)?;
        report.superseded.extend(store.supersede(&superseded)?);
        let ring = DataKeyring {
            master,
            store: Mutex::new(store),
            place,
            shared,
            epochs: RwLock::new(epochs),
            listed: RwLock::new(None),
        };
        if ring.epochs().is_empty() {
            ring.create_first_epoch(now_ms)?;
        }
        Ok((ring, report))
    }

    /// A first epoch for an empty store; if another node stored one meanwhile, that one.
    fn create_first_epoch(&self, now_ms: i64) -> Result<(), EpochError> {
        let mut store = self.store.lock().unwrap_or_else(|e| e.into_inner());
        let key = self.new_key(now_ms)?;
        if store.add(self.stored(&key)?, true)? {
            self.epochs.write().unwrap_or_else(|e| e.into_inner()).insert(0, Arc::new(key));
            return Ok(());
        }
        let (epochs, _) = unwrap_all(&self.master, store.load()?, &self.place)?;
        *self.epochs.write().unwrap_or_else(|e| e.into_inner()) = epochs;
        Ok(())
    }

    fn new_key(&self, created_ms: i64) -> Result<EpochKey, EpochError> {
        let mut bytes = Zeroizing::new([0u8; 32]);
        fill_random(bytes.as_mut())?;
        Ok(EpochKey::from_bytes(bytes, created_ms, self.master.current_id().clone())?)
    }

    /// Brings this process's view up to the store's: epochs another node created are unwrapped
    /// and known (the newest becomes current), epochs no longer stored (destroyed by another
    /// node) are dropped, their keys zeroized once no request holds them. Then records `listed`
    /// (the `key_epochs` value read *before* this call) as the value this view answers to; a
    /// `None` keeps the recorded one. Blocks (store round trip): call it off the async workers.
    pub fn refresh(&self, listed: Option<Vec<u8>>) -> Result<Refreshed, EpochError> {
        // Held to the end: an epoch this process creates meanwhile is not forgotten as "no
        // longer stored" by a load from before it.
        let mut store = self.store.lock().unwrap_or_else(|e| e.into_inner());
        let stored = store.load()?;
        let mut out = Refreshed::default();
        let known: Vec<KeyId> = self.epochs().into_iter().map(|e| e.id).collect();
        let in_store: std::collections::HashSet<KeyId> = stored.iter().map(|(_, s)| s.epoch_id()).collect();
        let fresh: Vec<(usize, StoredEpoch)> =
            stored.into_iter().filter(|(_, s)| !known.contains(&s.epoch_id())).collect();
        let (learned, _) = unwrap_all(&self.master, fresh, &self.place)?;
        {
            let mut epochs = self.epochs.write().unwrap_or_else(|e| e.into_inner());
            if !in_store.is_empty() {
                // An empty store is an outage or an operator's mistake, not a destruction of
                // every epoch: keep the view rather than lose the current key.
                epochs.retain(|k| {
                    let keep = in_store.contains(&k.info.id);
                    if !keep {
                        out.forgotten.push(k.info.id.clone());
                    }
                    keep
                });
            }
            for key in learned {
                out.learned.push(key.info.id.clone());
                epochs.push(key);
            }
            sort_newest_first(&mut epochs);
        }
        if let Some(listed) = listed {
            *self.listed.write().unwrap_or_else(|e| e.into_inner()) = Some(listed);
        }
        Ok(out)
    }

    /// The store's `key_epochs` metadata value this view was brought up to: every epoch it
    /// lists is known here, and the current epoch here is at least as new as its newest. A
    /// write that wraps or indexes under epochs reads this *before* it reads the current epoch
    /// and commits only if `key_epochs` still equals it (the fence of `vault::epochs`).
    pub fn listed(&self) -> Option<Vec<u8>> {
        self.listed.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// True when the epoch keys are in the key database, which other nodes change: this
    /// process then refreshes its view (see [`DataKeyring::refresh`]).
    pub fn shared(&self) -> bool {
        self.shared
    }

    /// Records that `key_epochs` now holds `value`, written by this process from its own view.
    pub fn set_listed(&self, value: Vec<u8>) {
        *self.listed.write().unwrap_or_else(|e| e.into_inner()) = Some(value);
    }

    /// The master keyring (for vault-wide keys and master rotation).
    pub fn master(&self) -> &MasterKeyring {
        &self.master
    }

    /// Where the epoch keys are kept: the epoch-key file's path, or the key database's setting
    /// name (never its URL).
    pub fn path(&self) -> PathBuf {
        self.place.clone()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Vec<Arc<EpochKey>>> {
        self.epochs.read().unwrap_or_else(|e| e.into_inner())
    }

    fn current_key(&self) -> Arc<EpochKey> {
        // invariant: `open` leaves at least one epoch and the current one is never destroyed.
        Arc::clone(self.read().first().expect("a current epoch"))
    }

    /// The current epoch (new wraps are made under it).
    pub fn current(&self) -> EpochInfo {
        self.current_key().info.clone()
    }

    /// Every live (not destroyed) epoch key, newest (the current one) first: for blind indexes.
    pub fn epoch_keys(&self) -> Vec<Arc<EpochKey>> {
        self.read().clone()
    }

    /// Every epoch, newest first.
    pub fn epochs(&self) -> Vec<EpochInfo> {
        self.read().iter().map(|k| k.info.clone()).collect()
    }

    /// The epoch with `id`, if it exists (is not destroyed).
    pub fn epoch(&self, id: &KeyId) -> Option<EpochInfo> {
        self.read().iter().find(|k| &k.info.id == id).map(|k| k.info.clone())
    }

    fn find(&self, id: &KeyId) -> Result<Arc<EpochKey>, CryptoError> {
        self.read()
            .iter()
            .find(|k| &k.info.id == id)
            .cloned()
            .ok_or_else(|| CryptoError::UnknownEpochKey(id.clone()))
    }

    /// Wraps a customer's data key under the current epoch key.
    pub fn wrap_data_key(&self, customer: &CustomerId, key: &DataKey) -> Result<WrappedKey, CryptoError> {
        wrap_under(&self.current_key(), customer, key)
    }

    /// Unwraps a customer's data key, under its epoch key or (stored before epochs) directly
    /// under a master key. [`CryptoError::UnknownEpochKey`] when its epoch was destroyed.
    pub fn unwrap_data_key(
        &self,
        customer: &CustomerId,
        wrapped: &WrappedKey,
    ) -> Result<DataKey, CryptoError> {
        if !wrapped.master_key.is_epoch() {
            // From before epochs, hence under a file key: nothing wraps a data key under a token
            // key, and this path runs on requests, where no token call may block a worker.
            if self.master.find(&wrapped.master_key)?.is_token() {
                return Err(CryptoError::Pkcs11(format!(
                    "a data key wrapped directly under token key {} (never written by this vault) is refused",
                    wrapped.master_key
                )));
            }
            return self.master.unwrap_data_key(customer, wrapped);
        }
        let epoch = self.find(&wrapped.master_key)?;
        let aad = envelope::epoch_data_key_aad(customer, &epoch.info.id);
        let bytes = envelope::open_with(&epoch.cipher, &wrapped.sealed, &aad)?;
        DataKey::from_raw(bytes)
    }

    /// Re-wraps a data key under the current epoch; `None` if it already is.
    pub fn rewrap_data_key(
        &self,
        customer: &CustomerId,
        wrapped: &WrappedKey,
    ) -> Result<Option<WrappedKey>, CryptoError> {
        let current = self.current_key();
        if wrapped.master_key == current.info.id {
            return Ok(None);
        }
        let key = self.unwrap_data_key(customer, wrapped)?;
        wrap_under(&current, customer, &key).map(Some)
    }

    /// Starts a new epoch at `now_ms` (or just after the newest one, if the clock went back):
    /// a fresh key, wrapped under the current master key, written to a free slot and synced
    /// before it becomes current.
    pub fn create_epoch(&self, now_ms: i64) -> Result<EpochInfo, EpochError> {
        let mut store = self.store.lock().unwrap_or_else(|e| e.into_inner());
        let created_ms = self.read().first().map_or(now_ms, |k| now_ms.max(k.info.created_ms + 1));
        let key = self.new_key(created_ms)?;
        store.add(self.stored(&key)?, false)?;
        let info = key.info.clone();
        let mut epochs = self.epochs.write().unwrap_or_else(|e| e.into_inner());
        epochs.push(Arc::new(key));
        sort_newest_first(&mut epochs);
        Ok(info)
    }

    /// Destroys an epoch key: every slot holding it is overwritten with zeros and synced before
    /// this returns; data keys wrapped under it no longer open anywhere. The current epoch is
    /// refused. `Ok(false)` if there was no such epoch.
    pub fn destroy_epoch(&self, id: &KeyId) -> Result<bool, EpochError> {
        let mut store = self.store.lock().unwrap_or_else(|e| e.into_inner());
        if &self.current_key().info.id == id {
            return Err(EpochError::Current(id.clone()));
        }
        let stored = store.destroy(id)?;
        let mut epochs = self.epochs.write().unwrap_or_else(|e| e.into_inner());
        let before = epochs.len();
        epochs.retain(|k| &k.info.id != id);
        Ok(before != epochs.len() || stored)
    }

    /// Re-wraps, in the store, every epoch key not yet under the current master key (in the
    /// file: a new slot written and synced, then the old one zeroed; in the key database: the
    /// row updated in one transaction). Returns how many were re-wrapped.
    pub fn rewrap_epochs_under_master(&self) -> Result<usize, EpochError> {
        let mut store = self.store.lock().unwrap_or_else(|e| e.into_inner());
        let current_master = self.master.current_id().clone();
        let mut done = 0;
        let keys: Vec<Arc<EpochKey>> = self.read().clone();
        let stored = store.load()?;
        for key in keys {
            let old =
                stored.iter().any(|(_, s)| s.epoch_id() == key.info.id && s.master_id() != current_master);
            if !old {
                continue;
            }
            let rewrapped =
                EpochKey::from_bytes(key.bytes.clone(), key.info.created_ms, current_master.clone())?;
            store.replace(self.stored(&rewrapped)?)?;
            let mut epochs = self.epochs.write().unwrap_or_else(|e| e.into_inner());
            if let Some(slot) = epochs.iter_mut().find(|k| k.info.id == key.info.id) {
                *slot = Arc::new(rewrapped);
            }
            done += 1;
        }
        Ok(done)
    }

    /// The slot form of `key`: wrapped under the current master key.
    fn stored(&self, key: &EpochKey) -> Result<StoredEpoch, EpochError> {
        let master = self.master.current();
        let aad = envelope::epoch_key_aad(&key.info.id, key.info.created_ms, master.id());
        let sealed = envelope::seal_with(master.cipher(), key.bytes.as_ref(), &aad)?;
        let mut out = StoredEpoch {
            id: key.info.id.raw(EPOCH_PREFIX).ok_or(CryptoError::InvalidKey("malformed epoch id"))?,
            created_ms: key.info.created_ms,
            generation: 0,
            master: master.id().raw(MASTER_PREFIX).ok_or(CryptoError::InvalidKey("malformed master id"))?,
            sealed: [0; SEALED_LEN],
        };
        if sealed.as_bytes().len() != SEALED_LEN {
            return Err(CryptoError::InvalidKey("an epoch key must be 32 bytes").into());
        }
        out.sealed.copy_from_slice(sealed.as_bytes());
        Ok(out)
    }
}

fn wrap_under(epoch: &EpochKey, customer: &CustomerId, key: &DataKey) -> Result<WrappedKey, CryptoError> {
    let aad = envelope::epoch_data_key_aad(customer, &epoch.info.id);
    let sealed = envelope::seal_with(&epoch.cipher, key.bytes(), &aad)?;
    Ok(WrappedKey { master_key: epoch.info.id.clone(), sealed })
}

fn sort_newest_first(epochs: &mut [Arc<EpochKey>]) {
    epochs.sort_by(|a, b| {
        (b.info.created_ms, b.info.id.as_str()).cmp(&(a.info.created_ms, a.info.id.as_str()))
    });
}

/// Unwraps stored copies, one key per epoch (the newest copy that opens), newest epoch first;
/// also returns the handles of older copies a newer one replaces.
#[allow(clippy::type_complexity)]
fn unwrap_all(
    master: &MasterKeyring,
    stored: Vec<(usize, StoredEpoch)>,
    place: &Path,
) -> Result<(Vec<Arc<EpochKey>>, Vec<usize>), EpochError> {
    let mut by_id: std::collections::BTreeMap<[u8; 8], Vec<(usize, StoredEpoch)>> = Default::default();
    for (i, s) in stored {
        by_id.entry(s.id).or_default().push((i, s));
    }
    let mut epochs = Vec::new();
    let mut superseded = Vec::new();
    for (_, mut copies) in by_id {
        copies.sort_by_key(|(_, s)| std::cmp::Reverse(s.generation));
        let mut chosen = None;
        let mut first_error = None;
        for (_, s) in &copies {
            match unwrap_epoch(master, s, place) {
                Ok(key) => {
                    chosen = Some((s.generation, key));
                    break;
                }
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        let Some((generation, key)) = chosen else {
            // invariant: a group has at least one copy, so an error was recorded.
            return Err(first_error.expect("a failed copy recorded its error"));
        };
        superseded.extend(copies.iter().filter(|(_, s)| s.generation < generation).map(|(i, _)| *i));
        epochs.push(Arc::new(key));
    }
    sort_newest_first(&mut epochs);
    Ok((epochs, superseded))
}

/// Opens one slot's epoch key; checks that the key derives the id the slot names.
fn unwrap_epoch(master: &MasterKeyring, s: &StoredEpoch, path: &Path) -> Result<EpochKey, EpochError> {
    let (epoch, master_id) = (s.epoch_id(), s.master_id());
    let mk = master.find(&master_id).map_err(|_| EpochError::UnknownMaster {
        epoch: epoch.clone(),
        master: master_id.clone(),
        path: path.to_owned(),
    })?;
    let aad = envelope::epoch_key_aad(&epoch, s.created_ms, &master_id);
    let invalid = |what: &str| EpochError::Invalid {
        path: path.to_owned(),
        detail: format!("epoch key {epoch} {what} under master key {master_id} (the file was altered)"),
    };
    let bytes = envelope::open_with(mk.cipher(), &Sealed::from_bytes(s.sealed.to_vec()), &aad)
        .map_err(|e| open_error(e, &epoch, &master_id, path))?;
    let mut raw = Zeroizing::new([0u8; 32]);
    if bytes.len() != 32 {
        return Err(invalid("has the wrong length"));
    }
    raw.copy_from_slice(&bytes);
    let key = EpochKey::from_bytes(raw, s.created_ms, master_id.clone())?;
    if key.info.id != epoch {
        return Err(invalid("does not match its id"));
    }
    Ok(key)
}

/// Tells a sealed epoch key that does not authenticate (the file, or the key's slot, was
/// altered: [`CryptoError::Open`]) from a master key that could not be used at all (a token
/// error, [`EpochError::MasterUnusable`]).
fn open_error(e: CryptoError, epoch: &KeyId, master: &KeyId, path: &Path) -> EpochError {
    match e {
        CryptoError::Open => EpochError::Invalid {
            path: path.to_owned(),
            detail: format!(
                "epoch key {epoch} does not open under master key {master} (the file was altered)"
            ),
        },
        CryptoError::Pkcs11(reason) => EpochError::MasterUnusable {
            epoch: epoch.clone(),
            master: master.clone(),
            path: path.to_owned(),
            reason,
        },
        other => EpochError::MasterUnusable {
            epoch: epoch.clone(),
            master: master.clone(),
            path: path.to_owned(),
            reason: other.to_string(),
        },
    }
}

fn header() -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[..16].copy_from_slice(MAGIC);
    h[16..20].copy_from_slice(&FORMAT.to_be_bytes());
    h[20..24].copy_from_slice(&(SLOT_LEN as u32).to_be_bytes());
    let crc = crc32fast::hash(&h[..CRC_AT]);
    h[CRC_AT..].copy_from_slice(&crc.to_be_bytes());
    h
}

fn slot_offset(index: usize) -> u64 {
    (HEADER_LEN + index * SLOT_LEN) as u64
}

fn write_at(file: &File, offset: u64, bytes: &[u8]) -> io::Result<()> {
    let mut f = file;
    f.seek(SeekFrom::Start(offset))?;
    f.write_all(bytes)
}

/// Creates the file with mode 0600 and its header, synced, and syncs its directory so the
/// file's name survives a power loss.
fn create_private(path: &Path) -> io::Result<File> {
    let mut options = OpenOptions::new();
    options.read(true).write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let file = options.open(path)?;
    write_at(&file, 0, &header())?;
    file.sync_all()?;
    sync_parent(path)?;
    (&file).seek(SeekFrom::Start(0))?;
    Ok(file)
}

fn sync_parent(path: &Path) -> io::Result<()> {
    #[cfg(unix)]
    {
        let dir = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        File::open(dir)?.sync_all()?;
    }
    #[cfg(not(unix))]
    let _ = path;
    Ok(())
}

/// Takes the exclusive advisory lock, waiting up to [`LOCK_WAIT`] for a handle this process
/// dropped a moment ago.
fn lock(file: &File, path: &Path) -> Result<(), EpochError> {
    let deadline = Instant::now() + LOCK_WAIT;
    loop {
        match file.try_lock() {
            Ok(()) => return Ok(()),
            Err(std::fs::TryLockError::WouldBlock) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(EpochError::Locked { path: path.to_owned() });
            }
            Err(std::fs::TryLockError::Error(source)) => {
                return Err(EpochError::Io { op: "locking", path: path.to_owned(), source });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::MasterKey;

    #[test]
    fn a_token_failure_is_not_reported_as_an_altered_file() {
        let (epoch, master) =
            (KeyId::from_raw(EPOCH_PREFIX, &[1; 8]), KeyId::from_raw(MASTER_PREFIX, &[2; 8]));
        let path = Path::new("/keys/epochs");
        let token = open_error(
            CryptoError::Pkcs11("token \"hsm\", key \"mk\": DeviceRemoved from Decrypt".into()),
            &epoch,
            &master,
            path,
        )
        .to_string();
        assert!(token.contains("could not be used") && token.contains("DeviceRemoved"), "{token}");
        assert!(!token.contains("altered"), "{token}");
        let altered = open_error(CryptoError::Open, &epoch, &master, path).to_string();
        assert!(altered.contains("altered") && altered.contains("/keys/epochs"), "{altered}");
    }

    fn ring(byte: u8) -> MasterKeyring {
        MasterKeyring::new(MasterKey::from_bytes(&[byte; 32]).unwrap(), vec![])
    }

    fn open(dir: &Path, master: MasterKeyring) -> (DataKeyring, OpenReport) {
        DataKeyring::open(master, &dir.join("epochs"), MissingFile::Create, 1_000).unwrap()
    }

    fn slot_bytes(path: &Path, index: usize) -> Vec<u8> {
        let bytes = std::fs::read(path).unwrap();
        bytes[slot_offset(index) as usize..slot_offset(index) as usize + SLOT_LEN].to_vec()
    }

    #[test]
    fn a_data_key_round_trips_under_the_current_epoch_and_is_bound_to_its_customer() {
        let dir = tempfile::tempdir().unwrap();
        let (keys, report) = open(dir.path(), ring(1));
        assert!(report.created);
        let (alice, bob) = (CustomerId::random(), CustomerId::random());
        let key = DataKey::generate().unwrap();
        let wrapped = keys.wrap_data_key(&alice, &key).unwrap();
        assert_eq!(wrapped.master_key, keys.current().id);
        assert!(wrapped.master_key.as_str().starts_with("ek-") && wrapped.master_key.as_str().len() == 19);
        assert!(postcard::to_stdvec(&wrapped).unwrap().len() <= 96, "the key file's slot bound");
        let opened = keys.unwrap_data_key(&alice, &wrapped).unwrap();
        assert_eq!(opened.bytes(), key.bytes());
        assert!(matches!(keys.unwrap_data_key(&bob, &wrapped), Err(CryptoError::Open)));
        assert!(format!("{keys:?}").contains("[redacted]"));
        assert!(format!("{:?}", keys.current_key()).contains("[redacted]"));
    }

    #[test]
    fn a_legacy_key_under_the_master_still_opens_and_is_rewrapped_to_the_epoch() {
        let dir = tempfile::tempdir().unwrap();
        let (keys, _) = open(dir.path(), ring(2));
        let id = CustomerId::random();
        let key = DataKey::generate().unwrap();
        let legacy = keys.master().wrap_data_key(&id, &key).unwrap();
        assert_eq!(keys.unwrap_data_key(&id, &legacy).unwrap().bytes(), key.bytes());
        let rewrapped = keys.rewrap_data_key(&id, &legacy).unwrap().expect("legacy is not current");
        assert!(rewrapped.master_key.is_epoch());
        assert!(keys.rewrap_data_key(&id, &rewrapped).unwrap().is_none());
        assert_eq!(keys.unwrap_data_key(&id, &rewrapped).unwrap().bytes(), key.bytes());
    }

    #[test]
    fn epochs_survive_a_reopen_and_a_new_epoch_becomes_current() {
        let dir = tempfile::tempdir().unwrap();
        let id = CustomerId::random();
        let key = DataKey::generate().unwrap();
        let (first, wrapped) = {
            let (keys, _) = open(dir.path(), ring(3));
            let wrapped = keys.wrap_data_key(&id, &key).unwrap();
            let first = keys.current();
            let second = keys.create_epoch(500).unwrap();
            assert!(second.created_ms > first.created_ms, "the clock going back never reorders epochs");
            (first, wrapped)
        };
        let (keys, report) = open(dir.path(), ring(3));
        assert_eq!(report, OpenReport::default());
        assert_eq!(keys.epochs().len(), 2);
        assert_ne!(keys.current().id, first.id);
        assert_eq!(keys.unwrap_data_key(&id, &wrapped).unwrap().bytes(), key.bytes());
    }

    #[test]
    fn destroying_an_epoch_zeroes_its_slot_on_disk_and_its_keys_no_longer_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("epochs");
        let (keys, _) = open(dir.path(), ring(4));
        let old = keys.current();
        let id = CustomerId::random();
        let wrapped = keys.wrap_data_key(&id, &DataKey::generate().unwrap()).unwrap();
        let before = slot_bytes(&path, 0);
        assert_eq!(before[0], USED);
        assert!(matches!(keys.destroy_epoch(&old.id), Err(EpochError::Current(_))));
        keys.create_epoch(2_000).unwrap();
        assert!(keys.destroy_epoch(&old.id).unwrap());
        assert!(slot_bytes(&path, 0).iter().all(|b| *b == 0), "the slot is zeroed on disk");
        let file = std::fs::read(&path).unwrap();
        assert!(!file.windows(16).any(|w| w == &before[33..49]), "no sealed byte of the old key remains");
        assert!(matches!(keys.unwrap_data_key(&id, &wrapped), Err(CryptoError::UnknownEpochKey(_))));
        drop(keys);
        let (keys, _) = open(dir.path(), ring(4));
        assert!(keys.epoch(&old.id).is_none());
        assert!(matches!(keys.unwrap_data_key(&id, &wrapped), Err(CryptoError::UnknownEpochKey(_))));
        // The freed slot is reused by the next epoch.
        keys.create_epoch(3_000).unwrap();
        assert_eq!(std::fs::read(&path).unwrap().len(), HEADER_LEN + 2 * SLOT_LEN);
    }

    #[test]
    fn a_damaged_slot_stops_the_open_and_leftovers_and_cut_appends_are_zeroed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("epochs");
        let id = CustomerId::random();
        let wrapped = {
            let (keys, _) = open(dir.path(), ring(5));
            let wrapped = keys.wrap_data_key(&id, &DataKey::generate().unwrap()).unwrap();
            keys.create_epoch(5_000).unwrap();
            wrapped
        };
        // A half-zeroed slot 2 (a zeroing cut short: state byte already 0) and a file cut in
        // the middle of an appended slot 3: crash leftovers, zeroed.
        let mut bytes = std::fs::read(&path).unwrap();
        let mut leftover = [0u8; SLOT_LEN];
        leftover[40..60].fill(7);
        bytes.extend_from_slice(&leftover);
        bytes.extend_from_slice(&[USED, 1, 2, 3]);
        std::fs::write(&path, &bytes).unwrap();
        let (keys, report) = open(dir.path(), ring(5));
        assert_eq!(report.scrubbed, vec![2]);
        assert_eq!(report.torn, vec![3]);
        assert!(slot_bytes(&path, 2).iter().all(|b| *b == 0));
        assert_eq!(keys.epochs().len(), 2);
        assert!(keys.unwrap_data_key(&id, &wrapped).is_ok());
        drop(keys);

        // One flipped bit inside the first epoch's sealed key: damage. It may be the only copy
        // of that key, so the open stops and the bytes stay as they are.
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[slot_offset(0) as usize + 40] ^= 1;
        std::fs::write(&path, &bytes).unwrap();
        let err = DataKeyring::open(ring(5), &path, MissingFile::Refuse, 9_000).unwrap_err();
        assert!(matches!(&err, EpochError::Invalid { detail, .. } if detail.contains("slot 0")), "{err}");
        assert_eq!(std::fs::read(&path).unwrap(), bytes, "nothing was zeroed");
    }

    #[test]
    fn each_epoch_has_its_own_blind_index_key_that_survives_a_reopen_and_a_master_rewrap() {
        let dir = tempfile::tempdir().unwrap();
        let (first, second) = {
            let (keys, _) = open(dir.path(), ring(13));
            keys.create_epoch(2_000).unwrap();
            let all = keys.epoch_keys();
            assert_eq!(all[0].info().id, keys.current().id, "newest first");
            let first = all[1].blind_index().compute("email", "a@example.com");
            let second = all[0].blind_index().compute("email", "a@example.com");
            assert_ne!(first, second);
            (first, second)
        };
        let both = MasterKeyring::new(
            MasterKey::from_bytes(&[14; 32]).unwrap(),
            vec![MasterKey::from_bytes(&[13; 32]).unwrap()],
        );
        let (keys, _) = open(dir.path(), both);
        keys.rewrap_epochs_under_master().unwrap();
        let all = keys.epoch_keys();
        assert_eq!(all[1].blind_index().compute("email", "a@example.com"), first);
        assert_eq!(all[0].blind_index().compute("email", "a@example.com"), second);
        assert!(format!("{:?}", all[0].blind_index()).contains("[redacted]"));
    }

    #[test]
    fn a_file_that_is_not_an_epoch_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("epochs"), vec![1u8; 300]).unwrap();
        let err = DataKeyring::open(ring(6), &dir.path().join("epochs"), MissingFile::Create, 0).unwrap_err();
        assert!(matches!(err, EpochError::Invalid { .. }), "{err}");
    }

    #[test]
    fn a_missing_file_is_refused_when_asked_and_created_0600_otherwise() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("epochs");
        let err = DataKeyring::open(ring(7), &path, MissingFile::Refuse, 0).unwrap_err();
        assert!(matches!(err, EpochError::Missing { .. }));
        assert!(err.to_string().contains("CUSTODIA_KEY_EPOCH_FILE"), "{err}");
        assert!(!path.exists(), "refusing creates nothing");
        let (_keys, report) = DataKeyring::open(ring(7), &path, MissingFile::Create, 0).unwrap();
        assert!(report.created);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        }
    }

    #[test]
    fn the_file_is_locked_while_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("epochs");
        let (keys, _) = DataKeyring::open(ring(8), &path, MissingFile::Create, 0).unwrap();
        let started = Instant::now();
        let err = DataKeyring::open(ring(8), &path, MissingFile::Create, 0).unwrap_err();
        assert!(matches!(err, EpochError::Locked { .. }), "{err}");
        assert!(started.elapsed() >= LOCK_WAIT, "waited for a just-dropped handle first");
        drop(keys);
        assert!(DataKeyring::open(ring(8), &path, MissingFile::Create, 0).is_ok());
    }

    #[test]
    fn a_master_rewrap_moves_epochs_to_the_new_master_and_a_cut_rewrap_keeps_both_copies() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("epochs");
        let id = CustomerId::random();
        let key = DataKey::generate().unwrap();
        let wrapped = {
            let (keys, _) = open(dir.path(), ring(9));
            keys.wrap_data_key(&id, &key).unwrap()
        };
        let both = || {
            let previous = vec![MasterKey::from_bytes(&[9; 32]).unwrap()];
            MasterKeyring::new(MasterKey::from_bytes(&[10; 32]).unwrap(), previous)
        };
        {
            let (keys, _) = open(dir.path(), both());
            assert_eq!(keys.rewrap_epochs_under_master().unwrap(), 1);
            assert_eq!(keys.rewrap_epochs_under_master().unwrap(), 0, "already under the new key");
            assert_eq!(keys.current().master, *keys.master().current_id());
        }
        assert!(slot_bytes(&path, 0).iter().all(|b| *b == 0), "the old copy is zeroed");
        let (keys, _) = open(dir.path(), ring(10));
        assert_eq!(keys.unwrap_data_key(&id, &wrapped).unwrap().bytes(), key.bytes());
        drop(keys);

        // A re-wrap cut after the new slot: the old copy (re-created here) is still valid, and
        // the newer one wins and supersedes it on open.
        let mut bytes = std::fs::read(&path).unwrap();
        let new_slot = slot_bytes(&path, 1);
        let SlotRead::Used(mut old) = StoredEpoch::decode(&new_slot) else { panic!("slot 1 is used") };
        old.generation = 0;
        bytes[slot_offset(0) as usize..slot_offset(0) as usize + SLOT_LEN].copy_from_slice(&old.encode());
        std::fs::write(&path, &bytes).unwrap();
        let (keys, report) = open(dir.path(), ring(10));
        assert_eq!(report.superseded, vec![0]);
        assert!(keys.unwrap_data_key(&id, &wrapped).is_ok());
        assert!(slot_bytes(&path, 0).iter().all(|b| *b == 0));
    }

    #[test]
    fn an_epoch_under_an_unconfigured_master_key_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        drop(open(dir.path(), ring(11)));
        let err =
            DataKeyring::open(ring(12), &dir.path().join("epochs"), MissingFile::Refuse, 0).unwrap_err();
        assert!(matches!(err, EpochError::UnknownMaster { .. }), "{err}");
        assert!(err.to_string().contains("CUSTODIA_PREVIOUS_MASTER_KEYS"));
    }
}
