//! The public transparency report: distinct customers per cell, closed months only (the month
//! boundary driven by the audit clock, `Settings::audit_clock`), the "fewer than 5" rule, no
//! ids, the checkpoint it names, a report prepared in the background that views only read, the
//! per-address limit of the public routes, and `custodia audit report` agreeing offline — and
//! disagreeing once an event or a count is altered. Also `custodia policy record`.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::auditor::{custodia, export};
use crate::helpers::{TestApp, spawn_app, spawn_app_with};

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

/// Sets the clock the server stamps audit events with.
pub(crate) fn set_clock(app: &TestApp, at: &str) {
    app.settings.audit_clock.set(custodia::domain::Timestamp::parse_rfc3339(at).expect("an RFC 3339 time"));
}

/// A server whose report is refreshed only at start and when the test asks
/// ([`TestApp::refresh_transparency`]), so what a view shows is decided by the test.
pub(crate) async fn spawn_quiet_app() -> TestApp {
    spawn_app_with(|s| s.transparency_refresh_secs = 3600).await
}

/// Six customers, each event twice where a customer can repeat it: six customers with two
/// allowed deliveries to acme-shipping each, three refused marketing disclosures twice each for
/// want of consent, five consents granted (one customer granting, withdrawing and granting
/// again), one withdrawn, two objections, one erasure.
pub(crate) async fn scenario(app: &TestApp) -> Vec<String> {
    let mut ids = Vec::new();
    for i in 0..6 {
        let id = app
            .create_customer(json!({"name": format!("Customer {i}"), "email": format!("c{i}@example.com")}))
            .await;
        for _ in 0..2 {
            let status = disclose(app, &id, "acme-shipping", "order_fulfillment", &["name"]).await;
            assert_eq!(status, StatusCode::OK);
        }
        ids.push(id);
    }
    for id in &ids[..3] {
        for _ in 0..2 {
            assert_eq!(
                disclose(app, id, "letterbox-newsletter", "marketing", &["email"]).await,
                StatusCode::FORBIDDEN
            );
        }
    }
    for id in &ids[1..] {
        consent(app, id, true).await;
    }
    consent(app, &ids[5], false).await;
    consent(app, &ids[5], true).await;
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

/// Ends the month the clock stands in: the clock moves to `next` (a later month) and one event
/// is recorded there, which closes the earlier month in the log.
pub(crate) async fn close_month(app: &TestApp, next: &str) {
    set_clock(app, next);
    app.create_customer(json!({"name": "Next month"})).await;
}

/// [`scenario`] in March 2031, closed by an event of April 2031; the report refreshed.
pub(crate) async fn closed_scenario(app: &TestApp) -> Vec<String> {
    set_clock(app, "2031-03-10T12:00:00Z");
    let ids = scenario(app).await;
    close_month(app, "2031-04-01T00:00:01Z").await;
    app.refresh_transparency().await;
    ids
}

/// `GET /v1/transparency`, which must answer 200.
pub(crate) async fn report(app: &TestApp) -> Value {
    let res = app.call(Method::GET, "/v1/transparency", None, None, None).await;
    assert_eq!(res.status, StatusCode::OK, "{}", res.body);
    res.body
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
async fn the_report_counts_distinct_customers_of_closed_months_and_hides_small_numbers() {
    let app = spawn_quiet_app().await;
    set_clock(&app, "2031-03-10T12:00:00Z");
    let ids = scenario(&app).await;
    app.refresh_transparency().await;
    // The month in progress is counted but not published.
    let live = report(&app).await;
    assert_eq!(live["months"], json!([]), "{live}");
    assert_eq!(live["in_progress"], "2031-03");

    close_month(&app, "2031-04-01T00:00:01Z").await;
    app.refresh_transparency().await;
    let report = report(&app).await;
    assert_eq!(report["in_progress"], "2031-04");
    let months = report["months"].as_array().unwrap();
    assert_eq!(months.len(), 1, "{report}");
    let m = &months[0];
    assert_eq!(m["month"], "2031-03");
    let d = &m["disclosures"];
    assert_eq!(
        cell(d, &[("recipient", "acme-shipping"), ("purpose", "order_fulfillment"), ("outcome", "allowed")]),
        6,
        "six customers, twelve disclosures"
    );
    assert_eq!(
        cell(d, &[("recipient", "letterbox-newsletter"), ("purpose", "marketing"), ("outcome", "denied")]),
        "fewer than 5"
    );
    assert_eq!(cell(&m["denials"], &[("reason", "consent_missing")]), "fewer than 5");
    assert_eq!(
        cell(&m["consents"], &[("purpose", "marketing"), ("change", "granted")]),
        5,
        "five customers, six grants"
    );
    assert_eq!(cell(&m["consents"], &[("purpose", "marketing"), ("change", "withdrawn")]), "fewer than 5");
    assert_eq!(
        cell(&m["objections"], &[("purpose", "fraud_prevention"), ("change", "objected")]),
        "fewer than 5"
    );
    assert_eq!(m["erasures"], "fewer than 5");
    assert_eq!(m["retention_purges"], "fewer than 5");
    // The full grid of the policy, so a cell's presence never tells 0 from 1–4: cells nobody
    // was counted in are listed too.
    let n = |list: &str| report["record"][list].as_array().unwrap().len();
    assert_eq!(d.as_array().unwrap().len(), (n("recipients") + 1) * (n("activities") + 1) * 3, "{d}");
    assert_eq!(
        cell(
            d,
            &[("recipient", "letterbox-newsletter"), ("purpose", "order_fulfillment"), ("outcome", "failed")]
        ),
        "fewer than 5"
    );
    assert_eq!(cell(&m["denials"], &[("reason", "token_expired")]), "fewer than 5");
    assert_eq!(cell(&m["restrictions"], &[("change", "restricted")]), "fewer than 5");
    assert_eq!(cell(&m["consents"], &[("purpose", "marketing"), ("change", "withdrawn")]), "fewer than 5");
    assert_eq!(report["held_back"], json!([]));

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

    // A view only reads the prepared report: new events show after the next background step,
    // not because someone looked. Views are not audited.
    app.create_customer(json!({"name": "After the report"})).await;
    let size = app.audit_events().await.len();
    let again = crate::transparency::report(&app).await;
    assert_eq!(again["tree_size"], report["tree_size"], "a view folded or signed");
    assert_eq!(again["generated_at"], report["generated_at"]);
    assert_eq!(app.audit_events().await.len(), size + 1, "only the auditor's listing was recorded");
    app.refresh_transparency().await;
    let refreshed = crate::transparency::report(&app).await;
    assert!(refreshed["tree_size"].as_u64() > report["tree_size"].as_u64());
    assert_eq!(refreshed["months"], report["months"], "a closed month never changes");
}

/// The attack the distinct count and the closed months stop: one customer toggles a
/// restriction until its cell would pass the threshold, then watches for one other customer's
/// change appearing as +1. Counted by events and published live, the cell read 6 right after
/// the victim's change.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_customer_toggling_a_restriction_cannot_single_out_another() {
    let app = spawn_quiet_app().await;
    set_clock(&app, "2031-05-10T12:00:00Z");
    let restrict = |id: String, on: bool| {
        let app = &app;
        async move {
            let token = TestApp::customer_token(&id);
            let body = json!({"restricted": on});
            let res = app.call(Method::PUT, "/v1/me/restriction", Some(&token), None, Some(&body)).await;
            assert_eq!(res.status, StatusCode::OK, "{}", res.body);
        }
    };
    let attacker = app.create_customer(json!({"name": "Mallory"})).await;
    for i in 0..10 {
        restrict(attacker.clone(), i % 2 == 0).await;
    }
    app.refresh_transparency().await;
    let before = report(&app).await;
    let victim = app.create_customer(json!({"name": "Victim"})).await;
    restrict(victim, true).await;
    app.refresh_transparency().await;
    let after = report(&app).await;
    assert_eq!(after["months"], before["months"], "the live month shows nothing: {after}");
    assert_eq!(after["months"], json!([]));

    // Once May is over it is published, with the attacker counted once.
    for name in ["A", "B"] {
        let id = app.create_customer(json!({"name": name})).await;
        restrict(id, true).await;
    }
    close_month(&app, "2031-06-01T00:00:00Z").await;
    app.refresh_transparency().await;
    let closed = report(&app).await;
    let m = &closed["months"][0];
    assert_eq!(m["month"], "2031-05");
    let restricted = cell(&m["restrictions"], &[("change", "restricted")]);
    assert_eq!(restricted, "fewer than 5", "four customers (eight events): {closed}");
    assert_eq!(cell(&m["restrictions"], &[("change", "lifted")]), "fewer than 5");

    // The offline recount agrees with the distinct rule.
    recount_agrees(&app, &closed).await;
}

/// `custodia audit report` over the export in `dir` (`events.ndjson`, `checkpoint.txt`,
/// `key.txt`), checking the saved report `report` in `dir` if given, else listing the grid of
/// the shipped policies.
async fn audit_report(dir: &std::path::Path, report: Option<&str>) -> (bool, String, String) {
    let file = |n: &str| dir.join(n).to_str().unwrap().to_owned();
    let mut a: Vec<String> = ["audit", "report", "--events"].map(str::to_owned).to_vec();
    a.extend([
        file("events.ndjson"),
        "--checkpoint".into(),
        file("checkpoint.txt"),
        "--key".into(),
        file("key.txt"),
    ]);
    match report {
        Some(r) => a.extend(["--report".into(), file(r)]),
        None => a.extend(["--policies".into(), concat!(env!("CARGO_MANIFEST_DIR"), "/policies").into()]),
    }
    custodia(&a.iter().map(String::as_str).collect::<Vec<_>>()).await
}

/// The public routes share a per-address budget (429 with a JSON error when spent); routes
/// with a token are not part of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn public_routes_are_limited_per_address() {
    let app = spawn_app_with(|s| {
        s.public_rate_limit_per_second = 1;
        s.public_rate_limit_burst = 3;
        s.transparency_refresh_secs = 3600;
    })
    .await;
    app.refresh_transparency().await;
    for path in ["/v1/transparency", "/portal", "/transparency/transparency.js"] {
        let res = app.call(Method::GET, path, None, None, None).await;
        assert_eq!(res.status, StatusCode::OK, "{path}");
    }
    for path in ["/v1/transparency", "/transparency", "/portal/portal.js", "/portal/nope.js"] {
        let res = app.call(Method::GET, path, None, None, None).await;
        assert_eq!(res.status, StatusCode::TOO_MANY_REQUESTS, "{path}");
        assert_eq!(res.body["error"], "rate_limited", "{path}: {}", res.body);
        assert!(res.headers.contains_key("retry-after"), "{path}");
    }
    // Token routes and operations routes are not part of the public budget.
    app.create_customer(json!({"name": "Still served"})).await;
    let res = app.call(Method::GET, "/healthz", None, None, None).await;
    assert_eq!(res.status, StatusCode::OK);
}

