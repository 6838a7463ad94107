//! `spawn_app()`: a real server on a random port over a fresh sled directory, with request
//! helpers and tokens per audience. Set `TEST_LOG=1` to see the server's logs.
//!
//! The backend: sled, or with `CUSTODIA_TEST_STORE=postgres` PostgreSQL, a fresh schema per
//! test on the server of `CUSTODIA_TEST_DATABASE_URL` (`.ci/run` runs the suite both ways).
//! Tests that look at sled's files say so with [`sled_only`] and are skipped on PostgreSQL.

use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock, Mutex, Weak};

use custodia::config::Settings;
use custodia::domain::CustomerId;
use custodia::startup::App;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use reqwest::{Method, StatusCode};
use secrecy::SecretString;
use serde_json::{Value, json};
use tempfile::TempDir;
use tokio::sync::oneshot;

/// The HS256 secret test servers are configured with.
pub const SECRET: &str = "test-secret-test-secret-test-secret-0123456789";
/// A base64 master key for tests.
pub const MASTER_KEY: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";

// The guard lives as long as the test process; statics are never dropped, so lines queued at
// exit may not be written (only with TEST_LOG).
static INIT_LOG: LazyLock<Option<custodia::telemetry::LogGuard>> =
    LazyLock::new(|| std::env::var("TEST_LOG").is_ok().then(|| custodia::telemetry::init("text")));

/// Path of a file under `tests/fixtures`.
pub fn fixture(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(path)
}

/// File name of the epoch-key file test servers use, inside their data directory so that a
/// temporary directory takes it along when dropped. (Production keeps it outside, the default;
/// tests of copies of the data directory set it outside explicitly.)
pub const TEST_EPOCH_FILE: &str = "test-epoch-keys";

/// Whether this run's servers use PostgreSQL (`CUSTODIA_TEST_STORE=postgres`).
pub fn on_postgres() -> bool {
    match std::env::var("CUSTODIA_TEST_STORE").as_deref() {
        Ok("postgres") => true,
        Ok("sled") | Ok("") | Err(_) => false,
        Ok(other) => panic!("CUSTODIA_TEST_STORE must be sled or postgres, not {other}"),
    }
}

/// For a test that inspects sled's files or process-level sled behaviour: `true` (and a line
/// saying the test was skipped and why) when this run is on PostgreSQL; the test then returns.
pub fn sled_only(why: &str) -> bool {
    let skip = on_postgres();
    if skip {
        println!("skipped on PostgreSQL (sled only: {why})");
        // The harness counts a test that returns as passed: `.ci/run` reads this file to count
        // it as skipped instead.
        if let Some(log) = std::env::var_os("CUSTODIA_TEST_SKIP_LOG") {
            use std::io::Write;
            let name = std::thread::current().name().unwrap_or("unknown").to_owned();
            if let Ok(mut file) = std::fs::OpenOptions::new().create(true).append(true).open(log) {
                let _ = writeln!(file, "{name}: {why}");
            }
        }
    }
    skip
}

/// The PostgreSQL schema of each test server's data directory, dropped with its [`TestApp`].
static DATABASES: LazyLock<Mutex<std::collections::HashMap<PathBuf, crate::pg::Database>>> =
    LazyLock::new(Default::default);

/// Settings for a test server over `data_dir`: on PostgreSQL also a fresh schema, kept for
/// `data_dir` (a restart over the same directory reuses it).
pub fn test_settings(data_dir: &Path) -> Settings {
    let mut settings = sled_test_settings(data_dir);
    if on_postgres() {
        let mut databases = DATABASES.lock().unwrap_or_else(|p| p.into_inner());
        let db = databases.entry(data_dir.to_owned()).or_insert_with(|| {
            crate::pg::Database::create()
                .expect("CUSTODIA_TEST_STORE=postgres needs CUSTODIA_TEST_DATABASE_URL")
        });
        settings.store = custodia::config::StoreKind::Postgres;
        settings.database_url = Some(SecretString::from(db.url.clone()));
        settings.database_pool_size = 8;
    }
    settings
}

