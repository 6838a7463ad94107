//! Routes for data subjects (`role = "customer"`): `/v1/me`. Every call acts on the id in the
//! token's `sub`; no route takes a customer id, so another customer's record is unreachable.

use axum::Json;
use axum::extract::{RawQuery, State};
use axum::response::IntoResponse;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::AppState;
use super::auditor::{
    AuditEventSchema, AuditKey, Checkpoint, InclusionProof, encode, optional_number, params,
};
use super::error::{ApiError, ErrorBody};
use super::extract::{ApiJson, ApiPath, CustomerCaller};
use super::merchant::{ConsentBody, CustomerPatch};
use crate::vault::{
    ConsentView, CustomerView, ErasureReceipt, Export, MAX_OWN_EVENTS_PAGE, OwnProfile, RequestContext,
};

/// The customer's routes, one `routes!` per path.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(me, rectify, erase))
        .routes(routes!(export))
        .routes(routes!(consents))
        .routes(routes!(consent))
        .routes(routes!(objection))
        .routes(routes!(restriction))
        .routes(routes!(own_events))
        .routes(routes!(receipt))
}

/// Body and answer of an objection change (Art. 21).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct Objection {
    /// Object (`true`) or lift the objection (`false`).
    objected: bool,
}

/// The objection now in force for a purpose.
#[derive(Debug, Serialize, ToSchema)]
struct ObjectionState {
    /// The purpose.
    purpose: String,
    /// Whether the customer objects to it.
    objected: bool,
}

/// Body and answer of a restriction change (Art. 18).
#[derive(Debug, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct Restriction {
    /// Restrict (`true`) or lift the restriction (`false`).
    restricted: bool,
}

/// The customer's newest consent record per purpose.
#[derive(Debug, Serialize, ToSchema)]
struct Consents {
    /// One record per purpose the customer ever decided on.
    consents: Vec<ConsentView>,
}

/// A page of the caller's own audit events.
#[derive(Serialize, ToSchema)]
struct OwnEvents {
    /// Events about the caller in seq order, exactly as stored and hashed into their leaves.
    #[schema(value_type = Vec<AuditEventSchema>)]
    events: Vec<serde_json::Value>,
    /// Pass as `after` for the next page; `null` at the end of the caller's history.
    next_after: Option<u64>,
}

/// Everything needed to verify one event about the caller without trusting the server: the
/// event, its RFC 9162 inclusion proof, the signed checkpoint the proof leads to and the key.
#[derive(Serialize, ToSchema)]
struct Receipt {
    /// The event exactly as stored; its leaf hash is SHA-256(0x00 ‖ JCS(event)).
    #[schema(value_type = AuditEventSchema)]
    event: serde_json::Value,
    /// The inclusion proof of the event in the checkpoint's tree.
    inclusion: InclusionProof,
    /// The newest signed checkpoint (it covers this call's own `audit.read` event).
    checkpoint: Checkpoint,
    /// The key the checkpoint is signed with; compare it with the one the transparency report
    /// and the auditors publish.
    key: AuditKey,
}

/// The caller's own customer id, as text (the vault parses and checks it).
fn own_id(ctx: &RequestContext) -> &str {
    ctx.principal.sub.as_deref().unwrap_or_default()
}

/// See one's own data.
///
/// Every stored field unmasked, payment methods masked, the newest consent per purpose,
/// objections and the restriction flag.
#[utoipa::path(
    get,
    path = "/v1/me",
    operation_id = "read_own_profile",
    tag = "customer",
    security(("bearer_jwt" = [])),
    responses(
        (status = 200, description = "The caller's own record", body = OwnProfile),
        (status = 404, description = "`not_found`: the token's `sub` is not a live customer", body = ErrorBody),
    )
)]
async fn me(
    State(state): State<AppState>,
    CustomerCaller(ctx): CustomerCaller,
) -> Result<impl IntoResponse, ApiError> {
    Ok(Json(state.vault.own_profile(&ctx).await?))
}

/// Correct one's own data (Art. 16).
///
/// The same body as the merchant's update; `null` removes a field.
#[utoipa::path(
    patch,
    path = "/v1/me",
    operation_id = "rectify_own_profile",
    tag = "customer",
    security(("bearer_jwt" = [])),
    request_body = CustomerPatch,
    responses(
        (status = 200, description = "The fields just written", body = CustomerView),
        (status = 404, description = "`not_found`: the token's `sub` is not a live customer", body = ErrorBody),
        (status = 409, description = "`conflict`: a unique field's value belongs to another customer", body = ErrorBody),
        (status = 422, description = "`invalid_body`, `invalid_field` or `unknown_field`", body = ErrorBody),
    )
)]
async fn rectify(
    State(state): State<AppState>,
    CustomerCaller(ctx): CustomerCaller,
    ApiJson(patch): ApiJson<CustomerPatch>,
) -> Result<impl IntoResponse, ApiError> {
    Ok(Json(state.vault.update_customer(&ctx, own_id(&ctx), patch.fields, None).await?))
}

