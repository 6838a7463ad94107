//! Master key rotation: every customer's data key (and the vault-wide keys) re-wrapped under the
//! current master key, in the background, while reads and writes go on.
//!
//! Resumable by construction: a record already wrapped under the current key is skipped, so a
//! rotation cut short by a crash simply continues on the next start. The store remembers which
//! master key the last completed rotation reached (`rotated_to`), so a normal start does not
//! scan anything.

use std::time::Duration;

use super::{Vault, VaultError};
use crate::audit::{Action, EventDraft};
use crate::domain::Principal;
use crate::store::{CustomerChange, StoreError, Write};

/// Metadata name: the id of the master key every wrap was last brought under.
const ROTATED_TO: &str = "rotated_to";
/// Metadata name of the wrapped vault-wide keys.
pub const SYSTEM_KEYS: &str = "system_keys";
const PAGE: usize = 200;

impl Vault {
    /// Whether some wrapped key may still be under an older master key.
    pub async fn rotation_pending(&self) -> Result<bool, VaultError> {
        let done = self.store.meta(ROTATED_TO).await?;
        Ok(done.as_deref() != Some(self.master.current_id().as_str().as_bytes()))
    }

    /// Marks a fresh store as fully under the current master key.
    pub async fn mark_rotated(&self) -> Result<(), VaultError> {
        self.store.put_meta(ROTATED_TO, self.master.current_id().as_str().as_bytes().to_vec()).await?;
        Ok(())
    }

    /// Re-wraps every key under the current master key, pausing `pause` between pages so live
    /// traffic keeps its share. Returns how many customers were re-wrapped.
    pub async fn rotate_master_key(&self, pause: Duration) -> Result<usize, VaultError> {
        let actor = Principal::system("key-rotation");
        let to = format!("to:{}", self.master.current_id());
        let started = EventDraft::new(Action::KeyRotate, &actor, "key-rotation")
            .withheld(["started".to_owned(), to.clone()]);
        self.record(started).await?;

        let wrapped = self.keys.wrap(&self.master)?;
        let bytes = postcard::to_stdvec(&wrapped).map_err(|e| VaultError::Internal(e.to_string()))?;
        self.store.put_meta(SYSTEM_KEYS, bytes).await?;

        let mut rewrapped = 0;
        let mut after = None;
        loop {
            let ids = self.store.customer_ids(after, PAGE).await?;
            // One durable write per page; a customer a concurrent writer changed in between is
            // re-read and tried again.
            let mut todo = ids.clone();
            for _ in 0..super::MAX_WRITE_ATTEMPTS {
                if todo.is_empty() {
                    break;
                }
                let mut writes = Vec::with_capacity(todo.len());
                let mut targets = Vec::with_capacity(todo.len());
                for id in &todo {
                    let Some(mut record) = self.store.customer(id).await? else { continue };
                    let Some(new_key) = self.master.rewrap_data_key(id, &record.data_key)? else { continue };
                    record.data_key = new_key;
                    // A rotation rewrites every record: the moment to seal what format 1 kept
                    // in the clear.
                    self.seal_legacy_consents(&mut record)?;
                    let expected = record.version;
                    record.version += 1;
                    // Data-key re-wraps are recorded by the start and completion events, not
                    // one event per customer: they touch no field.
                    let change =
                        CustomerChange::Put { record: Box::new(record), expected_version: Some(expected) };
                    writes.push(Write { change: Some(change), events: Vec::new() });
                    targets.push(*id);
                }
                todo.clear();
                for (id, outcome) in targets.into_iter().zip(self.store.write_many(writes).await?) {
                    match outcome {
                        Ok(_) => rewrapped += 1,
                        Err(StoreError::VersionConflict) => todo.push(id),
                        Err(e) => return Err(e.into()),
                    }
                }
            }
            match ids.last() {
                Some(last) if ids.len() == PAGE => after = Some(*last),
                _ => break,
            }
            if !pause.is_zero() {
                tokio::time::sleep(pause).await;
            }
        }
        self.mark_rotated().await?;
        let done = EventDraft::new(Action::KeyRotate, &actor, "key-rotation").withheld([
            "completed".to_owned(),
            to,
            format!("rewrapped:{rewrapped}"),
        ]);
        self.record(done).await?;
        Ok(rewrapped)
    }
}
