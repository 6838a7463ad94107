//! Key types. Each zeroizes on drop, has no `Clone` or `Serialize`, and prints `[redacted]`.

use std::fmt;

use aes_gcm::{Aes256Gcm, KeyInit};
use serde::{Deserialize, Serialize};
use zeroize::{Zeroize, Zeroizing};

use super::envelope::{self, WrappedKey};
use super::{CryptoError, fill_random};
use crate::domain::CustomerId;

/// Names a master key version without revealing it: the first 8 bytes of
/// HMAC-SHA-256(key, "custodia master key id"), in hex; for a key in a PKCS#11 token, whose bytes
/// cannot be read, a hash of its label and `CKA_ID` instead (see `crypto::pkcs11`). Stored next
/// to every wrapped key so a wrong or missing master key is detected by name, not by a failed
/// decryption.
#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct KeyId(String);

impl KeyId {
    /// The id as text (`mk-` or `ek-` followed by 16 hex digits).
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// True if this names an epoch key (`ek-…`) rather than a master key version.
    pub fn is_epoch(&self) -> bool {
        self.0.starts_with(EPOCH_PREFIX)
    }

    /// The epoch id written as `text` (`ek-` and 16 hex digits), in its canonical form; `None`
    /// for anything else (e.g. a value read back from storage that was never an id).
    pub fn parse_epoch(text: &str) -> Option<KeyId> {
        let raw = KeyId(text.to_owned()).raw(EPOCH_PREFIX)?;
        Some(KeyId::from_raw(EPOCH_PREFIX, &raw))
    }

    /// An id from its prefix (`mk-` / `ek-`) and 8 raw bytes.
    pub(super) fn from_raw(prefix: &str, raw: &[u8; 8]) -> KeyId {
        KeyId(format!("{prefix}{}", hex(raw)))
    }

    /// The 8 raw bytes of a well-formed id with `prefix`, or `None`.
    pub(super) fn raw(&self, prefix: &str) -> Option<[u8; 8]> {
        let digits = self.0.strip_prefix(prefix)?;
        if digits.len() != 16 {
            return None;
        }
        let mut out = [0u8; 8];
        for (i, b) in out.iter_mut().enumerate() {
            *b = u8::from_str_radix(digits.get(2 * i..2 * i + 2)?, 16).ok()?;
        }
        Some(out)
    }

    /// The id a key of `bytes` gets: `prefix` and the first 8 bytes of HMAC-SHA-256(key, label)
    /// in hex. Reveals nothing of the key.
    pub(super) fn derive(prefix: &str, label: &[u8], bytes: &[u8]) -> KeyId {
        let tag = ring::hmac::sign(&ring::hmac::Key::new(ring::hmac::HMAC_SHA256, bytes), label);
        let mut raw = [0u8; 8];
        raw.copy_from_slice(&tag.as_ref()[..8]);
        KeyId::from_raw(prefix, &raw)
    }
}

/// Prefix of master key ids.
pub(super) const MASTER_PREFIX: &str = "mk-";
/// Prefix of epoch key ids.
pub(super) const EPOCH_PREFIX: &str = "ek-";

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyId({})", self.0)
    }
}

/// A 256-bit master key (key-encryption key). It only ever wraps other keys.
///
/// Either software (32 bytes from a file or the environment, expanded in memory) or a key held
/// by a PKCS#11 token, which then runs every wrap and unwrap and never hands the key out. Both
/// produce the same sealed layout, so a [`MasterKeyring`] mixes them freely: moving between a
/// file key and a token key is an ordinary rotation.
pub struct MasterKey {
    id: KeyId,
    kind: MasterKind,
}

enum MasterKind {
    /// Boxed: the expanded key schedule is large (wiped on drop all the same).
    Software(Box<Aes256Gcm>),
    Pkcs11(super::pkcs11::Pkcs11Key),
}

