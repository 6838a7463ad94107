//! Key epochs: a copy of the data directory taken before an erasure stops opening the erased
//! customer once the epoch key that wrapped its data key is destroyed; the epoch-key file lives
//! beside the data directory by default, and a missing one refuses to start.

use std::path::Path;
use std::time::Duration;

use custodia::crypto::{CryptoError, DataKeyring, MasterKey, MasterKeyring, MissingFile};
use custodia::startup::App;
use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::helpers::{
    MASTER_KEY, TEST_EPOCH_FILE, TestApp, spawn_app, spawn_app_with, stored_record, test_settings,
    wait_for_epochs_destroyed,
};

/// Copies a directory tree (a stopped server's data directory, as a backup would).
fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// Opens field `field` of customer `id` in the (stopped) data directory `data_dir` with the
/// master key and the epoch-key file, as someone holding a copy, the master key and the
/// current epoch-key file would: the crate's own store and crypto, no server.
async fn open_field(
    data_dir: &Path,
    epoch_file: &Path,
    id: &str,
    field: &str,
) -> Result<String, CryptoError> {
    let record = stored_record(data_dir, id).await;
    let master = MasterKeyring::new(MasterKey::from_base64(MASTER_KEY).unwrap(), vec![]);
    let (keyring, _) = DataKeyring::open(master, epoch_file, MissingFile::Refuse, 0).unwrap();
    let key = keyring.unwrap_data_key(&record.id, &record.data_key)?;
    let plain = key.open(&record.id, field, &record.fields[field].sealed)?;
    Ok(String::from_utf8(plain.expose().to_vec()).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_taken_before_an_erasure_stops_opening_the_customer_after_the_next_epoch_destruction() {
    if crate::helpers::sled_only("copies the data directory") {
        return;
    }
    // The epoch-key file outside the data directory, as in production: copies do not carry it.
    let keys = tempfile::tempdir().unwrap();
    let epoch_file = keys.path().join("custodia.epoch-keys");
    let file = epoch_file.clone();
    let mut app = spawn_app_with(move |s| {
        s.key_epoch_file = Some(file);
        s.key_epoch_seconds = 2;
        s.key_epochs_kept = 0;
        s.request_timeout_ms = 1000;
    })
    .await;
    let a = app.create_customer(json!({"name": "Ada Erased", "email": "ada@copies.test"})).await;
    let card = json!({"card": {"number": "4111 1111 1111 1111", "exp_month": 12, "exp_year": 2031}});
    let res = app
        .call(
            Method::POST,
            &format!("/v1/customers/{a}/payment-methods"),
            Some(&app.merchant()),
            None,
            Some(&card),
        )
        .await;
    assert_eq!(res.status, StatusCode::CREATED, "{}", res.body);
    let b = app.create_customer(json!({"name": "Bob Kept", "email": "bob@copies.test"})).await;

    // A copy of the data directory (not of the epoch-key file), taken with the server stopped.
    app.shutdown().await;
    let copy = tempfile::tempdir().unwrap();
    copy_dir(app.data_dir.path(), copy.path());
    assert!(!copy.path().join("custodia.epoch-keys").exists());
    // Right now the copy opens A with the master key and the epoch-key file: the check at the
    // end can fail.
    assert_eq!(open_field(copy.path(), &epoch_file, &a, "email").await.unwrap(), "\"ada@copies.test\"");
    let copy_epoch = stored_record(copy.path(), &a).await.data_key.master_key.to_string();
    assert!(copy_epoch.starts_with("ek-"), "{copy_epoch}");
    let app = app.restart().await;

    // Erase A: the receipt says when the key went and by when copies stop opening it.
    let res =
        app.call(Method::DELETE, &format!("/v1/customers/{a}"), Some(&app.merchant()), None, None).await;
    assert_eq!(res.status, StatusCode::OK, "{}", res.body);
    let receipt = res.body;
    let erased = chrono::DateTime::parse_from_rfc3339(receipt["key_destroyed_at"].as_str().unwrap()).unwrap();
    let bound =
        chrono::DateTime::parse_from_rfc3339(receipt["copies_unreadable_by"].as_str().unwrap()).unwrap();
    // The epoch current at erasure began at most one period (plus a re-wrap) before it; the
    // bound is its start + one period (2 s) + the settle time (the 1 s request timeout).
    assert!(bound <= erased + chrono::Duration::seconds(3), "{receipt}");
    assert!(bound >= erased - chrono::Duration::seconds(3), "{receipt}");
    let notice = receipt["notice"].as_str().unwrap();
    assert!(notice.contains("unreadable in our live system") && notice.contains("backups"), "{notice}");
    assert!(receipt["erased_at"].is_string() && receipt["audit_seq"].is_u64());

    // The epoch that wrapped A's key in the copy is destroyed after the next re-wrap.
    let destroyed =
        wait_for_epochs_destroyed(&app, std::slice::from_ref(&copy_epoch), Duration::from_secs(30))
            .await
            .remove(0);
    assert_eq!(destroyed["actor"]["role"], "system");
    assert!(!destroyed.to_string().contains(MASTER_KEY));

    // B still reads from the live directory; A is gone there.
    let res = app.read_customer(&b, "order_fulfillment").await;
    assert_eq!(res.status, StatusCode::OK, "{}", res.body);
    assert_eq!(res.body["fields"]["email"], "bob@copies.test");
    assert_eq!(app.read_customer(&a, "order_fulfillment").await.status, StatusCode::NOT_FOUND);

    // The copy, opened with the master key and the current epoch-key file, no longer yields A
    // (nor anything else of its time: a copy older than the kept epochs cannot be restored).
    let mut app = app;
    app.shutdown().await;
    match open_field(copy.path(), &epoch_file, &a, "email").await {
        Err(CryptoError::UnknownEpochKey(id)) => assert_eq!(id.to_string(), copy_epoch),
        other => panic!("the copy still opens the erased customer: {other:?}"),
    }
    assert!(matches!(
        open_field(copy.path(), &epoch_file, &b, "email").await,
        Err(CryptoError::UnknownEpochKey(_))
    ));
    // No slot of the file holds the destroyed epoch's id any more.
    let raw = std::fs::read(&epoch_file).unwrap();
    let id_bytes: Vec<u8> =
        (0..8).map(|i| u8::from_str_radix(&copy_epoch[3 + 2 * i..5 + 2 * i], 16).unwrap()).collect();
    assert!(!raw.windows(8).any(|w| w == id_bytes.as_slice()), "the destroyed epoch's slot is zeroed");

    // A server started on the copy with the same keys does not show A either.
    let mut settings = test_settings(copy.path());
    settings.key_epoch_file = Some(epoch_file.clone());
    let mut on_copy = TestApp::adopt_path(settings).await;
    let res = on_copy.read_customer(&a, "order_fulfillment").await;
    assert_ne!(res.status, StatusCode::OK);
    assert!(!res.body.to_string().contains("ada@copies.test"));
    // The directory is this test's: the server's last flush must finish before it goes.
    on_copy.shutdown().await;
}

#[tokio::test]
async fn a_missing_epoch_key_file_refuses_to_start_and_creates_nothing() {
    let mut app = spawn_app().await;
    app.create_customer(json!({"name": "Kept Customer"})).await;
    app.shutdown().await;
    let file = app.data_dir.path().join(TEST_EPOCH_FILE);
    std::fs::remove_file(&file).unwrap();
    let err = match App::build(app.settings.clone()).await {
        Ok(_) => panic!("started without the epoch-key file"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains(&file.display().to_string()) && err.contains("missing"), "{err}");
    assert!(err.contains("CUSTODIA_KEY_EPOCH_FILE"), "{err}");
    assert!(!file.exists(), "no fresh file was created");
}

#[tokio::test]
async fn by_default_the_epoch_key_file_sits_beside_the_data_directory_with_mode_0600() {
    let dir = tempfile::tempdir().unwrap();
    let mut settings = test_settings(&dir.path().join("data"));
    settings.key_epoch_file = None;
    let app = App::build(settings).await.unwrap();
    let file = dir.path().join("data.epoch-keys");
    assert!(file.exists());
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&file).unwrap().permissions().mode() & 0o777, 0o600);
    }
    // A second server over the same file is refused while the first holds it.
    let mut other = test_settings(&dir.path().join("other"));
    other.key_epoch_file = Some(file.clone());
    let err = match App::build(other).await {
        Ok(_) => panic!("two servers share one epoch-key file"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("in use by another process"), "{err}");
    drop(app);
}

#[tokio::test]
async fn the_export_explains_erasure_and_the_bound_for_copies() {
    let app = spawn_app_with(|s| {
        s.key_epoch_seconds = 86_400;
        s.key_epochs_kept = 6;
    })
    .await;
    let id = app.create_customer(json!({"name": "Exporting Customer"})).await;
    let token = TestApp::customer_token(&id);
    let res = app.call(Method::GET, "/v1/me/export", Some(&token), None, None).await;
    assert_eq!(res.status, StatusCode::OK, "{}", res.body);
    let text = res.body["erasure"].as_str().unwrap();
    assert!(text.contains("within about 7 days"), "{text}");
    let res = app.call(Method::DELETE, "/v1/me", Some(&token), None, None).await;
    assert_eq!(res.status, StatusCode::OK, "{}", res.body);
    let bound =
        chrono::DateTime::parse_from_rfc3339(res.body["copies_unreadable_by"].as_str().unwrap()).unwrap();
    let erased =
        chrono::DateTime::parse_from_rfc3339(res.body["key_destroyed_at"].as_str().unwrap()).unwrap();
    // The epoch began at this server's start: 7 periods and the settle time (the 10 s request
    // timeout) later, less the seconds since.
    let left = bound - erased;
    let expected = chrono::Duration::days(7) + chrono::Duration::seconds(10);
    assert!(left <= expected && left > expected - chrono::Duration::minutes(5), "{left}");
    assert!(res.body["notice"].as_str().unwrap().contains("UTC"));
}

/// How many `epoch_destroyed` events for epoch `id` the store's audit log holds.
async fn destroyed_events(store: &dyn custodia::store::Store, id: &str) -> usize {
    let events = store.audit_events(0, 10_000).await.unwrap();
    events
        .iter()
        .map(|(_, bytes)| serde_json::from_slice::<serde_json::Value>(bytes).unwrap())
        .filter(|e| e["reason"][0] == "epoch_destroyed" && e["reason"][1] == format!("epoch:{id}"))
        .count()
}

#[tokio::test]
async fn an_epoch_destroyed_just_before_a_crash_still_gets_its_event_once() {
    use custodia::vault::{EPOCH_DESTROYING, EpochState};
    let dir = tempfile::tempdir().unwrap();
    let (vault, store, _) = custodia::startup::open_vault(&test_settings(dir.path())).await.unwrap();
    // The crash window: the key is gone from the epoch-key file (no epoch has this id), the
    // marker set before the destruction is still there, and the event was never written.
    let gone = "ek-00112233445566ff";
    store.put_meta(EPOCH_DESTROYING, gone.as_bytes().to_vec()).await.unwrap();
    let destroyed_events = || destroyed_events(store.as_ref(), gone);
    assert_eq!(destroyed_events().await, 0);
    let mut state = EpochState::default();
    vault.epoch_step(&mut state).await.unwrap();
    assert_eq!(destroyed_events().await, 1, "the destruction cut short is recorded at the next step");
    assert_eq!(store.meta(EPOCH_DESTROYING).await.unwrap(), Some(Vec::new()), "and the marker emptied");
    vault.epoch_step(&mut state).await.unwrap();
    assert_eq!(destroyed_events().await, 1, "once");

    // A marker that is not an epoch id is cleared and records nothing.
    store.put_meta(EPOCH_DESTROYING, b"epoch:forged \x00".to_vec()).await.unwrap();
    vault.epoch_step(&mut state).await.unwrap();
    assert_eq!(store.meta(EPOCH_DESTROYING).await.unwrap(), Some(Vec::new()));
    let events = store.audit_events(0, 10_000).await.unwrap();
    assert!(!events.iter().any(|(_, bytes)| String::from_utf8_lossy(bytes).contains("forged")));

    // A crash before the key went: the marker names an epoch the file still holds, and is left
    // for the destruction to run again when it is due.
    let current = vault.keyring().current().id.to_string();
    store.put_meta(EPOCH_DESTROYING, current.as_bytes().to_vec()).await.unwrap();
    vault.epoch_step(&mut state).await.unwrap();
    assert_eq!(store.meta(EPOCH_DESTROYING).await.unwrap(), Some(current.into_bytes()));
    store.close().await.unwrap();
}

#[tokio::test]
async fn a_destroyed_epoch_gets_one_event_and_leaves_no_destruction_marker() {
    use custodia::vault::{EPOCH_DESTROYING, EpochState};
    let dir = tempfile::tempdir().unwrap();
    let mut settings = test_settings(dir.path());
    settings.key_epoch_seconds = 1;
    settings.key_epochs_kept = 0;
    settings.request_timeout_ms = 200;
    let (vault, store, _) = custodia::startup::open_vault(&settings).await.unwrap();
    let first = vault.keyring().current().id.to_string();
    let mut state = EpochState::default();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while vault.keyring().epochs().iter().any(|e| e.id.as_str() == first) {
        assert!(std::time::Instant::now() < deadline, "the first epoch was not destroyed");
        let wait = vault.epoch_step(&mut state).await.unwrap();
        tokio::time::sleep(wait.min(Duration::from_millis(100))).await;
    }
    assert_eq!(destroyed_events(store.as_ref(), &first).await, 1, "one event for the destroyed epoch");
    assert_eq!(store.meta(EPOCH_DESTROYING).await.unwrap(), Some(Vec::new()), "the marker is emptied");
    store.close().await.unwrap();
}

/// Two nodes may both believe for a moment that they hold the `epochs` turn (PostgreSQL's
/// advisory lock moves when a session drops). If the other node marks an epoch it is destroying
/// between this node's read of the destruction marker and its own marking, this node neither
/// replaces the marker nor destroys anything in that step; its next step records the other
/// node's destruction (cut short before its event) and only then destroys its own epoch.
#[tokio::test]
async fn a_destruction_marker_another_node_wrote_meanwhile_is_never_replaced_unrecorded() {
    use custodia::vault::{EPOCH_DESTROYING, EpochSchedule, EpochState};

    use crate::interposed::{InterposedStore, vault_over};
    let store = InterposedStore::new();
    let epoch_dir = tempfile::tempdir().unwrap();
    let schedule =
        EpochSchedule { period: Duration::ZERO, kept: 0, settle: Duration::ZERO, pause: Duration::ZERO };
    let vault = vault_over(store.clone(), epoch_dir.path()).await.with_epoch_schedule(schedule);
    vault.init_epochs(true).await.unwrap();
    let first = vault.keyring().current().id.to_string();
    let mut state = EpochState::default();
    // A new epoch, then the re-wrap to it: the first epoch is now beyond the kept ones.
    vault.epoch_step(&mut state).await.unwrap();
    vault.epoch_step(&mut state).await.unwrap();
    assert_ne!(vault.keyring().current().id.as_str(), first);

    let other = "ek-00112233445566ff";
    *store.plant_before_swap.lock().unwrap() = Some((EPOCH_DESTROYING.to_owned(), other.as_bytes().to_vec()));
    vault.epoch_step(&mut state).await.unwrap();
    assert_eq!(
        store.inner.meta(EPOCH_DESTROYING).await.unwrap(),
        Some(other.as_bytes().to_vec()),
        "not replaced"
    );
    assert!(vault.keyring().epoch(&custodia::crypto::KeyId::parse_epoch(&first).unwrap()).is_some());
    assert_eq!(destroyed_events(store.as_ref(), &first).await, 0, "nothing destroyed in that step");

    vault.epoch_step(&mut state).await.unwrap();
    assert_eq!(destroyed_events(store.as_ref(), other).await, 1, "the other node's destruction recorded");
    assert_eq!(destroyed_events(store.as_ref(), &first).await, 1, "then this node's own");
    assert!(vault.keyring().epochs().iter().all(|e| e.id.as_str() != first));
    assert_eq!(store.inner.meta(EPOCH_DESTROYING).await.unwrap(), Some(Vec::new()));
}
