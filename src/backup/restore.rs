//! `custodia restore --from FILE [--log DIR]`: a backup into an empty data directory or
//! database, with every erasure recorded after the backup point applied again before anyone is
//! served, and the log kept whole.
//!
//! Order: the target must be empty (else nothing changes); the backup must verify in full; the
//! export, if given, must verify like `audit verify` (leaves, root, signature) under the
//! backup's own key and agree with the backup's log where both reach. Then the log is
//! re-appended event by event (the backup's, then the export's newer events, original seqs and
//! times, as `store copy` does), the records imported except what a later erasure or purge
//! removed, the metadata and both signed checkpoints stored (each root recomputed first), and a
//! `store.restore` event recorded through the vault, which also proves the master key and the
//! epoch-key file open the restored store. On sled all of that happens in a directory beside
//! the store, renamed into place only at the end.
//!
//! "After the backup point" means seq ≥ `H1` (see [`super::take`]): the backup's window
//! `[H1, H2)` counts, since its records may predate those events.

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde_json::Value;

use super::BackupError;
use super::format::{Item, Reader};
use crate::audit::counters::change;
use crate::audit::merkle::{Frontier, Hash};
use crate::audit::verify::event_leaf;
use crate::audit::{Action, Event, Outcome, jcs};
use crate::config::Settings;
use crate::copy::{EVENTS_PER_WRITE, append_leaves, put_verified_checkpoint, refuse_unless_empty};
use crate::crypto::KeyId;
use crate::domain::{CustomerId, Timestamp};
use crate::error::Error;
use crate::store::{CustomerRecord, StorageSettings, Store};

/// Where the restore builds a sled store before renaming it into `<data dir>/store`. While it
/// exists without `<data dir>/store` beside it, a restore stopped half-way: `serve` refuses to
/// start, and the next `restore` removes it and starts over.
pub const STAGING: &str = ".restoring";

/// The store's record of a restore in progress: `started` from before the first record is
/// written until the `store.restore` event is recorded, then `finished`. Not in
/// [`crate::vault::META_NAMES`] (never in a backup).
pub const RESTORE_STATE: &str = "restore.state";

/// Refuses a store whose restore did not finish (`RESTORE_STATE` is `started`): on PostgreSQL
/// a restore killed or failed half-way leaves its rows behind.
pub async fn refuse_unfinished(store: &dyn Store) -> Result<(), Error> {
    if store.meta(RESTORE_STATE).await?.as_deref() == Some(b"started") {
        return Err(refused(
            "a restore into this store did not finish: it holds a partial copy of a backup, and \
             serving it would fork the audit log. Drop and recreate the database (or schema), then run \
             `custodia restore` again"
                .into(),
        ));
    }
    Ok(())
}

/// Refuses a sled data directory holding a restore's staging directory and no store: a
/// restore stopped half-way (run `custodia restore` again: it starts over).
pub fn refuse_unfinished_dir(settings: &Settings) -> Result<(), Error> {
    if let StorageSettings::Sled { dir, .. } = settings.storage() {
        let staging = settings.data_dir.join(STAGING);
        if staging.exists() && !dir.exists() {
            return Err(refused(format!(
                "a restore into {} did not finish ({} is left): run `custodia restore` again (it \
                 starts over), or remove {} to start an empty vault",
                settings.data_dir.display(),
                staging.display(),
                staging.display()
            )));
        }
    }
    Ok(())
}

