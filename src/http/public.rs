//! Routes anyone may call, without a token: `/healthz`, `/metrics` and `/openapi.json`.
//!
//! None of them touches customer data or the audit log, so none is audited; `/metrics` carries
//! route templates and codes only, never an id or a value.

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::AppState;
use super::openapi;

/// The public routes, one `routes!` per path.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(healthz)).routes(routes!(metrics)).routes(routes!(openapi_json))
}

/// Liveness: `ok` while the server is serving.
#[utoipa::path(
    get,
    path = "/healthz",
    operation_id = "healthz",
    tag = "operations",
    responses((status = 200, description = "Serving", body = String, content_type = "text/plain", example = "ok"))
)]
async fn healthz() -> &'static str {
    "ok"
}

/// Metrics in the Prometheus text format.
///
/// Series: `custodia_http_requests_total{route,method,status}`,
/// `custodia_http_request_duration_seconds{route,method}`,
/// `custodia_disclosures_total{outcome,reason}`, `custodia_audit_events_total{action,outcome}`,
/// `custodia_audit_tree_size`, `custodia_group_commit_batch_size` and
/// `custodia_group_commit_flush_seconds`. Labels are route templates and codes, never ids or
/// values.
#[utoipa::path(
    get,
    path = "/metrics",
    operation_id = "metrics",
    tag = "operations",
    responses((status = 200, description = "The current metrics", body = String,
        content_type = "text/plain; version=0.0.4"))
)]
async fn metrics() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], crate::metric::render())
}

/// This document: the OpenAPI 3.1 description of every route, specialised to the loaded
/// policy set (its purposes, fields and recipients are enums; each field is typed).
#[utoipa::path(
    get,
    path = "/openapi.json",
    operation_id = "openapi",
    tag = "operations",
    responses((status = 200, description = "The OpenAPI 3.1 document", body = Object, content_type = "application/json"))
)]
async fn openapi_json(State(state): State<AppState>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], openapi::json(state.vault.policies()).to_string())
}