/// Nobody asks for a refresh here: the background task prepares the report at start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_background_task_prepares_the_report_at_start() {
    let app = spawn_app().await;
    let mut last = None;
    for _ in 0..100 {
        let res = app.call(Method::GET, "/v1/transparency", None, None, None).await;
        if res.status == StatusCode::OK {
            assert_eq!(res.body["format_version"], 2);
            return;
        }
        assert_eq!(res.status, StatusCode::SERVICE_UNAVAILABLE, "{}", res.body);
        assert_eq!(res.body["error"], "not_ready");
        last = Some(res.body);
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("no report after 10 s: {last:?}");
}

/// A fold over more events than one page of the keeper's reads (256, `vault::transparency`)
/// counts every event once: pages meet without a gap or an overlap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fold_over_several_pages_counts_each_event_once() {
    let app = spawn_quiet_app().await;
    set_clock(&app, "2031-03-10T12:00:00Z");
    const CUSTOMERS: u64 = 130;
    for i in 0..CUSTOMERS {
        let id = app.create_customer(json!({"name": format!("Customer {i}")})).await;
        for _ in 0..2 {
            assert_eq!(
                disclose(&app, &id, "acme-shipping", "order_fulfillment", &["name"]).await,
                StatusCode::OK
            );
        }
        // Half the customers are folded by a step of their own, so later steps start mid-page.
        if i == CUSTOMERS / 2 {
            app.refresh_transparency().await;
        }
    }
    close_month(&app, "2031-04-01T00:00:01Z").await;
    app.refresh_transparency().await;
    let report = report(&app).await;
    let m = &report["months"][0];
    assert_eq!(m["month"], "2031-03", "{report}");
    assert_eq!(
        cell(
            &m["disclosures"],
            &[("recipient", "acme-shipping"), ("purpose", "order_fulfillment"), ("outcome", "allowed")]
        ),
        CUSTOMERS,
        "{CUSTOMERS} customers, two disclosures each, over {} events",
        report["tree_size"]
    );
    assert!(report["tree_size"].as_u64().unwrap() > 3 * CUSTOMERS, "{report}");
    recount_agrees(&app, &report).await;
}

