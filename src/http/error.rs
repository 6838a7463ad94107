//! The only place errors become HTTP statuses and `{"error", "message"}` bodies.
//!
//! Internal detail is logged here and never returned; messages never carry a customer's value.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::openapi::RefOr;
use utoipa::openapi::schema::{ObjectBuilder, Schema, Type};
use utoipa::{PartialSchema, ToSchema};

use crate::policy::Reason;
use crate::vault::VaultError;

/// An error answer.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    denied: Option<Vec<Denied>>,
    retry_after: Option<u64>,
}

/// One refused field of a `policy_denied` answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct Denied {
    /// The field name as requested.
    field: String,
    /// Why it was refused.
    #[schema(value_type = ReasonCode)]
    reason: &'static str,
}

/// Every error answer: a stable code and a human message that never contains a submitted or
/// stored value. Codes: `malformed_json`, `duplicate_key` (a member named twice in one JSON
/// object), `nesting_too_deep`, `duplicate_header` (`Authorization`, `X-Purpose`,
/// `Content-Type`, `Content-Length` or `X-Request-Id` given more than once), `bad_request`,
/// `purpose_required`, `unknown_purpose` (400); `unauthenticated` (401); `forbidden`, `policy_denied` (403); `not_found` (404);
/// `method_not_allowed` (405); `conflict` (409); `payload_too_large` (413);
/// `unsupported_media_type` (415); `invalid_body`, `invalid_field`, `unknown_field` (422);
/// `rate_limited` (429); `internal` (500); `audit_unavailable`, `not_ready` (503). A request that takes longer
/// than the configured timeout is answered 408 with an empty body.
#[derive(Serialize, ToSchema)]
#[schema(example = json!({"error": "not_found", "message": "customer not found"}))]
pub struct ErrorBody<'a> {
    /// The stable error code.
    #[schema(value_type = String)]
    error: &'a str,
    /// What went wrong, for humans.
    #[schema(value_type = String)]
    message: &'a str,
    /// Only on `policy_denied`: one entry per refused field.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Vec<Denied>>, nullable = false)]
    denied: Option<&'a [Denied]>,
}

/// A disclosure reason code, as a schema: the enumeration comes from [`Reason::ALL`], so the
/// document cannot fall behind the policy engine.
pub struct ReasonCode;

impl PartialSchema for ReasonCode {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .description(Some("The first failing check of the disclosure rule for this field."))
            .enum_values(Some(Reason::ALL.iter().map(|r| r.as_str())))
            .into()
    }
}

impl ToSchema for ReasonCode {}

impl ApiError {
    /// An error with a status, a stable code and a human message.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError { status, code, message: message.into(), denied: None, retry_after: None }
    }

    /// 400 with `code`.
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }

    /// 401.
    pub fn unauthenticated() -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthenticated", "a valid bearer token is required")
    }

    /// 403 for a caller whose role may not use the route.
    pub fn forbidden_role() -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", "this role may not call this route")
    }

    /// 413: the body is, or declares to be, larger than the configured limit.
    pub fn payload_too_large() -> Self {
        Self::new(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", "the body is too large")
    }

    /// 404.
    pub fn not_found() -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", "not found")
    }

    /// 429 with a `Retry-After` of `wait` (rounded up to whole seconds).
    pub fn too_many_requests(wait: std::time::Duration) -> Self {
        let mut e =
            Self::new(StatusCode::TOO_MANY_REQUESTS, "rate_limited", "too many requests; retry later");
        e.retry_after = Some(wait.as_secs() + u64::from(wait.subsec_nanos() > 0));
        e
    }

    /// 503 `not_ready` with a `Retry-After` of `seconds`: what is asked for is being prepared.
    pub fn not_ready(message: &'static str, seconds: u64) -> Self {
        let mut e = Self::new(StatusCode::SERVICE_UNAVAILABLE, "not_ready", message);
        e.retry_after = Some(seconds);
        e
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The stable code and the message.
    pub fn parts(&self) -> (&'static str, &str) {
        (self.code, &self.message)
    }
}

impl From<VaultError> for ApiError {
    fn from(e: VaultError) -> Self {
        use VaultError as V;
        let message = e.to_string();
        match e {
            V::NotFound => ApiError::not_found().with_message("customer not found"),
            V::PurposeRequired => ApiError::bad_request("purpose_required", message),
            V::UnknownPurpose => ApiError::bad_request("unknown_purpose", message),
            V::BadRequest(_) => ApiError::bad_request("bad_request", message),
            V::UnknownField(_) => ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "unknown_field", message),
            V::InvalidField { .. } => {
                ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_field", message)
            }
            V::Conflict { .. } => ApiError::new(StatusCode::CONFLICT, "conflict", message),
            V::PolicyDenied { denied } => ApiError {
                status: StatusCode::FORBIDDEN,
                code: "policy_denied",
                message,
                denied: Some(
                    denied
                        .into_iter()
                        .map(|(field, reason)| Denied { field, reason: reason.as_str() })
                        .collect(),
                ),
                retry_after: None,
            },
            V::AuditUnavailable => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "audit_unavailable",
                "the request could not be audited durably, so it was not carried out",
            ),
            V::CommittedUnsequenced => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "audit_pending",
                "the change is carried out and its audit event recorded, but the event's place in the \
                 audit log is not known yet: do not repeat the request",
            ),
            V::Internal(detail) => {
                tracing::error!(%detail, "internal error");
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "internal error")
            }
        }
    }
}

impl ApiError {
    fn with_message(mut self, message: &str) -> Self {
        self.message = message.to_owned();
        self
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody { error: self.code, message: &self.message, denied: self.denied.as_deref() };
        let mut response = (self.status, Json(body)).into_response();
        if let Some(secs) = self.retry_after {
            response.headers_mut().insert(axum::http::header::RETRY_AFTER, secs.max(1).into());
        }
        response
    }
}
