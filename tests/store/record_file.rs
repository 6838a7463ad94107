//! The sled backend's record file (`src/store/sled/records.rs`): records kept outside sled's
//! B-tree survive crashes through the write-ahead log, a store from before it moves its
//! records there on open (also after an open cut half-way), and a deleted record file is
//! refused rather than served as an empty store.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use custodia::audit::tree::Tree;
use custodia::domain::CustomerId;
use custodia::store::{CustomerChange, IndexEntry, StorageSettings, Store, Write};

use crate::crash_windows::crash_child;

fn settings_in(dir: &Path) -> StorageSettings {
    StorageSettings::Sled { dir: dir.join("store"), cache_bytes: 8 << 20 }
}

fn open(dir: &Path) -> Arc<dyn Store> {
    custodia::store::open(&settings_in(dir), Arc::new(Tree)).unwrap()
}

fn records_dir(dir: &Path) -> PathBuf {
    dir.join("store").join("records")
}

/// A write of `change` with no event.
fn change(change: CustomerChange) -> Write {
    Write { need_seqs: false, precondition: None, change: Some(change), events: vec![] }
}

fn create(id: CustomerId, n: u8) -> Write {
    let entry = IndexEntry { field: "email".into(), index: [n; 32], unique: true, epoch: None };
    change(CustomerChange::Put {
        record: Box::new(crate::record(id, 1, vec![entry])),
        expected_version: None,
    })
}

/// Three customers: `ids[0]` at version 2, `ids[1]` at version 1, `ids[2]` erased.
async fn three_customers(store: &Arc<dyn Store>) -> Vec<CustomerId> {
    let ids: Vec<CustomerId> = (0..3).map(|_| CustomerId::random()).collect();
    for (n, id) in ids.iter().enumerate() {
        store.write(create(*id, n as u8)).await.unwrap();
    }
    let update =
        CustomerChange::Put { record: Box::new(crate::record(ids[0], 2, vec![])), expected_version: Some(1) };
    store.write(change(update)).await.unwrap();
    store.write(change(CustomerChange::Delete { id: ids[2], expected_version: 1 })).await.unwrap();
    ids
}

/// What [`three_customers`] left, as `store` shows it.
async fn assert_three_customers(store: &Arc<dyn Store>, ids: &[CustomerId]) {
    assert_eq!(store.customer(&ids[0]).await.unwrap().map(|r| r.version), Some(2));
    assert_eq!(store.customer(&ids[1]).await.unwrap().map(|r| r.version), Some(1));
    assert!(store.customer(&ids[2]).await.unwrap().is_none(), "the erased customer stays erased");
    let mut live = vec![ids[0], ids[1]];
    live.sort();
    assert_eq!(store.customer_ids(None, 10).await.unwrap(), live);
    assert_eq!(store.customer_ids(Some(live[0]), 10).await.unwrap(), vec![live[1]]);
    // The unique entry of the live customer still clashes.
    let taken = create(CustomerId::random(), 1);
    assert!(matches!(store.write(taken).await, Err(custodia::store::StoreError::UniqueViolation { .. })));
}

/// The erased customer's unique value is free: taken by a new customer (so checked once).
async fn assert_erased_value_free(store: &Arc<dyn Store>) {
    store.write(create(CustomerId::random(), 2)).await.expect("the erased customer's unique value is free");
}

/// Puts the store in `dir` back into the layout from before the record file: every record in
/// sled under `c ‖ id`, every blind-index entry under `i ‖ field ‖ 0 ‖ index ‖ id`, no
/// `records` mark, no `records/` directory.
fn to_layout_before_the_record_file(dir: &Path) {
    let records = read_record_file(dir);
    let owners = read_index_owners(dir);
    let db = open_sled_files(dir);
    let tree = db.open_tree("custodia").unwrap();
    for (id, value) in records {
        let mut key = vec![b'c'];
        key.extend_from_slice(&id);
        tree.insert(key, value).unwrap();
    }
    for (entry, id) in owners {
        let mut key = vec![b'i'];
        key.extend_from_slice(&entry);
        key.extend_from_slice(id.as_bytes());
        tree.insert(key, Vec::<u8>::new()).unwrap();
    }
    tree.remove(b"mrecords").unwrap().expect("a store with a record file is marked");
    db.flush().unwrap();
    drop(tree);
    drop(db);
    std::fs::remove_dir_all(records_dir(dir)).unwrap();
}

