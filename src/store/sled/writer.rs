//! Group commit: one writer thread takes every write waiting for it, checks and integrates them
//! as one group, writes **one** log record for the group, syncs the log once, applies the
//! group's keys to sled and its entries to the audit files, and answers each waiter with its own
//! outcome.
//!
//! Invariants:
//! - Groups are processed one at a time on this thread, so the head a group starts from is the
//!   durable head, and seqs are dense.
//! - Log first: a group's record is written before sled or the audit files see the group, all
//!   under `Shared::apply`, so sled never holds a batch the log lacks, and the flusher (which
//!   rotates the log under the same lock) never cuts a group in half.
//! - Any failure after the log append poisons the store: every later write answers 503 until a
//!   restart replays the log. Otherwise a failed group's seqs could be given to the next group
//!   while the log still holds the failed one, and replay would resurrect it in their place.
//! - A group's log record is synced before sled or the audit files see the group, and its head
//!   (and so its events) becomes visible after that.
//! - Data keys (`key_file.rs`): a group's new key slots are written while it is staged and
//!   synced before its log record; the slots its changes leave behind are zeroed and synced
//!   after sled has the group and before anyone is answered (erasure is real on a 2xx).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc::Receiver;
use std::time::Instant;

use tokio::sync::oneshot;

use super::key_file::SlotOwner;
use super::keys::{
    EntryOwners, WAL_LSN, checkpoint_key, customer_key, encode_entry, encode_pair, encode_record, entry_key,
    meta_key, owner_key,
};
use super::wal::Op;
use super::{Applied, Shared, poisoned_error};
use crate::domain::CustomerId;
use crate::store::{
    CustomerChange, CustomerRecord, IndexEntry, IntegratedLeaf, PendingEvent, StoreError, Write, Written,
};

/// The most jobs one group takes; the rest wait for the next group.
const MAX_GROUP: usize = 1024;

/// Answer to a batch of writes: one outcome per write, or a failure of the whole group.
pub(super) type WritesReply = oneshot::Sender<Result<Vec<Result<Written, StoreError>>, StoreError>>;

/// Work for the writer thread.
pub(super) enum Job {
    /// Data changes with their events.
    Writes { writes: Vec<Write>, reply: WritesReply },
    /// Stores `value` under `key` unless a value is there; answers the stored value.
    InsertIfAbsent { key: Vec<u8>, value: Vec<u8>, reply: oneshot::Sender<Result<Vec<u8>, StoreError>> },
    /// Stores `value` under `key`.
    Put { key: Vec<u8>, value: Vec<u8>, reply: oneshot::Sender<Result<(), StoreError>> },
    /// Stores `value` under `key` if it holds exactly `expected` (`None`: absent); answers
    /// whether it did.
    Swap {
        key: Vec<u8>,
        expected: Option<Vec<u8>>,
        value: Vec<u8>,
        reply: oneshot::Sender<Result<bool, StoreError>>,
    },
    /// Stores a record as it is (its own version) for an absent customer, with no event
    /// (`Store::import`, for a restore into an empty store).
    Import { record: Box<CustomerRecord>, reply: oneshot::Sender<Result<(), StoreError>> },
}

impl Job {
    /// A meta value kept unless present.
    pub(super) fn init_meta(
        name: &str,
        value: Vec<u8>,
        reply: oneshot::Sender<Result<Vec<u8>, StoreError>>,
    ) -> Job {
        Job::InsertIfAbsent { key: meta_key(name), value, reply }
    }

    /// A checkpoint note kept unless one is stored for that size.
    pub(super) fn checkpoint(
        size: u64,
        note: Vec<u8>,
        reply: oneshot::Sender<Result<Vec<u8>, StoreError>>,
    ) -> Job {
        Job::InsertIfAbsent { key: checkpoint_key(size).to_vec(), value: note, reply }
    }

    fn fail(self, error: &StoreError) {
        match self {
            Job::Writes { reply, .. } => drop(reply.send(Err(error.clone()))),
            Job::InsertIfAbsent { reply, .. } => drop(reply.send(Err(error.clone()))),
            Job::Put { reply, .. } => drop(reply.send(Err(error.clone()))),
            Job::Swap { reply, .. } => drop(reply.send(Err(error.clone()))),
            Job::Import { reply, .. } => drop(reply.send(Err(error.clone()))),
        }
    }
}

/// Runs groups until every sender is gone.
pub(super) fn run(shared: &Shared, jobs: &Receiver<Job>) {
    while let Ok(first) = jobs.recv() {
        let mut group = vec![first];
        while group.len() < MAX_GROUP {
            match jobs.try_recv() {
                Ok(job) => group.push(job),
                Err(_) => break,
            }
        }
        commit_group(shared, group);
    }
}

