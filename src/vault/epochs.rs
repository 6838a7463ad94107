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
//! Several nodes (PostgreSQL with the key database, `CUSTODIA_KEY_DATABASE_URL`) share the epoch
//! keys; only the node holding the `epochs` turn runs the schedule. The others learn a new
//! epoch, and forget a destroyed one, within [`EPOCH_REFRESH`] (and at once when a load meets a
//! data key under an epoch they do not know). What keeps a stale node from wrapping under a
//! dying epoch is not timing but a **fence**: every write that wraps or indexes under epochs
//! carries the precondition "`key_epochs` still equals the value my view was brought up to"
//! ([`DataKeyring::listed`], read before the current epoch), checked atomically with its commit.
//! The destroyer removes an epoch from `key_epochs` first (committed), then runs a complete
//! re-wrap pass, then destroys it. A write that committed before the removal is seen by that
//! pass; one that commits after it read a `key_epochs` value without the dying epoch and with a
//! newer one, so its view's current epoch is newer. A mismatch is refused
//! (`PreconditionFailed`): the vault refreshes its view and computes the change again.
//!
//! Resumable from the file's and the store's state: the store remembers which epoch the last
//! complete re-wrap reached (`epoch_rewrapped_to`) and which epoch ids may wrap data keys
//! (`key_epochs`, ids only, never keys: it tells a missing epoch-key file from a new store).
//! Ordering keeps `key_epochs` ⊆ the file's epochs across crashes: a new epoch is written to
//! the file before it is listed, and unlisted before it is destroyed. No finished step goes
//! unaudited across a crash: `epoch_rewrapped` is recorded before `epoch_rewrapped_to` moves, and
//! `epoch_destroying` names an epoch from before its key is destroyed until its event is
//! recorded (a crash right after an event may repeat it; a repeated event is still true).

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{Vault, VaultError};
use crate::audit::{Action, EventDraft};
use crate::crypto::{EpochInfo, KeyId, Refreshed};
use crate::domain::{Principal, Timestamp};
use crate::store::{MetaEquals, Store};

