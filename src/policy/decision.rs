//! The disclosure rule of DESIGN §2, deny by default.
//!
//! This module owns the one decision every read and every disclosure goes through: may field F of
//! customer C go to recipient R (or to the merchant itself) for purpose P? It answers allow with
//! the mask to apply, or deny with the first rule that failed, as a stable reason code for the
//! audit log. It sees names and the customer's consent state through [`Subject`], never field
//! values, and it never allocates: it runs once per field per request.

use std::fmt;

use crate::policy::{FieldPolicy, LegalBasis, Mask, PolicySet, Purpose};

/// Milliseconds in a day, for retention.
const DAY_MS: i64 = 86_400_000;

/// Why a field was denied; the first failing check decides.
///
/// The codes ([`Reason::as_str`]) are written into the audit log and returned to callers, so they
/// are part of the contract. The order the checks run in is given on
/// [`PolicySet::decide_disclosure`]; it is not the order of the variants.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Reason {
    /// The recipient is not declared (rule 1).
    UnknownRecipient,
    /// The purpose is not declared (rule 1).
    UnknownPurpose,
    /// The recipient has no grant for the purpose, or the grant does not list the field (rule 1).
    NoGrant,
    /// The field's declared purposes do not include the purpose (rule 2).
    PurposeNotAllowedForField,
    /// The purpose rests on consent and the customer has no consent record for it (rule 3).
    ConsentMissing,
    /// The customer's newest consent record for the purpose is a withdrawal (rule 3).
    ConsentWithdrawn,
    /// The newest consent names another notice version than the purpose declares (rule 3).
    NoticeOutdated,
    /// The customer objected to the purpose (rule 3).
    Objected,
    /// The customer's processing is restricted and the basis is not a legal obligation (rule 4).
    Restricted,
    /// The field's value is older than its retention (rule 5).
    RetentionExpired,
    /// The field is not declared.
    UnknownField,
}

impl Reason {
    /// Every reason.
    pub const ALL: [Reason; 11] = [
        Reason::UnknownRecipient,
        Reason::UnknownPurpose,
        Reason::NoGrant,
        Reason::PurposeNotAllowedForField,
        Reason::ConsentMissing,
        Reason::ConsentWithdrawn,
        Reason::NoticeOutdated,
        Reason::Objected,
        Reason::Restricted,
        Reason::RetentionExpired,
        Reason::UnknownField,
    ];

