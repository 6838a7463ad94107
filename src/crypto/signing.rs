//! Ed25519 signatures for audit checkpoints (ring). Signing costs ~18 µs, so checkpoints are
//! signed, never individual events.
//!
//! ring's `Ed25519KeyPair` does not wipe its private scalar on drop; our own copy of the PKCS#8
//! document stays in a `Zeroizing` buffer ([`super::SystemKeys`]) and is only borrowed here.

use std::fmt;

use ring::signature::{ED25519, Ed25519KeyPair, KeyPair, UnparsedPublicKey};

use super::CryptoError;

/// The Ed25519 key that signs audit checkpoints. No `Clone`, no `Serialize`; prints redacted.
pub struct SigningKey {
    pair: Ed25519KeyPair,
}

impl SigningKey {
    /// The key from a PKCS#8 v2 document (as `SystemKeys` generates it).
    pub fn from_pkcs8(pkcs8: &[u8]) -> Result<Self, CryptoError> {
        Ed25519KeyPair::from_pkcs8(pkcs8)
            .map(|pair| SigningKey { pair })
            .map_err(|_| CryptoError::InvalidKey("the audit signing key is not an Ed25519 PKCS#8 document"))
    }

    /// The key from a raw 32-byte Ed25519 seed (key import and interoperability tests).
    pub fn from_seed(seed: &[u8]) -> Result<Self, CryptoError> {
        Ed25519KeyPair::from_seed_unchecked(seed)
            .map(|pair| SigningKey { pair })
            .map_err(|_| CryptoError::InvalidKey("an Ed25519 seed must be 32 bytes"))
    }

    /// The 32-byte public key.
    pub fn public_key(&self) -> [u8; 32] {
        let mut out = [0u8; 32];
        out.copy_from_slice(self.pair.public_key().as_ref());
        out
    }

    /// The 64-byte signature of `message`.
    pub fn sign(&self, message: &[u8]) -> [u8; 64] {
        let mut out = [0u8; 64];
        out.copy_from_slice(self.pair.sign(message).as_ref());
        out
    }
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SigningKey([redacted])")
    }
}

/// True if `signature` is a valid Ed25519 signature of `message` by `public_key`.
pub fn verify_ed25519(public_key: &[u8; 32], message: &[u8], signature: &[u8]) -> bool {
    UnparsedPublicKey::new(&ED25519, public_key).verify(message, signature).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signature_verifies_only_for_its_message_and_key() {
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&ring::rand::SystemRandom::new()).unwrap();
        let key = SigningKey::from_pkcs8(pkcs8.as_ref()).unwrap();
        let sig = key.sign(b"checkpoint");
        assert!(verify_ed25519(&key.public_key(), b"checkpoint", &sig));
        assert!(!verify_ed25519(&key.public_key(), b"checkpoinT", &sig));
        let other = SigningKey::from_seed(&[9u8; 32]).unwrap();
        assert!(!verify_ed25519(&other.public_key(), b"checkpoint", &sig));
        assert!(!verify_ed25519(&key.public_key(), b"checkpoint", &sig[..63]));
        assert_eq!(format!("{key:?}"), "SigningKey([redacted])");
        assert!(SigningKey::from_pkcs8(b"not a key").is_err());
        assert!(SigningKey::from_seed(&[1u8; 31]).is_err());
    }
}