/// Erase oneself (Art. 17).
///
/// Afterwards the id answers 404 everywhere, and so does this token.
#[utoipa::path(
    delete,
    path = "/v1/me",
    operation_id = "erase_own_profile",
    tag = "customer",
    security(("bearer_jwt" = [])),
    responses(
        (status = 200, description = "Erased", body = ErasureReceipt),
        (status = 404, description = "`not_found`: the token's `sub` is not a live customer", body = ErrorBody),
    )
)]
async fn erase(
    State(state): State<AppState>,
    CustomerCaller(ctx): CustomerCaller,
) -> Result<impl IntoResponse, ApiError> {
    Ok(Json(state.vault.erase_customer(&ctx, own_id(&ctx), None).await?))
}

/// Export one's own data (Art. 15 and 20).
///
/// One JSON document: fields, payment methods (masked), consent history, disclosures made and
/// every access to this customer's data recorded in the audit log.
#[utoipa::path(
    get,
    path = "/v1/me/export",
    operation_id = "export_own_data",
    tag = "customer",
    security(("bearer_jwt" = [])),
    responses(
        (status = 200, description = "The export document", body = Export),
        (status = 404, description = "`not_found`: the token's `sub` is not a live customer", body = ErrorBody),
    )
)]
async fn export(
    State(state): State<AppState>,
    CustomerCaller(ctx): CustomerCaller,
) -> Result<impl IntoResponse, ApiError> {
    Ok(Json(state.vault.export(&ctx).await?))
}

/// See one's own consents: the newest record per purpose.
#[utoipa::path(
    get,
    path = "/v1/me/consents",
    operation_id = "list_own_consents",
    tag = "customer",
    security(("bearer_jwt" = [])),
    responses(
        (status = 200, description = "The newest consent record per purpose", body = Consents),
        (status = 404, description = "`not_found`: the token's `sub` is not a live customer", body = ErrorBody),
    )
)]
async fn consents(
    State(state): State<AppState>,
    CustomerCaller(ctx): CustomerCaller,
) -> Result<impl IntoResponse, ApiError> {
    let consents = state.vault.own_consents(&ctx).await?;
    Ok(Json(Consents { consents }))
}

/// Grant or withdraw one's consent to a purpose.
#[utoipa::path(
    put,
    path = "/v1/me/consents/{purpose}",
    operation_id = "update_own_consent",
    tag = "customer",
    security(("bearer_jwt" = [])),
    params(("purpose" = String, Path, description = "A declared purpose")),
    request_body = ConsentBody,
    responses(
        (status = 200, description = "The new consent record", body = ConsentView),
        (status = 400, description = "`malformed_json`, `unknown_purpose`", body = ErrorBody),
        (status = 404, description = "`not_found`: the token's `sub` is not a live customer", body = ErrorBody),
        (status = 422, description = "`invalid_body` or `invalid_field`", body = ErrorBody),
    )
)]
async fn consent(
    State(state): State<AppState>,
    CustomerCaller(ctx): CustomerCaller,
    ApiPath(purpose): ApiPath<String>,
    ApiJson(body): ApiJson<ConsentBody>,
) -> Result<impl IntoResponse, ApiError> {
    Ok(Json(state.vault.update_consent(&ctx, own_id(&ctx), &purpose, body.into()).await?))
}

/// Object to a purpose, or lift the objection (Art. 21).
///
/// Possible for purposes whose basis is `legitimate_interests` or `public_task`, or that are
/// declared `direct_marketing`; any other purpose answers 422.
#[utoipa::path(
    put,
    path = "/v1/me/objections/{purpose}",
    operation_id = "update_own_objection",
    tag = "customer",
    security(("bearer_jwt" = [])),
    params(("purpose" = String, Path, description = "A declared purpose")),
    request_body = Objection,
    responses(
        (status = 200, description = "The objection now in force", body = ObjectionState),
        (status = 400, description = "`malformed_json`, `unknown_purpose`", body = ErrorBody),
        (status = 404, description = "`not_found`: the token's `sub` is not a live customer", body = ErrorBody),
        (status = 422, description = "`invalid_body`, or `invalid_field`: the purpose admits no objection", body = ErrorBody),
    )
)]
async fn objection(
    State(state): State<AppState>,
    CustomerCaller(ctx): CustomerCaller,
    ApiPath(purpose): ApiPath<String>,
    ApiJson(body): ApiJson<Objection>,
) -> Result<impl IntoResponse, ApiError> {
    state.vault.update_objection(&ctx, own_id(&ctx), &purpose, body.objected).await?;
    Ok(Json(ObjectionState { purpose, objected: body.objected }))
}

