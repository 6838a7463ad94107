//! Consent and third-party disclosure: every reason code, every mask, all or nothing.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::helpers::{Response, TestApp, edit_stored_record, fixture, spawn_app_with};

async fn app() -> TestApp {
    spawn_app_with(|s| s.policies = fixture("policies")).await
}

async fn customer(app: &TestApp) -> String {
    app.create_customer(json!({
        "name": "Jane Example",
        "email": "jane@example.com",
        "phone": "+49 151 23456789",
        "birth_date": "1990-04-17",
        "shipping_address": {"line1": "Hauptstr. 5", "city": "Berlin", "postal_code": "10115", "country": "DE"},
        "country": "DE"
    }))
    .await
}

async fn disclose(app: &TestApp, id: &str, recipient: &str, purpose: &str, fields: &[&str]) -> Response {
    let body = json!({"customer_id": id, "recipient": recipient, "purpose": purpose, "fields": fields});
    app.call(Method::POST, "/v1/disclosures", Some(&app.merchant()), None, Some(&body)).await
}

async fn consent(app: &TestApp, id: &str, purpose: &str, body: Value) -> Response {
    app.call(
        Method::PUT,
        &format!("/v1/customers/{id}/consents/{purpose}"),
        Some(&app.merchant()),
        None,
        Some(&body),
    )
    .await
}

fn reasons(res: &Response) -> Vec<(String, String)> {
    res.body["denied"]
        .as_array()
        .map(|d| {
            d.iter()
                .map(|x| (x["field"].as_str().unwrap().to_owned(), x["reason"].as_str().unwrap().to_owned()))
                .collect()
        })
        .unwrap_or_default()
}

fn assert_denied(res: &Response, field: &str, reason: &str) {
    assert_eq!(res.status, StatusCode::FORBIDDEN, "{}", res.body);
    assert_eq!(res.body["error"], "policy_denied");
    assert!(res.body.get("fields").is_none(), "a denial carries no values: {}", res.body);
    assert!(
        reasons(res).contains(&(field.to_owned(), reason.to_owned())),
        "{field}:{reason} not in {}",
        res.body
    );
}

#[tokio::test]
async fn an_allowed_disclosure_applies_each_mask() {
    let app = app().await;
    let id = customer(&app).await;
    let res = disclose(
        &app,
        &id,
        "carrier",
        "order_fulfillment",
        &["name", "email", "phone", "birth_date", "shipping_address", "country"],
    )
    .await;
    assert_eq!(res.status, StatusCode::OK, "{}", res.body);
    let f = &res.body["fields"];
    assert_eq!(f["name"], "Jane Example", "no mask at all shows the value");
    assert_eq!(f["email"], "jane@example.com", "the grant's none overrides the field's email mask");
    assert_eq!(f["phone"], "***6789", "the field's default last4");
    assert_eq!(f["birth_date"], "1990-**-**", "the field's default year");
    assert_eq!(f["shipping_address"], "[redacted]", "the grant's redact");
    assert_eq!(f["country"], "DE");
    assert_eq!(res.body["recipient"], "carrier");
    assert_eq!(res.body["purpose"], "order_fulfillment");
    assert!(res.body["disclosure_id"].as_str().unwrap().len() >= 32);

    consent(
        &app,
        &id,
        "marketing",
        json!({"granted": true, "source": "signup-form", "notice": "marketing-v2"}),
    )
    .await;
    let res = disclose(&app, &id, "newsletter", "marketing", &["email"]).await;
    assert_eq!(res.body["fields"]["email"], "j***@example.com", "the field's default email mask");

    let events = app.audit_events().await;
    let allowed: Vec<&Value> =
        events.iter().filter(|e| e["action"] == "disclosure" && e["outcome"] == "allowed").collect();
    assert_eq!(allowed.len(), 2);
    assert_eq!(allowed[0]["recipient"], "carrier");
    assert_eq!(allowed[0]["customer_id"], id);
    assert!(!serde_json::to_string(&events).unwrap().contains("Jane"));
}

