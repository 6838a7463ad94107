//! The policy's view of a stored customer: consents, objections, restriction, write times.

use crate::policy::{ConsentStatus, Subject};
use crate::store::CustomerRecord;

impl Subject for CustomerRecord {
    fn newest_consent(&self, purpose: &str) -> Option<ConsentStatus<'_>> {
        self.consents
            .get(purpose)
            .and_then(|history| history.last())
            .map(|c| ConsentStatus { granted: c.granted, notice: c.notice.as_deref() })
    }

    fn objected(&self, purpose: &str) -> bool {
        self.objections.contains(purpose)
    }

    fn restricted(&self) -> bool {
        self.restricted
    }

    fn written_at(&self, field: &str) -> Option<i64> {
        self.fields.get(field).map(|f| f.written_at.millis())
    }
}
