//! What the service tells the metrics page ([`crate::metrics`]): counters it
//! keeps anyway, read at scrape time, and the gauges that need the store or
//! the cache, refreshed in the background so a scrape never queries them.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::MemoryService;
use crate::metrics::{Observed, metrics};

impl MemoryService {
    /// The counters only the service holds, as of now.
    pub fn observed(&self) -> Observed {
        let cache = self.cache.enabled().then(|| {
            let s = self.cache_stats();
            (
                s.hits + s.vector_hits,
                s.misses + s.vector_misses,
                s.errors + s.skipped,
            )
        });
        Observed {
            cache,
            audit_dropped: self.audit.as_ref().map_or(0, |a| a.dropped()),
            pool: self.store.pool_status(),
        }
    }

    /// Reads every user's totals and asks the cache for an answer, and sets
    /// the gauges: `engram_memories`, `engram_pending_extractions`,
    /// `engram_database_up` and `engram_cache_up`. A store that does not
    /// answer leaves the totals as they were and says it is down.
    pub async fn refresh_gauges(&self) {
        let m = metrics();
        match self.store.totals().await {
            Ok(totals) => {
                m.memories.set(totals.memories as f64);
                m.pending.set(totals.pending as f64);
                m.database_up.set(1.0);
            }
            Err(e) => {
                tracing::debug!(error = %e, "the store did not answer the gauges' check");
                m.database_up.set(0.0);
            }
        }
        if self.cache.enabled() {
            let up = self.cache.ping().await.is_ok();
            m.cache_up.set(if up { 1.0 } else { 0.0 });
        }
    }
}

/// Refreshes the gauges now and then every `every`, until `stop`.
pub async fn run_gauges(service: Arc<MemoryService>, every: Duration, stop: CancellationToken) {
    loop {
        service.refresh_gauges().await;
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
    }
}
