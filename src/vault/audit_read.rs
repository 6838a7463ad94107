//! Reading and proving the audit log, for auditors. Every call is itself audited (`audit.read`):
//! allowed, or failed with reason `bad_request` / `out_of_range` when the parameters are wrong.
//! Nothing is answered unless its event is durable.

use serde_json::Value;

use super::{RequestContext, Vault, VaultError, audit_failure};
use crate::audit::checkpoint::{SignedCheckpoint, VerifierKey};
use crate::audit::merkle::Hash;
use crate::audit::{Action, AuditError, Event, EventDraft};
use crate::domain::{CustomerId, Timestamp};

/// How many stored events one page request may scan at most, so a narrow filter over a long
/// log answers in bounded time; `next_after` lets the caller continue.
const MAX_SCAN: usize = 10_000;

/// Stored events read per store call while a filter is applied (at least the page size): few
/// calls when matches are rare, little read past the page when they are common.
const SCAN_CHUNK: usize = 256;

/// Filters and cursor of `GET /v1/audit/events`.
#[derive(Debug, Clone)]
pub struct EventQuery {
    /// Only events about this customer.
    pub customer_id: Option<CustomerId>,
    /// Only events with this action (e.g. `customer.read`).
    pub action: Option<String>,
    /// Only events at or after this time.
    pub since: Option<Timestamp>,
    /// Only events before this time.
    pub until: Option<Timestamp>,
    /// Only events with a greater seq.
    pub after: Option<u64>,
    /// Page size (the HTTP API allows 1 to 1000); 0 is read as 1.
    pub limit: usize,
}

impl Default for EventQuery {
    fn default() -> Self {
        EventQuery { customer_id: None, action: None, since: None, until: None, after: None, limit: 100 }
    }
}

/// One page of events.
#[derive(Debug)]
pub struct EventPage {
    /// Events as stored (their canonical JSON parsed back).
    pub events: Vec<Value>,
    /// Cursor for the next page: the seq of the last event returned when the page is full,
    /// or of the last event scanned when the scan bound was reached first. `None` when the
    /// scan reached the end of the log (or of the customer's history).
    pub next_after: Option<u64>,
}

/// The filters of a query, prepared once per page.
struct Filter {
    customer: Option<String>,
    /// `Some(None)`: an action no stored event can have (every stored event parses as a
    /// known [`Action`]), so nothing matches.
    action: Option<Option<Action>>,
    since: Option<Timestamp>,
    until: Option<Timestamp>,
}

impl Filter {
    fn of(query: &EventQuery) -> Self {
        Filter {
            customer: query.customer_id.map(|c| c.to_string()),
            action: query.action.as_ref().map(|a| serde_json::from_value(Value::String(a.clone())).ok()),
            since: query.since,
            until: query.until,
        }
    }

    /// Whether a stored event passes every filter.
    fn keeps(&self, event: &Event) -> bool {
        let time = || Timestamp::parse_rfc3339(&event.time);
        self.customer.as_ref().is_none_or(|c| event.customer_id.as_ref() == Some(c))
            && self.action.is_none_or(|a| a == Some(event.action))
            && self.since.is_none_or(|s| time().is_some_and(|t| t >= s))
            && self.until.is_none_or(|u| time().is_some_and(|t| t < u))
    }

    /// Whether every event the store read returns is kept: no filter, or only `customer_id`,
    /// which the per-customer index applies.
    fn store_read_is_exact(&self) -> bool {
        self.action.is_none() && self.since.is_none() && self.until.is_none()
    }
}

impl Vault {
    /// A page of audit events matching `query`, and the call's own `audit.read` event.
    ///
    /// Reads only what the page needs: exactly `limit` events when every event read is kept
    /// (no filter, or only `customer_id`, served from the per-customer index), otherwise
    /// chunks of `max(limit, 256)` until the page is full, the log ends, or 10 000 events were
    /// scanned. An `action` that names no known action matches nothing: an empty last page.
    pub async fn audit_events(
        &self,
        ctx: &RequestContext,
        query: EventQuery,
    ) -> Result<EventPage, VaultError> {
        let page = self.event_page(&query).await?;
        let mut draft = EventDraft::new(Action::AuditRead, &ctx.principal, &ctx.request_id);
        if let Some(c) = query.customer_id {
            draft = draft.customer(c);
        }
        self.record(draft).await?;
        Ok(page)
    }

