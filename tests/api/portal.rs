//! The customers' privacy portal, in a real Chromium against a real server: sign in by link,
//! read, correct, withdraw a consent (and see a disclosure refused through the API), verify an
//! access entry with WebCrypto, see a tampered entry fail, download the export, erase, sign out.
//! Plus the customer receipt routes over plain HTTP and the pages' security headers.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::auditor::{RawAuditFiles, split_stored};
use crate::browser::Browser;
use crate::helpers::{TestApp, sign_hs256, spawn_app};

/// A customer with a profile, a marketing consent and two disclosures about them.
async fn customer_with_history(app: &TestApp) -> String {
    let id = app
        .create_customer(json!({
            "name": "Ada Lovelace",
            "email": "ada@example.com",
            "phone": "+44 20 7946 0958",
            "shipping_address": {"line1": "12 St James's Square", "city": "London", "postal_code": "SW1Y 4JH", "country": "GB"},
        }))
        .await;
    let consent = json!({"granted": true, "source": "checkout-form", "notice": "marketing-v2"});
    let res = app
        .call(
            Method::PUT,
            &format!("/v1/customers/{id}/consents/marketing"),
            Some(&app.merchant()),
            None,
            Some(&consent),
        )
        .await;
    assert_eq!(res.status, StatusCode::OK, "{}", res.body);
    assert_eq!(
        disclose(app, &id, "acme-shipping", "order_fulfillment", &["name", "shipping_address"]).await,
        StatusCode::OK
    );
    assert_eq!(disclose(app, &id, "letterbox-newsletter", "marketing", &["email"]).await, StatusCode::OK);
    id
}

async fn disclose(app: &TestApp, id: &str, recipient: &str, purpose: &str, fields: &[&str]) -> StatusCode {
    let body = json!({"customer_id": id, "recipient": recipient, "purpose": purpose, "fields": fields});
    app.call(Method::POST, "/v1/disclosures", Some(&app.merchant()), None, Some(&body)).await.status
}

fn portal_link(app: &TestApp, token: &str) -> String {
    format!("{}/portal#token={token}", app.base)
}

