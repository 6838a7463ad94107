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
//!   as one of its own;
//! - only **closed** months are published. The month of the newest folded event is open: its
//!   cells are sets of [`Member`]s (a keyed 128-bit digest of the customer id, never the id),
//!   and the first event of a later month closes it, folding each set into its size and dropping
//!   the sets. A month is therefore closed by the log itself (event times), identically online
//!   and offline. An event stamped earlier than the open month (requests racing a month
//!   boundary, or a clock set back) is counted in the open month: a closed month never changes.
//!
//! Published counts below [`THRESHOLD`] are shown as "fewer than 5" ([`Count`]).

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

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

/// Who an event counts as in its cells: the text a [`Member`] digest is computed over.
/// `customer:<id>` for an event naming a customer, else `event:<seq>` (counted once).
pub fn member_text(event: &Event) -> String {
    match &event.customer_id {
        Some(id) => format!("customer:{id}"),
        None => format!("event:{}", event.seq),
    }
}

/// One data subject (or one event naming none) in the open month's sets: 128 bits of a keyed
/// digest of [`member_text`] (the server keys it with a key derived from its system keys; the
/// offline recount with a random key, since only distinctness matters). Serialised as 32
/// lower-case hex digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Member(pub u128);

impl Serialize for Member {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format!("{:032x}", self.0))
    }
}

impl<'de> Deserialize<'de> for Member {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Member, D::Error> {
        let text = String::deserialize(d)?;
        if text.len() != 32 || !text.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
            return Err(serde::de::Error::custom("a member is 32 lower-case hex digits"));
        }
        u128::from_str_radix(&text, 16).map(Member).map_err(serde::de::Error::custom)
    }
}

/// The members of one cell of the open month.
pub type Members = BTreeSet<Member>;

/// Every count of the report, as of the first `size` events of the log.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    /// How many events (seqs `0..size`) are folded in.
    pub size: u64,
    /// Closed months: `YYYY-MM` → distinct customers per cell. Only these are published.
    pub months: BTreeMap<String, MonthCounts>,
    /// The month of the newest folded event, still open: who is in each cell. `None` before the
    /// first event.
    #[serde(default)]
    pub open: Option<OpenMonth>,
}

/// The open month: a set of members per cell, folded into counts when the month closes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpenMonth {
    /// `YYYY-MM` (UTC).
    pub month: String,
    /// Members per cell.
    pub cells: MonthCells<Members>,
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

