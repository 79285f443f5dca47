//! Rate limits: a generic cell rate algorithm (GCRA) per bucket (an API
//! key, counted by the key gate in `http::auth`).
//!
//! A limit of `n` per minute lets a bucket take `n` requests at once and
//! then one every `60/n` seconds; a refused request costs that bucket
//! nothing. The state is one instant per bucket (its "theoretical arrival
//! time": when the bucket's allowance is next full, shifted by one request).
//!
//! Where it is kept: with a cache configured, in the cache
//! ([`Cache::allow`], on the cache server's clock), so every engram process
//! behind a load balancer draws on one allowance per bucket, named by the
//! limiter's kind (`rest`, `mcp`) and the bucket. Without a cache, or while
//! it is down, each process counts on its own (a bucket then gets up to its
//! limit per process). The in-process table grows with the number of
//! buckets that called, not with requests; entries in the past are swept.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use crate::cache::Cache;

/// Buckets at which the table is swept of entries whose allowance is full again.
const SWEEP_AT: usize = 10_000;

pub struct RateLimiter {
    /// Time one request uses up: a minute over the limit. `None`: unlimited.
    interval: Option<Duration>,
    /// How far ahead of now a bucket's theoretical arrival time may run:
    /// the burst (the whole minute's allowance) less one request.
    tolerance: Duration,
    arrivals: Mutex<HashMap<String, Instant>>,
    /// Where the shared state lives, and this limiter's kind in it.
    shared: Option<(Arc<dyn Cache>, &'static str)>,
}

impl RateLimiter {
    /// `per_minute` requests per bucket and minute; 0 means no limit.
    pub fn per_minute(per_minute: u32) -> Self {
        let interval = (per_minute > 0).then(|| Duration::from_secs(60) / per_minute);
        Self {
            interval,
            tolerance: interval.map_or(Duration::ZERO, |i| Duration::from_secs(60) - i),
            arrivals: Mutex::default(),
            shared: None,
        }
    }

    /// Keeps the state in `cache` (when it has one) under `kind`, a name no
    /// other limiter uses and that holds no `:`.
    pub fn shared(mut self, cache: Arc<dyn Cache>, kind: &'static str) -> Self {
        if cache.enabled() {
            self.shared = Some((cache, kind));
        }
        self
    }

    /// Counts a request against `bucket`, or refuses it with how long to
    /// wait before the next one would be allowed.
    pub async fn check(&self, bucket: &str) -> Result<(), Duration> {
        let Some(interval) = self.interval else {
            return Ok(());
        };
        if let Some((cache, kind)) = &self.shared
            && let Some(decision) = cache
                .allow(&format!("{kind}:{bucket}"), interval, self.tolerance)
                .await
        {
            return decision;
        }
        self.check_here(bucket, Instant::now())
    }

    /// [`Self::check`] on the in-process table, at `now`.
    fn check_here(&self, bucket: &str, now: Instant) -> Result<(), Duration> {
        let Some(interval) = self.interval else {
            return Ok(());
        };
        let mut arrivals = self.arrivals.lock().unwrap_or_else(PoisonError::into_inner);
        let tat = arrivals.get(bucket).copied().unwrap_or(now).max(now);
        let ahead = tat - now;
        if ahead > self.tolerance {
            return Err(ahead - self.tolerance);
        }
        if arrivals.len() >= SWEEP_AT && !arrivals.contains_key(bucket) {
            arrivals.retain(|_, t| *t > now);
        }
        arrivals.insert(bucket.to_owned(), tat + interval);
        Ok(())
    }
}

/// A wait as `Retry-After` says it: whole seconds, rounded up, at least
/// one, so that retrying after it succeeds.
pub fn retry_secs(wait: Duration) -> u64 {
    (wait.as_secs() + u64::from(wait.subsec_nanos() > 0)).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_minute_allows_the_limit_at_once_then_one_per_interval() {
        let limiter = RateLimiter::per_minute(10);
        let (a, b) = ("a", "b");
        let start = Instant::now();
        for _ in 0..10 {
            assert_eq!(limiter.check_here(a, start), Ok(()));
        }
        let wait = limiter.check_here(a, start).unwrap_err();
        assert_eq!(wait, Duration::from_secs(6), "one request's worth");
        assert_eq!(limiter.check_here(b, start), Ok(()), "buckets count apart");
        // Refusals cost nothing: after the wait, exactly one more.
        let later = start + wait;
        assert_eq!(limiter.check_here(a, later), Ok(()));
        assert!(limiter.check_here(a, later).is_err());
        // A full minute later the burst is back.
        let next = later + Duration::from_secs(60);
        for _ in 0..10 {
            assert_eq!(limiter.check_here(a, next), Ok(()));
        }
        assert!(limiter.check_here(a, next).is_err());
    }

    #[test]
    fn zero_means_unlimited() {
        let limiter = RateLimiter::per_minute(0);
        let now = Instant::now();
        for _ in 0..10_000 {
            assert_eq!(limiter.check_here("k", now), Ok(()));
        }
    }

    #[test]
    fn idle_buckets_are_swept() {
        let limiter = RateLimiter::per_minute(60);
        let start = Instant::now();
        for k in 0..SWEEP_AT {
            assert_eq!(limiter.check_here(&k.to_string(), start), Ok(()));
        }
        let later = start + Duration::from_secs(2);
        assert_eq!(limiter.check_here("last", later), Ok(()));
        let len = limiter.arrivals.lock().map(|m| m.len()).unwrap_or_default();
        assert_eq!(len, 1);
    }

    #[test]
    fn waits_round_up_to_whole_seconds() {
        assert_eq!(retry_secs(Duration::ZERO), 1);
        assert_eq!(retry_secs(Duration::from_millis(1)), 1);
        assert_eq!(retry_secs(Duration::from_secs(6)), 6);
        assert_eq!(retry_secs(Duration::from_millis(6001)), 7);
    }
}
