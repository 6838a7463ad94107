//! Audit log benchmarks, through the public library API:
//! - `append/*`: durable appends through `AuditLog::record` on sled (each waits for its group
//!   commit flush), one writer at a time and 64 concurrent writers;
//! - `proof/inclusion_sled/1M`: proofs from stored nodes of a 1,000,000-event sled log, through
//!   `AuditLog::inclusion_proof` (the path the HTTP API takes, minus HTTP);
//! - `proof/inclusion_memory/*` and `proof/consistency_memory/10M`: the same algorithms over an
//!   in-memory node source (`MemoryTree`) of 1M and 10M leaves (10M in sled would take a long
//!   time to build on a 2-core machine; the proof code is identical, only the node reads differ);
//! - `verify/offline_1M`: `audit::verify::verify_export` over 1,000,000 NDJSON events (parse,
//!   schema check, JCS, leaf hash, tree, root, signature), as `custodia audit verify` runs it.
//!
//! Sizes are not powers of two, so proofs include incomplete right-edge subtrees.

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use custodia::audit::checkpoint::{CheckpointSigner, VerifierKey};
use custodia::audit::merkle::{Hash, leaf_hash};
use custodia::audit::proof::{self, MemoryTree};
use custodia::audit::tree::Tree;
use custodia::audit::{Action, Actor, AuditLog, Event, EventDraft, Outcome, verify};
use custodia::crypto::{PseudonymKey, SigningKey};
use custodia::domain::{Principal, Role};
use custodia::store::{StorageSettings, Store};

const ONE_MILLION: u64 = 1_000_003;
const TEN_MILLION: u64 = 10_000_019;

fn signer() -> CheckpointSigner {
    // invariant: a fixed 32-byte seed and a valid origin.
    CheckpointSigner::new("bench.example/audit", SigningKey::from_seed(&[42; 32]).expect("seed"))
        .expect("origin")
}

fn event(seq: u64) -> Event {
    Event {
        seq,
        time: "2026-11-22T10:00:00.123Z".into(),
        action: Action::CustomerRead,
        outcome: Outcome::Allowed,
        actor: Actor { role: "merchant".into(), sub: Some("shop-backend".into()) },
        customer_id: Some("0fe9730e-8b7b-4fa5-8c68-8342a74d1718".into()),
        fields: Some(vec!["country".into(), "email".into(), "name".into(), "phone".into()]),
        purpose: Some("order_fulfillment".into()),
        recipient: None,
        reason: None,
        request_id: format!("{seq:016x}-bench"),
    }
}

/// Spreads proof requests over the whole log, including its right edge.
fn indices(size: u64) -> impl Iterator<Item = u64> {
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    std::iter::from_fn(move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        Some(if x.is_multiple_of(8) { size - 1 - x % 64 } else { x % size })
    })
}

fn append(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = sled_store(&dir.path().join("store"), 64 << 20);
    let log = Arc::new(rt.block_on(AuditLog::open(store, signer(), PseudonymKey::derive(&[9; 32]))).unwrap());
    let actor = Principal { role: Role::Merchant, sub: Some("bench".into()) };
    let draft = EventDraft::new(Action::CustomerRead, &actor, "bench-request").fields(["email", "name"]);

    let mut group = c.benchmark_group("append");
    group.sample_size(20).measurement_time(Duration::from_secs(8));
    group.throughput(Throughput::Elements(1));
    group.bench_function("durable_one_writer", |b| {
        b.to_async(&rt).iter(|| async { log.record(draft.clone(), None).await.unwrap() })
    });
    const WRITERS: u64 = 64;
    const PER_WRITER: u64 = 8;
    group.throughput(Throughput::Elements(WRITERS * PER_WRITER));
    group.bench_function("durable_64_writers", |b| {
        b.to_async(&rt).iter(|| async {
            let tasks: Vec<_> = (0..WRITERS)
                .map(|_| {
                    let (log, draft) = (Arc::clone(&log), draft.clone());
                    tokio::spawn(async move {
                        for _ in 0..PER_WRITER {
                            log.record(draft.clone(), None).await.unwrap();
                        }
                    })
                })
                .collect();
            for t in tasks {
                t.await.unwrap();
            }
        })
    });
    group.finish();
}

