//! Every answer is accounted for in the audit log, and the log holds nothing a caller could use
//! to smuggle personal data into it (issue 11, items 3, 4 and 8).
//!
//! - An access that reaches several customers is findable by each of them (DESIGN §6).
//! - Every answer that carries a customer's values is recorded with exactly the field names it
//!   carried, whatever the route (a write whose answer is a read records the read).
//! - Caller-controlled text is sealed (consent `source`), restricted to declared values (consent
//!   `notice`) or to shapes that cannot spell words (`X-Request-Id`), or pseudonymised (a token
//!   `sub` that is not a service name or a customer id).

use std::collections::BTreeSet;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::helpers::{Response, TestApp, contains, spawn_app};

/// Sends a request; returns the answer and the request id the server assigned (to find the
/// request's events).
async fn traced(
    app: &TestApp,
    method: Method,
    path: &str,
    token: &str,
    purpose: Option<&str>,
    body: Option<&Value>,
) -> (Response, String) {
    let mut req = app.client.request(method, format!("{}{path}", app.base)).bearer_auth(token);
    if let Some(p) = purpose {
        req = req.header("X-Purpose", p);
    }
    if let Some(b) = body {
        req = req.json(b);
    }
    let res = req.send().await.expect("request sent");
    let status = res.status();
    let headers = res.headers().clone();
    let bytes = res.bytes().await.unwrap();
    let body = if bytes.is_empty() { Value::Null } else { serde_json::from_slice(&bytes).unwrap() };
    let id = headers["x-request-id"].to_str().unwrap().to_owned();
    (Response { status, headers, body }, id)
}

/// The events one request produced.
async fn events_of(app: &TestApp, id: &str) -> Vec<Value> {
    app.audit_events().await.into_iter().filter(|e| e["request_id"] == id).collect()
}

/// The field names of `events` with `action`, as a set.
fn recorded_fields(events: &[Value], action: &str) -> BTreeSet<String> {
    events
        .iter()
        .filter(|e| e["action"] == action)
        .flat_map(|e| e["fields"].as_array().cloned().unwrap_or_default())
        .map(|f| f.as_str().unwrap().to_owned())
        .collect()
}

fn keys(object: &Value) -> BTreeSet<String> {
    object.as_object().unwrap().keys().cloned().collect()
}

async fn export_actions(app: &TestApp, customer: &str) -> Vec<String> {
    let token = TestApp::customer_token(customer);
    let res = app.call(Method::GET, "/v1/me/export", Some(&token), None, None).await;
    assert_eq!(res.status, StatusCode::OK, "{}", res.body);
    res.body["access_log"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap().to_owned())
        .collect()
}

async fn auditor_filter(app: &TestApp, customer: &str, action: &str) -> Vec<Value> {
    let path = format!("/v1/audit/events?customer_id={customer}&action={action}&limit=1000");
    let res = app.call(Method::GET, &path, Some(&app.auditor()), None, None).await;
    assert_eq!(res.status, StatusCode::OK, "{}", res.body);
    res.body["events"].as_array().unwrap().clone()
}

#[tokio::test]
async fn a_lookup_that_finds_several_customers_is_in_each_customers_history() {
    let app = spawn_app().await;
    let phone = "+49 151 5550 1234";
    let a = app.create_customer(json!({ "name": "Ann", "phone": phone })).await;
    let b = app.create_customer(json!({ "name": "Ben", "phone": phone })).await;
    let lonely = app.create_customer(json!({ "name": "Cy", "phone": "+49 151 5550 9999" })).await;
    let (res, id) = traced(
        &app,
        Method::GET,
        "/v1/customers?phone=%2B4915155501234",
        &app.merchant(),
        Some("customer_support"),
        None,
    )
    .await;
    assert_eq!(res.status, StatusCode::OK, "{}", res.body);
    let found: BTreeSet<&str> =
        res.body["customers"].as_array().unwrap().iter().map(|c| c["id"].as_str().unwrap()).collect();
    assert_eq!(found, BTreeSet::from([a.as_str(), b.as_str()]));

    // One event per customer reached, each naming its customer, all of the one request.
    let events = events_of(&app, &id).await;
    let named: BTreeSet<&str> = events.iter().map(|e| e["customer_id"].as_str().unwrap()).collect();
    assert_eq!(named, found);
    assert!(events.iter().all(|e| e["action"] == "customer.lookup" && e["fields"] == json!(["phone"])));

    for customer in [&a, &b] {
        assert!(export_actions(&app, customer).await.contains(&"customer.lookup".to_owned()));
        assert_eq!(auditor_filter(&app, customer, "customer.lookup").await.len(), 1);
    }
    assert!(!export_actions(&app, &lonely).await.contains(&"customer.lookup".to_owned()));
    assert!(auditor_filter(&app, &lonely, "customer.lookup").await.is_empty());
}

