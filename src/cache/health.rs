//! Whether to use the cache right now. Up: every operation goes through.
//! After a failure: down; operations are skipped (a miss, a dropped write)
//! except one probe per retry interval, and the first success brings the
//! cache back. Each outage is logged when it starts and ends, and in between
//! at most once per log interval, with how many operations failed.

use std::fmt::Display;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

pub struct Health {
    /// Read without the lock on every operation; the lock guards `outage`.
    down: AtomicBool,
    outage: Mutex<Option<Outage>>,
    retry_every: Duration,
    log_every: Duration,
    errors: AtomicU64,
    skipped: AtomicU64,
}

struct Outage {
    since: Instant,
    next_probe: Instant,
    last_log: Instant,
    failures: u64,
    unlogged: u64,
}

impl Health {
    pub fn new(retry_every: Duration, log_every: Duration) -> Self {
        Self {
            down: AtomicBool::new(false),
            outage: Mutex::new(None),
            retry_every,
            log_every,
            errors: AtomicU64::new(0),
            skipped: AtomicU64::new(0),
        }
    }

    /// Whether to attempt an operation now; a refusal is counted as skipped.
    pub fn admit(&self) -> bool {
        if !self.down.load(Ordering::Acquire) {
            return true;
        }
        let now = Instant::now();
        let mut outage = self.outage.lock().unwrap_or_else(|e| e.into_inner());
        match outage.as_mut() {
            Some(o) if now < o.next_probe => {
                self.skipped.fetch_add(1, Ordering::Relaxed);
                false
            }
            Some(o) => {
                o.next_probe = now + self.retry_every;
                true
            }
            None => true,
        }
    }

    pub fn failed(&self, operation: &str, error: &dyn Display) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        let now = Instant::now();
        let mut outage = self.outage.lock().unwrap_or_else(|e| e.into_inner());
        match outage.as_mut() {
            None => {
                tracing::warn!(
                    operation,
                    %error,
                    retry_every_ms = self.retry_every.as_millis() as u64,
                    "cache unavailable; requests go on without it"
                );
                *outage = Some(Outage {
                    since: now,
                    next_probe: now + self.retry_every,
                    last_log: now,
                    failures: 1,
                    unlogged: 0,
                });
                self.down.store(true, Ordering::Release);
            }
            Some(o) => {
                o.failures += 1;
                o.unlogged += 1;
                o.next_probe = now + self.retry_every;
                if now.duration_since(o.last_log) >= self.log_every {
                    tracing::warn!(
                        operation,
                        %error,
                        failed_since_last_report = o.unlogged,
                        down_for_s = now.duration_since(o.since).as_secs(),
                        "cache still unavailable"
                    );
                    o.last_log = now;
                    o.unlogged = 0;
                }
            }
        }
    }

    /// Records a success; true when it ends an outage.
    pub fn succeeded(&self) -> bool {
        if !self.down.load(Ordering::Acquire) {
            return false;
        }
        let mut outage = self.outage.lock().unwrap_or_else(|e| e.into_inner());
        let Some(o) = outage.take() else {
            return false;
        };
        self.down.store(false, Ordering::Release);
        tracing::info!(
            down_for_ms = o.since.elapsed().as_millis() as u64,
            failed_operations = o.failures,
            "cache is back"
        );
        true
    }

    pub fn is_down(&self) -> bool {
        self.down.load(Ordering::Acquire)
    }

    /// (errors, skipped) so far.
    pub fn counts(&self) -> (u64, u64) {
        (
            self.errors.load(Ordering::Relaxed),
            self.skipped.load(Ordering::Relaxed),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failure_pauses_the_cache_until_a_probe_succeeds() {
        let h = Health::new(Duration::from_millis(300), Duration::from_secs(30));
        assert!(h.admit());
        assert!(!h.succeeded(), "not down, so nothing ends");

        h.failed("get", &"connection refused");
        assert!(h.is_down());
        assert!(!h.admit(), "skipped within the retry interval");
        assert!(!h.admit());
        assert_eq!(h.counts(), (1, 2));

        std::thread::sleep(Duration::from_millis(350));
        assert!(h.admit(), "one probe after the interval");
        assert!(!h.admit(), "and only one");
        h.failed("get", &"connection refused");
        assert!(!h.admit(), "a failed probe waits another interval");

        std::thread::sleep(Duration::from_millis(350));
        assert!(h.admit());
        assert!(h.succeeded(), "the outage ends");
        assert!(!h.is_down());
        assert!(h.admit() && h.admit());
        assert_eq!(h.counts(), (2, 4));
    }
}