impl MonthCells<Members> {
    /// The counts of a closing month: each set's size.
    pub fn close(&self) -> MonthCounts {
        fn n(set: &Members) -> u64 {
            set.len() as u64
        }
        fn map<K: Clone + Ord>(m: &BTreeMap<K, Members>) -> BTreeMap<K, u64> {
            m.iter().map(|(k, v)| (k.clone(), n(v))).collect()
        }
        fn map2<K: Clone + Ord>(m: &BTreeMap<K, BTreeMap<K, Members>>) -> BTreeMap<K, BTreeMap<K, u64>> {
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
        let map = |m: &BTreeMap<String, Members>| m.values().map(BTreeSet::len).sum::<usize>();
        self.disclosures.values().flat_map(|p| p.values()).map(map).sum::<usize>()
            + map(&self.denials)
            + self.erasures.len()
            + self.retention_purges.len()
            + self.objections.values().map(map).sum::<usize>()
            + map(&self.restrictions)
            + self.consents.values().map(map).sum::<usize>()
    }
}

/// An event did not continue the fold where it stands.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("event {got} cannot be folded: the counters stand at {expected} events")]
pub struct OutOfOrder {
    /// The seq the next event must have.
    pub expected: u64,
    /// The seq offered.
    pub got: u64,
}

/// `YYYY-MM` of an RFC 3339 time, if it has that shape.
fn month_of(time: &str) -> Option<&str> {
    let month = time.get(..7)?;
    let b = month.as_bytes();
    let digits = |r: std::ops::Range<usize>| b[r].iter().all(u8::is_ascii_digit);
    (digits(0..4) && b[4] == b'-' && digits(5..7)).then_some(month)
}

impl Counters {
    /// Adds one event; events must come in seq order, each exactly once. `member` digests
    /// [`member_text`] of the event (see [`Member`]); it must be the same function for the
    /// whole life of a fold.
    pub fn fold(&mut self, event: &Event, member: impl Fn(&str) -> Member) -> Result<(), OutOfOrder> {
        if event.seq != self.size {
            return Err(OutOfOrder { expected: self.size, got: event.seq });
        }
        self.size += 1;
        let month = month_of(&event.time);
        if let (Some(open), Some(m)) = (&self.open, month)
            && m > open.month.as_str()
        {
            // invariant: checked just above that a month is open.
            let closed = self.open.take().expect("a month is open");
            self.months.insert(closed.month, closed.cells.close());
        }
        let open = self.open.get_or_insert_with(|| OpenMonth {
            month: month.unwrap_or(MALFORMED_MONTH).to_owned(),
            cells: MonthCells::default(),
        });
        let who = member(&member_text(event));
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
                    .insert(who);
            }
            Action::CustomerErase if allowed => {
                counts.erasures.insert(who);
            }
            Action::RetentionPurge if allowed => {
                counts.retention_purges.insert(who);
            }
            Action::ObjectionUpdate if allowed => {
                let d = direction(&[change::OBJECTED, change::LIFTED]);
                counts.objections.entry(purpose()).or_default().entry(d).or_default().insert(who);
            }
            Action::RestrictionUpdate if allowed => {
                counts
                    .restrictions
                    .entry(direction(&[change::RESTRICTED, change::LIFTED]))
                    .or_default()
                    .insert(who);
            }
            // A repeated identical statement changes nothing and is recorded `unchanged`.
            Action::ConsentUpdate if allowed && !event.reason.iter().flatten().any(|r| r == "unchanged") => {
                let d = direction(&[change::GRANTED, change::WITHDRAWN]);
                counts.consents.entry(purpose()).or_default().entry(d).or_default().insert(who);
            }
            _ => {}
        }
        if event.outcome == Outcome::Denied {
            for reason in event.reason.iter().flatten() {
                let code = reason.rsplit(':').next().unwrap_or(reason);
                counts.denials.entry(code.to_owned()).or_default().insert(who);
            }
        }
        Ok(())
    }

    /// The closed months as published: every count passed through [`Count::of`], newest month
    /// first. The open month is never among them.
    pub fn published(&self) -> Vec<PublishedMonth> {
        self.months.iter().rev().map(|(month, c)| PublishedMonth::of(month, c)).collect()
    }

    /// The open month (`YYYY-MM`), in progress and not published.
    pub fn in_progress(&self) -> Option<&str> {
        self.open.as_ref().map(|o| o.month.as_str())
    }
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
    /// Below [`THRESHOLD`] (zero included).
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
            self.0.fold(&e, digest).unwrap();
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
        assert_eq!(c.published().len(), 1, "December is open: not published");

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

        let published = c.published();
        assert_eq!(published[0].month, "2026-12", "newest first");
        assert_eq!(published[1].disclosures[0].count, Count::Exact(6));
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
        let nov = &f.0.published()[0];
        assert_eq!(nov.restrictions.len(), 2);
        assert!(nov.restrictions.iter().all(|c| c.count == Count::FewerThanThreshold), "{nov:?}");
    }

    #[test]
    fn the_fold_round_trips_through_json_with_its_open_sets() {
        let mut f = Fold(Counters::default());
        f.add(event(0, "2026-11-02T10:00:00.000Z", Action::CustomerErase, Outcome::Allowed), Some("a"));
        let json = serde_json::to_string(&f.0).unwrap();
        assert!(!json.contains("customer:a"), "members are digests, not ids");
        assert_eq!(serde_json::from_str::<Counters>(&json).unwrap(), f.0);
        assert!(serde_json::from_str::<Member>("\"xyz\"").is_err());
    }

    #[test]
    fn an_event_out_of_order_is_refused() {
        let mut c = Counters::default();
        let e = event(1, "2026-11-30T10:00:00.000Z", Action::CustomerRead, Outcome::Allowed);
        assert_eq!(c.fold(&e, digest), Err(OutOfOrder { expected: 0, got: 1 }));
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
