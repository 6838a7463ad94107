//! `/openapi.json`: an OpenAPI 3.1 document generated from the code that covers exactly the
//! routes the router serves, with their security, `X-Purpose` headers and error shape.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use custodia::http::rate_limit::CallerLimiter;
use custodia::http::{AppState, Limits};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tower::ServiceExt;

use crate::helpers::{TestApp, spawn_app, test_settings};

/// Methods a route can be served under (axum answers HEAD for GET routes by itself).
const METHODS: [&str; 5] = ["GET", "POST", "PUT", "PATCH", "DELETE"];

/// Fills path parameters with well-formed values so a probe reaches the handler.
fn concrete(template: &str) -> String {
    template
        .replace("{id}", "7f3a4b5c-1d2e-4f60-8a9b-0c1d2e3f4a5b")
        .replace("{purpose}", "marketing")
        .replace("{token}", "pm_00000000000000000000000000000000")
        .replace("{seq}", "0")
        .replace("/portal/{asset}", "/portal/portal.js")
        .replace("/transparency/{asset}", "/transparency/transparency.js")
}

/// The document's operations as (METHOD, path template).
fn documented(doc: &Value) -> BTreeSet<(String, String)> {
    let mut out = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for method in item.as_object().expect("path item").keys() {
            out.insert((method.to_uppercase(), path.clone()));
        }
    }
    out
}

fn operation<'a>(doc: &'a Value, method: &str, path: &str) -> &'a Value {
    let op = &doc["paths"][path][method.to_lowercase()];
    assert!(op.is_object(), "{method} {path} is not documented");
    op
}

fn header_param<'a>(op: &'a Value, name: &str) -> Option<&'a Value> {
    op["parameters"].as_array()?.iter().find(|p| p["in"] == "header" && p["name"] == name)
}

/// Resolves a `$ref` to a component schema.
fn schema<'a>(doc: &'a Value, name: &str) -> &'a Value {
    let s = &doc["components"]["schemas"][name];
    assert!(s.is_object(), "schema {name} is missing");
    s
}

/// Checks that `value`'s members are all documented properties of `name` and that every
/// required property is present.
fn conforms(doc: &Value, name: &str, value: &Value) {
    let schema = schema(doc, name);
    let properties = schema["properties"].as_object().expect("properties");
    let object = value.as_object().unwrap_or_else(|| panic!("{name}: not an object: {value}"));
    for key in object.keys() {
        assert!(properties.contains_key(key), "{name} does not document member `{key}` of {value}");
    }
    for required in schema["required"].as_array().into_iter().flatten() {
        let required = required.as_str().unwrap();
        assert!(object.contains_key(required), "{name} requires `{required}`, missing in {value}");
    }
}

#[tokio::test]
async fn openapi_json_is_an_openapi_3_1_document_served_without_a_token() {
    let app = spawn_app().await;
    let res = app.call(Method::GET, "/openapi.json", None, None, None).await;
    assert_eq!(res.status, StatusCode::OK);
    assert!(res.headers["content-type"].to_str().unwrap().starts_with("application/json"));
    let doc = res.body;
    assert!(doc["openapi"].as_str().unwrap().starts_with("3.1."), "{}", doc["openapi"]);
    assert_eq!(doc["info"]["title"], "Custodia");

    let bearer = &doc["components"]["securitySchemes"]["bearer_jwt"];
    assert_eq!(bearer["type"], "http");
    assert_eq!(bearer["scheme"], "bearer");
    assert_eq!(bearer["bearerFormat"], "JWT");

    let mut ids = BTreeSet::new();
    for (method, path) in documented(&doc) {
        let op = operation(&doc, &method, &path);
        let id = op["operationId"].as_str().unwrap_or_else(|| panic!("{method} {path} has no operationId"));
        assert!(ids.insert(id.to_owned()), "operationId {id} is used twice");
        assert!(op["summary"].as_str().is_some_and(|s| !s.is_empty()), "{method} {path} has no summary");
        for (status, response) in op["responses"].as_object().unwrap() {
            assert!(!response.is_null(), "{method} {path} {status}");
        }
    }
}

