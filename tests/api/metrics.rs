//! `/metrics`: Prometheus text with the request, disclosure, audit and group-commit series,
//! whose labels are route templates and codes, never an id or a value.
//!
//! The recorder is process-wide and the tests of this binary run concurrently, so counts are
//! checked as lower bounds and the tree-size gauge (set by whichever app appended last) only
//! for being present.

use std::collections::BTreeMap;

use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::helpers::spawn_app;

/// One sample: metric name, labels, value.
type Sample = (String, BTreeMap<String, String>, f64);

/// Parses Prometheus text exposition (comments skipped).
fn parse(text: &str) -> Vec<Sample> {
    let mut out = Vec::new();
    for line in text.lines().filter(|l| !l.is_empty() && !l.starts_with('#')) {
        let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("bad line {line}"));
        let value: f64 = value.parse().unwrap_or_else(|_| panic!("bad value in {line}"));
        let (name, labels) = match series.split_once('{') {
            None => (series.to_owned(), BTreeMap::new()),
            Some((name, rest)) => (name.to_owned(), labels(rest.strip_suffix('}').expect("closing brace"))),
        };
        out.push((name, labels, value));
    }
    out
}

/// Parses `a="x",b="y"` (values may contain escaped quotes).
fn labels(text: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut rest = text;
    while let Some((key, after)) = rest.split_once("=\"") {
        let mut value = String::new();
        let mut chars = after.char_indices();
        let mut end = after.len();
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => value.extend(chars.next().map(|(_, c)| c)),
                '"' => {
                    end = i + 1;
                    break;
                }
                c => value.push(c),
            }
        }
        out.insert(key.trim_start_matches(',').to_owned(), value);
        rest = &after[end..];
    }
    out
}

