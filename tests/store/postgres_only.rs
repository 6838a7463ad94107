//! What only the PostgreSQL backend has: TLS to the database, several nodes on one database
//! (one sequencer, takeover), migration, erasure of the rows themselves, an unreachable server.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use custodia::audit::tree::Tree;
use custodia::domain::CustomerId;
use custodia::store::{
    CustomerChange, PendingEvent, PostgresSettings, StorageSettings, Store, StoreError, Write,
};
use secrecy::SecretString;

use super::pg::Database;
use super::{create_with_two_entries, record};

fn open(settings: &PostgresSettings) -> Arc<dyn Store> {
    custodia::store::open(&StorageSettings::Postgres(settings.clone()), Arc::new(Tree)).unwrap()
}

fn event(customer: Option<CustomerId>) -> PendingEvent {
    PendingEvent { prefix: b"{\"n\":1".to_vec(), time: "2026-11-30T12:00:00.000Z".into(), customer }
}

/// `url` with `sslmode=disable` replaced by `mode`.
fn ssl_mode(url: &str, mode: &str) -> String {
    url.replace("sslmode=disable", &format!("sslmode={mode}"))
}

#[tokio::test]
async fn sslmode_require_connects_over_tls_verified_against_the_configured_ca() {
    let Some(db) = Database::create() else { return };
    let Ok(ca) = std::env::var("CUSTODIA_TEST_DATABASE_CA") else {
        assert!(std::env::var("CUSTODIA_REQUIRE_POSTGRES").is_err(), "CUSTODIA_TEST_DATABASE_CA is not set");
        println!("skipped: CUSTODIA_TEST_DATABASE_CA not set (a server without TLS)");
        return;
    };
    let mut settings = db.settings();
    settings.url = SecretString::from(ssl_mode(&db.url, "require"));
    settings.ca_file = Some(ca.into());
    let store = open(&settings);
    store.put_meta("m", b"v".to_vec()).await.unwrap();
    let tls = db.number(
        "SELECT count(*) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) \
         WHERE a.application_name = current_setting('application_name') AND s.ssl",
    );
    assert!(tls.unwrap() >= 1, "the store's sessions use TLS");
    // No plain session but the query's own. The helper's earlier queries (plain, same
    // application name) end as their clients disconnect, which the server sees a moment
    // later; the store's pooled sessions stay, so a plain one of them would still be counted.
    let plain_sessions = || {
        db.number(
            "SELECT count(*) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) \
             WHERE a.application_name = current_setting('application_name') AND NOT s.ssl AND a.pid <> pg_backend_pid()",
        )
    };
    let mut plain = plain_sessions();
    for _ in 0..50 {
        if plain == Some(0) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        plain = plain_sessions();
    }
    assert_eq!(plain, Some(0));
    store.close().await.unwrap();

    // A certificate the client does not trust (the system's roots) is refused: no fallback to
    // plain text, and the error names no password.
    let mut untrusted = db.settings();
    untrusted.url =
        SecretString::from(ssl_mode(&db.url, "require").replace("custodia@", "custodia:hunter2@"));
    let store = open(&untrusted);
    let err = store.meta("m").await.unwrap_err();
    assert!(matches!(err, StoreError::Unavailable(_)), "{err:?}");
    assert!(!err.to_string().contains("hunter2"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_on_one_database_share_one_log_and_one_sequencer_and_the_other_takes_over() {
    let Some(db) = Database::create() else { return };
    let (a, b) = (open(&db.settings()), open(&db.settings()));
    let mut tasks = Vec::new();
    for node in [&a, &b] {
        for _ in 0..16 {
            let node = Arc::clone(node);
            tasks.push(tokio::spawn(async move {
                let id = CustomerId::random();
                let change = Some(CustomerChange::Put {
                    record: Box::new(record(id, 1, vec![])),
                    expected_version: None,
                });
                let written = node
                    .write(Write {
                        need_seqs: true,
                        precondition: None,
                        change,
                        events: vec![event(Some(id)), event(Some(id))],
                    })
                    .await
                    .unwrap();
                (id, written.seqs)
            }));
        }
    }
    let mut seqs = BTreeSet::new();
    let mut ids = Vec::new();
    for task in tasks {
        let (id, mine) = task.await.unwrap();
        assert_eq!(mine[1], mine[0] + 1, "one write's events are adjacent");
        seqs.extend(mine);
        ids.push(id);
    }
    assert_eq!(seqs, (0..64).collect(), "both nodes' events in one dense log");
    // Each node reads every write, whichever node made it.
    for id in &ids {
        assert!(a.customer(id).await.unwrap().is_some() && b.customer(id).await.unwrap().is_some());
    }
    assert_eq!(a.head().await.unwrap(), b.head().await.unwrap());
    assert_eq!(db.number("SELECT count(*) FROM pending_events"), Some(0));

    // Whichever node sequences goes away; the other integrates from then on.
    a.close().await.unwrap();
    drop(a);
    let written = tokio::time::timeout(
        Duration::from_secs(10),
        b.write(Write { need_seqs: true, precondition: None, change: None, events: vec![event(None)] }),
    )
    .await
    .expect("the surviving node integrates within seconds")
    .unwrap();
    assert_eq!(written.seqs, vec![64]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migration_is_idempotent_and_safe_when_nodes_start_at_once() {
    let Some(db) = Database::create() else { return };
    let settings = db.settings();
    let runs: Vec<_> = (0..4)
        .map(|_| {
            let settings = settings.clone();
            tokio::spawn(async move { custodia::store::migrate_postgres(&settings).await })
        })
        .collect();
    let mut fresh = 0;
    for run in runs {
        let (found, now) = run.await.unwrap().unwrap();
        assert_eq!(now, 1);
        fresh += usize::from(found == 0);
    }
    assert_eq!(fresh, 1, "exactly one run migrated; the others found it done");
    assert_eq!(db.number("SELECT count(*) FROM schema_version"), Some(1));
    assert_eq!(custodia::store::migrate_postgres(&settings).await.unwrap(), (1, 1));
    // A node opening the migrated database works at once.
    let store = open(&settings);
    assert_eq!(store.head().await.unwrap().size, 0);
}

#[tokio::test]
async fn erasure_deletes_the_record_row_with_its_data_key_and_every_index_row() {
    let Some(db) = Database::create() else { return };
    let store = open(&db.settings());
    let id = CustomerId::random();
    let change = create_with_two_entries(id);
    store
        .write(Write { need_seqs: true, precondition: None, change, events: vec![event(Some(id))] })
        .await
        .unwrap();
    let hex = id.as_bytes().iter().map(|b| format!("{b:02x}")).collect::<String>();
    let rows = |table: &str, column: &str| {
        db.number(&format!("SELECT count(*) FROM {table} WHERE {column} = '\\x{hex}'::bytea"))
    };
    assert_eq!((rows("customers", "id"), rows("index_entries", "customer")), (Some(1), Some(2)));
    let erase = Some(CustomerChange::Delete { id, expected_version: 1 });
    store
        .write(Write { need_seqs: true, precondition: None, change: erase, events: vec![event(Some(id))] })
        .await
        .unwrap();
    assert_eq!((rows("customers", "id"), rows("index_entries", "customer")), (Some(0), Some(0)));
    assert_eq!(rows("customer_history", "customer"), Some(2), "the log keeps the history");
}

#[tokio::test]
async fn an_unreachable_database_is_unavailable_within_the_connect_timeout() {
    let settings = PostgresSettings {
        // A port nothing listens on (the discard port, closed on test machines).
        url: SecretString::from(
            "postgres://custodia:hunter2@127.0.0.1:9/custodia?sslmode=disable".to_owned(),
        ),
        pool_size: 2,
        connect_timeout: Duration::from_millis(500),
        ca_file: None,
        request_timeout: Duration::from_secs(10),
    };
    let store = open(&settings);
    let started = std::time::Instant::now();
    let err = store.customer(&CustomerId::random()).await.unwrap_err();
    assert!(matches!(err, StoreError::Unavailable(_)), "{err:?}");
    assert!(!err.to_string().contains("hunter2"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(10));
}

#[tokio::test]
async fn one_node_at_a_time_holds_a_sweeps_turn() {
    let Some(db) = Database::create() else { return };
    let (a, b) = (open(&db.settings()), open(&db.settings()));
    let turn = a.exclusive("retention").await.unwrap();
    assert!(turn.is_some());
    assert!(b.exclusive("retention").await.unwrap().is_none(), "the other node waits its turn");
    assert!(b.exclusive("epochs").await.unwrap().is_some(), "each sweep has its own turn");
    drop(turn);
    let mut taken = false;
    for _ in 0..50 {
        if b.exclusive("retention").await.unwrap().is_some() {
            taken = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(taken, "a released turn is taken by the other node");
}

/// Review 14, finding 5: a turn whose session ended (an operator's `pg_terminate_backend`, a
/// database restart) is free for another node at once, so the node that held it must learn it
/// has lost it before its next step ([`Turn::held`]).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_turn_whose_session_ended_is_no_longer_held_and_goes_to_the_other_node() {
    let Some(db) = Database::create() else { return };
    let (a, b) = (open(&db.settings()), open(&db.settings()));
    let turn = a.exclusive("epochs").await.unwrap().expect("a takes the turn");
    assert!(turn.held());
    assert!(b.exclusive("epochs").await.unwrap().is_none());
    let ended = db.number(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = \
         current_setting('application_name') AND pid <> pg_backend_pid() AND query LIKE '%pg_try_advisory_lock%'",
    );
    // The turn's session, and perhaps `b`'s refused attempt's session on its way out.
    assert!(ended.is_some_and(|n| n >= 1), "the turn's session is found and ended: {ended:?}");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while turn.held() {
        assert!(std::time::Instant::now() < deadline, "the ended session is noticed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(b.exclusive("epochs").await.unwrap().is_some(), "the other node takes the turn");
}

/// The sessions of this test's schema whose last statement was a `LISTEN` on the integration
/// channel: each node's listening session.
fn listening_sessions(db: &Database) -> Option<i64> {
    db.number(
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = current_setting('application_name') \
         AND query LIKE 'LISTEN custodia_seq_%'",
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_answer_at_commit_unless_they_need_seqs_and_waiters_work_with_or_without_notices() {
    let Some(db) = Database::create() else { return };
    let (a, b) = (open(&db.settings()), open(&db.settings()));
    a.put_meta("m", b"v".to_vec()).await.unwrap();
    b.put_meta("m", b"v".to_vec()).await.unwrap();
    // Each node keeps one listening session.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while listening_sessions(&db) != Some(2) {
        assert!(
            std::time::Instant::now() < deadline,
            "two listening sessions: {:?}",
            listening_sessions(&db)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let write = |need_seqs| Write { need_seqs, precondition: None, change: None, events: vec![event(None)] };
    // Without need_seqs: no seqs, yet every log reader on either node then shows the event.
    for (n, store) in [&a, &b].into_iter().enumerate() {
        assert_eq!(store.write(write(false)).await.unwrap().seqs, Vec::<u64>::new());
        assert_eq!(a.head().await.unwrap().size, n as u64 + 1);
        assert_eq!(b.audit_events(0, 10).await.unwrap().len(), n + 1);
    }
    // With need_seqs, from both nodes (one of them does not sequence: it waits on the notice).
    assert_eq!(a.write(write(true)).await.unwrap().seqs, vec![2]);
    assert_eq!(b.write(write(true)).await.unwrap().seqs, vec![3]);
    // Without their listening sessions (terminated), waiters fall back to polling.
    db.number(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
         WHERE application_name = current_setting('application_name') AND query LIKE 'LISTEN custodia_seq_%'",
    );
    assert_eq!(a.write(write(true)).await.unwrap().seqs, vec![4]);
    assert_eq!(b.write(write(true)).await.unwrap().seqs, vec![5]);
    // And the sessions come back.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while listening_sessions(&db) != Some(2) {
        assert!(std::time::Instant::now() < deadline, "the listening sessions are back");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    a.close().await.unwrap();
    b.close().await.unwrap();
}