#[tokio::test]
async fn the_document_declares_purpose_headers_errors_and_bodies() {
    let app = spawn_app().await;
    let doc = app.call(Method::GET, "/openapi.json", None, None, None).await.body;

    // Reads of customer data need X-Purpose; writes and erasure accept one.
    for (method, path) in [
        ("GET", "/v1/customers/{id}"),
        ("GET", "/v1/customers"),
        ("GET", "/v1/customers/{id}/payment-methods"),
    ] {
        let purpose = header_param(operation(&doc, method, path), "X-Purpose")
            .unwrap_or_else(|| panic!("{method} {path} lacks X-Purpose"));
        assert_eq!(purpose["required"], true, "{method} {path}");
    }
    for (method, path) in
        [("POST", "/v1/customers"), ("PATCH", "/v1/customers/{id}"), ("DELETE", "/v1/customers/{id}")]
    {
        let purpose = header_param(operation(&doc, method, path), "X-Purpose")
            .unwrap_or_else(|| panic!("{method} {path} lacks X-Purpose"));
        assert_ne!(purpose["required"], true, "{method} {path}");
    }
    assert!(header_param(operation(&doc, "GET", "/v1/me"), "X-Purpose").is_none());

    // The error shape, with `denied` on policy_denied and the reason codes enumerated.
    let error = schema(&doc, "ErrorBody");
    assert_eq!(error["required"], json!(["error", "message"]));
    assert_eq!(error["properties"]["denied"]["items"]["$ref"], "#/components/schemas/Denied");
    let reasons = schema(&doc, "ReasonCode")["enum"].as_array().unwrap().clone();
    assert!(reasons.contains(&json!("consent_missing")) && reasons.contains(&json!("no_grant")));
    let denied = &operation(&doc, "POST", "/v1/disclosures")["responses"]["403"];
    assert_eq!(denied["content"]["application/json"]["schema"]["$ref"], "#/components/schemas/ErrorBody");

    // Every authenticated operation declares the bearer scheme and the shared refusals.
    for (method, path) in documented(&doc) {
        let op = operation(&doc, &method, &path);
        let public = [
            "/healthz",
            "/metrics",
            "/openapi.json",
            "/portal",
            "/portal/{asset}",
            "/transparency",
            "/transparency/{asset}",
            "/v1/transparency",
        ]
        .contains(&path.as_str());
        if public {
            assert!(op["security"].is_null(), "{path} must need no token");
            continue;
        }
        assert_eq!(op["security"], json!([{ "bearer_jwt": [] }]), "{method} {path}");
        for status in ["401", "403", "429", "503"] {
            assert!(op["responses"][status].is_object(), "{method} {path} lacks {status}");
        }
        if op["requestBody"].is_object() {
            let body = &op["requestBody"]["content"]["application/json"]["schema"];
            assert!(body["$ref"].is_string() || body.is_object(), "{method} {path} body has no schema");
            for status in ["400", "413", "415", "422"] {
                assert!(op["responses"][status].is_object(), "{method} {path} lacks {status}");
            }
        }
        let ok = op["responses"].as_object().unwrap().keys().any(|s| s.starts_with('2'));
        assert!(ok, "{method} {path} documents no success");
    }
    let created = &operation(&doc, "POST", "/v1/customers")["responses"]["201"];
    assert_eq!(created["content"]["application/json"]["schema"]["$ref"], "#/components/schemas/CustomerRef");
}

/// Walks the document and probes each operation on the running server without a token: an
/// authenticated route must answer 401 and a public one 200. A documented route the router
/// does not serve would reach the fallback (404 `not_found` or 405 `method_not_allowed`).
#[tokio::test]
async fn every_documented_operation_is_served() {
    let app = spawn_app().await;
    let doc = app.call(Method::GET, "/openapi.json", None, None, None).await.body;
    let operations = documented(&doc);
    assert!(operations.len() >= 27, "only {} operations documented", operations.len());
    for (method, path) in operations {
        let secured = operation(&doc, &method, &path)["security"].is_array();
        let res = app.call(method.parse().unwrap(), &concrete(&path), None, None, None).await;
        let expected = if secured { StatusCode::UNAUTHORIZED } else { StatusCode::OK };
        assert_eq!(res.status, expected, "{method} {path}: {}", res.body);
    }
}

