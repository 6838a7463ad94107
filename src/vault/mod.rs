//! The service layer: the one path every customer-data operation takes.
//!
//! Each operation authorizes (purpose and policy), loads, decrypts or seals, and records an
//! audit event — allowed, denied or failed — before it answers. A 2xx answer means the change
//! and its event are durable; if the event cannot be made durable the operation fails with
//! [`VaultError::AuditUnavailable`] and returns no data.
//!
//! The vault knows nothing of HTTP; `http/` maps its results and errors to responses.

mod audit_read;
mod consent;
mod disclosure;
mod epochs;
mod fields;
mod index;
mod payment;
mod profile;
mod receipt;
mod retention;
mod rotation;
mod self_service;
mod subject;
mod transparency;

use std::sync::Arc;

use crate::audit::{AuditError, AuditLog, EventDraft};
use crate::crypto::{CryptoError, DataKey, DataKeyring, SystemKeys};
use crate::domain::{CustomerId, Principal, Timestamp};
use crate::policy::{PolicySet, Purpose, Reason};
use crate::store::{CustomerChange, CustomerRecord, MetaEquals, Store, StoreError};

pub use audit_read::{EventPage, EventQuery};
pub use consent::ConsentView;
pub use disclosure::{Disclosure, DisclosureRequest};
pub use epochs::{EPOCH_DESTROYING, EPOCH_REFRESH, EpochSchedule, EpochState, stored_epoch_ids};
pub use payment::{NewPaymentMethod, PaymentMethodView};
pub use profile::{ConsentInput, CustomerView, ErasureReceipt, NewCustomer};
pub use receipt::{MAX_OWN_EVENTS_PAGE, OwnEvents, Receipt};
pub use rotation::{RewrapPass, SYSTEM_KEYS};
pub use self_service::{EXPORT_FORMAT_VERSION, Export, OwnProfile};
pub use transparency::{COUNTERS_META, REPORT_FORMAT_VERSION, TransparencyCounters, TransparencyReport};

/// Every store metadata name the vault writes (`custodia store copy` and backups move these). A
/// new name belongs here too, unless it describes state that only holds with this store's own
/// epoch-key file mid-step ([`EPOCH_DESTROYING`]).
pub const META_NAMES: &[&str] = &[
    SYSTEM_KEYS,
    rotation::ROTATED_TO,
    epochs::KEY_EPOCHS,
    epochs::REWRAPPED_TO,
    index::LEGACY_MIGRATED,
    COUNTERS_META,
];

/// How often an update is retried when another writer changed the record in between.
const MAX_WRITE_ATTEMPTS: usize = 8;

/// Who is asking, and in which request.
#[derive(Debug, Clone)]
pub struct RequestContext {
    /// The authenticated caller.
    pub principal: Principal,
    /// The request's id, recorded in its audit event.
    pub request_id: String,
}

impl RequestContext {
    /// An event draft for `action` on the customer named by `id`, and that id if it parses.
    /// A malformed id is simply a customer that does not exist; it is never recorded.
    pub fn draft_for(&self, action: crate::audit::Action, id: &str) -> (EventDraft, Option<CustomerId>) {
        let id = id.parse::<CustomerId>().ok();
        let mut draft = EventDraft::new(action, &self.principal, &self.request_id);
        if let Some(id) = id {
            draft = draft.customer(id);
        }
        (draft, id)
    }
}

/// Why an operation did not succeed. Messages never contain a customer's value.
#[derive(Debug, thiserror::Error)]
pub enum VaultError {
    /// The customer does not exist (or the id is malformed: the two are indistinguishable).
    #[error("customer not found")]
    NotFound,
    /// A read needs an `X-Purpose`.
    #[error("the X-Purpose header is required for this call")]
    PurposeRequired,
    /// The purpose is not declared in the policy files.
    #[error("purpose is not declared in the policy files")]
    UnknownPurpose,
    /// The policy refuses; one reason per field.
    #[error("denied by policy")]
    PolicyDenied {
        /// (field, reason) for every refused field.
        denied: Vec<(String, Reason)>,
    },
    /// The body names a field the policy files do not declare.
    #[error("unknown field{}", shown_name(.0))]
    UnknownField(String),
    /// A field value does not satisfy its declared type.
    #[error("field `{field}` {expected}")]
    InvalidField {
        /// The declared field name.
        field: String,
        /// What the value must be (never the value itself).
        expected: String,
    },
    /// The request is malformed in a way the HTTP layer could not see.
    #[error("{0}")]
    BadRequest(String),
    /// A unique field's value already belongs to another customer.
    #[error("the value of field `{field}` is already in use")]
    Conflict {
        /// The unique field.
        field: String,
    },
    /// The audit event could not be made durable.
    #[error("the audit log is unavailable")]
    AuditUnavailable,
    /// The change and its audit event are committed, but the event's place in the log (its
    /// seq, which the answer names) is not known yet ([`StoreError::CommittedUnsequenced`]): the
    /// request must not be repeated as if it had failed.
    #[error("committed; its audit event is not in the log yet")]
    CommittedUnsequenced,
    /// Something inside failed (detail logged, not returned).
    #[error("internal error")]
    Internal(String),
}