/// The environment that puts a `custodia serve` process over `data_dir` on this run's backend.
pub fn store_env(data_dir: &Path) -> Vec<(String, String)> {
    let settings = test_settings(data_dir);
    match &settings.database_url {
        Some(url) if on_postgres() => vec![
            ("CUSTODIA_STORE".into(), "postgres".into()),
            ("CUSTODIA_DATABASE_URL".into(), secrecy::ExposeSecret::expose_secret(url).to_owned()),
        ],
        _ => Vec::new(),
    }
}

fn sled_test_settings(data_dir: &Path) -> Settings {
    Settings {
        listen: "127.0.0.1:0".into(),
        data_dir: data_dir.to_owned(),
        key_epoch_file: Some(data_dir.join(TEST_EPOCH_FILE)),
        policies: Path::new(env!("CARGO_MANIFEST_DIR")).join("policies"),
        master_key: Some(SecretString::from(MASTER_KEY)),
        jwt_hs256_secret: Some(SecretString::from(SECRET)),
        cache_mb: 16,
        ..Settings::default()
    }
}

/// A running server.
pub struct TestApp {
    /// `http://127.0.0.1:port`.
    pub base: String,
    /// A client with keep-alive.
    pub client: reqwest::Client,
    /// The data directory (kept alive as long as the app).
    pub data_dir: TempDir,
    /// The settings the server runs with.
    pub settings: Settings,
    /// Stops the server; carries the data directory, which the server task drops only once it
    /// has shut down (its last flush writes there).
    stop: Option<oneshot::Sender<Option<TempDir>>>,
    task: Option<tokio::task::JoinHandle<()>>,
    /// The server's vault, held weakly (a strong copy would keep the store open after shutdown).
    vault: Weak<custodia::vault::Vault>,
}

/// Starts a server with default test settings.
pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

/// Starts a server after `adjust` changed the settings.
pub async fn spawn_app_with(adjust: impl FnOnce(&mut Settings)) -> TestApp {
    let data_dir = tempfile::tempdir().expect("temp dir");
    let mut settings = test_settings(data_dir.path());
    adjust(&mut settings);
    start(data_dir, settings).await
}

async fn start(data_dir: TempDir, settings: Settings) -> TestApp {
    LazyLock::force(&INIT_LOG);
    let app = App::build(settings.clone()).await.expect("app builds");
    let base = format!("{}://{}", app.scheme(), app.local_addr());
    let vault = Arc::downgrade(&app.vault());
    let (stop, stopped) = oneshot::channel::<Option<TempDir>>();
    let kept = Arc::new(Mutex::new(None));
    let keeping = Arc::clone(&kept);
    let task = tokio::spawn(async move {
        app.run_with_shutdown(async move {
            if let Ok(dir) = stopped.await {
                *keeping.lock().unwrap() = dir;
            }
        })
        .await
        .expect("server runs");
        drop(kept);
    });
    TestApp {
        base,
        client: reqwest::Client::new(),
        data_dir,
        settings,
        stop: Some(stop),
        task: Some(task),
        vault,
    }
}

impl TestApp {
    /// Starts a server over an existing data directory (e.g. after a crash).
    pub async fn adopt(data_dir: TempDir, settings: Settings) -> TestApp {
        start(data_dir, settings).await
    }

    /// Starts a server over the data directory named in `settings` (owned by the caller, who
    /// must [`shutdown`](TestApp::shutdown) it before dropping that directory: dropping the
    /// app does not wait for the server's last flush).
    pub async fn adopt_path(settings: Settings) -> TestApp {
        start(tempfile::tempdir().expect("temp dir"), settings).await
    }

    /// A customer token for `id`, without a running app.
    pub fn customer_token(id: &str) -> String {
        sign_hs256(json!({ "sub": id, "role": "customer", "exp": now() + 3600 }))
    }

    /// An auditor token, without a running app.
    pub fn auditor_token() -> String {
        sign_hs256(json!({ "sub": "external-auditor", "role": "auditor", "exp": now() + 3600 }))
    }

    /// A merchant token, without a running app.
    pub fn token_for_tests() -> String {
        sign_hs256(json!({ "sub": "shop-backend", "role": "merchant", "exp": now() + 3600 }))
    }

