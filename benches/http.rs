//! HTTP load benchmark: the release server as a separate process on a fresh data directory,
//! driven by C keep-alive connections per scenario for a fixed time.
//!
//! ```text
//! cargo bench --bench http                 # full run: 100,000 customers, 64 connections, 10 s
//! cargo bench --bench http -- --smoke      # seconds-long run with tiny N (CI runs this)
//! ```
//! Knobs (environment): `HTTP_BENCH_CUSTOMERS`, `HTTP_BENCH_CONNECTIONS`, `HTTP_BENCH_SECONDS`,
//! `HTTP_BENCH_ONLY` (comma-separated scenario names), `HTTP_BENCH_GROW_TO=M` (after the
//! scenarios, preload up to M customers and run `healthz`, `read` and `create` again, so the
//! cost at two store sizes is compared in one run), `HTTP_BENCH_ALTERNATE=M` (instead of all
//! that: two servers side by side, one with the preload and one with M customers, and
//! `HTTP_BENCH_ROUNDS` rounds, default 6, of `read`, then of `create`, on each in turn, so the two
//! sizes are compared under the same machine conditions; see `alternate_sizes`), `HTTP_BENCH_TLS=1` (then restart the server
//! over the same data with TLS and run `healthz`, `read` and `create` again over HTTPS), `HTTP_BENCH_KEEP=1`
//! (keep the data directory and print its path), `HTTP_BENCH_BACKUP=1` (after the scenarios, time
//! `custodia backup` of the preloaded store alone, then run `read` twice, without a backup and
//! while backups run back to back through the server's control socket), and `HTTP_BENCH_PROFILE=FILE` to run the server under
//! `perf record -e cpu-clock -g` writing FILE (profile before optimising). With
//! `CUSTODIA_MASTER_KEY_PKCS11_KEY` and the other `CUSTODIA_MASTER_KEY_PKCS11_*` settings (and
//! `SOFTHSM2_CONF` for SoftHSM) in the environment, the server's master key is that HSM key
//! instead of the built-in file key (README: "The master key in an HSM").
//! `HTTP_BENCH_DATABASE_URL=URL` runs the server on PostgreSQL at URL (`CUSTODIA_STORE=postgres`;
//! give it an empty database or schema) instead of sled; the restart then reopens that database.
//! With it, `HTTP_BENCH_NODES=N` starts N servers on that database and spreads each scenario's
//! requests over them (preloads, metrics, TLS and the restart use the first).
//! Prints a table (requests/s, p50, p99, p99.9, errors, ratio to the `healthz` run last before
//! the row (the first phase's, the grown store's or the TLS restart's), the mean
//! group-commit batch from the server's metrics, the bytes written to the data directory's
//! disk per request, from the device's statistics, and the CPU time the Custodia servers (not
//! PostgreSQL, not the load generator) used per request, from `/proc/PID/stat`; none under
//! `HTTP_BENCH_PROFILE`), the server's peak RSS and data-directory size, and writes the same
//! figures to `target/http-bench.json`.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

const SECRET: &str = "bench-secret-bench-secret-bench-secret-0000";
const MASTER_KEY: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
/// How long the client keeps an unused connection: under the server's 10 s header-read timeout
/// (which also closes idle keep-alive connections), so the client never sends on a connection
/// the server is closing. Without it a request failed now and then on sending (a transport
/// error, over TLS, about 1 in 10^5 requests): most likely a pooled connection left unused for
/// 10 s, which an HTTP/1.1 client must expect the server to close at any moment.
const POOL_IDLE: Duration = Duration::from_secs(5);

#[derive(Clone, Copy)]
struct Config {
    customers: usize,
    connections: usize,
    seconds: f64,
}

#[derive(Clone, Copy, PartialEq)]
enum Scenario {
    Healthz,
    Create,
    Read,
    Lookup,
    Disclosure,
    Mixed,
}

impl Scenario {
    /// In this order: the scenarios that add no customers run first, so they run over exactly
    /// the preloaded store (`create` adds some 80,000 in 10 s, and reads slow as the store grows).
    const ALL: [Scenario; 6] = [
        Scenario::Healthz,
        Scenario::Read,
        Scenario::Lookup,
        Scenario::Disclosure,
        Scenario::Create,
        Scenario::Mixed,
    ];

    fn name(self) -> &'static str {
        match self {
            Scenario::Healthz => "healthz",
            Scenario::Create => "create",
            Scenario::Read => "read",
            Scenario::Lookup => "lookup",
            Scenario::Disclosure => "disclosure",
            Scenario::Mixed => "mixed",
        }
    }
}

struct Outcome {
    scenario: Scenario,
    /// The scenario's name, with the store size when it was run again on a grown store.
    label: String,
    /// Mean group-commit batch (writes per log sync) during the scenario.
    mean_batch: Option<f64>,
    /// Bytes the server wrote to disk per request during the scenario.
    write_bytes_per_request: Option<f64>,
    /// CPU time (user + system) the servers used per request during the scenario, microseconds.
    cpu_us_per_request: Option<f64>,
    /// PostgreSQL: events the sequencer integrated per second, and the decision-to-seq delay's
    /// p50 and p99 (histogram bucket bounds, seconds).
    integration: Option<(f64, Option<f64>, Option<f64>)>,
    requests: usize,
    errors: usize,
    elapsed: Duration,
    latencies_us: Vec<u32>,
}

impl Outcome {
    fn rps(&self) -> f64 {
        self.requests as f64 / self.elapsed.as_secs_f64()
    }

    fn percentile_ms(&self, p: f64) -> f64 {
        if self.latencies_us.is_empty() {
            return 0.0;
        }
        let i = ((self.latencies_us.len() as f64 * p).ceil() as usize).clamp(1, self.latencies_us.len()) - 1;
        f64::from(self.latencies_us[i]) / 1000.0
    }
}

