//! The retention purge ([`Retention`]): expired memories, and closed ones
//! past the history retention, removed in bounded transactions.
//!
//! One round is one `BEGIN IMMEDIATE` transaction under the writer lock, so
//! rounds (of this process or another on the file) queue behind each other
//! and behind every write. Triggers drop the removed memories' keyword
//! postings and move their users' generations, so each user's in-process
//! vector copy is behind afterwards and reloads at its next read.

use std::collections::BTreeSet;

use async_trait::async_trait;
use sqlx::Row;
use sqlx::sqlite::SqliteConnection;

use super::audit::insert_audit;
use super::rows::{json_array, parse_id};
use super::{SqliteStore, db};
use crate::model::MemoryId;
use crate::store::{
    AUDIT_MAX_IDS, AuditRecord, PurgeCounts, PurgePlan, PurgeReport, Retention, StoreError,
};

/// The memories a plan removes: ?1 now (ms), ?2 closed before (ms, or
/// NULL). `expired` says which reason applies (expiry wins).
const DUE: &str = "\
    SELECT pk, id, user_id, 1 AS expired FROM memories INDEXED BY memories_expiry \
        WHERE expires_at IS NOT NULL AND expires_at <= ?1 \
    UNION ALL \
    SELECT pk, id, user_id, 0 AS expired FROM memories INDEXED BY memories_closed_at \
        WHERE valid_to IS NOT NULL AND valid_to < ?2 \
          AND NOT (expires_at IS NOT NULL AND expires_at <= ?1)";

fn closed_before(plan: &PurgePlan) -> Option<i64> {
    plan.closed_before.map(|at| at.timestamp_millis())
}

/// Counts the due memories by reason.
async fn count_due(
    conn: &mut SqliteConnection,
    plan: &PurgePlan,
) -> Result<PurgeCounts, StoreError> {
    let sql = format!("SELECT coalesce(sum(expired), 0), count(*) FROM ({DUE})");
    let (expired, all): (i64, i64) = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(plan.now.timestamp_millis())
        .bind(closed_before(plan))
        .fetch_one(&mut *conn)
        .await
        .map_err(db("counting what the purge removes"))?;
    Ok(PurgeCounts {
        expired: expired.max(0) as u64,
        history: (all - expired).max(0) as u64,
    })
}

#[async_trait]
impl Retention for SqliteStore {
    async fn purgeable(&self, plan: &PurgePlan) -> Result<PurgeCounts, StoreError> {
        let mut conn = self
            .pool
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
        let _writer = self.write_lock.lock().await;
        let mut tx = self
            .pool
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(db("starting a purge"))?;
        let sql = format!("{DUE} LIMIT ?3");
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(plan.now.timestamp_millis())
            .bind(closed_before(plan))
            .bind(i64::try_from(plan.batch).unwrap_or(i64::MAX))
            .fetch_all(&mut *tx)
            .await
            .map_err(db("finding what the purge removes"))?;
        let mut removed = PurgeCounts::default();
        let mut pks: Vec<i64> = Vec::with_capacity(rows.len());
        let mut ids: Vec<MemoryId> = Vec::with_capacity(rows.len());
        let mut users: BTreeSet<String> = BTreeSet::new();
        for row in &rows {
            pks.push(row.try_get("pk").map_err(db("reading a due memory"))?);
            ids.push(parse_id(row)?);
            users.insert(row.try_get("user_id").map_err(db("reading a due memory"))?);
            let expired: i64 = row.try_get("expired").map_err(db("reading a due memory"))?;
            if expired == 1 {
                removed.expired += 1;
            } else {
                removed.history += 1;
            }
        }
        if pks.is_empty() {
            return Ok(PurgeReport { removed, ran: true });
        }
        let pk_list = json_array(&pks);
        let id_list =
            serde_json::Value::from(ids.iter().map(ToString::to_string).collect::<Vec<_>>())
                .to_string();
        // Vectors first (found by pk), then the rows (triggers drop their
        // postings and move their users' generations), then their history
        // and any deferred remember that stored one (which would bring the
        // text back).
        for (sql, list, context) in [
            (
                "DELETE FROM memory_vectors WHERE pk IN (SELECT value FROM json_each(?))",
                &pk_list,
                "purging vectors",
            ),
            (
                "DELETE FROM memories WHERE pk IN (SELECT value FROM json_each(?))",
                &pk_list,
                "purging memories",
            ),
            (
                "DELETE FROM memory_history WHERE memory_id IN (SELECT value FROM json_each(?))",
                &id_list,
                "purging history",
            ),
            (
                "DELETE FROM pending_extractions WHERE EXISTS (SELECT 1 FROM json_each(memory_ids) \
                 p WHERE p.value IN (SELECT value FROM json_each(?)))",
                &id_list,
                "purging deferred remembers",
            ),
        ] {
            sqlx::query(sql)
                .bind(list)
                .execute(&mut *tx)
                .await
                .map_err(db(context))?;
        }
        if let Some(audit) = audit {
            let mut audit = audit.clone();
            audit.memory_count = ids.len() as u64;
            audit.memory_ids = ids.iter().take(AUDIT_MAX_IDS).copied().collect();
            insert_audit(&mut tx, &audit).await?;
        }
        tx.commit().await.map_err(db("committing a purge"))?;
        tracing::debug!(users = users.len(), memories = ids.len(), "purged");
        Ok(PurgeReport { removed, ran: true })
    }
}
