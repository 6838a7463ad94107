//! The audit stream (`CUSTODIA_AUDIT_STREAM_*`): a real server copies every committed event to
//! a JSON-lines file it rotates, or to a real syslog listener in the test (RFC 5424, parsed by
//! the independent `syslog_rfc5424` crate) over TCP or UDP; an outage of the listener loses
//! nothing and fails no request; bad settings stop start-up by name.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use custodia::startup::App;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use syslog_rfc5424::SyslogMessage;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::net::{TcpListener, UdpSocket};

use crate::helpers::{TestApp, contains, spawn_app_with, test_settings};

/// Values given to customers; none may appear in the stream.
fn values(i: usize) -> [String; 2] {
    [format!("Zebulon Quasar {i}"), format!("zebulon.quasar{i}@stream.example")]
}

/// Creates `n` customers with [`values`] (numbered from `first`) and reads each back: two events
/// per customer, every request answered 2xx.
async fn write_customers(app: &TestApp, first: usize, n: usize) {
    for i in first..first + n {
        let [name, email] = values(i);
        let id = app.create_customer(json!({ "name": name, "email": email })).await;
        let res = app.read_customer(&id, "order_fulfillment").await;
        assert_eq!(res.status, StatusCode::OK, "{}", res.body);
    }
}

/// Polls `done` every 50 ms for up to 30 s; panics with `what` if it never holds.
async fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The stream files oldest first: `PATH.n` … `PATH.1`, then `PATH`.
fn stream_files(path: &Path) -> Vec<PathBuf> {
    let mut rotated: Vec<(u32, PathBuf)> = std::fs::read_dir(path.parent().unwrap())
        .unwrap()
        .filter_map(|entry| {
            let p = entry.unwrap().path();
            let name = p.file_name()?.to_str()?.to_owned();
            let suffix = name.strip_prefix(path.file_name()?.to_str()?)?.strip_prefix('.')?;
            Some((suffix.parse().ok()?, p))
        })
        .collect();
    rotated.sort_by_key(|r| std::cmp::Reverse(r.0));
    rotated.into_iter().map(|(_, p)| p).chain([path.to_owned()]).collect()
}

/// Every streamed line, oldest first, as (seq, bytes).
fn streamed(path: &Path) -> Vec<(u64, Vec<u8>)> {
    let mut lines = Vec::new();
    for file in stream_files(path) {
        let text = std::fs::read(&file).unwrap_or_default();
        assert!(text.is_empty() || text.ends_with(b"\n"), "{} ends mid-line", file.display());
        for line in text.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
            let event: Value = serde_json::from_slice(line).expect("each line is one JSON event");
            lines.push((event["seq"].as_u64().expect("seq"), line.to_vec()));
        }
    }
    lines
}

/// RFC 6962 leaf hash, base64, as `/v1/audit/leaves` answers it.
fn leaf_hash(event_bytes: &[u8]) -> String {
    let mut context = ring::digest::Context::new(&ring::digest::SHA256);
    context.update(&[0]);
    context.update(event_bytes);
    base64::engine::general_purpose::STANDARD.encode(context.finish().as_ref())
}

/// The seq of the newest event listed by the API (the listing's own `audit.read` comes next).
async fn last_listed(app: &TestApp) -> (u64, Vec<Value>) {
    let events = app.audit_events().await;
    (events.last().and_then(|e| e["seq"].as_u64()).expect("events"), events)
}

