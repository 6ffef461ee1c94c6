//! Rate limits: token buckets (GCRA, `governor`): one global, one per caller, and for token
//! reviews one for unknown tokens in all, one per client address, and one for renewals.
//!
//! A request with a bearer token the authenticator has not seen (recently) costs a TokenReview
//! first: those reviews take from their client address's bucket and then from the unknown-token
//! bucket, so a flood of unauthenticated or garbage-token requests is bounded, and so is the load
//! it puts on the API server. The review that renews a known caller's expired answer takes from
//! the renewal bucket instead, which unknown tokens never touch: a flood cannot lock out a caller
//! that authenticated before it. Once authenticated, a request takes from
//! the global bucket and then from its caller's, keyed by the user name from the TokenReview (a
//! caller with many tokens is still one caller), before any authorization review or handler
//! work. Requests that need no token (the OpenAPI document) take from the global bucket.

use std::hash::Hash;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, DefaultKeyedRateLimiter, Quota, RateLimiter};

use super::error::ApiError;

/// A rate that cannot be a token bucket.
#[derive(Debug, thiserror::Error)]
#[error("rate limit {name} must be a positive number of requests per second, not {rate}")]
pub struct InvalidRate {
    name: &'static str,
    rate: f64,
}

pub struct RateLimits {
    global: DefaultDirectRateLimiter,
    reviews: DefaultDirectRateLimiter,
    renewals: DefaultDirectRateLimiter,
    /// Bounded by [`Self::forget_idle_callers`] (like `per_caller`): only addresses whose
    /// bucket is not full again are kept.
    per_address: DefaultKeyedRateLimiter<IpAddr>,
    per_caller: DefaultKeyedRateLimiter<String>,
    /// Verifications that hash (no cached answer) of an app the caller may verify, per caller
    /// and per client id: guessing a secret, or burning the operator's CPU, is as slow as these
    /// buckets. Only callers allowed to verify an app take from its client id's bucket, so its
    /// keys are client ids of apps that exist. Bounded like `per_caller`.
    verify_per_caller: DefaultKeyedRateLimiter<String>,
    verify_per_client_id: DefaultKeyedRateLimiter<String>,
    /// Verifications of client ids that are unknown, or of apps the caller may not verify: they
    /// cost the caller (its own bucket) and a bucket of their own in all, never the app's.
    verify_unknown_per_caller: DefaultKeyedRateLimiter<String>,
    verify_unknown: DefaultDirectRateLimiter,
    /// Keys a keyed bucket holds at most, whatever the time ([`MAX_KEYS`]).
    max_keys: usize,
    clock: DefaultClock,
}

/// Keys (callers, addresses, client ids) a keyed bucket holds at most. Past it, keys whose
/// bucket is full again are forgotten at once; if that leaves it full, a request that would add
/// a key is answered 429 instead. Some 100 bytes each: a few MiB per bucket at most.
pub const MAX_KEYS: usize = 50_000;

impl RateLimits {
    pub fn new(
        rate_global: f64,
        burst_global: u32,
        rate_per_caller: f64,
        burst_per_caller: u32,
    ) -> Result<Self, InvalidRate> {
        Ok(Self {
            global: RateLimiter::direct(quota("global", rate_global, burst_global)?),
            reviews: RateLimiter::direct(quota("global", rate_global, burst_global)?),
            renewals: RateLimiter::direct(quota("global", rate_global, burst_global)?),
            per_address: RateLimiter::keyed(quota("per caller", rate_per_caller, burst_per_caller)?),
            per_caller: RateLimiter::keyed(quota("per caller", rate_per_caller, burst_per_caller)?),
            verify_per_caller: RateLimiter::keyed(quota("per caller", rate_per_caller, burst_per_caller)?),
            verify_per_client_id: RateLimiter::keyed(quota("per caller", rate_per_caller, burst_per_caller)?),
            verify_unknown_per_caller: RateLimiter::keyed(quota(
                "per caller",
                rate_per_caller,
                burst_per_caller,
            )?),
            verify_unknown: RateLimiter::direct(quota("per caller", rate_per_caller, burst_per_caller)?),
            max_keys: MAX_KEYS,
            clock: DefaultClock::default(),
        })
    }

    #[cfg(test)]
    fn with_max_keys(mut self, max_keys: usize) -> Self {
        self.max_keys = max_keys;
        self
    }