fn main() {
    let smoke = std::env::args().any(|a| a == "--smoke");
    let env =
        |name: &str, default: f64| std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default);
    let config = if smoke {
        Config { customers: 200, connections: 8, seconds: 0.5 }
    } else {
        Config {
            customers: env("HTTP_BENCH_CUSTOMERS", 100_000.0) as usize,
            connections: env("HTTP_BENCH_CONNECTIONS", 64.0) as usize,
            seconds: env("HTTP_BENCH_SECONDS", 10.0),
        }
    };
    let dir = tempfile::tempdir().expect("temp dir");
    DATA_DISK.get_or_init(|| disk_stat_of(dir.path()));
    match std::env::var("CUSTODIA_MASTER_KEY_PKCS11_KEY") {
        Ok(key) => println!("master key: {key:?} in a PKCS#11 token"),
        Err(_) => println!("master key: a file key"),
    }
    let alternate_to = std::env::var("HTTP_BENCH_ALTERNATE").ok().and_then(|v| v.parse::<usize>().ok());
    if alternate_to.is_some_and(|m| m <= config.customers) {
        eprintln!("HTTP_BENCH_ALTERNATE is not above the preload ({}): ignored", config.customers);
    }
    if let Some(large) = alternate_to.filter(|m| *m > config.customers) {
        // Two servers on one database would hold one store, not two sizes.
        assert!(
            std::env::var_os("HTTP_BENCH_DATABASE_URL").is_none(),
            "HTTP_BENCH_ALTERNATE runs two sled stores; it does not take HTTP_BENCH_DATABASE_URL"
        );
        for knob in [
            "HTTP_BENCH_TLS",
            "HTTP_BENCH_BACKUP",
            "HTTP_BENCH_KEEP",
            "HTTP_BENCH_PROFILE",
            "HTTP_BENCH_NODES",
        ] {
            if std::env::var_os(knob).is_some() {
                eprintln!("{knob} is not used with HTTP_BENCH_ALTERNATE: ignored");
            }
        }
        let rounds = if smoke { 2 } else { env("HTTP_BENCH_ROUNDS", 6.0).max(1.0) as usize };
        return alternate_sizes(&config, smoke, large, rounds, dir.path());
    }
    let (mut child, base) = start_server(dir.path(), true, &[]);
    let pid = child.id();
    // More nodes on the same PostgreSQL database, each with a copy of the first's epoch-key
    // file (none with `CUSTODIA_KEY_DATABASE_URL` in the environment: the nodes share that).
    let nodes = if smoke { 1 } else { env("HTTP_BENCH_NODES", 1.0) as usize };
    assert!(
        nodes <= 1 || std::env::var_os("HTTP_BENCH_DATABASE_URL").is_some(),
        "HTTP_BENCH_NODES needs HTTP_BENCH_DATABASE_URL: nodes share a database"
    );
    let mut extra = Vec::new();
    for _ in 1..nodes.max(1) {
        let node_dir = tempfile::tempdir().expect("temp dir");
        let file = dir.path().join("epoch-keys");
        if file.exists() {
            std::fs::copy(&file, node_dir.path().join("epoch-keys")).expect("epoch keys");
        }
        let (node, node_base) = start_server(node_dir.path(), false, &[]);
        extra.push((node_dir, node, node_base));
    }
    let others: Vec<String> = extra.iter().map(|(_, _, b)| b.clone()).collect();
    if !others.is_empty() {
        println!("{} nodes on one database: {base} and {}", others.len() + 1, others.join(", "));
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let (mut outcomes, ids, next_new) = runtime.block_on(run(&config, &base, &others, dir.path()));
    let rss_kib = peak_rss_kib(pid);
    for (_, node, _) in &mut extra {
        stop_server(node, false);
    }
    stop_server(&mut child, true);
    if std::env::var_os("HTTP_BENCH_TLS").is_some() {
        let certs = tempfile::tempdir().expect("temp dir");
        let (ca_pem, cert, key) = test_certificate(certs.path());
        let env = [("CUSTODIA_TLS_CERT", cert.into_os_string()), ("CUSTODIA_TLS_KEY", key.into_os_string())];
        let (mut child, base) = start_server(dir.path(), false, &env);
        outcomes.extend(runtime.block_on(run_tls(&config, &base, &ca_pem, ids, next_new)));
        stop_server(&mut child, false);
    }
    let data_bytes = dir_size(dir.path());
    let customers = std::env::var("HTTP_BENCH_GROW_TO")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .map_or(config.customers, |m| m.max(config.customers));
    let restart = measure_restart(dir.path(), customers, &runtime);
    report(&config, smoke, &outcomes, rss_kib, data_bytes, &restart, None);
    if std::env::var_os("HTTP_BENCH_KEEP").is_some() {
        println!("data directory kept at {}", dir.keep().display());
    }
}

/// A restart over the data directory the run left behind.
struct Restart {
    /// The customers the store holds (as preloaded).
    customers: usize,
    startup: Duration,
    events: u64,
    /// Peak RSS (VmHWM) from start to after the first request: includes the open's transients.
    rss_kib: Option<u64>,
    /// RSS (VmRSS) 3 s after the first request, once the open's transient buffers are freed.
    settled_rss_kib: Option<u64>,
}

/// Starts the server again over `dir`, times it until it listens, serves a read, and reports
/// the audit log size it opened and its RSS.
fn measure_restart(dir: &Path, customers: usize, runtime: &tokio::runtime::Runtime) -> Restart {
    let started = Instant::now();
    let (mut child, base) = start_server(dir, false, &[]);
    let startup = started.elapsed();
    let events = runtime.block_on(async {
        let http = reqwest::Client::new();
        let exp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() + 600;
        let claims = json!({"sub": "load-bench", "role": "auditor", "exp": exp});
        let auditor = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .unwrap();
        let res = http.get(format!("{base}/v1/audit/checkpoint")).bearer_auth(&auditor).send().await;
        let body: Value = match res {
            Ok(r) => r.json().await.unwrap_or_default(),
            Err(_) => Value::Null,
        };
        body["tree_size"].as_u64().unwrap_or(0)
    });
    let rss_kib = peak_rss_kib(child.id());
    std::thread::sleep(Duration::from_secs(3));
    let settled_rss_kib = status_kib(child.id(), "VmRSS:");
    stop_server(&mut child, false);
    Restart { customers, startup, events, rss_kib, settled_rss_kib }
}

