//! Field types and the validation and normalisation of field values (DESIGN §3).
//!
//! This module owns what a value of each declared field type must look like when it is written,
//! the form in which it is stored, and the form a blind index is computed over. It must never put
//! a value into an error, a log line or a panic message: [`InvalidValue`] names only what was
//! expected, so it is safe to hand to a client or to the audit log.

use std::fmt;

use chrono::NaiveDate;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Longest `string` value (and longest address member), in bytes.
pub const MAX_STRING_BYTES: usize = 4096;

/// Longest `email` value, in characters.
pub const MAX_EMAIL_CHARS: usize = 254;

/// Fewest and most digits a `phone` value may carry after its `+` (E.164 allows 15).
const PHONE_DIGITS: std::ops::RangeInclusive<usize> = 8..=15;

/// The type of a declared field, as written in `type = "…"` in a policy file.
///
/// The type decides what a write must satisfy ([`FieldType::parse`]), what is stored and what a
/// blind index covers ([`FieldType::index_form`]), and which masks fit the field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FieldType {
    /// A non-empty string of at most 4096 bytes.
    String,
    /// An email address; stored as given, indexed lower-cased and trimmed.
    Email,
    /// A phone number in international form, stored as `+` and 8–15 digits.
    Phone,
    /// A calendar date `YYYY-MM-DD`.
    Date,
    /// A postal address object.
    Address,
    /// An ISO 3166-1 alpha-2 country code in capitals.
    Country,
}

/// A value that does not satisfy its field's type.
///
/// Invariant: it carries only a static description of what was expected, never any part of the
/// offending value, because the value may be personal data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("must be {expected}")]
pub struct InvalidValue {
    /// What the value should have been, phrased to follow "must be", e.g. "an email address".
    pub expected: &'static str,
}

impl FieldType {
    /// Every field type, in declaration order.
    pub const ALL: [FieldType; 6] = [
        FieldType::String,
        FieldType::Email,
        FieldType::Phone,
        FieldType::Date,
        FieldType::Address,
        FieldType::Country,
    ];

    /// The name used in policy files (`"string"`, `"email"` …).
    pub fn as_str(&self) -> &'static str {
        match self {
            FieldType::String => "string",
            FieldType::Email => "email",
            FieldType::Phone => "phone",
            FieldType::Date => "date",
            FieldType::Address => "address",
            FieldType::Country => "country",
        }
    }

    /// The type with this policy-file name, if there is one (exact, case-sensitive match).
    pub fn from_name(name: &str) -> Option<FieldType> {
        FieldType::ALL.into_iter().find(|t| t.as_str() == name)
    }

    /// Validates a JSON value for this type and returns its stored (normalised) form.
    ///
    /// A JSON value of the wrong kind (number, bool, null, array, or an object where a string is
    /// expected) is invalid. Never panics.
    pub fn parse(&self, value: &Value) -> Result<Value, InvalidValue> {
        let parse_text: fn(&str) -> Option<String> = match self {
            FieldType::Address => return parse_address(value),
            FieldType::String => parse_string,
            FieldType::Email => parse_email,
            FieldType::Phone => parse_phone,
            FieldType::Date => parse_date,
            FieldType::Country => parse_country,
        };
        let text = value.as_str().ok_or(self.invalid())?;
        parse_text(text).map(Value::String).ok_or(self.invalid())
    }

    /// The normalised text a blind index is computed over (None for address).
    ///
    /// The value is normalised again here, so a lookup value that was only parsed and a value
    /// read back from storage give the same text. An invalid value has no index form.
    pub fn index_form(&self, stored: &Value) -> Option<String> {
        let Value::String(text) = self.parse(stored).ok()? else {
            return None;
        };
        match self {
            FieldType::Email => Some(text.trim().to_lowercase()),
            FieldType::Address => None,
            FieldType::String | FieldType::Phone | FieldType::Date | FieldType::Country => Some(text),
        }
    }

    /// The error for a value that does not fit this type.
    fn invalid(&self) -> InvalidValue {
        let expected = match self {
            FieldType::String => "a non-empty string of at most 4096 bytes",
            FieldType::Email => "an email address",
            FieldType::Phone => "a phone number: + and 8 to 15 digits",
            FieldType::Date => "a calendar date YYYY-MM-DD",
            FieldType::Address => {
                "an address object with line1, city, postal_code and country, and optionally \
                 line2 and region"
            }
            FieldType::Country => "an ISO 3166-1 alpha-2 country code in capitals",
        };
        InvalidValue { expected }
    }
}

