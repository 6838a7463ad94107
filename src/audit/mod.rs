//! The audit log: every access to customer data becomes an event, a leaf of an RFC 6962 Merkle
//! tree, committed atomically with the data change it records and made durable before the
//! caller gets an answer.
//!
//! Events hold field names, purposes, recipients, reason codes and opaque ids — never a value.
//! The log never decides anything; it records what the vault decided.
//!
//! The log also answers for itself: roots, inclusion and consistency proofs at any size up to
//! the current one, computed from stored subtree hashes ([`proof`]), and signed checkpoints
//! ([`checkpoint`]) that only ever cover events already durable, so a crash can never leave a
//! signed tree head the restarted log contradicts.

pub mod checkpoint;
pub mod counters;
pub mod jcs;
pub mod merkle;
pub mod proof;
pub mod stream;
pub mod tree;
pub mod verify;

use std::collections::HashMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;

use crate::crypto::PseudonymKey;
use crate::domain::{Clock, CustomerId, Principal, Timestamp};
use crate::store::{CustomerChange, MetaEquals, PendingEvent, Store, StoreError, Write};
use checkpoint::{CheckpointSigner, SignedCheckpoint, VerifierKey};
use merkle::Hash;
use proof::{Plan, ProofError};

/// What an audited request did (DESIGN §6).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Action {
    #[serde(rename = "customer.create")]
    /// A customer was created.
    CustomerCreate,
    #[serde(rename = "customer.read")]
    /// A customer's fields were read.
    CustomerRead,
    #[serde(rename = "customer.update")]
    /// A customer's fields were changed.
    CustomerUpdate,
    #[serde(rename = "customer.lookup")]
    /// Customers were looked up by an indexed field.
    CustomerLookup,
    #[serde(rename = "customer.erase")]
    /// A customer was erased.
    CustomerErase,
    #[serde(rename = "customer.export")]
    /// A customer exported their data.
    CustomerExport,
    #[serde(rename = "payment_method.create")]
    /// A payment method was added.
    PaymentMethodCreate,
    #[serde(rename = "payment_method.list")]
    /// Payment methods were listed.
    PaymentMethodList,
    #[serde(rename = "payment_method.delete")]
    /// A payment method was removed.
    PaymentMethodDelete,
    #[serde(rename = "consent.update")]
    /// A consent record was added.
    ConsentUpdate,
    #[serde(rename = "objection.update")]
    /// An objection was set or lifted.
    ObjectionUpdate,
    #[serde(rename = "restriction.update")]
    /// Processing restriction was set or lifted.
    RestrictionUpdate,
    #[serde(rename = "disclosure")]
    /// A disclosure to a third party was decided.
    Disclosure,
    #[serde(rename = "audit.read")]
    /// The audit log was read.
    AuditRead,
    #[serde(rename = "auth.denied")]
    /// A request was refused by authentication or role.
    AuthDenied,
    #[serde(rename = "retention.purge")]
    /// Fields past their retention were erased.
    RetentionPurge,
    #[serde(rename = "key.rotate")]
    /// Data keys were re-wrapped under a new master key.
    KeyRotate,
    #[serde(rename = "store.restore")]
    /// The store was restored from a backup (`custodia restore`).
    StoreRestore,
}

/// How the request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Done as asked.
    Allowed,
    /// Refused by policy, consent or role.
    Denied,
    /// Refused because the request was invalid or its target does not exist.
    Failed,
}

/// The caller as recorded in an event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Actor {
    /// `merchant`, `customer`, `auditor`, `anonymous` or `system`.
    pub role: String,
    /// The token's subject; `null` for anonymous callers.
    pub sub: Option<String>,
}

/// One audit event exactly as `GET /v1/audit/events` returns it and as its leaf hashes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Event {
    /// The leaf index, counting from 0.
    pub seq: u64,
    /// RFC 3339 UTC with milliseconds.
    pub time: String,
    /// What was done.
    pub action: Action,
    /// How it ended.
    pub outcome: Outcome,
    /// Who asked.
    pub actor: Actor,
    /// The customer concerned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub customer_id: Option<String>,
    /// Field names concerned (never values).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fields: Option<Vec<String>>,
    /// The declared purpose.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub purpose: Option<String>,
    /// The third party, for disclosures.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recipient: Option<String>,
    /// Reason codes of a denial or failure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<Vec<String>>,
    /// The request's `X-Request-Id`.
    pub request_id: String,
}

