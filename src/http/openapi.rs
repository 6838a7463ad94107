//! The OpenAPI 3.1 document, generated from the code (never written by hand) and served at
//! `GET /openapi.json`.
//!
//! Each handler's `#[utoipa::path]` attribute declares its path, method, parameters (including
//! `X-Purpose`), request body and answers; `utoipa_axum::routes!` serves the handler at exactly
//! that path and method, so [`super::api`] is one list that both the router and this document
//! are built from. The answers every operation shares (authentication, rate limiting, audit
//! unavailability, body errors, timeouts) and the bearer scheme are added here once.

use std::sync::LazyLock;

use utoipa::OpenApi;
use utoipa::openapi::header::HeaderBuilder;
use utoipa::openapi::path::{Operation, PathItem};
use utoipa::openapi::response::ResponseBuilder;
use utoipa::openapi::schema::{ObjectBuilder, Type};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{Components, ContentBuilder, Ref, RefOr, Response};

use super::error::ErrorBody;

/// Name of the bearer (JWT) security scheme that authenticated operations require.
pub const BEARER: &str = "bearer_jwt";

/// The document's fixed parts; the paths come from [`super::api`].
#[derive(OpenApi)]
#[openapi(
    info(
        title = "Custodia",
        description = "A privacy vault for customer data: encrypted at rest, purpose-bound, \
            consent-aware, verifiably audited.\n\n\
            Every call except `/healthz`, `/metrics` and `/openapi.json` needs a bearer JWT whose \
            `role` claim (`merchant`, `customer` or `auditor`) matches the route's tag; a \
            customer acts on the id in `sub`. Merchant calls that read customer data need an \
            `X-Purpose` header naming a purpose declared in the policy files. Every error is \
            `{\"error\": code, \"message\": text}` (plus `denied` on `policy_denied`). Every \
            answer carries `X-Request-Id` (a well-formed client id is kept), and every call that \
            touches customer data or the audit log is an audit event."
    ),
    tags(
        (name = "merchant", description = "The merchant's backend (`role = \"merchant\"`)."),
        (name = "customer", description = "The data subject (`role = \"customer\"`), acting on the token's `sub` alone."),
        (name = "auditor", description = "Outside auditors (`role = \"auditor\"`); every call is itself audited."),
        (name = "operations", description = "Health, metrics and this document; no token needed."),
    )
)]
pub(super) struct ApiDoc;

/// Answers shared by many operations: (status, component name, description, has an error body).
const SHARED: [(&str, &str, &str, bool); 10] = [
    ("400", "MalformedJson", "`malformed_json`: the body is not valid JSON", true),
    (
        "401",
        "Unauthenticated",
        "`unauthenticated`: a missing, malformed, expired or wrongly signed token",
        true,
    ),
    ("403", "Forbidden", "`forbidden`: the token's role may not call this route", true),
    ("408", "Timeout", "The request took longer than the configured timeout (empty body)", false),
    ("413", "PayloadTooLarge", "`payload_too_large`: the body exceeds the configured limit", true),
    ("415", "UnsupportedMediaType", "`unsupported_media_type`: send the body as `application/json`", true),
    (
        "422",
        "InvalidBody",
        "`invalid_body`: the body has the wrong shape (names the member, never a value)",
        true,
    ),
    ("429", "RateLimited", "`rate_limited`: the caller's request budget is spent; see `Retry-After`", true),
    ("500", "Internal", "`internal`: an internal error (details are logged, not returned)", true),
    (
        "503",
        "AuditUnavailable",
        "`audit_unavailable`: the audit event could not be made durable, so nothing was done",
        true,
    ),
];

/// Component names of the shared answers added to authenticated operations.
const AUTHENTICATED: [&str; 5] =
    ["Unauthenticated", "Forbidden", "RateLimited", "AuditUnavailable", "Internal"];
/// Component names of the shared answers added to operations that take a JSON body.
const WITH_BODY: [&str; 4] = ["MalformedJson", "PayloadTooLarge", "UnsupportedMediaType", "InvalidBody"];

static DOCUMENT: LazyLock<String> = LazyLock::new(|| {
    // invariant: the document is plain strings, maps and numbers; it always serialises.
    document().to_pretty_json().expect("the OpenAPI document serialises")
});

/// The OpenAPI document of every route [`super::router`] serves.
pub fn document() -> utoipa::openapi::OpenApi {
    let mut doc = super::api().into_openapi();
    complete(&mut doc);
    doc
}

/// The document as JSON, built once per process.
pub fn json() -> &'static str {
    &DOCUMENT
}

/// Adds the bearer scheme, the shared answers and the `X-Request-Id` response header.
fn complete(doc: &mut utoipa::openapi::OpenApi) {
    let components = doc.components.get_or_insert_with(Components::new);
    components.add_security_scheme(
        BEARER,
        SecurityScheme::Http(
            HttpBuilder::new()
                .scheme(HttpAuthScheme::Bearer)
                .bearer_format("JWT")
                .description(Some(
                    "A JWT with `exp`, `sub` and `role`; the algorithm is pinned by the configured key \
                     (HS256, RS256, ES256 or EdDSA), `iss` and `aud` are checked when configured.",
                ))
                .build(),
        ),
    );
    for (status, name, description, has_body) in SHARED {
        let mut response = ResponseBuilder::new().description(description);
        if has_body {
            response =
                response.content("application/json", ContentBuilder::new().schema(Some(error_ref())).build());
        }
        if status == "429" {
            let retry = HeaderBuilder::new()
                .schema(Some(ObjectBuilder::new().schema_type(Type::Integer)))
                .description(Some("Seconds to wait before retrying"))
                .build();
            response = response.header("Retry-After", retry);
        }
        let mut response = response.build();
        add_request_id(&mut response);
        components.responses.insert(name.to_owned(), RefOr::T(response));
    }

    for item in doc.paths.paths.values_mut() {
        for operation in operations(item) {
            let authenticated = operation.security.as_ref().is_some_and(|s| !s.is_empty());
            let mut shared = vec!["Timeout"];
            if authenticated {
                shared.extend(AUTHENTICATED);
            }
            if operation.request_body.is_some() {
                shared.extend(WITH_BODY);
            }
            for name in shared {
                let Some((status, ..)) = SHARED.iter().find(|(_, n, ..)| *n == name) else { continue };
                // A route's own description of a status (e.g. 403 `policy_denied`) wins.
                operation
                    .responses
                    .responses
                    .entry((*status).to_owned())
                    .or_insert_with(|| RefOr::Ref(Ref::from_response_name(name)));
            }
            for response in operation.responses.responses.values_mut() {
                if let RefOr::T(response) = response {
                    add_request_id(response);
                }
            }
        }
    }
}

/// Every operation of a path item.
fn operations(item: &mut PathItem) -> impl Iterator<Item = &mut Operation> {
    [
        &mut item.get,
        &mut item.put,
        &mut item.post,
        &mut item.delete,
        &mut item.options,
        &mut item.head,
        &mut item.patch,
        &mut item.trace,
    ]
    .into_iter()
    .filter_map(Option::as_mut)
}

fn error_ref() -> RefOr<utoipa::openapi::schema::Schema> {
    RefOr::Ref(Ref::from_schema_name(<ErrorBody<'_> as utoipa::ToSchema>::name()))
}

fn add_request_id(response: &mut Response) {
    let header = HeaderBuilder::new()
        .schema(Some(ObjectBuilder::new().schema_type(Type::String)))
        .description(Some("The request's id: the client's `X-Request-Id` if well-formed, else a random one"))
        .build();
    response.headers.insert("X-Request-Id".to_owned(), RefOr::T(header));
}
