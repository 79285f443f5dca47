//! The audit trail ([`AuditLog`]) in `audit_log`. Rows carry the id of the
//! transaction that wrote them (`xid`): a sealer takes only rows whose
//! transaction ended before its snapshot (`xid` below the snapshot's xmin),
//! in `seq` order, so a row committed late is sealed in a later round,
//! never skipped. One sealer at a time: a transaction-level advisory lock,
//! tried, not waited for.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::postgres::PgRow;
use sqlx::{PgConnection, Row};
use uuid::Uuid;

use super::{PgStore, db};
use crate::model::MemoryId;
use crate::store::shared::{CHAIN_TAIL, link_all};
use crate::store::{AuditLog, AuditQuery, AuditRecord, AuditRow, SealReport, StoreError};

const COLUMNS: &str = "seq, at, principal, key_id, user_ref, transport, client_addr, operation, \
                       memory_ids, memory_count, outcome, query, chain_pos, hash";

/// Appends one record (its values bound by [`bind_record`]).
pub(super) const INSERT: &str = "INSERT INTO audit_log (at, principal, key_id, user_ref, transport, \
                      client_addr, operation, memory_ids, memory_count, outcome, query) \
                      VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)";

/// `query` with `record`'s eleven values bound as `$1`..`$11` ([`INSERT`]).
pub(super) fn bind_record<'q>(
    query: sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>,
    record: &'q AuditRecord,
) -> sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments> {
    let ids: Vec<Uuid> = record.memory_ids.iter().map(|id| id.0).collect();
    query
        .bind(record.at)
        .bind(&record.principal)
        .bind(record.key_id)
        .bind(&record.user_ref)
        .bind(&record.transport)
        .bind(&record.client_addr)
        .bind(&record.operation)
        .bind(ids)
        .bind(i64::try_from(record.memory_count).unwrap_or(i64::MAX))
        .bind(&record.outcome)
        .bind(&record.query)
}

/// Appends `record` on `conn` (a write's own transaction, or the sink's).
pub(super) async fn insert_audit(
    conn: &mut PgConnection,
    record: &AuditRecord,
) -> Result<(), StoreError> {
    bind_record(sqlx::query(INSERT), record)
        .execute(&mut *conn)
        .await
        .map_err(db("writing the audit trail"))?;
    Ok(())
}

fn audit_row(row: &PgRow) -> Result<AuditRow, StoreError> {
    let cx = "reading the audit trail";
    let ids: Vec<Uuid> = row.try_get("memory_ids").map_err(db(cx))?;
    let count: i64 = row.try_get("memory_count").map_err(db(cx))?;
    let at: DateTime<Utc> = row.try_get("at").map_err(db(cx))?;
    Ok(AuditRow {
        seq: row.try_get("seq").map_err(db(cx))?,
        record: AuditRecord {
            at,
            principal: row.try_get("principal").map_err(db(cx))?,
            key_id: row.try_get("key_id").map_err(db(cx))?,
            user_ref: row.try_get("user_ref").map_err(db(cx))?,
            transport: row.try_get("transport").map_err(db(cx))?,
            client_addr: row.try_get("client_addr").map_err(db(cx))?,
            operation: row.try_get("operation").map_err(db(cx))?,
            memory_ids: ids.into_iter().map(MemoryId).collect(),
            memory_count: u64::try_from(count).unwrap_or(0),
            outcome: row.try_get("outcome").map_err(db(cx))?,
            query: row.try_get("query").map_err(db(cx))?,
        },
        chain_pos: row.try_get("chain_pos").map_err(db(cx))?,
        hash: row.try_get("hash").map_err(db(cx))?,
    })
}

#[async_trait]
impl AuditLog for PgStore {
    async fn append_audit(&self, records: &[AuditRecord]) -> Result<(), StoreError> {
        if records.is_empty() {
            return Ok(());
        }
        let mut tx = self.begin_unscoped("writing the audit trail").await?;
        for record in records {
            insert_audit(&mut tx, record).await?;
        }
        tx.commit().await.map_err(db("writing the audit trail"))
    }

