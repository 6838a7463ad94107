//! The PostgreSQL backend against the attacks of the review of issue 14: a server (or anyone on
//! the path) that refuses TLS and asks for a clear-text password, a pooler that drops startup
//! options under a role whose default is `synchronous_commit = off`, and functions planted
//! where the session's `search_path` would find them (CVE-2018-1058).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use custodia::domain::CustomerId;
use custodia::store::{
    CustomerChange, PendingEvent, PostgresSettings, StorageSettings, Store, StoreError, Write,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::pg::{self, Database};
use super::{create_with_two_entries, record};

fn open(settings: &PostgresSettings) -> Arc<dyn Store> {
    custodia::store::open(&StorageSettings::Postgres(settings.clone()), Arc::new(Tree)).unwrap()
}

use custodia::audit::tree::Tree;

fn event(customer: Option<CustomerId>) -> PendingEvent {
    PendingEvent { prefix: b"{\"n\":1".to_vec(), time: "2026-11-30T12:00:00.000Z".into(), customer }
}

const SSL_REQUEST: u32 = 80_877_103;

/// Reads one length-prefixed message without a type byte (SSLRequest, StartupMessage): its body.
async fn untyped_message(stream: &mut TcpStream) -> Option<Vec<u8>> {
    let len = stream.read_u32().await.ok()? as usize;
    let mut body = vec![0; len.checked_sub(4)?];
    stream.read_exact(&mut body).await.ok()?;
    Some(body)
}

/// A fake server: answers `N` to an SSLRequest, then asks for a clear-text password; every byte
/// a client sends after its startup message is kept in `received`.
async fn tls_refusing_server(received: Arc<Mutex<Vec<u8>>>) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else { return };
            let received = Arc::clone(&received);
            tokio::spawn(async move {
                let Some(mut body) = untyped_message(&mut stream).await else { return };
                if body[..4] == SSL_REQUEST.to_be_bytes() {
                    stream.write_all(b"N").await.unwrap();
                    let Some(startup) = untyped_message(&mut stream).await else { return };
                    body = startup;
                }
                let _ = body;
                // AuthenticationCleartextPassword.
                stream.write_all(&[b'R', 0, 0, 0, 8, 0, 0, 0, 3]).await.unwrap();
                let mut rest = Vec::new();
                let _ = tokio::time::timeout(Duration::from_secs(2), stream.read_to_end(&mut rest)).await;
                received.lock().unwrap().extend(rest);
            });
        }
    });
    port
}

#[tokio::test]
async fn without_sslmode_disable_a_server_refusing_tls_never_receives_the_password() {
    let received = Arc::new(Mutex::new(Vec::new()));
    let port = tls_refusing_server(Arc::clone(&received)).await;
    for query in ["", "?sslmode=prefer", "?sslmode=require"] {
        let url = format!("postgres://custodia:hunter2@127.0.0.1:{port}/custodia{query}");
        let store = open(&pg::settings(&url));
        let err = store.meta("m").await.unwrap_err();
        let shown = format!("{err} {err:?}");
        assert!(matches!(err, StoreError::Unavailable(_)), "{shown}");
        assert!(shown.contains("does not support TLS"), "the error says why: {shown}");
        assert!(!shown.contains("hunter2") && !shown.contains(&port.to_string()), "{shown}");
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(received.lock().unwrap().is_empty(), "{query:?}: the client went on in plain text");
    }
    // The fake server does catch a password when plain text is asked for (the test can fail).
    let url = format!("postgres://custodia:hunter2@127.0.0.1:{port}/custodia?sslmode=disable");
    let _ = open(&pg::settings(&url)).meta("m").await;
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !received.lock().unwrap().windows(7).any(|w| w == b"hunter2") {
        assert!(std::time::Instant::now() < deadline, "sslmode=disable sent no password");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A proxy to `upstream` that drops the `options` startup parameter, as PgBouncer does with
/// `ignore_startup_parameters = options`.
async fn options_dropping_proxy(upstream: (String, u16)) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let Ok((mut client, _)) = listener.accept().await else { return };
            let upstream = upstream.clone();
            tokio::spawn(async move {
                let Some(body) = untyped_message(&mut client).await else { return };
                let (protocol, params) = body.split_at(4);
                let mut kept = protocol.to_vec();
                let fields: Vec<&[u8]> = params.split(|b| *b == 0).collect();
                for pair in fields.chunks(2) {
                    if let [key, value] = pair
                        && !key.is_empty()
                        && *key != b"options"
                    {
                        kept.extend_from_slice(key);
                        kept.push(0);
                        kept.extend_from_slice(value);
                        kept.push(0);
                    }
                }
                kept.push(0);
                let mut server = TcpStream::connect(upstream).await.unwrap();
                server.write_u32(kept.len() as u32 + 4).await.unwrap();
                server.write_all(&kept).await.unwrap();
                let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
            });
        }
    });
    port
}