#[tokio::test]
async fn a_lookup_that_finds_nobody_is_one_event_without_a_customer() {
    let app = spawn_app().await;
    let (res, id) = traced(
        &app,
        Method::GET,
        "/v1/customers?email=nobody%40example.com",
        &app.merchant(),
        Some("customer_support"),
        None,
    )
    .await;
    assert_eq!(res.status, StatusCode::OK);
    let events = events_of(&app, &id).await;
    assert_eq!(events.len(), 1);
    assert!(events[0].get("customer_id").is_none());
}

#[tokio::test]
async fn a_patch_whose_answer_shows_stored_values_records_that_read() {
    let app = spawn_app().await;
    let customer = app
        .create_customer(json!({
            "name": "Jane", "email": "jane@example.com", "birth_date": "1990-04-17", "country": "DE"
        }))
        .await;
    let path = format!("/v1/customers/{customer}");

    // An empty patch with a purpose: nothing written, every allowed field answered.
    for body in [json!({ "fields": {} }), json!({ "fields": { "country": "FR" } })] {
        let (res, id) =
            traced(&app, Method::PATCH, &path, &app.merchant(), Some("customer_support"), Some(&body)).await;
        assert_eq!(res.status, StatusCode::OK, "{}", res.body);
        let answered = keys(&res.body["fields"]);
        assert!(answered.contains("email") && answered.contains("birth_date"));
        let events = events_of(&app, &id).await;
        assert_eq!(recorded_fields(&events, "customer.update"), keys(&body["fields"]));
        assert_eq!(recorded_fields(&events, "customer.read"), answered, "the read is recorded exactly");
        let read = events.iter().find(|e| e["action"] == "customer.read").unwrap();
        assert_eq!(read["purpose"], "customer_support");
        assert_eq!(read["customer_id"], customer.as_str());
    }
    assert!(export_actions(&app, &customer).await.contains(&"customer.read".to_owned()));

    // Without a purpose only what was written comes back, and no read is recorded.
    let body = json!({ "fields": { "name": "Jane Doe", "birth_date": null } });
    let (res, id) = traced(&app, Method::PATCH, &path, &app.merchant(), None, Some(&body)).await;
    assert_eq!(res.status, StatusCode::OK, "{}", res.body);
    assert_eq!(keys(&res.body["fields"]), BTreeSet::from(["name".to_owned()]));
    let events = events_of(&app, &id).await;
    assert!(recorded_fields(&events, "customer.read").is_empty());
    assert_eq!(events.len(), 1);
}

#[tokio::test]
async fn a_customers_own_answers_record_every_name_they_carry() {
    let app = spawn_app().await;
    let customer = app.create_customer(json!({ "name": "Jane", "email": "jane@example.com" })).await;
    let token = TestApp::customer_token(&customer);
    let card = json!({ "card": { "number": "4111111111111111", "exp_month": 12, "exp_year": 2031 } });
    let res = app
        .call(
            Method::POST,
            &format!("/v1/customers/{customer}/payment-methods"),
            Some(&app.merchant()),
            None,
            Some(&card),
        )
        .await;
    assert_eq!(res.status, StatusCode::CREATED, "{}", res.body);

    // Rectification answers the whole record: its read is recorded with every field shown.
    let body = json!({ "fields": { "name": "Jane Doe" } });
    let (res, id) = traced(&app, Method::PATCH, "/v1/me", &token, None, Some(&body)).await;
    assert_eq!(res.status, StatusCode::OK, "{}", res.body);
    let events = events_of(&app, &id).await;
    assert_eq!(recorded_fields(&events, "customer.update"), BTreeSet::from(["name".to_owned()]));
    assert_eq!(recorded_fields(&events, "customer.read"), keys(&res.body["fields"]));

    // GET /v1/me and the export show payment methods too, and say so.
    for (path, action) in [("/v1/me", "customer.read"), ("/v1/me/export", "customer.export")] {
        let (res, id) = traced(&app, Method::GET, path, &token, None, None).await;
        assert_eq!(res.status, StatusCode::OK, "{}", res.body);
        assert_eq!(res.body["payment_methods"].as_array().unwrap().len(), 1);
        let mut expected = keys(&res.body["fields"]);
        expected.insert("payment_methods".to_owned());
        assert_eq!(recorded_fields(&events_of(&app, &id).await, action), expected, "{path}");
    }
}

