//! A human-readable account of one disclosure decision, for `custodia policy explain`.
//!
//! This module owns the text a privacy officer reads to understand why a field may or may not go
//! to a recipient for a purpose. The verdicts it prints come from [`PolicySet::decide_disclosure`]
//! run against small made-up customers, so the explanation can never disagree with the rule that
//! is enforced. It must never name a real customer or value: it works on policy names only.

use chrono::Utc;

use crate::policy::decision::{ConsentStatus, FieldDecision, Subject};
use crate::policy::{FieldPolicy, LegalBasis, Mask, PolicySet, Purpose, Recipient};

/// Explains, rule by rule, whether `field` may go to `recipient` for `purpose`.
///
/// Rules 1 and 2 depend on the policies alone; rules 3–5 are marked for a customer in the default
/// state (no consent record, no objection, not restricted, the value just written) and say what
/// would change the answer. The verdicts follow for that customer and for customers who granted
/// consent (with the right notice), withdrew it, objected, restricted processing or hold a value
/// past its retention, where these apply.
pub fn explain(policies: &PolicySet, recipient: &str, purpose: &str, field: &str) -> String {
    let f = policies.field(field);
    let p = policies.purpose(purpose);
    let r = policies.recipient(recipient);
    let mut out = vec![
        format!("Disclosure of field \"{field}\" to recipient \"{recipient}\" for purpose \"{purpose}\""),
        String::new(),
    ];
    out.push(rule1(field, purpose, recipient, f, p, r));
    out.push(rule2(field, purpose, f, p));
    out.push(rule3(p));
    out.push(rule4(p));
    out.push(rule5(f));
    if let Some(line) = mask_line(field, purpose, f, r) {
        out.push(String::new());
        out.push(line);
    }
    out.push(String::new());
    out.push("Verdict:".to_owned());
    let now = Utc::now().timestamp_millis();
    for scenario in scenarios(p, f, now) {
        let decision = policies.decide_disclosure(recipient, purpose, field, &scenario, now);
        let verdict = match decision {
            FieldDecision::Allow { mask: Mask::None } => "allow, unmasked".to_owned(),
            FieldDecision::Allow { mask } => format!("allow, masked with {mask}"),
            FieldDecision::Deny(reason) => format!("deny ({reason})"),
        };
        out.push(format!("  - {}: {verdict}", scenario.label));
    }
    let mut text = out.join("\n");
    text.push('\n');
    text
}

/// Rule 1: the names are declared, and the recipient has a grant for the purpose listing the
/// field. Checked in the same order as the decision: field, purpose, recipient, grant.
fn rule1(
    field: &str,
    purpose: &str,
    recipient: &str,
    f: Option<&FieldPolicy>,
    p: Option<&Purpose>,
    r: Option<&Recipient>,
) -> String {
    let fail = |why: String, reason: &str| format!("✗ 1. {why} → {reason}");
    if f.is_none() {
        return fail(format!("field \"{field}\" is not declared"), "unknown_field");
    }
    if p.is_none() {
        return fail(format!("purpose \"{purpose}\" is not declared"), "unknown_purpose");
    }
    let Some(r) = r else {
        return fail(format!("recipient \"{recipient}\" is not declared"), "unknown_recipient");
    };
    let Some(grant) = r.grant_for(purpose) else {
        let held = r.grants.iter().map(|g| g.purpose.as_str()).collect::<Vec<_>>();
        return fail(
            format!(
                "recipient \"{recipient}\" has no grant for purpose \"{purpose}\" (its grants: {})",
                list(&held)
            ),
            "no_grant",
        );
    };
    if !grant.fields.contains(field) {
        let listed = grant.fields.iter().map(String::as_str).collect::<Vec<_>>();
        return fail(
            format!(
                "the grant of \"{recipient}\" for \"{purpose}\" does not list \"{field}\" (it \
                 lists: {})",
                list(&listed)
            ),
            "no_grant",
        );
    }
    format!("✓ 1. recipient \"{recipient}\" has a grant for \"{purpose}\" that lists \"{field}\"")
}

/// Rule 2: the field's declared purposes include the purpose.
fn rule2(field: &str, purpose: &str, f: Option<&FieldPolicy>, p: Option<&Purpose>) -> String {
    let (Some(f), Some(_)) = (f, p) else {
        return "– 2. field purposes: not checked, a name is not declared".to_owned();
    };
    if f.purposes.contains(purpose) {
        format!("✓ 2. field \"{field}\" serves \"{purpose}\"")
    } else {
        let served = f.purposes.iter().map(String::as_str).collect::<Vec<_>>();
        format!(
            "✗ 2. field \"{field}\" does not serve \"{purpose}\" (it serves: {}) → \
             purpose_not_allowed_for_field",
            list(&served)
        )
    }
}