/// Every (id, value) pair in the record file of a stopped store in `dir`.
fn read_record_file(dir: &Path) -> Vec<(Vec<u8>, Vec<u8>)> {
    read_keyspace(dir, "records")
}

/// Every owner of a blind-index entry (field ‖ 0 ‖ blind index, id) in the record file of a
/// stopped store in `dir`: the sole owner an entry names, or the owner keys (the entry's key ‖
/// id) of a counted one.
fn read_index_owners(dir: &Path) -> Vec<(Vec<u8>, CustomerId)> {
    read_keyspace(dir, "owners")
        .into_iter()
        .filter_map(|(key, value)| match (key.len() - entry_len(&key), value.len()) {
            (0, 16) => Some((key, CustomerId::from_bytes(value.try_into().unwrap()))),
            (0, 8) => None,
            (16, 0) => {
                let (entry, id) = key.split_at(key.len() - 16);
                Some((entry.to_vec(), CustomerId::from_bytes(id.try_into().unwrap())))
            }
            other => panic!("a blind-index key and value of lengths {other:?}"),
        })
        .collect()
}

/// Every blind-index entry (field ‖ 0 ‖ blind index) in the record file of a stopped store in
/// `dir`, with its owner count and whether it is counted (owner keys) rather than naming its
/// sole owner.
fn read_index_counts(dir: &Path) -> Vec<(Vec<u8>, u64, bool)> {
    read_keyspace(dir, "owners")
        .into_iter()
        .filter(|(key, _)| key.len() == entry_len(key))
        .map(|(key, value)| match value.len() {
            16 => (key, 1, false),
            _ => (key, u64::from_be_bytes(value.try_into().expect("an 8-byte count")), true),
        })
        .collect()
}

/// The length of the entry key (field ‖ 0 ‖ blind index) a blind-index key starts with.
fn entry_len(key: &[u8]) -> usize {
    key.iter().position(|b| *b == 0).expect("a field name and its 0 byte") + 1 + 32
}

/// Every (key, value) pair of keyspace `name` in the record file of a stopped store in `dir`.
fn read_keyspace(dir: &Path, name: &str) -> Vec<(Vec<u8>, Vec<u8>)> {
    let db = fjall::Database::builder(records_dir(dir)).open().unwrap();
    let keyspace = db.keyspace(name, fjall::KeyspaceCreateOptions::default).unwrap();
    keyspace
        .iter()
        .map(|entry| {
            let (key, value) = entry.into_inner().unwrap();
            (key.to_vec(), value.to_vec())
        })
        .collect()
}

/// The `c` keys left in sled of a stopped store in `dir`.
fn records_in_sled(dir: &Path) -> usize {
    open_sled_files(dir).open_tree("custodia").unwrap().scan_prefix(b"c").count()
}

/// The `i` keys (blind-index entries) left in sled of a stopped store in `dir`.
fn index_entries_in_sled(dir: &Path) -> usize {
    open_sled_files(dir).open_tree("custodia").unwrap().scan_prefix(b"i").count()
}

/// The sled files of a stopped store in `dir`.
fn open_sled_files(dir: &Path) -> sled::Db {
    sled::Config::new().path(dir.join("store")).flush_every_ms(None).open().unwrap()
}

/// A stopped store with [`three_customers`] in it.
async fn stopped_with_three_customers() -> (tempfile::TempDir, Vec<CustomerId>) {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let ids = three_customers(&store).await;
    store.close().await.unwrap();
    (dir, ids)
}

/// Why opening the store in `dir` is refused.
fn refusal(dir: &Path) -> String {
    custodia::store::open(&settings_in(dir), Arc::new(Tree)).err().expect("refused").to_string()
}

