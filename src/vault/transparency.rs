//! The public transparency report (`GET /v1/transparency`, `/transparency`): what the shop
//! collects and why (the Art. 30 record of the policy files) and, per closed calendar month, how
//! many distinct customers each kind of processing touched — counts only, each report computed
//! at a signed checkpoint it names (see [`crate::audit::counters`] for the rules).
//!
//! The report is prepared in the background, never on a request: every few seconds the
//! background task ([`Vault::refresh_transparency`]) folds the events appended since the last
//! step up to the newest signed checkpoint (signing one if the log grew; this is the
//! checkpointer's job anyway) and stores the finished report in memory. A page view
//! ([`Vault::transparency_report`]) only reads that prepared report: no signing, no store read
//! or write, nothing an anonymous caller can make the server do per request.
//!
//! The fold's closed months are persisted as store metadata ([`COUNTERS_META`], JSON of
//! [`Closed`]: the closed months, the seq the open month began at, the held-back seqs) whenever
//! they change, i.e. when a month closes. The open month is never persisted: the fold is a
//! function of the log, so after a restart the open month is re-folded from the seq it began
//! at (at most a month of events read once at start). A persisted fold longer than the log (a
//! store restored to an earlier point) is discarded and rebuilt from the start.
//!
//! Memory: the open month holds, per cell, the 16-byte keyed digests of its customers
//! ([`crate::audit::counters::Member`]) in a `BTreeSet`, about 27 bytes each measured, so
//! 1 000 000 customers in about 3 cells each hold about 81 MB until the month closes; events
//! naming no customer (refused tokens, say) are a number per cell and cost nothing. At the
//! month's close the sets become counts and are dropped. The digests are never written
//! anywhere; the key ([`crate::crypto::MemberKey`]) keeps them from being matched to an id.

use std::sync::{Arc, RwLock};

use tokio::sync::Mutex;

use super::{Vault, VaultError, audit_failure};
use crate::audit::Event;
use crate::audit::checkpoint::{SignedCheckpoint, VerifierKey};
use crate::audit::counters::{Closed, Counters, Grid, HORIZON_DAYS, Member, PublishedMonth, THRESHOLD};
use crate::domain::Timestamp;
use crate::policy::ProcessingRecord;

/// The store metadata name the fold's closed part is persisted under (JSON of [`Closed`]).
/// Version 3: closed months only, the open month re-folded from the log (version 2 persisted
/// the open month's sets, version 1 counted events); an older version is left alone and the
/// log recounted.
pub const COUNTERS_META: &str = "transparency_counters_v3";

/// The version of the report's JSON shape; bumped on any incompatible change.
pub const REPORT_FORMAT_VERSION: u32 = 2;

/// Events read per store call while folding; the fold yields its worker after each page.
/// A page is a few milliseconds of CPU (read, parse, digest, insert per event), so a long fold
/// (a restart re-folding the open month, or a busy minute) never holds a runtime worker long
/// enough to stall the requests queued on it.
const FOLD_PAGE: usize = 256;

/// The fold and the prepared report, kept between background steps.
#[derive(Default)]
pub struct TransparencyCounters {
    /// The fold; `None` until first loaded from the store. The lock makes folds sequential.
    state: Mutex<Option<Fold>>,
    /// The report as of the last background step; `None` before the first.
    prepared: RwLock<Option<Arc<TransparencyReport>>>,
}

/// The fold and what of it is persisted.
struct Fold {
    counters: Counters,
    /// The persisted part as last written (or loaded).
    persisted: Closed,
}

/// The public transparency report.
#[derive(Debug, Clone)]
pub struct TransparencyReport {
    /// Shape version of this document.
    pub format_version: u32,
    /// When the report was prepared (by the background task), RFC 3339.
    pub generated_at: String,
    /// Published counts below this are shown as "fewer than 5".
    pub threshold: u64,
    /// The number of events the counts are computed from (the checkpoint's tree size).
    pub tree_size: u64,
    /// The signed checkpoint of exactly those events; `None` while the log is empty.
    pub checkpoint: Option<SignedCheckpoint>,
    /// The key checkpoints are signed with.
    pub key: VerifierKey,
    /// What is collected and why (the same content as `custodia policy record --json`).
    pub record: ProcessingRecord,
    /// The month of the newest counted event (`YYYY-MM`): in progress, not published.
    pub in_progress: Option<String>,
    /// Seqs of events that did not close a month, being stamped more than
    /// [`HORIZON_DAYS`] days ahead of the server's clock when counted (ascending).
    pub held_back: Vec<u64>,
    /// Per closed calendar month (UTC), newest first.
    pub months: Vec<PublishedMonth>,
}