/// What a restore did.
#[derive(Debug, Clone)]
pub struct Restored {
    /// The backup point of the backup.
    pub backup_point: u64,
    /// When the backup was taken (RFC 3339 UTC, from its signed header).
    pub created: String,
    /// The events the backup held, and their root.
    pub backup_size: u64,
    /// The backup's root at `backup_size`.
    pub backup_root: Hash,
    /// Events from the newer export re-appended after the backup's.
    pub replayed: u64,
    /// Customer records imported.
    pub records: u64,
    /// `customer.erase` events recorded after the backup point (each applied: the customer's
    /// record, if the backup held it, was not imported).
    pub erasures: u64,
    /// Records of the backup left out because their customer was erased after the backup point.
    pub erased_records: u64,
    /// `retention.purge` events recorded after the backup point (each applied: the fields it
    /// names were not imported unless written again after it).
    pub purges: u64,
    /// Events after the backup's log that describe changes of customers not erased since,
    /// which no record here holds: lost with the disk.
    pub not_restored: u64,
    /// Customers put under restriction of processing (Art. 18) because a consent withdrawal
    /// after the backup point could not be written again (ids only; their records were
    /// imported with `restricted` set). Lift it through the API once the consent is reviewed.
    pub restricted: Vec<String>,
    /// `payment_method.delete`, `objection.update` and `restriction.update` events after the
    /// backup point applied again to the records.
    pub reapplied: u64,
    /// The size of the newest signed checkpoint stored (the export's, else the backup's).
    pub checkpoint: Option<u64>,
    /// The log's size after the `store.restore` event.
    pub size: u64,
    /// Records whose data key is wrapped under an epoch the epoch-key file no longer holds
    /// (destroyed since the backup): they are restored but cannot be opened (README, the backup
    /// trade-off).
    pub unopenable: u64,
}

/// What happened after the backup point, from the events.
#[derive(Default)]
struct After {
    erased: HashSet<CustomerId>,
    erasures: u64,
    /// customer → (time of the purge in ms, fields purged).
    purges: HashMap<CustomerId, Vec<(i64, Vec<String>)>>,
    purge_count: u64,
    /// Changes recorded after the backup's log, by customer.
    later_changes: HashMap<Option<CustomerId>, u64>,
    /// A customer's choices and deletions after the backup point, in log order, re-applied to
    /// the record (each sets a state, so applying one the record already holds is harmless).
    reapply: HashMap<CustomerId, Vec<Reapply>>,
}

/// A change after the backup point that the restore makes again from its event alone.
#[derive(Debug, Clone)]
enum Reapply {
    /// `payment_method.delete` of this token (its event names `payment_methods/<token>`).
    DropMethod(String),
    /// `objection.update` of a purpose: set (`true`) or lifted.
    Objection(String, bool),
    /// `restriction.update`: set or lifted.
    Restriction(bool),
    /// A consent withdrawal for this purpose: its event does not hold the consent record
    /// (source, notice), so it cannot be written again. If the record still shows the purpose
    /// granted, the customer is put under restriction of processing (GDPR Art. 18) instead, so
    /// the withdrawal is never silently undone.
    LostWithdrawal(String),
}

impl After {
    /// Notes one allowed event; `after_point`: recorded at or after the backup point (counted
    /// in the report); `beyond_backup`: past the backup's log (its change is not in a record).
    fn note(&mut self, bytes: &[u8], beyond_backup: bool, after_point: bool) -> Result<(), BackupError> {
        let event: Event = serde_json::from_slice(bytes)
            .map_err(|e| BackupError::Refused(format!("an event does not parse: {e}")))?;
        if event.outcome != Outcome::Allowed {
            return Ok(());
        }
        let customer = event.customer_id.as_deref().and_then(|id| CustomerId::from_str(id).ok());
        match event.action {
            Action::CustomerErase => {
                if let Some(id) = customer {
                    self.erased.insert(id);
                    self.erasures += u64::from(after_point);
                }
            }
            Action::RetentionPurge => {
                if let Some(id) = customer {
                    let at = Timestamp::parse_rfc3339(&event.time).map(|t| t.millis()).unwrap_or(i64::MAX);
                    self.purges.entry(id).or_default().push((at, event.fields.unwrap_or_default()));
                    self.purge_count += u64::from(after_point);
                }
            }
            Action::PaymentMethodDelete
            | Action::ObjectionUpdate
            | Action::RestrictionUpdate
            | Action::ConsentUpdate
                if after_point =>
            {
                let reasons = event.reason.unwrap_or_default();
                let has = |code: &str| reasons.iter().any(|r| r == code);
                let change = match event.action {
                    Action::PaymentMethodDelete => event
                        .fields
                        .unwrap_or_default()
                        .iter()
                        .find_map(|f| f.strip_prefix("payment_methods/"))
                        .map(|token| Reapply::DropMethod(token.to_owned())),
                    Action::ObjectionUpdate => {
                        let purpose = event.purpose.clone().unwrap_or_default();
                        if has(change::OBJECTED) {
                            Some(Reapply::Objection(purpose, true))
                        } else if has(change::LIFTED) {
                            Some(Reapply::Objection(purpose, false))
                        } else {
                            None
                        }
                    }
                    Action::RestrictionUpdate if has(change::RESTRICTED) => Some(Reapply::Restriction(true)),
                    Action::RestrictionUpdate if has(change::LIFTED) => Some(Reapply::Restriction(false)),
                    Action::ConsentUpdate if has(change::WITHDRAWN) => {
                        Some(Reapply::LostWithdrawal(event.purpose.clone().unwrap_or_default()))
                    }
                    _ => None,
                };
                if let (Some(id), Some(change)) = (customer, change) {
                    self.reapply.entry(id).or_default().push(change);
                }
                // A consent change past the backup's log is lost (the record does not hold it);
                // the others are made again above.
                if beyond_backup && event.action == Action::ConsentUpdate {
                    *self.later_changes.entry(customer).or_default() += 1;
                }
            }
            Action::CustomerCreate | Action::CustomerUpdate | Action::PaymentMethodCreate
                if beyond_backup =>
            {
                *self.later_changes.entry(customer).or_default() += 1;
            }
            _ => {}
        }
        Ok(())
    }

