//! Customer profiles: create, read, update, erase and lookup, as the merchant calls them.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa::ToSchema;

use super::fields::{self, ValidField};
use super::{RequestContext, Step, Vault, VaultError, next_version};
use crate::audit::{Action, EventDraft};
use crate::crypto::DataKey;
use crate::domain::{CustomerId, Role, Timestamp};
use crate::policy::{FieldDecision, FieldKind, LegalBasis, Purpose, Reason};
use crate::store::{ConsentRecord, ConsentSource, CustomerChange, CustomerRecord};

/// The body of a create.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewCustomer {
    /// Field name → value; each value must satisfy its field's declared type.
    #[serde(default)]
    pub fields: BTreeMap<String, Value>,
    /// Consents collected together with the data (each names its `purpose`).
    #[serde(default)]
    pub consents: Vec<ConsentInput>,
}

/// A consent as a caller states it.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ConsentInput {
    /// The purpose (required in a create body; taken from the path otherwise).
    #[serde(default)]
    pub purpose: Option<String>,
    /// Granted or withdrawn.
    pub granted: bool,
    /// Where it was collected, e.g. `checkout-form`.
    pub source: String,
    /// The notice version shown to the customer.
    #[serde(default)]
    pub notice: Option<String>,
}

/// A customer's fields as one caller may see them.
#[derive(Debug, Serialize, ToSchema)]
pub struct CustomerView {
    /// The customer's id.
    #[schema(value_type = String, format = Uuid)]
    pub id: CustomerId,
    /// Field name → value.
    #[schema(value_type = BTreeMap<String, Value>)]
    pub fields: Map<String, Value>,
    /// Fields the customer has that this purpose may not see (absent when no purpose applied).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub withheld: Option<Vec<String>>,
}

/// Proof of an erasure, and when it becomes irreversible where.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErasureReceipt {
    /// The erased customer.
    #[schema(value_type = String, format = Uuid)]
    pub id: CustomerId,
    /// When, RFC 3339.
    pub erased_at: String,
    /// The seq of the `customer.erase` audit event.
    pub audit_seq: u64,
    /// When the customer's data key was destroyed in the data directory, RFC 3339 UTC: when
    /// the erasure's durable write returned, before this answer.
    pub key_destroyed_at: String,
    /// By when copies of the data directory taken before the erasure (backups, snapshots) can
    /// no longer open the customer's data, RFC 3339 UTC: the start of the key epoch that wrapped
    /// the customer's data key at erasure plus (kept epochs + 1) × the epoch period (at least
    /// the request timeout each), plus the request timeout: when that epoch key is destroyed.
    /// Its destruction also waits for the re-wrap of every live data key to newer epochs (about
    /// 30 s per million customers on a 2-core machine), which this time does not include. `null` for
    /// a data key stored before key epochs existed and never re-wrapped: such copies stay
    /// readable to holders of the master key until that master key is retired.
    pub copies_unreadable_by: Option<String>,
    /// One sentence for the customer saying the same.
    pub notice: String,
}

/// The longest accepted consent `source` / `notice` text.
const MAX_LABEL_LEN: usize = 128;

impl Vault {
    /// Creates a customer with validated, sealed fields and optional consents.
    #[tracing::instrument(skip_all)]
    pub async fn create_customer(
        &self,
        ctx: &RequestContext,
        body: NewCustomer,
        purpose: Option<&str>,
    ) -> Result<CustomerId, VaultError> {
        let id = CustomerId::random();
        let draft = EventDraft::new(Action::CustomerCreate, &ctx.principal, &ctx.request_id);
        let purpose = self.resolve_purpose(&draft, purpose, false).await?;
        let draft = draft.purpose(purpose.map(|p| p.name.as_str()));
        let valid = match body
            .fields
            .iter()
            .map(|(n, v)| fields::validate(&self.policies, n, v))
            .collect::<Result<Vec<_>, _>>()
        {
            Ok(valid) => valid,
            Err(e) => return self.refuse(self.invalid_draft(&draft, &e), e).await,
        };
        let names: Vec<String> = valid.iter().map(|f| f.name.clone()).collect();
        let draft = draft.fields(names.clone());
        if let Some(p) = purpose {
            self.check_write_purpose(&draft, p, &names).await?;
        }
        let now = Timestamp::now();
        let key = DataKey::generate()?;
        // A create computes its wrap and index entries once more if the epochs changed under it.
        for attempt in 0..2 {
            // Read before the current epoch is (see `Vault::fence`).
            let fence = self.fence();
            if let Some(id) = self.try_create(&draft, id, &key, &body, &valid, now, fence).await? {
                return Ok(id);
            }
            if attempt == 1 {
                break;
            }
        }
        Err(VaultError::Internal("creating a customer kept meeting epoch changes".into()))
    }