fn start_server(data_dir: &Path, profiled: bool, env: &[(&str, std::ffi::OsString)]) -> (Child, String) {
    let profile = std::env::var("HTTP_BENCH_PROFILE").ok().filter(|_| profiled);
    let mut command = match &profile {
        Some(file) => {
            let mut c = Command::new("perf");
            c.args(["record", "-e", "cpu-clock", "-F", "999", "-g", "-o", file, "--"])
                .arg(env!("CARGO_BIN_EXE_custodia"));
            c
        }
        None => Command::new(env!("CARGO_BIN_EXE_custodia")),
    };
    // An HSM master key from the environment replaces the file key (the child inherits the
    // PKCS#11 settings).
    if std::env::var_os("CUSTODIA_MASTER_KEY_PKCS11_KEY").is_none() {
        command.env("CUSTODIA_MASTER_KEY", MASTER_KEY);
    }
    if let Ok(url) = std::env::var("HTTP_BENCH_DATABASE_URL") {
        command.env("CUSTODIA_STORE", "postgres").env("CUSTODIA_DATABASE_URL", url);
    }
    let mut child = command
        .arg("serve")
        .env("CUSTODIA_LISTEN", "127.0.0.1:0")
        .env("CUSTODIA_DATA_DIR", data_dir)
        // Inside the temporary directory, so it goes with it.
        .env("CUSTODIA_KEY_EPOCH_FILE", data_dir.join("epoch-keys"))
        .env("CUSTODIA_POLICIES", concat!(env!("CARGO_MANIFEST_DIR"), "/policies"))
        .env("CUSTODIA_JWT_HS256_SECRET", SECRET)
        .env("RUST_LOG", "warn")
        .envs(env.iter().map(|(k, v)| (*k, v)))
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("server starts");
    // Under perf the child is perf, whose own CPU time is not the server's.
    if profile.is_none() {
        SERVERS.lock().unwrap().push(child.id());
    }
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let base = line.trim().rsplit(' ').next().unwrap_or_default().to_owned();
    assert!(
        base.starts_with("http://") || base.starts_with("https://"),
        "server did not report its address: {line}"
    );
    (child, base)
}

fn stop_server(child: &mut Child, profiled: bool) {
    // Under perf, SIGINT makes perf finish its file and stop the server with it.
    let signal = if profiled && std::env::var("HTTP_BENCH_PROFILE").is_ok() { "-INT" } else { "-TERM" };
    let _ = Command::new("kill").arg(signal).arg(child.id().to_string()).status();
    let _ = child.wait();
    SERVERS.lock().unwrap().retain(|pid| *pid != child.id());
}

