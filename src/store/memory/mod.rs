//! The reference backend: everything in process memory behind one lock, lost at exit.
//!
//! It states the contract in its simplest form (each write checked and applied as one step
//! under the lock, its events integrated inline) and runs the same contract tests as every
//! other backend. Never used to serve; `StorageSettings::Memory` exists for tests.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;

use super::{
    CustomerChange, CustomerRecord, Hash, IndexEntry, Integrator, MetaEquals, NodeId, Store, StoreError,
    TreeHead, Write, Written,
};
use crate::crypto::BlindIndex;
use crate::domain::CustomerId;

/// Records, index, log and metadata in memory.
pub struct MemoryStore {
    data: MemoryData,
    /// This handle is closed; the data stays for the next handle opened over it.
    closed: AtomicBool,
    integrator: Arc<dyn Integrator>,
}

/// The data of a memory store: opening [`super::StorageSettings::Memory`] twice with the same
/// `MemoryData` gives two handles over one store, as a restart over a persistent backend would.
#[derive(Clone, Default)]
pub struct MemoryData(Arc<Mutex<State>>);

impl std::fmt::Debug for MemoryData {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MemoryData")
    }
}

#[derive(Default)]
struct State {
    customers: BTreeMap<CustomerId, CustomerRecord>,
    /// (field, blind index) → owners.
    index: HashMap<(String, [u8; 32]), BTreeSet<CustomerId>>,
    head: TreeHead,
    events: Vec<Vec<u8>>,
    nodes: HashMap<NodeId, Hash>,
    history: BTreeSet<(CustomerId, u64)>,
    checkpoints: BTreeMap<u64, Vec<u8>>,
    meta: HashMap<String, Vec<u8>>,
}

impl MemoryStore {
    /// A handle over `data` whose events are integrated by `integrator`.
    pub fn open(data: &MemoryData, integrator: Arc<dyn Integrator>) -> Self {
        MemoryStore { data: data.clone(), closed: AtomicBool::new(false), integrator }
    }

    fn state(&self) -> Result<std::sync::MutexGuard<'_, State>, StoreError> {
        if self.closed.load(Ordering::Acquire) {
            return Err(StoreError::Unavailable("the store is closed".into()));
        }
        self.data.0.lock().map_err(|_| StoreError::Unavailable("memory store lock poisoned".into()))
    }

    /// Checks and applies one write under the lock: all of it, or nothing.
    fn apply(&self, state: &mut State, write: Write) -> Result<Written, StoreError> {
        if let Some(p) = &write.precondition
            && state.meta.get(&p.name) != p.value.as_ref()
        {
            return Err(StoreError::PreconditionFailed { name: p.name.clone() });
        }
        if let Some(change) = &write.change {
            state.check(change)?;
        }
        if let Some(change) = write.change {
            state.change(change);
        }
        let (leaves, head) = self.integrator.integrate(&state.head, write.events);
        let mut seqs = Vec::with_capacity(leaves.len());
        for leaf in leaves {
            for (level, index, hash) in leaf.nodes {
                state.nodes.insert((level, index), hash);
            }
            if let Some(customer) = leaf.customer {
                state.history.insert((customer, leaf.seq));
            }
            state.events.push(leaf.event);
            seqs.push(leaf.seq);
        }
        state.head = head;
        Ok(Written { seqs })
    }
}

impl State {
    /// The version and unique checks of a change, against what is stored.
    fn check(&self, change: &CustomerChange) -> Result<(), StoreError> {
        let (id, expected) = match change {
            CustomerChange::Put { record, expected_version } => (record.id, *expected_version),
            CustomerChange::Delete { id, expected_version } => (*id, Some(*expected_version)),
        };
        if self.customers.get(&id).map(|r| r.version) != expected {
            return Err(StoreError::VersionConflict);
        }
        if let CustomerChange::Put { record, expected_version } = change {
            if record.version != expected_version.unwrap_or(0) + 1 {
                return Err(StoreError::VersionConflict);
            }
            for entry in record.index_entries.iter().filter(|e| e.unique) {
                let owners = self.index.get(&(entry.field.clone(), entry.index));
                if owners.is_some_and(|o| o.iter().any(|owner| owner != &id)) {
                    return Err(StoreError::UniqueViolation { field: entry.field.clone() });
                }
            }
        }
        Ok(())
    }

    fn change(&mut self, change: CustomerChange) {
        let id = match &change {
            CustomerChange::Put { record, .. } => record.id,
            CustomerChange::Delete { id, .. } => *id,
        };
        if let Some(old) = self.customers.remove(&id) {
            self.unindex(&id, &old.index_entries);
        }
        if let CustomerChange::Put { record, .. } = change {
            for entry in &record.index_entries {
                self.index.entry((entry.field.clone(), entry.index)).or_default().insert(id);
            }
            self.customers.insert(id, *record);
        }
    }

