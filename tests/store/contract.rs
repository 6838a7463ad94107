// The behaviour every `Store` backend must show. Included whole by `main.rs` into one module per
// backend, which provides `fixture()`: `None` when the backend's service is absent (the test
// then says it was skipped and returns).

use std::collections::BTreeSet;

use custodia::audit::merkle::{leaf_hash, node_hash};
use custodia::crypto::BlindIndex;
use custodia::domain::CustomerId;
use custodia::store::{CustomerChange, IndexEntry, MetaEquals, PendingEvent, StoreError, Write};

fn entry(field: &str, byte: u8, unique: bool) -> IndexEntry {
    IndexEntry { field: field.into(), index: [byte; 32], unique, epoch: None }
}

/// A pending event tagged `n`, about `customer`.
fn event(n: u64, customer: Option<CustomerId>) -> PendingEvent {
    let prefix = format!("{{\"n\":{n}").into_bytes();
    PendingEvent { prefix, time: "2026-11-30T12:00:00.000Z".into(), customer }
}

/// The leaf bytes of `event(n, _)` at `seq`.
fn leaf(n: u64, seq: u64) -> Vec<u8> {
    format!("{{\"n\":{n},\"seq\":{seq},\"time\":\"2026-11-30T12:00:00.000Z\"}}").into_bytes()
}

fn put(r: CustomerRecord, expected: Option<u64>) -> Option<CustomerChange> {
    Some(CustomerChange::Put { record: Box::new(r), expected_version: expected })
}

/// Writes `change` with one event; the event's seq.
async fn write(store: &Arc<dyn Store>, change: Option<CustomerChange>) -> Result<u64, StoreError> {
    let size = store.head().await?.size;
    let written = store.write(Write { need_seqs: true, precondition: None, change, events: vec![event(size, None)] }).await?;
    Ok(written.seqs[0])
}

async fn size(store: &Arc<dyn Store>) -> u64 {
    store.head().await.unwrap().size
}

#[tokio::test]
async fn a_created_record_reads_back_and_everything_survives_a_reopen() {
    let Some(fixture) = fixture() else { return };
    let store = fixture.open();
    let id = CustomerId::random();
    assert!(store.customer(&id).await.unwrap().is_none());
    write(&store, put(record(id, 1, vec![entry("email", 1, true)]), None)).await.unwrap();
    store.put_meta("m", b"v".to_vec()).await.unwrap();
    store.put_checkpoint(1, b"note".to_vec()).await.unwrap();
    let head = store.head().await.unwrap();
    store.close().await.unwrap();
    assert!(store.customer(&id).await.is_err() || store.write(Write::default()).await.is_err());
    drop(store);

    let store = fixture.open();
    let back = store.customer(&id).await.unwrap().unwrap();
    assert_eq!((back.id, back.version), (id, 1));
    assert_eq!(store.lookup("email", &BlindIndex([1; 32])).await.unwrap(), vec![id]);
    assert_eq!(store.head().await.unwrap(), head);
    assert_eq!(store.audit_events(0, 10).await.unwrap(), vec![(0, leaf(0, 0))]);
    assert_eq!(store.meta("m").await.unwrap(), Some(b"v".to_vec()));
    assert_eq!(store.latest_checkpoint().await.unwrap(), Some((1, b"note".to_vec())));
    // The log continues where it ended.
    assert_eq!(write(&store, None).await.unwrap(), 1);
}

#[tokio::test]
async fn a_stale_version_is_a_conflict_and_writes_nothing() {
    let Some(fixture) = fixture() else { return };
    let store = fixture.open();
    let id = CustomerId::random();
    write(&store, put(record(id, 1, vec![]), None)).await.unwrap();
    let before = size(&store).await;
    // Creating an existing id, skipping a version, or updating from a stale version all fail.
    for (r, expected) in
        [(record(id, 1, vec![]), None), (record(id, 3, vec![]), Some(1)), (record(id, 2, vec![]), Some(0))]
    {
        let err = write(&store, put(r, expected)).await.unwrap_err();
        assert!(matches!(err, StoreError::VersionConflict), "{err:?}");
    }
    let delete = Some(CustomerChange::Delete { id, expected_version: 7 });
    assert!(matches!(write(&store, delete).await, Err(StoreError::VersionConflict)));
    assert_eq!(size(&store).await, before, "a rejected write appends no event");
    write(&store, put(record(id, 2, vec![]), Some(1))).await.unwrap();
}

