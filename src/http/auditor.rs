//! Routes for auditors (`role = "auditor"`): `/v1/audit`. Every call is itself audited, including
//! calls refused for bad parameters (400, recorded as a failed `audit.read`).

use std::collections::HashMap;

use axum::extract::{RawQuery, State};
use axum::routing::get;
use axum::{Json, Router};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde_json::{Value, json};

use super::AppState;
use super::error::ApiError;
use super::extract::AuditorCaller;
use crate::audit::merkle::Hash;
use crate::domain::Timestamp;
use crate::vault::{EventQuery, RequestContext};

/// Most leaf hashes one `GET /v1/audit/leaves` page returns.
const MAX_LEAVES_PAGE: usize = 10_000;

/// The auditor's routes.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/audit/events", get(events))
        .route("/v1/audit/checkpoint", get(checkpoint))
        .route("/v1/audit/key", get(key))
        .route("/v1/audit/proofs/inclusion", get(inclusion))
        .route("/v1/audit/proofs/consistency", get(consistency))
        .route("/v1/audit/leaves", get(leaves))
}

async fn events(
    State(state): State<AppState>,
    AuditorCaller(ctx): AuditorCaller,
    RawQuery(query): RawQuery,
) -> Result<Json<Value>, ApiError> {
    let q = match event_query(query.as_deref()) {
        Ok(q) => q,
        Err(message) => return Err(state.vault.audit_bad_request(&ctx, message).await.into()),
    };
    let page = state.vault.audit_events(&ctx, q).await?;
    Ok(Json(json!({ "events": page.events, "next_after": page.next_after })))
}

fn event_query(raw: Option<&str>) -> Result<EventQuery, String> {
    let params = params(raw, &["customer_id", "action", "since", "until", "after", "limit"])?;
    let time = |name: &str| -> Result<Option<Timestamp>, String> {
        params
            .get(name)
            .map(|v| Timestamp::parse_rfc3339(v).ok_or_else(|| format!("`{name}` must be an RFC 3339 time")))
            .transpose()
    };
    let mut q = EventQuery {
        customer_id: params
            .get("customer_id")
            .map(|v| v.parse().map_err(|_| "`customer_id` must be a customer id".to_owned()))
            .transpose()?,
        action: params.get("action").cloned(),
        since: time("since")?,
        until: time("until")?,
        after: optional_number(&params, "after")?,
        ..EventQuery::default()
    };
    if let Some(limit) = params.get("limit") {
        q.limit = limit.parse().ok().filter(|n| (1..=1000).contains(n)).ok_or("`limit` must be 1 to 1000")?;
    }
    Ok(q)
}

async fn checkpoint(
    State(state): State<AppState>,
    AuditorCaller(ctx): AuditorCaller,
    RawQuery(query): RawQuery,
) -> Result<Json<Value>, ApiError> {
    no_params(&state, &ctx, query.as_deref()).await?;
    let signed = state.vault.audit_checkpoint(&ctx).await?;
    Ok(Json(json!({
        "origin": signed.checkpoint.origin,
        "tree_size": signed.checkpoint.size,
        "root_hash": STANDARD.encode(signed.checkpoint.root),
        "note": signed.note,
    })))
}

async fn key(
    State(state): State<AppState>,
    AuditorCaller(ctx): AuditorCaller,
    RawQuery(query): RawQuery,
) -> Result<Json<Value>, ApiError> {
    no_params(&state, &ctx, query.as_deref()).await?;
    let key = state.vault.audit_key(&ctx).await?;
    Ok(Json(json!({
        "origin": key.name(),
        "public_key": STANDARD.encode(key.public_key()),
        "verifier_key": key.to_string(),
    })))
}

async fn inclusion(
    State(state): State<AppState>,
    AuditorCaller(ctx): AuditorCaller,
    RawQuery(query): RawQuery,
) -> Result<Json<Value>, ApiError> {
    let parsed = params(query.as_deref(), &["index", "tree_size"])
        .and_then(|p| Ok((number(&p, "index")?, number(&p, "tree_size")?)));
    let (index, tree_size) = match parsed {
        Ok(v) => v,
        Err(message) => return Err(state.vault.audit_bad_request(&ctx, message).await.into()),
    };
    let proof = state.vault.audit_inclusion_proof(&ctx, index, tree_size).await?;
    Ok(Json(json!({ "index": index, "tree_size": tree_size, "proof": encode(&proof) })))
}

