//! Consents, objections and restriction: the customer's choices the disclosure rule honours.
//!
//! Every change appends to the record in the same commit as its audit event, and the next
//! decision reads the stored record, so a withdrawal takes effect on the very next request.

use serde::Serialize;
use utoipa::ToSchema;

use super::profile::{ConsentInput, consent_source_context};
use super::{RequestContext, Step, Vault, VaultError, next_version};
use crate::audit::Action;
use crate::audit::counters::change;
use crate::crypto::DataKey;
use crate::domain::{CustomerId, Timestamp};
use crate::store::{ConsentRecord, ConsentSource, CustomerRecord};

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

impl Vault {
    /// The consent records of `record` as the API shows them, their sources opened: every
    /// version (`history`), or the newest per purpose.
    pub(super) fn consent_views(
        &self,
        record: &CustomerRecord,
        key: &DataKey,
        history: bool,
    ) -> Result<Vec<ConsentView>, VaultError> {
        let mut views = Vec::new();
        for (purpose, versions) in &record.consents {
            let shown =
                if history { versions.as_slice() } else { &versions[versions.len().saturating_sub(1)..] };
            for consent in shown {
                views.push(ConsentView {
                    purpose: purpose.clone(),
                    version: consent.version,
                    granted: consent.granted,
                    notice: consent.notice.clone(),
                    source: consent_source(key, &record.id, purpose, consent)?,
                    time: consent.time.to_rfc3339(),
                });
            }
        }
        Ok(views)
    }

    /// Seals the plaintext sources that records of format 1 kept, so a record leaves the vault's
    /// hands with no caller text in the clear. Called on every write of a record.
    pub(super) fn seal_legacy_consents(&self, record: &mut CustomerRecord) -> Result<(), VaultError> {
        let legacy = |c: &ConsentRecord| matches!(c.source, ConsentSource::Legacy(_));
        if !record.consents.values().flatten().any(legacy) {
            return Ok(());
        }
        let key = self.data_key(record)?;
        for (purpose, versions) in &mut record.consents {
            for consent in versions.iter_mut() {
                if let ConsentSource::Legacy(text) = &consent.source {
                    let context = consent_source_context(purpose, consent.version);
                    consent.source =
                        ConsentSource::Sealed(key.seal(&record.id, &context, text.as_bytes())?);
                }
            }
        }
        Ok(())
    }
}

/// The plaintext `source` of one consent record.
fn consent_source(
    key: &DataKey,
    customer: &CustomerId,
    purpose: &str,
    consent: &ConsentRecord,
) -> Result<String, VaultError> {
    match &consent.source {
        ConsentSource::Legacy(text) => Ok(text.clone()),
        ConsentSource::Sealed(sealed) => {
            let context = consent_source_context(purpose, consent.version);
            let plaintext = key.open(customer, &context, sealed)?;
            String::from_utf8(plaintext.expose().to_vec())
                .map_err(|_| VaultError::Internal("a sealed consent source is not UTF-8".into()))
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
        // invariant: change_choice appended a record for this purpose, or found an identical
        // newest one, so the newest views include it.
        let key = self.data_key(&record)?;
        let view = self.consent_views(&record, &key, false)?.into_iter().find(|v| v.purpose == purpose);
        Ok(view.expect("consent just recorded"))
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

    /// Applies one choice to a customer; answers the record with it applied (callers read only
    /// its choices, not its version).
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
        let step = |mut record: CustomerRecord| {
            let now = Timestamp::now();
            match &choice {
                Choice::Consent(input) => {
                    let key = self.data_key(&record)?;
                    let previous = record.consents.get(purpose).and_then(|h| h.last());
                    // A repeated identical statement adds no version: the history (and the
                    // record every later write re-encodes) must not grow with retries.
                    let same = match previous {
                        Some(p) if p.granted == input.granted && p.notice == input.notice => {
                            consent_source(&key, &record.id, purpose, p)? == input.source
                        }
                        _ => false,
                    };
                    if same {
                        return Ok(Step::Answer {
                            event: draft.clone().withheld(["unchanged"]),
                            answer: record,
                        });
                    }
                    let consent = self.consent_record(&key, &record.id, input, Some(purpose), previous, now);
                    let (name, entry) = match consent {
                        Ok(r) => r,
                        Err(error) => {
                            return Ok(Step::Refuse {
                                event: draft.clone().failed(["invalid_consent"]),
                                error,
                            });
                        }
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
            // The direction of the change, so the log alone can count grants and withdrawals
            // (the transparency report, `audit::counters`).
            let direction = match &choice {
                Choice::Consent(input) if input.granted => change::GRANTED,
                Choice::Consent(_) => change::WITHDRAWN,
                Choice::Objection(true) => change::OBJECTED,
                Choice::Restriction(true) => change::RESTRICTED,
                Choice::Objection(false) | Choice::Restriction(false) => change::LIFTED,
            };
            let change = next_version(record.clone(), now);
            let draft = draft.clone().withheld([direction]);
            Ok(Step::Commit { draft, change, then: Vec::new(), answer: record })
        };
        Ok(self.write_customer("choice update", &draft, id, step).await?.0)
    }
}
