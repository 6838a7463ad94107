//! The stored shape of a customer. Everything that is customer data is sealed; the rest is
//! what the vault needs to decide, index and audit without decrypting.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::StoreError;
use crate::crypto::{Sealed, WrappedKey};
use crate::domain::{CustomerId, Timestamp};

/// Format version byte in front of every encoded record.
const RECORD_V1: u8 = 1;

/// One customer as stored.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CustomerRecord {
    /// The customer's id.
    pub id: CustomerId,
    /// Incremented on every change (optimistic concurrency).
    pub version: u64,
    /// The customer's data key, wrapped under a master key version.
    pub data_key: WrappedKey,
    /// Field name → sealed value.
    pub fields: BTreeMap<String, StoredField>,
    /// The blind-index entries this record owns (kept so erasure needs no decryption).
    pub index_entries: Vec<IndexEntry>,
    /// Purpose → consent history, oldest first; the last record counts.
    pub consents: BTreeMap<String, Vec<ConsentRecord>>,
    /// Purposes the customer objected to (Art. 21).
    pub objections: BTreeSet<String>,
    /// Processing restricted (Art. 18).
    pub restricted: bool,
    /// Payment methods, sealed.
    pub payment_methods: Vec<StoredPaymentMethod>,
    /// When the customer was created.
    pub created_at: Timestamp,
    /// When the record last changed.
    pub updated_at: Timestamp,
}

/// One sealed field value.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoredField {
    /// The value's normalised JSON, sealed with the data key (context: the field name).
    pub sealed: Sealed,
    /// Last write, for retention.
    pub written_at: Timestamp,
}

/// One blind-index entry owned by a record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexEntry {
    /// The indexed field.
    pub field: String,
    /// HMAC of the normalised value.
    pub index: [u8; 32],
    /// Whether no other customer may hold the same entry.
    pub unique: bool,
}

/// One version of a customer's consent for one purpose.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ConsentRecord {
    /// 1 for the first record of the purpose, then counting up.
    pub version: u32,
    /// Granted (true) or withdrawn (false).
    pub granted: bool,
    /// The notice version the customer saw, if any.
    pub notice: Option<String>,
    /// Where the consent was collected (e.g. `checkout-form`).
    pub source: String,
    /// When it was recorded.
    pub time: Timestamp,
}

/// One payment method, sealed.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoredPaymentMethod {
    /// Random token id, the only handle callers see.
    pub token: String,
    /// The payment method's JSON, sealed (context: `payment_methods/<token>`).
    pub sealed: Sealed,
    /// Keyed fingerprint of the card number (never returned), for duplicate detection.
    pub fingerprint: Option<[u8; 32]>,
    /// When it was added.
    pub created_at: Timestamp,
}

impl CustomerRecord {
    /// Encodes the record for storage.
    pub fn encode(&self) -> Result<Vec<u8>, StoreError> {
        let mut out = vec![RECORD_V1];
        let body = postcard::to_stdvec(self).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        out.extend_from_slice(&body);
        Ok(out)
    }

    /// Decodes a stored record.
    pub fn decode(bytes: &[u8]) -> Result<Self, StoreError> {
        match bytes.split_first() {
            Some((&RECORD_V1, body)) => {
                postcard::from_bytes(body).map_err(|e| StoreError::Corrupt(e.to_string()))
            }
            _ => Err(StoreError::Corrupt("unknown record format".into())),
        }
    }
}
