//! Several nodes on one PostgreSQL database (README "Scaling out"): two `custodia serve`
//! processes, concurrent writers on both, the sequencing node `kill -9`ed mid-load. Needs
//! `CUSTODIA_TEST_DATABASE_URL` (skipped without it, required by `.ci/run`).

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::auditor::own;
use crate::helpers::{ServerProcess, TestApp};
use crate::pg::Database;

/// Starts a node over `data_dir` on `db`, its epoch keys in the key database `keys` (another
/// schema here; a database of its own in production), with `extra` settings.
fn node_with(data_dir: &Path, db: &Database, keys: &Database, extra: &[(&str, &str)]) -> ServerProcess {
    let mut env = vec![
        ("CUSTODIA_STORE", "postgres"),
        ("CUSTODIA_DATABASE_URL", db.url.as_str()),
        ("CUSTODIA_DATABASE_POOL_SIZE", "8"),
        ("CUSTODIA_KEY_DATABASE_URL", keys.url.as_str()),
    ];
    env.extend_from_slice(extra);
    ServerProcess::start(data_dir, &env)
}

fn node(data_dir: &Path, db: &Database, keys: &Database) -> ServerProcess {
    node_with(data_dir, db, keys, &[])
}

/// Whether `node` sequences the audit log now (its metrics say so).
async fn sequences(node: &ServerProcess) -> bool {
    let text = reqwest::get(format!("{}/metrics", node.base)).await.unwrap().text().await.unwrap();
    text.lines().any(|l| l.trim() == "custodia_audit_sequencer 1")
}

async fn get(base: &str, path: &str, token: &str) -> (StatusCode, Value) {
    let res = reqwest::Client::new().get(format!("{base}{path}")).bearer_auth(token).send().await.unwrap();
    let status = res.status();
    (status, res.json().await.unwrap_or_default())
}

/// (size, root) of a node's current checkpoint.
async fn checkpoint(base: &str) -> (u64, own::H) {
    let (status, body) = get(base, "/v1/audit/checkpoint", &TestApp::auditor_token()).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let root = STANDARD.decode(body["root_hash"].as_str().unwrap()).unwrap().try_into().unwrap();
    (body["tree_size"].as_u64().unwrap(), root)
}

/// Creates customers from 4 concurrent writers on `base` until `stop` is set or the node is
/// gone; (id, email) of every acknowledged create. Emails carry `tag`, unique across nodes.
/// Customer `id` reads back from the node at `base` with its `email`.
async fn assert_reads_back(client: &reqwest::Client, base: &str, token: &str, id: &str, email: &str) {
    let res = client
        .get(format!("{base}/v1/customers/{id}"))
        .bearer_auth(token)
        .header("X-Purpose", "order_fulfillment")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK, "{id} on {base}");
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["fields"]["email"], email, "{id} on {base}");
}

