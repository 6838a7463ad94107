//! The stored shape of a customer. Everything that is customer data is sealed; the rest is
//! what the vault needs to decide, index and audit without decrypting.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::StoreError;
use crate::crypto::{KeyId, Sealed, WrappedKey};
use crate::domain::{CustomerId, Timestamp};

/// Format version byte of records written before consent sources were sealed (still read).
const RECORD_V1: u8 = 1;
/// Format version byte of records written before index entries named their epoch and card
/// fingerprints were keyed by the data key (still read).
const RECORD_V2: u8 = 2;
/// Format version byte in front of every record written now.
const RECORD_V3: u8 = 3;

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
    /// The epoch whose derived index key computed `index` (destroying the epoch destroys the
    /// key); `None` for a legacy entry under the vault-wide blind-index key (format 2 and older).
    pub epoch: Option<KeyId>,
}

/// The keyed fingerprint of a card number, for duplicate detection within one record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum CardFingerprint {
    /// Keyed by a key derived from the customer's data key: shredded with it.
    DataKey([u8; 32]),
    /// Keyed by the vault-wide fingerprint key (records of format 2 and older): no longer
    /// compared, and replaced by the re-wrap pass.
    Legacy([u8; 32]),
}

/// One version of a customer's consent for one purpose.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ConsentRecord {
    /// 1 for the first record of the purpose, then counting up.
    pub version: u32,
    /// Granted (true) or withdrawn (false).
    pub granted: bool,
    /// The notice version the customer saw, if any (always a version the policy declares).
    pub notice: Option<String>,
    /// Where the consent was collected (e.g. `checkout-form`): caller text, so sealed.
    pub source: ConsentSource,
    /// When it was recorded.
    pub time: Timestamp,
}

/// The `source` of a consent record. It is free text from the caller and may name a person, so
/// it is sealed under the customer's data key like a field value (and shredded with it).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum ConsentSource {
    /// Sealed with the data key (context: `consents/<purpose>/<version>/source`).
    Sealed(Sealed),
    /// Plaintext, as records of format 1 stored it; sealed by the vault on the record's next
    /// write.
    Legacy(String),
}

/// One payment method, sealed.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoredPaymentMethod {
    /// Random token id, the only handle callers see.
    pub token: String,
    /// The payment method's JSON, sealed (context: `payment_methods/<token>`).
    pub sealed: Sealed,
    /// Keyed fingerprint of the card number (never returned), for duplicate detection.
    pub fingerprint: Option<CardFingerprint>,
    /// When it was added.
    pub created_at: Timestamp,
}

impl CustomerRecord {
    /// Encodes the record for storage (format 3).
    pub fn encode(&self) -> Result<Vec<u8>, StoreError> {
        let mut out = vec![RECORD_V3];
        let body = postcard::to_stdvec(self).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        out.extend_from_slice(&body);
        Ok(out)
    }

    /// Decodes a stored record of format 3, 2 (legacy index entries and card fingerprints) or
    /// 1 (also plaintext consent sources).
    pub fn decode(bytes: &[u8]) -> Result<Self, StoreError> {
        let corrupt = |e: postcard::Error| StoreError::Corrupt(e.to_string());
        match bytes.split_first() {
            Some((&RECORD_V3, body)) => postcard::from_bytes(body).map_err(corrupt),
            Some((&RECORD_V2, body)) => {
                postcard::from_bytes::<v2::CustomerRecord>(body).map(Into::into).map_err(corrupt)
            }
            Some((&RECORD_V1, body)) => postcard::from_bytes::<v1::CustomerRecord>(body)
                .map(|r| v2::CustomerRecord::from(r).into())
                .map_err(corrupt),
            _ => Err(StoreError::Corrupt("unknown record format".into())),
        }
    }
}

/// Records of format 2: index entries without an epoch (legacy, under the vault-wide
/// blind-index key) and card fingerprints under the vault-wide fingerprint key.
mod v2 {
    use std::collections::{BTreeMap, BTreeSet};

    use serde::Deserialize;

