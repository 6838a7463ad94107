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
//! The fold is persisted as store metadata ([`COUNTERS_META`]) so a restart resumes where it
//! stood: when a month closed, at most every [`PERSIST_PERIOD`] otherwise, and at shutdown.
//! Persisting is only a shortcut: the fold is a function of the log, and a restart re-folds the
//! events after the persisted size. A persisted fold longer than the log (a store restored to an
//! earlier point) is discarded and rebuilt from the start.
//!
//! Memory: the open month holds, per cell, the 16-byte keyed digests of its customers
//! ([`crate::audit::counters::Member`]), about 50 bytes each in memory with the set's overhead;
//! at the month's close they become counts and are dropped. A digest of an erased customer's id
//! stays at most until the month closes; it is keyed ([`crate::crypto::MemberKey`]), so it
//! cannot be matched to an id without the vault's keys (and the id itself stays in the
//! append-only audit log in any case).

use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use tokio::sync::Mutex;

use super::{Vault, VaultError, audit_failure};
use crate::audit::Event;
use crate::audit::checkpoint::{SignedCheckpoint, VerifierKey};
use crate::audit::counters::{Counters, Member, PublishedMonth, THRESHOLD};
use crate::domain::Timestamp;
use crate::policy::ProcessingRecord;

/// The store metadata name the fold is persisted under (JSON of [`Counters`]). Version 2: cells
/// count distinct customers and the open month is kept as sets (version 1 counted events).
pub const COUNTERS_META: &str = "transparency_counters_v2";

/// The version of the report's JSON shape; bumped on any incompatible change.
pub const REPORT_FORMAT_VERSION: u32 = 2;

/// The longest the persisted fold lags the in-memory one while a month stays open.
pub const PERSIST_PERIOD: Duration = Duration::from_secs(60);

/// Events read per store call while folding.
const FOLD_PAGE: usize = 1000;

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
    /// The size of the persisted fold.
    persisted_size: u64,
    /// The number of closed months in the persisted fold.
    persisted_months: usize,
    /// When the fold was last persisted (or loaded).
    persisted_at: Instant,
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
        while fold.counters.size < target {
            let want = FOLD_PAGE.min(usize::try_from(target - fold.counters.size).unwrap_or(FOLD_PAGE));
            let page = self.store.audit_events(fold.counters.size, want).await?;
            if page.is_empty() {
                // Keep what was folded so far; the next step resumes from there.
                let missing = fold.counters.size;
                *state = Some(fold);
                return Err(VaultError::Internal(format!("event {missing} is missing from the log")));
            }
            for (seq, bytes) in page {
                let event: Event = serde_json::from_slice(&bytes)
                    .map_err(|e| VaultError::Internal(format!("stored event {seq} unreadable: {e}")))?;
                fold.counters.fold(&event, member).map_err(|e| VaultError::Internal(e.to_string()))?;
            }
        }
        let month_closed = fold.counters.months.len() != fold.persisted_months;
        if month_closed || fold.persisted_at.elapsed() >= PERSIST_PERIOD {
            self.persist(&mut fold).await?;
        }
        let report = TransparencyReport {
            format_version: REPORT_FORMAT_VERSION,
            generated_at: Timestamp::now().to_rfc3339(),
            threshold: THRESHOLD,
            tree_size: fold.counters.size,
            checkpoint,
            key: self.audit.verifier_key().clone(),
            record: ProcessingRecord::of(&self.policies),
            in_progress: fold.counters.in_progress().map(str::to_owned),
            months: fold.counters.published(),
        };
        *self.transparency.prepared.write().unwrap_or_else(|e| e.into_inner()) = Some(Arc::new(report));
        *state = Some(fold);
        Ok(())
    }

    /// Persists the fold if it moved since last persisted (at shutdown).
    pub async fn persist_transparency(&self) -> Result<(), VaultError> {
        let mut state = self.transparency.state.lock().await;
        match state.as_mut() {
            Some(fold) => self.persist(fold).await,
            None => Ok(()),
        }
    }

    async fn persist(&self, fold: &mut Fold) -> Result<(), VaultError> {
        if fold.counters.size != fold.persisted_size {
            // invariant: Counters is maps of strings, integers and digests; it always serialises.
            let json = serde_json::to_vec(&fold.counters).expect("counters serialise");
            self.store.put_meta(COUNTERS_META, json).await?;
            fold.persisted_size = fold.counters.size;
            fold.persisted_months = fold.counters.months.len();
        }
        fold.persisted_at = Instant::now();
        Ok(())
    }

    /// The persisted fold, or an empty one when there is none or it cannot be read.
    async fn persisted_fold(&self) -> Result<Fold, VaultError> {
        let counters = match self.store.meta(COUNTERS_META).await? {
            None => Counters::default(),
            Some(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                tracing::warn!(error = %e, "persisted transparency counters unreadable; recounting");
                Counters::default()
            }),
        };
        Ok(Fold {
            persisted_size: counters.size,
            persisted_months: counters.months.len(),
            persisted_at: Instant::now(),
            counters,
        })
    }
}