/// What a job will be answered once its group is durable.
enum Answer {
    Writes { reply: WritesReply, outcomes: Vec<Result<(usize, usize), StoreError>> },
    Bytes { reply: oneshot::Sender<Result<Vec<u8>, StoreError>>, value: Result<Vec<u8>, StoreError> },
    Unit { reply: oneshot::Sender<Result<(), StoreError>> },
    Flag { reply: oneshot::Sender<Result<bool, StoreError>>, swapped: Result<bool, StoreError> },
    Done { reply: oneshot::Sender<Result<(), StoreError>>, outcome: Result<(), StoreError> },
}

fn commit_group(shared: &Shared, group: Vec<Job>) {
    let started = Instant::now();
    if shared.poisoned.load(Ordering::Acquire) {
        let error = poisoned_error();
        group.into_iter().for_each(|job| job.fail(&error));
        return;
    }
    let jobs = group.len();
    // invariant: only this thread advances the LSN, so the group's is known before staging
    // (its new key slots carry it).
    let lsn = match shared.apply.lock() {
        Ok(applied) => applied.lsn + 1,
        Err(_) => {
            group.into_iter().for_each(|job| job.fail(&lock_error()));
            return;
        }
    };
    let mut stage = Staging {
        shared,
        lsn,
        overlay: BTreeMap::new(),
        destroyed: Vec::new(),
        wrote_slots: false,
        fatal: None,
    };
    let mut events: Vec<PendingEvent> = Vec::new();
    let mut answers = Vec::with_capacity(group.len());
    for job in group {
        answers.push(match job {
            Job::Writes { writes, reply } => {
                let outcomes = writes
                    .into_iter()
                    .map(|write| {
                        // Checked against what this group staged so far: the group applies
                        // its jobs in order, as if one by one.
                        if let Some(p) = &write.precondition
                            && stage.get(&meta_key(&p.name))? != p.value
                        {
                            return Err(StoreError::PreconditionFailed { name: p.name.clone() });
                        }
                        if let Some(change) = write.change {
                            stage.change(change)?;
                        }
                        let start = events.len();
                        events.extend(write.events);
                        Ok((start, events.len()))
                    })
                    .collect();
                Answer::Writes { reply, outcomes }
            }
            Job::InsertIfAbsent { key, value, reply } => {
                let stored = match stage.get(&key) {
                    Ok(Some(existing)) => Ok(existing),
                    Ok(None) => {
                        stage.put(key, value.clone());
                        Ok(value)
                    }
                    Err(e) => Err(e),
                };
                Answer::Bytes { reply, value: stored }
            }
            Job::Put { key, value, reply } => {
                stage.put(key, value);
                Answer::Unit { reply }
            }
            Job::Swap { key, expected, value, reply } => {
                let swapped = stage.get(&key).map(|current| current == expected);
                if let Ok(true) = swapped {
                    stage.put(key, value);
                }
                Answer::Flag { reply, swapped }
            }
            Job::Import { record, reply } => {
                let outcome = stage.stage(CustomerChange::Put { record, expected_version: None }, true);
                Answer::Done { reply, outcome }
            }
        });
    }
    let result = make_durable(shared, stage, events);
    let first_seq = match result {
        Ok(first_seq) => first_seq,
        Err(e) => {
            shared.poisoned.store(true, Ordering::Release);
            tracing::error!(error = %e, "a group commit failed after its log write; the store refuses writes until a restart");
            let error = poisoned_error();
            for answer in answers {
                match answer {
                    Answer::Writes { reply, .. } => drop(reply.send(Err(error.clone()))),
                    Answer::Bytes { reply, .. } => drop(reply.send(Err(error.clone()))),
                    Answer::Flag { reply, .. } => drop(reply.send(Err(error.clone()))),
                    Answer::Unit { reply } | Answer::Done { reply, .. } => {
                        drop(reply.send(Err(error.clone())))
                    }
                }
            }
            return;
        }
    };
    metrics::histogram!("custodia_group_commit_batch_size").record(jobs as f64);
    metrics::histogram!("custodia_group_commit_flush_seconds").record(started.elapsed().as_secs_f64());
    for answer in answers {
        match answer {
            Answer::Writes { reply, outcomes } => {
                let written = outcomes
                    .into_iter()
                    .map(|o| {
                        o.map(|(start, end)| Written {
                            seqs: (start..end).map(|i| first_seq + i as u64).collect(),
                        })
                    })
                    .collect();
                let _ = reply.send(Ok(written));
            }
            Answer::Bytes { reply, value } => drop(reply.send(value)),
            Answer::Flag { reply, swapped } => drop(reply.send(swapped)),
            Answer::Unit { reply } => drop(reply.send(Ok(()))),
            Answer::Done { reply, outcome } => drop(reply.send(outcome)),
        }
    }
}

