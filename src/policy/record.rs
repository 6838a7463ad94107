//! The GDPR Art. 30(1) record of processing activities, generated from the policy files.
//!
//! One activity per declared purpose: its Art. 6(1) legal basis, the categories of personal data
//! (the fields that may serve it, with their fideslang categories), the categories of data
//! subjects, the recipients (with the fields each receives and how they are masked) and the time
//! limits for erasure (the fields' retention). `custodia policy record DIR` prints it as
//! Markdown or JSON, and the public transparency report embeds the same JSON.
//!
//! What the policy files cannot know (the controller's name and contact, transfers to third
//! countries) is named as a gap to fill in, not invented. Names and descriptions only: no
//! customer data ever reaches this module.

use std::fmt::Write as _;

use serde::Serialize;
use utoipa::ToSchema;

use super::{LegalBasis, Mask, PolicySet};

/// The categories of data subjects every activity concerns: the vault holds customers only.
const DATA_SUBJECTS: &str = "customers of the shop";

/// The version of the JSON shape; bumped on any incompatible change.
pub const RECORD_FORMAT_VERSION: u32 = 1;

/// The record of processing activities.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ProcessingRecord {
    /// Shape version of this document.
    pub format_version: u32,
    /// Art. 30(1)(a): left to the controller (the policy files do not name it).
    pub controller: String,
    /// One activity per purpose, in name order.
    pub activities: Vec<Activity>,
    /// Every declared field (what is collected), in name order.
    pub fields: Vec<FieldEntry>,
    /// Every declared recipient, in name order.
    pub recipients: Vec<RecipientEntry>,
    /// Art. 30(1)(g): the technical measures Custodia itself applies.
    pub security_measures: Vec<String>,
}

/// One processing activity: a purpose.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Activity {
    /// The purpose's name.
    pub purpose: String,
    /// Art. 30(1)(b): what it is for.
    pub description: String,
    /// The legal basis as in the policy files (`consent`, `contract` …).
    #[schema(value_type = String)]
    pub legal_basis: LegalBasis,
    /// The article it rests on, e.g. `Art. 6(1)(b)`.
    pub legal_basis_article: String,
    /// The notice version a consent must name, for consent purposes that declare one.
    pub notice: Option<String>,
    /// Whether the customer may object (Art. 21).
    pub objection_possible: bool,
    /// Art. 30(1)(c): categories of data subjects.
    pub data_subjects: Vec<String>,
    /// Art. 30(1)(c): the personal data used, one entry per field that may serve the purpose.
    pub data: Vec<ActivityData>,
    /// Art. 30(1)(d): who receives data for this purpose.
    pub recipients: Vec<ActivityRecipient>,
}

/// A field used by an activity.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ActivityData {
    /// The field's name.
    pub field: String,
    /// Its fideslang data category.
    pub category: String,
    /// Art. 30(1)(f): days after its last write it may still be used; `null` keeps it until
    /// the customer is erased.
    pub retention_days: Option<u32>,
}

/// A recipient of an activity's data.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ActivityRecipient {
    /// The recipient's name.
    pub recipient: String,
    /// Who they are.
    pub description: String,
    /// What they receive: field and mask (the grant's, else the field's default).
    pub fields: Vec<ReceivedField>,
}

/// One field a recipient receives, and how it is masked.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ReceivedField {
    /// The field's name.
    pub field: String,
    /// The mask applied (`none` shows the value).
    pub mask: String,
}

/// A declared field.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct FieldEntry {
    /// The field's name.
    pub field: String,
    /// Its fideslang data category.
    pub category: String,
    /// Its type (`string`, `email` … or `payment_methods`).
    #[serde(rename = "type")]
    pub kind: String,
    /// The purposes it may serve.
    pub purposes: Vec<String>,
    /// Days after its last write it may still be used; `null` keeps it until erasure.
    pub retention_days: Option<u32>,
}

/// A declared recipient.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct RecipientEntry {
    /// The recipient's name.
    pub recipient: String,
    /// Who they are.
    pub description: String,
    /// For each purpose, what they receive.
    pub grants: Vec<RecipientGrant>,
}

/// What a recipient receives for one purpose.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct RecipientGrant {
    /// The purpose.
    pub purpose: String,
    /// Fields and masks.
    pub fields: Vec<ReceivedField>,
}

