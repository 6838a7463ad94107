//! A customer's own audit trail, with receipts: the events about them, and for any one of them
//! the event as stored, its inclusion proof and the signed checkpoint it verifies against, so
//! the customer (in the privacy portal, in their browser) can check that what they are shown is
//! in the log every auditor sees, without taking this server's word for it.
//!
//! Only events that name the caller (`customer_id` = the token's `sub`) are ever answered; any
//! other seq is `not_found`, exactly like a seq beyond the log, so a customer learns nothing
//! about other events. Each call is itself an `audit.read` event about the caller, recorded
//! before the answer.
//!
//! A receipt reuses the newest checkpoint already signed (the background checkpointer signs one
//! every second while the log grows) when it covers the event; only an event newer than every
//! signed checkpoint gets a checkpoint signed for it. So a caller cannot make the server sign
//! and store a checkpoint per call.

use serde_json::Value;

use super::{RequestContext, Vault, VaultError, audit_failure};
use crate::audit::checkpoint::{SignedCheckpoint, VerifierKey};
use crate::audit::merkle::Hash;
use crate::audit::{Action, Event};

/// The most events one page of a customer's trail holds.
pub const MAX_OWN_EVENTS_PAGE: usize = 1000;

/// One page of the caller's own events.
#[derive(Debug)]
pub struct OwnEvents {
    /// Events about the caller, in seq order, exactly as stored (and hashed into their leaves).
    pub events: Vec<Value>,
    /// Pass as `after` for the next page; `None` at the end of the caller's history.
    pub next_after: Option<u64>,
}

/// What a customer needs to verify one event about them offline.
#[derive(Debug)]
pub struct Receipt {
    /// The event exactly as stored.
    pub event: Value,
    /// The event's seq.
    pub index: u64,
    /// The inclusion proof of `index` in the checkpoint's tree, leaf to root.
    pub proof: Vec<Hash>,
    /// The signed checkpoint the proof leads to.
    pub checkpoint: SignedCheckpoint,
    /// The key the checkpoint is signed with.
    pub key: VerifierKey,
}

impl Vault {
    /// Up to `limit` (1 to [`MAX_OWN_EVENTS_PAGE`]) events about the caller with a seq greater
    /// than `after` (`GET /v1/me/events`). Recorded as an `audit.read` about the caller.
    #[tracing::instrument(skip_all)]
    pub async fn own_events(
        &self,
        ctx: &RequestContext,
        after: Option<u64>,
        limit: usize,
    ) -> Result<OwnEvents, VaultError> {
        let (draft, id) = self.own_draft(ctx, Action::AuditRead);
        let record = self.load(&draft, id).await?;
        let limit = limit.clamp(1, MAX_OWN_EVENTS_PAGE);
        let stored = self.store.audit_events_for_customer(&record.id, after, limit).await?;
        let next_after = (stored.len() == limit).then(|| stored.last().map(|(seq, _)| *seq)).flatten();
        let events = stored
            .iter()
            .map(|(seq, bytes)| {
                serde_json::from_slice(bytes)
                    .map_err(|e| VaultError::Internal(format!("stored event {seq} unreadable: {e}")))
            })
            .collect::<Result<Vec<Value>, _>>()?;
        self.record(draft).await?;
        Ok(OwnEvents { events, next_after })
    }

    /// The receipt of event `seq`, if it is about the caller (`GET /v1/me/events/{seq}/receipt`):
    /// the event as stored, its inclusion proof, and the newest signed checkpoint if it covers
    /// `seq`, else a checkpoint signed now.
    #[tracing::instrument(skip_all)]
    pub async fn own_receipt(&self, ctx: &RequestContext, seq: u64) -> Result<Receipt, VaultError> {
        let (draft, id) = self.own_draft(ctx, Action::AuditRead);
        let record = self.load(&draft, id).await?;
        let stored = self.store.audit_events(seq, 1).await?;
        let own = stored.into_iter().find(|(s, _)| *s == seq).and_then(|(_, bytes)| {
            let event: Event = serde_json::from_slice(&bytes).ok()?;
            let about = event.customer_id.as_deref() == Some(record.id.to_string().as_str());
            about.then_some(bytes)
        });
        let Some(bytes) = own else {
            return self.refuse(draft.failed(["not_found"]), VaultError::NotFound).await;
        };
        let event: Value = serde_json::from_slice(&bytes)
            .map_err(|e| VaultError::Internal(format!("stored event {seq} unreadable: {e}")))?;
        self.record(draft).await?;
        let checkpoint = match self.audit.latest_checkpoint().await {
            Some(signed) if signed.checkpoint.size > seq => signed,
            _ => match self.audit.checkpoint().await {
                Ok(Some(signed)) => signed,
                Ok(None) => return Err(VaultError::Internal("no checkpoint after an append".into())),
                Err(e) => return Err(audit_failure(e)),
            },
        };
        let proof = self
            .audit
            .inclusion_proof(seq, checkpoint.checkpoint.size)
            .await
            .map_err(|e| VaultError::Internal(format!("inclusion proof of event {seq}: {e}")))?;
        Ok(Receipt { event, index: seq, proof, checkpoint, key: self.audit.verifier_key().clone() })
    }
}
