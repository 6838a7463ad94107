//! The customer's own view of their data: see everything, export everything (Art. 15 and 20).
//!
//! A customer acts only on the id in their token's `sub`; no call here takes another id.

use serde::Serialize;
use serde_json::{Map, Value};
use utoipa::ToSchema;

use super::consent::ConsentView;
use super::payment::PaymentMethodView;
use super::{RequestContext, Vault, VaultError, fields};
use crate::audit::{Action, Event, EventDraft, Outcome};
use crate::crypto::DataKey;
use crate::domain::{CustomerId, Timestamp};
use crate::store::CustomerRecord;

/// The version of the export document's shape; bumped on any incompatible change.
pub const EXPORT_FORMAT_VERSION: u32 = 1;

/// How many history entries one export reads per store call.
const HISTORY_PAGE: usize = 1000;

/// What `GET /v1/me` answers.
#[derive(Debug, Serialize, ToSchema)]
pub struct OwnProfile {
    /// The customer's id.
    #[schema(value_type = String, format = Uuid)]
    pub id: CustomerId,
    /// Every stored field, unmasked.
    #[schema(value_type = BTreeMap<String, Value>)]
    pub fields: Map<String, Value>,
    /// Payment methods, masked.
    pub payment_methods: Vec<PaymentMethodView>,
    /// The newest consent record per purpose.
    pub consents: Vec<ConsentView>,
    /// Purposes objected to.
    pub objections: Vec<String>,
    /// Whether processing is restricted.
    pub restricted: bool,
}

/// The Art. 15 / Art. 20 export document.
#[derive(Debug, Serialize, ToSchema)]
pub struct Export {
    /// Shape version of this document.
    pub format_version: u32,
    /// When it was generated, RFC 3339.
    pub generated_at: String,
    /// The customer's id.
    #[schema(value_type = String, format = Uuid)]
    pub customer_id: CustomerId,
    /// Every stored field, unmasked.
    #[schema(value_type = BTreeMap<String, Value>)]
    pub fields: Map<String, Value>,
    /// For each stored field: its data category and the purposes it may serve.
    #[schema(value_type = BTreeMap<String, Value>)]
    pub field_info: Map<String, Value>,
    /// Payment methods, masked.
    pub payment_methods: Vec<PaymentMethodView>,
    /// Every consent record ever given or withdrawn, oldest first per purpose.
    pub consent_history: Vec<ConsentView>,
    /// Purposes objected to.
    pub objections: Vec<String>,
    /// Whether processing is restricted.
    pub restricted: bool,
    /// Every disclosure made to a third party.
    pub disclosures: Vec<Value>,
    /// Every access to this customer's data recorded in the audit log.
    pub access_log: Vec<Value>,
    /// What erasure does and by when copies (backups) stop opening the data, in one sentence.
    pub erasure: String,
}

impl Vault {
    /// The customer's own record (`GET /v1/me`).
    #[tracing::instrument(skip_all)]
    pub async fn own_profile(&self, ctx: &RequestContext) -> Result<OwnProfile, VaultError> {
        let (draft, id) = self.own_draft(ctx, Action::CustomerRead);
        let record = self.load(&draft, id).await?;
        // One unwrap of the data key serves every value the answer opens.
        let key = self.data_key(&record)?;
        let fields = self.all_fields(&record, &key)?;
        let payment_methods = self.payment_method_views(&record, &key)?;
        let consents = self.consent_views(&record, &key, false)?;
        self.record(draft.fields(shown_names(&fields, &payment_methods))).await?;
        Ok(OwnProfile {
            id: record.id,
            fields,
            payment_methods,
            consents,
            objections: record.objections.iter().cloned().collect(),
            restricted: record.restricted,
        })
    }

