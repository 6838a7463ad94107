//! Bearer tokens: the attack set is refused (and audited), each supported algorithm works.

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::helpers::{SECRET, TestApp, fixture, now, sign_hs256, spawn_app, spawn_app_with};

async fn status_with(app: &TestApp, token: &str) -> StatusCode {
    app.call(Method::GET, "/v1/customers?email=a%40b.test", Some(token), Some("order_fulfillment"), None)
        .await
        .status
}

fn b64(v: &Value) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
}

fn sign_pem(alg: Algorithm, key_file: &str, kid: Option<&str>, claims: &Value) -> String {
    let pem = std::fs::read(fixture(key_file)).unwrap();
    let key = match alg {
        Algorithm::RS256 => EncodingKey::from_rsa_pem(&pem).unwrap(),
        Algorithm::ES256 => EncodingKey::from_ec_pem(&pem).unwrap(),
        Algorithm::EdDSA => EncodingKey::from_ed_pem(&pem).unwrap(),
        _ => unreachable!(),
    };
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_owned);
    jsonwebtoken::encode(&header, claims, &key).unwrap()
}

fn merchant_claims() -> Value {
    json!({"sub": "shop-backend", "role": "merchant", "exp": now() + 600})
}

#[tokio::test]
async fn the_jwt_attack_set_is_refused_and_audited() {
    let app = spawn_app().await;
    let good = app.merchant();
    assert_eq!(status_with(&app, &good).await, StatusCode::OK);

    let alg_none = format!("{}.{}.", b64(&json!({"alg": "none", "typ": "JWT"})), b64(&merchant_claims()));
    let mut bad_sig = good.clone();
    bad_sig.pop();
    bad_sig.push(if good.ends_with('A') { 'B' } else { 'A' });
    let other_secret = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &merchant_claims(),
        &EncodingKey::from_secret(b"another-secret-another-secret-another"),
    )
    .unwrap();
    let hs512 = jsonwebtoken::encode(
        &Header::new(Algorithm::HS512),
        &merchant_claims(),
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap();
    let expired = sign_hs256(json!({"sub": "shop-backend", "role": "merchant", "exp": now() - 3600}));
    let no_exp = sign_hs256(json!({"sub": "shop-backend", "role": "merchant"}));
    let string_exp =
        sign_hs256(json!({"sub": "shop-backend", "role": "merchant", "exp": (now() + 600).to_string()}));
    let no_role = sign_hs256(json!({"sub": "shop-backend", "exp": now() + 600}));
    let odd_role = sign_hs256(json!({"sub": "shop-backend", "role": "admin", "exp": now() + 600}));
    let system_role = sign_hs256(json!({"sub": "shop-backend", "role": "system", "exp": now() + 600}));
    let no_sub = sign_hs256(json!({"role": "merchant", "exp": now() + 600}));
    let rs256 = sign_pem(Algorithm::RS256, "keys/rsa-private.pem", None, &merchant_claims());

    let cases = [
        ("alg none", alg_none),
        ("bad signature", bad_sig),
        ("other secret", other_secret),
        ("HS512", hs512),
        ("expired", expired),
        ("no exp", no_exp),
        ("string exp", string_exp),
        ("no role", no_role),
        ("unknown role", odd_role),
        ("system role", system_role),
        ("no sub", no_sub),
        ("RS256 without a configured public key", rs256),
        ("garbage", "not.a.jwt".to_owned()),
    ];
    for (name, token) in &cases {
        assert_eq!(status_with(&app, token).await, StatusCode::UNAUTHORIZED, "{name}");
    }
    let res =
        app.call(Method::GET, "/v1/customers?email=a%40b.test", None, Some("order_fulfillment"), None).await;
    assert_eq!(res.status, StatusCode::UNAUTHORIZED);
    assert_eq!(res.body["error"], "unauthenticated");

    let customer = app.token("customer", "8d1b6f3e-1f0a-4c2a-9a1e-5d6c7b8a9f00");
    assert_eq!(status_with(&app, &customer).await, StatusCode::FORBIDDEN);
    assert_eq!(status_with(&app, &app.auditor()).await, StatusCode::FORBIDDEN);
    let res = app.call(Method::GET, "/v1/audit/events", Some(&good), None, None).await;
    assert_eq!(res.status, StatusCode::FORBIDDEN, "a merchant cannot read the audit log");

    let events = app.audit_events().await;
    let denied: Vec<&Value> = events.iter().filter(|e| e["action"] == "auth.denied").collect();
    assert_eq!(denied.len(), cases.len() + 1 + 3);
    assert!(denied.iter().all(|e| e["outcome"] == "denied"));
    let expired_event = denied.iter().find(|e| e["reason"] == json!(["token_expired"]));
    assert!(expired_event.is_some(), "an expired token is recorded as such");
    let forbidden = denied.iter().filter(|e| e["reason"] == json!(["role_forbidden"])).count();
    assert_eq!(forbidden, 3);
    let text = serde_json::to_string(&events).unwrap();
    assert!(!text.contains(&good[..20]), "tokens never reach the audit log");
}

