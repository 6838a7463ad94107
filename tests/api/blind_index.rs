//! Blind indexes and card fingerprints are shredded too: after a 2xx erasure, nothing in the
//! data directory, tried with the master key (and so the vault-wide keys in `system_keys`),
//! yields the erased customer's card fingerprint; and once the epochs live at the erasure are
//! destroyed, nothing tried with every key still in the epoch-key file yields its blind indexes
//! either. The same scan finds a live customer's, so it can fail. Also: unique checks and
//! lookups across an epoch switch and across the migration of legacy entries.

use std::path::Path;
use std::time::{Duration, Instant};

use custodia::crypto::{BlindIndexKey, DataKeyring, MasterKey, MasterKeyring, MissingFile, SystemKeys};
use custodia::domain::CustomerId;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::helpers::{
    MASTER_KEY, TEST_EPOCH_FILE, TestApp, contains, edit_stored_record, epoch_keyring, files_under,
    forget_index_layout, open_store_files, put_stored_index_owner, spawn_app_with, stored_index_owners,
    stored_record, wait_for_epochs_destroyed,
};

const GONE_CARD: &str = "5555555555554444";
const KEPT_CARD: &str = "4111111111111111";

fn master() -> MasterKeyring {
    MasterKeyring::new(MasterKey::from_base64(MASTER_KEY).unwrap(), Vec::new())
}

/// The vault-wide keys of the (stopped) store in `data_dir`, unwrapped with the master key.
async fn system_keys(data_dir: &Path) -> SystemKeys {
    let settings =
        custodia::store::StorageSettings::Sled { dir: data_dir.join("store"), cache_bytes: 8 << 20 };
    let store = custodia::store::open(&settings, std::sync::Arc::new(custodia::audit::tree::Tree)).unwrap();
    let bytes = store.meta(custodia::vault::SYSTEM_KEYS).await.unwrap().expect("system keys stored");
    store.close().await.unwrap();
    SystemKeys::unwrap(&master(), &postcard::from_bytes(&bytes).unwrap()).unwrap()
}

/// The files of `dir` holding any of `needles`.
fn files_holding(dir: &Path, needles: &[[u8; 32]]) -> Vec<String> {
    files_under(dir)
        .into_iter()
        .filter(|(_, bytes)| needles.iter().any(|n| contains(bytes, n)))
        .map(|(name, _)| name)
        .collect()
}

/// A customer's email and phone indexes under `key`.
fn indexes(key: &BlindIndexKey, n: u32) -> Vec<[u8; 32]> {
    vec![
        key.compute("email", &format!("person{n}@example.com")).0,
        key.compute("phone", &format!("+491510000000{n}")).0,
    ]
}

/// Every index and fingerprint of customer `n` an attacker with the master key and the
/// epoch-key file `epochs` can compute: under the vault-wide keys and every epoch in the file.
fn attacker_candidates(system: &SystemKeys, epochs: &DataKeyring, n: u32, card: &str) -> Vec<[u8; 32]> {
    let mut out = indexes(&system.blind_index, n);
    out.push(system.card_fingerprint.compute("pan", card).0);
    for epoch in epochs.epoch_keys() {
        out.extend(indexes(epoch.blind_index(), n));
    }
    out
}

async fn add_card(app: &TestApp, id: &str, number: &str) {
    let body = json!({"card": {"number": number, "exp_month": 12, "exp_year": 2031}});
    let path = format!("/v1/customers/{id}/payment-methods");
    let res = app.call(Method::POST, &path, Some(&app.merchant()), None, Some(&body)).await;
    assert_eq!(res.status, StatusCode::CREATED, "{}", res.body);
}

fn person(n: u32) -> Value {
    json!({"name": format!("Person {n}"), "email": format!("person{n}@example.com"), "phone": format!("+491510000000{n}")})
}