    /// The customer's newest consent record per purpose (`GET /v1/me/consents`). Recorded as a
    /// read of no field: the answer carries consents, not field values.
    #[tracing::instrument(skip_all)]
    pub async fn own_consents(&self, ctx: &RequestContext) -> Result<Vec<ConsentView>, VaultError> {
        let (draft, id) = self.own_draft(ctx, Action::CustomerRead);
        let record = self.load(&draft, id).await?;
        let consents = self.consent_views(&record, &self.data_key(&record)?, false)?;
        self.record(draft.fields(Vec::<String>::new())).await?;
        Ok(consents)
    }

    /// Everything the vault holds and knows about the customer (`GET /v1/me/export`).
    #[tracing::instrument(skip_all)]
    pub async fn export(&self, ctx: &RequestContext) -> Result<Export, VaultError> {
        let (draft, id) = self.own_draft(ctx, Action::CustomerExport);
        let record = self.load(&draft, id).await?;
        let key = self.data_key(&record)?;
        let fields = self.all_fields(&record, &key)?;
        let field_info = fields
            .keys()
            .filter_map(|name| self.policies.field(name).map(|f| (name, f)))
            .map(|(name, f)| {
                (name.clone(), serde_json::json!({ "category": f.category, "purposes": f.purposes }))
            })
            .collect();
        let mut disclosures = Vec::new();
        let mut access_log = Vec::new();
        let mut after = None;
        loop {
            let page = self.store.audit_events_for_customer(&record.id, after, HISTORY_PAGE).await?;
            for (seq, bytes) in &page {
                let event: Event = serde_json::from_slice(bytes)
                    .map_err(|e| VaultError::Internal(format!("stored event {seq} unreadable: {e}")))?;
                if event.action == Action::Disclosure && event.outcome == Outcome::Allowed {
                    disclosures.push(serde_json::json!({
                        "time": event.time, "recipient": event.recipient,
                        "purpose": event.purpose, "fields": event.fields,
                    }));
                }
                access_log.push(serde_json::json!({
                    "seq": event.seq, "time": event.time, "actor_role": event.actor.role,
                    "action": event.action, "outcome": event.outcome,
                    "purpose": event.purpose, "fields": event.fields,
                }));
            }
            match page.last() {
                Some((seq, _)) if page.len() == HISTORY_PAGE => after = Some(*seq),
                _ => break,
            }
        }
        let export = Export {
            format_version: EXPORT_FORMAT_VERSION,
            generated_at: Timestamp::now().to_rfc3339(),
            customer_id: record.id,
            payment_methods: self.payment_method_views(&record, &key)?,
            consent_history: self.consent_views(&record, &key, true)?,
            objections: record.objections.iter().cloned().collect(),
            restricted: record.restricted,
            fields,
            field_info,
            disclosures,
            access_log,
            erasure: super::epochs::erasure_explanation(&self.epochs),
        };
        self.record(draft.fields(shown_names(&export.fields, &export.payment_methods))).await?;
        Ok(export)
    }

    /// Every stored field of a record, decrypted.
    pub(super) fn all_fields(
        &self,
        record: &CustomerRecord,
        key: &DataKey,
    ) -> Result<Map<String, Value>, VaultError> {
        record
            .fields
            .iter()
            .map(|(name, stored)| Ok((name.clone(), fields::open(key, &record.id, name, stored)?)))
            .collect()
    }

    /// A draft for the caller's own record and the id from their token.
    pub(super) fn own_draft(&self, ctx: &RequestContext, action: Action) -> (EventDraft, Option<CustomerId>) {
        ctx.draft_for(action, ctx.principal.sub.as_deref().unwrap_or_default())
    }
}

/// The names an answer showing `fields` and (masked) `payment_methods` carries, as its audit
/// event records them: every field, and `payment_methods` when there is one.
fn shown_names(fields: &Map<String, Value>, payment_methods: &[PaymentMethodView]) -> Vec<String> {
    let mut names: Vec<String> = fields.keys().cloned().collect();
    if !payment_methods.is_empty() {
        names.push(crate::policy::PAYMENT_METHODS.to_owned());
    }
    names
}