    /// One attempt of a create: `Ok(None)` when the epochs changed under it.
    #[allow(clippy::too_many_arguments)]
    async fn try_create(
        &self,
        draft: &EventDraft,
        id: CustomerId,
        key: &DataKey,
        body: &NewCustomer,
        valid: &[fields::ValidField],
        now: Timestamp,
        fence: Option<crate::store::MetaEquals>,
    ) -> Result<Option<CustomerId>, VaultError> {
        let mut consents = BTreeMap::new();
        for input in &body.consents {
            let record = match self.consent_record(key, &id, input, input.purpose.as_deref(), None, now) {
                Ok(r) => r,
                Err(e) => return self.refuse(draft.clone().failed(["invalid_consent"]), e).await,
            };
            // Two statements for one purpose would leave the customer's choice to array order.
            if consents.insert(record.0, vec![record.1]).is_some() {
                let e = VaultError::InvalidField {
                    field: "consents".into(),
                    expected: "must state each purpose at most once".into(),
                };
                return self.refuse(draft.clone().failed(["invalid_consent"]), e).await;
            }
        }
        let mut record = CustomerRecord {
            id,
            version: 1,
            data_key: self.keyring.wrap_data_key(&id, key)?,
            fields: BTreeMap::new(),
            index_entries: Vec::new(),
            consents,
            objections: BTreeSet::new(),
            restricted: false,
            payment_methods: Vec::new(),
            created_at: now,
            updated_at: now,
        };
        self.apply_fields(&mut record, key, valid, &[], now)?;
        let change = CustomerChange::Put { record: Box::new(record), expected_version: None };
        // A fresh random id cannot already exist: `None` is the epochs changing under it.
        Ok(match self.commit_change(draft.clone().customer(id), change, fence).await? {
            super::Committed::Done(_) => Some(id),
            super::Committed::Retry => None,
        })
    }

    /// Reads a customer's fields for a purpose (rules 2–5 of the disclosure rule).
    #[tracing::instrument(skip_all)]
    pub async fn read_customer(
        &self,
        ctx: &RequestContext,
        id: &str,
        purpose: Option<&str>,
        only: Option<Vec<String>>,
    ) -> Result<CustomerView, VaultError> {
        let (draft, id) = ctx.draft_for(Action::CustomerRead, id);
        let purpose = self.resolve_purpose(&draft, purpose, true).await?;
        // invariant: resolve_purpose with required = true returns a purpose or an error.
        let purpose = purpose.expect("purpose is required");
        let draft = draft.purpose(Some(&purpose.name));
        if let Some(unknown) = only.iter().flatten().find(|n| self.policies.field(n).is_none()) {
            let e = VaultError::UnknownField(unknown.clone());
            return self.refuse(draft.failed(["unknown_field"]), e).await;
        }
        let record = self.load(&draft, id).await?;
        let (view, reasons) = self.view(&record, &self.data_key(&record)?, purpose, only.as_deref())?;
        let mut draft = draft.fields(view.fields.keys().cloned());
        if !reasons.is_empty() {
            draft = draft.withheld(reasons);
        }
        self.record(draft).await?;
        Ok(view)
    }

