//! Rate limits: a generic cell rate algorithm (GCRA) per bucket, and the
//! two things the HTTP doors count with it, each API key and each acting
//! user.
//!
//! A limit of `n` per minute lets a bucket take `n` requests at once and
//! then one every `60/n` seconds; a refused request costs that bucket
//! nothing. The state is one instant per bucket (its "theoretical arrival
//! time": when the bucket's allowance is next full, shifted by one request).
//!
//! Two limits per door (REST, MCP), each with its own setting, and a
//! request must pass both:
//! * per API key, counted by the key gate (`http::auth`) on every request
//!   the key makes, before anything is parsed (`ENGRAM_REST_RATE_LIMIT`,
//!   `ENGRAM_MCP_RATE_LIMIT`). It bounds what one key, a leaked one
//!   included, can draw in total.
//! * per acting user ([`UserLimit`]), counted where the request's user is
//!   known: in the REST handler or the MCP tool, once its arguments are
//!   read, for every request that acts on a user's memories (tool calls,
//!   the prompt and the context resource; not `initialize` or `tools/list`)
//!   (`ENGRAM_REST_USER_RATE_LIMIT`, `ENGRAM_MCP_USER_RATE_LIMIT`). A
//!   request whose user cannot be resolved (a malformed id, a user key
//!   naming another user) is not counted: its flow refuses it.
//!
//! The defaults follow from that split: the per-user limits keep what one
//! client needs (600 MCP, 120 REST requests a minute), and the per-key limits
//! are a hundred times higher, so that a backend whose one admin key serves
//! many users is held to each user's allowance, not capped as one user. A
//! user's key acts for one user, so for it the per-user limit is the one
//! that binds. A request refused for its user has already been counted
//! against its key (the key made it).
//!
//! Only requests made with a key are counted: the operator (stdio, and HTTP
//! with `ENGRAM_AUTH=none`, loopback only) acts for everyone by
//! configuration and is not limited at all.
//!
//! Where the state is kept: with a cache configured, in the cache
//! ([`Cache::allow`], on the cache server's clock), so every engram process
//! behind a load balancer draws on one allowance per bucket. Buckets are
//! named by their kind (`rest`, `mcp` for keys; `rest-user`, `mcp-user` for
//! users), so the four never share state; a user's bucket carries a digest
//! of the user id, never the id itself. Without a cache, or while it is
//! down, each process counts on its own (a bucket then gets up to its limit
//! per process). The in-process table grows with the number of buckets
//! that called, not with requests; entries in the past are swept.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use crate::auth::Principal;
use crate::cache::Cache;
use crate::model::UserId;
use crate::service::MemoryService;

/// Buckets at which the table is swept of entries whose allowance is full again.
const SWEEP_AT: usize = 10_000;

/// The JSON-RPC error code of an MCP request refused by a rate limit (in
/// the range JSON-RPC leaves to servers); its `data` says
/// `retry_after_secs`.
pub const RATE_LIMITED: i32 = -32029;

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

/// Which door a [`UserLimit`] counts for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Door {
    Rest,
    Mcp,
}

impl Door {
    /// The limiter's kind in the shared state (the keys' are `rest`, `mcp`).
    fn kind(self) -> &'static str {
        match self {
            Door::Rest => "rest-user",
            Door::Mcp => "mcp-user",
        }
    }

    fn name(self) -> &'static str {
        match self {
            Door::Rest => "REST",
            Door::Mcp => "MCP",
        }
    }

    /// The variable that sets the door's per-user limit.
    fn setting(self) -> &'static str {
        match self {
            Door::Rest => "ENGRAM_REST_USER_RATE_LIMIT",
            Door::Mcp => "ENGRAM_MCP_USER_RATE_LIMIT",
        }
    }
}

/// One door's limit per acting user (see the module's notes).
pub struct UserLimit {
    limiter: RateLimiter,
    door: Door,
}

/// A request refused by its user's limit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserLimited {
    pub user: UserId,
    /// Whole seconds to wait ([`retry_secs`]).
    pub retry_after: u64,
    door: Door,
}

impl UserLimited {
    /// What the refusal says: whose allowance, the wait, and the setting.
    pub fn message(&self) -> String {
        format!(
            "rate limited: user '{}' has used its {} requests for now; retry after {} s \
             ({} per user and minute, whichever key acts for them)",
            self.user,
            self.door.name(),
            self.retry_after,
            self.door.setting()
        )
    }
}

impl UserLimit {
    /// `per_minute` requests per acting user on `door` (0: no limit),
    /// shared through `cache` when it is one.
    pub fn new(per_minute: u32, cache: Arc<dyn Cache>, door: Door) -> Self {
        Self {
            limiter: RateLimiter::per_minute(per_minute).shared(cache, door.kind()),
            door,
        }
    }

    /// Counts a request `caller` makes naming `requested` (`None`: the
    /// caller's own user), against the user it acts for as `service`
    /// resolves it. Requests without a key, and requests whose user cannot
    /// be resolved (the flow refuses those with the reason), pass uncounted.
    pub async fn check(
        &self,
        service: &MemoryService,
        caller: &Principal,
        requested: Option<&str>,
    ) -> Result<(), UserLimited> {
        if caller.key_id().is_none() {
            return Ok(());
        }
        let Ok(user) = service.acting_user(caller, requested) else {
            return Ok(());
        };
        // A digest, so that user ids never appear in the shared state's keys.
        let bucket = crate::store::sha256_hex(user.as_str());
        self.limiter
            .check(&bucket)
            .await
            .map_err(|wait| UserLimited {
                user,
                retry_after: retry_secs(wait),
                door: self.door,
            })
    }
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