    /// The stable snake_case code written to the audit log and returned to callers.
    pub fn as_str(&self) -> &'static str {
        match self {
            Reason::UnknownRecipient => "unknown_recipient",
            Reason::UnknownPurpose => "unknown_purpose",
            Reason::NoGrant => "no_grant",
            Reason::PurposeNotAllowedForField => "purpose_not_allowed_for_field",
            Reason::ConsentMissing => "consent_missing",
            Reason::ConsentWithdrawn => "consent_withdrawn",
            Reason::NoticeOutdated => "notice_outdated",
            Reason::Objected => "objected",
            Reason::Restricted => "restricted",
            Reason::RetentionExpired => "retention_expired",
            Reason::UnknownField => "unknown_field",
        }
    }

    /// The number of the DESIGN §2 rule this reason belongs to; `None` for an undeclared field.
    pub fn rule(&self) -> Option<u8> {
        match self {
            Reason::UnknownRecipient | Reason::UnknownPurpose | Reason::NoGrant => Some(1),
            Reason::PurposeNotAllowedForField => Some(2),
            Reason::ConsentMissing | Reason::ConsentWithdrawn | Reason::NoticeOutdated | Reason::Objected => {
                Some(3)
            }
            Reason::Restricted => Some(4),
            Reason::RetentionExpired => Some(5),
            Reason::UnknownField => None,
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The answer for one field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldDecision {
    /// The field may be used or disclosed, with this mask applied.
    Allow {
        /// The mask to apply before the value leaves; always [`Mask::None`] for the merchant's
        /// own use.
        mask: Mask,
    },
    /// The field is withheld, for this reason.
    Deny(Reason),
}

impl FieldDecision {
    /// Whether the field is allowed.
    pub fn is_allow(&self) -> bool {
        matches!(self, FieldDecision::Allow { .. })
    }

    /// The reason for a denial; `None` when allowed.
    pub fn reason(&self) -> Option<Reason> {
        match self {
            FieldDecision::Allow { .. } => None,
            FieldDecision::Deny(reason) => Some(*reason),
        }
    }
}

/// A customer's newest consent record for one purpose.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConsentStatus<'a> {
    /// Granted, or withdrawn.
    pub granted: bool,
    /// The notice version the record names, if any.
    pub notice: Option<&'a str>,
}

/// What the rule needs to know about one customer. Implemented by the vault over its stored record.
pub trait Subject {
    /// The newest consent record for the purpose; `None` when there is none.
    fn newest_consent(&self, purpose: &str) -> Option<ConsentStatus<'_>>;
    /// Whether the customer currently objects to the purpose (Art. 21).
    fn objected(&self, purpose: &str) -> bool;
    /// Whether the customer's processing is restricted (Art. 18).
    fn restricted(&self) -> bool;
    /// Unix milliseconds of the field's last write, None if the customer has no such field.
    fn written_at(&self, field: &str) -> Option<i64>;
}

impl PolicySet {
    /// Rules 1–5 of DESIGN §2 for a third-party disclosure. Mask: grant's mask for the field,
    /// else field's default mask.
    ///
    /// Deny by default: every check must pass, and the first that fails names the reason, in the
    /// order unknown_field, unknown_purpose, unknown_recipient, no_grant,
    /// purpose_not_allowed_for_field, then the customer checks of [`PolicySet::decide_use`].
    pub fn decide_disclosure(
        &self,
        recipient: &str,
        purpose: &str,
        field: &str,
        subject: &dyn Subject,
        now_ms: i64,
    ) -> FieldDecision {
        let Some(field_policy) = self.field(field) else {
            return FieldDecision::Deny(Reason::UnknownField);
        };
        let Some(purpose_policy) = self.purpose(purpose) else {
            return FieldDecision::Deny(Reason::UnknownPurpose);
        };
        let Some(recipient_policy) = self.recipient(recipient) else {
            return FieldDecision::Deny(Reason::UnknownRecipient);
        };
        let Some(grant) = recipient_policy.grant_for(purpose).filter(|g| g.fields.contains(field)) else {
            return FieldDecision::Deny(Reason::NoGrant);
        };
        match check_customer(purpose_policy, field_policy, subject, now_ms) {
            Err(reason) => FieldDecision::Deny(reason),
            Ok(()) => {
                FieldDecision::Allow { mask: grant.masks.get(field).copied().unwrap_or(field_policy.mask) }
            }
        }
    }

    /// Rules 2–5 for the merchant's own use (read). Allowed fields are shown unmasked: mask is
    /// always Mask::None.
    ///
    /// The order is unknown_field, unknown_purpose, then purpose_not_allowed_for_field, the legal
    /// basis (consent, notice, objection), restriction and retention.
    pub fn decide_use(
        &self,
        purpose: &str,
        field: &str,
        subject: &dyn Subject,
        now_ms: i64,
    ) -> FieldDecision {
        let Some(field_policy) = self.field(field) else {
            return FieldDecision::Deny(Reason::UnknownField);
        };
        let Some(purpose_policy) = self.purpose(purpose) else {
            return FieldDecision::Deny(Reason::UnknownPurpose);
        };
        match check_customer(purpose_policy, field_policy, subject, now_ms) {
            Err(reason) => FieldDecision::Deny(reason),
            Ok(()) => FieldDecision::Allow { mask: Mask::None },
        }
    }
}

/// Rules 2–5: the field serves the purpose, the legal basis is met and not objected to, processing
/// is not restricted, and the value is within its retention.
fn check_customer(
    purpose: &Purpose,
    field: &FieldPolicy,
    subject: &dyn Subject,
    now_ms: i64,
) -> Result<(), Reason> {
    if !field.purposes.contains(purpose.name.as_str()) {
        return Err(Reason::PurposeNotAllowedForField);
    }
    if purpose.basis == LegalBasis::Consent {
        let consent = subject.newest_consent(&purpose.name).ok_or(Reason::ConsentMissing)?;
        if !consent.granted {
            return Err(Reason::ConsentWithdrawn);
        }
        if let Some(notice) = purpose.notice.as_deref()
            && consent.notice != Some(notice)
        {
            return Err(Reason::NoticeOutdated);
        }
    }
    // Checked whatever the basis: a stored objection is honoured even if the purpose has since
    // become one that cannot be objected to. The vault refuses new objections to such purposes.
    if subject.objected(&purpose.name) {
        return Err(Reason::Objected);
    }
    if subject.restricted() && purpose.basis != LegalBasis::LegalObligation {
        return Err(Reason::Restricted);
    }
    if let (Some(days), Some(written)) = (field.retention_days, subject.written_at(&field.name)) {
        // Saturating: an absurd timestamp still lands on the correct side of a limit that is far
        // below i64::MAX (u32::MAX days is about 3.7e17 ms).
        if now_ms.saturating_sub(written) > i64::from(days) * DAY_MS {
            return Err(Reason::RetentionExpired);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use proptest::prelude::*;

    use super::*;

    const DAY: i64 = 86_400_000;
    const NOW: i64 = 1_700_000_000_000;

    /// A customer state for tests: consents by purpose, objections, restriction, write times.
    #[derive(Debug, Clone, Default)]
    struct Customer {
        consents: BTreeMap<String, (bool, Option<String>)>,
        objections: BTreeSet<String>,
        restricted: bool,
        written: BTreeMap<String, i64>,
    }

    impl Customer {
        fn consent(mut self, purpose: &str, granted: bool, notice: Option<&str>) -> Self {
            self.consents.insert(purpose.into(), (granted, notice.map(Into::into)));
            self
        }
        fn objecting(mut self, purpose: &str) -> Self {
            self.objections.insert(purpose.into());
            self
        }
        fn restricted(mut self) -> Self {
            self.restricted = true;
            self
        }
        fn wrote(mut self, field: &str, at: i64) -> Self {
            self.written.insert(field.into(), at);
            self
        }
    }

    impl Subject for Customer {
        fn newest_consent(&self, purpose: &str) -> Option<ConsentStatus<'_>> {
            self.consents
                .get(purpose)
                .map(|(granted, notice)| ConsentStatus { granted: *granted, notice: notice.as_deref() })
        }
        fn objected(&self, purpose: &str) -> bool {
            self.objections.contains(purpose)
        }
        fn restricted(&self) -> bool {
            self.restricted
        }
        fn written_at(&self, field: &str) -> Option<i64> {
            self.written.get(field).copied()
        }
    }

    const SET: &str = r#"
        [purposes.shipping]
        basis = "contract"
        [purposes.news]
        basis = "consent"
        notice = "news-v2"
        direct_marketing = true
        [purposes.stats]
        basis = "consent"
        [purposes.fraud]
        basis = "legitimate_interests"
        [purposes.tax]
        basis = "legal_obligation"

        [fields.email]
        category = "user.contact.email"
        type = "email"
        purposes = ["shipping", "news", "stats", "fraud", "tax"]
        mask = "email"
        [fields.phone]
        category = "user.contact.phone_number"
        type = "phone"
        purposes = ["shipping"]
        mask = "last4"
        [fields.name]
        category = "user.name"
        type = "string"
        purposes = ["shipping", "news", "tax"]
        [fields.birth_date]
        category = "user.demographic.date_of_birth"
        type = "date"
        purposes = ["stats", "tax"]
        mask = "year"
        retention_days = 30

        [recipients.carrier]
        grants = [{ purpose = "shipping", fields = ["email", "phone", "name"], mask = { email = "none" } }]
        [recipients.mailer]
        grants = [{ purpose = "news", fields = ["email", "name", "phone"] }]
        [recipients.stats-co]
        grants = [{ purpose = "stats", fields = ["birth_date"] }]
        [recipients.tax-office]
        grants = [{ purpose = "tax", fields = ["name", "birth_date"] }]
        [recipients.bank]
        grants = [{ purpose = "fraud", fields = ["email"] }]
    "#;

    fn set() -> PolicySet {
        PolicySet::from_sources(&[("set.toml".into(), SET.into())]).unwrap()
    }

    fn disclose(r: &str, p: &str, f: &str, c: &Customer) -> FieldDecision {
        set().decide_disclosure(r, p, f, c, NOW)
    }

    fn deny(reason: Reason) -> FieldDecision {
        FieldDecision::Deny(reason)
    }

    fn allow(mask: Mask) -> FieldDecision {
        FieldDecision::Allow { mask }
    }

    #[test]
    fn reason_codes_are_the_documented_snake_case_strings() {
        let codes: Vec<_> = Reason::ALL.iter().map(Reason::as_str).collect();
        assert_eq!(
            codes,
            [
                "unknown_recipient",
                "unknown_purpose",
                "no_grant",
                "purpose_not_allowed_for_field",
                "consent_missing",
                "consent_withdrawn",
                "notice_outdated",
                "objected",
                "restricted",
                "retention_expired",
                "unknown_field",
            ]
        );
        assert_eq!(Reason::NoGrant.to_string(), "no_grant");
        assert_eq!(Reason::Restricted.rule(), Some(4));
    }

    #[test]
    fn undeclared_names_are_denied_field_first_then_purpose_then_recipient() {
        let c = Customer::default();
        assert_eq!(disclose("nobody", "nothing", "fax", &c), deny(Reason::UnknownField));
        assert_eq!(disclose("nobody", "nothing", "email", &c), deny(Reason::UnknownPurpose));
        assert_eq!(disclose("nobody", "shipping", "email", &c), deny(Reason::UnknownRecipient));
        assert_eq!(set().decide_use("nothing", "fax", &c, NOW), deny(Reason::UnknownField));
        assert_eq!(set().decide_use("nothing", "email", &c, NOW), deny(Reason::UnknownPurpose));
    }

    #[test]
    fn a_recipient_without_a_grant_listing_the_field_is_denied_no_grant() {
        let c = Customer::default();
        assert_eq!(disclose("carrier", "news", "email", &c), deny(Reason::NoGrant));
        assert_eq!(disclose("carrier", "shipping", "birth_date", &c), deny(Reason::NoGrant));
    }

    #[test]
    fn a_field_not_declared_for_the_purpose_is_denied_even_with_a_grant() {
        let c = Customer::default().consent("news", true, Some("news-v2"));
        assert_eq!(disclose("mailer", "news", "phone", &c), deny(Reason::PurposeNotAllowedForField));
        assert_eq!(set().decide_use("fraud", "phone", &c, NOW), deny(Reason::PurposeNotAllowedForField));
    }

    #[test]
    fn consent_purposes_need_a_granted_newest_record_naming_the_notice() {
        let none = Customer::default();
        let withdrawn = Customer::default().consent("news", false, Some("news-v2"));
        let old_notice = Customer::default().consent("news", true, Some("news-v1"));
        let no_notice = Customer::default().consent("news", true, None);
        let granted = Customer::default().consent("news", true, Some("news-v2"));
        assert_eq!(disclose("mailer", "news", "email", &none), deny(Reason::ConsentMissing));
        assert_eq!(disclose("mailer", "news", "email", &withdrawn), deny(Reason::ConsentWithdrawn));
        assert_eq!(disclose("mailer", "news", "email", &old_notice), deny(Reason::NoticeOutdated));
        assert_eq!(disclose("mailer", "news", "email", &no_notice), deny(Reason::NoticeOutdated));
        assert_eq!(disclose("mailer", "news", "email", &granted), allow(Mask::Email));
        // A purpose without a notice accepts any granted record, with or without one.
        let stats = Customer::default().consent("stats", true, Some("whatever"));
        assert_eq!(disclose("stats-co", "stats", "birth_date", &stats), allow(Mask::Year));
        assert_eq!(set().decide_use("news", "email", &old_notice, NOW), deny(Reason::NoticeOutdated));
    }

    #[test]
    fn non_consent_purposes_ignore_consent_records() {
        let withdrawn = Customer::default().consent("shipping", false, None);
        assert_eq!(disclose("carrier", "shipping", "name", &withdrawn), allow(Mask::None));
    }

    #[test]
    fn an_objection_denies_the_purpose_objected_to_only() {
        let c =
            Customer::default().consent("news", true, Some("news-v2")).objecting("news").objecting("fraud");
        assert_eq!(disclose("mailer", "news", "email", &c), deny(Reason::Objected));
        assert_eq!(disclose("bank", "fraud", "email", &c), deny(Reason::Objected));
        assert_eq!(disclose("carrier", "shipping", "email", &c), allow(Mask::None));
        assert_eq!(set().decide_use("fraud", "email", &c, NOW), deny(Reason::Objected));
    }

    #[test]
    fn a_withdrawn_consent_is_reported_before_an_objection() {
        let c = Customer::default().consent("news", false, None).objecting("news").restricted();
        assert_eq!(disclose("mailer", "news", "email", &c), deny(Reason::ConsentWithdrawn));
    }

    #[test]
    fn restriction_lets_only_legal_obligation_through() {
        let c = Customer::default()
            .consent("news", true, Some("news-v2"))
            .consent("stats", true, None)
            .restricted();
        assert_eq!(disclose("carrier", "shipping", "name", &c), deny(Reason::Restricted));
        assert_eq!(disclose("mailer", "news", "name", &c), deny(Reason::Restricted));
        assert_eq!(disclose("bank", "fraud", "email", &c), deny(Reason::Restricted));
        assert_eq!(disclose("stats-co", "stats", "birth_date", &c), deny(Reason::Restricted));
        assert_eq!(disclose("tax-office", "tax", "name", &c), allow(Mask::None));
        assert_eq!(set().decide_use("tax", "email", &c, NOW), allow(Mask::None));
        assert_eq!(set().decide_use("shipping", "email", &c, NOW), deny(Reason::Restricted));
    }

    #[test]
    fn retention_expires_strictly_after_the_declared_days() {
        let at = |written| Customer::default().wrote("birth_date", written);
        let limit = NOW - 30 * DAY;
        assert_eq!(disclose("tax-office", "tax", "birth_date", &at(limit)), allow(Mask::Year));
        assert_eq!(
            disclose("tax-office", "tax", "birth_date", &at(limit - 1)),
            deny(Reason::RetentionExpired)
        );
        assert_eq!(
            set().decide_use("tax", "birth_date", &at(limit - 1), NOW),
            deny(Reason::RetentionExpired)
        );
        // No value written, a value from the future, or no retention declared: nothing expires.
        let empty = Customer::default();
        assert_eq!(disclose("tax-office", "tax", "birth_date", &empty), allow(Mask::Year));
        let future = at(NOW + DAY);
        assert_eq!(disclose("tax-office", "tax", "birth_date", &future), allow(Mask::Year));
        let old_name = Customer::default().wrote("name", 0);
        assert_eq!(disclose("tax-office", "tax", "name", &old_name), allow(Mask::None));
        let ancient = at(i64::MIN);
        assert_eq!(
            set().decide_disclosure("tax-office", "tax", "birth_date", &ancient, i64::MAX),
            deny(Reason::RetentionExpired)
        );
    }

    #[test]
    fn the_grant_mask_overrides_the_field_mask_and_neither_means_none() {
        let c = Customer::default().consent("news", true, Some("news-v2"));
        // Grant says none, field says email.
        assert_eq!(disclose("carrier", "shipping", "email", &c), allow(Mask::None));
        // No grant mask: the field's default.
        assert_eq!(disclose("carrier", "shipping", "phone", &c), allow(Mask::Last4));
        assert_eq!(disclose("mailer", "news", "email", &c), allow(Mask::Email));
        // Neither: shown.
        assert_eq!(disclose("carrier", "shipping", "name", &c), allow(Mask::None));
    }

    #[test]
    fn the_merchants_own_use_is_never_masked() {
        let c = Customer::default();
        assert_eq!(set().decide_use("shipping", "phone", &c, NOW), allow(Mask::None));
        assert_eq!(set().decide_use("fraud", "email", &c, NOW), allow(Mask::None));
    }

    // The property test: a naive model of DESIGN §2, written from the text and sharing nothing
    // with the code above, must agree with `decide_disclosure` and `decide_use` everywhere.

    const BASES: [&str; 6] =
        ["consent", "contract", "legal_obligation", "vital_interests", "public_task", "legitimate_interests"];
    const TYPES: [&str; 6] = ["string", "email", "phone", "date", "address", "country"];
    const NOTICES: [&str; 2] = ["n1", "n2"];

    /// Masks that fit each type, per DESIGN §3, plus the payment_methods set last.
    fn fitting_masks(ty: Option<&str>) -> &'static [&'static str] {
        match ty {
            None => &["none", "redact", "last4"],
            Some("email") => &["none", "redact", "last4", "email"],
            Some("date") => &["none", "redact", "last4", "year"],
            Some("address") => &["none", "redact"],
            Some(_) => &["none", "redact", "last4"],
        }
    }

    #[derive(Debug, Clone)]
    struct ModelPurpose {
        name: String,
        basis: &'static str,
        notice: Option<&'static str>,
        direct_marketing: bool,
    }

    #[derive(Debug, Clone)]
    struct ModelField {
        name: String,
        /// `None` for payment_methods.
        ty: Option<&'static str>,
        purposes: Vec<String>,
        mask: Option<&'static str>,
        retention_days: Option<u32>,
    }

    #[derive(Debug, Clone)]
    struct ModelGrant {
        purpose: String,
        fields: Vec<String>,
        masks: Vec<(String, &'static str)>,
    }

    #[derive(Debug, Clone)]
    struct ModelRecipient {
        name: String,
        grants: Vec<ModelGrant>,
    }

    #[derive(Debug, Clone)]
    struct Model {
        purposes: Vec<ModelPurpose>,
        fields: Vec<ModelField>,
        recipients: Vec<ModelRecipient>,
    }

    impl Model {
        fn toml(&self) -> String {
            let list =
                |items: &[String]| items.iter().map(|s| format!("\"{s}\"")).collect::<Vec<_>>().join(", ");
            let mut out = String::new();
            for p in &self.purposes {
                out += &format!("[purposes.{}]\nbasis = \"{}\"\n", p.name, p.basis);
                if let Some(n) = p.notice {
                    out += &format!("notice = \"{n}\"\n");
                }
                out += &format!("direct_marketing = {}\n", p.direct_marketing);
            }
            for f in &self.fields {
                out += &format!("[fields.{}]\ncategory = \"user.test\"\n", f.name);
                if let Some(ty) = f.ty {
                    out += &format!("type = \"{ty}\"\n");
                }
                out += &format!("purposes = [{}]\n", list(&f.purposes));
                if let Some(m) = f.mask {
                    out += &format!("mask = \"{m}\"\n");
                }
                if let Some(d) = f.retention_days {
                    out += &format!("retention_days = {d}\n");
                }
            }
            for r in &self.recipients {
                out += &format!("[recipients.{}]\ngrants = [\n", r.name);
                for g in &r.grants {
                    let masks =
                        g.masks.iter().map(|(f, m)| format!("{f} = \"{m}\"")).collect::<Vec<_>>().join(", ");
                    out += &format!(
                        "  {{ purpose = \"{}\", fields = [{}], mask = {{ {masks} }} }},\n",
                        g.purpose,
                        list(&g.fields)
                    );
                }
                out += "]\n";
            }
            out
        }

        /// DESIGN §2, read literally. `recipient = None` is the merchant's own read (rules 2–5).
        /// Returns the mask name, or the reason code of the first failing check.
        fn decide(
            &self,
            recipient: Option<&str>,
            purpose: &str,
            field: &str,
            c: &Customer,
            now: i64,
        ) -> Result<&'static str, &'static str> {
            let f = self.fields.iter().find(|f| f.name == field).ok_or("unknown_field")?;
            let p = self.purposes.iter().find(|p| p.name == purpose).ok_or("unknown_purpose")?;
            let mut mask = "none";
            if let Some(recipient) = recipient {
                // Rule 1: P and R are declared, and R has a grant for P that lists F.
                let r = self.recipients.iter().find(|r| r.name == recipient).ok_or("unknown_recipient")?;
                let g = r
                    .grants
                    .iter()
                    .find(|g| g.purpose == purpose && g.fields.iter().any(|x| x == field))
                    .ok_or("no_grant")?;
                // The grant's mask overrides the field's; with neither, the value is shown.
                mask = g.masks.iter().find(|(x, _)| x == field).map(|(_, m)| *m).or(f.mask).unwrap_or("none");
            }
            // Rule 2: F's declared purposes include P.
            if !f.purposes.iter().any(|x| x == purpose) {
                return Err("purpose_not_allowed_for_field");
            }
            // Rule 3: the legal basis is met, and C has not objected to P.
            if p.basis == "consent" {
                match c.consents.get(purpose) {
                    None => return Err("consent_missing"),
                    Some((false, _)) => return Err("consent_withdrawn"),
                    Some((true, notice)) => {
                        if let Some(wanted) = p.notice
                            && notice.as_deref() != Some(wanted)
                        {
                            return Err("notice_outdated");
                        }
                    }
                }
            }
            if c.objections.contains(purpose) {
                return Err("objected");
            }
            // Rule 4: not restricted, unless the basis is a legal obligation.
            if c.restricted && p.basis != "legal_obligation" {
                return Err("restricted");
            }
            // Rule 5: not past retention, counted from the last write.
            if let (Some(days), Some(written)) = (f.retention_days, c.written.get(field)) {
                let age = now as i128 - *written as i128;
                if age > days as i128 * 86_400_000 {
                    return Err("retention_expired");
                }
            }
            Ok(mask)
        }
    }

    fn shown(d: FieldDecision) -> Result<&'static str, &'static str> {
        match d {
            FieldDecision::Allow { mask } => Ok(mask.as_str()),
            FieldDecision::Deny(reason) => Err(reason.as_str()),
        }
    }

    /// Picks a non-empty subset of `names` from a bit mask.
    fn subset(names: &[String], bits: u32) -> Vec<String> {
        let chosen: Vec<_> =
            names.iter().enumerate().filter(|(i, _)| bits & (1 << i) != 0).map(|(_, n)| n.clone()).collect();
        if chosen.is_empty() { vec![names[bits as usize % names.len()].clone()] } else { chosen }
    }

    prop_compose! {
        fn model()(
            purposes in prop::collection::vec((0..6usize, prop::option::of(0..2usize), any::<bool>()), 1..5),
            fields in prop::collection::vec(
                (0..6usize, any::<u32>(), prop::option::of(0..8usize), prop::option::of(1..4u32)),
                1..6,
            ),
            with_payment_methods in any::<bool>(),
            recipients in prop::collection::vec(
                prop::collection::vec(
                    (any::<bool>(), any::<u32>(), prop::collection::vec(prop::option::of(0..8usize), 8)),
                    5,
                ),
                0..4,
            ),
        ) -> Model {
            let purposes: Vec<ModelPurpose> = purposes
                .into_iter()
                .enumerate()
                .map(|(i, (basis, notice, direct_marketing))| ModelPurpose {
                    name: format!("p{i}"),
                    basis: BASES[basis],
                    notice: notice.map(|n| NOTICES[n]),
                    direct_marketing,
                })
                .collect();
            let purpose_names: Vec<String> = purposes.iter().map(|p| p.name.clone()).collect();
            let mut fields: Vec<ModelField> = fields
                .into_iter()
                .enumerate()
                .map(|(i, (ty, bits, mask, retention_days))| {
                    let ty = TYPES[ty];
                    let masks = fitting_masks(Some(ty));
                    ModelField {
                        name: format!("f{i}"),
                        ty: Some(ty),
                        purposes: subset(&purpose_names, bits),
                        mask: mask.map(|m| masks[m % masks.len()]),
                        retention_days,
                    }
                })
                .collect();
            if with_payment_methods {
                fields.push(ModelField {
                    name: "payment_methods".into(),
                    ty: None,
                    purposes: subset(&purpose_names, 1),
                    mask: Some("redact"),
                    retention_days: None,
                });
            }
            let field_names: Vec<String> = fields.iter().map(|f| f.name.clone()).collect();
            let recipients = recipients
                .into_iter()
                .enumerate()
                .map(|(i, grants)| ModelRecipient {
                    name: format!("r{i}"),
                    grants: grants
                        .into_iter()
                        .zip(&purpose_names)
                        .filter(|((present, _, _), _)| *present)
                        .map(|((_, bits, masks), purpose)| {
                            let listed = subset(&field_names, bits);
                            let masks = listed
                                .iter()
                                .zip(masks)
                                .filter_map(|(name, m)| {
                                    let ty = fields.iter().find(|f| &f.name == name)?.ty;
                                    let fitting = fitting_masks(ty);
                                    Some((name.clone(), fitting[m? % fitting.len()]))
                                })
                                .collect();
                            ModelGrant { purpose: purpose.clone(), fields: listed, masks }
                        })
                        .collect(),
                })
                .collect();
            Model { purposes, fields, recipients }
        }
    }

    prop_compose! {
        fn customer()(
            consents in prop::collection::btree_map(
                (0..6usize).prop_map(|i| format!("p{i}")),
                (any::<bool>(), prop::option::of(0..3usize)),
                0..6,
            ),
            objections in prop::collection::btree_set((0..6usize).prop_map(|i| format!("p{i}")), 0..3),
            restricted in any::<bool>(),
            // One optional write time per field name (f0..f6, then payment_methods): exact day
            // boundaries and one millisecond either side, so retention limits are hit exactly,
            // as well as arbitrary times.
            written in prop::collection::vec(
                prop::option::weighted(
                    0.85,
                    (0..5i64, prop_oneof![2 => Just(0i64), 1 => Just(-1), 1 => Just(1), 1 => -DAY..DAY])
                        .prop_map(|(days, jitter)| NOW - days * DAY + jitter),
                ),
                8,
            ),
        ) -> Customer {
            Customer {
                consents: consents
                    .into_iter()
                    // Notice 2 is one no purpose declares.
                    .map(|(p, (g, n))| (p, (g, n.map(|n| ["n1", "n2", "n3"][n].to_owned()))))
                    .collect(),
                objections,
                restricted,
                written: written
                    .into_iter()
                    .enumerate()
                    .filter_map(|(i, at)| {
                        let name = if i == 7 { "payment_methods".to_owned() } else { format!("f{i}") };
                        Some((name, at?))
                    })
                    .collect(),
            }
        }
    }

    fn name(prefix: &'static str, max: usize) -> impl Strategy<Value = String> {
        prop_oneof![
            4 => (0..max).prop_map(move |i| format!("{prefix}{i}")),
            1 => Just("payment_methods".to_owned()),
            1 => Just("zz".to_owned()),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn decisions_match_a_naive_reading_of_the_design_rules(
            model in model(),
            customer in customer(),
            queries in prop::collection::vec((name("r", 5), name("p", 6), name("f", 7)), 1..12),
            now_offset in prop_oneof![Just(0i64), -DAY..(4 * DAY)],
        ) {
            let text = model.toml();
            let set = PolicySet::from_sources(&[("random.toml".into(), text.clone())])
                .map_err(|e| TestCaseError::fail(format!("{e}\n{text}")))?;
            let now = NOW + now_offset;
            for (r, p, f) in &queries {
                prop_assert_eq!(
                    shown(set.decide_disclosure(r, p, f, &customer, now)),
                    model.decide(Some(r), p, f, &customer, now),
                    "disclosure {} {} {}\n{}", r, p, f, text
                );
                prop_assert_eq!(
                    shown(set.decide_use(p, f, &customer, now)),
                    model.decide(None, p, f, &customer, now),
                    "use {} {}\n{}", p, f, text
                );
            }
            // Also every declared combination, so allowed paths are exercised often.
            for r in &model.recipients {
                for g in &r.grants {
                    for f in &g.fields {
                        prop_assert_eq!(
                            shown(set.decide_disclosure(&r.name, &g.purpose, f, &customer, now)),
                            model.decide(Some(&r.name), &g.purpose, f, &customer, now),
                            "granted {} {} {}\n{}", r.name, g.purpose, f, text
                        );
                    }
                }
            }
        }
    }
}