    /// Takes one token from `key`'s bucket of `limiter`; `refusal` when it is empty. Keeps the
    /// limiter within [`MAX_KEYS`].
    fn take_keyed<K: Hash + Eq + Clone>(
        &self,
        limiter: &DefaultKeyedRateLimiter<K>,
        key: &K,
        refusal: &str,
    ) -> Result<(), ApiError> {
        if limiter.len() >= self.max_keys {
            limiter.retain_recent();
            if limiter.len() >= self.max_keys {
                return Err(too_many(
                    "the REST API is limiting too many callers at once",
                    Duration::from_secs(1),
                ));
            }
        }
        limiter
            .check_key(key)
            .map_err(|not_until| too_many(refusal, not_until.wait_time_from(self.clock.now())))
    }

    /// Takes one token from the global bucket; 429 when it is empty.
    pub fn check_global(&self) -> Result<(), ApiError> {
        self.take(&self.global, "the REST API is receiving too many requests")
    }

    /// Takes one token for a review of a token not known yet: from the client address's bucket
    /// (as large as a caller's), then from the unknown-token bucket (as large as the global one);
    /// 429 when either is empty. Without an address (never, on a socket), only the latter.
    pub fn check_review(&self, address: Option<IpAddr>) -> Result<(), ApiError> {
        if let Some(address) = address {
            self.take_keyed(
                &self.per_address,
                &address,
                "too many requests with tokens not known yet from this address",
            )?;
        }
        self.take(
            &self.reviews,
            "the REST API is receiving too many requests with tokens it does not know yet",
        )
    }

    /// Takes one token from the renewal bucket (as large as the global one): the review that
    /// renews the expired answer of a token that authenticated before.
    pub fn check_renewal(&self) -> Result<(), ApiError> {
        self.take(
            &self.renewals,
            "the REST API is renewing too many authentications at once",
        )
    }

    fn take(&self, bucket: &DefaultDirectRateLimiter, refusal: &str) -> Result<(), ApiError> {
        bucket
            .check()
            .map_err(|not_until| too_many(refusal, not_until.wait_time_from(self.clock.now())))
    }

    /// Takes one token from `caller`'s bucket; 429 when it is empty.
    pub fn check_caller(&self, caller: &str) -> Result<(), ApiError> {
        self.take_keyed(
            &self.per_caller,
            &caller.to_string(),
            &format!("too many requests from {caller}"),
        )
    }

    /// Takes one token for a verification that hashes, of an app `caller` may verify, from
    /// `caller`'s and from `client_id`'s verification buckets; 429 when either is empty.
    pub fn check_verify(&self, caller: &str, client_id: &str) -> Result<(), ApiError> {
        self.take_keyed(
            &self.verify_per_caller,
            &caller.to_string(),
            "too many verifications from this caller",
        )?;
        self.take_keyed(
            &self.verify_per_client_id,
            &client_id.to_string(),
            "too many verifications of this client id",
        )
    }

    /// Takes one token for a verification of a client id that is unknown or of an app `caller`
    /// may not verify: from `caller`'s bucket for those, then from theirs in all; 429 when
    /// either is empty. No app's bucket is touched.
    pub fn check_verify_unknown(&self, caller: &str) -> Result<(), ApiError> {
        let refusal = "too many verifications of unknown client ids, or of apps this caller may not verify";
        self.take_keyed(&self.verify_unknown_per_caller, &caller.to_string(), refusal)?;
        self.take(&self.verify_unknown, refusal)
    }

    /// Forgets callers whose buckets are full again (they would be recreated full anyway).
    pub fn forget_idle_callers(&self) {
        self.verify_per_caller.retain_recent();
        self.verify_per_caller.shrink_to_fit();
        self.verify_per_client_id.retain_recent();
        self.verify_per_client_id.shrink_to_fit();
        self.verify_unknown_per_caller.retain_recent();
        self.verify_unknown_per_caller.shrink_to_fit();
        self.per_caller.retain_recent();
        self.per_caller.shrink_to_fit();
        self.per_address.retain_recent();
        self.per_address.shrink_to_fit();
    }
}