/// The other way round: enumerates the path templates of the very router `serve` runs (axum
/// prints them in its `Debug` output) and probes every method on each; whatever the fallbacks
/// do not answer must be documented. A route added to the router without a `#[utoipa::path]`
/// makes this fail.
#[tokio::test]
async fn every_served_route_is_documented() {
    let dir = tempfile::tempdir().unwrap();
    let settings = test_settings(dir.path());
    let (vault, _store, auth) = custodia::startup::open_vault(&settings).await.expect("vault opens");
    let state = AppState::new(vault, Arc::new(auth), Arc::new(CallerLimiter::new(0, 0)));
    let limits = Limits { max_body_bytes: 65_536, request_timeout: Duration::from_secs(10) };
    let router = custodia::http::router(state, limits);

    let doc: Value = {
        let req = axum::http::Request::get("/openapi.json").body(Body::empty()).unwrap();
        let res = router.clone().oneshot(req).await.unwrap();
        serde_json::from_slice(&axum::body::to_bytes(res.into_body(), usize::MAX).await.unwrap()).unwrap()
    };
    let served_paths = served_paths(&format!("{router:?}"));
    // The document gives each consent purpose its own path; the router serves their template.
    let documented: BTreeSet<(String, String)> =
        documented(&doc).into_iter().map(|(m, p)| (m, template_of(&p, &served_paths))).collect();
    let documented_paths: BTreeSet<&str> = documented.iter().map(|(_, p)| p.as_str()).collect();

    assert!(
        served_paths.len() >= documented_paths.len(),
        "could not enumerate the router's paths (axum's Debug output changed?): {served_paths:?}"
    );
    let mut served = BTreeSet::new();
    for path in &served_paths {
        for method in METHODS {
            let req = axum::http::Request::builder()
                .method(method)
                .uri(concrete(path))
                .header("content-type", "application/json")
                .body(Body::from("{}"))
                .unwrap();
            let res = router.clone().oneshot(req).await.unwrap();
            // Without a token a served route answers 401 (or 200 when public); the fallbacks
            // answer 405 for a method the path lacks and 404 for a path no route matches.
            if ![StatusCode::METHOD_NOT_ALLOWED, StatusCode::NOT_FOUND].contains(&res.status()) {
                served.insert((method.to_owned(), path.clone()));
            }
        }
    }
    let undocumented: Vec<_> = served.difference(&documented).collect();
    assert!(undocumented.is_empty(), "served but not in /openapi.json: {undocumented:?}");
    let unserved: Vec<_> = documented.difference(&served).collect();
    assert!(unserved.is_empty(), "in /openapi.json but not served: {unserved:?}");
}

/// The served template a documented path is an instance of: itself when served as written,
/// else the one template whose `{parameter}` segments stand where the path has a concrete
/// segment (and which matches it everywhere else).
fn template_of(path: &str, served: &BTreeSet<String>) -> String {
    if served.contains(path) {
        return path.to_owned();
    }
    let segments: Vec<&str> = path.split('/').collect();
    let matching: Vec<&String> = served
        .iter()
        .filter(|t| {
            let template: Vec<&str> = t.split('/').collect();
            template.len() == segments.len()
                && template.iter().zip(&segments).all(|(t, s)| t == s || t.starts_with('{'))
        })
        .collect();
    match matching.as_slice() {
        [one] => (*one).clone(),
        _ => path.to_owned(),
    }
}

/// The path templates in a router's `Debug` output (`paths: {RouteId(0): "/v1/…", …}`) before
/// its `fallback_router`, which holds only axum's catch-all for the fallback.
fn served_paths(debug: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let routes = debug.split("fallback_router").next().unwrap_or_default();
    for section in routes.split("paths: {").skip(1) {
        // Collect the quoted strings up to the `}` that closes the map (braces inside quotes
        // are template parameters).
        let mut in_string = false;
        let mut current = String::new();
        let mut chars = section.chars();
        while let Some(c) = chars.next() {
            match (in_string, c) {
                (false, '}') => break,
                (false, '"') => in_string = true,
                (true, '\\') => current.extend(chars.next()),
                (true, '"') => {
                    in_string = false;
                    let path = std::mem::take(&mut current);
                    if path.starts_with('/') && !path.contains("__private__") {
                        out.insert(path);
                    }
                }
                (true, c) => current.push(c),
                (false, _) => {}
            }
        }
    }
    out
}