    /// Stops the server gracefully and starts a new one over the same data directory.
    pub async fn restart(mut self) -> TestApp {
        self.shutdown().await;
        let data_dir = std::mem::replace(&mut self.data_dir, tempfile::tempdir().unwrap());
        start(data_dir, self.settings.clone()).await
    }

    /// Runs the transparency report's background step now (instead of waiting for the
    /// background task), so the next `GET /v1/transparency` shows every event so far.
    pub async fn refresh_transparency(&self) {
        let vault = self.vault.upgrade().expect("the server is running");
        vault.refresh_transparency().await.expect("the report refreshes");
    }

    /// Stops the server and waits until it has released the store.
    pub async fn shutdown(&mut self) {
        // The directory stays: the task is awaited below, and a restart may reuse it.
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(None);
        }
        if let Some(task) = self.task.take() {
            task.await.expect("server task");
        }
    }

    /// A valid HS256 token for `role` and `sub`, valid for an hour.
    pub fn token(&self, role: &str, sub: &str) -> String {
        sign_hs256(json!({ "sub": sub, "role": role, "exp": now() + 3600 }))
    }

    /// A merchant token.
    pub fn merchant(&self) -> String {
        self.token("merchant", "shop-backend")
    }

    /// An auditor token.
    pub fn auditor(&self) -> String {
        self.token("auditor", "external-auditor")
    }

    /// Sends a request and returns status, headers and JSON body (`Value::Null` if empty).
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        purpose: Option<&str>,
        body: Option<&Value>,
    ) -> Response {
        let mut req = self.client.request(method, format!("{}{}", self.base, path));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(p) = purpose {
            req = req.header("X-Purpose", p);
        }
        if let Some(b) = body {
            req = req.json(b);
        }
        Response::from(req.send().await.expect("request sent")).await
    }

    /// Sends raw bytes with a content type.
    pub async fn call_raw(
        &self,
        method: Method,
        path: &str,
        token: &str,
        content_type: Option<&str>,
        body: Vec<u8>,
    ) -> Response {
        let mut req =
            self.client.request(method, format!("{}{}", self.base, path)).bearer_auth(token).body(body);
        if let Some(ct) = content_type {
            req = req.header("Content-Type", ct);
        }
        Response::from(req.send().await.expect("request sent")).await
    }

    /// Creates a customer as the merchant and returns its id.
    pub async fn create_customer(&self, fields: Value) -> String {
        let res = self
            .call(
                Method::POST,
                "/v1/customers",
                Some(&self.merchant()),
                None,
                Some(&json!({ "fields": fields })),
            )
            .await;
        assert_eq!(res.status, StatusCode::CREATED, "create failed: {}", res.body);
        res.body["id"].as_str().expect("id").to_owned()
    }

    /// Reads a customer as the merchant for `purpose`.
    pub async fn read_customer(&self, id: &str, purpose: &str) -> Response {
        self.call(Method::GET, &format!("/v1/customers/{id}"), Some(&self.merchant()), Some(purpose), None)
            .await
    }

    /// Every audit event, paging through `GET /v1/audit/events`.
    pub async fn audit_events(&self) -> Vec<Value> {
        let token = self.auditor();
        let mut events = Vec::new();
        let mut after: Option<u64> = None;
        loop {
            let path = match after {
                Some(a) => format!("/v1/audit/events?limit=1000&after={a}"),
                None => "/v1/audit/events?limit=1000".to_owned(),
            };
            let res = self.call(Method::GET, &path, Some(&token), None, None).await;
            assert_eq!(res.status, StatusCode::OK, "{}", res.body);
            events.extend(res.body["events"].as_array().unwrap().iter().cloned());
            match res.body["next_after"].as_u64() {
                Some(n) => after = Some(n),
                None => return events,
            }
        }
    }

    /// Every file under the data directory, concatenated (for plaintext scans); on PostgreSQL
    /// also every text and byte value in the test's schema.
    pub fn data_dir_bytes(&self) -> Vec<u8> {
        let mut bytes: Vec<u8> =
            files_under(self.data_dir.path()).into_iter().flat_map(|(_, bytes)| bytes).collect();
        if on_postgres() {
            let databases = DATABASES.lock().unwrap_or_else(|p| p.into_inner());
            let db = databases.get(self.data_dir.path()).expect("this app's schema");
            bytes.extend(db.stored_bytes());
        }
        bytes
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        // After a restart this is the fresh, unused directory: the schema stays with the
        // running app.
        DATABASES.lock().unwrap_or_else(|p| p.into_inner()).remove(self.data_dir.path());
        if let Some(stop) = self.stop.take() {
            // The directory goes to the server task, which drops it after its shutdown (whose
            // last flush writes there); a test's end does not wait for that.
            let dir =
                std::mem::replace(&mut self.data_dir, tempfile::tempdir().expect("a temporary directory"));
            let _ = stop.send(Some(dir));
        }
    }
}

