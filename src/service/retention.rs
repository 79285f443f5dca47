//! The retention purge: memories that expired and superseded memories past
//! the history retention ([`crate::config::RetentionConfig`]), removed in
//! bounded rounds ([`crate::store::Retention`]), each round with its own
//! audit row (operation `purge`, principal `operator`, the count and ids of
//! what went), committed with what it removed.
//!
//! Each run also drops users' daily token totals older than
//! [`super::TOKEN_USAGE_KEPT_DAYS`] days (`budget.rs`; only today's is read).
//!
//! Expired memories are already gone for every read before the purge (the
//! store's reads leave them out); the purge frees the space and ends their
//! history. Any instance may purge at any time: the store runs one round at
//! a time per database, and a round another instance is running is skipped.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio_util::sync::CancellationToken;

use super::MemoryService;
use crate::auth::Principal;
use crate::error::Error;
use crate::store::{PurgeCounts, PurgePlan};

/// The most memories one purge round (one transaction) removes.
pub const PURGE_BATCH: usize = 1000;

/// What a purge did, or (dry run) would do.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct PurgeOutcome {
    /// Expired memories, and superseded ones past the history retention.
    pub removed: PurgeCounts,
    pub dry_run: bool,
    /// True when another purge held the lock, so this one stopped early.
    pub skipped: bool,
}

impl MemoryService {
    /// Purges what is due now (see [`MemoryService::purge_at`]).
    pub async fn purge(&self, dry_run: bool) -> Result<PurgeOutcome, Error> {
        self.purge_at(Utc::now(), dry_run).await
    }

    /// Purges what is due at `now`: memories whose expiry is at or before
    /// it, and superseded memories closed more than the history retention
    /// before it. A dry run counts them and changes nothing.
    pub async fn purge_at(&self, now: DateTime<Utc>, dry_run: bool) -> Result<PurgeOutcome, Error> {
        let plan = PurgePlan {
            now,
            closed_before: self.settings.retention.closed_before(now),
            batch: PURGE_BATCH,
        };
        if dry_run {
            return Ok(PurgeOutcome {
                removed: self.store.purgeable(&plan).await?,
                dry_run,
                skipped: false,
            });
        }
        let audit = self
            .audit
            .as_ref()
            .map(|a| a.record(&Principal::Operator, "purge", None, None));
        let mut outcome = PurgeOutcome::default();
        loop {
            let round = self.store.purge(&plan, audit.as_ref()).await?;
            if !round.ran {
                outcome.skipped = true;
                break;
            }
            outcome.removed.expired += round.removed.expired;
            outcome.removed.history += round.removed.history;
            if round.removed.total() < plan.batch as u64 {
                break;
            }
        }
        // Daily token totals long past: no budget reads them any more.
        let before = now.date_naive() - chrono::Days::new(super::TOKEN_USAGE_KEPT_DAYS);
        match self.store.prune_token_usage(before).await {
            Ok(0) => {}
            Ok(pruned) => tracing::debug!(pruned, "dropped daily token totals past"),
            Err(e) => tracing::warn!(error = %e, "dropping old daily token totals failed"),
        }
        if outcome.removed.total() > 0 {
            tracing::info!(
                expired = outcome.removed.expired,
                superseded = outcome.removed.history,
                "retention purge removed memories"
            );
        }
        Ok(outcome)
    }
}

/// Purges every `every` until `stop` (in `serve`); a failed purge is logged
/// and tried again at the next turn. Audit rows name the transport `serve`.
pub async fn run_purger(service: Arc<MemoryService>, every: Duration, stop: CancellationToken) {
    let origin = crate::audit::Origin {
        transport: "serve",
        client_addr: None,
    };
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
        if let Err(e) = crate::audit::from(origin.clone(), service.purge(false)).await {
            tracing::warn!(error = %e, "the retention purge failed; trying again later");
        }
    }
}
