//! Reading, parsing, merging and validating policy files (DESIGN §3).
//!
//! This module owns the way from TOML text to a [`PolicySet`]. It works in two passes: parse
//! every file into raw declarations (serde with `deny_unknown_fields` at every level), then check
//! each declaration, including its references to names declared in any file. It collects every
//! problem it finds, each naming the file and the dotted key, and builds a [`PolicySet`] only
//! when there are none. It must never panic, whatever the files contain.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::Path;

use serde::Deserialize;

use crate::domain::field_value::FieldType;
use crate::policy::{
    FieldKind, FieldPolicy, Grant, LegalBasis, Mask, PAYMENT_METHODS, PAYMENT_METHODS_CATEGORY, PolicyError,
    PolicyProblem, PolicySet, Purpose, Recipient,
};

/// The pattern every purpose, field and recipient name must match, for messages.
pub const NAME_PATTERN: &str = "^[a-z][a-z0-9_-]{0,63}$";

/// Whether `name` is a valid purpose, field or recipient name: `^[a-z][a-z0-9_-]{0,63}$`.
pub fn is_valid_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    bytes.next().is_some_and(|b| b.is_ascii_lowercase())
        && name.len() <= 64
        && bytes.all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

/// Whether `category` is a dotted, lower-case data category key such as `user.contact.email`:
/// non-empty segments of `a-z`, `0-9` and `_`, separated by dots.
pub fn is_valid_category(category: &str) -> bool {
    category.split('.').all(|segment| {
        !segment.is_empty()
            && segment.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
    })
}

/// Reads every `*.toml` file directly in `dir`, sorted by file name, and merges them.
pub(super) fn load_dir(dir: &Path) -> Result<PolicySet, PolicyError> {
    let io_error = |path: &Path| {
        let path = path.to_path_buf();
        move |source| PolicyError::Io { path, source }
    };
    let mut paths = Vec::new();
    for entry in fs::read_dir(dir).map_err(io_error(dir))? {
        let entry = entry.map_err(io_error(dir))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let path = entry.path();
        if name.starts_with('.') || path.extension().is_none_or(|ext| ext != "toml") {
            continue;
        }
        // `fs::metadata` follows symlinks, so a link to a policy file counts as a file.
        if fs::metadata(&path).map_err(io_error(&path))?.is_file() {
            paths.push((name, path));
        }
    }
    paths.sort();

    let mut loader = Loader::default();
    if paths.is_empty() {
        loader.problem(usize::MAX, dir.display().to_string(), "", "no *.toml policy files in this directory");
    }
    let mut sources = Vec::with_capacity(paths.len());
    for (name, path) in paths {
        let bytes = fs::read(&path).map_err(io_error(&path))?;
        match String::from_utf8(bytes) {
            Ok(text) => sources.push((name, text)),
            Err(_) => loader.problem(usize::MAX, name, "", "the file is not valid UTF-8"),
        }
    }
    loader.run(&sources)
}

/// Merges `(file name, TOML text)` pairs in the given order.
pub(super) fn from_sources(sources: &[(String, String)]) -> Result<PolicySet, PolicyError> {
    let mut loader = Loader::default();
    if sources.is_empty() {
        loader.problem(usize::MAX, "(policies)".into(), "", "no policy files given");
    }
    loader.run(sources)
}

// Raw declarations, exactly as written. serde checks the keys (`deny_unknown_fields`); each
// member is kept as a TOML value and converted on its own in pass 2, so a wrong type, a missing
// member and every other problem of the same entry are all reported, each under its own key.

