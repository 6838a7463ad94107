//! Time to re-wrap every customer's data key to a new key epoch, over a real sled store.
//!
//! Not run by default (it writes a large store): `EPOCH_BENCH_CUSTOMERS=1000000 cargo bench
//! --bench epoch_rewrap`. Loads that many customers straight through the store (one sealed
//! field each, data keys under the current epoch, 1,000 records per durable `write_many`), starts
//! a new epoch, then times one re-wrap pass ([`Vault::rewrap_pass`]: pages of 200, one durable
//! `write_many` per page, as the epoch task runs it) and the clean pass that confirms it.
//!
//! Each record carries its email's blind-index entry under the current epoch, so the timed pass
//! also re-indexes (opens the email, recomputes its entry under the new epoch). With
//! `EPOCH_BENCH_NO_INDEX=1` records carry no entry: the pass only re-wraps (the difference is
//! the cost of re-indexing).

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use custodia::crypto::DataKey;
use custodia::domain::{CustomerId, Timestamp};
use custodia::store::{CustomerChange, CustomerRecord, IndexEntry, StoredField, Write};

#[allow(dead_code)] // `merchant` is for the benches that call the vault as a merchant.
mod common;

const LOAD_BATCH: usize = 1000;

fn main() {
    let Some(customers) = std::env::var("EPOCH_BENCH_CUSTOMERS").ok().and_then(|v| v.parse::<usize>().ok())
    else {
        println!("epoch_rewrap: skipped; set EPOCH_BENCH_CUSTOMERS (e.g. 1000000) to run it");
        return;
    };
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    runtime.block_on(run(customers));
}

async fn run(customers: usize) {
    let dir = tempfile::tempdir().unwrap();
    let settings = common::settings(dir.path());
    // No background tasks: only the timed pass re-wraps.
    let (vault, store, _) = custodia::startup::open_vault(&settings).await.unwrap();
    let keyring = vault.keyring();
    let with_index = std::env::var("EPOCH_BENCH_NO_INDEX").is_err();
    let epoch_key = keyring.epoch_keys().remove(0);

    let started = Instant::now();
    let mut loaded = 0;
    while loaded < customers {
        let n = LOAD_BATCH.min(customers - loaded);
        let mut writes = Vec::with_capacity(n);
        for i in 0..n {
            let id = CustomerId::random();
            let key = DataKey::generate().unwrap();
            let now = Timestamp::now();
            let address = format!("customer{}@bench.test", loaded + i);
            let email = format!("\"{address}\"");
            let mut fields = BTreeMap::new();
            let sealed = key.seal(&id, "email", email.as_bytes()).unwrap();
            fields.insert("email".to_owned(), StoredField { sealed, written_at: now });
            let record = CustomerRecord {
                id,
                version: 1,
                data_key: keyring.wrap_data_key(&id, &key).unwrap(),
                fields,
                index_entries: if with_index {
                    vec![IndexEntry {
                        field: "email".into(),
                        index: epoch_key.blind_index().compute("email", &address).0,
                        unique: true,
                        epoch: Some(epoch_key.info().id.clone()),
                    }]
                } else {
                    Vec::new()
                },
                consents: BTreeMap::new(),
                objections: BTreeSet::new(),
                restricted: false,
                payment_methods: Vec::new(),
                created_at: now,
                updated_at: now,
            };
            let change = CustomerChange::Put { record: Box::new(record), expected_version: None };
            writes.push(Write {
                need_seqs: false,
                precondition: None,
                change: Some(change),
                events: Vec::new(),
            });
        }
        for outcome in store.write_many(writes).await.unwrap() {
            outcome.unwrap();
        }
        loaded += n;
    }
    let load = started.elapsed();

    let epoch = keyring.create_epoch(Timestamp::now().millis()).unwrap();
    let started = Instant::now();
    let pass = vault.rewrap_pass(Duration::ZERO).await.unwrap();
    let rewrap = started.elapsed();
    assert_eq!(pass.rewrapped, customers, "every key re-wrapped to {}", epoch.id);
    assert_eq!(pass.reindexed, if with_index { customers } else { 0 });
    let started = Instant::now();
    let confirm = vault.rewrap_pass(Duration::ZERO).await.unwrap();
    let clean = started.elapsed();
    assert!(confirm.clean());
    store.close().await.unwrap();
    let bytes = dir_size(dir.path());

    println!(
        "epoch_rewrap: {customers} customers loaded in {:.1} s ({})",
        load.as_secs_f64(),
        if with_index {
            "with an email index entry each: re-wrap and re-index"
        } else {
            "no index entries: re-wrap only"
        }
    );
    println!(
        "epoch_rewrap: re-wrap pass {:.1} s ({:.0} keys/s, {:.1} µs/key); confirming clean pass {:.1} s",
        rewrap.as_secs_f64(),
        customers as f64 / rewrap.as_secs_f64(),
        rewrap.as_micros() as f64 / customers as f64,
        clean.as_secs_f64()
    );
    println!("epoch_rewrap: data directory {:.0} MiB", bytes as f64 / (1024.0 * 1024.0));
}

fn dir_size(path: &std::path::Path) -> u64 {
    std::fs::read_dir(path)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|e| match e.file_type() {
                    Ok(t) if t.is_dir() => dir_size(&e.path()),
                    _ => e.metadata().map(|m| m.len()).unwrap_or(0),
                })
                .sum()
        })
        .unwrap_or(0)
}
