//! Payment cards: number normalisation, the Luhn check, brand detection and expiry.
//!
//! A card number is held in a `Zeroizing` buffer and never printed: `Debug` shows brand and
//! last four only.

use std::fmt;

use zeroize::Zeroizing;

/// Card brands recognised from the number's issuer prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Brand {
    /// Visa (4).
    Visa,
    /// Mastercard (51–55, 2221–2720).
    Mastercard,
    /// American Express (34, 37).
    Amex,
    /// Discover (6011, 644–649, 65).
    Discover,
    /// JCB (3528–3589).
    Jcb,
    /// Diners Club (300–305, 3095, 36, 38, 39).
    Diners,
    /// UnionPay (62, 81).
    UnionPay,
    /// A valid number of an issuer not listed here.
    Unknown,
}

impl Brand {
    /// The wire name, e.g. `visa`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Brand::Visa => "visa",
            Brand::Mastercard => "mastercard",
            Brand::Amex => "amex",
            Brand::Discover => "discover",
            Brand::Jcb => "jcb",
            Brand::Diners => "diners",
            Brand::UnionPay => "unionpay",
            Brand::Unknown => "unknown",
        }
    }

    fn detect(digits: &str) -> Brand {
        let prefix = |n: usize| digits.get(..n).and_then(|p| p.parse::<u32>().ok()).unwrap_or(0);
        match () {
            _ if digits.starts_with('4') => Brand::Visa,
            _ if (51..=55).contains(&prefix(2)) || (2221..=2720).contains(&prefix(4)) => Brand::Mastercard,
            _ if matches!(prefix(2), 34 | 37) => Brand::Amex,
            _ if prefix(4) == 6011 || (644..=649).contains(&prefix(3)) || prefix(2) == 65 => Brand::Discover,
            _ if (3528..=3589).contains(&prefix(4)) => Brand::Jcb,
            _ if (300..=305).contains(&prefix(3))
                || prefix(4) == 3095
                || matches!(prefix(2), 36 | 38 | 39) =>
            {
                Brand::Diners
            }
            _ if matches!(prefix(2), 62 | 81) => Brand::UnionPay,
            _ => Brand::Unknown,
        }
    }
}

/// Why a card was refused. Never carries the number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CardError {
    /// Not 12–19 digits after removing spaces and dashes.
    #[error("must be 12 to 19 digits")]
    Length,
    /// The Luhn checksum fails.
    #[error("fails the Luhn check")]
    Luhn,
    /// Month not 1–12 or year not a four-digit year.
    #[error("has an invalid expiry")]
    Expiry,
    /// The card expired.
    #[error("has expired")]
    Expired,
}

/// A card number that passed normalisation and the Luhn check.
pub struct CardNumber {
    digits: Zeroizing<String>,
    brand: Brand,
}

impl CardNumber {
    /// Strips spaces and dashes, then checks length (12–19 digits) and the Luhn sum.
    pub fn parse(input: &str) -> Result<Self, CardError> {
        let digits: Zeroizing<String> =
            Zeroizing::new(input.chars().filter(|c| *c != ' ' && *c != '-').collect());
        if !(12..=19).contains(&digits.len()) || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return Err(CardError::Length);
        }
        if !luhn(&digits) {
            return Err(CardError::Luhn);
        }
        let brand = Brand::detect(&digits);
        Ok(CardNumber { digits, brand })
    }

    /// The digits; keep the borrow short.
    pub fn expose(&self) -> &str {
        &self.digits
    }

    /// The brand.
    pub fn brand(&self) -> Brand {
        self.brand
    }

    /// The last four digits.
    pub fn last4(&self) -> &str {
        &self.digits[self.digits.len() - 4..]
    }
}

impl fmt::Debug for CardNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CardNumber({}, ***{})", self.brand.as_str(), self.last4())
    }
}

/// Checks an expiry: month 1–12, a four-digit year, and not before the current month.
pub fn check_expiry(month: u32, year: u32, now_year: u32, now_month: u32) -> Result<(), CardError> {
    if !(1..=12).contains(&month) || !(2000..=9999).contains(&year) {
        return Err(CardError::Expiry);
    }
    if (year, month) < (now_year, now_month) {
        return Err(CardError::Expired);
    }
    if year > now_year + 50 {
        return Err(CardError::Expiry);
    }
    Ok(())
}

fn luhn(digits: &str) -> bool {
    let sum: u32 = digits
        .bytes()
        .rev()
        .enumerate()
        .map(|(i, b)| {
            let d = u32::from(b - b'0');
            if i % 2 == 1 {
                let doubled = d * 2;
                if doubled > 9 { doubled - 9 } else { doubled }
            } else {
                d
            }
        })
        .sum();
    sum.is_multiple_of(10)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_numbers_of_every_brand_are_recognised() {
        for (number, brand) in [
            ("4111 1111 1111 1111", Brand::Visa),
            ("5555-5555-5555-4444", Brand::Mastercard),
            ("2223003122003222", Brand::Mastercard),
            ("378282246310005", Brand::Amex),
            ("6011111111111117", Brand::Discover),
            ("3530111333300000", Brand::Jcb),
            ("36227206271667", Brand::Diners),
            ("6200000000000005", Brand::UnionPay),
        ] {
            let card = CardNumber::parse(number).unwrap();
            assert_eq!(card.brand(), brand, "{number}");
        }
    }

    #[test]
    fn bad_numbers_are_refused_without_echoing_them() {
        assert_eq!(CardNumber::parse("4111111111111112").err(), Some(CardError::Luhn));
        assert_eq!(CardNumber::parse("41111111111").err(), Some(CardError::Length));
        assert_eq!(CardNumber::parse("41111111111111111111").err(), Some(CardError::Length));
        assert_eq!(CardNumber::parse("4111x11111111111").err(), Some(CardError::Length));
        let card = CardNumber::parse("4111111111111111").unwrap();
        assert_eq!(format!("{card:?}"), "CardNumber(visa, ***1111)");
    }

    #[test]
    fn expiry_is_checked_against_the_current_month() {
        assert!(check_expiry(11, 2026, 2026, 11).is_ok());
        assert_eq!(check_expiry(10, 2026, 2026, 11), Err(CardError::Expired));
        assert_eq!(check_expiry(13, 2030, 2026, 11), Err(CardError::Expiry));
        assert_eq!(check_expiry(1, 30, 2026, 11), Err(CardError::Expiry));
    }

    proptest::proptest! {
        #[test]
        fn parsing_never_panics(s in ".{0,40}") {
            let _ = CardNumber::parse(&s);
        }
    }
}
