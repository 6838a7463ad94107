//! Envelope encryption: values sealed under a customer's data key, data keys wrapped under a
//! master key. The only place AES-GCM is called.
//!
//! Sealed layout: `version (1) ‖ nonce (12) ‖ ciphertext ‖ tag (16)`. Every seal draws a fresh
//! random 96-bit nonce; with one key per customer the 2^32-seals-per-key bound is far away.
//! Associated data binds each ciphertext to where it belongs, so bytes copied to another
//! customer, field or purpose of use fail to open.

use aes_gcm::aead::{Aead, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use super::keys::{DataKey, KeyId, MasterKey, Plaintext};
use super::{CryptoError, fill_random};
use crate::domain::CustomerId;

const FORMAT_V1: u8 = 1;
const NONCE_LEN: usize = 12;
const TAG_LEN: usize = 16;

/// Bytes sealed with AES-256-GCM, safe to store.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sealed(#[serde(with = "serde_bytes_compat")] Vec<u8>);

impl Sealed {
    /// The stored bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// Rebuilds sealed bytes read from storage (they are checked when opened).
    pub fn from_bytes(bytes: Vec<u8>) -> Self {
        Sealed(bytes)
    }
}

impl std::fmt::Debug for Sealed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Sealed({} bytes)", self.0.len())
    }
}

/// A key wrapped under a named key-encryption key.
///
/// A customer's data key is wrapped under an epoch key (`master_key` is then `ek-…`, see
/// `crypto::epoch`); data keys stored before epochs existed, and vault-wide keys, are wrapped
/// directly under a master key (`mk-…`). The field keeps its name so stored records keep their
/// layout; encoded with postcard a wrapped data key is 82 bytes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WrappedKey {
    /// The key that wrapped it: a master key version (`mk-…`) or an epoch key (`ek-…`).
    pub master_key: KeyId,
    /// The sealed key bytes.
    pub sealed: Sealed,
}

impl DataKey {
    /// Seals one value of `customer`. `context` names where the value lives (a field name, or
    /// `payment_methods/<token>`) and is bound into the associated data.
    pub fn seal(
        &self,
        customer: &CustomerId,
        context: &str,
        plaintext: &[u8],
    ) -> Result<Sealed, CryptoError> {
        let aad = value_aad(customer, context);
        seal_with(self.cipher(), plaintext, &aad)
    }

    /// Opens a value sealed by [`DataKey::seal`] for the same customer and context.
    pub fn open(
        &self,
        customer: &CustomerId,
        context: &str,
        sealed: &Sealed,
    ) -> Result<Plaintext, CryptoError> {
        let aad = value_aad(customer, context);
        open_with(self.cipher(), sealed, &aad).map(|bytes| Plaintext::new(bytes.to_vec()))
    }
}

pub(super) fn wrap(master: &MasterKey, key: &[u8], aad: &[u8]) -> Result<WrappedKey, CryptoError> {
    Ok(WrappedKey { master_key: master.id().clone(), sealed: seal_with(master, key, aad)? })
}

pub(super) fn unwrap(
    master: &MasterKey,
    wrapped: &WrappedKey,
    aad: &[u8],
) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
    open_with(master, &wrapped.sealed, aad)
}

/// A key AES-256-GCM runs under: a key schedule in memory, or a master key that may live in a
/// PKCS#11 token. Either way the sealed layout below is the same.
pub(super) trait GcmKey {
    /// `ciphertext ‖ tag` of `plaintext` under `nonce` and `aad`.
    fn gcm_seal(&self, nonce: &[u8; NONCE_LEN], plaintext: &[u8], aad: &[u8])
    -> Result<Vec<u8>, CryptoError>;
    /// The plaintext of `ciphertext ‖ tag`; [`CryptoError::Open`] when the tag does not verify.
    fn gcm_open(
        &self,
        nonce: &[u8; NONCE_LEN],
        ciphertext: &[u8],
        aad: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, CryptoError>;
}

impl GcmKey for Aes256Gcm {
    fn gcm_seal(
        &self,
        nonce: &[u8; NONCE_LEN],
        plaintext: &[u8],
        aad: &[u8],
    ) -> Result<Vec<u8>, CryptoError> {
        self.encrypt(&Nonce::from(*nonce), Payload { msg: plaintext, aad }).map_err(|_| CryptoError::Open)
    }

    fn gcm_open(
        &self,
        nonce: &[u8; NONCE_LEN],
        ciphertext: &[u8],
        aad: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
        self.decrypt(&Nonce::from(*nonce), Payload { msg: ciphertext, aad })
            .map(Zeroizing::new)
            .map_err(|_| CryptoError::Open)
    }
}

pub(super) fn seal_with<K: GcmKey + ?Sized>(
    cipher: &K,
    plaintext: &[u8],
    aad: &[u8],
) -> Result<Sealed, CryptoError> {
    let mut nonce = [0u8; NONCE_LEN];
    fill_random(&mut nonce)?;
    let ciphertext = cipher.gcm_seal(&nonce, plaintext, aad)?;
    let mut out = Vec::with_capacity(1 + NONCE_LEN + ciphertext.len());
    out.push(FORMAT_V1);
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&ciphertext);
    Ok(Sealed(out))
}

