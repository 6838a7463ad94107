//! Retention (Art. 5(1)(e)): fields whose `retention_days` have passed since their last write
//! are erased by a periodic sweep, one `retention.purge` event per customer touched.

use super::{Vault, VaultError, next_version};
use crate::audit::{Action, AuditError, EventDraft};
use crate::domain::{Principal, Timestamp};
use crate::store::CustomerRecord;

const SWEEP_PAGE: usize = 500;
const MS_PER_DAY: i64 = 86_400_000;

impl Vault {
    /// Erases every expired field of every customer. Returns how many customers were touched.
    ///
    /// Walks all customer ids in pages and makes each page's purges durable together (one
    /// `write_many`); a record changed concurrently is left for the next sweep rather than
    /// retried.
    pub async fn purge_expired(&self) -> Result<usize, VaultError> {
        let actor = Principal::system("retention");
        let mut touched = 0;
        let mut after = None;
        loop {
            let ids = self.store.customer_ids(after, SWEEP_PAGE).await?;
            let mut writes = Vec::new();
            for id in &ids {
                let Some(mut record) = self.store.customer(id).await? else { continue };
                let now = Timestamp::now();
                let expired = self.expired_fields(&record, now);
                if expired.is_empty() {
                    continue;
                }
                for name in &expired {
                    record.fields.remove(name);
                }
                record.index_entries.retain(|e| !expired.contains(&e.field));
                self.seal_legacy_consents(&mut record)?;
                let request_id = format!("retention-{}", now.millis());
                let draft = EventDraft::new(Action::RetentionPurge, &actor, &request_id)
                    .customer(*id)
                    .fields(expired);
                writes.push((vec![draft], Some(next_version(record, now))));
            }
            if !writes.is_empty() {
                let outcomes = self.audit.record_many(writes).await.map_err(super::audit_failure)?;
                for outcome in outcomes {
                    match outcome {
                        Ok(_) => touched += 1,
                        Err(AuditError::Rejected(_)) => {}
                        Err(e) => return Err(super::audit_failure(e)),
                    }
                }
            }
            match ids.last() {
                Some(last) if ids.len() == SWEEP_PAGE => after = Some(*last),
                _ => return Ok(touched),
            }
        }
    }

    fn expired_fields(&self, record: &CustomerRecord, now: Timestamp) -> Vec<String> {
        record
            .fields
            .iter()
            .filter(|(name, stored)| {
                self.policies.field(name).and_then(|f| f.retention_days).is_some_and(|days| {
                    now.millis() - stored.written_at.millis() > i64::from(days) * MS_PER_DAY
                })
            })
            .map(|(name, _)| name.clone())
            .collect()
    }
}
