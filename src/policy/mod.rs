//! The policy set: purposes, fields and recipients declared in `policies/*.toml` (DESIGN §2–3).
//!
//! This module owns the validated, merged policy model and the one place disclosure decisions are
//! made ([`PolicySet::decide_disclosure`], [`PolicySet::decide_use`]). A [`PolicySet`] only exists
//! once every file has been parsed and every cross-reference checked, so the rest of the crate never
//! sees a half-valid policy. It must never see or return a customer's field values: decisions are
//! made over names and the subject's consent state alone.
//!
//! - [`load`] reads and validates the files;
//! - [`decision`] holds the disclosure rule, deny by default;
//! - [`mask`] holds masks and applies them to values;
//! - [`explain`](mod@explain) renders a decision for a privacy officer;
//! - [`record`] renders the Art. 30 record of processing activities.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::domain::field_value::FieldType;

pub mod decision;
pub mod explain;
pub mod load;
pub mod mask;
pub mod record;

pub use decision::{ConsentStatus, FieldDecision, Reason, Subject};
pub use explain::explain;
pub use mask::Mask;
pub use record::ProcessingRecord;

/// The reserved name of the field that holds a customer's payment methods.
pub const PAYMENT_METHODS: &str = "payment_methods";

/// The category `payment_methods` gets when its declaration names none.
pub const PAYMENT_METHODS_CATEGORY: &str = "user.financial.credit_card";

/// A merged, validated set of policies.
///
/// Invariant: every name a field, grant or mask refers to is declared here, every mask fits its
/// field, and no name is declared twice. [`PolicySet::load`] and [`PolicySet::from_sources`] are
/// the only ways to build one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicySet {
    purposes: BTreeMap<String, Purpose>,
    fields: BTreeMap<String, FieldPolicy>,
    recipients: BTreeMap<String, Recipient>,
    /// File names the set was merged from, in merge order.
    files: Vec<String>,
    /// Non-fatal findings, each prefixed with the file and key it concerns.
    warnings: Vec<String>,
}

impl PolicySet {
    /// Loads every `*.toml` file directly in `dir` (not recursive), in file-name order.
    ///
    /// Files whose name starts with `.` (editor swap and lock files) are skipped. A directory
    /// without policy files is an error.
    pub fn load(dir: &Path) -> Result<PolicySet, PolicyError> {
        load::load_dir(dir)
    }

    /// Builds a policy set from `(file name, TOML text)` pairs, merged in the given order.
    ///
    /// Every problem in every file is collected before failing; see [`PolicyError::Invalid`].
    pub fn from_sources(sources: &[(String, String)]) -> Result<PolicySet, PolicyError> {
        load::from_sources(sources)
    }

    /// The purpose declared under this name.
    pub fn purpose(&self, name: &str) -> Option<&Purpose> {
        self.purposes.get(name)
    }

    /// The field declared under this name.
    pub fn field(&self, name: &str) -> Option<&FieldPolicy> {
        self.fields.get(name)
    }

    /// The recipient declared under this name.
    pub fn recipient(&self, name: &str) -> Option<&Recipient> {
        self.recipients.get(name)
    }

    /// All purposes, by name.
    pub fn purposes(&self) -> impl Iterator<Item = &Purpose> {
        self.purposes.values()
    }

    /// All fields, by name.
    pub fn fields(&self) -> impl Iterator<Item = &FieldPolicy> {
        self.fields.values()
    }

    /// All recipients, by name.
    pub fn recipients(&self) -> impl Iterator<Item = &Recipient> {
        self.recipients.values()
    }

    /// The names of the files this set was merged from, in merge order.
    pub fn files(&self) -> &[String] {
        &self.files
    }

    /// A one-line summary, e.g. `"6 purposes, 7 fields, 4 recipients (3 files)"`.
    pub fn summary(&self) -> String {
        fn count(n: usize, one: &str, many: &str) -> String {
            format!("{n} {}", if n == 1 { one } else { many })
        }
        format!(
            "{}, {}, {} ({})",
            count(self.purposes.len(), "purpose", "purposes"),
            count(self.fields.len(), "field", "fields"),
            count(self.recipients.len(), "recipient", "recipients"),
            count(self.files.len(), "file", "files"),
        )
    }

