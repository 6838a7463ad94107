//! Routes for the merchant's backend (`role = "merchant"`): `/v1/customers`.

use std::collections::BTreeMap;

use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};

use super::AppState;
use super::error::ApiError;
use super::extract::{ApiJson, MerchantCaller, PurposeHeader};
use crate::vault::NewCustomer;

/// The merchant's routes.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/customers", get(lookup).post(create))
        .route("/v1/customers/{id}", get(read).patch(update).delete(erase))
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
