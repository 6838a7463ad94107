//! Durability: a server killed with SIGKILL under concurrent creates loses no acknowledged
//! create and no audit event of one.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::helpers::{ServerProcess, TestApp, test_settings};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_creates_survive_sigkill_with_their_audit_events() {
    let data_dir = tempfile::tempdir().unwrap();
    let mut server = ServerProcess::start(data_dir.path(), &[]);
    let probe = TestApp::token_for_tests();
    let client = reqwest::Client::new();
    let acknowledged = Arc::new(Mutex::new(Vec::<(String, String)>::new()));

    let mut writers = Vec::new();
    for w in 0..32 {
        let (client, base, token, acked) =
            (client.clone(), server.base.clone(), probe.clone(), Arc::clone(&acknowledged));
        writers.push(tokio::spawn(async move {
            for i in 0.. {
                let email = format!("writer{w}-n{i}@crash.test");
                let res = client
                    .post(format!("{base}/v1/customers"))
                    .bearer_auth(&token)
                    .json(&json!({"fields": {"email": email, "name": format!("Writer {w} {i}")}}))
                    .send()
                    .await;
                match res {
                    Ok(r) if r.status() == StatusCode::CREATED => {
                        let body: serde_json::Value = r.json().await.unwrap_or_default();
                        if let Some(id) = body["id"].as_str() {
                            acked.lock().unwrap().push((id.to_owned(), email));
                        }
                    }
                    _ => return,
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    server.child.kill().expect("SIGKILL");
    server.child.wait().unwrap();
    for w in writers {
        let _ = w.await;
    }
    let acknowledged = acknowledged.lock().unwrap().clone();
    assert!(acknowledged.len() > 50, "only {} creates before the kill", acknowledged.len());

    // Restart in-process over the same directory and check every acknowledged create.
    let settings = test_settings(data_dir.path());
    let app = TestApp::adopt(data_dir, settings).await;
    for (id, email) in &acknowledged {
        let res = app.read_customer(id, "order_fulfillment").await;
        assert_eq!(res.status, StatusCode::OK, "acknowledged customer {id} lost");
        assert_eq!(res.body["fields"]["email"], email.as_str());
    }
    let events = app.audit_events().await;
    let created: std::collections::HashSet<&str> = events
        .iter()
        .filter(|e| e["action"] == "customer.create" && e["outcome"] == "allowed")
        .filter_map(|e| e["customer_id"].as_str())
        .collect();
    for (id, _) in &acknowledged {
        assert!(created.contains(id.as_str()), "create of {id} has no audit event");
    }
    for (i, e) in events.iter().enumerate() {
        assert_eq!(e["seq"], i as u64, "audit log has a gap");
    }
    let res = app.call(Method::GET, "/healthz", None, None, None).await;
    assert_eq!(res.status, StatusCode::OK);
}