/// The persisted fold of a stopped server, and a way to replace it (as a store restored to an
/// earlier point, or a test of where the counts come from, would).
async fn with_persisted_fold(app: &TestApp, edit: impl FnOnce(&mut custodia::audit::counters::Closed)) {
    let settings = custodia::store::StorageSettings::Sled {
        dir: app.data_dir.path().join("store"),
        cache_bytes: 8 << 20,
    };
    let store = custodia::store::open(&settings, std::sync::Arc::new(custodia::audit::tree::Tree)).unwrap();
    let bytes = store.meta(custodia::vault::COUNTERS_META).await.unwrap().expect("the fold is persisted");
    let mut closed: custodia::audit::counters::Closed = serde_json::from_slice(&bytes).unwrap();
    edit(&mut closed);
    store.put_meta(custodia::vault::COUNTERS_META, serde_json::to_vec(&closed).unwrap()).await.unwrap();
    store.close().await.unwrap();
}

/// Creates and erases `n` customers (an erasure per customer).
async fn erase_customers(app: &TestApp, n: usize) {
    for i in 0..n {
        let id = app.create_customer(json!({"name": format!("Gone {i}")})).await;
        let path = format!("/v1/customers/{id}");
        let res = app.call(Method::DELETE, &path, Some(&app.merchant()), None, None).await;
        assert_eq!(res.status, StatusCode::OK);
    }
}

