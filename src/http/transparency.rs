//! `GET /v1/transparency`: the public transparency report as JSON, without a token.
//!
//! Counts only, never an id or a value: per closed month, distinct customers per cell, every
//! count below 5 is "fewer than 5". The numbers are computed at the signed checkpoint the report
//! names (see `vault::transparency`), so anyone holding an export of that log can recompute them
//! (`custodia audit report`). The report is prepared in the background; a request only reads it
//! (no signing, no store access) and takes one from its address's public budget.

use axum::Json;
use axum::extract::State;
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::AppState;
use super::auditor::{AuditKey, Checkpoint};
use super::error::{ApiError, ErrorBody};
use super::extract::PublicBudget;
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
    /// The month of the newest counted event (`YYYY-MM`, UTC): in progress, not published;
    /// `null` while the log is empty.
    in_progress: Option<String>,
    /// Seqs of events (ascending) stamped in a later month than the open one but more than 31
    /// days ahead of the server's clock when counted (a clock stepped forward): counted in the
    /// month then open, they closed nothing. `custodia audit report` takes the list from here
    /// and refuses an entry that would not have closed a month.
    held_back: Vec<u64>,
    /// What the shop collects and why: the GDPR Art. 30 record generated from the policy files
    /// (the same document as `custodia policy record --json`).
    record: ProcessingRecord,
    /// Per closed calendar month (UTC), newest first; a month closes with the first event of a
    /// later month. Distinct customers with disclosures by recipient, purpose and outcome;
    /// with denials by reason; erased; with retention purges; making objections, restrictions
    /// and consents by change. An event that names no customer counts as one. Each `count` is
    /// a number of at least 5 or the text "fewer than 5" (0 included). Every month lists the
    /// same cells: every recipient (and `(none)`) × purpose (and `(none)`) × outcome, every
    /// known reason code, objected / lifted per purpose open to objection, restricted / lifted,
    /// granted / withdrawn per consent purpose, plus any cell a published month counted.
    #[schema(value_type = Vec<Object>)]
    months: Vec<PublishedMonth>,
}

/// The public transparency report.
///
/// What is collected and why, and per closed month what was done with it (distinct customers
/// per cell), computed at the signed checkpoint the report names. Prepared in the background
/// every few seconds; this only reads it. No token needed; not audited (it reads no customer
/// data); limited per address.
#[utoipa::path(
    get,
    path = "/v1/transparency",
    operation_id = "transparency_report",
    tag = "public",
    responses(
        (status = 200, description = "The report", body = Report),
        (status = 429, description = "`rate_limited`: this address's budget for public routes is spent", body = ErrorBody),
        (status = 503, description = "`not_ready`: the first report is still being prepared (just after start)", body = ErrorBody),
    )
)]
async fn report(_: PublicBudget, State(state): State<AppState>) -> Result<Json<Report>, ApiError> {
    let Some(r) = state.vault.transparency_report() else {
        return Err(ApiError::not_ready(
            "the transparency report is being prepared; retry in a few seconds",
            5,
        ));
    };
    Ok(Json(Report {
        format_version: r.format_version,
        generated_at: r.generated_at.clone(),
        threshold: r.threshold,
        tree_size: r.tree_size,
        checkpoint: r.checkpoint.clone().map(Checkpoint::from),
        key: AuditKey::from(&r.key),
        in_progress: r.in_progress.clone(),
        held_back: r.held_back.clone(),
        record: r.record.clone(),
        months: r.months.clone(),
    }))
}
