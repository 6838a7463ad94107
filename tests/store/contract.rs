//! The behaviour every `Store` backend must show.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use custodia::crypto::{BlindIndex, DataKey, MasterKey, MasterKeyring};
use custodia::domain::{CustomerId, Timestamp};
use custodia::store::{AuditAppend, Commit, CustomerChange, CustomerRecord, IndexEntry, Store, StoreError};

fn record(id: CustomerId, version: u64, entries: Vec<IndexEntry>) -> CustomerRecord {
    let ring = MasterKeyring::new(MasterKey::from_bytes(&[1; 32]).unwrap(), vec![]);
    CustomerRecord {
        id,
        version,
        data_key: ring.wrap_data_key(&id, &DataKey::generate().unwrap()).unwrap(),
        fields: BTreeMap::new(),
        index_entries: entries,
        consents: BTreeMap::new(),
        objections: BTreeSet::new(),
        restricted: false,
        payment_methods: vec![],
        created_at: Timestamp::now(),
        updated_at: Timestamp::now(),
    }
}

fn entry(field: &str, byte: u8, unique: bool) -> IndexEntry {
    IndexEntry { field: field.into(), index: [byte; 32], unique }
}

async fn append(store: &Arc<dyn Store>, change: Option<CustomerChange>) -> Result<u64, StoreError> {
    let seq = store.audit_size().await?;
    let event = format!("{{\"seq\":{seq}}}").into_bytes();
    store
        .commit(Commit {
            customer: change,
            audit: Some(AuditAppend { seq, event, customer: None, nodes: vec![(0, seq, [seq as u8; 32])] }),
        })
        .await?;
    Ok(seq)
}

fn put(r: CustomerRecord, expected: Option<u64>) -> Option<CustomerChange> {
    Some(CustomerChange::Put { record: Box::new(r), expected_version: expected })
}

pub async fn a_created_record_reads_back(store: Arc<dyn Store>) {
    let id = CustomerId::random();
    assert!(store.customer(&id).await.unwrap().is_none());
    append(&store, put(record(id, 1, vec![]), None)).await.unwrap();
    let back = store.customer(&id).await.unwrap().unwrap();
    assert_eq!(back.id, id);
    assert_eq!(back.version, 1);
}

pub async fn a_stale_version_is_a_conflict_and_writes_nothing(store: Arc<dyn Store>) {
    let id = CustomerId::random();
    append(&store, put(record(id, 1, vec![]), None)).await.unwrap();
    let size = store.audit_size().await.unwrap();
    // Creating an existing id, skipping a version, or updating from a stale version all fail.
    for (r, expected) in
        [(record(id, 1, vec![]), None), (record(id, 3, vec![]), Some(1)), (record(id, 2, vec![]), Some(0))]
    {
        let err = append(&store, put(r, expected)).await.unwrap_err();
        assert!(matches!(err, StoreError::VersionConflict), "{err:?}");
    }
    let delete = Some(CustomerChange::Delete { id, expected_version: 7 });
    assert!(matches!(append(&store, delete).await, Err(StoreError::VersionConflict)));
    assert_eq!(store.audit_size().await.unwrap(), size, "a rejected commit appends no event");
    append(&store, put(record(id, 2, vec![]), Some(1))).await.unwrap();
}

pub async fn unique_index_entries_belong_to_one_customer(store: Arc<dyn Store>) {
    let (a, b) = (CustomerId::random(), CustomerId::random());
    append(&store, put(record(a, 1, vec![entry("email", 1, true)]), None)).await.unwrap();
    let err = append(&store, put(record(b, 1, vec![entry("email", 1, true)]), None)).await.unwrap_err();
    assert!(matches!(err, StoreError::UniqueViolation { ref field } if field == "email"), "{err:?}");
    assert!(store.customer(&b).await.unwrap().is_none());
    // Non-unique entries may be shared.
    append(&store, put(record(b, 1, vec![entry("phone", 2, false)]), None)).await.unwrap();
    let c = CustomerId::random();
    append(&store, put(record(c, 1, vec![entry("phone", 2, false)]), None)).await.unwrap();
    let mut owners = store.lookup("phone", &BlindIndex([2; 32])).await.unwrap();
    owners.sort();
    let mut expected = vec![b, c];
    expected.sort();
    assert_eq!(owners, expected);
}

pub async fn index_entries_follow_updates_and_deletion(store: Arc<dyn Store>) {
    let id = CustomerId::random();
    append(&store, put(record(id, 1, vec![entry("email", 1, true)]), None)).await.unwrap();
    append(&store, put(record(id, 2, vec![entry("email", 9, true)]), Some(1))).await.unwrap();
    assert!(store.lookup("email", &BlindIndex([1; 32])).await.unwrap().is_empty());
    assert_eq!(store.lookup("email", &BlindIndex([9; 32])).await.unwrap(), vec![id]);
    append(&store, Some(CustomerChange::Delete { id, expected_version: 2 })).await.unwrap();
    assert!(store.customer(&id).await.unwrap().is_none());
    assert!(store.lookup("email", &BlindIndex([9; 32])).await.unwrap().is_empty());
    // The freed unique value can be taken by someone else.
    append(&store, put(record(CustomerId::random(), 1, vec![entry("email", 9, true)]), None)).await.unwrap();
}

