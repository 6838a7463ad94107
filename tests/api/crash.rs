//! Durability: a server killed with SIGKILL under concurrent creates loses no acknowledged
//! create and no audit event of one.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::helpers::{MASTER_KEY, ServerProcess, TestApp, test_settings, write_until_stopped};

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
        let this_cycle = writers.await.unwrap();
        // A cycle that acknowledged nothing tested nothing (a writer stops at its first refusal).
        assert!(!this_cycle.is_empty(), "cycle {cycle} acknowledged no create before the kill");
        acknowledged.extend(this_cycle);
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

/// What the churn of one server life acknowledged.
#[derive(Default)]
struct Ledger {
    /// Acknowledged creates not (knowingly) erased: id → email.
    live: std::collections::HashMap<String, String>,
    /// Acknowledged erasures.
    erased: std::collections::HashSet<String>,
    /// Erasures sent whose answer was lost to the kill: erased or not, never half.
    uncertain: std::collections::HashMap<String, String>,
}

/// Creates, reads and erases from `writers` tasks until a request fails (the kill).
async fn churn(base: &str, writers: usize, ledger: Arc<Mutex<Ledger>>) {
    let client = reqwest::Client::new();
    let token = TestApp::token_for_tests();
    let mut tasks = Vec::new();
    for w in 0..writers {
        let (client, base, token, ledger) =
            (client.clone(), base.to_owned(), token.clone(), Arc::clone(&ledger));
        tasks.push(tokio::spawn(async move {
            for i in 0.. {
                let email = format!("churn{w}-{i}-{}@epochs.test", crate::helpers::now());
                let res = client
                    .post(format!("{base}/v1/customers"))
                    .bearer_auth(&token)
                    .json(&json!({"fields": {"email": email, "name": "Churning Customer"}}))
                    .send()
                    .await;
                let Ok(res) = res else { return };
                if res.status() != StatusCode::CREATED {
                    return;
                }
                let Ok(body) = res.json::<serde_json::Value>().await else { return };
                let id = body["id"].as_str().unwrap().to_owned();
                ledger.lock().unwrap().live.insert(id.clone(), email);
                // Every third round erases one live customer, every round reads one.
                let victim = {
                    let ledger = ledger.lock().unwrap();
                    ledger.live.keys().nth(i % ledger.live.len().max(1)).cloned()
                };
                let Some(victim) = victim else { continue };
                if i % 3 == 0 {
                    let email = ledger.lock().unwrap().live.remove(&victim);
                    let Some(email) = email else { continue };
                    ledger.lock().unwrap().uncertain.insert(victim.clone(), email);
                    let res = client
                        .delete(format!("{base}/v1/customers/{victim}"))
                        .bearer_auth(&token)
                        .send()
                        .await;
                    match res {
                        Ok(r) if r.status() == StatusCode::OK => {
                            let mut ledger = ledger.lock().unwrap();
                            ledger.uncertain.remove(&victim);
                            ledger.erased.insert(victim);
                        }
                        // Another writer erased it first (also acknowledged): gone either way.
                        Ok(r) if r.status() == StatusCode::NOT_FOUND => {
                            ledger.lock().unwrap().uncertain.remove(&victim);
                        }
                        _ => return,
                    }
                } else {
                    let res = client
                        .get(format!("{base}/v1/customers/{victim}"))
                        .bearer_auth(&token)
                        .header("X-Purpose", "order_fulfillment")
                        .send()
                        .await;
                    match res {
                        Ok(r) if r.status() == StatusCode::OK || r.status() == StatusCode::NOT_FOUND => {}
                        Ok(r) => panic!("reading a live customer answered {}", r.status()),
                        Err(_) => return,
                    }
                }
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
}

/// The `key.rotate` events of a running server.
async fn key_events(base: &str) -> Vec<serde_json::Value> {
    let res = reqwest::Client::new()
        .get(format!("{base}/v1/audit/events?action=key.rotate&limit=1000"))
        .bearer_auth(TestApp::auditor_token())
        .send()
        .await
        .unwrap();
    let body: serde_json::Value = res.json().await.unwrap();
    body["events"].as_array().unwrap().clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn master_rotation_epoch_rotation_and_erasures_cut_by_sigkill_leave_every_live_customer_readable() {
    const NEW_MASTER_KEY: &str = "ICEiIyQlJicoKSorLC0uLzAxMjM0NTY3ODk6Ozw9Pj8=";
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let epochs = dir.path().join("epoch-keys");
    let epochs_env = epochs.display().to_string();
    let fast = [
        ("CUSTODIA_KEY_EPOCH_FILE", epochs_env.as_str()),
        ("CUSTODIA_KEY_EPOCH_SECONDS", "1"),
        ("CUSTODIA_REQUEST_TIMEOUT_MS", "1000"),
    ];
    let ledger = Arc::new(Mutex::new(Ledger::default()));

    // 1. Under the old master key: customers, erasures, epochs turning over.
    let mut server = ServerProcess::start(&data, &fast);
    let run = tokio::spawn({
        let (base, ledger) = (server.base.clone(), Arc::clone(&ledger));
        async move { churn(&base, 8, ledger).await }
    });
    tokio::time::sleep(Duration::from_millis(2500)).await;
    server.kill();
    run.await.unwrap();

    // 2. The new master key (the old one kept as previous): its rotation, epoch rotation and
    //    erasures interleave under load, each life cut by kill -9 at a different moment.
    let rotating = [
        fast[0],
        fast[1],
        fast[2],
        ("CUSTODIA_MASTER_KEY", NEW_MASTER_KEY),
        ("CUSTODIA_PREVIOUS_MASTER_KEYS", MASTER_KEY),
        ("CUSTODIA_ROTATION_PAUSE_MS", "50"),
    ];
    for wait in [700, 1900, 1300] {
        let mut server = ServerProcess::start(&data, &rotating);
        let run = tokio::spawn({
            let (base, ledger) = (server.base.clone(), Arc::clone(&ledger));
            async move { churn(&base, 8, ledger).await }
        });
        tokio::time::sleep(Duration::from_millis(wait)).await;
        server.kill();
        run.await.unwrap();
    }

    // 3. A last start finishes the master rotation and an epoch destruction after it.
    let server = ServerProcess::start(&data, &rotating);
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let events = key_events(&server.base).await;
        let completed = events.iter().rposition(|e| e["reason"][0] == "completed");
        let destroyed_after =
            completed.is_some_and(|c| events[c..].iter().any(|e| e["reason"][0] == "epoch_destroyed"));
        // Epochs turn over every second: wait (within the deadline) until at least two were
        // destroyed, rather than race the last start's first destruction.
        let destroyed = events.iter().filter(|e| e["reason"][0] == "epoch_destroyed").count();
        if destroyed_after && destroyed >= 2 {
            let created = events.iter().filter(|e| e["reason"][0] == "epoch_created").count();
            eprintln!("key.rotate events: {} epochs created, {destroyed} destroyed", created);
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "rotation, an epoch destruction after it, or two epoch turnovers did not happen: {events:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    drop(server);

    // 4. Only the new master key, the epoch-key file: every live customer reads back with its
    //    value; every erased one is gone.
    let mut settings = test_settings(&data);
    settings.master_key = Some(secrecy::SecretString::from(NEW_MASTER_KEY));
    settings.key_epoch_file = Some(epochs.clone());
    let mut app = TestApp::adopt_path(settings).await;
    let ledger = std::mem::take(&mut *ledger.lock().unwrap());
    assert!(
        ledger.live.len() > 100 && ledger.erased.len() > 30,
        "too little load: {} live, {} erased",
        ledger.live.len(),
        ledger.erased.len()
    );
    eprintln!(
        "{} live, {} erased, {} erasures cut by a kill",
        ledger.live.len(),
        ledger.erased.len(),
        ledger.uncertain.len()
    );
    for (id, email) in &ledger.live {
        let res = app.read_customer(id, "order_fulfillment").await;
        assert_eq!(res.status, StatusCode::OK, "live customer {id} unreadable: {}", res.body);
        assert_eq!(res.body["fields"]["email"], email.as_str());
    }
    for id in &ledger.erased {
        assert_eq!(
            app.read_customer(id, "order_fulfillment").await.status,
            StatusCode::NOT_FOUND,
            "{id} came back"
        );
    }
    for (id, email) in &ledger.uncertain {
        let res = app.read_customer(id, "order_fulfillment").await;
        match res.status {
            StatusCode::OK => assert_eq!(res.body["fields"]["email"], email.as_str()),
            status => assert_eq!(status, StatusCode::NOT_FOUND, "{id}: {}", res.body),
        }
    }
    // The directory is this test's: the server's last flush must finish before it goes.
    app.shutdown().await;
}