impl MasterKey {
    /// A master key from 32 raw bytes. The caller's copy should be a `Zeroizing` buffer.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, CryptoError> {
        if bytes.len() != 32 {
            return Err(CryptoError::InvalidKey("a master key must be 32 bytes"));
        }
        let id = KeyId::derive(MASTER_PREFIX, b"custodia master key id", bytes);
        let cipher = Aes256Gcm::new_from_slice(bytes)
            .map_err(|_| CryptoError::InvalidKey("a master key must be 32 bytes"))?;
        Ok(MasterKey { id, kind: MasterKind::Software(Box::new(cipher)) })
    }

    /// The master key labelled `label` in a logged-in PKCS#11 token. `setting` is named in
    /// errors (a missing label, a key that could leave the token, one without a `CKA_ID`).
    pub fn from_pkcs11(
        token: &std::sync::Arc<super::Pkcs11Token>,
        label: &str,
        setting: &'static str,
    ) -> Result<Self, CryptoError> {
        let key = token.key(label, setting)?;
        Ok(MasterKey { id: key.id(), kind: MasterKind::Pkcs11(key) })
    }

    /// A master key from base64 text (standard alphabet, with or without padding).
    pub fn from_base64(text: &str) -> Result<Self, CryptoError> {
        use base64::Engine;
        let bytes = Zeroizing::new(
            base64::engine::general_purpose::STANDARD
                .decode(text.trim())
                .map_err(|_| CryptoError::InvalidKey("a master key must be base64"))?,
        );
        Self::from_bytes(&bytes)
    }

    /// Generates fresh master key material, returned base64-encoded for a key file.
    pub fn generate_base64() -> Result<Zeroizing<String>, CryptoError> {
        use base64::Engine;
        let mut bytes = Zeroizing::new([0u8; 32]);
        fill_random(bytes.as_mut())?;
        Ok(Zeroizing::new(base64::engine::general_purpose::STANDARD.encode(bytes.as_ref())))
    }

    /// This key's version id.
    pub fn id(&self) -> &KeyId {
        &self.id
    }

    /// Where the key lives, for the start-up log: `in memory`, or the token and key label.
    pub fn location(&self) -> String {
        match &self.kind {
            MasterKind::Software(_) => "in memory (from the environment or a file)".to_owned(),
            MasterKind::Pkcs11(key) => key.describe(),
        }
    }

    /// Whether the key lives in a PKCS#11 token (every use is a blocking token call).
    pub fn is_token(&self) -> bool {
        matches!(self.kind, MasterKind::Pkcs11(_))
    }

    /// The key to hand to `envelope::seal_with` / `open_with` (which run AES-256-GCM in memory
    /// or in the token, see [`envelope::GcmKey`]).
    pub(super) fn cipher(&self) -> &Self {
        self
    }
}

impl envelope::GcmKey for MasterKey {
    fn gcm_seal(&self, nonce: &[u8; 12], plaintext: &[u8], aad: &[u8]) -> Result<Vec<u8>, CryptoError> {
        match &self.kind {
            MasterKind::Software(cipher) => cipher.gcm_seal(nonce, plaintext, aad),
            MasterKind::Pkcs11(key) => key.encrypt(nonce, plaintext, aad),
        }
    }

    fn gcm_open(
        &self,
        nonce: &[u8; 12],
        ciphertext: &[u8],
        aad: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
        match &self.kind {
            MasterKind::Software(cipher) => cipher.gcm_open(nonce, ciphertext, aad),
            MasterKind::Pkcs11(key) => key.decrypt(nonce, ciphertext, aad),
        }
    }
}

impl fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            MasterKind::Software(_) => write!(f, "MasterKey({}, [redacted])", self.id),
            MasterKind::Pkcs11(key) => write!(f, "MasterKey({}, {key:?})", self.id),
        }
    }
}

/// The current master key plus older versions still needed to unwrap keys that have not been
/// re-wrapped yet (during a rotation).
#[derive(Debug)]
pub struct MasterKeyring {
    current: MasterKey,
    previous: Vec<MasterKey>,
}

impl MasterKeyring {
    /// A keyring that wraps under `current` and can still unwrap under `previous`.
    pub fn new(current: MasterKey, previous: Vec<MasterKey>) -> Self {
        MasterKeyring { current, previous }
    }

