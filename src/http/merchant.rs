//! Routes for the merchant's backend (`role = "merchant"`): `/v1/customers`.

use std::collections::BTreeMap;

use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{delete, get, post, put};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};

use super::AppState;
use super::error::ApiError;
use super::extract::{ApiJson, MerchantCaller, PurposeHeader};
use crate::vault::{ConsentInput, DisclosureRequest, NewCustomer};

/// The merchant's routes.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/customers", get(lookup).post(create))
        .route("/v1/customers/{id}", get(read).patch(update).delete(erase))
        .route("/v1/customers/{id}/consents/{purpose}", put(consent))
        .route("/v1/customers/{id}/payment-methods", get(list_payment_methods).post(add_payment_method))
        .route("/v1/customers/{id}/payment-methods/{token}", delete(delete_payment_method))
        .route("/v1/disclosures", post(disclose))
}

/// Body of a consent change (the purpose is in the path).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ConsentBody {
    granted: bool,
    source: String,
    #[serde(default)]
    notice: Option<String>,
}

impl From<ConsentBody> for ConsentInput {
    fn from(b: ConsentBody) -> Self {
        ConsentInput { purpose: None, granted: b.granted, source: b.source, notice: b.notice }
    }
}

/// Body of `PATCH /v1/customers/{id}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Patch {
    fields: BTreeMap<String, Value>,
}

async fn create(
    State(state): State<AppState>,
    MerchantCaller(ctx): MerchantCaller,
    PurposeHeader(purpose): PurposeHeader,
    ApiJson(body): ApiJson<NewCustomer>,
) -> Result<impl IntoResponse, ApiError> {
    let id = state.vault.create_customer(&ctx, body, purpose.as_deref()).await?;
    Ok((StatusCode::CREATED, Json(json!({ "id": id }))))
}

async fn read(
    State(state): State<AppState>,
    MerchantCaller(ctx): MerchantCaller,
    PurposeHeader(purpose): PurposeHeader,
    Path(id): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<impl IntoResponse, ApiError> {
    let mut only = None;
    for (key, value) in form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
        match key.as_ref() {
            "fields" => {
                only = Some(value.split(',').map(|s| s.trim().to_owned()).filter(|s| !s.is_empty()).collect())
            }
            _ => return Err(ApiError::bad_request("bad_request", "the only query parameter is `fields`")),
        }
    }
    let view = state.vault.read_customer(&ctx, &id, purpose.as_deref(), only).await?;
    Ok(Json(view))
}

async fn update(
    State(state): State<AppState>,
    MerchantCaller(ctx): MerchantCaller,
    PurposeHeader(purpose): PurposeHeader,
    Path(id): Path<String>,
    ApiJson(patch): ApiJson<Patch>,
) -> Result<impl IntoResponse, ApiError> {
    let view = state.vault.update_customer(&ctx, &id, patch.fields, purpose.as_deref()).await?;
    Ok(Json(view))
}

async fn erase(
    State(state): State<AppState>,
    MerchantCaller(ctx): MerchantCaller,
    PurposeHeader(purpose): PurposeHeader,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    let receipt = state.vault.erase_customer(&ctx, &id, purpose.as_deref()).await?;
    Ok(Json(receipt))
}

async fn lookup(
    State(state): State<AppState>,
    MerchantCaller(ctx): MerchantCaller,
    PurposeHeader(purpose): PurposeHeader,
    RawQuery(query): RawQuery,
) -> Result<impl IntoResponse, ApiError> {
    let pairs: Vec<(String, String)> = form_urlencoded::parse(query.unwrap_or_default().as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    let ids = state.vault.lookup(&ctx, pairs, purpose.as_deref()).await?;
    let customers: Vec<Value> = ids.into_iter().map(|id| json!({ "id": id })).collect();
    Ok(Json(json!({ "customers": customers })))
}

async fn consent(
    State(state): State<AppState>,
    MerchantCaller(ctx): MerchantCaller,
    Path((id, purpose)): Path<(String, String)>,
    ApiJson(body): ApiJson<ConsentBody>,
) -> Result<impl IntoResponse, ApiError> {
    let record = state.vault.update_consent(&ctx, &id, &purpose, body.into()).await?;
    Ok(Json(record))
}

async fn disclose(
    State(state): State<AppState>,
    MerchantCaller(ctx): MerchantCaller,
    ApiJson(body): ApiJson<DisclosureRequest>,
) -> Result<impl IntoResponse, ApiError> {
    let disclosure = state.vault.disclose(&ctx, body).await?;
    Ok(Json(disclosure))
}

async fn add_payment_method(
    State(state): State<AppState>,
    MerchantCaller(ctx): MerchantCaller,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<Value>,
) -> Result<impl IntoResponse, ApiError> {
    let (view, created) = state.vault.add_payment_method(&ctx, &id, body).await?;
    let status = if created { StatusCode::CREATED } else { StatusCode::OK };
    Ok((status, Json(view)))
}

async fn list_payment_methods(
    State(state): State<AppState>,
    MerchantCaller(ctx): MerchantCaller,
    PurposeHeader(purpose): PurposeHeader,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    let methods = state.vault.list_payment_methods(&ctx, &id, purpose.as_deref()).await?;
    Ok(Json(json!({ "payment_methods": methods })))
}

async fn delete_payment_method(
    State(state): State<AppState>,
    MerchantCaller(ctx): MerchantCaller,
    Path((id, token)): Path<(String, String)>,
) -> Result<impl IntoResponse, ApiError> {
    state.vault.delete_payment_method(&ctx, &id, &token).await?;
    Ok(StatusCode::NO_CONTENT)
}