/// A restart resumes from the persisted closed months (a month only the persisted fold holds
/// is still reported) and re-folds the open month from the log (only the closed months and the
/// seq the open month began at are persisted); a fold longer than the log is recounted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_resumes_from_the_persisted_fold_and_a_fold_ahead_of_the_log_is_recounted() {
    if crate::helpers::sled_only("edits the persisted fold in the sled tree") {
        return;
    }
    let mut app = spawn_quiet_app().await;
    closed_scenario(&app).await;
    // Three erasures in the open month before the restart, two after.
    erase_customers(&app, 3).await;
    app.refresh_transparency().await;
    let before = report(&app).await;
    let events = app.audit_events().await;
    let april = events.iter().position(|e| e["time"].as_str().unwrap().starts_with("2031-04")).unwrap();
    app.shutdown().await;
    let size = before["tree_size"].as_u64().unwrap();
    with_persisted_fold(&app, |c| {
        assert_eq!(c.size, april as u64, "persisted up to where the open month began, not {size}");
        assert_eq!(c.months.keys().collect::<Vec<_>>(), ["2031-03"]);
        c.months.entry("1999-01".into()).or_default().erasures = 7;
    })
    .await;
    let mut app = app.restart().await;
    app.refresh_transparency().await;
    let after = report(&app).await;
    let months: Vec<&str> =
        after["months"].as_array().unwrap().iter().map(|m| m["month"].as_str().unwrap()).collect();
    assert_eq!(months, ["2031-03", "1999-01"], "resumed from the persisted fold");
    assert_eq!(after["months"][0], before["months"][0]);
    assert_eq!(after["in_progress"], "2031-04", "the open month re-folded from the log");
    erase_customers(&app, 2).await;
    close_month(&app, "2031-05-01T00:00:00Z").await;
    app.refresh_transparency().await;
    let may = report(&app).await;
    assert_eq!(may["months"][0]["month"], "2031-04");
    assert_eq!(may["months"][0]["erasures"], 5, "erasures from before the restart were re-folded: {may}");

    app.shutdown().await;
    with_persisted_fold(&app, |c| c.size = 1 << 40).await;
    let app = app.restart().await;
    app.refresh_transparency().await;
    let recounted = report(&app).await;
    assert_eq!(recounted["months"][1], before["months"][0], "recounted from the log");
    assert_eq!(recounted["months"].as_array().unwrap().len(), 2, "1999-01 is gone: {recounted}");
}

