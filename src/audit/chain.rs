//! Sealing and verifying the audit trail's hash chain
//! ([`crate::store::audit_link`]). Sealing is the store's
//! ([`crate::store::AuditLog::seal_audit`]: one sealer at a time, committed
//! rows only); this file runs it in rounds and checks what it sealed.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::store::{AUDIT_GENESIS, AuditLog, Store, StoreError, audit_link};

/// Rows one sealing round takes, at most.
pub const ROUND: usize = 10_000;
/// How often `serve` seals.
pub const EVERY: Duration = Duration::from_secs(2);

/// Seals every committed row: rounds until one finds nothing. How many rows.
pub async fn seal_all(store: &dyn AuditLog) -> Result<u64, StoreError> {
    let mut sealed = 0;
    loop {
        let report = store.seal_audit(ROUND).await?;
        sealed += report.sealed;
        if !report.ran || report.sealed < ROUND as u64 {
            return Ok(sealed);
        }
    }
}

/// Seals every [`EVERY`] until `stop`; a failed round is logged and retried.
pub async fn run_sealer(store: Arc<dyn Store>, stop: CancellationToken) {
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(EVERY) => {}
        }
        if let Err(e) = seal_all(store.as_ref()).await {
            tracing::warn!(error = %e, "sealing the audit trail failed; trying again");
        }
    }
}

/// What verifying the chain found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verification {
    /// Sealed rows checked.
    pub checked: u64,
    /// The first row whose hash does not follow, if any.
    pub broken: Option<Broken>,
}

/// A sealed row whose stored hash is not the chain's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Broken {
    pub chain_pos: i64,
    pub seq: i64,
    pub reason: String,
}

/// Recomputes the chain from its start and compares every stored hash.
pub async fn verify(store: &dyn AuditLog) -> Result<Verification, StoreError> {
    let mut previous = AUDIT_GENESIS.to_owned();
    let mut expected_pos = 0i64;
    let mut checked = 0u64;
    loop {
        let rows = store.sealed_audit(expected_pos, ROUND).await?;
        if rows.is_empty() {
            return Ok(Verification {
                checked,
                broken: None,
            });
        }
        for row in rows {
            expected_pos += 1;
            let broken = |reason: String| Broken {
                chain_pos: row.chain_pos.unwrap_or_default(),
                seq: row.seq,
                reason,
            };
            if row.chain_pos != Some(expected_pos) {
                return Ok(Verification {
                    checked,
                    broken: Some(broken(format!(
                        "expected chain position {expected_pos}: a sealed row is missing"
                    ))),
                });
            }
            let hash = audit_link(&previous, &row);
            if row.hash.as_deref() != Some(hash.as_str()) {
                return Ok(Verification {
                    checked,
                    broken: Some(broken(
                        "its hash does not match its fields and the row before it: the row \
                         (or the one before it) was changed"
                            .to_owned(),
                    )),
                });
            }
            previous = hash;
            checked += 1;
        }
    }
}