/// The doc-only schemas (audit events) and the error shape match what the server answers.
#[tokio::test]
async fn documented_shapes_match_real_answers() {
    let app = spawn_app().await;
    let doc = app.call(Method::GET, "/openapi.json", None, None, None).await.body;
    let merchant = app.merchant();
    let id = app.create_customer(json!({ "name": "Ada Lovelace", "email": "ada@example.com" })).await;

    let read = app.read_customer(&id, "order_fulfillment").await;
    conforms(&doc, "CustomerView", &read.body);

    let body = json!({ "customer_id": id, "recipient": "letterbox-newsletter", "purpose": "marketing",
        "fields": ["email", "phone"] });
    let denied = app.call(Method::POST, "/v1/disclosures", Some(&merchant), None, Some(&body)).await;
    assert_eq!(denied.status, StatusCode::FORBIDDEN);
    conforms(&doc, "ErrorBody", &denied.body);
    let reasons = schema(&doc, "ReasonCode")["enum"].as_array().unwrap().clone();
    for entry in denied.body["denied"].as_array().unwrap() {
        conforms(&doc, "Denied", entry);
        assert!(reasons.contains(&entry["reason"]), "{entry}");
    }

    let missing = app.call(Method::GET, "/v1/me", Some("not-a-token"), None, None).await;
    conforms(&doc, "ErrorBody", &missing.body);

    let events = app.call(Method::GET, "/v1/audit/events", Some(&app.auditor()), None, None).await;
    conforms(&doc, "Events", &events.body);
    let events = events.body["events"].as_array().unwrap();
    assert!(events.len() >= 3);
    for event in events {
        conforms(&doc, "AuditEvent", event);
        conforms(&doc, "AuditActor", &event["actor"]);
    }

    let lookup = app
        .call(
            Method::GET,
            "/v1/customers?email=ada@example.com",
            Some(&merchant),
            Some("order_fulfillment"),
            None,
        )
        .await;
    conforms(&doc, "Matches", &lookup.body);
    let checkpoint = app.call(Method::GET, "/v1/audit/checkpoint", Some(&app.auditor()), None, None).await;
    conforms(&doc, "Checkpoint", &checkpoint.body);
}

/// The policy set the test servers load.
fn policies() -> custodia::policy::PolicySet {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("policies");
    custodia::policy::PolicySet::load(&dir).expect("the example policies load")
}

/// The names of an enum schema, as strings.
fn enum_names(schema: &Value) -> BTreeSet<String> {
    let values = schema["enum"].as_array().unwrap_or_else(|| panic!("not an enum: {schema}"));
    values.iter().map(|v| v.as_str().expect("a string").to_owned()).collect()
}

/// The component schema a `{"$ref": ...}` names.
fn ref_name(schema: &Value) -> &str {
    let target = schema["$ref"].as_str().unwrap_or_else(|| panic!("not a $ref: {schema}"));
    target.strip_prefix("#/components/schemas/").unwrap_or_else(|| panic!("not a schema ref: {target}"))
}

async fn served_document(app: &TestApp) -> Value {
    let res = app.call(Method::GET, "/openapi.json", None, None, None).await;
    assert_eq!(res.status, StatusCode::OK);
    res.body
}

#[tokio::test]
async fn every_x_purpose_header_is_an_enum_of_the_declared_purposes() {
    let app = spawn_app().await;
    let doc = served_document(&app).await;
    let declared: BTreeSet<String> = policies().purposes().map(|p| p.name.clone()).collect();
    assert_eq!(enum_names(schema(&doc, "PurposeName")), declared);
    let mut headers = 0;
    for (method, path) in documented(&doc) {
        if let Some(header) = header_param(operation(&doc, &method, &path), "X-Purpose") {
            assert_eq!(ref_name(&header["schema"]), "PurposeName", "{method} {path}");
            headers += 1;
        }
    }
    assert!(headers >= 6, "only {headers} X-Purpose headers");
}

