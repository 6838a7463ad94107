//! Routes for the merchant's backend (`role = "merchant"`): `/v1/customers`, `/v1/disclosures`.
//!
//! Each handler's `#[utoipa::path]` is both its OpenAPI operation and, through `routes!`, the
//! path and method it is served at.

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::{RawQuery, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::AppState;
use super::error::{ApiError, ErrorBody};
use super::extract::{ApiJson, ApiPath, MerchantCaller, PurposeHeader};
use crate::domain::CustomerId;
use crate::vault::{
    ConsentInput, ConsentView, CustomerView, Disclosure, DisclosureRequest, ErasureReceipt, NewCustomer,
    NewPaymentMethod, PaymentMethodView,
};

/// The merchant's routes, one `routes!` per path.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(lookup, create))
        .routes(routes!(read, update, erase))
        .routes(routes!(consent))
        .routes(routes!(list_payment_methods, add_payment_method))
        .routes(routes!(delete_payment_method))
        .routes(routes!(disclose))
}

/// Body of a consent change (the purpose is in the path).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct ConsentBody {
    /// Granted (`true`) or withdrawn (`false`).
    granted: bool,
    /// Where the consent was collected, e.g. `checkout-form` (at most 128 characters).
    source: String,
    /// The notice version shown; must be the purpose's current one when it declares one.
    #[serde(default)]
    notice: Option<String>,
}

impl From<ConsentBody> for ConsentInput {
    fn from(b: ConsentBody) -> Self {
        ConsentInput { purpose: None, granted: b.granted, source: b.source, notice: b.notice }
    }
}

/// Body of `PATCH /v1/customers/{id}` and `PATCH /v1/me`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct CustomerPatch {
    /// Field name → new value; `null` removes the field.
    pub(super) fields: BTreeMap<String, Value>,
}

/// A customer's id.
#[derive(Debug, Serialize, ToSchema)]
struct CustomerRef {
    /// The customer's id (random UUID v4).
    #[schema(value_type = String, format = Uuid)]
    id: CustomerId,
}

/// Answer of a lookup.
#[derive(Debug, Serialize, ToSchema)]
struct Matches {
    /// The customers whose indexed field matches exactly (at most one for a unique field).
    customers: Vec<CustomerRef>,
}

/// A customer's payment methods, masked.
#[derive(Debug, Serialize, ToSchema)]
struct PaymentMethods {
    /// Token, type, brand, last 4 and expiry of each method; nothing that allows a charge.
    payment_methods: Vec<PaymentMethodView>,
}

/// Create a customer.
///
/// Values are validated by their declared type and sealed per field; consents collected with
/// the data may be given at once. No `X-Purpose` is needed; when one is given, every written
/// field must serve it and it is recorded.
#[utoipa::path(
    post,
    path = "/v1/customers",
    operation_id = "create_customer",
    tag = "merchant",
    security(("bearer_jwt" = [])),
    params(
        ("X-Purpose" = Option<String>, Header, description = "Optional: a declared purpose every written field must serve"),
    ),
    request_body = NewCustomer,
    responses(
        (status = 201, description = "Created", body = CustomerRef),
        (status = 400, description = "`malformed_json`, `unknown_purpose`", body = ErrorBody),
        (status = 403, description = "`forbidden` (role) or `policy_denied` (a field does not serve the purpose)", body = ErrorBody),
        (status = 409, description = "`conflict`: a unique field's value belongs to another customer", body = ErrorBody),
        (status = 422, description = "`invalid_body`, `invalid_field` or `unknown_field`", body = ErrorBody),
    )
)]
async fn create(
    State(state): State<AppState>,
    MerchantCaller(ctx): MerchantCaller,
    PurposeHeader(purpose): PurposeHeader,
    ApiJson(body): ApiJson<NewCustomer>,
) -> Result<impl IntoResponse, ApiError> {
    let id = state.vault.create_customer(&ctx, body, purpose.as_deref()).await?;
    Ok((StatusCode::CREATED, Json(CustomerRef { id })))
}