async fn short_epochs() -> TestApp {
    spawn_app_with(|s| {
        s.key_epoch_seconds = 2;
        s.key_epochs_kept = 0;
        s.request_timeout_ms = 1000;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_erased_customers_fingerprint_and_blind_indexes_are_recoverable_from_no_file() {
    if crate::helpers::sled_only("scans the data directory's files") {
        return;
    }
    let mut app = short_epochs().await;
    let (gone, kept) = (app.create_customer(person(1)).await, app.create_customer(person(2)).await);
    add_card(&app, &gone, GONE_CARD).await;
    add_card(&app, &kept, KEPT_CARD).await;
    let dir = app.data_dir.path().to_owned();
    let epoch_file = dir.join(TEST_EPOCH_FILE);

    let res =
        app.call(Method::DELETE, &format!("/v1/customers/{gone}"), Some(&app.merchant()), None, None).await;
    assert_eq!(res.status, StatusCode::OK, "{}", res.body);
    // Every epoch live at the erasure (its entries can only be under these).
    let live: Vec<String> = epoch_keyring(&epoch_file).epochs().iter().map(|e| e.id.to_string()).collect();

    // At once (after a clean shutdown, so every page is on disk): the card fingerprint of the
    // erased customer is under a key nobody has any more; the vault-wide keys yield neither it
    // nor an index.
    app.shutdown().await;
    let system = system_keys(&dir).await;
    let mut gone_now = indexes(&system.blind_index, 1);
    gone_now.push(system.card_fingerprint.compute("pan", GONE_CARD).0);
    assert_eq!(files_holding(&dir, &gone_now), Vec::<String>::new(), "at once, under the vault-wide keys");
    // The kept customer's fingerprint, keyed by its data key (which the attacker can open), is
    // found: the scan can fail.
    let record = stored_record(&dir, &kept).await;
    let key = epoch_keyring(&epoch_file).unwrap_data_key(&record.id, &record.data_key).unwrap();
    let kept_fingerprint = key.card_fingerprint(&record.id, KEPT_CARD);
    assert!(!files_holding(&dir, &[kept_fingerprint]).is_empty(), "the scan finds a live fingerprint");

    // After the epochs live at the erasure are destroyed: nothing of the erased customer under
    // any key still in the file; the kept customer's entries (under the current epoch) are found.
    let mut app = app.restart().await;
    wait_for_epochs_destroyed(&app, &live, Duration::from_secs(60)).await;
    app.shutdown().await;
    let epochs = epoch_keyring(&epoch_file);
    assert!(epochs.epochs().iter().all(|e| !live.contains(&e.id.to_string())));
    let found = files_holding(&dir, &attacker_candidates(&system, &epochs, 1, GONE_CARD));
    assert_eq!(found, Vec::<String>::new(), "after the destruction of the erasure's epochs");
    let mut kept_now = Vec::new();
    for epoch in epochs.epoch_keys() {
        kept_now.extend(indexes(epoch.blind_index(), 2));
    }
    assert!(!files_holding(&dir, &kept_now).is_empty(), "the scan finds a live customer's index");
    let customer: CustomerId = kept.parse().unwrap();
    let record = stored_record(&dir, &kept).await;
    assert_eq!(record.id, customer);
    // Findable by every indexed field: each has an entry under an epoch still in the file. Not
    // "under the current epoch": epochs here last 2 s, so one may begin between the re-index and
    // the shutdown, leaving the entries under its predecessor until the next re-index (a flake
    // seen once in CI). Entries under the epochs live at the erasure may remain; those epochs are
    // all destroyed (asserted above).
    for field in record.index_entries.iter().map(|e| &e.field) {
        let findable = record
            .index_entries
            .iter()
            .any(|e| &e.field == field && e.epoch.as_ref().is_some_and(|k| epochs.epoch(k).is_some()));
        assert!(findable, "no entry under a live epoch for {field}");
    }
    // Every entry is keyed under an epoch, none under the vault-wide key.
    assert!(record.index_entries.iter().all(|e| e.epoch.is_some()));
}

/// Looks a customer up by email for customer support.
async fn lookup(app: &TestApp, email: &str) -> Vec<String> {
    let res = app
        .call(
            Method::GET,
            &format!("/v1/customers?email={email}"),
            Some(&app.merchant()),
            Some("customer_support"),
            None,
        )
        .await;
    assert_eq!(res.status, StatusCode::OK, "{}", res.body);
    res.body["customers"].as_array().unwrap().iter().map(|c| c["id"].as_str().unwrap().to_owned()).collect()
}

async fn create(app: &TestApp, fields: Value) -> StatusCode {
    let body = json!({ "fields": fields });
    app.call(Method::POST, "/v1/customers", Some(&app.merchant()), None, Some(&body)).await.status
}

/// Epochs of the entries of `id` (server stopped).
async fn entry_epochs(dir: &Path, id: &str) -> Vec<Option<String>> {
    stored_record(dir, id)
        .await
        .index_entries
        .iter()
        .map(|e| e.epoch.as_ref().map(|k| k.to_string()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unique_checks_and_lookups_hold_across_epoch_switches() {
    // Epochs switch every 2 s; requests and re-index passes interleave with the switches.
    let app = short_epochs().await;
    let first = app.create_customer(json!({"email": "switch0@example.com"})).await;
    let started = Instant::now();
    let mut n = 1;
    let mut seen_epochs = std::collections::BTreeSet::new();
    while started.elapsed() < Duration::from_secs(9) {
        // A new customer each round, and a clash with every earlier one (re-indexed or not).
        let id = app.create_customer(json!({"email": format!("switch{n}@example.com")})).await;
        for k in [0, n / 2, n] {
            assert_eq!(
                create(&app, json!({"email": format!("switch{k}@example.com")})).await,
                StatusCode::CONFLICT,
                "switch{k} clashes"
            );
        }
        assert_eq!(lookup(&app, "switch0@example.com").await, std::slice::from_ref(&first));
        assert_eq!(lookup(&app, &format!("switch{n}@example.com")).await, [id]);
        seen_epochs
            .insert(epoch_keyring(&app.data_dir.path().join(TEST_EPOCH_FILE)).current().id.to_string());
        n += 1;
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    assert!(seen_epochs.len() >= 3, "the test spans several epochs: {seen_epochs:?}");
}

/// Edits the sled tree of a stopped server.
fn edit_tree(dir: &Path, edit: impl FnOnce(&sled::Tree)) {
    let db = open_store_files(dir);
    let tree = db.open_tree("custodia").unwrap();
    edit(&tree);
    db.flush().unwrap();
}

fn meta_key(name: &str) -> Vec<u8> {
    let mut key = vec![b'm'];
    key.extend_from_slice(name.as_bytes());
    key
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_between_a_switch_and_the_re_index_still_clashes_and_is_found() {
    if crate::helpers::sled_only("edits stored records in the sled tree") {
        return;
    }
    // One previous epoch kept, a long period: nothing rotates by itself here.
    let mut app = spawn_app_with(|s| {
        s.key_epoch_seconds = 3600;
        s.key_epochs_kept = 1;
    })
    .await;
    let a = app.create_customer(json!({"email": "a@between.test"})).await;
    app.shutdown().await;
    let dir = app.data_dir.path().to_owned();
    let old = epoch_keyring(&dir.join(TEST_EPOCH_FILE)).current().id.to_string();
    assert_eq!(entry_epochs(&dir, &a).await, [Some(old.clone())]);
    // A switch, as the epoch task makes it, and the re-wrap marked complete, so A stays under
    // the old epoch only while B writes: the state between a switch and A's re-index.
    let new = {
        let ring = DataKeyring::open(master(), &dir.join(TEST_EPOCH_FILE), MissingFile::Refuse, 0).unwrap().0;
        ring.create_epoch(custodia::domain::Timestamp::now().millis()).unwrap().id.to_string()
    };
    edit_tree(&dir, |t| {
        t.insert(meta_key("epoch_rewrapped_to"), new.as_bytes()).unwrap();
    });
    let mut app = app.restart().await;
    assert_eq!(create(&app, json!({"email": "a@between.test"})).await, StatusCode::CONFLICT);
    let b = app.create_customer(json!({"email": "b@between.test"})).await;
    assert_eq!(lookup(&app, "a@between.test").await, std::slice::from_ref(&a));
    assert_eq!(lookup(&app, "b@between.test").await, std::slice::from_ref(&b));
    app.shutdown().await;
    assert_eq!(entry_epochs(&dir, &a).await, [Some(old.clone())], "A not re-indexed yet");
    let mut eb = entry_epochs(&dir, &b).await;
    eb.sort();
    let mut both = vec![Some(old.clone()), Some(new.clone())];
    both.sort();
    assert_eq!(eb, both, "B is written under both live epochs");

    // Now the re-wrap runs (marker back at the old epoch) and the old epoch goes.
    edit_tree(&dir, |t| {
        t.insert(meta_key("epoch_rewrapped_to"), old.as_bytes()).unwrap();
    });
    app.settings.key_epochs_kept = 0;
    let mut app = app.restart().await;
    wait_for_epochs_destroyed(&app, std::slice::from_ref(&old), Duration::from_secs(30)).await;
    app.shutdown().await;
    // A is re-indexed to the new epoch; B keeps its entry under the old one as dead weight (its
    // key is destroyed) until its next re-index.
    assert_eq!(entry_epochs(&dir, &a).await, [Some(new.clone())]);
    assert!(entry_epochs(&dir, &b).await.contains(&Some(new.clone())));
    assert!(epoch_keyring(&dir.join(TEST_EPOCH_FILE)).epochs().iter().all(|e| e.id.to_string() != old));
    let app = app.restart().await;
    assert_eq!(create(&app, json!({"email": "a@between.test"})).await, StatusCode::CONFLICT);
    assert_eq!(create(&app, json!({"email": "b@between.test"})).await, StatusCode::CONFLICT);
    assert_eq!(lookup(&app, "a@between.test").await, [a]);
    assert_eq!(lookup(&app, "b@between.test").await, [b]);
}

#[tokio::test]
async fn legacy_entries_are_found_until_migrated_at_the_next_start_and_then_under_the_epoch() {
    if crate::helpers::sled_only("rewrites stored records and index keys in the sled backend's files") {
        return;
    }
    let mut app = spawn_app_with(|_| {}).await;
    let id = app.create_customer(person(7)).await;
    add_card(&app, &id, KEPT_CARD).await;
    app.shutdown().await;
    let dir = app.data_dir.path().to_owned();
    // Turn the record into what format 2 stored: entries under the vault-wide key (in the
    // record and as sled index keys, in a store from before the record file held them), the card
    // fingerprint under the vault-wide fingerprint key; and forget the migration.
    let system = system_keys(&dir).await;
    let customer: CustomerId = id.parse().unwrap();
    let legacy = indexes(&system.blind_index, 7);
    let before = stored_record(&dir, &id).await.index_entries;
    assert!(before.iter().all(|e| stored_index_owners(&dir, &e.field, &e.index).is_some()));
    edit_stored_record(&dir, &id, |record| {
        for entry in &mut record.index_entries {
            entry.index = if entry.field == "email" { legacy[0] } else { legacy[1] };
            entry.epoch = None;
        }
        for method in &mut record.payment_methods {
            method.fingerprint = Some(custodia::store::CardFingerprint::Legacy(
                system.card_fingerprint.compute("pan", KEPT_CARD).0,
            ));
        }
    });
    let index_key = |field: &str, index: &[u8; 32]| {
        let mut key = vec![b'i'];
        key.extend_from_slice(field.as_bytes());
        key.push(0);
        key.extend_from_slice(index);
        key.extend_from_slice(customer.as_bytes());
        key
    };
    edit_tree(&dir, |t| {
        t.insert(index_key("email", &legacy[0]), Vec::<u8>::new()).unwrap();
        t.insert(index_key("phone", &legacy[1]), Vec::<u8>::new()).unwrap();
        t.remove(meta_key("index_legacy_migrated")).unwrap();
    });
    forget_index_layout(&dir);
    // An entry that a build cut short could have left: without the mark it must not survive.
    let stray = [0xEE; 32];
    put_stored_index_owner(&dir, "email", &stray, &customer);
    // The next start migrates before serving: the customer is found and clashes as before.
    let app = app.restart().await;
    assert_eq!(lookup(&app, "person7@example.com").await, std::slice::from_ref(&id));
    assert_eq!(create(&app, json!({"email": "person7@example.com"})).await, StatusCode::CONFLICT);
    assert_eq!(
        create(&app, json!({"phone": "+4915100000007"})).await,
        StatusCode::CREATED,
        "phone is not unique"
    );
    // The migrated fingerprint still finds the same card on the record.
    let body = json!({"card": {"number": KEPT_CARD, "exp_month": 12, "exp_year": 2031}});
    let path = format!("/v1/customers/{id}/payment-methods");
    let res = app.call(Method::POST, &path, Some(&app.merchant()), None, Some(&body)).await;
    assert_eq!(res.status, StatusCode::OK, "a duplicate: {}", res.body);
    assert!(res.body["duplicate_of"].is_string());
    let mut app = app;
    app.shutdown().await;
    let record = stored_record(&dir, &id).await;
    assert!(record.index_entries.iter().all(|e| e.epoch.is_some()), "{:?}", record.index_entries);
    assert!(
        record
            .payment_methods
            .iter()
            .all(|m| matches!(m.fingerprint, Some(custodia::store::CardFingerprint::DataKey(_))))
    );
    // Nothing in the directory's live tree or blind-index entries names the legacy indexes any
    // more; the record's entries are built from the records and name it (the phone's also the
    // customer created with the same phone above).
    let db = open_store_files(&dir);
    let tree = db.open_tree("custodia").unwrap();
    assert!(tree.get(index_key("email", &legacy[0])).unwrap().is_none());
    assert!(tree.get(index_key("phone", &legacy[1])).unwrap().is_none());
    assert!(tree.scan_prefix([b'i']).next().is_none(), "sled keeps no blind-index entry");
    drop(tree);
    drop(db);
    assert_eq!(stored_index_owners(&dir, "email", &legacy[0]), None);
    assert_eq!(stored_index_owners(&dir, "phone", &legacy[1]), None);
    assert_eq!(stored_index_owners(&dir, "email", &stray), None, "the cut build's entry was cleared");
    let now = stored_record(&dir, &id).await.index_entries;
    for entry in now {
        let (count, owners) = stored_index_owners(&dir, &entry.field, &entry.index).expect("an owner count");
        let expected_owners = if entry.field == "phone" { 2 } else { 1 };
        assert_eq!((count, owners.len()), (expected_owners, expected_owners as usize), "{}", entry.field);
        assert!(owners.contains(&customer), "{}", entry.field);
    }
}

/// A field made unique in the policies after two customers stored the same value: the re-wrap
/// pass must not create the uniqueness (it would clash on every pass, so no pass would ever be
/// clean and no epoch would ever be destroyed). It becomes unique at the field's next write.
#[tokio::test]
async fn a_field_made_unique_later_does_not_stall_epoch_destruction() {
    let policies = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("policies")).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, policies.path().join(path.file_name().unwrap())).unwrap();
    }
    let dir = policies.path().to_owned();
    let app = spawn_app_with(|s| {
        s.key_epoch_seconds = 2;
        s.key_epochs_kept = 0;
        s.request_timeout_ms = 1000;
        s.policies = dir.clone();
    })
    .await;
    for n in [1, 2] {
        let mut p = person(n);
        p["name"] = json!("Same Name");
        assert_eq!(create(&app, p).await, StatusCode::CREATED);
    }
    let path = policies.path().join("fields.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    let edited = text.replacen(
        "type = \"string\"\npurposes",
        "type = \"string\"\nindex = true\nunique = true\npurposes",
        1,
    );
    assert_ne!(edited, text, "the name field's declaration was found");
    std::fs::write(&path, edited).unwrap();
    let app = app.restart().await;
    let at_restart = epoch_keyring(&app.data_dir.path().join(TEST_EPOCH_FILE)).epochs()[0].id.to_string();
    wait_for_epochs_destroyed(&app, &[at_restart], Duration::from_secs(20)).await;
}
