//! Field types and the validation and normalisation of field values (DESIGN §3).
//!
//! This module owns what a value of each declared field type must look like when it is written,
//! the form in which it is stored, and the form a blind index is computed over. It must never put
//! a value into an error, a log line or a panic message: [`InvalidValue`] names only what was
//! expected, so it is safe to hand to a client or to the audit log.
//!
//! One identifier has one index form ([`FieldType::normalise`]): writes, unique checks and
//! lookups all compute the blind index over it, so two spellings are the same value exactly when
//! their index forms are equal. Text is stored in Unicode NFC; the per-type rules are on
//! [`FieldType`]'s variants.

use std::fmt;

use chrono::NaiveDate;
use idna::uts46::{AsciiDenyList, DnsLength, Hyphens, Uts46};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::unicode;

/// Longest `string` value (and longest address member), in bytes of its NFC form.
pub const MAX_STRING_BYTES: usize = 4096;

/// Longest `email` value, in characters of its trimmed NFC form.
pub const MAX_EMAIL_CHARS: usize = 254;

/// Fewest and most digits a `phone` value may carry after its `+` (E.164 allows 15).
const PHONE_DIGITS: std::ops::RangeInclusive<usize> = 8..=15;

/// The type of a declared field, as written in `type = "…"` in a policy file.
///
/// The type decides what a write must satisfy, what is stored and what a blind index covers
/// ([`FieldType::normalise`]), and which masks fit the field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FieldType {
    /// A non-empty string of at most 4096 bytes. Stored and indexed in NFC; otherwise exact
    /// (case and spaces matter).
    String,
    /// An email address (RFC 5321 mailbox, RFC 6531 internationalised). Stored trimmed and in
    /// NFC. Indexed as the local part with ASCII `A`–`Z` lower-cased, `@`, and the domain in its
    /// UTS #46 ASCII form (lower case, A-labels). See [`FieldType::normalise`] for what is refused.
    Email,
    /// A phone number in international form, stored and indexed as `+` and 8–15 ASCII digits.
    Phone,
    /// A calendar date `YYYY-MM-DD` (ASCII digits).
    Date,
    /// A postal address object; members stored in NFC; never indexed.
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