#[tokio::test]
async fn the_file_gets_every_event_in_order_rotates_at_the_bound_and_resumes_after_a_restart() {
    let sink_dir = tempfile::tempdir().unwrap();
    let path = sink_dir.path().join("audit.jsonl");
    const MAX: u64 = 2048;
    let app = spawn_app_with(|s| {
        s.audit_stream_file = Some(path.clone());
        s.audit_stream_file_max_bytes = MAX;
        s.audit_stream_file_keep = 1000;
    })
    .await;
    write_customers(&app, 0, 12).await;
    let (last, events) = last_listed(&app).await;
    wait_for("the file to hold the listed events", || streamed(&path).last().is_some_and(|l| l.0 >= last))
        .await;

    let lines = assert_streamed_in_order(&path, &events);
    // Each line is the exact bytes its Merkle leaf hashes.
    let res = app
        .call(
            Method::GET,
            &format!("/v1/audit/leaves?from=0&limit={}", last + 1),
            Some(&app.auditor()),
            None,
            None,
        )
        .await;
    assert_eq!(res.status, StatusCode::OK, "{}", res.body);
    let leaves: Vec<&str> =
        res.body["leaf_hashes"].as_array().unwrap().iter().map(|h| h.as_str().unwrap()).collect();
    assert_eq!(leaves.len() as u64, last + 1);
    for (seq, leaf) in leaves.iter().enumerate() {
        assert_eq!(&leaf_hash(&lines[seq].1), leaf, "line {seq} is not the leaf's bytes");
    }
    // Rotated at the bound: several files, none past it.
    let files = stream_files(&path);
    assert!(files.len() >= 3, "expected rotations, got {files:?}");
    for file in &files {
        let size = std::fs::metadata(file).unwrap().len();
        assert!(size <= MAX, "{} holds {size} bytes", file.display());
    }
    // No customer value in the stream.
    let all: Vec<u8> = files.iter().flat_map(|f| std::fs::read(f).unwrap()).collect();
    for i in 0..12 {
        for value in values(i) {
            assert!(!contains(&all, value.as_bytes()), "{value} is in the stream");
        }
    }

    // A restart resumes where the file ended: no gap, nothing twice.
    let app = app.restart().await;
    write_customers(&app, 12, 5).await;
    let (last, events) = last_listed(&app).await;
    wait_for("the file to hold events after the restart", || {
        streamed(&path).last().is_some_and(|l| l.0 >= last)
    })
    .await;
    assert_streamed_in_order(&path, &events);
}

/// What a syslog listener received: the seq of each event, and each message parsed.
type Received = Arc<Mutex<Vec<(u64, SyslogMessage)>>>;

/// Parses one RFC 5424 message with the independent parser and checks its header.
fn parse_syslog(raw: &str) -> (u64, SyslogMessage) {
    let message = syslog_rfc5424::parse_message(raw).unwrap_or_else(|e| panic!("not RFC 5424 ({e}): {raw}"));
    assert_eq!(message.version, 1);
    assert_eq!(message.appname.as_deref(), Some("custodia"));
    assert_eq!(message.facility, syslog_rfc5424::SyslogFacility::LOG_AUDIT);
    let event: Value = serde_json::from_str(&message.msg).expect("MSG is the event's JSON");
    assert_eq!(message.msgid.as_deref(), event["action"].as_str());
    let severity = if event["outcome"] == "allowed" {
        syslog_rfc5424::SyslogSeverity::SEV_INFO
    } else {
        syslog_rfc5424::SyslogSeverity::SEV_NOTICE
    };
    assert_eq!(message.severity, severity);
    (event["seq"].as_u64().expect("seq"), message)
}

/// Accepts connections one after another and reads octet-counted frames (RFC 6587 §3.4.1)
/// until stopped (aborting the task closes the listener and the connection).
async fn tcp_listener(listener: TcpListener, received: Received) {
    loop {
        let Ok((stream, _)) = listener.accept().await else { return };
        let mut reader = BufReader::new(stream);
        loop {
            let mut length = Vec::new();
            if reader.read_until(b' ', &mut length).await.unwrap_or(0) == 0 {
                break;
            }
            let length: usize = std::str::from_utf8(&length[..length.len() - 1])
                .ok()
                .and_then(|l| l.parse().ok())
                .unwrap_or_else(|| panic!("bad frame length {length:?}"));
            let mut frame = vec![0; length];
            if reader.read_exact(&mut frame).await.is_err() {
                break;
            }
            let raw = String::from_utf8(frame).expect("ASCII message");
            received.lock().unwrap().push(parse_syslog(&raw));
        }
    }
}

