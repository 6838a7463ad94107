//! The auditor's view: checkpoints, proofs, the key, bad parameters, and the offline verifier
//! against a tampered data directory.
//!
//! The verifier in `own` is written for this test from the RFC text, independently of
//! `custodia::audit`: it derives roots from the recursive definitions of PATH and SUBPROOF
//! (RFC 6962 §2.1.1–2.1.2) rather than the bit-walking algorithm the library uses, and parses
//! signed notes and verifier keys by hand from the C2SP texts.

use std::path::Path;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::helpers::{TestApp, spawn_app, test_settings};

pub(crate) mod own {
    //! A small verifier written from RFC 6962 §2.1, RFC 8785 and the C2SP signed-note and
    //! tlog-checkpoint specifications.

    use super::*;

    pub type H = [u8; 32];

    fn sha256(parts: &[&[u8]]) -> H {
        let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
        for p in parts {
            ctx.update(p);
        }
        ctx.finish().as_ref().try_into().unwrap()
    }

    fn node(l: &H, r: &H) -> H {
        sha256(&[&[1], l, r])
    }

    /// RFC 8785 for what events hold: objects, arrays, strings, small integers, null.
    pub fn jcs(v: &Value) -> String {
        match v {
            Value::Object(m) => {
                let mut keys: Vec<&String> = m.keys().collect();
                keys.sort_by_key(|k| k.encode_utf16().collect::<Vec<u16>>());
                let members: Vec<String> =
                    keys.iter().map(|k| format!("{}:{}", Value::from(k.as_str()), jcs(&m[*k]))).collect();
                format!("{{{}}}", members.join(","))
            }
            Value::Array(a) => format!("[{}]", a.iter().map(jcs).collect::<Vec<_>>().join(",")),
            other => other.to_string(),
        }
    }

    pub fn leaf(event: &Value) -> H {
        sha256(&[&[0], jcs(event).as_bytes()])
    }

    fn k_of(n: u64) -> u64 {
        let mut k = 1;
        while k * 2 < n {
            k *= 2;
        }
        k
    }

    /// MTH(D[n]) rebuilt from an audit path, following PATH(m, D[n]) backwards: the path's last
    /// element is the sibling at the top.
    fn path_root(m: u64, n: u64, leaf: H, path: &[H]) -> Option<H> {
        if n == 1 {
            return path.is_empty().then_some(leaf);
        }
        let (top, rest) = path.split_last()?;
        let k = k_of(n);
        Some(if m < k {
            node(&path_root(m, k, leaf, rest)?, top)
        } else {
            node(top, &path_root(m - k, n - k, leaf, rest)?)
        })
    }

    pub fn inclusion_holds(m: u64, n: u64, leaf: H, path: &[H], root: &H) -> bool {
        m < n && path_root(m, n, leaf, path).as_ref() == Some(root)
    }

    /// (MTH(D[0:m]) of the old tree within this subtree, MTH of this subtree in the new tree),
    /// following SUBPROOF(m, D[n], b) backwards. `old_root` stands for the subtree the verifier
    /// already knows when b is true.
    fn subproof_roots(m: u64, n: u64, b: bool, proof: &[H], old_root: &H) -> Option<(H, H)> {
        if m == n {
            return if b {
                proof.is_empty().then_some((*old_root, *old_root))
            } else {
                match proof {
                    [only] => Some((*only, *only)),
                    _ => None,
                }
            };
        }
        let (top, rest) = proof.split_last()?;
        let k = k_of(n);
        if m <= k {
            let (old, new_left) = subproof_roots(m, k, b, rest, old_root)?;
            Some((old, node(&new_left, top)))
        } else {
            let (old_right, new_right) = subproof_roots(m - k, n - k, false, rest, old_root)?;
            Some((node(top, &old_right), node(top, &new_right)))
        }
    }

    pub fn consistency_holds(m: u64, n: u64, proof: &[H], old: &H, new: &H) -> bool {
        if m == 0 || m > n {
            return false;
        }
        if m == n {
            return proof.is_empty() && old == new;
        }
        subproof_roots(m, n, true, proof, old).is_some_and(|(o, nw)| &o == old && &nw == new)
    }

    pub struct Key {
        pub name: String,
        pub id: [u8; 4],
        pub public: [u8; 32],
    }