fn token() -> String {
    let exp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() + 3600;
    let claims = json!({"sub": "load-bench", "role": "merchant", "exp": exp});
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

fn customer_body(n: usize) -> Value {
    json!({"fields": {
        "name": format!("Customer {n}"),
        "email": format!("customer{n}@bench.test"),
        "phone": format!("+49151{n:08}"),
        "shipping_address": {"line1": format!("Street {n}"), "city": "Berlin", "postal_code": "10115", "country": "DE"},
        "country": "DE"
    }})
}

struct Client {
    http: reqwest::Client,
    base: String,
    /// Further nodes on the same database (`HTTP_BENCH_NODES`): scenario requests go to `base`
    /// and these in turn; preloads and metrics go to `base`.
    others: Vec<String>,
    token: String,
    ids: Vec<String>,
    next_new: AtomicU64,
    /// The one server whose CPU time a scenario's row reports (`HTTP_BENCH_ALTERNATE`, where
    /// two servers run side by side); `None`: all the running servers'.
    pid: Option<u32>,
}

impl Client {
    /// A client of the one server at `base`, the merchant's token, no customers yet.
    fn new(http: reqwest::Client, base: &str) -> Client {
        Client {
            http,
            base: base.to_owned(),
            others: Vec::new(),
            token: token(),
            ids: Vec::new(),
            next_new: AtomicU64::new(0),
            pid: None,
        }
    }
}

/// The scenarios over plain HTTP; also answers the preloaded ids and the next new customer
/// number, for a second server over the same data.
async fn run(
    config: &Config,
    base: &str,
    others: &[String],
    data_dir: &Path,
) -> (Vec<Outcome>, Vec<String>, u64) {
    let http = client_builder(config).build().unwrap();
    let mut client = Client { others: others.to_vec(), ..Client::new(http, base) };
    let started = Instant::now();
    client.ids = preload(&client, config, 0..config.customers).await;
    client.next_new.store(config.customers as u64, Ordering::Relaxed);
    eprintln!("preloaded {} customers in {:.1?}", client.ids.len(), started.elapsed());
    let client = Arc::new(client);
    let mut outcomes = Vec::new();
    let only = std::env::var("HTTP_BENCH_ONLY").ok();
    for scenario in Scenario::ALL {
        if only
            .as_ref()
            .is_some_and(|o| !o.split(',').any(|n| n == scenario.name()) && scenario != Scenario::Healthz)
        {
            continue;
        }
        outcomes.push(drive(&client, scenario, config, None).await);
    }
    if std::env::var_os("HTTP_BENCH_BACKUP").is_some() {
        outcomes.extend(backup_figures(&client, config, data_dir).await);
    }
    let grow_to = std::env::var("HTTP_BENCH_GROW_TO").ok().and_then(|v| v.parse::<usize>().ok());
    if let Some(grow_to) = grow_to.filter(|m| *m > config.customers) {
        let started = Instant::now();
        let first_new = client.next_new.load(Ordering::Relaxed) as usize;
        let more = preload(&client, config, first_new..first_new + grow_to - config.customers).await;
        eprintln!("grew the store by {} customers in {:.1?}", more.len(), started.elapsed());
        let mut grown = Arc::try_unwrap(client).ok().expect("no scenario holds the client");
        grown.ids.extend(more);
        grown.next_new.store((first_new + grow_to) as u64 * 2, Ordering::Relaxed);
        let grown = Arc::new(grown);
        // `healthz` first, as in the first phase: the grown rows get a ceiling measured at their
        // own time, and the reads start after the same ten seconds of light load in both phases
        // (a preload leaves background work behind it: history rows, the LSM's compactions).
        for scenario in [Scenario::Healthz, Scenario::Read, Scenario::Create] {
            outcomes.push(drive(&grown, scenario, config, Some(grow_to)).await);
        }
        let next_new = grown.next_new.load(Ordering::Relaxed);
        let ids = Arc::try_unwrap(grown).ok().expect("no scenario holds the client").ids;
        return (outcomes, ids, next_new);
    }
    let next_new = client.next_new.load(Ordering::Relaxed);
    let ids = Arc::try_unwrap(client).ok().expect("no scenario holds the client").ids;
    (outcomes, ids, next_new)
}

/// `HTTP_BENCH_ALTERNATE=M`: the cost at two store sizes, measured so that the machine's
/// changing speed falls on both alike. Two servers run side by side on fresh directories, one
/// preloaded with `config.customers`, the other (over `large_dir`) with `large`. Then `rounds`
/// rounds of `read` on both, then `rounds` of `create` on both (windows a third as long: they
/// grow the small store as much as the large one, and the summary says how far), the order
/// swapped every round so that neither size always comes first, each window once both
/// servers are done with what the last one left ([`settle`]). Rows are labelled
/// `read@100k#1` and so on, their CPU time the loaded server's alone; a summary gives each
/// round's ratio of the large store's figure to the small one's, and their median (B/req stays
/// the device's: it includes what the idle server writes). The restart is over the large store.
fn alternate_sizes(config: &Config, smoke: bool, large: usize, rounds: usize, large_dir: &Path) {
    let small_dir = tempfile::tempdir().expect("temp dir");
    let (mut small_child, small_base) = start_server(small_dir.path(), false, &[]);
    let (mut large_child, large_base) = start_server(large_dir, false, &[]);
    let pids = [small_child.id(), large_child.id()];
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let (outcomes, summary) = runtime.block_on(async {
        let started = Instant::now();
        let mut stores = Vec::new();
        for (base, pid, customers) in [(small_base, pids[0], config.customers), (large_base, pids[1], large)]
        {
            let mut store =
                Client { pid: Some(pid), ..Client::new(client_builder(config).build().unwrap(), &base) };
            store.ids = preload(&store, config, 0..customers).await;
            store.next_new.store(customers as u64, Ordering::Relaxed);
            stores.push((Arc::new(store), customers));
        }
        eprintln!("preloaded {} and {large} customers in {:.1?}", config.customers, started.elapsed());
        // The small store's `healthz` sets the rows' "× healthz"; the comparison is the summary's.
        settle(&pids, smoke).await;
        let mut outcomes = vec![drive(&stores[0].0, Scenario::Healthz, config, Some(config.customers)).await];
        // Reads first, on stores of exactly the preloaded sizes; creates then grow both, in
        // windows a third as long so the small store stays near its size.
        let create_config = Config { seconds: config.seconds / 3.0, ..*config };
        let mut figures = Vec::new();
        for (scenario, window) in [(Scenario::Read, config), (Scenario::Create, &create_config)] {
            let mut rows: Vec<RoundFigures> = Vec::new();
            for round in 0..rounds {
                let mut pair = [(0.0, None); 2];
                let order = if round % 2 == 0 { [0, 1] } else { [1, 0] };
                for i in order {
                    settle(&pids, smoke).await;
                    let (store, customers) = &stores[i];
                    let mut outcome = drive(store, scenario, window, Some(*customers)).await;
                    outcome.label = format!("{}#{}", outcome.label, round + 1);
                    pair[i] = (outcome.rps(), outcome.cpu_us_per_request);
                    outcomes.push(outcome);
                }
                rows.push(pair);
            }
            figures.push((scenario, rows));
        }
        let small_at_end = stores[0].0.next_new.load(Ordering::Relaxed);
        (outcomes, alternation_summary(config.customers, large, small_at_end, &figures))
    });
    let rss_kib = peak_rss_kib(pids[1]);
    stop_server(&mut small_child, false);
    stop_server(&mut large_child, false);
    let data_bytes = dir_size(large_dir);
    let restart = measure_restart(large_dir, large, &runtime);
    report(config, smoke, &outcomes, rss_kib, data_bytes, &restart, Some(summary));
}

/// One round of one scenario in [`alternate_sizes`]: (requests/s, CPU µs per request) on the
/// small store, then on the large one.
type RoundFigures = [(f64, Option<f64>); 2];

/// Waits until what a window left behind is done, so it is not counted in the next: at least
/// the transparency fold's period (5 s by default: the fold of the window's events), then
/// until the servers `pids` together use under a tenth of a core over a second (a flush, a
/// merge); at most 30 s. In smoke mode only the second.
async fn settle(pids: &[u32], smoke: bool) {
    let cpu = || pids.iter().map(|pid| server_cpu_seconds(Some(*pid)).unwrap_or(0.0)).sum::<f64>();
    let deadline = Instant::now() + Duration::from_secs(30);
    if !smoke {
        tokio::time::sleep(Duration::from_millis(5500)).await;
    }
    while Instant::now() < deadline {
        let before = cpu();
        tokio::time::sleep(Duration::from_secs(1)).await;
        if cpu() - before < 0.1 {
            return;
        }
    }
    eprintln!("the servers were still busy after 30 s: the next window starts anyway");
}

/// Per scenario, each round's ratio of the large store's requests/s and CPU per request to the
/// small store's, and their medians: as JSON, and as lines for the report.
fn alternation_summary(
    small: usize,
    large: usize,
    small_at_end: u64,
    figures: &[(Scenario, Vec<RoundFigures>)],
) -> (Value, Vec<String>) {
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        match v.len() {
            0 => None,
            n if n % 2 == 1 => Some(v[n / 2]),
            n => Some((v[n / 2 - 1] + v[n / 2]) / 2.0),
        }
    };
    let list = |v: &[f64]| v.iter().map(|r| format!("{r:.2}")).collect::<Vec<_>>().join(" ");
    let mut lines = vec![format!(
        "store size, alternated: {large} customers against {small}, rounds: {} (the order swapped each round); \
         the small store held {small_at_end} customers at the end",
        figures.first().map_or(0, |(_, rows)| rows.len())
    )];
    let mut out =
        json!({"small_customers": small, "large_customers": large, "small_customers_at_end": small_at_end});
    for (scenario, rows) in figures {
        let rps: Vec<f64> = rows.iter().map(|[s, l]| l.0 / s.0).collect();
        let cpu: Vec<f64> = rows.iter().filter_map(|[s, l]| Some(l.1? / s.1?)).collect();
        let (rps_median, cpu_median) = (median(rps.clone()), median(cpu.clone()));
        let fmt = |m: Option<f64>| m.map_or("-".into(), |m| format!("{m:.2}"));
        lines.push(format!(
            "{:<8} large ÷ small, requests/s: {} (median {}); CPU µs per request: {} (median {})",
            scenario.name(),
            list(&rps),
            fmt(rps_median),
            list(&cpu),
            fmt(cpu_median)
        ));
        out[scenario.name()] = json!({
            "requests_per_s_ratios": rps, "requests_per_s_ratio_median": rps_median,
            "cpu_per_request_ratios": cpu, "cpu_per_request_ratio_median": cpu_median,
        });
    }
    (out, lines)
}

