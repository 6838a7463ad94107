//! One identifier, one address: equivalent spellings of an indexed value are the same value for
//! unique checks and lookups, and spellings that only look alike are refused.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tempfile::TempDir;

use crate::helpers::{Response, TestApp, spawn_app_with};

/// The shipped policies plus an indexed, unique `string` field, `member_number`.
const MEMBER_NUMBER: &str = r#"
[fields.member_number]
category = "user.unique_id"
type = "string"
purposes = ["customer_support"]
index = true
unique = true
"#;

/// A server over the shipped policies plus [`MEMBER_NUMBER`]; keep the directory alive.
async fn spawn_identity_app() -> (TestApp, TempDir) {
    let policies = tempfile::tempdir().expect("temp dir");
    let shipped = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("policies");
    for entry in std::fs::read_dir(shipped).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, policies.path().join(path.file_name().unwrap())).unwrap();
    }
    std::fs::write(policies.path().join("identity.toml"), MEMBER_NUMBER).unwrap();
    let dir = policies.path().to_owned();
    (spawn_app_with(|s| s.policies = dir).await, policies)
}

async fn create(app: &TestApp, fields: Value) -> Response {
    let body = json!({ "fields": fields });
    app.call(Method::POST, "/v1/customers", Some(&app.merchant()), None, Some(&body)).await
}

/// Looks a customer up by `field=value` (the value percent-encoded here) for customer support.
async fn lookup(app: &TestApp, field: &str, value: &str) -> Response {
    let query: String = form_urlencoded::Serializer::new(String::new()).append_pair(field, value).finish();
    app.call(
        Method::GET,
        &format!("/v1/customers?{query}"),
        Some(&app.merchant()),
        Some("customer_support"),
        None,
    )
    .await
}

fn ids(res: &Response) -> Vec<String> {
    assert_eq!(res.status, StatusCode::OK, "{}", res.body);
    res.body["customers"].as_array().unwrap().iter().map(|c| c["id"].as_str().unwrap().to_owned()).collect()
}

/// Creates `first`, then asserts that every one of `same` is a 409 on create and finds `first`.
async fn assert_one_address(app: &TestApp, field: &str, first: &str, same: &[&str]) {
    let res = create(app, json!({ field: first })).await;
    assert_eq!(res.status, StatusCode::CREATED, "{first:?}: {}", res.body);
    let id = res.body["id"].as_str().unwrap().to_owned();
    for spelling in same {
        let res = create(app, json!({ field: spelling })).await;
        assert_eq!(res.status, StatusCode::CONFLICT, "{spelling:?} after {first:?}: {}", res.body);
        assert_eq!(res.body["error"], "conflict");
        assert_eq!(
            ids(&lookup(app, field, spelling).await),
            std::slice::from_ref(&id),
            "lookup {spelling:?}"
        );
    }
}

/// Asserts that writing and looking up `value` in `field` are both 422 naming the field and
/// not the value, and that nothing was created.
async fn assert_refused(app: &TestApp, field: &str, value: &str) {
    for res in [create(app, json!({ field: value })).await, lookup(app, field, value).await] {
        assert_eq!(res.status, StatusCode::UNPROCESSABLE_ENTITY, "{value:?}: {}", res.body);
        assert_eq!(res.body["error"], "invalid_field");
        let message = res.body["message"].as_str().unwrap();
        assert!(message.contains(&format!("`{field}`")), "{message}");
        assert!(!res.body.to_string().contains(value), "the error echoes the value: {}", res.body);
    }
}

#[tokio::test]
async fn an_email_written_decomposed_after_its_composed_spelling_is_a_conflict_and_found_by_both() {
    let (app, _policies) = spawn_identity_app().await;
    assert_one_address(&app, "email", "zo\u{00eb}.b@example.com", &["zoe\u{0308}.b@example.com"]).await;
}