impl From<CryptoError> for VaultError {
    fn from(e: CryptoError) -> Self {
        VaultError::Internal(format!("crypto: {e}"))
    }
}

impl From<StoreError> for VaultError {
    fn from(e: StoreError) -> Self {
        match e {
            // The store cannot be reached (a database outage): nothing was carried out or
            // audited, so the caller gets 503 and may retry, not 500.
            StoreError::Unavailable(detail) => {
                tracing::warn!(%detail, "storage unavailable");
                VaultError::AuditUnavailable
            }
            StoreError::CommittedUnsequenced => VaultError::CommittedUnsequenced,
            e => VaultError::Internal(format!("store: {e}")),
        }
    }
}

/// The vault: policies, keys, store and audit log behind one set of operations.
pub struct Vault {
    policies: Arc<PolicySet>,
    store: Arc<dyn Store>,
    audit: AuditLog,
    /// Shared with blocking-pool tasks that may call a PKCS#11 token (epoch creation, master
    /// rotation): see `crypto::off_async_workers`.
    keyring: Arc<DataKeyring>,
    keys: Arc<SystemKeys>,
    epochs: EpochSchedule,
    /// Blind-index state: legacy entries still possible, and the settle deadline of the last
    /// epoch switch (see `vault::index`).
    index: index::IndexState,
    /// The transparency report's counters, folded incrementally.
    transparency: TransparencyCounters,
}

impl Vault {
    /// Assembles a vault from its parts (see `startup` for how they are made), with the
    /// default epoch schedule (see [`Vault::with_epoch_schedule`]).
    pub fn new(
        policies: Arc<PolicySet>,
        store: Arc<dyn Store>,
        audit: AuditLog,
        keyring: DataKeyring,
        keys: SystemKeys,
    ) -> Self {
        Vault {
            policies,
            store,
            audit,
            keyring: Arc::new(keyring),
            keys: Arc::new(keys),
            epochs: EpochSchedule::default(),
            index: index::IndexState::default(),
            transparency: TransparencyCounters::default(),
        }
    }

    /// Sets the epoch schedule that erasure receipts state and the epoch task follows.
    pub fn with_epoch_schedule(mut self, schedule: EpochSchedule) -> Self {
        self.epochs = schedule;
        self
    }

    /// The epoch schedule.
    pub fn epoch_schedule(&self) -> &EpochSchedule {
        &self.epochs
    }

    /// The data keyring (master keys and epoch keys).
    pub fn keyring(&self) -> &DataKeyring {
        &self.keyring
    }

    /// The loaded policy set.
    pub fn policies(&self) -> &PolicySet {
        &self.policies
    }

    /// The audit log.
    pub fn audit_log(&self) -> &AuditLog {
        &self.audit
    }

    /// The vault-wide keys (audit signing key for checkpoints).
    pub fn system_keys(&self) -> &SystemKeys {
        &self.keys
    }

    /// The storage backend.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// Records a request refused by authentication or role (`auth.denied`).
    pub async fn record_auth_denied(&self, ctx: &RequestContext, reason: &str) -> Result<(), VaultError> {
        let draft = EventDraft::new(crate::audit::Action::AuthDenied, &ctx.principal, &ctx.request_id)
            .denied([reason]);
        self.record(draft).await.map(|_| ())
    }

    /// Records that the store was restored from a backup: a `store.restore` event (actor
    /// `system`, sub `restore`) whose reason codes count what the restore did (`size:N`,
    /// `root:…`, `replayed:N`, `erasures:N`…); never a value.
    pub async fn record_restore(&self, codes: Vec<String>) -> Result<u64, VaultError> {
        let actor = Principal::system("restore");
        self.record_seq(
            EventDraft::new(crate::audit::Action::StoreRestore, &actor, "restore").withheld(codes),
        )
        .await
    }

    /// Appends an event with no data change, answering at its commit: its seq if the backend
    /// gave it (sled; not PostgreSQL, whose sequencer integrates it after the commit).
    async fn record(&self, draft: EventDraft) -> Result<Option<u64>, VaultError> {
        let seqs = self.audit.record_batch(vec![draft], None).await.map_err(audit_failure)?;
        Ok(seqs.first().copied())
    }

