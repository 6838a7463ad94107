//! `GET /v1/transparency`: the public transparency report as JSON, without a token.
//!
//! Counts only, never an id or a value; every count below 5 is "fewer than 5". The numbers
//! are computed at the signed checkpoint the report names (see `vault::transparency`), so
//! anyone holding an export of that log can recompute them (`custodia audit report`).

use axum::Json;
use axum::extract::State;
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::AppState;
use super::auditor::{AuditKey, Checkpoint};
use super::error::ApiError;
use crate::audit::counters::PublishedMonth;
use crate::policy::ProcessingRecord;

/// The report's route.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(report))
}

/// The public transparency report.
#[derive(Serialize, ToSchema)]
struct Report {
    /// Shape version of this document.
    format_version: u32,
    /// When the report was put together, RFC 3339.
    #[schema(format = DateTime)]
    generated_at: String,
    /// Counts below this are published as the text "fewer than 5".
    threshold: u64,
    /// The number of audit events the counts are computed from.
    tree_size: u64,
    /// The signed checkpoint of exactly those events; `null` while the log is empty.
    checkpoint: Option<Checkpoint>,
    /// The key the checkpoint is signed with.
    key: AuditKey,
    /// What the shop collects and why: the GDPR Art. 30 record generated from the policy files
    /// (the same document as `custodia policy record --json`).
    record: ProcessingRecord,
    /// Per calendar month (UTC), newest first: disclosures by recipient, purpose and outcome;
    /// denials by reason; erasures; retention purges; objections, restrictions and consents
    /// by change. Each `count` is a number of at least 5 or the text "fewer than 5".
    #[schema(value_type = Vec<Object>)]
    months: Vec<PublishedMonth>,
}

/// The public transparency report.
///
/// What is collected and why, and per month what was done with it, computed at the signed
/// checkpoint the report names. No token needed; not audited (it reads no customer data).
#[utoipa::path(
    get,
    path = "/v1/transparency",
    operation_id = "transparency_report",
    tag = "public",
    responses((status = 200, description = "The report", body = Report))
)]
async fn report(State(state): State<AppState>) -> Result<Json<Report>, ApiError> {
    let r = state.vault.transparency_report().await?;
    Ok(Json(Report {
        format_version: r.format_version,
        generated_at: r.generated_at,
        threshold: r.threshold,
        tree_size: r.tree_size,
        checkpoint: r.checkpoint.map(Checkpoint::from),
        key: AuditKey::from(&r.key),
        record: r.record,
        months: r.months,
    }))
}
