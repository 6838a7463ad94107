//! Input whose meaning is ambiguous or over a limit is refused, and refused early: duplicate
//! JSON members at any depth, repeated identity/purpose/framing headers, the bearer scheme in
//! any case, and body limits decided from the request head before any body byte is read.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::helpers::{TestApp, spawn_app, spawn_app_with};

fn jane() -> Value {
    json!({
        "name": "Jane Example",
        "email": "jane@example.com",
        "shipping_address": {"line1": "Hauptstr. 5", "city": "Berlin", "postal_code": "10115", "country": "DE"},
    })
}

/// Every audit event except the auditor's own reads (which the checking itself adds).
async fn events_besides_reads(app: &TestApp) -> Vec<Value> {
    app.audit_events().await.into_iter().filter(|e| e["action"] != "audit.read").collect()
}

/// Sends `body` verbatim as `application/json`.
async fn send_json(
    app: &TestApp,
    method: Method,
    path: &str,
    token: &str,
    body: &str,
) -> crate::helpers::Response {
    app.call_raw(method, path, token, Some("application/json"), body.as_bytes().to_vec()).await
}

/// The customer as the merchant sees it for order fulfilment (fields only).
async fn fields_of(app: &TestApp, id: &str) -> Value {
    let res = app.read_customer(id, "order_fulfillment").await;
    assert_eq!(res.status, StatusCode::OK, "{}", res.body);
    res.body["fields"].clone()
}

