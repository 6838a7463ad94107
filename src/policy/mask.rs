//! Masks: how much of a field's value leaves the vault in a disclosure (DESIGN §3).
//!
//! This module owns the mask names, which masks fit which field types, and applying a mask to a
//! JSON value. Applying a mask must never panic and must never reveal more than the mask allows:
//! a value the mask cannot sensibly cut (a number, an object, a string of the wrong shape) becomes
//! `"[redacted]"`.

use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::domain::field_value::FieldType;
use crate::policy::FieldKind;

/// What replaces a value hidden completely.
pub const REDACTED: &str = "[redacted]";

/// How a field's value is masked when it is disclosed to a recipient.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mask {
    /// The value is shown as is.
    #[default]
    None,
    /// The value is replaced by `"[redacted]"`.
    Redact,
    /// Only the last four characters are kept: `"***1234"`.
    Last4,
    /// The first character of the local part and the domain are kept: `"j***@example.com"`.
    Email,
    /// Only the year of a date is kept: `"1990-**-**"`.
    Year,
}

impl Mask {
    /// Every mask, in declaration order.
    pub const ALL: [Mask; 5] = [Mask::None, Mask::Redact, Mask::Last4, Mask::Email, Mask::Year];

    /// The name used in policy files (`"none"`, `"redact"` …).
    pub fn as_str(&self) -> &'static str {
        match self {
            Mask::None => "none",
            Mask::Redact => "redact",
            Mask::Last4 => "last4",
            Mask::Email => "email",
            Mask::Year => "year",
        }
    }

    /// The mask with this policy-file name, if there is one (exact, case-sensitive match).
    pub fn from_name(name: &str) -> Option<Mask> {
        Mask::ALL.into_iter().find(|m| m.as_str() == name)
    }

    /// Whether this mask makes sense on a field of type `ty`.
    ///
    /// `none` and `redact` fit every type; `last4` fits every type whose value is one string
    /// (not `address`); `email` fits only `email`; `year` fits only `date`.
    pub fn fits(&self, ty: FieldType) -> bool {
        match self {
            Mask::None | Mask::Redact => true,
            Mask::Last4 => ty != FieldType::Address,
            Mask::Email => ty == FieldType::Email,
            Mask::Year => ty == FieldType::Date,
        }
    }

    /// Whether this mask fits a field of this kind; `payment_methods` takes `none`, `redact` or
    /// `last4`.
    pub fn fits_kind(&self, kind: &FieldKind) -> bool {
        match kind {
            FieldKind::Value(ty) => self.fits(*ty),
            FieldKind::PaymentMethods => matches!(self, Mask::None | Mask::Redact | Mask::Last4),
        }
    }

    /// Applies the mask to a value.
    ///
    /// `none` returns the value unchanged and `redact` returns `"[redacted]"`. `last4`, `email`
    /// and `year` need a string of the right shape; anything else becomes `"[redacted]"`.
    pub fn apply(&self, value: &Value) -> Value {
        let masked = match (self, value) {
            (Mask::None, _) => return value.clone(),
            (Mask::Last4, Value::String(text)) => Some(last4(text)),
            (Mask::Email, Value::String(text)) => email(text),
            (Mask::Year, Value::String(text)) => year(text),
            _ => None,
        };
        Value::String(masked.unwrap_or_else(|| REDACTED.to_owned()))
    }
}

