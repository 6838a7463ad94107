//! The transparency report's numbers: per calendar month (UTC, from each event's `time`), how
//! many **distinct customers** (data subjects) each kind of processing touched, folded event by
//! event in log order.
//!
//! The same fold runs in the server (incrementally, [`crate::vault`]'s transparency keeper) and
//! offline (`custodia audit report`, over an exported log), so both give the same numbers for
//! the same tree size. Counts only: no id, no value ever enters a published counter; keys are
//! declared names (recipients, purposes) and reason codes.
//!
//! Two rules keep a published cell from singling out one customer's choice:
//! - a cell counts distinct customers, not events: one customer toggling a choice five times is
//!   one, so nobody can push a cell past [`THRESHOLD`] alone and then watch for someone else's +1;
//!   an event that names no customer (a request refused before any customer was known) counts
//!   as one of its own: such events are distinct by construction, so a cell keeps a plain
//!   number of them ([`Cell::anonymous`]), never a set member per event;
//! - only **closed** months are published. The month of the newest folded event is open: its
//!   cells are sets of [`Member`]s (a keyed 128-bit digest of the customer id, never the id),
//!   and the first event of a later month closes it, folding each set into its size and dropping
//!   the sets. A month is therefore closed by the log itself (event times), identically online
//!   and offline. An event stamped earlier than the open month (requests racing a month
//!   boundary, or a clock set back) is counted in the open month: a closed month never changes.
//!   An event stamped more than [`HORIZON_DAYS`] days ahead of the server's clock when folded
//!   (a clock stepped forward) closes nothing: it is counted in the open month and its seq is
//!   kept ([`Counters::held_back`], published with the report) so the offline recount makes the
//!   same choice.
//!
//! Published counts below [`THRESHOLD`] are shown as "fewer than 5" ([`Count`]), and every
//! month publishes the same full grid of cells ([`Grid`]): an absent cell never stands for 0.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{Action, Event, Outcome};

/// Counts below this are published as "fewer than 5" (DESIGN §5).
pub const THRESHOLD: u64 = 5;

/// The text published instead of a count below [`THRESHOLD`].
pub const FEWER_THAN_THRESHOLD: &str = "fewer than 5";

/// The key used for a disclosure or choice event that names no recipient or purpose.
const NONE: &str = "(none)";

/// The month an event with a malformed time opens when no month is open yet (times are written
/// by `Timestamp::to_rfc3339`, so this only happens to a damaged log).
const MALFORMED_MONTH: &str = "0000-00";

/// Reason codes recorded on allowed choice events (see `vault::consent`): the direction of the
/// change, so the log alone tells grants from withdrawals.
pub mod change {
    /// A consent record that grants.
    pub const GRANTED: &str = "granted";
    /// A consent record that withdraws.
    pub const WITHDRAWN: &str = "withdrawn";
    /// An objection set (Art. 21).
    pub const OBJECTED: &str = "objected";
    /// An objection or restriction lifted.
    pub const LIFTED: &str = "lifted";
    /// Processing restricted (Art. 18).
    pub const RESTRICTED: &str = "restricted";
    /// A choice event from before directions were recorded.
    pub const UNRECORDED: &str = "unrecorded";
}

/// How far ahead of the server's clock (days) an event may be stamped and still close the open
/// month; a later stamp is a clock stepped forward, not the calendar moving on.
pub const HORIZON_DAYS: i64 = 31;

/// The text a [`Member`] digest is computed over: `customer:<id>`; `None` for an event naming
/// no customer (counted as one of its own, see [`Cell::anonymous`]).
pub fn member_text(event: &Event) -> Option<String> {
    event.customer_id.as_ref().map(|id| format!("customer:{id}"))
}

/// One data subject in the open month's sets: 128 bits of a keyed digest of [`member_text`]
/// (the server keys it with a key derived from its system keys; the offline recount with a
/// random key, since only distinctness matters). Never persisted: the open month is re-folded
/// from the log after a restart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Member(pub u128);

/// One cell of the open month: the customers in it, and how many events naming no customer
/// (each distinct by construction, so a number suffices; memory stays flat however many
/// anonymous refusals a month sees).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Cell {
    /// The customers in the cell.
    pub members: BTreeSet<Member>,
    /// Events in the cell that name no customer.
    pub anonymous: u64,
}

impl Cell {
    fn add(&mut self, who: Option<Member>) {
        match who {
            Some(m) => {
                self.members.insert(m);
            }
            None => self.anonymous = self.anonymous.saturating_add(1),
        }
    }

    /// The cell's count at close: distinct customers plus events naming none.
    pub fn count(&self) -> u64 {
        (self.members.len() as u64).saturating_add(self.anonymous)
    }
}