    /// Appends an event with no data change and waits for its seq.
    async fn record_seq(&self, draft: EventDraft) -> Result<u64, VaultError> {
        self.audit.record(draft, None).await.map_err(audit_failure)
    }

    /// Appends several events of one request with no data change, made durable together.
    async fn record_all(&self, drafts: Vec<EventDraft>) -> Result<Vec<u64>, VaultError> {
        self.audit.record_batch(drafts, None).await.map_err(audit_failure)
    }

    /// Records a refusal and returns the error to answer with. If even the refusal cannot be
    /// recorded, the answer becomes 503.
    async fn refuse<T>(&self, draft: EventDraft, error: VaultError) -> Result<T, VaultError> {
        self.record(draft).await?;
        Err(error)
    }

    /// Resolves the `X-Purpose` of a call. Undeclared purposes are refused, and never recorded
    /// verbatim (they are caller-controlled text).
    async fn resolve_purpose(
        &self,
        draft: &EventDraft,
        purpose: Option<&str>,
        required: bool,
    ) -> Result<Option<&Purpose>, VaultError> {
        match purpose {
            None if required => {
                self.refuse(draft.clone().denied(["purpose_required"]), VaultError::PurposeRequired).await
            }
            None => Ok(None),
            Some(name) => match self.policies.purpose(name) {
                Some(p) => Ok(Some(p)),
                None => {
                    self.refuse(draft.clone().denied(["unknown_purpose"]), VaultError::UnknownPurpose).await
                }
            },
        }
    }

    /// Loads a customer, recording a `not_found` failure when there is none.
    async fn load(&self, draft: &EventDraft, id: Option<CustomerId>) -> Result<CustomerRecord, VaultError> {
        let record = match id {
            Some(id) => self.store.customer(&id).await?,
            None => None,
        };
        match record {
            Some(r) => {
                self.know_epoch_of(&r).await?;
                Ok(r)
            }
            None => self.refuse(draft.clone().failed(["not_found"]), VaultError::NotFound).await,
        }
    }

    /// Unwraps a record's data key.
    fn data_key(&self, record: &CustomerRecord) -> Result<DataKey, VaultError> {
        Ok(self.keyring.unwrap_data_key(&record.id, &record.data_key)?)
    }

    /// The read-modify-write loop of every change to one existing customer: loads the record
    /// (recording a `not_found` failure when there is none), lets `step` decide on it, and does
    /// what the step decided. A commit that lost the version race to a concurrent writer is
    /// retried on a fresh load, at most [`MAX_WRITE_ATTEMPTS`] times; after that the answer is
    /// [`VaultError::Internal`] naming `operation` (a fixed label, never a value).
    ///
    /// `step` is synchronous and has no effects outside its own state: every event is recorded
    /// here, so a step that returns `Err` records nothing (as `?` on a crypto failure did).
    /// Returns the step's answer and, if the backend gave it at the commit, the seq of the
    /// event this operation recorded (see [`Vault::write_customer_seq`]).
    async fn write_customer<T>(
        &self,
        operation: &'static str,
        draft: &EventDraft,
        id: Option<CustomerId>,
        step: impl FnMut(CustomerRecord) -> Result<Step<T>, VaultError>,
    ) -> Result<(T, Option<u64>), VaultError> {
        self.write_customer_with(operation, draft, id, false, step).await
    }

    /// As [`Vault::write_customer`], waiting for the event's seq (an erasure receipt names it).
    async fn write_customer_seq<T>(
        &self,
        operation: &'static str,
        draft: &EventDraft,
        id: Option<CustomerId>,
        step: impl FnMut(CustomerRecord) -> Result<Step<T>, VaultError>,
    ) -> Result<(T, u64), VaultError> {
        let (answer, seq) = self.write_customer_with(operation, draft, id, true, step).await?;
        let seq = seq.ok_or_else(|| VaultError::Internal(format!("{operation}: the store gave no seq")))?;
        Ok((answer, seq))
    }

    async fn write_customer_with<T>(
        &self,
        operation: &'static str,
        draft: &EventDraft,
        id: Option<CustomerId>,
        need_seq: bool,
        mut step: impl FnMut(CustomerRecord) -> Result<Step<T>, VaultError>,
    ) -> Result<(T, Option<u64>), VaultError> {
        for _ in 0..MAX_WRITE_ATTEMPTS {
            let record = self.load(draft, id).await?;
            // Read before the step reads the current epoch (see `Vault::fence`).
            let fence = self.fence();
            match step(record)? {
                Step::Commit { draft, change, then, answer } => {
                    if let Committed::Done(seq) =
                        self.commit_change_then(draft, change, then, fence, need_seq).await?
                    {
                        return Ok((answer, seq));
                    }
                }
                Step::Answer { event, answer } if need_seq => {
                    return Ok((answer, Some(self.record_seq(event).await?)));
                }
                Step::Answer { event, answer } => return Ok((answer, self.record(event).await?)),
                Step::Refuse { event, error } => return self.refuse(event, error).await,
            }
        }
        Err(VaultError::Internal(format!("{operation} kept conflicting with concurrent writers")))
    }