    /// The record as the events after the backup point left it, or `None` if erased.
    fn apply(&self, mut record: CustomerRecord) -> Option<CustomerRecord> {
        if self.erased.contains(&record.id) {
            return None;
        }
        for (at, fields) in self.purges.get(&record.id).into_iter().flatten() {
            // A field written again after the purge is the new value, kept.
            let purged: Vec<&String> = fields
                .iter()
                .filter(|name| record.fields.get(*name).is_some_and(|f| f.written_at.millis() <= *at))
                .collect();
            for name in &purged {
                record.fields.remove(*name);
            }
            record.index_entries.retain(|e| !purged.contains(&&e.field));
        }
        for change in self.reapply.get(&record.id).into_iter().flatten() {
            match change {
                Reapply::DropMethod(token) => record.payment_methods.retain(|m| &m.token != token),
                Reapply::Objection(purpose, true) => {
                    record.objections.insert(purpose.clone());
                }
                Reapply::Objection(purpose, false) => {
                    record.objections.remove(purpose);
                }
                Reapply::Restriction(restricted) => record.restricted = *restricted,
                Reapply::LostWithdrawal(_) => {}
            }
        }
        // After the rest: a later `restriction.update` lifting must not lift this one, since
        // the withdrawal itself is still not in the record.
        if self.restricts(&record) {
            record.restricted = true;
        }
        Some(record)
    }

    /// Whether the restore puts `record` under restriction: a consent withdrawal after the
    /// backup point that it cannot write again, for a purpose the record still shows granted
    /// (a record that already holds the withdrawal, taken in the backup's window, needs none).
    fn restricts(&self, record: &CustomerRecord) -> bool {
        self.reapply.get(&record.id).is_some_and(|changes| {
            changes.iter().any(|c| match c {
                Reapply::LostWithdrawal(purpose) => {
                    record.consents.get(purpose).and_then(|h| h.last()).is_some_and(|c| c.granted)
                }
                _ => false,
            })
        })
    }

    fn not_restored(&self) -> u64 {
        self.later_changes
            .iter()
            .filter(|(customer, _)| customer.is_none_or(|c| !self.erased.contains(&c)))
            .map(|(_, n)| n)
            .sum()
    }
}

/// A verified `audit export` directory.
struct Export {
    size: u64,
    note: Vec<u8>,
    /// Its events from the backup's size on: (seq, canonical bytes).
    newer: Vec<(u64, Vec<u8>)>,
    /// Its root at the backup's size, when it reaches it.
    root_at_backup: Option<Hash>,
}