    /// Changes fields; `null` removes one. Answers the new view for `purpose`, or without a
    /// purpose only the fields just written (a write must not become a purpose-free read).
    #[tracing::instrument(skip_all)]
    pub async fn update_customer(
        &self,
        ctx: &RequestContext,
        id: &str,
        patch: BTreeMap<String, Value>,
        purpose: Option<&str>,
    ) -> Result<CustomerView, VaultError> {
        let (draft, id) = ctx.draft_for(Action::CustomerUpdate, id);
        let purpose = self.resolve_purpose(&draft, purpose, false).await?;
        let draft = draft.purpose(purpose.map(|p| p.name.as_str()));
        let (set, removed) = match fields::validate_patch(&self.policies, &patch) {
            Ok(v) => v,
            Err(e) => return self.refuse(self.invalid_draft(&draft, &e), e).await,
        };
        let names: Vec<String> = patch.keys().cloned().collect();
        let draft = draft.fields(names.clone());
        if let Some(p) = purpose {
            self.check_write_purpose(&draft, p, &names).await?;
        }
        let step = |mut record: CustomerRecord| {
            let key = self.data_key(&record)?;
            let now = Timestamp::now();
            self.apply_fields(&mut record, &key, &set, &removed, now)?;
            // The answer is decided before the commit so that, when it shows stored values (a
            // purpose's view, or a customer's own record), its read is audited with the write.
            let read = EventDraft::new(Action::CustomerRead, &ctx.principal, &ctx.request_id)
                .customer(record.id)
                .purpose(purpose.map(|p| p.name.as_str()));
            let (view, reads) = match purpose {
                Some(p) => {
                    let (view, reasons) = self.view(&record, &key, p, None)?;
                    let mut read = read.fields(view.fields.keys().cloned());
                    if !reasons.is_empty() {
                        read = read.withheld(reasons);
                    }
                    (view, vec![read])
                }
                // A customer rectifying their own record sees all of it.
                None if ctx.principal.role == Role::Customer => {
                    let fields = self.all_fields(&record, &key)?;
                    let read = read.fields(fields.keys().cloned());
                    (CustomerView { id: record.id, fields, withheld: None }, vec![read])
                }
                // Without a purpose only what was just written is echoed: the update event
                // already names those fields, and no stored value is shown.
                None => {
                    let fields = set.iter().map(|f| (f.name.clone(), f.value.clone())).collect();
                    (CustomerView { id: record.id, fields, withheld: None }, Vec::new())
                }
            };
            let change = next_version(record, now);
            Ok(Step::Commit { draft: draft.clone(), change, then: reads, answer: view })
        };
        Ok(self.write_customer("update", &draft, id, step).await?.0)
    }

    /// Erases a customer: the record (with its wrapped data key) and every index entry go.
    #[tracing::instrument(skip_all)]
    pub async fn erase_customer(
        &self,
        ctx: &RequestContext,
        id: &str,
        purpose: Option<&str>,
    ) -> Result<ErasureReceipt, VaultError> {
        let (draft, id) = ctx.draft_for(Action::CustomerErase, id);
        let purpose = self.resolve_purpose(&draft, purpose, false).await?;
        let draft = draft.purpose(purpose.map(|p| p.name.as_str()));
        let step = |record: CustomerRecord| {
            let draft = draft.clone().fields(record.fields.keys().cloned());
            let change = CustomerChange::Delete { id: record.id, expected_version: record.version };
            // The newest epoch among the one that wraps the key being destroyed and those of
            // its index entries decides when copies stop opening (or holding) anything of it.
            let wrapped_under = self.newest_epoch_of(&record);
            Ok(Step::Commit { draft, change, then: Vec::new(), answer: (record.id, wrapped_under) })
        };
        let ((id, wrapped_under), audit_seq) = self.write_customer_seq("erasure", &draft, id, step).await?;
        // The store's write returned: the key is gone from the data directory.
        let destroyed = Timestamp::now();
        let copies = self.copies_unreadable_by(&wrapped_under, destroyed);
        Ok(ErasureReceipt {
            id,
            erased_at: destroyed.to_rfc3339(),
            audit_seq,
            key_destroyed_at: destroyed.to_rfc3339(),
            copies_unreadable_by: copies.map(|t| t.to_rfc3339()),
            notice: super::epochs::erasure_notice(copies),
        })
    }