/// Integrates the group's events, logs and applies everything, syncs the log and publishes the
/// new head. Returns the seq of the group's first event. Any error here poisons the store.
fn make_durable(
    shared: &Shared,
    mut stage: Staging<'_>,
    events: Vec<PendingEvent>,
) -> Result<u64, StoreError> {
    if let Some(e) = stage.fatal.take() {
        return Err(e);
    }
    let head = shared.head.read().map_err(|_| lock_error())?.clone();
    let first_seq = head.size;
    let (wrote_slots, group_lsn) = (stage.wrote_slots, stage.lsn);
    let ops = stage.into_ops();
    if ops.is_empty() && events.is_empty() {
        return Ok(first_seq);
    }
    let (leaves, new_head) = shared.integrator.integrate(&head, events);
    let mut applied = shared.apply.lock().map_err(|_| lock_error())?;
    // invariant: a failure poisons the store before the apply lock is let go, so a flush
    // waiting for the lock finds the store poisoned and keeps the log (`flusher.rs`).
    let logged = log_and_apply(shared, &mut applied, group_lsn, wrote_slots, ops, &leaves, new_head.size);
    if logged.is_err() {
        shared.poisoned.store(true, Ordering::Release);
    }
    drop(applied);
    logged?;
    *shared.head.write().map_err(|_| lock_error())? = new_head;
    Ok(first_seq)
}

/// The part of a group under the apply lock: logs it, syncs the log, applies it to sled, the
/// key file and the audit files.
fn log_and_apply(
    shared: &Shared,
    applied: &mut Applied,
    group_lsn: u64,
    wrote_slots: bool,
    mut ops: Vec<Op>,
    leaves: &[IntegratedLeaf],
    new_size: u64,
) -> Result<(), StoreError> {
    let touches_sled = !ops.is_empty();
    let lsn = applied.lsn + 1;
    if lsn != group_lsn {
        return Err(StoreError::Unavailable("the log sequence moved during a group".into()));
    }
    // New key slots are durable before the log record that names them.
    if wrote_slots {
        shared.keys.sync()?;
    }
    if touches_sled {
        ops.push(Op::Put(meta_key(WAL_LSN), encode_pair(lsn, new_size)));
    }
    ops.extend(leaves.iter().map(|leaf| Op::Audit(leaf.seq, encode_entry(leaf))));
    shared.wal.append(lsn, &ops)?;
    applied.lsn = lsn;
    #[cfg(test)]
    if shared.fail_after_append.load(Ordering::Acquire) {
        return Err(StoreError::Unavailable("injected failure after the log append".into()));
    }
    // Synced before sled or the audit files see the group: a flush of either (the flusher
    // runs between groups) then never captures a group the log could still lose, and no
    // reader is shown a change that is not durable. The sync holds no segment lock.
    shared.wal.sync().map_err(StoreError::Unavailable)?;
    if touches_sled {
        super::apply(&shared.tree, &shared.records, lsn, &ops)?;
    }
    // Erasure is real before it is answered: destroyed keys are zeros on disk, synced, and
    // only then reusable (see `key_file.rs`).
    let mut destroyed = Vec::new();
    for op in &ops {
        if let Op::DestroyKey { slot, owner } = op
            && shared.keys.destroy(*slot, *owner)?
        {
            destroyed.push(*slot);
        }
    }
    if !destroyed.is_empty() {
        shared.keys.sync()?;
        shared.keys.release(destroyed)?;
    }
    let mut tail = shared.history_tail.write().map_err(|_| lock_error())?;
    for (leaf, op) in leaves.iter().zip(ops.iter().filter(|op| matches!(op, Op::Audit(..)))) {
        if let Op::Audit(seq, entry) = op {
            shared.audit.push(*seq, Arc::from(entry.as_slice()))?;
        }
        if let Some(customer) = leaf.customer {
            tail.insert((customer, leaf.seq));
        }
    }
    Ok(())
}

fn lock_error() -> StoreError {
    StoreError::Unavailable("store lock poisoned".into())
}

