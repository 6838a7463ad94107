//! `GET /v1/audit/events` pages through the log reading only what a page needs (issue 12):
//! paging one event at a time sees every event once and in order, rare matches are followed
//! across many store reads, a scan stops after 10 000 events with a cursor to continue, the
//! customer filter (served from the per-customer index) combines with the other filters, and
//! `limit` keeps its bounds.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::helpers::{TestApp, spawn_app};

/// A shared phone number: a lookup by it appends one event per customer it finds (DESIGN §6),
/// which makes long logs cheap to build.
const PHONE: &str = "+49 151 0000 0000";

async fn get(app: &TestApp, path: &str) -> (Vec<Value>, Option<u64>) {
    let res = app.call(Method::GET, path, Some(&app.auditor()), None, None).await;
    assert_eq!(res.status, StatusCode::OK, "{path}: {}", res.body);
    let events = res.body["events"].as_array().expect("events").clone();
    let next = &res.body["next_after"];
    assert!(next.is_null() || next.is_u64(), "{path}: next_after {next}");
    (events, next.as_u64())
}

fn seqs(events: &[Value]) -> Vec<u64> {
    events.iter().map(|e| e["seq"].as_u64().expect("seq")).collect()
}

/// Every page of `path` (which must not end the listing by itself: the caller's filter must
/// exclude this call's own `audit.read` events), `after` chained from `next_after`.
async fn all_pages(app: &TestApp, path: &str) -> Vec<(Vec<Value>, Option<u64>)> {
    let mut pages = Vec::new();
    let mut after: Option<u64> = None;
    loop {
        let page_path = match after {
            Some(a) => format!("{path}&after={a}"),
            None => path.to_owned(),
        };
        let page = get(app, &page_path).await;
        after = page.1;
        pages.push(page);
        assert!(pages.len() < 10_000, "{path}: the listing does not end");
        if after.is_none() {
            return pages;
        }
    }
}

/// Creates `n` customers sharing [`PHONE`]; returns their ids.
async fn phone_customers(app: &TestApp, n: usize) -> Vec<String> {
    let mut ids = Vec::new();
    for i in 0..n {
        ids.push(app.create_customer(json!({ "name": format!("Customer {i}"), "phone": PHONE })).await);
    }
    ids
}

/// Looks [`PHONE`] up `times` times, appending `found` lookup events each time.
async fn lookups(app: &TestApp, found: usize, times: usize) {
    let path = format!("/v1/customers?phone={}", PHONE.replace(' ', "%20").replace('+', "%2B"));
    for _ in 0..times {
        let res = app.call(Method::GET, &path, Some(&app.merchant()), Some("order_fulfillment"), None).await;
        assert_eq!(res.status, StatusCode::OK, "{}", res.body);
        assert_eq!(res.body["customers"].as_array().unwrap().len(), found, "{}", res.body);
    }
}

async fn tree_size(app: &TestApp) -> u64 {
    let res = app.call(Method::GET, "/v1/audit/checkpoint", Some(&app.auditor()), None, None).await;
    assert_eq!(res.status, StatusCode::OK, "{}", res.body);
    res.body["tree_size"].as_u64().unwrap()
}

#[tokio::test]
async fn paging_one_event_at_a_time_sees_every_event_once_and_in_order() {
    let app = spawn_app().await;
    let ids = phone_customers(&app, 20).await;
    lookups(&app, 20, 15).await; // 300 lookup events
    let size = tree_size(&app).await; // covers its own audit.read event
    assert!(size > 300, "{size}");

    // Unfiltered: every page is one event, the next seq, and names it as the cursor. Each call
    // appends its own audit.read event, so the listing is cut once it passed the first `size`.
    let mut after: Option<u64> = None;
    for expected in 0..size {
        let path = match after {
            Some(a) => format!("/v1/audit/events?limit=1&after={a}"),
            None => "/v1/audit/events?limit=1".to_owned(),
        };
        let (events, next) = get(&app, &path).await;
        assert_eq!(seqs(&events), vec![expected], "{path}");
        assert_eq!(next, Some(expected), "{path}: a full page names its last event");
        after = next;
    }

    // The page after the newest event is empty and ends the listing.
    let newest = tree_size(&app).await - 1;
    let (events, next) = get(&app, &format!("/v1/audit/events?limit=10&after={newest}")).await;
    assert_eq!((events.len(), next), (0, None));

    // Filtered one at a time (through the chunked scan): every create once, in order, then an
    // empty last page with `next_after` null.
    let pages = all_pages(&app, "/v1/audit/events?action=customer.create&limit=1").await;
    assert_eq!(pages.len(), ids.len() + 1, "one page per create, then the end");
    let created: Vec<&str> =
        pages.iter().flat_map(|(e, _)| e.iter()).map(|e| e["customer_id"].as_str().unwrap()).collect();
    assert_eq!(created, ids.iter().map(String::as_str).collect::<Vec<_>>());
    let mut previous = None;
    for (events, next) in &pages[..ids.len()] {
        assert_eq!(seqs(events).len(), 1);
        assert_eq!(*next, Some(seqs(events)[0]));
        assert!(previous < *next, "strictly increasing");
        previous = *next;
    }
    assert_eq!(pages[ids.len()], (vec![], None));
}