    /// The version new wraps are made under.
    pub fn current_id(&self) -> &KeyId {
        &self.current.id
    }

    /// Re-wraps a customer's data key under the current master key; `None` if it already is.
    pub fn rewrap_data_key(
        &self,
        customer: &CustomerId,
        wrapped: &WrappedKey,
    ) -> Result<Option<WrappedKey>, CryptoError> {
        if &wrapped.master_key == self.current_id() {
            return Ok(None);
        }
        let key = self.unwrap_data_key(customer, wrapped)?;
        self.wrap_data_key(customer, &key).map(Some)
    }

    pub(super) fn find(&self, id: &KeyId) -> Result<&MasterKey, CryptoError> {
        std::iter::once(&self.current)
            .chain(self.previous.iter())
            .find(|k| &k.id == id)
            .ok_or_else(|| CryptoError::UnknownMasterKey(id.clone()))
    }

    /// Wraps a customer's data key; the associated data binds it to that customer.
    pub fn wrap_data_key(&self, customer: &CustomerId, key: &DataKey) -> Result<WrappedKey, CryptoError> {
        let aad = envelope::data_key_aad(customer, &self.current.id);
        envelope::wrap(&self.current, &key.bytes, &aad)
    }

    /// Unwraps a customer's data key. Fails if the wrapped key belongs to another customer.
    pub fn unwrap_data_key(
        &self,
        customer: &CustomerId,
        wrapped: &WrappedKey,
    ) -> Result<DataKey, CryptoError> {
        let master = self.find(&wrapped.master_key)?;
        let aad = envelope::data_key_aad(customer, &master.id);
        let bytes = envelope::unwrap(master, wrapped, &aad)?;
        DataKey::from_raw(bytes)
    }

    /// The key new wraps are made under.
    pub(super) fn current(&self) -> &MasterKey {
        &self.current
    }

    /// Wraps a vault-wide secret (index key, signing key) under the current master key.
    pub(super) fn wrap_system(&self, name: &str, secret: &[u8]) -> Result<WrappedKey, CryptoError> {
        let aad = envelope::system_key_aad(name, &self.current.id);
        envelope::wrap(&self.current, secret, &aad)
    }

    /// Unwraps a vault-wide secret.
    pub(super) fn unwrap_system(
        &self,
        name: &str,
        wrapped: &WrappedKey,
    ) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
        let master = self.find(&wrapped.master_key)?;
        let aad = envelope::system_key_aad(name, &master.id);
        envelope::unwrap(master, wrapped, &aad)
    }
}

/// A customer's 256-bit data key: every value of that customer is sealed with it. Destroying
/// its wrapped form is what erasure (crypto-shredding) means.
pub struct DataKey {
    bytes: Zeroizing<Vec<u8>>,
    cipher: Aes256Gcm,
}

impl DataKey {
    /// A fresh random data key.
    pub fn generate() -> Result<Self, CryptoError> {
        let mut bytes = Zeroizing::new(vec![0u8; 32]);
        fill_random(&mut bytes)?;
        Self::from_raw(bytes)
    }

    pub(super) fn from_raw(bytes: Zeroizing<Vec<u8>>) -> Result<Self, CryptoError> {
        let cipher = Aes256Gcm::new_from_slice(&bytes)
            .map_err(|_| CryptoError::InvalidKey("a data key must be 32 bytes"))?;
        Ok(DataKey { bytes, cipher })
    }

    pub(super) fn cipher(&self) -> &Aes256Gcm {
        &self.cipher
    }

