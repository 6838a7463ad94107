//! Routes for data subjects (`role = "customer"`): `/v1/me`. Every call acts on the id in the
//! token's `sub`; no route takes a customer id, so another customer's record is unreachable.

use axum::Json;
use axum::extract::State;
use axum::response::IntoResponse;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::AppState;
use super::error::{ApiError, ErrorBody};
use super::extract::{ApiJson, ApiPath, CustomerCaller};
use super::merchant::{ConsentBody, CustomerPatch};
use crate::vault::{ConsentView, CustomerView, ErasureReceipt, Export, OwnProfile, RequestContext};

/// The customer's routes, one `routes!` per path.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(me, rectify, erase))
        .routes(routes!(export))
        .routes(routes!(consents))
        .routes(routes!(consent))
        .routes(routes!(objection))
        .routes(routes!(restriction))
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