#[tokio::test]
async fn a_payment_method_with_two_card_members_is_refused_whichever_holds_the_cvv() {
    let app = spawn_app().await;
    let id = app.create_customer(jane()).await;
    let path = format!("/v1/customers/{id}/payment-methods");
    let with_cvv = r#"{"number":"4111 1111 1111 1111","exp_month":12,"exp_year":2099,"cvv":"123"}"#;
    let without = r#"{"number":"4111 1111 1111 1111","exp_month":12,"exp_year":2099}"#;
    let before = events_besides_reads(&app).await;
    for body in [
        format!(r#"{{"card":{with_cvv},"card":{without}}}"#),
        format!(r#"{{"card":{without},"card":{with_cvv}}}"#),
    ] {
        let res = send_json(&app, Method::POST, &path, &app.merchant(), &body).await;
        assert_eq!(res.status, StatusCode::BAD_REQUEST, "{body}: {}", res.body);
        assert_eq!(res.body["error"], "duplicate_key");
        assert_eq!(res.body["message"], "the body names member `card` twice in one object");
    }
    assert_eq!(events_besides_reads(&app).await, before, "nothing was recorded");
    let listed = app.call(Method::GET, &path, Some(&app.merchant()), Some("payment_processing"), None).await;
    assert_eq!(listed.status, StatusCode::OK, "{}", listed.body);
    assert_eq!(listed.body["payment_methods"], json!([]), "nothing was stored");
    assert!(!crate::helpers::contains(&app.data_dir_bytes(), b"4111111111111111"));
}

#[tokio::test]
async fn a_member_named_twice_is_refused_at_every_depth_of_every_json_body() {
    let app = spawn_app().await;
    let merchant = app.merchant();
    let id = app.create_customer(jane()).await;
    let customer = app.token("customer", &id);
    let address = r#"{"line1":"Hauptstr. 5","city":"Berlin","postal_code":"10115","country":"DE"}"#;
    let cases: Vec<(Method, String, &str, String, &str)> = vec![
        // (method, path, token, body, where the duplicate is)
        (Method::POST, "/v1/customers".into(), &merchant, r#"{"fields":{"name":"A","name":"B"}}"#.into(), "fields"),
        (
            Method::POST,
            "/v1/customers".into(),
            &merchant,
            r#"{"fields":{"name":"A","n\u0061me":"B"}}"#.into(),
            "fields (escaped spelling)",
        ),
        (
            Method::POST,
            "/v1/customers".into(),
            &merchant,
            r#"{"fields":{"shipping_address":{"line1":"x","city":"Berlin","city":"Hamburg","postal_code":"1","country":"DE"}}}"#.into(),
            "address",
        ),
        (Method::POST, "/v1/customers".into(), &merchant, r#"{"fields":{"name":"A"},"fields":{"name":"B"}}"#.into(), "top"),
        (
            Method::POST,
            "/v1/customers".into(),
            &merchant,
            r#"{"fields":{"name":"A"},"consents":[{"purpose":"marketing","granted":true,"granted":false,"source":"s","notice":"marketing-v2"}]}"#.into(),
            "consent inside a create",
        ),
        (
            Method::PATCH,
            format!("/v1/customers/{id}"),
            &merchant,
            r#"{"fields":{"name":"Mallory","name":"Jane Example"}}"#.into(),
            "merchant patch",
        ),
        (
            Method::PATCH,
            format!("/v1/customers/{id}"),
            &merchant,
            format!(r#"{{"fields":{{"shipping_address":{{"city":"x"}},"shipping_address":{address}}}}}"#),
            "merchant patch, whole address twice",
        ),
        (
            Method::PUT,
            format!("/v1/customers/{id}/consents/marketing"),
            &merchant,
            r#"{"granted":false,"source":"form","granted":true,"notice":"marketing-v2"}"#.into(),
            "merchant consent",
        ),
        (
            Method::POST,
            "/v1/disclosures".into(),
            &merchant,
            format!(
                r#"{{"customer_id":"{id}","recipient":"acme-shipping","purpose":"order_fulfillment","purpose":"marketing","fields":["name"]}}"#
            ),
            "disclosure",
        ),
        (Method::PATCH, "/v1/me".into(), &customer, r#"{"fields":{"name":"A","name":"B"}}"#.into(), "own patch"),
        (
            Method::PUT,
            "/v1/me/consents/marketing".into(),
            &customer,
            r#"{"granted":true,"granted":false,"source":"account-page","notice":"marketing-v2"}"#.into(),
            "own consent",
        ),
        (
            Method::PUT,
            "/v1/me/objections/fraud_prevention".into(),
            &customer,
            r#"{"objected":true,"objected":false}"#.into(),
            "objection",
        ),
        (
            Method::PUT,
            "/v1/me/restriction".into(),
            &customer,
            r#"{"restricted":false,"restricted":true}"#.into(),
            "restriction",
        ),
    ];
    let before = events_besides_reads(&app).await;
    for (method, path, token, body, place) in &cases {
        let res = send_json(&app, method.clone(), path, token, body).await;
        assert_eq!(res.status, StatusCode::BAD_REQUEST, "{place}: {}", res.body);
        assert_eq!(res.body["error"], "duplicate_key", "{place}");
        let message = res.body["message"].as_str().unwrap();
        for value in ["\"A\"", "Mallory", "Hamburg", "Berlin", "marketing", "order_fulfillment"] {
            assert!(!message.contains(value), "{place}: a value in {message:?}");
        }
    }
    assert_eq!(events_besides_reads(&app).await, before, "no refused body was carried out or recorded");
    assert_eq!(fields_of(&app, &id).await, jane(), "the customer is unchanged");
    let consents = app.call(Method::GET, "/v1/me/consents", Some(&customer), None, None).await;
    assert_eq!(consents.body["consents"], json!([]), "{}", consents.body);
}

#[tokio::test]
async fn a_duplicate_is_named_with_its_place_but_a_key_that_is_not_a_name_is_not_echoed() {
    let app = spawn_app().await;
    let merchant = app.merchant();
    let res = send_json(
        &app,
        Method::POST,
        "/v1/customers",
        &merchant,
        r#"{"fields":{"shipping_address":{"line1":"x","city":"Berlin","city":"Hamburg"}}}"#,
    )
    .await;
    assert_eq!(res.body["error"], "duplicate_key");
    assert_eq!(
        res.body["message"],
        "the body names member `city` twice in one object in `fields.shipping_address`"
    );

    let res = send_json(
        &app,
        Method::POST,
        "/v1/customers",
        &merchant,
        r#"{"fields":{"jane@example.com":1,"jane@example.com":2}}"#,
    )
    .await;
    assert_eq!(res.body["error"], "duplicate_key");
    assert_eq!(res.body["message"], "the body names member twice in one object in `fields`");

    let res = send_json(
        &app,
        Method::POST,
        "/v1/customers",
        &merchant,
        r#"{"fields":{"Jane Example":{"a":1,"a":2}}}"#,
    )
    .await;
    assert_eq!(res.body["message"], "the body names member `a` twice in one object in `fields.?`");

    let res = send_json(&app, Method::POST, "/v1/customers", &merchant, r#"[{"x":1},{"y":1,"y":2}]"#).await;
    assert_eq!(res.body["message"], "the body names member `y` twice in one object in `[1]`");
}

#[tokio::test]
async fn unknown_members_are_named_only_when_they_look_like_names() {
    let app = spawn_app().await;
    let merchant = app.merchant();
    let res = send_json(&app, Method::POST, "/v1/customers", &merchant, r#"{"fieldz":{}}"#).await;
    assert_eq!(res.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(res.body["message"], "unknown field `fieldz` at `fieldz`");

    let res =
        send_json(&app, Method::POST, "/v1/customers", &merchant, r#"{"Jane@Example.com`, expected":{}}"#)
            .await;
    assert_eq!(res.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(res.body["error"], "invalid_body");
    assert_eq!(res.body["message"], "unknown field at `?`");
}

#[tokio::test]
async fn nesting_deeper_than_sixteen_levels_is_refused_before_the_body_is_interpreted() {
    let app = spawn_app().await;
    let merchant = app.merchant();
    let nested =
        |arrays: usize| format!(r#"{{"fields":{{"name":{}1{}}}}}"#, "[".repeat(arrays), "]".repeat(arrays));
    // Two objects plus 14 arrays: 16 levels, within the bound, so the name's type is what fails.
    let res = send_json(&app, Method::POST, "/v1/customers", &merchant, &nested(14)).await;
    assert_eq!(res.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", res.body);
    let res = send_json(&app, Method::POST, "/v1/customers", &merchant, &nested(15)).await;
    assert_eq!(res.status, StatusCode::BAD_REQUEST, "{}", res.body);
    assert_eq!(res.body["error"], "nesting_too_deep");
    // Far past serde_json's own limit of 128: still our answer, not a parser error.
    let res = send_json(&app, Method::POST, "/v1/customers", &merchant, &nested(1000)).await;
    assert_eq!(res.body["error"], "nesting_too_deep");
}

#[tokio::test]
async fn two_authorization_headers_are_refused_and_audited_whether_equal_or_not() {
    let app = spawn_app().await;
    let good = app.merchant();
    let other = app.token("merchant", "another-backend");
    let body = json!({"fields": {"email": "probe@example.com"}});
    for (first, second) in [(&good, &good), (&good, &other), (&"garbage".to_owned(), &good)] {
        let res = app
            .client
            .post(format!("{}/v1/customers", app.base))
            .header("Authorization", format!("Bearer {first}"))
            .header("Authorization", format!("Bearer {second}"))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::BAD_REQUEST);
        let answer: Value = res.json().await.unwrap();
        assert_eq!(answer["error"], "duplicate_header");
        assert_eq!(answer["message"], "the Authorization header is given more than once");
    }
    let events = app.audit_events().await;
    assert!(!events.iter().any(|e| e["action"] == "customer.create"), "nothing was created");
    let denied: Vec<&Value> = events.iter().filter(|e| e["action"] == "auth.denied").collect();
    assert_eq!(denied.len(), 3, "each probe is recorded");
    for event in denied {
        assert_eq!(event["reason"], json!(["token_invalid"]));
        assert_eq!(event["actor"]["role"], "anonymous", "a duplicated header authenticates nobody");
    }
    let text = serde_json::to_string(&events).unwrap();
    assert!(!text.contains(&good[..20]) && !text.contains(&other[..20]), "tokens never reach the log");
    // Even on a route that needs no token, the head is refused.
    let res = app
        .client
        .get(format!("{}/healthz", app.base))
        .header("Authorization", "Bearer a")
        .header("Authorization", "Bearer b")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn repeated_purpose_type_or_request_id_headers_are_refused_and_a_purpose_list_is_undeclared() {
    let app = spawn_app().await;
    let id = app.create_customer(jane()).await;
    let url = format!("{}/v1/customers/{id}", app.base);
    let before = events_besides_reads(&app).await;
    for (a, b) in [("order_fulfillment", "marketing"), ("order_fulfillment", "order_fulfillment")] {
        let res = app
            .client
            .get(&url)
            .bearer_auth(app.merchant())
            .header("X-Purpose", a)
            .header("X-Purpose", b)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::BAD_REQUEST);
        let answer: Value = res.json().await.unwrap();
        assert_eq!(answer["error"], "duplicate_header");
        assert_eq!(answer["message"], "the X-Purpose header is given more than once");
    }
    let res = app.read_customer(&id, "order_fulfillment,marketing").await;
    assert_eq!(res.status, StatusCode::BAD_REQUEST);
    assert_eq!(res.body["error"], "unknown_purpose", "a purpose name has no comma");

    let patch = r#"{"fields":{"name":"Mallory"}}"#;
    for (header, values) in [
        ("Content-Type", ["application/json", "text/plain"]),
        ("Content-Type", ["application/json", "application/json"]),
        ("X-Request-Id", ["req-1", "req-2"]),
    ] {
        let res = app
            .client
            .patch(&url)
            .bearer_auth(app.merchant())
            .header(header, values[0])
            .header(header, values[1])
            .body(patch)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::BAD_REQUEST, "{header}");
        let answer: Value = res.json().await.unwrap();
        assert_eq!(answer["error"], "duplicate_header", "{header}");
    }
    let after = events_besides_reads(&app).await;
    // The unknown purpose read is recorded as a failed read; nothing else happened.
    assert_eq!(after.len(), before.len() + 1, "{after:?}");
    assert_eq!(after.last().unwrap()["action"], "customer.read");
    assert_eq!(fields_of(&app, &id).await, jane(), "the patch was not applied");
}

#[tokio::test]
async fn the_bearer_scheme_is_case_insensitive_and_needs_a_space() {
    let app = spawn_app().await;
    let token = app.merchant();
    let status = |header: String| {
        let req = app
            .client
            .get(format!("{}/v1/customers?email=a%40b.test", app.base))
            .header("X-Purpose", "order_fulfillment")
            .header("Authorization", header);
        async move { req.send().await.unwrap().status() }
    };
    for scheme in ["Bearer", "bearer", "BEARER", "bEaReR"] {
        assert_eq!(status(format!("{scheme} {token}")).await, StatusCode::OK, "{scheme}");
    }
    assert_eq!(status(format!("Bearer    {token}")).await, StatusCode::OK, "1*SP");
    let before = app.audit_events().await.iter().filter(|e| e["action"] == "auth.denied").count();
    let refused = [
        (format!("Bearer\t{token}"), "token_missing"),
        (format!("Bearer{token}"), "token_missing"),
        (format!("Basic {token}"), "token_missing"),
        ("Bearer".to_owned(), "token_missing"),
        (format!("Bearer {token} extra"), "token_invalid"),
        (format!("Bearer: {token}"), "token_missing"),
    ];
    for (header, _) in &refused {
        assert_eq!(status(header.clone()).await, StatusCode::UNAUTHORIZED, "{header:.12}");
    }
    let events = app.audit_events().await;
    let reasons: Vec<&Value> = events
        .iter()
        .filter(|e| e["action"] == "auth.denied")
        .skip(before)
        .map(|e| &e["reason"][0])
        .collect();
    let expected: Vec<Value> = refused.iter().map(|(_, r)| json!(r)).collect();
    assert_eq!(reasons, expected.iter().collect::<Vec<_>>());
}

/// A status, the response head and the JSON body (or `Null`) read from a raw connection.
struct RawAnswer {
    status: u16,
    head: String,
    body: Value,
}

/// Writes `request` verbatim on a new connection and reads one answer. The read is bounded by
/// 5 s, half the shortest request timeout these tests use, so a 408 cannot pass for an answer.
async fn raw(app: &TestApp, request: &[u8]) -> RawAnswer {
    let mut stream = TcpStream::connect(app.base.trim_start_matches("http://")).await.unwrap();
    stream.write_all(request).await.unwrap();
    tokio::time::timeout(Duration::from_secs(5), read_answer(&mut stream)).await.expect("answered within 5 s")
}

async fn read_answer(stream: &mut TcpStream) -> RawAnswer {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = stream.read(&mut chunk).await.unwrap();
        assert!(n > 0, "connection closed before an answer: {:?}", String::from_utf8_lossy(&buf));
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    let length = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().parse().unwrap())
        })
        .unwrap_or(0usize);
    while buf.len() < head_end + length {
        let n = stream.read(&mut chunk).await.unwrap();
        assert!(n > 0, "connection closed inside the body");
        buf.extend_from_slice(&chunk[..n]);
    }
    let body = &buf[head_end..head_end + length];
    let body = if body.is_empty() { Value::Null } else { serde_json::from_slice(body).unwrap() };
    RawAnswer { status, head, body }
}

/// A test server whose request timeout (30 s) is far beyond the raw client's 5 s read bound.
async fn patient_app() -> TestApp {
    spawn_app_with(|s| s.request_timeout_ms = 30_000).await
}

/// The customers a lookup by (URL-encoded) `email` finds.
async fn customers_with_email(app: &TestApp, email: &str) -> Value {
    let path = format!("/v1/customers?email={email}");
    app.call(Method::GET, &path, Some(&app.merchant()), Some("order_fulfillment"), None).await.body["customers"]
        .clone()
}

/// The head of a merchant's `POST /v1/customers` with `headers` (each ending in CRLF), up to and
/// including the blank line.
fn create_head(app: &TestApp, headers: &str) -> String {
    let host = app.base.trim_start_matches("http://");
    format!(
        "POST /v1/customers HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {}\r\n{headers}\r\n",
        app.merchant()
    )
}

#[tokio::test]
async fn a_huge_content_length_is_refused_from_the_head_before_any_body_byte() {
    let app = patient_app().await;
    let host = app.base.trim_start_matches("http://").to_owned();
    let token = app.merchant();
    let before = app.audit_events().await.len();
    let heads = [
        create_head(&app, "Content-Type: application/json\r\nContent-Length: 1000000000000\r\n"),
        // Before authentication: no token at all, so nothing to audit either.
        format!("POST /v1/customers HTTP/1.1\r\nHost: {host}\r\nContent-Length: 1000000000000\r\n\r\n"),
        // One byte over the limit, on a route that takes no body.
        format!("GET /healthz HTTP/1.1\r\nHost: {host}\r\nContent-Length: 65537\r\n\r\n"),
        // A client that waits for `100 Continue` gets the refusal instead.
        format!(
            "PATCH /v1/me HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {token}\r\n\
             Content-Type: application/json\r\nExpect: 100-continue\r\nContent-Length: 70000\r\n\r\n"
        ),
    ];
    for head in &heads {
        let answer = raw(&app, head.as_bytes()).await;
        assert_eq!(answer.status, 413, "{}", answer.head);
        assert_eq!(answer.body["error"], "payload_too_large");
        assert_eq!(answer.body["message"], "the body is too large");
    }
    // The auditor's own reads are the only events: nothing above was authenticated or stored.
    let events = app.audit_events().await;
    assert_eq!(events.len(), before + 1);
    assert!(events.iter().all(|e| e["action"] == "audit.read"));
}

#[tokio::test]
async fn a_body_at_the_limit_is_read_and_one_declared_over_it_is_not() {
    let app = patient_app().await;
    // Exactly 65536 bytes, declared and sent: read and judged (a name that long is invalid).
    let mut body = br#"{"fields":{"name":""#.to_vec();
    let tail = br#""}}"#;
    body.resize(65536 - tail.len(), b'a');
    body.extend_from_slice(tail);
    let mut request =
        create_head(&app, &format!("Content-Type: application/json\r\nContent-Length: {}\r\n", body.len()))
            .into_bytes();
    request.extend_from_slice(&body);
    let answer = raw(&app, &request).await;
    assert_eq!(answer.status, 422, "{}", answer.body);
    assert_eq!(answer.body["error"], "invalid_field");
}

#[tokio::test]
async fn a_chunked_body_that_grows_past_the_limit_is_refused() {
    let app = patient_app().await;
    let mut request =
        create_head(&app, "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n").into_bytes();
    let mut chunk = |data: &[u8]| {
        request.extend_from_slice(format!("{:x}\r\n", data.len()).as_bytes());
        request.extend_from_slice(data);
        request.extend_from_slice(b"\r\n");
    };
    chunk(br#"{"fields":{"email":"chunked@example.com","name":""#);
    for _ in 0..17 {
        chunk(&[b'a'; 4096]);
    }
    chunk(br#""}}"#);
    request.extend_from_slice(b"0\r\n\r\n");
    let answer = raw(&app, &request).await;
    assert_eq!(answer.status, 413, "{}", answer.head);
    assert_eq!(answer.body["error"], "payload_too_large");
    assert_eq!(customers_with_email(&app, "chunked%40example.com").await, json!([]), "nothing was created");
}

#[tokio::test]
async fn a_body_that_is_not_json_is_refused_without_waiting_for_it() {
    let app = patient_app().await;
    // Declares 100 bytes and sends none: answered from the head, not after the timeout.
    let head = create_head(&app, "Content-Type: text/plain\r\nContent-Length: 100\r\n");
    let answer = raw(&app, head.as_bytes()).await;
    assert_eq!(answer.status, 415, "{}", answer.head);
    assert_eq!(answer.body["error"], "unsupported_media_type");
}

#[tokio::test]
async fn content_length_given_twice_is_refused_unless_both_agree() {
    let app = patient_app().await;
    let body = r#"{"fields":{"email":"twice@example.com"}}"#;
    let request = |second: usize| {
        let headers = format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\nContent-Length: {second}\r\n\
             Connection: close\r\n",
            body.len()
        );
        create_head(&app, &headers) + body
    };
    // Conflicting lengths are refused by hyper itself (400, before the router).
    let answer = raw(&app, request(body.len() - 5).as_bytes()).await;
    assert_eq!(answer.status, 400, "{}", answer.head);
    assert_eq!(customers_with_email(&app, "twice%40example.com").await, json!([]), "nothing was created");
    // Identical lengths (RFC 9112 §6.3 lets a recipient take them as one) are folded by hyper
    // into one header, so the body's framing is unambiguous and the request is served.
    let answer = raw(&app, request(body.len()).as_bytes()).await;
    assert_eq!(answer.status, 201, "{}", answer.body);
}

#[tokio::test]
async fn a_read_that_repeats_the_fields_parameter_is_refused() {
    let app = spawn_app().await;
    let id = app.create_customer(json!({ "name": "Ada", "email": "ada@example.com" })).await;
    for query in ["fields=name&fields=email", "fields=name&%66ields=email"] {
        let path = format!("/v1/customers/{id}?{query}");
        let res = app.call(Method::GET, &path, Some(&app.merchant()), Some("customer_support"), None).await;
        assert_eq!(res.status, StatusCode::BAD_REQUEST, "{query}: {}", res.body);
    }
}

#[tokio::test]
async fn a_create_that_states_consent_to_one_purpose_twice_is_refused() {
    let app = spawn_app().await;
    for statements in [
        json!([{ "purpose": "marketing", "granted": false, "source": "form-a" },
               { "purpose": "marketing", "granted": true, "source": "form-b", "notice": "marketing-v2" }]),
        json!([{ "purpose": "marketing", "granted": true, "source": "form-b", "notice": "marketing-v2" },
               { "purpose": "marketing", "granted": false, "source": "form-a" }]),
    ] {
        let body = json!({ "fields": { "name": "Ada" }, "consents": statements });
        let res = app.call(Method::POST, "/v1/customers", Some(&app.merchant()), None, Some(&body)).await;
        assert_eq!(res.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", res.body);
        assert!(res.body["message"].as_str().unwrap().contains("consents"));
    }
    let events = app.audit_events().await;
    assert!(events.iter().all(|e| e["outcome"] != "allowed" || e["action"] != "customer.create"));
}

#[tokio::test]
async fn a_body_that_is_not_a_json_object_is_refused_and_creates_nothing() {
    let app = spawn_app().await;
    let merchant = app.merchant();
    for body in [json!([]), json!([{}]), json!("fields"), json!(1), json!(null)] {
        let res = app.call(Method::POST, "/v1/customers", Some(&merchant), None, Some(&body)).await;
        assert_eq!(res.status, StatusCode::UNPROCESSABLE_ENTITY, "{body}: {}", res.body);
        assert_eq!(res.body["error"], "invalid_body");
    }
    let id = app.create_customer(json!({ "name": "Ada" })).await;
    let path = format!("/v1/customers/{id}/consents/marketing");
    let res = app.call(Method::PUT, &path, Some(&merchant), None, Some(&json!([true, "form"]))).await;
    assert_eq!(res.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", res.body);
    let creates = app.audit_events().await.into_iter().filter(|e| e["action"] == "customer.create").count();
    assert_eq!(creates, 1, "only the one valid create");
}