/// A sled store in `dir`, chosen through configuration as the server does.
fn sled_store(dir: &std::path::Path, cache_bytes: u64) -> Arc<dyn Store> {
    let settings = StorageSettings::Sled { dir: dir.to_owned(), cache_bytes };
    custodia::store::open(&settings, Arc::new(Tree)).unwrap()
}

/// A sled log of `size` events, appended through the audit log in batches of 1,000 events
/// per durable write.
fn sled_log(rt: &tokio::runtime::Runtime, dir: &std::path::Path, size: u64) -> AuditLog {
    let started = Instant::now();
    let store = sled_store(&dir.join("store"), 256 << 20);
    let log = rt.block_on(AuditLog::open(store, signer(), PseudonymKey::derive(&[9; 32]))).unwrap();
    let actor = Principal { role: Role::Merchant, sub: Some("bench".into()) };
    rt.block_on(async {
        let mut seq = 0;
        while seq < size {
            let n = (size - seq).min(1000);
            let drafts = (seq..seq + n)
                .map(|i| EventDraft::new(Action::CustomerRead, &actor, &format!("r{i}")).fields(["email"]))
                .collect();
            log.record_batch(drafts, None).await.unwrap();
            seq += n;
        }
    });
    eprintln!("built a {size}-event sled log in {:.1?}", started.elapsed());
    log
}

fn memory_tree(size: u64) -> MemoryTree {
    let started = Instant::now();
    let leaves: Vec<Hash> = (0..size).map(|i| leaf_hash(&i.to_be_bytes())).collect();
    let tree = MemoryTree::from_leaves(leaves);
    eprintln!("built a {size}-leaf in-memory tree in {:.1?}", started.elapsed());
    tree
}

fn proofs(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let mut group = c.benchmark_group("proof");
    group.sample_size(50).measurement_time(Duration::from_secs(5));

    let dir = tempfile::tempdir().unwrap();
    let log = sled_log(&rt, dir.path(), ONE_MILLION);
    let mut next = indices(ONE_MILLION);
    group.bench_function(BenchmarkId::new("inclusion_sled", "1M"), |b| {
        b.to_async(&rt).iter(|| {
            let index = next.next().unwrap_or(0);
            let log = &log;
            async move { log.inclusion_proof(black_box(index), ONE_MILLION).await.unwrap() }
        })
    });
    drop(log);

    for (label, size) in [("1M", ONE_MILLION), ("10M", TEN_MILLION)] {
        let tree = memory_tree(size);
        let mut next = indices(size);
        group.bench_function(BenchmarkId::new("inclusion_memory", label), |b| {
            b.iter(|| proof::inclusion_proof(&tree, black_box(next.next().unwrap_or(0)), size).unwrap())
        });
        if size == TEN_MILLION {
            let mut next = indices(size);
            group.bench_function(BenchmarkId::new("consistency_memory", label), |b| {
                b.iter(|| {
                    proof::consistency_proof(&tree, black_box(next.next().unwrap_or(0) + 1), size).unwrap()
                })
            });
        }
    }
    group.finish();
}

fn offline_verify(c: &mut Criterion) {
    let started = Instant::now();
    let mut ndjson = Vec::with_capacity(ONE_MILLION as usize * 260);
    let mut tree = MemoryTree::new();
    for seq in 0..ONE_MILLION {
        let e = event(seq);
        tree.push(leaf_hash(&e.canonical_bytes()));
        serde_json::to_writer(&mut ndjson, &e).unwrap();
        ndjson.push(b'\n');
    }
    let signer = signer();
    let note = signer.sign(ONE_MILLION, proof::root(&tree, ONE_MILLION).unwrap()).note;
    let key = VerifierKey::parse(&signer.verifier_key().to_string()).unwrap();
    eprintln!("prepared {} MB of NDJSON in {:.1?}", ndjson.len() >> 20, started.elapsed());

    let mut group = c.benchmark_group("verify");
    group.sample_size(10).measurement_time(Duration::from_secs(40)).warm_up_time(Duration::from_secs(1));
    group.throughput(Throughput::Elements(ONE_MILLION));
    group.bench_function("offline_1M", |b| {
        b.iter(|| verify::verify_export(black_box(&ndjson[..]), &note, &key, None, None).unwrap())
    });
    group.finish();
}

criterion_group!(benches, append, proofs, offline_verify);
criterion_main!(benches);