/// The sum of the samples of `name` whose labels include all of `with`.
fn total(samples: &[Sample], name: &str, with: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .filter(|(n, labels, _)| {
            n == name && with.iter().all(|(k, v)| labels.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|(_, _, v)| v)
        .sum()
}

#[tokio::test]
async fn metrics_are_served_as_prometheus_text_without_a_token() {
    let app = spawn_app().await;
    app.call(Method::GET, "/healthz", None, None, None).await;
    let res = app.call(Method::GET, "/metrics", None, None, None).await;
    assert_eq!(res.status, StatusCode::OK);
    assert!(res.headers["content-type"].to_str().unwrap().starts_with("text/plain; version=0.0.4"));
    let text = res.body.as_str().expect("text body");
    assert!(text.contains("# TYPE custodia_http_requests_total counter"), "{text}");
    assert!(text.contains("# TYPE custodia_http_request_duration_seconds histogram"), "{text}");
}

#[tokio::test]
async fn a_scenario_is_counted_under_route_templates_and_codes_without_any_value() {
    let app = spawn_app().await;
    let merchant = app.merchant();
    let (name, email, phone) = ("Zelda Quantrill", "zelda.quantrill@example.org", "+49 171 9876 5432");
    let id = app
        .create_customer(json!({ "name": name, "email": email, "phone": phone, "birth_date": "1977-03-14" }))
        .await;
    assert_eq!(app.read_customer(&id, "order_fulfillment").await.status, StatusCode::OK);
    let lookup = format!("/v1/customers?email={email}");
    let res = app.call(Method::GET, &lookup, Some(&merchant), Some("order_fulfillment"), None).await;
    assert_eq!(res.status, StatusCode::OK);
    let allowed = json!({ "customer_id": id, "recipient": "acme-shipping", "purpose": "order_fulfillment",
        "fields": ["name"] });
    let res = app.call(Method::POST, "/v1/disclosures", Some(&merchant), None, Some(&allowed)).await;
    assert_eq!(res.status, StatusCode::OK, "{}", res.body);
    let denied = json!({ "customer_id": id, "recipient": "letterbox-newsletter", "purpose": "marketing",
        "fields": ["email"] });
    let res = app.call(Method::POST, "/v1/disclosures", Some(&merchant), None, Some(&denied)).await;
    assert_eq!(res.status, StatusCode::FORBIDDEN);
    assert_eq!(res.body["denied"][0]["reason"], "consent_missing");
    // An unmatched path carrying an id and a query carrying a value; a refused token.
    let unmatched = format!("/v1/nowhere/{id}?email={email}");
    assert_eq!(app.call(Method::GET, &unmatched, None, None, None).await.status, StatusCode::NOT_FOUND);
    let res = app.call(Method::GET, "/v1/me", Some("not-a-token"), None, None).await;
    assert_eq!(res.status, StatusCode::UNAUTHORIZED);

    let text = app.call(Method::GET, "/metrics", None, None, None).await.body;
    let text = text.as_str().expect("text body");
    let samples = parse(text);

    let requests = "custodia_http_requests_total";
    let read = [("route", "/v1/customers/{id}"), ("method", "GET"), ("status", "200")];
    assert!(total(&samples, requests, &read) >= 1.0, "{text}");
    let created = [("route", "/v1/customers"), ("method", "POST"), ("status", "201")];
    assert!(total(&samples, requests, &created) >= 1.0);
    let forbidden = [("route", "/v1/disclosures"), ("method", "POST"), ("status", "403")];
    assert!(total(&samples, requests, &forbidden) >= 1.0);
    let unmatched_count = [("route", "unmatched"), ("method", "GET"), ("status", "404")];
    assert!(total(&samples, requests, &unmatched_count) >= 1.0);

    let latency = "custodia_http_request_duration_seconds";
    let route = [("route", "/v1/customers"), ("method", "POST")];
    let count = total(&samples, &format!("{latency}_count"), &route);
    assert!(count >= 1.0);
    let sum = total(&samples, &format!("{latency}_sum"), &route);
    assert!(sum > 0.0 && sum / count < 10.0, "mean latency {} s", sum / count);
    let inf = [("route", "/v1/customers"), ("method", "POST"), ("le", "+Inf")];
    assert_eq!(total(&samples, &format!("{latency}_bucket"), &inf), count);

    let disclosures = "custodia_disclosures_total";
    assert!(total(&samples, disclosures, &[("outcome", "allowed"), ("reason", "none")]) >= 1.0);
    assert!(total(&samples, disclosures, &[("outcome", "denied"), ("reason", "consent_missing")]) >= 1.0);

    let events = "custodia_audit_events_total";
    assert!(total(&samples, events, &[("action", "customer.create"), ("outcome", "allowed")]) >= 1.0);
    assert!(total(&samples, events, &[("action", "disclosure"), ("outcome", "denied")]) >= 1.0);
    assert!(total(&samples, events, &[("action", "auth.denied"), ("outcome", "denied")]) >= 1.0);
    let size = samples.iter().find(|(n, ..)| n == "custodia_audit_tree_size").expect("tree size gauge");
    assert!(size.2 >= 0.0 && size.2.fract() == 0.0, "{size:?}");

    if crate::helpers::on_postgres() {
        // PostgreSQL: the sequencer's batches and the wait from commit to seq.
        let batch = [("le", "+Inf")];
        assert!(total(&samples, "custodia_audit_integration_batch_size_bucket", &batch) >= 1.0, "{text}");
        assert!(total(&samples, "custodia_audit_integration_delay_seconds_count", &[]) >= 1.0, "{text}");
    } else {
        let batch = [("le", "4")];
        assert!(total(&samples, "custodia_group_commit_batch_size_bucket", &batch) >= 1.0, "{text}");
        let flush = [("le", "0.0025")];
        assert!(total(&samples, "custodia_group_commit_flush_seconds_bucket", &flush) >= 1.0, "{text}");
    }

    // Labels are templates and codes: every route label is a documented path, the template of
    // documented paths (the document gives each consent purpose its own path), or `unmatched`.
    let doc = app.call(Method::GET, "/openapi.json", None, None, None).await.body;
    let paths = doc["paths"].as_object().unwrap();
    let instance = |template: &str, path: &str| {
        let (t, p): (Vec<&str>, Vec<&str>) = (template.split('/').collect(), path.split('/').collect());
        t.len() == p.len() && t.iter().zip(&p).all(|(t, p)| t == p || t.starts_with('{'))
    };
    for (metric, labels, _) in &samples {
        if let Some(route) = labels.get("route") {
            let documented = paths.contains_key(route) || paths.keys().any(|p| instance(route, p));
            assert!(route == "unmatched" || documented, "{metric}: route label {route:?}");
        }
        if let Some(status) = labels.get("status") {
            assert!(status.len() == 3 && status.bytes().all(|b| b.is_ascii_digit()), "{status:?}");
        }
    }
    // No id or value anywhere in the scrape, in any spelling.
    let digits: String = phone.chars().filter(char::is_ascii_digit).collect();
    for needle in [
        id.as_str(),
        email,
        &email.to_uppercase(),
        name,
        "Quantrill",
        phone,
        &digits,
        "1977-03-14",
        "not-a-token",
    ] {
        assert!(!text.contains(needle), "the scrape contains {needle:?}");
    }
    assert!(!text.contains(&merchant), "the scrape contains the token");
    assert!(!text.contains('?'), "the scrape contains a query string");
}