    fn unindex(&mut self, id: &CustomerId, entries: &[IndexEntry]) {
        for entry in entries {
            let key = (entry.field.clone(), entry.index);
            if let Some(owners) = self.index.get_mut(&key) {
                owners.remove(id);
                if owners.is_empty() {
                    self.index.remove(&key);
                }
            }
        }
    }
}

#[async_trait]
impl Store for MemoryStore {
    async fn customer(&self, id: &CustomerId) -> Result<Option<CustomerRecord>, StoreError> {
        Ok(self.state()?.customers.get(id).cloned())
    }

    async fn lookup(&self, field: &str, index: &BlindIndex) -> Result<Vec<CustomerId>, StoreError> {
        let state = self.state()?;
        Ok(state
            .index
            .get(&(field.to_owned(), index.0))
            .map_or_else(Vec::new, |o| o.iter().copied().collect()))
    }

    async fn customer_ids(
        &self,
        after: Option<CustomerId>,
        limit: usize,
    ) -> Result<Vec<CustomerId>, StoreError> {
        let state = self.state()?;
        let ids = state.customers.keys().filter(|id| after.is_none_or(|a| **id > a));
        Ok(ids.take(limit).copied().collect())
    }

    async fn write(&self, write: Write) -> Result<Written, StoreError> {
        let mut state = self.state()?;
        self.apply(&mut state, write)
    }

    async fn write_many(&self, writes: Vec<Write>) -> Result<Vec<Result<Written, StoreError>>, StoreError> {
        let mut state = self.state()?;
        Ok(writes.into_iter().map(|w| self.apply(&mut state, w)).collect())
    }

    async fn meta(&self, name: &str) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.state()?.meta.get(name).cloned())
    }

    async fn init_meta(&self, name: &str, value: Vec<u8>) -> Result<Vec<u8>, StoreError> {
        Ok(self.state()?.meta.entry(name.to_owned()).or_insert(value).clone())
    }

    async fn put_meta(&self, name: &str, value: Vec<u8>) -> Result<(), StoreError> {
        self.state()?.meta.insert(name.to_owned(), value);
        Ok(())
    }

    async fn swap_meta(&self, current: MetaEquals, value: Vec<u8>) -> Result<bool, StoreError> {
        let mut state = self.state()?;
        if state.meta.get(&current.name) != current.value.as_ref() {
            return Ok(false);
        }
        state.meta.insert(current.name, value);
        Ok(true)
    }

    async fn head(&self) -> Result<TreeHead, StoreError> {
        Ok(self.state()?.head.clone())
    }

    async fn nodes(&self, ids: &[NodeId]) -> Result<Vec<Option<Hash>>, StoreError> {
        let state = self.state()?;
        Ok(ids.iter().map(|id| state.nodes.get(id).copied()).collect())
    }

    async fn audit_events(&self, from: u64, limit: usize) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
        let state = self.state()?;
        let from = usize::try_from(from).unwrap_or(usize::MAX);
        Ok(state
            .events
            .iter()
            .enumerate()
            .skip(from)
            .take(limit)
            .map(|(seq, e)| (seq as u64, e.clone()))
            .collect())
    }

    async fn audit_events_for_customer(
        &self,
        customer: &CustomerId,
        after: Option<u64>,
        limit: usize,
    ) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
        let state = self.state()?;
        let start = after.map_or(0, |a| a.saturating_add(1));
        Ok(state
            .history
            .range((*customer, start)..=(*customer, u64::MAX))
            .take(limit)
            .map(|(_, seq)| (*seq, state.events[*seq as usize].clone()))
            .collect())
    }

    async fn put_checkpoint(&self, size: u64, note: Vec<u8>) -> Result<Vec<u8>, StoreError> {
        Ok(self.state()?.checkpoints.entry(size).or_insert(note).clone())
    }

    async fn latest_checkpoint(&self) -> Result<Option<(u64, Vec<u8>)>, StoreError> {
        Ok(self.state()?.checkpoints.last_key_value().map(|(size, note)| (*size, note.clone())))
    }

    async fn import(&self, record: CustomerRecord) -> Result<(), StoreError> {
        let mut state = self.state()?;
        let put =
            CustomerChange::Put { expected_version: record.version.checked_sub(1), record: Box::new(record) };
        let CustomerChange::Put { record, .. } = &put else { unreachable!("built as a put") };
        if state.customers.contains_key(&record.id) {
            return Err(StoreError::VersionConflict);
        }
        for entry in record.index_entries.iter().filter(|e| e.unique) {
            let owners = state.index.get(&(entry.field.clone(), entry.index));
            if owners.is_some_and(|o| o.iter().any(|owner| owner != &record.id)) {
                return Err(StoreError::UniqueViolation { field: entry.field.clone() });
            }
        }
        state.change(put);
        Ok(())
    }

    async fn close(&self) -> Result<(), StoreError> {
        self.closed.store(true, Ordering::Release);
        Ok(())
    }
}
