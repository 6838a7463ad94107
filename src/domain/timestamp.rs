//! Wall-clock instants as Unix milliseconds, rendered RFC 3339 UTC with milliseconds.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};

/// A point in time, in milliseconds since the Unix epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Timestamp(i64);

impl Timestamp {
    /// The current time.
    pub fn now() -> Self {
        Timestamp(Utc::now().timestamp_millis())
    }

    /// A timestamp from Unix milliseconds.
    pub fn from_millis(ms: i64) -> Self {
        Timestamp(ms)
    }

    /// Unix milliseconds.
    pub fn millis(&self) -> i64 {
        self.0
    }

    /// Parses RFC 3339 text (any offset) into a timestamp.
    pub fn parse_rfc3339(text: &str) -> Option<Self> {
        DateTime::parse_from_rfc3339(text).ok().map(|t| Timestamp(t.timestamp_millis()))
    }

    /// RFC 3339 UTC with milliseconds, e.g. `2026-11-22T10:00:00.123Z`.
    pub fn to_rfc3339(&self) -> String {
        DateTime::<Utc>::from_timestamp_millis(self.0)
            .unwrap_or_default()
            .to_rfc3339_opts(SecondsFormat::Millis, true)
    }
}

/// The clock audit events are stamped with: the system clock shifted by an offset that only
/// code can set (no setting file or environment variable reaches it). Tests use it to drive
/// month boundaries of the transparency report without waiting for a month; in production the
/// offset stays 0. Clones share the offset.
#[derive(Debug, Clone, Default)]
pub struct Clock(Arc<AtomicI64>);

impl Clock {
    /// The shifted current time.
    pub fn now(&self) -> Timestamp {
        Timestamp(Timestamp::now().0.saturating_add(self.0.load(Ordering::Relaxed)))
    }

    /// Shifts the clock so that [`Clock::now`] reads `at` now (and runs on from there).
    pub fn set(&self, at: Timestamp) {
        self.0.store(at.0.saturating_sub(Timestamp::now().0), Ordering::Relaxed);
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_rfc3339())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_utc_with_milliseconds_and_parses_back() {
        let t = Timestamp::from_millis(1_700_000_000_123);
        assert_eq!(t.to_rfc3339(), "2023-11-14T22:13:20.123Z");
        assert_eq!(Timestamp::parse_rfc3339(&t.to_rfc3339()), Some(t));
    }
}