/// The Art. 6(1) point of a basis.
fn article(basis: LegalBasis) -> &'static str {
    match basis {
        LegalBasis::Consent => "Art. 6(1)(a)",
        LegalBasis::Contract => "Art. 6(1)(b)",
        LegalBasis::LegalObligation => "Art. 6(1)(c)",
        LegalBasis::VitalInterests => "Art. 6(1)(d)",
        LegalBasis::PublicTask => "Art. 6(1)(e)",
        LegalBasis::LegitimateInterests => "Art. 6(1)(f)",
    }
}

impl ProcessingRecord {
    /// The record for a policy set.
    pub fn of(set: &PolicySet) -> ProcessingRecord {
        let received = |recipient: &super::Recipient, purpose: &str| -> Option<Vec<ReceivedField>> {
            let grant = recipient.grant_for(purpose)?;
            Some(
                grant
                    .fields
                    .iter()
                    .map(|f| {
                        let mask = grant
                            .masks
                            .get(f)
                            .copied()
                            .or_else(|| set.field(f).map(|p| p.mask))
                            .unwrap_or(Mask::None);
                        ReceivedField { field: f.clone(), mask: mask.as_str().to_owned() }
                    })
                    .collect(),
            )
        };
        let activities = set
            .purposes()
            .map(|p| Activity {
                purpose: p.name.clone(),
                description: p.description.clone(),
                legal_basis: p.basis,
                legal_basis_article: article(p.basis).to_owned(),
                notice: p.notice.clone().filter(|_| p.basis == LegalBasis::Consent),
                objection_possible: p.objectable(),
                data_subjects: vec![DATA_SUBJECTS.to_owned()],
                data: set
                    .fields()
                    .filter(|f| f.purposes.contains(&p.name))
                    .map(|f| ActivityData {
                        field: f.name.clone(),
                        category: f.category.clone(),
                        retention_days: f.retention_days,
                    })
                    .collect(),
                recipients: set
                    .recipients()
                    .filter_map(|r| {
                        Some(ActivityRecipient {
                            recipient: r.name.clone(),
                            description: r.description.clone(),
                            fields: received(r, &p.name)?,
                        })
                    })
                    .collect(),
            })
            .collect();
        ProcessingRecord {
            format_version: RECORD_FORMAT_VERSION,
            controller: "to be completed by the controller: name and contact details (Art. 30(1)(a)); \
                         transfers to third countries (Art. 30(1)(e)) are not declared in the policy files"
                .to_owned(),
            activities,
            fields: set
                .fields()
                .map(|f| FieldEntry {
                    field: f.name.clone(),
                    category: f.category.clone(),
                    kind: f.kind.as_str().to_owned(),
                    purposes: f.purposes.iter().cloned().collect(),
                    retention_days: f.retention_days,
                })
                .collect(),
            recipients: set
                .recipients()
                .map(|r| RecipientEntry {
                    recipient: r.name.clone(),
                    description: r.description.clone(),
                    grants: r
                        .grants
                        .iter()
                        .map(|g| RecipientGrant {
                            purpose: g.purpose.clone(),
                            fields: received(r, &g.purpose).unwrap_or_default(),
                        })
                        .collect(),
                })
                .collect(),
            security_measures: [
                "every value encrypted at rest with AES-256-GCM under a per-customer data key, \
                 wrapped by a versioned master key; erasure destroys the data key",
                "exact-match lookups through keyed HMAC blind indexes; no plaintext index",
                "each use and disclosure decided per field and purpose by the declared policy, \
                 deny by default",
                "every access recorded in an append-only Merkle-tree audit log with signed \
                 checkpoints (RFC 6962 / RFC 9162, C2SP signed notes)",
            ]
            .map(str::to_owned)
            .to_vec(),
        }
    }

