//! Store contract tests: `contract.rs` is written once against `dyn Store` and included whole
//! into one module per backend, so every test runs on every backend, and a new backend is one
//! more module here.

mod crash_windows;
#[path = "../support/pg.rs"]
mod pg;
mod postgres_only;
mod postgres_review;
mod record_file;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use custodia::audit::tree::Tree;
use custodia::crypto::{DataKey, MasterKey, MasterKeyring};
use custodia::domain::{CustomerId, Timestamp};
use custodia::store::{CustomerChange, CustomerRecord, IndexEntry, MemoryData, StorageSettings, Store};

/// A backend under test. Every `open` gives a new handle over the same data, as a restart does.
pub struct Fixture {
    settings: StorageSettings,
    _dir: Option<tempfile::TempDir>,
    /// The PostgreSQL database of the test, dropped after it.
    _db: Option<pg::Database>,
}

impl Fixture {
    /// A handle over the fixture's data.
    pub fn open(&self) -> Arc<dyn Store> {
        custodia::store::open(&self.settings, Arc::new(Tree)).unwrap()
    }
}

/// The creation of customer `id` owning a unique `email` entry and a non-unique `phone` entry.
pub fn create_with_two_entries(id: CustomerId) -> Option<CustomerChange> {
    let entries = vec![
        IndexEntry { field: "email".into(), index: [1; 32], unique: true, epoch: None },
        IndexEntry { field: "phone".into(), index: [2; 32], unique: false, epoch: None },
    ];
    Some(CustomerChange::Put { record: Box::new(record(id, 1, entries)), expected_version: None })
}

/// A record of customer `id` at `version` owning `entries`, with a real wrapped data key.
pub fn record(id: CustomerId, version: u64, entries: Vec<IndexEntry>) -> CustomerRecord {
    let ring = MasterKeyring::new(MasterKey::from_bytes(&[1; 32]).unwrap(), vec![]);
    CustomerRecord {
        id,
        version,
        data_key: ring.wrap_data_key(&id, &DataKey::generate().unwrap()).unwrap(),
        fields: BTreeMap::new(),
        index_entries: entries,
        consents: BTreeMap::new(),
        objections: BTreeSet::new(),
        restricted: false,
        payment_methods: vec![],
        created_at: Timestamp::now(),
        updated_at: Timestamp::now(),
    }
}

mod sled {
    use super::*;

    fn fixture() -> Option<Fixture> {
        let dir = tempfile::tempdir().unwrap();
        let settings = StorageSettings::Sled { dir: dir.path().join("store"), cache_bytes: 8 << 20 };
        Some(Fixture { settings, _dir: Some(dir), _db: None })
    }

    include!("contract.rs");
}

mod memory {
    use super::*;

    fn fixture() -> Option<Fixture> {
        Some(Fixture { settings: StorageSettings::Memory(MemoryData::default()), _dir: None, _db: None })
    }

    include!("contract.rs");
}

/// PostgreSQL, when `CUSTODIA_TEST_DATABASE_URL` names a server: each test gets a database of
/// its own, created from that URL.
mod postgres {
    use super::*;

    fn fixture() -> Option<Fixture> {
        let db = pg::Database::create()?;
        Some(Fixture { settings: StorageSettings::Postgres(db.settings()), _dir: None, _db: Some(db) })
    }

    include!("contract.rs");
}