/// Read a customer for a purpose.
///
/// Answers only the fields the purpose may see, unmasked (the merchant is the controller);
/// fields the customer has that the purpose may not see are listed in `withheld`.
#[utoipa::path(
    get,
    path = "/v1/customers/{id}",
    operation_id = "read_customer",
    tag = "merchant",
    security(("bearer_jwt" = [])),
    params(
        ("id" = String, Path, format = Uuid, description = "The customer's id"),
        ("X-Purpose" = String, Header, description = "Why the data is read: a purpose declared in the policy files"),
        ("fields" = Option<String>, Query, description = "Comma-separated declared field names to narrow the read, e.g. `name,email`"),
    ),
    responses(
        (status = 200, description = "The fields the purpose may see", body = CustomerView),
        (status = 400, description = "`purpose_required`, `unknown_purpose` or `bad_request` (another query parameter)", body = ErrorBody),
        (status = 404, description = "`not_found`: no such customer", body = ErrorBody),
        (status = 422, description = "`unknown_field`: `fields` names an undeclared field (or an empty name)", body = ErrorBody),
    )
)]
async fn read(
    State(state): State<AppState>,
    MerchantCaller(ctx): MerchantCaller,
    PurposeHeader(purpose): PurposeHeader,
    ApiPath(id): ApiPath<String>,
    RawQuery(query): RawQuery,
) -> Result<impl IntoResponse, ApiError> {
    let mut only = None;
    for (key, value) in form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
        match key.as_ref() {
            // An empty name (`fields=`, `a,,b`) names no declared field: 422 like any other.
            "fields" if only.is_some() => {
                return Err(ApiError::bad_request("bad_request", "query parameter `fields` given twice"));
            }
            "fields" => only = Some(value.split(',').map(|s| s.trim().to_owned()).collect()),
            _ => return Err(ApiError::bad_request("bad_request", "the only query parameter is `fields`")),
        }
    }
    let view = state.vault.read_customer(&ctx, &id, purpose.as_deref(), only).await?;
    Ok(Json(view))
}

/// Update a customer's fields.
///
/// `null` removes a field. Without `X-Purpose` the answer holds only the fields just written
/// (a write is never a purpose-free read); with one, the same view as a read.
#[utoipa::path(
    patch,
    path = "/v1/customers/{id}",
    operation_id = "update_customer",
    tag = "merchant",
    security(("bearer_jwt" = [])),
    params(
        ("id" = String, Path, format = Uuid, description = "The customer's id"),
        ("X-Purpose" = Option<String>, Header, description = "Optional: a declared purpose every written field must serve"),
    ),
    request_body = CustomerPatch,
    responses(
        (status = 200, description = "The customer after the update", body = CustomerView),
        (status = 400, description = "`malformed_json`, `unknown_purpose`", body = ErrorBody),
        (status = 403, description = "`forbidden` (role) or `policy_denied` (a field does not serve the purpose)", body = ErrorBody),
        (status = 404, description = "`not_found`: no such customer", body = ErrorBody),
        (status = 409, description = "`conflict`: a unique field's value belongs to another customer", body = ErrorBody),
        (status = 422, description = "`invalid_body`, `invalid_field` or `unknown_field`", body = ErrorBody),
    )
)]
async fn update(
    State(state): State<AppState>,
    MerchantCaller(ctx): MerchantCaller,
    PurposeHeader(purpose): PurposeHeader,
    ApiPath(id): ApiPath<String>,
    ApiJson(patch): ApiJson<CustomerPatch>,
) -> Result<impl IntoResponse, ApiError> {
    let view = state.vault.update_customer(&ctx, &id, patch.fields, purpose.as_deref()).await?;
    Ok(Json(view))
}

/// Erase a customer (crypto-shredding).
///
/// The data key is destroyed and every record and index entry removed; afterwards the id
/// answers 404 everywhere.
#[utoipa::path(
    delete,
    path = "/v1/customers/{id}",
    operation_id = "erase_customer",
    tag = "merchant",
    security(("bearer_jwt" = [])),
    params(
        ("id" = String, Path, format = Uuid, description = "The customer's id"),
        ("X-Purpose" = Option<String>, Header, description = "Optional: a declared purpose, recorded in the audit event"),
    ),
    responses(
        (status = 200, description = "Erased", body = ErasureReceipt),
        (status = 400, description = "`unknown_purpose`", body = ErrorBody),
        (status = 404, description = "`not_found`: no such customer", body = ErrorBody),
    )
)]
async fn erase(
    State(state): State<AppState>,
    MerchantCaller(ctx): MerchantCaller,
    PurposeHeader(purpose): PurposeHeader,
    ApiPath(id): ApiPath<String>,
) -> Result<impl IntoResponse, ApiError> {
    let receipt = state.vault.erase_customer(&ctx, &id, purpose.as_deref()).await?;
    Ok(Json(receipt))
}