/// An answer.
#[derive(Debug)]
pub struct Response {
    /// The status.
    pub status: StatusCode,
    /// The headers.
    pub headers: reqwest::header::HeaderMap,
    /// The JSON body, or `Value::Null` when empty, or a string when not JSON.
    pub body: Value,
}

impl Response {
    async fn from(res: reqwest::Response) -> Response {
        let status = res.status();
        let headers = res.headers().clone();
        let bytes = res.bytes().await.expect("body read");
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()))
        };
        Response { status, headers, body }
    }
}

/// Seconds since the epoch.
pub fn now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64
}

/// Signs claims with the test HS256 secret.
pub fn sign_hs256(claims: Value) -> String {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

/// True if `needle` occurs in `haystack`.
pub fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Rewrites a stored customer record directly in the record file of a stopped server, as an
/// attacker (or a test of time-dependent rules) with access to the data directory would.
pub fn edit_stored_record(
    data_dir: &Path,
    id: &str,
    edit: impl FnOnce(&mut custodia::store::CustomerRecord),
) {
    let uuid: custodia::domain::CustomerId = id.parse().unwrap();
    let db = open_record_files(data_dir);
    let records = db.keyspace("records", fjall::KeyspaceCreateOptions::default).unwrap();
    let stored = records.get(uuid.as_bytes()).unwrap().expect("a stored record");
    // The layout (src/store/sled/keys.rs): `0x80 ‖ key slot (8) ‖ record` when the data key is
    // in the key file; the slot prefix is kept as it is.
    let prefix = if stored[0] == 0x80 { &stored[..9] } else { &stored[..0] };
    let mut record = custodia::store::CustomerRecord::decode(&stored[prefix.len()..]).unwrap();
    edit(&mut record);
    let mut value = prefix.to_vec();
    value.extend(record.encode().unwrap());
    records.insert(uuid.as_bytes().to_vec(), value).unwrap();
    db.persist(fjall::PersistMode::SyncAll).unwrap();
}

/// Turns a stopped server's record file into one whose blind-index entries were never built
/// (src/store/sled/records.rs): without its `index_layout` mark, the next open builds them
/// again from the records.
pub fn forget_index_layout(data_dir: &Path) {
    let db = open_record_files(data_dir);
    let meta = db.keyspace("meta", fjall::KeyspaceCreateOptions::default).unwrap();
    meta.remove("index_layout").unwrap();
    db.persist(fjall::PersistMode::SyncAll).unwrap();
}

/// Stores `owner` as the sole owner of blind index `index` of `field`, as a cut build could
/// have left it (nothing checks it against the records).
pub fn put_stored_index_owner(data_dir: &Path, field: &str, index: &[u8; 32], owner: &CustomerId) {
    let db = open_record_files(data_dir);
    let owners = db.keyspace("owners", fjall::KeyspaceCreateOptions::default).unwrap();
    owners.insert(index_entry_key(field, index), owner.as_bytes()).unwrap();
    db.persist(fjall::PersistMode::SyncAll).unwrap();
}

/// The stored owners of blind index `index` of `field` in a stopped server's record file: the
/// owner count and ids, from the entry's sole owner or its owner keys; `None` if there is no
/// entry (and then no owner key either).
pub fn stored_index_owners(data_dir: &Path, field: &str, index: &[u8; 32]) -> Option<(u64, Vec<CustomerId>)> {
    let db = open_record_files(data_dir);
    let owners = db.keyspace("owners", fjall::KeyspaceCreateOptions::default).unwrap();
    let entry = index_entry_key(field, index);
    let owner_keys: Vec<CustomerId> = owners
        .prefix(&entry)
        .map(|item| item.key().unwrap())
        .filter(|key| key.len() > entry.len())
        .map(|key| CustomerId::from_bytes(key[entry.len()..].try_into().expect("a 16-byte id")))
        .collect();
    match owners.get(&entry).unwrap().map(|value| value.to_vec()) {
        None => {
            assert!(owner_keys.is_empty(), "owner keys without their entry");
            None
        }
        Some(sole) if sole.len() == 16 => {
            assert!(owner_keys.is_empty(), "owner keys beside a sole owner");
            Some((1, vec![CustomerId::from_bytes(sole.try_into().unwrap())]))
        }
        Some(count) => Some((u64::from_be_bytes(count.try_into().expect("an 8-byte count")), owner_keys)),
    }
}

/// A blind-index entry's key in the record file: field ‖ 0 ‖ blind index (its sole owner or
/// owner count; each owner key of a counted entry adds the id).
fn index_entry_key(field: &str, index: &[u8; 32]) -> Vec<u8> {
    let mut key = field.as_bytes().to_vec();
    key.push(0);
    key.extend_from_slice(index);
    key
}

/// Opens a stopped server's record file (`store/records`, src/store/sled/records.rs), waiting
/// (up to 10 s) for the lock of a store closed a moment ago in this process.
fn open_record_files(data_dir: &Path) -> fjall::Database {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        match fjall::Database::builder(data_dir.join("store").join("records")).open() {
            Ok(db) => return db,
            Err(fjall::Error::Locked) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            Err(e) => panic!("opening the stopped server's records: {e}"),
        }
    }
}

