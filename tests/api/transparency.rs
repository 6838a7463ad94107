//! The public transparency report: known counts from a scenario, the "fewer than 5" rule, no
//! ids, the checkpoint it names, and `custodia audit report` agreeing offline — and disagreeing
//! once an event or a count is altered. Also `custodia policy record`.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::auditor::{custodia, export};
use crate::helpers::{TestApp, spawn_app};

async fn disclose(app: &TestApp, id: &str, recipient: &str, purpose: &str, fields: &[&str]) -> StatusCode {
    let body = json!({"customer_id": id, "recipient": recipient, "purpose": purpose, "fields": fields});
    app.call(Method::POST, "/v1/disclosures", Some(&app.merchant()), None, Some(&body)).await.status
}

async fn consent(app: &TestApp, id: &str, granted: bool) {
    let body = json!({"granted": granted, "source": "checkout", "notice": "marketing-v2"});
    let res = app
        .call(
            Method::PUT,
            &format!("/v1/customers/{id}/consents/marketing"),
            Some(&app.merchant()),
            None,
            Some(&body),
        )
        .await;
    assert_eq!(res.status, StatusCode::OK, "{}", res.body);
}

/// Six customers: six allowed deliveries to acme-shipping, three marketing disclosures refused
/// for want of consent, five consents granted, one withdrawn, two objections, one erasure.
pub(crate) async fn scenario(app: &TestApp) -> Vec<String> {
    let mut ids = Vec::new();
    for i in 0..6 {
        let id = app
            .create_customer(json!({"name": format!("Customer {i}"), "email": format!("c{i}@example.com")}))
            .await;
        assert_eq!(disclose(app, &id, "acme-shipping", "order_fulfillment", &["name"]).await, StatusCode::OK);
        ids.push(id);
    }
    for id in &ids[..3] {
        assert_eq!(
            disclose(app, id, "letterbox-newsletter", "marketing", &["email"]).await,
            StatusCode::FORBIDDEN
        );
    }
    for id in &ids[1..] {
        consent(app, id, true).await;
    }
    consent(app, &ids[5], false).await;
    for id in &ids[..2] {
        let token = TestApp::customer_token(id);
        let res = app
            .call(
                Method::PUT,
                "/v1/me/objections/fraud_prevention",
                Some(&token),
                None,
                Some(&json!({"objected": true})),
            )
            .await;
        assert_eq!(res.status, StatusCode::OK, "{}", res.body);
    }
    let res = app
        .call(Method::DELETE, &format!("/v1/customers/{}", ids[0]), Some(&app.merchant()), None, None)
        .await;
    assert_eq!(res.status, StatusCode::OK);
    ids
}