/// An event before the log gives it a place and a time.
#[derive(Debug, Clone)]
pub struct EventDraft {
    action: Action,
    outcome: Outcome,
    actor: Actor,
    customer: Option<CustomerId>,
    fields: Option<Vec<String>>,
    purpose: Option<String>,
    recipient: Option<String>,
    reason: Option<Vec<String>>,
    request_id: String,
}

impl EventDraft {
    /// A draft for `action` by `actor` in request `request_id`, outcome `allowed` until changed.
    pub fn new(action: Action, actor: &Principal, request_id: &str) -> Self {
        EventDraft {
            action,
            outcome: Outcome::Allowed,
            actor: Actor { role: actor.role.as_str().to_owned(), sub: actor.sub.clone() },
            customer: None,
            fields: None,
            purpose: None,
            recipient: None,
            reason: None,
            request_id: request_id.to_owned(),
        }
    }

    /// Sets the customer concerned.
    pub fn customer(mut self, id: CustomerId) -> Self {
        self.customer = Some(id);
        self
    }

    /// Sets the field names concerned. Only declared field names may be passed.
    pub fn fields<I: IntoIterator<Item = S>, S: Into<String>>(mut self, names: I) -> Self {
        self.fields = Some(names.into_iter().map(Into::into).collect());
        self
    }

    /// Sets the declared purpose.
    pub fn purpose(mut self, purpose: Option<&str>) -> Self {
        self.purpose = purpose.map(str::to_owned);
        self
    }

    /// Sets the recipient.
    pub fn recipient(mut self, recipient: &str) -> Self {
        self.recipient = Some(recipient.to_owned());
        self
    }

    /// Marks the event denied with reason codes.
    pub fn denied<I: IntoIterator<Item = S>, S: Into<String>>(self, reasons: I) -> Self {
        self.ended(Outcome::Denied, reasons)
    }

    /// Adds reason codes without changing the outcome (e.g. fields withheld from an allowed read).
    pub fn withheld<I: IntoIterator<Item = S>, S: Into<String>>(mut self, reasons: I) -> Self {
        self.reason = Some(reasons.into_iter().map(Into::into).collect());
        self
    }

    /// Marks the event failed with reason codes.
    pub fn failed<I: IntoIterator<Item = S>, S: Into<String>>(self, reasons: I) -> Self {
        self.ended(Outcome::Failed, reasons)
    }

    fn ended<I: IntoIterator<Item = S>, S: Into<String>>(mut self, outcome: Outcome, reasons: I) -> Self {
        self.outcome = outcome;
        self.reason = Some(reasons.into_iter().map(Into::into).collect());
        self
    }

    /// The customer concerned, if set.
    pub fn customer_id(&self) -> Option<CustomerId> {
        self.customer
    }

    /// The event as the sequencer takes it: everything but its place, decided at `time`, with
    /// the actor's `sub` as the log may hold it.
    fn pending(self, time: Timestamp, pseudonyms: &PseudonymKey) -> PendingEvent {
        let Actor { role, sub } = self.actor;
        let customer = self.customer;
        let event = Event {
            seq: 0,
            time: time.to_rfc3339(),
            action: self.action,
            outcome: self.outcome,
            actor: Actor { role, sub: sub.map(|s| recorded_sub(s, pseudonyms)) },
            customer_id: customer.map(|c| c.to_string()),
            fields: self.fields,
            purpose: self.purpose,
            recipient: self.recipient,
            reason: self.reason,
            request_id: self.request_id,
        };
        // `seq` and `time` sort last in RFC 8785, so the event without them, less its closing
        // brace, is the prefix of the leaf's bytes (see `tree::integrate`).
        let prefix = jcs::event_prefix(&event);
        PendingEvent { prefix, time: event.time, customer }
    }
}

/// The longest token `sub` recorded as it is (when it has the shape of a service name).
const MAX_SERVICE_NAME: usize = 64;

