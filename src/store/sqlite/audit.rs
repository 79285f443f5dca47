//! The audit trail ([`AuditLog`]) in `audit_log`: times in milliseconds,
//! ids as TEXT, the memory ids as a JSON array. Sealing runs under the
//! store's one writer (`BEGIN IMMEDIATE`), so one sealer at a time, across
//! processes too; rows commit in `seq` order here, so every visible row
//! can be sealed.

use async_trait::async_trait;
use sqlx::Row;
use sqlx::sqlite::{SqliteConnection, SqliteRow};

use super::rows::millis;
use super::{SqliteStore, db};
use crate::model::MemoryId;
use crate::store::shared::{CHAIN_TAIL, Link, link_all};
use crate::store::{AuditLog, AuditQuery, AuditRecord, AuditRow, SealReport, StoreError};

const COLUMNS: &str = "seq, at, principal, key_id, user_ref, transport, client_addr, operation, \
                       memory_ids, memory_count, outcome, query, chain_pos, hash";

/// Appends `record` on `conn` (a write's own transaction, or the sink's).
pub(super) async fn insert_audit(
    conn: &mut SqliteConnection,
    record: &AuditRecord,
) -> Result<(), StoreError> {
    let ids: Vec<String> = record.memory_ids.iter().map(ToString::to_string).collect();
    sqlx::query(
        "INSERT INTO audit_log (at, principal, key_id, user_ref, transport, client_addr, \
         operation, memory_ids, memory_count, outcome, query) \
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
    )
    .bind(record.at.timestamp_millis())
    .bind(&record.principal)
    .bind(record.key_id.map(|k| k.to_string()))
    .bind(&record.user_ref)
    .bind(&record.transport)
    .bind(&record.client_addr)
    .bind(&record.operation)
    .bind(serde_json::Value::from(ids).to_string())
    .bind(i64::try_from(record.memory_count).unwrap_or(i64::MAX))
    .bind(&record.outcome)
    .bind(&record.query)
    .execute(&mut *conn)
    .await
    .map_err(db("writing the audit trail"))?;
    Ok(())
}

fn audit_row(row: &SqliteRow) -> Result<AuditRow, StoreError> {
    let cx = "reading the audit trail";
    let corrupt = |what: &str, e: &dyn std::fmt::Display| {
        StoreError::Corrupt(format!("audit row {what}: {e}"))
    };
    let key_id: Option<String> = row.try_get("key_id").map_err(db(cx))?;
    let key_id = key_id
        .map(|k| uuid::Uuid::parse_str(&k).map_err(|e| corrupt("key id", &e)))
        .transpose()?;
    let ids: String = row.try_get("memory_ids").map_err(db(cx))?;
    let ids: Vec<String> = serde_json::from_str(&ids).map_err(|e| corrupt("memory ids", &e))?;
    let memory_ids = ids
        .iter()
        .map(|id| {
            uuid::Uuid::parse_str(id)
                .map(MemoryId)
                .map_err(|e| corrupt("memory id", &e))
        })
        .collect::<Result<_, _>>()?;
    let count: i64 = row.try_get("memory_count").map_err(db(cx))?;
    Ok(AuditRow {
        seq: row.try_get("seq").map_err(db(cx))?,
        record: AuditRecord {
            at: millis(row.try_get("at").map_err(db(cx))?),
            principal: row.try_get("principal").map_err(db(cx))?,
            key_id,
            user_ref: row.try_get("user_ref").map_err(db(cx))?,
            transport: row.try_get("transport").map_err(db(cx))?,
            client_addr: row.try_get("client_addr").map_err(db(cx))?,
            operation: row.try_get("operation").map_err(db(cx))?,
            memory_ids,
            memory_count: u64::try_from(count).unwrap_or(0),
            outcome: row.try_get("outcome").map_err(db(cx))?,
            query: row.try_get("query").map_err(db(cx))?,
        },
        chain_pos: row.try_get("chain_pos").map_err(db(cx))?,
        hash: row.try_get("hash").map_err(db(cx))?,
    })
}

#[async_trait]
impl AuditLog for SqliteStore {
    async fn append_audit(&self, records: &[AuditRecord]) -> Result<(), StoreError> {
        if records.is_empty() {
            return Ok(());
        }
        let _writer = self.write_lock.lock().await;
        let mut tx = self
            .pool
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(db("writing the audit trail"))?;
        for record in records {
            insert_audit(&mut tx, record).await?;
        }
        tx.commit().await.map_err(db("writing the audit trail"))
    }

    async fn audit_rows(&self, query: &AuditQuery) -> Result<Vec<AuditRow>, StoreError> {
        let sql = format!(
            "SELECT {COLUMNS} FROM audit_log \
             WHERE (?1 IS NULL OR user_ref = ?1) AND (?2 IS NULL OR at >= ?2) \
               AND (?3 IS NULL OR operation = ?3) AND (?4 IS NULL OR seq < ?4) \
             ORDER BY seq DESC LIMIT ?5"
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(&query.user_ref)
            .bind(query.since.map(|t| t.timestamp_millis()))
            .bind(&query.operation)
            .bind(query.before_seq)
            .bind(i64::try_from(query.limit).unwrap_or(i64::MAX))
            .fetch_all(&self.pool)
            .await
            .map_err(db("reading the audit trail"))?;
        rows.iter().map(audit_row).collect()
    }

    async fn seal_audit(&self, limit: usize) -> Result<SealReport, StoreError> {
        let _writer = self.write_lock.lock().await;
        let mut tx = self
            .pool
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(db("sealing the audit trail"))?;
        let tail: Option<(i64, String)> = sqlx::query_as(CHAIN_TAIL)
            .fetch_optional(&mut *tx)
            .await
            .map_err(db("sealing the audit trail"))?;
        let chain_length = tail.as_ref().map_or(0, |(pos, _)| *pos);
        let sql =
            format!("SELECT {COLUMNS} FROM audit_log WHERE chain_pos IS NULL ORDER BY seq LIMIT ?");
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(i64::try_from(limit).unwrap_or(i64::MAX))
            .fetch_all(&mut *tx)
            .await
            .map_err(db("sealing the audit trail"))?;
        let rows: Vec<AuditRow> = rows.iter().map(audit_row).collect::<Result<_, _>>()?;
        let links = link_all(tail, &rows);
        for Link { seq, pos, hash } in &links {
            sqlx::query("UPDATE audit_log SET chain_pos = ?, hash = ? WHERE seq = ?")
                .bind(pos)
                .bind(hash)
                .bind(seq)
                .execute(&mut *tx)
                .await
                .map_err(db("sealing the audit trail"))?;
        }
        tx.commit().await.map_err(db("sealing the audit trail"))?;
        Ok(SealReport {
            sealed: links.len() as u64,
            chain_length: links.last().map_or(chain_length, |l| l.pos),
            ran: true,
        })
    }

    async fn sealed_audit(&self, after: i64, limit: usize) -> Result<Vec<AuditRow>, StoreError> {
        let sql = format!(
            "SELECT {COLUMNS} FROM audit_log WHERE chain_pos > ? ORDER BY chain_pos LIMIT ?"
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(after)
            .bind(i64::try_from(limit).unwrap_or(i64::MAX))
            .fetch_all(&self.pool)
            .await
            .map_err(db("reading the audit trail"))?;
        rows.iter().map(audit_row).collect()
    }
}
