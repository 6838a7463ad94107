//! Payment methods: stored sealed, listed masked, revealed only by an allowed disclosure.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::helpers::{Response, TestApp, contains, spawn_app};

fn card(number: &str) -> Value {
    json!({"card": {"number": number, "exp_month": 12, "exp_year": 2031, "holder": "Jane Example"}})
}

async fn add(app: &TestApp, id: &str, body: &Value) -> Response {
    app.call(
        Method::POST,
        &format!("/v1/customers/{id}/payment-methods"),
        Some(&app.merchant()),
        None,
        Some(body),
    )
    .await
}

async fn list(app: &TestApp, id: &str, purpose: Option<&str>) -> Response {
    app.call(
        Method::GET,
        &format!("/v1/customers/{id}/payment-methods"),
        Some(&app.merchant()),
        purpose,
        None,
    )
    .await
}

#[tokio::test]
async fn valid_cards_of_each_brand_are_stored_and_shown_masked() {
    let app = spawn_app().await;
    let id = app.create_customer(json!({"name": "Jane Example"})).await;
    let cards = [
        ("4111 1111 1111 1111", "visa"),
        ("5555-5555-5555-4444", "mastercard"),
        ("378282246310005", "amex"),
        ("6011111111111117", "discover"),
        ("3530111333300000", "jcb"),
        ("36227206271667", "diners"),
        ("6200000000000005", "unionpay"),
    ];
    let mut tokens = Vec::new();
    for (number, brand) in cards {
        let res = add(&app, &id, &card(number)).await;
        assert_eq!(res.status, StatusCode::CREATED, "{number}: {}", res.body);
        let digits: String = number.chars().filter(char::is_ascii_digit).collect();
        assert_eq!(res.body["brand"], brand);
        assert_eq!(res.body["last4"], &digits[digits.len() - 4..]);
        assert_eq!(res.body["exp_month"], 12);
        assert_eq!(res.body["exp_year"], 2031);
        let token = res.body["token"].as_str().unwrap().to_owned();
        let random = token.strip_prefix("pm_").expect("pm_ prefix");
        assert!(random.len() == 32 && random.bytes().all(|b| b.is_ascii_hexdigit()), "{token}");
        assert!(!res.body.to_string().contains(&digits), "the answer holds the full number");
        tokens.push(token);
    }
    let res = list(&app, &id, Some("payment_processing")).await;
    assert_eq!(res.status, StatusCode::OK, "{}", res.body);
    let methods = res.body["payment_methods"].as_array().unwrap();
    assert_eq!(methods.len(), cards.len());
    let text = res.body.to_string();
    for (number, _) in cards {
        let digits: String = number.chars().filter(char::is_ascii_digit).collect();
        assert!(!text.contains(&digits));
    }
    assert!(!text.contains("Jane"), "the holder is not listed");
}

#[tokio::test]
async fn bad_cards_are_refused_with_422() {
    let app = spawn_app().await;
    let id = app.create_customer(json!({"name": "Jane"})).await;
    for (body, why) in [
        (card("4111111111111112"), "Luhn"),
        (card("41111111111"), "short"),
        (card("41111111111111111111"), "long"),
        (json!({"card": {"number": "4111111111111111", "exp_month": 1, "exp_year": 2020}}), "expired"),
        (json!({"card": {"number": "4111111111111111", "exp_month": 13, "exp_year": 2031}}), "month"),
        (json!({"card": {"number": "4111111111111111"}}), "no expiry"),
        (json!({"bank_account": {"iban": "DE89370400440532013000"}}), "unknown kind"),
        (
            json!({"card": {"number": "4111111111111111", "exp_month": 1, "exp_year": 2031}, "provider_token": {"provider": "x", "token": "y"}}),
            "both",
        ),
    ] {
        let res = add(&app, &id, &body).await;
        assert_eq!(res.status, StatusCode::UNPROCESSABLE_ENTITY, "{why}: {}", res.body);
        assert!(!res.body.to_string().contains("41111111111"), "{why}: the error echoes the number");
    }
    let res = list(&app, &id, Some("payment_processing")).await;
    assert_eq!(res.body["payment_methods"], json!([]));
}