impl fmt::Display for FieldType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Whether `code` is an officially assigned ISO 3166-1 alpha-2 code (capitals only).
pub fn is_country_code(code: &str) -> bool {
    COUNTRY_CODES.binary_search(&code).is_ok()
}

fn parse_string(text: &str) -> Option<String> {
    (!text.is_empty() && text.len() <= MAX_STRING_BYTES).then(|| text.to_owned())
}

/// Accepts `local@domain` where the local part is non-empty and the domain has at least two
/// non-empty dot-separated labels. Surrounding whitespace is tolerated (the value is stored as
/// given; its index form is trimmed), whitespace or control characters inside are not.
fn parse_email(text: &str) -> Option<String> {
    if text.chars().count() > MAX_EMAIL_CHARS {
        return None;
    }
    let inner = text.trim();
    if inner.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return None;
    }
    let (local, domain) = inner.split_once('@')?;
    let valid = !local.is_empty()
        && !domain.contains('@')
        && domain.contains('.')
        && domain.split('.').all(|label| !label.is_empty());
    valid.then(|| text.to_owned())
}

/// Accepts `+` followed by 8–15 ASCII digits; spaces and dashes may appear anywhere after the
/// `+`, and spaces around the whole number. Stores `+` and the digits only.
fn parse_phone(text: &str) -> Option<String> {
    let rest = text.trim_matches(' ').strip_prefix('+')?;
    let mut stored = String::with_capacity(16);
    stored.push('+');
    for c in rest.chars() {
        match c {
            '0'..='9' => stored.push(c),
            ' ' | '-' => {}
            _ => return None,
        }
    }
    // `stored` is ASCII, so its byte length minus the `+` is the digit count.
    PHONE_DIGITS.contains(&(stored.len() - 1)).then_some(stored)
}

/// Accepts exactly `YYYY-MM-DD` naming a real day of the Gregorian calendar, years 0001–9999.
fn parse_date(text: &str) -> Option<String> {
    let b = text.as_bytes();
    let shape_ok = b.len() == 10
        && b[4] == b'-'
        && b[7] == b'-'
        && b.iter().enumerate().all(|(i, c)| i == 4 || i == 7 || c.is_ascii_digit());
    if !shape_ok {
        return None;
    }
    let number = |range: std::ops::Range<usize>| text.get(range)?.parse::<u32>().ok();
    let year = i32::try_from(number(0..4)?).ok()?;
    let date = NaiveDate::from_ymd_opt(year, number(5..7)?, number(8..10)?)?;
    (year >= 1).then(|| date.format("%Y-%m-%d").to_string())
}

fn parse_country(text: &str) -> Option<String> {
    is_country_code(text).then(|| text.to_owned())
}

/// Members an address must have, and members it may have.
const ADDRESS_REQUIRED: [&str; 4] = ["line1", "city", "postal_code", "country"];
const ADDRESS_OPTIONAL: [&str; 2] = ["line2", "region"];

/// Validates an address object. Required members must be non-empty strings; optional members,
/// when present, must be strings (possibly empty); every member is at most 4096 bytes. The stored
/// form has the same members and values.
fn parse_address(value: &Value) -> Result<Value, InvalidValue> {
    let invalid = |expected| InvalidValue { expected };
    let object = value.as_object().ok_or(FieldType::Address.invalid())?;
    // Member names come from the caller: they are checked, never echoed.
    if object
        .keys()
        .any(|k| !ADDRESS_REQUIRED.contains(&k.as_str()) && !ADDRESS_OPTIONAL.contains(&k.as_str()))
    {
        return Err(invalid(
            "an address with no members other than line1, line2, city, region, postal_code \
             and country",
        ));
    }
    let mut stored = Map::new();
    for name in ADDRESS_REQUIRED {
        let Some(Value::String(text)) = object.get(name) else {
            return Err(invalid("an address with string members line1, city, postal_code and country"));
        };
        if text.is_empty() || text.len() > MAX_STRING_BYTES {
            return Err(invalid(
                "an address whose line1, city, postal_code and country are non-empty and at \
                 most 4096 bytes",
            ));
        }
        stored.insert(name.to_owned(), Value::String(text.clone()));
    }
    for name in ADDRESS_OPTIONAL {
        match object.get(name) {
            None => {}
            Some(Value::String(text)) if text.len() <= MAX_STRING_BYTES => {
                stored.insert(name.to_owned(), Value::String(text.clone()));
            }
            Some(_) => {
                return Err(invalid(
                    "an address whose line2 and region, when present, are strings of at most \
                     4096 bytes",
                ));
            }
        }
    }
    match object.get("country").and_then(Value::as_str) {
        Some(code) if is_country_code(code) => Ok(Value::Object(stored)),
        _ => Err(invalid("an address whose country is an ISO 3166-1 alpha-2 code in capitals")),
    }
}