/// Look customers up by an indexed field.
///
/// Exactly one query parameter, named after a field declared `index = true` that serves the
/// purpose, e.g. `?email=jane@example.com`. Matching is exact on the normalised value through a
/// keyed blind index.
#[utoipa::path(
    get,
    path = "/v1/customers",
    operation_id = "lookup_customers",
    tag = "merchant",
    security(("bearer_jwt" = [])),
    params(
        ("X-Purpose" = String, Header, description = "Why the lookup is made: a declared purpose the field serves"),
        ("lookup" = BTreeMap<String, String>, Query, style = Form, explode,
            description = "One `<indexed field>=<value>` pair, e.g. `email=jane@example.com`"),
    ),
    responses(
        (status = 200, description = "The matching customers", body = Matches),
        (status = 400, description = "`purpose_required`, `unknown_purpose` or `bad_request` (not exactly one parameter, or the field is not indexed)", body = ErrorBody),
        (status = 403, description = "`forbidden` (role) or `policy_denied` (the field does not serve the purpose)", body = ErrorBody),
        (status = 422, description = "`unknown_field`", body = ErrorBody),
    )
)]
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
    Ok(Json(Matches { customers: ids.into_iter().map(|id| CustomerRef { id }).collect() }))
}

/// Record a consent the merchant collected.
///
/// Appends a new version of the customer's consent record for the purpose; the newest one
/// counts from the very next request on.
#[utoipa::path(
    put,
    path = "/v1/customers/{id}/consents/{purpose}",
    operation_id = "record_consent",
    tag = "merchant",
    security(("bearer_jwt" = [])),
    params(
        ("id" = String, Path, format = Uuid, description = "The customer's id"),
        ("purpose" = String, Path, description = "A declared purpose"),
    ),
    request_body = ConsentBody,
    responses(
        (status = 200, description = "The new consent record", body = ConsentView),
        (status = 400, description = "`malformed_json`, `unknown_purpose`", body = ErrorBody),
        (status = 404, description = "`not_found`: no such customer", body = ErrorBody),
        (status = 422, description = "`invalid_body` or `invalid_field` (e.g. an outdated notice version)", body = ErrorBody),
    )
)]
async fn consent(
    State(state): State<AppState>,
    MerchantCaller(ctx): MerchantCaller,
    ApiPath((id, purpose)): ApiPath<(String, String)>,
    ApiJson(body): ApiJson<ConsentBody>,
) -> Result<impl IntoResponse, ApiError> {
    let record = state.vault.update_consent(&ctx, &id, &purpose, body.into()).await?;
    Ok(Json(record))
}

/// Disclose fields to a third party.
///
/// All or nothing: every field must pass the disclosure rule, or the answer is 403
/// `policy_denied` with a reason per refused field and no value at all. Allowed fields come
/// back masked as the recipient's grant (or the field's default mask) says.
#[utoipa::path(
    post,
    path = "/v1/disclosures",
    operation_id = "disclose",
    tag = "merchant",
    security(("bearer_jwt" = [])),
    request_body = DisclosureRequest,
    responses(
        (status = 200, description = "Allowed: the masked values to hand over", body = Disclosure),
        (status = 400, description = "`malformed_json` or `bad_request` (no fields, or more than 64)", body = ErrorBody),
        (status = 403, description = "`forbidden` (role) or `policy_denied` with `denied`: one reason per refused field", body = ErrorBody,
            example = json!({"error": "policy_denied", "message": "denied by policy",
                "denied": [{"field": "email", "reason": "consent_missing"}, {"field": "phone", "reason": "no_grant"}]})),
        (status = 404, description = "`not_found`: no such customer", body = ErrorBody),
        (status = 422, description = "`invalid_body`", body = ErrorBody),
    )
)]
async fn disclose(
    State(state): State<AppState>,
    MerchantCaller(ctx): MerchantCaller,
    ApiJson(body): ApiJson<DisclosureRequest>,
) -> Result<impl IntoResponse, ApiError> {
    let disclosure = state.vault.disclose(&ctx, body).await?;
    Ok(Json(disclosure))
}