async fn consistency(
    State(state): State<AppState>,
    AuditorCaller(ctx): AuditorCaller,
    RawQuery(query): RawQuery,
) -> Result<Json<Value>, ApiError> {
    let parsed =
        params(query.as_deref(), &["from", "to"]).and_then(|p| Ok((number(&p, "from")?, number(&p, "to")?)));
    let (from, to) = match parsed {
        Ok(v) => v,
        Err(message) => return Err(state.vault.audit_bad_request(&ctx, message).await.into()),
    };
    let proof = state.vault.audit_consistency_proof(&ctx, from, to).await?;
    Ok(Json(json!({ "from": from, "to": to, "proof": encode(&proof) })))
}

/// `GET /v1/audit/leaves?from=&limit=`: the stored leaf hashes, so an offline verifier can name
/// an altered event instead of only reporting a root mismatch (`custodia audit export` saves
/// them). Not in the DESIGN table; documented in the README.
async fn leaves(
    State(state): State<AppState>,
    AuditorCaller(ctx): AuditorCaller,
    RawQuery(query): RawQuery,
) -> Result<Json<Value>, ApiError> {
    let parsed = params(query.as_deref(), &["from", "limit"]).and_then(|p| {
        let from = optional_number(&p, "from")?.unwrap_or(0);
        let limit = match p.get("limit") {
            None => 1000,
            Some(v) => v
                .parse()
                .ok()
                .filter(|n| (1..=MAX_LEAVES_PAGE).contains(n))
                .ok_or(format!("`limit` must be 1 to {MAX_LEAVES_PAGE}"))?,
        };
        Ok((from, limit))
    });
    let (from, limit) = match parsed {
        Ok(v) => v,
        Err(message) => return Err(state.vault.audit_bad_request(&ctx, message).await.into()),
    };
    let hashes = state.vault.audit_leaf_hashes(&ctx, from, limit).await?;
    let next_from = (hashes.len() == limit).then(|| from.saturating_add(limit as u64));
    Ok(Json(json!({ "from": from, "leaf_hashes": encode(&hashes), "next_from": next_from })))
}

/// Refuses (and records) any query parameter on a route that takes none.
async fn no_params(state: &AppState, ctx: &RequestContext, query: Option<&str>) -> Result<(), ApiError> {
    match params(query, &[]) {
        Ok(_) => Ok(()),
        Err(message) => Err(state.vault.audit_bad_request(ctx, message).await.into()),
    }
}

/// The query parameters, each at most once and each one of `allowed`.
fn params(raw: Option<&str>, allowed: &[&str]) -> Result<HashMap<String, String>, String> {
    let mut out = HashMap::new();
    for (key, value) in form_urlencoded::parse(raw.unwrap_or_default().as_bytes()) {
        if !allowed.contains(&key.as_ref()) {
            return Err(format!("unknown query parameter `{}`", printable(&key)));
        }
        if out.insert(key.to_string(), value.into_owned()).is_some() {
            return Err(format!("query parameter `{key}` given twice"));
        }
    }
    Ok(out)
}

fn number(params: &HashMap<String, String>, name: &str) -> Result<u64, String> {
    optional_number(params, name)?.ok_or_else(|| format!("`{name}` is required"))
}

fn optional_number(params: &HashMap<String, String>, name: &str) -> Result<Option<u64>, String> {
    params
        .get(name)
        .map(|v| v.parse().map_err(|_| format!("`{name}` must be a non-negative integer")))
        .transpose()
}

/// A caller-supplied parameter name, shortened and stripped of control characters for the
/// error message.
fn printable(name: &str) -> String {
    name.chars().filter(|c| !c.is_control()).take(40).collect()
}

fn encode(hashes: &[Hash]) -> Vec<String> {
    hashes.iter().map(|h| STANDARD.encode(h)).collect()
}