    async fn event_page(&self, query: &EventQuery) -> Result<EventPage, VaultError> {
        let filter = Filter::of(query);
        if filter.action == Some(None) {
            return Ok(EventPage { events: Vec::new(), next_after: None });
        }
        let limit = query.limit.max(1);
        let chunk = if filter.store_read_is_exact() { limit } else { limit.max(SCAN_CHUNK) };
        let mut events = Vec::new();
        // The seq of the last event scanned: where the next store read continues.
        let mut cursor = query.after;
        let mut scanned = 0;
        loop {
            let want = chunk.min(MAX_SCAN - scanned);
            let stored = match &query.customer_id {
                Some(c) => self.store.audit_events_for_customer(c, cursor, want).await?,
                None => self.store.audit_events(cursor.map_or(0, |a| a.saturating_add(1)), want).await?,
            };
            let at_end = stored.len() < want;
            scanned += stored.len();
            for (seq, bytes) in stored {
                cursor = Some(seq);
                let event: Event = serde_json::from_slice(&bytes)
                    .map_err(|e| VaultError::Internal(format!("stored event {seq} unreadable: {e}")))?;
                if filter.keeps(&event) {
                    events.push(
                        serde_json::from_slice(&bytes).map_err(|e| VaultError::Internal(e.to_string()))?,
                    );
                    if events.len() == limit {
                        return Ok(EventPage { events, next_after: Some(seq) });
                    }
                }
            }
            if at_end {
                return Ok(EventPage { events, next_after: None });
            }
            // invariant: `want` never exceeds what is left of MAX_SCAN, so this ends the scan
            // after exactly MAX_SCAN events, as one read of MAX_SCAN did before.
            if scanned >= MAX_SCAN {
                return Ok(EventPage { events, next_after: cursor });
            }
        }
    }
}

impl Vault {
    /// The newest signed checkpoint. The call's own `audit.read` event is recorded first, so the
    /// checkpoint covers it.
    pub async fn audit_checkpoint(&self, ctx: &RequestContext) -> Result<SignedCheckpoint, VaultError> {
        self.record(audit_read(ctx)).await?;
        match self.audit.checkpoint().await {
            Ok(Some(signed)) => Ok(signed),
            Ok(None) => Err(VaultError::Internal("no checkpoint after an append".into())),
            Err(e) => Err(audit_failure(e)),
        }
    }

    /// The public key checkpoints are signed with.
    pub async fn audit_key(&self, ctx: &RequestContext) -> Result<VerifierKey, VaultError> {
        self.record(audit_read(ctx)).await?;
        Ok(self.audit.verifier_key().clone())
    }

    /// The inclusion proof of event `index` in the tree of `tree_size` events.
    pub async fn audit_inclusion_proof(
        &self,
        ctx: &RequestContext,
        index: u64,
        tree_size: u64,
    ) -> Result<Vec<Hash>, VaultError> {
        let proof = self.audit.inclusion_proof(index, tree_size).await;
        self.answer_audit_read(ctx, proof).await
    }

    /// The consistency proof between the trees of `from` and `to` events.
    pub async fn audit_consistency_proof(
        &self,
        ctx: &RequestContext,
        from: u64,
        to: u64,
    ) -> Result<Vec<Hash>, VaultError> {
        let proof = self.audit.consistency_proof(from, to).await;
        self.answer_audit_read(ctx, proof).await
    }

    /// Up to `limit` stored leaf hashes from seq `from` on (fewer at the end of the log).
    pub async fn audit_leaf_hashes(
        &self,
        ctx: &RequestContext,
        from: u64,
        limit: usize,
    ) -> Result<Vec<Hash>, VaultError> {
        let leaves = self.audit.leaf_hashes(from, limit).await;
        self.answer_audit_read(ctx, leaves).await
    }

    /// Records an auditor call refused for malformed parameters (`audit.read`, failed,
    /// `bad_request`) and returns the error to answer with (503 if even that is not durable).
    pub async fn audit_bad_request(&self, ctx: &RequestContext, message: String) -> VaultError {
        match self.record(audit_read(ctx).failed(["bad_request"])).await {
            Ok(_) => VaultError::BadRequest(message),
            Err(e) => e,
        }
    }

    /// Records the `audit.read` event of a computed answer, then returns it; out-of-range
    /// requests are recorded as failed and answered 400.
    async fn answer_audit_read<T>(
        &self,
        ctx: &RequestContext,
        result: Result<T, AuditError>,
    ) -> Result<T, VaultError> {
        match result {
            Ok(value) => {
                self.record(audit_read(ctx)).await?;
                Ok(value)
            }
            Err(AuditError::OutOfRange(message)) => {
                self.refuse(audit_read(ctx).failed(["out_of_range"]), VaultError::BadRequest(message)).await
            }
            Err(AuditError::Corrupt(detail)) => {
                self.refuse(audit_read(ctx).failed(["internal"]), VaultError::Internal(detail)).await
            }
            Err(e) => Err(audit_failure(e)),
        }
    }
}

fn audit_read(ctx: &RequestContext) -> EventDraft {
    EventDraft::new(Action::AuditRead, &ctx.principal, &ctx.request_id)
}
