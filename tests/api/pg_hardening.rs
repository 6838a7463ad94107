//! The PostgreSQL backend under the attacks of the review of issue 14: a source store altered
//! before `store copy`, a destination that is not empty, a config file with a syntax error
//! beside a secret, a frozen sequencer, a row lock held for ever. Needs
//! `CUSTODIA_TEST_DATABASE_URL` for the PostgreSQL parts (skipped without it, required by
//! `.ci/run`).

use std::path::Path;

use serde_json::json;

use std::time::Duration;

use reqwest::StatusCode;

use crate::helpers::{MASTER_KEY, ServerProcess, TestApp, run_custodia};
use crate::pg::Database;

/// A stopped sled server's data directory holding one customer and a signed checkpoint.
async fn sled_source() -> TestApp {
    let mut sled = crate::helpers::spawn_app_with(|s| {
        s.store = custodia::config::StoreKind::Sled;
        s.database_url = None;
    })
    .await;
    sled.create_customer(json!({"name": "Copied", "email": "copied@copy.test"})).await;
    sled.shutdown().await;
    sled
}

async fn copy(data_dir: &Path, url: &str) -> (bool, String, String) {
    let dir = data_dir.to_str().unwrap();
    run_custodia(
        &["store", "copy", "--from-dir", dir],
        &[("CUSTODIA_DATABASE_URL", url), ("CUSTODIA_MASTER_KEY", MASTER_KEY)],
    )
    .await
}

#[tokio::test]
async fn store_copy_refuses_a_source_whose_newest_checkpoint_signature_does_not_verify() {
    let Some(db) = Database::create() else { return };
    let sled = sled_source().await;
    let dir = sled.data_dir.path();
    // The note's text (and so its root) stays: only the signature is broken, which the root
    // check alone cannot see.
    let (size, note) = crate::helpers::latest_stored_checkpoint(dir);
    let text = String::from_utf8(note.clone()).unwrap();
    let (body, signature) = text.trim_end().rsplit_once(' ').unwrap();
    let mut broken: Vec<char> = signature.chars().collect();
    let i = broken.len() / 2;
    broken[i] = if broken[i] == 'A' { 'B' } else { 'A' };
    let altered = format!("{body} {}\n", broken.into_iter().collect::<String>());
    assert_ne!(altered, text);
    crate::helpers::replace_stored_checkpoint(dir, size, altered.into_bytes());
    let (ok, stdout, stderr) = copy(dir, &db.url).await;
    assert!(!ok, "an altered source was copied: {stdout}");
    assert!(stderr.contains("does not verify under its log's key"), "{stderr}");
    // Refused before anything was written.
    assert_eq!(db.number("SELECT count(*) FROM audit_events"), Some(0));
    assert_eq!(db.number("SELECT count(*) FROM meta"), Some(0));

    // The genuine note copies.
    crate::helpers::replace_stored_checkpoint(dir, size, note);
    let (ok, stdout, stderr) = copy(dir, &db.url).await;
    assert!(ok && stdout.contains("matches the newest signed checkpoint"), "{stdout}{stderr}");

    // Without the master key the signature cannot be checked: refused, nothing copied.
    let Some(other) = Database::create() else { return };
    let (ok, _, stderr) = run_custodia(
        &["store", "copy", "--from-dir", dir.to_str().unwrap()],
        &[("CUSTODIA_DATABASE_URL", &other.url)],
    )
    .await;
    assert!(!ok && stderr.contains("no master key"), "{stderr}");
}

#[tokio::test]
async fn store_copy_refuses_a_destination_holding_only_a_stray_row() {
    let Some(db) = Database::create() else { return };
    let sled = sled_source().await;
    let (ok, _, stderr) = run_custodia(
        &["db", "migrate"],
        &[("CUSTODIA_STORE", "postgres"), ("CUSTODIA_DATABASE_URL", &db.url)],
    )
    .await;
    assert!(ok, "{stderr}");
    let stray = [
        "INSERT INTO meta (name, value) VALUES ('stray', '\\x00')",
        "INSERT INTO checkpoints (size, note) VALUES (7, '\\x00')",
        "INSERT INTO pending_events (write_id, pos, prefix, time) VALUES (1, 0, '\\x00', 't')",
    ];
    for (i, insert) in stray.iter().enumerate() {
        db.number(insert);
        let (ok, stdout, stderr) = copy(sled.data_dir.path(), &db.url).await;
        assert!(!ok && stderr.contains("not empty"), "stray row {i} was not seen: {stdout}{stderr}");
        assert_eq!(db.number("SELECT count(*) FROM customers"), Some(0));
        db.number("DELETE FROM meta; DELETE FROM checkpoints; DELETE FROM pending_events");
    }
}

