//! Crash windows of the sled backend (found by review): a store killed at the wrong moment must
//! still serve every acknowledged event, in the log and in the customer's history.
//! A "crash" is a child process that ends in `abort()` (no destructor runs, as with kill -9), or
//! a store dropped without `close()` (sled flushes on drop, but nothing of ours runs).

use std::sync::Arc;

use custodia::audit::tree::Tree;
use custodia::domain::CustomerId;
use custodia::store::{CustomerChange, PendingEvent, StorageSettings, Store, Write};

/// Runs this test binary again as a child running `test` (which reads `REVIEW_STEP` and
/// `REVIEW_DIR`) to do `step` on the store in `dir`; the child ends with `abort()`: no
/// destructor runs, so nothing of the store is flushed on drop, as with kill -9.
pub(crate) fn crash_child(test: &str, step: &str, dir: &std::path::Path) {
    let status = std::process::Command::new(std::env::current_exe().unwrap())
        .args([test, "--exact", "--nocapture", "--test-threads=1"])
        .env("REVIEW_STEP", step)
        .env("REVIEW_DIR", dir)
        .status()
        .unwrap();
    use std::os::unix::process::ExitStatusExt;
    // SIGABRT (6): the step ran to its end; a failed assertion in the child exits with 101.
    assert_eq!(status.signal(), Some(6), "the child step {step} must end in an abort, not a panic");
}

fn settings_in(dir: &std::path::Path) -> StorageSettings {
    StorageSettings::Sled { dir: dir.join("store"), cache_bytes: 8 << 20 }
}

const TWO_CRASHES: &str = "crash_windows::a_customers_history_survives_two_kill_9s_before_the_first_flush";

#[tokio::test]
async fn a_customers_history_survives_two_kill_9s_before_the_first_flush() {
    if let (Ok(step), Ok(dir)) = (std::env::var("REVIEW_STEP"), std::env::var("REVIEW_DIR")) {
        let dir = std::path::PathBuf::from(dir);
        let store = custodia::store::open(&settings_in(&dir), Arc::new(Tree)).unwrap();
        let id: CustomerId = std::fs::read_to_string(dir.join("id")).unwrap().parse().unwrap();
        if step == "1" {
            // Run 1: a create with its event, acknowledged, then kill -9 before any flush.
            let prefix = format!("{{\"action\":\"customer.create\",\"customer_id\":\"{id}\"").into_bytes();
            let change = CustomerChange::Put {
                record: Box::new(crate::record(id, 1, vec![])),
                expected_version: None,
            };
            let event = PendingEvent { prefix, time: "2026-11-30T12:00:00.000Z".into(), customer: Some(id) };
            store
                .write(Write {
                    need_seqs: true,
                    precondition: None,
                    change: Some(change),
                    events: vec![event],
                })
                .await
                .unwrap();
        } else {
            // Run 2: the replay puts the group (and `wal_lsn`) into sled and flushes sled at
            // open, but writes no `history_len`; the history is right, from the rebuilt tail.
            // No write, so the flusher never flushes; kill -9.
            let events = store.audit_events_for_customer(&id, None, 10).await.unwrap();
            assert_eq!(events.len(), 1, "run 2 history");
        }
        std::process::abort();
    }
    let dir = tempfile::tempdir().unwrap();
    let id = CustomerId::random();
    std::fs::write(dir.path().join("id"), id.to_string()).unwrap();
    crash_child(TWO_CRASHES, "1", dir.path());
    crash_child(TWO_CRASHES, "2", dir.path());

    // Run 3: `history_len` is absent, so it defaults to the audit length in `wal_lsn` (1): the
    // entry is taken to have a row in sled, which it never got.
    let store = custodia::store::open(&settings_in(dir.path()), Arc::new(Tree)).unwrap();
    assert_eq!(store.head().await.unwrap().size, 1);
    assert_eq!(store.audit_events(0, 10).await.unwrap().len(), 1);
    assert_eq!(
        store.audit_events_for_customer(&id, None, 10).await.unwrap().len(),
        1,
        "the customer's only event is missing from their history"
    );
}

#[tokio::test]
async fn a_customers_history_survives_a_drop_without_close() {
    // Dropping the store flushes sled (sled's Tree flushes on drop) but writes no
    // `history_len`: one unclean stop (an error path after open, a test) is enough.
    let dir = tempfile::tempdir().unwrap();
    let open =
        || -> Arc<dyn Store> { custodia::store::open(&settings_in(dir.path()), Arc::new(Tree)).unwrap() };
    let id = CustomerId::random();
    let prefix = format!("{{\"action\":\"customer.create\",\"customer_id\":\"{id}\"").into_bytes();
    let store = open();
    let change =
        CustomerChange::Put { record: Box::new(crate::record(id, 1, vec![])), expected_version: None };
    let event = PendingEvent { prefix, time: "2026-11-30T12:00:00.000Z".into(), customer: Some(id) };
    store
        .write(Write { need_seqs: true, precondition: None, change: Some(change), events: vec![event] })
        .await
        .unwrap();
    drop(store);
    let store = open();
    assert_eq!(store.audit_events(0, 10).await.unwrap().len(), 1);
    assert_eq!(
        store.audit_events_for_customer(&id, None, 10).await.unwrap().len(),
        1,
        "the customer's only event is missing from their history"
    );
}