    /// Non-fatal findings, e.g. a grant listing a field whose purposes don't include the grant's
    /// purpose (rule 2 would always deny it). Each starts with the file and key it concerns.
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }
}

/// Why data is used, with its GDPR Art. 6 legal basis.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Purpose {
    /// The purpose's name, e.g. `order_fulfillment`.
    pub name: String,
    /// The one legal basis the purpose rests on.
    pub basis: LegalBasis,
    /// What the purpose is for, in words; empty when the file gives none.
    pub description: String,
    /// The notice version a consent must name; only checked when the basis is consent.
    pub notice: Option<String>,
    /// Direct marketing: the customer may always object (Art. 21(2)).
    pub direct_marketing: bool,
}

impl Purpose {
    /// Whether a customer may object to this purpose (Art. 21): its basis is
    /// `legitimate_interests` or `public_task`, or it is direct marketing.
    pub fn objectable(&self) -> bool {
        self.direct_marketing
            || matches!(self.basis, LegalBasis::LegitimateInterests | LegalBasis::PublicTask)
    }
}

/// A GDPR Art. 6(1) legal basis.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LegalBasis {
    /// Art. 6(1)(a): the customer consented.
    Consent,
    /// Art. 6(1)(b): needed to perform a contract with the customer.
    Contract,
    /// Art. 6(1)(c): needed to comply with a legal obligation.
    LegalObligation,
    /// Art. 6(1)(d): needed to protect someone's vital interests.
    VitalInterests,
    /// Art. 6(1)(e): a task in the public interest or official authority.
    PublicTask,
    /// Art. 6(1)(f): the merchant's or a third party's legitimate interests.
    LegitimateInterests,
}

impl LegalBasis {
    /// Every legal basis, in Art. 6(1) order.
    pub const ALL: [LegalBasis; 6] = [
        LegalBasis::Consent,
        LegalBasis::Contract,
        LegalBasis::LegalObligation,
        LegalBasis::VitalInterests,
        LegalBasis::PublicTask,
        LegalBasis::LegitimateInterests,
    ];

    /// The name used in policy files (`"consent"`, `"legal_obligation"` …).
    pub fn as_str(&self) -> &'static str {
        match self {
            LegalBasis::Consent => "consent",
            LegalBasis::Contract => "contract",
            LegalBasis::LegalObligation => "legal_obligation",
            LegalBasis::VitalInterests => "vital_interests",
            LegalBasis::PublicTask => "public_task",
            LegalBasis::LegitimateInterests => "legitimate_interests",
        }
    }

    /// The basis with this policy-file name, if there is one.
    pub fn from_name(name: &str) -> Option<LegalBasis> {
        LegalBasis::ALL.into_iter().find(|b| b.as_str() == name)
    }
}

impl fmt::Display for LegalBasis {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A declared field: what it holds, what it may serve, how it is indexed, masked and kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldPolicy {
    /// The field's name, e.g. `email`.
    pub name: String,
    /// Its data category as a fideslang key, e.g. `user.contact.email`.
    pub category: String,
    /// What values it holds.
    pub kind: FieldKind,
    /// The purposes it may serve (rule 2); never empty.
    pub purposes: BTreeSet<String>,
    /// Exact-match lookup through a keyed blind index.
    pub index: bool,
    /// At most one customer may hold a given value; implies `index`.
    pub unique: bool,
    /// The mask a disclosure applies when the grant names none.
    pub mask: Mask,
    /// Days after the field's last write that it may still be used; `None` keeps it.
    pub retention_days: Option<u32>,
}

/// What a field holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FieldKind {
    /// A value of a declared type, validated on write.
    Value(FieldType),
    /// The reserved `payment_methods` field: cards and provider tokens.
    PaymentMethods,
}

impl FieldKind {
    /// The name shown to people: the field type's name, or `payment_methods`.
    pub fn as_str(&self) -> &'static str {
        match self {
            FieldKind::Value(ty) => ty.as_str(),
            FieldKind::PaymentMethods => PAYMENT_METHODS,
        }
    }
}