/// Every count of the report, as of the first `size` events of the log.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counters {
    /// How many events (seqs `0..size`) are folded in.
    pub size: u64,
    /// Closed months: `YYYY-MM` → distinct customers per cell. Only these are published.
    pub months: BTreeMap<String, MonthCounts>,
    /// The month of the newest folded event, still open: who is in each cell. `None` before the
    /// first event (and right after [`Counters::resume`]).
    pub open: Option<OpenMonth>,
    /// The seq of the event that opened the open month (events before it are all in `months`).
    pub open_start: u64,
    /// Seqs of events stamped in a later month than the open one that did not close it (stamped
    /// more than [`HORIZON_DAYS`] ahead of the server's clock when folded).
    pub held_back: BTreeSet<u64>,
}

/// What of a fold is persisted: the closed months and where the open month began. The open
/// month is a function of the log from `size` on, so it is re-folded, never stored (its sets
/// can be large; the closed months are a few hundred numbers each).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Closed {
    /// Events `0..size` are all counted in `months`; the open month begins at seq `size`.
    pub size: u64,
    /// Closed months, as in [`Counters::months`].
    pub months: BTreeMap<String, MonthCounts>,
    /// As [`Counters::held_back`].
    #[serde(default)]
    pub held_back: BTreeSet<u64>,
}

/// The open month: a set of members per cell, folded into counts when the month closes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OpenMonth {
    /// `YYYY-MM` (UTC).
    pub month: String,
    /// Members per cell.
    pub cells: MonthCells<Cell>,
}

/// One month's cells, each a `T`: a set of members while the month is open, a count once it
/// closed. Nested maps (not tuple keys) so the state persists as plain JSON.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MonthCells<T> {
    /// recipient → purpose → outcome (`allowed`, `denied`, `failed`) → customers with such a
    /// disclosure decision.
    pub disclosures: BTreeMap<String, BTreeMap<String, BTreeMap<String, T>>>,
    /// reason code → customers with a denied event carrying it (any action; `field:code`
    /// counted as `code`).
    pub denials: BTreeMap<String, T>,
    /// Customers erased (allowed `customer.erase`).
    pub erasures: T,
    /// Customers with fields purged at the end of their retention (allowed `retention.purge`).
    pub retention_purges: T,
    /// purpose → `objected` / `lifted` → customers who made that change.
    pub objections: BTreeMap<String, BTreeMap<String, T>>,
    /// `restricted` / `lifted` → customers who made that change.
    pub restrictions: BTreeMap<String, T>,
    /// purpose → `granted` / `withdrawn` → customers who made that change.
    pub consents: BTreeMap<String, BTreeMap<String, T>>,
}

/// A closed month's counts: distinct customers per cell.
pub type MonthCounts = MonthCells<u64>;

impl MonthCells<Cell> {
    /// The counts of a closing month: each cell's [`Cell::count`].
    pub fn close(&self) -> MonthCounts {
        fn n(cell: &Cell) -> u64 {
            cell.count()
        }
        fn map<K: Clone + Ord>(m: &BTreeMap<K, Cell>) -> BTreeMap<K, u64> {
            m.iter().map(|(k, v)| (k.clone(), n(v))).collect()
        }
        fn map2<K: Clone + Ord>(m: &BTreeMap<K, BTreeMap<K, Cell>>) -> BTreeMap<K, BTreeMap<K, u64>> {
            m.iter().map(|(k, v)| (k.clone(), map(v))).collect()
        }
        MonthCells {
            disclosures: self.disclosures.iter().map(|(k, v)| (k.clone(), map2(v))).collect(),
            denials: map(&self.denials),
            erasures: n(&self.erasures),
            retention_purges: n(&self.retention_purges),
            objections: map2(&self.objections),
            restrictions: map(&self.restrictions),
            consents: map2(&self.consents),
        }
    }

    /// How many members all cells hold together (the open month's memory, in digests).
    pub fn members(&self) -> usize {
        let map = |m: &BTreeMap<String, Cell>| m.values().map(|c| c.members.len()).sum::<usize>();
        self.disclosures.values().flat_map(|p| p.values()).map(map).sum::<usize>()
            + map(&self.denials)
            + self.erasures.members.len()
            + self.retention_purges.members.len()
            + self.objections.values().map(map).sum::<usize>()
            + map(&self.restrictions)
            + self.consents.values().map(map).sum::<usize>()
    }
}

/// An event could not be folded; the fold is unchanged.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FoldError {
    /// The event does not continue the fold where it stands.
    #[error("event {got} cannot be folded: the counters stand at {expected} events")]
    OutOfOrder {
        /// The seq the next event must have.
        expected: u64,
        /// The seq offered.
        got: u64,
    },
    /// The event is listed as held back but would not have closed a month (a report listing
    /// it lies about the log).
    #[error("event {0} is listed as held back, but it is not stamped in a later month than the open one")]
    NotHeldBack(u64),
}