fn quota(name: &'static str, rate: f64, burst: u32) -> Result<Quota, InvalidRate> {
    let invalid = InvalidRate { name, rate };
    if !rate.is_finite() || rate <= 0.0 {
        return Err(invalid);
    }
    let period = Duration::try_from_secs_f64(1.0 / rate).map_err(|_| InvalidRate { name, rate })?;
    let quota = Quota::with_period(period.max(Duration::from_nanos(1))).ok_or(invalid)?;
    Ok(quota.allow_burst(NonZeroU32::new(burst).unwrap_or(NonZeroU32::MIN)))
}

/// A 429 whose `Retry-After` is the wait rounded up to whole seconds (at least 1).
fn too_many(what: &str, wait: Duration) -> ApiError {
    let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    ApiError::too_many_requests(format!("{what}; retry in {}s", secs.max(1)), secs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_caller_over_its_burst_is_told_when_to_retry_and_others_are_not_affected() {
        let limits = RateLimits::new(1000.0, 1000, 0.5, 3).expect("valid");
        for _ in 0..3 {
            limits.check_caller("alice").expect("within burst");
        }
        let refused = limits.check_caller("alice").expect_err("over burst");
        assert_eq!(refused.status, axum::http::StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(refused.retry_after, Some(2), "one token per 2s");
        limits.check_caller("bob").expect("bob has his own bucket");
    }

    #[test]
    fn the_global_bucket_counts_everyone() {
        let limits = RateLimits::new(1.0, 2, 1000.0, 1000).expect("valid");
        limits.check_global().expect("1");
        limits.check_global().expect("2");
        let refused = limits.check_global().expect_err("over");
        assert_eq!(refused.retry_after, Some(1));
    }

    #[test]
    fn token_reviews_have_a_bucket_of_their_own() {
        let limits = RateLimits::new(1.0, 2, 1000.0, 1000).expect("valid");
        limits.check_review(None).expect("1");
        limits.check_review(None).expect("2");
        let refused = limits.check_review(None).expect_err("over");
        assert_eq!(refused.status, axum::http::StatusCode::TOO_MANY_REQUESTS);
        // A flood of unknown tokens leaves the global bucket and the renewals to the callers
        // already known.
        limits.check_global().expect("global untouched");
        limits.check_renewal().expect("renewals untouched");
    }

    #[test]
    fn unknown_tokens_are_limited_per_address_too() {
        let limits = RateLimits::new(1000.0, 1000, 1.0, 2).expect("valid");
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.1".parse().expect("ip"), "10.0.0.2".parse().expect("ip"));
        limits.check_review(Some(a)).expect("1");
        limits.check_review(Some(a)).expect("2");
        limits.check_review(Some(a)).expect_err("over for this address");
        limits
            .check_review(Some(b))
            .expect("another address has its own bucket");
    }

    #[test]
    fn unknown_client_ids_cost_the_caller_and_never_an_app() {
        let limits = RateLimits::new(1000.0, 1000, 1.0, 2).expect("valid");
        // Tenant B hammers A's client id without the right to verify A's app.
        for _ in 0..2 {
            limits.check_verify_unknown("b1").expect("within b1's burst");
        }
        limits
            .check_verify_unknown("b1")
            .expect_err("b1 is over its own bucket");
        // A's verifier still has the whole of A's bucket.
        limits.check_verify("a", "a-client").expect("1");
        limits.check_verify("a", "a-client").expect("2");
        // The unknown ids in all are bounded too: b2 shares what is left of them (none).
        limits
            .check_verify_unknown("b2")
            .expect_err("the unknown bucket in all is empty");
    }

    #[test]
    fn a_keyed_bucket_holds_a_bounded_number_of_keys() {
        let limits = RateLimits::new(1000.0, 1000, 1.0, 1)
            .expect("valid")
            .with_max_keys(3);
        for caller in ["a", "b", "c"] {
            limits.check_caller(caller).expect("first request");
        }
        // Each bucket is empty (burst 1), so none is forgotten: a fourth key is refused.
        let refused = limits.check_caller("d").expect_err("no room for a fourth key");
        assert_eq!(refused.status, axum::http::StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(limits.per_caller.len(), 3);
    }

    #[test]
    fn rates_must_be_positive() {
        assert!(RateLimits::new(0.0, 1, 1.0, 1).is_err());
        assert!(RateLimits::new(1.0, 1, f64::NAN, 1).is_err());
        assert!(RateLimits::new(1.0, 0, 1.0, 0).is_ok(), "a burst of 0 means 1");
    }
}