fn cell<'a>(cells: &'a Value, pairs: &[(&str, &str)]) -> &'a Value {
    cells
        .as_array()
        .unwrap()
        .iter()
        .find(|c| pairs.iter().all(|(k, v)| c[*k] == *v))
        .map(|c| &c["count"])
        .unwrap_or_else(|| panic!("no cell {pairs:?} in {cells}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_report_counts_a_known_scenario_and_hides_small_numbers() {
    let app = spawn_app().await;
    let ids = scenario(&app).await;
    let res = app.call(Method::GET, "/v1/transparency", None, None, None).await;
    assert_eq!(res.status, StatusCode::OK, "{}", res.body);
    let report = res.body;

    let months = report["months"].as_array().unwrap();
    assert_eq!(months.len(), 1, "{report}");
    let m = &months[0];
    assert_eq!(m["month"], chrono::Utc::now().format("%Y-%m").to_string());
    let d = &m["disclosures"];
    assert_eq!(
        cell(d, &[("recipient", "acme-shipping"), ("purpose", "order_fulfillment"), ("outcome", "allowed")]),
        6
    );
    assert_eq!(
        cell(d, &[("recipient", "letterbox-newsletter"), ("purpose", "marketing"), ("outcome", "denied")]),
        "fewer than 5"
    );
    assert_eq!(cell(&m["denials"], &[("reason", "consent_missing")]), "fewer than 5");
    assert_eq!(cell(&m["consents"], &[("purpose", "marketing"), ("change", "granted")]), 5);
    assert_eq!(cell(&m["consents"], &[("purpose", "marketing"), ("change", "withdrawn")]), "fewer than 5");
    assert_eq!(
        cell(&m["objections"], &[("purpose", "fraud_prevention"), ("change", "objected")]),
        "fewer than 5"
    );
    assert_eq!(m["erasures"], "fewer than 5");
    assert_eq!(m["retention_purges"], "fewer than 5");

    // What is collected and why: the Art. 30 record of the loaded policies.
    let record = custodia::policy::ProcessingRecord::of(
        &custodia::policy::PolicySet::load(
            &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("policies"),
        )
        .unwrap(),
    );
    assert_eq!(report["record"], serde_json::to_value(&record).unwrap());

    // The report names a signed checkpoint of exactly the events it counts.
    let key =
        custodia::audit::checkpoint::VerifierKey::parse(report["key"]["verifier_key"].as_str().unwrap())
            .unwrap();
    let cp = key.open_checkpoint(report["checkpoint"]["note"].as_str().unwrap()).unwrap();
    assert_eq!(cp.size, report["tree_size"].as_u64().unwrap());
    // The auditor's listing shows the log as it stood before its own read was recorded.
    assert_eq!(cp.size, app.audit_events().await.len() as u64);

    // Counts only: no customer id, no value.
    let text = report.to_string();
    for id in &ids {
        assert!(!text.contains(id.as_str()), "an id leaked into the report");
    }
    assert!(!text.contains("example.com") && !text.contains("Customer 1"));

    // Not audited, and a second view with no new event counts the same.
    let size = app.audit_events().await.len();
    let again = app.call(Method::GET, "/v1/transparency", None, None, None).await.body;
    assert_eq!(app.audit_events().await.len(), size + 1, "only the auditor's listing was recorded");
    assert_eq!(again["months"][0]["disclosures"], report["months"][0]["disclosures"]);
}

/// The persisted fold of a stopped server, and a way to replace it (as a store restored to an
/// earlier point, or a test of where the counts come from, would).
async fn with_persisted_fold(app: &TestApp, edit: impl FnOnce(&mut custodia::audit::counters::Counters)) {
    let settings = custodia::store::StorageSettings::Sled {
        dir: app.data_dir.path().join("store"),
        cache_bytes: 8 << 20,
    };
    let store = custodia::store::open(&settings, std::sync::Arc::new(custodia::audit::tree::Tree)).unwrap();
    let bytes = store.meta(custodia::vault::COUNTERS_META).await.unwrap().expect("the fold is persisted");
    let mut counters: custodia::audit::counters::Counters = serde_json::from_slice(&bytes).unwrap();
    edit(&mut counters);
    store.put_meta(custodia::vault::COUNTERS_META, serde_json::to_vec(&counters).unwrap()).await.unwrap();
    store.close().await.unwrap();
}

/// A restart resumes from the persisted fold instead of recounting the log (a month only the
/// persisted fold holds is still reported), and a fold longer than the log is recounted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_resumes_from_the_persisted_fold_and_a_fold_ahead_of_the_log_is_recounted() {
    if crate::helpers::sled_only("edits the persisted fold in the sled tree") {
        return;
    }
    let mut app = spawn_app().await;
    scenario(&app).await;
    let before = app.call(Method::GET, "/v1/transparency", None, None, None).await.body;
    app.shutdown().await;
    let size = before["tree_size"].as_u64().unwrap();
    with_persisted_fold(&app, |c| {
        assert_eq!(c.size, size, "the fold stands at the report's tree size");
        c.months.entry("1999-01".into()).or_default().erasures = 7;
    })
    .await;
    let mut app = app.restart().await;
    let after = app.call(Method::GET, "/v1/transparency", None, None, None).await.body;
    let months: Vec<&str> =
        after["months"].as_array().unwrap().iter().map(|m| m["month"].as_str().unwrap()).collect();
    assert!(months.contains(&"1999-01"), "resumed from the persisted fold: {months:?}");
    assert_eq!(after["months"][0]["disclosures"], before["months"][0]["disclosures"]);

    app.shutdown().await;
    with_persisted_fold(&app, |c| c.size = 1 << 40).await;
    let app = app.restart().await;
    let recounted = app.call(Method::GET, "/v1/transparency", None, None, None).await.body;
    let months: Vec<&str> =
        recounted["months"].as_array().unwrap().iter().map(|m| m["month"].as_str().unwrap()).collect();
    assert_eq!(months.len(), 1, "recounted from the log: {months:?}");
    assert_eq!(recounted["months"][0]["consents"], before["months"][0]["consents"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_report_recomputes_the_counts_offline_and_refuses_altered_events_or_counts() {
    let app = spawn_app().await;
    scenario(&app).await;
    let report = app.call(Method::GET, "/v1/transparency", None, None, None).await.body;
    // More events after the report: the offline check covers exactly the report's tree size.
    app.create_customer(json!({"name": "Later"})).await;
    let dir = tempfile::tempdir().unwrap();
    let (ok, _, stderr) = export(&app, dir.path()).await;
    assert!(ok, "{stderr}");
    let file = |n: &str| dir.path().join(n).to_str().unwrap().to_owned();
    std::fs::write(dir.path().join("report.json"), report.to_string()).unwrap();
    let args = |report: Option<&str>| {
        let mut a: Vec<String> = ["audit", "report", "--events"].map(str::to_owned).to_vec();
        a.extend([
            file("events.ndjson"),
            "--checkpoint".into(),
            file("checkpoint.txt"),
            "--key".into(),
            file("key.txt"),
        ]);
        if let Some(r) = report {
            a.extend(["--report".into(), r.to_owned()]);
        }
        a
    };
    let run =
        |a: Vec<String>| async move { custodia(&a.iter().map(String::as_str).collect::<Vec<_>>()).await };

    let (ok, stdout, stderr) = run(args(Some(&file("report.json")))).await;
    assert!(ok, "{stderr}");
    assert!(stdout.starts_with("ok: the report's counts agree"), "{stdout}");

    // Without a report: the counts of the whole export, printed as JSON.
    let (ok, stdout, stderr) = run(args(None)).await;
    assert!(ok, "{stderr}");
    let printed: Value = serde_json::from_str(&stdout).unwrap();
    assert!(printed["tree_size"].as_u64() > report["tree_size"].as_u64());

    // An altered count in the report.
    let mut forged = report.clone();
    let cells = forged["months"][0]["disclosures"].as_array_mut().unwrap();
    let acme = cells.iter_mut().find(|c| c["recipient"] == "acme-shipping").unwrap();
    acme["count"] = json!(7);
    std::fs::write(dir.path().join("forged.json"), forged.to_string()).unwrap();
    let (ok, _, stderr) = run(args(Some(&file("forged.json")))).await;
    assert!(!ok);
    assert!(stderr.contains("counts differ"), "{stderr}");

    // The true month, then a forged second copy of it: a reader of the report would see both.
    let mut doubled = report.clone();
    let mut copy = doubled["months"][0].clone();
    copy["erasures"] = json!(500);
    doubled["months"].as_array_mut().unwrap().push(copy);
    std::fs::write(dir.path().join("doubled.json"), doubled.to_string()).unwrap();
    let (ok, stdout, stderr) = run(args(Some(&file("doubled.json")))).await;
    assert!(!ok, "a month given twice passed: {stdout}");
    assert!(stderr.contains("repeated"), "{stderr}");

    // An altered event in the export: a refused disclosure rewritten as allowed.
    let events = std::fs::read_to_string(dir.path().join("events.ndjson")).unwrap();
    let denied = r#""outcome":"denied""#;
    let line =
        events.lines().position(|l| l.contains(r#""action":"disclosure""#) && l.contains(denied)).unwrap();
    let altered: Vec<String> = events
        .lines()
        .enumerate()
        .map(|(i, l)| if i == line { l.replace(denied, r#""outcome":"allowed""#) } else { l.to_owned() })
        .collect();
    std::fs::write(dir.path().join("events.ndjson"), altered.join("\n") + "\n").unwrap();
    let (ok, _, stderr) = run(args(Some(&file("report.json")))).await;
    assert!(!ok, "an altered event must not pass");
    assert!(stderr.contains("does not verify"), "{stderr}");
}

#[tokio::test]
async fn policy_record_prints_the_art_30_record_as_markdown_and_json() {
    let policies = concat!(env!("CARGO_MANIFEST_DIR"), "/policies");
    let (ok, markdown, stderr) = custodia(&["policy", "record", policies]).await;
    assert!(ok, "{stderr}");
    let golden = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/golden/art30-record.md");
    assert_eq!(markdown, std::fs::read_to_string(golden).unwrap());
    let (ok, json, _) = custodia(&["policy", "record", "--json", policies]).await;
    assert!(ok);
    let golden = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/golden/art30-record.json");
    assert_eq!(
        serde_json::from_str::<Value>(&json).unwrap(),
        serde_json::from_str::<Value>(&std::fs::read_to_string(golden).unwrap()).unwrap()
    );
    let (ok, _, stderr) = custodia(&["policy", "record", "/nonexistent"]).await;
    assert!(!ok);
    assert!(stderr.contains("invalid"), "{stderr}");
}