    pub(super) fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The keyed fingerprint of card number `pan` (digits only) on `customer`'s record, for
    /// finding the same card twice on that record: HMAC-SHA-256 over the customer id and the
    /// number, keyed by HMAC-SHA-256(data key, "custodia/card-fingerprint/v1"). Keyed by the
    /// data key, it is shredded with it (an old copy of the record no longer lets anyone with
    /// the master key enumerate numbers); fingerprints of different customers never compare.
    pub fn card_fingerprint(&self, customer: &CustomerId, pan: &str) -> [u8; 32] {
        use ring::hmac;
        let derived = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, &self.bytes), FINGERPRINT_LABEL);
        let derived = Zeroizing::new(<[u8; 32]>::try_from(derived.as_ref()).unwrap_or_default());
        // ring's HMAC key keeps its pads unwiped; it lives only for this call.
        let mut ctx = hmac::Context::with_key(&hmac::Key::new(hmac::HMAC_SHA256, derived.as_ref()));
        ctx.update(customer.as_bytes());
        ctx.update(pan.as_bytes());
        let mut out = [0u8; 32];
        out.copy_from_slice(ctx.sign().as_ref());
        out
    }
}

/// Domain separation of the fingerprint key derived from a data key.
const FINGERPRINT_LABEL: &[u8] = b"custodia/card-fingerprint/v1";

impl fmt::Debug for DataKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DataKey([redacted])")
    }
}

/// Decrypted bytes of one value. Wiped on drop; printing it shows `[redacted]`.
pub struct Plaintext(Zeroizing<Vec<u8>>);

impl Plaintext {
    /// Wraps bytes that hold a customer's value.
    pub fn new(bytes: Vec<u8>) -> Self {
        Plaintext(Zeroizing::new(bytes))
    }

    /// The bytes; keep the borrow short.
    pub fn expose(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for Plaintext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Plaintext([redacted])")
    }
}

/// Vault-wide secrets generated on first start and kept wrapped under the master key.
pub struct SystemKeys {
    /// Keys the blind indexes of lookup fields.
    pub blind_index: super::BlindIndexKey,
    /// Keys the fingerprints of card numbers (a separate key, PCI DSS 3.5.1.1).
    pub card_fingerprint: super::BlindIndexKey,
    /// PKCS#8 document of the Ed25519 key that signs audit checkpoints.
    pub audit_signing_pkcs8: Zeroizing<Vec<u8>>,
    /// Raw bytes of the two HMAC keys, kept only to re-wrap them on master key rotation.
    raw: [Zeroizing<Vec<u8>>; 2],
}

/// [`SystemKeys`] as stored: each secret wrapped under a master key version.
#[derive(Clone, Serialize, Deserialize)]
pub struct WrappedSystemKeys {
    blind_index: WrappedKey,
    card_fingerprint: WrappedKey,
    audit_signing: WrappedKey,
}

impl SystemKeys {
    /// Generates every system key and returns them with their wrapped form for storage.
    pub fn generate(master: &MasterKeyring) -> Result<(SystemKeys, WrappedSystemKeys), CryptoError> {
        let mut index = Zeroizing::new(vec![0u8; 32]);
        fill_random(&mut index)?;
        let mut fingerprint = Zeroizing::new(vec![0u8; 32]);
        fill_random(&mut fingerprint)?;
        let pkcs8 = ring::signature::Ed25519KeyPair::generate_pkcs8(&ring::rand::SystemRandom::new())
            .map_err(|_| CryptoError::Random)?;
        let signing = Zeroizing::new(pkcs8.as_ref().to_vec());
        let wrapped = WrappedSystemKeys {
            blind_index: master.wrap_system("blind_index", &index)?,
            card_fingerprint: master.wrap_system("card_fingerprint", &fingerprint)?,
            audit_signing: master.wrap_system("audit_signing", &signing)?,
        };
        let keys = SystemKeys {
            blind_index: super::BlindIndexKey::from_bytes(&index),
            card_fingerprint: super::BlindIndexKey::from_bytes(&fingerprint),
            audit_signing_pkcs8: signing,
            raw: [index, fingerprint],
        };
        Ok((keys, wrapped))
    }