#[tokio::test]
async fn a_filter_that_matches_rarely_is_followed_across_many_store_reads() {
    let app = spawn_app().await;
    let fillers = phone_customers(&app, 30).await;
    // Three creates, each followed by 300 lookup events (more than one store read of 256
    // events between two matches).
    let mut rare = Vec::new();
    for i in 0..3 {
        rare.push(app.create_customer(json!({ "name": format!("Rare {i}") })).await);
        lookups(&app, 30, 10).await;
    }

    let (events, next) = get(&app, "/v1/audit/events?action=customer.create&limit=1000").await;
    assert_eq!(next, None, "the whole log is shorter than the scan bound");
    let ids: Vec<&str> = events.iter().map(|e| e["customer_id"].as_str().unwrap()).collect();
    let expected: Vec<&str> = fillers.iter().chain(&rare).map(String::as_str).collect();
    assert_eq!(ids, expected, "every create once, in order");
    let all_creates = seqs(&events);
    let rare_seqs = &all_creates[30..];
    assert!(rare_seqs[1] - rare_seqs[0] > 300 && rare_seqs[2] - rare_seqs[1] > 300, "{rare_seqs:?}");

    // limit 2: each full page names its last event; the last, odd one ends the listing.
    let pages = all_pages(&app, "/v1/audit/events?action=customer.create&limit=2").await;
    let paged: Vec<u64> = pages.iter().flat_map(|(e, _)| seqs(e)).collect();
    assert_eq!(paged, all_creates, "paging with limit 2 finds the same creates as one page");
    for (events, next) in &pages[..pages.len() - 1] {
        assert_eq!((events.len(), *next), (2, Some(seqs(events)[1])));
    }
    assert_eq!(seqs(&pages[pages.len() - 1].0), vec![rare_seqs[2]]);

    // From one rare create, the next lies more than 300 events ahead.
    let path = format!("/v1/audit/events?action=customer.create&limit=1&after={}", rare_seqs[0]);
    let (events, next) = get(&app, &path).await;
    assert_eq!((seqs(&events), next), (vec![rare_seqs[1]], Some(rare_seqs[1])));
    // After the last one: more than one store read of non-matching events, then the end.
    let path = format!("/v1/audit/events?action=customer.create&limit=1&after={}", rare_seqs[2]);
    assert_eq!(get(&app, &path).await, (vec![], None));
}