/// Restores `from` (and the newer log in `log`) into the store `settings` names, which must
/// be empty. See the module docs for the order of checks and writes.
pub async fn restore(settings: &Settings, from: &Path, log: Option<&Path>) -> Result<Restored, Error> {
    let target = settings.storage();
    // 1. The target: nothing is created or changed before every check passed.
    match &target {
        StorageSettings::Sled { dir, .. } => {
            if dir.exists() {
                return Err(refused(format!(
                    "{} already holds a store: restore only into an empty data directory",
                    settings.data_dir.display()
                )));
            }
        }
        _ => {
            let store = crate::store::open(&target, std::sync::Arc::new(crate::audit::tree::Tree))?;
            if let Err(e) = refuse_unfinished(store.as_ref()).await {
                store.close().await?;
                return Err(e);
            }
            let empty = refuse_unless_empty(store.as_ref()).await;
            store.close().await?;
            empty.map_err(|_| refused("the database is not empty: restore only into an empty one".into()))?;
        }
    }

    // 2. The backup, in full, and signed by this vault's own key: the key its system keys
    //    unwrap to under the configured master key, not the key the file names (anyone can
    //    name their own key). Still nothing written.
    let path = from.to_owned();
    let summary = super::blocking(move || super::verify(&path, None)).await?;
    let own = crate::startup::verifier_key_of(settings, summary.system_keys.clone()).await?;
    if own != summary.key {
        return Err(Error::Backup(BackupError::Invalid(super::Invalid {
            line: 2,
            reason: format!(
                "the file is signed by {}, but its system keys open to this vault's key {own}: \
                 not a backup this vault signed",
                summary.key
            ),
        })));
    }

    // 3. The export: verified as `audit verify` does, under the backup's key, agreeing with the
    //    backup where both reach.
    let export = match log {
        None => None,
        Some(dir) => {
            let (dir, key, backup_size) = (dir.to_owned(), summary.key.to_string(), summary.size);
            Some(super::blocking(move || read_export(&dir, &key, backup_size)).await?)
        }
    };
    if let Some(export) = &export {
        let agrees = if export.size >= summary.size {
            export.root_at_backup == Some(summary.root)
        } else {
            let (path, at) = (from.to_owned(), export.size);
            let root = super::blocking(move || {
                let file = std::fs::File::open(&path).map_err(|e| BackupError::Io(e.to_string()))?;
                Ok(Reader::new(BufReader::new(file), None).root_at(at).verify()?.root_at)
            })
            .await?;
            root.is_some() && root == note_root(&export.note)
        };
        if !agrees {
            return Err(refused(
                "the export's log and the backup's differ where both reach: they are not the same history"
                    .into(),
            ));
        }
    }

    // 4. Every erasure and purge in the whole log (the backup's, then the export's tail), not
    //    only those after the backup point: ids are never reused, and a purge spares what was
    //    written after it, so applying an old one again changes nothing a record may hold,
    //    while a record that should not be there (whatever put it there) stays out.
    let mut after = After::default();
    let (path, point, key) = (from.to_owned(), summary.backup_point, summary.key.clone());
    let mut scanned = super::blocking(move || {
        let mut after = After::default();
        let file = std::fs::File::open(&path).map_err(|e| BackupError::Io(e.to_string()))?;
        let mut reader = Reader::new(BufReader::with_capacity(1 << 20, file), Some(key));
        while let Some(item) = reader.next_item()? {
            if let Item::Event(seq, bytes) = item {
                after.note(&bytes, false, seq >= point)?;
            }
        }
        Ok(after)
    })
    .await?;
    std::mem::swap(&mut after, &mut scanned);
    if let Some(export) = &export {
        for (_, bytes) in &export.newer {
            after.note(bytes, true, true).map_err(Error::Backup)?;
        }
    }

    // 5. Build the store: on sled in a staging directory renamed into place at the end.
    let (work, staging) = match &target {
        StorageSettings::Sled { .. } => {
            let staging = settings.data_dir.join(STAGING);
            if staging.exists() {
                // A restore that stopped half-way: never served, so nothing to keep.
                std::fs::remove_dir_all(&staging)
                    .map_err(Error::io(format!("removing {}", staging.display())))?;
            }
            let mut work = settings.clone();
            work.data_dir = staging.clone();
            work.key_epoch_file = Some(settings.key_epoch_file());
            (work, Some(staging))
        }
        _ => (settings.clone(), None),
    };
    let built = build(&work, from, export.as_ref(), &after, &summary).await;
    let Built { records, erased: erased_records, checkpoint, restricted, reapplied, epochs } = match built {
        Ok(done) => done,
        Err(e) => {
            if let Some(staging) = &staging {
                let _ = std::fs::remove_dir_all(staging);
            }
            return Err(e);
        }
    };
    let replayed = export.as_ref().map_or(0, |e| e.newer.len() as u64);
    let mut restored = Restored {
        backup_point: summary.backup_point,
        created: summary.created.clone(),
        backup_size: summary.size,
        backup_root: summary.root,
        replayed,
        records,
        erasures: after.erasures,
        erased_records,
        restricted,
        reapplied,
        purges: after.purge_count,
        not_restored: after.not_restored(),
        checkpoint,
        size: 0,
        unopenable: 0,
    };

    // 6. The `store.restore` event, through the vault: opening it proves the master key and
    //    the epoch-key file fit the restored store, and its checkpoint covers the event.
    let recorded = record(&work, &mut restored, &epochs).await;
    match recorded {
        Ok(size) => restored.size = size,
        Err(e) => {
            if let Some(staging) = &staging {
                let _ = std::fs::remove_dir_all(staging);
            }
            return Err(e);
        }
    }
    if let (Some(staging), StorageSettings::Sled { dir, .. }) = (&staging, &target) {
        std::fs::rename(staging.join("store"), dir)
            .map_err(Error::io(format!("moving the store into {}", dir.display())))?;
        let _ = std::fs::remove_dir_all(staging);
        {
            use std::os::unix::fs::PermissionsExt;
            let _ = std::fs::set_permissions(&settings.data_dir, std::fs::Permissions::from_mode(0o700));
        }
        if let Ok(d) = std::fs::File::open(&settings.data_dir) {
            let _ = d.sync_all();
        }
    }
    Ok(restored)
}