#[tokio::test]
async fn consent_grant_allows_and_withdrawal_denies_the_very_next_request() {
    let app = app().await;
    let id = customer(&app).await;
    assert_denied(
        &disclose(&app, &id, "newsletter", "marketing", &["email"]).await,
        "email",
        "consent_missing",
    );

    let res = consent(
        &app,
        &id,
        "marketing",
        json!({"granted": true, "source": "signup-form", "notice": "marketing-v2"}),
    )
    .await;
    assert_eq!(res.status, StatusCode::OK, "{}", res.body);
    assert_eq!(res.body["version"], 1);
    assert_eq!(res.body["granted"], true);
    assert_eq!(res.body["purpose"], "marketing");
    assert_eq!(
        disclose(&app, &id, "newsletter", "marketing", &["email", "name"]).await.status,
        StatusCode::OK
    );
    // Repeating the same statement adds no version (the history does not grow with retries).
    let res = consent(
        &app,
        &id,
        "marketing",
        json!({"granted": true, "source": "signup-form", "notice": "marketing-v2"}),
    )
    .await;
    assert_eq!(res.body["version"], 1);

    let res = consent(&app, &id, "marketing", json!({"granted": false, "source": "unsubscribe-link"})).await;
    assert_eq!(res.body["version"], 2);
    assert_denied(
        &disclose(&app, &id, "newsletter", "marketing", &["email"]).await,
        "email",
        "consent_withdrawn",
    );

    // A merchant read for the purpose withholds the same fields.
    let read = app.read_customer(&id, "marketing").await;
    assert_eq!(read.body["fields"], json!({}));
}

