//! Blind indexes under epoch keys, so erasure reaches them in copies of the data directory.
//!
//! An index entry is HMAC-SHA-256 under a key derived from an epoch key (`crypto::epoch`), and
//! names its epoch. Destroying the epoch destroys the key: an old sled page or a backup that
//! still holds an erased customer's entry no longer lets anyone holding the master key test
//! guesses (phone numbers, emails) against it. Entries of records from before (format 2) are
//! *legacy*: under the vault-wide blind-index key, which is never destroyed; they are migrated
//! once, at the first start (see [`Vault::init_index`]).
//!
//! Invariants that keep unique checks and lookups exact across an epoch switch (the sled writer
//! compares `(field, index)` across customers, so two customers with the same value clash only
//! if they hold an entry under a common key):
//! - a write computes entries under **every live epoch key** (and the legacy key while legacy
//!   entries may exist); a lookup computes the value's index under the same keys and unions the
//!   owners. A record's entries are always under at least one live key (an epoch is destroyed
//!   only after a clean pass re-indexed every record to a newer one), so they meet;
//! - the re-wrap pass re-indexes (opening the indexed fields) to the current epoch's entries,
//!   except within the settle time after a switch made by this process: a write that computed
//!   its entries before the switch may still commit then, with entries only under the previous
//!   epoch, so records re-indexed then get entries under every live epoch. A record is done
//!   when its data key is under the current epoch, each indexed field has an entry under the
//!   target epoch(s) and none under a destroyed epoch or the legacy key, and it has no legacy
//!   card fingerprint; a clean pass (nothing to do) is what allows an epoch's destruction
//!   (`vault::epochs`). Entries under an older live epoch may stay: they die with it.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use super::{Vault, VaultError, fields};
use crate::crypto::{BlindIndexKey, CryptoError, DataKey, EpochKey, KeyId};
use crate::store::{CardFingerprint, CustomerRecord};

/// Metadata name: present once no record holds legacy index entries (value `1`).
pub(crate) const LEGACY_MIGRATED: &str = "index_legacy_migrated";

/// What the vault remembers about blind indexes.
#[derive(Debug, Default)]
pub(super) struct IndexState {
    /// Legacy entries may still exist (a store from before epoch indexes whose migration has
    /// not completed): writes and lookups also use the vault-wide key.
    legacy: AtomicBool,
    /// Until when a request of this process may still commit entries computed before the last
    /// epoch switch this process made.
    settle_until: std::sync::Mutex<Option<Instant>>,
}

/// The keys index entries are computed under now: the live epoch keys, newest first, and the
/// legacy key while legacy entries may exist.
pub(super) struct IndexKeys<'a> {
    epochs: Vec<Arc<EpochKey>>,
    legacy: Option<&'a BlindIndexKey>,
}

impl IndexKeys<'_> {
    /// (epoch id or `None` for legacy, key), newest epoch first.
    pub(super) fn each(&self) -> impl Iterator<Item = (Option<KeyId>, &BlindIndexKey)> {
        self.epochs
            .iter()
            .map(|k| (Some(k.info().id.clone()), k.blind_index()))
            .chain(self.legacy.map(|k| (None, k)))
    }
}

/// The epochs a record's entries must be under to be done.
struct Target {
    /// Every field's entries must include these.
    epochs: Vec<KeyId>,
    /// Every live epoch: an entry under any other is re-indexed.
    live: Vec<KeyId>,
    keys: Vec<Arc<EpochKey>>,
}