    /// `<name>+<hex id>+<base64(0x01 ‖ key)>`, checking the id is SHA-256(name ‖ \n ‖ 0x01 ‖ key).
    pub fn parse_key(text: &str) -> Key {
        // The name and the hex id contain no '+'; the base64 key may.
        let parts: Vec<&str> = text.trim().splitn(3, '+').collect();
        assert_eq!(parts.len(), 3, "verifier key has three parts");
        let raw = STANDARD.decode(parts[2]).unwrap();
        assert_eq!(raw.len(), 33);
        assert_eq!(raw[0], 0x01, "Ed25519 type byte");
        let public: [u8; 32] = raw[1..].try_into().unwrap();
        let digest = sha256(&[parts[0].as_bytes(), b"\n", &[0x01], &public]);
        let id: [u8; 4] = digest[..4].try_into().unwrap();
        let hex: String = id.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hex, parts[1], "key id");
        Key { name: parts[0].to_owned(), id, public }
    }

    /// Checks a signed note against `key` and returns (origin, size, root), or why it is refused.
    /// C2SP signed-note: text, a blank line (the last one), signature lines `— name base64`;
    /// any malformed line refuses the note; lines of other names or key ids are ignored; every
    /// line of this name and key id must verify, and at least one must exist.
    pub fn open_checkpoint(note: &str, key: &Key) -> Result<(String, u64, H), String> {
        if note.chars().any(|c| c < ' ' && c != '\n') || !note.ends_with('\n') {
            return Err("control character or no final newline".into());
        }
        let cut = note.rfind("\n\n").ok_or("no blank line before the signatures")?;
        let (body, sigs) = (&note[..cut + 1], &note[cut + 2..]);
        let mut lines = Vec::new();
        for line in sigs.split_terminator('\n') {
            let rest = line.strip_prefix("\u{2014} ").ok_or("no em dash and space")?;
            let (name, b64) = rest.split_once(' ').ok_or("no name")?;
            let blob = STANDARD.decode(b64).map_err(|_| "not base64")?;
            if name.is_empty() || name.contains(char::is_whitespace) || name.contains('+') || blob.len() < 5 {
                return Err("bad name or short signature".into());
            }
            lines.push((name, blob));
        }
        let ours: Vec<&Vec<u8>> = lines
            .iter()
            .filter(|(name, blob)| *name == key.name && blob[..4] == key.id)
            .map(|l| &l.1)
            .collect();
        let public = ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, key.public);
        if ours.iter().any(|blob| public.verify(body.as_bytes(), &blob[4..]).is_err()) {
            return Err("a signature by the log key does not verify".into());
        }
        if ours.is_empty() {
            return Err("no signature by the log key".into());
        }
        let lines: Vec<&str> = body.lines().collect();
        let root: H = STANDARD.decode(lines[2]).unwrap().try_into().unwrap();
        Ok((lines[0].to_owned(), lines[1].parse().unwrap(), root))
    }
}

fn hashes(proof: &Value) -> Vec<own::H> {
    proof
        .as_array()
        .unwrap()
        .iter()
        .map(|p| STANDARD.decode(p.as_str().unwrap()).unwrap().try_into().unwrap())
        .collect()
}

async fn get(app: &TestApp, path: &str) -> crate::helpers::Response {
    app.call(Method::GET, path, Some(&app.auditor()), None, None).await
}

async fn checkpoint(app: &TestApp, key: &own::Key) -> (u64, own::H, Value) {
    let res = get(app, "/v1/audit/checkpoint").await;
    assert_eq!(res.status, StatusCode::OK, "{}", res.body);
    let (origin, size, root) = own::open_checkpoint(res.body["note"].as_str().unwrap(), key).unwrap();
    assert_eq!(origin, res.body["origin"]);
    assert_eq!(size, res.body["tree_size"]);
    assert_eq!(STANDARD.encode(root), res.body["root_hash"]);
    (size, root, res.body)
}