/// `YYYY-MM` of an RFC 3339 time, if it has that shape.
fn month_of(time: &str) -> Option<&str> {
    let month = time.get(..7)?;
    let b = month.as_bytes();
    let digits = |r: std::ops::Range<usize>| b[r].iter().all(u8::is_ascii_digit);
    (digits(0..4) && b[4] == b'-' && digits(5..7)).then_some(month)
}

impl Counters {
    /// A fold resumed from its persisted part: the open month is re-folded from seq
    /// `closed.size` on.
    pub fn resume(closed: Closed) -> Counters {
        Counters {
            size: closed.size,
            months: closed.months,
            open: None,
            open_start: closed.size,
            held_back: closed.held_back,
        }
    }

    /// The part of the fold that is persisted (see [`Closed`]).
    pub fn closed(&self) -> Closed {
        Closed {
            size: if self.open.is_some() { self.open_start } else { self.size },
            months: self.months.clone(),
            held_back: self.held_back.clone(),
        }
    }

    /// Adds one event; events must come in seq order, each exactly once. `member` digests
    /// [`member_text`] of the event (see [`Member`]); it must be the same function for the
    /// whole life of the open month. `horizon` (an RFC 3339 UTC time as `Timestamp` renders it,
    /// the server's clock plus [`HORIZON_DAYS`]): an event stamped in a later month than the
    /// open one but after it does not close the month and is added to
    /// [`Counters::held_back`]; `None` holds back only events already listed there (the
    /// offline recount, which takes the list from the report). Returns whether the event was
    /// newly held back (the caller warns). On error the fold is unchanged.
    pub fn fold(
        &mut self,
        event: &Event,
        member: impl Fn(&str) -> Member,
        horizon: Option<&str>,
    ) -> Result<bool, FoldError> {
        if event.seq != self.size {
            return Err(FoldError::OutOfOrder { expected: self.size, got: event.seq });
        }
        let month = month_of(&event.time);
        let later = matches!((&self.open, month), (Some(open), Some(m)) if m > open.month.as_str());
        let listed = self.held_back.contains(&event.seq);
        if listed && !later {
            return Err(FoldError::NotHeldBack(event.seq));
        }
        // Times are compared as text: both are `Timestamp::to_rfc3339` renderings (fixed width, UTC).
        let ahead = later && !listed && horizon.is_some_and(|h| event.time.as_str() > h);
        self.size += 1;
        if ahead {
            self.held_back.insert(event.seq);
        }
        if later && !listed && !ahead {
            // invariant: `later` holds only while a month is open.
            let closed = self.open.take().expect("a month is open");
            self.months.insert(closed.month, closed.cells.close());
        }
        if self.open.is_none() {
            self.open_start = event.seq;
        }
        let open = self.open.get_or_insert_with(|| OpenMonth {
            month: month.unwrap_or(MALFORMED_MONTH).to_owned(),
            cells: MonthCells::default(),
        });
        let who = member_text(event).map(|text| member(&text));
        let counts = &mut open.cells;
        let allowed = event.outcome == Outcome::Allowed;
        let purpose = || event.purpose.clone().unwrap_or_else(|| NONE.to_owned());
        let direction = |known: &[&str]| {
            event
                .reason
                .iter()
                .flatten()
                .find(|r| known.contains(&r.as_str()))
                .cloned()
                .unwrap_or_else(|| change::UNRECORDED.to_owned())
        };
        match event.action {
            Action::Disclosure => {
                let recipient = event.recipient.clone().unwrap_or_else(|| NONE.to_owned());
                counts
                    .disclosures
                    .entry(recipient)
                    .or_default()
                    .entry(purpose())
                    .or_default()
                    .entry(outcome_name(event.outcome).to_owned())
                    .or_default()
                    .add(who);
            }
            Action::CustomerErase if allowed => {
                counts.erasures.add(who);
            }
            Action::RetentionPurge if allowed => {
                counts.retention_purges.add(who);
            }
            Action::ObjectionUpdate if allowed => {
                let d = direction(&[change::OBJECTED, change::LIFTED]);
                counts.objections.entry(purpose()).or_default().entry(d).or_default().add(who);
            }
            Action::RestrictionUpdate if allowed => {
                counts
                    .restrictions
                    .entry(direction(&[change::RESTRICTED, change::LIFTED]))
                    .or_default()
                    .add(who);
            }
            // A repeated identical statement changes nothing and is recorded `unchanged`.
            Action::ConsentUpdate if allowed && !event.reason.iter().flatten().any(|r| r == "unchanged") => {
                let d = direction(&[change::GRANTED, change::WITHDRAWN]);
                counts.consents.entry(purpose()).or_default().entry(d).or_default().add(who);
            }
            _ => {}
        }
        if event.outcome == Outcome::Denied {
            // One count per code: two fields refused for the same reason are one event.
            let codes: BTreeSet<&str> =
                event.reason.iter().flatten().map(|r| r.rsplit(':').next().unwrap_or(r)).collect();
            for code in codes {
                counts.denials.entry(code.to_owned()).or_default().add(who);
            }
        }
        Ok(ahead)
    }

