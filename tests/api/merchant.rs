//! The merchant's customer API: create, read with a purpose, patch, erase, lookup, validation.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::helpers::{TestApp, contains, spawn_app};

fn jane() -> Value {
    json!({
        "name": "Jane Example",
        "email": "Jane.Example@Shop.test",
        "phone": "+49 151-2345 6789",
        "birth_date": "1990-04-17",
        "shipping_address": {"line1": "Hauptstr. 5", "city": "Berlin", "postal_code": "10115", "country": "DE"},
        "country": "DE"
    })
}

async fn error_code(res: &crate::helpers::Response) -> &str {
    res.body["error"].as_str().unwrap_or("")
}

#[tokio::test]
async fn a_created_customer_reads_back_for_a_purpose_with_withheld_fields_listed() {
    let app = spawn_app().await;
    let id = app.create_customer(jane()).await;
    assert_eq!(id.len(), 36);

    let res = app.read_customer(&id, "order_fulfillment").await;
    assert_eq!(res.status, StatusCode::OK, "{}", res.body);
    assert_eq!(res.body["id"], id);
    let fields = &res.body["fields"];
    assert_eq!(fields["name"], "Jane Example");
    assert_eq!(fields["email"], "Jane.Example@Shop.test", "emails are stored as given");
    assert_eq!(fields["phone"], "+4915123456789", "phones are normalised");
    assert_eq!(fields["shipping_address"]["city"], "Berlin");
    assert!(fields.get("birth_date").is_none(), "birth_date does not serve order_fulfillment");
    assert_eq!(res.body["withheld"], json!(["birth_date"]));
    assert!(res.headers.get("x-request-id").is_some());
}

#[tokio::test]
async fn fields_query_narrows_the_read() {
    let app = spawn_app().await;
    let id = app.create_customer(jane()).await;
    let res = app
        .call(
            Method::GET,
            &format!("/v1/customers/{id}?fields=name,birth_date"),
            Some(&app.merchant()),
            Some("order_fulfillment"),
            None,
        )
        .await;
    assert_eq!(res.status, StatusCode::OK);
    assert_eq!(res.body["fields"], json!({"name": "Jane Example"}));
    assert_eq!(res.body["withheld"], json!(["birth_date"]));

    let res = app
        .call(
            Method::GET,
            &format!("/v1/customers/{id}?fields=shoe_size"),
            Some(&app.merchant()),
            Some("order_fulfillment"),
            None,
        )
        .await;
    assert_eq!(res.status, StatusCode::UNPROCESSABLE_ENTITY);
}

#[tokio::test]
async fn a_consent_purpose_without_consent_withholds_everything() {
    let app = spawn_app().await;
    let id = app.create_customer(jane()).await;
    let res = app.read_customer(&id, "marketing").await;
    assert_eq!(res.status, StatusCode::OK);
    assert_eq!(res.body["fields"], json!({}));
    assert!(res.body["withheld"].as_array().unwrap().contains(&json!("email")));
}

#[tokio::test]
async fn a_read_without_purpose_or_with_an_undeclared_one_is_400() {
    let app = spawn_app().await;
    let id = app.create_customer(jane()).await;
    let res = app.call(Method::GET, &format!("/v1/customers/{id}"), Some(&app.merchant()), None, None).await;
    assert_eq!(res.status, StatusCode::BAD_REQUEST);
    assert_eq!(error_code(&res).await, "purpose_required");
    let res = app.read_customer(&id, "world_domination").await;
    assert_eq!(res.status, StatusCode::BAD_REQUEST);
    assert_eq!(error_code(&res).await, "unknown_purpose");

    let events = app.audit_events().await;
    let denied: Vec<&Value> = events.iter().filter(|e| e["action"] == "customer.read").collect();
    assert_eq!(denied.len(), 2);
    assert!(denied.iter().all(|e| e["outcome"] == "denied"));
    let text = serde_json::to_string(&events).unwrap();
    assert!(!text.contains("world_domination"), "undeclared purposes are not recorded verbatim");
}

#[tokio::test]
async fn an_unknown_customer_is_404_and_audited() {
    let app = spawn_app().await;
    for id in ["8d1b6f3e-1f0a-4c2a-9a1e-5d6c7b8a9f00", "not-an-id", "..%2F..%2Fetc%2Fpasswd"] {
        let res = app.read_customer(id, "order_fulfillment").await;
        assert_eq!(res.status, StatusCode::NOT_FOUND, "{id}");
    }
    let events = app.audit_events().await;
    assert_eq!(events.iter().filter(|e| e["reason"] == json!(["not_found"])).count(), 3);
}