/// (host, port) of the test server.
fn server_address(url: &str) -> (String, u16) {
    let config: tokio_postgres::Config = url.parse().unwrap();
    let host = match &config.get_hosts()[0] {
        tokio_postgres::config::Host::Tcp(h) => h.clone(),
        other => panic!("the test server is not on TCP: {other:?}"),
    };
    (host, config.get_ports().first().copied().unwrap_or(5432))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_commit_synchronously_behind_a_pooler_that_drops_options_under_a_role_default_of_off() {
    let Some(db) = Database::create() else { return };
    let name = &db.name;
    let role = format!("r_{name}");
    // A role whose sessions default to synchronous_commit = off, working in the test's schema.
    db.admin(&format!(
        "CREATE ROLE {role} LOGIN; GRANT ALL ON SCHEMA {name} TO {role}; \
         ALTER ROLE {role} SET search_path = {name}; ALTER ROLE {role} SET synchronous_commit = off"
    ));
    let proxy = options_dropping_proxy(server_address(&pg::server_url().unwrap())).await;
    let url = format!(
        "postgres://{role}@127.0.0.1:{proxy}/postgres?sslmode=disable&application_name={name}\
         &options=-c%20synchronous_commit%3Don"
    );
    let store = open(&pg::settings(&url));
    store.put_meta("m", b"v".to_vec()).await.unwrap();
    // Every row the store writes to `meta` or `pending_events` notes its session's setting.
    db.admin(&format!(
        "CREATE TABLE {name}.seen (setting text); GRANT ALL ON {name}.seen TO {role}; \
         CREATE FUNCTION {name}.note() RETURNS trigger LANGUAGE plpgsql AS \
           $$ BEGIN INSERT INTO {name}.seen VALUES (pg_catalog.current_setting('synchronous_commit')); \
              RETURN NEW; END $$; \
         CREATE TRIGGER note AFTER INSERT OR UPDATE ON {name}.meta FOR EACH ROW EXECUTE FUNCTION {name}.note(); \
         CREATE TRIGGER note AFTER INSERT ON {name}.pending_events FOR EACH ROW EXECUTE FUNCTION {name}.note()"
    ));
    let mut tasks = Vec::new();
    for i in 0..8 {
        let store = Arc::clone(&store);
        tasks.push(tokio::spawn(async move {
            store.put_meta(&format!("m{i}"), b"v".to_vec()).await.unwrap();
            let id = CustomerId::random();
            let change =
                Some(CustomerChange::Put { record: Box::new(record(id, 1, vec![])), expected_version: None });
            store
                .write(Write { change, events: vec![event(Some(id))], need_seqs: true, precondition: None })
                .await
                .unwrap();
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let seen = db.admin(&format!("SELECT count(*) FROM {name}.seen"));
    let off = db.admin(&format!("SELECT count(*) FROM {name}.seen WHERE setting <> 'on'"));
    store.close().await.unwrap();
    db.admin(&format!(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '{role}'; \
         DROP SCHEMA {name} CASCADE; DROP ROLE {role}"
    ));
    assert_eq!(seen, Some(16), "every write was noted");
    assert_eq!(off, Some(0), "a session committed without waiting for its WAL flush");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn functions_planted_where_the_search_path_finds_them_are_never_called() {
    let Some(db) = Database::create() else { return };
    let name = &db.name;
    let other = format!("{name}_pub");
    // Better matches than the catalog's functions for the argument types Custodia passes, in
    // the store's own schema and in a second schema on the URL's search_path (the "public" any
    // role may create in before PostgreSQL 15). Each raises when called.
    let mut plant = format!("CREATE SCHEMA {other};");
    for schema in [name.as_str(), other.as_str()] {
        for (function, args) in [
            ("hashtext", "name"),
            ("unnest", "integer[]"),
            ("unnest", "bigint[]"),
            ("unnest", "bytea[]"),
            ("unnest", "text[]"),
            ("unnest", "boolean[]"),
            ("unnest", "smallint[]"),
            ("concat", "name, text, text"),
        ] {
            let returns = if function == "hashtext" { "integer" } else { "SETOF integer" };
            plant.push_str(&format!(
                "CREATE FUNCTION {schema}.{function}({args}) RETURNS {returns} LANGUAGE plpgsql AS \
                 $$ BEGIN RAISE EXCEPTION 'planted {schema}.{function}({args}) called'; END $$;"
            ));
        }
    }
    db.admin(&plant);
    let url = db.url.replace(&format!("search_path%3D{name}"), &format!("search_path%3D{name}%2C{other}"));
    assert_ne!(url, db.url);
    let settings = pg::settings(&url);
    let store = open(&settings);
    store.put_meta("m", b"v".to_vec()).await.unwrap();
    let id = CustomerId::random();
    let change = create_with_two_entries(id);
    let written = store
        .write(Write {
            change,
            events: vec![event(Some(id)), event(None)],
            need_seqs: true,
            precondition: None,
        })
        .await
        .unwrap();
    assert_eq!(written.seqs.len(), 2);
    assert_eq!(store.head().await.unwrap().size, 2);
    assert_eq!(store.nodes(&[(0, 0), (0, 1), (1, 0)]).await.unwrap().iter().flatten().count(), 3);
    assert!(store.exclusive("retention").await.unwrap().is_some());
    // `db migrate` too.
    let (found, now) = custodia::store::migrate_postgres(&settings).await.unwrap();
    assert_eq!(found, now);
    store.close().await.unwrap();
    db.admin(&format!("DROP SCHEMA {other} CASCADE"));
}