    /// Unwraps stored system keys.
    pub fn unwrap(master: &MasterKeyring, wrapped: &WrappedSystemKeys) -> Result<Self, CryptoError> {
        let index = master.unwrap_system("blind_index", &wrapped.blind_index)?;
        let fingerprint = master.unwrap_system("card_fingerprint", &wrapped.card_fingerprint)?;
        let signing = master.unwrap_system("audit_signing", &wrapped.audit_signing)?;
        Ok(SystemKeys {
            blind_index: super::BlindIndexKey::from_bytes(&index),
            card_fingerprint: super::BlindIndexKey::from_bytes(&fingerprint),
            audit_signing_pkcs8: signing,
            raw: [index, fingerprint],
        })
    }

    /// These keys wrapped under the keyring's current master key (for rotation).
    pub fn wrap(&self, master: &MasterKeyring) -> Result<WrappedSystemKeys, CryptoError> {
        Ok(WrappedSystemKeys {
            blind_index: master.wrap_system("blind_index", &self.raw[0])?,
            card_fingerprint: master.wrap_system("card_fingerprint", &self.raw[1])?,
            audit_signing: master.wrap_system("audit_signing", &self.audit_signing_pkcs8)?,
        })
    }
}

impl SystemKeys {
    /// The key of actor pseudonyms in the audit log, derived from the blind-index key (so no
    /// further key is stored, and rotating the master key does not change pseudonyms).
    pub fn actor_pseudonym_key(&self) -> super::PseudonymKey {
        super::PseudonymKey::derive(&self.raw[0])
    }

    /// The key of the transparency report's member digests, derived from the blind-index key
    /// under its own label (stable across restarts and master key rotations, so persisted
    /// sets of the open month stay comparable).
    pub fn transparency_member_key(&self) -> super::MemberKey {
        super::MemberKey::derive(&self.raw[0])
    }
}

impl WrappedSystemKeys {
    /// The master key versions these secrets are wrapped under.
    pub fn master_keys(&self) -> Vec<&KeyId> {
        vec![&self.blind_index.master_key, &self.card_fingerprint.master_key, &self.audit_signing.master_key]
    }
}

impl fmt::Debug for SystemKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SystemKeys([redacted])")
    }
}

impl Drop for SystemKeys {
    fn drop(&mut self) {
        self.audit_signing_pkcs8.zeroize();
    }
}

