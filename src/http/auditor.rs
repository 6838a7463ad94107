//! Routes for auditors (`role = "auditor"`): `/v1/audit`. Every call is itself audited, including
//! calls refused for bad parameters (400, recorded as a failed `audit.read`).

use std::collections::HashMap;

use axum::Json;
use axum::extract::{RawQuery, State};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::AppState;
use super::error::{ApiError, ErrorBody};
use super::extract::AuditorCaller;
use crate::audit::checkpoint::{SignedCheckpoint, VerifierKey};
use crate::audit::merkle::Hash;
use crate::domain::Timestamp;
use crate::vault::{EventQuery, RequestContext};

/// Most leaf hashes one `GET /v1/audit/leaves` page returns.
const MAX_LEAVES_PAGE: usize = 10_000;

/// The auditor's routes, one `routes!` per path.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(events))
        .routes(routes!(checkpoint))
        .routes(routes!(key))
        .routes(routes!(inclusion))
        .routes(routes!(consistency))
        .routes(routes!(leaves))
}

/// One audit event, exactly as stored and hashed into its leaf (DESIGN §6). Field names, ids
/// and reason codes only, never a value. (Documentation only: events are served as stored.)
#[derive(ToSchema)]
#[schema(as = AuditEvent)]
#[allow(dead_code)]
pub(super) struct AuditEventSchema {
    /// The event's leaf index, counting from 0.
    seq: u64,
    /// RFC 3339 UTC with milliseconds.
    #[schema(format = DateTime)]
    time: String,
    /// What was done, e.g. `customer.read`, `disclosure`, `auth.denied`.
    action: String,
    /// `allowed`, `denied` or `failed`.
    outcome: String,
    /// Who asked.
    actor: AuditActorSchema,
    /// The customer concerned.
    #[schema(nullable = false, format = Uuid)]
    customer_id: Option<String>,
    /// Field names concerned (payment methods as `payment_methods/<token>`).
    #[schema(nullable = false)]
    fields: Option<Vec<String>>,
    /// The declared purpose.
    #[schema(nullable = false)]
    purpose: Option<String>,
    /// The third party, for disclosures.
    #[schema(nullable = false)]
    recipient: Option<String>,
    /// Reason codes of a denial or failure (`field:code` for per-field reasons).
    #[schema(nullable = false)]
    reason: Option<Vec<String>>,
    /// The request's `X-Request-Id`.
    request_id: String,
}

/// The caller as recorded in an audit event.
#[derive(ToSchema)]
#[schema(as = AuditActor)]
#[allow(dead_code)]
pub(super) struct AuditActorSchema {
    /// `merchant`, `customer`, `auditor`, `anonymous` or `system`.
    role: String,
    /// The token's subject; `null` for anonymous callers.
    sub: Option<String>,
}

/// A page of audit events.
#[derive(Serialize, ToSchema)]
struct Events {
    /// Matching events in seq order.
    #[schema(value_type = Vec<AuditEventSchema>)]
    events: Vec<Value>,
    /// Pass as `after` for the next page; `null` at the end of the log.
    next_after: Option<u64>,
}

/// The newest signed checkpoint.
#[derive(Serialize, ToSchema)]
pub(super) struct Checkpoint {
    /// The log's origin line.
    pub(super) origin: String,
    /// Events covered.
    pub(super) tree_size: u64,
    /// The RFC 6962 root hash of those events, standard base64.
    pub(super) root_hash: String,
    /// The C2SP signed note (`tlog-checkpoint` body and Ed25519 signature line).
    pub(super) note: String,
}

/// The key checkpoints are signed with.
#[derive(Serialize, ToSchema)]
pub(super) struct AuditKey {
    /// The log's origin line, also the key name.
    pub(super) origin: String,
    /// The raw Ed25519 public key, standard base64.
    pub(super) public_key: String,
    /// The C2SP `signed-note` verifier key (`name+hash+base64`).
    pub(super) verifier_key: String,
}

impl From<SignedCheckpoint> for Checkpoint {
    fn from(signed: SignedCheckpoint) -> Self {
        Checkpoint {
            origin: signed.checkpoint.origin,
            tree_size: signed.checkpoint.size,
            root_hash: STANDARD.encode(signed.checkpoint.root),
            note: signed.note,
        }
    }
}

impl From<&VerifierKey> for AuditKey {
    fn from(key: &VerifierKey) -> Self {
        AuditKey {
            origin: key.name().to_owned(),
            public_key: STANDARD.encode(key.public_key()),
            verifier_key: key.to_string(),
        }
    }
}

/// An RFC 9162 inclusion proof.
#[derive(Serialize, ToSchema)]
pub(super) struct InclusionProof {
    /// The event's seq.
    pub(super) index: u64,
    /// The tree size the proof is for.
    pub(super) tree_size: u64,
    /// Sibling hashes from the leaf up, standard base64.
    pub(super) proof: Vec<String>,
}