fn refused(message: String) -> Error {
    Error::Backup(BackupError::Refused(message))
}

/// What [`build`] wrote.
struct Built {
    /// Records imported.
    records: u64,
    /// Records left out as erased.
    erased: u64,
    /// The newest checkpoint's size.
    checkpoint: Option<u64>,
    /// Imported customers put under restriction ([`Restored::restricted`]).
    restricted: Vec<String>,
    /// Changes re-applied to imported records ([`Restored::reapplied`]).
    reapplied: u64,
    /// Imported records per key epoch their data key is wrapped under.
    epochs: HashMap<KeyId, u64>,
}

/// Writes the log, the records, the metadata and the checkpoints into the (empty) store of
/// `work`.
async fn build(
    work: &Settings,
    from: &Path,
    export: Option<&Export>,
    after: &After,
    summary: &super::Summary,
) -> Result<Built, Error> {
    if let StorageSettings::Sled { .. } = work.storage() {
        // 0700 from creation (the data directory and the staging directory in it): the
        // store's files are reachable by no one else while the restore runs.
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&work.data_dir)
            .map_err(Error::io(format!("creating {}", work.data_dir.display())))?;
    }
    let store = crate::store::open(&work.storage(), std::sync::Arc::new(crate::audit::tree::Tree))?;
    let result = fill(store.as_ref(), from, export, after, summary).await;
    store.close().await?;
    result
}

