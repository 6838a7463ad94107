//! The request log is written off the request path (issue 12): a stalled stderr holds up no
//! request, and no line is lost at shutdown.

use std::io::{BufRead, BufReader, Read};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::helpers::{MASTER_KEY, SECRET, ServerProcess};

/// Far more log than a pipe holds (64 KiB on Linux: some 250 JSON lines).
const REQUESTS: usize = 2_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_stderr_holds_up_no_request_and_every_line_is_written_at_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_custodia"))
        .arg("serve")
        .env("CUSTODIA_LISTEN", "127.0.0.1:0")
        .env("CUSTODIA_DATA_DIR", dir.path().join("data"))
        .env("CUSTODIA_POLICIES", concat!(env!("CARGO_MANIFEST_DIR"), "/policies"))
        .env("CUSTODIA_MASTER_KEY", MASTER_KEY)
        .env("CUSTODIA_JWT_HS256_SECRET", SECRET)
        .env("CUSTODIA_LOG_FORMAT", "json")
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("server binary starts");
    // Killed on drop if an assertion fails.
    let mut server = ServerProcess { child, base: String::new() };
    let pid = server.child.id().to_string();
    let mut line = String::new();
    BufReader::new(server.child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let base = line.trim().rsplit(' ').next().unwrap().to_owned();
    assert!(base.starts_with("http://"), "{line}");
    // Nobody reads stderr yet: once the pipe is full, a synchronous log write would block the
    // worker that answers, and these requests would time out.
    let client = reqwest::Client::builder().timeout(Duration::from_secs(2)).build().unwrap();
    let mut slowest = Duration::ZERO;
    for i in 0..REQUESTS {
        let start = Instant::now();
        let res = client.get(format!("{base}/healthz")).send().await;
        assert!(res.is_ok_and(|r| r.status().is_success()), "request {i} was not answered in time");
        slowest = slowest.max(start.elapsed());
    }
    // Shut down while stderr is still stalled, for longer than tracing-appender's own guard
    // would wait (about 1 s), then start reading.
    let _ = Command::new("kill").arg("-TERM").arg(&pid).status();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut stderr = server.child.stderr.take().unwrap();
    let text = tokio::task::spawn_blocking(move || {
        let mut text = String::new();
        stderr.read_to_string(&mut text).unwrap();
        text
    })
    .await
    .unwrap();
    assert!(server.child.wait().unwrap().success(), "clean exit");
    let answered = text.lines().filter(|l| l.contains("\"message\":\"answered\"")).count();
    assert_eq!(answered, REQUESTS, "one line per request, none lost (slowest request {slowest:?})");
    assert!(
        text.lines().last().is_some_and(|l| l.contains("stopped; store flushed")),
        "the last line is written"
    );
}
