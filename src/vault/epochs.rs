//! Key epoch rotation: a new epoch key every period, every live data key re-wrapped to it, old
//! epoch keys destroyed, so copies of the data directory taken before an erasure stop opening
//! the erased customer (see `crypto::epoch` for the keys and their file).
//!
//! The schedule, driven by [`Vault::epoch_step`] from a background task:
//! 1. when the current epoch is older than the period (and the re-wrap to it has completed), a
//!    new epoch is created (its slot synced before anything is wrapped under it);
//! 2. passes of [`Vault::rewrap_pass`] bring every data key under it. A request that wrapped a
//!    new data key under the old epoch just before the switch may commit after the pass went by
//!    its id, so the re-wrap counts as complete only after a pass that re-wrapped nothing and
//!    started at least the request timeout after the switch;
//! 3. then epochs beyond the newest `kept + 1` are destroyed (slots zeroed and synced).
//!
//! Resumable from the file's and the store's state: the store remembers which epoch the last
//! complete re-wrap reached (`epoch_rewrapped_to`) and which epoch ids may wrap data keys
//! (`key_epochs`, ids only, never keys: it tells a missing epoch-key file from a new store).
//! Ordering keeps `key_epochs` ⊆ the file's epochs across crashes: a new epoch is written to
//! the file before it is listed, and unlisted before it is destroyed.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{Vault, VaultError};
use crate::audit::{Action, EventDraft};
use crate::crypto::{EpochInfo, KeyId};
use crate::domain::{Principal, Timestamp};
use crate::store::Store;

/// Metadata name: the ids of the epochs that may wrap data keys (postcard `Vec<String>`).
pub(crate) const KEY_EPOCHS: &str = "key_epochs";
/// Metadata name: the id of the epoch the last complete re-wrap brought every data key under.
pub(crate) const REWRAPPED_TO: &str = "epoch_rewrapped_to";
/// How long the task waits at most between looks at the clock.
const MAX_SLEEP: Duration = Duration::from_secs(60);

/// When epochs rotate and how many are kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EpochSchedule {
    /// How long an epoch key is current (`CUSTODIA_KEY_EPOCH_SECONDS`).
    pub period: Duration,
    /// Previous epochs kept after a re-wrap completes (`CUSTODIA_KEY_EPOCHS_KEPT`).
    pub kept: u32,
    /// How long after a switch a request may still commit a key wrapped under the old epoch:
    /// the request timeout.
    pub settle: Duration,
    /// Pause between pages of a re-wrap pass (`CUSTODIA_ROTATION_PAUSE_MS`).
    pub pause: Duration,
}

impl Default for EpochSchedule {
    fn default() -> Self {
        EpochSchedule {
            period: Duration::from_secs(86_400),
            kept: 0,
            settle: Duration::from_secs(10),
            pause: Duration::ZERO,
        }
    }
}

impl EpochSchedule {
    /// When an epoch that began at `created_ms` is destroyed (ms since 1970), not counting the
    /// re-wrap passes' own time: `kept + 1` newer epochs must begin, each no sooner than a
    /// period and than the settle time after the one before (a new epoch waits for the re-wrap
    /// to the current one, which waits out the settle time), and the last re-wrap waits out
    /// the settle time once more before the destruction.
    pub fn destroyed_by_ms(&self, created_ms: i64) -> i64 {
        let millis = |d: Duration| i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
        let gap = millis(self.period.max(self.settle));
        created_ms
            .saturating_add(gap.saturating_mul(i64::from(self.kept) + 1))
            .saturating_add(millis(self.settle))
    }
}

/// What the epoch task remembers between steps (only what this process did).
#[derive(Debug, Default)]
pub struct EpochState {
    /// Until when a request of this process may still commit a key wrapped under the epoch
    /// before the last switch this process made. `None`: no switch in this process, so no such
    /// request exists.
    settle_until: Option<Instant>,
    /// Keys re-wrapped since the last switch, for the completion event.
    rewrapped: usize,
}