/// Reads stored records of a stopped (or killed) server through the store itself, which
/// replays its write-ahead log first, as a restart would.
pub async fn stored_records(data_dir: &Path, ids: &[&str]) -> Vec<custodia::store::CustomerRecord> {
    let settings =
        custodia::store::StorageSettings::Sled { dir: data_dir.join("store"), cache_bytes: 8 << 20 };
    let store = custodia::store::open(&settings, Arc::new(custodia::audit::tree::Tree)).unwrap();
    let mut records = Vec::with_capacity(ids.len());
    for id in ids {
        records.push(store.customer(&id.parse().unwrap()).await.unwrap().expect("a stored record"));
    }
    store.close().await.unwrap();
    records
}

/// Rewrites the data keys of `ids` in a stopped server's store as a version before key epochs
/// stored them: wrapped directly under the master key [`MASTER_KEY`] (a "legacy" key).
pub async fn rewrap_as_legacy(data_dir: &Path, ids: &[&str]) {
    use custodia::crypto::{DataKeyring, MasterKey, MasterKeyring, MissingFile};
    use custodia::store::{CustomerChange, Write};
    let settings =
        custodia::store::StorageSettings::Sled { dir: data_dir.join("store"), cache_bytes: 8 << 20 };
    let store = custodia::store::open(&settings, Arc::new(custodia::audit::tree::Tree)).unwrap();
    let master = MasterKeyring::new(MasterKey::from_base64(MASTER_KEY).unwrap(), vec![]);
    let path = data_dir.join(TEST_EPOCH_FILE);
    let (keyring, _) = DataKeyring::open(master, &path, MissingFile::Refuse, 0).unwrap();
    for chunk in ids.chunks(500) {
        let mut writes = Vec::new();
        for id in chunk {
            let mut record = store.customer(&id.parse().unwrap()).await.unwrap().expect("a stored record");
            let key = keyring.unwrap_data_key(&record.id, &record.data_key).unwrap();
            record.data_key = keyring.master().wrap_data_key(&record.id, &key).unwrap();
            let expected = record.version;
            record.version += 1;
            let change = CustomerChange::Put { record: Box::new(record), expected_version: Some(expected) };
            writes.push(Write {
                need_seqs: true,
                precondition: None,
                change: Some(change),
                events: Vec::new(),
            });
        }
        for outcome in store.write_many(writes).await.unwrap() {
            outcome.unwrap();
        }
    }
    store.close().await.unwrap();
}

/// Reads one stored record of a stopped server.
pub async fn stored_record(data_dir: &Path, id: &str) -> custodia::store::CustomerRecord {
    stored_records(data_dir, &[id]).await.remove(0)
}

