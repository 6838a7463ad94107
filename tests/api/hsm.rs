//! The master key in an HSM through PKCS#11, against SoftHSM2 from Debian's packages: each test
//! initialises its own token in a temporary directory (`SOFTHSM2_CONF` pointing
//! `directories.tokendir` there), creates the key with `custodia keys hsm-generate`, and runs the
//! real server binary as a child process (the PKCS#11 module reads `SOFTHSM2_CONF` once per
//! process, so every token gets its own process).
//!
//! Without SoftHSM2 a test prints that it was skipped, unless `CI` or `CUSTODIA_REQUIRE_HSM=1`
//! is set (`.ci/run` installs `softhsm2` and sets it); then it fails.

use std::path::PathBuf;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tempfile::TempDir;

use crate::helpers::{MASTER_KEY, SECRET, ServerProcess, TEST_EPOCH_FILE, TestApp};

const PIN: &str = "246813579";
const SO_PIN: &str = "97531-so";
const TOKEN: &str = "custodia-test";
const KEY: &str = "custodia-master";

/// Where Debian's `softhsm2` puts the module; `CUSTODIA_TEST_PKCS11_MODULE` overrides it.
fn module_path() -> PathBuf {
    std::env::var_os("CUSTODIA_TEST_PKCS11_MODULE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/lib/softhsm/libsofthsm2.so"))
}

/// A SoftHSM2 token of its own in a temporary directory.
struct SoftHsm {
    dir: TempDir,
    conf: PathBuf,
}

impl SoftHsm {
    /// A fresh token labelled [`TOKEN`] with user PIN [`PIN`], or `None` (after printing that
    /// `test` was skipped) when SoftHSM2 is not installed and not required.
    fn init(test: &str) -> Option<SoftHsm> {
        let util = Command::new("softhsm2-util").arg("--version").output();
        let installed = util.is_ok_and(|o| o.status.success()) && module_path().exists();
        if !installed {
            let required = std::env::var_os("CI").is_some()
                || std::env::var("CUSTODIA_REQUIRE_HSM").is_ok_and(|v| v == "1");
            assert!(
                !required,
                "{test}: SoftHSM2 is required here (CI or CUSTODIA_REQUIRE_HSM=1) but softhsm2-util or {} is missing; apt-get install softhsm2",
                module_path().display()
            );
            println!("SKIPPED {test}: SoftHSM2 is not installed (apt-get install softhsm2; .ci/run does)");
            return None;
        }
        let dir = tempfile::tempdir().expect("temp dir");
        let tokens = dir.path().join("tokens");
        std::fs::create_dir(&tokens).unwrap();
        let conf = dir.path().join("softhsm2.conf");
        std::fs::write(
            &conf,
            format!(
                "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\n",
                tokens.display()
            ),
        )
        .unwrap();
        let out = Command::new("softhsm2-util")
            .env("SOFTHSM2_CONF", &conf)
            .args(["--init-token", "--free", "--label", TOKEN, "--pin", PIN, "--so-pin", SO_PIN])
            .output()
            .expect("softhsm2-util runs");
        assert!(out.status.success(), "init-token: {}", String::from_utf8_lossy(&out.stderr));
        Some(SoftHsm { dir, conf })
    }

    /// The settings of the token, with `key` as the current master key (`None`: none from the
    /// token) and the file key unset.
    fn env(&self, key: Option<&str>) -> Vec<(String, String)> {
        let mut env = vec![
            ("SOFTHSM2_CONF".to_owned(), self.conf.display().to_string()),
            ("CUSTODIA_MASTER_KEY_PKCS11_MODULE".to_owned(), module_path().display().to_string()),
            ("CUSTODIA_MASTER_KEY_PKCS11_TOKEN".to_owned(), TOKEN.to_owned()),
            ("CUSTODIA_MASTER_KEY_PKCS11_PIN".to_owned(), PIN.to_owned()),
        ];
        if let Some(key) = key {
            env.push(("CUSTODIA_MASTER_KEY_PKCS11_KEY".to_owned(), key.to_owned()));
            // An empty value unsets the file key the test servers get by default.
            env.push(("CUSTODIA_MASTER_KEY".to_owned(), String::new()));
        }
        env
    }