/// The epoch ids a store lists as possibly wrapping data keys; `None` for a store that never
/// used epochs. Read before the epoch-key file is opened, to tell a missing file from a new
/// store.
pub async fn stored_epoch_ids(store: &dyn Store) -> Result<Option<Vec<String>>, VaultError> {
    match store.meta(KEY_EPOCHS).await? {
        None => Ok(None),
        Some(bytes) => postcard::from_bytes(&bytes)
            .map(Some)
            .map_err(|e| VaultError::Internal(format!("stored epoch list unreadable: {e}"))),
    }
}

/// The sentence an erasure receipt gives the customer.
pub(super) fn erasure_notice(copies_unreadable_by: Option<Timestamp>) -> String {
    match copies_unreadable_by {
        Some(t) => format!(
            "Your data is now deleted and unreadable in our live system, and copies of it (such as backups) become unreadable by about {} UTC, once our scheduled key rotation has run.",
            human_time(t)
        ),
        None => "Your data is now deleted and unreadable in our live system; backup copies made before it was protected by rotating keys stay readable only to holders of our master key until that key is replaced.".to_owned(),
    }
}

/// What the customer export says about erasure, for this schedule.
pub(super) fn erasure_explanation(schedule: &EpochSchedule) -> String {
    let seconds = schedule.period.as_secs().saturating_mul(u64::from(schedule.kept) + 1);
    let bound = match seconds {
        s if s >= 86_400 => format!("{} day{}", s.div_ceil(86_400), if s > 86_400 { "s" } else { "" }),
        s if s >= 3_600 => format!("{} hours", s.div_ceil(3_600)),
        s => format!("{s} seconds"),
    };
    format!(
        "If you erase your data, it becomes unreadable in our live system at once, and copies of it (such as backups) become unreadable within about {bound}, once our regular key rotation has run."
    )
}

fn human_time(t: Timestamp) -> String {
    // RFC 3339 without the milliseconds: "2026-05-02 14:00:00".
    let text = t.to_rfc3339();
    text.get(..19).map(|s| s.replace('T', " ")).unwrap_or(text)
}

impl Vault {
    /// By when copies taken before the erasure of a data key wrapped under `wrapped_under`
    /// stop opening it; `None` for a key wrapped directly under a master key (legacy).
    pub(super) fn copies_unreadable_by(&self, wrapped_under: &KeyId, now: Timestamp) -> Option<Timestamp> {
        if !wrapped_under.is_epoch() {
            return None;
        }
        Some(match self.keyring.epoch(wrapped_under) {
            Some(epoch) => Timestamp::from_millis(self.epochs.destroyed_by_ms(epoch.created_ms)),
            // Its epoch is already destroyed: no copy opens it now.
            None => now,
        })
    }

    /// On open: lists the file's epochs in the store (warning about listed ones the file does
    /// not hold), and on a fresh store records that every data key is under the current epoch.
    pub async fn init_epochs(&self, fresh: bool) -> Result<(), VaultError> {
        let in_file: Vec<String> = self.keyring.epochs().iter().map(|e| e.id.to_string()).collect();
        if let Some(listed) = stored_epoch_ids(self.store.as_ref()).await? {
            let missing: Vec<&String> = listed.iter().filter(|id| !in_file.contains(id)).collect();
            if !missing.is_empty() {
                tracing::error!(
                    epochs = ?missing,
                    file = %self.keyring.path().display(),
                    "the store lists epoch keys the epoch-key file does not hold: customers whose data keys are under them cannot be opened (a copy restored from before those epochs were destroyed, or the wrong epoch-key file)"
                );
            }
        }
        self.list_epochs().await?;
        if fresh {
            self.mark_rewrapped(&self.keyring.current()).await?;
        }
        Ok(())
    }

    async fn list_epochs(&self) -> Result<(), VaultError> {
        let ids: Vec<String> = self.keyring.epochs().iter().map(|e| e.id.to_string()).collect();
        let bytes = postcard::to_stdvec(&ids).map_err(|e| VaultError::Internal(e.to_string()))?;
        self.store.put_meta(KEY_EPOCHS, bytes).await?;
        Ok(())
    }

