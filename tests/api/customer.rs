//! Customer self-service (`/v1/me`): see, correct, export, erase, consent, object, restrict.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::helpers::{Response, TestApp, contains, edit_stored_record, fixture, spawn_app, spawn_app_with};

fn jane() -> Value {
    json!({
        "name": "Jane Example",
        "email": "jane.self@example.com",
        "phone": "+49 151 23456789",
        "birth_date": "1990-04-17",
        "country": "DE"
    })
}

async fn me(app: &TestApp, token: &str, method: Method, path: &str, body: Option<&Value>) -> Response {
    app.call(method, path, Some(token), None, body).await
}

#[tokio::test]
async fn a_customer_reads_and_corrects_their_own_data() {
    let app = spawn_app().await;
    let id = app.create_customer(jane()).await;
    let token = app.token("customer", &id);
    let res = me(&app, &token, Method::GET, "/v1/me", None).await;
    assert_eq!(res.status, StatusCode::OK, "{}", res.body);
    assert_eq!(res.body["id"], id);
    assert_eq!(res.body["fields"]["birth_date"], "1990-04-17", "own fields unmasked, whatever the purpose");
    assert_eq!(res.body["restricted"], false);

    let res = me(
        &app,
        &token,
        Method::PATCH,
        "/v1/me",
        Some(&json!({"fields": {"name": "Jane Doe", "phone": null}})),
    )
    .await;
    assert_eq!(res.status, StatusCode::OK, "{}", res.body);
    assert_eq!(res.body["fields"]["name"], "Jane Doe");
    assert!(res.body["fields"].get("phone").is_none());
    assert_eq!(res.body["fields"]["email"], "jane.self@example.com");
    let res =
        me(&app, &token, Method::PATCH, "/v1/me", Some(&json!({"fields": {"email": "not-an-email"}}))).await;
    assert_eq!(res.status, StatusCode::UNPROCESSABLE_ENTITY);

    let events = app.audit_events().await;
    let mine: Vec<&Value> = events.iter().filter(|e| e["actor"]["role"] == "customer").collect();
    assert!(mine.iter().any(|e| e["action"] == "customer.read"));
    assert!(mine.iter().any(|e| e["action"] == "customer.update" && e["outcome"] == "allowed"));
    assert!(mine.iter().all(|e| e["actor"]["sub"] == id && e["customer_id"] == id));
}

#[tokio::test]
async fn a_customer_cannot_reach_another_customers_data() {
    let app = spawn_app().await;
    let alice = app.create_customer(json!({"name": "Alice"})).await;
    let bob = app.create_customer(json!({"name": "Bob"})).await;
    let alice_token = app.token("customer", &alice);
    let res = me(&app, &alice_token, Method::GET, "/v1/me", None).await;
    assert_eq!(res.body["fields"]["name"], "Alice");
    // No route takes a customer id: merchant routes are closed to customers.
    for (method, path) in [
        (Method::GET, format!("/v1/customers/{bob}")),
        (Method::PATCH, format!("/v1/customers/{bob}")),
        (Method::DELETE, format!("/v1/customers/{bob}")),
        (Method::GET, format!("/v1/customers/{bob}/payment-methods")),
        (Method::GET, "/v1/audit/events".to_owned()),
    ] {
        let res = app
            .call(method, &path, Some(&alice_token), Some("order_fulfillment"), Some(&json!({"fields": {}})))
            .await;
        assert_eq!(res.status, StatusCode::FORBIDDEN, "{path}");
    }
    // A token whose sub is not a live customer finds nothing.
    for sub in ["8d1b6f3e-1f0a-4c2a-9a1e-5d6c7b8a9f00", "shop-backend", "../../etc"] {
        let token = app.token("customer", sub);
        assert_eq!(
            me(&app, &token, Method::GET, "/v1/me", None).await.status,
            StatusCode::NOT_FOUND,
            "{sub}"
        );
        assert_eq!(me(&app, &token, Method::GET, "/v1/me/export", None).await.status, StatusCode::NOT_FOUND);
    }
    let res = app.read_customer(&bob, "order_fulfillment").await;
    assert_eq!(res.body["fields"]["name"], "Bob", "Bob is untouched");
}