#[tokio::test]
async fn unique_index_entries_belong_to_one_customer_and_a_clash_appends_no_event() {
    let Some(fixture) = fixture() else { return };
    let store = fixture.open();
    let (a, b) = (CustomerId::random(), CustomerId::random());
    write(&store, put(record(a, 1, vec![entry("email", 1, true)]), None)).await.unwrap();
    let before = size(&store).await;
    let err = write(&store, put(record(b, 1, vec![entry("email", 1, true)]), None)).await.unwrap_err();
    assert!(matches!(err, StoreError::UniqueViolation { ref field } if field == "email"), "{err:?}");
    assert!(store.customer(&b).await.unwrap().is_none());
    assert_eq!(size(&store).await, before);
    // Non-unique entries may be shared.
    write(&store, put(record(b, 1, vec![entry("phone", 2, false)]), None)).await.unwrap();
    let c = CustomerId::random();
    write(&store, put(record(c, 1, vec![entry("phone", 2, false)]), None)).await.unwrap();
    let owners: BTreeSet<_> = store.lookup("phone", &BlindIndex([2; 32])).await.unwrap().into_iter().collect();
    assert_eq!(owners, BTreeSet::from([b, c]));
}

/// A value many customers share as a plain entry (a field made unique in the policies after
/// they stored it): each is found, a unique entry of it clashes for anyone, and once the
/// others have left, the last may hold it uniquely.
#[tokio::test]
async fn a_unique_entry_clashes_with_a_value_others_hold_as_plain_entries() {
    let Some(fixture) = fixture() else { return };
    let store = fixture.open();
    let sharers: Vec<CustomerId> = (0..40).map(|_| CustomerId::random()).collect();
    let creates = sharers.iter().map(|id| Write {
        change: put(record(*id, 1, vec![entry("phone", 5, false)]), None),
        ..Write::default()
    });
    for outcome in store.write_many(creates.collect()).await.unwrap() {
        outcome.unwrap();
    }
    let found: BTreeSet<_> = store.lookup("phone", &BlindIndex([5; 32])).await.unwrap().into_iter().collect();
    assert_eq!(found, sharers.iter().copied().collect());

    let before = size(&store).await;
    let newcomer = CustomerId::random();
    let err = write(&store, put(record(newcomer, 1, vec![entry("phone", 5, true)]), None)).await.unwrap_err();
    assert!(matches!(err, StoreError::UniqueViolation { ref field } if field == "phone"), "{err:?}");
    let err = write(&store, put(record(sharers[0], 2, vec![entry("phone", 5, true)]), Some(1))).await.unwrap_err();
    assert!(matches!(err, StoreError::UniqueViolation { ref field } if field == "phone"), "a sharer too: {err:?}");
    assert_eq!(size(&store).await, before, "a clash appends no event");
    assert!(store.customer(&newcomer).await.unwrap().is_none());

    let last = sharers[39];
    let leaving = sharers[..39].iter().map(|id| Write {
        change: Some(CustomerChange::Delete { id: *id, expected_version: 1 }),
        ..Write::default()
    });
    for outcome in store.write_many(leaving.collect()).await.unwrap() {
        outcome.unwrap();
    }
    assert_eq!(store.lookup("phone", &BlindIndex([5; 32])).await.unwrap(), vec![last]);
    write(&store, put(record(last, 2, vec![entry("phone", 5, true)]), Some(1))).await.unwrap();
    let err = write(&store, put(record(newcomer, 1, vec![entry("phone", 5, true)]), None)).await.unwrap_err();
    assert!(matches!(err, StoreError::UniqueViolation { .. }), "{err:?}");
    assert_eq!(store.lookup("phone", &BlindIndex([5; 32])).await.unwrap(), vec![last]);
}