    async fn mark_rewrapped(&self, epoch: &EpochInfo) -> Result<(), VaultError> {
        self.store.put_meta(REWRAPPED_TO, epoch.id.as_str().as_bytes().to_vec()).await?;
        Ok(())
    }

    /// One step of epoch rotation at the present time; returns how long to wait before the
    /// next. Each step does one thing: destroy the epochs beyond the kept ones, start a new
    /// epoch, or run one re-wrap pass.
    pub async fn epoch_step(&self, state: &mut EpochState) -> Result<Duration, VaultError> {
        let schedule = self.epochs.clone();
        let current = self.keyring.current();
        let rewrapped_to = self.store.meta(REWRAPPED_TO).await?;
        let actor = Principal::system("key-epochs");
        let event =
            |codes: Vec<String>| EventDraft::new(Action::KeyRotate, &actor, "key-epochs").withheld(codes);

        if rewrapped_to.as_deref() != Some(current.id.as_str().as_bytes()) {
            let started = Instant::now();
            let pass = self.rewrap_pass(schedule.pause).await?;
            state.rewrapped += pass.rewrapped;
            if let Some(until) = state.settle_until
                && started < until
            {
                return Ok(until - started);
            }
            if !pass.clean() {
                return Ok(Duration::ZERO);
            }
            self.mark_rewrapped(&current).await?;
            let mut codes = vec![
                "epoch_rewrapped".to_owned(),
                format!("epoch:{}", current.id),
                format!("rewrapped:{}", state.rewrapped),
            ];
            if pass.unreadable > 0 {
                codes.push(format!("unreadable:{}", pass.unreadable));
            }
            self.record(event(codes)).await?;
            state.rewrapped = 0;
            return Ok(Duration::ZERO);
        }

        let beyond: Vec<EpochInfo> =
            self.keyring.epochs().into_iter().skip(1 + schedule.kept as usize).collect();
        if !beyond.is_empty() {
            // Unlisted before destroyed: the list never names an epoch the file lacks.
            let keep: Vec<String> = self
                .keyring
                .epochs()
                .iter()
                .filter(|e| !beyond.contains(e))
                .map(|e| e.id.to_string())
                .collect();
            let bytes = postcard::to_stdvec(&keep).map_err(|e| VaultError::Internal(e.to_string()))?;
            self.store.put_meta(KEY_EPOCHS, bytes).await?;
            for epoch in beyond {
                // Off the async workers: it waits for the file lock, which a master-key re-wrap
                // holds across token calls, and syncs the file.
                let (keyring, id) = (Arc::clone(&self.keyring), epoch.id.clone());
                crate::crypto::off_async_workers(move || keyring.destroy_epoch(&id))
                    .await
                    .map_err(|e| VaultError::Internal(format!("epoch-key file: {e}")))?;
                tracing::info!(epoch = %epoch.id, "epoch key destroyed");
                self.record(event(vec!["epoch_destroyed".to_owned(), format!("epoch:{}", epoch.id)])).await?;
            }
            return Ok(Duration::ZERO);
        }

        let now = Timestamp::now().millis();
        let period = i64::try_from(schedule.period.as_millis()).unwrap_or(i64::MAX);
        let due = current.created_ms.saturating_add(period);
        if now < due {
            let wait = Duration::from_millis(u64::try_from(due - now).unwrap_or(0));
            return Ok(wait.min(MAX_SLEEP));
        }
        // Wraps the new epoch key under the master key: a token call when it is in an HSM.
        let keyring = Arc::clone(&self.keyring);
        let next = crate::crypto::off_async_workers(move || keyring.create_epoch(now))
            .await
            .map_err(|e| VaultError::Internal(format!("epoch-key file: {e}")))?;
        state.settle_until = Some(Instant::now() + schedule.settle);
        self.index_switched(Instant::now() + schedule.settle);
        state.rewrapped = 0;
        self.list_epochs().await?;
        tracing::info!(epoch = %next.id, "new key epoch");
        self.record(event(vec![
            "epoch_created".to_owned(),
            format!("epoch:{}", next.id),
            format!("previous:{}", current.id),
        ]))
        .await?;
        Ok(Duration::ZERO)
    }
}
