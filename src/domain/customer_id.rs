//! The customer id: 122 random bits in UUID v4 form, never derived from PII.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// An opaque, unguessable customer id (a random UUID v4, lower-case hyphenated).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct CustomerId(uuid::Uuid);

/// The text is not a customer id.
#[derive(Debug, thiserror::Error)]
#[error("not a customer id")]
pub struct InvalidCustomerId;

impl CustomerId {
    /// A new id of 122 random bits (UUID v4) from a CSPRNG: uuid's `fast-rng` draws from
    /// rand's thread-local ChaCha generator seeded by the OS, instead of one `getrandom`
    /// syscall per id (measured: one syscall per request otherwise, for request ids).
    pub fn random() -> Self {
        CustomerId(uuid::Uuid::new_v4())
    }

    /// The 16 raw bytes, used as the storage key.
    pub fn as_bytes(&self) -> &[u8; 16] {
        self.0.as_bytes()
    }

    /// Rebuilds an id from its 16 raw bytes (as read back from storage).
    pub fn from_bytes(bytes: [u8; 16]) -> Self {
        CustomerId(uuid::Uuid::from_bytes(bytes))
    }
}

impl FromStr for CustomerId {
    type Err = InvalidCustomerId;

    /// Accepts only the canonical lower-case hyphenated form of a version-4 UUID, so one
    /// customer has exactly one spelling (ids are compared and logged as text).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.len() != 36 || s.bytes().any(|b| b.is_ascii_uppercase()) {
            return Err(InvalidCustomerId);
        }
        let uuid = uuid::Uuid::try_parse(s).map_err(|_| InvalidCustomerId)?;
        if uuid.get_version_num() != 4 || uuid.hyphenated().to_string() != s {
            return Err(InvalidCustomerId);
        }
        Ok(CustomerId(uuid))
    }
}

impl TryFrom<String> for CustomerId {
    type Error = InvalidCustomerId;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<CustomerId> for String {
    fn from(id: CustomerId) -> String {
        id.to_string()
    }
}

impl fmt::Display for CustomerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0.hyphenated(), f)
    }
}

impl fmt::Debug for CustomerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CustomerId({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_ids_round_trip_through_text() {
        let id = CustomerId::random();
        assert_eq!(id.to_string().parse::<CustomerId>().unwrap(), id);
        assert_eq!(CustomerId::from_bytes(*id.as_bytes()), id);
    }

    #[test]
    fn other_spellings_and_versions_are_refused() {
        let id = CustomerId::random().to_string();
        assert!(id.to_uppercase().parse::<CustomerId>().is_err());
        assert!(id.replace('-', "").parse::<CustomerId>().is_err());
        assert!("00000000-0000-1000-8000-000000000000".parse::<CustomerId>().is_err());
        assert!("../../etc/passwd".parse::<CustomerId>().is_err());
        assert!("".parse::<CustomerId>().is_err());
    }

    proptest::proptest! {
        #[test]
        fn parsing_arbitrary_text_never_panics(s in ".*") {
            let _ = s.parse::<CustomerId>();
        }
    }
}