impl fmt::Display for Mask {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `"***"` and the last four characters; a value of four characters or fewer is hidden whole, so
/// a short value is never revealed completely.
fn last4(text: &str) -> String {
    let count = text.chars().count();
    let tail: String = text.chars().skip(count.saturating_sub(4)).collect();
    if count <= 4 { "***".to_owned() } else { format!("***{tail}") }
}

/// The first character of the local part, `"***@"` and the domain; `None` unless the trimmed text
/// has a non-empty local part and domain around its last `@`.
fn email(text: &str) -> Option<String> {
    let (local, domain) = text.trim().rsplit_once('@')?;
    let first = local.chars().next()?;
    (!domain.is_empty()).then(|| format!("{first}***@{domain}"))
}

/// `"YYYY-**-**"`; `None` unless the text looks like `YYYY-MM-DD`.
fn year(text: &str) -> Option<String> {
    let b = text.as_bytes();
    let looks_like_date =
        b.len() == 10 && b[..4].iter().all(u8::is_ascii_digit) && b[4] == b'-' && b[7] == b'-';
    looks_like_date.then(|| format!("{}-**-**", &text[..4]))
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use serde_json::json;

    use super::*;

    #[test]
    fn mask_names_round_trip_through_serde_and_from_name() {
        for mask in Mask::ALL {
            assert_eq!(Mask::from_name(mask.as_str()), Some(mask));
            let json = serde_json::to_string(&mask).unwrap();
            assert_eq!(json, format!("\"{mask}\""));
            assert_eq!(serde_json::from_str::<Mask>(&json).unwrap(), mask);
        }
        assert_eq!(Mask::from_name("foo"), None);
        assert_eq!(Mask::from_name("Last4"), None);
        assert_eq!(Mask::default(), Mask::None);
    }

    #[test]
    fn fits_follows_the_design_table() {
        use FieldType::*;
        let table = [
            (Mask::None, [true; 6]),
            (Mask::Redact, [true; 6]),
            (Mask::Last4, [true, true, true, true, false, true]),
            (Mask::Email, [false, true, false, false, false, false]),
            (Mask::Year, [false, false, false, true, false, false]),
        ];
        for (mask, row) in table {
            for (ty, expected) in [String, Email, Phone, Date, Address, Country].into_iter().zip(row) {
                assert_eq!(mask.fits(ty), expected, "{mask} on {ty}");
            }
        }
        let pm = FieldKind::PaymentMethods;
        assert!(Mask::None.fits_kind(&pm) && Mask::Redact.fits_kind(&pm));
        assert!(Mask::Last4.fits_kind(&pm));
        assert!(!Mask::Email.fits_kind(&pm) && !Mask::Year.fits_kind(&pm));
        assert!(Mask::Year.fits_kind(&FieldKind::Value(Date)));
    }

    #[test]
    fn none_leaves_any_value_unchanged_and_redact_hides_any_value() {
        for v in [json!("x"), json!(42), json!({"line1": "a"}), json!(null)] {
            assert_eq!(Mask::None.apply(&v), v);
            assert_eq!(Mask::Redact.apply(&v), json!("[redacted]"));
        }
    }

    #[test]
    fn last4_keeps_the_last_four_characters_and_hides_short_values_whole() {
        assert_eq!(Mask::Last4.apply(&json!("+4915112341234")), json!("***1234"));
        assert_eq!(Mask::Last4.apply(&json!("12345")), json!("***2345"));
        assert_eq!(Mask::Last4.apply(&json!("1234")), json!("***"));
        assert_eq!(Mask::Last4.apply(&json!("ab")), json!("***"));
        assert_eq!(Mask::Last4.apply(&json!("")), json!("***"));
        assert_eq!(Mask::Last4.apply(&json!("grüße")), json!("***rüße"));
    }

    #[test]
    fn email_keeps_the_first_character_and_the_domain() {
        assert_eq!(Mask::Email.apply(&json!("jane@example.com")), json!("j***@example.com"));
        assert_eq!(Mask::Email.apply(&json!(" Ümit@x.de ")), json!("Ü***@x.de"));
        for not_email in ["no-at-sign", "@example.com", "jane@", ""] {
            assert_eq!(Mask::Email.apply(&json!(not_email)), json!("[redacted]"));
        }
    }

    #[test]
    fn year_keeps_only_the_year_of_a_date() {
        assert_eq!(Mask::Year.apply(&json!("1990-05-17")), json!("1990-**-**"));
        for not_date in ["1990", "May 1990", "19é0-05-17", "1990-05-17T00:00"] {
            assert_eq!(Mask::Year.apply(&json!(not_date)), json!("[redacted]"));
        }
    }

    #[test]
    fn shape_masks_redact_values_that_are_not_strings() {
        for mask in [Mask::Last4, Mask::Email, Mask::Year] {
            for v in [json!(123456), json!(true), json!(null), json!(["a"]), json!({"a": 1})] {
                assert_eq!(mask.apply(&v), json!("[redacted]"), "{mask} on {v}");
            }
        }
    }

    proptest! {
        #[test]
        fn masks_never_panic_and_never_reveal_more_than_their_shape(s in "\\PC{0,40}") {
            let v = json!(s);
            prop_assert_eq!(Mask::None.apply(&v), v.clone());
            prop_assert_eq!(Mask::Redact.apply(&v), json!(REDACTED));
            let last4 = Mask::Last4.apply(&v);
            prop_assert!(last4.as_str().is_some_and(|t| t.starts_with("***") && t.chars().count() <= 7));
            let year = Mask::Year.apply(&v);
            prop_assert!(year.as_str().is_some_and(|t| t == REDACTED || t.ends_with("-**-**")));
            let email = Mask::Email.apply(&v);
            prop_assert!(email.as_str().is_some_and(|t| t == REDACTED || t.contains("***@")));
        }
    }
}
