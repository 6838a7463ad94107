//! One full create and one read through the service layer over a real sled store, including
//! validation, sealing, the audit append and the durable group-commit flush.

use criterion::{Criterion, criterion_group, criterion_main};
use custodia::config::Settings;
use custodia::domain::Principal;
use custodia::startup::App;
use custodia::vault::{NewCustomer, RequestContext};
use secrecy::SecretString;
use serde_json::json;
use std::hint::black_box;

fn customer_body(n: u64) -> NewCustomer {
    serde_json::from_value(json!({"fields": {
        "name": "Jane Example",
        "email": format!("jane{n}@shop.test"),
        "phone": "+49 151 23456789",
        "shipping_address": {"line1": "Hauptstr. 5", "city": "Berlin", "postal_code": "10115", "country": "DE"},
        "country": "DE"
    }}))
    .unwrap()
}

fn vault_ops(c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let settings = Settings {
        listen: "127.0.0.1:0".into(),
        data_dir: dir.path().to_owned(),
        policies: concat!(env!("CARGO_MANIFEST_DIR"), "/policies").into(),
        master_key: Some(SecretString::from("AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=")),
        jwt_hs256_secret: Some(SecretString::from("bench-secret-bench-secret-bench-secret-0000")),
        ..Settings::default()
    };
    let app = rt.block_on(App::build(settings)).unwrap();
    let vault = app.vault();
    let ctx = RequestContext {
        principal: Principal { role: custodia::domain::Role::Merchant, sub: Some("bench".into()) },
        request_id: "bench".into(),
    };
    let mut n = 0u64;
    c.bench_function("vault/create_durable", |b| {
        b.iter(|| {
            n += 1;
            rt.block_on(vault.create_customer(&ctx, customer_body(n), None)).unwrap()
        })
    });
    let id = rt.block_on(vault.create_customer(&ctx, customer_body(u64::MAX), None)).unwrap().to_string();
    c.bench_function("vault/read_durable", |b| {
        b.iter(|| {
            rt.block_on(vault.read_customer(&ctx, black_box(&id), Some("order_fulfillment"), None)).unwrap()
        })
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(30);
    targets = vault_ops
}
criterion_main!(benches);
