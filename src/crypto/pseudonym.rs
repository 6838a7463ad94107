//! Keyed pseudonyms for caller-controlled identifiers that must be recorded but may carry
//! personal data (a token `sub` that is an e-mail address, say): HMAC-SHA-256 under a key derived
//! from the vault's blind-index key, so equal inputs give equal pseudonyms and nothing can be
//! recovered without the key.

use std::fmt;

/// Label that separates the pseudonym key from every other use of the blind-index key.
const DERIVATION_LABEL: &[u8] = b"custodia/v1/audit-actor-pseudonym";

/// The key of actor pseudonyms in the audit log. Derived, never stored.
pub struct PseudonymKey(ring::hmac::Key);

impl PseudonymKey {
    /// Derives the pseudonym key from raw key bytes (HMAC-SHA-256 of a fixed label, RFC 2104),
    /// so a pseudonym cannot be computed from, or confused with, a blind index.
    pub fn derive(root: &[u8]) -> Self {
        let root = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, root);
        let derived = ring::hmac::sign(&root, DERIVATION_LABEL);
        PseudonymKey(ring::hmac::Key::new(ring::hmac::HMAC_SHA256, derived.as_ref()))
    }

    /// The pseudonym of `text`: `"pseudonym:"` and 32 lower-case hex digits (128 bits of
    /// HMAC-SHA-256). Stable for the life of the vault's keys.
    pub fn pseudonym(&self, text: &str) -> String {
        let tag = ring::hmac::sign(&self.0, text.as_bytes());
        format!("pseudonym:{}", super::keys::hex(&tag.as_ref()[..16]))
    }
}

/// Label of the transparency report's member-digest key.
const MEMBER_LABEL: &[u8] = b"custodia/v1/transparency-member";

/// The key of the transparency report's member digests: who is in each cell of the month still
/// open (`audit::counters::Member`). A keyed digest, so the persisted sets hold no customer id
/// and cannot be matched to one without the key; derived, never stored.
pub struct MemberKey(ring::hmac::Key);

impl MemberKey {
    /// Derives the member key from raw key bytes (HMAC-SHA-256 of a fixed label, RFC 2104).
    pub fn derive(root: &[u8]) -> Self {
        let root = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, root);
        let derived = ring::hmac::sign(&root, MEMBER_LABEL);
        MemberKey(ring::hmac::Key::new(ring::hmac::HMAC_SHA256, derived.as_ref()))
    }

    /// A fresh random key, for a count that is never persisted (the offline recount: only
    /// distinctness matters, not which digest a member gets).
    pub fn random() -> Result<Self, super::CryptoError> {
        let mut root = zeroize::Zeroizing::new([0u8; 32]);
        super::fill_random(root.as_mut())?;
        Ok(MemberKey::derive(root.as_ref()))
    }

    /// The first 128 bits of HMAC-SHA-256(key, `text`), big-endian.
    pub fn digest(&self, text: &str) -> u128 {
        let tag = ring::hmac::sign(&self.0, text.as_bytes());
        let mut first = [0u8; 16];
        first.copy_from_slice(&tag.as_ref()[..16]);
        u128::from_be_bytes(first)
    }
}

impl fmt::Debug for MemberKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MemberKey([redacted])")
    }
}

impl fmt::Debug for PseudonymKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PseudonymKey([redacted])")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pseudonyms_are_stable_keyed_and_opaque() {
        let a = PseudonymKey::derive(&[1; 32]);
        let b = PseudonymKey::derive(&[2; 32]);
        let p = a.pseudonym("jane.doe@example.com");
        assert_eq!(p, a.pseudonym("jane.doe@example.com"));
        assert_ne!(p, b.pseudonym("jane.doe@example.com"));
        assert_ne!(p, a.pseudonym("john.doe@example.com"));
        assert!(p.starts_with("pseudonym:") && p.len() == "pseudonym:".len() + 32);
        assert!(!p.contains("jane"));
        assert_eq!(format!("{a:?}"), "PseudonymKey([redacted])");
    }

    #[test]
    fn member_digests_are_stable_keyed_and_apart_from_pseudonyms() {
        let a = MemberKey::derive(&[1; 32]);
        assert_eq!(a.digest("customer:x"), a.digest("customer:x"));
        assert_ne!(a.digest("customer:x"), a.digest("customer:y"));
        assert_ne!(a.digest("customer:x"), MemberKey::derive(&[2; 32]).digest("customer:x"));
        let pseudonym = PseudonymKey::derive(&[1; 32]).pseudonym("customer:x");
        assert!(!pseudonym.ends_with(&format!("{:032x}", a.digest("customer:x"))));
        assert_ne!(MemberKey::random().unwrap().digest("a"), MemberKey::random().unwrap().digest("a"));
        assert_eq!(format!("{a:?}"), "MemberKey([redacted])");
    }
}