/// A third party that may receive data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recipient {
    /// The recipient's name, e.g. `acme-shipping`.
    pub name: String,
    /// Who they are, in words; empty when the file gives none.
    pub description: String,
    /// At most one grant per purpose.
    pub grants: Vec<Grant>,
}

impl Recipient {
    /// The grant for this purpose, if the recipient has one.
    pub fn grant_for(&self, purpose: &str) -> Option<&Grant> {
        self.grants.iter().find(|g| g.purpose == purpose)
    }
}

/// For one purpose, which fields a recipient may receive and how each is masked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// The purpose the grant serves.
    pub purpose: String,
    /// The fields it lists; never empty.
    pub fields: BTreeSet<String>,
    /// Masks overriding the fields' default masks; every key is in `fields`.
    pub masks: BTreeMap<String, Mask>,
}

/// Why a policy set could not be built.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// The directory or a file in it could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Io {
        /// The directory or file that failed.
        path: PathBuf,
        /// What the operating system said.
        source: std::io::Error,
    },
    /// The files were read but are not a valid policy set; every problem found is listed.
    #[error("{}", lines(.0))]
    Invalid(Vec<PolicyProblem>),
}

fn lines(problems: &[PolicyProblem]) -> String {
    problems.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n")
}

/// One problem in one policy file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyProblem {
    /// The file the problem is in (its name, or the directory for a missing-files problem).
    pub file: String,
    /// The dotted key of the offending item, e.g. `fields.email.mask`; empty for a problem with
    /// the file as a whole (a TOML syntax error, or no files at all).
    pub key: String,
    /// What is wrong, in words.
    pub message: String,
}

impl fmt::Display for PolicyProblem {
    /// `"{file}: {key}: {message}"`, or `"{file}: {message}"` when there is no key.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.key.is_empty() {
            write!(f, "{}: {}", self.file, self.message)
        } else {
            write!(f, "{}: {}: {}", self.file, self.key, self.message)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn purpose(basis: LegalBasis, direct_marketing: bool) -> Purpose {
        Purpose { name: "p".into(), basis, description: String::new(), notice: None, direct_marketing }
    }

    #[test]
    fn objection_is_possible_for_legitimate_interests_public_task_and_direct_marketing() {
        for basis in LegalBasis::ALL {
            let expected = matches!(basis, LegalBasis::LegitimateInterests | LegalBasis::PublicTask);
            assert_eq!(purpose(basis, false).objectable(), expected, "{basis}");
            assert!(purpose(basis, true).objectable(), "{basis} direct marketing");
        }
    }

    #[test]
    fn legal_basis_names_round_trip_through_serde_and_from_name() {
        for basis in LegalBasis::ALL {
            assert_eq!(LegalBasis::from_name(basis.as_str()), Some(basis));
            let json = serde_json::to_string(&basis).unwrap();
            assert_eq!(json, format!("\"{basis}\""));
            assert_eq!(serde_json::from_str::<LegalBasis>(&json).unwrap(), basis);
        }
        assert_eq!(LegalBasis::from_name("Consent"), None);
    }

    #[test]
    fn invalid_error_lists_every_problem_on_its_own_line() {
        let err = PolicyError::Invalid(vec![
            PolicyProblem {
                file: "a.toml".into(),
                key: "fields.email.mask".into(),
                message: "unknown mask \"foo\"".into(),
            },
            PolicyProblem {
                file: "b.toml".into(),
                key: String::new(),
                message: "line 1, column 2: bad".into(),
            },
        ]);
        assert_eq!(
            err.to_string(),
            "a.toml: fields.email.mask: unknown mask \"foo\"\nb.toml: line 1, column 2: bad"
        );
    }

    #[test]
    fn summary_counts_with_singular_and_plural() {
        let set = PolicySet::from_sources(&[(
            "one.toml".into(),
            "[purposes.p]\nbasis = \"contract\"\n[fields.f]\ncategory = \"user.name\"\n\
             type = \"string\"\npurposes = [\"p\"]\n"
                .into(),
        )])
        .unwrap();
        assert_eq!(set.summary(), "1 purpose, 1 field, 0 recipients (1 file)");
        assert_eq!(set.files(), ["one.toml"]);
    }
}