#[tokio::test]
async fn index_entries_follow_updates_and_deletion() {
    let Some(fixture) = fixture() else { return };
    let store = fixture.open();
    let id = CustomerId::random();
    write(&store, put(record(id, 1, vec![entry("email", 1, true)]), None)).await.unwrap();
    write(&store, put(record(id, 2, vec![entry("email", 9, true)]), Some(1))).await.unwrap();
    assert!(store.lookup("email", &BlindIndex([1; 32])).await.unwrap().is_empty());
    assert_eq!(store.lookup("email", &BlindIndex([9; 32])).await.unwrap(), vec![id]);
    write(&store, Some(CustomerChange::Delete { id, expected_version: 2 })).await.unwrap();
    assert!(store.customer(&id).await.unwrap().is_none());
    assert!(store.lookup("email", &BlindIndex([9; 32])).await.unwrap().is_empty());
    // The freed unique value can be taken by someone else.
    write(&store, put(record(CustomerId::random(), 1, vec![entry("email", 9, true)]), None)).await.unwrap();
}

#[tokio::test]
async fn two_writers_on_one_expected_version_exactly_one_wins() {
    let Some(fixture) = fixture() else { return };
    let store = fixture.open();
    let id = CustomerId::random();
    write(&store, put(record(id, 1, vec![]), None)).await.unwrap();
    let before = size(&store).await;
    let tasks: Vec<_> = (0..16)
        .map(|_| {
            let store = Arc::clone(&store);
            tokio::spawn(async move { write(&store, put(record(id, 2, vec![]), Some(1))).await })
        })
        .collect();
    let mut won = 0;
    for task in tasks {
        match task.await.unwrap() {
            Ok(_) => won += 1,
            Err(StoreError::VersionConflict) => {}
            Err(e) => panic!("{e:?}"),
        }
    }
    assert_eq!(won, 1);
    assert_eq!(size(&store).await, before + 1, "only the winner's event is in the log");
}

#[tokio::test]
async fn two_creates_racing_for_one_unique_value_one_wins() {
    let Some(fixture) = fixture() else { return };
    let store = fixture.open();
    // Each has a unique email of its own and the same unique phone: the clash names `phone`.
    let tasks: Vec<_> = (0..16u8)
        .map(|n| {
            let store = Arc::clone(&store);
            let r = record(CustomerId::random(), 1, vec![entry("email", 100 + n, true), entry("phone", 7, true)]);
            tokio::spawn(async move { write(&store, put(r, None)).await })
        })
        .collect();
    let mut won = 0;
    for task in tasks {
        match task.await.unwrap() {
            Ok(_) => won += 1,
            Err(StoreError::UniqueViolation { field }) => assert_eq!(field, "phone"),
            Err(e) => panic!("{e:?}"),
        }
    }
    assert_eq!(won, 1);
    assert_eq!(store.lookup("phone", &BlindIndex([7; 32])).await.unwrap().len(), 1);
    assert_eq!(size(&store).await, 1);
}

#[tokio::test]
async fn concurrent_writes_get_dense_distinct_seqs_and_read_back_in_order() {
    let Some(fixture) = fixture() else { return };
    let store = fixture.open();
    let tasks: Vec<_> = (0..64)
        .map(|n| {
            let store = Arc::clone(&store);
            tokio::spawn(async move {
                let events = vec![event(n, None), event(n, None)];
                store.write(Write { need_seqs: true, precondition: None, change: None, events }).await.unwrap().seqs
            })
        })
        .collect();
    let mut seqs = Vec::new();
    for task in tasks {
        let mine = task.await.unwrap();
        assert_eq!(mine.len(), 2);
        assert_eq!(mine[1], mine[0] + 1, "one write's events are adjacent");
        seqs.extend(mine);
    }
    seqs.sort_unstable();
    assert_eq!(seqs, (0..128).collect::<Vec<_>>());
    let events = store.audit_events(0, 1000).await.unwrap();
    assert_eq!(events.len(), 128);
    assert!(events.iter().enumerate().all(|(i, (seq, _))| *seq == i as u64));
    assert_eq!(store.audit_events(126, 10).await.unwrap().len(), 2);
    assert!(store.audit_events(128, 10).await.unwrap().is_empty());
}