#[tokio::test]
async fn patch_changes_and_null_removes_fields() {
    let app = spawn_app().await;
    let id = app.create_customer(jane()).await;
    let path = format!("/v1/customers/{id}");
    let res = app
        .call(
            Method::PATCH,
            &path,
            Some(&app.merchant()),
            None,
            Some(&json!({"fields": {"name": "Jane Doe", "phone": null}})),
        )
        .await;
    assert_eq!(res.status, StatusCode::OK, "{}", res.body);
    assert_eq!(
        res.body["fields"],
        json!({"name": "Jane Doe"}),
        "without a purpose only written fields come back"
    );

    let res = app
        .call(
            Method::PATCH,
            &path,
            Some(&app.merchant()),
            Some("order_fulfillment"),
            Some(&json!({"fields": {"country": "FR"}})),
        )
        .await;
    assert_eq!(res.status, StatusCode::OK, "{}", res.body);
    assert_eq!(res.body["fields"]["name"], "Jane Doe", "with a purpose the answer is the read view");
    assert_eq!(res.body["fields"]["country"], "FR");
    assert!(res.body["fields"].get("phone").is_none());

    let res = app.read_customer(&id, "order_fulfillment").await;
    assert_eq!(res.body["fields"]["name"], "Jane Doe");
    assert!(res.body["fields"].get("phone").is_none());
    // The removed phone no longer looks up.
    let res = app
        .call(
            Method::GET,
            "/v1/customers?phone=%2B4915123456789",
            Some(&app.merchant()),
            Some("order_fulfillment"),
            None,
        )
        .await;
    assert_eq!(res.body["customers"], json!([]));
}

#[tokio::test]
async fn lookup_finds_by_normalised_email_and_phone() {
    let app = spawn_app().await;
    let id = app.create_customer(jane()).await;
    let _other = app.create_customer(json!({"email": "someone@else.test"})).await;
    for query in ["email=%20jane.example%40shop.TEST%20", "phone=%2B49%20151%2023456789"] {
        let res = app
            .call(
                Method::GET,
                &format!("/v1/customers?{query}"),
                Some(&app.merchant()),
                Some("order_fulfillment"),
                None,
            )
            .await;
        assert_eq!(res.status, StatusCode::OK, "{query}: {}", res.body);
        assert_eq!(res.body["customers"], json!([{"id": id}]), "{query}");
    }
    let res = app
        .call(
            Method::GET,
            "/v1/customers?email=nobody%40shop.test",
            Some(&app.merchant()),
            Some("order_fulfillment"),
            None,
        )
        .await;
    assert_eq!(res.body["customers"], json!([]));
}

#[tokio::test]
async fn lookup_refuses_what_the_purpose_or_index_does_not_allow() {
    let app = spawn_app().await;
    let m = app.merchant();
    let res =
        app.call(Method::GET, "/v1/customers?name=Jane", Some(&m), Some("order_fulfillment"), None).await;
    assert_eq!(res.status, StatusCode::BAD_REQUEST, "name is not indexed");
    let res = app.call(Method::GET, "/v1/customers?shoe=42", Some(&m), Some("order_fulfillment"), None).await;
    assert_eq!(res.status, StatusCode::UNPROCESSABLE_ENTITY);
    let res = app.call(Method::GET, "/v1/customers?email=a%40b.test", Some(&m), None, None).await;
    assert_eq!(res.status, StatusCode::BAD_REQUEST);
    let res = app.call(Method::GET, "/v1/customers", Some(&m), Some("order_fulfillment"), None).await;
    assert_eq!(res.status, StatusCode::BAD_REQUEST);
    let res =
        app.call(Method::GET, "/v1/customers?email=a%40b.test", Some(&m), Some("analytics"), None).await;
    assert_eq!(res.status, StatusCode::FORBIDDEN, "email does not serve analytics: {}", res.body);
    assert_eq!(res.body["error"], "policy_denied");
    assert_eq!(res.body["denied"], json!([{"field": "email", "reason": "purpose_not_allowed_for_field"}]));
}