#[tokio::test]
async fn a_config_file_with_a_syntax_error_beside_a_secret_never_prints_the_secret() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("custodia.toml");
    let cases = [
        "database_url = \"postgres://custodia:hunter2@db.internal/custodia?sslmode=require\n".to_owned(),
        "jwt_hs256_secret = \"hunter2hunter2hunter2hunter2hunter2\"\nlisten = = 1\n".to_owned(),
        "master_key = [\"hunter2\"]\n".to_owned(),
        "master_key_pkcs11_pin = hunter2\n".to_owned(),
    ];
    for text in cases {
        std::fs::write(&file, &text).unwrap();
        let config = file.to_str().unwrap();
        for args in [&["db", "migrate", "--config", config][..], &["serve", "--config", config][..]] {
            let (ok, stdout, stderr) = run_custodia(args, &[("CUSTODIA_STORE", "postgres")]).await;
            assert!(!ok, "{args:?} accepted {text:?}");
            assert!(stderr.contains("line "), "{stderr}");
            assert!(!stdout.contains("hunter2") && !stderr.contains("hunter2"), "{text:?}: {stdout}{stderr}");
        }
    }
}

/// `custodia serve` on `db` over `data_dir`, with its own epoch-key file `data_dir.epoch-keys`.
fn node(data_dir: &Path, db: &Database) -> ServerProcess {
    let epochs = data_dir.with_extension("epoch-keys");
    ServerProcess::start(
        data_dir,
        &[
            ("CUSTODIA_STORE", "postgres"),
            ("CUSTODIA_DATABASE_URL", &db.url),
            ("CUSTODIA_DATABASE_POOL_SIZE", "8"),
            ("CUSTODIA_KEY_EPOCH_FILE", epochs.to_str().unwrap()),
        ],
    )
}

async fn sequences(node: &ServerProcess) -> bool {
    let Ok(res) = reqwest::get(format!("{}/metrics", node.base)).await else { return false };
    res.text().await.unwrap_or_default().lines().any(|l| l.trim() == "custodia_audit_sequencer 1")
}

async fn create(base: &str, email: &str) -> reqwest::Response {
    reqwest::Client::new()
        .post(format!("{base}/v1/customers"))
        .bearer_auth(TestApp::token_for_tests())
        .json(&json!({"fields": {"email": email, "name": "Frozen Test"}}))
        .send()
        .await
        .unwrap()
}