    use super::{CardFingerprint, ConsentRecord, StoredField};
    use crate::crypto::{Sealed, WrappedKey};
    use crate::domain::{CustomerId, Timestamp};

    #[derive(Deserialize)]
    #[cfg_attr(test, derive(serde::Serialize))]
    pub(super) struct CustomerRecord {
        pub(super) id: CustomerId,
        pub(super) version: u64,
        pub(super) data_key: WrappedKey,
        pub(super) fields: BTreeMap<String, StoredField>,
        pub(super) index_entries: Vec<IndexEntry>,
        pub(super) consents: BTreeMap<String, Vec<ConsentRecord>>,
        pub(super) objections: BTreeSet<String>,
        pub(super) restricted: bool,
        pub(super) payment_methods: Vec<StoredPaymentMethod>,
        pub(super) created_at: Timestamp,
        pub(super) updated_at: Timestamp,
    }

    #[derive(Clone, Deserialize)]
    #[cfg_attr(test, derive(serde::Serialize))]
    pub(super) struct IndexEntry {
        pub(super) field: String,
        pub(super) index: [u8; 32],
        pub(super) unique: bool,
    }

    #[derive(Clone, Deserialize)]
    #[cfg_attr(test, derive(serde::Serialize))]
    pub(super) struct StoredPaymentMethod {
        pub(super) token: String,
        pub(super) sealed: Sealed,
        pub(super) fingerprint: Option<[u8; 32]>,
        pub(super) created_at: Timestamp,
    }

    impl From<CustomerRecord> for super::CustomerRecord {
        fn from(r: CustomerRecord) -> Self {
            super::CustomerRecord {
                id: r.id,
                version: r.version,
                data_key: r.data_key,
                fields: r.fields,
                index_entries: r
                    .index_entries
                    .into_iter()
                    .map(|e| super::IndexEntry {
                        field: e.field,
                        index: e.index,
                        unique: e.unique,
                        epoch: None,
                    })
                    .collect(),
                consents: r.consents,
                objections: r.objections,
                restricted: r.restricted,
                payment_methods: r
                    .payment_methods
                    .into_iter()
                    .map(|m| super::StoredPaymentMethod {
                        token: m.token,
                        sealed: m.sealed,
                        fingerprint: m.fingerprint.map(CardFingerprint::Legacy),
                        created_at: m.created_at,
                    })
                    .collect(),
                created_at: r.created_at,
                updated_at: r.updated_at,
            }
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn a_format_2_record_reads_with_legacy_index_entries_and_fingerprints() {
            let master = crate::crypto::MasterKeyring::new(
                crate::crypto::MasterKey::from_bytes(&[4; 32]).unwrap(),
                vec![],
            );
            let id = CustomerId::random();
            let key = crate::crypto::DataKey::generate().unwrap();
            let old = CustomerRecord {
                id,
                version: 2,
                data_key: master.wrap_data_key(&id, &key).unwrap(),
                fields: BTreeMap::new(),
                index_entries: vec![IndexEntry { field: "email".into(), index: [7; 32], unique: true }],
                consents: BTreeMap::new(),
                objections: BTreeSet::new(),
                restricted: false,
                payment_methods: vec![StoredPaymentMethod {
                    token: "pm_1".into(),
                    sealed: Sealed::from_bytes(vec![1, 2, 3]),
                    fingerprint: Some([9; 32]),
                    created_at: Timestamp::now(),
                }],
                created_at: Timestamp::now(),
                updated_at: Timestamp::now(),
            };
            let mut bytes = vec![super::super::RECORD_V2];
            bytes.extend(postcard::to_stdvec(&old).unwrap());
            let read = super::super::CustomerRecord::decode(&bytes).unwrap();
            assert_eq!(
                read.index_entries,
                vec![super::super::IndexEntry {
                    field: "email".into(),
                    index: [7; 32],
                    unique: true,
                    epoch: None
                }]
            );
            assert_eq!(read.payment_methods[0].fingerprint, Some(CardFingerprint::Legacy([9; 32])));
            let again = super::super::CustomerRecord::decode(&read.encode().unwrap()).unwrap();
            assert_eq!(again.index_entries, read.index_entries);
            assert_eq!(again.payment_methods[0].fingerprint, read.payment_methods[0].fingerprint);
        }
    }
}

/// Records of format 1: the same fields, with a plaintext consent `source`.
mod v1 {
    use std::collections::{BTreeMap, BTreeSet};