/// `healthz`, `create` and `read` again over TLS (`HTTP_BENCH_TLS=1`): the server restarted
/// over the same data with a certificate made here, 64 HTTP/1.1 connections as over plain HTTP
/// (so the difference is TLS, not HTTP/2 multiplexing).
async fn run_tls(config: &Config, base: &str, ca_pem: &str, ids: Vec<String>, next_new: u64) -> Vec<Outcome> {
    let http = client_builder(config)
        .tls_certs_only([reqwest::Certificate::from_pem(ca_pem.as_bytes()).unwrap()])
        .http1_only()
        .build()
        .unwrap();
    let client = Arc::new(Client { ids, next_new: AtomicU64::new(next_new), ..Client::new(http, base) });
    let mut outcomes = Vec::new();
    for scenario in [Scenario::Healthz, Scenario::Read, Scenario::Create] {
        let mut outcome = drive(&client, scenario, config, None).await;
        outcome.label = format!("{}/tls", outcome.label);
        outcomes.push(outcome);
    }
    outcomes
}

/// A CA and a server certificate for 127.0.0.1 in `dir`: (CA PEM, certificate file, key file).
fn test_certificate(dir: &Path) -> (String, std::path::PathBuf, std::path::PathBuf) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_pem = ca.self_signed(&ca_key).unwrap().pem();
    let issuer = Issuer::new(ca, ca_key);
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
        .unwrap()
        .signed_by(&key, &issuer)
        .unwrap();
    let (cert_file, key_file) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert_file, cert.pem()).unwrap();
    std::fs::write(&key_file, key.serialize_pem()).unwrap();
    (ca_pem, cert_file, key_file)
}

/// The server's group-commit batch histogram (sum, count) from `/metrics`; on PostgreSQL the
/// sequencer's batches (events per integration) instead.
async fn batch_totals(client: &Client) -> Option<(f64, f64)> {
    let text = metrics_text(client).await?;
    let value = |name: &str| metric_value(&text, name);
    value("custodia_group_commit_batch_size_sum")
        .zip(value("custodia_group_commit_batch_size_count"))
        .or_else(|| {
            value("custodia_audit_integration_batch_size_sum")
                .zip(value("custodia_audit_integration_batch_size_count"))
        })
}

async fn metrics_text(client: &Client) -> Option<String> {
    client.http.get(format!("{}/metrics", client.base)).send().await.ok()?.text().await.ok()
}

fn metric_value(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with([' ', '{']))
        .and_then(|l| l.split_whitespace().last()?.parse::<f64>().ok())
}

/// The PostgreSQL sequencer's decision-to-seq delay histogram: (upper bound in s, cumulative count).
async fn delay_buckets(client: &Client) -> Vec<(f64, f64)> {
    let Some(text) = metrics_text(client).await else { return Vec::new() };
    let prefix = "custodia_audit_integration_delay_seconds_bucket{le=\"";
    text.lines()
        .filter_map(|l| {
            let rest = l.strip_prefix(prefix)?;
            let (le, value) = rest.split_once("\"}")?;
            let le = if le == "+Inf" { f64::INFINITY } else { le.parse().ok()? };
            Some((le, value.trim().parse().ok()?))
        })
        .collect()
}

/// The bucket bound at quantile `q` of the delays recorded between two scrapes.
fn delay_quantile(before: &[(f64, f64)], after: &[(f64, f64)], q: f64) -> Option<f64> {
    let base = |le: f64| before.iter().find(|(b, _)| *b == le).map_or(0.0, |(_, c)| *c);
    let deltas: Vec<(f64, f64)> = after.iter().map(|(le, c)| (*le, c - base(*le))).collect();
    let total = deltas.iter().map(|(_, c)| *c).fold(0.0, f64::max);
    if total <= 0.0 {
        return None;
    }
    deltas.iter().find(|(_, c)| *c >= q * total).map(|(le, _)| *le)
}

/// The kernel's statistics file of the block device that holds the data directory
/// (`/sys/dev/block/MAJOR:MINOR/stat`), set once in `main`; none on a filesystem without one
/// (tmpfs).
static DATA_DISK: std::sync::OnceLock<Option<std::path::PathBuf>> = std::sync::OnceLock::new();