#[tokio::test]
async fn a_customers_fields_object_has_one_property_per_declared_field_typed_by_its_field_type() {
    use custodia::domain::field_value::FieldType;
    use custodia::policy::FieldKind;

    let app = spawn_app().await;
    let doc = served_document(&app).await;
    let expected: BTreeMap<String, &str> = policies()
        .fields()
        .filter_map(|f| match f.kind {
            FieldKind::Value(ty) => Some((
                f.name.clone(),
                match ty {
                    FieldType::String => "TextValue",
                    FieldType::Email => "EmailValue",
                    FieldType::Phone => "PhoneValue",
                    FieldType::Date => "DateValue",
                    FieldType::Address => "AddressValue",
                    FieldType::Country => "CountryCode",
                },
            )),
            FieldKind::PaymentMethods => None,
        })
        .collect();
    assert!(expected.contains_key("email") && !expected.contains_key("payment_methods"));

    let fields = schema(&doc, "CustomerFields");
    assert_eq!(fields["additionalProperties"], false);
    let properties = fields["properties"].as_object().unwrap();
    let typed: BTreeMap<String, &str> = properties.iter().map(|(k, v)| (k.clone(), ref_name(v))).collect();
    assert_eq!(typed, expected);

    let patch = schema(&doc, "CustomerFieldsPatch");
    assert_eq!(patch["additionalProperties"], false);
    for (name, ty) in &expected {
        let any_of = patch["properties"][name]["anyOf"].as_array().unwrap();
        assert_eq!(ref_name(&any_of[0]), *ty, "{name}");
        assert_eq!(any_of[1], json!({ "type": "null" }), "{name}");
    }

    // The bodies and answers that carry fields use them.
    assert_eq!(ref_name(&schema(&doc, "NewCustomer")["properties"]["fields"]), "CustomerFields");
    assert_eq!(ref_name(&schema(&doc, "CustomerPatch")["properties"]["fields"]), "CustomerFieldsPatch");
    for answer in ["CustomerView", "OwnProfile", "Export"] {
        assert_eq!(ref_name(&schema(&doc, answer)["properties"]["fields"]), "CustomerFields", "{answer}");
    }
    let email = schema(&doc, "EmailValue");
    assert_eq!((&email["format"], &email["maxLength"]), (&json!("email"), &json!(254)));
    let address = schema(&doc, "AddressValue");
    assert_eq!(address["required"], json!(["line1", "city", "postal_code", "country"]));
    assert_eq!(address["additionalProperties"], false);
}

#[tokio::test]
async fn a_payment_method_body_is_one_of_a_card_and_a_provider_token_and_the_server_agrees() {
    let app = spawn_app().await;
    let doc = served_document(&app).await;
    let body = schema(&doc, "NewPaymentMethod");
    let one_of = body["oneOf"].as_array().expect("oneOf");
    assert_eq!(one_of.len(), 2);
    for (branch, member) in one_of.iter().zip(["card", "provider_token"]) {
        assert_eq!(branch["required"], json!([member]));
        assert_eq!(branch["additionalProperties"], false);
        assert_eq!(branch["properties"].as_object().unwrap().len(), 1);
    }

    let id = app.create_customer(json!({ "name": "Ada Lovelace" })).await;
    let path = format!("/v1/customers/{id}/payment-methods");
    let card = json!({ "number": "4111 1111 1111 1111", "exp_month": 12, "exp_year": 2031 });
    let token = json!({ "provider": "paystream", "token": "tok_0123456789abcdef" });
    let merchant = app.merchant();
    for (body, expected) in [
        (json!({ "card": card, "provider_token": token }), StatusCode::UNPROCESSABLE_ENTITY),
        (json!({}), StatusCode::UNPROCESSABLE_ENTITY),
        (json!({ "card": card }), StatusCode::CREATED),
        (json!({ "provider_token": token }), StatusCode::CREATED),
    ] {
        let res = app.call(Method::POST, &path, Some(&merchant), None, Some(&body)).await;
        assert_eq!(res.status, expected, "{body}: {}", res.body);
    }
    // JSON Schema calls 12.0 an integer, so the server takes it as one.
    let card = json!({ "card": { "number": "5555 5555 5555 4444", "exp_month": 12.0, "exp_year": 2031.0 } });
    let res = app.call(Method::POST, &path, Some(&merchant), None, Some(&card)).await;
    assert_eq!(res.status, StatusCode::CREATED, "{}", res.body);
    assert_eq!(res.body["exp_month"], 12);
}

