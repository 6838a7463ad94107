//! The transparency report's numbers: per calendar month (UTC, from each event's `time`), what
//! the shop did with customer data, folded event by event in log order.
//!
//! The same fold runs in the server (incrementally, [`crate::vault`]'s transparency keeper) and
//! offline (`custodia audit report`, over an exported log), so both give the same numbers for
//! the same tree size. Counts only: no id, no value ever enters a counter; keys are declared
//! names (recipients, purposes) and reason codes.
//!
//! Published counts below [`THRESHOLD`] are shown as "fewer than 5" ([`Count`]), so a cell never
//! singles out one customer's choice.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{Action, Event, Outcome};

/// Counts below this are published as "fewer than 5" (DESIGN §5).
pub const THRESHOLD: u64 = 5;

/// The text published instead of a count below [`THRESHOLD`].
pub const FEWER_THAN_THRESHOLD: &str = "fewer than 5";

/// The key used for a disclosure or choice event that names no recipient or purpose.
const NONE: &str = "(none)";

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

/// Every count of the report, as of the first `size` events of the log.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    /// How many events (seqs `0..size`) are folded in.
    pub size: u64,
    /// `YYYY-MM` → that month's counts.
    pub months: BTreeMap<String, MonthCounts>,
}

/// One month's counts. Nested maps (not tuple keys) so the state persists as plain JSON.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MonthCounts {
    /// recipient → purpose → outcome (`allowed`, `denied`, `failed`) → disclosure decisions.
    pub disclosures: BTreeMap<String, BTreeMap<String, BTreeMap<String, u64>>>,
    /// reason code → denied events carrying it (any action; `field:code` counted as `code`,
    /// once per event).
    pub denials: BTreeMap<String, u64>,
    /// Customers erased (allowed `customer.erase`).
    pub erasures: u64,
    /// Retention purges (allowed `retention.purge`, one per customer and sweep).
    pub retention_purges: u64,
    /// purpose → `objected` / `lifted` → objection changes.
    pub objections: BTreeMap<String, BTreeMap<String, u64>>,
    /// `restricted` / `lifted` → restriction changes.
    pub restrictions: BTreeMap<String, u64>,
    /// purpose → `granted` / `withdrawn` → consent records added.
    pub consents: BTreeMap<String, BTreeMap<String, u64>>,
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

impl Counters {
    /// Adds one event; events must come in seq order, each exactly once.
    pub fn fold(&mut self, event: &Event) -> Result<(), OutOfOrder> {
        if event.seq != self.size {
            return Err(OutOfOrder { expected: self.size, got: event.seq });
        }
        self.size += 1;
        // invariant: stored times are RFC 3339 from `Timestamp::to_rfc3339` (`YYYY-MM-…`); a
        // malformed one still gets a bucket of its own rather than vanishing from the counts.
        let month = event.time.get(..7).unwrap_or("unknown").to_owned();
        let counts = self.months.entry(month).or_default();
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
                *counts
                    .disclosures
                    .entry(recipient)
                    .or_default()
                    .entry(purpose())
                    .or_default()
                    .entry(outcome_name(event.outcome).to_owned())
                    .or_default() += 1;
            }
            Action::CustomerErase if allowed => counts.erasures += 1,
            Action::RetentionPurge if allowed => counts.retention_purges += 1,
            Action::ObjectionUpdate if allowed => {
                let d = direction(&[change::OBJECTED, change::LIFTED]);
                *counts.objections.entry(purpose()).or_default().entry(d).or_default() += 1;
            }
            Action::RestrictionUpdate if allowed => {
                *counts.restrictions.entry(direction(&[change::RESTRICTED, change::LIFTED])).or_default() +=
                    1;
            }
            // A repeated identical statement changes nothing and is recorded `unchanged`.
            Action::ConsentUpdate if allowed && !event.reason.iter().flatten().any(|r| r == "unchanged") => {
                let d = direction(&[change::GRANTED, change::WITHDRAWN]);
                *counts.consents.entry(purpose()).or_default().entry(d).or_default() += 1;
            }
            _ => {}
        }
        if event.outcome == Outcome::Denied {
            let mut codes: Vec<&str> =
                event.reason.iter().flatten().map(|r| r.rsplit(':').next().unwrap_or(r)).collect();
            codes.sort_unstable();
            codes.dedup();
            for code in codes {
                *counts.denials.entry(code.to_owned()).or_default() += 1;
            }
        }
        Ok(())
    }

    /// The months as published: every count passed through [`Count::of`], newest month first.
    pub fn published(&self) -> Vec<PublishedMonth> {
        self.months.iter().rev().map(|(month, c)| PublishedMonth::of(month, c)).collect()
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

/// One month of the published report.
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
    /// Fields purged at the end of their retention (one per customer and sweep).
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
    /// How many.
    pub count: Count,
}