/// A token's `sub` as the append-only log may hold it. The log cannot be erased, so a subject
/// that might be personal data (an e-mail address, a person's name) is replaced by its keyed
/// pseudonym. Recorded as given: a customer id (the customer's own tokens; the id is opaque and
/// random), and a service name of 1–64 characters from `[a-z0-9_-]` starting with a letter
/// (`shop-backend`, `auditor-1`). Anything else (capitals, dots, `@`, spaces, non-ASCII) becomes
/// `pseudonym:` and 32 hex digits, the same for the same subject.
pub fn recorded_sub(sub: String, pseudonyms: &PseudonymKey) -> String {
    let service_name = sub.len() <= MAX_SERVICE_NAME
        && sub.starts_with(|c: char| c.is_ascii_lowercase())
        && sub.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
    if service_name || sub.parse::<CustomerId>().is_ok() { sub } else { pseudonyms.pseudonym(&sub) }
}

impl Event {
    /// The RFC 8785 canonical bytes the leaf hash is computed over.
    pub fn canonical_bytes(&self) -> Vec<u8> {
        // invariant: an Event is plain strings, integers and enums; it always serialises.
        jcs::canonical(&serde_json::to_value(self).expect("event serialises"))
    }
}

/// An audit append failed.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// The data change could not be applied (version conflict, unique clash); nothing was
    /// written, not even the event.
    #[error("change rejected: {0}")]
    Rejected(StoreError),
    /// The event could not be written or made durable: the request must fail with 503.
    #[error("audit log unavailable: {0}")]
    Unavailable(StoreError),
    /// The stored log is inconsistent.
    #[error("audit log corrupt: {0}")]
    Corrupt(String),
    /// A proof or range was asked for sizes the log cannot answer (caller input).
    #[error("{0}")]
    OutOfRange(String),
}

impl From<ProofError> for AuditError {
    fn from(e: ProofError) -> Self {
        match e {
            ProofError::OutOfRange(message) => AuditError::OutOfRange(message),
            missing @ ProofError::MissingNode { .. } => AuditError::Corrupt(missing.to_string()),
        }
    }
}

/// The audit log: appends, proofs and signed checkpoints.
///
/// The log's head lives in the store, which integrates events as it writes them (through
/// [`tree::Tree`]); this type builds pending events on the request path, reads proofs, and
/// signs checkpoints of the durable head.
pub struct AuditLog {
    store: Arc<dyn Store>,
    signer: CheckpointSigner,
    /// Keys the pseudonyms of token subjects that may be personal data ([`recorded_sub`]).
    pseudonyms: PseudonymKey,
    /// The newest signed checkpoint; the lock also serialises signing so sizes only grow.
    latest: Mutex<Option<SignedCheckpoint>>,
    /// What events are stamped with (the system clock unless a test shifted it).
    clock: Clock,
}

impl AuditLog {
    /// Opens the log over `store` and checks the stored tree against the newest signed
    /// checkpoint: a log shorter than a checkpoint it signed (events removed) or with a
    /// different root at that size (history rewritten) refuses to open. `pseudonyms` keys the
    /// recorded form of token subjects.
    pub async fn open(
        store: Arc<dyn Store>,
        signer: CheckpointSigner,
        pseudonyms: PseudonymKey,
    ) -> Result<Self, AuditError> {
        let head = store.head().await.map_err(AuditError::Unavailable)?;
        if tree::root(&head).is_none() {
            return Err(AuditError::Corrupt("the stored head does not match the log size".into()));
        }
        let log = AuditLog { store, signer, pseudonyms, latest: Mutex::new(None), clock: Clock::default() };
        let latest = log.check_latest_checkpoint(head.size).await?;
        *log.latest.lock().await = latest;
        Ok(log)
    }