    /// Runs `custodia keys hsm-generate --label label`; returns the new key's id (`mk-…`).
    fn generate(&self, label: &str) -> String {
        let out = custodia(&self.env(None), &["keys", "hsm-generate", "--label", label]);
        assert!(out.status.success(), "hsm-generate: {}", String::from_utf8_lossy(&out.stderr));
        let text = String::from_utf8(out.stdout).unwrap();
        let start = text.find("mk-").expect("the output names the key id");
        text[start..start + 19].to_owned()
    }
}

/// Runs the binary with `env` over the test defaults and waits for it.
fn custodia(env: &[(String, String)], args: &[&str]) -> std::process::Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_custodia"));
    cmd.args(args)
        .env("CUSTODIA_POLICIES", concat!(env!("CARGO_MANIFEST_DIR"), "/policies"))
        .env("CUSTODIA_JWT_HS256_SECRET", SECRET)
        .env("CUSTODIA_LISTEN", "127.0.0.1:0")
        .env("RUST_LOG", "warn");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("custodia runs")
}

/// `serve` over `data` with `env`, expected to refuse to start; returns its stderr.
fn refused_start(data: &std::path::Path, env: &[(String, String)]) -> String {
    let mut env = env.to_vec();
    env.push(("CUSTODIA_DATA_DIR".to_owned(), data.display().to_string()));
    env.push(("CUSTODIA_KEY_EPOCH_FILE".to_owned(), data.join(TEST_EPOCH_FILE).display().to_string()));
    let out = custodia(&env, &["serve"]);
    assert!(!out.status.success(), "the server started: {}", String::from_utf8_lossy(&out.stdout));
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn start(data: &std::path::Path, env: &[(String, String)]) -> ServerProcess {
    let pairs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    ServerProcess::start(data, &pairs)
}

/// Asserts that the server at `base` made no PKCS#11 call on an async worker: start-up (token
/// login, key lookup, system keys, epoch-key file), epoch creation and master rotation run
/// their token calls on tokio's blocking pool (`crypto::off_async_workers`).
async fn assert_no_token_calls_on_async_workers(base: &str) {
    let metrics = CLIENT.get(format!("{base}/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(
        !metrics.contains("custodia_pkcs11_calls_on_async_workers_total"),
        "PKCS#11 calls ran on async workers: {}",
        metrics.lines().filter(|l| l.contains("pkcs11")).collect::<Vec<_>>().join("\n")
    );
}

/// One client for the whole module (keep-alive; building one per request is slow).
static CLIENT: std::sync::LazyLock<reqwest::Client> = std::sync::LazyLock::new(reqwest::Client::new);

async fn call(base: &str, method: Method, path: &str, body: Option<Value>) -> (StatusCode, Value) {
    let mut req = CLIENT
        .request(method, format!("{base}{path}"))
        .bearer_auth(TestApp::token_for_tests())
        .header("X-Purpose", "order_fulfillment");
    if let Some(body) = body {
        req = req.json(&body);
    }
    let res = req.send().await.expect("request sent");
    let status = res.status();
    (status, res.json().await.unwrap_or(Value::Null))
}

/// Creates customers (emails starting with `prefix`, unique across phases) from `writers` tasks
/// until `stop` is set; returns (id, email) of every acknowledged create. Any answer but 201
/// fails the test: a rotation must not disturb writers.
async fn write_until_stopped(
    base: &str,
    prefix: &str,
    writers: usize,
    stop: Arc<Mutex<bool>>,
) -> Vec<(String, String)> {
    let client = reqwest::Client::new();
    let token = TestApp::token_for_tests();
    let mut tasks = Vec::new();
    for w in 0..writers {
        let (client, base, token, stop, prefix) =
            (client.clone(), base.to_owned(), token.clone(), Arc::clone(&stop), prefix.to_owned());
        tasks.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            for i in 0.. {
                if *stop.lock().unwrap() {
                    break;
                }
                let email = format!("{prefix}-{w}-{i}@hsm.test");
                let res = client
                    .post(format!("{base}/v1/customers"))
                    .bearer_auth(&token)
                    .json(&json!({"fields": {"email": email, "name": format!("Writer {w} {i}")}}))
                    .send()
                    .await
                    .expect("request sent");
                assert_eq!(res.status(), StatusCode::CREATED, "create {email}");
                let body: Value = res.json().await.unwrap();
                acked.push((body["id"].as_str().unwrap().to_owned(), email));
            }
            acked
        }));
    }
    let mut acked = Vec::new();
    for t in tasks {
        acked.extend(t.await.expect("writer"));
    }
    acked
}