#[tokio::test]
async fn a_security_code_anywhere_in_the_body_is_refused_and_never_stored() {
    let app = spawn_app().await;
    let id = app.create_customer(json!({"name": "Jane"})).await;
    let top =
        json!({"card": {"number": "4111111111111111", "exp_month": 12, "exp_year": 2031}, "cvv": "737"});
    let nested =
        json!({"card": {"number": "4111111111111111", "exp_month": 12, "exp_year": 2031, "CVC": "737"}});
    let deeper = json!({"card": {"number": "4111111111111111", "exp_month": 12, "exp_year": 2031, "extra": [{"security-code": "737"}]}});
    let track = json!({"card": {"number": "4111111111111111", "exp_month": 12, "exp_year": 2031, "track2": "4111111111111111=3112"}});
    for body in [top, nested, deeper, track] {
        let res = add(&app, &id, &body).await;
        assert_eq!(res.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", res.body);
        assert!(!res.body.to_string().contains("737"));
    }
    let mut app = app;
    let events = app.audit_events().await;
    assert_eq!(events.iter().filter(|e| e["reason"] == json!(["sensitive_authentication_data"])).count(), 4);
    app.shutdown().await;
    let bytes = app.data_dir_bytes();
    assert!(!contains(&bytes, b"4111111111111111"));
}

#[tokio::test]
async fn the_same_card_twice_is_reported_as_a_duplicate() {
    let app = spawn_app().await;
    let id = app.create_customer(json!({"name": "Jane"})).await;
    let first = add(&app, &id, &card("4111111111111111")).await;
    let again = add(&app, &id, &card("4111-1111-1111-1111")).await;
    assert_eq!(again.status, StatusCode::OK, "{}", again.body);
    assert_eq!(again.body["duplicate_of"], first.body["token"]);
    assert_eq!(
        list(&app, &id, Some("payment_processing")).await.body["payment_methods"].as_array().unwrap().len(),
        1
    );
    // Another customer may hold the same card; fingerprints never leave the vault.
    let other = app.create_customer(json!({"name": "Joe"})).await;
    let res = add(&app, &other, &card("4111111111111111")).await;
    assert_eq!(res.status, StatusCode::CREATED);
    assert!(res.body.get("duplicate_of").is_none());
    assert!(!res.body.to_string().contains("fingerprint"));
}

#[tokio::test]
async fn provider_tokens_are_stored_too() {
    let app = spawn_app().await;
    let id = app.create_customer(json!({"name": "Jane"})).await;
    let res = add(
        &app,
        &id,
        &json!({"provider_token": {"provider": "paystream", "token": "tok_1NvXyZ2eZvKYlo2C"}}),
    )
    .await;
    assert_eq!(res.status, StatusCode::CREATED, "{}", res.body);
    assert_eq!(res.body["type"], "provider_token");
    assert_eq!(res.body["brand"], "paystream");
    assert!(!res.body.to_string().contains("tok_1NvXyZ2eZvKYlo2C"));
    assert_eq!(res.body["last4"], "lo2C");
    // A short token is not shown at all: its "last four" would be most of it.
    let res = add(&app, &id, &json!({"provider_token": {"provider": "paystream", "token": "abc123"}})).await;
    assert_eq!(res.status, StatusCode::CREATED);
    assert_eq!(res.body["last4"], "****");
}

#[tokio::test]
async fn listing_needs_a_purpose_that_payment_methods_serve() {
    let app = spawn_app().await;
    let id = app.create_customer(json!({"name": "Jane"})).await;
    assert_eq!(list(&app, &id, None).await.status, StatusCode::BAD_REQUEST);
    let res = list(&app, &id, Some("order_fulfillment")).await;
    assert_eq!(res.status, StatusCode::FORBIDDEN, "{}", res.body);
    assert_eq!(
        res.body["denied"],
        json!([{"field": "payment_methods", "reason": "purpose_not_allowed_for_field"}])
    );
}

#[tokio::test]
async fn a_disclosure_to_the_payment_provider_reveals_the_card_and_the_carrier_is_denied() {
    let app = spawn_app().await;
    let id = app.create_customer(json!({"name": "Jane Example", "email": "jane@example.com"})).await;
    let token = add(&app, &id, &card("5555 5555 5555 4444")).await.body["token"].as_str().unwrap().to_owned();
    let body = json!({"customer_id": id, "recipient": "paystream-payments", "purpose": "payment_processing", "fields": ["payment_methods", "name"]});
    let res = app.call(Method::POST, "/v1/disclosures", Some(&app.merchant()), None, Some(&body)).await;
    assert_eq!(res.status, StatusCode::OK, "{}", res.body);
    let methods = res.body["fields"]["payment_methods"].as_array().unwrap();
    assert_eq!(methods.len(), 1);
    assert_eq!(methods[0]["number"], "5555555555554444");
    assert_eq!(methods[0]["token"], token.as_str());
    assert_eq!(methods[0]["holder"], "Jane Example");

    let body = json!({"customer_id": id, "recipient": "acme-shipping", "purpose": "order_fulfillment", "fields": ["payment_methods"]});
    let res = app.call(Method::POST, "/v1/disclosures", Some(&app.merchant()), None, Some(&body)).await;
    assert_eq!(res.status, StatusCode::FORBIDDEN);
    assert!(!res.body.to_string().contains("4444"));

    let events = app.audit_events().await;
    let text = serde_json::to_string(&events).unwrap();
    // Random ids and tokens in the log are hex, and may contain "4444" by chance: look for the
    // last four as a value or a member, not as a substring.
    assert!(
        !text.contains("5555555555554444") && !text.contains("\"4444\"") && !text.contains("last4"),
        "no PAN or last4 in the audit log"
    );
    let create = events.iter().find(|e| e["action"] == "payment_method.create").unwrap();
    assert_eq!(create["fields"], json!([format!("payment_methods/{token}")]));
}

#[tokio::test]
async fn deleting_a_method_and_erasing_the_customer_remove_payment_methods() {
    let mut app = spawn_app().await;
    let id = app.create_customer(json!({"name": "Jane"})).await;
    let a = add(&app, &id, &card("4111111111111111")).await.body["token"].as_str().unwrap().to_owned();
    add(&app, &id, &card("378282246310005")).await;
    let path = format!("/v1/customers/{id}/payment-methods/{a}");
    let res = app.call(Method::DELETE, &path, Some(&app.merchant()), None, None).await;
    assert_eq!(res.status, StatusCode::NO_CONTENT);
    let res = app.call(Method::DELETE, &path, Some(&app.merchant()), None, None).await;
    assert_eq!(res.status, StatusCode::NOT_FOUND);
    assert_eq!(
        list(&app, &id, Some("payment_processing")).await.body["payment_methods"].as_array().unwrap().len(),
        1
    );

    app.call(Method::DELETE, &format!("/v1/customers/{id}"), Some(&app.merchant()), None, None).await;
    assert_eq!(list(&app, &id, Some("payment_processing")).await.status, StatusCode::NOT_FOUND);
    let events = app.audit_events().await;
    for action in ["payment_method.create", "payment_method.list", "payment_method.delete"] {
        assert!(events.iter().any(|e| e["action"] == action), "{action}");
    }
    app.shutdown().await;
    let bytes = app.data_dir_bytes();
    for pan in ["4111111111111111", "378282246310005", "4111 1111 1111 1111"] {
        assert!(!contains(&bytes, pan.as_bytes()), "{pan} on disk");
    }
}