#[tokio::test]
async fn a_scan_stops_after_ten_thousand_events_with_a_cursor_to_continue() {
    let app = spawn_app().await;
    let ids = phone_customers(&app, 100).await;
    lookups(&app, 100, 101).await; // 10 100 lookup events
    let needle = app.create_customer(json!({ "name": "Needle" })).await;
    let size = tree_size(&app).await;
    assert!(size > 10_200, "{size}");

    // No erase has happened: the scan finds nothing in the first 10 000 events and says where
    // to continue, without reading the whole log.
    let (events, next) = get(&app, "/v1/audit/events?action=customer.erase&limit=10").await;
    assert_eq!((events.len(), next), (0, Some(9_999)), "the cursor is the last event scanned");
    let (events, next) = get(&app, "/v1/audit/events?action=customer.erase&limit=10&after=9999").await;
    assert_eq!((events.len(), next), (0, None), "the rest of the log is shorter than the bound");

    // A match beyond the bound is reached by following the cursor.
    let pages = all_pages(&app, "/v1/audit/events?action=customer.create&limit=1000").await;
    let creates: Vec<String> = pages
        .iter()
        .flat_map(|(e, _)| e.iter())
        .map(|e| e["customer_id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(creates.len(), ids.len() + 1);
    assert_eq!(creates.last(), Some(&needle));
    assert!(pages.len() >= 2, "the last create lies beyond the first 10 000 events");
}

#[tokio::test]
async fn the_customer_filter_combines_with_action_time_and_cursor() {
    let app = spawn_app().await;
    let target = app.create_customer(json!({ "name": "Target" })).await;
    let other = app.create_customer(json!({ "name": "Other" })).await;
    for _ in 0..6 {
        assert_eq!(app.read_customer(&target, "order_fulfillment").await.status, StatusCode::OK);
        assert_eq!(app.read_customer(&other, "order_fulfillment").await.status, StatusCode::OK);
    }
    let log = app.audit_events().await;
    let oracle = |keep: &dyn Fn(&Value) -> bool| -> Vec<u64> {
        log.iter()
            .filter(|e| e["customer_id"] == target.as_str() && keep(e))
            .map(|e| e["seq"].as_u64().unwrap())
            .collect()
    };
    let reads = oracle(&|e| e["action"] == "customer.read");
    assert_eq!(reads.len(), 6);
    let time_of = |seq: u64| log[seq as usize]["time"].as_str().unwrap().to_owned();
    let since = time_of(reads[2]);
    let until = time_of(reads[5]);
    let enc = |t: &str| t.replace(':', "%3A");

    // action + customer, paged two at a time.
    let pages =
        all_pages(&app, &format!("/v1/audit/events?customer_id={target}&action=customer.read&limit=2")).await;
    assert_eq!(pages.iter().flat_map(|(e, _)| seqs(e)).collect::<Vec<_>>(), reads);

    // since / until (RFC 3339 with milliseconds: string order is time order) + customer + action.
    let in_window = oracle(&|e| {
        let t = e["time"].as_str().unwrap();
        e["action"] == "customer.read" && t >= since.as_str() && t < until.as_str()
    });
    assert!(!in_window.is_empty());
    let path = format!(
        "/v1/audit/events?customer_id={target}&action=customer.read&since={}&until={}&limit=1000",
        enc(&since),
        enc(&until)
    );
    let (events, next) = get(&app, &path).await;
    assert_eq!((seqs(&events), next), (in_window, None));

    // after + customer, no other filter (read straight from the index): the events after the
    // second read, which are this customer's only.
    let path = format!("/v1/audit/events?customer_id={target}&after={}&limit=3", reads[1]);
    let (events, next) = get(&app, &path).await;
    let expected: Vec<u64> = oracle(&|e| e["seq"].as_u64().unwrap() > reads[1]).into_iter().take(3).collect();
    assert_eq!(seqs(&events), expected);
    assert_eq!(next, Some(expected[2]));
    assert!(events.iter().all(|e| e["customer_id"] == target.as_str()));
}

#[tokio::test]
async fn limit_must_be_one_to_a_thousand_and_an_unknown_action_matches_nothing() {
    let app = spawn_app().await;
    app.create_customer(json!({ "name": "Limits" })).await;
    for limit in ["0", "1001", "-1", "x", "", "18446744073709551616"] {
        let path = format!("/v1/audit/events?limit={limit}");
        let res = app.call(Method::GET, &path, Some(&app.auditor()), None, None).await;
        assert_eq!(res.status, StatusCode::BAD_REQUEST, "{path}: {}", res.body);
        assert_eq!(res.body["error"], "bad_request", "{path}");
    }
    for limit in ["1", "1000"] {
        let (events, _) = get(&app, &format!("/v1/audit/events?limit={limit}")).await;
        assert!(!events.is_empty() && events.len() <= limit.parse().unwrap());
    }
    let (events, next) = get(&app, "/v1/audit/events?action=customer.teleport&limit=10").await;
    assert_eq!((events.len(), next), (0, None));
    let refused = app
        .audit_events()
        .await
        .into_iter()
        .filter(|e| e["action"] == "audit.read" && e["outcome"] == "failed")
        .count();
    assert_eq!(refused, 6, "every refused listing is audited");
}