async fn fill(
    store: &dyn Store,
    from: &Path,
    export: Option<&Export>,
    after: &After,
    summary: &super::Summary,
) -> Result<Built, Error> {
    refuse_unless_empty(store).await.map_err(|_| refused("the target store is not empty".into()))?;
    store.put_meta(RESTORE_STATE, b"started".to_vec()).await?;
    // The file is read again (it was verified; the reader checks it again as it goes, and a
    // file changed in between fails at its trailer, leaving only the staging store behind).
    let file = std::fs::File::open(from).map_err(Error::io(format!("opening {}", from.display())))?;
    let mut reader = Reader::new(BufReader::with_capacity(1 << 20, file), Some(summary.key.clone()));
    let (mut records, mut erased, mut next) = (0u64, 0u64, 0u64);
    let (mut restricted, mut reapplied) = (Vec::new(), 0u64);
    let mut checkpoint = None;
    let mut epochs: HashMap<KeyId, u64> = HashMap::new();
    let mut batch = Vec::with_capacity(EVENTS_PER_WRITE);
    // Reading is synchronous but bounded by one line at a time; writes dominate.
    while let Some(item) = reader.next_item().map_err(BackupError::from)? {
        match item {
            Item::Record(record) => match after.apply(*record) {
                Some(record) => {
                    if after.restricts(&record) {
                        restricted.push(record.id.to_string());
                    }
                    reapplied += after.reapply.get(&record.id).map_or(0, |c| {
                        c.iter().filter(|c| !matches!(c, Reapply::LostWithdrawal(_))).count() as u64
                    });
                    if record.data_key.master_key.is_epoch() {
                        *epochs.entry(record.data_key.master_key.clone()).or_default() += 1;
                    }
                    store.import(record).await?;
                    records += 1;
                }
                None => erased += 1,
            },
            Item::Meta(name, value) => store.put_meta(&name, value).await?,
            Item::Checkpoint(size, note) => checkpoint = Some((size, note)),
            Item::Event(seq, bytes) => {
                batch.push((seq, bytes));
                if batch.len() == EVENTS_PER_WRITE {
                    next = append_leaves(store, next, &batch).await.map_err(BackupError::from)?;
                    batch.clear();
                }
            }
        }
    }
    if !batch.is_empty() {
        next = append_leaves(store, next, &batch).await.map_err(BackupError::from)?;
    }
    if next != summary.size {
        return Err(refused("the backup changed while it was restored".into()));
    }
    if let Some(export) = export {
        for chunk in export.newer.chunks(EVENTS_PER_WRITE) {
            next = append_leaves(store, next, chunk).await.map_err(BackupError::from)?;
        }
    }
    let mut newest = None;
    if let Some((size, note)) = checkpoint {
        put_verified_checkpoint(store, size, note).await.map_err(BackupError::from)?;
        newest = Some(size);
    }
    if let Some(export) = export
        && newest.is_none_or(|n| export.size > n)
    {
        put_verified_checkpoint(store, export.size, export.note.clone()).await.map_err(BackupError::from)?;
        newest = Some(export.size);
    }
    Ok(Built { records, erased, checkpoint: newest, restricted, reapplied, epochs })
}

/// Records the `store.restore` event through the vault over `work` and signs a checkpoint of
/// the restored log; returns the log's size. Counts the records under epochs the epoch-key
/// file no longer holds into `restored`.
async fn record(
    work: &Settings,
    restored: &mut Restored,
    epochs: &HashMap<KeyId, u64>,
) -> Result<u64, Error> {
    let (vault, store, _) = crate::startup::open_vault_with(work, true).await?;
    restored.unopenable =
        epochs.iter().filter(|(id, _)| vault.keyring().epoch(id).is_none()).map(|(_, n)| n).sum();
    let codes = vec![
        format!("size:{}", restored.backup_size),
        format!("root:{}", STANDARD.encode(restored.backup_root)),
        format!("backup_point:{}", restored.backup_point),
        format!("replayed:{}", restored.replayed),
        format!("erasures:{}", restored.erasures),
        format!("purges:{}", restored.purges),
        format!("not_restored:{}", restored.not_restored),
        format!("reapplied:{}", restored.reapplied),
        format!("restricted:{}", restored.restricted.len()),
        format!("unopenable:{}", restored.unopenable),
    ];
    let result = async {
        vault
            .record_restore(codes)
            .await
            .map_err(|e| refused(format!("recording the restore failed: {e}")))?;
        vault.audit_log().checkpoint().await?;
        vault.store().put_meta(RESTORE_STATE, b"finished".to_vec()).await?;
        Ok::<u64, Error>(vault.audit_log().head().await?.0)
    }
    .await;
    drop(vault);
    store.close().await?;
    result
}

