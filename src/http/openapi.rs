//! The OpenAPI 3.1 document, generated from the code (never written by hand) and served at
//! `GET /openapi.json`.
//!
//! Each handler's `#[utoipa::path]` attribute declares its path, method, parameters (including
//! `X-Purpose`), request body and answers; `utoipa_axum::routes!` serves the handler at exactly
//! that path and method, so [`super::api`] is one list that both the router and this document
//! are built from. The answers every operation shares (authentication, rate limiting, audit
//! unavailability, body errors, timeouts) and the bearer scheme are added here once.

use std::sync::{Arc, LazyLock, Mutex};

use chrono::Datelike;
use serde_json::{Map, Value, json};

use utoipa::OpenApi;
use utoipa::openapi::header::HeaderBuilder;
use utoipa::openapi::path::{Operation, PathItem};
use utoipa::openapi::response::ResponseBuilder;
use utoipa::openapi::schema::{ObjectBuilder, Type};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{Components, ContentBuilder, Ref, RefOr, Response};

use super::error::ErrorBody;
use crate::domain::field_value::{FieldType, MAX_EMAIL_CHARS, MAX_STRING_BYTES, is_country_code};
use crate::policy::{FieldKind, LegalBasis, PolicySet, Purpose};

/// Name of the bearer (JWT) security scheme that authenticated operations require.
pub const BEARER: &str = "bearer_jwt";

/// The document's fixed parts; the paths come from [`super::api`].
#[derive(OpenApi)]
#[openapi(
    info(
        title = "Custodia",
        description = "A privacy vault for customer data: encrypted at rest, purpose-bound, \
            consent-aware, verifiably audited.\n\n\
            Every call except `/healthz`, `/metrics`, `/openapi.json` and the `public` pages \
            (`/portal`, `/transparency`, `/v1/transparency`) needs a bearer JWT whose \
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
        (name = "public", description = "The customers' privacy portal and the public transparency report; no token needed."),
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
        "`audit_unavailable`: the audit event could not be made durable, so nothing was done; \
         `audit_pending` (PostgreSQL): the change and its event are committed but the event's seq \
         is not known yet; do not repeat the request",
        true,
    ),
];

/// Component names of the shared answers added to authenticated operations.
const AUTHENTICATED: [&str; 5] =
    ["Unauthenticated", "Forbidden", "RateLimited", "AuditUnavailable", "Internal"];
/// Component names of the shared answers added to operations that take a JSON body.
const WITH_BODY: [&str; 4] = ["MalformedJson", "PayloadTooLarge", "UnsupportedMediaType", "InvalidBody"];

/// The static document (handler attributes only) as JSON, built once per process.
static BASE: LazyLock<Value> = LazyLock::new(|| {
    // invariant: the document is plain strings, maps and numbers; it always serialises.
    serde_json::to_value(document()).expect("the OpenAPI document serialises")
});

/// The last document served, with the policy set and year it was specialised for. One server
/// has one policy set, so this is built once; tests running servers with other sets rebuild.
static SERVED: Mutex<Option<Served>> = Mutex::new(None);

/// A served document: the policy set and (year, month) it was specialised for, and its JSON.
type Served = (PolicySet, (i32, u32), Arc<str>);

/// The OpenAPI document of every route [`super::router`] serves, before it is specialised to a
/// policy set: purposes, field names and field values are plain strings here.
pub fn document() -> utoipa::openapi::OpenApi {
    let mut doc = super::api().into_openapi();
    complete(&mut doc);
    doc
}