pub async fn audit_appends_must_be_dense_and_read_back_in_order(store: Arc<dyn Store>) {
    for _ in 0..5 {
        append(&store, None).await.unwrap();
    }
    let bad = Commit {
        customer: None,
        audit: Some(AuditAppend { seq: 9, event: b"{}".to_vec(), customer: None, nodes: vec![] }),
    };
    assert!(matches!(store.commit(bad).await, Err(StoreError::AuditOutOfOrder { expected: 5, got: 9 })));
    let events = store.audit_events(2, 2).await.unwrap();
    assert_eq!(events, vec![(2, b"{\"seq\":2}".to_vec()), (3, b"{\"seq\":3}".to_vec())]);
    assert_eq!(store.audit_events(0, 100).await.unwrap().len(), 5);
    assert!(store.audit_events(5, 100).await.unwrap().is_empty());
}

pub async fn merkle_nodes_are_stored_with_their_leaf(store: Arc<dyn Store>) {
    append(&store, None).await.unwrap();
    assert_eq!(store.audit_node(0, 0).await.unwrap(), Some([0; 32]));
    assert_eq!(store.audit_node(0, 1).await.unwrap(), None);
}

pub async fn init_meta_keeps_the_first_value(store: Arc<dyn Store>) {
    assert_eq!(store.meta("k").await.unwrap(), None);
    assert_eq!(store.init_meta("k", b"first".to_vec()).await.unwrap(), b"first");
    assert_eq!(store.init_meta("k", b"second".to_vec()).await.unwrap(), b"first");
    assert_eq!(store.meta("k").await.unwrap(), Some(b"first".to_vec()));
}

pub async fn a_rewrap_commit_without_event_keeps_the_log_as_it_is(store: Arc<dyn Store>) {
    let id = CustomerId::random();
    append(&store, put(record(id, 1, vec![entry("email", 3, true)]), None)).await.unwrap();
    let size = store.audit_size().await.unwrap();
    store
        .commit(Commit { customer: put(record(id, 2, vec![entry("email", 3, true)]), Some(1)), audit: None })
        .await
        .unwrap();
    assert_eq!(store.audit_size().await.unwrap(), size);
    assert_eq!(store.customer(&id).await.unwrap().unwrap().version, 2);
    assert_eq!(store.lookup("email", &BlindIndex([3; 32])).await.unwrap(), vec![id]);
    store.put_meta("m", b"one".to_vec()).await.unwrap();
    store.put_meta("m", b"two".to_vec()).await.unwrap();
    assert_eq!(store.meta("m").await.unwrap(), Some(b"two".to_vec()));
}

pub async fn customer_history_and_id_listing_are_served_by_indexes(store: Arc<dyn Store>) {
    let (a, b) = (CustomerId::random(), CustomerId::random());
    for (i, who) in [a, b, a, a, b].iter().enumerate() {
        let seq = store.audit_size().await.unwrap();
        let appended = AuditAppend {
            seq,
            event: format!("{{\"n\":{i}}}").into_bytes(),
            customer: Some(*who),
            nodes: vec![],
        };
        store
            .commit(Commit {
                customer: put(record(*who, 1, vec![]), None).filter(|_| i < 2),
                audit: Some(appended),
            })
            .await
            .unwrap();
    }
    let history: Vec<u64> =
        store.audit_events_for_customer(&a, None, 10).await.unwrap().into_iter().map(|(s, _)| s).collect();
    assert_eq!(history, vec![0, 2, 3]);
    let after: Vec<u64> =
        store.audit_events_for_customer(&a, Some(0), 1).await.unwrap().into_iter().map(|(s, _)| s).collect();
    assert_eq!(after, vec![2]);
    let mut ids = store.customer_ids(None, 10).await.unwrap();
    let mut expected = vec![a, b];
    expected.sort();
    ids.sort();
    assert_eq!(ids, expected);
    let first = store.customer_ids(None, 1).await.unwrap();
    let rest = store.customer_ids(Some(first[0]), 10).await.unwrap();
    assert_eq!(rest.len(), 1);
    assert_ne!(rest[0], first[0]);
}

pub async fn sync_returns_after_commits(store: Arc<dyn Store>) {
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let store = Arc::clone(&store);
        tasks.push(tokio::spawn(async move { store.sync().await }));
    }
    for t in tasks {
        t.await.unwrap().unwrap();
    }
}

pub async fn checkpoints_are_kept_per_size_and_the_latest_is_found(store: Arc<dyn Store>) {
    assert_eq!(store.latest_checkpoint().await.unwrap(), None);
    // Big-endian keys: 256 sorts after 255 and 2 (a little-endian layout would get this wrong).
    for size in [2u64, 256, 255] {
        store.put_checkpoint(size, format!("note {size}").into_bytes()).await.unwrap();
    }
    store.sync().await.unwrap();
    assert_eq!(store.latest_checkpoint().await.unwrap(), Some((256, b"note 256".to_vec())));
    store.put_checkpoint(256, b"again".to_vec()).await.unwrap();
    assert_eq!(store.latest_checkpoint().await.unwrap(), Some((256, b"again".to_vec())));
    // Checkpoints are not audit events, metadata or customers.
    assert_eq!(store.audit_size().await.unwrap(), 0);
    assert!(store.audit_events(0, 10).await.unwrap().is_empty());
}