#[tokio::test]
async fn an_email_written_composed_after_its_decomposed_spelling_is_a_conflict_and_reads_back_in_nfc() {
    let (app, _policies) = spawn_identity_app().await;
    let res = create(&app, json!({"email": "zoe\u{0308}.b@example.com"})).await;
    assert_eq!(res.status, StatusCode::CREATED, "{}", res.body);
    let id = res.body["id"].as_str().unwrap().to_owned();
    let read = app.read_customer(&id, "customer_support").await;
    assert_eq!(read.body["fields"]["email"], "zo\u{00eb}.b@example.com", "stored in NFC");
    let res = create(&app, json!({"email": "zo\u{00eb}.b@example.com"})).await;
    assert_eq!(res.status, StatusCode::CONFLICT, "{}", res.body);
    assert_eq!(ids(&lookup(&app, "email", "zo\u{00eb}.b@example.com").await), [id]);
}

#[tokio::test]
async fn the_kelvin_sign_is_canonically_the_letter_k_so_it_is_one_address_with_k() {
    let (app, _policies) = spawn_identity_app().await;
    let res = create(&app, json!({"email": "\u{212a}@example.com"})).await;
    assert_eq!(res.status, StatusCode::CREATED, "{}", res.body);
    let id = res.body["id"].as_str().unwrap().to_owned();
    let read = app.read_customer(&id, "customer_support").await;
    assert_eq!(
        read.body["fields"]["email"], "K@example.com",
        "NFC maps U+212A to K, and so does what is read back"
    );
    for same in ["k@example.com", "K@example.com", "\u{212a}@EXAMPLE.com"] {
        let res = create(&app, json!({ "email": same })).await;
        assert_eq!(res.status, StatusCode::CONFLICT, "{same:?}: {}", res.body);
        assert_eq!(ids(&lookup(&app, "email", same).await), std::slice::from_ref(&id), "{same:?}");
    }
}

#[tokio::test]
async fn compatibility_characters_in_an_email_are_refused_and_the_plain_spelling_then_works() {
    let (app, _policies) = spawn_identity_app().await;
    // Fullwidth k, the fi ligature, mathematical bold k, fullwidth letters in the domain.
    for value in
        ["\u{ff4b}@example.com", "\u{fb01}n@example.com", "\u{1d424}@example.com", "k@\u{ff45}xample.com"]
    {
        assert_refused(&app, "email", value).await;
    }
    let res = create(&app, json!({"email": "k@example.com"})).await;
    assert_eq!(res.status, StatusCode::CREATED, "{}", res.body);
    let id = res.body["id"].as_str().unwrap().to_owned();
    assert_eq!(ids(&lookup(&app, "email", "k@example.com").await), [id]);
}

#[tokio::test]
async fn an_internationalised_domain_and_its_a_label_are_one_address() {
    let (app, _policies) = spawn_identity_app().await;
    assert_one_address(
        &app,
        "email",
        "leser@b\u{00fc}cher.example",
        &[
            "leser@xn--bcher-kva.example",
            "leser@B\u{00dc}CHER.example",
            "leser@XN--BCHER-KVA.EXAMPLE",
            "leser@bu\u{0308}cher.example",
        ],
    )
    .await;
}

#[tokio::test]
async fn ascii_case_of_local_part_and_domain_does_not_make_another_address() {
    let (app, _policies) = spawn_identity_app().await;
    assert_one_address(
        &app,
        "email",
        "Jane.Doe@Example.COM",
        &["jane.doe@example.com", " JANE.DOE@EXAMPLE.COM "],
    )
    .await;
}

#[tokio::test]
async fn non_ascii_letters_of_a_local_part_keep_their_case() {
    let (app, _policies) = spawn_identity_app().await;
    let lower = create(&app, json!({"email": "\u{00e9}lodie@example.com"})).await;
    assert_eq!(lower.status, StatusCode::CREATED, "{}", lower.body);
    let upper = create(&app, json!({"email": "\u{00c9}lodie@example.com"})).await;
    assert_eq!(upper.status, StatusCode::CREATED, "no standard folds non-ASCII case: {}", upper.body);
    let found = ids(&lookup(&app, "email", "\u{00c9}LODIE@example.com").await);
    assert_eq!(found, [upper.body["id"].as_str().unwrap().to_owned()], "ASCII letters still fold");
}

