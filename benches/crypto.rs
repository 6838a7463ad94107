//! Seal/open of one field value at several sizes, data-key unwrap, a blind index, and the
//! bearer-token check every request makes (`auth/verify_hs256`).

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use custodia::auth::Authenticator;
use custodia::crypto::{BlindIndexKey, DataKey, MasterKey, MasterKeyring};
use custodia::domain::CustomerId;
use secrecy::SecretString;
use std::hint::black_box;

fn seal_open(c: &mut Criterion) {
    let key = DataKey::generate().unwrap();
    let id = CustomerId::random();
    let mut group = c.benchmark_group("field");
    for size in [32usize, 1024, 16 * 1024, 64 * 1024] {
        let value = vec![b'x'; size];
        group.throughput(Throughput::Bytes(size as u64));
        group.bench_with_input(BenchmarkId::new("seal", size), &value, |b, v| {
            b.iter(|| key.seal(black_box(&id), "email", black_box(v)).unwrap())
        });
        let sealed = key.seal(&id, "email", &value).unwrap();
        group.bench_with_input(BenchmarkId::new("open", size), &sealed, |b, s| {
            b.iter(|| key.open(black_box(&id), "email", black_box(s)).unwrap())
        });
    }
    group.finish();
}

fn key_wrap(c: &mut Criterion) {
    let ring = MasterKeyring::new(MasterKey::from_bytes(&[9u8; 32]).unwrap(), vec![]);
    let id = CustomerId::random();
    let wrapped = ring.wrap_data_key(&id, &DataKey::generate().unwrap()).unwrap();
    c.bench_function("data_key/unwrap", |b| {
        b.iter(|| ring.unwrap_data_key(black_box(&id), black_box(&wrapped)).unwrap())
    });
    c.bench_function("data_key/generate_and_wrap", |b| {
        b.iter(|| ring.wrap_data_key(black_box(&id), &DataKey::generate().unwrap()).unwrap())
    });
}

fn blind_index(c: &mut Criterion) {
    let key = BlindIndexKey::from_bytes(&[7u8; 32]);
    c.bench_function("blind_index/email", |b| {
        b.iter(|| key.compute(black_box("email"), black_box("jane.example@shop.test")))
    });
}

/// `Authenticator::verify` of a valid HS256 token with `iss` and `aud` configured, as the
/// request extractors call it: header checks, signature, claims, role.
fn verify_token(c: &mut Criterion) {
    let secret = "bench-secret-bench-secret-bench-secret-0123";
    let auth = Authenticator::hs256(&SecretString::from(secret))
        .unwrap()
        .with_issuer(Some("https://issuer.example".into()))
        .with_audience(Some("custodia".into()));
    let now = jsonwebtoken::get_current_timestamp();
    let claims = serde_json::json!({
        "sub": "shop-backend", "role": "merchant", "iss": "https://issuer.example",
        "aud": "custodia", "iat": now, "exp": now + 3600,
    });
    let token = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap();
    c.bench_function("auth/verify_hs256", |b| b.iter(|| auth.verify(black_box(&token)).unwrap()));
}

criterion_group!(benches, seal_open, key_wrap, blind_index, verify_token);
criterion_main!(benches);