async fn writers(base: String, tag: &'static str, stop: Arc<Mutex<bool>>) -> Vec<(String, String)> {
    let client = reqwest::Client::new();
    let token = TestApp::token_for_tests();
    let mut tasks = Vec::new();
    for w in 0..4 {
        let (client, base, token, stop) = (client.clone(), base.clone(), token.clone(), Arc::clone(&stop));
        tasks.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            for i in 0.. {
                if *stop.lock().unwrap() {
                    break;
                }
                let email = format!("{tag}{w}-{i}@scale.test");
                let res = client
                    .post(format!("{base}/v1/customers"))
                    .bearer_auth(&token)
                    .json(&json!({"fields": {"email": email, "name": format!("Writer {tag}{w} {i}")}}))
                    .send()
                    .await;
                match res {
                    Ok(r) if r.status() == StatusCode::CREATED => {
                        let body: Value = r.json().await.unwrap_or_default();
                        acked.push((body["id"].as_str().expect("an id").to_owned(), email));
                    }
                    Ok(r) => panic!("{tag}: unexpected {}", r.status()),
                    // The node was killed.
                    Err(_) => break,
                }
            }
            acked
        }));
    }
    let mut acked = Vec::new();
    for t in tasks {
        acked.extend(t.await.unwrap());
    }
    acked
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_share_one_log_and_survive_the_sequencer_being_killed_mid_load() {
    let Some(db) = Database::create() else { return };
    let Some(keys) = Database::create() else { return };
    let dirs = tempfile::tempdir().unwrap();
    let (dir_a, dir_b) = (dirs.path().join("a"), dirs.path().join("b"));
    let dirs = [dir_a, dir_b];
    // Both nodes keep their epoch keys in one key database: nothing is copied between them.
    let mut nodes = vec![node(&dirs[0], &db, &keys)];
    nodes.push(node(&dirs[1], &db, &keys));

    // One of them sequences; both serve.
    let mut leader = None;
    for _ in 0..100 {
        match (sequences(&nodes[0]).await, sequences(&nodes[1]).await) {
            (true, true) => panic!("two nodes sequence at once"),
            (true, false) => leader = Some(0),
            (false, true) => leader = Some(1),
            (false, false) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
        if leader.is_some() {
            break;
        }
    }
    let leader = leader.expect("a node sequences");
    let follower = 1 - leader;

    // Writers on both nodes; the sequencing node dies under them.
    let stop = Arc::new(Mutex::new(false));
    let on_leader = tokio::spawn(writers(nodes[leader].base.clone(), "l", Arc::clone(&stop)));
    let on_follower = tokio::spawn(writers(nodes[follower].base.clone(), "f", Arc::clone(&stop)));
    tokio::time::sleep(Duration::from_millis(1000)).await;
    nodes[leader].kill();
    let killed = std::time::Instant::now();
    // The follower takes over within seconds and its writers carry on.
    let mut took_over = None;
    for _ in 0..100 {
        if sequences(&nodes[follower]).await {
            took_over = Some(killed.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let took_over = took_over.expect("the surviving node took over sequencing");
    tokio::time::sleep(Duration::from_millis(1000)).await;
    *stop.lock().unwrap() = true;
    let mut acked = on_leader.await.unwrap();
    let after_kill = on_follower.await.unwrap();
    assert!(!after_kill.is_empty() && !acked.is_empty(), "both nodes acknowledged writes");
    println!(
        "{} creates acknowledged on the killed node, {} on the other; takeover after {took_over:?}",
        acked.len(),
        after_kill.len()
    );
    acked.extend(after_kill);

    // Every acknowledged create reads back from the surviving node and from the restarted one.
    let restarted = node(&dirs[leader], &db, &keys);
    let follower = &nodes[follower];
    let acked = Arc::new(acked);
    for base in [&follower.base, &restarted.base] {
        let readers: Vec<_> = (0..8)
            .map(|r| {
                let (acked, base) = (Arc::clone(&acked), base.clone());
                tokio::spawn(async move {
                    let client = reqwest::Client::new();
                    let token = TestApp::token_for_tests();
                    for (id, email) in acked.iter().skip(r).step_by(8) {
                        assert_reads_back(&client, &base, &token, id, email).await;
                    }
                })
            })
            .collect();
        for reader in readers {
            reader.await.unwrap();
        }
    }

    // Every acknowledged create has its event; the export from either node verifies.
    for base in [&follower.base, &restarted.base] {
        let out = tempfile::tempdir().unwrap();
        let (ok, _, err) = crate::auditor::export_from(base, &TestApp::auditor_token(), out.path()).await;
        assert!(ok, "export from {base}: {err}");
        let (ok, stdout, err) = crate::auditor::verify_export(out.path()).await;
        assert!(ok, "verify of the export from {base}: {stdout} {err}");
        let events = std::fs::read_to_string(out.path().join("events.ndjson")).unwrap();
        let created: std::collections::HashSet<String> = events
            .lines()
            .map(|l| serde_json::from_str::<Value>(l).unwrap())
            .filter(|e| e["action"] == "customer.create")
            .filter_map(|e| e["customer_id"].as_str().map(str::to_owned))
            .collect();
        for (id, _) in acked.iter() {
            assert!(created.contains(id), "the create of {id} has its event");
        }
    }

    // Checkpoints from both nodes are consistent: the later extends the earlier.
    let (size_a, root_a) = checkpoint(&restarted.base).await;
    reqwest::Client::new()
        .post(format!("{}/v1/customers", follower.base))
        .bearer_auth(TestApp::token_for_tests())
        .json(&serde_json::json!({"fields": {"name": "One more"}}))
        .send()
        .await
        .unwrap();
    let (size_b, root_b) = checkpoint(&follower.base).await;
    assert!(size_b > size_a, "{size_b} > {size_a}");
    let (status, body) = get(
        &restarted.base,
        &format!("/v1/audit/proofs/consistency?from={size_a}&to={size_b}"),
        &TestApp::auditor_token(),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let proof: Vec<own::H> = body["proof"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| STANDARD.decode(p.as_str().unwrap()).unwrap().try_into().unwrap())
        .collect();
    assert!(own::consistency_holds(size_a, size_b, &proof, &root_a, &root_b));
    // Writes answer at COMMIT: the last one's event is integrated shortly after.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while db.number("SELECT count(*) FROM pending_events") != Some(0) {
        assert!(std::time::Instant::now() < deadline, "nothing is left unintegrated");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A PostgreSQL server of the test's own (it is stopped and started), removed when dropped.
struct OwnServer {
    dir: tempfile::TempDir,
    url: String,
}

impl OwnServer {
    fn cluster(&self, command: &str) {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tools/pg-cluster");
        let out =
            std::process::Command::new(script).arg(command).arg(self.dir.path().join("pg")).output().unwrap();
        assert!(out.status.success(), "pg-cluster {command}: {}", String::from_utf8_lossy(&out.stderr));
    }

    fn start() -> OwnServer {
        let dir = tempfile::tempdir().unwrap();
        // As root the cluster belongs to an unprivileged user, who must reach its directory.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tools/pg-cluster");
        let out =
            std::process::Command::new(script).arg("start").arg(dir.path().join("pg")).output().unwrap();
        assert!(out.status.success(), "pg-cluster start: {}", String::from_utf8_lossy(&out.stderr));
        let stdout = String::from_utf8(out.stdout).unwrap();
        let url = stdout
            .lines()
            .find_map(|l| l.strip_prefix("export CUSTODIA_TEST_DATABASE_URL="))
            .expect("the server's URL")
            .trim_matches('\'')
            .to_owned();
        OwnServer { dir, url }
    }
}

impl Drop for OwnServer {
    fn drop(&mut self) {
        self.cluster("stop");
    }
}

#[tokio::test]
async fn a_database_outage_answers_503_writes_nothing_and_service_resumes() {
    if crate::pg::server_url().is_none() {
        return;
    }
    let server = OwnServer::start();
    let app = crate::helpers::spawn_app_with(|s| {
        s.store = custodia::config::StoreKind::Postgres;
        s.database_url = Some(secrecy::SecretString::from(server.url.clone()));
        s.database_connect_timeout_ms = 1000;
    })
    .await;
    let kept = app.create_customer(json!({"name": "Kept Before", "email": "kept@outage.test"})).await;

    server.cluster("halt");
    let during = app
        .call(
            reqwest::Method::POST,
            "/v1/customers",
            Some(&app.merchant()),
            None,
            Some(&json!({"fields": {"name": "Lost During", "email": "lost@outage.test"}})),
        )
        .await;
    assert_eq!(during.status, StatusCode::SERVICE_UNAVAILABLE, "{}", during.body);
    let read = app.read_customer(&kept, "order_fulfillment").await;
    assert_eq!(read.status, StatusCode::SERVICE_UNAVAILABLE, "{}", read.body);
    assert!(!read.body.to_string().contains("Kept Before"), "no data in a 503: {}", read.body);

    server.cluster("resume");
    let mut back = false;
    for _ in 0..100 {
        if app.read_customer(&kept, "order_fulfillment").await.status == StatusCode::OK {
            back = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(back, "service resumes when the database returns");
    let read = app.read_customer(&kept, "order_fulfillment").await;
    assert_eq!(read.body["fields"]["name"], "Kept Before");
    // Nothing of the refused create was written: no record under its email, no create event.
    let found = app
        .call(
            reqwest::Method::GET,
            "/v1/customers?email=lost@outage.test",
            Some(&app.merchant()),
            Some("order_fulfillment"),
            None,
        )
        .await;
    assert_eq!(found.body["customers"], json!([]), "{}", found.body);
    let creates = app.audit_events().await.into_iter().filter(|e| e["action"] == "customer.create").count();
    assert_eq!(creates, 1);
    app.create_customer(json!({"name": "After", "email": "after@outage.test"})).await;
}

#[tokio::test]
async fn store_copy_moves_a_sled_store_to_postgres_and_proves_it_against_the_signed_checkpoint() {
    let Some(db) = Database::create() else { return };
    let sled = crate::helpers::spawn_app_with(|s| {
        s.store = custodia::config::StoreKind::Sled;
        s.database_url = None;
    })
    .await;
    let kept = sled.create_customer(json!({"name": "Kept Copy", "email": "kept@copy.test"})).await;
    let erased = sled.create_customer(json!({"name": "Erased Copy", "email": "erased@copy.test"})).await;
    assert_eq!(sled.read_customer(&kept, "order_fulfillment").await.status, StatusCode::OK);
    let gone = sled
        .call(reqwest::Method::DELETE, &format!("/v1/customers/{erased}"), Some(&sled.merchant()), None, None)
        .await;
    assert_eq!(gone.status, StatusCode::OK, "{}", gone.body);
    let events_before = sled.audit_events().await.len();
    let mut sled = sled;
    sled.shutdown().await;

    let copy = |url: String| {
        let dir = sled.data_dir.path().to_owned();
        async move {
            let env = [
                ("CUSTODIA_DATABASE_URL", url.as_str()),
                ("CUSTODIA_MASTER_KEY", crate::helpers::MASTER_KEY),
            ];
            crate::helpers::run_custodia(&["store", "copy", "--from-dir", dir.to_str().unwrap()], &env).await
        }
    };
    let (ok, stdout, stderr) = copy(db.url.clone()).await;
    assert!(ok, "{stdout}{stderr}");
    assert!(
        stdout.contains("copied 1 customers") && stdout.contains("matches the newest signed checkpoint"),
        "{stdout}"
    );
    // A second copy into the now full database is refused.
    let (ok, _, stderr) = copy(db.url.clone()).await;
    assert!(!ok && stderr.contains("not empty"), "{stderr}");

    // A source whose newest checkpoint does not sign the log's root is refused after the copy.
    let (size, note) = crate::helpers::latest_stored_checkpoint(sled.data_dir.path());
    let mut lines: Vec<String> =
        String::from_utf8(note.clone()).unwrap().lines().map(str::to_owned).collect();
    lines[2] = STANDARD.encode([0u8; 32]);
    crate::helpers::replace_stored_checkpoint(
        sled.data_dir.path(),
        size,
        (lines.join("\n") + "\n").into_bytes(),
    );
    let Some(other) = Database::create() else { return };
    let (ok, _, stderr) = copy(other.url.clone()).await;
    assert!(!ok && stderr.contains("does not verify under its log's key"), "{stderr}");
    crate::helpers::replace_stored_checkpoint(sled.data_dir.path(), size, note);

    // A server on the copy, with the same keys, serves what the sled server held.
    let epochs = sled.data_dir.path().join(crate::helpers::TEST_EPOCH_FILE);
    let pg = crate::helpers::spawn_app_with(|s| {
        s.store = custodia::config::StoreKind::Postgres;
        s.database_url = Some(secrecy::SecretString::from(db.url.clone()));
        s.key_epoch_file = Some(epochs);
    })
    .await;
    let read = pg.read_customer(&kept, "order_fulfillment").await;
    assert_eq!(read.status, StatusCode::OK, "{}", read.body);
    assert_eq!(read.body["fields"]["name"], "Kept Copy");
    assert_eq!(pg.read_customer(&erased, "order_fulfillment").await.status, StatusCode::NOT_FOUND);
    let found = pg
        .call(
            reqwest::Method::GET,
            "/v1/customers?email=kept@copy.test",
            Some(&pg.merchant()),
            Some("order_fulfillment"),
            None,
        )
        .await;
    assert_eq!(found.body["customers"][0]["id"], kept.as_str(), "{}", found.body);
    assert!(pg.audit_events().await.len() > events_before, "the log continues after the copied events");
    let out = tempfile::tempdir().unwrap();
    let (ok, _, err) = crate::auditor::export(&pg, out.path()).await;
    assert!(ok, "{err}");
    let (ok, stdout, err) = crate::auditor::verify_export(out.path()).await;
    assert!(ok, "{stdout}{err}");
}

/// The epoch ids (hex of the 8 id bytes, as `ek-` ids print) now in the key database.
fn stored_epochs(keys: &Database) -> std::collections::BTreeSet<String> {
    keys.strings("SELECT 'ek-' || encode(id, 'hex') FROM epoch_keys").into_iter().collect()
}

/// Every `epoch_destroyed` epoch id in `base`'s audit log.
async fn destroyed_epochs(base: &str) -> Vec<String> {
    let (status, body) =
        get(base, "/v1/audit/events?action=key.rotate&limit=1000", &TestApp::auditor_token()).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["reason"][0] == "epoch_destroyed")
        .filter_map(|e| {
            e["reason"]
                .as_array()
                .unwrap()
                .iter()
                .find_map(|r| r.as_str()?.strip_prefix("epoch:").map(str::to_owned))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_share_epoch_keys_through_the_key_database_across_switches_and_destructions() {
    let Some(db) = Database::create() else { return };
    let Some(keys) = Database::create() else { return };
    let dirs = tempfile::tempdir().unwrap();
    // A new epoch every 2 s, none kept: a switch and a destruction every few seconds.
    let short = [
        ("CUSTODIA_KEY_EPOCH_SECONDS", "2"),
        ("CUSTODIA_KEY_EPOCHS_KEPT", "0"),
        ("CUSTODIA_REQUEST_TIMEOUT_MS", "1000"),
    ];
    let nodes = [
        node_with(&dirs.path().join("a"), &db, &keys, &short),
        node_with(&dirs.path().join("b"), &db, &keys, &short),
    ];
    let client = reqwest::Client::new();
    let token = TestApp::token_for_tests();
    // (id, email) of every customer, created on one node and updated on the other.
    let mut customers: Vec<(String, String)> = Vec::new();
    let mut seen = std::collections::BTreeSet::new();
    let started = std::time::Instant::now();
    let mut round = 0;
    while started.elapsed() < Duration::from_secs(14) {
        for (n, tag) in [(0, "a"), (1, "b")] {
            let email = format!("{tag}{round}@epochs.test");
            let res = client
                .post(format!("{}/v1/customers", nodes[n].base))
                .bearer_auth(&token)
                .json(&json!({"fields": {"email": email, "name": format!("Epoch {tag} {round}")}}))
                .send()
                .await
                .unwrap();
            assert_eq!(res.status(), StatusCode::CREATED, "create on node {n}");
            let id = res.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_owned();
            // The other node changes the unique, indexed field: a wrap and index entries
            // computed there, under its view of the epochs.
            let email = format!("{tag}{round}.moved@epochs.test");
            let res = client
                .patch(format!("{}/v1/customers/{id}", nodes[1 - n].base))
                .bearer_auth(&token)
                .json(&json!({"fields": {"email": email}}))
                .send()
                .await
                .unwrap();
            assert_eq!(res.status(), StatusCode::OK, "update on node {}", 1 - n);
            customers.push((id, email));
        }
        seen.extend(stored_epochs(&keys));
        round += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let destroyed = destroyed_epochs(&nodes[0].base).await;
    println!(
        "{} customers over {round} rounds; {} epochs seen, {} destroyed",
        customers.len(),
        seen.len(),
        destroyed.len()
    );
    assert!(destroyed.len() >= 2, "several epochs were destroyed meanwhile: {destroyed:?} of {seen:?}");
    // A destroyed epoch is gone from the key database (its row deleted, the table vacuumed).
    let now = stored_epochs(&keys);
    for id in &destroyed {
        assert!(seen.contains(id), "{id} was seen in the key database before");
        assert!(!now.contains(id), "{id} is destroyed but still in the key database");
    }

    // A node started now, with a data directory of its own and nothing copied, reads every
    // customer, as both running nodes do.
    let late = node_with(&dirs.path().join("c"), &db, &keys, &short);
    for base in [&nodes[0].base, &nodes[1].base, &late.base] {
        for (id, email) in &customers {
            assert_reads_back(&client, base, &token, id, email).await;
        }
    }
}

#[tokio::test]
async fn a_key_database_that_is_the_data_database_and_schema_is_refused() {
    let Some(db) = Database::create() else { return };
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_custodia"))
        .arg("serve")
        .env("CUSTODIA_LISTEN", "127.0.0.1:0")
        .env("CUSTODIA_DATA_DIR", dir.path())
        .env("CUSTODIA_POLICIES", concat!(env!("CARGO_MANIFEST_DIR"), "/policies"))
        .env("CUSTODIA_MASTER_KEY", crate::helpers::MASTER_KEY)
        .env("CUSTODIA_JWT_HS256_SECRET", crate::helpers::SECRET)
        .env("CUSTODIA_STORE", "postgres")
        .env("CUSTODIA_DATABASE_URL", &db.url)
        .env("CUSTODIA_KEY_DATABASE_URL", &db.url)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("CUSTODIA_KEY_DATABASE_URL names the data database"), "{err}");
    assert!(!err.contains(&db.url), "the URL is never printed");
    assert_eq!(db.number(&format!("SELECT count(*) FROM information_schema.tables WHERE table_schema = '{}' AND table_name = 'epoch_keys'", db.name)), Some(0), "nothing was created");
}

/// Settings of an in-process node on `db` whose epoch keys are in `keys`: a new epoch every
/// second, none kept, a 200 ms settle time.
fn in_process(dir: &Path, db: &Database, keys: &Database) -> custodia::config::Settings {
    use secrecy::SecretString;
    custodia::config::Settings {
        listen: "127.0.0.1:0".into(),
        data_dir: dir.to_owned(),
        policies: Path::new(env!("CARGO_MANIFEST_DIR")).join("policies"),
        master_key: Some(SecretString::from(crate::helpers::MASTER_KEY)),
        jwt_hs256_secret: Some(SecretString::from(crate::helpers::SECRET)),
        store: custodia::config::StoreKind::Postgres,
        database_url: Some(SecretString::from(db.url.clone())),
        key_database_url: Some(SecretString::from(keys.url.clone())),
        database_pool_size: 4,
        key_epoch_seconds: 1,
        key_epochs_kept: 0,
        request_timeout_ms: 200,
        ..custodia::config::Settings::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_with_a_stale_epoch_view_never_commits_a_key_under_an_epoch_another_node_destroyed() {
    use custodia::domain::{Principal, Role};
    use custodia::vault::{EpochState, NewCustomer, RequestContext};
    let Some(db) = Database::create() else { return };
    let Some(keys) = Database::create() else { return };
    let dirs = tempfile::tempdir().unwrap();
    // Two vaults in this process, without their background tasks: B's view of the epochs only
    // changes when one of its own loads or writes makes it.
    let (a, store, _) =
        custodia::startup::open_vault(&in_process(&dirs.path().join("a"), &db, &keys)).await.unwrap();
    let (b, _, _) =
        custodia::startup::open_vault(&in_process(&dirs.path().join("b"), &db, &keys)).await.unwrap();
    let stale = b.keyring().current().id;
    assert_eq!(a.keyring().current().id, stale, "one shared first epoch");

    // A rotates: a new epoch, every key re-wrapped to it, then the old one destroyed.
    let mut state = EpochState::default();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while a.keyring().epoch(&stale).is_some() {
        assert!(std::time::Instant::now() < deadline, "A destroyed the first epoch");
        let wait = a.epoch_step(&mut state).await.unwrap();
        tokio::time::sleep(wait.min(Duration::from_millis(100))).await;
    }
    assert_eq!(
        b.keyring().current().id,
        stale,
        "B's view is stale: it still wraps under the destroyed epoch"
    );

    // B creates a customer: its first attempt wraps under the destroyed epoch and is fenced off
    // at commit; B refreshes its view and wraps under A's current epoch.
    let ctx = RequestContext {
        principal: Principal { role: Role::Merchant, sub: Some("shop-backend".into()) },
        request_id: "fence-test".into(),
    };
    let body: NewCustomer =
        serde_json::from_value(json!({"fields": {"email": "fenced@epochs.test", "name": "Fenced"}})).unwrap();
    let id = b.create_customer(&ctx, body, None).await.unwrap();
    let record = store.customer(&id).await.unwrap().unwrap();
    let current = a.keyring().current().id;
    assert_eq!(record.data_key.master_key, current, "committed under the live epoch, not {stale}");
    assert!(record.index_entries.iter().all(|e| e.epoch.as_ref() == Some(&current)), "indexed under it too");
    assert!(b.keyring().epoch(&stale).is_none(), "B forgot the destroyed epoch");
    let view = a.read_customer(&ctx, &id.to_string(), Some("order_fulfillment"), None).await.unwrap();
    assert_eq!(view.fields["email"], "fenced@epochs.test");
}

#[tokio::test]
async fn a_node_moving_from_the_epoch_key_file_to_the_key_database_imports_its_epochs() {
    let Some(db) = Database::create() else { return };
    let Some(keys) = Database::create() else { return };
    let dirs = tempfile::tempdir().unwrap();
    let (data, file) = (dirs.path().join("a"), dirs.path().join("a.epoch-keys"));
    let file_env = [("CUSTODIA_KEY_EPOCH_FILE", file.to_str().unwrap())];
    let client = reqwest::Client::new();
    let token = TestApp::token_for_tests();
    // One node on PostgreSQL with the epoch-key file, as before the key database.
    let mut one = ServerProcess::start(
        &data,
        &[("CUSTODIA_STORE", "postgres"), ("CUSTODIA_DATABASE_URL", &db.url), file_env[0]],
    );
    let res = client
        .post(format!("{}/v1/customers", one.base))
        .bearer_auth(&token)
        .json(&json!({"fields": {"email": "moved@epochs.test", "name": "Moved"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::CREATED);
    let id = res.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_owned();
    assert!(one.terminate());
    let tables = format!(
        "SELECT count(*) FROM information_schema.tables WHERE table_schema = '{}' AND table_name = 'epoch_keys'",
        keys.name
    );
    assert_eq!(keys.number(&tables), Some(0), "no key database yet");

    // Restarted with the key database (the file still in place): its epochs move there, and
    // a second node without any file reads the customer.
    let moved = node_with(&data, &db, &keys, &file_env);
    assert!(!stored_epochs(&keys).is_empty(), "the file's epochs are in the key database");
    let other = node(&dirs.path().join("b"), &db, &keys);
    for base in [&moved.base, &other.base] {
        let res = client
            .get(format!("{base}/v1/customers/{id}"))
            .bearer_auth(&token)
            .header("X-Purpose", "order_fulfillment")
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::OK, "{base}");
        assert_eq!(res.json::<Value>().await.unwrap()["fields"]["email"], "moved@epochs.test");
    }
}