/// The newest stored checkpoint (size, note) of a stopped server.
pub fn latest_stored_checkpoint(data_dir: &Path) -> (u64, Vec<u8>) {
    let db = open_store_files(data_dir);
    let tree = db.open_tree("custodia").unwrap();
    let (key, note) = tree.scan_prefix([b'k']).next_back().expect("a checkpoint was signed").unwrap();
    (u64::from_be_bytes(key[1..9].try_into().unwrap()), note.to_vec())
}

/// Overwrites the stored checkpoint note of `size` in a stopped server's files.
pub fn replace_stored_checkpoint(data_dir: &Path, size: u64, note: Vec<u8>) {
    let db = open_store_files(data_dir);
    let tree = db.open_tree("custodia").unwrap();
    let mut key = vec![b'k'];
    key.extend_from_slice(&size.to_be_bytes());
    tree.insert(key, note).unwrap();
    db.flush().unwrap();
}

/// Opens a stopped server's sled files without sled's background flusher thread, so the file
/// lock is released as soon as the handle is dropped. A store closed a moment ago in this
/// process releases sled's lock only when sled's own I/O threads finish, so a held lock is
/// waited for (up to 10 s), as the server's own open does.
pub fn open_store_files(data_dir: &Path) -> sled::Db {
    let config = sled::Config::new().path(data_dir.join("store")).flush_every_ms(None);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        match config.open() {
            Ok(db) => return db,
            Err(sled::Error::Io(e))
                if e.to_string().contains("could not acquire lock")
                    && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            Err(e) => panic!("opening the stopped server's store: {e}"),
        }
    }
}

/// The release binary running as its own process (for kill -9, SIGTERM and log tests).
pub struct ServerProcess {
    /// The child process.
    pub child: std::process::Child,
    /// `http://127.0.0.1:port`.
    pub base: String,
}

impl ServerProcess {
    /// Starts `custodia serve` over `data_dir` with the test keys, plus `env` overrides.
    /// Its stderr (the log) goes to `data_dir/../server.log` when `CUSTODIA_TEST_LOG_FILE` is
    /// among `env`, otherwise it is discarded. The epoch-key file is [`TEST_EPOCH_FILE`] in
    /// `data_dir` unless `env` sets `CUSTODIA_KEY_EPOCH_FILE`.
    pub fn start(data_dir: &Path, env: &[(&str, &str)]) -> ServerProcess {
        use std::io::{BufRead, BufReader};
        use std::process::{Command, Stdio};
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_custodia"));
        cmd.arg("serve")
            .env("CUSTODIA_LISTEN", "127.0.0.1:0")
            .env("CUSTODIA_DATA_DIR", data_dir)
            .env("CUSTODIA_POLICIES", concat!(env!("CARGO_MANIFEST_DIR"), "/policies"))
            .env("CUSTODIA_MASTER_KEY", MASTER_KEY)
            .env("CUSTODIA_JWT_HS256_SECRET", SECRET)
            .env("CUSTODIA_KEY_EPOCH_FILE", data_dir.join(TEST_EPOCH_FILE))
            .envs(store_env(data_dir))
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        for (k, v) in env {
            if *k == "CUSTODIA_TEST_LOG_FILE" {
                cmd.stderr(std::fs::File::create(v).expect("log file"));
            } else {
                cmd.env(k, v);
            }
        }
        let mut child = cmd.spawn().expect("server binary starts");
        let stdout = child.stdout.take().unwrap();
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).unwrap();
        let base = line.trim().rsplit(' ').next().expect("listening line").to_owned();
        assert!(base.starts_with("http://") || base.starts_with("https://"), "unexpected first line: {line}");
        ServerProcess { child, base }
    }

    /// Sends SIGTERM and waits; returns whether the process exited with status 0.
    pub fn terminate(&mut self) -> bool {
        let _ = std::process::Command::new("kill").arg("-TERM").arg(self.child.id().to_string()).status();
        self.child.wait().map(|s| s.success()).unwrap_or(false)
    }

    /// Sends SIGKILL and waits.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs the `custodia` binary with `args` and `env` (without the caller's
