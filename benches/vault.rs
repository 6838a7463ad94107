//! One full create and one read through the service layer over a real sled store, including
//! validation, sealing, the audit append and the durable group-commit flush.

mod common;

use criterion::{Criterion, criterion_group, criterion_main};
use custodia::startup::App;
use custodia::vault::NewCustomer;
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
    let settings = common::settings(dir.path());
    let app = rt.block_on(App::build(settings)).unwrap();
    let vault = app.vault();
    let ctx = common::merchant();
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