#[tokio::test]
async fn leaves_and_interior_merkle_nodes_are_stored_and_the_head_matches_them() {
    let Some(fixture) = fixture() else { return };
    let store = fixture.open();
    store.write(Write { need_seqs: true, precondition: None, change: None, events: (0..5).map(|n| event(n, None)).collect() }).await.unwrap();
    let leaves: Vec<_> = (0..5).map(|n| leaf_hash(&leaf(n, n))).collect();
    let ids = [(0, 0), (0, 4), (0, 5), (1, 0), (1, 1), (1, 2), (2, 0), (2, 1), (3, 0)];
    let nodes = store.nodes(&ids).await.unwrap();
    let n01 = node_hash(&leaves[0], &leaves[1]);
    let n23 = node_hash(&leaves[2], &leaves[3]);
    assert_eq!(
        nodes,
        vec![
            Some(leaves[0]),
            Some(leaves[4]),
            None,
            Some(n01),
            Some(n23),
            None,
            Some(node_hash(&n01, &n23)),
            None,
            None,
        ]
    );
    let head = store.head().await.unwrap();
    assert_eq!(head.size, 5);
    assert_eq!(head.roots, vec![node_hash(&n01, &n23), leaves[4]]);
}

#[tokio::test]
async fn independent_writes_in_one_batch_have_their_own_outcomes() {
    let Some(fixture) = fixture() else { return };
    let store = fixture.open();
    let id = CustomerId::random();
    let outcomes = store
        .write_many(vec![
            Write { need_seqs: true, precondition: None, change: put(record(id, 1, vec![]), None), events: vec![event(0, Some(id))] },
            Write { need_seqs: true, precondition: None, change: put(record(id, 1, vec![]), None), events: vec![event(1, Some(id))] },
            Write { need_seqs: true, precondition: None, change: put(record(id, 2, vec![]), Some(1)), events: vec![event(2, Some(id))] },
            Write { need_seqs: true, precondition: None, change: None, events: vec![] },
        ])
        .await
        .unwrap();
    assert_eq!(outcomes[0].as_ref().unwrap().seqs, vec![0]);
    assert!(matches!(outcomes[1], Err(StoreError::VersionConflict)));
    assert_eq!(outcomes[2].as_ref().unwrap().seqs, vec![1], "a later write sees the earlier ones");
    assert!(outcomes[3].as_ref().unwrap().seqs.is_empty());
    assert_eq!(store.customer(&id).await.unwrap().unwrap().version, 2);
    assert_eq!(store.audit_events(0, 10).await.unwrap(), vec![(0, leaf(0, 0)), (1, leaf(2, 1))]);
}