/// The document as served: [`document`] specialised to `policies` (see [`specialise`]), as
/// pretty JSON. Built once per policy set and calendar month (which bounds card expiry dates).
pub fn json(policies: &PolicySet) -> Arc<str> {
    let today = chrono::Utc::now().date_naive();
    let month = (today.year(), today.month());
    let mut served = SERVED.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some((set, built_for, text)) = served.as_ref()
        && set == policies
        && *built_for == month
    {
        return Arc::clone(text);
    }
    let mut doc = BASE.clone();
    specialise(&mut doc, policies, month);
    // invariant: a serde_json::Value always serialises.
    let text: Arc<str> = serde_json::to_string_pretty(&doc).expect("JSON value serialises").into();
    *served = Some((policies.clone(), month, Arc::clone(&text)));
    text
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

/// Longest consent `source` / `notice` and card holder text, in bytes, as the vault checks.
const MAX_LABEL_BYTES: usize = 128;
/// Most distinct fields one disclosure may name, as the vault checks.
const MAX_DISCLOSED_FIELDS: usize = 64;
/// Text without control characters (Unicode category Cc), as `char::is_control` defines them.
const NO_CONTROL: &str = r"^[^\u0000-\u001F\u007F-\u009F]*$";
/// A phone number as the vault accepts it: `+` and 8–15 digits; spaces and dashes anywhere
/// after the `+`, spaces before it.
const PHONE_PATTERN: &str = r"^ *\+[ -]*(?:[0-9][ -]*){8,15}$";
/// A card number as the vault accepts it before the Luhn check: 12–19 digits, spaces and dashes
/// anywhere.
const CARD_PATTERN: &str = r"^[ -]*(?:[0-9][ -]*){12,19}$";
/// A customer id as the server parses one: a UUID v4 in lower-case hyphenated form. Any other
/// spelling is not found (404), or refused (400) where an auditor filters by it.
const CUSTOMER_ID_PATTERN: &str = "^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[0-9a-f]{4}-[0-9a-f]{12}$";
/// The consent routes whose `{purpose}` becomes one concrete path per consent purpose.
const CONSENT_ROUTES: [&str; 2] = ["/v1/customers/{id}/consents/{purpose}", "/v1/me/consents/{purpose}"];
/// The objection route, whose `{purpose}` is limited to the purposes that admit an objection.
const OBJECTION_ROUTE: &str = "/v1/me/objections/{purpose}";

/// A `$ref` to a component schema.
fn schema_ref(name: &str) -> Value {
    json!({ "$ref": format!("#/components/schemas/{name}") })
}

/// Specialises the static document to the loaded policy set, so that it admits what the server
/// accepts and refuses what it refuses wherever JSON Schema can say so, and a generated client
/// is typed by the deployment's own names:
///
/// - `X-Purpose` headers and the disclosure body's `purpose` are an enum of the declared
///   purposes ([`PurposeName`]), its `recipient` of the declared recipients, field names in
///   disclosures and `?fields=` of the declared fields;
/// - a customer's `fields` object ([`CustomerFields`]) has one property per declared value field,
///   typed by its field type, and no other (in `PATCH`, each may also be `null`);
/// - the lookup takes exactly one indexed field (`minProperties`/`maxProperties` 1);
/// - a payment method is `oneOf` a card and a provider token;
/// - each consent purpose gets its own consent paths, whose body demands the purpose's current
///   notice version when consent is granted; objections take only purposes that admit one.
///
/// `today` (the current UTC year and month) bounds card expiry dates as the vault does. What
/// JSON Schema cannot say is in the descriptions: the Luhn check, limits the vault counts in UTF-8 bytes (`maxLength` counts characters, so it is only the
/// upper bound), and whether a field may be used for the purpose (403 `policy_denied`).
///
/// [`PurposeName`]: #/components/schemas/PurposeName
/// [`CustomerFields`]: #/components/schemas/CustomerFields
pub fn specialise(doc: &mut Value, policies: &PolicySet, today: (i32, u32)) {
    let value_fields: Vec<(&str, FieldType)> = policies
        .fields()
        .filter_map(|f| match f.kind {
            FieldKind::Value(ty) => Some((f.name.as_str(), ty)),
            FieldKind::PaymentMethods => None,
        })
        .collect();
    let consent_purposes: Vec<&Purpose> =
        policies.purposes().filter(|p| p.basis == LegalBasis::Consent).collect();

    let schemas = &mut doc["components"]["schemas"];
    add_name_schemas(schemas, policies);
    add_value_schemas(schemas);

    let field_props = |nullable: bool| -> Map<String, Value> {
        value_fields
            .iter()
            .map(|(name, ty)| {
                let value = schema_ref(value_schema_name(*ty));
                let value = if nullable { json!({ "anyOf": [value, { "type": "null" }] }) } else { value };
                ((*name).to_owned(), value)
            })
            .collect()
    };
    schemas["CustomerFields"] = json!({
        "type": "object",
        "description": "A customer's fields: one member per field declared in the policy files, \
            each of its declared type. A read answers only the fields the purpose may see.",
        "properties": field_props(false),
        "additionalProperties": false,
    });
    schemas["CustomerFieldsPatch"] = json!({
        "type": "object",
        "description": "Fields to change: one member per declared field, each of its declared \
            type, or `null` to remove the field.",
        "properties": field_props(true),
        "additionalProperties": false,
    });
    for (name, description) in [
        ("NewCustomer", None),
        ("CustomerPatch", None),
        ("CustomerView", Some("Field name → value.")),
        ("OwnProfile", Some("Every stored field, unmasked.")),
        ("Export", Some("Every stored field, unmasked.")),
    ] {
        let target = if name == "CustomerPatch" { "CustomerFieldsPatch" } else { "CustomerFields" };
        let mut field = schema_ref(target);
        if let Some(d) = description {
            field["description"] = json!(d);
        }
        schemas[name]["properties"]["fields"] = field;
    }

    // Consents given with a create: one statement shape per consent purpose.
    let statements: Vec<Value> = consent_purposes.iter().map(|p| consent_statement(p, true)).collect();
    schemas["NewCustomer"]["properties"]["consents"] = if statements.is_empty() {
        json!({ "type": "array", "maxItems": 0, "description": "No purpose is based on consent." })
    } else {
        // At most one statement per purpose (the vault refuses two: the choice would depend on
        // array order), said with JSON Schema 2020-12 `contains` / `maxContains`.
        let once: Vec<Value> = consent_purposes
            .iter()
            .map(|p| {
                json!({
                    "contains": { "type": "object", "required": ["purpose"],
                                  "properties": { "purpose": { "const": p.name } } },
                    "minContains": 0,
                    "maxContains": 1,
                })
            })
            .collect();
        json!({
            "type": "array",
            "description": "Consents collected together with the data: at most one statement per \
                consent purpose, naming it; a grant names the purpose's current notice version.",
            "items": { "oneOf": statements },
            "allOf": once,
        })
    };
    for p in &consent_purposes {
        schemas[format!("ConsentStatement.{}", p.name)] = consent_statement(p, false);
    }
    schemas["ConsentBody"]["properties"]["source"] =
        label("Where the consent was collected, e.g. `checkout-form`.");
    schemas["ConsentBody"]["properties"]["notice"] =
        json!({ "anyOf": [label("The notice version shown."), { "type": "null" }] });

    let disclosure = &mut schemas["DisclosureRequest"]["properties"];
    disclosure["customer_id"]["pattern"] = json!(CUSTOMER_ID_PATTERN);
    disclosure["recipient"] = schema_ref("RecipientName");
    disclosure["purpose"] = schema_ref("PurposeName");
    disclosure["fields"] = json!({
        "type": "array",
        "description": "Which fields: 1 to 64 distinct declared names (repeats count once).",
        "items": schema_ref("FieldName"),
        "minItems": 1,
    });
    if policies.fields().count() > MAX_DISCLOSED_FIELDS {
        disclosure["fields"]["maxItems"] = json!(MAX_DISCLOSED_FIELDS);
    }
    schemas["Disclosure"]["properties"]["recipient"] = schema_ref("RecipientName");
    schemas["Disclosure"]["properties"]["purpose"] = schema_ref("PurposeName");
    schemas["Disclosure"]["properties"]["fields"]["propertyNames"] = schema_ref("FieldName");

    payment_method_schemas(schemas, today);

    // Parameters.
    let indexed: Map<String, Value> = policies
        .fields()
        .filter(|f| f.index)
        .filter_map(|f| match f.kind {
            // A query value is text: an address cannot be looked up.
            FieldKind::Value(ty) if ty != FieldType::Address => {
                Some((f.name.clone(), schema_ref(value_schema_name(ty))))
            }
            _ => None,
        })
        .collect();
    let objectable: Vec<&str> =
        policies.purposes().filter(|p| p.objectable()).map(|p| p.name.as_str()).collect();
    let paths = doc["paths"].as_object_mut().expect("the document has paths");
    for (path, item) in paths.iter_mut() {
        for (_, op) in item.as_object_mut().into_iter().flatten() {
            // `get_mut`, not indexing: indexing a `&mut Value` inserts a `null` member.
            let params = op.get_mut("parameters").and_then(Value::as_array_mut);
            for param in params.into_iter().flatten() {
                match (param["in"].as_str(), param["name"].as_str()) {
                    // utoipa calls a u64 `int64`, which stops at 2^63 - 1; the server takes any u64.
                    _ if param["schema"]["format"] == "int64" && param["schema"]["minimum"] == 0 => {
                        let schema = param["schema"].as_object_mut().expect("an object schema");
                        schema.remove("format");
                        schema.insert("maximum".into(), json!(u64::MAX));
                    }
                    (Some("header"), Some("X-Purpose")) => param["schema"] = schema_ref("PurposeName"),
                    (Some("path"), Some("id")) | (Some("query"), Some("customer_id")) => {
                        param["schema"]["pattern"] = json!(CUSTOMER_ID_PATTERN);
                    }
                    (Some("query"), Some("fields")) if path == "/v1/customers/{id}" => {
                        param["schema"] =
                            json!({ "type": "array", "items": schema_ref("FieldName"), "minItems": 1 });
                        param["style"] = json!("form");
                        param["explode"] = json!(false);
                        param["description"] = json!(
                            "Declared field names, comma-separated, to narrow the read, e.g. `name,email`"
                        );
                    }
                    (Some("query"), Some("lookup")) => {
                        param["schema"] = json!({
                            "type": "object",
                            "properties": indexed,
                            "additionalProperties": false,
                            "minProperties": 1,
                            "maxProperties": 1,
                        });
                        param["description"] =
                            json!("Exactly one indexed field and its value, e.g. `email=jane@example.com`");
                    }
                    (Some("path"), Some("purpose")) if path == OBJECTION_ROUTE => {
                        param["schema"] = json!({ "type": "string", "enum": objectable });
                        param["description"] = json!("A declared purpose that admits an objection (Art. 21)");
                    }
                    _ => {}
                }
            }
        }
    }
    if !consent_purposes.is_empty() {
        for template in CONSENT_ROUTES {
            let Some(item) = paths.remove(template) else { continue };
            for p in &consent_purposes {
                paths.insert(template.replace("{purpose}", &p.name), consent_path(&item, p));
            }
        }
    }
}

/// The enums of declared names: `PurposeName`, `FieldName` and `RecipientName`.
fn add_name_schemas(schemas: &mut Value, policies: &PolicySet) {
    let purposes: Vec<String> = policies
        .purposes()
        .map(|p| {
            let text = if p.description.is_empty() { String::new() } else { format!(": {}", p.description) };
            format!("- `{}` ({}){text}", p.name, p.basis)
        })
        .collect();
    schemas["PurposeName"] = json!({
        "type": "string",
        "description": format!("A purpose declared in the policy files, with its legal basis:\n{}",
            purposes.join("\n")),
        "enum": policies.purposes().map(|p| p.name.as_str()).collect::<Vec<_>>(),
    });
    schemas["FieldName"] = json!({
        "type": "string",
        "description": "A field declared in the policy files.",
        "enum": policies.fields().map(|f| f.name.as_str()).collect::<Vec<_>>(),
    });
    schemas["RecipientName"] = json!({
        "type": "string",
        "description": "A recipient (third party) declared in the policy files.",
        "enum": policies.recipients().map(|r| r.name.as_str()).collect::<Vec<_>>(),
    });
}

/// The component schema of a field type's values.
fn value_schema_name(ty: FieldType) -> &'static str {
    match ty {
        FieldType::String => "TextValue",
        FieldType::Email => "EmailValue",
        FieldType::Phone => "PhoneValue",
        FieldType::Date => "DateValue",
        FieldType::Address => "AddressValue",
        FieldType::Country => "CountryCode",
    }
}

