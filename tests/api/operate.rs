//! Operating the server: graceful shutdown, logs free of values, master key rotation.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{
    MASTER_KEY, ServerProcess, TestApp, contains, rewrap_as_legacy, stored_records, test_settings,
    write_until_stopped,
};

const NEW_MASTER_KEY: &str = "ICEiIyQlJicoKSorLC0uLzAxMjM0NTY3ODk6Ozw9Pj8=";

/// Creates `n` customers from `writers` concurrent tasks; returns (id, email) of each.
async fn create_many(base: &str, n: usize, writers: usize) -> Vec<(String, String)> {
    let client = reqwest::Client::new();
    let token = TestApp::token_for_tests();
    let mut tasks = Vec::new();
    for w in 0..writers {
        let (client, base, token) = (client.clone(), base.to_owned(), token.clone());
        tasks.push(tokio::spawn(async move {
            let mut out = Vec::new();
            for i in (w..n).step_by(writers) {
                let email = format!("c{i}@rotation.test");
                let res = client
                    .post(format!("{base}/v1/customers"))
                    .bearer_auth(&token)
                    .json(&json!({"fields": {"email": email}}))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(res.status(), StatusCode::CREATED);
                let body: Value = res.json().await.unwrap();
                out.push((body["id"].as_str().unwrap().to_owned(), email));
            }
            out
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_load_drains_and_loses_no_acknowledged_request() {
    let data_dir = tempfile::tempdir().unwrap();
    let mut server = ServerProcess::start(data_dir.path(), &[]);
    let stop = Arc::new(Mutex::new(false));
    let base = server.base.clone();
    let writer = tokio::spawn(async move { write_until_stopped(&base, 16, stop).await });
    tokio::time::sleep(Duration::from_millis(800)).await;
    let clean_exit = tokio::task::spawn_blocking(move || server.terminate()).await.unwrap();
    assert!(clean_exit, "SIGTERM must end the server with status 0");
    let acked = writer.await.unwrap();
    assert!(acked.len() > 20, "only {} creates before SIGTERM", acked.len());

    let settings = test_settings(data_dir.path());
    let app = TestApp::adopt(data_dir, settings).await;
    for (id, email) in &acked {
        let res = app.read_customer(id, "order_fulfillment").await;
        assert_eq!(res.status, StatusCode::OK, "acknowledged {id} lost");
        assert_eq!(res.body["fields"]["email"], email.as_str());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_log_of_a_full_scenario_holds_no_value_token_or_key() {
    let data_dir = tempfile::tempdir().unwrap();
    let log_path = data_dir.path().join("server.log");
    let log = log_path.to_str().unwrap().to_owned();
    let server = ServerProcess::start(
        &data_dir.path().join("data"),
        &[("CUSTODIA_TEST_LOG_FILE", &log), ("CUSTODIA_LOG_FORMAT", "json"), ("RUST_LOG", "debug")],
    );
    let base = server.base.clone();
    let client = reqwest::Client::new();
    let merchant = TestApp::token_for_tests();
    let values =
        ["Jane Logtest", "jane.logtest@example.com", "+4915199887766", "1985-02-03", "4111111111111111"];
    let send =
        |method: reqwest::Method, path: String, token: &str, purpose: Option<&str>, body: Option<Value>| {
            let mut req = client.request(method, format!("{base}{path}")).bearer_auth(token);
            if let Some(p) = purpose {
                req = req.header("X-Purpose", p);
            }
            if let Some(b) = body {
                req = req.json(&b);
            }
            req.send()
        };
    let res = send(
        reqwest::Method::POST,
        "/v1/customers".into(),
        &merchant,
        None,
        Some(json!({"fields": {
            "name": values[0], "email": values[1], "phone": values[2], "birth_date": values[3]
        }})),
    )
    .await
    .unwrap();
    let id = res.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_owned();
    let card = json!({"card": {"number": values[4], "exp_month": 12, "exp_year": 2031}});
    send(reqwest::Method::POST, format!("/v1/customers/{id}/payment-methods"), &merchant, None, Some(card))
        .await
        .unwrap();
    send(reqwest::Method::GET, format!("/v1/customers/{id}"), &merchant, Some("order_fulfillment"), None)
        .await
        .unwrap();
    send(
        reqwest::Method::GET,
        format!("/v1/customers?email={}", values[1]),
        &merchant,
        Some("order_fulfillment"),
        None,
    )
    .await
    .unwrap();
    let disclosure = json!({"customer_id": id, "recipient": "paystream-payments", "purpose": "payment_processing", "fields": ["payment_methods", "email"]});
    send(reqwest::Method::POST, "/v1/disclosures".into(), &merchant, None, Some(disclosure)).await.unwrap();
    send(
        reqwest::Method::POST,
        "/v1/customers".into(),
        &merchant,
        None,
        Some(json!({"fields": {"email": values[1]}})),
    )
    .await
    .unwrap();
    send(reqwest::Method::GET, "/v1/me/export".into(), &TestApp::customer_token(&id), None, None)
        .await
        .unwrap();
    send(
        reqwest::Method::GET,
        format!("/v1/customers/{id}"),
        "forged.token.value",
        Some("order_fulfillment"),
        None,
    )
    .await
    .unwrap();
    send(reqwest::Method::DELETE, "/v1/me".into(), &TestApp::customer_token(&id), None, None).await.unwrap();
    let mut server = server;
    assert!(server.terminate());

    let text = std::fs::read_to_string(&log_path).unwrap();
    let requests: Vec<Value> = text
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|l| l["fields"]["message"] == "answered")
        .collect();
    assert!(requests.len() >= 9, "one line per request expected, got {}:\n{text}", requests.len());
    for line in &requests {
        let span = &line["span"];
        assert!(
            span["method"].is_string() && span["route"].is_string() && span["request_id"].is_string(),
            "{line}"
        );
        assert!(line["fields"]["status"].is_number() && line["fields"]["latency_ms"].is_number(), "{line}");
        assert!(!span["route"].as_str().unwrap().contains(&id), "routes are templates, not paths");
    }
    let bytes = text.as_bytes();
    for value in values.iter().chain([&"jane.logtest", &"41111111"]) {
        assert!(!contains(bytes, value.as_bytes()), "log contains {value}");
    }
    assert!(
        !contains(bytes, merchant.as_bytes()) && !contains(bytes, &merchant.as_bytes()[..30]),
        "log contains a token"
    );
    assert!(!contains(bytes, crate::helpers::SECRET.as_bytes()), "log contains the JWT secret");
    assert!(!contains(bytes, MASTER_KEY.as_bytes()), "log contains the master key");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_cut_by_sigkill_resumes_and_the_old_key_can_then_be_removed() {
    if crate::helpers::sled_only("reads stored records from the sled backend's files") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    // 1. Customers under the old key.
    let mut server = ServerProcess::start(&data, &[]);
    let customers = create_many(&server.base, 500, 8).await;
    assert!(server.terminate());
    // Their data keys as a version before key epochs stored them: directly under the master
    // key, so the rotation has data keys to re-wrap (it brings them under the current epoch;
    // keys already under an epoch need only the epoch key re-wrapped).
    let ids: Vec<&str> = customers.iter().map(|(id, _)| id.as_str()).collect();
    rewrap_as_legacy(&data, &ids).await;

    // 2. New key configured, old one kept as previous; rotation pauses between pages of 200.
    let rotating = [
        ("CUSTODIA_MASTER_KEY", NEW_MASTER_KEY),
        ("CUSTODIA_PREVIOUS_MASTER_KEYS", MASTER_KEY),
        ("CUSTODIA_ROTATION_PAUSE_MS", "1000"),
    ];
    let mut server = ServerProcess::start(&data, &rotating);
    tokio::time::sleep(Duration::from_millis(200)).await;
    // Reads and writes go on during the rotation.
    let client = reqwest::Client::new();
    let token = TestApp::token_for_tests();
    let res = client
        .get(format!("{}/v1/customers/{}", server.base, customers[0].0))
        .bearer_auth(&token)
        .header("X-Purpose", "order_fulfillment")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let res = client
        .post(format!("{}/v1/customers", server.base))
        .bearer_auth(&token)
        .json(&json!({"fields": {"name": "During rotation"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::CREATED);
    server.kill();

    let keys: Vec<String> =
        stored_records(&data, &ids).await.iter().map(|r| r.data_key.master_key.to_string()).collect();
    let distinct: std::collections::BTreeSet<&String> = keys.iter().collect();
    assert_eq!(distinct.len(), 2, "the kill should land half-way: {distinct:?}");
    assert!(distinct.iter().any(|k| k.starts_with("mk-")) && distinct.iter().any(|k| k.starts_with("ek-")));

    // 3. Restart with both keys: the rotation resumes and completes.
    let resume = [("CUSTODIA_MASTER_KEY", NEW_MASTER_KEY), ("CUSTODIA_PREVIOUS_MASTER_KEYS", MASTER_KEY)];
    let mut server = ServerProcess::start(&data, &resume);
    let auditor = TestApp::auditor_token();
    let mut completed = false;
    for _ in 0..100 {
        let res = client
            .get(format!("{}/v1/audit/events?action=key.rotate&limit=1000", server.base))
            .bearer_auth(&auditor)
            .send()
            .await
            .unwrap();
        let body: Value = res.json().await.unwrap();
        if body["events"].as_array().unwrap().iter().any(|e| e["reason"][0] == "completed") {
            completed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(completed, "rotation did not complete");
    assert!(server.terminate());

    // 4. The old key removed: every customer still reads back.
    let mut settings = test_settings(&data);
    settings.master_key = Some(secrecy::SecretString::from(NEW_MASTER_KEY));
    let mut app = TestApp::adopt_path(settings.clone()).await;
    for (id, email) in &customers {
        let res = app.read_customer(id, "order_fulfillment").await;
        assert_eq!(res.status, StatusCode::OK, "{id} unreadable after rotation");
        assert_eq!(res.body["fields"]["email"], email.as_str());
    }
    let events = app.audit_events().await;
    let rotate: Vec<&Value> = events.iter().filter(|e| e["action"] == "key.rotate").collect();
    assert!(rotate.len() >= 3, "two starts and a completion: {rotate:?}");
    assert!(rotate.iter().all(|e| e["actor"]["role"] == "system"));
    let completions = |events: &[Value]| {
        events.iter().filter(|e| e["action"] == "key.rotate" && e["reason"][0] == "completed").count()
    };
    assert_eq!(completions(&events), 1);
    app.shutdown().await;

    // 5. A crash after the `completed` event and before the store recorded the rotation as done
    //    (the event is written first): the next start, with only the new key, runs the rotation
    //    again, finds nothing to move, and records a second completion.
    {
        let (_, store, _) = custodia::startup::open_vault(&settings).await.unwrap();
        store.put_meta("rotated_to", b"mk-before-the-crash".to_vec()).await.unwrap();
        store.close().await.unwrap();
    }
    let mut app = TestApp::adopt_path(settings).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while completions(&app.audit_events().await) < 2 {
        assert!(std::time::Instant::now() < deadline, "the interrupted rotation did not run again");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let res = app.read_customer(&customers[0].0, "order_fulfillment").await;
    assert_eq!(res.status, StatusCode::OK, "{}", res.body);
    // The directory is this test's: the server's last flush must finish before it goes.
    app.shutdown().await;
}

#[tokio::test]
async fn each_caller_has_a_request_budget_and_429_says_when_to_retry() {
    let app = crate::helpers::spawn_app_with(|s| {
        s.rate_limit_per_second = 1;
        s.rate_limit_burst = 3;
    })
    .await;
    let lookup = |token: String| {
        let app = &app;
        async move {
            app.call(
                reqwest::Method::GET,
                "/v1/customers?email=a%40b.test",
                Some(&token),
                Some("order_fulfillment"),
                None,
            )
            .await
        }
    };
    for _ in 0..3 {
        assert_eq!(lookup(app.merchant()).await.status, StatusCode::OK);
    }
    let res = lookup(app.merchant()).await;
    assert_eq!(res.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(res.body["error"], "rate_limited");
    let retry: u64 = res.headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=2).contains(&retry), "{retry}");
    // Another caller has its own budget.
    assert_eq!(lookup(app.token("merchant", "other-service")).await.status, StatusCode::OK);
    // A flood of bad tokens is cut off by peer address and does not flood the audit log.
    let mut statuses = Vec::new();
    for _ in 0..10 {
        statuses.push(lookup("forged.token.here".into()).await.status);
    }
    assert_eq!(statuses.iter().filter(|s| **s == StatusCode::UNAUTHORIZED).count(), 3);
    assert_eq!(statuses.iter().filter(|s| **s == StatusCode::TOO_MANY_REQUESTS).count(), 7);
    let events = crate::helpers::TestApp::audit_events(&app).await;
    assert_eq!(events.iter().filter(|e| e["action"] == "auth.denied").count(), 3);
}
