//! Routes for data subjects (`role = "customer"`): `/v1/me`. Every call acts on the id in the
//! token's `sub`; no route takes a customer id, so another customer's record is unreachable.

use std::collections::BTreeMap;

use axum::extract::{Path, State};
use axum::response::IntoResponse;
use axum::routing::{get, put};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};

use super::AppState;
use super::error::ApiError;
use super::extract::{ApiJson, CustomerCaller};
use super::merchant::ConsentBody;
use crate::vault::RequestContext;

/// The customer's routes.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/me", get(me).patch(rectify).delete(erase))
        .route("/v1/me/export", get(export))
        .route("/v1/me/consents", get(consents))
        .route("/v1/me/consents/{purpose}", put(consent))
        .route("/v1/me/objections/{purpose}", put(objection))
        .route("/v1/me/restriction", put(restriction))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Patch {
    fields: BTreeMap<String, Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Objection {
    objected: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Restriction {
    restricted: bool,
}

/// The caller's own customer id, as text (the vault parses and checks it).
fn own_id(ctx: &RequestContext) -> &str {
    ctx.principal.sub.as_deref().unwrap_or_default()
}

async fn me(
    State(state): State<AppState>,
    CustomerCaller(ctx): CustomerCaller,
) -> Result<impl IntoResponse, ApiError> {
    Ok(Json(state.vault.own_profile(&ctx).await?))
}

async fn rectify(
    State(state): State<AppState>,
    CustomerCaller(ctx): CustomerCaller,
    ApiJson(patch): ApiJson<Patch>,
) -> Result<impl IntoResponse, ApiError> {
    Ok(Json(state.vault.update_customer(&ctx, own_id(&ctx), patch.fields, None).await?))
}

async fn erase(
    State(state): State<AppState>,
    CustomerCaller(ctx): CustomerCaller,
) -> Result<impl IntoResponse, ApiError> {
    Ok(Json(state.vault.erase_customer(&ctx, own_id(&ctx), None).await?))
}

async fn export(
    State(state): State<AppState>,
    CustomerCaller(ctx): CustomerCaller,
) -> Result<impl IntoResponse, ApiError> {
    Ok(Json(state.vault.export(&ctx).await?))
}

async fn consents(
    State(state): State<AppState>,
    CustomerCaller(ctx): CustomerCaller,
) -> Result<impl IntoResponse, ApiError> {
    let profile = state.vault.own_profile(&ctx).await?;
    Ok(Json(json!({ "consents": profile.consents })))
}

async fn consent(
    State(state): State<AppState>,
    CustomerCaller(ctx): CustomerCaller,
    Path(purpose): Path<String>,
    ApiJson(body): ApiJson<ConsentBody>,
) -> Result<impl IntoResponse, ApiError> {
    Ok(Json(state.vault.update_consent(&ctx, own_id(&ctx), &purpose, body.into()).await?))
}

async fn objection(
    State(state): State<AppState>,
    CustomerCaller(ctx): CustomerCaller,
    Path(purpose): Path<String>,
    ApiJson(body): ApiJson<Objection>,
) -> Result<impl IntoResponse, ApiError> {
    state.vault.update_objection(&ctx, own_id(&ctx), &purpose, body.objected).await?;
    Ok(Json(json!({ "purpose": purpose, "objected": body.objected })))
}

async fn restriction(
    State(state): State<AppState>,
    CustomerCaller(ctx): CustomerCaller,
    ApiJson(body): ApiJson<Restriction>,
) -> Result<impl IntoResponse, ApiError> {
    state.vault.update_restriction(&ctx, own_id(&ctx), body.restricted).await?;
    Ok(Json(json!({ "restricted": body.restricted })))
}
