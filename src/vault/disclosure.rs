//! Disclosures to third parties: the disclosure rule applied to every requested field, all or
//! nothing, with every decision audited with its reasons.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa::ToSchema;

use super::{RequestContext, Vault, VaultError, fields};
use crate::audit::Action;
use crate::domain::Timestamp;
use crate::policy::{FieldDecision, FieldKind, Reason};

/// The body of `POST /v1/disclosures`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DisclosureRequest {
    /// The customer whose data would leave.
    #[schema(format = Uuid)]
    pub customer_id: String,
    /// The third party.
    pub recipient: String,
    /// Why.
    pub purpose: String,
    /// Which fields (1 to 64 names).
    pub fields: Vec<String>,
}

/// An allowed disclosure: the masked values to hand over.
#[derive(Debug, Serialize, ToSchema)]
pub struct Disclosure {
    /// Random id, also the audit event's request correlation.
    pub disclosure_id: String,
    /// The third party.
    pub recipient: String,
    /// The purpose.
    pub purpose: String,
    /// Field → masked value (`null` when the customer has no value for the field).
    #[schema(value_type = BTreeMap<String, Value>)]
    pub fields: Map<String, Value>,
}

/// The most fields one disclosure may name.
const MAX_FIELDS: usize = 64;

impl Vault {
    /// Decides a disclosure and, if every field is allowed, returns the masked values.
    #[tracing::instrument(skip_all)]
    pub async fn disclose(
        &self,
        ctx: &RequestContext,
        req: DisclosureRequest,
    ) -> Result<Disclosure, VaultError> {
        let (mut draft, id) = ctx.draft_for(Action::Disclosure, &req.customer_id);
        // Only declared names reach the audit log; undeclared ones are caller-controlled text.
        if self.policies.recipient(&req.recipient).is_some() {
            draft = draft.recipient(&req.recipient);
        }
        if self.policies.purpose(&req.purpose).is_some() {
            draft = draft.purpose(Some(&req.purpose));
        }
        let requested: BTreeSet<&str> = req.fields.iter().map(String::as_str).collect();
        if requested.is_empty() || requested.len() > MAX_FIELDS {
            let e = VaultError::BadRequest(format!("`fields` must name 1 to {MAX_FIELDS} fields"));
            return self.refuse(draft.failed(["invalid_request"]), e).await;
        }
        let declared: Vec<&str> =
            requested.iter().copied().filter(|f| self.policies.field(f).is_some()).collect();
        let draft = draft.fields(declared.iter().copied());
        let record = self.load(&draft, id).await?;

        let now = Timestamp::now().millis();
        let mut allowed = Vec::new();
        let mut denied: Vec<(String, Reason)> = Vec::new();
        for field in &requested {
            match self.policies.decide_disclosure(&req.recipient, &req.purpose, field, &record, now) {
                FieldDecision::Allow { mask } => allowed.push((*field, mask)),
                FieldDecision::Deny(reason) => denied.push(((*field).to_owned(), reason)),
            }
        }
        // One count per decision; a denial is counted under its first refused field's reason.
        crate::metric::disclosure(denied.first().map(|(_, reason)| *reason));
        if !denied.is_empty() {
            let reasons: Vec<String> = denied
                .iter()
                .map(|(f, r)| {
                    let name = if self.policies.field(f).is_some() { f.as_str() } else { "(undeclared)" };
                    format!("{name}:{}", r.as_str())
                })
                .collect();
            return self.refuse(draft.denied(reasons), VaultError::PolicyDenied { denied }).await;
        }

        let key = self.data_key(&record)?;
        let mut values = Map::new();
        for (field, mask) in allowed {
            let kind = self.policies.field(field).map(|f| &f.kind);
            let value = match kind {
                Some(FieldKind::PaymentMethods) => self.disclosed_payment_methods(&record, &key, mask)?,
                _ => match record.fields.get(field) {
                    Some(stored) => mask.apply(&fields::open(&key, &record.id, field, stored)?),
                    None => Value::Null,
                },
            };
            values.insert(field.to_owned(), value);
        }
        self.record(draft).await?;
        Ok(Disclosure {
            disclosure_id: uuid::Uuid::new_v4().to_string(),
            recipient: req.recipient,
            purpose: req.purpose,
            fields: values,
        })
    }
}
