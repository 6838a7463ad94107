//! Bringing every data key under the current epoch key, and master key rotation built on it.
//!
//! [`Vault::rewrap_pass`] is the one page loop that moves keys: customers' data keys wrapped
//! under an older epoch key, or (stored before epochs existed) directly under a master key, are
//! re-wrapped under the current epoch. Epoch rotation (`vault::epochs`) and master key rotation
//! both use it. Resumable by construction: a record already under the current epoch is skipped,
//! so a pass cut short by a crash simply continues on the next start.
//!
//! Master key rotation re-wraps what is wrapped under the master key itself: the vault-wide keys
//! (in metadata), the epoch keys (new slot, then the old one zeroed, in the epoch-key file) and
//! any legacy data key. The store remembers which master key the last completed rotation
//! reached (`rotated_to`), so a normal start does not scan anything.

use std::sync::Arc;
use std::time::Duration;

use super::index::Brought;
use super::{Vault, VaultError};
use crate::audit::{Action, EventDraft};
use crate::domain::Principal;
use crate::store::{CustomerChange, StoreError, Write};

/// Metadata name: the id of the master key every wrap was last brought under.
pub(crate) const ROTATED_TO: &str = "rotated_to";
/// Metadata name of the wrapped vault-wide keys.
pub const SYSTEM_KEYS: &str = "system_keys";
const PAGE: usize = 200;
/// Passes a master rotation makes before giving up on records that keep conflicting.
const MAX_PASSES: usize = 3;

/// What one pass over every customer did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RewrapPass {
    /// Data keys re-wrapped under the current epoch.
    pub rewrapped: usize,
    /// Records whose blind-index entries were recomputed under the current epoch (or whose
    /// legacy card fingerprints were replaced).
    pub reindexed: usize,
    /// Records a concurrent writer kept changing (tried [`super::MAX_WRITE_ATTEMPTS`] times):
    /// still to do.
    pub unsettled: usize,
    /// Records whose data key is under an epoch key that no longer exists (a restored copy of
    /// an erased or expired state): unreadable, skipped.
    pub unreadable: usize,
    /// Records whose key is current but whose indexed values cannot be opened: not
    /// re-indexed, and not holding the pass back.
    pub unindexable: usize,
}

impl RewrapPass {
    /// True if the pass found every key and every index entry already under the current epoch.
    pub fn clean(&self) -> bool {
        self.rewrapped == 0 && self.reindexed == 0 && self.unsettled == 0
    }
}

impl Vault {
    /// Whether some wrapped key may still be under an older master key.
    pub async fn rotation_pending(&self) -> Result<bool, VaultError> {
        let done = self.store.meta(ROTATED_TO).await?;
        Ok(done.as_deref() != Some(self.keyring.master().current_id().as_str().as_bytes()))
    }

    /// Marks a fresh store as fully under the current master key.
    pub async fn mark_rotated(&self) -> Result<(), VaultError> {
        let current = self.keyring.master().current_id().as_str().as_bytes().to_vec();
        self.store.put_meta(ROTATED_TO, current).await?;
        Ok(())
    }

    /// Re-wraps every key under the current master key, pausing `pause` between pages so live
    /// traffic keeps its share. Returns how many customers' data keys were re-wrapped.
    pub async fn rotate_master_key(&self, pause: Duration) -> Result<usize, VaultError> {
        let actor = Principal::system("key-rotation");
        let to = format!("to:{}", self.keyring.master().current_id());
        let started = EventDraft::new(Action::KeyRotate, &actor, "key-rotation")
            .withheld(["started".to_owned(), to.clone()]);
        self.record(started).await?;

        // Both wrap under the master key: token calls when it is in an HSM.
        let (keys, keyring) = (Arc::clone(&self.keys), Arc::clone(&self.keyring));
        let wrapped = crate::crypto::off_async_workers(move || keys.wrap(keyring.master())).await?;
        let bytes = postcard::to_stdvec(&wrapped).map_err(|e| VaultError::Internal(e.to_string()))?;
        self.store.put_meta(SYSTEM_KEYS, bytes).await?;
        let keyring = Arc::clone(&self.keyring);
        let epochs = crate::crypto::off_async_workers(move || keyring.rewrap_epochs_under_master())
            .await
            .map_err(|e| VaultError::Internal(format!("epoch-key file: {e}")))?;

        let mut rewrapped = 0;
        for pass in 1..=MAX_PASSES {
            let done = self.rewrap_pass(pause).await?;
            rewrapped += done.rewrapped;
            if done.unsettled == 0 {
                break;
            }
            if pass == MAX_PASSES {
                return Err(VaultError::Internal(format!(
                    "{} records kept conflicting with concurrent writers; the rotation resumes on the next start",
                    done.unsettled
                )));
            }
        }
        // The event before the mark: a crash between them leaves the rotation pending, so the
        // next start runs it again (a clean pass) and records it again. The other order could
        // leave a completed rotation whose completion the log never records.
        let done = EventDraft::new(Action::KeyRotate, &actor, "key-rotation").withheld([
            "completed".to_owned(),
            to,
            format!("rewrapped:{rewrapped}"),
            format!("epochs:{epochs}"),
        ]);
        self.record(done).await?;
        self.mark_rotated().await?;
        Ok(rewrapped)
    }