/// One member of a raw declaration; `None` when absent.
type RawValue = Option<toml::Value>;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PurposeRaw {
    basis: RawValue,
    description: RawValue,
    notice: RawValue,
    direct_marketing: RawValue,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FieldRaw {
    category: RawValue,
    #[serde(rename = "type")]
    ty: RawValue,
    purposes: RawValue,
    index: RawValue,
    unique: RawValue,
    mask: RawValue,
    retention_days: RawValue,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RecipientRaw {
    description: RawValue,
    /// Read one grant at a time, so a problem names the grant's index.
    grants: RawValue,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct GrantRaw {
    purpose: RawValue,
    fields: RawValue,
    mask: RawValue,
}

/// A member after its TOML type was checked.
enum Member<T> {
    Absent,
    /// Of the wrong TOML type; already reported.
    Invalid,
    Present(T),
}

impl<T> Member<T> {
    fn present(self) -> Option<T> {
        match self {
            Member::Present(value) => Some(value),
            Member::Absent | Member::Invalid => None,
        }
    }
}

/// A declaration with the file it came from (an index into the sources).
struct Decl<T> {
    file: usize,
    /// The dotted key, e.g. `fields.email`.
    key: String,
    /// `None` when the declaration could not be read at all (its problem is already recorded).
    raw: Option<T>,
}

#[derive(Default)]
struct Loader {
    files: Vec<String>,
    /// Problems with the index of their file, so they can be reported in file order.
    problems: Vec<(usize, PolicyProblem)>,
    purposes: BTreeMap<String, Decl<PurposeRaw>>,
    fields: BTreeMap<String, Decl<FieldRaw>>,
    recipients: BTreeMap<String, Decl<RecipientRaw>>,
    /// The kind of every field whose kind could be read, to judge grant masks even when the
    /// field has other problems.
    kinds: BTreeMap<String, FieldKind>,
}

impl Loader {
    fn problem(&mut self, file: usize, file_name: String, key: &str, message: impl Into<String>) {
        self.problems
            .push((file, PolicyProblem { file: file_name, key: key.to_owned(), message: message.into() }));
    }

    /// Records a problem in the source file with index `file`.
    fn report(&mut self, file: usize, key: &str, message: impl Into<String>) {
        let name = self.file_name(file).to_owned();
        self.problem(file, name, key, message);
    }

    fn file_name(&self, file: usize) -> &str {
        self.files.get(file).map_or("", String::as_str)
    }

    fn run(mut self, sources: &[(String, String)]) -> Result<PolicySet, PolicyError> {
        self.files = sources.iter().map(|(name, _)| name.clone()).collect();
        for (file, (_, text)) in sources.iter().enumerate() {
            self.parse_file(file, text);
        }
        let mut warnings = Vec::new();
        let purposes = self.check_purposes(&mut warnings);
        let fields = self.check_fields();
        let recipients = self.check_recipients();

        if !self.problems.is_empty() {
            // Stable: within a file, problems keep the order they were found in.
            self.problems.sort_by_key(|(file, _)| *file);
            return Err(PolicyError::Invalid(self.problems.into_iter().map(|(_, p)| p).collect()));
        }
        let mut set = PolicySet { purposes, fields, recipients, files: self.files.clone(), warnings };
        set.warnings.extend(self.find_unused(&set));
        Ok(set)
    }

    // Pass 1: parse one file into raw declarations.

    fn parse_file(&mut self, file: usize, text: &str) {
        let table = match toml::from_str::<toml::Table>(text) {
            Ok(table) => table,
            Err(err) => {
                let mut message = err.message().to_owned();
                if let Some(span) = err.span() {
                    // toml points a duplicate at the repeated key; name it, as the message
                    // does not.
                    if message == "duplicate key"
                        && let Some(key) = text.get(span.clone()).filter(|k| !k.contains('\n'))
                    {
                        message = format!("{key} is declared twice in this file");
                    }
                    let (line, column) = position(text, span.start);
                    message = format!("line {line}, column {column}: {message}");
                }
                self.report(file, "", message);
                return;
            }
        };
        for (section, value) in table {
            let toml::Value::Table(entries) = value else {
                let message = match section.as_str() {
                    "purposes" | "fields" | "recipients" => {
                        format!("must be a table of {section}")
                    }
                    _ => unknown_top_level(&section),
                };
                self.report(file, &key_part(&section), message);
                continue;
            };
            match section.as_str() {
                "purposes" => self.declare(file, "purposes", entries, |l| &mut l.purposes),
                "fields" => self.declare(file, "fields", entries, |l| &mut l.fields),
                "recipients" => self.declare(file, "recipients", entries, |l| &mut l.recipients),
                _ => self.report(file, &key_part(&section), unknown_top_level(&section)),
            }
        }
    }

    /// Records each entry of a `purposes`, `fields` or `recipients` table as a declaration,
    /// reporting bad names, names declared twice and entries serde cannot read.
    fn declare<T: for<'de> Deserialize<'de>>(
        &mut self,
        file: usize,
        section: &str,
        entries: toml::Table,
        decls: fn(&mut Loader) -> &mut BTreeMap<String, Decl<T>>,
    ) {
        for (name, value) in entries {
            let key = format!("{section}.{}", key_part(&name));
            if !is_valid_name(&name) {
                self.report(file, &key, format!("name must match {NAME_PATTERN}"));
            }
            if let Some(first) = decls(self).get(&name).map(|d| d.file) {
                // Within one file TOML itself rejects a repeated key, so `first` is another
                // file; say so either way.
                let message = if first == file {
                    format!("\"{name}\" is declared twice in {}", self.file_name(file))
                } else {
                    format!(
                        "\"{name}\" is declared twice: first in {}, again in {}",
                        self.file_name(first),
                        self.file_name(file)
                    )
                };
                self.report(file, &key, message);
                continue;
            }
            let raw = self.read_entry(file, &key, value);
            decls(self).insert(name, Decl { file, key, raw });
        }
    }

    /// Deserializes one table entry, reporting a non-table or a serde error under `key`.
    ///
    /// Members are loose TOML values, so the only serde error left is an unknown key: it is
    /// reported and dropped, and the rest read again, so that every unknown key and every
    /// problem with the known ones is reported.
    fn read_entry<T: for<'de> Deserialize<'de>>(
        &mut self,
        file: usize,
        key: &str,
        value: toml::Value,
    ) -> Option<T> {
        let toml::Value::Table(mut table) = value else {
            self.report(file, key, format!("must be a table, not {}", value.type_str()));
            return None;
        };
        loop {
            match toml::Value::Table(table.clone()).try_into::<T>() {
                Ok(raw) => return Some(raw),
                Err(err) => {
                    let (suffix, message) = describe_serde_error(&err);
                    self.report(file, &format!("{key}{suffix}"), message);
                    // Each retry removes a key, so the loop ends.
                    match unknown_key(&err) {
                        Some(unknown) if table.remove(unknown).is_some() => {}
                        _ => return None,
                    }
                }
            }
        }
    }

    /// Converts one member to its type, reporting a wrong type under `key`.
    fn member<T: for<'de> Deserialize<'de>>(
        &mut self,
        file: usize,
        key: &str,
        value: &RawValue,
    ) -> Member<T> {
        let Some(value) = value else {
            return Member::Absent;
        };
        match value.clone().try_into::<T>() {
            Ok(value) => Member::Present(value),
            Err(err) => {
                let (suffix, message) = describe_serde_error(&err);
                self.report(file, &format!("{key}{suffix}"), message);
                Member::Invalid
            }
        }
    }

    /// A list of names, each at most once; reports repeats, and an empty or missing list with
    /// `empty_message`. A list of the wrong type is reported by [`Loader::member`] only.
    fn name_list(
        &mut self,
        file: usize,
        key: &str,
        value: &RawValue,
        what: &str,
        empty_message: &str,
    ) -> BTreeSet<String> {
        let listed = self.member::<Vec<String>>(file, key, value);
        let invalid = matches!(listed, Member::Invalid);
        let mut names = BTreeSet::new();
        for name in listed.present().into_iter().flatten() {
            if names.contains(&name) {
                self.report(file, key, format!("{what} \"{name}\" is listed twice"));
            }
            names.insert(name);
        }
        if names.is_empty() && !invalid {
            self.report(file, key, empty_message);
        }
        names
    }

    // Pass 2: check each declaration, and its references to names declared in any file.

    fn check_purposes(&mut self, warnings: &mut Vec<String>) -> BTreeMap<String, Purpose> {
        let mut checked = BTreeMap::new();
        let decls = std::mem::take(&mut self.purposes);
        for (name, decl) in &decls {
            let Some(raw) = &decl.raw else { continue };
            let file = decl.file;
            let at = |member: &str| format!("{}.{member}", decl.key);

            let basis = match self.member::<String>(file, &at("basis"), &raw.basis) {
                Member::Invalid => None,
                Member::Absent => {
                    let message = format!("missing required key; expected one of {}", basis_names());
                    self.report(file, &at("basis"), message);
                    None
                }
                Member::Present(text) => {
                    let basis = LegalBasis::from_name(&text);
                    if basis.is_none() {
                        let message =
                            format!("unknown legal basis \"{text}\"; expected one of {}", basis_names());
                        self.report(file, &at("basis"), message);
                    }
                    basis
                }
            };
            let description = self.member::<String>(file, &at("description"), &raw.description);
            let direct_marketing = self.member::<bool>(file, &at("direct_marketing"), &raw.direct_marketing);
            let notice = self.member::<String>(file, &at("notice"), &raw.notice).present();
            if let Some(notice) = &notice {
                if notice.trim().is_empty() {
                    self.report(file, &at("notice"), "a notice must be a non-empty string");
                } else if basis.is_some_and(|b| b != LegalBasis::Consent) {
                    warnings.push(format!(
                        "{}: {}: only consent-based purposes check a notice; this one is ignored",
                        self.file_name(file),
                        at("notice")
                    ));
                }
            }
            if let Some(basis) = basis {
                let purpose = Purpose {
                    name: name.clone(),
                    basis,
                    description: description.present().unwrap_or_default(),
                    notice,
                    direct_marketing: direct_marketing.present().unwrap_or(false),
                };
                checked.insert(name.clone(), purpose);
            }
        }
        self.purposes = decls;
        checked
    }

    fn check_fields(&mut self) -> BTreeMap<String, FieldPolicy> {
        let mut checked = BTreeMap::new();
        let decls = std::mem::take(&mut self.fields);
        for (name, decl) in &decls {
            let Some(raw) = &decl.raw else { continue };
            if let Some(field) = self.check_field(name, decl.file, &decl.key, raw) {
                checked.insert(name.clone(), field);
            }
        }
        self.fields = decls;
        checked
    }

    fn check_field(&mut self, name: &str, file: usize, key: &str, raw: &FieldRaw) -> Option<FieldPolicy> {
        let before = self.problems.len();
        let at = |member: &str| format!("{key}.{member}");
        let payment_methods = name == PAYMENT_METHODS;

        let kind = if payment_methods {
            if raw.ty.is_some() {
                self.report(file, &at("type"), "payment_methods takes no type");
            }
            Some(FieldKind::PaymentMethods)
        } else {
            match self.member::<String>(file, &at("type"), &raw.ty) {
                Member::Invalid => None,
                Member::Absent => {
                    let message = format!("missing required key; expected one of {}", type_names());
                    self.report(file, &at("type"), message);
                    None
                }
                Member::Present(text) => {
                    let ty = FieldType::from_name(&text);
                    if ty.is_none() {
                        let message = format!("unknown type \"{text}\"; expected one of {}", type_names());
                        self.report(file, &at("type"), message);
                    }
                    ty.map(FieldKind::Value)
                }
            }
        };
        if let Some(kind) = kind {
            self.kinds.insert(name.to_owned(), kind);
        }

        let category = match self.member::<String>(file, &at("category"), &raw.category) {
            Member::Invalid => None,
            Member::Present(category) if is_valid_category(&category) => Some(category),
            Member::Present(_) => {
                self.report(
                    file,
                    &at("category"),
                    "a category must be a dotted lower-case key such as \"user.contact.email\"",
                );
                None
            }
            Member::Absent if payment_methods => Some(PAYMENT_METHODS_CATEGORY.to_owned()),
            Member::Absent => {
                self.report(
                    file,
                    &at("category"),
                    "missing required key; give a data category such as \"user.contact.email\"",
                );
                None
            }
        };

        let purposes = self.name_list(
            file,
            &at("purposes"),
            &raw.purposes,
            "purpose",
            "a field must serve at least one purpose",
        );
        for purpose in &purposes {
            if !self.purposes.contains_key(purpose) {
                let message = format!("undeclared purpose \"{purpose}\"");
                self.report(file, &at("purposes"), message);
            }
        }

        let index = self.member::<bool>(file, &at("index"), &raw.index);
        let index = index.present().unwrap_or(false);
        let unique = self.member::<bool>(file, &at("unique"), &raw.unique);
        let unique = unique.present().unwrap_or(false);
        if payment_methods {
            if index {
                self.report(file, &at("index"), "payment_methods cannot be indexed");
            }
            if unique {
                self.report(file, &at("unique"), "payment_methods cannot be unique");
            }
        } else {
            if index && kind == Some(FieldKind::Value(FieldType::Address)) {
                self.report(file, &at("index"), "an address field cannot be indexed");
            }
            if unique && !index {
                self.report(file, &at("unique"), "unique = true needs index = true");
            }
        }

        let mask = self.member::<String>(file, &at("mask"), &raw.mask).present();
        let mask = match mask {
            None => Mask::None,
            Some(text) => match Mask::from_name(&text) {
                None => {
                    let message = format!("unknown mask \"{text}\"; expected one of {}", mask_names());
                    self.report(file, &at("mask"), message);
                    Mask::None
                }
                Some(mask) => {
                    if let Some(kind) = kind.filter(|k| !mask.fits_kind(k)) {
                        self.report(file, &at("mask"), misfit(mask, &kind));
                    }
                    mask
                }
            },
        };

        let retention_days = self.member::<i64>(file, &at("retention_days"), &raw.retention_days);
        let retention_days = match retention_days.present() {
            None => None,
            Some(days) => match u32::try_from(days) {
                Ok(days) if days >= 1 => Some(days),
                _ => {
                    let message = format!("must be a whole number of days from 1 to {}", u32::MAX);
                    self.report(file, &at("retention_days"), message);
                    None
                }
            },
        };

        if self.problems.len() != before {
            return None;
        }
        Some(FieldPolicy {
            name: name.to_owned(),
            category: category?,
            kind: kind?,
            purposes,
            index,
            unique,
            mask,
            retention_days,
        })
    }

    fn check_recipients(&mut self) -> BTreeMap<String, Recipient> {
        let mut checked = BTreeMap::new();
        let decls = std::mem::take(&mut self.recipients);
        for (name, decl) in &decls {
            let Some(raw) = &decl.raw else { continue };
            let (file, key) = (decl.file, decl.key.as_str());
            let before = self.problems.len();
            let description = self.member::<String>(file, &format!("{key}.description"), &raw.description);
            let listed = self.member::<Vec<toml::Value>>(file, &format!("{key}.grants"), &raw.grants);
            let mut grants = Vec::new();
            // The first grant seen for each purpose, to report a second one.
            let mut first_grant: BTreeMap<String, usize> = BTreeMap::new();
            for (i, value) in listed.present().into_iter().flatten().enumerate() {
                let grant_key = format!("{key}.grants[{i}]");
                let Some(raw_grant) = self.read_entry::<GrantRaw>(file, &grant_key, value) else {
                    continue;
                };
                let Some(grant) = self.check_grant(file, &grant_key, &raw_grant) else {
                    continue;
                };
                if let Some(first) = first_grant.get(&grant.purpose) {
                    let message = format!(
                        "purpose \"{}\" already has a grant ({key}.grants[{first}]); a recipient \
                         has at most one grant per purpose",
                        grant.purpose
                    );
                    self.report(file, &format!("{grant_key}.purpose"), message);
                    continue;
                }
                first_grant.insert(grant.purpose.clone(), i);
                grants.push(grant);
            }
            if self.problems.len() == before {
                let recipient = Recipient {
                    name: name.clone(),
                    description: description.present().unwrap_or_default(),
                    grants,
                };
                checked.insert(name.clone(), recipient);
            }
        }
        self.recipients = decls;
        checked
    }

    /// Checks one grant and the purpose, fields and masks it refers to.
    fn check_grant(&mut self, file: usize, key: &str, raw: &GrantRaw) -> Option<Grant> {
        let before = self.problems.len();
        let at = |member: &str| format!("{key}.{member}");
        let purpose = match self.member::<String>(file, &at("purpose"), &raw.purpose) {
            Member::Present(purpose) => {
                if !self.purposes.contains_key(&purpose) {
                    let message = format!("undeclared purpose \"{purpose}\"");
                    self.report(file, &at("purpose"), message);
                }
                purpose
            }
            Member::Invalid => String::new(),
            Member::Absent => {
                self.report(file, &at("purpose"), "missing required key");
                String::new()
            }
        };
        let fields =
            self.name_list(file, &at("fields"), &raw.fields, "field", "a grant must list at least one field");
        for field in &fields {
            if !self.fields.contains_key(field) {
                let message = format!("undeclared field \"{field}\"");
                self.report(file, &at("fields"), message);
            }
        }
        let listed = self.member::<BTreeMap<String, String>>(file, &at("mask"), &raw.mask);
        let mut masks = BTreeMap::new();
        for (field, text) in listed.present().into_iter().flatten() {
            let mask_key = format!("{key}.mask.{}", key_part(&field));
            let Some(mask) = Mask::from_name(&text) else {
                let message = format!("unknown mask \"{text}\"; expected one of {}", mask_names());
                self.report(file, &mask_key, message);
                continue;
            };
            if !fields.contains(&field) {
                let message = format!("a mask for field \"{field}\", which this grant does not list");
                self.report(file, &mask_key, message);
                continue;
            }
            // A field whose kind could not be read has been reported already.
            if let Some(kind) = self.kinds.get(&field).filter(|k| !mask.fits_kind(k)) {
                let message = misfit(mask, kind);
                self.report(file, &mask_key, message);
            }
            masks.insert(field, mask);
        }
        (self.problems.len() == before).then_some(Grant { purpose, fields, masks })
    }

    /// Findings that make a valid set suspicious: grants that rule 2 always denies, and purposes
    /// no field serves.
    fn find_unused(&self, set: &PolicySet) -> Vec<String> {
        let file_of = |file: usize| self.files.get(file).map_or("", String::as_str);
        let mut warnings = Vec::new();
        for recipient in set.recipients() {
            let Some(decl) = self.recipients.get(&recipient.name) else {
                continue;
            };
            for (i, grant) in recipient.grants.iter().enumerate() {
                for field in &grant.fields {
                    if set.field(field).is_some_and(|f| !f.purposes.contains(&grant.purpose)) {
                        warnings.push(format!(
                            "{}: {}.grants[{i}].fields: field \"{field}\" does not serve purpose \
                             \"{}\", so rule 2 always denies it",
                            file_of(decl.file),
                            decl.key,
                            grant.purpose
                        ));
                    }
                }
            }
        }
        for purpose in set.purposes() {
            if !set.fields().any(|f| f.purposes.contains(&purpose.name))
                && let Some(decl) = self.purposes.get(&purpose.name)
            {
                warnings.push(format!("{}: {}: no field serves this purpose", file_of(decl.file), decl.key));
            }
        }
        warnings
    }
}

/// 1-based line and column (in characters) of a byte offset.
fn position(text: &str, offset: usize) -> (usize, usize) {
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before.get(line_start..).map_or(0, |s| s.chars().count()) + 1;
    (line, column)
}

/// Splits a serde error from reading a table entry into the dotted key suffix it concerns
/// (e.g. `.index` or `.mask.phone`) and a message that names the offending key.
fn describe_serde_error(err: &toml::de::Error) -> (String, String) {
    let mut suffix = String::new();
    // Without source text, toml renders the path inside the value as a last line `in `a.b``.
    let rendered = err.to_string();
    if let Some(path) = rendered
        .trim_end()
        .rsplit_once('\n')
        .and_then(|(_, last)| last.strip_prefix("in `")?.strip_suffix('`'))
    {
        suffix.push('.');
        suffix.push_str(path);
    }
    let message = err.message();
    if let Some(unknown) = unknown_key(err) {
        suffix.push('.');
        suffix.push_str(&key_part(unknown));
        let expected =
            message.split_once(", expected").map_or(String::new(), |(_, rest)| format!("; expected{rest}"));
        return (suffix, format!("unknown key `{unknown}`{expected}"));
    }
    (suffix, message.to_owned())
}

/// The key serde reported as unknown, if that is what the error is about.
fn unknown_key(err: &toml::de::Error) -> Option<&str> {
    let (unknown, _) = err.message().strip_prefix("unknown field `")?.split_once('`')?;
    Some(unknown)
}

/// A name as it appears in a dotted key: bare when TOML allows it bare, else quoted.
fn key_part(name: &str) -> String {
    let bare = !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if bare { name.to_owned() } else { format!("{name:?}") }
}

fn unknown_top_level(section: &str) -> String {
    format!("unknown key `{section}`; expected one of `purposes`, `fields`, `recipients`")
}

fn misfit(mask: Mask, kind: &FieldKind) -> String {
    match kind {
        FieldKind::PaymentMethods => {
            format!("mask \"{mask}\" does not fit payment_methods; use none, redact or last4")
        }
        FieldKind::Value(ty) => format!("mask \"{mask}\" does not fit type \"{ty}\""),
    }
}

fn basis_names() -> String {
    LegalBasis::ALL.map(|b| b.as_str()).join(", ")
}

fn type_names() -> String {
    FieldType::ALL.map(|t| t.as_str()).join(", ")
}

fn mask_names() -> String {
    Mask::ALL.map(|m| m.as_str()).join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    const PURPOSES: &str = r#"
        [purposes.shipping]
        basis = "contract"
        description = "Ship orders"

        [purposes.news]
        basis = "consent"
        notice = "news-v1"
        direct_marketing = true
    "#;

    const FIELDS: &str = r#"
        [fields.email]
        category = "user.contact.email"
        type = "email"
        purposes = ["shipping", "news"]
        index = true
        unique = true
        mask = "email"

        [fields.phone]
        category = "user.contact.phone_number"
        type = "phone"
        purposes = ["shipping"]
        mask = "last4"
    "#;

    const RECIPIENTS: &str = r#"
        [recipients.carrier]
        description = "Parcel carrier"
        grants = [{ purpose = "shipping", fields = ["email", "phone"], mask = { email = "none" } }]
    "#;

    fn sources(files: &[(&str, &str)]) -> Vec<(String, String)> {
        files.iter().map(|(n, t)| (n.to_string(), t.to_string())).collect()
    }

    /// The problems, rendered one per line, for a set that must fail.
    fn problems(files: &[(&str, &str)]) -> Vec<String> {
        match PolicySet::from_sources(&sources(files)) {
            Ok(set) => panic!("expected problems, got a valid set: {}", set.summary()),
            Err(PolicyError::Invalid(problems)) => problems.iter().map(ToString::to_string).collect(),
            Err(other) => panic!("unexpected error {other}"),
        }
    }

    /// The problems of the base set plus one more file named `extra.toml`.
    fn problems_with(extra: &str) -> Vec<String> {
        problems(&[
            ("purposes.toml", PURPOSES),
            ("fields.toml", FIELDS),
            ("recipients.toml", RECIPIENTS),
            ("extra.toml", extra),
        ])
    }

    #[track_caller]
    fn assert_has(problems: &[String], expected: &str) {
        assert!(
            problems.iter().any(|p| p == expected),
            "missing problem {expected:?} in:\n{}",
            problems.join("\n")
        );
    }

    #[track_caller]
    fn assert_has_prefix(problems: &[String], prefix: &str) {
        assert!(
            problems.iter().any(|p| p.starts_with(prefix)),
            "no problem starting {prefix:?} in:\n{}",
            problems.join("\n")
        );
    }

    fn field(extra: &str) -> String {
        format!("[fields.x]\ncategory = \"user.x\"\npurposes = [\"shipping\"]\n{extra}")
    }

    #[test]
    fn the_example_policies_directory_is_valid_and_has_no_warnings() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("policies");
        let set = PolicySet::load(&dir).unwrap();
        assert_eq!(set.warnings(), [] as [String; 0]);
        assert_eq!(set.summary(), "6 purposes, 7 fields, 4 recipients (3 files)");
        let pm = set.field("payment_methods").unwrap();
        assert_eq!(pm.kind, FieldKind::PaymentMethods);
        assert_eq!(pm.category, PAYMENT_METHODS_CATEGORY);
        let marketing = set.purpose("marketing").unwrap();
        assert_eq!(marketing.notice.as_deref(), Some("marketing-v2"));
        assert!(marketing.objectable());
    }

    #[test]
    fn files_merge_into_one_set_with_declarations_split_across_them() {
        let extra = r#"
            [purposes.support]
            basis = "legitimate_interests"
            [fields.name]
            category = "user.name"
            type = "string"
            purposes = ["support", "shipping"]
            [recipients.helpdesk]
            grants = [{ purpose = "support", fields = ["name"] }]
        "#;
        let set = PolicySet::from_sources(&sources(&[
            ("purposes.toml", PURPOSES),
            ("fields.toml", FIELDS),
            ("recipients.toml", RECIPIENTS),
            ("extra.toml", extra),
        ]))
        .unwrap();
        assert_eq!(set.summary(), "3 purposes, 3 fields, 2 recipients (4 files)");
        assert_eq!(set.warnings(), [] as [String; 0]);
        let carrier = set.recipient("carrier").unwrap();
        let grant = carrier.grant_for("shipping").unwrap();
        assert_eq!(grant.masks.get("email"), Some(&Mask::None));
        assert!(carrier.grant_for("news").is_none());
        assert_eq!(set.recipient("helpdesk").unwrap().description, "");
        assert_eq!(set.field("phone").unwrap().mask, Mask::Last4);
        assert_eq!(
            set.purposes().map(|p| p.name.as_str()).collect::<Vec<_>>(),
            ["news", "shipping", "support"]
        );
    }

    #[test]
    fn a_name_declared_in_two_files_names_both_files() {
        let p = problems_with(
            "[fields.phone]\ncategory = \"user.x\"\ntype = \"string\"\npurposes = [\"shipping\"]\n",
        );
        assert_has(
            &p,
            "extra.toml: fields.phone: \"phone\" is declared twice: first in fields.toml, \
             again in extra.toml",
        );
        let p = problems_with("[purposes.news]\nbasis = \"consent\"\n[recipients.carrier]\n");
        assert_has_prefix(&p, "extra.toml: purposes.news: \"news\" is declared twice");
        assert_has_prefix(&p, "extra.toml: recipients.carrier: \"carrier\" is declared twice");
    }

    #[test]
    fn a_name_declared_twice_in_one_file_is_a_toml_error_with_its_position() {
        let p = problems(&[("a.toml", "[purposes.x]\nbasis = \"contract\"\n[purposes.x]\n")]);
        assert_eq!(p, ["a.toml: line 3, column 11: x is declared twice in this file"]);
    }

    #[test]
    fn toml_syntax_errors_give_line_column_and_message() {
        let p = problems(&[("bad.toml", "[purposes.x]\nbasis = contract\n")]);
        assert_eq!(p.len(), 1);
        assert_has_prefix(&p, "bad.toml: line 2, column 9: ");
    }

    #[test]
    fn unknown_keys_are_errors_at_every_level_and_name_the_key() {
        let p = problems_with(
            r#"
            colour = "blue"
            [purposes.x]
            basis = "contract"
            legal = true
            [recipients.r]
            grants = [{ purpose = "shipping", fields = ["email"], masks = {} }]
            "#,
        );
        assert_has_prefix(&p, "extra.toml: colour: unknown key `colour`; expected one of");
        assert_has_prefix(&p, "extra.toml: purposes.x.legal: unknown key `legal`; expected");
        assert_has_prefix(&p, "extra.toml: recipients.r.grants[0].masks: unknown key `masks`");
        let p = problems_with(&field("type = \"string\"\nmaks = \"none\""));
        assert_has_prefix(&p, "extra.toml: fields.x.maks: unknown key `maks`; expected one of");
    }

    #[test]
    fn every_problem_of_one_entry_is_reported_under_its_own_key() {
        let p = problems_with(
            r#"
            [fields.x]
            category = 7
            type = "emial"
            purposes = ["shipping", "nope"]
            index = "yes"
            colour = "red"
            size = 3
            "#,
        );
        assert_eq!(
            p,
            [
                "extra.toml: fields.x.colour: unknown key `colour`; expected one of `category`, \
                 `type`, `purposes`, `index`, `unique`, `mask`, `retention_days`",
                "extra.toml: fields.x.size: unknown key `size`; expected one of `category`, \
                 `type`, `purposes`, `index`, `unique`, `mask`, `retention_days`",
                "extra.toml: fields.x.type: unknown type \"emial\"; expected one of string, email, \
                 phone, date, address, country",
                "extra.toml: fields.x.category: invalid type: integer `7`, expected a string",
                "extra.toml: fields.x.purposes: undeclared purpose \"nope\"",
                "extra.toml: fields.x.index: invalid type: string \"yes\", expected a boolean",
            ]
        );
    }

    #[test]
    fn values_of_the_wrong_toml_type_name_their_key() {
        let p = problems_with(&field("type = \"string\"\nindex = \"yes\""));
        assert_has_prefix(&p, "extra.toml: fields.x.index: invalid type: string \"yes\"");
        let p = problems_with(
            "[recipients.r]\ngrants = [{ purpose = \"shipping\", fields = [\"email\"], mask = { email = 4 } }]",
        );
        assert_has_prefix(&p, "extra.toml: recipients.r.grants[0].mask.email: invalid type");
        let p = problems_with("purposes = 3\n[fields]\nx = 1\n[recipients.r]\ngrants = [\"a\"]");
        assert_has(&p, "extra.toml: purposes: must be a table of purposes");
        assert_has(&p, "extra.toml: fields.x: must be a table, not integer");
        assert_has(&p, "extra.toml: recipients.r.grants[0]: must be a table, not string");
    }

    #[test]
    fn unknown_masks_types_and_bases_are_errors() {
        let p = problems_with(&field("type = \"text\"\nmask = \"foo\""));
        assert_has_prefix(&p, "extra.toml: fields.x.type: unknown type \"text\"; expected one of");
        assert_has_prefix(&p, "extra.toml: fields.x.mask: unknown mask \"foo\"");
        let p = problems_with("[purposes.x]\nbasis = \"because\"\n[purposes.y]\n");
        assert_has_prefix(&p, "extra.toml: purposes.x.basis: unknown legal basis \"because\"");
        assert_has_prefix(&p, "extra.toml: purposes.y.basis: missing required key");
        let p = problems_with(
            "[recipients.r]\ngrants = [{ purpose = \"shipping\", fields = [\"phone\"], mask = { phone = \"half\" } }]",
        );
        assert_has_prefix(&p, "extra.toml: recipients.r.grants[0].mask.phone: unknown mask \"half\"");
    }

    #[test]
    fn masks_that_do_not_fit_the_field_type_are_errors() {
        let p = problems_with(&field("type = \"string\"\nmask = \"year\""));
        assert_has(&p, "extra.toml: fields.x.mask: mask \"year\" does not fit type \"string\"");
        let p = problems_with(&field("type = \"address\"\nmask = \"last4\""));
        assert_has(&p, "extra.toml: fields.x.mask: mask \"last4\" does not fit type \"address\"");
        let p = problems_with(
            "[recipients.r]\ngrants = [{ purpose = \"shipping\", fields = [\"phone\"], mask = { phone = \"email\" } }]",
        );
        assert_has(
            &p,
            "extra.toml: recipients.r.grants[0].mask.phone: mask \"email\" does not fit type \"phone\"",
        );
    }

    #[test]
    fn a_grant_mask_for_a_field_the_grant_does_not_list_is_an_error() {
        let p = problems_with(
            "[recipients.r]\ngrants = [{ purpose = \"shipping\", fields = [\"email\"], mask = { phone = \"last4\" } }]",
        );
        assert_has(
            &p,
            "extra.toml: recipients.r.grants[0].mask.phone: a mask for field \"phone\", which \
             this grant does not list",
        );
    }

    #[test]
    fn references_to_undeclared_names_are_errors() {
        let p = problems_with(
            r#"
            [fields.x]
            category = "user.x"
            type = "string"
            purposes = ["shipping", "billing"]
            [recipients.r]
            grants = [
              { purpose = "billing", fields = ["email"] },
              { purpose = "shipping", fields = ["email", "fax"] },
            ]
            "#,
        );
        assert_has(&p, "extra.toml: fields.x.purposes: undeclared purpose \"billing\"");
        assert_has(&p, "extra.toml: recipients.r.grants[0].purpose: undeclared purpose \"billing\"");
        assert_has(&p, "extra.toml: recipients.r.grants[1].fields: undeclared field \"fax\"");
    }

    #[test]
    fn index_and_unique_rules_are_enforced() {
        let p = problems_with(&field("type = \"string\"\nunique = true"));
        assert_has(&p, "extra.toml: fields.x.unique: unique = true needs index = true");
        let p = problems_with(&field("type = \"address\"\nindex = true"));
        assert_has(&p, "extra.toml: fields.x.index: an address field cannot be indexed");
    }

    #[test]
    fn payment_methods_has_its_own_rules() {
        let p = problems_with(
            "[fields.payment_methods]\ntype = \"string\"\npurposes = [\"shipping\"]\nmask = \"email\"\nindex = true\nunique = true\n",
        );
        assert_has(&p, "extra.toml: fields.payment_methods.type: payment_methods takes no type");
        assert_has(
            &p,
            "extra.toml: fields.payment_methods.mask: mask \"email\" does not fit \
             payment_methods; use none, redact or last4",
        );
        assert_has(&p, "extra.toml: fields.payment_methods.index: payment_methods cannot be indexed");
        assert_has(&p, "extra.toml: fields.payment_methods.unique: payment_methods cannot be unique");
        let p = problems_with(
            "[fields.payment_methods]\npurposes = [\"shipping\"]\n[recipients.r]\ngrants = [{ purpose = \"shipping\", fields = [\"payment_methods\"], mask = { payment_methods = \"year\" } }]",
        );
        assert_eq!(
            p,
            ["extra.toml: recipients.r.grants[0].mask.payment_methods: mask \"year\" does not \
              fit payment_methods; use none, redact or last4"]
        );
    }

    #[test]
    fn a_field_other_than_payment_methods_needs_a_type_and_a_category() {
        let p = problems_with("[fields.x]\npurposes = [\"shipping\"]\n");
        assert_has_prefix(&p, "extra.toml: fields.x.type: missing required key; expected one of");
        assert_has_prefix(&p, "extra.toml: fields.x.category: missing required key");
        let p = problems_with(&field("type = \"string\"").replace("user.x", "User Data"));
        assert_has_prefix(&p, "extra.toml: fields.x.category: a category must be a dotted");
        let p = problems_with(&field("type = \"string\"").replace("user.x", "user..x"));
        assert_has_prefix(&p, "extra.toml: fields.x.category: a category must be a dotted");
    }

    #[test]
    fn names_must_match_the_name_pattern() {
        let p = problems_with("[purposes.Marketing]\nbasis = \"consent\"\n[recipients.\"a.b\"]\n");
        assert_has(&p, "extra.toml: purposes.Marketing: name must match ^[a-z][a-z0-9_-]{0,63}$");
        assert_has(&p, "extra.toml: recipients.\"a.b\": name must match ^[a-z][a-z0-9_-]{0,63}$");
        assert!(is_valid_name("a"));
        assert!(is_valid_name(&format!("a{}", "-".repeat(63))));
        assert!(!is_valid_name(&format!("a{}", "-".repeat(64))));
        for bad in ["", "1a", "_a", "-a", "aé", "a b", "A"] {
            assert!(!is_valid_name(bad), "{bad:?}");
        }
    }

    #[test]
    fn a_field_must_serve_at_least_one_purpose() {
        let p = problems_with(
            "[fields.x]\ncategory = \"user.x\"\ntype = \"string\"\npurposes = []\n[fields.y]\ncategory = \"user.y\"\ntype = \"string\"\n",
        );
        assert_has(&p, "extra.toml: fields.x.purposes: a field must serve at least one purpose");
        assert_has(&p, "extra.toml: fields.y.purposes: a field must serve at least one purpose");
    }

    #[test]
    fn notice_must_be_non_empty_and_retention_at_least_one_day() {
        let p = problems_with(&format!(
            "[purposes.x]\nbasis = \"consent\"\nnotice = \"\"\n{}",
            field("type = \"string\"\nretention_days = 0")
        ));
        assert_has(&p, "extra.toml: purposes.x.notice: a notice must be a non-empty string");
        assert_has_prefix(&p, "extra.toml: fields.x.retention_days: must be a whole number of days from 1");
        let p = problems_with(&field("type = \"string\"\nretention_days = 5000000000"));
        assert_has_prefix(&p, "extra.toml: fields.x.retention_days: must be a whole number");
    }

    #[test]
    fn a_recipient_may_not_list_the_same_purpose_in_two_grants() {
        let p = problems_with(
            "[recipients.r]\ngrants = [{ purpose = \"shipping\", fields = [\"email\"] }, { purpose = \"shipping\", fields = [\"phone\"] }]",
        );
        assert_has_prefix(
            &p,
            "extra.toml: recipients.r.grants[1].purpose: purpose \"shipping\" already has a grant \
             (recipients.r.grants[0])",
        );
    }

    #[test]
    fn grants_need_a_purpose_and_at_least_one_field_each_listed_once() {
        let p = problems_with(
            "[recipients.r]\ngrants = [{ fields = [\"email\", \"email\"] }, { purpose = \"shipping\", fields = [] }]",
        );
        assert_has(&p, "extra.toml: recipients.r.grants[0].purpose: missing required key");
        assert_has(&p, "extra.toml: recipients.r.grants[0].fields: field \"email\" is listed twice");
        assert_has(&p, "extra.toml: recipients.r.grants[1].fields: a grant must list at least one field");
    }

    #[test]
    fn every_problem_is_collected_in_file_order() {
        let p = problems(&[
            (
                "a.toml",
                "[purposes.p]\nbasis = \"contract\"\n[fields.f]\ncategory = \"user.f\"\ntype = \"date\"\npurposes = [\"p\", \"q\"]\nmask = \"email\"\n",
            ),
            (
                "b.toml",
                "[recipients.r]\ngrants = [{ purpose = \"p\", fields = [\"g\"] }]\n[purposes.p]\nbasis = \"nope\"\n",
            ),
            ("c.toml", "[[oops"),
        ]);
        assert_eq!(
            p[..4],
            [
                "a.toml: fields.f.purposes: undeclared purpose \"q\"",
                "a.toml: fields.f.mask: mask \"email\" does not fit type \"date\"",
                "b.toml: purposes.p: \"p\" is declared twice: first in a.toml, again in b.toml",
                "b.toml: recipients.r.grants[0].fields: undeclared field \"g\"",
            ]
        );
        assert_eq!(p.len(), 5, "{p:#?}");
        assert!(p[4].starts_with("c.toml: line 1, column "), "{}", p[4]);
    }

    #[test]
    fn an_empty_set_of_sources_or_an_empty_directory_is_an_error() {
        let p = problems(&[]);
        assert_eq!(p, ["(policies): no policy files given"]);

        let dir = std::env::temp_dir().join(format!("custodia-policy-empty-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("README.md"), "not a policy").unwrap();
        fs::write(dir.join(".swap.toml"), "garbage [").unwrap();
        let err = PolicySet::load(&dir).unwrap_err();
        assert!(err.to_string().ends_with(": no *.toml policy files in this directory"), "{err}");
        fs::write(dir.join("b.toml"), "[purposes.p]\nbasis = \"contract\"\n").unwrap();
        fs::write(
            dir.join("a.toml"),
            "[fields.f]\ncategory = \"user.f\"\ntype = \"string\"\npurposes = [\"p\"]\n",
        )
        .unwrap();
        let set = PolicySet::load(&dir).unwrap();
        assert_eq!(set.files(), ["a.toml", "b.toml"]);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_missing_directory_is_an_io_error_naming_it() {
        let err = PolicySet::load(Path::new("/nonexistent/custodia-policies")).unwrap_err();
        assert!(matches!(err, PolicyError::Io { .. }));
        assert!(err.to_string().contains("/nonexistent/custodia-policies"), "{err}");
    }

    #[test]
    fn warnings_flag_grants_rule_two_always_denies_and_purposes_no_field_serves() {
        let set = PolicySet::from_sources(&sources(&[
            ("purposes.toml", PURPOSES),
            ("fields.toml", FIELDS),
            (
                "extra.toml",
                "[purposes.idle]\nbasis = \"contract\"\nnotice = \"v1\"\n[recipients.r]\ngrants = [{ purpose = \"news\", fields = [\"phone\"] }]",
            ),
        ]))
        .unwrap();
        assert_eq!(
            set.warnings(),
            [
                "extra.toml: purposes.idle.notice: only consent-based purposes check a notice; \
                 this one is ignored",
                "extra.toml: recipients.r.grants[0].fields: field \"phone\" does not serve \
                 purpose \"news\", so rule 2 always denies it",
                "extra.toml: purposes.idle: no field serves this purpose",
            ]
        );
    }

    #[test]
    fn loading_never_panics_on_odd_input() {
        for text in [
            "",
            "=",
            "[a",
            "a = 1",
            "[purposes]\n",
            "[purposes.\"\"]\nbasis = \"consent\"",
            "[fields.\"\"]",
            "recipients = []",
            "[recipients.r]\ngrants = 1",
            "[recipients.r]\ngrants = [{}]",
            "[fields.f]\nretention_days = -1",
            "[fields.f]\npurposes = [1]",
            "\u{feff}[purposes.p]\nbasis = \"consent\"",
        ] {
            let _ = PolicySet::from_sources(&sources(&[("odd.toml", text)]));
        }
    }
}