fn max_seq(received: &Received) -> Option<u64> {
    received.lock().unwrap().iter().map(|r| r.0).max()
}

/// The sum of a metric's samples labelled `sink="syslog"`.
async fn syslog_metric(app: &TestApp, name: &str) -> f64 {
    let res = app.client.get(format!("{}/metrics", app.base)).send().await.unwrap();
    let text = res.text().await.unwrap();
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{sink=\"syslog\"}}")))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}

#[tokio::test]
async fn tcp_syslog_gets_every_event_in_order_and_an_outage_loses_nothing() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let received: Received = Arc::default();
    let receiving = tokio::spawn(tcp_listener(listener, Arc::clone(&received)));
    let app = spawn_app_with(|s| s.audit_stream_syslog = Some(format!("tcp://{address}"))).await;

    write_customers(&app, 0, 5).await;
    let (last, events) = last_listed(&app).await;
    // The listing's own audit.read (last + 1) too, so nothing is in flight when the listener stops.
    wait_for("the listener to receive the events", || max_seq(&received) >= Some(last + 1)).await;
    {
        let got = received.lock().unwrap();
        let seqs: Vec<u64> = got.iter().map(|r| r.0).collect();
        assert_eq!(seqs, (0..=last + 1).collect::<Vec<_>>(), "in order, no gap, no duplicate");
        for event in &events {
            let (_, message) = &got[event["seq"].as_u64().unwrap() as usize];
            assert_eq!(&serde_json::from_str::<Value>(&message.msg).unwrap(), event);
        }
    }
    // Let the follower confirm what it sent (its next step sees the connection still open).
    tokio::time::sleep(Duration::from_millis(500)).await;

    // The listener goes away; requests keep answering (write_customers asserts 2xx).
    receiving.abort();
    let _ = receiving.await;
    let failures_before = syslog_metric(&app, "custodia_audit_stream_failures_total").await;
    write_customers(&app, 5, 5).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while syslog_metric(&app, "custodia_audit_stream_failures_total").await <= failures_before {
        assert!(Instant::now() < deadline, "the outage was never counted as a failure");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Back on the same port: every event arrives.
    let listener = TcpListener::bind(address).await.unwrap();
    let receiving = tokio::spawn(tcp_listener(listener, Arc::clone(&received)));
    let (last, _) = last_listed(&app).await;
    wait_for("the listener to catch up after the outage", || max_seq(&received) >= Some(last)).await;
    receiving.abort();

    let seqs: Vec<u64> = received.lock().unwrap().iter().map(|r| r.0).collect();
    let distinct: BTreeSet<u64> = seqs.iter().copied().collect();
    assert!((0..=last).all(|s| distinct.contains(&s)), "a seq is missing: {seqs:?}");
    // At least once: a resend may repeat events the old connection may have lost, starting
    // over from an earlier seq once; never the same seq twice in a row, never a skip.
    let mut rewinds = 0;
    for pair in seqs.windows(2) {
        assert_ne!(pair[0], pair[1], "the same seq twice in a row: {seqs:?}");
        if pair[1] < pair[0] {
            rewinds += 1;
        } else {
            assert_eq!(pair[1], pair[0] + 1, "a gap: {seqs:?}");
        }
    }
    assert!(rewinds <= 1, "{rewinds} rewinds for one outage: {seqs:?}");
    // No customer value in the stream.
    let all: String = received.lock().unwrap().iter().map(|r| r.1.msg.clone()).collect();
    for i in 0..10 {
        for value in values(i) {
            assert!(!all.contains(&value), "{value} is in the stream");
        }
    }
}

