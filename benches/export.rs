//! The export of one customer (Art. 15) while the audit log holds 1,000,000 events about other
//! customers: the per-customer history index keeps it independent of the log's size.
//!
//! `EXPORT_BENCH_EVENTS` overrides the number of background events (default 1,000,000).

use std::sync::Arc;

mod common;

use criterion::{Criterion, criterion_group, criterion_main};
use custodia::audit::{Action, EventDraft};
use custodia::config::Settings;
use custodia::domain::{CustomerId, Principal, Role};
use custodia::startup::App;
use custodia::vault::{NewCustomer, RequestContext};
use serde_json::json;

/// Customers exported round-robin.
const POOL: usize = 100;

fn export(c: &mut Criterion) {
    let events: u64 =
        std::env::var("EXPORT_BENCH_EVENTS").ok().and_then(|v| v.parse().ok()).unwrap_or(1_000_000);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let settings = Settings { cache_mb: 256, ..common::settings(dir.path()) };
    let app = rt.block_on(App::build(settings)).unwrap();
    let vault = app.vault();
    let merchant = common::merchant();
    // A pool of customers, each with a small history (create, 20 reads, a disclosure), exported
    // round-robin so each export's own `customer.export` event grows any one history slowly.
    let mut ids = Vec::new();
    for n in 0..POOL {
        let body: NewCustomer = serde_json::from_value(json!({"fields": {
            "name": "Jane Example", "email": format!("jane{n}@shop.test"), "country": "DE",
            "shipping_address": {"line1": "Hauptstr. 5", "city": "Berlin", "postal_code": "10115", "country": "DE"}
        }}))
        .unwrap();
        let id = rt.block_on(vault.create_customer(&merchant, body, None)).unwrap();
        for _ in 0..20 {
            rt.block_on(vault.read_customer(&merchant, &id.to_string(), Some("customer_support"), None))
                .unwrap();
        }
        let disclosure = serde_json::from_value(json!({
            "customer_id": id.to_string(), "recipient": "acme-shipping", "purpose": "order_fulfillment",
            "fields": ["name", "shipping_address"]
        }))
        .unwrap();
        rt.block_on(vault.disclose(&merchant, disclosure)).unwrap();
        ids.push(id);
    }

    // Background events about other customers, appended by many tasks at once so flushes are
    // shared (group commit).
    let started = std::time::Instant::now();
    rt.block_on(async {
        let tasks = 256u64;
        let mut handles = Vec::new();
        for t in 0..tasks {
            let vault = Arc::clone(&vault);
            handles.push(tokio::spawn(async move {
                let actor = Principal { role: Role::Merchant, sub: Some("load".into()) };
                for _ in (t..events).step_by(tasks as usize) {
                    let draft = EventDraft::new(Action::CustomerRead, &actor, "bg")
                        .customer(CustomerId::random())
                        .purpose(Some("order_fulfillment"))
                        .fields(["name"]);
                    vault.audit_log().record(draft, None).await.unwrap();
                }
            }));
        }
        for h in handles {
            h.await.unwrap();
        }
    });
    eprintln!("appended {events} background events in {:.1?}", started.elapsed());

    let customers: Vec<RequestContext> = ids
        .iter()
        .map(|id| RequestContext {
            principal: Principal { role: Role::Customer, sub: Some(id.to_string()) },
            request_id: "bench".into(),
        })
        .collect();
    let mut next = 0;
    c.bench_function("export/one_customer_among_1M_events", |b| {
        b.iter(|| {
            next = (next + 1) % customers.len();
            rt.block_on(vault.export(&customers[next])).unwrap()
        })
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(50);
    targets = export
}
criterion_main!(benches);