#[tokio::test]
async fn a_duplicate_card_answer_shows_no_stored_value_and_names_the_method() {
    let app = spawn_app().await;
    let customer = app.create_customer(json!({ "name": "Jane" })).await;
    let path = format!("/v1/customers/{customer}/payment-methods");
    let stored = json!({ "card": { "number": "4111111111111111", "exp_month": 12, "exp_year": 2031,
                                   "holder": "Jane Stored" } });
    let first = app.call(Method::POST, &path, Some(&app.merchant()), None, Some(&stored)).await;
    assert_eq!(first.status, StatusCode::CREATED);
    let token = first.body["token"].as_str().unwrap().to_owned();
    let again = json!({ "card": { "number": "4111 1111 1111 1111", "exp_month": 3, "exp_year": 2033 } });
    let (res, id) = traced(&app, Method::POST, &path, &app.merchant(), None, Some(&again)).await;
    assert_eq!(res.status, StatusCode::OK, "{}", res.body);
    assert_eq!(res.body["duplicate_of"], token.as_str());
    // The answer describes the submitted card, not the stored one.
    assert_eq!((res.body["exp_month"].as_u64(), res.body["exp_year"].as_u64()), (Some(3), Some(2033)));
    let events = events_of(&app, &id).await;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["fields"], json!([format!("payment_methods/{token}")]));
    assert_eq!(events[0]["reason"], json!(["duplicate"]));
}