#[tokio::test]
async fn a_grant_must_name_the_current_notice_version() {
    let app = app().await;
    let id = customer(&app).await;
    let res = consent(
        &app,
        &id,
        "marketing",
        json!({"granted": true, "source": "signup-form", "notice": "marketing-v1"}),
    )
    .await;
    assert_eq!(res.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", res.body);
    let res = consent(&app, &id, "marketing", json!({"granted": true, "source": "signup-form"})).await;
    assert_eq!(res.status, StatusCode::UNPROCESSABLE_ENTITY);
    // A purpose without a notice version takes any grant.
    let res = consent(&app, &id, "surveys", json!({"granted": true, "source": "survey-page"})).await;
    assert_eq!(res.status, StatusCode::OK);
    // Consent cannot be recorded for a purpose whose basis is not consent, nor an undeclared one.
    let res = consent(&app, &id, "order_fulfillment", json!({"granted": true, "source": "x"})).await;
    assert_eq!(res.status, StatusCode::UNPROCESSABLE_ENTITY);
    let res = consent(&app, &id, "mind_reading", json!({"granted": true, "source": "x"})).await;
    assert_eq!(res.status, StatusCode::BAD_REQUEST);
    let res = consent(&app, &id, "marketing", json!({"granted": "yes", "source": "x"})).await;
    assert_eq!(res.status, StatusCode::UNPROCESSABLE_ENTITY);
}

#[tokio::test]
async fn a_consent_recorded_under_an_old_notice_is_notice_outdated() {
    if crate::helpers::sled_only("edits a stored record in the sled backend's record file") {
        return;
    }
    let app = app().await;
    let id = customer(&app).await;
    // Consents collected before the notice changed are kept as they were given.
    let mut stopped = app;
    stopped.shutdown().await;
    edit_stored_record(stopped.data_dir.path(), &id, |r| {
        r.consents.insert(
            "marketing".into(),
            vec![custodia::store::ConsentRecord {
                version: 1,
                granted: true,
                notice: Some("marketing-v1".into()),
                source: custodia::store::ConsentSource::Legacy("signup-form".into()),
                time: custodia::domain::Timestamp::now(),
            }],
        );
    });
    let app = stopped.restart().await;
    assert_denied(
        &disclose(&app, &id, "newsletter", "marketing", &["email"]).await,
        "email",
        "notice_outdated",
    );
}

#[tokio::test]
async fn every_structural_reason_code_is_reported_per_field() {
    let app = app().await;
    let id = customer(&app).await;
    assert_denied(
        &disclose(&app, &id, "nobody", "order_fulfillment", &["name"]).await,
        "name",
        "unknown_recipient",
    );
    assert_denied(
        &disclose(&app, &id, "carrier", "world_domination", &["name"]).await,
        "name",
        "unknown_purpose",
    );
    assert_denied(&disclose(&app, &id, "carrier", "marketing", &["name"]).await, "name", "no_grant");
    assert_denied(&disclose(&app, &id, "newsletter", "marketing", &["phone"]).await, "phone", "no_grant");
    assert_denied(
        &disclose(&app, &id, "sloppy-vendor", "marketing", &["phone"]).await,
        "phone",
        "purpose_not_allowed_for_field",
    );
    assert_denied(
        &disclose(&app, &id, "carrier", "order_fulfillment", &["shoe_size"]).await,
        "shoe_size",
        "unknown_field",
    );

    let events = app.audit_events().await;
    let text = serde_json::to_string(&events).unwrap();
    for undeclared in ["nobody", "world_domination", "shoe_size"] {
        assert!(!text.contains(undeclared), "{undeclared} recorded verbatim");
    }
    let denied = events.iter().filter(|e| e["action"] == "disclosure" && e["outcome"] == "denied").count();
    assert_eq!(denied, 6);
    let sloppy = events.iter().find(|e| e["recipient"] == "sloppy-vendor").unwrap();
    assert_eq!(sloppy["reason"], json!(["phone:purpose_not_allowed_for_field"]));
}

#[tokio::test]
async fn a_disclosure_is_all_or_nothing() {
    let app = app().await;
    let id = customer(&app).await;
    let res = disclose(&app, &id, "newsletter", "surveys", &["email", "name"]).await;
    assert_eq!(res.status, StatusCode::FORBIDDEN);
    let denied = reasons(&res);
    assert!(denied.contains(&("name".into(), "no_grant".into())));
    assert!(denied.contains(&("email".into(), "consent_missing".into())));
    assert!(!res.body.to_string().contains("jane@"), "no value of any field: {}", res.body);

    consent(&app, &id, "surveys", json!({"granted": true, "source": "survey-page"})).await;
    let res = disclose(&app, &id, "newsletter", "surveys", &["email", "name"]).await;
    assert_eq!(reasons(&res), vec![("name".to_owned(), "no_grant".to_owned())]);
    assert!(!res.body.to_string().contains("jane@"));
    let res = disclose(&app, &id, "newsletter", "surveys", &["email"]).await;
    assert_eq!(res.body["fields"]["email"], "jane@example.com");
}

#[tokio::test]
async fn an_objection_to_a_legitimate_interest_denies_it() {
    let app = app().await;
    let id = customer(&app).await;
    assert_eq!(
        disclose(&app, &id, "screening", "fraud_prevention", &["email", "country"]).await.status,
        StatusCode::OK
    );
    let me = app.token("customer", &id);
    let res = app
        .call(
            Method::PUT,
            "/v1/me/objections/fraud_prevention",
            Some(&me),
            None,
            Some(&json!({"objected": true})),
        )
        .await;
    assert_eq!(res.status, StatusCode::OK, "{}", res.body);
    assert_denied(
        &disclose(&app, &id, "screening", "fraud_prevention", &["email"]).await,
        "email",
        "objected",
    );
    // Objecting to a contract purpose is refused (Art. 21 does not apply).
    let res = app
        .call(
            Method::PUT,
            "/v1/me/objections/order_fulfillment",
            Some(&me),
            None,
            Some(&json!({"objected": true})),
        )
        .await;
    assert_eq!(res.status, StatusCode::UNPROCESSABLE_ENTITY);
    let res = app
        .call(
            Method::PUT,
            "/v1/me/objections/fraud_prevention",
            Some(&me),
            None,
            Some(&json!({"objected": false})),
        )
        .await;
    assert_eq!(res.status, StatusCode::OK);
    assert_eq!(disclose(&app, &id, "screening", "fraud_prevention", &["email"]).await.status, StatusCode::OK);
}

#[tokio::test]
async fn restriction_lets_only_legal_obligations_through() {
    let app = app().await;
    let id = customer(&app).await;
    let me = app.token("customer", &id);
    let res = app
        .call(Method::PUT, "/v1/me/restriction", Some(&me), None, Some(&json!({"restricted": true})))
        .await;
    assert_eq!(res.status, StatusCode::OK, "{}", res.body);
    assert_denied(
        &disclose(&app, &id, "carrier", "order_fulfillment", &["name"]).await,
        "name",
        "restricted",
    );
    assert_denied(
        &disclose(&app, &id, "screening", "fraud_prevention", &["email"]).await,
        "email",
        "restricted",
    );
    let res = disclose(&app, &id, "tax-office", "tax_compliance", &["name", "country"]).await;
    assert_eq!(res.status, StatusCode::OK, "{}", res.body);
    assert_eq!(res.body["fields"], json!({"name": "Jane Example", "country": "DE"}));
}

#[tokio::test]
async fn a_field_past_its_retention_is_not_disclosed() {
    if crate::helpers::sled_only("back-dates a field in the sled tree") {
        return;
    }
    let app = app().await;
    let id = customer(&app).await;
    let mut stopped = app;
    stopped.shutdown().await;
    edit_stored_record(stopped.data_dir.path(), &id, |r| {
        let field = r.fields.get_mut("birth_date").unwrap();
        field.written_at =
            custodia::domain::Timestamp::from_millis(field.written_at.millis() - 31 * 86_400_000);
    });
    let app = stopped.restart().await;
    assert_denied(
        &disclose(&app, &id, "carrier", "order_fulfillment", &["birth_date"]).await,
        "birth_date",
        "retention_expired",
    );
    assert_eq!(disclose(&app, &id, "carrier", "order_fulfillment", &["name"]).await.status, StatusCode::OK);
}

#[tokio::test]
async fn bad_disclosure_requests_are_refused() {
    let app = app().await;
    let id = customer(&app).await;
    let res =
        disclose(&app, "8d1b6f3e-1f0a-4c2a-9a1e-5d6c7b8a9f00", "carrier", "order_fulfillment", &["name"])
            .await;
    assert_eq!(res.status, StatusCode::NOT_FOUND);
    let res = disclose(&app, &id, "carrier", "order_fulfillment", &[]).await;
    assert_eq!(res.status, StatusCode::BAD_REQUEST);
    let body = json!({"customer_id": id, "recipient": "carrier", "purpose": "order_fulfillment", "fields": ["name"], "mask": "none"});
    let res = app.call(Method::POST, "/v1/disclosures", Some(&app.merchant()), None, Some(&body)).await;
    assert_eq!(res.status, StatusCode::UNPROCESSABLE_ENTITY);
    let customer_token = app.token("customer", &id);
    let body = json!({"customer_id": id, "recipient": "carrier", "purpose": "order_fulfillment", "fields": ["name"]});
    let res = app.call(Method::POST, "/v1/disclosures", Some(&customer_token), None, Some(&body)).await;
    assert_eq!(res.status, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn consents_can_be_given_at_create_time() {
    let app = app().await;
    let body = json!({
        "fields": {"email": "early@example.com"},
        "consents": [{"purpose": "marketing", "granted": true, "source": "checkout", "notice": "marketing-v2"}]
    });
    let res = app.call(Method::POST, "/v1/customers", Some(&app.merchant()), None, Some(&body)).await;
    assert_eq!(res.status, StatusCode::CREATED, "{}", res.body);
    let id = res.body["id"].as_str().unwrap();
    assert_eq!(disclose(&app, id, "newsletter", "marketing", &["email"]).await.status, StatusCode::OK);
    let bad =
        json!({"fields": {}, "consents": [{"purpose": "marketing", "granted": true, "source": "checkout"}]});
    let res = app.call(Method::POST, "/v1/customers", Some(&app.merchant()), None, Some(&bad)).await;
    assert_eq!(res.status, StatusCode::UNPROCESSABLE_ENTITY);
}