/// The statistics file of the block device holding `dir`, if it has one.
fn disk_stat_of(dir: &Path) -> Option<std::path::PathBuf> {
    use std::os::unix::fs::MetadataExt;
    let dev = std::fs::metadata(dir).ok()?.dev();
    let stat =
        std::path::PathBuf::from(format!("/sys/dev/block/{}:{}/stat", libc::major(dev), libc::minor(dev)));
    stat.exists().then_some(stat)
}

/// Bytes written to the data directory's block device so far (its sectors written × 512).
/// Device-wide, so the figure is the server's own only on a quiet machine; the process's
/// `write_bytes` (`/proc/PID/io`) is not used, as ext4 over-counts it for overwrites of
/// preallocated blocks (the key file's free slots: about 90 KiB counted per 4 KiB written) and
/// under-counts the inode writes of appends.
fn written_bytes() -> Option<u64> {
    let stat = std::fs::read_to_string(DATA_DISK.get()?.as_ref()?).ok()?;
    let sectors: u64 = stat.split_whitespace().nth(6)?.parse().ok()?;
    Some(sectors * 512)
}

/// Pids of the running servers (none started under `perf`), whose CPU time
/// [`server_cpu_seconds`] sums.
static SERVERS: std::sync::Mutex<Vec<u32>> = std::sync::Mutex::new(Vec::new());

/// CPU time (user + system, seconds) the running servers (or only server `pid`) have used so far, from
/// `/proc/PID/stat` (fields 14 and 15, in clock ticks of `sysconf(_SC_CLK_TCK)`, usually 10 ms);
/// `None` without a server or when one cannot be read. A cost figure that, unlike requests/s,
/// does not fall when a shared machine's other tenants take the cores (it still moves with them:
/// up to 30 % between two phases of one run, README "Performance").
fn server_cpu_seconds(pid: Option<u32>) -> Option<f64> {
    let pids = match pid {
        Some(pid) => vec![pid],
        None => SERVERS.lock().unwrap().clone(),
    };
    if pids.is_empty() {
        return None;
    }
    // SAFETY: sysconf only reads a configuration value.
    let ticks_per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let mut ticks = 0u64;
    for pid in pids {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // Field 2, the command name, is in parentheses and may hold spaces: count after it.
        let after_name: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
        let (user, system) = (after_name.get(11)?, after_name.get(12)?);
        ticks += user.parse::<u64>().ok()? + system.parse::<u64>().ok()?;
    }
    (ticks_per_second > 0).then(|| ticks as f64 / ticks_per_second as f64)
}

async fn preload(client: &Client, config: &Config, numbers: std::ops::Range<usize>) -> Vec<String> {
    let per_task = numbers.len().div_ceil(config.connections);
    let mut tasks = Vec::new();
    for t in 0..config.connections {
        let (http, base, token) = (client.http.clone(), client.base.clone(), client.token.clone());
        let range = (numbers.start + t * per_task)..(numbers.start + (t + 1) * per_task).min(numbers.end);
        tasks.push(tokio::spawn(async move {
            let mut ids = Vec::new();
            for n in range {
                let res = http
                    .post(format!("{base}/v1/customers"))
                    .bearer_auth(&token)
                    .json(&customer_body(n))
                    .send()
                    .await;
                let body: Value = res.expect("preload request").json().await.expect("preload body");
                ids.push(body["id"].as_str().expect("preload id").to_owned());
            }
            ids
        }));
    }
    let mut ids = Vec::with_capacity(numbers.len());
    for t in tasks {
        ids.extend(t.await.unwrap());
    }
    ids
}

async fn drive(
    client: &Arc<Client>,
    scenario: Scenario,
    config: &Config,
    grown_to: Option<usize>,
) -> Outcome {
    let batches_before = batch_totals(client).await;
    let delays_before = delay_buckets(client).await;
    let written_before = written_bytes();
    let cpu_before = server_cpu_seconds(client.pid);
    let deadline = Instant::now() + Duration::from_secs_f64(config.seconds);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for t in 0..config.connections {
        let client = Arc::clone(client);
        tasks.push(tokio::spawn(async move {
            let mut rng = 0x9E37_79B9_7F4A_7C15u64 ^ (t as u64 + 1).wrapping_mul(0xD1B5_4A32_D192_ED03);
            let mut latencies = Vec::with_capacity(1 << 16);
            let mut errors = std::collections::BTreeMap::<String, usize>::new();
            while Instant::now() < deadline {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                let t0 = Instant::now();
                let outcome = one_request(&client, scenario, rng).await;
                latencies.push(t0.elapsed().as_micros().min(u128::from(u32::MAX)) as u32);
                if let Err(why) = outcome {
                    *errors.entry(why).or_default() += 1;
                }
            }
            (latencies, errors)
        }));
    }
    let mut latencies_us = Vec::new();
    let mut failures = std::collections::BTreeMap::<String, usize>::new();
    for t in tasks {
        let (l, e) = t.await.unwrap();
        latencies_us.extend(l);
        for (why, n) in e {
            *failures.entry(why).or_default() += n;
        }
    }
    let errors = failures.values().sum();
    for (why, n) in &failures {
        eprintln!("{}: {n} failed: {why}", scenario.name());
    }
    let elapsed = started.elapsed();
    latencies_us.sort_unstable();
    let written = written_bytes().zip(written_before).map(|(after, before)| after.saturating_sub(before));
    let cpu = server_cpu_seconds(client.pid).zip(cpu_before).map(|(after, before)| (after - before).max(0.0));
    let batches_after = batch_totals(client).await;
    let mean_batch = batches_after
        .zip(batches_before)
        .and_then(|((sum, count), (s0, c0))| (count > c0).then(|| (sum - s0) / (count - c0)));
    let delays_after = delay_buckets(client).await;
    let integration = (!delays_after.is_empty()).then(|| {
        let events = batches_after.zip(batches_before).map_or(0.0, |((sum, _), (s0, _))| sum - s0);
        (
            events / elapsed.as_secs_f64(),
            delay_quantile(&delays_before, &delays_after, 0.5),
            delay_quantile(&delays_before, &delays_after, 0.99),
        )
    });
    let requests = latencies_us.len();
    let label = match grown_to {
        Some(m) if m % 1000 == 0 => format!("{}@{}k", scenario.name(), m / 1000),
        Some(m) => format!("{}@{m}", scenario.name()),
        None => scenario.name().to_owned(),
    };
    Outcome {
        scenario,
        label,
        mean_batch,
        integration,
        write_bytes_per_request: written.map(|w| w as f64 / requests.max(1) as f64),
        cpu_us_per_request: cpu.map(|c| c * 1e6 / requests.max(1) as f64),
        requests,
        errors,
        elapsed,
        latencies_us,
    }
}