#[tokio::test]
async fn the_export_holds_fields_consents_disclosures_and_every_access() {
    let app = spawn_app().await;
    let id = app.create_customer(jane()).await;
    let token = app.token("customer", &id);
    app.read_customer(&id, "customer_support").await;
    let res = me(
        &app,
        &token,
        Method::PUT,
        "/v1/me/consents/marketing",
        Some(&json!({"granted": true, "source": "account-page", "notice": "marketing-v2"})),
    )
    .await;
    assert_eq!(res.status, StatusCode::OK, "{}", res.body);
    let body = json!({"customer_id": id, "recipient": "letterbox-newsletter", "purpose": "marketing", "fields": ["email"]});
    assert_eq!(
        app.call(Method::POST, "/v1/disclosures", Some(&app.merchant()), None, Some(&body)).await.status,
        StatusCode::OK
    );
    me(
        &app,
        &token,
        Method::PUT,
        "/v1/me/consents/marketing",
        Some(&json!({"granted": false, "source": "account-page"})),
    )
    .await;

    let res = me(&app, &token, Method::GET, "/v1/me/export", None).await;
    assert_eq!(res.status, StatusCode::OK, "{}", res.body);
    let export = &res.body;
    assert_eq!(export["format_version"], 1);
    assert_eq!(export["customer_id"], id);
    assert_eq!(export["fields"]["email"], "jane.self@example.com");
    assert_eq!(export["field_info"]["email"]["category"], "user.contact.email");
    assert!(export["field_info"]["email"]["purposes"].as_array().unwrap().contains(&json!("marketing")));
    let history = export["consent_history"].as_array().unwrap();
    assert_eq!(history.len(), 2);
    assert_eq!(history[1]["granted"], false);
    let disclosures = export["disclosures"].as_array().unwrap();
    assert_eq!(disclosures.len(), 1);
    assert_eq!(disclosures[0]["recipient"], "letterbox-newsletter");
    assert_eq!(disclosures[0]["fields"], json!(["email"]));
    let log = export["access_log"].as_array().unwrap();
    let read =
        log.iter().find(|e| e["action"] == "customer.read").expect("the merchant read is in the export");
    assert_eq!(read["actor_role"], "merchant");
    assert_eq!(read["purpose"], "customer_support");
    assert!(log.iter().any(|e| e["action"] == "customer.create"));
    assert!(log.iter().any(|e| e["action"] == "consent.update" && e["actor_role"] == "customer"));
    assert!(export["generated_at"].as_str().unwrap().ends_with('Z'));

    // The withdrawal blocks the next disclosure.
    let res = app.call(Method::POST, "/v1/disclosures", Some(&app.merchant()), None, Some(&body)).await;
    assert_eq!(res.status, StatusCode::FORBIDDEN);
    assert_eq!(res.body["denied"][0]["reason"], "consent_withdrawn");
    let res = me(&app, &token, Method::GET, "/v1/me/consents", None).await;
    assert_eq!(res.body["consents"][0]["granted"], false);
}

#[tokio::test]
async fn an_erased_customer_is_gone_everywhere() {
    let mut app = spawn_app().await;
    let id = app.create_customer(jane()).await;
    let token = app.token("customer", &id);
    let res = me(&app, &token, Method::DELETE, "/v1/me", None).await;
    assert_eq!(res.status, StatusCode::OK, "{}", res.body);
    assert_eq!(res.body["id"], id);
    let seq = res.body["audit_seq"].as_u64().unwrap();

    assert_eq!(app.read_customer(&id, "order_fulfillment").await.status, StatusCode::NOT_FOUND);
    let res = app
        .call(
            Method::GET,
            "/v1/customers?email=jane.self%40example.com",
            Some(&app.merchant()),
            Some("order_fulfillment"),
            None,
        )
        .await;
    assert_eq!(res.body["customers"], json!([]));
    let body = json!({"customer_id": id, "recipient": "acme-shipping", "purpose": "order_fulfillment", "fields": ["name"]});
    assert_eq!(
        app.call(Method::POST, "/v1/disclosures", Some(&app.merchant()), None, Some(&body)).await.status,
        StatusCode::NOT_FOUND
    );
    for path in ["/v1/me", "/v1/me/export", "/v1/me/consents"] {
        assert_eq!(me(&app, &token, Method::GET, path, None).await.status, StatusCode::NOT_FOUND, "{path}");
    }
    assert_eq!(me(&app, &token, Method::DELETE, "/v1/me", None).await.status, StatusCode::NOT_FOUND);

    let events = app.audit_events().await;
    let erase = &events[seq as usize];
    assert_eq!(erase["action"], "customer.erase");
    assert_eq!(erase["actor"]["role"], "customer");
    let text = serde_json::to_string(&events).unwrap();
    assert!(!text.contains("Jane") && !text.contains("jane.self"));
    app.shutdown().await;
    let bytes = app.data_dir_bytes();
    for value in ["Jane Example", "jane.self@example.com", "+4915123456789", "1990-04-17"] {
        assert!(!contains(&bytes, value.as_bytes()), "{value} on disk");
    }
}