    /// One pass over every customer, in id order: each data key not under the current epoch
    /// key is re-wrapped under it, and each record whose blind-index entries are not exactly
    /// the current epoch's (see `vault::index`) is re-indexed, one durable `write_many` per page
    /// of 200, pausing `pause` between pages. A record a concurrent writer changed in between
    /// is re-read and tried again. Also seals what records of format 1 kept in the clear, and
    /// re-keys card fingerprints of format 2 under the data key, since it rewrites them.
    ///
    /// Errors: a data key under a master key that is not configured stops the pass (configure
    /// it in `CUSTODIA_PREVIOUS_MASTER_KEYS`); one under a destroyed epoch is counted as
    /// unreadable and skipped.
    pub async fn rewrap_pass(&self, pause: Duration) -> Result<RewrapPass, VaultError> {
        let mut outcome = RewrapPass::default();
        let mut after = None;
        loop {
            let ids = self.store.customer_ids(after, PAGE).await?;
            let mut todo = ids.clone();
            for _ in 0..super::MAX_WRITE_ATTEMPTS {
                if todo.is_empty() {
                    break;
                }
                let mut writes = Vec::with_capacity(todo.len());
                let mut targets = Vec::with_capacity(todo.len());
                // Read before the current epoch is (see `Vault::fence`).
                let fence = self.fence();
                for id in &todo {
                    let Some(mut record) = self.store.customer(id).await? else { continue };
                    let changed = match self.bring_current(&mut record)? {
                        Brought::Done => continue,
                        Brought::Unreadable => {
                            outcome.unreadable += 1;
                            continue;
                        }
                        Brought::Unindexable => {
                            outcome.unindexable += 1;
                            continue;
                        }
                        Brought::Changed { rewrapped, reindexed } => (rewrapped, reindexed),
                    };
                    self.seal_legacy_consents(&mut record)?;
                    let expected = record.version;
                    record.version += 1;
                    // Data-key re-wraps are recorded by the `key.rotate` events around them,
                    // not one event per customer: they touch no field.
                    let change =
                        CustomerChange::Put { record: Box::new(record), expected_version: Some(expected) };
                    writes.push(Write {
                        need_seqs: false,
                        precondition: fence.clone(),
                        change: Some(change),
                        events: Vec::new(),
                    });
                    targets.push((*id, changed));
                }
                todo.clear();
                if writes.is_empty() {
                    break;
                }
                let mut refresh = false;
                for ((id, (rewrapped, reindexed)), result) in
                    targets.into_iter().zip(self.store.write_many(writes).await?)
                {
                    match result {
                        Ok(_) => {
                            outcome.rewrapped += usize::from(rewrapped);
                            outcome.reindexed += usize::from(reindexed);
                        }
                        Err(StoreError::VersionConflict) => todo.push(id),
                        Err(StoreError::PreconditionFailed { .. }) => {
                            refresh = true;
                            todo.push(id);
                        }
                        Err(StoreError::UniqueViolation { field }) => {
                            // Cannot happen by the invariants of `vault::index`; if it does,
                            // the record stays as it is and the pass is not clean.
                            tracing::error!(field = %field, "re-indexing a record clashed with another customer's unique entry");
                            outcome.unsettled += 1;
                        }
                        Err(e) => return Err(e.into()),
                    }
                }
                if refresh {
                    // Another node changed the epochs: the records are computed again under
                    // the fresh view.
                    self.refresh_epochs().await?;
                }
            }
            outcome.unsettled += todo.len();
            match ids.last() {
                Some(last) if ids.len() == PAGE => after = Some(*last),
                _ => break,
            }
            if !pause.is_zero() {
                tokio::time::sleep(pause).await;
            }
        }
        if outcome.unreadable > 0 {
            tracing::warn!(
                customers = outcome.unreadable,
                "data keys under destroyed epoch keys: those customers cannot be opened (a restored copy older than the kept epochs)"
            );
        }
        Ok(outcome)
    }
}