/// The two forms Custodia keeps of a valid value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Normalised {
    /// What is stored and read back. Normalising it again gives it unchanged.
    pub stored: Value,
    /// What a blind index is computed over (`None` for an address, which cannot be indexed).
    /// Two values name the same thing exactly when their index forms are equal.
    pub index: Option<String>,
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

    /// Validates a JSON value for this type and returns its stored and index forms: the one
    /// place that decides when two spellings are the same value. Writes, unique checks and
    /// lookups all go through it.
    ///
    /// - `string`: Unicode NFC (UAX #15); non-empty, at most 4096 bytes after NFC.
    /// - `email`: surrounding white space trimmed, then NFC. Exactly one `@`, a non-empty local
    ///   part, at most 254 characters. Refused: white space, controls, format and other invisible
    ///   (default-ignorable), private-use or unassigned characters anywhere; compatibility
    ///   characters (text that NFKC would change: fullwidth letters, ligatures, superscripts);
    ///   a domain that UTS #46 ToASCII rejects (with STD3 rules: letters, digits and hyphens;
    ///   no hyphen first or last in a label; DNS lengths) or that has fewer than two labels;
    ///   a local part, or a domain label, mixing scripts beyond UTS #39 "highly restrictive"
    ///   (see [`unicode::is_single_script_or_cjk_with_latin`]). Index form: local part with only
    ///   ASCII `A`–`Z` lower-cased (RFC 5321 §2.4 lets the receiving host decide case; no
    ///   standard folds non-ASCII local parts, and a wrong merge would hand one customer's
    ///   record to another), `@`, domain in ASCII (lower case, Punycode A-labels).
    /// - `phone`: `+` then 8–15 ASCII digits (E.164); spaces and dashes are dropped; digits of
    ///   other scripts (Arabic-Indic, fullwidth …) are refused, not converted.
    /// - `date`, `country`: exact ASCII forms; stored and indexed as given.
    /// - `address`: members in NFC; no index form.
    ///
    /// A JSON value of the wrong kind (number, bool, null, array, or an object where a string is
    /// expected) is invalid. Never panics.
    pub fn normalise(&self, value: &Value) -> Result<Normalised, InvalidValue> {
        if *self == FieldType::Address {
            return parse_address(value).map(|stored| Normalised { stored, index: None });
        }
        let text = value.as_str().ok_or(self.invalid())?;
        let (stored, index) = match self {
            FieldType::Email => {
                let email = parse_email(text)?;
                (email.stored, email.index)
            }
            _ => {
                let parse_text: fn(&str) -> Option<String> = match self {
                    FieldType::String => parse_string,
                    FieldType::Phone => parse_phone,
                    FieldType::Date => parse_date,
                    _ => parse_country,
                };
                // For these types the stored form is already the one canonical spelling.
                let stored = parse_text(text).ok_or(self.invalid())?;
                (stored.clone(), stored)
            }
        };
        Ok(Normalised { stored: Value::String(stored), index: Some(index) })
    }

    /// Validates a JSON value for this type and returns its stored (normalised) form; see
    /// [`FieldType::normalise`].
    pub fn parse(&self, value: &Value) -> Result<Value, InvalidValue> {
        self.normalise(value).map(|n| n.stored)
    }

    /// The text a blind index is computed over, for a value as given or as stored (None for an
    /// address or an invalid value); see [`FieldType::normalise`].
    pub fn index_form(&self, value: &Value) -> Option<String> {
        self.normalise(value).ok()?.index
    }

    /// The error for a value that does not fit this type.
    fn invalid(&self) -> InvalidValue {
        let expected = match self {
            FieldType::String => "a non-empty string of at most 4096 bytes",
            FieldType::Email => EMAIL_SHAPE,
            FieldType::Phone => "a phone number: + and 8 to 15 ASCII digits 0-9 (spaces and dashes allowed)",
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

/// A string in NFC, non-empty and at most [`MAX_STRING_BYTES`] long after normalising.
fn parse_string(text: &str) -> Option<String> {
    let text = unicode::nfc(text);
    (!text.is_empty() && text.len() <= MAX_STRING_BYTES).then(|| text.into_owned())
}

const EMAIL_SHAPE: &str = "an email address: one @, a non-empty local part and a domain with a \
                           dot, at most 254 characters";
const EMAIL_CHARACTERS: &str = "an email address without spaces, invisible, control, private-use \
                                or unassigned characters";
const EMAIL_COMPATIBILITY: &str = "an email address without compatibility characters such as \
                                   fullwidth letters or ligatures (text Unicode NFKC would change)";
const EMAIL_DOMAIN: &str = "an email address whose domain is a valid host name (IDNA, UTS #46: \
                            letters, digits and inner hyphens in each label)";
const EMAIL_LOCAL_PART: &str = "an email address whose local part is a dot-atom (RFC 5322 §3.2.3, \
                                RFC 6531): letters, digits and !#$%&'*+-/=?^_`{|}~ in dot-separated \
                                parts; no quotes, comments, spaces or empty parts";
const EMAIL_SCRIPTS: &str = "an email address whose local part and each domain label use one \
                             script (Latin may be combined only with Chinese, Japanese or Korean)";

/// The stored and index forms of a valid email address.
struct EmailForms {
    stored: String,
    index: String,
}

/// Validates an email address and computes its forms; the rules are listed on
/// [`FieldType::normalise`]. Each refusal names the rule, never the value.
fn parse_email(text: &str) -> Result<EmailForms, InvalidValue> {
    let fail = |expected| InvalidValue { expected };
    let address = unicode::nfc(text.trim());
    if address.chars().count() > MAX_EMAIL_CHARS {
        return Err(fail(EMAIL_SHAPE));
    }
    if address.chars().any(unicode::is_forbidden_in_identifier) {
        return Err(fail(EMAIL_CHARACTERS));
    }
    let (local, domain) = address.split_once('@').ok_or(fail(EMAIL_SHAPE))?;
    if local.is_empty() || domain.contains('@') || !domain.contains('.') {
        return Err(fail(EMAIL_SHAPE));
    }
    if !unicode::is_nfkc_stable(&address) {
        return Err(fail(EMAIL_COMPATIBILITY));
    }
    // A quoted string or a comment would give one mailbox a second spelling (`"jane"@…` and
    // `jane(x)@…` are `jane@…`, RFC 5321 §4.1.2), so only the dot-atom form is accepted.
    if !is_dot_atom(local) {
        return Err(fail(EMAIL_LOCAL_PART));
    }
    let idna = Uts46::new();
    let ascii_domain = idna
        .to_ascii(domain.as_bytes(), AsciiDenyList::STD3, Hyphens::CheckFirstLast, DnsLength::Verify)
        .map_err(|_| fail(EMAIL_DOMAIN))?;
    // Only `.` separates labels here: UTS #46 would also split at U+3002 IDEOGRAPHIC FULL STOP,
    // which would give one domain a second spelling.
    if ascii_domain.split('.').count() != domain.split('.').count() {
        return Err(fail(EMAIL_DOMAIN));
    }
    // Labels are judged in their Unicode form, so an A-label (`xn--…`) cannot hide a mixture.
    let (unicode_domain, decoded) =
        idna.to_unicode(ascii_domain.as_bytes(), AsciiDenyList::STD3, Hyphens::CheckFirstLast);
    if decoded.is_err() {
        return Err(fail(EMAIL_DOMAIN));
    }
    // The last label of a host name is never all digits: `1.2.3.4` is an address literal in
    // disguise, not a domain.
    if ascii_domain.rsplit('.').next().is_none_or(|tld| tld.bytes().all(|b| b.is_ascii_digit())) {
        return Err(fail(EMAIL_DOMAIN));
    }
    if !unicode::is_single_script_or_cjk_with_latin(local)
        || !unicode_domain.split('.').all(unicode::is_single_script_or_cjk_with_latin)
        || !unicode_domain.chars().all(|c| c.is_ascii() || unicode::is_identifier_letter(c))
    {
        return Err(fail(EMAIL_SCRIPTS));
    }
    let index = format!("{}@{}", local.to_ascii_lowercase(), ascii_domain);
    Ok(EmailForms { stored: address.into_owned(), index })
}

/// True if `local` is a dot-atom (RFC 5322 §3.2.3) of `atext`, with non-ASCII characters
/// allowed as RFC 6531 does, when they are letters, marks or digits.
fn is_dot_atom(local: &str) -> bool {
    const ATEXT_SPECIALS: &str = "!#$%&'*+-/=?^_`{|}~";
    local.split('.').all(|atom| {
        !atom.is_empty()
            && atom.chars().all(|c| {
                c.is_ascii_alphanumeric()
                    || ATEXT_SPECIALS.contains(c)
                    || (!c.is_ascii() && unicode::is_identifier_letter(c))
            })
    })
}

/// Accepts `+` followed by 8–15 ASCII digits; spaces and dashes may appear anywhere after the
/// `+`, and spaces around the whole number. Stores `+` and the digits only. Digits of other
/// scripts are refused rather than converted: E.164 numbers are ASCII, and a converted number
/// would read back differently from what was written.
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
/// when present, must be strings (possibly empty); every member is at most 4096 bytes in NFC. The
/// stored form has the same members, each in NFC.
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
        let text = unicode::nfc(text);
        if text.is_empty() || text.len() > MAX_STRING_BYTES {
            return Err(invalid(
                "an address whose line1, city, postal_code and country are non-empty and at \
                 most 4096 bytes",
            ));
        }
        stored.insert(name.to_owned(), Value::String(text.into_owned()));
    }
    for name in ADDRESS_OPTIONAL {
        match object.get(name).map(|v| v.as_str().map(unicode::nfc)) {
            None => {}
            Some(Some(text)) if text.len() <= MAX_STRING_BYTES => {
                stored.insert(name.to_owned(), Value::String(text.into_owned()));
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
        // The limit applies to the NFC form: 2048 decomposed é are 6144 bytes given, 4096 stored.
        let decomposed = "e\u{0301}".repeat(2048);
        assert_eq!(ok(FieldType::String, json!(decomposed)), json!(max));
    }

    #[test]
    fn string_is_stored_and_indexed_in_nfc_and_otherwise_exact() {
        assert_eq!(ok(FieldType::String, json!("Zoe\u{0308}")), json!("Zo\u{00eb}"));
        let index = |t: &str| FieldType::String.index_form(&json!(t));
        assert_eq!(index("Zoe\u{0308}"), index("Zo\u{00eb}"));
        assert_eq!(index("Zo\u{00eb}").as_deref(), Some("Zo\u{00eb}"));
        assert_ne!(index("zo\u{00eb}"), index("Zo\u{00eb}"));
        assert_ne!(index("Zo\u{00eb} "), index("Zo\u{00eb}"));
    }

    #[test]
    fn address_members_are_stored_in_nfc() {
        let given = json!({"line1": "Mu\u{0308}hlweg 1", "city": "Ko\u{0308}ln", "postal_code": "50667",
                           "country": "DE", "line2": "Hinterhaus, 2. OG", "region": "Mu\u{0308}nster"});
        let stored = json!({"line1": "M\u{00fc}hlweg 1", "city": "K\u{00f6}ln", "postal_code": "50667",
                            "country": "DE", "line2": "Hinterhaus, 2. OG", "region": "M\u{00fc}nster"});
        assert_eq!(ok(FieldType::Address, given), stored);
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

    fn email_index(text: &str) -> Option<String> {
        FieldType::Email.index_form(&json!(text))
    }

    #[test]
    fn email_is_stored_trimmed_in_nfc_and_indexed_in_one_canonical_form() {
        let given = json!("  Jane.Doe@Example.COM ");
        assert_eq!(ok(FieldType::Email, given.clone()), json!("Jane.Doe@Example.COM"));
        assert_eq!(email_index("  Jane.Doe@Example.COM ").as_deref(), Some("jane.doe@example.com"));
        assert_eq!(
            ok(FieldType::Email, json!("zoe\u{0308}.b@example.com")),
            json!("zo\u{00eb}.b@example.com")
        );
    }

    #[test]
    fn equivalent_spellings_of_an_email_have_one_index_form() {
        let same = |a: &str, b: &str| {
            let (x, y) = (email_index(a), email_index(b));
            assert!(x.is_some(), "{a:?} refused");
            assert_eq!(x, y, "{a:?} vs {b:?}");
        };
        same("zo\u{00eb}.b@example.com", "zoe\u{0308}.b@example.com");
        same("Jane@EXAMPLE.com", "jane@example.com");
        same("jane@b\u{00fc}cher.example", "jane@xn--bcher-kva.example");
        same("jane@B\u{00dc}CHER.example", "jane@XN--BCHER-KVA.example");
        same("jane@bu\u{0308}cher.example", "jane@b\u{00fc}cher.example");
        // The Kelvin sign is canonically equivalent to K (a singleton decomposition): NFC makes it K.
        same("\u{212a}@example.com", "k@example.com");
        assert_eq!(email_index("jane@b\u{00fc}cher.example").as_deref(), Some("jane@xn--bcher-kva.example"));
    }

    #[test]
    fn email_local_parts_fold_only_ascii_case() {
        assert_ne!(email_index("ZO\u{00cb}@example.com"), email_index("zo\u{00eb}@example.com"));
        assert_eq!(email_index("ZO\u{00eb}@example.com").as_deref(), Some("zo\u{00eb}@example.com"));
        assert_ne!(email_index("stra\u{00df}e@example.com"), email_index("strasse@example.com"));
    }

    #[test]
    fn email_rules_reject_malformed_addresses() {
        for good in [
            "a@b.co",
            "x+tag@mail.example.org",
            "\u{00fc}@b\u{00fc}cher.de",
            "\u{0438}\u{0432}\u{0430}\u{043d}@\u{043f}\u{0440}\u{0438}\u{043c}\u{0435}\u{0440}.example",
            "\u{5c71}\u{7530}\u{305f}\u{308d}\u{3046}@example.jp",
            "a@xn--bcher-kva.example",
            "a@r3--sn-abc.example.com",
            "o'brien.j_doe+x@example.com",
            "!#$%&'*+-/=?^_`{|}~@example.com",
        ] {
            assert!(!bad(FieldType::Email, json!(good)), "{good:?}");
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
            "a@b_c.com",
            "a@-b.com",
            "a@b-.com",
            "a@[192.0.2.1]",
            "t22@1.2.3.4",
            "\"jane\"@example.com",
            "jane(note)@example.com",
            "jane<script>@example.com",
            ".jane@example.com",
            "jane.@example.com",
            "ja..ne@example.com",
            "jan\u{212e}@example.com",
            "jane@exampl\u{212e}.com",
            "ja\u{2229}e@example.com",
            "a@xn--zz.example",
            "a@example\u{3002}com",
        ] {
            assert!(bad(FieldType::Email, json!(wrong)), "{wrong:?}");
        }
        let domain = "example.com";
        let local = "a".repeat(MAX_EMAIL_CHARS - domain.len() - 1);
        assert!(!bad(FieldType::Email, json!(format!("{local}@{domain}"))));
        assert!(bad(FieldType::Email, json!(format!("{local}a@{domain}"))));
    }

    #[test]
    fn email_with_compatibility_invisible_or_mixed_script_characters_is_refused() {
        let refused = |text: &str, expected: &'static str| {
            assert_eq!(FieldType::Email.parse(&json!(text)), Err(InvalidValue { expected }), "{text:?}");
        };
        for compat in
            ["\u{ff4b}@example.com", "\u{fb01}n@example.com", "k@\u{ff45}xample.com", "x\u{00b2}@example.com"]
        {
            refused(compat, EMAIL_COMPATIBILITY);
        }
        for invisible in [
            "jo\u{200b}hn@example.com",
            "jo\u{00ad}hn@example.com",
            "john@exa\u{00ad}mple.com",
            "\u{202e}john@example.com",
            "john\u{e000}@example.com",
        ] {
            refused(invisible, EMAIL_CHARACTERS);
        }
        for mixed in [
            "p\u{0430}ypal@example.com",
            "jane@p\u{0430}ypal.com",
            "jane@xn--pypal-4ve.com",
            "\u{03bf}mega@example.com",
            "ivan.\u{0438}\u{0432}\u{0430}\u{043d}@example.com",
        ] {
            refused(mixed, EMAIL_SCRIPTS);
        }
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
            "+\u{0664}\u{0669}\u{0661}\u{0665}\u{0661}\u{0661}\u{0662}\u{0663}\u{0664}",
            "+49\u{0967}\u{096b}\u{0967}12345678",
            "\u{ff0b}4915112345678",
            "+49 151.1234 5678",
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
            format!("must be {EMAIL_SHAPE}")
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
        fn normalising_is_idempotent_and_the_stored_form_keeps_the_index_form(
            v in any_json(),
            s in "\\PC{0,30}|[a-zA-Z\u{e0}-\u{ff}\u{300}-\u{36f}.+]{1,12}@[a-zA-Z\u{e0}-\u{ff}\u{300}-\u{36f}-]{1,10}\\.[a-z]{2,4}",
        ) {
            for ty in FieldType::ALL {
                for input in [&v, &json!(s)] {
                    if let Ok(once) = ty.normalise(input) {
                        let twice = ty.normalise(&once.stored);
                        prop_assert_eq!(twice, Ok(once.clone()));
                        if let Some(index) = &once.index {
                            prop_assert_eq!(ty.normalise(&json!(index)).ok().and_then(|n| n.index), Some(index.clone()));
                        }
                    }
                }
            }
        }

        #[test]
        fn canonically_equivalent_text_has_one_index_form(
            s in "[a-zA-Z\u{c0}-\u{ff}\u{1e00}-\u{1eff}.+]{1,12}@[a-z\u{e0}-\u{ff}]{1,10}\\.[a-z]{2,4}",
        ) {
            let nfd: String = icu_normalizer::DecomposingNormalizerBorrowed::new_nfd().normalize(&s).into_owned();
            let upper_ascii = s.to_ascii_uppercase();
            for ty in [FieldType::String, FieldType::Email] {
                prop_assert_eq!(ty.index_form(&json!(s)), ty.index_form(&json!(nfd)));
            }
            let index = FieldType::Email.index_form(&json!(s));
            prop_assert_eq!(&index, &FieldType::Email.index_form(&json!(upper_ascii)));
            prop_assert!(index.is_none_or(|i| i.rsplit('@').next().is_some_and(str::is_ascii)));
        }

        #[test]
        fn every_real_date_is_accepted_as_formatted(days in 0i64..3_652_058) {
            let date = NaiveDate::from_ymd_opt(1, 1, 1).unwrap() + chrono::Days::new(days as u64);
            let text = date.format("%Y-%m-%d").to_string();
            prop_assert_eq!(FieldType::Date.parse(&json!(text)), Ok(json!(text)));
        }
    }
}
