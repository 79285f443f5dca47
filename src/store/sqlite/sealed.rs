//! Sealed values ([`SealedValues`]), for `engram rotate-key`.

use async_trait::async_trait;
use sqlx::Row;

use super::{SqliteStore, db};
use crate::store::{SealedColumn, SealedRow, SealedValues, StoreError};

/// (table, column) of each sealed column. Every envelope serialises with
/// `"$enc"` in it (a plaintext string holding that text is escaped, `\"`).
fn place(column: SealedColumn) -> (&'static str, &'static str) {
    match column {
        SealedColumn::MemoryMetadata => ("memories", "metadata"),
        SealedColumn::PendingMetadata => ("pending_extractions", "metadata"),
        SealedColumn::PendingInput => ("pending_extractions", "input"),
    }
}

#[async_trait]
impl SealedValues for SqliteStore {
    async fn sealed_rows(
        &self,
        column: SealedColumn,
        after: uuid::Uuid,
        limit: usize,
    ) -> Result<Vec<SealedRow>, StoreError> {
        let (table, col) = place(column);
        let sql = format!(
            "SELECT id, user_id, {col} FROM {table} \
             WHERE id > ? AND instr({col}, '\"$enc\"') > 0 ORDER BY id LIMIT ?"
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(after.to_string())
            .bind(i64::try_from(limit).unwrap_or(i64::MAX))
            .fetch_all(&self.pool)
            .await
            .map_err(db("reading sealed values"))?;
        rows.iter()
            .map(|row| {
                let id: String = row.get(0);
                let text: String = row.get(2);
                Ok(SealedRow {
                    id: uuid::Uuid::parse_str(&id)
                        .map_err(|e| StoreError::Corrupt(format!("id {id}: {e}")))?,
                    user_id: row.get(1),
                    value: serde_json::from_str(&text)
                        .map_err(|e| StoreError::Corrupt(format!("{table}.{col} of {id}: {e}")))?,
                })
            })
            .collect()
    }

    async fn reseal(
        &self,
        column: SealedColumn,
        row: &SealedRow,
        new: &serde_json::Value,
    ) -> Result<bool, StoreError> {
        let (table, col) = place(column);
        // json() on both sides: the stored text and the read value compare
        // as JSON, whatever their spacing.
        let sql = format!("UPDATE {table} SET {col} = ? WHERE id = ? AND json({col}) = json(?)");
        let _writer = self.write_lock.lock().await;
        let done = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(new.to_string())
            .bind(row.id.to_string())
            .bind(row.value.to_string())
            .execute(&self.pool)
            .await
            .map_err(db("re-sealing a value"))?;
        Ok(done.rows_affected() == 1)
    }
}