/// One schema per field type, as `FieldType::parse` accepts values.
fn add_value_schemas(schemas: &mut Value) {
    let text = |min: usize, description: &str| json!({ "type": "string", "minLength": min, "maxLength": MAX_STRING_BYTES, "description": description });
    // Every assigned ISO 3166-1 alpha-2 code: the vault accepts exactly these.
    let countries: Vec<String> = (b'A'..=b'Z')
        .flat_map(|a| (b'A'..=b'Z').map(move |b| String::from_utf8(vec![a, b]).unwrap_or_default()))
        .filter(|code| is_country_code(code))
        .collect();
    schemas["TextValue"] = text(1, "Type `string`: non-empty, at most 4096 bytes of UTF-8.");
    schemas["EmailValue"] = json!({
        "type": "string",
        "format": "email",
        "maxLength": MAX_EMAIL_CHARS,
        "description": "Type `email`: `local@domain`, the domain with a dot; at most 254 characters. \
            Stored as given; looked up trimmed and lower-cased.",
    });
    schemas["PhoneValue"] = json!({
        "type": "string",
        "pattern": PHONE_PATTERN,
        "description": "Type `phone`: `+` and 8 to 15 digits, spaces and dashes allowed; stored and \
            answered as `+` and the digits.",
    });
    schemas["DateValue"] = json!({
        "type": "string",
        "format": "date",
        "pattern": "^[0-9]{4}-[0-9]{2}-[0-9]{2}$",
        "description": "Type `date`: a calendar date `YYYY-MM-DD` (years 0001 to 9999).",
    });
    schemas["CountryCode"] = json!({
        "type": "string",
        "enum": countries,
        "description": "Type `country`: an assigned ISO 3166-1 alpha-2 code in capitals.",
    });
    schemas["AddressValue"] = json!({
        "type": "object",
        "description": "Type `address`: a postal address; every member at most 4096 bytes.",
        "required": ["line1", "city", "postal_code", "country"],
        "properties": {
            "line1": text(1, "First address line."),
            "line2": text(0, "Second address line (may be empty)."),
            "city": text(1, "City."),
            "region": text(0, "Region or state (may be empty)."),
            "postal_code": text(1, "Postal code."),
            "country": schema_ref("CountryCode"),
        },
        "additionalProperties": false,
    });
}