/// Rule 3: the legal basis, and objection.
fn rule3(p: Option<&Purpose>) -> String {
    let Some(p) = p else {
        return "– 3. legal basis: not checked, the purpose is not declared".to_owned();
    };
    let objection = if p.objectable() {
        let why = if p.direct_marketing { "direct marketing" } else { p.basis.as_str() };
        format!(" The customer may object ({why}); an objection denies (objected).")
    } else if p.basis == LegalBasis::Consent {
        " The customer cannot object to it; withdrawing consent stops it instead.".to_owned()
    } else {
        format!(" The customer cannot object to a purpose with basis {}.", p.basis)
    };
    if p.basis == LegalBasis::Consent {
        let notice = match &p.notice {
            Some(notice) => {
                format!(" and names notice \"{notice}\" (another or no notice: notice_outdated)")
            }
            None => String::new(),
        };
        format!(
            "✗ 3. legal basis consent: a customer in the default state has no consent record → \
             consent_missing. Allowed once their newest consent record is granted{notice}; a \
             withdrawal denies (consent_withdrawn).{objection}"
        )
    } else {
        format!("✓ 3. legal basis {}: no consent needed.{objection}", p.basis)
    }
}

/// Rule 4: restriction (Art. 18), which only a legal obligation overrides.
fn rule4(p: Option<&Purpose>) -> String {
    match p {
        None => "– 4. restriction: not checked, the purpose is not declared".to_owned(),
        Some(p) if p.basis == LegalBasis::LegalObligation => {
            "✓ 4. restriction: does not apply; the basis is legal_obligation, so even a \
             restricted customer's data is used"
                .to_owned()
        }
        Some(_) => "✓ 4. restriction: a customer in the default state is not restricted; one \
                    who restricts processing (Art. 18) is denied (restricted)"
            .to_owned(),
    }
}

/// Rule 5: retention, counted from the field's last write.
fn rule5(f: Option<&FieldPolicy>) -> String {
    match f.map(|f| f.retention_days) {
        None => "– 5. retention: not checked, the field is not declared".to_owned(),
        Some(None) => "✓ 5. retention: none declared; the value never expires".to_owned(),
        Some(Some(days)) => format!(
            "✓ 5. retention: {days} days from the field's last write; an older value is denied \
             (retention_expired)"
        ),
    }
}

/// The mask a disclosure would apply and where it comes from; `None` for an undeclared field.
fn mask_line(field: &str, purpose: &str, f: Option<&FieldPolicy>, r: Option<&Recipient>) -> Option<String> {
    let f = f?;
    let grant_mask = r.and_then(|r| r.grant_for(purpose)).and_then(|g| g.masks.get(field)).copied();
    let (mask, source) = match grant_mask {
        Some(mask) => (mask, format!("from the grant; the field's default is {}", f.mask)),
        None => (f.mask, "the field's default; the grant sets none".to_owned()),
    };
    let effect = match mask {
        Mask::None => "the value is shown as is",
        Mask::Redact => "the value is replaced by \"[redacted]\"",
        Mask::Last4 => "only the last four characters are shown, e.g. \"***1234\"",
        Mask::Email => "only the first character and the domain are shown, e.g. \"j***@example.com\"",
        Mask::Year => "only the year is shown, e.g. \"1990-**-**\"",
    };
    Some(format!("Mask if allowed: {mask} ({source}): {effect}."))
}

/// A made-up customer the verdicts are computed for.
struct Scenario<'a> {
    label: String,
    consent: Option<ConsentStatus<'a>>,
    objected: bool,
    restricted: bool,
    written_at: Option<i64>,
}

impl Subject for Scenario<'_> {
    fn newest_consent(&self, _purpose: &str) -> Option<ConsentStatus<'_>> {
        self.consent
    }

    fn objected(&self, _purpose: &str) -> bool {
        self.objected
    }

    fn restricted(&self) -> bool {
        self.restricted
    }

    fn written_at(&self, _field: &str) -> Option<i64> {
        self.written_at
    }
}

/// The customers worth showing: always the default state; the consent cases for a consent
/// purpose; an objection where one is possible; restriction; and an expired value where the
/// field has a retention. Each varies one thing from a customer the purpose would otherwise allow.
fn scenarios<'a>(p: Option<&'a Purpose>, f: Option<&FieldPolicy>, now: i64) -> Vec<Scenario<'a>> {
    let consent_basis = p.is_some_and(|p| p.basis == LegalBasis::Consent);
    let granted = ConsentStatus { granted: true, notice: p.and_then(|p| p.notice.as_deref()) };
    let base = || Scenario {
        label: String::new(),
        consent: consent_basis.then_some(granted),
        objected: false,
        restricted: false,
        written_at: Some(now),
    };
    let mut out = vec![Scenario {
        label: "customer in the default state (no consent record, no objection, not restricted, \
                value just written)"
            .to_owned(),
        consent: None,
        ..base()
    }];
    if let Some(p) = p.filter(|_| consent_basis) {
        let label = match &p.notice {
            Some(notice) => format!("customer who granted consent naming notice \"{notice}\""),
            None => "customer who granted consent".to_owned(),
        };
        out.push(Scenario { label, ..base() });
        out.push(Scenario {
            label: "customer who withdrew consent".to_owned(),
            consent: Some(ConsentStatus { granted: false, notice: granted.notice }),
            ..base()
        });
    }
    let and_consented = if consent_basis { " (and granted consent)" } else { "" };
    if p.is_some_and(Purpose::objectable) {
        out.push(Scenario {
            label: format!("customer who objected{and_consented}"),
            objected: true,
            ..base()
        });
    }
    out.push(Scenario {
        label: format!("customer who restricted processing{and_consented}"),
        restricted: true,
        ..base()
    });
    if let Some(days) = f.and_then(|f| f.retention_days) {
        out.push(Scenario {
            label: format!("value last written {} days ago{and_consented}", u64::from(days) + 1),
            written_at: Some(now.saturating_sub((i64::from(days) + 1) * 86_400_000)),
            ..base()
        });
    }
    out
}

