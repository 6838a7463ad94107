//! `/openapi.json`: an OpenAPI 3.1 document generated from the code that covers exactly the
//! routes the router serves, with their security, `X-Purpose` headers and error shape.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use custodia::http::rate_limit::CallerLimiter;
use custodia::http::{AppState, Limits};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tower::ServiceExt;

use crate::helpers::{spawn_app, test_settings};

/// Methods a route can be served under (axum answers HEAD for GET routes by itself).
const METHODS: [&str; 5] = ["GET", "POST", "PUT", "PATCH", "DELETE"];

/// Fills path parameters with well-formed values so a probe reaches the handler.
fn concrete(template: &str) -> String {
    template
        .replace("{id}", "7f3a4b5c-1d2e-4f60-8a9b-0c1d2e3f4a5b")
        .replace("{purpose}", "marketing")
        .replace("{token}", "pm_00000000000000000000000000000000")
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
        let public = ["/healthz", "/metrics", "/openapi.json"].contains(&path.as_str());
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
    let state = AppState { vault, auth: Arc::new(auth), limiter: Arc::new(CallerLimiter::new(0, 0)) };
    let limits = Limits { max_body_bytes: 65_536, request_timeout: Duration::from_secs(10) };
    let router = custodia::http::router(state, limits);

    let doc: Value = {
        let req = axum::http::Request::get("/openapi.json").body(Body::empty()).unwrap();
        let res = router.clone().oneshot(req).await.unwrap();
        serde_json::from_slice(&axum::body::to_bytes(res.into_body(), usize::MAX).await.unwrap()).unwrap()
    };
    let documented = documented(&doc);
    let documented_paths: BTreeSet<&str> = documented.iter().map(|(_, p)| p.as_str()).collect();

    let served_paths = served_paths(&format!("{router:?}"));
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
