//! Reading the audit log, for auditors. Reads are themselves audited (`audit.read`).

use serde_json::Value;

use super::{RequestContext, Vault, VaultError};
use crate::audit::{Action, Event, EventDraft};
use crate::domain::{CustomerId, Timestamp};

/// How many stored events one page request may scan at most, so a narrow filter over a long
/// log answers in bounded time; `next_after` lets the caller continue.
const MAX_SCAN: usize = 10_000;

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
    /// Page size.
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
    /// Cursor for the next page; `None` at the end of the log.
    pub next_after: Option<u64>,
}

impl Vault {
    /// A page of audit events matching `query`.
    pub async fn audit_events(
        &self,
        ctx: &RequestContext,
        query: EventQuery,
    ) -> Result<EventPage, VaultError> {
        let start = query.after.map_or(0, |a| a.saturating_add(1));
        let stored = self.store.audit_events(start, MAX_SCAN).await?;
        let scanned_to_end = stored.len() < MAX_SCAN;
        let customer = query.customer_id.map(|c| c.to_string());
        let mut events = Vec::new();
        let mut last_seen = None;
        for (seq, bytes) in stored {
            last_seen = Some(seq);
            let event: Event = serde_json::from_slice(&bytes)
                .map_err(|e| VaultError::Internal(format!("stored event {seq} unreadable: {e}")))?;
            let time = Timestamp::parse_rfc3339(&event.time);
            let keep = customer.as_ref().is_none_or(|c| event.customer_id.as_ref() == Some(c))
                && query.action.as_ref().is_none_or(|a| {
                    serde_json::to_value(event.action).ok().and_then(|v| v.as_str().map(|s| s == a))
                        == Some(true)
                })
                && query.since.is_none_or(|s| time.is_some_and(|t| t >= s))
                && query.until.is_none_or(|u| time.is_some_and(|t| t < u));
            if keep {
                events.push(serde_json::from_slice(&bytes).map_err(|e| VaultError::Internal(e.to_string()))?);
                if events.len() == query.limit {
                    break;
                }
            }
        }
        let next_after = if events.len() == query.limit || !scanned_to_end { last_seen } else { None };
        let mut draft = EventDraft::new(Action::AuditRead, &ctx.principal, &ctx.request_id);
        if let Some(c) = query.customer_id {
            draft = draft.customer(c);
        }
        self.record(draft).await?;
        Ok(EventPage { events, next_after })
    }
}