impl Vault {
    /// The report as the background task last prepared it, or `None` before its first step
    /// (just after start). Reads memory only: no signing, no store access. Touches no customer
    /// data, so it is not audited.
    pub fn transparency_report(&self) -> Option<Arc<TransparencyReport>> {
        // A poisoned lock still holds a whole report (it is replaced in one assignment).
        self.transparency.prepared.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The background step: folds the events appended since the last step, up to the newest
    /// signed checkpoint (signing one first if the log grew), persists the fold when due, and
    /// prepares the report views read.
    pub async fn refresh_transparency(&self) -> Result<(), VaultError> {
        let mut state = self.transparency.state.lock().await;
        let checkpoint = self.audit.checkpoint().await.map_err(audit_failure)?;
        let target = checkpoint.as_ref().map_or(0, |c| c.checkpoint.size);
        let mut fold = match state.take() {
            Some(f) => f,
            None => self.persisted_fold().await?,
        };
        if fold.counters.size > target {
            tracing::warn!(
                folded = fold.counters.size,
                log = target,
                "transparency counters are ahead of the log (restored store?); recounting"
            );
            fold.counters = Counters::default();
        }
        let key = self.keys.transparency_member_key();
        let member = |text: &str| Member(key.digest(text));
        let clock = self.audit.clock().now();
        let horizon =
            Timestamp::from_millis(clock.millis().saturating_add(HORIZON_DAYS * 86_400_000)).to_rfc3339();
        // The fold is kept in `state` on every error: the next step resumes where it stands.
        let folded = self.fold_to(&mut fold, target, &member, &horizon).await;
        let persisted = match folded {
            Ok(()) => self.persist(&mut fold).await,
            Err(e) => Err(e),
        };
        let record = ProcessingRecord::of(&self.policies);
        // invariant: the record is names, texts and numbers; it always serialises.
        let grid = Grid::of_record(&serde_json::to_value(&record).expect("the record serialises"));
        if let Err(e) = persisted {
            *state = Some(fold);
            return Err(e);
        }
        let report = TransparencyReport {
            format_version: REPORT_FORMAT_VERSION,
            generated_at: Timestamp::now().to_rfc3339(),
            threshold: THRESHOLD,
            tree_size: fold.counters.size,
            checkpoint,
            key: self.audit.verifier_key().clone(),
            record,
            in_progress: fold.counters.in_progress().map(str::to_owned),
            held_back: fold.counters.held_back.iter().copied().collect(),
            months: fold.counters.published(&grid),
        };
        *self.transparency.prepared.write().unwrap_or_else(|e| e.into_inner()) = Some(Arc::new(report));
        *state = Some(fold);
        Ok(())
    }

    /// Folds the events from where `fold` stands up to `target`. On an error the events folded
    /// so far stay folded.
    async fn fold_to(
        &self,
        fold: &mut Fold,
        target: u64,
        member: &impl Fn(&str) -> Member,
        horizon: &str,
    ) -> Result<(), VaultError> {
        while fold.counters.size < target {
            let want = FOLD_PAGE.min(usize::try_from(target - fold.counters.size).unwrap_or(FOLD_PAGE));
            let page = self.store.audit_events(fold.counters.size, want).await?;
            if page.is_empty() {
                let missing = fold.counters.size;
                return Err(VaultError::Internal(format!("event {missing} is missing from the log")));
            }
            for (seq, bytes) in page {
                let event: Event = serde_json::from_slice(&bytes)
                    .map_err(|e| VaultError::Internal(format!("stored event {seq} unreadable: {e}")))?;
                let held = fold
                    .counters
                    .fold(&event, member, Some(horizon))
                    .map_err(|e| VaultError::Internal(e.to_string()))?;
                if held {
                    tracing::warn!(
                        seq,
                        stamped = %event.time,
                        horizon,
                        "transparency: an audit event is stamped far ahead of the clock (clock stepped?); \
                         it is counted in the open month and does not close it"
                    );
                }
            }
            // The store calls above do not suspend (sled answers in place), so without this a
            // fold of many events would run on its worker to the end.
            tokio::task::yield_now().await;
        }
        Ok(())
    }

    /// Persists the fold's closed part if it changed since last persisted (at shutdown).
    pub async fn persist_transparency(&self) -> Result<(), VaultError> {
        let mut state = self.transparency.state.lock().await;
        match state.as_mut() {
            Some(fold) => self.persist(fold).await,
            None => Ok(()),
        }
    }

    /// Writes the closed part when it changed: a month closed or an event was held back. Small
    /// (closed months' counts), so serialising it here on the async worker is cheap.
    async fn persist(&self, fold: &mut Fold) -> Result<(), VaultError> {
        let closed = fold.counters.closed();
        if closed != fold.persisted {
            // invariant: Closed is maps of strings and integers; it always serialises.
            let json = serde_json::to_vec(&closed).expect("counters serialise");
            self.store.put_meta(COUNTERS_META, json).await?;
            fold.persisted = closed;
        }
        Ok(())
    }

    /// The persisted fold, resumed at the start of its open month, or an empty one when there
    /// is none or it cannot be read.
    async fn persisted_fold(&self) -> Result<Fold, VaultError> {
        let persisted = match self.store.meta(COUNTERS_META).await? {
            None => Closed::default(),
            Some(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                tracing::warn!(error = %e, "persisted transparency counters unreadable; recounting");
                Closed::default()
            }),
        };
        Ok(Fold { counters: Counters::resume(persisted.clone()), persisted })
    }
}