#[tokio::test]
async fn a_store_from_before_the_record_file_moves_its_records_there_on_open() {
    let (dir, ids) = stopped_with_three_customers().await;
    to_layout_before_the_record_file(dir.path());
    assert_eq!(records_in_sled(dir.path()), 2);
    assert_eq!(index_entries_in_sled(dir.path()), 1);

    let store = open(dir.path());
    assert_three_customers(&store, &ids).await;
    store.close().await.unwrap();
    drop(store);
    assert_eq!(records_in_sled(dir.path()), 0, "sled keeps no copy of a record");
    assert_eq!(read_record_file(dir.path()).len(), 2);
    assert_eq!(index_entries_in_sled(dir.path()), 0, "sled keeps no blind-index entry");
    let counts: Vec<_> =
        read_index_counts(dir.path()).into_iter().map(|(_, n, counted)| (n, counted)).collect();
    assert_eq!(counts, [(1, false)], "the live customer's unique entry, naming its sole owner");
    assert_eq!(read_index_owners(dir.path()).len(), 1);
    // Opened again, the marked store reads its records from the record file alone.
    let store = open(dir.path());
    assert_three_customers(&store, &ids).await;
    assert_erased_value_free(&store).await;
}

#[tokio::test]
async fn an_open_cut_while_moving_the_records_moves_them_again() {
    let (dir, ids) = stopped_with_three_customers().await;
    let moved = read_record_file(dir.path());
    to_layout_before_the_record_file(dir.path());
    // A record file holding part of the move, a stale value, the erased customer and an LSN
    // past sled's, and no mark in sled: the open that wrote it was cut before the mark.
    {
        let db = fjall::Database::builder(records_dir(dir.path())).open().unwrap();
        let records = db.keyspace("records", fjall::KeyspaceCreateOptions::default).unwrap();
        let meta = db.keyspace("meta", fjall::KeyspaceCreateOptions::default).unwrap();
        records.insert(moved[0].0.clone(), moved[1].1.clone()).unwrap();
        records.insert(ids[2].as_bytes().to_vec(), moved[1].1.clone()).unwrap();
        meta.insert("applied_lsn", u64::MAX.to_be_bytes()).unwrap();
        db.persist(fjall::PersistMode::SyncAll).unwrap();
    }
    // And a build cut while fjall was creating its files: a directory it cannot open.
    let building = dir.path().join("store").join("records.new");
    std::fs::create_dir_all(building.join("keyspaces")).unwrap();
    std::fs::write(building.join("0.jnl"), b"").unwrap();
    let store = open(dir.path());
    assert_three_customers(&store, &ids).await;
    assert_erased_value_free(&store).await;
}

#[tokio::test]
async fn a_deleted_record_file_stops_the_open() {
    let (dir, _) = stopped_with_three_customers().await;
    std::fs::remove_dir_all(records_dir(dir.path())).unwrap();
    let err = refusal(dir.path());
    assert!(err.contains("records is missing or empty") && err.contains("refusing"), "{err}");
    assert!(!records_dir(dir.path()).exists(), "the refused open created nothing");
    let again = refusal(dir.path());
    assert!(again.contains("records is missing or empty"), "and refuses again: {again}");
}

const KILLED: &str = "record_file::acknowledged_records_survive_two_kill_9s";

#[tokio::test]
async fn acknowledged_records_survive_two_kill_9s() {
    if let (Ok(step), Ok(dir)) = (std::env::var("REVIEW_STEP"), std::env::var("REVIEW_DIR")) {
        let dir = PathBuf::from(dir);
        let store = open(&dir);
        if step == "1" {
            // Acknowledged writes, then kill -9 before the flusher's first run (it runs each
            // second): the records are in no file but the log.
            let ids = three_customers(&store).await;
            let ids: Vec<String> = ids.iter().map(|id| id.to_string()).collect();
            std::fs::write(dir.join("ids"), ids.join("\n")).unwrap();
        } else {
            // The replay's open persists what it replayed; one more acknowledged create, then a
            // flush (which deletes the log segments that hold it, so the record file must hold
            // it durably first) and a second kill -9.
            let extra = CustomerId::random();
            store.write(create(extra, 9)).await.unwrap();
            std::fs::write(dir.join("extra"), extra.to_string()).unwrap();
            store.close().await.unwrap();
        }
        std::process::abort();
    }
    let dir = tempfile::tempdir().unwrap();
    crash_child(KILLED, "1", dir.path());
    let ids: Vec<CustomerId> = std::fs::read_to_string(dir.path().join("ids"))
        .unwrap()
        .lines()
        .map(|l| l.parse().unwrap())
        .collect();
    crash_child(KILLED, "2", dir.path());
    let extra: CustomerId = std::fs::read_to_string(dir.path().join("extra")).unwrap().parse().unwrap();

    let store = open(dir.path());
    assert_eq!(store.customer(&extra).await.unwrap().map(|r| r.version), Some(1), "the second run's create");
    store.write(change(CustomerChange::Delete { id: extra, expected_version: 1 })).await.unwrap();
    assert_three_customers(&store, &ids).await;
    assert_erased_value_free(&store).await;
}