    use serde::Deserialize;

    use super::v2::{IndexEntry, StoredPaymentMethod};
    use super::{ConsentSource, StoredField};
    use crate::crypto::WrappedKey;
    use crate::domain::{CustomerId, Timestamp};

    #[derive(Deserialize)]
    #[cfg_attr(test, derive(serde::Serialize))]
    pub(super) struct CustomerRecord {
        id: CustomerId,
        version: u64,
        data_key: WrappedKey,
        fields: BTreeMap<String, StoredField>,
        index_entries: Vec<IndexEntry>,
        consents: BTreeMap<String, Vec<ConsentRecord>>,
        objections: BTreeSet<String>,
        restricted: bool,
        payment_methods: Vec<StoredPaymentMethod>,
        created_at: Timestamp,
        updated_at: Timestamp,
    }

    #[derive(Deserialize)]
    #[cfg_attr(test, derive(serde::Serialize))]
    struct ConsentRecord {
        version: u32,
        granted: bool,
        notice: Option<String>,
        source: String,
        time: Timestamp,
    }

    impl From<CustomerRecord> for super::v2::CustomerRecord {
        fn from(r: CustomerRecord) -> Self {
            let consents = r
                .consents
                .into_iter()
                .map(|(purpose, history)| {
                    let history = history
                        .into_iter()
                        .map(|c| super::ConsentRecord {
                            version: c.version,
                            granted: c.granted,
                            notice: c.notice,
                            source: ConsentSource::Legacy(c.source),
                            time: c.time,
                        })
                        .collect();
                    (purpose, history)
                })
                .collect();
            super::v2::CustomerRecord {
                id: r.id,
                version: r.version,
                data_key: r.data_key,
                fields: r.fields,
                index_entries: r.index_entries,
                consents,
                objections: r.objections,
                restricted: r.restricted,
                payment_methods: r.payment_methods,
                created_at: r.created_at,
                updated_at: r.updated_at,
            }
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn a_format_1_record_reads_with_its_consent_source_as_legacy_text() {
            let master = crate::crypto::MasterKeyring::new(
                crate::crypto::MasterKey::from_bytes(&[3; 32]).unwrap(),
                vec![],
            );
            let id = CustomerId::random();
            let key = crate::crypto::DataKey::generate().unwrap();
            let old = CustomerRecord {
                id,
                version: 3,
                data_key: master.wrap_data_key(&id, &key).unwrap(),
                fields: BTreeMap::new(),
                index_entries: Vec::new(),
                consents: BTreeMap::from([(
                    "marketing".to_owned(),
                    vec![ConsentRecord {
                        version: 1,
                        granted: true,
                        notice: None,
                        source: "signup-form".into(),
                        time: Timestamp::now(),
                    }],
                )]),
                objections: BTreeSet::new(),
                restricted: false,
                payment_methods: Vec::new(),
                created_at: Timestamp::now(),
                updated_at: Timestamp::now(),
            };
            let mut bytes = vec![super::super::RECORD_V1];
            bytes.extend(postcard::to_stdvec(&old).unwrap());
            let read = super::super::CustomerRecord::decode(&bytes).unwrap();
            assert_eq!(read.version, 3);
            let consent = &read.consents["marketing"][0];
            assert!(matches!(&consent.source, ConsentSource::Legacy(s) if s == "signup-form"));
            // Written back, it is format 3 and reads the same.
            let again = super::super::CustomerRecord::decode(&read.encode().unwrap()).unwrap();
            assert!(matches!(&again.consents["marketing"][0].source, ConsentSource::Legacy(_)));
            assert_eq!(read.encode().unwrap()[0], super::super::RECORD_V3);
        }
    }
}