/// Runs `custodia backup --out FILE` against the server over `data_dir` (through its control
/// socket); answers the wall time and the file's size.
async fn one_backup(data_dir: &Path, file: &Path) -> (Duration, u64) {
    let (data_dir, file) = (data_dir.to_owned(), file.to_owned());
    tokio::task::spawn_blocking(move || {
        let started = Instant::now();
        let out = Command::new(env!("CARGO_BIN_EXE_custodia"))
            .args(["backup", "--out"])
            .arg(&file)
            .env("CUSTODIA_DATA_DIR", &data_dir)
            .env("RUST_LOG", "warn")
            .output()
            .expect("custodia backup runs");
        let elapsed = started.elapsed();
        assert!(out.status.success(), "backup failed: {}", String::from_utf8_lossy(&out.stderr));
        let bytes = std::fs::metadata(&file).map(|m| m.len()).unwrap_or(0);
        let _ = std::fs::remove_file(&file);
        (elapsed, bytes)
    })
    .await
    .unwrap()
}

/// `HTTP_BENCH_BACKUP=1`: a backup alone, then `read` without and with backups running.
async fn backup_figures(client: &Arc<Client>, config: &Config, data_dir: &Path) -> Vec<Outcome> {
    let scratch = tempfile::tempdir().expect("temp dir");
    let file = scratch.path().join("bench.cbk");
    let (alone, bytes) = one_backup(data_dir, &file).await;
    println!(
        "backup alone: {:.2} s, {:.1} MiB ({} customers, written and verified by `custodia backup`)",
        alone.as_secs_f64(),
        bytes as f64 / (1024.0 * 1024.0),
        config.customers
    );
    let mut quiet = drive(client, Scenario::Read, config, None).await;
    quiet.label = "read, no backup".into();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let looping = {
        let (stop, data_dir, file) = (Arc::clone(&stop), data_dir.to_owned(), file.clone());
        tokio::spawn(async move {
            let mut times = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                times.push(one_backup(&data_dir, &file).await.0);
            }
            times
        })
    };
    let mut busy = drive(client, Scenario::Read, config, None).await;
    busy.label = "read, backup".into();
    stop.store(true, Ordering::Relaxed);
    let times = looping.await.unwrap();
    let mean = times.iter().map(Duration::as_secs_f64).sum::<f64>() / times.len().max(1) as f64;
    println!(
        "backups during `read, backup`: {} back to back, {mean:.2} s each on average (the last one ends after the window)",
        times.len()
    );
    vec![quiet, busy]
}

/// One request of `scenario`; a failure says why (status and error code, or the transport
/// error), so a bench run's errors can be told apart.
async fn one_request(client: &Client, scenario: Scenario, rng: u64) -> Result<(), String> {
    let kind = match scenario {
        Scenario::Mixed => match rng % 10 {
            0..=6 => Scenario::Read,
            7 | 8 => Scenario::Disclosure,
            _ => Scenario::Create,
        },
        other => other,
    };
    let n = (rng >> 8) as usize % client.ids.len().max(1);
    let base = match rng as usize % (client.others.len() + 1) {
        0 => &client.base,
        i => &client.others[i - 1],
    };
    let req = match kind {
        Scenario::Healthz => client.http.get(format!("{base}/healthz")),
        Scenario::Create => {
            let n = client.next_new.fetch_add(1, Ordering::Relaxed) as usize;
            client
                .http
                .post(format!("{base}/v1/customers"))
                .bearer_auth(&client.token)
                .json(&customer_body(n))
        }
        Scenario::Read => client
            .http
            .get(format!("{base}/v1/customers/{}", client.ids[n]))
            .bearer_auth(&client.token)
            .header("X-Purpose", "order_fulfillment"),
        Scenario::Lookup => client
            .http
            .get(format!("{base}/v1/customers?email=customer{n}%40bench.test"))
            .bearer_auth(&client.token)
            .header("X-Purpose", "order_fulfillment"),
        Scenario::Disclosure => {
            client.http.post(format!("{base}/v1/disclosures")).bearer_auth(&client.token).json(&json!({
                "customer_id": client.ids[n], "recipient": "acme-shipping", "purpose": "order_fulfillment",
                "fields": ["name", "shipping_address"]
            }))
        }
        Scenario::Mixed => unreachable!("mixed picks a concrete scenario"),
    };
    match req.send().await {
        Ok(res) => {
            let status = res.status();
            let body = res.bytes().await;
            match (status.is_success(), body) {
                (true, Ok(_)) => Ok(()),
                (true, Err(e)) => Err(format!("reading the body: {e}")),
                (false, Ok(body)) => {
                    let code = serde_json::from_slice::<Value>(&body)
                        .ok()
                        .and_then(|b| b["error"].as_str().map(str::to_owned));
                    Err(format!("{status} {}", code.unwrap_or_default()))
                }
                (false, Err(e)) => Err(format!("{status}, then reading the body: {e}")),
            }
        }
        Err(e) => Err(error_chain(&e)),
    }
}

/// The load generator's HTTP client settings: one pooled keep-alive connection per bench
/// connection, dropped once unused for [`POOL_IDLE`].
fn client_builder(config: &Config) -> reqwest::ClientBuilder {
    reqwest::Client::builder().pool_max_idle_per_host(config.connections).pool_idle_timeout(POOL_IDLE)
}

