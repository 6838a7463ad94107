//! The public transparency report (`GET /v1/transparency`, `/transparency`): what the shop
//! collects and why (the Art. 30 record of the policy files) and, per calendar month, what it
//! did — counts only, each report computed at a signed checkpoint it names.
//!
//! Counters are kept incrementally: [`TransparencyCounters`] holds the fold of the first N
//! events ([`crate::audit::counters`]) and only ever reads the events appended since; a
//! background task folds every few seconds, so a page view reads at most that short tail and
//! never scans the log. The fold is persisted as store metadata ([`COUNTERS_META`]) after each
//! step, so a restart resumes where it stood; a persisted fold longer than the log (a store
//! restored to an earlier point) is discarded and rebuilt from the start.

use tokio::sync::Mutex;

use super::{Vault, VaultError, audit_failure};
use crate::audit::Event;
use crate::audit::checkpoint::{SignedCheckpoint, VerifierKey};
use crate::audit::counters::{Counters, PublishedMonth, THRESHOLD};
use crate::domain::Timestamp;
use crate::policy::ProcessingRecord;

/// The store metadata name the fold is persisted under (JSON of [`Counters`]).
pub const COUNTERS_META: &str = "transparency_counters_v1";

/// The version of the report's JSON shape; bumped on any incompatible change.
pub const REPORT_FORMAT_VERSION: u32 = 1;

/// Events read per store call while folding.
const FOLD_PAGE: usize = 1000;

/// The fold kept between page views; `None` until first loaded from the store.
#[derive(Default)]
pub struct TransparencyCounters {
    state: Mutex<Option<Counters>>,
}

/// The public transparency report.
#[derive(Debug, Clone)]
pub struct TransparencyReport {
    /// Shape version of this document.
    pub format_version: u32,
    /// When the report was put together, RFC 3339.
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
    /// Per calendar month (UTC), newest first.
    pub months: Vec<PublishedMonth>,
}

impl Vault {
    /// The transparency report at the newest signed checkpoint (signing one first if the log
    /// grew since). Touches no customer data, so it is not audited.
    pub async fn transparency_report(&self) -> Result<TransparencyReport, VaultError> {
        let (counters, checkpoint) = self.fold_to_checkpoint().await?;
        Ok(TransparencyReport {
            format_version: REPORT_FORMAT_VERSION,
            generated_at: Timestamp::now().to_rfc3339(),
            threshold: THRESHOLD,
            tree_size: counters.size,
            checkpoint,
            key: self.audit.verifier_key().clone(),
            record: ProcessingRecord::of(&self.policies),
            months: counters.published(),
        })
    }

    /// Folds the events appended since the last fold, up to the newest signed checkpoint (the
    /// background task's step; a page view does the same first).
    pub async fn refresh_transparency(&self) -> Result<(), VaultError> {
        self.fold_to_checkpoint().await.map(|_| ())
    }

    /// The fold at exactly the newest checkpoint's size, and that checkpoint. The lock makes
    /// folds sequential; checkpoint sizes only grow, so the fold never has to go back.
    async fn fold_to_checkpoint(&self) -> Result<(Counters, Option<SignedCheckpoint>), VaultError> {
        let mut state = self.transparency.state.lock().await;
        let checkpoint = self.audit.checkpoint().await.map_err(audit_failure)?;
        let target = checkpoint.as_ref().map_or(0, |c| c.checkpoint.size);
        let mut counters = match state.take() {
            Some(c) => c,
            None => self.persisted_counters().await?,
        };
        if counters.size > target {
            tracing::warn!(
                folded = counters.size,
                log = target,
                "transparency counters are ahead of the log (restored store?); recounting"
            );
            counters = Counters::default();
        }
        let started = counters.size;
        while counters.size < target {
            let want = FOLD_PAGE.min(usize::try_from(target - counters.size).unwrap_or(FOLD_PAGE));
            let page = self.store.audit_events(counters.size, want).await?;
            if page.is_empty() {
                return Err(VaultError::Internal(format!("event {} is missing from the log", counters.size)));
            }
            for (seq, bytes) in page {
                let event: Event = serde_json::from_slice(&bytes)
                    .map_err(|e| VaultError::Internal(format!("stored event {seq} unreadable: {e}")))?;
                counters.fold(&event).map_err(|e| VaultError::Internal(e.to_string()))?;
            }
        }
        if counters.size != started {
            // invariant: Counters is maps of strings and integers; it always serialises.
            let json = serde_json::to_vec(&counters).expect("counters serialise");
            self.store.put_meta(COUNTERS_META, json).await?;
        }
        *state = Some(counters.clone());
        Ok((counters, checkpoint))
    }

    /// The persisted fold, or an empty one when there is none or it cannot be read.
    async fn persisted_counters(&self) -> Result<Counters, VaultError> {
        let Some(bytes) = self.store.meta(COUNTERS_META).await? else {
            return Ok(Counters::default());
        };
        Ok(serde_json::from_slice(&bytes).unwrap_or_else(|e| {
            tracing::warn!(error = %e, "persisted transparency counters unreadable; recounting");
            Counters::default()
        }))
    }
}