/// The 249 officially assigned ISO 3166-1 alpha-2 codes, sorted (binary-searched).
const COUNTRY_CODES: [&str; 249] = [
    "AD", "AE", "AF", "AG", "AI", "AL", "AM", "AO", "AQ", "AR", "AS", "AT", "AU", "AW", "AX", "AZ", "BA",
    "BB", "BD", "BE", "BF", "BG", "BH", "BI", "BJ", "BL", "BM", "BN", "BO", "BQ", "BR", "BS", "BT", "BV",
    "BW", "BY", "BZ", "CA", "CC", "CD", "CF", "CG", "CH", "CI", "CK", "CL", "CM", "CN", "CO", "CR", "CU",
    "CV", "CW", "CX", "CY", "CZ", "DE", "DJ", "DK", "DM", "DO", "DZ", "EC", "EE", "EG", "EH", "ER", "ES",
    "ET", "FI", "FJ", "FK", "FM", "FO", "FR", "GA", "GB", "GD", "GE", "GF", "GG", "GH", "GI", "GL", "GM",
    "GN", "GP", "GQ", "GR", "GS", "GT", "GU", "GW", "GY", "HK", "HM", "HN", "HR", "HT", "HU", "ID", "IE",
    "IL", "IM", "IN", "IO", "IQ", "IR", "IS", "IT", "JE", "JM", "JO", "JP", "KE", "KG", "KH", "KI", "KM",
    "KN", "KP", "KR", "KW", "KY", "KZ", "LA", "LB", "LC", "LI", "LK", "LR", "LS", "LT", "LU", "LV", "LY",
    "MA", "MC", "MD", "ME", "MF", "MG", "MH", "MK", "ML", "MM", "MN", "MO", "MP", "MQ", "MR", "MS", "MT",
    "MU", "MV", "MW", "MX", "MY", "MZ", "NA", "NC", "NE", "NF", "NG", "NI", "NL", "NO", "NP", "NR", "NU",
    "NZ", "OM", "PA", "PE", "PF", "PG", "PH", "PK", "PL", "PM", "PN", "PR", "PS", "PT", "PW", "PY", "QA",
    "RE", "RO", "RS", "RU", "RW", "SA", "SB", "SC", "SD", "SE", "SG", "SH", "SI", "SJ", "SK", "SL", "SM",
    "SN", "SO", "SR", "SS", "ST", "SV", "SX", "SY", "SZ", "TC", "TD", "TF", "TG", "TH", "TJ", "TK", "TL",
    "TM", "TN", "TO", "TR", "TT", "TV", "TW", "TZ", "UA", "UG", "UM", "US", "UY", "UZ", "VA", "VC", "VE",
    "VG", "VI", "VN", "VU", "WF", "WS", "YE", "YT", "ZA", "ZM", "ZW",
];

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use serde_json::json;

    use super::*;

    fn ok(ty: FieldType, v: Value) -> Value {
        ty.parse(&v).unwrap()
    }

    fn bad(ty: FieldType, v: Value) -> bool {
        ty.parse(&v).is_err()
    }

    #[test]
    fn type_names_round_trip_through_serde_and_from_name() {
        for ty in FieldType::ALL {
            assert_eq!(FieldType::from_name(ty.as_str()), Some(ty));
            let json = serde_json::to_string(&ty).unwrap();
            assert_eq!(json, format!("\"{}\"", ty.as_str()));
            assert_eq!(serde_json::from_str::<FieldType>(&json).unwrap(), ty);
        }
        assert_eq!(FieldType::from_name("Email"), None);
        assert_eq!(FieldType::from_name("payment_methods"), None);
    }

    #[test]
    fn country_list_has_the_249_assigned_codes_sorted_and_unique() {
        assert_eq!(COUNTRY_CODES.len(), 249);
        assert!(COUNTRY_CODES.windows(2).all(|w| w[0] < w[1]));
        assert!(COUNTRY_CODES.iter().all(|c| c.len() == 2 && c.bytes().all(|b| b.is_ascii_uppercase())));
        for code in ["DE", "US", "GB", "SS", "XK"] {
            assert_eq!(is_country_code(code), code != "XK", "{code}");
        }
        for code in ["UK", "EU", "de", "D", "DEU", "", "ZZ"] {
            assert!(!is_country_code(code), "{code}");
        }
    }

    #[test]
    fn string_must_be_non_empty_and_at_most_4096_bytes() {
        assert_eq!(ok(FieldType::String, json!("Ada")), json!("Ada"));
        assert!(bad(FieldType::String, json!("")));
        let max = "é".repeat(2048);
        assert_eq!(ok(FieldType::String, json!(max)), json!(max));
        assert!(bad(FieldType::String, json!(format!("{max}a"))));
    }

    #[test]
    fn wrong_json_kinds_are_invalid_for_every_type() {
        for ty in FieldType::ALL {
            for v in [json!(1), json!(true), json!(null), json!(["a"]), json!(1.5)] {
                assert!(bad(ty, v.clone()), "{ty} accepted {v}");
            }
        }
        for ty in FieldType::ALL.into_iter().filter(|t| *t != FieldType::Address) {
            assert!(bad(ty, json!({"line1": "x"})));
        }
        assert!(bad(FieldType::Address, json!("Main St 1")));
    }

    #[test]
    fn email_is_stored_as_given_and_indexed_lower_cased_and_trimmed() {
        let given = json!("  Jane.Doe@Example.COM ");
        assert_eq!(ok(FieldType::Email, given.clone()), given);
        assert_eq!(FieldType::Email.index_form(&given).as_deref(), Some("jane.doe@example.com"));
    }

    #[test]
    fn email_rules_reject_malformed_addresses() {
        for good in ["a@b.co", "x+tag@mail.example.org", "ü@bücher.de"] {
            assert!(!bad(FieldType::Email, json!(good)), "{good}");
        }
        for wrong in [
            "",
            "plain",
            "@example.com",
            "a@b",
            "a@@b.com",
            "a@b@c.com",
            "a@.com",
            "a@b.",
            "a@b..com",
            "a b@c.com",
            "a@b .com",
            "a@b\t.com",
            "a@b.com\u{0}",
        ] {
            assert!(bad(FieldType::Email, json!(wrong)), "{wrong:?}");
        }
        let domain = "example.com";
        let local = "a".repeat(MAX_EMAIL_CHARS - domain.len() - 1);
        assert!(!bad(FieldType::Email, json!(format!("{local}@{domain}"))));
        assert!(bad(FieldType::Email, json!(format!("{local}a@{domain}"))));
    }

    #[test]
    fn phone_drops_spaces_and_dashes_and_counts_digits() {
        assert_eq!(ok(FieldType::Phone, json!("+49 151-1234 5678")), json!("+4915112345678"));
        assert_eq!(ok(FieldType::Phone, json!(" +12345678 ")), json!("+12345678"));
        assert_eq!(ok(FieldType::Phone, json!("+123456789012345")), json!("+123456789012345"));
        for wrong in [
            "+1234567",
            "+1234567890123456",
            "004915112345678",
            "49151123456",
            "+49 (151) 123456",
            "+４９151123456",
            "+",
            "",
            "++4915112345678",
            "+49151x2345678",
        ] {
            assert!(bad(FieldType::Phone, json!(wrong)), "{wrong:?}");
        }
        assert_eq!(
            FieldType::Phone.index_form(&json!("+49 151 1234-5678")).as_deref(),
            Some("+4915112345678")
        );
    }

    #[test]
    fn date_must_be_a_real_calendar_day_in_exact_form() {
        for good in ["2024-02-29", "2000-02-29", "1990-12-31", "0001-01-01", "9999-12-31"] {
            assert_eq!(ok(FieldType::Date, json!(good)), json!(good));
        }
        for wrong in [
            "2023-02-29",
            "1900-02-29",
            "2024-04-31",
            "2024-13-01",
            "2024-00-10",
            "2024-01-00",
            "0000-01-01",
            "2024-1-01",
            "24-01-01",
            "2024/01/01",
            "2024-01-01T00:00:00",
            " 2024-01-01",
            "+024-01-01",
            "２０２４-01-01",
        ] {
            assert!(bad(FieldType::Date, json!(wrong)), "{wrong:?}");
        }
    }

    #[test]
    fn country_must_be_an_assigned_code_in_capitals() {
        assert_eq!(ok(FieldType::Country, json!("FR")), json!("FR"));
        assert!(bad(FieldType::Country, json!("fr")));
        assert!(bad(FieldType::Country, json!("UK")));
        assert_eq!(FieldType::Country.index_form(&json!("FR")).as_deref(), Some("FR"));
    }

    #[test]
    fn address_needs_its_required_members_and_no_others() {
        let full = json!({
            "line1": "1 Main St", "line2": "", "city": "Springfield",
            "region": "IL", "postal_code": "62701", "country": "US"
        });
        assert_eq!(ok(FieldType::Address, full.clone()), full);
        let minimal = json!({"line1": "a", "city": "b", "postal_code": "c", "country": "DE"});
        assert_eq!(ok(FieldType::Address, minimal.clone()), minimal);
        assert_eq!(FieldType::Address.index_form(&minimal), None);

        let mut missing = minimal.clone();
        missing.as_object_mut().unwrap().remove("city");
        assert!(bad(FieldType::Address, missing));
        let mut extra = minimal.clone();
        extra["name"] = json!("Ada");
        assert!(bad(FieldType::Address, extra));
        let mut empty = minimal.clone();
        empty["line1"] = json!("");
        assert!(bad(FieldType::Address, empty));
        let mut country = minimal.clone();
        country["country"] = json!("Germany");
        assert!(bad(FieldType::Address, country));
        let mut number = minimal.clone();
        number["postal_code"] = json!(62701);
        assert!(bad(FieldType::Address, number));
        let mut null_line2 = minimal.clone();
        null_line2["line2"] = json!(null);
        assert!(bad(FieldType::Address, null_line2));
        let mut long = minimal;
        long["region"] = json!("r".repeat(MAX_STRING_BYTES + 1));
        assert!(bad(FieldType::Address, long));
    }

    #[test]
    fn errors_never_contain_the_value() {
        let secret = "secret-value-4711@nowhere";
        for ty in FieldType::ALL {
            let shown = [json!(secret), json!({ secret: secret })]
                .iter()
                .filter_map(|v| ty.parse(v).err())
                .map(|e| e.to_string())
                .collect::<String>();
            assert!(!shown.contains("4711"), "{ty}: {shown}");
        }
        assert_eq!(
            FieldType::Email.parse(&json!("nope")).unwrap_err().to_string(),
            "must be an email address"
        );
    }

    fn any_json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            ".{0,12}".prop_map(Value::from),
        ];
        leaf.prop_recursive(3, 16, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
                prop::collection::btree_map(
                    prop_oneof![
                        Just("line1".to_owned()),
                        Just("city".to_owned()),
                        Just("country".to_owned()),
                        "[a-z_]{1,8}",
                    ],
                    inner,
                    0..6
                )
                .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #[test]
        fn parse_never_panics_on_arbitrary_strings(s in "\\PC{0,40}|[+0-9 -]{0,24}|[0-9-]{10}") {
            for ty in FieldType::ALL {
                let _ = ty.parse(&json!(s));
                let _ = ty.index_form(&json!(s));
            }
        }

        #[test]
        fn parse_never_panics_on_arbitrary_json(v in any_json()) {
            for ty in FieldType::ALL {
                let _ = ty.parse(&v);
                let _ = ty.index_form(&v);
            }
        }

        #[test]
        fn phone_normalisation_is_idempotent(s in "[+]?[0-9 -]{0,24}") {
            if let Ok(stored) = FieldType::Phone.parse(&json!(s)) {
                prop_assert_eq!(FieldType::Phone.parse(&stored), Ok(stored.clone()));
                let text = stored.as_str().unwrap();
                prop_assert!(text.starts_with('+'));
                prop_assert!(text[1..].bytes().all(|b| b.is_ascii_digit()));
                prop_assert!((8..=15).contains(&(text.len() - 1)));
            }
        }

        #[test]
        fn every_stored_form_parses_to_itself(v in any_json(), s in "\\PC{0,30}") {
            for ty in FieldType::ALL {
                for input in [&v, &json!(s)] {
                    if let Ok(stored) = ty.parse(input) {
                        prop_assert_eq!(ty.parse(&stored), Ok(stored.clone()));
                    }
                }
            }
        }

        #[test]
        fn every_real_date_is_accepted_as_formatted(days in 0i64..3_652_058) {
            let date = NaiveDate::from_ymd_opt(1, 1, 1).unwrap() + chrono::Days::new(days as u64);
            let text = date.format("%Y-%m-%d").to_string();
            prop_assert_eq!(FieldType::Date.parse(&json!(text)), Ok(json!(text)));
        }
    }
}