#[tokio::test]
async fn udp_syslog_gets_every_event_in_order() {
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let address = socket.local_addr().unwrap();
    let received: Received = Arc::default();
    let into = Arc::clone(&received);
    let receiving = tokio::spawn(async move {
        let mut datagram = vec![0; 65_536];
        while let Ok(n) = socket.recv(&mut datagram).await {
            let raw = String::from_utf8(datagram[..n].to_vec()).expect("ASCII message");
            into.lock().unwrap().push(parse_syslog(&raw));
        }
    });
    let app = spawn_app_with(|s| s.audit_stream_syslog = Some(format!("udp://{address}"))).await;
    write_customers(&app, 0, 5).await;
    let (last, events) = last_listed(&app).await;
    wait_for("the listener to receive the events", || max_seq(&received) >= Some(last)).await;
    receiving.abort();
    let got = received.lock().unwrap();
    let seqs: Vec<u64> = got.iter().map(|r| r.0).take(last as usize + 1).collect();
    assert_eq!(seqs, (0..=last).collect::<Vec<_>>(), "in order, no gap, no duplicate");
    for event in &events {
        let (_, message) = &got[event["seq"].as_u64().unwrap() as usize];
        assert_eq!(&serde_json::from_str::<Value>(&message.msg).unwrap(), event);
    }
}

/// A change to test settings.
type Adjust = Box<dyn Fn(&mut custodia::config::Settings)>;

#[tokio::test]
async fn bad_stream_settings_stop_start_up_naming_the_setting() {
    let files = tempfile::tempdir().unwrap();
    let missing_dir = files.path().join("missing/audit.jsonl");
    let directory = files.path().to_owned();
    let cases: Vec<(&str, Adjust)> = vec![
        (
            "CUSTODIA_AUDIT_STREAM_SYSLOG",
            Box::new(|s| s.audit_stream_syslog = Some("http://127.0.0.1:514".into())),
        ),
        (
            "CUSTODIA_AUDIT_STREAM_SYSLOG",
            Box::new(|s| s.audit_stream_syslog = Some("tcp://127.0.0.1".into())),
        ),
        ("CUSTODIA_AUDIT_STREAM_FILE", Box::new(move |s| s.audit_stream_file = Some(missing_dir.clone()))),
        ("CUSTODIA_AUDIT_STREAM_FILE", Box::new(move |s| s.audit_stream_file = Some(directory.clone()))),
        (
            "CUSTODIA_AUDIT_STREAM_FILE_MAX_BYTES",
            Box::new(|s| {
                s.audit_stream_file = Some(std::env::temp_dir().join("never-written.jsonl"));
                s.audit_stream_file_max_bytes = 0;
            }),
        ),
    ];
    for (name, adjust) in cases {
        let data_dir = tempfile::tempdir().unwrap();
        let mut settings = test_settings(data_dir.path());
        adjust(&mut settings);
        let Err(e) = App::build(settings).await else { panic!("{name}: the server started") };
        assert!(e.to_string().contains(name), "{name}: {e}");
        assert!(!data_dir.path().join("store").exists(), "{name}: the store was opened");
    }
    assert!(!std::env::temp_dir().join("never-written.jsonl").exists());
}

/// The file sink at `path` holds seqs 0.. in order with no gap or duplicate, and each listed
/// event as its line; answers the lines.
fn assert_streamed_in_order(path: &Path, events: &[Value]) -> Vec<(u64, Vec<u8>)> {
    let lines = streamed(path);
    let seqs: Vec<u64> = lines.iter().map(|l| l.0).collect();
    assert_eq!(seqs, (0..seqs.len() as u64).collect::<Vec<_>>(), "in order, no gap, no duplicate");
    for event in events {
        let seq = event["seq"].as_u64().unwrap() as usize;
        assert_eq!(&serde_json::from_slice::<Value>(&lines[seq].1).unwrap(), event);
    }
    lines
}