#[tokio::test]
async fn a_unique_email_cannot_be_taken_twice() {
    let app = spawn_app().await;
    let first = app.create_customer(json!({"email": "taken@shop.test"})).await;
    let m = app.merchant();
    let res = app
        .call(
            Method::POST,
            "/v1/customers",
            Some(&m),
            None,
            Some(&json!({"fields": {"email": "TAKEN@shop.test "}})),
        )
        .await;
    assert_eq!(res.status, StatusCode::CONFLICT, "{}", res.body);
    assert!(!res.body.to_string().contains("taken@"), "the conflict does not echo the value");

    let second = app.create_customer(json!({"email": "free@shop.test"})).await;
    let res = app
        .call(
            Method::PATCH,
            &format!("/v1/customers/{second}"),
            Some(&m),
            None,
            Some(&json!({"fields": {"email": "taken@shop.test"}})),
        )
        .await;
    assert_eq!(res.status, StatusCode::CONFLICT);
    // A customer may re-write its own unique value.
    let res = app
        .call(
            Method::PATCH,
            &format!("/v1/customers/{first}"),
            Some(&m),
            None,
            Some(&json!({"fields": {"email": "Taken@shop.test"}})),
        )
        .await;
    assert_eq!(res.status, StatusCode::OK, "{}", res.body);
    let events = app.audit_events().await;
    assert_eq!(events.iter().filter(|e| e["reason"] == json!(["unique_conflict"])).count(), 2);
}