/// `CUSTODIA_DATABASE_URL`, unless `env` sets one); (success, stdout, stderr).
pub async fn run_custodia(args: &[&str], env: &[(&str, &str)]) -> (bool, String, String) {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_custodia"))
        .args(args)
        .env_remove("CUSTODIA_DATABASE_URL")
        .envs(env.iter().copied())
        .output()
        .await
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Creates customers from `writers` concurrent tasks until a request fails or `stop` is set;
/// returns (id, email) of every acknowledged create.
pub async fn write_until_stopped(
    base: &str,
    writers: usize,
    stop: Arc<Mutex<bool>>,
) -> Vec<(String, String)> {
    let client = reqwest::Client::new();
    let token = TestApp::token_for_tests();
    let acked = Arc::new(Mutex::new(Vec::new()));
    // E-mail is a unique field: a second call over the same store (a crash run's next cycle)
    // must not stop at its first create on a clash with the first call's customers.
    let call = uuid::Uuid::new_v4().simple().to_string();
    let mut tasks = Vec::new();
    for w in 0..writers {
        let (client, base, token, acked, stop, call) = (
            client.clone(),
            base.to_owned(),
            token.clone(),
            Arc::clone(&acked),
            Arc::clone(&stop),
            call.clone(),
        );
        tasks.push(tokio::spawn(async move {
            for i in 0.. {
                if *stop.lock().unwrap() {
                    return;
                }
                let email = format!("w{w}-{i}-{call}@ops.test");
                let res = client
                    .post(format!("{base}/v1/customers"))
                    .bearer_auth(&token)
                    .json(&json!({"fields": {"email": email, "name": format!("Writer {w} {i}")}}))
                    .send()
                    .await;
                match res {
                    Ok(r) if r.status() == StatusCode::CREATED => {
                        let body: Value = r.json().await.unwrap_or_default();
                        if let Some(id) = body["id"].as_str() {
                            acked.lock().unwrap().push((id.to_owned(), email));
                        }
                    }
                    _ => return,
                }
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    acked.lock().unwrap().clone()
}

/// Every regular file under `dir`, recursively: (path, bytes).
pub fn files_under(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else if path.is_file() {
                // Not the server's control socket, which cannot be read as a file.
                out.push((path.display().to_string(), std::fs::read(&path).unwrap()));
            }
        }
    }
    out
}

/// The data keyring (test master key and epoch keys) from a copy of `epoch_file`: a running
/// server holds the original locked.
pub fn epoch_keyring(epoch_file: &Path) -> custodia::crypto::DataKeyring {
    use custodia::crypto::{DataKeyring, MasterKey, MasterKeyring, MissingFile};
    let copy = tempfile::tempdir().unwrap();
    let path = copy.path().join("epoch-keys");
    std::fs::copy(epoch_file, &path).unwrap();
    let master = MasterKeyring::new(MasterKey::from_base64(MASTER_KEY).unwrap(), Vec::new());
    DataKeyring::open(master, &path, MissingFile::Refuse, 0).unwrap().0
}

/// Waits (bounded by `within`) until the audit log records the destruction of every epoch in
/// `epochs`; answers their `key.rotate` `epoch_destroyed` events, in the order of `epochs`.
pub async fn wait_for_epochs_destroyed(
    app: &TestApp,
    epochs: &[String],
    within: std::time::Duration,
) -> Vec<Value> {
    let deadline = std::time::Instant::now() + within;
    loop {
        let res = app
            .call(
                reqwest::Method::GET,
                "/v1/audit/events?action=key.rotate&limit=1000",
                Some(&app.auditor()),
                None,
                None,
            )
            .await;
        assert_eq!(res.status, reqwest::StatusCode::OK, "{}", res.body);
        let events = res.body["events"].as_array().unwrap();
        let destroyed = |epoch: &String| {
            let wanted = format!("epoch:{epoch}");
            events
                .iter()
                .find(|e| {
                    e["reason"][0] == "epoch_destroyed"
                        && e["reason"].as_array().unwrap().iter().any(|r| r == &wanted)
                })
                .cloned()
        };
        let found: Vec<Value> = epochs.iter().filter_map(destroyed).collect();
        if found.len() == epochs.len() {
            return found;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "epochs {epochs:?} not destroyed within {within:?}; key.rotate events: {}",
            res.body["events"]
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}
