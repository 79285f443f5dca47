//! The retention purge ([`Retention`]): expired memories, and closed ones
//! past the history retention, removed in bounded transactions.
//!
//! One round at a time across every instance on the database: a round
//! first tries the purge's transaction-level advisory lock and does nothing
//! when another round holds it. It then takes the write lock of each user
//! it touches, in user order (writers take one user's lock only, so no
//! cycle can form), and deletes the rows chosen, re-checking that they are
//! still due. Triggers drop keyword rows and postings, keep the users'
//! counts and move their versions, so caches drop their entries.

use async_trait::async_trait;
use sqlx::PgConnection;
use uuid::Uuid;

use super::audit::insert_audit;
use super::write::lock_user;
use super::{PgStore, db};
use crate::model::MemoryId;
use crate::store::{
    AUDIT_MAX_IDS, AuditRecord, PurgeCounts, PurgePlan, PurgeReport, Retention, StoreError,
};

/// The memories a plan removes: $1 now, $2 closed before (or NULL).
/// `expired` says which reason applies (expiry wins).
const DUE: &str = "\
    SELECT id, user_id, true AS expired FROM memories \
        WHERE expires_at IS NOT NULL AND expires_at <= $1 \
    UNION ALL \
    SELECT id, user_id, false AS expired FROM memories \
        WHERE valid_to IS NOT NULL AND valid_to < $2 \
          AND NOT (expires_at IS NOT NULL AND expires_at <= $1)";

/// The key of the purge's advisory lock.
const PURGE_LOCK: &str = "SELECT pg_try_advisory_xact_lock(hashtextextended('engram.purge', 0))";

async fn count_due(conn: &mut PgConnection, plan: &PurgePlan) -> Result<PurgeCounts, StoreError> {
    let sql = format!(
        "SELECT count(*) FILTER (WHERE expired), count(*) FILTER (WHERE NOT expired) FROM ({DUE}) d"
    );
    let (expired, history): (i64, i64) = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(plan.now)
        .bind(plan.closed_before)
        .fetch_one(&mut *conn)
        .await
        .map_err(db("counting what the purge removes"))?;
    Ok(PurgeCounts {
        expired: expired.max(0) as u64,
        history: history.max(0) as u64,
    })
}

#[async_trait]
impl Retention for PgStore {
    async fn purgeable(&self, plan: &PurgePlan) -> Result<PurgeCounts, StoreError> {
        // Every user's: operator-wide.
        let mut conn = self
            .operator()
            .acquire()
            .await
            .map_err(db("counting what the purge removes"))?;
        count_due(&mut conn, plan).await
    }

    async fn purge(
        &self,
        plan: &PurgePlan,
        audit: Option<&AuditRecord>,
    ) -> Result<PurgeReport, StoreError> {
        let mut tx = self
            .operator()
            .begin()
            .await
            .map_err(db("starting a purge"))?;
        let locked: bool = sqlx::query_scalar(PURGE_LOCK)
            .fetch_one(&mut *tx)
            .await
            .map_err(db("taking the purge lock"))?;
        if !locked {
            return Ok(PurgeReport {
                removed: PurgeCounts::default(),
                ran: false,
            });
        }
        let sql = format!("{DUE} LIMIT $3");
        let due: Vec<(Uuid, String, bool)> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(plan.now)
            .bind(plan.closed_before)
            .bind(i64::try_from(plan.batch).unwrap_or(i64::MAX))
            .fetch_all(&mut *tx)
            .await
            .map_err(db("finding what the purge removes"))?;
        if due.is_empty() {
            // Ended here, not when the connection is next used: the purge
            // lock is released now, so the next round can take it.
            tx.rollback().await.map_err(db("ending a purge"))?;
            return Ok(PurgeReport {
                removed: PurgeCounts::default(),
                ran: true,
            });
        }
        let mut users: Vec<&str> = due.iter().map(|(_, user, _)| user.as_str()).collect();
        users.sort_unstable();
        users.dedup();
        for user in users {
            lock_user(&mut tx, user).await?;
        }
        let ids: Vec<Uuid> = due.iter().map(|(id, ..)| *id).collect();
        // Still due under the users' locks (a write may have closed one
        // meanwhile: it is then judged by the history retention).
        let gone: Vec<(Uuid, bool)> = sqlx::query_as(
            "WITH gone AS (DELETE FROM memories WHERE id = ANY ($1) \
                 AND ((expires_at IS NOT NULL AND expires_at <= $2) \
                      OR (valid_to IS NOT NULL AND valid_to < $3)) \
                 RETURNING id, user_id, (expires_at IS NOT NULL AND expires_at <= $2) AS expired), \
                  history AS (DELETE FROM memory_history h USING gone \
                              WHERE h.user_id = gone.user_id AND h.memory_id = gone.id), \
                  pending AS (DELETE FROM pending_extractions p \
                              WHERE p.memory_ids && ARRAY(SELECT id FROM gone)) \
             SELECT id, expired FROM gone",
        )
        .bind(&ids)
        .bind(plan.now)
        .bind(plan.closed_before)
        .fetch_all(&mut *tx)
        .await
        .map_err(db("purging memories"))?;
        let mut removed = PurgeCounts::default();
        for (_, expired) in &gone {
            if *expired {
                removed.expired += 1;
            } else {
                removed.history += 1;
            }
        }
        if let Some(audit) = audit
            && !gone.is_empty()
        {
            let mut audit = audit.clone();
            audit.memory_count = gone.len() as u64;
            audit.memory_ids = gone
                .iter()
                .take(AUDIT_MAX_IDS)
                .map(|(id, _)| MemoryId(*id))
                .collect();
            insert_audit(&mut tx, &audit).await?;
        }
        tx.commit().await.map_err(db("committing a purge"))?;
        Ok(PurgeReport { removed, ran: true })
    }
}