    /// The record as Markdown, for people.
    pub fn to_markdown(&self) -> String {
        let mut out = String::new();
        let retention = |days: Option<u32>| match days {
            Some(d) => format!("{d} days after the field's last write"),
            None => "until the customer is erased".to_owned(),
        };
        // Writing to a String cannot fail.
        let _ = writeln!(out, "# Record of processing activities (GDPR Art. 30(1))\n");
        let _ = writeln!(out, "Generated from the policy files by `custodia policy record`.\n");
        let _ = writeln!(out, "- Controller: {}", self.controller);
        let _ = writeln!(out, "- Categories of data subjects: {DATA_SUBJECTS}\n");
        for a in &self.activities {
            let _ = writeln!(out, "## Purpose `{}`\n", a.purpose);
            if !a.description.is_empty() {
                let _ = writeln!(out, "{}\n", a.description);
            }
            let _ = writeln!(out, "- Legal basis: {} ({})", a.legal_basis, a.legal_basis_article);
            if let Some(notice) = &a.notice {
                let _ = writeln!(out, "- Consent notice version: `{notice}`");
            }
            let _ = writeln!(
                out,
                "- Right to object (Art. 21): {}",
                if a.objection_possible { "yes" } else { "no" }
            );
            let _ = writeln!(out, "- Data subjects: {}", a.data_subjects.join(", "));
            let _ = writeln!(out, "\n| Personal data | Category | Retention |\n| --- | --- | --- |");
            for d in &a.data {
                let _ =
                    writeln!(out, "| `{}` | `{}` | {} |", d.field, d.category, retention(d.retention_days));
            }
            if a.recipients.is_empty() {
                let _ = writeln!(out, "\nRecipients: none.\n");
            } else {
                let _ = writeln!(out, "\n| Recipient | Who | Receives (mask) |\n| --- | --- | --- |");
                for r in &a.recipients {
                    let fields: Vec<String> =
                        r.fields.iter().map(|f| format!("`{}` ({})", f.field, f.mask)).collect();
                    let _ = writeln!(
                        out,
                        "| `{}` | {} | {} |",
                        r.recipient,
                        cell(&r.description),
                        fields.join(", ")
                    );
                }
                out.push('\n');
            }
        }
        let _ = writeln!(out, "## Technical and organisational security measures (Art. 30(1)(g))\n");
        for m in &self.security_measures {
            let _ = writeln!(out, "- {m}");
        }
        out
    }
}

/// Free text as one Markdown table cell: a `|` would end the cell, a newline the row.
fn cell(text: &str) -> String {
    text.replace('|', "\\|").replace(['\r', '\n'], " ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shipped() -> PolicySet {
        PolicySet::load(&std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("policies")).unwrap()
    }

    /// The golden files are reviewed by eye; `UPDATE_GOLDEN=1 cargo test` rewrites them after a
    /// deliberate change of the shipped policies or of the rendering.
    #[test]
    fn the_record_of_the_shipped_policies_matches_the_golden_files() {
        let record = ProcessingRecord::of(&shipped());
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden");
        let markdown = record.to_markdown();
        let json = serde_json::to_string_pretty(&record).unwrap() + "\n";
        if std::env::var_os("UPDATE_GOLDEN").is_some() {
            std::fs::write(dir.join("art30-record.md"), &markdown).unwrap();
            std::fs::write(dir.join("art30-record.json"), &json).unwrap();
        }
        assert_eq!(markdown, std::fs::read_to_string(dir.join("art30-record.md")).unwrap());
        assert_eq!(json, std::fs::read_to_string(dir.join("art30-record.json")).unwrap());
    }

    #[test]
    fn free_text_cannot_break_a_table_cell() {
        assert_eq!(cell("a | b\nc"), "a \\| b c");
    }

    #[test]
    fn each_purpose_lists_its_fields_recipients_and_basis() {
        let record = ProcessingRecord::of(&shipped());
        let marketing = record.activities.iter().find(|a| a.purpose == "marketing").unwrap();
        assert_eq!(marketing.legal_basis_article, "Art. 6(1)(a)");
        assert_eq!(marketing.notice.as_deref(), Some("marketing-v2"));
        assert!(marketing.objection_possible);
        let fields: Vec<&str> = marketing.data.iter().map(|d| d.field.as_str()).collect();
        assert_eq!(fields, ["email", "name"]);
        assert_eq!(marketing.recipients.len(), 1);
        assert_eq!(marketing.recipients[0].recipient, "letterbox-newsletter");
        let support = record.activities.iter().find(|a| a.purpose == "customer_support").unwrap();
        assert!(support.recipients.is_empty());
        let birth = support.data.iter().find(|d| d.field == "birth_date").unwrap();
        assert_eq!(birth.retention_days, Some(1095));
    }
}
