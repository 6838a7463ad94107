//! What an attacker with write access to the data directory can and cannot do: a ciphertext
//! moved to another customer or another field does not open.

use reqwest::StatusCode;
use serde_json::json;

use crate::helpers::{edit_stored_record, spawn_app, stored_record};

#[tokio::test]
async fn a_ciphertext_copied_to_another_customer_or_field_fails_to_open() {
    if crate::helpers::sled_only("edits a stored record in the sled backend's record file") {
        return;
    }
    let mut app = spawn_app().await;
    let alice = app.create_customer(json!({"name": "Alice Liddell", "email": "alice@shop.test"})).await;
    let bob = app.create_customer(json!({"name": "Bob Builder", "email": "bob@shop.test"})).await;
    app.shutdown().await;

    let alices_email = stored_record(app.data_dir.path(), &alice).await.fields["email"].clone();
    edit_stored_record(app.data_dir.path(), &bob, |b| {
        b.fields.insert("email".into(), alices_email.clone());
    });
    edit_stored_record(app.data_dir.path(), &alice, |a| {
        a.fields.insert("name".into(), alices_email.clone());
    });

    let app = app.restart().await;
    for id in [&bob, &alice] {
        let res = app.read_customer(id, "order_fulfillment").await;
        assert_eq!(res.status, StatusCode::INTERNAL_SERVER_ERROR, "{}", res.body);
        assert!(!res.body.to_string().contains("alice@"), "{}", res.body);
    }
    // Untampered fields of the same customers still open when asked for alone.
    let res = app
        .call(
            reqwest::Method::GET,
            &format!("/v1/customers/{bob}?fields=name"),
            Some(&app.merchant()),
            Some("order_fulfillment"),
            None,
        )
        .await;
    assert_eq!(res.status, StatusCode::OK);
    assert_eq!(res.body["fields"]["name"], "Bob Builder");
}

#[tokio::test]
async fn a_wrong_master_key_refuses_to_start_naming_the_problem() {
    let mut app = spawn_app().await;
    app.create_customer(json!({"name": "Carol"})).await;
    app.shutdown().await;
    let mut settings = app.settings.clone();
    settings.master_key = Some(secrecy::SecretString::from("BBECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="));
    let err = custodia::startup::App::build(settings).await.err().expect("refuses to start");
    assert!(err.to_string().contains("master key"), "{err}");
}