/// `e` and each of its sources, outermost first, joined by ": " (a transport error's cause is
/// several sources deep).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

fn peak_rss_kib(pid: u32) -> Option<u64> {
    status_kib(pid, "VmHWM:")
}

/// A `kB` line of `/proc/PID/status`.
fn status_kib(pid: u32, name: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with(name))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn dir_size(path: &Path) -> u64 {
    std::fs::read_dir(path)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| {
                    let p = e.path();
                    if p.is_dir() { dir_size(&p) } else { e.metadata().map(|m| m.len()).unwrap_or(0) }
                })
                .sum()
        })
        .unwrap_or(0)
}

/// Prints the table and writes `target/http-bench.json`; `alternation` is the size comparison's
/// summary (`HTTP_BENCH_ALTERNATE`), as JSON and as lines printed after the table.
fn report(
    config: &Config,
    smoke: bool,
    outcomes: &[Outcome],
    rss_kib: Option<u64>,
    data_bytes: u64,
    restart: &Restart,
    alternation: Option<(Value, Vec<String>)>,
) {
    // Each row's ratio is to the `healthz` run last before it: the first phase's, the grown
    // store's, or the TLS restart's.
    let mut ceiling = 1.0;
    println!(
        "\nHTTP load benchmark{}: {} customers preloaded, {} connections, {:.1} s per scenario",
        if smoke { " (smoke)" } else { "" },
        config.customers,
        config.connections,
        config.seconds
    );
    println!(
        "{:<15} {:>10} {:>9} {:>9} {:>9} {:>7} {:>9} {:>7} {:>9} {:>10}",
        "scenario",
        "req/s",
        "p50 ms",
        "p99 ms",
        "p99.9 ms",
        "errors",
        "× healthz",
        "batch",
        "B/req",
        "CPU µs/req"
    );
    let mut rows = Vec::new();
    for o in outcomes {
        if o.scenario == Scenario::Healthz {
            ceiling = o.rps();
        }
        println!(
            "{:<15} {:>10.0} {:>9.2} {:>9.2} {:>9.2} {:>7} {:>9.2} {:>7} {:>9} {:>10}",
            o.label,
            o.rps(),
            o.percentile_ms(0.50),
            o.percentile_ms(0.99),
            o.percentile_ms(0.999),
            o.errors,
            o.rps() / ceiling,
            o.mean_batch.map_or("-".into(), |b| format!("{b:.1}")),
            o.write_bytes_per_request.map_or("-".into(), |b| format!("{b:.0}")),
            o.cpu_us_per_request.map_or("-".into(), |c| format!("{c:.0}")),
        );
        if let Some((rate, p50, p99)) = o.integration.filter(|i| i.0 > 0.0) {
            let ms = |s: Option<f64>| s.map_or("-".into(), |s| format!("≤ {:.1} ms", s * 1e3));
            println!(
                "{:<15} sequencer: {rate:.0} events/s integrated, decision-to-seq p50 {}, p99 {}",
                "",
                ms(p50),
                ms(p99)
            );
        }
        rows.push(json!({
            "scenario": o.label, "requests_per_s": o.rps(), "p50_ms": o.percentile_ms(0.50),
            "p99_ms": o.percentile_ms(0.99), "p999_ms": o.percentile_ms(0.999), "errors": o.errors,
            "requests": o.requests, "ratio_to_healthz": o.rps() / ceiling,
            "mean_group_commit_batch": o.mean_batch, "write_bytes_per_request": o.write_bytes_per_request,
            "cpu_us_per_request": o.cpu_us_per_request,
            "integrated_events_per_s": o.integration.map(|i| i.0),
            "integration_delay_p50_s": o.integration.and_then(|i| i.1),
            "integration_delay_p99_s": o.integration.and_then(|i| i.2),
        }));
    }
    let (alternation, lines) = alternation.unzip();
    for line in lines.iter().flatten() {
        println!("{line}");
    }
    let rss_mib = rss_kib.map(|k| k as f64 / 1024.0);
    println!("server peak RSS: {}", rss_mib.map_or("unknown".into(), |m| format!("{m:.0} MiB")));
    println!("data directory: {:.1} MiB", data_bytes as f64 / (1024.0 * 1024.0));
    let restart_rss = restart.rss_kib.map(|k| k as f64 / 1024.0);
    let settled_rss = restart.settled_rss_kib.map(|k| k as f64 / 1024.0);
    println!(
        "restart over it ({} customers, {} audit events): listening after {:.0} ms, RSS {} 3 s after a first request (peak {})",
        restart.customers,
        restart.events,
        restart.startup.as_secs_f64() * 1e3,
        settled_rss.map_or("unknown".into(), |m| format!("{m:.0} MiB")),
        restart_rss.map_or("unknown".into(), |m| format!("{m:.0} MiB"))
    );
    let out = json!({
        "smoke": smoke, "customers": config.customers, "connections": config.connections,
        "seconds_per_scenario": config.seconds, "scenarios": rows,
        "server_peak_rss_mib": rss_mib, "data_dir_mib": data_bytes as f64 / (1024.0 * 1024.0),
        "restart": {"startup_ms": restart.startup.as_secs_f64() * 1e3, "audit_events": restart.events, "peak_rss_mib": restart_rss, "settled_rss_mib": settled_rss},
        "alternation": alternation,
    });
    let target = std::env::var("CARGO_TARGET_DIR")
        .unwrap_or_else(|_| concat!(env!("CARGO_MANIFEST_DIR"), "/target").into());
    let path = Path::new(&target).join("http-bench.json");
    match std::fs::write(&path, serde_json::to_vec_pretty(&out).unwrap()) {
        Ok(()) => println!("figures written to {}", path.display()),
        Err(e) => eprintln!("could not write {}: {e}", path.display()),
    }
    let errors: usize = outcomes.iter().map(|o| o.errors).sum();
    if errors > 0 {
        eprintln!("{errors} requests failed");
        std::process::exit(1);
    }
}
