//! Durability: a server killed with SIGKILL under concurrent creates loses no acknowledged
//! create and no audit event of one.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use reqwest::{Method, StatusCode};

use crate::helpers::{ServerProcess, TestApp, test_settings, write_until_stopped};

/// How many kill cycles to run: `CUSTODIA_CRASH_CYCLES` (default 1; e.g. 100 for a long run).
fn crash_cycles() -> usize {
    std::env::var("CUSTODIA_CRASH_CYCLES").ok().and_then(|v| v.parse().ok()).unwrap_or(1)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_creates_survive_sigkill_with_their_audit_events() {
    let data_dir = tempfile::tempdir().unwrap();
    let cycles = crash_cycles();
    let mut acknowledged = Vec::new();
    for cycle in 0..cycles {
        let mut server = ServerProcess::start(data_dir.path(), &[]);
        let base = server.base.clone();
        let writers =
            tokio::spawn(async move { write_until_stopped(&base, 32, Arc::new(Mutex::new(false))).await });
        // Kill at a different moment each cycle (mid-group, mid-flush, just after start).
        let wait = if cycles == 1 { 1500 } else { 300 + (cycle as u64 * 137) % 1200 };
        tokio::time::sleep(Duration::from_millis(wait)).await;
        server.kill();
        // Writers stop at their first failed request, which the kill guarantees.
        acknowledged.extend(writers.await.unwrap());
    }
    assert!(acknowledged.len() > 50 * cycles.min(2), "only {} creates before the kills", acknowledged.len());
    if cycles > 1 {
        eprintln!("{cycles} kill cycles, {} acknowledged creates", acknowledged.len());
    }

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