/// A short label (consent `source` and `notice`): 1–128 bytes, no control characters.
fn label(description: &str) -> Value {
    json!({
        "type": "string",
        "minLength": 1,
        "maxLength": MAX_LABEL_BYTES,
        "pattern": NO_CONTROL,
        "description": format!("{description} 1 to 128 bytes, no control characters."),
    })
}

/// The consent statement the vault accepts for `p`: with the purpose's notice, a grant must name
/// exactly that version and a withdrawal may name it or none; without one, no notice is named
/// (the vault stores notices in the clear, so only declared versions). `with_purpose` adds the
/// `purpose` member a statement in a create body carries.
fn consent_statement(p: &Purpose, with_purpose: bool) -> Value {
    let object = |granted: Value, notice: Value, notice_required: bool| {
        let mut required = vec!["granted", "source"];
        let mut properties = Map::new();
        if with_purpose {
            required.push("purpose");
            properties.insert("purpose".into(), json!({ "const": p.name }));
        }
        if notice_required {
            required.push("notice");
        }
        properties.insert("granted".into(), granted);
        properties.insert("source".into(), label("Where the consent was collected, e.g. `checkout-form`."));
        properties.insert("notice".into(), notice);
        json!({ "type": "object", "required": required, "properties": properties, "additionalProperties": false })
    };
    match &p.notice {
        Some(current) => json!({
            "description": format!("A consent statement for `{}`: a grant names the current notice \
                version `{current}`; a withdrawal names it or none.", p.name),
            "oneOf": [
                object(json!({ "const": true }), json!({ "const": current }), true),
                object(json!({ "const": false }), json!({ "anyOf": [{ "const": current }, { "type": "null" }] }), false),
            ],
        }),
        None => {
            let mut schema = object(json!({ "type": "boolean" }), json!({ "type": "null" }), false);
            schema["description"] = json!(format!("A consent statement for `{}`.", p.name));
            schema
        }
    }
}

