//! Store contract tests: `contract.rs` is written once against `dyn Store` and included whole
//! into one module per backend, so every test runs on every backend, and a new backend is one
//! more module here.

mod crash_windows;

use std::sync::Arc;

use custodia::audit::tree::Tree;
use custodia::store::{MemoryData, StorageSettings, Store};

/// A backend under test. Every `open` gives a new handle over the same data, as a restart does.
pub struct Fixture {
    settings: StorageSettings,
    _dir: Option<tempfile::TempDir>,
}

impl Fixture {
    /// A handle over the fixture's data.
    pub fn open(&self) -> Arc<dyn Store> {
        custodia::store::open(&self.settings, Arc::new(Tree)).unwrap()
    }
}

mod sled {
    use super::*;

    fn fixture() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let settings = StorageSettings::Sled { dir: dir.path().join("store"), cache_bytes: 8 << 20 };
        Fixture { settings, _dir: Some(dir) }
    }

    include!("contract.rs");
}

mod memory {
    use super::*;

    fn fixture() -> Fixture {
        Fixture { settings: StorageSettings::Memory(MemoryData::default()), _dir: None }
    }

    include!("contract.rs");
}