#[tokio::test]
async fn objection_and_restriction_are_refused_when_they_do_not_apply() {
    let app = spawn_app().await;
    let id = app.create_customer(jane()).await;
    let token = app.token("customer", &id);
    let res = me(
        &app,
        &token,
        Method::PUT,
        "/v1/me/objections/order_fulfillment",
        Some(&json!({"objected": true})),
    )
    .await;
    assert_eq!(res.status, StatusCode::UNPROCESSABLE_ENTITY);
    let res =
        me(&app, &token, Method::PUT, "/v1/me/objections/marketing", Some(&json!({"objected": true}))).await;
    assert_eq!(res.status, StatusCode::OK, "direct marketing is always objectable: {}", res.body);
    let res =
        me(&app, &token, Method::PUT, "/v1/me/objections/teleportation", Some(&json!({"objected": true})))
            .await;
    assert_eq!(res.status, StatusCode::BAD_REQUEST);
    let res = me(&app, &token, Method::PUT, "/v1/me/restriction", Some(&json!({"restricted": "yes"}))).await;
    assert_eq!(res.status, StatusCode::UNPROCESSABLE_ENTITY);
    let res = me(&app, &token, Method::PUT, "/v1/me/restriction", Some(&json!({"restricted": true}))).await;
    assert_eq!(res.status, StatusCode::OK);
    let res = me(&app, &token, Method::GET, "/v1/me", None).await;
    assert_eq!(res.body["restricted"], true);
    assert_eq!(res.body["objections"], json!(["marketing"]));
    // A restricted customer's data is withheld from the merchant's own contract reads too.
    let res = app.read_customer(&id, "order_fulfillment").await;
    assert_eq!(res.body["fields"], json!({}));
    // ... and a lookup by their email for that purpose no longer finds them (rules 3–5).
    let res = app
        .call(
            Method::GET,
            "/v1/customers?email=jane.self%40example.com",
            Some(&app.merchant()),
            Some("order_fulfillment"),
            None,
        )
        .await;
    assert_eq!(res.status, StatusCode::OK);
    assert_eq!(res.body["customers"], json!([]));
    let events = app.audit_events().await;
    for action in ["objection.update", "restriction.update"] {
        assert!(events.iter().any(|e| e["action"] == action && e["actor"]["role"] == "customer"), "{action}");
    }
}

#[tokio::test]
async fn retention_purges_an_expired_field_and_the_export_shows_it() {
    if crate::helpers::sled_only("back-dates a field in the sled tree") {
        return;
    }
    let mut app = spawn_app_with(|s| s.policies = fixture("policies")).await;
    let id = app.create_customer(json!({"name": "Jane", "birth_date": "1990-04-17"})).await;
    app.shutdown().await;
    edit_stored_record(app.data_dir.path(), &id, |r| {
        let field = r.fields.get_mut("birth_date").unwrap();
        field.written_at =
            custodia::domain::Timestamp::from_millis(field.written_at.millis() - 31 * 86_400_000);
    });
    let mut settings = app.settings.clone();
    settings.retention_sweep_secs = 1;
    let data_dir = std::mem::replace(&mut app.data_dir, tempfile::tempdir().unwrap());
    let app = TestApp::adopt(data_dir, settings).await;
    let token = app.token("customer", &id);
    let mut export = Value::Null;
    for _ in 0..100 {
        export = me(&app, &token, Method::GET, "/v1/me/export", None).await.body;
        if export["fields"].get("birth_date").is_none() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(export["fields"].get("birth_date").is_none(), "birth_date was not purged: {export}");
    assert_eq!(export["fields"]["name"], "Jane");
    let purge =
        export["access_log"].as_array().unwrap().iter().find(|e| e["action"] == "retention.purge").cloned();
    let purge = purge.expect("the purge is in the export");
    assert_eq!(purge["fields"], json!(["birth_date"]));
    assert_eq!(purge["actor_role"], "system");
}