/// Metadata name: the ids of the epochs that may wrap data keys (postcard `Vec<String>`).
pub(crate) const KEY_EPOCHS: &str = "key_epochs";
/// Metadata name: the id of the epoch the last complete re-wrap brought every data key under.
pub(crate) const REWRAPPED_TO: &str = "epoch_rewrapped_to";
/// Metadata name: the id of the epoch whose key is being destroyed, set before the destruction
/// and emptied after its `epoch_destroyed` event, so a crash between the two still gets the
/// event at the next step (UTF-8 id; empty when none). Not in `META_NAMES`: it describes this
/// store's epoch-key file in the middle of a step, which a copy or a restore may not share.
pub const EPOCH_DESTROYING: &str = "epoch_destroying";
/// How long the task waits at most between looks at the clock.
const MAX_SLEEP: Duration = Duration::from_secs(60);
/// How often a node whose epoch keys are in the key database refreshes its view: the bound on
/// how long it takes to learn another node's new epoch (lookups until then miss entries only
/// under it) and to forget (zeroize) an epoch another node destroyed.
pub const EPOCH_REFRESH: Duration = Duration::from_secs(1);

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

    /// The precondition of a write that wraps or indexes under epochs: `key_epochs` still holds
    /// the value this process's view was brought up to. Read it *before* reading the current
    /// epoch; `None` before the view has one (at start-up).
    pub(super) fn fence(&self) -> Option<MetaEquals> {
        self.keyring.listed().map(|value| MetaEquals { name: KEY_EPOCHS.to_owned(), value: Some(value) })
    }

    /// Brings this process's epoch view up to the store's (see [`DataKeyring::refresh`]): reads
    /// `key_epochs`, then the epoch keys. Logs what changed.
    ///
    /// [`DataKeyring::refresh`]: crate::crypto::DataKeyring::refresh
    pub async fn refresh_epochs(&self) -> Result<Refreshed, VaultError> {
        let listed = self.store.meta(KEY_EPOCHS).await?;
        let keyring = Arc::clone(&self.keyring);
        let done = crate::crypto::off_async_workers(move || keyring.refresh(listed))
            .await
            .map_err(|e| VaultError::Internal(format!("epoch keys: {e}")))?;
        for id in &done.learned {
            tracing::info!(epoch = %id, "learned a key epoch another node created");
        }
        for id in &done.forgotten {
            tracing::info!(epoch = %id, "forgot a key epoch another node destroyed");
        }
        Ok(done)
    }

    /// Makes sure the epoch a loaded record's data key is wrapped under is known here, when
    /// another node may have created it (shared epoch keys). A destroyed one stays unknown.
    pub(super) async fn know_epoch_of(
        &self,
        record: &crate::store::CustomerRecord,
    ) -> Result<(), VaultError> {
        let id = &record.data_key.master_key;
        if self.keyring.shared() && id.is_epoch() && self.keyring.epoch(id).is_none() {
            self.refresh_epochs().await?;
        }
        Ok(())
    }

    /// On open: lists the file's epochs in the store (warning about listed ones the file does
    /// not hold), and on a fresh store records that every data key is under the current epoch.
    /// With shared epoch keys (the key database) a listed store is not re-listed from this
    /// node's view (another node may be destroying an epoch); the view is refreshed from it.
    pub async fn init_epochs(&self, fresh: bool) -> Result<(), VaultError> {
        if self.keyring.shared() && stored_epoch_ids(self.store.as_ref()).await?.is_some() {
            self.refresh_epochs().await?;
            if fresh {
                self.mark_rewrapped(&self.keyring.current()).await?;
            }
            return Ok(());
        }
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
        self.store.put_meta(KEY_EPOCHS, bytes.clone()).await?;
        self.keyring.set_listed(bytes);
        Ok(())
    }

    /// Replaces the destruction marker with `value` if it still holds `marker`, the value this
    /// step last read or wrote, and remembers `value` there; `false` if another node changed
    /// it since (for a moment two nodes may both believe they hold the `epochs` turn). The
    /// caller then ends its step and looks again: a marker is only ever replaced by the node
    /// that wrote it or that recorded its event, so no destroyed epoch loses its event to a node
    /// that did not see it.
    async fn swap_destroying(
        &self,
        marker: &mut Option<Vec<u8>>,
        value: Vec<u8>,
    ) -> Result<bool, VaultError> {
        let current = MetaEquals { name: EPOCH_DESTROYING.to_owned(), value: marker.clone() };
        let swapped = self.store.swap_meta(current, value.clone()).await?;
        if swapped {
            *marker = Some(value);
        }
        Ok(swapped)
    }

    async fn mark_rewrapped(&self, epoch: &EpochInfo) -> Result<(), VaultError> {
        self.store.put_meta(REWRAPPED_TO, epoch.id.as_str().as_bytes().to_vec()).await?;
        Ok(())
    }

    /// One step of epoch rotation at the present time; returns how long to wait before the
    /// next. Each step does one thing: destroy the epochs beyond the kept ones, start a new
    /// epoch, or run one re-wrap pass.
    pub async fn epoch_step(&self, state: &mut EpochState) -> Result<Duration, VaultError> {
        if self.keyring.shared() {
            // The turn may have just moved here from a node that created epochs.
            self.refresh_epochs().await?;
        }
        let schedule = self.epochs.clone();
        let current = self.keyring.current();
        let rewrapped_to = self.store.meta(REWRAPPED_TO).await?;
        let actor = Principal::system("key-epochs");
        let event =
            |codes: Vec<String>| EventDraft::new(Action::KeyRotate, &actor, "key-epochs").withheld(codes);
        let destroyed = |id: &KeyId| event(vec!["epoch_destroyed".to_owned(), format!("epoch:{id}")]);

        // A destruction cut short after the key went and before its event: record it now. A
        // marker naming an epoch still in the file is left: if that epoch is due, its
        // destruction runs first and replaces the marker; if not, its destruction never began
        // and the next one replaces the marker. Only an epoch id goes into the event.
        let mut marker = self.store.meta(EPOCH_DESTROYING).await?;
        let marked = marker.as_deref().and_then(|m| std::str::from_utf8(m).ok()).and_then(KeyId::parse_epoch);
        let clear = match (&marked, marker.as_deref()) {
            (_, None | Some([])) => false,
            (None, Some(_)) => {
                tracing::warn!("the epoch destruction marker is not an epoch id; cleared");
                true
            }
            (Some(id), _) if self.keyring.epoch(id).is_none() => {
                self.record(destroyed(id)).await?;
                true
            }
            (Some(_), _) => false,
        };
        if clear && !self.swap_destroying(&mut marker, Vec::new()).await? {
            return Ok(EPOCH_REFRESH);
        }

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
            let mut codes = vec![
                "epoch_rewrapped".to_owned(),
                format!("epoch:{}", current.id),
                format!("rewrapped:{}", state.rewrapped),
            ];
            if pass.unreadable > 0 {
                codes.push(format!("unreadable:{}", pass.unreadable));
            }
            // The event before the mark, as for a master rotation (`rotation.rs`): a crash
            // between them runs the (now clean) pass again and records it again, rather than
            // leave a finished re-wrap the log never records.
            self.record(event(codes)).await?;
            state.rewrapped = 0;
            self.mark_rewrapped(&current).await?;
            return Ok(Duration::ZERO);
        }

        let mut beyond: Vec<EpochInfo> =
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
            self.store.put_meta(KEY_EPOCHS, bytes.clone()).await?;
            self.keyring.set_listed(bytes);
            // The fence (module docs): every write committed before the removal above is seen
            // by this pass; none committed after it is under a removed epoch.
            let pass = self.rewrap_pass(schedule.pause).await?;
            state.rewrapped += pass.rewrapped;
            if pass.unsettled > 0 {
                return Ok(Duration::ZERO);
            }
            // An epoch the marker names (a destruction cut short before its key went) goes
            // first, so the marker is replaced only once its own destruction is recorded.
            if let Some(at) = beyond.iter().position(|e| Some(&e.id) == marked.as_ref()) {
                beyond[..=at].rotate_right(1);
            }
            for epoch in beyond {
                if !self.swap_destroying(&mut marker, epoch.id.as_str().as_bytes().to_vec()).await? {
                    return Ok(EPOCH_REFRESH);
                }
                // Off the async workers: it waits for the file lock, which a master-key re-wrap
                // holds across token calls, and syncs the file.
                let (keyring, id) = (Arc::clone(&self.keyring), epoch.id.clone());
                crate::crypto::off_async_workers(move || keyring.destroy_epoch(&id))
                    .await
                    .map_err(|e| VaultError::Internal(format!("epoch-key file: {e}")))?;
                tracing::info!(epoch = %epoch.id, "epoch key destroyed");
                self.record(destroyed(&epoch.id)).await?;
                if !self.swap_destroying(&mut marker, Vec::new()).await? {
                    return Ok(EPOCH_REFRESH);
                }
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
