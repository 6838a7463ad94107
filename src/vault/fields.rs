//! Turning request bodies into sealed fields and back: validation by declared type, sealing
//! under the customer's data key, and blind-index entries for indexed fields.

use std::collections::BTreeMap;

use serde_json::Value;

use super::VaultError;
use super::index::IndexKeys;
use crate::crypto::{DataKey, Plaintext};
use crate::domain::{CustomerId, Timestamp};
use crate::policy::{FieldKind, PolicySet};
use crate::store::{IndexEntry, StoredField};

/// A validated field value in its stored (normalised) form.
pub(super) struct ValidField {
    pub name: String,
    pub value: Value,
    /// The canonical text its blind index covers ([`crate::domain::field_value::FieldType::normalise`]), if any.
    pub index_form: Option<String>,
    pub index: bool,
    pub unique: bool,
}

/// Validates `name: value` against the policy: the field must be declared, must not be the
/// reserved `payment_methods`, and the value must satisfy the field's type.
pub(super) fn validate(policies: &PolicySet, name: &str, value: &Value) -> Result<ValidField, VaultError> {
    let field = policies.field(name).ok_or_else(|| VaultError::UnknownField(name.to_owned()))?;
    let ty = match field.kind {
        FieldKind::Value(ty) => ty,
        FieldKind::PaymentMethods => {
            return Err(VaultError::BadRequest(
                "payment_methods are added through /v1/customers/{id}/payment-methods".into(),
            ));
        }
    };
    let normalised = ty
        .normalise(value)
        .map_err(|e| VaultError::InvalidField { field: name.to_owned(), expected: e.to_string() })?;
    Ok(ValidField {
        name: name.to_owned(),
        value: normalised.stored,
        index_form: normalised.index,
        index: field.index,
        unique: field.unique,
    })
}

/// Validates every member of a `fields` object; `null` members are returned as removals.
pub(super) fn validate_patch(
    policies: &PolicySet,
    fields: &BTreeMap<String, Value>,
) -> Result<(Vec<ValidField>, Vec<String>), VaultError> {
    let mut set = Vec::new();
    let mut removed = Vec::new();
    for (name, value) in fields {
        if value.is_null() {
            if policies.field(name).is_none() {
                return Err(VaultError::UnknownField(name.clone()));
            }
            removed.push(name.clone());
        } else {
            set.push(validate(policies, name, value)?);
        }
    }
    Ok((set, removed))
}

/// Seals one validated value for `customer`.
pub(super) fn seal(
    key: &DataKey,
    customer: &CustomerId,
    field: &ValidField,
    now: Timestamp,
) -> Result<StoredField, VaultError> {
    let plaintext = Plaintext::new(serde_json::to_vec(&field.value).map_err(internal)?);
    let sealed = key.seal(customer, &field.name, plaintext.expose())?;
    Ok(StoredField { sealed, written_at: now })
}

/// Opens one stored value.
pub(super) fn open(
    key: &DataKey,
    customer: &CustomerId,
    name: &str,
    stored: &StoredField,
) -> Result<Value, VaultError> {
    let plaintext = key.open(customer, name, &stored.sealed)?;
    serde_json::from_slice(plaintext.expose()).map_err(internal)
}

/// The blind-index entries of a validated value under each of `keys`, if its field is indexed.
///
/// Writes, unique checks and lookups all call this with a value from [`validate`], so the HMAC
/// input is always the type's one canonical form and equivalent spellings share an entry.
pub(super) fn index_entries(keys: &IndexKeys<'_>, field: &ValidField) -> Vec<IndexEntry> {
    let Some(form) = field.index_form.as_deref().filter(|_| field.index) else {
        return Vec::new();
    };
    keys.each()
        .map(|(epoch, key)| IndexEntry {
            field: field.name.clone(),
            index: key.compute(&field.name, form).0,
            unique: field.unique,
            epoch,
        })
        .collect()
}

fn internal(e: serde_json::Error) -> VaultError {
    value_error("field value", &e)
}

/// An internal error about decrypted data that names only where decoding failed: serde's own
/// messages can quote the offending value, which here is a customer's data.
pub(super) fn value_error(what: &str, e: &serde_json::Error) -> VaultError {
    VaultError::Internal(format!(
        "{what}: {:?} error at line {} column {}",
        e.classify(),
        e.line(),
        e.column()
    ))
}
