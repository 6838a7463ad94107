//! A real store with faults put in its way, for the cases a live server cannot be timed into:
//! writes failing (a full disk), and another node changing a metadata value between this
//! node's read of it and its compare-and-set. Everything else goes to the store inside.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use custodia::audit::AuditLog;
use custodia::audit::checkpoint::CheckpointSigner;
use custodia::crypto::{
    BlindIndex, DataKeyring, MasterKey, MasterKeyring, MissingFile, SigningKey, SystemKeys,
};
use custodia::domain::{CustomerId, Timestamp};
use custodia::policy::PolicySet;
use custodia::store::{
    CustomerRecord, MetaEquals, NodeId, StorageSettings, Store, StoreError, TreeHead, Write, Written,
};
use custodia::vault::Vault;

use crate::helpers::MASTER_KEY;

/// The reference (memory) store, with faults on demand.
pub struct InterposedStore {
    pub inner: Arc<dyn Store>,
    /// While set, `write` and `write_many` fail as a full disk would.
    pub fail_writes: AtomicBool,
    /// `(name, value)`: written to the store just before the next `swap_meta` of `name`, as
    /// another node would between this node's read and its compare-and-set. Used once.
    pub plant_before_swap: Mutex<Option<(String, Vec<u8>)>>,
}

impl InterposedStore {
    /// Over a new, empty memory store.
    pub fn new() -> Arc<InterposedStore> {
        let inner = custodia::store::open(
            &StorageSettings::Memory(Default::default()),
            Arc::new(custodia::audit::tree::Tree),
        )
        .unwrap();
        Arc::new(InterposedStore {
            inner,
            fail_writes: AtomicBool::new(false),
            plant_before_swap: Mutex::new(None),
        })
    }

    /// Whether writes fail now.
    fn failing(&self) -> bool {
        self.fail_writes.load(Ordering::SeqCst)
    }
}

/// A vault over `store` with the shipped policies, the test master key and an epoch-key file in
/// `epoch_dir`, assembled as `startup` does but without a server.
pub async fn vault_over(store: Arc<dyn Store>, epoch_dir: &Path) -> Vault {
    let master = MasterKeyring::new(MasterKey::from_base64(MASTER_KEY).unwrap(), vec![]);
    let (keys, _) = SystemKeys::generate(&master).unwrap();
    let signer =
        CheckpointSigner::new("test/log", SigningKey::from_pkcs8(&keys.audit_signing_pkcs8).unwrap())
            .unwrap();
    let audit = AuditLog::open(Arc::clone(&store), signer, keys.actor_pseudonym_key()).await.unwrap();
    let policies =
        Arc::new(PolicySet::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("policies")).unwrap());
    let (keyring, _) = DataKeyring::open(
        master,
        &epoch_dir.join("epoch-keys"),
        MissingFile::Create,
        Timestamp::now().millis(),
    )
    .unwrap();
    Vault::new(policies, store, audit, keyring, keys)
}

#[async_trait]
impl Store for InterposedStore {
    async fn customer(&self, id: &CustomerId) -> Result<Option<CustomerRecord>, StoreError> {
        self.inner.customer(id).await
    }
    async fn lookup(&self, field: &str, index: &BlindIndex) -> Result<Vec<CustomerId>, StoreError> {
        self.inner.lookup(field, index).await
    }
    async fn customer_ids(
        &self,
        after: Option<CustomerId>,
        limit: usize,
    ) -> Result<Vec<CustomerId>, StoreError> {
        self.inner.customer_ids(after, limit).await
    }
    async fn write(&self, write: Write) -> Result<Written, StoreError> {
        if self.failing() {
            return Err(StoreError::Unavailable("disk full (test)".into()));
        }
        self.inner.write(write).await
    }
    async fn write_many(&self, writes: Vec<Write>) -> Result<Vec<Result<Written, StoreError>>, StoreError> {
        if self.failing() {
            return Err(StoreError::Unavailable("disk full (test)".into()));
        }
        self.inner.write_many(writes).await
    }
    async fn meta(&self, name: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.inner.meta(name).await
    }
    async fn init_meta(&self, name: &str, value: Vec<u8>) -> Result<Vec<u8>, StoreError> {
        self.inner.init_meta(name, value).await
    }
    async fn put_meta(&self, name: &str, value: Vec<u8>) -> Result<(), StoreError> {
        self.inner.put_meta(name, value).await
    }
    async fn swap_meta(&self, current: MetaEquals, value: Vec<u8>) -> Result<bool, StoreError> {
        let planted = self.plant_before_swap.lock().unwrap().take_if(|(name, _)| *name == current.name);
        if let Some((name, other)) = planted {
            self.inner.put_meta(&name, other).await?;
        }
        self.inner.swap_meta(current, value).await
    }
    async fn head(&self) -> Result<TreeHead, StoreError> {
        self.inner.head().await
    }
    async fn nodes(&self, ids: &[NodeId]) -> Result<Vec<Option<[u8; 32]>>, StoreError> {
        self.inner.nodes(ids).await
    }
    async fn audit_events(&self, from: u64, limit: usize) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
        self.inner.audit_events(from, limit).await
    }
    async fn audit_events_for_customer(
        &self,
        customer: &CustomerId,
        after: Option<u64>,
        limit: usize,
    ) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
        self.inner.audit_events_for_customer(customer, after, limit).await
    }
    async fn put_checkpoint(&self, size: u64, note: Vec<u8>) -> Result<Vec<u8>, StoreError> {
        self.inner.put_checkpoint(size, note).await
    }
    async fn latest_checkpoint(&self) -> Result<Option<(u64, Vec<u8>)>, StoreError> {
        self.inner.latest_checkpoint().await
    }
    async fn close(&self) -> Result<(), StoreError> {
        self.inner.close().await
    }
}