    /// Finds customers by exact match on one indexed field that the purpose may use.
    #[tracing::instrument(skip_all)]
    pub async fn lookup(
        &self,
        ctx: &RequestContext,
        query: Vec<(String, String)>,
        purpose: Option<&str>,
    ) -> Result<Vec<CustomerId>, VaultError> {
        let draft = EventDraft::new(Action::CustomerLookup, &ctx.principal, &ctx.request_id);
        let purpose = self.resolve_purpose(&draft, purpose, true).await?;
        // invariant: resolve_purpose with required = true returns a purpose or an error.
        let purpose = purpose.expect("purpose is required");
        let draft = draft.purpose(Some(&purpose.name));
        let Ok([(name, value)]) = <[(String, String); 1]>::try_from(query) else {
            let e = VaultError::BadRequest("give exactly one indexed field to look up, e.g. ?email=…".into());
            return self.refuse(draft.failed(["invalid_request"]), e).await;
        };
        let field = match self.policies.field(&name) {
            Some(f) if matches!(f.kind, FieldKind::Value(_)) => f,
            _ => {
                let e = VaultError::UnknownField(name.clone());
                return self.refuse(draft.failed(["unknown_field"]), e).await;
            }
        };
        let draft = draft.fields([name.clone()]);
        if !field.index {
            let e = VaultError::BadRequest(format!("field `{name}` is not indexed for lookup"));
            return self.refuse(draft.failed(["not_indexed"]), e).await;
        }
        if !field.purposes.contains(&purpose.name) {
            let reason = Reason::PurposeNotAllowedForField;
            let e = VaultError::PolicyDenied { denied: vec![(name.clone(), reason)] };
            return self.refuse(draft.denied([reason.as_str()]), e).await;
        }
        let valid = match fields::validate(&self.policies, &name, &Value::String(value)) {
            Ok(v) => v,
            Err(e) => return self.refuse(draft.failed(["invalid_field"]), e).await,
        };
        // The value's index under every key an owner's entry may be under (each live epoch,
        // and the legacy key until migrated): a customer not yet re-indexed is found too.
        let mut matches = Vec::new();
        // Oldest key first (legacy, then the oldest epoch): a re-index only moves entries to
        // newer keys, so a record moved between two of these reads is seen by the later one.
        for entry in fields::index_entries(&self.index_keys(), &valid).into_iter().rev() {
            for id in self.store.lookup(&name, &crate::crypto::BlindIndex(entry.index)).await? {
                if !matches.contains(&id) {
                    matches.push(id);
                }
            }
        }
        // Using a customer's value to find them is a use for the purpose: customers whose
        // consent, objection, restriction or retention rules it out (rules 3–5) are not found.
        let now = Timestamp::now().millis();
        let mut ids = Vec::with_capacity(matches.len());
        for id in matches {
            if let Some(record) = self.store.customer(&id).await?
                && self.policies.decide_use(&purpose.name, &name, &record, now).is_allow()
            {
                ids.push(id);
            }
        }
        // One event per customer found, so each finds the lookup in their export and under the
        // auditor's `customer_id` filter (DESIGN §6); one event without a customer if none was.
        let drafts = if ids.is_empty() {
            vec![draft]
        } else {
            ids.iter().map(|id| draft.clone().customer(*id)).collect()
        };
        self.record_all(drafts).await?;
        Ok(ids)
    }

    /// Fields of `record` visible for `purpose`, plus `field:reason` codes of withheld ones.
    fn view(
        &self,
        record: &CustomerRecord,
        key: &DataKey,
        purpose: &Purpose,
        only: Option<&[String]>,
    ) -> Result<(CustomerView, Vec<String>), VaultError> {
        let now = Timestamp::now().millis();
        let mut shown = Map::new();
        let mut withheld = Vec::new();
        let mut reasons = Vec::new();
        for (name, stored) in &record.fields {
            if only.is_some_and(|o| !o.iter().any(|n| n == name)) {
                continue;
            }
            match self.policies.decide_use(&purpose.name, name, record, now) {
                FieldDecision::Allow { .. } => {
                    shown.insert(name.clone(), fields::open(key, &record.id, name, stored)?);
                }
                FieldDecision::Deny(reason) => {
                    reasons.push(format!("{name}:{}", reason.as_str()));
                    withheld.push(name.clone());
                }
            }
        }
        Ok((CustomerView { id: record.id, fields: shown, withheld: Some(withheld) }, reasons))
    }

    /// Seals `set` into the record, drops `removed`, and keeps index entries in step.
    fn apply_fields(
        &self,
        record: &mut CustomerRecord,
        key: &DataKey,
        set: &[ValidField],
        removed: &[String],
        now: Timestamp,
    ) -> Result<(), VaultError> {
        let touched: BTreeSet<&str> =
            set.iter().map(|f| f.name.as_str()).chain(removed.iter().map(String::as_str)).collect();
        record.index_entries.retain(|e| !touched.contains(e.field.as_str()));
        for name in removed {
            record.fields.remove(name);
        }
        // Under every live index key, so a unique clash with a customer not yet re-indexed to
        // the current epoch is caught (see `vault::index`).
        let keys = self.index_keys();
        for field in set {
            record.fields.insert(field.name.clone(), fields::seal(key, &record.id, field, now)?);
            record.index_entries.extend(fields::index_entries(&keys, field));
        }
        Ok(())
    }