#[tokio::test]
async fn a_meta_precondition_commits_only_while_the_value_holds_and_a_mismatch_writes_nothing() {
    let Some(fixture) = fixture() else { return };
    let store = fixture.open();
    let guard = |value: Option<&[u8]>| Some(MetaEquals { name: "fence".into(), value: value.map(<[u8]>::to_vec) });
    let (a, b) = (CustomerId::random(), CustomerId::random());
    // Absent, and asked to be absent: commits.
    let w = Write { need_seqs: true, precondition: guard(None), change: put(record(a, 1, vec![]), None), events: vec![event(0, None)] };
    assert_eq!(store.write(w).await.unwrap().seqs, vec![0]);
    store.put_meta("fence", b"one".to_vec()).await.unwrap();
    // A stale value (absent, or another one): refused, naming the value; nothing written, not
    // even the event, in a single write or inside a batch beside one that holds.
    for stale in [None, Some(&b"two"[..])] {
        let w = Write { need_seqs: true, precondition: guard(stale), change: put(record(b, 1, vec![]), None), events: vec![event(1, None)] };
        let err = store.write(w).await.unwrap_err();
        assert!(matches!(&err, StoreError::PreconditionFailed { name } if name == "fence"), "{err:?}");
    }
    let batch = vec![
        Write { need_seqs: true, precondition: guard(Some(b"two")), change: put(record(b, 1, vec![]), None), events: vec![] },
        Write { need_seqs: true, precondition: guard(Some(b"one")), change: put(record(a, 2, vec![]), Some(1)), events: vec![] },
    ];
    let outcomes = store.write_many(batch).await.unwrap();
    assert!(matches!(outcomes[0], Err(StoreError::PreconditionFailed { .. })), "{:?}", outcomes[0]);
    assert!(outcomes[1].is_ok(), "{:?}", outcomes[1]);
    assert!(store.customer(&b).await.unwrap().is_none());
    assert_eq!(store.customer(&a).await.unwrap().unwrap().version, 2);
    assert_eq!(size(&store).await, 1);
    // The current value: commits.
    let w = Write { need_seqs: true, precondition: guard(Some(b"one")), change: put(record(b, 1, vec![]), None), events: vec![event(1, None)] };
    assert_eq!(store.write(w).await.unwrap().seqs, vec![1]);
}

#[tokio::test]
async fn meta_values_are_kept_first_or_replaced_as_asked() {
    let Some(fixture) = fixture() else { return };
    let store = fixture.open();
    assert_eq!(store.meta("k").await.unwrap(), None);
    assert_eq!(store.init_meta("k", b"first".to_vec()).await.unwrap(), b"first");
    assert_eq!(store.init_meta("k", b"second".to_vec()).await.unwrap(), b"first");
    assert_eq!(store.meta("k").await.unwrap(), Some(b"first".to_vec()));
    store.put_meta("m", b"one".to_vec()).await.unwrap();
    store.put_meta("m", b"two".to_vec()).await.unwrap();
    assert_eq!(store.meta("m").await.unwrap(), Some(b"two".to_vec()));
}

fn holds(name: &str, value: Option<&[u8]>) -> MetaEquals {
    MetaEquals { name: name.into(), value: value.map(<[u8]>::to_vec) }
}

/// `swap_meta` changes a value only from the one the caller names (absent included), and of two
/// callers racing from the same value exactly one wins; the winner's value survives a reopen.
#[tokio::test]
async fn a_meta_value_is_swapped_only_from_the_value_the_caller_saw() {
    let Some(fixture) = fixture() else { return };
    let store = fixture.open();
    assert!(store.swap_meta(holds("s", None), b"a".to_vec()).await.unwrap(), "absent, as expected");
    assert!(!store.swap_meta(holds("s", None), b"b".to_vec()).await.unwrap(), "no longer absent");
    assert!(!store.swap_meta(holds("s", Some(b"x")), b"b".to_vec()).await.unwrap());
    assert!(!store.swap_meta(holds("s", Some(b"")), b"b".to_vec()).await.unwrap(), "empty is not absent");
    assert_eq!(store.meta("s").await.unwrap(), Some(b"a".to_vec()));
    assert!(store.swap_meta(holds("s", Some(b"a")), Vec::new()).await.unwrap());
    assert_eq!(store.meta("s").await.unwrap(), Some(Vec::new()));

    let mut racers = Vec::new();
    for n in 0..8u8 {
        let store = Arc::clone(&store);
        racers.push(tokio::spawn(async move { store.swap_meta(holds("s", Some(b"")), vec![n]).await.unwrap() }));
    }
    let mut winners = Vec::new();
    for (n, racer) in racers.into_iter().enumerate() {
        if racer.await.unwrap() {
            winners.push(n as u8);
        }
    }
    assert_eq!(winners.len(), 1, "exactly one swap from the same value wins: {winners:?}");
    assert_eq!(store.meta("s").await.unwrap(), Some(winners.clone()));
    store.close().await.unwrap();
    drop(store);
    assert_eq!(fixture.open().meta("s").await.unwrap(), Some(winners));
}