/// Restrict processing, or lift the restriction (Art. 18).
///
/// While restricted, only purposes whose basis is `legal_obligation` may use the data.
#[utoipa::path(
    put,
    path = "/v1/me/restriction",
    operation_id = "update_own_restriction",
    tag = "customer",
    security(("bearer_jwt" = [])),
    request_body = Restriction,
    responses(
        (status = 200, description = "The restriction now in force", body = Restriction),
        (status = 404, description = "`not_found`: the token's `sub` is not a live customer", body = ErrorBody),
        (status = 422, description = "`invalid_body`", body = ErrorBody),
    )
)]
async fn restriction(
    State(state): State<AppState>,
    CustomerCaller(ctx): CustomerCaller,
    ApiJson(body): ApiJson<Restriction>,
) -> Result<impl IntoResponse, ApiError> {
    state.vault.update_restriction(&ctx, own_id(&ctx), body.restricted).await?;
    Ok(Json(Restriction { restricted: body.restricted }))
}

/// See the audit events about oneself.
///
/// Every event whose `customer_id` is the caller, exactly as the auditor's listing shows it, in
/// seq order. The call itself is recorded as an `audit.read` about the caller.
#[utoipa::path(
    get,
    path = "/v1/me/events",
    operation_id = "list_own_events",
    tag = "customer",
    security(("bearer_jwt" = [])),
    params(
        ("after" = Option<u64>, Query, description = "Only events with a greater seq (the previous page's `next_after`)"),
        ("limit" = Option<u32>, Query, minimum = 1, maximum = 1000, description = "Page size, 1 to 1000 (default 100)"),
    ),
    responses(
        (status = 200, description = "A page of the caller's events", body = OwnEvents),
        (status = 400, description = "`bad_request`: an unknown, repeated or malformed parameter", body = ErrorBody),
        (status = 404, description = "`not_found`: the token's `sub` is not a live customer", body = ErrorBody),
    )
)]
async fn own_events(
    State(state): State<AppState>,
    CustomerCaller(ctx): CustomerCaller,
    RawQuery(query): RawQuery,
) -> Result<impl IntoResponse, ApiError> {
    let parsed = params(query.as_deref(), &["after", "limit"]).and_then(|p| {
        let after = optional_number(&p, "after")?;
        let limit = match p.get("limit") {
            None => 100,
            Some(v) => v
                .parse()
                .ok()
                .filter(|n| (1..=MAX_OWN_EVENTS_PAGE).contains(n))
                .ok_or(format!("`limit` must be 1 to {MAX_OWN_EVENTS_PAGE}"))?,
        };
        Ok((after, limit))
    });
    let (after, limit) = parsed.map_err(|message| ApiError::bad_request("bad_request", message))?;
    let page = state.vault.own_events(&ctx, after, limit).await?;
    Ok(Json(OwnEvents { events: page.events, next_after: page.next_after }))
}

/// Get the receipt of one event about oneself.
///
/// The event, its inclusion proof and the signed checkpoint it verifies against, with the key:
/// recompute the leaf hash SHA-256(0x00 ‖ JCS(event)) (RFC 8785, RFC 9162), the root from the
/// proof, and the Ed25519 signature of the checkpoint note (C2SP signed-note). An event that
/// does not name the caller answers 404, like one that does not exist. The checkpoint is the
/// newest one already signed when it covers the event (no signature per call).
#[utoipa::path(
    get,
    path = "/v1/me/events/{seq}/receipt",
    operation_id = "own_event_receipt",
    tag = "customer",
    security(("bearer_jwt" = [])),
    params(("seq" = u64, Path, description = "The event's seq")),
    responses(
        (status = 200, description = "The receipt", body = Receipt),
        (status = 400, description = "`bad_request`: the seq is not a non-negative integer", body = ErrorBody),
        (status = 404, description = "`not_found`: no event with this seq is about the caller, or the caller is not a live customer", body = ErrorBody),
    )
)]
async fn receipt(
    State(state): State<AppState>,
    CustomerCaller(ctx): CustomerCaller,
    ApiPath(seq): ApiPath<u64>,
) -> Result<impl IntoResponse, ApiError> {
    let r = state.vault.own_receipt(&ctx, seq).await?;
    Ok(Json(Receipt {
        event: r.event,
        inclusion: InclusionProof {
            index: r.index,
            tree_size: r.checkpoint.checkpoint.size,
            proof: encode(&r.proof),
        },
        checkpoint: Checkpoint::from(r.checkpoint),
        key: AuditKey::from(&r.key),
    }))
}