pub(super) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_well_formed_epoch_id_parses() {
        let id = KeyId::parse_epoch("ek-00112233445566ff").unwrap();
        assert_eq!(id.as_str(), "ek-00112233445566ff");
        assert!(id.is_epoch());
        for bad in [
            "mk-00112233445566ff",
            "ek-0011223344556",
            "ek-00112233445566ffaa",
            "ek-zz112233445566ff",
            "",
            "ek-",
        ] {
            assert!(KeyId::parse_epoch(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn key_types_print_redacted() {
        let master = MasterKey::from_bytes(&[7u8; 32]).unwrap();
        assert!(format!("{master:?}").contains("[redacted]"));
        assert!(!format!("{master:?}").contains("7, 7"));
        let data = DataKey::generate().unwrap();
        assert_eq!(format!("{data:?}"), "DataKey([redacted])");
        assert_eq!(format!("{:?}", Plaintext::new(b"secret".to_vec())), "Plaintext([redacted])");
        let ring = MasterKeyring::new(master, vec![]);
        let (keys, _) = SystemKeys::generate(&ring).unwrap();
        assert_eq!(format!("{keys:?}"), "SystemKeys([redacted])");
    }

    #[test]
    fn a_card_fingerprint_depends_on_the_data_key_the_customer_and_the_number() {
        let (k1, k2) = (DataKey::generate().unwrap(), DataKey::generate().unwrap());
        let (a, b) = (CustomerId::random(), CustomerId::random());
        let f = k1.card_fingerprint(&a, "4111111111111111");
        assert_eq!(f, k1.card_fingerprint(&a, "4111111111111111"));
        assert_ne!(f, k2.card_fingerprint(&a, "4111111111111111"), "shredded with the data key");
        assert_ne!(f, k1.card_fingerprint(&b, "4111111111111111"));
        assert_ne!(f, k1.card_fingerprint(&a, "5555555555554444"));
    }

    #[test]
    fn master_key_id_is_stable_and_distinct() {
        let a = MasterKey::from_bytes(&[1u8; 32]).unwrap();
        let a2 = MasterKey::from_bytes(&[1u8; 32]).unwrap();
        let b = MasterKey::from_bytes(&[2u8; 32]).unwrap();
        assert_eq!(a.id(), a2.id());
        assert_ne!(a.id(), b.id());
        assert!(MasterKey::from_bytes(&[1u8; 31]).is_err());
        assert!(MasterKey::from_base64("not base64!").is_err());
    }

    #[test]
    fn data_key_wrapped_for_one_customer_does_not_unwrap_for_another() {
        let ring = MasterKeyring::new(MasterKey::from_bytes(&[3u8; 32]).unwrap(), vec![]);
        let (alice, bob) = (CustomerId::random(), CustomerId::random());
        let key = DataKey::generate().unwrap();
        let wrapped = ring.wrap_data_key(&alice, &key).unwrap();
        assert!(ring.unwrap_data_key(&alice, &wrapped).is_ok());
        assert!(matches!(ring.unwrap_data_key(&bob, &wrapped), Err(CryptoError::Open)));
    }

    #[test]
    fn an_old_master_key_still_unwraps_during_rotation() {
        let old = MasterKeyring::new(MasterKey::from_bytes(&[4u8; 32]).unwrap(), vec![]);
        let id = CustomerId::random();
        let wrapped = old.wrap_data_key(&id, &DataKey::generate().unwrap()).unwrap();
        let new = MasterKeyring::new(
            MasterKey::from_bytes(&[5u8; 32]).unwrap(),
            vec![MasterKey::from_bytes(&[4u8; 32]).unwrap()],
        );
        assert!(new.unwrap_data_key(&id, &wrapped).is_ok());
        let without = MasterKeyring::new(MasterKey::from_bytes(&[5u8; 32]).unwrap(), vec![]);
        assert!(matches!(without.unwrap_data_key(&id, &wrapped), Err(CryptoError::UnknownMasterKey(_))));
    }

    #[test]
    fn rotation_rewraps_under_the_new_key_so_the_old_one_can_go() {
        let old = MasterKeyring::new(MasterKey::from_bytes(&[4u8; 32]).unwrap(), vec![]);
        let id = CustomerId::random();
        let wrapped = old.wrap_data_key(&id, &DataKey::generate().unwrap()).unwrap();
        let (keys, _) = SystemKeys::generate(&old).unwrap();
        let both = MasterKeyring::new(
            MasterKey::from_bytes(&[5u8; 32]).unwrap(),
            vec![MasterKey::from_bytes(&[4u8; 32]).unwrap()],
        );
        let rewrapped = both.rewrap_data_key(&id, &wrapped).unwrap().expect("was under the old key");
        assert!(both.rewrap_data_key(&id, &rewrapped).unwrap().is_none(), "already current");
        let system = keys.wrap(&both).unwrap();
        let new_only = MasterKeyring::new(MasterKey::from_bytes(&[5u8; 32]).unwrap(), vec![]);
        assert!(new_only.unwrap_data_key(&id, &rewrapped).is_ok());
        let again = SystemKeys::unwrap(&new_only, &system).unwrap();
        assert_eq!(again.blind_index.compute("f", "v"), keys.blind_index.compute("f", "v"));
    }

    #[test]
    fn system_keys_round_trip_through_their_wrapped_form() {
        let ring = MasterKeyring::new(MasterKey::from_bytes(&[6u8; 32]).unwrap(), vec![]);
        let (keys, wrapped) = SystemKeys::generate(&ring).unwrap();
        let again = SystemKeys::unwrap(&ring, &wrapped).unwrap();
        assert_eq!(
            keys.blind_index.compute("email", "a@b.example"),
            again.blind_index.compute("email", "a@b.example")
        );
        assert_eq!(keys.audit_signing_pkcs8.as_slice(), again.audit_signing_pkcs8.as_slice());
    }
}