/// `import` (store copy, restore): the record as it is, version and index entries kept, no
/// event; refused for a customer already held or a unique value another customer holds; the
/// imported record then takes ordinary writes and survives a reopen.
#[tokio::test]
async fn an_imported_record_keeps_its_version_and_index_without_an_event() {
    let Some(fixture) = fixture() else { return };
    let store = fixture.open();
    let (id, other) = (CustomerId::random(), CustomerId::random());
    store.import(record(id, 7, vec![entry("email", 9, true)])).await.unwrap();
    assert_eq!(size(&store).await, 0, "an import appends no event");
    assert_eq!(store.customer(&id).await.unwrap().map(|r| r.version), Some(7));
    assert_eq!(store.lookup("email", &BlindIndex([9; 32])).await.unwrap(), vec![id]);
    assert!(matches!(
        store.import(record(id, 1, vec![])).await,
        Err(StoreError::VersionConflict)
    ));
    assert!(matches!(
        store.import(record(other, 1, vec![entry("email", 9, true)])).await,
        Err(StoreError::UniqueViolation { .. })
    ));
    assert!(store.customer(&other).await.unwrap().is_none());
    write(&store, put(record(id, 8, vec![entry("email", 10, true)]), Some(7))).await.unwrap();
    store.close().await.unwrap();
    drop(store);
    let store = fixture.open();
    assert_eq!(store.customer(&id).await.unwrap().map(|r| r.version), Some(8));
    assert_eq!(store.lookup("email", &BlindIndex([10; 32])).await.unwrap(), vec![id]);
}

#[tokio::test]
async fn a_rewrap_write_without_events_keeps_the_log_as_it_is() {
    let Some(fixture) = fixture() else { return };
    let store = fixture.open();
    let id = CustomerId::random();
    write(&store, put(record(id, 1, vec![entry("email", 3, true)]), None)).await.unwrap();
    let head = store.head().await.unwrap();
    let written = store
        .write(Write { need_seqs: true, precondition: None, change: put(record(id, 2, vec![entry("email", 3, true)]), Some(1)), events: vec![] })
        .await
        .unwrap();
    assert!(written.seqs.is_empty());
    assert_eq!(store.head().await.unwrap(), head);
    assert_eq!(store.customer(&id).await.unwrap().unwrap().version, 2);
    assert_eq!(store.lookup("email", &BlindIndex([3; 32])).await.unwrap(), vec![id]);
}

#[tokio::test]
async fn customer_history_is_served_by_an_index_and_outlives_erasure() {
    let Some(fixture) = fixture() else { return };
    let store = fixture.open();
    let (a, b) = (CustomerId::random(), CustomerId::random());
    for (i, who) in [a, b, a, a, b].iter().enumerate() {
        let change = put(record(*who, 1, vec![]), None).filter(|_| i < 2);
        store.write(Write { need_seqs: true, precondition: None, change, events: vec![event(i as u64, Some(*who))] }).await.unwrap();
    }
    let seqs = |events: Vec<(u64, Vec<u8>)>| events.into_iter().map(|(s, _)| s).collect::<Vec<_>>();
    assert_eq!(seqs(store.audit_events_for_customer(&a, None, 10).await.unwrap()), vec![0, 2, 3]);
    assert_eq!(seqs(store.audit_events_for_customer(&a, Some(0), 1).await.unwrap()), vec![2]);
    assert_eq!(store.audit_events_for_customer(&b, None, 10).await.unwrap()[1], (4, leaf(4, 4)));
    // Erasure removes the record, never the log: the history names the erasure too.
    let erase = Some(CustomerChange::Delete { id: a, expected_version: 1 });
    store.write(Write { need_seqs: true, precondition: None, change: erase, events: vec![event(5, Some(a))] }).await.unwrap();
    assert!(store.customer(&a).await.unwrap().is_none());
    assert_eq!(seqs(store.audit_events_for_customer(&a, None, 10).await.unwrap()), vec![0, 2, 3, 5]);
    // And across a reopen (history rows may be in the backend or rebuilt from the log).
    store.close().await.unwrap();
    drop(store);
    let store = fixture.open();
    assert_eq!(seqs(store.audit_events_for_customer(&a, None, 10).await.unwrap()), vec![0, 2, 3, 5]);
    assert_eq!(seqs(store.audit_events_for_customer(&b, None, 10).await.unwrap()), vec![1, 4]);

    let ids: BTreeSet<_> = store.customer_ids(None, 10).await.unwrap().into_iter().collect();
    assert_eq!(ids, BTreeSet::from([b]));
}