fn list(names: &[&str]) -> String {
    if names.is_empty() { "none".to_owned() } else { names.join(", ") }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::policy::Reason;

    fn example() -> PolicySet {
        PolicySet::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("policies")).unwrap()
    }

    #[test]
    fn a_consent_purpose_shows_default_granted_and_withdrawn_verdicts_with_the_mask() {
        let text = explain(&example(), "letterbox-newsletter", "marketing", "email");
        assert!(text.contains("✓ 1. "), "{text}");
        assert!(text.contains("✓ 2. "), "{text}");
        assert!(text.contains("✗ 3. legal basis consent"), "{text}");
        assert!(text.contains("customer in the default state"), "{text}");
        assert!(text.contains(": deny (consent_missing)"), "{text}");
        assert!(
            text.contains("customer who granted consent naming notice \"marketing-v2\": allow"),
            "{text}"
        );
        assert!(text.contains("customer who withdrew consent: deny (consent_withdrawn)"), "{text}");
        assert!(text.contains("customer who objected (and granted consent): deny (objected)"));
        assert!(text.contains("Mask if allowed: none (from the grant"), "{text}");
    }

    #[test]
    fn a_contract_purpose_with_a_grant_mask_is_allowed_masked_by_default() {
        let text = explain(&example(), "acme-shipping", "order_fulfillment", "phone");
        assert!(text.contains("✓ 3. legal basis contract: no consent needed."), "{text}");
        assert!(text.contains("cannot object"), "{text}");
        assert!(text.contains("Mask if allowed: last4 (from the grant"), "{text}");
        assert!(text.contains("value just written): allow, masked with last4"), "{text}");
        assert!(text.contains("restricted processing: deny (restricted)"), "{text}");
        assert!(!text.contains("withdrew"), "{text}");
    }

    #[test]
    fn undeclared_names_and_missing_grants_are_explained() {
        let set = example();
        let text = explain(&set, "acme-shipping", "order_fulfillment", "fax");
        assert!(text.contains("✗ 1. field \"fax\" is not declared → unknown_field"), "{text}");
        assert!(text.contains("– 5. retention: not checked"), "{text}");
        assert!(!text.contains("Mask if allowed"), "{text}");
        let text = explain(&set, "acme-shipping", "marketing", "email");
        assert!(text.contains("has no grant for purpose \"marketing\""), "{text}");
        assert!(text.contains(": deny (no_grant)"), "{text}");
        let text = explain(&set, "metricly-analytics", "analytics", "birth_date");
        assert!(
            text.contains("value last written 1096 days ago (and granted consent): deny (retention_expired)"),
            "{text}"
        );
    }

    #[test]
    fn the_first_failing_rule_in_the_text_matches_the_decision_everywhere() {
        let set = example();
        let mut recipients: Vec<_> = set.recipients().map(|r| r.name.clone()).collect();
        let mut purposes: Vec<_> = set.purposes().map(|p| p.name.clone()).collect();
        let mut fields: Vec<_> = set.fields().map(|f| f.name.clone()).collect();
        recipients.push("nobody".into());
        purposes.push("nothing".into());
        fields.push("fax".into());
        let default = Scenario {
            label: String::new(),
            consent: None,
            objected: false,
            restricted: false,
            written_at: None,
        };
        for r in &recipients {
            for p in &purposes {
                for f in &fields {
                    let text = explain(&set, r, p, f);
                    let first_fail = text
                        .lines()
                        .find_map(|l| l.strip_prefix("✗ "))
                        .and_then(|l| l[..1].parse::<u8>().ok());
                    let decision = set.decide_disclosure(r, p, f, &default, 0);
                    let expected = decision.reason().map(|reason| match reason {
                        Reason::UnknownField => 1,
                        other => other.rule().unwrap_or(0),
                    });
                    assert_eq!(first_fail, expected, "{r} {p} {f}:\n{text}");
                    let verdict = match decision.reason() {
                        Some(reason) => format!("value just written): deny ({reason})"),
                        None => "value just written): allow".to_owned(),
                    };
                    assert!(text.contains(&verdict), "{r} {p} {f}:\n{text}");
                }
            }
        }
    }
}