#[tokio::test]
async fn a_record_file_that_sled_has_no_mark_of_is_refused_not_replaced() {
    let (dir, _) = stopped_with_three_customers().await;
    {
        let db = open_sled_files(dir.path());
        db.open_tree("custodia").unwrap().remove(b"mrecords").unwrap().expect("marked");
        db.flush().unwrap();
    }
    let err = refusal(dir.path());
    assert!(err.contains("has no mark of them") && err.contains("refusing"), "{err}");
    assert_eq!(read_record_file(dir.path()).len(), 2, "the records are left as they were");
}

/// Puts the blind-index entries of the stopped store in `dir` into the layout of the version
/// before (one list of owner ids per entry, rewritten whole on every change, marked
/// `owners_built`), with a list for a value no record holds besides. `rolled_back`: as that
/// version leaves a store of this layout it ran on, the `index_layout` mark it does not know
/// kept.
fn to_layout_of_owner_lists(dir: &Path, rolled_back: bool) {
    let owners = read_index_owners(dir);
    let db = fjall::Database::builder(records_dir(dir)).open().unwrap();
    let keyspace = db.keyspace("owners", fjall::KeyspaceCreateOptions::default).unwrap();
    let meta = db.keyspace("meta", fjall::KeyspaceCreateOptions::default).unwrap();
    keyspace.clear().unwrap();
    let mut lists: std::collections::BTreeMap<Vec<u8>, Vec<u8>> = Default::default();
    for (entry, id) in owners {
        lists.entry(entry).or_default().extend_from_slice(id.as_bytes());
    }
    lists.insert([b"email\0".as_slice(), &[0xEE; 32]].concat(), CustomerId::random().as_bytes().to_vec());
    for (entry, ids) in lists {
        keyspace.insert(entry, ids).unwrap();
    }
    assert!(meta.get("index_layout").unwrap().is_some(), "a built store is marked");
    if !rolled_back {
        meta.remove("index_layout").unwrap();
    }
    meta.insert("owners_built", []).unwrap();
    db.persist(fjall::PersistMode::SyncAll).unwrap();
}

/// The `meta` keyspace's value under `name` in the record file of a stopped store in `dir`.
fn record_file_meta(dir: &Path, name: &str) -> Option<Vec<u8>> {
    read_keyspace(dir, "meta").into_iter().find(|(key, _)| key == name.as_bytes()).map(|(_, value)| value)
}

/// Upgraded from the layout of owner lists, or opened again after that version ran on the
/// store (a rollback): either way the entries are rebuilt from the records.
#[tokio::test]
async fn a_store_with_owner_lists_has_its_entries_rebuilt_from_the_records_on_open() {
    for rolled_back in [false, true] {
        let (dir, ids) = stopped_with_three_customers().await;
        to_layout_of_owner_lists(dir.path(), rolled_back);
        let store = open(dir.path());
        assert_three_customers(&store, &ids).await;
        assert_erased_value_free(&store).await;
        store.close().await.unwrap();
        drop(store);
        assert_eq!(record_file_meta(dir.path(), "index_layout"), Some(vec![2]), "{rolled_back}");
        assert_eq!(record_file_meta(dir.path(), "owners_built"), None);
        // The live customer's value and the one taken from the erased customer; the list no
        // record named is gone.
        let counts: Vec<_> = read_index_counts(dir.path()).into_iter().map(|(_, n, c)| (n, c)).collect();
        assert_eq!(counts, [(1, false), (1, false)], "{rolled_back}");
        assert_eq!(read_index_owners(dir.path()).len(), 2);
    }
}