#[tokio::test]
async fn a_disclosure_body_names_declared_recipients_purposes_and_fields() {
    let app = spawn_app().await;
    let doc = served_document(&app).await;
    let set = policies();
    let recipients: BTreeSet<String> = set.recipients().map(|r| r.name.clone()).collect();
    let fields: BTreeSet<String> = set.fields().map(|f| f.name.clone()).collect();
    assert_eq!(enum_names(schema(&doc, "RecipientName")), recipients);
    assert_eq!(enum_names(schema(&doc, "FieldName")), fields);
    assert!(fields.contains("payment_methods"));
    let body = &schema(&doc, "DisclosureRequest")["properties"];
    assert_eq!(ref_name(&body["recipient"]), "RecipientName");
    assert_eq!(ref_name(&body["purpose"]), "PurposeName");
    assert_eq!(ref_name(&body["fields"]["items"]), "FieldName");
    assert_eq!(body["fields"]["minItems"], 1);
}

/// A valid value of a field value schema, for the property test below.
fn sample(doc: &Value, type_schema: &str) -> Value {
    match type_schema {
        "TextValue" => json!("Ada Lovelace"),
        "EmailValue" => json!("ada@example.com"),
        "PhoneValue" => json!("+44 20 7946 0958"),
        "DateValue" => json!("1815-12-10"),
        "CountryCode" => schema(doc, "CountryCode")["enum"][0].clone(),
        "AddressValue" => json!({ "line1": "12 St James's Square", "city": "London",
            "postal_code": "SW1Y 4JH", "country": "GB" }),
        other => panic!("no sample for {other}"),
    }
}