    /// Commits a change with its event; maps a unique clash to [`VaultError::Conflict`] after
    /// recording it. `Ok(None)` means a concurrent writer won and the caller should retry.
    async fn commit_change(
        &self,
        draft: EventDraft,
        change: CustomerChange,
        fence: Option<MetaEquals>,
    ) -> Result<Committed, VaultError> {
        self.commit_change_then(draft, change, Vec::new(), fence, false).await
    }

    /// As [`Vault::commit_change`], then appends `then` (e.g. the read event of a write whose
    /// answer shows stored values), all made durable by one flush. Returns the change's seq.
    /// A put carries `fence` (read before its data key was wrapped and its index entries
    /// computed); when another node changed the epochs meanwhile, the view is refreshed and
    /// `Committed::Retry` asks the caller to compute the change again. Answers at the commit
    /// unless `need_seq`.
    async fn commit_change_then(
        &self,
        draft: EventDraft,
        change: CustomerChange,
        then: Vec<EventDraft>,
        fence: Option<MetaEquals>,
        need_seq: bool,
    ) -> Result<Committed, VaultError> {
        let mut change = change;
        let mut precondition = None;
        if let CustomerChange::Put { record, .. } = &mut change {
            self.seal_legacy_consents(record)?;
            precondition = fence;
        }
        let drafts = std::iter::once(draft.clone()).chain(then).collect();
        match self.audit.record_fenced(drafts, Some(change), precondition, need_seq).await {
            Ok(seqs) => Ok(Committed::Done(seqs.first().copied())),
            Err(AuditError::Rejected(StoreError::VersionConflict)) => Ok(Committed::Retry),
            Err(AuditError::Rejected(StoreError::PreconditionFailed { .. })) => {
                self.refresh_epochs().await?;
                Ok(Committed::Retry)
            }
            Err(AuditError::Rejected(StoreError::UniqueViolation { field })) => {
                let draft = draft.fields([field.clone()]).failed(["unique_conflict"]);
                self.refuse(draft, VaultError::Conflict { field }).await
            }
            Err(e) => Err(audit_failure(e)),
        }
    }
}

/// How a commit of a change ended.
enum Committed {
    /// Committed; the change's seq if the backend gave it.
    Done(Option<u64>),
    /// A concurrent writer won the version race, or the epochs changed under the change:
    /// compute it again on a fresh load.
    Retry,
}

/// What one attempt of [`Vault::write_customer`] decided about the record it was handed.
enum Step<T> {
    /// Commit `change` with its event `draft`, then the events `then` (durable together), and
    /// answer `answer` once the commit lands; a lost version race makes a new attempt.
    Commit { draft: EventDraft, change: CustomerChange, then: Vec<EventDraft>, answer: T },
    /// Change nothing: record `event` and answer `answer`.
    Answer { event: EventDraft, answer: T },
    /// Change nothing: record the refusal `event` and fail with `error`.
    Refuse { event: EventDraft, error: VaultError },
}

/// The change that stores `record` as the next version of what was loaded, written at `now`.
/// Committing it fails with a version conflict if another writer got there first.
fn next_version(mut record: CustomerRecord, now: Timestamp) -> CustomerChange {
    let expected = record.version;
    record.version += 1;
    record.updated_at = now;
    CustomerChange::Put { record: Box::new(record), expected_version: Some(expected) }
}

/// True if caller text has the shape of a declared name (1–64 of `[a-z0-9_-]`), so an error
/// message may echo it: a value sent by mistake in a key's place is never echoed.
pub fn looks_like_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

/// A caller-given name as error messages show it: `` `name` `` if it [`looks_like_name`], else
/// nothing.
pub fn shown_name(name: &str) -> String {
    if looks_like_name(name) { format!(" `{name}`") } else { String::new() }
}

fn audit_failure(e: AuditError) -> VaultError {
    if let AuditError::Unavailable(StoreError::CommittedUnsequenced) = e {
        tracing::warn!("a write is committed but its audit events are not integrated yet");
        return VaultError::CommittedUnsequenced;
    }
    tracing::error!(error = %e, "audit append failed; refusing the request");
    VaultError::AuditUnavailable
}