impl Vault {
    /// The keys a write or lookup computes entries under now.
    pub(super) fn index_keys(&self) -> IndexKeys<'_> {
        IndexKeys {
            epochs: self.keyring.epoch_keys(),
            legacy: self.index.legacy.load(Ordering::Acquire).then_some(&self.keys.blind_index),
        }
    }

    /// Records an epoch switch made by this process: until `until`, re-indexed records keep
    /// their entries under the previous epochs too.
    pub(super) fn index_switched(&self, until: Instant) {
        *self.index.settle_until.lock().unwrap_or_else(|e| e.into_inner()) = Some(until);
    }

    /// What the re-wrap pass brings entries to now: the current epoch only, or every live epoch
    /// within the settle time of a switch.
    fn reindex_target(&self) -> Target {
        let settling = self
            .index
            .settle_until
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some_and(|until| Instant::now() < until);
        let mut keys = self.keyring.epoch_keys();
        let live = keys.iter().map(|k| k.info().id.clone()).collect();
        if !settling {
            keys.truncate(1);
        }
        Target { epochs: keys.iter().map(|k| k.info().id.clone()).collect(), live, keys }
    }

    /// True if `record`'s entries and card fingerprints need no re-index for `target`; decided
    /// without decrypting. Entries under further live epochs are left alone (they are destroyed
    /// with their epoch): writes during a switch make them, and requiring their removal would
    /// keep a pass from ever being clean under steady writes.
    fn index_done(record: &CustomerRecord, target: &Target) -> bool {
        let mut by_field: BTreeMap<&str, HashSet<&KeyId>> = BTreeMap::new();
        for entry in &record.index_entries {
            match &entry.epoch {
                Some(epoch) if target.live.contains(epoch) => {
                    by_field.entry(&entry.field).or_default().insert(epoch);
                }
                // Legacy, or under an epoch already destroyed (dead weight until rewritten).
                _ => return false,
            }
        }
        by_field.values().all(|epochs| target.epochs.iter().all(|e| epochs.contains(e)))
            && !record
                .payment_methods
                .iter()
                .any(|m| matches!(m.fingerprint, Some(CardFingerprint::Legacy(_))))
    }

    /// Recomputes `record`'s index entries under `target` from its sealed fields (opened with
    /// `key`), and replaces legacy card fingerprints by ones under the data key. A field keeps
    /// its entries' `unique` flag, and a field without entries gets non-unique ones (a policy
    /// change applies at the field's next write, as before); a stored value its declared type
    /// no longer accepts loses its entries (logged by field name).
    fn reindex(&self, record: &mut CustomerRecord, key: &DataKey, target: &Target) -> Result<(), VaultError> {
        let unique: BTreeMap<String, bool> =
            record.index_entries.iter().map(|e| (e.field.clone(), e.unique)).collect();
        let keys = IndexKeys { epochs: target.keys.clone(), legacy: None };
        let mut entries = Vec::new();
        for (name, stored) in &record.fields {
            if !self.policies.field(name).is_some_and(|f| f.index) {
                continue;
            }
            let value = fields::open(key, &record.id, name, stored)?;
            let mut valid = match fields::validate(&self.policies, name, &value) {
                Ok(v) => v,
                Err(_) => {
                    tracing::warn!(field = %name, "a stored value no longer satisfies its field's type; its index entries are dropped");
                    continue;
                }
            };
            // The pass never creates uniqueness: a field made unique in the policies since
            // its value was stored (which two customers may share) becomes unique at its next
            // write, where a clash is a 409 to the caller, not a pass that can never finish.
            valid.unique = unique.get(name).copied().unwrap_or(false);
            entries.extend(fields::index_entries(&keys, &valid));
        }
        record.index_entries = entries;
        let id = record.id;
        for method in &mut record.payment_methods {
            if matches!(method.fingerprint, Some(CardFingerprint::Legacy(_))) {
                let pan = self.card_number_of(key, &id, method)?;
                method.fingerprint = pan.map(|n| CardFingerprint::DataKey(key.card_fingerprint(&id, &n)));
            }
        }
        Ok(())
    }

    /// Brings one record under the current epoch (data key) and the index target, if it is
    /// not already. Errors: a data key under a master key that is not configured.
    pub(super) fn bring_current(&self, record: &mut CustomerRecord) -> Result<Brought, VaultError> {
        let target = self.reindex_target();
        let key_done = record.data_key.master_key == self.keyring.current().id;
        let index_done = Self::index_done(record, &target);
        if key_done && index_done {
            return Ok(Brought::Done);
        }
        let key = match self.keyring.unwrap_data_key(&record.id, &record.data_key) {
            Ok(key) => key,
            Err(CryptoError::UnknownEpochKey(_)) => return Ok(Brought::Unreadable),
            Err(e) => return Err(e.into()),
        };
        if !key_done {
            record.data_key = self.keyring.wrap_data_key(&record.id, &key)?;
        }
        if !index_done && let Err(e) = self.reindex(record, &key, &target) {
            // One damaged value must not hold every pass (and so every epoch destruction)
            // back: the record keeps its entries, which die with their epochs (lookups then
            // miss it), and its key is still re-wrapped. Only the id is logged: the error may
            // concern a customer's value.
            drop(e);
            tracing::error!(customer = %record.id, "a record's indexed values cannot be opened; it is not re-indexed");
            return Ok(if key_done {
                Brought::Unindexable
            } else {
                Brought::Changed { rewrapped: true, reindexed: false }
            });
        }
        Ok(Brought::Changed { rewrapped: !key_done, reindexed: !index_done })
    }

    /// The epoch that decides an erasure's bound: the newest live epoch among the one wrapping
    /// the record's data key and those of its index entries (a key under a master key, from
    /// before epochs, is returned as is: no bound).
    pub(super) fn newest_epoch_of(&self, record: &CustomerRecord) -> KeyId {
        let key = &record.data_key.master_key;
        // An entry under the legacy vault-wide key has no epoch to bound it either.
        if !key.is_epoch() || record.index_entries.iter().any(|e| e.epoch.is_none()) {
            return self.keyring.master().current_id().clone();
        }
        let created = |id: &KeyId| self.keyring.epoch(id).map(|e| e.created_ms);
        record
            .index_entries
            .iter()
            .filter_map(|e| e.epoch.as_ref())
            .chain(std::iter::once(key))
            .filter(|id| created(id).is_some())
            .max_by_key(|id| created(id))
            .unwrap_or(key)
            .clone()
    }

    /// On open: a fresh store records that it has no legacy entries. A store from before epoch
    /// indexes is migrated now, before any request is served: one re-wrap pass re-indexes every
    /// record to the current epoch (and re-wraps its data key). If that fails, the legacy key
    /// stays in use for writes and lookups (so unique checks and lookups stay exact) and the
    /// migration is tried again at the next start.
    pub async fn init_index(&self, fresh: bool) -> Result<(), VaultError> {
        if fresh || self.store.meta(LEGACY_MIGRATED).await?.is_some() {
            if fresh {
                self.store.put_meta(LEGACY_MIGRATED, b"1".to_vec()).await?;
            }
            return Ok(());
        }
        self.index.legacy.store(true, Ordering::Release);
        let started = Instant::now();
        match self.rewrap_pass(std::time::Duration::ZERO).await {
            // Records that could not be opened keep their legacy entries: the legacy key stays
            // in use (lookups and unique checks stay exact) until they can be.
            Ok(pass) if pass.unsettled == 0 && pass.unreadable == 0 && pass.unindexable == 0 => {
                self.store.put_meta(LEGACY_MIGRATED, b"1".to_vec()).await?;
                self.index.legacy.store(false, Ordering::Release);
                tracing::info!(
                    reindexed = pass.reindexed,
                    unreadable = pass.unreadable,
                    millis = started.elapsed().as_millis() as u64,
                    "blind indexes migrated to epoch keys"
                );
            }
            Ok(pass) => tracing::error!(
                unsettled = pass.unsettled,
                unreadable = pass.unreadable,
                unindexable = pass.unindexable,
                "blind-index migration incomplete; the legacy index key stays in use until the next start"
            ),
            Err(e) => tracing::error!(
                error = %e,
                "blind-index migration failed; the legacy index key stays in use until the next start"
            ),
        }
        Ok(())
    }
}

/// What [`Vault::bring_current`] did to a record.
pub(super) enum Brought {
    /// Nothing was to do.
    Done,
    /// Its data key is under an epoch that no longer exists: it cannot be opened.
    Unreadable,
    /// Its key is current but its indexed values cannot be opened to re-index it.
    Unindexable,
    /// It must be written back.
    Changed {
        /// Its data key was re-wrapped to the current epoch.
        rewrapped: bool,
        /// Its index entries (or legacy card fingerprints) were recomputed.
        reindexed: bool,
    },
}