/// Denials with one reason code.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReasonCell {
    /// The reason code, e.g. `consent_withdrawn`.
    pub reason: String,
    /// How many denied requests carried it.
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
    /// How many.
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
    use super::*;
    use crate::audit::Actor;

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

    #[test]
    fn events_fold_into_their_month_by_action_outcome_and_reason() {
        let mut c = Counters::default();
        let mut seq = 0;
        let mut add = |mut e: Event| {
            e.seq = seq;
            seq += 1;
            c.fold(&e).unwrap();
        };
        for _ in 0..6 {
            let mut e = event(0, "2026-11-30T10:00:00.000Z", Action::Disclosure, Outcome::Allowed);
            e.recipient = Some("acme".into());
            e.purpose = Some("order".into());
            add(e);
        }
        let mut e = event(0, "2026-12-01T00:00:00.000Z", Action::Disclosure, Outcome::Denied);
        e.recipient = Some("acme".into());
        e.purpose = Some("marketing".into());
        e.reason = Some(vec!["email:consent_withdrawn".into(), "name:consent_withdrawn".into()]);
        add(e);
        let mut e = event(0, "2026-12-01T00:00:01.000Z", Action::ConsentUpdate, Outcome::Allowed);
        e.purpose = Some("marketing".into());
        e.reason = Some(vec!["withdrawn".into()]);
        add(e);
        let mut e = event(0, "2026-12-01T00:00:02.000Z", Action::ConsentUpdate, Outcome::Allowed);
        e.purpose = Some("marketing".into());
        e.reason = Some(vec!["unchanged".into()]);
        add(e);
        add(event(0, "2026-12-02T00:00:00.000Z", Action::CustomerErase, Outcome::Allowed));
        add(event(0, "2026-12-02T00:00:00.000Z", Action::CustomerRead, Outcome::Allowed));

        assert_eq!(c.size, 11);
        let nov = &c.months["2026-11"];
        assert_eq!(nov.disclosures["acme"]["order"]["allowed"], 6);
        let dec = &c.months["2026-12"];
        assert_eq!(dec.disclosures["acme"]["marketing"]["denied"], 1);
        assert_eq!(dec.denials["consent_withdrawn"], 1, "one event, one count per code");
        assert_eq!(dec.consents["marketing"]["withdrawn"], 1);
        assert_eq!(dec.consents["marketing"].len(), 1, "an unchanged statement is no change");
        assert_eq!(dec.erasures, 1);

        let published = c.published();
        assert_eq!(published[0].month, "2026-12", "newest first");
        assert_eq!(published[1].disclosures[0].count, Count::Exact(6));
        assert_eq!(published[0].erasures, Count::FewerThanThreshold);
        let json = serde_json::to_value(&published[0]).unwrap();
        assert_eq!(json["erasures"], "fewer than 5");
        assert_eq!(json["retention_purges"], "fewer than 5", "zero is below the threshold too");
    }

    #[test]
    fn an_event_out_of_order_is_refused() {
        let mut c = Counters::default();
        let e = event(1, "2026-11-30T10:00:00.000Z", Action::CustomerRead, Outcome::Allowed);
        assert_eq!(c.fold(&e), Err(OutOfOrder { expected: 0, got: 1 }));
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