#[tokio::test]
async fn an_auditor_checks_a_checkpoint_an_inclusion_proof_and_a_consistency_proof_with_its_own_verifier() {
    let app = spawn_app().await;
    let id = app.create_customer(json!({"name": "Ada Example", "email": "ada@example.com"})).await;
    assert_eq!(app.read_customer(&id, "order_fulfillment").await.status, StatusCode::OK);

    let res = get(&app, "/v1/audit/key").await;
    assert_eq!(res.status, StatusCode::OK, "{}", res.body);
    let key = own::parse_key(res.body["verifier_key"].as_str().unwrap());
    assert_eq!(key.name, "custodia.localhost/audit");
    assert_eq!(res.body["origin"], "custodia.localhost/audit");
    assert_eq!(res.body["public_key"], STANDARD.encode(key.public));

    let (size1, root1, body) = checkpoint(&app, &key).await;
    assert_eq!(body.as_object().unwrap().len(), 4, "{body}");

    // The create this test caused, proved included in the first checkpoint.
    let events = app.audit_events().await;
    let create = events
        .iter()
        .find(|e| e["action"] == "customer.create" && e["customer_id"] == id.as_str())
        .expect("the create event")
        .clone();
    let seq = create["seq"].as_u64().unwrap();
    assert!(seq < size1);
    let res = get(&app, &format!("/v1/audit/proofs/inclusion?index={seq}&tree_size={size1}")).await;
    assert_eq!(res.status, StatusCode::OK, "{}", res.body);
    assert_eq!((res.body["index"].as_u64(), res.body["tree_size"].as_u64()), (Some(seq), Some(size1)));
    let path = hashes(&res.body["proof"]);
    assert!(own::inclusion_holds(seq, size1, own::leaf(&create), &path, &root1));
    // The same proof does not hold for an altered event.
    let mut forged = create.clone();
    forged["outcome"] = json!("denied");
    assert!(!own::inclusion_holds(seq, size1, own::leaf(&forged), &path, &root1));

    // Every event of the log is included, at the size of the first checkpoint.
    for event in events.iter().take(size1 as usize) {
        let i = event["seq"].as_u64().unwrap();
        let res = get(&app, &format!("/v1/audit/proofs/inclusion?index={i}&tree_size={size1}")).await;
        assert!(
            own::inclusion_holds(i, size1, own::leaf(event), &hashes(&res.body["proof"]), &root1),
            "seq {i}"
        );
    }

    // More traffic, a second checkpoint, and the proof that it extends the first.
    for _ in 0..5 {
        app.create_customer(json!({"name": "Bo"})).await;
    }
    let (size2, root2, _) = checkpoint(&app, &key).await;
    assert!(size2 > size1);
    let res = get(&app, &format!("/v1/audit/proofs/consistency?from={size1}&to={size2}")).await;
    assert_eq!(res.status, StatusCode::OK, "{}", res.body);
    assert_eq!((res.body["from"].as_u64(), res.body["to"].as_u64()), (Some(size1), Some(size2)));
    let proof = hashes(&res.body["proof"]);
    assert!(own::consistency_holds(size1, size2, &proof, &root1, &root2));
    assert!(!own::consistency_holds(size1, size2, &proof, &root2, &root1));

    // Every auditor call above is itself an audit.read event by the auditor.
    let events = app.audit_events().await;
    let reads =
        events.iter().filter(|e| e["action"] == "audit.read" && e["actor"]["role"] == "auditor").count();
    assert!(reads >= 6 + size1 as usize, "only {reads} audit.read events");
}

#[tokio::test]
async fn bad_proof_parameters_are_400_with_our_error_shape_and_are_audited() {
    let app = spawn_app().await;
    app.create_customer(json!({"name": "Cy"})).await;
    let before = app.audit_events().await.len() as u64;
    let size = before + 1; // the listing above is itself an event
    let cases = [
        format!("/v1/audit/proofs/inclusion?index={size}&tree_size={size}"),
        "/v1/audit/proofs/inclusion?index=0&tree_size=0".to_owned(),
        format!("/v1/audit/proofs/inclusion?index=0&tree_size={}", size + 100),
        "/v1/audit/proofs/inclusion?index=0".to_owned(),
        "/v1/audit/proofs/inclusion?index=-1&tree_size=1".to_owned(),
        "/v1/audit/proofs/inclusion?index=x&tree_size=1".to_owned(),
        "/v1/audit/proofs/inclusion?index=0&tree_size=18446744073709551616".to_owned(),
        "/v1/audit/proofs/inclusion?index=0&tree_size=1&tree_size=2".to_owned(),
        "/v1/audit/proofs/consistency?from=3&to=2".to_owned(),
        "/v1/audit/proofs/consistency?from=0&to=2".to_owned(),
        "/v1/audit/proofs/consistency?from=0&to=0".to_owned(),
        format!("/v1/audit/proofs/consistency?from=1&to={}", size + 100),
        "/v1/audit/proofs/consistency?from=1&to=2&evil=1".to_owned(),
        "/v1/audit/checkpoint?tree_size=1".to_owned(),
        "/v1/audit/events?limit=0".to_owned(),
        format!("/v1/audit/leaves?from={}", size + 100),
    ];
    for path in &cases {
        let res = get(&app, path).await;
        assert_eq!(res.status, StatusCode::BAD_REQUEST, "{path}: {}", res.body);
        assert_eq!(res.body["error"], "bad_request", "{path}");
        assert!(res.body["message"].as_str().is_some_and(|m| !m.is_empty()), "{path}");
    }
    // size1 == size2 is a valid, empty consistency proof.
    let res = get(&app, "/v1/audit/proofs/consistency?from=1&to=1").await;
    assert_eq!(res.status, StatusCode::OK, "{}", res.body);
    assert_eq!(res.body["proof"], json!([]));

    let events = app.audit_events().await;
    let failed: Vec<&Value> = events[before as usize..]
        .iter()
        .filter(|e| e["action"] == "audit.read" && e["outcome"] == "failed")
        .collect();
    assert_eq!(failed.len(), cases.len(), "every refused call is audited");
    for e in failed {
        let reason = e["reason"][0].as_str().unwrap();
        assert!(reason == "bad_request" || reason == "out_of_range", "{e}");
    }
}