/// Add a payment method.
///
/// A card (Luhn-checked, not expired) or a payment provider's token, sealed under the
/// customer's data key. A body with a security code (CVV/CVC), track data or PIN is refused with
/// 422 before anything else. The same card twice is not stored twice: the answer is then 200
/// with the existing method and `duplicate_of`.
#[utoipa::path(
    post,
    path = "/v1/customers/{id}/payment-methods",
    operation_id = "add_payment_method",
    tag = "merchant",
    security(("bearer_jwt" = [])),
    params(("id" = String, Path, format = Uuid, description = "The customer's id")),
    request_body = NewPaymentMethod,
    responses(
        (status = 201, description = "Added, shown masked", body = PaymentMethodView),
        (status = 200, description = "This card is already stored for the customer: the existing method, with `duplicate_of`", body = PaymentMethodView),
        (status = 400, description = "`malformed_json` or `bad_request` (too many methods)", body = ErrorBody),
        (status = 404, description = "`not_found`: no such customer", body = ErrorBody),
        (status = 422, description = "`invalid_field`: bad number or expiry, or a security code, track data or PIN member", body = ErrorBody),
    )
)]
async fn add_payment_method(
    State(state): State<AppState>,
    MerchantCaller(ctx): MerchantCaller,
    ApiPath(id): ApiPath<String>,
    ApiJson(mut body): ApiJson<Value>,
) -> Result<impl IntoResponse, ApiError> {
    integral_numbers(&mut body);
    let (view, created) = state.vault.add_payment_method(&ctx, &id, body).await?;
    let status = if created { StatusCode::CREATED } else { StatusCode::OK };
    Ok((status, Json(view)))
}

/// Rewrites every number with no fractional part (`12.0`) as an integer, at any depth.
///
/// JSON does not tell `12` from `12.0`, and JSON Schema calls both an `integer`; the card's
/// `exp_month` and `exp_year` are read as integers, which would refuse `12.0`.
fn integral_numbers(value: &mut Value) {
    match value {
        Value::Number(n) if !n.is_u64() && !n.is_i64() => {
            if let Some(f) = n.as_f64()
                && f.fract() == 0.0
                && (0.0..=u32::MAX as f64).contains(&f)
            {
                // The range check above makes the cast exact.
                *value = Value::from(f as u64);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(integral_numbers),
        Value::Object(members) => members.values_mut().for_each(integral_numbers),
        _ => {}
    }
}

/// List a customer's payment methods, masked.
#[utoipa::path(
    get,
    path = "/v1/customers/{id}/payment-methods",
    operation_id = "list_payment_methods",
    tag = "merchant",
    security(("bearer_jwt" = [])),
    params(
        ("id" = String, Path, format = Uuid, description = "The customer's id"),
        ("X-Purpose" = String, Header, description = "A declared purpose that `payment_methods` serves"),
    ),
    responses(
        (status = 200, description = "The methods, masked", body = PaymentMethods),
        (status = 400, description = "`purpose_required` or `unknown_purpose`", body = ErrorBody),
        (status = 403, description = "`forbidden` (role) or `policy_denied` (the purpose may not use payment methods)", body = ErrorBody),
        (status = 404, description = "`not_found`: no such customer", body = ErrorBody),
    )
)]
async fn list_payment_methods(
    State(state): State<AppState>,
    MerchantCaller(ctx): MerchantCaller,
    PurposeHeader(purpose): PurposeHeader,
    ApiPath(id): ApiPath<String>,
) -> Result<impl IntoResponse, ApiError> {
    let methods = state.vault.list_payment_methods(&ctx, &id, purpose.as_deref()).await?;
    Ok(Json(PaymentMethods { payment_methods: methods }))
}

/// Remove a payment method.
#[utoipa::path(
    delete,
    path = "/v1/customers/{id}/payment-methods/{token}",
    operation_id = "delete_payment_method",
    tag = "merchant",
    security(("bearer_jwt" = [])),
    params(
        ("id" = String, Path, format = Uuid, description = "The customer's id"),
        ("token" = String, Path, description = "The method's token, `pm_` and 32 hex digits"),
    ),
    responses(
        (status = 204, description = "Removed"),
        (status = 404, description = "`not_found`: no such customer or method", body = ErrorBody),
    )
)]
async fn delete_payment_method(
    State(state): State<AppState>,
    MerchantCaller(ctx): MerchantCaller,
    ApiPath((id, token)): ApiPath<(String, String)>,
) -> Result<impl IntoResponse, ApiError> {
    state.vault.delete_payment_method(&ctx, &id, &token).await?;
    Ok(StatusCode::NO_CONTENT)
}