#[tokio::test]
async fn a_record_that_does_not_decode_stops_the_build_naming_its_customer() {
    let (dir, _) = stopped_with_three_customers().await;
    let broken = CustomerId::random();
    {
        let db = fjall::Database::builder(records_dir(dir.path())).open().unwrap();
        let records = db.keyspace("records", fjall::KeyspaceCreateOptions::default).unwrap();
        let meta = db.keyspace("meta", fjall::KeyspaceCreateOptions::default).unwrap();
        records.insert(broken.as_bytes(), [0x80, 1, 2]).unwrap();
        meta.remove("index_layout").unwrap();
        db.persist(fjall::PersistMode::SyncAll).unwrap();
    }
    let err = refusal(dir.path());
    assert!(err.contains(&broken.to_string()) && err.contains("does not decode"), "{err}");
}

#[tokio::test]
async fn a_blind_index_layout_this_version_does_not_know_is_refused_and_left_alone() {
    let (dir, _) = stopped_with_three_customers().await;
    {
        let db = fjall::Database::builder(records_dir(dir.path())).open().unwrap();
        let meta = db.keyspace("meta", fjall::KeyspaceCreateOptions::default).unwrap();
        meta.insert("index_layout", [3]).unwrap();
        db.persist(fjall::PersistMode::SyncAll).unwrap();
    }
    let err = refusal(dir.path());
    assert!(err.contains("layout 3") && err.contains("refusing"), "{err}");
    assert_eq!(read_index_owners(dir.path()).len(), 1, "the entries are left as they were");
}

/// A value held by many costs one owner key each and one count, so a change writes the same
/// few bytes however many share it; the last owner leaving leaves nothing behind.
#[tokio::test]
async fn a_shared_value_is_a_count_and_a_key_per_owner_and_leaves_nothing_once_unowned() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let phone = IndexEntry { field: "phone".into(), index: [4; 32], unique: false, epoch: None };
    let sharers: Vec<CustomerId> = (0..300).map(|_| CustomerId::random()).collect();
    let creates = sharers.iter().map(|id| {
        change(CustomerChange::Put {
            record: Box::new(crate::record(*id, 1, vec![phone.clone()])),
            expected_version: None,
        })
    });
    for outcome in store.write_many(creates.collect()).await.unwrap() {
        outcome.unwrap();
    }
    store.close().await.unwrap();
    drop(store);
    let counts: Vec<_> = read_index_counts(dir.path()).into_iter().map(|(_, n, c)| (n, c)).collect();
    assert_eq!(counts, [(300, true)]);
    let mut owners: Vec<CustomerId> = read_index_owners(dir.path()).into_iter().map(|(_, id)| id).collect();
    let mut expected = sharers.clone();
    expected.sort();
    owners.sort();
    assert_eq!(owners, expected);

    let store = open(dir.path());
    let found = store.lookup("phone", &custodia::crypto::BlindIndex([4; 32])).await.unwrap();
    assert_eq!(found, expected, "every owner, ascending");
    let leaving = sharers.iter().map(|id| change(CustomerChange::Delete { id: *id, expected_version: 1 }));
    for outcome in store.write_many(leaving.collect()).await.unwrap() {
        outcome.unwrap();
    }
    assert!(store.lookup("phone", &custodia::crypto::BlindIndex([4; 32])).await.unwrap().is_empty());
    store.close().await.unwrap();
    drop(store);
    assert_eq!(read_keyspace(dir.path(), "owners"), vec![], "no count or owner key is left");
}