#[tokio::test]
async fn other_roles_cannot_reach_the_auditor_routes() {
    let app = spawn_app().await;
    for path in ["/v1/audit/checkpoint", "/v1/audit/key", "/v1/audit/proofs/inclusion?index=0&tree_size=1"] {
        let res = app.call(Method::GET, path, Some(&app.merchant()), None, None).await;
        assert_eq!(res.status, StatusCode::FORBIDDEN, "{path}");
        let res = app.call(Method::GET, path, None, None, None).await;
        assert_eq!(res.status, StatusCode::UNAUTHORIZED, "{path}");
    }
    let denied = app.audit_events().await.iter().filter(|e| e["action"] == "auth.denied").count();
    assert_eq!(denied, 6);
}

#[tokio::test]
async fn leaf_hashes_page_through_the_log_and_match_the_events() {
    let app = spawn_app().await;
    for i in 0..3 {
        app.create_customer(json!({"name": format!("N{i}")})).await;
    }
    let events = app.audit_events().await;
    let res = get(&app, "/v1/audit/leaves?from=1&limit=2").await;
    assert_eq!(res.status, StatusCode::OK, "{}", res.body);
    assert_eq!(res.body["next_from"], 3);
    let leaves = hashes(&res.body["leaf_hashes"]);
    assert_eq!(leaves, vec![own::leaf(&events[1]), own::leaf(&events[2])]);
    let res = get(&app, "/v1/audit/leaves?from=0&limit=10000").await;
    assert_eq!(res.body["next_from"], Value::Null);
    // The listing's own event and the first leaves call's event came after `events`.
    assert_eq!(hashes(&res.body["leaf_hashes"]).len(), events.len() + 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_checkpoint_is_signed_in_the_background_while_events_arrive() {
    use custodia::startup::App;
    let dir = tempfile::tempdir().unwrap();
    let app = App::build(test_settings(dir.path())).await.unwrap();
    let vault = app.vault();
    let base = format!("http://{}", app.local_addr());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(app.run_with_shutdown(async move {
        let _ = stopped.await;
    }));
    let client = reqwest::Client::new();
    let token = TestApp::token_for_tests();
    let mut last = 0;
    for round in 0..3 {
        for i in 0..3 {
            let res = client
                .post(format!("{base}/v1/customers"))
                .bearer_auth(&token)
                .json(&json!({"fields": {"name": format!("R{round}-{i}")}}))
                .send()
                .await
                .unwrap();
            assert_eq!(res.status(), StatusCode::CREATED);
        }
        let head = vault.audit_log().head().await.unwrap().0;
        // Nobody asks for a checkpoint: the background task signs one about every second. The
        // deadline leaves room for a loaded test machine.
        let started = std::time::Instant::now();
        let size = loop {
            let latest = vault.store().latest_checkpoint().await.unwrap().map_or(0, |(size, _)| size);
            if latest >= head || started.elapsed() > Duration::from_secs(20) {
                break latest;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert!(size >= head && size > last, "round {round}: checkpoint {size}, head {head}");
        last = size;
    }
    let _ = stop.send(());
    server.await.unwrap().unwrap();
}

/// Runs the real binary with `args` and returns (success, stdout, stderr).
pub(crate) async fn custodia(args: &[&str]) -> (bool, String, String) {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_custodia")).args(args).output().await.unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

pub(crate) async fn export(app: &TestApp, out: &Path) -> (bool, String, String) {
    export_from(&app.base, &app.auditor(), out).await
}

/// `custodia audit export` from the server at `base` with an auditor's `token` into `out`.
pub(crate) async fn export_from(base: &str, token: &str, out: &Path) -> (bool, String, String) {
    custodia(&["audit", "export", "--url", base, "--token", token, "--out", out.to_str().unwrap()]).await
}

/// `custodia audit verify` of the export in `dir` (its events, checkpoint and key files).
pub(crate) async fn verify_export(dir: &Path) -> (bool, String, String) {
    let file = |name: &str| dir.join(name).to_str().unwrap().to_owned();
    custodia(&[
        "audit",
        "verify",
        "--events",
        &file("events.ndjson"),
        "--checkpoint",
        &file("checkpoint.txt"),
        "--key",
        &file("key.txt"),
    ])
    .await
}

async fn verify(dir: &Path, extra: &[&str]) -> (bool, String, String) {
    let file = |name: &str| dir.join(name).to_str().unwrap().to_owned();
    let mut args = vec![
        "audit".to_owned(),
        "verify".into(),
        "--events".into(),
        file("events.ndjson"),
        "--checkpoint".into(),
        file("checkpoint.txt"),
        "--key".into(),
        file("key.txt"),
    ];
    args.extend(extra.iter().map(|a| (*a).to_owned()));
    custodia(&args.iter().map(String::as_str).collect::<Vec<_>>()).await
}

/// The audit entry files of a stopped server (see `store/audit_files.rs`): `audit.idx` holds
/// the end offset of each entry in `audit.dat`.
pub(crate) struct RawAuditFiles {
    dir: std::path::PathBuf,
}

impl RawAuditFiles {
    pub(crate) fn of(app: &TestApp) -> Self {
        RawAuditFiles { dir: app.data_dir.path().join("store").join("audit") }
    }

    fn ends(&self) -> Vec<u64> {
        std::fs::read(self.dir.join("audit.idx"))
            .unwrap()
            .chunks(8)
            .map(|c| u64::from_le_bytes(c.try_into().unwrap()))
            .collect()
    }

    fn range(&self, seq: u64) -> std::ops::Range<usize> {
        let ends = self.ends();
        let start = if seq == 0 { 0 } else { ends[seq as usize - 1] };
        start as usize..ends[seq as usize] as usize
    }

    fn len(&self) -> u64 {
        self.ends().len() as u64
    }

    pub(crate) fn get(&self, seq: u64) -> Vec<u8> {
        std::fs::read(self.dir.join("audit.dat")).unwrap()[self.range(seq)].to_vec()
    }

    /// Overwrites entry `seq` with bytes of the same length.
    pub(crate) fn overwrite(&self, seq: u64, entry: &[u8]) {
        let range = self.range(seq);
        assert_eq!(entry.len(), range.len(), "in-place edits keep the length");
        let path = self.dir.join("audit.dat");
        let mut data = std::fs::read(&path).unwrap();
        data[range].copy_from_slice(entry);
        std::fs::write(path, data).unwrap();
    }

    /// Drops the last entry, as if it had never been written.
    fn drop_last(&self) {
        let ends = self.ends();
        let keep = ends.len() - 1;
        let dat_len = if keep == 0 { 0 } else { ends[keep - 1] };
        let idx = std::fs::OpenOptions::new().write(true).open(self.dir.join("audit.idx")).unwrap();
        idx.set_len(keep as u64 * 8).unwrap();
        let dat = std::fs::OpenOptions::new().write(true).open(self.dir.join("audit.dat")).unwrap();
        dat.set_len(dat_len).unwrap();
    }
}

/// Splits a stored audit entry into its node header (see `store/sled.rs`) and the event JSON.
pub(crate) fn split_stored(value: &[u8]) -> (Vec<u8>, String) {
    let header_len = 1 + 33 * usize::from(value[0]);
    (value[..header_len].to_vec(), String::from_utf8(value[header_len..].to_vec()).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_edited_in_the_data_directory_is_named_by_audit_verify() {
    if crate::helpers::sled_only("edits the audit files in the data directory") {
        return;
    }
    let app = spawn_app().await;
    let id = app.create_customer(json!({"name": "Di", "email": "di@example.com"})).await;
    for _ in 0..4 {
        assert_eq!(app.read_customer(&id, "order_fulfillment").await.status, StatusCode::OK);
    }
    let res = app.read_customer(&id, "no_such_purpose").await;
    assert_eq!(res.status, StatusCode::BAD_REQUEST);

    // An honest export verifies, and is consistent with an earlier checkpoint.
    let first = tempfile::tempdir().unwrap();
    let (ok, stdout, stderr) = export(&app, first.path()).await;
    assert!(ok, "export failed: {stderr}");
    assert!(stdout.starts_with("exported "), "{stdout}");
    let (ok, stdout, stderr) =
        verify(first.path(), &["--leaves", first.path().join("leaves.txt").to_str().unwrap()]).await;
    assert!(ok, "verify failed: {stderr}");
    assert!(stdout.starts_with("ok: ") && stdout.lines().count() == 1, "{stdout}");
    let later = tempfile::tempdir().unwrap();
    assert!(export(&app, later.path()).await.0);
    let (ok, stdout, stderr) =
        verify(later.path(), &["--previous", first.path().join("checkpoint.txt").to_str().unwrap()]).await;
    assert!(ok, "{stderr}");
    assert!(stdout.contains("consistent with the earlier checkpoint"), "{stdout}");

    // The denied read is rewritten as allowed, directly in the store.
    let denied = app
        .audit_events()
        .await
        .into_iter()
        .find(|e| e["action"] == "customer.read" && e["outcome"] == "denied")
        .expect("the denied read");
    let seq = denied["seq"].as_u64().unwrap();
    let mut app = app;
    app.shutdown().await;
    {
        let files = RawAuditFiles::of(&app);
        let (header, text) = split_stored(&files.get(seq));
        assert!(text.contains(r#""outcome":"denied""#), "{text}");
        // Same length, so the edit fits in place: the removed reason becomes whitespace.
        let removed = r#","reason":["unknown_purpose"]"#;
        let forged = text
            .replace(r#""outcome":"denied""#, r#""outcome":"allowed""#)
            .replace(removed, &" ".repeat(removed.len() - 1));
        files.overwrite(seq, &[header, forged.into_bytes()].concat());
    }
    let app = app.restart().await;

    let dir = tempfile::tempdir().unwrap();
    let (ok, _, stderr) = export(&app, dir.path()).await;
    assert!(ok, "export failed: {stderr}");
    // With the leaf hashes the forged event is named; without them the root check fails.
    let (ok, _, stderr) =
        verify(dir.path(), &["--leaves", dir.path().join("leaves.txt").to_str().unwrap()]).await;
    assert!(!ok);
    assert!(stderr.contains(&format!("event {seq}: altered")), "{stderr}");
    let (ok, _, stderr) = verify(dir.path(), &[]).await;
    assert!(!ok);
    assert!(stderr.contains("root:"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_last_event_is_named_and_the_server_refuses_to_start() {
    if crate::helpers::sled_only("edits the audit files in the data directory") {
        return;
    }
    let mut app = spawn_app().await;
    app.create_customer(json!({"name": "Ed"})).await;
    let key = get(&app, "/v1/audit/key").await.body["verifier_key"].as_str().unwrap().to_owned();
    let res = get(&app, "/v1/audit/checkpoint").await;
    let note = res.body["note"].as_str().unwrap().to_owned();
    let size = res.body["tree_size"].as_u64().unwrap();
    app.shutdown().await;

    // Build the export from the raw store, as a copy of the data directory would give it,
    // without the last event the checkpoint covers.
    let files = RawAuditFiles::of(&app);
    let mut ndjson = String::new();
    for seq in 0..size - 1 {
        ndjson.push_str(&split_stored(&files.get(seq)).1);
        ndjson.push('\n');
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("events.ndjson"), &ndjson).unwrap();
    std::fs::write(dir.path().join("checkpoint.txt"), &note).unwrap();
    std::fs::write(dir.path().join("key.txt"), &key).unwrap();
    let (ok, _, stderr) = verify(dir.path(), &[]).await;
    assert!(!ok);
    assert!(stderr.contains(&format!("event {}: missing", size - 1)), "{stderr}");

    // The full set verifies (the key given as a string this time).
    ndjson.push_str(&split_stored(&files.get(size - 1)).1);
    ndjson.push('\n');
    std::fs::write(dir.path().join("events.ndjson"), &ndjson).unwrap();
    let file = |n: &str| dir.path().join(n).to_str().unwrap().to_owned();
    let (ok, _, stderr) = custodia(&[
        "audit",
        "verify",
        "--events",
        &file("events.ndjson"),
        "--checkpoint",
        &file("checkpoint.txt"),
        "--key",
        &key,
    ])
    .await;
    assert!(ok, "{stderr}");

    // Removing the event from the store itself: the server will not open a log shorter than
    // the data changes it holds (the store's own check) or than a checkpoint it signed.
    assert!(files.len() >= size);
    files.drop_last();
    let err = custodia::startup::App::build(app.settings.clone()).await.err().expect("refuses to start");
    let err = err.to_string();
    assert!(err.contains("the audit log ends at") || err.contains("events were removed"), "{err}");
}

mod fail_closed {
    //! A store whose flush can be made to fail: every auditor route must then answer 503 with
    //! no data, and no checkpoint may be signed over the events that are not durable.

    use std::sync::Arc;
    use std::sync::atomic::Ordering;

    use axum::body::Body;
    use axum::http::Request;
    use custodia::auth::Authenticator;
    use custodia::http::{AppState, Limits, router};
    use secrecy::SecretString;
    use tower::ServiceExt;

    use super::*;
    use crate::helpers::SECRET;
    use crate::interposed::{InterposedStore, vault_over};

    async fn call(app: &axum::Router, path: &str, token: &str) -> (StatusCode, Value) {
        let req = Request::get(path)
            .header("Authorization", format!("Bearer {token}"))
            .body(Body::empty())
            .unwrap();
        let res = app.clone().oneshot(req).await.unwrap();
        let status = res.status();
        let bytes = axum::body::to_bytes(res.into_body(), 1 << 20).await.unwrap();
        (status, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
    }

    #[tokio::test]
    async fn when_events_cannot_be_made_durable_auditor_calls_answer_503_without_data() {
        let flaky = InterposedStore::new();
        let epochs = tempfile::tempdir().unwrap();
        let vault = Arc::new(vault_over(flaky.clone(), epochs.path()).await);
        let auth = Arc::new(Authenticator::hs256(&SecretString::from(SECRET)).unwrap());
        let app = router(
            AppState::new(
                Arc::clone(&vault),
                auth,
                Arc::new(custodia::http::rate_limit::CallerLimiter::new(0, 0)),
            ),
            Limits { max_body_bytes: 1 << 16, request_timeout: Duration::from_secs(10) },
        );
        let merchant = TestApp::token_for_tests();
        let auditor = crate::helpers::sign_hs256(
            json!({"sub": "a", "role": "auditor", "exp": crate::helpers::now() + 600}),
        );
        assert_eq!(call(&app, "/v1/audit/checkpoint", &auditor).await.0, StatusCode::OK);
        let signed_before = vault.store().latest_checkpoint().await.unwrap().unwrap().0;

        let ctx = custodia::vault::RequestContext {
            principal: custodia::domain::Principal {
                role: custodia::domain::Role::Merchant,
                sub: Some("m".into()),
            },
            request_id: "r".into(),
        };
        let body =
            serde_json::from_value(json!({"fields": {"name": "Fail Closed", "email": "fc@example.com"}}))
                .unwrap();
        let customer = vault.create_customer(&ctx, body, None).await.unwrap();

        let durable = vault.audit_log().head().await.unwrap().0;
        flaky.fail_writes.store(true, Ordering::SeqCst);
        // A merchant read whose event cannot be made durable returns no data.
        let req = Request::get(format!("/v1/customers/{customer}"))
            .header("Authorization", format!("Bearer {merchant}"))
            .header("X-Purpose", "order_fulfillment")
            .body(Body::empty())
            .unwrap();
        let res = app.clone().oneshot(req).await.unwrap();
        assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
        let bytes = axum::body::to_bytes(res.into_body(), 1 << 20).await.unwrap();
        assert!(!String::from_utf8_lossy(&bytes).contains("Fail Closed"), "no data in a 503");
        let req = Request::post("/v1/customers")
            .header("Authorization", format!("Bearer {merchant}"))
            .header("Content-Type", "application/json")
            .body(Body::from(json!({"fields": {"name": "Never acknowledged"}}).to_string()))
            .unwrap();
        assert_eq!(app.clone().oneshot(req).await.unwrap().status(), StatusCode::SERVICE_UNAVAILABLE);
        for path in [
            "/v1/audit/checkpoint",
            "/v1/audit/key",
            "/v1/audit/events",
            "/v1/audit/leaves",
            "/v1/audit/proofs/inclusion?index=0&tree_size=1",
            "/v1/audit/proofs/consistency?from=1&to=1",
            "/v1/audit/proofs/inclusion?index=5&tree_size=1",
        ] {
            let (status, body) = call(&app, path, &auditor).await;
            assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{path}: {body}");
            assert_eq!(body["error"], "audit_unavailable", "{path}");
            assert_eq!(body.as_object().unwrap().len(), 2, "{path}: no data besides the error: {body}");
        }
        // A wrong role is refused too, but its auth.denied event cannot be recorded: 503.
        assert_eq!(call(&app, "/v1/audit/key", &merchant).await.0, StatusCode::SERVICE_UNAVAILABLE);
        // A checkpoint covers only durable events: none of the failed requests is in it.
        let signed = vault.audit_log().checkpoint().await.unwrap().unwrap();
        assert_eq!(signed.checkpoint.size, durable);
        assert!(durable > signed_before);

        flaky.fail_writes.store(false, Ordering::SeqCst);
        let (status, body) = call(&app, "/v1/audit/checkpoint", &auditor).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert!(body["tree_size"].as_u64().unwrap() > durable);
    }
}

#[tokio::test]
async fn an_invalid_or_changed_origin_stops_the_server_from_starting() {
    let bad = custodia::startup::App::build(custodia::config::Settings {
        audit_origin: "two words".into(),
        ..test_settings(tempfile::tempdir().unwrap().path())
    })
    .await
    .err()
    .expect("refused");
    assert!(bad.to_string().contains("CUSTODIA_AUDIT_ORIGIN"), "{bad}");

    let mut app = spawn_app().await;
    assert_eq!(get(&app, "/v1/audit/checkpoint").await.status, StatusCode::OK);
    app.shutdown().await;
    let mut settings = app.settings.clone();
    settings.audit_origin = "another.example/log".into();
    let err = custodia::startup::App::build(settings).await.err().expect("refused");
    assert!(err.to_string().contains("was CUSTODIA_AUDIT_ORIGIN changed"), "{err}");
}

/// A signature line `— name base64(id ‖ sig)`.
fn signature_line(name: &str, id: &[u8], sig: &[u8]) -> String {
    format!("\u{2014} {name} {}\n", STANDARD.encode([id, sig].concat()))
}

/// `note` with `extra` put before (`first`) or after its signature lines.
fn with_signature_line(note: &str, extra: &str, first: bool) -> String {
    let (text, signatures) = note.rsplit_once("\n\n").unwrap();
    if first { format!("{text}\n\n{extra}{signatures}") } else { format!("{text}\n\n{signatures}{extra}") }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_verify_refuses_a_bad_signature_line_by_the_log_key_before_or_after_the_good_one() {
    let app = spawn_app().await;
    app.create_customer(json!({"name": "Flo"})).await;
    let dir = tempfile::tempdir().unwrap();
    let (ok, _, stderr) = export(&app, dir.path()).await;
    assert!(ok, "export failed: {stderr}");
    let note = std::fs::read_to_string(dir.path().join("checkpoint.txt")).unwrap();
    let key = own::parse_key(&std::fs::read_to_string(dir.path().join("key.txt")).unwrap());
    let good = note.rsplit_once("\n\n").unwrap().1.to_owned();
    let mut other_id = key.id;
    other_id[0] ^= 0xff;
    let cases = [
        ("a zero signature by the log key", signature_line(&key.name, &key.id, &[0; 64]), false),
        ("a short signature by the log key", signature_line(&key.name, &key.id, &[0; 9]), false),
        ("a truncated blob", signature_line(&key.name, &key.id[..3], &[]), false),
        ("a second good signature", good.clone(), true),
        ("another key id under the log's name", signature_line(&key.name, &other_id, &[0; 64]), true),
        ("a bad signature under another name", signature_line("witness.example/w", &key.id, &[0; 64]), true),
    ];
    for (what, extra, accepted) in &cases {
        for first in [false, true] {
            let altered = with_signature_line(&note, extra, first);
            std::fs::write(dir.path().join("checkpoint.txt"), &altered).unwrap();
            let (ok, stdout, stderr) = verify(dir.path(), &[]).await;
            assert_eq!(ok, *accepted, "{what}, first: {first}: {stdout}{stderr}");
            if !accepted {
                assert!(stderr.contains("checkpoint: "), "{what}: {stderr}");
            }
            // The test's own verifier, written from the C2SP text, gives the same answer.
            assert_eq!(
                own::open_checkpoint(&altered, &key).is_ok(),
                *accepted,
                "own: {what}, first: {first}"
            );
        }
    }
    // The same rule holds for the earlier checkpoint given with --previous.
    std::fs::write(dir.path().join("checkpoint.txt"), &note).unwrap();
    let previous = dir.path().join("previous.txt");
    std::fs::write(&previous, with_signature_line(&note, &cases[0].1, false)).unwrap();
    let (ok, _, stderr) = verify(dir.path(), &["--previous", previous.to_str().unwrap()]).await;
    assert!(!ok);
    assert!(stderr.contains("previous checkpoint: "), "{stderr}");
    // A note file that is not UTF-8 is named as a malformed note.
    let mut bytes = note.clone().into_bytes();
    bytes[0] = 0xff;
    std::fs::write(dir.path().join("checkpoint.txt"), bytes).unwrap();
    let (ok, _, stderr) = verify(dir.path(), &[]).await;
    assert!(!ok);
    assert!(stderr.contains("checkpoint: malformed signed note: it is not UTF-8"), "{stderr}");
    std::fs::write(dir.path().join("checkpoint.txt"), &note).unwrap();
    assert!(verify(dir.path(), &[]).await.0, "the untouched export verifies");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_refuses_to_start_over_a_stored_checkpoint_with_a_bad_line_by_its_key() {
    if crate::helpers::sled_only("replaces a checkpoint in the sled tree") {
        return;
    }
    let mut app = spawn_app().await;
    app.create_customer(json!({"name": "Gus"})).await;
    let key = own::parse_key(get(&app, "/v1/audit/key").await.body["verifier_key"].as_str().unwrap());
    app.shutdown().await;
    // The stored note is edited in place in the stopped server's files, as an attacker would.
    let (size, note) = crate::helpers::latest_stored_checkpoint(&app.settings.data_dir);
    let note = String::from_utf8(note).unwrap();
    let put = |note: String| {
        crate::helpers::replace_stored_checkpoint(&app.settings.data_dir, size, note.into_bytes());
        std::future::ready(())
    };
    let bad = signature_line(&key.name, &key.id, &[0; 64]);
    for first in [false, true] {
        put(with_signature_line(&note, &bad, first)).await;
        let err = custodia::startup::App::build(app.settings.clone()).await.err().expect("refuses to start");
        assert!(err.to_string().contains("does not verify"), "first: {first}: {err}");
    }
    put(note).await;
    assert!(custodia::startup::App::build(app.settings.clone()).await.is_ok(), "the intact note is accepted");
}