#[tokio::test]
async fn an_hs256_token_signed_with_the_public_key_is_refused() {
    let app = spawn_app_with(|s| {
        s.jwt_hs256_secret = None;
        s.jwt_public_keys = Some(fixture("keys/rsa-public.pem"));
    })
    .await;
    let public_pem = std::fs::read(fixture("keys/rsa-public.pem")).unwrap();
    let confused = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &merchant_claims(),
        &EncodingKey::from_secret(&public_pem),
    )
    .unwrap();
    assert_eq!(status_with(&app, &confused).await, StatusCode::UNAUTHORIZED);
    let good = sign_pem(Algorithm::RS256, "keys/rsa-private.pem", None, &merchant_claims());
    assert_eq!(status_with(&app, &good).await, StatusCode::OK);
}

#[tokio::test]
async fn rs256_es256_and_eddsa_work_from_a_pem_file() {
    let app = spawn_app_with(|s| {
        s.jwt_hs256_secret = None;
        s.jwt_public_keys = Some(fixture("keys/all-public.pem"));
    })
    .await;
    for (alg, key) in [
        (Algorithm::RS256, "keys/rsa-private.pem"),
        (Algorithm::ES256, "keys/ec-private.pem"),
        (Algorithm::EdDSA, "keys/ed25519-private.pem"),
    ] {
        let token = sign_pem(alg, key, None, &merchant_claims());
        assert_eq!(status_with(&app, &token).await, StatusCode::OK, "{alg:?}");
    }
    assert_eq!(status_with(&app, &sign_hs256(merchant_claims())).await, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn jwks_keys_are_selected_by_kid() {
    let app = spawn_app_with(|s| {
        s.jwt_hs256_secret = None;
        s.jwt_public_keys = Some(fixture("keys/jwks.json"));
    })
    .await;
    let ok = sign_pem(Algorithm::ES256, "keys/ec-private.pem", Some("ec-1"), &merchant_claims());
    assert_eq!(status_with(&app, &ok).await, StatusCode::OK);
    let ok = sign_pem(Algorithm::EdDSA, "keys/ed25519-private.pem", Some("ed-1"), &merchant_claims());
    assert_eq!(status_with(&app, &ok).await, StatusCode::OK);
    let wrong_kid = sign_pem(Algorithm::RS256, "keys/rsa-private.pem", Some("ec-1"), &merchant_claims());
    assert_eq!(status_with(&app, &wrong_kid).await, StatusCode::UNAUTHORIZED);
    let ok = sign_pem(Algorithm::RS256, "keys/rsa-private.pem", Some("rsa-1"), &merchant_claims());
    assert_eq!(status_with(&app, &ok).await, StatusCode::OK);
}

#[tokio::test]
async fn issuer_and_audience_are_checked_when_configured() {
    let app = spawn_app_with(|s| {
        s.jwt_issuer = Some("https://idp.shop.test".into());
        s.jwt_audience = Some("custodia".into());
    })
    .await;
    let claims = |iss: &str, aud: &str| {
        sign_hs256(
            json!({"sub": "shop-backend", "role": "merchant", "exp": now() + 600, "iss": iss, "aud": aud}),
        )
    };
    assert_eq!(status_with(&app, &claims("https://idp.shop.test", "custodia")).await, StatusCode::OK);
    assert_eq!(status_with(&app, &claims("https://evil.test", "custodia")).await, StatusCode::UNAUTHORIZED);
    assert_eq!(
        status_with(&app, &claims("https://idp.shop.test", "other-service")).await,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(status_with(&app, &app.merchant()).await, StatusCode::UNAUTHORIZED, "missing iss and aud");
}

/// An HS256 token with the test secret over a header written by hand (`header` is the exact
/// JSON text, so repeated members survive).
fn hs256_with_raw_header(header: &str, claims: &Value) -> String {
    use base64::Engine;
    let b64 = |bytes: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
    let input = format!("{}.{}", b64(header.as_bytes()), b64(claims.to_string().as_bytes()));
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, SECRET.as_bytes());
    format!("{input}.{}", b64(ring::hmac::sign(&key, input.as_bytes()).as_ref()))
}

#[tokio::test]
async fn tokens_with_crit_b64_or_repeated_header_members_are_refused_as_invalid() {
    let app = spawn_app().await;
    let claims = merchant_claims();
    let plain = hs256_with_raw_header(r#"{"alg":"HS256","typ":"JWT"}"#, &claims);
    assert_eq!(status_with(&app, &plain).await, StatusCode::OK, "the hand-made token itself is good");
    // Unknown members outside crit are ignored, as RFC 7515 §4 requires.
    let unknown = hs256_with_raw_header(r#"{"alg":"HS256","typ":"JWT","x-note":"hi"}"#, &claims);
    assert_eq!(status_with(&app, &unknown).await, StatusCode::OK, "an unknown, non-critical member");

    let headers = [
        r#"{"alg":"HS256","typ":"JWT","crit":["x-unknown"],"x-unknown":1}"#,
        r#"{"alg":"HS256","typ":"JWT","crit":["x-unknown"]}"#,
        r#"{"alg":"HS256","crit":["b64"],"b64":false}"#,
        r#"{"alg":"HS256","b64":true}"#,
        r#"{"alg":"HS256","crit":[]}"#,
        r#"{"alg":"HS256","crit":["exp"]}"#,
        r#"{"alg":"HS256","crit":null}"#,
        r#"{"alg":"HS256","typ":"JWT","typ":"JWT"}"#,
        r#"{"alg":"HS256","kid":"a","kid":"b"}"#,
    ];
    for header in headers {
        let token = hs256_with_raw_header(header, &claims);
        let res = app
            .call(
                Method::GET,
                "/v1/customers?email=a%40b.test",
                Some(&token),
                Some("order_fulfillment"),
                None,
            )
            .await;
        assert_eq!(res.status, StatusCode::UNAUTHORIZED, "{header}");
        assert_eq!(res.body["error"], "unauthenticated", "{header}: the one opaque answer");
    }
    // jsonwebtoken's own Header with crit set is refused the same way.
    let mut header = Header::new(Algorithm::HS256);
    header.crit = Some(vec!["x-unknown".into()]);
    let token = jsonwebtoken::encode(&header, &claims, &EncodingKey::from_secret(SECRET.as_bytes())).unwrap();
    assert_eq!(status_with(&app, &token).await, StatusCode::UNAUTHORIZED);

    let events = app.audit_events().await;
    let reasons: Vec<&Value> =
        events.iter().filter(|e| e["action"] == "auth.denied").map(|e| &e["reason"]).collect();
    assert_eq!(reasons.len(), headers.len() + 1);
    assert!(reasons.iter().all(|r| **r == json!(["token_invalid"])), "{reasons:?}");
}

fn claims_lasting(iat: Option<i64>, exp: i64) -> Value {
    let mut claims = json!({"sub": "shop-backend", "role": "merchant", "exp": exp});
    if let Some(iat) = iat {
        claims["iat"] = json!(iat);
    }
    claims
}

#[tokio::test]
async fn a_configured_maximum_lifetime_refuses_long_lived_undated_and_future_dated_tokens() {
    let app = spawn_app_with(|s| s.jwt_max_lifetime_secs = 900).await;
    let t = now();
    let accepted = [
        ("15 minutes from now", claims_lasting(Some(t), t + 900)),
        ("issued 10 minutes ago, 5 left", claims_lasting(Some(t - 600), t + 300)),
        ("iat within the leeway ahead", claims_lasting(Some(t + 20), t + 900)),
        (
            "fractional NumericDates",
            json!({"sub": "s", "role": "merchant", "iat": t as f64 + 0.5, "exp": t as f64 + 600.5}),
        ),
    ];
    for (what, claims) in &accepted {
        assert_eq!(status_with(&app, &sign_hs256(claims.clone())).await, StatusCode::OK, "{what}");
    }
    let refused = [
        ("an hour long", claims_lasting(Some(t), t + 3600)),
        ("no iat", claims_lasting(None, t + 600)),
        ("iat as a string", json!({"sub": "s", "role": "merchant", "iat": t.to_string(), "exp": t + 600})),
        ("short lifetime claimed, but exp far ahead", claims_lasting(Some(t + 3000), t + 3600)),
        ("iat far in the future", claims_lasting(Some(t + 120), t + 600)),
        ("exp before iat", claims_lasting(Some(t + 10), t + 5)),
        ("issued long ago, lived too long", claims_lasting(Some(t - 7200), t + 60)),
    ];
    for (what, claims) in &refused {
        assert_eq!(status_with(&app, &sign_hs256(claims.clone())).await, StatusCode::UNAUTHORIZED, "{what}");
    }
    // The helpers' tokens carry no iat: read the log with a dated one (one page is enough here).
    let auditor = sign_hs256(json!({"sub": "a", "role": "auditor", "iat": t, "exp": t + 600}));
    let res = app.call(Method::GET, "/v1/audit/events?limit=1000", Some(&auditor), None, None).await;
    assert_eq!(res.status, StatusCode::OK, "{}", res.body);
    let events = res.body["events"].as_array().unwrap();
    let denied: Vec<&Value> = events.iter().filter(|e| e["action"] == "auth.denied").collect();
    assert_eq!(denied.len(), refused.len());
    assert!(denied.iter().all(|e| e["reason"] == json!(["token_invalid"])));
}

#[tokio::test]
async fn without_a_maximum_lifetime_long_lived_and_undated_tokens_are_still_accepted() {
    let app = spawn_app().await;
    let t = now();
    for claims in [
        claims_lasting(None, t + 30 * 86_400),
        claims_lasting(Some(t), t + 365 * 86_400),
        claims_lasting(Some(t + 3600), t + 7200),
    ] {
        assert_eq!(status_with(&app, &sign_hs256(claims.clone())).await, StatusCode::OK, "{claims}");
    }
}