/// An RFC 9162 consistency proof.
#[derive(Serialize, ToSchema)]
struct ConsistencyProof {
    /// The older tree size.
    from: u64,
    /// The newer tree size.
    to: u64,
    /// The proof hashes, standard base64.
    proof: Vec<String>,
}

/// A page of stored leaf hashes.
#[derive(Serialize, ToSchema)]
struct Leaves {
    /// The seq of the first hash.
    from: u64,
    /// Leaf hashes (`SHA-256(0x00 ‖ JCS(event))`), standard base64.
    leaf_hashes: Vec<String>,
    /// Pass as `from` for the next page; `null` at the end of the log.
    next_from: Option<u64>,
}

/// List audit events.
///
/// Filters combine; a page scans at most 10 000 stored events, so a narrow filter may answer
/// fewer than `limit` events with a `next_after` to continue from.
#[utoipa::path(
    get,
    path = "/v1/audit/events",
    operation_id = "list_audit_events",
    tag = "auditor",
    security(("bearer_jwt" = [])),
    params(
        ("customer_id" = Option<String>, Query, format = Uuid, description = "Only events about this customer"),
        ("action" = Option<String>, Query, description = "Only events with this action, e.g. `customer.read`"),
        ("since" = Option<String>, Query, format = DateTime, description = "Only events at or after this RFC 3339 time"),
        ("until" = Option<String>, Query, format = DateTime, description = "Only events before this RFC 3339 time"),
        ("after" = Option<u64>, Query, description = "Only events with a greater seq (the previous page's `next_after`)"),
        ("limit" = Option<u32>, Query, minimum = 1, maximum = 1000, description = "Page size, 1 to 1000 (default 100)"),
    ),
    responses(
        (status = 200, description = "A page of events", body = Events),
        (status = 400, description = "`bad_request`: an unknown, repeated or malformed parameter", body = ErrorBody),
    )
)]
async fn events(
    State(state): State<AppState>,
    AuditorCaller(ctx): AuditorCaller,
    RawQuery(query): RawQuery,
) -> Result<Json<Events>, ApiError> {
    let q = match event_query(query.as_deref()) {
        Ok(q) => q,
        Err(message) => return Err(state.vault.audit_bad_request(&ctx, message).await.into()),
    };
    let page = state.vault.audit_events(&ctx, q).await?;
    Ok(Json(Events { events: page.events, next_after: page.next_after }))
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

/// The newest signed checkpoint.
///
/// Signs a new one first when the log grew since the newest; a checkpoint only ever covers
/// events already durable. It covers this call's own `audit.read` event.
#[utoipa::path(
    get,
    path = "/v1/audit/checkpoint",
    operation_id = "audit_checkpoint",
    tag = "auditor",
    security(("bearer_jwt" = [])),
    responses(
        (status = 200, description = "The newest checkpoint", body = Checkpoint),
        (status = 400, description = "`bad_request`: this route takes no query parameter", body = ErrorBody),
    )
)]
async fn checkpoint(
    State(state): State<AppState>,
    AuditorCaller(ctx): AuditorCaller,
    RawQuery(query): RawQuery,
) -> Result<Json<Checkpoint>, ApiError> {
    no_params(&state, &ctx, query.as_deref()).await?;
    let signed = state.vault.audit_checkpoint(&ctx).await?;
    Ok(Json(Checkpoint::from(signed)))
}

/// The log's public key, to pin once and verify checkpoints with.
#[utoipa::path(
    get,
    path = "/v1/audit/key",
    operation_id = "audit_key",
    tag = "auditor",
    security(("bearer_jwt" = [])),
    responses(
        (status = 200, description = "The verifier key", body = AuditKey),
        (status = 400, description = "`bad_request`: this route takes no query parameter", body = ErrorBody),
    )
)]
async fn key(
    State(state): State<AppState>,
    AuditorCaller(ctx): AuditorCaller,
    RawQuery(query): RawQuery,
) -> Result<Json<AuditKey>, ApiError> {
    no_params(&state, &ctx, query.as_deref()).await?;
    let key = state.vault.audit_key(&ctx).await?;
    Ok(Json(AuditKey::from(&key)))
}