/// An entry names its one owner (one key) until a second joins, in its own group or the same
/// one; then it counts owner keys until its last owner leaves, and the lookups and unique
/// checks read either form.
#[tokio::test]
async fn an_entry_names_its_sole_owner_until_a_second_joins_then_counts_until_the_last_leaves() {
    use custodia::crypto::BlindIndex;
    let entry = |unique| IndexEntry { field: "phone".into(), index: [6; 32], unique, epoch: None };
    let put = |id, version, unique: bool, expected| {
        change(CustomerChange::Put {
            record: Box::new(crate::record(id, version, vec![entry(unique)])),
            expected_version: expected,
        })
    };
    // (owner count, counted, owner keys) of each entry.
    let layout = |dir: &Path| -> Vec<(u64, bool, usize)> {
        let keys = read_keyspace(dir, "owners");
        let owner_keys = keys.iter().filter(|(k, _)| k.len() > entry_len(k)).count();
        let entries = keys.iter().filter(|(k, _)| k.len() == entry_len(k));
        entries
            .map(|(_, value)| match value.len() {
                16 => (1, false, owner_keys),
                _ => (u64::from_be_bytes(value.as_slice().try_into().unwrap()), true, owner_keys),
            })
            .collect()
    };
    for same_group in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (CustomerId::random(), CustomerId::random());
        let store = open(dir.path());
        store.write(put(a, 1, false, None)).await.unwrap();
        if !same_group {
            store.close().await.unwrap();
            drop(store);
            assert_eq!(layout(dir.path()), [(1, false, 0)], "one owner: its id, no owner key");
            let store = open(dir.path());
            assert_eq!(store.lookup("phone", &BlindIndex([6; 32])).await.unwrap(), [a]);
            store.write(put(b, 1, false, None)).await.unwrap();
            store.close().await.unwrap();
        } else {
            // `a` leaves and joins again beside `b` within one group.
            let writes = vec![
                change(CustomerChange::Delete { id: a, expected_version: 1 }),
                put(b, 1, false, None),
                put(a, 1, false, None),
            ];
            for outcome in store.write_many(writes).await.unwrap() {
                outcome.unwrap();
            }
            store.close().await.unwrap();
            drop(store);
        }
        assert_eq!(layout(dir.path()), [(2, true, 2)], "same group: {same_group}");
        let store = open(dir.path());
        let mut both = vec![a, b];
        both.sort();
        assert_eq!(store.lookup("phone", &BlindIndex([6; 32])).await.unwrap(), both);
        store.write(change(CustomerChange::Delete { id: a, expected_version: 1 })).await.unwrap();
        assert_eq!(store.lookup("phone", &BlindIndex([6; 32])).await.unwrap(), [b]);
        // `b`, now alone, may hold the value uniquely; then no one else may take it.
        store.write(put(b, 2, true, Some(1))).await.unwrap();
        let err = store.write(put(CustomerId::random(), 1, true, None)).await.unwrap_err();
        assert!(matches!(err, custodia::store::StoreError::UniqueViolation { .. }), "{err:?}");
        store.close().await.unwrap();
        drop(store);
        assert_eq!(layout(dir.path()), [(1, true, 1)], "counted until the last leaves");
        let store = open(dir.path());
        store.write(change(CustomerChange::Delete { id: b, expected_version: 2 })).await.unwrap();
        assert!(store.lookup("phone", &BlindIndex([6; 32])).await.unwrap().is_empty());
        store.close().await.unwrap();
        drop(store);
        assert_eq!(read_keyspace(dir.path(), "owners"), vec![], "nothing is left");
    }
}

/// An entry that already names a customer whose record does not hold it (the index and the
/// records disagree) is reported as corruption when that customer joins it, not doubled.
#[tokio::test]
async fn an_entry_that_disagrees_with_its_customers_record_is_reported_not_doubled() {
    let dir = tempfile::tempdir().unwrap();
    let id = CustomerId::random();
    let store = open(dir.path());
    store
        .write(change(CustomerChange::Put {
            record: Box::new(crate::record(id, 1, vec![])),
            expected_version: None,
        }))
        .await
        .unwrap();
    store.close().await.unwrap();
    drop(store);
    {
        let db = fjall::Database::builder(records_dir(dir.path())).open().unwrap();
        let owners = db.keyspace("owners", fjall::KeyspaceCreateOptions::default).unwrap();
        owners.insert([b"phone\0".as_slice(), &[8; 32]].concat(), id.as_bytes()).unwrap();
        db.persist(fjall::PersistMode::SyncAll).unwrap();
    }
    let store = open(dir.path());
    let found = store.lookup("phone", &custodia::crypto::BlindIndex([8; 32])).await.unwrap();
    assert_eq!(found, [id], "the entry as stored");
    let entry = IndexEntry { field: "phone".into(), index: [8; 32], unique: false, epoch: None };
    let update = CustomerChange::Put {
        record: Box::new(crate::record(id, 2, vec![entry])),
        expected_version: Some(1),
    };
    let err = store.write(change(update)).await.unwrap_err();
    assert!(
        matches!(err, custodia::store::StoreError::Corrupt(ref what) if what.contains("disagrees")),
        "{err:?}"
    );
    assert_eq!(store.customer(&id).await.unwrap().map(|r| r.version), Some(1), "nothing was written");
}