/// Every URL the page loaded is on the server's own origin.
async fn assert_same_origin(browser: &Browser, app: &TestApp) {
    let urls = browser.loaded_urls().await;
    assert!(!urls.is_empty());
    for url in urls {
        assert!(url.starts_with(&format!("{}/", app.base)), "loaded from another origin: {url}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_customer_reads_corrects_withdraws_verifies_downloads_and_erases_in_a_real_browser() {
    let app = spawn_app().await;
    let id = customer_with_history(&app).await;
    let Some(browser) = Browser::open("portal walk-through", 800, 1100).await else { return };
    let token = TestApp::customer_token(&id);

    // Sign in by link; the token leaves the address bar at once.
    browser.client.goto(&portal_link(&app, &token)).await.unwrap();
    browser.wait_until("!document.getElementById('view-portal').hidden").await;
    let url = browser.client.current_url().await.unwrap();
    assert_eq!(url.fragment(), None, "the token must not stay in the URL: {url}");
    assert_eq!(browser.text("#field-name .value").await, "Ada Lovelace");
    assert!(browser.text("#field-shipping_address .value").await.contains("London"));
    assert!(browser.text("#consent-marketing").await.contains("Given"));
    assert!(browser.text("#consent-marketing").await.contains("marketing-v2"));
    browser.wait("#history-list li").await;
    let history = browser.text("#history-list").await;
    assert!(
        history.contains("Acme Shipping received your name and shipping address to pack and ship"),
        "{history}"
    );
    assert!(history.contains("(contract)"), "{history}");
    browser.screenshot("portal").await;

    // Every control has a name a screen reader announces.
    let unnamed = browser
        .client
        .execute(
            "return [...document.querySelectorAll('#view-portal input')].filter(i => i.labels.length === 0).length + \
             [...document.querySelectorAll('#view-portal button')].filter(b => !(b.getAttribute('aria-label') || b.textContent.trim())).length;",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(unnamed, json!(0), "unlabelled inputs or nameless buttons");

    // With the keyboard only: focus the analytics consent button and press Enter.
    browser
        .client
        .execute("document.querySelector('#consent-analytics button').focus();", vec![])
        .await
        .unwrap();
    browser.wait("#consent-analytics button").await.send_keys("\u{E007}").await.unwrap();
    browser.wait_until("document.getElementById('consent-analytics').textContent.includes('Given')").await;
    let me = app.call(Method::GET, "/v1/me/consents", Some(&token), None, None).await;
    let analytics =
        me.body["consents"].as_array().unwrap().iter().find(|c| c["purpose"] == "analytics").cloned();
    assert_eq!(analytics.expect("recorded")["notice"], "analytics-v1");

    // Correct a field: the API's validation message, then a valid value.
    browser.click("#field-email button").await;
    let input = browser.wait("#edit-email").await;
    input.clear().await.unwrap();
    input.send_keys("not-an-address").await.unwrap();
    browser.click("#field-email form button[type=submit]").await;
    browser.wait_until("document.getElementById('edit-email-error').textContent.length > 0").await;
    let shown = browser.text("#edit-email-error").await;
    let api = app
        .call(
            Method::PATCH,
            "/v1/me",
            Some(&token),
            None,
            Some(&json!({"fields": {"email": "not-an-address"}})),
        )
        .await;
    assert_eq!(api.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(shown, api.body["message"].as_str().unwrap(), "the portal shows the API's own message");
    let input = browser.wait("#edit-email").await;
    input.clear().await.unwrap();
    input.send_keys("ada@lovelace.example").await.unwrap();
    browser.click("#field-email form button[type=submit]").await;
    browser
        .wait_until("document.querySelector('#field-email .value').textContent === 'ada@lovelace.example'")
        .await;
    let me = app.call(Method::GET, "/v1/me", Some(&token), None, None).await;
    assert_eq!(me.body["fields"]["email"], "ada@lovelace.example");

    // Withdraw the marketing consent: a disclosure for marketing is refused right after.
    browser.click("#consent-marketing button").await;
    browser
        .wait_until("document.getElementById('consent-marketing').textContent.includes('Withdrawn')")
        .await;
    let body = json!({"customer_id": id, "recipient": "letterbox-newsletter", "purpose": "marketing", "fields": ["email"]});
    let refused = app.call(Method::POST, "/v1/disclosures", Some(&app.merchant()), None, Some(&body)).await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN, "{}", refused.body);
    assert_eq!(refused.body["denied"][0]["reason"], "consent_withdrawn");

    // Verify the disclosure entry in the browser (WebCrypto: SHA-256, Ed25519).
    let renders = browser
        .client
        .execute("return document.getElementById('history-list').dataset.renders;", vec![])
        .await
        .unwrap();
    browser.click("#history-refresh").await;
    browser
        .wait_until(&format!("document.getElementById('history-list').dataset.renders !== {renders}"))
        .await;
    let seq = browser
        .client
        .execute(
            "return Array.from(document.querySelectorAll('#history-list li[data-action=disclosure]'))\
             .find(li => li.textContent.includes('Acme Shipping')).dataset.seq;",
            vec![],
        )
        .await
        .unwrap();
    let seq = seq.as_str().unwrap().to_owned();
    browser.click(&format!("#entry-{seq} button")).await;
    browser
        .wait_until(&format!("document.querySelector('#entry-{seq} .verdict').textContent.includes('erif')"))
        .await;
    let verdict = browser.text(&format!("#entry-{seq} .verdict")).await;
    let key = app.call(Method::GET, "/v1/audit/key", Some(&app.auditor()), None, None).await;
    let verifier_key = key.body["verifier_key"].as_str().unwrap();
    // `name+keyid+base64`: the name and key id are the first two parts (base64 may hold '+').
    let key_name = verifier_key.splitn(3, '+').take(2).collect::<Vec<_>>().join("+");
    assert!(verdict.starts_with("✓ Verified in log of size "), "{verdict}");
    assert!(verdict.contains(&format!("signed by {key_name}")), "{verdict} / {verifier_key}");
    browser
        .client
        .execute(
            &format!("document.getElementById('entry-{seq}').scrollIntoView({{block: 'center'}})"),
            vec![],
        )
        .await
        .unwrap();
    browser.screenshot("portal-verified").await;

    // Download the export.
    browser.click("#download-button").await;
    let file = browser.downloads.path().join("my-data.json");
    for _ in 0..100 {
        if file.exists() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let export: Value = serde_json::from_slice(&std::fs::read(&file).expect("export downloaded")).unwrap();
    assert_eq!(export["customer_id"], id.as_str());
    assert_eq!(export["fields"]["name"], "Ada Lovelace");

    // Erase, after typing the confirmation; then the signed-out page.
    assert!(!browser.wait("#erase-button").await.is_enabled().await.unwrap(), "disabled until confirmed");
    browser.wait("#erase-confirm").await.send_keys("erase my data").await.unwrap();
    browser.click("#erase-button").await;
    browser.wait_until("!document.getElementById('view-erased').hidden").await;
    browser.screenshot("portal-erased").await;
    let gone = app.call(Method::GET, "/v1/me", Some(&token), None, None).await;
    assert_eq!(gone.status, StatusCode::NOT_FOUND);
    let page = browser.text("body").await;
    assert!(!page.contains("Ada Lovelace"), "nothing of the customer stays on the page");

    assert_same_origin(&browser, &app).await;
    browser.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_altered_in_storage_does_not_verify_in_the_browser() {
    if crate::helpers::sled_only("edits the audit files in the data directory") {
        return;
    }
    let mut app = spawn_app().await;
    let id = customer_with_history(&app).await;
    let events = app.audit_events().await;
    let target = events
        .iter()
        .find(|e| e["action"] == "disclosure" && e["recipient"] == "acme-shipping")
        .expect("the disclosure event");
    let seq = target["seq"].as_u64().unwrap();
    app.shutdown().await;
    {
        // Same length, so the edit fits in place: the carrier "received" the phone instead.
        let files = RawAuditFiles::of(&app);
        let (header, text) = split_stored(&files.get(seq));
        let forged = text.replace(r#""name","shipping_address""#, r#""name","shipping_addresX""#);
        assert_ne!(forged, text);
        files.overwrite(seq, &[header, forged.into_bytes()].concat());
    }
    let app = app.restart().await;
    let Some(browser) = Browser::open("tampered entry", 800, 900).await else { return };
    browser.client.goto(&portal_link(&app, &TestApp::customer_token(&id))).await.unwrap();
    browser.wait(&format!("#entry-{seq} button")).await;
    browser.click(&format!("#entry-{seq} button")).await;
    browser
        .wait_until(&format!("document.querySelector('#entry-{seq} .verdict').textContent.includes('erif')"))
        .await;
    let verdict = browser.text(&format!("#entry-{seq} .verdict")).await;
    assert!(verdict.starts_with("✗ Does not verify"), "{verdict}");

    // An untouched entry of the same customer still verifies against the same checkpoint.
    let other = events
        .iter()
        .find(|e| e["action"] == "disclosure" && e["recipient"] == "letterbox-newsletter")
        .unwrap()["seq"]
        .as_u64()
        .unwrap();
    browser.click(&format!("#entry-{other} button")).await;
    browser
        .wait_until(&format!(
            "document.querySelector('#entry-{other} .verdict').textContent.includes('erif')"
        ))
        .await;
    assert!(browser.text(&format!("#entry-{other} .verdict")).await.starts_with("✓ Verified"));
    browser
        .client
        .execute(
            &format!("document.getElementById('entry-{seq}').scrollIntoView({{block: 'center'}})"),
            vec![],
        )
        .await
        .unwrap();
    browser.screenshot("portal-tampered").await;
    browser.close().await;
}

/// A receipt proves only the copy of the event it carries: the page must compare that copy with
/// the entry it lists. Here the list is loaded while the stored event is altered, then the store
/// is put back (the server restarted on the same address, the page kept open): the receipt is
/// genuine and its proof verifies, but it is not the entry the page shows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listed_entry_that_differs_from_the_receipts_event_does_not_verify() {
    if crate::helpers::sled_only("edits the audit files in the data directory") {
        return;
    }
    let mut app = spawn_app().await;
    let id = customer_with_history(&app).await;
    let events = app.audit_events().await;
    let seq_of = |recipient: &str| {
        events.iter().find(|e| e["action"] == "disclosure" && e["recipient"] == recipient).unwrap()["seq"]
            .as_u64()
            .unwrap()
    };
    let (seq, other) = (seq_of("acme-shipping"), seq_of("letterbox-newsletter"));
    // Restarts keep the address, so the open page talks to the restarted server.
    app.settings.listen = app.base.trim_start_matches("http://").to_owned();
    app.shutdown().await;
    let files = RawAuditFiles::of(&app);
    let original = files.get(seq);
    let (header, text) = split_stored(&original);
    let forged = text.replace(r#""name","shipping_address""#, r#""name","shipping_addresX""#);
    assert_ne!(forged, text);
    files.overwrite(seq, &[header, forged.into_bytes()].concat());
    let mut app = app.restart().await;

    let Some(browser) = Browser::open("listed entry differs", 800, 900).await else { return };
    browser.client.goto(&portal_link(&app, &TestApp::customer_token(&id))).await.unwrap();
    browser.wait(&format!("#entry-{seq} button")).await;

    app.shutdown().await;
    RawAuditFiles::of(&app).overwrite(seq, &original);
    let app = app.restart().await;
    // The receipt the page will get is the genuine one: it verifies on its own.
    let res = app
        .call(
            Method::GET,
            &format!("/v1/me/events/{seq}/receipt"),
            Some(&TestApp::customer_token(&id)),
            None,
            None,
        )
        .await;
    assert_eq!(res.status, StatusCode::OK, "{}", res.body);
    assert_eq!(res.body["event"], events.iter().find(|e| e["seq"] == seq).unwrap().clone());

    browser.click(&format!("#entry-{seq} button")).await;
    browser
        .wait_until(&format!("document.querySelector('#entry-{seq} .verdict').textContent.includes('erif')"))
        .await;
    let verdict = browser.text(&format!("#entry-{seq} .verdict")).await;
    assert!(verdict.starts_with("✗ Does not verify: the entry listed here differs"), "{verdict}");
    // An entry listed as stored still verifies against the restarted server.
    browser.click(&format!("#entry-{other} button")).await;
    browser
        .wait_until(&format!(
            "document.querySelector('#entry-{other} .verdict').textContent.includes('erif')"
        ))
        .await;
    let verdict = browser.text(&format!("#entry-{other} .verdict")).await;
    assert!(verdict.starts_with("✓ Verified"), "{verdict}");
    browser.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_link_asks_for_a_new_one_and_sign_out_forgets_the_token() {
    let app = spawn_app().await;
    let id = app.create_customer(json!({"name": "Grace Hopper"})).await;
    let Some(browser) = Browser::open("expired link and sign-out", 390, 844).await else { return };

    let expired = sign_hs256(json!({"sub": id, "role": "customer", "exp": crate::helpers::now() - 60}));
    browser.client.goto(&portal_link(&app, &expired)).await.unwrap();
    browser.wait_until("!document.getElementById('view-expired').hidden").await;
    assert!(browser.text("#view-expired").await.contains("Ask the shop for a new link"));
    browser.screenshot("portal-expired").await;

    // A token the server refuses (signed with another key) shows the same page.
    let forged = {
        let mut parts: Vec<String> = TestApp::customer_token(&id).split('.').map(str::to_owned).collect();
        parts[2] = "AAAA".into();
        parts.join(".")
    };
    browser.client.goto(&format!("{}/transparency", app.base)).await.unwrap();
    browser.client.goto(&portal_link(&app, &forged)).await.unwrap();
    browser.wait_until("!document.getElementById('view-expired').hidden").await;

    // A phone-sized window: sign in, then sign out.
    browser.client.goto(&format!("{}/transparency", app.base)).await.unwrap();
    browser.client.goto(&portal_link(&app, &TestApp::customer_token(&id))).await.unwrap();
    browser.wait_until("!document.getElementById('view-portal').hidden").await;
    assert_eq!(browser.text("#field-name .value").await, "Grace Hopper");
    browser.screenshot("portal-phone").await;
    browser.click("#sign-out").await;
    browser.wait_until("!document.getElementById('view-signed-out').hidden").await;
    assert!(!browser.text("body").await.contains("Grace Hopper"));
    // Going back finds no token: the fragment was never kept in the history.
    browser.client.back().await.unwrap();
    let url = browser.client.current_url().await.unwrap();
    assert_eq!(url.fragment(), None, "{url}");
    assert_same_origin(&browser, &app).await;
    browser.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_transparency_page_shows_the_report_from_this_origin_only() {
    let app = spawn_app().await;
    crate::transparency::closed_scenario(&app).await;
    let Some(browser) = Browser::open("transparency page", 900, 1300).await else { return };
    browser.client.goto(&format!("{}/transparency", app.base)).await.unwrap();
    browser.wait_until("document.getElementById('note').textContent.length > 0").await;
    let page = browser.text("main").await;
    assert!(page.contains("fewer than 5"), "{page}");
    assert!(page.contains("acme-shipping"), "{page}");
    // Every month lists the full grid; the delivered row holds the one count of 5 or more.
    let rows = browser.text("#months tbody").await;
    let acme =
        rows.lines().find(|r| r.contains("acme-shipping") && r.contains("allowed") && r.ends_with('6'));
    assert!(acme.is_some(), "{rows}");
    assert!(page.contains("Art. 6(1)(b)"), "{page}");
    assert!(page.contains("March 2031"), "{page}");
    assert!(browser.text("#in-progress").await.starts_with("April 2031: in progress"), "{page}");
    let note = browser.text("#note").await;
    assert!(note.contains('\u{2014}'), "the signed note: {note}");
    browser.screenshot("transparency").await;
    assert_same_origin(&browser, &app).await;
    browser.close().await;
}

// ---- Over plain HTTP ------------------------------------------------------------------------

#[tokio::test]
async fn pages_carry_a_strict_content_security_policy_and_unknown_assets_are_404() {
    let app = spawn_app().await;
    for path in [
        "/portal",
        "/portal/portal.js",
        "/portal/verify.js",
        "/portal/words.js",
        "/portal/style.css",
        "/transparency",
        "/transparency/transparency.js",
    ] {
        let res = app.client.get(format!("{}{path}", app.base)).send().await.unwrap();
        assert_eq!(res.status(), StatusCode::OK, "{path}");
        let csp = res.headers()["content-security-policy"].to_str().unwrap();
        assert!(csp.starts_with("default-src 'self'"), "{path}: {csp}");
        assert!(csp.contains("frame-ancestors 'none'"), "{path}: {csp}");
        assert_eq!(res.headers()["referrer-policy"], "no-referrer");
        assert_eq!(res.headers()["x-content-type-options"], "nosniff");
        let body = res.text().await.unwrap();
        assert!(!body.contains("http://") && !body.contains("https://"), "{path} names another origin");
    }
    for path in ["/portal/nope.js", "/portal/..%2Fsrc%2Fmain.rs", "/transparency/portal.js"] {
        let res = app.call(Method::GET, path, None, None, None).await;
        assert_eq!(res.status, StatusCode::NOT_FOUND, "{path}");
    }
}

#[tokio::test]
async fn a_customer_gets_receipts_for_their_own_events_only() {
    let app = spawn_app().await;
    let id = customer_with_history(&app).await;
    let other = app.create_customer(json!({"name": "Other"})).await;
    let token = TestApp::customer_token(&id);

    let res = app.call(Method::GET, "/v1/me/events?limit=2", Some(&token), None, None).await;
    assert_eq!(res.status, StatusCode::OK, "{}", res.body);
    let first = res.body["events"].as_array().unwrap().clone();
    assert_eq!(first.len(), 2);
    let after = res.body["next_after"].as_u64().expect("more to come");
    let res = app
        .call(Method::GET, &format!("/v1/me/events?after={after}&limit=1000"), Some(&token), None, None)
        .await;
    let mine: Vec<Value> =
        first.into_iter().chain(res.body["events"].as_array().unwrap().iter().cloned()).collect();
    assert!(mine.iter().all(|e| e["customer_id"] == id.as_str()));
    let all = app.audit_events().await;
    let expected: Vec<&Value> = all.iter().filter(|e| e["customer_id"] == id.as_str()).collect();
    assert!(mine.len() >= 5 && expected.len() >= mine.len());
    for e in &mine {
        assert_eq!(Some(e), all.iter().find(|a| a["seq"] == e["seq"]), "events are served exactly as stored");
    }

    // The receipt verifies with the library's own verifier.
    let seq = mine.iter().find(|e| e["action"] == "disclosure").unwrap()["seq"].as_u64().unwrap();
    let res = app.call(Method::GET, &format!("/v1/me/events/{seq}/receipt"), Some(&token), None, None).await;
    assert_eq!(res.status, StatusCode::OK, "{}", res.body);
    let r = res.body;
    let key =
        custodia::audit::checkpoint::VerifierKey::parse(r["key"]["verifier_key"].as_str().unwrap()).unwrap();
    let cp = key.open_checkpoint(r["checkpoint"]["note"].as_str().unwrap()).unwrap();
    assert_eq!(cp.size, r["inclusion"]["tree_size"].as_u64().unwrap());
    let leaf = custodia::audit::merkle::leaf_hash(&custodia::audit::jcs::canonical(&r["event"]));
    let proof: Vec<Vec<u8>> = r["inclusion"]["proof"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| STANDARD.decode(h.as_str().unwrap()).unwrap())
        .collect();
    custodia::audit::proof::verify_inclusion(seq, cp.size, &leaf, &proof, &cp.root)
        .expect("the proof verifies");
    assert_eq!(r["event"]["seq"], seq);

    // Receipts reuse the newest signed checkpoint when it covers the event: a call does not get
    // a checkpoint signed for it (one covering its own audit.read). The background checkpointer
    // signs once a second while the log grows, so at most one of five quick calls may see one.
    let res = app.call(Method::GET, "/v1/audit/checkpoint", Some(&app.auditor()), None, None).await;
    assert_eq!(res.status, StatusCode::OK, "{}", res.body);
    let mut calls = Vec::new();
    for _ in 0..5 {
        let res =
            app.call(Method::GET, &format!("/v1/me/events/{seq}/receipt"), Some(&token), None, None).await;
        assert_eq!(res.status, StatusCode::OK, "{}", res.body);
        let request_id = res.headers["x-request-id"].to_str().unwrap().to_owned();
        calls.push((request_id, res.body["inclusion"]["tree_size"].as_u64().unwrap()));
    }
    let logged = app.audit_events().await;
    let covering_own_read = calls
        .iter()
        .filter(|(request_id, size)| {
            let read =
                logged.iter().find(|e| e["request_id"] == request_id.as_str()).expect("the call's event");
            *size > read["seq"].as_u64().unwrap()
        })
        .count();
    assert!(covering_own_read <= 1, "{covering_own_read} of 5 receipts were signed for their own call");

    // Another customer's event, a seq beyond the log and a malformed seq.
    let theirs = all.iter().find(|e| e["customer_id"] == other.as_str()).unwrap()["seq"].as_u64().unwrap();
    for path in [format!("/v1/me/events/{theirs}/receipt"), "/v1/me/events/999999/receipt".to_owned()] {
        let res = app.call(Method::GET, &path, Some(&token), None, None).await;
        assert_eq!(res.status, StatusCode::NOT_FOUND, "{path}: {}", res.body);
    }
    let res = app.call(Method::GET, "/v1/me/events/abc/receipt", Some(&token), None, None).await;
    assert_eq!(res.status, StatusCode::BAD_REQUEST);
    let res = app.call(Method::GET, "/v1/me/events?limit=0", Some(&token), None, None).await;
    assert_eq!(res.status, StatusCode::BAD_REQUEST);
    let res = app.call(Method::GET, "/v1/me/events?customer_id=x", Some(&token), None, None).await;
    assert_eq!(res.status, StatusCode::BAD_REQUEST);
    // Only customers: a merchant token is refused.
    let res = app
        .call(Method::GET, &format!("/v1/me/events/{seq}/receipt"), Some(&app.merchant()), None, None)
        .await;
    assert_eq!(res.status, StatusCode::FORBIDDEN);

    // Each call is audited as an audit.read about the caller; the refused one as failed.
    let after_calls = app.audit_events().await;
    let reads: Vec<&Value> = after_calls
        .iter()
        .filter(|e| {
            e["action"] == "audit.read" && e["actor"]["role"] == "customer" && e["customer_id"] == id.as_str()
        })
        .collect();
    assert!(reads.iter().any(|e| e["outcome"] == "allowed"));
    assert!(reads.iter().any(|e| e["outcome"] == "failed" && e["reason"] == json!(["not_found"])));
}