/// Audit events of a running server with `action` after `after`: (first reason, seq), oldest first.
/// Every event of `action` after `after`, following `next_after` page by page: a filtered page
/// scans a bounded number of events, so under load (a longer log) one page is not the log.
async fn audit_events(base: &str, action: &str, after: Option<u64>) -> Vec<(String, u64)> {
    let mut events = Vec::new();
    let mut after = after;
    loop {
        let from = after.map(|a| format!("&after={a}")).unwrap_or_default();
        let res = CLIENT
            .get(format!("{base}/v1/audit/events?action={action}&limit=1000{from}"))
            .bearer_auth(TestApp::auditor_token())
            .send()
            .await
            .unwrap();
        let body: Value = res.json().await.unwrap();
        events.extend(
            body["events"]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| (e["reason"][0].as_str().unwrap_or("").to_owned(), e["seq"].as_u64().unwrap())),
        );
        match body["next_after"].as_u64() {
            Some(next) if Some(next) != after => after = Some(next),
            _ => return events,
        }
    }
}

/// Waits until the running server has completed a master-key rotation to its current key;
/// returns the seqs of that rotation's `started` and `completed` events. On a timeout the
/// failure shows the server's log (`log`, its `CUSTODIA_TEST_LOG_FILE`): a rotation that stopped
/// says why there.
async fn wait_for_rotation(base: &str, log: &std::path::Path, completed_before: usize) -> (u64, u64) {
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        let events = audit_events(base, "key.rotate", None).await;
        let completed: Vec<u64> = events.iter().filter(|(r, _)| r == "completed").map(|(_, s)| *s).collect();
        if completed.len() > completed_before {
            let done = completed[completed_before];
            let started =
                events.iter().filter(|(r, s)| r == "started" && *s < done).map(|(_, s)| *s).max().unwrap();
            return (started, done);
        }
        if std::time::Instant::now() >= deadline {
            let log = std::fs::read_to_string(log).unwrap_or_default();
            panic!("the rotation did not complete: {events:?}\nserver log:\n{log}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_master_key_in_softhsm_customers_are_created_read_erased_and_survive_a_restart() {
    let Some(hsm) = SoftHsm::init("hsm_create_read_erase_restart") else { return };
    let id = hsm.generate(KEY);
    let data = hsm.dir.path().join("data");
    let env = hsm.env(Some(KEY));

    let mut server = start(&data, &env);
    let (status, kept) = call(
        &server.base,
        Method::POST,
        "/v1/customers",
        Some(json!({"fields": {"email": "kept@hsm.test", "name": "Kept Customer"}})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{kept}");
    let kept = kept["id"].as_str().unwrap().to_owned();
    let (_, erased) = call(
        &server.base,
        Method::POST,
        "/v1/customers",
        Some(json!({"fields": {"email": "gone@hsm.test", "name": "Erased Customer"}})),
    )
    .await;
    let erased = erased["id"].as_str().unwrap().to_owned();
    let (status, body) = call(&server.base, Method::GET, &format!("/v1/customers/{kept}"), None).await;
    assert_eq!((status, &body["fields"]["email"]), (StatusCode::OK, &json!("kept@hsm.test")));
    let (status, _) = call(&server.base, Method::DELETE, &format!("/v1/customers/{erased}"), None).await;
    assert_eq!(status, StatusCode::OK);
    assert_no_token_calls_on_async_workers(&server.base).await;
    assert!(server.terminate(), "clean shutdown");

    // The store is sealed under the token's key: the file key alone does not open it, and the
    // error names the key the store needs.
    let err = refused_start(&data, &[("CUSTODIA_MASTER_KEY".to_owned(), MASTER_KEY.to_owned())]);
    assert!(err.contains(&id), "{err}");

    let server = start(&data, &env);
    let (status, body) = call(&server.base, Method::GET, &format!("/v1/customers/{kept}"), None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["fields"]["name"], "Kept Customer");
    let (status, _) = call(&server.base, Method::GET, &format!("/v1/customers/{erased}"), None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotating_from_the_file_key_to_the_hsm_key_under_load_lets_the_file_key_go_and_back() {
    let Some(hsm) = SoftHsm::init("hsm_rotation_under_load") else { return };
    hsm.generate(KEY);
    let data = hsm.dir.path().join("data");
    // Epochs turn over every second, so epoch keys are also created under the token's key.
    let fast = [("CUSTODIA_KEY_EPOCH_SECONDS".to_owned(), "1".to_owned())];

    // 1. Under the file key.
    let mut server = start(&data, &fast);
    let stop = Arc::new(Mutex::new(false));
    let writers = tokio::spawn({
        let (base, stop) = (server.base.clone(), Arc::clone(&stop));
        async move { write_until_stopped(&base, "file", 8, stop).await }
    });
    tokio::time::sleep(Duration::from_millis(2500)).await;
    *stop.lock().unwrap() = true;
    let mut acknowledged = writers.await.unwrap();
    assert!(server.terminate());
    assert!(acknowledged.len() > 50, "only {} creates", acknowledged.len());
    let t0 = std::time::Instant::now();

    // 2. The token's key current, the file key previous: the rotation runs while writers do.
    let mut rotating = hsm.env(Some(KEY));
    rotating.extend(fast.iter().cloned());
    rotating.push(("CUSTODIA_PREVIOUS_MASTER_KEYS".to_owned(), MASTER_KEY.to_owned()));
    rotating.push(("CUSTODIA_ROTATION_PAUSE_MS".to_owned(), "100".to_owned()));
    let log = hsm.dir.path().join("rotating.log");
    rotating.push(("CUSTODIA_TEST_LOG_FILE".to_owned(), log.display().to_string()));
    let mut server = start(&data, &rotating);
    let stop = Arc::new(Mutex::new(false));
    let writers = tokio::spawn({
        let (base, stop) = (server.base.clone(), Arc::clone(&stop));
        async move { write_until_stopped(&base, "rotating", 8, stop).await }
    });
    let (started, completed) = wait_for_rotation(&server.base, &log, 0).await;
    // The rotation ran under load: a create was logged between its start and its completion.
    let creates = audit_events(&server.base, "customer.create", Some(started)).await;
    assert!(creates.first().is_some_and(|(_, seq)| *seq < completed), "no create during the rotation");
    // Writers keep going a little after the rotation finished, across an epoch change.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    *stop.lock().unwrap() = true;
    let during = writers.await.unwrap();
    assert!(!during.is_empty(), "no creates during the rotation");
    eprintln!(
        "{} creates under the file key, {} during the rotation ({:?})",
        acknowledged.len(),
        during.len(),
        t0.elapsed()
    );
    acknowledged.extend(during);
    assert_no_token_calls_on_async_workers(&server.base).await;
    assert!(server.terminate());

    // 3. The file key removed: everything reads back under the token's key alone.
    let mut hsm_only = hsm.env(Some(KEY));
    hsm_only.extend(fast.iter().cloned());
    let mut server = start(&data, &hsm_only);
    for (id, email) in &acknowledged {
        let (status, body) = call(&server.base, Method::GET, &format!("/v1/customers/{id}"), None).await;
        assert_eq!(status, StatusCode::OK, "{id} unreadable under the HSM key: {body}");
        assert_eq!(body["fields"]["email"], email.as_str());
    }
    assert!(server.terminate());

    eprintln!("read back {} under the HSM key alone ({:?})", acknowledged.len(), t0.elapsed());

    // 4. And back: the file key current, the token's key previous (`pkcs11:<label>`); then the
    //    file key alone.
    let mut back = hsm.env(None);
    back.extend(fast.iter().cloned());
    back.push(("CUSTODIA_PREVIOUS_MASTER_KEYS".to_owned(), format!("pkcs11:{KEY}")));
    let log = hsm.dir.path().join("back.log");
    back.push(("CUSTODIA_TEST_LOG_FILE".to_owned(), log.display().to_string()));
    let mut server = start(&data, &back);
    wait_for_rotation(&server.base, &log, 1).await;
    assert_no_token_calls_on_async_workers(&server.base).await;
    assert!(server.terminate());
    let server = start(&data, &fast);
    for (id, email) in acknowledged.iter().step_by(7) {
        let (status, body) = call(&server.base, Method::GET, &format!("/v1/customers/{id}"), None).await;
        assert_eq!(status, StatusCode::OK, "{id} unreadable under the file key again: {body}");
        assert_eq!(body["fields"]["email"], email.as_str());
    }
}

#[tokio::test]
async fn a_wrong_pin_is_a_start_up_error_naming_the_setting_and_not_the_pin() {
    let Some(hsm) = SoftHsm::init("hsm_wrong_pin") else { return };
    hsm.generate(KEY);
    let data = hsm.dir.path().join("data");
    let wrong = "wrong-pin-86420";
    let mut env = hsm.env(Some(KEY));
    env.retain(|(k, _)| k != "CUSTODIA_MASTER_KEY_PKCS11_PIN");
    env.push(("CUSTODIA_MASTER_KEY_PKCS11_PIN".to_owned(), wrong.to_owned()));
    let err = refused_start(&data, &env);
    assert!(err.contains("CUSTODIA_MASTER_KEY_PKCS11_PIN:"), "{err}");
    assert!(!err.contains("86420"), "the PIN leaked: {err}");

    // From a file, the error names the file setting.
    let pin_file = hsm.dir.path().join("pin");
    std::fs::write(&pin_file, format!("{wrong}\n")).unwrap();
    env.retain(|(k, _)| k != "CUSTODIA_MASTER_KEY_PKCS11_PIN");
    env.push(("CUSTODIA_MASTER_KEY_PKCS11_PIN_FILE".to_owned(), pin_file.display().to_string()));
    let err = refused_start(&data, &env);
    assert!(err.contains("CUSTODIA_MASTER_KEY_PKCS11_PIN_FILE:"), "{err}");
    assert!(!err.contains("86420"), "the PIN leaked: {err}");

    // The right PIN from the file starts the server.
    std::fs::write(&pin_file, format!("{PIN}\n")).unwrap();
    let server = start(&data, &env);
    let res = reqwest::get(format!("{}/healthz", server.base)).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
}

#[test]
fn a_missing_key_label_or_token_is_a_start_up_error_naming_the_setting() {
    let Some(hsm) = SoftHsm::init("hsm_missing_key") else { return };
    let data = hsm.dir.path().join("data");
    let err = refused_start(&data, &hsm.env(Some("no-such-key")));
    assert!(err.contains("CUSTODIA_MASTER_KEY_PKCS11_KEY:") && err.contains("no-such-key"), "{err}");

    let mut env = hsm.env(Some(KEY));
    env.retain(|(k, _)| k != "CUSTODIA_MASTER_KEY_PKCS11_TOKEN");
    env.push(("CUSTODIA_MASTER_KEY_PKCS11_TOKEN".to_owned(), "no-such-token".to_owned()));
    let err = refused_start(&data, &env);
    assert!(err.contains("CUSTODIA_MASTER_KEY_PKCS11_TOKEN:"), "{err}");

    // A previous key naming a label the token lacks names that setting.
    let mut env = hsm.env(None);
    env.push(("CUSTODIA_MASTER_KEY".to_owned(), MASTER_KEY.to_owned()));
    env.push(("CUSTODIA_PREVIOUS_MASTER_KEYS".to_owned(), "pkcs11:no-such-key".to_owned()));
    let err = refused_start(&data, &env);
    assert!(err.contains("CUSTODIA_PREVIOUS_MASTER_KEYS:"), "{err}");

    // Both a file key and a token key as current is refused, naming the token setting.
    let mut env = hsm.env(Some(KEY));
    env.retain(|(k, _)| k != "CUSTODIA_MASTER_KEY");
    env.push(("CUSTODIA_MASTER_KEY".to_owned(), MASTER_KEY.to_owned()));
    let err = refused_start(&data, &env);
    assert!(err.contains("CUSTODIA_MASTER_KEY_PKCS11_KEY"), "{err}");
    assert!(!data.join("store").exists(), "a refused start created the store");
}

#[test]
fn generated_keys_have_distinct_ids_and_a_label_is_not_generated_twice() {
    let Some(hsm) = SoftHsm::init("hsm_generate") else { return };
    let a = hsm.generate("key-a");
    let b = hsm.generate("key-b");
    assert_ne!(a, b);
    assert!(a.starts_with("mk-") && b.starts_with("mk-"));
    let again = custodia(&hsm.env(None), &["keys", "hsm-generate", "--label", "key-a"]);
    assert!(!again.status.success());
    let err = String::from_utf8_lossy(&again.stderr);
    assert!(err.contains("already holds") && err.contains("key-a"), "{err}");
}