    /// Stamps events with `clock` instead of the system clock (see [`Clock`]).
    pub fn with_clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }

    /// The clock events are stamped with (the transparency report judges event times by it).
    pub fn clock(&self) -> &Clock {
        &self.clock
    }

    async fn check_latest_checkpoint(&self, size: u64) -> Result<Option<SignedCheckpoint>, AuditError> {
        let Some((stored_size, note)) =
            self.store.latest_checkpoint().await.map_err(AuditError::Unavailable)?
        else {
            return Ok(None);
        };
        let note = String::from_utf8(note)
            .map_err(|_| AuditError::Corrupt(format!("stored checkpoint {stored_size} is not UTF-8")))?;
        let checkpoint = self.signer.verifier_key().open_checkpoint(&note).map_err(|e| {
            AuditError::Corrupt(format!(
                "the latest stored checkpoint (size {stored_size}) does not verify under this log's key \
                 and origin {:?} ({e}): was CUSTODIA_AUDIT_ORIGIN changed, or the stored note altered?",
                self.signer.origin()
            ))
        })?;
        if checkpoint.size != stored_size {
            return Err(AuditError::Corrupt(format!("checkpoint stored under size {stored_size} is not")));
        }
        if checkpoint.size > size {
            return Err(AuditError::Corrupt(format!(
                "the log holds {size} events but a signed checkpoint covers {}: events were removed",
                checkpoint.size
            )));
        }
        if self.assemble_root(checkpoint.size).await? != checkpoint.root {
            return Err(AuditError::Corrupt(format!(
                "the stored tree at size {} does not match its signed checkpoint: history was rewritten",
                checkpoint.size
            )));
        }
        Ok(Some(SignedCheckpoint { checkpoint, note }))
    }

    /// Appends an event and applies `change` in the same atomic write, durable on return.
    /// Returns the event's seq.
    ///
    /// On `Rejected` nothing was written; the caller records what happened with a new draft.
    /// Waits for the event's seq on a backend that integrates after the commit (PostgreSQL):
    /// use [`AuditLog::record_batch`] when the seq is not needed.
    pub async fn record(&self, draft: EventDraft, change: Option<CustomerChange>) -> Result<u64, AuditError> {
        let mut outcomes = self.record_writes(vec![(vec![draft], change, None)], true).await?;
        let seqs = outcomes
            .pop()
            .unwrap_or_else(|| Err(AuditError::Corrupt("the store gave a write no outcome".into())))?;
        seqs.first().copied().ok_or_else(|| AuditError::Corrupt("the store gave an event no seq".into()))
    }

    /// Appends several events of one request in order, atomically with `change`, durable on
    /// return (one write, so one group commit). Returns their seqs. Used where one answer
    /// concerns several customers (one event each, DESIGN §6) or where a write's answer is also
    /// a read (an update event, then a read event).
    ///
    /// On `Rejected` nothing was written, not even the events. Answers at the commit: the seqs
    /// are empty on a backend that integrates after it (PostgreSQL; see
    /// [`crate::store::Write::need_seqs`]).
    pub async fn record_batch(
        &self,
        drafts: Vec<EventDraft>,
        change: Option<CustomerChange>,
    ) -> Result<Vec<u64>, AuditError> {
        self.record_fenced(drafts, change, None, false).await
    }

    /// Independent writes, each a change with the events that record it, made durable
    /// together (one store `write_many`): for background sweeps that touch many customers. One
    /// outcome per write, in order: its seqs, or `Rejected` when its change lost a race (then
    /// none of its events was written). The outer error means the whole batch failed.
    pub async fn record_many(
        &self,
        writes: Vec<(Vec<EventDraft>, Option<CustomerChange>)>,
    ) -> Result<Vec<Result<Vec<u64>, AuditError>>, AuditError> {
        self.record_writes(writes.into_iter().map(|(drafts, change)| (drafts, change, None)).collect(), false)
            .await
    }

    /// As [`AuditLog::record_batch`], committed only if `precondition` holds (see
    /// [`crate::store::Write::precondition`]; `Rejected(PreconditionFailed)` otherwise), and
    /// waiting for the seqs if `need_seqs`.
    pub async fn record_fenced(
        &self,
        drafts: Vec<EventDraft>,
        change: Option<CustomerChange>,
        precondition: Option<MetaEquals>,
        need_seqs: bool,
    ) -> Result<Vec<u64>, AuditError> {
        let mut outcomes = self.record_writes(vec![(drafts, change, precondition)], need_seqs).await?;
        outcomes.pop().unwrap_or_else(|| Err(AuditError::Corrupt("the store gave a write no outcome".into())))
    }

    #[allow(clippy::type_complexity)]
    async fn record_writes(
        &self,
        writes: Vec<(Vec<EventDraft>, Option<CustomerChange>, Option<MetaEquals>)>,
        need_seqs: bool,
    ) -> Result<Vec<Result<Vec<u64>, AuditError>>, AuditError> {
        let now = self.clock.now();
        let mut kinds = Vec::with_capacity(writes.len());
        let mut batch = Vec::with_capacity(writes.len());
        for (drafts, change, precondition) in writes {
            kinds.push(drafts.iter().map(|d| (d.action, d.outcome)).collect::<Vec<_>>());
            let events = drafts.into_iter().map(|d| d.pending(now, &self.pseudonyms)).collect();
            batch.push(Write { need_seqs, precondition, change, events });
        }
        let outcomes = self.store.write_many(batch).await.map_err(AuditError::Unavailable)?;
        Ok(outcomes
            .into_iter()
            .zip(kinds)
            .map(|(outcome, kinds)| match outcome {
                Ok(written) => {
                    for (i, (action, outcome)) in kinds.into_iter().enumerate() {
                        crate::metric::audit_appended(
                            action,
                            outcome,
                            written.seqs.get(i).map(|seq| seq + 1),
                        );
                    }
                    Ok(written.seqs)
                }
                Err(
                    e @ (StoreError::VersionConflict
                    | StoreError::UniqueViolation { .. }
                    | StoreError::PreconditionFailed { .. }),
                ) => Err(AuditError::Rejected(e)),
                Err(e) => Err(AuditError::Unavailable(e)),
            })
            .collect())
    }

    /// The durable tree size and root hash.
    pub async fn head(&self) -> Result<(u64, Hash), AuditError> {
        let head = self.store.head().await.map_err(AuditError::Unavailable)?;
        let root =
            tree::root(&head).ok_or_else(|| AuditError::Corrupt("the stored head is malformed".into()))?;
        Ok((head.size, root))
    }

    /// The log's origin line.
    pub fn origin(&self) -> &str {
        self.signer.origin()
    }

    /// The public key checkpoints are signed with.
    pub fn verifier_key(&self) -> &VerifierKey {
        self.signer.verifier_key()
    }

    /// The newest signed checkpoint, signing a new one first if the log grew since. It covers
    /// only durable events (the store's head is durable) and is stored insert-if-absent: a
    /// different note already stored for that size is a fork, and an error. `None` while the
    /// log is empty.
    pub async fn checkpoint(&self) -> Result<Option<SignedCheckpoint>, AuditError> {
        let mut latest = self.latest.lock().await;
        let (size, root) = self.head().await?;
        if size == 0 || latest.as_ref().is_some_and(|c| c.checkpoint.size >= size) {
            return Ok(latest.clone());
        }
        let signed = self.sign_and_store(size, root).await?;
        *latest = Some(signed.clone());
        Ok(Some(signed))
    }

    /// Signs the checkpoint of `size` leaves with `root` and stores it insert-if-absent; a
    /// different note already stored for that size is a fork, and an error.
    async fn sign_and_store(&self, size: u64, root: Hash) -> Result<SignedCheckpoint, AuditError> {
        let signed = self.signer.sign(size, root);
        let stored = self
            .store
            .put_checkpoint(size, signed.note.clone().into_bytes())
            .await
            .map_err(AuditError::Unavailable)?;
        if stored != signed.note.as_bytes() {
            return Err(AuditError::Corrupt(format!(
                "a different checkpoint is stored for tree size {size}: the log has forked"
            )));
        }
        Ok(signed)
    }

    /// A signed checkpoint of exactly the first `size` events (`0 < size` ≤ the current size),
    /// stored insert-if-absent like [`AuditLog::checkpoint`] (Ed25519 is deterministic, so a
    /// checkpoint already stored for `size` is the same note). A backup signs the size it copies,
    /// so no event in the file is outside a signature.
    pub async fn checkpoint_at(&self, size: u64) -> Result<SignedCheckpoint, AuditError> {
        let mut latest = self.latest.lock().await;
        let root = self.root_at(size).await?;
        let signed = self.sign_and_store(size, root).await?;
        if latest.as_ref().is_none_or(|c| c.checkpoint.size < size) {
            *latest = Some(signed.clone());
        }
        Ok(signed)
    }

    /// Signs a backup statement ([`crate::backup::format::statement`]) with the log's key as a
    /// C2SP signed note. Only text starting with the backup context line is signed, so this
    /// key never signs anything that reads as a checkpoint.
    pub fn sign_backup_statement(&self, text: &str) -> Result<String, AuditError> {
        if !text.starts_with(crate::backup::format::STATEMENT_CONTEXT) || !text.ends_with('\n') {
            return Err(AuditError::Corrupt("refusing to sign a note that is not a backup statement".into()));
        }
        Ok(self.signer.sign_note(text))
    }

    /// The newest checkpoint already signed, without signing one (`None` before the first).
    pub async fn latest_checkpoint(&self) -> Option<SignedCheckpoint> {
        self.latest.lock().await.clone()
    }

    /// The root of the tree of the first `size` events (`size` ≤ the current size).
    pub async fn root_at(&self, size: u64) -> Result<Hash, AuditError> {
        self.check_size("tree_size", size).await?;
        self.assemble_root(size).await
    }

    /// The inclusion proof of event `index` in the tree of `size` events, leaf to root.
    pub async fn inclusion_proof(&self, index: u64, size: u64) -> Result<Vec<Hash>, AuditError> {
        let plan = Plan::inclusion(index, size)?;
        self.check_size("tree_size", size).await?;
        self.assemble(&plan).await
    }

    /// The consistency proof from the tree of `from` events to the tree of `to` events.
    pub async fn consistency_proof(&self, from: u64, to: u64) -> Result<Vec<Hash>, AuditError> {
        let plan = Plan::consistency(from, to)?;
        self.check_size("to", to).await?;
        self.assemble(&plan).await
    }

    /// Up to `limit` stored leaf hashes from seq `from` on (fewer at the end of the log).
    pub async fn leaf_hashes(&self, from: u64, limit: usize) -> Result<Vec<Hash>, AuditError> {
        let size = self.head().await?.0;
        if from > size {
            return Err(AuditError::OutOfRange(format!("from ({from}) is beyond the log size {size}")));
        }
        let end = size.min(from.saturating_add(limit as u64));
        let ids: Vec<(u8, u64)> = (from..end).map(|index| (0, index)).collect();
        let leaves = self.store.nodes(&ids).await.map_err(AuditError::Unavailable)?;
        ids.iter()
            .zip(leaves)
            .map(|((_, index), leaf)| {
                leaf.ok_or_else(|| AuditError::Corrupt(format!("leaf hash {index} is missing")))
            })
            .collect()
    }

    /// Up to `limit` stored events from seq `from` on, in order, each as its stored canonical
    /// JSON (the bytes its leaf hashes). Fewer at the end of the log; none past it. Not audited:
    /// for the server's own background work (the audit stream), never for a caller.
    pub async fn stored_events(&self, from: u64, limit: usize) -> Result<Vec<(u64, Vec<u8>)>, AuditError> {
        self.store.audit_events(from, limit).await.map_err(AuditError::Unavailable)
    }

    /// A position the log keeps for a consumer of its events (the audit stream's delivered seq
    /// per sink), stored as vault metadata under `name`; `None` before the first is kept.
    pub async fn consumer_position(&self, name: &str) -> Result<Option<u64>, AuditError> {
        let Some(bytes) = self.store.meta(name).await.map_err(AuditError::Unavailable)? else {
            return Ok(None);
        };
        let text = std::str::from_utf8(&bytes).ok();
        text.and_then(|t| t.parse().ok())
            .map(Some)
            .ok_or_else(|| AuditError::Corrupt(format!("the stored position {name:?} is not a number")))
    }

    /// Keeps `position` for the consumer `name` (see [`AuditLog::consumer_position`]); durable
    /// on return.
    pub async fn set_consumer_position(&self, name: &str, position: u64) -> Result<(), AuditError> {
        self.store.put_meta(name, position.to_string().into_bytes()).await.map_err(AuditError::Unavailable)
    }

    async fn check_size(&self, name: &str, size: u64) -> Result<(), AuditError> {
        let current = self.head().await?.0;
        if size > current {
            return Err(AuditError::OutOfRange(format!("{name} ({size}) exceeds the log size {current}")));
        }
        Ok(())
    }

    async fn assemble_root(&self, size: u64) -> Result<Hash, AuditError> {
        let plan = Plan::root(size);
        let nodes = self.fetch(&plan).await?;
        Ok(plan.assemble_root(&nodes)?)
    }

    async fn assemble(&self, plan: &Plan) -> Result<Vec<Hash>, AuditError> {
        let nodes = self.fetch(plan).await?;
        Ok(plan.assemble(&nodes)?)
    }

    /// Reads the O(log n) stored nodes a plan needs, in one store call.
    async fn fetch(&self, plan: &Plan) -> Result<HashMap<(u8, u64), Hash>, AuditError> {
        let ids: Vec<(u8, u64)> = plan.nodes().into_iter().collect();
        let hashes = self.store.nodes(&ids).await.map_err(AuditError::Unavailable)?;
        Ok(ids.into_iter().zip(hashes).filter_map(|(id, hash)| hash.map(|h| (id, h))).collect())
    }
}