    /// The closed months as published: every count passed through [`Count::of`], newest month
    /// first. The open month is never among them. Every month lists the same cells: the
    /// `grid` of the policy, plus any cell some closed month counted (a name since removed from
    /// the policy, a legacy direction), each with 0 where a month has none, so a cell's
    /// presence tells nothing about a month.
    pub fn published(&self, grid: &Grid) -> Vec<PublishedMonth> {
        let mut all = grid.skeleton();
        for counts in self.months.values() {
            merge(&mut all, counts, false);
        }
        self.months
            .iter()
            .rev()
            .map(|(month, counts)| {
                let mut cells = all.clone();
                merge(&mut cells, counts, true);
                PublishedMonth::of(month, &cells)
            })
            .collect()
    }

    /// The open month (`YYYY-MM`), in progress and not published.
    pub fn in_progress(&self) -> Option<&str> {
        self.open.as_ref().map(|o| o.month.as_str())
    }
}

/// Denial reason codes the server writes besides the disclosure rules' ([`crate::policy::Reason`]):
/// refused tokens and roles, and a missing purpose.
const OTHER_DENIALS: [&str; 5] =
    ["token_missing", "token_invalid", "token_expired", "role_forbidden", "purpose_required"];

/// The cells every published month lists, derived from the processing record the report embeds
/// (so the offline recount derives the same grid from the report it checks): every recipient
/// (and `(none)`) × every purpose (and `(none)`) × outcome for disclosures; every known denial
/// code; for each purpose the customer may object to, `objected` / `lifted`; `restricted` /
/// `lifted`; for each consent purpose, `granted` / `withdrawn`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Grid {
    recipients: Vec<String>,
    purposes: Vec<String>,
    objectable: Vec<String>,
    consent: Vec<String>,
}

impl Grid {
    /// The grid of a processing record in its JSON form (`ProcessingRecord` serialised, or the
    /// `record` member of a saved report). Missing members give an empty grid part.
    pub fn of_record(record: &Value) -> Grid {
        let names = |list: &str, key: &str, keep: &dyn Fn(&Value) -> bool| -> Vec<String> {
            record[list]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|v| keep(v))
                .filter_map(|v| v[key].as_str().map(str::to_owned))
                .collect()
        };
        Grid {
            recipients: names("recipients", "recipient", &|_| true),
            purposes: names("activities", "purpose", &|_| true),
            objectable: names("activities", "purpose", &|a| a["objection_possible"] == true),
            consent: names("activities", "purpose", &|a| a["legal_basis"] == "consent"),
        }
    }

    /// Every cell of the grid, at 0.
    fn skeleton(&self) -> MonthCounts {
        let with_none = |names: &[String]| {
            let mut all: Vec<String> = names.to_vec();
            all.push(NONE.to_owned());
            all
        };
        let pair = |a: &str, b: &str| BTreeMap::from([(a.to_owned(), 0), (b.to_owned(), 0)]);
        let mut cells = MonthCounts::default();
        for recipient in with_none(&self.recipients) {
            for purpose in with_none(&self.purposes) {
                let outcomes = ["allowed", "denied", "failed"].map(|o| (o.to_owned(), 0));
                cells.disclosures.entry(recipient.clone()).or_default().insert(purpose, outcomes.into());
            }
        }
        let codes = crate::policy::Reason::ALL.iter().map(|r| r.as_str()).chain(OTHER_DENIALS);
        cells.denials = codes.map(|c| (c.to_owned(), 0)).collect();
        for purpose in &self.objectable {
            cells.objections.insert(purpose.clone(), pair(change::OBJECTED, change::LIFTED));
        }
        cells.restrictions = pair(change::RESTRICTED, change::LIFTED);
        for purpose in &self.consent {
            cells.consents.insert(purpose.clone(), pair(change::GRANTED, change::WITHDRAWN));
        }
        cells
    }
}