/// Reads and verifies an `audit export` directory under `key` (as `audit verify` does, with
/// its leaf hashes when present); keeps the events from `backup_size` on.
fn read_export(dir: &Path, key: &str, backup_size: u64) -> Result<Export, BackupError> {
    let file = |name: &str| -> PathBuf { dir.join(name) };
    let events = file(crate::auditor::EVENTS_FILE);
    let checkpoint = file(crate::auditor::CHECKPOINT_FILE);
    let leaves = file(crate::auditor::LEAVES_FILE);
    let verified = crate::auditor::verify_files(
        &events,
        &checkpoint,
        key,
        None,
        leaves.is_file().then_some(leaves.as_path()),
    )
    .map_err(|f| {
        BackupError::Refused(format!(
            "the export in {} does not verify under the backup's key: {f}",
            dir.display()
        ))
    })?;
    let note =
        std::fs::read(&checkpoint).map_err(|e| BackupError::Io(format!("{}: {e}", checkpoint.display())))?;
    let note = {
        // The note as signed (the file may carry extra trailing newlines).
        let text = String::from_utf8_lossy(&note);
        format!("{}\n", text.trim_end_matches('\n')).into_bytes()
    };
    let size = verified.checkpoint.size;
    let mut frontier = Frontier::default();
    let mut root_at_backup = (backup_size == 0).then(crate::audit::merkle::empty_root);
    let mut newer = Vec::new();
    let input =
        std::fs::File::open(&events).map_err(|e| BackupError::Io(format!("{}: {e}", events.display())))?;
    for (seq, line) in (0..size).zip(BufReader::new(input).split(b'\n')) {
        let line = line.map_err(|e| BackupError::Io(format!("{}: {e}", events.display())))?;
        if seq < backup_size {
            frontier.push(
                event_leaf(&line, seq)
                    .map_err(|e| BackupError::Refused(format!("export event {seq}: {e}")))?,
            );
            if seq + 1 == backup_size {
                root_at_backup = Some(frontier.root());
            }
        } else {
            let value: Value = serde_json::from_slice(&line)
                .map_err(|e| BackupError::Refused(format!("export event {seq}: {e}")))?;
            newer.push((seq, jcs::canonical(&value)));
        }
    }
    Ok(Export { size, note, newer, root_at_backup })
}