#[tokio::test]
async fn erasure_removes_the_customer_and_its_lookups() {
    let app = spawn_app().await;
    let id = app.create_customer(jane()).await;
    let m = app.merchant();
    let path = format!("/v1/customers/{id}");
    let res = app.call(Method::DELETE, &path, Some(&m), None, None).await;
    assert_eq!(res.status, StatusCode::OK, "{}", res.body);
    assert_eq!(res.body["id"], id);
    assert!(res.body["erased_at"].as_str().unwrap().ends_with('Z'));

    assert_eq!(app.read_customer(&id, "order_fulfillment").await.status, StatusCode::NOT_FOUND);
    let patch = json!({"fields": {"name": "x"}});
    assert_eq!(
        app.call(Method::PATCH, &path, Some(&m), None, Some(&patch)).await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(app.call(Method::DELETE, &path, Some(&m), None, None).await.status, StatusCode::NOT_FOUND);
    let res = app
        .call(
            Method::GET,
            "/v1/customers?email=jane.example%40shop.test",
            Some(&m),
            Some("order_fulfillment"),
            None,
        )
        .await;
    assert_eq!(res.body["customers"], json!([]));
    // The email is free again.
    app.create_customer(json!({"email": "jane.example@shop.test"})).await;

    let events = app.audit_events().await;
    let erase = events.iter().find(|e| e["action"] == "customer.erase").unwrap();
    assert_eq!(erase["customer_id"], id);
    assert_eq!(erase["outcome"], "allowed");
    assert!(erase["fields"].as_array().unwrap().contains(&json!("email")));
}

#[tokio::test]
async fn each_invalid_field_value_is_422_naming_the_field_and_changes_nothing() {
    let app = spawn_app().await;
    let cases = [
        ("name", json!("")),
        ("name", json!("x".repeat(4097))),
        ("name", json!(42)),
        ("email", json!("no-at-sign")),
        ("email", json!("two@@shop.test")),
        ("email", json!("a@localhost")),
        ("email", json!(format!("{}@shop.test", "a".repeat(250)))),
        ("phone", json!("0151 2345")),
        ("phone", json!("+12 34")),
        ("phone", json!("+1234567890123456")),
        ("birth_date", json!("2023-02-29")),
        ("birth_date", json!("17.04.1990")),
        ("country", json!("de")),
        ("country", json!("XX")),
        ("shipping_address", json!({"line1": "x", "city": "y", "postal_code": "1"})),
        (
            "shipping_address",
            json!({"line1": "x", "city": "y", "postal_code": "1", "country": "DE", "floor": 3}),
        ),
        ("shipping_address", json!("Hauptstr. 5, Berlin")),
    ];
    let m = app.merchant();
    for (field, value) in cases {
        let body = json!({"fields": {field: value}});
        let res = app.call(Method::POST, "/v1/customers", Some(&m), None, Some(&body)).await;
        assert_eq!(res.status, StatusCode::UNPROCESSABLE_ENTITY, "{field} = {value}: {}", res.body);
        assert_eq!(res.body["error"], "invalid_field");
        assert!(res.body["message"].as_str().unwrap().contains(field), "{}", res.body);
        if let Some(s) = value.as_str().filter(|s| s.len() > 3) {
            assert!(!res.body.to_string().contains(s), "the error echoes the value: {}", res.body);
        }
    }
    let events = app.audit_events().await;
    assert!(events.iter().filter(|e| e["action"] == "customer.create").all(|e| e["outcome"] == "failed"));
    assert!(!events.iter().any(|e| e["outcome"] == "allowed" && e["action"] == "customer.create"));
}

#[tokio::test]
async fn malformed_bodies_get_clear_errors() {
    let app = spawn_app().await;
    let m = app.merchant();
    let res = app
        .call_raw(Method::POST, "/v1/customers", &m, Some("application/json"), b"{\"fields\": {".to_vec())
        .await;
    assert_eq!(res.status, StatusCode::BAD_REQUEST);
    assert_eq!(res.body["error"], "malformed_json");

    let res = app
        .call_raw(
            Method::POST,
            "/v1/customers",
            &m,
            Some("application/json"),
            b"{\"fields\": \"jane@shop.test\"}".to_vec(),
        )
        .await;
    assert_eq!(res.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(!res.body.to_string().contains("jane@shop.test"), "{}", res.body);

    let res = app
        .call_raw(
            Method::POST,
            "/v1/customers",
            &m,
            Some("application/json"),
            b"{\"fields\": {}, \"admin\": true}".to_vec(),
        )
        .await;
    assert_eq!(res.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(res.body["message"].as_str().unwrap().contains("admin"));

    let res = app
        .call_raw(
            Method::POST,
            "/v1/customers",
            &m,
            Some("application/json"),
            b"{\"fields\": {\"shoe_size\": \"42\"}}".to_vec(),
        )
        .await;
    assert_eq!(res.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(res.body["error"], "unknown_field");

    let res = app.call_raw(Method::POST, "/v1/customers", &m, None, b"{\"fields\": {}}".to_vec()).await;
    assert_eq!(res.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);

    let big = format!("{{\"fields\": {{\"name\": \"{}\"}}}}", "x".repeat(70 * 1024));
    let res =
        app.call_raw(Method::POST, "/v1/customers", &m, Some("application/json"), big.into_bytes()).await;
    assert_eq!(res.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(res.body["error"], "payload_too_large");

    let nested = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
    let res =
        app.call_raw(Method::POST, "/v1/customers", &m, Some("application/json"), nested.into_bytes()).await;
    assert!(res.status.is_client_error(), "{}", res.status);

    let res = app
        .call(Method::PATCH, "/v1/customers/x", Some(&m), None, Some(&json!({"fields": {}, "id": "y"})))
        .await;
    assert_eq!(res.status, StatusCode::UNPROCESSABLE_ENTITY);

    // Nothing was created by any of these.
    let events = app.audit_events().await;
    assert!(!events.iter().any(|e| e["action"] == "customer.create" && e["outcome"] == "allowed"));
}

#[tokio::test]
async fn payment_methods_cannot_be_written_as_a_field() {
    let app = spawn_app().await;
    let body = json!({"fields": {"payment_methods": [{"number": "4111111111111111"}]}});
    let res = app.call(Method::POST, "/v1/customers", Some(&app.merchant()), None, Some(&body)).await;
    assert_eq!(res.status, StatusCode::BAD_REQUEST);
    assert!(!res.body.to_string().contains("4111"));
}

#[tokio::test]
async fn every_merchant_call_is_audited_with_names_never_values() {
    let app = spawn_app().await;
    let id = app.create_customer(jane()).await;
    app.read_customer(&id, "order_fulfillment").await;
    let m = app.merchant();
    app.call(
        Method::PATCH,
        &format!("/v1/customers/{id}"),
        Some(&m),
        None,
        Some(&json!({"fields": {"name": "Janet"}})),
    )
    .await;
    app.call(
        Method::GET,
        "/v1/customers?email=jane.example%40shop.test",
        Some(&m),
        Some("order_fulfillment"),
        None,
    )
    .await;
    app.call(Method::DELETE, &format!("/v1/customers/{id}"), Some(&m), None, None).await;

    let events = app.audit_events().await;
    let actions: Vec<&str> = events.iter().filter_map(|e| e["action"].as_str()).collect();
    for action in ["customer.create", "customer.read", "customer.update", "customer.lookup", "customer.erase"]
    {
        assert!(actions.contains(&action), "{action} missing from {actions:?}");
    }
    for (i, e) in events.iter().enumerate() {
        assert_eq!(e["seq"], i as u64);
        let keys: Vec<&String> = e.as_object().unwrap().keys().collect();
        for k in &keys {
            assert!(
                [
                    "seq",
                    "time",
                    "action",
                    "outcome",
                    "actor",
                    "customer_id",
                    "fields",
                    "purpose",
                    "recipient",
                    "reason",
                    "request_id"
                ]
                .contains(&k.as_str()),
                "unexpected member {k}"
            );
        }
        assert!(e["time"].as_str().unwrap().ends_with('Z'));
    }
    let read = events.iter().find(|e| e["action"] == "customer.read").unwrap();
    assert_eq!(read["actor"], json!({"role": "merchant", "sub": "shop-backend"}));
    assert_eq!(read["purpose"], "order_fulfillment");
    assert_eq!(read["customer_id"], id);
    let text = serde_json::to_string(&events).unwrap();
    for value in ["Jane Example", "Janet", "jane.example", "Hauptstr", "2345", "1990-04-17"] {
        assert!(!text.contains(value), "audit log contains {value}");
    }
}

#[tokio::test]
async fn no_stored_value_appears_in_any_file_of_the_data_directory() {
    let mut app: TestApp = spawn_app().await;
    let values = [
        "Jane Example",
        "Jane.Example@Shop.test",
        "jane.example@shop.test",
        "+4915123456789",
        "Hauptstr. 5",
        "1990-04-17",
    ];
    let id = app.create_customer(jane()).await;
    app.call(
        Method::PATCH,
        &format!("/v1/customers/{id}"),
        Some(&app.merchant()),
        None,
        Some(&json!({"fields": {"name": "Jane Example"}})),
    )
    .await;
    app.read_customer(&id, "order_fulfillment").await;
    app.shutdown().await;
    let bytes = app.data_dir_bytes();
    assert!(bytes.len() > 1000, "the scan reads the store");
    for value in values {
        assert!(!contains(&bytes, value.as_bytes()), "{value} found on disk");
    }
}

#[tokio::test]
async fn data_survives_a_restart() {
    let app = spawn_app().await;
    let id = app.create_customer(jane()).await;
    let app = app.restart().await;
    let res = app.read_customer(&id, "order_fulfillment").await;
    assert_eq!(res.status, StatusCode::OK);
    assert_eq!(res.body["fields"]["name"], "Jane Example");
    let events = app.audit_events().await;
    assert_eq!(events[0]["action"], "customer.create");
    assert!(events.windows(2).all(|w| w[1]["seq"].as_u64() == w[0]["seq"].as_u64().map(|s| s + 1)));
}

#[tokio::test]
async fn health_answers_and_unknown_paths_are_json_404() {
    let app = spawn_app().await;
    let res = app.call(Method::GET, "/healthz", None, None, None).await;
    assert_eq!(res.status, StatusCode::OK);
    let res = app.call(Method::GET, "/v2/nothing", None, None, None).await;
    assert_eq!(res.status, StatusCode::NOT_FOUND);
    assert_eq!(res.body["error"], "not_found");
    let res = app.call(Method::PUT, "/v1/customers", Some(&app.merchant()), None, None).await;
    assert_eq!(res.status, StatusCode::METHOD_NOT_ALLOWED);
    // A path that does not decode is a JSON 400 too.
    let res = app
        .call(Method::GET, "/v1/customers/%FF%FE", Some(&app.merchant()), Some("order_fulfillment"), None)
        .await;
    assert_eq!(res.status, StatusCode::BAD_REQUEST);
    assert_eq!(res.body["error"], "bad_request");
}

#[tokio::test]
async fn every_answer_carries_a_request_id_the_server_assigned() {
    let app = spawn_app().await;
    let res = app
        .client
        .get(format!("{}/healthz", app.base))
        .header("X-Request-Id", "a b<script>")
        .send()
        .await
        .unwrap();
    let id = res.headers()["x-request-id"].to_str().unwrap();
    assert!(uuid::Uuid::try_parse(id).is_ok(), "{id}");
}