/// A group's writes, checked against sled as changed by the group's earlier writes.
struct Staging<'a> {
    shared: &'a Shared,
    /// The group's log sequence number.
    lsn: u64,
    /// Keys written (`Some`) or removed (`None`) by the group so far, in key order.
    overlay: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
    /// Key slots the group's changes leave behind, destroyed once its log record is durable.
    destroyed: Vec<Op>,
    /// Whether the group wrote a new key slot (synced before its log record).
    wrote_slots: bool,
    /// A key-file failure after a slot was written: the group fails and poisons the store, so
    /// the slot stays an orphan that the next open zeroes.
    fatal: Option<StoreError>,
}

impl Staging<'_> {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        match self.overlay.get(key) {
            Some(value) => Ok(value.clone()),
            None => self.shared.stored(key),
        }
    }

    /// The destruction of `slot`, to run once the group is durable. The slot must hold
    /// `customer`'s key: anything else fails the write, rather than destroy another customer's
    /// key or acknowledge an erasure whose key stays.
    fn destruction(&self, slot: u64, customer: &CustomerId) -> Result<Op, StoreError> {
        match self.shared.keys.owner(slot)? {
            Some(owner) if owner.customer == *customer => Ok(Op::DestroyKey { slot, owner }),
            _ => Err(StoreError::Corrupt(format!(
                "key slot {slot} does not hold the key of the record naming it"
            ))),
        }
    }

    /// The slot for `record`'s data key: the current one if the key is unchanged, else a new
    /// slot (and the old one destroyed with the group).
    fn key_slot(
        &mut self,
        record: &CustomerRecord,
        current: Option<&(CustomerRecord, Option<u64>)>,
    ) -> Result<u64, StoreError> {
        let current_slot = current.and_then(|(old, slot)| slot.map(|slot| (slot, &old.data_key)));
        if let Some((slot, key)) = current_slot
            && *key == record.data_key
        {
            return Ok(slot);
        }
        let payload =
            postcard::to_stdvec(&record.data_key).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        // Everything that can fail on its own comes before the slot write: after it, a failure
        // must fail the group (see `fatal`).
        let old = current_slot.map(|(slot, _)| self.destruction(slot, &record.id)).transpose()?;
        let owner = SlotOwner { customer: record.id, lsn: self.lsn };
        let slot = self.shared.keys.write(owner, &payload).inspect_err(|e| self.fatal = Some(e.clone()))?;
        self.wrote_slots = true;
        self.destroyed.extend(old);
        Ok(slot)
    }

    fn put(&mut self, key: Vec<u8>, value: Vec<u8>) {
        self.overlay.insert(key, Some(value));
    }

    fn remove(&mut self, key: Vec<u8>) {
        self.overlay.insert(key, None);
    }

    /// How a change of customer `id` from entries `old` to `new` moves it through the
    /// blind-index entries: the keys to write, and the owner count each moved (or `checked`)
    /// entry is left with, read as the group has left them (nothing is staged). An entry's
    /// second owner turns it from [`EntryOwners::Sole`] into counted owner keys; it stays
    /// counted until its last owner leaves. Errors: `Corrupt` for an entry that disagrees with
    /// the record (a customer leaving an entry it does not own, or joining one naming it).
    fn membership<'e>(
        &self,
        id: CustomerId,
        old: &'e [IndexEntry],
        new: &'e [IndexEntry],
        checked: impl Iterator<Item = &'e IndexEntry>,
    ) -> Result<Membership, StoreError> {
        let keys = |entries: &[IndexEntry]| -> BTreeSet<Vec<u8>> {
            entries.iter().map(|e| entry_key(&e.field, &e.index)).collect()
        };
        let (was, is) = (keys(old), keys(new));
        let moves: BTreeMap<Vec<u8>, bool> = was
            .difference(&is)
            .map(|key| (key.clone(), false))
            .chain(is.difference(&was).map(|key| (key.clone(), true)))
            .collect();
        let mut membership = Membership::default();
        for key in moves.keys().cloned().chain(checked.map(|e| entry_key(&e.field, &e.index))) {
            if membership.counts.contains_key(&key) {
                continue;
            }
            let stored = self.get(&key)?.map(|value| EntryOwners::decode(&value)).transpose()?;
            let joins = moves.get(&key).copied();
            let mut owner_keys = |owner: &CustomerId, present: bool| {
                membership.writes.push((owner_key(&key, owner), present.then(Vec::new)));
            };
            let after = match (stored, joins) {
                (stored, None) => stored,
                (None, Some(true)) => Some(EntryOwners::Sole(id)),
                (Some(EntryOwners::Sole(other)), Some(true)) if other != id => {
                    owner_keys(&other, true);
                    owner_keys(&id, true);
                    Some(EntryOwners::Counted(2))
                }
                (Some(EntryOwners::Counted(n)), Some(true)) => {
                    owner_keys(&id, true);
                    Some(EntryOwners::Counted(n + 1))
                }
                (Some(EntryOwners::Sole(owner)), Some(false)) if owner == id => None,
                (Some(EntryOwners::Counted(n)), Some(false)) if n > 0 => {
                    owner_keys(&id, false);
                    (n > 1).then(|| EntryOwners::Counted(n - 1))
                }
                // Leaving an entry it does not own, or joining one that names it already.
                (_, Some(_)) => {
                    return Err(StoreError::Corrupt(
                        "a blind-index entry disagrees with its customer's record".into(),
                    ));
                }
            };
            membership.counts.insert(key.clone(), after.map_or(0, EntryOwners::count));
            if joins.is_some() {
                membership.writes.push((key, after.map(EntryOwners::encode)));
            }
        }
        Ok(membership)
    }

    /// Stages the keys of a customer's moves through the blind-index entries.
    fn put_membership(&mut self, membership: Membership) {
        for (key, value) in membership.writes {
            match value {
                Some(value) => self.put(key, value),
                None => self.remove(key),
            }
        }
    }

    /// Checks a change (version, unique entries) and stages its keys; on an error nothing of it
    /// is staged.
    fn change(&mut self, change: CustomerChange) -> Result<(), StoreError> {
        self.stage(change, false)
    }

    /// As `change`; `imported`: a put over an absent customer that keeps the record's version.
    fn stage(&mut self, change: CustomerChange, imported: bool) -> Result<(), StoreError> {
        let id = match &change {
            CustomerChange::Put { record, .. } => record.id,
            CustomerChange::Delete { id, .. } => *id,
        };
        let current = self.get(&customer_key(&id))?.map(|bytes| self.shared.record(&bytes)).transpose()?;
        let expected = match &change {
            CustomerChange::Put { expected_version, .. } => *expected_version,
            CustomerChange::Delete { expected_version, .. } => Some(*expected_version),
        };
        if current.as_ref().map(|(r, _)| r.version) != expected {
            return Err(StoreError::VersionConflict);
        }
        let old_entries: &[IndexEntry] = current.as_ref().map_or(&[], |(r, _)| &r.index_entries);
        match change {
            CustomerChange::Put { mut record, expected_version } => {
                if !imported && record.version != expected_version.unwrap_or(0) + 1 {
                    return Err(StoreError::VersionConflict);
                }
                // A unique entry new to the record (a new value, or one the policies made
                // unique since) must have no owner but this customer once the change is made.
                let added_unique: Vec<&IndexEntry> =
                    record.index_entries.iter().filter(|e| e.unique && !old_entries.contains(e)).collect();
                // Read and changed aside before the slot write: below it nothing may fail but
                // the encoding (see `fatal`).
                let membership =
                    self.membership(id, old_entries, &record.index_entries, added_unique.iter().copied())?;
                for entry in added_unique {
                    if membership.counts[&entry_key(&entry.field, &entry.index)] > 1 {
                        return Err(StoreError::UniqueViolation { field: entry.field.clone() });
                    }
                }
                let slot = self.key_slot(&record, current.as_ref())?;
                // invariant: nothing below fails but the encoding, and a failure after a slot
                // was written fails the group (an orphan slot of a committed group would stay).
                let encoded =
                    encode_record(&mut record, slot).inspect_err(|e| self.fatal = Some(e.clone()))?;
                self.put_membership(membership);
                self.put(customer_key(&id).to_vec(), encoded);
            }
            CustomerChange::Delete { .. } => {
                // Everything that can fail comes before anything is staged.
                let membership = self.membership(id, old_entries, &[], std::iter::empty())?;
                let destruction = current
                    .as_ref()
                    .and_then(|(_, slot)| *slot)
                    .map(|slot| self.destruction(slot, &id))
                    .transpose()?;
                self.destroyed.extend(destruction);
                self.put_membership(membership);
                self.remove(customer_key(&id).to_vec());
            }
        }
        Ok(())
    }

    fn into_ops(self) -> Vec<Op> {
        self.overlay
            .into_iter()
            .map(|(key, value)| match value {
                Some(value) => Op::Put(key, value),
                None => Op::Remove(key),
            })
            .chain(self.destroyed)
            .collect()
    }
}

/// How one change moves a customer through the blind-index entries.
#[derive(Default)]
struct Membership {
    /// The keys to put (`Some`) or remove: entry keys and owner keys.
    writes: Vec<(Vec<u8>, Option<Vec<u8>>)>,
    /// The owner count of every moved (or checked) entry once the change is made, by entry key
    /// (`keys::entry_key`).
    counts: BTreeMap<Vec<u8>, u64>,
}