fn signal(node: &ServerProcess, signal: &str) {
    let status = std::process::Command::new("kill").arg(signal).arg(node.child.id().to_string()).status();
    assert!(status.unwrap().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_sequencer_node_loses_the_role_and_writes_on_the_other_node_get_their_seqs() {
    let Some(db) = Database::create() else { return };
    let dirs = tempfile::tempdir().unwrap();
    let (dir_a, dir_b) = (dirs.path().join("a"), dirs.path().join("b"));
    let a = node(&dir_a, &db);
    let mut waited = 0;
    while !sequences(&a).await {
        waited += 1;
        assert!(waited < 200, "the first node never took the sequencer's lock");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    std::fs::copy(dir_a.with_extension("epoch-keys"), dir_b.with_extension("epoch-keys")).unwrap();
    let b = node(&dir_b, &db);
    assert_eq!(create(&b.base, "before@frozen.test").await.status(), StatusCode::CREATED);
    assert!(!sequences(&b).await);

    // Frozen, not dead: its TCP connections stay up (the kernel still answers), so only the
    // server's idle_session_timeout ends the session that holds the lock.
    signal(&a, "-STOP");
    let frozen = std::time::Instant::now();
    // README "Scaling out" states about 6 s; the deadline only tells "bounded" from "never".
    while !sequences(&b).await {
        assert!(frozen.elapsed() < Duration::from_secs(30), "the other node never took over");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let took_over = frozen.elapsed();
    let res = create(&b.base, "after@frozen.test").await;
    let status = res.status();
    signal(&a, "-CONT");
    assert_eq!(status, StatusCode::CREATED, "{}", res.text().await.unwrap_or_default());
    println!("takeover {took_over:?} after the sequencer froze");

    // Woken, the old sequencer finds its session ended and follows: one sequencer, and its
    // writes still get seqs.
    assert_eq!(create(&a.base, "woken@frozen.test").await.status(), StatusCode::CREATED);
    assert!(sequences(&b).await && !sequences(&a).await, "two sequencers, or none");
    assert_eq!(db.number("SELECT count(*) FROM pending_events"), Some(0));
    let events = db.number("SELECT count(*) FROM audit_events").unwrap();
    assert_eq!(db.number("SELECT size FROM log_head"), Some(events));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_lock_held_for_ever_fails_that_customers_writes_and_leaves_every_other_request_served() {
    let Some(db) = Database::create() else { return };
    let app = crate::helpers::spawn_app_with(|s| {
        s.store = custodia::config::StoreKind::Postgres;
        s.database_url = Some(secrecy::SecretString::from(db.url.clone()));
        s.database_pool_size = 8;
    })
    .await;
    let x = app.create_customer(json!({"name": "Locked", "email": "locked@lock.test"})).await;
    // A side session (a stray psql, a node frozen mid-write) holds X's row lock: X is the only
    // customer yet, so locking every row locks X alone.
    let (side, connection) = tokio_postgres::connect(&db.url, tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(connection);
    side.batch_execute("BEGIN; SELECT id FROM customers FOR UPDATE").await.unwrap();
    let y = app.create_customer(json!({"name": "Free", "email": "free@lock.test"})).await;

    // More writers of X than the pool has connections.
    let mut patches = Vec::new();
    for i in 0..20 {
        let (client, base, token, x) = (app.client.clone(), app.base.clone(), app.merchant(), x.clone());
        patches.push(tokio::spawn(async move {
            let res = client
                .patch(format!("{base}/v1/customers/{x}"))
                .bearer_auth(token)
                .json(&json!({"fields": {"name": format!("Patch {i}")}}))
                .send()
                .await
                .unwrap();
            res.status()
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Meanwhile, and after the writers of X gave up: another customer reads, a create succeeds.
    for round in 0..2 {
        let read = app.read_customer(&y, "order_fulfillment").await;
        assert_eq!(read.status, StatusCode::OK, "round {round}: {}", read.body);
        app.create_customer(
            json!({"name": format!("New {round}"), "email": format!("new{round}@lock.test")}),
        )
        .await;
        if round == 0 {
            for patch in std::mem::take(&mut patches) {
                let status = patch.await.unwrap();
                // The store gives up on the lock before the request timeout: 503, not 408.
                assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
            }
        }
    }
    side.batch_execute("ROLLBACK").await.unwrap();
    let res = app
        .call(
            reqwest::Method::PATCH,
            &format!("/v1/customers/{x}"),
            Some(&app.merchant()),
            None,
            Some(&json!({"fields": {"name": "Unlocked"}})),
        )
        .await;
    assert_eq!(res.status, StatusCode::OK, "{}", res.body);
}

/// Review 14, finding 4: an erasure whose seq the sequencer cannot give in time (its head row
/// is locked) used to run into the request timeout and answer 408, which clients retry, though
/// the erasure was committed. Now the store gives up first and says so: 503 `audit_pending`;
/// the customer is erased, and its event gets a seq once the sequencer runs again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_erasure_whose_seq_is_late_answers_audit_pending_and_is_carried_out() {
    let Some(db) = Database::create() else { return };
    let app = crate::helpers::spawn_app_with(|s| {
        s.store = custodia::config::StoreKind::Postgres;
        s.database_url = Some(secrecy::SecretString::from(db.url.clone()));
        s.request_timeout_ms = 4000;
    })
    .await;
    let x = app.create_customer(json!({"name": "Late", "email": "late@seq.test"})).await;
    // The sequencer cannot advance the head while a side session holds its row.
    let (side, connection) = tokio_postgres::connect(&db.url, tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(connection);
    side.batch_execute("BEGIN; SELECT * FROM log_head FOR UPDATE").await.unwrap();
    let res = app
        .call(reqwest::Method::DELETE, &format!("/v1/customers/{x}"), Some(&app.merchant()), None, None)
        .await;
    assert_eq!(res.status, StatusCode::SERVICE_UNAVAILABLE, "{}", res.body);
    assert_eq!(res.body["error"], "audit_pending", "{}", res.body);
    side.batch_execute("ROLLBACK").await.unwrap();
    // Carried out: the customer is gone, and its erasure event reaches the log.
    let read = app.read_customer(&x, "order_fulfillment").await;
    assert_eq!(read.status, StatusCode::NOT_FOUND, "{}", read.body);
    let erased = app.audit_events().await.into_iter().any(|e| {
        e["action"] == "customer.erase" && e["customer_id"] == x.as_str() && e["outcome"] == "allowed"
    });
    assert!(erased, "the erasure's event is in the log");
}