/// The root a verified checkpoint note signs (its third line).
fn note_root(note: &[u8]) -> Option<Hash> {
    let text = std::str::from_utf8(note).ok()?;
    STANDARD.decode(text.lines().nth(2)?).ok()?.try_into().ok()
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use super::*;
    use crate::crypto::{DataKey, MasterKey, MasterKeyring, Sealed};
    use crate::store::{IndexEntry, StoredField};

    fn record(fields: &[(&str, i64)]) -> CustomerRecord {
        let id = CustomerId::random();
        let ring = MasterKeyring::new(MasterKey::from_bytes(&[1; 32]).unwrap(), vec![]);
        CustomerRecord {
            id,
            version: 3,
            data_key: ring.wrap_data_key(&id, &DataKey::generate().unwrap()).unwrap(),
            fields: fields
                .iter()
                .map(|(name, at)| {
                    let field = StoredField {
                        sealed: Sealed::from_bytes(vec![1, 2, 3]),
                        written_at: Timestamp::from_millis(*at),
                    };
                    ((*name).to_owned(), field)
                })
                .collect(),
            index_entries: fields
                .iter()
                .map(|(name, _)| IndexEntry {
                    field: (*name).to_owned(),
                    index: [7; 32],
                    unique: false,
                    epoch: None,
                })
                .collect(),
            consents: BTreeMap::new(),
            objections: BTreeSet::new(),
            restricted: false,
            payment_methods: vec![],
            created_at: Timestamp::from_millis(0),
            updated_at: Timestamp::from_millis(0),
        }
    }

    fn event(action: &str, outcome: &str, customer: &CustomerId, time_ms: i64, fields: &[&str]) -> Vec<u8> {
        let time = Timestamp::from_millis(time_ms).to_rfc3339();
        serde_json::to_vec(&serde_json::json!({
            "seq": 0, "time": time, "action": action, "outcome": outcome,
            "actor": {"role": "system", "sub": "retention"}, "customer_id": customer.to_string(),
            "fields": fields, "request_id": "r"
        }))
        .unwrap()
    }

    #[test]
    fn a_purge_after_the_backup_point_removes_the_fields_it_names_unless_written_again() {
        let kept = record(&[("email", 1_000), ("phone", 5_000), ("name", 1_000)]);
        let mut after = After::default();
        after
            .note(&event("retention.purge", "allowed", &kept.id, 2_000, &["email", "phone"]), false, true)
            .unwrap();
        let back = after.apply(kept).expect("not erased");
        assert_eq!(
            back.fields.keys().collect::<Vec<_>>(),
            ["name", "phone"],
            "phone was written after the purge"
        );
        assert_eq!(
            back.index_entries.iter().map(|e| e.field.as_str()).collect::<Vec<_>>(),
            ["phone", "name"]
        );
        assert_eq!(back.version, 3);
        assert_eq!(after.purge_count, 1);
    }

    fn choice(action: &str, customer: &CustomerId, purpose: &str, reason: &str, fields: &[&str]) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({
            "seq": 0, "time": Timestamp::from_millis(10).to_rfc3339(), "action": action,
            "outcome": "allowed", "actor": {"role": "customer", "sub": "x"},
            "customer_id": customer.to_string(), "purpose": purpose, "reason": [reason],
            "fields": fields, "request_id": "r"
        }))
        .unwrap()
    }

    #[test]
    fn later_choices_are_made_again_and_a_lost_withdrawal_restricts_only_a_granted_purpose() {
        use crate::store::{ConsentRecord, ConsentSource, StoredPaymentMethod};
        let consent = |granted| ConsentRecord {
            version: 1,
            granted,
            notice: None,
            source: ConsentSource::Legacy("account-page".into()),
            time: Timestamp::from_millis(1),
        };
        let mut granted = record(&[("email", 1)]);
        granted.consents.insert("marketing".into(), vec![consent(true)]);
        granted.payment_methods.push(StoredPaymentMethod {
            token: "pm_gone".into(),
            sealed: Sealed::from_bytes(vec![1]),
            fingerprint: None,
            created_at: Timestamp::from_millis(1),
        });
        let mut withdrawn = record(&[("email", 1)]);
        withdrawn.consents.insert("marketing".into(), vec![consent(true), consent(false)]);
        let mut after = After::default();
        for bytes in [
            choice("consent.update", &granted.id, "marketing", "withdrawn", &[]),
            choice("payment_method.delete", &granted.id, "", "", &["payment_methods/pm_gone"]),
            choice("objection.update", &granted.id, "fraud_prevention", "objected", &[]),
            choice("consent.update", &withdrawn.id, "marketing", "withdrawn", &[]),
            choice("restriction.update", &withdrawn.id, "", "restricted", &[]),
            choice("restriction.update", &withdrawn.id, "", "lifted", &[]),
        ] {
            after.note(&bytes, false, true).unwrap();
        }
        let back = after.apply(granted).unwrap();
        assert!(back.restricted, "the withdrawal is not in the record: restricted");
        assert!(back.payment_methods.is_empty());
        assert_eq!(back.objections.iter().collect::<Vec<_>>(), ["fraud_prevention"]);
        let back = after.apply(withdrawn).unwrap();
        assert!(!back.restricted, "the record holds the withdrawal, and the restriction was lifted after");
        // Changes before the backup point are in the records already: not noted.
        let mut before = After::default();
        let other = record(&[("email", 1)]);
        before.note(&choice("restriction.update", &other.id, "", "restricted", &[]), false, false).unwrap();
        assert!(!before.apply(other).unwrap().restricted);
    }

    #[test]
    fn an_erasure_anywhere_in_the_log_keeps_the_record_out() {
        // A record spliced into a backup whose log erased it before the backup point (review
        // finding 1), whatever the file's signature says.
        let spliced = record(&[("email", 1)]);
        let mut after = After::default();
        after.note(&event("customer.erase", "allowed", &spliced.id, 10, &[]), false, false).unwrap();
        assert!(after.apply(spliced).is_none());
        assert_eq!(after.erasures, 0, "reported are only the erasures after the backup point");
    }

    #[test]
    fn an_allowed_erasure_drops_the_record_and_a_denied_one_does_not() {
        let (gone, stays) = (record(&[("email", 1)]), record(&[("email", 1)]));
        let mut after = After::default();
        after.note(&event("customer.erase", "allowed", &gone.id, 10, &[]), false, true).unwrap();
        after.note(&event("customer.erase", "denied", &stays.id, 10, &[]), false, true).unwrap();
        after.note(&event("customer.update", "allowed", &stays.id, 20, &["email"]), true, true).unwrap();
        after.note(&event("customer.update", "allowed", &gone.id, 20, &["email"]), true, true).unwrap();
        assert!(after.apply(gone).is_none());
        assert!(after.apply(stays).is_some());
        assert_eq!(after.erasures, 1);
        assert_eq!(after.not_restored(), 1, "a later change of an erased customer is not counted");
    }
}