/// The consent path item of one purpose, made from the `{purpose}` template's.
fn consent_path(template: &Value, p: &Purpose) -> Value {
    let mut item = template.clone();
    for (_, op) in item.as_object_mut().into_iter().flatten() {
        if let Some(params) = op.get_mut("parameters").and_then(Value::as_array_mut) {
            params.retain(|param| !(param["in"] == "path" && param["name"] == "purpose"));
        }
        if let Some(id) = op["operationId"].as_str() {
            op["operationId"] = json!(format!("{id}_{}", p.name.replace('-', "_")));
        }
        if let Some(summary) = op["summary"].as_str() {
            op["summary"] = json!(format!("{summary} ({})", p.name));
        }
        if op["requestBody"].is_object() {
            op["requestBody"]["content"]["application/json"]["schema"] =
                schema_ref(&format!("ConsentStatement.{}", p.name));
        }
    }
    item
}

/// A payment method is exactly one of a card and a provider token; their members as the vault
/// checks them (the Luhn check is in the description). The expiry is this month or later, and
/// at most 50 years ahead.
fn payment_method_schemas(schemas: &mut Value, (year, month): (i32, u32)) {
    let one = |member: &str, schema: &str| {
        json!({
            "type": "object",
            "required": [member],
            "properties": { member: schema_ref(schema) },
            "additionalProperties": false,
        })
    };
    let description = schemas["NewPaymentMethod"]["description"].clone();
    schemas["NewPaymentMethod"] = json!({
        "description": description,
        "oneOf": [one("card", "CardInput"), one("provider_token", "ProviderTokenInput")],
    });
    let card = &mut schemas["CardInput"]["properties"];
    card["number"] = json!({
        "type": "string",
        "pattern": CARD_PATTERN,
        "description": "The card number: 12 to 19 digits, spaces and dashes allowed; it must pass \
            the Luhn check (else 422).",
    });
    card["exp_month"] = json!({ "type": "integer", "minimum": 1, "maximum": 12,
        "description": "1 to 12; in this year's `exp_year`, not a month already past." });
    card["exp_year"] = json!({ "type": "integer", "minimum": year.max(2000), "maximum": year + 50,
        "description": "Four digits, from this year to 50 years ahead." });
    card["holder"] = json!({
        "type": ["string", "null"],
        "maxLength": MAX_LABEL_BYTES,
        "pattern": r"^[^\u0000-\u001F\u007F-\u009F]*[^\s\u0000-\u001F\u007F-\u009F][^\u0000-\u001F\u007F-\u009F]*$",
        "description": "The cardholder's name: at most 128 bytes, not blank, no control characters.",
    });
    // Not expired: a later year, or this year and a month not yet past.
    schemas["CardInput"]["anyOf"] = json!([
        { "properties": { "exp_year": { "minimum": year + 1 } } },
        { "properties": { "exp_month": { "minimum": month } } },
    ]);
    let token = &mut schemas["ProviderTokenInput"]["properties"];
    token["provider"] = json!({ "type": "string", "pattern": "^[A-Za-z0-9_.-]{1,64}$",
        "description": "The provider's name: 1 to 64 of `[A-Za-z0-9_.-]`." });
    token["token"] = json!({ "type": "string", "minLength": 1, "maxLength": 512, "pattern": NO_CONTROL,
        "description": "The provider's token: 1 to 512 bytes, no control characters." });
}
