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
pub mod jcs;
pub mod merkle;
pub mod proof;
pub mod verify;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;

use crate::crypto::PseudonymKey;
use crate::domain::{CustomerId, Principal, Timestamp};
use crate::store::{AuditAppend, Commit, CustomerChange, Store, StoreError};
use checkpoint::{CheckpointSigner, SignedCheckpoint, VerifierKey};
use merkle::{Frontier, Hash};
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

    /// The event at `seq`, decided at `time`, with the actor's `sub` as the log may hold it.
    fn place(self, seq: u64, time: Timestamp, pseudonyms: &PseudonymKey) -> Event {
        let Actor { role, sub } = self.actor;
        Event {
            seq,
            time: time.to_rfc3339(),
            action: self.action,
            outcome: self.outcome,
            actor: Actor { role, sub: sub.map(|s| recorded_sub(s, pseudonyms)) },
            customer_id: self.customer.map(|c| c.to_string()),
            fields: self.fields,
            purpose: self.purpose,
            recipient: self.recipient,
            reason: self.reason,
            request_id: self.request_id,
        }
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
pub struct AuditLog {
    store: Arc<dyn Store>,
    /// Serialises appends so sequence numbers are dense and the frontier stays in step.
    frontier: Mutex<Frontier>,
    /// A size known to be durable: every event below it survived a flush.
    durable: AtomicU64,
    signer: CheckpointSigner,
    /// Keys the pseudonyms of token subjects that may be personal data ([`recorded_sub`]).
    pseudonyms: PseudonymKey,
    /// The newest signed checkpoint; the lock also serialises signing so sizes only grow.
    latest: Mutex<Option<SignedCheckpoint>>,
}

impl AuditLog {
    /// Opens the log over `store`, rebuilding the append frontier from O(log n) stored nodes,
    /// and checks the stored tree against the newest signed checkpoint: a log shorter than a
    /// checkpoint it signed (events removed) or with a different root at that size (history
    /// rewritten) refuses to open. `pseudonyms` keys the recorded form of token subjects.
    pub async fn open(
        store: Arc<dyn Store>,
        signer: CheckpointSigner,
        pseudonyms: PseudonymKey,
    ) -> Result<Self, AuditError> {
        let size = store.audit_size().await.map_err(AuditError::Unavailable)?;
        let mut roots = Vec::new();
        for (level, index) in Frontier::positions(size) {
            let node = store.audit_node(level, index).await.map_err(AuditError::Unavailable)?;
            roots.push(node.ok_or_else(|| {
                AuditError::Corrupt(format!("missing tree node at level {level}, index {index}"))
            })?);
        }
        let frontier = Frontier::from_roots(size, roots)
            .ok_or_else(|| AuditError::Corrupt("frontier does not match the log size".into()))?;
        let log = AuditLog {
            store,
            frontier: Mutex::new(frontier),
            durable: AtomicU64::new(size),
            signer,
            pseudonyms,
            latest: Mutex::new(None),
        };
        let latest = log.check_latest_checkpoint(size).await?;
        *log.latest.lock().await = latest;
        Ok(log)
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

    /// Appends an event and applies `change` in the same atomic commit, then waits until both
    /// are durable. Returns the event's seq.
    ///
    /// On `Rejected` nothing was written; the caller records what happened with a new draft.
    pub async fn record(&self, draft: EventDraft, change: Option<CustomerChange>) -> Result<u64, AuditError> {
        let seqs = self.record_batch(vec![draft], change).await?;
        // invariant: record_batch returns one seq per draft on success.
        Ok(seqs[0])
    }

    /// Appends several events of one request in order, the first one committed atomically with
    /// `change`, then waits until all are durable (one flush for the whole batch). Returns
    /// their seqs. Used where one answer concerns several customers (one event each, DESIGN
    /// §6) or where a write's answer is also a read (an update event, then a read event).
    ///
    /// On `Rejected` nothing was written. On `Unavailable` some events of the batch may have
    /// been committed; the request fails and returns no data, so the log shows at most an
    /// attempt that was never answered.
    pub async fn record_batch(
        &self,
        drafts: Vec<EventDraft>,
        mut change: Option<CustomerChange>,
    ) -> Result<Vec<u64>, AuditError> {
        let mut seqs = Vec::with_capacity(drafts.len());
        {
            let mut frontier = self.frontier.lock().await;
            for draft in drafts {
                let seq = frontier.size();
                let customer = draft.customer_id();
                let event = draft.place(seq, Timestamp::now(), &self.pseudonyms);
                let bytes = event.canonical_bytes();
                let mut next = frontier.clone();
                let nodes = next.push(merkle::leaf_hash(&bytes));
                let commit = Commit {
                    customer: change.take(),
                    audit: Some(AuditAppend { seq, event: bytes, customer, nodes }),
                };
                // invariant: between a successful store commit and the frontier update there is
                // no await point, and `Store::commit` must not be cancellable after it applied
                // (the sled backend's commit never yields); otherwise a dropped request future
                // could leave the in-memory frontier behind the stored log.
                match self.store.commit(commit).await {
                    Ok(()) => {
                        *frontier = next;
                        crate::metric::audit_appended(event.action, event.outcome, seq + 1);
                    }
                    Err(e @ (StoreError::VersionConflict | StoreError::UniqueViolation { .. })) => {
                        return Err(AuditError::Rejected(e));
                    }
                    Err(e) => return Err(AuditError::Unavailable(e)),
                }
                seqs.push(seq);
            }
        }
        self.store.sync().await.map_err(AuditError::Unavailable)?;
        // Every seq up to the last one was committed before the flush that just finished started.
        if let Some(last) = seqs.last() {
            self.durable.fetch_max(last + 1, Ordering::AcqRel);
        }
        Ok(seqs)
    }

    /// The current tree size and root hash (committed events; some may still await a flush).
    pub async fn head(&self) -> (u64, Hash) {
        let frontier = self.frontier.lock().await;
        (frontier.size(), frontier.root())
    }

    /// The log's origin line.
    pub fn origin(&self) -> &str {
        self.signer.origin()
    }

    /// The public key checkpoints are signed with.
    pub fn verifier_key(&self) -> &VerifierKey {
        self.signer.verifier_key()
    }

    /// The newest signed checkpoint, signing a new one first if the log grew since. A new
    /// checkpoint only covers durable events (it waits for a flush if need be) and is stored.
    /// `None` while the log is empty.
    pub async fn checkpoint(&self) -> Result<Option<SignedCheckpoint>, AuditError> {
        let mut latest = self.latest.lock().await;
        let (size, root) = self.head().await;
        if size == 0 || latest.as_ref().is_some_and(|c| c.checkpoint.size >= size) {
            return Ok(latest.clone());
        }
        if self.durable.load(Ordering::Acquire) < size {
            // Everything in `head` was committed before this flush starts.
            self.store.sync().await.map_err(AuditError::Unavailable)?;
            self.durable.fetch_max(size, Ordering::AcqRel);
        }
        let signed = self.signer.sign(size, root);
        self.store
            .put_checkpoint(size, signed.note.clone().into_bytes())
            .await
            .map_err(AuditError::Unavailable)?;
        *latest = Some(signed.clone());
        Ok(Some(signed))
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
        let size = self.head().await.0;
        if from > size {
            return Err(AuditError::OutOfRange(format!("from ({from}) is beyond the log size {size}")));
        }
        let end = size.min(from.saturating_add(limit as u64));
        let mut out = Vec::with_capacity((end - from) as usize);
        for index in from..end {
            let leaf = self.store.audit_node(0, index).await.map_err(AuditError::Unavailable)?;
            out.push(leaf.ok_or_else(|| AuditError::Corrupt(format!("leaf hash {index} is missing")))?);
        }
        Ok(out)
    }

    async fn check_size(&self, name: &str, size: u64) -> Result<(), AuditError> {
        let current = self.head().await.0;
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

    /// Reads the O(log n) stored nodes a plan needs.
    async fn fetch(&self, plan: &Plan) -> Result<HashMap<(u8, u64), Hash>, AuditError> {
        let mut nodes = HashMap::new();
        for (level, index) in plan.nodes() {
            if let Some(hash) = self.store.audit_node(level, index).await.map_err(AuditError::Unavailable)? {
                nodes.insert((level, index), hash);
            }
        }
        Ok(nodes)
    }
}