#[tokio::test]
async fn mixed_script_lookalike_emails_are_refused_and_single_script_ones_are_distinct_addresses() {
    let (app, _policies) = spawn_identity_app().await;
    for value in [
        "p\u{0430}ypal@example.com", // Cyrillic а among Latin letters
        "support@p\u{0430}ypal.com", // … in a domain label
        "support@xn--pypal-4ve.com", // … spelled as an A-label
        "\u{03bf}mega@example.com",  // Greek ο among Latin letters
        "jo\u{200b}hn@example.com",  // an invisible zero-width space
        "jo\u{00ad}hn@example.com",  // an invisible soft hyphen
    ] {
        assert_refused(&app, "email", value).await;
    }
    let latin = create(&app, json!({"email": "ivan@example.com"})).await;
    let cyrillic = create(&app, json!({"email": "\u{0438}\u{0432}\u{0430}\u{043d}@example.com"})).await;
    let japanese =
        create(&app, json!({"email": "\u{5c71}\u{7530}\u{305f}\u{308d}\u{3046}@example.jp"})).await;
    for res in [&latin, &cyrillic, &japanese] {
        assert_eq!(res.status, StatusCode::CREATED, "{}", res.body);
    }
    assert_eq!(
        ids(&lookup(&app, "email", "\u{0438}\u{0432}\u{0430}\u{043d}@example.com").await),
        [cyrillic.body["id"].as_str().unwrap().to_owned()]
    );
    let events = app.audit_events().await;
    let refused =
        events.iter().filter(|e| e["action"] == "customer.create" && e["outcome"] == "failed").count();
    assert_eq!(refused, 6, "each refused create is recorded as failed");
}

#[tokio::test]
async fn phone_digits_of_other_scripts_are_refused_and_not_converted() {
    let (app, _policies) = spawn_identity_app().await;
    for value in [
        "+\u{0664}\u{0669}\u{0661}\u{0665}\u{0661}\u{0662}\u{0663}\u{0664}\u{0665}\u{0666}", // Arabic-Indic
        "+\u{ff14}\u{ff19}\u{ff11}\u{ff15}\u{ff11}\u{ff12}\u{ff13}\u{ff14}\u{ff15}\u{ff16}", // fullwidth
        "+49\u{0967}\u{096b}\u{0967}23456789",                                               // Devanagari
        "\u{ff0b}4915123456789",                                                             // fullwidth +
    ] {
        assert_refused(&app, "phone", value).await;
    }
    let res = create(&app, json!({"phone": "+49 151-2345 6789"})).await;
    assert_eq!(res.status, StatusCode::CREATED, "{}", res.body);
    let id = res.body["id"].as_str().unwrap().to_owned();
    assert_eq!(ids(&lookup(&app, "phone", "+4915123456789").await), [id]);
}

#[tokio::test]
async fn an_indexed_string_in_composed_and_decomposed_form_is_one_value() {
    let (app, _policies) = spawn_identity_app().await;
    assert_one_address(&app, "member_number", "Zo\u{00eb}-0042", &["Zoe\u{0308}-0042"]).await;
    // Strings are otherwise exact: case and spaces are part of the value.
    let other = create(&app, json!({"member_number": "zo\u{00eb}-0042"})).await;
    assert_eq!(other.status, StatusCode::CREATED, "{}", other.body);
}

#[tokio::test]
async fn quoted_or_commented_spellings_of_a_mailbox_are_refused() {
    let (app, _policies) = spawn_identity_app().await;
    app.create_customer(json!({ "email": "jane@example.com" })).await;
    for other in ["\"jane\"@example.com", "jane(note)@example.com", "jane.@example.com", "t22@1.2.3.4"] {
        let body = json!({ "fields": { "email": other } });
        let res = app.call(Method::POST, "/v1/customers", Some(&app.merchant()), None, Some(&body)).await;
        assert_eq!(res.status, StatusCode::UNPROCESSABLE_ENTITY, "{other}: {}", res.body);
        assert!(!res.body.to_string().contains("jane"), "the value is not echoed");
    }
}