    async fn audit_rows(&self, query: &AuditQuery) -> Result<Vec<AuditRow>, StoreError> {
        let sql = format!(
            "SELECT {COLUMNS} FROM audit_log \
             WHERE ($1::text IS NULL OR user_ref = $1) AND ($2::timestamptz IS NULL OR at >= $2) \
               AND ($3::text IS NULL OR operation = $3) AND ($4::bigint IS NULL OR seq < $4) \
             ORDER BY seq DESC LIMIT $5"
        );
        let cx = "reading the audit trail";
        let mut tx = self.begin_unscoped(cx).await?;
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(&query.user_ref)
            .bind(query.since)
            .bind(&query.operation)
            .bind(query.before_seq)
            .bind(i64::try_from(query.limit).unwrap_or(i64::MAX))
            .fetch_all(&mut *tx)
            .await
            .map_err(db(cx))?;
        tx.commit().await.map_err(db(cx))?;
        rows.iter().map(audit_row).collect()
    }

    async fn seal_audit(&self, limit: usize) -> Result<SealReport, StoreError> {
        let cx = "sealing the audit trail";
        let mut tx = self.begin_unscoped(cx).await?;
        let locked: bool = sqlx::query_scalar(
            "SELECT pg_try_advisory_xact_lock(hashtextextended('engram.audit_seal', 0))",
        )
        .fetch_one(&mut *tx)
        .await
        .map_err(db(cx))?;
        if !locked {
            return Ok(SealReport::default());
        }
        let tail: Option<(i64, String)> = sqlx::query_as(CHAIN_TAIL)
            .fetch_optional(&mut *tx)
            .await
            .map_err(db(cx))?;
        let chain_length = tail.as_ref().map_or(0, |(pos, _)| *pos);
        // Only rows of transactions that ended before this snapshot: one
        // still open may hold a lower seq, and joins the next round.
        let sql = format!(
            "SELECT {COLUMNS} FROM audit_log WHERE chain_pos IS NULL \
               AND xid < pg_snapshot_xmin(pg_current_snapshot()) \
             ORDER BY seq LIMIT $1"
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(i64::try_from(limit).unwrap_or(i64::MAX))
            .fetch_all(&mut *tx)
            .await
            .map_err(db(cx))?;
        let rows: Vec<AuditRow> = rows.iter().map(audit_row).collect::<Result<_, _>>()?;
        let links = link_all(tail, &rows);
        let seqs: Vec<i64> = links.iter().map(|l| l.seq).collect();
        let positions: Vec<i64> = links.iter().map(|l| l.pos).collect();
        let hashes: Vec<&str> = links.iter().map(|l| l.hash.as_str()).collect();
        sqlx::query(
            "UPDATE audit_log a SET chain_pos = s.pos, hash = s.hash \
             FROM unnest($1::bigint[], $2::bigint[], $3::text[]) AS s (seq, pos, hash) \
             WHERE a.seq = s.seq",
        )
        .bind(&seqs)
        .bind(&positions)
        .bind(&hashes)
        .execute(&mut *tx)
        .await
        .map_err(db(cx))?;
        tx.commit().await.map_err(db(cx))?;
        Ok(SealReport {
            sealed: links.len() as u64,
            chain_length: links.last().map_or(chain_length, |l| l.pos),
            ran: true,
        })
    }

    async fn sealed_audit(&self, after: i64, limit: usize) -> Result<Vec<AuditRow>, StoreError> {
        let sql = format!(
            "SELECT {COLUMNS} FROM audit_log WHERE chain_pos > $1 ORDER BY chain_pos LIMIT $2"
        );
        let cx = "reading the audit trail";
        let mut tx = self.begin_unscoped(cx).await?;
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(after)
            .bind(i64::try_from(limit).unwrap_or(i64::MAX))
            .fetch_all(&mut *tx)
            .await
            .map_err(db(cx))?;
        tx.commit().await.map_err(db(cx))?;
        rows.iter().map(audit_row).collect()
    }
}