/// The inclusion proof of one event in a tree size (RFC 9162 §2.1.3).
#[utoipa::path(
    get,
    path = "/v1/audit/proofs/inclusion",
    operation_id = "inclusion_proof",
    tag = "auditor",
    security(("bearer_jwt" = [])),
    params(
        ("index" = u64, Query, description = "The event's seq"),
        ("tree_size" = u64, Query, minimum = 1, description = "A tree size greater than `index`, at most the log's size (else 400)"),
    ),
    responses(
        (status = 200, description = "The proof", body = InclusionProof),
        (status = 400, description = "`bad_request`: a missing or malformed parameter, or sizes out of range", body = ErrorBody),
    )
)]
async fn inclusion(
    State(state): State<AppState>,
    AuditorCaller(ctx): AuditorCaller,
    RawQuery(query): RawQuery,
) -> Result<Json<InclusionProof>, ApiError> {
    let parsed = params(query.as_deref(), &["index", "tree_size"])
        .and_then(|p| Ok((number(&p, "index")?, number(&p, "tree_size")?)));
    let (index, tree_size) = match parsed {
        Ok(v) => v,
        Err(message) => return Err(state.vault.audit_bad_request(&ctx, message).await.into()),
    };
    let proof = state.vault.audit_inclusion_proof(&ctx, index, tree_size).await?;
    Ok(Json(InclusionProof { index, tree_size, proof: encode(&proof) }))
}

/// The consistency proof between two tree sizes (RFC 9162 §2.1.4).
#[utoipa::path(
    get,
    path = "/v1/audit/proofs/consistency",
    operation_id = "consistency_proof",
    tag = "auditor",
    security(("bearer_jwt" = [])),
    params(
        ("from" = u64, Query, minimum = 1, description = "The older tree size, at least 1"),
        ("to" = u64, Query, minimum = 1, description = "The newer tree size, at least `from` and at most the log's size (else 400)"),
    ),
    responses(
        (status = 200, description = "The proof (empty when `from` equals `to`)", body = ConsistencyProof),
        (status = 400, description = "`bad_request`: a missing or malformed parameter, or sizes out of range", body = ErrorBody),
    )
)]
async fn consistency(
    State(state): State<AppState>,
    AuditorCaller(ctx): AuditorCaller,
    RawQuery(query): RawQuery,
) -> Result<Json<ConsistencyProof>, ApiError> {
    let parsed =
        params(query.as_deref(), &["from", "to"]).and_then(|p| Ok((number(&p, "from")?, number(&p, "to")?)));
    let (from, to) = match parsed {
        Ok(v) => v,
        Err(message) => return Err(state.vault.audit_bad_request(&ctx, message).await.into()),
    };
    let proof = state.vault.audit_consistency_proof(&ctx, from, to).await?;
    Ok(Json(ConsistencyProof { from, to, proof: encode(&proof) }))
}

/// Stored leaf hashes, so an offline verifier can name an altered event.
///
/// Not in the DESIGN table; `custodia audit export` saves them for `audit verify --leaves`.
#[utoipa::path(
    get,
    path = "/v1/audit/leaves",
    operation_id = "leaf_hashes",
    tag = "auditor",
    security(("bearer_jwt" = [])),
    params(
        ("from" = Option<u64>, Query, description = "The first seq (default 0), at most the log's size (else 400)"),
        ("limit" = Option<u32>, Query, minimum = 1, maximum = 10000, description = "Page size, 1 to 10 000 (default 1000)"),
    ),
    responses(
        (status = 200, description = "A page of leaf hashes", body = Leaves),
        (status = 400, description = "`bad_request`: an unknown or malformed parameter, or `from` beyond the log", body = ErrorBody),
    )
)]
async fn leaves(
    State(state): State<AppState>,
    AuditorCaller(ctx): AuditorCaller,
    RawQuery(query): RawQuery,
) -> Result<Json<Leaves>, ApiError> {
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
    Ok(Json(Leaves { from, leaf_hashes: encode(&hashes), next_from }))
}

/// Refuses (and records) any query parameter on a route that takes none.
async fn no_params(state: &AppState, ctx: &RequestContext, query: Option<&str>) -> Result<(), ApiError> {
    match params(query, &[]) {
        Ok(_) => Ok(()),
        Err(message) => Err(state.vault.audit_bad_request(ctx, message).await.into()),
    }
}

/// The query parameters, each at most once and each one of `allowed`.
pub(super) fn params(raw: Option<&str>, allowed: &[&str]) -> Result<HashMap<String, String>, String> {
    let mut out = HashMap::new();
    for (key, value) in form_urlencoded::parse(raw.unwrap_or_default().as_bytes()) {
        if !allowed.contains(&key.as_ref()) {
            return Err(format!("unknown query parameter{}", crate::vault::shown_name(&key)));
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

pub(super) fn optional_number(params: &HashMap<String, String>, name: &str) -> Result<Option<u64>, String> {
    params
        .get(name)
        .map(|v| v.parse().map_err(|_| format!("`{name}` must be a non-negative integer")))
        .transpose()
}

/// Hashes as standard base64, as every proof in the API carries them.
pub(super) fn encode(hashes: &[Hash]) -> Vec<String> {
    hashes.iter().map(|h| STANDARD.encode(h)).collect()
}