    /// A write that states a purpose may only write fields that serve it (rule 2).
    async fn check_write_purpose(
        &self,
        draft: &EventDraft,
        purpose: &Purpose,
        names: &[String],
    ) -> Result<(), VaultError> {
        let denied: Vec<(String, Reason)> = names
            .iter()
            .filter(|n| self.policies.field(n).is_some_and(|f| !f.purposes.contains(&purpose.name)))
            .map(|n| (n.clone(), Reason::PurposeNotAllowedForField))
            .collect();
        if denied.is_empty() {
            return Ok(());
        }
        let reasons: Vec<String> = denied.iter().map(|(f, r)| format!("{f}:{}", r.as_str())).collect();
        self.refuse(draft.clone().denied(reasons), VaultError::PolicyDenied { denied }).await
    }

    /// Validates a consent statement and returns (purpose, record) for the history, its
    /// `source` sealed under the customer's data key `key`.
    pub(super) fn consent_record(
        &self,
        key: &DataKey,
        customer: &CustomerId,
        input: &ConsentInput,
        purpose: Option<&str>,
        previous: Option<&ConsentRecord>,
        now: Timestamp,
    ) -> Result<(String, ConsentRecord), VaultError> {
        let name = purpose.ok_or_else(|| VaultError::BadRequest("a consent needs a purpose".into()))?;
        let purpose = self.policies.purpose(name).ok_or(VaultError::UnknownPurpose)?;
        if purpose.basis != LegalBasis::Consent {
            return Err(VaultError::InvalidField {
                field: "consents".into(),
                expected: format!(
                    "cannot be recorded for purpose `{}`: its legal basis is not consent",
                    purpose.name
                ),
            });
        }
        let label_ok =
            |s: &str| !s.is_empty() && s.len() <= MAX_LABEL_LEN && s.chars().all(|c| !c.is_control());
        if !label_ok(&input.source) {
            return Err(VaultError::InvalidField {
                field: "source".into(),
                expected: format!("must be 1–{MAX_LABEL_LEN} printable characters"),
            });
        }
        // The notice is stored in plaintext beside the sealed source, so it may only be a
        // version the policy declares: never free text.
        if let Some(notice) = &input.notice
            && purpose.notice.as_deref() != Some(notice.as_str())
        {
            let expected = match &purpose.notice {
                Some(current) => format!("must be the purpose's notice version `{current}` when given"),
                None => format!("must be omitted: purpose `{}` declares no notice version", purpose.name),
            };
            return Err(VaultError::InvalidField { field: "notice".into(), expected });
        }
        if let Some(required) = purpose.notice.as_ref().filter(|_| input.granted)
            && input.notice.as_deref() != Some(required.as_str())
        {
            return Err(VaultError::InvalidField {
                field: "notice".into(),
                expected: format!("must be the current notice version `{required}` to grant consent"),
            });
        }
        let version = previous.map_or(1, |p| p.version + 1);
        let record = ConsentRecord {
            version,
            granted: input.granted,
            notice: input.notice.clone(),
            source: ConsentSource::Sealed(key.seal(
                customer,
                &consent_source_context(&purpose.name, version),
                input.source.as_bytes(),
            )?),
            time: now,
        };
        Ok((purpose.name.clone(), record))
    }

    /// The failure event for a body that did not validate: declared field names only.
    fn invalid_draft(&self, draft: &EventDraft, error: &VaultError) -> EventDraft {
        match error {
            VaultError::InvalidField { field, .. } if self.policies.field(field).is_some() => {
                draft.clone().fields([field.clone()]).failed(["invalid_field"])
            }
            VaultError::UnknownField(_) => draft.clone().failed(["unknown_field"]),
            _ => draft.clone().failed(["invalid_request"]),
        }
    }
}

/// The seal context of the `source` of consent `version` for `purpose`.
pub(super) fn consent_source_context(purpose: &str, version: u32) -> String {
    format!("consents/{purpose}/{version}/source")
}
