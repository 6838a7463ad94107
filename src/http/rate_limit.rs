//! Per-caller rate limiting: a token bucket per authenticated caller (`role:sub`), one per
//! peer address for requests whose token fails, so a flood of bad tokens cannot fill the audit
//! log, and one per peer address for the routes anyone may call without a token (the portal's
//! and transparency report's pages and `/v1/transparency`). The per-caller budget is off unless
//! configured; the per-peer budget for failed tokens is always on (the configured rate, or 20/s
//! with bursts of 40); the public budget is on by default (10/s, bursts of 60) and 0 turns it
//! off. Refusals are 429 with `Retry-After` and are not audited (they touch no data).

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

/// Budget per peer for requests whose token fails, when no rate is configured.
const DEFAULT_PEER_RATE: NonZeroU32 = NonZeroU32::new(20).unwrap();
const DEFAULT_PEER_BURST: u32 = 40;

/// Keyed limiters for callers (optional) and for peers with failing tokens (always on).
pub struct CallerLimiter {
    callers: Option<DefaultKeyedRateLimiter<String>>,
    peers: DefaultKeyedRateLimiter<String>,
    public: Option<DefaultKeyedRateLimiter<String>>,
    clock: DefaultClock,
}

fn keyed(rate: NonZeroU32, burst: u32) -> DefaultKeyedRateLimiter<String> {
    let burst = NonZeroU32::new(burst.max(rate.get())).unwrap_or(rate);
    RateLimiter::keyed(Quota::per_second(rate).allow_burst(burst))
}

impl CallerLimiter {
    /// `per_second` requests per second per caller with bursts up to `burst`; 0 turns the
    /// per-caller budget off (peers with failing tokens then get the default budget).
    pub fn new(per_second: u32, burst: u32) -> Self {
        let callers = NonZeroU32::new(per_second).map(|rate| keyed(rate, burst));
        let peers = match NonZeroU32::new(per_second) {
            Some(rate) => keyed(rate, burst),
            None => keyed(DEFAULT_PEER_RATE, DEFAULT_PEER_BURST),
        };
        CallerLimiter { callers, peers, public: None, clock: DefaultClock::default() }
    }

    /// Adds a budget per peer for the public routes: `per_second` requests per second with
    /// bursts up to `burst`; 0 leaves them unlimited.
    pub fn with_public(mut self, per_second: u32, burst: u32) -> Self {
        self.public = NonZeroU32::new(per_second).map(|rate| keyed(rate, burst));
        self
    }

    /// Takes one request from a peer's budget for the public routes.
    pub fn check_public(&self, key: &str) -> Result<(), Duration> {
        let Some(limiter) = &self.public else { return Ok(()) };
        limiter.check_key(&key.to_owned()).map_err(|n| n.wait_time_from(self.clock.now()))
    }

    /// Takes one request from an authenticated caller's bucket, or says how long to wait.
    pub fn check(&self, key: &str) -> Result<(), Duration> {
        let Some(limiter) = &self.callers else { return Ok(()) };
        limiter.check_key(&key.to_owned()).map_err(|n| n.wait_time_from(self.clock.now()))
    }

    /// Takes one request from the bucket of a peer whose token failed.
    pub fn check_peer(&self, key: &str) -> Result<(), Duration> {
        self.peers.check_key(&key.to_owned()).map_err(|n| n.wait_time_from(self.clock.now()))
    }

    /// The key of a caller.
    pub fn caller_key(role: &str, sub: &str) -> String {
        format!("{role}:{sub}")
    }

    /// The key of an unauthenticated peer: its address group (an IPv4 address, IPv4-mapped ones
    /// included, or an IPv6 /64; see [`crate::listener::address_group`]).
    pub fn peer_key(ip: Option<IpAddr>) -> String {
        ip.map_or_else(
            || "peer:unknown".to_owned(),
            |ip| format!("peer:{}", crate::listener::address_group(ip)),
        )
    }

    /// Drops buckets that are full again, bounding memory under many distinct keys.
    pub fn prune(&self) {
        for limiter in self.callers.iter().chain(std::iter::once(&self.peers)).chain(self.public.iter()) {
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
        let off = CallerLimiter::new(0, 0);
        assert!((0..100).all(|_| off.check("x").is_ok()), "0 turns the caller budget off");
        let refused = (0..100).filter(|_| off.check_peer("peer:10.0.0.1").is_err()).count();
        assert!(refused >= 50, "failing tokens keep a default per-peer budget: {refused}");
        let public = CallerLimiter::new(0, 0).with_public(1, 2);
        assert!(public.check_public("peer:10.0.0.1").is_ok() && public.check_public("peer:10.0.0.1").is_ok());
        assert!(public.check_public("peer:10.0.0.1").is_err());
        assert!(public.check_public("peer:10.0.0.2").is_ok(), "per address");
        let open = CallerLimiter::new(0, 0).with_public(0, 0);
        assert!((0..100).all(|_| open.check_public("peer:x").is_ok()), "0 turns the public budget off");
    }

    #[test]
    fn peers_are_keyed_by_ipv4_address_or_ipv6_slash_64() {
        let key = |ip: &str| CallerLimiter::peer_key(Some(ip.parse().unwrap()));
        assert_eq!(key("::ffff:192.0.2.7"), key("192.0.2.7"), "an IPv4-mapped address is its IPv4 address");
        assert_eq!(key("2001:db8:1:2::1"), key("2001:db8:1:2:ffff:ffff:ffff:ffff"), "one /64, one budget");
        assert_ne!(key("2001:db8:1:2::1"), key("2001:db8:1:3::1"), "another /64");
        assert_ne!(key("192.0.2.7"), key("192.0.2.8"));
        let limiter = CallerLimiter::new(0, 0).with_public(1, 2);
        assert!(
            limiter.check_public(&key("2001:db8::1")).is_ok()
                && limiter.check_public(&key("2001:db8::2")).is_ok()
        );
        assert!(
            limiter.check_public(&key("2001:db8::3")).is_err(),
            "a new address in the same /64 shares the budget"
        );
    }
}
