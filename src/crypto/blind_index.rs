//! Keyed blind indexes: HMAC-SHA-256 over a field name and a normalised value, so exact-match
//! lookups work without storing the value. The index key never leaves this module.

use std::fmt;

/// The key for blind indexes (and, as a separate instance, for card fingerprints).
///
/// ring's `hmac::Key` keeps its precomputed pads for the process lifetime and does not wipe
/// them on drop; this key lives as long as the process anyway.
pub struct BlindIndexKey(ring::hmac::Key);

/// A blind index value: 32 bytes that reveal nothing without the key.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BlindIndex(pub [u8; 32]);

impl BlindIndexKey {
    /// A key from raw bytes.
    pub fn from_bytes(bytes: &[u8]) -> Self {
        BlindIndexKey(ring::hmac::Key::new(ring::hmac::HMAC_SHA256, bytes))
    }

    /// The blind index of `normalised` in `field`. The field name is part of the input so equal
    /// values in different fields do not share an index.
    ///
    /// `normalised` must be the value's canonical index form
    /// ([`crate::domain::field_value::FieldType::normalise`]); the HMAC compares bytes, so any
    /// other spelling of the same value gives a different index and would escape unique checks
    /// and lookups.
    pub fn compute(&self, field: &str, normalised: &str) -> BlindIndex {
        let mut ctx = ring::hmac::Context::with_key(&self.0);
        ctx.update(&(field.len() as u32).to_be_bytes());
        ctx.update(field.as_bytes());
        ctx.update(normalised.as_bytes());
        let tag = ctx.sign();
        let mut out = [0u8; 32];
        out.copy_from_slice(tag.as_ref());
        BlindIndex(out)
    }
}

impl fmt::Debug for BlindIndexKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("BlindIndexKey([redacted])")
    }
}

impl fmt::Debug for BlindIndex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BlindIndex({})", super::keys::hex(&self.0[..4]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_index_depends_on_key_field_and_value() {
        let k1 = BlindIndexKey::from_bytes(&[1; 32]);
        let k2 = BlindIndexKey::from_bytes(&[2; 32]);
        let a = k1.compute("email", "a@example.com");
        assert_eq!(a, k1.compute("email", "a@example.com"));
        assert_ne!(a, k2.compute("email", "a@example.com"));
        assert_ne!(a, k1.compute("phone", "a@example.com"));
        assert_ne!(a, k1.compute("email", "b@example.com"));
        assert_eq!(format!("{k1:?}"), "BlindIndexKey([redacted])");
    }
}
