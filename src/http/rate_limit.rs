//! Per-caller rate limiting: a token bucket per authenticated caller (`role:sub`), and one per
//! peer address for requests whose token fails, so a flood of bad tokens cannot fill the audit
//! log. Refusals are 429 with `Retry-After` and are not audited (they touch no data).

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

/// A keyed limiter; `None` inside when limiting is off.
pub struct CallerLimiter {
    inner: Option<(DefaultKeyedRateLimiter<String>, DefaultClock)>,
}

impl CallerLimiter {
    /// `per_second` requests per second per key with bursts up to `burst`; 0 turns it off.
    pub fn new(per_second: u32, burst: u32) -> Self {
        let inner = NonZeroU32::new(per_second).map(|rate| {
            let burst = NonZeroU32::new(burst.max(per_second)).unwrap_or(rate);
            (RateLimiter::keyed(Quota::per_second(rate).allow_burst(burst)), DefaultClock::default())
        });
        CallerLimiter { inner }
    }

    /// Takes one request from `key`'s bucket, or says how long to wait.
    pub fn check(&self, key: &str) -> Result<(), Duration> {
        let Some((limiter, clock)) = &self.inner else { return Ok(()) };
        limiter.check_key(&key.to_owned()).map_err(|not_until| not_until.wait_time_from(clock.now()))
    }

    /// The key of a caller.
    pub fn caller_key(role: &str, sub: &str) -> String {
        format!("{role}:{sub}")
    }

    /// The key of an unauthenticated peer.
    pub fn peer_key(ip: Option<IpAddr>) -> String {
        ip.map_or_else(|| "peer:unknown".to_owned(), |ip| format!("peer:{ip}"))
    }

    /// Drops buckets that are full again, bounding memory under many distinct keys.
    pub fn prune(&self) {
        if let Some((limiter, _)) = &self.inner {
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_passes_then_the_caller_waits_and_others_are_unaffected() {
        let limiter = CallerLimiter::new(1, 3);
        for _ in 0..3 {
            assert!(limiter.check("merchant:a").is_ok());
        }
        let wait = limiter.check("merchant:a").unwrap_err();
        assert!(wait > Duration::ZERO && wait <= Duration::from_secs(1));
        assert!(limiter.check("merchant:b").is_ok());
        assert!(CallerLimiter::new(0, 0).check("x").is_ok(), "0 turns limiting off");
    }
}