#[tokio::test]
async fn customer_ids_are_listed_in_pages() {
    let Some(fixture) = fixture() else { return };
    let store = fixture.open();
    for _ in 0..3 {
        write(&store, put(record(CustomerId::random(), 1, vec![]), None)).await.unwrap();
    }
    let first = store.customer_ids(None, 2).await.unwrap();
    let rest = store.customer_ids(Some(first[1]), 10).await.unwrap();
    assert_eq!(first.len(), 2);
    assert_eq!(rest.len(), 1);
    assert!(first[0] < first[1] && first[1] < rest[0]);
}

#[tokio::test]
async fn checkpoints_are_insert_if_absent_and_the_latest_is_found() {
    let Some(fixture) = fixture() else { return };
    let store = fixture.open();
    assert_eq!(store.latest_checkpoint().await.unwrap(), None);
    // Big-endian keys: 256 sorts after 255 and 2 (a little-endian layout would get this wrong).
    for size in [2u64, 256, 255] {
        let note = format!("note {size}").into_bytes();
        assert_eq!(store.put_checkpoint(size, note.clone()).await.unwrap(), note);
    }
    assert_eq!(store.latest_checkpoint().await.unwrap(), Some((256, b"note 256".to_vec())));
    // A second note for a stored size is not kept: the caller sees what is stored (a fork).
    assert_eq!(store.put_checkpoint(256, b"forged".to_vec()).await.unwrap(), b"note 256");
    assert_eq!(store.latest_checkpoint().await.unwrap(), Some((256, b"note 256".to_vec())));
    // Checkpoints are not audit events, metadata or customers.
    assert_eq!(size(&store).await, 0);
    assert!(store.audit_events(0, 10).await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_racing_key_rewraps_and_erasures_sees_the_old_or_new_record_never_an_error() {
    let Some(fixture) = fixture() else { return };
    let store = fixture.open();
    let ids: Vec<CustomerId> = (0..4).map(|_| CustomerId::random()).collect();
    for id in &ids {
        write(&store, put(record(*id, 1, vec![]), None)).await.unwrap();
    }
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader = {
        let (store, stop, ids) = (Arc::clone(&store), Arc::clone(&stop), ids.clone());
        tokio::spawn(async move {
            let mut reads = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                for id in &ids {
                    // Some(record) or, once erased, None: never an error.
                    store.customer(id).await.unwrap();
                    reads += 1;
                }
                tokio::task::yield_now().await;
            }
            reads
        })
    };
    // A re-wrap is a new data key wrapping each time: sled writes a new key slot, destroys the
    // old one and reuses it for the next customer's change.
    for version in 1..400u64 {
        let writes = ids
            .iter()
            .map(|id| Write { need_seqs: true, precondition: None, change: put(record(*id, version + 1, vec![]), Some(version)), events: vec![] })
            .collect();
        for outcome in store.write_many(writes).await.unwrap() {
            outcome.unwrap();
        }
    }
    for id in &ids[..2] {
        let change = Some(CustomerChange::Delete { id: *id, expected_version: 400 });
        write(&store, change).await.unwrap();
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    assert!(reader.await.unwrap() > 0);
    assert!(store.customer(&ids[0]).await.unwrap().is_none());
    assert_eq!(store.customer(&ids[3]).await.unwrap().unwrap().version, 400);
}