/// Adds `from`'s cells to `into`: their counts if `values`, else only their keys (at 0).
fn merge(into: &mut MonthCounts, from: &MonthCounts, values: bool) {
    let v = |n: u64| if values { n } else { 0 };
    let map = |into: &mut BTreeMap<String, u64>, from: &BTreeMap<String, u64>| {
        for (k, n) in from {
            *into.entry(k.clone()).or_default() += v(*n);
        }
    };
    let map2 = |into: &mut BTreeMap<String, BTreeMap<String, u64>>,
                from: &BTreeMap<String, BTreeMap<String, u64>>| {
        for (k, m) in from {
            map(into.entry(k.clone()).or_default(), m);
        }
    };
    for (recipient, purposes) in &from.disclosures {
        map2(into.disclosures.entry(recipient.clone()).or_default(), purposes);
    }
    map(&mut into.denials, &from.denials);
    into.erasures += v(from.erasures);
    into.retention_purges += v(from.retention_purges);
    map2(&mut into.objections, &from.objections);
    map(&mut into.restrictions, &from.restrictions);
    map2(&mut into.consents, &from.consents);
}

fn outcome_name(outcome: Outcome) -> &'static str {
    match outcome {
        Outcome::Allowed => "allowed",
        Outcome::Denied => "denied",
        Outcome::Failed => "failed",
    }
}

/// A published count: the number from [`THRESHOLD`] up, else the text "fewer than 5".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Count {
    /// At least [`THRESHOLD`].
    Exact(u64),
    /// Below [`THRESHOLD`], zero included (every month lists the same cells, so a cell at 0
    /// is present and reads the same as one at 1 to 4).
    FewerThanThreshold,
}

impl Count {
    /// Applies the threshold.
    pub fn of(n: u64) -> Count {
        if n < THRESHOLD { Count::FewerThanThreshold } else { Count::Exact(n) }
    }
}

impl Serialize for Count {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Count::Exact(n) => s.serialize_u64(*n),
            Count::FewerThanThreshold => s.serialize_str(FEWER_THAN_THRESHOLD),
        }
    }
}

impl<'de> Deserialize<'de> for Count {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Count, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            N(u64),
            S(String),
        }
        match Raw::deserialize(d)? {
            Raw::N(n) if n >= THRESHOLD => Ok(Count::Exact(n)),
            Raw::S(s) if s == FEWER_THAN_THRESHOLD => Ok(Count::FewerThanThreshold),
            _ => Err(serde::de::Error::custom("a count is a number of at least 5 or \"fewer than 5\"")),
        }
    }
}

/// One closed month of the published report: distinct customers per cell.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublishedMonth {
    /// `YYYY-MM` (UTC).
    pub month: String,
    /// Disclosure decisions by recipient, purpose and outcome.
    pub disclosures: Vec<DisclosureCell>,
    /// Denied requests by reason code.
    pub denials: Vec<ReasonCell>,
    /// Customers erased.
    pub erasures: Count,
    /// Customers with fields purged at the end of their retention.
    pub retention_purges: Count,
    /// Objections set and lifted, by purpose.
    pub objections: Vec<ChoiceCell>,
    /// Restrictions set and lifted (no purpose).
    pub restrictions: Vec<ChoiceCell>,
    /// Consents granted and withdrawn, by purpose.
    pub consents: Vec<ChoiceCell>,
}

/// Disclosures of one recipient, purpose and outcome.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DisclosureCell {
    /// The recipient (`(none)` when the request named none declared).
    pub recipient: String,
    /// The purpose.
    pub purpose: String,
    /// `allowed`, `denied` or `failed`.
    pub outcome: String,
    /// How many distinct customers (an event naming none counts as one).
    pub count: Count,
}

/// Denials with one reason code.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReasonCell {
    /// The reason code, e.g. `consent_withdrawn`.
    pub reason: String,
    /// How many distinct customers had a denied request carrying it (an event naming no
    /// customer counts as one).
    pub count: Count,
}

/// Changes of one choice in one direction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChoiceCell {
    /// The purpose; absent for restrictions, which apply to all purposes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub purpose: Option<String>,
    /// `granted` / `withdrawn`, `objected` / `lifted` or `restricted` / `lifted`.
    pub change: String,
    /// How many distinct customers (an event naming none counts as one).
    pub count: Count,
}