pub(super) fn open_with<K: GcmKey + ?Sized>(
    cipher: &K,
    sealed: &Sealed,
    aad: &[u8],
) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
    let bytes = &sealed.0;
    if bytes.len() < 1 + NONCE_LEN + TAG_LEN || bytes[0] != FORMAT_V1 {
        return Err(CryptoError::Open);
    }
    let mut nonce = [0u8; NONCE_LEN];
    nonce.copy_from_slice(&bytes[1..1 + NONCE_LEN]);
    cipher.gcm_open(&nonce, &bytes[1 + NONCE_LEN..], aad)
}

fn value_aad(customer: &CustomerId, context: &str) -> Vec<u8> {
    let mut aad = Vec::with_capacity(32 + context.len());
    aad.extend_from_slice(b"custodia/value/v1\0");
    aad.extend_from_slice(customer.as_bytes());
    aad.extend_from_slice(context.as_bytes());
    aad
}

pub(super) fn data_key_aad(customer: &CustomerId, master: &KeyId) -> Vec<u8> {
    let mut aad = b"custodia/data-key/v1\0".to_vec();
    aad.extend_from_slice(customer.as_bytes());
    aad.extend_from_slice(master.as_str().as_bytes());
    aad
}

/// Associated data of a data key wrapped under an epoch key: the customer and the epoch's id,
/// under a label of its own, so a key wrapped under a master key never opens as one wrapped
/// under an epoch key (or the other way round).
pub(super) fn epoch_data_key_aad(customer: &CustomerId, epoch: &KeyId) -> Vec<u8> {
    let mut aad = b"custodia/data-key/epoch/v1\0".to_vec();
    aad.extend_from_slice(customer.as_bytes());
    aad.extend_from_slice(epoch.as_str().as_bytes());
    aad
}

/// Associated data of an epoch key wrapped under a master key: the epoch's id, its creation
/// time (so the file cannot be edited to move an epoch's destruction date) and the master id.
pub(super) fn epoch_key_aad(epoch: &KeyId, created_ms: i64, master: &KeyId) -> Vec<u8> {
    let mut aad = b"custodia/epoch-key/v1\0".to_vec();
    aad.extend_from_slice(epoch.as_str().as_bytes());
    aad.push(0);
    aad.extend_from_slice(&created_ms.to_be_bytes());
    aad.extend_from_slice(master.as_str().as_bytes());
    aad
}

pub(super) fn system_key_aad(name: &str, master: &KeyId) -> Vec<u8> {
    let mut aad = b"custodia/system-key/v1\0".to_vec();
    aad.extend_from_slice(name.as_bytes());
    aad.push(0);
    aad.extend_from_slice(master.as_str().as_bytes());
    aad
}

/// Serialises byte vectors as bytes (compact in postcard) rather than as a sequence of numbers.
mod serde_bytes_compat {
    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(bytes)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = Vec<u8>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("bytes")
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Vec<u8>, E> {
                Ok(v.to_vec())
            }
            fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<Vec<u8>, E> {
                Ok(v)
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<u8>, A::Error> {
                let mut out = Vec::new();
                while let Some(b) = seq.next_element::<u8>()? {
                    out.push(b);
                }
                Ok(out)
            }
        }
        d.deserialize_bytes(Visitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sealed_value_opens_only_for_its_customer_and_field() {
        let key = DataKey::generate().unwrap();
        let (alice, bob) = (CustomerId::random(), CustomerId::random());
        let sealed = key.seal(&alice, "email", b"alice@example.com").unwrap();
        assert_eq!(key.open(&alice, "email", &sealed).unwrap().expose(), b"alice@example.com");
        assert!(key.open(&bob, "email", &sealed).is_err());
        assert!(key.open(&alice, "name", &sealed).is_err());
        let other = DataKey::generate().unwrap();
        assert!(other.open(&alice, "email", &sealed).is_err());
    }

    #[test]
    fn every_seal_uses_a_fresh_nonce() {
        let key = DataKey::generate().unwrap();
        let id = CustomerId::random();
        let a = key.seal(&id, "name", b"same").unwrap();
        let b = key.seal(&id, "name", b"same").unwrap();
        assert_ne!(a, b);
    }

    #[test]
    fn tampered_or_truncated_bytes_fail_to_open() {
        let key = DataKey::generate().unwrap();
        let id = CustomerId::random();
        let sealed = key.seal(&id, "name", b"value").unwrap();
        for i in 0..sealed.as_bytes().len() {
            let mut bytes = sealed.as_bytes().to_vec();
            bytes[i] ^= 0x01;
            assert!(key.open(&id, "name", &Sealed::from_bytes(bytes)).is_err(), "byte {i}");
        }
        assert!(key.open(&id, "name", &Sealed::from_bytes(vec![1; 10])).is_err());
        assert!(key.open(&id, "name", &Sealed::from_bytes(vec![])).is_err());
    }

    #[test]
    fn sealed_bytes_do_not_contain_the_plaintext() {
        let key = DataKey::generate().unwrap();
        let sealed = key.seal(&CustomerId::random(), "name", b"Johanna Doe-Smith").unwrap();
        assert!(!sealed.as_bytes().windows(6).any(|w| w == b"Johann"));
    }
}