/// Walks the served document and, for every name and type it enumerates, makes a request the
/// document calls valid: the server must take it (never 400 `unknown_purpose` or 422), and must
/// refuse a name outside the enum. This is the document and the server agreeing, one name at a
/// time.
#[tokio::test]
async fn every_name_and_type_the_document_enumerates_is_accepted_by_the_server() {
    let app = spawn_app().await;
    let doc = served_document(&app).await;
    let merchant = app.merchant();
    let purposes = enum_names(schema(&doc, "PurposeName"));
    let fields = enum_names(schema(&doc, "FieldName"));

    // One create carrying a sample of every declared field, each of its documented type.
    let mut values = serde_json::Map::new();
    for (name, ty) in schema(&doc, "CustomerFields")["properties"].as_object().unwrap() {
        values.insert(name.clone(), sample(&doc, ref_name(ty)));
    }
    let id = app.create_customer(Value::Object(values.clone())).await;

    for purpose in &purposes {
        let read = app.read_customer(&id, purpose).await;
        assert_eq!(read.status, StatusCode::OK, "read for {purpose}: {}", read.body);
    }
    let refused = app.read_customer(&id, "not-a-purpose").await;
    assert_eq!(
        (refused.status, &refused.body["error"]),
        (StatusCode::BAD_REQUEST, &json!("unknown_purpose"))
    );

    for field in &fields {
        let path = format!("/v1/customers/{id}?fields={field}");
        let read = app.call(Method::GET, &path, Some(&merchant), Some("customer_support"), None).await;
        assert_eq!(read.status, StatusCode::OK, "?fields={field}: {}", read.body);
    }
    let path = format!("/v1/customers/{id}?fields=name,");
    let empty = app.call(Method::GET, &path, Some(&merchant), Some("customer_support"), None).await;
    assert_eq!(empty.status, StatusCode::UNPROCESSABLE_ENTITY, "an empty name is not declared");

    // Every country code the document lists is one the server stores.
    for code in enum_names(schema(&doc, "CountryCode")) {
        let patch = json!({ "fields": { "country": code } });
        let res = app
            .call(Method::PATCH, &format!("/v1/customers/{id}"), Some(&merchant), None, Some(&patch))
            .await;
        assert_eq!(res.status, StatusCode::OK, "country {code}: {}", res.body);
    }

    // Lookup: each documented indexed field, with its sample value, for a purpose it serves.
    let lookup = operation(&doc, "GET", "/v1/customers")["parameters"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "lookup")
        .unwrap()["schema"]
        .clone();
    assert_eq!((&lookup["minProperties"], &lookup["maxProperties"]), (&json!(1), &json!(1)));
    for (name, ty) in lookup["properties"].as_object().unwrap() {
        let value = sample(&doc, ref_name(ty));
        let query = form_urlencoded::Serializer::new(String::new())
            .append_pair(name, value.as_str().unwrap())
            .finish();
        let res = app
            .call(
                Method::GET,
                &format!("/v1/customers?{query}"),
                Some(&merchant),
                Some("customer_support"),
                None,
            )
            .await;
        assert_eq!(res.status, StatusCode::OK, "lookup by {name}: {}", res.body);
    }

    // Disclosures: every documented recipient is known (an answer is allowed or denied per
    // field, never an unknown name).
    for recipient in enum_names(schema(&doc, "RecipientName")) {
        for purpose in &purposes {
            let body = json!({ "customer_id": id, "recipient": recipient, "purpose": purpose,
                "fields": fields.iter().collect::<Vec<_>>() });
            let res = app.call(Method::POST, "/v1/disclosures", Some(&merchant), None, Some(&body)).await;
            assert!([StatusCode::OK, StatusCode::FORBIDDEN].contains(&res.status), "{body}: {}", res.body);
            for denied in res.body["denied"].as_array().into_iter().flatten() {
                let reason = denied["reason"].as_str().unwrap();
                assert!(!reason.starts_with("unknown_"), "{recipient}/{purpose}: {denied}");
            }
        }
    }

    // Consents: one path per consent purpose, whose documented grant the server records.
    let consent_paths: Vec<String> = documented(&doc)
        .into_iter()
        .map(|(_, p)| p)
        .filter(|p| p.starts_with("/v1/customers/{id}/consents/"))
        .collect();
    assert!(!consent_paths.is_empty());
    for path in consent_paths {
        let body_schema = schema(
            &doc,
            ref_name(&operation(&doc, "PUT", &path)["requestBody"]["content"]["application/json"]["schema"]),
        );
        let grant = body_schema["oneOf"].as_array().map_or(body_schema, |branches| &branches[0]);
        let notice = &grant["properties"]["notice"]["const"];
        let body = json!({ "granted": true, "source": "checkout-form", "notice": notice });
        let res = app.call(Method::PUT, &path.replace("{id}", &id), Some(&merchant), None, Some(&body)).await;
        assert_eq!(res.status, StatusCode::OK, "{path}: {}", res.body);
    }

    // Objections: every documented purpose admits one.
    let customer = app.token("customer", &id);
    let objection = operation(&doc, "PUT", "/v1/me/objections/{purpose}")["parameters"][0]["schema"].clone();
    for purpose in enum_names(&objection) {
        let path = format!("/v1/me/objections/{purpose}");
        let res =
            app.call(Method::PUT, &path, Some(&customer), None, Some(&json!({ "objected": true }))).await;
        assert_eq!(res.status, StatusCode::OK, "{path}: {}", res.body);
    }
    let not_objectable = purposes.iter().find(|p| !enum_names(&objection).contains(*p)).unwrap();
    let path = format!("/v1/me/objections/{not_objectable}");
    let res = app.call(Method::PUT, &path, Some(&customer), None, Some(&json!({ "objected": true }))).await;
    assert_eq!(res.status, StatusCode::UNPROCESSABLE_ENTITY);
}