impl PublishedMonth {
    fn of(month: &str, c: &MonthCounts) -> PublishedMonth {
        let by_purpose = |map: &BTreeMap<String, BTreeMap<String, u64>>| {
            map.iter()
                .flat_map(|(purpose, changes)| {
                    changes.iter().map(move |(change, n)| ChoiceCell {
                        purpose: Some(purpose.clone()),
                        change: change.clone(),
                        count: Count::of(*n),
                    })
                })
                .collect()
        };
        PublishedMonth {
            month: month.to_owned(),
            disclosures: c
                .disclosures
                .iter()
                .flat_map(|(recipient, purposes)| {
                    purposes.iter().flat_map(move |(purpose, outcomes)| {
                        outcomes.iter().map(move |(outcome, n)| DisclosureCell {
                            recipient: recipient.clone(),
                            purpose: purpose.clone(),
                            outcome: outcome.clone(),
                            count: Count::of(*n),
                        })
                    })
                })
                .collect(),
            denials: c
                .denials
                .iter()
                .map(|(reason, n)| ReasonCell { reason: reason.clone(), count: Count::of(*n) })
                .collect(),
            erasures: Count::of(c.erasures),
            retention_purges: Count::of(c.retention_purges),
            objections: by_purpose(&c.objections),
            restrictions: c
                .restrictions
                .iter()
                .map(|(change, n)| ChoiceCell { purpose: None, change: change.clone(), count: Count::of(*n) })
                .collect(),
            consents: by_purpose(&c.consents),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::hash::{Hash as _, Hasher as _};

    use super::*;
    use crate::audit::Actor;

    /// Any digest will do for distinctness in tests.
    fn digest(text: &str) -> Member {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        text.hash(&mut h);
        Member(u128::from(h.finish()))
    }

    fn event(seq: u64, time: &str, action: Action, outcome: Outcome) -> Event {
        Event {
            seq,
            time: time.to_owned(),
            action,
            outcome,
            actor: Actor { role: "merchant".into(), sub: Some("shop".into()) },
            customer_id: None,
            fields: None,
            purpose: None,
            recipient: None,
            reason: None,
            request_id: "r".into(),
        }
    }

    /// A fold with an `add` that numbers events in order.
    struct Fold(Counters);

    impl Fold {
        fn add(&mut self, mut e: Event, customer: Option<&str>) {
            e.seq = self.0.size;
            e.customer_id = customer.map(str::to_owned);
            self.0.fold(&e, digest, None).unwrap();
        }
    }

    #[test]
    fn cells_count_distinct_customers_of_closed_months_only() {
        let mut f = Fold(Counters::default());
        for i in 0..6 {
            let mut e = event(0, "2026-11-30T10:00:00.000Z", Action::Disclosure, Outcome::Allowed);
            e.recipient = Some("acme".into());
            e.purpose = Some("order".into());
            f.add(e.clone(), Some(&format!("c{i}")));
            f.add(e, Some(&format!("c{i}")));
        }
        let mut e = event(0, "2026-12-01T00:00:00.000Z", Action::Disclosure, Outcome::Denied);
        e.recipient = Some("acme".into());
        e.purpose = Some("marketing".into());
        e.reason = Some(vec!["email:consent_withdrawn".into(), "name:consent_withdrawn".into()]);
        f.add(e, Some("c1"));
        assert_eq!(f.0.months.len(), 1, "the first December event closed November");
        let mut e = event(0, "2026-12-01T00:00:01.000Z", Action::ConsentUpdate, Outcome::Allowed);
        e.purpose = Some("marketing".into());
        e.reason = Some(vec!["withdrawn".into()]);
        f.add(e, Some("c1"));
        let mut e = event(0, "2026-12-01T00:00:02.000Z", Action::ConsentUpdate, Outcome::Allowed);
        e.purpose = Some("marketing".into());
        e.reason = Some(vec!["unchanged".into()]);
        f.add(e, Some("c2"));
        f.add(event(0, "2026-12-02T00:00:00.000Z", Action::CustomerErase, Outcome::Allowed), Some("c3"));
        f.add(event(0, "2026-12-02T00:00:00.000Z", Action::CustomerRead, Outcome::Allowed), Some("c3"));
        // Two refusals naming no customer count as two.
        for _ in 0..2 {
            let mut e = event(0, "2026-12-02T00:00:00.000Z", Action::AuthDenied, Outcome::Denied);
            e.reason = Some(vec!["token_invalid".into()]);
            f.add(e, None);
        }
        // Stamped in November after November closed: counted in the open month.
        f.add(event(0, "2026-11-30T23:59:59.999Z", Action::CustomerErase, Outcome::Allowed), Some("c4"));

        let c = &f.0;
        assert_eq!(c.size, 20);
        assert_eq!(c.in_progress(), Some("2026-12"));
        let nov = &c.months["2026-11"];
        assert_eq!(nov.disclosures["acme"]["order"]["allowed"], 6, "six customers, twelve events");
        assert_eq!(nov.erasures, 0, "a closed month never changes");
        assert_eq!(c.published(&Grid::default()).len(), 1, "December is open: not published");

        f.add(event(0, "2027-01-01T00:00:00.000Z", Action::CustomerRead, Outcome::Allowed), Some("c5"));
        let c = &f.0;
        assert_eq!(c.in_progress(), Some("2027-01"));
        let dec = &c.months["2026-12"];
        assert_eq!(dec.disclosures["acme"]["marketing"]["denied"], 1);
        assert_eq!(dec.denials["consent_withdrawn"], 1, "one customer, one count per code");
        assert_eq!(dec.denials["token_invalid"], 2, "events naming no customer count each");
        assert_eq!(dec.consents["marketing"]["withdrawn"], 1);
        assert_eq!(dec.consents["marketing"].len(), 1, "an unchanged statement is no change");
        assert_eq!(dec.erasures, 2);
        assert_eq!(c.open.as_ref().unwrap().cells.members(), 0, "the sets were dropped at close");

        let published = c.published(&Grid::default());
        assert_eq!(published[0].month, "2026-12", "newest first");
        let acme = published[1].disclosures.iter().find(|d| d.recipient == "acme" && d.outcome == "allowed");
        assert_eq!(acme.unwrap().count, Count::Exact(6));
        assert_eq!(published[0].erasures, Count::FewerThanThreshold);
        let json = serde_json::to_value(&published[0]).unwrap();
        assert_eq!(json["erasures"], "fewer than 5");
        assert_eq!(json["retention_purges"], "fewer than 5", "zero is below the threshold too");
    }

    #[test]
    fn one_customer_toggling_a_choice_cannot_push_a_cell_past_the_threshold() {
        let mut f = Fold(Counters::default());
        for i in 0..10 {
            let mut e = event(0, "2026-11-02T10:00:00.000Z", Action::RestrictionUpdate, Outcome::Allowed);
            e.reason = Some(vec![if i % 2 == 0 { "restricted" } else { "lifted" }.into()]);
            f.add(e, Some("attacker"));
        }
        let mut e = event(0, "2026-11-03T10:00:00.000Z", Action::RestrictionUpdate, Outcome::Allowed);
        e.reason = Some(vec!["restricted".into()]);
        f.add(e, Some("victim"));
        f.add(event(0, "2026-12-01T00:00:00.000Z", Action::CustomerRead, Outcome::Allowed), None);
        let nov = &f.0.published(&Grid::default())[0];
        assert_eq!(nov.restrictions.len(), 2);
        assert!(nov.restrictions.iter().all(|c| c.count == Count::FewerThanThreshold), "{nov:?}");
    }

    #[test]
    fn only_the_closed_months_persist_and_a_resumed_fold_refolds_the_open_month() {
        let events: Vec<(&str, Option<&str>)> = vec![
            ("2026-10-02T10:00:00.000Z", Some("a")),
            ("2026-11-02T10:00:00.000Z", Some("a")),
            ("2026-11-03T10:00:00.000Z", Some("b")),
        ];
        let mut f = Fold(Counters::default());
        for (time, who) in &events {
            f.add(event(0, time, Action::CustomerErase, Outcome::Allowed), *who);
        }
        let closed = f.0.closed();
        assert_eq!(closed.size, 1, "the open month began at seq 1");
        let json = serde_json::to_string(&closed).unwrap();
        assert!(!json.contains("customer:a") && !json.contains("members"), "no open sets: {json}");
        let mut resumed = Counters::resume(serde_json::from_str(&json).unwrap());
        for (seq, (time, who)) in events.iter().enumerate().skip(1) {
            let mut e = event(seq as u64, time, Action::CustomerErase, Outcome::Allowed);
            e.customer_id = who.map(str::to_owned);
            resumed.fold(&e, digest, None).unwrap();
        }
        assert_eq!(resumed, f.0, "re-folding the open month gives the same fold");
    }

    #[test]
    fn events_naming_no_customer_are_counted_not_kept() {
        let mut f = Fold(Counters::default());
        for _ in 0..1000 {
            let mut e = event(0, "2026-11-02T10:00:00.000Z", Action::AuthDenied, Outcome::Denied);
            e.reason = Some(vec!["token_invalid".into()]);
            f.add(e, None);
        }
        let mut e = event(0, "2026-11-02T10:00:00.000Z", Action::Disclosure, Outcome::Denied);
        e.reason = Some(vec!["a:no_grant".into(), "b:no_grant".into()]);
        f.add(e, None);
        assert_eq!(f.0.open.as_ref().unwrap().cells.members(), 0, "no set member per event");
        f.add(event(0, "2026-12-01T00:00:00.000Z", Action::CustomerRead, Outcome::Allowed), None);
        let nov = &f.0.months["2026-11"];
        assert_eq!(nov.denials["token_invalid"], 1000);
        assert_eq!(nov.denials["no_grant"], 1, "one event, one count per code");
    }

    #[test]
    fn an_event_far_ahead_of_the_clock_closes_no_month() {
        let horizon = "2026-12-31T00:00:00.000Z";
        let mut c = Counters::default();
        let times = ["2026-11-02T10:00:00.000Z", "2030-01-01T00:00:00.000Z", "2026-11-03T10:00:00.000Z"];
        for (seq, time) in times.iter().enumerate() {
            let e = event(seq as u64, time, Action::CustomerRead, Outcome::Allowed);
            assert_eq!(c.fold(&e, digest, Some(horizon)).unwrap(), seq == 1);
        }
        assert_eq!(c.in_progress(), Some("2026-11"), "the 2030 event did not close November");
        assert_eq!(c.held_back, BTreeSet::from([1]));
        // A month ahead within the horizon closes it as usual.
        let e = event(3, "2026-12-01T00:00:00.000Z", Action::CustomerRead, Outcome::Allowed);
        assert!(!c.fold(&e, digest, Some(horizon)).unwrap());
        assert_eq!(c.in_progress(), Some("2026-12"));

        // The offline recount takes the list instead of a clock, and refuses a false entry.
        let mut offline = Counters { held_back: BTreeSet::from([1]), ..Counters::default() };
        for (seq, time) in times.iter().enumerate() {
            offline
                .fold(&event(seq as u64, time, Action::CustomerRead, Outcome::Allowed), digest, None)
                .unwrap();
        }
        assert_eq!(offline.in_progress(), Some("2026-11"));
        let mut lying = Counters { held_back: BTreeSet::from([0]), ..Counters::default() };
        let e = event(0, times[0], Action::CustomerRead, Outcome::Allowed);
        assert_eq!(lying.fold(&e, digest, None), Err(FoldError::NotHeldBack(0)));
        assert_eq!(lying.size, 0, "the fold is unchanged");
    }

    #[test]
    fn every_month_lists_the_full_grid_so_an_absent_cell_never_means_zero() {
        let record = serde_json::json!({
            "recipients": [{"recipient": "acme"}, {"recipient": "letterbox"}],
            "activities": [
                {"purpose": "order", "legal_basis": "contract", "objection_possible": false},
                {"purpose": "marketing", "legal_basis": "consent", "objection_possible": true},
            ],
        });
        let grid = Grid::of_record(&record);
        let mut f = Fold(Counters::default());
        let mut e = event(0, "2026-10-02T10:00:00.000Z", Action::Disclosure, Outcome::Allowed);
        e.recipient = Some("acme".into());
        e.purpose = Some("order".into());
        f.add(e, Some("a"));
        f.add(event(0, "2026-11-02T10:00:00.000Z", Action::CustomerRead, Outcome::Allowed), Some("a"));
        f.add(event(0, "2026-12-02T10:00:00.000Z", Action::CustomerRead, Outcome::Allowed), Some("a"));
        let months = f.0.published(&grid);
        assert_eq!(months.len(), 2);
        let (nov, oct) = (&months[0], &months[1]);
        assert_eq!(nov.disclosures.len(), 3 * 3 * 3, "(2 recipients + none) × (2 purposes + none) × 3");
        assert_eq!(nov.disclosures.len(), oct.disclosures.len());
        assert_eq!(nov.denials.len(), 16);
        assert_eq!(nov.objections.len(), 2, "marketing: objected, lifted");
        assert_eq!(nov.consents.len(), 2, "marketing: granted, withdrawn");
        assert_eq!(nov.restrictions.len(), 2);
        let strip = |m: &PublishedMonth| {
            let mut j = serde_json::to_value(m).unwrap();
            j["month"] = Value::Null;
            j
        };
        assert_eq!(strip(nov), strip(oct), "a month with one disclosure reads like one with none");
    }

    #[test]
    fn an_event_out_of_order_is_refused() {
        let mut c = Counters::default();
        let e = event(1, "2026-11-30T10:00:00.000Z", Action::CustomerRead, Outcome::Allowed);
        assert_eq!(c.fold(&e, digest, None), Err(FoldError::OutOfOrder { expected: 0, got: 1 }));
        assert_eq!(c, Counters::default());
    }

    #[test]
    fn counts_round_trip_and_refuse_a_small_number() {
        assert_eq!(serde_json::to_string(&Count::of(4)).unwrap(), "\"fewer than 5\"");
        assert_eq!(serde_json::to_string(&Count::of(5)).unwrap(), "5");
        assert_eq!(serde_json::from_str::<Count>("5").unwrap(), Count::Exact(5));
        assert!(serde_json::from_str::<Count>("3").is_err(), "a published count is never below 5");
    }
}
