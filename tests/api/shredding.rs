//! Erasure that really shreds (DESIGN §4): after a 2xx erasure no file of the data directory
//! opens the customer's data — at once, after a clean shutdown, and after `kill -9` right after
//! the answer. The scan owns the crypto: every candidate sealed blob in every file is tried as
//! a wrapped data key of that customer, under the master key and under every epoch key (read
//! from a copy of the epoch-key file, which the running server holds locked), with the crate's
//! own envelope code; the values and card number are looked for in plaintext. The same scan
//! finds a live customer's key, so it can fail.

use std::path::Path;

use custodia::crypto::{DataKeyring, KeyId, Sealed, WrappedKey};
use custodia::domain::CustomerId;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::helpers::{
    ServerProcess, TEST_EPOCH_FILE, TestApp, contains, epoch_keyring, files_under, now, sign_hs256,
    spawn_app, test_settings,
};

/// A sealed data key: format byte, 96-bit nonce, 32 key bytes, 128-bit tag
/// (`src/crypto/envelope.rs`).
const WRAPPED_DATA_KEY_LEN: usize = 1 + 12 + 32 + 16;
const CARD: &str = "4111111111111111";

/// The data keyring of the server over `dir` (master key and epoch keys), from a copy of its
/// epoch-key file, and every key id a data key may be wrapped under.
fn keyring(dir: &Path) -> (DataKeyring, Vec<KeyId>) {
    let ring = epoch_keyring(&dir.join(TEST_EPOCH_FILE));
    let mut ids: Vec<KeyId> = ring.epochs().into_iter().map(|e| e.id).collect();
    ids.push(ring.master().current_id().clone());
    (ring, ids)
}

/// The files of `dir` in which some window unwraps, under the test master key or an epoch key,
/// into a data key bound to `customer`.
fn files_opening_data_key(dir: &Path, customer: &str) -> Vec<String> {
    let (keyring, key_ids) = keyring(dir);
    let customer: CustomerId = customer.parse().unwrap();
    files_under(dir)
        .into_iter()
        .filter(|(_, bytes)| {
            bytes.windows(WRAPPED_DATA_KEY_LEN).any(|window| {
                // Only windows that start like a sealed blob are worth AES-GCM attempts.
                window[0] == 1
                    && key_ids.iter().any(|id| {
                        let wrapped = WrappedKey {
                            master_key: id.clone(),
                            sealed: Sealed::from_bytes(window.to_vec()),
                        };
                        keyring.unwrap_data_key(&customer, &wrapped).is_ok()
                    })
            })
        })
        .map(|(name, _)| name)
        .collect()
}

/// The files of `dir` holding any of `values` in plaintext.
fn files_with_plaintext(dir: &Path, values: &[&str]) -> Vec<String> {
    files_under(dir)
        .into_iter()
        .filter(|(_, bytes)| values.iter().any(|v| contains(bytes, v.as_bytes())))
        .map(|(name, _)| name)
        .collect()
}

fn fields(n: u32) -> Value {
    json!({
        "name": format!("Shredded Person {n}"),
        "email": format!("shred-{n}@example.com"),
        "phone": format!("+4915100000{n:03}")
    })
}

fn plaintexts(n: u32) -> [String; 4] {
    [
        format!("Shredded Person {n}"),
        format!("shred-{n}@example.com"),
        format!("+4915100000{n:03}"),
        CARD.into(),
    ]
}

/// What the scan must find (or not) for the erased customer `gone` and the live one `kept`.
fn assert_shredded(dir: &Path, gone: &str, kept: &str, moment: &str) {
    assert_eq!(
        files_opening_data_key(dir, gone),
        Vec::<String>::new(),
        "{moment}: the erased key still opens"
    );
    assert!(
        !files_opening_data_key(dir, kept).is_empty(),
        "{moment}: the scan must find a live customer's key"
    );
    for n in [1, 2] {
        let values = plaintexts(n);
        let values: Vec<&str> = values.iter().map(String::as_str).collect();
        assert_eq!(files_with_plaintext(dir, &values), Vec::<String>::new(), "{moment}: plaintext on disk");
    }
}

async fn add_card(client: &reqwest::Client, base: &str, token: &str, id: &str) {
    let body =
        json!({"card": {"number": CARD, "exp_month": 12, "exp_year": 2031, "holder": "Shredded Person"}});
    let res = client
        .post(format!("{base}/v1/customers/{id}/payment-methods"))
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::CREATED);
}

#[tokio::test]
async fn an_erased_customers_key_opens_from_no_file_at_once_and_after_a_clean_shutdown() {
    if crate::helpers::sled_only("scans the data directory's files") {
        return;
    }
    let mut app = spawn_app().await;
    let (gone, kept) = (app.create_customer(fields(1)).await, app.create_customer(fields(2)).await);
    for id in [&gone, &kept] {
        add_card(&app.client, &app.base, &app.merchant(), id).await;
    }
    let dir = app.data_dir.path().to_owned();
    // Before the erasure the scan finds both keys: it would catch a surviving copy.
    assert!(!files_opening_data_key(&dir, &gone).is_empty());

    let res =
        app.call(Method::DELETE, &format!("/v1/customers/{gone}"), Some(&app.merchant()), None, None).await;
    assert_eq!(res.status, StatusCode::OK, "{}", res.body);
    assert_shredded(&dir, &gone, &kept, "at once");

    app.shutdown().await;
    assert_shredded(&dir, &gone, &kept, "after a clean shutdown");
    let app = app.restart().await;
    assert_eq!(app.read_customer(&kept, "order_fulfillment").await.status, StatusCode::OK);
    assert_eq!(app.read_customer(&gone, "order_fulfillment").await.status, StatusCode::NOT_FOUND);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_erased_customers_key_opens_from_no_file_after_kill_9_right_after_the_answer() {
    if crate::helpers::sled_only("scans the data directory's files") {
        return;
    }
    let data_dir = tempfile::tempdir().unwrap();
    let mut server = ServerProcess::start(data_dir.path(), &[]);
    let client = reqwest::Client::new();
    let token = sign_hs256(json!({"sub": "shop", "role": "merchant", "exp": now() + 600}));
    let mut ids = Vec::new();
    for n in [1, 2] {
        let res = client
            .post(format!("{}/v1/customers", server.base))
            .bearer_auth(&token)
            .json(&json!({"fields": fields(n)}))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::CREATED);
        let id = res.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_owned();
        add_card(&client, &server.base, &token, &id).await;
        ids.push(id);
    }
    let (gone, kept) = (ids[0].clone(), ids[1].clone());
    let res = client
        .delete(format!("{}/v1/customers/{gone}", server.base))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    server.kill();
    assert_shredded(data_dir.path(), &gone, &kept, "after kill -9");

    // The restart replays the log (which logged the erasure) and still opens nothing of it.
    let settings = test_settings(data_dir.path());
    let app = TestApp::adopt(data_dir, settings).await;
    assert_eq!(app.read_customer(&kept, "order_fulfillment").await.status, StatusCode::OK);
    assert_eq!(app.read_customer(&gone, "order_fulfillment").await.status, StatusCode::NOT_FOUND);
    assert_shredded(app.data_dir.path(), &gone, &kept, "after the restart");
}