/// A clock stepped forward for a moment: an event stamped years ahead closes nothing (the
/// month stays open and unpublished until the calendar really moves on), the report lists it,
/// and the offline recount agrees. Before, it closed March early and counted everything after
/// it in 2033.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_stamped_far_ahead_of_the_clock_closes_no_month() {
    let app = spawn_quiet_app().await;
    set_clock(&app, "2031-03-10T12:00:00Z");
    app.create_customer(json!({"name": "March"})).await;
    app.refresh_transparency().await;
    set_clock(&app, "2033-01-01T00:00:00Z");
    app.create_customer(json!({"name": "Stepped"})).await;
    set_clock(&app, "2031-03-11T12:00:00Z");
    erase_customers(&app, 1).await;
    let events = app.audit_events().await;
    let stepped = events.iter().position(|e| e["time"].as_str().unwrap().starts_with("2033")).unwrap();
    app.refresh_transparency().await;
    let held = report(&app).await;
    assert_eq!(held["in_progress"], "2031-03", "{held}");
    assert_eq!(held["months"], json!([]));
    assert_eq!(held["held_back"], json!([stepped]), "{held}");

    close_month(&app, "2031-04-01T00:00:00Z").await;
    app.refresh_transparency().await;
    let closed = report(&app).await;
    assert_eq!(closed["in_progress"], "2031-04");
    let months: Vec<&str> =
        closed["months"].as_array().unwrap().iter().map(|m| m["month"].as_str().unwrap()).collect();
    assert_eq!(months, ["2031-03"]);

    let dir = recount_agrees(&app, &closed).await;
    // A report listing an event that closes nothing is refused.
    let mut lying = closed.clone();
    lying["held_back"] = json!([0]);
    std::fs::write(dir.path().join("lying.json"), lying.to_string()).unwrap();
    let (ok, _, stderr) = audit_report(dir.path(), Some("lying.json")).await;
    assert!(!ok);
    assert!(stderr.contains("held back"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_report_recomputes_the_counts_offline_and_refuses_altered_events_or_counts() {
    let app = spawn_quiet_app().await;
    closed_scenario(&app).await;
    let report = report(&app).await;
    assert_eq!(report["months"].as_array().unwrap().len(), 1);
    // More events after the report: the offline check covers exactly the report's tree size.
    app.create_customer(json!({"name": "Later"})).await;
    let dir = tempfile::tempdir().unwrap();
    let (ok, _, stderr) = export(&app, dir.path()).await;
    assert!(ok, "{stderr}");
    let save = |name: &str, report: &Value| {
        std::fs::write(dir.path().join(name), report.to_string()).unwrap();
    };
    save("report.json", &report);

    let (ok, stdout, stderr) = audit_report(dir.path(), Some("report.json")).await;
    assert!(ok, "{stderr}");
    assert!(stdout.starts_with("ok: the report's counts agree"), "{stdout}");

    // Without a report: the counts of the whole export, printed as JSON, the same rule.
    let (ok, stdout, stderr) = audit_report(dir.path(), None).await;
    assert!(ok, "{stderr}");
    let printed: Value = serde_json::from_str(&stdout).unwrap();
    assert!(printed["tree_size"].as_u64() > report["tree_size"].as_u64());
    assert_eq!(printed["months"], report["months"]);
    assert_eq!(printed["in_progress"], "2031-04");

    // An altered count in the report.
    let mut forged = report.clone();
    let cells = forged["months"][0]["disclosures"].as_array_mut().unwrap();
    let acme = cells.iter_mut().find(|c| c["recipient"] == "acme-shipping").unwrap();
    acme["count"] = json!(12);
    save("forged.json", &forged);
    let (ok, _, stderr) = audit_report(dir.path(), Some("forged.json")).await;
    assert!(!ok);
    assert!(stderr.contains("counts differ"), "{stderr}");

    // The true month, then a forged second copy of it: a reader of the report would see both.
    let mut doubled = report.clone();
    let mut copy = doubled["months"][0].clone();
    copy["erasures"] = json!(500);
    doubled["months"].as_array_mut().unwrap().push(copy);
    save("doubled.json", &doubled);
    let (ok, stdout, stderr) = audit_report(dir.path(), Some("doubled.json")).await;
    assert!(!ok, "a month given twice passed: {stdout}");
    assert!(stderr.contains("repeated"), "{stderr}");

    // The month in progress published as if closed.
    let mut early = report.clone();
    let mut april = early["months"][0].clone();
    april["month"] = json!("2031-04");
    early["months"].as_array_mut().unwrap().insert(0, april);
    save("early.json", &early);
    let (ok, _, stderr) = audit_report(dir.path(), Some("early.json")).await;
    assert!(!ok);
    assert!(stderr.contains("not a closed month"), "{stderr}");
    let mut moved = report.clone();
    moved["in_progress"] = json!("2031-05");
    save("moved.json", &moved);
    let (ok, _, stderr) = audit_report(dir.path(), Some("moved.json")).await;
    assert!(!ok);
    assert!(stderr.contains("in progress"), "{stderr}");

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
    let (ok, _, stderr) = audit_report(dir.path(), Some("report.json")).await;
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

/// Exports the log of `app` beside `report` (as `report.json`) and checks that `custodia audit
/// report` recomputes the same numbers; answers the directory for further checks.
async fn recount_agrees(app: &TestApp, report: &Value) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("report.json"), report.to_string()).unwrap();
    let (ok, _, stderr) = export(app, dir.path()).await;
    assert!(ok, "{stderr}");
    let (ok, stdout, stderr) = audit_report(dir.path(), Some("report.json")).await;
    assert!(ok, "{stdout}{stderr}");
    dir
}