#[tokio::test]
async fn a_consent_source_is_sealed_and_a_notice_must_be_declared() {
    let mut app = spawn_app().await;
    let customer = app.create_customer(json!({ "name": "Jane" })).await;
    let source = "collected-by-jane.doe.secret@example.com";
    let path = format!("/v1/customers/{customer}/consents/marketing");
    let body = json!({ "granted": true, "source": source, "notice": "marketing-v2" });
    let res = app.call(Method::PUT, &path, Some(&app.merchant()), None, Some(&body)).await;
    assert_eq!(res.status, StatusCode::OK, "{}", res.body);
    assert_eq!(res.body["source"], source);

    // Repeating it is recognised although the stored source is sealed.
    let res = app.call(Method::PUT, &path, Some(&app.merchant()), None, Some(&body)).await;
    assert_eq!((res.status, res.body["version"].as_u64()), (StatusCode::OK, Some(1)));

    // A notice is never free text: only the purpose's declared version, or none.
    for notice in ["marketing-v1", "jane.doe@example.com"] {
        let body = json!({ "granted": false, "source": "account-page", "notice": notice });
        let res = app.call(Method::PUT, &path, Some(&app.merchant()), None, Some(&body)).await;
        assert_eq!(res.status, StatusCode::UNPROCESSABLE_ENTITY, "{notice}: {}", res.body);
        assert!(!res.body.to_string().contains(notice));
    }
    let body = json!({ "granted": false, "source": "account-page" });
    let res = app.call(Method::PUT, &path, Some(&app.merchant()), None, Some(&body)).await;
    assert_eq!(res.status, StatusCode::OK, "{}", res.body);

    // The customer reads the history back in the clear, across a restart.
    app = app.restart().await;
    let token = TestApp::customer_token(&customer);
    let res = app.call(Method::GET, "/v1/me/export", Some(&token), None, None).await;
    let sources: Vec<&str> = res.body["consent_history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["source"].as_str().unwrap())
        .collect();
    assert_eq!(sources, [source, "account-page"]);
    app.shutdown().await;
    assert!(!contains(&app.data_dir_bytes(), source.as_bytes()), "the source is stored in the clear");
    assert!(!contains(&app.data_dir_bytes(), b"jane.doe.secret"));
}

#[tokio::test]
async fn token_subjects_that_may_be_personal_data_are_pseudonymised_in_the_log() {
    let mut app = spawn_app().await;
    let customer = app.create_customer(json!({ "name": "Jane" })).await;
    let email_sub = "jane.operator@example.com";
    let email_token = app.token("merchant", email_sub);
    let person_token = app.token("auditor", "Jane Operator");
    // A merchant may not read the log (refused, recorded with its subject); the auditor may.
    for (token, status) in [
        (&email_token, StatusCode::FORBIDDEN),
        (&email_token, StatusCode::FORBIDDEN),
        (&person_token, StatusCode::OK),
    ] {
        let res = app.call(Method::GET, "/v1/audit/checkpoint", Some(token), None, None).await;
        assert_eq!(res.status, status, "{}", res.body);
    }
    let res = app.read_customer(&customer, "order_fulfillment").await;
    assert_eq!(res.status, StatusCode::OK);
    let own = app.call(Method::GET, "/v1/me", Some(&TestApp::customer_token(&customer)), None, None).await;
    assert_eq!(own.status, StatusCode::OK);
    let res = app.call(Method::GET, "/v1/audit/checkpoint", Some(&app.auditor()), None, None).await;
    assert_eq!(res.status, StatusCode::OK);

    let events = app.audit_events().await;
    let subs: Vec<&str> = events.iter().filter_map(|e| e["actor"]["sub"].as_str()).collect();
    // Service names and customer ids are kept; an e-mail or a name becomes a stable pseudonym.
    assert!(subs.contains(&"shop-backend") && subs.contains(&customer.as_str()));
    assert!(subs.contains(&"external-auditor"));
    let pseudonyms: BTreeSet<&str> = subs.iter().copied().filter(|s| s.starts_with("pseudonym:")).collect();
    assert_eq!(pseudonyms.len(), 2, "one pseudonym per subject, stable: {subs:?}");
    assert!(pseudonyms.iter().all(|p| p.len() == "pseudonym:".len() + 32));
    assert_eq!(subs.iter().filter(|s| s.starts_with("pseudonym:")).count(), 3, "{subs:?}");

    app.shutdown().await;
    let bytes = app.data_dir_bytes();
    assert!(!contains(&bytes, email_sub.as_bytes()) && !contains(&bytes, b"Jane Operator"));
}

#[tokio::test]
async fn a_client_request_id_never_reaches_the_log_the_server_assigns_its_own() {
    let mut app = spawn_app().await;
    // Free text, a card number padded into a trace id, a well-formed UUID: none is used, since
    // no shape check keeps personal data out of free text.
    let given = [
        "jane.leak_at_example.com",
        "4111111111111111a000000000000000",
        "41111111-1111-4111-a111-111111111111",
    ];
    let mut assigned = Vec::new();
    for id in given {
        let res = app
            .client
            .get(format!("{}/v1/audit/checkpoint", app.base))
            .bearer_auth(app.auditor())
            .header("X-Request-Id", id)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        let answered = res.headers()["x-request-id"].to_str().unwrap().to_owned();
        assert_ne!(answered, id);
        assert_eq!(uuid::Uuid::try_parse(&answered).unwrap().get_version_num(), 4);
        assigned.push(answered);
    }
    let ids: Vec<String> =
        app.audit_events().await.iter().map(|e| e["request_id"].as_str().unwrap().to_owned()).collect();
    for (id, answered) in given.iter().zip(&assigned) {
        assert!(!ids.iter().any(|i| i == id));
        assert!(ids.contains(answered), "the assigned id is the one recorded");
    }
    app.shutdown().await;
    let bytes = app.data_dir_bytes();
    assert!(given.iter().all(|id| !contains(&bytes, id.as_bytes())));
}

#[tokio::test]
async fn listing_own_consents_records_a_read_of_no_field() {
    let app = spawn_app().await;
    let customer = app.create_customer(json!({ "name": "Ada", "email": "ada@example.com" })).await;
    let token = TestApp::customer_token(&customer);
    let (res, id) = traced(&app, Method::GET, "/v1/me/consents", &token, None, None).await;
    assert_eq!(res.status, StatusCode::OK, "{}", res.body);
    let events = events_of(&app, &id).await;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["action"], "customer.read");
    assert_eq!(events[0]["fields"], json!([]));
}
