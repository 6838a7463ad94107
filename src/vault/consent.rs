//! Consents, objections and restriction: the customer's choices the disclosure rule honours.
//!
//! Every change appends to the record in the same commit as its audit event, and the next
//! decision reads the stored record, so a withdrawal takes effect on the very next request.

use serde::Serialize;
use utoipa::ToSchema;

use super::profile::ConsentInput;
use super::{MAX_WRITE_ATTEMPTS, RequestContext, Vault, VaultError};
use crate::audit::Action;
use crate::domain::Timestamp;
use crate::store::{ConsentRecord, CustomerChange, CustomerRecord};

/// A consent record as the API shows it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ConsentView {
    /// The purpose.
    pub purpose: String,
    /// 1 for the first record of this purpose, then counting up.
    pub version: u32,
    /// Granted or withdrawn.
    pub granted: bool,
    /// The notice version the customer saw.
    pub notice: Option<String>,
    /// Where it was collected.
    pub source: String,
    /// When, RFC 3339.
    pub time: String,
}

impl ConsentView {
    /// The API view of a stored record.
    pub fn new(purpose: &str, record: &ConsentRecord) -> Self {
        ConsentView {
            purpose: purpose.to_owned(),
            version: record.version,
            granted: record.granted,
            notice: record.notice.clone(),
            source: record.source.clone(),
            time: record.time.to_rfc3339(),
        }
    }
}

/// A change to one customer's choices.
enum Choice<'a> {
    Consent(&'a ConsentInput),
    Objection(bool),
    Restriction(bool),
}

impl Vault {
    /// Records a new consent version for `purpose` (a purpose whose basis is consent).
    #[tracing::instrument(skip_all)]
    pub async fn update_consent(
        &self,
        ctx: &RequestContext,
        id: &str,
        purpose: &str,
        input: ConsentInput,
    ) -> Result<ConsentView, VaultError> {
        let record = self.change_choice(ctx, id, purpose, Choice::Consent(&input)).await?;
        let history = record.consents.get(purpose).and_then(|h| h.last());
        // invariant: change_choice appended a record for this purpose, or found an identical
        // newest one.
        Ok(ConsentView::new(purpose, history.expect("consent just recorded")))
    }

    /// Sets or lifts an objection (Art. 21) to `purpose`; only objectable purposes accept one.
    #[tracing::instrument(skip_all)]
    pub async fn update_objection(
        &self,
        ctx: &RequestContext,
        id: &str,
        purpose: &str,
        objected: bool,
    ) -> Result<(), VaultError> {
        self.change_choice(ctx, id, purpose, Choice::Objection(objected)).await.map(|_| ())
    }

    /// Sets or lifts the restriction of processing (Art. 18).
    #[tracing::instrument(skip_all)]
    pub async fn update_restriction(
        &self,
        ctx: &RequestContext,
        id: &str,
        restricted: bool,
    ) -> Result<(), VaultError> {
        self.change_choice(ctx, id, "", Choice::Restriction(restricted)).await.map(|_| ())
    }

    async fn change_choice(
        &self,
        ctx: &RequestContext,
        id: &str,
        purpose: &str,
        choice: Choice<'_>,
    ) -> Result<CustomerRecord, VaultError> {
        let action = match choice {
            Choice::Consent(_) => Action::ConsentUpdate,
            Choice::Objection(_) => Action::ObjectionUpdate,
            Choice::Restriction(_) => Action::RestrictionUpdate,
        };
        let (draft, id) = ctx.draft_for(action, id);
        let declared = match choice {
            Choice::Restriction(_) => None,
            _ => match self.policies.purpose(purpose) {
                Some(p) => Some(p),
                None => {
                    return self.refuse(draft.failed(["unknown_purpose"]), VaultError::UnknownPurpose).await;
                }
            },
        };
        let draft = draft.purpose(declared.map(|p| p.name.as_str()));
        if let (Choice::Objection(_), Some(p)) = (&choice, declared)
            && !p.objectable()
        {
            let e = VaultError::InvalidField {
                field: "objected".into(),
                expected: format!(
                    "cannot be set for purpose `{}`: only legitimate-interests, public-task and direct-marketing purposes accept an objection",
                    p.name
                ),
            };
            return self.refuse(draft.failed(["not_objectable"]), e).await;
        }
        for _ in 0..MAX_WRITE_ATTEMPTS {
            let mut record = self.load(&draft, id).await?;
            let now = Timestamp::now();
            match &choice {
                Choice::Consent(input) => {
                    let previous = record.consents.get(purpose).and_then(|h| h.last());
                    // A repeated identical statement adds no version: the history (and the
                    // record every later write re-encodes) must not grow with retries.
                    if previous.is_some_and(|p| {
                        p.granted == input.granted && p.notice == input.notice && p.source == input.source
                    }) {
                        self.record(draft.clone().withheld(["unchanged"])).await?;
                        return Ok(record);
                    }
                    let (name, entry) = match self.consent_record(input, Some(purpose), previous, now) {
                        Ok(r) => r,
                        Err(e) => return self.refuse(draft.failed(["invalid_consent"]), e).await,
                    };
                    record.consents.entry(name).or_default().push(entry);
                }
                Choice::Objection(true) => {
                    record.objections.insert(purpose.to_owned());
                }
                Choice::Objection(false) => {
                    record.objections.remove(purpose);
                }
                Choice::Restriction(r) => record.restricted = *r,
            }
            let expected = record.version;
            record.version += 1;
            record.updated_at = now;
            let change =
                CustomerChange::Put { record: Box::new(record.clone()), expected_version: Some(expected) };
            if self.commit_change(draft.clone(), change).await?.is_some() {
                return Ok(record);
            }
        }
        Err(VaultError::Internal("choice update kept conflicting with concurrent writers".into()))
    }
}
