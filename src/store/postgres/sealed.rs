//! Sealed values ([`SealedValues`]), for `engram rotate-key`.

use async_trait::async_trait;
use sqlx::Row;

use super::{PgStore, db};
use crate::store::{SealedColumn, SealedRow, SealedValues, StoreError};

/// (table, column) of each sealed column. Every envelope's jsonb text holds
/// `"$enc"` (a plaintext string holding that text is escaped, `\"`).
fn place(column: SealedColumn) -> (&'static str, &'static str) {
    match column {
        SealedColumn::MemoryMetadata => ("memories", "metadata"),
        SealedColumn::PendingMetadata => ("pending_extractions", "metadata"),
        SealedColumn::PendingInput => ("pending_extractions", "input"),
    }
}

/// Key rotation spans every user's rows: operator-wide.
#[async_trait]
impl SealedValues for PgStore {
    async fn sealed_rows(
        &self,
        column: SealedColumn,
        after: uuid::Uuid,
        limit: usize,
    ) -> Result<Vec<SealedRow>, StoreError> {
        let (table, col) = place(column);
        let sql = format!(
            "SELECT id, user_id, {col} FROM {table} \
             WHERE id > $1 AND strpos({col}::text, '\"$enc\"') > 0 ORDER BY id LIMIT $2"
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(after)
            .bind(i64::try_from(limit).unwrap_or(i64::MAX))
            .fetch_all(self.operator())
            .await
            .map_err(db("reading sealed values"))?;
        Ok(rows
            .iter()
            .map(|row| SealedRow {
                id: row.get(0),
                user_id: row.get(1),
                value: row.get(2),
            })
            .collect())
    }

    async fn reseal(
        &self,
        column: SealedColumn,
        row: &SealedRow,
        new: &serde_json::Value,
    ) -> Result<bool, StoreError> {
        let (table, col) = place(column);
        // The memories' update trigger moves the user's version: cached
        // entries end early, which is harmless.
        let sql = format!("UPDATE {table} SET {col} = $1 WHERE id = $2 AND {col} = $3");
        let done = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(new)
            .bind(row.id)
            .bind(&row.value)
            .execute(self.operator())
            .await
            .map_err(db("re-sealing a value"))?;
        Ok(done.rows_affected() == 1)
    }
}
