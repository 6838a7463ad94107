//! Routes for auditors (`role = "auditor"`): `/v1/audit`. Every call is itself audited.

use axum::extract::{RawQuery, State};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;

use super::AppState;
use super::error::ApiError;
use super::extract::AuditorCaller;
use crate::vault::EventQuery;

/// The auditor's routes.
pub fn routes() -> Router<AppState> {
    Router::new().route("/v1/audit/events", get(events))
}

async fn events(
    State(state): State<AppState>,
    AuditorCaller(ctx): AuditorCaller,
    RawQuery(query): RawQuery,
) -> Result<Json<serde_json::Value>, ApiError> {
    let mut q = EventQuery::default();
    for (key, value) in form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
        let bad = |what: &str| ApiError::bad_request("bad_request", format!("`{key}` must be {what}"));
        match key.as_ref() {
            "customer_id" => q.customer_id = Some(value.parse().map_err(|_| bad("a customer id"))?),
            "action" => q.action = Some(value.into_owned()),
            "since" => {
                q.since = Some(
                    crate::domain::Timestamp::parse_rfc3339(&value).ok_or_else(|| bad("an RFC 3339 time"))?,
                )
            }
            "until" => {
                q.until = Some(
                    crate::domain::Timestamp::parse_rfc3339(&value).ok_or_else(|| bad("an RFC 3339 time"))?,
                )
            }
            "after" => q.after = Some(value.parse().map_err(|_| bad("a sequence number"))?),
            "limit" => {
                q.limit =
                    value.parse().ok().filter(|n| (1..=1000).contains(n)).ok_or_else(|| bad("1 to 1000"))?
            }
            _ => {
                return Err(ApiError::bad_request("bad_request", format!("unknown query parameter `{key}`")));
            }
        }
    }
    let page = state.vault.audit_events(&ctx, q).await?;
    Ok(Json(json!({ "events": page.events, "next_after": page.next_after })))
}
